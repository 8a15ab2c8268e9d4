"""The config file: a YAML mirror of a Corefile, read into frozen dataclasses with all validation.

``servers`` is a list of server blocks, like a Corefile's ``zone:port { ... }`` blocks; each has
the plugins it enables as keys (``kubernetes``, ``forward``, ``cache``, ``health``...).  A key
that is present enables the plugin, as a directive does in a Corefile.  Everything is checked
here, before any socket is opened, so a bad file is rejected at start (and on reload, where the
old config keeps serving) with a message naming the file, the key and what was expected.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import yaml

from kubedns.configbase import Address, ConfigError, Node, key_name, short_repr
from kubedns.ops.logconfig import ErrorsConfig, LogConfig, parse_errors, parse_log

if TYPE_CHECKING:  # for the types only: their modules are imported where the keys are parsed
    from kubedns.forward.config import CacheConfig, ForwardConfig, LoopConfig
    from kubedns.plugins.acl import AclPolicy
    from kubedns.plugins.autopath import AutopathConfig
    from kubedns.plugins.hoststable import HostsConfig
    from kubedns.plugins.k8s_external import K8sExternalConfig
    from kubedns.plugins.rewrite import RewriteRule
    from kubedns.plugins.template import TemplateConfig
    from kubedns.plugins.transfer import TransferRule

__all__ = [
    "Config",
    "ConfigError",
    "HealthConfig",
    "KubernetesConfig",
    "LogConfig",
    "ServerBlock",
    "load",
    "parse",
]

DEFAULT_K8S_ZONES = ("cluster.local", "in-addr.arpa", "ip6.arpa")
POD_MODES = ("insecure", "verified", "disabled")


@dataclass(frozen=True, slots=True)
class TlsConfig:
    """``tls CERT KEY CACERT``: the client certificate, its key and the CA for ``endpoint``."""

    cert: str
    key: str
    cacert: str


@dataclass(frozen=True, slots=True)
class ApiConfig:
    """How to reach the API server: what :mod:`kubedns.k8s.apiclient` builds the client from.

    As CoreDNS: a ``kubeconfig`` (with its ``context``) wins over ``endpoint``; ``tls`` only
    applies with ``endpoint``; with neither, the in-cluster service account (then
    ``$KUBECONFIG``, then ``~/.kube/config``).  Only the first ``endpoint`` is used.
    """

    kubeconfig: str | None = None
    context: str | None = None
    endpoint: str | None = None
    tls: TlsConfig | None = None


@dataclass(frozen=True, slots=True)
class KubernetesConfig:
    zones: tuple[str, ...] = DEFAULT_K8S_ZONES
    kubeconfig: str | None = None
    manifests: str | None = None
    pods: str = "disabled"
    ttl: int = 5
    fallthrough: tuple[str, ...] = ()
    #: only these namespaces are answered for (empty: all); others are NXDOMAIN
    namespaces: tuple[str, ...] = ()
    #: label selector sent with every LIST/WATCH of services, endpointslices and pods ("": none)
    labels: str = ""
    #: an endpoint without a hostname is named by its targetRef Pod's name
    endpoint_pod_names: bool = False
    #: a ClusterIP Service without a ready endpoint address is NXDOMAIN
    ignore_empty_service: bool = False
    #: EndpointSlices are not watched: headless and endpoint names are NXDOMAIN
    noendpoints: bool = False
    endpoint: tuple[str, ...] = ()
    tls: TlsConfig | None = None
    context: str | None = None
    #: the block has ``autopath @kubernetes``: Pods are watched (their IP → namespace index) as
    #: with ``pods verified``, whatever ``pods`` says about the answers
    autopath: bool = False

    def resources(self) -> tuple[str, ...]:
        """The API resources the informer has to list and watch for this config."""
        base = ("namespaces", "services") if self.noendpoints else ("namespaces", "services", "endpointslices")
        return base + ("pods",) if self.pods == "verified" or self.autopath else base

    def api(self) -> ApiConfig:
        """Where the API is and how to authenticate (see :class:`ApiConfig` for the precedence)."""
        if self.kubeconfig is not None:
            return ApiConfig(kubeconfig=self.kubeconfig, context=self.context)
        if self.endpoint:
            return ApiConfig(endpoint=self.endpoint[0], tls=self.tls)
        return ApiConfig()

    def watch_key(self) -> tuple[Any, ...]:
        """What a store for this config watches.  Blocks and reloads with the same key share one
        store and watch: ``ttl``, ``zones``, ``fallthrough``, ``pods`` between ``insecure`` and
        ``disabled``, ``namespaces``, ``endpoint_pod_names`` and ``ignore_empty_service`` only
        change how answers are made from it (see :mod:`kubedns.stores`); the API and its
        credentials, ``labels`` and ``noendpoints`` change what is watched."""
        return (self.api(), self.manifests, self.resources(), self.labels)


@dataclass(frozen=True, slots=True)
class HealthConfig:
    listen: Address
    lameduck: float = 5.0


@dataclass(frozen=True, slots=True)
class ListenConfig:
    """An HTTP endpoint with nothing but an address (``ready``, ``prometheus``)."""

    listen: Address


@dataclass(frozen=True, slots=True)
class ReloadConfig:
    """CoreDNS's ``reload [INTERVAL] [JITTER]``: check every INTERVAL plus a random offset of up
    to JITTER/2 either way, drawn when the key is (re)applied (0: no jitter)."""

    interval: float = 30.0
    jitter: float = 15.0


def _parse_reload(rn: Node) -> ReloadConfig:
    """``reload:`` (empty or true), an INTERVAL, or ``{interval, jitter}``; JITTER is 0 or at
    least 1s, and above half the interval it is half the interval (as CoreDNS)."""
    if rn.value is None or rn.value is True:
        return ReloadConfig()
    if not isinstance(rn.value, dict):
        interval = rn.duration(2.0)
        return ReloadConfig(interval, min(15.0, interval / 2))
    rn.mapping({"interval", "jitter"})
    interval = rn.get("interval", 30.0).duration(2.0)
    jn = rn.get("jitter", 15.0)
    jitter = jn.duration(0.0)
    if 0 < jitter < 1.0:
        raise jn.error("a duration of 0s (no jitter) or at least 1s")
    return ReloadConfig(interval, min(jitter, interval / 2))


@dataclass(frozen=True, slots=True)
class LoadbalanceConfig:
    """``loadbalance [round_robin]``: A, AAAA and MX records in a new order per answer."""

    policy: str = "round_robin"


@dataclass(frozen=True, slots=True)
class ServerBlock:
    zones: tuple[str, ...]
    listen: Address
    kubernetes: KubernetesConfig | None = None
    forward: ForwardConfig | None = None
    cache: CacheConfig | None = None
    loop: LoopConfig | None = None
    hosts: HostsConfig | None = None
    health: HealthConfig | None = None
    ready: ListenConfig | None = None
    prometheus: ListenConfig | None = None
    reload: ReloadConfig | None = None
    log: LogConfig | None = None
    errors: ErrorsConfig | None = None
    loadbalance: LoadbalanceConfig | None = None
    debug: bool = False  # CoreDNS's `debug`: accepted; kubedns has no panic recovery to turn off
    rewrite: tuple[RewriteRule, ...] = ()  # kubedns.plugins.rewrite
    template: tuple[TemplateConfig, ...] = ()  # kubedns.plugins.template
    # any, acl, bufsize, minimal, transfer: read by kubedns.plugins.policies
    any: bool = False
    acl: tuple[AclPolicy, ...] | None = None
    bufsize: int | None = None
    minimal: bool = False
    transfer: tuple[TransferRule, ...] | None = None
    autopath: AutopathConfig | None = None  # kubedns.plugins.autopath
    k8s_external: K8sExternalConfig | None = None  # kubedns.plugins.k8s_external
    index: int = 0


@dataclass(frozen=True, slots=True)
class Config:
    path: str
    servers: tuple[ServerBlock, ...]
    workers: int = 1
    tcp_idle_timeout: float = 10.0
    raw_text: str = field(default="", compare=False, repr=False)

    def listeners(self) -> dict[Address, tuple[ServerBlock, ...]]:
        """Blocks grouped by listen address: blocks on one address share its sockets."""
        out: dict[Address, list[ServerBlock]] = {}
        for b in self.servers:
            out.setdefault(b.listen, []).append(b)
        return {a: tuple(bs) for a, bs in out.items()}

    def first(self, attr: str) -> Any:
        """The first block's setting for a process-wide key (health, ready, prometheus...)."""
        for b in self.servers:
            v = getattr(b, attr)
            if v is not None:
                return v
        return None


_BLOCK_KEYS = {
    "zones", "listen", "kubernetes", "forward", "cache", "loop", "hosts",
    "health", "ready", "prometheus", "reload", "log", "errors", "loadbalance", "debug",
    "rewrite", "template",
    "any", "acl", "bufsize", "minimal", "transfer",
    "autopath", "k8s_external",
}
_K8S_KEYS = {
    "zones", "kubeconfig", "manifests", "pods", "ttl", "fallthrough", "namespaces", "labels",
    "endpoint_pod_names", "ignore_empty_service", "noendpoints", "endpoint", "tls", "context",
}
# a namespace name is a DNS-1123 label; anything else could never match a query
_NAMESPACE = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


def _resolve_path(config_path: str, p: str) -> str:
    """Relative paths are taken from the config file's folder, else from the working directory."""
    if os.path.isabs(p):
        return p
    beside = os.path.join(os.path.dirname(os.path.abspath(config_path)), p)
    return beside if os.path.exists(beside) or not os.path.exists(p) else os.path.abspath(p)


def _parse_kubernetes(node: Node, config_path: str) -> KubernetesConfig:
    node.mapping(_K8S_KEYS)
    zones = node.get("zones", list(DEFAULT_K8S_ZONES)).zones()
    kubeconfig = node.get("kubeconfig", None).optional_string()
    manifests = node.get("manifests", None).optional_string()
    if manifests is not None:
        manifests = _resolve_path(config_path, manifests)
        if not os.path.isfile(manifests):
            why = "not a regular file" if os.path.exists(manifests) else "file not found"
            raise node.get("manifests").error(f"a readable YAML file of Kubernetes objects ({why})")
    if kubeconfig is not None:
        kubeconfig = _resolve_path(config_path, kubeconfig)
    ft_node = node.get("fallthrough", [])
    if ft_node.value is True:
        fallthrough = zones
    elif ft_node.value is False or ft_node.value is None:
        fallthrough = ()
    else:
        fallthrough = ft_node.zones(allow_empty=True)
    context = node.get("context", None).optional_string()
    if context is not None and kubeconfig is None:
        raise node.get("context").error("context only with kubeconfig (the file the context is chosen from)")
    if manifests is not None and node.get("labels", None).value is not None:
        raise node.get("labels").error("labels only with the API (the API server selects; a manifests file is read whole)")
    return KubernetesConfig(
        zones=zones,
        kubeconfig=kubeconfig,
        manifests=manifests,
        pods=node.get("pods", "disabled").choice(POD_MODES),
        ttl=node.get("ttl", 5).integer(0, 3600),
        fallthrough=fallthrough,
        namespaces=_namespaces(node.get("namespaces", None)),
        labels=_labels(node.get("labels", None)),
        endpoint_pod_names=node.get("endpoint_pod_names", False).boolean(),
        ignore_empty_service=node.get("ignore_empty_service", False).boolean(),
        noendpoints=node.get("noendpoints", False).boolean(),
        endpoint=_endpoints(node.get("endpoint", None)),
        tls=_tls(node.get("tls", None), config_path),
        context=context,
    )


def _namespaces(node: Node) -> tuple[str, ...]:
    if node.value is None:
        return ()
    if isinstance(node.value, str):
        node.value = node.value.split()
    names = tuple(dict.fromkeys(n.string() for n in node.items()))
    if not names:
        raise node.error("a non-empty list of namespace names (leave the key out to answer for all)")
    for n in node.items():
        if not _NAMESPACE.fullmatch(n.value):
            raise n.error("a namespace name: lower-case letters, digits and '-', at most 63")
    return names


def _labels(node: Node) -> str:
    from kubedns.k8s.labels import SelectorError, canonical

    if node.value is None:
        return ""
    text = node.string()
    try:
        return canonical(text)
    except SelectorError as e:
        raise node.error(f"a Kubernetes label selector like \"app=web,tier in (a, b)\" ({e})") from None


def _endpoints(node: Node) -> tuple[str, ...]:
    """``endpoint URL...``: CoreDNS takes several and uses the first (the rest is deprecated)."""
    if node.value is None:
        return ()
    if isinstance(node.value, str):
        node.value = [node.value]
    out = []
    expect = 'the API server\'s URL, like "https://10.0.0.1:6443"'
    for n in node.items():
        url = n.string().strip()
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 (raises ValueError for a bad port)
        except ValueError as e:
            raise n.error(f"{expect} ({e})") from None
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
            raise n.error(f"{expect}: http:// or https://, a host, no query")
        out.append(url.rstrip("/"))
    if not out:
        raise node.error(f"{expect} (a list of at least one)")
    return tuple(out)


def _tls(node: Node, config_path: str) -> TlsConfig | None:
    if node.value is None:
        return None
    node.mapping({"cert", "key", "cacert"})
    paths = {}
    for name in ("cert", "key", "cacert"):
        sub = node.get(name)
        path = _resolve_path(config_path, sub.string())
        if not os.path.isfile(path):
            why = "not a regular file" if os.path.exists(path) else "file not found"
            raise sub.error(f"a readable PEM file ({why})")
        paths[name] = path
    return TlsConfig(**paths)


def _http_address(node: Node, default_port: int) -> tuple[Address, Node]:
    """``"host:port"``, ``":port"``, or a mapping with ``listen:``; returns the address and the map."""
    if node.value is None or node.value is True or node.value == {}:
        return Address("", default_port), Node({}, node.path, node.key)
    if isinstance(node.value, str):
        return node.address(default_port), Node({}, node.path, node.key)
    if not isinstance(node.value, dict):  # health: 8080, health: false
        raise node.error(f'an address "host:port" or ":{default_port}", or a mapping with listen')
    return node.get("listen", f":{default_port}").address(default_port), node


def _parse_block(node: Node, config_path: str, index: int) -> ServerBlock:
    from kubedns.forward.config import parse_cache, parse_forward, parse_loop
    from kubedns.plugins.policies import parse_policies

    node.mapping(_BLOCK_KEYS)
    zones = node.get("zones", ["."]).zones()
    listen = node.get("listen", "0.0.0.0:53").address(53)
    kube = _parse_kubernetes(node.get("kubernetes"), config_path) if node.has("kubernetes") else None
    fwd = parse_forward(node.get("forward")) if node.has("forward") else None
    hosts = None
    if node.has("hosts"):
        from kubedns.plugins.hoststable import parse_hosts_config

        hosts = parse_hosts_config(node.get("hosts"), lambda p: _resolve_path(config_path, p))
    template = _parse_template(node)
    if kube is None and fwd is None and hosts is None and not template:
        raise ConfigError(config_path, node.key,
                          "a server block with at least one of kubernetes or forward or hosts or template",
                          has_found=False)
    health = ready = prom = None
    if node.has("health"):
        addr, sub = _http_address(node.get("health"), 8080)
        sub.mapping({"listen", "lameduck"})
        health = HealthConfig(addr, sub.get("lameduck", 5.0).duration(0.0, 300.0))
    if node.has("ready"):
        addr, sub = _http_address(node.get("ready"), 8181)
        sub.mapping({"listen"})
        ready = ListenConfig(addr)
    if node.has("prometheus"):
        addr, sub = _http_address(node.get("prometheus"), 9153)
        sub.mapping({"listen"})
        prom = ListenConfig(addr)
    reload = _parse_reload(node.get("reload")) if node.has("reload") else None
    log = parse_log(node.get("log")) if node.has("log") else None
    errors = parse_errors(node.get("errors")) if node.has("errors") else None
    loadbalance = _parse_loadbalance(node.get("loadbalance")) if node.has("loadbalance") else None
    autopath = _parse_autopath(node, config_path, kube is not None)
    if autopath is not None and autopath.kubernetes and kube is not None:
        kube = replace(kube, autopath=True)  # its Pods are watched: their IPs say who asks
    return ServerBlock(
        zones=zones,
        listen=listen,
        kubernetes=kube,
        forward=fwd,
        cache=parse_cache(node.get("cache")) if node.has("cache") else None,
        loop=parse_loop(node.get("loop")) if node.has("loop") else None,
        hosts=hosts,
        health=health,
        ready=ready,
        prometheus=prom,
        reload=reload,
        log=log,
        errors=errors,
        loadbalance=loadbalance,
        debug=_parse_debug(node),
        rewrite=_parse_rewrite(node),
        template=template,
        autopath=autopath,
        k8s_external=_parse_k8s_external(node, kube is not None),
        index=index,
        **parse_policies(node),
    )


def _parse_rewrite(node: Node) -> tuple[RewriteRule, ...]:
    from kubedns.plugins.rewrite import parse_rewrite_config

    return parse_rewrite_config(node.get("rewrite")) if node.has("rewrite") else ()


def _parse_autopath(node: Node, config_path: str, has_kubernetes: bool) -> AutopathConfig | None:
    if not node.has("autopath"):
        return None
    from kubedns.plugins.autopath import check_block, parse_autopath_config

    an = node.get("autopath")
    config = parse_autopath_config(an, lambda p: _resolve_path(config_path, p))
    check_block(config, has_kubernetes, config_path, an.key)
    return config


def _parse_k8s_external(node: Node, has_kubernetes: bool) -> K8sExternalConfig | None:
    if not node.has("k8s_external"):
        return None
    from kubedns.plugins.k8s_external import parse_k8s_external_config

    en = node.get("k8s_external")
    if not has_kubernetes:  # CoreDNS: "kubernetes plugin not loaded"
        raise en.error("k8s_external in a block with kubernetes (it answers from its Services)", show=False)
    return parse_k8s_external_config(en)


def _parse_template(node: Node) -> tuple[TemplateConfig, ...]:
    from kubedns.plugins.template import parse_template_config

    return parse_template_config(node.get("template")) if node.has("template") else ()


def _parse_debug(node: Node) -> bool:
    """``debug: {}`` (or empty, or true) as CoreDNS's ``debug``; ``false`` or no key: off."""
    if not node.has("debug"):
        return False
    dn = node.get("debug")
    if dn.value is True or dn.value is False:
        return bool(dn.value)
    dn.mapping(set())
    return True


def _parse_loadbalance(node: Node) -> LoadbalanceConfig | None:
    """``loadbalance: round_robin``, ``{policy: round_robin}``, ``{}`` or empty (the default,
    as CoreDNS's bare ``loadbalance``); ``false`` leaves it off."""
    from kubedns.plugins.loadbalance import POLICIES

    if node.value is False:
        return None
    if node.value is None or node.value is True:
        return LoadbalanceConfig()
    if isinstance(node.value, str):
        return LoadbalanceConfig(node.choice(POLICIES))
    if not isinstance(node.value, dict):
        raise node.error(f"{' | '.join(POLICIES)}, or a mapping with policy")
    node.mapping({"policy"})
    return LoadbalanceConfig(node.get("policy", "round_robin").choice(POLICIES))


_MERGE_TAG = "tag:yaml.org,2002:merge"


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, with a scalar it cannot convert (``2001-13-45``, ``!!int abc``,
    ``!!bool maybe``) reported as a YAML error at its line instead of a bare ValueError/KeyError."""

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except (yaml.YAMLError, RecursionError):
            raise
        except Exception as e:
            kind = str(node.tag).rsplit(":", 1)[-1]
            why = f" ({e})" if isinstance(e, ValueError) else ""
            raise yaml.constructor.ConstructorError(
                None, None, f"{short_repr(node.value)} is not a valid {kind}{why}", node.start_mark
            ) from None


def _check_duplicate_keys(root: yaml.Node, path: str) -> None:
    """YAML keys are unique, but PyYAML keeps the last of two silently: a block with ``forward``
    twice would drop the first without a word.  Reject it naming the key path and both lines."""
    stack: list[tuple[yaml.Node, str]] = [(root, "")]
    seen: set[int] = set()  # aliases share nodes: visit each once
    while stack:
        node, key = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            first: dict[tuple[str, str], int] = {}
            for k, v in node.value:
                raw = str(k.value) if isinstance(k, yaml.ScalarNode) else None
                name = None if raw is None else key_name(raw)
                child = key if name is None else (f"{key}.{name}" if key else name)
                if raw is not None and k.tag != _MERGE_TAG:
                    line = k.start_mark.line + 1
                    if (k.tag, raw) in first:
                        raise ConfigError(
                            path, child, f"each key once in a mapping (line {line} repeats line {first[(k.tag, raw)]})",
                            has_found=False,
                        )
                    first[(k.tag, raw)] = line
                stack.append((v, child))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend((v, f"{key}[{i}]") for i, v in enumerate(node.value))


def _read_yaml(text: str, path: str) -> Any:
    """The YAML document; any YAML problem is a one-line :class:`ConfigError` naming the line."""
    loader = None
    try:
        loader = _Loader(text)  # checks the characters at once
        node = loader.get_single_node()
        if node is None:
            return None
        _check_duplicate_keys(node, path)
        return loader.construct_document(node)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = " ".join(str(e.problem or e.context or e).split())
        raise ConfigError(path, "", f"valid YAML{where} ({problem})", has_found=False) from None
    except yaml.reader.ReaderError as e:  # a character YAML does not allow (NUL, most control characters)
        line = text.count("\n", 0, e.position) + 1
        column = e.position - (text.rfind("\n", 0, e.position) + 1) + 1
        code = ord(e.character) if isinstance(e.character, str) else int(e.character)
        raise ConfigError(
            path, "", f"valid YAML at line {line}, column {column} (character #x{code:04x}: {e.reason})",
            has_found=False,
        ) from None
    except yaml.YAMLError as e:
        raise ConfigError(path, "", f"valid YAML ({' '.join(str(e).split())})", has_found=False) from None
    except RecursionError:
        raise ConfigError(path, "", "valid YAML nested less deeply", has_found=False) from None
    finally:
        if loader is not None:
            loader.dispose()


def parse(text: str, path: str = "<config>") -> Config:
    """Parse and validate config text; raises :class:`ConfigError` naming file, key, expectation."""
    return parse_data(_read_yaml(text, path), path, text)


def parse_data(data: Any, path: str, raw_text: str = "") -> Config:
    """Validate the config as YAML gives it (a Corefile is mapped to the same shape first)."""
    root = Node(data, path)
    if not isinstance(data, dict):
        raise root.error("a mapping with a 'servers' list", show=data is not None)
    root.mapping({"servers", "workers", "tcp_idle_timeout"})
    servers_node = root.get("servers")
    blocks = tuple(_parse_block(n, path, i) for i, n in enumerate(servers_node.items()))
    if not blocks:
        raise servers_node.error("a non-empty list of server blocks")
    seen: dict[tuple[Address, str], int] = {}
    for b in blocks:
        for z in b.zones:
            if seen.get((b.listen, z)) == b.index:
                raise ConfigError(path, f"servers[{b.index}].zones", "each zone once", z or ".")
            if (b.listen, z) in seen:
                raise ConfigError(
                    path,
                    f"servers[{b.index}].zones",
                    f"zones not already served on {b.listen} by servers[{seen[(b.listen, z)]}]",
                    z or ".",
                )
            seen[(b.listen, z)] = b.index
    workers = root.get("workers", 1).integer(1, 64)
    idle = root.get("tcp_idle_timeout", 10.0).duration(0.1, 3600.0)
    return Config(path=path, servers=blocks, workers=workers, tcp_idle_timeout=idle, raw_text=raw_text)


MAX_CONFIG_BYTES = 1 << 20  # a Corefile mirror is a few KB; more is a wrong path, not a config


def load(path: str) -> Config:
    """Read and parse a config file; a missing or unreadable file is a :class:`ConfigError` too.

    Only a regular file of at most 1 MiB of UTF-8 is read: a FIFO or a device (``/dev/zero``)
    named by mistake would otherwise block the start or read until memory runs out.
    """
    try:
        if not stat.S_ISREG(os.stat(path).st_mode) and not os.path.isdir(path):  # open() names a directory
            raise ConfigError(path, "", "a regular file (not a device, pipe or socket)", has_found=False)
        with open(path, "rb") as f:
            data = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as e:
        raise ConfigError(path, "", f"a readable config file ({e.strerror or e})", has_found=False) from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(path, "", f"a config file of at most {MAX_CONFIG_BYTES >> 20} MiB", has_found=False)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        bad = data[e.start : e.end]
        raise ConfigError(path, "", f"UTF-8 text (invalid byte at line {line}: {bad!r})", has_found=False) from None
    from kubedns.corefile import is_corefile, parse_corefile_config

    if is_corefile(text, path):
        return parse_corefile_config(text, path)
    return parse(text, path)


def file_digest(path: str) -> str:
    """What reload compares: the file's SHA-256, and for a Corefile that of every file it imports
    too (and what each glob matched), so an edit to an imported file is a change.  Equal to the
    digest of :attr:`Config.raw_text` for the config loaded from the same files.  OSError if the
    file itself cannot be read."""
    import hashlib

    with open(path, "rb") as f:
        data = f.read(MAX_CONFIG_BYTES + 1)
    from kubedns.corefile import is_corefile, sources_text

    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return hashlib.sha256(data).hexdigest()
    if is_corefile(text, path):
        return hashlib.sha256(sources_text(text, path).encode()).hexdigest()
    return hashlib.sha256(data).hexdigest()
