"""Fill the store from a YAML file of Kubernetes objects instead of a live API server.

Why: to serve a cluster's names without API access (tests, demos, air-gapped debugging, a
``kubectl get svc,endpointslices,ns -A -o yaml`` snapshot), through exactly the same records and
store as the informer.  The file may be a ``kind: List`` with ``items``, a multi-document stream,
or a mix of both.  Service, EndpointSlice, Pod and Namespace objects are converted by the same
:data:`~kubedns.k8s.objects.KINDS` converters; other kinds are ignored.

Every (re)load replaces the whole state per kind (``apply_batch`` then ``prune``), so deleting an
object from the file deletes its names.  The file is polled on the reactor with a
``LoopingCall`` (stat first, then a content hash, so a rewrite with the same bytes is a no-op);
nothing here needs a thread.  A file that cannot be read or parsed on reload is logged, naming the
file and the problem, and the previous state is kept; :meth:`ManifestSource.load_now` raises
instead, so a bad file at startup is a startup error.
"""

from __future__ import annotations

import hashlib
import os
from typing import TYPE_CHECKING, Any

import yaml
from twisted.internet import task
from twisted.logger import Logger

from kubedns.configbase import ConfigError
from kubedns.k8s.objects import KINDS
from kubedns.k8s.source import ClusterSource

if TYPE_CHECKING:
    from kubedns.k8s.store import Store

__all__ = ["ManifestSource", "parse_manifests"]

_log = Logger(namespace="kubedns.k8s.manifests")

#: object ``kind`` → store resource name
_RESOURCE_OF_KIND = {
    "Namespace": "namespaces",
    "Service": "services",
    "EndpointSlice": "endpointslices",
    "Pod": "pods",
}


def parse_manifests(path: str, text: str, kinds: frozenset[str] | set[str]) -> dict[str, list[tuple[str, Any]]]:
    """``resource → [(key, record), ...]`` for every wanted object in ``text``; ConfigError if malformed."""
    out: dict[str, list[tuple[str, Any]]] = {k: [] for k in kinds}
    try:
        docs = list(yaml.safe_load_all(text))
    except yaml.YAMLError as e:
        raise ConfigError(path, "", "valid YAML", " ".join(str(e).split())) from e
    for i, doc in enumerate(docs):
        where = f"document[{i}]" if len(docs) > 1 else ""
        if doc is None:
            continue
        if not isinstance(doc, dict):
            raise ConfigError(path, where, "a Kubernetes object (a mapping)", doc)
        list_kind = doc.get("kind") or "List"
        if "items" in doc and isinstance(list_kind, str) and list_kind.endswith("List"):
            items = doc.get("items")
            if items is None:
                continue
            if not isinstance(items, list):
                raise ConfigError(path, _join(where, "items"), "a list of objects", items)
            # the API's own ServiceList (kubectl get --raw) leaves the kind off its items
            item_kind = list_kind[: -len("List")] or None
            for j, item in enumerate(items):
                _add(out, path, _join(where, f"items[{j}]"), item, kinds, item_kind)
        else:
            _add(out, path, where, doc, kinds)
    return out


def _join(a: str, b: str) -> str:
    return f"{a}.{b}" if a else b


def _add(
    out: dict[str, list[tuple[str, Any]]], path: str, where: str, obj: Any, kinds: Any, default_kind: str | None = None
) -> None:
    if not isinstance(obj, dict):
        raise ConfigError(path, where, "a Kubernetes object (a mapping)", obj)
    kind = obj.get("kind") or default_kind
    if not isinstance(kind, str) or not kind:
        raise ConfigError(path, _join(where, "kind"), "an object kind such as Service", kind)
    resource = _RESOURCE_OF_KIND.get(kind)
    if resource is None or resource not in kinds:
        return
    meta = obj.get("metadata")
    if not isinstance(meta, dict) or not isinstance(meta.get("name"), str) or not meta["name"]:
        name = meta.get("name") if isinstance(meta, dict) else meta
        raise ConfigError(path, _join(where, "metadata.name"), f"the {kind}'s name (a string)", name)
    if resource != "namespaces" and not meta.get("namespace"):
        # like kubectl apply: a namespaced object without a namespace lives in "default"
        obj = {**obj, "metadata": {**meta, "namespace": "default"}}
    try:
        key, rec = KINDS[resource](obj)
    except Exception as e:  # a field of the wrong type deep inside
        raise ConfigError(path, where or kind, f"a well-formed {kind}", f"{type(e).__name__}: {e}") from e
    out[resource].append((key, rec))


class ManifestSource(ClusterSource):
    """Loads ``path`` into ``store`` for ``kinds`` and reloads it when the file changes."""

    def __init__(
        self,
        store: Store,
        path: str,
        kinds: list[str] | tuple[str, ...] | set[str] | frozenset[str],
        reactor: Any = None,
        interval: float = 1.0,
    ):
        unknown = set(kinds) - set(KINDS)
        if unknown:
            raise ValueError(f"unknown kinds {sorted(unknown)}; expected some of {sorted(KINDS)}")
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self.store = store
        self.path = path
        self.kinds = frozenset(kinds)
        self.interval = interval
        self.loads = 0  # successful (re)loads
        self.counts: dict[str, int] = {}  # objects per kind in the last successful load
        self.errors = 0
        self.last_error = ""
        self._reactor = reactor
        self._stat: tuple[int, ...] | None = None
        self._digest: bytes | None = None
        self._loop: task.LoopingCall | None = None

    def problem(self) -> str:
        """Why the last reload failed (the previous state is kept), or ``""``."""
        return self.last_error

    # -- loading ----------------------------------------------------------------------------
    def load_now(self) -> int:
        """Read, parse and apply the file now; returns the number of objects, raises ConfigError.

        Logs what was loaded, per kind: the operator's first check that the file is the one meant.
        """
        stat, data = self._read()
        self._stat = stat
        n = self._apply(data)
        _log.info("loaded {path}: {counts}", path=self.path, counts=self._counts(n))
        return n

    def _read(self) -> tuple[tuple[int, ...], bytes]:
        try:
            with open(self.path, "rb") as f:
                st = os.fstat(f.fileno())
                data = f.read()
        except OSError as e:
            raise ConfigError(
                self.path, "", "a readable manifest file", f"{type(e).__name__}: {e.strerror or e}"
            ) from e
        return _signature(st), data

    def _apply(self, data: bytes) -> int:
        digest = hashlib.sha256(data).digest()
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ConfigError(self.path, "", "UTF-8 text", str(e)) from e
        parsed = parse_manifests(self.path, text, self.kinds)
        # all on the reactor thread in one go: no query sees a half-applied file
        for kind in sorted(self.kinds):
            items = parsed[kind]
            self.store.apply_batch(kind, items)
            self.store.prune(kind, {key for key, rec in items if rec is not None})
        for kind in sorted(self.kinds):
            self.store.mark_synced(kind)
        self._digest = digest
        self.loads += 1
        self.last_error = ""
        self.counts = {kind: len(parsed[kind]) for kind in sorted(self.kinds)}
        return sum(self.counts.values())

    def _counts(self, total: int) -> str:
        """``3 namespaces, 5 services, 2 endpointslices (10 objects)``, in the store's kind order."""
        per_kind = ", ".join(f"{self.counts[k]} {k}" for k in _RESOURCE_OF_KIND.values() if k in self.counts)
        return f"{per_kind} ({total} objects)"

    def check(self) -> bool:
        """Reload if the file changed; True if it was reloaded.  Errors are logged, never raised."""
        try:
            st = os.stat(self.path)
        except OSError as e:
            why = f"{type(e).__name__}: {e.strerror or e}"
            self._fail(("missing",), ConfigError(self.path, "", "a readable manifest file", why))
            return False
        sig = _signature(st)
        if sig == self._stat:
            return False
        try:
            sig, data = self._read()
            if hashlib.sha256(data).digest() == self._digest:
                self._stat = sig
                return False
            n = self._apply(data)
        except ConfigError as e:
            self._fail(sig, e)
            return False
        self._stat = sig
        _log.info("reloaded {path}: {counts}", path=self.path, counts=self._counts(n))
        return True

    def _poll(self) -> None:
        try:
            self.check()
        except Exception:  # keep polling whatever happens
            _log.failure("manifest reload of {path} failed", path=self.path)

    def _fail(self, sig: tuple[Any, ...], error: ConfigError) -> None:
        if sig == self._stat:
            return  # already reported this version of the file
        self._stat = sig
        self.errors += 1
        self.last_error = str(error)
        _log.error("manifest reload failed, keeping the previous state: {error}", error=self.last_error)

    # -- Service ----------------------------------------------------------------------------
    def startService(self) -> None:  # noqa: N802 (Twisted API)
        super().startService()
        if self.loads == 0:
            self.load_now()
        self._loop = task.LoopingCall(self._poll)
        self._loop.clock = self._reactor
        self._loop.start(self.interval, now=False)

    def stopService(self) -> None:  # noqa: N802 (Twisted API)
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None


def _signature(st: os.stat_result) -> tuple[int, ...]:
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
