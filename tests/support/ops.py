"""What the operations tests read back: Prometheus samples, and the record of one query.

:func:`metric` sums the samples of a scrape of ``/metrics`` (parsed by ``prometheus_client``'s own
parser, so the text format is checked too); :func:`query_info` is the
:class:`~kubedns.dns.query.QueryInfo` of CoreDNS's log example, for the query and error log tests.
"""

from __future__ import annotations

from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from kubedns.dns.query import QueryInfo

__all__ = ["metric", "query_info"]


def metric(text: str, sample: str, /, **labels: str) -> float:
    """Sum of the samples called ``sample`` whose labels include ``labels`` (0 if none)."""
    total = 0.0
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


def query_info(**kw: Any) -> QueryInfo:
    """A UDP A query for ``Nginx.Default.svc.cluster.local`` from 127.0.0.1:50759 answered NOERROR
    in 38 ms (CoreDNS's log example), with the fields in ``kw`` changed."""
    base: dict[str, Any] = dict(
        server="dns://127.0.0.1:53", zone="cluster.local", proto="udp", peer=("127.0.0.1", 50759),
        qname=b"Nginx.Default.svc.cluster.local", qtype=1, qclass=1, qid=29008, request_size=41,
        response_size=68, rcode=0, flags=0x8580, duration=0.037990251, do=False,
    )
    base.update(kw)
    return QueryInfo(**base)
