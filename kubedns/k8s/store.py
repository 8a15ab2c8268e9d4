"""The in-memory view of the cluster that answers are computed from, with the indexes DNS needs.

Owned by the reactor thread: the informer threads never touch it directly, they hand their
changes over with ``reactor.callFromThread`` (see :mod:`kubedns.k8s.informer`), so nothing here
takes a lock.  Every change that alters what DNS would answer bumps :attr:`Store.generation`;
an event whose slim record equals the stored one is a no-op and bumps nothing, so caches of
encoded answers stay valid across the many status-only updates a busy cluster sends.

A relist after 410 Gone is applied *in place*: the watcher feeds the new list through
:meth:`Store.apply_batch` page by page (equal records keep the old object, so no second copy of
the cluster is held) and then deletes whatever vanished during the gap.

Memory is the constraint at scale (100k Pods and 50k endpoints must fit in CoreDNS's own budget
of ``(pods + services) / 1000 + 54`` MB for the whole process; ``bench/scale.py`` measures it),
so the indexes hold as little as DNS needs:

* Pods are not kept as records at all: DNS only asks "does a pod in namespace N have IP X"
  (``pods verified``), so the store keeps ``key → IP`` (a tuple only for dual-stack) and
  ``IP → namespace``; :class:`~kubedns.k8s.objects.Pod` records are accepted and dropped.
* The reverse index points at the Service or EndpointSlice record that owns an IP instead of
  holding a tuple, a list and a dashed-IP string per address; :meth:`Store.reverse` builds the
  entries when asked (PTR lookups are rare and the fast path caches their answers).
* An EndpointSlice without a ``kubernetes.io/service-name`` label belongs to no Service, so it
  is stored (it counts, and a later label makes it visible) but indexed nowhere: no forward
  endpoints and no PTR (its PTR would name ``<ip>..<ns>.svc``, an empty label).
* A slot of an index holds one value, and only becomes a tuple when an IP or a service really
  has several owners (host-network pods, services with several slices).

Pods, the bulk of a cluster, leave only strings and tuples of strings behind: nothing the cyclic
garbage collector has to traverse.

Each change also says what it touched (:attr:`Store.last_change`, read by the listeners): the
dependency keys of the names whose answers it can alter, so the server drops only those answers
(:mod:`kubedns.serve.fastcache`).  ``("svc", ns, name)`` covers every name at and under a Service (its
slices too), ``("ns", ns)`` a namespace's existence, ``("ip", ip)`` the PTR of an IP, ``("pod",
ip)`` the pod names of an IP.  A change too broad to list (sync, a large relist page) is None:
everything.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from kubedns.k8s.objects import Endpoint, EndpointSlice, Namespace, Pod, Service

__all__ = ["Store"]

Listener = Callable[[], None]

#: Past this many touched keys in one change, it is reported as "everything" (None).
TOUCHED_MAX = 4096


class Store:
    """Services, EndpointSlices, Pods and Namespaces, indexed for DNS lookups."""

    def __init__(self, required: Iterable[str] = ("namespaces", "services", "endpointslices")):
        self.generation = 0
        #: SOA serial: wall-clock seconds of the last change, strictly increasing.
        self.serial = int(time.time())
        self.required = frozenset(required)
        self.synced_kinds: set[str] = set()
        # kind -> key -> record; for pods key -> IP (or a tuple of IPs), see the module docstring
        self._objects: dict[str, dict[str, Any]] = {k: {} for k in ("namespaces", "services", "endpointslices", "pods")}
        # (ns, service) -> EndpointSlice, or a tuple of them
        self._slices_by_svc: dict[tuple[str, str], Any] = {}
        # ip -> the Service or EndpointSlice holding it, or a tuple of them
        self._reverse: dict[str, Any] = {}
        # pod ip -> namespace of the pod holding it, or a tuple of namespaces
        self._pod_ips: dict[str, Any] = {}
        # namespaces that have at least one service (namespace objects may not be watched)
        self._svc_count_by_ns: dict[str, int] = {}
        self._listeners: list[Listener] = []
        #: dependency keys touched since the last notification; None: too many, everything
        self._touched: set[tuple[str, ...]] | None = set()
        #: what the change being notified touched (see the module docstring); None: everything
        self.last_change: frozenset[tuple[str, ...]] | None = None

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
            self._touched = None  # SERVFAIL until synced: every answer may change
            self._changed()

    def add_listener(self, listener: Listener) -> None:
        """Call ``listener()`` after every change that bumps the generation."""
        self._listeners.append(listener)

    def _changed(self) -> None:
        touched, self._touched = self._touched, set()
        self.last_change = None if touched is None else frozenset(touched)
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
        if self._put(kind, key, record):
            self._changed()
            return True
        return False

    def apply_batch(self, kind: str, items: Iterable[tuple[str, Any]]) -> int:
        """Upsert many ``(key, record)`` pairs; the generation is bumped (and listeners told) once.

        This is how a list page arrives: one thread hop and one cache invalidation per page, not
        per object.  Returns how many changed DNS-visible state.
        """
        if kind == "pods":
            n = self._apply_pods(items)
            if n:
                self._changed()
            return n
        put = self._put
        n = 0
        for key, rec in items:
            if put(kind, key, rec):
                n += 1
        if n:
            self._changed()
        return n

    def delete(self, kind: str, key: str) -> bool:
        return self.upsert(kind, key, None)

    def prune(self, kind: str, keep: set[str] | frozenset[str]) -> int:
        """Delete every object of ``kind`` whose key is not in ``keep`` (end of a relist)."""
        gone = [k for k in self._objects[kind] if k not in keep]
        return self.apply_batch(kind, [(k, None) for k in gone]) if gone else 0

    def _put(self, kind: str, key: str, record: Any) -> bool:
        objs = self._objects[kind]
        old = objs.get(key)
        if kind == "pods":
            return self._put_pod(objs, key, old, record)
        if record is None:
            if old is None:
                return False
            self._touch(kind, key, old)
            del objs[key]
            self._unindex(kind, old)
            return True
        if old == record:
            return False  # equal records keep the old object: a relist holds no second copy
        if old is not None:
            self._touch(kind, key, old)
            self._unindex(kind, old)
        objs[key] = record
        self._index(kind, record)
        self._touch(kind, key, record)
        return True

    def _touch(self, kind: str, key: str, rec: Any) -> None:
        """Note the dependency keys ``rec`` (being added or removed) can change the answers of."""
        t = self._touched
        if t is None:
            return
        if kind == "services":
            svc: Service = rec
            t.add(("svc", svc.namespace, svc.name))
            t.add(("ns", svc.namespace))  # its namespace's existence
            for ip in svc.cluster_ips:
                t.add(("ip", ip))
            # the PTRs of its endpoints name it (or stop naming it, or follow publishNotReady)
            for sl in _multi_values(self._slices_by_svc.get((svc.namespace, svc.name))):
                for ip in _slice_ips(sl):
                    t.add(("ip", ip))
        elif kind == "endpointslices":
            sl = rec  # an EndpointSlice
            if sl.service:
                t.add(("svc", sl.namespace, sl.service))
                for ip in _slice_ips(sl):
                    t.add(("ip", ip))
        elif kind == "namespaces":
            t.add(("ns", key))
        else:  # anything else: no precise keys known
            self._touched = None
            return
        if len(t) > TOUCHED_MAX:
            self._touched = None

    def _put_pod(self, objs: dict[str, Any], key: str, old: Any, record: Pod | None) -> bool:
        if record is None or not record.ips:
            if old is None:
                return False
            del objs[key]
            self._unindex_pod(key, old)
            return True
        ips = record.ips
        new = ips[0] if len(ips) == 1 else ips
        if old == new:
            return False
        if old is not None:
            self._unindex_pod(key, old)
        self._touch_pod(new)
        objs[key] = new
        ns = record.namespace
        for ip in (new,) if type(new) is str else new:
            _multi_add(self._pod_ips, ip, ns)
        return True

    def _apply_pods(self, items: Iterable[tuple[str, Pod | None]]) -> int:
        """:meth:`_put_pod` for a batch, the usual case (a new single-stack Pod, an IP nobody else
        holds) inlined: ~20% less CPU than one _put_pod call per Pod (~0.11 -> ~0.09 s per 100k).  Any
        other case goes through :meth:`_put_pod`, so both mean the same by construction."""
        objs = self._objects["pods"]
        pod_ips = self._pod_ips
        get, ip_get, put_pod = objs.get, pod_ips.get, self._put_pod
        n = 0
        for key, rec in items:
            old = get(key)
            if old is None and rec is not None and len(ips := rec.ips) == 1 and ip_get(ip := ips[0]) is None:
                if self._touched is not None:
                    self._touch_pod(ip)
                objs[key] = ip
                pod_ips[ip] = rec.namespace
                n += 1
            elif put_pod(objs, key, old, rec):
                n += 1
        return n

    def _touch_pod(self, held: Any) -> None:
        t = self._touched
        if t is None:
            return
        for ip in (held,) if type(held) is str else held:
            t.add(("pod", ip))
        if len(t) > TOUCHED_MAX:
            self._touched = None

    def _unindex_pod(self, key: str, old: Any) -> None:
        self._touch_pod(old)
        ns = key.partition("/")[0]
        for ip in (old,) if type(old) is str else old:
            _multi_remove(self._pod_ips, ip, ns)

    def _index(self, kind: str, rec: Any) -> None:
        if kind == "services":
            svc: Service = rec
            self._svc_count_by_ns[svc.namespace] = self._svc_count_by_ns.get(svc.namespace, 0) + 1
            for ip in svc.cluster_ips:
                _multi_add(self._reverse, ip, svc)
        elif kind == "endpointslices":
            sl: EndpointSlice = rec
            if not sl.service:
                return  # no kubernetes.io/service-name label: nothing DNS may name (see _unindex)
            _multi_add(self._slices_by_svc, (sl.namespace, sl.service), sl)
            for ip in _slice_ips(sl):
                _multi_add(self._reverse, ip, sl)

    def _unindex(self, kind: str, rec: Any) -> None:
        if kind == "services":
            svc: Service = rec
            n = self._svc_count_by_ns.get(svc.namespace, 1) - 1
            if n:
                self._svc_count_by_ns[svc.namespace] = n
            else:
                self._svc_count_by_ns.pop(svc.namespace, None)
            for ip in svc.cluster_ips:
                _multi_remove(self._reverse, ip, svc)
        elif kind == "endpointslices":
            sl: EndpointSlice = rec
            if not sl.service:
                return  # never indexed
            _multi_remove(self._slices_by_svc, (sl.namespace, sl.service), sl)
            for ip in _slice_ips(sl):
                _multi_remove(self._reverse, ip, sl)

    # -- reads ------------------------------------------------------------------------------
    def service(self, namespace: str, name: str) -> Service | None:
        return self._objects["services"].get(f"{namespace}/{name}")

    def namespace_exists(self, namespace: str) -> bool:
        if f"{namespace}" in self._objects["namespaces"]:
            return True
        return namespace in self._svc_count_by_ns

    def endpoints(self, namespace: str, service: str) -> Iterator[tuple[Endpoint, EndpointSlice]]:
        """All endpoints of a service across its slices, ready or not."""
        for sl in _multi_values(self._slices_by_svc.get((namespace, service))):
            for ep in sl.endpoints:
                yield ep, sl

    def reverse(self, ip: str, pod_names: bool = False) -> list[tuple[str, ...]]:
        """``("svc", ns, name)`` and ``("ep", ns, service, host)`` entries for ``ip``: what its PTR names.

        An endpoint is named only when the forward lookup of that name answers ``ip``: its
        Service exists and publishes it (:func:`endpoint_published`, spec 2.4.3: PTR only for
        ready endpoints, unless the Service has publishNotReadyAddresses).  ``pod_names``: the
        host is named as ``endpoint_pod_names`` names it (:func:`endpoint_host`).
        """
        out: list[tuple[str, ...]] = []
        for owner in _multi_values(self._reverse.get(ip)):
            if type(owner) is Service:
                out.append(("svc", owner.namespace, owner.name))
                continue
            svc = self.service(owner.namespace, owner.service)
            if svc is None:
                continue
            for ep in owner.endpoints:
                if ip in ep.addresses and endpoint_published(ep, svc):
                    out.append(("ep", owner.namespace, owner.service, endpoint_host(ep, ip, pod_names)))
        return out

    def pod_in_namespace(self, ip: str, namespace: str) -> bool:
        held = self._pod_ips.get(ip)
        if held is None:
            return False
        return held == namespace if type(held) is str else namespace in held

    def namespaces(self) -> Iterator[Namespace]:
        return iter(self._objects["namespaces"].values())


def endpoint_published(ep: Endpoint, svc: Service) -> bool:
    """True if DNS names ``ep`` of ``svc``, forward and reverse: ready, or publishNotReadyAddresses."""
    return ep.ready or svc.publish_not_ready


def endpoint_host(ep: Endpoint, ip: str, pod_names: bool = False) -> str:
    """The DNS label of an endpoint: its hostname, else (``endpoint_pod_names``) its Pod's name,
    else its IP with dashes (CoreDNS's default)."""
    if ep.hostname:
        return ep.hostname
    if pod_names and ep.pod_name:
        return ep.pod_name
    if ":" in ip:
        dashed = ip.replace(":", "-")
        return dashed + "0" if dashed.endswith("-") else dashed  # "fd00::" is "fd00--0", as CoreDNS
    return ip.replace(".", "-")


def _slice_ips(sl: EndpointSlice) -> Iterator[str]:
    """Each distinct address of a slice once (the reverse index holds the slice once per IP)."""
    eps = sl.endpoints
    if len(eps) == 1 and len(eps[0].addresses) == 1:
        return iter(eps[0].addresses)
    return iter(dict.fromkeys(ip for ep in eps for ip in ep.addresses))


def _multi_values(held: Any) -> tuple[Any, ...]:
    if held is None:
        return ()
    return held if type(held) is tuple else (held,)


def _multi_add(index: dict[Any, Any], key: Any, item: Any) -> None:
    """Add ``item`` under ``key``: a lone value stays bare, several become a tuple."""
    held = index.get(key)
    if held is None:
        index[key] = item
    elif type(held) is tuple:
        index[key] = (*held, item)
    else:
        index[key] = (held, item)


def _multi_remove(index: dict[Any, Any], key: Any, item: Any) -> None:
    """Remove one occurrence of ``item`` (the same object, else an equal one) under ``key``."""
    held = index.get(key)
    if held is None:
        return
    if type(held) is not tuple:
        if held is item or held == item:
            del index[key]
        return
    at = next((i for i, x in enumerate(held) if x is item), None)
    if at is None:
        at = next((i for i, x in enumerate(held) if x == item), None)
        if at is None:
            return
    rest = held[:at] + held[at + 1 :]
    index[key] = rest[0] if len(rest) == 1 else rest
