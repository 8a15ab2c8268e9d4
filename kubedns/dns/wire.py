"""Bytes-level DNS: read a query's header and question by hand, and encode answers that fit.

Two jobs the stock twisted.names message class does not do for a server:

* **Truncation at record boundaries.**  ``dns.Message.encode`` either never truncates or cuts in
  the middle of a record.  :func:`encode_response` writes the records once, remembers where each
  one ends, and cuts at the last boundary that fits (compression pointers only ever point
  backwards, so a prefix of the records is a valid message).  TC is set only when answer or
  authority records were dropped; dropping additional records alone is not truncation
  (RFC 2181 section 9).
* **EDNS(0).**  The client's OPT record gives its UDP payload size and DO bit; we answer with an
  OPT of our own and, for an unknown EDNS version, BADVERS (RFC 6891).

:func:`parse_question` reads the header and the single question without building objects; it is
what the fast path keys on and what lets a malformed packet get FORMERR with the right ID.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from io import BytesIO
from typing import NamedTuple

from twisted.names import dns

__all__ = [
    "EDNS_UDP_SIZE",
    "Edns",
    "Question",
    "encode_response",
    "error_response",
    "parse_question",
    "query_edns_options",
    "question_compression",
    "read_edns_raw",
    "name_end",
    "record_heads",
    "ttl_fields",
]

#: The UDP payload size we advertise (the 2020 DNS flag day value; avoids IP fragmentation).
EDNS_UDP_SIZE = 1232
#: The most we put in one UDP datagram whatever the client says.
MAX_UDP_SIZE = 65000
#: ``Question.qname`` of a question with a dot inside a label (``nginx\.default``): such a name has
#: no dotted form, is in none of our zones, and would be mangled if forwarded, so it is REFUSED.
DOTTED_LABEL = b"\x00<dot inside a label>"
BADVERS = 16

_HEADER = struct.Struct("!HHHHHH")
_OPT_FIXED = struct.Struct("!BHHIH")  # root name, type, class (size), ttl (flags), rdlength


@dataclass(frozen=True, slots=True)
class Edns:
    """The client's OPT record: UDP payload size, version and the DO bit."""

    udp_size: int
    version: int
    do: bool


class Question(NamedTuple):
    """Header and question of a query, read from the packet without decoding the rest.

    A NamedTuple rather than a frozen dataclass: it is built for every query, and a frozen
    dataclass's ``__init__`` costs several times more.
    """

    id: int
    flags: int
    qdcount: int
    ancount: int
    nscount: int
    arcount: int
    qname_wire: bytes  # the question name exactly as sent (case preserved), uncompressed
    qname: bytes  # dotted form, case preserved
    qtype: int
    qclass: int
    end: int  # offset just past the question

    @property
    def opcode(self) -> int:
        return (self.flags >> 11) & 0xF

    @property
    def is_response(self) -> bool:
        return bool(self.flags & 0x8000)


def parse_question(data: bytes) -> Question | None:
    """Header + first question, or None if the packet is too short or the name is malformed."""
    if len(data) < 12:
        return None
    qid, flags, qd, an, ns, ar = _HEADER.unpack_from(data, 0)
    if qd == 0:
        return Question(qid, flags, qd, an, ns, ar, b"", b"", 0, 0, 12)
    pos = 12
    labels = []
    n = len(data)
    while True:
        if pos >= n:
            return None
        ln = data[pos]
        if ln == 0:
            pos += 1
            break
        if ln & 0xC0:  # compression in a question is legal but rare: leave it to the slow path
            return None
        pos += 1
        if pos + ln > n:
            return None
        labels.append(data[pos : pos + ln])
        pos += ln
        if pos - 12 >= 255:  # with the root byte still to come: over 255 octets (RFC 1035 2.3.4)
            return None
    if pos + 4 > n:
        return None
    qtype, qclass = struct.unpack_from("!HH", data, pos)
    qname = b".".join(labels)
    if qname.count(b".") != len(labels) - 1:
        # a dot inside a label: the dotted form would name something else; flag it instead
        qname = DOTTED_LABEL
    return Question(qid, flags, qd, an, ns, ar, data[12:pos], qname, qtype, qclass, pos + 4)


def read_edns_raw(data: bytes, q: Question) -> tuple[Edns | None, bool] | None:
    """EDNS from the bytes after the question, for the common query shape (no answer/authority
    records, at most one additional which is an OPT).  None means "not that shape": decode fully.
    The second item is False when the OPT is malformed (FORMERR).
    """
    if q.ancount or q.nscount or q.arcount > 1:
        return None
    pos = q.end
    if q.arcount == 0:
        return (None, True) if pos == len(data) else None
    if len(data) < pos + 11 or data[pos] != 0:
        return None
    _, rtype, size, ttl, rdlen = _OPT_FIXED.unpack_from(data, pos)
    if rtype != dns.OPT:
        return None
    if pos + 11 + rdlen != len(data):
        return None, False
    return Edns(udp_size=max(512, size), version=(ttl >> 16) & 0xFF, do=bool(ttl & 0x8000)), True


#: Records a query may carry besides its question, as miekg/dns (CoreDNS) accepts them: one
#: answer (a NOTIFY's SOA), one authority (an IXFR's SOA), two additional (OPT and TSIG).
QUERY_RECORD_LIMITS = (1, 1, 2)
_RR_FIXED = struct.Struct("!HHIH")  # type, class, TTL, rdlength
#: Compression pointers followed for one name before it is called a loop.
_MAX_POINTER_HOPS = 64


def scan_name(buf: bytes, pos: int) -> int | None:
    """Offset just past the name at ``pos``, or None if malformed.

    Malformed: running past the end, a reserved label type, a pointer that does not point
    strictly backwards (which rules out loops), more than 64 pointer hops, or an expanded name
    over 255 octets (RFC 1035 2.3.4).  Checking this before any decoder sees the message keeps
    a crafted name from costing more than a walk over its bytes.
    """
    n = len(buf)
    total = 0
    hops = 0
    end = -1
    while True:
        if pos >= n:
            return None
        ln = buf[pos]
        if ln >= 0xC0:
            if pos + 1 >= n:
                return None
            target = ((ln & 0x3F) << 8) | buf[pos + 1]
            if target >= pos or hops == _MAX_POINTER_HOPS:
                return None
            hops += 1
            if end < 0:
                end = pos + 2
            pos = target
            continue
        if ln & 0xC0:
            return None
        total += ln + 1
        if total > 255:
            return None
        if ln == 0:
            return end if end >= 0 else pos + 1
        pos += 1 + ln


def scan_query_records(data: bytes, q: Question) -> tuple[Edns | None, bool] | None:
    """EDNS of a query with records besides its question, walked by hand; None if malformed.

    For the shapes :func:`read_edns_raw` leaves alone (a NOTIFY's SOA, a TSIG beside the OPT, an
    OPT that is not last...).  More records than :data:`QUERY_RECORD_LIMITS` allows, a bad name
    anywhere, a record running past the end, or an OPT outside the additional section, not
    owned by the root or given twice are malformed (FORMERR); rdata is skipped, not decoded.
    """
    counts = (q.ancount, q.nscount, q.arcount)
    if any(c > lim for c, lim in zip(counts, QUERY_RECORD_LIMITS, strict=True)):
        return None
    pos = q.end
    n = len(data)
    edns: Edns | None = None
    for section, count in enumerate(counts):
        for _ in range(count):
            owner = pos
            after = scan_name(data, pos)
            if after is None or after + 10 > n:
                return None
            rtype, rclass, ttl, rdlen = _RR_FIXED.unpack_from(data, after)
            pos = after + 10 + rdlen
            if pos > n:
                return None
            if rtype == dns.OPT:
                if section != 2 or edns is not None or data[owner] != 0:
                    return edns, False
                edns = Edns(udp_size=max(512, rclass), version=(ttl >> 16) & 0xFF, do=bool(ttl & 0x8000))
    return edns, True


def question_compression(qname: bytes) -> dict[bytes, int]:
    """Twisted compression entries for a question name written at offset 12, as sent."""
    comp: dict[bytes, int] = {}
    if not qname or qname == DOTTED_LABEL:  # its suffixes would point into the middle of a label
        return comp
    offset = 12
    name = qname
    while name:
        comp[name] = offset
        label, _, name = name.partition(b".")
        offset += 1 + len(label)
    return comp


#: The largest offset a compression pointer holds (14 bits).
_POINTER_MAX = 0x3FFF


class _Compression(dict[bytes, int]):
    """Twisted's compression table, refusing names written past :data:`_POINTER_MAX`: twisted's
    ``Name.encode`` would store them and later write ``0xC000 | offset``, whose high bits are
    lost, pointing a later name at the wrong place (a corrupt answer past 16 KB)."""

    __slots__ = ()

    def __setitem__(self, name: bytes, offset: int) -> None:
        if offset <= _POINTER_MAX:
            dict.__setitem__(self, name, offset)


def _opt_bytes(ext_rcode: int, do: bool, options: bytes = b"") -> bytes:
    ttl = ((ext_rcode >> 4) & 0xFF) << 24 | (0x8000 if do else 0)
    return _OPT_FIXED.pack(0, dns.OPT, EDNS_UDP_SIZE, ttl, len(options)) + options


def query_edns_options(data: bytes, q: Question) -> bytes:
    """The rdata (EDNS options) of a query's OPT record, b"" without one or when malformed.

    For relaying the client's options upstream; the query was already checked by
    :func:`read_edns_raw` or :func:`scan_query_records`.  The usual shape (the OPT is the only
    and last record) is one slice; other shapes are walked as those functions walk them.
    """
    if not q.arcount:
        return b""
    pos = q.end
    if not q.ancount and not q.nscount and q.arcount == 1:
        is_opt = len(data) >= pos + 11 and data[pos] == 0 and data[pos + 1 : pos + 3] == b"\x00\x29"
        return data[pos + 11 :] if is_opt else b""
    n = len(data)
    for _ in range(q.ancount + q.nscount + q.arcount):
        owner = pos
        after = scan_name(data, pos)
        if after is None or after + 10 > n:
            return b""
        rtype, _, _, rdlen = _RR_FIXED.unpack_from(data, after)
        pos = after + 10 + rdlen
        if rtype == dns.OPT and data[owner] == 0:
            return data[after + 10 : pos]
    return b""


def udp_limit(edns: Edns | None) -> int:
    """Largest UDP answer allowed: 512 without EDNS, else the client's size (bounded)."""
    if edns is None:
        return 512
    return min(max(512, edns.udp_size), MAX_UDP_SIZE)


def encode_response(
    *,
    qid: int,
    opcode: int,
    rd: bool,
    cd: bool,
    ra: bool,
    aa: bool,
    ad: bool = False,
    rcode: int,
    question: bytes,
    qname: bytes,
    answers: Sequence[dns.RRHeader] = (),
    authority: Sequence[dns.RRHeader] = (),
    additional: Sequence[dns.RRHeader] = (),
    edns: Edns | None = None,
    limit: int = 65535,
    edns_options: bytes = b"",
) -> bytes:
    """Encode a response that fits in ``limit`` bytes, cut at whole records, TC when needed.

    ``question`` is the question section exactly as the client sent it (name case included) and
    ``qname`` its dotted name, so answer owners compress against it.  ``edns_options`` (OPT
    rdata, e.g. an upstream's relayed options) go in our OPT record, only if the client sent one.
    """
    strio = BytesIO()  # the body: twisted's Name.encode adds the 12-byte header to offsets itself
    strio.write(question)
    comp = question_compression(qname) if question else {}
    if limit > _POINTER_MAX:  # names past 16 KB cannot be pointed at (a zone transfer, a big TCP answer)
        comp = _Compression(comp)
    ends = [strio.tell()]
    for rr in (*answers, *authority, *additional):
        rr.encode(strio, comp)
        ends.append(strio.tell())
        if ends[-1] > limit:  # the cut comes at or before this record: encode no more
            break
    body = strio.getvalue()
    opt = _opt_bytes(rcode, edns.do, edns_options) if edns is not None else b""
    counts = [len(answers), len(authority), len(additional)]
    tc = False
    if 12 + len(body) + len(opt) > limit:
        room = limit - len(opt) - 12
        keep = 0
        for i in range(1, len(ends)):
            if ends[i] <= room:
                keep = i
            else:
                break
        if ends[0] > room:  # not even the question fits: send header only
            body = b""
            keep = 0
            question = b""
        else:
            body = body[: ends[keep]]
        kept = keep
        new_counts = []
        for c in counts:
            take = min(c, kept)
            new_counts.append(take)
            kept -= take
        tc = new_counts[0] < counts[0] or new_counts[1] < counts[1] or not question
        counts = new_counts
    flags = (
        0x8000
        | (opcode & 0xF) << 11
        | (0x0400 if aa else 0)
        | (0x0200 if tc else 0)
        | (0x0100 if rd else 0)
        | (0x0080 if ra else 0)
        | (0x0020 if ad else 0)
        | (0x0010 if cd else 0)
        | (rcode & 0xF)
    )
    header = _HEADER.pack(qid, flags, 1 if question else 0, counts[0], counts[1], counts[2] + (1 if opt else 0))
    return header + body + opt


def name_end(buf: bytes, pos: int) -> int:
    """Where the name at ``pos`` ends (:func:`scan_name`), or ValueError."""
    end = scan_name(buf, pos)
    if end is None:
        raise ValueError(f"malformed name at offset {pos}")
    return end


def record_heads(buf: bytes) -> list[tuple[int, int, int, int]]:
    """``(offset of the type field, type, TTL, rdlength)`` of every record of an encoded message
    we built (ValueError if it cannot be walked to its exact end): what the fast path's TTL and
    SOA serial bookkeeping read, without decoding the message again."""
    _, _, qd, an, ns, ar = _HEADER.unpack_from(buf, 0)
    pos = 12
    for _ in range(qd):
        pos = name_end(buf, pos) + 4
    out = []
    for _ in range(an + ns + ar):
        pos = name_end(buf, pos)
        rtype, _, ttl, rdlen = _RR_FIXED.unpack_from(buf, pos)
        out.append((pos, rtype, ttl, rdlen))
        pos += 10 + rdlen
    if pos != len(buf):
        raise ValueError("trailing bytes")
    return out


def ttl_fields(buf: bytes) -> list[tuple[int, int]]:
    """``(offset, ttl)`` of every record's TTL field in an encoded message, OPT excepted.

    Used to count TTLs down in pre-encoded answers without decoding them again.
    """
    return [(pos + 4, ttl) for pos, rtype, ttl, _ in record_heads(buf) if rtype != dns.OPT]


def error_response(data: bytes, rcode: int) -> bytes | None:
    """A bare error answer (FORMERR, NOTIMP...) echoing ID, opcode, RD and, if readable, the question.

    Returns None when the packet is too short to have an ID, or is itself a response (never
    answer a response: that is how two servers get into a loop).
    """
    if len(data) < 12:
        return None
    qid, flags = struct.unpack_from("!HH", data, 0)
    if flags & 0x8000:
        return None
    q = parse_question(data)
    question = b""
    qd = 0
    if q is not None and q.qdcount == 1:
        question = data[12 : q.end]
        qd = 1
    out_flags = 0x8000 | (flags & 0x7800) | (flags & 0x0100) | (rcode & 0xF)
    return _HEADER.pack(qid, out_flags, qd, 0, 0, 0) + question
