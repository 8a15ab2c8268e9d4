"""The ``acl`` plugin: allow, block, filter or drop queries by client network and query type.

CoreDNS's *acl*, with its semantics (plugin/acl): the policies are walked in order; the first
whose zones hold the query name, whose types include the query type and whose networks hold the
client's source address decides:

- ``allow``: the query goes on down the chain (no later policy is looked at);
- ``block``: REFUSED, with the Extended DNS Error 15 "Blocked" (RFC 8914);
- ``filter``: NOERROR with no records, with the Extended DNS Error 17 "Filtered";
- ``drop``: no answer at all.

Counted as CoreDNS counts them: ``coredns_acl_{allowed,blocked,filtered,dropped}_requests_total``
(:attr:`AclPlugin.counts`, exported by :mod:`kubedns.ops.metrics`), and, since CoreDNS's
*prometheus* and *log* run before *acl* and see every query whatever it becomes, a dropped query
is in ``coredns_dns_requests_total`` and ``coredns_dns_responses_total`` too (rcode NOERROR, no
plugin, a 0-byte response: what CoreDNS's recorder holds when nothing was written) and in the
query log: the server reports a drop to its observers (``Dispatcher._finish``).

A query no policy matches is allowed.  A policy without ``type`` matches every type (``*``),
without ``net`` every address (``*``); a single address is a /32 (/128).  Several ``acl``
directives in one Corefile block are one list here, each policy keeping its directive's zones,
which evaluates exactly as CoreDNS's rules do (a rule's policies in order, then the next rule's).
An IPv4-mapped IPv6 source (``::ffff:10.0.0.1``) is matched as the IPv4 address, as Go's iptree
does.  Unlike CoreDNS, an answer to a client that sent no OPT record carries no OPT (RFC 6891
7), so no EDE either; CoreDNS adds one (4096, DO set) whatever the client sent.

Answers here depend on the client's address, and the pre-encoded fast path keys on the query's
bytes only: while any policy names networks, every answer of the block is marked not to be kept
there (``cacheable``/``lifetime`` cleared on the way back), so a client is never served bytes
that another client's policy produced.  With only ``*`` networks the decision depends on the
query alone and answers stay cacheable.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from twisted.names import dns

from kubedns.configbase import Node
from kubedns.dns.query import Request
from kubedns.dns.records import Answer
from kubedns.plugins.base import Next, Reply, Result, then

__all__ = ["ACTIONS", "AclPlugin", "AclPolicy", "ede_option", "parse_acl", "type_code"]

ACTIONS = ("allow", "block", "filter", "drop")
EDE_BLOCKED, EDE_FILTERED = 15, 17
_EDE_OPTION = 15

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Query type mnemonics as miekg/dns (CoreDNS) spells them (``dns.StringToType``).
TYPES: dict[str, int] = {
    "A": 1, "NS": 2, "MD": 3, "MF": 4, "CNAME": 5, "SOA": 6, "MB": 7, "MG": 8, "MR": 9, "NULL": 10,
    "PTR": 12, "HINFO": 13, "MINFO": 14, "MX": 15, "TXT": 16, "RP": 17, "AFSDB": 18, "X25": 19,
    "ISDN": 20, "RT": 21, "NSAPPTR": 23, "SIG": 24, "KEY": 25, "PX": 26, "GPOS": 27, "AAAA": 28,
    "LOC": 29, "NXT": 30, "EID": 31, "NIMLOC": 32, "SRV": 33, "ATMA": 34, "NAPTR": 35, "KX": 36,
    "CERT": 37, "DNAME": 39, "OPT": 41, "APL": 42, "DS": 43, "SSHFP": 44, "IPSECKEY": 45,
    "RRSIG": 46, "NSEC": 47, "DNSKEY": 48, "DHCID": 49, "NSEC3": 50, "NSEC3PARAM": 51, "TLSA": 52,
    "SMIMEA": 53, "HIP": 55, "NINFO": 56, "RKEY": 57, "TALINK": 58, "CDS": 59, "CDNSKEY": 60,
    "OPENPGPKEY": 61, "CSYNC": 62, "ZONEMD": 63, "SVCB": 64, "HTTPS": 65, "SPF": 99, "UINFO": 100,
    "UID": 101, "GID": 102, "UNSPEC": 103, "NID": 104, "L32": 105, "L64": 106, "LP": 107,
    "EUI48": 108, "EUI64": 109, "NXNAME": 128, "TKEY": 249, "TSIG": 250, "IXFR": 251, "AXFR": 252,
    "MAILB": 253, "MAILA": 254, "ANY": 255, "URI": 256, "CAA": 257, "AVC": 258, "AMTRELAY": 260,
    "RESINFO": 261, "TA": 32768, "DLV": 32769,
}


def type_code(name: str) -> int | None:
    """The type number of a mnemonic as CoreDNS accepts it (upper case), or None."""
    return TYPES.get(name)


@dataclass(frozen=True, slots=True)
class AclPolicy:
    """One ``ACTION [type QTYPE...] [net SOURCE...]`` line; empty ``types``/``nets``: all.
    ``zones`` empty: the block's zones."""

    action: str
    types: frozenset[int] = frozenset()
    nets: tuple[Network, ...] = ()
    zones: tuple[str, ...] = ()


def ede_option(info_code: int) -> bytes:
    """An Extended DNS Error option (RFC 8914) with no extra text, as OPT rdata."""
    return struct.pack("!HHH", _EDE_OPTION, 2, info_code)


# -- config ---------------------------------------------------------------------------------------
def _network(n: Node) -> Network | None:
    """A CIDR or a single address (a /32 or /128, as CoreDNS's ``normalize``); ``*``: None (all)."""
    text = str(n.value).strip() if isinstance(n.value, (str, int)) else ""
    if text == "*":
        return None
    if "/" not in text:
        text += "/128" if ":" in text else "/32"
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise n.error('a network in CIDR notation like "10.0.0.0/8", an address, or "*"') from None


def _list(node: Node) -> list[Node]:
    if isinstance(node.value, (str, int)):
        node.value = [node.value]
    return list(node.items())


def parse_acl(node: Node) -> tuple[AclPolicy, ...]:
    """``acl: [{action, type: [QTYPE...], net: [CIDR...], zones: [...]}, ...]`` (null or ``[]``:
    no policy, everything allowed); ``type``/``net`` may be one string; ``*`` means all."""
    if node.value is None:
        return ()
    out = []
    for item in node.items():
        item.mapping({"action", "type", "net", "zones"})
        action = str(item.get("action").choice(ACTIONS))
        types: set[int] = set()
        if item.has("type"):
            tnode = item.get("type")
            entries = _list(tnode)
            if not entries:
                raise tnode.error("one or more query types (A, AAAA, ANY...) or *")
            for t in entries:
                if t.value == "*":
                    types = set()
                    break
                code = type_code(t.value) if isinstance(t.value, str) else None
                if code is None:
                    raise t.error("a query type as CoreDNS spells it (A, AAAA, SRV, ANY, AXFR...; upper case) or *")
                types.add(code)
        nets: list[Network] = []
        if item.has("net"):
            nnode = item.get("net")
            entries = _list(nnode)
            if not entries:
                raise nnode.error('one or more networks (CIDR or address) or "*"')
            for n in entries:
                net = _network(n)
                if net is None:
                    nets = []
                    break
                nets.append(net)
        zones = item.get("zones").zones() if item.has("zones") else ()
        out.append(AclPolicy(action, frozenset(types), tuple(dict.fromkeys(nets)), zones))
    return tuple(out)


# -- the plugin -----------------------------------------------------------------------------------
def _zone_match(zones: Iterable[str], lname: str) -> str | None:
    """The longest of ``zones`` holding ``lname`` ("" is the root), or None (CoreDNS's Matches)."""
    best: str | None = None
    for z in zones:
        if (z == "" or lname == z or lname.endswith("." + z)) and (best is None or len(z) > len(best)):
            best = z
    return best


def client_address(peer: Any) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The source address of ``peer`` (``(host, port, ...)``), an IPv4-mapped one as IPv4."""
    host = peer[0] if isinstance(peer, tuple) and peer else peer
    if not isinstance(host, str):
        return None
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


class AclPlugin:
    """See the module docstring.  ``block_zones``: the zones of a policy that names none."""

    name = "acl"

    def __init__(self, policies: tuple[AclPolicy, ...], block_zones: tuple[str, ...]):
        self.policies = tuple((p, p.zones or block_zones) for p in policies)
        #: some policy depends on the client's address: nothing may be pre-encoded
        self.by_client = any(p.nets for p in policies)
        #: ``(action, zone) → queries``: CoreDNS's ``coredns_acl_{allowed,blocked,filtered,dropped}
        #: _requests_total`` (zone "" for allowed, which CoreDNS counts without one)
        self.counts: dict[tuple[str, str], int] = {}

    def decide(self, req: Request) -> str:
        """The action for ``req``: the first matching policy's, else ``allow``."""
        return self._decide(req)[0]

    def _decide(self, req: Request) -> tuple[str, str]:
        qtype = req.q.qtype
        ip: Any = None
        for policy, zones in self.policies:
            zone = _zone_match(zones, req.lname)
            if zone is None:
                continue
            if policy.types and qtype not in policy.types:
                continue
            if policy.nets:
                if ip is None:
                    ip = client_address(req.peer)
                    if ip is None:  # CoreDNS blocks what it cannot place
                        return "block", zone
                if not any(ip.version == n.version and ip in n for n in policy.nets):
                    continue
            return policy.action, ("" if policy.action == "allow" else zone)
        return "allow", ""

    def serve(self, req: Request, next: Next) -> Result:  # noqa: A002 (CoreDNS's word)
        action, zone = self._decide(req)
        key = (action, zone)
        self.counts[key] = self.counts.get(key, 0) + 1
        cacheable = not self.by_client
        if action == "allow":
            return next(req) if cacheable else then(next(req), _uncacheable)
        if action == "drop":
            return Reply(Answer(rcode=dns.OK, authoritative=False), "", self.name, ra=False, drop=True)
        if action == "block":
            return Reply(Answer(rcode=dns.EREFUSED, authoritative=False), "", self.name, ra=False,
                         cacheable=cacheable, deps=(), edns_options=ede_option(EDE_BLOCKED))
        return Reply(Answer(rcode=dns.OK, authoritative=False), "", self.name, ra=False,
                     cacheable=cacheable, deps=(), edns_options=ede_option(EDE_FILTERED))


def _uncacheable(reply: Reply) -> Reply:
    if not reply.cacheable and reply.lifetime <= 0:
        return reply
    return dataclasses.replace(reply, cacheable=False, lifetime=0.0)
