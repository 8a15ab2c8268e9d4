"""Where the official client's configuration comes from, and picking up a fixed kubeconfig.

Why a module of its own: credentials are not read once.  A kubeconfig fixed on disk (a rotated
token, a corrected server address, a file that was missing) must be picked up without a restart,
so :class:`ClientSource` re-reads what the client was built from before every connection attempt
that follows an error and on every reachability probe (a few KB: cheap, and only then), and
builds a new client when the bytes changed.  A missing file is said as such ("file not found:
PATH"); the client's own message for it is "Invalid kube-config file".

Like :mod:`kubedns.k8s.watch`, this imports :mod:`kubernetes` lazily (it takes most of a second).
It starts no thread: ``current()`` and ``probe()`` run on the watch threads that call them, and
``load()`` on the reactor at start.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from twisted.logger import Logger

from kubedns.config import ApiConfig, TlsConfig
from kubedns.k8s.objects import KINDS

if TYPE_CHECKING:
    from urllib3 import BaseHTTPResponse

__all__ = ["ClientSource", "list_function", "load_api_client"]

_log = Logger(namespace="kubedns.k8s.watch")

#: What ``kubernetes/__init__.py`` imports that kubedns never uses (the dynamic client and its
#: schema validation, exec streams over websockets, the watch helper, leader election, the
#: informer): ~0.1 s of CPU at start-up, see :func:`lean_kubernetes`.
UNUSED_SUBPACKAGES = ("dynamic", "stream", "watch", "leaderelection", "informer")


def lean_kubernetes() -> None:
    """Make ``kubernetes`` importable without running its ``__init__.py``; its modules load on use.

    Why: the package's ``__init__`` imports every subpackage (:data:`UNUSED_SUBPACKAGES`, which
    pull in jsonschema, websocket, referencing...) although kubedns needs only ``client`` and
    ``config``: about a quarter of the client's import time, on the CPU of every start-up and
    the first sync.  The package module is made from its own spec without being executed, and
    any attribute it lacks (a subpackage, ``__version__``) is loaded when first read, so code
    that does ``import kubernetes; kubernetes.watch.Watch`` in the same process still works.
    Nothing is done if the package is already imported (or not installed: the import itself
    then fails as before).
    """
    if "kubernetes" in sys.modules:
        return
    spec = importlib.util.find_spec("kubernetes")
    if spec is None or spec.submodule_search_locations is None:
        return
    pkg = importlib.util.module_from_spec(spec)  # a module object; the file is not executed

    def lazy(name: str) -> Any:
        if name == "__version__":
            from importlib.metadata import version

            value: Any = version("kubernetes")
        elif name.startswith("__"):
            raise AttributeError(name)
        else:
            try:
                value = importlib.import_module(f"kubernetes.{name}")
            except ModuleNotFoundError as e:
                if e.name != f"kubernetes.{name}":
                    raise
                raise AttributeError(f"module 'kubernetes' has no attribute {name!r}") from None
        setattr(pkg, name, value)
        return value

    pkg.__getattr__ = lazy  # type: ignore[method-assign]  # PEP 562 module __getattr__
    sys.modules.setdefault("kubernetes", pkg)


#: The service account files ``load_incluster_config`` reads.
_SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


def load_api_client(kubeconfig: str | ApiConfig | None = None) -> tuple[Any, str]:
    """A ``kubernetes.client.ApiClient`` and a description of where its config came from.

    A path loads that kubeconfig.  ``None`` tries, in order, the in-cluster service account,
    ``$KUBECONFIG`` and ``~/.kube/config``.  An :class:`~kubedns.config.ApiConfig` is the
    ``kubernetes`` block's ``kubeconfig`` (and ``context``), else its ``endpoint`` (and ``tls``),
    else the same as ``None``.  Raises :class:`RuntimeError` naming everything tried
    when nothing works.  urllib3's own retries are disabled: the watch loop retries with backoff,
    and urllib3's would multiply every read timeout by four.
    """
    from kubedns import __version__

    lean_kubernetes()
    if isinstance(kubeconfig, ApiConfig):
        if kubeconfig.kubeconfig is not None:
            api_client, source = _load_api_client(kubeconfig.kubeconfig, kubeconfig.context)
        elif kubeconfig.endpoint is not None:
            api_client, source = _endpoint_client(kubeconfig.endpoint, kubeconfig.tls)
        else:
            api_client, source = _load_api_client(None)
    else:
        api_client, source = _load_api_client(kubeconfig)
    api_client.user_agent = f"kubedns/{__version__}"  # names us in the apiserver's audit log
    return api_client, source


def _endpoint_client(endpoint: str, tls: TlsConfig | None) -> tuple[Any, str]:
    """``endpoint URL`` (with ``tls CERT KEY CACERT``): the API at that address, as CoreDNS
    reaches it from outside a cluster.  The files are loaded here once, so a wrong path or a
    key that does not match its certificate is said now, not as a TLS error on every retry."""
    import ssl

    from kubernetes import client

    cfg = client.Configuration()
    cfg.retries = False
    cfg.host = endpoint
    what = f"endpoint {endpoint}"
    if tls is not None:
        try:
            ctx = ssl.create_default_context(cafile=tls.cacert)
            ctx.load_cert_chain(tls.cert, tls.key)
        except (OSError, ssl.SSLError) as e:
            raise RuntimeError(f"cannot load tls files (cert {tls.cert}, key {tls.key}, cacert {tls.cacert}): {e}") from e
        cfg.cert_file, cfg.key_file, cfg.ssl_ca_cert = tls.cert, tls.key, tls.cacert
        what += " with a client certificate"
    return client.ApiClient(configuration=cfg), what


def _load_api_client(kubeconfig: str | None, context: str | None = None) -> tuple[Any, str]:
    from kubernetes import client, config

    def fresh() -> Any:
        cfg = client.Configuration()
        cfg.retries = False
        return cfg

    if kubeconfig is not None:
        if not os.path.exists(kubeconfig):
            raise RuntimeError(f"cannot load kubeconfig: file not found: {kubeconfig}")
        what = kubeconfig if context is None else f"{kubeconfig} (context {context})"
        try:
            cfg = fresh()
            return config.new_client_from_config(config_file=kubeconfig, context=context, client_configuration=cfg), what
        except Exception as e:  # ConfigException, OSError, yaml errors...
            raise RuntimeError(f"cannot load kubeconfig {what}: {e}") from e

    tried: list[str] = []
    try:
        cfg = fresh()
        config.load_incluster_config(client_configuration=cfg)
        return client.ApiClient(configuration=cfg), "in-cluster service account"
    except Exception as e:
        tried.append(f"in-cluster service account ({e})")
    env = os.environ.get("KUBECONFIG", "")
    if not env:
        tried.append("$KUBECONFIG (unset)")
    for path, label in _kubeconfig_candidates():
        # $KUBECONFIG may be a list of files; the client merges them.
        if not any(os.path.exists(p) for p in path.split(os.pathsep) if p):
            tried.append(f"{label} (file not found: {path})")
            continue
        try:
            cfg = fresh()
            return config.new_client_from_config(config_file=path, client_configuration=cfg), label
        except Exception as e:
            tried.append(f"{label} ({e})")
    raise RuntimeError("no Kubernetes API configuration found; tried: " + "; ".join(tried))


def _kubeconfig_candidates() -> list[tuple[str, str]]:
    """``(path, label)`` of the kubeconfig files tried without an explicit path, in order."""
    out: list[tuple[str, str]] = []
    env = os.environ.get("KUBECONFIG", "")
    if env:
        out.append((env, f"$KUBECONFIG={env}"))
    home = os.path.expanduser("~/.kube/config")
    out.append((home, home))
    return out


#: resource → (API path of the cluster-wide list, generated API class, its method): the path is
#: requested through the client's own ``ApiClient``, the class and method serve clients older
#: than the pydantic-based generator (no ``param_serialize``).
_LIST_PATHS: dict[str, tuple[str, str, str]] = {
    "namespaces": ("/api/v1/namespaces", "CoreV1Api", "list_namespace"),
    "services": ("/api/v1/services", "CoreV1Api", "list_service_for_all_namespaces"),
    "pods": ("/api/v1/pods", "CoreV1Api", "list_pod_for_all_namespaces"),
    "endpointslices": ("/apis/discovery.k8s.io/v1/endpointslices", "DiscoveryV1Api", "list_endpoint_slice_for_all_namespaces"),
}
#: The list methods' query parameters, by their Python names, in the generated code's order.
_QUERY_NAMES = (
    ("allow_watch_bookmarks", "allowWatchBookmarks"),
    ("_continue", "continue"),
    ("field_selector", "fieldSelector"),
    ("label_selector", "labelSelector"),
    ("limit", "limit"),
    ("pretty", "pretty"),
    ("resource_version", "resourceVersion"),
    ("resource_version_match", "resourceVersionMatch"),
    ("send_initial_events", "sendInitialEvents"),
    ("timeout_seconds", "timeoutSeconds"),
    ("watch", "watch"),
)


def list_function(api_client: Any, resource: str) -> Callable[..., Any]:
    """The cluster-wide list (and watch) of ``resource`` through the official client.

    Called as the generated ``list_*`` methods are, with ``_preload_content=False``: returns
    urllib3's response, raises the client's ``ApiException`` for a status outside 2xx.

    Why not the generated ``CoreV1Api``/``DiscoveryV1Api`` methods on recent clients: importing
    those two modules builds every pydantic model their methods mention (Pods, Nodes,
    PersistentVolumes... ~60 classes): about 0.6 s of CPU at start-up, a quarter of what the
    whole first sync of 100k Pods may cost, for types a raw list never uses.  The request is
    the one those methods send (same path, query parameters, ``Accept: application/json`` as the client picks it, authentication), made
    by the same ``ApiClient`` (``param_serialize`` then ``call_api``); a client without that
    interface (before the pydantic generator, when those modules were cheap) gets the methods.
    """
    try:
        path, api_class, method = _LIST_PATHS[resource]
    except KeyError:
        raise ValueError(f"unknown resource {resource!r}; expected one of {sorted(KINDS)}") from None
    if not (hasattr(api_client, "param_serialize") and hasattr(api_client, "call_api")):
        from kubernetes import client

        return cast("Callable[..., Any]", getattr(getattr(client, api_class)(api_client), method))
    from kubernetes.client.exceptions import ApiException

    def list_or_watch(_preload_content: bool = False, _request_timeout: Any = None, **params: Any) -> Any:
        if _preload_content:
            raise ValueError("list_function: only _preload_content=False is supported")
        unknown = set(params) - {name for name, _ in _QUERY_NAMES}
        if unknown:
            raise TypeError(f"unknown list parameters: {sorted(unknown)}")
        query = [(key, params[name]) for name, key in _QUERY_NAMES if params.get(name) is not None]
        request = api_client.param_serialize(
            method="GET", resource_path=path, query_params=query, header_params={"Accept": "application/json"},
            auth_settings=["BearerToken"])
        resp = api_client.call_api(*request, _request_timeout=_request_timeout)
        if not 200 <= resp.status <= 299:
            resp.read()
            raise ApiException.from_response(http_resp=resp, body=None, data=None)
        return resp.response

    list_or_watch.__name__ = method
    return list_or_watch


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        return f"unreadable: {e.errno}".encode()


class ClientSource:
    """The API client for one ``kubeconfig`` setting, rebuilt when what it was built from changed.

    ``factory(kubeconfig)`` returns ``(api_client, description)`` (:func:`load_api_client`).
    Replaced clients are kept open until :meth:`close`: a request on another thread may be using
    one.  Thread-safe.
    """

    def __init__(
        self,
        kubeconfig: str | ApiConfig | None,
        factory: Callable[[Any], tuple[Any, str]] = load_api_client,
        probe_timeouts: tuple[float, float] = (1.0, 2.0),
    ):
        self.kubeconfig = kubeconfig
        self.description = ""
        self.reloads = 0  # clients built after the first, from changed files
        self._factory = factory
        self._probe_timeouts = probe_timeouts
        self._lock = threading.Lock()
        self._client: Any = None
        self._fingerprint = b""
        self._failed = b""  # fingerprint of files that did not load (reported once)
        self._replaced: list[Any] = []

    def fingerprint(self) -> bytes:
        """A digest of everything the client is built from (re-read each call)."""
        h = hashlib.sha256()
        api = self.kubeconfig
        if isinstance(api, ApiConfig) and (api.kubeconfig is not None or api.endpoint is not None):
            # a rotated client certificate is picked up like a changed kubeconfig
            files = [api.kubeconfig] if api.kubeconfig is not None else []
            if api.kubeconfig is None and api.tls is not None:
                files = [api.tls.cert, api.tls.key, api.tls.cacert]
            for path in files:
                h.update(b"\0" + _read(path))
        elif isinstance(self.kubeconfig, str):
            h.update(_read(self.kubeconfig))
        else:
            for var in ("KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT", "KUBECONFIG"):
                h.update(f"{var}={os.environ.get(var, '')}\0".encode())
            h.update(_read(os.path.join(_SA_DIR, "ca.crt")))
            for path, _ in _kubeconfig_candidates():
                for p in path.split(os.pathsep):
                    if p:
                        h.update(b"\0" + _read(p))
        return h.digest()

    def load(self) -> tuple[Any, str]:
        """Build the client now; raises (RuntimeError, naming the problem) if it cannot be built."""
        with self._lock:
            fp = self.fingerprint()
            client, self.description = self._factory(self.kubeconfig)
            self._keep(client, fp)
            return client, self.description

    def current(self) -> Any:
        """The client, rebuilt first if the files changed since it was built.

        Never raises: a changed file that does not load is logged once (until it changes again)
        and the previous client is kept.
        """
        with self._lock:
            fp = self.fingerprint()
            if fp == self._fingerprint or fp == self._failed or self._client is None:
                return self._client
            try:
                client, description = self._factory(self.kubeconfig)
            except Exception as e:
                self._failed = fp
                _log.error("Kubernetes API client: {error}; keeping the previous credentials", error=str(e))
                return self._client
            self.description = description
            self.reloads += 1
            self._keep(client, fp)
            _log.info(
                "Kubernetes API credentials changed: now {source} ({host})",
                source=description,
                host=getattr(getattr(client, "configuration", None), "host", "?"),
            )
            return client

    def _keep(self, client: Any, fp: bytes) -> None:
        # caller holds the lock
        if self._client is not None:
            self._replaced.append(self._client)
        self._client = client
        self._fingerprint = fp
        self._failed = b""

    def probe(self) -> bool:
        """One cheap request (GET /version): True if the API server answered it (status < 500)."""
        from kubernetes import client as k8s

        api = self.current()
        if api is None:
            return False
        try:
            # without preloading, the client returns urllib3's response (its stubs say VersionInfo)
            resp = cast("BaseHTTPResponse", k8s.VersionApi(api).get_code(
                _preload_content=False, _request_timeout=self._probe_timeouts))
        except Exception as e:  # an ApiException carries the status the server answered with
            code = getattr(e, "status", None)
            return isinstance(code, int) and 0 < code < 500
        try:
            resp.read()
            resp.release_conn()
        except Exception:
            pass
        return resp.status < 500

    def close(self) -> None:
        with self._lock:
            clients = [*self._replaced, self._client]
            self._replaced, self._client = [], None
        for c in clients:
            if c is not None:
                try:
                    c.close()
                except Exception:
                    pass
