"""Cluster-name QPS while the cluster changes: static and churn phases alternated on one server.

    python bench/run.py --churn 2,20,100 [--services 1000] [--seconds 8] [--rounds 2] [--baseline TREE]
    python bench/run.py --churn 2,20,100 --together [--qps 40000] [--rounds 6] [--seconds 4]

A real cluster is never still: this measures what a steady stream of Service changes to names
nobody queries costs the answers everybody asks for.  The cluster lives in
:class:`tests.fakeapi.FakeKubeAPI` (real HTTP on 127.0.0.1, in this process) and kubedns lists and
watches it through ``kubeconfig:``, so each change is a real watch event through the informer
into the store.  The queries are ``bench/run.py``'s (``--services`` Services in 10 namespaces,
``--nx`` of them NXDOMAIN); the changes flip the port of one of 50 other Services (``churnN``,
spread over the same namespaces: a DNS-visible change every time) at RATE per second.

For each RATE, ``--rounds`` times: a static phase (dnsperf, no changes) and a churn phase
(dnsperf while the changes run), on the same server, the order alternating per round; it prints
the median QPS of each, the median of each round's ratio (the figure to read: both halves share
the machine's noise), kubedns's CPU per query and its ratio (steadier than QPS when other
processes share the CPUs), kubedns's CPU per change with no queries (a churn window minus an idle
one), how many changes the API made and whether the last one reached the answers.  kubedns is
pinned to CPU 0; dnsperf, the fake API and the change loop to CPU 1, so the API's work is CPU
dnsperf does not get: the second table prints it (this process's CPU per second of each phase,
beside dnsperf's own CPU per query), to read the QPS ratio against.

``--together [--qps N]`` is the fair and steady form: two servers on CPU 0, each watching its own
fake API, both loaded at once at N QPS (40000) by a dnsperf each, while one of the two APIs
changes (they swap roles each round).  The API's work then takes nothing from either server's
load, whatever else the machine does hits both alike, and the ratio of their CPU per query (the
QPS one saturated core keeps under changes) is good to about 1%; the difference, per change, is
what a change costs kubedns while it serves.

``--baseline TREE`` (a source tree, e.g. ``git archive <commit> | tar -x -C /tmp/base``) runs the
same first, for before/after figures in one run.  Nothing leaves loopback.
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
from typing import IO

import dns.message
import dns.query
from run import REPO, cpu_seconds, dnsperf, free_port, make_cluster, median, parse_dnsperf, stop, wait_udp  # type: ignore[import-not-found]

from kubedns.serve.workers import TWISTD
from tests import fakeapi
from tests.support import kubeobj

N_CHURN = 50
ZONE = "cluster.local"


@dataclass
class Phase:
    qps: list[float] = field(default_factory=list)
    cpu_us: list[float] = field(default_factory=list)
    own_ms: list[float] = field(default_factory=list)  # this process (API + change loop) CPU ms per second, on CPU 1
    perf_us: list[float] = field(default_factory=list)  # dnsperf's CPU µs per query, on CPU 1

    def add(self, m: tuple[float, float, float, float]) -> None:
        self.qps.append(m[0])
        self.cpu_us.append(m[1])
        self.own_ms.append(m[2])
        self.perf_us.append(m[3])


@dataclass
class RateResult:
    rate: float
    static: Phase = field(default_factory=Phase)
    churn: Phase = field(default_factory=Phase)
    changes: int = 0
    churn_s: float = 0.0  # wall time the change loop ran
    applied: bool = True
    quiet_us: float = 0.0  # kubedns CPU µs per change with no queries (quiet_cost)

    def ratios(self, attr: str) -> list[float]:
        """Per round: churn / static of ``attr`` (each round's two phases are seconds apart)."""
        return [c / s for s, c in zip(getattr(self.static, attr), getattr(self.churn, attr), strict=True) if s]


def _service(i: int) -> dict:
    ip = f"10.96.{i // 250}.{i % 250 + 1}"  # as bench/run.py's make_cluster
    return kubeobj.service(f"svc{i}", f"ns{i % 10}", cluster_ip=ip,
                           ports=[{"name": "http", "port": 80, "protocol": "TCP"}])


def _churn_service(j: int, port: int) -> dict:
    return kubeobj.service(f"churn{j}", f"ns{j % 10}", cluster_ip=f"10.100.0.{j + 1}",
                           ports=[{"name": "http", "port": port, "protocol": "TCP"}])


def nth_change(n: int) -> tuple[int, int]:
    """Change number ``n`` (from 0): which churn Service, and the port it gets (81 on odd passes
    over the 50 Services, 80 on even ones, so every change is a real one)."""
    return n % N_CHURN, 81 if (n // N_CHURN) % 2 == 0 else 80


class Churner(threading.Thread):
    """Flips the port of one churn Service after another, ``rate`` times a second."""

    #: both versions of every churn Service, built once: a change is only the API's own work
    #: (``update`` copies what it is given, so the same dict can be handed over again)
    _objects = {(j, port): _churn_service(j, port) for j in range(N_CHURN) for port in (80, 81)}

    def __init__(self, api: fakeapi.FakeKubeAPI, rate: float, start_at: int):
        super().__init__(name="churn", daemon=True)
        self.api = api
        self.rate = rate
        self.done = threading.Event()
        self.n = start_at  # changes made so far (all phases): which Service and port come next
        self.made = 0

    def change(self) -> tuple[int, int]:
        j, port = nth_change(self.n)
        self.api.update("services", self._objects[j, port])
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


def cpu_ns(pid: int) -> int:
    """Nanoseconds of CPU all threads of ``pid`` have run (``schedstat``: finer than clock ticks)."""
    total = 0
    for t in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((t / "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            pass  # a thread that ended meanwhile
    return total


def quiet_cost(api: fakeapi.FakeKubeAPI, pid: int, rate: float, seconds: float, counter: list[int]) -> tuple[float, int]:
    """kubedns's CPU µs per change with no queries: a churn window minus an idle one of the same
    length (its timers and threads), and the changes made."""
    c0 = cpu_ns(pid)
    time.sleep(seconds)
    idle = cpu_ns(pid) - c0
    churner = Churner(api, rate, counter[0])
    c1 = cpu_ns(pid)
    churner.start()
    time.sleep(seconds)
    churner.done.set()
    churner.join()
    time.sleep(0.2)  # the last event's work
    busy = cpu_ns(pid) - c1
    counter[0] = churner.n
    return max(0.0, busy - idle * (seconds + 0.2) / seconds) / max(1, churner.made) / 1e3, churner.made


def _phase(port: int, pid: int, queries: Path, seconds: float) -> tuple[float, float, float, float]:
    """(QPS, kubedns CPU µs per query, this process's CPU ms per second, dnsperf's CPU µs per query)."""
    c0 = cpu_seconds(pid)[0]
    t0, w0 = os.times(), time.monotonic()
    out = dnsperf(port, queries, seconds)
    t1, w1 = os.times(), time.monotonic()
    c1 = cpu_seconds(pid)[0]
    m = re.search(r"Queries per second:\s+([\d.]+)", out)
    done = re.search(r"Queries completed:\s+(\d+)", out)
    completed = int(done.group(1)) if done else 0
    own = (t1.user + t1.system - t0.user - t0.system) / (w1 - w0) * 1e3
    perf = t1.children_user + t1.children_system - t0.children_user - t0.children_system
    if not completed:
        return 0.0, float("nan"), own, float("nan")
    return (float(m.group(1)) if m else 0.0), (c1 - c0) / completed * 1e6, own, perf / completed * 1e6


def start_kubedns(tree: Path, api: fakeapi.FakeKubeAPI, d: Path) -> tuple[subprocess.Popen, int, IO[bytes]]:
    """kubedns from ``tree`` on CPU 0, listing and watching ``api``: (process, UDP port, its log)."""
    port = free_port()
    kc = kubeobj.kubeconfig(d / f"kubeconfig-{port}", api.url)
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
    return proc, port, log


def _reached(port: int, n: int) -> bool:
    """Whether the ``n``-th change (the last one made) reached the answers (waits up to 5 s)."""
    j, want = nth_change(n - 1)
    deadline = time.monotonic() + 5
    while _srv_port(port, j) != want and time.monotonic() < deadline:
        time.sleep(0.05)
    return _srv_port(port, j) == want


def measure(tree: Path, api: fakeapi.FakeKubeAPI, d: Path, queries: Path, rates: list[float],
            args: argparse.Namespace, counter: list[int]) -> list[RateResult]:
    proc, port, log = start_kubedns(tree, api, d)
    results = []
    try:
        wait_udp(port, timeout=60)
        dnsperf(port, queries, 2.0)  # warm up
        for rate in rates:
            res = RateResult(rate)
            res.quiet_us, _ = quiet_cost(api, proc.pid, rate, max(3.0, min(args.seconds, 200 / rate)), counter)
            for i in range(args.rounds):
                # the order alternates, so a drift of the machine does not favour either phase
                for churning in ((False, True) if i % 2 == 0 else (True, False)):
                    if not churning:
                        res.static.add(_phase(port, proc.pid, queries, args.seconds))
                        continue
                    churner = Churner(api, rate, counter[0])
                    t0 = time.monotonic()
                    churner.start()
                    try:
                        res.churn.add(_phase(port, proc.pid, queries, args.seconds))
                    finally:
                        churner.done.set()
                        churner.join()
                    res.churn_s += time.monotonic() - t0
                    counter[0] = churner.n
                    res.changes += churner.made
                    res.applied = _reached(port, churner.n) and res.applied
            results.append(res)
    finally:
        stop(proc)
        log.close()
    return results


@dataclass
class TogetherResult:
    rate: float
    ratio: list[float] = field(default_factory=list)  # per round: us/q static / us/q churn
    extra_us: list[float] = field(default_factory=list)  # per round: kubedns CPU µs per change, under load
    usq: list[float] = field(default_factory=list)  # per round: the static server's us/q
    changes: int = 0
    churn_s: float = 0.0
    applied: bool = True


def together(tree: Path, d: Path, queries: Path, rates: list[float], args: argparse.Namespace) -> list[TogetherResult]:
    """Two servers of ``tree`` on CPU 0, each watching its own fake API, both loaded at once at
    ``--qps`` by a dnsperf each, while one API changes at RATE (which one alternates per round):
    whatever else the machine does, both get the same share of it, so their CPU per query compares
    to about 1%, and the difference is what the changes cost, hot (caches warm, as under load)."""
    apis = [fakeapi.FakeKubeAPI().start(), fakeapi.FakeKubeAPI().start()]
    servers = []
    counters = [0, 0]
    out = []
    try:
        for api in apis:
            _load(api, args.services)
            servers.append(start_kubedns(tree, api, d))
        for _, port, _ in servers:
            wait_udp(port, timeout=60)
            dnsperf(port, queries, 2.0)  # warm up
        for rate in rates:
            res = TogetherResult(rate)
            for i in range(args.rounds):
                c, s = i % 2, 1 - i % 2  # the server whose API changes, and the static one
                churner = Churner(apis[c], rate, counters[c])
                c0 = [cpu_ns(p.pid) for p, _, _ in servers]
                t0 = time.monotonic()
                churner.start()
                perfs = [subprocess.Popen(["taskset", "-c", "1", "dnsperf", "-s", "127.0.0.1", "-p", str(port),
                                           "-d", str(queries), "-l", str(args.seconds), "-c", "8", "-q", "500",
                                           "-t", "2", "-Q", str(args.qps)],
                                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
                         for _, port, _ in servers]
                outs = [p.communicate(timeout=args.seconds + 60)[0] for p in perfs]
                churner.done.set()
                churner.join()
                res.churn_s += time.monotonic() - t0
                c1 = [cpu_ns(p.pid) for p, _, _ in servers]
                counters[c] = churner.n
                res.changes += churner.made
                done = [parse_dnsperf(o)[1] for o in outs]
                if not all(done):
                    sys.exit("dnsperf completed no query:\n" + "\n".join(outs))
                cpu = [(b - a) / 1e3 for a, b in zip(c0, c1, strict=True)]  # µs
                usq = [x / n for x, n in zip(cpu, done, strict=True)]
                res.ratio.append(usq[s] / usq[c])
                res.usq.append(usq[s])
                res.extra_us.append((cpu[c] - usq[s] * done[c]) / max(1, churner.made))
                res.applied = _reached(servers[c][1], churner.n) and res.applied
                print(f"  {rate:g}/s round {i + 1}: us/q static {usq[s]:.2f} churn {usq[c]:.2f}", flush=True)
            out.append(res)
    finally:
        for p, _, log in servers:
            stop(p)
            log.close()
        for api in apis:
            api.stop()
    return out


def _load(api: fakeapi.FakeKubeAPI, services: int) -> None:
    api.load([kubeobj.namespace(f"ns{j}") for j in range(10)])
    api.load([_service(i) for i in range(services)])
    api.load([_churn_service(j, 80) for j in range(N_CHURN)])


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--churn", required=True, help="changes per second, comma separated: 2,20,100")
    ap.add_argument("--services", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=8.0, help="length of each static and churn phase")
    ap.add_argument("--rounds", type=int, default=2, help="static/churn pairs per rate")
    ap.add_argument("--nx", type=float, default=0.1, help="fraction of NXDOMAIN queries")
    ap.add_argument("--baseline", type=Path, metavar="TREE", help="a kubedns source tree measured first (before)")
    ap.add_argument("--together", action="store_true",
                    help="two servers loaded at once at --qps, one of them under changes: CPU per query "
                         "compared to ~1%% and kubedns's CPU per change under load (see together())")
    ap.add_argument("--qps", type=int, default=40000, help="--together: queries per second sent to each server")
    args = ap.parse_args(argv)
    try:
        rates = [float(x) for x in args.churn.split(",") if x.strip()]
    except ValueError:
        sys.exit(f"--churn {args.churn!r}: expected changes per second, e.g. 2,20,100")
    if not rates or any(r <= 0 for r in rates):
        sys.exit(f"--churn {args.churn!r}: rates must be positive")
    if args.rounds < 1 or args.seconds <= 0 or args.qps <= 0:
        sys.exit("--rounds must be at least 1, --seconds and --qps positive")
    if args.baseline is not None and not any((args.baseline / "kubedns" / p).is_file()
                                             for p in ("serve/fastcache.py", "fastcache.py")):
        sys.exit(f"--baseline {args.baseline}: not a kubedns source tree (no kubedns/serve/fastcache.py)")
    os.sched_setaffinity(0, {1})  # the API and the change loop stay off kubedns's CPU
    trees = ([("baseline", args.baseline.resolve())] if args.baseline else []) + [("this tree", REPO)]
    table: list[tuple[str, RateResult]] = []
    with tempfile.TemporaryDirectory() as tmp, fakeapi.FakeKubeAPI() as api:
        d = Path(tmp)
        _, _, queries = make_cluster(d, args.services, args.nx)
        _load(api, args.services)
        if args.together:
            tables = [(label, together(tree, d, queries, rates, args)) for label, tree in trees]
            _print_together(tables, args)
            return
        counter = [0]
        for label, tree in trees:
            for r in measure(tree, api, d, queries, rates, args, counter):
                table.append((label, r))
    print(f"\nchurn: {args.services} services, {args.nx:.0%} NXDOMAIN queries; changes flip the port of one of "
          f"{N_CHURN} unqueried Services through the API watch")
    print(f"kubedns on CPU 0; dnsperf, the fake API and the change loop (this process) on CPU 1; {args.rounds} x "
          f"({args.seconds:g}s static, {args.seconds:g}s churn) per rate, the order alternating; medians")
    print(f"{'tree':<11}{'changes/s':>10}{'QPS static':>12}{'QPS churn':>11}{'ratio':>7}{'rounds':>11}"
          f"{'us/q static':>13}{'us/q churn':>12}{'cpu ratio':>11}{'us/change':>11}{'made/s':>8}{'applied':>9}")
    for label, r in table:
        q = r.ratios("qps")
        c = [1 / x for x in r.ratios("cpu_us") if x]
        print(f"{label:<11}{r.rate:>10g}{median(r.static.qps):>12.0f}{median(r.churn.qps):>11.0f}{median(q):>7.2f}"
              f"{min(q):>6.2f}-{max(q):<4.2f}{median(r.static.cpu_us):>13.2f}{median(r.churn.cpu_us):>12.2f}"
              f"{median(c):>11.2f}{r.quiet_us:>11.0f}{r.changes / r.churn_s if r.churn_s else 0:>8.1f}"
              f"{'yes' if r.applied else 'NO':>9}")
    print("\nCPU 1 (the load generator's side), same phases:")
    print(f"{'tree':<11}{'changes/s':>10}{'API+loop ms/s static':>22}{'churn':>8}{'dnsperf us/q static':>21}{'churn':>8}")
    for label, r in table:
        print(f"{label:<11}{r.rate:>10g}{median(r.static.own_ms):>22.1f}{median(r.churn.own_ms):>8.1f}"
              f"{median(r.static.perf_us):>21.2f}{median(r.churn.perf_us):>8.2f}")
    print("\nratio = QPS churn / QPS static of the same server, per round (rounds: lowest-highest);")
    print("us/q = kubedns CPU per answered query; cpu ratio = us/q static / us/q churn per round (the QPS one")
    print("saturated core would keep under churn); us/change = kubedns CPU per change with no queries (a churn")
    print("window minus an idle one); made/s = changes the API made per second of churn phase; applied = the")
    print("last change reached the answers.  API+loop ms/s = CPU this process (fake API, change loop) took from")
    print("CPU 1 per second of phase, which dnsperf did not get; dnsperf us/q = the load generator's own cost.")


def _print_together(tables: list[tuple[str, list[TogetherResult]]], args: argparse.Namespace) -> None:
    print(f"\nchurn, together: {args.services} services, {args.nx:.0%} NXDOMAIN queries; two kubedns on CPU 0, each "
          f"watching its own fake API and loaded at {args.qps} QPS by its own dnsperf (CPU 1), at the same time;")
    print(f"one API changes at RATE (the two swap roles each round); {args.rounds} rounds of {args.seconds:g}s; medians")
    print(f"{'tree':<11}{'changes/s':>10}{'us/q static':>13}{'cpu ratio':>11}{'rounds':>12}{'us/change':>11}"
          f"{'made/s':>8}{'applied':>9}")
    for label, rows in tables:
        for r in rows:
            print(f"{label:<11}{r.rate:>10g}{median(r.usq):>13.2f}{median(r.ratio):>11.3f}"
                  f"{min(r.ratio):>7.3f}-{max(r.ratio):<5.3f}{median(r.extra_us):>10.0f}"
                  f"{r.changes / r.churn_s if r.churn_s else 0:>8.1f}{'yes' if r.applied else 'NO':>9}")
    print("cpu ratio = us/q of the static server / us/q of the one under changes, per round: the QPS one saturated")
    print("core keeps under changes; us/change = the changing server's CPU beyond the static one's per query,")
    print("per change (hot: what a change costs while serving).")
