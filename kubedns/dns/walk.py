"""One walk over a forwarded answer's bytes: is it of the plain shape the relay keeps as it came,
and what the cache, the fast path and the metrics need from it (:func:`walk_answer`).

Why a module of its own: it is the relay's gatekeeper (kubedns/forward/relay.py), not part of
reading queries or encoding answers (kubedns/dns/wire.py), and it kept wire.py over the house
size.

Why the names inside record data are checked too: an answer the walk accepts is relayed (and
cached) as the upstream's bytes, without decoding.  Before the relay every answer was decoded:
one with a broken name in a CNAME target, an MX exchange, an SRV target, an SOA's names... got
SERVFAIL when the decoder refused it (as CoreDNS's forward does when it cannot unpack an answer),
or what the decoder read of it, encoded again; never the broken bytes.  So for the record types
whose data holds names (and only those: one dict lookup per record otherwise) each name is
scanned as owner names are (:func:`~kubedns.dns.wire.scan_name`: pointers strictly backwards,
labels of at most 63 octets, at most 255 octets in all), must end inside the record's data, and
the fixed fields around the names must fill its length exactly.  An answer that fails goes the
old way: decoded, with the decoding code's outcome (SERVFAIL when it does not decode).
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from twisted.names import dns

from kubedns.dns.wire import scan_name

__all__ = ["AnswerWalk", "walk_answer"]

_HEADER = struct.Struct("!HHHHHH")
_RR_FIXED = struct.Struct("!HHIH")  # type, class, TTL, rdlength


class AnswerWalk(NamedTuple):
    """What one walk over an upstream's answer tells (:func:`walk_answer`): all that the forward
    cache, the fast path, the metrics and the relayed reply need, without decoding a record.

    Offsets are absolute in the walked message; records are the non-OPT ones, in order.
    """

    rcode: int  # the header's rcode with the OPT's extended bits folded in
    qend: int  # offset just past the (single) question
    an: int
    ns: int
    ar: int  # additional records, the OPT not counted
    end: int  # offset just past the last non-OPT record (the OPT, if any, is what follows)
    ends: tuple[int, ...]  # offset just past each record
    ttls: tuple[int, ...]  # offset of each record's TTL field (tuples: a kept walk holds nothing the
    # garbage collector must track)
    low: int  # the smallest TTL of any record, -1 without records
    negative: int  # min(TTL, MINIMUM) of the authority section's first SOA (RFC 2308), -1 without
    opt: bytes | None  # the OPT record's rdata (its options), None without an OPT
    reorder: bool  # ``loadbalance`` would change the records' order (a group of A/AAAA/MX of 2+,
    # or records out of its CNAME, other, address, MX grouping)


_LB_STAGE = {dns.CNAME: 0, dns.A: 2, dns.AAAA: 2, dns.MX: 3}

_NAPTR = 35
#: Record types whose data holds domain names.  An int: one name after that many octets, filling
#: the data to its end (the common case, checked inline).  A tuple: (octets before the first name,
#: names, octets after the last name), checked by :func:`_rdata_ok`, which also walks NAPTR's three
#: character-strings before its name.  RFC 1035's types, and the later ones whose names decoders
#: read (RFC 1183 RP/AFSDB/RT, RFC 2163 PX, RFC 2230 KX, RFC 2782 SRV, RFC 3403 NAPTR, RFC 6672 DNAME).
_NAME_DATA: dict[int, int | tuple[int, int, int]] = {
    dns.NS: 0, dns.MD: 0, dns.MF: 0, dns.CNAME: 0, dns.MB: 0, dns.MG: 0, dns.MR: 0, dns.PTR: 0, dns.DNAME: 0,
    dns.MX: 2, dns.AFSDB: 2, 21: 2, 36: 2,  # RT, KX
    dns.SRV: 6,
    dns.SOA: (0, 2, 20), dns.MINFO: (0, 2, 0), dns.RP: (0, 2, 0), 26: (2, 2, 0),  # PX
    _NAPTR: (4, 1, 0),
}


def _rdata_ok(buf: bytes, rtype: int, start: int, rdend: int, shape: tuple[int, int, int]) -> bool:
    """The names in one record's data (``buf[start:rdend]``) are well formed and, with the fixed
    fields, fill it exactly."""
    prefix, names, suffix = shape
    pos = start + prefix
    if rtype == _NAPTR:  # flags, services, regexp: three character-strings
        for _ in range(3):
            if pos >= rdend:
                return False
            pos += 1 + buf[pos]
    for _ in range(names):
        if pos >= rdend:
            return False
        end = scan_name(buf, pos)
        if end is None or end > rdend:
            return False
        pos = end
    return pos + suffix == rdend


def walk_answer(buf: bytes, qend: int = 0) -> AnswerWalk | None:
    """One walk over an answer's bytes (owner names checked as :func:`scan_name` does, and the
    names in the data of the types of ``_NAME_DATA``; other record data is not looked at, but
    for an SOA's MINIMUM).

    ``qend``: where the question ends when the caller already checked it (the forwarder's answer
    checks compare it with the question sent), else 0 and it is scanned here.  None when the
    message is not of the plain shape a relay keeps as is: not exactly one question, an OPT
    record that is not the last record (or more than one, or outside the additional section),
    a record or name running past the end, a malformed name in a record's data (or one that
    does not end inside it, or fixed fields that do not fill it exactly), or trailing bytes.
    """
    n = len(buf)
    if n < 12:
        return None
    _, flags, qd, an, ns, ar = _HEADER.unpack_from(buf, 0)
    if qd != 1:
        return None
    if not qend:
        pos = scan_name(buf, 12)
        if pos is None or pos + 4 > n:
            return None
        qend = pos + 4
    elif qend > n:
        return None
    pos = qend
    ends: list[int] = []
    ttls: list[int] = []
    low = -1
    negative = -1
    opt: bytes | None = None
    opt_ttl = 0
    reorder = False
    unpack = _RR_FIXED.unpack_from
    total = an + ns + ar
    bounds = (an, an + ns)
    stages = _LB_STAGE
    named = _NAME_DATA
    i = 0
    stage = 0
    groups = [0, 0, 0, 0]
    while i < total:
        if i == bounds[0] or i == bounds[1]:
            stage = 0
            groups = [0, 0, 0, 0]
        if buf[pos] == 0xC0 and pos + 1 < n and buf[pos + 1] == 12:
            after = pos + 2  # the question's name (checked): the usual owner
        else:
            scanned = scan_name(buf, pos)
            if scanned is None:
                return None
            after = scanned
        if after + 10 > n:
            return None
        rtype, _, ttl, rdlen = unpack(buf, after)
        rdend = after + 10 + rdlen
        if rdend > n:
            return None
        i += 1
        if rtype == dns.OPT:
            if i <= an + ns or i != total or opt is not None:
                return None
            opt = buf[after + 10 : rdend]
            opt_ttl = ttl
            pos = rdend
            break
        shape = named.get(rtype)
        if shape is not None:
            if isinstance(shape, int):  # one name filling the data after ``shape`` octets
                if scan_name(buf, after + 10 + shape) != rdend:  # (a start past the data ends past it)
                    return None
            elif not _rdata_ok(buf, rtype, after + 10, rdend, shape):
                return None
        ttls.append(after + 4)
        ends.append(rdend)
        if low < 0 or ttl < low:
            low = ttl
        if rtype == dns.SOA and negative < 0 and an <= i - 1 < an + ns and rdlen >= 22:
            minimum = int.from_bytes(buf[rdend - 4 : rdend], "big")
            negative = min(ttl, minimum)
        if not reorder:
            st = stages.get(rtype, 1)
            if st < stage:
                reorder = True
            stage = st
            if st >= 2:
                groups[st] += 1
                if groups[st] > 1:
                    reorder = True
        pos = rdend
    if pos != n:
        return None
    end = ends[-1] if ends else qend
    rcode = (flags & 0xF) | (((opt_ttl >> 24) & 0xFF) << 4 if opt is not None else 0)
    return AnswerWalk(rcode, qend, an, ns, ar - (1 if opt is not None else 0), end, tuple(ends), tuple(ttls), low,
                      negative, opt, reorder)
