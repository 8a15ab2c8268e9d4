"""Clusters as manifests files, and the configs that serve them from a real ``twistd kubedns``.

A manifests file (a ``kind: List`` of API objects) is the quickest way to give a real process a
cluster without an API server; the end-to-end, lifecycle, startup, reload and adversarial tests and
``bench/fuzz.py`` all start from one of the two clusters here.  Configs listen on 127.0.0.1 only
and forward nowhere.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tests.support import kubeobj

__all__ = ["NGINX_OBJS", "cluster_config", "cluster_objects", "manifests_config", "write_manifests"]

#: the smallest cluster: namespace ``default`` and Service ``nginx`` on 10.96.0.100
NGINX_OBJS = [kubeobj.namespace("default"), kubeobj.service("nginx", "default", cluster_ip="10.96.0.100")]


def cluster_objects(n_big: int = 120) -> list[dict]:
    """A cluster with every record kind: ClusterIP, dual-stack, headless (IPv4 and IPv6, one
    endpoint not ready), ExternalName, a pod, and ``big``: a headless Service with ``n_big``
    endpoints whose answer does not fit in 512 bytes."""
    big_eps = [{"addresses": [f"10.250.{i // 250}.{i % 250 + 1}"], "ready": True} for i in range(n_big)]
    return [
        kubeobj.namespace("default"),
        kubeobj.namespace("kube-system"),
        kubeobj.namespace("data"),
        kubeobj.service("kube-dns", "kube-system", cluster_ip="10.96.0.10", ports=[{"name": "dns", "port": 53, "protocol": "UDP"}]),
        kubeobj.service("nginx", "default", cluster_ip="10.96.0.100", ports=[{"name": "http", "port": 80, "protocol": "TCP"}]),
        kubeobj.endpointslice("nginx-1", "default", "nginx", endpoints=[{"addresses": ["10.244.0.5"], "ready": True}],
                              ports=[{"name": "http", "port": 80, "protocol": "TCP"}]),
        kubeobj.service("dual", "default", cluster_ip="10.96.0.200", cluster_ips=["10.96.0.200", "fd00::200"],
                        ip_families=["IPv4", "IPv6"]),
        kubeobj.service("pg", "data", headless=True, ports=[{"name": "pg", "port": 5432, "protocol": "TCP"}]),
        kubeobj.endpointslice("pg-1", "data", "pg", endpoints=[
            {"addresses": ["10.244.3.1"], "hostname": "pg-0", "ready": True},
            {"addresses": ["10.244.3.2"], "hostname": "pg-1", "ready": True},
            {"addresses": ["10.244.3.3"], "hostname": "pg-2", "ready": False},
        ], ports=[{"name": "pg", "port": 5432, "protocol": "TCP"}]),
        kubeobj.service("v6pods", "data", headless=True),
        kubeobj.endpointslice("v6pods-1", "data", "v6pods", address_type="IPv6",
                              endpoints=[{"addresses": ["fd00::1:5"], "ready": True}]),
        kubeobj.service("ext", "default", type="ExternalName", external_name="db.example.org"),
        kubeobj.service("big", "default", headless=True),
        kubeobj.endpointslice("big-1", "default", "big", endpoints=big_eps),
        kubeobj.pod("web", "default", "10.244.0.5"),
    ]


def write_manifests(path: Path, objs: list[dict]) -> str:
    """Write ``objs`` as a ``kind: List`` manifests file at ``path``; its path as a string."""
    path.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": objs}, sort_keys=False))
    return str(path)


def cluster_config(port: int, manifests: Path) -> dict:
    """One block on 127.0.0.1:``port`` serving the cluster zones from ``manifests``, no forward."""
    return {
        "servers": [{
            "zones": ["."],
            "listen": f"127.0.0.1:{port}",
            "kubernetes": {
                "zones": ["cluster.local", "in-addr.arpa", "ip6.arpa"],
                "manifests": str(manifests),
                "pods": "insecure",
                "ttl": 30,
            },
        }]
    }


def manifests_config(
    port: int, manifests: str, ttl: int = 5, extra: dict[str, Any] | None = None, port2: int | None = None
) -> dict:
    """A block on 127.0.0.1:``port`` serving ``cluster.local`` from ``manifests`` with ``ttl``, the
    block's ``extra`` keys merged in, and the same block again on ``port2`` if given."""
    block = {
        "zones": ["."],
        "listen": f"127.0.0.1:{port}",
        "kubernetes": {"zones": ["cluster.local"], "manifests": manifests, "ttl": ttl},
        **(extra or {}),
    }
    servers = [block]
    if port2 is not None:
        servers.append({**block, "listen": f"127.0.0.1:{port2}"})
    return {"servers": servers}
