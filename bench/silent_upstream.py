"""Forwarding into a silent upstream: how many descriptors kubedns holds, and whether TCP DNS and
/health keep working, at a steady rate of distinct forwarded names.

    python bench/silent_upstream.py [--rate 3000] [--seconds 10] [--nofile 1024] [--timeout 2s]
                                    [--max-concurrent 1000]

The upstream is a UDP and a TCP socket on 127.0.0.2 that never read (a black hole: every query
waits the whole per-try timeout).  ``twistd kubedns`` runs as a child with a hard open-files
limit of ``--nofile`` (so start-up cannot raise it; 1024 is what the issue measured with).  A
sender paces ``--rate`` queries a second for distinct names (no two can share an upstream
exchange) for ``--seconds``; meanwhile the process's descriptors are counted from /proc every
100 ms, and once a second a TCP query for a cluster name and a GET /health are timed.  It
prints the peak and mean descriptors, the answers by rcode, the rejects metric, the TCP and
/health failures and their worst latency.  Nothing leaves loopback.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import socket
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import dns.message  # noqa: E402
import dns.rcode  # noqa: E402
import yaml  # noqa: E402

from tests.conftest import LimitedProcess, free_port, http_get, query  # noqa: E402
from tests.support import kubeobj  # noqa: E402


def socket_drops(port: int) -> int:
    """Datagrams the kernel dropped for the UDP socket bound to 127.0.0.1:``port`` (/proc/net/udp)."""
    local = f"0100007F:{port:04X}"
    for line in Path("/proc/net/udp").read_text().splitlines()[1:]:
        f = line.split()
        if f[1] == local:
            return int(f[-1])
    return 0


def runqueue_wait(pid: int) -> float:
    """Seconds ``pid``'s threads spent runnable but waiting for a CPU (/proc/PID/schedstat)."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            total += int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[1])
        except (OSError, IndexError, ValueError):
            pass
    return total / 1e9


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` (from /proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def send(port: int, rate: int, seconds: float, results: multiprocessing.Queue) -> None:
    """Pace ``rate`` distinct names a second for ``seconds``, then collect answers for 3 s more."""
    pid = int(os.environ.get("KUBEDNS_PID", "0"))
    os.nice(10)  # on a small machine the load generator must not starve the server it measures
    rcodes: Counter[str] = Counter()
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
    client.setblocking(False)

    def drain() -> None:
        while True:
            try:
                data = client.recv(4096)
            except BlockingIOError:
                return
            rcodes[dns.rcode.to_text(dns.message.from_wire(data).rcode())] += 1

    total = int(rate * seconds)
    sent = 0
    t0 = time.monotonic()
    while sent < total:
        due = min(total, int((time.monotonic() - t0) * rate) + 1)
        while sent < due:
            q = dns.message.make_query(f"q{sent}.silent.example.org", "A")
            try:
                client.sendto(q.to_wire(), ("127.0.0.1", port))
            except BlockingIOError:
                break
            sent += 1
        drain()
        time.sleep(0.001)
    elapsed = time.monotonic() - t0
    cpu_end = cpu_seconds(pid) if pid else 0.0
    end = time.monotonic() + 3
    while time.monotonic() < end:
        drain()
        time.sleep(0.05)
    client.close()
    results.put((sent, elapsed, cpu_end, dict(rcodes)))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rate", type=int, default=3000)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--nofile", type=int, default=1024)
    ap.add_argument("--timeout", default="2s", help="forward per-try timeout")
    ap.add_argument("--max-concurrent", type=int, default=None, help="forward max_concurrent (default: kubedns's)")
    ap.add_argument("--answering", action="store_true",
                    help="baseline: the upstream answers (NXDOMAIN) instead of staying silent")
    args = ap.parse_args()

    # the black hole: bound, never read (TCP: listening, never accepted)
    hole_port = free_port("127.0.0.2")
    hole_udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    hole_udp.bind(("127.0.0.2", hole_port))
    hole_tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    hole_tcp.bind(("127.0.0.2", hole_port))
    hole_tcp.listen(8)
    answering = None
    if args.answering:
        from tests.dnsupstream import DNSUpstream

        hole_udp.close()
        hole_tcp.close()
        answering = DNSUpstream("127.0.0.2", hole_port).start()

    work = Path(tempfile.mkdtemp(prefix="kubedns-silent-"))
    manifests = work / "cluster.yaml"
    manifests.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": [
        kubeobj.namespace("default"), kubeobj.service("nginx", "default", cluster_ip="10.96.0.100")]}))
    port, hport, mport = free_port(), free_port(), free_port()
    forward: dict = {"to": [f"127.0.0.2:{hole_port}"], "timeout": args.timeout}
    if args.max_concurrent is not None:
        forward["max_concurrent"] = args.max_concurrent
    cfg = {"servers": [{
        "zones": ["."], "listen": f"127.0.0.1:{port}",
        "kubernetes": {"zones": ["cluster.local"], "manifests": str(manifests)},
        "forward": forward,
        "health": {"listen": f"127.0.0.1:{hport}", "lameduck": 0},
        "prometheus": f"127.0.0.1:{mport}",
    }]}
    proc = LimitedProcess(cfg, work, args.nofile).start()
    try:
        proc.wait_listening(port)
        pid = proc.proc.pid
        os.environ["KUBEDNS_PID"] = str(pid)
        base = len(os.listdir(f"/proc/{pid}/fd"))
        stop = threading.Event()
        samples: list[int] = []
        probes = {"tcp_fail": 0, "health_fail": 0, "tcp_worst": 0.0, "health_worst": 0.0, "n": 0}

        def sample() -> None:
            while not stop.is_set():
                try:
                    samples.append(len(os.listdir(f"/proc/{pid}/fd")))
                except OSError:
                    pass
                time.sleep(0.1)

        def probe() -> None:
            while not stop.is_set():
                probes["n"] += 1
                t0 = time.monotonic()
                try:
                    r = query(port, "nginx.default.svc.cluster.local", tcp=True, timeout=2)
                    ok = r.rcode() == dns.rcode.NOERROR and bool(r.answer)
                except Exception:
                    ok = False
                probes["tcp_worst"] = max(probes["tcp_worst"], time.monotonic() - t0)
                probes["tcp_fail"] += not ok
                t0 = time.monotonic()
                try:
                    ok = http_get(hport, "/health", timeout=2)[0] == 200
                except Exception:
                    ok = False
                probes["health_worst"] = max(probes["health_worst"], time.monotonic() - t0)
                probes["health_fail"] += not ok
                stop.wait(1.0)

        threads = [threading.Thread(target=sample, daemon=True), threading.Thread(target=probe, daemon=True)]
        for t in threads:
            t.start()
        # the sender is its own process, so its busy loop does not delay the probes' timings
        results: multiprocessing.Queue = multiprocessing.Queue()
        sender = multiprocessing.Process(target=send, args=(port, args.rate, args.seconds, results))
        cpu0 = cpu_seconds(pid)
        wait0 = runqueue_wait(pid)
        drops0 = socket_drops(port)
        sender.start()
        sent, elapsed, cpu_end, rcodes = results.get(timeout=args.seconds + 60)
        sender.join(10)
        drops = socket_drops(port) - drops0
        waited = runqueue_wait(pid) - wait0
        cpu = cpu_end - cpu0
        stop.set()
        for t in threads:
            t.join(5)
        status, body = http_get(mport, "/metrics")
        rejects = sum(float(line.rsplit(" ", 1)[1]) for line in body.splitlines()
                      if line.startswith("coredns_forward_max_concurrent_rejects_total"))
        print(f"{'answering' if args.answering else 'silent'} upstream, {sent} distinct names in {elapsed:.1f} s ({sent / elapsed:.0f} q/s), "
              f"open-files limit {args.nofile}, forward timeout {args.timeout}")
        print(f"server CPU while sending: {cpu:.1f} s in {elapsed:.1f} s ({100 * cpu / elapsed:.0f}% of one core); "
              f"runnable but waiting for a CPU: {waited:.1f} s (host load average {os.getloadavg()[0]:.1f})")
        print(f"descriptors: base {base}, peak {max(samples)}, mean {sum(samples) / len(samples):.0f} "
              f"({len(samples)} samples)")
        print(f"answers: {rcodes} (unanswered: {sent - sum(rcodes.values())}, "
              f"of which dropped by the kernel on kubedns's full receive buffer: {drops})")
        print(f"coredns_forward_max_concurrent_rejects_total {rejects:.0f}")
        print(f"TCP DNS probes: {probes['n']}, failed {probes['tcp_fail']}, worst {probes['tcp_worst'] * 1000:.0f} ms; "
              f"/health failed {probes['health_fail']}, worst {probes['health_worst'] * 1000:.0f} ms")
        return 0 if not probes["tcp_fail"] and not probes["health_fail"] else 1
    finally:
        proc.stop()
        hole_udp.close()
        hole_tcp.close()
        if answering is not None:
            answering.stop()


if __name__ == "__main__":
    sys.exit(main())
