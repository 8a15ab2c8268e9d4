"""``kubedns explain``: the queries a Pod's stub resolver sends for one name, and why it stops.

DNS trouble in Kubernetes is mostly the stub's search-list walk ("works with the FQDN, not the
short name", "ten queries for google.com", "NXDOMAIN from Alpine"), so this module replays that
walk against a running server, query by query, with the rules of the two C libraries Pods use:

glibc (``resolv/res_query.c``, ``__res_context_search``; getaddrinfo sends A and AAAA together
and waits for both, ``single-request`` off):

* a name with a trailing dot is sent once, as is, and that is the end;
* with ``dots >= ndots`` the name is sent as is first; an answer ends the walk;
* then (the name has no trailing dot) each search domain in turn.  A pair is an *answer* when
  either reply is NOERROR with at least one answer record (a CNAME counts); otherwise its
  outcome comes from the A reply's rcode, or the AAAA reply's when A's is NOERROR: NXDOMAIN and
  NODATA go on to the next domain (NODATA too: "a wildcard of another type could keep us from
  finding this entry higher up"), SERVFAIL goes on when the A reply is SERVFAIL, anything else
  (REFUSED, FORMERR, NOTIMP, a SERVFAIL for AAAA only) stops the search list;
* last, the name as is, unless it was tried first or "." is in the search list.
* no reply at all ends the walk here (glibc gives up on a refused port at once; after a timeout
  it would still try the name as is, with the same server, after ``timeout`` x ``attempts``).

musl (``src/network/lookup_name.c``, ``name_from_dns_search`` and ``name_from_dns``):

* a trailing dot or ``dots >= ndots``: the name as is, once, no search list at all;
* else each search domain, then the name as is.  The replies are read A first: SERVFAIL or no
  reply stops the walk (EAI_AGAIN), NXDOMAIN goes on to the next name, another error stops it
  (EAI_FAIL); when both are NOERROR the walk stops there, with addresses or without (NODATA
  stops musl, unlike glibc; a CNAME without an address of the type is NODATA).

Which plugin answered each query is told by the server itself: the query carries the EDNS
option :data:`EXPLAIN_OPTION` (empty), and :func:`annotate` (called by the server's ``_finish``)
adds the same option to the answer holding ``plugin=NAME zone=ZONE``.  It is answered only to
clients on loopback (``kubectl exec`` into the server's Pod) or by a block with ``debug``; such
answers are never kept on the fast path (so each explained query is really answered by the
chain, and its time is the chain's), and the option is never forwarded upstream.  The query
log knows the plugin too, but reading it needs access to the server's output and a way to match
lines to queries; an EDNS option answers on the same socket, for this query only, and costs the
other queries a look for an OPT record with options, and a byte search of those.

The network side (:func:`ask`) uses blocking sockets and sends only to the ``--server`` given.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import random
import select
import socket
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from twisted.names import dns

if TYPE_CHECKING:
    from kubedns.dns.query import Request
    from kubedns.plugins.base import Reply

__all__ = [
    "EXPLAIN_OPTION",
    "EXPLAIN_OPTION_BYTES",
    "Reply1",
    "Step",
    "Walk",
    "annotate",
    "ask",
    "alternatives",
    "memo",
    "walk",
]

#: The EDNS option code (in the local/experimental range 65001-65534, RFC 6891 §9) a query
#: carries to ask which plugin answered it, and the answer carries with the plugin's name.
EXPLAIN_OPTION = 65401
#: The option as it appears in a query (code, zero length): what the server looks for first.
EXPLAIN_OPTION_BYTES = struct.pack("!HH", EXPLAIN_OPTION, 0)

RCODES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}


# -- the server side -----------------------------------------------------------------------------


def _asked(req: Request) -> bool:
    """Whether the query's OPT record holds :data:`EXPLAIN_OPTION` (options walked exactly)."""
    from kubedns.dns.wire import query_edns_options

    rdata = query_edns_options(req.packet, req.q)
    pos, n = 0, len(rdata)
    while pos + 4 <= n:
        code, length = struct.unpack_from("!HH", rdata, pos)
        if code == EXPLAIN_OPTION:
            return True
        pos += 4 + length
    return False


def _loopback(peer: Any) -> bool:
    host = peer[0] if isinstance(peer, tuple) and peer else peer
    try:
        addr = ipaddress.ip_address(str(host).split("%", 1)[0])
    except ValueError:
        return False
    mapped = getattr(addr, "ipv4_mapped", None)
    return bool(addr.is_loopback or (mapped is not None and mapped.is_loopback))


def annotate(req: Request, reply: Reply) -> Reply:
    """``reply`` with the explain option added when the query asked for it and may be told
    (a loopback client, or a block with ``debug``).  A reply to a query that asked is never kept
    on the fast path, told or not: its key (the query's bytes) does not hold the client's address,
    so one kept for a client not told would be served without the option to one that is.
    The server calls this only for EDNS queries holding :data:`EXPLAIN_OPTION_BYTES`."""
    if not _asked(req):
        return reply
    block = req.block
    if not (_loopback(req.peer) or (block is not None and block.config.debug)):
        return dataclasses.replace(reply, cacheable=False, lifetime=0.0)
    zone = reply.zone or (block.zones[0] if block is not None else "")
    text = f"plugin={reply.plugin} zone={zone or '.'}".encode("ascii", "replace")
    option = struct.pack("!HH", EXPLAIN_OPTION, len(text)) + text
    return dataclasses.replace(reply, edns_options=reply.edns_options + option, cacheable=False, lifetime=0.0)


# -- one query against the server ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reply1:
    """One query the stub sends and what came back (``rcode`` "TIMEOUT" when nothing did)."""

    name: str  # fully qualified, with the final dot
    qtype: str  # "A" | "AAAA"
    rcode: str
    answers: tuple[str, ...] = ()  # "name TTL TYPE data" per answer record
    ancount: int = 0
    addresses: int = 0  # A/AAAA records of the asked type (musl counts these)
    ttl: int | None = None  # lowest answer TTL, or the negative TTL (RFC 2308) from the SOA
    plugin: str | None = None  # None: the server did not say (not kubedns, or not allowed)
    zone: str | None = None
    ms: float = 0.0
    tcp: bool = False  # truncated over UDP, asked again over TCP as the stub does

    @property
    def positive(self) -> bool:
        return self.rcode == "NOERROR" and self.ancount > 0


@dataclass(frozen=True, slots=True)
class Step:
    """One name of the walk: its queries (A and AAAA together) and what the stub makes of them."""

    name: str
    why: str  # "as is" | "search domain D"
    replies: tuple[Reply1, ...]
    outcome: str  # answer | NXDOMAIN | NODATA | SERVFAIL | error
    goes_on: bool  # the stub tries the next name after this one


@dataclass(slots=True)
class Walk:
    name: str
    stub: str
    ndots: int
    search: tuple[str, ...]
    steps: list[Step] = field(default_factory=list)
    stop: str = ""  # where and why the walk ended

    @property
    def queries(self) -> int:
        return sum(len(s.replies) for s in self.steps)

    @property
    def answered(self) -> Step | None:
        last = self.steps[-1] if self.steps else None
        return last if last is not None and last.outcome == "answer" else None


Ask = Callable[[str, Sequence[str]], tuple[Reply1, ...]]


def _query_bytes(qid: int, name: str, qtype: str) -> bytes:
    m = dns.Message(id=qid, recDes=1)
    m.queries = [dns.Query(name.rstrip(".").encode("idna") if not name.isascii() else name.rstrip(".").encode(),
                           getattr(dns, qtype))]
    raw = m.toStr()
    # OPT: UDP size 512 (the size a stub without edns0 gets), our option, nothing else
    opt = b"\x00" + struct.pack("!HHIH", dns.OPT, 512, 0, len(EXPLAIN_OPTION_BYTES)) + EXPLAIN_OPTION_BYTES
    return raw[:10] + struct.pack("!H", 1) + raw[12:] + opt


def _record_text(rr: dns.RRHeader) -> str:
    payload: Any = rr.payload
    if rr.type in (dns.A, dns.AAAA):
        data = payload.dottedQuad() if rr.type == dns.A else socket.inet_ntop(socket.AF_INET6, payload.address)
    elif hasattr(payload, "name") and rr.type in (dns.CNAME, dns.PTR, dns.NS):
        data = f"{payload.name}."
    else:
        data = " ".join(str(payload).strip("<>").split()[1:]) or str(payload)
    return f"{rr.name}. {rr.ttl} {dns.QUERY_TYPES.get(rr.type, rr.type)} {data}"


def _parse(name: str, qtype: str, raw: bytes, ms: float, tcp: bool) -> Reply1:
    m = dns.Message()
    m.fromStr(raw)
    plugin = zone = None
    for rr in m.additional:
        if rr.type != dns.OPT:
            continue
        data: bytes = getattr(rr.payload, "data", b"")
        pos = 0
        while pos + 4 <= len(data):
            code, length = struct.unpack_from("!HH", data, pos)
            if code == EXPLAIN_OPTION:
                fields = dict(kv.split("=", 1) for kv in data[pos + 4 : pos + 4 + length].decode(
                    "ascii", "replace").split() if "=" in kv)
                plugin, zone = fields.get("plugin", ""), fields.get("zone")
            pos += 4 + length
    want = getattr(dns, qtype)
    ttl: int | None = min((rr.ttl for rr in m.answers), default=None)
    if ttl is None:
        soa = next((rr for rr in m.authority if rr.type == dns.SOA), None)
        if soa is not None:
            ttl = min(soa.ttl, int(getattr(soa.payload, "minimum", soa.ttl)))
    return Reply1(name=name, qtype=qtype, rcode=RCODES.get(m.rCode, str(m.rCode)),
                  answers=tuple(_record_text(rr) for rr in m.answers), ancount=len(m.answers),
                  addresses=sum(1 for rr in m.answers if rr.type == want), ttl=ttl, plugin=plugin, zone=zone,
                  ms=ms, tcp=tcp)


def _tcp(server: tuple[str, int], packet: bytes, timeout: float) -> bytes:
    family = socket.AF_INET6 if ":" in server[0] else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(server)
        s.sendall(struct.pack("!H", len(packet)) + packet)
        head = _recv_exact(s, 2)
        return _recv_exact(s, struct.unpack("!H", head)[0])


def _recv_exact(s: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise OSError("connection closed")
        buf += chunk
    return buf


def ask(server: tuple[str, int], timeout: float = 2.0) -> Ask:
    """A function sending one step's queries (in parallel, one UDP socket, as glibc) to ``server``
    only; a truncated reply is asked again over TCP."""
    family = socket.AF_INET6 if ":" in server[0] else socket.AF_INET

    def send(name: str, qtypes: Sequence[str]) -> tuple[Reply1, ...]:
        out: dict[str, Reply1] = {}
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.connect(server)
            pending: dict[int, tuple[str, bytes, float]] = {}
            for qtype in qtypes:
                qid = random.getrandbits(16)
                while qid in pending:
                    qid = random.getrandbits(16)
                packet = _query_bytes(qid, name, qtype)
                pending[qid] = (qtype, packet, time.perf_counter())
                try:
                    s.send(packet)
                except OSError:  # refused (an ICMP error from the first query): nobody listens
                    break
            deadline = time.monotonic() + timeout
            while pending:
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([s], [], [], left)[0]:
                    break
                try:
                    raw = s.recv(65535)
                except OSError:
                    break
                if len(raw) < 12 or struct.unpack_from("!H", raw)[0] not in pending:
                    continue
                qtype, packet, sent = pending.pop(struct.unpack_from("!H", raw)[0])
                tcp = bool(raw[2] & 0x02)
                if tcp:
                    try:
                        raw = _tcp(server, packet, timeout)
                    except OSError:
                        out[qtype] = Reply1(name, qtype, "TIMEOUT", ms=(time.perf_counter() - sent) * 1000, tcp=True)
                        continue
                out[qtype] = _parse(name, qtype, raw, (time.perf_counter() - sent) * 1000, tcp)
        return tuple(out.get(t) or Reply1(name, t, "TIMEOUT", ms=timeout * 1000) for t in qtypes)

    return send


# -- the walk ------------------------------------------------------------------------------------


def _glibc_outcome(replies: Sequence[Reply1]) -> tuple[str, bool]:
    """(outcome, goes on) of one glibc step, as ``__res_context_query`` and the search loop."""
    if any(r.positive for r in replies):
        return "answer", False
    a = replies[0]
    b = replies[-1]
    if a.rcode == "TIMEOUT" or b.rcode == "TIMEOUT":
        return "no reply", False
    rcode = b.rcode if a.rcode == "NOERROR" else a.rcode
    if rcode == "NXDOMAIN":
        return "NXDOMAIN", True
    if rcode == "NOERROR":
        return "NODATA", True
    if rcode == "SERVFAIL":
        return "SERVFAIL", a.rcode == "SERVFAIL"
    return rcode, False


def _musl_outcome(replies: Sequence[Reply1]) -> tuple[str, bool]:
    """(outcome, goes on) of one musl step, as ``name_from_dns``: the replies in order."""
    for r in replies:
        if r.rcode in ("SERVFAIL", "TIMEOUT"):
            return ("no reply" if r.rcode == "TIMEOUT" else "SERVFAIL"), False
        if r.rcode == "NXDOMAIN":
            return "NXDOMAIN", True
        if r.rcode != "NOERROR":
            return r.rcode, False
    if any(r.addresses for r in replies):
        return "answer", False
    return "NODATA", False


def walk(name: str, search: Sequence[str], ndots: int, send: Ask, *, musl: bool = False,
         qtypes: Sequence[str] = ("A", "AAAA")) -> Walk:
    """Replay the stub's walk for ``name`` (see the module docstring), sending through ``send``."""
    search = tuple(d.strip(".") for d in search)
    w = Walk(name=name, stub="musl" if musl else "glibc", ndots=ndots, search=search)
    trailing = name.endswith(".")
    bare = name.rstrip(".")
    dots = name.count(".")
    outcome_of = _musl_outcome if musl else _glibc_outcome

    def step(fqdn: str, why: str) -> Step:
        replies = send(fqdn, qtypes)
        outcome, goes_on = outcome_of(replies)
        s = Step(fqdn, why, replies, outcome, goes_on)
        w.steps.append(s)
        return s

    def done(s: Step, why: str) -> Walk:
        w.stop = f"{s.name} ({s.why}): {why}"
        return w

    def silent(s: Step) -> bool:
        return s.outcome == "no reply"

    first_as_is = trailing or dots >= ndots
    if musl:
        if first_as_is:
            s = step(bare + ".", "as is")
            return done(s, _stop_text(s, "the name is sent once, as is (a trailing dot or dots >= ndots): "
                                         "musl has no search list for it"))
        for d in search:
            s = step(f"{bare}.{d}." if d else f"{bare}.", f"search domain {d or '.'}")
            if not s.goes_on:
                return done(s, _stop_text(s, "musl stops at the first name that is not NXDOMAIN"))
        s = step(bare + ".", "as is, after the search list")
        return done(s, _stop_text(s, "the last name to try"))

    tried_as_is = root_on_list = False
    if first_as_is:
        s = step(bare + ".", "as is")
        if s.outcome == "answer" or silent(s):
            return done(s, _stop_text(s, "the name has dots >= ndots, so it is tried as is first"))
        if trailing:
            return done(s, _stop_text(s, "a trailing dot: the name is tried once, as is"))
        tried_as_is = True
    for d in search:
        root_on_list = root_on_list or not d
        s = step(f"{bare}.{d}." if d else f"{bare}.", f"search domain {d or '.'}")
        if s.outcome == "answer":
            return done(s, _stop_text(s, "the first name with an answer ends the walk"))
        if silent(s):
            return done(s, _stop_text(s, "the server is not answering"))
        if not s.goes_on:
            break
    if not (tried_as_is or root_on_list):
        s = step(bare + ".", "as is, after the search list")
        return done(s, _stop_text(s, "the last name to try"))
    last = w.steps[-1]
    if last.goes_on:
        return done(last, "the search list is done and the name was already tried as is: the lookup fails")
    return done(last, _stop_text(last, "glibc stops the search list here"))


def _stop_text(s: Step, why: str) -> str:
    if s.outcome == "answer":
        return f"an answer; {why}"
    if s.outcome == "NXDOMAIN":
        return f"NXDOMAIN; {why}; the lookup fails (the name does not exist)"
    if s.outcome == "NODATA":
        return f"NODATA (the name exists, without records of the type asked); {why}; no address"
    if s.outcome == "no reply":
        return f"no reply within the timeout; {why}; the lookup fails (EAI_AGAIN) after the stub's retries"
    return f"{s.outcome}; {why}; the lookup fails"


# -- what would change it ------------------------------------------------------------------------


def memo(send: Ask) -> Ask:
    """``send`` asking the server once per (name, types): the alternatives below reuse replies."""
    seen: dict[tuple[str, tuple[str, ...]], tuple[Reply1, ...]] = {}

    def cached(name: str, qtypes: Sequence[str]) -> tuple[Reply1, ...]:
        key = (name.lower(), tuple(qtypes))
        if key not in seen:
            seen[key] = send(name, qtypes)
        return seen[key]

    return cached


def _result(w: Walk) -> str:
    s = w.answered
    return f"answered by {s.name}" if s is not None else (w.steps[-1].outcome if w.steps else "nothing sent")


def alternatives(w: Walk, send: Ask, *, qtypes: Sequence[str] = ("A", "AAAA"),
                 autopath: bool | None = None) -> list[str]:
    """What would change the walk ``w``: a trailing dot, ``ndots``, autopath, the other libc.
    ``autopath``: whether the server's block has it (None: unknown, no config given)."""
    out: list[str] = []
    musl = w.stub == "musl"
    name, bare = w.name, w.name.rstrip(".")
    dots = name.count(".")
    answered = w.answered
    if answered is not None and len(w.steps) > 1:
        alt = walk(answered.name, w.search, w.ndots, send, musl=musl, qtypes=qtypes)
        out.append(f"a trailing dot: '{answered.name}' (the name that answered, fully qualified) is sent once, "
                   f"as is: {alt.queries} queries instead of {w.queries}")
    elif not name.endswith(".") and answered is None and len(w.steps) > 1:
        alt = walk(bare + ".", w.search, w.ndots, send, musl=musl, qtypes=qtypes)
        out.append(f"a trailing dot: '{bare}.' is sent once, as is: {alt.queries} queries, {_result(alt)}")
    if not name.endswith(".") and 0 < dots < w.ndots:
        alt = walk(name, w.search, dots, send, musl=musl, qtypes=qtypes)
        out.append(f"ndots:{dots} (the Pod's dnsConfig options) sends '{bare}.' first: {alt.queries} queries "
                   f"instead of {w.queries}, {_result(alt)}")
    elif not name.endswith(".") and dots >= w.ndots and dots and w.search:
        alt = walk(name, w.search, dots + 1, send, musl=musl, qtypes=qtypes)
        out.append(f"ndots:{dots + 1} would try the search list first: {alt.queries} queries, {_result(alt)}")
    by_autopath = [r for s in w.steps for r in s.replies if r.plugin == "autopath"]
    searched = [s for s in w.steps if s.why.startswith("search") and s.outcome != "answer"]
    if by_autopath:
        out.append(f"autopath answered {by_autopath[0].name} for the whole search list: the walk ended "
                   f"after {w.queries} queries")
    elif answered is not None and searched:
        gain = (f"answers the first search-list query from a Pod with a CNAME to {answered.name} and its "
                f"records: {len(qtypes)} queries instead of {w.queries}")
        if autopath:
            out.append(f"the server's block has autopath: it {gain} (it knows a Pod by its source IP; "
                       f"these queries are not a Pod's, so they were walked as without it)")
        elif autopath is None:
            out.append(f"autopath (`autopath @kubernetes` in the server block) {gain} (it knows the Pod by its "
                       f"source IP: a query from here is not a Pod's)")
        else:
            out.append(f"autopath is not in the server's block: with `autopath @kubernetes` it {gain}")
    last = w.steps[-1] if w.steps else None
    if musl and last is not None and last.outcome in ("NODATA", "SERVFAIL") and last.why.startswith("search"):
        out.append(f"glibc goes on past {last.outcome} from a search domain; musl stops there")
    if not musl and any(s.outcome == "NODATA" and s.goes_on for s in w.steps):
        out.append("musl would stop at the first NODATA; glibc goes on to the next name")
    return out
