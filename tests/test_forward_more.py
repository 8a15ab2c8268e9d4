"""More forwarding tests over real loopback sockets: the request budget, serve_stale against an
upstream SERVFAIL, and per-upstream loop isolation (unit and through the twistd process).  Same
helpers (:mod:`tests.support.forwarding`) and style as :mod:`tests.test_forward` (twisted.trial on the real reactor,
:class:`tests.dnsupstream.DNSUpstream` upstreams on 127.0.0.x, shrunk timeouts).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import reactor, task
from twisted.names import dns

from kubedns.forward.cache import Cache
from kubedns.forward.chain import ForwardChain
from kubedns.forward.config import CacheConfig
from kubedns.forward.forwarder import UpstreamsFailed
from kubedns.forward.loop import LoopDetector
from tests.conftest import free_port, query, rrset_text, wait_until
from tests.dnsupstream import DNSUpstream
from tests.support.forwarding import ForwardTestCase, addrs, config, make_query

pytestmark = pytest.mark.timeout(30)


class BudgetTests(ForwardTestCase):
    async def test_tcp_retry_after_truncation_gets_only_the_budget_left(self) -> None:
        up = self.upstream()
        up.mode = "truncate"  # every UDP answer has TC set; TCP answers in full
        up.delay = 0.6  # on both transports: UDP answers at 0.6 s, TCP would at 1.2 s
        f = self.forwarder(config(up.address, timeout=1.0))
        f._budget = 1.0  # the whole request may take 1 s (REQUEST_BUDGET shrunk for the test)
        start = time.monotonic()
        m = await f.resolve(make_query(b"example.com"))
        took = time.monotonic() - start
        # The TCP retry had 0.4 s left, not a fresh 1 s try: it gives up at the deadline and the
        # truncated answer is relayed (the client retries over TCP itself).
        self.assertLess(took, 1.45)  # a fresh 1 s TCP try would end at 1.6 s or later
        self.assertEqual((m.rCode, m.trunc, m.answers), (dns.OK, 1, []))
        self.assertEqual(up.count(transport="tcp"), 1)


class StaleTests(ForwardTestCase):
    async def test_serve_stale_when_the_upstream_answers_servfail(self) -> None:
        up = self.upstream()
        clock = task.Clock()
        f = self.forwarder(config(up.address))
        ch = ForwardChain(f, Cache(CacheConfig(serve_stale=3600), reactor=clock), reactor=reactor)
        await ch.resolve(make_query(b"example.com"))
        clock.advance(301)  # expired
        up.mode = "servfail"  # e.g. the upstream lost its own upstreams
        for _ in range(2):
            m = await ch.resolve(make_query(b"example.com"))
            self.assertEqual((m.rCode, addrs(m), m.answers[0].ttl), (dns.OK, ["192.0.2.1"], 0))
        self.assertEqual(up.count(name="example.com"), 3)  # verified: asked each time
        up.stop()  # now every upstream is down
        m = await ch.resolve(make_query(b"example.com"))
        self.assertEqual(addrs(m), ["192.0.2.1"])


class LoopIsolationTests(ForwardTestCase):
    """A loop through one upstream isolates that upstream only; each recovers on its own."""

    def looping_setup(
        self, other: DNSUpstream, *, both: bool = False, **kw: object
    ) -> tuple[DNSUpstream, ForwardChain, LoopDetector]:
        """Upstream 0 sends everything back to our fake server; ``both``: ``other`` does too."""
        loop = self.upstream()
        chain, detector = self.loop_through_us(  # sequential: the loop first
            [loop, other], [loop, other] if both else [loop], recheck=0.3, **kw)
        detector.start()
        return loop, chain, detector

    async def test_only_the_looping_upstream_is_isolated_the_other_keeps_serving(self) -> None:
        good = self.upstream()
        loop, chain, detector = self.looping_setup(good, timeout=1.0)
        f = chain.forwarder
        await wait_until(lambda: detector.loop_detected, timeout=5, what="loop detection")
        self.assertEqual((f.is_looping(0), f.is_looping(1)), (True, False))
        self.assertEqual(f.looping_upstreams, [loop.address])
        self.assertFalse(chain.loop_detected)  # the block still forwards
        self.assertIsNone(f.disabled_reason)
        self.assertEqual(chain.stats()["forward"]["looping_upstreams"], [loop.address])
        start = time.monotonic()
        for qtype in (dns.A, dns.AAAA, dns.MX):
            m = await chain.resolve(make_query(b"example.com", qtype))
            self.assertIn(m.rCode, (dns.OK,))
        self.assertLess(time.monotonic() - start, 0.9)  # straight to the good upstream (a try into the loop costs its 1 s timeout)
        self.assertEqual(addrs(await chain.resolve(make_query(b"example.com"))), ["192.0.2.1"])
        # nothing but the loop probes went into the loop: no client query, no amplification
        self.assertEqual(loop.count() - loop.count(rdtype="HINFO"), 0)
        self.assertLessEqual(loop.count(rdtype="HINFO"), 2 + detector.rounds)

    async def test_loop_plus_dead_upstream_recovers_per_upstream(self) -> None:
        dead = self.upstream()
        dead.mode = "drop"
        loop, chain, detector = self.looping_setup(dead, timeout=0.3, max_fails=0)
        f = chain.forwarder
        await wait_until(lambda: detector.loop_detected, timeout=5, what="loop detection")
        self.assertEqual((f.is_looping(0), f.is_looping(1)), (True, False))
        # the other upstream is down: SERVFAIL, but fast and without touching the loop
        await self.assert_fails(chain.resolve(make_query(b"example.com")), UpstreamsFailed)
        # ... and as soon as it answers again the block is served, while the loop persists
        dead.mode = "answer"
        m = await chain.resolve(make_query(b"example.com"))
        self.assertEqual(addrs(m), ["192.0.2.1"])
        self.assertTrue(f.is_looping(0))
        self.assertEqual(loop.count() - loop.count(rdtype="HINFO"), 0)
        # the loop is fixed while the other upstream is dead again: the fixed one comes back alone
        dead.mode = "drop"
        loop.mode = "answer"
        await wait_until(lambda: not f.is_looping(0), timeout=5, what="per-upstream recovery")
        self.assertFalse(detector.loop_detected)
        m = await chain.resolve(make_query(b"example.com", dns.AAAA))
        self.assertEqual(m.rCode, dns.OK)
        self.assertGreaterEqual(loop.count(rdtype="AAAA"), 1)

    async def test_every_upstream_looping_disables_forwarding(self) -> None:
        other = self.upstream()
        loop, chain, detector = self.looping_setup(other, both=True, timeout=1.0)
        f = chain.forwarder
        await wait_until(lambda: f.is_looping(0) and f.is_looping(1), timeout=5, what="both isolated")
        self.assertTrue(chain.loop_detected)
        self.assertIn(loop.address, f.disabled_reason or "")
        self.assertIn(other.address, f.disabled_reason or "")
        start = time.monotonic()
        await self.assert_fails(chain.resolve(make_query(b"example.com")), UpstreamsFailed)
        self.assertLess(time.monotonic() - start, 0.5)  # at once, not after a timeout
        other.mode = "answer"  # one loop fixed: that upstream serves again, the other stays out
        await wait_until(lambda: not f.is_looping(1), timeout=5, what="recovery of the fixed one")
        self.assertTrue(f.is_looping(0))
        self.assertFalse(chain.loop_detected)
        self.assertEqual(addrs(await chain.resolve(make_query(b"example.com"))), ["192.0.2.1"])


def test_e2e_one_looping_upstream_is_isolated_and_the_other_serves(kubedns_process: Any, tmp_path: Path) -> None:
    """Through the real twistd process: the server's observe() hook, the chain, the detector."""
    loop = DNSUpstream("127.0.0.1").start()
    good = DNSUpstream("127.0.0.2").start()
    try:
        good.add("example.org", "A", "192.0.2.1")
        port = free_port()
        loop.mode = "forward"
        loop.forward_to = ("127.0.0.1", port)  # sends our queries back to us
        p = kubedns_process({"servers": [{
            "zones": ["."], "listen": f"127.0.0.1:{port}",
            "forward": {"to": [loop.address, good.address], "policy": "sequential", "timeout": "1s"},
            "loop": {},
        }]})
        p.wait_listening(port)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and "Loop detected" not in p.log():
            time.sleep(0.2)
        assert "Loop detected" in p.log(), p.log()
        assert "keep serving" in p.log()
        # before detection, wait_listening's own probe query may have gone the sequential way into
        # the loop; from detection on, nothing but loop probes may
        before = loop.count() - loop.count(rdtype="HINFO")
        for _ in range(3):
            assert rrset_text(query(port, "example.org", timeout=5)) == ["example.org A 192.0.2.1"]
        time.sleep(0.3)
        assert loop.count() - loop.count(rdtype="HINFO") == before  # no query went into the loop
        assert p.proc.poll() is None
    finally:
        loop.stop()
        good.stop()
