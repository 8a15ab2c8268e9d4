"""What an operator sees first: ``--version``, the first log line, and addresses that cannot be
bound (busy, not on this host, privileged without the capability), at start and on reload.

Each test runs the real ``twistd kubedns`` process; nothing is sent anywhere but 127.0.0.1.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
from pathlib import Path
from typing import Any

import dns.rcode
import pytest
import yaml

from kubedns import __version__
from kubedns.serve.workers import TWISTD
from tests.conftest import REPO, cannot_listen_lines, free_port, http_get, query, run_to_exit, wait_for
from tests.support.cluster import NGINX_OBJS, manifests_config, write_manifests

pytestmark = pytest.mark.timeout(90)


def _run(config: dict[str, Any], tmp_path: Path, prefix: list[str] | None = None) -> tuple[int, str, Path]:
    """Start twistd with ``config`` and wait for it to exit (it must: the address cannot be bound)."""
    path = tmp_path / "x.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return (*run_to_exit(path, prefix), path)


def _busy(kind: socket.SocketKind) -> socket.socket:
    s = socket.socket(socket.AF_INET, kind)
    s.bind(("127.0.0.1", free_port()))
    if kind == socket.SOCK_STREAM:
        s.listen(1)
    return s


def test_version_is_kubedns_version() -> None:
    r = subprocess.run([*TWISTD, "kubedns", "--version"], cwd=REPO, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"kubedns {__version__} ("), r.stdout
    assert "Twisted version" not in r.stdout


def test_first_log_line_names_version_config_and_every_listener(kubedns_process, tmp_path: Path) -> None:
    port, port2, hport, rport, mport = (free_port() for _ in range(5))
    m = write_manifests(tmp_path / "c.yaml", NGINX_OBJS)
    cfg = manifests_config(port, m, port2=port2, extra={"health": f"127.0.0.1:{hport}", "ready": f"127.0.0.1:{rport}",
                                               "prometheus": f"127.0.0.1:{mport}"})
    p = kubedns_process(cfg)
    p.wait_listening(port)
    first = p.log().splitlines()[0]
    assert f"kubedns {__version__} starting with {p.config_path}" in first, first
    for addr in (f"127.0.0.1:{port} (UDP, TCP)", f"127.0.0.1:{port2} (UDP, TCP)", f"/health on 127.0.0.1:{hport}",
                 f"/ready on 127.0.0.1:{rport}", f"/metrics on 127.0.0.1:{mport}"):
        assert addr in first, first


@pytest.mark.parametrize("workers", [1, 2])
def test_busy_dns_port_at_start_is_one_line_and_exit_1(tmp_path: Path, workers: int) -> None:
    """With ``workers: 2`` the sockets are made by hand with SO_REUSEPORT: the same line."""
    busy = _busy(socket.SOCK_DGRAM)
    port = busy.getsockname()[1]
    try:
        cfg = manifests_config(port, write_manifests(tmp_path / "c.yaml", NGINX_OBJS))
        cfg["workers"] = workers
        rc, out, path = _run(cfg, tmp_path)
    finally:
        busy.close()
    assert rc == 1, out
    assert cannot_listen_lines(out) == [
        f"kubedns: cannot listen: {path}: servers[0].listen: 127.0.0.1:{port}: address already in use"], out


def test_address_not_on_this_host_at_start(tmp_path: Path) -> None:
    cfg = manifests_config(free_port(), write_manifests(tmp_path / "c.yaml", NGINX_OBJS))
    cfg["servers"][0]["listen"] = "192.0.2.1:1053"  # TEST-NET-1: on no interface here; nothing is sent
    rc, out, path = _run(cfg, tmp_path)
    assert rc == 1, out
    assert cannot_listen_lines(out) == [
        f"kubedns: cannot listen: {path}: servers[0].listen: 192.0.2.1:1053: "
        "not an address of this host (cannot assign requested address)"], out


@pytest.mark.parametrize("key", ["health", "ready", "prometheus"])
def test_busy_http_port_at_start_names_its_key(tmp_path: Path, key: str) -> None:
    busy = _busy(socket.SOCK_STREAM)
    hport = busy.getsockname()[1]
    try:
        cfg = manifests_config(free_port(), write_manifests(tmp_path / "c.yaml", NGINX_OBJS), extra={key: f"127.0.0.1:{hport}"})
        rc, out, path = _run(cfg, tmp_path)
    finally:
        busy.close()
    assert rc == 1, out
    assert cannot_listen_lines(out) == [
        f"kubedns: cannot listen: {path}: servers[0].{key}: 127.0.0.1:{hport}: address already in use"], out


def _can_drop_capabilities() -> str:
    if os.geteuid() != 0:
        return "needs root (to drop CAP_NET_BIND_SERVICE in a network namespace of its own)"
    for tool in ("unshare", "setpriv", "ip"):
        if shutil.which(tool) is None:
            return f"needs {tool} (util-linux / iproute2)"
    r = subprocess.run(["unshare", "-n", "true"], capture_output=True, timeout=10)
    if r.returncode != 0:
        return f"cannot create a network namespace here: {r.stderr.decode(errors='replace').strip()}"
    return ""


@pytest.mark.skipif(bool(_can_drop_capabilities()), reason=_can_drop_capabilities() or "runs")
def test_port_53_without_cap_net_bind_service_says_which_capability(tmp_path: Path) -> None:
    """As root, in a fresh network namespace (its unprivileged port floor is the default 1024,
    whatever the host's sysctl), with CAP_NET_BIND_SERVICE dropped from the bounding set."""
    cfg = manifests_config(1053, write_manifests(tmp_path / "c.yaml", NGINX_OBJS))
    cfg["servers"][0]["listen"] = "127.0.0.1:53"
    prefix = ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$@"', "sh",
              "setpriv", "--inh-caps=-all", "--bounding-set=-net_bind_service", "--"]
    rc, out, path = _run(cfg, tmp_path, prefix)
    assert rc == 1, out
    lines = cannot_listen_lines(out)
    assert len(lines) == 1, out
    assert lines[0].startswith(f"kubedns: cannot listen: {path}: servers[0].listen: 127.0.0.1:53: permission denied")
    assert "lacks the capability CAP_NET_BIND_SERVICE" in lines[0]


def _ttl(port: int) -> int:
    return query(port, "nginx.default.svc.cluster.local", timeout=1.0).answer[0].ttl


def test_busy_ports_on_reload_are_one_line_and_the_old_config_serves(kubedns_process, tmp_path: Path) -> None:
    port = free_port()
    m = write_manifests(tmp_path / "c.yaml", NGINX_OBJS)
    p = kubedns_process(manifests_config(port, m, ttl=5))
    p.wait_listening(port)
    busy_udp, busy_tcp = _busy(socket.SOCK_DGRAM), _busy(socket.SOCK_STREAM)
    bport, hport = busy_udp.getsockname()[1], busy_tcp.getsockname()[1]
    try:
        # a new DNS address that is taken
        p.write_config(manifests_config(port, m, ttl=23, port2=bport))
        p.signal(signal.SIGHUP)
        want = (f"kubedns: reload rejected, still serving the previous config: cannot listen: {p.config_path}: "
                f"servers[1].listen: 127.0.0.1:{bport}: address already in use")
        wait_for(lambda: want in p.log())
        assert _ttl(port) == 5
        # a new HTTP address that is taken
        p.write_config(manifests_config(port, m, ttl=23, extra={"prometheus": f"127.0.0.1:{hport}"}))
        p.signal(signal.SIGHUP)
        want = (f"kubedns: reload rejected, still serving the previous config: cannot listen: {p.config_path}: "
                f"servers[0].prometheus: 127.0.0.1:{hport}: address already in use")
        wait_for(lambda: want in p.log())
        r = query(port, "nginx.default.svc.cluster.local")
        assert r.rcode() == dns.rcode.NOERROR and r.answer[0].ttl == 5
    finally:
        busy_udp.close()
        busy_tcp.close()
    assert "Traceback" not in p.log()
    # once the ports are free the same file applies
    p.signal(signal.SIGHUP)
    wait_for(lambda: _ttl(port) == 23)
    assert http_get(hport, "/metrics")[0] == 200
