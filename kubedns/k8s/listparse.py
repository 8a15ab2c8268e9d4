"""LIST pages into slim records: msgspec for the fields DNS reads, the stdlib for the odd page.

Why msgspec: with realistic objects (a Pod is ~5 KB of JSON, mostly ``managedFields``, spec and
container statuses, of which DNS reads ~100 bytes) the stdlib parser built every dict and string of
every object only for the converter to drop them, at ~150 MB/s: seconds of CPU per 100k Pods.
:func:`page_records` has msgspec decode a page straight into the decode-only structs of
:mod:`kubedns.k8s.fastdecode` (``FAST_KINDS``), which declare only those fields: everything else is
skipped in C without a Python object being made, and the page never exists as raw dicts at all
(memory stays bounded by one page of slim records, as with the streaming parser).  The API's
protobuf encoding was the other candidate (what client-go asks for); it needs generated code for
the Kubernetes types or a hand-kept ``.proto`` subset, its own framing for watch streams, and
still decodes every nested message the field numbers lead through; msgspec is one wheel, keeps the
JSON the tests and the fake API speak, and skips unknown fields without decoding them.

What msgspec's strict decoding does not take on (a field of an unexpected type, an object without
a name, JSON only Python's parser accepts such as ``NaN``) is handed down, never guessed:

1. the whole page into the structs (the normal case, one pass in C);
2. else the page into raw items (``msgspec.Raw``, views of the body), each item into its struct,
   and an item that fails that into a dict for the reference converter (``objects.KINDS``), so one
   odd object is judged (and skipped and counted if malformed) exactly as before;
3. else the stdlib streaming parser :func:`list_items` below, which walks the page with the
   stdlib's own C scanner, yields one raw item at a time, and raises on a page that is not a List
   with exactly one ``items`` list (or ``null``, a Go nil slice).

A page with no ``items`` list must never be mistaken for an empty list, because the caller prunes
the store against it.  Two things msgspec does not check, where the stdlib path did: a repeated
top-level ``items`` key (the last one counts, as with ``json.loads``; the stdlib path, which
yields items as it goes, refuses it) and bytes that are not UTF-8 inside a field DNS does not read
(skipped unread; in a field it reads they still refuse the page).  An API server sends neither.

Why :func:`list_items` streams: ``json.loads`` of a page holds every raw object of the page at
once (several KB of dicts per Pod, tens of MB per page); it walks the top-level object with the
stdlib's own C scanner and yields each element of ``items`` as soon as it is parsed, so the caller
can turn it into a slim record and drop the raw dict before the next one exists.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from functools import cache
from typing import Any

import msgspec

from kubedns.k8s.fastdecode import Defer, FastKind

__all__ = ["list_items", "page_records"]

#: ``(key, record)`` of a converted object, or None for one that was skipped (logged, counted)
Converted = tuple[str, Any] | None


@cache
def _decoders(fast: FastKind) -> tuple[msgspec.json.Decoder, msgspec.json.Decoder, msgspec.json.Decoder]:
    """Decoders of a whole page into ``fast.struct``s, of a page into raw items, of one item."""
    top: list[Any] = [("metadata", Any, msgspec.UNSET), ("kind", Any, msgspec.UNSET),
                      ("apiVersion", Any, msgspec.UNSET)]
    page = msgspec.defstruct(f"{fast.struct.__name__}Page",
                             [("items", list[fast.struct] | None | msgspec.UnsetType, msgspec.UNSET),  # type: ignore[name-defined]  # a struct class known at run time
                              *top])
    raw = msgspec.defstruct("RawPage", [("items", list[msgspec.Raw] | None | msgspec.UnsetType, msgspec.UNSET), *top])
    return msgspec.json.Decoder(page), msgspec.json.Decoder(raw), msgspec.json.Decoder(fast.struct)


def _fill_top(page: Any, top: dict[str, Any]) -> None:
    for name in ("kind", "apiVersion", "metadata"):
        value = getattr(page, name)
        if value is not msgspec.UNSET:
            top[name] = value
    if page.items is None:
        top["items"] = None


def page_records(body: bytes | str, fast: FastKind, slow: Callable[[Any], Converted],
                 top: dict[str, Any]) -> list[tuple[str, Any]]:
    """The ``(key, record)`` pairs of a LIST page; its ``kind``, ``apiVersion``, ``metadata`` → ``top``.

    ``fast`` decodes and converts the objects DNS can take as they are; ``slow`` gets the raw dict
    of any other object (the reference converter: it returns None for one it skips).  Raises
    ``ValueError`` (``json.JSONDecodeError`` for malformed JSON) for a page that is not a List
    with exactly one ``items`` list or ``null``; then nothing of the page is returned.
    """
    whole, raw_items, one = _decoders(fast)
    convert = fast.convert
    try:
        page = whole.decode(body)
    except msgspec.DecodeError:
        return _stdlib_records(body, slow, top)
    except msgspec.ValidationError:
        page = None
    if page is not None and page.items is not msgspec.UNSET:
        try:
            batch = [convert(obj) for obj in page.items or ()]
        except Defer:
            pass
        else:
            _fill_top(page, top)
            return batch
    # one object (or more) the structs cannot take as they are: item by item
    try:
        page = raw_items.decode(body)
    except msgspec.MsgspecError:
        return _stdlib_records(body, slow, top)
    if page.items is msgspec.UNSET:
        return _stdlib_records(body, slow, top)  # raises: no items
    out = []
    for raw in page.items or ():
        converted: Converted
        try:
            converted = convert(one.decode(raw))
        except (msgspec.ValidationError, Defer):
            converted = slow(json.loads(bytes(raw)))
        if converted is not None:
            out.append(converted)
    _fill_top(page, top)
    return out


def _stdlib_records(body: bytes | str, slow: Callable[[Any], Converted], top: dict[str, Any]) -> list[tuple[str, Any]]:
    text = body.decode("utf-8") if isinstance(body, bytes) else body
    batch = []
    for raw in list_items(text, top):
        converted = slow(raw)
        if converted is not None:
            batch.append(converted)
    return batch


_scan_once = json.JSONDecoder().scan_once  # type: ignore[attr-defined]  # set by JSONDecoder.__init__; not in typeshed
_WS = re.compile(r"[ \t\n\r]*")
_WS_CHARS = " \t\n\r"


def _skip_ws(text: str, i: int) -> int:
    if i < len(text) and text[i] in _WS_CHARS:
        return _WS.match(text, i).end()  # type: ignore[union-attr]  # always matches
    return i


def _scan(text: str, i: int) -> tuple[Any, int]:
    try:
        return _scan_once(text, i)
    except StopIteration as e:
        raise json.JSONDecodeError("Expecting value", text, e.value) from None


def _expect(text: str, i: int, char: str) -> int:
    if text[i : i + 1] != char:
        raise json.JSONDecodeError(f"Expecting {char!r}", text, i)
    return _skip_ws(text, i + 1)


def list_items(text: str, top: dict[str, Any]) -> Iterator[Any]:
    """Yield the elements of a List response's ``items`` one by one; other top-level keys → ``top``.

    Parsing the whole page with ``json.loads`` would hold every raw object of the page at once
    (several KB of dicts each, tens of MB per page of Pods); here the stdlib's own C scanner
    parses one element at a time, so a raw object can be dropped before the next is built.
    Accepts exactly what ``json.loads`` accepts for a top-level object (keys in any order).
    """
    i = _expect(text, _skip_ws(text, 0), "{")
    seen_items = False
    while text[i : i + 1] != "}":
        if text[i : i + 1] != '"':
            raise json.JSONDecodeError("Expecting property name enclosed in double quotes", text, i)
        key, i = _scan(text, i)
        i = _expect(text, _skip_ws(text, i), ":")
        if key == "items":
            # A List without a list of items is not a page we may prune the store against.
            if seen_items:
                raise ValueError("LIST response has 'items' twice")
            seen_items = True
            if text[i : i + 1] != "[":
                value, i = _scan(text, i)
                if value is not None:  # null is a Go nil slice: an empty list
                    raise ValueError(f"LIST response 'items' is not a list: {type(value).__name__}")
                top[key] = value
                i = _skip_ws(text, i)
                if text[i : i + 1] == "}":
                    break
                i = _expect(text, i, ",")
                continue
            i = _skip_ws(text, i + 1)
            if text[i : i + 1] == "]":
                i += 1
            else:
                while True:
                    item, i = _scan(text, i)
                    yield item
                    del item
                    i = _skip_ws(text, i)
                    if text[i : i + 1] == "]":
                        i += 1
                        break
                    i = _expect(text, i, ",")
        else:
            top[key], i = _scan(text, i)
        i = _skip_ws(text, i)
        if text[i : i + 1] == "}":
            break
        i = _expect(text, i, ",")
        if text[i : i + 1] == "}":
            raise json.JSONDecodeError("Expecting property name enclosed in double quotes", text, i)
    if _skip_ws(text, i + 1) != len(text):
        raise json.JSONDecodeError("Extra data", text, i + 1)
    if not seen_items:
        raise ValueError("LIST response has no 'items'")
