"""Forwarding into a silent upstream stays bounded: requests in total, tries per upstream, and the
descriptors UDP queries may take, so TCP DNS and the HTTP endpoints keep working.

In-process cases use the Forwarder on the real reactor against tests/dnsupstream.py upstreams on
127.0.0.1; the end-to-end case starts ``twistd kubedns`` with a hard limit of 1024 open files (as
the issue measured it), sends a burst of 3,000 distinct names into a black-holed upstream and
checks that TCP DNS and /health answer during it, that descriptors stay below the limit minus the
reserve, and that the excess is REFUSED and counted in the metric.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Any

import dns.message
import dns.rcode
import pytest
import yaml
from twisted.internet import reactor, task
from twisted.names import dns as tdns
from twisted.trial import unittest

from kubedns.forward.config import ForwardConfig
from kubedns.forward.forwarder import Forwarder, Refused, fd_reserve
from kubedns.forward.upstream import parse_upstream
from kubedns.serve.listen import fd_limit
from tests.conftest import LimitedProcess, free_port, http_get, query, rrset_text
from tests.dnsupstream import DNSUpstream
from tests.support import kubeobj

pytestmark = pytest.mark.timeout(60)


def make_query(name: bytes) -> tdns.Message:
    q = tdns.Message(recDes=1)
    q.addQuery(name, tdns.A)
    m = tdns.Message()
    m.fromStr(q.toStr())
    return m


def config(*to: str, **kw: Any) -> ForwardConfig:
    kw.setdefault("timeout", 1.0)
    kw.setdefault("policy", "sequential")
    return ForwardConfig(to=tuple(parse_upstream(t) for t in to), **kw)


def test_bounded_by_default() -> None:
    assert ForwardConfig().max_concurrent == 1000
    f = Forwarder(config("127.0.0.1:53", "127.0.0.2:53", "127.0.0.3:53"), reactor=reactor)
    assert f._per_upstream == 334  # each upstream's share of the 1000
    soft = fd_limit()
    assert f.max_fd == soft - fd_reserve(soft)
    assert fd_reserve(1024) == 256 and fd_reserve(64) == 64 and fd_reserve(1 << 20) == 4096
    assert Forwarder(config("127.0.0.1:53", max_concurrent=0), reactor=reactor)._per_upstream == 0  # 0: unlimited


class ForwarderLimits(unittest.TestCase):
    timeout = 20

    def upstream(self) -> DNSUpstream:
        up = DNSUpstream("127.0.0.1").start()
        self.addCleanup(up.stop)
        return up

    def forwarder(self, cfg: ForwardConfig) -> Forwarder:
        f = Forwarder(cfg, reactor=reactor)
        f.start()
        self.addCleanup(f.stop)
        return f

    async def test_a_silent_upstream_holds_only_its_share_and_the_other_serves(self) -> None:
        silent, good = self.upstream(), self.upstream()
        silent.mode = "drop"
        for i in range(4):
            good.add(f"n{i}.example.org", "A", f"192.0.2.{i}")
        # the silent one is asked first and never marked down: only its share bounds it
        f = self.forwarder(config(silent.address, good.address, max_concurrent=4, max_fails=0, timeout=3.0))
        held = [f.resolve(make_query(b"n0.example.org")), f.resolve(make_query(b"n1.example.org"))]
        for d in held:
            d.addErrback(lambda _: None)
        self.assertTrue(silent.wait_for(2, timeout=2))
        start = time.monotonic()
        r2 = await f.resolve(make_query(b"n2.example.org"))  # silent is full: straight to good
        r3 = await f.resolve(make_query(b"n3.example.org"))
        self.assertLess(time.monotonic() - start, 1.0)  # nowhere near the 3 s timeout
        self.assertEqual([len(r2.answers), len(r3.answers)], [1, 1])
        self.assertEqual(silent.count(), 2)
        self.assertEqual(f.upstreams[0].inflight, 2)
        self.assertEqual(f.upstreams[0].fails, 0)  # being full is not a health failure

    async def test_every_upstream_full_is_refused_and_counted(self) -> None:
        silent = self.upstream()
        silent.mode = "drop"
        f = self.forwarder(config(silent.address, max_concurrent=4, timeout=3.0))
        f._per_upstream = 2  # as if a second upstream took the other half, now down
        held = [f.resolve(make_query(f"h{i}.example.org".encode())) for i in range(2)]
        for d in held:
            d.addErrback(lambda _: None)
        self.assertTrue(silent.wait_for(2, timeout=2))
        try:
            await f.resolve(make_query(b"third.example.org"))
        except Refused as e:
            self.assertIn("its share of max_concurrent", str(e))
        else:
            raise AssertionError("expected Refused")
        self.assertEqual(f.stats.max_concurrent_rejects, 1)
        self.assertEqual(silent.count(), 2)

    async def test_no_descriptor_to_spare_is_refused_not_a_failure_of_the_upstream(self) -> None:
        up = self.upstream()
        up.add("example.org", "A", "192.0.2.1")
        f = self.forwarder(config(up.address, max_fails=1))
        f.max_fd = 3  # every new socket is numbered 3 or more: none may be used
        before = len(os.listdir("/proc/self/fd"))
        try:
            await f.resolve(make_query(b"example.org"))
        except Refused as e:
            self.assertIn("no descriptor to spare", str(e))
        else:
            raise AssertionError("expected Refused")
        self.assertEqual(len(os.listdir("/proc/self/fd")), before)  # the socket was closed at once
        self.assertFalse(f.is_down(0))
        self.assertEqual(up.count(), 0)
        self.assertEqual(f.stats.max_concurrent_rejects, 1)
        f.max_fd = fd_limit()
        r = await f.resolve(make_query(b"example.org"))
        self.assertEqual(len(r.answers), 1)

    async def test_after_running_out_of_descriptors_new_requests_are_refused_without_a_socket(self) -> None:
        silent = self.upstream()
        silent.mode = "drop"
        f = self.forwarder(config(silent.address, timeout=3.0, max_fails=0))
        held = [f.resolve(make_query(f"h{i}.example.org".encode())) for i in range(2)]
        for d in held:
            d.addErrback(lambda _: None)
        self.assertTrue(silent.wait_for(2, timeout=2))
        f.max_fd = 3  # descriptors run out with 2 queries in flight
        with self.assertRaises(Refused) as e1:
            await f.resolve(make_query(b"third.example.org"))
        self.assertIn("no descriptor to spare", str(e1.exception))
        sockets_tried = f.upstreams[0].stats.requests
        with self.assertRaises(Refused) as e2:  # still 2 in flight: refused before any socket
            await f.resolve(make_query(b"fourth.example.org"))
        self.assertIn("2 forwarded queries in flight", str(e2.exception))
        self.assertEqual(f.upstreams[0].stats.requests, sockets_tried)
        self.assertEqual(f.stats.max_concurrent_rejects, 2)
        f.max_fd = fd_limit()
        await task.deferLater(reactor, 1.05, lambda: None)  # a second later a socket is tried again
        silent.mode = "answer"
        silent.add("fifth.example.org", "A", "192.0.2.5")
        r = await f.resolve(make_query(b"fifth.example.org"))
        self.assertEqual(len(r.answers), 1)


# -- the real process at 1024 open files ---------------------------------------------------------------



def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _metric(port: int, name: str) -> float:
    status, body = http_get(port, "/metrics")
    assert status == 200
    return sum(float(line.rsplit(" ", 1)[1]) for line in body.splitlines() if line.startswith(name))


def test_silent_upstream_burst_leaves_tcp_dns_and_health_working(tmp_path: Path) -> None:
    silent = DNSUpstream("127.0.0.1").start()
    silent.mode = "drop"
    manifests = tmp_path / "cluster.yaml"
    manifests.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": [
        kubeobj.namespace("default"), kubeobj.service("nginx", "default", cluster_ip="10.96.0.100")]}))
    port, hport, mport = free_port(), free_port(), free_port()
    cfg = {"servers": [{
        "zones": ["."], "listen": f"127.0.0.1:{port}",
        "kubernetes": {"zones": ["cluster.local"], "manifests": str(manifests)},
        "forward": {"to": [silent.address], "timeout": "5s"},
        "health": {"listen": f"127.0.0.1:{hport}", "lameduck": 0},
        "prometheus": f"127.0.0.1:{mport}",
    }]}
    proc = LimitedProcess(cfg, tmp_path, 1024).start()
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        proc.wait_listening(port)
        pid = proc.proc.pid
        base = _fds(pid)
        client.setblocking(False)
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 21)
        sent = 0
        rcodes: dict[int, int] = {}

        def drain() -> None:
            while True:
                try:
                    data = client.recv(4096)
                except BlockingIOError:
                    return
                rc = dns.message.from_wire(data).rcode()
                rcodes[rc] = rcodes.get(rc, 0) + 1

        peak = base
        t0 = time.monotonic()
        while sent < 3000:  # 3,000 distinct names in about a second
            for _ in range(100):
                q = dns.message.make_query(f"n{sent}.silent.example.org", "A")
                try:
                    client.sendto(q.to_wire(), ("127.0.0.1", port))
                except BlockingIOError:
                    time.sleep(0.001)
                    continue
                sent += 1
            drain()
            peak = max(peak, _fds(pid))
            time.sleep(max(0.0, t0 + sent / 3000 - time.monotonic()))
        burst = time.monotonic() - t0
        # during the burst (queries still pending upstream): TCP DNS and /health answer
        r = query(port, "nginx.default.svc.cluster.local", tcp=True, timeout=3)
        assert rrset_text(r) == ["nginx.default.svc.cluster.local A 10.96.0.100"]
        assert http_get(hport, "/health")[0] == 200
        peak = max(peak, _fds(pid))
        assert peak < 1024 - fd_reserve(1024) + 16, f"{peak} descriptors open (base {base})"
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline and sum(rcodes.values()) < sent:
            drain()
            time.sleep(0.05)
        assert rcodes.get(dns.rcode.REFUSED, 0) > 0, rcodes  # the excess was refused at once...
        # every REFUSED is counted (a few answers may be lost on the way back under load: >=)
        assert _metric(mport, "coredns_forward_max_concurrent_rejects_total") >= rcodes[dns.rcode.REFUSED]
        # ...and never reached the upstream: 1000 in flight at most, and a slot is only freed when
        # its query times out (5 s), so a burst slowed down by a loaded machine may reuse slots
        assert silent.count() <= 1000 * (1 + int(burst // 5)), (silent.count(), burst)
        # once the held queries time out, the descriptors are given back
        deadline = time.monotonic() + 5
        while _fds(pid) > base + 4 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _fds(pid) <= base + 4
        print(f"burst of {sent}: peak {peak} descriptors (base {base}), answers {rcodes}")
    finally:
        client.close()
        proc.stop()
        silent.stop()
