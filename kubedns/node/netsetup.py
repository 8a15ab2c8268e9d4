"""The node's network for node-local mode: a dummy interface with the local IPs, and NOTRACK rules.

NodeLocal DNSCache (``node-cache`` in the kubernetes/dns repository) adds a ``dummy`` interface
named ``nodelocaldns`` carrying the link-local address (169.254.20.10) and, through iptables,
skips connection tracking for DNS to and from that address: ``raw`` PREROUTING/OUTPUT ``NOTRACK``
for UDP and TCP to the address's port 53 (and from it, port 53), with ``filter`` INPUT/OUTPUT
``ACCEPT`` because untracked packets match no ``ESTABLISHED`` rule.  Without NOTRACK every DNS
query of every Pod costs a conntrack entry, and a full conntrack table is the classic cause of
the "5 s DNS delay"; this is the reason node-local DNS exists.

This module does the same with netlink and nothing else, through pyroute2 (the standard netlink
library for Python: links, addresses and nf_tables, no shell commands and no ``ip``/``nft``
binaries on the node):

* the interface: created if missing (an interface left by a crashed run is reused), set up, every
  address added if missing; removed on :func:`teardown`;
* the rules: one nf_tables table of our own per address family (``ip``/``ip6``
  ``kubedns-nodelocal``) holding a ``raw``-priority prerouting and output chain (NOTRACK) and a
  ``filter``-priority input and output chain (ACCEPT), every rule with a counter.  Owning the
  table makes set-up and removal one atomic batch each and idempotent: a table left by a crash is
  deleted and written again in the same transaction, removal deletes the table.  The rules work
  beside iptables-nft or iptables-legacy rules (the kernel runs every hooked chain); as with
  node-cache, an ACCEPT here does not override a DROP in another table.

All calls are synchronous and short (a few netlink messages); they run at start-up before the
listeners are bound and at stop after they are closed, never while serving.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import struct
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

#: The interface node-cache creates (its ``-interfacename`` default).
DEFAULT_INTERFACE = "nodelocaldns"
#: The nf_tables table (one in family ``ip``, one in ``ip6`` when an IPv6 address is used).
TABLE = "kubedns-nodelocal"

_NFPROTO = {4: socket.AF_INET, 6: socket.AF_INET6}  # NFPROTO_IPV4 = 2 = AF_INET, IPV6 = 10
_FAMILY_NAME = {4: "ip", 6: "ip6"}
# (chain, hook, priority): NF_IP_PRI_RAW = -300 is the priority of iptables's raw table,
# NF_IP_PRI_FILTER = 0 that of its filter table.
_CHAINS = (("raw-prerouting", "prerouting", -300), ("raw-output", "output", -300),
           ("filter-input", "input", 0), ("filter-output", "output", 0))
_NF_ACCEPT = 1
_KINDS = ("dummy", "bridge")  # bridge: the fallback on kernels without the dummy driver
_L4 = {"tcp": socket.IPPROTO_TCP, "udp": socket.IPPROTO_UDP}


class NetSetupError(RuntimeError):
    """The interface or the rules could not be set up (the message says which and why)."""


@dataclass(frozen=True, slots=True)
class Rule:
    """One rule: ``<proto> <dir>addr <ip> <dir>port <port> counter <verdict>``, as nft would print."""

    chain: str
    proto: str  # "tcp" | "udp"
    direction: str  # "d" (to the address) | "s" (from it)
    ip: str
    port: int
    verdict: str  # "notrack" | "accept"

    def __str__(self) -> str:
        fam = "ip" if ipaddress.ip_address(self.ip).version == 4 else "ip6"
        return (f"{self.chain}: {fam} {self.direction}addr {self.ip} {self.proto} {self.direction}port "
                f"{self.port} counter {self.verdict}")


def rules_for(ips: Sequence[str], ports: Iterable[int]) -> list[Rule]:
    """node-cache's rules, for every address and port (cmd/node-cache/app/cache_app.go)."""
    out: list[Rule] = []
    for ip in ips:
        for port in sorted(set(ports)):
            for proto in ("tcp", "udp"):
                out += [
                    Rule("raw-prerouting", proto, "d", ip, port, "notrack"),
                    Rule("filter-input", proto, "d", ip, port, "accept"),
                    Rule("raw-output", proto, "s", ip, port, "notrack"),
                    Rule("filter-output", proto, "s", ip, port, "accept"),
                    # queries from the node itself (hostNetwork Pods, the kubelet's probes)
                    Rule("raw-output", proto, "d", ip, port, "notrack"),
                ]
    return out


# -- nf_tables expressions -----------------------------------------------------------------------
def _expr(name: str, **data: Any) -> dict[str, Any]:
    attrs: list[tuple[str, Any]] = [("NFTA_EXPR_NAME", name)]
    if data:
        attrs.append(("NFTA_EXPR_DATA", {"attrs": [(f"NFTA_{name.upper()}_{k.upper()}", v)
                                                    for k, v in OrderedDict(data).items()]}))
    return {"attrs": attrs}


def _value(raw: bytes) -> dict[str, Any]:
    return {"attrs": [("NFTA_DATA_VALUE", raw)]}


def _expressions(rule: Rule) -> list[dict[str, Any]]:
    addr = ipaddress.ip_address(rule.ip)
    if addr.version == 4:
        ip_offset = 16 if rule.direction == "d" else 12
    else:
        ip_offset = 24 if rule.direction == "d" else 8
    port_offset = 2 if rule.direction == "d" else 0
    # meta l4proto → reg1 == proto; network header addr → reg1 == ip; transport port → reg1 == port
    out = [
        _expr("meta", key=16, dreg=1),  # NFT_META_L4PROTO
        _expr("cmp", sreg=1, op=0, data=_value(bytes([_L4[rule.proto]]))),
        _expr("payload", dreg=1, base=1, offset=ip_offset, len=len(addr.packed)),
        _expr("cmp", sreg=1, op=0, data=_value(addr.packed)),
        _expr("payload", dreg=1, base=2, offset=port_offset, len=2),
        _expr("cmp", sreg=1, op=0, data=_value(struct.pack("!H", rule.port))),
        _expr("counter", bytes=0, packets=0),
    ]
    if rule.verdict == "notrack":
        out.append(_expr("notrack"))
    else:
        verdict = {"attrs": [("NFTA_DATA_VERDICT", {"attrs": [("NFTA_VERDICT_CODE", _NF_ACCEPT)]})]}
        out.append(_expr("immediate", dreg=0, data=verdict))  # NFT_REG_VERDICT
    return out


def _nft(version: int) -> Any:
    from pyroute2.nftables.main import NFTables

    return NFTables(nfgen_family=_NFPROTO[version])


def _table_exists(nft: Any) -> bool:
    return any(t.get_attr("NFTA_TABLE_NAME") == TABLE for t in nft.get_tables())


def install_rules(rules: Sequence[Rule]) -> None:
    """Write our table(s) with ``rules``, replacing any left from an earlier run, atomically."""
    by_version: dict[int, list[Rule]] = {}
    for r in rules:
        by_version.setdefault(ipaddress.ip_address(r.ip).version, []).append(r)
    for version in (4, 6):
        nft = _nft(version)
        try:
            stale = _table_exists(nft)
            if not stale and version not in by_version:
                continue
            nft.begin()
            if stale:
                nft.table("del", name=TABLE)
            if version in by_version:
                nft.table("add", name=TABLE)
                for name, hook, prio in _CHAINS:
                    nft.chain("add", table=TABLE, name=name, hook=hook, type="filter", priority=prio)
                for r in by_version[version]:
                    nft.rule("add", table=TABLE, chain=r.chain, expressions=[_expressions(r)])
            nft.commit()
        except OSError as e:
            raise NetSetupError(f"nf_tables ({_FAMILY_NAME[version]} {TABLE}): {e}") from e
        finally:
            nft.close()


def remove_rules() -> bool:
    """Delete our table(s); True if there was one (False: nothing to do, which is fine)."""
    removed = False
    for version in (4, 6):
        nft = _nft(version)
        try:
            if _table_exists(nft):
                nft.begin()
                nft.table("del", name=TABLE)
                nft.commit()
                removed = True
        except OSError as e:
            raise NetSetupError(f"nf_tables ({_FAMILY_NAME[version]} {TABLE}): {e}") from e
        finally:
            nft.close()
    return removed


def rule_counters() -> dict[str, int]:
    """Packets counted by each of our rules, keyed ``"<family> <chain> #<n>"`` (tests, debugging)."""
    out: dict[str, int] = {}
    for version in (4, 6):
        nft = _nft(version)
        try:
            n = 0
            for msg in nft.get_rules():
                if msg.get_attr("NFTA_RULE_TABLE") != TABLE:
                    continue
                for e in msg.get_attr("NFTA_RULE_EXPRESSIONS") or []:
                    if e.get_attr("NFTA_EXPR_NAME") == "counter":
                        packets = e.get_attr("NFTA_EXPR_DATA").get_attr("NFTA_COUNTER_PACKETS")
                        out[f"{_FAMILY_NAME[version]} {msg.get_attr('NFTA_RULE_CHAIN')} #{n}"] = packets
                n += 1
        finally:
            nft.close()
    return out


# -- the dummy interface ---------------------------------------------------------------------------
def ensure_interface(name: str, ips: Sequence[str]) -> bool:
    """The dummy interface ``name`` with every address in ``ips``, up; True if it was created.

    An existing interface of that name (left by a crashed run, or made by hand) is reused if it is
    a dummy (or our bridge fallback); any other kind is an error rather than something to take over.

    A kernel built without the dummy driver (``CONFIG_DUMMY`` off, as in some minimal VM kernels)
    refuses ``kind dummy`` with EOPNOTSUPP; then a bridge without ports is made instead, which for
    addresses delivered locally behaves as a dummy does (nothing is ever enslaved to it).
    """
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    with IPRoute() as ipr:
        try:
            found = ipr.link_lookup(ifname=name)
            created = not found
            if created:
                try:
                    ipr.link("add", ifname=name, kind="dummy")
                except NetlinkError as e:
                    if e.code != errno.EOPNOTSUPP:
                        raise
                    ipr.link("add", ifname=name, kind="bridge")
                found = ipr.link_lookup(ifname=name)
            index = found[0]
            link = ipr.get_links(index)[0]
            info = link.get_attr("IFLA_LINKINFO")
            kind = info.get_attr("IFLA_INFO_KIND") if info is not None else None
            if kind not in _KINDS:
                raise NetSetupError(f"interface {name!r} exists and is of type {kind or 'unknown'}, not dummy")
            have = {a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(index=index)}
            for ip in ips:
                addr = ipaddress.ip_address(ip)
                if str(addr) not in have:
                    ipr.addr("add", index=index, address=str(addr), prefixlen=addr.max_prefixlen)
            ipr.link("set", index=index, state="up")
            return created
        except NetlinkError as e:
            raise NetSetupError(f"interface {name!r}: {e}") from e


def remove_interface(name: str) -> bool:
    """Delete the interface ``name`` if it exists; True if it did."""
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=name)
        if not found:
            return False
        try:
            ipr.link("del", index=found[0])
        except NetlinkError as e:
            if e.code == errno.ENODEV:  # gone meanwhile
                return False
            raise NetSetupError(f"interface {name!r}: {e}") from e
        return True


def interface_addresses(name: str) -> list[str] | None:
    """The addresses of interface ``name``, or None if there is no such interface."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=name)
        if not found:
            return None
        return sorted(a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(index=found[0]))


def missing(name: str, ips: Sequence[str]) -> list[str]:
    """What of the set-up is gone (an interface deleted by hand, a ruleset flushed): [] if nothing."""
    have = interface_addresses(name)
    if have is None:
        out = [f"interface {name}"]
    else:
        out = [f"address {ip}" for ip in ips if str(ipaddress.ip_address(ip)) not in have]
    for version in sorted({ipaddress.ip_address(ip).version for ip in ips}):
        nft = _nft(version)
        try:
            if not _table_exists(nft):
                out.append(f"table {_FAMILY_NAME[version]} {TABLE}")
        finally:
            nft.close()
    return out


def setup(name: str, ips: Sequence[str], ports: Iterable[int]) -> list[Rule]:
    """Interface, then rules (both idempotent); returns the rules installed.

    If the rules fail, an interface this call created is removed again; one that was there
    before is left as it was found (it may not be ours).
    """
    created = ensure_interface(name, ips)
    rules = rules_for(ips, ports)
    try:
        install_rules(rules)
    except NetSetupError:
        if created:
            remove_interface(name)
        raise
    return rules


def teardown(name: str) -> None:
    """Rules, then interface; each step runs even if the other fails (the first error is raised)."""
    errors: list[NetSetupError] = []
    for step in (remove_rules, lambda: remove_interface(name)):
        try:
            step()
        except NetSetupError as e:
            errors.append(e)
    if errors:
        raise errors[0]
