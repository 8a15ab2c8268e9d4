"""The records one query leaves behind, shared by the server, the plugins, the fast path, the
counters and the transports.

They live here, below all of those modules, so none of them imports them back from
:mod:`kubedns.serve.server` (which imports the fast path, the plugins and, through the wiring, the
transports): :class:`Request` is what a plugin sees of a query, :class:`QueryInfo` what observers
(metrics, the query and error logs) learn once it is answered.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from kubedns.dns.wire import Edns, Question

if TYPE_CHECKING:
    from kubedns.serve.server import Block

__all__ = ["ComputedMemo", "Observer", "QueryInfo", "Request"]


@dataclass(slots=True)
class QueryInfo:
    """What observers (metrics, query log) learn about each answered query."""

    server: str  # "dns://host:port" as CoreDNS labels it
    zone: str
    proto: str  # "udp" | "tcp"
    peer: Any
    qname: bytes
    qtype: int
    qclass: int
    qid: int
    request_size: int
    response_size: int
    rcode: int
    flags: int
    duration: float
    do: bool
    bufsize: int = 512  # the client's EDNS UDP size (512 without EDNS), 65535 over TCP
    plugin: str = ""  # which plugin answered: kubernetes, forward, or "" (refused, errors)
    error: str = ""  # why the answer is a failure, when we know more than the rcode (errors:)
    opcode: int = 0  # the query's (log's {>opcode})
    answers: int = 0  # records in the answer section; with ``soa``, the log's class of the answer
    soa: bool = False  # no answers and an SOA in the authority section (NXDOMAIN/NODATA proper)


Observer = Callable[[QueryInfo], None]


class ComputedMemo(Protocol):
    """Where the server keeps answers computed from a store until it changes
    (:class:`kubedns.serve.fastcache.FastCache`): bounded in bytes, cleared with the fast path."""

    computed: Any

    def keep_computed(self, key: tuple[Any, bytes, int], res: Any, deps: tuple[Any, ...] | None = None) -> None: ...


@dataclass(slots=True)
class Request:
    """One query being answered: what the plugins, encoding the answer and reporting on it need."""

    q: Question
    question: bytes  # the question section as sent (case preserved)
    edns: Edns | None
    limit: int  # largest answer allowed on this transport
    proto: str
    peer: Any
    start: float
    packet: bytes
    block: Block | None
    lname: str = ""  # the query name as lower-cased text (routing, zone matching)
    memo: ComputedMemo | None = None  # the listener's memo of computed answers

    @property
    def qname(self) -> bytes:
        return self.q.qname
