"""Forwarding over real loopback sockets: the Forwarder, the ForwardChain and the LoopDetector.

Every upstream is a :class:`tests.dnsupstream.DNSUpstream` on 127.0.0.1 with an ephemeral port,
driven through its knobs (records, mode, delay, TLS); the code under test runs on the real
reactor (twisted.trial).  Timeouts are shrunk (0.3-0.5 s per try) so failover cases take about
one timeout.  The config-parsing tests at the end are plain pytest functions.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import defer, reactor, task
from twisted.names import dns
from twisted.trial import unittest

from kubedns.configbase import ConfigError, Node
from kubedns.forward.cache import Cache
from kubedns.forward.chain import ForwardChain
from kubedns.forward.config import (
    CacheConfig,
    ForwardConfig,
    LoopConfig,
    parse_cache,
    parse_forward,
    parse_loop,
)
from kubedns.forward.forwarder import Forwarder, Refused, UpstreamsFailed
from kubedns.forward.loop import LoopDetector
from kubedns.forward.upstream import UpstreamSpec, parse_upstream
from tests.conftest import wait_until
from tests.dnsupstream import DNSUpstream, closed_port, make_tls_files
from tests.support.forwarding import ForwardTestCase, addrs, config, make_query

pytestmark = pytest.mark.timeout(30)


def sleep(seconds: float) -> defer.Deferred:
    return task.deferLater(reactor, seconds, lambda: None)


# -- forwarding --------------------------------------------------------------------------------


class ForwardingTests(ForwardTestCase):
    async def test_forwards_a_aaaa_mx_txt_with_client_bits(self) -> None:
        up = self.upstream()
        up.add("example.com", "AAAA", "2001:db8::1")
        up.add("example.com", "MX", "10 mail.example.com.")
        up.add("example.com", "TXT", '"hello world"')
        f = self.forwarder(config(up.address))
        a = await f.resolve(make_query(b"example.com", dns.A))
        self.assertEqual(a.rCode, dns.OK)
        self.assertEqual([rr.payload.dottedQuad() for rr in a.answers], ["192.0.2.1"])
        self.assertEqual(a.answers[0].ttl, 300)
        aaaa = await f.resolve(make_query(b"example.com", dns.AAAA))
        self.assertEqual(aaaa.answers[0].payload.address, bytes.fromhex("20010db8000000000000000000000001"))
        mx = await f.resolve(make_query(b"Example.COM", dns.MX, do=True, cd=True))
        self.assertEqual(
            [(rr.payload.preference, rr.payload.name.name.lower()) for rr in mx.answers], [(10, b"mail.example.com")]
        )
        txt = await f.resolve(make_query(b"example.com", dns.TXT, rd=False))
        self.assertEqual(txt.answers[0].payload.data, [b"hello world"])
        # what the upstream saw: our EDNS size, the client's RD/DO/CD bits, UDP
        seen = {q.rdtype: q for q in up.queries}
        self.assertEqual(set(seen), {"A", "AAAA", "MX", "TXT"})
        self.assertTrue(all(q.edns_payload == 1232 and q.transport == "udp" for q in up.queries))
        self.assertTrue(seen["A"].rd and not seen["A"].do and not seen["A"].cd)
        self.assertTrue(seen["MX"].do and seen["MX"].cd)
        self.assertFalse(seen["TXT"].rd)
        # one after the other, the queries reuse one open socket (kubedns.forward.udppool), each
        # with its own random ID; tests/test_forward_pool.py checks the ports change
        self.assertEqual(len({q.source[1] for q in up.queries}), 1)
        self.assertEqual(f.upstreams[0].udp.opened, 1)
        self.assertEqual(f.upstream_stats()[up.address].responses, {dns.OK: 4})

    async def test_nxdomain_relayed_with_soa(self) -> None:
        up = self.upstream()
        up.set_soa("example.com", ttl=60, minimum=30)
        f = self.forwarder(config(up.address))
        m = await f.resolve(make_query(b"nope.example.com"))
        self.assertEqual(m.rCode, dns.ENAME)
        self.assertEqual(m.answers, [])
        self.assertEqual([(rr.name.name, rr.type) for rr in m.authority], [(b"example.com", dns.SOA)])
        self.assertEqual(m.authority[0].payload.minimum, 30)
        self.assertEqual(m.additional, [])  # the upstream's OPT is hop-by-hop, dropped

    async def test_nodata_relayed_with_soa(self) -> None:
        up = self.upstream()
        f = self.forwarder(config(up.address))
        m = await f.resolve(make_query(b"example.com", dns.AAAA))
        self.assertEqual((m.rCode, m.answers), (dns.OK, []))
        self.assertEqual([rr.type for rr in m.authority], [dns.SOA])

    async def test_servfail_relayed_not_rewritten(self) -> None:
        up = self.upstream()
        up.mode = "servfail"
        second = self.upstream()
        f = self.forwarder(config(up.address, second.address))
        m = await f.resolve(make_query(b"example.com"))
        self.assertEqual(m.rCode, dns.ESERVER)
        self.assertEqual(second.count(), 0)  # an rcode is an answer: no failover
        self.assertFalse(f.is_down(0))

    async def test_failover_when_first_upstream_port_is_closed(self) -> None:
        dead = f"127.0.0.1:{closed_port()}"
        up = self.upstream()
        f = self.forwarder(config(dead, up.address, timeout=2.0))
        start = time.monotonic()
        m = await f.resolve(make_query(b"example.com"))
        self.assertEqual(m.answers[0].payload.dottedQuad(), "192.0.2.1")
        self.assertLess(time.monotonic() - start, 1.0)  # ICMP port unreachable: no waiting for the timeout
        self.assertEqual(f.upstream_stats()[dead].failures, 1)

    async def test_failover_when_first_upstream_is_black_holed(self) -> None:
        hole = self.upstream()
        hole.mode = "drop"
        up = self.upstream()
        f = self.forwarder(config(hole.address, up.address, timeout=0.4))
        start = time.monotonic()
        m = await f.resolve(make_query(b"example.com"))
        took = time.monotonic() - start
        self.assertEqual(m.answers[0].payload.dottedQuad(), "192.0.2.1")
        self.assertGreaterEqual(took, 0.35)
        self.assertLess(took, 0.9)  # about one per-try timeout
        self.assertEqual((hole.count(), up.count()), (1, 1))

    async def test_every_upstream_failing_is_upstreams_failed(self) -> None:
        hole = self.upstream()
        hole.mode = "drop"
        dead = f"127.0.0.1:{closed_port()}"
        f = self.forwarder(config(hole.address, dead, timeout=0.3))
        start = time.monotonic()
        err = await self.assert_fails(f.resolve(make_query(b"example.com")), UpstreamsFailed)
        self.assertLess(time.monotonic() - start, 1.0)
        self.assertEqual([u for u, _ in err.errors], [hole.address, dead])

    async def test_ipv6_loopback_upstream(self) -> None:
        try:
            up = DNSUpstream("::1").start()
        except OSError:
            raise unittest.SkipTest("no IPv6 loopback here") from None
        self.addCleanup(up.stop)
        up.add("example.com", "A", "192.0.2.1")
        f = self.forwarder(config(up.address, f"[::1]:{closed_port('::1')}"))
        self.assertEqual(up.address, f"[::1]:{up.port}")
        m = await f.resolve(make_query(b"example.com"))
        self.assertEqual(addrs(m), ["192.0.2.1"])
        f.upstreams.reverse()  # the dead one first: ICMPv6 unreachable fails over at once
        start = time.monotonic()
        m = await f.resolve(make_query(b"example.com", dns.AAAA))
        self.assertLess(time.monotonic() - start, 0.3)
        await f.resolve(make_query(b"example.com", dns.MX), tcp=True)
        self.assertEqual((up.count(transport="udp"), up.count(transport="tcp")), (2, 1))

    async def test_spoofed_and_mismatched_answers_are_ignored(self) -> None:
        up = self.upstream()
        up.mode = "spoof"  # wrong ID, then wrong question, then the real answer
        f = self.forwarder(config(up.address))
        m = await f.resolve(make_query(b"example.com"))
        self.assertEqual([rr.payload.dottedQuad() for rr in m.answers], ["192.0.2.1"])
        self.assertEqual(m.queries[0].name.name, b"example.com")

    async def test_truncated_udp_answer_is_retried_over_tcp(self) -> None:
        up = self.upstream()
        up.add("big.example.com", "TXT", *[f'"{i} {"x" * 200}"' for i in range(20)])
        f = self.forwarder(config(up.address))
        m = await f.resolve(make_query(b"big.example.com", dns.TXT))
        self.assertEqual((m.trunc, len(m.answers)), (0, 20))
        self.assertEqual((up.count(transport="udp"), up.count(transport="tcp")), (1, 1))
        up.mode = "truncate"  # TC even for a small answer
        m = await f.resolve(make_query(b"example.com"))
        self.assertEqual((m.trunc, len(m.answers)), (0, 1))

    async def test_force_tcp_reuses_one_connection_and_idle_expiry_closes_it(self) -> None:
        up = self.upstream()
        f = self.forwarder(config(up.address, force_tcp=True, expire=0.3))
        for _ in range(3):
            m = await f.resolve(make_query(b"example.com"))
            self.assertEqual(len(m.answers), 1)
        self.assertEqual((up.count(transport="tcp"), up.count(transport="udp")), (3, 0))
        self.assertEqual(up.tcp_connections, 1)
        stream = f.upstreams[0].stream
        assert stream is not None
        self.assertTrue(stream.connected)
        await wait_until(lambda: not stream.connected, timeout=2, what="idle expiry")

    async def test_client_over_tcp_asks_over_tcp_unless_prefer_udp(self) -> None:
        up = self.upstream()
        f = self.forwarder(config(up.address))
        await f.resolve(make_query(b"example.com"), tcp=True)
        self.assertEqual(up.count(transport="tcp"), 1)
        g = self.forwarder(config(up.address, prefer_udp=True))
        await g.resolve(make_query(b"example.com"), tcp=True)
        self.assertEqual(up.count(transport="udp"), 1)

    async def test_server_closing_the_connection_between_queries(self) -> None:
        up = self.upstream()
        up.close_tcp_after_answer = True
        f = self.forwarder(config(up.address, force_tcp=True))
        for _ in range(3):
            m = await f.resolve(make_query(b"example.com"))
            self.assertEqual(len(m.answers), 1)
        self.assertEqual(up.count(), 3)

    async def test_round_robin_spreads_queries(self) -> None:
        a, b = self.upstream(), self.upstream()
        f = self.forwarder(config(a.address, b.address, policy="round_robin"))
        for i in range(4):
            await f.resolve(make_query(b"example.com", dns.A if i % 2 else dns.AAAA))
        self.assertEqual((a.count(), b.count()), (2, 2))

    async def test_max_concurrent_refuses_at_once(self) -> None:
        up = self.upstream()
        up.add("other.example.com", "A", "192.0.2.2")
        up.delay = 0.3
        f = self.forwarder(config(up.address, max_concurrent=2, timeout=2.0))
        d1 = f.resolve(make_query(b"example.com"))
        d2 = f.resolve(make_query(b"other.example.com"))
        start = time.monotonic()
        await self.assert_fails(f.resolve(make_query(b"third.example.com")), Refused)
        self.assertLess(time.monotonic() - start, 0.05)
        self.assertEqual(f.stats.max_concurrent_rejects, 1)
        r1, r2 = await d1, await d2
        self.assertEqual((len(r1.answers), len(r2.answers)), (1, 1))
        self.assertEqual(f.inflight, 0)
        self.assertEqual(up.count(name="third.example.com"), 0)

    async def test_identical_queries_in_flight_go_upstream_once(self) -> None:
        up = self.upstream()
        up.delay = 0.2
        f = self.forwarder(config(up.address))
        names = [b"example.com", b"EXAMPLE.com", b"Example.Com"] * 4
        ds = [f.resolve(make_query(n)) for n in names]
        other_do = f.resolve(make_query(b"example.com", do=True))  # a different key: its own query
        results = [await d for d in ds]
        await other_do
        self.assertTrue(all(r.answers[0].payload.dottedQuad() == "192.0.2.1" for r in results))
        self.assertEqual(len({id(r) for r in results}), len(results))  # each caller gets its own message
        self.assertEqual(up.count(rdtype="A"), 2)
        self.assertEqual(f.stats.deduplicated, len(names) - 1)

    async def test_health_probe_brings_a_down_upstream_back(self) -> None:
        flaky = self.upstream()
        flaky.mode = "drop"
        good = self.upstream()
        f = self.forwarder(config(flaky.address, good.address, timeout=0.3, max_fails=1, health_check=0.1))
        await f.resolve(make_query(b"example.com"))
        self.assertTrue(f.is_down(0))
        # while down it is skipped: no more waiting for its timeout
        start = time.monotonic()
        await f.resolve(make_query(b"example.com", dns.AAAA))
        self.assertLess(time.monotonic() - start, 0.25)
        self.assertEqual(flaky.count(rdtype="AAAA"), 0)
        await wait_until(lambda: f.upstreams[0].stats.healthcheck_failures >= 1, what="a failed probe")
        flaky.mode = "answer"
        await wait_until(lambda: not f.is_down(0), timeout=3, what="upstream back up")
        self.assertGreaterEqual(flaky.count(name="", rdtype="NS"), 2)  # ". IN NS" probes
        probes = flaky.count(rdtype="NS")
        await sleep(0.35)
        self.assertEqual(flaky.count(rdtype="NS"), probes)  # no probing while healthy
        flaky.reset()
        await f.resolve(make_query(b"example.com", dns.MX))
        self.assertEqual(flaky.count(rdtype="MX"), 1)

    async def test_all_upstreams_down_are_tried_anyway(self) -> None:
        a = self.upstream()
        a.mode = "drop"
        f = self.forwarder(config(a.address, timeout=0.2, max_fails=1, health_check=5))
        await self.assert_fails(f.resolve(make_query(b"example.com")), UpstreamsFailed)
        self.assertTrue(f.is_down(0))
        a.mode = "answer"
        m = await f.resolve(make_query(b"example.com"))
        self.assertEqual(len(m.answers), 1)
        self.assertEqual(f.stats.healthcheck_broken, 1)
        self.assertFalse(f.is_down(0))  # a real answer marks it up again

    async def test_except_zones_are_not_handled(self) -> None:
        f = self.forwarder(config("127.0.0.1:9", except_zones=("internal.example", "corp")))
        self.assertFalse(f.handles(b"internal.example"))
        self.assertFalse(f.handles(b"a.b.Internal.Example."))
        self.assertFalse(f.handles(b"x.corp"))
        self.assertTrue(f.handles(b"example.com"))
        self.assertTrue(f.handles(b"notcorp"))

    async def test_stop_fails_queries_in_flight_and_leaves_nothing_behind(self) -> None:
        up = self.upstream()
        up.mode = "drop"
        f = Forwarder(config(up.address, timeout=5.0, force_tcp=True), reactor=reactor)
        f.start()
        d = f.resolve(make_query(b"example.com"))
        await wait_until(lambda: up.count() == 1)
        await (f.stop() or defer.succeed(None))
        await self.assert_fails(d, UpstreamsFailed)
        # trial's reactor check fails the test if a socket or timer was left behind


class TLSTests(ForwardTestCase):
    def tls_upstream(self) -> tuple[DNSUpstream, Any]:
        files = make_tls_files(Path(self.mktemp()), dns_names=["dns.test"], ips=["127.0.0.1"])
        return self.upstream(tls=files), files

    async def test_dot_happy_path_reuses_the_connection(self) -> None:
        up, files = self.tls_upstream()
        cfg = config(f"tls://127.0.0.1:{up.port}", tls_servername="dns.test", tls_ca=str(files.ca))
        f = self.forwarder(cfg)
        for qtype in (dns.A, dns.AAAA, dns.A):
            m = await f.resolve(make_query(b"example.com", qtype))
        self.assertEqual(m.answers[0].payload.dottedQuad(), "192.0.2.1")
        self.assertEqual(up.count(transport="tls"), 3)
        self.assertEqual(up.count(transport="udp"), 0)
        self.assertEqual(up.tcp_connections, 1)

    async def test_dot_pipelines_concurrent_queries(self) -> None:
        up, files = self.tls_upstream()
        up.delay = 0.1
        f = self.forwarder(config(f"tls://127.0.0.1:{up.port}", tls_servername="dns.test", tls_ca=str(files.ca)))
        ds = [f.resolve(make_query(f"n{i}.example.com".encode())) for i in range(5)]
        results = [await d for d in ds]
        self.assertTrue(all(r.rCode == dns.ENAME for r in results))
        self.assertEqual(up.tcp_connections, 1)

    async def test_dot_verifies_the_ip_when_no_servername_is_set(self) -> None:
        up, files = self.tls_upstream()
        f = self.forwarder(config(f"tls://127.0.0.1:{up.port}", tls_ca=str(files.ca)))
        m = await f.resolve(make_query(b"example.com"))
        self.assertEqual(len(m.answers), 1)

    async def test_dot_wrong_servername_fails_verification(self) -> None:
        up, files = self.tls_upstream()
        cfg = config(f"tls://127.0.0.1:{up.port}", tls_servername="evil.test", tls_ca=str(files.ca), timeout=1.0)
        f = self.forwarder(cfg)
        start = time.monotonic()
        err = await self.assert_fails(f.resolve(make_query(b"example.com")), UpstreamsFailed)
        self.assertLess(time.monotonic() - start, 0.8)  # the handshake failure ends the try at once
        self.assertEqual(up.count(), 0)  # the query never left us unencrypted or to the wrong peer
        self.assertIn(f"tls://127.0.0.1:{up.port}", str(err))

    async def test_dot_untrusted_ca_fails(self) -> None:
        up, _ = self.tls_upstream()
        other = make_tls_files(Path(self.mktemp()), dns_names=["dns.test"])
        f = self.forwarder(config(f"tls://127.0.0.1:{up.port}", tls_servername="dns.test", tls_ca=str(other.ca)))
        await self.assert_fails(f.resolve(make_query(b"example.com")), UpstreamsFailed)
        self.assertEqual(up.count(), 0)


# -- the chain: cache in front of the forwarder --------------------------------------------------


class ChainTests(ForwardTestCase):
    def chain(
        self, up: DNSUpstream, cache_cfg: CacheConfig | None = None, clock: Any = None, **kw: Any
    ) -> ForwardChain:
        f = self.forwarder(config(up.address, **kw))
        cache = Cache(cache_cfg or CacheConfig(), reactor=clock or reactor)
        return ForwardChain(f, cache, reactor=reactor)

    async def test_cache_hit_does_not_reach_upstream(self) -> None:
        up = self.upstream()
        ch = self.chain(up)
        first = await ch.resolve(make_query(b"example.com"))
        second = await ch.resolve(make_query(b"EXAMPLE.com"))
        self.assertEqual(up.count(), 1)
        self.assertEqual(addrs(first), addrs(second))
        self.assertEqual(ch.cache.hits, 1)  # type: ignore[union-attr]
        self.assertEqual(ch.cache.misses, 1)  # type: ignore[union-attr]
        stats = ch.stats()
        self.assertEqual(stats["cache"]["entries"], 1)
        self.assertEqual(stats["forward"]["upstreams"][up.address]["requests"], 1)
        await ch.resolve(make_query(b"example.com", do=True))  # DO is part of the key
        self.assertEqual(up.count(), 2)

    async def test_negative_answers_cached_only_with_soa(self) -> None:
        up = self.upstream()
        ch = self.chain(up)
        for _ in range(2):
            m = await ch.resolve(make_query(b"nope.example.com"))
            self.assertEqual(m.rCode, dns.ENAME)
            self.assertEqual([rr.type for rr in m.authority], [dns.SOA])
        self.assertEqual(up.count(name="nope.example.com"), 1)
        up.negative_soa = False
        for _ in range(2):
            m = await ch.resolve(make_query(b"gone.example.com"))
            self.assertEqual((m.rCode, m.authority), (dns.ENAME, []))
        self.assertEqual(up.count(name="gone.example.com"), 2)

    async def test_ttls_count_down_on_hits(self) -> None:
        up = self.upstream()
        clock = task.Clock()
        ch = self.chain(up, clock=clock)
        await ch.resolve(make_query(b"example.com"))
        clock.advance(100.4)
        m = await ch.resolve(make_query(b"example.com"))
        self.assertEqual(m.answers[0].ttl, 200)
        clock.advance(200)
        await ch.resolve(make_query(b"example.com"))
        self.assertEqual(up.count(), 2)  # expired: asked again

    async def test_serve_stale_when_upstream_dies(self) -> None:
        up = self.upstream()
        clock = task.Clock()
        ch = self.chain(up, CacheConfig(serve_stale=3600), clock=clock, timeout=0.3)
        await ch.resolve(make_query(b"example.com"))
        clock.advance(301)
        up.stop()  # port closed: the forwarder fails fast
        m = await ch.resolve(make_query(b"example.com"))
        self.assertEqual([rr.payload.dottedQuad() for rr in m.answers], ["192.0.2.1"])
        self.assertEqual(m.answers[0].ttl, 0)
        self.assertEqual(ch.cache.stale_served, 1)  # type: ignore[union-attr]
        clock.advance(3600)
        await self.assert_fails(ch.resolve(make_query(b"example.com")), UpstreamsFailed)

    async def test_prefetch_refreshes_popular_entries_before_expiry(self) -> None:
        up = self.upstream()
        up.add("pop.example.com", "A", "192.0.2.9", ttl=100)
        clock = task.Clock()
        cfg = CacheConfig(prefetch_amount=2, prefetch_duration=60, prefetch_percentage=10)
        ch = self.chain(up, cfg, clock=clock)
        await ch.resolve(make_query(b"pop.example.com"))
        clock.advance(50)
        await ch.resolve(make_query(b"pop.example.com"))  # hit 1, far from expiry
        clock.advance(41)
        m = await ch.resolve(make_query(b"pop.example.com"))  # hit 2, 9 s left <= 10 %: prefetch
        self.assertEqual(m.answers[0].ttl, 9)
        await wait_until(lambda: up.count(name="pop.example.com") == 2, what="prefetch")
        await wait_until(lambda: not ch._refreshing, what="prefetch stored")
        m = await ch.resolve(make_query(b"pop.example.com"))
        self.assertEqual(m.answers[0].ttl, 100)  # the refreshed entry
        self.assertEqual(ch.cache.prefetches, 1)  # type: ignore[union-attr]


# -- loop detection ------------------------------------------------------------------------------


class LoopTests(ForwardTestCase):
    async def test_loop_is_detected_and_forwarding_disabled_without_exiting(self) -> None:
        up = self.upstream()
        chain, detector = self.loop_through_us([up], [up], recheck=0.5, timeout=1.0)
        f = chain.forwarder
        self.assertFalse(detector.observe(b"example.com"))
        detector.start()
        await wait_until(lambda: detector.loop_detected, timeout=5, what="loop detection")
        self.assertTrue(chain.loop_detected)
        self.assertIn(up.address, f.disabled_reason or "")
        # forwarded queries now fail at once (SERVFAIL) instead of circling
        start = time.monotonic()
        await self.assert_fails(chain.resolve(make_query(b"example.com")), UpstreamsFailed)
        self.assertLess(time.monotonic() - start, 0.05)
        # the probe circled twice at most: no amplification
        probe_queries = [q for q in up.queries if q.rdtype == "HINFO"]
        self.assertLessEqual(len(probe_queries), 3)
        # the loop is fixed upstream: the periodic re-check turns forwarding back on
        up.mode = "answer"
        await wait_until(lambda: not detector.loop_detected, timeout=5, what="recovery")
        m = await chain.resolve(make_query(b"example.com"))
        self.assertEqual(len(m.answers), 1)

    async def test_no_loop_means_nothing_detected(self) -> None:
        up = self.upstream()
        f = self.forwarder(config(up.address))
        detector = LoopDetector(f, zone=b"cluster.local", reactor=reactor, recheck=0)
        self.addCleanup(detector.stop)
        detector.start()
        await wait_until(lambda: up.count(rdtype="HINFO") == 1 and detector.rounds == 1 and not detector._pending)
        await sleep(0.05)
        self.assertFalse(detector.loop_detected)
        self.assertIsNone(f.disabled_reason)
        name = next(q.name for q in up.queries if q.rdtype == "HINFO")
        self.assertTrue(name.endswith(".cluster.local"))
        self.assertEqual(len(name.split(".")), 4)
        self.assertFalse(detector.observe(name.encode()))  # probing is over: observe() is a no-op


# -- config parsing (pure) -----------------------------------------------------------------------


def node(value: Any, key: str = "forward") -> Node:
    return Node(value, "corefile.yaml", key)


def test_forward_defaults_and_shorthand() -> None:
    cfg = parse_forward(node(None))
    assert cfg == ForwardConfig()
    assert cfg.to == (UpstreamSpec("8.8.8.8", 53),)
    assert (cfg.policy, cfg.max_fails, cfg.health_check, cfg.expire, cfg.timeout) == ("random", 2, 0.5, 10.0, 2.0)
    assert parse_forward(node("10.0.0.1")).to == (UpstreamSpec("10.0.0.1"),)
    assert parse_forward(node(["10.0.0.1:5353", "[::1]:53"])).to == (
        UpstreamSpec("10.0.0.1", 5353),
        UpstreamSpec("::1", 53),
    )


def test_forward_full_mapping() -> None:
    cfg = parse_forward(
        node(
            {
                "to": ["tls://9.9.9.9", "tls://[2620:fe::fe]:8853", "dns://1.1.1.1"],
                "tls_servername": "dns.quad9.net.",
                "policy": "round_robin",
                "max_fails": 0,
                "health_check": "2s",
                "expire": "1m",
                "max_concurrent": 1000,
                "force_tcp": True,
                "prefer_udp": False,
                "except": ["Example.ORG.", "corp"],
                "timeout": "500ms",
            }
        )
    )
    assert cfg.to == (
        UpstreamSpec("9.9.9.9", 853, tls=True),
        UpstreamSpec("2620:fe::fe", 8853, tls=True),
        UpstreamSpec("1.1.1.1", 53),
    )
    assert str(cfg.to[1]) == "tls://[2620:fe::fe]:8853"
    assert cfg.tls_servername == "dns.quad9.net"
    assert (cfg.policy, cfg.max_fails, cfg.health_check, cfg.expire) == ("round_robin", 0, 2.0, 60.0)
    assert (cfg.max_concurrent, cfg.force_tcp, cfg.timeout) == (1000, True, 0.5)
    assert cfg.except_zones == ("example.org", "corp")


def test_forward_per_upstream_servername() -> None:
    assert parse_upstream("tls://9.9.9.9%dns.quad9.net") == UpstreamSpec("9.9.9.9", 853, True, "dns.quad9.net")
    assert parse_upstream("tls://9.9.9.9%dns.quad9.net:10853").port == 10853
    with pytest.raises(ConfigError, match=r"forward\.tls_servername"):
        parse_forward(node({"to": "tls://9.9.9.9%dns.quad9.net", "tls_servername": "x"}))


def test_forward_reads_resolv_conf(tmp_path: Path) -> None:
    rc = tmp_path / "resolv.conf"
    rc.write_text("# comment\nsearch svc.cluster.local\nnameserver 127.0.0.53\nnameserver ::1 # x\noptions ndots:5\n")
    cfg = parse_forward(node({"to": [str(rc), "127.0.0.2"]}))
    assert cfg.to == (UpstreamSpec("127.0.0.53"), UpstreamSpec("::1"), UpstreamSpec("127.0.0.2"))
    empty = tmp_path / "empty.conf"
    empty.write_text("search x\n")
    with pytest.raises(ConfigError, match=r"forward\.to\[0\]: expected a resolv.conf file with at least one"):
        parse_forward(node({"to": [str(empty)]}))
    with pytest.raises(ConfigError, match=r"forward\.to\[0\]: expected a readable resolv.conf"):
        parse_forward(node({"to": [str(tmp_path / "missing")]}))


@pytest.mark.parametrize(
    ("value", "key", "expected"),
    [
        ({"policy": "fastest"}, "forward.policy", "one of random | round_robin | sequential"),
        ({"to": ["10.0.0.1", "not-an-ip"]}, r"forward.to\[1\]", "upstreams like"),
        ({"to": ["10.0.0.1:99999"]}, r"forward.to\[0\]", "out of range"),
        ({"to": ["https://1.1.1.1"]}, r"forward.to\[0\]", "unsupported scheme"),
        ({"to": [f"10.0.0.{i}" for i in range(16)]}, "forward.to", "from 1 to 15 upstreams"),
        ({"to": []}, "forward.to", "from 1 to 15 upstreams"),
        ({"max_fails": -1}, "forward.max_fails", "a whole number"),
        ({"timeout": "soon"}, "forward.timeout", "a duration"),
        ({"health_check": 0}, "forward.health_check", "a duration at least"),
        ({"force_tcp": "yes"}, "forward.force_tcp", "true or false"),
        ({"except": ["a..b"]}, r"forward.except\[0\]", "a DNS zone name"),
        ({"tls_ca": "/nonexistent/ca.pem"}, "forward.tls_ca", "a readable PEM CA bundle"),
        ({"retries": 3}, "forward.retries", "one of the keys"),
    ],
)
def test_forward_errors_name_key_and_expectation(value: Any, key: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=rf"corefile\.yaml: {key}: expected .*{expected}"):
        parse_forward(node(value))


def test_cache_parsing() -> None:
    assert parse_cache(node(None, "cache")) == CacheConfig()
    c = parse_cache(node(30, "cache"))
    assert (c.ttl, c.denial_ttl, c.min_ttl) == (30, 30, 5)
    c = parse_cache(
        node(
            {
                "ttl": 600,
                "min_ttl": 0,
                "denial_ttl": 60,
                "size": 100,
                "servfail": "2s",
                "prefetch": {"amount": 5, "duration": "30s", "percentage": "20%"},
                "serve_stale": "10m",
            },
            "cache",
        )
    )
    assert (c.ttl, c.min_ttl, c.denial_ttl, c.size, c.servfail_ttl) == (600, 0, 60, 100, 2.0)
    assert (c.prefetch_amount, c.prefetch_duration, c.prefetch_percentage) == (5, 30.0, 20)
    assert (c.serve_stale, c.serve_stale_mode) == (600.0, "verified")
    c = parse_cache(node({"prefetch": 3, "serve_stale": True}, "cache"))
    assert (c.prefetch_amount, c.prefetch_duration, c.prefetch_percentage, c.serve_stale) == (3, 60.0, 10, 3600.0)
    c = parse_cache(node({"serve_stale": {"duration": "1h", "refresh_mode": "immediate"}}, "cache"))
    assert (c.serve_stale, c.serve_stale_mode) == (3600.0, "immediate")


def test_cache_servfail_is_capped_at_five_seconds() -> None:
    assert parse_cache(node({"servfail": "5s"}, "cache")).servfail_ttl == 5.0
    assert parse_cache(node({"servfail": 0}, "cache")).servfail_ttl == 0.0
    with pytest.raises(ConfigError, match=r"corefile\.yaml: cache\.servfail: expected .*at most 5s.*, got 60"):
        parse_cache(node({"servfail": 60}, "cache"))


@pytest.mark.parametrize(
    ("value", "key", "expected"),
    [
        ("lots", "cache", "a mapping"),
        ({"ttl": -1}, "cache.ttl", "a whole number"),
        ({"ttl": 10, "min_ttl": 20}, "cache.min_ttl", "not above ttl"),
        ({"size": 0}, "cache.size", "a whole number"),
        ({"prefetch": {"amount": 2, "percentage": "5%"}}, "cache.prefetch.percentage", "from 10 to 90"),
        ({"prefetch": {"duration": "1m"}}, "cache.prefetch.amount", "the key is required"),
        ({"prefetch": "often"}, "cache.prefetch", "a number of queries"),
        ({"serve_stale": "later"}, "cache.serve_stale", "a duration"),
        ({"serve_stale": {"refresh_mode": "eager"}}, "cache.serve_stale.refresh_mode", "verified | immediate"),
        ({"servfail": "10m"}, "cache.servfail", "at most 5s"),
        ({"servfail": 60}, "cache.servfail", "at most 5s"),
        ({"servfail": "6s"}, "cache.servfail", "SERVFAIL answers are cached 5 s at most"),
        ({"capacity": 5}, "cache.capacity", "one of the keys"),
    ],
)
def test_cache_errors_name_key_and_expectation(value: Any, key: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=rf"corefile\.yaml: {key}: expected .*{expected}"):
        parse_cache(node(value, "cache"))


def test_loop_parsing() -> None:
    assert parse_loop(node({}, "loop")) == LoopConfig(enabled=True, recheck=30.0)
    assert parse_loop(node(None, "loop")).enabled
    assert parse_loop(node(True, "loop")).enabled
    assert not parse_loop(node(False, "loop")).enabled
    assert parse_loop(node({"recheck": "0s"}, "loop")).recheck == 0.0
    with pytest.raises(ConfigError, match=r"loop: expected true, false, or a mapping"):
        parse_loop(node("yes", "loop"))
    with pytest.raises(ConfigError, match=r"loop\.interval: expected one of the keys recheck"):
        parse_loop(node({"interval": 1}, "loop"))
