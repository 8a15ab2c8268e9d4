"""The ``forward`` plugin: names the block forwards go to its :class:`~kubedns.forward.chain.
ForwardChain` (the block's cache in front of the forwarder); the rest go on down the chain.

The upstream's answer is relayed as its bytes (``Reply.relay``, :mod:`kubedns.forward.relay`) with
its rcode, sections, AD bit and EDNS options, its records decoded only if a plugin asks; a failure
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
from kubedns.forward.cache import relayed_ttl
from kubedns.forward.chain import ForwardChain
from kubedns.forward.forwarder import Refused
from kubedns.forward.relay import LazyAnswer, Relayed, query_from_request, relayed_from_message
from kubedns.plugins.base import Next, Reply, Result

__all__ = ["ForwardPlugin"]


class _Answer:
    """The forward chain's sink for one query: the Reply now, or the query's one Deferred fired
    with it (no Deferred per layer: the forwarder, the cache and this plugin hand it on by plain
    calls).  A bug making the Reply fails the Deferred: the server answers SERVFAIL and logs it."""

    __slots__ = ("plugin", "d", "reply")

    def __init__(self, plugin: ForwardPlugin) -> None:
        self.plugin = plugin
        self.d: defer.Deferred | None = None
        self.reply: Reply | None = None

    def callback(self, r: Relayed) -> None:
        self._give(self.plugin._relay, r)

    def errback(self, f: Failure) -> None:
        self._give(self.plugin._failed, f)

    def _give(self, fn: Any, arg: Any) -> None:
        d = self.d
        if d is None:
            self.reply = fn(arg)
            return
        try:
            reply = fn(arg)
        except Exception:
            d.errback(Failure())
            return
        d.callback(reply)


class ForwardPlugin:
    """See the module docstring."""

    name = "forward"

    def __init__(self, chain: ForwardChain):
        self.chain = chain

    def serve(self, req: Request, next: Next) -> Result:  # noqa: A002
        chain = self.chain
        if not chain.handles(req.q.qname):
            return next(req)
        sink = _Answer(self)
        chain.relay_into(query_from_request(req), req.proto == "tcp", sink)
        reply = sink.reply
        if reply is not None:  # answered at once (a cache hit, a refusal)
            return reply
        d = sink.d = defer.Deferred()
        return d

    def _relay(self, r: Relayed) -> Reply:
        """The upstream's answer as bytes, relayed (kubedns.forward.relay): its records are decoded
        only if a plugin asks for them."""
        return Reply(LazyAnswer(r), "", self.name, True, r.ad, False, self.lifetime_of(r), "", r.options, relay=r)

    def _failed(self, failure: Failure) -> Reply:
        rcode = dns.EREFUSED if failure.check(Refused) else dns.ESERVER
        # e.g. "no upstream answered (127.0.0.1:53: timeout after 2s; ...)": which upstream, and why
        return Reply(Answer(rcode=rcode, authoritative=False), "", self.name, ra=True,
                     error=f"forward: {failure.getErrorMessage()}")

    def lifetime_of(self, r: Relayed) -> float:
        """How long a relayed answer may be served from the fast path: as long as the block's
        cache would keep it (see the module docstring)."""
        cache = self.chain.cache
        if cache is None:
            return 0.0
        cfg = cache.config
        if cfg.prefetch_amount or cfg.keepttl or r.walk.rcode not in (dns.OK, dns.ENAME):
            return 0.0  # keepttl: the fast path ages TTLs, the cache serves them as stored
        if r.cache_ttl is not None:  # just stored or a hit: no second scan
            return float(r.cache_ttl)
        got = relayed_ttl(r, cfg)
        return float(got[1]) if got is not None else 0.0

    def lifetime(self, upstream: dns.Message) -> float:
        """:meth:`lifetime_of` of an answer as a Message."""
        return self.lifetime_of(relayed_from_message(upstream)) if self.chain.cache is not None else 0.0
