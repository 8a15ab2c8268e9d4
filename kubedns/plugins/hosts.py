"""The ``hosts`` plugin: A, AAAA and PTR from a hosts(5) file and inline lines, as CoreDNS's.

k3s puts every node's name in its clusters this way (``hosts /etc/coredns/NodeHosts { ttl 60;
reload 15s; fallthrough }``).  The table and its reload are :mod:`kubedns.plugins.hoststable`;
this module turns a lookup into an answer exactly as CoreDNS's ``ServeDNS`` does:

- a name outside the plugin's zones goes to the next plugin, whatever ``fallthrough`` says;
  a PTR query is looked up whatever its zone, and one with no name here goes on too;
- A and AAAA answer the name's addresses (authoritative, the configured TTL, no SOA);
- a name here asked another type (or A/AAAA of a name with only the other family) is NODATA:
  NOERROR, authoritative, no records (with ``fallthrough_unsupported``, another type goes on);
- a name in the zones that is not here goes to the next plugin if ``fallthrough`` covers it, and
  is otherwise SERVFAIL: CoreDNS has no SOA for a hosts file to make an NXDOMAIN with;
- owner names are the query name lower-cased (CoreDNS's ``state.Name()``).

Its answers may be pre-encoded on the fast path: they change only when the table does, and then
the wiring drops the fast path (``on_change``), which a hosts change needs anyway since this
plugin comes before ``kubernetes`` and ``forward``, whose kept answers it may now hide.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.names import dns

from kubedns.plugins.base import Next, Reply, Result
from kubedns.plugins.hoststable import HostsConfig, HostsTable, address_from_reverse
from kubedns.query import Request
from kubedns.records import Answer

__all__ = ["HostsPlugin"]

_A, _AAAA, _PTR = dns.A, dns.AAAA, dns.PTR
NOT_FOUND = "hosts: name not in the hosts data and no fallthrough"


def _zone_of(zones: tuple[str, ...], lname: str) -> str | None:
    """The longest of ``zones`` holding ``lname`` (``""`` is the root), or None."""
    best: str | None = None
    for z in zones:
        if (z == "" or lname == z or lname.endswith("." + z)) and (best is None or len(z) > len(best)):
            best = z
    return best


class HostsPlugin:
    """See the module docstring.  ``start()``/``stop()`` run the file's reload checks."""

    name = "hosts"

    def __init__(self, config: HostsConfig, block_zones: tuple[str, ...], reactor: Any = None):
        self.config = config
        self.zones = config.zones or block_zones
        self.fallthrough = config.fallthrough
        self.ttl = config.ttl
        self.table = HostsTable(config.file, config.entries, self.zones, not config.no_reverse,
                                config.reload, reactor)

    @property
    def on_change(self) -> list[Callable[[], None]]:
        """Called after the file's entries changed: whatever kept answers must drop them."""
        return self.table.on_change

    def start(self) -> None:
        self.table.start()

    def stop(self) -> None:
        self.table.stop()

    def falls(self, lname: str) -> bool:
        return _zone_of(self.fallthrough, lname) is not None

    def serve(self, req: Request, next: Next) -> Result:  # noqa: A002 (CoreDNS's word)
        lname = req.lname
        qtype = req.q.qtype
        zone = _zone_of(self.zones, lname)
        table = self.table
        ttl = self.ttl
        owner = req.q.qname.lower()
        answers: list[dns.RRHeader]
        if qtype == _PTR:
            address = address_from_reverse(lname)
            names = table.names(address) if address is not None else []
            if not names:
                return next(req)  # whatever fallthrough says, as CoreDNS
            answers = [dns.RRHeader(owner, _PTR, dns.IN, ttl, dns.Record_PTR(n.encode(), ttl)) for n in names]
            return Reply(Answer(answers=answers), zone or "", self.name, cacheable=True)
        if zone is None:
            return next(req)
        if qtype == _A:
            answers = [dns.RRHeader(owner, _A, dns.IN, ttl, dns.Record_A(a, ttl)) for a in table.addresses(lname, False)]
        elif qtype == _AAAA:
            answers = [dns.RRHeader(owner, _AAAA, dns.IN, ttl, dns.Record_AAAA(a, ttl))
                       for a in table.addresses(lname, True)]
        else:
            if self.config.fallthrough_unsupported and self.falls(lname):
                return next(req)
            answers = []
        if not answers and not table.has_name(lname):
            if self.falls(lname):
                return next(req)
            return Reply(Answer(rcode=dns.ESERVER, authoritative=False), zone, self.name, error=NOT_FOUND)
        return Reply(Answer(answers=answers), zone, self.name, cacheable=True)
