"""The benchmark harness itself: what its figures rest on (bench/run.py, bench/churn.py).

The benchmarks cannot run here (they need dnsperf, two quiet cores and minutes), but what their
figures are computed from can be checked: every change the churn loop makes is a real one that
the server must answer differently (else "QPS under churn" would measure nothing), the check that
the last change reached the answers expects exactly what the loop wrote, dnsperf's summary is
read right, and bad arguments end in one line naming the argument.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))

import churn  # noqa: E402  (bench/ is not a package: its scripts import each other by name)
import run  # noqa: E402

from tests import fakeapi  # noqa: E402

DNSPERF_SUMMARY = """\
Statistics:

  Queries sent:         1203311
  Queries completed:    1202990 (99.97%)
  Queries lost:         321 (0.03%)

  Response codes:       NOERROR 1082718 (90.00%), NXDOMAIN 120272 (10.00%)
  Run time (s):         6.000412
  Queries per second:   200484.898270
"""


def _port(api: fakeapi.FakeKubeAPI, j: int) -> int:
    obj = api.get("services", f"ns{j % 10}", f"churn{j}")
    assert obj is not None
    return obj["spec"]["ports"][0]["port"]


def test_every_churn_change_is_a_real_change_the_applied_check_expects() -> None:
    with fakeapi.FakeKubeAPI() as api:
        churn._load(api, 3)
        loop = churn.Churner(api, rate=1.0, start_at=0)
        rv = api.resource_version
        for n in range(3 * churn.N_CHURN + 7):  # three passes and a bit: both port flips, wrap-around
            j, port = churn.nth_change(n)
            before = _port(api, j)
            assert loop.change() == (j, port)
            assert before != port == _port(api, j)  # DNS-visible: the SRV answer's port moves
            assert api.resource_version == rv + n + 1  # one watch event per change
        # what the applied check asks the server for after the loop stopped: the last change
        j, want = churn.nth_change(loop.n - 1)
        assert _port(api, j) == want
        assert loop.made == loop.n == 3 * churn.N_CHURN + 7


def test_churn_loop_continues_where_the_last_phase_stopped() -> None:
    with fakeapi.FakeKubeAPI() as api:
        churn._load(api, 1)
        first = churn.Churner(api, rate=1.0, start_at=0)
        for _ in range(churn.N_CHURN + 3):
            first.change()
        second = churn.Churner(api, rate=1.0, start_at=first.n)
        j, port = churn.nth_change(second.n)
        assert _port(api, j) != port  # the next change moves a port again, not back to where it is
        second.change()
        assert second.made == 1 and _port(api, j) == port


def test_dnsperf_summary_and_medians() -> None:
    assert run.parse_dnsperf(DNSPERF_SUMMARY) == (200484.89827, 1202990, 321)
    assert run.parse_dnsperf("dnsperf: error") == (0.0, 0, 0)
    assert run.median([3.0, 1.0, 2.0]) == 2.0
    assert run.median([4.0, 1.0, 2.0, 3.0]) == 2.5


@pytest.mark.parametrize(("argv", "says"), [
    (["--baseline", "/nonexistent-tree", "--rounds", "2"], "--baseline /nonexistent-tree: not a kubedns source tree"),
    (["--baseline", str(REPO), "--rounds", "0"], "--rounds must be at least 1"),
    (["--churn", "0"], "--churn '0': rates must be positive"),
    (["--churn", "fast"], "--churn 'fast': expected changes per second"),
    (["--churn", "20", "--together", "--qps", "0"], "--rounds must be at least 1, --seconds and --qps positive"),
])
def test_bad_arguments_end_in_one_line(argv: list[str], says: str) -> None:
    r = subprocess.run([sys.executable, str(REPO / "bench" / "run.py"), *argv], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [r.stderr.strip()]
    assert says in r.stderr
