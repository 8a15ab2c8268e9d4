"""Every address on both families, beyond the DNS sockets themselves.

A block without ``bind`` (``.:53``, YAML ``:53``) listens on ``0.0.0.0`` and an IPv6-only ``::``
(tests/test_listen_address.py).  Here, against a real ``twistd kubedns`` over real sockets: the
start-up log names both sockets; a host-less HTTP address (``health :8080``) answers over
127.0.0.1 and ::1, and a taken IPv6 half is one line and exit 1; and fast-path hits that came in
over IPv6 count as ``family="2"`` in /metrics though the server label (``dns://:PORT``) reads as
IPv4.  The IPv6 parts skip where the host's loopback has no IPv6.
"""

from __future__ import annotations

import signal
import socket
import urllib.request
from typing import Any

import dns.message
import dns.query
import pytest
import yaml

from tests.conftest import cannot_listen_lines, free_port, run_to_exit, wait_for
from tests.support.cluster import NGINX_OBJS, write_manifests
from tests.support.ops import metric

NAME = "nginx.default.svc.cluster.local."


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


needs_ipv6 = pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 on this host's loopback")


def _free_both(port: int, kinds: tuple[socket.SocketKind, ...] = (socket.SOCK_DGRAM, socket.SOCK_STREAM)) -> bool:
    """``port`` is free on ``0.0.0.0`` and on ``::`` (IPv6 only) for each of ``kinds``."""
    for family, host in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
        for kind in kinds:
            with socket.socket(family, kind) as s:
                if family == socket.AF_INET6:
                    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                try:
                    s.bind((host, port))
                except OSError:
                    return False
    return True


def _port(kinds: tuple[socket.SocketKind, ...] = (socket.SOCK_DGRAM, socket.SOCK_STREAM)) -> int:
    return next(p for p in iter(free_port, None) if _free_both(p, kinds))


def _config(tmp_path: Any, port: int, **extra: Any) -> dict[str, Any]:
    manifests = write_manifests(tmp_path / "cluster.yaml", NGINX_OBJS)
    return {"servers": [{"zones": ["."], "listen": f":{port}",
                         "forward": {"to": ["127.0.0.1:5300"]},  # never asked: cluster names only
                         "kubernetes": {"zones": ["cluster.local"], "manifests": manifests}, **extra}]}


_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never through a proxy


def _get(host: str, port: int, path: str) -> tuple[int, str]:
    with _HTTP.open(f"http://{host}:{port}{path}", timeout=3) as r:
        return r.status, r.read().decode()


def _ask(host: str, port: int) -> dns.message.Message:
    return dns.query.udp(dns.message.make_query(NAME, "A"), host, port=port, timeout=3)


@pytest.mark.timeout(90)
def test_startup_log_names_every_socket_bound(kubedns_process, tmp_path):
    """DNS: UDP and TCP on ``0.0.0.0`` and ``[::]``; HTTP (``health :P``): both too."""
    v6 = _ipv6_loopback()
    port, hport = _port(), _port((socket.SOCK_STREAM,))
    p = kubedns_process(_config(tmp_path, port, health={"listen": f":{hport}", "lameduck": 0}))
    want = [f"listening on UDP 0.0.0.0:{port}", f"listening on TCP 0.0.0.0:{port}", f"/health on http://0.0.0.0:{hport}"]
    if v6:
        want += [f"listening on UDP [::]:{port}", f"listening on TCP [::]:{port}", f"/health on http://[::]:{hport}"]
    try:
        wait_for(lambda: all(w in p.log() for w in want), 20)
    except AssertionError:
        raise AssertionError(p.log()) from None


@needs_ipv6
@pytest.mark.timeout(90)
def test_hostless_health_answers_over_ipv4_and_ipv6(kubedns_process, tmp_path):
    """``health :P`` (CoreDNS's default form) is every address of both families."""
    port, hport = _port(), _port((socket.SOCK_STREAM,))
    p = kubedns_process(_config(tmp_path, port, health={"listen": f":{hport}", "lameduck": 0}))
    try:
        assert wait_for(lambda: _get("127.0.0.1", hport, "/health"), 20) == (200, "OK")
    except AssertionError:
        raise AssertionError(p.log()) from None
    assert _get("[::1]", hport, "/health") == (200, "OK")
    # the IPv6 client is seen as itself: the socket is IPv6-only, not a mapped dual-stack one
    with socket.create_connection(("::1", hport), timeout=3) as c:
        assert c.family == socket.AF_INET6


def test_written_out_0_0_0_0_health_stays_ipv4_only(kubedns_process, tmp_path):
    """``0.0.0.0:P`` is every IPv4 address only (as ``bind 0.0.0.0``): nothing on ``::``."""
    port, hport = _port(), _port((socket.SOCK_STREAM,))
    p = kubedns_process(_config(tmp_path, port, health={"listen": f"0.0.0.0:{hport}", "lameduck": 0}))
    try:
        assert wait_for(lambda: _get("127.0.0.1", hport, "/health"), 20) == (200, "OK")
    except AssertionError:
        raise AssertionError(p.log()) from None
    if _ipv6_loopback():
        with pytest.raises(OSError):
            _get("[::1]", hport, "/health")


@needs_ipv6
@pytest.mark.timeout(60)
def test_busy_ipv6_half_of_hostless_health_is_one_line_and_exit_1(tmp_path):
    port, hport = _port(), _port((socket.SOCK_STREAM,))
    busy = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    busy.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    busy.bind(("::", hport))
    busy.listen(1)
    path = tmp_path / "x.yaml"
    path.write_text(yaml.safe_dump(_config(tmp_path, port, health={"listen": f":{hport}", "lameduck": 0})))
    try:
        rc, out = run_to_exit(path, timeout=45)
    finally:
        busy.close()
    assert rc == 1, out
    assert cannot_listen_lines(out) == [
        f"kubedns: cannot listen: {path}: servers[0].health: :{hport}: [::]:{hport}: address already in use"], out


@needs_ipv6
@pytest.mark.timeout(90)
def test_fast_path_hits_count_in_the_family_they_came_in_on(kubedns_process, tmp_path):
    """7 queries over 127.0.0.1 and 5 over ::1 (all but the first answered by the fast path):
    /metrics counts exactly 7 in family 1 and 5 in family 2."""
    port, mport = _port(), _port((socket.SOCK_STREAM,))
    p = kubedns_process(_config(tmp_path, port, prometheus=f"127.0.0.1:{mport}"))
    try:
        wait_for(lambda: _ask("127.0.0.1", port).answer, 20)
    except AssertionError:
        raise AssertionError(p.log()) from None
    scrape = lambda: _get("127.0.0.1", mport, "/metrics")[1]  # noqa: E731
    base = {f: metric(scrape(), "coredns_dns_requests_total", family=f, type="A") for f in ("1", "2")}
    for host, n in (("127.0.0.1", 7), ("::1", 5), ("127.0.0.1", 0)):
        for _ in range(n):
            r = _ask(host, port)
            assert [str(rr) for rrset in r.answer for rr in rrset] == ["10.96.0.100"], host
    text = scrape()
    got = {f: metric(text, "coredns_dns_requests_total", family=f, type="A") - base[f] for f in ("1", "2")}
    assert got == {"1": 7, "2": 5}, text
    # every query counted once, whichever path answered it
    assert metric(text, "coredns_dns_requests_total", proto="udp", type="A") - sum(base.values()) == 12


@needs_ipv6
@pytest.mark.timeout(90)
def test_ipv6_fast_path_hits_keep_their_family_across_reloads(kubedns_process, tmp_path):
    """A reload that keeps the address (the fast path is emptied) and one that moves it (the
    dispatcher is dropped): the IPv6 hits counted before are still family 2, not lost or 1."""
    port, mport = _port(), _port((socket.SOCK_STREAM,))
    cfg = _config(tmp_path, port, prometheus=f"127.0.0.1:{mport}")
    p = kubedns_process(cfg)
    try:
        wait_for(lambda: _ask("127.0.0.1", port).answer, 20)
    except AssertionError:
        raise AssertionError(p.log()) from None

    def counts() -> dict[str, float]:
        text = _get("127.0.0.1", mport, "/metrics")[1]
        return {f: metric(text, "coredns_dns_requests_total", family=f, type="A") for f in ("1", "2")}

    base = counts()
    for host, n in (("127.0.0.1", 3), ("::1", 4)):
        for _ in range(n):
            assert _ask(host, port).answer, host
    want = {"1": base["1"] + 3, "2": base["2"] + 4}
    assert counts() == want
    for new_port in (port, _port()):  # same address (ttl changed), then a new one
        cfg["servers"][0]["listen"] = f":{new_port}"
        cfg["servers"][0]["kubernetes"]["ttl"] = 7 if new_port == port else 9
        p.write_config(cfg)
        p.signal(signal.SIGHUP)
        try:
            wait_for(lambda np=new_port: _ask("127.0.0.1", np).answer[0].ttl in (7, 9), 20)
        except AssertionError:
            raise AssertionError(p.log()) from None
        got = counts()  # family 1 also has the queries that waited for the reload
        assert got["2"] == want["2"] and got["1"] > want["1"], (got, want)


def test_fast_cache_keeps_ipv6_hits_apart_when_entries_are_dropped():
    """Pure logic: an entry's IPv6 slot folds into ``retired6``, its own into ``retired``."""
    from kubedns.serve.fastcache import FastCache
    from tests.support.ops import query_info

    fast = FastCache()
    q = dns.message.make_query(NAME, "A")
    packet = q.to_wire()
    answer = dns.message.make_response(q).to_wire()
    fast.remember(packet, answer, query_info(server="dns://:53"), deps=("x",))
    entry = fast.entries[packet[2:]]
    entry[1] += 2
    entry[5] += 3
    assert fast.live() == [(fast.live()[0][0], 2)] and fast.live(ipv6=True)[0][1] == 3
    fast.clear()
    assert fast.retired.values() == [2] and fast.retired6.values() == [3] and fast.hits() == 5
