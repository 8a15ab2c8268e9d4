"""TCP flow control of DNSStreamProtocol, driven in-process over twisted's StringTransport.

The process-level attacks are in tests/test_adversarial.py; here the mechanics are pinned down:
answers per turn are bounded and the rest wait for the next reactor turn, a full write buffer
stops reading until it drains, the factory refuses connections past its cap unless a client
that stopped reading can make room, and the idle timeout aborts a connection whose answers
were never read instead of waiting for them to drain.  The HTTP endpoints' connections
(kubedns/ops/health.py) follow the same rules: a deadline per request that trickled bytes do not
push back, an abort for an unread response, and a cap where the oldest waiting connection
makes room.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import dns.message
import pytest
from twisted.internet import task
from twisted.internet.testing import StringTransport

from kubedns.serve.protocols import CLOSE_GRACE, DNSStreamFactory, DNSStreamProtocol
from tests.support.dispatch import udp_dispatcher


def _framed(qid: int) -> bytes:
    q = dns.message.make_query("nginx.default.svc.cluster.local", "A")
    q.id = qid
    w = q.to_wire()
    return struct.pack("!H", len(w)) + w


def _answers(tr: StringTransport) -> list[int]:
    data, ids = tr.value(), []
    while len(data) >= 2:
        (n,) = struct.unpack_from("!H", data)
        ids.append(dns.message.from_wire(data[2 : 2 + n]).id)
        data = data[2 + n :]
    return ids


def _connect(factory: DNSStreamFactory) -> tuple[DNSStreamProtocol, StringTransport]:
    proto = factory.buildProtocol(None)
    tr = StringTransport()
    proto.makeConnection(tr)
    return proto, tr


def test_pipelined_queries_are_answered_a_batch_per_turn() -> None:
    disp = udp_dispatcher()[0]
    clock = task.Clock()
    disp.reactor = clock
    proto, tr = _connect(DNSStreamFactory(disp, idle_timeout=10))
    proto.dataReceived(b"".join(_framed(i) for i in range(100)))
    assert _answers(tr) == list(range(32)) and tr.producerState == "paused"  # reading stops meanwhile
    assert [c.getTime() for c in clock.getDelayedCalls()] == [0, 10]  # the rest: the next turn; the idle timer
    clock.advance(0)
    assert _answers(tr) == list(range(100)) and tr.producerState == "producing"


def test_a_full_write_buffer_stops_reading_until_it_drains() -> None:
    disp = udp_dispatcher()[0]
    disp.reactor = task.Clock()
    proto, tr = _connect(DNSStreamFactory(disp, idle_timeout=10))
    assert tr.producer is proto and tr.streaming  # registered as the transport's producer
    proto.pauseProducing()  # what the transport does when the client stops reading
    assert tr.producerState == "paused"
    proto.dataReceived(_framed(1) + _framed(2))
    assert _answers(tr) == []  # nothing more is answered (and buffered) meanwhile
    proto.resumeProducing()  # drained
    assert _answers(tr) == [1, 2] and tr.producerState == "producing"


def test_connections_past_the_cap_are_refused() -> None:
    disp = udp_dispatcher()[0]
    factory = DNSStreamFactory(disp, idle_timeout=10)
    factory.max_connections = 2
    a, _ = _connect(factory)
    _connect(factory)
    assert factory.buildProtocol(None) is None
    a.connectionLost(None)
    assert factory.open == 1 and factory.buildProtocol(None) is not None


class _Buffered(StringTransport):
    """A transport holding ``dataBuffer`` bytes it could not send, as twisted's TCP transport
    does while the peer's window is closed."""

    dataBuffer = b"\x00" * 100  # noqa: N815 (twisted attribute)


def _aborted(tr: StringTransport) -> bool:
    return getattr(tr, "disconnected", False)  # what StringTransport.abortConnection sets


def _clocked() -> tuple[DNSStreamFactory, task.Clock]:
    disp = udp_dispatcher()[0]
    clock = task.Clock()
    disp.reactor = clock
    return DNSStreamFactory(disp, idle_timeout=10), clock


def test_idle_timeout_aborts_a_connection_whose_answers_are_unread() -> None:
    """loseConnection would wait for the unsent answers forever: the timeout aborts instead."""
    factory, clock = _clocked()
    for stalled in (True, False):  # the client's window closed (producer paused), or bytes left
        proto = factory.buildProtocol(None)
        tr = StringTransport() if stalled else _Buffered()
        proto.makeConnection(tr)
        proto.dataReceived(_framed(1))
        if stalled:
            proto.pauseProducing()
        clock.advance(9.9)
        assert not tr.disconnecting and not _aborted(tr)
        clock.advance(0.2)
        assert _aborted(tr), "a connection with unread answers was only asked to close gracefully"


def test_idle_timeout_closes_a_drained_connection_gracefully_then_aborts_if_stuck() -> None:
    factory, clock = _clocked()
    proto, tr = _connect(factory)
    proto.dataReceived(_framed(1))
    clock.advance(10.1)
    assert tr.disconnecting and not _aborted(tr)  # FIN: the answers are out
    clock.advance(CLOSE_GRACE)
    assert _aborted(tr)  # the close did not complete (here it never does): aborted after the grace
    proto, tr = _connect(factory)
    clock.advance(10.1)
    proto.connectionLost(None)  # a close that completes cancels the abort
    assert not clock.getDelayedCalls()


def test_at_the_cap_a_client_that_stopped_reading_makes_room() -> None:
    factory, _ = _clocked()
    factory.max_connections = 3
    conns = [_connect(factory) for _ in range(3)]
    conns[1][0].pauseProducing()  # stalled first
    conns[0][0].pauseProducing()
    conns[0][0].resumeProducing()  # it read again: not a victim any more
    conns[2][0].pauseProducing()
    new = factory.buildProtocol(None)
    assert new is not None and _aborted(conns[1][1]) and not _aborted(conns[2][1])
    assert factory.open == 2  # the victim no longer counts; its connectionLost does not count it again
    new.makeConnection(StringTransport())
    conns[1][0].connectionLost(None)
    assert factory.open == 3
    _connect(factory)
    assert _aborted(conns[2][1])
    assert factory.buildProtocol(None) is None  # every client left reads: the new one is refused


def test_fd_limit_is_raised_and_bounds_tcp_connections() -> None:
    import resource

    from kubedns.serve.listen import raise_fd_limit

    soft = raise_fd_limit()
    now_soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert soft == now_soft or now_soft == resource.RLIM_INFINITY
    assert hard == resource.RLIM_INFINITY or now_soft == min(hard, 1 << 20)
    disp = udp_dispatcher()[0]
    assert DNSStreamFactory(disp, fd_limit=1024).max_connections == 512
    assert DNSStreamFactory(disp, fd_limit=1 << 20).max_connections == 10000


def test_the_process_raises_its_open_files_limit_at_start(kubedns_process: Any) -> None:
    """Started with systemd's usual soft limit of 1024, twistd kubedns runs with the hard one."""
    import resource

    from tests.conftest import free_port
    from tests.dnsupstream import closed_port

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard <= 1024:
        pytest.skip("the hard open-files limit leaves nothing to raise")
    port = free_port()
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))  # the child inherits it
    try:
        p = kubedns_process({"servers": [{"zones": ["."], "listen": f"127.0.0.1:{port}",
                                          "forward": {"to": [f"127.0.0.1:{closed_port()}"]}}]})
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    p.wait_listening(port)
    limits = Path(f"/proc/{p.proc.pid}/limits").read_text()
    line = next(ln for ln in limits.splitlines() if ln.startswith("Max open files"))
    assert int(line.split()[3]) > 1024, line


# -- the HTTP endpoints' connections (kubedns/ops/health.py), same mechanics ----------------------

def _http_site(clock: task.Clock, cap: int = 100) -> Any:
    from twisted.web import resource

    from kubedns.ops.health import _QuietSite, _Text

    root = resource.Resource()
    root.putChild(b"health", _Text(lambda: (200, "OK")))
    site = _QuietSite(root, clock)
    site.max_connections = cap
    return site


def _http_connect(site: Any, transport: StringTransport | None = None) -> tuple[Any, StringTransport]:
    ch = site.buildProtocol(None)
    tr = transport or StringTransport()
    ch.makeConnection(tr)
    return ch, tr


def test_http_request_trickled_a_byte_at_a_time_is_cut_off_at_the_deadline() -> None:
    """twisted.web's idle timer restarts on every byte; the request deadline does not."""
    clock = task.Clock()
    ch, tr = _http_connect(_http_site(clock))
    ch.dataReceived(b"GET /health HTTP/1.1\r\n")
    for _ in range(9):
        clock.advance(1)
        ch.dataReceived(b"X")
    assert not tr.disconnecting
    clock.advance(1.01)
    assert tr.disconnecting  # no response was sent: a graceful close


def test_http_unread_response_is_aborted_not_waited_for() -> None:
    """HTTP/1.0: the response is written, then a graceful close, which waits for the client
    to read it; a client that never does is aborted at the deadline."""
    clock = task.Clock()
    ch, tr = _http_connect(_http_site(clock), _Buffered())
    ch.dataReceived(b"GET /health HTTP/1.0\r\n\r\n")
    assert b"200 OK" in tr.value() and tr.disconnecting and not _aborted(tr)
    clock.advance(10.1)
    assert _aborted(tr)


def test_http_keepalive_connection_gets_a_new_deadline_per_request() -> None:
    clock = task.Clock()
    ch, tr = _http_connect(_http_site(clock))
    for _ in range(3):
        clock.advance(9)
        ch.dataReceived(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    assert tr.value().count(b"200 OK") == 3 and not tr.disconnecting
    clock.advance(10.1)
    assert tr.disconnecting


def test_http_past_the_cap_the_oldest_waiting_connection_makes_room() -> None:
    clock = task.Clock()
    site = _http_site(clock, cap=2)
    a, tra = _http_connect(site)
    b, trb = _http_connect(site)
    c, trc = _http_connect(site)  # a was waiting longest for its request: it goes
    assert _aborted(tra) and not _aborted(trb) and len(site.channels) == 2
    a.connectionLost(None)
    b.dataReceived(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # half a request: still waiting, evictable
    _http_connect(site)
    assert _aborted(trb) and not _aborted(trc)
