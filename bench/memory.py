"""What the client-filled caches really cost, against what they count (README, "Memory").

    python3 bench/memory.py [--endpoints 250] [--entries 5000]

In this process, with tracemalloc: the bytes Python holds per fast-path entry (random-case
spellings of small answers, several EDNS sizes) next to what :class:`kubedns.fastcache.FastCache`
charges against ``max_bytes``; the bytes per kept computed answer (an SRV answer of a headless
Service with ``--endpoints`` endpoints, an A answer, a negative) next to
:func:`kubedns.fastcache.computed_cost`; the bytes per shared address record.  A counted figure
below the measured one means a budget that does not hold: the script says so and exits 1.
Queries go through the real UDP protocol class with a capturing socket: nothing is sent anywhere.
"""

from __future__ import annotations

import argparse
import gc
import random
import sys
import tracemalloc
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import dns.message  # noqa: E402
from twisted.internet import task  # noqa: E402

from kubedns.config import KubernetesConfig, ServerBlock  # noqa: E402
from kubedns.configbase import Address  # noqa: E402
from kubedns.fastcache import computed_cost  # noqa: E402
from kubedns.k8s import objects  # noqa: E402
from kubedns.k8s.store import Store  # noqa: E402
from kubedns.protocols import DNSDatagramProtocol  # noqa: E402
from kubedns.records import ClusterZones  # noqa: E402
from kubedns.server import Block, Dispatcher  # noqa: E402
from tests import fakeapi  # noqa: E402
from tests.test_records import _fill  # noqa: E402


class _Sink:
    def __init__(self) -> None:
        self.socket = self

    def sendto(self, data: bytes, addr: Any) -> None:
        pass

    def write(self, data: bytes, addr: Any) -> None:
        pass


def _setup(endpoints: int) -> tuple[Dispatcher, DNSDatagramProtocol, ClusterZones]:
    store = Store(required=("namespaces", "services", "endpointslices", "pods"))
    _fill(store)
    eps = [{"addresses": [f"10.251.{i // 250}.{i % 250 + 1}"], "hostname": f"wide-{i}", "ready": True} for i in range(endpoints)]
    store.upsert("services", *objects.service_from_raw(
        fakeapi.service("wide", "default", headless=True, ports=[{"name": "http", "port": 80, "protocol": "TCP"}])))
    store.upsert("endpointslices", *objects.endpointslice_from_raw(fakeapi.endpointslice(
        "wide-1", "default", "wide", endpoints=eps, ports=[{"name": "http", "port": 80, "protocol": "TCP"}])))
    kcfg = KubernetesConfig(pods="insecure", ttl=5)
    clusters = ClusterZones(store, kcfg)
    block = Block(ServerBlock(zones=("",), listen=Address("127.0.0.1", 53), kubernetes=kcfg), clusters)
    disp = Dispatcher("dns://127.0.0.1:53", [block], reactor=task.Clock())
    proto = DNSDatagramProtocol(disp)
    proto.transport = _Sink()
    proto.startProtocol()
    return disp, proto, clusters


def _wire(name: str, qtype: int, qid: int, edns: int | None) -> bytes:
    q = dns.message.make_query(name, qtype, use_edns=False if edns is None else 0, payload=edns or 512)
    q.id = qid
    return q.to_wire()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--endpoints", type=int, default=250)
    ap.add_argument("--entries", type=int, default=5000)
    args = ap.parse_args()
    rng = random.Random(1)

    def spell(n: str) -> str:
        return "".join(c.upper() if rng.random() < 0.5 else c for c in n)

    ok = True
    disp, proto, clusters = _setup(args.endpoints)
    fast = disp.fast
    fast.max_bytes = 1 << 40
    fast.max_entries = 1 << 40
    names = ["nginx.default.svc.cluster.local", "db.testns.svc.cluster.local", "nope.default.svc.cluster.local"]
    for i in range(200):  # warm up
        proto.datagramReceived(_wire(spell(names[i % 3]), 1, i, None), ("127.0.0.1", 5000))
    gc.collect()
    tracemalloc.start()
    before, counted0, n0 = tracemalloc.get_traced_memory()[0], fast.bytes, len(fast.entries)
    for i in range(args.entries):
        proto.datagramReceived(_wire(spell(names[i % 3]), 1, i & 0xFFFF, rng.choice([None, 512, 1232, 4096])),
                               ("127.0.0.1", 1024 + i % 60000))
    gc.collect()
    real = (tracemalloc.get_traced_memory()[0] - before) / (len(fast.entries) - n0)
    counted = (fast.bytes - counted0) / (len(fast.entries) - n0)
    tracemalloc.stop()
    print(f"fast-path entry:        {real:8.0f} B held   {counted:8.0f} B counted")
    ok &= counted >= real * 0.95

    for label, name, qtype in [(f"SRV, {args.endpoints} endpoints", "_http._tcp.wide.default.svc.cluster.local", 33),
                               ("A, 1 record", "nginx.default.svc.cluster.local", 1),
                               ("NXDOMAIN", "nope.default.svc.cluster.local", 1)]:
        clusters.answer(name.encode(), qtype)  # warm the shared parts (SOA, address records)
        gc.collect()
        tracemalloc.start()
        a = tracemalloc.get_traced_memory()[0]
        kept = [clusters.answer(name.encode(), qtype) for _ in range(20)]
        gc.collect()
        real = (tracemalloc.get_traced_memory()[0] - a) / len(kept)
        tracemalloc.stop()
        counted = computed_cost((None, name.encode(), qtype), kept[0])
        print(f"computed {label:22s}{real:8.0f} B held   {counted:8d} B counted")
        ok &= counted >= real

    gc.collect()
    tracemalloc.start()
    a = tracemalloc.get_traced_memory()[0]
    for i in range(10000):
        clusters._addr_payload(f"10.{i // 65536}.{(i // 256) % 256}.{i % 256}")
    per_ip = (tracemalloc.get_traced_memory()[0] - a) / 10000
    tracemalloc.stop()
    print(f"shared address record:  {per_ip:8.0f} B held   (x 16,384 = {per_ip * 16384 / 2**20:.1f} MB)")
    print("OK: every budget counts at least what is held" if ok else "FAIL: a budget counts less than is held")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
