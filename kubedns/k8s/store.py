"""The in-memory view of the cluster that answers are computed from, with the indexes DNS needs.

Owned by the reactor thread: the informer threads never touch it directly, they hand their
changes over with ``reactor.callFromThread`` (see :mod:`kubedns.k8s.informer`), so nothing here
takes a lock.  Every change that alters what DNS would answer bumps :attr:`Store.generation`;
an event whose slim record equals the stored one is a no-op and bumps nothing, so caches of
encoded answers stay valid across the many status-only updates a busy cluster sends.

A relist after 410 Gone is applied *in place*: the watcher feeds the new list through
:meth:`Store.upsert` (equal records keep the old object, so no second copy of the cluster is
held) and then calls :meth:`Store.prune` with the keys it saw, deleting whatever vanished during
the gap.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from kubedns.k8s.objects import Endpoint, EndpointSlice, Namespace, Pod, Service

__all__ = ["Store"]

Listener = Callable[[], None]


class Store:
    """Services, EndpointSlices, Pods and Namespaces, indexed for DNS lookups."""

    def __init__(self, required: Iterable[str] = ("namespaces", "services", "endpointslices")):
        self.generation = 0
        #: SOA serial: wall-clock seconds of the last change, strictly increasing.
        self.serial = int(time.time())
        self.required = frozenset(required)
        self.synced_kinds: set[str] = set()
        self._objects: dict[str, dict[str, Any]] = {k: {} for k in ("namespaces", "services", "endpointslices", "pods")}
        # (ns, service) -> {slice key: EndpointSlice}
        self._slices_by_svc: dict[tuple[str, str], dict[str, EndpointSlice]] = {}
        # ip -> list of reverse entries: ("svc", ns, name) or ("ep", ns, svc, hostname)
        self._reverse: dict[str, list[tuple[str, ...]]] = {}
        # pod ip -> list of namespaces of pods holding it
        self._pod_ips: dict[str, list[str]] = {}
        # namespaces that have at least one service (namespace objects may not be watched)
        self._svc_count_by_ns: dict[str, int] = {}
        self._listeners: list[Listener] = []

    # -- state ------------------------------------------------------------------------------
    @property
    def synced(self) -> bool:
        """True once every required kind has completed its first list."""
        return self.required <= self.synced_kinds

    def missing_kinds(self) -> list[str]:
        return sorted(self.required - self.synced_kinds)

    def mark_synced(self, kind: str) -> None:
        if kind not in self.synced_kinds:
            self.synced_kinds.add(kind)
            self._changed()

    def add_listener(self, listener: Listener) -> None:
        """Call ``listener()`` after every change that bumps the generation."""
        self._listeners.append(listener)

    def _changed(self) -> None:
        self.generation += 1
        self.serial = max(self.serial + 1, int(time.time()))
        for listener in self._listeners:
            listener()

    def count(self, kind: str) -> int:
        return len(self._objects[kind])

    def keys(self, kind: str) -> Iterator[str]:
        return iter(self._objects[kind])

    # -- writes (reactor thread only) -------------------------------------------------------
    def upsert(self, kind: str, key: str, record: Any) -> bool:
        """Insert or replace; ``record is None`` deletes.  Returns True if DNS-visible state changed."""
        objs = self._objects[kind]
        old = objs.get(key)
        if record is None:
            if old is None:
                return False
            del objs[key]
            self._unindex(kind, old)
            self._changed()
            return True
        if old == record:
            return False
        if old is not None:
            self._unindex(kind, old)
        objs[key] = record
        self._index(kind, record, key)
        self._changed()
        return True

    def apply_batch(self, kind: str, items: Iterable[tuple[str, Any]]) -> int:
        """Upsert many ``(key, record)`` pairs (one thread hop per batch, not per object)."""
        return sum(1 for key, rec in items if self.upsert(kind, key, rec))

    def delete(self, kind: str, key: str) -> bool:
        return self.upsert(kind, key, None)

    def prune(self, kind: str, keep: set[str] | frozenset[str]) -> int:
        """Delete every object of ``kind`` whose key is not in ``keep`` (end of a relist)."""
        gone = [k for k in self._objects[kind] if k not in keep]
        for k in gone:
            self.upsert(kind, k, None)
        return len(gone)

    def _index(self, kind: str, rec: Any, key: str) -> None:
        if kind == "services":
            svc: Service = rec
            self._svc_count_by_ns[svc.namespace] = self._svc_count_by_ns.get(svc.namespace, 0) + 1
            for ip in svc.cluster_ips:
                self._reverse.setdefault(ip, []).append(("svc", svc.namespace, svc.name))
        elif kind == "endpointslices":
            sl: EndpointSlice = rec
            self._slices_by_svc.setdefault((sl.namespace, sl.service), {})[key] = sl
            for ep in sl.endpoints:
                for ip in ep.addresses:
                    self._reverse.setdefault(ip, []).append(("ep", sl.namespace, sl.service, endpoint_host(ep, ip)))
        elif kind == "pods":
            pod: Pod = rec
            for ip in pod.ips:
                self._pod_ips.setdefault(ip, []).append(pod.namespace)

    def _unindex(self, kind: str, rec: Any) -> None:
        if kind == "services":
            svc: Service = rec
            n = self._svc_count_by_ns.get(svc.namespace, 1) - 1
            if n:
                self._svc_count_by_ns[svc.namespace] = n
            else:
                self._svc_count_by_ns.pop(svc.namespace, None)
            for ip in svc.cluster_ips:
                _remove(self._reverse, ip, ("svc", svc.namespace, svc.name))
        elif kind == "endpointslices":
            sl: EndpointSlice = rec
            bucket = self._slices_by_svc.get((sl.namespace, sl.service))
            if bucket is not None:
                bucket.pop(f"{sl.namespace}/{sl.name}", None)
                if not bucket:
                    del self._slices_by_svc[(sl.namespace, sl.service)]
            for ep in sl.endpoints:
                for ip in ep.addresses:
                    _remove(self._reverse, ip, ("ep", sl.namespace, sl.service, endpoint_host(ep, ip)))
        elif kind == "pods":
            pod: Pod = rec
            for ip in pod.ips:
                _remove(self._pod_ips, ip, pod.namespace)

    # -- reads ------------------------------------------------------------------------------
    def service(self, namespace: str, name: str) -> Service | None:
        return self._objects["services"].get(f"{namespace}/{name}")

    def namespace_exists(self, namespace: str) -> bool:
        if f"{namespace}" in self._objects["namespaces"]:
            return True
        return namespace in self._svc_count_by_ns

    def endpoints(self, namespace: str, service: str) -> Iterator[tuple[Endpoint, EndpointSlice]]:
        """All endpoints of a service across its slices, ready or not."""
        for sl in (self._slices_by_svc.get((namespace, service)) or {}).values():
            for ep in sl.endpoints:
                yield ep, sl

    def reverse(self, ip: str) -> list[tuple[str, ...]]:
        return self._reverse.get(ip, [])

    def pod_in_namespace(self, ip: str, namespace: str) -> bool:
        return namespace in self._pod_ips.get(ip, ())

    def namespaces(self) -> Iterator[Namespace]:
        return iter(self._objects["namespaces"].values())


def endpoint_host(ep: Endpoint, ip: str) -> str:
    """The DNS label of an endpoint: its hostname, else its IP with dashes (CoreDNS's default)."""
    if ep.hostname:
        return ep.hostname
    return ip.replace(".", "-").replace(":", "-")


def _remove(index: dict[str, list[Any]], key: str, item: Any) -> None:
    lst = index.get(key)
    if not lst:
        return
    try:
        lst.remove(item)
    except ValueError:
        return
    if not lst:
        del index[key]
