"""Forwarded answers relayed as bytes (kubedns/forward/relay.py, kubedns/dns/walk.py): unit tests.

What they prove beside the end-to-end byte-equality test (tests/test_relay_bytes.py):

* the client's reply made from the upstream's bytes equals, byte for byte, what the decoding
  code encoded (``encode_response`` of the decoded records) for many answer shapes, client EDNS
  settings and UDP limits, truncation included;
* the walk reads what the cache and the metrics need (rcode with the extended bits, the negative
  TTL from the SOA, the smallest TTL, the OPT's options, whether loadbalance would reorder) and
  refuses the shapes it cannot relay as they are (which are re-encoded into one it can);
* records are decoded only when a plugin asks, and a plugin that changes them gets them encoded;
* a forwarded miss makes one Deferred at most, a cache hit none (a real Forwarder over
  loopback UDP to tests/dnsupstream.py, the real Dispatcher).
"""

from __future__ import annotations

import gc
import struct
from typing import Any

import dns.edns
import dns.flags
import dns.message
import dns.rcode
import dns.rdataset
import dns.rrset
import pytest
from twisted.internet import defer, reactor
from twisted.names import dns as tdns

from kubedns.config import Address, ServerBlock
from kubedns.dns.query import Request
from kubedns.dns.walk import walk_answer
from kubedns.dns.wire import encode_response, parse_question, read_edns_raw, udp_limit
from kubedns.forward.cache import Cache
from kubedns.forward.chain import ForwardChain
from kubedns.forward.config import CacheConfig
from kubedns.forward.message import answer_options, decode_response
from kubedns.forward.relay import (
    LazyAnswer,
    client_reply,
    query_from_request,
    relayable,
    relayed_from_upstream,
)
from kubedns.serve.server import Block, Dispatcher
from tests.support.forwarding import ForwardTestCase, config

pytestmark = pytest.mark.timeout(60)

NSID, COOKIE, EDE = 3, 10, 15


def _plain(monkeypatch: Any) -> None:
    plain = dns.rdataset.Rdataset.to_wire
    monkeypatch.setattr(dns.rdataset.Rdataset, "to_wire",
                        lambda self, *a, **kw: plain(self, *a, **{**kw, "want_shuffle": False}))


def request(name: str, rdtype: str = "A", **kw: Any) -> Request:
    q = dns.message.make_query(name, rdtype, **kw)
    q.id = 0x1234
    data = q.to_wire()
    pq = parse_question(data)
    assert pq is not None
    got = read_edns_raw(data, pq)
    assert got is not None
    edns = got[0]
    return Request(pq, data[12 : pq.end], edns, udp_limit(edns), "udp", ("127.0.0.1", 5), 0.0, data, None)


def upstream_answer(name: str, rdtype: str, shape: str) -> bytes:
    """The upstream's answer to our query for ``name`` (as sent: case kept), of a given shape."""
    q = dns.message.make_query(name, rdtype, use_edns=0)
    r = dns.message.make_response(q)
    r.flags |= dns.flags.RA
    qn = q.question[0].name
    if shape == "many-a":
        r.answer.append(dns.rrset.from_text(qn, 300, "IN", "A", *[f"192.0.2.{i}" for i in range(1, 40)]))
    elif shape == "cname-chain":
        r.answer.append(dns.rrset.from_text(qn, 300, "IN", "CNAME", "b.example.org."))
        r.answer.append(dns.rrset.from_text("b.example.org.", 200, "IN", "CNAME", "c.Example.org."))
        r.answer.append(dns.rrset.from_text("c.Example.org.", 100, "IN", "A", "192.0.2.9", "192.0.2.10"))
    elif shape == "big-txt":
        r.answer.append(dns.rrset.from_text(qn, 60, "IN", "TXT", *[f'"t{i:03d}-' + "x" * 60 + '"' for i in range(30)]))
    elif shape == "nxdomain":
        r.set_rcode(dns.rcode.NXDOMAIN)
        r.authority.append(dns.rrset.from_text("example.org.", 90, "IN", "SOA",
                                               "ns.example.org. h.example.org. 1 2 3 4 45"))
    elif shape == "mx-glue":
        r.answer.append(dns.rrset.from_text(qn, 300, "IN", "MX", "10 mx1.example.org.", "20 mx2.example.org."))
        r.additional.append(dns.rrset.from_text("mx1.example.org.", 300, "IN", "A", "192.0.2.20"))
        r.additional.append(dns.rrset.from_text("mx2.example.org.", 300, "IN", "AAAA", "2001:db8::20"))
    elif shape == "options":
        r.answer.append(dns.rrset.from_text(qn, 300, "IN", "A", "192.0.2.1"))
        r.use_edns(0, payload=1232, options=[dns.edns.GenericOption(COOKIE, b"\x01" * 24),
                                             dns.edns.GenericOption(EDE, b"\x00\x03x"),
                                             dns.edns.GenericOption(NSID, b"up")])
    elif shape == "badcookie":  # extended rcode 23: 7 in the header, 1 in the OPT
        r.use_edns(0, payload=1232)
        r.set_rcode(23)
    elif shape == "servfail":
        r.set_rcode(dns.rcode.SERVFAIL)
    return r.to_wire(max_size=65535)


def decoding_reply(req: Request, data: bytes) -> bytes:
    """What the decoding code sent the client for upstream answer ``data``."""
    m = decode_response(data)
    q = req.q
    return encode_response(qid=q.id, opcode=q.opcode, rd=bool(q.flags & 0x100), cd=bool(q.flags & 0x10), ra=True,
                           aa=bool(m.auth), ad=bool(m.authenticData), rcode=m.rCode, question=req.question,
                           qname=q.qname, answers=m.answers, authority=m.authority,
                           additional=[rr for rr in m.additional if rr.type != tdns.OPT], edns=req.edns,
                           limit=req.limit, edns_options=answer_options(m))


SHAPES = ["many-a", "cname-chain", "big-txt", "nxdomain", "mx-glue", "options", "badcookie", "servfail"]
CLIENTS = {
    "no-edns": {},
    "edns-512": {"use_edns": 0, "payload": 512},
    "edns-1232-do": {"use_edns": 0, "payload": 1232, "want_dnssec": True},
    "edns-4096": {"use_edns": 0, "payload": 4096},
}


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("client", list(CLIENTS))
@pytest.mark.parametrize("name", ["www.example.org", "WwW.ExAmPle.ORG"])
def test_relayed_reply_is_the_decoding_codes_byte_for_byte(monkeypatch, shape: str, client: str, name: str) -> None:
    _plain(monkeypatch)
    rdtype = "MX" if shape == "mx-glue" else "TXT" if shape == "big-txt" else "A"
    req = request(name, rdtype, **CLIENTS[client])
    data = upstream_answer(name, rdtype, shape)
    r = relayed_from_upstream(data)
    assert relayable(req, r)
    got = client_reply(req, r, ra=True, ad=r.ad, aa=r.aa, rcode=r.rcode, options=r.options)
    assert got == decoding_reply(req, data)
    assert len(got) <= req.limit


def test_walk_reads_what_the_cache_and_metrics_need(monkeypatch) -> None:
    _plain(monkeypatch)
    w = walk_answer(upstream_answer("www.example.org", "A", "cname-chain"))
    assert w is not None
    assert (w.rcode, w.an, w.ns, w.ar, w.low, w.negative, w.opt) == (0, 4, 0, 0, 100, -1, b"")
    assert w.reorder  # two A records: loadbalance reorders them
    nx = walk_answer(upstream_answer("nx.example.org", "A", "nxdomain"))
    assert nx is not None and (nx.rcode, nx.an, nx.ns, nx.negative) == (3, 0, 1, 45)  # min(90, MINIMUM 45)
    bad = walk_answer(upstream_answer("x.example.org", "A", "badcookie"))
    assert bad is not None and bad.rcode == 23 and bad.ar == 0 and bad.opt == b""
    one = walk_answer(upstream_answer("x.example.org", "A", "options"))
    assert one is not None and not one.reorder and one.opt is not None and len(one.ttls) == 1
    assert struct.unpack_from("!I", upstream_answer("x.example.org", "A", "options"), one.ttls[0])[0] == 300


def _records(*rrs: tuple[int, bytes]) -> bytes:
    """A response to ``x.example`` A with the given (type, rdata) answer records, owners pointing at the question."""
    header = struct.pack("!HHHHHH", 1, 0x8180, 1, len(rrs), 0, 0)
    question = b"\x01x\x07example\x00" + struct.pack("!HH", 1, 1)
    body = b"".join(b"\xc0\x0c" + struct.pack("!HHIH", t, 1, 60, len(d)) + d for t, d in rrs)
    return header + question + body


def test_walk_says_when_loadbalance_would_reorder() -> None:
    a, mx, cname, txt = (1, b"\xc0\x00\x02\x01"), (15, b"\x00\x0a\xc0\x0c"), (5, b"\xc0\x0c"), (16, b"\x01t")
    for rrs, expected in [((a,), False), ((cname, a), False), ((cname, txt, a, mx), False), ((a, a), True),
                          ((mx, mx), True), ((a, cname), True), ((txt, cname), True), ((a, txt), True)]:
        w = walk_answer(_records(*rrs))
        assert w is not None and w.reorder is expected, rrs


def test_walk_refuses_what_it_cannot_relay_as_is() -> None:
    good = _records((1, b"\xc0\x00\x02\x01"))
    assert walk_answer(good) is not None
    assert walk_answer(good + b"\x00") is None  # trailing bytes
    assert walk_answer(good[:-1]) is None  # a record running past the end
    no_question = struct.pack("!HHHHHH", 1, 0x8182, 0, 0, 0, 0)
    assert walk_answer(no_question) is None
    # an OPT that is not the last record
    opt = b"\x00" + struct.pack("!HHIH", 41, 1232, 0, 0)
    a = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 60, 4) + b"\xc0\x00\x02\x01"
    head = struct.pack("!HHHHHH", 1, 0x8180, 1, 0, 0, 2) + b"\x01x\x07example\x00" + struct.pack("!HH", 1, 1)
    assert walk_answer(head + opt + a) is None
    assert walk_answer(head + a + opt) is not None
    # a forward pointer (or a loop) in an owner name
    loop = struct.pack("!HHHHHH", 1, 0x8180, 1, 1, 0, 0) + b"\x01x\x07example\x00" + struct.pack("!HH", 1, 1)
    assert walk_answer(loop + b"\xc0\x30" + struct.pack("!HHIH", 1, 1, 60, 4) + b"\xc0\x00\x02\x01") is None


def test_an_odd_answer_is_reencoded_into_the_plain_shape_with_its_options_and_ext_rcode() -> None:
    """An OPT before another additional record: decoded once, encoded again, then relayed."""
    question = b"\x01x\x07example\x00" + struct.pack("!HH", 1, 1)
    opt = b"\x00" + struct.pack("!HHIH", 41, 1232, 1 << 24, 6) + struct.pack("!HH", EDE, 2) + b"\x00\x05"
    glue = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 60, 4) + b"\xc0\x00\x02\x07"
    data = struct.pack("!HHHHHH", 9, 0x8187, 1, 0, 0, 2) + question + opt + glue  # rcode 7 + (1 << 4) = 23
    assert walk_answer(data) is None
    r = relayed_from_upstream(data)
    assert r.rcode == 23 and r.walk.ar == 1 and r.options == struct.pack("!HH", EDE, 2) + b"\x00\x05"
    req = request("x.example", "A", use_edns=0)
    got = client_reply(req, r, ra=True, ad=r.ad, aa=r.aa, rcode=r.rcode, options=r.options)
    assert got == decoding_reply(req, data)


def test_records_are_decoded_only_when_asked_and_a_change_is_never_relayed(monkeypatch) -> None:
    _plain(monkeypatch)
    r = relayed_from_upstream(upstream_answer("www.example.org", "A", "cname-chain"))
    ans = LazyAnswer(r)
    assert not ans.decoded
    assert ans.rcode == 0 and ans.authoritative is False
    assert [rr.type for rr in ans.answers] == [tdns.CNAME, tdns.CNAME, tdns.A, tdns.A] and ans.decoded
    assert ans.relayed is r  # looking is not changing
    ans.answers = ans.answers[:1]
    assert ans.relayed is not r and [rr.type for rr in ans.answers] == [tdns.CNAME]


def test_the_upstream_query_is_the_clients_question_with_our_opt() -> None:
    req = request("WwW.Example.org", "AAAA", use_edns=0, payload=4096, want_dnssec=True,
                  options=[dns.edns.GenericOption(COOKIE, b"\x07" * 8), dns.edns.GenericOption(NSID, b"")])
    fq = query_from_request(req)
    q = dns.message.from_wire(b"\x00\x01" + fq.template[2:])
    assert q.question[0].name.to_text() == "WwW.Example.org." and q.question[0].rdtype == 28
    assert q.payload == 1232 and q.ednsflags & dns.flags.DO and q.flags & dns.flags.RD
    assert [int(o.otype) for o in q.options] == [NSID]  # the cookie is per hop
    assert fq.cache_key == (b"www.example.org", 28, 1, True, False, False, b"")
    plain = query_from_request(request("www.example.org", "AAAA"))
    assert dns.message.from_wire(b"\x00\x01" + plain.template[2:]).payload == 1232  # an OPT of ours anyway


class DeferredCountTests(ForwardTestCase):
    """A forwarded miss makes one Deferred at most (the query's), a cache hit none."""

    async def test_one_deferred_per_miss_none_per_hit(self) -> None:
        up = self.upstream()
        f = self.forwarder(config(up.address))
        chain = ForwardChain(f, Cache(CacheConfig(ttl=30)), reactor=reactor)
        block = Block(ServerBlock(zones=("",), listen=Address("127.0.0.1", 53)), chain=chain)
        disp = Dispatcher("dns://127.0.0.1:53", [block], reactor=reactor, fast_path=False)
        made = []
        init = defer.Deferred.__init__

        def counting(self: Any, *a: Any, **kw: Any) -> None:
            made.append(self)
            init(self, *a, **kw)

        q = dns.message.make_query("example.com", "A")
        defer.Deferred.__init__ = counting  # type: ignore[method-assign]
        try:
            miss = disp.handle(q.to_wire(), "udp", ("127.0.0.1", 5))
        finally:
            defer.Deferred.__init__ = init  # type: ignore[method-assign]
        assert isinstance(miss, defer.Deferred)
        self.assertEqual(len(made), 1)
        data = await miss
        made.clear()
        defer.Deferred.__init__ = counting  # type: ignore[method-assign]
        try:
            hit = disp.handle(q.to_wire(), "udp", ("127.0.0.1", 5))
        finally:
            defer.Deferred.__init__ = init  # type: ignore[method-assign]
        self.assertEqual(made, [])
        assert isinstance(hit, bytes)
        a, b = dns.message.from_wire(data), dns.message.from_wire(hit)
        self.assertEqual([str(x) for x in a.answer], [str(x) for x in b.answer])
        self.assertEqual(a.answer[0].ttl, 30)

    async def test_no_reference_cycle_per_miss(self) -> None:
        """Misses through the whole path leave no cyclic garbage (the collector finds none)."""
        up = self.upstream()
        for i in range(20):
            up.add(f"n{i}.example.com", "A", "192.0.2.2")
        f = self.forwarder(config(up.address))
        chain = ForwardChain(f, Cache(CacheConfig(ttl=30)), reactor=reactor)
        block = Block(ServerBlock(zones=("",), listen=Address("127.0.0.1", 53)), chain=chain)
        disp = Dispatcher("dns://127.0.0.1:53", [block], reactor=reactor, fast_path=False)
        await disp.handle(dns.message.make_query("example.com", "A").to_wire(), "udp", ("127.0.0.1", 5))
        gc.collect()
        gc.disable()
        try:
            for i in range(20):
                got = disp.handle(dns.message.make_query(f"n{i}.example.com", "A").to_wire(), "udp", ("127.0.0.1", 5))
                assert isinstance(got, defer.Deferred)
                dns.message.from_wire(await got)
            self.assertEqual(gc.collect(), 0)
        finally:
            gc.enable()
