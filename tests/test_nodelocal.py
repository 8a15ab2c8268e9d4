"""Node-local cache mode (``--node-local``): the plan from the config, the service's ordering, and
the real thing inside a network namespace the test creates.

The namespace test runs conf/nodelocal.Corefile as shipped, with ``--node-local``, inside a fresh
namespace: the "cluster DNS" is a tests/dnsupstream.py server on the namespace's 127.0.0.2 (its
address given through KUBE_DNS_UPSTREAM_SERVICE_HOST, as Kubernetes gives it), the node's upstream
another one on 127.0.0.3:53, named by the /etc/netns/NAME/resolv.conf the test writes (``ip netns
exec`` mounts it on /etc/resolv.conf).  The test's own sockets are made inside the namespace
(pyroute2's pushns), so every packet stays in it; the host's interfaces and rules are never looked
at or touched.  A leftover interface and table, as a crash leaves them, are in place before start.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import dns.message
import dns.query
import dns.rdatatype
import pytest

from kubedns.config import load
from kubedns.node import netsetup
from kubedns.node.nodelocal import NodeLocalNetwork, NodeLocalPlan, plan
from tests.conftest import REPO, TWISTD, wait_for
from tests.dnsupstream import DNSUpstream

LOCAL_IP = "169.254.20.10"
COREFILE = REPO / "conf" / "nodelocal.Corefile"


# -- without root -------------------------------------------------------------------------------
def test_plan_takes_the_bind_addresses(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBE_DNS_UPSTREAM_SERVICE_HOST", "10.96.0.10")
    assert plan(load(str(COREFILE))) == NodeLocalPlan("nodelocaldns", (LOCAL_IP,), (53,))


def test_plan_refuses_a_wildcard_listener(tmp_path: Path) -> None:
    cfg = tmp_path / "Corefile"
    cfg.write_text(".:53 {\n    forward . 127.0.0.1\n}\n")
    with pytest.raises(ValueError, match="listens on every address"):
        plan(load(str(cfg)))
    cfg.write_text(".:53 {\n    bind 169.254.20.10 10.96.0.10\n    forward . 127.0.0.1\n}\n")
    assert plan(load(str(cfg)), "nl0").ips == (LOCAL_IP, "10.96.0.10")
    with pytest.raises(ValueError, match="interface name"):
        plan(load(str(cfg)), "a-name-far-too-long")


def test_rules_are_node_caches() -> None:
    text = [str(r) for r in netsetup.rules_for([LOCAL_IP], [53])]
    assert "raw-prerouting: ip daddr 169.254.20.10 udp dport 53 counter notrack" in text
    assert "raw-output: ip saddr 169.254.20.10 tcp sport 53 counter notrack" in text
    assert "filter-input: ip daddr 169.254.20.10 tcp dport 53 counter accept" in text
    assert "filter-output: ip saddr 169.254.20.10 udp sport 53 counter accept" in text
    assert len(text) == 10
    six = [str(r) for r in netsetup.rules_for(["fd00::10"], [53])]
    assert "raw-prerouting: ip6 daddr fd00::10 tcp dport 53 counter notrack" in six
    # the IPv6 addresses and the port are matched at their offsets in the headers
    (rule,) = [r for r in netsetup.rules_for(["fd00::10"], [5353]) if r.chain == "raw-prerouting" and r.proto == "udp"]
    loads = [e["attrs"][1][1]["attrs"] for e in netsetup._expressions(rule) if e["attrs"][0][1] == "payload"]
    assert [dict(x)["NFTA_PAYLOAD_OFFSET"] for x in loads] == [24, 2]  # ip6 daddr, udp dport


def test_network_up_before_listeners_and_down_after(tmp_path: Path) -> None:
    """The interface must exist when the listeners bind, and go only when the service stops."""
    from kubedns.service import build

    cfg = tmp_path / "Corefile"
    cfg.write_text(".:53 {\n    bind 127.0.0.1\n    forward . 127.0.0.1\n}\n")
    events: list[str] = []
    svc = build(load(str(cfg)))
    net = NodeLocalNetwork(plan(load(str(cfg))),
                           setup=lambda *a: events.append("setup"), teardown=lambda n: events.append("teardown"))
    svc.add_first(net)
    assert list(svc)[0] is net
    net.privilegedStartService()  # what MultiService does first, before the listeners' turn
    assert events == ["setup"] and net.installed
    net.stopService()
    net.stopService()  # idempotent
    assert events == ["setup", "teardown"]


def test_network_checked_and_repaired_while_serving() -> None:
    """As node-cache does: a flushed ruleset or a deleted interface is written again."""
    from twisted.internet.task import Clock

    clock = Clock()
    gone: list[str] = []
    setups: list[tuple[str, tuple[str, ...]]] = []
    net = NodeLocalNetwork(NodeLocalPlan("nodelocaldns", (LOCAL_IP,), (53,)), check_interval=60, reactor=clock,
                           setup=lambda n, ips, ports: setups.append((n, tuple(ips))),
                           teardown=lambda n: None, missing=lambda n, ips: list(gone))
    net.privilegedStartService()
    net.startService()
    clock.advance(60)
    assert len(setups) == 1 and net.repairs == 0  # all there: nothing done
    gone.append("table ip kubedns-nodelocal")
    clock.advance(60)
    assert len(setups) == 2 and net.repairs == 1
    net.stopService()
    clock.advance(600)
    assert len(setups) == 2  # no checks after stop


# -- in a network namespace -----------------------------------------------------------------------
needs_root = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None,
                                reason="needs root and iproute2 (ip netns) for a network namespace")


@contextlib.contextmanager
def inside(ns: str) -> Iterator[None]:
    """This thread in namespace ``ns`` (sockets made here stay in it), back out afterwards."""
    from pyroute2.netns import popns, pushns

    pushns(ns)
    try:
        yield
    finally:
        popns()


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=20)


@pytest.fixture
def node_netns() -> Iterator[str]:
    name = f"kubedns-nl-{os.getpid()}"
    etc = Path("/etc/netns") / name
    _ip("netns", "add", name)
    try:
        etc.mkdir(parents=True, exist_ok=True)
        (etc / "resolv.conf").write_text("nameserver 127.0.0.3\n")
        _ip("-n", name, "link", "set", "lo", "up")
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=20)
        shutil.rmtree(etc, ignore_errors=True)


def _query(ns: str, name: str) -> dns.message.Message:
    with inside(ns):
        return dns.query.udp(dns.message.make_query(name, "A"), LOCAL_IP, port=53, timeout=2)


def _addresses(msg: dns.message.Message) -> list[str]:
    return sorted(rd.address for rrset in msg.answer if rrset.rdtype == dns.rdatatype.A for rd in rrset)


@needs_root
@pytest.mark.timeout(90)
def test_node_local_in_a_namespace(node_netns: str, tmp_path: Path) -> None:
    ns = node_netns
    with inside(ns):
        cluster = DNSUpstream(host="127.0.0.2").start()
        upstream = DNSUpstream(host="127.0.0.3", port=53).start()
        # what a crash leaves behind: the interface, and our table with a rule for another port
        netsetup.setup("nodelocaldns", [LOCAL_IP], [5353])
    proc = None
    try:
        cluster.add("nginx.default.svc.cluster.local", "A", "10.96.0.100", ttl=30)
        upstream.add("example.org", "A", "192.0.2.7", ttl=300)
        log = open(tmp_path / "kubedns.log", "wb")
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, *TWISTD, "-n", "--pidfile=", "kubedns",
             "--config", str(COREFILE), "--node-local", "--node-local-check", "0.5"],
            cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
            env={**os.environ, "KUBE_DNS_UPSTREAM_SERVICE_HOST": f"127.0.0.2:{cluster.port}"},
        )

        def logtext() -> str:
            return (tmp_path / "kubedns.log").read_text()

        first = wait_for(lambda: _query(ns, "nginx.default.svc.cluster.local"), timeout=30)
        assert first is not None, logtext()
        assert _addresses(first) == ["10.96.0.100"]
        # the cluster zone went to the cluster DNS over TCP only (force_tcp), once
        assert cluster.count("nginx.default.svc.cluster.local", "A", transport="tcp") == 1
        assert cluster.count("nginx.default.svc.cluster.local", "A", transport="udp") == 0
        # the repeat is the cache's
        again = _query(ns, "nginx.default.svc.cluster.local")
        assert _addresses(again) == ["10.96.0.100"]
        assert cluster.count("nginx.default.svc.cluster.local", "A") == 1
        # other names: the node's resolv.conf upstream, not the cluster DNS
        ext = _query(ns, "example.org")
        assert _addresses(ext) == ["192.0.2.7"]
        assert upstream.count("example.org", "A") == 1
        assert cluster.count("example.org") == 0

        with inside(ns):
            assert netsetup.interface_addresses("nodelocaldns") is not None
            assert LOCAL_IP in (netsetup.interface_addresses("nodelocaldns") or [])
            counters = netsetup.rule_counters()
        assert len(counters) == 10, counters  # the stale 5353 rules were replaced, not kept
        # the queries went through the NOTRACK rules
        assert sum(v for k, v in counters.items() if "raw-prerouting" in k) >= 3, counters
        assert sum(v for k, v in counters.items() if "filter-input" in k) >= 3, counters

        if shutil.which("nft"):  # as the operator sees them (nftables installed by scripts/test)
            listed = subprocess.run(["ip", "netns", "exec", ns, "nft", "list", "table", "ip", netsetup.TABLE],
                                    capture_output=True, text=True, timeout=20, check=True).stdout
            assert "type filter hook prerouting priority raw" in listed
            assert f"ip daddr {LOCAL_IP} udp dport 53 counter packets" in listed
            assert f"ip saddr {LOCAL_IP} tcp sport 53 counter packets" in listed and "notrack" in listed
            assert "dport 5353" not in listed

        # someone flushes the ruleset: the next check writes it again
        with inside(ns):
            netsetup.remove_rules()
            assert wait_for(lambda: len(netsetup.rule_counters()) == 10, timeout=10), logtext()
        assert "table ip kubedns-nodelocal gone; setting up again" in logtext()

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) in (0, -signal.SIGTERM), logtext()  # twistd ends by its signal
        with inside(ns):
            assert netsetup.interface_addresses("nodelocaldns") is None
            assert netsetup.rule_counters() == {}
        assert "interface nodelocaldns and its rules removed" in logtext()
        if shutil.which("nft"):
            tables = subprocess.run(["ip", "netns", "exec", ns, "nft", "list", "tables"],
                                    capture_output=True, text=True, timeout=20, check=True).stdout
            assert netsetup.TABLE not in tables
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(10)
        cluster.stop()
        upstream.stop()


@needs_root
@pytest.mark.timeout(60)
def test_start_failure_is_one_line_and_leaves_nothing(node_netns: str, tmp_path: Path) -> None:
    """An interface of another kind under the name: exit 1 with one line, it is left alone."""
    ns = node_netns
    _ip("-n", ns, "link", "add", "nl-veth0", "type", "veth", "peer", "name", "nl-veth1")
    cfg = tmp_path / "Corefile"
    cfg.write_text(f".:53 {{\n    bind {LOCAL_IP}\n    forward . 127.0.0.3\n}}\n")
    r = subprocess.run(
        ["ip", "netns", "exec", ns, *TWISTD, "-n", "--pidfile=", "kubedns", "--config", str(cfg),
         "--node-local", "--node-local-interface", "nl-veth0"],
        cwd=REPO, capture_output=True, text=True, timeout=40,
    )
    assert r.returncode == 1, r.stdout + r.stderr
    assert "kubedns: cannot set up node-local networking: interface 'nl-veth0' exists and is of type veth" in r.stderr
    with inside(ns):
        assert netsetup.rule_counters() == {}
        assert netsetup.interface_addresses("nl-veth0") is not None  # not ours: left alone
