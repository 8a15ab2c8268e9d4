"""The shipped configs say what they are and are what they say.

- ``conf/kubernetes/yaml-config/configmap.yaml`` mirrors kubeadm's default Corefile (forward to the node's
  /etc/resolv.conf, ``max_concurrent 1000``); ``conf/corefile.yaml`` is the project's own
  default, the same but forwarding to 8.8.8.8.  Compared by parsing, nothing is started.
- ``conf/demo.yaml`` serves /health, /ready and /metrics on loopback, as the README's curl lines
  show.  That one is started for real, with its ports moved to free ones and ``forward`` pointed
  at a loopback port where nothing listens (the shipped file forwards to the host's resolvers,
  which tests never query).
"""

from __future__ import annotations

import copy
import ipaddress
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubedns.config import parse
from tests.conftest import REPO, free_port, http_get, query, wait_for

KUBEADM_UPSTREAM = "/etc/resolv.conf"
PROJECT_UPSTREAM = "8.8.8.8"


def _yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def _configmap_corefile() -> dict[str, Any]:
    cm = _yaml(REPO / "conf" / "kubernetes" / "yaml-config" / "configmap.yaml")
    return yaml.safe_load(cm["data"]["corefile.yaml"])


def test_configmap_mirrors_kubeadm_and_corefile_yaml_is_the_project_default() -> None:
    cm_text = (REPO / "conf" / "kubernetes" / "yaml-config" / "configmap.yaml").read_text()
    own_text = (REPO / "conf" / "corefile.yaml").read_text()
    assert "mirrors kubeadm's default" in cm_text.split("apiVersion:")[0]
    assert "this project's own default" in own_text.split("servers:")[0]
    assert "forward . 8.8.8.8" in own_text.split("servers:")[0]
    cm, own = _configmap_corefile(), _yaml(REPO / "conf" / "corefile.yaml")
    # kubeadm: forward . /etc/resolv.conf { max_concurrent 1000 }
    assert cm["servers"][0]["forward"] == {"to": [KUBEADM_UPSTREAM], "max_concurrent": 1000}
    assert own["servers"][0]["forward"] == {"to": [PROJECT_UPSTREAM], "max_concurrent": 1000}
    # apart from the upstream the two are the same config (parsed, so spellings may differ)
    cm_same = copy.deepcopy(cm)
    cm_same["servers"][0]["forward"]["to"] = [PROJECT_UPSTREAM]  # resolv.conf is not read here
    a, b = parse(yaml.safe_dump(cm_same), "cm").servers[0], parse(yaml.safe_dump(own), "own").servers[0]
    assert a == b
    # kubeadm's Corefile, key for key
    k = a.kubernetes
    assert k.zones == ("cluster.local", "in-addr.arpa", "ip6.arpa") and k.pods == "insecure" and k.ttl == 30
    assert k.fallthrough == ("in-addr.arpa", "ip6.arpa")
    assert a.health.lameduck == 5.0 and a.ready.listen.port == 8181 and a.prometheus.listen.port == 9153
    assert a.cache.ttl == 30 and a.loop is not None and a.reload.interval == 30.0 and a.errors is not None


@pytest.mark.timeout(60)
def test_demo_serves_health_ready_and_metrics_on_loopback(kubedns_process) -> None:
    demo = _yaml(REPO / "conf" / "demo.yaml")
    block = demo["servers"][0]
    http = {"health": block["health"]["listen"], "ready": block["ready"], "prometheus": block["prometheus"]}
    for key, addr in http.items():
        assert ipaddress.ip_address(addr.rsplit(":", 1)[0]).is_loopback, (key, addr)
    readme = (REPO / "README.md").read_text()
    for addr, path in ((http["health"], "/health"), (http["ready"], "/ready"), (http["prometheus"], "/metrics")):
        assert f"curl http://{addr}{path}" in readme or f"curl -s http://{addr}{path}" in readme, (addr, path)
    # the same file, on free ports, forwarding nowhere but loopback
    port, hport, rport, mport = (free_port() for _ in range(4))
    block["listen"] = f"127.0.0.1:{port}"
    block["health"]["listen"] = f"127.0.0.1:{hport}"
    block["ready"], block["prometheus"] = f"127.0.0.1:{rport}", f"127.0.0.1:{mport}"
    block["kubernetes"]["manifests"] = str(REPO / "conf" / block["kubernetes"]["manifests"])
    block["forward"] = {"to": [f"127.0.0.1:{free_port()}"]}
    p = kubedns_process(demo)
    p.wait_listening(port)
    assert query(port, "nginx.default.svc.cluster.local").answer
    assert http_get(hport, "/health") == (200, "OK")
    assert wait_for(lambda: http_get(rport, "/ready") == (200, "OK"))
    assert "coredns_dns_requests_total{" in http_get(mport, "/metrics")[1]


def test_no_reference_points_outside_the_repository() -> None:
    """Docs, code and configs stand alone: no links into a folder beside the checkout."""
    words = ("../" + "shared", "ARCHITECTURE" + ".md", "ARCHITECTURE" + "'s")
    files = [REPO / n for n in ("README.md", "CONTRIBUTING.md", "CHANGELOG.md")]
    for folder in ("kubedns", "tests", "bench", "conf", "scripts", "twisted"):
        files += [f for f in (REPO / folder).rglob("*") if f.is_file() and f.suffix in ("", ".py", ".md", ".yaml", ".service")]
    found = [(str(f.relative_to(REPO)), w) for f in files for w in words if w in f.read_text(errors="replace")]
    assert found == []
    for doc in files[:3]:
        assert "](../" not in doc.read_text(), doc
