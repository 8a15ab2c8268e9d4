"""The cluster zones as a twisted.names resolver, for use in standard resolver chains.

kubedns's own server asks :class:`~kubedns.dns.records.ClusterZones` directly (synchronously, to keep
the per-query cost low and to keep rcodes exact).  This adapter exposes the same answers through
twisted.names' ``IResolver`` so they compose with the rest of twisted.names: a
``ResolverChain([KubernetesAuthority(...), client.Resolver(...)])``, ``DNSServerFactory``
authorities, or ``getHostByName`` in a Twisted program running next to a cluster.

Exceptions carry the outcome, as twisted.names expects between resolvers:

* a name outside our zones (or a falling-through miss) fails with ``DomainError``: the chain
  moves on to the next resolver;
* NXDOMAIN fails with :class:`ClusterNameError`, an ``AuthoritativeDomainError`` carrying the
  zone SOA, which stops the chain;
* not yet synced fails with :class:`ClusterNotSyncedError`, deliberately *not* a ``DomainError``
  (twisted's ``DNSServerError`` is one, and a chain would move on and maybe answer NXDOMAIN from
  elsewhere): it stops the chain, and ``DNSServerFactory`` turns it into SERVFAIL;
* a zone transfer (AXFR, IXFR), which kubedns's server REFUSES, fails with
  :class:`ClusterTransferRefusedError`, also no ``DomainError``: the chain stops there.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.names import common, dns
from twisted.names.error import AuthoritativeDomainError, DomainError

from kubedns.dns.records import ClusterZones

__all__ = ["ClusterNameError", "ClusterNotSyncedError", "ClusterTransferRefusedError", "KubernetesAuthority"]


class ClusterNotSyncedError(Exception):
    """The cluster has not been listed yet: SERVFAIL, and no other resolver may answer instead."""


class ClusterTransferRefusedError(Exception):
    """AXFR or IXFR of a cluster zone: refused, as by CoreDNS without its transfer plugin."""


class ClusterNameError(AuthoritativeDomainError):
    """NXDOMAIN for a name in a cluster zone; ``.soa`` is the zone's SOA record."""

    def __init__(self, name: bytes, soa: dns.RRHeader | None):
        super().__init__(name)
        self.soa = soa


class KubernetesAuthority(common.ResolverBase):
    """``IResolver`` over the live store of one ``kubernetes`` block."""

    def __init__(self, zones: ClusterZones):
        common.ResolverBase.__init__(self)
        self.zones = zones

    def _lookup(self, name: bytes, cls: int, type: int, timeout: Any = None) -> defer.Deferred:  # noqa: A002
        if cls not in (dns.IN, dns.ANY):
            return defer.fail(DomainError(name))
        res = self.zones.answer(name, type)
        if res is None:
            return defer.fail(DomainError(name))
        zone, ans = res
        if ans.rcode == dns.ESERVER:
            return defer.fail(ClusterNotSyncedError(name))
        if ans.rcode == dns.EREFUSED:
            return defer.fail(ClusterTransferRefusedError(name))
        if ans.rcode == dns.ENAME:
            if self.zones.falls_through(zone, ans):
                return defer.fail(DomainError(name))
            return defer.fail(ClusterNameError(name, ans.authority[0] if ans.authority else None))
        return defer.succeed((ans.answers, ans.authority, ans.additional))
