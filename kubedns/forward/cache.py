"""A bounded answer cache for forwarded names, with TTLs that count down on the reactor's clock.

Why not ``twisted.names.cache.CacheResolver``: it is unbounded, schedules one DelayedCall per
entry and never caches negative answers.  This cache is a plain dict with LRU order: an entry
stores the upstream's answer as bytes (:class:`~kubedns.forward.relay.Relayed`: the walk over them
gives its TTL offsets, rcode and negative TTL, nothing is decoded) plus the time it was stored,
and every hit copies the bytes with every TTL set to the entry's TTL minus its age
(``reactor.seconds()``), so nothing is ever scheduled per entry and expiry is checked lazily on
lookup.  The Message methods (``get``, ``put``, ``store``...) encode and decode around the same
entries, for callers that want records.

Eviction is LRU (``OrderedDict.move_to_end`` / ``popitem``) rather than CoreDNS's random eviction
per shard: both are O(1) here, and LRU keeps the names that are actually being asked for, which
is what makes a small cache useful in front of a slow upstream.  Expired entries are not swept;
they leave on their next lookup or when LRU pushes them out, so the bounds hold regardless.

Positive answers and denials (with SERVFAILs) are kept in two LRU orders, as CoreDNS keeps a
success and a denial cache.  CoreDNS's ``success CAPACITY`` and ``denial CAPACITY`` bound each
kind on its own (``success_size``/``denial_size``: a full kind evicts its own least recently used
entry, so a flood of NXDOMAINs never pushes the positive answers out); ``size`` (all entries,
by default the sum of the two) and ``max_bytes`` bound both together, evicting the least
recently used entry of either kind.  Without per-kind capacities only ``size`` and
``max_bytes`` apply, as before.

Two shared bounds, both enforced on every insert: ``size`` entries and ``max_bytes`` bytes.  An entry
is charged what it costs in memory: the answer's size on the wire plus a fixed cost per entry
and per record for its objects (measured with tracemalloc; see the constants),
so a cache of large answers (long TXT, big SRV sets) is bounded by what it holds, not by its
entry count.  An answer larger than the whole budget is not cached.

The key is everything in the query that changes the answer: the name (lower-cased), type,
class, the DO, CD and AD bits, and the client subnet (ECS) option as sent (family, source
prefix, address), so a client never gets an answer the upstream tailored to another subnet.
The entry keeps the upstream's ECS and Extended DNS Error options with the answer; per-request
options (NSID, padding...) are relayed on the live answer only.

What is cached (as CoreDNS): NOERROR answers (TTL = smallest RR TTL, capped at ``ttl``, floored at
``min_ttl``); NXDOMAIN and NODATA only when the authority section carries an SOA (RFC 2308: TTL =
min(SOA TTL, SOA MINIMUM), capped at ``denial_ttl``); SERVFAIL from an upstream for
``servfail_ttl`` (5 s).  Truncated answers and other rcodes are not cached.  Denials have their
own floor (``denial_min_ttl``, CoreDNS's ``denial CAPACITY TTL MINTTL``).  Nothing is cached for
a name outside the cache's ``zones`` (``cache [TTL] ZONES``), nor a positive answer (or a
denial or SERVFAIL) for a name in ``disable success`` (``disable denial``) zones.  With
``keepttl`` a hit carries the TTL the entry was stored with instead of what is left of it; the
entry still expires on time.

A SERVFAIL never replaces a good (positive or negative) entry that is still fresh or, with
``serve_stale``, still inside the stale window: the good answer is what serve_stale exists to
keep.  SERVFAIL entries themselves are never served stale.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from twisted.names import dns

from kubedns.forward.config import CacheConfig
from kubedns.forward.message import ECS, client_edns, option_data
from kubedns.forward.relay import Relayed, relayed_from_message

__all__ = ["Cache", "CacheKey", "cache_key", "entry_cost", "relayed_cost", "relayed_ttl", "response_ttl"]

#: (qname lower-cased, qtype, qclass, DO, CD, AD, ECS option data or b"")
CacheKey = tuple[bytes, int, int, bool, bool, bool, bytes]

EDE = 15  # Extended DNS Errors (RFC 8914): describes the answer, so it is kept with it
_KEPT_OPTIONS = (ECS, EDE)
#: Memory an entry costs beyond the answer's bytes (as the upstream sent them): the entry, its
#: Relayed and walk, its key and the LRU slot (ENTRY_COST), and each record's offsets in the walk
#: (RECORD_COST).  Measured with tracemalloc on upstream answers kept as bytes (1 and 4 A
#: records, 10 SRV: 0.93, 0.98 and 1.68 KB an entry, charged within 13%; the decoded records an
#: entry used to keep cost 1.1, 2.6 and 6.7 KB); tests/test_cache_bytes.py checks a cache full
#: of large answers stays near its budget.
ENTRY_COST = 830
RECORD_COST = 40

SUCCESS, DENIAL, SERVFAIL = "success", "denial", "servfail"


def cache_key(query: dns.Message) -> CacheKey | None:
    """(qname lower-cased, qtype, qclass, DO, CD, AD, ECS) of the query, or None without a question."""
    if not query.queries:
        return None
    q = query.queries[0]
    _rd, cd, do, ad, options = client_edns(query)
    ecs = (option_data(options, ECS) or b"") if options else b""
    return (q.name.name.lower(), q.type, q.cls, do, cd, ad, ecs)


def entry_cost(response: dns.Message) -> int:
    """Bytes an entry for ``response`` is charged (:func:`relayed_cost` of its bytes)."""
    return relayed_cost(relayed_from_message(response))


def response_ttl(response: dns.Message, config: CacheConfig) -> tuple[str, int] | None:
    """(kind, seconds) to cache ``response`` for, or None if it must not be cached."""
    if response.trunc:
        return None
    rcode = response.rCode
    if rcode not in (dns.OK, dns.ENAME, dns.ESERVER):
        return None
    if (config.zones or config.disable_success or config.disable_denial) and _excluded(response, config):
        return None
    if rcode == dns.ESERVER:
        secs = int(config.servfail_ttl)
        return (SERVFAIL, secs) if secs > 0 else None
    if rcode == dns.OK and response.answers:
        low = -1  # the smallest TTL but the OPT's (a plain loop: no generator per section)
        opt = dns.OPT
        for sec in (response.answers, response.authority, response.additional):
            for rr in sec:
                if rr.type != opt:
                    t = rr.ttl
                    if low < 0 or t < low:
                        low = t
        if low < 0:  # only OPT records
            low = 0
        ttl = min(config.ttl, max(config.min_ttl, low))
        return (SUCCESS, ttl) if ttl > 0 else None
    # NXDOMAIN or NODATA: cacheable only with an SOA to take the negative TTL from (RFC 2308 §5).
    for rr in response.authority:
        if rr.type == dns.SOA:
            neg = min(rr.ttl, getattr(rr.payload, "minimum", rr.ttl))
            floor = config.min_ttl if config.denial_min_ttl is None else config.denial_min_ttl
            ttl = min(config.denial_ttl, max(floor, neg))
            return (DENIAL, ttl) if ttl > 0 else None
    return None


def _in_zones(name: str, zones: tuple[str, ...]) -> bool:
    return any(not z or name == z or name.endswith("." + z) for z in zones)


def _excluded(response: dns.Message, config: CacheConfig) -> bool:
    """Not cached for its name: outside the cache's ``zones`` (``cache [TTL] ZONES``), or in a
    ``disable success|denial ZONES`` of its kind (a SERVFAIL is a denial here, as in CoreDNS's
    denial cache).  A message without a question is judged by its kind only."""
    if not response.queries:
        return False
    name = response.queries[0].name.name.decode("ascii", "replace").lower().rstrip(".")
    if config.zones and not _in_zones(name, config.zones):
        return True
    positive = response.rCode == dns.OK and bool(response.answers)
    return _in_zones(name, config.disable_success if positive else config.disable_denial)


def relayed_ttl(r: Relayed, config: CacheConfig) -> tuple[str, int] | None:
    """:func:`response_ttl` of an answer as bytes, from its walk (no record decoded)."""
    if r.truncated:
        return None
    walk = r.walk
    rcode = walk.rcode
    if rcode not in (dns.OK, dns.ENAME, dns.ESERVER):
        return None
    if config.zones or config.disable_success or config.disable_denial:
        name = _wire_name(r.wire, walk.qend).lower()
        if config.zones and not _in_zones(name, config.zones):
            return None
        positive = rcode == dns.OK and walk.an > 0
        if _in_zones(name, config.disable_success if positive else config.disable_denial):
            return None
    if rcode == dns.ESERVER:
        secs = int(config.servfail_ttl)
        return (SERVFAIL, secs) if secs > 0 else None
    if rcode == dns.OK and walk.an:
        low = max(walk.low, 0)
        ttl = min(config.ttl, max(config.min_ttl, low))
        return (SUCCESS, ttl) if ttl > 0 else None
    neg = walk.negative
    if neg < 0:
        return None
    floor = config.min_ttl if config.denial_min_ttl is None else config.denial_min_ttl
    ttl = min(config.denial_ttl, max(floor, neg))
    return (DENIAL, ttl) if ttl > 0 else None


def _wire_name(wire: bytes, qend: int) -> str:
    """The question's name as lower-case-able text without the trailing dot (uncompressed at 12)."""
    labels = []
    pos = 12
    end = qend - 4
    while pos < end and wire[pos]:
        n = wire[pos]
        labels.append(wire[pos + 1 : pos + 1 + n])
        pos += 1 + n
    return b".".join(labels).decode("ascii", "replace")


def relayed_cost(r: Relayed) -> int:
    """Bytes an entry for ``r`` is charged: its bytes (kept whole, OPT included) plus object
    overheads (see above)."""
    return ENTRY_COST + RECORD_COST * len(r.walk.ends) + len(r.wire)


def _kept(options: bytes) -> bytes:
    """The options worth keeping with the answer (ECS scope, EDE), as OPT rdata."""
    if not options:
        return b""
    out = []
    for code in _KEPT_OPTIONS:
        data = option_data(options, code)
        if data is not None:
            out.append(code.to_bytes(2, "big") + len(data).to_bytes(2, "big") + data)
    return b"".join(out)


def _hit(data: Relayed, ttl: int) -> Relayed:
    """An entry's answer with every TTL set to ``ttl``: its bytes without the OPT (the counts
    fixed; the walk's offsets hold, only the OPT, last, is cut) and the options it keeps."""
    walk = data.walk
    buf = bytearray(data.wire[: walk.end])
    if walk.opt is not None:
        buf[10:12] = walk.ar.to_bytes(2, "big")
    raw = ttl.to_bytes(4, "big")
    for off in walk.ttls:
        buf[off : off + 4] = raw
    return Relayed(bytes(buf), walk, data.options)


@dataclass(slots=True)
class _Entry:
    kind: str
    stored: float
    ttl: int
    #: the answer as first served (its TTLs the entry's, the upstream's OPT still last: a hit
    #: leaves it out, :func:`_hit`) with the options kept for hits
    data: Relayed
    cost: int = 0  # bytes charged against max_bytes
    hits: int = 0
    last_hit: float = 0.0
    used: int = 0  # the cache's tick at the last store or hit: LRU order across both kinds

    @property
    def expires(self) -> float:
        return self.stored + self.ttl


class Cache:
    """Bounded positive/negative answer cache; see the module docstring.

    Positive entries and denials (with SERVFAILs) are kept in two LRU orders, as CoreDNS keeps a
    success and a denial cache: each kind may have a capacity of its own (``success_size``,
    ``denial_size``), evicting its own least recently used entry, while ``size`` (all entries)
    and ``max_bytes`` evict the least recently used entry of either kind.

    The entries are bytes (:class:`~kubedns.forward.relay.Relayed`): :meth:`lookup`,
    :meth:`stale`, :meth:`keep` and :meth:`save` are the forward chain's; :meth:`get`,
    :meth:`get_stale`, :meth:`put`, :meth:`store` and :meth:`peek` take and give Messages.
    """

    def __init__(self, config: CacheConfig, reactor: Any = None) -> None:
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self.config = config
        self._reactor = reactor
        self._pos: OrderedDict[CacheKey, _Entry] = OrderedDict()  # SUCCESS entries
        self._neg: OrderedDict[CacheKey, _Entry] = OrderedDict()  # DENIAL and SERVFAIL entries
        self._tick = 0
        self.bytes = 0  # sum of the entries' cost, bounded by config.max_bytes
        # Counters for the metrics endpoint (plain ints, CoreDNS's cache metric names in spirit).
        self.hits = 0
        self.misses = 0
        self.stale_served = 0
        self.prefetches = 0  # prefetches started (the chain bumps it)
        self.evictions = 0
        self.inserts = 0

    def _find(self, key: CacheKey) -> tuple[OrderedDict[CacheKey, _Entry], _Entry | None]:
        e = self._pos.get(key)
        if e is not None:
            return self._pos, e
        return self._neg, self._neg.get(key)

    # -- reading -------------------------------------------------------------------------------
    def lookup(self, key: CacheKey) -> tuple[Relayed, bool] | None:
        """A fresh entry as (answer with aged TTLs, prefetch now?), or None (counted as a miss)."""
        order = self._pos
        e = order.get(key)
        if e is None:
            order = self._neg
            e = order.get(key)
            if e is None:
                self.misses += 1
                return None
        now = self._reactor.seconds()
        age = now - e.stored
        if age >= e.ttl or age < -1.0:  # expired (or the clock jumped back: don't trust the entry)
            if not self._stale_usable(e, age):
                self._pop(key)
            self.misses += 1
            return None
        order.move_to_end(key)
        self._tick += 1
        e.used = self._tick
        self.hits += 1
        remaining = e.ttl - int(max(age, 0.0))
        return _hit(e.data, self._served_ttl(e, remaining)), self._should_prefetch(e, now, remaining)

    def get(self, key: CacheKey) -> tuple[dns.Message, bool] | None:
        """:meth:`lookup` as a Message."""
        hit = self.lookup(key)
        return None if hit is None else (hit[0].message(), hit[1])

    def _served_ttl(self, e: _Entry, remaining: int) -> int:
        """The TTL a hit carries: what is left, or with ``keepttl`` the TTL as stored."""
        return e.ttl if self.config.keepttl else remaining

    def stale(self, key: CacheKey) -> Relayed | None:
        """A good entry still inside the ``serve_stale`` window, with TTL 0 (CoreDNS's stale TTL);
        else None.  A cached SERVFAIL is never served stale."""
        if not self.config.serve_stale:
            return None
        _, e = self._find(key)
        if e is None:
            return None
        age = self._reactor.seconds() - e.stored
        if not self._stale_usable(e, age):
            if age >= e.ttl or age < -1.0:
                self._pop(key)
            return None
        self.stale_served += 1
        return _hit(e.data, 0)

    def get_stale(self, key: CacheKey) -> dns.Message | None:
        """:meth:`stale` as a Message."""
        r = self.stale(key)
        return None if r is None else r.message()

    def _stale_usable(self, e: _Entry, age: float) -> bool:
        """May ``e`` (``age`` seconds old) be served stale?  Only a good answer, in the window."""
        window = self.config.serve_stale
        return bool(window) and e.kind != SERVFAIL and -1.0 <= age < e.ttl + window

    def _should_prefetch(self, e: _Entry, now: float, remaining: int) -> bool:
        cfg = self.config
        if not cfg.prefetch_amount or e.kind != SUCCESS:
            return False
        if e.hits and now - e.last_hit >= cfg.prefetch_duration:
            e.hits = 0  # a gap this long means the name is not popular any more
        e.hits += 1
        e.last_hit = now
        threshold = max(1, math.ceil(cfg.prefetch_percentage / 100 * e.ttl))
        return e.hits >= cfg.prefetch_amount and remaining <= threshold

    # -- writing -------------------------------------------------------------------------------
    def keep(self, key: CacheKey, r: Relayed) -> bool:
        """Store ``r`` if cacheable (see :func:`relayed_ttl`); True if stored."""
        return self._put(key, r) is not None

    def put(self, key: CacheKey, response: dns.Message) -> bool:
        """:meth:`keep` for a Message."""
        return self._put(key, relayed_from_message(response)) is not None

    def save(self, key: CacheKey, r: Relayed) -> Relayed | None:
        """:meth:`keep`, then ``r`` with the TTLs a hit would carry now (and every EDNS option the
        upstream sent this time), or None if not stored: one call on a miss.  Its ``cache_ttl`` is
        the TTL it is cached for."""
        return self._put(key, r)

    def store(self, key: CacheKey, response: dns.Message) -> dns.Message | None:
        """:meth:`save` for a Message: a new Message with the TTLs a hit would carry now, its
        ``cache_ttl`` set, or None if not stored."""
        r = self.save(key, relayed_from_message(response))
        if r is None:
            return None
        m = r.message()
        m.cache_ttl = r.cache_ttl  # type: ignore[attr-defined]
        return m

    def _put(self, key: CacheKey, r: Relayed) -> Relayed | None:
        """Store ``r`` if cacheable; ``r`` with the entry's TTL in every record (what the miss
        answers), or None."""
        decision = relayed_ttl(r, self.config)
        if decision is None:
            return None
        kind, ttl = decision
        cost = relayed_cost(r)
        cfg = self.config
        limit = cfg.max_bytes
        if cost > limit:
            return None
        if kind == SERVFAIL:
            _, old = self._find(key)
            if old is not None and old.kind != SERVFAIL:
                age = self._reactor.seconds() - old.stored
                if -1.0 <= age < old.ttl or self._stale_usable(old, age):
                    return None  # keep the good answer (fresh, or for serving stale)
        self._tick += 1
        served = r.with_ttl(ttl, ttl)  # the one copy: served now, and what later hits are made of
        entry = _Entry(kind, self._reactor.seconds(), ttl, Relayed(served.wire, r.walk, _kept(r.options)), cost,
                       used=self._tick)
        old = self._pop(key)
        if old is not None:  # a refresh keeps the popularity it earned
            entry.hits, entry.last_hit = old.hits, old.last_hit
        order, own = (self._pos, cfg.success_size) if kind == SUCCESS else (self._neg, cfg.denial_size)
        order[key] = entry
        self.bytes += cost
        self.inserts += 1
        if own:
            while len(order) > own:
                self._evict(order)
        size = cfg.size
        pos, neg = self._pos, self._neg
        while len(pos) + len(neg) > size or self.bytes > limit:
            if not neg or (pos and next(iter(pos.values())).used < next(iter(neg.values())).used):
                self._evict(pos)
            else:
                self._evict(neg)
        return served

    def _evict(self, order: OrderedDict[CacheKey, _Entry]) -> None:
        _, gone = order.popitem(last=False)
        self.bytes -= gone.cost
        self.evictions += 1

    def _pop(self, key: CacheKey) -> _Entry | None:
        e = self._pos.pop(key, None)
        if e is None:
            e = self._neg.pop(key, None)
        if e is not None:
            self.bytes -= e.cost
        return e

    def peek(self, key: CacheKey) -> dns.Message | None:
        """The entry as a hit would return it now, without counting a hit (None if absent/expired)."""
        _, e = self._find(key)
        if e is None:
            return None
        age = self._reactor.seconds() - e.stored
        if age >= e.ttl or age < -1.0:
            return None
        return _hit(e.data, self._served_ttl(e, e.ttl - int(max(age, 0.0)))).message()  # as get() would

    def clear(self) -> None:
        self._pos.clear()
        self._neg.clear()
        self.bytes = 0

    # -- metrics -------------------------------------------------------------------------------
    @property
    def entries(self) -> int:
        return len(self._pos) + len(self._neg)

    def __len__(self) -> int:
        return len(self._pos) + len(self._neg)

    def entries_by_kind(self) -> dict[str, int]:
        out = {SUCCESS: len(self._pos), DENIAL: 0, SERVFAIL: 0}
        for e in self._neg.values():
            out[e.kind] += 1
        return out

    def stats(self) -> dict[str, int]:
        return {
            "hits": self.hits,
            "misses": self.misses,
            "entries": len(self),
            "bytes": self.bytes,
            "stale_served": self.stale_served,
            "prefetches": self.prefetches,
            "evictions": self.evictions,
            "inserts": self.inserts,
        }
