"""The real process answers as CoreDNS does where the two used to differ for no reason.

Over real UDP and TCP sockets with dnspython against ``twistd kubedns``: zone transfers of the
cluster zones are REFUSED (CoreDNS's kubernetes plugin without ``transfer``), while a transfer of
a forwarded name is relayed to the upstream like any other query (CoreDNS's ``forward`` does not
look at the type); ``dns-version`` has TTL 28800; with ``pods: verified`` a Pod being deleted is
not answered, whether it was already terminating in the LIST or gets its deletionTimestamp from a
watch event (tests/fakeapi.py over real HTTP); ``pod.<zone>`` is NODATA with ``pods: disabled``.
"""

from __future__ import annotations

from pathlib import Path

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

from tests import fakeapi
from tests.conftest import free_port, query, rrset_text, wait_for
from tests.dnsupstream import DNSUpstream
from tests.support import kubeobj
from tests.support.cluster import write_manifests

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def upstream():
    up = DNSUpstream(host="127.0.0.1").start()
    yield up
    up.stop()


def _objects() -> list[dict]:
    return [
        kubeobj.namespace("default"),
        kubeobj.service("nginx", "default", cluster_ip="10.96.0.100"),
        kubeobj.service("ext", "default", type="ExternalName", external_name="db.example.org",
                        ports=[{"name": "https", "port": 443, "protocol": "TCP"}]),
    ]


def _start(kubedns_process, tmp_path: Path, up: DNSUpstream, pods: str = "disabled") -> int:
    manifests = tmp_path / "cluster.yaml"
    write_manifests(manifests, _objects())
    port = free_port()
    p = kubedns_process({"servers": [{
        "zones": ["."],
        "listen": f"127.0.0.1:{port}",
        "kubernetes": {"zones": ["cluster.local", "in-addr.arpa"], "manifests": str(manifests), "pods": pods, "ttl": 5},
        "forward": {"to": [up.address]},
    }]})
    p.wait_listening(port)
    return port


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_zone_transfers_of_cluster_zones_are_refused(kubedns_process, tmp_path: Path, upstream, tcp: bool) -> None:
    port = _start(kubedns_process, tmp_path, upstream)
    for name in ("cluster.local", "in-addr.arpa", "nginx.default.svc.cluster.local"):
        for rdtype in ("AXFR", "IXFR"):
            r = query(port, name, rdtype, tcp=tcp)
            assert dns.rcode.to_text(r.rcode()) == "REFUSED", (name, rdtype)
            assert (r.answer, r.authority) == ([], [])
            assert not r.flags & dns.flags.AA
    # an IXFR as resolvers send it, with the serial they hold as an SOA in the authority section
    q = dns.message.make_query("cluster.local", "IXFR")
    q.authority.append(dns.rrset.from_text(
        "cluster.local.", 0, "IN", "SOA", "ns.dns.cluster.local. hostmaster.cluster.local. 1 7200 1800 86400 5"))
    r = dns.query.tcp(q, "127.0.0.1", port=port, timeout=3) if tcp else dns.query.udp(q, "127.0.0.1", port=port, timeout=3)
    assert dns.rcode.to_text(r.rcode()) == "REFUSED" and r.answer == []
    assert upstream.count() == 0  # refused here, never forwarded
    # the server still answers normally afterwards, on the same transport
    assert rrset_text(query(port, "nginx.default.svc.cluster.local", tcp=tcp)) == ["nginx.default.svc.cluster.local A 10.96.0.100"]


def test_zone_transfer_of_a_forwarded_name_is_relayed(kubedns_process, tmp_path: Path, upstream) -> None:
    """CoreDNS's forward plugin relays a transfer query like any other; the upstream decides."""
    upstream.add("example.org", "A", "192.0.2.1")
    upstream.set_soa("example.org")
    port = _start(kubedns_process, tmp_path, upstream)
    r = query(port, "example.org", "AXFR")
    assert upstream.count("example.org", "AXFR") >= 1
    # this upstream knows the name, not the type: its NODATA comes back, SOA and all
    assert dns.rcode.to_text(r.rcode()) == "NOERROR" and r.answer == []
    assert [rs.rdtype for rs in r.authority] == [dns.rdatatype.SOA]
    upstream.mode = "refused"
    r = query(port, "refused.example.org", "IXFR")
    assert dns.rcode.to_text(r.rcode()) == "REFUSED"
    assert upstream.count("refused.example.org", "IXFR") >= 1


def test_answers_that_now_match_coredns(kubedns_process, tmp_path: Path, upstream) -> None:
    port = _start(kubedns_process, tmp_path, upstream, pods="disabled")
    r = query(port, "dns-version.cluster.local", "TXT")
    assert [(rs.ttl, rrset_text(r)) for rs in r.answer] == [(28800, ['dns-version.cluster.local TXT "1.1.0"'])]
    r = query(port, "pod.cluster.local", "A")  # exists even with pods disabled: NODATA
    assert dns.rcode.to_text(r.rcode()) == "NOERROR" and r.answer == []
    assert [rs.rdtype for rs in r.authority] == [dns.rdatatype.SOA]
    assert dns.rcode.to_text(query(port, "10-244-0-5.default.pod.cluster.local").rcode()) == "NXDOMAIN"
    r = query(port, "_https._tcp.ext.default.svc.cluster.local", "SRV")
    assert dns.rcode.to_text(r.rcode()) == "NXDOMAIN"
    r = query(port, "ext.default.svc.cluster.local", "CNAME")
    assert rrset_text(r) == ["ext.default.svc.cluster.local CNAME db.example.org."]
    assert upstream.count() == 0


def test_pods_verified_ignores_terminating_pods(kubedns_process, tmp_path: Path) -> None:
    """Terminating in the LIST (the streaming page parser) or by a MODIFIED watch event: no A."""
    with fakeapi.FakeKubeAPI() as api:
        api.load([
            kubeobj.namespace("default"),
            kubeobj.pod("live", "default", "10.244.0.9"),
            kubeobj.pod("going", "default", "10.244.0.8", deletion_timestamp="now"),
        ])
        kc = kubeobj.kubeconfig(tmp_path / "kubeconfig", api.url)
        port = free_port()
        p = kubedns_process({"servers": [{
            "zones": ["."],
            "listen": f"127.0.0.1:{port}",
            "kubernetes": {"zones": ["cluster.local"], "kubeconfig": kc, "pods": "verified", "ttl": 5},
        }]}, env={"NO_PROXY": "127.0.0.1"})
        p.wait_listening(port)

        def rcode(name: str) -> str:
            return dns.rcode.to_text(query(port, name, timeout=1).rcode())

        wait_for(lambda: rcode("10-244-0-9.default.pod.cluster.local") == "NOERROR", timeout=30)
        assert rcode("10-244-0-8.default.pod.cluster.local") == "NXDOMAIN"
        api.update("pods", kubeobj.pod("live", "default", "10.244.0.9", deletion_timestamp="now"))
        wait_for(lambda: rcode("10-244-0-9.default.pod.cluster.local") == "NXDOMAIN")
