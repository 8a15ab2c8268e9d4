"""More operations tests against the real ``twistd kubedns`` process: reloads that touch the HTTP
endpoints or the ``reload`` key itself, a bad file under periodic reload, the process metrics and
the JSON query log on stdout.

Everything listens and is asked on 127.0.0.1 only.
"""

from __future__ import annotations

import signal
import socket
import time
from pathlib import Path
from typing import Any

import dns.rcode
import pytest

from tests.conftest import free_port, http_get, query
from tests.support.cluster import NGINX_OBJS, manifests_config, write_manifests
from tests.support.ops import metric
from tests.support.procs import poll_until

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(autouse=True)
def _no_proxies(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)


def _ttl(port: int) -> int | None:
    try:
        r = query(port, "nginx.default.svc.cluster.local", timeout=0.5)
    except Exception:
        return None
    return r.answer[0].ttl if r.rcode() == dns.rcode.NOERROR and r.answer else None


def _get(port: int, path: str) -> tuple[int, str] | None:
    """(status, body), or None when nothing listens there."""
    try:
        return http_get(port, path)
    except OSError:
        return None


def _scrape(port: int) -> str:
    got = _get(port, "/metrics")
    assert got is not None and got[0] == 200, got
    return got[1]


def _busy_tcp_port() -> socket.socket:
    """A listening TCP socket on 127.0.0.1 (its port cannot be bound by anyone else)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    return s


# -- reload and the HTTP endpoints --------------------------------------------------------------


def test_reload_moving_health_to_a_busy_port_is_rejected_as_a_whole(kubedns_process: Any, tmp_path: Path) -> None:
    port, hport, rport, mport = free_port(), free_port(), free_port(), free_port()
    m = write_manifests(tmp_path / "c.yaml", NGINX_OBJS)

    def cfg(ttl: int, health: int, prom: int, port2: int | None = None) -> dict:
        return manifests_config(port, m, ttl=ttl, port2=port2, extra={
            "health": {"listen": f"127.0.0.1:{health}", "lameduck": 0},
            "ready": f"127.0.0.1:{rport}", "prometheus": f"127.0.0.1:{prom}"})

    p = kubedns_process(cfg(5, hport, mport))
    p.wait_listening(port)
    assert poll_until(lambda: _get(hport, "/health") == (200, "OK")), p.log()
    assert metric(_scrape(mport), "coredns_reload_failed_total") == 0
    busy = _busy_tcp_port()
    try:
        # a DNS address is added, health and prometheus both move; health's new port is taken
        port2 = free_port()
        p.write_config(cfg(23, busy.getsockname()[1], free_port(), port2=port2))
        p.signal(signal.SIGHUP)
        assert poll_until(lambda: "reload rejected" in p.log()), p.log()
        line = next(ln for ln in p.log().splitlines() if "reload rejected" in ln)
        assert f"cannot listen: {p.config_path}: servers[0].health: 127.0.0.1:{busy.getsockname()[1]}: address already in use" in line, line
    finally:
        busy.close()
    assert _ttl(port) == 5 and _ttl(port2) is None  # the old config...
    assert _get(hport, "/health") == (200, "OK")  # ...and its HTTP listeners keep serving
    assert _get(rport, "/ready") == (200, "OK")
    assert metric(_scrape(mport), "coredns_reload_failed_total") == 1
    # a reload that can be applied moves the endpoints: new ports serve, old ones close
    hport2, mport2 = free_port(), free_port()
    p.write_config(cfg(9, hport2, mport2))
    p.signal(signal.SIGHUP)
    assert poll_until(lambda: _ttl(port) == 9), p.log()
    assert _get(hport2, "/health") == (200, "OK")
    assert "coredns_build_info" in _scrape(mport2)
    assert poll_until(lambda: _get(hport, "/health") is None and _get(mport, "/metrics") is None), p.log()
    assert _get(rport, "/ready") == (200, "OK")


# -- the reload key itself ----------------------------------------------------------------------


def test_reload_key_changes_take_effect_on_reload(kubedns_process: Any, tmp_path: Path) -> None:
    port = free_port()
    m = write_manifests(tmp_path / "c.yaml", NGINX_OBJS)
    p = kubedns_process(manifests_config(port, m, ttl=5))  # no periodic reload at first
    p.wait_listening(port)
    # adding `reload:` (by SIGHUP) starts the periodic check
    p.write_config(manifests_config(port, m, ttl=7, extra={"reload": "2s"}))
    p.signal(signal.SIGHUP)
    assert poll_until(lambda: _ttl(port) == 7), p.log()
    p.write_config(manifests_config(port, m, ttl=8, extra={"reload": "2s"}))
    assert poll_until(lambda: _ttl(port) == 8, timeout=8), p.log()
    # removing it stops the check: an edit waits for SIGHUP
    p.write_config(manifests_config(port, m, ttl=9))
    p.signal(signal.SIGHUP)
    assert poll_until(lambda: _ttl(port) == 9), p.log()
    p.write_config(manifests_config(port, m, ttl=10))
    time.sleep(5)
    assert _ttl(port) == 9, p.log()
    p.signal(signal.SIGHUP)
    assert poll_until(lambda: _ttl(port) == 10), p.log()


def test_reload_interval_change_takes_effect(kubedns_process: Any, tmp_path: Path) -> None:
    port = free_port()
    m = write_manifests(tmp_path / "c.yaml", NGINX_OBJS)
    p = kubedns_process(manifests_config(port, m, ttl=5, extra={"reload": "10m"}))
    p.wait_listening(port)
    p.write_config(manifests_config(port, m, ttl=6, extra={"reload": "2s"}))
    p.signal(signal.SIGHUP)
    assert poll_until(lambda: _ttl(port) == 6), p.log()
    p.write_config(manifests_config(port, m, ttl=7, extra={"reload": "2s"}))
    assert poll_until(lambda: _ttl(port) == 7, timeout=8), p.log()


def test_periodic_reload_counts_a_bad_file_once(kubedns_process: Any, tmp_path: Path) -> None:
    port, mport = free_port(), free_port()
    m = write_manifests(tmp_path / "c.yaml", NGINX_OBJS)
    extra = {"reload": "2s", "prometheus": f"127.0.0.1:{mport}"}
    p = kubedns_process(manifests_config(port, m, ttl=5, extra=extra))
    p.wait_listening(port)
    p.write_config("servers:\n  - kubernetes: {ttl: soon}\n")
    assert poll_until(lambda: "reload rejected" in p.log(), timeout=8), p.log()
    time.sleep(5)  # two more periodic checks of the same bad file
    assert p.log().count("reload rejected") == 1, p.log()
    assert metric(_scrape(mport), "coredns_reload_failed_total") == 1
    assert _ttl(port) == 5
    # SIGHUP is an explicit request: the same bad file is tried (logged, counted) again
    p.signal(signal.SIGHUP)
    assert poll_until(lambda: p.log().count("reload rejected") == 2), p.log()
    # another bad edit is a new failure; a later good edit still applies
    p.write_config("servers:\n  - kubernetes: {ttl: later}\n")
    assert poll_until(lambda: p.log().count("reload rejected") == 3, timeout=8), p.log()
    p.write_config(manifests_config(port, m, ttl=12, extra=extra))
    assert poll_until(lambda: _ttl(port) == 12, timeout=8), p.log()
    assert metric(_scrape(mport), "coredns_reload_failed_total") == 3
    assert p.log().count("reload rejected") == 3, p.log()


# -- process metrics ----------------------------------------------------------------------------


def test_process_metrics_are_scraped_like_corednss(kubedns_process: Any, tmp_path: Path) -> None:
    """process_* (and python_info, where CoreDNS has go_info) on a real scrape, of this process."""
    port, mport = free_port(), free_port()
    p = kubedns_process(manifests_config(port, write_manifests(tmp_path / "c.yaml", NGINX_OBJS), extra={"prometheus": f"127.0.0.1:{mport}"}))
    p.wait_listening(port)
    body = _scrape(mport)
    assert metric(body, "process_resident_memory_bytes") > 1_000_000
    assert metric(body, "process_virtual_memory_bytes") > 0
    assert metric(body, "process_cpu_seconds_total") > 0
    assert metric(body, "process_open_fds") >= 5  # stdio, epoll, DNS UDP/TCP, HTTP
    assert metric(body, "process_max_fds") > 0
    start = metric(body, "process_start_time_seconds")
    assert time.time() - 60 < start <= time.time()  # this process, started just now
    assert metric(body, "python_info") == 1
    assert "coredns_build_info" in body  # the CoreDNS metrics are still there


# -- JSON query log -----------------------------------------------------------------------------


def test_json_query_log_is_one_bare_object_per_line_on_the_stream() -> None:
    import io
    import json

    from twisted.logger import Logger

    from kubedns.config import parse
    from kubedns.ops.querylog import QueryLog
    from kubedns.serve.server import Block
    from tests.support.ops import query_info

    def block(fmt: str) -> Any:
        cfg = parse(f"servers: [{{zones: ['.'], listen: '127.0.0.1:53', forward: {{to: ['127.0.0.1:5300']}},"
                    f" log: {{format: {fmt}}}}}]")
        return Block(cfg.servers[0], None, chain=None, loop=None)

    class Disp:
        blocks = [block("json")]

    out, events = io.StringIO(), []
    qlog = QueryLog(Disp(), logger=Logger(observer=events.append), stream=out)
    qlog(query_info(zone=""))
    qlog(query_info(zone="", qname=b"b.example.org"))
    lines = out.getvalue().splitlines(keepends=True)
    assert len(lines) == 2 and all(ln.endswith("}\n") for ln in lines)
    assert [json.loads(ln)["name"] for ln in lines] == ["nginx.default.svc.cluster.local.", "b.example.org."]
    assert events == []  # not also through the text log
    Disp.blocks = [block("common")]  # the common format stays in the log
    qlog(query_info(zone=""))
    assert len(out.getvalue().splitlines()) == 2 and len(events) == 1


def test_worker_json_query_log_lines_pass_through_bare() -> None:
    """With ``workers: N`` the JSON lines of workers 1..N-1 reach stdout without a log prefix."""
    import io
    import json

    from kubedns.serve.workers import _WorkerProtocol

    proto = _WorkerProtocol(pool=None, index=1)  # type: ignore[arg-type]
    proto.out = io.StringIO()
    proto.childDataReceived(1, b'2026-11-28T00:00:00+0000 [kubedns] started\n{"name": "a.example.", "rc')
    proto.childDataReceived(1, b'ode": "NOERROR"}\n')
    lines = proto.out.getvalue().splitlines()
    assert len(lines) == 1 and json.loads(lines[0]) == {"name": "a.example.", "rcode": "NOERROR"}
