"""The fast path serves exactly the bytes the slow path would, for every answer kind, ID aside.

A Dispatcher over a filled store is driven through the real UDP protocol class with a capturing
socket: the first query of each kind goes the slow way (decode → records → encode) and is
remembered; the same query with another ID must then be answered from the fast cache (the hit
counter moves, the slow path is not called) with the same bytes but the new ID.  A store change
must drop every pre-encoded answer.
"""

from __future__ import annotations

from typing import Any

import dns.flags
import dns.message
import pytest
from twisted.internet import task

from kubedns.config import KubernetesConfig, ServerBlock
from kubedns.configbase import Address
from kubedns.dns.records import ClusterZones
from kubedns.k8s import objects
from kubedns.k8s.store import Store
from kubedns.serve.protocols import DNSDatagramProtocol
from kubedns.serve.server import Block, Dispatcher
from tests.support import kubeobj
from tests.support.dispatch import CapturingTransport, FakeForwarder, udp_dispatcher
from tests.support.records_table import TABLE


def _wire(qname: str, qtype: int, qid: int, **kw: Any) -> bytes:
    q = dns.message.make_query(qname, qtype, **kw)
    q.id = qid
    return q.to_wire()


#: every answer kind of the records table, zone transfers (REFUSED), and a name nobody serves
KINDS = [(qname, qtype) for qname, qtype, _, _ in TABLE] + [
    ("cluster.local", 252),  # AXFR
    ("cluster.local", 251),  # IXFR
    ("nginx.default.svc.cluster.local", 252),
    ("big.Example.COM", 1),
]


@pytest.mark.parametrize("edns", [False, True], ids=["plain", "edns"])
@pytest.mark.parametrize("qname,qtype", KINDS)
def test_fast_bytes_equal_slow_bytes(qname: str, qtype: int, edns: bool) -> None:
    disp, proto, tr, _ = udp_dispatcher()
    kw = {"use_edns": 0, "payload": 1232} if edns else {"use_edns": False}
    proto.datagramReceived(_wire(qname, qtype, 0x1111, **kw), ("127.0.0.1", 5000))
    slow = tr.socket.sent[-1][0]
    if qname == "big.Example.COM":  # REFUSED (no block serves it): not cached, still answered
        assert not disp.fast.entries
        return
    assert len(disp.fast.entries) == 1
    disp.handle = None  # type: ignore[assignment]  # the slow path must not be reached now
    proto.datagramReceived(_wire(qname, qtype, 0x2222, **kw), ("127.0.0.1", 5001))
    fast = tr.socket.sent[-1][0]
    assert fast[:2] == b"\x22\x22" and slow[:2] == b"\x11\x11"
    assert fast[2:] == slow[2:]
    assert disp.fast.hits() == 1


@pytest.mark.parametrize("qtype", [252, 251], ids=["AXFR", "IXFR"])
def test_zone_transfer_refused_the_same_from_the_fast_path(qtype: int) -> None:
    disp, proto, tr, _ = udp_dispatcher()
    for qid in (1, 2):
        proto.datagramReceived(_wire("cluster.local", qtype, qid), ("127.0.0.1", 5000))
        r = dns.message.from_wire(tr.socket.sent[-1][0])
        assert (r.id, r.rcode(), r.answer, r.authority) == (qid, 5, [], [])
        assert not r.flags & dns.flags.AA
    assert disp.fast.hits() == 1


def test_dns_version_ttl_from_the_fast_path() -> None:
    disp, proto, tr, _ = udp_dispatcher()
    for qid in (1, 2):
        proto.datagramReceived(_wire("dns-version.cluster.local", 16, qid), ("127.0.0.1", 5000))
        r = dns.message.from_wire(tr.socket.sent[-1][0])
        assert [(rs.ttl, rs[0].strings) for rs in r.answer] == [(28800, (b"1.1.0",))]
    assert disp.fast.hits() == 1


def test_case_variants_are_separate_entries_and_echo() -> None:
    disp, proto, tr, _ = udp_dispatcher()
    for name in ("nginx.default.svc.cluster.local", "NGINX.default.svc.cluster.local"):
        proto.datagramReceived(_wire(name, 1, 1), ("127.0.0.1", 5000))
        proto.datagramReceived(_wire(name, 1, 2), ("127.0.0.1", 5000))
        r = dns.message.from_wire(tr.socket.sent[-1][0])
        assert r.answer[0].name.to_text() == name + "."
    assert len(disp.fast.entries) == 2 and disp.fast.hits() == 2


def test_store_change_drops_pre_encoded_answers() -> None:
    disp, proto, tr, store = udp_dispatcher()
    proto.datagramReceived(_wire("nginx.default.svc.cluster.local", 1, 1), ("127.0.0.1", 5000))
    proto.datagramReceived(_wire("nginx.default.svc.cluster.local", 1, 2), ("127.0.0.1", 5000))
    assert len(disp.fast.entries) == 1
    store.upsert("services", *objects.service_from_raw(kubeobj.service("nginx", "default", cluster_ip="10.96.5.5")))
    assert not disp.fast.entries
    assert sum(disp.fast.retired.values()) == 1  # the hit is kept for metrics
    proto.datagramReceived(_wire("nginx.default.svc.cluster.local", 1, 3), ("127.0.0.1", 5000))
    r = dns.message.from_wire(tr.socket.sent[-1][0])
    assert r.answer[0][0].address == "10.96.5.5"


def test_servfail_before_sync_is_not_cached() -> None:
    store = Store()
    kcfg = KubernetesConfig()
    block = Block(ServerBlock(zones=("",), listen=Address("127.0.0.1", 53), kubernetes=kcfg), ClusterZones(store, kcfg))
    disp = Dispatcher("dns://x", [block], reactor=task.Clock())
    proto = DNSDatagramProtocol(disp)
    proto.transport = CapturingTransport()
    proto.startProtocol()
    proto.datagramReceived(_wire("nginx.default.svc.cluster.local", 1, 1), ("127.0.0.1", 5000))
    assert dns.message.from_wire(proto.transport.socket.sent[-1][0]).rcode() == 2
    assert not disp.fast.entries


def _forward_setup(loadbalance: bool = False, **cache_kw: Any):
    from twisted.internet import task

    from kubedns.forward.cache import Cache
    from kubedns.forward.chain import ForwardChain
    from kubedns.forward.config import CacheConfig

    clock = task.Clock()
    clock.advance(1000)
    fwd = FakeForwarder()
    chain = ForwardChain(fwd, cache=Cache(CacheConfig(**{"ttl": 30, **cache_kw}), reactor=clock), reactor=clock)
    from kubedns.config import LoadbalanceConfig

    lb = LoadbalanceConfig() if loadbalance else None
    block = Block(ServerBlock(zones=("",), listen=Address("127.0.0.1", 53), loadbalance=lb), None, chain)
    disp = Dispatcher("dns://127.0.0.1:53", [block], reactor=clock)
    proto = DNSDatagramProtocol(disp)
    proto.transport = CapturingTransport()
    proto.startProtocol()
    return clock, fwd, disp, proto


def _slow(disp: Dispatcher, packet: bytes) -> bytes:
    """The slow path's answer to ``packet`` (fast cache bypassed and left as it was)."""
    saved = disp.fast.enabled
    disp.fast.enabled = False
    try:
        out = disp.handle(packet, "udp", ("127.0.0.1", 1))
        return getattr(out, "result", out)  # bytes, or a fired Deferred
    finally:
        disp.fast.enabled = saved


@pytest.mark.parametrize("qname", ["google.com", "NX.example.com"])
def test_forwarded_fast_bytes_equal_slow_bytes_as_ttls_count_down(qname: str) -> None:
    clock, fwd, disp, proto = _forward_setup()
    sent = proto.transport.socket.sent
    proto.datagramReceived(_wire(qname, 1, 1), ("127.0.0.1", 5000))
    first = sent[-1][0]
    assert fwd.asked == 1 and len(disp.fast.entries) == 1
    for elapsed in (0, 10, 12):
        clock.advance(elapsed)
        proto.datagramReceived(_wire(qname, 1, 2), ("127.0.0.1", 5000))
        fast = sent[-1][0]
        slow = _slow(disp, _wire(qname, 1, 3))
        assert fast[2:] == slow[2:], (elapsed, fast, slow)
        assert fwd.asked == 1
    r = dns.message.from_wire(fast)
    ttl = (r.answer or r.authority)[0].ttl
    assert ttl == (30 if not qname.startswith("NX") else 45) - 22  # RFC 2308: min(SOA ttl, minimum)
    assert dns.message.from_wire(first).id == 1
    assert disp.fast.hits() == 3
    clock.advance(24)  # past both lifetimes (30 s positive, 45 s negative)
    proto.datagramReceived(_wire(qname, 1, 4), ("127.0.0.1", 5000))
    assert fwd.asked == 2  # expired in the fast path and in the cache: asked upstream again


def test_forwarded_answers_skip_fast_path_with_prefetch() -> None:
    clock, fwd, disp, proto = _forward_setup(prefetch_amount=2)
    proto.datagramReceived(_wire("google.com", 1, 1), ("127.0.0.1", 5000))
    assert not disp.fast.entries


def test_forwarded_fast_entries_are_bounded_by_the_cache_size() -> None:
    """The fast path keeps no more forwarded names than the block's ``cache: {size: N}`` allows."""
    clock, fwd, disp, proto = _forward_setup(size=2)
    for i in range(5):
        proto.datagramReceived(_wire(f"name{i}.example.com", 1, i), ("127.0.0.1", 5000))
    assert len(disp.fast.entries) == 2 and len(disp.fast.forwarded) == 2
    # the newest two are kept; an evicted name goes the normal way (its cache, then upstream)
    asked = fwd.asked
    proto.datagramReceived(_wire("name4.example.com", 1, 9), ("127.0.0.1", 5000))
    assert fwd.asked == asked and disp.fast.hits() == 1
    proto.datagramReceived(_wire("name0.example.com", 1, 10), ("127.0.0.1", 5000))
    assert fwd.asked == asked + 1


def test_fast_cache_byte_budget_holds_against_case_variants() -> None:
    """Each case variant of a name is its own entry; the byte budget bounds them all."""
    disp, proto, tr, store = udp_dispatcher()
    disp.fast.max_bytes = 2000
    name = "nginx.default.svc.cluster.local"
    for i in range(64):
        variant = "".join(c.upper() if (i >> (k % 6)) & 1 else c for k, c in enumerate(name))
        proto.datagramReceived(_wire(variant, 1, i), ("127.0.0.1", 5000))
        assert disp.fast.bytes <= 2000
        over = disp.fast.entry_overhead
        assert disp.fast.bytes == sum(len(e[0]) + 2 + len(k) + over for k, e in disp.fast.entries.items())
    assert disp.fast.entries  # still serving from the fast path after evicting
    assert _wire(variant, 1, 0)[2:] in disp.fast.entries  # the oldest go first, the newest stays
    assert len(disp.fast.computed) == 1  # one computed answer for all 64 spellings


def test_case_spellings_share_one_computed_answer_and_echo_their_case() -> None:
    """The normal path computes a name once whatever its case; each answer carries the query's
    spelling in its owner names and is byte for byte what an answer computed for that very
    spelling encodes to (compression included)."""
    from kubedns.dns.wire import encode_response, parse_question

    disp, proto, tr, store = udp_dispatcher()
    disp.fast.enabled = False
    clusters = disp.blocks[0].clusters
    name = "_pg._tcp.db.testns.svc.cluster.local"
    spellings = [name, "_PG._tcp.DB.testns.svc.cluster.LOCAL", "_pG._TCP.db.TestNS.SVC.Cluster.local",
                 "db.TESTNS.svc.cluster.local", "DB.testns.svc.cluster.local"]
    for spelling in spellings:
        packet = _wire(spelling, 33, 7)
        proto.datagramReceived(packet, ("127.0.0.1", 5000))
        got = tr.socket.sent[-1][0]
        msg = dns.message.from_wire(got)
        assert msg.answer and all(rr.name.to_text(omit_final_dot=True) == spelling for rr in msg.answer)
        q = parse_question(packet)
        assert q is not None
        _, ans = clusters.answer(spelling.encode(), 33)
        want = encode_response(qid=7, opcode=0, rd=True, cd=False, ra=False, aa=True, rcode=ans.rcode,
                               question=packet[12:q.end], qname=q.qname, answers=ans.answers,
                               authority=ans.authority, additional=ans.additional, limit=512)
        assert got == want
    assert sorted(k[1] for k in disp.fast.computed) == [b"_pg._tcp.db.testns.svc.cluster.local",
                                                       b"db.testns.svc.cluster.local"]


def test_computed_answers_are_bounded_in_bytes() -> None:
    """Distinct names past the byte budget push the oldest computed answers out; the count of
    bytes is what the kept answers cost."""
    from kubedns.serve.fastcache import computed_cost

    disp, proto, tr, store = udp_dispatcher()
    disp.fast.enabled = False
    disp.fast.max_computed_bytes = 5000
    for i in range(200):
        proto.datagramReceived(_wire(f"n{i}.default.svc.cluster.local", 1, i), ("127.0.0.1", 5000))
        assert disp.fast.computed_bytes <= 5000
        assert disp.fast.computed_bytes == sum(computed_cost(k, v) for k, v in disp.fast.computed.items())
    kept = [k[1] for k in disp.fast.computed]
    assert 1 < len(kept) < 200 and kept[-1] == b"n199.default.svc.cluster.local"


def test_forward_failure_reason_reaches_observers() -> None:
    """``errors:`` can log which upstream failed and how, not just that the answer is SERVFAIL."""
    from twisted.internet import defer

    from kubedns.forward.forwarder import UpstreamsFailed

    clock, fwd, disp, proto = _forward_setup()
    fwd.resolve = lambda query, tcp=False: defer.fail(  # type: ignore[method-assign]
        UpstreamsFailed("no upstream answered", (("127.0.0.9:53", "timeout after 2s"),)))
    seen: list[Any] = []
    disp.observers.append(seen.append)
    proto.datagramReceived(_wire("example.org", 1, 1), ("127.0.0.1", 5000))
    assert dns.message.from_wire(proto.transport.socket.sent[-1][0]).rcode() == 2
    assert seen[-1].rcode == 2 and "127.0.0.9:53: timeout after 2s" in seen[-1].error


def test_normal_path_keeps_computed_answers_only_until_the_store_changes() -> None:
    """With the fast path off (as for TCP), computed answers are reused, then dropped on change."""
    disp, proto, tr, store = udp_dispatcher()
    disp.fast.enabled = False
    name = "nginx.default.svc.cluster.local"
    proto.datagramReceived(_wire(name, 1, 1), ("127.0.0.1", 5000))
    assert disp.fast.computed and not disp.fast.entries
    first = tr.socket.sent[-1][0]
    proto.datagramReceived(_wire(name, 1, 1), ("127.0.0.1", 5000))
    assert tr.socket.sent[-1][0] == first
    store.upsert("services", *objects.service_from_raw(kubeobj.service("nginx", "default", cluster_ip="10.96.5.5")))
    assert not disp.fast.computed
    proto.datagramReceived(_wire(name, 1, 2), ("127.0.0.1", 5000))
    assert dns.message.from_wire(tr.socket.sent[-1][0]).answer[0][0].address == "10.96.5.5"


def test_cname_chase_does_not_change_the_kept_answer() -> None:
    """Chasing an ExternalName extends a copy: asking twice gives the same bytes, not a longer chain."""
    from twisted.internet import defer
    from twisted.names import dns as tdns

    disp, proto, tr, store = udp_dispatcher()
    disp.fast.enabled = False

    class _Chain:
        asked = 0
        cache = None

        def handles(self, name: bytes) -> bool:
            return True

        def resolve(self, query: Any, tcp: bool = False) -> Any:
            self.asked += 1
            m = tdns.Message(answer=1)
            m.answers = [tdns.RRHeader(query.queries[0].name.name, tdns.A, ttl=60,
                                       payload=tdns.Record_A(f"192.0.2.{self.asked}", 60))]
            return defer.succeed(m)

    old = disp.blocks[0]
    disp.blocks = [Block(old.config, old.clusters, _Chain())]  # type: ignore[arg-type]
    name = "ext.testns.svc.cluster.local"
    proto.datagramReceived(_wire(name, 1, 1), ("127.0.0.1", 5000))
    proto.datagramReceived(_wire(name, 1, 1), ("127.0.0.1", 5000))
    a, b = (dns.message.from_wire(x[0]) for x in tr.socket.sent[-2:])
    assert len(a.answer) == len(b.answer) == 2  # CNAME + the chased A, once
    assert a.answer[1][0].address == "192.0.2.1" and b.answer[1][0].address == "192.0.2.2"  # chased again


def test_forwarded_fast_hits_count_as_cache_hits() -> None:
    """coredns_cache_hits_total must not go flat because the fast path answered the hit."""
    clock, fwd, disp, proto = _forward_setup()
    cache = disp.blocks[0].chain.cache
    proto.datagramReceived(_wire("google.com", 1, 1), ("127.0.0.1", 5000))
    assert (cache.hits, cache.misses) == (0, 1)
    for i in range(3):
        proto.datagramReceived(_wire("google.com", 1, 2 + i), ("127.0.0.1", 5000))
    assert disp.fast.hits() == 3 and cache.hits == 3 and fwd.asked == 1


def test_forwarded_answers_rotate_on_the_fast_path_as_ttls_count_down() -> None:
    """With loadbalance, a forwarded answer's repeats are fast-path hits in other orders of the
    same records, every order with its TTLs counted down like the slow path's."""
    clock, fwd, disp, proto = _forward_setup(loadbalance=True)
    sent = proto.transport.socket.sent
    proto.datagramReceived(_wire("many.example.com", 1, 1), ("127.0.0.1", 5000))
    (entry,) = disp.fast.entries.values()
    assert fwd.asked == 1 and len(entry[3].bodies) == 6
    firsts = set()
    for i, elapsed in enumerate((0, 7, 0, 0, 5, 0, 0)):
        clock.advance(elapsed)
        proto.datagramReceived(_wire("many.example.com", 1, 2 + i), ("127.0.0.1", 5000))
        r = dns.message.from_wire(sent[-1][0])
        assert sorted(rd.address for rd in r.answer[0]) == [f"192.0.2.{n}" for n in range(1, 7)]
        assert r.answer[0].ttl == 30 - int(clock.seconds() - 1000)  # the cache caps TTLs at 30
        firsts.add(r.answer[0][0].address)
        assert len(sent[-1][0]) == len(sent[0][0])
    assert fwd.asked == 1 and len(firsts) >= 4
    assert disp.blocks[0].chain.cache.hits == 7  # each hit is one of the cache's
    clock.advance(20)  # past the 30 s the cache keeps it
    proto.datagramReceived(_wire("many.example.com", 1, 99), ("127.0.0.1", 5000))
    assert fwd.asked == 2  # expired: asked again
