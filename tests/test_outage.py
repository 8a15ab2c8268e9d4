"""ApiOutage on its own: real threads, a probe the test controls (the HTTP side is in
tests/test_informer_recovery.py and tests/test_watch_e2e.py)."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from twisted.logger import formatEvent, globalLogPublisher

from kubedns.k8s.outage import ApiOutage, Backoff

pytestmark = pytest.mark.timeout(30)


class _Probe:
    """Answers as ``self.up`` says; counts calls and the most it saw at once."""

    def __init__(self) -> None:
        self.up = False
        self.calls = 0
        self.running = 0
        self.most = 0
        self._lock = threading.Lock()

    def __call__(self) -> bool:
        with self._lock:
            self.calls += 1
            self.running += 1
            self.most = max(self.most, self.running)
        time.sleep(0.02)
        with self._lock:
            self.running -= 1
        return self.up


@pytest.fixture
def logged() -> Any:
    lines: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        if event.get("log_namespace") == "kubedns.k8s.watch":
            lines.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    yield lines
    globalLogPublisher.removeObserver(observe)


def _threads(n: int, target: Any) -> list[threading.Thread]:
    ts = [threading.Thread(target=target, args=(i,)) for i in range(n)]
    for t in ts:
        t.start()
    return ts


def test_threads_failing_together_share_one_step_one_line_and_one_probe_at_a_time(logged: list[str]) -> None:
    probe = _Probe()
    outage = ApiOutage(probe, Backoff(base=0.4, cap=0.4), interval=0.05)
    stop = threading.Event()
    ended: list[float] = []

    def fail(i: int) -> None:
        assert outage.unreachable()
        outage.wait(f"r{i}", "Connection refused", stop)
        ended.append(time.monotonic())

    start = time.monotonic()
    for t in _threads(4, fail):
        t.join(5)
    steps = [ln for ln in logged if "unreachable" in ln]
    assert len(steps) == 1, steps
    assert "Connection refused" in steps[0] and "retry in 0." in steps[0]
    assert all(e - start >= 0.2 for e in ended)  # each waited the step out (0.2-0.4 s)
    assert probe.most == 1 and probe.calls >= 3  # probed on the way, one at a time
    assert outage.away and outage.outages == 1


def test_an_answered_probe_ends_the_wait_for_everyone(logged: list[str]) -> None:
    probe = _Probe()
    outage = ApiOutage(probe, Backoff(base=30.0, cap=30.0), interval=0.05)
    stop = threading.Event()
    assert outage.unreachable()
    ts = _threads(3, lambda i: outage.wait(f"r{i}", "refused", stop))
    time.sleep(0.2)
    probe.up = True
    back = time.monotonic()
    for t in ts:
        t.join(5)
    assert time.monotonic() - back < 1.0  # not the 15-30 s step
    assert not outage.away
    assert any("the Kubernetes API is back" in ln for ln in logged)
    assert not outage.unreachable()  # and the next failure probes afresh


def test_wake_and_stop_end_a_long_step() -> None:
    outage = ApiOutage(_Probe(), Backoff(base=30.0, cap=30.0), interval=0.05)
    stop = threading.Event()
    assert outage.unreachable()
    t = threading.Thread(target=outage.wait, args=("r", "refused", stop))
    t.start()
    time.sleep(0.1)
    outage.wake()
    t.join(2)
    assert not t.is_alive()
    assert outage.away  # woken, not back
    t = threading.Thread(target=outage.wait, args=("r", "refused", stop))
    t.start()
    time.sleep(0.1)
    stop.set()
    t.join(2)
    assert not t.is_alive()


def test_a_probe_that_is_answered_means_not_an_outage() -> None:
    probe = _Probe()
    probe.up = True
    outage = ApiOutage(probe, Backoff(), interval=0.05)
    assert not outage.unreachable()
    assert not outage.away and outage.outages == 0
