"""Retry pacing for the watch threads: exponential backoff, and one shared view of an API outage.

Why a shared view: when the API server goes away, every resource's LIST+WATCH loop fails at the
same moment with the same connection error.  Each loop backing off on its own meant one warning
per resource per backoff step (four lines a step with ``pods: verified``), and, worse, that the
API's return was noticed only when the loops' next expensive attempts came due: after a minute's
outage the backoff had grown to 15 s, and changes made meanwhile were served 15 s late.

So a connection-level failure (no HTTP answer at all: refused, reset, timed out) is first checked
with one cheap request (``probe``, a GET of ``/version``).  If the API answers it, the failure is
that resource's own business (a hung watch, a list too big for the read timeout) and the loop backs
off as before.  If it does not, the API is *away*, and every loop that fails that way waits on the
same schedule: one shared :class:`Backoff`, one log line per step naming the resource that hit it
first, the error and the delay.  The expensive LIST/WATCH calls are still retried only at the end
of each step, but while the API is away the waiting threads probe it every ``interval`` seconds
(one probe at a time), and the probe that gets an answer ends the outage: every loop retries at
once.

No thread of its own: :class:`ApiOutage` runs on the watch threads of :mod:`kubedns.k8s.watch`
that call it (the only threads in kubedns), and never touches the reactor.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable

from twisted.logger import Logger

__all__ = ["ApiOutage", "Backoff"]

_log = Logger(namespace="kubedns.k8s.watch")

#: How often a waiting thread re-checks for its step's end, a return or stop().
_TICK = 0.05


class Backoff:
    """Exponential backoff with jitter: ``base * 2**n`` capped at ``cap``, drawn from [d/2, d]."""

    def __init__(self, base: float = 0.2, cap: float = 30.0, rng: random.Random | None = None):
        self.base = base
        self.cap = cap
        self.attempt = 0
        self._rng = rng or random.Random()

    def next(self) -> float:
        d = min(self.cap, self.base * (2 ** min(self.attempt, 30)))
        self.attempt += 1
        return self._rng.uniform(d / 2, d)

    def reset(self) -> None:
        self.attempt = 0


class ApiOutage:
    """Whether the API server answers at all, shared by the watch threads of one API client.

    ``probe()`` makes one cheap request and returns True if the server answered it (any HTTP
    status below 500), False if it did not (no connection, timeout, 5xx from a proxy in front).
    """

    def __init__(
        self,
        probe: Callable[[], bool],
        backoff: Backoff,
        interval: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._probe = probe
        self._backoff = backoff
        self.interval = interval
        self._clock = clock
        self._cond = threading.Condition()
        self._away_since: float | None = None  # None: the API answers (as far as we know)
        self._deadline: float | None = None  # end of the current backoff step
        self._step = 0  # bumped when a step starts or is cut short
        self._probing = False
        self._next_probe = 0.0
        self.outages = 0  # how many times the API was found away

    @property
    def away(self) -> bool:
        return self._away_since is not None

    def unreachable(self) -> bool:
        """True if the API is away; probes it (one probe at a time) unless that is already known."""
        with self._cond:
            while self._probing:
                self._cond.wait(_TICK)
            if self._away_since is not None:
                return True
            self._probing = True
        answered = False
        try:
            answered = self._probe()
        finally:
            with self._cond:
                self._probing = False
                self._next_probe = self._clock() + self.interval
                if not answered and self._away_since is None:
                    self._away_since = self._clock()
                    self.outages += 1
                self._cond.notify_all()
        return not answered

    def wait(self, resource: str, error: str, stopping: threading.Event) -> None:
        """Wait out the current backoff step, or less if the API answers a probe meanwhile.

        The first thread to fail in a step starts it and logs it; the others join it silently.
        Returns at the step's end, when the API is back, or soon after ``stopping`` is set.
        """
        with self._cond:
            if self._away_since is None:
                return  # back already
            now = self._clock()
            if self._deadline is None or now >= self._deadline:
                delay = self._backoff.next()
                self._deadline = now + delay
                self._step += 1
                _log.warn(
                    "{resource}: {error}; the Kubernetes API is unreachable: list and watch retry in"
                    " {delay:.1f}s, and at once when it answers again (checked every {interval}s)",
                    resource=resource,
                    error=error,
                    delay=delay,
                    interval=self.interval,
                )
            step = self._step
        while not stopping.is_set():
            with self._cond:
                now = self._clock()
                deadline = self._deadline
                if self._away_since is None or self._step != step or deadline is None or now >= deadline:
                    return
                if self._probing or now < self._next_probe:
                    self._cond.wait(min(_TICK, deadline - now))
                    continue
                self._probing = True
            answered = False
            try:
                answered = self._probe()
            finally:
                with self._cond:
                    self._probing = False
                    self._next_probe = self._clock() + self.interval
                    if answered:
                        self._back("a probe was answered")
                    self._cond.notify_all()

    def progressed(self) -> None:
        """A list or watch made progress: whatever the probes say, the API is back."""
        if self._away_since is None:
            return  # the common case, without the lock
        with self._cond:
            self._back("a request got through")

    def wake(self) -> None:
        """End the current step now (a reload): every waiting thread retries at once."""
        with self._cond:
            self._step += 1
            self._deadline = None
            self._cond.notify_all()

    def _back(self, how: str) -> None:
        # caller holds the lock
        if self._away_since is None:
            return
        _log.info(
            "the Kubernetes API is back after {seconds:.1f}s ({how}); resuming list and watch",
            seconds=self._clock() - self._away_since,
            how=how,
        )
        self._away_since = None
        self._deadline = None
        self._step += 1
        self._backoff.reset()
        self._cond.notify_all()
