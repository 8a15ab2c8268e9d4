"""The ``kubernetes`` section: its record, where the API is, and the checks of every option.

Kept apart from :mod:`kubedns.config` because it is the one section the Kubernetes layer reads
(:mod:`kubedns.k8s.apiclient`, :mod:`kubedns.k8s.informer` and :mod:`kubedns.dns.records` take
:class:`KubernetesConfig`, :class:`ApiConfig` and :class:`TlsConfig`), and the largest: its
records say what is watched and how it is answered, its parser checks files, URLs, namespaces and
label selectors.  :mod:`kubedns.config` re-exports the records, so ``from kubedns.config import
KubernetesConfig`` keeps working.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from kubedns.configbase import Node
from kubedns.configfile import resolve_path

__all__ = ["DEFAULT_K8S_ZONES", "POD_MODES", "ApiConfig", "KubernetesConfig", "TlsConfig", "parse_kubernetes"]

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
    """A block's ``kubernetes`` key: the zones answered from the cluster and how."""

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


_K8S_KEYS = {
    "zones", "kubeconfig", "manifests", "pods", "ttl", "fallthrough", "namespaces", "labels",
    "endpoint_pod_names", "ignore_empty_service", "noendpoints", "endpoint", "tls", "context",
}
# a namespace name is a DNS-1123 label; anything else could never match a query
_NAMESPACE = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


def parse_kubernetes(node: Node, config_path: str) -> KubernetesConfig:
    node.mapping(_K8S_KEYS)
    zones = node.get("zones", list(DEFAULT_K8S_ZONES)).zones()
    kubeconfig = node.get("kubeconfig", None).optional_string()
    manifests = node.get("manifests", None).optional_string()
    if manifests is not None:
        manifests = resolve_path(config_path, manifests)
        if not os.path.isfile(manifests):
            why = "not a regular file" if os.path.exists(manifests) else "file not found"
            raise node.get("manifests").error(f"a readable YAML file of Kubernetes objects ({why})")
    if kubeconfig is not None:
        kubeconfig = resolve_path(config_path, kubeconfig)
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
        path = resolve_path(config_path, sub.string())
        if not os.path.isfile(path):
            why = "not a regular file" if os.path.exists(path) else "file not found"
            raise sub.error(f"a readable PEM file ({why})")
        paths[name] = path
    return TlsConfig(**paths)
