"""The ``acl`` plugin: CoreDNS's allow/block/filter/drop by client network and query type.

Config in both syntaxes (equal objects, errors naming file:line or the key), the policy walk of
CoreDNS's README examples as pure logic, the fast path never serving one client what another
client's policy produced, and a real ``twistd kubedns`` queried over UDP and TCP from different
source addresses on 127.0.0.0/8 (127.0.0.2 allowed, .3 blocked/filtered, .4 dropped).
"""

from __future__ import annotations

import ipaddress
import socket
from types import SimpleNamespace

import dns.edns
import dns.exception
import dns.message
import dns.query
import dns.rcode
import pytest
from twisted.names import dns as tdns

from kubedns.config import ConfigError, parse
from kubedns.configbase import Node
from kubedns.corefile import CorefileSyntaxError, parse_corefile_config
from kubedns.plugins.acl import AclPlugin, AclPolicy, parse_acl
from tests.conftest import free_port, http_get
from tests.support.cluster import NGINX_OBJS, write_manifests
from tests.support.ops import metric
from tests.support.policy import PluginDispatcher

COREFILE_ACL = """\
.:{port} {{
    prometheus 127.0.0.1:{metrics}
    acl cluster.local {{
        allow net 127.0.0.2
        drop net 127.0.0.4
        filter type AAAA net 127.0.0.3
    }}
    acl {{
        BLOCK TYPE A net 127.0.0.0/8
    }}
    kubernetes cluster.local {{
        manifests {manifests}
    }}
}}
"""


def _yaml_acl(port: int, manifests: str, metrics: int = 9153) -> dict:
    return {"servers": [{
        "zones": ["."], "listen": f"127.0.0.1:{port}", "prometheus": f"127.0.0.1:{metrics}",
        "kubernetes": {"zones": ["cluster.local"], "manifests": manifests},
        "acl": [
            {"action": "allow", "net": "127.0.0.2", "zones": ["cluster.local"]},
            {"action": "drop", "net": ["127.0.0.4"], "zones": ["cluster.local"]},
            {"action": "filter", "type": ["AAAA"], "net": ["127.0.0.3/32"], "zones": ["cluster.local"]},
            {"action": "block", "type": "A", "net": ["127.0.0.0/8"]},
        ],
    }]}


# -- config ---------------------------------------------------------------------------------------
def test_corefile_and_yaml_give_the_same_policies(tmp_path):
    import yaml

    manifests = write_manifests(tmp_path / "c.yaml", NGINX_OBJS)
    core = parse_corefile_config(COREFILE_ACL.format(port=1053, manifests=manifests, metrics=9153), "Corefile")
    yml = parse(yaml.safe_dump(_yaml_acl(1053, manifests)), str(tmp_path / "c.yaml"))
    assert core.servers[0].acl == yml.servers[0].acl
    assert core.servers[0].acl == (
        AclPolicy("allow", frozenset(), (ipaddress.ip_network("127.0.0.2/32"),), ("cluster.local",)),
        AclPolicy("drop", frozenset(), (ipaddress.ip_network("127.0.0.4/32"),), ("cluster.local",)),
        AclPolicy("filter", frozenset({tdns.AAAA}), (ipaddress.ip_network("127.0.0.3/32"),), ("cluster.local",)),
        AclPolicy("block", frozenset({tdns.A}), (ipaddress.ip_network("127.0.0.0/8"),), ()),
    )


def test_star_means_all_and_a_bare_acl_allows_everything():
    policies = parse_acl(Node([{"action": "block", "type": ["*", "A"], "net": ["*"]}, {"action": "filter"}], "x", "acl"))
    assert policies == (AclPolicy("block"), AclPolicy("filter"))
    assert parse_acl(Node(None, "x", "acl")) == ()
    core = parse_corefile_config(".:1053 {\n  acl\n  forward . 127.0.0.1\n}\n", "Corefile")
    assert core.servers[0].acl == ()


@pytest.mark.parametrize("line, expected", [
    ("deny net 10.0.0.0/8", "Corefile:3: acl: expected an action (allow, block, filter or drop), got 'deny'"),
    ("block type a", "Corefile:3: acl: block: type: expected a query type as CoreDNS spells it"),
    ("block net 10.0.0.0/33", 'Corefile:3: acl: block: net: expected a network in CIDR notation like "10.0.0.0/8"'),
    ("block net", "Corefile:3: acl: block: expected one or more values after 'net'"),
    ("block zone example.org", "Corefile:3: acl: block: expected 'type' or 'net', got 'zone'"),
])
def test_corefile_errors_name_the_line(line, expected):
    text = f".:1053 {{\n  acl {{\n    {line}\n  }}\n  forward . 127.0.0.1\n}}\n"
    with pytest.raises(CorefileSyntaxError) as e:
        parse_corefile_config(text, "Corefile")
    assert str(e.value).startswith(expected), str(e.value)


@pytest.mark.parametrize("acl, key, expected", [
    ([{"action": "deny"}], "servers[0].acl[0].action", "one of allow | block | filter | drop"),
    ([{"action": "block", "type": ["BOGUS"]}], "servers[0].acl[0].type[0]", "a query type"),
    ([{"action": "block", "net": ["300.0.0.0/8"]}], "servers[0].acl[0].net[0]", "a network"),
    ([{"action": "block", "port": 53}], "servers[0].acl[0].port", "one of the keys action, net, type, zones"),
    ({"action": "block"}, "servers[0].acl", "a list"),
])
def test_yaml_errors_name_the_key(acl, key, expected):
    import yaml

    text = yaml.safe_dump({"servers": [{"forward": {"to": ["127.0.0.1"]}, "acl": acl}]})
    with pytest.raises(ConfigError) as e:
        parse(text, "c.yaml")
    assert f"c.yaml: {key}: expected {expected}" in str(e.value)


# -- the policy walk (CoreDNS's README examples) --------------------------------------------------
def _decide(plugin: AclPlugin, client: str, name: str = "www.example.org", qtype: int = tdns.A) -> str:
    req = SimpleNamespace(q=SimpleNamespace(qtype=qtype), lname=name, peer=(client, 5353))
    return plugin.decide(req)  # type: ignore[arg-type]


def _plugin(policies: list[dict], zones: tuple[str, ...] = ("",)) -> AclPlugin:
    return AclPlugin(parse_acl(Node(policies, "x", "acl")), zones)


def test_first_matching_policy_decides_and_allow_stops_the_walk():
    p = _plugin([{"action": "allow", "net": "192.168.1.0/24"}, {"action": "block", "net": "192.168.0.0/16"}])
    assert _decide(p, "192.168.1.7") == "allow"
    assert _decide(p, "192.168.2.7") == "block"
    assert _decide(p, "10.0.0.1") == "allow"  # nothing matched: allowed
    only = _plugin([{"action": "allow", "net": ["192.168.0.0/24", "192.168.1.0/24"]}, {"action": "block"}])
    assert _decide(only, "192.168.1.9") == "allow"
    assert _decide(only, "10.1.1.1") == "block"
    assert _decide(only, "::1") == "block"


def test_types_zones_and_ipv4_mapped_sources():
    p = _plugin([{"action": "filter", "type": ["A"], "net": "192.168.0.0/16"}])
    assert _decide(p, "192.168.3.3", qtype=tdns.A) == "filter"
    assert _decide(p, "192.168.3.3", qtype=tdns.AAAA) == "allow"
    assert _decide(p, "::ffff:192.168.3.3", qtype=tdns.A) == "filter"  # Go's iptree reads it as IPv4
    zoned = _plugin([{"action": "block", "net": "192.168.1.0/24", "zones": ["a.example.org"]}], ("example.org",))
    assert _decide(zoned, "192.168.1.1", "a.example.org") == "block"
    assert _decide(zoned, "192.168.1.1", "x.a.example.org") == "block"
    assert _decide(zoned, "192.168.1.1", "b.example.org") == "allow"
    six = _plugin([{"action": "drop", "net": "fd00::/8"}])
    assert _decide(six, "fd00::5") == "drop"
    assert _decide(six, "10.0.0.5") == "allow"


# -- the fast path ------------------------------------------------------------------------------
ACL = ({"action": "allow", "net": "127.0.0.2"}, {"action": "block", "net": "127.0.0.0/8"})


def test_an_answer_for_one_client_is_never_served_to_another_from_the_fast_path():
    d = PluginDispatcher(acl=parse_acl(Node(list(ACL), "x", "acl")))
    name = "nginx.default.svc.cluster.local"
    for _ in range(3):
        ok = dns.message.from_wire(d.send(name, client="127.0.0.2"))
        assert ok.rcode() == dns.rcode.NOERROR and ok.answer
        blocked = dns.message.from_wire(d.send(name, client="127.0.0.3"))
        assert blocked.rcode() == dns.rcode.REFUSED and not blocked.answer
    assert d.hits() == 0 and not d.disp.fast.entries  # nothing kept: the client decides


def test_client_independent_policies_keep_the_fast_path_byte_for_byte():
    d = PluginDispatcher(acl=parse_acl(Node([{"action": "block", "type": "TXT"}], "x", "acl")))
    first = d.send("dns-version.cluster.local", "TXT", qid=1, use_edns=0)
    again = d.send("dns-version.cluster.local", "TXT", qid=2, use_edns=0)
    assert d.hits() == 1 and again[2:] == first[2:]
    msg = dns.message.from_wire(again)
    assert msg.rcode() == dns.rcode.REFUSED and [e.code for e in msg.extended_errors()] == [dns.edns.EDECode.BLOCKED]
    a1 = d.send("nginx.default.svc.cluster.local", qid=3)
    a2 = d.send("nginx.default.svc.cluster.local", qid=4)
    assert d.hits() == 2 and a1[2:] == a2[2:]


def test_drop_sends_nothing_and_filter_is_an_empty_noerror():
    d = PluginDispatcher(acl=parse_acl(Node([{"action": "drop", "type": "MX"}, {"action": "filter", "type": "AAAA"}],
                                            "x", "acl")))
    assert d.send("nginx.default.svc.cluster.local", "MX") is None
    filtered = dns.message.from_wire(d.send("dual.default.svc.cluster.local", "AAAA", use_edns=0))
    assert filtered.rcode() == dns.rcode.NOERROR and not filtered.answer and not filtered.authority
    assert [e.code for e in filtered.extended_errors()] == [dns.edns.EDECode.FILTERED]
    assert not filtered.flags & dns.flags.AA
    bare = dns.message.from_wire(d.send("dual.default.svc.cluster.local", "AAAA"))
    assert bare.edns < 0  # no OPT asked, none sent (RFC 6891), so no EDE


# -- a running server ---------------------------------------------------------------------------
def _ask(port: int, source: str, name: str, rdtype: str = "A", tcp: bool = False, **kw) -> dns.message.Message:
    q = dns.message.make_query(name, rdtype, **kw)
    if tcp:
        return dns.query.tcp(q, "127.0.0.1", port=port, timeout=3, source=source)
    return dns.query.udp(q, "127.0.0.1", port=port, timeout=3, source=source)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("syntax", ["yaml", "corefile"])
def test_server_applies_policies_by_source_address(kubedns_process, tmp_path, syntax):
    manifests = write_manifests(tmp_path / "cluster.yaml", NGINX_OBJS)
    port, metrics = free_port(), free_port()
    config = (_yaml_acl(port, manifests, metrics) if syntax == "yaml"
              else COREFILE_ACL.format(port=port, manifests=manifests, metrics=metrics))
    p = kubedns_process(config)
    name = "nginx.default.svc.cluster.local"

    def ready() -> bool:
        try:
            return bool(_ask(port, "127.0.0.2", name).answer)
        except (dns.exception.Timeout, OSError):
            return False

    from tests.conftest import wait_for

    try:
        wait_for(ready, 20)
    except AssertionError:
        raise AssertionError(p.log()) from None
    for _ in range(3):  # repeated: the fast path must not hand .2's answer to .3, nor .3's to .2
        for tcp in (False, True):
            ok = _ask(port, "127.0.0.2", name, tcp=tcp)
            assert ok.rcode() == dns.rcode.NOERROR and [str(r) for rr in ok.answer for r in rr] == ["10.96.0.100"]
            blocked = _ask(port, "127.0.0.3", name, tcp=tcp, use_edns=0)
            assert blocked.rcode() == dns.rcode.REFUSED and not blocked.answer
            assert [e.code for e in blocked.extended_errors()] == [dns.edns.EDECode.BLOCKED]
    filtered = _ask(port, "127.0.0.3", name, "AAAA", use_edns=0)
    assert filtered.rcode() == dns.rcode.NOERROR and not filtered.answer
    assert [e.code for e in filtered.extended_errors()] == [dns.edns.EDECode.FILTERED]
    assert _ask(port, "127.0.0.3", "dns-version.cluster.local", "TXT").answer  # matched by nothing: allowed
    assert _ask(port, "127.0.0.5", name).rcode() == dns.rcode.REFUSED  # 127.0.0.0/8
    with pytest.raises(dns.exception.Timeout):
        _ask(port, "127.0.0.4", name)
    s = socket.create_connection(("127.0.0.1", port), source_address=("127.0.0.4", 0), timeout=3)
    try:  # dropped over TCP too: no answer, the connection stays open until the idle timeout
        q = dns.message.make_query(name, "A").to_wire()
        s.sendall(len(q).to_bytes(2, "big") + q)
        s.settimeout(1.0)
        with pytest.raises(TimeoutError):
            s.recv(2)
    finally:
        s.close()
    assert _ask(port, "127.0.0.2", name).answer  # still answering

    # CoreDNS's acl metrics: blocked/filtered/dropped by the zone of the line that matched
    _, text = http_get(metrics, "/metrics")
    assert metric(text, "coredns_acl_blocked_requests_total", zone=".", view="") == 7  # 6 from .3, 1 from .5
    assert metric(text, "coredns_acl_filtered_requests_total", zone="cluster.local.") == 1
    assert metric(text, "coredns_acl_dropped_requests_total", zone="cluster.local.") == 2  # UDP and TCP
    assert metric(text, "coredns_acl_allowed_requests_total", view="") >= 8


@pytest.mark.timeout(90)
def test_dropped_queries_are_counted_as_coredns_counts_them(kubedns_process, tmp_path):
    """CoreDNS's prometheus and log run before acl: a dropped query is in coredns_dns_requests_total
    and coredns_dns_responses_total (NOERROR, no plugin, a 0-byte response) besides
    coredns_acl_dropped_requests_total, and in the query log.  Real UDP queries, /metrics over HTTP."""
    from tests.conftest import wait_for

    manifests = write_manifests(tmp_path / "cluster.yaml", NGINX_OBJS)
    port, metrics = free_port(), free_port()
    config = _yaml_acl(port, manifests, metrics)
    config["servers"][0]["log"] = None
    p = kubedns_process(config)
    name = "nginx.default.svc.cluster.local"
    try:
        wait_for(lambda: _ask(port, "127.0.0.2", name).answer, 20)
    except AssertionError:
        raise AssertionError(p.log()) from None
    server = f"dns://127.0.0.1:{port}"

    def scrape() -> dict[str, float]:
        text = http_get(metrics, "/metrics")[1]
        return {
            "dropped": metric(text, "coredns_acl_dropped_requests_total", server=server, zone="cluster.local."),
            "requests": metric(text, "coredns_dns_requests_total", server=server, zone=".", proto="udp", type="A"),
            "noerror": metric(text, "coredns_dns_responses_total", server=server, zone=".", rcode="NOERROR", plugin=""),
            "sizes": metric(text, "coredns_dns_response_size_bytes_count", server=server, zone=".", proto="udp"),
            "bytes": metric(text, "coredns_dns_response_size_bytes_sum", server=server, zone=".", proto="udp"),
        }

    before = scrape()  # the allowed queries so far are in zone cluster.local. (the kubernetes plugin's)
    assert before["dropped"] == 0
    for _ in range(3):
        with pytest.raises(dns.exception.Timeout):
            dns.query.udp(dns.message.make_query(name, "A"), "127.0.0.1", port=port, timeout=0.5, source="127.0.0.4")
    after = wait_for(lambda: (s := scrape())["dropped"] == 3 and s, 10)
    assert {k: after[k] - before[k] for k in after} == {"dropped": 3, "requests": 3, "noerror": 3, "sizes": 3, "bytes": 0}
    log = wait_for(lambda: (t := p.log()).count("127.0.0.4:") >= 3 and t, 10)
    assert all(f"{name}." in ln for ln in log.splitlines() if "127.0.0.4:" in ln)
