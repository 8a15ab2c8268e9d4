"""Tests of the streaming LIST-page parser :mod:`kubedns.k8s.listparse` (``list_items``).

A LIST page is not parsed with ``json.loads``: ``_list_items(text, top)`` walks the top-level
object by hand and hands each element of ``items`` to the stdlib's C scanner one at a time, so
that a page of 10k Pods never exists as 10k raw dicts at once.  Hand-written JSON walking is
exactly where quoting, escapes, whitespace and key order go wrong, and a wrong item here means a
wrong DNS answer, or a relist that prunes objects it merely failed to see.  So:

* differential tests against the oracle ``json.loads(page)["items"]`` (and the other top-level
  keys, which land in ``top``) on seeded random pages: nested values, strings full of escapes,
  quotes, brackets, ``items`` look-alikes and non-ASCII, every JSON number form, random
  whitespace, random key order; and on realistic Kubernetes list pages (``tests/support/listpages.py``,
  from ``tests/support/kubeobj.py``'s objects: Go-style compact and indented, ``metadata.resourceVersion``/``continue``);
* malformed pages (hand-picked, random truncations, random mutations) must raise
  ``json.JSONDecodeError``, and a page that fails must not reach the store;
* ``ResourceWatcher._list`` with a fake ``list_fn``: the list-level metadata is taken from
  ``top`` (continue tokens followed, last resourceVersion kept), and a bad page applies nothing.

Where the parser is *not* equivalent to the oracle (``items`` of the wrong type or missing, a
repeated ``items`` key) the parser refuses the page with a ValueError: such a page must never
be taken for an empty list and prune the store.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from kubedns.k8s.listparse import list_items as _list_items
from kubedns.k8s.objects import KINDS
from kubedns.k8s.store import Store
from kubedns.k8s.watch import ResourceWatcher
from tests.support import kubeobj
from tests.support.listpages import MALFORMED, SyncReactor, k8s_objects, k8s_page, no_list

Raw = dict[str, Any]


def parse(text: str) -> tuple[list[Any], dict[str, Any]]:
    """Everything ``_list_items`` yields, and what it left in ``top``."""
    top: dict[str, Any] = {}
    return list(_list_items(text, top)), top


def oracle(text: str) -> tuple[list[Any], dict[str, Any]]:
    """What the parser must produce, by ``json.loads`` (raises on anything json.loads rejects)."""
    loaded = json.loads(text)
    return loaded["items"], {k: v for k, v in loaded.items() if k != "items"}


def same(a: Any, b: Any) -> bool:
    """Equal values *and* types and key order (``1 == 1.0 == True`` and NaN != NaN otherwise)."""
    return json.dumps(a) == json.dumps(b)


# -- random JSON text ------------------------------------------------------------------------

#: Pieces of strings: everything that needs escaping, JSON syntax, look-alikes of the page's
#: own keys, non-ASCII (BMP, astral, line separators, BOM, lone surrogates).
_FRAGMENTS = (
    *'"\\/\n\r\t\b\f\x00\x1f\x7f{}[],: ',
    "'",
    "items",
    '"items": [',
    '{"items": []}',
    "metadata",
    "null",
    "true",
    "\\u0000",
    "é",
    "ß",
    "漢字",
    "😀",
    "\u2028",
    "\u2029",
    "\ufeff",
    "\ud800",
    "\udfff",
    "a",
    "Z",
    "0",
    "-",
)
_SHORT_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\b": "\\b", "\f": "\\f"}
_NUMBERS = (
    "0",
    "-0",
    "1",
    "-1",
    "42",
    "1234567890123456789012345678901234567890",
    "-9223372036854775809",
    "3.14",
    "-2.5e10",
    "1E+2",
    "1e-7",
    "0.0",
    "-0.0",
    "6.02214076E23",
    "1e400",
    "-1e400",
    "5e-324",
    "NaN",
    "Infinity",
    "-Infinity",
)
_WS = ("", "", "", "", " ", "\n", "\t", "\r\n", " \n\t\r ")


def _ws(rng: random.Random) -> str:
    return rng.choice(_WS)


def rand_string(rng: random.Random) -> str:
    return "".join(rng.choice(_FRAGMENTS) for _ in range(rng.randint(0, 6)))


def enc_string(s: str, rng: random.Random) -> str:
    """``s`` as a JSON string literal, every character escaped in a randomly chosen legal way."""
    out = ['"']
    for ch in s:
        cp = ord(ch)
        r = rng.random()
        if ch in _SHORT_ESCAPES and r < 0.5:
            out.append(_SHORT_ESCAPES[ch])
        elif ch in '"\\' or cp < 0x20 or r < 0.1:
            if cp > 0xFFFF:  # astral: a surrogate pair
                cp -= 0x10000
                out.append(f"\\u{0xD800 + (cp >> 10):04x}\\u{0xDC00 + (cp & 0x3FF):04X}")
            else:
                out.append(f"\\u{cp:04x}" if rng.random() < 0.5 else f"\\u{cp:04X}")
        elif ch == "/" and r < 0.3:
            out.append("\\/")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def rand_value(rng: random.Random, depth: int) -> str:
    """Random JSON text of one value, nested at most ``depth`` deep."""
    r = rng.random()
    if depth <= 0 or r < 0.45:
        s = rng.random()
        if s < 0.4:
            return enc_string(rand_string(rng), rng)
        if s < 0.6:
            return rng.choice(_NUMBERS)
        if s < 0.7:
            return repr(rng.uniform(-1e6, 1e6)) if rng.random() < 0.5 else str(rng.randint(-(10**12), 10**12))
        return rng.choice(("null", "true", "false"))
    if r < 0.7:
        return rand_array(rng, depth - 1, rand_value)
    return rand_object(rng, depth - 1)


def rand_array(rng: random.Random, depth: int, element: Callable[[random.Random, int], str]) -> str:
    n = rng.choice((0, 0, 1, 2, 3, 5))
    if not n:
        return "[" + _ws(rng) + "]"
    sep = _ws(rng) + "," + _ws(rng)
    return "[" + _ws(rng) + sep.join(element(rng, depth) for _ in range(n)) + _ws(rng) + "]"


def rand_object(rng: random.Random, depth: int) -> str:
    n = rng.choice((0, 0, 1, 2, 4))
    if not n:
        return "{" + _ws(rng) + "}"
    members = []
    for _ in range(n):
        key = rng.choice(("items", "metadata", "continue", "resourceVersion", "", rand_string(rng)))
        members.append(enc_string(key, rng) + _ws(rng) + ":" + _ws(rng) + rand_value(rng, depth))
    return "{" + _ws(rng) + (_ws(rng) + "," + _ws(rng)).join(members) + _ws(rng) + "}"


def rand_item(rng: random.Random, depth: int) -> str:
    """An element of ``items``: mostly objects, as in a real list, sometimes anything."""
    return rand_object(rng, depth) if rng.random() < 0.8 else rand_value(rng, depth)


def rand_page(rng: random.Random) -> str:
    """A random top-level object with one ``items`` array, its key possibly escaped, keys shuffled."""
    members = [(enc_string("items", rng), rand_array(rng, 3, rand_item))]
    meta: list[str] = []
    if rng.random() < 0.8:
        meta.append(enc_string("resourceVersion", rng) + ":" + enc_string(str(rng.randint(1, 10**9)), rng))
    if rng.random() < 0.5:
        meta.append(enc_string("continue", rng) + ":" + enc_string(rand_string(rng), rng))
    if rng.random() < 0.2:
        meta.append('"remainingItemCount":' + str(rng.randint(0, 10**6)))
    if rng.random() < 0.9:
        members.append(('"metadata"', "{" + ",".join(meta) + "}"))
    for key in ("kind", "apiVersion", "x-extra", 'x-"quoted"', "", "Items"):
        if rng.random() < 0.4:
            members.append((enc_string(key, rng), rand_value(rng, 3)))
    rng.shuffle(members)
    body = (_ws(rng) + "," + _ws(rng)).join(k + _ws(rng) + ":" + _ws(rng) + v for k, v in members)
    return _ws(rng) + "{" + _ws(rng) + body + _ws(rng) + "}" + _ws(rng)


# -- differential tests ---------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(20))
def test_random_pages_match_json_loads(seed: int) -> None:
    rng = random.Random(seed)
    for case in range(100):
        text = rand_page(rng)
        want_items, want_top = oracle(text)
        got_items, got_top = parse(text)
        assert same(got_items, want_items), f"seed={seed} case={case}: {text!r}"
        assert same(got_top, want_top), f"seed={seed} case={case}: {text!r}"


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("style", ["go", "indented"])
def test_kubernetes_pages_match_json_loads(kind: str, style: str) -> None:
    rng = random.Random(f"{kind}/{style}")
    objs = k8s_objects(rng, 30)[kind]
    for cont, metadata_last in [("eyJ2IjoibWV0YS5rOHMuaW8vdjEiLCJydiI6MTIzfQ", False), (None, True), ("", False)]:
        text = k8s_page(kind, objs, 123456, cont, rng, style=style, metadata_last=metadata_last)
        items, top = parse(text)
        assert items == json.loads(text)["items"]
        assert [i["metadata"]["name"] for i in items] == [o["metadata"]["name"] for o in objs]
        assert "items" not in top
        assert top["metadata"]["resourceVersion"] == "123456"
        assert top["metadata"].get("continue") == cont
        assert top["kind"].endswith("List") and top["apiVersion"] == "v1"


def test_convert_page_equals_converting_json_loads_items() -> None:
    rng = random.Random(7)
    for kind, objs in k8s_objects(rng, 40).items():
        text = k8s_page(kind, objs, 99, "tok", rng)
        top: dict[str, Any] = {}
        watcher = ResourceWatcher(kind, no_list, Store(), reactor=SyncReactor())
        batch = watcher._convert_page(text, top)
        assert batch == [KINDS[kind](raw) for raw in json.loads(text)["items"]]
        assert top["metadata"]["resourceVersion"] == "99" and top["metadata"]["continue"] == "tok"
        assert watcher.status.errors == 0


def test_items_are_yielded_one_at_a_time_and_top_fills_as_parsing_goes() -> None:
    text = '{"items": [{"a": 1}, {"b": [2]}], "metadata": {"resourceVersion": "5"}}'
    top: dict[str, Any] = {}
    it = _list_items(text, top)
    assert next(it) == {"a": 1}
    assert top == {}  # nothing past the first item has been read yet
    assert next(it) == {"b": [2]}
    with pytest.raises(StopIteration):
        next(it)
    assert top == {"metadata": {"resourceVersion": "5"}}


@pytest.mark.parametrize(
    "text,items,top",
    [
        ('{"items":[]}', [], {}),
        ('{ "items" : [ ] }', [], {}),
        ('{"items": [[], {}, "", 0, null, true, false]}', [[], {}, "", 0, None, True, False], {}),
        ('{"it\\u0065ms": [1]}', [1], {}),  # the key is compared decoded, as json.loads does
        ('{"Items": [1], "items ": [2], "items": []}', [], {"Items": [1], "items ": [2]}),  # look-alikes
        ('{"metadata": {"items": [1]}, "items": [2]}', [2], {"metadata": {"items": [1]}}),
        ('{"items": ["]", "}", "\\"", ",", "\\\\"]}', ["]", "}", '"', ",", "\\"], {}),
        ('{"items": ["\\ud83d\\ude00", "\\u00e9", "\\/"]}', ["😀", "é", "/"], {}),
        ('{"a": null, "items": [1], "b": {"c": []}}', [1], {"a": None, "b": {"c": []}}),
        ('{"items": null}', [], {"items": None}),  # Go's nil slice: an empty list, kept in top
    ],
)
def test_hand_picked_pages(text: str, items: list[Any], top: dict[str, Any]) -> None:
    assert parse(text) == (items, top)


def test_nan_and_infinities_are_accepted_like_json_loads() -> None:
    items, _ = parse('{"items": [NaN, Infinity, -Infinity, 1e400]}')
    assert same(items, json.loads("[NaN, Infinity, -Infinity, 1e400]"))


# -- malformed pages ---------------------------------------------------------------------------

@pytest.mark.parametrize("text", MALFORMED)
def test_malformed_pages_raise_json_decode_error(text: str) -> None:
    with pytest.raises((ValueError, TypeError)):
        oracle(text)  # json.loads(text)["items"] fails too
    with pytest.raises(json.JSONDecodeError):
        parse(text)


def test_deep_nesting_raises_recursion_error_like_json_loads() -> None:
    text = '{"items": [' + "[" * 100_000 + "]" * 100_000 + "]}"
    with pytest.raises(RecursionError):
        json.loads(text)
    with pytest.raises(RecursionError):
        parse(text)


def _top_pairs(text: str) -> tuple[Any, list[tuple[str, Any]] | None]:
    """``json.loads(text)`` and the top-level object's key/value pairs (to spot repeated keys)."""
    calls: list[list[tuple[str, Any]]] = []

    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        calls.append(pairs)
        return dict(pairs)

    loaded = json.loads(text, object_pairs_hook=hook)
    return loaded, (calls[-1] if isinstance(loaded, dict) else None)


def check_against_oracle(text: str) -> str:
    """Assert the parser does what json.loads implies for ``text``; say which case it was."""
    try:
        loaded, pairs = _top_pairs(text)
    except ValueError:
        with pytest.raises(ValueError):  # JSONDecodeError, or the parser's own "not a List page"
            parse(text)
        return "rejected"
    if not isinstance(loaded, dict):
        with pytest.raises(json.JSONDecodeError):
            parse(text)
        return "not an object"
    keys = [k for k, _ in pairs or ()]
    if keys.count("items") != 1 or not (isinstance(loaded["items"], list) or loaded["items"] is None):
        # no items, items not a list, or a repeated key: never a page to prune the store against
        with pytest.raises(ValueError):
            parse(text)
        return "rejected"
    if loaded["items"] is None:  # a Go nil slice
        items, top = parse(text)
        assert items == [] and same(top, loaded)
        return "accepted"
    items, top = parse(text)
    assert same(items, loaded["items"]) and same(top, {k: v for k, v in loaded.items() if k != "items"})
    return "accepted"


@pytest.mark.parametrize("seed", range(10))
def test_truncated_pages_raise(seed: int) -> None:
    rng = random.Random(seed)
    outcomes: dict[str, int] = {}
    for _ in range(20):
        text = rand_page(rng) if rng.random() < 0.5 else k8s_page("pods", k8s_objects(rng, 3)["pods"], 5, "t", rng)
        for cut in {rng.randrange(len(text)) for _ in range(15)} | {len(text) - 1}:
            outcome = check_against_oracle(text[:cut])
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
            assert outcome in ("rejected", "accepted"), (outcome, text[:cut])
    assert outcomes["rejected"] >= 200


_MUTATION_CHARS = '{}[],:"\\ \n0a-.eE'


def _mutate(text: str, rng: random.Random) -> str:
    for _ in range(rng.randint(1, 3)):
        i = rng.randrange(len(text) + 1)
        op = rng.random()
        if op < 0.35:
            text = text[:i] + text[i + 1 :]
        elif op < 0.7:
            text = text[:i] + rng.choice(_MUTATION_CHARS) + text[i:]
        elif op < 0.9:
            text = text[:i] + rng.choice(_MUTATION_CHARS) + text[i + 1 :]
        else:
            j = rng.randrange(len(text) + 1)
            text = text[:i] + text[min(i, j) : max(i, j)] + text[i:]
    return text


@pytest.mark.parametrize("seed", range(10))
def test_mutated_pages_raise_or_match_json_loads(seed: int) -> None:
    rng = random.Random(1000 + seed)
    outcomes: dict[str, int] = {}
    for _ in range(300):
        text = _mutate(rand_page(rng), rng)
        try:
            outcome = check_against_oracle(text)
        except AssertionError as e:
            raise AssertionError(f"seed={seed}: {text!r}") from e
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    # the mutations must exercise both sides, or this test proves nothing
    assert outcomes.get("rejected", 0) >= 100 and outcomes.get("accepted", 0) >= 10, outcomes


# -- pages that are not a List with one list of items are refused (once bugs: see git log) ----


@pytest.mark.parametrize(
    "text",
    [
        '{"items": {"metadata": {"name": "a"}}}',
        '{"items": 5}',
        '{"items": "[]"}',
        '{"items": true}',
        '{"metadata": {"resourceVersion": "7"}}',
        "{}",
    ],
)
def test_items_not_a_list_raises(text: str) -> None:
    with pytest.raises(ValueError):
        parse(text)


def test_repeated_items_key_is_rejected() -> None:
    # json.loads keeps the last value; a streaming parser has yielded the first by then, so a
    # repeated key is refused outright rather than half-applied
    with pytest.raises(ValueError, match="twice"):
        parse('{"items": [1], "items": [2]}')


# -- ResourceWatcher._list: the list-level metadata, page by page ---------------------------


class _Response:
    """The part of urllib3's HTTPResponse that _list uses."""

    def __init__(self, body: bytes):
        self._body = body

    def read(self) -> bytes:
        return self._body

    def release_conn(self) -> None:
        pass

    def close(self) -> None:
        pass


def _lister(pages: list[str]) -> tuple[Callable[..., _Response], list[dict[str, Any]]]:
    """A list_fn serving ``pages`` in order, and the list of the kwargs it was called with."""
    calls: list[dict[str, Any]] = []
    served: Iterator[str] = iter(pages)

    def list_fn(**kwargs: Any) -> _Response:
        calls.append(kwargs)
        return _Response(next(served).encode("utf-8"))

    return list_fn, calls


def _services(*names: str) -> list[Raw]:
    return [kubeobj.service(n, "default", cluster_ip=f"10.96.1.{i + 1}") for i, n in enumerate(names)]


def _stale_store() -> Store:
    store = Store(required=("services",))
    store.upsert("services", *KINDS["services"](kubeobj.service("stale", "default", cluster_ip="10.96.9.9")))
    return store


def test_list_follows_continue_tokens_and_keeps_the_resource_version() -> None:
    rng = random.Random(3)
    pages = [
        k8s_page("services", _services("a", "b"), 100, "tok-1", rng),
        k8s_page("services", _services("c"), 100, "tok-2", rng, style="indented", metadata_last=True),
        k8s_page("services", _services("d", "e"), 100, None, rng),
    ]
    list_fn, calls = _lister(pages)
    store = _stale_store()
    watcher = ResourceWatcher("services", list_fn, store, reactor=SyncReactor())
    watcher._list()
    assert [c.get("_continue") for c in calls] == [None, "tok-1", "tok-2"]
    assert all(c["_preload_content"] is False and c["limit"] >= 1 for c in calls)
    assert watcher.status.resource_version == "100"
    assert sorted(store.keys("services")) == ["default/a", "default/b", "default/c", "default/d", "default/e"]
    assert store.synced and watcher.status.synced


def test_list_stops_on_an_empty_continue_and_keeps_an_earlier_resource_version() -> None:
    pages = [
        '{"metadata": {"resourceVersion": "7", "continue": "x"}, "items": []}',
        '{"items": [], "metadata": {"continue": ""}}',  # no resourceVersion: the first one stands
    ]
    list_fn, calls = _lister(pages)
    store = _stale_store()
    watcher = ResourceWatcher("services", list_fn, store, reactor=SyncReactor())
    watcher._list()
    assert len(calls) == 2
    assert watcher.status.resource_version == "7"
    assert store.count("services") == 0 and store.synced  # an empty list prunes everything


def test_list_with_a_malformed_page_applies_nothing_of_it() -> None:
    rng = random.Random(4)
    good = k8s_page("services", _services("a", "b"), 100, "tok-1", rng)
    bad = k8s_page("services", _services("c", "d"), 100, None, rng)
    bad = bad[: bad.index('"name":"d"')]  # truncated inside the second item
    list_fn, calls = _lister([good, bad])
    store = _stale_store()
    watcher = ResourceWatcher("services", list_fn, store, reactor=SyncReactor())
    with pytest.raises(json.JSONDecodeError):
        watcher._list()
    # page 1 is in; of page 2 not even the complete first item "c"; nothing pruned, not synced
    assert sorted(store.keys("services")) == ["default/a", "default/b", "default/stale"]
    assert not store.synced and not watcher.status.synced
    assert watcher.status.resource_version == ""


@pytest.mark.parametrize("metadata", ['"v1"', "[1]", "42"])
def test_list_with_list_metadata_of_the_wrong_type_raises_before_applying(metadata: str) -> None:
    list_fn, _ = _lister([f'{{"metadata": {metadata}, "items": []}}'])
    store = _stale_store()
    watcher = ResourceWatcher("services", list_fn, store, reactor=SyncReactor())
    with pytest.raises(AttributeError):  # meta.get on a non-dict: unclear, but nothing applied
        watcher._list()
    assert sorted(store.keys("services")) == ["default/stale"] and not store.synced


def test_items_of_the_wrong_type_are_skipped_and_counted() -> None:
    text = '{"metadata": {"resourceVersion": "1"}, "items": [1, "x", null, [], {"metadata": {"name": "ok"}}]}'
    watcher = ResourceWatcher("namespaces", no_list, Store(), reactor=SyncReactor())
    assert parse(text)[0] == json.loads(text)["items"]
    assert watcher._convert_page(text, {}) == [KINDS["namespaces"]({"metadata": {"name": "ok"}})]
    assert watcher.status.errors == 4 and "skipped malformed object" in watcher.status.last_error


def test_list_page_with_items_not_a_list_does_not_prune_the_store() -> None:
    list_fn, _ = _lister(['{"metadata": {"resourceVersion": "5"}, "items": {"metadata": {"name": "a"}}}'])
    store = _stale_store()
    watcher = ResourceWatcher("services", list_fn, store, reactor=SyncReactor())
    with pytest.raises(ValueError):
        watcher._list()
    assert sorted(store.keys("services")) == ["default/stale"] and not store.synced
