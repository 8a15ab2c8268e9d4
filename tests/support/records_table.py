"""The record table of the cluster zones and the store it is answered from.

:func:`fill` puts a small cluster into a :class:`~kubedns.k8s.store.Store` (ClusterIP, dual-stack
and IPv6-only Services, headless ones with ready and not-ready endpoints and slices with other
ports, ExternalNames, orphan and ghost slices, a pod); :data:`TABLE` says what each query must get
from it, as CoreDNS's handler_test.go does.  ``tests/test_records.py`` checks the table against the
records code; the fast path, the fuzzers, the Twisted authority and the Corefile/YAML parity tests
replay it, and ``bench/memory.py`` fills its store the same way.
"""

from __future__ import annotations

from twisted.names import dns

from kubedns.k8s import objects
from kubedns.k8s.store import Store
from tests.support import kubeobj

__all__ = ["NX", "OK", "TABLE", "fill"]


def fill(store: Store, pods: bool = True) -> None:
    """Put the cluster :data:`TABLE` is answered from into ``store`` (the pod ``web`` unless
    ``pods`` is false) and mark every kind synced."""
    for ns in ("default", "kube-system", "testns"):
        store.upsert("namespaces", *objects.namespace_from_raw(kubeobj.namespace(ns)))
    svcs = [
        kubeobj.service("kubernetes", "default", cluster_ip="10.96.0.1", ports=[{"name": "https", "port": 443, "protocol": "TCP"}]),
        kubeobj.service("kube-dns", "kube-system", cluster_ip="10.96.0.10", ports=[{"name": "dns", "port": 53, "protocol": "UDP"}]),
        kubeobj.service(
            "nginx", "default", cluster_ip="10.96.0.100",
            ports=[{"name": "http", "port": 80, "protocol": "TCP"}, {"port": 8080, "protocol": "TCP"}],
        ),
        kubeobj.service(
            "dual", "default", cluster_ip="10.96.0.200", cluster_ips=["10.96.0.200", "fd00::200"],
            ports=[{"name": "http", "port": 80, "protocol": "TCP"}], ip_families=["IPv4", "IPv6"],
        ),
        kubeobj.service("v6only", "default", cluster_ip="fd00::300", cluster_ips=["fd00::300"], ip_families=["IPv6"]),
        kubeobj.service("db", "testns", headless=True, ports=[{"name": "pg", "port": 5432, "protocol": "TCP"}]),
        kubeobj.service("empty", "testns", headless=True),
        kubeobj.service("notready", "testns", headless=True, publish_not_ready=True),
        kubeobj.service("ext", "testns", type="ExternalName", external_name="www.example.com"),
        kubeobj.service("extp", "testns", type="ExternalName", external_name="api.example.com",
                        ports=[{"name": "https", "port": 443, "protocol": "TCP"}]),
        kubeobj.service("split", "testns", headless=True, ports=[{"name": "http", "port": 80, "protocol": "TCP"}]),
    ]
    for s in svcs:
        store.upsert("services", *objects.service_from_raw(s))
    slices = [
        kubeobj.endpointslice(
            "db-1", "testns", "db",
            endpoints=[
                {"addresses": ["10.244.1.1"], "hostname": "db-0", "ready": True},
                {"addresses": ["10.244.1.2"], "ready": True},
                {"addresses": ["10.244.1.3"], "ready": False},
            ],
            ports=[{"name": "pg", "port": 5432, "protocol": "TCP"}],
        ),
        kubeobj.endpointslice(
            "notready-1", "testns", "notready",
            endpoints=[{"addresses": ["10.244.2.1"], "ready": False}],
        ),
        kubeobj.endpointslice(
            "nginx-1", "default", "nginx",
            endpoints=[{"addresses": ["10.244.0.5"], "ready": True}],
            ports=[{"name": "http", "port": 80, "protocol": "TCP"}],
        ),
    ]
    # one headless Service, slices with other ports: each slice's ports go with its own endpoints
    http = {"name": "http", "protocol": "TCP"}
    slices += [
        kubeobj.endpointslice(
            "split-a", "testns", "split", endpoints=[{"addresses": ["10.244.3.1"]}], ports=[{**http, "port": 80}],
        ),
        kubeobj.endpointslice(
            "split-b", "testns", "split",
            endpoints=[{"addresses": ["10.244.3.2"]}, {"addresses": ["10.244.3.3"], "ready": False}],
            ports=[{**http, "port": 8080}],
        ),
        # split-a's endpoint and port again (as while an endpoint moves between slices): one record
        kubeobj.endpointslice(
            "split-c", "testns", "split", endpoints=[{"addresses": ["10.244.3.1"]}], ports=[{**http, "port": 80}],
        ),
        # no _http port here: 10.244.3.4 is no _http target, nor in its additional section
        kubeobj.endpointslice(
            "split-d", "testns", "split", endpoints=[{"addresses": ["10.244.3.4"]}],
            ports=[{"name": "metrics", "port": 9090, "protocol": "TCP"}],
        ),
    ]
    # a slice whose Service does not exist: no forward name, so no PTR either
    slices.append(kubeobj.endpointslice(
        "ghost-1", "testns", "ghost", endpoints=[{"addresses": ["10.244.9.9"], "hostname": "ghost-0"}],
    ))
    # no kubernetes.io/service-name label: belongs to no Service, invisible to DNS; one of its
    # IPs is db-0's, whose PTR must not change
    orphan = kubeobj.endpointslice(
        "orphan-1", "testns", "db", endpoints=[{"addresses": ["10.244.8.8"]}, {"addresses": ["10.244.1.1"]}],
    )
    del orphan["metadata"]["labels"]["kubernetes.io/service-name"]
    slices.append(orphan)
    for sl in slices:
        store.upsert("endpointslices", *objects.endpointslice_from_raw(sl))
    if pods:
        store.upsert("pods", *objects.pod_from_raw(kubeobj.pod("web", "default", "10.244.0.5")))
    for kind in ("namespaces", "services", "endpointslices", "pods"):
        store.mark_synced(kind)


OK, NX = dns.OK, dns.ENAME

#: (qname, qtype, rcode, answers as ``name TYPE rdata`` text) for the cluster :func:`fill` makes,
#: zone ``cluster.local``, ``pods insecure``
TABLE = [
    # Service with ClusterIP (spec 2.3)
    ("nginx.default.svc.cluster.local", dns.A, OK, ["nginx.default.svc.cluster.local A 10.96.0.100"]),
    ("nginx.default.svc.cluster.local", dns.AAAA, OK, []),  # NODATA
    ("dual.default.svc.cluster.local", dns.AAAA, OK, ["dual.default.svc.cluster.local AAAA fd00::200"]),
    ("dual.default.svc.cluster.local", dns.A, OK, ["dual.default.svc.cluster.local A 10.96.0.200"]),
    ("v6only.default.svc.cluster.local", dns.A, OK, []),
    ("missing.default.svc.cluster.local", dns.A, NX, []),
    ("nginx.nonexistent.svc.cluster.local", dns.A, NX, []),
    ("_http._tcp.nginx.default.svc.cluster.local", dns.SRV, OK, ["_http._tcp.nginx.default.svc.cluster.local SRV 0 100 80 nginx.default.svc.cluster.local"]),
    ("_http._udp.nginx.default.svc.cluster.local", dns.SRV, NX, []),
    ("_nope._tcp.nginx.default.svc.cluster.local", dns.SRV, NX, []),
    ("_http._tcp.nginx.default.svc.cluster.local", dns.A, OK, []),  # the name exists: NODATA
    ("_tcp.nginx.default.svc.cluster.local", dns.A, OK, []),  # empty non-terminal
    ("nginx.default.svc.cluster.local", dns.SRV, OK, ["nginx.default.svc.cluster.local SRV 0 100 80 nginx.default.svc.cluster.local"]),
    # Headless (spec 2.4)
    ("db.testns.svc.cluster.local", dns.A, OK, ["db.testns.svc.cluster.local A 10.244.1.1", "db.testns.svc.cluster.local A 10.244.1.2"]),
    ("db-0.db.testns.svc.cluster.local", dns.A, OK, ["db-0.db.testns.svc.cluster.local A 10.244.1.1"]),
    ("10-244-1-2.db.testns.svc.cluster.local", dns.A, OK, ["10-244-1-2.db.testns.svc.cluster.local A 10.244.1.2"]),
    ("10-244-1-3.db.testns.svc.cluster.local", dns.A, NX, []),  # not ready
    ("_pg._tcp.db.testns.svc.cluster.local", dns.SRV, OK, [
        "_pg._tcp.db.testns.svc.cluster.local SRV 0 50 5432 db-0.db.testns.svc.cluster.local",
        "_pg._tcp.db.testns.svc.cluster.local SRV 0 50 5432 10-244-1-2.db.testns.svc.cluster.local",
    ]),
    ("_http._tcp.split.testns.svc.cluster.local", dns.SRV, OK, [
        "_http._tcp.split.testns.svc.cluster.local SRV 0 50 80 10-244-3-1.split.testns.svc.cluster.local",
        "_http._tcp.split.testns.svc.cluster.local SRV 0 50 8080 10-244-3-2.split.testns.svc.cluster.local",
    ]),
    ("split.testns.svc.cluster.local", dns.SRV, OK, [
        "split.testns.svc.cluster.local SRV 0 33 80 10-244-3-1.split.testns.svc.cluster.local",
        "split.testns.svc.cluster.local SRV 0 33 8080 10-244-3-2.split.testns.svc.cluster.local",
        "split.testns.svc.cluster.local SRV 0 33 9090 10-244-3-4.split.testns.svc.cluster.local",
    ]),
    ("_metrics._tcp.split.testns.svc.cluster.local", dns.SRV, OK, [
        "_metrics._tcp.split.testns.svc.cluster.local SRV 0 100 9090 10-244-3-4.split.testns.svc.cluster.local",
    ]),
    ("empty.testns.svc.cluster.local", dns.A, NX, []),  # no ready endpoints → NXDOMAIN (spec 2.4.1)
    ("notready.testns.svc.cluster.local", dns.A, OK, ["notready.testns.svc.cluster.local A 10.244.2.1"]),
    # ExternalName (spec 2.5)
    ("ext.testns.svc.cluster.local", dns.A, OK, ["ext.testns.svc.cluster.local CNAME www.example.com"]),
    ("ext.testns.svc.cluster.local", dns.CNAME, OK, ["ext.testns.svc.cluster.local CNAME www.example.com"]),
    ("extp.testns.svc.cluster.local", dns.SRV, OK, ["extp.testns.svc.cluster.local CNAME api.example.com"]),
    # nothing below an ExternalName, even for its named ports: the spec defines no SRV for it and
    # CoreDNS answers NXDOMAIN
    ("_https._tcp.extp.testns.svc.cluster.local", dns.SRV, NX, []),
    ("_https._tcp.extp.testns.svc.cluster.local", dns.A, NX, []),
    ("_tcp.extp.testns.svc.cluster.local", dns.SRV, NX, []),
    ("host.extp.testns.svc.cluster.local", dns.A, NX, []),
    # PTR (2.3.3, 2.4.3)
    ("100.0.96.10.in-addr.arpa", dns.PTR, OK, ["100.0.96.10.in-addr.arpa PTR nginx.default.svc.cluster.local"]),
    ("1.1.244.10.in-addr.arpa", dns.PTR, OK, ["1.1.244.10.in-addr.arpa PTR db-0.db.testns.svc.cluster.local"]),
    ("9.9.9.10.in-addr.arpa", dns.PTR, NX, []),
    ("8.8.244.10.in-addr.arpa", dns.PTR, NX, []),  # only in a slice without a service name
    ("3.1.244.10.in-addr.arpa", dns.PTR, NX, []),  # not ready: no PTR (2.4.3), as no A
    ("1.2.244.10.in-addr.arpa", dns.PTR, OK, ["1.2.244.10.in-addr.arpa PTR 10-244-2-1.notready.testns.svc.cluster.local"]),
    ("9.9.244.10.in-addr.arpa", dns.PTR, NX, []),  # a slice of a Service that does not exist
    ("ghost-0.ghost.testns.svc.cluster.local", dns.A, NX, []),
    (".".join(reversed("fd00000000000000000000000000" "0200")) + ".ip6.arpa", dns.PTR, OK,
     [".".join(reversed("fd000000000000000000000000000200")) + ".ip6.arpa PTR dual.default.svc.cluster.local"]),
    # pods (2.6)
    ("10-244-0-5.default.pod.cluster.local", dns.A, OK, ["10-244-0-5.default.pod.cluster.local A 10.244.0.5"]),
    ("10-244-0-99.default.pod.cluster.local", dns.A, OK, ["10-244-0-99.default.pod.cluster.local A 10.244.0.99"]),
    ("10-244-0-5.nonexistent.pod.cluster.local", dns.A, NX, []),
    ("not-an-ip.default.pod.cluster.local", dns.A, NX, []),
    # IPv6 pod names: three dashes with "--" is IPv6, not IPv4 (CoreDNS)
    ("2001-db8--1.default.pod.cluster.local", dns.AAAA, OK, ["2001-db8--1.default.pod.cluster.local AAAA 2001:db8::1"]),
    ("2001-db8--1.default.pod.cluster.local", dns.A, OK, []),
    ("fd00-0-0-0-0-0-0-1.default.pod.cluster.local", dns.AAAA, OK, ["fd00-0-0-0-0-0-0-1.default.pod.cluster.local AAAA fd00::1"]),
    ("1-2-3-4-.default.pod.cluster.local", dns.A, NX, []),
    # schema version, apex, namespaces
    ("dns-version.cluster.local", dns.TXT, OK, ["dns-version.cluster.local TXT 1.1.0"]),
    ("cluster.local", dns.NS, OK, ["cluster.local NS ns.dns.cluster.local"]),
    ("CLUSTER.Local", dns.SOA, OK, ["CLUSTER.Local SOA"]),
    ("cluster.local", dns.A, OK, []),
    ("ns.dns.cluster.local", dns.A, OK, ["ns.dns.cluster.local A 10.96.0.10"]),
    ("default.svc.cluster.local", dns.A, OK, []),
    ("nonexistent.svc.cluster.local", dns.A, NX, []),
    ("svc.cluster.local", dns.A, OK, []),
    ("foo.cluster.local", dns.A, NX, []),
    ("a.b.nginx.default.svc.cluster.local", dns.A, NX, []),
]
