"""The forwarder: relay a question to the upstreams, in policy order, with health and de-duplication.

Owns the per-upstream state (consecutive failures, down/up, health probes, counters) and the
request-level logic CoreDNS's *forward* plugin has: pick upstreams by ``policy``, skip the ones
marked down (or try them all when every one is down), fail over on timeouts and network errors
within one request budget, and relay the first answer *unchanged* (rcode and every section, the
AD bit, EDNS options and extended rcode; see :mod:`kubedns.forward.message` for the per-hop
options that are not relayed), since SERVFAIL or NXDOMAIN from an upstream is an answer, not a
failure.  Identical questions in flight
share one upstream exchange.  An upstream the loop detector found sending queries back to us is
isolated: never asked (not even when every other one is down) until the detector restores it.
The wire work lives in :mod:`kubedns.forward.transport`.

Bounded by default, so that a silent upstream cannot take every descriptor (a UDP query holds a
socket until it is answered or times out): ``max_concurrent`` (default 1000, kubeadm's value)
requests in flight in total, beyond which clients get REFUSED at once as with CoreDNS; at most
its share ``ceil(max_concurrent / len(to))`` tries in flight to any one upstream, so a silent one
cannot hold the capacity the others need (a full upstream is skipped for the next one, which is
not a health failure); and no UDP socket is opened past the open-files soft limit minus a reserve
(a quarter of the limit, 64 to 4096) kept for the DNS listeners' TCP clients and the HTTP
endpoints.  A request refused by any of the three is answered REFUSED and counted in
``stats.max_concurrent_rejects`` (``coredns_forward_max_concurrent_rejects_total``).
"""

from __future__ import annotations

import random
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.names import dns
from twisted.python.failure import Failure

from kubedns.forward.config import ForwardConfig
from kubedns.forward.errors import Refused, UpstreamsFailed
from kubedns.forward.exchange import Exchange
from kubedns.forward.message import Expect, build_query, decode_response, is_truncated
from kubedns.forward.relay import ForwardQuery, Relayed, query_from_message
from kubedns.forward.stats import ForwarderStats, UpstreamStats
from kubedns.forward.transport import (
    StreamClient,
    TransportError,
    fd_reserve,
)
from kubedns.forward.udppool import Sink, UDPPool
from kubedns.forward.upstream import UpstreamSpec
from kubedns.ops.counters import TIME_BUCKETS

__all__ = ["Forwarder", "ForwarderStats", "Refused", "UpstreamStats", "UpstreamsFailed", "fd_reserve"]

_log = Logger()

REQUEST_BUDGET = 5.0  # CoreDNS's per-request deadline across all tries (raised to one timeout if larger)
PROBE_TIMEOUT = 1.0  # a health probe waits at most this long (or the per-try timeout if shorter)


class _Upstream:
    __slots__ = ("spec", "name", "fails", "down", "looping", "stats", "stream", "udp", "probe_call", "probe_d",
                 "inflight")

    def __init__(self, spec: UpstreamSpec) -> None:
        self.spec = spec
        self.name = str(spec)
        self.fails = 0
        self.down = False
        self.looping: str | None = None  # set by the loop detector: never forward to it
        self.stats = UpstreamStats()
        self.stream: StreamClient | None = None
        self.udp: UDPPool | None = None  # open random-port sockets, made on the first UDP try
        self.probe_call: Any = None
        self.probe_d: defer.Deferred | None = None
        self.inflight = 0  # tries waiting for this upstream's answer


class _Flight:
    __slots__ = ("waiters", "inner")

    def __init__(self) -> None:
        self.waiters: list[Any] = []  # Deferreds and sinks (callback/errback)
        self.inner: Exchange | None = None


_PROBE_QUERY = build_query(b"", dns.NS, dns.IN, rd=True, cd=False, do=False)
_PROBE_EXPECT = Expect.for_question(b"", dns.NS, dns.IN)


class Forwarder:
    """Forward questions to ``config.to``; see the module docstring for the behaviour."""

    def __init__(self, config: ForwardConfig, reactor: Any = None) -> None:
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self.config = config
        self._reactor = reactor
        self.upstreams = [_Upstream(s) for s in config.to]
        self.stats = ForwarderStats()
        self._looping = 0  # upstreams isolated by the loop detector
        self._pinned: dict[bytes, _Upstream] = {}  # loop probe name -> the upstream it probes
        self._except = tuple(z.encode("ascii") for z in config.except_zones)
        self._flights: dict[tuple, _Flight] = {}
        self._inflight = 0
        self._tries = 0  # tries waiting for an answer, all upstreams
        #: tries in flight when a UDP socket last found no descriptor to spare: while at least as
        #: many are in flight, a new request is refused without trying (and failing) a socket,
        #: for a second after that failure; then a socket is tried again
        self._fd_tries = 0
        self._fd_full_at = 0.0
        self._rr = 0
        self._running = False
        self._budget = max(REQUEST_BUDGET, config.timeout)
        self._tls_cache: dict[str, Any] = {}
        self._bounds = TIME_BUCKETS
        limit = config.max_concurrent
        self._per_upstream = -(-limit // len(self.upstreams)) if limit and self.upstreams else 0
        from kubedns.serve.listen import fd_limit

        soft = fd_limit()
        self.max_fd = soft - fd_reserve(soft)  # UDP sockets are never numbered this high

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        self._running = True
        for up in self.upstreams:
            if up.udp is not None:
                up.udp.reopen()
        for up in self.upstreams:  # after a stop()/start(), keep probing the ones still down
            if up.down:
                self._schedule_probe(up)

    def stop(self) -> defer.Deferred | None:
        """Cancel probes and queries in flight, close connections; fires once sockets are closed."""
        self._running = False
        for flight in list(self._flights.values()):
            if flight.inner is not None:
                flight.inner.cancel()
        closing = []
        for up in self.upstreams:
            self._stop_probe(up)
            if up.udp is not None:
                up.udp.close()
            if up.stream is not None:
                d = up.stream.close()
                up.stream = None
                if d is not None:
                    closing.append(d)
        if not closing:
            return None
        return defer.gatherResults(closing, consumeErrors=True).addCallback(lambda _: None)

    # -- the server's questions ----------------------------------------------------------------
    def handles(self, name: bytes) -> bool:
        """False for names inside an ``except`` zone."""
        if not self._except:
            return True
        n = name.lower().rstrip(b".")
        for z in self._except:
            if not z or n == z or n.endswith(b"." + z):
                return False
        return True

    @property
    def inflight(self) -> int:
        return self._inflight

    @property
    def disabled_reason(self) -> str | None:
        """Why every new query fails at once: every upstream loops (isolated); else None."""
        if self._looping and self._looping == len(self.upstreams):
            return "; ".join(u.looping or "" for u in self.upstreams)
        return None

    # -- loop isolation (the loop detector's hooks) --------------------------------------------
    def isolate(self, index: int, reason: str) -> bool:
        """Never forward to upstream ``index`` (it sends queries back to us); True if it was not yet.

        The others keep serving; health probes and :meth:`send_to` still reach it.
        """
        up = self.upstreams[index]
        if up.looping is not None:
            return False
        up.looping = reason
        self._looping += 1
        return True

    def restore(self, index: int) -> bool:
        """Forward to upstream ``index`` again; True if it was isolated."""
        up = self.upstreams[index]
        if up.looping is None:
            return False
        up.looping = None
        self._looping -= 1
        return True

    def is_looping(self, index: int) -> bool:
        return self.upstreams[index].looping is not None

    @property
    def looping_upstreams(self) -> list[str]:
        return [u.name for u in self.upstreams if u.looping is not None]

    def pin(self, probes: dict[bytes, int]) -> None:
        """Forward these (lower-case) names only to the given upstream index (the loop probes).

        A probe sent to upstream X that comes back to this server is forwarded once more; pinned,
        it goes to X again rather than wherever ``policy`` picks, so its second arrival proves
        (and names) X.  Replaces the previous pins; ``{}`` clears them.
        """
        self._pinned = {name: self.upstreams[i] for name, i in probes.items()}

    def resolve(self, query: dns.Message, *, tcp: bool = False) -> defer.Deferred:
        """Forward ``query``'s question; fire with the upstream's full answer (a new Message).

        :meth:`relay` for a question built as a Message (a CNAME chase, a plugin's upstream).
        """
        if not query.queries:
            return defer.fail(UpstreamsFailed("no question to forward"))
        try:
            fq = query_from_message(query)
        except ValueError as e:
            return defer.fail(UpstreamsFailed(f"cannot forward {query.queries[0].name.name!r}: {e}"))
        return self.relay(fq, tcp=tcp).addCallback(Relayed.message)

    def relay(self, fq: ForwardQuery, *, tcp: bool = False) -> defer.Deferred:
        """Forward ``fq``; fire with the upstream's answer as bytes (:class:`Relayed`, shared by
        every waiter of a de-duplicated question: never changed, only copied).

        ``tcp``: the client asked over TCP, so (as CoreDNS) ask the upstream over TCP too unless
        ``prefer_udp``.  Fails with :class:`Refused` (more than ``max_concurrent`` calls pending,
        de-duplicated ones included, as CoreDNS counts every request) or :class:`UpstreamsFailed`.
        """
        return self.relay_into(fq, tcp, None)

    def relay_into(self, fq: ForwardQuery, tcp: bool, sink: Sink | None) -> Any:
        """:meth:`relay` with the outcome handed to ``sink`` (``callback(Relayed)`` or
        ``errback(Failure)``, once, maybe before this returns) instead of a new Deferred: the
        forward plugin's one Deferred per query is enough.  With ``sink`` None, a Deferred
        (cancellable) is made and returned."""
        if self._looping and self.disabled_reason is not None:
            return self._reject(sink, UpstreamsFailed(self.disabled_reason))
        limit = self.config.max_concurrent
        if limit and self._inflight >= limit:
            self.stats.max_concurrent_rejects += 1
            return self._reject(sink, Refused(f"more than {limit} concurrent forwarded queries"))
        if self._fd_tries and self._tries >= self._fd_tries:
            if self._reactor.seconds() - self._fd_full_at < 1.0:
                self.stats.max_concurrent_rejects += 1
                return self._reject(sink, Refused(f"no descriptor to spare: {self._tries} forwarded queries in flight"))
            self._fd_tries = 0
        key = fq.key
        only = self._pinned.get(key[0]) if self._pinned else None
        flight = self._flights.get(key)
        waiter = self._join(key, flight, sink)
        if flight is not None:
            self.stats.deduplicated += 1
            return waiter
        flight = self._flights[key]
        flight.inner = ex = Exchange(self, fq.template, fq.expect, tcp, only, key, flight)
        ex.start()
        return waiter

    @staticmethod
    def _reject(sink: Sink | None, err: Exception) -> Any:
        if sink is None:
            return defer.fail(err)
        sink.errback(Failure(err))
        return sink

    def send_to(self, index: int, name: bytes, qtype: int, timeout: float | None = None) -> defer.Deferred:
        """One try at upstream ``index`` only, bypassing health, de-duplication, isolation and ``disable``.

        For the loop detector's probes; fires with the decoded answer or fails with a
        :class:`~kubedns.forward.transport.TransportError`.
        """
        up = self.upstreams[index]
        template = build_query(name, qtype, dns.IN, rd=True, cd=False, do=False)
        expect = Expect.for_question(name, qtype, dns.IN)
        d = self._try(up, template, expect, False, timeout or self.config.timeout)
        return d.addCallback(decode_response)

    def upstream_stats(self) -> dict[str, UpstreamStats]:
        return {u.name: u.stats for u in self.upstreams}

    def is_down(self, index: int) -> bool:
        return self.upstreams[index].down

    # -- de-duplication ------------------------------------------------------------------------
    def _join(self, key: tuple, flight: _Flight | None, sink: Sink | None = None) -> Any:
        if flight is None:
            flight = self._flights[key] = _Flight()
        if sink is not None:  # not cancellable: the forwarder's stop() ends it with the exchange
            flight.waiters.append(sink)
            self._inflight += 1
            return sink
        f = flight

        def cancel(d: defer.Deferred) -> None:
            if d in f.waiters:
                f.waiters.remove(d)
                self._inflight -= 1
            if not f.waiters and f.inner is not None and not f.inner.called:
                f.inner.cancel()

        waiter: defer.Deferred = defer.Deferred(canceller=cancel)
        flight.waiters.append(waiter)
        self._inflight += 1  # until _land fires it, or it is cancelled
        return waiter

    def _land(self, result: Any, key: tuple, flight: _Flight) -> None:
        if self._flights.get(key) is flight:
            del self._flights[key]
        waiters, flight.waiters = flight.waiters, []
        self._inflight -= len(waiters)
        failed = isinstance(result, Failure)
        if failed and result.check(defer.CancelledError):
            result = Failure(UpstreamsFailed("forwarding cancelled (stopping)"))
        for w in waiters:
            try:  # a sink's bug must not keep the other waiters of the flight unanswered
                if failed:
                    w.errback(result)
                else:
                    w.callback(result)
            except Exception:
                _log.failure("forward: answering a waiter failed")
        return None

    # -- the request loop ----------------------------------------------------------------------
    def _order(self, only: _Upstream | None = None) -> list[_Upstream]:
        if only is not None:
            return [only] if only.looping is None else []
        ups = self.upstreams
        policy = self.config.policy
        if len(ups) == 1:
            if not self._looping and not ups[0].down:
                return ups  # the usual single upstream, healthy: the list itself (never changed)
            order = ups
        elif policy == "random":
            order = random.sample(ups, len(ups))
        elif policy == "round_robin":
            i = self._rr % len(ups)
            self._rr += 1
            order = ups[i:] + ups[:i]
        else:
            order = ups
        if self._looping:  # never into a loop, not even when everything else is down
            order = [u for u in order if u.looping is None]
        healthy = [u for u in order if not u.down]
        if not healthy:
            # Every upstream is down: health checking itself may be what is broken; try anyway.
            self.stats.healthcheck_broken += 1
            return list(order)
        return healthy

    def _stream(self, up: _Upstream) -> StreamClient:
        if up.stream is None:
            tls = self._tls_options(up.spec) if up.spec.tls else None
            up.stream = StreamClient(
                self._reactor,
                up.spec.host,
                up.spec.port,
                tls_options=tls,
                expire=self.config.expire,
                connect_timeout=self.config.timeout,
            )
        return up.stream

    def _try(
        self, up: _Upstream, template: bytes, expect: Expect, tcp: bool, timeout: float, deadline: float | None = None
    ) -> defer.Deferred:
        """One try at ``up``: the raw answer, or a TransportError.

        ``deadline`` (reactor time) ends the request's overall budget: a TCP retry after a
        truncated UDP answer gets only the time left until then (and at most one per-try
        timeout), not a fresh ``timeout`` of its own, so the try cannot outlast the request.
        """
        if self._streamed(up, tcp):
            return self._stream(up).query(template, expect, timeout)
        d = self._pool(up).query(template, expect, timeout, self.max_fd)

        def maybe_tcp(data: bytes) -> Any:
            if not is_truncated(data):
                return data
            return self._after_truncation(up, data, template, expect, timeout, deadline)

        return d.addCallback(maybe_tcp)

    def _streamed(self, up: _Upstream, tcp: bool) -> bool:
        """Does a try at ``up`` go over its TCP/TLS stream (else UDP)?"""
        cfg = self.config
        return bool(up.spec.tls or cfg.force_tcp or (tcp and not cfg.prefer_udp))

    def _pool(self, up: _Upstream) -> UDPPool:
        pool = up.udp
        if pool is None:
            pool = up.udp = UDPPool(self._reactor, up.spec.host, up.spec.port)
            if not self._running:
                pool.close()  # a try after stop() (a late probe): its socket closes when it ends
        return pool

    def _after_truncation(self, up: _Upstream, data: bytes, template: bytes, expect: Expect, timeout: float,
                          deadline: float | None) -> Any:
        """A truncated UDP answer: ask ``up`` over TCP within what is left of the budget (a
        Deferred), or ``data`` itself when no budget is left."""

        def tcp_failed(f: Failure) -> bytes:
            # TCP failed too: relay the truncated answer; the client then retries over TCP itself.
            f.trap(TransportError)
            return data

        left = timeout if deadline is None else min(timeout, deadline - self._reactor.seconds())
        if left <= 0.001:
            return data  # no budget left for TCP: relay the truncated answer
        return self._stream(up).query(template, expect, left).addErrback(tcp_failed)

    def _tls_options(self, spec: UpstreamSpec) -> Any:
        from twisted.internet import ssl

        servername = spec.servername or self.config.tls_servername or spec.host
        trust: Any
        if self.config.tls_ca:
            with open(self.config.tls_ca, "rb") as f:
                pem = f.read()
            marker = b"-----END CERTIFICATE-----"
            certs = [c + marker for c in pem.split(marker) if b"-----BEGIN CERTIFICATE-----" in c]
            trust = ssl.trustRootFromCertificates([ssl.Certificate.loadPEM(c) for c in certs])
        else:
            trust = ssl.platformTrust()
        return ssl.optionsForClientTLS(servername, trustRoot=trust)

    # -- health --------------------------------------------------------------------------------
    def _failed(self, up: _Upstream) -> None:
        up.fails += 1
        mf = self.config.max_fails
        if mf and up.fails >= mf and not up.down:
            up.down = True
            _log.warn(
                "forward: upstream {upstream} marked down after {n} consecutive failures",
                upstream=up.name,
                n=up.fails,
            )
            self._schedule_probe(up)

    def _succeeded(self, up: _Upstream) -> None:
        up.fails = 0
        if up.down:
            self._mark_up(up)

    def _mark_up(self, up: _Upstream) -> None:
        up.down = False
        up.fails = 0
        self._stop_probe(up)
        _log.info("forward: upstream {upstream} is healthy again", upstream=up.name)

    def _schedule_probe(self, up: _Upstream) -> None:
        if up.probe_call is None and up.probe_d is None and self._running:
            up.probe_call = self._reactor.callLater(self.config.health_check, self._probe, up)

    def _stop_probe(self, up: _Upstream) -> None:
        if up.probe_call is not None:
            if up.probe_call.active():
                up.probe_call.cancel()
            up.probe_call = None
        if up.probe_d is not None:
            d, up.probe_d = up.probe_d, None
            d.cancel()

    def _probe(self, up: _Upstream) -> None:
        up.probe_call = None
        if not up.down or not self._running:
            return
        d = self._try(up, _PROBE_QUERY, _PROBE_EXPECT, False, min(self.config.timeout, PROBE_TIMEOUT))
        up.probe_d = d

        def ok(_: bytes) -> None:
            up.probe_d = None
            if up.down:  # any answer, whatever its rcode, means the upstream is reachable
                self._mark_up(up)

        def bad(f: Failure) -> None:
            if f.check(defer.CancelledError):
                return
            up.probe_d = None
            up.stats.healthcheck_failures += 1
            if up.down:
                self._schedule_probe(up)

        d.addCallbacks(ok, bad)
