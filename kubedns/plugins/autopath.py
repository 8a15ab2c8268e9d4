"""The ``autopath`` plugin: the client's search path walked on the server, as CoreDNS's *autopath*.

With ``ndots:5`` a Pod resolving ``google.com`` sends A and AAAA for every search domain before the
name itself: up to 10 queries.  ``autopath`` answers the first of them (``google.com.<ns>.svc.
<zone>``) by asking the rest of the block's chain for each element of the client's search path in
turn, and returns the first answer that is not NXDOMAIN with a CNAME from the asked name to the
name that answered (CoreDNS's ``cnamer``): glibc and musl accept it and stop there.

What it does, as CoreDNS's ``plugin/autopath`` and ``plugin/kubernetes/autopath.go``:

- ``autopath [ZONE...] RESOLV-CONF``: the search path is the ``search`` (or ``domain``) line of a
  resolv.conf file, read at start; ``autopath @kubernetes``: per query, from the namespace of the
  Pod whose IP sent it: ``<ns>.svc.<zone>``, ``svc.<zone>``, ``<zone>``, then the node's search
  domains (CoreDNS reads them from its own /etc/resolv.conf), then the name itself.  A client IP
  that is no Pod's, or a query outside the kubernetes zones, gets nothing done to it.
- Only a name at or below the path's first element is walked (the first expansion).  Each step
  goes through the rest of the chain (``kubernetes``, the cache and ``forward``); a step that
  fails (SERVFAIL, REFUSED, FORMERR, NOTIMP) or is NXDOMAIN moves to the next; any other answer,
  NODATA included, is returned: its records with, in front, a CNAME from the asked name to the
  owner of the first record not owned by it, with that record's TTL (NODATA: no CNAME, the other
  name's SOA in authority).  When every step fails the first step's answer goes back as is and
  the client walks its path itself.  A forwarding error ends the walk with that SERVFAIL.

How it differs from CoreDNS:

- No Pod objects: the Pod is found in the IP → namespace index the store keeps for ``pods
  verified``, and the query's own ``<ns>`` label is checked against it (``pod_in_namespace``), so
  autopath adds no memory per Pod.  ``autopath @kubernetes`` makes kubedns watch Pods whatever the
  ``pods`` mode (CoreDNS does nothing unless ``pods verified``); pod answers still follow ``pods``.
  An IP several Pods share (host network) is walked for a query in the namespace of any of them;
  CoreDNS takes the first Pod its index returns.
- A query for the first search domain itself (``<ns>.svc.<zone>``) is answered as without
  autopath; CoreDNS answers SERVFAIL (nothing is left of the name once the domain is cut off).
- Nothing is walked before every watched kind has been listed (the cluster steps would be
  SERVFAIL, and an outside name could answer for a Service not yet seen).

Answers that depend on who asked never go on the fast path, whose key has no client address: a
walked answer is not kept unless the first step answered (then it is what every client gets).
And since any Pod of ``<ns>`` may send ``<name>.<ns>.svc.<zone>`` next, a failed or negative
answer to such a name is not kept either while namespace ``<ns>`` exists (when it does not, it is
kept and tagged with the namespace, so its creation drops it).  Every other name, and every
positive answer, stays on the fast path.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.names import dns

from kubedns.configbase import ConfigError, Node
from kubedns.dns.records import Answer
from kubedns.plugins.base import Next, Reply, Result, then
from kubedns.plugins.rewrite import with_question

if TYPE_CHECKING:
    from kubedns.dns.query import Request
    from kubedns.plugins.kubernetes import KubernetesPlugin

__all__ = ["KUBERNETES", "AutopathConfig", "AutopathPlugin", "cnamer", "parse_autopath_config", "read_search"]

#: the RESOLV-CONF argument naming the kubernetes plugin as the source of the search path
KUBERNETES = "@kubernetes"
#: where CoreDNS's kubernetes plugin reads the node's search domains from
NODE_RESOLV_CONF = "/etc/resolv.conf"
#: rcodes after which the walk goes on (CoreDNS's ``plugin.ClientWrite`` false, and NXDOMAIN)
_GO_ON = frozenset((dns.ESERVER, dns.EREFUSED, dns.EFORMAT, dns.ENOTIMP, dns.ENAME))
_MAX_RESOLV_BYTES = 1 << 16


@dataclass(frozen=True, slots=True)
class AutopathConfig:
    """``autopath [ZONE...] RESOLV-CONF``.

    ``zones``: where autopath acts (empty: the block's zones).  ``kubernetes``: RESOLV-CONF is
    ``@kubernetes``, the search path is the asking Pod's; ``search`` is then the node's search
    domains, tried after the cluster's, else the file's whole search list.  Names are lower-case
    without the trailing dot.
    """

    zones: tuple[str, ...] = ()
    kubernetes: bool = True
    search: tuple[str, ...] = ()
    source: str = KUBERNETES  # RESOLV-CONF as written (the file's path, resolved)


def read_search(path: str) -> tuple[str, ...] | None:
    """The search list of a resolv.conf file (its last ``search`` or ``domain`` line, as Go's
    miekg/dns reads it); None when it has neither.  OSError/UnicodeDecodeError when unreadable."""
    with open(path, "rb") as f:
        text = f.read(_MAX_RESOLV_BYTES).decode("utf-8")
    search: tuple[str, ...] | None = None
    for line in text.splitlines():
        fields = line.split()
        if not fields or fields[0].startswith(("#", ";")):
            continue
        if fields[0] in ("search", "domain") and len(fields) > 1:
            names = fields[1:] if fields[0] == "search" else fields[1:2]
            search = tuple(dict.fromkeys(n.lower().rstrip(".") for n in names if n.strip(".")))
    return search


def parse_autopath_config(node: Node, resolve: Callable[[str], str]) -> AutopathConfig:
    """``autopath: "@kubernetes"`` or ``autopath: PATH``, or the mapping ``{resolv_conf, zones,
    node_resolv_conf}``; ``resolve`` makes a relative path the config file's neighbour."""
    expect = 'RESOLV-CONF: "@kubernetes" or a resolv.conf file, or a mapping with resolv_conf (and zones)'
    zones: tuple[str, ...] = ()
    node_rc: Node | None = None
    if isinstance(node.value, str):
        src_node = node
    elif isinstance(node.value, dict):
        node.mapping({"resolv_conf", "zones", "node_resolv_conf"})
        src_node = node.get("resolv_conf", KUBERNETES)
        if node.has("zones"):
            zones = node.get("zones").zones()
        if node.has("node_resolv_conf"):
            node_rc = node.get("node_resolv_conf")
    else:
        raise node.error(expect)
    source = src_node.string().strip()
    if source.startswith("@"):
        if source != KUBERNETES:
            raise src_node.error('"@kubernetes" (the only plugin kubedns can take a search path from)')
        search: tuple[str, ...] = ()
        path = NODE_RESOLV_CONF
        if node_rc is not None:
            path = resolve(node_rc.string())
        try:
            search = read_search(path) or ()
        except (OSError, UnicodeDecodeError) as e:
            if node_rc is not None:  # the default file may be missing (CoreDNS then adds nothing)
                raise node_rc.error(f"a readable resolv.conf file ({getattr(e, 'strerror', None) or e})") from None
        return AutopathConfig(zones, True, search, KUBERNETES)
    if node_rc is not None:
        raise node_rc.error('node_resolv_conf only with resolv_conf "@kubernetes"')
    path = resolve(source)
    try:
        got = read_search(path)
    except (OSError, UnicodeDecodeError) as e:
        raise src_node.error(f"a readable resolv.conf file ({getattr(e, 'strerror', None) or e})") from None
    if not got:
        raise src_node.error("a resolv.conf file with a search (or domain) line")
    return AutopathConfig(zones, False, got, path)


def check_block(config: AutopathConfig, has_kubernetes: bool, path: str, key: str) -> None:
    """``@kubernetes`` needs the block's ``kubernetes`` (CoreDNS silently does nothing without)."""
    if config.kubernetes and not has_kubernetes:
        raise ConfigError(path, key, 'a kubernetes key in the same block for autopath "@kubernetes"',
                          has_found=False)


class AutopathPlugin:
    """See the module docstring.  ``kubernetes`` is the block's running plugin (its ``clusters``
    may be swapped after a reload: read per query)."""

    name = "autopath"

    def __init__(self, config: AutopathConfig, block_zones: tuple[str, ...],
                 kubernetes: KubernetesPlugin | None = None):
        self.config = config
        self.zones = config.zones or block_zones
        self.kubernetes = kubernetes if config.kubernetes else None
        self.search = config.search
        #: walks that found an answer, the first step's included (CoreDNS's
        #: ``coredns_autopath_success_total``; repeats answered from the fast path are not walks)
        self.successes = 0

    def serve(self, req: Request, next: Next) -> Result:  # noqa: A002 (CoreDNS's word)
        lname = req.lname.rstrip(".")
        if not _within(lname, self.zones):
            return next(req)
        if self.kubernetes is None:
            if self.config.kubernetes:  # no cluster answers in this block (yet): nothing to ask
                return next(req)
            first = self.search[0]
            if not lname.endswith("." + first):  # the domain itself too (CoreDNS: SERVFAIL)
                return next(req)
            return self._walk(req, next, len(lname) - len(first) - 1, (*self.search, ""))
        clusters = self.kubernetes.clusters
        zone = clusters.zone_of(lname)
        if zone is None:
            return next(req)
        # the fast decline: is the name below some "<ns>.svc.<zone>" at all?
        suffix = ".svc." + zone if zone else ".svc"
        if not lname.endswith(suffix):
            return next(req)
        head = lname[: len(lname) - len(suffix)]
        cut = head.rfind(".")
        if cut <= 0:  # "<ns>.svc.<zone>" itself: nothing to expand (CoreDNS: SERVFAIL)
            return next(req)
        ns = head[cut + 1 :]
        store = clusters.store
        peer = req.peer
        ip = _ip(peer[0]) if isinstance(peer, tuple) and peer else None
        if ip is None or not store.pod_in_namespace(ip, ns) or not store.synced:
            return then(next(req), lambda r: _guarded(r, store, ns))
        svc = "svc." + zone if zone else "svc"
        search = [f"{ns}.{svc}", svc]
        if zone:
            search.append(zone)
        search.extend(s for s in self.search if s not in search)
        search.append("")
        return self._walk(req, next, cut, search)

    def _walk(self, req: Request, next: Next, base_len: int, search: list[str] | tuple[str, ...]) -> Result:  # noqa: A002
        """Ask ``base + "." + s`` for each ``s`` of ``search`` (the base in the client's case)."""
        q = req.q
        base = q.qname[:base_len]
        names = [base + b"." + s.encode("ascii") if s else base for s in search]
        return _Walk(self, req, next, names).step(0)


class _Walk:
    """One walk of the search path: synchronous while the chain answers now, then chained."""

    __slots__ = ("first", "names", "next", "plugin", "req")

    def __init__(self, plugin: AutopathPlugin, req: Request, next: Next, names: list[bytes]):  # noqa: A002
        self.plugin = plugin
        self.req = req
        self.next = next
        self.names = names
        self.first: Reply | None = None

    def step(self, i: int) -> Result:
        req = self.req
        q = req.q
        while i < len(self.names):
            # the first step is the query itself, as the client spelled it
            r = self.next(req if i == 0 else with_question(req, self.names[i], q.qtype, q.qclass))
            if isinstance(r, Deferred):
                return r.addCallback(self._later, i)
            done = self._judge(r, i)
            if done is not None:
                return done
            i += 1
        first = self.first
        assert first is not None  # the search path is never empty
        return replace(first, cacheable=False, lifetime=0.0)  # the client walks on itself

    def _later(self, r: Reply, i: int) -> Result:
        done = self._judge(r, i)
        return done if done is not None else self.step(i + 1)

    def _judge(self, r: Reply, i: int) -> Reply | None:
        """The reply to send when step ``i`` answered ``r``, or None to go on."""
        if i == 0:
            self.first = r
        rcode = r.answer.rcode
        if r.error and rcode == dns.ESERVER:  # CoreDNS: a plugin's error ends the walk with it
            return replace(r, cacheable=False, lifetime=0.0)
        if rcode in _GO_ON:
            return None
        self.plugin.successes += 1
        if i == 0:
            return r  # what every client gets for this name: the fast path may keep it
        return replace(r, answer=cnamer(r.answer, self.req.q.qname), plugin=self.plugin.name,
                       cacheable=False, lifetime=0.0, deps=None, serial_of=None)


def cnamer(ans: Answer, original: bytes) -> Answer:
    """``ans`` with a CNAME in front from ``original`` to the owner of its first record not owned
    by ``original``, with that record's TTL (CoreDNS's ``cnamer``); unchanged records are shared."""
    low = original.lower()
    for rr in ans.answers:
        owner = rr.name.name
        if owner.lower() == low:
            continue
        cname = dns.RRHeader(name=original, type=dns.CNAME, cls=dns.IN, ttl=rr.ttl,
                             payload=dns.Record_CNAME(owner, ttl=rr.ttl))
        return Answer(rcode=ans.rcode, answers=[cname, *ans.answers], authority=ans.authority,
                      additional=ans.additional, authoritative=ans.authoritative)
    return ans


def _guarded(r: Reply, store: Any, ns: str) -> Reply:
    """A reply to ``<name>.<ns>.svc.<zone>`` from a client autopath did not walk for: a Pod of
    ``<ns>`` asking next would be walked, so a failed or negative answer stays off the fast path
    while ``<ns>`` exists, and depends on its existence when it does not."""
    if r.answer.rcode == dns.OK or not (r.cacheable or r.lifetime > 0):
        return r
    if store.namespace_exists(ns):
        return replace(r, cacheable=False, lifetime=0.0)
    if r.cacheable and r.deps is None:
        return r  # dropped by any store change already
    return replace(r, deps=(*(r.deps or ()), (store, "ns", ns)))


def _within(lname: str, zones: tuple[str, ...]) -> bool:
    for z in zones:
        if not z or lname == z or lname.endswith("." + z):
            return True
    return False


def _ip(host: Any) -> str | None:
    """The client address as the store keys it (an IPv4-mapped IPv6 address as IPv4)."""
    if not isinstance(host, str):
        return None
    if host.startswith("::ffff:") and "." in host:
        return host[7:]
    return host.split("%", 1)[0]

