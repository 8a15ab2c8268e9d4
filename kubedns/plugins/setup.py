"""A server block's per-query plugins, from its config and the running parts it answers from.

The one place that decides which plugins a block runs; :func:`kubedns.plugins.base.build_chain`
then puts them in CoreDNS's order.  The running parts (the cluster answers over a shared store,
the forward chain with its cache, the loop detector) are made and kept across reloads by
:mod:`kubedns.service`; the plugins here are thin and rebuilt with the block.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kubedns.config import ServerBlock
from kubedns.plugins.base import Plugin
from kubedns.plugins.kubernetes import KubernetesPlugin

if TYPE_CHECKING:
    from kubedns.forward.chain import ForwardChain
    from kubedns.forward.loop import LoopDetector
    from kubedns.plugins.hosts import HostsPlugin

__all__ = ["block_plugins"]


def block_plugins(config: ServerBlock, kubernetes: KubernetesPlugin | None, forward: ForwardChain | None = None,
                  loop: LoopDetector | None = None, hosts: HostsPlugin | None = None) -> list[Plugin]:
    """The plugins of one block (in any order: the chain sorts them); ``hosts`` is the block's
    running :class:`~kubedns.plugins.hosts.HostsPlugin`, kept across reloads like ``forward``."""
    out: list[Plugin] = []
    if hosts is not None:
        out.append(hosts)
    if kubernetes is not None:
        out.append(kubernetes)
    if forward is not None:
        from kubedns.plugins.forward import ForwardPlugin

        out.append(ForwardPlugin(forward))
    if loop is not None:
        from kubedns.plugins.loop import LoopPlugin

        out.append(LoopPlugin(loop))
    lb = config.loadbalance
    if lb is not None:
        from kubedns.plugins.loadbalance import LoadbalancePlugin

        out.append(LoadbalancePlugin(lb.policy))
    if config.rewrite:
        from kubedns.plugins.rewrite import RewritePlugin

        out.append(RewritePlugin(config.rewrite))
    if config.template:
        from kubedns.plugins.template import TemplatePlugin

        out.append(TemplatePlugin(config.template, config.zones))
    out.extend(_policy_plugins(config, kubernetes))
    if config.autopath is not None:
        from kubedns.plugins.autopath import AutopathPlugin

        out.append(AutopathPlugin(config.autopath, config.zones, kubernetes))
    if config.k8s_external is not None and kubernetes is not None:
        from kubedns.plugins.k8s_external import K8sExternalPlugin

        out.append(K8sExternalPlugin(config.k8s_external, config.zones, kubernetes))
    return out


def _policy_plugins(config: ServerBlock, kubernetes: KubernetesPlugin | None) -> list[Plugin]:
    """``any``, ``acl``, ``bufsize``, ``minimal`` and ``transfer`` (:mod:`kubedns.plugins.policies`)."""
    out: list[Plugin] = []
    if config.any:
        from kubedns.plugins.any import AnyPlugin

        out.append(AnyPlugin())
    if config.acl is not None:
        from kubedns.plugins.acl import AclPlugin

        out.append(AclPlugin(config.acl, config.zones))
    if config.bufsize is not None:
        from kubedns.plugins.bufsize import BufsizePlugin

        out.append(BufsizePlugin(config.bufsize))
    if config.minimal:
        from kubedns.plugins.minimal import MinimalPlugin

        out.append(MinimalPlugin())
    if config.transfer is not None:
        from kubedns.plugins.transfer import TransferPlugin

        out.append(TransferPlugin(config.transfer, config.zones, kubernetes))
    return out
