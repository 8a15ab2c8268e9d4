"""``kubedns check FILE``: the configuration the server would run, read by the server's own loader.

A Corefile and the YAML config both become the same frozen :class:`~kubedns.config.Config`
(:func:`kubedns.config.load`), so what is printed here is what ``twistd kubedns --config FILE``
would serve, every default filled in: per server block its zones, its listen address, the
plugins a query meets in CoreDNS's order (:data:`kubedns.plugins.base.ORDER`, whatever their
order in the file) and the ones that only configure the process.  The options are read off the
config records generically, so a plugin added to :class:`~kubedns.config.ServerBlock` shows up
here without a change.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import re
from typing import Any

import yaml

from kubedns.config import Config, ServerBlock
from kubedns.plugins.base import ORDER

__all__ = ["effective", "render_json", "render_text"]

#: ServerBlock keys that configure the process (HTTP endpoints, reloading), not the chain.
PROCESS = ("health", "ready", "prometheus", "reload", "debug")
#: What a plugin's place in kubedns's chain differs in from CoreDNS's, said next to it.
NOTES = {
    "cache": "forwarded answers only; cluster answers come from the live store",
    "log": "sees every answered query",
    "errors": "sees every failed query",
}
_SKIP = ("zones", "listen", "index")


def _plain(value: Any) -> Any:
    """A config value as JSON-able data: records as mappings, tuples as lists, the rest as text."""
    if hasattr(value, "host") and hasattr(value, "port"):  # an Address, an upstream
        host = f"[{value.host}]" if ":" in value.host else value.host
        return f"{'tls://' if getattr(value, 'tls', False) else ''}{host}:{value.port}"
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value) if f.repr}
    if isinstance(value, (list, tuple, frozenset, set)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, enum.Enum):
        return value.name.lower()
    if isinstance(value, re.Pattern):
        return value.pattern
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def _present(block: ServerBlock) -> list[tuple[str, Any]]:
    """The block's plugins: each key whose value is not its default (a key enables its plugin)."""
    out = []
    for f in dataclasses.fields(block):
        if f.name in _SKIP:
            continue
        value = getattr(block, f.name)
        default = f.default if f.default is not dataclasses.MISSING else None
        if value != default:
            out.append((f.name, value))
    return out


def effective(config: Config) -> dict[str, Any]:
    """The configuration as data: what :func:`render_text` prints and ``--json`` dumps."""
    rank = {name: i for i, name in enumerate(ORDER)}
    blocks = []
    for b in config.servers:
        plugins = _present(b)
        chain = sorted((p for p in plugins if p[0] not in PROCESS), key=lambda p: rank.get(p[0], len(ORDER)))
        blocks.append({
            "zones": [z or "." for z in b.zones],
            "listen": _plain(b.listen),
            "chain": [{"plugin": name, "options": _options(value), **({"note": NOTES[name]} if name in NOTES else {})}
                      for name, value in chain],
            "process": [{"plugin": name, "options": _options(value)} for name, value in plugins if name in PROCESS],
        })
    return {"file": config.path, "workers": config.workers, "tcp_idle_timeout": config.tcp_idle_timeout,
            "servers": blocks}


def _options(value: Any) -> Any:
    """A plugin's options; a bare switch (``any``, ``minimal``, ``debug``) has none."""
    return {} if value is True else _plain(value)


def render_json(config: Config) -> str:
    return json.dumps(effective(config), indent=2)


def render_text(config: Config) -> str:
    data = effective(config)
    lines = [f"{data['file']}: valid, {len(data['servers'])} server block(s)"
             f" (workers {data['workers']}, tcp_idle_timeout {data['tcp_idle_timeout']}s)"]
    for i, b in enumerate(data["servers"]):
        lines.append("")
        lines.append(f"server block {i}: zones {' '.join(b['zones'])}  listen {b['listen']}")
        lines.append("  plugin chain, in the order a query meets it:")
        for n, p in enumerate(b["chain"], 1):
            note = f"  ({p['note']})" if "note" in p else ""
            lines.append(f"    {n}. {p['plugin']}{note}")
            lines.extend(_indented(p["options"], "         "))
        if b["process"]:
            lines.append("  process:")
            for p in b["process"]:
                lines.append(f"    - {p['plugin']}")
                lines.extend(_indented(p["options"], "        "))
    return "\n".join(lines)


def _indented(options: Any, pad: str) -> list[str]:
    if options in ({}, [], None):
        return []
    text = yaml.safe_dump(options, sort_keys=False, default_flow_style=None, width=100).rstrip()
    return [pad + line for line in text.splitlines()]
