"""The ``transfer`` plugin: AXFR/IXFR of the cluster zone to listed peers, as CoreDNS's.

Config in both syntaxes; the message split and the IXFR serial read as pure logic; and a real
``twistd kubedns`` from a Corefile over a manifests cluster with a large headless Service (the
zone needs several TCP messages), read whole by dnspython's ``dns.query.xfr`` +
``dns.zone.from_xfr`` from 127.0.0.2 and checked record by record against what the server
answers to plain queries; REFUSED from 127.0.0.3, over UDP, and for names it does not transfer;
IXFR up to date and falling back to AXFR.
"""

from __future__ import annotations

import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import dns.xfr
import dns.zone
import pytest
import yaml
from twisted.names import dns as tdns

from kubedns.config import ConfigError, parse
from kubedns.corefile import CorefileSyntaxError, parse_corefile_config
from kubedns.dns.query import Request
from kubedns.dns.wire import encode_response, parse_question
from kubedns.plugins.transfer import TransferRule, ixfr_serial, split
from tests.conftest import free_port, wait_for
from tests.dnsupstream import DNSUpstream
from tests.support.cluster import cluster_objects, write_manifests

N_BIG = 700  # endpoints of "big": about 2 100 records (~130 KB), more than one 64 KB message

COREFILE = """\
.:{port} {{
    transfer {{
        to 127.0.0.2 127.0.0.9:5300
    }}
    kubernetes cluster.local in-addr.arpa {{
        manifests {manifests}
        ttl 30
    }}
    forward . {upstream}
}}
.:{plain} {{
    kubernetes cluster.local {{
        manifests {manifests}
    }}
}}
"""


# -- config ---------------------------------------------------------------------------------------
def test_corefile_and_yaml_agree():
    core = parse_corefile_config(
        ".:1053 {\n transfer {\n  to 10.0.0.2 10.0.0.3:5300\n  to [fd00::2]:53\n }\n"
        " transfer example.org {\n  to *\n  source 10.0.0.1\n }\n forward . 127.0.0.1\n}\n", "Corefile")
    yml = parse(yaml.safe_dump({"servers": [{"listen": "0.0.0.0:1053", "forward": {"to": ["127.0.0.1"]}, "transfer": [
        {"to": ["10.0.0.2", "10.0.0.3:5300", "[fd00::2]:53"]},
        {"zones": ["example.org"], "to": "*", "source": "10.0.0.1"},
    ]}]}), "c.yaml")
    assert core.servers[0].transfer == yml.servers[0].transfer == (
        TransferRule((), ("10.0.0.2", "10.0.0.3", "fd00::2")),
        TransferRule(("example.org",), ("*",), "10.0.0.1"),
    )
    one = parse("servers: [{forward: {to: [127.0.0.1]}, transfer: {to: ['*']}}]").servers[0]
    assert one.transfer == (TransferRule(),)
    assert parse("servers: [{forward: {to: [127.0.0.1]}}]").servers[0].transfer is None


@pytest.mark.parametrize("block, expected", [
    ("transfer", "Corefile:2: transfer: expected a 'to ADDRESS...' line ('to' is required)"),
    ("transfer {\n  to\n }", "Corefile:3: transfer: to: expected one or more ADDRESSes"),
    ("transfer {\n  to example.org\n }", 'Corefile:3: transfer: to: expected "*", an IP address or IP:port'),
    ("transfer {\n  to *\n  notify 10.0.0.1\n }", "Corefile:4: transfer: expected 'to' or 'source', got 'notify'"),
    ("transfer {\n  to *\n  source 1.2.3.4\n  source 1.2.3.5\n }", "Corefile:5: transfer: source: expected source once"),
])
def test_corefile_errors(block, expected):
    with pytest.raises(CorefileSyntaxError) as e:
        parse_corefile_config(f".:1053 {{\n {block}\n forward . 127.0.0.1\n}}\n", "Corefile")
    assert str(e.value).startswith(expected), str(e.value)


def test_yaml_errors():
    with pytest.raises(ConfigError) as e:
        parse("servers: [{forward: {to: [127.0.0.1]}, transfer: {zones: [cluster.local]}}]", "c.yaml")
    assert "c.yaml: servers[0].transfer.to: expected a value (the key is required)" in str(e.value)
    with pytest.raises(ConfigError) as e:
        parse("servers: [{forward: {to: [127.0.0.1]}, transfer: {to: [host.example]}}]", "c.yaml")
    assert "servers[0].transfer.to[0]: expected \"*\", an IP address or IP:port" in str(e.value)


# -- pure logic -----------------------------------------------------------------------------------
def test_split_keeps_each_run_under_the_limit_and_the_order():
    rrs = [tdns.RRHeader(f"host-{i}.big.default.svc.cluster.local".encode(), tdns.A, tdns.IN, 30,
                         tdns.Record_A(f"10.0.{i // 250}.{i % 250}")) for i in range(3000)]
    runs = split(rrs, 63000)
    assert len(runs) > 2 and [rr for run in runs for rr in run] == rrs
    for run in runs:
        assert sum(len(rr.name.name) + 2 + 10 + 4 for rr in run) <= 63000


def test_names_written_past_16k_are_never_pointed_at():
    """A compression pointer holds 14 bits: a name first written past 16 KB (here the second
    owner, as in any large transfer message) must be written in full again, not pointed at."""
    first = [tdns.RRHeader(b"a.cluster.local", tdns.A, tdns.IN, 30, tdns.Record_A(f"10.0.{i // 250}.{i % 250}"))
             for i in range(1200)]
    later = [tdns.RRHeader(b"_http._tcp.b.cluster.local", tdns.SRV, tdns.IN, 30,
                           tdns.Record_SRV(0, 1, 80, f"h{i}.b.cluster.local")) for i in range(300)]
    wire = encode_response(qid=1, opcode=0, rd=False, cd=False, ra=False, aa=True, rcode=0,
                           question=b"\x07cluster\x05local\x00\x00\xfc\x00\x01", qname=b"cluster.local",
                           answers=first + later, limit=65535)
    assert len(wire) > 0x4000
    msg = dns.message.from_wire(wire)
    owners = {rr.name.to_text(): len(rr) for rr in msg.answer}
    assert owners == {"a.cluster.local.": 1200, "_http._tcp.b.cluster.local.": 300}


def _request(msg: dns.message.Message) -> Request:
    wire = msg.to_wire()
    q = parse_question(wire)
    assert q is not None
    return Request(q, wire[12:q.end], None, 65535, "tcp", ("127.0.0.2", 1), 0.0, wire, None, "cluster.local")


def test_ixfr_serial_is_read_from_the_one_authority_soa():
    q = dns.message.make_query("cluster.local", "IXFR")
    q.authority.append(dns.rrset.from_text("cluster.local.", 30, "IN", "SOA",
                                           "ns.dns.cluster.local. hostmaster.cluster.local. 4242 7200 1800 86400 30"))
    assert ixfr_serial(_request(q)) == 4242  # dnspython compresses the SOA's names: pointers followed
    assert ixfr_serial(_request(dns.message.make_query("cluster.local", "IXFR"))) is None
    q2 = dns.message.make_query("cluster.local", "IXFR")
    q2.authority.append(dns.rrset.from_text("cluster.local.", 30, "IN", "NS", "ns.dns.cluster.local."))
    assert ixfr_serial(_request(q2)) is None


# -- a running server ---------------------------------------------------------------------------
@pytest.fixture
def upstream():
    up = DNSUpstream(host="127.0.0.3").start()
    yield up
    up.stop()


def _tcp(port: int, name: str, rdtype: str, source: str = "127.0.0.2") -> dns.message.Message:
    return dns.query.tcp(dns.message.make_query(name, rdtype), "127.0.0.1", port=port, timeout=5, source=source)


def _ixfr(port: int, serial: int | None) -> dns.message.Message:
    q = dns.message.make_query("cluster.local", "IXFR")
    if serial is not None:
        q.authority.append(dns.rrset.from_text(
            "cluster.local.", 30, "IN", "SOA", f"ns.dns.cluster.local. hostmaster.cluster.local. {serial} 7200 1800 86400 30"))
    return dns.query.tcp(q, "127.0.0.1", port=port, timeout=5, source="127.0.0.2")


@pytest.mark.timeout(120)
def test_server_transfers_the_cluster_zone_to_listed_peers_only(kubedns_process, tmp_path, upstream):
    manifests = write_manifests(tmp_path / "cluster.yaml", cluster_objects(n_big=N_BIG))
    port, plain = free_port(), free_port()
    p = kubedns_process(COREFILE.format(port=port, plain=plain, manifests=manifests, upstream=upstream.address))
    p.wait_listening(port)
    wait_for(lambda: _tcp(port, "nginx.default.svc.cluster.local", "A").answer, 20)

    messages = list(dns.query.xfr("127.0.0.1", "cluster.local", port=port, source="127.0.0.2", timeout=10,
                                  relativize=False))
    assert len(messages) >= 2, "a zone this large leaves as several messages"
    for m in messages:
        assert m.flags & dns.flags.AA and m.question[0].name == dns.name.from_text("cluster.local")
    zone = dns.zone.from_xfr(iter(messages), relativize=False)
    origin = zone.origin

    def rdatas(name: str, rdtype: str) -> list[str]:
        rds = zone.get_rdataset(dns.name.from_text(name), rdtype)
        return sorted(rd.to_text() for rd in rds) if rds is not None else []

    soa = zone.get_rdataset(origin, "SOA")
    assert soa is not None and soa[0].mname.to_text() == "ns.dns.cluster.local."
    assert rdatas("cluster.local.", "NS") == ["ns.dns.cluster.local."]
    assert rdatas("ns.dns.cluster.local.", "A") == ["10.96.0.10"]
    assert rdatas("dns-version.cluster.local.", "TXT") == ['"1.1.0"']
    assert rdatas("nginx.default.svc.cluster.local.", "A") == ["10.96.0.100"]
    assert rdatas("nginx.default.svc.cluster.local.", "SRV") == ["0 100 80 nginx.default.svc.cluster.local."]
    assert rdatas("_http._tcp.nginx.default.svc.cluster.local.", "SRV") == ["0 100 80 nginx.default.svc.cluster.local."]
    assert rdatas("10-244-0-5.nginx.default.svc.cluster.local.", "A") == ["10.244.0.5"]
    assert rdatas("dual.default.svc.cluster.local.", "AAAA") == ["fd00::200"]
    assert rdatas("pg.data.svc.cluster.local.", "A") == ["10.244.3.1", "10.244.3.2"]  # pg-2 is not ready
    assert rdatas("pg-0.pg.data.svc.cluster.local.", "A") == ["10.244.3.1"]
    assert not rdatas("pg-2.pg.data.svc.cluster.local.", "A")
    assert rdatas("ext.default.svc.cluster.local.", "CNAME") == ["db.example.org."]
    assert len(rdatas("big.default.svc.cluster.local.", "A")) == N_BIG
    big_hosts = [n for n in zone.nodes if n.to_text().endswith(".big.default.svc.cluster.local.")
                 and n.to_text().startswith("10-")]
    assert len(big_hosts) == N_BIG
    assert len(rdatas("_http._tcp.big.default.svc.cluster.local.", "SRV")) == N_BIG  # the slice's port

    # every record of the transfer is what a query for that name and type answers, and back
    names = [n for n in zone.nodes if n not in set(big_hosts)] + big_hosts[:25]
    for name in names:
        for rds in zone.nodes[name].rdatasets:
            if rds.rdtype == dns.rdatatype.SOA:
                continue
            got = _tcp(port, name.to_text(), dns.rdatatype.to_text(rds.rdtype))
            answered = sorted(rd.to_text() for rr in got.answer if rr.rdtype == rds.rdtype for rd in rr)
            listed = sorted(rd.to_text() for rd in rds)
            if got.flags & dns.flags.TC:  # big's SRV records with their glue pass 64 KB: a prefix
                assert answered and set(answered) <= set(listed), (name, rds.rdtype)
            else:
                assert answered == listed, (name, rds.rdtype)

    # not listed, over UDP, names it does not transfer, a block without transfer: REFUSED
    assert _tcp(port, "cluster.local", "AXFR", source="127.0.0.3").rcode() == dns.rcode.REFUSED
    udp = dns.query.udp(dns.message.make_query("cluster.local", "AXFR"), "127.0.0.1", port=port, timeout=3,
                        source="127.0.0.2")
    assert udp.rcode() == dns.rcode.REFUSED
    assert _tcp(port, "in-addr.arpa", "AXFR").rcode() == dns.rcode.REFUSED
    assert _tcp(port, "svc.cluster.local", "AXFR").rcode() == dns.rcode.REFUSED
    assert _tcp(plain, "cluster.local", "AXFR").rcode() == dns.rcode.REFUSED

    # IXFR: up to date → the SOA alone; older → the whole zone; without an SOA → SERVFAIL
    serial = soa[0].serial
    same = _ixfr(port, serial)
    assert same.rcode() == dns.rcode.NOERROR and [rr.rdtype for rr in same.answer] == [dns.rdatatype.SOA]
    assert same.answer[0][0].serial == serial
    older = list(dns.query.xfr("127.0.0.1", "cluster.local", rdtype="IXFR", serial=serial - 1, port=port,
                               source="127.0.0.2", timeout=10, relativize=False))
    assert sum(len(rr) for m in older for rr in m.answer) == sum(len(rr) for m in messages for rr in m.answer)
    assert _ixfr(port, None).rcode() == dns.rcode.SERVFAIL
    assert _tcp(port, "nginx.default.svc.cluster.local", "A").answer  # still answering
    records = sum(len(rr) for m in messages for rr in m.answer)
    assert f"Outgoing transfer of {records} records of zone 'cluster.local' to 127.0.0.2 for {serial} SOA serial" in p.log()
