"""The YAML keys of ``any``, ``acl``, ``bufsize``, ``minimal`` and ``transfer``, read in one place.

:func:`kubedns.config._parse_block` calls :func:`parse_policies` and passes what it returns to
:class:`~kubedns.config.ServerBlock`; each plugin's own module holds its parsing (the Corefile
maps onto the same keys in :mod:`kubedns.corefile.plugins`):

- ``any: {}`` (or empty, or ``true``): ANY gets RFC 8482's HINFO;
- ``acl: [{action, type: [...], net: [...], zones: [...]}]``;
- ``bufsize: 1232`` (empty or ``true``: 1232; 512 to 4096);
- ``minimal: {}`` (or empty, or ``true``);
- ``transfer: {zones: [...], to: [...], source: IP}`` (or a list of them).
"""

from __future__ import annotations

from typing import Any

from kubedns.configbase import Node

__all__ = ["KEYS", "parse_policies"]

KEYS = frozenset({"any", "acl", "bufsize", "minimal", "transfer"})


def _flag(node: Node, name: str) -> bool:
    """``name: {}`` (or empty, or true) turns a plugin without options on; ``false`` leaves it off."""
    if not node.has(name):
        return False
    sub = node.get(name)
    if sub.value is True or sub.value is False:
        return bool(sub.value)
    sub.mapping(set())
    return True


def parse_policies(node: Node) -> dict[str, Any]:
    """The ServerBlock fields of the five plugins, from the block's mapping ``node``."""
    out: dict[str, Any] = {"any": _flag(node, "any"), "minimal": _flag(node, "minimal")}
    if node.has("acl"):
        from kubedns.plugins.acl import parse_acl

        out["acl"] = parse_acl(node.get("acl"))
    if node.has("bufsize"):
        from kubedns.plugins.bufsize import parse_bufsize

        out["bufsize"] = parse_bufsize(node.get("bufsize"))
    if node.has("transfer"):
        from kubedns.plugins.transfer import parse_transfer

        out["transfer"] = parse_transfer(node.get("transfer"))
    return out
