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
from typing import TYPE_CHECKING, Any

from twisted.names import dns

from kubedns.dns.query import Request
from kubedns.dns.records import Answer
from kubedns.plugins.base import Next, Reply, Result
from kubedns.plugins.hoststable import HostsConfig, HostsTable, address_from_reverse

if TYPE_CHECKING:
    from kubedns.config import Config

__all__ = ["HostsPlugin", "HostsPlugins"]

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
    """See the module docstring.  The file is read when the plugin is made; ``start()`` and
    ``stop()`` run and end its checks every ``reload`` period."""

    name = "hosts"

    def __init__(self, config: HostsConfig, block_zones: tuple[str, ...], reactor: Any = None):
        self.config = config
        self.block_zones = block_zones
        self.zones = config.zones or block_zones
        self.fallthrough = config.fallthrough
        self.ttl = config.ttl
        self.table = HostsTable(config.file, config.entries, self.zones, not config.no_reverse,
                                config.reload, reactor)
        self.table.check()  # read now: a block (a reload's too) answers from its first query

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


class HostsPlugins:
    """The ``hosts`` plugins of the running config, for the wiring (:mod:`kubedns.service`).

    A reload keeps a block's plugin (its table, its reload checks) while the block's ``hosts``
    config and zones are unchanged, so an unchanged file is not read again; a changed one gets a
    new plugin, read in :meth:`plan` (before anything is committed: a block answers from its
    first query) and started in :meth:`commit`.  Every plugin calls ``on_change`` when its file
    changes (the wiring drops its pre-encoded answers there).
    """

    def __init__(self, on_change: Callable[[], None], reactor: Any = None):
        self.on_change = on_change
        self.reactor = reactor
        self.running = False
        self._kept: dict[tuple[Any, ...], HostsPlugin] = {}

    def plan(self, config: Config) -> dict[int, HostsPlugin]:
        """Each block with ``hosts`` (by index) → its plugin, kept or new (read, not started)."""
        out: dict[int, HostsPlugin] = {}
        made: dict[tuple[Any, ...], HostsPlugin] = {}
        for b in config.servers:
            if b.hosts is None:
                continue
            key = (b.hosts, b.zones)
            plugin = made.get(key) or self._kept.get(key)
            if plugin is None:
                plugin = HostsPlugin(b.hosts, b.zones, self.reactor)
                plugin.on_change.append(self.on_change)
            made[key] = out[b.index] = plugin
        return out

    def commit(self, plan: dict[int, HostsPlugin]) -> None:
        """``plan``'s plugins are the running ones: new ones start, those left out stop."""
        keep = {(p.config, p.block_zones): p for p in plan.values()}
        for key, plugin in self._kept.items():
            if keep.get(key) is not plugin:
                plugin.stop()
        self._kept = keep
        if self.running:
            self.start()

    def start(self) -> None:
        self.running = True
        for plugin in self._kept.values():
            plugin.start()

    def gauges(self) -> tuple[dict[str, int], float]:
        """CoreDNS's hosts metrics: entries (file and inline) per hosts file (``""``: inline
        only), and the newest modification time of a file when it was last read (0: none)."""
        entries: dict[str, int] = {}
        newest = 0.0
        for plugin in self._kept.values():
            table = plugin.table
            entries[table.path or ""] = len(table)
            newest = max(newest, table.reloaded_at)
        return entries, newest

    def stop(self) -> None:
        self.running = False
        for plugin in self._kept.values():
            plugin.stop()
