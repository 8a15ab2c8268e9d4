"""Forwarded answers with malformed names inside record data get what the decoding code gave.

Why: forwarded answers are relayed as the upstream's bytes when :func:`kubedns.dns.walk.walk_answer`
finds them of the plain shape.  The walk checked owner names and record bounds but not the names
inside record data (CNAME target, MX exchange, SRV target, SOA names...), so an answer the
decoding code refused (SERVFAIL to the client, as CoreDNS's forward gives when it cannot unpack
an answer) was relayed and cached as it came.  Here upstreams (tests/dnsupstream.py on loopback)
send such answers to a real ``twistd kubedns``, asked by dnspython over real UDP: (a) a CNAME
whose target points forward (at a pointer back to it), (b) a pointer loop in an MX exchange,
(c) an SRV whose target runs past its rdlength.  The client gets SERVFAIL and the server keeps
answering.  Unit tests of the walk check each case, and that well-formed names are accepted.
"""

from __future__ import annotations

import struct

import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest

from kubedns.dns.walk import walk_answer
from kubedns.dns.wire import scan_name
from kubedns.forward.message import decode_response
from kubedns.forward.relay import relayed_from_upstream
from tests.conftest import free_port
from tests.dnsupstream import DNSUpstream

pytestmark = pytest.mark.timeout(120)

_RR = struct.Struct("!HHIH")


def _qname(name: str) -> bytes:
    return b"".join(bytes([len(p)]) + p.encode() for p in name.strip(".").split(".")) + b"\x00"


def _build(head_question: bytes, records: list[tuple[int, object]]) -> bytes:
    """A response: ``head_question`` (header and question), then one record per ``(type, rdata)``
    with the question's name as owner; ``rdata`` is bytes or ``fn(offset of the rdata)``."""
    out = bytearray(head_question)
    struct.pack_into("!HHHH", out, 4, 1, len(records), 0, 0)
    for rtype, rdata in records:
        at = len(out) + 2 + _RR.size
        data = rdata(at) if callable(rdata) else rdata
        out += b"\xc0\x0c" + _RR.pack(rtype, 1, 300, len(data)) + data
    return bytes(out)


def _cname_forward(hq: bytes) -> bytes:
    # (a) the target is a pointer to the next two octets, a pointer back at the target
    return _build(hq, [(5, lambda at: b"\xc0" + bytes([at + 2]) + b"\xc0" + bytes([at]))])


def _mx_loop(hq: bytes) -> bytes:
    # (b) the exchange is "abc" then a pointer back at "abc": a loop
    return _build(hq, [(15, lambda at: b"\x00\x0a\x03abc\xc0" + bytes([at + 2]))])


def _srv_overrun(hq: bytes) -> bytes:
    # (c) the target's rdata holds the label "abc" only: the name goes on in the next record (its
    # owner, a pointer to the question); read that way, what follows is a name pointing at itself
    first = _build(hq, [(33, b"\x00\x00\x00\x05\x00\x35\x03abc"), (1, b"")])
    out = bytearray(first)
    t = len(first) - _RR.size  # the A record's type field, read as a name by a decoder that overran
    struct.pack_into("!H", out, t, 0xC000 | t)
    return bytes(out)


def _head_question(name: str, rtype: int) -> bytes:
    return struct.pack("!HHHHHH", 7, 0x8180, 1, 0, 0, 0) + _qname(name) + struct.pack("!HH", rtype, 1)


CASES = {"fwd": (dns.rdatatype.CNAME, _cname_forward), "loop": (dns.rdatatype.MX, _mx_loop),
         "srv": (dns.rdatatype.SRV, _srv_overrun)}


# -- the walk ------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", sorted(CASES))
def test_walk_refuses_malformed_names_in_data(case: str) -> None:
    rtype, make = CASES[case]
    data = make(_head_question("x.bad.test", rtype))
    assert walk_answer(data) is None
    with pytest.raises(ValueError):  # the old way: the decoding code refuses it (the try fails)
        decode_response(data)
    with pytest.raises(ValueError):
        relayed_from_upstream(data)


def test_walk_accepts_well_formed_names_in_data() -> None:
    hq = _head_question("x.bad.test", dns.rdatatype.ANY)
    name = _qname("t.bad.test")
    soa = b"\xc0\x0c" + b"\x02hm\xc0\x0c" + struct.pack("!5I", 1, 2, 3, 4, 5)
    naptr = struct.pack("!HH", 10, 20) + b"\x01U\x07E2U+sip\x00" + name
    records = [(5, b"\x01c\xc0\x0c"), (15, b"\x00\x0a\xc0\x0c"), (33, b"\x00\x00\x00\x05\x00\x35" + name),
               (6, soa), (35, naptr), (17, b"\xc0\x0c\x00"), (39, name), (12, b"\x00"),
               (16, b"\x03txt")]  # TXT: not a name, not looked at
    w = walk_answer(_build(hq, records))
    assert w is not None and w.an == len(records)


@pytest.mark.parametrize("rtype, rdata", [
    (6, b"\xc0\x0c\xc0\x0c" + b"\x00" * 19),  # SOA: the fixed fields one octet short
    (6, b"\xc0\x0c\xc0\x0c" + b"\x00" * 21),  # ... one octet long
    (15, b"\x00\x0a\xc0\x0c\x00"),  # MX: an octet after the exchange
    (15, b"\x00"),  # MX: no room for the exchange
    (2, b"\x40" + b"a" * 64 + b"\x00"),  # NS: a 64-octet label
    (12, b"\x3fa" + b"\x3f" + b"b" * 63 + b"\x3f" + b"c" * 63 + b"\x3f" + b"d" * 63 + b"\x00"),  # over 255
    (35, struct.pack("!HH", 1, 1) + b"\x05ab"),  # NAPTR: a string running past the data
    (5, b"\xc0\x40"),  # CNAME: a pointer past the end of the message
])
def test_walk_refuses_each_malformed_shape(rtype: int, rdata: bytes) -> None:
    hq = _head_question("x.bad.test", rtype)
    assert walk_answer(_build(hq, [(rtype, rdata)])) is None
    assert walk_answer(_build(hq, [(16, b"\x01a")])) is not None  # the same message, well formed


def test_fallback_keeps_what_the_decoder_reads() -> None:
    # a forward pointer to a well-formed name decodes: the answer is re-encoded (as the decoding
    # code did), never relayed with the forward pointer in it
    hq = _head_question("x.bad.test", dns.rdatatype.CNAME)
    data = _build(hq, [(5, lambda at: b"\xc0" + bytes([at + 2])), (1, b"\x7f\x00\x00\x01")])
    assert walk_answer(data) is None
    r = relayed_from_upstream(data)
    assert r.wire != data and walk_answer(r.wire) is not None
    m = dns.message.from_wire(r.wire)
    assert [rr.rdtype for rr in m.answer] == [dns.rdatatype.CNAME, dns.rdatatype.A]


# -- end to end ----------------------------------------------------------------------------------


def _rewrite(q: dns.message.Message, wire: bytes) -> bytes:
    first = q.question[0].name.labels[0].decode().lower()
    if first not in CASES:
        return wire
    end = scan_name(wire, 12)
    assert end is not None
    hq = bytearray(wire[: end + 4])
    hq[3] &= 0xF0  # rcode NOERROR
    return CASES[first][1](bytes(hq))


@pytest.fixture
def server(kubedns_process):
    up = DNSUpstream(host="127.0.0.1").start()
    data = {dns.rdatatype.CNAME: "a.bad.test.", dns.rdatatype.MX: "10 a.bad.test.",
            dns.rdatatype.SRV: "0 5 53 a.bad.test."}
    for zone in ("bad.test", "plain.bad.test"):
        for case, (rtype, _) in CASES.items():
            up.add(f"{case}.{zone}", dns.rdatatype.to_text(rtype), data[rtype])
        up.add(f"ok.{zone}", "A", "192.0.2.1")
    up.rewrite = _rewrite
    port = free_port()
    listen = f"127.0.0.1:{port}"
    cfg = {"servers": [
        {"zones": ["bad.test"], "listen": listen, "forward": {"to": [up.address]}, "cache": 30},
        {"zones": ["plain.bad.test"], "listen": listen, "forward": {"to": [up.address]}},
    ]}
    p = kubedns_process(cfg)
    p.wait_listening(port)
    yield port, up
    up.stop()


def _ask(port: int, name: str, rtype: int) -> dns.message.Message:
    return dns.query.udp(dns.message.make_query(name, rtype), "127.0.0.1", port=port, timeout=10)


@pytest.mark.parametrize("zone", ["bad.test", "plain.bad.test"])  # with a cache, and without
def test_client_gets_servfail_and_server_keeps_answering(server, zone: str) -> None:
    port, up = server
    for case, (rtype, _) in sorted(CASES.items()):
        for _ in range(2):  # the second time: nothing malformed was cached
            r = _ask(port, f"{case}.{zone}", rtype)
            assert r.rcode() == dns.rcode.SERVFAIL, (case, r)
            assert not r.answer
        ok = _ask(port, f"ok.{zone}", dns.rdatatype.A)
        assert ok.rcode() == dns.rcode.NOERROR
        assert [rd.to_text() for rrset in ok.answer for rd in rrset] == ["192.0.2.1"]
