"""One resource's LIST+WATCH loop on a worker thread, over the official client's raw responses.

Why our own loop rather than ``kubernetes.watch.Watch``: that helper stops retrying once
``timeout_seconds`` is given, retries a 410 once and then raises, does not track the
resourceVersion with ``deserialize=False``, and can hang forever without a client-side read
timeout.  Why raw JSON rather than the client's models: deserializing 100k Pods into models costs
seconds of CPU and hundreds of MB.  So every call here passes ``_preload_content=False`` and gets
the urllib3 response back; each list page and each watch line is decoded by :mod:`msgspec`
straight into structs of only the fields DNS reads (:data:`~kubedns.k8s.fastdecode.FAST_KINDS`) and
turned into a slim record at once; an object or line those cannot take goes through :mod:`json`
and the reference :data:`~kubedns.k8s.objects.KINDS` converter (:mod:`kubedns.k8s.listparse`).

The loop (one :class:`ResourceWatcher` per resource, one thread each):

* LIST page by page (``limit``/``continue``, a consistent read); each page's objects are parsed
  one at a time and its records go to the store in one ``reactor.callFromThread`` hop (one
  generation bump per page), with at most one page in flight; after the last page whatever the
  store held that the list did not show is deleted, and the kind is marked synced.  A relist is
  therefore applied *in place*: no second copy of the cluster is built (equal records keep the
  stored object), and names that vanished during a gap are deleted.  Pages start at 50 objects
  and then size themselves to about ``page_bytes`` of JSON (at most ``page_size`` objects): few
  round trips for slim objects, bounded memory for fat ones.
* WATCH from the list's resourceVersion with bookmarks, a server-side ``timeoutSeconds`` (with
  jitter, so watchers do not reconnect in lockstep) and a client-side ``(connect, read)`` timeout
  so a half-open connection cannot hang the thread.  The resourceVersion is tracked from every
  event, BOOKMARK included.  A clean end re-watches from it; a broken stream, connection error or
  read timeout reconnects with exponential backoff and jitter (longer if a 429/5xx answer says
  ``Retry-After``, up to the backoff cap); 410 Gone relists, at once the first time, but a relist
  that got no watch going (the watch answers 410 again, the list's own pages expire, the watch
  keeps sending ERROR events) is followed by the next only after a growing delay of its own.
  A failure with no answer at all is checked against the whole API
  (:class:`~kubedns.k8s.outage.ApiOutage`): if the API is away, every resource waits on one
  shared schedule, cut short by the API's return.  Before each retry after an error the
  kubeconfig is re-read (:class:`~kubedns.k8s.apiclient.ClientSource`).
* A watch that delivers nothing, not even a BOOKMARK, for ``max_watch_silence`` seconds is
  replaced by a relist: the server is behind our resourceVersion (restored from a backup).
* Errors never delete anything: while the API is unreachable the store keeps its last state.

This module and :mod:`kubedns.k8s.apiclient` are the only ones that import :mod:`kubernetes`, and
lazily (the package takes most of a second to import).  ``callFromThread`` is the only way
anything here reaches the store.
"""

from __future__ import annotations

import email.utils
import json
import math
import random
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import msgspec
from twisted.logger import Logger

from kubedns.k8s.apiclient import ClientSource, list_function, load_api_client
from kubedns.k8s.fastdecode import FAST_KINDS, Defer
from kubedns.k8s.listparse import page_records
from kubedns.k8s.objects import KINDS
from kubedns.k8s.outage import ApiOutage, Backoff

if TYPE_CHECKING:
    from kubedns.k8s.store import Store

__all__ = [
    "ApiOutage",
    "Backoff",
    "ClientSource",
    "ResourceWatcher",
    "WatcherStatus",
    "list_function",
    "load_api_client",
]

_log = Logger(namespace="kubedns.k8s.watch")

#: ``on_event(kind, event_type, lag_seconds, record)``, called on the reactor thread per applied
#: event; ``record`` is the slim record applied (None for a delete).
EventHook = Callable[[str, str, float, Any], None]

#: Set by the EndpointSlice controller; the start of "DNS programming latency".
_TRIGGER_ANNOTATION = "endpoints.kubernetes.io/last-change-trigger-time"
#: Consecutive ERROR events (other than 410), malformed event lines or 400 answers to a watch
#: after which we relist instead of re-watching: a bad line stored at some resourceVersion is
#: replayed by every re-watch from before it, a resourceVersion the server refuses is refused again,
#: and only a list gets past either.  Only what the server sends *in* the watch counts:
#: connection trouble never triggers a relist, as re-watching from a still-valid resourceVersion
#: replays the gap for a fraction of the cost.
_RELIST_AFTER_WATCH_ERRORS = 3
#: A watch that ends cleanly sooner than this without any event is treated as a failure to back
#: off from (a server that closes at once must not make us spin).
_MIN_CLEAN_WATCH = 1.0
#: Longest watch event line accepted (the apiserver's own request limit is ~1.5 MiB per object);
#: past it the stream is treated as broken rather than buffered without end.
MAX_WATCH_LINE = 64 << 20
#: Seconds a watch may deliver nothing, not even a BOOKMARK, before we relist (see
#: ResourceWatcher._silent_too_long); the apiserver bookmarks an idle watch about every minute.
DEFAULT_MAX_WATCH_SILENCE = 300.0
#: Objects asked for in the first page of a list, before their size is known.
_FIRST_PAGE = 50
#: API group of each resource, for RBAC hints (the others are in the core group, "").
_API_GROUPS = {"endpointslices": "discovery.k8s.io"}


class _ExpiredError(Exception):
    """The resourceVersion we hold is gone (410): only a relist can continue."""


class _WatchError(Exception):
    """The watch reported an ERROR event other than 410, or sent a line that is no event."""


class _StoppedError(Exception):
    """stop() was called while a request was in flight."""


@dataclass
class WatcherStatus:
    """What readiness and metrics need to know about one resource's loop."""

    synced: bool = False
    resource_version: str = ""
    relists: int = 0  # lists after the first successful one (410s, repeated failures)
    errors: int = 0
    last_error: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "synced": self.synced,
            "resource_version": self.resource_version,
            "relists": self.relists,
            "errors": self.errors,
            "last_error": self.last_error,
        }


class ResourceWatcher:
    """LIST+WATCH of one resource on its own thread, feeding a store on the reactor thread."""

    def __init__(
        self,
        resource: str,
        list_fn: Callable[..., Any],
        store: Store,
        reactor: Any = None,
        *,
        page_size: int = 10000,
        page_bytes: int = 2 << 20,
        watch_timeout: float = 300.0,
        connect_timeout: float = 10.0,
        read_timeout: float = 90.0,
        backoff_base: float = 0.2,
        backoff_cap: float = 30.0,
        max_watch_silence: float = DEFAULT_MAX_WATCH_SILENCE,
        on_event: EventHook | None = None,
        on_listed: Callable[[str, bool], None] | None = None,
        client_source: ClientSource | None = None,
        outage: ApiOutage | None = None,
        label_selector: str = "",
    ):
        if resource not in KINDS:
            raise ValueError(f"unknown resource {resource!r}; expected one of {sorted(KINDS)}")
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self.resource = resource
        self.status = WatcherStatus()
        self._convert = KINDS[resource]
        self._fast = FAST_KINDS[resource]
        self._event_decoder = _event_decoder(resource)
        self._list_fn = list_fn
        #: ``labels``: sent with every LIST and WATCH, so the API server leaves out what does not
        #: match (and sends DELETED for an object that stops matching), as CoreDNS's informers
        self._label_selector = label_selector
        self._store = store
        self._reactor = reactor
        self._page_size = max(1, page_size)
        self._page_bytes = page_bytes
        self._watch_timeout = watch_timeout
        self._timeouts = (connect_timeout, read_timeout)
        self._backoff = Backoff(backoff_base, backoff_cap)
        # between lists that got no watch going: not reset by a successful list, unlike _backoff
        self._relist_backoff = Backoff(backoff_base, backoff_cap)
        self._unproductive_lists = 0
        self._on_event = on_event
        self._on_listed = on_listed
        self._max_silence = max_watch_silence
        self._last_delivery = time.monotonic()  # of a list's end or a watch event, BOOKMARK included
        self._source = client_source
        self._client: Any = None if client_source is None else client_source.current()
        self._outage = outage
        self._unseen: set[str] = set()
        self._stopping = threading.Event()
        self._wake = threading.Event()  # cuts a backoff sleep short: stop() or retry_now()
        self._lock = threading.Lock()
        self._response: Any = None
        self._thread: threading.Thread | None = None
        self._listed_once = False
        self._verb = "list"  # of the request in flight, for error messages

    # -- lifecycle (any thread) -------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"kubedns-watch-{self.resource}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Ask the loop to end and wake it from a blocking read; does not wait (see is_alive)."""
        self._stopping.set()
        self._wake.set()
        with self._lock:
            resp = self._response
        if resp is not None:
            _shutdown(resp)

    def retry_now(self) -> None:
        """Cut a backoff wait short (a reload: the credentials may have been fixed)."""
        self._wake.set()
        if self._outage is not None:
            self._outage.wake()

    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # -- the loop (worker thread) -----------------------------------------------------------
    def _run(self) -> None:
        need_list = True
        watch_errors = 0
        while not self._stopping.is_set():
            try:
                if not need_list and self._silent_too_long():
                    need_list = True
                if need_list:
                    if self._unproductive_lists:
                        self._sleep(self._relist_backoff.next())
                    self._list()
                    need_list = False
                    self._unproductive_lists += 1  # until a watch makes progress
                    self._progressed(delivered=True)
                if self._watch():
                    self._progressed()
                    watch_errors = 0
                    continue
                # ended cleanly but suspiciously fast: pause without calling it an error
                self._sleep(self._backoff.next())
            except _StoppedError:
                break
            except _ExpiredError as e:
                _log.info("{resource}: resourceVersion expired ({why}); relisting", resource=self.resource, why=e)
                if need_list:
                    self._unproductive_lists += 1  # a page of the list itself expired
                need_list = True
            except Exception as e:  # connection refused, read timeout, HTTP errors, bad JSON...
                if self._stopping.is_set():
                    break
                # a 400 to a watch refuses the resourceVersion we hold: only a list gives a new one
                if isinstance(e, _WatchError) or (self._verb == "watch" and getattr(e, "status", None) == 400):
                    watch_errors += 1
                    if watch_errors >= _RELIST_AFTER_WATCH_ERRORS:
                        need_list = True  # a fresh list is always a safe way back
                        watch_errors = 0
                if self._outage is not None and _unanswered(e) and self._outage.unreachable():
                    # the API is away, not just this resource's request: one schedule (and one
                    # log line per step) for every resource, cut short by the API's return
                    self._record_error(e, None)
                    self._outage.wait(self.resource, _describe(e), self._stopping)
                else:
                    # an overloaded apiserver (429, 503) says how long to stay away: honour it,
                    # but never wait longer than our own backoff would at its worst
                    delay = max(self._backoff.next(), min(_retry_after(e), self._backoff.cap))
                    self._record_error(e, delay)
                    self._sleep(delay)
                self._refresh_client()
        with self._lock:
            self._response = None

    def _progressed(self, delivered: bool = False) -> None:
        """Reset the backoff; ``delivered``: the server sent data just now (so it is not away).

        A watch that merely lived long is progress for the backoff, but when it ends it says
        nothing about whether the server is still there.
        """
        self._backoff.reset()
        if delivered and self._outage is not None:
            self._outage.progressed()

    def _silent_too_long(self) -> bool:
        """True if the watch has delivered nothing, not even a BOOKMARK, for over the bound.

        kubedns asks for bookmarks, which the apiserver sends about once a minute on an idle
        watch.  Silence far beyond that means a watch that cannot catch up, typically an API
        server restored from a backup: it holds older data than the resourceVersion we resume
        from, and until it gets there the watch shows nothing and the stale state is served.
        Only a list gets us onto the server's own timeline again (client-go resyncs likewise).
        """
        silence = time.monotonic() - self._last_delivery
        if not self._max_silence or silence <= self._max_silence:
            return False
        _log.warn(
            "{resource}: the watch delivered nothing, not even a BOOKMARK, for {seconds:.0f}s"
            " (bound {bound:g}s): the API server may be behind our resourceVersion"
            " {rv} (restored from a backup?); relisting",
            resource=self.resource,
            seconds=silence,
            bound=self._max_silence,
            rv=self.status.resource_version,
        )
        return True

    def _refresh_client(self) -> None:
        """Before the next attempt, pick up a changed kubeconfig (re-read on every retry)."""
        if self._source is None:
            return
        client = self._source.current()
        if client is not None and client is not self._client:
            self._client = client
            self._list_fn = list_function(client, self.resource)

    def _record_error(self, exc: Exception, delay: float | None) -> None:
        msg = _describe(exc)
        status = getattr(exc, "status", None)
        # 401/403 need an operator: say what is missing, in words a ClusterRole is written in
        if status == 403:
            group = _API_GROUPS.get(self.resource, "")
            msg += (
                f"; RBAC: kubedns's service account may not '{self._verb}' {self.resource}"
                f' (API group "{group}"); it needs list and watch on them cluster-wide'
            )
        elif status == 401:
            msg += f"; the API server rejected kubedns's credentials for '{self._verb}' {self.resource} (expired or revoked token?)"
        self.status.errors += 1
        self.status.last_error = msg
        if delay is None:
            return  # logged by the outage, once per step for every resource
        log = _log.error if status in (401, 403) else _log.warn
        log("{resource}: {error}; retrying in {delay:.1f}s", resource=self.resource, error=msg, delay=delay)

    def _sleep(self, seconds: float) -> None:
        # a retry_now() that came while we were not waiting is not carried over to this wait
        self._wake.clear()
        if not self._stopping.is_set():  # stop() sets _stopping before _wake
            self._wake.wait(seconds)

    def _call(self, **kwargs: Any) -> Any:
        """One request with ``_preload_content=False``; the response is kept for stop()."""
        if self._stopping.is_set():
            raise _StoppedError()
        self._verb = "watch" if kwargs.get("watch") else "list"
        if self._label_selector:
            kwargs["label_selector"] = self._label_selector
        try:
            resp = self._list_fn(_preload_content=False, _request_timeout=self._timeouts, **kwargs)
        except Exception as e:
            status = getattr(e, "status", None)
            if status == 410 or (status == 504 and "too large resource version" in str(e).lower()):
                raise _ExpiredError(_describe(e)) from e
            raise
        with self._lock:
            self._response = resp
        if self._stopping.is_set():  # stop() ran before we could register the response
            _shutdown(resp)
            raise _StoppedError()
        return resp

    def _done(self, resp: Any, reuse: bool) -> None:
        """Forget ``resp``; reuse its connection only if the body was read to the end."""
        with self._lock:
            self._response = None
        try:
            if reuse:
                resp.release_conn()
            else:
                resp.close()
        except Exception:
            pass

    def _list(self) -> None:
        """A full paginated list, applied page by page, then deletes of what vanished + synced.

        Memory is what bounds a list of 100k objects, so at no point is more than about one page
        held in any form: the body of a page is read, decoded, and its objects parsed *one at a
        time* (:func:`kubedns.k8s.listparse.page_records`) into slim records, no raw dict built at all; the page's records go to the reactor in one hop, and the next page is not handed
        over before the previous one is applied.  The page size adapts to the objects' size
        (about ``page_bytes`` per page, at most ``page_size`` objects), starting small.
        """
        token: str | None = None
        rv = ""
        started = time.monotonic()
        pages = 0
        count = 0
        limit = min(self._page_size, _FIRST_PAGE)
        applied: threading.Event | None = None
        while True:
            kwargs: dict[str, Any] = {"limit": limit}
            if token:
                kwargs["_continue"] = token
            resp = self._call(**kwargs)
            ok = False
            try:
                body = resp.read()
                ok = True
            finally:
                self._done(resp, reuse=ok)
            if self._stopping.is_set():
                raise _StoppedError()
            size = len(body)
            top: dict[str, Any] = {}
            batch = self._convert_page(body, top)
            n_items = len(batch)
            del body
            count += n_items
            meta = top.get("metadata") or {}
            rv = meta.get("resourceVersion") or rv
            token = meta.get("continue")
            if applied is not None:
                self._wait_applied(applied)  # at most one page in flight: bounded memory on relists
            applied = threading.Event()
            self._reactor.callFromThread(self._apply_page, batch, pages == 0, applied)
            del batch
            pages += 1
            if not token:
                break
            if n_items:
                limit = max(1, min(self._page_size, int(self._page_bytes * n_items / max(1, size))))
        self.status.resource_version = rv
        self._last_delivery = time.monotonic()
        relist = self._listed_once
        self._listed_once = True
        self._reactor.callFromThread(self._finish_list, relist, started, pages, count)
        self._wait_applied(applied)

    def _convert_page(self, body: bytes | str, top: dict[str, Any]) -> list[tuple[str, Any]]:
        return page_records(body, self._fast, self._convert_safely, top)

    def _wait_applied(self, applied: threading.Event | None) -> None:
        while applied is not None and not applied.wait(0.05):
            if self._stopping.is_set():
                raise _StoppedError()

    def _apply_page(self, batch: list[tuple[str, Any]], first: bool, applied: threading.Event) -> None:
        # reactor thread
        try:
            if first:
                # what the store holds before this list; whatever the list does not show is deleted
                # at the end.  Holding the store's own key objects costs no copy of the keys.
                self._unseen = set(self._store.keys(self.resource))
            if self._unseen:
                discard = self._unseen.discard
                for key, _ in batch:
                    discard(key)
            self._store.apply_batch(self.resource, batch)
        finally:
            applied.set()

    def _finish_list(self, relist: bool, started: float = 0.0, pages: int = 0, count: int = 0) -> None:
        # reactor thread: the pages were queued before us, so the store has them all by now
        gone, self._unseen = self._unseen, set()
        if gone:
            self._store.apply_batch(self.resource, [(key, None) for key in gone])
        self._store.mark_synced(self.resource)
        self.status.synced = True
        if relist:
            self.status.relists += 1
        _log.info(
            "{resource}: {what} {count} objects in {seconds:.2f}s ({pages} pages), {gone} deleted",
            resource=self.resource,
            what="relisted" if relist else "listed",
            count=count,
            seconds=time.monotonic() - started,
            pages=pages,
            gone=len(gone),
        )
        if self._on_listed is not None:
            try:
                self._on_listed(self.resource, relist)
            except Exception:
                _log.failure("on_listed hook failed")

    def _watch(self) -> bool:
        """One watch request until it ends.  True if it made progress (events or a long life)."""
        timeout = max(1, int(self._watch_timeout * random.uniform(1.0, 2.0)))
        started = time.monotonic()
        resp = self._call(
            watch=True,
            resource_version=self.status.resource_version or None,
            allow_watch_bookmarks=True,
            timeout_seconds=timeout,
        )
        progressed = False
        try:
            # the unfinished line, in chunks: joined once per newline, so a line of n bytes costs
            # O(n) to assemble (``buf += data`` was quadratic), and bounded by MAX_WATCH_LINE
            parts: list[bytes] = []
            size = 0
            while True:
                data = resp.read1(65536)
                if not data:
                    break
                if self._stopping.is_set():
                    raise _StoppedError()
                nl = data.rfind(b"\n")
                if nl < 0:
                    parts.append(data)
                    size += len(data)
                    if size > MAX_WATCH_LINE:
                        raise _WatchError(f"watch event over {MAX_WATCH_LINE} bytes without a newline")
                    continue
                parts.append(data[:nl])
                lines = b"".join(parts).split(b"\n")
                rest = data[nl + 1 :]
                parts, size = ([rest], len(rest)) if rest else ([], 0)
                if self._handle_lines(lines):
                    progressed = True
                    self._progressed(delivered=True)
            if self._stopping.is_set():
                raise _StoppedError()
            buf = b"".join(parts)
            if buf.strip() and self._handle_lines([buf]):
                progressed = True
        finally:
            self._done(resp, reuse=False)  # never pool a half-read stream
            if progressed or time.monotonic() - started >= _MIN_CLEAN_WATCH:
                self._unproductive_lists = 0  # the last list got a watch going
                self._relist_backoff.reset()
        return progressed or time.monotonic() - started >= _MIN_CLEAN_WATCH

    def _handle_lines(self, lines: list[bytes]) -> bool:
        """Convert the events in ``lines`` and hand them over in one hop; True if any was good."""
        events: list[tuple[str, str, Any, float]] = []
        progressed = False
        try:
            for line in lines:
                if not line.strip():
                    continue
                fast = self._fast_event(line)
                if fast is not None:
                    fast_type, rv, key, rec, t0 = fast
                    if rv:
                        self.status.resource_version = rv
                    progressed = True
                    self._last_delivery = time.monotonic()
                    if key is not None:
                        events.append((fast_type, key, rec, t0))
                    continue
                try:
                    ev = json.loads(line)
                except ValueError as e:
                    raise _WatchError(f"malformed watch event: {e}") from e
                if not isinstance(ev, dict):
                    raise _WatchError(f"malformed watch event: a JSON {type(ev).__name__}, not an object")
                etype = ev.get("type")
                obj = ev.get("object") or {}
                if not isinstance(obj, dict):
                    raise _WatchError(f"malformed watch event: {etype} of a JSON {type(obj).__name__}")
                if etype == "ERROR":
                    self._raise_error(obj)
                meta = obj.get("metadata")
                if not isinstance(meta, dict):
                    meta = {}
                rv = meta.get("resourceVersion")
                if rv:
                    self.status.resource_version = rv
                progressed = True
                self._last_delivery = time.monotonic()
                if etype == "BOOKMARK":
                    continue
                if etype not in ("ADDED", "MODIFIED", "DELETED"):
                    _log.debug("{resource}: ignoring watch event {type!r}", resource=self.resource, type=etype)
                    continue
                if etype == "DELETED":
                    # only the key matters: a delete must not be lost because the object's last
                    # state (kept in the store as its last good version) does not convert
                    key = self._key_of(meta)
                    if key is None:
                        self._convert_safely(obj)  # logged and counted as malformed
                        continue
                    events.append((etype, key, None, _trigger_time(meta)))
                    continue
                converted = self._convert_safely(obj)
                if converted is None:
                    continue
                key, rec = converted
                events.append((etype, key, rec, _trigger_time(meta)))
        finally:
            if events:
                self._reactor.callFromThread(self._apply_events, events)
        return progressed

    def _fast_event(self, line: bytes) -> tuple[str, str | None, str | None, Any, float] | None:
        """``(type, resourceVersion, key, record, trigger time)`` of a plain event; None: ask json.

        Decoded by msgspec into the kind's struct (only the fields DNS reads); ``key`` is None
        for a BOOKMARK.  ERROR events, unknown types, nameless objects and anything the struct or
        its converter will not take as it is go the :mod:`json` way, which judges them as ever.
        """
        try:
            ev = self._event_decoder.decode(line)
        except msgspec.MsgspecError:
            return None
        etype, obj = ev.type, ev.object
        if obj is None or etype not in ("ADDED", "MODIFIED", "DELETED", "BOOKMARK"):
            return None
        meta = obj.metadata
        rv = meta.resourceVersion if meta is not None else None
        if etype == "BOOKMARK":
            return etype, rv, None, None, 0.0
        if meta is None or not meta.name:
            return None
        ann = meta.annotations
        t0 = _trigger_time({"annotations": {_TRIGGER_ANNOTATION: ann.trigger}} if ann is not None else {})
        if etype == "DELETED":
            key = meta.name if self.resource == "namespaces" else f"{meta.namespace or ''}/{meta.name}"
            return etype, rv, key, None, t0
        try:
            key, rec = self._fast.convert(obj)
        except Defer:
            return None
        return etype, rv, key, rec, t0

    def _key_of(self, meta: dict[str, Any]) -> str | None:
        """The store key of an object from its metadata, as the converters build it; None if nameless."""
        name = meta.get("name")
        if not name or not isinstance(name, str):
            return None
        if self.resource == "namespaces":
            return name
        ns = meta.get("namespace") or ""
        return f"{ns}/{name}" if isinstance(ns, str) else None

    def _convert_safely(self, raw: dict[str, Any]) -> tuple[str, Any] | None:
        """The converter's ``(key, record)``, or None (logged, counted) for an object it chokes on.

        One malformed object must not stop a whole resource from syncing.
        """
        try:
            return self._convert(raw)
        except Exception as e:
            meta = raw.get("metadata") if isinstance(raw, dict) else None
            name = f"{meta.get('namespace') or ''}/{meta.get('name') or ''}" if isinstance(meta, dict) else "?"
            self.status.errors += 1
            self.status.last_error = f"skipped malformed object {name}: {type(e).__name__}: {e}"
            _log.warn("{resource}: {error}", resource=self.resource, error=self.status.last_error)
            return None

    def _raise_error(self, status: dict[str, Any]) -> None:
        code = status.get("code")
        reason = status.get("reason") or ""
        msg = f"watch ERROR {code} {reason}: {status.get('message') or ''}".strip()
        if code == 410 or reason in ("Expired", "Gone"):
            raise _ExpiredError(msg)
        if "too large resource version" in (status.get("message") or "").lower():
            raise _ExpiredError(msg)  # a lagging apiserver behind the one we listed from
        raise _WatchError(msg)

    def _apply_events(self, events: list[tuple[str, str, Any, float]]) -> None:
        # reactor thread
        store, kind, hook = self._store, self.resource, self._on_event
        for etype, key, rec, t0 in events:
            store.upsert(kind, key, rec)
            if hook is not None:
                try:
                    hook(kind, etype, max(0.0, time.time() - t0), rec)
                except Exception:
                    _log.failure("on_event hook failed")


def _event_decoder(resource: str) -> msgspec.json.Decoder:
    """A decoder of one watch line into ``type`` and the kind's decode-only struct."""
    struct = FAST_KINDS[resource].struct
    event = msgspec.defstruct(f"{struct.__name__}Event", [("type", str | None, None), ("object", struct | None, None)])
    return msgspec.json.Decoder(event)


def _trigger_time(meta: dict[str, Any]) -> float:
    """When the change began: the EndpointSlice trigger annotation, else now (receipt)."""
    ann = meta.get("annotations")
    if isinstance(ann, dict):
        value = ann.get(_TRIGGER_ANNOTATION)
        if value:
            try:
                return datetime.fromisoformat(value).timestamp()
            except ValueError:
                pass
    return time.time()


def _shutdown(resp: Any) -> None:
    """Wake a thread blocked reading ``resp`` by shutting its socket down.

    ``close()`` from another thread is no good: it neither wakes a blocked ``recv`` on Linux nor
    returns before the reader lets go of the buffer lock, so it could block the reactor for a
    whole read timeout.  urllib3 >= 2.3 has ``HTTPResponse.shutdown()`` for exactly this; on older
    versions dig the socket out of http.client.
    """
    try:
        resp.shutdown()
        return
    except ValueError:
        return  # already closed or released: nobody is blocked on it
    except Exception:
        pass
    try:
        raw = resp._fp.fp.raw  # http.client.HTTPResponse → BufferedReader → SocketIO
        raw._sock.shutdown(socket.SHUT_RDWR)
    except Exception:
        pass


def _retry_after(exc: BaseException) -> float:
    """The seconds an error response asked us to wait (``Retry-After``: seconds or an HTTP date), or 0."""
    headers = getattr(exc, "headers", None)
    try:
        value = headers.get("Retry-After") if headers else None
    except Exception:
        return 0.0
    if not value:
        return 0.0
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError, IndexError, OverflowError):
            return 0.0
    return seconds if math.isfinite(seconds) and seconds > 0 else 0.0


def _unanswered(exc: BaseException) -> bool:
    """True for a failure with no answer from the server: refused, reset, timed out, cut off."""
    return getattr(exc, "status", None) is None and not isinstance(exc, (_WatchError, ValueError))


def _describe(exc: BaseException) -> str:
    status = getattr(exc, "status", None)
    if status is not None and hasattr(exc, "reason"):
        body = getattr(exc, "body", None) or ""
        detail = ""
        if body:
            try:
                detail = json.loads(body).get("message") or ""
            except (ValueError, AttributeError, TypeError):
                detail = str(body)[:200]
        return f"HTTP {status} {exc.reason}" + (f": {detail}" if detail else "")
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"
