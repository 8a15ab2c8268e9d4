"""One forwarded request: its tries at the upstreams in policy order, within one request budget.

Split from :mod:`kubedns.forward.forwarder`, which owns the upstreams, their health and the
in-flight de-duplication: this is the loop over one request's tries (skip an upstream at its
share of ``max_concurrent``, count a try that found no descriptor as a local refusal, fail over on
transport errors, stop at the budget) and hands the outcome to the request's flight.

Callbacks rather than a coroutine, and no Deferred between the request and its flight: a
coroutine's Deferred plumbing was a fifth of a forwarded cache miss's CPU.  A UDP try has no
Deferred either: the exchange is the pool's sink (``callback``/``errback``), and its ``called``
(the request ended) tells the pool not to report a late failure.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.python.failure import Failure

from kubedns.forward.errors import Refused, UpstreamsFailed
from kubedns.forward.message import Expect
from kubedns.forward.relay import relayed_from_upstream
from kubedns.forward.transport import NoDescriptorError, TransportError, describe

if TYPE_CHECKING:
    from kubedns.forward.forwarder import Forwarder, _Flight, _Upstream
    from kubedns.forward.udppool import _PooledSocket

__all__ = ["Exchange"]


class Exchange:
    """One request's tries (see the module docstring).

    Ends once, handing ``Forwarder._land`` the answer (a :class:`~kubedns.forward.relay.Relayed`) or a Failure of
    :class:`UpstreamsFailed`, :class:`Refused` or CancelledError (:meth:`cancel`).
    """

    __slots__ = ("fwd", "template", "expect", "tcp", "order", "i", "deadline", "errors", "local", "up",
                 "t0", "try_d", "try_sock", "try_timeout", "key", "flight", "called")

    def __init__(self, fwd: Forwarder, template: bytes, expect: Expect, tcp: bool, only: _Upstream | None,
                 key: tuple, flight: _Flight) -> None:
        self.fwd = fwd
        self.template = template
        self.expect = expect
        self.tcp = tcp
        self.order = fwd._order(only)
        self.i = 0
        self.deadline = fwd._reactor.seconds() + fwd._budget
        self.errors: list[tuple[str, str]] = []
        self.local = 0  # tries not made for a local limit (upstream at its share, no descriptor)
        self.up: _Upstream | None = None
        self.t0 = 0.0
        self.try_d: defer.Deferred | None = None  # a try over TCP/TLS (or after a truncated answer)
        self.try_sock: _PooledSocket | None = None  # a try over UDP: this is its sink (callback/errback)
        self.try_timeout = 0.0
        self.key = key
        self.flight = flight
        self.called = False  # the result went to the flight (Forwarder._land)

    def start(self) -> None:
        if not self.order:
            fwd = self.fwd
            self._finish(Failure(UpstreamsFailed(fwd.disabled_reason or
                                                 "every upstream to ask is isolated: it forwards back to us")))
        else:
            self._next()

    def cancel(self) -> None:
        """Cancel the try in flight; the flight fails with CancelledError (as a Deferred would)."""
        if self.try_d is not None:
            self.try_d.cancel()
        if self.try_sock is not None:
            sock, self.try_sock = self.try_sock, None
            sock.cancel(self)
        if not self.called:
            self._finish(Failure(defer.CancelledError()))

    def _finish(self, result: Any) -> None:
        """The request's end: a Relayed or a Failure, handed to the flight once."""
        if not self.called:
            self.called = True
            flight = self.flight
            flight.inner = None  # no cycle left for the garbage collector to find
            key = self.key
            # the UDP pool's deadline heap holds the exchange (its sink) until the try's timeout:
            # keep nothing big alive that long
            self.flight = self.key = self.template = self.order = self.errors = None  # type: ignore[assignment]
            self.fwd._land(result, key, flight)

    def _next(self) -> None:
        fwd = self.fwd
        order = self.order
        errors = self.errors
        cap = fwd._per_upstream
        while self.i < len(order):
            up = order[self.i]
            self.i += 1
            remaining = self.deadline - fwd._reactor.seconds()
            if remaining <= 0.001:
                errors.append((up.name, "request budget exhausted"))
                break
            if cap and up.inflight >= cap:
                self.local += 1
                errors.append((up.name, f"{up.inflight} queries in flight to it, its share of max_concurrent"))
                continue
            up.stats.requests += 1
            up.inflight += 1
            fwd._tries += 1
            self.up = up
            self.t0 = time.perf_counter()
            timeout = min(fwd.config.timeout, remaining)
            if fwd._streamed(up, self.tcp):
                d = self.try_d = fwd._try(up, self.template, self.expect, self.tcp, timeout, self.deadline)
                d.addCallbacks(self._answered, self._failed)
            else:  # UDP: this exchange is the query's sink, no Deferred
                self.try_timeout = timeout
                self.try_sock = fwd._pool(up).send(self.template, self.expect, timeout, fwd.max_fd, self)
            return
        if self.local and self.local == len(errors):
            fwd.stats.max_concurrent_rejects += 1
            self._finish(Failure(Refused("; ".join(f"{u}: {e}" for u, e in errors))))
        else:
            self._finish(Failure(UpstreamsFailed("no upstream answered", tuple(errors))))

    # the UDP pool's sink (udppool.Sink)
    def callback(self, data: bytes) -> None:
        """The UDP answer; a truncated one is asked again over TCP (a Deferred: rare)."""
        self.try_sock = None
        if data[2] & 0x02:  # TC
            up = self.up
            assert up is not None
            got = self.fwd._after_truncation(up, data, self.template, self.expect, self.try_timeout, self.deadline)
            if isinstance(got, defer.Deferred):
                self.try_d = got
                got.addCallbacks(self._answered, self._failed)
                return
        self._answered(data)

    def errback(self, f: Failure) -> None:
        self.try_sock = None
        self._failed(f)

    def _done_trying(self) -> _Upstream:
        up = self.up
        assert up is not None
        self.try_d = None
        self.try_sock = None
        up.inflight -= 1
        self.fwd._tries -= 1
        return up

    def _answered(self, data: bytes) -> None:
        up = self._done_trying()
        if self.called:  # a try ending after the request did (cannot happen: kept safe)
            return
        try:
            r = relayed_from_upstream(data, 16 + len(self.expect.qname_wire))  # its question was checked
        except ValueError as e:
            self._transport_failed(up, e)
            return
        rcode = r.rcode
        stats = up.stats
        stats.responses[rcode] = stats.responses.get(rcode, 0) + 1
        stats.observe(rcode, time.perf_counter() - self.t0, self.fwd._bounds)
        self.fwd._succeeded(up)
        self._finish(r)

    def _failed(self, f: Failure) -> None:
        up = self._done_trying()
        fwd = self.fwd
        if self.called:  # a try ending after the request did (cannot happen: kept safe)
            return
        if f.check(NoDescriptorError):
            up.stats.requests -= 1  # nothing was sent
            fwd._fd_tries = fwd._tries
            fwd._fd_full_at = fwd._reactor.seconds()
            self.local += 1
            self.errors.append((up.name, describe(f)))
            self._next()
        elif f.check(TransportError):
            self._transport_failed(up, f.value or TransportError("failed"))
        else:  # cancelled (stopping), or a bug: the request ends with it
            self._finish(f)

    def _transport_failed(self, up: _Upstream, e: BaseException) -> None:
        up.stats.failures += 1
        self.errors.append((up.name, describe(e)))
        self.fwd._failed(up)
        self._next()
