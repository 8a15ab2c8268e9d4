"""The config file: a YAML mirror of a Corefile, read into frozen dataclasses with all validation.

``servers`` is a list of server blocks, like a Corefile's ``zone:port { ... }`` blocks; each has
the plugins it enables as keys (``kubernetes``, ``forward``, ``cache``, ``health``...).  A key
that is present enables the plugin, as a directive does in a Corefile.  Everything is checked
here, before any socket is opened, so a bad file is rejected at start (and on reload, where the
old config keeps serving) with a message naming the file, the key and what was expected.

This module is the schema: the records of a server block and what each key means.  Turning the
file into data (size and UTF-8 checks, strict YAML, relative paths, the reload digest) is
:mod:`kubedns.configfile`; the ``kubernetes`` section, which the Kubernetes layer reads, is
:mod:`kubedns.configk8s`.  Both are re-exported here: ``from kubedns.config import X`` is the
one way to get any of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from kubedns.configbase import Address, ConfigError, Node
from kubedns.configfile import MAX_CONFIG_BYTES, file_digest, read_text, read_yaml, resolve_path
from kubedns.configk8s import DEFAULT_K8S_ZONES, POD_MODES, ApiConfig, KubernetesConfig, TlsConfig, parse_kubernetes
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
    "DEFAULT_K8S_ZONES",
    "MAX_CONFIG_BYTES",
    "POD_MODES",
    "ApiConfig",
    "Config",
    "ConfigError",
    "ErrorsConfig",
    "HealthConfig",
    "KubernetesConfig",
    "ListenConfig",
    "LoadbalanceConfig",
    "LogConfig",
    "ReloadConfig",
    "ServerBlock",
    "TlsConfig",
    "file_digest",
    "load",
    "parse",
    "parse_data",
]

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
    listen = node.get("listen", ":53").address(53)  # every address, as a Corefile's ".:53" without bind
    kube = parse_kubernetes(node.get("kubernetes"), config_path) if node.has("kubernetes") else None
    fwd = parse_forward(node.get("forward")) if node.has("forward") else None
    hosts = None
    if node.has("hosts"):
        from kubedns.plugins.hoststable import parse_hosts_config

        hosts = parse_hosts_config(node.get("hosts"), lambda p: resolve_path(config_path, p))
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
    config = parse_autopath_config(an, lambda p: resolve_path(config_path, p))
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


def parse(text: str, path: str = "<config>") -> Config:
    """Parse and validate config text; raises :class:`ConfigError` naming file, key, expectation."""
    return parse_data(read_yaml(text, path), path, text)


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


def load(path: str) -> Config:
    """Read and parse a config file, a Corefile or the YAML mirror (told apart by
    :func:`kubedns.corefile.is_corefile`); a missing or unreadable file is a :class:`ConfigError`
    too (:func:`kubedns.configfile.read_text`)."""
    text = read_text(path)
    from kubedns.corefile import is_corefile, parse_corefile_config

    if is_corefile(text, path):
        return parse_corefile_config(text, path)
    return parse(text, path)
