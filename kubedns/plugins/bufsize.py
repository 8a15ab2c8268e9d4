"""The ``bufsize`` plugin: caps the client's EDNS UDP payload size, as CoreDNS's *bufsize*.

``bufsize [SIZE]`` (512 to 4096, default 1232: the DNS Flag Day 2020 size) lowers the UDP size
of a query whose OPT record asks for more, before anything else sees the query, so that:

- the answer over UDP is cut (TC) to fit SIZE instead of the client's larger size, and no large
  answer is fragmented on its way back;
- the query log's ``{>bufsize}`` shows SIZE, as CoreDNS's (it logs the changed request).

Upstream, kubedns's forwarder advertises 1232 whatever the client asked (its own fixed size,
:mod:`kubedns.forward.message`), so the path to the upstream never needs more than the default;
CoreDNS's forward passes the capped client size on instead, so there a SIZE below 1232 also
shrinks what the upstream may send (kubedns relays its answer cut to SIZE either way).

A query without OPT (512 bytes) and one asking for less are left alone: it can only lower the
size.  TCP answers are not cut either way.  Our own OPT keeps advertising 1232, the size kubedns
itself accepts; CoreDNS echoes the (capped) client size there.  Same query, same answer: the
fast path may keep what comes back.
"""

from __future__ import annotations

from kubedns.configbase import Node
from kubedns.dns.query import Request
from kubedns.dns.wire import Edns
from kubedns.plugins.base import Next, Result

__all__ = ["DEFAULT_BUFSIZE", "BufsizePlugin", "parse_bufsize"]

DEFAULT_BUFSIZE = 1232


def parse_bufsize(node: Node) -> int | None:
    """``bufsize: SIZE`` (512..4096), empty or ``true`` for 1232; ``false`` leaves it off."""
    if node.value is False:
        return None
    if node.value is None or node.value is True or node.value == {}:
        return DEFAULT_BUFSIZE
    return node.integer(512, 4096)


class BufsizePlugin:
    """See the module docstring."""

    name = "bufsize"

    def __init__(self, size: int = DEFAULT_BUFSIZE):
        self.size = size

    def serve(self, req: Request, next: Next) -> Result:  # noqa: A002 (CoreDNS's word)
        edns = req.edns
        size = self.size
        if edns is not None and edns.udp_size > size:
            req.edns = Edns(size, edns.version, edns.do)
            if req.proto == "udp":
                req.limit = min(req.limit, size)
        return next(req)
