"""The real ``twistd kubedns`` process over real UDP and TCP sockets, queried with dnspython.

Cluster objects come from a manifests file here (the informer against a fake API server is
exercised in test_informer.py and test_watch_e2e.py); what is under test is the wire behaviour:
every record kind, negative answers with SOA, case echo, EDNS sizes, truncation at record
boundaries then TCP retry, malformed packets, and config errors at start.
"""

from __future__ import annotations

import socket
import struct
import subprocess
import time
from pathlib import Path

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest

from tests.conftest import REPO, TWISTD, free_port, query, rrset_text
from tests.support import kubeobj
from tests.support.cluster import cluster_config, cluster_objects, write_manifests

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    from tests.conftest import KubeDNSProcess

    d = tmp_path_factory.mktemp("e2e")
    manifests = d / "cluster.yaml"
    write_manifests(manifests, cluster_objects())
    port = free_port()
    p = KubeDNSProcess(cluster_config(port, manifests), d).start()
    p.wait_listening(port)
    yield port, manifests, p
    p.stop()


E2E_TABLE = [
    # qname, qtype, rcode, answer lines (sorted), authority types
    ("nginx.default.svc.cluster.local", "A", "NOERROR", ["nginx.default.svc.cluster.local A 10.96.0.100"]),
    ("nginx.default.svc.cluster.local", "AAAA", "NOERROR", []),
    ("dual.default.svc.cluster.local", "AAAA", "NOERROR", ["dual.default.svc.cluster.local AAAA fd00::200"]),
    ("missing.default.svc.cluster.local", "A", "NXDOMAIN", []),
    ("pg.data.svc.cluster.local", "A", "NOERROR", ["pg.data.svc.cluster.local A 10.244.3.1", "pg.data.svc.cluster.local A 10.244.3.2"]),
    ("pg-1.pg.data.svc.cluster.local", "A", "NOERROR", ["pg-1.pg.data.svc.cluster.local A 10.244.3.2"]),
    ("pg-2.pg.data.svc.cluster.local", "A", "NXDOMAIN", []),
    ("v6pods.data.svc.cluster.local", "AAAA", "NOERROR", ["v6pods.data.svc.cluster.local AAAA fd00::1:5"]),
    ("fd00--1-5.v6pods.data.svc.cluster.local", "AAAA", "NOERROR", ["fd00--1-5.v6pods.data.svc.cluster.local AAAA fd00::1:5"]),
    ("_pg._tcp.pg.data.svc.cluster.local", "SRV", "NOERROR", [
        "_pg._tcp.pg.data.svc.cluster.local SRV 0 50 5432 pg-0.pg.data.svc.cluster.local.",
        "_pg._tcp.pg.data.svc.cluster.local SRV 0 50 5432 pg-1.pg.data.svc.cluster.local.",
    ]),
    ("_http._tcp.nginx.default.svc.cluster.local", "SRV", "NOERROR", [
        "_http._tcp.nginx.default.svc.cluster.local SRV 0 100 80 nginx.default.svc.cluster.local.",
    ]),
    ("ext.default.svc.cluster.local", "A", "NOERROR", ["ext.default.svc.cluster.local CNAME db.example.org."]),
    ("100.0.96.10.in-addr.arpa", "PTR", "NOERROR", ["100.0.96.10.in-addr.arpa PTR nginx.default.svc.cluster.local."]),
    ("2.3.244.10.in-addr.arpa", "PTR", "NOERROR", ["2.3.244.10.in-addr.arpa PTR pg-1.pg.data.svc.cluster.local."]),
    ("5.0.0.0.1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa", "PTR", "NOERROR", [
        "5.0.0.0.1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa PTR fd00--1-5.v6pods.data.svc.cluster.local.",
    ]),
    ("10-244-0-5.default.pod.cluster.local", "A", "NOERROR", ["10-244-0-5.default.pod.cluster.local A 10.244.0.5"]),
    ("dns-version.cluster.local", "TXT", "NOERROR", ['dns-version.cluster.local TXT "1.1.0"']),
    ("cluster.local", "SOA", "NOERROR", []),
    ("cluster.local", "NS", "NOERROR", ["cluster.local NS ns.dns.cluster.local."]),
    ("google.com", "A", "REFUSED", []),  # no forward in this block: REFUSED, as CoreDNS
]


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
@pytest.mark.parametrize("qname,qtype,rcode,answers", E2E_TABLE)
def test_record_kinds(server, tcp: bool, qname: str, qtype: str, rcode: str, answers: list[str]) -> None:
    port = server[0]
    r = query(port, qname, qtype, tcp=tcp)
    assert dns.rcode.to_text(r.rcode()) == rcode
    if qtype == "SOA" and rcode == "NOERROR":
        assert [rs.rdtype for rs in r.answer] == [dns.rdatatype.SOA]
        return
    assert rrset_text(r) == answers
    if rcode != "REFUSED":
        assert r.flags & dns.flags.AA
    if rcode in ("NXDOMAIN",) or (rcode == "NOERROR" and not answers):
        assert [rs.rdtype for rs in r.authority] == [dns.rdatatype.SOA]


def test_srv_additional_section(server) -> None:
    r = query(server[0], "_pg._tcp.pg.data.svc.cluster.local", "SRV")
    assert rrset_text(r, "additional") == [
        "pg-0.pg.data.svc.cluster.local A 10.244.3.1",
        "pg-1.pg.data.svc.cluster.local A 10.244.3.2",
    ]


def test_case_is_echoed(server) -> None:
    r = query(server[0], "NgInX.DeFault.SVC.cluster.LOCAL", "A")
    assert r.question[0].name.to_text() == "NgInX.DeFault.SVC.cluster.LOCAL."
    assert r.answer[0].name.to_text() == "NgInX.DeFault.SVC.cluster.LOCAL."


def test_no_edns_answer_fits_512_and_sets_tc(server) -> None:
    port = server[0]
    q = dns.message.make_query("big.default.svc.cluster.local", "A", use_edns=False)
    wire = dns.query.udp(q, "127.0.0.1", port=port, timeout=3, raise_on_truncation=False, ignore_trailing=True)
    assert wire.flags & dns.flags.TC
    raw = _raw_udp(port, q.to_wire())
    assert len(raw) <= 512
    # truncated at a record boundary: dnspython parses every record it got
    assert 0 < len(wire.answer[0]) < 120
    full = query(port, "big.default.svc.cluster.local", "A", tcp=True)
    assert not full.flags & dns.flags.TC
    assert len(full.answer[0]) == 120


def test_edns_payload_size_honoured(server) -> None:
    port = server[0]
    q = dns.message.make_query("big.default.svc.cluster.local", "A", use_edns=0, payload=1232)
    raw = _raw_udp(port, q.to_wire())
    assert len(raw) <= 1232
    r = dns.message.from_wire(raw, ignore_trailing=True, raise_on_truncation=False)
    assert r.flags & dns.flags.TC and r.edns == 0  # our OPT survives truncation
    q = dns.message.make_query("big.default.svc.cluster.local", "A", use_edns=0, payload=4096)
    r = dns.message.from_wire(_raw_udp(port, q.to_wire()))
    assert not r.flags & dns.flags.TC and len(r.answer[0]) == 120
    assert r.payload == 1232  # what we advertise


def test_udp_truncation_then_tcp_retry_like_a_stub(server) -> None:
    port = server[0]
    q = dns.message.make_query("big.default.svc.cluster.local", "A", use_edns=False)
    r, used_tcp = dns.query.udp_with_fallback(q, "127.0.0.1", port=port, timeout=3)
    assert used_tcp and len(r.answer[0]) == 120


def test_badvers(server) -> None:
    q = dns.message.make_query("nginx.default.svc.cluster.local", "A", use_edns=1)
    r = dns.message.from_wire(_raw_udp(server[0], q.to_wire()))
    assert r.rcode() == dns.rcode.BADVERS


def _raw_udp(port: int, data: bytes, timeout: float = 2.0) -> bytes:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(timeout)
    try:
        s.sendto(data, ("127.0.0.1", port))
        return s.recv(65535)
    finally:
        s.close()


MALFORMED = [
    b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x3fabc",  # label runs past the end
    b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x03abc\x00\x00",  # qtype cut short
    b"\x12\x34\x01\x00\x00\x02\x00\x00\x00\x00\x00\x00\x03abc\x00\x00\x01\x00\x01",  # says 2 questions, has 1
    b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\xc0\x0c\x00\x01\x00\x01",  # pointer loop
    b"\x12\x34\x01\x00\x00\x01\x00\x01\x00\x00\x00\x00\x03abc\x00\x00\x01\x00\x01\x00\x00\x01",  # junk answer
]


@pytest.mark.parametrize("packet", MALFORMED, ids=range(len(MALFORMED)))
def test_malformed_gets_formerr_and_server_survives(server, packet: bytes) -> None:
    port = server[0]
    raw = _raw_udp(port, packet)
    qid, flags = struct.unpack("!HH", raw[:4])
    assert qid == 0x1234 and flags & 0x8000 and flags & 0xF == dns.rcode.FORMERR
    assert query(port, "nginx.default.svc.cluster.local").rcode() == dns.rcode.NOERROR


def test_garbage_and_responses_are_dropped(server) -> None:
    port = server[0]
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(0.5)
    try:
        for pkt in (b"", b"\x01", b"\x00" * 11):
            s.sendto(pkt, ("127.0.0.1", port))
        resp = dns.message.make_response(dns.message.make_query("x.cluster.local", "A")).to_wire()
        s.sendto(resp, ("127.0.0.1", port))
        with pytest.raises(socket.timeout):
            s.recv(512)
    finally:
        s.close()
    assert query(port, "nginx.default.svc.cluster.local").rcode() == dns.rcode.NOERROR


def test_notimp_for_other_opcodes(server) -> None:
    q = dns.message.make_query("nginx.default.svc.cluster.local", "A")
    q.set_opcode(dns.opcode.NOTIFY)
    r = dns.message.from_wire(_raw_udp(server[0], q.to_wire()))
    assert r.rcode() == dns.rcode.NOTIMP


def test_tcp_pipelining_and_garbage(server) -> None:
    port = server[0]
    msgs = [dns.message.make_query(n, "A") for n in ("nginx.default.svc.cluster.local", "pg.data.svc.cluster.local")]
    with socket.create_connection(("127.0.0.1", port), timeout=3) as s:
        s.sendall(b"".join(struct.pack("!H", len(w)) + w for w in (m.to_wire() for m in msgs)))
        got = []
        for _ in msgs:
            (n,) = struct.unpack("!H", _recv_exact(s, 2))
            got.append(dns.message.from_wire(_recv_exact(s, n)))
        assert sorted(m.id for m in got) == sorted(m.id for m in msgs)
    with socket.create_connection(("127.0.0.1", port), timeout=3) as s:
        s.sendall(b"\x00\x05hello")  # too short to be DNS: connection closed
        assert s.recv(100) == b""
    assert query(port, "nginx.default.svc.cluster.local", tcp=True).rcode() == dns.rcode.NOERROR


def _recv_exact(s: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise EOFError
        buf += chunk
    return buf


def test_manifest_change_is_served(server) -> None:
    port, manifests, _ = server
    objs = cluster_objects()
    objs.append(kubeobj.service("added", "default", cluster_ip="10.96.7.7"))
    objs = [o for o in objs if o["metadata"]["name"] != "ext"]
    write_manifests(manifests, objs)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if query(port, "added.default.svc.cluster.local").rcode() == dns.rcode.NOERROR:
            break
        time.sleep(0.2)
    assert rrset_text(query(port, "added.default.svc.cluster.local")) == ["added.default.svc.cluster.local A 10.96.7.7"]
    assert query(port, "ext.default.svc.cluster.local").rcode() == dns.rcode.NXDOMAIN
    write_manifests(manifests, cluster_objects())


def _twistd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*TWISTD, "-n", "--pidfile=", "kubedns", *args],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )


def test_missing_config_exits_nonzero_naming_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    r = _twistd("--config", str(missing))
    assert r.returncode != 0
    assert str(missing) in r.stdout + r.stderr


@pytest.mark.parametrize(
    "text,key,expect",
    [
        ("servers:\n  - listen: '127.0.0.1:99999'\n    kubernetes: {}\n", "servers[0].listen", "address"),
        ("servers:\n  - kubernetes: {ttl: abc}\n", "servers[0].kubernetes.ttl", "whole number"),
        ("servers:\n  - kubernetes: {pods: sometimes}\n", "servers[0].kubernetes.pods", "insecure | verified | disabled"),
        ("servers:\n  - kubernetes: {}\n    forwrd: {to: [127.0.0.1]}\n", "servers[0].forwrd", "one of the keys"),
        ("servers:\n  - zones: [example.org]\n", "servers[0]", "at least one of kubernetes or forward"),
        ("servers: [\n", "", "valid YAML"),
    ],
)
def test_invalid_config_names_file_key_and_expectation(tmp_path: Path, text: str, key: str, expect: str) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)
    r = _twistd("--config", str(cfg))
    out = r.stdout + r.stderr
    assert r.returncode != 0
    assert str(cfg) in out and key in out and expect in out, out


def test_fuzzed_packets_never_take_the_server_down(server) -> None:
    """Bit-flipped, truncated and random packets: every reply is a well-formed DNS response
    (FORMERR, NOTIMP, an answer...) with the query's ID, or nothing; the server keeps serving."""
    import random

    port = server[0]
    rng = random.Random(1234)
    seeds = [dns.message.make_query(n, t, use_edns=e).to_wire() for n, t, e in (
        ("nginx.default.svc.cluster.local", "A", False),
        ("_pg._tcp.pg.data.svc.cluster.local", "SRV", 0),
        ("100.0.96.10.in-addr.arpa", "PTR", 0),
    )]
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(0.05)
    replies = 0
    try:
        for i in range(900):
            pkt = bytearray(rng.choice(seeds))
            how = i % 3
            if how == 0:
                for _ in range(rng.randint(1, 4)):
                    pos = rng.randrange(len(pkt))
                    pkt[pos] ^= 1 << rng.randrange(8)
            elif how == 1:
                pkt = pkt[: rng.randrange(len(pkt))]
            else:
                pkt = bytearray(rng.randbytes(rng.randint(0, 80)))
            if len(pkt) < 12:  # no header: must be dropped, nothing to wait for
                s.sendto(bytes(pkt), ("127.0.0.1", port))
                continue
            pkt[:2] = i.to_bytes(2, "big")  # unique IDs
            s.sendto(bytes(pkt), ("127.0.0.1", port))
            raw = b""
            try:
                while raw[:2] != bytes(pkt[:2]):  # skip late replies to earlier packets
                    raw = s.recv(65535)
            except TimeoutError:
                continue
            replies += 1
            assert raw[2] & 0x80  # QR set: it is a response
            dns.message.from_wire(raw, ignore_trailing=True, raise_on_truncation=False)
    finally:
        s.close()
    assert replies > 300
    assert query(port, "nginx.default.svc.cluster.local").rcode() == dns.rcode.NOERROR
    assert query(port, "nginx.default.svc.cluster.local", tcp=True).rcode() == dns.rcode.NOERROR


def test_listens_on_ipv6_loopback(kubedns_process, tmp_path: Path) -> None:
    manifests = tmp_path / "cluster.yaml"
    write_manifests(manifests, cluster_objects(n_big=1))
    try:
        port = free_port("::1")
    except OSError:
        pytest.skip("no IPv6 loopback on this machine")
    p = kubedns_process({"servers": [{
        "zones": ["."], "listen": f"[::1]:{port}",
        "kubernetes": {"zones": ["cluster.local"], "manifests": str(manifests)},
    }]})
    p.wait_listening(port, host="::1")
    for tcp in (False, True):
        r = query(port, "nginx.default.svc.cluster.local", host="::1", tcp=tcp)
        assert rrset_text(r) == ["nginx.default.svc.cluster.local A 10.96.0.100"]
