"""Shared test helpers: run the real ``twistd kubedns`` process and query it with dnspython.

Every server under test is a real process started the way operators start it, listening on
127.0.0.1 with a free port; tests talk to it over real UDP/TCP sockets.  Configs written here
never forward anywhere but loopback.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dns.message
import dns.query
import dns.rdatatype
import pytest
import yaml

from kubedns.serve.workers import TWISTD

REPO = Path(__file__).resolve().parent.parent


def run_to_exit(path: Path, prefix: list[str] | None = None, timeout: float = 60) -> tuple[int, str]:
    """Run ``twistd kubedns --config path`` until it exits (it must: a bad config, a busy port...):
    its exit status and stdout + stderr."""
    r = subprocess.run([*(prefix or []), *TWISTD, "-n", "--pidfile=", "kubedns", "--config", str(path)],
                       cwd=REPO, capture_output=True, text=True, timeout=timeout)
    return r.returncode, r.stdout + r.stderr


def cannot_listen_lines(out: str) -> list[str]:
    """The "cannot listen" lines of a server's output, which must hold no traceback."""
    assert "Traceback" not in out, out
    return [ln for ln in out.splitlines() if "cannot listen" in ln]


def free_port(host: str = "127.0.0.1") -> int:
    """A port free for both UDP and TCP on ``host`` right now."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(50):
        t = socket.socket(family, socket.SOCK_STREAM)
        t.bind((host, 0))
        port = t.getsockname()[1]
        u = socket.socket(family, socket.SOCK_DGRAM)
        try:
            u.bind((host, port))
        except OSError:
            continue
        finally:
            u.close()
            t.close()
        return port
    raise RuntimeError("no free port")


def query(
    port: int,
    name: str,
    rdtype: str | int = "A",
    *,
    host: str = "127.0.0.1",
    tcp: bool = False,
    timeout: float = 3.0,
    **kw: Any,
) -> dns.message.Message:
    """One query over real sockets; ``kw`` goes to ``dns.message.make_query`` (use_edns, payload...)."""
    q = dns.message.make_query(name, rdtype, **kw)
    if tcp:
        return dns.query.tcp(q, host, port=port, timeout=timeout)
    return dns.query.udp(q, host, port=port, timeout=timeout, ignore_trailing=True)


class KubeDNSProcess:
    """``twistd -n kubedns --config FILE`` as a child process, stopped on exit."""

    def __init__(self, config: dict[str, Any] | str, workdir: Path, env: dict[str, str] | None = None):
        self.workdir = workdir
        self.config_path = workdir / "corefile.yaml"
        self.write_config(config)
        self.log_path = workdir / "kubedns.log"
        self.env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
        self.proc: subprocess.Popen[bytes] | None = None

    def write_config(self, config: dict[str, Any] | str) -> None:
        text = config if isinstance(config, str) else yaml.safe_dump(config, sort_keys=False)
        self.config_path.write_text(text)

    def command(self) -> list[str]:
        return [*TWISTD, "-n", "--pidfile=", "kubedns", "--config", str(self.config_path)]

    def start(self) -> KubeDNSProcess:
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(self.command(), cwd=REPO, stdout=self._log, stderr=subprocess.STDOUT, env=self.env)
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_listening(self, port: int, host: str = "127.0.0.1", timeout: float = 20.0) -> None:
        """Wait until the server answers any DNS query on ``port`` (SERVFAIL counts)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"kubedns exited with {self.proc.returncode}:\n{self.log()}")
            try:
                query(port, "dns-version.cluster.local", "TXT", host=host, timeout=0.3)
                return
            except Exception:
                time.sleep(0.1)
        raise AssertionError(f"kubedns did not answer on {host}:{port} within {timeout}s:\n{self.log()}")

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 15.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()
        return self.proc.returncode


class LimitedProcess(KubeDNSProcess):
    """``twistd kubedns`` with a hard open-files limit of ``nofile`` (so start-up cannot raise it)."""

    def __init__(self, config: dict[str, Any], workdir: Path, nofile: int):
        super().__init__(config, workdir)
        self.nofile = nofile

    def command(self) -> list[str]:
        setlimit = (f"import os, resource, sys; resource.setrlimit(resource.RLIMIT_NOFILE, ({self.nofile}, {self.nofile})); "
                    "os.execv(sys.argv[1], sys.argv[1:])")
        return [sys.executable, "-c", setlimit, *super().command()]


@pytest.fixture
def kubedns_process(tmp_path: Path) -> Iterator[Any]:
    """Factory: ``kubedns_process(config)`` starts a server; all are stopped after the test."""
    started: list[KubeDNSProcess] = []

    def start(config: dict[str, Any] | str, env: dict[str, str] | None = None) -> KubeDNSProcess:
        sub = tmp_path / f"kubedns{len(started)}"
        sub.mkdir()
        p = KubeDNSProcess(config, sub, env).start()
        started.append(p)
        return p

    yield start
    for p in started:
        p.stop()


def rrset_text(msg: dns.message.Message, section: str = "answer") -> list[str]:
    """Records of a section as sorted ``name TYPE rdata`` strings (TTL and class left out)."""
    out = []
    for rrset in getattr(msg, section):
        for rd in rrset:
            out.append(f"{rrset.name.to_text(omit_final_dot=True)} {dns.rdatatype.to_text(rrset.rdtype)} {rd.to_text()}")
    return sorted(out)


_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never through a proxy


def http_get(port: int, path: str, timeout: float = 3.0) -> tuple[int, str]:
    """GET http://127.0.0.1:port/path → (status, body); 4xx/5xx are answers too."""
    try:
        with _HTTP.open(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def wait_for(fn: Callable[[], Any], timeout: float = 10.0) -> Any:
    """Poll ``fn`` (from a test thread) until it returns something truthy, which is returned;
    an exception counts as "not yet" (a timed-out query is retried)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = fn()
            if last:
                return last
        except Exception as e:
            last = e
        time.sleep(0.1)
    raise AssertionError(f"condition not met in {timeout}s; last: {last!r}")


async def wait_until(cond: Callable[[], Any], timeout: float = 5.0, what: str = "") -> float:
    """Poll ``cond`` on the reactor every 5 ms (in-process trial tests); the seconds it took."""
    from twisted.internet import reactor, task

    start = time.monotonic()
    while not cond():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or cond}")
        await task.deferLater(reactor, 0.005, lambda: None)
    return time.monotonic() - start
