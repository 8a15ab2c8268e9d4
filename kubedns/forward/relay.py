"""A forwarded answer as bytes, end to end: the upstream query built from the client's packet, the
upstream's answer kept as it came (one walk over it, :func:`kubedns.dns.walk.walk_answer`), and the
client's reply made from those bytes with the client's ID, question and OPT.

Why: a forwarded cache miss used to build a query Message, decode the upstream's answer into
twisted.names objects, copy them into the cache, and encode them again for the client: about a
third of a miss's CPU, for records nobody looked at.  Here nothing is decoded unless a plugin asks
for the records (``Reply.answer`` of a relayed reply is a :class:`LazyAnswer`, decoded on first
use; a plugin that changes it makes a new Answer, and the server then encodes as before).

What the client gets is byte for byte what the decoding code sent (tests/test_relay_bytes.py):
the upstream's records as it encoded them after the client's question (the upstream echoes the
question we sent, which is the client's, so names compressed against it read the same), the
header from the client's ID, opcode, RD and CD with RA, the upstream's AA and AD and the rcode,
and our OPT (our payload size, the client's DO, the extended rcode, the upstream's options but
the per-hop ones) when the client sent one; cut at a record boundary, TC set as
:func:`kubedns.dns.wire.encode_response` sets it.  When the question the bytes carry is not the
client's exactly (a cache hit asked in another case: names pointing into the question would read
in the new case), the server decodes and encodes as before.

An answer not of the plain shape (:func:`walk_answer` says None: an OPT not last, trailing bytes,
no question, a malformed name inside a record's data...) is decoded once as before and encoded
again into that shape (its ext rcode and options kept), then relayed like any other; one that does
not decode fails the try, as before (the client gets SERVFAIL).
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from twisted.names import dns

from kubedns.dns.records import Answer
from kubedns.dns.walk import AnswerWalk, walk_answer
from kubedns.dns.wire import Edns, encode_response, query_edns_options
from kubedns.forward.decode import decode_message
from kubedns.forward.message import (
    ECS,
    EDNS_UDP_SIZE,
    Expect,
    answer_options,
    decode_response,
    encode_name,
    option_data,
    options_record,
    relay_options,
)

if TYPE_CHECKING:
    from kubedns.dns.query import Request

__all__ = ["ForwardQuery", "LazyAnswer", "Relayed", "client_reply", "message_query", "query_from_message", "query_from_request",
           "relayable", "relayed_from_message", "relayed_from_upstream"]

_HEADER = struct.Struct("!HHHHHH")
_OPT_FIXED = struct.Struct("!BHHIH")
_DO = 0x8000


class ForwardQuery:
    """One question to forward: the upstream query (ID 0, patched per try), what its answer must
    echo, the in-flight de-duplication key and the cache key, all from the client's parsed fields."""

    __slots__ = ("template", "expect", "key", "cache_key", "name")

    def __init__(self, template: bytes, expect: Expect, key: tuple, cache_key: tuple, name: bytes) -> None:
        self.template = template
        self.expect = expect
        self.key = key
        self.cache_key = cache_key
        self.name = name


def _build(question: bytes, qend_name: int, lname: bytes, qtype: int, qclass: int, flags: int, do: bool,
           options: bytes, name: bytes) -> ForwardQuery:
    rd = bool(flags & 0x0100)
    cd = bool(flags & 0x0010)
    ad = bool(flags & 0x0020)
    header = _HEADER.pack(0, flags & 0x0130, 1, 0, 0, 1)
    opt = _OPT_FIXED.pack(0, dns.OPT, EDNS_UDP_SIZE, _DO if do else 0, len(options)) + options
    template = header + question + opt
    expect = Expect(question[:qend_name].lower(), question[qend_name:])
    ecs = (option_data(options, ECS) or b"") if options else b""
    return ForwardQuery(template, expect, (lname, qtype, qclass, do, cd, rd, ad, options),
                        (lname, qtype, qclass, do, cd, ad, ecs), name)


def query_from_request(req: Request) -> ForwardQuery:
    """The upstream query for a client's: its question as sent (case kept), RD, CD and AD, and an
    OPT with our UDP size, the client's DO and its options but the per-hop ones (the client's own
    records, a TSIG or a NOTIFY's SOA, are never forwarded)."""
    q = req.q
    edns = req.edns
    if edns is not None:
        do = edns.do
        options = relay_options(query_edns_options(req.packet, q))
    else:
        do = False
        options = b""
    question = req.question
    return _build(question, len(q.qname_wire), q.qname.lower(), q.qtype, q.qclass, q.flags, do, options, q.qname)


def query_from_message(query: dns.Message) -> ForwardQuery:
    """:func:`query_from_request` for a question built as a Message (a CNAME chase, ``template``'s
    upstream, a prefetch); ValueError for a name that cannot be encoded."""
    from kubedns.forward.message import client_edns

    q = query.queries[0]
    name = q.name.name
    rd, cd, do, ad, options = client_edns(query)
    wire_name = encode_name(name)
    flags = (0x0100 if rd else 0) | (0x0010 if cd else 0) | (0x0020 if ad else 0)
    question = wire_name + struct.pack("!HH", q.type, q.cls)
    return _build(question, len(wire_name), name.lower(), q.type, q.cls, flags, do, options, name)


def message_query(fq: ForwardQuery) -> dns.Message:
    """``fq``'s upstream query as a Message (for forwarders that take Messages, e.g. tests' fakes)."""
    m = dns.Message()
    m.fromStr(fq.template)
    return m


class Relayed:
    """An upstream's answer as bytes, with its walk.

    ``wire`` is a whole message: as it came on a miss, or the cache's copy (the OPT left out,
    TTLs rewritten) on a hit.  ``options`` are the EDNS options to relay back (per-hop ones
    dropped; a hit's are the ones the cache keeps), ``cache_ttl`` the TTL the cache stored it for
    (None when it did not).
    """

    __slots__ = ("wire", "walk", "options", "cache_ttl")

    def __init__(self, wire: bytes, walk: AnswerWalk, options: bytes, cache_ttl: int | None = None) -> None:
        self.wire = wire
        self.walk = walk
        self.options = options
        self.cache_ttl = cache_ttl

    @property
    def rcode(self) -> int:
        return self.walk.rcode

    @property
    def aa(self) -> bool:
        return bool(self.wire[2] & 0x04)

    @property
    def ad(self) -> bool:
        return bool(self.wire[3] & 0x20)

    @property
    def truncated(self) -> bool:
        return bool(self.wire[2] & 0x02)

    def with_ttl(self, ttl: int, cache_ttl: int | None = None) -> Relayed:
        """A copy with every record's TTL set to ``ttl``."""
        buf = bytearray(self.wire)
        raw = ttl.to_bytes(4, "big")
        for off in self.walk.ttls:
            buf[off : off + 4] = raw
        return Relayed(bytes(buf), self.walk, self.options, cache_ttl)

    def message(self) -> dns.Message:
        """The answer as :func:`kubedns.forward.message.decode_response` gives it (a new Message:
        extended rcode folded in, the OPT holding only the options to relay)."""
        m = decode_response(self.wire)
        m.rCode = self.walk.rcode
        m.additional = [rr for rr in m.additional if rr.type != dns.OPT]
        if self.options:
            m.additional.append(options_record(self.options))
        return m


def relayed_from_upstream(data: bytes, qend: int = 0) -> Relayed:
    """An upstream's answer; ValueError when it does not decode (the try then failed).  ``qend``:
    where its question ends, when already checked (see :func:`walk_answer`)."""
    walk = walk_answer(data, qend)
    if walk is None:
        return relayed_from_message(decode_response(data))  # ValueError if undecodable
    opt = walk.opt
    return Relayed(data, walk, relay_options(opt) if opt else b"")


def relayed_from_message(m: dns.Message) -> Relayed:
    """A Message (an odd upstream answer decoded, or one built by hand) encoded into the plain shape
    :func:`walk_answer` reads: its question, sections, flags, extended rcode and options kept."""
    if m.queries:
        q = m.queries[0]
        question = encode_name(q.name.name) + struct.pack("!HH", q.type, q.cls)
        qname = q.name.name
    else:
        question = b"\x00" + struct.pack("!HH", dns.A, dns.IN)  # keeps the one-question shape
        qname = b""
    options = answer_options(m)
    wire = encode_response(qid=m.id, opcode=m.opCode, rd=bool(m.recDes),
                           cd=bool(getattr(m, "checkingDisabled", 0)), ra=bool(m.recAv), aa=bool(m.auth),
                           ad=bool(getattr(m, "authenticData", 0)), rcode=m.rCode, question=question, qname=qname,
                           answers=m.answers, authority=m.authority,
                           additional=[rr for rr in m.additional if rr.type != dns.OPT],
                           edns=Edns(EDNS_UDP_SIZE, 0, False), limit=65535, edns_options=options)
    if m.trunc:
        wire = wire[:2] + bytes([wire[2] | 0x02]) + wire[3:]
    walk = walk_answer(wire)
    if walk is None:  # cannot happen for what encode_response writes; say so rather than relay garbage
        raise ValueError("answer does not re-encode")
    return Relayed(wire, walk, relay_options(walk.opt) if walk.opt else b"")


class LazyAnswer(Answer):
    """The :class:`Answer` of a relayed reply: rcode and AA at once, the records decoded from the
    bytes on first use (a plugin that looks at them; the server relays the bytes otherwise).

    It points at its Relayed, never the other way round: no reference cycle per query for the
    garbage collector to find."""

    __slots__ = ("relayed", "_sections")

    def __init__(self, relayed: Relayed) -> None:  # no Answer.__init__: the sections are properties
        self.relayed = relayed
        self._sections: tuple[list, list, list] | None = None
        self.rcode = relayed.walk.rcode
        self.authoritative = relayed.aa

    def _decode(self) -> tuple[list, list, list]:
        s = self._sections
        if s is None:
            m = decode_message(self.relayed.wire)
            s = self._sections = (m.answers, m.authority, [rr for rr in m.additional if rr.type != dns.OPT])
        return s

    @property
    def answers(self) -> list:
        return self._decode()[0]

    @answers.setter
    def answers(self, value: list) -> None:
        self._set(0, value)

    @property
    def authority(self) -> list:
        return self._decode()[1]

    @authority.setter
    def authority(self, value: list) -> None:
        self._set(1, value)

    @property
    def additional(self) -> list:
        return self._decode()[2]

    @additional.setter
    def additional(self, value: list) -> None:
        self._set(2, value)

    def _set(self, i: int, value: list) -> None:
        s = list(self._decode())
        s[i] = value
        self._sections = (s[0], s[1], s[2])
        self.relayed = Relayed(b"", self.relayed.walk, b"")  # changed: never the bytes again

    @property
    def decoded(self) -> bool:
        return self._sections is not None

    def __repr__(self) -> str:
        return f"LazyAnswer(rcode={self.rcode}, records={len(self.relayed.walk.ends)})"


def client_reply(req: Request, r: Relayed, *, ra: bool, ad: bool, aa: bool, rcode: int, options: bytes) -> bytes:
    """The client's answer from ``r``'s bytes; see the module docstring (the caller has checked the
    question ``r`` carries is the client's, byte for byte)."""
    walk = r.walk
    wire = r.wire
    q = req.q
    edns = req.edns
    if edns is not None:
        opt = _OPT_FIXED.pack(0, dns.OPT, EDNS_UDP_SIZE, ((rcode >> 4) & 0xFF) << 24 | (_DO if edns.do else 0),
                              len(options)) + options
    else:
        opt = b""
    an, ns, ar = walk.an, walk.ns, walk.ar
    end = walk.end
    tc = False
    room = req.limit - len(opt)
    if end > room:
        ends = walk.ends
        keep = 0
        for e in ends:
            if e <= room:
                keep += 1
            else:
                break
        end = ends[keep - 1] if keep else walk.qend
        kept = keep
        new = []
        for c in (an, ns, ar):
            take = min(c, kept)
            new.append(take)
            kept -= take
        tc = new[0] < an or new[1] < ns
        an, ns, ar = new
        if walk.qend > room:  # not even the question fits (cannot happen for a client's limit)
            end = 12
    flags = (0x8000 | (q.flags & 0x7800) | (0x0400 if aa else 0) | (0x0200 if tc else 0) | (q.flags & 0x0110)
             | (0x0080 if ra else 0) | (0x0020 if ad else 0) | (rcode & 0xF))
    qd = 1 if end >= walk.qend else 0
    return _HEADER.pack(q.id, flags, qd, an, ns, ar + (1 if opt else 0)) + wire[12:end] + opt


def relayable(req: Request, r: Relayed) -> bool:
    """True when ``r``'s bytes carry the client's question exactly (else decode and encode)."""
    walk = r.walk
    question = req.question
    return len(question) == walk.qend - 12 and r.wire.startswith(question, 12)
