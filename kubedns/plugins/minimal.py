"""The ``minimal`` plugin: only the answer section in positive answers, as CoreDNS's *minimal*.

On the way back it classifies the answer as CoreDNS's ``response.Typify`` does and, for a
positive one (NOERROR with records; or NOERROR without records, SOA or NS in the authority
section), drops the authority and additional sections: SRV glue, the NS's address records and
an upstream's authority records go, the answer stays.  Left as they are: denials (NXDOMAIN;
NODATA, i.e. NOERROR with an SOA), errors, delegations (NOERROR, no answer, NS records),
NXDOMAIN with records, zone transfers, and (with DO) answers holding an RRSIG outside its
validity period.  The OPT record is not a section record here: the client's EDNS is answered
as always.  The result depends on the answer alone, so the fast path keeps what it would keep.
"""

from __future__ import annotations

import dataclasses
import struct
import time
from typing import Any

from twisted.names import dns

from kubedns.dns.query import Request
from kubedns.dns.records import Answer
from kubedns.plugins.base import Next, Reply, Result, then

__all__ = ["MinimalPlugin", "positive"]

_TRANSFERS = (dns.AXFR, dns.IXFR)
_RRSIG = 46
_YEAR68 = 1 << 31


def _rrsig_expired(records: list[Any], now: float) -> bool:
    """True when one of ``records`` is an RRSIG outside its validity period (miekg's
    ``ValidityPeriod``, RFC 1982 serial arithmetic on inception and expiration)."""
    utc = int(now)
    for rr in records:
        if rr.type != _RRSIG:
            continue
        data = getattr(rr.payload, "data", b"")
        if len(data) < 16:
            continue
        expiration, inception = struct.unpack_from("!II", data, 8)
        ti = inception + (inception - utc) // _YEAR68 * _YEAR68
        te = expiration + (expiration - utc) // _YEAR68 * _YEAR68
        if not ti <= utc <= te:
            return True
    return False


def positive(ans: Answer, qtype: int, do: bool, now: float | None = None) -> bool:
    """Whether CoreDNS's ``Typify`` calls ``ans`` NOERROR (the one kind *minimal* trims)."""
    if qtype in _TRANSFERS:
        return False  # META
    if ans.rcode != dns.OK:
        return False
    if do:
        t = time.time() if now is None else now
        if any(_rrsig_expired(s, t) for s in (ans.answers, ans.authority, ans.additional)):
            return False  # OTHERERROR
    if ans.answers:
        return True
    types = {rr.type for rr in ans.authority}
    return dns.SOA not in types and dns.NS not in types  # NODATA / DELEGATION otherwise


class MinimalPlugin:
    """See the module docstring."""

    name = "minimal"

    def serve(self, req: Request, next: Next) -> Result:  # noqa: A002 (CoreDNS's word)
        qtype = req.q.qtype
        do = bool(req.edns is not None and req.edns.do)

        def trim(reply: Reply) -> Reply:
            ans = reply.answer
            if (not ans.authority and not ans.additional) or not positive(ans, qtype, do):
                return reply
            small = Answer(rcode=ans.rcode, answers=ans.answers, authoritative=ans.authoritative)
            return dataclasses.replace(reply, answer=small)

        return then(next(req), trim)
