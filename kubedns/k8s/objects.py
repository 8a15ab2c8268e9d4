"""Slim, frozen records of the Kubernetes objects DNS needs, built at the door from raw JSON.

The API returns objects of several kilobytes (managedFields, annotations, status...), of which DNS
needs a few dozen bytes.  Everything that enters the store is converted here, and the raw dict is
dropped right after, so 100k Pods cost a few MB rather than hundreds.  Records are frozen and
slotted so that ``old == new`` is a cheap way to ignore watch events that change nothing DNS sees
(status heartbeats, label edits...), which keeps the store's generation counter stable.

Each ``*_from_raw`` returns ``(key, record)`` with ``key = "namespace/name"`` (or ``"name"`` for
cluster-scoped objects).  Records may be ``None`` when the object has nothing DNS could serve
(e.g. a Pod without an IP yet, or one being deleted); the store treats that as a delete.

Two ways in, one meaning.  The ``*_from_raw`` converters here take a dict of the whole object and
are the reference: they define what every odd input becomes (a watch line or page msgspec will
not take, the manifests source, the tests).  The hot path (LIST pages, watch lines) does not build
that dict: :mod:`kubedns.k8s.fastdecode` decodes the JSON straight into structs of only the
fields DNS reads and turns them into the same records.  Why two modules: this one says what an
object *means* and changes when DNS needs a new field; the other is an optimisation of it that
must never mean anything else (``tests/test_fast_decode.py`` checks both agree on random and
mutated objects), and a reader of either should not have to wade through the other.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Callable
from typing import Any

import msgspec

__all__ = [
    "Endpoint",
    "EndpointSlice",
    "KINDS",
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


class _Record(msgspec.Struct, frozen=True, gc=False):
    """Base of the records: frozen msgspec structs that the cyclic garbage collector never tracks.

    Why not frozen dataclasses (what they were): a frozen dataclass's ``__init__`` sets each field
    through ``object.__setattr__``, ~1 µs per record, and every instance is tracked by the cyclic
    GC; a frozen :class:`msgspec.Struct` is built in C (~0.1 µs) and, with ``gc=False``, carries
    no GC header and is never traversed.  A record holds only strings, ints, bools and tuples of
    other records: no cycle can run through one.  Same meaning otherwise: fields by position or
    name, equality and hash by value, immutable.  At 100k Pods and 50k endpoints this is ~0.15 s
    of the first sync's CPU and a smaller collection when the sync ends.
    """


class Port(_Record, frozen=True, gc=False):
    name: str  # "" for an unnamed port
    port: int
    protocol: str  # lower-case: "tcp", "udp", "sctp"


class Service(_Record, frozen=True, gc=False):
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


class Endpoint(_Record, frozen=True, gc=False):
    addresses: tuple[str, ...]
    hostname: str  # "" when unset
    ready: bool
    #: the targetRef Pod's name when it can be a DNS label, else "" (the ``endpoint_pod_names``
    #: name; kept whatever the option, so turning it on or off reuses the store)
    pod_name: str = ""


class EndpointSlice(_Record, frozen=True, gc=False):
    namespace: str
    name: str
    service: str  # the kubernetes.io/service-name label; "" if missing
    endpoints: tuple[Endpoint, ...]
    ports: tuple[Port, ...]


class Pod(_Record, frozen=True, gc=False):
    namespace: str
    name: str
    ips: tuple[str, ...]


class Namespace(_Record, frozen=True, gc=False):
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
