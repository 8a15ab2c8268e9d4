"""Live reload (SIGHUP and periodic), rejected reloads, lameduck on SIGTERM, TCP idle timeout.

All against a real ``twistd kubedns`` process; DNS over real loopback sockets.
"""

from __future__ import annotations

import signal
import socket
import threading
import time
from pathlib import Path

import dns.rcode
import pytest

from tests.conftest import free_port, http_get, query
from tests.support import kubeobj
from tests.support.cluster import NGINX_OBJS, manifests_config, write_manifests
from tests.support.procs import poll_until

pytestmark = pytest.mark.timeout(60)


class _Hammer(threading.Thread):
    """Queries continuously while a reload happens; counts answers that are not NOERROR."""

    def __init__(self, port: int):
        super().__init__(daemon=True)
        self.port = port
        self.ok = 0
        self.bad: list[str] = []
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            try:
                r = query(self.port, "nginx.default.svc.cluster.local", timeout=1.0)
                if r.rcode() == dns.rcode.NOERROR:
                    self.ok += 1
                else:
                    self.bad.append(dns.rcode.to_text(r.rcode()))
            except Exception as e:  # a timeout is a dropped query
                self.bad.append(repr(e))


def test_sighup_reload_applies_without_dropping_queries(kubedns_process, tmp_path: Path) -> None:
    port = free_port()
    m = write_manifests(tmp_path / "c.yaml", NGINX_OBJS)
    p = kubedns_process(manifests_config(port, m, ttl=5))
    p.wait_listening(port)
    assert query(port, "nginx.default.svc.cluster.local").answer[0].ttl == 5
    hammer = _Hammer(port)
    hammer.start()
    time.sleep(0.3)
    p.write_config(manifests_config(port, m, ttl=17))
    p.signal(signal.SIGHUP)
    assert poll_until(lambda: query(port, "nginx.default.svc.cluster.local").answer[0].ttl == 17), p.log()
    time.sleep(0.3)
    hammer.halt.set()
    hammer.join(5)
    assert hammer.ok > 10 and hammer.bad == []
    assert "reloaded" in p.log()


def test_reload_adds_and_removes_listeners(kubedns_process, tmp_path: Path) -> None:
    port, port2 = free_port(), free_port()
    m = write_manifests(tmp_path / "c.yaml", NGINX_OBJS)
    p = kubedns_process(manifests_config(port, m))
    p.wait_listening(port)
    p.write_config(manifests_config(port, m, port2=port2))
    p.signal(signal.SIGHUP)
    assert poll_until(lambda: _answers(port2)), p.log()
    p.write_config(manifests_config(port, m))
    p.signal(signal.SIGHUP)
    assert poll_until(lambda: not _answers(port2)), p.log()
    assert _answers(port)


def _answers(port: int) -> bool:
    try:
        return query(port, "nginx.default.svc.cluster.local", timeout=0.5).rcode() == dns.rcode.NOERROR
    except Exception:
        return False


def test_invalid_reload_is_rejected_and_old_config_serves(kubedns_process, tmp_path: Path) -> None:
    port = free_port()
    mport = free_port()
    m = write_manifests(tmp_path / "c.yaml", NGINX_OBJS)
    p = kubedns_process(manifests_config(port, m, ttl=5, extra={"prometheus": f"127.0.0.1:{mport}"}))
    p.wait_listening(port)
    assert "coredns_reload_failed_total 0.0" in http_get(mport, "/metrics")[1]
    p.write_config("servers:\n  - kubernetes: {ttl: soon}\n")
    p.signal(signal.SIGHUP)
    assert poll_until(lambda: "reload rejected" in p.log()), p.log()
    line = next(ln for ln in p.log().splitlines() if "reload rejected" in ln)
    assert str(p.config_path) in line and "servers[0].kubernetes.ttl" in line and "whole number" in line
    r = query(port, "nginx.default.svc.cluster.local")
    assert r.rcode() == dns.rcode.NOERROR and r.answer[0].ttl == 5
    assert p.proc.poll() is None
    assert "coredns_reload_failed_total 1.0" in http_get(mport, "/metrics")[1]


def test_periodic_reload(kubedns_process, tmp_path: Path) -> None:
    port = free_port()
    m = write_manifests(tmp_path / "c.yaml", NGINX_OBJS)
    p = kubedns_process(manifests_config(port, m, ttl=5, extra={"reload": {"interval": "2s"}}))
    p.wait_listening(port)
    p.write_config(manifests_config(port, m, ttl=9, extra={"reload": {"interval": "2s"}}))
    assert poll_until(lambda: query(port, "nginx.default.svc.cluster.local").answer[0].ttl == 9, timeout=8), p.log()


def test_sigterm_lameduck_keeps_answering_then_exits_cleanly(kubedns_process, tmp_path: Path) -> None:
    port = free_port()
    hport = free_port()
    rport = free_port()
    m = write_manifests(tmp_path / "c.yaml", NGINX_OBJS)
    p = kubedns_process(manifests_config(port, m, extra={
        "health": {"listen": f"127.0.0.1:{hport}", "lameduck": "2s"}, "ready": f"127.0.0.1:{rport}"}))
    p.wait_listening(port)
    assert poll_until(lambda: http_get(rport, "/ready")[0] == 200)
    t0 = time.monotonic()
    p.signal(signal.SIGTERM)
    time.sleep(0.3)
    assert http_get(rport, "/ready")[0] == 503  # taken out of the Service at once...
    assert _answers(port)  # ...while still answering
    answered_late = 0.0
    while p.proc.poll() is None and time.monotonic() - t0 < 10:
        if _answers(port):
            answered_late = time.monotonic() - t0
        time.sleep(0.1)
    # twistd ends by re-raising the signal it got: death by SIGTERM is its clean exit (systemd
    # counts it as success; Kubernetes sees 143)
    assert p.proc.wait(10) in (0, -signal.SIGTERM), p.log()
    assert "Server Shut Down." in p.log()
    elapsed = time.monotonic() - t0
    assert answered_late >= 1.5, f"DNS stopped answering {answered_late:.2f}s after SIGTERM"
    assert 1.9 <= elapsed < 6, elapsed


def test_tcp_idle_timeout_closes_connection(kubedns_process, tmp_path: Path) -> None:
    port = free_port()
    m = write_manifests(tmp_path / "c.yaml", NGINX_OBJS)
    cfg = manifests_config(port, m)
    cfg["tcp_idle_timeout"] = "1s"
    p = kubedns_process(cfg)
    p.wait_listening(port)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        t0 = time.monotonic()
        assert s.recv(10) == b""  # server closed the idle connection
        assert 0.8 < time.monotonic() - t0 < 4


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        kids = (task / "children").read_text().split()
        out.extend(int(k) for k in kids)
    return out


def test_workers_share_the_port_and_are_supervised(kubedns_process, tmp_path: Path) -> None:
    port = free_port()
    m = write_manifests(tmp_path / "c.yaml", NGINX_OBJS)
    mport = free_port()
    while True:  # worker 1 serves metrics on the next port
        try:
            probe = socket.socket()
            probe.bind(("127.0.0.1", mport + 1))
            probe.close()
            break
        except OSError:
            mport = free_port()
    rport = free_port()
    cfg = manifests_config(port, m, extra={"prometheus": f"127.0.0.1:{mport}", "ready": f"127.0.0.1:{rport}"})
    cfg["workers"] = 2
    p = kubedns_process(cfg)
    p.wait_listening(port)
    assert poll_until(lambda: "[worker 1] " in p.log() and "worker 1 listening on UDP" in p.log()), p.log()
    assert poll_until(lambda: http_get(rport, "/ready")[0] == 200), p.log()  # both workers synced
    assert poll_until(lambda: _metric_ok(mport + 1)), p.log()  # worker 1's own metrics
    assert "coredns_build_info" in http_get(mport, "/metrics")[1]
    kids = _children(p.proc.pid)
    assert len(kids) == 1
    for _ in range(100):  # fresh source ports: the kernel spreads them over both sockets
        assert query(port, "nginx.default.svc.cluster.local").rcode() == dns.rcode.NOERROR
    import os

    os.kill(kids[0], signal.SIGKILL)
    assert poll_until(lambda: "worker 1 exited" in p.log()), p.log()
    assert poll_until(lambda: len(_children(p.proc.pid)) == 1 and _children(p.proc.pid) != kids, timeout=15), p.log()
    assert _answers(port)
    new_kid = _children(p.proc.pid)[0]
    p.stop()
    assert not Path(f"/proc/{new_kid}").exists() or "zombie" in Path(f"/proc/{new_kid}/status").read_text()


def test_reload_that_cannot_bind_changes_nothing(kubedns_process, tmp_path: Path) -> None:
    port = free_port()
    m = write_manifests(tmp_path / "c.yaml", NGINX_OBJS)
    p = kubedns_process(manifests_config(port, m, ttl=5))
    p.wait_listening(port)
    busy = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    busy.bind(("127.0.0.1", 0))  # a second listen address that is already taken
    try:
        p.write_config(manifests_config(port, m, ttl=23, port2=busy.getsockname()[1]))
        p.signal(signal.SIGHUP)
        assert poll_until(lambda: "reload rejected" in p.log()), p.log()
    finally:
        busy.close()
    r = query(port, "nginx.default.svc.cluster.local")
    assert r.rcode() == dns.rcode.NOERROR and r.answer[0].ttl == 5  # the old config, untouched
    # ...including its source: a change to the cluster is still picked up
    write_manifests(tmp_path / "c.yaml", [*NGINX_OBJS, kubeobj.service("late", "default", cluster_ip="10.96.0.77")])
    assert poll_until(lambda: _answers_name(port, "late.default.svc.cluster.local")), p.log()


def _answers_name(port: int, name: str) -> bool:
    try:
        return query(port, name, timeout=0.5).rcode() == dns.rcode.NOERROR
    except Exception:
        return False


def _metric_ok(port: int) -> bool:
    try:
        return "coredns_dns_requests_total" in http_get(port, "/metrics")[1] or "coredns_build_info" in http_get(
            port, "/metrics")[1]
    except OSError:
        return False
