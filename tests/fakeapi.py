"""A wire-level fake Kubernetes API server for tests.

kubedns talks to the cluster through the official ``kubernetes`` python
client (list + watch of Services, EndpointSlices, Pods and Namespaces).  Mocking
the client object would test our assumptions about the client rather than the
client itself, so the tests instead point the real client at this fake: a
small HTTP/1.1 server on ``127.0.0.1`` (ephemeral port) that speaks the
apiserver's JSON wire format closely enough for list/watch based code:

* LIST with a single, cluster-wide ``resourceVersion`` counter, ``limit`` /
  ``continue`` pagination over a consistent snapshot, label and field
  selectors (equality and set based), and ``410 Expired`` for continue tokens
  older than the last :meth:`FakeKubeAPI.compact`;
* WATCH as a chunked JSON-lines stream replaying the history after the
  requested ``resourceVersion`` and then live events, ``BOOKMARK`` events
  (periodic and on demand), ``timeoutSeconds``, and the ``ERROR``/``410``
  event a real apiserver sends for a too old ``resourceVersion``;
* fault injection: dropped or reset watch connections, hung watches, withheld
  or failing requests, and a server that really goes away on :meth:`stop`;
  scripted faults for the next matching requests (:meth:`FakeKubeAPI.fail_next`:
  401/403/429/5xx with ``Retry-After``, a stalled or truncated LIST body, a
  watch answered with one ``ERROR`` event), raw lines written into open watch
  streams (:meth:`FakeKubeAPI.inject_watch_lines`) or recorded in the history
  so that every re-watch replays them (:meth:`FakeKubeAPI.poison_history`);
  bearer-token authentication (:attr:`FakeKubeAPI.token`, 401 without it), a restart on the same
  port after :meth:`FakeKubeAPI.stop` (an API outage), and a restore from a backup
  (:meth:`FakeKubeAPI.restore`: older objects at an older resourceVersion).

It runs in its own threads (``http.server.ThreadingHTTPServer``), independent
of the Twisted reactor, so it can be used from synchronous tests, trial tests
and reactor threads alike.  All mutation helpers are thread-safe.

Fidelity notes: items of a LIST response carry no ``kind``/``apiVersion``
(like the real apiserver's JSON), watch event objects do; a DELETED event
carries the last state of the object with the resourceVersion of the
deletion; objects are returned sorted by (namespace, name), as etcd does;
a BOOKMARK never carries a resourceVersion older than the one its watch
started from, so a watch from a resourceVersion the server has not reached
(after a restore) sees nothing at all, events or bookmarks, until it gets there.
"""

from __future__ import annotations

import base64
import binascii
import copy
import json
import os
import queue
import re
import select
import socket
import ssl
import struct
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self
from urllib.parse import parse_qs, urlsplit

__all__ = [
    "RESOURCES",
    "FakeKubeAPI",
    "Fault",
    "RequestRecord",
    "ResourceInfo",
    "status",
]

Obj = dict[str, Any]


@dataclass(frozen=True)
class ResourceInfo:
    """Static description of a served resource type."""

    resource: str
    kind: str
    api_version: str
    namespaced: bool

    @property
    def list_kind(self) -> str:
        return self.kind + "List"

    @property
    def prefix(self) -> str:
        """URL prefix of the API group/version serving this resource."""
        if "/" in self.api_version:
            return "/apis/" + self.api_version
        return "/api/" + self.api_version


RESOURCES: dict[str, ResourceInfo] = {
    info.resource: info
    for info in (
        ResourceInfo("services", "Service", "v1", True),
        ResourceInfo("namespaces", "Namespace", "v1", False),
        ResourceInfo("pods", "Pod", "v1", True),
        ResourceInfo("endpointslices", "EndpointSlice", "discovery.k8s.io/v1", True),
    )
}
_KIND_TO_RESOURCE: dict[str, str] = {info.kind: name for name, info in RESOURCES.items()}

_Key = tuple[str, str, str]  # (resource, namespace or "", name)
_Predicate = Callable[[Mapping[str, Any]], bool]


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def status(code: int, reason: str, message: str, **extra: Any) -> Obj:
    """A ``metav1.Status`` failure object as the apiserver returns it."""
    body: Obj = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    body.update(extra)
    return body


# --------------------------------------------------------------------------
# Selectors


_LABEL_REQ = re.compile(
    r"""^\s*(?:
        (?P<notexists>!)\s*(?P<nkey>[A-Za-z0-9./_-]+)
      | (?P<key>[A-Za-z0-9./_-]+)\s*
        (?:(?P<op>==|=|!=)\s*(?P<value>[A-Za-z0-9._-]*)
          |\s(?P<setop>in|notin)\s*\((?P<values>[^)]*)\)
        )?
    )\s*$""",
    re.VERBOSE,
)


def _parse_label_selector(selector: str) -> _Predicate:
    """Compile a label selector (``a=b,c!=d,e,!f,g in (x,y),h notin (z)``)."""
    checks: list[_Predicate] = []
    for part in re.split(r",(?![^()]*\))", selector):
        if not part.strip():
            continue
        m = _LABEL_REQ.match(part)
        if m is None:
            raise ValueError(f"unable to parse requirement: {part!r}")
        if m["notexists"]:
            nkey = m["nkey"]
            checks.append(lambda labels, k=nkey: k not in labels)
            continue
        key = m["key"]
        if m["op"]:
            value = m["value"]
            if m["op"] == "!=":
                checks.append(lambda labels, k=key, v=value: labels.get(k) != v)
            else:
                checks.append(lambda labels, k=key, v=value: labels.get(k) == v)
        elif m["setop"]:
            values = frozenset(v.strip() for v in m["values"].split(",") if v.strip())
            if m["setop"] == "in":
                checks.append(lambda labels, k=key, vs=values: labels.get(k) in vs)
            else:
                checks.append(lambda labels, k=key, vs=values: labels.get(k) not in vs)
        else:
            checks.append(lambda labels, k=key: k in labels)
    return lambda labels: all(check(labels) for check in checks)


def _lookup(obj: Mapping[str, Any], path: str) -> str:
    cur: Any = obj
    for part in path.split("."):
        if not isinstance(cur, Mapping) or part not in cur:
            return ""
        cur = cur[part]
    if isinstance(cur, bool):
        return "true" if cur else "false"
    return "" if cur is None else str(cur)


def _parse_field_selector(selector: str) -> _Predicate:
    """Compile a field selector (``metadata.name=x,status.phase!=Failed``)."""
    checks: list[_Predicate] = []
    for part in selector.split(","):
        if not part.strip():
            continue
        m = re.match(r"^\s*([A-Za-z0-9._]+)\s*(==|=|!=)\s*(.*?)\s*$", part)
        if m is None:
            raise ValueError(f"invalid field selector: {part!r}")
        path, op, value = m.groups()
        if op == "!=":
            checks.append(lambda o, p=path, v=value: _lookup(o, p) != v)
        else:
            checks.append(lambda o, p=path, v=value: _lookup(o, p) == v)
    return lambda obj: all(check(obj) for check in checks)


def _make_filter(namespace: str | None, params: Mapping[str, str]) -> _Predicate:
    label_pred = _parse_label_selector(params.get("labelSelector", ""))
    field_pred = _parse_field_selector(params.get("fieldSelector", ""))

    def matches(obj: Mapping[str, Any]) -> bool:
        meta = obj.get("metadata") or {}
        if namespace is not None and meta.get("namespace") != namespace:
            return False
        return label_pred(meta.get("labels") or {}) and field_pred(obj)

    return matches


# --------------------------------------------------------------------------
# Internal bookkeeping types


@dataclass(frozen=True)
class _Event:
    rv: int
    resource: str
    type: str  # ADDED | MODIFIED | DELETED
    obj: Obj
    old: Obj | None


@dataclass(frozen=True)
class _Bookmark:
    rv: int


@dataclass(frozen=True)
class _Control:
    action: str  # "drop" | "reset" | "stop"


@dataclass(frozen=True)
class _Raw:
    """Bytes written into a watch stream as they are (a newline added if missing and ``newline``)."""

    data: bytes
    newline: bool = True


@dataclass(frozen=True)
class _RawEvent:
    """A raw line in the history: replayed to every watch from an older resourceVersion."""

    rv: int
    resource: str
    data: bytes


_QueueItem = _Event | _RawEvent | _Bookmark | _Control | _Raw

_REASONS = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    410: "Expired",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
    504: "Timeout",
}


@dataclass(eq=False)
class Fault:
    """A scripted answer for the next matching requests (see :meth:`FakeKubeAPI.fail_next`)."""

    verb: str  # list | watch
    resource: str | None  # None: any resource
    code: int
    action: str  # status | stall | truncate | error-event
    times: int | None  # None: until cleared
    reason: str
    message: str
    headers: dict[str, str]
    body: bytes | None
    content_type: str
    when: Callable[[Mapping[str, str]], bool] | None
    hits: int = 0

    def matches(self, verb: str, resource: str, params: Mapping[str, str]) -> bool:
        if self.verb != verb or (self.resource is not None and self.resource != resource):
            return False
        if self.times is not None and self.hits >= self.times:
            return False
        return self.when is None or bool(self.when(params))


@dataclass(eq=False)
class _Watcher:
    resource: str
    matches: _Predicate
    min_rv: int
    allow_bookmarks: bool
    queue: queue.Queue[_QueueItem] = field(default_factory=queue.Queue)


@dataclass(frozen=True)
class RequestRecord:
    """One HTTP request seen by the fake (see :attr:`FakeKubeAPI.request_log`)."""

    verb: str  # list | watch | get | discovery | other
    resource: str  # resource name, or the path for discovery/other
    namespace: str | None
    path: str
    params: Mapping[str, str]
    time: float


def _translate(w: _Watcher, ev: _Event | _RawEvent) -> tuple[str, Any] | None:
    """What watcher ``w`` should see for ``ev`` (selector transitions included)."""
    if ev.resource != w.resource or ev.rv <= w.min_rv:
        return None
    if isinstance(ev, _RawEvent):
        return ("RAW", ev.data)
    new_ok = w.matches(ev.obj)
    if ev.type != "MODIFIED":
        return (ev.type, ev.obj) if new_ok else None
    old_ok = ev.old is not None and w.matches(ev.old)
    if new_ok:
        return ("MODIFIED" if old_ok else "ADDED", ev.obj)
    if old_ok and ev.old is not None:
        gone = copy.deepcopy(ev.old)
        gone["metadata"]["resourceVersion"] = str(ev.rv)
        return ("DELETED", gone)
    return None


def _strip_type_meta(obj: Obj) -> Obj:
    return {k: v for k, v in obj.items() if k not in ("kind", "apiVersion")}


def _encode_continue(rv: int, start: str, snapshot: int) -> str:
    raw = json.dumps({"v": "meta.k8s.io/v1", "rv": rv, "start": start, "snap": snapshot})
    return base64.urlsafe_b64encode(raw.encode()).decode()


def _decode_continue(token: str) -> tuple[int, str, int]:
    try:
        data = json.loads(base64.urlsafe_b64decode(token.encode()))
        return int(data["rv"]), str(data["start"]), int(data["snap"])
    except (binascii.Error, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"invalid continue token: {e}") from e


def _truthy(value: str | None) -> bool:
    return value is not None and value.lower() in ("true", "1")


# --------------------------------------------------------------------------
# HTTP layer


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    fake: FakeKubeAPI

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError) or (isinstance(exc, ValueError) and "closed file" in str(exc)):
            return  # client went away / we dropped the connection on purpose
        if exc is not None:
            self.fake.errors.append(exc)
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "fake-kube-apiserver/1.0"
    server: _Server

    @property
    def fake(self) -> FakeKubeAPI:
        return self.server.fake

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def setup(self) -> None:
        if self.fake.tls is not None:  # the handshake on this connection's own thread
            try:
                self.request = self.fake.tls.wrap_socket(self.request, server_side=True)
            except OSError as e:  # ssl.SSLError included: no (valid) client certificate...
                self.fake.tls_failures.append(str(e))
                raise
        super().setup()
        self.fake._register_connection(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass
        finally:
            self.fake._unregister_connection(self.connection)

    # -- plumbing --------------------------------------------------------

    def _send_json(
        self, code: int, body: Any, reason: str | None = None, headers: Mapping[str, str] | None = None
    ) -> None:
        data = json.dumps(body, separators=(",", ":")).encode()
        self.send_response(code, reason)
        self.send_header("Content-Type", "application/json")
        self.send_header("Cache-Control", "no-cache, private")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _send_status(self, code: int, reason: str, message: str, **extra: Any) -> None:
        self._send_json(code, status(code, reason, message, **extra))

    def _send_text(self, code: int, text: str) -> None:
        data = text.encode()
        self.send_response(code)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _close_abruptly(self, reset: bool = False) -> None:
        """Kill the TCP connection without completing the HTTP response."""
        self.close_connection = True
        try:
            if reset:
                self.connection.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                )
                self.connection.close()  # RST instead of FIN
            else:
                self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _start_chunked(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Cache-Control", "no-cache, private")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.wfile.flush()

    def _write_chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

    def _write_event(self, type_: str, obj: Obj) -> None:
        if type_ == "RAW":
            self._write_raw(obj)
            return
        line = json.dumps({"type": type_, "object": obj}, separators=(",", ":"))
        self._write_chunk(line.encode() + b"\n")

    def _write_raw(self, data: bytes) -> None:
        self._write_chunk(data if data.endswith(b"\n") else data + b"\n")

    def _end_chunked(self) -> None:
        self.wfile.write(b"0\r\n\r\n")

    def _client_gone(self) -> bool:
        """True if the peer closed its side (an HTTP/1.1 client sends nothing
        else while it waits for a response, so readability means EOF)."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            if not readable:
                return False
            return self.connection.recv(1, socket.MSG_PEEK) == b""
        except (OSError, ValueError):
            return True

    # -- verbs -------------------------------------------------------------

    def do_GET(self) -> None:
        fake = self.fake
        url = urlsplit(self.path)
        params = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        route = _route(url.path)
        if route is None or route[0] == "":
            verb, resource, ns, name = "discovery", url.path, None, None
        else:
            resource, ns, name = route
            if name is not None:
                verb = "get"
            elif _truthy(params.get("watch")):
                verb = "watch"
            else:
                verb = "list"
        fake._record(verb, resource, ns, url.path, params)

        if fake.token is not None and self.headers.get("Authorization") != f"Bearer {fake.token}":
            self._send_status(401, "Unauthorized", "Unauthorized")
            return

        fault = fake._take_fault(verb, resource, params)
        if fault is not None:
            self._serve_fault(fault, resource, params)
            return

        if fake.fail_requests:
            if fake.fail_status is None:
                self._close_abruptly()
            else:
                self._send_status(fake.fail_status, "InternalError", "fake apiserver: failing on purpose")
            return

        if verb == "discovery":
            self._discovery(url.path)
        elif verb == "get":
            assert name is not None
            self._get(resource, ns, name)
        elif verb == "list":
            self._list(resource, ns, params)
        else:
            self._watch(resource, ns, params)

    def _serve_fault(self, fault: Fault, resource: str, params: Mapping[str, str]) -> None:
        if fault.action == "status":
            if fault.body is not None:
                self.send_response(fault.code)
                self.send_header("Content-Type", fault.content_type)
                self.send_header("Content-Length", str(len(fault.body)))
                for k, v in fault.headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(fault.body)
            else:
                self._send_json(fault.code, status(fault.code, fault.reason, fault.message), headers=fault.headers)
        elif fault.action == "error-event":
            self._start_chunked()
            self._write_event("ERROR", status(fault.code, fault.reason, fault.message))
            self._end_chunked()
        elif fault.action in ("stall", "truncate"):
            info = RESOURCES[resource]
            data = fault.body or json.dumps(
                {"kind": info.list_kind, "apiVersion": info.api_version, "metadata": {"resourceVersion": "1"},
                 "items": [{"metadata": {"name": f"x{i}"}} for i in range(100)]}
            ).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            if fault.action == "stall":
                while not self.fake._stopping.is_set() and not self._client_gone():
                    time.sleep(0.05)
            self._close_abruptly()
        else:  # pragma: no cover - fail_next validates
            raise AssertionError(fault.action)

    def _not_allowed(self) -> None:
        self.fake._record("other", self.path, None, self.path, {})
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        self._send_status(405, "MethodNotAllowed", "the fake apiserver is read-only over HTTP")

    do_POST = do_PUT = do_PATCH = do_DELETE = _not_allowed  # noqa: N815 - http.server names

    def _discovery(self, path: str) -> None:
        fake = self.fake
        path = path.rstrip("/") or "/"
        if path in ("/healthz", "/readyz", "/livez"):
            self._send_text(200, "ok")
        elif path == "/version":
            self._send_json(200, fake.version_info)
        elif path == "/api":
            self._send_json(
                200,
                {
                    "kind": "APIVersions",
                    "versions": ["v1"],
                    "serverAddressByClientCIDRs": [
                        {"clientCIDR": "0.0.0.0/0", "serverAddress": fake.url.split("//", 1)[1]}
                    ],
                },
            )
        elif path == "/apis":
            groups = sorted({i.api_version for i in RESOURCES.values() if "/" in i.api_version})
            self._send_json(
                200,
                {
                    "kind": "APIGroupList",
                    "apiVersion": "v1",
                    "groups": [
                        {
                            "name": gv.split("/")[0],
                            "versions": [{"groupVersion": gv, "version": gv.split("/")[1]}],
                            "preferredVersion": {"groupVersion": gv, "version": gv.split("/")[1]},
                        }
                        for gv in groups
                    ],
                },
            )
        else:
            infos = [i for i in RESOURCES.values() if i.prefix == path]
            if not infos:
                self._send_status(404, "NotFound", "the server could not find the requested resource")
                return
            self._send_json(
                200,
                {
                    "kind": "APIResourceList",
                    "apiVersion": "v1",
                    "groupVersion": infos[0].api_version,
                    "resources": [
                        {
                            "name": i.resource,
                            "singularName": i.kind.lower(),
                            "namespaced": i.namespaced,
                            "kind": i.kind,
                            "verbs": ["get", "list", "watch"],
                        }
                        for i in infos
                    ],
                },
            )

    def _get(self, resource: str, ns: str | None, name: str) -> None:
        obj = self.fake.get(resource, ns, name)
        if obj is None:
            info = RESOURCES[resource]
            self._send_status(
                404,
                "NotFound",
                f'{resource} "{name}" not found',
                details={"name": name, "group": info.api_version.rpartition("/")[0], "kind": resource},
            )
        else:
            self._send_json(200, obj)

    def _list(self, resource: str, ns: str | None, params: Mapping[str, str]) -> None:
        fake = self.fake
        if fake.withhold_lists:
            if fake.withhold_lists_status is not None:
                self._send_status(
                    fake.withhold_lists_status, "ServiceUnavailable", "fake apiserver: lists withheld"
                )
                return
            if not fake._wait_lists_released():
                self._close_abruptly()  # stop() while withheld
                return
        info = RESOURCES[resource]
        try:
            matches = _make_filter(ns, params)
            limit = int(params.get("limit") or 0)
            token = params.get("continue") or ""
            cont = _decode_continue(token) if token else None
        except ValueError as e:
            self._send_status(400, "BadRequest", str(e))
            return
        try:
            page = fake._list_page(resource, matches, limit, cont)
        except _ExpiredError as e:
            self._send_status(410, "Expired", str(e))
            return
        items, list_rv, next_token, remaining = page
        meta: Obj = {"resourceVersion": str(list_rv)}
        if next_token:
            meta["continue"] = next_token
            meta["remainingItemCount"] = remaining
        self._send_json(
            200,
            {
                "kind": info.list_kind,
                "apiVersion": info.api_version,
                "metadata": meta,
                "items": [_strip_type_meta(o) for o in items],
            },
        )

    def _watch(self, resource: str, ns: str | None, params: Mapping[str, str]) -> None:
        fake = self.fake
        info = RESOURCES[resource]
        try:
            matches = _make_filter(ns, params)
            rv_param = params.get("resourceVersion") or ""
            requested = int(rv_param) if rv_param else 0
            timeout_s = params.get("timeoutSeconds")
            # like the apiserver, a missing or zero timeoutSeconds means "server default"
            timeout = float(timeout_s) if timeout_s and float(timeout_s) > 0 else fake.default_watch_timeout
        except ValueError as e:
            self._send_status(400, "BadRequest", str(e))
            return
        allow_bookmarks = _truthy(params.get("allowWatchBookmarks"))
        send_initial = params.get("sendInitialEvents")
        initial_state = (rv_param in ("", "0")) if send_initial is None else _truthy(send_initial)

        registered = fake._register_watcher(resource, matches, requested, allow_bookmarks, initial_state)
        if registered is None:  # stop() in progress
            self._close_abruptly()
            return
        if isinstance(registered, _ExpiredError):
            if fake.expired_watch_as_http_status:
                self._send_status(410, "Expired", str(registered))
            else:
                self._start_chunked()
                self._write_event("ERROR", status(410, "Expired", str(registered)))
                self._end_chunked()
            return
        watcher, replay, start_rv = registered
        try:
            self._serve_watch(info, watcher, replay, start_rv, timeout, _truthy(send_initial) and allow_bookmarks)
        finally:
            fake._unregister_watcher(watcher)

    def _serve_watch(
        self,
        info: ResourceInfo,
        w: _Watcher,
        replay: list[tuple[str, Obj]],
        start_rv: int,
        timeout: float | None,
        initial_end_bookmark: bool,
    ) -> None:
        fake = self.fake
        self._start_chunked()
        hang = fake.hang_watches
        if not hang:
            for type_, obj in replay:
                self._write_event(type_, obj)
            if initial_end_bookmark:
                bm = self._bookmark(info, start_rv)
                bm["metadata"]["annotations"] = {"k8s.io/initial-events-end": "true"}
                self._write_event("BOOKMARK", bm)
        now = time.monotonic()
        deadline = None if timeout is None else now + timeout
        interval = fake.bookmark_interval if w.allow_bookmarks else None
        next_bookmark = None if interval is None else now + interval
        while True:
            now = time.monotonic()
            wait = 0.2  # poll for client disconnects
            if deadline is not None and not hang:
                if now >= deadline:
                    self._end_chunked()
                    return
                wait = min(wait, deadline - now)
            if next_bookmark is not None and not hang:
                if now >= next_bookmark:
                    rv = fake._bookmark_rv(w)
                    if rv is not None:
                        self._write_event("BOOKMARK", self._bookmark(info, rv))
                    next_bookmark = now + (interval or 0)
                    continue
                wait = min(wait, next_bookmark - now)
            try:
                item = w.queue.get(timeout=max(wait, 0.001))
            except queue.Empty:
                if self._client_gone():
                    self.close_connection = True
                    return
                continue
            if isinstance(item, _Raw):
                if item.newline:
                    self._write_raw(item.data)
                else:
                    self._write_chunk(item.data)
                continue
            if isinstance(item, _Control):
                if item.action == "stop":
                    self._close_abruptly()
                else:
                    self._close_abruptly(reset=item.action == "reset")
                return
            if hang:
                continue
            if isinstance(item, _Bookmark):
                if w.allow_bookmarks and item.rv >= w.min_rv:
                    self._write_event("BOOKMARK", self._bookmark(info, item.rv))
                continue
            translated = _translate(w, item)
            if translated is not None:
                self._write_event(*translated)

    @staticmethod
    def _bookmark(info: ResourceInfo, rv: int) -> Obj:
        return {"kind": info.kind, "apiVersion": info.api_version, "metadata": {"resourceVersion": str(rv)}}


def _route(path: str) -> tuple[str, str | None, str | None] | None:
    """Map a URL path to (resource, namespace, name).

    Returns ``("", None, None)`` for a group/version discovery path and None
    for anything unknown (served as discovery → 404).
    """
    parts = [p for p in path.split("/") if p]
    if parts[:2] == ["api", "v1"]:
        group_version, rest = "v1", parts[2:]
    elif len(parts) >= 3 and parts[0] == "apis":
        group_version, rest = f"{parts[1]}/{parts[2]}", parts[3:]
    else:
        return None
    if not rest:
        return ("", None, None)
    ns: str | None = None
    name: str | None = None
    if rest[0] == "namespaces" and len(rest) in (3, 4):
        ns, resource = rest[1], rest[2]
        name = rest[3] if len(rest) == 4 else None
    elif len(rest) in (1, 2):
        resource = rest[0]
        name = rest[1] if len(rest) == 2 else None
    else:
        return None
    info = RESOURCES.get(resource)
    if info is None or info.api_version != group_version:
        return None
    if ns is not None and not info.namespaced:
        return None
    if ns is None and name is not None and info.namespaced:
        return None
    return (resource, ns, name)


class _ExpiredError(Exception):
    pass


# --------------------------------------------------------------------------
# The fake


class FakeKubeAPI:
    """A fake kube-apiserver on ``http://127.0.0.1:<ephemeral port>``.

    Usage::

        with FakeKubeAPI() as api:
            api.load([kubeobj.service("web", "default", cluster_ip="10.96.0.10")])
            kubeobj.kubeconfig(tmp_path / "kubeconfig", api.url)
            ...

    Fault injection knobs (plain attributes, flip them at any time):

    ``fail_requests``
        every request is answered with ``fail_status`` (default 500, a
        Status body), or, if ``fail_status`` is None, the connection is
        closed without any response.
    ``withhold_lists``
        LIST requests block until it is set back to False (or answer
        ``withhold_lists_status`` at once if that is not None, e.g. 503).
    ``hang_watches``
        new watches get their response headers and then nothing, ever
        (until :meth:`drop_watches` or :meth:`stop`).
    ``expired_watch_as_http_status``
        answer a watch from a compacted resourceVersion with an HTTP 410
        instead of the default HTTP 200 + ``ERROR`` event stream.
    ``token``
        a bearer token every request must carry (None: no authentication).

    :meth:`stop` then :meth:`start` (with ``port=api.port``) is an outage: the
    objects, history and resourceVersion survive it, and changes made while it
    is stopped are replayed to watches that resume from before them.
    """

    def __init__(
        self,
        *,
        bookmark_interval: float | None = None,
        default_watch_timeout: float | None = None,
        start_resource_version: int = 1000,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        #: Seconds between periodic BOOKMARKs on watches that allow them (None: only on demand).
        self.bookmark_interval = bookmark_interval
        #: Watch duration when the client gives no ``timeoutSeconds`` (None: forever).
        self.default_watch_timeout = default_watch_timeout
        self.fail_requests = False
        self.fail_status: int | None = 500
        self.hang_watches = False
        self.withhold_lists_status: int | None = None
        self.expired_watch_as_http_status = False
        #: If set, every request must carry ``Authorization: Bearer <token>`` (else 401).
        self.token: str | None = None
        #: If set, HTTPS with this server context (``verify_mode = CERT_REQUIRED`` checks client
        #: certificates, as an API server does for ``tls CERT KEY CACERT``); the url is https://.
        self.tls = tls
        #: Handshakes that failed (the error text), e.g. a client certificate of another CA.
        self.tls_failures: list[str] = []
        self.version_info: Obj = {
            "major": "1",
            "minor": "31",
            "gitVersion": "v1.31.0-fake",
            "gitCommit": "0" * 40,
            "gitTreeState": "clean",
            "buildDate": "2024-08-13T00:00:00Z",
            "goVersion": "go1.22.5",
            "compiler": "gc",
            "platform": "linux/amd64",
        }
        #: Requests seen, counted by (verb, resource); verb is list/watch/get/discovery/other.
        self.requests: Counter[tuple[str, str]] = Counter()
        self.request_log: list[RequestRecord] = []
        #: Unexpected exceptions raised in handler threads (should stay empty).
        self.errors: list[BaseException] = []

        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._rv = start_resource_version
        self._compacted_rv = start_resource_version
        self._store: dict[_Key, Obj] = {}
        self._history: list[_Event | _RawEvent] = []
        self._faults: list[Fault] = []
        self._snapshots: dict[int, tuple[int, list[Obj]]] = {}
        self._next_snapshot = 1
        self._watchers: list[_Watcher] = []
        self._connections: dict[socket.socket, threading.Thread] = {}
        self._lists_released = threading.Event()
        self._lists_released.set()
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._url: str | None = None

    # -- lifecycle -----------------------------------------------------------

    def start(self, port: int = 0) -> Self:
        """Bind 127.0.0.1:``port`` (0: an ephemeral one) and serve in a background thread.

        After :meth:`stop` it may be started again, with ``port=api.port`` at the same URL.
        """
        if self._server is not None:
            raise RuntimeError("already started")
        self._stopping.clear()
        server = _Server(("127.0.0.1", port), _Handler)
        server.fake = self
        self._server = server
        host, port = server.server_address[:2]
        self._url = f"{'https' if self.tls is not None else 'http'}://{host}:{port}"
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="fakeapi-serve", daemon=True
        )
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Close the listening socket and every connection; wait for handler threads."""
        server = self._server
        if server is None or self._stopping.is_set():
            return
        with self._lock:
            self._stopping.set()
            for w in self._watchers:
                w.queue.put(_Control("stop"))
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout)
        with self._lock:
            conns = dict(self._connections)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        deadline = time.monotonic() + timeout
        for thread in conns.values():
            if thread is not threading.current_thread():
                thread.join(max(0.0, deadline - time.monotonic()))
        self._server = None  # may be started again (an outage)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` (only valid after :meth:`start`)."""
        if self._url is None:
            raise RuntimeError("FakeKubeAPI not started")
        return self._url

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    # -- fault injection -----------------------------------------------------

    @property
    def withhold_lists(self) -> bool:
        return not self._lists_released.is_set()

    @withhold_lists.setter
    def withhold_lists(self, value: bool) -> None:
        if value:
            self._lists_released.clear()
        else:
            self._lists_released.set()

    def drop_watches(self, resource: str | None = None, *, reset: bool = False, timeout: float = 5.0) -> int:
        """Abruptly close open watch connections (no terminating chunk).

        With ``reset=True`` the connection is reset (RST) instead of closed
        (FIN).  Waits until the handlers have let go of the connections and
        returns how many watches were dropped.
        """
        action = "reset" if reset else "drop"
        with self._cond:
            victims = [w for w in self._watchers if resource is None or w.resource == resource]
            for w in victims:
                w.queue.put(_Control(action))
            deadline = time.monotonic() + timeout
            while any(w in self._watchers for w in victims):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
        return len(victims)

    def send_bookmark(self, resource: str | None = None) -> int:
        """Send a BOOKMARK (current global rv) to watches that allow bookmarks."""
        with self._lock:
            n = 0
            for w in self._watchers:
                if w.allow_bookmarks and (resource is None or w.resource == resource):
                    w.queue.put(_Bookmark(self._rv))
                    n += 1
            return n

    def fail_next(
        self,
        verb: str,
        resource: str | None = None,
        code: int = 500,
        *,
        times: int | None = 1,
        action: str = "status",
        retry_after: float | str | None = None,
        reason: str | None = None,
        message: str | None = None,
        headers: Mapping[str, str] | None = None,
        body: bytes | None = None,
        content_type: str = "application/json",
        when: Callable[[Mapping[str, str]], bool] | None = None,
    ) -> Fault:
        """Answer the next ``times`` (None: all, until :meth:`clear_faults`) matching requests badly.

        ``verb`` is ``list`` or ``watch``; ``when(params)`` narrows the match (e.g. only list
        pages with a ``continue`` token).  ``action``:

        ``status``
            HTTP ``code`` with a Status body (or ``body`` as it is, with ``content_type``),
            plus ``Retry-After: retry_after`` and ``headers``.  A 403 gets the apiserver's RBAC
            message (``... cannot list resource "services" in API group "" ...``).
        ``stall``
            200 and the first half of a LIST body (``body`` or a made-up one), then nothing
            until the client goes away.
        ``truncate``
            200 and the first half of a LIST body, then the connection is closed.
        ``error-event``
            a watch stream holding one ``ERROR`` event with a ``code`` Status, then its end.

        Faults are tried in the order they were added; the first match is used.
        """
        if verb not in ("list", "watch"):
            raise ValueError(f"verb must be list or watch, not {verb!r}")
        if action not in ("status", "stall", "truncate", "error-event"):
            raise ValueError(f"unknown fault action {action!r}")
        if resource is not None:
            self._info(resource)
        reason = reason or _REASONS.get(code, "InternalError")
        if message is None:
            if code == 403:
                group = RESOURCES[resource].api_version.rpartition("/")[0] if resource else ""
                message = (
                    f'{resource or "resource"} is forbidden: User "system:serviceaccount:kube-system:kubedns" '
                    f'cannot {verb} resource "{resource or "resource"}" in API group "{group}" at the cluster scope'
                )
            else:
                message = f"fake apiserver: scripted {code} {reason}"
        all_headers = dict(headers or {})
        if retry_after is not None:
            all_headers["Retry-After"] = str(retry_after)
        fault = Fault(verb, resource, code, action, times, reason, message, all_headers, body, content_type, when)
        with self._lock:
            self._faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        """Forget every fault added with :meth:`fail_next`."""
        with self._lock:
            self._faults.clear()

    def inject_watch_lines(self, resource: str | None, *lines: bytes, newline: bool = True) -> int:
        """Write raw ``lines`` into the open watch streams (of ``resource``), in order.

        For malformed JSON, unknown event types, objects missing fields...  Each gets a newline
        unless it has one or ``newline`` is False (half an event).  Written to hung watches
        too (:attr:`hang_watches`).  They are not recorded in the history: a re-watch does not
        see them again (see :meth:`poison_history`).  Returns how many watches got them.
        """
        with self._lock:
            victims = [w for w in self._watchers if resource is None or w.resource == resource]
            for w in victims:
                for line in lines:
                    w.queue.put(_Raw(line, newline))
            return len(victims)

    def poison_history(self, resource: str, line: bytes) -> int:
        """Record a raw ``line`` as the event of a new resourceVersion (returned).

        Open watches get it, and so does every later watch from an older resourceVersion
        (until :meth:`compact`), as a real apiserver would replay a stored event.
        """
        self._info(resource)
        with self._lock:
            self._rv += 1
            self._emit(_RawEvent(self._rv, resource, line))
            return self._rv

    def compact(self) -> int:
        """Forget the history up to the current resourceVersion (like etcd
        compaction): older watch resourceVersions and continue tokens now get
        410 Expired.  Returns the compaction revision."""
        with self._lock:
            self._compacted_rv = self._rv
            self._history.clear()
            self._snapshots = {k: v for k, v in self._snapshots.items() if v[0] >= self._compacted_rv}
            return self._compacted_rv

    def restore(self, objs: Iterable[Mapping[str, Any]], resource_version: int) -> None:
        """Come back from a backup: exactly ``objs``, at the older ``resource_version``.

        As an apiserver whose etcd was restored from a snapshot: the history is gone, the
        resourceVersion counter goes back (clients may hold newer ones), and the open watches are
        dropped (the apiserver restarted).  A watch from a resourceVersion newer than the
        restored one then delivers nothing, not even a BOOKMARK, until the server gets there.
        """
        with self._lock:
            self._store.clear()
            self._history.clear()
            self._snapshots.clear()
            self._rv = self._compacted_rv = resource_version
            for obj in objs:
                kind = obj.get("kind")
                if kind not in _KIND_TO_RESOURCE:
                    raise ValueError(f"unsupported kind {kind!r}")
                _, key, new = self._prepare(_KIND_TO_RESOURCE[kind], obj)
                new["metadata"].setdefault("uid", str(uuid.uuid4()))
                new["metadata"]["resourceVersion"] = str(resource_version)
                self._store[key] = new
        self.drop_watches()

    # -- observation ---------------------------------------------------------

    @property
    def resource_version(self) -> int:
        """The current global resourceVersion."""
        with self._lock:
            return self._rv

    def watcher_count(self, resource: str | None = None) -> int:
        with self._lock:
            return sum(1 for w in self._watchers if resource is None or w.resource == resource)

    def wait_for_watchers(self, count: int = 1, resource: str | None = None, timeout: float = 5.0) -> bool:
        """Wait until at least ``count`` watches (of ``resource``) are open."""
        with self._cond:
            return self._cond.wait_for(lambda: self.watcher_count(resource) >= count, timeout)

    def wait_for_requests(self, verb: str, resource: str, count: int = 1, timeout: float = 5.0) -> bool:
        """Wait until ``requests[(verb, resource)] >= count``."""
        with self._cond:
            return self._cond.wait_for(lambda: self.requests[(verb, resource)] >= count, timeout)

    def reset_requests(self) -> None:
        with self._lock:
            self.requests.clear()
            self.request_log.clear()

    # -- object store --------------------------------------------------------

    def create(self, resource: str, obj: Mapping[str, Any]) -> Obj:
        """Add a new object (ADDED); KeyError if it already exists."""
        _, key, new = self._prepare(resource, obj)
        with self._lock:
            if key in self._store:
                raise KeyError(f"{resource} {key[1]}/{key[2]} already exists")
            meta = new["metadata"]
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("creationTimestamp", _now())
            return self._commit(resource, key, "ADDED", new, None)

    def update(self, resource: str, obj: Mapping[str, Any]) -> Obj:
        """Replace an existing object (MODIFIED); KeyError if it does not exist.

        ``uid`` and ``creationTimestamp`` are kept from the stored object when
        ``obj`` does not set them.
        """
        _, key, new = self._prepare(resource, obj)
        with self._lock:
            old = self._store.get(key)
            if old is None:
                raise KeyError(f"{resource} {key[1]}/{key[2]} not found")
            meta = new["metadata"]
            for k in ("uid", "creationTimestamp"):
                if k in old["metadata"]:
                    meta.setdefault(k, old["metadata"][k])
            return self._commit(resource, key, "MODIFIED", new, old)

    def apply(self, resource: str, obj: Mapping[str, Any]) -> Obj:
        """Create or update."""
        _, key, _ = self._prepare(resource, obj)
        with self._lock:
            if key in self._store:
                return self.update(resource, obj)
            return self.create(resource, obj)

    def delete(self, resource: str, namespace: str | None, name: str) -> Obj:
        """Remove an object (DELETED); KeyError if it does not exist.

        Returns the deleted object with the deletion's resourceVersion.
        """
        self._info(resource)
        key = self._key(resource, namespace, name)
        with self._lock:
            old = self._store.pop(key, None)
            if old is None:
                raise KeyError(f"{resource} {key[1]}/{key[2]} not found")
            gone = copy.deepcopy(old)
            self._rv += 1
            gone["metadata"]["resourceVersion"] = str(self._rv)
            self._emit(_Event(self._rv, resource, "DELETED", gone, old))
            return copy.deepcopy(gone)

    def get(self, resource: str, namespace: str | None, name: str) -> Obj | None:
        self._info(resource)
        with self._lock:
            obj = self._store.get(self._key(resource, namespace, name))
            return copy.deepcopy(obj) if obj is not None else None

    def objects(self, resource: str, namespace: str | None = None) -> list[Obj]:
        """Current objects of ``resource`` (optionally one namespace), sorted."""
        self._info(resource)
        with self._lock:
            return [
                copy.deepcopy(obj)
                for key, obj in sorted(self._store.items())
                if key[0] == resource and (namespace is None or key[1] == namespace)
            ]

    def load(self, objs: Iterable[Mapping[str, Any]]) -> list[Obj]:
        """Create-or-update many objects; the resource comes from each ``kind``."""
        out = []
        for obj in objs:
            kind = obj.get("kind")
            if kind not in _KIND_TO_RESOURCE:
                raise ValueError(f"unsupported kind {kind!r}")
            out.append(self.apply(_KIND_TO_RESOURCE[kind], obj))
        return out

    # -- helpers for the client ----------------------------------------------

    def write_kubeconfig(self, path: str | os.PathLike[str]) -> str:
        from tests.support.kubeobj import kubeconfig

        return kubeconfig(path, self.url)

    def api_client(self) -> Any:
        """An official ``kubernetes.client.ApiClient`` for this fake (proxy env ignored)."""
        from kubernetes import client

        conf = client.Configuration(host=self.url)
        conf.proxy = None  # never route 127.0.0.1 through an environment proxy
        return client.ApiClient(conf)

    # -- internals -----------------------------------------------------------

    @staticmethod
    def _info(resource: str) -> ResourceInfo:
        try:
            return RESOURCES[resource]
        except KeyError:
            raise ValueError(f"unsupported resource {resource!r}; one of {sorted(RESOURCES)}") from None

    def _key(self, resource: str, namespace: str | None, name: str) -> _Key:
        info = self._info(resource)
        return (resource, (namespace or "") if info.namespaced else "", name)

    def _prepare(self, resource: str, obj: Mapping[str, Any]) -> tuple[ResourceInfo, _Key, Obj]:
        info = self._info(resource)
        new = copy.deepcopy(dict(obj))
        if new.setdefault("kind", info.kind) != info.kind:
            raise ValueError(f"kind {new['kind']!r} does not belong to {resource}")
        new.setdefault("apiVersion", info.api_version)
        meta = new.setdefault("metadata", {})
        name = meta.get("name")
        if not name:
            raise ValueError("metadata.name is required")
        if info.namespaced:
            meta["namespace"] = meta.get("namespace") or "default"
        else:
            meta.pop("namespace", None)
        return info, self._key(resource, meta.get("namespace"), name), new

    def _commit(self, resource: str, key: _Key, type_: str, new: Obj, old: Obj | None) -> Obj:
        # caller holds the lock
        self._rv += 1
        new["metadata"]["resourceVersion"] = str(self._rv)
        self._store[key] = new
        self._emit(_Event(self._rv, resource, type_, new, old))
        return copy.deepcopy(new)

    def _emit(self, ev: _Event | _RawEvent) -> None:
        # caller holds the lock
        self._history.append(ev)
        for w in self._watchers:
            if w.resource == ev.resource:
                w.queue.put(ev)

    def _take_fault(self, verb: str, resource: str, params: Mapping[str, str]) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.matches(verb, resource, params):
                    fault.hits += 1
                    return fault
            return None

    def _record(self, verb: str, resource: str, ns: str | None, path: str, params: Mapping[str, str]) -> None:
        with self._cond:
            self.requests[(verb, resource)] += 1
            self.request_log.append(RequestRecord(verb, resource, ns, path, dict(params), time.time()))
            self._cond.notify_all()

    def _register_connection(self, conn: socket.socket) -> None:
        with self._lock:
            self._connections[conn] = threading.current_thread()
            stopping = self._stopping.is_set()
        if stopping:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _unregister_connection(self, conn: socket.socket) -> None:
        with self._lock:
            self._connections.pop(conn, None)

    def _wait_lists_released(self) -> bool:
        while not self._lists_released.wait(0.05):
            if self._stopping.is_set():
                return False
        return not self._stopping.is_set()

    def _list_page(
        self, resource: str, matches: _Predicate, limit: int, cont: tuple[int, str, int] | None
    ) -> tuple[list[Obj], int, str, int]:
        with self._lock:
            if cont is None:
                list_rv, start = self._rv, ""
                items = [o for k, o in sorted(self._store.items()) if k[0] == resource and matches(o)]
                snap_id = 0
            else:
                list_rv, start, snap_id = cont
                snap = self._snapshots.get(snap_id)
                if list_rv < self._compacted_rv or snap is None:
                    raise _ExpiredError(
                        "The provided continue parameter is too old to display a consistent list "
                        "result. You can start a new list without the continue parameter."
                    )
                items = snap[1]

            def sort_key(o: Obj) -> str:
                m = o["metadata"]
                return f"{m.get('namespace', '')}/{m['name']}"

            remaining = [o for o in items if sort_key(o) > start]
            if limit <= 0 or len(remaining) <= limit:
                return remaining, list_rv, "", 0
            page = remaining[:limit]
            if snap_id == 0:
                snap_id = self._next_snapshot
                self._next_snapshot += 1
                self._snapshots[snap_id] = (list_rv, items)
            token = _encode_continue(list_rv, sort_key(page[-1]), snap_id)
            return page, list_rv, token, len(remaining) - limit

    def _register_watcher(
        self, resource: str, matches: _Predicate, requested: int, allow_bookmarks: bool, initial_state: bool
    ) -> _ExpiredError | tuple[_Watcher, list[tuple[str, Obj]], int] | None:
        with self._cond:
            if self._stopping.is_set():
                return None
            replay: list[tuple[str, Obj]] = []
            if initial_state:
                w = _Watcher(resource, matches, self._rv, allow_bookmarks)
                replay = [
                    ("ADDED", o) for k, o in sorted(self._store.items()) if k[0] == resource and matches(o)
                ]
            else:
                if requested < self._compacted_rv:
                    return _ExpiredError(f"too old resource version: {requested} ({self._compacted_rv})")
                w = _Watcher(resource, matches, requested, allow_bookmarks)
                for ev in self._history:
                    translated = _translate(w, ev)
                    if translated is not None:
                        replay.append(translated)
            self._watchers.append(w)
            self._cond.notify_all()
            return w, replay, self._rv

    def _unregister_watcher(self, w: _Watcher) -> None:
        with self._cond:
            if w in self._watchers:
                self._watchers.remove(w)
            self._cond.notify_all()

    def _bookmark_rv(self, w: _Watcher) -> int | None:
        """The rv for a periodic bookmark, or None if events are still queued or the server is
        behind the rv the watch started from (a bookmark never goes backwards)."""
        with self._lock:
            return self._rv if w.queue.empty() and self._rv >= w.min_rv else None

