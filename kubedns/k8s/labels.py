"""Kubernetes label selectors (the ``labels`` option), checked at config time, matched by the API.

CoreDNS's ``labels EXPRESSION`` goes through ``meta.ParseToLabelSelector`` and is then sent as
``labelSelector`` on every LIST and WATCH of Services, EndpointSlices and Pods: the API server
does the matching, so objects outside the selector never reach the process at all.  kubedns does
the same (:mod:`kubedns.k8s.watch`), so all this module has to do is read the expression the way
the API server will, turn a typo into a one-line config error instead of a watch that fails
forever with 400 Bad Request, and give one canonical spelling (so that two spellings of one
selector share one store).  :func:`matches` is the same semantics in Python, for the manifests
source and for tests.

The grammar is the one ``ParseToLabelSelector`` accepts: requirements separated by commas, each
``key``, ``!key``, ``key=value``, ``key==value``, ``key!=value``, ``key in (v1, v2)`` or
``key notin (v1, v2)``.  Keys are qualified names (``[prefix/]name``), values are label values.
``gt``/``lt`` (``key > 3``) are refused, as ``ParseToLabelSelector`` refuses them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["Requirement", "SelectorError", "canonical", "matches", "parse"]

_NAME = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)$")
_DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_SET_REQ = re.compile(r"^(?P<key>[^\s!=(),]+)\s+(?P<op>in|notin)\s*\((?P<values>[^()]*)\)$")
_EQ_REQ = re.compile(r"^(?P<key>[^\s!=(),]+)\s*(?P<op>==|=|!=)\s*(?P<value>[^\s!=(),]*)$")
_EXISTS = re.compile(r"^(?P<bang>!)?\s*(?P<key>[^\s!=(),<>]+)$")


class SelectorError(ValueError):
    """The expression is not a label selector; the message says which part and why."""


@dataclass(frozen=True, slots=True)
class Requirement:
    key: str
    op: str  # "exists" | "!exists" | "=" | "!=" | "in" | "notin"
    values: tuple[str, ...] = ()

    def __str__(self) -> str:
        if self.op == "exists":
            return self.key
        if self.op == "!exists":
            return "!" + self.key
        if self.op in ("=", "!="):
            return f"{self.key}{self.op}{self.values[0]}"
        return f"{self.key} {self.op} ({','.join(self.values)})"

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.op == "exists":
            return self.key in labels
        if self.op == "!exists":
            return self.key not in labels
        value = labels.get(self.key)
        if self.op == "=":
            return value == self.values[0]
        if self.op == "in":
            return value in self.values
        # "!=" and "notin" match objects without the label too, as Kubernetes does
        return value is None or value not in self.values


def _check_key(key: str) -> str:
    prefix, _, name = key.rpartition("/")
    if "/" in key and (not prefix or len(prefix) > 253 or not _DNS1123_SUBDOMAIN.match(prefix)):
        raise SelectorError(f"{key!r}: the prefix before '/' must be a lower-case DNS subdomain")
    if not name or len(name) > 63 or not _NAME.match(name):
        raise SelectorError(
            f"{key!r}: a label key is at most 63 letters, digits, '-', '_' or '.', "
            "starting and ending with a letter or digit (with an optional 'prefix/')"
        )
    return key


def _check_value(value: str) -> str:
    if value and (len(value) > 63 or not _NAME.match(value)):
        raise SelectorError(
            f"{value!r}: a label value is empty or at most 63 letters, digits, '-', '_' or '.', "
            "starting and ending with a letter or digit"
        )
    return value


def _split(expression: str) -> list[str]:
    """The requirements: commas inside ``( )`` belong to a set, not between requirements."""
    parts, depth, start = [], 0, 0
    for i, c in enumerate(expression):
        if c == "(":
            depth += 1
            if depth > 1:
                raise SelectorError("'(' inside a set of values")
        elif c == ")":
            depth -= 1
            if depth < 0:
                raise SelectorError("')' without '('")
        elif c == "," and depth == 0:
            parts.append(expression[start:i])
            start = i + 1
    if depth:
        raise SelectorError("'(' without ')'")
    parts.append(expression[start:])
    return parts


def parse(expression: str) -> tuple[Requirement, ...]:
    """The requirements of ``expression``; :class:`SelectorError` says what is wrong."""
    if not expression.strip():
        raise SelectorError("an empty selector")
    out: list[Requirement] = []
    for raw in _split(expression):
        part = raw.strip()
        if not part:
            raise SelectorError("an empty requirement (two commas, or a comma at an end)")
        if m := _SET_REQ.match(part):
            values = [v.strip() for v in m["values"].split(",")]
            if values == [""]:
                raise SelectorError(f"{part!r}: 'in' and 'notin' need at least one value")
            vals = tuple(sorted(dict.fromkeys(_check_value(v) for v in values)))
            out.append(Requirement(_check_key(m["key"]), m["op"], vals))
        elif m := _EQ_REQ.match(part):
            op = "=" if m["op"] == "==" else m["op"]
            out.append(Requirement(_check_key(m["key"]), op, (_check_value(m["value"]),)))
        elif m := _EXISTS.match(part):
            out.append(Requirement(_check_key(m["key"]), "!exists" if m["bang"] else "exists"))
        elif re.search(r"\s(gt|lt)\s|[<>]", part):
            raise SelectorError(f"{part!r}: '<', '>', 'gt' and 'lt' are not label selector operators here")
        else:
            raise SelectorError(
                f"{part!r} is not a requirement (key, !key, key=value, key!=value, key in (a,b), key notin (a,b))"
            )
    return tuple(out)


def canonical(expression: str) -> str:
    """The selector as sent to the API: one spelling per meaning, as Kubernetes's own
    ``Selector.String()`` writes it (requirements sorted by key, set values sorted, no spaces but
    the ones around ``in``/``notin``), so ``b=2,a=1`` and ``a=1, b=2`` share a store."""
    return ",".join(str(r) for r in sorted(parse(expression), key=lambda r: r.key))


def matches(requirements: tuple[Requirement, ...], labels: Mapping[str, str] | None) -> bool:
    """True if ``labels`` (an object's ``metadata.labels``) satisfy every requirement."""
    have = labels or {}
    return all(r.matches(have) for r in requirements)
