"""The Corefile's ``rewrite`` and ``template`` directives → the YAML's ``rewrite`` and ``template`` lists.

Both may appear several times in a server block (each ``rewrite`` is one rule, each ``template``
one template, in the order written), so each directive appends one item.  ``rewrite`` reads as
CoreDNS's setup reads it: the rule on the directive's line, or, with at most one word there
(``rewrite stop {``), every word of its block joined into one rule; the words are turned into
the YAML's rule mapping by :func:`kubedns.plugins.rewrite.rule_from_words`.  ``template CLASS
TYPE [ZONE...]`` takes its block's ``match``, ``answer``, ``additional``, ``authority`` (each
repeatable, each word one item), ``rcode``, ``ederror CODE [REASON]`` and ``fallthrough
[ZONE...]`` lines.
"""

from __future__ import annotations

from typing import Any

from kubedns.corefile.lexer import CorefileSyntaxError, Token
from kubedns.corefile.parser import Directive
from kubedns.plugins.rewrite import rule_from_words

__all__ = ["REPEATABLE", "map_rewrite", "map_template"]

#: directives a server block may hold more than once
REPEATABLE = ("rewrite", "template")
_TEMPLATE_LISTS = ("match", "answer", "additional", "authority")
_TEMPLATE_REFUSED = {
    "var": "CoreDNS's expression options (var, expr) are not supported by kubedns",
    "expr": "CoreDNS's expression options (var, expr) are not supported by kubedns",
}


def _err(tok: Token, label: str, expected: str) -> CorefileSyntaxError:
    return CorefileSyntaxError(tok.file, tok.line, f"{label}: expected {expected}")


def _flatten(lines: list[Directive]) -> list[Token]:
    out: list[Token] = []
    for d in lines:
        out.append(d.name)
        out.extend(d.args)
        if d.block:
            out.extend(_flatten(d.block))
    return out


def map_rewrite(b: Any, d: Directive) -> None:
    """One ``rewrite`` directive → one more item of ``b.data["rewrite"]``."""
    toks = list(d.args)
    if len(toks) < 2:
        toks += _flatten(d.block or [])
    elif d.block is not None:
        raise _err(d.name, "rewrite", "a rule on the line or in a block, not both")
    try:
        rule = rule_from_words([t.text for t in toks])
    except ValueError as e:
        raise _err(toks[0] if toks else d.name, "rewrite", str(e)) from None
    rules = b.data.setdefault("rewrite", [])
    b.note("rewrite", d.name, "rewrite")
    b.note(f"rewrite[{len(rules)}]", d.name, "rewrite")
    rules.append(rule)


def map_template(b: Any, d: Directive) -> None:
    """One ``template CLASS TYPE [ZONE...] { ... }`` → one more item of ``b.data["template"]``."""
    if len(d.args) < 2:
        raise _err(d.name, "template", "CLASS TYPE [ZONE...] (such as 'template IN AAAA')")
    items = b.data.setdefault("template", [])
    key = f"template[{len(items)}]"
    b.note("template", d.name, "template")
    b.note(key, d.name, "template")
    out: dict[str, Any] = {"class": d.args[0].text, "type": d.args[1].text}
    b.note(f"{key}.class", d.args[0], "template: CLASS")
    b.note(f"{key}.type", d.args[1], "template: TYPE")
    if len(d.args) > 2:
        out["zones"] = [t.text for t in d.args[2:]]
        for i, t in enumerate(d.args[2:]):
            b.note(f"{key}.zones[{i}]", t, "template: ZONE")
    for opt in d.block or ():
        name = opt.text
        label = f"template: {name}"
        if opt.block is not None:
            raise _err(opt.name, label, "no block after this option")
        if name in _TEMPLATE_REFUSED:
            raise CorefileSyntaxError(opt.name.file, opt.name.line, f"{label}: {_TEMPLATE_REFUSED[name]}")
        if name in _TEMPLATE_LISTS:
            if not opt.args:
                raise _err(opt.name, label, f"one or more {'regexps' if name == 'match' else 'records'}")
            have = out.setdefault(name, [])
            for t in opt.args:
                b.note(f"{key}.{name}[{len(have)}]", t, label)
                have.append(t.text)
        elif name == "rcode":
            if len(opt.args) != 1:
                raise _err(opt.name, label, "one response code such as NXDOMAIN")
            out["rcode"] = opt.args[0].text
            b.note(f"{key}.rcode", opt.args[0], label)
        elif name == "ederror":
            if not 1 <= len(opt.args) <= 2:
                raise _err(opt.name, label, "EXTENDED_ERROR_CODE [EXTRA_REASON]")
            code = opt.args[0].text
            ede: dict[str, Any] = {"code": int(code) if code.isascii() and code.isdigit() else code}
            if len(opt.args) == 2:
                ede["reason"] = opt.args[1].text
            out["ederror"] = ede
            b.note(f"{key}.ederror", opt.name, label)
        elif name == "fallthrough":
            out["fallthrough"] = [t.text for t in opt.args] if opt.args else True
            b.note(f"{key}.fallthrough", opt.name, label)
        elif name == "upstream":  # deprecated in CoreDNS, ignored there too
            continue
        else:
            raise _err(opt.name, "template", "match, answer, additional, authority, rcode, ederror or "
                       f"fallthrough, got {name!r}")
    items.append(out)
