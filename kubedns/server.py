"""The DNS server's dispatch: one query in as bytes, one answer out as bytes (or a Deferred).

One :class:`Dispatcher` per listen address holds the server blocks that share it; a query goes
to the block with the longest zone containing its name, then inside that block to the cluster
zones (answered synchronously from the store), else to the forward chain (a Deferred), else
REFUSED, as CoreDNS does for a name no plugin serves.

We do not use twisted.names' ``DNSServerFactory``: it answers NXDOMAIN without SOA or AA, turns
upstream SERVFAIL into NXDOMAIN, ignores EDNS and truncates mid-record.  Here the response is
built by :func:`kubedns.wire.encode_response` from the exact rcode and sections, and nothing a
client sends can raise out of ``datagramReceived``: a packet that does not decode gets FORMERR
(or is dropped if it has no header), anything unexpected gets SERVFAIL and a log line.

The UDP/TCP protocols are in :mod:`kubedns.protocols`; the pre-encoded answers of the fast path
in :mod:`kubedns.fastcache`, filled here by :meth:`Dispatcher._finish`.
"""

from __future__ import annotations

import struct
import time
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.names import dns
from twisted.python.failure import Failure

from kubedns.config import ServerBlock
from kubedns.fastcache import Aging, FastCache
from kubedns.query import Observer, QueryInfo, Request
from kubedns.records import Answer, ClusterZones
from kubedns.wire import (
    BADVERS,
    DOTTED_LABEL,
    encode_response,
    error_response,
    parse_question,
    query_edns_options,
    read_edns_raw,
    scan_query_records,
    ttl_fields,
    udp_limit,
)

__all__ = ["Block", "Dispatcher"]

log = Logger()

FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED = dns.EFORMAT, dns.ESERVER, dns.ENAME, dns.ENOTIMP, dns.EREFUSED
_UNSEEN = object()  # not yet in FastCache.computed (None there means "not our name")


class Block:
    """One configured server block at run time: its zones and what answers them."""

    def __init__(self, config: ServerBlock, clusters: ClusterZones | None, chain: Any = None, loop: Any = None):
        self.config = config
        self.zones = config.zones
        self.clusters = clusters
        self.chain = chain
        self.loop = loop

    def covers(self, lname: str) -> int:
        """Length of the longest zone of ours holding ``lname``, or -1."""
        best = -1
        for z in self.zones:
            if z == "" or lname == z or lname.endswith("." + z):
                best = max(best, len(z))
        return best


class Dispatcher:
    """Routes queries arriving on one listen address to the right block and encodes the answer."""

    def __init__(self, address: str, blocks: list[Block], reactor: Any = None, fast_path: bool = True):
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self.reactor = reactor
        self.server_label = address
        self.blocks = blocks
        self.observers: list[Observer] = []
        #: the fast path: UDP query bytes after the ID → [encoded answer, hits, info template]
        self.fast = FastCache(enabled=fast_path)

    # -- entry point ----------------------------------------------------------------------
    def handle(self, data: bytes, proto: str, peer: Any) -> bytes | defer.Deferred | None:
        """Answer one query; bytes now, a Deferred firing with bytes, or None to drop."""
        start = time.perf_counter()
        try:
            result = self._handle(data, proto, peer, start)
        except Exception:
            log.failure("unexpected error answering a query from {peer}", peer=peer)
            result = error_response(data, SERVFAIL)
        return result

    def _handle(self, data: bytes, proto: str, peer: Any, start: float) -> bytes | defer.Deferred | None:
        q = parse_question(data)
        if q is None:
            return error_response(data, FORMERR)
        if q.is_response:
            return None
        if q.opcode != dns.OP_QUERY:
            return error_response(data, NOTIMP)
        if q.qdcount != 1:
            return error_response(data, FORMERR)
        # The usual query (one question, maybe an OPT) is read by hand; any other shape is walked
        # record by record with bounded names (no decoder ever sees a crafted name), and rejected
        # past what a query may carry.
        edns_ok = read_edns_raw(data, q)
        if edns_ok is None:
            edns_ok = scan_query_records(data, q)
            if edns_ok is None:
                return error_response(data, FORMERR)
        edns, ok = edns_ok
        if not ok:
            return error_response(data, FORMERR)
        limit = udp_limit(edns) if proto == "udp" else 65535
        req = Request(q, data[12 : q.end], edns, limit, proto, peer, start, data, None, memo=self.fast)
        if edns is not None and edns.version != 0:
            return self._finish(req, Answer(rcode=BADVERS, authoritative=False), "", ra=False)
        qname = q.qname
        if qname == DOTTED_LABEL:
            return self._finish(req, Answer(rcode=REFUSED, authoritative=False), "")
        lname = qname.decode("ascii", "replace").lower()
        block = req.block = self._route(lname)
        if block is None:
            return self._finish(req, Answer(rcode=REFUSED, authoritative=False), "")
        if block.loop is not None and block.loop.observe(qname):
            return self._finish(req, Answer(rcode=SERVFAIL, authoritative=False), "")
        fell: tuple[str, Answer] | None = None
        if block.clusters is not None:
            res = None
            if q.qclass in (dns.IN, dns.ANY):
                # Computed once per lower-cased name and kept until the store changes (cleared
                # with the fast cache, bounded in bytes); the query's case goes back in when the
                # answer is encoded (_finish), so case spellings of one name share one answer.
                mkey = (block.clusters, qname.lower(), q.qtype)
                res = self.fast.computed.get(mkey, _UNSEEN)
                if res is _UNSEEN:
                    res = block.clusters.answer(mkey[1], q.qtype, lname)
                    if res is None or res[1].rcode != SERVFAIL:  # SERVFAIL: not synced, ask again
                        self.fast.keep_computed(mkey, res)
            if res is not None:
                zone, ans = res
                if not block.clusters.falls_through(zone, ans):
                    if ans.answers and ans.answers[-1].type == dns.CNAME and q.qtype not in (dns.CNAME, dns.ANY):
                        return self._chase(req, block, zone, ans)
                    return self._finish(req, ans, zone, cacheable=ans.rcode != SERVFAIL, plugin="kubernetes")
                fell = res
        if block.chain is not None and block.chain.handles(qname):
            d = block.chain.resolve(_forward_query(req), tcp=proto == "tcp")
            d.addCallbacks(self._relay, self._relay_error, callbackArgs=(req,), errbackArgs=(req,))
            return d
        if fell is not None:
            return self._finish(req, fell[1], fell[0], plugin="kubernetes")
        return self._finish(req, Answer(rcode=REFUSED, authoritative=False), "")

    def _chase(self, req: Request, block: Block, zone: str, ans: Answer, depth: int = 0) -> bytes | defer.Deferred:
        """Follow an ExternalName CNAME as CoreDNS does, so stub resolvers get the address too.

        A target inside the cluster zones is answered from the store (and stays fast-path
        cacheable); a target outside goes through the block's forward chain and its records are
        appended after the CNAME, with the upstream's rcode.  Without forward the CNAME alone is
        returned.
        """
        if depth == 0:  # ``ans`` may be a kept computed answer: extend a copy
            ans = Answer(rcode=ans.rcode, answers=list(ans.answers), authority=list(ans.authority),
                         additional=list(ans.additional), authoritative=ans.authoritative)
        target = ans.answers[-1].payload.name.name
        clusters = block.clusters
        q = req.q
        if clusters is not None and clusters.zone_of(target.decode("ascii", "replace").lower()) is not None:
            sub = clusters.answer(target, q.qtype)
            if sub is not None and depth < 8:
                ans.answers.extend(sub[1].answers)
                if sub[1].answers and sub[1].answers[-1].type == dns.CNAME:
                    return self._chase(req, block, zone, ans, depth + 1)
                if not sub[1].answers:
                    ans.rcode = sub[1].rcode
                    ans.authority = sub[1].authority
            return self._finish(req, ans, zone, cacheable=True, plugin="kubernetes")
        if block.chain is None or not block.chain.handles(target) or depth >= 8:
            return self._finish(req, ans, zone, cacheable=True, plugin="kubernetes")
        sub_q = dns.Message(recDes=1)
        sub_q.queries = [dns.Query(target, q.qtype, dns.IN)]

        def merged(up: dns.Message) -> bytes:
            ans.answers.extend(up.answers)
            if not up.answers:
                ans.rcode = up.rCode
                ans.authority = list(up.authority)
            return self._finish(req, ans, zone, ra=True, plugin="kubernetes")

        d = block.chain.resolve(sub_q, tcp=req.proto == "tcp")
        d.addCallbacks(merged, lambda f: self._finish(req, ans, zone, ra=True, plugin="kubernetes"))
        return d

    def _route(self, lname: str) -> Block | None:
        best: Block | None = None
        best_len = -1
        for b in self.blocks:
            n = b.covers(lname)
            if n > best_len:
                best, best_len = b, n
        return best

    # -- encoding ---------------------------------------------------------------------------
    def _finish(
        self,
        req: Request,
        ans: Answer,
        zone: str,
        *,
        ra: bool | None = None,
        ad: bool = False,
        cacheable: bool = False,
        lifetime: float = 0.0,
        plugin: str = "",
        error: str = "",
        edns_options: bytes = b"",
    ) -> bytes:
        """Encode, report to observers, and keep the bytes for the fast path when allowed.

        ``cacheable`` marks answers computed from the store (valid until it changes);
        ``lifetime`` > 0 marks a forwarded answer that may be served from the fast path, its TTLs
        counting down, for that many seconds.
        """
        q = req.q
        block = req.block
        if ra is None:
            ra = block is not None and block.chain is not None
        answers = ans.answers
        if plugin == "kubernetes" and answers:
            answers = _echo_case(answers, q.qname)
        flags = q.flags
        out = encode_response(
            qid=q.id,
            opcode=q.opcode,
            rd=bool(flags & 0x0100),
            cd=bool(flags & 0x0010),
            ra=ra,
            aa=ans.authoritative,
            ad=ad,
            rcode=ans.rcode,
            question=req.question,
            qname=q.qname,
            answers=answers,
            authority=ans.authority,
            additional=ans.additional,
            edns=req.edns,
            limit=req.limit,
            edns_options=edns_options,
        )
        proto = req.proto
        keep = (cacheable or lifetime > 0) and proto == "udp" and self.fast.enabled
        if self.observers or keep:
            info = QueryInfo(
                server=self.server_label,
                zone=zone or (block.zones[0] if block is not None else ""),
                proto=proto,
                peer=req.peer,
                qname=q.qname,
                qtype=q.qtype,
                qclass=q.qclass,
                qid=q.id,
                request_size=len(req.packet),
                response_size=len(out),
                rcode=ans.rcode,
                flags=struct.unpack_from("!H", out, 2)[0],
                duration=time.perf_counter() - req.start,
                do=bool(req.edns is not None and req.edns.do),
                bufsize=65535 if proto == "tcp" else (req.edns.udp_size if req.edns is not None else 512),
                plugin=plugin,
                error=error,
            )
            for obs in self.observers:
                try:
                    obs(info)
                except Exception:
                    log.failure("query observer failed")
            if keep:
                aging = None
                if lifetime > 0:
                    aging = self._aging(out, lifetime)
                    if aging is None:
                        return out
                    aging.cache = getattr(block.chain, "cache", None) if block is not None else None
                self.fast.remember(req.packet, out, info, aging, limit=self._forward_limit(block))
        return out

    def _aging(self, out: bytes, lifetime: float) -> Aging | None:
        if out[2] & 0x02:  # truncated: let the client retry over TCP, do not keep
            return None
        try:
            ttls = ttl_fields(out)
        except (ValueError, struct.error):
            return None
        if ttls:
            lifetime = min(lifetime, min(t for _, t in ttls))
        if lifetime < 1:
            return None
        now = self.reactor.seconds()
        return Aging(out[2:], ttls, now, now + lifetime)

    def _relay(self, upstream: dns.Message, req: Request) -> bytes:
        ans = Answer(
            rcode=upstream.rCode,
            answers=list(upstream.answers),
            authority=list(upstream.authority),
            additional=[rr for rr in upstream.additional if rr.type != dns.OPT],
            authoritative=bool(upstream.auth),
        )
        block = req.block
        # the upstream's EDNS options (kubedns.forward.message decoded them into an OPT record)
        options = next((rr.payload.data for rr in upstream.additional if rr.type == dns.OPT), b"")
        return self._finish(req, ans, block.zones[0] if block else "", ra=True, ad=bool(upstream.authenticData),
                            lifetime=self._forward_lifetime(block, upstream), plugin="forward",
                            edns_options=options)

    @staticmethod
    def _forward_limit(block: Block | None) -> int:
        """How many forwarded answers the fast path may keep for ``block``: its cache's size."""
        cache = getattr(block.chain, "cache", None) if block is not None else None
        return cache.config.size if cache is not None else 0

    @staticmethod
    def _forward_lifetime(block: Block | None, upstream: dns.Message) -> float:
        """How long a relayed answer may be served from the fast path: as long as the block's
        cache would keep it.  Not at all without a cache, or with prefetch (whose popularity
        counts must see every hit), or for anything but NOERROR/NXDOMAIN."""
        cache = getattr(block.chain, "cache", None) if block is not None else None
        if cache is None or cache.config.prefetch_amount or upstream.rCode not in (dns.OK, dns.ENAME):
            return 0.0
        from kubedns.cache import response_ttl

        got = response_ttl(upstream, cache.config)
        return float(got[1]) if got is not None else 0.0

    def _relay_error(self, failure: Failure, req: Request) -> bytes:
        rcode = SERVFAIL
        try:
            from kubedns.forward.forwarder import Refused

            if failure.check(Refused):
                rcode = REFUSED
        except ImportError:  # pragma: no cover - forwarder not installed
            pass
        block = req.block
        # e.g. "no upstream answered (127.0.0.1:53: timeout after 2s; ...)": which upstream, and why
        error = f"forward: {failure.getErrorMessage()}"
        return self._finish(req, Answer(rcode=rcode, authoritative=False), block.zones[0] if block else "", ra=True,
                            plugin="forward", error=error)


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


def _echo_case(answers: list[dns.RRHeader], qname: bytes) -> list[Any]:
    """``answers`` with the records owned by the lower-cased ``qname`` owned by ``qname`` as asked.

    Cluster answers are computed and kept once per lower-cased name; owner names echo the
    query's case (as CoreDNS does), so the spelling is put back here, per query, the way the
    answer would have been encoded had it been computed for this spelling.
    """
    lower = qname.lower()
    if lower == qname:
        return answers
    name = dns.Name(qname)
    return [_Owned(rr, name) if rr.name.name == lower else rr for rr in answers]


def _forward_query(req: Request) -> dns.Message:
    """What the forward chain needs of a query (question, RD, CD, AD, DO, EDNS options), built from
    what was already parsed: the client's own records (a TSIG, a NOTIFY's SOA...) are never
    forwarded.  The OPT's options travel as raw rdata, as twisted.names decodes an OPT."""
    q = req.q
    flags = q.flags
    msg = dns.Message(id=q.id, recDes=bool(flags & 0x0100), checkingDisabled=bool(flags & 0x0010),
                      authenticData=bool(flags & 0x0020))
    msg.queries = [dns.Query(q.qname, q.qtype, q.qclass)]
    if req.edns is not None:
        msg.additional = [dns.RRHeader(b"", dns.OPT, cls=req.edns.udp_size, ttl=0x8000 if req.edns.do else 0,
                                       payload=dns.UnknownRecord(query_edns_options(req.packet, q)))]
    return msg
