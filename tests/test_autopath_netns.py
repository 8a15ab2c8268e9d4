"""autopath seen from a glibc Pod: 10 queries for ``google.com`` without it, 2 with it.

A network namespace plays the Pod: one end of a veth pair, with the Pod's IP (10.250.77.5), and
a resolv.conf the test writes as the kubelet would for a Pod in ``default`` on a node whose own
search domain is ``corp.example`` (``search default.svc.cluster.local svc.cluster.local
cluster.local corp.example``, ``options ndots:5``, the nameserver the other end of the veth, and
an nsswitch.conf with ``hosts: dns`` so nothing but that server is asked).  kubedns listens on the
host end (10.250.77.1:53) with a manifests file holding that Pod (``pods: verified``) and
forwards to a tests/dnsupstream.py server on loopback that knows ``google.com``.  ``getent ahosts
google.com`` in the namespace asks for A and AAAA; the query log counts what the server received
from the Pod's address.  The namespace, the veth and /etc/netns/<name> are removed afterwards.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.dnsupstream import DNSUpstream

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("getent") is None,
                       reason="needs root, iproute2 (ip netns, veth) and getent"),
]

HOST_IP, POD_IP = "10.250.77.1", "10.250.77.5"
SEARCH = "default.svc.cluster.local svc.cluster.local cluster.local corp.example"
RESOLV_CONF = f"nameserver {HOST_IP}\nsearch {SEARCH}\noptions ndots:5\n"
QLOG = re.compile(r"^.*QLOG (\S+) (\S+) (\S+) (\S+)$")


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=20)


@pytest.fixture
def pod_netns() -> Any:
    tag = os.getpid() % 100000
    name, host_if, pod_if = f"kubedns-ap-{tag}", f"kdap{tag}h", f"kdap{tag}p"
    etc = Path("/etc/netns") / name
    _ip("netns", "add", name)
    try:
        etc.mkdir(parents=True, exist_ok=True)
        (etc / "resolv.conf").write_text(RESOLV_CONF)  # the only resolver the namespace knows
        (etc / "nsswitch.conf").write_text("hosts: dns\n")
        (etc / "hosts").write_text("127.0.0.1 localhost\n")
        _ip("link", "add", host_if, "type", "veth", "peer", "name", pod_if)
        _ip("link", "set", pod_if, "netns", name)
        _ip("addr", "add", f"{HOST_IP}/24", "dev", host_if)
        _ip("link", "set", host_if, "up")
        _ip("-n", name, "addr", "add", f"{POD_IP}/24", "dev", pod_if)
        _ip("-n", name, "link", "set", pod_if, "up")
        _ip("-n", name, "link", "set", "lo", "up")
        yield name
    finally:
        subprocess.run(["ip", "link", "del", host_if], capture_output=True, timeout=20)
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=20)
        shutil.rmtree(etc, ignore_errors=True)


def _manifests(path: Path) -> Path:
    docs = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default"}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "kubernetes", "namespace": "default"},
         "spec": {"type": "ClusterIP", "clusterIP": "10.96.0.1", "clusterIPs": ["10.96.0.1"],
                  "ports": [{"name": "https", "port": 443, "protocol": "TCP"}]}},
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "client", "namespace": "default"},
         "spec": {"containers": [{"name": "c", "image": "busybox"}]},
         "status": {"phase": "Running", "podIP": POD_IP, "podIPs": [{"ip": POD_IP}]}},
    ]
    path.write_text(yaml.safe_dump_all(docs))
    return path


def _config(tmp: Path, upstream: DNSUpstream, autopath: bool) -> dict[str, Any]:
    node_rc = tmp / "node-resolv.conf"
    node_rc.write_text("search corp.example\n")  # the node's own search domain, as the kubelet appends it
    block: dict[str, Any] = {
        "zones": ["."],
        "listen": f"{HOST_IP}:53",
        "kubernetes": {"zones": ["cluster.local", "in-addr.arpa", "ip6.arpa"],
                       "manifests": str(_manifests(tmp / "cluster.yaml")), "pods": "verified", "ttl": 30},
        "forward": {"to": [upstream.address]},
        "cache": {"ttl": 30},
        "log": {"format": "QLOG {remote} {type} {name} {rcode}"},
    }
    if autopath:
        block["autopath"] = {"resolv_conf": "@kubernetes", "node_resolv_conf": str(node_rc)}
    return {"servers": [block]}


def _pod_queries(log: str) -> list[tuple[str, str, str]]:
    out = []
    for line in log.splitlines():
        m = QLOG.match(line)
        if m and m.group(1) == POD_IP:
            out.append((m.group(2), m.group(3), m.group(4)))
    return out


def _lookup(ns: str, kubedns_process: Any, config: dict[str, Any]) -> tuple[list[str], list[tuple[str, str, str]]]:
    """``getent ahosts google.com`` in the Pod against a fresh server: (addresses, queries received)."""
    proc = kubedns_process(config)
    proc.wait_listening(53, HOST_IP)
    got = subprocess.run(["ip", "netns", "exec", ns, "getent", "ahosts", "google.com"],
                         capture_output=True, text=True, timeout=30)
    assert got.returncode == 0, (got.stderr, proc.log())
    addresses = sorted({line.split()[0] for line in got.stdout.splitlines() if line.strip()})
    deadline = time.monotonic() + 5
    queries = _pod_queries(proc.log())
    while time.monotonic() < deadline and not queries:  # the log is written as the answer goes
        time.sleep(0.1)
        queries = _pod_queries(proc.log())
    time.sleep(0.3)
    queries = _pod_queries(proc.log())
    proc.stop()
    return addresses, queries


def test_glibc_pod_sends_2_queries_for_an_external_name_with_autopath(pod_netns: str, kubedns_process: Any,
                                                                      tmp_path: Path) -> None:
    with DNSUpstream(host="127.0.0.1") as up:
        up.add("google.com", "A", "192.0.2.80").add("google.com", "AAAA", "2001:db8::80")
        up.set_soa("com")
        addresses, without = _lookup(pod_netns, kubedns_process, _config(tmp_path, up, autopath=False))
        assert addresses == ["192.0.2.80", "2001:db8::80"]
        # A and AAAA through the four search domains, then the name itself
        names = [n for _, n, _ in without]
        assert len(without) == 10, without
        assert set(names) == {f"google.com.{d}." for d in SEARCH.split()} | {"google.com."}
        (tmp_path / "with").mkdir()
        addresses, with_ap = _lookup(pod_netns, kubedns_process, _config(tmp_path / "with", up, autopath=True))
        assert addresses == ["192.0.2.80", "2001:db8::80"]
        assert sorted(with_ap) == [("A", "google.com.default.svc.cluster.local.", "NOERROR"),
                                   ("AAAA", "google.com.default.svc.cluster.local.", "NOERROR")], with_ap
        print(f"queries from the Pod for google.com: {len(without)} without autopath, {len(with_ap)} with it")
