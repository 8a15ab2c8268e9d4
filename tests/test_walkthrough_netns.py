"""The classic walkthrough, end to end through the glibc resolver, inside a network namespace.

The test builds a private "Pod network": a namespace whose loopback carries the cluster DNS
Service IP (10.96.0.10) and the nginx Service's ClusterIP (10.96.0.100), a resolv.conf exactly as
the kubelet writes it for a Pod in ``default``, kubedns listening on 10.96.0.10:53 and an HTTP
server on 10.96.0.100:80.  Then ``curl http://nginx/`` and ``getent hosts nginx`` must work, as
they do in a Pod with CoreDNS.  Every packet stays inside the namespace the test created; the
namespace and its /etc/netns folder are removed afterwards.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, TWISTD

pytestmark = [
    pytest.mark.timeout(90),
    pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None, reason="needs root and iproute2 (ip netns)"),
]

DNS_IP = "10.96.0.10"
NGINX_IP = "10.96.0.100"
RESOLV_CONF = f"""nameserver {DNS_IP}
search default.svc.cluster.local svc.cluster.local cluster.local
options ndots:5
"""


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=20)


@pytest.fixture
def pod_netns(tmp_path: Path):
    name = f"kubedns-walk-{os.getpid()}"
    etc = Path("/etc/netns") / name
    _ip("netns", "add", name)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        etc.mkdir(parents=True, exist_ok=True)
        (etc / "resolv.conf").write_text(RESOLV_CONF)
        _ip("-n", name, "link", "set", "lo", "up")
        _ip("-n", name, "addr", "add", f"{DNS_IP}/32", "dev", "lo")
        _ip("-n", name, "addr", "add", f"{NGINX_IP}/32", "dev", "lo")
        yield name, procs
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=20)
        shutil.rmtree(etc, ignore_errors=True)


def _in_ns(ns: str, *cmd: str, **kw) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", ns, *cmd], capture_output=True, text=True, timeout=30, **kw)


def test_curl_nginx_from_a_pod(pod_netns, tmp_path: Path) -> None:
    ns, procs = pod_netns
    cfg = tmp_path / "corefile.yaml"
    cfg.write_text(yaml.safe_dump({
        "servers": [{
            "zones": ["."],
            "listen": f"{DNS_IP}:53",
            "kubernetes": {
                "zones": ["cluster.local", "in-addr.arpa", "ip6.arpa"],
                "manifests": str(REPO / "conf" / "demo-cluster.yaml"),
                "pods": "insecure",
                "ttl": 30,
            },
        }]
    }))
    log = open(tmp_path / "kubedns.log", "wb")
    procs.append(subprocess.Popen(
        ["ip", "netns", "exec", ns, *TWISTD, "-n", "--pidfile=", "kubedns", "--config", str(cfg)],
        cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
    ))
    www = tmp_path / "www"
    www.mkdir()
    (www / "index.html").write_text("Welcome to nginx!\n")
    procs.append(subprocess.Popen(
        ["ip", "netns", "exec", ns, "python3", "-m", "http.server", "80", "--bind", NGINX_IP, "--directory", str(www)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    ))
    deadline = time.monotonic() + 20
    got = None
    while time.monotonic() < deadline:
        got = _in_ns(ns, "getent", "hosts", "nginx")
        if got.returncode == 0:
            break
        time.sleep(0.3)
    assert got is not None and got.returncode == 0, (tmp_path / "kubedns.log").read_text()
    # glibc expanded "nginx" with the search list and got the ClusterIP
    assert got.stdout.split()[0] == NGINX_IP
    assert "nginx.default.svc.cluster.local" in got.stdout

    for url in ("http://nginx/", "http://nginx.default/", "http://nginx.default.svc.cluster.local/"):
        r = _in_ns(ns, "curl", "-sS", "--max-time", "5", url)
        assert r.returncode == 0, r.stderr
        assert "Welcome to nginx!" in r.stdout

    assert _in_ns(ns, "getent", "hosts", "kube-dns.kube-system").stdout.split()[0] == DNS_IP
    assert _in_ns(ns, "getent", "hosts", "no-such-service").returncode != 0
