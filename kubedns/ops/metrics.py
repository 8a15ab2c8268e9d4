"""Prometheus metrics under CoreDNS's names, so existing CoreDNS dashboards and alerts keep working.

Why it is shaped this way: a DNS server's hot path must not pay for metrics.  So nothing here
touches a ``prometheus_client`` metric object per query.  The slow path's observer
(:meth:`kubedns.ops.counters.QueryStats.observe`) does a handful of tuple and dict operations: it bumps plain counters
in a dict keyed by the raw label values (sizes already reduced to their bucket index), and the
fast path (pre-encoded UDP answers) is not observed at all: its hits are counted inside the
:class:`~kubedns.serve.fastcache.FastCache` entries.  All Prometheus objects are built at scrape time by
:class:`KubeDNSCollector`, which folds both sources together, plus the cache, forwarder and process
counters, into ``CounterMetricFamily`` / ``GaugeMetricFamily`` / ``HistogramMetricFamily``.

Fast-path hits have no measured duration (timing them would cost more than answering them); they
are counted in the lowest bucket of ``coredns_dns_request_duration_seconds`` (0.25 ms, they take a
few microseconds) and add nothing to its ``_sum``.  Their sizes are exact (they are part of the
fast-path key), their ``proto`` is ``udp`` and their ``family`` is that of the socket they came in on (an
every-address listener's IPv6 socket counts its hits apart: ``FastCache.retired6``).

The standard ``process_*`` metrics (``process_resident_memory_bytes``, ``process_cpu_seconds_total``,
``process_open_fds``...) come from prometheus_client's ``ProcessCollector`` and ``python_info`` from
its ``PlatformCollector``, as CoreDNS's Go client exports ``process_*`` and ``go_info``; with
``workers: N`` each worker's page reports its own process.

The registry is private (never ``prometheus_client.REGISTRY``) and the page is rendered on the
reactor thread: the counters belong to the reactor thread, and prometheus_client's own Twisted
``MetricsResource`` would read them from a thread pool while the reactor changes them.

Names and labels follow CoreDNS's plugin READMEs (metrics, cache, forward, kubernetes, reload); the
deviations are listed in :data:`DEVIATIONS` and in the README's design notes.  Process-wide
counters (reload failures, panics, DNS programming latency) live in :mod:`kubedns.ops.counters`, fed by
:func:`record_reload_failure`, :func:`record_panic` and :func:`observe_programming`.
"""

from __future__ import annotations

import platform
from bisect import bisect_left
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import PlatformCollector, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector, CollectorRegistry
from twisted.web import resource
from twisted.web.server import GzipEncoderFactory

from kubedns.ops.counters import (
    PROCESS,
    PROGRAMMING_BUCKETS,
    SIZE_BUCKETS,
    TIME_BUCKETS,
    FoldedHits,
    QueryStats,
    install_panic_counter,
    observe_programming,
    rcode_name,
    record_panic,
    record_reload_failure,
    type_label,
)

if TYPE_CHECKING:
    from kubedns.config import ServerBlock
    from kubedns.forward.chain import ForwardChain
    from kubedns.serve.server import Dispatcher
    from kubedns.service import KubeDNS

__all__ = [
    "DEVIATIONS",
    "KubeDNSCollector",
    "Metrics",
    "MetricsResource",
    "PROGRAMMING_BUCKETS",
    "QueryStats",
    "SIZE_BUCKETS",
    "TIME_BUCKETS",
    "observe_programming",
    "record_panic",
    "record_reload_failure",
    "rcode_name",
    "type_label",
]

#: Where we knowingly differ from CoreDNS's metrics (also in the README).
DEVIATIONS = (
    "coredns_build_info: goversion carries the Python version (e.g. 'python3.11.9').",
    "coredns_dns_responses_total: plugin is inferred from the zone (kubernetes zones: 'kubernetes',"
    " other zones of a block with forward: 'forward'; cache hits are reported as 'forward'); '' for"
    " answers the server writes itself (REFUSED for names no block serves, zone 'dropped').",
    "coredns_cache_hits_total / coredns_cache_evictions_total: type='success' carries every hit"
    " (eviction); type='denial' stays 0 (the cache does not count them per type).",
    "coredns_cache_entries: SERVFAIL entries are counted under type='denial' (CoreDNS keeps them in"
    " its denial cache too).",
    "coredns_forward_*: the deprecated forward metrics are exported (requests_total{to},"
    " responses_total{to,rcode}, healthcheck_failures_total{to} without rcode) beside their"
    " replacements coredns_proxy_request_duration_seconds{proxy_name,to,rcode} (answered tries"
    " only) and coredns_proxy_healthcheck_failures_total{proxy_name,to} (no rcode: a failed probe"
    " has none); coredns_proxy_conn_cache_* are not exported.",
    "coredns_health_request_duration_seconds: not exported.",
    "coredns_reload_failed_total: the reload README still says coredns_reload_failed_count; CoreDNS"
    " has exported _total since 1.7 and so do we.",
    "view label: always '' (no views).",
)

def _go_float(v: float) -> str:
    """A bucket bound as Go's client prints it (``100``, ``0.00025``), so ``le`` labels match CoreDNS."""
    text = repr(float(v))
    return text[:-2] if text.endswith(".0") else text


def _zone_fqdn(zone: str) -> str:
    return zone + "." if zone else "."


def _family_of_server(label: str) -> str:
    """``2`` for a socket bound to an IPv6 address (``dns://[::1]:53``), else ``1``."""
    return "2" if label.startswith("dns://[") else "1"


def _fast_counts(disp: Dispatcher) -> list[tuple[tuple[Any, ...], int]]:
    """``(fast_key, hits)`` of a dispatcher's fast path: live entries and retired ones."""
    fast = disp.fast
    return list(fast.live()) + list(fast.retired.items())


def _fast_counts6(disp: Dispatcher) -> list[tuple[tuple[Any, ...], int]]:
    """The same for hits on the IPv6 socket of an every-address listener (family 2)."""
    fast = disp.fast
    return list(fast.live(ipv6=True)) + list(fast.retired6.items())


# -- the collector -------------------------------------------------------------------------------


class _Acc:
    """Label tuple → summed value, for one metric family being assembled."""

    def __init__(self) -> None:
        self.values: dict[tuple[str, ...], float] = {}

    def add(self, labels: tuple[str, ...], v: float) -> None:
        self.values[labels] = self.values.get(labels, 0) + v


class _HistAcc:
    """Label tuple → (non-cumulative bucket counts, sum), for one histogram family."""

    def __init__(self, bounds: tuple[float, ...]):
        self.bounds = bounds
        self.values: dict[tuple[str, ...], list[Any]] = {}

    def slot(self, labels: tuple[str, ...]) -> list[Any]:
        s = self.values.get(labels)
        if s is None:
            s = self.values[labels] = [[0] * (len(self.bounds) + 1), 0.0]
        return s

    def family(self, name: str, doc: str, label_names: list[str]) -> HistogramMetricFamily:
        fam = HistogramMetricFamily(name, doc, labels=label_names)
        les = [_go_float(b) for b in self.bounds] + ["+Inf"]
        for labels, (counts, total) in sorted(self.values.items()):
            cum = 0
            buckets = []
            for le, c in zip(les, counts, strict=True):
                cum += c
                buckets.append((le, cum))
            fam.add_metric(list(labels), buckets, total)
        return fam


class _Servers:
    """What the collector needs to know about each listen address, from its current blocks."""

    def __init__(self, dispatchers: Iterable[Dispatcher]):
        self.has_root: dict[str, bool] = {}
        self.plugin_of: dict[str, dict[str, str]] = {}
        for disp in dispatchers:
            plugins: dict[str, str] = {}
            root = False
            for b in disp.blocks:
                for z in b.zones:
                    root = root or z == ""
                    plugins.setdefault(z, "forward" if b.chain is not None else ("kubernetes" if b.clusters is not None else ""))
                if b.clusters is not None:
                    for z in b.clusters.config.zones:
                        plugins[z] = "kubernetes"
            self.has_root[disp.server_label] = root
            self.plugin_of[disp.server_label] = plugins

    def zone_label(self, server: str, zone: str) -> str:
        if zone == "" and not self.has_root.get(server, True):
            return "dropped"  # CoreDNS's zone for queries no server block took
        return _zone_fqdn(zone)

    def plugin(self, server: str, zone: str) -> str:
        if zone == "" and not self.has_root.get(server, True):
            return ""
        return self.plugin_of.get(server, {}).get(zone, "")


class KubeDNSCollector(Collector):
    """Builds every metric family from plain counters when Prometheus scrapes (see module doc)."""

    def __init__(self, metrics: Metrics):
        self._m = metrics

    def collect(self) -> Iterator[Metric]:
        m = self._m
        m.reconcile()
        kd = m.kubedns
        servers = _Servers(kd.dispatchers.values())
        yield from self._queries(m, servers)
        yield from self._cache_and_forward(m)
        yield from self._process(kd)
        yield from _hosts_families(kd)
        yield from _acl_families(kd)
        yield from _autopath_families(kd)

    # -- coredns_dns_* ---------------------------------------------------------------------------
    def _queries(self, m: Metrics, servers: _Servers) -> Iterator[Metric]:
        requests, responses, do = _Acc(), _Acc(), _Acc()
        duration = _HistAcc(TIME_BUCKETS)
        req_size, resp_size = _HistAcc(SIZE_BUCKETS), _HistAcc(SIZE_BUCKETS)
        for key, (n, dsum, rq_sum, rs_sum, dbuckets, rq_buckets, rs_buckets) in m.stats.slots.items():
            server, zone, proto, fam, qtype, rcode, do_bit, plugin = key
            z = servers.zone_label(server, zone)
            t = type_label(qtype)
            requests.add((server, z, "", proto, fam, t), n)
            responses.add((server, z, "", rcode_name(rcode), plugin if plugin is not None else servers.plugin(server, zone)), n)
            if do_bit:
                do.add((server, "", z), n)
            h = duration.slot((server, z, "", t))
            for i, c in enumerate(dbuckets):
                h[0][i] += c
            h[1] += dsum
            h = req_size.slot((server, z, "", proto))
            for i, c in enumerate(rq_buckets):
                h[0][i] += c
            h[1] += rq_sum
            h = resp_size.slot((server, z, "", proto))
            for i, c in enumerate(rs_buckets):
                h[0][i] += c
            h[1] += rs_sum
        # (fast_key, hits, family): None for the family of the server's own socket
        fast: list[tuple[tuple[Any, ...], int, str | None]] = [(k, n, None) for k, n in m.stats.fast_folded.items()]
        fast.extend((k, n, "2") for k, n in m.fast_folded6.items())
        for disp in m.kubedns.dispatchers.values():
            fast.extend((k, n, None) for k, n in _fast_counts(disp))
            fast.extend((k, n, "2") for k, n in _fast_counts6(disp))
        for (server, zone, qtype, rcode, rq, rs, do_bit), n, family in fast:
            if not n:
                continue
            z = servers.zone_label(server, zone)
            t = type_label(qtype)
            requests.add((server, z, "", "udp", family or _family_of_server(server), t), n)
            responses.add((server, z, "", rcode_name(rcode), servers.plugin(server, zone)), n)
            if do_bit:
                do.add((server, "", z), n)
            duration.slot((server, z, "", t))[0][0] += n  # fast hits: lowest bucket, nothing added to _sum
            h = req_size.slot((server, z, "", "udp"))
            h[0][bisect_left(SIZE_BUCKETS, rq)] += n
            h[1] += rq * n
            h = resp_size.slot((server, z, "", "udp"))
            h[0][bisect_left(SIZE_BUCKETS, rs)] += n
            h[1] += rs * n
        yield _counter("coredns_dns_requests_total", "Counter of DNS requests made per zone, protocol and family.",
                       ["server", "zone", "view", "proto", "family", "type"], requests)
        yield _counter("coredns_dns_responses_total", "Counter of response status codes.",
                       ["server", "zone", "view", "rcode", "plugin"], responses)
        yield _counter("coredns_dns_do_requests_total", "Counter of DNS requests with DO bit set per zone.",
                       ["server", "view", "zone"], do)
        yield duration.family("coredns_dns_request_duration_seconds", "Histogram of the time (in seconds) each request took.",
                              ["server", "zone", "view", "type"])
        yield req_size.family("coredns_dns_request_size_bytes", "Size of the EDNS0 UDP buffer in bytes (64K for TCP).",
                              ["server", "zone", "view", "proto"])
        yield resp_size.family("coredns_dns_response_size_bytes", "Size of the returned response in bytes.",
                               ["server", "zone", "view", "proto"])

    # -- coredns_cache_* and coredns_forward_* -----------------------------------------------------
    def _cache_and_forward(self, m: Metrics) -> Iterator[Metric]:
        entries = _Acc()
        counters: dict[str, _Acc] = {n: _Acc() for n in _CARRIED}
        proxy = _HistAcc(TIME_BUCKETS)

        def take(name: str, labels: tuple[str, ...], v: float) -> None:
            if name != _PROXY_DURATION:
                counters[name].add(labels, v)
                return
            slot = proxy.slot(labels[:-1])
            if labels[-1] == "sum":
                slot[1] += v
            else:
                slot[0][int(labels[-1])] += v

        for (name, labels), v in m.carried.items():
            take(name, labels, v)
        for chain, server, zones in m.live_chains():
            for (name, labels), v in _chain_counters(chain, server, zones):
                take(name, labels, v)
            cache = chain.cache
            if cache is not None:
                by_kind = cache.entries_by_kind()
                entries.add((server, "success", zones, ""), by_kind.get("success", 0))
                entries.add((server, "denial", zones, ""), by_kind.get("denial", 0) + by_kind.get("servfail", 0))
        yield _gauge("coredns_cache_entries", "The number of elements in the cache.", ["server", "type", "zones", "view"], entries)
        for name, (doc, label_names) in _CARRIED.items():
            yield _counter(name, doc, label_names, counters[name])
        yield proxy.family(_PROXY_DURATION, "Histogram of the time each request took.", ["proxy_name", "to", "rcode"])

    # -- process ----------------------------------------------------------------------------------
    def _process(self, kd: KubeDNS) -> Iterator[Metric]:
        from kubedns import __version__

        info = GaugeMetricFamily("coredns_build_info", "A metric with a constant '1' value labeled by version, revision, and goversion from which CoreDNS was built.",
                                 labels=["version", "revision", "goversion"])
        info.add_metric([__version__, _revision(), f"python{platform.python_version()}"], 1)
        yield info
        yield CounterMetricFamily("coredns_panics_total", "A metrics that counts the number of panics.", value=PROCESS.panics)
        yield CounterMetricFamily("coredns_reload_failed_total", "Counter of the number of failed reload attempts.",
                                  value=PROCESS.reload_failures)
        prog = _HistAcc(PROGRAMMING_BUCKETS)
        for kind, (counts, total) in PROCESS.programming.items():
            prog.values[(kind,)] = [list(counts), total]
        yield prog.family("coredns_kubernetes_dns_programming_duration_seconds",
                          "Histogram of the time (in seconds) it took to program a dns instance.", ["service_kind"])
        enabled = _Acc()
        for disp in kd.dispatchers.values():
            for b in disp.blocks:
                for name in _plugins_of(b.config):
                    for z in b.zones:
                        enabled.values[(disp.server_label, _zone_fqdn(z), "", name)] = 1
        yield _gauge("coredns_plugin_enabled", "A metric that indicates whether a plugin is enabled on per server and zone basis.",
                     ["server", "zone", "view", "name"], enabled)


#: Counters from caches and forwarders that are carried over when a reload retires their object.
_CARRIED: dict[str, tuple[str, list[str]]] = {
    "coredns_cache_hits_total": ("The count of cache hits.", ["server", "type", "zones", "view"]),
    "coredns_cache_misses_total": ("The count of cache misses. Deprecated, derive misses from cache hits/requests counters.",
                                   ["server", "zones", "view"]),
    "coredns_cache_requests_total": ("The count of cache requests.", ["server", "zones", "view"]),
    "coredns_cache_prefetch_total": ("The number of times the cache has prefetched a cached item.", ["server", "zones", "view"]),
    "coredns_cache_served_stale_total": ("The number of requests served from stale cache entries.", ["server", "zones", "view"]),
    "coredns_cache_evictions_total": ("The count of cache evictions.", ["server", "type", "zones", "view"]),
    "coredns_forward_requests_total": ("Counter of requests made per upstream.", ["to"]),
    "coredns_forward_responses_total": ("Counter of responses received per upstream.", ["to", "rcode"]),
    "coredns_forward_healthcheck_failures_total": ("Counter of the number of failed healthchecks.", ["to"]),
    "coredns_forward_healthcheck_broken_total": ("Counter of the number of complete failures of the healthchecks.", []),
    "coredns_forward_max_concurrent_rejects_total": ("Counter of the number of queries rejected because the concurrent queries were at maximum.", []),
    "coredns_proxy_healthcheck_failures_total": ("Counter of the number of failed healthchecks.", ["proxy_name", "to"]),
}
#: The forward histogram CoreDNS >= 1.11 dashboards read.  Carried like the counters, one sample
#: per bucket (label tuple ends in the bucket index, or "sum"), and rebuilt on scrape.
_PROXY_DURATION = "coredns_proxy_request_duration_seconds"


def _chain_counters(chain: ForwardChain, server: str, zones: str) -> list[tuple[tuple[str, tuple[str, ...]], float]]:
    """The counter samples of one forward chain (cache + forwarder), as read right now."""
    out: list[tuple[tuple[str, tuple[str, ...]], float]] = []
    cache = chain.cache
    if cache is not None:
        for kind, hits, evictions in (("success", cache.hits, cache.evictions), ("denial", 0, 0)):  # see DEVIATIONS
            out.append((("coredns_cache_hits_total", (server, kind, zones, "")), hits))
            out.append((("coredns_cache_evictions_total", (server, kind, zones, "")), evictions))
        out.append((("coredns_cache_misses_total", (server, zones, "")), cache.misses))
        out.append((("coredns_cache_requests_total", (server, zones, "")), cache.hits + cache.misses))
        out.append((("coredns_cache_prefetch_total", (server, zones, "")), cache.prefetches))
        out.append((("coredns_cache_served_stale_total", (server, zones, "")), cache.stale_served))
    fwd = chain.forwarder
    for to, s in fwd.upstream_stats().items():
        out.append((("coredns_forward_requests_total", (to,)), s.requests))
        out.append((("coredns_forward_healthcheck_failures_total", (to,)), s.healthcheck_failures))
        out.append((("coredns_proxy_healthcheck_failures_total", ("forward", to)), s.healthcheck_failures))
        for rcode, (counts, total) in s.durations.items():
            rc = rcode_name(rcode)
            for i, c in enumerate(counts):
                if c:
                    out.append(((_PROXY_DURATION, ("forward", to, rc, str(i))), c))
            out.append(((_PROXY_DURATION, ("forward", to, rc, "sum")), total))
        for rcode, n in s.responses.items():
            out.append((("coredns_forward_responses_total", (to, rcode_name(rcode))), n))
    out.append((("coredns_forward_healthcheck_broken_total", ()), fwd.stats.healthcheck_broken))
    out.append((("coredns_forward_max_concurrent_rejects_total", ()), fwd.stats.max_concurrent_rejects))
    return out


def _plugins_of(block: ServerBlock) -> list[str]:
    """CoreDNS handler plugins a block enables (health, ready and reload are not handlers there)."""
    keys = {"errors": block.errors, "log": block.log, "prometheus": block.prometheus, "cache": block.cache,
            "kubernetes": block.kubernetes, "forward": block.forward}
    names = [n for n, v in keys.items() if v is not None]
    if block.loop is not None and block.loop.enabled:
        names.append("loop")
    return names


def _counter(name: str, doc: str, labels: list[str], acc: _Acc) -> CounterMetricFamily:
    fam = CounterMetricFamily(name, doc, labels=labels)
    for lv, v in sorted(acc.values.items()):
        fam.add_metric(list(lv), v)
    return fam


def _hosts_families(kd: KubeDNS) -> Iterator[Metric]:
    """``coredns_hosts_*`` as CoreDNS's *hosts* exports them, when a block has ``hosts``."""
    entries, newest = kd.hosts.gauges()
    if not entries:
        return
    fam = GaugeMetricFamily("coredns_hosts_entries", "The combined number of entries in hosts and Corefile.",
                            labels=["hostsfile"])
    for path, n in sorted(entries.items()):
        fam.add_metric([path], n)
    yield fam
    yield GaugeMetricFamily("coredns_hosts_reload_timestamp_seconds", "The timestamp of the last reload of hosts file.",
                            value=newest)


_ACL_METRICS = (
    ("allow", "coredns_acl_allowed_requests_total", "Counter of DNS requests being allowed."),
    ("block", "coredns_acl_blocked_requests_total", "Counter of DNS requests being blocked."),
    ("filter", "coredns_acl_filtered_requests_total", "Counter of DNS requests being filtered."),
    ("drop", "coredns_acl_dropped_requests_total", "Counter of DNS requests being dropped."),
)


def _acl_families(kd: KubeDNS) -> Iterator[Metric]:
    """``coredns_acl_*_requests_total`` as CoreDNS's *acl* exports them, when a block has ``acl``
    (``view`` is always empty: kubedns has no *view* plugin)."""
    from kubedns.plugins.acl import AclPlugin

    accs = {action: _Acc() for action, _, _ in _ACL_METRICS}
    seen = False
    for disp in kd.dispatchers.values():
        for b in disp.blocks:
            for p in b.plugins:
                if not isinstance(p, AclPlugin):
                    continue
                seen = True
                for (action, zone), n in p.counts.items():
                    labels = (disp.server_label, "") if action == "allow" else (disp.server_label, _zone_fqdn(zone), "")
                    accs[action].add(labels, n)
    if not seen:
        return
    for action, name, doc in _ACL_METRICS:
        names = ["server", "view"] if action == "allow" else ["server", "zone", "view"]
        yield _counter(name, doc, names, accs[action])


def _autopath_families(kd: KubeDNS) -> Iterator[Metric]:
    """``coredns_autopath_success_total{server}`` as CoreDNS's *autopath* exports it, when a block
    has ``autopath`` (kubedns.plugins.autopath; counted from the last reload)."""
    from kubedns.plugins.autopath import AutopathPlugin

    acc = _Acc()
    seen = False
    for disp in kd.dispatchers.values():
        for b in disp.blocks:
            for p in b.plugins:
                if isinstance(p, AutopathPlugin):
                    seen = True
                    acc.add((disp.server_label,), p.successes)
    if seen:
        yield _counter("coredns_autopath_success_total", "Counter of requests that did autopath.", ["server"], acc)


def _gauge(name: str, doc: str, labels: list[str], acc: _Acc) -> GaugeMetricFamily:
    fam = GaugeMetricFamily(name, doc, labels=labels)
    for lv, v in sorted(acc.values.items()):
        fam.add_metric(list(lv), v)
    return fam


_REVISION: str | None = None


def _revision() -> str:
    """The git commit of the running code when it runs from a checkout, else ''; read once."""
    global _REVISION
    if _REVISION is None:
        import os

        _REVISION = ""
        git = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".git")
        try:
            with open(os.path.join(git, "HEAD"), encoding="ascii") as f:
                head = f.read().strip()
            if head.startswith("ref: "):
                with open(os.path.join(git, head[5:]), encoding="ascii") as f:
                    head = f.read().strip()
            _REVISION = head[:7]
        except OSError:
            pass
    return _REVISION


# -- the per-server object and its HTTP resource ------------------------------------------------


class Metrics:
    """The metrics of one :class:`~kubedns.service.KubeDNS`: its query stats, registry and page.

    A reload keeps the KubeDNS object but may drop a listen address (its dispatcher and fast-path
    counts) or a forward chain (its cache and forwarder counters).  :meth:`reconcile` notices what
    went away and folds its final counts into :attr:`stats` / :attr:`carried`, so no exported counter
    ever goes down while the process lives.
    """

    def __init__(self, kubedns: KubeDNS):
        self.kubedns = kubedns
        self.stats = QueryStats()
        #: IPv6-socket fast-path hits of dispatchers a reload dropped (``stats.fast_folded``'s twin)
        self.fast_folded6 = FoldedHits()
        #: (metric name, label values) → value of counters from chains that are gone
        self.carried: dict[tuple[str, tuple[str, ...]], float] = {}
        self._dispatchers: dict[int, Dispatcher] = {}
        self._chains: dict[int, tuple[ForwardChain, str, str]] = {}
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(KubeDNSCollector(self))
        # process_* (memory, CPU, fds, start time) from /proc as CoreDNS's Go client has them,
        # and python_info where it has go_info; read at scrape time, nothing per query
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        install_panic_counter()
        self.reconcile()

    def attach(self) -> None:
        """Observe every current dispatcher (idempotent; call again after a reload)."""
        for disp in self.kubedns.dispatchers.values():
            if self.stats.observe not in disp.observers:
                disp.observers.append(self.stats.observe)
        self.reconcile()

    def reconcile(self) -> None:
        """Remember current dispatchers and chains; fold the counts of those a reload dropped."""
        live = {id(d): d for d in self.kubedns.dispatchers.values()}
        for k, disp in list(self._dispatchers.items()):
            if k not in live:
                self.stats.fold_fast(_fast_counts(disp))
                for k6, n6 in _fast_counts6(disp):
                    self.fast_folded6.add(k6, n6)
                del self._dispatchers[k]
        self._dispatchers.update(live)
        chains = {id(c): (c, s, z) for c, s, z in self._current_chains()}
        for k, (chain, server, zones) in list(self._chains.items()):
            if k not in chains:
                for key, v in _chain_counters(chain, server, zones):
                    self.carried[key] = self.carried.get(key, 0) + v
                del self._chains[k]
        self._chains.update(chains)

    def live_chains(self) -> list[tuple[ForwardChain, str, str]]:
        return list(self._chains.values())

    def _current_chains(self) -> list[tuple[ForwardChain, str, str]]:
        """(chain, server label, zones label) for each forward chain, labelled by its first block.

        A chain shared by blocks on several addresses is reported once, under the first
        address, so its counters are not counted twice.
        """
        out: dict[int, tuple[ForwardChain, str, str]] = {}
        for label, disp in sorted(self.kubedns.dispatchers.items()):
            for b in disp.blocks:
                if b.chain is not None and id(b.chain) not in out:
                    out[id(b.chain)] = (b.chain, label, ",".join(_zone_fqdn(z) for z in b.zones))
        return list(out.values())

    def render(self, accept: str | None = None) -> tuple[bytes, str]:
        """The exposition page (text format, or OpenMetrics when asked) and its content type."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type

    def resource(self) -> resource.Resource:
        return resource.EncodingResourceWrapper(MetricsResource(self), [GzipEncoderFactory()])


class MetricsResource(resource.Resource):
    """``/metrics``, rendered on the reactor thread (see the module docstring for why)."""

    isLeaf = True  # noqa: N815 (twisted.web API)

    def __init__(self, metrics: Metrics):
        super().__init__()
        self.metrics = metrics

    def render_GET(self, request: Any) -> bytes:  # noqa: N802 (twisted.web API)
        accept = request.getHeader(b"accept")
        body, content_type = self.metrics.render(accept.decode("latin-1") if accept else None)
        request.setHeader(b"content-type", content_type.encode("latin-1"))
        return body
