"""Slim, frozen records of the Kubernetes objects DNS needs, built at the door from raw JSON.

The API returns objects of several kilobytes (managedFields, annotations, status...), of which DNS
needs a few dozen bytes.  Everything that enters the store is converted here, and the raw dict is
dropped right after, so 100k Pods cost a few MB rather than hundreds.  Records are frozen and
slotted so that ``old == new`` is a cheap way to ignore watch events that change nothing DNS sees
(status heartbeats, label edits...), which keeps the store's generation counter stable.

Each ``*_from_raw`` returns ``(key, record)`` with ``key = "namespace/name"`` (or ``"name"`` for
cluster-scoped objects).  Records may be ``None`` when the object has nothing DNS could serve
(e.g. a Pod without an IP yet, or one being deleted); the store treats that as a delete.

Two ways in, one meaning.  The ``*_from_raw`` converters take a dict of the whole object and are
the reference: they define what every odd input becomes.  The hot path (LIST pages, watch lines)
does not build that dict: :mod:`msgspec` decodes the JSON straight into the ``_*Obj`` structs
below, which declare only the fields DNS reads, so the rest of a 5 KB Pod (``managedFields``,
spec, statuses) is skipped in C without allocating a single Python object, and the
``*_from_struct`` converters turn them into the same records.  The structs use strict types
(``str``, ``int``, ``bool``, lists of structs), and a ``*_from_struct`` converter raises
:class:`Defer` on anything the reference treats specially (no name, a field of another type...):
then the caller decodes that object into a dict and asks the reference.  So the fast path only
ever handles inputs whose meaning is plain, and ``tests/test_fast_decode.py`` checks both paths
agree on random and mutated objects.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec

__all__ = [
    "Endpoint",
    "EndpointSlice",
    "FAST_KINDS",
    "KINDS",
    "Defer",
    "Namespace",
    "Pod",
    "Port",
    "Service",
    "endpointslice_from_raw",
    "namespace_from_raw",
    "pod_from_raw",
    "service_from_raw",
]

_intern = sys.intern


@dataclass(frozen=True, slots=True)
class Port:
    name: str  # "" for an unnamed port
    port: int
    protocol: str  # lower-case: "tcp", "udp", "sctp"


@dataclass(frozen=True, slots=True)
class Service:
    namespace: str
    name: str
    cluster_ips: tuple[str, ...]  # empty for headless and ExternalName services
    headless: bool
    external_name: str  # "" unless type ExternalName
    ports: tuple[Port, ...]
    publish_not_ready: bool
    #: ``spec.externalIPs`` then each ``status.loadBalancer.ingress`` IP (or its hostname, lower-case,
    #: when it has no IP), in that order, as CoreDNS keeps them: what ``k8s_external`` answers with
    external: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Endpoint:
    addresses: tuple[str, ...]
    hostname: str  # "" when unset
    ready: bool
    #: the targetRef Pod's name when it can be a DNS label, else "" (the ``endpoint_pod_names``
    #: name; kept whatever the option, so turning it on or off reuses the store)
    pod_name: str = ""


@dataclass(frozen=True, slots=True)
class EndpointSlice:
    namespace: str
    name: str
    service: str  # the kubernetes.io/service-name label; "" if missing
    endpoints: tuple[Endpoint, ...]
    ports: tuple[Port, ...]


@dataclass(frozen=True, slots=True)
class Pod:
    namespace: str
    name: str
    ips: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Namespace:
    name: str


def _meta(raw: dict[str, Any]) -> tuple[str, str]:
    meta = raw.get("metadata") or {}
    name = meta.get("name")
    if not name or not isinstance(name, str):
        # no key to store it under: "ns/" would be an object no event could ever update or delete
        raise ValueError(f"metadata.name is missing or not a string: {name!r}")
    return _intern(meta.get("namespace") or ""), name


#: Port tuples by their raw (name, port, protocol) triples: most Services and slices of a cluster
#: repeat a handful of port shapes, so they share one tuple instead of holding a copy each.
_PORTS_CACHE: dict[tuple[Any, ...], tuple[Port, ...]] = {}
_PORTS_CACHE_MAX = 4096


def _ports(raw_ports: list[dict[str, Any]] | None) -> tuple[Port, ...]:
    if not raw_ports:
        return ()
    try:
        # type() in the key: 61234.0 == 61234 hashes alike, but only the int is a valid port
        sig = tuple((p.get("name"), p.get("port"), type(p.get("port")), p.get("protocol")) for p in raw_ports)
        hit = _PORTS_CACHE.get(sig)
    except (TypeError, AttributeError):  # unhashable or malformed: no sharing, same checks below
        sig, hit = None, None
    if hit is not None:
        return hit
    out = []
    for p in raw_ports:
        num = p.get("port")
        if not isinstance(num, int):
            continue
        out.append(Port(_intern((p.get("name") or "").lower()), num, _intern((p.get("protocol") or "TCP").lower())))
    ports = tuple(out)
    if sig is not None and len(_PORTS_CACHE) < _PORTS_CACHE_MAX:
        _PORTS_CACHE[sig] = ports  # a race between watcher threads only costs a duplicate
    return ports


def _valid_ip(ip: Any) -> bool:
    """True for an IPv4 or IPv6 address in text form: what an A/AAAA/PTR answer can be built from."""
    if type(ip) is not str:
        return False
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in ip else socket.AF_INET, ip)
    except (OSError, ValueError):
        return False
    return True


def _addresses(raw_ips: Any) -> tuple[str, ...]:
    """The valid addresses of a list: one bad entry must not break every answer for the name."""
    if not isinstance(raw_ips, list):
        return ()
    ips = tuple(raw_ips)
    return ips if all(_valid_ip(ip) for ip in ips) else tuple(ip for ip in ips if _valid_ip(ip))


def _hostname(name: Any) -> str:
    """A load balancer's hostname as a CNAME target: lower-case, no trailing dot; "" if unusable."""
    if type(name) is not str:
        return ""
    name = name.rstrip(".").lower()
    return name if name and name.isascii() and len(name) <= 253 and " " not in name else ""


def _external(ext_ips: Any, ingress: Any) -> tuple[str, ...]:
    """What ``k8s_external`` serves of a Service (see :attr:`Service.external`); invalid entries skipped."""
    out = list(_addresses(ext_ips)) if ext_ips else []
    if isinstance(ingress, list):
        for lb in ingress:
            if not isinstance(lb, dict):
                continue
            ip = lb.get("ip")
            if ip:
                if _valid_ip(ip):
                    out.append(ip)
            elif (host := _hostname(lb.get("hostname"))):
                out.append(host)
    return tuple(out) if out else ()


def service_from_raw(raw: dict[str, Any]) -> tuple[str, Service | None]:
    ns, name = _meta(raw)
    spec = raw.get("spec") or {}
    stype = spec.get("type") or "ClusterIP"
    ext = ""
    ips: tuple[str, ...] = ()
    headless = False
    if stype == "ExternalName":
        ext = (spec.get("externalName") or "").rstrip(".").lower()
    else:
        cips = spec.get("clusterIPs") or ([spec["clusterIP"]] if spec.get("clusterIP") else [])
        if not cips or cips[0] == "None":
            headless = True
        else:
            ips = _addresses(cips)
    rec = Service(
        namespace=ns,
        name=name.lower(),
        cluster_ips=ips,
        headless=headless,
        external_name=ext,
        ports=_ports(spec.get("ports")),
        publish_not_ready=bool(spec.get("publishNotReadyAddresses")),
        external=_external(spec.get("externalIPs"), ((raw.get("status") or {}).get("loadBalancer") or {}).get("ingress")),
    )
    return f"{ns}/{name}", rec


def _pod_name(ref: Any) -> str:
    """The name ``endpoint_pod_names`` gives an endpoint: its targetRef's (a Pod's), if that is
    one DNS label.  CoreDNS takes any targetRef name under 64 characters; a Pod name is a DNS
    subdomain, so one with a dot would be several labels that no query could reach: such an
    endpoint keeps its dashed IP."""
    if not isinstance(ref, dict):
        return ""
    name = ref.get("name")
    if type(name) is not str or not 0 < len(name) < 64 or "." in name:
        return ""
    return name.lower()


def endpointslice_from_raw(raw: dict[str, Any]) -> tuple[str, EndpointSlice | None]:
    ns, name = _meta(raw)
    labels = (raw.get("metadata") or {}).get("labels") or {}
    eps = []
    if raw.get("addressType") in ("IPv4", "IPv6"):
        for ep in raw.get("endpoints") or ():
            conds = ep.get("conditions") or {}
            ready = conds.get("ready")
            eps.append(
                Endpoint(
                    addresses=_addresses(ep.get("addresses")),
                    hostname=(ep.get("hostname") or "").lower(),
                    ready=ready is None or bool(ready),  # nil means ready (API contract)
                    pod_name=_pod_name(ep.get("targetRef")),
                )
            )
    rec = EndpointSlice(
        namespace=ns,
        name=name,
        service=(labels.get("kubernetes.io/service-name") or "").lower(),
        endpoints=tuple(eps),
        ports=_ports(raw.get("ports")),
    )
    return f"{ns}/{name}", rec


def pod_from_raw(raw: dict[str, Any]) -> tuple[str, Pod | None]:
    """A Pod DNS may name (``pods verified``), or None: no IP yet, finished, or terminating.

    A Pod with ``metadata.deletionTimestamp`` set is being deleted; CoreDNS ignores it from that
    moment (its IP may soon belong to another Pod), so the MODIFIED event that sets the timestamp
    removes the IP here, long before the DELETED event at the end of the grace period.
    """
    ns, name = _meta(raw)
    if (raw.get("metadata") or {}).get("deletionTimestamp"):
        return f"{ns}/{name}", None
    status = raw.get("status") or {}
    # an address that is no IP is dropped, as for Services and EndpointSlices (it once reached the
    # store's PTR index, and a dict there broke the whole event batch)
    ips = tuple(ip for p in status.get("podIPs") or () if (ip := p.get("ip")) and _valid_ip(ip))
    if not ips and _valid_ip(status.get("podIP")):
        ips = (status["podIP"],)
    phase = status.get("phase")
    if not ips or phase in ("Succeeded", "Failed"):
        return f"{ns}/{name}", None
    return f"{ns}/{name}", Pod(ns, name, ips)


def namespace_from_raw(raw: dict[str, Any]) -> tuple[str, Namespace | None]:
    _, name = _meta(raw)
    return name, Namespace(name.lower())


#: resource name → converter; the order is the order an informer lists them in.
KINDS: dict[str, Callable[[dict[str, Any]], tuple[str, Any]]] = {
    "namespaces": namespace_from_raw,
    "services": service_from_raw,
    "endpointslices": endpointslice_from_raw,
    "pods": pod_from_raw,
}


# -- the fast path: only the fields DNS reads, decoded by msgspec ----------------------------


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
