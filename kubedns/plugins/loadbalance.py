"""The ``loadbalance`` plugin (``round_robin``): A, AAAA and MX records in a new order per answer.

Without it every client that takes the first address of a headless Service hits the same Pod,
and a client that ignores TC sees the same first records of a large answer every time.  As
CoreDNS's plugin it works on the answer on its way back, for NOERROR answers only (never a zone
transfer), in each section (answer, authority, additional): a section holding only A or only
AAAA records is shuffled as a whole; otherwise the CNAMEs go first (glibc's stub resolver is
particular about that), then the records of other types, then the addresses shuffled, then the
MX records shuffled.

The fast path keeps the encoded bytes of an answer and would serve one order for ever, so a
shuffled Reply says ``rotate``: the server then encodes :func:`rotations` of it (each address and
MX group turned by a different offset, the first records spread over the whole group) and the
fast path serves them in turn, one per hit (:class:`kubedns.serve.fastcache.Rotation`).
"""

from __future__ import annotations

import dataclasses
import os
import random
from collections.abc import Callable
from typing import Any

from twisted.names import dns

from kubedns.dns.query import Request
from kubedns.dns.records import Answer
from kubedns.plugins.base import Next, Reply, Result, then

__all__ = ["POLICIES", "LoadbalancePlugin", "arrange", "rotations"]

POLICIES = ("round_robin",)
#: Most orders the fast path keeps of one answer (each is a whole encoded answer).
MAX_ROTATIONS = 16

_ADDRESS = (dns.A, dns.AAAA)
_SKIP = (dns.AXFR, dns.IXFR)
_rng = random.Random(os.urandom(16))


class LoadbalancePlugin:
    """See the module docstring."""

    name = "loadbalance"

    def __init__(self, policy: str = "round_robin", rng: random.Random | None = None):
        if policy not in POLICIES:
            raise ValueError(f"loadbalance policy {policy!r}: expected one of {', '.join(POLICIES)}")
        self.policy = policy
        self._shuffle = (rng or _rng).shuffle

    def serve(self, req: Request, next: Next) -> Result:  # noqa: A002
        if req.q.qtype in _SKIP:
            return next(req)
        return then(next(req), self.reorder)

    def reorder(self, reply: Reply) -> Reply:
        """``reply`` with its records in a new random order (a new Reply; the records are shared)."""
        ans = reply.answer
        if ans.rcode != dns.OK:
            return reply
        relay = reply.relay  # a forwarded answer as bytes: its walk says whether any order changes
        if relay is not None and not relay.walk.reorder and getattr(ans, "relayed", None) is relay:
            return reply
        shuffle = self._shuffle

        def mix(group: list[Any], _index: int) -> list[Any]:
            shuffle(group)
            return group

        new = Answer(rcode=ans.rcode, answers=arrange(ans.answers, mix), authority=arrange(ans.authority, mix),
                     additional=arrange(ans.additional, mix), authoritative=ans.authoritative)
        return dataclasses.replace(reply, answer=new, rotate=True)


Order = Callable[[list[Any], int], list[Any]]


def arrange(records: list[Any], order: Order) -> list[Any]:
    """A new list: ``records`` grouped as CoreDNS's loadbalance does, each address group and MX
    group passed through ``order(group, kind)`` (kind 0: addresses, 1: MX) on a copy."""
    if len(records) <= 1:
        return records
    first = records[0].type
    if first in _ADDRESS and all(rr.type == first for rr in records):
        return order(list(records), 0)
    cname: list[Any] = []
    address: list[Any] = []
    mx: list[Any] = []
    rest: list[Any] = []
    for rr in records:
        t = rr.type
        if t == dns.CNAME:
            cname.append(rr)
        elif t in _ADDRESS:
            address.append(rr)
        elif t == dns.MX:
            mx.append(rr)
        else:
            rest.append(rr)
    return cname + rest + order(address, 0) + order(mx, 1)


def _groups(records: list[Any]) -> int:
    """Size of the largest group :func:`arrange` reorders in ``records``."""
    n_addr = sum(1 for rr in records if rr.type in _ADDRESS)
    n_mx = sum(1 for rr in records if rr.type == dns.MX)
    return max(n_addr, n_mx)


def rotations(ans: Answer, limit: int = MAX_ROTATIONS) -> list[Answer]:
    """Up to ``limit`` orders of ``ans`` for the fast path to serve in turn, ``ans`` first.

    Order ``i`` of ``k`` turns every reordered group of ``n`` records by ``i * n // k``, so the
    first records of the ``k`` orders are spread evenly over each group.  One order (``[ans]``)
    when nothing can move.
    """
    k = min(limit, max(_groups(ans.answers), _groups(ans.authority), _groups(ans.additional)))
    if k <= 1 or ans.rcode != dns.OK:
        return [ans]
    out = [ans]
    for i in range(1, k):
        def turn(group: list[Any], _kind: int, i: int = i) -> list[Any]:
            s = i * len(group) // k
            return group[s:] + group[:s]

        out.append(Answer(rcode=ans.rcode, answers=arrange(ans.answers, turn),
                          authority=arrange(ans.authority, turn), additional=arrange(ans.additional, turn),
                          authoritative=ans.authoritative))
    return out
