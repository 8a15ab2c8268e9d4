"""The fast way in: msgspec decodes API JSON into structs of only the fields DNS reads.

Why: a realistic Pod is ~5 KB of JSON (``managedFields``, spec, container statuses) of which DNS
reads ~100 bytes.  Building the whole object as dicts only to drop it costs seconds of CPU per
100k Pods; the ``_*Obj`` structs below declare only what DNS reads, so msgspec skips the rest in C
without allocating a single Python object, and the ``*_from_struct`` converters turn them into the
records of :mod:`kubedns.k8s.objects`, exactly as its ``*_from_raw`` reference converters would.

Why it may never guess: the structs use strict types (``str``, ``int``, ``bool``, lists of
structs), and a ``*_from_struct`` converter raises :class:`Defer` on anything the reference treats
specially (no name, a field of another type...): then the caller decodes that object into a dict
and asks the reference (:mod:`kubedns.k8s.listparse`, :mod:`kubedns.k8s.watch`).  So this path
only ever handles inputs whose meaning is plain, and ``tests/test_fast_decode.py`` checks both
paths agree on random and mutated objects.  Shared with the reference: the port tuples' cache
(one tuple per port shape, whichever path met it first) and the hostname rule.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

import msgspec

from kubedns.k8s.objects import (
    _PORTS_CACHE,
    _PORTS_CACHE_MAX,
    Endpoint,
    EndpointSlice,
    Namespace,
    Pod,
    Port,
    Service,
    _hostname,
    _intern,
)

__all__ = [
    "FAST_KINDS",
    "Defer",
    "FastKind",
    "endpointslice_from_struct",
    "namespace_from_struct",
    "pod_from_struct",
    "service_from_struct",
]



class Defer(Exception):  # noqa: N818  (not an error: a hand-over to the reference)
    """The struct holds something the reference converter must judge (see the module docstring)."""


class _S(msgspec.Struct, frozen=True, gc=False):
    """Base of the decode-only structs: no cycles, so the cyclic GC never tracks them."""


class _Labels(_S, frozen=True):
    service_name: str | None = msgspec.field(default=None, name="kubernetes.io/service-name")


class _Annotations(_S, frozen=True):
    trigger: str | None = msgspec.field(default=None, name="endpoints.kubernetes.io/last-change-trigger-time")


class _Meta(_S, frozen=True):
    name: str | None = None
    namespace: str | None = None
    resourceVersion: str | None = None  # noqa: N815  (the API's spelling)
    deletionTimestamp: str | None = None  # noqa: N815
    labels: _Labels | None = None
    annotations: _Annotations | None = None


class _Port(_S, frozen=True):
    name: str | None = None
    port: int | None = None
    protocol: str | None = None


class _SvcSpec(_S, frozen=True):
    type: str | None = None
    externalIPs: list[str] | None = None  # noqa: N815
    externalName: str | None = None  # noqa: N815
    clusterIP: str | None = None  # noqa: N815
    clusterIPs: list[str] | None = None  # noqa: N815
    ports: list[_Port] | None = None
    publishNotReadyAddresses: bool | None = None  # noqa: N815


class _Ingress(_S, frozen=True):
    ip: str | None = None
    hostname: str | None = None


class _LoadBalancer(_S, frozen=True):
    ingress: list[_Ingress] | None = None


class _SvcStatus(_S, frozen=True):
    loadBalancer: _LoadBalancer | None = None  # noqa: N815


class _Conditions(_S, frozen=True):
    ready: bool | None = None


class _Ref(_S, frozen=True):
    name: str | None = None


class _Ep(_S, frozen=True):
    addresses: list[str] | None = None
    hostname: str | None = None
    conditions: _Conditions | None = None
    targetRef: _Ref | None = None  # noqa: N815


class _PodIP(_S, frozen=True):
    ip: str | None = None


class _PodStatus(_S, frozen=True):
    podIP: str | None = None  # noqa: N815
    podIPs: list[_PodIP] | None = None  # noqa: N815
    phase: str | None = None


class _Obj(_S, frozen=True):
    metadata: _Meta | None = None


class _NamespaceObj(_Obj, frozen=True):
    pass


class _ServiceObj(_Obj, frozen=True):
    spec: _SvcSpec | None = None
    status: _SvcStatus | None = None


class _EndpointSliceObj(_Obj, frozen=True):
    addressType: str | None = None  # noqa: N815
    endpoints: list[_Ep] | None = None
    ports: list[_Port] | None = None


class _PodObj(_Obj, frozen=True):
    status: _PodStatus | None = None


_NO_META = _Meta()


def _meta_fast(obj: _Obj) -> tuple[str, str, _Meta]:
    meta = obj.metadata or _NO_META
    name = meta.name
    if not name:
        raise Defer()  # the reference says why it is refused
    return _intern(meta.namespace or ""), name, meta


def _ports_fast(raw_ports: list[_Port] | None) -> tuple[Port, ...]:
    if not raw_ports:
        return ()
    # the same key as _ports: (name, port, type(port), protocol) of each raw port
    sig = tuple((p.name, p.port, int if p.port is not None else type(None), p.protocol) for p in raw_ports)
    hit = _PORTS_CACHE.get(sig)
    if hit is not None:
        return hit
    ports = tuple(
        Port(_intern((p.name or "").lower()), p.port, _intern((p.protocol or "TCP").lower()))
        for p in raw_ports
        if p.port is not None
    )
    if len(_PORTS_CACHE) < _PORTS_CACHE_MAX:
        _PORTS_CACHE[sig] = ports
    return ports


_inet_pton = socket.inet_pton
_AF_INET, _AF_INET6 = socket.AF_INET, socket.AF_INET6


def _is_ip(ip: str) -> bool:
    """_valid_ip for a value the struct already typed as ``str`` (one call less per address)."""
    try:
        _inet_pton(_AF_INET6 if ":" in ip else _AF_INET, ip)
    except (OSError, ValueError):
        return False
    return True


def _addresses_fast(ips: list[str]) -> tuple[str, ...]:
    if len(ips) == 1:  # the usual endpoint: one address
        ip = ips[0]
        return (ip,) if _is_ip(ip) else ()
    return tuple(ip for ip in ips if _is_ip(ip))


def namespace_from_struct(obj: _Obj) -> tuple[str, Namespace | None]:
    _, name, _ = _meta_fast(obj)
    return name, Namespace(name.lower())


def service_from_struct(obj: _ServiceObj) -> tuple[str, Service | None]:
    ns, name, _ = _meta_fast(obj)
    spec = obj.spec or _NO_SPEC
    ext = ""
    ips: tuple[str, ...] = ()
    headless = False
    if (spec.type or "ClusterIP") == "ExternalName":
        ext = (spec.externalName or "").rstrip(".").lower()
    else:
        cips = spec.clusterIPs or ([spec.clusterIP] if spec.clusterIP else [])
        if not cips or cips[0] == "None":
            headless = True
        else:
            ips = _addresses_fast(cips)
    rec = Service(
        namespace=ns,
        name=name.lower(),
        cluster_ips=ips,
        headless=headless,
        external_name=ext,
        ports=_ports_fast(spec.ports),
        publish_not_ready=bool(spec.publishNotReadyAddresses),
        external=_external_fast(spec.externalIPs, obj.status),
    )
    return f"{ns}/{name}", rec


_NO_SPEC = _SvcSpec()


def _external_fast(ext_ips: list[str] | None, status: _SvcStatus | None) -> tuple[str, ...]:
    """_external from the structs (nearly every Service has neither: two attribute reads)."""
    lb = status.loadBalancer if status is not None else None
    ingress = lb.ingress if lb is not None else None
    if not ext_ips and not ingress:
        return ()
    out = list(_addresses_fast(ext_ips)) if ext_ips else []
    for ing in ingress or ():
        if ing.ip:
            if _is_ip(ing.ip):
                out.append(ing.ip)
        elif (host := _hostname(ing.hostname)):
            out.append(host)
    return tuple(out) if out else ()


def _pod_name_fast(ref: _Ref) -> str:
    name = ref.name
    if not name or len(name) > 63 or "." in name:
        return ""
    return name.lower()


def endpointslice_from_struct(obj: _EndpointSliceObj) -> tuple[str, EndpointSlice | None]:
    ns, name, meta = _meta_fast(obj)
    eps: list[Endpoint] = []
    if obj.addressType in ("IPv4", "IPv6") and obj.endpoints:
        append = eps.append
        for ep in obj.endpoints:
            conds, ref, addrs, host = ep.conditions, ep.targetRef, ep.addresses, ep.hostname
            ready = conds.ready if conds is not None else None
            append(
                Endpoint(
                    _addresses_fast(addrs) if addrs else (),
                    host.lower() if host else "",
                    ready is None or ready,
                    _pod_name_fast(ref) if ref is not None else "",
                )
            )
    labels = meta.labels
    rec = EndpointSlice(
        namespace=ns,
        name=name,
        service=((labels.service_name if labels is not None else None) or "").lower(),
        endpoints=tuple(eps),
        ports=_ports_fast(obj.ports),
    )
    return f"{ns}/{name}", rec


def pod_from_struct(obj: _PodObj) -> tuple[str, Pod | None]:
    meta = obj.metadata
    if meta is None or not meta.name:
        raise Defer()
    name = meta.name
    ns = _intern(meta.namespace or "")
    key = f"{ns}/{name}"
    status = obj.status
    if meta.deletionTimestamp or status is None or status.phase in ("Succeeded", "Failed"):
        return key, None
    ips: tuple[str, ...] = ()
    pod_ips = status.podIPs
    if pod_ips:
        if len(pod_ips) == 1:  # single-stack: the usual case
            ip = pod_ips[0].ip
            if ip and _is_ip(ip):
                ips = (ip,)
        else:
            ips = tuple(p.ip for p in pod_ips if p.ip and _is_ip(p.ip))
    if not ips:
        ip = status.podIP
        if not ip or not _is_ip(ip):
            return key, None
        ips = (ip,)
    return key, Pod(ns, name, ips)


class FastKind(msgspec.Struct, frozen=True):
    """How one resource's objects are decoded on the fast path: the struct and its converter."""

    struct: type[_Obj]
    convert: Callable[[Any], tuple[str, Any]]


#: resource name → fast decoding; the same keys as KINDS.
FAST_KINDS: dict[str, FastKind] = {
    "namespaces": FastKind(_NamespaceObj, namespace_from_struct),
    "services": FastKind(_ServiceObj, service_from_struct),
    "endpointslices": FastKind(_EndpointSliceObj, endpointslice_from_struct),
    "pods": FastKind(_PodObj, pod_from_struct),
}
