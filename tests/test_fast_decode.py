"""The msgspec fast path (``fastdecode.FAST_KINDS``, ``listparse.page_records``, watch lines) means
exactly what the reference converters (``objects.KINDS`` on ``json.loads``) mean.

The fast path decodes only the fields DNS reads into strictly typed structs and hands anything
else to the reference (see :mod:`kubedns.k8s.listparse`).  A difference would be a wrong answer,
or an object silently dropped or kept, so:

* differential tests on seeded random objects of every kind, clean and then mutated at the
  fields DNS reads (wrong types, null, empty, missing, odd values, not an object at all): the
  records of a page, and which objects are skipped and counted, equal the reference's;
* the fast path is really taken for clean objects (else the tests above prove nothing);
* pages the reference refuses are refused (``json.JSONDecodeError``/``ValueError``) and pages
  only Python's parser accepts (``NaN``) still parse;
* watch lines: the store after a stream of events, clean and mutated, equals the store the
  reference would build, resourceVersions (BOOKMARK included) tracked, deletes of objects that do
  not convert still applied, the trigger annotation read.
"""

from __future__ import annotations

import copy
import json
import random
from typing import Any

import pytest

from kubedns.k8s import objects
from kubedns.k8s.fastdecode import FAST_KINDS
from kubedns.k8s.listparse import page_records
from kubedns.k8s.objects import KINDS
from kubedns.k8s.store import Store
from kubedns.k8s.watch import ResourceWatcher
from tests.support import kubeobj
from tests.support.listpages import MALFORMED, SyncReactor, k8s_objects, k8s_page, no_list

Raw = dict[str, Any]

#: values a mutation puts at a field DNS reads
ODD = [None, "", 0, 1, 80, 80.0, -1, 2**70, True, False, [], {}, "x", "None", "10.0.0.1", "fd00::1", "bad-ip",
       ["10.0.0.1"], ["bad", "10.0.0.2"], [5], [None], [{}], [{"ip": "10.1.1.1"}], {"a": 1}, "ExternalName",
       "IPv4", "IPv6", "FQDN", "Succeeded", "UDP", "a.b", "A" * 70, "Name-With-Caps", "db.example.com."]

#: the paths (keys; an int is a list index) DNS reads, by kind
PATHS: dict[str, list[tuple[Any, ...]]] = {
    "namespaces": [(), ("metadata",), ("metadata", "name"), ("metadata", "namespace")],
    "services": [(), ("metadata",), ("metadata", "name"), ("metadata", "namespace"), ("metadata", "labels"),
                 ("spec",), ("spec", "type"), ("spec", "clusterIP"), ("spec", "clusterIPs"),
                 ("spec", "clusterIPs", 0), ("spec", "externalName"), ("spec", "ports"), ("spec", "ports", 0),
                 ("spec", "ports", 0, "port"), ("spec", "ports", 0, "name"), ("spec", "ports", 0, "protocol"),
                 ("spec", "publishNotReadyAddresses")],
    "endpointslices": [(), ("metadata",), ("metadata", "name"), ("metadata", "labels"),
                       ("metadata", "labels", "kubernetes.io/service-name"), ("addressType",), ("endpoints",),
                       ("endpoints", 0), ("endpoints", 0, "addresses"), ("endpoints", 0, "addresses", 0),
                       ("endpoints", 0, "hostname"), ("endpoints", 0, "conditions"),
                       ("endpoints", 0, "conditions", "ready"), ("endpoints", 0, "targetRef"),
                       ("endpoints", 0, "targetRef", "name"), ("ports",), ("ports", 0, "port"), ("ports", 0, "name")],
    "pods": [(), ("metadata",), ("metadata", "name"), ("metadata", "namespace"), ("metadata", "deletionTimestamp"),
             ("metadata", "annotations"), ("status",), ("status", "podIP"), ("status", "podIPs"),
             ("status", "podIPs", 0), ("status", "podIPs", 0, "ip"), ("status", "phase")],
}


def mutate(obj: Raw, kind: str, rng: random.Random) -> Any:
    """``obj`` with one to three fields DNS reads set to odd values (or deleted)."""
    obj = copy.deepcopy(obj)
    for _ in range(rng.randint(1, 3)):
        path = rng.choice(PATHS[kind])
        value = copy.deepcopy(rng.choice(ODD))
        if not path:
            return value  # the object itself is not an object
        cur: Any = obj
        for step in path[:-1]:
            try:
                cur = cur[step]
            except (KeyError, IndexError, TypeError):
                cur = None
                break
        if isinstance(cur, dict):
            if rng.random() < 0.15:
                cur.pop(path[-1], None)
            else:
                cur[path[-1]] = value
        elif isinstance(cur, list) and isinstance(path[-1], int) and cur:
            cur[0] = value
    return obj


def reference(kind: str, raws: list[Any]) -> tuple[list[tuple[str, Any]], int]:
    """The reference's records of ``raws`` and how many it refuses."""
    out, errors = [], 0
    for raw in raws:
        try:
            out.append(KINDS[kind](raw))
        except Exception:
            errors += 1
    return out, errors


def fast(kind: str, text: str | bytes) -> tuple[list[tuple[str, Any]], int, dict[str, Any]]:
    watcher = ResourceWatcher(kind, no_list, Store(), reactor=SyncReactor())
    top: dict[str, Any] = {}
    return watcher._convert_page(text, top), watcher.status.errors, top


def page(kind: str, items: list[Any]) -> bytes:
    return json.dumps({"kind": "List", "apiVersion": "v1", "metadata": {"resourceVersion": "9"}, "items": items},
                      separators=(",", ":")).encode()


@pytest.mark.parametrize("kind", list(KINDS))
def test_clean_pages_take_the_fast_path_and_equal_the_reference(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    objs = k8s_objects(random.Random(kind), 60)[kind]
    text = k8s_page(kind, objs, 42, "tok", random.Random(1))

    def no_reference(raw: Any) -> Any:
        raise AssertionError(f"reference converter called for a plain object: {raw!r}")

    monkeypatch.setitem(KINDS, kind, no_reference)
    watcher = ResourceWatcher(kind, no_list, Store(), reactor=SyncReactor())  # takes the patched KINDS
    top: dict[str, Any] = {}
    got = watcher._convert_page(text.encode(), top)
    monkeypatch.undo()
    assert got == reference(kind, json.loads(text)["items"])[0]
    assert top["metadata"] == {"resourceVersion": "42", "continue": "tok",
                               "remainingItemCount": top["metadata"]["remainingItemCount"]}


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("seed", range(6))
def test_mutated_objects_mean_what_the_reference_says(kind: str, seed: int) -> None:
    rng = random.Random(f"{kind}/{seed}")
    objs = k8s_objects(rng, 40)[kind]
    raws = [mutate(o, kind, rng) if rng.random() < 0.7 else o for o in objs]
    want, want_errors = reference(kind, raws)
    got, errors, top = fast(kind, page(kind, raws))
    assert got == want
    assert errors == want_errors
    assert top["metadata"] == {"resourceVersion": "9"}
    # one object at a time too: the whole-page path and the item-by-item path agree
    for raw in raws:
        w, we = reference(kind, [raw])
        g, ge, _ = fast(kind, page(kind, [raw]))
        assert (g, ge) == (w, we), raw


def test_interned_namespaces_and_shared_ports_as_the_reference() -> None:
    svcs = [kubeobj.service(f"s{i}", "team-" + "a" * 3, cluster_ip=f"10.96.0.{i + 1}",
                            ports=[{"name": "http", "port": 80, "protocol": "TCP"}]) for i in range(3)]
    got, _, _ = fast("services", page("services", svcs))
    recs = [rec for _, rec in got]
    assert recs[0].namespace is recs[1].namespace is recs[2].namespace
    assert recs[0].ports is recs[1].ports
    assert recs[0].ports is KINDS["services"](svcs[0])[1].ports


@pytest.mark.parametrize("kind", list(KINDS))
def test_records_of_both_paths_are_frozen_and_never_tracked_by_the_gc(kind: str) -> None:
    """Records are frozen msgspec structs with ``gc=False`` (see ``objects._Record``): the cyclic
    collector never tracks them (nor their endpoints and ports), whichever path built them, and
    they cannot be changed in place (the store's ``old == new`` relies on it)."""
    import gc

    objs = k8s_objects(random.Random(kind), 30)[kind]
    got, _, _ = fast(kind, page(kind, objs))
    want, _ = reference(kind, objs)
    records = [rec for _, rec in got + want if rec is not None]
    assert records
    inner = [x for rec in records for x in (*getattr(rec, "endpoints", ()), *getattr(rec, "ports", ()))]
    assert kind == "namespaces" or kind == "pods" or inner
    assert not any(gc.is_tracked(x) for x in records + inner)
    first = records[0]
    with pytest.raises(AttributeError):
        first.name = "changed"  # type: ignore[misc]


def test_a_malformed_object_among_good_ones_is_skipped_and_counted() -> None:
    good = [kubeobj.pod(f"p{i}", "default", f"10.244.0.{i + 1}") for i in range(5)]
    raws: list[Any] = [*good[:2], {"metadata": {"name": 5}}, *good[2:], "junk", {"metadata": {}}]
    got, errors, _ = fast("pods", page("pods", raws))
    assert got == [KINDS["pods"](p) for p in good]
    assert errors == 3


@pytest.mark.parametrize("text", MALFORMED)
def test_malformed_pages_raise_json_decode_error(text: str) -> None:
    for body in (text, text.encode("utf-8")):
        with pytest.raises(json.JSONDecodeError):
            page_records(body, FAST_KINDS["pods"], lambda raw: None, {})


@pytest.mark.parametrize(
    "text", ['{"items": {"metadata": {"name": "a"}}}', '{"items": 5}', '{"metadata": {}}', "{}",
             '{"items": [], "items": [{"metadata": {"name": "a"}}], "x": NaN}'])
def test_pages_without_one_list_of_items_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        page_records(text.encode(), FAST_KINDS["namespaces"], KINDS["namespaces"], {})


def test_null_items_is_an_empty_list_and_nan_pages_still_parse() -> None:
    top: dict[str, Any] = {}
    assert page_records(b'{"metadata": {"resourceVersion": "3"}, "items": null}', FAST_KINDS["pods"],
                        KINDS["pods"], top) == []
    assert top == {"metadata": {"resourceVersion": "3"}, "items": None}
    text = '{"items": [{"metadata": {"name": "a", "x": NaN}}]}'  # NaN: only Python's parser takes it
    assert page_records(text.encode(), FAST_KINDS["namespaces"], KINDS["namespaces"], {}) == [
        KINDS["namespaces"]({"metadata": {"name": "a"}})]


def test_invalid_utf8_in_a_field_dns_reads_refuses_the_page() -> None:
    with pytest.raises(UnicodeDecodeError):
        page_records(b'{"items": [{"metadata": {"name": "a\xff"}}]}', FAST_KINDS["namespaces"],
                     KINDS["namespaces"], {})


# -- watch lines ---------------------------------------------------------------------------------


def _events(kind: str, rng: random.Random) -> list[tuple[str, Any]]:
    objs = k8s_objects(rng, 30)[kind]
    out: list[tuple[str, Any]] = []
    for i, obj in enumerate(objs):
        obj = copy.deepcopy(obj)
        obj.setdefault("metadata", {})["resourceVersion"] = str(100 + i)
        out.append(("ADDED", obj))
        if rng.random() < 0.5:
            out.append(("MODIFIED", mutate(obj, kind, rng)))
        if rng.random() < 0.2:
            out.append(("DELETED", mutate(obj, kind, rng) if rng.random() < 0.5 else obj))
        if rng.random() < 0.1:
            out.append(("BOOKMARK", {"metadata": {"resourceVersion": str(100 + i),
                                                  "annotations": {"k8s.io/initial-events-end": "true"}}}))
    return out


def _reference_store(kind: str, events: list[tuple[str, Any]]) -> tuple[dict[str, Any], str]:
    """What the store holds after ``events`` by the reference converters, and the last rv."""
    store: dict[str, Any] = {}
    rv = ""
    for etype, obj in events:
        meta = obj.get("metadata") if isinstance(obj, dict) else None
        meta = meta if isinstance(meta, dict) else {}
        if meta.get("resourceVersion"):
            rv = meta["resourceVersion"]
        if etype == "BOOKMARK":
            continue
        name, ns = meta.get("name"), meta.get("namespace") or ""
        if etype == "DELETED":
            if name and isinstance(name, str) and isinstance(ns, str):
                store.pop(name if kind == "namespaces" else f"{ns}/{name}", None)
            continue
        try:
            key, rec = KINDS[kind](obj if isinstance(obj, dict) else {})
        except Exception:
            continue
        if rec is None:
            store.pop(key, None)
        else:
            store[key] = rec
    return store, rv


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("seed", range(4))
def test_watch_lines_build_the_store_the_reference_builds(kind: str, seed: int) -> None:
    events = [(t, o) for t, o in _events(kind, random.Random(f"w{kind}{seed}")) if isinstance(o, dict)]
    lines = [json.dumps({"type": t, "object": o}).encode() for t, o in events]
    store = Store()
    watcher = ResourceWatcher(kind, no_list, store, reactor=SyncReactor())
    for line in lines:
        watcher._handle_lines([line])
    want, rv = _reference_store(kind, events)
    ref = Store()
    ref.apply_batch(kind, list(want.items()))
    assert store._objects[kind] == ref._objects[kind]  # as the store holds them (Pods: their IPs)
    assert watcher.status.resource_version == rv


def test_plain_watch_events_take_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    store = Store()
    watcher = ResourceWatcher("pods", no_list, store, reactor=SyncReactor())
    monkeypatch.setattr("kubedns.k8s.watch.json.loads", lambda *a, **k: pytest.fail("json.loads used"))
    pod = kubeobj.pod("p", "default", "10.244.0.9")
    pod["metadata"]["resourceVersion"] = "77"
    watcher._handle_lines([json.dumps({"type": "ADDED", "object": pod}).encode(),
                           b'{"type":"BOOKMARK","object":{"kind":"Pod","metadata":{"resourceVersion":"78"}}}'])
    ref = Store()
    ref.upsert("pods", "default/p", objects.Pod("default", "p", ("10.244.0.9",)))
    assert store._objects["pods"] == ref._objects["pods"]
    assert watcher.status.resource_version == "78"


def test_trigger_annotation_sets_the_event_time() -> None:
    seen: list[float] = []
    slice_ = kubeobj.endpointslice("s-1", "default", "s", [{"addresses": ["10.244.0.1"]}])
    slice_["metadata"]["annotations"] = {"endpoints.kubernetes.io/last-change-trigger-time": "2020-01-01T00:00:00Z"}
    watcher = ResourceWatcher("endpointslices", no_list, Store(), reactor=SyncReactor(),
                              on_event=lambda kind, etype, lag, rec: seen.append(lag))
    watcher._handle_lines([json.dumps({"type": "ADDED", "object": slice_}).encode()])
    assert len(seen) == 1 and seen[0] > 365 * 86400  # measured from 2020, not from receipt


def test_what_msgspec_takes_that_the_stdlib_path_refused() -> None:
    """Documented in kubedns/k8s/listparse.py: a repeated top-level ``items`` key means what it
    means to json.loads (the last one; nothing of the page was used before it was all read), and
    bytes that are not UTF-8 in a field DNS never reads are skipped unread."""
    text = b'{"items": [{"metadata": {"name": "a"}}], "items": [{"metadata": {"name": "b"}}]}'
    assert page_records(text, FAST_KINDS["namespaces"], KINDS["namespaces"], {}) == [
        KINDS["namespaces"](raw) for raw in json.loads(text)["items"]]
    body = b'{"items": [{"metadata": {"name": "a", "annotations": {"x": "\xff"}}}]}'
    assert page_records(body, FAST_KINDS["namespaces"], KINDS["namespaces"], {}) == [
        KINDS["namespaces"]({"metadata": {"name": "a"}})]
