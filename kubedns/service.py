"""Wiring: the only place where config becomes running objects.

``build(config)`` returns a Twisted ``MultiService`` holding, for each ``kubernetes`` block, a
:class:`~kubedns.k8s.store.Store` fed by an informer (or a manifests file), for each block with
``forward`` its forward chain, and for each distinct listen address a UDP and a TCP listener
sharing one :class:`~kubedns.server.Dispatcher`.  Tests and twistd both go through here, so what
is tested is what runs.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.application import internet, service
from twisted.logger import Logger

from kubedns.config import Config, KubernetesConfig
from kubedns.k8s.store import Store
from kubedns.records import ClusterZones
from kubedns.server import Block, Dispatcher, DNSDatagramProtocol, DNSStreamFactory

__all__ = ["KubeDNS", "build"]

log = Logger()


def _interface(host: str) -> str:
    return "0.0.0.0" if host in ("", "0.0.0.0") else ("127.0.0.1" if host == "localhost" else host)


class KubeDNS(service.MultiService):
    """The whole server process: sources, stores, forwarders and listeners."""

    def __init__(self, config: Config, reactor: Any = None):
        super().__init__()
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self.reactor = reactor
        self.config = config
        self.stores: list[Store] = []
        self.sources: list[Any] = []
        self.chains: list[Any] = []
        self.dispatchers: dict[str, Dispatcher] = {}
        self.ports: list[Any] = []
        self._build()

    # -- construction -----------------------------------------------------------------------
    def _source(self, store: Store, k8s: KubernetesConfig) -> service.Service:
        if k8s.manifests:
            from kubedns.k8s.manifests import ManifestSource

            src = ManifestSource(store, k8s.manifests, kinds=list(k8s.resources()), reactor=self.reactor)
            src.load_now()  # a bad file at start is a start-up error, not a silent empty cluster
            return src
        from kubedns.k8s.informer import Informer

        return Informer(store, list(k8s.resources()), k8s.kubeconfig, reactor=self.reactor)

    def _chain(self, block: Any) -> tuple[Any, Any]:
        from kubedns.forward.chain import ForwardChain
        from kubedns.forward.forwarder import Forwarder

        cache = None
        if block.cache is not None:
            from kubedns.cache import Cache

            cache = Cache(block.cache, reactor=self.reactor)
        chain = ForwardChain(Forwarder(block.forward, reactor=self.reactor), cache=cache, reactor=self.reactor)
        loop = None
        if block.loop is not None:
            from kubedns.forward.loop import LoopDetector

            zone = (block.zones[0] + ".").encode() if block.zones[0] else b""
            loop = LoopDetector(chain, zone=zone, reactor=self.reactor)
        return chain, loop

    def _build(self) -> None:
        runtime: dict[int, Block] = {}
        for b in self.config.servers:
            clusters = None
            if b.kubernetes is not None:
                store = Store(required=b.kubernetes.resources())
                self.stores.append(store)
                src = self._source(store, b.kubernetes)
                src.setServiceParent(self)
                self.sources.append(src)
                clusters = ClusterZones(store, b.kubernetes)
            chain = loop = None
            if b.forward is not None:
                chain, loop = self._chain(b)
                self.chains.append((chain, loop))
            runtime[b.index] = Block(b, clusters, chain, loop)
        fast = os.environ.get("KUBEDNS_FAST_PATH", "1") != "0"
        for addr, blocks in self.config.listeners().items():
            label = f"dns://{addr}"
            disp = Dispatcher(label, [runtime[b.index] for b in blocks], reactor=self.reactor, fast_path=fast)
            self.dispatchers[label] = disp
            iface = _interface(addr.host)
            udp = internet.UDPServer(addr.port, DNSDatagramProtocol(disp), interface=iface)
            tcp = internet.TCPServer(addr.port, DNSStreamFactory(disp), interface=iface)
            udp.setServiceParent(self)
            tcp.setServiceParent(self)
            self.ports.extend([udp, tcp])
        for store in self.stores:
            store.add_listener(self._invalidate)

    def _invalidate(self) -> None:
        """A store changed: no pre-encoded answer may outlive the data it was built from."""
        for disp in self.dispatchers.values():
            disp.fast.clear()

    # -- lifecycle --------------------------------------------------------------------------
    def startService(self) -> None:  # noqa: N802
        super().startService()
        for chain, loop in self.chains:
            chain.start()
            if loop is not None:
                loop.start()
        for p in self.ports:
            port = getattr(p, "_port", None)
            if port is not None:
                h = port.getHost()
                log.info("kubedns listening on {proto} {host}:{port}", proto=h.type, host=h.host, port=h.port)

    def stopService(self):  # noqa: N802
        for chain, loop in self.chains:
            if loop is not None:
                loop.stop()
            chain.stop()
        return super().stopService()

    @property
    def synced(self) -> bool:
        return all(s.synced for s in self.stores)


def build(config: Config, reactor: Any = None) -> KubeDNS:
    """Make the service tree for ``config`` (not started)."""
    return KubeDNS(config, reactor=reactor)
