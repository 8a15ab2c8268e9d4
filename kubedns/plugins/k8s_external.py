"""The ``k8s_external`` plugin: Services' external and load balancer addresses in an outside zone.

Clients outside the cluster cannot use ``cluster.local``; this plugin answers, in a zone of their
own (``example.org``), for the addresses they can reach: a Service's ``spec.externalIPs`` and its
``status.loadBalancer.ingress`` IPs.  As CoreDNS's plugin/k8s_external (and the kubernetes
plugin's ``External`` it calls), with its syntax and defaults::

    k8s_external [ZONE...] { apex APEX; ttl TTL; headless; fallthrough [ZONE...] }

Names under a zone ``<zone>`` (APEX defaults to ``dns``, TTL to 5 seconds)::

    <zone>                           SOA, NS ns1.APEX.<zone> (+ its addresses in additional)
    ns1.APEX.<zone>                  A/AAAA: the kube-system/kube-dns Service's external IPs
    APEX.<zone>                      NODATA (an empty non-terminal); other names below: NXDOMAIN
    <svc>.<ns>.<zone>                A/AAAA of the external IPs, then the ingress IPs; an ingress
                                     with only a hostname is a CNAME to it, its address looked up
                                     through the block (as CoreDNS's upstream); SRV per port
    _<port>._<proto>.<svc>.<ns>.<zone>  SRV (target <svc>.<ns>.<zone>, addresses in additional)
    <host>.<svc>.<ns>.<zone>         with ``headless``: that endpoint of a headless Service

With ``headless``, a headless Service without external IPs answers with its ready endpoints (SRV
targets ``<host>.<svc>.<ns>.<zone>``).  A name with no such Service (or one without external
addresses) is NXDOMAIN with the zone's SOA (``ns1.APEX.<zone>``, ``hostmaster.APEX.<zone>``,
refresh 7200, retry 1800, expire 86400, minimum TTL); other types are NODATA.  The kubernetes
plugin's ``namespaces`` hides the others here too.  ``fallthrough`` passes NXDOMAIN names on.

CoreDNS quirks kept: without ``headless`` a third label is ignored (``x.<svc>.<ns>.<zone>`` is
``<svc>``'s addresses); SRV records carry the kubernetes plugin's TTL, addresses the plugin's.
A reverse name in a reverse zone of the plugin's (``k8s_external example.org in-addr.arpa``) has
a PTR to ``<svc>.<ns>.<first zone>`` for each Service with that external address.  Not done: a
CNAME is written once per hostname (CoreDNS repeats it per port), and zone transfers of this zone.

Answers come from the store (no memo: computing one is a dict lookup or two) and are tagged with
the Service's and namespace's dependency keys (:mod:`kubedns.dns.depends`), so the fast path keeps
them until that Service changes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, cast

from twisted.internet.defer import Deferred
from twisted.names import dns

from kubedns.configbase import Node
from kubedns.dns.query import Request
from kubedns.dns.records import Answer, _ip_from_reverse
from kubedns.plugins.base import Next, Reply, Result, then, unserved

if TYPE_CHECKING:
    from kubedns.dns.records import ClusterZones
    from kubedns.plugins.kubernetes import KubernetesPlugin

__all__ = ["K8sExternalConfig", "K8sExternalPlugin", "parse_k8s_external_config"]

_KEYS = {"zones", "apex", "ttl", "headless", "fallthrough"}
_A, _AAAA, _SRV, _SOA, _NS, _CNAME, _PTR = dns.A, dns.AAAA, dns.SRV, dns.SOA, dns.NS, dns.CNAME, dns.PTR
NOERROR, NXDOMAIN, SERVFAIL = dns.OK, dns.ENAME, dns.ESERVER
MAX_CHASE = 8  # nested hostname lookups (a hostname pointing back into this zone)


@dataclass(frozen=True, slots=True)
class K8sExternalConfig:
    zones: tuple[str, ...] = ()  # empty: the block's zones
    apex: str = "dns"
    ttl: int = 5
    headless: bool = False
    fallthrough: tuple[str, ...] = ()  # zones whose NXDOMAIN names go on ("" = every name)


def parse_k8s_external_config(node: Node) -> K8sExternalConfig:
    """``k8s_external:`` alone (or ``true``), a zone or list of zones, or a mapping with
    ``zones``, ``apex``, ``ttl`` (0 to 3600, as CoreDNS), ``headless`` and ``fallthrough``
    (``true`` or zones)."""
    if node.value is None or node.value is True:
        node = Node({}, node.path, node.key)
    elif isinstance(node.value, (str, list)):
        node = Node({"zones": node.value}, node.path, node.key)
    node.mapping(_KEYS)
    zones = node.get("zones", []).zones(allow_empty=True)
    apex_node = node.get("apex", "dns")
    apex = apex_node.zone()
    if not apex:
        raise apex_node.error("a DNS label for the apex records, like dns")
    ft = node.get("fallthrough", False)
    if ft.value is True:
        fallthrough: tuple[str, ...] = ("",)
    elif ft.value is False or ft.value is None:
        fallthrough = ()
    else:
        fallthrough = ft.zones(allow_empty=True) or ("",)
    return K8sExternalConfig(zones=zones, apex=apex, ttl=node.get("ttl", 5).integer(0, 3600),
                             headless=node.get("headless", False).boolean(), fallthrough=fallthrough)


def _zone_of(zones: tuple[str, ...], lname: str) -> str | None:
    """The longest of ``zones`` holding ``lname`` (``""`` is the root), or None."""
    best: str | None = None
    for z in zones:
        if (z == "" or lname == z or lname.endswith("." + z)) and (best is None or len(z) > len(best)):
            best = z
    return best


def _join(*parts: str) -> str:
    return ".".join(p for p in parts if p)


def _strip(label: str) -> str:
    return label[1:] if label.startswith("_") else label


@dataclass(slots=True)
class _Svc:
    """One of CoreDNS's msg.Service for this plugin: an address (or hostname) and a port."""

    host: str
    port: int
    target: str  # the SRV target for an address: <svc>.<ns>.<zone> or <host>.<svc>.<ns>.<zone>


@dataclass(slots=True)
class _Lookup:
    """An ingress hostname's address, looked up through the block when the answer is put together."""

    host: str
    qtype: int


class K8sExternalPlugin:
    """See the module docstring.  ``kubernetes`` is the block's cluster plugin (its ``clusters``
    may be replaced by a reload; each query reads the current one)."""

    name = "k8s_external"

    def __init__(self, config: K8sExternalConfig, block_zones: tuple[str, ...], kubernetes: KubernetesPlugin):
        self.config = config
        self.zones = config.zones or block_zones
        self.apex = config.apex
        self.ttl = config.ttl
        self.kubernetes = kubernetes
        self._depth = 0

    # -- records ------------------------------------------------------------------------------
    def _rr(self, name: bytes | str, payload: Any, ttl: int | None = None) -> dns.RRHeader:
        t = self.ttl if ttl is None else ttl
        return dns.RRHeader(name=name, type=payload.TYPE, cls=dns.IN, ttl=t, payload=payload, auth=True)

    def _soa(self, zone: str, serial: int) -> dns.RRHeader:
        payload = dns.Record_SOA(mname=_join("ns1", self.apex, zone), rname=_join("hostmaster", self.apex, zone),
                                 serial=serial, refresh=7200, retry=1800, expire=86400, minimum=self.ttl,
                                 ttl=self.ttl)
        return self._rr(zone, payload)

    def _addr(self, owner: bytes | str, ip: str) -> dns.RRHeader:
        return self._rr(owner, dns.Record_AAAA(ip, self.ttl) if ":" in ip else dns.Record_A(ip, self.ttl))

    # -- serving ------------------------------------------------------------------------------
    def serve(self, req: Request, next: Next) -> Result:  # noqa: A002 (CoreDNS's word)
        lname = req.lname.rstrip(".")
        zone = _zone_of(self.zones, lname)
        if zone is None:
            return next(req)
        clusters = self.kubernetes.clusters
        store = clusters.store
        if not store.synced:
            return Reply(Answer(rcode=SERVFAIL, authoritative=False), zone, self.name)
        serial = store.serial & 0xFFFFFFFF
        for z in self.zones:
            if lname == z:
                return self._apex(req, zone, clusters, serial)
            sub = _join(self.apex, z)
            if lname == sub or lname.endswith("." + sub):
                return self._sub_apex(req, zone, lname, clusters, serial)
        qtype = req.q.qtype
        if qtype == _PTR and (ip := _ip_from_reverse(lname)) is not None:
            return self._ptr(req, zone, ip, clusters, serial)
        svcs, rcode, deps = self._external(clusters, zone, lname, qtype)
        if not svcs:
            if rcode == NXDOMAIN and _zone_of(self.config.fallthrough, lname) is not None:
                return then(next(req), lambda r: _depending(r, deps))
            return self._done(zone, Answer(rcode=rcode, authority=[self._soa(zone, serial)]), deps)
        qname = req.q.qname
        answers: list[Any] = []
        extra: list[Any] = []
        if qtype in (_A, _AAAA):
            answers = self._addresses(svcs, qname, qtype, clusters.ttl)
        elif qtype == _SRV:
            answers, extra = self._srv(svcs, qname, clusters.ttl)
        if not answers:
            return self._done(zone, Answer(authority=[self._soa(zone, serial)]), deps)
        acc = _Acc(deps)

        def with_answers(ans: list[dns.RRHeader]) -> Any:
            return _then(self._fill(req, extra, acc),
                         lambda add: acc.reply(self.name, zone, Answer(answers=ans, additional=add), store))

        return cast(Result, _then(self._fill(req, answers, acc), with_answers))

    def _ptr(self, req: Request, zone: str, ip: str, clusters: ClusterZones, serial: int) -> Reply:
        """A reverse name in a reverse zone of ours: the Services with that external address, as
        ``<svc>.<ns>.<first zone>`` (CoreDNS's ExternalReverse).  No index is kept for this rare
        query: the Services are scanned, and the answer is dropped by any store change."""
        store = clusters.store
        names: list[str] = []
        for key in store.keys("services"):
            ns, _, name = key.partition("/")
            svc = store.service(ns, name)
            if svc is None or ip not in svc.external or (clusters.namespaces and ns not in clusters.namespaces):
                continue
            names.append(_join(svc.name, ns, self.zones[0]))
        if not names:
            ans = Answer(rcode=NXDOMAIN, authority=[self._soa(zone, serial)])
        else:
            ans = Answer(answers=[self._rr(req.q.qname, dns.Record_PTR(n, self.ttl)) for n in dict.fromkeys(names)])
        return Reply(ans, zone, self.name, cacheable=True, deps=None, serial_of=store)

    def _done(self, zone: str, ans: Answer, deps: tuple[Any, ...]) -> Reply:
        return Reply(ans, zone, self.name, cacheable=True, deps=deps, serial_of=self.kubernetes.clusters.store)

    def _apex(self, req: Request, zone: str, clusters: ClusterZones, serial: int) -> Reply:
        """The zone's own name: SOA, NS ns1.APEX.<zone> with its addresses; NODATA otherwise."""
        qtype = req.q.qtype
        soa = self._soa(zone, serial)
        deps: tuple[Any, ...] = ()
        if qtype == _SOA:
            ans = Answer(answers=[soa])
        elif qtype == _NS:
            target = _join("ns1", self.apex, zone)
            glue_owner = _join("ns1", self.apex, req.q.qname.decode("ascii", "replace"))
            ans = Answer(answers=[self._rr(zone, dns.Record_NS(target, self.ttl))],
                         additional=[self._addr(glue_owner, ip) for ip in self._ns_ips(clusters)])
            deps = _dns_deps(clusters)
        else:
            ans = Answer(authority=[soa])
        return self._done(zone, ans, deps)

    def _sub_apex(self, req: Request, zone: str, lname: str, clusters: ClusterZones, serial: int) -> Reply:
        """Names under APEX.<zone>: ns1 has the server's addresses, APEX itself is empty."""
        base = lname[: -len(zone)].rstrip(".") if zone else lname
        labels = base.split(".") if base else []
        soa = self._soa(zone, serial)
        if len(labels) == 1:
            return self._done(zone, Answer(authority=[soa]), ())
        if len(labels) != 2 or labels[0] != "ns1":
            return self._done(zone, Answer(rcode=NXDOMAIN, authority=[soa]), ())
        qtype = req.q.qtype
        rrs = [self._addr(req.q.qname, ip) for ip in self._ns_ips(clusters)
               if (qtype == _A and ":" not in ip) or (qtype == _AAAA and ":" in ip)]
        return self._done(zone, Answer(answers=rrs) if rrs else Answer(authority=[soa]), _dns_deps(clusters))

    @staticmethod
    def _ns_ips(clusters: ClusterZones) -> list[str]:
        """CoreDNS's ExternalAddress: the external IPs of the Service in front of the DNS server
        (here kube-system/kube-dns, as the kubernetes plugin's ``ns.dns`` records)."""
        svc = clusters.store.service("kube-system", "kube-dns")
        return [h for h in svc.external if _is_ip(h)] if svc is not None else []

    # -- the kubernetes plugin's External -------------------------------------------------------
    def _external(self, clusters: ClusterZones, zone: str, lname: str,
                  qtype: int) -> tuple[list[_Svc], int, tuple[Any, ...]]:
        """The addresses (with ports) a name stands for, the rcode when there are none, and what
        the answer depends on."""
        store = clusters.store
        base = lname[: -len(zone)].rstrip(".") if zone else lname
        segs = base.split(".") if base else []
        if not segs:
            return [], SERVFAIL, ()
        ns = segs[-1]
        deps: tuple[Any, ...] = ((store, "ns", ns),)
        if (clusters.namespaces and ns not in clusters.namespaces) or not store.namespace_exists(ns):
            return [], NXDOMAIN, deps
        if len(segs) == 1:
            return [], NOERROR, deps
        name = segs[-2]
        # the Service's key alone: its namespace appearing or going touches it too (as the
        # kubernetes plugin's names), and ("ns", ns) moves with every Service of the namespace
        deps = ((store, "svc", ns, name),)
        endpoint = port = proto = ""
        rest = len(segs) - 2
        if rest == 1:
            endpoint = _strip(segs[0])
        elif rest == 2:
            port, proto = _strip(segs[0]), _strip(segs[1])
        elif rest > 2:
            return [], NXDOMAIN, deps
        svc = store.service(ns, name)
        out: list[_Svc] = []
        if svc is not None:
            svc_name = _join(name, ns, zone)
            if self.config.headless and not svc.external and (svc.headless or endpoint):
                self._endpoints(clusters, svc, svc_name, endpoint, port, proto, out)
            else:
                ports = [(p.port, p.name, p.protocol) for p in svc.ports] or [(-1, "", "")]
                for host in svc.external:
                    out.extend(_Svc(host, pnum, svc_name) for pnum, pname, pproto in ports
                               if (not port or port == pname) and (not proto or proto == pproto))
        rcode = NOERROR if out else NXDOMAIN
        if qtype == _PTR:
            return [], rcode, deps
        return out, rcode, deps

    @staticmethod
    def _endpoints(clusters: ClusterZones, svc: Any, svc_name: str, endpoint: str, port: str, proto: str,
                   out: list[_Svc]) -> None:
        from kubedns.k8s.store import endpoint_host, endpoint_published

        if clusters.noendpoints:
            return
        for ep, sl in clusters.store.endpoints(svc.namespace, svc.name):
            if not endpoint_published(ep, svc):
                continue
            ports = [(p.port, p.name, p.protocol) for p in sl.ports] or [(-1, "", "")]
            for ip in ep.addresses:
                host = endpoint_host(ep, ip, clusters.pod_names)
                if endpoint and host != endpoint:
                    continue
                out.extend(_Svc(ip, pnum, f"{host}.{svc_name}") for pnum, pname, pproto in ports
                           if (not port or port == pname) and (not proto or proto == pproto))

    # -- records from the addresses (CoreDNS's msg_to_dns.go) -------------------------------------
    def _addresses(self, svcs: list[_Svc], qname: bytes, qtype: int, k8s_ttl: int) -> list[Any]:
        out: list[Any] = []
        seen: set[str] = set()
        for s in svcs:
            host = s.host
            if host in seen:
                continue
            seen.add(host)
            if not _is_ip(host):
                out.append(self._rr(qname, dns.Record_CNAME(host, k8s_ttl), k8s_ttl))
                out.append(_Lookup(host, qtype))
            elif (":" in host) == (qtype == _AAAA):
                out.append(self._addr(qname, host))
        return out

    def _srv(self, svcs: list[_Svc], qname: bytes, k8s_ttl: int) -> tuple[list[Any], list[Any]]:
        total = 100 * len(svcs)  # every record has priority 0 and weight 0 (counted as 100)
        weight = max(1, math.floor(100.0 / float(total) * 100))
        answers: list[Any] = []
        extra: list[Any] = []
        seen: set[tuple[str, str | int]] = set()
        for s in svcs:
            if s.port == -1:
                continue  # a Service (or slice) without ports
            host = s.host
            target = s.target if _is_ip(host) else host
            if (target, s.port) not in seen:
                seen.add((target, s.port))
                answers.append(self._rr(qname, dns.Record_SRV(0, weight, s.port, target, k8s_ttl), k8s_ttl))
            if (target, host) in seen:
                continue
            seen.add((target, host))
            if _is_ip(host):
                extra.append(self._addr(target, host))
            else:
                extra += [_Lookup(host, _A), _Lookup(host, _AAAA)]
        return answers, extra

    def _fill(self, req: Request, items: list[Any], acc: _Acc, i: int = 0,
              out: list[dns.RRHeader] | None = None) -> Result | Any:
        """``items`` with each :class:`_Lookup` replaced by the records the block answers it with
        (now, or a Deferred when one is forwarded)."""
        out = [] if out is None else out
        while i < len(items):
            item = items[i]
            i += 1
            if not isinstance(item, _Lookup):
                out.append(item)
                continue
            if req.block is None or self._depth >= MAX_CHASE:
                acc.add(None)
                continue
            from kubedns.plugins.rewrite import with_question

            sub = with_question(req, item.host.encode("ascii"), item.qtype, dns.IN)
            self._depth += 1
            try:
                result = req.block.serve(sub)
            finally:
                self._depth -= 1
            j = i

            def merged(up: Reply | None, j: int = j) -> Any:
                if up is None:  # the lookup failed: the CNAME alone, as CoreDNS on an error
                    acc.cacheable = False
                else:
                    acc.add(up)
                    out.extend(up.answer.answers)
                return self._fill(req, items, acc, j, out)

            if isinstance(result, Deferred):
                result.addErrback(lambda _f: None)
            return _then(result, merged)
        return out


class _Acc:
    """What an answer put together from lookups may be kept for (the fast path's terms)."""

    __slots__ = ("cacheable", "deps", "lifetime")

    def __init__(self, deps: tuple[Any, ...]):
        self.cacheable = True
        self.lifetime = 0.0
        self.deps: tuple[Any, ...] | None = deps

    def add(self, up: Reply | None) -> None:
        """Fold in a lookup's reply (None: none was made, nothing changes)."""
        if up is None or unserved(up):  # nobody serves the name: that holds until a reload
            return
        if up.cacheable:  # from a store: dropped with what it depends on (None: any change)
            self.deps = None if up.deps is None or self.deps is None else self.deps + up.deps
        elif up.lifetime > 0:  # forwarded: kept as long as the shortest of them, TTLs counting down
            self.lifetime = up.lifetime if not self.lifetime else min(self.lifetime, up.lifetime)
            if self.deps is not None:
                self.deps += up.deps or ()
        else:
            self.cacheable = False

    def reply(self, plugin: str, zone: str, ans: Answer, store: Any) -> Reply:
        if not self.cacheable:
            return Reply(ans, zone, plugin)
        if self.lifetime:
            return Reply(ans, zone, plugin, lifetime=self.lifetime, deps=self.deps, ra=True)
        return Reply(ans, zone, plugin, cacheable=True, deps=self.deps, serial_of=store)


def _then(value: Any, fn: Callable[[Any], Any]) -> Any:
    """:func:`~kubedns.plugins.base.then` for the record lists put together here."""
    if isinstance(value, Deferred):
        return value.addCallback(fn)
    return fn(value)


def _is_ip(host: str) -> bool:
    """An address, not a hostname (the store keeps only valid IPs and hostnames: the shape tells)."""
    return ":" in host or (host.count(".") == 3 and host.replace(".", "").isdigit())


def _dns_deps(clusters: ClusterZones) -> tuple[Any, ...]:
    return ((clusters.store, "svc", "kube-system", "kube-dns"),)


def _depending(reply: Reply, deps: tuple[Any, ...]) -> Reply:
    """A reply from after a fallthrough, also depending on the Service it fell from (it may start
    answering itself)."""
    if reply.deps is None and reply.cacheable:
        return reply
    return replace(reply, deps=(reply.deps or ()) + deps)

