"""The ``log`` and ``errors`` plugins: observers of the queries answered on each listener whose
blocks name them, and the fast-path switch that query logging needs.

They report on the answer as encoded (its size, flags, duration), so they are not links of a
block's chain but observers of its :class:`~kubedns.serve.server.Dispatcher`, fed one
:class:`~kubedns.dns.query.QueryInfo` per answer.  They are wired with the chains, by
:class:`kubedns.service.KubeDNS` after every build and reload: the one place where a block's
config becomes what runs for its queries.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kubedns.ops.querylog import ErrorLog, QueryLog
    from kubedns.serve.server import Dispatcher

__all__ = ["QueryObservers"]


class QueryObservers:
    """The query and error logs of every dispatcher, kept in line with its blocks' config."""

    def __init__(self, reactor: Any):
        self.reactor = reactor
        #: id(dispatcher) → (dispatcher, QueryLog, ErrorLog)
        self._loggers: dict[int, tuple[Dispatcher, QueryLog | None, ErrorLog | None]] = {}
        #: id(dispatcher) → its fast-path switch before query logging turned it off
        self._fast_off: dict[int, bool] = {}

    def wire(self, dispatchers: Iterable[Dispatcher]) -> None:
        """Add or remove each dispatcher's observers as its blocks' ``log``/``errors`` say
        (idempotent; loggers of dispatchers gone are flushed and dropped)."""
        from kubedns.ops.querylog import ErrorLog, QueryLog

        current = {id(d): d for d in dispatchers}
        for k in [k for k in self._loggers if k not in current]:
            _, _, errs = self._loggers.pop(k)
            if errs is not None:
                errs.flush()
        for k in [k for k in self._fast_off if k not in current]:
            del self._fast_off[k]
        for k, disp in current.items():
            _, qlog, errs = self._loggers.get(k, (disp, None, None))
            wants_log = any(b.config.log is not None for b in disp.blocks)
            wants_errors = any(b.config.errors is not None for b in disp.blocks)
            if wants_log and qlog is None:
                qlog = QueryLog(disp)
                disp.observers.append(qlog)
            elif not wants_log and qlog is not None:
                disp.observers.remove(qlog)
                qlog = None
            if wants_errors and errs is None:
                errs = ErrorLog(disp, reactor=self.reactor)
                disp.observers.append(errs)
            elif not wants_errors and errs is not None:
                disp.observers.remove(errs)
                errs.flush()
                errs = None
            self._loggers[k] = (disp, qlog, errs)
            # the fast path is not observed: query logging needs it off on this dispatcher
            if qlog is not None and QueryLog.needs_every_query:
                if k not in self._fast_off:
                    self._fast_off[k] = disp.fast.enabled
                disp.fast.enabled = False
                disp.fast.clear()
            elif k in self._fast_off:
                disp.fast.enabled = self._fast_off.pop(k)

    def flush(self) -> None:
        """Write out the errors held back for consolidation (at shutdown)."""
        for _, _, errs in self._loggers.values():
            if errs is not None:
                errs.flush()
