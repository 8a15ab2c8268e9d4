"""The ``rewrite`` plugin: the query changed on its way in, the answer changed back on its way out.

The two things people add it to a cluster's Corefile for: serving an external name from an
in-cluster Service (``rewrite name db.example.com db.prod.svc.cluster.local``) and renaming a
zone (``rewrite name suffix .corp.example. .svc.cluster.local. answer auto``).  The rules and
their semantics are CoreDNS's (``plugin/rewrite``):

- rules run in the order written; a rule that applies ends the walk (``stop``, the default)
  unless it says ``continue``; then the rest of the chain answers the rewritten query;
- ``name [exact|prefix|suffix|substring|regex] FROM TO`` matches the query name lower-cased
  with a trailing dot (``FROM``/``TO`` get one too, except a regex; ``{N}`` in a regex's ``TO``
  is its group N); a name that is not valid after the rewrite is SERVFAIL;
- names in the answer are changed back: ``exact`` always, the others with ``answer auto``
  (owner names, and the names records point to, equal to or below the new name go back to the
  old one; for ``suffix`` the new suffix back to the old); ``answer name FROM TO`` and
  ``answer value FROM TO`` are regexps for owner names and record values (CNAME, DNAME, NS,
  PTR, MX, SRV, NAPTR, the SOA's MNAME) in every section; when several rules applied, their
  answer rules run last to first;
- ``type FROM TO`` and ``class FROM TO`` change the question's type or class;
  ``ttl [MATCH] NAME SECONDS|MIN-MAX`` sets (or clamps) every TTL of the answer;
- the question of the answer is always the client's (CoreDNS leaves it rewritten after
  ``continue`` rules alone, which clients reject); ``edns0``, ``cname`` and ``rcode`` rules are
  refused when the config is read.

On the fast path a rewritten answer is kept exactly when the answer it came from could be
(``Reply.cacheable``, ``Reply.lifetime``): the rewrite is a function of the query.  With a
``ttl`` rule a forwarded answer is not kept (its TTLs would count down from the rewritten value).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from twisted.names import dns

from kubedns.configbase import Node
from kubedns.dns.query import Request
from kubedns.dns.records import Answer
from kubedns.plugins.base import Next, Reply, Result, then
from kubedns.plugins.gotext import CLASSES, TYPES, expand_groups, fqdn, go_regex, group_refs, parse_name, present

__all__ = ["MATCHES", "AnswerRule", "RewritePlugin", "RewriteRule", "parse_rewrite_config", "rule_from_words",
           "with_question"]

MATCHES = ("exact", "prefix", "suffix", "substring", "regex")
FIELDS = ("name", "type", "class", "ttl")
_UNSUPPORTED = ("edns0", "cname", "rcode")
_TTL_MAX = 2147483647


@dataclass(frozen=True, slots=True)
class AnswerRule:
    """``answer name FROM TO`` (owner names) or ``answer value FROM TO`` (record values)."""

    kind: str  # "name" | "value"
    pattern: str
    replacement: str  # with a trailing dot, lower-cased


@dataclass(frozen=True, slots=True)
class RewriteRule:
    """One ``rewrite`` line (or ``rewrite [stop|continue] { ... }`` block) of a server block."""

    field: str  # name | type | class | ttl
    match: str = "exact"
    source: str = ""  # the name (fully qualified, lower-cased) or regexp; a type or class name
    target: str = ""  # the new name, type or class
    ttl: tuple[int, int] = (0, 0)  # ttl: MIN, MAX
    stop: bool = True
    auto: bool = False  # answer auto
    answers: tuple[AnswerRule, ...] = ()


# -- config ------------------------------------------------------------------------------------
def _answer_words(words: Sequence[str]) -> list[Any]:
    """CoreDNS's ``parseAnswerRules``: ``answer auto``, ``answer name FROM TO``, ``answer value
    FROM TO``, the word ``answer`` optional after the first, as the YAML's ``answer`` list."""
    out: list[Any] = []
    i = 0
    if len(words) < 2 or words[0] != "answer":
        raise ValueError(f"'answer auto', 'answer name FROM TO' or 'answer value FROM TO' after FROM TO, "
                         f"got {' '.join(words)!r}")
    while i < len(words):
        if words[i] == "answer":
            i += 1
        if i >= len(words):
            raise ValueError("auto, name or value after 'answer'")
        kind = words[i]
        i += 1
        if kind == "auto":
            out.append("auto")
        elif kind in ("name", "value"):
            if len(words) - i < 2:
                raise ValueError(f"answer {kind} FROM TO: two arguments")
            out.append({kind: [words[i], words[i + 1]]})
            i += 2
        else:
            raise ValueError(f"answer auto, name or value, got {kind!r}")
    return out


def rule_from_words(words: Sequence[str]) -> dict[str, Any]:
    """A rule written as CoreDNS's words (``stop name suffix .a. .b. answer auto``) as the YAML
    mapping :func:`parse_rewrite_config` reads; ValueError with a one-line reason otherwise."""
    if not words:
        raise ValueError("a rule: [stop|continue] name|type|class|ttl ...")
    mode = "stop"
    rest = list(words)
    if rest[0].lower() in ("stop", "continue"):
        mode = rest.pop(0).lower()
        if not rest:
            raise ValueError(f"a rule type after {mode!r} (name, type, class or ttl)")
    kind, args = rest[0].lower(), rest[1:]
    if kind == "answer":
        raise ValueError("response rewrites must begin with a name rule")
    if kind in _UNSUPPORTED:
        raise ValueError(f"a rule kubedns supports (name, type, class, ttl); CoreDNS's {kind!r} rule is not")
    if kind not in FIELDS:
        raise ValueError(f"a rule type: name, type, class or ttl, got {rest[0]!r}")
    body: dict[str, Any]
    if kind == "name":
        if len(args) < 2:
            raise ValueError("name [MATCH] FROM TO [answer ...]: too few arguments")
        if len(args) == 2:
            body = {"match": "exact", "from": args[0], "to": args[1]}
        else:
            body = {"match": args[0].lower(), "from": args[1], "to": args[2]}
            if len(args) > 3:
                body["answer"] = _answer_words(args[3:])
    elif kind in ("type", "class"):
        if len(args) != 2:
            raise ValueError(f"{kind} FROM TO: exactly two arguments")
        body = {"from": args[0], "to": args[1]}
    else:
        if len(args) == 2:
            body = {"match": "exact", "from": args[0], "ttl": args[1]}
        elif len(args) == 3:
            body = {"match": args[0].lower(), "from": args[1], "ttl": args[2]}
        else:
            raise ValueError("ttl [MATCH] NAME SECONDS|MIN-MAX")
    return {"mode": mode, kind: body}


def _ttl_range(node: Node) -> tuple[int, int]:
    """CoreDNS's ``isValidTTL``: ``30``, ``30-300``, ``-30`` (0-30) or ``30-`` (30 and up)."""
    v = node.value
    text = str(v) if isinstance(v, int) and not isinstance(v, bool) else v
    bad = node.error("SECONDS or MIN-MAX (30, 30-300, -30 or 30-), numbers below 2^32")
    if not isinstance(text, str):
        raise bad
    parts = text.split("-")
    if len(parts) > 2 or any(p and not (p.isascii() and p.isdigit()) for p in parts) or parts == ["", ""]:
        raise bad
    nums = [int(p) if p else None for p in parts]
    if any(n is not None and n >= 1 << 32 for n in nums):
        raise bad
    if len(nums) == 1:
        lo = hi = nums[0] or 0
    else:
        lo, hi = nums[0] or 0, nums[1] if nums[1] is not None else _TTL_MAX
    if lo > hi:
        raise bad
    return lo, hi


def _regex(node: Node, replacement: str | None = None) -> str:
    text = node.string()
    try:
        rx = go_regex(text)
    except ValueError as e:
        raise node.error(str(e), show=False) from None
    if replacement is not None and group_refs(replacement) > rx.groups:
        raise node.error(f"a regexp with as many groups as {replacement!r} uses ({{1}}, {{2}}...)")
    return text


def _answer_rules(node: Node) -> tuple[bool, tuple[AnswerRule, ...]]:
    if isinstance(node.value, str):
        node.value = [node.value]
    auto = False
    rules = []
    for item in node.items():
        if item.value == "auto":
            auto = True
            continue
        if not isinstance(item.value, dict) or len(item.value) != 1:
            raise item.error('"auto", {name: [FROM, TO]} or {value: [FROM, TO]}')
        kind = next(iter(item.value))
        pair = item.get(str(kind))
        if kind not in ("name", "value") or not isinstance(pair.value, list) or len(pair.value) != 2:
            raise item.error('"auto", {name: [FROM, TO]} or {value: [FROM, TO]}')
        frm, to = list(pair.items())
        target = fqdn(to.string())
        rules.append(AnswerRule(str(kind), _regex(frm, target), target))
    if auto and any(r.kind == "name" for r in rules):
        raise node.error("answer auto or answer name rules, not both (CoreDNS refuses the mix)")
    return auto, tuple(rules)


def _parse_rule(item: Node) -> RewriteRule:
    if isinstance(item.value, str):
        try:
            item.value = rule_from_words(item.value.split())
        except ValueError as e:
            raise item.error(str(e)) from None
    item.mapping({"mode", *FIELDS})
    stop = item.get("mode", "stop").choice(("stop", "continue")) == "stop"
    kinds = [k for k in FIELDS if item.has(k)]
    if len(kinds) != 1:
        raise item.error("exactly one of name, type, class, ttl (and mode)")
    kind = kinds[0]
    body = item.get(kind)
    if kind in ("type", "class"):
        body.mapping({"from", "to"})
        table = TYPES if kind == "type" else CLASSES
        names = []
        for key in ("from", "to"):
            n = body.get(key)
            if not isinstance(n.value, str) or n.value.upper() not in table:
                raise n.error(f"a DNS {kind} name such as {'A, AAAA, ANY' if kind == 'type' else 'IN, CH'}")
            names.append(n.value.upper())
        return RewriteRule(kind, "exact", names[0], names[1], stop=stop)
    body.mapping({"match", "from", "to", "answer"} if kind == "name" else {"match", "from", "ttl"})
    match = body.get("match", "exact").choice(MATCHES)
    if kind == "ttl":
        src = _regex(body.get("from")) if match == "regex" else fqdn(body.get("from").string())
        return RewriteRule("ttl", match, src, ttl=_ttl_range(body.get("ttl")), stop=stop)
    target = fqdn(body.get("to").string())
    src = _regex(body.get("from"), target) if match == "regex" else fqdn(body.get("from").string())
    auto, answers = _answer_rules(body.get("answer")) if body.has("answer") else (False, ())
    return RewriteRule("name", match, src, target, stop=stop, auto=auto or match == "exact", answers=answers)


def parse_rewrite_config(node: Node) -> tuple[RewriteRule, ...]:
    """Validate a block's ``rewrite`` value: a list of rules, each a mapping (``{name: {match:
    suffix, from: .a., to: .b., answer: auto}, mode: continue}``, ``{type: {from: ANY, to:
    HINFO}}``, ``{ttl: {from: example.com, ttl: 30-300}}``) or CoreDNS's words as one string
    (``"continue name suffix .a. .b. answer auto"``)."""
    if isinstance(node.value, (str, dict)):
        node.value = [node.value]
    rules = tuple(_parse_rule(item) for item in node.items())
    if not rules:
        raise node.error("one or more rewrite rules")
    return rules


# -- answers changed back ----------------------------------------------------------------------
Rename = Callable[[str], str]


def _remap(orig: str, back: str) -> Rename:
    """``orig`` or a name below it → ``back`` (CoreDNS's remapStringRewriter, case-blind)."""
    low = orig.lower()

    def fn(src: str) -> str:
        s = src.lower()
        if s == low:
            return back
        i = len(s) - len(low)
        if i > 0 and s[i - 1] == "." and s[i:] == low:
            return src[:i] + back
        return src
    return fn


def _suffix(suffix: str, back: str) -> Rename:
    low = suffix.lower()

    def fn(src: str) -> str:
        return src[: len(src) - len(low)] + back if src.lower().endswith(low) else src
    return fn


def _regex_rename(rx: re.Pattern[str], replacement: str) -> Rename:
    def fn(src: str) -> str:
        m = rx.search(src)
        return expand_groups(replacement, m) if m is not None else src
    return fn


#: the record value a ``value`` rule renames, by type (CoreDNS's getRecordValueForRewrite)
_VALUE_ATTR = {dns.SRV: "target", dns.MX: "name", dns.CNAME: "name", dns.NS: "name", dns.DNAME: "name",
               dns.NAPTR: "replacement", dns.SOA: "mname", dns.PTR: "name"}


def _text(name: bytes) -> str:
    return name.decode("latin-1") + "." if name else "."


def _wire(text: str) -> bytes:
    return text[:-1].encode("latin-1", "replace") if text.endswith(".") else text.encode("latin-1", "replace")


class _Back:
    """The answer rules of one query, applied to each record last rule first."""

    __slots__ = ("rules",)

    def __init__(self) -> None:
        self.rules: list[tuple[str, Any]] = []  # ("name"|"value", Rename) or ("ttl", (lo, hi))

    def record(self, rr: Any) -> Any:
        name = rr.name.name
        ttl = rr.ttl
        payload = rr.payload
        owner = _text(name)
        for kind, fn in reversed(self.rules):
            if kind == "name":
                owner = fn(owner)
            elif kind == "ttl":
                lo, hi = fn
                ttl = lo if ttl < lo else hi if ttl > hi else ttl
            else:
                attr = _VALUE_ATTR.get(rr.type)
                if attr is None:
                    continue
                value = _text(getattr(payload, attr).name)
                new = fn(value)
                if new != value:
                    payload = copy.copy(payload)
                    setattr(payload, attr, dns.Name(_wire(new)))
        new_name = _wire(owner)
        if new_name == name and ttl == rr.ttl and payload is rr.payload:
            return rr
        return dns.RRHeader(new_name, rr.type, rr.cls, ttl, payload, rr.auth)

    def reply(self, reply: Reply, ttl_rule: bool) -> Reply:
        ans = reply.answer
        fix = self.record
        new = Answer(rcode=ans.rcode, answers=[fix(rr) for rr in ans.answers],
                     authority=[fix(rr) for rr in ans.authority], additional=[fix(rr) for rr in ans.additional],
                     authoritative=ans.authoritative)
        return replace(reply, answer=new, lifetime=0.0 if ttl_rule else reply.lifetime)


# -- the plugin --------------------------------------------------------------------------------
class _Compiled:
    __slots__ = ("answers", "rule", "rx", "src_type")

    def __init__(self, rule: RewriteRule):
        self.rule = rule
        self.rx = go_regex(rule.source) if rule.match == "regex" else None
        self.src_type = 0
        if rule.field == "type":
            self.src_type = TYPES[rule.source]
        elif rule.field == "class":
            self.src_type = CLASSES[rule.source]
        self.answers: list[tuple[str, Rename]] = [(a.kind, _regex_rename(go_regex(a.pattern), a.replacement))
                                                  for a in rule.answers]

    def matches(self, name: str) -> re.Match[str] | bool | None:
        r = self.rule
        src = r.source
        match = r.match
        if match == "exact":
            return name == src
        if match == "prefix":
            return name.startswith(src)
        if match == "suffix":
            return name.endswith(src)
        if match == "substring":
            return src in name
        assert self.rx is not None
        return self.rx.search(name)


class RewritePlugin:
    """See the module docstring: the block's rules, in the order written."""

    name = "rewrite"

    def __init__(self, rules: tuple[RewriteRule, ...]):
        self.rules = [_Compiled(r) for r in rules]

    def serve(self, req: Request, next: Next) -> Result:  # noqa: A002 (CoreDNS's word)
        q = req.q
        name = present(q.qname)  # what the rules match: lower-cased, fully qualified
        shown = _text(q.qname)  # what an answer's names go back to: the client's spelling
        qtype, qclass = q.qtype, q.qclass
        back = _Back()
        done = ttl_rule = False
        renamed: bytes | None = None  # the new name, when a rule renamed the query
        for c in self.rules:
            r = c.rule
            field = r.field
            if field == "name":
                m = c.matches(name)
                if not m:
                    continue
                if r.match == "exact":
                    new = r.target
                elif r.match == "prefix":
                    new = r.target + name[len(r.source):]
                elif r.match == "suffix":
                    new = name[: len(name) - len(r.source)] + r.target
                elif r.match == "substring":
                    new = name.replace(r.source, r.target)
                else:
                    new = expand_groups(r.target, m)  # type: ignore[arg-type]
                wire = parse_name(new)
                if wire is None:
                    return Reply(Answer(rcode=dns.ESERVER, authoritative=False), "", self.name,
                                 error=f"rewrite: invalid name after rewrite: {new}")
                if r.match == "suffix":
                    if r.auto:  # the suffix back; the name itself back to the spelling asked
                        back.rules += [("name", _suffix(r.target, r.source)), ("value", _suffix(r.target, r.source)),
                                       ("name", _remap(new, shown))]
                elif r.auto:
                    back.rules += [("name", _remap(new, shown)), ("value", _remap(new, shown))]
                back.rules += c.answers
                name = shown = new
                renamed = wire
            elif field == "ttl":
                if not c.matches(name):
                    continue
                back.rules.append(("ttl", r.ttl))
                ttl_rule = True
            elif field == "type":
                if qtype != c.src_type:
                    continue
                qtype = TYPES[r.target]
            else:
                if qclass != c.src_type:
                    continue
                qclass = CLASSES[r.target]
            done = True
            if r.stop:
                break
        if not done:
            return next(req)
        if renamed is not None and renamed == q.qname.lower():
            renamed = None
        if renamed is not None or qtype != q.qtype or qclass != q.qclass:
            req = with_question(req, q.qname if renamed is None else renamed, qtype, qclass)
        if not back.rules:
            return next(req)
        return then(next(req), lambda reply: back.reply(reply, ttl_rule))


def with_question(req: Request, qname: bytes, qtype: int, qclass: int) -> Request:
    """``req`` asking ``qname`` ``qtype`` ``qclass`` instead: what the plugins after a rewrite see
    (and a template's CNAME target is looked up with).  The server still encodes the answer with
    the client's own question."""
    labels = qname.split(b".") if qname else []
    qname_wire = b"".join(bytes([len(lab)]) + lab for lab in labels) + b"\x00"
    q = req.q._replace(qname=qname, qname_wire=qname_wire, qtype=qtype, qclass=qclass)
    question = qname_wire + qtype.to_bytes(2, "big") + qclass.to_bytes(2, "big")
    return replace(req, q=q, question=question, lname=qname.decode("ascii", "replace").lower())
