"""The ``loop`` plugin: a query that is one of our own loop probes coming back is answered
SERVFAIL and reported to the block's :class:`~kubedns.forward.loop.LoopDetector`, which isolates
the upstream that sent it (see there).  As in CoreDNS it sits just before ``forward``: only names
no earlier plugin answered can be probes (they are random names in the block's first zone)."""

from __future__ import annotations

from typing import Protocol

from twisted.names import dns

from kubedns.dns.query import Request
from kubedns.dns.records import Answer
from kubedns.plugins.base import Next, Reply, Result

__all__ = ["LoopPlugin"]


class Detector(Protocol):
    def observe(self, qname: bytes) -> bool: ...


class LoopPlugin:
    """See the module docstring."""

    name = "loop"

    def __init__(self, detector: Detector):
        self.detector = detector

    def serve(self, req: Request, next: Next) -> Result:  # noqa: A002
        if self.detector.observe(req.q.qname):
            return Reply(Answer(rcode=dns.ESERVER, authoritative=False), "", "")
        return next(req)
