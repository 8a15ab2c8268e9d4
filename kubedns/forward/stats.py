"""Plain counters of the forwarder, per upstream and overall, read by the metrics endpoint.

Kept apart from :mod:`kubedns.forward.forwarder` so the metrics side can read their shape
without the forwarding logic; plain ints and dicts, updated on the reactor thread only.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ForwarderStats", "UpstreamStats"]


@dataclass(slots=True)
class UpstreamStats:
    """Counters for one upstream, plain ints for the metrics endpoint."""

    requests: int = 0  # tries sent (queries, not health probes)
    responses: dict[int, int] = field(default_factory=dict)  # rcode -> count
    failures: int = 0  # tries without an answer
    healthcheck_failures: int = 0
    #: rcode -> [per-bucket counts (TIME_BUCKETS, then +Inf), sum of seconds]: how long answered
    #: tries took, for coredns_proxy_request_duration_seconds{to, rcode}
    durations: dict[int, list[Any]] = field(default_factory=dict)

    def observe(self, rcode: int, seconds: float, bounds: tuple[float, ...]) -> None:
        h = self.durations.get(rcode)
        if h is None:
            h = self.durations[rcode] = [[0] * (len(bounds) + 1), 0.0]
        h[0][bisect_left(bounds, seconds)] += 1
        h[1] += seconds


@dataclass(slots=True)
class ForwarderStats:
    max_concurrent_rejects: int = 0
    healthcheck_broken: int = 0  # requests that found every upstream down
    deduplicated: int = 0  # queries that joined an identical one in flight
