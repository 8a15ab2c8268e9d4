"""The Twisted service that owns the API client and one LIST+WATCH thread per resource.

Why a service around threads: the official client is blocking, so each resource's loop runs on
its own thread (:mod:`kubedns.k8s.watch`) and hands changes to the store with
``reactor.callFromThread``; this module is the seam the rest of the server sees — started and
stopped with the application, asked for per-resource state by readiness and metrics.

Where the client config comes from is decided once per attempt: an explicit kubeconfig path, or
(with ``None``) the in-cluster service account, then ``$KUBECONFIG``, then ``~/.kube/config``.  If
nothing works the error names everything tried, and the attempt is repeated in the background
with backoff: the store stays unsynced (readiness false) until the API is reachable, instead of
the process dying in a crash loop that takes cached answers down with it.  Once the client is
built, the files are re-read before every retry after an error
(:class:`~kubedns.k8s.apiclient.ClientSource`), and on reload, so a fixed kubeconfig is picked up
without a restart.  The watchers of one informer share one view of an API outage
(:class:`~kubedns.k8s.outage.ApiOutage`): one log line per backoff step, and a cheap probe that
resumes every watch as soon as the API answers again.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet import defer, task
from twisted.logger import Logger

from kubedns.config import ApiConfig
from kubedns.k8s.source import ClusterSource
from kubedns.k8s.watch import (
    ApiOutage,
    Backoff,
    ClientSource,
    EventHook,
    ResourceWatcher,
    list_function,
    load_api_client,
)

if TYPE_CHECKING:
    from kubedns.k8s.store import Store

__all__ = ["Informer", "hold_gc", "release_gc"]

_log = Logger(namespace="kubedns.k8s.informer")

#: ResourceWatcher keyword arguments an Informer passes through.
_WATCHER_TUNING = frozenset(
    {
        "page_size",
        "page_bytes",
        "watch_timeout",
        "connect_timeout",
        "read_timeout",
        "backoff_base",
        "backoff_cap",
        "max_watch_silence",
    }
)
#: Informer knobs that are not the watchers'.
_INFORMER_TUNING = frozenset({"config_retry_base", "config_retry_cap", "stop_timeout", "freeze_gc", "probe_interval"})


#: glibc's M_MMAP_THRESHOLD (malloc.h)
_M_MMAP_THRESHOLD = -3
_malloc_tuned = False


def _pin_malloc_mmap_threshold(threshold: int = 128 * 1024) -> bool:
    """Keep glibc returning big freed buffers to the OS; True if the setting was applied.

    A list page is a buffer of a few MB (its body, then its text).  glibc serves such sizes with
    ``mmap`` and gives them back on ``free``, but its *dynamic* threshold then rises to the size
    just freed, so from the second page on the buffers come from the heaps of the watcher
    threads' arenas, which keep them: measured at 100k Pods, that is +17 MB of RSS after the
    initial sync and +13 MB more after every relist.  Setting the threshold explicitly (to its
    default, 128 KiB) turns the dynamic adjustment off.  Same effect as the environment variable
    ``MALLOC_MMAP_THRESHOLD_=131072``, which is respected if set; a no-op off glibc.
    """
    global _malloc_tuned
    if _malloc_tuned or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    _malloc_tuned = True
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        if not hasattr(libc, "gnu_get_libc_version"):
            return False
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, threshold))
    except (OSError, AttributeError):
        return False


#: True while :func:`hold_gc` keeps the cyclic collector off (start-up until the first sync).
_gc_held = False


#: The cyclic collector's thresholds once serving (CPython's default is (700, 10, 10)).  A
#: forwarded cache miss allocates and keeps tracked objects (its cache entry, the fast-path
#: entry), so at the default a young collection runs every few misses and an older one every few
#: hundred, each traversing every object kept since the freeze: measured with
#: ``bench/run.py --forward --only kubedns`` (two rounds, same run), 180 and 166 us of CPU per miss at
#: the default against 140 and 136 us with these.  Garbage cycles wait longer to be freed, but a
#: young generation of 50,000 objects is a few MB at most: a bound, not a leak.
SERVING_GC_THRESHOLDS = (50_000, 20, 10)


def hold_gc() -> None:
    """Turn the cyclic garbage collector off for start-up; :func:`release_gc` turns it back on.

    Start-up creates objects that live as long as the process and almost no cyclic garbage: the
    modules imported (~130k objects the collector tracks), then the store's records (about as
    many for 10k Services and 50k endpoints).  With the collector on, every 700 new objects start
    a young collection and the growing heap triggers full ones that traverse all of them:
    measured at 100k realistic Pods, ~770 collections and 0.24 s of CPU up to the sync, against
    0.12 s with the hold (nearly all of it the one collection at the end), for ~0.6 MB freed.  The informer releases the hold
    at its first full sync, where it collects and freezes the heap anyway (:meth:`Informer._listed`);
    :mod:`kubedns.tap` turns the collector off when twistd parses its options, hands the hold
    over here in ``makeService``, and releases it at once when there is no informer, and after
    a bound when the first sync does not come (an unreachable API).
    """
    global _gc_held
    gc.disable()  # the caller may have turned it off already, as kubedns.tap does
    _gc_held = True


def release_gc() -> bool:
    """End :func:`hold_gc`: collect once, freeze what survives, collect as usual from now on.

    True if a hold was released (a no-op otherwise, so callers need not know who came first).
    """
    global _gc_held
    if not _gc_held:
        return False
    _gc_held = False
    gc.collect()
    gc.freeze()
    gc.set_threshold(*SERVING_GC_THRESHOLDS)
    gc.enable()
    return True


class Informer(ClusterSource):
    """Keeps ``store`` in step with the API for ``resources`` (e.g. namespaces, services, ...).

    ``tuning`` takes the :class:`~kubedns.k8s.watch.ResourceWatcher` knobs (``page_size``,
    ``page_bytes``, ``watch_timeout``, ``connect_timeout``, ``read_timeout``, ``backoff_base``,
    ``backoff_cap``, ``max_watch_silence``) plus ``config_retry_base``/``config_retry_cap``
    (seconds between attempts to load the client config), ``probe_interval`` (seconds between
    probes while the API is away, default 0.5), ``stop_timeout`` (how long ``stopService`` waits
    for the threads) and ``freeze_gc`` (default True, see :meth:`_listed`).
    """

    def __init__(
        self,
        store: Store,
        resources: list[str],
        kubeconfig: str | ApiConfig | None,
        reactor: Any = None,
        on_event: EventHook | None = None,
        *,
        client_factory: Callable[[Any], tuple[Any, str]] = load_api_client,
        label_selector: str = "",
        **tuning: Any,
    ):
        unknown = set(tuning) - _WATCHER_TUNING - _INFORMER_TUNING
        if unknown:
            raise TypeError(f"unknown Informer tuning: {sorted(unknown)}")
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self.store = store
        self.resources = list(resources)
        self.kubeconfig = kubeconfig
        #: ``labels``: the selector of the Services, EndpointSlices and Pods watched (CoreDNS
        #: applies it to those three, not to Namespaces)
        self.label_selector = label_selector
        self.on_event = on_event
        self.api_client: Any = None
        self.config_source = ""
        self.config_error = ""
        self._config_errors = 0
        self._reactor = reactor
        self._client_factory = client_factory
        self._watcher_tuning = {k: v for k, v in tuning.items() if k in _WATCHER_TUNING}
        self._config_backoff = Backoff(tuning.get("config_retry_base", 1.0), tuning.get("config_retry_cap", 30.0))
        self._stop_timeout: float = tuning.get("stop_timeout", 5.0)
        self._freeze_gc: bool = tuning.get("freeze_gc", True)
        self._probe_interval: float = tuning.get("probe_interval", 0.5)
        self._source: ClientSource | None = None
        self.outage: ApiOutage | None = None
        self._list_started = 0.0
        self._all_synced_once = False
        self._watchers: dict[str, ResourceWatcher] = {}
        self._retry_call: Any = None

    # -- Service ----------------------------------------------------------------------------
    def startService(self) -> None:  # noqa: N802 (Twisted API)
        super().startService()
        _pin_malloc_mmap_threshold()
        self._connect()

    def stopService(self) -> defer.Deferred[None]:  # noqa: N802 (Twisted API)
        super().stopService()
        if self._retry_call is not None and self._retry_call.active():
            self._retry_call.cancel()
        self._retry_call = None
        watchers = list(self._watchers.values())
        for w in watchers:
            w.stop()
        return defer.ensureDeferred(self._wait_for(watchers, self._stop_timeout))

    def _connect(self) -> None:
        self._retry_call = None
        if not self.running:
            return
        source = ClientSource(self.kubeconfig, self._client_factory, self._probe_timeouts())
        try:
            self.api_client, self.config_source = source.load()
        except Exception as e:
            self.config_error = str(e)
            self._config_errors += 1
            delay = self._config_backoff.next()
            _log.error("Kubernetes API client: {error}; retrying in {delay:.1f}s", error=self.config_error, delay=delay)
            self._retry_call = self._reactor.callLater(delay, self._connect)
            return
        self.config_error = ""
        self._config_backoff.reset()
        self._source = source
        tuning = self._watcher_tuning
        self.outage = ApiOutage(
            source.probe,
            Backoff(tuning.get("backoff_base", 0.2), tuning.get("backoff_cap", 30.0)),
            self._probe_interval,
        )
        _log.info(
            "watching {resources}{selector} via {source} ({host})",
            resources=", ".join(self.resources),
            selector=f" (labels {self.label_selector})" if self.label_selector else "",
            source=self.config_source,
            host=getattr(self.api_client.configuration, "host", "?"),
        )
        for resource in self.resources:
            self._watchers[resource] = ResourceWatcher(
                resource,
                list_function(self.api_client, resource),
                self.store,
                self._reactor,
                on_event=self.on_event,
                on_listed=self._listed,
                client_source=source,
                outage=self.outage,
                label_selector="" if resource == "namespaces" else self.label_selector,
                **self._watcher_tuning,
            )
        if self._freeze_gc and not _gc_held:
            # the modules just imported (the client: ~0.5M objects) live forever; while the
            # start-up hold is on, nothing collects them anyway and the sync's release freezes them
            self._freeze()
        self._list_started = self._reactor.seconds()
        for w in self._watchers.values():
            w.start()

    def _probe_timeouts(self) -> tuple[float, float]:
        """(connect, read) of a probe: short, so the API's return is seen within about a second."""
        t = self._watcher_tuning
        return (min(1.0, t.get("connect_timeout", 10.0)), min(2.0, t.get("read_timeout", 90.0)))

    def reload_credentials(self) -> None:
        """On reload (SIGHUP): retry at once whatever waits, re-reading the kubeconfig first.

        Watches that work are left alone; a loop backing off after an error (a rejected token,
        an unreachable address) retries now, with the client rebuilt if the files changed.
        """
        if not self.running:
            return
        if not self._watchers:  # the client config never loaded: try again now
            if self._retry_call is not None and self._retry_call.active():
                self._retry_call.cancel()
            self._connect()
            return
        for w in self._watchers.values():
            w.retry_now()

    def _listed(self, resource: str, relist: bool) -> None:
        """A watcher finished a (re)list (reactor thread): log the first full sync, freeze the heap.

        The store's records live as long as the process, like the modules imported at start-up:
        ``gc.freeze()`` (here once every kind is in, and in :meth:`_connect` before the first
        list) moves them out of the cyclic collector's generations, so later collections stop
        traversing hundreds of thousands of long-lived objects: each full collection would
        otherwise cost ~100 ms of CPU, several of them during a sync, and a pause in the middle
        of answering queries later.  The records are acyclic, so freezing loses nothing:
        reference counting still frees them when they are replaced or deleted.
        """
        if not self.synced:
            return
        if not self._all_synced_once:
            self._all_synced_once = True
            _log.info(
                "all {n} resources synced in {seconds:.2f}s ({counts})",
                n=len(self._watchers),
                seconds=self._reactor.seconds() - self._list_started,
                counts=", ".join(f"{r} {self.store.count(r)}" for r in self.resources),
            )
        if release_gc():
            return  # the start-up hold ends with the collection and freeze below
        if self._freeze_gc:
            self._freeze()

    @staticmethod
    def _freeze() -> None:
        gc.collect()
        gc.freeze()

    async def _wait_for(self, watchers: list[ResourceWatcher], timeout: float) -> None:
        """Wait for every thread to end (or ``timeout``) without blocking the reactor."""
        deadline = self._reactor.seconds() + timeout
        while alive := [w.resource for w in watchers if w.is_alive()]:
            if self._reactor.seconds() >= deadline:
                _log.warn("watch threads still running after {t}s: {alive}", t=timeout, alive=", ".join(alive))
                break
            await task.deferLater(self._reactor, 0.01, lambda: None)
        self._closed()

    def _closed(self) -> None:
        self._watchers = {}
        self.api_client = None
        source, self._source = self._source, None
        if source is not None:
            source.close()  # every client it built

    # -- state ------------------------------------------------------------------------------
    def problem(self) -> str:
        """The client config's error, else the last error of the first resource not synced."""
        if self.config_error:
            return self.config_error
        for resource in self.resources:
            w = self._watchers.get(resource)
            if w is not None and not w.status.synced and w.status.last_error:
                return w.status.last_error
        return ""

    def status(self) -> dict[str, dict[str, Any]]:
        """resource → {synced, resource_version, relists, errors, last_error}."""
        out: dict[str, dict[str, Any]] = {}
        for resource in self.resources:
            w = self._watchers.get(resource)
            if w is not None:
                out[resource] = w.status.as_dict()
            else:
                out[resource] = {
                    "synced": False,
                    "resource_version": "",
                    "relists": 0,
                    "errors": self._config_errors,
                    "last_error": self.config_error,
                }
        return out

    @property
    def synced(self) -> bool:
        """True once every resource has completed its first list."""
        return bool(self._watchers) and all(w.status.synced for w in self._watchers.values())
