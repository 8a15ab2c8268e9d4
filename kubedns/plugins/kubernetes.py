"""The ``kubernetes`` plugin: a block's cluster zones answered from the store.

It answers names in its zones synchronously from :class:`~kubedns.dns.records.ClusterZones` (exact
rcodes: NXDOMAIN with the SOA, SERVFAIL until synced), passes names outside them on, and on a
miss in a ``fallthrough`` zone asks the rest of the chain, answering with its own NXDOMAIN when
nobody after it serves the name.  An ExternalName's CNAME is chased as CoreDNS does: a target in
the cluster zones from the store, one outside through the block's forwarding (its upstream).

Answers are computed once per lower-cased name and kept in the listener's memo
(``Request.memo``, the fast path's ``computed`` half: bounded in bytes, dropped when the store data
they depend on changes, :mod:`kubedns.dns.depends`; one whose SOA serial moved is computed again).
Every reply carries those dependency keys for the fast path, a chased ExternalName's with its
target's, a fallen-through forwarded one's with the cluster name's; the query's spelling goes back into the owner names of each answer here, so case
spellings of one name share one computed answer and each still sees its own case (as CoreDNS).

``clusters`` may be replaced while the block runs (a store swapped in after a reload,
:mod:`kubedns.stores`); the next query uses the new one.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Protocol

from twisted.internet import defer
from twisted.names import dns

from kubedns.dns.depends import cluster_deps, serial_current
from kubedns.dns.query import Request
from kubedns.dns.records import Answer, ClusterZones
from kubedns.plugins.base import Next, Reply, Result, then, unserved

__all__ = ["KubernetesPlugin", "Upstream", "echo_case"]

SERVFAIL = dns.ESERVER
_UNSEEN: Any = object()  # not yet in the memo (None there means "not our name"); Any: it stands in for an entry
_CLASSES = (dns.IN, dns.ANY)
_NO_CHASE = (dns.CNAME, dns.ANY)


class Upstream(Protocol):
    """What an ExternalName chase needs of the block's forwarding (a ForwardChain)."""

    def handles(self, name: bytes) -> bool: ...

    def resolve(self, query: dns.Message, *, tcp: bool = False) -> defer.Deferred: ...


class KubernetesPlugin:
    """See the module docstring."""

    name = "kubernetes"

    def __init__(self, clusters: ClusterZones, upstream: Upstream | None = None):
        self.clusters = clusters
        self.upstream = upstream

    def serve(self, req: Request, next: Next) -> Result:  # noqa: A002
        clusters = self.clusters
        q = req.q
        res = None
        deps: tuple[Any, ...] | None = None
        if q.qclass in _CLASSES:
            lower = q.qname.lower()
            memo = req.memo
            if memo is None:
                res = clusters.answer(lower, q.qtype, req.lname)
            else:
                mkey = (clusters, lower, q.qtype)
                res = memo.computed.get(mkey, _UNSEEN)
                if res is not _UNSEEN and res is not None and not serial_current(res[1], clusters.store.serial & 0xFFFFFFFF):
                    res = _UNSEEN  # its SOA is an older serial's: what a fresh answer carries is the current one
                if res is _UNSEEN:
                    res = clusters.answer(lower, q.qtype, req.lname)
                    if res is None:
                        memo.keep_computed(mkey, None, ())  # not our zones: no store change alters that
                    elif res[1].rcode != SERVFAIL:  # SERVFAIL: not synced, ask again
                        deps = cluster_deps(clusters, res[0], _lname(req, lower))
                        memo.keep_computed(mkey, res, deps)
        if res is None:
            return next(req)
        zone, ans = res
        if deps is None:
            deps = cluster_deps(clusters, zone, _lname(req, lower))
        if clusters.falls_through(zone, ans):
            fell = Reply(_owned(ans, q.qname), zone, self.name)
            return then(next(req), lambda r: fell if unserved(r) else _depending(r, deps))
        if ans.answers and ans.answers[-1].type == dns.CNAME and q.qtype not in _NO_CHASE:
            return self._chase(req, zone, ans, deps=deps)
        return Reply(_owned(ans, q.qname), zone, self.name, cacheable=ans.rcode != SERVFAIL,
                     deps=deps, serial_of=clusters.store)

    def _chase(self, req: Request, zone: str, ans: Answer, depth: int = 0, deps: tuple[Any, ...] = ()) -> Result:
        """Follow an ExternalName CNAME as CoreDNS does, so stub resolvers get the address too.

        A target inside the cluster zones is answered from the store (and stays fast-path
        cacheable); a target outside goes through the block's forwarding and its records are
        appended after the CNAME, with the upstream's rcode.  Without forwarding the CNAME alone
        is returned.
        """
        if depth == 0:  # ``ans`` may be a kept computed answer: extend a copy
            ans = Answer(rcode=ans.rcode, answers=list(ans.answers), authority=list(ans.authority),
                         additional=list(ans.additional), authoritative=ans.authoritative)
        target = ans.answers[-1].payload.name.name  # type: ignore[union-attr]
        clusters = self.clusters
        q = req.q
        ltarget = target.decode("ascii", "replace").lower().rstrip(".")
        tzone = clusters.zone_of(ltarget)
        if tzone is not None:
            sub = clusters.answer(target, q.qtype)
            if sub is not None and depth < 8:
                deps = deps + cluster_deps(clusters, tzone, ltarget)  # the answer now holds the target's
                ans.answers.extend(sub[1].answers)
                if sub[1].answers and sub[1].answers[-1].type == dns.CNAME:
                    return self._chase(req, zone, ans, depth + 1, deps)
                if not sub[1].answers:
                    ans.rcode = sub[1].rcode
                    ans.authority = sub[1].authority
            return self._reply(ans, q.qname, zone, cacheable=True, deps=deps, serial_of=clusters.store)
        upstream = self.upstream
        if upstream is None or not upstream.handles(target) or depth >= 8:
            return self._reply(ans, q.qname, zone, cacheable=True, deps=deps, serial_of=clusters.store)
        sub_q = dns.Message(recDes=1)
        sub_q.queries = [dns.Query(target, q.qtype, dns.IN)]

        def merged(up: dns.Message) -> Reply:
            ans.answers.extend(up.answers)
            if not up.answers:
                ans.rcode = up.rCode
                ans.authority = list(up.authority)
            return self._reply(ans, q.qname, zone, ra=True)

        d = upstream.resolve(sub_q, tcp=req.proto == "tcp")
        d.addCallbacks(merged, lambda f: self._reply(ans, q.qname, zone, ra=True))
        return d

    def _reply(self, ans: Answer, qname: bytes, zone: str, **kw: Any) -> Reply:
        ans.answers = echo_case(ans.answers, qname)  # ``ans`` is our own copy here
        return Reply(ans, zone, self.name, **kw)


def _lname(req: Request, lower: bytes) -> str:
    """The lower-cased query name as a string without the trailing dot."""
    lname = req.lname
    if lname is None:
        lname = lower.decode("ascii", "replace")
    return lname.rstrip(".")


def _depending(reply: Reply, deps: tuple[Any, ...]) -> Reply:
    """A reply from after a fallthrough, also depending on the cluster name it fell from (a
    forwarded one is then dropped when that name changes: it may start answering itself)."""
    if reply.deps is None and reply.cacheable:
        return reply  # unknown dependencies already: any store change drops it
    return replace(reply, deps=(reply.deps or ()) + deps)


def _owned(ans: Answer, qname: bytes) -> Answer:
    """``ans`` (maybe a kept one, never changed) as owned by the query's spelling of its name."""
    answers = echo_case(ans.answers, qname)
    if answers is ans.answers:
        return ans
    return Answer(rcode=ans.rcode, answers=answers, authority=ans.authority, additional=ans.additional,
                  authoritative=ans.authoritative)


class _Owned:
    """A kept cluster record as owned by the query's spelling of its name (only ``encode`` and
    what it reads differ from the record itself: nothing is copied)."""

    __slots__ = ("name", "rr")

    def __init__(self, rr: dns.RRHeader, name: dns.Name):
        self.rr = rr
        self.name = name

    def __getattr__(self, attr: str) -> Any:
        return getattr(self.rr, attr)

    def encode(self, strio: Any, comp: dict[bytes, int] | None = None) -> None:
        dns.RRHeader.encode(self, strio, comp)  # type: ignore[arg-type]


def echo_case(answers: list[Any], qname: bytes) -> list[Any]:
    """``answers`` with the records owned by the lower-cased ``qname`` owned by ``qname`` as asked.

    Cluster answers are computed and kept once per lower-cased name; owner names echo the
    query's case (as CoreDNS does), so the spelling is put back here, per query, the way the
    answer would have been encoded had it been computed for this spelling.
    """
    lower = qname.lower()
    if lower == qname or not answers:
        return answers
    name = dns.Name(qname)
    return [_Owned(rr, name) if rr.name.name == lower else rr for rr in answers]
