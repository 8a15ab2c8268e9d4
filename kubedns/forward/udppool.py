"""UDP queries to one upstream over a pool of open sockets, each on its own random port.

Why: opening a socket per query (``socket``, ``bind``, ``connect``, two ``epoll_ctl`` and a
``close``: six system calls and a Python socket object) was a tenth of a forwarded cache miss's
CPU.  As unbound keeps its outgoing ports open, a socket here is kept after a good answer and
reused by a later query, and it is still used by one query at a time: a descriptor per query in
flight, exactly as before, so the descriptor reserve and its refusals are unchanged.

What is kept per query: a fresh random ID (``os.urandom``), a source port the kernel picked at random
(the socket is taken at random among the idle ones), the socket ``connect()``-ed to the upstream
(the kernel drops datagrams from anyone else, and an ICMP port-unreachable fails the try at once),
and the answer checks on the raw bytes (source address, ID, QR, question; mismatches ignored).
Ports are re-randomised all the time: a socket is closed after ``MAX_USES`` answers or
``MAX_AGE`` seconds, after a timeout (a late answer must not meet the next query) and after any
error.  At most ``MAX_IDLE`` idle sockets are kept per upstream (enough for the bursts of a few
hundred misses in flight: fewer made the pool open and close sockets all the time), and idle
ones past ``MAX_AGE`` are closed by a sweep every ``MAX_AGE`` seconds.  While idle, a socket stays
registered with the reactor and drops whatever arrives.  IDs come from ``os.urandom``, read
``_IDS`` at a time.
"""

from __future__ import annotations

import errno
import heapq
import os
import random
import socket
from typing import Any, Protocol

from twisted.internet import defer
from twisted.internet.interfaces import IReadDescriptor
from twisted.python.failure import Failure
from zope.interface import implementer

from kubedns.forward.message import Expect
from kubedns.forward.transport import ConnectionFailedError, NoDescriptorError, UpstreamTimeoutError

__all__ = ["MAX_AGE", "MAX_IDLE", "MAX_USES", "QuerySink", "Sink", "UDPPool"]


class Sink(Protocol):
    """Where an outcome goes: a Deferred, or anything with these two methods."""

    def callback(self, result: Any) -> Any: ...

    def errback(self, fail: Any) -> Any: ...


class QuerySink(Sink, Protocol):
    """A query's sink: ``called`` once it no longer wants a (late) failure."""

    called: Any

MAX_USES = 100  # answers one socket (one source port) carries before it is closed
MAX_AGE = 30.0  # seconds a socket may live, however few queries it carried
MAX_IDLE = 256  # idle sockets kept per upstream; more are closed as they come back
_IDS = 256  # random IDs read from the kernel at a time (one getrandom call, not one per query)


@implementer(IReadDescriptor)
class _PooledSocket:
    """One connected UDP socket on a random port, registered with the reactor for its lifetime."""

    __slots__ = ("pool", "sock", "fd", "born", "uses", "qid", "expect", "d", "ignored")

    def __init__(self, pool: UDPPool, sock: socket.socket, born: float) -> None:
        self.pool = pool
        self.sock: socket.socket | None = sock
        self.fd = sock.fileno()
        self.born = born
        self.uses = 0
        self.qid = -1
        self.expect: Expect | None = None
        self.d: QuerySink | None = None  # the query in flight (a Deferred or a Sink), None while idle
        self.ignored = 0  # datagrams that did not match (wrong ID / question / source, or idle)

    # IReadDescriptor
    def fileno(self) -> int:
        return self.fd if self.sock is not None else -1

    def logPrefix(self) -> str:  # noqa: N802 (Twisted API)
        return "kubedns-udp"

    def doRead(self) -> None:  # noqa: N802 (Twisted API)
        addr = self.pool.addr
        for _ in range(32):
            sock = self.sock
            if sock is None:
                return
            try:
                data, src = sock.recvfrom(65535)
            except BlockingIOError:
                return
            except OSError as e:
                self.fail_with(self.pool.error(e))
                return
            d = self.d
            expect = self.expect
            if d is None or expect is None or src[0] != addr[0] or src[1] != addr[1] or not expect.matches(data, self.qid):
                self.ignored += 1
                continue
            self.uses += 1
            self.release()
            self.pool.give_back(self)
            d.callback(data)
            return

    def connectionLost(self, reason: Failure) -> None:  # noqa: N802 (Twisted API)
        # epoll reports a pending socket error (ICMP unreachable) as a lost connection
        why = "connection refused"
        if self.sock is not None:
            err = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                why = os.strerror(err)
        self.fail_with(ConnectionFailedError(f"{self.pool.label}: {why}"))

    # the query in flight
    def send(self, data: bytes, qid: int, expect: Expect, d: QuerySink, timeout: float) -> None:
        assert self.sock is not None
        self.qid = qid
        self.expect = expect
        self.d = d
        self.pool.time_out(self, d, timeout)
        self.sock.send(data)

    def release(self) -> None:
        """Forget the query in flight (its Deferred is fired by the caller)."""
        self.d = None
        self.expect = None

    def cancel(self, d: QuerySink) -> None:
        """The canceller of query ``d``: close the socket if ``d`` is still its query."""
        if self.d is d:
            self.close()

    def timed_out(self) -> None:
        self.fail_with(UpstreamTimeoutError(f"{self.pool.label}: no answer over UDP"))

    def fail_with(self, err: Exception) -> None:
        d = self.d
        self.close()
        if d is not None and not d.called:
            d.errback(Failure(err))

    def close(self) -> None:
        self.release()
        sock, self.sock = self.sock, None
        if sock is not None:
            self.pool.reactor.removeReader(self)
            sock.close()


class UDPPool:
    """UDP exchanges with one upstream (``host``, ``port``) over reused random-port sockets."""

    def __init__(self, reactor: Any, host: str, port: int) -> None:
        self.reactor = reactor
        self.addr = (host, port)
        self.v6 = ":" in host
        self.label = f"[{host}]:{port}" if self.v6 else f"{host}:{port}"
        self._idle: list[_PooledSocket] = []
        self._closed = False
        self._sweep: Any = None  # the DelayedCall closing aged idle sockets, while any are idle
        self._ids: list[int] = []
        #: (deadline, n, socket, query) per query sent, earliest first, and one DelayedCall for the
        #: earliest: a timer per query (callLater and cancel) cost more than the rest of the send.
        #: Entries of answered queries stay until their deadline and are skipped then.
        self._deadlines: list[tuple[float, int, _PooledSocket, QuerySink]] = []
        self._n = 0
        self._timer: Any = None
        self._timer_at = 0.0
        self.opened = 0  # sockets opened (tests, metrics)

    def query(self, template: bytes, expect: Expect, timeout: float, max_fd: int = 0) -> defer.Deferred:
        """Send ``template`` with a fresh random ID; fire with the answer's bytes.

        Fails with UpstreamTimeoutError, ConnectionFailedError or (no socket to spare below
        ``max_fd``, or none at all) NoDescriptorError; cancelling closes the socket.
        """
        try:
            s = self._take(max_fd)
        except (OSError, NoDescriptorError) as e:
            return defer.fail(self.error(e))
        # the canceller is a method of the socket, not a closure over the Deferred: no cycle
        # outlives the query for the garbage collector to find
        d: defer.Deferred = defer.Deferred(canceller=s.cancel)
        try:
            qid = self._qid()
            s.send(qid.to_bytes(2, "big") + template[2:], qid, expect, d, timeout)
        except OSError as e:  # ENETUNREACH, ECONNREFUSED from an earlier ICMP...
            s.close()
            if not d.called:
                d.errback(Failure(self.error(e)))
        return d

    def send(self, template: bytes, expect: Expect, timeout: float, max_fd: int, sink: QuerySink) -> _PooledSocket | None:
        """:meth:`query` without a Deferred: ``sink.callback(answer)`` or ``sink.errback(Failure)``
        (the same failures), called once unless ``sink.called``.  Returns the socket, whose
        ``cancel(sink)`` closes it while the query is in flight; None when the query failed at
        once (``sink.errback`` was called).  For the forwarder's own tries: a Deferred and its
        callbacks per try were a tenth of a forwarded miss's CPU.
        """
        try:
            s = self._take(max_fd)
        except (OSError, NoDescriptorError) as e:
            sink.errback(Failure(self.error(e)))
            return None
        try:
            qid = self._qid()
            s.send(qid.to_bytes(2, "big") + template[2:], qid, expect, sink, timeout)
        except OSError as e:
            s.close()
            if not sink.called:
                sink.errback(Failure(self.error(e)))
            return None
        return s

    def _qid(self) -> int:
        ids = self._ids
        if not ids:
            raw = os.urandom(2 * _IDS)
            ids.extend(int.from_bytes(raw[i : i + 2], "big") for i in range(0, 2 * _IDS, 2))
        return ids.pop()

    def time_out(self, s: _PooledSocket, d: QuerySink, timeout: float) -> None:
        """Fail ``s``'s query ``d`` after ``timeout`` seconds unless it ended before."""
        at = self.reactor.seconds() + timeout
        self._n += 1
        heapq.heappush(self._deadlines, (at, self._n, s, d))
        timer = self._timer
        if timer is None:
            self._timer = self.reactor.callLater(timeout, self._expire)
            self._timer_at = at
        elif at < self._timer_at:
            timer.reset(timeout)
            self._timer_at = at

    def _expire(self) -> None:
        self._timer = None
        heap = self._deadlines
        now = self.reactor.seconds()
        while heap and heap[0][0] <= now:
            _, _, s, d = heapq.heappop(heap)
            if s.d is d:
                s.timed_out()
        self._schedule()

    def _schedule(self) -> None:
        heap = self._deadlines
        while heap and heap[0][2].d is not heap[0][3]:  # ended already
            heapq.heappop(heap)
        if heap and self._timer is None:
            self._timer_at = heap[0][0]
            self._timer = self.reactor.callLater(max(0.0, self._timer_at - self.reactor.seconds()), self._expire)
        elif not heap and self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None

    def close(self) -> None:
        """Close the idle sockets; sockets in use close when their query ends."""
        self._closed = True
        self._deadlines = [e for e in self._deadlines if e[2].d is e[3]]  # only queries in flight
        heapq.heapify(self._deadlines)
        self._schedule()
        if self._sweep is not None:
            if self._sweep.active():
                self._sweep.cancel()
            self._sweep = None
        idle, self._idle = self._idle, []
        for s in idle:
            s.close()

    def reopen(self) -> None:
        self._closed = False

    @property
    def idle(self) -> int:
        return len(self._idle)

    # internals
    def _take(self, max_fd: int) -> _PooledSocket:
        idle = self._idle
        now = self.reactor.seconds()
        while idle:
            i = random.randrange(len(idle))  # noqa: S311 (which open port: the ID is the secret part)
            s = idle[i]
            idle[i] = idle[-1]
            idle.pop()
            if s.sock is not None and now - s.born < MAX_AGE:
                return s
            s.close()
        return self._open(now, max_fd)

    def _open(self, now: float, max_fd: int) -> _PooledSocket:
        sock = socket.socket(socket.AF_INET6 if self.v6 else socket.AF_INET, socket.SOCK_DGRAM)
        if max_fd and sock.fileno() >= max_fd:
            sock.close()
            raise NoDescriptorError(f"{self.label}: no descriptor to spare ({max_fd} open, the rest is kept "
                                    "for DNS clients and the HTTP endpoints)")
        try:
            sock.setblocking(False)
            sock.bind(("::" if self.v6 else "0.0.0.0", 0))  # an ephemeral port the kernel picks at random
            sock.connect(self.addr)  # the kernel now drops datagrams from anyone else
        except OSError:
            sock.close()
            raise
        s = _PooledSocket(self, sock, now)
        self.reactor.addReader(s)
        self.opened += 1
        return s

    def give_back(self, s: _PooledSocket) -> None:
        if self._closed or s.uses >= MAX_USES or len(self._idle) >= MAX_IDLE:
            s.close()
        else:
            self._idle.append(s)
            if self._sweep is None:
                self._sweep = self.reactor.callLater(MAX_AGE, self._sweep_aged)

    def _sweep_aged(self) -> None:
        self._sweep = None
        now = self.reactor.seconds()
        keep = []
        for s in self._idle:
            if s.sock is not None and now - s.born < MAX_AGE:
                keep.append(s)
            else:
                s.close()
        self._idle = keep
        if keep and not self._closed:
            self._sweep = self.reactor.callLater(MAX_AGE, self._sweep_aged)

    def error(self, e: OSError | NoDescriptorError) -> Exception:
        if isinstance(e, NoDescriptorError):
            return e
        cls = NoDescriptorError if e.errno in (errno.EMFILE, errno.ENFILE) else ConnectionFailedError
        return cls(f"{self.label}: {e.strerror or e}")
