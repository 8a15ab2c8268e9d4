"""Forwarding through the real ``twistd kubedns`` process: the resolver chain as a Pod sees it.

Upstreams are tests/dnsupstream.py servers on 127.0.0.x; nothing leaves loopback.  Covers the
chain (cluster zones → cache → forward), stub-domain blocks (longest zone wins, sockets shared),
fallthrough of reverse lookups, rcode relaying, the cache in front of upstream, REFUSED for a
block without forward, and loop detection keeping the process alive.
"""

from __future__ import annotations

import time
from pathlib import Path

import dns.flags
import dns.rcode
import dns.rdatatype
import pytest
import yaml

from tests.conftest import free_port, query, rrset_text
from tests.dnsupstream import DNSUpstream
from tests.support import kubeobj

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def upstreams():
    ups = [DNSUpstream(host="127.0.0.1").start(), DNSUpstream(host="127.0.0.2").start()]
    yield ups
    for u in ups:
        u.stop()


def _manifests(tmp_path: Path) -> str:
    path = tmp_path / "cluster.yaml"
    objs = [
        kubeobj.namespace("default"),
        kubeobj.service("nginx", "default", cluster_ip="10.96.0.100"),
        kubeobj.service("ext", "default", type="ExternalName", external_name="www.example.org"),
        kubeobj.service("alias", "default", type="ExternalName", external_name="nginx.default.svc.cluster.local"),
    ]
    path.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": objs}))
    return str(path)


def _start(kubedns_process, tmp_path: Path, servers: list[dict]):
    p = kubedns_process({"servers": servers})
    port = int(servers[0]["listen"].rsplit(":", 1)[1])
    p.wait_listening(port)
    return p


def test_chain_cluster_then_cache_then_upstream(kubedns_process, tmp_path: Path, upstreams) -> None:
    up = upstreams[0]
    up.add("google.com", "A", "192.0.2.10", ttl=300)
    up.add("google.com", "AAAA", "2001:db8::10", ttl=300)
    up.add("google.com", "MX", "10 smtp.google.com.", ttl=300)
    up.add("google.com", "TXT", '"v=spf1 -all"', ttl=300)
    up.set_soa("google.com", ttl=60, minimum=30)
    port = free_port()
    _start(kubedns_process, tmp_path, [{
        "zones": ["."], "listen": f"127.0.0.1:{port}",
        "kubernetes": {"zones": ["cluster.local", "in-addr.arpa"], "manifests": _manifests(tmp_path),
                       "fallthrough": ["in-addr.arpa"]},
        "forward": {"to": [up.address]},
        "cache": 30,
    }])
    # cluster names never go upstream
    assert rrset_text(query(port, "nginx.default.svc.cluster.local")) == ["nginx.default.svc.cluster.local A 10.96.0.100"]
    assert query(port, "missing.default.svc.cluster.local").rcode() == dns.rcode.NXDOMAIN
    assert up.count() == 0
    # everything else is forwarded and relayed
    for rdtype, want in (("A", "192.0.2.10"), ("AAAA", "2001:db8::10"), ("MX", "10 smtp.google.com."),
                         ("TXT", '"v=spf1 -all"')):
        r = query(port, "google.com", rdtype)
        assert rrset_text(r) == [f"google.com {rdtype} {want}"]
        assert r.flags & dns.flags.RA
    # cache: the second ask does not reach upstream, and its TTL has counted down
    n = up.count("google.com", "A")
    time.sleep(1.1)
    r = query(port, "google.com", "A")
    assert up.count("google.com", "A") == n
    assert r.answer[0].ttl <= 29  # cache: 30 caps the TTL, then it counts down
    # NXDOMAIN relayed with the upstream's SOA, then served from the negative cache
    r = query(port, "nope.google.com", "A")
    assert r.rcode() == dns.rcode.NXDOMAIN and r.authority and r.authority[0].rdtype == dns.rdatatype.SOA
    n = up.count("nope.google.com")
    assert query(port, "nope.google.com", "A").rcode() == dns.rcode.NXDOMAIN
    assert up.count("nope.google.com") == n
    # reverse lookups for non-cluster IPs fall through to upstream
    up.add("4.3.2.1.in-addr.arpa", "PTR", "host.example.")
    assert rrset_text(query(port, "4.3.2.1.in-addr.arpa", "PTR")) == ["4.3.2.1.in-addr.arpa PTR host.example."]


def test_servfail_is_relayed_not_rewritten(kubedns_process, tmp_path: Path, upstreams) -> None:
    up = upstreams[0]
    up.mode = "servfail"
    port = free_port()
    _start(kubedns_process, tmp_path, [{
        "zones": ["."], "listen": f"127.0.0.1:{port}",
        "kubernetes": {"zones": ["cluster.local"], "manifests": _manifests(tmp_path)},
        "forward": {"to": [up.address]},
    }])
    assert query(port, "example.org").rcode() == dns.rcode.SERVFAIL


def test_failover_and_all_down(kubedns_process, tmp_path: Path, upstreams) -> None:
    dead, alive = upstreams
    dead.mode = "drop"
    alive.add("example.org", "A", "192.0.2.7")
    port = free_port()
    _start(kubedns_process, tmp_path, [{
        "zones": ["."], "listen": f"127.0.0.1:{port}",
        "kubernetes": {"zones": ["cluster.local"], "manifests": _manifests(tmp_path)},
        "forward": {"to": [dead.address, alive.address], "policy": "sequential", "timeout": "500ms"},
    }])
    t0 = time.monotonic()
    r = query(port, "example.org", timeout=5)
    assert rrset_text(r) == ["example.org A 192.0.2.7"]
    assert time.monotonic() - t0 < 2.0
    alive.mode = "drop"
    assert query(port, "other.example.org", timeout=8).rcode() == dns.rcode.SERVFAIL


def test_stub_domain_blocks_share_the_socket(kubedns_process, tmp_path: Path, upstreams) -> None:
    main, stub = upstreams
    main.add("example.org", "A", "192.0.2.1")
    stub.add("db.consul.local", "A", "192.0.2.99")
    port = free_port()
    listen = f"127.0.0.1:{port}"
    _start(kubedns_process, tmp_path, [
        {"zones": ["."], "listen": listen,
         "kubernetes": {"zones": ["cluster.local"], "manifests": _manifests(tmp_path)},
         "forward": {"to": [main.address]}},
        {"zones": ["consul.local"], "listen": listen, "forward": {"to": [stub.address]}},
        {"zones": ["internal.example"], "listen": listen, "kubernetes": {
            "zones": ["internal.example"], "manifests": _manifests(tmp_path)}},
    ])
    assert rrset_text(query(port, "db.consul.local")) == ["db.consul.local A 192.0.2.99"]
    assert stub.count("db.consul.local") == 1 and main.count("db.consul.local") == 0
    assert rrset_text(query(port, "example.org")) == ["example.org A 192.0.2.1"]
    assert stub.count("example.org") == 0
    # a block without forward refuses names outside its kubernetes zones... none here; and its zone works
    assert query(port, "nginx.default.svc.internal.example").rcode() == dns.rcode.NOERROR
    assert rrset_text(query(port, "nginx.default.svc.cluster.local", tcp=True)) == [
        "nginx.default.svc.cluster.local A 10.96.0.100"]


def test_loop_detected_disables_forwarding_not_the_process(kubedns_process, tmp_path: Path, upstreams) -> None:
    up = upstreams[0]
    port = free_port()
    up.mode = "forward"
    up.forward_to = ("127.0.0.1", port)  # the upstream sends our queries back to us
    p = kubedns_process({"servers": [{
        "zones": ["."], "listen": f"127.0.0.1:{port}",
        "kubernetes": {"zones": ["cluster.local"], "manifests": _manifests(tmp_path)},
        "forward": {"to": [up.address], "timeout": "1s"},
        "loop": {},
    }]})
    p.wait_listening(port)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and "Loop detected" not in p.log():
        time.sleep(0.2)
    assert "Loop detected" in p.log(), p.log()
    before = up.count()
    assert query(port, "example.org", timeout=5).rcode() == dns.rcode.SERVFAIL
    time.sleep(0.5)
    assert up.count() == before  # not amplified: nothing more was sent into the loop
    assert p.proc.poll() is None
    assert query(port, "nginx.default.svc.cluster.local").rcode() == dns.rcode.NOERROR


def test_externalname_cname_is_chased_like_coredns(kubedns_process, tmp_path: Path, upstreams) -> None:
    up = upstreams[0]
    up.add("www.example.org", "A", "192.0.2.80")
    port = free_port()
    _start(kubedns_process, tmp_path, [{
        "zones": ["."], "listen": f"127.0.0.1:{port}",
        "kubernetes": {"zones": ["cluster.local"], "manifests": _manifests(tmp_path)},
        "forward": {"to": [up.address]},
    }])
    assert rrset_text(query(port, "ext.default.svc.cluster.local")) == [
        "ext.default.svc.cluster.local CNAME www.example.org.",
        "www.example.org A 192.0.2.80",
    ]
    # a target inside the cluster is answered from the store
    assert rrset_text(query(port, "alias.default.svc.cluster.local")) == [
        "alias.default.svc.cluster.local CNAME nginx.default.svc.cluster.local.",
        "nginx.default.svc.cluster.local A 10.96.0.100",
    ]
    # asking for the CNAME itself does not chase
    assert rrset_text(query(port, "ext.default.svc.cluster.local", "CNAME")) == [
        "ext.default.svc.cluster.local CNAME www.example.org.",
    ]


def test_max_concurrent_excess_gets_refused(kubedns_process, tmp_path: Path, upstreams) -> None:
    """Past ``max_concurrent`` queries in flight, a client gets REFUSED at once (as CoreDNS)."""
    import socket as _socket

    import dns.message

    up = upstreams[0]
    for i in range(6):
        up.add(f"n{i}.example.org", "A", f"192.0.2.{i + 1}")
    port = free_port()
    p = _start(kubedns_process, tmp_path, [{
        "zones": ["."], "listen": f"127.0.0.1:{port}",
        "forward": {"to": [up.address], "max_concurrent": 2},
    }])
    up.delay = 1.0  # after start-up: wait_listening's own probe queries must not hold the slots
    s = _socket.socket(_socket.AF_INET, _socket.SOCK_DGRAM)
    s.settimeout(5)
    try:
        for i in range(6):  # distinct names: identical in-flight queries would be merged
            q = dns.message.make_query(f"n{i}.example.org", "A")
            q.id = 100 + i
            s.sendto(q.to_wire(), ("127.0.0.1", port))
        rcodes = {}
        while len(rcodes) < 6:
            r = dns.message.from_wire(s.recvfrom(4096)[0])
            rcodes[r.id - 100] = r.rcode()
    finally:
        s.close()
    refused = [i for i, rc in rcodes.items() if rc == dns.rcode.REFUSED]
    answered = [i for i, rc in rcodes.items() if rc == dns.rcode.NOERROR]
    assert len(answered) == 2 and len(refused) == 4, (rcodes, p.log())
