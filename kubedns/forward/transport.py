"""Sending one query to one upstream: the errors every transport shares, and the persistent
pipelined TCP/TLS stream.  UDP lives in :mod:`kubedns.forward.udppool`.

UDP sockets are never numbered at or past the forwarder's ``max_fd`` (it keeps a reserve below
the open-files limit for the DNS listeners' TCP clients and the HTTP endpoints): such a socket is
closed at once and the try fails with :class:`NoDescriptorError`, as does EMFILE/ENFILE.  Linux
hands out the lowest free number, so a number at ``max_fd`` means at least that many descriptors
are open: the check is one comparison, no counting.

TCP and DNS-over-TLS: one connection per upstream is kept and reused, queries are pipelined and
matched by ID (RFC 7766), idle connections close after ``expire``.  A query written on an already
open connection that the server then closes unanswered is retried once on a fresh connection
(servers close idle connections whenever they like); a query that times out on a connection that
has gone silent closes that connection so the next query starts clean.
"""

from __future__ import annotations

import secrets
from typing import Any, cast

from twisted.internet import defer
from twisted.internet.interfaces import ITCPTransport
from twisted.internet.protocol import Factory
from twisted.protocols.basic import Int16StringReceiver
from twisted.python.failure import Failure

from kubedns.forward.message import Expect, with_id

__all__ = [
    "ConnectionFailedError",
    "NoDescriptorError",
    "StreamClient",
    "TransportError",
    "UpstreamTimeoutError",
    "describe",
    "fd_reserve",
]


class TransportError(Exception):
    """One try at one upstream failed (no answer to relay)."""


class UpstreamTimeoutError(TransportError):
    pass


class ConnectionFailedError(TransportError):
    pass


class NoDescriptorError(TransportError):
    """No descriptor to spare for a query socket: a local limit, not the upstream's failure."""


def fd_reserve(soft_limit: int) -> int:
    """Descriptors forwarding leaves free below the open-files soft limit: a quarter, 64 to 4096."""
    return max(64, min(4096, soft_limit // 4))


# -- TCP / TLS ---------------------------------------------------------------------------------


class _Pending:
    __slots__ = ("template", "expect", "d", "timer", "qid", "retried", "conn", "rx_at_send")

    def __init__(self, template: bytes, expect: Expect, d: defer.Deferred) -> None:
        self.template = template
        self.expect = expect
        self.d = d
        self.timer: Any = None
        self.qid = -1
        self.retried = False
        self.conn: _StreamProtocol | None = None
        self.rx_at_send = 0


class _StreamProtocol(Int16StringReceiver):
    MAX_LENGTH = 65535

    def __init__(self, owner: StreamClient) -> None:
        self.owner = owner
        self.pending: dict[int, _Pending] = {}
        self.rx = 0  # answers received on this connection
        self.lost = False

    @property
    def tcp(self) -> ITCPTransport:
        """The transport, a TCP connection or TLS over one: both can ``abortConnection``."""
        return cast(ITCPTransport, self.transport)

    def connectionMade(self) -> None:  # noqa: N802 (Twisted API)
        self.owner._connected(self)

    def stringReceived(self, data: bytes) -> None:  # noqa: N802 (Twisted API)
        self.rx += 1
        self.owner._answer(self, data)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]  # noqa: N802
        self.lost = True
        self.owner._lost(self, reason)


class _StreamFactory(Factory):
    noisy = False  # no "Starting factory" log line per connection

    def __init__(self, owner: StreamClient) -> None:
        self.owner = owner

    def buildProtocol(self, addr: Any) -> _StreamProtocol:  # noqa: N802 (Twisted API)
        return _StreamProtocol(self.owner)


class StreamClient:
    """A reused, pipelined DNS-over-TCP or DNS-over-TLS connection to one upstream.

    ``tls_options`` is an ``IOpenSSLClientConnectionCreator`` (from ``optionsForClientTLS``) or
    None for plain TCP.  Connections are opened lazily by :meth:`query`.
    """

    def __init__(
        self,
        reactor: Any,
        host: str,
        port: int,
        *,
        tls_options: Any = None,
        expire: float = 10.0,
        connect_timeout: float = 5.0,
    ) -> None:
        from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, wrapClientTLS

        self._reactor = reactor
        self.label = f"{'tls' if tls_options is not None else 'tcp'}://{host}:{port}"
        cls = TCP6ClientEndpoint if ":" in host else TCP4ClientEndpoint
        endpoint = cls(reactor, host, port, timeout=max(1, int(connect_timeout + 0.999)))
        self._endpoint = wrapClientTLS(tls_options, endpoint) if tls_options is not None else endpoint
        self._expire = expire
        self._proto: _StreamProtocol | None = None
        self._connecting: defer.Deferred | None = None
        self._waiting: list[_Pending] = []
        self._idle: Any = None
        self._closing = False
        self._closed_waiters: list[defer.Deferred] = []
        self.connects = 0  # connections opened (for metrics / tests)
        self.reuses = 0  # queries sent on an already open connection

    # -- public --------------------------------------------------------------------------------
    def query(self, template: bytes, expect: Expect, timeout: float) -> defer.Deferred:
        """Send one query; fire with the answer's bytes or fail with a :class:`TransportError`."""
        p: _Pending

        def cancel(_: defer.Deferred) -> None:
            self._forget(p)

        d: defer.Deferred = defer.Deferred(canceller=cancel)
        p = _Pending(template, expect, d)
        if self._closing:
            d.errback(Failure(ConnectionFailedError(f"{self.label}: client closed")))
            return d
        p.timer = self._reactor.callLater(timeout, self._timed_out, p)
        self._dispatch(p, reuse_ok=True)
        return d

    def close(self) -> defer.Deferred | None:
        """Fail everything pending, close the connection; the Deferred fires once it is gone."""
        self._closing = True
        self._cancel_idle()
        for p in list(self._waiting):
            self._fail(p, ConnectionFailedError(f"{self.label}: client closed"))
        if self._connecting is not None:
            self._connecting.cancel()
        proto = self._proto
        if proto is None or proto.lost:
            return None
        for p in list(proto.pending.values()):
            self._fail(p, ConnectionFailedError(f"{self.label}: client closed"))
        d: defer.Deferred = defer.Deferred()
        self._closed_waiters.append(d)
        proto.tcp.abortConnection()
        return d

    @property
    def connected(self) -> bool:
        return self._proto is not None and not self._proto.lost

    # -- internals -----------------------------------------------------------------------------
    def _dispatch(self, p: _Pending, *, reuse_ok: bool) -> None:
        proto = self._proto
        if proto is not None and not proto.lost and reuse_ok:
            self.reuses += 1
            self._send(proto, p, reused=True)
            return
        self._waiting.append(p)
        if self._connecting is None and (proto is None or proto.lost):
            self._connect()

    def _connect(self) -> None:
        self.connects += 1
        d = self._endpoint.connect(_StreamFactory(self))
        self._connecting = d

        def failed(f: Failure) -> None:
            if self._connecting is d:
                self._connecting = None
            for p in list(self._waiting):
                self._fail(p, ConnectionFailedError(f"{self.label}: {f.getErrorMessage()}"))

        def done(_: Any) -> None:
            if self._connecting is d:
                self._connecting = None

        d.addCallbacks(done, failed)

    def _connected(self, proto: _StreamProtocol) -> None:
        if self._closing:
            proto.tcp.abortConnection()
            return
        self._proto = proto
        waiting, self._waiting = self._waiting, []
        for p in waiting:
            self._send(proto, p, reused=False)
        self._maybe_idle(proto)

    def _send(self, proto: _StreamProtocol, p: _Pending, *, reused: bool) -> None:
        qid = secrets.randbits(16)
        while qid in proto.pending:
            qid = secrets.randbits(16)
        p.qid = qid
        p.conn = proto
        p.rx_at_send = proto.rx
        if not reused:
            p.retried = True  # a fresh connection failing is a real failure: no second chance
        proto.pending[qid] = p
        self._cancel_idle()
        proto.sendString(with_id(p.template, qid))

    def _answer(self, proto: _StreamProtocol, data: bytes) -> None:
        if len(data) < 12:
            return
        qid = int.from_bytes(data[:2], "big")
        p = proto.pending.get(qid)
        if p is None or not p.expect.matches(data, qid):
            return  # an answer to a query that already timed out, or garbage: ignore
        del proto.pending[qid]
        self._stop_timer(p)
        p.d.callback(data)
        self._maybe_idle(proto)

    def _lost(self, proto: _StreamProtocol, reason: Failure | None) -> None:
        if self._proto is proto:
            self._proto = None
            self._cancel_idle()
        why = reason.getErrorMessage() if reason is not None else "connection lost"
        retry: list[_Pending] = []
        for p in list(proto.pending.values()):
            if p.retried or self._closing:
                self._fail(p, ConnectionFailedError(f"{self.label}: {why}"))
            else:
                p.retried = True
                retry.append(p)
        proto.pending.clear()
        for p in retry:
            p.conn = None
            self._dispatch(p, reuse_ok=False)
        if self._closing:
            waiters, self._closed_waiters = self._closed_waiters, []
            for d in waiters:
                d.callback(None)

    def _timed_out(self, p: _Pending) -> None:
        p.timer = None
        proto = p.conn
        self._fail(p, UpstreamTimeoutError(f"{self.label}: no answer"))
        if proto is not None and not proto.lost and proto.rx == p.rx_at_send:
            # Nothing at all came back since this query went out: treat the connection as dead.
            proto.tcp.abortConnection()

    def _fail(self, p: _Pending, err: Exception) -> None:
        self._forget(p)
        if not p.d.called:
            p.d.errback(Failure(err))

    def _forget(self, p: _Pending) -> None:
        self._stop_timer(p)
        if p in self._waiting:
            self._waiting.remove(p)
        if p.conn is not None and p.conn.pending.get(p.qid) is p:
            del p.conn.pending[p.qid]
            self._maybe_idle(p.conn)

    @staticmethod
    def _stop_timer(p: _Pending) -> None:
        if p.timer is not None:
            if p.timer.active():
                p.timer.cancel()
            p.timer = None

    def _maybe_idle(self, proto: _StreamProtocol) -> None:
        if proto is self._proto and not proto.pending and not self._closing:
            self._cancel_idle()
            self._idle = self._reactor.callLater(self._expire, self._expire_now, proto)

    def _expire_now(self, proto: _StreamProtocol) -> None:
        self._idle = None
        if proto is self._proto and not proto.pending and not proto.lost:
            proto.tcp.loseConnection()

    def _cancel_idle(self) -> None:
        if self._idle is not None:
            if self._idle.active():
                self._idle.cancel()
            self._idle = None


def describe(err: BaseException | Failure) -> str:
    """A short one-line reason for logs and UpstreamsFailed."""
    exc = err.value if isinstance(err, Failure) else err
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0] if text else type(exc).__name__
