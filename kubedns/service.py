"""Wiring: the only place where config becomes running objects, and where reload swaps them.

``build(config)`` returns a :class:`KubeDNS` ``MultiService`` holding, for each ``kubernetes``
block, a :class:`~kubedns.k8s.store.Store` fed by an informer (or a manifests file), for each
block with ``forward`` its forward chain, and for each distinct listen address a UDP and a TCP
listener sharing one :class:`~kubedns.serve.server.Dispatcher`.  Tests and twistd both go through here.

Reload (SIGHUP, or the ``reload`` key's periodic check) parses the file again; an invalid file is
logged and counted and the running config keeps serving.  So is a valid one that cannot be
applied: every new listening address (DNS, and HTTP for health/ready/prometheus) is bound before
anything is committed, and a bind failure rejects the whole reload.  A valid one is applied piece
by piece: parts whose config is unchanged (a forward chain, a listening socket) are kept as they
are, and a store and its watch are kept whenever what they watch is unchanged, so a reload
neither relists the cluster nor closes a socket it does not have to; a store that must be new
answers only once it has synced (:mod:`kubedns.stores`).  Queries keep being answered
throughout: dispatchers get their new blocks in one assignment on the reactor thread.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.application import service
from twisted.internet import defer, task
from twisted.internet.error import CannotListenError
from twisted.logger import Logger

from kubedns import __version__
from kubedns.config import Config, ConfigError, KubernetesConfig, ReloadConfig, ServerBlock, file_digest, load
from kubedns.configbase import Address
from kubedns.k8s.source import ClusterSource
from kubedns.k8s.store import Store
from kubedns.plugins.hosts import HostsPlugins
from kubedns.plugins.observe import QueryObservers
from kubedns.serve.listen import (
    ListenError,
    TCPListener,
    UDPListener,
    fd_limit,
    http_addresses,
    http_listen_error,
    interface,
)
from kubedns.serve.protocols import DNSDatagramProtocol, DNSStreamFactory
from kubedns.serve.server import Block, Dispatcher
from kubedns.serve.workers import WorkerPool, announce_ready, worker_index
from kubedns.stores import ClusterSources

if TYPE_CHECKING:
    from kubedns.forward.chain import ForwardChain
    from kubedns.forward.config import ForwardConfig
    from kubedns.forward.loop import LoopDetector
    from kubedns.ops.health import Ops

    #: a block's forwarding: its chain (forwarder and cache) and its loop detector, if any
    Forwarding = tuple[ForwardChain, LoopDetector | None]

__all__ = ["KubeDNS", "banner", "build"]

log = Logger()

#: Slices held for a Service that has not arrived yet (programming latency); oldest dropped first.
_PENDING_PROGRAMMING_MAX = 10_000


def banner(config: Config) -> str:
    """The first log line: version, config file and every listener (DNS and HTTP)."""
    dns_part = ", ".join(f"{a} (UDP, TCP)" for a in config.listeners())
    http: dict[Address, list[str]] = {}
    for _, path, addr in http_addresses(config):
        if path not in http.setdefault(addr, []):
            http[addr].append(path)
    http_part = ", ".join(f"{' '.join(paths)} on {addr}" for addr, paths in http.items()) or "none"
    workers = f"; {config.workers} workers" if config.workers > 1 else ""
    return f"kubedns {__version__} starting with {config.path}: DNS on {dns_part}; HTTP {http_part}{workers}"


class _Listener:
    """A listen address: its dispatcher and its UDP and TCP server services."""

    def __init__(self, addr: Address, disp: Dispatcher, udp: service.Service, tcp: service.Service):
        self.addr = addr
        self.dispatcher = disp
        self.services = (udp, tcp)


class KubeDNS(service.MultiService):
    """The whole server process: sources, stores, forwarders and listeners."""

    def __init__(self, config: Config, reactor: Any = None):
        super().__init__()
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self.reactor = reactor
        self.config = config
        self.fast_path = os.environ.get("KUBEDNS_FAST_PATH", "1") != "0"
        self._fd_limit = fd_limit()  # bounds TCP connections (kubedns.tap raised it at start)
        #: 0 in the process twistd started; 1..N-1 in the workers it spawns (``workers: N``)
        self.worker = worker_index()
        self.pool: WorkerPool | None = None
        if config.workers > 1 and self.worker == 0:
            self.pool = WorkerPool(config.workers, reactor=reactor)
            self.pool.setServiceParent(self)
        self._announced = False
        #: stores and sources keyed by what they watch; swaps them without a gap on reload
        self.clusters = ClusterSources(self, self._source, self._store_changed, reactor)
        #: the hosts plugins (tables, reload checks): kept across reloads; a file change drops
        #: the fast path as a store change does
        self.hosts = HostsPlugins(self._invalidate, reactor)
        self._fwd: dict[tuple[Any, ...], Forwarding] = {}
        self._listeners: dict[Address, _Listener] = {}
        self.reload_failures = 0
        self.ops: Ops | None = None
        self._reload_loop: task.LoopingCall | None = None
        self._reload_config: ReloadConfig | None = None  # what the running check was made for
        self.jitter_random: Callable[[float, float], float] = random.uniform  # tests may pin it
        self._config_digest = hashlib.sha256(config.raw_text.encode()).hexdigest()
        #: the last file content a reload looked at (applied or rejected): tried once per change
        self._seen_digest = self._config_digest
        #: the log and errors plugins: observers of the dispatchers, wired with the chains
        self.observers = QueryObservers(self.reactor)
        blocks = self._make_blocks(config, started=False)
        for addr, bs in config.listeners().items():
            self._add_listener(addr, [blocks[b.index] for b in bs])
        self.observers.wire(self.dispatchers.values())
        self._build_ops()

    # -- views used by ops (health, metrics) ------------------------------------------------------
    @property
    def stores(self) -> list[Store]:
        return self.clusters.stores

    @property
    def sources(self) -> list[ClusterSource]:
        return self.clusters.sources

    @property
    def dispatchers(self) -> dict[str, Dispatcher]:
        return {lst.dispatcher.server_label: lst.dispatcher for lst in self._listeners.values()}

    @property
    def synced(self) -> bool:
        """Every store listed once, and (in worker 0) every other worker says the same."""
        own = all(s.synced for s in self.stores)
        return own and (self.pool is None or self.pool.all_ready())

    def not_synced(self) -> list[str]:
        """What readiness is waiting for, for the /ready body."""
        out = [f"kubernetes: waiting for {', '.join(s.missing_kinds())}" for s in self.stores if not s.synced]
        if self.pool is not None:
            out.extend(self.pool.not_ready())
        return out

    def _build_ops(self) -> None:
        from kubedns.ops.health import build_ops

        self.ops = build_ops(self)

    # -- construction -----------------------------------------------------------------------
    def _source(self, store: Store, k8s: KubernetesConfig) -> ClusterSource:
        if k8s.manifests:
            from kubedns.k8s.manifests import ManifestSource

            src = ManifestSource(store, k8s.manifests, kinds=list(k8s.resources()), reactor=self.reactor)
            src.load_now()  # a bad file at start is a start-up error, not a silent empty cluster
            return src
        from kubedns.k8s.informer import Informer

        return Informer(store, list(k8s.resources()), k8s.api(), reactor=self.reactor,
                        on_event=_programming_hook(store), label_selector=k8s.labels)

    def _chain(self, block: ServerBlock, forward: ForwardConfig) -> Forwarding:
        from kubedns.forward.chain import ForwardChain
        from kubedns.forward.forwarder import Forwarder

        cache = None
        if block.cache is not None:
            from kubedns.forward.cache import Cache

            cache = Cache(block.cache, reactor=self.reactor)
        chain = ForwardChain(Forwarder(forward, reactor=self.reactor), cache=cache, reactor=self.reactor)
        loop = None
        if block.loop is not None and block.loop.enabled:
            from kubedns.forward.loop import LoopDetector

            zone = (block.zones[0] + ".").encode() if block.zones[0] else b""
            loop = LoopDetector(chain.forwarder, zone=zone, reactor=self.reactor, recheck=block.loop.recheck)
        return chain, loop

    def _make_blocks(self, config: Config, started: bool) -> dict[int, Block]:
        """Runtime blocks for ``config``, reusing stores and chains whose config is unchanged,
        committed at once (see :meth:`_build_blocks` and :meth:`_commit_blocks`)."""
        blocks, commit = self._build_blocks(config)
        commit(started)
        self._maybe_announce()
        return blocks

    def _build_blocks(self, config: Config) -> tuple[dict[int, Block], Callable[[bool], None]]:
        """Build runtime blocks without touching what runs; returns them and a ``commit(started)``.

        Nothing is swapped, started or retired until ``commit`` is called, so a reload that fails
        later (a port that cannot be bound) leaves the running config exactly as it was.  New
        sources and chains are started by ``commit`` only when ``started`` (on reload); at first
        build, ``startService`` starts everything.
        """
        blocks: dict[int, Block] = {}
        fwd_keep: dict[tuple[Any, ...], Forwarding] = {}
        new_chains: list[Forwarding] = []
        plan = self.clusters.plan(config)  # stores: kept, shared or new (not started)
        hplan = self.hosts.plan(config)  # hosts plugins: kept, or new with their file read
        try:
            for b in config.servers:
                clusters = plan.clusters.get(b.index)
                chain = loop = None
                if b.forward is not None:
                    key = (b.forward, b.cache, b.loop, b.zones)
                    fentry = fwd_keep.get(key) or self._fwd.get(key)
                    if fentry is None:
                        fentry = self._chain(b, b.forward)
                        new_chains.append(fentry)
                    fwd_keep[key] = fentry
                    chain, loop = fentry
                blocks[b.index] = Block(b, clusters, chain, loop, hplan.get(b.index))
        except Exception:
            self.clusters.abandon(plan)
            raise

        def commit(started: bool) -> None:
            old_fwd = self._fwd
            self._fwd = fwd_keep
            self.clusters.commit(plan, blocks)  # new sources start if we are running
            self.hosts.commit(hplan)  # likewise; those no block uses any more stop
            if started:
                for chain, loop in new_chains:
                    chain.start()
                    if loop is not None:
                        loop.start()
            # retire what the new config no longer uses (stores: see ClusterSources.commit)
            for k, (chain, loop) in old_fwd.items():
                if k not in fwd_keep:
                    if loop is not None:
                        loop.stop()
                    chain.stop()

        return blocks, commit

    def _add_listener(self, addr: Address, blocks: list[Block], config: Config | None = None) -> _Listener:
        """Sockets for ``addr`` (bound now if running); a bind failure raises :class:`ListenError`
        naming the config key, with nothing left open."""
        config = config or self.config
        # CoreDNS's server label: "dns://:53" for the wildcard address
        label = f"dns://:{addr.port}" if addr.host in ("", "0.0.0.0") else f"dns://{addr}"
        disp = Dispatcher(label, blocks, reactor=self.reactor, fast_path=self.fast_path)
        iface = interface(addr.host)
        reuse = self.config.workers > 1
        first = next(b for b in config.servers if b.listen == addr)
        where = f"{config.path}: servers[{first.index}].listen: {addr}"
        udp = UDPListener(iface, addr.port, DNSDatagramProtocol(disp), self.reactor, reuse, where)
        factory = DNSStreamFactory(disp, idle_timeout=self.config.tcp_idle_timeout, fd_limit=self._fd_limit)
        tcp = TCPListener(iface, addr.port, factory, self.reactor, reuse, where)
        lst = _Listener(addr, disp, udp, tcp)
        try:
            for s in lst.services:
                s.setServiceParent(self)
        except Exception:
            for s in lst.services:
                if s.parent is not None:
                    s.disownServiceParent()
            raise
        self._listeners[addr] = lst
        return lst

    def _maybe_announce(self) -> None:
        # stores are registered only when the blocks commit (a manifests file syncs while it is
        # built): until then there is nothing to announce; _make_blocks calls this again
        if not self._announced and self.stores and all(s.synced for s in self.stores):
            self._announced = True
            log.info("kubedns: cluster data synced ({kinds})",
                     kinds=", ".join(sorted({k for st in self.stores for k in st.required})))
            announce_ready()

    def _store_changed(self, store: Store | None = None) -> None:
        """A store that answers changed (None: a block switched to a new one)."""
        for lst in self._listeners.values():
            if store is None:
                lst.dispatcher.fast.drop_cluster()
            else:  # only the answers the change can alter (kubedns.dns.depends)
                lst.dispatcher.fast.store_changed(store)
        self._maybe_announce()

    def _invalidate(self) -> None:
        """A hosts file changed: no pre-encoded answer may outlive the data it was built from."""
        for lst in self._listeners.values():
            lst.dispatcher.fast.clear()

    # -- reload -----------------------------------------------------------------------------
    def reload(self, force: bool = False) -> bool:
        """Re-read the config file; apply it if valid and changed.  Returns True if applied.

        As CoreDNS's *reload*, the file's hash is recorded before it is tried, so the periodic
        check parses, logs and counts (``coredns_reload_failed_total``) a bad file once per
        change, not once per interval; the next edit is tried again, and a good one applies.
        An unreadable file counts once per error the same way.  ``force`` (SIGHUP) tries a
        file that differs from the running config even if it was already rejected: an
        operator asking explicitly gets the rejection logged and counted again, and a reload
        that failed for a reason outside the file (a port that was busy) can be retried.
        """
        path = self.config.path
        try:
            digest = file_digest(path)  # a Corefile's imports count too
        except OSError as e:
            digest = f"unreadable: {e.strerror}"
            seen, self._seen_digest = self._seen_digest, digest
            if seen == digest and not force:
                return False
            return self._reload_failed(ConfigError(path, "", f"a readable config file ({e.strerror})", has_found=False))
        seen, self._seen_digest = self._seen_digest, digest
        if digest == self._config_digest or (digest == seen and not force):
            return False
        try:
            new = load(path)
        except ConfigError as e:
            return self._reload_failed(e)
        try:
            self._apply(new)
        except Exception as e:  # e.g. a port that cannot be bound, a bad manifests file
            return self._reload_failed(e)
        self._config_digest = digest
        log.info("kubedns: reloaded {path}", path=path)
        return True

    def _reload_failed(self, err: Exception) -> bool:
        self.reload_failures += 1
        why = f"cannot listen: {err}" if isinstance(err, ListenError) else str(err)
        log.error("kubedns: reload rejected, still serving the previous config: {why}", why=why)
        if self.ops is not None:
            self.ops.record_reload_failure()
        return False

    def _apply(self, new: Config) -> None:
        blocks, commit = self._build_blocks(new)
        wanted = new.listeners()
        added: list[_Listener] = []
        try:
            for addr, bs in wanted.items():
                if addr not in self._listeners:
                    added.append(self._add_listener(addr, [blocks[b.index] for b in bs], new))
            if self.ops is not None:
                try:
                    self.ops.prepare(new)  # new HTTP listeners (health, ready, metrics), bound or raise
                except Exception as e:
                    cause = e.__cause__
                    if isinstance(cause, CannotListenError):
                        raise http_listen_error(new, cause, self.worker) from None
                    raise
        except Exception:
            for lst in added:
                self._drop_listener(lst.addr)
            raise
        commit(bool(self.running))  # from here on nothing can fail half-way
        for addr, bs in wanted.items():
            self._listeners[addr].dispatcher.blocks = [blocks[b.index] for b in bs]
            self._listeners[addr].dispatcher.fast.clear()
        for addr in [a for a in self._listeners if a not in wanted]:
            self._drop_listener(addr)
        self.config = new
        self.observers.wire(self.dispatchers.values())  # log and errors follow the new blocks
        self._schedule_reload()  # the `reload` key itself may have changed
        if self.ops is not None:
            # metrics for new listeners; the HTTP listeners
            # prepared above start serving, and those the new config no longer names close
            self.ops.refresh()

    def _drop_listener(self, addr: Address) -> None:
        lst = self._listeners.pop(addr)
        for s in lst.services:
            s.disownServiceParent()

    def _install_reload(self) -> None:
        self._schedule_reload()
        try:
            signal.signal(signal.SIGHUP, lambda *_: self.reactor.callFromThread(self._sighup))
        except ValueError:  # not the main thread (tests building a service in-process)
            pass

    def _schedule_reload(self) -> None:
        """Run the periodic check the current config's ``reload`` key asks for (if any).

        Called at start and after every applied reload, so a new interval, or an added or
        removed ``reload``, takes effect at once; an unchanged interval keeps its running timer.
        """
        rcfg = self.config.first("reload")
        wanted = rcfg if rcfg is not None and self.running else None
        loop = self._reload_loop
        if loop is not None and loop.running and wanted == self._reload_config:
            return
        if loop is not None and loop.running:
            loop.stop()  # allowed from inside its own call (a periodic check applying this)
        self._reload_loop = None
        self._reload_config = wanted
        if wanted is not None:
            # CoreDNS's jitter: the period is INTERVAL plus a random offset within ±JITTER/2,
            # drawn anew whenever the key changes, so replicas started together spread out
            offset = self.jitter_random(-wanted.jitter / 2, wanted.jitter / 2) if wanted.jitter else 0.0
            self._reload_loop = task.LoopingCall(self.reload)
            self._reload_loop.clock = self.reactor
            self._reload_loop.start(max(1.0, wanted.interval + offset), now=False)

    def _sighup(self) -> None:
        if self.pool is not None:
            self.pool.signal_all(signal.SIGHUP)
        for src in self.clusters.sources:  # a kubeconfig fixed on disk: retry with it now
            src.reload_credentials()
        self.reload(force=True)

    # -- lifecycle --------------------------------------------------------------------------
    def add_first(self, child: service.Service) -> None:
        """A child started before the listeners and stopped after them (node-local networking)."""
        child.setServiceParent(self)
        self.services.remove(child)
        self.services.insert(0, child)

    def privilegedStartService(self) -> None:  # noqa: N802
        """Bind every listener (twistd calls this first); an address that cannot be bound ends
        the process with one line on stderr naming the config key and the address, and exit 1."""
        try:
            super().privilegedStartService()
        except ListenError as e:
            _exit_cannot_listen(e)
        except CannotListenError as e:  # an HTTP endpoint (health, ready, prometheus)
            _exit_cannot_listen(http_listen_error(self.config, e, self.worker))

    def startService(self) -> None:  # noqa: N802
        super().startService()
        self.hosts.start()
        for chain, loop in self._fwd.values():
            chain.start()
            if loop is not None:
                loop.start()
        self._install_reload()
        for lst in self._listeners.values():
            for s in lst.services:
                for port in (getattr(s, "_port", None), getattr(s, "_port6", None)):  # every socket bound
                    if port is not None:
                        h = port.getHost()
                        log.info("kubedns worker {w} listening on {proto} {host}:{port}", w=self.worker,
                                 proto=h.type, host=f"[{h.host}]" if ":" in h.host else h.host, port=h.port)

    def stopService(self) -> defer.Deferred | None:  # noqa: N802
        """Lameduck first: /ready says 503 while DNS keeps answering, then stop everything."""
        if self._reload_loop is not None and self._reload_loop.running:
            self._reload_loop.stop()
        if self.pool is not None:
            self.pool.begin_stop()  # workers run their lameduck alongside ours
        health = self.config.first("health")
        lameduck = health.lameduck if health is not None else 0.0
        if lameduck > 0:
            if self.ops is not None:
                self.ops.set_lameduck()
            log.info("kubedns: lameduck for {secs}s before shutting down", secs=lameduck)
            d = task.deferLater(self.reactor, lameduck, lambda: None)
            d.addCallback(lambda _: self._stop_all())
            return d
        return self._stop_all()

    def _stop_all(self) -> defer.Deferred | None:
        self.observers.flush()
        self.clusters.stop()
        self.hosts.stop()
        for chain, loop in self._fwd.values():
            if loop is not None:
                loop.stop()
            chain.stop()
        return super().stopService()


def _programming_hook(store: Store, now: Any = time.time) -> Any:
    """DNS programming latency: EndpointSlice change (its trigger time) → answerable here.

    Labelled like CoreDNS's ``service_kind``: ``cluster_ip`` or ``headless_with_selector`` by the
    Service the slice belongs to (slim records do not keep selectors, so selector-less headless
    Services count as ``headless_with_selector``).  Services and slices come on separate watches,
    so a new Service's slice often lands first; its names only become answerable when the Service
    does, so the slice's start time is held (bounded) and observed when the Service arrives.
    """
    from kubedns.ops.counters import observe_programming

    pending: dict[tuple[str, str], float] = {}

    def hook(kind: str, event_type: str, lag: float, rec: Any = None) -> None:
        if event_type not in ("ADDED", "MODIFIED") or rec is None:
            return
        if kind == "services":
            start = pending.pop((rec.namespace, rec.name), None)
            if start is not None:
                observe_programming("headless_with_selector" if rec.headless else "cluster_ip",
                                    max(0.0, now() - start))
            return
        if kind != "endpointslices":
            return
        svc = store.service(rec.namespace, rec.service)
        if svc is not None:
            observe_programming("headless_with_selector" if svc.headless else "cluster_ip", lag)
            return
        key = (rec.namespace, rec.service)
        if key not in pending and len(pending) >= _PENDING_PROGRAMMING_MAX:
            del pending[next(iter(pending))]  # oldest first: slices of Services that never came
        pending.setdefault(key, now() - lag)

    return hook


def _exit_cannot_listen(err: ListenError) -> None:
    """Start-up cannot go on: say why on one line (the real stderr, not twistd's log wrapper,
    which would print it with a prefix as ``stderr#error``) and exit 1 without a traceback."""
    stream = sys.__stderr__ or sys.stderr
    stream.write(f"kubedns: cannot listen: {err}\n")
    stream.flush()
    raise SystemExit(1)


def build(config: Config, reactor: Any = None) -> KubeDNS:
    """Make the service tree for ``config`` (not started)."""
    return KubeDNS(config, reactor=reactor)
