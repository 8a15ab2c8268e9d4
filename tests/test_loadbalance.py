"""``loadbalance``: A, AAAA and MX records in a new order per answer, as CoreDNS's plugin.

End to end, a real ``twistd kubedns`` answers a headless Service over real UDP and TCP: over 40
answers the first record varies and the set never does (UDP repeats are served by the fast path,
TCP answers by the plugin chain every time); without ``loadbalance`` the order never changes.
Forwarded answers (a tests/dnsupstream.py upstream on loopback) are reordered too.  In process,
the fast path is driven through the real UDP protocol: its hits come from the pre-encoded
entry (the slow path is not called) and still rotate, byte for byte the same records.  The
grouping (CNAMEs first, then other types, addresses, MX) and what is left alone (errors, zone
transfers) are checked on the plugin itself, and the config forms on the YAML parser.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import dns.message
import dns.rcode
import dns.rdatatype
import pytest
from twisted.internet import task
from twisted.names import dns as tdns

from kubedns.config import ConfigError, KubernetesConfig, LoadbalanceConfig, ServerBlock, parse
from kubedns.configbase import Address
from kubedns.dns.records import Answer, ClusterZones
from kubedns.k8s.store import Store
from kubedns.plugins.base import Reply
from kubedns.plugins.loadbalance import LoadbalancePlugin, arrange, rotations
from kubedns.serve.protocols import DNSDatagramProtocol
from kubedns.serve.server import Block, Dispatcher
from tests.conftest import free_port, query
from tests.dnsupstream import DNSUpstream
from tests.support import kubeobj

pytestmark = pytest.mark.timeout(90)

N = 12  # endpoints of the headless Service
ADDRS = [f"10.244.7.{i + 1}" for i in range(N)]
NAME = "web.default.svc.cluster.local"


def _objects() -> list[dict]:
    return [
        kubeobj.namespace("default"),
        kubeobj.service("web", "default", headless=True),
        kubeobj.endpointslice("web-1", "default", "web",
                              endpoints=[{"addresses": [a], "ready": True} for a in ADDRS]),
    ]


def _config(port: int, manifests: Path, lb: Any, upstream: str | None = None) -> dict:
    block: dict[str, Any] = {
        "zones": ["."],
        "listen": f"127.0.0.1:{port}",
        "kubernetes": {"zones": ["cluster.local"], "manifests": str(manifests)},
    }
    if lb is not None:
        block["loadbalance"] = lb
    if upstream is not None:
        block["forward"] = {"to": [upstream]}
        block["cache"] = {"size": 100}
    return {"servers": [block]}


def _addresses(r: dns.message.Message) -> list[str]:
    return [rd.address for rs in r.answer for rd in rs]


@pytest.fixture
def manifests(tmp_path: Path) -> Path:
    import yaml

    p = tmp_path / "cluster.yaml"
    p.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": _objects()}))
    return p


@pytest.mark.parametrize("lb", ["round_robin", {"policy": "round_robin"}, {}], ids=["string", "policy", "empty"])
def test_headless_answers_rotate_over_udp_and_tcp(kubedns_process: Any, manifests: Path, lb: Any) -> None:
    port = free_port()
    p = kubedns_process(_config(port, manifests, lb))
    p.wait_listening(port)
    for tcp in (False, True):
        firsts = []
        for _ in range(40):
            r = query(port, NAME, "A", tcp=tcp)
            assert r.rcode() == dns.rcode.NOERROR
            got = _addresses(r)
            assert sorted(got) == sorted(ADDRS)  # the set never changes
            firsts.append(got[0])
        assert len(set(firsts)) >= 4, (tcp, firsts)  # the first record varies


def test_without_loadbalance_the_order_never_changes(kubedns_process: Any, manifests: Path) -> None:
    port = free_port()
    p = kubedns_process(_config(port, manifests, None))
    p.wait_listening(port)
    orders = {tuple(_addresses(query(port, NAME, "A", tcp=tcp))) for tcp in (False, True) for _ in range(20)}
    assert len(orders) == 1


def test_forwarded_answers_are_reordered(kubedns_process: Any, manifests: Path) -> None:
    up = DNSUpstream(host="127.0.0.1").start()
    try:
        addrs = [f"192.0.2.{i}" for i in range(1, 9)]
        up.add("many.example.org", "A", *addrs, ttl=300)
        port = free_port()
        p = kubedns_process(_config(port, manifests, "round_robin", upstream=up.address))
        p.wait_listening(port)
        firsts = []
        for i in range(40):
            r = query(port, "many.example.org", "A", tcp=i % 2 == 1)
            got = _addresses(r)
            assert sorted(got) == sorted(addrs)
            firsts.append(got[0])
        assert len(set(firsts)) >= 3, firsts
        assert up.count("many.example.org", "A") <= 2  # the block's cache answered the rest
    finally:
        up.stop()


# -- the fast path, in process ------------------------------------------------------------------
class _Sock:
    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def sendto(self, data: bytes, addr: Any) -> None:
        self.sent.append(data)


class _Transport:
    def __init__(self) -> None:
        self.socket = _Sock()


def _dispatcher(lb: bool) -> tuple[Dispatcher, DNSDatagramProtocol, _Sock]:
    from kubedns.k8s import objects

    store = Store(required=("namespaces", "services", "endpointslices"))
    parse_raw = {"Namespace": ("namespaces", objects.namespace_from_raw),
                 "Service": ("services", objects.service_from_raw),
                 "EndpointSlice": ("endpointslices", objects.endpointslice_from_raw)}
    for o in _objects():
        kind, from_raw = parse_raw[o["kind"]]
        store.upsert(kind, *from_raw(o))
    for kind in store.required:
        store.mark_synced(kind)
    kcfg = KubernetesConfig(zones=("cluster.local",))
    cfg = ServerBlock(zones=("",), listen=Address("127.0.0.1", 53), kubernetes=kcfg,
                      loadbalance=LoadbalanceConfig() if lb else None)
    disp = Dispatcher("dns://127.0.0.1:53", [Block(cfg, ClusterZones(store, kcfg))], reactor=task.Clock())
    proto = DNSDatagramProtocol(disp)
    tr = _Transport()
    proto.transport = tr
    proto.startProtocol()
    return disp, proto, tr.socket


def _wire(qid: int, name: str = NAME) -> bytes:
    q = dns.message.make_query(name, "A", use_edns=False)
    q.id = qid
    return q.to_wire()


def test_fast_path_hits_rotate_the_same_records() -> None:
    disp, proto, sock = _dispatcher(lb=True)
    proto.datagramReceived(_wire(1), ("127.0.0.1", 5000))  # slow path: shuffled, kept with its rotations
    slow_calls = []
    disp.handle = lambda *a: slow_calls.append(a)  # type: ignore[method-assign]
    for i in range(2, 42):
        proto.datagramReceived(_wire(i), ("127.0.0.1", 5000))
    assert not slow_calls  # every repeat was a fast-path hit
    assert sum(e[1] for e in disp.fast.entries.values()) == 40
    bodies = [m[2:] for m in sock.sent]
    firsts = set()
    for raw in sock.sent:
        r = dns.message.from_wire(raw)
        got = _addresses(r)
        assert sorted(got) == sorted(ADDRS) and len(raw) == len(sock.sent[0])
        firsts.add(got[0])
    assert len(firsts) >= 4
    assert len(set(bodies)) > 1  # byte level: other orders of the same records


def test_fast_path_without_loadbalance_serves_one_order() -> None:
    disp, proto, sock = _dispatcher(lb=False)
    for i in range(1, 11):
        proto.datagramReceived(_wire(i), ("127.0.0.1", 5000))
    assert len({m[2:] for m in sock.sent}) == 1


def test_rotations_are_counted_in_the_fast_path_byte_budget() -> None:
    disp, proto, sock = _dispatcher(lb=True)
    proto.datagramReceived(_wire(1), ("127.0.0.1", 5000))
    (key, entry), = disp.fast.entries.items()
    bodies = entry[3].bodies
    assert disp.fast.bytes == sum(len(b) + 2 for b in bodies) + len(key) + disp.fast.entry_overhead - 2 * (len(bodies) - 1)
    disp.fast.clear()
    assert disp.fast.bytes == 0


# -- the plugin itself ----------------------------------------------------------------------------
def _rr(name: str, rtype: int, data: Any) -> tdns.RRHeader:
    return tdns.RRHeader(name.encode(), rtype, payload=data)


def _a(ip: str, name: str = "x") -> tdns.RRHeader:
    return _rr(name, tdns.A, tdns.Record_A(ip))


def test_cnames_first_then_other_types_then_addresses_then_mx() -> None:
    records = [
        _rr("x", tdns.MX, tdns.Record_MX(10, b"m1")), _a("1.1.1.1"), _rr("x", tdns.TXT, tdns.Record_TXT(b"t")),
        _rr("x", tdns.CNAME, tdns.Record_CNAME(b"y")), _rr("x", tdns.AAAA, tdns.Record_AAAA("::1")),
        _rr("x", tdns.MX, tdns.Record_MX(20, b"m2")), _a("2.2.2.2"),
    ]
    rng = random.Random(7)
    for _ in range(20):
        out = arrange(records, lambda g, _k: (rng.shuffle(g), g)[1])
        types = [rr.type for rr in out]
        assert types[:2] == [tdns.CNAME, tdns.TXT]
        assert set(types[2:5]) == {tdns.A, tdns.AAAA} and types[5:] == [tdns.MX, tdns.MX]
        assert sorted(map(id, out)) == sorted(map(id, records))
    assert [rr.type for rr in records][0] == tdns.MX  # the input list is never reordered


def test_errors_and_zone_transfers_are_left_alone() -> None:
    plugin = LoadbalancePlugin(rng=random.Random(1))
    recs = [_a(f"10.0.0.{i}") for i in range(10)]
    nx = Reply(Answer(rcode=tdns.ENAME, answers=list(recs)), "", "kubernetes")
    assert plugin.reorder(nx) is nx
    ok = Reply(Answer(answers=list(recs), additional=list(recs)), "", "kubernetes")
    seen = {tuple(map(id, plugin.reorder(ok).answer.answers)) for _ in range(10)}
    assert len(seen) > 1 and ok.answer.answers == recs  # a new list each time, the kept one untouched
    assert plugin.reorder(ok).rotate


def test_rotations_spread_the_first_record_over_the_group() -> None:
    recs = [_a(f"10.0.0.{i}") for i in range(40)]
    rs = rotations(Answer(answers=recs))
    assert len(rs) == 16
    firsts = [r.answers[0] for r in rs]
    assert len(set(map(id, firsts))) == 16 and rs[0].answers is recs
    assert all(sorted(map(id, r.answers)) == sorted(map(id, recs)) for r in rs)
    assert len(rotations(Answer(answers=recs[:1]))) == 1


@pytest.mark.parametrize("text,policy", [
    ("loadbalance: round_robin", "round_robin"),
    ("loadbalance: {policy: round_robin}", "round_robin"),
    ("loadbalance: {}", "round_robin"),
    ("loadbalance:", "round_robin"),
    ("loadbalance: false", None),
])
def test_config_forms(text: str, policy: str | None) -> None:
    cfg = parse(f"servers:\n- forward: {{to: ['127.0.0.1']}}\n  {text}\n")
    lb = cfg.servers[0].loadbalance
    assert (lb.policy if lb is not None else None) == policy


@pytest.mark.parametrize("text,where,expected", [
    ("loadbalance: weighted", "servers[0].loadbalance", "one of round_robin"),
    ("loadbalance: {policy: random}", "servers[0].loadbalance.policy", "one of round_robin"),
    ("loadbalance: {prefer: 10.0.0.0/8}", "servers[0].loadbalance.prefer", "one of the keys policy"),
    ("loadbalance: 3", "servers[0].loadbalance", "round_robin, or a mapping with policy"),
])
def test_config_errors(text: str, where: str, expected: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse(f"servers:\n- forward: {{to: ['127.0.0.1']}}\n  {text}\n", "c.yaml")
    msg = str(e.value)
    assert msg.startswith(f"c.yaml: {where}: expected {expected}") and "\n" not in msg
