"""The floor: the least CPU per query any Python UDP DNS server can spend on this kernel.

A blocking ``recvfrom`` → dict lookup → ``sendto`` loop with no event loop, no metrics and no
checks; a query seen for the first time is answered with dnspython and its bytes kept (ID aside).
It is not a server to run, only a yardstick that bench/run.py measures beside kubedns so the
kernel's share of each query (socket calls and loopback delivery) can be read off in one run.
Run as ``python bench/floor_server.py PORT HOSTS_FILE`` (``IP NAME`` lines).
"""

from __future__ import annotations

import socket
import sys

import dns.flags
import dns.message
import dns.rcode
import dns.rrset


def main() -> None:
    port = int(sys.argv[1])
    hosts: dict[str, str] = {}
    with open(sys.argv[2]) as f:
        for line in f:
            ip, name = line.split()
            hosts[name.lower() + "."] = ip
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", port))
    answers: dict[bytes, bytes] = {}

    def build(data: bytes) -> bytes:
        q = dns.message.from_wire(data)
        r = dns.message.make_response(q)
        r.flags |= dns.flags.AA
        name = q.question[0].name
        ip = hosts.get(name.to_text().lower())
        if ip is None:
            r.set_rcode(dns.rcode.NXDOMAIN)
        else:
            r.answer.append(dns.rrset.from_text(name, 5, "IN", "A", ip))
        return r.to_wire()[2:]

    recv, send, get = sock.recvfrom, sock.sendto, answers.get
    while True:
        data, addr = recv(4096)
        body = get(data[2:])
        if body is None:
            try:
                body = answers[data[2:]] = build(data)
            except Exception:
                continue
        send(data[:2] + body, addr)


if __name__ == "__main__":
    main()
