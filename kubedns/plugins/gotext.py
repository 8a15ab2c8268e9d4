"""The text formats CoreDNS's ``rewrite`` and ``template`` read, as Go reads them.

Both plugins are configured in Go's notations, and a Corefile written for CoreDNS must mean the
same here:

- **names in presentation form** (:func:`present`, :func:`parse_name`): what a rule or a
  regexp is matched against is the query name lower-cased and fully qualified, with odd bytes
  escaped (``\\032``), as ``state.Name()`` gives it; a rewritten name is read back the same way
  and refused when it is not a valid name (CoreDNS's ``dns.IsDomainName``);
- **RE2 regexps** (:func:`go_regex`): Python's ``re`` reads the common RE2 syntax alike; the
  one spelling it lacks, ``(?<name>...)``, is translated, and patterns are bounded at 10000
  characters as CoreDNS bounds them.  Unlike RE2, ``re`` backtracks: a pathological pattern
  costs CPU per query name (at most 255 characters), so it is the operator's to avoid;
- **Go text/template** (:class:`GoTemplate`): the part of it CoreDNS's template examples use,
  ``{{ .Name }}``, ``{{ .Group.a }}``, ``{{ index .Match 1 }}``, ``{{ index .Group "a" }}``,
  ``{{ parseInt .Group.b 16 8 }}``, string and number literals, comments and ``{{-``/``-}}``
  trimming.  Anything else (``if``, ``range``, pipelines, variables, ``.Meta``, ``.Var``) is
  refused when the config is read, naming what is supported;
- **RFC 1035 record text** (:func:`parse_rr`): ``NAME [TTL] [CLASS] TYPE RDATA`` as miekg/dns's
  ``NewRR`` reads it (TTL 3600 and class IN by default, names relative to the root, parentheses
  and ``;`` comments) for A, AAAA, CNAME, DNAME, NS, PTR, MX, SRV, TXT, SPF, HINFO and SOA.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping
from typing import Any

from twisted.names import dns

__all__ = [
    "CLASSES",
    "MAX_REGEX",
    "TYPES",
    "GoTemplate",
    "TemplateError",
    "go_regex",
    "parse_name",
    "parse_rr",
    "present",
]

MAX_REGEX = 10000
#: CoreDNS's ``dns.StringToType`` for the types a query or a record here may have
TYPES: dict[str, int] = {name: num for num, name in dns.QUERY_TYPES.items() if name not in ("OPT", "TKEY", "TSIG")}
TYPES.update({"IXFR": 251, "AXFR": 252, "ANY": 255, "CAA": 257, "HTTPS": 65, "SVCB": 64, "DS": 43,
              "DNSKEY": 48, "RRSIG": 46, "NSEC": 47, "TLSA": 52})
TYPE_NAMES = {v: k for k, v in TYPES.items()}
CLASSES: dict[str, int] = {"IN": 1, "CS": 2, "CH": 3, "HS": 4, "NONE": 254, "ANY": 255}
CLASS_NAMES = {v: k for k, v in CLASSES.items()}


def type_name(qtype: int) -> str:
    return TYPE_NAMES.get(qtype, f"TYPE{qtype}")


def class_name(qclass: int) -> str:
    return CLASS_NAMES.get(qclass, f"CLASS{qclass}")


# -- names -------------------------------------------------------------------------------------
_PLAIN = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_*/+=!#%&',:<>?[]^`{|}~")


def _present_label(label: bytes) -> str:
    out = []
    for c in label:
        if c in _PLAIN:
            out.append(chr(c))
        elif 0x21 <= c <= 0x7E:  # . \ " ( ) ; @ $ and the like
            out.append("\\" + chr(c))
        else:
            out.append(f"\\{c:03d}")
    return "".join(out)


_PLAIN_NAME = re.compile(rb"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*")
_PLAIN_TEXT = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*\.?")


def present(qname: bytes) -> str:
    """A dotted query name (labels joined by dots, no trailing dot) as ``state.Name()`` gives it:
    lower-cased, fully qualified, odd bytes escaped; the root is ``"."``."""
    if not qname:
        return "."
    if _PLAIN_NAME.fullmatch(qname):  # the usual name: nothing to escape
        return qname.lower().decode("ascii") + "."
    return ".".join(_present_label(lab) for lab in qname.lower().split(b".")) + "."


def parse_name(text: str) -> bytes | None:
    """A name in presentation form as the dotted bytes a query carries (no trailing dot), or None
    when it is not a valid domain name (an empty label, a label over 63 octets, over 255 in all,
    a label holding a dot, which no question here can carry)."""
    if text in (".", ""):
        return b""
    if _PLAIN_TEXT.fullmatch(text):  # the usual name: no escapes
        wire = text.rstrip(".").encode("ascii")
        if len(wire) + 2 > 255 or any(len(lab) > 63 for lab in wire.split(b".")):
            return None
        return wire
    labels: list[bytes] = []
    cur = bytearray()
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch == "\\":
            if i + 3 < n and text[i + 1 : i + 4].isascii() and text[i + 1 : i + 4].isdigit():
                v = int(text[i + 1 : i + 4])
                if v > 255:
                    return None
                cur.append(v)
                i += 4
                continue
            if i + 1 >= n:
                return None
            cur.extend(text[i + 1].encode("utf-8"))
            i += 2
            continue
        if ch == ".":
            if not cur:
                return None
            labels.append(bytes(cur))
            cur = bytearray()
            i += 1
            continue
        try:
            cur.extend(ch.encode("ascii"))
        except UnicodeEncodeError:
            return None
        i += 1
    if cur:
        labels.append(bytes(cur))
    if any(len(lab) > 63 or b"." in lab for lab in labels) or sum(len(lab) + 1 for lab in labels) + 1 > 255:
        return None
    return b".".join(labels)


def fqdn(text: str) -> str:
    """CoreDNS's ``plugin.Name(text).Normalize()``: lower-cased, with a trailing dot."""
    t = text.lower()
    return t if t.endswith(".") and not t.endswith("\\.") else t + "."


# -- regexps -----------------------------------------------------------------------------------
_GO_NAMED = re.compile(r"\(\?<(?=[A-Za-z_])")


def go_regex(pattern: str) -> re.Pattern[str]:
    """An RE2 pattern compiled with ``re``; ValueError with a one-line reason when it is not one."""
    if len(pattern) > MAX_REGEX:
        raise ValueError(f"a regex pattern of at most {MAX_REGEX} characters, got {len(pattern)}")
    try:
        return re.compile(_GO_NAMED.sub("(?P<", pattern), re.ASCII)  # RE2's \d, \w, \s are ASCII
    except re.error as e:
        raise ValueError(f"a valid regular expression, got {pattern!r} ({e})") from None


def expand_groups(replacement: str, m: re.Match[str]) -> str:
    """``{0}``, ``{1}``... in ``replacement`` replaced by ``m``'s groups, as CoreDNS's rewrite does."""
    s = replacement
    for i in range(len(m.groups()) + 1):
        s = s.replace(f"{{{i}}}", m.group(i) or "")
    return s


def group_refs(replacement: str) -> int:
    """How many of ``{0}`` to ``{100}`` ``replacement`` uses (CoreDNS's ``getSubExprUsage``)."""
    return sum(1 for i in range(101) if f"{{{i}}}" in replacement)


# -- Go text/template, the part CoreDNS's templates use -----------------------------------------
class TemplateError(ValueError):
    """A template that cannot run: at config time (syntax) or per query (an index out of range)."""


#: the fields of CoreDNS's templateData kubedns fills in
FIELDS = ("Name", "Zone", "Class", "Type", "Match", "Group", "Remote", "Regex")
_UNSUPPORTED_FIELDS = ("Message", "Question", "Meta", "Var")
_SUPPORTED = ("{{ .Name }}, {{ .Zone }}, {{ .Class }}, {{ .Type }}, {{ .Remote }}, {{ .Regex }}, {{ .Group.NAME }}, "
              "{{ index .Match N }}, {{ index .Group \"NAME\" }}, {{ parseInt ARG BASE BITS }}")
_ACTION = re.compile(r"\{\{(-\s)?(.*?)(\s-)?\}\}", re.S)
_ARG = re.compile(r'\s*("(?:[^"\\]|\\.)*"|`[^`]*`|-?\d+|\.[A-Za-z_][\w.]*|\.|[A-Za-z_]\w*|\S)')
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", '"': '"', "'": "'", "a": "\a", "b": "\b", "f": "\f", "v": "\v"}

Part = Callable[[Mapping[str, Any]], Any]


def _go_string(lit: str) -> str:
    if lit.startswith("`"):
        return lit[1:-1]
    body = lit[1:-1]
    return re.sub(r"\\(x[0-9a-fA-F]{2}|[0-7]{3}|.)",
                  lambda m: chr(int(m.group(1)[1:], 16)) if m.group(1)[0] == "x" else (
                      chr(int(m.group(1), 8)) if m.group(1)[0].isdigit() else _ESCAPES.get(m.group(1), m.group(1))),
                  body)


def _go_print(v: Any) -> str:
    if isinstance(v, list):
        return "[" + " ".join(_go_print(x) for x in v) + "]"
    if isinstance(v, dict):
        return "map[" + " ".join(f"{k}:{_go_print(x)}" for k, x in sorted(v.items())) + "]"
    return str(v)


def _field(path: str) -> Part:
    parts = path[1:].split(".")
    top = parts[0]
    if top in _UNSUPPORTED_FIELDS:
        raise TemplateError(f".{top} is not supported by kubedns (it has {_SUPPORTED})")
    if top not in FIELDS:
        raise TemplateError(f"a field of CoreDNS's template data ({', '.join('.' + f for f in FIELDS)}), got .{top}")
    if len(parts) > 2 or (len(parts) == 2 and top != "Group"):
        raise TemplateError(f"{path}: only .Group has keys (.Group.NAME)")
    if len(parts) == 2:
        key = parts[1]
        return lambda d: d["Group"].get(key, "")
    return lambda d: d[top]


def _operand(tok: str) -> Part:
    if tok.startswith(('"', "`")):
        s = _go_string(tok)
        return lambda d: s
    if tok.lstrip("-").isdigit():
        n = int(tok)
        return lambda d: n
    if tok.startswith("."):
        if tok == ".":
            raise TemplateError("a field such as .Name, not the whole data ('.')")
        return _field(tok)
    raise TemplateError(f"an argument (a field, a string or a number), got {tok!r}")


def _index(args: list[Part]) -> Part:
    if len(args) < 2:
        raise TemplateError("index with a collection and at least one key (index .Match 1)")
    coll, keys = args[0], args[1:]

    def run(d: Mapping[str, Any]) -> Any:
        v = coll(d)
        for k in keys:
            key = k(d)
            if isinstance(v, list):
                if not isinstance(key, int) or not 0 <= key < len(v):
                    raise TemplateError(f"index {key!r} out of range of {len(v)} matches")
                v = v[key]
            elif isinstance(v, dict):
                v = v.get(str(key), "")
            else:
                raise TemplateError(f"index of a {type(v).__name__}")
        return v
    return run


def _parse_int(args: list[Part]) -> Part:
    if len(args) != 3:
        raise TemplateError("parseInt with three arguments: STRING BASE BITS")
    s_fn, base_fn, bits_fn = args

    def run(d: Mapping[str, Any]) -> Any:
        s, base, bits = s_fn(d), base_fn(d), bits_fn(d)
        try:
            v = int(str(s), base)
        except (ValueError, TypeError):
            raise TemplateError(f"parseInt: {s!r} is not a base-{base} number") from None
        if v < 0 or not 0 <= bits <= 64 or v >= 1 << (bits or 64):
            raise TemplateError(f"parseInt: {s!r} out of range for {bits} bits")
        return v
    return run


def _action(text: str) -> Part | None:
    body = text.strip()
    if body.startswith("/*"):
        if not body.endswith("*/"):
            raise TemplateError("a comment closed by */")
        return None
    toks = [m.group(1) for m in _ARG.finditer(body)]
    if not toks:
        raise TemplateError("an action between {{ and }}, got an empty one")
    head = toks[0]
    if head in ("index", "parseInt"):
        args = [_operand(t) for t in toks[1:]]
        return _index(args) if head == "index" else _parse_int(args)
    if len(toks) == 1 or head.startswith("."):
        part = _operand(head)  # an unsupported field is named as such
        if len(toks) == 1:
            return part
    raise TemplateError(f"one of {_SUPPORTED}; {{{{ {body} }}}} is not supported by kubedns")


class GoTemplate:
    """A Go text/template in the subset the module docstring lists, compiled once."""

    __slots__ = ("parts", "remote", "text")

    def __init__(self, text: str):
        self.text = text
        self.parts: list[str | Part] = []
        pos = 0
        trim_next = False
        for m in _ACTION.finditer(text):
            lit = text[pos : m.start()]
            if trim_next:
                lit = lit.lstrip()
            if m.group(1):
                lit = lit.rstrip()
            if lit:
                self.parts.append(lit)
            part = _action(m.group(2))
            if part is not None:
                self.parts.append(part)
            trim_next = bool(m.group(3))
            pos = m.end()
        tail = text[pos:]
        if "{{" in tail:
            raise TemplateError("every {{ closed by }}")
        if trim_next:
            tail = tail.lstrip()
        if tail:
            self.parts.append(tail)
        self.remote = ".Remote" in text

    def render(self, data: Mapping[str, Any]) -> str:
        return "".join(p if isinstance(p, str) else _go_print(p(data)) for p in self.parts)


# -- RFC 1035 record text ----------------------------------------------------------------------
_TOKEN = re.compile(r'\s*(?:;[^\n]*|("(?:[^"\\]|\\.)*")|([()])|((?:[^\s"();\\]|\\.)+))', re.S)
_TTL_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
DEFAULT_TTL = 3600


def _tokens(text: str) -> list[tuple[str, bool]]:
    out: list[tuple[str, bool]] = []
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            raise ValueError(f"unexpected {text[pos:pos + 10]!r}")
        pos = m.end()
        if m.group(1) is not None:
            out.append((_go_string(m.group(1)), True))
        elif m.group(3) is not None:
            out.append((m.group(3), False))
    return out


def _ttl(tok: str) -> int | None:
    if tok.isdigit():
        v = int(tok)
    else:
        parts = re.fullmatch(r"((\d+)[smhdwSMHDW])+", tok)
        if parts is None:
            return None
        v = sum(int(n) * _TTL_UNITS[u.lower()] for n, u in re.findall(r"(\d+)([smhdwSMHDW])", tok))
    return v if v < 1 << 32 else None


def _name(tok: str) -> dns.Name:
    text = tok if tok.endswith(".") and not tok.endswith("\\.") else tok + "."
    if tok == "@":
        text = "."
    wire = parse_name(text)
    if wire is None:
        raise ValueError(f"a domain name, got {tok!r}")
    return dns.Name(wire)


def _u16(tok: str, what: str) -> int:
    if not tok.isdigit() or int(tok) > 65535:
        raise ValueError(f"{what} from 0 to 65535, got {tok!r}")
    return int(tok)


def _u32(tok: str, what: str) -> int:
    v = _ttl(tok)
    if v is None:
        raise ValueError(f"{what} (a number of seconds), got {tok!r}")
    return v


def _rdata(rtype: str, args: list[tuple[str, bool]], ttl: int) -> Any:
    words = [t for t, _ in args]

    def need(n: int, shape: str) -> None:
        if len(words) != n:
            raise ValueError(f"{rtype} {shape}, got {' '.join(words)!r}")

    if rtype in ("A", "AAAA"):
        need(1, "ADDRESS")
        try:
            ip = ipaddress.ip_address(words[0])
        except ValueError:
            ip = None
        if ip is None or ip.version != (4 if rtype == "A" else 6):
            raise ValueError(f"{rtype} an IPv{4 if rtype == 'A' else 6} address, got {words[0]!r}")
        return dns.Record_A(str(ip), ttl) if rtype == "A" else dns.Record_AAAA(str(ip), ttl)
    if rtype in ("CNAME", "DNAME", "NS", "PTR"):
        need(1, "NAME")
        cls = {"CNAME": dns.Record_CNAME, "DNAME": dns.Record_DNAME, "NS": dns.Record_NS, "PTR": dns.Record_PTR}[rtype]
        return cls(_name(words[0]).name, ttl)
    if rtype == "MX":
        need(2, "PREFERENCE NAME")
        return dns.Record_MX(_u16(words[0], "MX preference"), _name(words[1]).name, ttl)
    if rtype == "SRV":
        need(4, "PRIORITY WEIGHT PORT TARGET")
        return dns.Record_SRV(_u16(words[0], "SRV priority"), _u16(words[1], "SRV weight"),
                              _u16(words[2], "SRV port"), _name(words[3]).name, ttl)
    if rtype in ("TXT", "SPF"):
        if not words:
            raise ValueError(f"{rtype} one or more strings")
        data = [w.encode("utf-8") for w in words]
        if any(len(d) > 255 for d in data):
            raise ValueError(f"{rtype} strings of at most 255 bytes")
        return (dns.Record_TXT if rtype == "TXT" else dns.Record_SPF)(*data, ttl=ttl)
    if rtype == "HINFO":
        need(2, "CPU OS")
        cpu, os_ = words[0].encode("utf-8"), words[1].encode("utf-8")
        if len(cpu) > 255 or len(os_) > 255:
            raise ValueError("HINFO strings of at most 255 bytes")
        return dns.Record_HINFO(cpu, os_, ttl)
    if rtype == "SOA":
        need(7, "MNAME RNAME SERIAL REFRESH RETRY EXPIRE MINIMUM")
        serial, refresh, retry, expire, minimum = (
            _u32(w, f"SOA {k}") for w, k in zip(words[2:], ("serial", "refresh", "retry", "expire", "minimum"), strict=True))
        return dns.Record_SOA(_name(words[0]).name, _name(words[1]).name, serial=serial, refresh=refresh, retry=retry,
                              expire=expire, minimum=minimum, ttl=ttl)
    raise ValueError(f"a record type kubedns builds from text (A, AAAA, CNAME, DNAME, NS, PTR, MX, SRV, TXT, SPF, "
                     f"HINFO, SOA), got {rtype!r}")


def parse_rr(text: str) -> dns.RRHeader:
    """One record from ``NAME [TTL] [CLASS] TYPE RDATA`` text (see the module docstring);
    ValueError with a one-line reason otherwise."""
    toks = _tokens(text)
    toks = [(t, q) for t, q in toks if q or t not in ("(", ")")]
    if len(toks) < 3:
        raise ValueError(f"a record 'NAME [TTL] [CLASS] TYPE RDATA', got {text!r}")
    owner = _name(toks[0][0])
    rest = toks[1:]
    ttl: int | None = None
    cls: int | None = None
    for _ in range(2):
        if not rest:
            break
        word = rest[0][0]
        if ttl is None and (word.isdigit() or _ttl(word) is not None and word[0].isdigit()):
            ttl = _ttl(word)
            if ttl is None:
                raise ValueError(f"a TTL below 2^32, got {word!r}")
            rest = rest[1:]
        elif cls is None and word.upper() in CLASSES:
            cls = CLASSES[word.upper()]
            rest = rest[1:]
    if not rest:
        raise ValueError(f"a record type after the name, TTL and class, got {text!r}")
    rtype = rest[0][0].upper()
    if rtype not in TYPES:
        raise ValueError(f"a record type, got {rest[0][0]!r}")
    ttl = DEFAULT_TTL if ttl is None else ttl
    payload = _rdata(rtype, rest[1:], ttl)
    return dns.RRHeader(owner.name, TYPES[rtype], cls or dns.IN, ttl, payload, auth=True)
