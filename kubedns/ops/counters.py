"""The counting half of the metrics: what runs per query and per event, with no Prometheus in it.

A DNS server's hot path must not pay for metrics, so the slow path's observer
(:meth:`QueryStats.observe`) only bumps plain counters keyed by raw label values, and the
process-wide counters (reload failures, panics, DNS programming latency) are module-level
integers.  :mod:`kubedns.ops.metrics` turns all of it into Prometheus families at scrape time.  Kept
apart so that the forwarder and the service can count without importing prometheus_client.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from twisted.logger import ILogObserver, LogEvent
from zope.interface import provider

if TYPE_CHECKING:
    from kubedns.dns.query import QueryInfo

__all__ = [
    "PROCESS",
    "PROGRAMMING_BUCKETS",
    "QueryStats",
    "SIZE_BUCKETS",
    "TIME_BUCKETS",
    "FoldedHits",
    "install_panic_counter",
    "known_type",
    "observe_programming",
    "rcode_name",
    "record_panic",
    "record_reload_failure",
    "type_label",
]

#: CoreDNS ``plugin.TimeBuckets``: exponential from 0.25 ms to 8.192 s.
TIME_BUCKETS: tuple[float, ...] = tuple(0.00025 * 2**i for i in range(16))
#: CoreDNS's request/response size buckets (bytes).
SIZE_BUCKETS: tuple[float, ...] = (0, 100, 200, 300, 400, 511, 1023, 2047, 4095, 8291, 16e3, 32e3, 48e3, 64e3)
#: CoreDNS kubernetes ``dns_programming_duration_seconds``: exponential from 1 ms to ~8.7 min.
PROGRAMMING_BUCKETS: tuple[float, ...] = tuple(0.001 * 2**i for i in range(20))

_TYPE_NAMES = {
    1: "A", 2: "NS", 5: "CNAME", 6: "SOA", 12: "PTR", 15: "MX", 16: "TXT", 28: "AAAA", 33: "SRV",
    43: "DS", 46: "RRSIG", 47: "NSEC", 48: "DNSKEY", 50: "NSEC3", 65: "HTTPS", 251: "IXFR",
    252: "AXFR", 255: "ANY",
}
_RCODE_NAMES = {
    0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED",
    6: "YXDOMAIN", 7: "YXRRSET", 8: "NXRRSET", 9: "NOTAUTH", 10: "NOTZONE", 16: "BADSIG",
    17: "BADKEY", 18: "BADTIME", 19: "BADMODE", 20: "BADNAME", 21: "BADALG", 22: "BADTRUNC",
    23: "BADCOOKIE",
}


def type_label(qtype: int) -> str:
    """CoreDNS's ``type`` label: the common types by name, everything else ``other``."""
    return _TYPE_NAMES.get(qtype, "other")


def known_type(qtype: int) -> int:
    """``qtype`` if it has a label of its own, else 0 (``other``): what counters key on, so that
    a client cycling through the 65,536 types cannot make 65,536 keys."""
    return qtype if qtype in _TYPE_NAMES else 0


def rcode_name(rcode: int) -> str:
    """miekg/dns ``RcodeToString`` (as CoreDNS labels and logs it), ``RCODE<n>`` when unknown."""
    return _RCODE_NAMES.get(rcode, f"RCODE{rcode}")


# -- process-wide counters ----------------------------------------------------------------------


class _Process:
    """Counters that belong to the process, not to one server instance."""

    def __init__(self) -> None:
        self.reload_failures = 0
        self.panics = 0
        #: service_kind → [non-cumulative bucket counts, sum]
        self.programming: dict[str, list[Any]] = {}


PROCESS = _Process()


def record_reload_failure() -> None:
    """Count one rejected reload (``coredns_reload_failed_total``)."""
    PROCESS.reload_failures += 1


def record_panic() -> None:
    """Count one unexpected error caught while serving (``coredns_panics_total``)."""
    PROCESS.panics += 1


def observe_programming(kind: str, seconds: float) -> None:
    """Record one DNS programming latency (``coredns_kubernetes_dns_programming_duration_seconds``).

    ``kind`` is CoreDNS's ``service_kind``: ``cluster_ip``, ``headless_with_selector`` or
    ``headless_without_selector``; ``seconds`` runs from the EndpointSlice's
    ``endpoints.kubernetes.io/last-change-trigger-time`` to the moment the change is answerable.
    Call it on the reactor thread (the informer's ``on_event`` hook runs there).
    """
    h = PROCESS.programming.get(kind)
    if h is None:
        h = PROCESS.programming[kind] = [[0] * (len(PROGRAMMING_BUCKETS) + 1), 0.0]
    seconds = max(0.0, seconds)
    h[0][bisect_left(PROGRAMMING_BUCKETS, seconds)] += 1
    h[1] += seconds


@provider(ILogObserver)
def _count_panic(event: LogEvent) -> None:
    """twisted.logger observer: every traceback logged is a recovered "panic" in CoreDNS terms."""
    if "log_failure" in event:
        PROCESS.panics += 1


_panic_observer_installed = False


def install_panic_counter() -> None:
    """Count logged failures (``log.failure``, unhandled Deferred errors) as panics; idempotent."""
    global _panic_observer_installed
    if _panic_observer_installed:
        return
    from twisted.logger import globalLogPublisher

    globalLogPublisher.addObserver(_count_panic)
    _panic_observer_installed = True


# -- per-query counters ---------------------------------------------------------------------------

_N_TIME = len(TIME_BUCKETS) + 1
_N_SIZE = len(SIZE_BUCKETS) + 1


class FoldedHits:
    """Fast-path hit counts of entries that are gone, by ``fast_key``, in bounded memory.

    A ``fast_key`` holds the exact request and response sizes (the size histograms' ``_sum``
    needs them), which clients vary at will.  So the counts are kept per size *bucket*, with the
    exact byte sums beside, and :meth:`items` gives back ``(fast_key, hits)`` pairs whose sizes
    are the mean of the bucket's: in the same bucket, and ``size * hits`` is the exact sum.  The
    keys are then bounded by the configured zones, the labelled types, the rcodes and the 15 size
    buckets, like :class:`QueryStats`.
    """

    __slots__ = ("counts",)

    def __init__(self) -> None:
        #: (server, zone, type, rcode, request bucket, response bucket, do) → [hits, rq sum, rs sum]
        self.counts: dict[tuple[Any, ...], list[Any]] = {}

    def add(self, key: tuple[Any, ...], n: int) -> None:
        server, zone, qtype, rcode, rq, rs, do = key
        k = (server, zone, known_type(qtype), rcode, bisect_left(SIZE_BUCKETS, rq), bisect_left(SIZE_BUCKETS, rs), do)
        c = self.counts.get(k)
        if c is None:
            self.counts[k] = [n, rq * n, rs * n]
        else:
            c[0] += n
            c[1] += rq * n
            c[2] += rs * n

    def items(self) -> list[tuple[tuple[Any, ...], int]]:
        out = []
        for (server, zone, qtype, rcode, _, _, do), (n, rq_sum, rs_sum) in self.counts.items():
            if n:
                rq = rq_sum // n if rq_sum % n == 0 else rq_sum / n
                rs = rs_sum // n if rs_sum % n == 0 else rs_sum / n
                out.append(((server, zone, qtype, rcode, rq, rs, do), n))
        return out

    def values(self) -> list[int]:
        return [c[0] for c in self.counts.values()]

    def __len__(self) -> int:
        return len(self.counts)


class QueryStats:
    """The slow-path observer: plain counters keyed by raw label values, turned into metrics on scrape.

    Key: (server, zone, proto, family, type (:func:`known_type`), rcode, do, plugin or None);
    value: [count, duration sum, request bytes, response bytes, duration bucket counts, request
    size bucket counts, response size bucket counts].  The key space is bounded by the configured
    zones, the 19 labelled types, the rcodes and the plugins, not by names, sizes or clients (the
    sizes are histograms inside a key, not part of it: CoreDNS's size histograms have no type or
    rcode label either).
    """

    __slots__ = ("slots", "fast_folded")

    def __init__(self) -> None:
        self.slots: dict[tuple[Any, ...], list[Any]] = {}
        #: fast-path hits of dispatchers that are gone (dropped by a reload), by fast_key
        self.fast_folded = FoldedHits()

    def observe(self, info: QueryInfo) -> None:
        """Dispatcher observer: O(1), no allocation beyond the key tuple once a label set exists."""
        d = info.duration
        peer = info.peer
        rq = info.request_size
        rs = info.response_size
        qtype = info.qtype
        key = (
            info.server,
            info.zone,
            info.proto,
            "2" if peer and ":" in peer[0] else "1",
            qtype if qtype in _TYPE_NAMES else 0,
            info.rcode,
            info.do,
            info.plugin,
        )
        s = self.slots.get(key)
        if s is None:
            s = self.slots[key] = [0, 0.0, 0, 0, [0] * _N_TIME, [0] * _N_SIZE, [0] * _N_SIZE]
        s[0] += 1
        s[1] += d
        s[2] += rq
        s[3] += rs
        s[4][bisect_left(TIME_BUCKETS, d)] += 1
        s[5][bisect_left(SIZE_BUCKETS, rq)] += 1
        s[6][bisect_left(SIZE_BUCKETS, rs)] += 1

    def fold_fast(self, counts: Iterable[tuple[tuple[Any, ...], int]]) -> None:
        """Keep the fast-path hits of a dispatcher that is going away."""
        folded = self.fast_folded
        for k, n in counts:
            folded.add(k, n)
