"""Operations endpoints: ``/health``, ``/ready`` and ``/metrics`` over HTTP.

:func:`build_ops` is the one entry point the wiring calls: it turns the ``health``, ``ready``,
``prometheus`` keys of every server block into an :class:`Ops` service
(a child of the :class:`~kubedns.service.KubeDNS` it serves), which owns the HTTP listeners and
the metrics observer, and exposes :meth:`Ops.set_lameduck` (SIGTERM),
:meth:`Ops.record_reload_failure`, :meth:`Ops.prepare` (a reload, before it commits: bind the
HTTP addresses it adds, or reject it) and :meth:`Ops.refresh` (after it commits).  A reload that
moves an endpoint to a port that cannot be bound is thus rejected as a whole, and the old
listeners keep serving; they close only once the new ones listen.

Semantics (CoreDNS's *health* and *ready* plugins, with one deliberate difference):

- ``/health`` (default ``:8080``) answers 200 ``OK`` while the process serves, lameduck included:
  liveness must not restart a pod that is shutting down cleanly.
- ``/ready`` (default ``:8181``) answers 503 until every Kubernetes store has completed its first
  list, with a body naming what is missing (``not ready: kubernetes: waiting for namespaces,
  services``), then 200 ``OK``.  Once ready it stays ready ("has been ready"): an API server outage
  must not pull every DNS pod out of its Service at once, since the last known state keeps being
  served.  It turns 503 ``shutting down`` as soon as lameduck starts, so clients drain away.
  Difference: CoreDNS's *ready* reports the plugins of the blocks that name that address; here
  readiness is process-wide (every store), so a ``ready`` placed in a block without
  ``kubernetes`` cannot declare the pod ready while cluster names would still get SERVFAIL.

Blocks naming the same address share one listener (health, ready and metrics may all sit on one
``host:port``, one twisted.web ``Site`` serving each configured path).  An address without a
host (``health :8080``, the defaults) listens on both families, ``0.0.0.0`` and ``::``, as the
DNS listeners and CoreDNS do; ``0.0.0.0`` written out stays IPv4 only.  HTTP access is not
logged: kubelet probes and Prometheus scrapes would drown the query log.

Connections are bounded in time and number (twisted.web keeps an idle connection 12 hours, and
resets its timer on every byte, so a client trickling a request keeps it forever): a connection
must deliver a whole request within :data:`HTTP_TIMEOUT` seconds of opening or of its previous
response, and at most :data:`HTTP_MAX_CONNECTIONS` are open per listener.  Past that, a new
connection takes the place of the oldest one still waiting for its request, so idle and
half-sent connections cannot keep the kubelet's probes out; when every connection is in the
middle of a request, the new one is closed at once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from twisted.application import service
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http, pages, resource, server

from kubedns.configbase import Address
from kubedns.serve.listen import ListenError, TCPListener, http_addresses, interface
from kubedns.serve.protocols import StreamTransport, close_connection

if TYPE_CHECKING:
    from twisted.internet.interfaces import IDelayedCall

    from kubedns.config import Config
    from kubedns.ops.metrics import Metrics
    from kubedns.service import KubeDNS

__all__ = ["HTTPBindError", "Ops", "Readiness", "build_ops"]

log = Logger(namespace="kubedns.ops")


class HTTPBindError(Exception):
    """A reload names an HTTP address (health, ready, prometheus) that cannot be listened on."""




def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class Readiness:
    """What ``/ready`` says: synced at least once, and not in lameduck."""

    def __init__(self, kubedns: KubeDNS):
        self.kubedns = kubedns
        self.ever_ready = False
        self.lameduck = False

    def status(self) -> tuple[int, str]:
        """(HTTP status, body)."""
        if self.lameduck:
            return 503, "shutting down"
        if self.ever_ready:
            return 200, "OK"
        waiting = self._waiting()
        if not waiting:
            self.ever_ready = True
            return 200, "OK"
        err = self._last_error()
        return 503, "not ready: " + "; ".join(waiting) + (f" (last error: {_one_line(err)})" if err else "")

    def _waiting(self) -> list[str]:
        """What is not synced yet: ``kubernetes: waiting for <kinds>``, ``worker <i>``..."""
        kd = self.kubedns
        return [] if kd.synced else kd.not_synced()

    def _last_error(self) -> str:
        """The first error a source reports (no kubeconfig, API unreachable...), or ''."""
        for src in self.kubedns.sources:
            err = src.problem()
            if err:
                return err
        return ""


class _Text(resource.Resource):
    isLeaf = True  # noqa: N815 (twisted.web API)

    def __init__(self, produce: Callable[[], tuple[int, str]]):
        super().__init__()
        self._produce = produce

    def render_GET(self, request: server.Request) -> bytes:  # noqa: N802 (twisted.web API)
        code, body = self._produce()
        request.setResponseCode(code)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        return body.encode("utf-8")


class _Root(resource.Resource):
    """``/``: the configured paths as children, a plain 404 for anything else."""

    def getChild(self, path: bytes, request: Any) -> resource.IResource:  # noqa: N802 (twisted.web API)
        return pages.notFound()


#: Seconds an HTTP connection may take to send a whole request (from opening, or from its previous
#: response), and may stay idle.
HTTP_TIMEOUT = 10.0
#: HTTP connections open at once per listener.
HTTP_MAX_CONNECTIONS = 100


class _OpsChannel(http.HTTPChannel):
    """An HTTPChannel with a deadline for each request and a quiet, prompt close.

    twisted.web's idle timer restarts on every byte received; the deadline here does not, so a
    request trickled a byte at a time is cut off like an idle connection.  A close aborts the
    connection when its response is still unread (see :func:`kubedns.serve.protocols.close_connection`).
    """

    site: _QuietSite

    def connectionMade(self) -> None:  # noqa: N802 (Twisted API)
        self._deadline: IDelayedCall | None = None
        #: the abort backing a graceful close; True once closed without one
        self._closing: IDelayedCall | bool | None = None
        super().connectionMade()
        self._await_request()

    def _await_request(self) -> None:
        self._stop_waiting()
        self.site.waiting[self] = None
        self._deadline = self.callLater(self.site.request_timeout, self.timeoutConnection)

    def _stop_waiting(self) -> None:
        self.site.waiting.pop(self, None)
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    def allContentReceived(self) -> None:  # noqa: N802 (Twisted API)
        self._stop_waiting()
        super().allContentReceived()

    def requestDone(self, request: Any) -> None:  # noqa: N802 (Twisted API)
        # Before super(), which may go on at once with a pipelined request.  Also when the
        # connection is not persistent: super() closes it gracefully, which waits for the
        # client to read the response; the deadline aborts it if the client never does.
        self._await_request()
        super().requestDone(request)

    def timeoutConnection(self) -> None:  # noqa: N802 (Twisted API; no "Timing out client" line)
        self._stop_waiting()
        tcp = self._tcp
        if self._closing is None and tcp is not None and tcp.connected:
            self._closing = close_connection(tcp, self.site.reactor) or True

    def evict(self) -> None:
        """Abort: the listener needs the slot of this connection, which has no request yet."""
        self._stop_waiting()
        self.site.channels.discard(self)
        if self._tcp is not None:
            self._tcp.abortConnection()

    @property
    def _tcp(self) -> StreamTransport | None:
        """The transport, a TCP connection (twisted.web types it as a bare ITransport)."""
        return cast("StreamTransport | None", self.transport)

    def connectionLost(self, reason: Failure = connectionDone) -> None:  # noqa: N802 (Twisted API)
        self._stop_waiting()
        if not isinstance(self._closing, bool) and self._closing is not None and self._closing.active():
            self._closing.cancel()
        self.site.channels.discard(self)
        super().connectionLost(reason)


class _QuietSite(server.Site):
    """A Site that writes no access log and no 'Starting factory' lines, and bounds its
    connections in time and number (see the module docstring)."""

    noisy = False
    protocol = _OpsChannel  # type: ignore[assignment]  # plain HTTP/1.1, no HTTP/2 negotiation
    max_connections = HTTP_MAX_CONNECTIONS

    def __init__(self, root: resource.Resource, reactor: Any = None, timeout: float = HTTP_TIMEOUT):
        super().__init__(root, timeout=timeout, reactor=reactor)
        self.request_timeout = timeout
        self.channels: set[_OpsChannel] = set()
        #: connections waiting for their next request, oldest first
        self.waiting: dict[_OpsChannel, None] = {}

    def buildProtocol(self, addr: Any) -> Any:  # noqa: N802 (Twisted API)
        if len(self.channels) >= self.max_connections:
            if not self.waiting:
                return None
            next(iter(self.waiting)).evict()
        channel = super().buildProtocol(addr)
        self.channels.add(channel)
        return channel

    def log(self, request: Any) -> None:
        pass


class Ops(service.MultiService):
    """The operations side of one KubeDNS: HTTP endpoints, metrics, query and error logs."""

    def __init__(self, kubedns: KubeDNS):
        super().__init__()
        self.setName("ops")
        self.kubedns = kubedns
        self.reactor = kubedns.reactor
        self.readiness = Readiness(kubedns)
        self.metrics: Metrics | None = None  # once any block has prometheus
        self._roots: dict[Address, resource.Resource] = {}
        self._ports: dict[Address, TCPListener] = {}
        #: listeners bound by prepare() for a reload not committed yet
        self._pending: dict[Address, tuple[resource.Resource, TCPListener]] = {}
        self.refresh()

    # -- API for the wiring --------------------------------------------------------------------
    def set_lameduck(self) -> None:
        """Shutdown has begun: ``/ready`` answers 503 from now on (``/health`` stays 200)."""
        self.readiness.lameduck = True

    def record_reload_failure(self) -> None:
        """A reload was rejected: count it in ``coredns_reload_failed_total``."""
        from kubedns.ops.counters import record_reload_failure

        record_reload_failure()

    def refresh(self) -> None:
        """Bring listeners and metrics in line with the current config (the query and error
        logs are wired with the chains: :mod:`kubedns.plugins.observe`).

        Called at build time and after every reload; idempotent.
        """
        config = self.kubedns.config
        if self.metrics is None and any(b.prometheus is not None for b in config.servers):
            from kubedns.ops.metrics import Metrics

            self.metrics = Metrics(self.kubedns)
        if self.metrics is not None:
            self.metrics.attach()
        self._refresh_http(config)

    # -- HTTP ----------------------------------------------------------------------------------
    def _wanted(self, config: Config) -> dict[Address, set[bytes]]:
        """Address → paths to serve there.

        With ``workers: N``, /health and /ready belong to worker 0 (which knows whether every
        worker is ready) and each worker serves its own /metrics on the prometheus port plus its
        index, so a scrape never reports figures of another process.
        """
        worker = self.kubedns.worker
        want: dict[Address, set[bytes]] = {}
        for b in config.servers:
            if worker == 0 and b.health is not None:
                want.setdefault(b.health.listen, set()).add(b"health")
            if worker == 0 and b.ready is not None:
                want.setdefault(b.ready.listen, set()).add(b"ready")
            if b.prometheus is not None:
                addr = b.prometheus.listen
                if worker:
                    addr = Address(addr.host, addr.port + worker)
                want.setdefault(addr, set()).add(b"metrics")
        return want

    def _child(self, path: bytes) -> resource.Resource:
        if path == b"health":
            return _Text(lambda: (200, "OK"))
        if path == b"ready":
            return _Text(self.readiness.status)
        assert self.metrics is not None
        return self.metrics.resource()

    def prepare(self, config: Config) -> None:
        """Before a reload commits: listen on every HTTP address ``config`` adds, or raise.

        Raises :class:`HTTPBindError` (having closed what it opened) when an address cannot be
        bound, so the reload is rejected as a whole and the running listeners keep serving.  The
        new listeners serve nothing until :meth:`refresh` (after the commit) fills them in and
        closes the listeners the new config no longer names; :meth:`abort` closes them if the
        reload fails later.  Before the service runs nothing is bound (``startService`` does).
        """
        self.abort()
        pending: dict[Address, tuple[resource.Resource, TCPListener]] = {}
        try:
            for addr, paths in self._wanted(config).items():
                if addr in self._ports:
                    continue
                root = _Root()
                port = self._listener(config, addr, root)
                pending[addr] = (root, port)
                try:
                    port.setServiceParent(self)  # listens now if we are running
                except ListenError:
                    raise  # one line naming the config key, as a DNS address's
                except Exception as e:
                    raise HTTPBindError(f"cannot listen for {_paths(paths)} on {addr}: {e}") from e
        except Exception:
            for _, opened in pending.values():
                if opened.parent is not None:
                    opened.disownServiceParent()
            raise
        self._pending = pending

    def _listener(self, config: Config, addr: Address, root: resource.Resource) -> TCPListener:
        """The listening service for ``addr``: a host-less address (``:8080``) is every address
        of both families, ``0.0.0.0`` and ``::`` (IPv6 only, where the host has IPv6), as CoreDNS's
        Go listener is and as the DNS listeners are (:mod:`kubedns.serve.listen`).  A bind failure
        raises :class:`~kubedns.serve.listen.ListenError` naming the config file and key."""
        where = str(addr)
        for key, _, a in http_addresses(config, self.kubedns.worker):
            if a == addr:
                where = f"{config.path}: {key}: {addr}"
                break
        return TCPListener(interface(addr.host), addr.port, _QuietSite(root, self.reactor), self.reactor,
                           False, where)

    def abort(self) -> None:
        """Close the listeners a :meth:`prepare` opened for a reload that did not commit."""
        pending, self._pending = self._pending, {}
        for _, port in pending.values():
            if port.parent is not None:
                port.disownServiceParent()

    def _refresh_http(self, config: Config) -> None:
        want = self._wanted(config)
        pending, self._pending = self._pending, {}
        for addr, paths in want.items():
            root = self._roots.get(addr)
            if root is None and addr in pending:
                root, port = pending.pop(addr)  # bound by prepare() before the commit
                self._roots[addr], self._ports[addr] = root, port
            elif root is None:
                # not prepared (first build, before anything listens): bound by startService
                root = _Root()
                port = self._listener(config, addr, root)
                try:
                    port.setServiceParent(self)  # listens now if we are running
                except Exception as e:
                    log.error("cannot listen for {paths} on {addr}: {err}", paths=_paths(paths), addr=str(addr), err=e)
                    if port.parent is not None:
                        port.disownServiceParent()
                    continue
                self._roots[addr], self._ports[addr] = root, port
            for p in [p for p in root.children if p not in paths]:
                del root.children[p]
            for p in paths:
                if p not in root.children:
                    root.putChild(p, self._child(p))
        # only now, with the new listeners serving, close those the config no longer names
        for _, port in pending.values():
            if port.parent is not None:
                port.disownServiceParent()
        for addr in [a for a in self._ports if a not in want]:
            self._ports.pop(addr).disownServiceParent()
            del self._roots[addr]

    # -- lifecycle -----------------------------------------------------------------------------
    def startService(self) -> None:  # noqa: N802 (Twisted API)
        super().startService()
        for addr, svc in self._ports.items():
            paths = ", ".join("/" + p.decode() for p in sorted(self._roots[addr].children))
            for port in (getattr(svc, "_port", None), getattr(svc, "_port6", None)):
                if port is not None:
                    h = port.getHost()
                    host = f"[{h.host}]" if ":" in h.host else h.host
                    log.info("kubedns {paths} on http://{host}:{port}", paths=paths, host=host, port=h.port)


def _paths(paths: set[bytes]) -> str:
    return ", ".join("/" + p.decode() for p in sorted(paths))


def build_ops(kubedns: KubeDNS) -> Ops:
    """Make the operations service for ``kubedns`` and attach it as a child (started with it).

    Returns the :class:`Ops`; the wiring keeps it for ``set_lameduck()``,
    ``record_reload_failure()`` and ``refresh()`` after a reload.  ``ops.services`` lists the
    HTTP listeners (children of the Ops service).
    """
    ops = Ops(kubedns)
    ops.setServiceParent(kubedns)
    return ops
