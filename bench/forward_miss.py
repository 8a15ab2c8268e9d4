"""Forwarded cache misses: kubedns vs dnsmasq vs unbound forwarding to one local server, one run.

    python bench/run.py --forward [--names 400000] [--seconds 6] [--only kubedns,dnsmasq,unbound]
    python bench/forward_miss.py ...            (the same)
    ... --repeat 3             three rounds over all servers, the median round printed
    ... --profile /tmp/p.txt   kubedns under py-spy (pip install py-spy): where its CPU per miss goes
    ... --baseline /tmp/old    also runs the kubedns of another source tree (``git archive REV``)
                               as ``kubedns-base``, for a before/after in the same run

Why: a miss is what every name outside the cluster costs the first time (and the long tail of
external names always), so its CPU is measured on its own, apart from the fast path.

Setting: an authoritative server on 127.0.0.1 (dnsmasq answering ``--names`` distinct names of
``fwd.test`` from a hosts file, pinned with dnsperf to CPU 1; its own CPU per query is printed so
one can see it is not the bottleneck), and each forwarder in turn pinned to CPU 0: kubedns
(``forward`` + ``cache: 30``), dnsmasq (``--server``) and unbound (``forward-zone``), every one
started fresh so its cache is empty.  dnsperf sends each name once (the query file holds every
name once, shuffled), so every query is a miss and is forwarded.  A warm-up uses names of its
own.  Per forwarder: QPS, the forwarder's CPU µs per query (utime + stime from /proc/PID/stat over
the run, divided by the queries completed), the kernel's share, and the upstream's CPU per query.
Nothing leaves loopback.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from run import cpu_seconds, free_port, rss_mb, start, stop  # noqa: E402

from kubedns.serve.workers import TWISTD  # noqa: E402

ZONE = "fwd.test"
WARM = 5000  # warm-up names, never asked again


@dataclass
class Row:
    name: str
    qps: float = 0.0
    cpu_us: float = 0.0
    sys_us: float = 0.0
    up_us: float = 0.0  # the authoritative server's CPU per query meanwhile
    lost: int = 0
    rss_mb: float = 0.0


def make_files(d: Path, n: int) -> tuple[Path, Path, Path]:
    """Hosts file for the authoritative server, a warm-up and a measuring query file."""
    hosts = d / "hosts"
    with hosts.open("w") as f:
        for i in range(n + WARM):
            f.write(f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255} h{i}.{ZONE}\n")
    names = [f"h{i}.{ZONE} A\n" for i in range(n)]
    random.Random(11).shuffle(names)
    measure = d / "measure.txt"
    measure.write_text("".join(names))
    warm = d / "warm.txt"
    warm.write_text("".join(f"h{i}.{ZONE} A\n" for i in range(n, n + WARM)))
    return hosts, warm, measure


def wait_udp(port: int, name: str, timeout: float = 20.0) -> None:
    import dns.message
    import dns.query

    q = dns.message.make_query(name, "A")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            r = dns.query.udp(q, "127.0.0.1", port=port, timeout=0.5)
            if r.rcode() == 0 and r.answer:
                return
        except Exception:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"server on {port} did not answer {name}")


def dnsperf(port: int, queries: Path, seconds: float) -> str:
    import subprocess

    cmd = ["taskset", "-c", "1", "dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", str(queries),
           "-l", str(seconds), "-n", "1", "-c", "4", "-q", "300", "-t", "3"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60).stdout


def measure(row: Row, proc, port: int, up_pid: int, warm: Path, queries: Path, seconds: float) -> Row:
    wait_udp(port, warm.read_text().split(" ", 1)[0])  # a warm-up name: every measured one still misses
    dnsperf(port, warm, 1.5)
    c0, u0 = cpu_seconds(proc.pid), cpu_seconds(up_pid)
    out = dnsperf(port, queries, seconds)
    c1, u1 = cpu_seconds(proc.pid), cpu_seconds(up_pid)
    m = re.search(r"Queries per second:\s+([\d.]+)", out)
    done = re.search(r"Queries completed:\s+(\d+)", out)
    lost = re.search(r"Queries lost:\s+(\d+)", out)
    row.qps = float(m.group(1)) if m else 0.0
    completed = int(done.group(1)) if done else 0
    row.lost = int(lost.group(1)) if lost else 0
    if completed:
        row.cpu_us = (c1[0] - c0[0]) / completed * 1e6
        row.sys_us = (c1[1] - c0[1]) / completed * 1e6
        row.up_us = (u1[0] - u0[0]) / completed * 1e6
    row.rss_mb = rss_mb(proc.pid)
    return row


#: Where a miss's CPU goes, for --profile FILE.txt: each py-spy sample counts for the first of
#: these whose markers one of its frames holds, leaf first (a sample in a Deferred's machinery
#: under the cache's code is the Deferred's).
WHERE = [
    ("upstream socket: take/open/close, epoll, timer", ["socket.__init__", "_real_close", "UDPPool", "_PooledSocket.send",
                                                        "_PooledSocket.close", "EPollReactor.addReader",
                                                        "EPollReactor.removeReader", "ReactorBase.callLater",
                                                        "DelayedCall.cancel", "udp_exchange", "_UDPExchange.start",
                                                        "_UDPExchange._finish"]),
    ("upstream answer read + checks (ID, source, question)", ["_UDPExchange.doRead", "_PooledSocket.doRead",
                                                               "Expect.matches"]),
    ("answer walk (decode to dns.Message when a plugin asks)", ["relayed_from_upstream", "walk_answer",
                                                                "decode_response", "decode_message", "Message.fromStr",
                                                                "Message.decode", "decode.py", "LazyAnswer"]),
    ("query build (template, Expect, client EDNS, cache key)", ["build_query", "Expect.for_", "client_edns",
                                                               "cache_key", "forward_query", "encode_name",
                                                               "query_from_request", "_build (kubedns/forward/relay"]),
    ("cache store (TTLs set in the bytes), lifetime", ["cache.py", "ForwardPlugin.lifetime", "Relayed.with_ttl"]),
    ("reply build (relayed bytes) + encode", ["ForwardPlugin._relay", "Dispatcher._encode", "encode_response",
                                              "client_reply", "relayable", "Relayed.answer"]),
    ("fast-path remember (aging, TTL offsets)", ["Dispatcher._aging", "FastCache.remember", "ttl_fields", "QueryInfo"]),
    ("request parse + route + send", ["parse_question", "read_edns_raw", "Dispatcher._route", "Block.covers",
                                      "DNSDatagramProtocol._send"]),
    ("Twisted Deferred machinery (defer.py)", ["defer.py"]),
    ("forwarder + chain own code (de-dup, order, budget, stats)", ["forwarder.py", "exchange.py", "chain.py",
                                                                   "stats.py", "random.py"]),
    ("server dispatch glue", ["server.py", "protocols.py", "plugins/"]),
    ("reactor loop, epoll", ["epollreactor", "base.py", "log.py", "context.py", "posixbase", "udp.py"]),
]


def where_it_goes(path: str, cpu_us: float) -> list[tuple[str, float, float]]:
    """(where, share, µs per miss) from py-spy's collapsed stacks, largest first."""
    counts: dict[str, int] = {}
    total = 0
    for line in Path(path).read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        total += int(n)
        where = "other"
        for frame in reversed(stack.split(";")):
            hit = next((w for w, marks in WHERE if any(m in frame for m in marks)), None)
            if hit is not None:
                where = hit
                break
        counts[where] = counts.get(where, 0) + int(n)
    return sorted(((w, c / total, c / total * cpu_us) for w, c in counts.items()), key=lambda r: -r[1]) if total else []


def _profile_format(path: str) -> str:
    """py-spy's output format from the file name: .txt collapsed stacks, .json speedscope, else SVG."""
    return "raw" if path.endswith(".txt") else "speedscope" if path.endswith(".json") else "flamegraph"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--names", type=int, default=400_000, help="distinct names (each asked once at most)")
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--only", default="", help="comma list: kubedns,dnsmasq,unbound")
    ap.add_argument("--repeat", type=int, default=1, help="rounds over all servers; medians are printed")
    ap.add_argument("--baseline", default="", help="a kubedns source tree to run too, as kubedns-base")
    ap.add_argument("--profile", default="", help="profile kubedns with py-spy into this file (.txt: collapsed stacks, .svg: flame graph)")
    args = ap.parse_args(argv)
    for tool in ("dnsperf", "taskset", "dnsmasq"):
        if not shutil.which(tool):
            sys.exit(f"{tool} not found: apt-get install dnsperf dnsmasq unbound")
    only = set(args.only.split(",")) if args.only else {"kubedns", "dnsmasq", "unbound"}
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        hosts, warm, queries = make_files(d, args.names)
        up_port = free_port()
        # the authoritative server: dnsmasq from a hosts file, sharing CPU 1 with dnsperf
        import subprocess

        auth = subprocess.Popen(
            ["taskset", "-c", "1", "dnsmasq", "-k", "--conf-file=/dev/null", f"--port={up_port}",
             "--listen-address=127.0.0.1", "--bind-interfaces", "--no-resolv", "--no-hosts",
             f"--addn-hosts={hosts}", f"--local=/{ZONE}/", "--cache-size=0", "--local-ttl=300",
             "--dns-forward-max=10000", "--user=root"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_udp(up_port, f"h0.{ZONE}", timeout=60)

            def run(label: str, cmd: list[str], port: int, env: dict | None = None, cwd: str = "") -> None:
                if cwd:
                    p = subprocess.Popen(["taskset", "-c", "0", *cmd], cwd=cwd, stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL, env=dict(os.environ, **(env or {})))
                else:
                    p = start(cmd, env=env, log=d / f"{label}.log")
                spy = None
                try:
                    if label == "kubedns" and args.profile:
                        wait_udp(port, warm.read_text().split(" ", 1)[0])
                        spy = subprocess.Popen(["py-spy", "record", "-r", "250", "-o", args.profile,
                                                "-p", str(p.pid), "-f", _profile_format(args.profile)],
                                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                    rows.append(measure(Row(label), p, port, auth.pid, warm, queries, args.seconds))
                finally:
                    if spy is not None:
                        spy.send_signal(2)
                        spy.wait(30)
                    stop(p)

            def kubedns(label: str, tree: str = "") -> None:
                port = free_port()
                cfg = d / f"{label}.yaml"
                cfg.write_text("servers:\n"
                               f"  - zones: ['.']\n    listen: '127.0.0.1:{port}'\n"
                               f"    forward: '127.0.0.1:{up_port}'\n    cache: 30\n")
                env = {"PYTHONPATH": tree} if tree else None
                run(label, [*TWISTD, "-n", "--pidfile=", "kubedns", "--config", str(cfg)], port, env, tree)

            for _round in range(args.repeat):  # alternate the servers: load on the machine hits all alike
                if args.baseline:
                    kubedns("kubedns-base", str(Path(args.baseline).resolve()))
                if "kubedns" in only:
                    kubedns("kubedns")
                if "dnsmasq" in only:
                    port = free_port()
                    run("dnsmasq", ["dnsmasq", "-k", "--conf-file=/dev/null", f"--port={port}", "--listen-address=127.0.0.1",
                                    "--bind-interfaces", "--no-resolv", "--no-hosts", f"--server=127.0.0.1#{up_port}",
                                    "--cache-size=10000", "--dns-forward-max=1000", "--user=root"], port)
                if "unbound" in only:
                    if not shutil.which("unbound"):
                        print("unbound not found (apt-get install unbound): skipped")
                    else:
                        port = free_port()
                        conf = d / "unbound.conf"
                        conf.write_text(
                            "server:\n"
                            f"  interface: 127.0.0.1\n  port: {port}\n  num-threads: 1\n  username: \"\"\n"
                            f"  chroot: \"\"\n  directory: \"{d}\"\n  pidfile: \"\"\n  use-syslog: no\n  logfile: \"\"\n"
                            "  verbosity: 0\n  do-not-query-localhost: no\n  module-config: \"iterator\"\n"
                            "  access-control: 127.0.0.0/8 allow\n  so-reuseport: no\n  do-ip6: no\n"
                            "  qname-minimisation: no\n  local-zone: \"test.\" nodefault\n  msg-cache-size: 64m\n  rrset-cache-size: 64m\n"
                            "forward-zone:\n  name: \".\"\n"
                            f"  forward-addr: 127.0.0.1@{up_port}\n")
                        run("unbound", ["unbound", "-d", "-c", str(conf)], port)
        finally:
            stop(auth)

    print(f"\nforwarded misses: {args.names} distinct names of {ZONE} (each asked once), forwarder on CPU 0,")
    print(f"dnsperf and the authoritative dnsmasq on CPU 1, {args.seconds:g}s runs")
    print(f"{'forwarder':<13}{'QPS':>8}{'CPU us/q':>10}{'sys us/q':>10}{'upstream us/q':>15}{'lost':>6}{'RSS MB':>8}"
          + ("   CPU us/q per round" if args.repeat > 1 else ""))
    by: dict[str, Row] = {}
    for name in dict.fromkeys(r.name for r in rows):
        mine = [r for r in rows if r.name == name]
        med = sorted(mine, key=lambda r: r.cpu_us)[(len(mine) - 1) // 2]  # the median round (lower middle)
        by[name] = med
        rounds = "   " + " ".join(f"{r.cpu_us:.0f}" for r in mine) if args.repeat > 1 else ""
        print(f"{name:<13}{med.qps:>8.0f}{med.cpu_us:>10.1f}{med.sys_us:>10.1f}{med.up_us:>15.1f}{med.lost:>6}"
              f"{med.rss_mb:>8.1f}{rounds}")
    if args.profile.endswith(".txt") and "kubedns" in by:
        print(f"\nwhere kubedns's CPU per miss goes (py-spy, {args.profile}; the profiler adds a little):")
        for w, share, us in where_it_goes(args.profile, by["kubedns"].cpu_us):
            print(f"  {w:<58}{share:>7.1%}{us:>7.0f} us")
    for other in ("kubedns-base", "dnsmasq", "unbound"):
        if "kubedns" in by and other in by and by[other].cpu_us:
            k, o = by["kubedns"], by[other]
            print(f"kubedns/{other}: CPU per miss {k.cpu_us / o.cpu_us:.2f}x, QPS {k.qps / o.qps:.2f}x")

if __name__ == "__main__":
    main()
