"""The ``forward`` plugin: names the block forwards go to its :class:`~kubedns.forward.chain.
ForwardChain` (the block's cache in front of the forwarder); the rest go on down the chain.

The upstream's answer is relayed with its rcode, sections, AD bit and EDNS options; a failure
is SERVFAIL with the reason (which upstream, and why) for the ``errors`` log, or REFUSED when
the forwarder is at its in-flight bound.  A relayed answer may be served from the fast path for
as long as the block's cache would keep it (``Reply.lifetime``): not at all without a cache,
with ``prefetch`` (whose popularity counts must see every hit) or ``keepttl`` (the fast path
counts TTLs down), or for anything but NOERROR and NXDOMAIN; an answer the cache does not keep
(``disable``, outside its ``zones``) not at all either.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.names import dns
from twisted.python.failure import Failure

from kubedns.dns.query import Request
from kubedns.dns.records import Answer
from kubedns.dns.wire import query_edns_options
from kubedns.forward.chain import ForwardChain
from kubedns.forward.forwarder import Refused
from kubedns.plugins.base import Next, Reply, Result

__all__ = ["ForwardPlugin", "forward_query"]


class ForwardPlugin:
    """See the module docstring."""

    name = "forward"

    def __init__(self, chain: ForwardChain):
        self.chain = chain

    def serve(self, req: Request, next: Next) -> Result:  # noqa: A002
        if not self.chain.handles(req.q.qname):
            return next(req)
        d: defer.Deferred = self.chain.resolve(forward_query(req), tcp=req.proto == "tcp")
        return d.addCallbacks(self._relay, self._failed)

    def _relay(self, upstream: dns.Message) -> Reply:
        ans = Answer(
            rcode=upstream.rCode,
            answers=list(upstream.answers),
            authority=list(upstream.authority),
            additional=[rr for rr in upstream.additional if rr.type != dns.OPT],
            authoritative=bool(upstream.auth),
        )
        # the upstream's EDNS options (kubedns.forward.message decoded them into an OPT record)
        opt: Any = next((rr.payload for rr in upstream.additional if rr.type == dns.OPT), None)
        options = opt.data if opt is not None else b""
        return Reply(ans, "", self.name, ra=True, ad=bool(upstream.authenticData),
                     lifetime=self.lifetime(upstream), edns_options=options)

    def _failed(self, failure: Failure) -> Reply:
        rcode = dns.EREFUSED if failure.check(Refused) else dns.ESERVER
        # e.g. "no upstream answered (127.0.0.1:53: timeout after 2s; ...)": which upstream, and why
        return Reply(Answer(rcode=rcode, authoritative=False), "", self.name, ra=True,
                     error=f"forward: {failure.getErrorMessage()}")

    def lifetime(self, upstream: dns.Message) -> float:
        """How long a relayed answer may be served from the fast path: as long as the block's
        cache would keep it (see the module docstring)."""
        cache = self.chain.cache
        cfg = cache.config if cache is not None else None
        if cfg is None or cfg.prefetch_amount or cfg.keepttl or upstream.rCode not in (dns.OK, dns.ENAME):
            return 0.0  # keepttl: the fast path ages TTLs, the cache serves them as stored
        stored = getattr(upstream, "cache_ttl", None)  # just stored (Cache.store): no second scan
        if stored is not None:
            return float(stored)
        from kubedns.forward.cache import response_ttl

        got = response_ttl(upstream, cfg)
        return float(got[1]) if got is not None else 0.0


def forward_query(req: Request) -> dns.Message:
    """What the forward chain needs of a query (question, RD, CD, AD, DO, EDNS options), built from
    what was already parsed: the client's own records (a TSIG, a NOTIFY's SOA...) are never
    forwarded.  The OPT's options travel as raw rdata, as twisted.names decodes an OPT."""
    q = req.q
    flags = q.flags
    msg = dns.Message(id=q.id, recDes=bool(flags & 0x0100), checkingDisabled=bool(flags & 0x0010),
                      authenticData=bool(flags & 0x0020))
    msg.queries = [dns.Query(q.qname, q.qtype, q.qclass)]
    if req.edns is not None:
        payload: Any = dns.UnknownRecord(query_edns_options(req.packet, q))
        msg.additional = [dns.RRHeader(b"", dns.OPT, cls=req.edns.udp_size, ttl=0x8000 if req.edns.do else 0,
                                       payload=payload)]
    return msg
