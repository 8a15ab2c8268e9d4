"""``workers: N``: N full server processes sharing the DNS sockets through SO_REUSEPORT.

The process twistd starts is worker 0.  It spawns workers 1..N-1 running the same command with
``KUBEDNS_WORKER=i`` in their environment, relays their log lines into its own log, restarts a
worker that dies (with a growing delay so a crash loop does not spin), and stops them with
SIGTERM when it stops (each runs its own lameduck).  Each worker has its own Kubernetes watch
and answers on its own; a worker tells its parent it is ready by writing ``ready`` on file
descriptor 3, and the parent's /ready only says 200 once every worker has.  /health and
/ready are served by worker 0 only; metrics are per worker, on the ``prometheus`` port plus
the worker index (9153, 9154, ...), so no request is ever answered by a process that does not
know the figures it reports.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import IO, Any

from twisted.application import service
from twisted.internet import defer, protocol
from twisted.logger import Logger

__all__ = ["TWISTD", "WorkerPool", "announce_ready", "worker_index"]

log = Logger()

ENV = "KUBEDNS_WORKER"
READY_FD = 3


def worker_index() -> int:
    """This process's worker number: 0 for the process twistd started."""
    try:
        return int(os.environ.get(ENV, "0"))
    except ValueError:
        return 0


def announce_ready() -> None:
    """Tell the parent (if any) that this worker's cluster data is synced."""
    if worker_index() == 0:
        return
    try:
        os.write(READY_FD, b"ready\n")
    except OSError:
        pass


class _WorkerProtocol(protocol.ProcessProtocol):
    def __init__(self, pool: WorkerPool, index: int):
        self.pool = pool
        self.index = index
        self.ready = False
        self.on_end: defer.Deferred[None] | None = None
        self._buf = b""
        #: where a worker's JSON query-log lines go: None is this process's real stdout
        self.out: IO[str] | None = None

    def childDataReceived(self, fd: int, data: bytes) -> None:  # noqa: N802 (Twisted API)
        if fd == READY_FD:
            if b"ready" in data:
                self.ready = True
            return
        self._buf += data
        *lines, self._buf = self._buf.split(b"\n")
        for line in lines:
            if line.startswith(b"{"):
                # ``log: {format: json}`` lines (twistd's own lines start with a timestamp): pass
                # them through bare, so the pod's stdout stays one JSON object per line
                self._passthrough(line.decode(errors="replace"))
            elif line.strip():
                log.info("[worker {i}] {line}", i=self.index, line=line.decode(errors="replace"))

    def _passthrough(self, line: str) -> None:
        out = self.out if self.out is not None else sys.__stdout__
        try:
            if out is None:  # no stdout at all (closed by the process that started us)
                raise ValueError("no stdout")
            out.write(line + "\n")
            out.flush()
        except (OSError, ValueError):
            log.info("{line}", line=line)

    def processEnded(self, reason: Any) -> None:  # noqa: N802
        self.pool._ended(self.index, reason)
        if self.on_end is not None:
            self.on_end.callback(None)


class WorkerPool(service.Service):
    """Spawns and supervises workers 1..count-1 of this process's command line."""

    def __init__(self, count: int, reactor: Any = None, argv: list[str] | None = None):
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self.reactor = reactor
        self.count = count
        self.argv = argv or [*TWISTD, *sys.argv[1:]]
        self.procs: dict[int, _WorkerProtocol] = {}
        self._delay: dict[int, float] = {}
        self._stopping = False

    def all_ready(self) -> bool:
        return len(self.procs) == self.count - 1 and all(p.ready for p in self.procs.values())

    def not_ready(self) -> list[str]:
        return [f"worker {i}" for i in range(1, self.count) if i not in self.procs or not self.procs[i].ready]

    def signal_all(self, sig: int) -> None:
        for proto in self.procs.values():
            if proto.transport is None:  # not started yet
                continue
            try:
                proto.transport.signalProcess(sig)
            except Exception:  # already gone: processEnded will restart it
                pass

    def startService(self) -> None:  # noqa: N802
        service.Service.startService(self)
        self._stopping = False
        for i in range(1, self.count):
            self._spawn(i)

    def _spawn(self, index: int) -> None:
        if self._stopping:
            return
        proto = _WorkerProtocol(self, index)
        env = dict(os.environ, **{ENV: str(index), "PYTHONUNBUFFERED": "1"})
        self.reactor.spawnProcess(proto, self.argv[0], self.argv, env=env,
                                  childFDs={0: "w", 1: "r", 2: "r", READY_FD: "r"})
        self.procs[index] = proto

    def _ended(self, index: int, reason: Any) -> None:
        self.procs.pop(index, None)
        if self._stopping:
            return
        delay = min(30.0, self._delay.get(index, 0.5) * 2)
        self._delay[index] = delay
        log.error("kubedns worker {i} exited ({reason}); restarting in {d:.1f}s", i=index,
                  reason=reason.getErrorMessage(), d=delay)
        self.reactor.callLater(delay, self._spawn, index)

    def begin_stop(self) -> None:
        """SIGTERM every worker now (they run their own lameduck) and stop restarting them."""
        if self._stopping:
            return
        self._stopping = True
        self.signal_all(signal.SIGTERM)

    def stopService(self) -> Any:  # noqa: N802
        """Stop the workers and wait until every one has exited."""
        service.Service.stopService(self)
        self.begin_stop()
        waits = []
        for proto in list(self.procs.values()):
            d: defer.Deferred[None] = defer.Deferred()
            proto.on_end = d
            waits.append(d)
        return defer.DeferredList(waits) if waits else None


#: ``twistd`` run by this very interpreter (the script on PATH may belong to another Python):
#: how workers are spawned, and how tests and benchmarks start the server.
TWISTD = [sys.executable, "-c", "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"]
