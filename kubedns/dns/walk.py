"""One walk over a forwarded answer's bytes: is it of the plain shape the relay keeps as it came,
and what the cache, the fast path and the metrics need from it (:func:`walk_answer`).

Why a module of its own: it is the relay's gatekeeper (kubedns/forward/relay.py), not part of
reading queries or encoding answers (kubedns/dns/wire.py), and it kept wire.py over the house
size.
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


def walk_answer(buf: bytes, qend: int = 0) -> AnswerWalk | None:
    """One walk over an answer's bytes (owner names checked as :func:`scan_name` does; record
    data is not looked at, but for an SOA's MINIMUM).

    ``qend``: where the question ends when the caller already checked it (the forwarder's answer
    checks compare it with the question sent), else 0 and it is scanned here.  None when the
    message is not of the plain shape a relay keeps as is: not exactly one question, an OPT
    record that is not the last record (or more than one, or outside the additional section),
    a record or name running past the end, or trailing bytes.
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
