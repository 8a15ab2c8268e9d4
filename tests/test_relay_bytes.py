"""Byte-equality of forwarded answers: what a client receives for a forwarded name, byte for byte.

Why: forwarded answers are relayed as the upstream's bytes (kubedns/forward/relay.py) instead of
being decoded to twisted.names objects and encoded again.  The client must not see the change:
this test sends a fixed set of queries (A, AAAA, CNAME chains, NXDOMAIN and NODATA with SOA,
SERVFAIL, answers too large for 512 bytes over UDP with and without EDNS, DO, ECS, COOKIE from the
client and from the upstream, EDE/NSID/unknown options, AD, upper- and mixed-case names, TXT with
many strings, MX/NS/SRV/PTR with names to compress, TCP) through a real ``twistd kubedns`` process
to tests/dnsupstream.py upstreams, and compares every answer's bytes with the ones the decoding
code (commit 3235f85) sent, recorded in tests/relay_golden.json.  Each query is asked twice (a
miss, then a cache or fast-path hit, the second time in another case for some), so the relay,
the cache and the fast path are all covered.  TTLs may differ by the seconds a hit aged (at most
2); every other byte must be equal.

``KUBEDNS_RELAY_GOLDEN_WRITE=1`` rewrites the golden file from the code under test (only ever
done on the decoding code, to record what it sent).
"""

from __future__ import annotations

import json
import os
import socket
import struct
from pathlib import Path

import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.rdataset
import dns.rdatatype
import dns.rrset
import pytest

from tests.conftest import free_port
from tests.dnsupstream import DNSUpstream

pytestmark = pytest.mark.timeout(120)

GOLDEN = Path(__file__).with_name("relay_golden.json")
NSID, COOKIE, PADDING, EDE, ECS = 3, 10, 12, 15, 8
UNKNOWN = 65001
QID = 0x4A5B


def _fill(up: DNSUpstream, zone: str) -> None:
    z = zone
    up.add(f"a.{z}", "A", "192.0.2.1")
    up.add(f"a.{z}", "AAAA", "2001:db8::1")
    up.add(f"many.{z}", "A", *[f"192.0.2.{i}" for i in range(1, 9)])
    up.add(f"mx.{z}", "MX", f"10 mail.{z}.", f"20 mail2.{z}.", "30 mail.other.test.")
    up.add(f"ns.{z}", "NS", f"ns1.{z}.", f"ns2.{z}.")
    up.add(f"srv.{z}", "SRV", f"0 5 53 t1.{z}.", f"10 5 53 t2.{z}.")
    up.add(f"1.2.0.192.in-addr.{z}", "PTR", f"host.{z}.")
    up.add(f"txt.{z}", "TXT", " ".join(f'"string-{i:03d}-' + "x" * 20 + '"' for i in range(30)))
    up.add(f"bigtxt.{z}", "TXT", *[f'"record-{i:03d}-' + "y" * 40 + '"' for i in range(40)])
    up.add(f"mid.{z}", "TXT", *[f'"record-{i:03d}-' + "z" * 40 + '"' for i in range(14)])
    up.add(f"opts.{z}", "A", "192.0.2.7")
    up.add(f"ecs.{z}", "A", "192.0.2.8")
    up.add(f"ad.{z}", "A", "192.0.2.9")
    up.add(f"ttl0.{z}", "A", "192.0.2.10", ttl=0)
    up.add(f"low.{z}", "A", "192.0.2.11", ttl=7)


def _shape(q: dns.message.Message, r: dns.message.Message) -> None:
    """Per-name answers: CNAME chains, upstream options, AD."""
    name = q.question[0].name
    first = name.labels[0].lower() if name.labels else b""
    if first == b"www" and q.question[0].rdtype == dns.rdatatype.A:
        origin = name.parent()
        b = dns.name.Name((b"b",) + origin.labels)
        c = dns.name.Name((b"c",) + origin.labels)
        r.answer = [
            dns.rrset.from_text(name, 300, "IN", "CNAME", b.to_text()),
            dns.rrset.from_text(b, 200, "IN", "CNAME", c.to_text()),
            dns.rrset.from_text(c, 100, "IN", "A", "192.0.2.50", "192.0.2.51"),
        ]
        r.set_rcode(0)
        r.authority = []
    elif first == b"opts":
        r.use_edns(0, payload=1232, options=[
            dns.edns.GenericOption(COOKIE, b"\x01" * 8 + b"\x02" * 16),
            dns.edns.GenericOption(EDE, b"\x00\x03stale"),
            dns.edns.GenericOption(NSID, b"up-1"),
            dns.edns.GenericOption(UNKNOWN, b"opaque"),
        ])
    elif first == b"ecs":
        for o in q.options:
            if int(o.otype) == ECS:
                r.use_edns(0, payload=1232, options=[dns.edns.ECSOption(o.address, o.srclen, 24)])
    elif first == b"ad":
        r.flags |= dns.flags.AD


CLIENT_OPTS = [dns.edns.ECSOption("198.51.100.0", 24), dns.edns.GenericOption(COOKIE, b"\x09" * 8),
               dns.edns.GenericOption(NSID, b""), dns.edns.GenericOption(UNKNOWN, b"mine"),
               dns.edns.GenericOption(PADDING, b"\x00" * 8)]


def _cases(z: str) -> list[tuple[str, str, str, dict, str]]:
    """(case id, name, type, make_query kwargs, second-ask name) for zone ``z``."""
    e0 = {"use_edns": 0}
    do = {"use_edns": 0, "want_dnssec": True}
    big = {"use_edns": 0, "payload": 4096}
    out = [
        ("a", f"a.{z}", "A", {}, f"a.{z}"),
        ("a-edns", f"a.{z}", "A", e0, f"A.{z.upper()}"),
        ("aaaa", f"a.{z}", "AAAA", do, f"a.{z}"),
        ("upper", f"A.{z.upper()}", "AAAA", e0, f"a.{z}"),
        ("mixed-many", f"MaNy.{z}", "A", e0, f"many.{z.upper()}"),
        ("cname", f"www.{z}", "A", e0, f"WWW.{z}"),
        ("cname-noedns", f"Www.{z}", "A", {}, f"www.{z}"),
        ("nxdomain", f"nope.{z}", "A", e0, f"NOPE.{z}"),
        ("nxdomain-noedns", f"nope2.{z}", "A", {}, f"nope2.{z}"),
        ("nodata", f"a.{z}", "MX", e0, f"a.{z}"),
        ("nodata-do", f"a.{z}", "TXT", do, f"a.{z}"),
        ("mx", f"mx.{z}", "MX", e0, f"MX.{z}"),
        ("ns", f"ns.{z}", "NS", {}, f"ns.{z}"),
        ("srv", f"srv.{z}", "SRV", e0, f"srv.{z}"),
        ("ptr", f"1.2.0.192.in-addr.{z}", "PTR", e0, f"1.2.0.192.IN-ADDR.{z}"),
        ("txt-many-strings", f"txt.{z}", "TXT", big, f"txt.{z}"),
        ("txt-trunc-noedns", f"txt.{z}", "TXT", {}, f"TXT.{z}"),
        ("mid-trunc-512", f"mid.{z}", "TXT", {"use_edns": 0, "payload": 512}, f"mid.{z}"),
        ("mid-whole", f"mid.{z}", "TXT", big, f"Mid.{z}"),
        ("bigtxt-udp", f"bigtxt.{z}", "TXT", big, f"bigtxt.{z}"),
        ("bigtxt-noedns", f"bigtxt.{z}", "TXT", {}, f"bigtxt.{z}"),
        ("opts", f"opts.{z}", "A", e0, f"opts.{z}"),
        ("opts-noedns", f"opts.{z}", "A", {}, f"OPTS.{z}"),
        ("client-opts", f"ecs.{z}", "A", {"use_edns": 0, "options": CLIENT_OPTS}, f"ecs.{z}"),
        ("ecs", f"ecs.{z}", "A", {"use_edns": 0, "options": [dns.edns.ECSOption("203.0.113.0", 24)]},
         f"ECS.{z}"),
        ("ad", f"ad.{z}", "A", {"use_edns": 0, "want_dnssec": True}, f"ad.{z}"),
        ("ttl0", f"ttl0.{z}", "A", e0, f"ttl0.{z}"),
        ("low-ttl", f"low.{z}", "A", e0, f"low.{z}"),
    ]
    return out


def _query_bytes(name: str, rdtype: str, kw: dict, flags_ad_cd: bool = False) -> bytes:
    q = dns.message.make_query(name, rdtype, **kw)
    q.id = QID
    if flags_ad_cd:
        q.flags |= dns.flags.AD | dns.flags.CD
    return q.to_wire()


def _ask(port: int, wire: bytes, tcp: bool) -> bytes:
    if tcp:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(struct.pack("!H", len(wire)) + wire)
            head = b""
            while len(head) < 2:
                head += s.recv(2 - len(head))
            n = struct.unpack("!H", head)[0]
            data = b""
            while len(data) < n:
                chunk = s.recv(n - len(data))
                assert chunk, "connection closed mid-answer"
                data += chunk
            return data
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(5)
        s.sendto(wire, ("127.0.0.1", port))
        while True:
            data, _ = s.recvfrom(65535)
            if data[:2] == wire[:2]:
                return data


def _name_end(buf: bytes, pos: int) -> int:
    while True:
        ln = buf[pos]
        if ln >= 0xC0:
            return pos + 2
        if ln == 0:
            return pos + 1
        pos += 1 + ln


def ttl_offsets(buf: bytes) -> list[int]:
    """Offsets of every record's TTL field but the OPT's (a walk of its own, not kubedns's)."""
    qd, an, ns, ar = struct.unpack_from("!HHHH", buf, 4)
    pos = 12
    for _ in range(qd):
        pos = _name_end(buf, pos) + 4
    out = []
    for _ in range(an + ns + ar):
        pos = _name_end(buf, pos)
        rtype, _, _, rdlen = struct.unpack_from("!HHIH", buf, pos)
        if rtype != 41:
            out.append(pos + 4)
        pos += 10 + rdlen
    assert pos == len(buf), "trailing bytes"
    return out


def same_but_ttl_age(got: bytes, want: bytes, slack: int = 2) -> str | None:
    """None if ``got`` equals ``want`` but for TTLs at most ``slack`` lower; else what differs."""
    if len(got) != len(want):
        return f"length {len(got)} != {len(want)}"
    offs = ttl_offsets(want)
    g, w = bytearray(got), bytearray(want)
    for off in offs:
        gt, wt = struct.unpack_from("!I", g, off)[0], struct.unpack_from("!I", w, off)[0]
        if not (wt - slack <= gt <= wt):
            return f"TTL at {off}: {gt} vs {wt}"
        struct.pack_into("!I", g, off, 0)
        struct.pack_into("!I", w, off, 0)
    if g != w:
        first = next(i for i in range(len(g)) if g[i] != w[i])
        return f"byte {first} differs"
    return None


@pytest.fixture
def setup(kubedns_process, monkeypatch):
    # dnspython shuffles the records of a set on the wire: the upstream must answer the same bytes
    plain = dns.rdataset.Rdataset.to_wire
    monkeypatch.setattr(dns.rdataset.Rdataset, "to_wire",
                        lambda self, *a, **kw: plain(self, *a, **{**kw, "want_shuffle": False}))
    up = DNSUpstream(host="127.0.0.1").start()
    bad = DNSUpstream(host="127.0.0.1").start()
    bad.mode = "servfail"
    for z in ("cached.test", "plain.test"):
        _fill(up, z)
        up.set_soa(z)
    up.shape = _shape
    port = free_port()
    listen = f"127.0.0.1:{port}"
    cfg = {"servers": [
        {"zones": ["cached.test"], "listen": listen, "forward": {"to": [up.address]}, "cache": 30},
        {"zones": ["plain.test"], "listen": listen, "forward": {"to": [up.address]}},
        {"zones": ["fail.test"], "listen": listen, "forward": {"to": [bad.address]}, "cache": 30},
        {"zones": ["."], "listen": listen, "forward": {"to": [bad.address]}},
    ]}
    p = kubedns_process(cfg)
    p.wait_listening(port)
    yield port
    up.stop()
    bad.stop()


def _run_all(port: int) -> dict[str, list[str]]:
    got: dict[str, list[str]] = {}
    for z in ("cached.test", "plain.test"):
        for cid, name, rdtype, kw, again in _cases(z):
            for tcp in (False, True) if cid in ("bigtxt-udp", "txt-trunc-noedns", "cname", "opts", "nxdomain") else (False,):
                key = f"{z}/{cid}/{'tcp' if tcp else 'udp'}"
                first = _ask(port, _query_bytes(name, rdtype, kw), tcp)
                second = _ask(port, _query_bytes(again, rdtype, kw), tcp)
                got[key] = [first.hex(), second.hex()]
    for cid, name, kw in (("servfail", "x.fail.test", {"use_edns": 0}), ("servfail-noedns", "y.FAIL.test", {})):
        got[f"fail/{cid}/udp"] = [_ask(port, _query_bytes(name, "A", kw), False).hex(),
                                  _ask(port, _query_bytes(name, "A", kw), False).hex()]
    got["cached.test/ad-cd/udp"] = [_ask(port, _query_bytes("a.cached.test", "A", {"use_edns": 0}, True), False).hex(),
                                    _ask(port, _query_bytes("a.cached.test", "A", {"use_edns": 0}, True), False).hex()]
    return got


def test_forwarded_answers_are_byte_identical(setup) -> None:
    got = _run_all(setup)
    if os.environ.get("KUBEDNS_RELAY_GOLDEN_WRITE"):
        GOLDEN.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
        pytest.skip("golden file written")
    want = json.loads(GOLDEN.read_text())
    assert sorted(got) == sorted(want)
    bad = []
    for key in sorted(want):
        for i, (g, w) in enumerate(zip(got[key], want[key], strict=True)):
            why = same_but_ttl_age(bytes.fromhex(g), bytes.fromhex(w))
            if why is not None:
                bad.append(f"{key} ask {i + 1}: {why}\n  got  {g}\n  want {w}")
    assert not bad, "\n".join(bad)
