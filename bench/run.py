"""Cluster-name benchmark: kubedns vs a stock twisted.names server vs dnsmasq, in one run.

    python bench/run.py [--services 1000] [--seconds 8] [--nx 0.1]
    python bench/run.py --forward [--names 400000]   (forwarded cache misses: bench/forward_miss.py)
    python bench/run.py --churn 2,20,100 [--baseline TREE] [--together]   (QPS under Service changes: bench/churn.py)
    python bench/run.py --baseline TREE [--rounds 9] [--seconds 3] [--qps N] [--together]   (this tree vs TREE vs dnsmasq)

Each server is pinned to CPU 0 with taskset, dnsperf to CPU 1, all on 127.0.0.1.  For each
server it prints: max QPS (dnsperf, unthrottled), server CPU µs per query (from the process's
own CPU time: the steadiest figure on a shared machine), p50/p99 latency at a fixed 10k QPS
(from dnsperf -v per-query latencies), RSS after the run, and ratios to the other servers.
kubedns is run twice when it has a fast path: with it (default) and with KUBEDNS_FAST_PATH=0.
``python-floor`` (bench/floor_server.py) is a bare socket loop answering from a dict: the floor
any Python UDP server pays on this kernel, to read the CPU figures against.
``--baseline TREE`` (a source tree, e.g. ``git archive <rev> | tar -x -C /tmp/base``) is the
before/after measurement that can see a few percent on a noisy machine: this tree's kubedns,
TREE's and dnsmasq are started once, kept running, all pinned to CPU 0, and dnsperf (CPU 1) takes
turns between them in short runs, ``--rounds`` times (the order rotates each round).  It prints
each one's median QPS and median CPU µs per query split user/system, and the medians of the
per-round ratios (each round's runs are seconds apart, so they share the machine's state).
``--qps N`` sends at a fixed rate (every server does the same work per second, so CPU per query
compares like for like); ``--together`` loads every server at the same time, each with its own
dnsperf at ``--qps`` (40000 by default): whatever else the machine does then, each server gets the
same share of it, and the per-round CPU ratios agree to about 1% where turns spread over ±20%.
Nothing leaves loopback.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from kubedns.serve.workers import TWISTD  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Result:
    name: str
    qps: float = 0.0
    cpu_us: float = 0.0
    sys_us: float = 0.0  # the kernel's share of cpu_us (socket calls, loopback delivery)
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    rss_mb: float = 0.0
    lost: float = 0.0


def free_port() -> int:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(user + system, system) CPU seconds of ``pid`` so far (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / TICKS, stime / TICKS


def parse_dnsperf(out: str) -> tuple[float, int, int]:
    """(QPS, queries completed, queries lost) from dnsperf's summary."""
    m = re.search(r"Queries per second:\s+([\d.]+)", out)
    done = re.search(r"Queries completed:\s+(\d+)", out)
    lost = re.search(r"Queries lost:\s+(\d+)", out)
    return (float(m.group(1)) if m else 0.0), (int(done.group(1)) if done else 0), (int(lost.group(1)) if lost else 0)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def make_cluster(d: Path, n: int, nx: float) -> tuple[Path, Path, Path]:
    """Manifests for kubedns, a hosts file for the others, and a dnsperf query file."""
    import yaml

    items: list[dict] = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": f"ns{j}"}} for j in range(10)]
    hosts = []
    names = []
    for i in range(n):
        ns = f"ns{i % 10}"
        ip = f"10.96.{i // 250}.{i % 250 + 1}"
        items.append({
            "apiVersion": "v1", "kind": "Service", "metadata": {"name": f"svc{i}", "namespace": ns},
            "spec": {"type": "ClusterIP", "clusterIP": ip, "clusterIPs": [ip], "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]},
        })
        name = f"svc{i}.{ns}.svc.cluster.local"
        hosts.append(f"{ip} {name}")
        names.append(name)
    manifests = d / "cluster.yaml"
    manifests.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": items}))
    hostsfile = d / "hosts"
    hostsfile.write_text("\n".join(hosts) + "\n")
    rng = random.Random(42)
    lines = []
    for _ in range(20000):
        if rng.random() < nx:
            lines.append(f"nosuch{rng.randrange(n)}.ns{rng.randrange(10)}.svc.cluster.local A")
        else:
            lines.append(f"{rng.choice(names)} A")
    queries = d / "queries.txt"
    queries.write_text("\n".join(lines) + "\n")
    return manifests, hostsfile, queries


def wait_udp(port: int, timeout: float = 20.0) -> None:
    import dns.message
    import dns.query

    q = dns.message.make_query("svc0.ns0.svc.cluster.local", "A")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            r = dns.query.udp(q, "127.0.0.1", port=port, timeout=0.3)
            if r.rcode() == 0 and r.answer:
                return
        except Exception:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"server on {port} did not answer")


def dnsperf(port: int, queries: Path, seconds: float, qps: int | None = None, verbose: bool = False) -> str:
    cmd = ["taskset", "-c", "1", "dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", str(queries),
           "-l", str(seconds), "-c", "8", "-q", "500", "-t", "2"]
    if qps:
        cmd += ["-Q", str(qps)]
    if verbose:
        cmd.append("-v")
    return subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60).stdout


def measure(name: str, proc: subprocess.Popen, port: int, queries: Path, seconds: float) -> Result:
    wait_udp(port)
    dnsperf(port, queries, 1.0)  # warm up
    r = Result(name)
    c0 = cpu_seconds(proc.pid)
    out = dnsperf(port, queries, seconds)
    c1 = cpu_seconds(proc.pid)
    r.qps, completed, r.lost = parse_dnsperf(out)
    r.cpu_us = (c1[0] - c0[0]) / completed * 1e6 if completed else float("nan")
    r.sys_us = (c1[1] - c0[1]) / completed * 1e6 if completed else float("nan")
    out = dnsperf(port, queries, 4.0, qps=10000, verbose=True)
    lat = sorted(float(x) for x in re.findall(r"^> \S+ \S+ \S+ ([\d.]+)$", out, re.M))
    if lat:
        r.p50_ms = lat[len(lat) // 2] * 1000
        r.p99_ms = lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000
    r.rss_mb = rss_mb(proc.pid)
    return r


def start(cmd: list[str], env: dict | None = None, log: Path | None = None) -> subprocess.Popen:
    out = open(log, "wb") if log else subprocess.DEVNULL
    return subprocess.Popen(["taskset", "-c", "0", *cmd], cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                            env=dict(os.environ, **(env or {})))


def stop(p: subprocess.Popen, timeout: float = 10.0) -> None:
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()


def kubedns_config(d: Path, label: str, port: int, manifests: Path) -> Path:
    cfg = d / f"{label}.yaml"
    cfg.write_text(
        "servers:\n"
        f"  - zones: ['.']\n    listen: '127.0.0.1:{port}'\n"
        f"    kubernetes: {{zones: [cluster.local], manifests: '{manifests}', ttl: 5}}\n"
    )
    return cfg


def tree_env(tree: Path) -> dict[str, str]:
    """Environment that makes twistd import kubedns from ``tree`` (this checkout: unchanged)."""
    if tree == REPO:
        return {}
    return {"PYTHONPATH": os.pathsep.join(x for x in (str(tree), os.environ.get("PYTHONPATH")) if x)}


def median(xs: list[float]) -> float:
    xs = sorted(xs)
    n = len(xs)
    if not n:
        return float("nan")
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2


@dataclass
class Runs:
    """One server's short runs in an interleaved comparison."""

    name: str
    pid: int
    port: int
    qps: list[float]
    user_us: list[float]
    sys_us: list[float]
    lost: int = 0

    @property
    def cpu_us(self) -> list[float]:
        return [u + s for u, s in zip(self.user_us, self.sys_us, strict=True)]


def _stat(pid: int) -> tuple[int, int]:
    """(utime, stime) clock ticks of ``pid``, all threads."""
    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(f[11]), int(f[12])


def _record(r: Runs, out: str, c0: tuple[int, int], c1: tuple[int, int]) -> None:
    qps, done, lost = parse_dnsperf(out)
    if not done:
        sys.exit(f"{r.name}: dnsperf completed no query:\n{out}")
    r.qps.append(qps)
    r.user_us.append((c1[0] - c0[0]) / TICKS / done * 1e6)
    r.sys_us.append((c1[1] - c0[1]) / TICKS / done * 1e6)
    r.lost += lost


def _round_one(r: Runs, queries: Path, args: argparse.Namespace) -> None:
    c0 = _stat(r.pid)
    out = dnsperf(r.port, queries, args.seconds, qps=args.qps or None)
    _record(r, out, c0, _stat(r.pid))


def _round_together(runs: list[Runs], queries: Path, args: argparse.Namespace) -> None:
    """Every server loaded at once, each by its own dnsperf at ``--qps``: whatever else the
    machine does in those seconds, every server gets the same share of it."""
    c0 = [_stat(r.pid) for r in runs]
    perfs = [subprocess.Popen(["taskset", "-c", "1", "dnsperf", "-s", "127.0.0.1", "-p", str(r.port), "-d", str(queries),
                               "-l", str(args.seconds), "-c", "8", "-q", "500", "-t", "2", "-Q", str(args.qps)],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) for r in runs]
    outs = [p.communicate(timeout=args.seconds + 60)[0] for p in perfs]
    c1 = [_stat(r.pid) for r in runs]
    for r, out, a, b in zip(runs, outs, c0, c1, strict=True):
        _record(r, out, a, b)


def interleaved(args: argparse.Namespace) -> None:
    """This tree vs ``--baseline`` TREE (vs dnsmasq): servers kept alive, dnsperf taking turns."""
    tree = args.baseline.resolve()
    procs: list[subprocess.Popen] = []
    runs: list[Runs] = []
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        manifests, hostsfile, queries = make_cluster(d, args.services, args.nx)
        try:
            for label, src in (("kubedns", REPO), ("baseline", tree)):
                port = free_port()
                cfg = kubedns_config(d, label, port, manifests)
                log = open(d / f"{label}.log", "wb")
                p = subprocess.Popen(["taskset", "-c", "0", *TWISTD, "-n", "--pidfile=", "kubedns", "--config", str(cfg)],
                                     cwd=src, stdout=log, stderr=subprocess.STDOUT,
                                     env=dict(os.environ, KUBEDNS_FAST_PATH="1", **tree_env(src)))
                procs.append(p)
                runs.append(Runs(label, p.pid, port, [], [], []))
            if shutil.which("dnsmasq") and "dnsmasq" not in args.skip:
                port = free_port()
                p = start(["dnsmasq", "-k", "--conf-file=/dev/null", f"--port={port}", "--listen-address=127.0.0.1",
                           "--bind-interfaces", "--no-resolv", "--no-hosts", f"--addn-hosts={hostsfile}",
                           "--local=/cluster.local/", "--cache-size=10000", "--local-ttl=5", "--user=root"])
                procs.append(p)
                runs.append(Runs("dnsmasq", p.pid, port, [], [], []))
            for r in runs:
                wait_udp(r.port, timeout=60)
                dnsperf(r.port, queries, 2.0)  # warm up: every name answered once, pre-encoded
            for i in range(args.rounds):
                if args.together:
                    _round_together(runs, queries, args)
                else:
                    k = i % len(runs)
                    for r in runs[k:] + runs[:k]:  # the order rotates: no server always runs first
                        _round_one(r, queries, args)
                print(f"round {i + 1}/{args.rounds}: " + "  ".join(f"{r.name} {r.qps[-1]:.0f} QPS {r.cpu_us[-1]:.1f} us/q"
                                                                   for r in runs), flush=True)
        finally:
            for p in procs:
                stop(p)
    rate = f"at {args.qps} QPS offered" if args.qps else "unthrottled"
    how = "all loaded at once (one dnsperf each)" if args.together else "taking turns"
    print(f"\n{args.services} services, {args.nx:.0%} NXDOMAIN; servers kept running on CPU 0, dnsperf on CPU 1 "
          f"{how}: {args.rounds} rounds of {args.seconds:g}s runs {rate}; baseline = {tree}")
    print(f"{'server':<10}{'QPS':>10}{'CPU us/q':>10}{'user us/q':>11}{'sys us/q':>10}{'QPS min-max':>18}{'lost':>7}")
    for r in runs:
        print(f"{r.name:<10}{median(r.qps):>10.0f}{median(r.cpu_us):>10.2f}{median(r.user_us):>11.2f}"
              f"{median(r.sys_us):>10.2f}{min(r.qps):>10.0f}-{max(r.qps):<7.0f}{r.lost:>7}")
    print("medians over the rounds; ratios below are medians of each round's own ratio:")
    by = {r.name: r for r in runs}
    for a, b in (("kubedns", "baseline"), ("kubedns", "dnsmasq"), ("baseline", "dnsmasq")):
        if a in by and b in by:
            ra, rb = by[a], by[b]
            q = [x / y for x, y in zip(ra.qps, rb.qps, strict=True) if y]
            c = [x / y for x, y in zip(ra.cpu_us, rb.cpu_us, strict=True) if y]
            u = [x / y for x, y in zip(ra.user_us, rb.user_us, strict=True) if y]
            print(f"{a}/{b}: QPS {median(q):.3f} (rounds {min(q):.2f}-{max(q):.2f})   CPU/query {median(c):.3f} "
                  f"(rounds {min(c):.2f}-{max(c):.2f})   user CPU/query {median(u):.3f}")


def main() -> None:
    if "--forward" in sys.argv[1:]:  # forwarded cache misses: bench/forward_miss.py
        import forward_miss

        forward_miss.main([a for a in sys.argv[1:] if a != "--forward"])
        return
    if any(a == "--churn" or a.startswith("--churn=") for a in sys.argv[1:]):  # bench/churn.py
        import churn

        churn.main(sys.argv[1:])
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--services", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--nx", type=float, default=0.1, help="fraction of NXDOMAIN queries")
    ap.add_argument("--only", default="", help="comma list: kubedns,kubedns-slow,stock,dnsmasq,floor")
    ap.add_argument("--baseline", type=Path, metavar="TREE",
                    help="interleaved comparison: this tree vs the kubedns source tree TREE vs dnsmasq")
    ap.add_argument("--rounds", type=int, default=9, help="--baseline: runs per server (default 9)")
    ap.add_argument("--skip", default="", help="--baseline: 'dnsmasq' to leave it out")
    ap.add_argument("--qps", type=int, default=0,
                    help="--baseline: send at this fixed rate (dnsperf -Q) instead of as fast as possible: "
                         "every server then does the same work per second and CPU per query compares like for like")
    ap.add_argument("--together", action="store_true",
                    help="--baseline: load every server at the same time, each at --qps (default 40000): "
                         "the steadiest CPU-per-query comparison on a shared machine")
    args = ap.parse_args()
    if args.baseline is not None and not (args.baseline / "kubedns").is_dir():
        sys.exit(f"--baseline {args.baseline}: not a kubedns source tree (no kubedns/ folder)")
    if args.rounds < 1 or args.seconds <= 0 or args.qps < 0:
        sys.exit("--rounds must be at least 1, --seconds positive and --qps not negative")
    for tool in ("dnsperf", "taskset"):
        if not shutil.which(tool):
            sys.exit(f"{tool} not found: apt-get install dnsperf util-linux")
    if args.baseline is not None:
        if args.together and args.qps <= 0:
            args.qps = 40000
        interleaved(args)
        return
    only = set(args.only.split(",")) if args.only else None
    results: list[Result] = []
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        manifests, hostsfile, queries = make_cluster(d, args.services, args.nx)

        def kubedns(label: str, fast: bool) -> None:
            port = free_port()
            cfg = kubedns_config(d, label, port, manifests)
            p = start([*TWISTD, "-n", "--pidfile=", "kubedns", "--config", str(cfg)],
                      env={"KUBEDNS_FAST_PATH": "1" if fast else "0"}, log=d / f"{label}.log")
            try:
                results.append(measure(label, p, port, queries, args.seconds))
            finally:
                stop(p)

        if only is None or "kubedns" in only:
            kubedns("kubedns", True)
        if only is None or "kubedns-slow" in only:
            kubedns("kubedns-slow", False)
        def other(label: str, cmd: list[str], port: int) -> None:
            p = start(cmd)
            try:
                results.append(measure(label, p, port, queries, args.seconds))
            finally:
                stop(p)

        if only is None or "stock" in only:
            port = free_port()
            other("twisted-stock", [sys.executable, str(REPO / "bench" / "stock_server.py"), str(port), str(hostsfile)], port)
        if only is None or "floor" in only:
            port = free_port()
            other("python-floor", [sys.executable, str(REPO / "bench" / "floor_server.py"), str(port), str(hostsfile)], port)
        if (only is None or "dnsmasq" in only) and shutil.which("dnsmasq"):
            port = free_port()
            other("dnsmasq", ["dnsmasq", "-k", "--conf-file=/dev/null", f"--port={port}", "--listen-address=127.0.0.1",
                              "--bind-interfaces", "--no-resolv", "--no-hosts", f"--addn-hosts={hostsfile}",
                              "--local=/cluster.local/", "--cache-size=10000", "--local-ttl=5", "--user=root"], port)

    print(f"\n{args.services} services, {args.nx:.0%} NXDOMAIN, server on CPU 0, dnsperf on CPU 1, {args.seconds:g}s runs")
    print(f"{'server':<14}{'QPS':>10}{'CPU us/q':>10}{'sys us/q':>10}{'p50 ms':>9}{'p99 ms':>9}{'RSS MB':>9}{'lost':>7}")
    for r in results:
        print(f"{r.name:<14}{r.qps:>10.0f}{r.cpu_us:>10.1f}{r.sys_us:>10.1f}{r.p50_ms:>9.3f}{r.p99_ms:>9.3f}"
              f"{r.rss_mb:>9.1f}{r.lost:>7.0f}")
    print("sys us/q is the kernel's share (recvfrom, sendto, loopback delivery to dnsperf); python-floor is a")
    print("bare recvfrom/dict/sendto loop with no DNS logic: the least CPU any Python server can spend here.")
    by = {r.name: r for r in results}
    for a, b in (("kubedns", "dnsmasq"), ("kubedns", "twisted-stock"), ("kubedns-slow", "twisted-stock"),
                 ("kubedns", "kubedns-slow"), ("kubedns", "python-floor"), ("dnsmasq", "twisted-stock")):
        if a in by and b in by and by[b].qps:
            print(f"QPS ratio {a}/{b}: {by[a].qps / by[b].qps:.2f}   CPU/query ratio: {by[a].cpu_us / by[b].cpu_us:.2f}")


if __name__ == "__main__":
    main()
