"""The ``hosts`` plugin in the real ``twistd kubedns`` process, queried over real UDP.

k3s's ``hosts NodeHosts { ttl 60; reload 15s; fallthrough }`` beside a manifests cluster and a
``forward`` to a tests/dnsupstream.py server on 127.0.0.3 (nothing leaves loopback): A, AAAA, PTR
and NODATA from the file and inline lines, hosts before the cluster, fallthrough to the cluster
and to forward, SERVFAIL without fallthrough, an edit of the file picked up after the reload
period (also for answers kept on the fast path), a config reload, the metrics, and the same
through a Corefile.  The table and the answers as pure logic are in tests/test_hosts.py.
"""

from __future__ import annotations

import ipaddress
import os
import signal
import time

import dns.flags
import dns.rcode
import pytest
import yaml

from tests.conftest import KubeDNSProcess, free_port, http_get, query, rrset_text, wait_for
from tests.dnsupstream import DNSUpstream
from tests.support import kubeobj


def _write(path, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


# -- a running server: real UDP queries, a manifests cluster, a loopback upstream ------------------
NODE_HOSTS = """\
# k3s writes its nodes' names like this (NodeHosts)
172.18.0.2 server-0
172.18.0.3 agent-0 agent-0.nodes.test
fd00:18::3 agent-0
10.0.0.50  special.default.svc.cluster.local
"""


@pytest.fixture
def upstream():
    up = DNSUpstream(host="127.0.0.3").start()
    yield up
    up.stop()


def _cluster(tmp_path) -> str:
    path = tmp_path / "cluster.yaml"
    objs = [kubeobj.namespace("default"), kubeobj.service("nginx", "default", cluster_ip="10.96.0.100")]
    path.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": objs}))
    return str(path)


def _server(kubedns_process, tmp_path, upstream, hosts: dict, kubernetes: bool = True, **extra) -> int:
    port = free_port()
    block: dict = {"zones": ["."], "listen": f"127.0.0.1:{port}", "hosts": hosts,
                   "forward": {"to": [upstream.address]}, **extra}
    if kubernetes:
        block["kubernetes"] = {"zones": ["cluster.local", "in-addr.arpa", "ip6.arpa"],
                               "manifests": _cluster(tmp_path), "fallthrough": ["in-addr.arpa", "ip6.arpa"]}
    p = kubedns_process({"servers": [block]})
    p.wait_listening(port)
    return port


@pytest.mark.timeout(60)
def test_server_answers_from_hosts_and_falls_through(kubedns_process, tmp_path, upstream):
    """k3s's ``hosts /etc/coredns/NodeHosts { ttl 60; reload 15s; fallthrough }`` beside the
    cluster and forward: hosts first, then the cluster, then upstream (CoreDNS's order)."""
    upstream.add("example.org", "A", "192.0.2.10")
    upstream.add("4.3.2.1.in-addr.arpa", "PTR", "host.example.org.")
    node_hosts = tmp_path / "NodeHosts"
    _write(node_hosts, NODE_HOSTS)
    metrics = free_port()
    port = _server(kubedns_process, tmp_path, upstream,
                   {"file": str(node_hosts), "ttl": 60, "reload": "15s", "fallthrough": True,
                    "entries": ["192.0.2.77 inline.nodes.test"]}, prometheus=f"127.0.0.1:{metrics}")
    r = query(port, "server-0")
    assert rrset_text(r) == ["server-0 A 172.18.0.2"]
    assert r.answer[0].ttl == 60 and r.flags & dns.flags.AA
    assert rrset_text(query(port, "agent-0", "AAAA")) == ["agent-0 AAAA fd00:18::3"]
    assert rrset_text(query(port, "inline.nodes.test")) == ["inline.nodes.test A 192.0.2.77"]
    assert rrset_text(query(port, "3.0.18.172.in-addr.arpa", "PTR")) == [
        "3.0.18.172.in-addr.arpa PTR agent-0.", "3.0.18.172.in-addr.arpa PTR agent-0.nodes.test."]
    v6 = ipaddress.ip_address("fd00:18::3").reverse_pointer
    assert rrset_text(query(port, v6, "PTR")) == [f"{v6} PTR agent-0."]
    # a name in hosts asked another type: NODATA, authoritative, nothing asked upstream
    r = query(port, "server-0", "MX")
    assert r.rcode() == dns.rcode.NOERROR and not r.answer and r.flags & dns.flags.AA
    # hosts comes before kubernetes: its entry wins over the cluster's NXDOMAIN
    assert rrset_text(query(port, "special.default.svc.cluster.local")) == [
        "special.default.svc.cluster.local A 10.0.0.50"]
    assert upstream.count() == 0
    # fallthrough: to the cluster (names and reverse names), then to forward
    assert rrset_text(query(port, "nginx.default.svc.cluster.local")) == ["nginx.default.svc.cluster.local A 10.96.0.100"]
    assert rrset_text(query(port, "100.0.96.10.in-addr.arpa", "PTR")) == [
        "100.0.96.10.in-addr.arpa PTR nginx.default.svc.cluster.local."]
    assert query(port, "missing.default.svc.cluster.local").rcode() == dns.rcode.NXDOMAIN
    assert upstream.count() == 0
    assert rrset_text(query(port, "example.org")) == ["example.org A 192.0.2.10"]
    assert rrset_text(query(port, "4.3.2.1.in-addr.arpa", "PTR")) == ["4.3.2.1.in-addr.arpa PTR host.example.org."]
    assert upstream.count() == 2
    # the fast path serves the same bytes again (case kept in the question, owner lower-cased)
    for _ in range(3):
        r = query(port, "SERVER-0")
        assert rrset_text(r) == ["server-0 A 172.18.0.2"]
        assert r.question[0].name.to_text() == "SERVER-0."
    # CoreDNS's hosts metrics: names and addresses of the file and the inline line, the file's mtime
    body = http_get(metrics, "/metrics")[1]
    assert f'coredns_hosts_entries{{hostsfile="{node_hosts}"}} 12.0' in body
    stamp = float(body.split("\ncoredns_hosts_reload_timestamp_seconds ")[1].split()[0])
    assert stamp == pytest.approx(os.stat(node_hosts).st_mtime)


@pytest.mark.timeout(60)
def test_server_without_fallthrough_is_servfail_for_other_names(kubedns_process, tmp_path, upstream):
    """As CoreDNS: a name in the plugin's zones that is not in the hosts data, without
    fallthrough, is SERVFAIL (no SOA to make an NXDOMAIN with), and never reaches forward;
    names outside the plugin's zones go on whatever fallthrough says."""
    upstream.add("example.org", "A", "192.0.2.10")
    upstream.add("other.nodes.test", "A", "192.0.2.11")
    port = _server(kubedns_process, tmp_path, upstream,
                   {"file": None, "entries": ["172.18.0.2 server-0.nodes.test"], "zones": ["nodes.test"]},
                   kubernetes=False)
    assert rrset_text(query(port, "server-0.nodes.test")) == ["server-0.nodes.test A 172.18.0.2"]
    assert query(port, "other.nodes.test").rcode() == dns.rcode.SERVFAIL
    assert upstream.count("other.nodes.test") == 0
    assert rrset_text(query(port, "example.org")) == ["example.org A 192.0.2.10"]
    assert rrset_text(query(port, "2.0.18.172.in-addr.arpa", "PTR")) == [
        "2.0.18.172.in-addr.arpa PTR server-0.nodes.test."]


@pytest.mark.timeout(60)
def test_server_picks_up_a_file_edit(kubedns_process, tmp_path, upstream):
    """An edit of the file is answered after the reload period, including for names whose
    previous answers (the cluster's, hosts' own) were kept on the fast path."""
    node_hosts = tmp_path / "NodeHosts"
    _write(node_hosts, "172.18.0.2 server-0\n172.18.0.3 agent-0\n")
    port = _server(kubedns_process, tmp_path, upstream,
                   {"file": str(node_hosts), "reload": "1s", "fallthrough": True})
    for _ in range(2):  # the second from the fast path
        assert rrset_text(query(port, "server-0")) == ["server-0 A 172.18.0.2"]
        assert rrset_text(query(port, "nginx.default.svc.cluster.local")) == [
            "nginx.default.svc.cluster.local A 10.96.0.100"]
    # same size, new address; a new name that shadows a cluster name; agent-0 gone
    _write(node_hosts, "172.18.0.9 server-0\n10.0.0.77 nginx.default.svc.cluster.local\n")
    t0 = time.monotonic()
    wait_for(lambda: rrset_text(query(port, "server-0")) == ["server-0 A 172.18.0.9"], timeout=10)
    assert time.monotonic() - t0 < 5
    assert rrset_text(query(port, "nginx.default.svc.cluster.local")) == ["nginx.default.svc.cluster.local A 10.0.0.77"]
    upstream.add("agent-0", "A", "192.0.2.3")
    assert rrset_text(query(port, "agent-0")) == ["agent-0 A 192.0.2.3"]  # now upstream's


@pytest.mark.timeout(60)
def test_config_reload_applies_a_new_hosts_config(kubedns_process, tmp_path, upstream):
    """SIGHUP with a changed ``hosts`` (ttl, an inline line, no fallthrough) applies it at once;
    the file is read before the new config answers its first query."""
    node_hosts = tmp_path / "NodeHosts"
    _write(node_hosts, "172.18.0.2 server-0\n")
    port = free_port()
    block = {"zones": ["."], "listen": f"127.0.0.1:{port}", "forward": {"to": [upstream.address]},
             "hosts": {"file": str(node_hosts), "ttl": 60, "fallthrough": True}}
    p = kubedns_process({"servers": [block]})
    p.wait_listening(port)
    assert query(port, "server-0").answer[0].ttl == 60
    upstream.add("other.test", "A", "192.0.2.1")
    assert rrset_text(query(port, "other.test")) == ["other.test A 192.0.2.1"]
    block["hosts"] = {"file": str(node_hosts), "ttl": 30, "entries": ["192.0.2.77 inline.test"]}
    p.config_path.write_text(yaml.safe_dump({"servers": [block]}))
    p.signal(signal.SIGHUP)
    wait_for(lambda: query(port, "server-0").answer[0].ttl == 30, timeout=10)
    assert rrset_text(query(port, "server-0")) == ["server-0 A 172.18.0.2"]
    assert rrset_text(query(port, "inline.test")) == ["inline.test A 192.0.2.77"]
    assert query(port, "other.test").rcode() == dns.rcode.SERVFAIL  # no fallthrough any more


@pytest.mark.timeout(60)
def test_corefile_hosts_as_k3s_writes_it(tmp_path, upstream):
    """The same through a Corefile: ``hosts NodeHosts { ... }`` (a path relative to the
    Corefile's folder) with an inline line, ``ttl``, ``reload`` and ``fallthrough`` to forward."""
    upstream.add("example.org", "A", "192.0.2.10")
    work = tmp_path / "coredns"
    work.mkdir()
    _write(work / "NodeHosts", "172.18.0.2 server-0\n172.18.0.3 agent-0\n")
    port = free_port()
    corefile = f""".:{port} {{
    bind 127.0.0.1
    hosts NodeHosts {{
        192.0.2.77 inline.nodes.test
        ttl 60
        reload 1s
        fallthrough
    }}
    forward . {upstream.address}
}}
"""
    p = KubeDNSProcess(corefile, work)
    p.config_path.unlink()
    p.config_path = work / "Corefile"
    p.write_config(corefile)
    p.start()
    try:
        p.wait_listening(port)
        r = query(port, "server-0")
        assert rrset_text(r) == ["server-0 A 172.18.0.2"] and r.answer[0].ttl == 60
        assert rrset_text(query(port, "inline.nodes.test")) == ["inline.nodes.test A 192.0.2.77"]
        assert rrset_text(query(port, "3.0.18.172.in-addr.arpa", "PTR")) == ["3.0.18.172.in-addr.arpa PTR agent-0."]
        assert query(port, "agent-0", "AAAA").rcode() == dns.rcode.NOERROR
        assert rrset_text(query(port, "example.org")) == ["example.org A 192.0.2.10"]
        _write(work / "NodeHosts", "172.18.0.9 server-0\n")
        wait_for(lambda: rrset_text(query(port, "server-0")) == ["server-0 A 172.18.0.9"], timeout=10)
    finally:
        p.stop()
