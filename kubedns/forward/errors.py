"""The two ways a forwarded request fails, apart so the forwarder and its request loop share them.

Both are re-exported by :mod:`kubedns.forward.forwarder`, where the server and the tests import them.
"""

from __future__ import annotations

__all__ = ["Refused", "UpstreamsFailed"]


class UpstreamsFailed(Exception):  # noqa: N818 (name fixed by the server interface)
    """No upstream produced an answer (timeouts, refused connections, TLS errors): answer SERVFAIL."""

    def __init__(self, reason: str, errors: tuple[tuple[str, str], ...] = ()) -> None:
        self.reason = reason
        self.errors = errors  # (upstream, what went wrong) per try
        detail = "; ".join(f"{u}: {e}" for u, e in errors)
        super().__init__(f"{reason} ({detail})" if detail else reason)


class Refused(Exception):  # noqa: N818 (name fixed by the server interface)
    """More than ``max_concurrent`` queries in flight, every upstream to ask at its share of them, or
    no descriptor to spare: answer REFUSED (not a health failure)."""
