"""The answer cache and the ForwardChain's cache logic, on a ``task.Clock`` (no sockets, no sleeping).

Table-driven checks of what is cached and for how long (RFC 2308 negative TTLs, caps and floors,
SERVFAIL), TTLs counting down, LRU bounds, the cache key, serve_stale and prefetch; then the chain
against a fake forwarder whose answers the test releases by hand.
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet import defer, task
from twisted.names import dns

from kubedns.forward.cache import Cache, cache_key, response_ttl
from kubedns.forward.chain import ForwardChain
from kubedns.forward.config import CacheConfig
from kubedns.forward.forwarder import Refused, UpstreamsFailed

pytestmark = pytest.mark.timeout(10)


# -- builders ------------------------------------------------------------------------------------


def query(
    name: bytes = b"example.com",
    qtype: int = dns.A,
    *,
    do: bool = False,
    cd: bool = False,
    ad: bool = False,
    options: list[tuple[int, bytes]] | None = None,
) -> dns.Message:
    """A query as the server hands it to the chain (decoded from bytes: OPT options as raw rdata)."""
    q = dns.Message(recDes=1, checkingDisabled=int(cd), authenticData=int(ad))
    q.addQuery(name, qtype)
    if do or options:
        opts = [dns._OPTVariableOption(code, data) for code, data in options or []]
        q.additional.append(dns._OPTHeader(dnssecOK=do, options=opts))
    m = dns.Message()
    m.fromStr(q.toStr())
    return m


def a(name: bytes, ip: str, ttl: int) -> dns.RRHeader:
    return dns.RRHeader(name, dns.A, dns.IN, ttl, dns.Record_A(ip, ttl))


def soa(zone: bytes = b"example.com", ttl: int = 60, minimum: int = 30) -> dns.RRHeader:
    return dns.RRHeader(zone, dns.SOA, dns.IN, ttl, dns.Record_SOA(b"ns." + zone, b"admin." + zone, minimum=minimum))


def response(
    rcode: int = dns.OK,
    answers: list[dns.RRHeader] | None = None,
    authority: list[dns.RRHeader] | None = None,
    additional: list[dns.RRHeader] | None = None,
    trunc: int = 0,
) -> dns.Message:
    m = dns.Message(answer=1, recAv=1, rCode=rcode, trunc=trunc)
    m.answers = answers or []
    m.authority = authority or []
    m.additional = additional or []
    return m


def make(cfg: CacheConfig | None = None) -> tuple[Cache, task.Clock]:
    clock = task.Clock()
    clock.advance(1000)
    return Cache(cfg or CacheConfig(), reactor=clock), clock


KEY = (b"example.com", dns.A, dns.IN, False, False, False, b"")
ECS_V4_24 = b"\x00\x01\x18\x00\xc0\x00\x02"  # family 1, source /24, scope 0, 192.0.2


# -- what is cached, and for how long ----------------------------------------------------------

CFG = CacheConfig(ttl=3600, min_ttl=5, denial_ttl=1800)


@pytest.mark.parametrize(
    ("resp", "expected"),
    [
        (response(answers=[a(b"x", "192.0.2.1", 300)]), ("success", 300)),
        (response(answers=[a(b"x", "192.0.2.1", 300), a(b"x", "192.0.2.2", 40)]), ("success", 40)),
        (response(answers=[a(b"x", "192.0.2.1", 300)], additional=[a(b"y", "192.0.2.3", 20)]), ("success", 20)),
        (response(answers=[a(b"x", "192.0.2.1", 86400)]), ("success", 3600)),  # capped at ttl
        (response(answers=[a(b"x", "192.0.2.1", 1)]), ("success", 5)),  # floored at min_ttl
        (response(dns.ENAME, authority=[soa(ttl=60, minimum=30)]), ("denial", 30)),  # RFC 2308 min
        (response(dns.ENAME, authority=[soa(ttl=20, minimum=300)]), ("denial", 20)),
        (response(dns.ENAME, authority=[soa(ttl=86400, minimum=86400)]), ("denial", 1800)),  # denial cap
        (response(dns.OK, authority=[soa(ttl=60, minimum=45)]), ("denial", 45)),  # NODATA with SOA
        (response(dns.ENAME), None),  # no SOA: not cacheable
        (response(dns.OK), None),  # NODATA without SOA
        (response(dns.ESERVER), ("servfail", 5)),
        (response(dns.EREFUSED), None),
        (response(dns.EFORMAT), None),
        (response(answers=[a(b"x", "192.0.2.1", 300)], trunc=1), None),
    ],
)
def test_response_ttl_table(resp: dns.Message, expected: Any) -> None:
    assert response_ttl(resp, CFG) == expected


def test_zero_ttls_and_disabled_servfail() -> None:
    cfg = CacheConfig(min_ttl=0, servfail_ttl=0)
    assert response_ttl(response(answers=[a(b"x", "192.0.2.1", 0)]), cfg) is None
    assert response_ttl(response(dns.ESERVER), cfg) is None


def test_cache_key_lowercases_and_separates_do_cd() -> None:
    assert cache_key(query(b"ExAmple.COM")) == KEY
    assert cache_key(query(do=True)) == (b"example.com", dns.A, dns.IN, True, False, False, b"")
    assert cache_key(query(cd=True)) == (b"example.com", dns.A, dns.IN, False, True, False, b"")
    assert cache_key(dns.Message()) is None


def test_cache_key_separates_ad_and_client_subnet_not_other_options() -> None:
    """AD and the ECS option change the answer; NSID, a cookie or padding do not."""
    assert cache_key(query(ad=True)) == (b"example.com", dns.A, dns.IN, False, False, True, b"")
    with_ecs = cache_key(query(options=[(8, ECS_V4_24)]))
    assert with_ecs == (b"example.com", dns.A, dns.IN, False, False, False, ECS_V4_24)
    other_net = cache_key(query(options=[(8, b"\x00\x01\x18\x00\xc6\x33\x64")]))  # 198.51.100/24
    assert other_net not in (with_ecs, KEY)
    other_prefix = cache_key(query(options=[(8, b"\x00\x01\x10\x00\xc0\x00")]))  # 192.0/16
    assert other_prefix not in (with_ecs, KEY)
    # NSID request, a cookie, padding: relayed, but the answer is the same
    noise = [(3, b""), (10, b"\x01" * 8), (12, b"\x00" * 20)]
    assert cache_key(query(options=noise)) == KEY
    assert cache_key(query(options=[*noise, (8, ECS_V4_24)])) == with_ecs


# -- TTL countdown and expiry --------------------------------------------------------------------


def test_ttls_count_down_and_expire() -> None:
    cache, clock = make()
    assert cache.put(KEY, response(answers=[a(b"example.com", "192.0.2.1", 100)], authority=[soa(ttl=3600)]))
    msg, prefetch = cache.get(KEY)  # type: ignore[misc]
    assert ([rr.ttl for rr in msg.answers], [rr.ttl for rr in msg.authority]) == ([100], [100])
    assert not prefetch
    clock.advance(30.7)
    msg, _ = cache.get(KEY)  # type: ignore[misc]
    assert msg.answers[0].ttl == 70
    assert msg.answers[0].payload.dottedQuad() == "192.0.2.1"
    clock.advance(69)  # age 99.7: still one second to go
    msg, _ = cache.get(KEY)  # type: ignore[misc]
    assert msg.answers[0].ttl == 1
    clock.advance(0.3)
    assert cache.get(KEY) is None
    assert len(cache) == 0  # dropped on lookup
    assert (cache.hits, cache.misses) == (3, 1)


def test_negative_entry_keeps_rcode_and_soa() -> None:
    cache, clock = make()
    cache.put(KEY, response(dns.ENAME, authority=[soa(ttl=60, minimum=30)]))
    clock.advance(10)
    msg, _ = cache.get(KEY)  # type: ignore[misc]
    assert msg.rCode == dns.ENAME
    assert [(rr.type, rr.ttl) for rr in msg.authority] == [(dns.SOA, 20)]
    clock.advance(20)
    assert cache.get(KEY) is None


def test_servfail_cached_five_seconds() -> None:
    cache, clock = make()
    assert cache.put(KEY, response(dns.ESERVER))
    clock.advance(4.9)
    assert cache.get(KEY)[0].rCode == dns.ESERVER  # type: ignore[index]
    clock.advance(0.1)
    assert cache.get(KEY) is None


def test_hits_are_independent_copies() -> None:
    cache, _ = make()
    original = response(answers=[a(b"example.com", "192.0.2.1", 100)])
    cache.put(KEY, original)
    original.answers[0].ttl = 1  # the caller mutating its message does not reach the cache
    msg, _ = cache.get(KEY)  # type: ignore[misc]
    msg.answers[0].ttl = 7
    msg.answers.clear()
    again, _ = cache.get(KEY)  # type: ignore[misc]
    assert [rr.ttl for rr in again.answers] == [100]


def test_opt_records_are_not_cached() -> None:
    cache, _ = make()
    opt = dns.RRHeader(b"", dns.OPT, 1232, 0, dns.UnknownRecord(b""))
    cache.put(KEY, response(answers=[a(b"example.com", "192.0.2.1", 100)], additional=[opt]))
    msg, _ = cache.get(KEY)  # type: ignore[misc]
    assert msg.additional == []


def test_clock_going_backwards_drops_the_entry() -> None:
    cache, clock = make()
    cache.put(KEY, response(answers=[a(b"example.com", "192.0.2.1", 100)]))
    clock.rightNow -= 50
    assert cache.get(KEY) is None


# -- bounds ------------------------------------------------------------------------------------


def test_lru_eviction_keeps_recently_used() -> None:
    cache, _ = make(CacheConfig(size=2))
    keys = [(n, dns.A, dns.IN, False, False) for n in (b"a", b"b", b"c")]
    cache.put(keys[0], response(answers=[a(b"a", "192.0.2.1", 100)]))
    cache.put(keys[1], response(answers=[a(b"b", "192.0.2.2", 100)]))
    assert cache.get(keys[0]) is not None  # a is now the most recent
    cache.put(keys[2], response(answers=[a(b"c", "192.0.2.3", 100)]))
    assert len(cache) == 2
    assert cache.get(keys[1]) is None  # b was least recently used
    assert cache.get(keys[0]) is not None and cache.get(keys[2]) is not None
    assert cache.evictions == 1
    assert cache.stats()["entries"] == 2
    assert cache.entries_by_kind() == {"success": 2, "denial": 0, "servfail": 0}


# -- serve_stale and prefetch ------------------------------------------------------------------


def test_serve_stale_window() -> None:
    cache, clock = make(CacheConfig(serve_stale=60))
    cache.put(KEY, response(answers=[a(b"example.com", "192.0.2.1", 100)]))
    assert cache.get_stale(KEY) is not None  # fresh entries can be read stale too (TTL 0)
    clock.advance(130)
    assert cache.get(KEY) is None  # expired: a miss, but kept for serving stale
    stale = cache.get_stale(KEY)
    assert stale is not None and [rr.ttl for rr in stale.answers] == [0]
    clock.advance(30)
    assert cache.get_stale(KEY) is None  # 100 + 60 s passed
    assert len(cache) == 0


def test_no_stale_without_serve_stale() -> None:
    cache, clock = make()
    cache.put(KEY, response(answers=[a(b"example.com", "192.0.2.1", 100)]))
    clock.advance(101)
    assert cache.get_stale(KEY) is None


def test_prefetch_needs_popularity_and_little_ttl_left() -> None:
    cache, clock = make(CacheConfig(prefetch_amount=3, prefetch_duration=10, prefetch_percentage=20))
    cache.put(KEY, response(answers=[a(b"example.com", "192.0.2.1", 100)]))
    decisions = []
    for step in (5, 5, 5, 5):  # four hits 5 s apart, far from expiry
        clock.advance(step)
        decisions.append(cache.get(KEY)[1])  # type: ignore[index]
    assert decisions == [False] * 4
    clock.advance(20)  # a gap of 20 s >= duration: popularity resets
    clock.advance(41)  # 81 s old: 19 s left, under 20 %
    assert cache.get(KEY)[1] is False  # type: ignore[index]  # only 1 hit since the gap
    clock.advance(1)
    assert cache.get(KEY)[1] is False  # type: ignore[index]
    clock.advance(1)
    assert cache.get(KEY)[1] is True  # type: ignore[index]  # 3 hits, 17 s left


def test_prefetch_off_by_default_and_never_for_denials() -> None:
    cache, clock = make()
    cache.put(KEY, response(answers=[a(b"example.com", "192.0.2.1", 100)]))
    clock.advance(99)
    assert cache.get(KEY)[1] is False  # type: ignore[index]
    cache, clock = make(CacheConfig(prefetch_amount=1))
    cache.put(KEY, response(dns.ENAME, authority=[soa(ttl=60, minimum=60)]))
    clock.advance(59)
    assert cache.get(KEY)[1] is False  # type: ignore[index]


# -- the chain, against a fake forwarder ---------------------------------------------------------


class FakeForwarder:
    """Records resolve() calls; the test fires each returned Deferred by hand."""

    def __init__(self) -> None:
        self.calls: list[tuple[dns.Message, defer.Deferred]] = []
        self.disabled_reason: str | None = None
        self.started = self.stopped = False

    def resolve(self, query: dns.Message, *, tcp: bool = False) -> defer.Deferred:
        d: defer.Deferred = defer.Deferred()
        self.calls.append((query, d))
        return d

    def handles(self, name: bytes) -> bool:
        return not name.endswith(b"corp")

    def start(self) -> None:
        self.started = True

    def stop(self) -> None:
        self.stopped = True


def chain(cfg: CacheConfig | None = None) -> tuple[ForwardChain, FakeForwarder, Cache, task.Clock]:
    fwd = FakeForwarder()
    cache, clock = make(cfg)
    return ForwardChain(fwd, cache, reactor=clock), fwd, cache, clock  # type: ignore[arg-type]


def result(d: defer.Deferred) -> Any:
    out: list[Any] = []
    d.addBoth(out.append)
    assert out, "Deferred has not fired"
    return out[0]


def answer(ip: str = "192.0.2.1", ttl: int = 100) -> dns.Message:
    return response(answers=[a(b"example.com", ip, ttl)])


def test_chain_miss_then_hit() -> None:
    ch, fwd, cache, clock = chain()
    d = ch.resolve(query())
    assert len(fwd.calls) == 1
    fwd.calls[0][1].callback(answer())
    assert result(d).answers[0].ttl == 100
    clock.advance(10)
    hit = result(ch.resolve(query(b"EXAMPLE.com")))
    assert hit.answers[0].ttl == 90
    assert len(fwd.calls) == 1
    assert (cache.hits, cache.misses) == (1, 1)
    ch.start()
    ch.stop()
    assert fwd.started and fwd.stopped
    assert not ch.handles(b"x.corp") and ch.handles(b"example.com")


def test_chain_miss_is_the_response_with_capped_ttls_and_its_live_options() -> None:
    """A miss answers with the upstream's answer, TTLs as a hit would carry them and the upstream's
    options exactly once; what the caller then does to that message (its TTLs, its lists) does not
    reach the entry (it keeps bytes), and a hit still carries the kept options only."""
    ch, fwd, cache, clock = chain(CacheConfig(ttl=60))
    d = ch.resolve(query())
    live = dns.RRHeader(b"", dns.OPT, 1232, 0, dns.UnknownRecord(b"\x00\x03\x00\x02ns"))  # NSID
    upstream = response(answers=[a(b"example.com", "192.0.2.1", 300)], additional=[live])
    fwd.calls[0][1].callback(upstream)
    served = result(d)
    assert [rr.ttl for rr in served.answers] == [60]  # capped at the cache's ttl
    assert served.additional == [live] and live.ttl == 0  # the OPT's TTL field (EDNS flags) untouched
    assert served.cache_ttl == 60
    served.answers[0].ttl = 9999
    served.answers.clear()
    clock.advance(10)
    hit = result(ch.resolve(query()))
    assert [rr.ttl for rr in hit.answers] == [50]
    assert hit.additional == []  # NSID is per request: not kept with the entry


def test_chain_without_cache_just_forwards() -> None:
    fwd = FakeForwarder()
    ch = ForwardChain(fwd, None, reactor=task.Clock())  # type: ignore[arg-type]
    ch.resolve(query())
    ch.resolve(query())
    assert len(fwd.calls) == 2


def test_chain_failure_propagates_without_stale() -> None:
    ch, fwd, _, _ = chain()
    d = ch.resolve(query())
    fwd.calls[0][1].errback(UpstreamsFailed("no upstream answered"))
    assert result(d).check(UpstreamsFailed)


def test_chain_serves_stale_only_when_upstreams_fail() -> None:
    ch, fwd, cache, clock = chain(CacheConfig(serve_stale=3600))
    d = ch.resolve(query())
    fwd.calls[0][1].callback(answer())
    result(d)
    clock.advance(200)  # expired
    d = ch.resolve(query())
    assert len(fwd.calls) == 2  # verified mode: ask the upstream first
    fwd.calls[1][1].errback(UpstreamsFailed("no upstream answered"))
    stale = result(d)
    assert stale.answers[0].ttl == 0 and stale.answers[0].payload.dottedQuad() == "192.0.2.1"
    d = ch.resolve(query())
    fwd.calls[2][1].errback(Refused("busy"))
    assert result(d).answers[0].ttl == 0
    assert cache.stale_served == 2
    d = ch.resolve(query())  # the upstream is back: fresh answer, stored again
    fwd.calls[3][1].callback(answer("192.0.2.7"))
    assert result(d).answers[0].payload.dottedQuad() == "192.0.2.7"
    assert result(ch.resolve(query())).answers[0].payload.dottedQuad() == "192.0.2.7"


def test_chain_serve_stale_immediate_refreshes_in_background() -> None:
    ch, fwd, _, clock = chain(CacheConfig(serve_stale=3600, serve_stale_mode="immediate"))
    d = ch.resolve(query())
    fwd.calls[0][1].callback(answer())
    result(d)
    clock.advance(200)
    first = result(ch.resolve(query()))
    second = result(ch.resolve(query()))
    assert first.answers[0].ttl == second.answers[0].ttl == 0
    assert len(fwd.calls) == 2  # one background refresh, not one per query
    fwd.calls[1][1].callback(answer("192.0.2.8"))
    fresh = result(ch.resolve(query()))
    assert (fresh.answers[0].payload.dottedQuad(), fresh.answers[0].ttl) == ("192.0.2.8", 100)


def test_chain_prefetch_runs_once_and_refreshes() -> None:
    ch, fwd, cache, clock = chain(CacheConfig(prefetch_amount=2, prefetch_percentage=10))
    d = ch.resolve(query())
    fwd.calls[0][1].callback(answer(ttl=100))
    result(d)
    clock.advance(91)
    result(ch.resolve(query()))  # hit 1
    result(ch.resolve(query()))  # hit 2, 9 s left: prefetch
    result(ch.resolve(query()))  # still refreshing: no second prefetch
    assert len(fwd.calls) == 2 and cache.prefetches == 1
    fwd.calls[1][1].callback(answer("192.0.2.9", ttl=100))
    clock.advance(5)
    msg = result(ch.resolve(query()))
    assert (msg.answers[0].payload.dottedQuad(), msg.answers[0].ttl) == ("192.0.2.9", 95)


def test_chain_failed_prefetch_is_quiet() -> None:
    ch, fwd, _, clock = chain(CacheConfig(prefetch_amount=1))
    d = ch.resolve(query())
    fwd.calls[0][1].callback(answer(ttl=100))
    result(d)
    clock.advance(95)
    assert result(ch.resolve(query())).answers[0].ttl == 5
    fwd.calls[1][1].errback(UpstreamsFailed("down"))
    assert not ch._refreshing
    assert result(ch.resolve(query())).answers[0].ttl == 5


def test_chain_stats_shape() -> None:
    from kubedns.forward.config import ForwardConfig
    from kubedns.forward.forwarder import Forwarder
    from kubedns.forward.upstream import UpstreamSpec

    clock = task.Clock()
    fwd = Forwarder(ForwardConfig(to=(UpstreamSpec("127.0.0.1", 5353),)), reactor=clock)
    ch = ForwardChain(fwd, Cache(CacheConfig(), reactor=clock), reactor=clock)
    stats = ch.stats()
    assert stats["cache"] == {
        "hits": 0,
        "misses": 0,
        "entries": 0,
        "bytes": 0,
        "stale_served": 0,
        "prefetches": 0,
        "evictions": 0,
        "inserts": 0,
    }
    assert stats["forward"]["upstreams"] == {
        "127.0.0.1:5353": {"requests": 0, "responses": {}, "failures": 0, "healthcheck_failures": 0}
    }
    assert stats["forward"]["loop_detected"] is False


# -- serve_stale never loses a good answer to a SERVFAIL ---------------------------------------


def test_servfail_does_not_evict_a_stale_good_entry() -> None:
    cache, clock = make(CacheConfig(serve_stale=3600))
    cache.put(KEY, response(answers=[a(b"example.com", "192.0.2.1", 100)]))
    clock.advance(200)  # expired, inside the stale window
    assert cache.put(KEY, response(dns.ESERVER)) is False  # not stored over the good entry
    stale = cache.get_stale(KEY)
    assert stale is not None and stale.rCode == dns.OK
    assert [(rr.payload.dottedQuad(), rr.ttl) for rr in stale.answers] == [("192.0.2.1", 0)]
    assert cache.entries_by_kind() == {"success": 1, "denial": 0, "servfail": 0}


def test_servfail_does_not_evict_a_stale_negative_entry() -> None:
    cache, clock = make(CacheConfig(serve_stale=3600))
    cache.put(KEY, response(dns.ENAME, authority=[soa(ttl=60, minimum=30)]))
    clock.advance(40)
    assert not cache.put(KEY, response(dns.ESERVER))
    stale = cache.get_stale(KEY)
    assert stale is not None and stale.rCode == dns.ENAME and [rr.type for rr in stale.authority] == [dns.SOA]


def test_servfail_does_not_evict_a_fresh_entry_even_without_serve_stale() -> None:
    cache, clock = make()
    cache.put(KEY, response(answers=[a(b"example.com", "192.0.2.1", 100)]))
    clock.advance(95)  # e.g. a prefetch that got SERVFAIL
    assert not cache.put(KEY, response(dns.ESERVER))
    assert cache.get(KEY)[0].answers[0].ttl == 5  # type: ignore[index]
    clock.advance(10)  # expired, no serve_stale: a SERVFAIL may now be cached
    assert cache.put(KEY, response(dns.ESERVER))


def test_a_servfail_entry_is_never_served_stale() -> None:
    cache, clock = make(CacheConfig(serve_stale=3600))
    assert cache.put(KEY, response(dns.ESERVER))
    assert cache.get_stale(KEY) is None
    clock.advance(10)
    assert cache.get(KEY) is None
    assert cache.get_stale(KEY) is None
    assert len(cache) == 0 and cache.stale_served == 0


def test_chain_serves_stale_when_the_upstream_answers_servfail() -> None:
    ch, fwd, cache, clock = chain(CacheConfig(serve_stale=3600))
    d = ch.resolve(query())
    fwd.calls[0][1].callback(answer())
    result(d)
    clock.advance(200)  # expired
    for i in (1, 2):  # the upstream keeps answering SERVFAIL: the good answer, stale, each time
        d = ch.resolve(query())
        assert len(fwd.calls) == i + 1  # verified mode: the upstream is asked first
        fwd.calls[i][1].callback(response(dns.ESERVER))
        got = result(d)
        assert got.rCode == dns.OK
        assert [(rr.payload.dottedQuad(), rr.ttl) for rr in got.answers] == [("192.0.2.1", 0)]
    d = ch.resolve(query())  # then every upstream is down: still the good answer
    fwd.calls[3][1].errback(UpstreamsFailed("no upstream answered"))
    assert result(d).answers[0].payload.dottedQuad() == "192.0.2.1"
    d = ch.resolve(query())  # REFUSED is no fresh answer either (CoreDNS: only NOERROR/NXDOMAIN are)
    fwd.calls[4][1].callback(response(dns.EREFUSED))
    assert result(d).answers[0].payload.dottedQuad() == "192.0.2.1"
    assert cache.stale_served == 4
    d = ch.resolve(query())  # the upstream is back
    fwd.calls[5][1].callback(answer("192.0.2.7"))
    assert result(d).answers[0].ttl == 100


def test_chain_servfail_without_a_stale_entry_is_relayed_and_cached() -> None:
    ch, fwd, cache, _ = chain(CacheConfig(serve_stale=3600))
    d = ch.resolve(query())
    fwd.calls[0][1].callback(response(dns.ESERVER))
    assert result(d).rCode == dns.ESERVER
    assert result(ch.resolve(query())).rCode == dns.ESERVER  # cached for servfail_ttl
    assert len(fwd.calls) == 1 and cache.stale_served == 0


def test_chain_immediate_refresh_getting_servfail_keeps_the_good_entry() -> None:
    ch, fwd, cache, clock = chain(CacheConfig(serve_stale=3600, serve_stale_mode="immediate"))
    d = ch.resolve(query())
    fwd.calls[0][1].callback(answer())
    result(d)
    clock.advance(200)
    assert result(ch.resolve(query())).answers[0].ttl == 0  # stale, refresh started
    fwd.calls[1][1].callback(response(dns.ESERVER))
    again = result(ch.resolve(query()))
    assert (again.rCode, again.answers[0].payload.dottedQuad(), again.answers[0].ttl) == (dns.OK, "192.0.2.1", 0)
