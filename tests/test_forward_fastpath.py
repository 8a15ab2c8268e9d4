"""The UDP fast path and forwarded answers that depend on EDNS: each variant of a question (client
subnet, DO, CD, AD) is its own pre-encoded entry, and a repeat is served from the fast path with
that variant's own bytes, the same bytes the slow path (cache) gives.

The fast path keys an entry by the query's bytes after the ID, which include the flags (CD, AD)
and the OPT record (DO, options): this checks that it stays so.  A Dispatcher with a forward chain
is driven through the real UDP protocol class with a capturing socket; the forwarder is a stand-in
that answers per variant the way :func:`kubedns.forward.message.decode_response` hands an
upstream's answer over (an OPT record carrying the options to relay).  The end-to-end version over
real sockets is tests/test_forward_edns.py.
"""

from __future__ import annotations

from typing import Any

import dns.edns
import dns.flags
import dns.message
import pytest
from twisted.internet import defer, task
from twisted.names import dns as tdns

from kubedns.config import ServerBlock
from kubedns.configbase import Address
from kubedns.forward.cache import Cache
from kubedns.forward.chain import ForwardChain
from kubedns.forward.config import CacheConfig
from kubedns.forward.message import client_edns, option_data, options_record
from kubedns.serve.protocols import DNSDatagramProtocol
from kubedns.serve.server import Block, Dispatcher

ECS = 8


class _Sock:
    def __init__(self) -> None:
        self.sent: list[tuple[bytes, Any]] = []

    def sendto(self, data: bytes, addr: Any) -> None:
        self.sent.append((data, addr))


class _Transport:
    def __init__(self) -> None:
        self.socket = _Sock()

    def write(self, data: bytes, addr: Any) -> None:
        self.socket.sendto(data, addr)


class _VariantForwarder:
    """Answers ``203.0.113.N`` where N encodes the query's subnet, DO, CD and AD; echoes ECS."""

    disabled_reason = None

    def __init__(self) -> None:
        self.asked = 0

    def handles(self, name: bytes) -> bool:
        return True

    def resolve(self, query: tdns.Message, tcp: bool = False) -> defer.Deferred:
        self.asked += 1
        _rd, cd, do, ad, opts = client_edns(query)
        ecs = option_data(opts, ECS) if opts else None
        last = (0 if ecs is None else 1 + ecs[-1] % 50) + 100 * do + 50 * cd + 25 * ad
        name = query.queries[0].name.name
        m = tdns.Message(answer=1, recAv=1, authenticData=int(ad))
        m.answers = [tdns.RRHeader(name, tdns.A, ttl=300, payload=tdns.Record_A(f"203.0.113.{last % 256}", 300))]
        if ecs is not None:
            scoped = ecs[:3] + bytes([ecs[2]]) + ecs[4:]  # scope = source prefix
            m.additional = [options_record(ECS.to_bytes(2, "big") + len(scoped).to_bytes(2, "big") + scoped)]
        return defer.succeed(m)

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass


def _setup() -> tuple[_VariantForwarder, Dispatcher, DNSDatagramProtocol]:
    clock = task.Clock()
    clock.advance(1000)
    fwd = _VariantForwarder()
    chain = ForwardChain(fwd, cache=Cache(CacheConfig(ttl=30), reactor=clock), reactor=clock)
    disp = Dispatcher("dns://127.0.0.1:53", [Block(ServerBlock(zones=("",), listen=Address("127.0.0.1", 53)), None, chain)],
                      reactor=clock)
    proto = DNSDatagramProtocol(disp)
    proto.transport = _Transport()
    proto.startProtocol()
    return fwd, disp, proto


VARIANTS = {
    "plain": {},
    "subnet-a": {"options": [dns.edns.ECSOption("192.0.2.0", 24)]},
    "subnet-b": {"options": [dns.edns.ECSOption("198.51.100.0", 24)]},
    "subnet-a/16": {"options": [dns.edns.ECSOption("192.0.2.0", 16)]},
    "do": {"want_dnssec": True},
    "cd": {"flags": dns.flags.CD},
    "ad": {"flags": dns.flags.AD},
    "subnet-a+do+cd": {"options": [dns.edns.ECSOption("192.0.2.0", 24)], "want_dnssec": True, "flags": dns.flags.CD},
}


def _wire(variant: str, qid: int) -> bytes:
    kw = dict(VARIANTS[variant])
    flags = kw.pop("flags", 0)
    q = dns.message.make_query("geo.example.org", "A", use_edns=0, **kw)
    q.flags |= flags
    q.id = qid
    return q.to_wire()


def _slow(disp: Dispatcher, packet: bytes) -> bytes:
    saved = disp.fast.enabled
    disp.fast.enabled = False
    try:
        out = disp.handle(packet, "udp", ("127.0.0.1", 1))
        return getattr(out, "result", out)  # bytes, or a fired Deferred
    finally:
        disp.fast.enabled = saved


def test_each_edns_variant_is_its_own_fast_entry_with_its_own_answer() -> None:
    fwd, disp, proto = _setup()
    sent = proto.transport.socket.sent
    first: dict[str, bytes] = {}
    for i, v in enumerate(VARIANTS):
        proto.datagramReceived(_wire(v, i), ("127.0.0.1", 5000))
        first[v] = sent[-1][0]
    assert fwd.asked == len(VARIANTS)
    assert len(disp.fast.forwarded) == len(VARIANTS)  # one pre-encoded entry per variant
    assert len({a[12:] for a in first.values()}) == len(VARIANTS)  # and all answers differ
    hits = disp.fast.hits()
    for i, v in enumerate(VARIANTS):
        proto.datagramReceived(_wire(v, 1000 + i), ("127.0.0.1", 5000))
        fast = sent[-1][0]
        assert fast[2:] == first[v][2:], v  # the variant's own answer...
        assert fast[2:] == _slow(disp, _wire(v, 2000 + i))[2:], v  # ...the bytes the cache gives too
    assert disp.fast.hits() == hits + len(VARIANTS)  # served by the fast path
    assert fwd.asked == len(VARIANTS)  # nothing went upstream again


@pytest.mark.parametrize("variant", ["subnet-a", "subnet-a/16", "subnet-a+do+cd"])
def test_the_subnet_scope_comes_back_from_the_fast_path(variant: str) -> None:
    _fwd, _disp, proto = _setup()
    sent = proto.transport.socket.sent
    proto.datagramReceived(_wire(variant, 1), ("127.0.0.1", 5000))
    proto.datagramReceived(_wire(variant, 2), ("127.0.0.1", 5000))
    r = dns.message.from_wire(sent[-1][0])
    ecs = next(o for o in r.options if o.otype == ECS)
    asked = VARIANTS[variant]["options"][0]
    assert ecs.to_wire() == dns.edns.ECSOption(asked.address, asked.srclen, asked.srclen).to_wire()
