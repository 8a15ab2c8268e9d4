"""Kubernetes objects as the API server returns them, and a kubeconfig that points at a server.

The factories build plain dicts in the apiserver's JSON shapes (v1 Service, discovery.k8s.io/v1
EndpointSlice, v1 Pod, v1 Namespace) with the defaults the real controllers fill in, so that the
same objects can be loaded into :class:`tests.fakeapi.FakeKubeAPI`, written to a manifests file,
or parsed straight into the store.  They live apart from the fake server so that a test needing
only objects does not depend on the server.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import yaml  # PyYAML, a dependency of the kubernetes client

__all__ = ["endpointslice", "kubeconfig", "namespace", "pod", "service"]

Obj = dict[str, Any]


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --------------------------------------------------------------------------
# kubeconfig


def kubeconfig(
    path: str | os.PathLike[str], url: str, *, namespace: str = "default", token: str | None = None
) -> str:
    """Write a kubeconfig for ``url`` (plain http; a bearer ``token`` if given) and return its path.

    Load it with ``kubernetes.config.load_kube_config(config_file=path)`` or
    ``kubernetes.config.new_client_from_config(config_file=path)``.
    """
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "preferences": {},
        "clusters": [{"name": "fake", "cluster": {"server": url}}],
        "users": [{"name": "fake", "user": {"token": token} if token else {}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake", "namespace": namespace}}],
        "current-context": "fake",
    }
    path = os.fspath(path)
    with open(path, "w", encoding="utf-8") as f:
        yaml.safe_dump(config, f, sort_keys=False)
    return path


# --------------------------------------------------------------------------
# Object constructors (shapes as the real apiserver returns them)

PortSpec = Mapping[str, Any] | int


def _ip_family(ip: str) -> str:
    return "IPv6" if ":" in ip else "IPv4"


def _default_cluster_ip(name: str, ns: str) -> str:
    h = zlib.crc32(f"{ns}/{name}".encode())
    return f"10.96.{(h >> 8) % 256}.{h % 250 + 2}"


def _meta(name: str, ns: str | None, labels: Mapping[str, str] | None, **extra: Any) -> Obj:
    meta: Obj = {"name": name}
    if ns is not None:
        meta["namespace"] = ns
    if labels:
        meta["labels"] = dict(labels)
    meta.update({k: v for k, v in extra.items() if v is not None})
    return meta


def service(
    name: str,
    ns: str = "default",
    cluster_ip: str | None = None,
    cluster_ips: Sequence[str] | None = None,
    ports: Sequence[PortSpec] | None = None,
    type: str = "ClusterIP",  # mirrors spec.type
    external_name: str | None = None,
    headless: bool = False,
    publish_not_ready: bool = False,
    ip_families: Sequence[str] | None = None,
    *,
    selector: Mapping[str, str] | None = None,
    labels: Mapping[str, str] | None = None,
    ip_family_policy: str | None = None,
) -> Obj:
    """A v1 Service.

    ``ports`` items are ints or dicts with ``port`` and optional ``name``,
    ``protocol`` (TCP), ``targetPort`` (= port), ``appProtocol``,
    ``nodePort``.  Without ``cluster_ip`` a ClusterIP service gets a stable
    address in 10.96.0.0/16; ``headless=True`` gives ``clusterIP: None``;
    ``external_name`` implies ``type: ExternalName``.
    """
    if external_name is not None:
        type = "ExternalName"
    spec: Obj = {"type": type}
    if ports is None:
        ports = [] if type == "ExternalName" else [{"name": "http", "port": 80}]
    spec_ports: list[Obj] = []
    for i, p in enumerate(ports):
        p = {"port": p} if isinstance(p, int) else dict(p)
        sp: Obj = {}
        if p.get("name"):
            sp["name"] = p["name"]
        sp["protocol"] = p.get("protocol", "TCP")
        if p.get("appProtocol"):
            sp["appProtocol"] = p["appProtocol"]
        sp["port"] = p["port"]
        sp["targetPort"] = p.get("targetPort", p["port"])
        if type in ("NodePort", "LoadBalancer"):
            sp["nodePort"] = p.get("nodePort", 30000 + (zlib.crc32(f"{ns}/{name}".encode()) + i) % 2768)
        spec_ports.append(sp)
    if spec_ports:
        spec["ports"] = spec_ports
    if selector is not None:
        spec["selector"] = dict(selector)
    if type == "ExternalName":
        spec["externalName"] = external_name or ""
    else:
        if headless:
            ips = ["None"]
        elif cluster_ips:
            ips = list(cluster_ips)
        else:
            ips = [cluster_ip or _default_cluster_ip(name, ns)]
        if cluster_ip is not None and not headless and ips[0] != cluster_ip:
            raise ValueError("cluster_ip must equal cluster_ips[0]")
        spec["clusterIP"] = ips[0]
        spec["clusterIPs"] = ips
        if ip_families is None:
            ip_families = ["IPv4"] if headless else [_ip_family(ip) for ip in ips]
        spec["ipFamilies"] = list(ip_families)
        spec["ipFamilyPolicy"] = ip_family_policy or ("SingleStack" if len(ip_families) < 2 else "RequireDualStack")
        spec["internalTrafficPolicy"] = "Cluster"
        if type in ("NodePort", "LoadBalancer"):
            spec["externalTrafficPolicy"] = "Cluster"
    spec["sessionAffinity"] = "None"
    if publish_not_ready:
        spec["publishNotReadyAddresses"] = True
    return {
        "kind": "Service",
        "apiVersion": "v1",
        "metadata": _meta(name, ns, labels),
        "spec": spec,
        "status": {"loadBalancer": {}},
    }


def endpointslice(
    name: str,
    ns: str,
    service: str,
    endpoints: Sequence[Mapping[str, Any]] | None = None,
    ports: Sequence[PortSpec] | None = None,
    address_type: str = "IPv4",
    *,
    labels: Mapping[str, str] | None = None,
) -> Obj:
    """A discovery.k8s.io/v1 EndpointSlice labelled for ``service``.

    ``endpoints`` items: ``addresses`` (list), optional ``hostname``,
    ``ready`` (True), ``serving`` (= ready), ``terminating`` (False),
    ``targetRef`` (dict, or a pod name), ``nodeName``, ``zone``.
    ``ports`` items are ints or dicts with ``port`` and optional ``name``
    (unnamed ports get ``name: ""`` as the controller writes them),
    ``protocol``, ``appProtocol``.  ``ports=None`` means one port ``http``/80.
    """
    all_labels = {
        "kubernetes.io/service-name": service,
        "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
    }
    all_labels.update(labels or {})
    eps: list[Obj] = []
    for e in endpoints or []:
        ready = bool(e.get("ready", True))
        ep: Obj = {
            "addresses": list(e["addresses"]),
            "conditions": dict(
                e.get("conditions")
                or {
                    "ready": ready,
                    "serving": bool(e.get("serving", ready)),
                    "terminating": bool(e.get("terminating", False)),
                }
            ),
        }
        if e.get("hostname"):
            ep["hostname"] = e["hostname"]
        ref = e.get("targetRef")
        if isinstance(ref, str):
            ref = {"kind": "Pod", "namespace": ns, "name": ref}
        if ref:
            ep["targetRef"] = dict(ref)
        if e.get("nodeName"):
            ep["nodeName"] = e["nodeName"]
        if e.get("zone"):
            ep["zone"] = e["zone"]
        eps.append(ep)
    if ports is None:
        ports = [{"name": "http", "port": 80}]
    slice_ports: list[Obj] = []
    for p in ports:
        p = {"port": p} if isinstance(p, int) else dict(p)
        sp: Obj = {"name": p.get("name", ""), "protocol": p.get("protocol", "TCP"), "port": p["port"]}
        if p.get("appProtocol"):
            sp["appProtocol"] = p["appProtocol"]
        slice_ports.append(sp)
    obj: Obj = {
        "kind": "EndpointSlice",
        "apiVersion": "discovery.k8s.io/v1",
        "metadata": _meta(name, ns, all_labels, generateName=f"{service}-"),
        "addressType": address_type,
        "endpoints": eps,
        "ports": slice_ports,
    }
    return obj


def pod(
    name: str,
    ns: str,
    ip: str | None,
    ips: Sequence[str] | None = None,
    phase: str = "Running",
    *,
    labels: Mapping[str, str] | None = None,
    hostname: str | None = None,
    subdomain: str | None = None,
    node_name: str = "node-1",
    ready: bool | None = None,
    deletion_timestamp: str | None = None,
) -> Obj:
    """A v1 Pod.  ``ip=None`` gives a pod without an address yet (Pending).

    ``ips`` defaults to ``[ip]``; ``deletion_timestamp`` (e.g. ``"now"`` or an
    RFC3339 string) marks it as terminating.
    """
    if deletion_timestamp == "now":
        deletion_timestamp = _now()
    if ready is None:
        ready = phase == "Running" and deletion_timestamp is None
    pod_ips = list(ips) if ips is not None else ([ip] if ip else [])
    spec: Obj = {
        "containers": [{"name": "app", "image": "registry.k8s.io/pause:3.9"}],
        "restartPolicy": "Always",
        "dnsPolicy": "ClusterFirst",
        "nodeName": node_name,
    }
    if hostname:
        spec["hostname"] = hostname
    if subdomain:
        spec["subdomain"] = subdomain
    st: Obj = {
        "phase": phase,
        "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        "hostIP": "10.0.0.1",
        "hostIPs": [{"ip": "10.0.0.1"}],
    }
    if pod_ips:
        st["podIP"] = pod_ips[0]
        st["podIPs"] = [{"ip": i} for i in pod_ips]
    meta = _meta(
        name,
        ns,
        labels,
        deletionTimestamp=deletion_timestamp,
        deletionGracePeriodSeconds=30 if deletion_timestamp else None,
    )
    return {"kind": "Pod", "apiVersion": "v1", "metadata": meta, "spec": spec, "status": st}


def namespace(name: str, *, labels: Mapping[str, str] | None = None, phase: str = "Active") -> Obj:
    """A v1 Namespace (with the automatic ``kubernetes.io/metadata.name`` label)."""
    all_labels = {"kubernetes.io/metadata.name": name}
    all_labels.update(labels or {})
    return {
        "kind": "Namespace",
        "apiVersion": "v1",
        "metadata": _meta(name, None, all_labels),
        "spec": {"finalizers": ["kubernetes"]},
        "status": {"phase": phase},
    }
