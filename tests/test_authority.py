"""The cluster zones through twisted.names' resolver interface, composed in a ResolverChain.

Twisted's own ``ResolverChain`` and ``lookupAddress`` drive the adapter; the "upstream" is a
second in-memory resolver, so no packet is sent.  Checks that exceptions carry the outcomes the
way twisted.names expects: DomainError moves on, the NXDOMAIN error stops the chain with the
SOA, SERVFAIL before sync, a zone transfer is refused without asking further.
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.names import dns, resolve
from twisted.trial import unittest

from kubedns.authority import ClusterNameError, ClusterNotSyncedError, ClusterTransferRefusedError, KubernetesAuthority
from kubedns.config import KubernetesConfig
from kubedns.dns.records import ClusterZones
from kubedns.k8s.store import Store
from tests.support.records_table import fill


class _Other:
    """A resolver standing for the forward chain: knows one external name."""

    def __init__(self) -> None:
        self.asked: list[bytes] = []

    def query(self, query: dns.Query, timeout=None):
        self.asked.append(query.name.name)
        if query.name.name == b"google.com":
            rr = dns.RRHeader(b"google.com", dns.A, payload=dns.Record_A("192.0.2.1"))
            return defer.succeed(([rr], [], []))
        return defer.fail(dns.DomainError(query.name.name))


def _chain(synced: bool = True, **kw):
    store = Store(required=("namespaces", "services", "endpointslices", "pods"))
    if synced:
        fill(store)
    other = _Other()
    return resolve.ResolverChain([KubernetesAuthority(ClusterZones(store, KubernetesConfig(**kw))), other]), other


class AuthorityTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_service_answered_without_asking_further(self):
        chain, other = _chain()
        ans, auth, add = yield chain.lookupAddress("nginx.default.svc.cluster.local")
        self.assertEqual([rr.payload.dottedQuad() for rr in ans], ["10.96.0.100"])
        self.assertEqual(other.asked, [])

    @defer.inlineCallbacks
    def test_outside_the_zones_goes_on_down_the_chain(self):
        chain, other = _chain()
        ans, _, _ = yield chain.lookupAddress("google.com")
        self.assertEqual(ans[0].payload.dottedQuad(), "192.0.2.1")
        self.assertEqual(other.asked, [b"google.com"])

    @defer.inlineCallbacks
    def test_nxdomain_stops_the_chain_with_soa(self):
        chain, other = _chain()
        with self.assertRaises(ClusterNameError) as e:
            yield chain.lookupAddress("missing.default.svc.cluster.local")
        self.assertEqual(e.exception.soa.type, dns.SOA)
        self.assertEqual(other.asked, [])

    @defer.inlineCallbacks
    def test_fallthrough_miss_continues(self):
        chain, other = _chain(fallthrough=("in-addr.arpa",))
        with self.assertRaises(dns.DomainError):
            yield chain.lookupPointer("9.9.9.10.in-addr.arpa")
        self.assertEqual(other.asked, [b"9.9.9.10.in-addr.arpa"])

    @defer.inlineCallbacks
    def test_servfail_before_sync(self):
        chain, other = _chain(synced=False)
        with self.assertRaises(ClusterNotSyncedError):
            yield chain.lookupAddress("nginx.default.svc.cluster.local")
        self.assertEqual(other.asked, [])  # nobody else got to answer (maybe NXDOMAIN) instead

    @defer.inlineCallbacks
    def test_zone_transfer_refused_and_stops_the_chain(self):
        chain, other = _chain()
        with self.assertRaises(ClusterTransferRefusedError):
            yield chain.lookupZone("cluster.local")
        self.assertEqual(other.asked, [])  # not handed to the next resolver as a miss
