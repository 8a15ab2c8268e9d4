"""Every address: a Corefile block without ``bind`` and YAML's ``listen: ":PORT"`` are one thing.

Both mean what CoreDNS's ``.:53`` means, every address of the host, IPv4 and IPv6, so both give
the same :class:`~kubedns.config.ServerBlock` (host ``""``) and the same sockets: ``0.0.0.0`` and,
where the host has IPv6, ``::`` (IPv6 only, so an IPv4 client keeps its own address rather than
``::ffff:...``).  ``0.0.0.0`` written out (``bind 0.0.0.0``) stays every IPv4 address only.  The
running-server test queries a real ``twistd kubedns`` on 127.0.0.1, 127.0.0.3 and ::1.
"""

from __future__ import annotations

import socket

import dns.message
import dns.query
import dns.rcode
import pytest
import yaml

from kubedns.config import parse
from kubedns.configbase import Address
from kubedns.corefile import parse_corefile_config
from tests.conftest import cannot_listen_lines, free_port, run_to_exit, wait_for
from tests.support.cluster import NGINX_OBJS, write_manifests

COREFILE = """\
.{port} {{
    log
    forward . 127.0.0.1:5300
    kubernetes cluster.local {{
        manifests {manifests}
    }}
}}
"""


def _yaml(listen: str | None, manifests: str) -> str:
    block = {"zones": ["."], **({"listen": listen} if listen is not None else {}), "log": None,
             "forward": {"to": ["127.0.0.1:5300"]},
             "kubernetes": {"zones": ["cluster.local"], "manifests": manifests}}
    return yaml.safe_dump({"servers": [block]})


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.parametrize(("corefile_port", "yaml_listen", "port"), [
    (":1053", ":1053", 1053),
    ("", None, 53),  # neither says an address or a port: both are every address, port 53
    (":1053", "[::]:1053", None),  # "::" is one IPv6 address, not "every address"
])
def test_corefile_without_bind_and_yaml_every_address_give_equal_blocks(tmp_path, corefile_port, yaml_listen, port):
    manifests = write_manifests(tmp_path / "cluster.yaml", NGINX_OBJS)
    core = parse_corefile_config(COREFILE.format(port=corefile_port, manifests=manifests), "Corefile")
    yml = parse(_yaml(yaml_listen, manifests), "kubedns.yaml")
    if port is None:
        assert core.servers[0] != yml.servers[0] and yml.servers[0].listen == Address("::", 1053)
        return
    assert core.servers == yml.servers
    assert core.servers[0].listen == Address("", port)
    assert list(core.listeners()) == list(yml.listeners()) == [Address("", port)]


def test_bind_0_0_0_0_is_yaml_0_0_0_0_not_every_address(tmp_path):
    manifests = write_manifests(tmp_path / "cluster.yaml", NGINX_OBJS)
    text = COREFILE.format(port=":1053", manifests=manifests).replace("    log\n", "    log\n    bind 0.0.0.0\n")
    core = parse_corefile_config(text, "Corefile")
    assert core.servers == parse(_yaml("0.0.0.0:1053", manifests), "kubedns.yaml").servers
    assert core.servers[0].listen == Address("0.0.0.0", 1053) != parse(_yaml(":1053", manifests)).servers[0].listen


def _ask(host: str, port: int, tcp: bool, source: str | None = None) -> dns.message.Message:
    q = dns.message.make_query("nginx.default.svc.cluster.local", "A")
    if tcp:
        return dns.query.tcp(q, host, port=port, timeout=3, source=source)
    return dns.query.udp(q, host, port=port, timeout=3, source=source)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("syntax", ["corefile", "yaml"])
def test_every_address_answers_on_ipv4_and_ipv6_loopback(kubedns_process, tmp_path, syntax):
    manifests = write_manifests(tmp_path / "cluster.yaml", NGINX_OBJS)
    v6 = _ipv6_loopback()
    port = next(p for p in iter(free_port, None) if not v6 or _free_v6(p))
    config = (COREFILE.format(port=f":{port}", manifests=manifests) if syntax == "corefile"
              else _yaml(f":{port}", manifests))
    p = kubedns_process(config)
    try:
        wait_for(lambda: _ask("127.0.0.1", port, False).answer, 20)
    except AssertionError:
        raise AssertionError(p.log()) from None
    # (server address, client address, TCP): UDP only to 127.0.0.1, as a UDP answer leaves a
    # wildcard socket from the address the kernel picks for the client (127.0.0.1 on lo)
    asks = [("127.0.0.1", "127.0.0.2", False), ("127.0.0.1", "127.0.0.2", True), ("127.0.0.3", None, True)]
    if v6:
        asks += [("::1", None, False), ("::1", None, True)]
    for host, source, tcp in asks:
        r = _ask(host, port, tcp, source)
        assert r.rcode() == dns.rcode.NOERROR, (host, tcp)
        assert [str(rr) for rrset in r.answer for rr in rrset] == ["10.96.0.100"], (host, tcp)
    # the log plugin names each client as it is: an IPv4 client is not seen as ::ffff:127.0.0.2
    log = wait_for(lambda: (t := p.log()).count("nginx.default.svc.cluster.local.") > len(asks) and t, 10)
    assert "127.0.0.2:" in log and "::ffff:" not in log
    if v6:
        assert "[::1]:" in log


def _free_v6(port: int) -> bool:
    """``port`` is free on ``::`` too (UDP and TCP), so the IPv6 half of every address can bind."""
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        with socket.socket(socket.AF_INET6, kind) as s:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                s.bind(("::", port))
            except OSError:
                return False
    return True


@pytest.mark.timeout(90)
def test_every_address_with_two_workers_answers_on_both_families(kubedns_process, tmp_path):
    """``workers: 2``: the sockets are made by hand with SO_REUSEPORT, the IPv6 half too."""
    manifests = write_manifests(tmp_path / "cluster.yaml", NGINX_OBJS)
    v6 = _ipv6_loopback()
    port = next(p for p in iter(free_port, None) if not v6 or _free_v6(p))
    config = yaml.safe_load(_yaml(f":{port}", manifests)) | {"workers": 2}
    p = kubedns_process(config)
    try:
        wait_for(lambda: "worker 1 listening on UDP" in p.log() and _ask("127.0.0.1", port, False).answer, 30)
    except AssertionError:
        raise AssertionError(p.log()) from None
    for host in ["127.0.0.1"] + (["::1"] if v6 else []):
        for i in range(20):  # fresh source ports: the kernel spreads them over both workers' sockets
            r = _ask(host, port, i % 4 == 0)
            assert [str(rr) for rrset in r.answer for rr in rrset] == ["10.96.0.100"], (host, i)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("workers", [1, 2])
def test_busy_ipv6_half_of_every_address_is_one_line_and_exit_1(tmp_path, workers):
    """Port free on IPv4 but taken on IPv6: no half-listening server, one line naming ``[::]``."""
    if not _ipv6_loopback():
        pytest.skip("no IPv6 on this host")
    busy = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    busy.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    port = next(p for p in iter(free_port, None) if _free_v6(p))
    busy.bind(("::", port))
    path = tmp_path / "x.yaml"
    config = yaml.safe_load(_yaml(f":{port}", write_manifests(tmp_path / "cluster.yaml", NGINX_OBJS)))
    path.write_text(yaml.safe_dump(config | {"workers": workers}))
    try:
        rc, out = run_to_exit(path, timeout=45)
    finally:
        busy.close()
    assert rc == 1, out
    assert cannot_listen_lines(out) == [
        f"kubedns: cannot listen: {path}: servers[0].listen: :{port}: [::]:{port}: address already in use"], out
