"""The ``any`` plugin: ANY queries get RFC 8482's short HINFO answer, as CoreDNS's *any*.

Without it kubedns answers ANY with the name's records (RFC 8482 allows a subset); with it an
ANY query for any name of the block is answered at once, before every plugin after ``any`` in
CoreDNS's order (``acl``, ``cache``, ``hosts``, ``kubernetes``, ``forward``...): one HINFO
record ``"ANY obsoleted" "See RFC 8482"`` owned by the query name as asked, class IN, TTL 8482,
NOERROR, not authoritative.  It never changes, so the fast path may keep it.
"""

from __future__ import annotations

from twisted.names import dns

from kubedns.dns.query import Request
from kubedns.dns.records import Answer
from kubedns.plugins.base import Next, Reply, Result

__all__ = ["AnyPlugin", "HINFO_TTL"]

HINFO_TTL = 8482
_CPU, _OS = b"ANY obsoleted", b"See RFC 8482"


class AnyPlugin:
    """See the module docstring."""

    name = "any"

    def serve(self, req: Request, next: Next) -> Result:  # noqa: A002 (CoreDNS's word)
        q = req.q
        if q.qtype != dns.ALL_RECORDS:
            return next(req)
        rr = dns.RRHeader(q.qname, dns.HINFO, dns.IN, HINFO_TTL, dns.Record_HINFO(_CPU, _OS, HINFO_TTL))
        # constant: kept on the fast path until it is cleared, whatever a store does (deps=())
        return Reply(Answer(answers=[rr], authoritative=False), "", self.name, cacheable=True, deps=())
