"""The pool of open UDP sockets a forwarder sends its misses over (kubedns/forward/udppool.py).

Real sockets on the real reactor against tests/dnsupstream.py upstreams on 127.0.0.1: sockets are
reused one query at a time with a fresh ID each, concurrent queries hold a socket (a port) each,
the port changes after ``MAX_USES`` answers, after a timeout and once a socket is ``MAX_AGE`` old,
and stopping the forwarder gives every descriptor back (trial fails a test that leaves a
socket or a timer behind).
"""

from __future__ import annotations

import os

import pytest
from twisted.internet import defer, reactor, task
from twisted.names import dns

from kubedns.forward import udppool
from kubedns.forward.forwarder import UpstreamsFailed
from tests.support.forwarding import ForwardTestCase, addrs, config, make_query

pytestmark = pytest.mark.timeout(30)


def sleep(seconds: float) -> defer.Deferred:
    return task.deferLater(reactor, seconds, lambda: None)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


class PoolTests(ForwardTestCase):
    async def test_queries_one_after_another_reuse_one_socket_with_a_fresh_id_each(self) -> None:
        up = self.upstream()
        f = self.forwarder(config(up.address))
        for i in range(10):
            up.add(f"n{i}.example.com", "A", f"192.0.2.{i + 1}")
            m = await f.resolve(make_query(f"n{i}.example.com".encode()))
            self.assertEqual(addrs(m), [f"192.0.2.{i + 1}"])
        pool = f.upstreams[0].udp
        assert pool is not None
        self.assertEqual((pool.opened, pool.idle), (1, 1))
        self.assertEqual(len({q.source for q in up.queries}), 1)
        self.assertGreaterEqual(len({q.id for q in up.queries}), 9)  # random 16-bit IDs

    async def test_concurrent_queries_each_hold_a_socket_of_their_own(self) -> None:
        up = self.upstream()
        up.delay = 0.1
        f = self.forwarder(config(up.address))
        names = [f"c{i}.example.com" for i in range(5)]
        for i, n in enumerate(names):
            up.add(n, "A", f"192.0.2.{i + 1}")
        answers = await defer.gatherResults([f.resolve(make_query(n.encode())) for n in names])
        self.assertEqual([addrs(m) for m in answers], [[f"192.0.2.{i + 1}"] for i in range(5)])
        self.assertEqual(len({q.source[1] for q in up.queries}), 5)  # one port per query in flight
        pool = f.upstreams[0].udp
        assert pool is not None
        self.assertEqual((pool.opened, pool.idle), (5, 5))

    async def test_the_port_changes_after_max_uses_answers(self) -> None:
        self.patch(udppool, "MAX_USES", 3)
        up = self.upstream()
        f = self.forwarder(config(up.address))
        for _ in range(7):
            await f.resolve(make_query(b"example.com", dns.A))
            await f.resolve(make_query(b"example.com", dns.AAAA))  # a different question: not de-duplicated
        ports = [q.source[1] for q in up.queries]
        self.assertEqual(len(ports), 14)
        runs = [ports[i : i + 3] for i in range(0, 14, 3)]
        self.assertTrue(all(len(set(r)) == 1 for r in runs), ports)  # three answers per port...
        self.assertEqual(len(set(ports)), 5, ports)  # ...then a fresh one
        pool = f.upstreams[0].udp
        assert pool is not None
        self.assertEqual(pool.opened, 5)

    async def test_a_timed_out_socket_is_closed_and_the_next_query_gets_a_new_port(self) -> None:
        up = self.upstream()
        up.delay = 0.6  # the answer comes after the 0.3 s timeout
        f = self.forwarder(config(up.address, timeout=0.3, max_fails=0))
        up.delay = 0.0
        await f.resolve(make_query(b"example.com", dns.AAAA))  # leaves one idle socket
        pool = f.upstreams[0].udp
        assert pool is not None
        before = open_fds()
        up.delay = 0.6
        with self.assertRaises(UpstreamsFailed):
            await f.resolve(make_query(b"example.com"))  # on the idle socket
        self.assertEqual((open_fds(), pool.idle), (before - 1, 0))  # closed, not kept idle
        self.assertEqual(up.queries[0].source, up.queries[1].source)
        up.delay = 0.0
        await sleep(0.5)  # the late answer reaches a closed port
        m = await f.resolve(make_query(b"example.com"))
        self.assertEqual(addrs(m), ["192.0.2.1"])
        self.assertNotEqual(up.queries[1].source[1], up.queries[-1].source[1])
        self.assertEqual(pool.opened, 2)

    async def test_idle_sockets_older_than_max_age_are_swept(self) -> None:
        self.patch(udppool, "MAX_AGE", 0.2)
        up = self.upstream()
        f = self.forwarder(config(up.address))
        await f.resolve(make_query(b"example.com"))
        pool = f.upstreams[0].udp
        assert pool is not None
        before = open_fds()
        self.assertEqual(pool.idle, 1)
        await sleep(0.5)
        self.assertEqual((pool.idle, open_fds()), (0, before - 1))
        await f.resolve(make_query(b"example.com", dns.AAAA))  # and a new one is opened
        self.assertEqual(pool.opened, 2)

    async def test_stop_closes_idle_sockets_and_start_pools_again(self) -> None:
        up = self.upstream()
        f = self.forwarder(config(up.address))
        await f.resolve(make_query(b"example.com"))
        before = open_fds()  # one idle socket
        await defer.gatherResults([f.resolve(make_query(f"s{i}.example.com".encode())) for i in range(3)])
        self.assertEqual(open_fds(), before + 2)
        await (f.stop() or defer.succeed(None))
        self.assertEqual(open_fds(), before - 1)
        f.start()
        await f.resolve(make_query(b"example.com"))
        pool = f.upstreams[0].udp
        assert pool is not None
        self.assertEqual(pool.idle, 1)
