"""Cluster DNS answers: (store, query name, query type) → rcode and resource records.

This is the Kubernetes DNS-Based Service Discovery specification (schema 1.1.0) as code, with
CoreDNS's defaults where the spec leaves a choice.  It is synchronous and allocation-light so the
server can call it straight from ``datagramReceived``; the Twisted resolver interface on top of it
lives in :mod:`kubedns.authority`.

Names handled under a cluster zone ``<zone>``::

    <zone>                                 SOA, NS (apex)
    dns-version.<zone>                     TXT "1.1.0" (TTL 28800, as the spec's example)
    ns.dns.<zone>                          A/AAAA of kube-system/kube-dns (the NS target)
    <svc>.<ns>.svc.<zone>                  A/AAAA ClusterIPs, or ready endpoints (headless),
                                           CNAME (ExternalName), SRV for named ports
                                           (nothing below an ExternalName: NXDOMAIN)
    <host>.<svc>.<ns>.svc.<zone>           A/AAAA of endpoints by hostname or dashed IP
    _<port>._<proto>.<svc>.<ns>.svc.<zone> SRV (+ A/AAAA in additional)
    <a-b-c-d>.<ns>.pod.<zone>              A/AAAA per ``pods`` mode
    <reversed ip>.in-addr.arpa / ip6.arpa  PTR for ClusterIPs and endpoint IPs

NXDOMAIN and NODATA both carry the zone SOA in the authority section; all answers are
authoritative.  Zone transfers (AXFR, IXFR) are REFUSED, as CoreDNS's kubernetes plugin does
without the ``transfer`` plugin.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import cast

from twisted.names import dns

from kubedns.config import KubernetesConfig
from kubedns.k8s.objects import Endpoint, EndpointSlice, Port, Service
from kubedns.k8s.store import Store, endpoint_host, endpoint_published

__all__ = ["Answer", "ClusterZones", "SCHEMA_VERSION"]

SCHEMA_VERSION = "1.1.0"
#: TTL of ``dns-version.<zone>``: the specification's example and CoreDNS both use 28800
SCHEMA_VERSION_TTL = 28800

A, AAAA, SRV, PTR, TXT, SOA, NS, CNAME, ANY = (
    dns.A, dns.AAAA, dns.SRV, dns.PTR, dns.TXT, dns.SOA, dns.NS, dns.CNAME, dns.ALL_RECORDS,
)
TRANSFERS = frozenset((dns.AXFR, dns.IXFR))
NOERROR, SERVFAIL, NXDOMAIN, REFUSED = dns.OK, dns.ESERVER, dns.ENAME, dns.EREFUSED


@dataclass(slots=True)
class Answer:
    """What the server encodes: rcode plus the three record sections."""

    rcode: int = NOERROR
    answers: list[dns.RRHeader] = field(default_factory=list)
    authority: list[dns.RRHeader] = field(default_factory=list)
    additional: list[dns.RRHeader] = field(default_factory=list)
    authoritative: bool = True


def _ip_version(ip: str) -> int:
    return 6 if ":" in ip else 4


class ClusterZones:
    """Answers for the zones of one ``kubernetes:`` block, from a shared :class:`Store`."""

    def __init__(self, store: Store, config: KubernetesConfig):
        self.store = store
        self.config = config
        self.ttl = config.ttl
        # longest zones first so "10.in-addr.arpa" beats "in-addr.arpa"
        self.zones = sorted(config.zones, key=len, reverse=True)
        self.forward_zones = [z for z in config.zones if not z.endswith("arpa")]
        self.primary = self.forward_zones[0] if self.forward_zones else config.zones[0]
        self.fallthrough = frozenset(config.fallthrough)
        #: ``namespaces``: the only ones answered for (empty: all)
        self.namespaces = frozenset(config.namespaces)
        self.pod_names = config.endpoint_pod_names
        self.ignore_empty_service = config.ignore_empty_service
        self.noendpoints = config.noendpoints
        self._soa_cache: dict[str, tuple[tuple[str, int], dns.RRHeader]] = {}
        #: address payloads by IP: immutable, shared by every answer that carries that IP
        self._addr_payloads: dict[str, dns.Record_A | dns.Record_AAAA] = {}

    # -- zone matching ------------------------------------------------------------------------
    def zone_of(self, lname: str) -> str | None:
        """The configured zone holding ``lname`` (lower-case, no trailing dot), or None."""
        for z in self.zones:
            if lname == z or lname.endswith("." + z) or z == "":
                return z
        return None

    def falls_through(self, zone: str, answer: Answer) -> bool:
        """True when a miss in ``zone`` should continue to the next resolver (forward)."""
        return answer.rcode == NXDOMAIN and zone in self.fallthrough

    # -- records ------------------------------------------------------------------------------
    def _rr(self, name: bytes | str, payload: dns.IEncodableRecord, ttl: int | None = None) -> dns.RRHeader:
        t = self.ttl if ttl is None else ttl
        return dns.RRHeader(name=name, type=payload.TYPE, cls=dns.IN, ttl=t, payload=payload, auth=True)

    def soa(self, zone: str) -> dns.RRHeader:
        """The zone's SOA record; built once per zone and store serial (it is in every negative)."""
        key = (zone, self.store.serial)
        rr = self._soa_cache.get(zone)
        if rr is not None and rr[0] == key:
            return rr[1]
        built = self._build_soa(zone)
        self._soa_cache[zone] = (key, built)
        return built

    def _apex_soa(self, zone: str, qname: bytes) -> dns.RRHeader:
        """The SOA as an answer: owned by ``qname`` as asked, so its case is echoed like every
        other answer's.  (Negative answers carry :meth:`soa` in authority, owned by the zone's
        own name, as CoreDNS does.)"""
        soa = self.soa(zone)
        if qname == soa.name.name:
            return soa
        return self._rr(qname, cast(dns.Record_SOA, soa.payload))  # _build_soa made it

    def _build_soa(self, zone: str) -> dns.RRHeader:
        payload = dns.Record_SOA(
            mname=f"ns.dns.{zone}" if zone else "ns.dns",
            rname=f"hostmaster.{zone}" if zone else "hostmaster",
            serial=self.store.serial & 0xFFFFFFFF,
            refresh=7200,
            retry=1800,
            expire=86400,
            minimum=self.ttl,
            ttl=self.ttl,
        )
        return self._rr(zone, payload)

    def _negative(self, zone: str, rcode: int) -> Answer:
        return Answer(rcode=rcode, authority=[self.soa(zone)])

    def _addr_payload(self, ip: str) -> dns.Record_A | dns.Record_AAAA:
        p = self._addr_payloads.get(ip)
        if p is None:
            # bounded (~300 B an IP): with ``pods: insecure`` clients choose the IPs (a-b-c-d names)
            if len(self._addr_payloads) >= 16_384:
                self._addr_payloads.clear()
            p = dns.Record_AAAA(ip, self.ttl) if ":" in ip else dns.Record_A(ip, self.ttl)
            self._addr_payloads[ip] = p
        return p

    def _addr_rrs(self, owner: bytes | str, ips: list[str] | tuple[str, ...], qtype: int) -> list[dns.RRHeader]:
        out = []
        for ip in ips:
            v = _ip_version(ip)
            if (v == 4 and qtype in (A, ANY)) or (v == 6 and qtype in (AAAA, ANY)):
                out.append(self._rr(owner, self._addr_payload(ip)))
        return out

    def _glue(self, owner: str, ips: list[str] | tuple[str, ...]) -> list[dns.RRHeader]:
        return self._addr_rrs(owner, ips, A) + self._addr_rrs(owner, ips, AAAA)

    def _positive_or_nodata(self, zone: str, rrs: list[dns.RRHeader], additional: list[dns.RRHeader] | None = None) -> Answer:
        if rrs:
            return Answer(answers=rrs, additional=additional or [])
        return self._negative(zone, NOERROR)

    # -- entry point ----------------------------------------------------------------------------
    def answer(self, qname: bytes, qtype: int, lname: str | None = None) -> tuple[str, Answer] | None:
        """``(zone, Answer)`` for a name in our zones, or None when the name is not ours.

        ``lname`` is the lower-cased name without trailing dot if the caller already has it.
        """
        if lname is None:
            lname = qname.decode("ascii", "replace").lower().rstrip(".")
        zone = self.zone_of(lname)
        if zone is None:
            return None
        if qtype in TRANSFERS:
            # CoreDNS's kubernetes plugin refuses these itself (before looking at its sync state)
            # unless the transfer plugin is configured; we have no transfer plugin.
            return zone, Answer(rcode=REFUSED, authoritative=False)
        if not self.store.synced:
            return zone, Answer(rcode=SERVFAIL, authoritative=False)
        rel = lname[: -len(zone)].rstrip(".") if zone else lname
        labels = rel.split(".") if rel else []
        if zone.endswith("in-addr.arpa") or zone.endswith("ip6.arpa"):
            return zone, self._reverse(zone, lname, qname, qtype)
        return zone, self._forward(zone, labels, qname, qtype)

    def _forward(self, zone: str, labels: list[str], qname: bytes, qtype: int) -> Answer:
        n = len(labels)
        if n == 0:
            if qtype == SOA:
                return Answer(answers=[self._apex_soa(zone, qname)])
            if qtype == NS:
                target = f"ns.dns.{zone}"
                ns_rr = self._rr(qname, dns.Record_NS(target, self.ttl))
                return Answer(answers=[ns_rr], additional=self._glue(target, self._dns_ips()))
            return self._negative(zone, NOERROR)
        if labels == ["dns-version"]:
            if qtype in (TXT, ANY):
                txt = dns.Record_TXT(SCHEMA_VERSION.encode(), ttl=SCHEMA_VERSION_TTL)
                return Answer(answers=[self._rr(qname, txt, SCHEMA_VERSION_TTL)])
            return self._negative(zone, NOERROR)
        if labels == ["dns"]:
            return self._negative(zone, NOERROR)  # empty non-terminal above ns.dns
        if labels == ["ns", "dns"]:
            return self._positive_or_nodata(zone, self._addr_rrs(qname, self._dns_ips(), qtype))
        kind = labels[-1]
        if kind == "svc":
            return self._service_names(zone, labels[:-1], qname, qtype)
        if kind == "pod":
            return self._pod_names(zone, labels[:-1], qname, qtype)
        return self._negative(zone, NXDOMAIN)

    def _exposed(self, namespace: str) -> bool:
        """``namespaces``: a namespace not listed does not exist for DNS (NXDOMAIN, as CoreDNS)."""
        return not self.namespaces or namespace in self.namespaces

    def _endpoints(self, svc) -> Iterator[tuple[Endpoint, EndpointSlice]]:
        """The Service's endpoints; none with ``noendpoints`` (whatever the store holds)."""
        if self.noendpoints:
            return iter(())
        return self.store.endpoints(svc.namespace, svc.name)

    def _dns_ips(self) -> tuple[str, ...]:
        svc = self.store.service("kube-system", "kube-dns")
        return svc.cluster_ips if svc is not None else ()

    # -- <...>.svc.<zone> -----------------------------------------------------------------------
    def _service_names(self, zone: str, labels: list[str], qname: bytes, qtype: int) -> Answer:
        store = self.store
        n = len(labels)
        if n == 0:
            return self._negative(zone, NOERROR)
        ns = labels[-1]
        if not self._exposed(ns):
            return self._negative(zone, NXDOMAIN)
        if n == 1:
            return self._negative(zone, NOERROR if store.namespace_exists(ns) else NXDOMAIN)
        svc = store.service(ns, labels[-2])
        if svc is None:
            return self._negative(zone, NXDOMAIN)
        if self.ignore_empty_service and not svc.headless and not svc.external_name and not self._has_ready_endpoint(svc):
            # ``ignore empty_service``: a ClusterIP Service nothing serves does not exist, here and
            # below it, so a client's search path goes on to its next domain (CoreDNS)
            return self._negative(zone, NXDOMAIN)
        svc_name = f"{svc.name}.{ns}.svc.{zone}"
        if n == 2:
            return self._service(zone, svc, svc_name, qname, qtype)
        if svc.external_name:
            # nothing below an ExternalName: the spec defines no SRV or endpoint names for it, and
            # CoreDNS skips it for any port, protocol or endpoint label (NXDOMAIN)
            return self._negative(zone, NXDOMAIN)
        first = labels[0]
        if n == 3:
            if first.startswith("_"):
                # "_tcp.<svc>": an empty non-terminal if some named port uses that protocol
                proto = first[1:]
                ports = self._ports(svc)
                exists = any(p.name and p.protocol == proto for p, _ in ports)
                return self._negative(zone, NOERROR if exists else NXDOMAIN)
            return self._endpoint(zone, svc, first, qname, qtype)
        if n == 4 and first.startswith("_") and labels[1].startswith("_"):
            return self._srv(zone, svc, svc_name, qname, qtype, first[1:], labels[1][1:])
        return self._negative(zone, NXDOMAIN)

    def _ready_endpoints(self, svc: Service) -> list[tuple[str, str, EndpointSlice]]:
        """``(hostname label, ip, slice)`` of each endpoint address DNS should publish."""
        out = []
        seen = set()
        for ep, sl in self._endpoints(svc):
            if not endpoint_published(ep, svc):  # the rule Store.reverse applies to PTRs
                continue
            for ip in ep.addresses:
                host = endpoint_host(ep, ip, self.pod_names)
                if (host, ip) in seen:
                    continue
                seen.add((host, ip))
                out.append((host, ip, sl))
        return out

    def _has_ready_endpoint(self, svc) -> bool:
        """At least one endpoint address DNS would publish (stops at the first)."""
        return any(ep.addresses and endpoint_published(ep, svc) for ep, _ in self._endpoints(svc))

    def _service(self, zone: str, svc, svc_name: str, qname: bytes, qtype: int) -> Answer:
        if svc.external_name:
            if qtype == dns.PTR:
                return self._negative(zone, NOERROR)
            return Answer(answers=[self._rr(qname, dns.Record_CNAME(svc.external_name, self.ttl))])
        if qtype == SRV:
            return self._srv(zone, svc, svc_name, qname, qtype, None, None)
        if not svc.headless:
            return self._positive_or_nodata(zone, self._addr_rrs(qname, svc.cluster_ips, qtype))
        eps = self._ready_endpoints(svc)
        if not eps:
            return self._negative(zone, NXDOMAIN)  # spec 2.4.1: no ready endpoints → NXDOMAIN
        ips = list(dict.fromkeys(ip for _, ip, _ in eps))
        return self._positive_or_nodata(zone, self._addr_rrs(qname, ips, qtype))

    def _endpoint(self, zone: str, svc, host: str, qname: bytes, qtype: int) -> Answer:
        ips = [ip for h, ip, _ in self._ready_endpoints(svc) if h == host]
        if not ips:
            return self._negative(zone, NXDOMAIN)
        return self._positive_or_nodata(zone, self._addr_rrs(qname, list(dict.fromkeys(ips)), qtype))

    def _ports(self, svc: Service) -> list[tuple[Port, EndpointSlice | None]]:
        """``(port, slice or None)``: service ports for ClusterIP, endpoint ports for headless."""
        if not svc.headless:
            return [(p, None) for p in svc.ports]
        out: list[tuple[Port, EndpointSlice | None]] = []
        seen = set()
        for _, sl in self._endpoints(svc):
            if id(sl) in seen:
                continue
            seen.add(id(sl))
            out.extend((p, sl) for p in sl.ports)
        if not out:
            out = [(p, None) for p in svc.ports]
        return out

    def _srv(self, zone: str, svc, svc_name: str, qname: bytes, qtype: int, port: str | None, proto: str | None) -> Answer:
        ports = [
            (p, sl)
            for p, sl in self._ports(svc)
            if p.name and (port is None or p.name == port) and (proto is None or p.protocol == proto)
        ]
        if not ports:
            # an SRV name that does not exist; the bare service name exists but has no SRV
            return self._negative(zone, NOERROR if port is None else NXDOMAIN)
        if qtype not in (SRV, ANY):
            return self._negative(zone, NOERROR)
        answers: list[dns.RRHeader] = []
        additional: list[dns.RRHeader] = []
        if not svc.headless:
            # one SRV per distinct port number, each targeting the service name itself
            for pnum in dict.fromkeys(p.port for p, _ in ports):
                answers.append(self._rr(qname, dns.Record_SRV(0, 100, pnum, svc_name, self.ttl)))
            return Answer(answers=answers, additional=self._glue(svc_name, svc.cluster_ips))
        # Headless: a slice's ports pair with that slice's endpoints only (as CoreDNS), never with
        # another slice's.  Ports from the Service itself (no slice has any) pair with all.
        by_slice: dict[int | None, list[int]] = {}
        for p, sl in ports:
            by_slice.setdefault(None if sl is None else id(sl), []).append(p.port)
        fallback = by_slice.get(None, [])
        pairs: dict[tuple[int, str], None] = {}  # (port, target), identical records once
        targets: dict[str, dict[str, None]] = {}  # target → its IPs, for the additional section
        for ep, sl in self._endpoints(svc):
            if not endpoint_published(ep, svc):
                continue
            pnums = by_slice.get(id(sl), fallback)
            if not pnums:
                continue
            for ip in ep.addresses:
                target = f"{endpoint_host(ep, ip, self.pod_names)}.{svc_name}"
                for pnum in pnums:
                    pairs[(pnum, target)] = None
                targets.setdefault(target, {})[ip] = None
        if not pairs:
            return self._negative(zone, NXDOMAIN)  # no published endpoint has such a port
        weight = max(1, 100 // len(targets))
        order = {pnum: i for i, pnum in enumerate(dict.fromkeys(p.port for p, _ in ports))}
        for pnum, target in sorted(pairs, key=lambda pair: order[pair[0]]):  # port-major, stable
            answers.append(self._rr(qname, dns.Record_SRV(0, weight, pnum, target, self.ttl)))
        for target, ips in targets.items():
            additional.extend(self._glue(target, list(ips)))
        return Answer(answers=answers, additional=additional)

    # -- <ip>.<ns>.pod.<zone> -------------------------------------------------------------------
    def _pod_names(self, zone: str, labels: list[str], qname: bytes, qtype: int) -> Answer:
        mode = self.config.pods
        n = len(labels)
        if n == 0:
            return self._negative(zone, NOERROR)  # "pod.<zone>" exists in every mode (CoreDNS)
        if mode == "disabled":
            return self._negative(zone, NXDOMAIN)
        ns = labels[-1]
        if not self._exposed(ns):
            return self._negative(zone, NXDOMAIN)
        if n == 1:
            return self._negative(zone, NOERROR if self.store.namespace_exists(ns) else NXDOMAIN)
        if n != 2:
            return self._negative(zone, NXDOMAIN)
        ip = _ip_from_dashes(labels[0])
        if ip is None or not self.store.namespace_exists(ns):
            return self._negative(zone, NXDOMAIN)
        if mode == "verified" and not self.store.pod_in_namespace(ip, ns):
            return self._negative(zone, NXDOMAIN)
        return self._positive_or_nodata(zone, self._addr_rrs(qname, (ip,), qtype))

    # -- reverse ----------------------------------------------------------------------------
    def _reverse(self, zone: str, lname: str, qname: bytes, qtype: int) -> Answer:
        if lname == zone and qtype in (SOA, NS):
            if qtype == SOA:
                return Answer(answers=[self._apex_soa(zone, qname)])
            return Answer(answers=[self._rr(qname, dns.Record_NS(f"ns.dns.{self.primary}", self.ttl))])
        ip = _ip_from_reverse(lname)
        if ip is None:
            return self._negative(zone, NXDOMAIN if lname != zone else NOERROR)
        names = []
        for entry in self.store.reverse(ip, self.pod_names):
            if not self._exposed(entry[1]):
                continue  # a PTR would name what ``namespaces`` hides
            if entry[0] == "svc":
                names.append(f"{entry[2]}.{entry[1]}.svc.{self.primary}")
            else:
                names.append(f"{entry[3]}.{entry[2]}.{entry[1]}.svc.{self.primary}")
        if not names:
            return self._negative(zone, NXDOMAIN)
        if qtype not in (PTR, ANY):
            return self._negative(zone, NOERROR)
        return Answer(answers=[self._rr(qname, dns.Record_PTR(n, self.ttl)) for n in dict.fromkeys(names)])


_DASHED_IP_CHARS = frozenset("0123456789abcdefABCDEF-")


def _ip_from_dashes(label: str) -> str | None:
    """``10-0-0-1`` → ``10.0.0.1``; ``2001-db8--1`` → ``2001:db8::1``; anything else None.

    As CoreDNS does: IPv4 only with exactly three dashes and no ``--`` (an IPv6 address of four
    groups needs ``::``, so nothing valid is lost), otherwise IPv6 with every dash a colon.
    Only hex digits and dashes are accepted, so no scope id (``%eth0``) gets through.
    """
    if not label or not _DASHED_IP_CHARS.issuperset(label):
        return None
    try:
        if label.count("-") == 3 and "--" not in label:
            return str(ipaddress.IPv4Address(label.replace("-", ".")))
        return str(ipaddress.IPv6Address(label.replace("-", ":")))
    except ValueError:
        return None


def _ip_from_reverse(lname: str) -> str | None:
    """``4.3.2.1.in-addr.arpa`` → ``1.2.3.4``; 32 nibbles of ip6.arpa → the compressed IPv6."""
    if lname.endswith(".in-addr.arpa"):
        parts = lname[: -len(".in-addr.arpa")].split(".")
        if len(parts) != 4 or not all(p.isdigit() and len(p) <= 3 and int(p) <= 255 for p in parts):
            return None
        return ".".join(reversed(parts))
    if lname.endswith(".ip6.arpa"):
        nibbles = lname[: -len(".ip6.arpa")].split(".")
        if len(nibbles) != 32 or not all(len(x) == 1 and x in "0123456789abcdef" for x in nibbles):
            return None
        h = "".join(reversed(nibbles))
        return str(ipaddress.IPv6Address(int(h, 16)))
    return None
