"""Cluster-name QPS while the cluster changes: static and churn phases alternated on one server.

    python bench/run.py --churn 2,20,100 [--services 1000] [--seconds 8] [--rounds 2] [--baseline TREE]

A real cluster is never still: this measures what a steady stream of Service changes to names
nobody queries costs the answers everybody asks for.  The cluster lives in
:class:`tests.fakeapi.FakeKubeAPI` (real HTTP on 127.0.0.1, in this process) and kubedns lists and
watches it through ``kubeconfig:``, so each change is a real watch event through the informer
into the store.  The queries are ``bench/run.py``'s (``--services`` Services in 10 namespaces,
``--nx`` of them NXDOMAIN); the changes flip the port of one of 50 other Services (``churnN``,
spread over the same namespaces: a DNS-visible change every time) at RATE per second.

For each RATE, ``--rounds`` times: a static phase (dnsperf, no changes), then a churn phase
(dnsperf while the changes run), on the same server; it prints the mean QPS of each, the ratio
(the figure to read: both halves share the machine's noise), kubedns's CPU per query and its
ratio (steadier than QPS when other processes share the CPUs), and how
many changes the API made and whether the last one reached the answers.  kubedns is pinned to
CPU 0; dnsperf, the fake API and the change loop to CPU 1.  ``--baseline TREE`` (a source tree,
e.g. ``git archive <commit> | tar -x -C /tmp/base``) runs the same first, for before/after figures
in one run.  Nothing leaves loopback.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import dns.message
import dns.query
from run import REPO, cpu_seconds, dnsperf, free_port, make_cluster, stop, wait_udp  # type: ignore[import-not-found]

from kubedns.serve.workers import TWISTD
from tests import fakeapi
from tests.support import kubeobj

N_CHURN = 50
ZONE = "cluster.local"


@dataclass
class Phase:
    qps: list[float] = field(default_factory=list)
    cpu_us: list[float] = field(default_factory=list)

    def add(self, qps: float, cpu_us: float) -> None:
        self.qps.append(qps)
        self.cpu_us.append(cpu_us)

    @property
    def mean_qps(self) -> float:
        return sum(self.qps) / len(self.qps) if self.qps else 0.0

    @property
    def mean_cpu(self) -> float:
        return sum(self.cpu_us) / len(self.cpu_us) if self.cpu_us else float("nan")


@dataclass
class RateResult:
    rate: float
    static: Phase = field(default_factory=Phase)
    churn: Phase = field(default_factory=Phase)
    changes: int = 0
    churn_s: float = 0.0  # wall time the change loop ran
    applied: bool = True


def _service(i: int) -> dict:
    ip = f"10.96.{i // 250}.{i % 250 + 1}"  # as bench/run.py's make_cluster
    return kubeobj.service(f"svc{i}", f"ns{i % 10}", cluster_ip=ip,
                           ports=[{"name": "http", "port": 80, "protocol": "TCP"}])


def _churn_service(j: int, port: int) -> dict:
    return kubeobj.service(f"churn{j}", f"ns{j % 10}", cluster_ip=f"10.100.0.{j + 1}",
                           ports=[{"name": "http", "port": port, "protocol": "TCP"}])


class Churner(threading.Thread):
    """Flips the port of one churn Service after another, ``rate`` times a second."""

    def __init__(self, api: fakeapi.FakeKubeAPI, rate: float, start_at: int):
        super().__init__(name="churn", daemon=True)
        self.api = api
        self.rate = rate
        self.done = threading.Event()
        self.n = start_at  # changes made so far (all phases): which Service and port come next
        self.made = 0

    def change(self) -> tuple[int, int]:
        j = self.n % N_CHURN
        port = 81 if (self.n // N_CHURN) % 2 == 0 else 80
        self.api.update("services", _churn_service(j, port))
        self.n += 1
        self.made += 1
        return j, port

    def run(self) -> None:
        interval = 1.0 / self.rate
        t = time.monotonic()
        while not self.done.is_set():
            self.change()
            t += interval
            delay = t - time.monotonic()
            if delay > 0:
                self.done.wait(delay)


def _srv_port(port: int, j: int) -> int | None:
    q = dns.message.make_query(f"_http._tcp.churn{j}.ns{j % 10}.svc.{ZONE}", "SRV")
    try:
        r = dns.query.udp(q, "127.0.0.1", port=port, timeout=1.0)
    except Exception:
        return None
    return r.answer[0][0].port if r.answer else None


def _phase(port: int, pid: int, queries: Path, seconds: float) -> tuple[float, float]:
    c0 = cpu_seconds(pid)[0]
    out = dnsperf(port, queries, seconds)
    c1 = cpu_seconds(pid)[0]
    m = re.search(r"Queries per second:\s+([\d.]+)", out)
    done = re.search(r"Queries completed:\s+(\d+)", out)
    completed = int(done.group(1)) if done else 0
    return (float(m.group(1)) if m else 0.0), ((c1 - c0) / completed * 1e6 if completed else float("nan"))


def measure(tree: Path, api: fakeapi.FakeKubeAPI, d: Path, queries: Path, rates: list[float],
            args: argparse.Namespace, counter: list[int]) -> list[RateResult]:
    port = free_port()
    kc = kubeobj.kubeconfig(d / "kubeconfig", api.url)
    cfg = d / f"churn-{port}.yaml"
    cfg.write_text("servers:\n"
                   f"  - zones: ['.']\n    listen: '127.0.0.1:{port}'\n"
                   f"    kubernetes: {{zones: [{ZONE}, in-addr.arpa], kubeconfig: '{kc}', ttl: 5}}\n")
    env = dict(os.environ, PYTHONUNBUFFERED="1", NO_PROXY="127.0.0.1")
    if tree != REPO:
        env["PYTHONPATH"] = os.pathsep.join(x for x in (str(tree), env.get("PYTHONPATH")) if x)
    log = open(d / f"kubedns-{port}.log", "wb")
    proc = subprocess.Popen(["taskset", "-c", "0", *TWISTD, "-n", "--pidfile=", "kubedns", "--config", str(cfg)],
                            cwd=tree, stdout=log, stderr=subprocess.STDOUT, env=env)
    results = []
    try:
        wait_udp(port, timeout=60)
        dnsperf(port, queries, 2.0)  # warm up
        for rate in rates:
            res = RateResult(rate)
            for _ in range(args.rounds):
                res.static.add(*_phase(port, proc.pid, queries, args.seconds))
                churner = Churner(api, rate, counter[0])
                t0 = time.monotonic()
                churner.start()
                try:
                    res.churn.add(*_phase(port, proc.pid, queries, args.seconds))
                finally:
                    churner.done.set()
                    churner.join()
                res.churn_s += time.monotonic() - t0
                counter[0] = churner.n
                res.changes += churner.made
                # the last change must have reached the answers
                j = (churner.n - 1) % N_CHURN
                want = 81 if ((churner.n - 1) // N_CHURN) % 2 == 0 else 80
                deadline = time.monotonic() + 5
                while _srv_port(port, j) != want and time.monotonic() < deadline:
                    time.sleep(0.05)
                res.applied = res.applied and _srv_port(port, j) == want
            results.append(res)
    finally:
        stop(proc)
        log.close()
    return results


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--churn", required=True, help="changes per second, comma separated: 2,20,100")
    ap.add_argument("--services", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=8.0, help="length of each static and churn phase")
    ap.add_argument("--rounds", type=int, default=2, help="static/churn pairs per rate")
    ap.add_argument("--nx", type=float, default=0.1, help="fraction of NXDOMAIN queries")
    ap.add_argument("--baseline", type=Path, metavar="TREE", help="a kubedns source tree measured first (before)")
    args = ap.parse_args(argv)
    try:
        rates = [float(x) for x in args.churn.split(",") if x.strip()]
    except ValueError:
        sys.exit(f"--churn {args.churn!r}: expected changes per second, e.g. 2,20,100")
    if not rates or any(r <= 0 for r in rates):
        sys.exit(f"--churn {args.churn!r}: rates must be positive")
    if args.baseline is not None and not any((args.baseline / "kubedns" / p).is_file()
                                             for p in ("serve/fastcache.py", "fastcache.py")):
        sys.exit(f"--baseline {args.baseline}: not a kubedns source tree (no kubedns/serve/fastcache.py)")
    os.sched_setaffinity(0, {1})  # the API and the change loop stay off kubedns's CPU
    trees = ([("baseline", args.baseline.resolve())] if args.baseline else []) + [("this tree", REPO)]
    table: list[tuple[str, RateResult]] = []
    with tempfile.TemporaryDirectory() as tmp, fakeapi.FakeKubeAPI() as api:
        d = Path(tmp)
        _, _, queries = make_cluster(d, args.services, args.nx)
        api.load([kubeobj.namespace(f"ns{j}") for j in range(10)])
        api.load([_service(i) for i in range(args.services)])
        api.load([_churn_service(j, 80) for j in range(N_CHURN)])
        counter = [0]
        for label, tree in trees:
            for r in measure(tree, api, d, queries, rates, args, counter):
                table.append((label, r))
    print(f"\nchurn: {args.services} services, {args.nx:.0%} NXDOMAIN queries; changes flip the port of one of "
          f"{N_CHURN} unqueried Services through the API watch")
    print(f"kubedns on CPU 0, dnsperf + API on CPU 1; {args.rounds} x ({args.seconds:g}s static, {args.seconds:g}s churn) per rate")
    print(f"{'tree':<11}{'changes/s':>10}{'QPS static':>12}{'QPS churn':>11}{'ratio':>7}{'us/q static':>13}"
          f"{'us/q churn':>12}{'cpu ratio':>11}{'made/s':>8}{'applied':>9}")
    for label, r in table:
        ratio = r.churn.mean_qps / r.static.mean_qps if r.static.mean_qps else float("nan")
        print(f"{label:<11}{r.rate:>10g}{r.static.mean_qps:>12.0f}{r.churn.mean_qps:>11.0f}{ratio:>7.2f}"
              f"{r.static.mean_cpu:>13.1f}{r.churn.mean_cpu:>12.1f}{r.static.mean_cpu / r.churn.mean_cpu:>11.2f}{r.changes / r.churn_s if r.churn_s else 0:>8.1f}{'yes' if r.applied else 'NO':>9}")
    print("ratio = QPS churn / QPS static of the same server (the figure to compare: the machine is shared);")
    print("us/q = kubedns CPU per answered query; cpu ratio = us/q static / us/q churn (the QPS one saturated core")
    print("would keep under churn, steadier than QPS when other processes share the CPUs);")
    print("made/s = changes the API made per second of churn phase; applied = the last change reached the answers")
