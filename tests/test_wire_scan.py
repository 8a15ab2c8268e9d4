"""The hand walk over a query's extra records (kubedns.dns.wire.scan_name / scan_query_records).

Pure logic over byte strings built here: names must stay within 255 octets and point strictly
backwards, records must fit, an OPT must be a single root-owned additional record, and no more
records than miekg/dns (CoreDNS) accepts in a query.
"""

from __future__ import annotations

import struct

import dns.message
import dns.rdataclass
import dns.rdatatype
import dns.tsigkeyring

from kubedns.dns.wire import parse_question, scan_name, scan_query_records

HDR = struct.Struct("!HHHHHH")
RR = struct.Struct("!HHIH")
Q = b"\x03www\x07example\x03com\x00" + struct.pack("!HH", 1, 1)


def _packet(an: int, ns: int, ar: int, records: bytes) -> bytes:
    return HDR.pack(1, 0x0100, 1, an, ns, ar) + Q + records


def test_scan_name_plain_pointer_and_root() -> None:
    buf = b"\x00" * 12 + Q
    assert scan_name(buf, 12) == 12 + len(Q) - 4
    ptr = buf + b"\xc0\x0c"
    assert scan_name(ptr, len(buf)) == len(buf) + 2
    assert scan_name(b"\x00", 0) == 1


def test_scan_name_rejects_loops_forward_pointers_and_long_names() -> None:
    assert scan_name(b"\x00" * 12 + b"\xc0\x0c", 12) is None  # points at itself
    assert scan_name(b"\x00" * 12 + b"\xc0\x10\x00\x00\x00", 12) is None  # points forwards
    assert scan_name(b"\x00" * 12 + b"\x80\x00", 12) is None  # reserved label type
    assert scan_name(b"\x05ab", 0) is None  # runs past the end
    long = b"".join(b"\x3f" + b"a" * 63 for _ in range(4)) + b"\x00"  # 257 octets
    assert scan_name(long, 0) is None
    # 200 octets, then a pointer back to a 64-octet name: 264 expanded octets
    base = b"\x3f" + b"b" * 63 + b"\x00"
    head = b"".join(b"\x31" + b"c" * 49 for _ in range(4))
    assert scan_name(base + head + b"\xc0\x00", len(base)) is None
    assert scan_name(base + head[:150] + b"\xc0\x00", len(base)) == len(base) + 152


def _rr(name: bytes, rtype: int, rclass: int = 1, ttl: int = 0, rdata: bytes = b"") -> bytes:
    return name + RR.pack(rtype, rclass, ttl, len(rdata)) + rdata


def test_notify_soa_and_tsig_beside_opt_are_accepted() -> None:
    soa = _rr(b"\xc0\x0c", 6, rdata=b"\x00\x00" + b"\x00" * 20)
    opt = _rr(b"\x00", 41, rclass=1232, ttl=0x8000)
    tsig = _rr(b"\x03key\x00", 250, rclass=255, rdata=b"\x00" * 30)
    pkt = _packet(1, 0, 2, soa + opt + tsig)
    edns, ok = scan_query_records(pkt, parse_question(pkt))
    assert ok and edns is not None and edns.udp_size == 1232 and edns.do


def test_real_tsig_signed_query_is_accepted() -> None:
    q = dns.message.make_query("www.example.com", "A", use_edns=0)
    q.use_tsig(dns.tsigkeyring.from_text({"k.": "c2VjcmV0"}), keyname="k.")
    wire = q.to_wire()
    edns, ok = scan_query_records(wire, parse_question(wire))
    assert ok and edns is not None


def _scan(pkt: bytes):
    return scan_query_records(pkt, parse_question(pkt))


def test_too_many_records_bad_opts_and_short_records_are_malformed() -> None:
    opt = _rr(b"\x00", 41, rclass=1232)
    a = _rr(b"\xc0\x0c", 1, rdata=b"\x7f\x00\x00\x01")
    assert _scan(_packet(2, 0, 0, a + a)) is None
    assert _scan(_packet(0, 0, 3, a + a + a)) is None
    two_opts = _packet(0, 0, 2, opt + opt)
    assert scan_query_records(two_opts, parse_question(two_opts))[1] is False
    assert _scan(_packet(1, 0, 0, opt))[1] is False  # OPT as an answer
    assert _scan(_packet(0, 0, 2, a + _rr(b"\x01x\x00", 41)))[1] is False
    assert _scan(_packet(1, 0, 0, a[:-1])) is None  # rdata cut short
    assert _scan(_packet(0, 1, 0, b"\xc0\x40" + a[2:])) is None
