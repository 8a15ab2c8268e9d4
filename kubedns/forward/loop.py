"""Forwarding-loop detection, after CoreDNS's *loop* plugin, but it isolates the looping upstream
instead of exiting.

How: at start, one query ``<random>.<random>.<zone> HINFO`` goes to each upstream.  Nothing but a
loop can bring that name back to this server, so the server reports every incoming name through
:meth:`LoopDetector.observe` (one dict lookup; free while no probe is out).  When the probe sent
to upstream X arrives ``threshold`` times (2, as the brief; the first arrival is forwarded once
more, pinned to X, which is what makes the second one proof), the detector logs that X sends
queries back to us and *isolates X*: the forwarder never sends a query to X again, so nothing is
forwarded into the loop, and the other upstreams keep serving.  Only when every upstream loops
does every forwarded query fail at once with ``UpstreamsFailed`` (SERVFAIL).  The process keeps
running and serving the cluster zones; CoreDNS exits instead, which in Kubernetes means
CrashLoopBackOff.

Recovery, per upstream (our choice): every ``recheck`` seconds (30 s; 0 turns it off) a new round
of probes goes out, also while forwarding works, so a loop introduced later is caught too.  An
isolated upstream still gets its probe, but when that probe comes back the server does not
forward it again, so a single arrival then means "still looping"; an answer from that upstream
without its probe coming back means its loop is gone, and it is used again, whatever the other
upstreams do.  A round where no upstream answers (the server may not be listening yet at start)
says nothing: it is retried every ``retry_interval`` (2 s) for up to 30 s, as CoreDNS.
"""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.names import dns

if TYPE_CHECKING:
    from kubedns.forward.forwarder import Forwarder

__all__ = ["LoopDetector"]

_log = Logger()


class _Probe:
    __slots__ = ("index", "upstream", "name", "seen")

    def __init__(self, index: int, upstream: str, name: bytes) -> None:
        self.index = index
        self.upstream = upstream
        self.name = name
        self.seen = 0


class LoopDetector:
    """See the module docstring.  It probes through, and isolates upstreams of, ``forwarder``."""

    def __init__(
        self,
        forwarder: Forwarder,
        zone: bytes = b"",
        reactor: Any = None,
        *,
        threshold: int = 2,
        recheck: float = 30.0,
        retry_interval: float = 2.0,
        retry_for: float = 30.0,
        timeout: float | None = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self._reactor = reactor
        self.forwarder = forwarder
        self.zone = zone.lower().strip(b".")
        self.threshold = threshold
        self.recheck = recheck
        self.retry_interval = retry_interval
        self.retry_for = retry_for
        self.timeout = timeout
        self.rounds = 0  # probe rounds sent (for tests and metrics)
        self._probes: dict[bytes, _Probe] = {}
        self._pending: list[defer.Deferred] = []
        self._call: Any = None
        self._running = False
        self._started_at = 0.0
        self._settled = False  # one round got answers: no more start-up retries

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        if self._running:
            return
        self._running = True
        self._started_at = self._reactor.seconds()
        self._round()

    def stop(self) -> None:
        self._running = False
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        pending, self._pending = self._pending, []
        for d in pending:
            d.cancel()
        self._set_probes({})

    @property
    def loop_detected(self) -> bool:
        """True while at least one upstream is isolated as looping."""
        return bool(self.forwarder.looping_upstreams)

    def _set_probes(self, probes: dict[bytes, _Probe]) -> None:
        self._probes = probes
        self.forwarder.pin({name: p.index for name, p in probes.items()})

    def _needed(self, p: _Probe) -> int:
        """Arrivals that prove a loop: 1 once the upstream is isolated (the probe is not forwarded
        again then), else ``threshold``."""
        return 1 if self.forwarder.is_looping(p.index) else self.threshold

    # -- the server's hook ---------------------------------------------------------------------
    def observe(self, qname: bytes) -> bool:
        """Report an incoming query name; True if it is one of our probes proving a loop.

        On True the server should not forward the query again (answer SERVFAIL).
        """
        probes = self._probes
        if not probes:
            return False
        key = qname.lower()
        if key[-1:] == b".":
            key = key[:-1]
        p = probes.get(key)
        if p is None:
            return False
        p.seen += 1
        if p.seen >= self._needed(p):
            self._detected(p)
            return True
        return False

    def _detected(self, p: _Probe) -> None:
        fwd = self.forwarder
        zone = self.zone.decode("ascii", "replace") or "."
        reason = f"forwarding loop detected through upstream {p.upstream}"
        if not fwd.isolate(p.index, reason):
            return  # already isolated: still looping
        others = [u.name for i, u in enumerate(fwd.upstreams) if not fwd.is_looping(i)]
        if others:
            outcome = "no query is forwarded to it any more; upstream(s) {others} keep serving"
        else:
            outcome = "every upstream of the zone loops: forwarding is disabled (queries get SERVFAIL)"
        _log.error(
            "Loop detected: probe HINFO {name} sent to upstream {upstream} came back to this server "
            "{seen} times, so {upstream} forwards zone {zone} back to us; "
            + outcome
            + " until a re-check finds {upstream} answering without looping",
            name=p.name.decode("ascii", "replace"),
            upstream=p.upstream,
            seen=p.seen,
            zone=zone,
            others=", ".join(others),
        )

    def _recovered(self, p: _Probe) -> None:
        if self.forwarder.restore(p.index):
            _log.info(
                "Loop gone: upstream {upstream} answered the loop probe without sending it back; "
                "queries for zone {zone} are forwarded to it again",
                upstream=p.upstream,
                zone=self.zone.decode("ascii", "replace") or ".",
            )

    # -- probe rounds --------------------------------------------------------------------------
    def _probe_name(self) -> bytes:
        labels = [str(secrets.randbits(63)).encode(), str(secrets.randbits(63)).encode()]
        if self.zone:
            labels.append(self.zone)
        return b".".join(labels)

    def _round(self) -> None:
        self._call = None
        if not self._running:
            return
        self.rounds += 1
        probes: dict[bytes, _Probe] = {}
        ds = []
        for i, up in enumerate(self.forwarder.upstreams):
            name = self._probe_name()
            probes[name] = _Probe(i, up.name, name)
            ds.append(self.forwarder.send_to(i, name, dns.HINFO, self.timeout))
        self._set_probes(probes)
        self._pending = ds
        dl = defer.DeferredList(ds, consumeErrors=True)
        dl.addCallback(self._round_done, probes)

    def _round_done(self, results: list[tuple[bool, Any]], probes: dict[bytes, _Probe]) -> None:
        if not self._running or probes is not self._probes:
            return
        self._pending = []
        answered = 0
        for (ok, _), p in zip(results, probes.values(), strict=True):
            if ok:
                answered += 1
            if p.seen >= self._needed(p):
                continue  # _detected already ran: (still) isolated
            if ok and p.seen == 0:
                self._recovered(p)  # answered, and the probe never came back: no loop (any more)
            # no answer (a dead or slow upstream) says nothing: an isolated one stays isolated
        if answered:
            self._settled = True
        if not self._settled:
            if self._reactor.seconds() - self._started_at < self.retry_for:
                self._schedule(self.retry_interval)
                return
            self._settled = True
            _log.warn("loop check: no upstream answered the probe for {s:g}s; giving up for now", s=self.retry_for)
        if self.recheck > 0:
            self._schedule(self.recheck)
        elif not self.loop_detected:
            self._set_probes({})  # done for good: observe() becomes free

    def _schedule(self, delay: float) -> None:
        if self._running:
            self._call = self._reactor.callLater(delay, self._round)
