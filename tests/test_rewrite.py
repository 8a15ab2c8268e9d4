"""The ``rewrite`` plugin: CoreDNS's rules as table tests, then a real server over UDP.

The table tests run :class:`~kubedns.plugins.rewrite.RewritePlugin` in front of a recording
``next`` (what the rest of the chain was asked, and an answer for exactly that), then a
Dispatcher over the record table's store (the cluster answers a rewritten name; fast-path bytes
equal slow-path bytes).  The process tests start ``twistd kubedns`` on a manifests cluster with
``forward`` to a tests/dnsupstream.py server on 127.0.0.x (nothing leaves loopback), and ask it
over real UDP: an external name served from an in-cluster Service (the answer's names are the
client's), a zone renamed (cluster and upstream answers renamed back), in YAML and as a Corefile.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import dns.message
import dns.rcode
import dns.rdatatype
import pytest
from twisted.internet import defer, task
from twisted.names import dns as tdns

from kubedns.config import KubernetesConfig, ServerBlock, parse_data
from kubedns.configbase import Address, ConfigError, Node
from kubedns.corefile import CorefileSyntaxError, parse_corefile_config
from kubedns.dns.query import Request
from kubedns.dns.records import Answer, ClusterZones
from kubedns.dns.wire import parse_question
from kubedns.k8s import objects
from kubedns.k8s.store import Store
from kubedns.plugins.base import Reply
from kubedns.plugins.rewrite import RewritePlugin, parse_rewrite_config, rule_from_words
from kubedns.serve.protocols import DNSDatagramProtocol
from kubedns.serve.server import Block, Dispatcher
from tests.conftest import KubeDNSProcess, free_port, query, rrset_text
from tests.dnsupstream import DNSUpstream
from tests.support import kubeobj
from tests.support.cluster import write_manifests
from tests.support.dispatch import CapturingTransport
from tests.support.records_table import fill

# -- the rules as CoreDNS's words ------------------------------------------------------------------


@pytest.mark.parametrize("words,expected", [
    ("name a.example b.example", {"mode": "stop", "name": {"match": "exact", "from": "a.example", "to": "b.example"}}),
    ("continue name suffix .a. .b. answer auto",
     {"mode": "continue", "name": {"match": "suffix", "from": ".a.", "to": ".b.", "answer": ["auto"]}}),
    ("stop name regex (.*)-x\\.a {1}.b answer name (.*)\\.b {1}-x.a value (.*)\\.c {1}.d",
     {"mode": "stop", "name": {"match": "regex", "from": "(.*)-x\\.a", "to": "{1}.b",
                               "answer": [{"name": ["(.*)\\.b", "{1}-x.a"]}, {"value": ["(.*)\\.c", "{1}.d"]}]}}),
    ("type ANY HINFO", {"mode": "stop", "type": {"from": "ANY", "to": "HINFO"}}),
    ("class CH IN", {"mode": "stop", "class": {"from": "CH", "to": "IN"}}),
    ("ttl example.com 30-300", {"mode": "stop", "ttl": {"match": "exact", "from": "example.com", "ttl": "30-300"}}),
    ("continue ttl regex (.*)\\.example 15",
     {"mode": "continue", "ttl": {"match": "regex", "from": "(.*)\\.example", "ttl": "15"}}),
])
def test_rule_words(words, expected):
    assert rule_from_words(words.split()) == expected


@pytest.mark.parametrize("words,why", [
    ("answer auto", "response rewrites must begin with a name rule"),
    ("continue", "a rule type after 'continue'"),
    ("name a", "too few arguments"),
    ("name suffix a b auto", "'answer auto'"),
    ("name suffix a b answer", "'answer auto'"),
    ("name suffix a b answer name x", "two arguments"),
    ("type A", "exactly two arguments"),
    ("edns0 local set 0xffee abcd", "CoreDNS's 'edns0' rule is not"),
    ("rcode exact a. SERVFAIL NOERROR", "CoreDNS's 'rcode' rule is not"),
    ("bogus a b", "a rule type: name, type, class or ttl"),
])
def test_rule_words_refused(words, why):
    with pytest.raises(ValueError, match=why.replace("(", r"\(").replace(".", r"\.")):
        rule_from_words(words.split())


@pytest.mark.parametrize("rule,why", [
    ({"name": {"match": "fuzzy", "from": "a", "to": "b"}}, "one of exact | prefix"),
    ({"name": {"match": "regex", "from": "(a", "to": "b"}}, "a valid regular expression"),
    ({"name": {"match": "regex", "from": "(a)", "to": "{1}.{2}"}}, "as many groups"),
    ({"name": {"match": "exact", "from": "a", "to": "b", "answer": ["auto", {"name": ["x", "y"]}]}}, "not both"),
    ({"type": {"from": "A", "to": "NOPE"}}, "a DNS type name"),
    ({"class": {"from": "XX", "to": "IN"}}, "a DNS class name"),
    ({"ttl": {"from": "a", "ttl": "300-30"}}, "SECONDS or MIN-MAX"),
    ({"ttl": {"from": "a", "ttl": "-"}}, "SECONDS or MIN-MAX"),
    ({"ttl": {"from": "a", "ttl": 4294967296}}, "SECONDS or MIN-MAX"),
    ({"name": {"from": "a", "to": "b"}, "type": {"from": "A", "to": "AAAA"}}, "exactly one of"),
    ({"mode": "later", "name": {"from": "a", "to": "b"}}, "stop | continue"),
    ("name suffix a b answer", "rewrite\\[0\\]: expected 'answer auto'"),
])
def test_config_refused_with_the_key(rule, why):
    with pytest.raises(ConfigError, match=why):
        parse_rewrite_config(Node([rule], "f.yaml", "rewrite"))


def test_config_normalizes_names_as_coredns():
    (exact, prefix, regex, ttl) = parse_rewrite_config(Node([
        "name DB.Example.com db.default.svc.cluster.local",
        "name prefix foo bar",
        {"name": {"match": "regex", "from": "(.*)\\.A", "to": "{1}.B"}},
        {"ttl": {"match": "suffix", "from": "example.org", "ttl": "30-"}},
    ], "f.yaml", "rewrite"))
    assert (exact.source, exact.target, exact.auto) == ("db.example.com.", "db.default.svc.cluster.local.", True)
    assert (prefix.source, prefix.target, prefix.auto) == ("foo.", "bar.", False)  # Normalize adds the dot
    assert (regex.source, regex.target) == ("(.*)\\.A", "{1}.b.")  # the regexp as written
    assert ttl.ttl == (30, 2147483647) and ttl.source == "example.org."


# -- the plugin in front of a recording next ---------------------------------------------------------


def _request(name: str, rdtype: str | int = "A", rdclass: str | int = "IN") -> Request:
    data = dns.message.make_query(name, rdtype, rdclass, use_edns=False).to_wire()
    q = parse_question(data)
    return Request(q, data[12 : q.end], None, 512, "udp", ("10.0.0.1", 5353), 0.0, data, None,
                   lname=q.qname.decode("ascii", "replace").lower())


class _Next:
    """The rest of the chain: records what it was asked and answers that name, with a CNAME to
    ``cname`` (if given) and an A record for the last name, plus an SOA in the authority."""

    def __init__(self, cname: str | None = None, ttl: int = 60, later: bool = False, **reply: Any):
        self.asked: list[Request] = []
        self.cname = cname
        self.ttl = ttl
        self.later = later
        self.reply = reply

    def __call__(self, req: Request) -> Any:
        self.asked.append(req)
        name = req.q.qname
        answers = []
        if self.cname:
            answers.append(tdns.RRHeader(name, tdns.CNAME, tdns.IN, self.ttl, tdns.Record_CNAME(self.cname.encode())))
            name = self.cname.encode()
        answers.append(tdns.RRHeader(name, tdns.A, tdns.IN, self.ttl, tdns.Record_A("192.0.2.1")))
        zone = b".".join(req.q.qname.split(b".")[-2:])
        soa = tdns.RRHeader(zone, tdns.SOA, tdns.IN, 30, tdns.Record_SOA(b"ns." + zone, b"admin." + zone))
        reply = Reply(Answer(answers=answers, authority=[soa]), "", "next", **self.reply)
        return defer.succeed(reply) if self.later else reply


def _names(reply: Reply) -> list[str]:
    out = []
    for rr in (*reply.answer.answers, *reply.answer.authority):
        p = rr.payload
        value = p.name if rr.type == tdns.CNAME else p.mname if rr.type == tdns.SOA else p.dottedQuad()
        out.append(f"{rr.name.name.decode()} {tdns.QUERY_TYPES[rr.type]} {value} {rr.ttl}")
    return out


def _serve(rules: list[Any], name: str, rdtype: str | int = "A", nxt: _Next | None = None, **kw: Any):
    plugin = RewritePlugin(parse_rewrite_config(Node(rules, "f.yaml", "rewrite")))
    nxt = nxt or _Next()
    req = _request(name, rdtype, **kw)
    result = plugin.serve(req, nxt)
    if isinstance(result, defer.Deferred):
        result = result.result
    asked = nxt.asked[-1] if nxt.asked else None
    return result, asked, req


@pytest.mark.parametrize("rule,name,asked,answered", [
    # exact: the answer always goes back to the name asked (in the client's spelling)
    ("name db.example.com nginx.default.svc.cluster.local", "DB.example.com",
     "nginx.default.svc.cluster.local", ["DB.example.com A 192.0.2.1 60", "cluster.local SOA ns.cluster.local 30"]),
    # prefix without answer auto: the answer keeps the new names (as CoreDNS)
    ("name prefix foo bar", "foo.example.com", "bar.example.com",
     ["bar.example.com A 192.0.2.1 60", "example.com SOA ns.example.com 30"]),
    ("name prefix foo bar answer auto", "foo.example.com", "bar.example.com",
     ["foo.example.com A 192.0.2.1 60", "example.com SOA ns.example.com 30"]),
    # suffix answer auto: the new suffix back to the old one, owners and values
    ("name suffix .corp.example. .svc.cluster.local. answer auto", "Nginx.default.corp.example",
     "nginx.default.svc.cluster.local",
     ["Nginx.default.corp.example A 192.0.2.1 60", "cluster.local SOA ns.cluster.local 30"]),
    ("name substring service.us-west-1.example.org service.us-west-1.consul answer auto",
     "ftp.service.us-west-1.example.org", "ftp.service.us-west-1.consul",
     ["ftp.service.us-west-1.example.org A 192.0.2.1 60", "us-west-1.consul SOA ns.us-west-1.consul 30"]),
    # regex: {N} are its groups; answer name is a regexp over the owner names
    ("name regex (.*)-(us-west-1)\\.coredns\\.rocks {1}.service.{2}.consul "
     "answer name (.*)\\.service\\.(us-west-1)\\.consul {1}-{2}.coredns.rocks",
     "ftp-us-west-1.coredns.rocks", "ftp.service.us-west-1.consul",
     ["ftp-us-west-1.coredns.rocks A 192.0.2.1 60", "us-west-1.consul SOA ns.us-west-1.consul 30"]),
    # no match: the query goes on unchanged
    ("name exact other.example nginx.default.svc.cluster.local", "db.example.com", "db.example.com",
     ["db.example.com A 192.0.2.1 60", "example.com SOA ns.example.com 30"]),
    ("name prefix foo bar", "xfoo.example.com", "xfoo.example.com",
     ["xfoo.example.com A 192.0.2.1 60", "example.com SOA ns.example.com 30"]),
])
def test_name_rules(rule, name, asked, answered):
    reply, got, req = _serve([rule], name)
    assert got is not None and got.q.qname.decode() == asked and got.lname == asked.lower()
    assert _names(reply) == answered
    if asked == name:
        assert got is req  # nothing rewritten: the very same request goes on


def test_answer_value_and_auto_rename_record_values():
    """``answer auto`` renames the values records point to (a CNAME target below the new name),
    ``answer value`` any value its regexp matches."""
    reply, got, _ = _serve(["name suffix .old.example. .new.example. answer auto"], "www.old.example",
                           nxt=_Next(cname="web.new.example"))
    assert got.q.qname == b"www.new.example"
    assert _names(reply)[:2] == ["www.old.example CNAME web.old.example 60", "web.old.example A 192.0.2.1 60"]
    reply, _, _ = _serve([{"name": {"match": "exact", "from": "a.example", "to": "b.example",
                                    "answer": [{"value": ["(.*)\\.cdn\\.net\\.", "{1}.cdn.example."]}]}}],
                         "a.example", nxt=_Next(cname="x.cdn.net"))
    assert _names(reply)[:1] == ["a.example CNAME x.cdn.example 60"]


def test_stop_ends_the_walk_and_continue_goes_on():
    rules = ["name suffix .a.example. .b.example. answer auto", "name suffix .b.example. .c.example. answer auto"]
    _, got, _ = _serve(rules, "x.a.example")
    assert got.q.qname == b"x.b.example"  # stop (the default): the second rule is not tried
    reply, got, _ = _serve(["continue " + rules[0], rules[1]], "x.a.example")
    assert got.q.qname == b"x.c.example"
    # answer rules run last rule first: c → b → a
    assert _names(reply)[0] == "x.a.example A 192.0.2.1 60"


def test_type_and_class_rules_and_the_question_stays_the_clients():
    reply, got, req = _serve(["type ANY HINFO"], "example.org", "ANY")
    assert got.q.qtype == tdns.HINFO and got.question[-4:] == b"\x00\x0d\x00\x01"
    assert req.q.qtype == 255 and req.question[-4:] == b"\x00\xff\x00\x01"  # what the server encodes with
    _, got, _ = _serve(["class CH IN"], "version.bind", "TXT", rdclass="CH")
    assert got.q.qclass == tdns.IN
    _, got, _ = _serve(["type AAAA A"], "example.org", "A")
    assert got.q.qtype == tdns.A  # no match


@pytest.mark.parametrize("ttl,upstream_ttl,want", [
    ("15", 60, (15, 15)), ("30-300", 10, (30, 30)), ("30-300", 600, (300, 30)), ("30-300", 60, (60, 30)),
    ("-30", 60, (30, 30)), ("30-", 10, (30, 30)), ("30-", 9999, (9999, 30)),
])
def test_ttl_rule_sets_or_clamps_every_ttl(ttl, upstream_ttl, want):
    reply, _, _ = _serve([{"ttl": {"match": "suffix", "from": "example.org", "ttl": ttl}}], "www.example.org",
                         nxt=_Next(ttl=upstream_ttl))
    assert (reply.answer.answers[0].ttl, reply.answer.authority[0].ttl) == want


def test_ttl_rule_does_not_rename_and_other_names_are_left_alone():
    reply, got, req = _serve(["ttl regex (.*)\\.example\\.org 15"], "www.example.net")
    assert got is req and reply.answer.answers[0].ttl == 60


def test_invalid_name_after_rewrite_is_servfail():
    reply, got, _ = _serve([{"name": {"match": "regex", "from": "(.*)\\.example\\.", "to": "{1}{1}{1}{1}.x"}}],
                           "a" * 40 + ".example")
    assert got is None and reply.answer.rcode == tdns.ESERVER and "invalid name" in reply.error


def test_later_answers_are_rewritten_and_fast_path_flags_follow_next():
    """A forwarded (Deferred) answer is renamed back when it fires; ``cacheable``/``lifetime``
    are the next plugin's, except that a ``ttl`` rule keeps a forwarded answer off the fast path."""
    rule = "name suffix .corp.example. .example.net. answer auto"
    reply, _, _ = _serve([rule], "www.corp.example", nxt=_Next(later=True, lifetime=30.0))
    assert _names(reply)[0] == "www.corp.example A 192.0.2.1 60" and reply.lifetime == 30.0
    reply, _, _ = _serve([rule], "www.corp.example", nxt=_Next(cacheable=True))
    assert reply.cacheable and reply.lifetime == 0
    reply, _, _ = _serve(["continue " + rule, "ttl suffix example.net 20"], "www.corp.example",
                         nxt=_Next(later=True, lifetime=30.0, cacheable=False))
    assert reply.lifetime == 0 and reply.answer.answers[0].ttl == 20


# -- a Dispatcher over the record table's store ----------------------------------------------------


def _dispatcher(rules: list[Any]) -> tuple[Dispatcher, DNSDatagramProtocol, CapturingTransport]:
    store = Store(required=("namespaces", "services", "endpointslices", "pods"))
    fill(store)
    kcfg = KubernetesConfig(pods="insecure", ttl=5)
    cfg = ServerBlock(zones=("",), listen=Address("127.0.0.1", 53), kubernetes=kcfg,
                      rewrite=parse_rewrite_config(Node(rules, "f.yaml", "rewrite")))
    disp = Dispatcher("dns://127.0.0.1:53", [Block(cfg, ClusterZones(store, kcfg))], reactor=task.Clock())
    proto = DNSDatagramProtocol(disp)
    tr = CapturingTransport()
    proto.transport = tr
    proto.startProtocol()
    return disp, proto, tr


def _wire(name: str, rdtype: str, qid: int) -> bytes:
    q = dns.message.make_query(name, rdtype, use_edns=False)
    q.id = qid
    return q.to_wire()


@pytest.mark.parametrize("name,rdtype,want", [
    ("db.Example.com", "A", ["db.Example.com. 5 IN A 10.96.0.100"]),
    ("nginx.default.svc.corp.example", "A", ["nginx.default.svc.corp.example. 5 IN A 10.96.0.100"]),
    ("_http._tcp.nginx.default.svc.corp.example", "SRV",
     ["_http._tcp.nginx.default.svc.corp.example. 5 IN SRV 0 100 80 nginx.default.svc.corp.example."]),
])
def test_cluster_answers_renamed_back_and_fast_bytes_equal_slow_bytes(name, rdtype, want):
    """The cluster answers the rewritten name; the answer is kept on the fast path (a cluster
    answer is) and a repeat gets the slow path's bytes, ID aside."""
    disp, proto, tr = _dispatcher(["continue name db.example.com nginx.default.svc.cluster.local",
                                   "name suffix .svc.corp.example. .svc.cluster.local. answer auto"])
    proto.datagramReceived(_wire(name, rdtype, 0x1111), ("127.0.0.1", 5000))
    slow = tr.socket.sent[-1][0]
    msg = dns.message.from_wire(slow)
    assert [rrset.to_text() for rrset in msg.answer] == want
    assert msg.question[0].name.to_text() == name + "."  # the client's question, its case too
    assert len(disp.fast.entries) == 1
    disp.handle = None  # type: ignore[assignment]  # the slow path must not be reached now
    proto.datagramReceived(_wire(name, rdtype, 0x2222), ("127.0.0.1", 5001))
    fast = tr.socket.sent[-1][0]
    assert fast[:2] == b"\x22\x22" and fast[2:] == slow[2:]


def test_a_rewritten_cluster_answer_goes_when_its_service_changes_only():
    """The kept answer of ``db.example.com`` depends on the Service it was rewritten to: a change
    of another Service leaves it, a change of that one drops it and the next query sees it."""
    disp, proto, tr = _dispatcher(["name db.example.com nginx.default.svc.cluster.local"])
    store = disp.blocks[0].clusters.store
    proto.datagramReceived(_wire("db.example.com", "A", 1), ("127.0.0.1", 5000))
    assert len(disp.fast.entries) == 1
    store.upsert("services", *objects.service_from_raw(kubeobj.service("other", "default", cluster_ip="10.96.9.9")))
    disp.fast.store_changed(store)
    assert len(disp.fast.entries) == 1
    store.upsert("services", *objects.service_from_raw(kubeobj.service(
        "nginx", "default", cluster_ip="10.96.0.101",
        ports=[{"name": "http", "port": 80, "protocol": "TCP"}, {"port": 8080, "protocol": "TCP"}])))
    disp.fast.store_changed(store)
    assert not disp.fast.entries
    proto.datagramReceived(_wire("db.example.com", "A", 2), ("127.0.0.1", 5000))
    assert rrset_text(dns.message.from_wire(tr.socket.sent[-1][0])) == ["db.example.com A 10.96.0.101"]


class _Upstream:
    """A forwarder answering every name with a CNAME to ``web.<name's last two labels>`` and its
    A record (TTL 300), counting what it was asked."""

    disabled_reason = None

    def __init__(self) -> None:
        self.asked: list[bytes] = []

    def handles(self, name: bytes) -> bool:
        return True

    def resolve(self, query: Any, tcp: bool = False) -> Any:
        name = query.queries[0].name.name
        self.asked.append(name)
        web = b"web." + b".".join(name.split(b".")[-2:])
        m = tdns.Message(answer=1, recAv=1)
        m.answers = [tdns.RRHeader(name, tdns.CNAME, ttl=300, payload=tdns.Record_CNAME(web, 300)),
                     tdns.RRHeader(web, tdns.A, ttl=300, payload=tdns.Record_A("192.0.2.1", 300))]
        return defer.succeed(m)


def test_forwarded_answers_renamed_back_fast_bytes_equal_slow_bytes_as_ttls_count_down():
    from kubedns.forward.cache import Cache
    from kubedns.forward.chain import ForwardChain
    from kubedns.forward.config import CacheConfig

    clock = task.Clock()
    clock.advance(1000)
    up = _Upstream()
    chain = ForwardChain(up, cache=Cache(CacheConfig(ttl=30), reactor=clock), reactor=clock)
    cfg = ServerBlock(zones=("",), listen=Address("127.0.0.1", 53), rewrite=parse_rewrite_config(
        Node(["name suffix .corp.example. .example.net. answer auto"], "f.yaml", "rewrite")))
    disp = Dispatcher("dns://127.0.0.1:53", [Block(cfg, None, chain)], reactor=clock)
    proto = DNSDatagramProtocol(disp)
    proto.transport = tr = CapturingTransport()
    proto.startProtocol()
    proto.datagramReceived(_wire("www.Corp.example", "A", 1), ("127.0.0.1", 5000))
    first = dns.message.from_wire(tr.socket.sent[-1][0])
    assert up.asked == [b"www.example.net"]
    assert [r.to_text() for r in first.answer] == ["www.Corp.example. 30 IN CNAME web.corp.example.",
                                                   "web.corp.example. 30 IN A 192.0.2.1"]
    assert len(disp.fast.entries) == 1
    for elapsed in (0, 10, 12):
        clock.advance(elapsed)
        proto.datagramReceived(_wire("www.Corp.example", "A", 2), ("127.0.0.1", 5000))
        fast = tr.socket.sent[-1][0]
        saved, disp.fast.enabled = disp.fast.enabled, False
        slow = disp.handle(_wire("www.Corp.example", "A", 3), "udp", ("127.0.0.1", 1))
        slow = getattr(slow, "result", slow)  # bytes, or a fired Deferred
        disp.fast.enabled = saved
        assert fast[2:] == slow[2:], elapsed
    assert dns.message.from_wire(fast).answer[0].ttl == 8 and up.asked == [b"www.example.net"]


def test_a_name_only_the_rewrite_makes_known_is_refused_without_it():
    disp, proto, tr = _dispatcher(["name other.example nginx.default.svc.cluster.local"])
    proto.datagramReceived(_wire("db.example.com", "A", 1), ("127.0.0.1", 5000))
    assert dns.message.from_wire(tr.socket.sent[-1][0]).rcode() == dns.rcode.REFUSED


# -- a real server over UDP ------------------------------------------------------------------------

@pytest.fixture
def upstream():
    up = DNSUpstream(host="127.0.0.5").start()
    up.add("www.new.example", "CNAME", "web.new.example.")
    up.add("web.new.example", "A", "192.0.2.80")
    up.add("example.org", "A", "192.0.2.10")
    yield up
    up.stop()


def _manifests(tmp_path) -> str:
    objs = [kubeobj.namespace("default"), kubeobj.namespace("prod"),
            kubeobj.service("nginx", "default", cluster_ip="10.96.0.100",
                            ports=[{"name": "http", "port": 80, "protocol": "TCP"}]),
            kubeobj.service("postgres", "prod", cluster_ip="10.96.5.5")]
    return write_manifests(tmp_path / "cluster.yaml", objs)


def _check(port: int) -> None:
    # an external name served from an in-cluster Service: the answer carries the name asked
    r = query(port, "db.example.com")
    assert rrset_text(r) == ["db.example.com A 10.96.5.5"] and r.rcode() == dns.rcode.NOERROR
    assert r.answer[0].ttl == 5
    # a zone renamed: cluster.local answers under corp.example, SRV targets too
    assert rrset_text(query(port, "nginx.default.svc.corp.example")) == ["nginx.default.svc.corp.example A 10.96.0.100"]
    assert rrset_text(query(port, "_http._tcp.nginx.default.svc.corp.example", "SRV")) == [
        "_http._tcp.nginx.default.svc.corp.example SRV 0 100 80 nginx.default.svc.corp.example."]
    nx = query(port, "missing.default.svc.corp.example")
    assert nx.rcode() == dns.rcode.NXDOMAIN and rrset_text(nx, "authority")[0].startswith("cluster.local SOA")
    # a zone renamed to an upstream's: names and the CNAME's target come back under the old name
    assert rrset_text(query(port, "www.old.example", "CNAME")) == ["www.old.example CNAME web.old.example."]
    assert rrset_text(query(port, "web.old.example")) == ["web.old.example A 192.0.2.80"]
    assert rrset_text(query(port, "example.org")) == ["example.org A 192.0.2.10"]  # untouched


@pytest.mark.timeout(60)
def test_server_rewrites_yaml(kubedns_process, tmp_path, upstream):
    port = free_port()
    cfg = {"servers": [{
        "zones": ["."], "listen": f"127.0.0.1:{port}",
        "rewrite": [
            {"name": {"from": "db.example.com", "to": "postgres.prod.svc.cluster.local"}},
            {"name": {"match": "suffix", "from": ".svc.corp.example.", "to": ".svc.cluster.local.", "answer": "auto"}},
            "name suffix .old.example. .new.example. answer auto",
        ],
        "kubernetes": {"zones": ["cluster.local"], "manifests": _manifests(tmp_path), "ttl": 5},
        "forward": {"to": [upstream.address]},
    }]}
    p = kubedns_process(cfg)
    p.wait_listening(port)
    _check(port)
    assert upstream.count("www.new.example", "CNAME") == 1 and upstream.count("www.old.example", "CNAME") == 0


@pytest.mark.timeout(60)
def test_server_rewrites_corefile(tmp_path, upstream):
    port = free_port()
    work = tmp_path / "coredns"
    work.mkdir()
    corefile = f""".:{port} {{
    bind 127.0.0.1
    rewrite name db.example.com postgres.prod.svc.cluster.local
    rewrite stop {{
        name suffix .svc.corp.example. .svc.cluster.local.
        answer auto
    }}
    rewrite name suffix .old.example. .new.example. answer auto
    kubernetes cluster.local {{
        manifests {_manifests(tmp_path)}
        ttl 5
    }}
    forward . {upstream.address}
}}
"""
    p = KubeDNSProcess(corefile, work)
    p.config_path.unlink()
    p.config_path = work / "Corefile"
    p.write_config(corefile)
    p.start()
    try:
        p.wait_listening(port)
        _check(port)
    finally:
        p.stop()


def test_corefile_and_yaml_give_the_same_rules(tmp_path):
    path = tmp_path / "Corefile"
    path.write_text(""".:53 {
    rewrite continue {
        name regex (.*)-(us-west-1)\\.coredns\\.rocks {1}.service.{2}.consul
        answer name (.*)\\.service\\.(us-west-1)\\.consul {1}-{2}.coredns.rocks
    }
    rewrite type ANY HINFO
    rewrite continue ttl suffix example.org 30-300
    forward . 127.0.0.1
}
""")
    core = parse_corefile_config(path.read_text(), str(path)).servers[0].rewrite
    yaml_cfg = parse_data({"servers": [{"forward": {"to": ["127.0.0.1"]}, "rewrite": [
        {"mode": "continue", "name": {"match": "regex", "from": "(.*)-(us-west-1)\\.coredns\\.rocks",
                                      "to": "{1}.service.{2}.consul",
                                      "answer": [{"name": ["(.*)\\.service\\.(us-west-1)\\.consul",
                                                           "{1}-{2}.coredns.rocks"]}]}},
        {"type": {"from": "ANY", "to": "HINFO"}},
        {"mode": "continue", "ttl": {"match": "suffix", "from": "example.org", "ttl": "30-300"}},
    ]}]}, "x.yaml").servers[0].rewrite
    assert core == yaml_cfg and len(core) == 3


@pytest.mark.parametrize("line,why", [
    ("rewrite name a", "Corefile:2: rewrite: expected name \\[MATCH\\] FROM TO"),
    ("rewrite edns0 local set 0xffee abcd", "Corefile:2: rewrite: expected a rule kubedns supports"),
    ("rewrite name regex (a b", "Corefile:2: rewrite: name.from: expected a valid regular expression"),
    ("rewrite name a b {\n        answer auto\n    }", "Corefile:2: rewrite: expected a rule on the line or in a block"),
])
def test_corefile_errors_name_the_line(tmp_path, line, why):
    path = tmp_path / "Corefile"
    text = f".:53 {{\n    {line}\n    forward . 127.0.0.1\n}}\n"
    with pytest.raises(CorefileSyntaxError, match=why):
        parse_corefile_config(text, str(path))


def test_rewritten_request_keeps_everything_else():
    reply, got, req = _serve(["name a.example b.example"], "a.example")
    assert replace(got, q=req.q, question=req.question, lname=req.lname) == req
