"""Table-driven answers of the cluster zones, like CoreDNS's handler_test.go, against a filled store.

Each row is (qname, qtype) → (rcode, answer records as text, authority types); the table and the
store it is answered from are in ``tests/support/records_table.py``, shared with other tests.  The end-to-end
tests over real sockets are in test_server_e2e.py; these pin the spec's semantics exactly.
"""

from __future__ import annotations

import pytest
from twisted.names import dns

from kubedns.config import KubernetesConfig
from kubedns.dns.records import ClusterZones, _ip_from_dashes
from kubedns.k8s import objects
from kubedns.k8s.store import Store
from tests.support import kubeobj
from tests.support.records_table import NX, OK, TABLE, fill


def _zones(pods: str = "insecure", **kw) -> ClusterZones:
    store = Store(required=("namespaces", "services", "endpointslices", "pods"))
    fill(store)
    return ClusterZones(store, KubernetesConfig(pods=pods, ttl=5, **kw))


def _text(rr: dns.RRHeader) -> str:
    p = rr.payload
    if rr.type == dns.A or rr.type == dns.AAAA:
        v = p.dottedQuad() if rr.type == dns.A else __import__("socket").inet_ntop(10, p.address)
    elif rr.type == dns.SRV:
        v = f"{p.priority} {p.weight} {p.port} {p.target.name.decode()}"
    elif rr.type in (dns.PTR, dns.CNAME, dns.NS):
        v = p.name.name.decode()
    elif rr.type == dns.TXT:
        v = b"".join(p.data).decode()
    else:
        v = ""
    return f"{rr.name.name.decode()} {dns.QUERY_TYPES.get(rr.type)} {v}".strip()


@pytest.mark.parametrize("qname,qtype,rcode,answers", TABLE)
def test_cluster_answers(qname: str, qtype: int, rcode: int, answers: list[str]) -> None:
    zones = _zones()
    res = zones.answer(qname.encode(), qtype)
    assert res is not None
    _, ans = res
    assert ans.rcode == rcode
    assert [_text(rr) for rr in ans.answers] == answers
    assert ans.authoritative
    if not answers:  # NXDOMAIN and NODATA both carry the zone SOA
        assert [rr.type for rr in ans.authority] == [dns.SOA]


def test_srv_additional_records_carry_targets() -> None:
    _, ans = _zones().answer(b"_pg._tcp.db.testns.svc.cluster.local", dns.SRV)
    assert sorted(_text(rr) for rr in ans.additional) == [
        "10-244-1-2.db.testns.svc.cluster.local A 10.244.1.2",
        "db-0.db.testns.svc.cluster.local A 10.244.1.1",
    ]


def test_headless_srv_pairs_ports_per_slice() -> None:
    _, ans = _zones().answer(b"_http._tcp.split.testns.svc.cluster.local", dns.SRV)
    assert [_text(rr) for rr in ans.additional] == [
        "10-244-3-1.split.testns.svc.cluster.local A 10.244.3.1",
        "10-244-3-2.split.testns.svc.cluster.local A 10.244.3.2",
    ]


def test_owner_name_echoes_query_case() -> None:
    _, ans = _zones().answer(b"NGINX.Default.svc.Cluster.Local", dns.A)
    assert ans.answers[0].name.name == b"NGINX.Default.svc.Cluster.Local"


@pytest.mark.parametrize("qname", [b"CLUSTER.Local", b"cluster.local", b"10.IN-ADDR.arpa"])
def test_apex_soa_owner_echoes_query_case(qname: bytes) -> None:
    zones = _zones(zones=("cluster.local", "10.in-addr.arpa"))
    zone, ans = zones.answer(qname, dns.SOA)
    assert [rr.name.name for rr in ans.answers] == [qname]
    assert ans.answers[0].payload is zones.soa(zone).payload
    # the authority SOA of a negative keeps the zone's own name
    _, neg = zones.answer(qname, dns.A)
    assert [rr.name.name for rr in neg.authority] == [zone.encode()]


def test_name_outside_zones_is_not_ours() -> None:
    assert _zones().answer(b"google.com", dns.A) is None


def test_pods_verified_requires_pod() -> None:
    zones = _zones(pods="verified")
    assert zones.answer(b"10-244-0-5.default.pod.cluster.local", dns.A)[1].rcode == OK
    assert zones.answer(b"10-244-0-99.default.pod.cluster.local", dns.A)[1].rcode == NX
    assert zones.answer(b"10-244-0-5.testns.pod.cluster.local", dns.A)[1].rcode == NX


@pytest.mark.parametrize("label,ip", [
    ("10-0-0-1", "10.0.0.1"),
    ("2001-db8--1", "2001:db8::1"),  # exactly three dashes, but "--": IPv6
    ("1-2-3--4", "1:2:3::4"),
    ("--1", "::1"),
    ("fd00-0-0-0-0-0-0-1", "fd00::1"),
    ("10-0-0-256", None),
    ("10-0-0", None),
    ("1-2-3-4-5", None),
    ("fe80--1%eth0", None),  # a scope id is no pod IP
    ("", None),
])
def test_ip_from_dashes(label: str, ip: str | None) -> None:
    assert _ip_from_dashes(label) == ip


def test_pods_disabled_is_nxdomain() -> None:
    assert _zones(pods="disabled").answer(b"10-244-0-5.default.pod.cluster.local", dns.A)[1].rcode == NX


@pytest.mark.parametrize("pods", ["disabled", "insecure", "verified"])
def test_pod_apex_is_nodata_in_every_mode(pods: str) -> None:
    """``pod.<zone>`` itself exists (NODATA with SOA) as in CoreDNS; below it ``disabled`` is
    NXDOMAIN even for a namespace that exists."""
    zones = _zones(pods=pods)
    _, ans = zones.answer(b"pod.cluster.local", dns.A)
    assert (ans.rcode, ans.answers, [rr.type for rr in ans.authority]) == (OK, [], [dns.SOA])
    _, ans = zones.answer(b"default.pod.cluster.local", dns.A)
    assert ans.rcode == (NX if pods == "disabled" else OK)


def test_pods_verified_ignores_terminating_pod() -> None:
    """A Pod with deletionTimestamp set is ignored, as CoreDNS does: first answered, then the
    MODIFIED object that starts its deletion takes the name away."""
    zones = _zones(pods="verified")
    name = b"10-244-0-5.default.pod.cluster.local"
    assert zones.answer(name, dns.A)[1].rcode == OK
    terminating = kubeobj.pod("web", "default", "10.244.0.5", deletion_timestamp="2026-01-01T00:00:00Z")
    assert zones.store.upsert("pods", *objects.pod_from_raw(terminating))
    assert zones.answer(name, dns.A)[1].rcode == NX


def test_dns_version_ttl_is_28800() -> None:
    """The spec's example and CoreDNS give dns-version.<zone> TTL 28800, whatever ``ttl`` is."""
    for qtype in (dns.TXT, dns.ANY):
        _, ans = _zones().answer(b"dns-version.cluster.local", qtype)
        assert [(rr.ttl, rr.payload.ttl) for rr in ans.answers] == [(28800, 28800)]


@pytest.mark.parametrize("qtype", [dns.AXFR, dns.IXFR])
@pytest.mark.parametrize("qname", [b"cluster.local", b"nginx.default.svc.cluster.local", b"in-addr.arpa"])
@pytest.mark.parametrize("synced", [True, False])
def test_zone_transfers_are_refused(qname: bytes, qtype: int, synced: bool) -> None:
    """AXFR/IXFR: REFUSED, no records, not authoritative, as CoreDNS without ``transfer``
    (which refuses before looking at its sync state)."""
    if synced:
        zones = _zones(zones=("cluster.local", "in-addr.arpa"))
    else:
        zones = ClusterZones(Store(), KubernetesConfig(zones=("cluster.local", "in-addr.arpa")))
    _, ans = zones.answer(qname, qtype)
    assert (ans.rcode, ans.answers, ans.authority, ans.additional) == (dns.EREFUSED, [], [], [])
    assert not ans.authoritative


def test_servfail_before_sync_never_nxdomain() -> None:
    store = Store()
    zones = ClusterZones(store, KubernetesConfig())
    assert zones.answer(b"nginx.default.svc.cluster.local", dns.A)[1].rcode == dns.ESERVER
    assert zones.answer(b"missing.default.svc.cluster.local", dns.A)[1].rcode == dns.ESERVER


def test_negative_soa_ttl_and_serial_moves() -> None:
    zones = _zones()
    _, ans = zones.answer(b"missing.default.svc.cluster.local", dns.A)
    soa = ans.authority[0]
    assert soa.ttl == 5 and soa.payload.minimum == 5
    before = soa.payload.serial
    zones.store.upsert("services", *objects.service_from_raw(kubeobj.service("new", "default", cluster_ip="10.96.9.9")))
    _, ans = zones.answer(b"missing.default.svc.cluster.local", dns.A)
    assert ans.authority[0].payload.serial > before


def test_fallthrough_only_for_listed_zones() -> None:
    zones = _zones(fallthrough=("in-addr.arpa",))
    zone, ans = zones.answer(b"9.9.9.10.in-addr.arpa", dns.PTR)
    assert zones.falls_through(zone, ans)
    zone, ans = zones.answer(b"missing.default.svc.cluster.local", dns.A)
    assert not zones.falls_through(zone, ans)


def test_unchanged_object_does_not_bump_generation() -> None:
    store = Store()
    raw = kubeobj.service("a", "default", cluster_ip="10.0.0.1")
    store.upsert("services", *objects.service_from_raw(raw))
    gen = store.generation
    raw["metadata"]["annotations"] = {"x": "y"}
    assert not store.upsert("services", *objects.service_from_raw(raw))
    assert store.generation == gen


def test_deleting_service_removes_ptr() -> None:
    zones = _zones()
    zones.store.delete("services", "default/nginx")
    assert zones.answer(b"100.0.96.10.in-addr.arpa", dns.PTR)[1].rcode == NX


# -- kubernetes options: namespaces, endpoint_pod_names, ignore_empty_service, noendpoints -----------


def _fill_options(store: Store) -> None:
    """Objects the option rows below ask about, on top of :func:`~tests.support.records_table.fill`."""
    store.upsert("namespaces", *objects.namespace_from_raw(kubeobj.namespace("other")))
    for raw in (
        kubeobj.service("web", "other", cluster_ip="10.96.5.5", ports=[{"name": "http", "port": 80, "protocol": "TCP"}]),
        kubeobj.service("idle", "testns", cluster_ip="10.96.0.50", ports=[{"name": "http", "port": 80, "protocol": "TCP"}]),
        kubeobj.service("down", "testns", cluster_ip="10.96.0.51"),
        kubeobj.service("pods", "testns", headless=True, ports=[{"name": "http", "port": 80, "protocol": "TCP"}]),
    ):
        store.upsert("services", *objects.service_from_raw(raw))
    for raw in (
        kubeobj.endpointslice("web-1", "other", "web", endpoints=[{"addresses": ["10.244.5.1"], "targetRef": "web-x1"}]),
        kubeobj.endpointslice("down-1", "testns", "down", endpoints=[{"addresses": ["10.244.6.1"], "ready": False}]),
        kubeobj.endpointslice("pods-v6", "testns", "pods", endpoints=[{"addresses": ["fd00:4::"]}], address_type="IPv6"),
        kubeobj.endpointslice("pods-1", "testns", "pods", endpoints=[
            {"addresses": ["10.244.4.1"], "targetRef": "web-7d4b9-x2k4p"},
            {"addresses": ["10.244.4.2"], "hostname": "named", "targetRef": "web-7d4b9-zzzzz"},
            {"addresses": ["10.244.4.3"]},  # no Pod behind it
            {"addresses": ["10.244.4.4"], "targetRef": "has.a.dot"},  # not one label
            {"addresses": ["10.244.4.5"], "targetRef": "p" * 64},  # too long for a label
        ]),
    ):
        store.upsert("endpointslices", *objects.endpointslice_from_raw(raw))


def _option_zones(**kw) -> ClusterZones:
    zones = _zones(**kw)
    _fill_options(zones.store)
    return zones


P = "pods.testns.svc.cluster.local"
#: (option, qname, qtype, (rcode, answers) with the option, (rcode, answers) without it)
OPTION_TABLE = [
    # namespaces: only the listed ones exist for DNS, everything in another one is NXDOMAIN
    ({"namespaces": ("default", "testns")}, "web.other.svc.cluster.local", dns.A,
     (NX, []), (OK, ["web.other.svc.cluster.local A 10.96.5.5"])),
    ({"namespaces": ("default", "testns")}, "other.svc.cluster.local", dns.A, (NX, []), (OK, [])),
    ({"namespaces": ("default", "testns")}, "_http._tcp.web.other.svc.cluster.local", dns.SRV,
     (NX, []), (OK, ["_http._tcp.web.other.svc.cluster.local SRV 0 100 80 web.other.svc.cluster.local"])),
    ({"namespaces": ("default", "testns")}, "5.5.96.10.in-addr.arpa", dns.PTR,
     (NX, []), (OK, ["5.5.96.10.in-addr.arpa PTR web.other.svc.cluster.local"])),
    ({"namespaces": ("default", "testns")}, "1.5.244.10.in-addr.arpa", dns.PTR,
     (NX, []), (OK, ["1.5.244.10.in-addr.arpa PTR 10-244-5-1.web.other.svc.cluster.local"])),
    ({"namespaces": ("default", "testns")}, "10-1-1-1.other.pod.cluster.local", dns.A,
     (NX, []), (OK, ["10-1-1-1.other.pod.cluster.local A 10.1.1.1"])),
    ({"namespaces": ("default", "testns")}, "other.pod.cluster.local", dns.A, (NX, []), (OK, [])),
    # ... and the listed ones answer as before
    ({"namespaces": ("default", "testns")}, "nginx.default.svc.cluster.local", dns.A,
     (OK, ["nginx.default.svc.cluster.local A 10.96.0.100"]), (OK, ["nginx.default.svc.cluster.local A 10.96.0.100"])),
    ({"namespaces": ("other",)}, "ns.dns.cluster.local", dns.A,  # the NS target is not a Service name
     (OK, ["ns.dns.cluster.local A 10.96.0.10"]), (OK, ["ns.dns.cluster.local A 10.96.0.10"])),
    # endpoint_pod_names: an endpoint without a hostname is named by its Pod
    ({"endpoint_pod_names": True}, f"web-7d4b9-x2k4p.{P}", dns.A, (OK, [f"web-7d4b9-x2k4p.{P} A 10.244.4.1"]), (NX, [])),
    ({"endpoint_pod_names": True}, f"10-244-4-1.{P}", dns.A, (NX, []), (OK, [f"10-244-4-1.{P} A 10.244.4.1"])),
    ({"endpoint_pod_names": True}, f"named.{P}", dns.A,  # a hostname still wins
     (OK, [f"named.{P} A 10.244.4.2"]), (OK, [f"named.{P} A 10.244.4.2"])),
    ({"endpoint_pod_names": True}, f"web-7d4b9-zzzzz.{P}", dns.A, (NX, []), (NX, [])),
    ({"endpoint_pod_names": True}, f"10-244-4-3.{P}", dns.A,  # no Pod: the dashed IP
     (OK, [f"10-244-4-3.{P} A 10.244.4.3"]), (OK, [f"10-244-4-3.{P} A 10.244.4.3"])),
    ({"endpoint_pod_names": True}, f"10-244-4-4.{P}", dns.A,
     (OK, [f"10-244-4-4.{P} A 10.244.4.4"]), (OK, [f"10-244-4-4.{P} A 10.244.4.4"])),
    ({"endpoint_pod_names": True}, f"10-244-4-5.{P}", dns.A,
     (OK, [f"10-244-4-5.{P} A 10.244.4.5"]), (OK, [f"10-244-4-5.{P} A 10.244.4.5"])),
    ({"endpoint_pod_names": True}, f"_http._tcp.{P}", dns.SRV, (OK, [
        f"_http._tcp.{P} SRV 0 16 80 fd00-4--0.{P}",
        f"_http._tcp.{P} SRV 0 16 80 web-7d4b9-x2k4p.{P}", f"_http._tcp.{P} SRV 0 16 80 named.{P}",
        f"_http._tcp.{P} SRV 0 16 80 10-244-4-3.{P}", f"_http._tcp.{P} SRV 0 16 80 10-244-4-4.{P}",
        f"_http._tcp.{P} SRV 0 16 80 10-244-4-5.{P}",
    ]), (OK, [
        f"_http._tcp.{P} SRV 0 16 80 fd00-4--0.{P}",
        f"_http._tcp.{P} SRV 0 16 80 10-244-4-1.{P}", f"_http._tcp.{P} SRV 0 16 80 named.{P}",
        f"_http._tcp.{P} SRV 0 16 80 10-244-4-3.{P}", f"_http._tcp.{P} SRV 0 16 80 10-244-4-4.{P}",
        f"_http._tcp.{P} SRV 0 16 80 10-244-4-5.{P}",
    ])),
    # an IPv6 address ending in "::" is named with a final 0, as CoreDNS ("fd00-4--" would end in "-")
    ({}, f"fd00-4--0.{P}", dns.AAAA, (OK, [f"fd00-4--0.{P} AAAA fd00:4::"]), (OK, [f"fd00-4--0.{P} AAAA fd00:4::"])),
    ({"endpoint_pod_names": True}, "1.4.244.10.in-addr.arpa", dns.PTR,
     (OK, [f"1.4.244.10.in-addr.arpa PTR web-7d4b9-x2k4p.{P}"]), (OK, [f"1.4.244.10.in-addr.arpa PTR 10-244-4-1.{P}"])),
    # ignore_empty_service: a ClusterIP Service without a ready endpoint address is NXDOMAIN
    ({"ignore_empty_service": True}, "idle.testns.svc.cluster.local", dns.A,
     (NX, []), (OK, ["idle.testns.svc.cluster.local A 10.96.0.50"])),
    ({"ignore_empty_service": True}, "down.testns.svc.cluster.local", dns.A,  # only a not-ready one
     (NX, []), (OK, ["down.testns.svc.cluster.local A 10.96.0.51"])),
    ({"ignore_empty_service": True}, "_http._tcp.idle.testns.svc.cluster.local", dns.SRV,
     (NX, []), (OK, ["_http._tcp.idle.testns.svc.cluster.local SRV 0 100 80 idle.testns.svc.cluster.local"])),
    ({"ignore_empty_service": True}, "nginx.default.svc.cluster.local", dns.A,  # it has one
     (OK, ["nginx.default.svc.cluster.local A 10.96.0.100"]), (OK, ["nginx.default.svc.cluster.local A 10.96.0.100"])),
    ({"ignore_empty_service": True}, "ext.testns.svc.cluster.local", dns.A,  # ExternalName: as before
     (OK, ["ext.testns.svc.cluster.local CNAME www.example.com"]), (OK, ["ext.testns.svc.cluster.local CNAME www.example.com"])),
    ({"ignore_empty_service": True}, "50.0.96.10.in-addr.arpa", dns.PTR,  # the ClusterIP's PTR stays (CoreDNS)
     (OK, ["50.0.96.10.in-addr.arpa PTR idle.testns.svc.cluster.local"]), (OK, ["50.0.96.10.in-addr.arpa PTR idle.testns.svc.cluster.local"])),
    # noendpoints: endpoint and headless names are NXDOMAIN, ClusterIP Services answer as before
    ({"noendpoints": True}, "db.testns.svc.cluster.local", dns.A,
     (NX, []), (OK, ["db.testns.svc.cluster.local A 10.244.1.1", "db.testns.svc.cluster.local A 10.244.1.2"])),
    ({"noendpoints": True}, "db-0.db.testns.svc.cluster.local", dns.A, (NX, []), (OK, ["db-0.db.testns.svc.cluster.local A 10.244.1.1"])),
    ({"noendpoints": True}, "_pg._tcp.db.testns.svc.cluster.local", dns.SRV, (NX, []), (OK, [
        "_pg._tcp.db.testns.svc.cluster.local SRV 0 50 5432 db-0.db.testns.svc.cluster.local",
        "_pg._tcp.db.testns.svc.cluster.local SRV 0 50 5432 10-244-1-2.db.testns.svc.cluster.local",
    ])),
    ({"noendpoints": True}, "nginx.default.svc.cluster.local", dns.A,
     (OK, ["nginx.default.svc.cluster.local A 10.96.0.100"]), (OK, ["nginx.default.svc.cluster.local A 10.96.0.100"])),
]


@pytest.mark.parametrize("option,qname,qtype,with_it,without_it", OPTION_TABLE)
def test_kubernetes_option_answers(option: dict, qname: str, qtype: int, with_it: tuple, without_it: tuple) -> None:
    """Each option as CoreDNS's kubernetes plugin applies it; the same store without the option
    answers the other way, so every row that differs fails if the option is not applied."""
    for kw, (rcode, answers) in ((option, with_it), ({}, without_it)):
        zones = _option_zones(**kw)
        _, ans = zones.answer(qname.encode(), qtype)
        assert (ans.rcode, [_text(rr) for rr in ans.answers]) == (rcode, answers), kw
        if not answers:
            assert [rr.type for rr in ans.authority] == [dns.SOA]


def test_ignore_empty_service_follows_the_endpoints() -> None:
    """The Service comes back as soon as one of its endpoints is ready, and goes again."""
    zones = _option_zones(ignore_empty_service=True)
    name = b"down.testns.svc.cluster.local"
    assert zones.answer(name, dns.A)[1].rcode == NX
    ready = kubeobj.endpointslice("down-1", "testns", "down", endpoints=[{"addresses": ["10.244.6.1"]}])
    zones.store.upsert("endpointslices", *objects.endpointslice_from_raw(ready))
    assert [_text(rr) for rr in zones.answer(name, dns.A)[1].answers] == ["down.testns.svc.cluster.local A 10.96.0.51"]
    zones.store.delete("endpointslices", "testns/down-1")
    assert zones.answer(name, dns.A)[1].rcode == NX


def test_noendpoints_watches_no_endpointslices() -> None:
    """``noendpoints`` turns the EndpointSlice watch off (CoreDNS: "by disabling the watch")."""
    assert "endpointslices" not in KubernetesConfig(noendpoints=True).resources()
    assert "endpointslices" in KubernetesConfig().resources()
    assert KubernetesConfig(noendpoints=True, pods="verified").resources() == ("namespaces", "services", "pods")
