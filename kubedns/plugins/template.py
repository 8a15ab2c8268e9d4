"""The ``template`` plugin: answers made from the query by templates, as CoreDNS's.

The two things people add it to a cluster's Corefile for: NODATA at once for AAAA in an
IPv4-only cluster (``template IN AAAA . { rcode NOERROR }``, no upstream round trip), and
NXDOMAIN at once for the search-path expansions of external names (``template IN ANY
com.default.svc.cluster.local { rcode NXDOMAIN }``).  The semantics are CoreDNS's
``ServeDNS``:

- the block's ``template`` lines form one plugin; a name in none of their zones goes on;
- each template in turn: outside its zones, or another class or type (``ANY`` matches every one,
  and a query for ``ANY`` every template), it is skipped; otherwise its ``match`` regexps (``.*``
  when none) are tried on the query name lower-cased with a trailing dot, the first that matches
  answering; when none does, the query goes to the next template if ``fallthrough`` covers the
  name, and is SERVFAIL otherwise;
- the answer: authoritative, the template's ``rcode`` (NOERROR by default), its ``answer``,
  ``additional`` and ``authority`` records rendered with the Go-template fields ``.Name``,
  ``.Zone``, ``.Class``, ``.Type``, ``.Match``, ``.Group``, ``.Remote`` and ``.Regex``
  (:mod:`kubedns.plugins.gotext`); ``rcode SERVFAIL`` answers a bare SERVFAIL; a template that
  fails or renders something that is not a record is SERVFAIL with the reason (``errors``);
- an A or AAAA query answered with a CNAME also gets the target's records, looked up through
  the block's chain from the top (CoreDNS's ``upstream``, which asks the whole server), at most
  8 templated CNAMEs deep;
- after the last template, the next plugin.

A templated answer depends only on the query, so it may be pre-encoded on the fast path
(the fast path is dropped on every reload) unless a record uses ``.Remote``; with a CNAME
followed, only as long as the target's answer may be.  ``ederror CODE [REASON]`` adds an Extended DNS
Error option (RFC 8914) to the answer of a client that sent EDNS.  Not done here: CoreDNS's
``var``/``expr`` expressions are refused when the config is read.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.names import dns

from kubedns.configbase import Node
from kubedns.dns.query import Request
from kubedns.dns.records import Answer
from kubedns.plugins.base import Next, Reply, Result, then
from kubedns.plugins.gotext import (
    CLASSES,
    TYPES,
    GoTemplate,
    TemplateError,
    class_name,
    go_regex,
    parse_rr,
    present,
    type_name,
)

__all__ = ["RCODES", "TemplateConfig", "TemplatePlugin", "parse_template_config"]

#: miekg/dns's ``StringToRcode`` for the rcodes a header carries (4 bits)
RCODES = {"NOERROR": 0, "FORMERR": 1, "SERVFAIL": 2, "NXDOMAIN": 3, "NOTIMP": 4, "REFUSED": 5,
          "YXDOMAIN": 6, "YXRRSET": 7, "NXRRSET": 8, "NOTAUTH": 9, "NOTZONE": 10}
_ANY = 255
_CHASE = (dns.A, dns.AAAA)
MAX_CHASE = 8  # templated CNAMEs followed within one query
MAX_PARSED = 512  # rendered record texts kept read (per plugin): a record made from .Zone is read once
_KEYS = {"class", "type", "zones", "match", "answer", "additional", "authority", "rcode", "fallthrough", "ederror"}
EDE = 15  # the EDNS option code of an Extended DNS Error (RFC 8914)


@dataclass(frozen=True, slots=True)
class TemplateConfig:
    """One ``template CLASS TYPE [ZONE...] { ... }`` of a server block."""

    qclass: int  # 255: ANY
    qtype: int  # 255: ANY
    zones: tuple[str, ...] = ()  # empty: the block's zones
    match: tuple[str, ...] = ()  # regexps; empty: ".*"
    answer: tuple[str, ...] = ()
    additional: tuple[str, ...] = ()
    authority: tuple[str, ...] = ()
    rcode: int = 0
    #: zones whose names no regexp matches go to the next template ("" = every name); empty: none
    fallthrough: tuple[str, ...] = ()
    ederror: tuple[int, str] | None = None  # Extended DNS Error: INFO-CODE, EXTRA-TEXT


def _texts(node: Node, what: str, check: Callable[[str], Any]) -> tuple[str, ...]:
    if node.value is None:
        return ()
    if isinstance(node.value, str):
        node.value = [node.value]
    out = []
    for item in node.items():
        text = item.string()
        try:
            check(text)
        except ValueError as e:
            raise item.error(f"{what} ({e})") from None
        out.append(text)
    return tuple(out)


def _check_record(text: str) -> None:
    t = GoTemplate(text)
    if all(isinstance(p, str) for p in t.parts):  # no action: the record itself can be read now
        parse_rr(text)


def _name_code(node: Node, table: dict[str, int], what: str) -> int:
    v = node.value
    if isinstance(v, str) and v.upper() in table:
        return table[v.upper()]
    raise node.error(f"{what} ({', '.join(sorted(table))})")


def parse_template_config(node: Node) -> tuple[TemplateConfig, ...]:
    """Validate a block's ``template`` value: a list of mappings (one mapping is a list of one)
    with the keys of :class:`TemplateConfig`, spelt as in the Corefile (``class: IN``,
    ``type: AAAA``, ``rcode: NXDOMAIN``, ``fallthrough: true`` or zones)."""
    if isinstance(node.value, dict):
        node.value = [node.value]
    out = []
    for item in node.items():
        item.mapping(_KEYS)
        qclass = _name_code(item.get("class"), CLASSES, "a query class")
        qtype = _name_code(item.get("type"), TYPES, "a query type such as A, AAAA or ANY")
        zones = item.get("zones", []).zones(allow_empty=True)
        match = _texts(item.get("match", None), "a regular expression", go_regex)
        sections = {s: _texts(item.get(s, None), "a record template such as '{{ .Name }} 60 IN A 192.0.2.1'",
                              _check_record) for s in ("answer", "additional", "authority")}
        rcode = _name_code(item.get("rcode", "NOERROR"), RCODES, "a response code")
        ft = item.get("fallthrough", False)
        if ft.value is True:
            fallthrough: tuple[str, ...] = ("",)
        elif ft.value is False or ft.value is None:
            fallthrough = ()
        else:
            fallthrough = ft.zones(allow_empty=True) or ("",)
        ede = _ederror(item.get("ederror")) if item.has("ederror") else None
        out.append(TemplateConfig(qclass, qtype, zones, match, sections["answer"], sections["additional"],
                                  sections["authority"], rcode, fallthrough, ede))
    if not out:
        raise node.error("one or more templates")
    return tuple(out)


def _ederror(node: Node) -> tuple[int, str]:
    """``ederror: 21``, or ``{code: 21, reason: "Blocked"}`` (CoreDNS's ``ederror CODE [REASON]``)."""
    if not isinstance(node.value, dict):
        node = Node({"code": node.value}, node.path, node.key)
    node.mapping({"code", "reason"})
    reason = node.get("reason", "").string(allow_empty=True)
    if len(reason.encode("utf-8")) > 1000:
        raise node.get("reason").error("a reason of at most 1000 bytes")
    return node.get("code").integer(0, 65535), reason


def _zone_of(zones: tuple[str, ...], lname: str) -> str | None:
    """The longest of ``zones`` holding ``lname`` (``""`` is the root), or None."""
    best: str | None = None
    for z in zones:
        if (z == "" or lname == z or lname.endswith("." + z)) and (best is None or len(z) > len(best)):
            best = z
    return best


class _Template:
    """One template, compiled: regexps and record templates."""

    __slots__ = ("authority", "additional", "answer", "config", "ede", "fallthrough", "qclass", "qtype", "regex",
                 "remote", "zones")

    def __init__(self, config: TemplateConfig, block_zones: tuple[str, ...]):
        self.config = config
        self.zones = config.zones or block_zones
        self.qclass = config.qclass
        self.qtype = config.qtype
        self.fallthrough = config.fallthrough
        self.regex: list[re.Pattern[str]] = [go_regex(p) for p in config.match] or [re.compile(".*")]
        self.answer = [GoTemplate(t) for t in config.answer]
        self.additional = [GoTemplate(t) for t in config.additional]
        self.authority = [GoTemplate(t) for t in config.authority]
        self.remote = any(t.remote for t in (*self.answer, *self.additional, *self.authority))
        self.ede = b""  # the EDNS option bytes of ``ederror``
        if config.ederror is not None:
            code, reason = config.ederror
            text = reason.encode("utf-8")
            self.ede = struct.pack("!HHH", EDE, 2 + len(text), code) + text

    def falls(self, lname: str) -> bool:
        return _zone_of(self.fallthrough, lname) is not None


class TemplatePlugin:
    """See the module docstring: the block's templates, in the order written."""

    name = "template"

    def __init__(self, configs: tuple[TemplateConfig, ...], block_zones: tuple[str, ...]):
        self.templates = [_Template(c, block_zones) for c in configs]
        self.zones = tuple(dict.fromkeys(z for t in self.templates for z in t.zones))
        self._depth = 0  # CNAME lookups under way (a lookup starts synchronously, so this bounds it)
        #: rendered text → record (records are never changed once made: rewrite makes new ones)
        self._parsed: dict[str, dns.RRHeader] = {}

    def serve(self, req: Request, next: Next) -> Result:  # noqa: A002 (CoreDNS's word)
        lname = req.lname
        if _zone_of(self.zones, lname) is None:
            return next(req)
        q = req.q
        name = present(q.qname)
        for t in self.templates:
            zone = _zone_of(t.zones, lname)
            if zone is None:
                continue
            if t.qclass != _ANY and q.qclass != _ANY and q.qclass != t.qclass:
                continue
            if t.qtype != _ANY and q.qtype != _ANY and q.qtype != t.qtype:
                continue
            for rx in t.regex:
                m = rx.search(name)
                if m is not None:
                    return self._answer(req, t, zone, name, rx, m)
            if not t.falls(lname):
                return Reply(Answer(rcode=dns.ESERVER, authoritative=False), zone, self.name,
                             error=f"template: {name} matches no regexp of the template and no fallthrough")
        return next(req)

    def _answer(self, req: Request, t: _Template, zone: str, name: str, rx: re.Pattern[str],
                m: re.Match[str]) -> Result:
        if t.config.rcode == dns.ESERVER:
            return Reply(Answer(rcode=dns.ESERVER, authoritative=False), zone, self.name)
        q = req.q
        groups = [g or "" for g in (m.group(0), *m.groups())]
        group = {str(i): g for i, g in enumerate(groups)}
        for gname, gi in rx.groupindex.items():
            group[gname] = groups[gi]
        peer = req.peer
        data = {
            "Name": name,
            "Zone": zone + "." if zone else ".",
            "Class": class_name(q.qclass if q.qclass != _ANY else t.qclass),
            "Type": type_name(q.qtype if q.qtype != _ANY else t.qtype),
            "Match": groups,
            "Group": group,
            "Remote": str(peer[0]) if isinstance(peer, tuple) and peer else "",
            "Regex": rx.pattern,
        }
        sections: list[list[Any]] = [[], [], []]
        parsed = self._parsed
        for out, section, templates in zip(sections, ("answer", "additional", "authority"),
                                           (t.answer, t.additional, t.authority), strict=True):
            for tmpl in templates:
                try:
                    text = tmpl.render(data)
                    rr = parsed.get(text)
                    if rr is None:
                        rr = parse_rr(text)
                        if len(parsed) >= MAX_PARSED:
                            parsed.clear()
                        parsed[text] = rr
                    out.append(rr)
                except (TemplateError, ValueError) as e:
                    return Reply(Answer(rcode=dns.ESERVER, authoritative=False), zone, self.name,
                                 error=f"template: {section} {tmpl.text!r}: {e}")
        ans = Answer(rcode=t.config.rcode, answers=sections[0], additional=sections[1], authority=sections[2])
        # depends on no store: a store change leaves it (an SOA in it still counts as depending on all)
        reply = Reply(ans, zone, self.name, cacheable=not t.remote, deps=(), edns_options=t.ede)
        if q.qtype in _CHASE and req.block is not None and self._depth < MAX_CHASE:
            for rr in sections[0]:
                if rr.type == dns.CNAME:
                    return self._chase(req, reply, rr.payload.name.name)
        return reply

    def _chase(self, req: Request, reply: Reply, target: bytes) -> Result:
        """``reply`` with the records the block answers ``target`` with appended (its rcode and
        sections otherwise kept); kept on the fast path only as long as that answer may be."""
        from kubedns.plugins.rewrite import with_question

        block = req.block
        assert block is not None
        sub = with_question(req, target, req.q.qtype, dns.IN)
        self._depth += 1
        try:
            result = block.serve(sub)
        finally:
            self._depth -= 1

        def merge(up: Reply) -> Reply:
            ans = reply.answer
            merged = Answer(rcode=ans.rcode, answers=[*ans.answers, *up.answer.answers], authority=ans.authority,
                            additional=ans.additional, authoritative=ans.authoritative)
            keep = reply.cacheable and (up.cacheable or up.lifetime > 0)
            return Reply(merged, reply.zone, self.name, cacheable=keep and up.cacheable,
                         lifetime=up.lifetime if keep and not up.cacheable else 0.0,
                         deps=up.deps,  # what the target's answer depends on (kubedns.dns.depends)
                         edns_options=reply.edns_options)

        return then(result, merge)
