"""EDNS through forwarding: what the client puts in its OPT record reaches the upstream, and what the
upstream answers with comes back, through the real ``twistd kubedns`` process over UDP and TCP.

The upstream (tests/dnsupstream.py on 127.0.0.x) records every option it receives and shapes its
answers per test (options, AD, extended rcode, an answer per client subnet).  COOKIE and
edns-tcp-keepalive are per hop (see kubedns/forward/message.py) and must not cross in either
direction.  The cache and the fast path must never hand an answer tailored to one client subnet,
DO, CD or AD to a query with another.
"""

from __future__ import annotations

import dns.edns
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rrset
import pytest
from twisted.names import dns as tdns

from kubedns.forward.cache import cache_key
from kubedns.forward.message import answer_options, build_query, client_edns, decode_response, relay_options
from tests.conftest import free_port, rrset_text
from tests.dnsupstream import DNSUpstream

pytestmark = pytest.mark.timeout(60)

NSID, COOKIE, KEEPALIVE, PADDING, EDE, ECS = 3, 10, 11, 12, 15, 8
UNKNOWN = 65001  # a private-use option code nobody knows: relayed as is


@pytest.fixture
def up():
    u = DNSUpstream(host="127.0.0.1").start()
    yield u
    u.stop()


def _start(kubedns_process, up: DNSUpstream, *, cache: bool = False) -> int:
    port = free_port()
    block: dict = {"zones": ["."], "listen": f"127.0.0.1:{port}", "forward": {"to": [up.address]}}
    if cache:
        block["cache"] = 30
    p = kubedns_process({"servers": [block]})
    p.wait_listening(port)
    up.reset()  # wait_listening's probe went upstream
    return port


def _ask(port: int, q: dns.message.Message, tcp: bool) -> dns.message.Message:
    if tcp:
        return dns.query.tcp(q, "127.0.0.1", port=port, timeout=5)
    return dns.query.udp(q, "127.0.0.1", port=port, timeout=5)


def _options(msg: dns.message.Message) -> dict[int, bytes]:
    return {int(o.otype): o.to_wire() for o in msg.options}


CLIENT_OPTIONS = [
    dns.edns.ECSOption("192.0.2.0", 24),
    dns.edns.GenericOption(NSID, b""),  # "send me your NSID"
    dns.edns.GenericOption(UNKNOWN, b"opaque-to-us"),
    dns.edns.GenericOption(COOKIE, b"\x01\x02\x03\x04\x05\x06\x07\x08"),  # a client cookie: per hop
    dns.edns.GenericOption(PADDING, b"\x00" * 16),
]


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_client_options_and_bits_reach_the_upstream(kubedns_process, up: DNSUpstream, tcp: bool) -> None:
    up.add("example.org", "A", "192.0.2.10")
    port = _start(kubedns_process, up)
    q = dns.message.make_query("example.org", "A", use_edns=0, want_dnssec=True, options=CLIENT_OPTIONS)
    q.flags |= dns.flags.AD | dns.flags.CD
    r = _ask(port, q, tcp)
    assert rrset_text(r) == ["example.org A 192.0.2.10"]
    assert up.wait_for(1, name="example.org")
    got = [x for x in up.queries if x.name == "example.org"][0]
    assert got.ad and got.cd and got.do and got.rd
    assert got.option(ECS) == dns.edns.ECSOption("192.0.2.0", 24).to_wire()
    assert got.option(NSID) == b""
    assert got.option(UNKNOWN) == b"opaque-to-us"
    assert got.option(PADDING) == b"\x00" * 16
    assert got.option(COOKIE) is None  # RFC 7873: the client's cookie is for us, not the upstream
    # a query without AD or options sends neither
    up.add("plain.example.org", "A", "192.0.2.11")
    _ask(port, dns.message.make_query("plain.example.org", "A", use_edns=0), tcp)
    plain = [x for x in up.queries if x.name == "plain.example.org"][0]
    assert not plain.ad and not plain.cd and plain.options == ()


def _shape_with_options(q: dns.message.Message, r: dns.message.Message) -> None:
    """Answer as an upstream with ECS, NSID and EDE support does (and with a cookie and keepalive)."""
    ecs = next((o for o in q.options if o.otype == ECS), None)
    opts: list[dns.edns.Option] = [
        dns.edns.GenericOption(NSID, b"upstream-1"),
        dns.edns.EDEOption(dns.edns.EDECode.PROHIBITED, "filtered by policy"),
        dns.edns.GenericOption(UNKNOWN, b"from-upstream"),
        dns.edns.GenericOption(COOKIE, b"\x01" * 8 + b"\x02" * 16),  # client + server cookie
        dns.edns.GenericOption(KEEPALIVE, b"\x00\x64"),
    ]
    if ecs is not None:
        opts.insert(0, dns.edns.ECSOption(ecs.address, ecs.srclen, 24))  # scope /24
    r.use_edns(0, dns.flags.DO if q.ednsflags & dns.flags.DO else 0, 1232, options=opts)
    r.flags |= dns.flags.AD
    if q.question[0].name.to_text() == "ext-rcode.example.org.":
        r.set_rcode(23)  # an extended rcode (BADCOOKIE): 7 in the header, 1 in the OPT


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_upstream_options_flags_and_extended_rcode_come_back(kubedns_process, up: DNSUpstream, tcp: bool) -> None:
    up.add("example.org", "A", "192.0.2.10")
    up.shape = _shape_with_options
    port = _start(kubedns_process, up)
    q = dns.message.make_query("example.org", "A", use_edns=0, options=[dns.edns.ECSOption("192.0.2.0", 24)])
    q.flags |= dns.flags.AD
    r = _ask(port, q, tcp)
    assert rrset_text(r) == ["example.org A 192.0.2.10"]
    assert r.flags & dns.flags.AD
    opts = _options(r)
    assert opts[ECS] == dns.edns.ECSOption("192.0.2.0", 24, 24).to_wire()
    assert opts[NSID] == b"upstream-1"
    assert opts[EDE] == dns.edns.EDEOption(dns.edns.EDECode.PROHIBITED, "filtered by policy").to_wire()
    assert opts[UNKNOWN] == b"from-upstream"
    assert COOKIE not in opts and KEEPALIVE not in opts  # the upstream's cookie is for us
    r = _ask(port, dns.message.make_query("ext-rcode.example.org", "A", use_edns=0), tcp)
    assert r.rcode() == 23
    # a client without EDNS gets no OPT at all (options cannot be sent to it)
    r = _ask(port, dns.message.make_query("example.org", "A", use_edns=False), tcp)
    assert r.edns < 0 and rrset_text(r) == ["example.org A 192.0.2.10"]


def _shape_per_subnet(q: dns.message.Message, r: dns.message.Message) -> None:
    """A geo-aware upstream: the answer depends on the client subnet, DO, CD and AD."""
    ecs = next((o for o in q.options if o.otype == ECS), None)
    last = {"192.0.2.0": 1, "198.51.100.0": 2}.get(ecs.address, 9) if ecs is not None else 0
    last += 10 * bool(q.ednsflags & dns.flags.DO) + 20 * bool(q.flags & dns.flags.CD) + 40 * bool(q.flags & dns.flags.AD)
    r.answer = [dns.rrset.from_text(q.question[0].name, 300, "IN", "A", f"203.0.113.{last}")]
    if ecs is not None:
        r.use_edns(0, 0, 1232, options=[dns.edns.ECSOption(ecs.address, ecs.srclen, ecs.srclen)])


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_cache_and_fast_path_keep_subnets_do_cd_ad_apart(kubedns_process, up: DNSUpstream, tcp: bool) -> None:
    """Each variant is asked three times: the first goes upstream, the repeats come from the cache
    (over UDP the fast path's pre-encoded answers, keyed by the query bytes, serve them) and are
    the variant's own answer."""
    up.add("geo.example.org", "A", "203.0.113.250")
    up.shape = _shape_per_subnet
    port = _start(kubedns_process, up, cache=True)
    variants = [  # (ECS, DO, CD, AD) -> last octet
        ((None, False, False, False), 0),
        ((("192.0.2.0", 24), False, False, False), 1),
        ((("198.51.100.0", 24), False, False, False), 2),
        ((("192.0.2.0", 16), False, False, False), 9),  # same address, another source prefix
        ((None, True, False, False), 10),
        ((None, False, True, False), 20),
        ((None, False, False, True), 40),
        ((("192.0.2.0", 24), True, True, False), 31),
    ]
    for round_ in range(3):
        for (ecs, do, cd, ad), last in variants:
            opts = [dns.edns.ECSOption(*ecs)] if ecs else []
            q = dns.message.make_query("geo.example.org", "A", use_edns=0, want_dnssec=do, options=opts)
            if cd:
                q.flags |= dns.flags.CD
            if ad:
                q.flags |= dns.flags.AD
            r = _ask(port, q, tcp)
            assert rrset_text(r) == [f"geo.example.org A 203.0.113.{last}"], (round_, ecs, do, cd, ad)
            if ecs:
                assert _options(r)[ECS] == dns.edns.ECSOption(ecs[0], ecs[1], ecs[1]).to_wire()
            else:
                assert ECS not in _options(r)
    assert up.count("geo.example.org") == len(variants)  # once per variant: the repeats were cached


# -- the bytes-level pieces ------------------------------------------------------------------------


def _opt(code: int, data: bytes) -> bytes:
    return code.to_bytes(2, "big") + len(data).to_bytes(2, "big") + data


def test_relay_options_drops_per_hop_options_and_malformed_lists() -> None:
    ecs = _opt(ECS, b"\x00\x01\x18\x00\xc0\x00\x02")
    assert relay_options(b"") == b""
    assert relay_options(ecs) == ecs
    assert relay_options(_opt(COOKIE, b"\x01" * 8) + ecs + _opt(KEEPALIVE, b"")) == ecs
    assert relay_options(ecs + b"\x00\x08\x00\x09\x00") == b""  # option runs past the end
    assert relay_options(ecs + b"\x00") == b""  # half a header


def test_build_query_carries_ad_and_options() -> None:
    opts = _opt(NSID, b"") + _opt(UNKNOWN, b"x")
    wire = build_query(b"example.org", tdns.A, tdns.IN, rd=True, cd=False, do=True, ad=True, options=opts)
    m = dns.message.from_wire(wire)
    assert m.flags & dns.flags.AD and m.flags & dns.flags.RD and not m.flags & dns.flags.CD
    assert m.ednsflags & dns.flags.DO
    assert _options(m) == {NSID: b"", UNKNOWN: b"x"}


def test_decode_response_folds_extended_rcode_and_keeps_relayable_options() -> None:
    q = dns.message.make_query("example.org", "A", use_edns=0)
    r = dns.message.make_response(q)
    r.use_edns(0, 0, 1232, options=[dns.edns.GenericOption(NSID, b"n1"), dns.edns.GenericOption(COOKIE, b"\x01" * 24)])
    r.set_rcode(23)
    m = decode_response(r.to_wire())
    assert m.rCode == 23
    assert answer_options(m) == _opt(NSID, b"n1")
    assert m.wire_size == len(r.to_wire())
    # without options the OPT record is dropped altogether
    r2 = dns.message.make_response(q)
    m2 = decode_response(r2.to_wire())
    assert answer_options(m2) == b"" and all(rr.type != tdns.OPT for rr in m2.additional)


def test_client_edns_and_cache_key_from_a_decoded_query() -> None:
    q = dns.message.make_query("Example.ORG", "A", use_edns=0, want_dnssec=True,
                               options=[dns.edns.ECSOption("192.0.2.0", 24), dns.edns.GenericOption(COOKIE, b"\x01" * 8)])
    q.flags |= dns.flags.AD
    m = tdns.Message()
    m.fromStr(q.to_wire())
    rd, cd, do, ad, opts = client_edns(m)
    assert (rd, cd, do, ad) == (True, False, True, True)
    assert opts == _opt(ECS, dns.edns.ECSOption("192.0.2.0", 24).to_wire())
    assert cache_key(m) == (b"example.org", tdns.A, tdns.IN, True, False, True, dns.edns.ECSOption("192.0.2.0", 24).to_wire())


def test_query_edns_options_reads_the_opt_whatever_the_shape() -> None:
    """The usual query (OPT last and alone) and one with a TSIG after the OPT (walked by hand)."""
    import dns.tsigkeyring

    from kubedns.dns.wire import parse_question, query_edns_options

    ecs = dns.edns.ECSOption("192.0.2.0", 24)
    q = dns.message.make_query("example.org", "A", use_edns=0, options=[ecs])
    wire = q.to_wire()
    assert query_edns_options(wire, parse_question(wire)) == _opt(ECS, ecs.to_wire())
    q.use_tsig(dns.tsigkeyring.from_text({"k.": "c2VjcmV0c2VjcmV0c2VjcmV0"}), keyname="k.")
    wire = q.to_wire()
    pq = parse_question(wire)
    assert pq.arcount == 2
    assert query_edns_options(wire, pq) == _opt(ECS, ecs.to_wire())
    plain = dns.message.make_query("example.org", "A", use_edns=False).to_wire()
    assert query_edns_options(plain, parse_question(plain)) == b""
    q2 = dns.message.make_query("example.org", "A", use_edns=False)
    q2.use_tsig(dns.tsigkeyring.from_text({"k.": "c2VjcmV0c2VjcmV0c2VjcmV0"}), keyname="k.")
    only_tsig = q2.to_wire()
    assert query_edns_options(only_tsig, parse_question(only_tsig)) == b""
