"""Waiting on a real process from a test thread.

``tests/conftest.py``'s ``wait_for`` raises when its time is up; the process tests that want to
add the server's log to the failure use :func:`poll_until`, which says yes or no instead:
``assert poll_until(lambda: ...), p.log()``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

__all__ = ["poll_until"]


def poll_until(cond: Callable[[], Any], timeout: float = 10.0) -> bool:
    """Call ``cond`` every 0.1 s until it is truthy (True) or ``timeout`` seconds pass (False);
    an exception from ``cond`` is not caught."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.1)
    return False
