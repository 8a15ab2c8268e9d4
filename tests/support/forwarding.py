"""The forwarding tests' base case: loopback upstreams, forwarders, and a loop through "us".

Shared by ``tests/test_forward.py`` and ``tests/test_forward_more.py``: every upstream is a
:class:`tests.dnsupstream.DNSUpstream` on 127.0.0.1 and every forwarder is stopped after its test.
:class:`LoopServer` plays the server's side of a forwarding loop for the loop detector's tests.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, protocol, reactor
from twisted.names import dns
from twisted.trial import unittest

from kubedns.forward.cache import Cache
from kubedns.forward.chain import ForwardChain
from kubedns.forward.config import CacheConfig, ForwardConfig
from kubedns.forward.forwarder import Forwarder
from kubedns.forward.loop import LoopDetector
from kubedns.forward.upstream import parse_upstream
from tests.dnsupstream import DNSUpstream

__all__ = ["ForwardTestCase", "LoopServer", "addrs", "config", "make_query"]


def make_query(name: bytes, qtype: int = dns.A, *, rd: bool = True, do: bool = False, cd: bool = False) -> dns.Message:
    """A client query as the server hands it over (a decoded twisted Message, OPT if ``do``)."""
    q = dns.Message(recDes=int(rd), checkingDisabled=int(cd))
    q.addQuery(name, qtype)
    if do:
        q.additional.append(dns._OPTHeader(udpPayloadSize=4096, dnssecOK=True))
    # round-trip through the wire so the query looks exactly like a decoded client query
    wire = q.toStr()
    m = dns.Message()
    m.fromStr(wire)
    return m


def config(*to: str, **kw: Any) -> ForwardConfig:
    """A forward config to the upstreams ``to``, 0.5 s per try and sequential unless ``kw`` says."""
    kw.setdefault("timeout", 0.5)
    kw.setdefault("policy", "sequential")
    return ForwardConfig(to=tuple(parse_upstream(t) for t in to), **kw)


def addrs(msg: dns.Message) -> list[str]:
    """The A addresses of an answer, in order."""
    return [rr.payload.dottedQuad() for rr in msg.answers if rr.type == dns.A]


class ForwardTestCase(unittest.TestCase):
    """A trial case on the real reactor with loopback upstreams and forwarders that stop after it."""

    timeout = 20

    def upstream(self, *, tls: Any = None) -> DNSUpstream:
        up = DNSUpstream("127.0.0.1", tls=tls).start()
        self.addCleanup(up.stop)
        up.add("example.com", "A", "192.0.2.1", ttl=300)
        return up

    def forwarder(self, cfg: ForwardConfig) -> Forwarder:
        f = Forwarder(cfg, reactor=reactor)
        f.start()
        self.addCleanup(f.stop)
        return f

    def loop_through_us(
        self, upstreams: list[DNSUpstream], looping: list[DNSUpstream], *, recheck: float, **kw: Any
    ) -> tuple[ForwardChain, LoopDetector]:
        """A chain over ``upstreams`` (in order) whose ``looping`` ones send every query back to
        a fake server of ours, and its loop detector (not started yet)."""
        f = self.forwarder(config(*(u.address for u in upstreams), **kw))
        chain = ForwardChain(f, Cache(CacheConfig()), reactor=reactor)
        detector = LoopDetector(chain.forwarder, zone=b"", reactor=reactor, recheck=recheck)
        port = reactor.listenUDP(0, LoopServer(chain, detector), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.addCleanup(detector.stop)
        for up in looping:
            up.mode = "forward"  # sends everything back to "us"
            up.forward_to = ("127.0.0.1", port.getHost().port)
            up.forward_timeout = 1.0
        return chain, detector

    async def assert_fails(self, d: defer.Deferred, exc: type[Exception]) -> Exception:
        try:
            result = await d
        except exc as e:
            return e
        raise AssertionError(f"expected {exc.__name__}, got {result!r}")


class LoopServer(protocol.DatagramProtocol):
    """The server's side of the loop: observe() every name, then forward through the chain."""

    def __init__(self, chain: ForwardChain, detector: LoopDetector) -> None:
        self.chain = chain
        self.detector = detector
        self.received = 0

    def datagramReceived(self, data: bytes, addr: Any) -> None:  # noqa: N802
        self.received += 1
        q = dns.Message()
        q.fromStr(data)

        def reply(m: dns.Message) -> None:
            m.id, m.answer, m.queries = q.id, 1, q.queries
            self.transport.write(m.toStr(), addr)

        def servfail(_: Any = None) -> None:
            reply(dns.Message(rCode=dns.ESERVER))

        if self.detector.observe(q.queries[0].name.name):
            servfail()
            return
        self.chain.resolve(q).addCallbacks(reply, servfail)
