"""Forwarding-loop detection, after CoreDNS's *loop* plugin, but it disables forwarding instead of exiting.

How: at start, one query ``<random>.<random>.<zone> HINFO`` goes to each upstream.  Nothing but a
loop can bring that name back to this server, so the server reports every incoming name through
:meth:`LoopDetector.observe` (one dict lookup; free while no probe is out).  When a probe name
arrives ``threshold`` times (2, as the brief; the first arrival is forwarded once more, which is
what makes the second one proof), the detector logs which upstream sent it back and disables the
forwarder: every forwarded query then fails at once with ``UpstreamsFailed`` (SERVFAIL), so the
loop stops amplifying instead of burning CPU on both ends.  The process keeps running and serving
the cluster zones; CoreDNS exits instead, which in Kubernetes means CrashLoopBackOff.

Recovery (our choice): every ``recheck`` seconds (30 s; 0 turns it off) a new round of probes goes
out, also while forwarding works, so a loop introduced later is caught too.  While forwarding is
disabled the server does not forward the probe again, so a single arrival then means "still
looping"; an answer from every upstream without any arrival means the loop is gone and forwarding
is enabled again.  A round where no upstream answers (the server may not be listening yet at
start) says nothing: it is retried every ``retry_interval`` (2 s) for up to 30 s, as CoreDNS.
"""

from __future__ import annotations

import secrets
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.names import dns

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
    """See the module docstring.  ``chain_or_forwarder`` is a ForwardChain or a Forwarder."""

    def __init__(
        self,
        chain_or_forwarder: Any,
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
        self.forwarder = getattr(chain_or_forwarder, "forwarder", chain_or_forwarder)
        self.zone = zone.lower().strip(b".")
        self.threshold = threshold
        self.recheck = recheck
        self.retry_interval = retry_interval
        self.retry_for = retry_for
        self.timeout = timeout
        self.loop_detected = False
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
        self._probes = {}

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
        if p.seen >= (1 if self.loop_detected else self.threshold):
            self._detected(p)
            return True
        return False

    def _detected(self, p: _Probe) -> None:
        if self.loop_detected:
            return
        self.loop_detected = True
        zone = self.zone.decode("ascii", "replace") or "."
        name = p.name.decode("ascii", "replace")
        reason = f"forwarding loop detected through upstream {p.upstream}"
        self.forwarder.disable(reason)
        _log.error(
            "Loop detected: forwarded query HINFO {name} came back from upstream {upstream} "
            "{seen} times; forwarding for zone {zone} is disabled (queries get SERVFAIL) "
            "until a re-check finds the loop gone",
            name=name,
            upstream=p.upstream,
            seen=p.seen,
            zone=zone,
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
        self._probes = probes
        self._pending = ds
        dl = defer.DeferredList(ds, consumeErrors=True)
        dl.addCallback(self._round_done, probes)

    def _round_done(self, results: list[tuple[bool, Any]], probes: dict[bytes, _Probe]) -> None:
        if not self._running or probes is not self._probes:
            return
        self._pending = []
        answered = sum(1 for ok, _ in results if ok)
        looped = any(p.seen >= (1 if self.loop_detected else self.threshold) for p in probes.values())
        if looped:
            pass  # _detected already ran (or the loop persists): stay disabled
        elif answered == len(results) and self.loop_detected:
            self.loop_detected = False
            self.forwarder.enable()
            _log.info("Loop gone: every upstream answered the loop probe; forwarding is enabled again")
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
            self._probes = {}  # done for good: observe() becomes free

    def _schedule(self, delay: float) -> None:
        if self._running:
            self._call = self._reactor.callLater(delay, self._round)
