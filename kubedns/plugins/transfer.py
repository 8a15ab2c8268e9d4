"""The ``transfer`` plugin: AXFR/IXFR of the cluster zone to the listed peers, as CoreDNS's.

``transfer [ZONE...] { to ADDRESS...; source ADDRESS }`` (ZONE defaults to the block's; ``to *``
allows everyone; ``to`` may repeat).  As CoreDNS's plugin/transfer with its kubernetes plugin:

- a query that is not AXFR or IXFR goes on; an AXFR/IXFR over UDP is REFUSED, whatever its name;
- a name outside every ``transfer`` zone goes on (to ``kubernetes``, which REFUSES transfers, or
  ``forward``); in them, a peer not listed by ``to`` (its address; a port given there is not
  compared, as CoreDNS) is REFUSED;
- an IXFR whose authority section is not exactly one SOA is SERVFAIL; one whose serial is the
  zone's is answered with that SOA alone; any other IXFR falls back to a full AXFR;
- the zone's content comes from the store: the SOA, the apex NS and ``ns.dns`` address records,
  ``dns-version``, then per Service (by name, then namespace) its A/AAAA or ExternalName CNAME,
  its SRV records, its named ports' ``_port._proto`` SRV records and its endpoints' names, then
  the SOA again.  Each of these is exactly what a query for that name and type answers
  (``namespaces``, ``ignore empty_service``, ``endpoint_pod_names`` and kubedns's SRV rules
  included); pod names (``a-b-c-d.ns.pod``, made up from any address) and PTRs are not listed;
- the records leave as several TCP messages of at most ~63 KB each (the server splits them;
  :func:`split`), every one with the question and AA, as miekg's ``Transfer.Out``.

Only the forward cluster zones are transferred (``cluster.local``): the name asked must be one
of them; another name (a reverse zone, a name below the apex) goes on and is REFUSED by the
cluster plugin, where CoreDNS would send records of no use.  ``source`` only chooses the address
of NOTIFY messages, which neither CoreDNS's kubernetes plugin nor kubedns sends: it is checked and
has no effect.  Before the store's first sync a transfer is SERVFAIL (the zone is incomplete).
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from io import BytesIO
from typing import TYPE_CHECKING, Any

from twisted.logger import Logger
from twisted.names import dns

from kubedns.configbase import Node, parse_address
from kubedns.dns.query import Request
from kubedns.dns.records import Answer, ClusterZones
from kubedns.dns.wire import scan_name
from kubedns.k8s.store import endpoint_host, endpoint_published
from kubedns.plugins.base import Next, Reply, Result

if TYPE_CHECKING:
    from kubedns.plugins.kubernetes import KubernetesPlugin

__all__ = ["MESSAGE_BYTES", "TransferPlugin", "TransferRule", "parse_transfer", "split", "zone_records"]

log = Logger()

AXFR, IXFR = dns.AXFR, dns.IXFR
#: Records per message stop before this many (uncompressed) bytes, as CoreDNS's batches.
MESSAGE_BYTES = 63000


@dataclass(frozen=True, slots=True)
class TransferRule:
    """One ``transfer`` directive: its zones (empty: the block's), the peers (``*`` or IPs)."""

    zones: tuple[str, ...] = ()
    to: tuple[str, ...] = ("*",)
    source: str | None = None


# -- config ---------------------------------------------------------------------------------------
def _peer(n: Node) -> str:
    """``*``, an IP, or IP:port / [IPv6]:port: the IP (the port is not compared)."""
    text = n.value if isinstance(n.value, str) else ""
    text = text.strip()
    if text == "*":
        return "*"
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        pass
    try:
        addr = parse_address(text, 53)
        return str(ipaddress.ip_address(addr.host))
    except ValueError:
        raise n.error('"*", an IP address or IP:port (such as 10.0.0.2, 10.0.0.2:53, [fd00::2]:53)') from None


def _rule(node: Node) -> TransferRule:
    node.mapping({"zones", "to", "source"})
    zones = node.get("zones").zones() if node.has("zones") and node.get("zones").value is not None else ()
    tn = node.get("to")
    if isinstance(tn.value, str):
        tn.value = [tn.value]
    to = tuple(dict.fromkeys(_peer(n) for n in tn.items()))
    if not to:
        raise tn.error('one or more peers: "*" or IP addresses (the key is required)')
    source = None
    if node.has("source") and node.get("source").value is not None:
        sn = node.get("source")
        try:
            source = str(ipaddress.ip_address(sn.string().strip()))
        except ValueError:
            raise sn.error("an IP address (the source of NOTIFY messages)") from None
    return TransferRule(zones, to, source)


def parse_transfer(node: Node) -> tuple[TransferRule, ...]:
    """``transfer: {zones: [...], to: [...], source: IP}`` or a list of such mappings."""
    if isinstance(node.value, list):
        rules = tuple(_rule(n) for n in node.items())
        if not rules:
            raise node.error("a mapping with to (and zones), or a non-empty list of them")
        return rules
    return (_rule(node),)


# -- the zone's records ---------------------------------------------------------------------------
def zone_records(clusters: ClusterZones, zone: str) -> list[dns.RRHeader]:
    """SOA, every record the cluster zone ``zone`` answers (see the module docstring), SOA."""
    soa = clusters.soa(zone)
    out: list[dns.RRHeader] = [soa]
    ttl = clusters.ttl
    suffix = f".{zone}" if zone else ""

    def add(name: str, *qtypes: int) -> bool:
        """The records a query for ``name`` answers per type; False when the name does not exist."""
        owner = name.encode()
        for qtype in qtypes:
            res = clusters.answer(owner, qtype, name)
            if res is None or res[1].rcode != dns.OK:
                return False
            out.extend(rr for rr in res[1].answers if rr.type == qtype and rr.name.name == owner)
        return True

    add(zone, dns.NS)
    add(f"ns.dns{suffix}", dns.A, dns.AAAA)
    add(f"dns-version{suffix}", dns.TXT)
    store = clusters.store
    keys = sorted((k.split("/", 1) for k in store.keys("services")), key=lambda k: (k[1], k[0]))
    for ns, name in keys:
        svc = store.service(ns, name)
        if svc is None:
            continue
        base = f"{name}.{ns}.svc{suffix}"
        if svc.external_name:
            add(base, dns.CNAME)
            continue
        if not add(base, dns.A, dns.AAAA, dns.SRV):
            continue  # hidden (namespaces, ignore empty_service) or without endpoints: nothing below
        ports: dict[tuple[str, str], None] = {(p.name, p.protocol): None for p in svc.ports if p.name}
        hosts: dict[str, dict[str, None]] = {}
        if not clusters.noendpoints:
            for ep, sl in store.endpoints(ns, name):
                ports.update(((p.name, p.protocol), None) for p in sl.ports if p.name)
                if endpoint_published(ep, svc):
                    for ip in ep.addresses:
                        hosts.setdefault(endpoint_host(ep, ip, clusters.pod_names), {})[ip] = None
        for pname, proto in ports:
            add(f"_{pname}._{proto}.{base}", dns.SRV)
        # each endpoint name's addresses in one pass (a query per name would walk every
        # endpoint of the Service again: quadratic for a large headless Service)
        for host, ips in hosts.items():
            owner = f"{host}.{base}".encode()
            for family in (4, 6):
                out.extend(_address(owner, ip, ttl) for ip in ips if (":" in ip) == (family == 6))
    out.append(soa)
    return out


def _address(owner: bytes, ip: str, ttl: int) -> dns.RRHeader:
    payload = dns.Record_AAAA(ip, ttl) if ":" in ip else dns.Record_A(ip, ttl)
    return dns.RRHeader(owner, payload.TYPE, dns.IN, ttl, payload, auth=True)


def split(records: list[Any], limit: int = MESSAGE_BYTES) -> list[list[Any]]:
    """``records`` in runs whose uncompressed size stays under ``limit`` (one message each)."""
    parts: list[list[Any]] = []
    run: list[Any] = []
    size = 0
    for rr in records:
        buf = BytesIO()
        rr.encode(buf, None)
        n = buf.tell()
        if run and size + n > limit:
            parts.append(run)
            run, size = [], 0
        run.append(rr)
        size += n
    if run:
        parts.append(run)
    return parts


def ixfr_serial(req: Request) -> int | None:
    """The serial of an IXFR's one authority SOA, or None when it has not exactly one SOA there."""
    q = req.q
    if q.nscount != 1:
        return None
    data = req.packet
    pos: int | None = q.end
    for _ in range(q.ancount + 1):
        pos = scan_name(data, pos) if pos is not None else None
        if pos is None or pos + 10 > len(data):
            return None
        rtype, _, _, rdlen = struct.unpack_from("!HHIH", data, pos)
        start = pos + 10
        pos = start + rdlen
    if rtype != dns.SOA:
        return None
    at = scan_name(data, start)
    at = scan_name(data, at) if at is not None else None
    if at is None or at + 4 > start + rdlen:
        return None
    return int(struct.unpack_from("!I", data, at)[0])


# -- the plugin -----------------------------------------------------------------------------------
class TransferPlugin:
    """See the module docstring.  ``kubernetes`` is the block's cluster plugin (its store may be
    swapped after a reload: it is read per transfer), None without one."""

    name = "transfer"

    def __init__(self, rules: tuple[TransferRule, ...], block_zones: tuple[str, ...],
                 kubernetes: KubernetesPlugin | None):
        self.rules = tuple((r.zones or block_zones, r) for r in rules)
        self.kubernetes = kubernetes

    def _rule(self, lname: str) -> TransferRule | None:
        best: TransferRule | None = None
        best_zone = ""
        for zones, rule in self.rules:
            for z in zones:
                if z == "" or lname == z or lname.endswith("." + z):
                    if best is None or len(z) > len(best_zone) or (len(z) == len(best_zone) and z > best_zone):
                        best, best_zone = rule, z
        return best

    @staticmethod
    def allowed(rule: TransferRule, peer: Any) -> bool:
        if "*" in rule.to:
            return True
        host = peer[0] if isinstance(peer, tuple) and peer else peer
        try:
            ip = ipaddress.ip_address(str(host).split("%", 1)[0])
        except ValueError:
            return False
        return any(ip == ipaddress.ip_address(t) for t in rule.to)

    def serve(self, req: Request, next: Next) -> Result:  # noqa: A002 (CoreDNS's word)
        q = req.q
        if q.qtype != AXFR and q.qtype != IXFR:
            return next(req)
        if req.proto != "tcp":
            return self._error(dns.EREFUSED)
        rule = self._rule(req.lname)
        if rule is None:
            return next(req)
        if not self.allowed(rule, req.peer):
            return self._error(dns.EREFUSED)
        serial = 0
        if q.qtype == IXFR:
            got = ixfr_serial(req)
            if got is None:
                return self._error(dns.ESERVER, "transfer: an IXFR needs one SOA in its authority section")
            serial = got
        k8s = self.kubernetes
        clusters = k8s.clusters if k8s is not None else None
        zone = req.lname
        if clusters is None or zone not in clusters.forward_zones:
            return next(req)  # not a zone we can transfer: as CoreDNS's ErrNotAuthoritative
        if not clusters.store.synced:
            return self._error(dns.ESERVER, "transfer: the cluster zone is not synced yet")
        soa = clusters.soa(zone)
        current = soa.payload.serial  # type: ignore[union-attr]
        peer = req.peer[0] if isinstance(req.peer, tuple) else req.peer
        if serial and serial == current:
            log.info("Outgoing noop, incremental transfer for up to date zone {zone!r} to {peer} for {serial} SOA "
                     "serial", zone=zone, peer=peer, serial=current)
            return Reply(Answer(answers=[soa], authoritative=False), zone, self.name)
        records = zone_records(clusters, zone)
        log.info("Outgoing transfer of {n} records of zone {zone!r} to {peer} for {serial} SOA serial",
                 n=len(records), zone=zone, peer=peer, serial=current)
        return Reply(Answer(answers=records), zone, self.name)

    def _error(self, rcode: int, error: str = "") -> Reply:
        return Reply(Answer(rcode=rcode, authoritative=False), "", self.name, error=error)
