"""Node-local cache mode: kubedns in the role of NodeLocal DNSCache (``node-cache``).

``twistd -n kubedns --config conf/nodelocal.Corefile --node-local`` runs on every node (a
DaemonSet with hostNetwork, or the systemd unit conf/kubedns-nodelocal.service).  The Corefile
says what to serve, as node-cache's does: the cluster zone and the reverse zones forwarded to the
cluster DNS Service over TCP (``force_tcp``) with a cache, everything else to the node's
/etc/resolv.conf, listening (``bind``) on the link-local address 169.254.20.10.  ``--node-local``
adds what node-cache does around it: before the listeners are bound, the ``nodelocaldns`` dummy
interface carrying every address the config listens on, and the NOTRACK rules for them
(:mod:`kubedns.node.netsetup`); after the listeners are closed (SIGTERM, stop), both removed.

The addresses are taken from the config's listeners, so the interface and ``bind`` cannot
disagree (node-cache takes ``-localip`` and the Corefile separately); a listener on every address
(``.:53`` without ``bind``) is refused in this mode, since there would be nothing to put on the
interface.  The interface is set up at start: a reload that changes ``bind`` does not change it.
Only the process twistd started (worker 0) touches the network; workers bind the same addresses.
While serving, the set-up is checked every ``--node-local-check`` seconds (60 by default), as
node-cache re-checks its interface and rules, and written again if something removed part of it
(an iptables/nftables flush by another agent, the interface deleted by hand).
"""

from __future__ import annotations

import ipaddress
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from twisted.application import service
from twisted.internet import task
from twisted.logger import Logger

from kubedns.config import Config
from kubedns.node import netsetup

log = Logger(namespace="kubedns.node.nodelocal")


@dataclass(frozen=True, slots=True)
class NodeLocalPlan:
    """What ``--node-local`` sets up: the interface, its addresses, the ports the rules cover."""

    interface: str
    ips: tuple[str, ...]
    ports: tuple[int, ...]


def plan(config: Config, interface: str = netsetup.DEFAULT_INTERFACE) -> NodeLocalPlan:
    """The plan for ``config``; a :class:`ValueError` with one line if it cannot be served locally."""
    if not interface or len(interface) > 15 or "/" in interface or interface.strip() != interface:
        raise ValueError(f"--node-local-interface: an interface name of 1 to 15 characters, got {interface!r}")
    ips: list[str] = []
    ports: set[int] = set()
    for addr in config.listeners():
        if not addr.host or ipaddress.ip_address(addr.host).is_unspecified:
            raise ValueError(f"--node-local: the config listens on every address (:{addr.port}); "
                             "name the link-local address with bind (e.g. bind 169.254.20.10)")
        ip = str(ipaddress.ip_address(addr.host))
        if ip not in ips:
            ips.append(ip)
        ports.add(addr.port)
    if not ips:
        raise ValueError("--node-local: the config has no DNS listener")
    return NodeLocalPlan(interface, tuple(ips), tuple(sorted(ports)))


class NodeLocalNetwork(service.Service):
    """Interface and rules up in ``privilegedStartService``, down in ``stopService``.

    Put first among the DNS service's children (:meth:`kubedns.service.KubeDNS.add_first`): it is
    then set up before any listener binds and removed after the listeners' stop has begun.
    ``setup``/``teardown``/``missing`` and the reactor are injected for tests without netlink.
    """

    name = "node-local"

    def __init__(self, plan: NodeLocalPlan, *, check_interval: float = 60.0, reactor: Any = None,
                 setup: Callable[[str, Sequence[str], Sequence[int]], Any] = netsetup.setup,
                 teardown: Callable[[str], None] = netsetup.teardown,
                 missing: Callable[[str, Sequence[str]], list[str]] = netsetup.missing):
        self.plan = plan
        self.check_interval = check_interval
        self.reactor = reactor
        self._setup = setup
        self._teardown = teardown
        self._missing = missing
        self._loop: task.LoopingCall | None = None
        self.installed = False
        self.repairs = 0

    def privilegedStartService(self) -> None:  # noqa: N802 (Twisted API)
        p = self.plan
        try:
            self._setup(p.interface, p.ips, p.ports)
        except (netsetup.NetSetupError, OSError) as e:
            # as for an address that cannot be bound: one line on the real stderr, exit 1
            # (netsetup.setup removed what it had made itself, and leaves what it found)
            stream = sys.__stderr__ or sys.stderr
            stream.write(f"kubedns: cannot set up node-local networking: {e}\n")
            stream.flush()
            raise SystemExit(1) from None
        self.installed = True
        log.info("kubedns node-local: interface {iface} with {ips}, NOTRACK for port(s) {ports}",
                 iface=p.interface, ips=", ".join(p.ips), ports=", ".join(map(str, p.ports)))
        super().privilegedStartService()

    def startService(self) -> None:  # noqa: N802 (Twisted API)
        super().startService()
        if self.installed and self.check_interval > 0:
            self._loop = task.LoopingCall(self.check)
            if self.reactor is not None:
                self._loop.clock = self.reactor
            self._loop.start(self.check_interval, now=False)

    def check(self) -> None:
        """Write the set-up again if part of it is gone; errors are logged, the next check retries."""
        p = self.plan
        try:
            gone = self._missing(p.interface, p.ips)
            if not gone:
                return
            log.warn("kubedns node-local: {gone} gone; setting up again", gone=", ".join(gone))
            self._setup(p.interface, p.ips, p.ports)
            self.repairs += 1
        except (netsetup.NetSetupError, OSError) as e:
            log.error("kubedns node-local: check failed: {err}", err=e)

    def stopService(self) -> None:  # noqa: N802 (Twisted API)
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        if not self.installed:
            return
        self.installed = False
        try:
            self._teardown(self.plan.interface)
        except (netsetup.NetSetupError, OSError) as e:
            log.error("kubedns node-local: cleanup failed: {err}", err=e)
            return
        log.info("kubedns node-local: interface {iface} and its rules removed", iface=self.plan.interface)
