"""The baseline: a stock twisted.names server (DNSServerFactory + an in-memory authority).

It serves the same A records as kubedns does in the benchmark, the way a naive twisted.names
program would.  Run by bench/run.py as ``python bench/stock_server.py PORT HOSTS_FILE``, where
HOSTS_FILE has ``IP NAME`` lines.
"""

from __future__ import annotations

import sys

from twisted.internet import reactor
from twisted.names import authority, dns, server


class MemoryAuthority(authority.FileAuthority):
    """FileAuthority filled from a dict instead of a zone file."""

    def __init__(self, zone: str, records: dict[bytes, list[dns.Record_A]]):
        authority.FileAuthority.__init__(self, None)  # type: ignore[arg-type]
        soa = dns.Record_SOA(mname=b"ns.dns." + zone.encode(), rname=b"hostmaster." + zone.encode(), serial=1,
                             refresh=7200, retry=1800, expire=86400, minimum=5, ttl=5)
        self.soa = (zone.encode(), soa)
        self.records = {zone.encode(): [soa], **records}

    def loadFile(self, filename):  # noqa: N802 - twisted API
        pass


def main() -> None:
    port = int(sys.argv[1])
    records: dict[bytes, list[dns.Record_A]] = {}
    with open(sys.argv[2]) as f:
        for line in f:
            ip, name = line.split()
            records.setdefault(name.lower().encode(), []).append(dns.Record_A(ip, ttl=5))
    auth = MemoryAuthority("cluster.local", records)
    factory = server.DNSServerFactory(authorities=[auth])
    factory.noisy = False
    proto = dns.DNSDatagramProtocol(factory)
    proto.noisy = False
    reactor.listenUDP(port, proto, interface="127.0.0.1")
    reactor.listenTCP(port, factory, interface="127.0.0.1")
    reactor.run()


if __name__ == "__main__":
    main()
