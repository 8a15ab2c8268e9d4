"""Fuzz a running kubedns with a million mutated packets, then check that it still answers right.

    python bench/fuzz.py [--packets 1000000] [--tcp-frames 20000] [--seed 1]

Starts ``twistd kubedns`` on 127.0.0.1 (a free port) over a manifests cluster, forwarding
everything else to a closed loopback port (so forwarded queries fail fast with SERVFAIL and
nothing leaves loopback), then sends UDP packets built from valid queries (cluster names,
PTR, SRV, forwarded names, with and without EDNS): bit flips, truncations, random bytes of
random lengths, valid queries with forged section counts, label lengths, compression pointers,
inserted or deleted bytes and junk appended, and a share left intact.  Each packet gets a
sequence ID so its answer can be matched.  Every answer must be a response with the packet's
ID and, when it carries a question, the packet's question byte for byte; one in eight (and
every unusual one) is parsed whole with dnspython; a response or a runt must never be answered.
Then mutated frames over TCP, with garbage length prefixes and resets.  At the end the server
must still be alive and give the right answers over UDP and TCP.  Prints packets/s, answers by
rcode, packets left unanswered, RSS before and after, and the verdict (exit status 1 on any
failure).  The sender paces itself on answers outstanding, so the server sees every packet.
"""

from __future__ import annotations

import argparse
import random
import select
import socket
import struct
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import dns.edns  # noqa: E402
import dns.message  # noqa: E402
import dns.rcode  # noqa: E402

from kubedns.dns.wire import scan_name  # noqa: E402
from tests.conftest import KubeDNSProcess, free_port, query, rrset_text  # noqa: E402
from tests.dnsupstream import closed_port  # noqa: E402
from tests.support.cluster import cluster_config, cluster_objects, write_manifests  # noqa: E402

#: (name, type, what a correct answer holds) checked before and after the fuzzing
CHECKS = [
    ("nginx.default.svc.cluster.local", "A", ["nginx.default.svc.cluster.local A 10.96.0.100"]),
    ("100.0.96.10.in-addr.arpa", "PTR", ["100.0.96.10.in-addr.arpa PTR nginx.default.svc.cluster.local."]),
    ("dns-version.cluster.local", "TXT", ['dns-version.cluster.local TXT "1.1.0"']),
]
SEED_NAMES = [
    ("nginx.default.svc.cluster.local", "A"), ("nginx.default.svc.cluster.local", "AAAA"),
    ("_http._tcp.nginx.default.svc.cluster.local", "SRV"), ("missing.default.svc.cluster.local", "A"),
    ("100.0.96.10.in-addr.arpa", "PTR"), ("cluster.local", "SOA"), ("cluster.local", "NS"),
    ("dns-version.cluster.local", "TXT"), ("example.com", "A"), ("Nginx.DEFAULT.svc.Cluster.Local", "ANY"),
    ("x.pod.cluster.local", "A"), ("10-244-1-2.default.pod.cluster.local", "A"),
]
UNUSUAL = {dns.rcode.NOERROR, dns.rcode.NXDOMAIN, dns.rcode.FORMERR, dns.rcode.SERVFAIL, dns.rcode.REFUSED}


def seeds() -> list[bytes]:
    out = []
    for name, rdtype in SEED_NAMES:
        out.append(dns.message.make_query(name, rdtype, use_edns=False).to_wire())
        out.append(dns.message.make_query(name, rdtype, use_edns=0, payload=1232).to_wire())
        out.append(dns.message.make_query(name, rdtype, use_edns=0, payload=4096, want_dnssec=True,
                                          options=[dns.edns.GenericOption(10, b"\x01" * 8)]).to_wire())
    return out


class Mutator:
    """Mutated packets, cheap enough to make a million in Python."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.seeds = seeds()
        self.kinds = Counter[str]()

    def packet(self) -> bytes:
        r = self.rng
        k = r.random()
        if k < 0.08:
            kind, data = "intact", bytearray(r.choice(self.seeds))
        elif k < 0.20:
            kind, data = "random", bytearray(r.randbytes(r.choice((0, 1, 2, 11, 12, 13, 17, 30, 64, 300, 600))))
        elif k < 0.26:  # header-sized garbage with a believable header
            kind = "header"
            data = bytearray(struct.pack("!HHHHHH", 0, r.getrandbits(16) & 0x7FFF, r.choice((0, 1, 2, 65535)),
                                         r.choice((0, 1, 65535)), r.choice((0, 1)), r.choice((0, 1, 2, 3))))
            data += r.randbytes(r.randrange(0, 80))
        else:
            kind, data = "mutated", bytearray(r.choice(self.seeds))
            for _ in range(r.choice((1, 1, 1, 2, 3, 4))):
                self._mutate(data)
        self.kinds[kind] += 1
        return bytes(data)

    def _mutate(self, data: bytearray) -> None:
        r = self.rng
        n = len(data)
        m = r.randrange(9)
        if m <= 2 and n:  # bit flips
            for _ in range(r.choice((1, 1, 2, 4))):
                i = r.randrange(n)
                data[i] ^= 1 << r.randrange(8)
        elif m == 3:  # truncation
            del data[r.randrange(n + 1):]
        elif m == 4 and n >= 12:  # forged section counts
            i = r.choice((4, 6, 8, 10))
            data[i : i + 2] = struct.pack("!H", r.choice((0, 1, 2, 3, 255, 65535)))
        elif m == 5 and n > 12:  # a label length (or any byte of the name) changed
            i = r.randrange(12, n)
            data[i] = r.choice((0, 1, 63, 64, 0x3F, 0x40, 0x80, 0xC0, 0xFF, r.getrandbits(8)))
        elif m == 6 and n > 12:  # a compression pointer, anywhere, often forwards or to itself
            i = r.randrange(12, n)
            data[i : i + 2] = struct.pack("!H", 0xC000 | r.choice((i, i + 2, 12, 0, r.getrandbits(14))))
        elif m == 7:  # bytes inserted or deleted
            i = r.randrange(n + 1)
            if r.random() < 0.5:
                data[i:i] = r.randbytes(r.randrange(1, 9))
            else:
                del data[i : i + r.randrange(1, 9)]
        else:  # junk appended (records the counts do not announce, or that run past the end)
            data += r.randbytes(r.randrange(1, 64))


class Failures:
    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, what: str, pkt: bytes, reply: bytes | None = None) -> None:
        if len(self.items) < 20:
            self.items.append(f"{what}: packet {pkt[:60].hex()}" + (f" reply {reply[:60].hex()}" if reply else ""))
        else:
            self.items.append("")


def check_reply(pkt: bytes, reply: bytes, full: bool, rcodes: Counter, fails: Failures) -> None:
    if len(reply) < 12 or not reply[2] & 0x80:
        fails.add("answer is not a response", pkt, reply)
        return
    if len(pkt) < 12 or pkt[2] & 0x80:
        fails.add("a response or a runt was answered", pkt, reply)
        return
    rcode = reply[3] & 0xF
    rcodes[rcode] += 1
    qd = struct.unpack_from("!H", reply, 4)[0]
    if qd > 1:
        fails.add("answer with several questions", pkt, reply)
    elif qd == 1:
        end = scan_name(reply, 12)
        if end is None or reply[12 : end + 4] != pkt[12 : end + 4]:
            fails.add("answer's question is not the packet's", pkt, reply)
            return
    if full or rcode not in UNUSUAL:
        try:
            dns.message.from_wire(as_query_opcode(reply), raise_on_truncation=False)
        except Exception as e:
            fails.add(f"malformed answer ({e})", pkt, reply)


def as_query_opcode(msg: bytes) -> bytes:
    """``msg`` with opcode QUERY, for dnspython to check its structure: it reads an UPDATE's
    zone section with UPDATE's rules (one SOA) and rejects a NOTIMP answer that echoes a
    malformed UPDATE's question as sent, which is what CoreDNS answers too."""
    return msg[:2] + bytes([msg[2] & 0x87]) + msg[3:]


def fuzz_udp(port: int, total: int, rng: random.Random, fails: Failures) -> tuple[float, Counter, int, Counter]:
    """Send ``total`` mutated packets from 8 sockets; (seconds, rcodes, unanswered, kinds).

    A packet's answer is found by socket and sequence ID.  ``pending`` holds the packets that
    must be answered (a query of 12 bytes or more), ``quiet`` the others, so that an answer to
    a response or a runt is caught; a pending packet unanswered after a second is counted
    unanswered (and moved to ``aged``, should its answer come later)."""
    mut = Mutator(rng)
    socks = []
    for _ in range(8):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
        s.connect(("127.0.0.1", port))
        s.setblocking(False)
        socks.append(s)
    by_fd = {s.fileno(): i for i, s in enumerate(socks)}
    pending: dict[tuple[int, int], tuple[bytes, float]] = {}
    quiet: dict[tuple[int, int], bytes] = {}
    aged: dict[tuple[int, int], bytes] = {}
    rcodes: Counter = Counter()
    counts = Counter[str]()
    window = 128  # answers outstanding before the sender waits for them
    t0 = last_report = time.monotonic()
    sent = 0

    def drain(wait: float) -> None:
        ready, _, _ = select.select(socks, [], [], wait)
        for s in ready:
            i = by_fd[s.fileno()]
            while True:
                try:
                    reply = s.recv(65535)
                except (BlockingIOError, ConnectionRefusedError):
                    break
                key = (i, struct.unpack_from("!H", reply)[0] if len(reply) >= 2 else -1)
                item = pending.pop(key, None)
                pkt = item[0] if item is not None else quiet.pop(key, None)
                if pkt is None:
                    pkt = aged.pop(key, None)
                    if pkt is None:
                        fails.add("an answer nothing asked for (or a second one)", b"", reply)
                        continue
                    counts["late"] += 1  # counted unanswered when it aged: it was not
                    counts["unanswered"] -= 1
                counts["answered"] += 1
                check_reply(pkt, reply, counts["answered"] % 8 == 0, rcodes, fails)

    def age(limit: float) -> None:
        now = time.monotonic()
        for k in [k for k, (_, t) in pending.items() if now - t > limit]:
            aged[k] = pending.pop(k)[0]
            counts["unanswered"] += 1

    while sent < total:
        pkt = mut.packet()
        i = sent % len(socks)
        key = (i, (sent // len(socks)) & 0xFFFF)
        if len(pkt) >= 2:
            pkt = struct.pack("!H", key[1]) + pkt[2:]
        if pending.pop(key, None) is not None:  # its ID came round again unanswered
            counts["unanswered"] += 1
        quiet.pop(key, None)
        aged.pop(key, None)
        if len(pkt) >= 12 and not pkt[2] & 0x80:
            pending[key] = (pkt, time.monotonic())
        elif len(pkt) >= 2:
            quiet[key] = pkt
        try:
            socks[i].send(pkt)
        except (BlockingIOError, ConnectionRefusedError):
            pending.pop(key, None)
            drain(0.01)
            continue
        sent += 1
        if sent % 64 == 0 or len(pending) >= window:
            drain(0)
            while len(pending) >= window:
                drain(0.05)
                age(1.0)
        now = time.monotonic()
        if now - last_report > 10:
            last_report = now
            print(f"  {sent:>9,} sent, {sent / (now - t0):,.0f}/s", flush=True)
    end = time.monotonic() + 3
    while pending and time.monotonic() < end:
        drain(0.1)
    drain(0.3)  # answers to what must not be answered would come now
    seconds = time.monotonic() - t0
    age(0)
    for s in socks:
        s.close()
    if counts["late"]:
        print(f"  {counts['late']:,} answers came more than a second after their packet")
    return seconds, rcodes, counts["unanswered"], mut.kinds


def fuzz_tcp(port: int, frames: int, rng: random.Random, fails: Failures) -> tuple[int, int]:
    """Mutated frames over TCP, 50 per connection, each connection ending cleanly, with a
    garbage length prefix, or with a reset; (frames sent, answers checked)."""
    mut = Mutator(rng)
    sent = checked = 0
    rcodes: Counter = Counter()
    while sent < frames:
        pkts = [mut.packet() for _ in range(50)]
        pkts = [p for p in pkts if len(p) >= 12 and not p[2] & 0x80]  # a runt frame closes the connection
        for n, p in enumerate(pkts):
            pkts[n] = struct.pack("!H", n) + p[2:]
        stream = b"".join(struct.pack("!H", len(p)) + p for p in pkts)
        with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
            c.sendall(stream)
            buf = b""
            got = 0
            c.settimeout(2)
            while got < len(pkts):
                try:
                    chunk = c.recv(65535)
                except TimeoutError:
                    break
                if not chunk:
                    break
                buf += chunk
                while len(buf) >= 2 and len(buf) >= 2 + struct.unpack_from("!H", buf)[0]:
                    (ln,) = struct.unpack_from("!H", buf)
                    reply, buf = buf[2 : 2 + ln], buf[2 + ln :]
                    idx = struct.unpack_from("!H", reply)[0] if len(reply) >= 2 else -1
                    if not 0 <= idx < len(pkts):
                        fails.add("TCP answer with an ID nothing asked for", b"", reply)
                        continue
                    check_reply(pkts[idx], reply, True, rcodes, fails)
                    got += 1
                    checked += 1
            if got < len(pkts):
                fails.add(f"TCP: {len(pkts) - got} of {len(pkts)} frames unanswered", b"")
            end = rng.randrange(3)
            if end == 1:
                c.sendall(struct.pack("!H", rng.choice((13, 300, 65535))) + rng.randbytes(rng.randrange(0, 12)))
            elif end == 2:
                c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sent += len(pkts)
    return sent, checked


def verify(port: int, proc: KubeDNSProcess, fails: Failures, when: str) -> None:
    if proc.proc is None or proc.proc.poll() is not None:
        fails.add(f"{when}: the server exited", b"")
        return
    for tcp in (False, True):
        for name, rdtype, want in CHECKS:
            try:
                r = query(port, name, rdtype, tcp=tcp, timeout=2)
            except Exception as e:
                fails.add(f"{when}: {name} {rdtype} over {'TCP' if tcp else 'UDP'}: {e!r}", b"")
                continue
            if r.rcode() != dns.rcode.NOERROR or rrset_text(r) != want:
                fails.add(f"{when}: {name} {rdtype}: {dns.rcode.to_text(r.rcode())} {rrset_text(r)}", b"")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--packets", type=int, default=1_000_000, help="UDP packets to send (default 1,000,000)")
    ap.add_argument("--tcp-frames", type=int, default=20_000, help="mutated frames over TCP (default 20,000)")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    if args.packets < 0 or args.tcp_frames < 0:
        ap.error("counts must not be negative")
    rng = random.Random(args.seed)
    fails = Failures()
    with tempfile.TemporaryDirectory(prefix="kubedns-fuzz-") as tmp:
        work = Path(tmp)
        write_manifests(work / "cluster.yaml", cluster_objects())
        port = free_port()
        config = cluster_config(port, work / "cluster.yaml")
        config["servers"][0]["forward"] = {"to": [f"127.0.0.1:{closed_port()}"]}
        proc = KubeDNSProcess(config, work).start()
        try:
            proc.wait_listening(port)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                try:
                    if rrset_text(query(port, CHECKS[0][0], timeout=0.5)) == CHECKS[0][2]:
                        break
                except Exception:
                    pass
                time.sleep(0.1)
            verify(port, proc, fails, "before")
            assert proc.proc is not None
            rss0 = rss_mb(proc.proc.pid)
            print(f"kubedns pid {proc.proc.pid} on 127.0.0.1:{port}, RSS {rss0:.0f} MB; "
                  f"{args.packets:,} UDP packets, {args.tcp_frames:,} TCP frames, seed {args.seed}", flush=True)
            seconds, rcodes, unanswered, kinds = fuzz_udp(port, args.packets, rng, fails)
            print(f"UDP: {args.packets:,} packets in {seconds:.1f} s = {args.packets / seconds:,.0f} packets/s")
            print("  kinds:   " + ", ".join(f"{k} {v:,}" for k, v in kinds.most_common()))
            print("  answers: " + ", ".join(f"{dns.rcode.to_text(k)} {v:,}" for k, v in rcodes.most_common())
                  + f"; unanswered (not a response, not a runt): {unanswered:,}")
            if args.tcp_frames:
                t0 = time.monotonic()
                sent, checked = fuzz_tcp(port, args.tcp_frames, rng, fails)
                took = time.monotonic() - t0
                print(f"TCP: {sent:,} frames in {took:.1f} s = {sent / took:,.0f} frames/s, {checked:,} answers checked")
            verify(port, proc, fails, "after")
            if proc.proc.poll() is None:
                print(f"RSS {rss0:.0f} MB before, {rss_mb(proc.proc.pid):.0f} MB after")
            crashes = [ln for ln in proc.log().splitlines() if "unexpected error" in ln or "Traceback" in ln]
            if crashes:
                fails.add(f"{len(crashes)} unexpected errors logged, first: {crashes[0]}", b"")
        finally:
            proc.stop()
    if fails.items:
        print(f"FAILED: {len(fails.items)} failures")
        for f in fails.items[:20]:
            print("  " + f)
        return 1
    print("OK: every answer well-formed with the packet's ID and question, no response answered, "
          "no crash, the right answers after")
    return 0


if __name__ == "__main__":
    sys.exit(main())
