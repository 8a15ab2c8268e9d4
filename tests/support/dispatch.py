"""A Dispatcher over the record table's store, behind the real UDP protocol, sending into a list.

The fast-path, TCP-flow and fuzz tests drive :class:`~kubedns.serve.protocols.DNSDatagramProtocol`
with datagrams and read what it sent from :attr:`CapturingTransport.socket`'s ``sent`` list; the
Dispatcher runs on a ``task.Clock``, and a store change clears its pre-encoded answers as in
production.  :class:`FakeForwarder` stands for the upstreams behind a forwarding block.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import task

from kubedns.config import KubernetesConfig, ServerBlock
from kubedns.configbase import Address
from kubedns.dns.records import ClusterZones
from kubedns.k8s.store import Store
from kubedns.serve.protocols import DNSDatagramProtocol
from kubedns.serve.server import Block, Dispatcher
from tests.support.records_table import fill

__all__ = ["CapturingSocket", "CapturingTransport", "FakeForwarder", "udp_dispatcher"]


class CapturingSocket:
    """The socket the fast path writes to with ``sendto``: every (datagram, address) kept."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, Any]] = []

    def sendto(self, data: bytes, addr: Any) -> None:
        self.sent.append((data, addr))


class CapturingTransport:
    """A UDP transport whose ``write`` (the slow path's) lands in the same list as ``sendto``."""

    def __init__(self) -> None:
        self.socket = CapturingSocket()

    def write(self, data: bytes, addr: Any) -> None:
        self.socket.sendto(data, addr)


def udp_dispatcher() -> tuple[Dispatcher, DNSDatagramProtocol, CapturingTransport, Store]:
    """One block (zone ``.``, cluster.local from the record table's store, pods insecure, ttl 5)
    behind a started UDP protocol: (dispatcher, protocol, transport, store)."""
    store = Store(required=("namespaces", "services", "endpointslices", "pods"))
    fill(store)
    kcfg = KubernetesConfig(pods="insecure", ttl=5)
    block = Block(ServerBlock(zones=("",), listen=Address("127.0.0.1", 53), kubernetes=kcfg), ClusterZones(store, kcfg))
    disp = Dispatcher("dns://127.0.0.1:53", [block], reactor=task.Clock())
    store.add_listener(disp.fast.clear)
    proto = DNSDatagramProtocol(disp)
    tr = CapturingTransport()
    proto.transport = tr
    proto.startProtocol()
    return disp, proto, tr, store


class FakeForwarder:
    """A forwarder for a ForwardChain without sockets: answers every name with one A record
    (192.0.2.1, TTL 300), NXDOMAIN with an SOA for names starting with ``nx``, six A records for
    names starting with ``many``; counts what it was asked in ``asked``."""

    def __init__(self) -> None:
        self.asked = 0
        self.disabled_reason = None

    def handles(self, name: bytes) -> bool:
        return True

    def resolve(self, query: Any, tcp: bool = False) -> Any:
        from twisted.internet import defer
        from twisted.names import dns as tdns

        self.asked += 1
        m = tdns.Message(answer=1, recAv=1)
        name = query.queries[0].name.name
        if name.lower().startswith(b"nx"):
            m.rCode = tdns.ENAME
            m.authority = [tdns.RRHeader(b"example.com", tdns.SOA, ttl=60, payload=tdns.Record_SOA(
                b"ns.example.com", b"h.example.com", 1, 2, 3, 4, 45, ttl=60))]
        elif name.lower().startswith(b"many"):
            m.answers = [tdns.RRHeader(name, tdns.A, ttl=300, payload=tdns.Record_A(f"192.0.2.{i}", 300))
                         for i in range(1, 7)]
        else:
            m.answers = [tdns.RRHeader(name, tdns.A, ttl=300, payload=tdns.Record_A("192.0.2.1", 300))]
        return defer.succeed(m)

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass
