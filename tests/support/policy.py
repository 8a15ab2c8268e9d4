"""A UDP Dispatcher whose block has extra plugins (any, acl, bufsize, minimal...), for the tests of
those plugins: the record table's store behind the real UDP protocol, sends captured, as
:func:`tests.support.dispatch.udp_dispatcher`, plus queries sent from a chosen client address."""

from __future__ import annotations

from typing import Any

import dns.message
from twisted.internet import task

from kubedns.config import KubernetesConfig, ServerBlock
from kubedns.configbase import Address
from kubedns.dns.records import ClusterZones
from kubedns.k8s.store import Store
from kubedns.serve.protocols import DNSDatagramProtocol
from kubedns.serve.server import Block, Dispatcher
from tests.support.dispatch import CapturingTransport
from tests.support.records_table import fill

__all__ = ["PluginDispatcher"]


class PluginDispatcher:
    """One block (zone ``.``, cluster.local from the record table, ttl 5) with ``keys`` set on its
    ServerBlock, behind a started UDP protocol."""

    def __init__(self, **keys: Any):
        self.store = Store(required=("namespaces", "services", "endpointslices", "pods"))
        fill(self.store)
        kcfg = KubernetesConfig(pods="insecure", ttl=5)
        cfg = ServerBlock(zones=("",), listen=Address("127.0.0.1", 53), kubernetes=kcfg, **keys)
        self.block = Block(cfg, ClusterZones(self.store, kcfg))
        self.disp = Dispatcher("dns://127.0.0.1:53", [self.block], reactor=task.Clock())
        self.proto = DNSDatagramProtocol(self.disp)
        self.tr = CapturingTransport()
        self.proto.transport = self.tr
        self.proto.startProtocol()

    def send(self, qname: str, qtype: Any = "A", qid: int = 1, client: str = "127.0.0.2", **kw: Any) -> bytes | None:
        """The datagram the server sends back to ``client`` (None: nothing was sent)."""
        q = dns.message.make_query(qname, qtype, **kw)
        q.id = qid
        before = len(self.tr.socket.sent)
        self.proto.datagramReceived(q.to_wire(), (client, 5353))
        sent = self.tr.socket.sent[before:]
        return sent[-1][0] if sent else None

    def hits(self) -> int:
        return sum(e[1] for e in self.disp.fast.entries.values())
