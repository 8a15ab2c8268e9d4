"""Memory stays bounded whatever names, spellings, sizes and types clients send.

A real ``twistd kubedns`` process serves a headless Service with 250 endpoints (an SRV answer
of 500 records, about 190 KB of Python objects once computed).  Resolvers that use DNS 0x20 ask
for one name in random case; each spelling used to be computed and kept on its own, so 20,000
spellings grew the process by gigabytes.  Here 20,000 UDP queries in random case (with and
without EDNS, several payload sizes), TCP queries over one connection, and a spread of other
names and made-up types must move VmRSS by less than :data:`BOUND` (the fast path and the
computed answers are bounded in bytes; see README "Memory").  The growth is checked while
sending, so a regression fails early instead of eating the machine's memory.
"""

from __future__ import annotations

import random
import socket
import struct
import time
from pathlib import Path
from typing import Any

import dns.message
import dns.query
import dns.rdatatype
import pytest

from tests.conftest import free_port
from tests.support import kubeobj
from tests.support.cluster import cluster_config, write_manifests

#: VmRSS growth allowed for the whole run: the two byte budgets of the fast path and the computed
#: answers that these queries can fill (8 + 8 MB), plus what the allocator keeps around them.
BOUND = 30 << 20
N_ENDPOINTS = 250
N_UDP = 20_000
SRV = "_http._tcp.wide.default.svc.cluster.local"


def _objects() -> list[dict]:
    eps = [{"addresses": [f"10.251.{i // 250}.{i % 250 + 1}"], "hostname": f"wide-{i}", "ready": True}
           for i in range(N_ENDPOINTS)]
    return [
        kubeobj.namespace("default"),
        kubeobj.namespace("kube-system"),
        kubeobj.service("kube-dns", "kube-system", cluster_ip="10.96.0.10", ports=[{"name": "dns", "port": 53, "protocol": "UDP"}]),
        kubeobj.service("nginx", "default", cluster_ip="10.96.0.100", ports=[{"name": "http", "port": 80, "protocol": "TCP"}]),
        kubeobj.service("wide", "default", headless=True, ports=[{"name": "http", "port": 80, "protocol": "TCP"}]),
        kubeobj.endpointslice("wide-1", "default", "wide", endpoints=eps,
                              ports=[{"name": "http", "port": 80, "protocol": "TCP"}]),
    ]


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def _spell(rng: random.Random, name: str) -> str:
    return "".join(c.upper() if rng.random() < 0.5 else c for c in name)


def _query(rng: random.Random, i: int) -> tuple[dns.message.Message, str]:
    """Mostly the big SRV name; now and then another name or a made-up type; random case, EDNS."""
    kind = i % 10
    if kind < 8:
        name, rdtype = SRV, dns.rdatatype.SRV
    elif kind == 8:
        name, rdtype = rng.choice(["wide.default.svc.cluster.local", "nginx.default.svc.cluster.local",
                                   f"wide-{rng.randrange(N_ENDPOINTS)}.wide.default.svc.cluster.local",
                                   f"10-1-{rng.randrange(256)}-{rng.randrange(256)}.default.pod.cluster.local"]), 1
    else:
        name, rdtype = f"n{rng.randrange(1 << 30)}.default.svc.cluster.local", rng.randrange(256, 65280)
    spelled = _spell(rng, name)
    edns = rng.choice([None, 512, 1232, 1400, 4096])
    q = dns.message.make_query(spelled, rdtype, use_edns=False if edns is None else 0, payload=edns or 512)
    q.id = i & 0xFFFF
    return q, spelled


def _check(wire: bytes, sent: dict[int, str]) -> None:
    """Each answer carries its query's ID and its spelling, byte for byte."""
    msg = dns.message.from_wire(wire, ignore_trailing=True)
    spelled = sent.pop(msg.id)
    assert msg.question[0].name.to_text(omit_final_dot=True) == spelled
    for rr in msg.answer:
        assert rr.name.to_text(omit_final_dot=True) == spelled  # owner names echo the query's case


@pytest.mark.timeout(400)
def test_case_spellings_of_a_large_answer_do_not_grow_memory(kubedns_process: Any, tmp_path: Path) -> None:
    manifests = tmp_path / "cluster.yaml"
    write_manifests(manifests, _objects())
    port = free_port()
    p = kubedns_process(cluster_config(port, manifests))
    p.wait_listening(port)
    assert p.proc is not None
    pid = p.proc.pid
    rng = random.Random(20)

    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(5.0)
    sock.connect(("127.0.0.1", port))

    def burst(start: int, n: int, check: bool) -> int:
        sent: dict[int, str] = {}
        for i in range(start, start + n):
            q, spelled = _query(rng, i)
            sent[q.id] = spelled
            sock.send(q.to_wire())
        got = 0
        for _ in range(n):
            wire = sock.recv(65535)
            got += 1
            if check:
                _check(wire, sent)
        return got

    # warm up: code paths, allocator arenas, the first computed answers
    for i in range(0, 2000, 25):
        burst(i, 25, check=False)
    time.sleep(0.5)
    before = _rss(pid)
    answered = 0
    for i in range(0, N_UDP, 25):
        answered += burst(2000 + i, 25, check=i % 500 == 0)
        if i % 1000 == 0:
            grown = _rss(pid) - before
            assert grown < BOUND, f"RSS grew {grown >> 20} MB after {i} spellings (bound {BOUND >> 20} MB)"
    assert answered == N_UDP

    # TCP, one connection, random case again: the same kept answer, the query's case on top
    tcp = socket.create_connection(("127.0.0.1", port), timeout=5.0)
    try:
        for _ in range(500):
            spelled = _spell(rng, SRV)
            q = dns.message.make_query(spelled, "SRV")
            wire = q.to_wire()
            tcp.sendall(struct.pack("!H", len(wire)) + wire)
            (n,) = struct.unpack("!H", _recv_exact(tcp, 2))
            msg = dns.message.from_wire(_recv_exact(tcp, n))
            assert msg.id == q.id and len(msg.answer[0]) == N_ENDPOINTS
            assert msg.answer[0].name.to_text(omit_final_dot=True) == spelled
    finally:
        tcp.close()
    after = _rss(pid)
    grown = after - before
    print(f"VmRSS before {before / 2**20:.1f} MB, after {N_UDP} UDP + 500 TCP spellings "
          f"{after / 2**20:.1f} MB (+{grown / 2**20:.1f} MB)")
    assert grown < BOUND, f"RSS grew {grown >> 20} MB (bound {BOUND >> 20} MB)"
    # still answering correctly
    msg = dns.query.udp(dns.message.make_query("NGINX.default.svc.cluster.local", "A"), "127.0.0.1", port=port, timeout=3)
    assert msg.answer and msg.answer[0].name.to_text() == "NGINX.default.svc.cluster.local."


def _recv_exact(s: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        assert chunk, "connection closed"
        buf += chunk
    return buf


def test_counters_do_not_grow_with_types_and_sizes() -> None:
    """Query counters and retired fast-path hits are keyed by what metrics label, not by the raw
    type and sizes a client picks; the size histograms and their sums stay exact."""
    from kubedns.ops.counters import SIZE_BUCKETS, FoldedHits, QueryStats
    from kubedns.serve.server import QueryInfo

    rng = random.Random(3)
    stats, folded = QueryStats(), FoldedHits()
    rq_total = rs_total = 0
    for i in range(20_000):
        qtype, rq, rs = rng.randrange(65536), rng.randrange(17, 65535), rng.randrange(12, 65535)
        rq_total += rq
        rs_total += rs
        stats.observe(QueryInfo(server="dns://127.0.0.1:53", zone="cluster.local", proto="udp", peer=("127.0.0.1", i),
                                qname=b"x", qtype=qtype, qclass=1, qid=i, request_size=rq, response_size=rs, rcode=0,
                                flags=0, duration=0.0001, do=False))
        folded.add(("dns://127.0.0.1:53", "cluster.local", qtype, 0, rq, rs, False), 1)
    assert len(stats.slots) <= 20  # the labelled types and "other", not 20,000 keys
    assert len(folded) <= 20 * (len(SIZE_BUCKETS) + 1) ** 2
    assert sum(s[0] for s in stats.slots.values()) == 20_000
    assert sum(s[2] for s in stats.slots.values()) == rq_total
    assert sum(sum(s[5]) for s in stats.slots.values()) == 20_000
    items = folded.items()
    assert sum(n for _, n in items) == 20_000
    assert round(sum(k[4] * n for k, n in items)) == rq_total and round(sum(k[5] * n for k, n in items)) == rs_total
