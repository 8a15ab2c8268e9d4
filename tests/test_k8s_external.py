"""The ``k8s_external`` plugin: Services' external and load balancer addresses in an outside zone.

A table of queries against a small cluster, answered by the real UDP protocol over a Dispatcher
(as CoreDNS's plugin/k8s_external tests: A/AAAA of external IPs and ingress IPs, a CNAME for an
ingress hostname, SRV, the apex SOA/NS and ``ns1.dns``, NXDOMAIN and NODATA with the SOA,
``headless``, the kubernetes plugin's ``namespaces``, ``fallthrough``); the fast path's bytes
against the slow path's, and a Service gaining an external IP answered from the next query; the
config in both syntaxes and its errors; and a real ``twistd kubedns`` over a manifests cluster,
asked over UDP on 127.0.0.1, from a YAML config and from a Corefile.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import dns.message
import dns.rcode
import dns.rdatatype
import dns.reversename
import pytest
import yaml
from twisted.internet import task

from kubedns.config import ConfigError, parse
from kubedns.corefile import CorefileSyntaxError, parse_corefile_config
from kubedns.dns.records import ClusterZones
from kubedns.k8s import fastdecode, objects
from kubedns.k8s.store import Store
from kubedns.plugins.k8s_external import K8sExternalConfig
from kubedns.serve.protocols import DNSDatagramProtocol
from kubedns.serve.server import Block, Dispatcher
from tests.conftest import free_port, query, wait_for
from tests.dnsupstream import DNSUpstream
from tests.support import kubeobj
from tests.support.cluster import write_manifests
from tests.support.dispatch import CapturingTransport


def _svc(name: str, ns: str = "default", external: list[str] | None = None, ingress: list[dict] | None = None,
         **kw: Any) -> dict:
    obj = kubeobj.service(name, ns, **kw)
    if external:
        obj["spec"]["externalIPs"] = list(external)
    if ingress:
        obj["status"] = {"loadBalancer": {"ingress": list(ingress)}}
    return obj


def cluster() -> list[dict]:
    """What the table is answered from."""
    two_ports = [{"name": "http", "port": 80, "protocol": "TCP"}, {"name": "https", "port": 443, "protocol": "TCP"}]
    return [
        kubeobj.namespace("default"), kubeobj.namespace("kube-system"), kubeobj.namespace("hidden"),
        _svc("kube-dns", "kube-system", external=["192.0.2.53", "2001:db8::53"], cluster_ip="10.96.0.10",
             ports=[{"name": "dns", "port": 53, "protocol": "UDP"}]),
        _svc("web", external=["192.0.2.10", "2001:db8::10"], ingress=[{"ip": "203.0.113.10"}],
             cluster_ip="10.96.1.1", ports=two_ports),
        _svc("lb", type="LoadBalancer", ingress=[{"hostname": "LB.example.net."}], cluster_ip="10.96.1.2"),
        _svc("plain", cluster_ip="10.96.1.3"),
        _svc("noports", external=["192.0.2.30"], cluster_ip="10.96.1.4", ports=[]),
        _svc("db", headless=True, ports=[{"name": "pg", "port": 5432, "protocol": "TCP"}]),
        kubeobj.endpointslice("db-1", "default", "db", endpoints=[
            {"addresses": ["10.244.0.5"], "hostname": "db-0", "ready": True},
            {"addresses": ["10.244.0.6"], "ready": True},
            {"addresses": ["10.244.0.7"], "hostname": "db-2", "ready": False},
        ], ports=[{"name": "pg", "port": 5432, "protocol": "TCP"}]),
        _svc("secret", "hidden", external=["192.0.2.99"], cluster_ip="10.96.1.9"),
    ]


_FROM_RAW = {"Namespace": ("namespaces", objects.namespace_from_raw), "Service": ("services", objects.service_from_raw),
             "EndpointSlice": ("endpointslices", objects.endpointslice_from_raw)}

CONFIG = """
servers:
- zones: ["."]
  listen: 127.0.0.1:53
  kubernetes: {{zones: [cluster.local], ttl: 30, namespaces: [default, kube-system]}}
  k8s_external: {ext}
  template:
  - {{class: IN, type: A, zones: [example.net], match: ["^lb[.]example[.]net[.]$"], answer: ["{{{{ .Name }}}} 60 IN A 198.51.100.7"]}}
"""


def dispatcher(ext: Any = "example.org", objs: list[dict] | None = None):
    """(protocol, transport, store, dispatcher) of one block with ``k8s_external: ext``."""
    cfg = parse(CONFIG.format(ext=yaml.safe_dump(ext, default_flow_style=True).strip().removesuffix("...").strip()),
                "t.yaml").servers[0]
    store = Store()
    for obj in cluster() if objs is None else objs:
        kind, conv = _FROM_RAW[obj["kind"]]
        store.upsert(kind, *conv(obj))
    for kind in ("namespaces", "services", "endpointslices"):
        store.mark_synced(kind)
    assert cfg.kubernetes is not None
    disp = Dispatcher("dns://127.0.0.1:53", [Block(cfg, ClusterZones(store, cfg.kubernetes))], reactor=task.Clock())
    store.add_listener(lambda: disp.fast.store_changed(store))  # as kubedns.stores does
    proto = DNSDatagramProtocol(disp)
    tr = CapturingTransport()
    proto.transport = tr  # type: ignore[assignment]  # writes land in a list
    proto.startProtocol()
    return proto, tr, store, disp


def ask(proto: DNSDatagramProtocol, tr: CapturingTransport, name: str, rdtype: str, qid: int = 7) -> bytes:
    q = dns.message.make_query(name, rdtype, use_edns=False)
    q.id = qid
    proto.datagramReceived(q.to_wire(), ("127.0.0.1", 5353))
    return tr.socket.sent[-1][0]


def _texts(msg: dns.message.Message, section: str = "answer") -> list[str]:
    """A section's records as sorted zone-file lines (with TTL and class)."""
    return sorted(f"{rrset.name} {rrset.ttl} IN {dns.rdatatype.to_text(rrset.rdtype)} {rd.to_text()}"
                  for rrset in getattr(msg, section) for rd in rrset)


SOA = "example.org. 5 IN SOA ns1.dns.example.org. hostmaster.dns.example.org. {serial} 7200 1800 86400 5"
NX, OK = "NXDOMAIN", "NOERROR"

#: (name, type, rcode, answer, additional, authority has the SOA); as CoreDNS's handler answers
TABLE: list[tuple[str, str, str, list[str], list[str], bool]] = [
    ("web.default.example.org", "A", OK,
     ["web.default.example.org. 5 IN A 192.0.2.10", "web.default.example.org. 5 IN A 203.0.113.10"], [], False),
    ("web.default.example.org", "AAAA", OK, ["web.default.example.org. 5 IN AAAA 2001:db8::10"], [], False),
    # 6 (address, port) pairs → weight 100/6; the SRV carries the kubernetes plugin's TTL (30)
    ("web.default.example.org", "SRV", OK,
     ["web.default.example.org. 30 IN SRV 0 16 443 web.default.example.org.",
      "web.default.example.org. 30 IN SRV 0 16 80 web.default.example.org."],
     ["web.default.example.org. 5 IN A 192.0.2.10", "web.default.example.org. 5 IN A 203.0.113.10",
      "web.default.example.org. 5 IN AAAA 2001:db8::10"], False),
    ("_http._tcp.web.default.example.org", "SRV", OK,
     ["_http._tcp.web.default.example.org. 30 IN SRV 0 33 80 web.default.example.org."],
     ["web.default.example.org. 5 IN A 192.0.2.10", "web.default.example.org. 5 IN A 203.0.113.10",
      "web.default.example.org. 5 IN AAAA 2001:db8::10"], False),
    ("_https._udp.web.default.example.org", "SRV", NX, [], [], True),
    ("*._not-udp-or-tcp.web.default.example.org", "SRV", NX, [], [], True),
    ("web.default.example.org", "TXT", OK, [], [], True),
    ("web.default.example.org", "PTR", OK, [], [], True),
    ("WEB.Default.example.org", "A", OK,
     ["WEB.Default.example.org. 5 IN A 192.0.2.10", "WEB.Default.example.org. 5 IN A 203.0.113.10"], [], False),
    # without headless a third label is not looked at (CoreDNS)
    ("x.web.default.example.org", "A", OK,
     ["x.web.default.example.org. 5 IN A 192.0.2.10", "x.web.default.example.org. 5 IN A 203.0.113.10"], [], False),
    ("a.b.c.web.default.example.org", "A", NX, [], [], True),
    ("noports.default.example.org", "A", OK, ["noports.default.example.org. 5 IN A 192.0.2.30"], [], False),
    ("noports.default.example.org", "SRV", OK, [], [], True),
    ("plain.default.example.org", "A", NX, [], [], True),  # a Service without external addresses
    ("missing.default.example.org", "A", NX, [], [], True),
    ("db.default.example.org", "A", NX, [], [], True),  # headless: only with the option
    ("default.example.org", "A", OK, [], [], True),
    ("nope.example.org", "A", NX, [], [], True),
    ("secret.hidden.example.org", "A", NX, [], [], True),  # the kubernetes plugin's namespaces
    # an ingress hostname: a CNAME (kubernetes TTL), its address looked up through the block
    ("lb.default.example.org", "A", OK,
     ["lb.default.example.org. 30 IN CNAME lb.example.net.", "lb.example.net. 60 IN A 198.51.100.7"], [], False),
    ("lb.default.example.org", "SRV", OK, ["lb.default.example.org. 30 IN SRV 0 100 80 lb.example.net."],
     ["lb.example.net. 60 IN A 198.51.100.7"], False),
    # the apex and the records DNS needs
    ("example.org", "SOA", OK, [SOA], [], False),
    ("example.org", "NS", OK, ["example.org. 5 IN NS ns1.dns.example.org."],
     ["ns1.dns.example.org. 5 IN A 192.0.2.53", "ns1.dns.example.org. 5 IN AAAA 2001:db8::53"], False),
    ("example.org", "A", OK, [], [], True),
    ("ns1.dns.example.org", "A", OK, ["ns1.dns.example.org. 5 IN A 192.0.2.53"], [], False),
    ("ns1.dns.example.org", "AAAA", OK, ["ns1.dns.example.org. 5 IN AAAA 2001:db8::53"], [], False),
    ("ns1.dns.example.org", "TXT", OK, [], [], True),
    ("dns.example.org", "A", OK, [], [], True),
    ("ns2.dns.example.org", "A", NX, [], [], True),
    ("a.ns1.dns.example.org", "A", NX, [], [], True),
]


@pytest.mark.parametrize("name,rdtype,rcode,answer,additional,soa", TABLE, ids=[f"{n}/{t}" for n, t, *_ in TABLE])
def test_table(name: str, rdtype: str, rcode: str, answer: list[str], additional: list[str], soa: bool) -> None:
    proto, tr, store, _ = dispatcher()
    r = dns.message.from_wire(ask(proto, tr, name, rdtype))
    assert dns.rcode.to_text(r.rcode()) == rcode
    assert r.flags & dns.flags.AA
    assert _texts(r, "answer") == sorted(a.format(serial=store.serial) for a in answer)
    assert _texts(r, "additional") == sorted(additional)
    assert _texts(r, "authority") == ([SOA.format(serial=store.serial)] if soa else [])


HEADLESS = [
    ("db.default.example.org", "A", OK, ["db.default.example.org. 5 IN A 10.244.0.5",
                                         "db.default.example.org. 5 IN A 10.244.0.6"], []),
    ("db-0.db.default.example.org", "A", OK, ["db-0.db.default.example.org. 5 IN A 10.244.0.5"], []),
    ("10-244-0-6.db.default.example.org", "A", OK, ["10-244-0-6.db.default.example.org. 5 IN A 10.244.0.6"], []),
    ("db-2.db.default.example.org", "A", NX, [], []),  # not ready
    ("_pg._tcp.db.default.example.org", "SRV", OK,
     ["_pg._tcp.db.default.example.org. 30 IN SRV 0 50 5432 10-244-0-6.db.default.example.org.",
      "_pg._tcp.db.default.example.org. 30 IN SRV 0 50 5432 db-0.db.default.example.org."],
     ["10-244-0-6.db.default.example.org. 5 IN A 10.244.0.6", "db-0.db.default.example.org. 5 IN A 10.244.0.5"]),
    # external IPs win over endpoints; a ClusterIP Service's endpoint name needs external IPs
    ("web.default.example.org", "A", OK,
     ["web.default.example.org. 5 IN A 192.0.2.10", "web.default.example.org. 5 IN A 203.0.113.10"], []),
]


@pytest.mark.parametrize("name,rdtype,rcode,answer,additional", HEADLESS, ids=[n for n, *_ in HEADLESS])
def test_headless(name: str, rdtype: str, rcode: str, answer: list[str], additional: list[str]) -> None:
    proto, tr, _, _ = dispatcher({"zones": ["example.org"], "headless": True})
    r = dns.message.from_wire(ask(proto, tr, name, rdtype))
    assert dns.rcode.to_text(r.rcode()) == rcode
    assert _texts(r, "answer") == sorted(answer)
    assert _texts(r, "additional") == sorted(additional)


def test_options_apex_ttl_and_several_zones() -> None:
    proto, tr, store, _ = dispatcher({"zones": ["example.org", "ext.test"], "apex": "ops", "ttl": 60})
    r = dns.message.from_wire(ask(proto, tr, "ext.test", "SOA"))
    assert _texts(r) == [f"ext.test. 60 IN SOA ns1.ops.ext.test. hostmaster.ops.ext.test. {store.serial} "
                             "7200 1800 86400 60"]
    r = dns.message.from_wire(ask(proto, tr, "ns1.ops.example.org", "A"))
    assert _texts(r) == ["ns1.ops.example.org. 60 IN A 192.0.2.53"]
    r = dns.message.from_wire(ask(proto, tr, "ns1.dns.example.org", "A"))  # an ordinary name now
    assert r.rcode() == dns.rcode.NXDOMAIN
    r = dns.message.from_wire(ask(proto, tr, "web.default.ext.test", "A"))
    assert _texts(r, "answer") == ["web.default.ext.test. 60 IN A 192.0.2.10", "web.default.ext.test. 60 IN A 203.0.113.10"]


def test_ptr_of_external_addresses_in_a_reverse_zone() -> None:
    proto, tr, store, disp = dispatcher({"zones": ["example.org", "in-addr.arpa", "ip6.arpa"]})
    r = dns.message.from_wire(ask(proto, tr, "10.113.0.203.in-addr.arpa", "PTR"))  # a load balancer IP
    assert _texts(r) == ["10.113.0.203.in-addr.arpa. 5 IN PTR web.default.example.org."]
    v6 = dns.reversename.from_address("2001:db8::10").to_text(omit_final_dot=True)
    r = dns.message.from_wire(ask(proto, tr, v6, "PTR"))
    assert _texts(r) == [f"{v6}. 5 IN PTR web.default.example.org."]
    r = dns.message.from_wire(ask(proto, tr, "99.2.0.192.in-addr.arpa", "PTR"))  # hidden by namespaces
    assert r.rcode() == dns.rcode.NXDOMAIN
    assert _texts(r, "authority") == [f"in-addr.arpa. 5 IN SOA ns1.dns.in-addr.arpa. hostmaster.dns.in-addr.arpa. "
                                      f"{store.serial} 7200 1800 86400 5"]
    assert dns.message.from_wire(ask(proto, tr, "77.2.0.192.in-addr.arpa", "PTR")).rcode() == dns.rcode.NXDOMAIN
    assert len(disp.fast.entries) == 4
    obj = next(o for o in cluster() if o["kind"] == "Service" and o["metadata"]["name"] == "plain")
    obj["spec"]["externalIPs"] = ["192.0.2.77"]
    store.upsert("services", *objects.service_from_raw(obj))
    r = dns.message.from_wire(ask(proto, tr, "77.2.0.192.in-addr.arpa", "PTR"))
    assert _texts(r) == ["77.2.0.192.in-addr.arpa. 5 IN PTR plain.default.example.org."]


def test_fallthrough_only_for_nxdomain() -> None:
    # k8s_external on the cluster zone itself: its NXDOMAIN names go on to kubernetes
    proto, tr, _, _ = dispatcher({"zones": ["cluster.local"], "fallthrough": True})
    r = dns.message.from_wire(ask(proto, tr, "web.default.svc.cluster.local", "A"))
    assert _texts(r) == ["web.default.svc.cluster.local. 30 IN A 10.96.1.1"]  # no namespace "svc": kubernetes
    r = dns.message.from_wire(ask(proto, tr, "web.default.cluster.local", "A"))
    assert _texts(r) == ["web.default.cluster.local. 5 IN A 192.0.2.10", "web.default.cluster.local. 5 IN A 203.0.113.10"]
    r = dns.message.from_wire(ask(proto, tr, "web.default.cluster.local", "TXT"))  # NODATA does not go on
    assert r.rcode() == dns.rcode.NOERROR and not r.answer
    assert _texts(r, "authority")[0].startswith("cluster.local. 5 IN SOA ns1.dns.cluster.local.")
    proto, tr, _, _ = dispatcher({"zones": ["cluster.local"]})
    r = dns.message.from_wire(ask(proto, tr, "web.default.svc.cluster.local", "A"))
    assert r.rcode() == dns.rcode.NXDOMAIN
    proto, tr, _, _ = dispatcher({"zones": ["cluster.local"], "fallthrough": ["other.test"]})
    r = dns.message.from_wire(ask(proto, tr, "web.default.svc.cluster.local", "A"))
    assert r.rcode() == dns.rcode.NXDOMAIN


def test_cluster_zone_still_answered_by_kubernetes() -> None:
    proto, tr, _, _ = dispatcher()
    r = dns.message.from_wire(ask(proto, tr, "web.default.svc.cluster.local", "A"))
    assert _texts(r) == ["web.default.svc.cluster.local. 30 IN A 10.96.1.1"]


# -- the fast path ------------------------------------------------------------------------------
FAST = [(n, t) for n, t, *_ in TABLE]  # the lb. ones with the template's answer to the hostname


@pytest.mark.parametrize("name,rdtype", FAST, ids=[f"{n}/{t}" for n, t in FAST])
def test_fast_bytes_equal_slow_bytes(name: str, rdtype: str) -> None:
    proto, tr, _, disp = dispatcher()
    slow = ask(proto, tr, name, rdtype, 0x1111)
    assert len(disp.fast.entries) == 1
    disp.handle = None  # the slow path must not be reached now
    fast = ask(proto, tr, name, rdtype, 0x2222)
    assert fast[:2] == b"\x22\x22" and fast[2:] == slow[2:]
    assert disp.fast.hits() == 1


def test_a_service_gaining_an_external_ip_is_answered_from_the_next_query() -> None:
    proto, tr, store, disp = dispatcher()
    before = dns.message.from_wire(ask(proto, tr, "plain.default.example.org", "A"))
    assert before.rcode() == dns.rcode.NXDOMAIN
    web = dns.message.from_wire(ask(proto, tr, "web.default.example.org", "A"))
    assert ask(proto, tr, "plain.default.example.org", "A") and disp.fast.hits() == 1
    hits = disp.fast.hits()
    obj = next(o for o in cluster() if o["kind"] == "Service" and o["metadata"]["name"] == "plain")
    changed = copy.deepcopy(obj)
    changed["spec"]["externalIPs"] = ["192.0.2.77"]
    store.upsert("services", *objects.service_from_raw(changed))
    after = dns.message.from_wire(ask(proto, tr, "plain.default.example.org", "A"))
    assert _texts(after) == ["plain.default.example.org. 5 IN A 192.0.2.77"]
    # another Service's kept answer is not dropped by that change (only the one it depends on)
    again = dns.message.from_wire(ask(proto, tr, "web.default.example.org", "A"))
    assert disp.fast.hits() == hits + 1 and again.answer == web.answer
    # a load balancer address that appears in status is answered too
    changed["status"] = {"loadBalancer": {"ingress": [{"ip": "203.0.113.77"}]}}
    store.upsert("services", *objects.service_from_raw(changed))
    after = dns.message.from_wire(ask(proto, tr, "plain.default.example.org", "A"))
    assert _texts(after, "answer") == ["plain.default.example.org. 5 IN A 192.0.2.77",
                                       "plain.default.example.org. 5 IN A 203.0.113.77"]


def test_objects_keep_external_addresses_on_both_decoding_paths() -> None:
    import msgspec

    obj = _svc("web", external=["192.0.2.10", "bogus", "2001:db8::10"],
               ingress=[{"ip": "203.0.113.10"}, {"hostname": "LB.Example.NET."}, {"ip": "nope"}, {}])
    _, ref = objects.service_from_raw(obj)
    kind = fastdecode.FAST_KINDS["services"]
    _, fast = kind.convert(msgspec.json.decode(msgspec.json.encode(obj), type=kind.struct))
    assert ref == fast
    assert ref is not None and ref.external == ("192.0.2.10", "2001:db8::10", "203.0.113.10", "lb.example.net")
    _, none = objects.service_from_raw(_svc("plain"))
    assert none is not None and none.external == ()


@pytest.mark.parametrize("spec_ips, status", [
    ("192.0.2.1", {"loadBalancer": {"ingress": [{"ip": "203.0.113.1"}]}}),  # not a list: ignored
    ([1, "192.0.2.1"], {}),
    (["192.0.2.1"], {"loadBalancer": {"ingress": "203.0.113.1"}}),
    (["192.0.2.1"], {"loadBalancer": {"ingress": [{"ip": 7}, {"hostname": ["x"]}, {"hostname": "ok.example."}]}}),
    (None, None),
])
def test_odd_shapes_decode_alike_on_a_list_page(spec_ips: Any, status: Any) -> None:
    """A LIST page through the production parser (the structs, or the reference for what they
    cannot take) gives what the reference converter gives."""
    import json

    from kubedns.k8s.listparse import page_records

    obj = _svc("odd")
    obj["spec"]["externalIPs"] = spec_ips
    obj["status"] = status
    body = json.dumps({"kind": "ServiceList", "apiVersion": "v1", "metadata": {"resourceVersion": "1"},
                       "items": [obj]})
    got = page_records(body, fastdecode.FAST_KINDS["services"], objects.service_from_raw, {})
    assert got == [objects.service_from_raw(obj)]


# -- config -------------------------------------------------------------------------------------
def test_corefile_and_yaml_agree() -> None:
    core = parse_corefile_config(
        ".:1053 {\n kubernetes cluster.local\n k8s_external example.org ext.test {\n  apex ops\n  ttl 60\n"
        "  headless\n  fallthrough ext.test\n }\n}\n", "Corefile")
    yml = parse(yaml.safe_dump({"servers": [{"listen": ":1053", "kubernetes": {"zones": ["cluster.local"]},
                                             "k8s_external": {"zones": ["example.org", "ext.test"], "apex": "ops",
                                                              "ttl": 60, "headless": True,
                                                              "fallthrough": ["ext.test"]}}]}), "c.yaml")
    want = K8sExternalConfig(("example.org", "ext.test"), "ops", 60, True, ("ext.test",))
    assert core.servers[0].k8s_external == yml.servers[0].k8s_external == want
    bare = parse_corefile_config("example.org cluster.local {\n kubernetes cluster.local\n k8s_external\n}\n", "Corefile")
    assert bare.servers[0].k8s_external == K8sExternalConfig()  # the block's zones, dns, 5 s
    ft = parse_corefile_config(".:53 {\n kubernetes\n k8s_external example.org {\n  fallthrough\n }\n}\n", "Corefile")
    assert ft.servers[0].k8s_external == K8sExternalConfig(("example.org",), fallthrough=("",))
    assert parse("servers: [{kubernetes: {}, k8s_external: example.org}]").servers[0].k8s_external == \
        K8sExternalConfig(("example.org",))


@pytest.mark.parametrize("block, expected", [
    (" k8s_external {\n  ttl 3601\n }", "Corefile:4: k8s_external: ttl: expected a whole number from 0 to 3600, got 3601"),
    (" k8s_external {\n  ttl\n }", "Corefile:4: k8s_external: ttl: expected one TTL"),
    (" k8s_external {\n  apex\n }", "Corefile:4: k8s_external: apex: expected one APEX"),
    (" k8s_external {\n  nope\n }", "Corefile:4: k8s_external: nope: expected an option kubedns supports for "
                                      "k8s_external (apex, fallthrough, headless, ttl)"),
])
def test_corefile_errors(block: str, expected: str) -> None:
    with pytest.raises((CorefileSyntaxError, ConfigError)) as e:
        parse_corefile_config(".:53 {\n kubernetes\n" + block + "\n}\n", "Corefile")
    assert str(e.value).startswith(expected), str(e.value)


def test_without_kubernetes_is_an_error() -> None:
    with pytest.raises(ConfigError) as e:
        parse("servers: [{forward: {to: [127.0.0.1]}, k8s_external: example.org}]")
    assert "k8s_external in a block with kubernetes" in str(e.value)


# -- a real server --------------------------------------------------------------------------------
COREFILE = """\
.:{port} {{
    kubernetes cluster.local {{
        manifests {manifests}
    }}
    k8s_external example.org {{
        headless
    }}
    forward . {upstream}
}}
"""


@pytest.mark.parametrize("syntax", ["yaml", "corefile"])
def test_running_server(kubedns_process: Any, tmp_path: Path, syntax: str) -> None:
    objs = cluster()
    manifests = write_manifests(tmp_path / "cluster.yaml", objs)
    port = free_port()
    with DNSUpstream(host="127.0.0.1") as up:  # the load balancer's hostname lives there
        up.add("lb.example.net", "A", "198.51.100.7", ttl=120)
        if syntax == "corefile":
            config: Any = COREFILE.format(port=port, manifests=manifests, upstream=up.address)
        else:
            config = {"servers": [{"zones": ["."], "listen": f"127.0.0.1:{port}",
                                   "kubernetes": {"zones": ["cluster.local"], "manifests": manifests},
                                   "k8s_external": {"zones": ["example.org"], "headless": True},
                                   "forward": {"to": [up.address]}}]}
        p = kubedns_process(config)
        p.wait_listening(port)
        r = wait_for(lambda: (m := query(port, "web.default.example.org", "A")).answer and m)
        assert _texts(r) == ["web.default.example.org. 5 IN A 192.0.2.10", "web.default.example.org. 5 IN A 203.0.113.10"]
        r = query(port, "_https._tcp.web.default.example.org", "SRV")
        assert _texts(r) == ["_https._tcp.web.default.example.org. 5 IN SRV 0 33 443 web.default.example.org."]
        r = query(port, "db-0.db.default.example.org", "A")
        assert _texts(r) == ["db-0.db.default.example.org. 5 IN A 10.244.0.5"]
        r = query(port, "example.org", "NS")
        assert _texts(r) == ["example.org. 5 IN NS ns1.dns.example.org."]
        assert _texts(r, "additional") == ["ns1.dns.example.org. 5 IN A 192.0.2.53",
                                           "ns1.dns.example.org. 5 IN AAAA 2001:db8::53"]
        r = query(port, "lb.default.example.org", "A")  # CNAME, then the address from upstream
        assert [rr.to_text() for rr in r.answer] == ["lb.default.example.org. 5 IN CNAME lb.example.net.",
                                                     "lb.example.net. 120 IN A 198.51.100.7"]
        r = query(port, "web.default.svc.cluster.local", "A")
        assert _texts(r) == ["web.default.svc.cluster.local. 5 IN A 10.96.1.1"]
        r = query(port, "plain.default.example.org", "A")
        assert r.rcode() == dns.rcode.NXDOMAIN and r.flags & dns.flags.AA
        assert _texts(r, "authority")[0].startswith("example.org. 5 IN SOA ns1.dns.example.org. hostmaster.dns")
        # the Service gains an external IP: the next query after the file is read again has it
        plain = next(o for o in objs if o["kind"] == "Service" and o["metadata"]["name"] == "plain")
        plain["spec"]["externalIPs"] = ["192.0.2.77"]
        write_manifests(tmp_path / "cluster.yaml", objs)
        r = wait_for(lambda: (m := query(port, "plain.default.example.org", "A")).answer and m)
        assert _texts(r) == ["plain.default.example.org. 5 IN A 192.0.2.77"]
        assert up.count("lb.example.net", "A") >= 1 and not up.count("plain.default.example.org")
