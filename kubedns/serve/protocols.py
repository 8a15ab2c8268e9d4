"""The UDP and TCP protocols in front of a :class:`~kubedns.serve.server.Dispatcher`.

UDP answers from :class:`~kubedns.serve.fastcache.FastCache` before decoding anything and replies
with the socket's own ``sendto``; TCP frames length-prefixed messages with flow control so one
client can neither fill our memory with unread answers nor keep the reactor to itself.

A TCP connection is closed gracefully only when nothing is left to send: ``loseConnection``
waits for the write buffer to drain, which never happens if the client does not read, so a
connection with unsent answers is aborted instead (:func:`close_connection`).  The same holds
for the HTTP endpoints (``kubedns/ops/health.py``).
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Any, Protocol, cast

from twisted.internet import protocol
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.protocols.policies import TimeoutMixin
from zope.interface import implementer

if TYPE_CHECKING:
    from twisted.internet.address import IPv4Address, IPv6Address
    from twisted.internet.interfaces import IDelayedCall, IReactorTime
    from twisted.internet.udp import Port

    from kubedns.serve.server import Dispatcher

__all__ = ["DNSDatagramProtocol", "DNSDatagramProtocol6", "DNSStreamFactory", "DNSStreamProtocol", "close_connection", "unsent"]

log = Logger()

#: Seconds a graceful close may take before the connection is aborted anyway.
CLOSE_GRACE = 2.0


class StreamTransport(Protocol):
    """What the TCP and HTTP protocols use of their transport (twisted's ``tcp.Server``).

    No single zope interface has all of it: ``abortConnection`` is ``ITCPTransport``'s,
    ``registerProducer`` ``IConsumer``'s, pausing ``IPushProducer``'s, and ``connected`` /
    ``disconnecting`` are ``FileDescriptor`` attributes.
    """

    connected: int
    disconnecting: bool

    def write(self, data: bytes) -> None: ...
    def loseConnection(self) -> None: ...  # noqa: N802 (Twisted API)
    def abortConnection(self) -> None: ...  # noqa: N802
    def getPeer(self) -> IPv4Address | IPv6Address: ...  # noqa: N802
    def registerProducer(self, producer: IPushProducer, streaming: bool) -> None: ...  # noqa: N802
    def pauseProducing(self) -> None: ...  # noqa: N802
    def resumeProducing(self) -> None: ...  # noqa: N802


def unsent(transport: object) -> bool:
    """True when ``transport`` still holds bytes the peer has not taken.

    Reads twisted's ``FileDescriptor`` write buffers (``dataBuffer`` and ``_tempDataLen``); a
    transport without them counts as drained, which :func:`close_connection`'s grace covers.
    """
    return bool(getattr(transport, "dataBuffer", b"")) or bool(getattr(transport, "_tempDataLen", 0))


def close_connection(transport: StreamTransport, reactor: IReactorTime, stalled: bool = False) -> IDelayedCall | None:
    """Close ``transport`` now: abort it (RST, buffers dropped) when it has unsent data or
    ``stalled`` says its peer stopped reading, else close it gracefully (FIN).

    A graceful close that has not completed after :data:`CLOSE_GRACE` seconds is aborted; the
    delayed call doing that is returned (or None) so the caller can cancel it once the
    connection is lost.
    """
    if stalled or unsent(transport):
        transport.abortConnection()
        return None
    transport.loseConnection()

    def abort() -> None:
        if transport.connected:
            transport.abortConnection()

    return reactor.callLater(CLOSE_GRACE, abort)


class DNSDatagramProtocol(protocol.DatagramProtocol):
    """UDP: one datagram in, at most one out."""

    def __init__(self, dispatcher: Dispatcher):
        self.dispatcher = dispatcher

    def startProtocol(self) -> None:  # noqa: N802
        self._sendto = cast("Port", self.transport).socket.sendto  # a udp.Port: its socket
        self._fast = self.dispatcher.fast.entries
        self._aged = self.dispatcher.fast.aged
        self._seconds = self.dispatcher.reactor.seconds

    def datagramReceived(self, data: bytes, addr: Any) -> None:  # noqa: N802 (Twisted API)
        key = data[2:]
        entry = self._fast.get(key)
        if entry is not None:
            body = entry[0] if entry[3] is None else self._aged(key, entry, self._seconds())
            if body is not None:
                entry[1] += 1
                try:
                    self._sendto(data[:2] + body, addr)
                except OSError:
                    pass
                return
        self._answer(data, addr)

    def _answer(self, data: bytes, addr: Any) -> None:
        """Not a fast-path hit: the dispatcher answers (now, or later through a Deferred)."""
        result = self.dispatcher.handle(data, "udp", addr)
        if result is None:
            return
        if isinstance(result, bytes):
            self._send(result, addr)
        elif not isinstance(result, list):  # a list (a zone transfer's messages) is TCP's only
            result.addCallback(self._send, addr)
            result.addErrback(lambda f: log.failure("sending UDP answer failed", f))

    def for_ipv6(self) -> DNSDatagramProtocol6:
        """The protocol for the IPv6 socket of an every-address listener (same dispatcher)."""
        return DNSDatagramProtocol6(self.dispatcher)

    def _send(self, data: bytes | None, addr: Any) -> None:
        if data is None or self.transport is None:
            return
        try:  # the socket's own sendto: transport.write re-validates the address (~2.4 µs)
            self._sendto(data, addr)
        except OSError as e:  # e.g. EPERM from a firewall, ENOBUFS under load
            log.warn("UDP send to {addr} failed: {err}", addr=addr, err=e)


class DNSDatagramProtocol6(DNSDatagramProtocol):
    """UDP on the IPv6 socket of an every-address listener: its fast-path hits count in the
    entry's IPv6 slot (``entry[5]``), so metrics give them family 2 though the server label
    (``dns://:53``) reads as IPv4.

    The hit path is :meth:`DNSDatagramProtocol.datagramReceived`'s, repeated with another
    constant index: a per-instance index would cost an attribute load on every hit.  A miss goes
    to the same :meth:`DNSDatagramProtocol._answer`.
    """

    def datagramReceived(self, data: bytes, addr: Any) -> None:  # noqa: N802 (Twisted API)
        key = data[2:]
        entry = self._fast.get(key)
        if entry is not None:
            body = entry[0] if entry[3] is None else self._aged(key, entry, self._seconds())
            if body is not None:
                entry[5] += 1
                try:
                    self._sendto(data[:2] + body, addr)
                except OSError:
                    pass
                return
        self._answer(data, addr)


@implementer(IPushProducer)
class DNSStreamProtocol(protocol.Protocol, TimeoutMixin):
    """TCP: length-prefixed messages, pipelined, closed after an idle timeout (RFC 7766).

    A client that pipelines without reading must not make us buffer answers without bound, nor
    keep the reactor to itself: the protocol is its transport's streaming producer, so reading
    stops while the client's unread answers fill the write buffer and resumes when it drains,
    and at most :attr:`batch` messages are answered per turn before other clients get theirs.
    Only a complete message (or an answer sent) counts as activity for the idle timer, so a
    client trickling bytes is closed like an idle one.  At the idle timeout a connection whose
    client left answers unread is aborted, not closed gracefully (that would wait forever for
    the client to read them), and at the factory's connection cap such a stalled connection
    makes room for a new one.
    """

    max_pending = 64  # forwarded answers awaited at once on one connection
    batch = 32  # messages answered before yielding to the reactor
    factory: DNSStreamFactory  # the factory that built it (the only way one is made)
    _t: StreamTransport  # self.transport, as what it is (set at connectionMade)

    def __init__(self, dispatcher: Dispatcher, idle_timeout: float):
        self.dispatcher = dispatcher
        self.idle_timeout = idle_timeout
        # TimeoutMixin's clock, meant to be overridden: the injected reactor's
        self.callLater = dispatcher.reactor.callLater  # type: ignore[method-assign]  # noqa: N815
        self._buf = b""
        self._pending = 0
        self._blocked = False  # the transport's write buffer is full: the client is not reading
        self._later: IDelayedCall | None = None  # the next batch, scheduled
        self._closing: IDelayedCall | None = None  # the abort that backs a graceful close
        self.evicted = False  # aborted by the factory to make room: no longer counted as open

    def connectionMade(self) -> None:  # noqa: N802
        self.setTimeout(self.idle_timeout)
        self._t = cast(StreamTransport, self.transport)
        self._t.registerProducer(self, True)
        self.factory.open += 1

    # IPushProducer, called by the transport as its write buffer fills and drains
    def pauseProducing(self) -> None:  # noqa: N802
        self._blocked = True
        self._t.pauseProducing()
        if not self.evicted:
            self.factory.stalled.pop(self, None)
            self.factory.stalled[self] = None  # the most recently stalled last

    def resumeProducing(self) -> None:  # noqa: N802
        self._blocked = False
        self.factory.stalled.pop(self, None)
        self._process()

    def stopProducing(self) -> None:  # noqa: N802
        self._blocked = True

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        self._buf += data
        self._process()

    def _process(self) -> None:
        self._later = None
        done = 0
        while not self._blocked and len(self._buf) >= 2:
            (n,) = struct.unpack_from("!H", self._buf, 0)
            if len(self._buf) < 2 + n:
                break
            if done == self.batch:  # more to answer: let the other clients have a turn first
                self._t.pauseProducing()
                self._later = self.dispatcher.reactor.callLater(0, self._process)
                return
            packet, self._buf = self._buf[2 : 2 + n], self._buf[2 + n :]
            done += 1
            self.resetTimeout()
            if self._pending >= self.max_pending:
                self._t.loseConnection()
                return
            peer = self._t.getPeer()
            result = self.dispatcher.handle(packet, "tcp", (peer.host, peer.port))
            if result is None:
                if n < 12:
                    self._t.loseConnection()  # not DNS: do not keep reading garbage
                    return
                continue
            if isinstance(result, bytes):
                self._write(result)
            elif isinstance(result, list):  # a zone transfer: its messages in order
                for message in result:
                    self._write(message)
            else:
                self._pending += 1
                result.addCallback(self._write_pending)
                result.addErrback(lambda f: log.failure("TCP answer failed", f))
        if not self._blocked and self._t.connected and not self._t.disconnecting:
            self._t.resumeProducing()

    def _write_pending(self, data: bytes | None) -> None:
        self._pending -= 1
        self._write(data)

    def _write(self, data: bytes | None) -> None:
        if data is None or self.transport is None or not self._t.connected:
            return
        self._t.write(struct.pack("!H", len(data)) + data)
        self.resetTimeout()

    def connectionLost(self, reason: Any = None) -> None:  # noqa: N802
        self.setTimeout(None)  # no idle timer left behind per closed connection
        if self._later is not None and self._later.active():
            self._later.cancel()
        self._later = None
        if self._closing is not None and self._closing.active():
            self._closing.cancel()
        self._closing = None
        self._buf = b""
        self.factory.stalled.pop(self, None)
        if not self.evicted:
            self.factory.open -= 1

    def timeoutConnection(self) -> None:  # noqa: N802
        self._closing = close_connection(self._t, self.dispatcher.reactor, self._blocked)

    def evict(self) -> None:
        """Abort this connection to make room for another (the client stopped reading)."""
        self.evicted = True
        self._t.abortConnection()


class DNSStreamFactory(protocol.ServerFactory[DNSStreamProtocol]):
    """Builds :class:`DNSStreamProtocol`; past :attr:`max_connections` open at once (10000, or
    half the open-files limit if lower), a new connection takes the place of the one that
    stopped reading longest ago (aborted), or when every client reads, is closed at once (UDP
    keeps answering), so no client can use up the file descriptors forwarding and the watches
    need, and clients that never read cannot lock the others out."""

    max_connections = 10000

    def __init__(self, dispatcher: Dispatcher, idle_timeout: float = 10.0, fd_limit: int | None = None):
        self.dispatcher = dispatcher
        self.idle_timeout = idle_timeout
        self.open = 0
        #: connections whose client stopped reading (write buffer full), longest stalled first
        self.stalled: dict[DNSStreamProtocol, None] = {}
        if fd_limit is not None:  # leave half the descriptors to UDP, upstreams, watches and HTTP
            self.max_connections = max(16, min(self.max_connections, fd_limit // 2))

    def buildProtocol(self, addr: Any) -> DNSStreamProtocol | None:  # noqa: N802
        if self.open >= self.max_connections:
            if not self.stalled:
                return None
            victim = next(iter(self.stalled))
            del self.stalled[victim]
            self.open -= 1  # its connectionLost comes a turn later and does not count it again
            victim.evict()
        p = DNSStreamProtocol(self.dispatcher, self.idle_timeout)
        p.factory = self
        return p
