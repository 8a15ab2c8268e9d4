"""ForwardChain: the cache in front of the forwarder, the one object the server asks about names
outside the cluster zones.

Composition only: lookup → hit (aged TTLs, maybe a background prefetch) or miss → forwarder →
store → answer; when the forwarder fails or the upstream answers SERVFAIL (any rcode but
NOERROR/NXDOMAIN) and ``serve_stale`` is on, an expired good answer (TTL 0) instead.  Kept out
of :mod:`kubedns.forward.cache` so the cache stays a pure data structure that knows nothing about
upstreams, and out of the forwarder so forwarding works without a cache.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.names import dns
from twisted.python.failure import Failure

from kubedns.forward.cache import Cache, CacheKey
from kubedns.forward.forwarder import Forwarder, Refused, UpstreamsFailed
from kubedns.forward.relay import ForwardQuery, Relayed, message_query, query_from_message, relayed_from_message
from kubedns.forward.udppool import Sink

__all__ = ["ForwardChain"]


def _message(r: Relayed) -> dns.Message:
    """A relayed answer as a Message, with ``cache_ttl`` when the cache stored it."""
    m = r.message()
    if r.cache_ttl is not None:
        m.cache_ttl = r.cache_ttl  # type: ignore[attr-defined]
    return m

_log = Logger()


class _Storing:
    """The forwarder's sink on a cache miss: store the answer (or serve stale), then hand it on."""

    __slots__ = ("chain", "key", "sink")

    def __init__(self, chain: ForwardChain, key: CacheKey, sink: Sink) -> None:
        self.chain = chain
        self.key = key
        self.sink = sink

    def callback(self, r: Relayed) -> None:
        self.sink.callback(self.chain._store(r, self.key))

    def errback(self, f: Failure) -> None:
        got = self.chain._stale_or_fail(f, self.key)
        if isinstance(got, Failure):
            self.sink.errback(got)
        else:
            self.sink.callback(got)


class ForwardChain:
    """``resolve(query)`` for everything the cluster zones do not answer."""

    def __init__(self, forwarder: Forwarder, cache: Cache | None = None, reactor: Any = None) -> None:
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self.forwarder = forwarder
        self.cache = cache
        self._reactor = reactor
        self._refreshing: set[CacheKey] = set()
        #: the forwarder's relay; one that only speaks Messages (``resolve``) is asked through it
        self._forward = getattr(forwarder, "relay", None) or self._via_message

    def _via_message(self, fq: ForwardQuery, *, tcp: bool = False) -> defer.Deferred:
        return self.forwarder.resolve(message_query(fq), tcp=tcp).addCallback(relayed_from_message)

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        self.forwarder.start()

    def stop(self) -> defer.Deferred | None:
        return self.forwarder.stop()

    def handles(self, name: bytes) -> bool:
        return self.forwarder.handles(name)

    @property
    def loop_detected(self) -> bool:
        """True when forwarding is off for the whole block (every upstream loops).

        One looping upstream among working ones is only isolated (see ``looping_upstreams`` in
        :meth:`stats`): the block still forwards.
        """
        return self.forwarder.disabled_reason is not None

    # -- queries -------------------------------------------------------------------------------
    def resolve(self, query: dns.Message, *, tcp: bool = False) -> defer.Deferred:
        """Fire with an answer Message (aged TTLs on a hit); fail with UpstreamsFailed or Refused.

        :meth:`relay` for a question built as a Message (a CNAME chase, a plugin's upstream).
        """
        if not query.queries:
            return self.forwarder.resolve(query, tcp=tcp)
        try:
            fq = query_from_message(query)
        except ValueError:
            return self.forwarder.resolve(query, tcp=tcp)  # fails with the reason
        return self.relay(fq, tcp=tcp).addCallback(_message)

    def relay(self, fq: ForwardQuery, *, tcp: bool = False) -> defer.Deferred:
        """Fire with the answer as bytes (:class:`Relayed`; aged TTLs on a hit); fail with
        UpstreamsFailed or Refused.  The server puts the client's ID and question on it."""
        d: defer.Deferred = defer.Deferred()
        self.relay_into(fq, tcp, d)
        return d

    def relay_into(self, fq: ForwardQuery, tcp: bool, sink: Sink) -> None:
        """:meth:`relay` with the outcome handed to ``sink`` (``callback(Relayed)`` or
        ``errback(Failure)``, once; at once on a cache hit) instead of a Deferred of its own."""
        cache = self.cache
        if cache is None:
            self._forward_into(fq, tcp, sink)
            return
        key = fq.cache_key
        hit = cache.lookup(key)
        if hit is not None:
            r, prefetch = hit
            if prefetch and self._refresh(key, fq, tcp):
                cache.prefetches += 1
            sink.callback(r)
            return
        if cache.config.serve_stale and cache.config.serve_stale_mode == "immediate":
            stale = cache.stale(key)
            if stale is not None:
                self._refresh(key, fq, tcp)
                sink.callback(stale)
                return
        self._forward_into(fq, tcp, _Storing(self, key, sink))

    def _forward_into(self, fq: ForwardQuery, tcp: bool, sink: Sink) -> None:
        into = getattr(self.forwarder, "relay_into", None)
        if into is not None:
            into(fq, tcp, sink)
        else:  # a forwarder with a Deferred API only
            self._forward(fq, tcp=tcp).addCallbacks(sink.callback, sink.errback)

    def _store(self, response: Relayed, key: CacheKey) -> Relayed:
        assert self.cache is not None
        if response.walk.rcode not in (dns.OK, dns.ENAME):
            # As CoreDNS's serve_stale "verify": only NOERROR/NXDOMAIN count as a fresh answer; on
            # SERVFAIL (or REFUSED...) a stale good answer wins, and the cache keeps it.
            stale = self.cache.stale(key)
            if stale is not None:
                return stale
        # answer as later hits will (TTLs capped by the cache config), as CoreDNS does, but
        # with every EDNS option the upstream sent this time (the cache keeps ECS and EDE)
        served = self.cache.save(key, response)
        return response if served is None else served

    def _stale_or_fail(self, failure: Failure, key: CacheKey) -> Any:
        assert self.cache is not None
        if failure.check(UpstreamsFailed, Refused):
            stale = self.cache.stale(key)
            if stale is not None:
                return stale
        return failure

    def _refresh(self, key: CacheKey, fq: ForwardQuery, tcp: bool) -> bool:
        """Ask the upstream again in the background (prefetch, or after serving stale).

        False if a refresh of ``key`` is already running.
        """
        if key in self._refreshing:
            return False
        self._refreshing.add(key)
        d = self._forward(fq, tcp=tcp)

        def stored(response: Relayed) -> None:
            assert self.cache is not None
            self.cache.keep(key, response)

        def failed(f: Failure) -> None:
            _log.debug("cache refresh of {name} failed: {why}", name=key[0], why=f.getErrorMessage())

        def done(_: Any) -> None:
            self._refreshing.discard(key)

        d.addCallbacks(stored, failed).addBoth(done)
        return True

    # -- metrics -------------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """Plain counters: cache hits/misses/entries…, forwarder rejects, per-upstream counts."""
        fwd = self.forwarder
        out: dict[str, Any] = {
            "forward": {
                "max_concurrent_rejects": fwd.stats.max_concurrent_rejects,
                "healthcheck_broken": fwd.stats.healthcheck_broken,
                "deduplicated": fwd.stats.deduplicated,
                "loop_detected": self.loop_detected,
                "looping_upstreams": fwd.looping_upstreams,
                "upstreams": {
                    name: {
                        "requests": s.requests,
                        "responses": dict(s.responses),
                        "failures": s.failures,
                        "healthcheck_failures": s.healthcheck_failures,
                    }
                    for name, s in fwd.upstream_stats().items()
                },
            }
        }
        if self.cache is not None:
            out["cache"] = self.cache.stats()
        return out
