"""Corefile directives ``any``, ``acl``, ``bufsize``, ``minimal`` and ``transfer`` → their YAML keys.

CoreDNS's syntax, mapped onto the keys :mod:`kubedns.plugins.policies` reads (the validation of
values, query types, networks and addresses is done there, for both syntaxes):

- ``any`` and ``minimal``: no arguments, no block → ``{}``;
- ``bufsize [SIZE]`` → ``bufsize: SIZE`` (1232 without SIZE);
- ``acl [ZONES...] { ACTION [type QTYPE...] [net SOURCE...] }`` → one ``acl`` item per line,
  with the directive's ZONES; ``type``/``net`` sections in any order and case, as CoreDNS;
  ``acl`` may be used several times in a block (its rules then follow each other);
- ``transfer [ZONES...] { to ADDRESS...; source ADDRESS }`` → one ``transfer`` item per
  directive (``to`` may repeat and is required); several directives in a block are allowed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kubedns.corefile.parser import Directive
    from kubedns.corefile.plugins import Block

__all__ = ["POLICY_MAPPERS"]

_ACTIONS = ("allow", "block", "filter", "drop")
_SECTIONS = ("type", "net")


def _flag(b: Block, d: Directive) -> None:
    from kubedns.corefile.plugins import _no_args, _no_block

    _no_args(d)
    _no_block(d)
    b.note(d.text, d.name, d.text)
    b.data[d.text] = {}


def _map_bufsize(b: Block, d: Directive) -> None:
    from kubedns.corefile.plugins import _no_block, _scalar, err

    _no_block(d)
    if len(d.args) > 1:
        raise err(d.args[1], "bufsize", "[SIZE]: one size from 512 to 4096")
    b.note("bufsize", d.args[0] if d.args else d.name, "bufsize")
    b.data["bufsize"] = _scalar(d.args[0]) if d.args else 1232


def _map_acl(b: Block, d: Directive) -> None:
    from kubedns.corefile.plugins import _zones_arg, err

    zones = _zones_arg(b, d.args, "acl") if d.args else None
    rules: list[dict[str, Any]] = b.data.setdefault("acl", [])
    b.note("acl", d.name, "acl")
    for line in d.block or ():
        label = f"acl: {line.text}"
        action = line.text.lower()
        if action not in _ACTIONS:
            raise err(line.name, "acl", f"an action (allow, block, filter or drop), got {line.text!r}")
        if line.block is not None:
            raise err(line.name, label, "no block after an acl rule")
        key = f"acl[{len(rules)}]"
        rule: dict[str, Any] = {"action": action}
        b.note(key, line.name, label)
        b.note(f"{key}.action", line.name, label)
        args = list(line.args)
        while args:
            section = args[0].text.lower()
            if section not in _SECTIONS:
                raise err(args[0], label, f"'type' or 'net', got {args[0].text!r}")
            values = []
            i = 1
            while i < len(args) and args[i].text.lower() not in _SECTIONS:
                values.append(args[i])
                i += 1
            if not values:
                raise err(args[0], label, f"one or more values after '{section}'")
            have = rule.setdefault(section, [])
            for v in values:
                b.note(f"{key}.{section}[{len(have)}]", v, f"{label}: {section}")
                have.append(v.text)
            b.note(f"{key}.{section}", args[0], f"{label}: {section}")
            args = args[i:]
        if zones is not None:
            rule["zones"] = list(zones)
            b.note(f"{key}.zones", d.args[0], "acl: ZONES")
        rules.append(rule)


def _map_transfer(b: Block, d: Directive) -> None:
    from kubedns.corefile.plugins import _zones_arg, err

    items: list[dict[str, Any]] = b.data.setdefault("transfer", [])
    key = f"transfer[{len(items)}]"
    out: dict[str, Any] = {"to": []}
    b.note("transfer", d.name, "transfer")
    b.note(key, d.name, "transfer")
    if d.args:
        out["zones"] = _zones_arg(b, d.args, "transfer")
        b.note(f"{key}.zones", d.args[0], "transfer: ZONES")
    for opt in d.block or ():
        if opt.block is not None:
            raise err(opt.name, f"transfer: {opt.text}", "no block after this option")
        if opt.text == "to":
            if not opt.args:
                raise err(opt.name, "transfer: to", "one or more ADDRESSes (an IP, IP:port or *)")
            for a in opt.args:
                b.note(f"{key}.to[{len(out['to'])}]", a, "transfer: to")
                out["to"].append(a.text)
        elif opt.text == "source":
            if len(opt.args) != 1:
                raise err(opt.name, "transfer: source", "one ADDRESS")
            if "source" in out:
                raise err(opt.name, "transfer: source", "source once (source already specified)")
            out["source"] = opt.args[0].text
            b.note(f"{key}.source", opt.args[0], "transfer: source")
        else:
            raise err(opt.name, "transfer", f"'to' or 'source', got {opt.text!r}")
    if not out["to"]:
        raise err(d.name, "transfer", "a 'to ADDRESS...' line ('to' is required)")
    b.note(f"{key}.to", d.name, "transfer: to")
    items.append(out)


POLICY_MAPPERS = {
    "any": _flag,
    "minimal": _flag,
    "bufsize": _map_bufsize,
    "acl": _map_acl,
    "transfer": _map_transfer,
}
