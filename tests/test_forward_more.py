"""More forwarding tests over real loopback sockets: request budget edge cases and per-upstream
loop isolation.  Same helpers and style as :mod:`tests.test_forward` (twisted.trial on the real
reactor, :class:`tests.dnsupstream.DNSUpstream` upstreams on 127.0.0.1, shrunk timeouts).
"""

from __future__ import annotations

import time

import pytest
from twisted.internet import reactor, task
from twisted.names import dns

from kubedns.cache import Cache
from kubedns.forward.chain import ForwardChain
from kubedns.forward.config import CacheConfig
from tests.test_forward import _Base, addrs, config, make_query

pytestmark = pytest.mark.timeout(30)


class BudgetTests(_Base):
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
        self.assertLess(took, 1.15)
        self.assertEqual((m.rCode, m.trunc, m.answers), (dns.OK, 1, []))
        self.assertEqual(up.count(transport="tcp"), 1)


class StaleTests(_Base):
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
