"""What the client-filled caches really cost, against what they count (README, "Memory").

    python3 bench/memory.py [--endpoints 250] [--entries 5000]

In this process, with tracemalloc: the bytes Python holds per fast-path entry (random-case
spellings of small answers, several EDNS sizes) next to what :class:`kubedns.serve.fastcache.FastCache`
charges against ``max_bytes``; the bytes per kept computed answer (an SRV answer of a headless
Service with ``--endpoints`` endpoints, an A answer, a negative) next to
:func:`kubedns.serve.fastcache.computed_cost`; the bytes per shared address record.  A counted figure
below the measured one means a budget that does not hold: the script says so and exits 1.
Queries go through the real UDP protocol class with a capturing socket: nothing is sent anywhere.

    python3 bench/memory.py --scale [--queries 150000]

The whole figure: ``twistd kubedns`` (pinned to CPU 0) on the cluster of ``bench/scale.py``
(10k Services, 50k endpoints, 100k Pods, ``pods: verified``, served by its fake API on
127.0.0.1), VmRSS once synced, then after ``--queries`` UDP queries that fill every cache a
client can fill (random-case spellings of every Service's A, AAAA and SRV names, endpoint and
Pod names, NXDOMAIN names, made-up types, EDNS sizes from none to 4096), then the peak during a
forced relist (410 Gone) with the caches full.  PASS when that peak stays under the
Deployment's limit (170Mi).
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
from kubedns.dns.records import ClusterZones  # noqa: E402
from kubedns.k8s import objects  # noqa: E402
from kubedns.k8s.store import Store  # noqa: E402
from kubedns.serve.fastcache import computed_cost  # noqa: E402
from kubedns.serve.protocols import DNSDatagramProtocol  # noqa: E402
from kubedns.serve.server import Block, Dispatcher  # noqa: E402
from tests.support import kubeobj  # noqa: E402
from tests.support.records_table import fill  # noqa: E402


class _Sink:
    def __init__(self) -> None:
        self.socket = self

    def sendto(self, data: bytes, addr: Any) -> None:
        pass

    def write(self, data: bytes, addr: Any) -> None:
        pass


def _setup(endpoints: int) -> tuple[Dispatcher, DNSDatagramProtocol, ClusterZones]:
    store = Store(required=("namespaces", "services", "endpointslices", "pods"))
    fill(store)
    eps = [{"addresses": [f"10.251.{i // 250}.{i % 250 + 1}"], "hostname": f"wide-{i}", "ready": True} for i in range(endpoints)]
    store.upsert("services", *objects.service_from_raw(
        kubeobj.service("wide", "default", headless=True, ports=[{"name": "http", "port": 80, "protocol": "TCP"}])))
    store.upsert("endpointslices", *objects.endpointslice_from_raw(kubeobj.endpointslice(
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


LIMIT_MB = 170 * 1.048576  # the Deployment's 170Mi in MB


def scale(queries: int, cpu: str) -> int:
    """Steady, flooded and relist-peak VmRSS at the README's scale (see the module docstring)."""
    import os
    import socket
    import subprocess
    import tempfile
    import time

    from bench.run import stop
    from bench.scale import RSSSampler, ScaleFakeAPI, build_cluster, pod_ip, rss_kb, svc_ip, wait_synced
    from kubedns.serve.workers import TWISTD

    for var in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        os.environ.pop(var, None)
    others = [c for c in os.sched_getaffinity(0) if str(c) not in cpu.split(",")]
    if others:
        os.sched_setaffinity(0, others)
    api = ScaleFakeAPI().start()
    cl = build_cluster(api, 10000, 50000, 100000, 100, 10000)
    api.warm()
    gc.collect()
    gc.freeze()
    n_ns = cl["n_ns"]
    rng = random.Random(7)

    def spell(n: str) -> str:
        return "".join(c.upper() if rng.random() < 0.5 else c for c in n)

    def one(i: int) -> bytes:
        k = rng.randrange(10000)
        svc = f"svc{k}.ns{k % n_ns}.svc.cluster.local"
        pick = i % 8
        if pick < 3:
            name, qtype = svc, rng.choice([1, 1, 28])
        elif pick < 5:
            name, qtype = f"_http._tcp.{svc}", 33
        elif pick == 5:
            j = rng.randrange(100000)
            name, qtype = f"{pod_ip(j).replace('.', '-')}.ns{j % n_ns}.pod.cluster.local", 1
        elif pick == 6:
            name, qtype = f"x{rng.randrange(1 << 30)}.ns{k % n_ns}.svc.cluster.local", 1
        else:
            name, qtype = svc, rng.randrange(256, 65280)
        return _wire(spell(name), qtype, i & 0xFFFF, rng.choice([None, 512, 1232, 4096]))

    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        kc = kubeobj.kubeconfig(d / "kubeconfig", api.url)
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        cfg = d / "corefile.yaml"
        cfg.write_text("servers:\n"
                       f"  - zones: ['.']\n    listen: '127.0.0.1:{port}'\n"
                       f"    kubernetes: {{zones: [cluster.local, in-addr.arpa], kubeconfig: '{kc}', pods: verified, ttl: 5}}\n")
        logf = open(d / "kubedns.log", "wb")
        repo = Path(__file__).resolve().parent.parent
        proc = subprocess.Popen(["taskset", "-c", cpu, *TWISTD, "-n", "--pidfile=", "kubedns", "--config", str(cfg)],
                                cwd=repo, stdout=logf, stderr=subprocess.STDOUT,
                                env=dict(os.environ, PYTHONUNBUFFERED="1", NO_PROXY="127.0.0.1"))
        try:
            wait_synced(port, f"svc9999.ns{9999 % n_ns}.svc.cluster.local", svc_ip(9999), proc, 180)
            time.sleep(5)
            steady = rss_kb(proc.pid) / 1024
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.connect(("127.0.0.1", port))
            sock.settimeout(5)
            t = time.monotonic()
            answered = 0
            for i in range(0, queries, 50):
                for j in range(i, i + 50):
                    sock.send(one(j))
                for _ in range(50):
                    try:
                        sock.recv(65535)
                        answered += 1
                    except TimeoutError:
                        break
            flood_s = time.monotonic() - t
            time.sleep(1)
            flooded = rss_kb(proc.pid) / 1024
            sampler = RSSSampler(proc.pid, 0.01)
            sampler.start()
            api.bump_and_compact()
            api.drop_watches()
            time.sleep(20)
            peak = sampler.stop() / 1024
        finally:
            stop(proc)
            logf.close()
            api.stop()
    print(f"cluster: 10k Services, 50k endpoints, 100k Pods (pods: verified); kubedns on CPU {cpu}")
    print(f"VmRSS synced, steady:                 {steady:7.1f} MB")
    print(f"after {queries} flood queries ({answered} answered in {flood_s:.0f}s): {flooded:7.1f} MB (+{flooded - steady:.1f})")
    print(f"peak during a forced relist, caches full: {peak:7.1f} MB   limit 170Mi = {LIMIT_MB:.1f} MB")
    ok = peak < LIMIT_MB
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--endpoints", type=int, default=250)
    ap.add_argument("--entries", type=int, default=5000)
    ap.add_argument("--scale", action="store_true", help="RSS at 10k/50k/100k, flooded, then relisting")
    ap.add_argument("--queries", type=int, default=150000)
    ap.add_argument("--cpu", default="0", help="CPU list for kubedns (taskset -c)")
    args = ap.parse_args()
    if args.scale:
        return scale(args.queries, args.cpu)
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
