"""bench/scale.py's summary of several rounds: what ``--rounds N`` reports rests on it.

The benchmark itself needs minutes and a quiet core; what its figures are computed from can be
checked here: the median of each figure across rounds (per kind for the parsing CPU, per thread
group for the CPU split), counts kept whole, and what only the last round measures (the event
phase) taken from it alone.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))

import scale  # noqa: E402  (bench/ is not a package)


def _round(cpu: float, lists: int, pods_cpu: float, threads: tuple[float, float], **extra: Any) -> dict[str, Any]:
    return {"tree": "/t", "cpu_to_sync": cpu, "list_requests": lists, "cpu_threads": threads,
            "relist_kinds": ["pods"], "parse": {"pods": {"cpu": pods_cpu, "objects": 100, "mb": 5.0}}, **extra}


def test_median_of_every_figure_counts_whole_and_events_from_the_last_round() -> None:
    runs = [
        _round(2.9, 250, 0.8, (1.1, 1.6)),
        _round(1.9, 251, 0.6, (0.9, 1.0)),
        _round(2.0, 252, 0.7, (1.0, 1.2), events={"p99": 3.0}, rss_events_peak=120.0),
    ]
    got = scale.median_results(runs)
    assert got["cpu_to_sync"] == 2.0  # not the last round's, not the mean
    assert got["list_requests"] == 251 and isinstance(got["list_requests"], int)
    assert got["cpu_threads"] == (1.0, 1.2)
    assert got["parse"] == {"pods": {"cpu": 0.7, "objects": 100, "mb": 5.0}}
    assert got["events"] == {"p99": 3.0} and got["rss_events_peak"] == 120.0
    assert got["relist_kinds"] == ["pods"] and got["tree"] == "/t"
    assert scale.median_results(runs[:1]) == runs[0]
