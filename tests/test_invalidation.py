"""A store change drops exactly the kept answers it can alter, and no stale answer survives.

Each test drives a Dispatcher behind the real UDP protocol class (fast path) and its normal path
over TCP (the computed-answer memo), both wired to the store as the server wires them
(``FastCache.store_changed``).  After a change the answer to a changed name must be what a
dispatcher that never kept anything computes now, byte for byte, on both paths; answers to names
the change cannot alter must still be kept (served from the fast path without recomputing), their
SOA serial brought up to date.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import dns.message
import dns.rcode
import dns.rdatatype
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
from tests.support.dispatch import CapturingTransport
from tests.support.records_table import TABLE, fill

Z = "cluster.local"


def _svc(name: str, ns: str, **kw: Any) -> None:
    return objects.service_from_raw(kubeobj.service(name, ns, **kw))  # type: ignore[return-value]


class World:
    """A filled store, a dispatcher keeping answers, and fresh answers to compare with."""

    def __init__(self, pods: str = "verified"):
        self.store = store = Store(required=("namespaces", "services", "endpointslices", "pods"))
        fill(store)
        self.kcfg = KubernetesConfig(pods=pods, ttl=5)
        self.disp = self._dispatcher()
        store.add_listener(lambda: self.disp.fast.store_changed(store))
        self.proto = DNSDatagramProtocol(self.disp)
        self.tr = CapturingTransport()
        self.proto.transport = self.tr  # type: ignore[assignment]
        self.proto.startProtocol()
        self.put("services", *_svc("hl", "testns", headless=True, ports=[{"name": "http", "port": 80, "protocol": "TCP"}]))
        self.put("endpointslices", *objects.endpointslice_from_raw(kubeobj.endpointslice(
            "hl-1", "testns", "hl", endpoints=[{"addresses": ["10.1.0.1"], "hostname": "h0"}],
            ports=[{"name": "http", "port": 80, "protocol": "TCP"}])))
        self.put("services", *_svc("alias", "testns", type="ExternalName", external_name=f"nginx.default.svc.{Z}"))

    def _dispatcher(self) -> Dispatcher:
        block = Block(ServerBlock(zones=("",), listen=Address("127.0.0.1", 53), kubernetes=self.kcfg),
                      ClusterZones(self.store, self.kcfg))
        return Dispatcher("dns://127.0.0.1:53", [block], reactor=task.Clock())

    def put(self, kind: str, key: str, rec: Any) -> None:
        self.store.upsert(kind, key, rec)

    @staticmethod
    def wire(qname: str, qtype: int, qid: int = 7) -> bytes:
        q = dns.message.make_query(qname, qtype, use_edns=0, payload=1232)
        q.id = qid
        return q.to_wire()

    def udp(self, qname: str, qtype: int) -> bytes:
        self.proto.datagramReceived(self.wire(qname, qtype), ("127.0.0.1", 5000))
        return self.tr.socket.sent[-1][0]

    def tcp(self, qname: str, qtype: int) -> bytes:
        out = self.disp.handle(self.wire(qname, qtype), "tcp", ("127.0.0.1", 5000))
        assert isinstance(out, bytes)
        return out

    def fresh(self, qname: str, qtype: int, proto: str = "udp") -> bytes:
        out = self._dispatcher().handle(self.wire(qname, qtype), proto, ("127.0.0.1", 5000))
        assert isinstance(out, bytes)
        return out

    def kept(self, qname: str, qtype: int) -> bool:
        return self.wire(qname, qtype)[2:] in self.disp.fast.entries

    def check(self, qname: str, qtype: int) -> bytes:
        """Both paths answer ``qname`` as a fresh dispatcher would; returns the UDP answer."""
        got = self.udp(qname, qtype)
        assert got == self.fresh(qname, qtype), (qname, qtype, dns.message.from_wire(got))
        assert self.tcp(qname, qtype) == self.fresh(qname, qtype, "tcp"), (qname, qtype)
        return got


A, AAAA, SRV, PTR, TXT, SOA, CNAME = 1, 28, 33, 12, 16, 6, 5


def _nginx_moved(w: World) -> None:
    w.put("services", *_svc("nginx", "default", cluster_ip="10.96.5.5",
                            ports=[{"name": "http", "port": 80, "protocol": "TCP"}, {"port": 8080, "protocol": "TCP"}]))


def _hl_endpoint(ip: str, port: int = 80, host: str = "h0") -> Callable[[World], None]:
    def change(w: World) -> None:
        w.put("endpointslices", *objects.endpointslice_from_raw(kubeobj.endpointslice(
            "hl-1", "testns", "hl", endpoints=[{"addresses": [ip], "hostname": host}],
            ports=[{"name": "http", "port": port, "protocol": "TCP"}])))
    return change


def _ns(name: str, present: bool) -> Callable[[World], None]:
    def change(w: World) -> None:
        key, rec = objects.namespace_from_raw(kubeobj.namespace(name))
        w.put("namespaces", key, rec if present else None)
    return change


def _pod(ip: str, present: bool) -> Callable[[World], None]:
    def change(w: World) -> None:
        key, rec = objects.pod_from_raw(kubeobj.pod("p1", "testns", ip))
        w.put("pods", key, rec if present else None)
    return change


#: (what, names whose answers must change, the change)
CHANGES: list[tuple[str, list[tuple[str, int]], Callable[[World], None]]] = [
    ("service A", [(f"nginx.default.svc.{Z}", A)], _nginx_moved),
    ("service SRV", [(f"_http._tcp.nginx.default.svc.{Z}", SRV)], _nginx_moved),
    ("service AAAA", [(f"dual.default.svc.{Z}", AAAA)], lambda w: w.put("services", *_svc(
        "dual", "default", cluster_ip="10.96.0.200", cluster_ips=["10.96.0.200", "fd00::201"],
        ports=[{"name": "http", "port": 80, "protocol": "TCP"}], ip_families=["IPv4", "IPv6"]))),
    ("headless A", [(f"hl.testns.svc.{Z}", A)], _hl_endpoint("10.1.0.2")),
    ("headless SRV", [(f"_http._tcp.hl.testns.svc.{Z}", SRV), (f"hl.testns.svc.{Z}", SRV)], _hl_endpoint("10.1.0.1", 81)),
    ("endpoint hostname", [(f"h0.hl.testns.svc.{Z}", A)], _hl_endpoint("10.1.0.3")),
    ("endpoint hostname renamed", [(f"h0.hl.testns.svc.{Z}", A), (f"h1.hl.testns.svc.{Z}", A)],
     _hl_endpoint("10.1.0.1", host="h1")),
    ("PTR of a ClusterIP, old and new", [("100.0.96.10.in-addr.arpa", PTR), ("5.5.96.10.in-addr.arpa", PTR)], _nginx_moved),
    ("PTR of an endpoint IP", [("1.0.1.10.in-addr.arpa", PTR), ("2.0.1.10.in-addr.arpa", PTR)], _hl_endpoint("10.1.0.2")),
    ("PTR of an endpoint whose Service goes", [("1.0.1.10.in-addr.arpa", PTR), (f"h0.hl.testns.svc.{Z}", A)],
     lambda w: w.put("services", "testns/hl", None)),
    ("ExternalName CNAME", [(f"ext.testns.svc.{Z}", A), (f"ext.testns.svc.{Z}", CNAME)],
     lambda w: w.put("services", *_svc("ext", "testns", type="ExternalName", external_name="other.example.com"))),
    ("ExternalName chase into a changed Service", [(f"alias.testns.svc.{Z}", A)], _nginx_moved),
    ("namespace appears", [(f"newns.svc.{Z}", A), (f"newns.pod.{Z}", A), (f"10-1-2-3.newns.pod.{Z}", A)], _ns("newns", True)),
    ("namespace disappears", [(f"kube-system.pod.{Z}", A)], lambda w: (
        _ns("kube-system", False)(w), w.put("services", "kube-system/kube-dns", None))),
    ("NXDOMAIN to exists", [(f"newsvc.default.svc.{Z}", A), (f"x.newsvc.default.svc.{Z}", A)],
     lambda w: w.put("services", *_svc("newsvc", "default", cluster_ip="10.96.7.7"))),
    ("pod verified appears", [(f"10-2-0-1.testns.pod.{Z}", A)], _pod("10.2.0.1", True)),
    ("apex NS glue", [(Z, 2), (f"ns.dns.{Z}", A)], lambda w: w.put("services", *_svc(
        "kube-dns", "kube-system", cluster_ip="10.96.0.11", ports=[{"name": "dns", "port": 53, "protocol": "UDP"}]))),
]


@pytest.mark.parametrize("what,names,change", CHANGES, ids=[c[0] for c in CHANGES])
def test_changed_names_answer_anew_from_the_next_query(what: str, names: list[tuple[str, int]], change: Any) -> None:
    w = World()
    unrelated = [(f"kubernetes.default.svc.{Z}", A), ("1.0.96.10.in-addr.arpa", PTR), (f"dns-version.{Z}", TXT)]
    before = {}
    for q in names + unrelated:
        before[q] = w.check(*q)
        w.udp(*q)  # now from the fast path
        assert w.kept(*q)
    change(w)
    changed = [q for q in names if w.check(*q) != before[q]]
    assert changed, f"{what}: the change altered none of {names}: the test proves nothing"
    for q in unrelated:
        assert w.kept(*q), f"{what}: {q} was dropped though the change cannot alter it"
        assert w.check(*q) == before[q]


def test_pod_names_insecure_follow_namespace_existence() -> None:
    w = World(pods="insecure")
    q = (f"10-9-9-9.podns.pod.{Z}", A)
    assert dns.message.from_wire(w.check(*q)).rcode() == dns.rcode.NXDOMAIN
    _ns("podns", True)(w)
    assert dns.message.from_wire(w.check(*q)).answer
    _ns("podns", False)(w)
    assert dns.message.from_wire(w.check(*q)).rcode() == dns.rcode.NXDOMAIN


def test_pod_verified_disappears() -> None:
    w = World()
    q = (f"10-2-0-1.testns.pod.{Z}", A)
    _pod("10.2.0.1", True)(w)
    assert dns.message.from_wire(w.check(*q)).answer
    _pod("10.2.0.1", False)(w)
    assert dns.message.from_wire(w.check(*q)).rcode() == dns.rcode.NXDOMAIN


def test_negative_and_apex_answers_stay_kept_with_the_current_serial() -> None:
    """An unrelated change keeps negative answers and the apex SOA in the fast path (no
    recompute), their SOA serial rewritten in place to the one a fresh answer carries."""
    w = World()
    qs = [(f"nosuch.default.svc.{Z}", A), (Z, SOA), (f"nginx.default.svc.{Z}", TXT), ("9.9.9.10.in-addr.arpa", PTR)]
    for q in qs:
        w.check(*q)
    serial = w.store.serial
    w.put("services", *_svc("other", "testns", cluster_ip="10.96.8.8"))
    assert w.store.serial > serial
    handle, w.disp.handle = w.disp.handle, None  # type: ignore[assignment]
    try:
        got = [w.udp(*q) for q in qs]  # all from the fast path: the slow path is gone
    finally:
        w.disp.handle = handle  # type: ignore[method-assign]
    for q, g in zip(qs, got, strict=True):
        assert g == w.fresh(*q)
        m = dns.message.from_wire(g)
        assert (m.authority or m.answer)[0][0].serial == w.store.serial


def test_a_change_drops_only_the_names_it_touches() -> None:
    """O(names touched): one Service change leaves every other kept answer where it was."""
    w = World()
    for i in range(200):
        w.put("services", *_svc(f"s{i}", "bulk", cluster_ip=f"10.97.0.{i + 1}"))
        w.udp(f"s{i}.bulk.svc.{Z}", A)
    n = len(w.disp.fast.entries)
    w.put("services", *_svc("s7", "bulk", cluster_ip="10.97.1.7"))
    assert len(w.disp.fast.entries) == n - 1
    assert not w.kept(f"s7.bulk.svc.{Z}", A)


def test_unknown_dependencies_are_dropped_by_any_change() -> None:
    """A kept answer nobody gave dependency keys for goes with every store change."""
    w = World()
    from kubedns.dns.query import QueryInfo

    info = QueryInfo("s", "", "udp", None, b"x", 1, 1, 0, 0, 0, 0, 0, 0.0, False)
    packet = w.wire("odd.example", A)
    w.disp.fast.remember(packet, w.fresh(f"kubernetes.default.svc.{Z}", A), info)
    w.disp.fast.keep_computed(("z", b"odd", 1), None)
    w.put("services", *_svc("other", "testns", cluster_ip="10.96.8.8"))
    assert packet[2:] not in w.disp.fast.entries
    assert ("z", b"odd", 1) not in w.disp.fast.computed


def test_sync_drops_every_cluster_answer() -> None:
    w = World()
    w.udp(f"nginx.default.svc.{Z}", A)
    w.store.synced_kinds.discard("pods")
    w.store.mark_synced("pods")  # a change the store cannot list key by key
    assert not w.disp.fast.entries and not w.disp.fast.computed


def _random_change(w: World, rng: random.Random) -> None:
    pick = rng.randrange(7)
    ns = rng.choice(["default", "testns", "rnd"])
    name = rng.choice(["nginx", "r0", "r1", "hl", "db", "alias"])
    ip = f"10.{rng.choice([96, 1, 244])}.{rng.randrange(3)}.{rng.randrange(1, 4)}"
    if pick == 0:
        w.put("services", f"{ns}/{name}", None)
    elif pick == 1:
        w.put("services", *_svc(name, ns, cluster_ip=ip, ports=[{"name": "http", "port": rng.choice([80, 81]), "protocol": "TCP"}]))
    elif pick == 2:
        w.put("services", *_svc(name, ns, headless=True, publish_not_ready=rng.random() < 0.5))
    elif pick == 3:
        eps = [{"addresses": [ip], "hostname": rng.choice(["h0", "h1", None]), "ready": rng.random() < 0.7}]
        w.put("endpointslices", *objects.endpointslice_from_raw(kubeobj.endpointslice(
            f"{name}-{rng.randrange(2)}", ns, name, endpoints=[{k: v for k, v in e.items() if v is not None} for e in eps])))
    elif pick == 4:
        _ns(ns, rng.random() < 0.5)(w)
    elif pick == 5:
        _pod(ip, rng.random() < 0.5)(w)
    else:
        w.put("services", *_svc(name, ns, type="ExternalName", external_name=rng.choice(
            [f"nginx.default.svc.{Z}", f"r0.rnd.svc.{Z}", "www.example.com"])))


def _queries() -> list[tuple[str, int]]:
    qs = [(q, t) for q, t, _, _ in TABLE if t not in (252, 251)]
    for ns in ("default", "testns", "rnd"):
        qs.append((f"{ns}.svc.{Z}", A))
        qs.append((f"{ns}.pod.{Z}", A))
        for name in ("nginx", "r0", "r1", "hl", "db", "alias"):
            for t in (A, AAAA, SRV, CNAME):
                qs.append((f"{name}.{ns}.svc.{Z}", t))
            qs.append((f"_http._tcp.{name}.{ns}.svc.{Z}", SRV))
            qs.append((f"h0.{name}.{ns}.svc.{Z}", A))
            qs.append((f"h1.{name}.{ns}.svc.{Z}", A))
    for a in (96, 1, 244):
        for b in range(3):
            for c in range(1, 4):
                qs.append((f"{c}.{b}.{a}.10.in-addr.arpa", PTR))
                qs.append((f"10-{a}-{b}-{c}.testns.pod.{Z}", A))
                qs.append((f"10-{a}-{b}-{c}.rnd.pod.{Z}", A))
    return qs


@pytest.mark.parametrize("seed", range(4))
def test_random_changes_never_leave_a_stale_answer(seed: int) -> None:
    """Property: after every random change, every kept answer (fast path and memo) equals the
    answer computed afresh."""
    rng = random.Random(seed)
    w = World()
    qs = _queries()
    for q in qs:
        w.udp(*q)
        w.tcp(*q)
    for _ in range(60):
        _random_change(w, rng)
        for q in rng.sample(qs, 40):
            if rng.random() < 0.5:
                assert w.udp(*q) == w.fresh(*q), q
            else:
                assert w.tcp(*q) == w.fresh(*q, "tcp"), q
        for key in list(w.disp.fast.entries)[:: max(1, len(w.disp.fast.entries) // 40)]:
            m = dns.message.from_wire(b"\x00\x07" + key)
            q = (m.question[0].name.to_text(), m.question[0].rdtype)
            assert w.udp(*q) == w.fresh(*q), q


def _forwarding_world() -> tuple[World, Any]:
    """A World whose block forwards (a fake upstream answering every name) and falls through
    from ``in-addr.arpa``."""
    from kubedns.forward.cache import Cache
    from kubedns.forward.chain import ForwardChain
    from kubedns.forward.config import CacheConfig
    from tests.support.dispatch import FakeForwarder

    w = World()
    clock = task.Clock()
    clock.advance(1000)
    fwd = FakeForwarder()
    chain = ForwardChain(fwd, cache=Cache(CacheConfig(ttl=30), reactor=clock), reactor=clock)
    kcfg = KubernetesConfig(pods="verified", ttl=5, zones=(Z, "in-addr.arpa"), fallthrough=("in-addr.arpa",))
    block = Block(ServerBlock(zones=("",), listen=Address("127.0.0.1", 53), kubernetes=kcfg),
                  ClusterZones(w.store, kcfg), chain)
    w.disp.blocks = [block]
    w.disp.reactor = clock
    w.disp.fast.clear()
    w.proto.startProtocol()  # the fast path reads the dispatcher's clock
    return w, fwd


def test_forwarded_answers_stay_through_cluster_changes() -> None:
    w, fwd = _forwarding_world()
    w.udp("www.example.com", A)
    assert w.kept("www.example.com", A) and fwd.asked == 1
    _nginx_moved(w)
    _ns("newns", True)(w)
    assert w.kept("www.example.com", A)
    w.udp("www.example.com", A)
    assert fwd.asked == 1 and w.disp.fast.hits() == 1


def test_a_fallen_through_answer_goes_when_its_cluster_name_starts_answering() -> None:
    """A PTR the cluster did not have went upstream (fallthrough) and was kept: once a Service
    takes that IP, the cluster's PTR answers from the next query on; other changes keep it."""
    w, fwd = _forwarding_world()
    q = ("7.7.96.10.in-addr.arpa", PTR)
    w.udp(*q)
    assert w.kept(*q) and fwd.asked == 1
    _ns("newns", True)(w)
    assert w.kept(*q)
    w.put("services", *_svc("newsvc", "default", cluster_ip="10.96.7.7"))
    assert not w.kept(*q)
    m = dns.message.from_wire(w.udp(*q))
    assert m.answer and m.answer[0][0].target.to_text() == f"newsvc.default.svc.{Z}."
    assert fwd.asked == 1
