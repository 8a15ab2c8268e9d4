"""Operations endpoints and logs: /health, /ready, /metrics, the query log and the error log.

Three layers, as everywhere in this project:

- pure checks of the formats (CoreDNS's Common Log Format, metric names, labels and buckets) and
  of the error consolidation on a ``task.Clock``;
- in-process trial tests: a :class:`~kubedns.service.KubeDNS` built from a parsed config, its ops
  from :func:`kubedns.ops.health.build_ops`, real sockets on 127.0.0.1, real HTTP and DNS clients;
- the real ``twistd kubedns`` process (skipped while ``service.py`` does not call ``build_ops``).

Everything listens and is asked on 127.0.0.1 only; HTTP goes through an opener without proxies.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer, reactor, task, threads
from twisted.logger import Logger
from twisted.trial import unittest

from kubedns.config import parse
from kubedns.ops.health import Readiness, build_ops
from kubedns.ops.metrics import TIME_BUCKETS, observe_programming, record_reload_failure
from kubedns.ops.querylog import ErrorLog, common_line, format_duration, json_line
from kubedns.service import build
from tests import fakeapi
from tests.conftest import free_port, http_get, query, wait_until
from tests.dnsupstream import DNSUpstream, closed_port
from tests.support import kubeobj
from tests.support.ops import metric, query_info

pytestmark = pytest.mark.timeout(90)

_PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")


def names(text: str) -> set[str]:
    return {s.name for fam in text_string_to_metric_families(text) for s in fam.samples}


def write_manifests(path: Path) -> str:
    objs = [
        kubeobj.namespace("default"),
        kubeobj.service("nginx", "default", cluster_ip="10.96.0.100"),
        kubeobj.service("kube-dns", "kube-system", cluster_ip="10.96.0.10"),
    ]
    path.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": objs}, sort_keys=False))
    return str(path)


def no_proxy_env(case: Any) -> None:
    for var in (*_PROXY_VARS, "KUBERNETES_SERVICE_HOST", "KUBECONFIG"):
        if var in os.environ:
            case.addCleanup(os.environ.__setitem__, var, os.environ.pop(var))


# -- formats --------------------------------------------------------------------------------------


def test_common_log_format_matches_coredns() -> None:
    assert common_line(query_info()) == (
        '127.0.0.1:50759 - 29008 "A IN nginx.default.svc.cluster.local. udp 41 false 512" NOERROR qr,aa,rd,ra 68 0.037990251s'
    )
    v6 = query_info(peer=("::1", 53000, 0, 0), proto="tcp", qtype=28, rcode=3, do=True, flags=0x8183, duration=0.5)
    assert common_line(v6) == (
        '[::1]:53000 - 29008 "AAAA IN nginx.default.svc.cluster.local. tcp 41 true 65535" NXDOMAIN qr,rd,ra 68 0.5s'
    )
    assert common_line(query_info(qtype=65280, qclass=3, rcode=30)).startswith('127.0.0.1:50759 - 29008 "TYPE65280 CH ')


def test_json_log_has_the_common_fields() -> None:
    fields = json.loads(json_line(query_info(rcode=2)))
    assert fields["remote"] == "127.0.0.1" and fields["port"] == 50759 and fields["id"] == 29008
    assert (fields["type"], fields["class"], fields["name"]) == ("A", "IN", "nginx.default.svc.cluster.local.")
    assert (fields["rcode"], fields["rflags"], fields["size"], fields["rsize"]) == ("SERVFAIL", "qr,aa,rd,ra", 41, 68)
    assert fields["do"] is False and fields["duration"] == 0.037990251 and fields["zone"] == "cluster.local."


def test_duration_is_printed_like_go() -> None:
    assert [format_duration(x) for x in (1.0, 0.000123, 2.5e-7, 0.00021215499987192743)] == [
        "1s", "0.000123s", "0.00000025s", "0.000212155s",
    ]


def test_buckets_are_coredns_buckets() -> None:
    assert TIME_BUCKETS[0] == 0.00025 and TIME_BUCKETS[-1] == 8.192 and len(TIME_BUCKETS) == 16


class _Disp:
    """Just enough of a Dispatcher for the error log: its blocks."""

    def __init__(self, blocks: list[Any]):
        self.blocks = blocks


def _errors_block(consolidate: float) -> Any:
    cfg = parse(
        f"servers: [{{zones: ['.'], listen: '127.0.0.1:53', forward: {{to: ['127.0.0.1:5300']}}, errors: {{consolidate: {consolidate}}}}}]"
    )
    from kubedns.serve.server import Block

    return Block(cfg.servers[0], None, chain=None, loop=None)


def test_errors_are_consolidated_per_pattern() -> None:
    clock = task.Clock()
    events: list[dict[str, Any]] = []
    elog = ErrorLog(_Disp([_errors_block(10)]), reactor=clock, logger=Logger(observer=events.append))
    text = lambda e: e["log_format"].format(**e)  # noqa: E731
    elog(query_info(rcode=0))  # not an error: nothing
    assert events == []
    for i in range(5):
        elog(query_info(rcode=2, zone="", qname=f"x{i}.example.org".encode()))
    assert len(events) == 1  # the first at once, the rest counted
    assert text(events[0]).startswith("plugin/errors: 2 x0.example.org. A: ")
    clock.advance(10)
    assert len(events) == 2
    assert re.match(r"plugin/errors: 4 errors like '2 <name> <type>: .+' occurred in last 10s", text(events[1]))
    assert "last x4.example.org. A" in text(events[1])
    clock.advance(10)  # a quiet window closes the pattern ...
    assert len(events) == 2
    elog(query_info(rcode=2, zone="", qname=b"y.example.org"))  # ... so the next error is logged at once
    assert len(events) == 3 and "y.example.org." in text(events[2])
    elog(query_info(rcode=2, zone="", qname=b"z.example.org"))
    elog.flush()  # shutdown writes what is pending and leaves no timer behind
    assert "1 errors like" in text(events[3]) and not clock.getDelayedCalls()


def test_errors_without_consolidation_log_every_failure() -> None:
    events: list[dict[str, Any]] = []
    elog = ErrorLog(_Disp([_errors_block(0)]), reactor=task.Clock(), logger=Logger(observer=events.append))
    for _ in range(3):
        elog(query_info(rcode=2, zone=""))
    assert len(events) == 3


class _FakeStore:
    def __init__(self, missing: list[str]):
        self.missing = missing

    def missing_kinds(self) -> list[str]:
        return self.missing

    @property
    def synced(self) -> bool:
        return not self.missing


class _FakeKubeDNS:
    """What Readiness reads of a KubeDNS: synced, not_synced() and the sources' problems."""

    def __init__(self, stores: list[_FakeStore]):
        self.stores = stores
        self.sources: list[Any] = []

    @property
    def synced(self) -> bool:
        return all(s.synced for s in self.stores)

    def not_synced(self) -> list[str]:
        return [f"kubernetes: waiting for {', '.join(s.missing_kinds())}" for s in self.stores if not s.synced]


def test_readiness_latches_and_lameduck_wins() -> None:
    store = _FakeStore(["namespaces", "services"])
    kd = _FakeKubeDNS([store])
    r = Readiness(kd)
    assert r.status() == (503, "not ready: kubernetes: waiting for namespaces, services")
    store.missing = []
    assert r.status() == (200, "OK")
    kd.stores.append(_FakeStore(["pods"]))  # e.g. a reload adds a store: still ready
    assert r.status() == (200, "OK")
    r.lameduck = True
    assert r.status() == (503, "shutting down")


# -- in process -----------------------------------------------------------------------------------


class InProcessTests(unittest.TestCase):
    """KubeDNS + build_ops on the trial reactor, real sockets, real HTTP and DNS clients."""

    timeout = 40

    def setUp(self) -> None:
        no_proxy_env(self)
        self.dns_port, self.http_port, self.metrics_port = free_port(), free_port(), free_port()

    def start(self, extra: str, kubernetes: str | None = None, more: str = "") -> Any:
        if kubernetes is None:
            kubernetes = f"{{manifests: {write_manifests(Path(self.mktemp()))}}}"
        self.kubernetes = kubernetes
        text = f"""
servers:
  - zones: ["."]
    listen: "127.0.0.1:{self.dns_port}"
    kubernetes: {kubernetes}
{extra}
{more}
"""
        self.config_path = Path(self.mktemp())
        self.config_path.write_text(text)
        self.kd = build(parse(text, str(self.config_path)))
        self.ops = self.kd.ops if getattr(self.kd, "ops", None) is not None else build_ops(self.kd)
        self.kd.startService()
        self.addCleanup(self.kd.stopService)
        return self.kd

    def get(self, port: int, path: str) -> defer.Deferred[tuple[int, str]]:
        return threads.deferToThread(http_get, port, path)

    def ask(self, name: str, rdtype: str = "A", **kw: Any) -> defer.Deferred[Any]:
        return threads.deferToThread(query, self.dns_port, name, rdtype, **kw)

    async def test_health_ready_metrics_share_one_listener(self) -> None:
        p = self.http_port
        self.start(f"    health: {{listen: '127.0.0.1:{p}', lameduck: 0}}\n    ready: '127.0.0.1:{p}'\n    prometheus: '127.0.0.1:{p}'")
        self.assertEqual(await self.get(p, "/health"), (200, "OK"))
        self.assertEqual(await self.get(p, "/ready"), (200, "OK"))  # a manifests file is synced at once
        status, body = await self.get(p, "/metrics")
        self.assertEqual(status, 200)
        self.assertIn("coredns_build_info", names(body))
        self.assertEqual((await self.get(p, "/nothing"))[0], 404)
        self.ops.set_lameduck()
        self.assertEqual(await self.get(p, "/ready"), (503, "shutting down"))
        self.assertEqual(await self.get(p, "/health"), (200, "OK"))  # liveness stays up in lameduck

    async def test_fast_path_hits_are_counted(self) -> None:
        self.start(f"    prometheus: '127.0.0.1:{self.metrics_port}'")
        disp = next(iter(self.kd.dispatchers.values()))
        self.assertTrue(disp.fast.enabled)
        for _ in range(5):
            r = await self.ask("nginx.default.svc.cluster.local")
            self.assertEqual(r.rcode(), 0)
        await self.ask("missing.default.svc.cluster.local")
        self.assertGreaterEqual(disp.fast.hits(), 4)  # really served by the fast path
        _, body = await self.get(self.metrics_port, "/metrics")
        server = f"dns://127.0.0.1:{self.dns_port}"
        base = {"server": server, "zone": "cluster.local.", "view": ""}
        self.assertEqual(metric(body, "coredns_dns_requests_total", proto="udp", family="1", type="A", **base), 6)
        self.assertEqual(metric(body, "coredns_dns_responses_total", rcode="NOERROR", plugin="kubernetes", **base), 5)
        self.assertEqual(metric(body, "coredns_dns_responses_total", rcode="NXDOMAIN", **base), 1)
        self.assertEqual(metric(body, "coredns_dns_request_duration_seconds_count", type="A", **base), 6)
        self.assertEqual(metric(body, "coredns_dns_request_size_bytes_count", proto="udp", **base), 6)
        self.assertGreater(metric(body, "coredns_dns_response_size_bytes_sum", proto="udp", **base), 6 * 12)
        self.assertEqual(metric(body, "coredns_plugin_enabled", name="kubernetes", zone="."), 1)

    async def test_store_change_keeps_fast_hits(self) -> None:
        self.start(f"    prometheus: '127.0.0.1:{self.metrics_port}'")
        for _ in range(3):
            await self.ask("nginx.default.svc.cluster.local")
        self.kd._invalidate()  # what a store change does: entries dropped, hits retired
        for _ in range(2):
            await self.ask("nginx.default.svc.cluster.local")
        _, body = await self.get(self.metrics_port, "/metrics")
        self.assertEqual(metric(body, "coredns_dns_requests_total", type="A"), 5)

    async def test_query_log_turns_the_fast_path_off(self) -> None:
        events: list[dict[str, Any]] = []
        from twisted.logger import globalLogPublisher

        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        self.start(f"    log: {{}}\n    prometheus: '127.0.0.1:{self.metrics_port}'")
        disp = next(iter(self.kd.dispatchers.values()))
        self.assertFalse(disp.fast.enabled)
        for _ in range(3):
            await self.ask("nginx.default.svc.cluster.local")
        lines = [e["line"] for e in events if e.get("log_namespace") == "kubedns.ops.querylog"]
        self.assertEqual(len(lines), 3)
        self.assertRegex(lines[0], r'^127\.0\.0\.1:\d+ - \d+ "A IN nginx\.default\.svc\.cluster\.local\. udp \d+ false \d+" NOERROR qr,aa,rd \d+ [0-9.]+s$')

    async def test_refresh_follows_a_reload(self) -> None:
        """After a reload: observers on the new blocks, fast path off for log, dropped counts kept."""
        other = free_port()
        k8s = f"{{manifests: {write_manifests(Path(self.mktemp()))}}}"
        self.start(f"    prometheus: '127.0.0.1:{self.metrics_port}'", kubernetes=k8s,
                   more=f"  - {{zones: ['.'], listen: '127.0.0.1:{other}', kubernetes: {k8s}}}")
        for _ in range(4):
            await threads.deferToThread(query, other, "nginx.default.svc.cluster.local")
        self.assertEqual(len(self.kd.dispatchers), 2)
        events: list[dict[str, Any]] = []
        from twisted.logger import globalLogPublisher

        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        self.config_path.write_text(
            f"servers: [{{zones: ['.'], listen: '127.0.0.1:{self.dns_port}', kubernetes: {self.kubernetes},"
            f" prometheus: '127.0.0.1:{self.metrics_port}', log: {{}}}}]"
        )
        self.assertTrue(self.kd.reload())
        self.ops.refresh()
        (disp,) = self.kd.dispatchers.values()
        self.assertFalse(disp.fast.enabled)
        await self.ask("nginx.default.svc.cluster.local")
        self.assertEqual(len([e for e in events if e.get("log_namespace") == "kubedns.ops.querylog"]), 1)
        _, body = await self.get(self.metrics_port, "/metrics")
        self.assertEqual(metric(body, "coredns_dns_requests_total", server=f"dns://127.0.0.1:{other}", type="A"), 4)
        self.assertEqual(metric(body, "coredns_plugin_enabled", name="log"), 1)

    async def test_process_counters(self) -> None:
        self.start(f"    prometheus: '127.0.0.1:{self.metrics_port}'")
        _, before = await self.get(self.metrics_port, "/metrics")
        record_reload_failure()
        self.ops.record_reload_failure()
        observe_programming("headless_with_selector", 0.003)
        _, after = await self.get(self.metrics_port, "/metrics")
        self.assertEqual(metric(after, "coredns_reload_failed_total") - metric(before, "coredns_reload_failed_total"), 2)
        name = "coredns_kubernetes_dns_programming_duration_seconds_bucket"
        self.assertEqual(metric(after, name, service_kind="headless_with_selector", le="0.004")
                         - metric(before, name, service_kind="headless_with_selector", le="0.004"), 1)
        self.assertIn("coredns_panics_total", names(after))

    async def test_ready_waits_for_the_first_list_then_survives_an_outage(self) -> None:
        api = fakeapi.FakeKubeAPI().start()
        self.addCleanup(api.stop)
        api.load([kubeobj.namespace("default"), kubeobj.service("nginx", "default", cluster_ip="10.96.0.100")])
        api.withhold_lists = True
        self.addCleanup(setattr, api, "withhold_lists", False)  # never leave a thread blocked
        kubeconfig = kubeobj.kubeconfig(Path(self.mktemp()), api.url)
        p = self.http_port
        self.start(f"    ready: '127.0.0.1:{p}'\n    health: {{listen: '127.0.0.1:{p}', lameduck: 0}}",
                   kubernetes=f"{{kubeconfig: {kubeconfig}}}")
        status, body = await self.get(p, "/ready")
        self.assertEqual(status, 503)
        self.assertTrue(body.startswith("not ready: kubernetes: waiting for endpointslices, namespaces, services"), body)
        self.assertEqual(await self.get(p, "/health"), (200, "OK"))
        api.withhold_lists = False
        await wait_until(lambda: self.kd.synced, timeout=10, what="first sync")
        self.assertEqual(await self.get(p, "/ready"), (200, "OK"))
        api.fail_requests = True
        api.drop_watches()
        await task.deferLater(reactor, 0.5, lambda: None)
        self.assertEqual(await self.get(p, "/ready"), (200, "OK"))


# -- the real process -----------------------------------------------------------------------------


def _wired() -> bool:
    """Does service.py call build_ops yet?  (The e2e tests need the process to serve HTTP.)"""
    cfg = parse("servers: [{zones: ['.'], listen: '127.0.0.1:53', forward: {to: ['127.0.0.1:53']}}]")
    return getattr(build(cfg), "ops", None) is not None


wired = pytest.mark.skipif(not _wired(), reason="kubedns/service.py does not call build_ops yet")


@pytest.fixture(autouse=True)
def _no_proxies(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in _PROXY_VARS:
        monkeypatch.delenv(var, raising=False)


def _wait_http(port: int, path: str, proc: Any, timeout: float = 10.0) -> tuple[int, str]:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return http_get(port, path, timeout=1.0)
        except OSError:
            if time.monotonic() > deadline:
                raise AssertionError(f"no HTTP on {port}:\n{proc.log()}") from None
            time.sleep(0.1)


def _wait_log(proc: Any, pattern: str, timeout: float = 5.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while True:
        found = [ln for ln in proc.log().splitlines() if re.search(pattern, ln)]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


@wired
def test_process_health_ready_metrics_and_query_log(kubedns_process: Any, tmp_path: Path) -> None:
    dns, http, prom = free_port(), free_port(), free_port()
    cfg = {"servers": [{
        "zones": ["."], "listen": f"127.0.0.1:{dns}",
        "kubernetes": {"manifests": write_manifests(tmp_path / "cluster.yaml")},
        "health": {"listen": f"127.0.0.1:{http}", "lameduck": 0}, "ready": f"127.0.0.1:{http}",
        "prometheus": f"127.0.0.1:{prom}", "log": None,
    }]}
    p = kubedns_process(cfg)
    p.wait_listening(dns)
    assert _wait_http(http, "/health", p) == (200, "OK")
    assert http_get(http, "/ready") == (200, "OK")
    for _ in range(5):
        assert query(dns, "nginx.default.svc.cluster.local").rcode() == 0
    assert query(dns, "nope.default.svc.cluster.local").rcode() == 3
    assert query(dns, "nginx.default.svc.cluster.local", tcp=True).rcode() == 0
    lines = _wait_log(p, r'"A IN nginx\.default\.svc\.cluster\.local\. udp')
    assert len(lines) == 5, p.log()
    assert re.search(r'127\.0\.0\.1:\d+ - \d+ "A IN nginx\.default\.svc\.cluster\.local\. udp \d+ false 512" NOERROR qr,aa,rd \d+ [0-9.]+s$', lines[0])
    assert _wait_log(p, r'"A IN nope\.default\.svc\.cluster\.local\. udp \d+ false 512" NXDOMAIN ')
    _, body = http_get(prom, "/metrics")
    server = f"dns://127.0.0.1:{dns}"
    # wait_listening's TXT probes are counted too: look at type A only
    assert metric(body, "coredns_dns_requests_total", server=server, zone="cluster.local.", type="A", proto="udp") == 6
    assert metric(body, "coredns_dns_responses_total", server=server, rcode="NXDOMAIN", plugin="kubernetes") == 1
    assert metric(body, "coredns_dns_requests_total", server=server, type="A", proto="tcp") == 1
    assert _wait_log(p, r'"A IN nginx\.default\.svc\.cluster\.local\. tcp \d+ false 65535" NOERROR ')
    assert metric(body, "coredns_plugin_enabled", server=server, name="log") == 1


@wired
def test_process_fast_path_queries_are_counted(kubedns_process: Any, tmp_path: Path) -> None:
    dns, prom = free_port(), free_port()
    cfg = {"servers": [{
        "zones": ["."], "listen": f"127.0.0.1:{dns}",
        "kubernetes": {"manifests": write_manifests(tmp_path / "cluster.yaml")},
        "prometheus": f"127.0.0.1:{prom}",
    }]}
    p = kubedns_process(cfg)
    p.wait_listening(dns)
    _, before = _wait_http(prom, "/metrics", p)
    for _ in range(5):
        assert query(dns, "nginx.default.svc.cluster.local").rcode() == 0
    _, after = http_get(prom, "/metrics")
    sel = {"zone": "cluster.local.", "type": "A", "proto": "udp"}
    assert metric(after, "coredns_dns_requests_total", **sel) - metric(before, "coredns_dns_requests_total", **sel) == 5
    assert metric(after, "coredns_dns_responses_total", rcode="NOERROR", zone="cluster.local.") >= 5
    # fast-path hits sit in the lowest duration bucket
    assert metric(after, "coredns_dns_request_duration_seconds_bucket", type="A", le="0.00025") >= 4


@wired
def test_process_ready_before_and_after_sync(kubedns_process: Any, tmp_path: Path) -> None:
    with fakeapi.FakeKubeAPI() as api:
        api.load([kubeobj.namespace("default"), kubeobj.service("nginx", "default", cluster_ip="10.96.0.100")])
        api.withhold_lists = True
        try:
            dns, http = free_port(), free_port()
            cfg = {"servers": [{
                "zones": ["."], "listen": f"127.0.0.1:{dns}",
                "kubernetes": {"kubeconfig": kubeobj.kubeconfig(tmp_path / "kubeconfig", api.url)},
                "health": {"listen": f"127.0.0.1:{http}", "lameduck": 0}, "ready": f"127.0.0.1:{http}",
            }]}
            p = kubedns_process(cfg)
            p.wait_listening(dns)
            status, body = _wait_http(http, "/ready", p)
            assert status == 503 and body.startswith("not ready: kubernetes: waiting for "), body
            assert "namespaces" in body and "services" in body
            assert http_get(http, "/health") == (200, "OK")
        finally:
            api.withhold_lists = False
        deadline = time.monotonic() + 15
        while http_get(http, "/ready")[0] != 200:
            assert time.monotonic() < deadline, p.log()
            time.sleep(0.1)
        assert query(dns, "nginx.default.svc.cluster.local").rcode() == 0
        api.fail_requests = True
        api.drop_watches()
        time.sleep(1.0)
        assert http_get(http, "/ready") == (200, "OK")
    time.sleep(0.5)  # the API is gone altogether now
    assert http_get(http, "/ready") == (200, "OK")
    assert query(dns, "nginx.default.svc.cluster.local").rcode() == 0


@wired
def test_process_forward_cache_metrics_json_log_and_errors(kubedns_process: Any, tmp_path: Path) -> None:
    with DNSUpstream("127.0.0.1") as up:
        up.add("example.com", "A", "192.0.2.1", ttl=300)
        dead = closed_port()
        dns, prom = free_port(), free_port()
        cfg = {"servers": [
            {"zones": ["."], "listen": f"127.0.0.1:{dns}",
             "kubernetes": {"manifests": write_manifests(tmp_path / "cluster.yaml")},
             "forward": {"to": [up.address]}, "cache": 30,
             "prometheus": f"127.0.0.1:{prom}", "log": {"format": "json"}},
            {"zones": ["broken.test"], "listen": f"127.0.0.1:{dns}",
             "forward": {"to": [f"127.0.0.1:{dead}"], "timeout": "0.2s"}, "errors": {"consolidate": "2s"}},
        ]}
        p = kubedns_process(cfg)
        p.wait_listening(dns)
        for _ in range(3):
            assert query(dns, "example.com").rcode() == 0
        for i in range(4):
            assert query(dns, f"h{i}.broken.test", timeout=5).rcode() == 2
        _, body = _wait_http(prom, "/metrics", p)
        to = up.address
        assert metric(body, "coredns_forward_requests_total", to=to) == 1  # the cache took the rest
        assert metric(body, "coredns_forward_responses_total", to=to, rcode="NOERROR") == 1
        # the CoreDNS >= 1.11 names: one answered try, timed, with a +Inf bucket equal to the count
        proxy = {"proxy_name": "forward", "to": to, "rcode": "NOERROR"}
        assert metric(body, "coredns_proxy_request_duration_seconds_count", **proxy) == 1
        assert metric(body, "coredns_proxy_request_duration_seconds_bucket", le="+Inf", **proxy) == 1
        assert 0 < metric(body, "coredns_proxy_request_duration_seconds_sum", **proxy) < 5
        assert metric(body, "coredns_cache_hits_total", type="success", zones=".") == 2
        assert metric(body, "coredns_cache_misses_total", zones=".") == 1
        assert metric(body, "coredns_cache_entries", type="success", zones=".") == 1
        assert metric(body, "coredns_dns_responses_total", zone="broken.test.", rcode="SERVFAIL") == 4
        assert {"coredns_forward_healthcheck_failures_total", "coredns_cache_requests_total"} <= names(body)
        # the dead upstream is marked down after max_fails and probed (every 0.5s): each probe fails
        dead_to = f"127.0.0.1:{dead}"
        assert metric(body, "coredns_forward_healthcheck_failures_total", to=to) == 0

        def hc() -> float:
            page = http_get(prom, "/metrics")[1]
            old = metric(page, "coredns_forward_healthcheck_failures_total", to=dead_to)
            assert metric(page, "coredns_proxy_healthcheck_failures_total", proxy_name="forward", to=dead_to) == old
            return old

        first_hc = hc()
        deadline = time.monotonic() + 5
        while hc() <= max(first_hc, 1) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert hc() > max(first_hc, 1), p.log()
        # JSON query log: one object per query of the block that has log, each a whole stdout line
        # (no twistd timestamp/namespace prefix), as container log pipelines parse them
        logged = [json.loads(ln) for ln in _wait_log(p, r'^\{.*"name":"example\.com\."')]
        assert not _wait_log(p, r"kubedns\.querylog", timeout=0), p.log()
        example = [e for e in logged if e["name"] == "example.com."]
        assert len(example) == 3 and example[0]["rcode"] == "NOERROR" and example[0]["proto"] == "udp"
        assert not [e for e in logged if e["name"].endswith("broken.test.")]  # that block has no log
        # errors: the first failure at once, the others counted into "N errors like ..." lines
        first = _wait_log(p, rf"plugin/errors: 2 h0\.broken\.test\. A: forward: .*127\.0\.0\.1:{dead}")
        assert first, p.log()
        summary = _wait_log(p, r"plugin/errors: \d+ errors like '2 <name> <type>: forward: .*' occurred in last 2s", timeout=6)
        assert summary, p.log()
        single = _wait_log(p, r"plugin/errors: 2 h\d\.broken\.test\. A: ", timeout=0)
        counted = sum(int(re.search(r"plugin/errors: (\d+) errors like", ln).group(1)) for ln in summary)
        assert len(single) + counted == 4 and len(single) < 4, p.log()


def test_programming_latency_waits_for_a_late_service() -> None:
    """A slice that lands before its Service is timed when the Service makes it answerable."""
    from kubedns.k8s.objects import EndpointSlice, Service
    from kubedns.k8s.store import Store
    from kubedns.ops import metrics
    from kubedns.service import _programming_hook

    clock = [1000.0]
    store = Store()
    hook = _programming_hook(store, now=lambda: clock[0])
    before = dict(metrics.PROCESS.programming)
    metrics.PROCESS.programming.clear()
    try:
        sl = EndpointSlice(namespace="ns", name="late-1", service="late", endpoints=(), ports=())
        hook("endpointslices", "ADDED", 0.25, sl)  # started at 999.75; Service unknown yet
        assert metrics.PROCESS.programming == {}
        clock[0] = 1000.5
        svc = Service(namespace="ns", name="late", cluster_ips=(), headless=True, external_name="",
                      ports=(), publish_not_ready=False)
        hook("services", "ADDED", 0.0, svc)
        counts, total = metrics.PROCESS.programming["headless_with_selector"]
        assert sum(counts) == 1 and abs(total - 0.75) < 1e-9
        hook("services", "MODIFIED", 0.0, svc)  # observed once only
        assert sum(metrics.PROCESS.programming["headless_with_selector"][0]) == 1
    finally:
        metrics.PROCESS.programming.clear()
        metrics.PROCESS.programming.update(before)
