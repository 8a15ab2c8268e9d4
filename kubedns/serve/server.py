"""The DNS server's dispatch: one query in as bytes, one answer out as bytes (or a Deferred).

One :class:`Dispatcher` per listen address holds the server blocks that share it.  What is the
server's own work stays here, as in CoreDNS's ``dnsserver``: the header and EDNS checks, and
routing a query to the block with the longest zone containing its name.  Everything after that
is the block's plugin chain (:mod:`kubedns.plugins`): in CoreDNS's order, ``loadbalance``, then
the cluster zones (``kubernetes``, answered synchronously from the store), the ``loop`` check,
``forward`` (a Deferred), and REFUSED for a name no plugin serves.  The chain is the only place
where the order of that work is decided; the server encodes the :class:`~kubedns.plugins.base.
Reply` it ends with.

We do not use twisted.names' ``DNSServerFactory``: it answers NXDOMAIN without SOA or AA, turns
upstream SERVFAIL into NXDOMAIN, ignores EDNS and truncates mid-record.  Here the response is
built by :func:`kubedns.dns.wire.encode_response` from the exact rcode and sections, and nothing a
client sends can raise out of ``datagramReceived``: a packet that does not decode gets FORMERR
(or is dropped if it has no header), anything unexpected gets SERVFAIL and a log line.

The UDP/TCP protocols are in :mod:`kubedns.serve.protocols`; the pre-encoded answers of the fast path
in :mod:`kubedns.serve.fastcache`, filled here by :meth:`Dispatcher._finish`.
"""

from __future__ import annotations

import struct
import time
from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.names import dns
from twisted.python.failure import Failure

from kubedns.config import ServerBlock
from kubedns.dns.query import Observer, QueryInfo, Request
from kubedns.dns.records import TRANSFERS, Answer, ClusterZones
from kubedns.dns.wire import (
    BADVERS,
    DOTTED_LABEL,
    encode_response,
    error_response,
    parse_question,
    read_edns_raw,
    scan_query_records,
    ttl_fields,
    udp_limit,
)
from kubedns.explain import EXPLAIN_OPTION_BYTES, annotate
from kubedns.forward.relay import LazyAnswer, Relayed, client_reply, relayable
from kubedns.plugins.base import Next, Reply, build_chain
from kubedns.plugins.kubernetes import KubernetesPlugin
from kubedns.plugins.loadbalance import rotations
from kubedns.plugins.setup import block_plugins
from kubedns.serve.fastcache import Aging, FastCache

if TYPE_CHECKING:
    from kubedns.forward.cache import Cache
    from kubedns.forward.chain import ForwardChain
    from kubedns.forward.loop import LoopDetector
    from kubedns.plugins.hosts import HostsPlugin

__all__ = ["Block", "Dispatcher"]

log = Logger()

FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED = dns.EFORMAT, dns.ESERVER, dns.ENAME, dns.ENOTIMP, dns.EREFUSED


def _second(pair: tuple[int, int]) -> int:
    return pair[1]


class Block:
    """One configured server block at run time: its zones, the running parts it answers from,
    and its plugin chain (:meth:`serve`), built once here from its config."""

    def __init__(self, config: ServerBlock, clusters: ClusterZones | None = None, chain: ForwardChain | None = None,
                 loop: LoopDetector | None = None, hosts: HostsPlugin | None = None):
        self.config = config
        self.zones = config.zones
        self.chain = chain  # the forward chain (and its cache), for metrics and the fast path
        self.loop = loop
        self.hosts = hosts  # kept across reloads with its table (kubedns.plugins.hosts.HostsPlugins)
        self.kubernetes = KubernetesPlugin(clusters, chain) if clusters is not None else None
        self._build()

    def _build(self) -> None:
        self.plugins = block_plugins(self.config, self.kubernetes, self.chain, self.loop, self.hosts)
        #: the block's plugins in CoreDNS's order, ending in REFUSED
        self.serve: Next = build_chain(self.plugins)

    @property
    def clusters(self) -> ClusterZones | None:
        return self.kubernetes.clusters if self.kubernetes is not None else None

    @clusters.setter
    def clusters(self, clusters: ClusterZones) -> None:
        """A new store answers the block's cluster zones (swapped in after a reload)."""
        if self.kubernetes is not None:
            self.kubernetes.clusters = clusters
        else:
            self.kubernetes = KubernetesPlugin(clusters, self.chain)
            self._build()

    @property
    def forward_cache(self) -> Cache | None:
        return self.chain.cache if self.chain is not None else None

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
    def handle(self, data: bytes, proto: str, peer: Any) -> bytes | list[bytes] | defer.Deferred | None:
        """Answer one query; bytes now, a Deferred firing with bytes, or None to drop (over TCP,
        a zone transfer may be a list of messages, sent in order)."""
        start = time.perf_counter()
        try:
            result = self._handle(data, proto, peer, start)
        except Exception:
            log.failure("unexpected error answering a query from {peer}", peer=peer)
            result = error_response(data, SERVFAIL)
        return result

    def _handle(self, data: bytes, proto: str, peer: Any, start: float) -> bytes | list[bytes] | defer.Deferred | None:
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
            return self._finish(req, Reply(Answer(rcode=BADVERS, authoritative=False), "", "", ra=False))
        qname = q.qname
        if qname == DOTTED_LABEL:
            return self._finish(req, Reply(Answer(rcode=REFUSED, authoritative=False), "", ""))
        lname = req.lname = qname.decode("ascii", "replace").lower()
        block = req.block = self._route(lname)
        if block is None:
            return self._finish(req, Reply(Answer(rcode=REFUSED, authoritative=False), "", ""))
        # everything after routing (loop check, cluster answers, forwarding, REFUSED) is the
        # block's plugin chain
        result = block.serve(req)
        if isinstance(result, Reply):
            return self._finish(req, result)
        return result.addCallbacks(self._finish_later, self._failed, callbackArgs=(req,), errbackArgs=(req,))

    def _finish_later(self, reply: Reply, req: Request) -> bytes | list[bytes] | None:
        return self._finish(req, reply)

    def _failed(self, failure: Failure, req: Request) -> bytes | None:
        log.failure("unexpected error answering a query from {peer}", failure, peer=req.peer)
        return error_response(req.packet, SERVFAIL)

    def _route(self, lname: str) -> Block | None:
        best: Block | None = None
        best_len = -1
        for b in self.blocks:
            n = b.covers(lname)
            if n > best_len:
                best, best_len = b, n
        return best

    # -- encoding ---------------------------------------------------------------------------
    def _finish(self, req: Request, reply: Reply) -> bytes | list[bytes] | None:
        """Encode, report to observers, and keep the bytes for the fast path when allowed.

        ``reply.cacheable`` marks answers computed from a store (valid until it changes);
        ``reply.lifetime`` > 0 a forwarded answer that may be served from the fast path, its TTLs
        counting down, for that many seconds; ``reply.rotate`` one whose A/AAAA/MX order must
        change per answer (the fast path then serves several orders in turn).
        """
        if reply.drop:  # acl's drop: no answer, but counted and logged (CoreDNS's prometheus and log run before acl)
            if self.observers:
                # as CoreDNS's prometheus reports it: the rcode its recorder starts with (NOERROR),
                # 0 bytes written and no plugin, as nothing wrote
                self._notify(self._info(req, reply, size=0, rcode=dns.OK, flags=0, plugin=""))
            return None
        # kubedns explain: who answered; looked for only in an OPT record with options (rdata)
        if req.edns is not None and len(req.packet) > req.q.end + 11 and EXPLAIN_OPTION_BYTES in req.packet:
            reply = annotate(req, reply)
        block = req.block
        ra = reply.ra
        if ra is None:
            ra = block is not None and block.chain is not None
        ans = reply.answer
        proto = req.proto
        parts: list[bytes] | None = None  # a zone transfer in several TCP messages
        relay = reply.relay
        if relay is not None and (type(ans) is not LazyAnswer or ans.relayed is not relay
                                  or not relayable(req, relay) or req.q.qtype in TRANSFERS):
            relay = None  # a plugin changed the records, or the bytes carry another question case
        if relay is not None:  # the upstream's bytes, with the client's ID, question and OPT
            out = client_reply(req, relay, ra=ra, ad=reply.ad, aa=ans.authoritative, rcode=ans.rcode,
                               options=reply.edns_options)
        else:
            if proto == "tcp" and req.q.qtype in TRANSFERS and len(ans.answers) > 1:
                parts = self._transfer_messages(req, ans, ra, reply)
            out = parts[0] if parts else self._encode(req, ans, ra, reply)
        lifetime = reply.lifetime
        keep = (reply.cacheable or lifetime > 0) and proto == "udp" and self.fast.enabled
        if self.observers or keep:
            if relay is not None:  # counts from the walk, not from decoded records
                walk = relay.walk
                n_answers = walk.an
                soa = not n_answers and walk.negative >= 0
            else:
                n_answers = len(ans.answers)
                soa = not n_answers and any(rr.type == dns.SOA for rr in ans.authority)
            info = self._info(req, reply, size=len(out) if parts is None else sum(map(len, parts)), rcode=ans.rcode,
                              flags=struct.unpack_from("!H", out, 2)[0], plugin=reply.plugin, error=reply.error,
                              answers=n_answers, soa=soa)
            self._notify(info)
            if keep:
                orders: list[bytes] | None = None
                if reply.rotate:
                    variants = rotations(ans)
                    if len(variants) > 1:
                        orders = [out] + [self._encode(req, v, ra, reply) for v in variants[1:]]
                agings: list[Aging] | None = None
                if lifetime > 0:  # TTLs count down in each order's bytes
                    cache = block.forward_cache if block is not None else None
                    agings = []
                    for o in orders or [out]:
                        aging = self._aging(o, lifetime, relay, req.edns is not None)
                        if aging is None:
                            return out
                        aging.cache = cache
                        agings.append(aging)
                self.fast.remember(req.packet, out, info, agings[0] if agings else None,
                                   limit=self._forward_limit(block), orders=orders, agings=agings,
                                   deps=reply.deps, serial_of=reply.serial_of)
        return out if parts is None else parts

    def _info(self, req: Request, reply: Reply, *, size: int, rcode: int, flags: int, plugin: str, error: str = "",
              answers: int = 0, soa: bool = False) -> QueryInfo:
        """What observers (metrics, logs) and the fast path's hit counts learn of one query."""
        q = req.q
        edns = req.edns
        block = req.block
        proto = req.proto
        return QueryInfo(
            server=self.server_label,
            zone=reply.zone or (block.zones[0] if block is not None else ""),
            proto=proto,
            peer=req.peer,
            qname=q.qname,
            qtype=q.qtype,
            qclass=q.qclass,
            qid=q.id,
            request_size=len(req.packet),
            response_size=size,
            rcode=rcode,
            flags=flags,
            duration=time.perf_counter() - req.start,
            do=bool(edns is not None and edns.do),
            bufsize=65535 if proto == "tcp" else (edns.udp_size if edns is not None else 512),
            plugin=plugin,
            error=error,
            opcode=q.opcode,
            answers=answers,
            soa=soa,
        )

    def _notify(self, info: QueryInfo) -> None:
        for obs in self.observers:
            try:
                obs(info)
            except Exception:
                log.failure("query observer failed")

    @classmethod
    def _transfer_messages(cls, req: Request, ans: Answer, ra: bool, reply: Reply) -> list[bytes] | None:
        """An AXFR/IXFR answer too large for one TCP message as several (each with the question),
        or None when it fits in one (:func:`kubedns.plugins.transfer.split`)."""
        from kubedns.plugins.transfer import split

        runs = split(ans.answers)
        if len(runs) < 2:
            return None
        return [cls._encode(req, Answer(rcode=ans.rcode, answers=run, authoritative=ans.authoritative), ra, reply)
                for run in runs]

    @staticmethod
    def _encode(req: Request, ans: Answer, ra: bool, reply: Reply) -> bytes:
        q = req.q
        flags = q.flags
        return encode_response(
            qid=q.id,
            opcode=q.opcode,
            rd=bool(flags & 0x0100),
            cd=bool(flags & 0x0010),
            ra=ra,
            aa=ans.authoritative,
            ad=reply.ad,
            rcode=ans.rcode,
            question=req.question,
            qname=q.qname,
            answers=ans.answers,
            authority=ans.authority,
            additional=ans.additional,
            edns=req.edns,
            limit=req.limit,
            edns_options=reply.edns_options,
        )

    def _aging(self, out: bytes, lifetime: float, relay: Relayed | None = None, opt: bool = False) -> Aging | None:
        if out[2] & 0x02:  # truncated: let the client retry over TCP, do not keep
            return None
        if relay is not None:  # relayed bytes: the TTL offsets are the walk's (same question length)
            kept = out[7] + out[9] + (out[10] << 8 | out[11]) + (out[6] << 8) + (out[8] << 8) - opt
            offs = relay.walk.ttls
            ttls = [(off, int.from_bytes(out[off : off + 4], "big")) for off in (offs if kept >= len(offs) else offs[:kept])]
            if ttls:
                low = min(ttls, key=_second)[1]
                if low < lifetime:
                    lifetime = low
        else:
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

    @staticmethod
    def _forward_limit(block: Block | None) -> int:
        """How many forwarded answers the fast path may keep for ``block``: its cache's size."""
        cache = block.forward_cache if block is not None else None
        return cache.config.size if cache is not None else 0
