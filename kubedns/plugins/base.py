"""The one interface every per-query plugin has, and the chain that runs a server block's plugins.

A server block answers a query by walking its plugins in CoreDNS's fixed order (:data:`ORDER`,
its ``plugin.cfg``), whatever the order they were written in.  Each plugin's ``serve`` either
answers now (returns a :class:`Reply`), answers later (returns a Deferred firing with one), or
passes the query on with ``next(req)``, possibly changing what comes back on its way out
(:func:`then` applies a function to a Reply now or when the Deferred fires).  The end of the
chain answers REFUSED: no plugin served the name, as in CoreDNS.

This is twisted.names' resolver-chain idea made exact: one plugin is the cluster's authority,
another forwards, and what sits between them (the order, fallthrough, answers transformed on
the way back) is decided here only.  Plugins that only configure the process (health, ready,
prometheus, reload, bind, debug, import) have no ``serve`` and are not in a chain.

The header, EDNS and routing checks that come before any plugin stay in the server
(:class:`kubedns.serve.server.Dispatcher`), as in CoreDNS's ``dnsserver``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol, Union

from twisted.internet.defer import Deferred
from twisted.names import dns

from kubedns.dns.query import Request
from kubedns.dns.records import Answer

__all__ = ["END", "ORDER", "Next", "Plugin", "Reply", "Result", "build_chain", "refused", "then", "unserved"]


@dataclass(slots=True)
class Reply:
    """A plugin's answer on its way back to the server, which encodes it.

    Treated as immutable once returned (plugins transforming it make a new one with
    ``dataclasses.replace``): the ``answer`` may be one the cluster plugin keeps for other queries.
    """

    answer: Answer
    zone: str  # the zone it was answered for ("" = the block's first zone)
    plugin: str  # which plugin answered (metrics, logs); "" = nobody (refused, errors)
    ra: bool | None = None  # recursion available; None: the block forwards
    ad: bool = False
    #: computed from a store: the encoded bytes may be kept (fast path) until a store changes
    cacheable: bool = False
    #: forwarded: the encoded bytes may be kept this many seconds, TTLs counting down
    lifetime: float = 0.0
    error: str = ""  # why this is a failure, when more is known than the rcode (errors:)
    edns_options: bytes = b""  # the upstream's EDNS options to relay
    #: loadbalance: every answer must reorder A/AAAA/MX (the fast path keeps rotations)
    rotate: bool = False
    #: the store data the kept bytes depend on (:mod:`kubedns.dns.depends`); None: unknown (a
    #: cacheable answer is then dropped by any store change, a forwarded one by none)
    deps: tuple[Any, ...] | None = None
    #: the store whose SOA serial the answer's SOA records carry (kept bytes follow it)
    serial_of: Any = None
    #: send nothing back at all (``acl``'s ``drop``)
    drop: bool = False
    #: forwarded: the upstream's answer as bytes (:class:`kubedns.forward.relay.Relayed`), whose
    #: ``answer`` is then a :class:`~kubedns.forward.relay.LazyAnswer` decoded on first use; the
    #: server sends these bytes (with the client's ID, question and OPT) while ``answer`` is still
    #: that LazyAnswer, and encodes ``answer`` once a plugin replaced it
    relay: Any = None


Result = Union[Reply, "Deferred[Reply]"]
Next = Callable[[Request], Result]


class Plugin(Protocol):
    """A per-query plugin: ``name`` is its CoreDNS name (its place in :data:`ORDER`)."""

    name: str

    def serve(self, req: Request, next: Next) -> Result: ...  # noqa: A002 (CoreDNS's word)


def then(result: Result, fn: Callable[[Reply], Reply]) -> Result:
    """``fn`` applied to ``result``: now for a Reply, when it fires for a Deferred."""
    if isinstance(result, Deferred):
        return result.addCallback(fn)
    return fn(result)


#: CoreDNS's plugin order (``plugin.cfg``, coredns/coredns master): a query meets the plugins of
#: its block in this order, whatever their order in the file.
ORDER: tuple[str, ...] = (
    "root", "metadata", "geoip", "cancel", "proxyproto", "quic", "grpc_server", "https", "https3",
    "timeouts", "multisocket", "reload", "nsid", "bufsize", "bind", "debug", "trace", "ready",
    "health", "pprof", "shed", "prometheus", "errors", "log", "dnstap", "local", "dns64", "any",
    "chaos", "loadbalance", "tsig", "rewrite", "autopath", "acl", "cache", "header", "dnssec", "tls",
    "minimal", "template", "transfer", "hosts", "route53", "azure", "clouddns", "k8s_external",
    "kubernetes", "file", "auto", "secondary", "etcd", "loop", "forward", "grpc", "erratic", "whoami",
    "on", "sign", "view", "nomad",
)
_RANK = {name: i for i, name in enumerate(ORDER)}

#: ``Reply.plugin`` of the end of the chain's REFUSED: nobody served the name.
END = ""


def refused(req: Request) -> Reply:
    """The end of every chain: REFUSED, not authoritative, as CoreDNS for a name nobody serves."""
    return Reply(Answer(rcode=dns.EREFUSED, authoritative=False), "", END)


def unserved(reply: Reply) -> bool:
    """True when ``reply`` is the end of the chain's: no plugin after the caller served the name
    (a plugin that fell through may then answer with what it had)."""
    return reply.plugin == END and reply.answer.rcode == dns.EREFUSED


def build_chain(plugins: Iterable[Plugin]) -> Next:
    """The block's ``serve``: ``plugins`` in :data:`ORDER` (ties keep their given order), ending
    in :func:`refused`.  Built once per block at config time; a call is one closure per plugin.

    A plugin whose name is not in :data:`ORDER` is a programming error (ValueError): its place
    in the chain would be undefined.
    """
    items = list(plugins)
    for p in items:
        if p.name not in _RANK:
            raise ValueError(f"plugin {p.name!r} has no place in CoreDNS's plugin order")
    items.sort(key=lambda p: _RANK[p.name])
    chain: Next = refused
    for p in reversed(items):
        chain = _link(p, chain)
    return chain


def _link(plugin: Plugin, nxt: Next) -> Next:
    serve = plugin.serve

    def step(req: Request) -> Result:
        return serve(req, nxt)

    step.__qualname__ = f"chain[{plugin.name}]"
    return step
