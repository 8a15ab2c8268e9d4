"""The ``any``, ``bufsize`` and ``minimal`` plugins, as CoreDNS's.

Config in both syntaxes; ``minimal``'s classification (CoreDNS's ``response.Typify``) as pure
logic; the fast path serving the same bytes as the slow path for each; and one real ``twistd
kubedns`` with four blocks on four ports (plain, ``any`` + ``minimal``, ``bufsize 1100``, bare
``bufsize``) over a manifests cluster, forwarding to a tests/dnsupstream.py server on 127.0.0.3,
queried over real UDP and TCP.
"""

from __future__ import annotations

import struct
import time

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest
import yaml
from twisted.names import dns as tdns

from kubedns.config import ConfigError, parse
from kubedns.corefile import CorefileSyntaxError, parse_corefile_config
from kubedns.dns.records import Answer
from kubedns.plugins.minimal import positive
from tests.conftest import free_port, query, rrset_text
from tests.dnsupstream import DNSUpstream
from tests.support.cluster import cluster_objects, write_manifests
from tests.support.policy import PluginDispatcher


# -- config ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("directives, keys, expected", [
    ("any\nminimal", {"any": {}, "minimal": None}, (True, True, None)),
    ("bufsize", {"bufsize": None}, (False, False, 1232)),
    ("bufsize 1100", {"bufsize": 1100}, (False, False, 1100)),
    ("bufsize 4096\nany", {"bufsize": 4096, "any": True}, (True, False, 4096)),
])
def test_corefile_and_yaml_agree(directives, keys, expected):
    body = "\n".join(f"    {d}" for d in directives.splitlines())
    core = parse_corefile_config(f".:1053 {{\n{body}\n    forward . 127.0.0.1\n}}\n", "Corefile").servers[0]
    yml = parse(yaml.safe_dump({"servers": [{"listen": "0.0.0.0:1053", "forward": {"to": ["127.0.0.1"]}, **keys}]}),
                "c.yaml").servers[0]
    assert (core.any, core.minimal, core.bufsize) == (yml.any, yml.minimal, yml.bufsize) == expected
    plain = parse("servers: [{forward: {to: [127.0.0.1]}}]").servers[0]
    assert (plain.any, plain.minimal, plain.bufsize) == (False, False, None)


@pytest.mark.parametrize("line, expected", [
    ("bufsize 511", "Corefile:2: bufsize: expected a whole number from 512 to 4096, got 511"),
    ("bufsize 4097", "Corefile:2: bufsize: expected a whole number from 512 to 4096, got 4097"),
    ("bufsize big", "Corefile:2: bufsize: expected a whole number from 512 to 4096, got 'big'"),
    ("bufsize 1232 1232", "Corefile:2: bufsize: expected [SIZE]: one size from 512 to 4096"),
    ("any all", "Corefile:2: any: expected no arguments, got 'all'"),
    ("minimal yes", "Corefile:2: minimal: expected no arguments, got 'yes'"),
])
def test_corefile_errors(line, expected):
    with pytest.raises(CorefileSyntaxError) as e:
        parse_corefile_config(f".:1053 {{\n    {line}\n    forward . 127.0.0.1\n}}\n", "Corefile")
    assert str(e.value) == expected


@pytest.mark.parametrize("keys, expected", [
    ({"bufsize": 100}, "servers[0].bufsize: expected a whole number from 512 to 4096"),
    ({"any": {"x": 1}}, "servers[0].any.x: expected one of the keys"),
    ({"minimal": "yes"}, "servers[0].minimal: expected a mapping"),
])
def test_yaml_errors(keys, expected):
    with pytest.raises(ConfigError) as e:
        parse(yaml.safe_dump({"servers": [{"forward": {"to": ["127.0.0.1"]}, **keys}]}), "c.yaml")
    assert expected in str(e.value)


# -- minimal's classification ---------------------------------------------------------------------
def _rr(name: bytes, payload) -> tdns.RRHeader:
    return tdns.RRHeader(name, payload.TYPE, tdns.IN, 30, payload)


SOA = _rr(b"cluster.local", tdns.Record_SOA(b"ns.dns.cluster.local", b"hostmaster.cluster.local"))
NS = _rr(b"example.org", tdns.Record_NS(b"ns1.example.org"))
A = _rr(b"www.example.org", tdns.Record_A("192.0.2.1"))


def _rrsig(inception: int, expiration: int) -> tdns.RRHeader:
    data = struct.pack("!HBBIII H", 1, 8, 3, 30, expiration, inception, 1) + b"\x00"
    return tdns.RRHeader(b"www.example.org", 46, tdns.IN, 30, tdns.UnknownRecord(data))


def test_minimal_trims_only_what_coredns_calls_noerror():
    assert positive(Answer(answers=[A], authority=[NS]), tdns.A, False)
    assert positive(Answer(), tdns.A, False)  # NOERROR, nothing in authority: NOERROR too
    assert not positive(Answer(authority=[SOA]), tdns.A, False)  # NODATA
    assert not positive(Answer(authority=[NS]), tdns.A, False)  # delegation
    assert not positive(Answer(rcode=tdns.ENAME, authority=[SOA]), tdns.A, False)
    assert not positive(Answer(rcode=tdns.ENAME, answers=[A]), tdns.A, False)  # OTHERERROR
    assert not positive(Answer(rcode=tdns.ESERVER), tdns.A, False)
    assert not positive(Answer(answers=[SOA, A, SOA]), tdns.AXFR, False)  # META
    now = time.time()
    live = _rrsig(int(now) - 3600, int(now) + 3600)
    dead = _rrsig(int(now) - 7200, int(now) - 3600)
    assert positive(Answer(answers=[A, live], authority=[NS]), tdns.A, True)
    assert not positive(Answer(answers=[A, dead], authority=[NS]), tdns.A, True)  # expired RRSIG: OTHERERROR
    assert positive(Answer(answers=[A, dead], authority=[NS]), tdns.A, False)  # only looked at with DO


# -- the fast path ------------------------------------------------------------------------------
@pytest.mark.parametrize("qname, qtype, kw", [
    ("nginx.default.svc.cluster.local", "ANY", {}),
    ("whatever.example", "ANY", {"use_edns": 0}),
    ("_http._tcp.nginx.default.svc.cluster.local", "SRV", {"use_edns": 0}),
    ("cluster.local", "NS", {}),
    ("nope.default.svc.cluster.local", "A", {}),
    ("db.testns.svc.cluster.local", "A", {"use_edns": 0, "payload": 4096}),
])
def test_fast_path_serves_the_slow_path_bytes(qname, qtype, kw):
    d = PluginDispatcher(any=True, minimal=True, bufsize=512)
    first = d.send(qname, qtype, qid=7, **kw)
    again = d.send(qname, qtype, qid=8, **kw)
    assert d.hits() == 1, "the second query was not answered from the fast path"
    assert again[:2] == b"\x00\x08" and again[2:] == first[2:]
    msg = dns.message.from_wire(first)
    if qtype == "ANY":
        assert rrset_text(msg) == [f"{qname} HINFO \"ANY obsoleted\" \"See RFC 8482\""]
    elif msg.rcode() == dns.rcode.NOERROR:
        assert not msg.additional and not msg.authority  # minimal
    else:
        assert msg.authority  # NXDOMAIN keeps its SOA


# -- a running server ---------------------------------------------------------------------------
@pytest.fixture
def upstream():
    up = DNSUpstream(host="127.0.0.3").start()
    yield up
    up.stop()


def _shape_with_referral(q: dns.message.Message, r: dns.message.Message) -> None:
    """The upstream's positive answers carry an authority NS and its glue, as many servers do."""
    if r.answer:
        r.authority.append(dns.rrset.from_text("example.org.", 300, "IN", "NS", "ns1.example.org."))
        r.additional.append(dns.rrset.from_text("ns1.example.org.", 300, "IN", "A", "192.0.2.53"))


@pytest.mark.timeout(90)
def test_server_any_minimal_and_bufsize(kubedns_process, tmp_path, upstream):
    upstream.add("example.org", "A", "192.0.2.10")
    upstream.add("example.org", "TXT", "hello")
    upstream.shape = _shape_with_referral
    manifests = write_manifests(tmp_path / "cluster.yaml", cluster_objects(n_big=120))
    ports = [free_port() for _ in range(4)]
    extras = [{}, {"any": {}, "minimal": {}}, {"bufsize": 1100}, {"bufsize": None}]
    servers = [{"zones": ["."], "listen": f"127.0.0.1:{port}",
                "kubernetes": {"zones": ["cluster.local"], "manifests": manifests},
                "forward": {"to": [upstream.address]}, **extra} for port, extra in zip(ports, extras, strict=True)]
    p = kubedns_process({"servers": servers})
    for port in ports:
        p.wait_listening(port)
    plain, anymin, buf1100, buf1232 = ports

    # any: HINFO for every ANY, nothing asked upstream; without it, the name's records
    for name in ("nginx.default.svc.cluster.local", "example.org", "NGINX.Default.svc.cluster.local"):
        got = query(anymin, name, "ANY")
        assert rrset_text(got) == [f"{name.rstrip('.')} HINFO \"ANY obsoleted\" \"See RFC 8482\""]
        assert got.answer[0].ttl == 8482 and not got.flags & dns.flags.AA and got.rcode() == dns.rcode.NOERROR
    assert upstream.count("example.org", "ANY") == 0
    assert rrset_text(query(plain, "nginx.default.svc.cluster.local", "ANY")) == ["nginx.default.svc.cluster.local A 10.96.0.100"]

    # minimal: positive answers lose authority and additional; denials keep their SOA
    srv = "_http._tcp.nginx.default.svc.cluster.local"
    assert query(plain, srv, "SRV").additional and not query(anymin, srv, "SRV").additional
    assert rrset_text(query(anymin, srv, "SRV")) == rrset_text(query(plain, srv, "SRV"))
    assert query(plain, "cluster.local", "NS").additional and not query(anymin, "cluster.local", "NS").additional
    full = query(plain, "example.org", "A")
    assert full.authority and full.additional
    small = query(anymin, "example.org", "A", tcp=True)
    assert rrset_text(small) == ["example.org A 192.0.2.10"] and not small.authority and not small.additional
    nx = query(anymin, "nope.default.svc.cluster.local", "A")
    assert nx.rcode() == dns.rcode.NXDOMAIN and [rr.rdtype for rr in nx.authority] == [dns.rdatatype.SOA]
    nodata = query(anymin, "example.org", "MX")
    assert nodata.rcode() == dns.rcode.NOERROR and nodata.authority  # NODATA: the SOA stays

    # bufsize: a UDP answer is cut to SIZE whatever the client offers; TCP is whole
    big = "big.default.svc.cluster.local"
    whole = query(plain, big, "A", use_edns=0, payload=4096)
    assert not whole.flags & dns.flags.TC and len(whole.to_wire()) > 1232
    for port, size in ((buf1100, 1100), (buf1232, 1232)):
        q = dns.message.make_query(big, "A", use_edns=0, payload=4096)
        wire = dns.query.udp(q, "127.0.0.1", port=port, timeout=3, ignore_trailing=True)
        cut = len(wire.to_wire())
        assert wire.flags & dns.flags.TC and size - 100 < cut <= size, (size, cut)
        small_client = query(port, big, "A", use_edns=0, payload=600)
        assert len(small_client.to_wire()) <= 600 and small_client.flags & dns.flags.TC
        assert len(query(port, big, "A", use_edns=0, payload=4096, tcp=True).answer[0]) == 120
    # ...and upstream kubedns's forwarder asks with its own 1232 whatever the client offered
    upstream.reset()
    for port, payload in ((buf1100, 4096), (buf1232, 4000), (plain, 3000), (buf1100, 700)):
        got = query(port, "example.org", "TXT", use_edns=0, payload=payload)
        assert rrset_text(got) == ['example.org TXT "hello"']
    sizes = [r.edns_payload for r in upstream.queries if r.name == "example.org" and r.rdtype == "TXT"]
    assert sizes and set(sizes) == {1232}


@pytest.mark.timeout(60)
def test_server_from_a_corefile(kubedns_process, tmp_path):
    """The same three plugins written in a Corefile, in another order than CoreDNS runs them."""
    manifests = write_manifests(tmp_path / "cluster.yaml", cluster_objects(n_big=120))
    port = free_port()
    p = kubedns_process(f".:{port} {{\n    minimal\n    kubernetes cluster.local {{\n        manifests {manifests}\n"
                        f"    }}\n    bufsize 1100\n    any\n}}\n")
    p.wait_listening(port)
    got = query(port, "pg.data.svc.cluster.local", "ANY")
    assert rrset_text(got) == ['pg.data.svc.cluster.local HINFO "ANY obsoleted" "See RFC 8482"']
    srv = query(port, "_pg._tcp.pg.data.svc.cluster.local", "SRV")
    assert len(srv.answer[0]) == 2 and not srv.additional
    cut = query(port, "big.default.svc.cluster.local", "A", use_edns=0, payload=4096)
    assert cut.flags & dns.flags.TC and len(cut.to_wire()) <= 1100
