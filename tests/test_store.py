"""Unit tests of :class:`kubedns.k8s.store.Store`'s indexes, independent of DNS encoding.

The store keeps compact, hand-maintained indexes (bare values that turn into tuples when a slot
gets several owners, pods reduced to ``key → IP``, a reverse index pointing at owning records)
so that 100k pods fit in CoreDNS's memory budget.  That kind of code breaks on the rare paths: a
second owner of an IP going away, a slice moving to another service, a pod's IP moving to another
namespace, a relist pruning half a namespace.  DNS tests only reach those paths by accident, so
here the store is compared, after every step of seeded random operation sequences, with a naive
reference model (plain dicts of the raw objects, every answer recomputed by scanning them all).

The generation counter is what keeps cached answers valid, so it is checked as strictly as the
data: it moves by exactly one per upsert/batch/prune that changes a slim record (never for an
equal one), listeners run once per bump and after the change, and any change of what the read
methods return implies a bump.  Targeted tests pin prune, apply_batch, listeners and sync state.
"""

from __future__ import annotations

import copy
import random
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

import pytest

from kubedns.k8s import objects
from kubedns.k8s.objects import KINDS
from kubedns.k8s.store import Store
from tests.support import kubeobj

Raw = dict[str, Any]

# A deliberately small universe, so that names, keys and IPs collide all the time.
NS_OBJECTS = ("default", "team-a", "team-b")  # namespaces that may exist as Namespace objects
ORPHAN_NS = "orphan"  # never a Namespace object: exists only while it holds a service
ALL_NS = (*NS_OBJECTS, ORPHAN_NS)
SVC_NAMES = ("web", "db", "ext")
SLICE_NAMES = ("s1", "s2", "s3")
POD_NAMES = ("p1", "p2", "p3")
V4 = ("10.0.0.1", "10.0.0.2", "10.0.0.3")
V6 = ("fd00::1", "fd00::2")
QUERY_IPS = (*V4, *V6, "192.0.2.99")  # the last one is never used by any object
KIND_NAMES = tuple(KINDS)

RUNS = 200
STEPS = 150


# -- random raw objects ----------------------------------------------------------------------


def _rand_service(rng: random.Random) -> Raw:
    name, ns = rng.choice(SVC_NAMES), rng.choice(ALL_NS)
    ports: Any = rng.choice(
        [None, [], [{"name": "http", "port": 80}], [{"name": "dns", "port": 53, "protocol": "UDP"}, 53]]
    )
    publish = rng.random() < 0.2
    shape = rng.choice(("v4", "v4", "v6", "dual", "headless", "external"))
    if shape == "v4":
        return kubeobj.service(name, ns, cluster_ip=rng.choice(V4), ports=ports, publish_not_ready=publish)
    if shape == "v6":
        ip = rng.choice(V6)
        return kubeobj.service(name, ns, cluster_ip=ip, cluster_ips=[ip], ports=ports, publish_not_ready=publish)
    if shape == "dual":
        ips = [rng.choice(V4), rng.choice(V6)]
        rng.shuffle(ips)
        return kubeobj.service(name, ns, cluster_ips=ips, ports=ports, publish_not_ready=publish)
    if shape == "headless":
        return kubeobj.service(name, ns, headless=True, ports=ports, publish_not_ready=publish)
    target = rng.choice(("db.example.com", "Mixed.Example.ORG."))
    return kubeobj.service(name, ns, external_name=target, ports=ports or [])


def _rand_slice(rng: random.Random) -> Raw:
    ns, name = rng.choice(ALL_NS), rng.choice(SLICE_NAMES)
    family = rng.choice(("IPv4", "IPv4", "IPv6", "FQDN"))
    pool = V6 if family == "IPv6" else V4
    eps: list[dict[str, Any]] = []
    for _ in range(rng.randint(0, 3)):
        ep: dict[str, Any] = {"addresses": rng.sample(pool, rng.choice((1, 1, 1, 2)))}
        if rng.random() < 0.3:
            ep["hostname"] = rng.choice(("host-a", "host-b", "Host-C"))
        r = rng.random()
        if r < 0.25:
            ep["ready"] = False
        elif r < 0.35:
            ep["conditions"] = {"serving": True}  # ready unset: nil means ready
        eps.append(ep)
    ports: Any = rng.choice((None, [], [{"name": "http", "port": 80}], [8080]))
    raw = kubeobj.endpointslice(name, ns, rng.choice(SVC_NAMES), endpoints=eps, ports=ports, address_type=family)
    if rng.random() < 0.1:
        del raw["metadata"]["labels"]["kubernetes.io/service-name"]  # an orphan slice: service ""
    return raw


def _rand_pod(rng: random.Random) -> Raw:
    ns, name = rng.choice(ALL_NS), rng.choice(POD_NAMES)
    r = rng.random()
    phase = rng.choice(("Running", "Running", "Running", "Running", "Pending", "Succeeded", "Failed"))
    if r < 0.15:
        return kubeobj.pod(name, ns, None, phase="Pending")
    # some are being deleted (deletionTimestamp set): DNS must stop naming them at once
    deleting = "2026-01-01T00:00:00Z" if rng.random() < 0.1 else None
    if r < 0.35:
        ips = [rng.choice(V4), rng.choice(V6)]
        return kubeobj.pod(name, ns, ips[0], ips=ips, phase=phase, deletion_timestamp=deleting)
    return kubeobj.pod(name, ns, rng.choice(V4 + V6), phase=phase, deletion_timestamp=deleting)


def _rand_namespace(rng: random.Random) -> Raw:
    return kubeobj.namespace(rng.choice(NS_OBJECTS), phase=rng.choice(("Active", "Terminating")))


RANDOM_OBJECT: dict[str, Callable[[random.Random], Raw]] = {
    "namespaces": _rand_namespace,
    "services": _rand_service,
    "endpointslices": _rand_slice,
    "pods": _rand_pod,
}


def _cosmetic(raw: Raw, rng: random.Random) -> Raw:
    """A copy of ``raw`` changed only where DNS does not look (what most watch events are)."""
    new = copy.deepcopy(raw)
    meta = new["metadata"]
    meta["resourceVersion"] = str(rng.randint(1, 10**6))
    meta.setdefault("annotations", {})["touched"] = str(rng.random())
    meta.setdefault("labels", {})["app"] = rng.choice(("a", "b"))
    if "status" in new and "conditions" in new["status"]:
        new["status"]["conditions"] = [{"type": "Ready", "status": rng.choice(("True", "False"))}]
    for ep in new.get("endpoints") or ():
        ep["nodeName"] = rng.choice(("node-1", "node-2"))
        ep["zone"] = "zone-a"
    return new


# -- the reference model -------------------------------------------------------------------


def _naive_pod_ips(raw: Raw) -> tuple[str, ...] | None:
    """What DNS may know of a pod, read straight off the raw object (not via pod_from_raw)."""
    st = raw.get("status") or {}
    if st.get("phase") in ("Succeeded", "Failed") or raw["metadata"].get("deletionTimestamp"):
        return None
    ips = tuple(p["ip"] for p in st.get("podIPs") or () if p.get("ip"))
    if not ips and st.get("podIP"):
        ips = (st["podIP"],)
    return ips or None


def _multiset(items: Iterable[Any]) -> frozenset[tuple[Any, int]] | None:
    """``items`` as a multiset: the (item, count) pairs of a Counter, or None when empty.

    (A frozenset compares in C, a Counter in Python; most slots are empty.)
    """
    listed = list(items)
    return frozenset(Counter(listed).items()) if listed else None


def _dashed(ip: str) -> str:
    return ip.replace(".", "-").replace(":", "-")


class Model:
    """Plain dicts of the raw objects; every answer recomputed from scratch at each step."""

    def __init__(self, required: Iterable[str]):
        self.required = frozenset(required)
        self.raw: dict[str, dict[str, Raw]] = {k: {} for k in KIND_NAMES}
        #: the slim record (a pod's IPs) of each raw object, converted once when it is put
        self.visible: dict[str, dict[str, Any]] = {k: {} for k in KIND_NAMES}
        self.generation = 0
        self.synced_kinds: set[str] = set()

    @staticmethod
    def _visible(kind: str, raw: Raw | None) -> Any:
        """The DNS-visible content of ``raw``: its slim record, or a pod's IPs; None if nothing."""
        if raw is None:
            return None
        if kind == "pods":
            return _naive_pod_ips(raw)
        return KINDS[kind](raw)[1]

    def _put(self, kind: str, key: str, raw: Raw | None) -> bool:
        old = self.visible[kind].get(key)
        new = self._visible(kind, raw)
        if new is None:
            self.raw[kind].pop(key, None)
            self.visible[kind].pop(key, None)
        else:
            self.raw[kind][key] = raw  # type: ignore[assignment]
            self.visible[kind][key] = new
        return old != new

    def upsert(self, kind: str, key: str, raw: Raw | None) -> bool:
        changed = self._put(kind, key, raw)
        self.generation += changed
        return changed

    def apply_batch(self, kind: str, items: list[tuple[str, Raw | None]]) -> int:
        n = sum(self._put(kind, key, raw) for key, raw in items)
        self.generation += n > 0
        return n

    def prune(self, kind: str, keep: set[str]) -> int:
        return self.apply_batch(kind, [(k, None) for k in list(self.raw[kind]) if k not in keep])

    def mark_synced(self, kind: str) -> None:
        if kind not in self.synced_kinds:
            self.synced_kinds.add(kind)
            self.generation += 1

    # reads
    def view(self) -> dict[tuple[str, ...], Any]:
        """Every read over the test universe, recomputed from scratch with one scan per kind."""
        v: dict[tuple[str, ...], Any] = {}
        for ns in ALL_NS:
            v["ns", ns] = False
            for name in SVC_NAMES:
                v["svc", ns, name] = None
            for ip in QUERY_IPS:
                v["pod", ip, ns] = False
        eps: dict[tuple[str, str], list[tuple[str, objects.Endpoint]]] = {}
        ptr: dict[str, list[tuple[str, ...]]] = {ip: [] for ip in QUERY_IPS}
        for raw in self.raw["namespaces"].values():
            v["ns", raw["metadata"]["name"]] = True
        for s in self.visible["services"].values():
            v["ns", s.namespace] = True
            v["svc", s.namespace, s.name] = s
            for ip in s.cluster_ips:
                ptr[ip].append(("svc", s.namespace, s.name))
        services = {(s.namespace, s.name): s for s in self.visible["services"].values()}
        for sl in self.visible["endpointslices"].values():
            if not sl.service:
                continue  # no kubernetes.io/service-name label: invisible to DNS
            owner = services.get((sl.namespace, sl.service))
            for ep in sl.endpoints:
                eps.setdefault((sl.namespace, sl.service), []).append((sl.name, ep))
                # a PTR names an endpoint only if its Service exists and publishes it (spec 2.4.3)
                if owner is None or not (ep.ready or owner.publish_not_ready):
                    continue
                for ip in dict.fromkeys(ep.addresses):  # one entry per endpoint holding the IP
                    ptr[ip].append(("ep", sl.namespace, sl.service, ep.hostname or _dashed(ip)))
        for key, ips in self.visible["pods"].items():
            ns = self.raw["pods"][key]["metadata"]["namespace"]
            for ip in ips:
                v["pod", ip, ns] = True
        for ns in ALL_NS:
            for svc in (*SVC_NAMES, ""):
                v["eps", ns, svc] = _multiset(eps.get((ns, svc), ()))
        for ip in QUERY_IPS:
            v["ptr", ip] = tuple(sorted(ptr[ip]))
        for kind in KIND_NAMES:
            v["count", kind] = len(self.raw[kind])
            v["keys", kind] = frozenset(self.raw[kind])
        return v


def store_view(store: Store) -> dict[tuple[str, ...], Any]:
    """Everything the store's read methods answer over the test universe."""
    v: dict[tuple[str, ...], Any] = {}
    endpoints, pod_in_namespace = store.endpoints, store.pod_in_namespace
    for ns in ALL_NS:
        v["ns", ns] = store.namespace_exists(ns)
        for name in SVC_NAMES:
            v["svc", ns, name] = store.service(ns, name)
        for svc in (*SVC_NAMES, ""):
            pairs = list(endpoints(ns, svc))
            if pairs:
                assert all((sl.namespace, sl.service) == (ns, svc) and ep in sl.endpoints for ep, sl in pairs), pairs
                v["eps", ns, svc] = _multiset((sl.name, ep) for ep, sl in pairs)
            else:
                v["eps", ns, svc] = None
        for ip in QUERY_IPS:
            v["pod", ip, ns] = pod_in_namespace(ip, ns)
    for ip in QUERY_IPS:
        v["ptr", ip] = tuple(sorted(store.reverse(ip)))
    for kind in KIND_NAMES:
        v["count", kind] = store.count(kind)
        v["keys", kind] = frozenset(store.keys(kind))
    return v


def _diff(got: dict[Any, Any], want: dict[Any, Any]) -> str:
    return "\n".join(f"  {k}: store={got.get(k)!r} model={want.get(k)!r}" for k in want if got.get(k) != want.get(k))


# -- the randomized model-based test ---------------------------------------------------------


Op = tuple[tuple[Any, ...], Callable[[Store], Any], Callable[[Model], Any]]


def _random_op(rng: random.Random, model: Model) -> Op:
    """One random operation: (description, apply to store, apply to model).

    The description is a tuple of the operation's arguments, formatted only if a check fails.
    """
    kind = rng.choice(KIND_NAMES)
    existing = list(model.raw[kind])
    r = rng.random()

    def rand_item() -> tuple[str, Raw | None]:
        q = rng.random()
        if q < 0.2 and existing:
            return rng.choice(existing), None
        if q < 0.4 and existing:
            return _key_raw(kind, _cosmetic(model.raw[kind][rng.choice(existing)], rng))
        return _key_raw(kind, RANDOM_OBJECT[kind](rng))

    if r < 0.40:
        key, raw = _key_raw(kind, RANDOM_OBJECT[kind](rng))
        return ("upsert", kind, key, raw), _store_upsert(kind, key, raw), lambda m: m.upsert(kind, key, raw)
    if r < 0.52 and existing:
        key, raw = _key_raw(kind, _cosmetic(model.raw[kind][rng.choice(existing)], rng))
        return ("re-upsert", kind, key, raw), _store_upsert(kind, key, raw), lambda m: m.upsert(kind, key, raw)
    if r < 0.62:
        key = rng.choice(existing) if existing and rng.random() < 0.8 else f"{rng.choice(ALL_NS)}/nope"
        return ("delete", kind, key), lambda s: s.delete(kind, key), lambda m: m.upsert(kind, key, None)
    if r < 0.85:
        items = [rand_item() for _ in range(rng.randint(0, 6))]
        converted = [(k, None if raw is None else KINDS[kind](raw)[1]) for k, raw in items]
        return (
            ("apply_batch", kind, items),
            lambda s: s.apply_batch(kind, iter(converted)),
            lambda m: m.apply_batch(kind, items),
        )
    if r < 0.95:
        keep = {k for k in existing if rng.random() < 0.6} | {f"{ALL_NS[0]}/never-existed"}
        return ("prune", kind, keep), lambda s: s.prune(kind, keep), lambda m: m.prune(kind, keep)
    return ("mark_synced", kind), lambda s: s.mark_synced(kind), lambda m: m.mark_synced(kind)


def _key_raw(kind: str, raw: Raw) -> tuple[str, Raw]:
    return KINDS[kind](raw)[0], raw


def _store_upsert(kind: str, key: str, raw: Raw) -> Callable[[Store], bool]:
    key2, rec = KINDS[kind](raw)
    assert key2 == key
    return lambda s: s.upsert(kind, key, rec)


@pytest.mark.parametrize("seed", range(RUNS))
def test_store_matches_naive_model(seed: int) -> None:
    rng = random.Random(seed)
    required = rng.choice(
        [("namespaces", "services", "endpointslices"), ("namespaces", "services", "endpointslices", "pods"), ()]
    )
    store, model = Store(required=required), Model(required)
    calls: list[int] = []
    store.add_listener(lambda: calls.append(store.generation))
    view = store_view(store)
    assert view == model.view()
    log: list[tuple[Any, ...]] = []

    def where() -> str:
        return f"seed={seed} step={len(log) - 1}; last ops:\n  " + "\n  ".join(map(repr, log[-5:]))

    for _ in range(STEPS):
        desc, on_store, on_model = _random_op(rng, model)
        log.append(desc)
        gen, serial, n_calls = store.generation, store.serial, len(calls)
        got = on_store(store)
        want = on_model(model)
        if desc[0] != "mark_synced":
            assert got == want, f"return value {got!r} != model {want!r}; {where()}"
        assert store.generation == model.generation, f"generation {store.generation} != {model.generation}; {where()}"
        bumps = store.generation - gen
        assert bumps in (0, 1), where()
        # listeners: once per bump, and they already see the new generation
        assert calls[n_calls:] == ([store.generation] if bumps else []), where()
        assert (store.serial > serial) if bumps else (store.serial == serial), where()
        new_view = store_view(store)
        want_view = model.view()
        assert new_view == want_view, f"store and model disagree; {where()}\n{_diff(new_view, want_view)}"
        if not bumps:
            assert new_view == view, f"visible state changed without a generation bump; {where()}"
        view = new_view
        assert store.synced == (model.required <= model.synced_kinds), where()
        assert store.missing_kinds() == sorted(model.required - model.synced_kinds), where()


# -- targeted tests ---------------------------------------------------------------------------


def _svc(name: str, ns: str = "default", **kw: Any) -> tuple[str, objects.Service | None]:
    return objects.service_from_raw(kubeobj.service(name, ns, **kw))


def _slice(name: str, ns: str, svc: str, *ips: str, **kw: Any) -> tuple[str, objects.EndpointSlice | None]:
    return objects.endpointslice_from_raw(
        kubeobj.endpointslice(name, ns, svc, endpoints=[{"addresses": [ip]} for ip in ips], **kw)
    )


def _pod(name: str, ns: str, ip: str | None, **kw: Any) -> tuple[str, objects.Pod | None]:
    return objects.pod_from_raw(kubeobj.pod(name, ns, ip, **kw))


def _ns(name: str) -> tuple[str, objects.Namespace | None]:
    return objects.namespace_from_raw(kubeobj.namespace(name))


def _counting(store: Store) -> list[int]:
    calls: list[int] = []
    store.add_listener(lambda: calls.append(store.generation))
    return calls


def test_prune_deletes_exactly_the_keys_not_kept() -> None:
    store = Store()
    for i in range(6):
        store.upsert("services", *_svc(f"s{i}", "default" if i % 2 else "other", cluster_ip=f"10.0.1.{i + 1}"))
    calls = _counting(store)
    gen = store.generation
    keep = {"default/s1", "other/s2", "default/s5", "default/not-there"}
    assert store.prune("services", keep) == 3
    assert set(store.keys("services")) == {"default/s1", "other/s2", "default/s5"}
    assert store.generation == gen + 1 and calls == [gen + 1]
    assert store.reverse("10.0.1.1") == []  # other/s0 is gone, with its reverse entry
    assert store.reverse("10.0.1.2") == [("svc", "default", "s1")]
    assert store.prune("services", keep) == 0  # nothing left to delete: no bump, no call
    assert store.generation == gen + 1 and calls == [gen + 1]


def test_prune_leaves_other_kinds_alone() -> None:
    store = Store()
    store.upsert("services", *_svc("web", cluster_ip="10.0.0.1"))
    store.upsert("endpointslices", *_slice("web-1", "default", "web", "10.1.0.1"))
    store.upsert("pods", *_pod("p", "default", "10.1.0.1"))
    store.upsert("namespaces", *_ns("default"))
    assert store.prune("pods", set()) == 1
    assert store.count("pods") == 0 and not store.pod_in_namespace("10.1.0.1", "default")
    assert [store.count(k) for k in ("namespaces", "services", "endpointslices")] == [1, 1, 1]
    assert store.prune("namespaces", set()) == 1
    assert store.namespace_exists("default")  # still holds a service


def test_apply_batch_bumps_once_and_calls_listeners_once() -> None:
    store = Store()
    calls = _counting(store)
    batch = [_svc(f"s{i}", cluster_ip=f"10.0.2.{i + 1}") for i in range(5)]
    assert store.apply_batch("services", batch) == 5
    assert store.generation == 1 and calls == [1]
    # an equal page (a relist of an unchanged cluster): no bump, no call, old objects kept
    held = store.service("default", "s0")
    assert store.apply_batch("services", [_svc(f"s{i}", cluster_ip=f"10.0.2.{i + 1}") for i in range(5)]) == 0
    assert store.generation == 1 and calls == [1]
    assert store.service("default", "s0") is held
    # a mixed page: one change, one delete, one equal, one delete of nothing
    mixed = [
        _svc("s1", cluster_ip="10.0.2.99"),
        ("default/s2", None),
        _svc("s3", cluster_ip="10.0.2.4"),
        ("default/absent", None),
    ]
    assert store.apply_batch("services", mixed) == 2
    assert store.generation == 2 and calls == [1, 2]
    assert store.apply_batch("services", []) == 0
    assert store.generation == 2 and calls == [1, 2]


def test_apply_batch_accepts_a_generator_and_repeated_keys() -> None:
    store = Store()
    items = (pair for pair in [_svc("a", cluster_ip="10.0.3.1"), _svc("a", cluster_ip="10.0.3.2"), ("default/a", None)])
    assert store.apply_batch("services", items) == 3
    assert store.generation == 1
    assert store.service("default", "a") is None
    assert store.reverse("10.0.3.1") == [] and store.reverse("10.0.3.2") == []
    assert not store.namespace_exists("default")


def test_listeners_run_after_the_change() -> None:
    store = Store()
    seen: list[tuple[int, Any, list[tuple[str, ...]]]] = []
    store.add_listener(
        lambda: seen.append((store.generation, store.service("default", "web"), store.reverse("10.0.0.7")))
    )
    key, rec = _svc("web", cluster_ip="10.0.0.7")
    store.upsert("services", key, rec)
    assert seen == [(1, rec, [("svc", "default", "web")])]
    store.delete("services", key)
    assert seen[-1] == (2, None, [])
    assert len(seen) == 2


def test_all_listeners_are_called_in_order() -> None:
    store = Store()
    order: list[str] = []
    store.add_listener(lambda: order.append("first"))
    store.add_listener(lambda: order.append("second"))
    store.upsert("namespaces", *_ns("default"))
    assert order == ["first", "second"]


def test_no_op_writes_call_no_listener() -> None:
    store = Store()
    store.upsert("services", *_svc("web", cluster_ip="10.0.0.1"))
    store.upsert("pods", *_pod("p", "default", "10.1.0.1"))
    store.upsert("endpointslices", *_slice("web-1", "default", "web", "10.1.0.1"))
    store.upsert("namespaces", *_ns("default"))
    calls = _counting(store)
    gen = store.generation
    assert not store.delete("services", "default/missing")
    assert not store.delete("pods", "default/missing")
    assert store.prune("services", {"default/web"}) == 0
    # equal records, built from objects that changed where DNS does not look
    rng = random.Random(1)
    for kind, raw in [
        ("services", kubeobj.service("web", cluster_ip="10.0.0.1")),
        ("pods", kubeobj.pod("p", "default", "10.1.0.1", ready=False, node_name="node-9")),
        ("endpointslices", kubeobj.endpointslice("web-1", "default", "web", endpoints=[{"addresses": ["10.1.0.1"]}])),
        ("namespaces", kubeobj.namespace("default", labels={"team": "x"})),
    ]:
        assert not store.upsert(kind, *KINDS[kind](_cosmetic(raw, rng)))
    assert store.generation == gen and calls == []


def test_equal_record_keeps_the_stored_object() -> None:
    store = Store()
    key, rec = _slice("web-1", "default", "web", "10.1.0.1", "10.1.0.2")
    store.upsert("endpointslices", key, rec)
    _, again = _slice("web-1", "default", "web", "10.1.0.1", "10.1.0.2")
    assert again == rec and again is not rec
    assert not store.upsert("endpointslices", key, again)
    assert all(sl is rec for _, sl in store.endpoints("default", "web"))


def test_pod_records_reduce_to_ips() -> None:
    store = Store()
    assert store.upsert("pods", *_pod("p", "default", "10.1.0.1"))
    # same IPs, other phase that keeps the pod: nothing DNS-visible changed
    assert not store.upsert("pods", *_pod("p", "default", "10.1.0.1", phase="Pending"))
    assert store.upsert("pods", *_pod("p", "default", "10.1.0.1", ips=["10.1.0.1", "fd00::1"]))
    assert store.pod_in_namespace("fd00::1", "default") and store.pod_in_namespace("10.1.0.1", "default")
    assert store.upsert("pods", *_pod("p", "default", "10.1.0.2"))
    assert not store.pod_in_namespace("10.1.0.1", "default") and not store.pod_in_namespace("fd00::1", "default")
    assert store.pod_in_namespace("10.1.0.2", "default")
    for phase in ("Succeeded", "Failed"):
        store.upsert("pods", *_pod("p", "default", "10.1.0.2"))
        assert store.upsert("pods", *_pod("p", "default", "10.1.0.2", phase=phase))
        assert store.count("pods") == 0 and not store.pod_in_namespace("10.1.0.2", "default")
    # a pod that never had an IP is never stored, and "deleting" it changes nothing
    assert not store.upsert("pods", *_pod("pending", "default", None, phase="Pending"))
    assert store.count("pods") == 0


def test_pod_addresses_that_are_no_ip_are_dropped() -> None:
    """As for Services and EndpointSlices; a dict there once reached the PTR index and broke the
    whole batch of watch events it came in (found by tests/test_fast_decode.py)."""
    raw = kubeobj.pod("p", "default", "10.1.0.1")
    raw["status"]["podIPs"] = [{"ip": {"a": 1}}, {"ip": "not-an-ip"}, {"ip": 5}, {"ip": "10.1.0.1"}]
    assert objects.pod_from_raw(raw) == ("default/p", objects.Pod("default", "p", ("10.1.0.1",)))
    raw["status"]["podIPs"] = [{"ip": "not-an-ip"}]
    raw["status"]["podIP"] = "10.1.0.9"
    assert objects.pod_from_raw(raw) == ("default/p", objects.Pod("default", "p", ("10.1.0.9",)))
    raw["status"]["podIP"] = {"a": 1}
    assert objects.pod_from_raw(raw) == ("default/p", None)
    store = Store()
    raw["status"]["podIPs"] = [{"ip": {"a": 1}}, {"ip": "fd00::1"}]
    assert store.upsert("pods", *objects.pod_from_raw(raw)) and store.pod_in_namespace("fd00::1", "default")


def test_terminating_pod_leaves_the_pod_index() -> None:
    """The MODIFIED object that sets deletionTimestamp removes the Pod's IPs (CoreDNS ignores
    terminating Pods); another Pod holding the same IP keeps it; a terminating Pod in a LIST is
    never stored."""
    store = Store()
    assert store.upsert("pods", *_pod("a", "default", "10.1.0.1", ips=["10.1.0.1", "fd00::1"]))
    assert store.upsert("pods", *_pod("b", "default", "10.1.0.7"))
    assert store.upsert("pods", *_pod("hostnet", "default", "10.1.0.7"))
    gen = store.generation
    assert store.upsert("pods", *_pod("a", "default", "10.1.0.1", ips=["10.1.0.1", "fd00::1"], deletion_timestamp="now"))
    assert store.generation > gen
    assert not store.pod_in_namespace("10.1.0.1", "default") and not store.pod_in_namespace("fd00::1", "default")
    assert store.upsert("pods", *_pod("b", "default", "10.1.0.7", deletion_timestamp="now"))
    assert store.pod_in_namespace("10.1.0.7", "default")  # hostnet still holds it
    assert store.count("pods") == 1
    # the DELETED event at the end of the grace period finds nothing left to do
    assert not store.delete("pods", "default/a")
    assert not store.upsert("pods", *_pod("c", "default", "10.1.0.9", deletion_timestamp="now"))
    assert not store.pod_in_namespace("10.1.0.9", "default")


def test_same_pod_ip_in_two_namespaces_and_twice_in_one() -> None:
    store = Store()
    store.upsert("pods", *_pod("a", "ns1", "10.1.0.1"))
    store.upsert("pods", *_pod("b", "ns2", "10.1.0.1"))
    store.upsert("pods", *_pod("c", "ns2", "10.1.0.1"))  # host network: same IP, same namespace
    assert store.pod_in_namespace("10.1.0.1", "ns1") and store.pod_in_namespace("10.1.0.1", "ns2")
    store.delete("pods", "ns2/b")
    assert store.pod_in_namespace("10.1.0.1", "ns2")  # c still holds it
    store.delete("pods", "ns1/a")
    assert not store.pod_in_namespace("10.1.0.1", "ns1") and store.pod_in_namespace("10.1.0.1", "ns2")
    store.upsert("pods", *_pod("c", "ns2", "10.1.0.9"))
    assert not store.pod_in_namespace("10.1.0.1", "ns2") and store.pod_in_namespace("10.1.0.9", "ns2")


def test_pod_batch_equals_pod_upserts() -> None:
    """``apply_batch`` has its own loop for Pods (the common new single-stack Pod inlined): the
    indexes, the count of changes and the dependency keys it reports equal those of the same
    items upserted one at a time, through every case (new, shared IP, dual-stack, moved IP,
    unchanged, no IP, delete, delete of a key never seen, the same key twice in a batch)."""
    items = [
        _pod("a", "ns1", "10.1.0.1"), _pod("b", "ns2", "10.1.0.1"), _pod("c", "ns1", "10.1.0.2"),
        _pod("d", "ns1", None, ips=["10.1.0.3", "fd00::3"]), _pod("e", "ns1", None),
        _pod("a", "ns1", "10.1.0.1"), _pod("c", "ns1", "10.1.0.4"), ("ns9/ghost", None), ("ns2/b", None),
        _pod("f", "ns3", "10.1.0.5"), _pod("f", "ns3", "10.1.0.6"), _pod("g", "ns3", "10.1.0.5", phase="Failed"),
        _pod("h", "ns4", "10.1.0.1"), ("ns1/d", None), _pod("d", "ns1", "10.1.0.3"),
    ]
    for size in (1, 3, len(items)):
        batched, single = Store(), Store()
        got_b = got_s = 0
        for at in range(0, len(items), size):
            chunk = items[at : at + size]
            n = batched.apply_batch("pods", iter(chunk))
            touched: set[tuple[str, ...]] = set()
            m = 0
            for key, rec in chunk:
                if single.upsert("pods", key, rec):
                    m += 1
                    touched |= single.last_change or set()
            assert n == m
            if n:
                assert batched.last_change == touched
            got_b, got_s = got_b + n, got_s + m
        assert got_b == got_s
        assert batched._objects["pods"] == single._objects["pods"]
        assert batched._pod_ips == single._pod_ips
    # the keys a batch reports: every pod IP it added or removed
    store = Store()
    store.apply_batch("pods", [_pod("a", "ns1", "10.1.0.1"), _pod("b", "ns1", None, ips=["10.1.0.2", "fd00::2"])])
    assert store.last_change == {("pod", "10.1.0.1"), ("pod", "10.1.0.2"), ("pod", "fd00::2")}
    store.apply_batch("pods", [("ns1/a", None), _pod("c", "ns2", "10.1.0.1"), _pod("b", "ns1", "10.1.0.2")])
    assert store.last_change == {("pod", "10.1.0.1"), ("pod", "10.1.0.2"), ("pod", "fd00::2")}
    assert store.pod_in_namespace("10.1.0.1", "ns2") and not store.pod_in_namespace("10.1.0.1", "ns1")


def test_slice_moving_between_services() -> None:
    store = Store()
    store.upsert("services", *_svc("old", headless=True))
    store.upsert("services", *_svc("new", headless=True))
    store.upsert("endpointslices", *_slice("s", "default", "old", "10.1.0.1"))
    store.upsert("endpointslices", *_slice("t", "default", "old", "10.1.0.2"))
    assert store.reverse("10.1.0.1") == [("ep", "default", "old", "10-1-0-1")]
    store.upsert("endpointslices", *_slice("s", "default", "new", "10.1.0.1"))
    assert [ep.addresses for ep, _ in store.endpoints("default", "old")] == [("10.1.0.2",)]
    assert [ep.addresses for ep, _ in store.endpoints("default", "new")] == [("10.1.0.1",)]
    assert store.reverse("10.1.0.1") == [("ep", "default", "new", "10-1-0-1")]


def test_slice_without_service_name_is_invisible() -> None:
    store = Store()
    store.upsert("services", *_svc("web", headless=True))
    store.upsert("services", *_svc("x", headless=True))
    store.upsert("endpointslices", *_slice("web-1", "default", "web", "10.1.0.1"))
    raw = kubeobj.endpointslice(
        "orphan", "default", "x", endpoints=[{"addresses": ["10.1.0.1"]}, {"addresses": ["10.1.0.9"]}]
    )
    del raw["metadata"]["labels"]["kubernetes.io/service-name"]
    key, rec = objects.endpointslice_from_raw(raw)
    assert rec is not None and rec.service == ""
    assert store.upsert("endpointslices", key, rec)
    assert store.count("endpointslices") == 2
    assert store.reverse("10.1.0.9") == []
    assert store.reverse("10.1.0.1") == [("ep", "default", "web", "10-1-0-1")]
    assert list(store.endpoints("default", "")) == []
    # gaining the label makes it visible; deleting it leaves nothing behind
    store.upsert("endpointslices", *_slice("orphan", "default", "x", "10.1.0.9"))
    assert store.reverse("10.1.0.9") == [("ep", "default", "x", "10-1-0-9")]
    store.upsert("endpointslices", key, rec)
    assert store.reverse("10.1.0.9") == [] and list(store.endpoints("default", "x")) == []
    store.delete("endpointslices", key)
    assert store.reverse("10.1.0.1") == [("ep", "default", "web", "10-1-0-1")]


def test_reverse_with_several_owners_of_one_ip() -> None:
    store = Store()
    store.upsert("services", *_svc("web", cluster_ips=["10.0.0.5", "fd00::5"]))
    store.upsert("services", *_svc("web", "other", cluster_ip="10.0.0.5"))
    store.upsert("services", *_svc("db", headless=True))
    raw = kubeobj.endpointslice(
        "s", "default", "db", endpoints=[{"addresses": ["10.0.0.5"], "hostname": "DB-0"}, {"addresses": ["10.0.0.5"]}]
    )
    store.upsert("endpointslices", *objects.endpointslice_from_raw(raw))
    assert sorted(store.reverse("10.0.0.5")) == [
        ("ep", "default", "db", "10-0-0-5"),
        ("ep", "default", "db", "db-0"),
        ("svc", "default", "web"),
        ("svc", "other", "web"),
    ]
    assert store.reverse("fd00::5") == [("svc", "default", "web")]
    store.delete("services", "default/web")
    assert sorted(store.reverse("10.0.0.5"))[-1] == ("svc", "other", "web")
    assert store.reverse("fd00::5") == []
    store.delete("endpointslices", "default/s")
    assert store.reverse("10.0.0.5") == [("svc", "other", "web")]


def test_reverse_names_only_published_endpoints() -> None:
    store = Store()
    raw = kubeobj.endpointslice(
        "s", "default", "db",
        endpoints=[{"addresses": ["10.1.0.1"], "ready": True}, {"addresses": ["10.1.0.2"], "ready": False}],
    )
    store.upsert("endpointslices", *objects.endpointslice_from_raw(raw))
    # no Service: <host>.db.default.svc does not resolve, so no PTR names it
    assert store.reverse("10.1.0.1") == [] and store.reverse("10.1.0.2") == []
    store.upsert("services", *_svc("db", headless=True))
    assert store.reverse("10.1.0.1") == [("ep", "default", "db", "10-1-0-1")]
    assert store.reverse("10.1.0.2") == []  # not ready (spec 2.4.3)
    store.upsert("services", *_svc("db", headless=True, publish_not_ready=True))
    assert store.reverse("10.1.0.2") == [("ep", "default", "db", "10-1-0-2")]
    store.delete("services", "default/db")
    assert store.reverse("10.1.0.1") == [] and store.reverse("10.1.0.2") == []


def test_namespace_exists_via_object_or_service() -> None:
    store = Store()
    assert not store.namespace_exists("default")
    store.upsert("services", *_svc("a", cluster_ip="10.0.0.1"))
    store.upsert("services", *_svc("b", headless=True))
    assert store.namespace_exists("default")
    store.delete("services", "default/a")
    assert store.namespace_exists("default")
    store.delete("services", "default/b")
    assert not store.namespace_exists("default")
    store.upsert("namespaces", *_ns("default"))
    assert store.namespace_exists("default") and [n.name for n in store.namespaces()] == ["default"]


def test_sync_state() -> None:
    store = Store(required=("namespaces", "services"))
    calls = _counting(store)
    assert not store.synced and store.missing_kinds() == ["namespaces", "services"]
    store.mark_synced("services")
    assert not store.synced and store.missing_kinds() == ["namespaces"]
    assert calls == [1]
    store.mark_synced("services")  # again: nothing changes
    assert calls == [1]
    store.mark_synced("pods")  # not required, but a first sync still bumps
    assert not store.synced and calls == [1, 2]
    store.mark_synced("namespaces")
    assert store.synced and store.missing_kinds() == [] and calls == [1, 2, 3]
    assert Store(required=()).synced


def test_serial_strictly_increases_with_every_change() -> None:
    store = Store()
    serials = [store.serial]
    for i in range(20):
        store.upsert("services", *_svc("web", cluster_ip=f"10.0.0.{i + 1}"))
        serials.append(store.serial)
    assert all(b > a for a, b in zip(serials, serials[1:], strict=False))
    store.upsert("services", *_svc("web", cluster_ip="10.0.0.20"))  # equal: serial stays
    assert store.serial == serials[-1]


def test_malformed_float_port_does_not_poison_ports_of_other_services() -> None:
    # a port shape used nowhere else, so the process-wide cache of other tests is not disturbed
    bad = kubeobj.service("bad", "default", ports=[{"name": "poison-probe", "port": 61234}])
    bad["spec"]["ports"][0]["port"] = 61234.0
    assert objects.service_from_raw(bad)[1].ports == ()  # type: ignore[union-attr]
    _, good = objects.service_from_raw(
        kubeobj.service("good", "default", ports=[{"name": "poison-probe", "port": 61234}])
    )
    assert good is not None
    assert good.ports == (objects.Port("poison-probe", 61234, "tcp"),)
