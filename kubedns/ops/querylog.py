"""Query logging (``log:``) and error logging (``errors:``), as CoreDNS's *log* and *errors* plugins.

Both are :class:`~kubedns.serve.server.Dispatcher` observers: they receive a
:class:`~kubedns.dns.query.QueryInfo` per query answered on the slow path.  Which block a query
belongs to is decided again here from the dispatcher's *current* blocks, so a reload that adds or
removes ``log``/``errors`` in a block takes effect at once, and a dispatcher shared by several
blocks logs only the queries of the blocks that ask for it.

``log`` must see every query, so the fast path (pre-encoded answers, not observed) is switched off
on a dispatcher where a block has ``log`` (:attr:`QueryLog.needs_every_query`); CoreDNS also warns
that query logging costs throughput.  The default format is CoreDNS's Common Log Format::

    {remote}:{port} - {>id} "{type} {class} {name} {proto} {size} {>do} {>bufsize}" {rcode} {>rflags} {rsize} {duration}

e.g. ``127.0.0.1:50759 - 29008 "A IN example.org. udp 41 false 4096" NOERROR qr,rd,ra 68 0.000237s``,
logged through twistd's log like every other line.  ``log: {format: json}`` writes the same
fields as exactly one JSON object per line straight to the process's stdout, without twistd's
``<timestamp> [namespace#level]`` prefix, so container log pipelines can parse every line
(:func:`json_line`).  twistd's own log writes to that same stream object under ``twistd -n``
(the way it runs in a container and under systemd), so lines never interleave mid-line; with
``--logfile`` the JSON lines still go to stdout.  (With ``workers: N``, a worker's stdout is
relayed by worker 0, which passes lines starting with ``{`` through bare; see kubedns.serve.workers.)

As CoreDNS's ``log [NAMES...] [FORMAT] { class CLASSES... }``: only names in ``names`` are
logged (every name of the block without), only answers of the given classes (CoreDNS's
``response.Classify``: *success*, *denial* for NXDOMAIN and NODATA, *error* for the rest, see
:func:`response_class`), and a ``format`` other than ``common``/``json`` is CoreDNS's
replacer: ``combined`` (Common plus ``"{>opcode}"``) or any text with its placeholders
(:data:`_PLACEHOLDERS`, :func:`compile_format`), ``{/log/class}`` and ``{/log/type}`` included.

``errors`` only looks at failures (SERVFAIL), so the fast path can stay on: SERVFAIL answers are
never pre-encoded.  A line is ``plugin/errors: {rcode} {name} {type}: {error}`` as in CoreDNS.
With CoreDNS's ``consolidate DURATION REGEXP [LEVEL] [show_first]`` lines (``rules``), the first
rule whose regexp (Python's ``re``, which reads the usual RE2 patterns alike) matches the error
text counts it: the first of a window starts it (logged at once with ``show_first``), later ones
are only counted, and when DURATION is over one line at LEVEL says ``N errors like 'REGEXP'
occurred in last 5m0s``; an error no rule matches is logged as it comes.  Without rules (bare
``errors``, or ``consolidate: 10s``, kubedns's own default) repeats are consolidated per pattern
(server, zone, rcode, error text): the first occurrence is logged at once, later ones during the
next ``consolidate`` seconds only counted, and at the end of the window one line says ``N errors
like '...' occurred in last 10s``; the window keeps rolling while errors keep coming, and closes
after a quiet one.  Our error texts are our own (``forward: no upstream answered (...)``), not Go's
(``read udp ...: i/o timeout``): a REGEXP written for CoreDNS's may need adapting.
"""

from __future__ import annotations

import json
import sys
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from twisted.logger import Logger

from kubedns.dns.query import QueryInfo
from kubedns.ops.counters import rcode_name
from kubedns.ops.logconfig import COMBINED_FORMAT, COMMON_FORMAT, ConsolidateRule

if TYPE_CHECKING:
    from kubedns.serve.server import Block, Dispatcher

__all__ = ["ErrorLog", "QueryLog", "common_line", "format_duration", "json_line", "query_fields"]

_TYPES = {
    1: "A", 2: "NS", 5: "CNAME", 6: "SOA", 12: "PTR", 13: "HINFO", 15: "MX", 16: "TXT", 28: "AAAA",
    33: "SRV", 35: "NAPTR", 39: "DNAME", 41: "OPT", 43: "DS", 46: "RRSIG", 47: "NSEC", 48: "DNSKEY",
    50: "NSEC3", 52: "TLSA", 64: "SVCB", 65: "HTTPS", 99: "SPF", 251: "IXFR", 252: "AXFR", 255: "ANY",
    257: "CAA",
}
_CLASSES = {1: "IN", 3: "CH", 4: "HS", 254: "NONE", 255: "ANY"}
#: header flag bits in CoreDNS's ``{>rflags}`` order
_FLAGS = (("qr", 0x8000), ("aa", 0x0400), ("tc", 0x0200), ("rd", 0x0100), ("ra", 0x0080), ("z", 0x0040),
          ("ad", 0x0020), ("cd", 0x0010))
SERVFAIL = 2


def _type_name(qtype: int) -> str:
    return _TYPES.get(qtype) or f"TYPE{qtype}"


def _class_name(qclass: int) -> str:
    return _CLASSES.get(qclass) or f"CLASS{qclass}"


def _rflags(flags: int) -> str:
    return ",".join(name for name, bit in _FLAGS if flags & bit)


def _qname(info: QueryInfo) -> str:
    """Lower-cased with a closing dot, as CoreDNS's ``{name}``."""
    name = info.qname.decode("ascii", "backslashreplace").lower()
    return name if name.endswith(".") else name + "."


def _remote(peer: Any) -> tuple[str, int]:
    try:
        host, port = peer[0], int(peer[1])
    except (TypeError, IndexError, ValueError):
        return ("-", 0)
    return (f"[{host}]" if ":" in host else host, port)


def _bufsize(info: QueryInfo) -> int:
    """CoreDNS's ``{>bufsize}``: 64K over TCP, else the EDNS0 size advertised (at least 512)."""
    if info.proto == "tcp":
        return 65535
    return max(512, int(info.bufsize))


def format_duration(seconds: float) -> str:
    """Go's ``strconv.FormatFloat(s, 'f', -1, 64) + "s"`` of a nanosecond duration: ``0.000123s``."""
    return format(Decimal(repr(round(float(seconds), 9))).normalize(), "f") + "s"


def common_line(info: QueryInfo) -> str:
    """One query in CoreDNS's Common Log Format."""
    host, port = _remote(info.peer)
    return (
        f'{host}:{port} - {info.qid} "{_type_name(info.qtype)} {_class_name(info.qclass)} {_qname(info)} '
        f'{info.proto} {info.request_size} {"true" if info.do else "false"} {_bufsize(info)}" '
        f"{rcode_name(info.rcode)} {_rflags(info.flags)} {info.response_size} {format_duration(info.duration)}"
    )


def query_fields(info: QueryInfo) -> dict[str, Any]:
    """The Common Log Format's fields by placeholder name, plus the server and zone."""
    host, port = _remote(info.peer)
    return {
        "remote": host.strip("[]"),
        "port": port,
        "id": info.qid,
        "type": _type_name(info.qtype),
        "class": _class_name(info.qclass),
        "name": _qname(info),
        "proto": info.proto,
        "size": info.request_size,
        "do": bool(info.do),
        "bufsize": _bufsize(info),
        "rcode": rcode_name(info.rcode),
        "rflags": _rflags(info.flags),
        "rsize": info.response_size,
        "duration": round(info.duration, 9),
        "server": info.server,
        "zone": (info.zone + ".") if info.zone else ".",
    }


def json_line(info: QueryInfo) -> str:
    return json.dumps(query_fields(info), separators=(",", ":"))


# -- CoreDNS's response classes and custom formats ----------------------------------------------

_AXFR, _IXFR, _NOTIFY, _UPDATE = 252, 251, 4, 5


def response_type(info: QueryInfo) -> str:
    """CoreDNS's ``response.Typify`` of the answer: NOERROR, NXDOMAIN, NODATA, SERVERERROR, META,
    UPDATE or OTHERERROR (a delegation, NOERROR without records or SOA, is NOERROR here)."""
    if info.opcode == _UPDATE:
        return "UPDATE"
    if info.opcode == _NOTIFY or info.qtype in (_AXFR, _IXFR):
        return "META"
    rcode = info.rcode
    if info.answers:
        return "NOERROR" if rcode == 0 else ("OTHERERROR" if rcode == 3 else _no_answer_type(info))
    return _no_answer_type(info)


def _no_answer_type(info: QueryInfo) -> str:
    rcode = info.rcode
    if info.soa and rcode == 0:
        return "NODATA"
    if rcode == 3:
        return "NXDOMAIN"
    if rcode in (2, 4):  # SERVFAIL, NOTIMP
        return "SERVERERROR"
    return "NOERROR" if rcode == 0 else "OTHERERROR"


def response_class(info: QueryInfo) -> str:
    """CoreDNS's ``response.Classify``: success, denial (NXDOMAIN or NODATA) or error."""
    t = response_type(info)
    if t == "NOERROR":
        return "success"
    if t in ("NXDOMAIN", "NODATA"):
        return "denial"
    return "error"


def _rcode_text(info: QueryInfo) -> str:
    name = rcode_name(info.rcode)
    return str(info.rcode) if name.startswith("RCODE") else name


def _local(info: QueryInfo) -> str:
    """{local}: the address the server listens on (a wildcard listen shows 0.0.0.0 or [::])."""
    host = info.server.split("://", 1)[-1].rsplit(":", 1)[0]
    if not host:
        return "0.0.0.0"  # CoreDNS's label for the wildcard address ("dns://:53")
    return host if host.startswith("[") or ":" not in host else f"[{host}]"


#: CoreDNS's placeholders (plugin/pkg/replacer) → their value for one answered query
_PLACEHOLDERS: dict[str, Any] = {
    "{type}": lambda i: _type_name(i.qtype),
    "{name}": _qname,
    "{class}": lambda i: _class_name(i.qclass),
    "{proto}": lambda i: i.proto,
    "{size}": lambda i: str(i.request_size),
    "{remote}": lambda i: _remote(i.peer)[0],
    "{port}": lambda i: str(_remote(i.peer)[1]),
    "{local}": _local,
    "{>id}": lambda i: str(i.qid),
    "{>opcode}": lambda i: str(i.opcode),
    "{>do}": lambda i: "true" if i.do else "false",
    "{>bufsize}": lambda i: str(_bufsize(i)),
    "{rcode}": _rcode_text,
    "{rsize}": lambda i: str(i.response_size),
    "{duration}": lambda i: format_duration(i.duration),
    "{>rflags}": lambda i: _rflags(i.flags),
    "{/log/class}": response_class,
    "{/log/type}": response_type,
}


def compile_format(fmt: str) -> list[Any]:
    """A log format as literal strings and placeholder functions, parsed as CoreDNS's replacer
    does: from each ``}`` back to the nearest ``{``; ``{common}``/``{combined}`` expand first; an
    unknown ``{label}`` is literal text, an unknown ``{/metadata}`` label is ``-``."""
    fmt = fmt.replace("{common}", COMMON_FORMAT).replace("{combined}", COMBINED_FORMAT)
    parts: list[Any] = []
    while True:
        j = fmt.find("}")
        if j < 0:
            break
        i = fmt.rfind("{", 0, j)
        label = fmt[i:j + 1] if i >= 0 else ""
        fn = _PLACEHOLDERS.get(label)
        if fn is None and label.startswith("{/"):
            fn = _dash
        if fn is None:
            parts.append(fmt[:j + 1])
        else:
            if i:
                parts.append(fmt[:i])
            parts.append(fn)
        fmt = fmt[j + 1:]
    if fmt:
        parts.append(fmt)
    return parts


def _dash(info: QueryInfo) -> str:
    return "-"


def format_line(parts: list[Any], info: QueryInfo) -> str:
    return "".join(p if isinstance(p, str) else p(info) for p in parts)


def _route(blocks: list[Block], info: QueryInfo) -> Block | None:
    """The block the dispatcher sent this query to: the longest zone holding the name."""
    if len(blocks) == 1:
        b = blocks[0]
        return b if b.covers(_lname(info)) >= 0 else None
    lname = _lname(info)
    best, best_len = None, -1
    for b in blocks:
        n = b.covers(lname)
        if n > best_len:
            best, best_len = b, n
    return best


def _lname(info: QueryInfo) -> str:
    return info.qname.decode("ascii", "replace").lower().rstrip(".")


def _in_zones(name: str, zones: tuple[str, ...]) -> bool:
    return any(not z or name == z or name.endswith("." + z) for z in zones)


class QueryLog:
    """``log:`` for the blocks of one dispatcher; a Dispatcher observer."""

    #: the fast path is not observed: a dispatcher with query logging must not use it
    needs_every_query = True

    def __init__(self, dispatcher: Dispatcher, logger: Logger | None = None, stream: Any = None):
        self.dispatcher = dispatcher
        self.log = logger or Logger(namespace="kubedns.ops.querylog")
        #: where ``format: json`` lines go; None: the process's real stdout, looked up per line
        #: (twistd points ``sys.stdout`` at its logger, ``sys.__stdout__`` stays the real one)
        self.stream = stream
        self._formats: dict[str, list[Any]] = {}  # a custom format → its compiled parts

    def __call__(self, info: QueryInfo) -> None:
        block = _route(self.dispatcher.blocks, info)
        if block is None:
            return
        cfg = block.config.log
        if cfg is None:
            return
        if cfg.names and not _in_zones(_lname(info), cfg.names):
            return
        if len(cfg.classes) < 3 and response_class(info) not in cfg.classes:
            return
        fmt = cfg.format
        if fmt == "json":
            self._write_json(json_line(info))
        elif fmt == "common":
            self.log.info("{line}", line=common_line(info))
        else:
            parts = self._formats.get(fmt)
            if parts is None:
                if len(self._formats) >= 64:  # formats come from the config: a reload may bring new ones
                    self._formats.clear()
                parts = self._formats[fmt] = compile_format(COMBINED_FORMAT if fmt == "combined" else fmt)
            self.log.info("{line}", line=format_line(parts, info))


    def _write_json(self, line: str) -> None:
        out = self.stream if self.stream is not None else sys.__stdout__
        if out is None:  # no stdout at all (pythonw, closed fd 1): keep the line in the log
            self.log.info("{json}", json=line)
            return
        try:
            out.write(line + "\n")
            out.flush()  # one line at a time, as twistd's own observer does
        except (OSError, ValueError):  # stdout closed or gone (EPIPE): never fail a query for it
            pass


class ErrorLog:
    """``errors:`` for the blocks of one dispatcher: failures, consolidated; a Dispatcher observer."""

    needs_every_query = False

    def __init__(self, dispatcher: Dispatcher, reactor: Any = None, logger: Logger | None = None):
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self.dispatcher = dispatcher
        self.reactor = reactor
        self.log = logger or Logger(namespace="kubedns.errors")
        #: pattern → [repeats in this window, window seconds, example "name type", DelayedCall]
        self._windows: dict[tuple[Any, ...], list[Any]] = {}

    #: open consolidation windows at most (error texts name upstreams and failures, not clients'
    #: names, so a few exist; this is the bound should an error text ever vary per query)
    max_windows = 256

    def __call__(self, info: QueryInfo) -> None:
        error = info.error
        if info.rcode != SERVFAIL and not error:
            return  # the common case: one comparison
        block = _route(self.dispatcher.blocks, info)
        if block is None or block.config.errors is None:
            return
        text = error or _explain(block, info)
        example = f"{_qname(info)} {_type_name(info.qtype)}"
        rules = block.config.errors.rules
        if rules:
            self._by_rule(info, block, rules, example, text)
            return
        window = block.config.errors.consolidate
        if window <= 0:
            self._emit(info.rcode, example, text)
            return
        key = (info.server, info.zone, info.rcode, text)
        w = self._windows.get(key)
        if w is not None:
            w[0] += 1
            w[2] = example
            return
        self._emit(info.rcode, example, text)
        if len(self._windows) >= self.max_windows:
            return  # bounded memory: an unusual pattern past the cap is logged, not consolidated
        self._windows[key] = [0, window, example, self.reactor.callLater(window, self._close, key)]

    def _emit(self, rcode: int, example: str, text: str, level: str = "error") -> None:
        self._at(level)("plugin/errors: {rcode} {query}: {error}", rcode=rcode, query=example, error=text)

    def _at(self, level: str) -> Any:
        return {"warning": self.log.warn, "info": self.log.info, "debug": self.log.debug}.get(level, self.log.error)

    # -- CoreDNS's consolidate DURATION REGEXP [LEVEL] [show_first] --------------------------------
    def _by_rule(self, info: QueryInfo, block: Block, rules: tuple[ConsolidateRule, ...], example: str,
                 text: str) -> None:
        """As CoreDNS: the first rule whose REGEXP matches the error text counts it; the first of
        a window starts the window (and is logged at the rule's level with show_first); when the
        window ends one line says how many there were.  An error no rule matches is logged."""
        for i, rule in enumerate(rules):
            if not rule.pattern.search(text):
                continue
            key = ("rule", info.server, block.zones, i)
            w = self._windows.get(key)
            if w is not None:
                w[0] += 1
                return
            if rule.show_first:
                self._emit(info.rcode, example, text, rule.level)
            if len(self._windows) >= self.max_windows:
                return
            self._windows[key] = [1, rule, None, self.reactor.callLater(rule.duration, self._close_rule, key)]
            return
        self._emit(info.rcode, example, text)

    def _close_rule(self, key: tuple[Any, ...]) -> None:
        w = self._windows.pop(key, None)
        if w is not None:
            self._rule_summary(w)

    def _rule_summary(self, w: list[Any]) -> None:
        n, rule = w[0], w[1]
        if n > 1 or (n == 1 and not rule.show_first):
            self._at(rule.level)("plugin/errors: {n} errors like '{regexp}' occurred in last {window}",
                                 n=n, regexp=rule.regexp, window=go_duration(rule.duration))

    def _close(self, key: tuple[Any, ...]) -> None:
        w = self._windows.get(key)
        if w is None:
            return
        if w[0] == 0:
            del self._windows[key]  # a quiet window: the next error is logged at once
            return
        self._summary(key, w)
        w[0] = 0
        w[3] = self.reactor.callLater(w[1], self._close, key)

    def _summary(self, key: tuple[Any, ...], w: list[Any]) -> None:
        _server, zone, rcode, text = key
        self.log.error(
            "plugin/errors: {n} errors like '{rcode} <name> <type>: {error}' occurred in last {window}s"
            " (zone {zone}, last {example})",
            n=w[0], rcode=rcode, error=text, window=f"{w[1]:g}", zone=(zone + ".") if zone else ".", example=w[2],
        )

    def flush(self) -> None:
        """Write the pending summaries and cancel the timers (at shutdown)."""
        windows, self._windows = self._windows, {}
        for key, w in windows.items():
            if w[3] is not None and w[3].active():
                w[3].cancel()
            if key[0] == "rule":
                self._rule_summary(w)
            elif w[0]:
                self._summary(key, w)


def go_duration(seconds: float) -> str:
    """Go's ``time.Duration.String()``: ``500ms``, ``30s``, ``5m0s``, ``1h30m0s``, ``1.5s``."""
    ns = round(seconds * 1e9)
    if ns == 0:
        return "0s"
    if ns < 1000:
        return f"{ns}ns"
    if ns < 1_000_000:
        return f"{ns / 1e3:g}µs"
    if ns < 1_000_000_000:
        return f"{ns / 1e6:g}ms"
    h, rest = divmod(ns, 3600 * 10**9)
    m, rest = divmod(rest, 60 * 10**9)
    whole, frac = divmod(rest, 10**9)
    secs = f"{whole}.{frac:09d}".rstrip("0") if frac else str(whole)
    return (f"{h}h" if h else "") + (f"{m}m" if h or m else "") + f"{secs}s"


def _explain(block: Block, info: QueryInfo) -> str:
    """Why a SERVFAIL happened, from what the block can tell us (when QueryInfo.error is empty)."""
    lname = _lname(info)
    clusters = block.clusters
    if clusters is not None and clusters.zone_of(lname) is not None:
        store = clusters.store
        if not store.synced:
            return "kubernetes: not synced yet (waiting for " + ", ".join(store.missing_kinds()) + ")"
        return "kubernetes: SERVFAIL"
    chain = block.chain
    if chain is not None:
        if chain.loop_detected:
            return "forward: disabled, a forwarding loop was detected"
        return "forward: no upstream answered, or an upstream answered SERVFAIL"
    if block.loop is not None:
        return "loop: forwarding loop probe"
    return rcode_name(info.rcode)
