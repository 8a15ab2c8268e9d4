"""Pre-encoded answers: what lets a Python server answer at the speed of a C one.

:class:`FastCache` keeps, per listen address, the exact bytes of UDP answers keyed by the
query's bytes after the ID, so a repeat is a dict lookup, an ID patch and one ``sendto``
(:class:`kubedns.serve.protocols.DNSDatagramProtocol` does the lookup before anything is decoded).
Cluster answers are tagged with what they depend on (:mod:`kubedns.dns.depends`) and a store change
drops only those it can alter (:meth:`FastCache.store_changed`: the cost is the names touched,
not the entries kept); their SOA serial is rewritten in place when it moves (:class:`SerialPatch`).
Forwarded answers age in place (:class:`Aging`) and leave when their cache lifetime ends (a
cluster change drops one only if it fell through from a cluster name that changed); answers that
``loadbalance`` reorders keep several orders, served in turn (:class:`Rotation`).  It also keeps the
cluster answers the normal path computed (once per lower-cased name), under the same
invalidation.

Clients choose what goes in (names, their case, EDNS sizes, types), so both halves are bounded
in bytes, counted with what Python really spends per entry (measured by ``bench/memory.py``),
not only in entries: these budgets are part of the memory table in the README.
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from dataclasses import dataclass
from itertools import islice
from typing import TYPE_CHECKING, Any

from kubedns.dns.depends import ANY, SerialPatch, soa_serial_offsets
from kubedns.ops.counters import FoldedHits, known_type

if TYPE_CHECKING:
    from kubedns.dns.query import QueryInfo
    from kubedns.forward.cache import Cache

__all__ = ["Aging", "FastCache", "Rotation", "SerialPatch", "fast_key"]

#: the tags of an answer whose dependencies nobody gave: any store change drops it
_ANY_TAGS = (ANY,)


@dataclass(slots=True)
class Aging:
    """TTL bookkeeping of a pre-encoded forwarded answer."""

    body: bytes  # the answer after the ID, TTLs as first sent
    ttls: list[tuple[int, int]]  # (offset in the full message, TTL as first sent)
    stored: float  # reactor time it was stored
    expires: float  # reactor time it stops being served from here
    age: int = 0  # whole seconds the current bytes are aged by
    cache: Cache | None = None  # the block's: a fast-path hit is one of its hits (coredns_cache_hits_total)


@dataclass(slots=True)
class Rotation:
    """Several orders of one answer (``loadbalance``), served in turn, one per hit."""

    bodies: list[bytes]  # the answers after the ID; ``bodies[0]`` is also the entry's own
    extra: int  # bytes of ``bodies[1:]``, counted in FastCache.bytes
    agings: list[Aging] | None = None  # forwarded: each order's TTL bookkeeping
    turn: int = 0


class FastCache:
    """Pre-encoded UDP answers keyed by the query's bytes after the ID (and, for the normal path,
    the cluster answers computed from the store), each dropped when the data it depends on changes.

    The key is everything after the 2-byte ID: flags (RD, CD...), counts, the question with the
    client's exact name case, and the OPT record (payload size, DO bit, options).  Equal keys
    mean equal answers, so a hit is one dict lookup plus an ID patch, and case echo and EDNS
    handling come for free; a query with anything unusual (a cookie, another opcode...) simply
    has a key of its own or never gets stored.  Only answers computed synchronously from the
    store are stored, tagged with their dependency keys (:mod:`kubedns.dns.depends`; an index from key
    to entries makes a change cost the names it touched): an entry never outlives the data it was
    built from.  An entry is ``[body, hits, QueryInfo, extra, tags, hits6]``: ``extra`` None for the
    plainest hit, else an :class:`Aging`, :class:`Rotation` or :class:`SerialPatch`; ``tags`` None
    for a forwarded answer no cluster change can alter.  ``hits`` counts the hits of the
    listener's own socket (whose family the server label tells), ``hits6`` those of the IPv6
    socket of an every-address listener (:class:`~kubedns.serve.protocols.DNSDatagramProtocol6`),
    so each port counts at a fixed slot and the hit path does no more work.  Hit counts stay in
    the entries and are folded into :attr:`retired` / :attr:`retired6` when entries are dropped,
    so metrics lose nothing.
    """

    #: Bounds on what clients can make us keep: entries, and bytes.  Case variants and EDNS sizes
    #: of one name each get an entry, so the byte budget matters more than the count.  An entry
    #: costs its answer and key bytes plus :attr:`entry_overhead` (dict slot, key and answer
    #: objects, the entry list, its QueryInfo, its dependency keys and their index slot), all
    #: counted in :attr:`bytes`.
    max_entries = 50000
    max_bytes = 8 << 20
    entry_overhead = 850
    #: Forwarded answers larger than this are left to the block's cache (decoded, size-bounded).
    max_forwarded_answer = 4096
    #: Computed cluster answers kept for the normal path (TCP, odd EDNS...), also per generation,
    #: one per lower-cased name and type; bounded in entries and in (estimated) bytes, oldest
    #: first out.  See :func:`computed_cost`.
    max_computed = 20000
    max_computed_bytes = 8 << 20

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.entries: dict[bytes, list[Any]] = {}
        #: keys of forwarded (aging) entries, oldest first; bounded by the block cache's ``size``
        self.forwarded: OrderedDict[bytes, None] = OrderedDict()
        self.bytes = 0
        #: ``(ClusterZones, lower-cased qname, qtype) → (zone, Answer) | None``: what the store
        #: answered, kept for the normal path until the store changes; filled even when the fast
        #: path is off.  Records owned by the name are owned by its lower-cased spelling (the
        #: server puts the query's case back when encoding).
        self.computed: OrderedDict[tuple[Any, bytes, int], Any] = OrderedDict()
        self.computed_bytes = 0
        #: dependency key → the key of the entry / computed answer tagged with it, or a set of
        #: them when there are several (most keys tag one name: no set for those)
        self.tags: dict[Any, Any] = {}
        self.computed_tags: dict[Any, Any] = {}
        #: computed answer key → its dependency keys
        self.computed_deps: dict[tuple[Any, bytes, int], tuple[Any, ...]] = {}
        #: hits of dropped entries, by the QueryInfo fields metrics label on (bounded)
        self.retired = FoldedHits()
        #: the same for hits that came in on the IPv6 socket of an every-address listener
        self.retired6 = FoldedHits()

    def keep_computed(self, key: tuple[Any, bytes, int], res: Any, deps: tuple[Any, ...] | None = None) -> None:
        """Keep a computed cluster answer, the oldest ones leaving first past either bound;
        ``deps`` are its dependency keys (None: unknown, dropped by any store change)."""
        cost = computed_cost(key, res)
        if cost > self.max_computed_bytes:
            return
        memo = self.computed
        if key in memo:
            self._drop_computed(key)
        while memo and (len(memo) >= self.max_computed or self.computed_bytes + cost > self.max_computed_bytes):
            self._drop_computed(next(iter(memo)))
        memo[key] = res
        self.computed_bytes += cost
        tags = _ANY_TAGS if deps is None else deps
        self.computed_deps[key] = tags
        index = self.computed_tags
        for t in tags:
            _tag(index, t, key)

    def _drop_computed(self, key: tuple[Any, bytes, int]) -> None:
        res = self.computed.pop(key, _MISSING)
        if res is _MISSING:
            return
        self.computed_bytes -= computed_cost(key, res)
        index = self.computed_tags
        for t in self.computed_deps.pop(key, ()):
            _untag(index, t, key)

    def store_changed(self, store: Any) -> None:
        """``store`` changed: drop what its change (:attr:`Store.last_change`) can alter, and
        the answers of unknown dependencies; every cluster answer when it cannot say."""
        touched = store.last_change
        if touched is None:
            self.drop_cluster()
            return
        self.invalidate([ANY, *[(store, *k) for k in touched]])

    def invalidate(self, keys: Any) -> None:
        """Drop the entries and computed answers tagged with any of ``keys``."""
        tags, ctags = self.tags, self.computed_tags
        for k in keys:
            held = tags.pop(k, None)
            if held is not None:
                for key in held if type(held) is set else (held,):
                    self._drop(key)
            cheld = ctags.pop(k, None)
            if cheld is not None:
                for ckey in cheld if type(cheld) is set else (cheld,):
                    self._drop_computed(ckey)

    def drop_cluster(self) -> None:
        """Drop every answer a cluster change may alter (forwarded answers of outside names stay)."""
        self.computed.clear()
        self.computed_bytes = 0
        self.computed_tags.clear()
        self.computed_deps.clear()
        for key in [k for k, e in self.entries.items() if e[4] is not None]:
            self._drop(key)

    def remember(self, packet: bytes, answer: bytes, info: QueryInfo, aging: Aging | None = None,
                 limit: int = 0, orders: list[bytes] | None = None, agings: list[Aging] | None = None,
                 deps: tuple[Any, ...] | None = None, serial_of: Any = None) -> None:
        """Store an answer; ``aging`` makes its TTLs count down and the entry expire (forwarded).

        ``deps`` are the dependency keys of the answer (:mod:`kubedns.dns.depends`): a computed one
        without them is dropped by any store change; a forwarded one without them by none.
        ``serial_of``: the store whose SOA serial the answer's SOA records carry (rewritten in
        place when it moves); a computed answer with an SOA and no such store counts as
        depending on everything.

        ``limit`` caps the forwarded entries, like the block cache's ``size`` caps its own: the
        fast path must not keep more forwarded names than the operator allowed the cache to.
        ``orders`` (``answer`` first) are served in turn, one per hit; forwarded ones with
        ``agings``, one per order (``aging`` is the first).
        """
        if not self.enabled:
            return
        key = packet[2:]
        extra: Any = aging
        extra_bytes = 0
        if aging is not None:
            if len(answer) > self.max_forwarded_answer or limit <= 0:
                return
            while len(self.forwarded) >= limit:
                self._drop(next(iter(self.forwarded)))
        tags = deps
        if aging is None:
            if tags is None:
                tags = _ANY_TAGS
            try:
                offsets = soa_serial_offsets(answer)
            except (ValueError, struct.error):
                return
            if offsets:
                if serial_of is None or (orders is not None and len(orders) > 1):
                    tags = _ANY_TAGS  # no way to keep its serial current: any change drops it
                else:
                    extra = SerialPatch(serial_of, struct.unpack_from("!I", answer, offsets[0])[0], offsets)
        if orders is not None and len(orders) > 1:
            extra_bytes = sum(len(o) - 2 for o in orders[1:])
            extra = Rotation([o[2:] for o in orders], extra_bytes, agings if aging is not None else None)
        cost = len(answer) + len(key) + self.entry_overhead + extra_bytes
        if cost > self.max_bytes:
            return
        if key in self.entries:
            self._drop(key)
        while self.entries and (len(self.entries) >= self.max_entries or self.bytes + cost > self.max_bytes):
            self._evict_oldest()
        self.entries[key] = [answer[2:], 0, info, extra, tags, 0]
        self.bytes += cost
        if tags:
            index = self.tags
            for t in tags:
                _tag(index, t, key)
        if aging is not None:
            self.forwarded[key] = None

    def _drop(self, key: bytes) -> None:
        entry = self.entries.pop(key, None)
        self.forwarded.pop(key, None)
        if entry is not None:
            self._retire(entry)
            self.bytes -= len(entry[0]) + 2 + len(key) + self.entry_overhead
            if type(entry[3]) is Rotation:
                self.bytes -= entry[3].extra
            if entry[4]:
                index = self.tags
                for t in entry[4]:
                    _untag(index, t, key)

    def aged(self, key: bytes, entry: list[Any], now: float) -> bytes | None:
        """The body of an entry that changes per hit: a forwarded one with TTLs counted down to
        ``now`` (None once expired), the next order of a rotating one, or one with its SOA serial
        brought up to date."""
        extra = entry[3]
        if type(extra) is SerialPatch:
            return extra.body(entry)
        if type(extra) is Rotation:
            turn = extra.turn + 1
            if turn == len(extra.bodies):
                turn = 0
            extra.turn = turn
            if extra.agings is None:
                return extra.bodies[turn]
            body = self._age(key, extra.agings[turn], extra.bodies[turn], now)
            if body is not None:
                extra.bodies[turn] = body
            return body
        body = self._age(key, extra, entry[0], now)
        if body is not None:
            entry[0] = body
        return body

    def _age(self, key: bytes, aging: Aging, body: bytes, now: float) -> bytes | None:
        """``body`` with its TTLs counted down to ``now`` (None, and the entry dropped, once expired)."""
        if now >= aging.expires or now < aging.stored:
            self._drop(key)
            return None
        age = int(now - aging.stored)
        if age != aging.age:
            buf = bytearray(aging.body)
            for off, ttl in aging.ttls:
                struct.pack_into("!I", buf, off - 2, max(0, ttl - age))
            body = bytes(buf)
            aging.age = age
        if aging.cache is not None:
            aging.cache.hits += 1
        return body

    def _retire(self, entry: list[Any]) -> None:
        if entry[1]:
            self.retired.add(fast_key(entry[2]), entry[1])
        if entry[5]:
            self.retired6.add(fast_key(entry[2]), entry[5])

    def clear(self) -> None:
        """Drop every entry and computed answer (in place: protocols hold a reference to the dict)."""
        self.computed.clear()
        self.computed_bytes = 0
        self.computed_tags.clear()
        self.computed_deps.clear()
        self._clear_entries()

    def _evict_oldest(self) -> None:
        """Drop the oldest quarter of the entries (a plain dict, for the fastest lookups: its
        oldest keys are walked once per batch, not once per entry)."""
        for key in list(islice(self.entries, max(1, len(self.entries) // 4))):
            self._drop(key)

    def _clear_entries(self) -> None:
        if not self.entries:
            return
        for e in self.entries.values():
            self._retire(e)
        self.entries.clear()
        self.forwarded.clear()
        self.tags.clear()
        self.bytes = 0

    def live(self, ipv6: bool = False) -> list[tuple[tuple[Any, ...], int]]:
        """``(fast_key(info), hits)`` of current entries, for rendering metrics on scrape; with
        ``ipv6`` the hits of an every-address listener's IPv6 socket."""
        i = 5 if ipv6 else 1
        return [(fast_key(e[2]), e[i]) for e in self.entries.values() if e[i]]

    def hits(self) -> int:
        return (sum(n for _, n in self.live()) + sum(n for _, n in self.live(ipv6=True))
                + sum(self.retired.values()) + sum(self.retired6.values()))


_MISSING = object()


def _tag(index: dict[Any, Any], tag: Any, key: Any) -> None:
    """Add ``key`` under ``tag``: a lone key stays bare, several become a set (keys are bytes or
    tuples, never sets)."""
    held = index.get(tag)
    if held is None:
        index[tag] = key
    elif type(held) is set:
        held.add(key)
    elif held != key:
        index[tag] = {held, key}


def _untag(index: dict[Any, Any], tag: Any, key: Any) -> None:
    held = index.get(tag)
    if held is None:
        return
    if type(held) is set:
        held.discard(key)
        if not held:
            del index[tag]
    elif held == key:
        del index[tag]


def fast_key(info: QueryInfo) -> tuple[Any, ...]:
    """The QueryInfo fields that metrics and summaries group fast-path hits by (types metrics
    call ``other`` all count as 0, so clients cannot multiply the keys with made-up types)."""
    return (info.server, info.zone, known_type(info.qtype), info.rcode, info.request_size, info.response_size, info.do)


#: Estimated bytes of a kept computed answer: what tracemalloc shows for twisted records built by
#: :class:`kubedns.dns.records.ClusterZones` (about 380 bytes per SRV record with its glue, 220 per
#: address record, 610 for a lone record with its Answer; its dependency keys and their index
#: slots about 160 more), rounded up; ``bench/memory.py`` checks it.
COMPUTED_BASE = 700
COMPUTED_PER_RECORD = 400


def computed_cost(key: tuple[Any, bytes, int], res: Any) -> int:
    """Upper estimate of the bytes a ``FastCache.computed`` entry holds."""
    if res is None:
        return COMPUTED_BASE + len(key[1])
    ans = res[1]
    n = len(ans.answers) + len(ans.authority) + len(ans.additional)
    return COMPUTED_BASE + len(key[1]) + COMPUTED_PER_RECORD * n
