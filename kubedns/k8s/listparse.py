"""A streaming parser for Kubernetes LIST pages: the ``items`` one at a time, not the whole page.

``json.loads`` of a page holds every raw object of the page at once (several KB of dicts per Pod,
tens of MB per page); this walks the top-level object with the stdlib's own C scanner and yields
each element of ``items`` as soon as it is parsed, so the caller can turn it into a slim record
and drop the raw dict before the next one exists.  Anything that is not a List page with exactly
one ``items`` list (or ``null``, a Go nil slice) is refused with ``ValueError``: such a page must
never be mistaken for an empty list, because the caller prunes the store against it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

__all__ = ["list_items"]


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
