"""The cluster stores of a running server, keyed by what they watch, and reloads without a gap.

A :class:`~kubedns.k8s.store.Store` and its source (an informer, or a manifests file) cost a full
list of the cluster to build, and answer SERVFAIL until that list is in.  So a reload must not
rebuild one it does not have to, and must not let a new one answer before it is ready:

- A store is keyed by what is watched (:meth:`KubernetesConfig.watch_key`: the API and its
  credentials (kubeconfig and context, or endpoint and tls) or the manifests file, the
  ``labels`` selector, and whether Pods and EndpointSlices are watched), not by the whole
  ``kubernetes`` block.  Options that only change how answers are made (``ttl``,
  ``fallthrough``, ``zones``, ``pods`` between ``insecure`` and ``disabled``, ``namespaces``,
  ``endpoint_pod_names``, ``ignore_empty_service``) keep the running store and watch; the block
  gets a new :class:`~kubedns.dns.records.ClusterZones` over it at once.
- A block that needs a new store (another kubeconfig or manifests file, API endpoint or
  certificate, ``labels``, ``noendpoints``, ``pods: verified`` or ``autopath @kubernetes`` (which
  watches Pods too, :attr:`KubernetesConfig.autopath`) turned on or off) keeps answering from the one it had, with its previous settings, until the new
  store has synced; then the block's answers switch in one assignment on the reactor thread and
  the old store and watch are stopped (make before break).  A new store that never syncs (an
  unreachable API, a wrong kubeconfig) is logged after :attr:`ClusterSources.sync_warning`
  seconds and the previous one keeps answering.

Everything here runs on the reactor thread; the sources' own threads only reach a store through
``callFromThread``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

from twisted.application import service
from twisted.logger import Logger

from kubedns.config import Config, KubernetesConfig
from kubedns.dns.records import ClusterZones
from kubedns.k8s.source import ClusterSource
from kubedns.k8s.store import Store

if TYPE_CHECKING:
    from twisted.internet.interfaces import IDelayedCall

    from kubedns.serve.server import Block

__all__ = ["ClusterSources", "Plan"]

log = Logger(namespace="kubedns.service")

WatchKey = tuple[Any, ...]
Entry = tuple[Store, ClusterSource]


@dataclass(frozen=True, slots=True)
class _Swap:
    """Block ``index`` answers from its previous store until the store for ``key`` has synced."""

    index: int
    key: WatchKey
    config: KubernetesConfig


@dataclass(slots=True)
class Plan:
    """What a config needs, built without touching what runs (see :meth:`ClusterSources.plan`)."""

    keep: dict[WatchKey, Entry]
    new: list[Entry]
    clusters: dict[int, ClusterZones]  # block index → what answers its cluster zones now
    swaps: list[_Swap]


def describe(k8s: KubernetesConfig) -> str:
    """What a store watches, for log lines."""
    api = k8s.api()
    if k8s.manifests:
        src = f"manifests {k8s.manifests}"
    elif api.endpoint is not None:
        src = f"endpoint {api.endpoint}"
    else:
        src = f"kubeconfig {api.kubeconfig or '(default)'}" + (f" context {api.context}" if api.context else "")
    if k8s.labels:
        src += f", labels {k8s.labels}"
    if k8s.noendpoints:
        src += ", no endpoints"
    return src + (", with pods" if "pods" in k8s.resources() else "")


class ClusterSources:
    """The stores and sources that the current config's ``kubernetes`` blocks answer from."""

    #: seconds after a reload before a new store that has not synced is logged
    sync_warning = 30.0

    def __init__(
        self,
        parent: service.MultiService,
        make_source: Callable[[Store, KubernetesConfig], ClusterSource],
        on_change: Callable[[Store | None], None],
        reactor: Any,
    ):
        self.parent = parent
        self._make_source = make_source
        self._on_change = on_change
        self.reactor = reactor
        #: what the current config watches (including new stores still syncing)
        self.active: dict[WatchKey, Entry] = {}
        #: stores the config no longer names that still answer for a block until its swap
        self._retiring: dict[WatchKey, Entry] = {}
        self._swaps: list[_Swap] = []
        self._blocks: dict[int, Block] = {}  # block index → the running block
        self._warning: IDelayedCall | None = None

    # -- views ---------------------------------------------------------------------------------
    @property
    def stores(self) -> list[Store]:
        return [s for s, _ in self.active.values()]

    @property
    def sources(self) -> list[ClusterSource]:
        return [src for _, src in self.active.values()]

    def pending(self) -> list[str]:
        """Blocks still answering from their previous store, for logs and tests."""
        return [f"servers[{s.index}]" for s in self._swaps]

    # -- reload --------------------------------------------------------------------------------
    def plan(self, config: Config) -> Plan:
        """Stores and cluster answers for every ``kubernetes`` block of ``config``.

        Stores watching the same thing are shared and reused; new ones are created (a manifests
        file is read now: a bad one raises) but not started.  A block whose store is new and not
        yet synced keeps the :class:`ClusterZones` it answers with today, if that one is synced.
        """
        keep: dict[WatchKey, Entry] = {}
        new: list[Entry] = []
        clusters: dict[int, ClusterZones] = {}
        swaps: list[_Swap] = []
        try:
            for b in config.servers:
                if b.kubernetes is None:
                    continue
                key = b.kubernetes.watch_key()
                entry = keep.get(key) or self.active.get(key) or self._retiring.get(key)
                if entry is None:
                    store = Store(required=b.kubernetes.resources())
                    store.add_listener(partial(self._changed, store))
                    entry = (store, self._make_source(store, b.kubernetes))
                    new.append(entry)
                keep[key] = entry
                store = entry[0]
                current = self._answering(b.index)
                if store.synced or current is None or not current.store.synced:
                    clusters[b.index] = ClusterZones(store, b.kubernetes)
                else:  # make before break
                    clusters[b.index] = current
                    swaps.append(_Swap(b.index, key, b.kubernetes))
        except Exception:
            self.abandon(Plan(keep, new, clusters, swaps))
            raise
        return Plan(keep, new, clusters, swaps)

    def abandon(self, plan: Plan) -> None:
        """A reload that will not commit: stop what its plan started (nothing, unless it ran)."""
        for _, src in plan.new:
            if src.running:
                src.stopService()

    def commit(self, plan: Plan, blocks: dict[int, Any]) -> None:
        """Make ``plan`` the running one; ``blocks`` are the runtime blocks built on it.

        New sources start (if the server runs); stores the config no longer names are stopped,
        except those a block still answers from until its new store syncs.
        """
        old = self.active
        self.active, self._swaps, self._blocks = plan.keep, plan.swaps, blocks
        for _, src in plan.new:
            src.setServiceParent(self.parent)  # starts it if the server is running
        for key, entry in old.items():
            if key not in self.active:
                self._retiring[key] = entry
        self._retire_unused()
        if self._warning is not None and self._warning.active():
            self._warning.cancel()
        self._warning = None
        for s in self._swaps:
            log.info("kubedns: servers[{i}] keeps answering from its previous cluster data until the new source "
                     "({what}) has synced", i=s.index, what=describe(s.config))
        if self._swaps:
            self._warning = self.reactor.callLater(self.sync_warning, self._warn)

    def stop(self) -> None:
        if self._warning is not None and self._warning.active():
            self._warning.cancel()
        self._warning = None

    # -- internals -----------------------------------------------------------------------------
    def _answering(self, index: int) -> ClusterZones | None:
        block = self._blocks.get(index)
        return None if block is None else block.clusters

    def _changed(self, store: Store) -> None:
        waiting = [s for s in self._swaps if self.active.get(s.key, (None,))[0] is store]
        if waiting and store.synced:
            for s in waiting:
                block = self._blocks.get(s.index)
                if block is not None:
                    block.clusters = ClusterZones(store, s.config)
                log.info("kubedns: servers[{i}] now answers from its new cluster source ({what})",
                         i=s.index, what=describe(s.config))
            self._swaps = [s for s in self._swaps if s not in waiting]
            self._retire_unused()
        # a store still listing for a swap answers nothing yet: no need to drop any answer
        if any(b.clusters is not None and b.clusters.store is store for b in self._blocks.values()):
            # blocks that switched stores: every cluster answer goes (None); else what changed
            self._on_change(None if waiting and store.synced else store)

    def _retire_unused(self) -> None:
        """Stop the retiring stores no block answers from any more."""
        answering = {id(b.clusters.store) for b in self._blocks.values() if b.clusters is not None}
        for key, (store, src) in list(self._retiring.items()):
            if key in self.active:  # named again by a later reload: it stays
                del self._retiring[key]
            elif id(store) not in answering:
                del self._retiring[key]
                if src.parent is not None:
                    src.disownServiceParent()

    def _warn(self) -> None:
        self._warning = None
        for s in self._swaps:
            store, src = self.active[s.key]
            err = src.problem()
            log.warn("kubedns: servers[{i}]: the new cluster source ({what}) has not synced after {secs:g}s "
                     "(waiting for {kinds}{err}); still answering from the previous one",
                     i=s.index, what=describe(s.config), secs=self.sync_warning,
                     kinds=", ".join(store.missing_kinds()), err=f"; last error: {err}" if err else "")
