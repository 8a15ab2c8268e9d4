"""autopath: the search path walked on the server, as CoreDNS's *autopath* (plugin/autopath).

First the walk itself, table-driven like CoreDNS's ``autopath_test.go`` (the same search path
``example.org example.com com`` and the same next handler: NXDOMAIN for ``b.example.org``, one
``3600 IN A 127.0.0.53`` for ``b.com`` and ``a.example.com``, SERVFAIL for any other name), then
``autopath @kubernetes`` in a real Dispatcher over a real store, behind the real UDP protocol and
its fast path: the Pod is found by its source IP, the walk runs through the cluster and on to a
forwarding plugin, and nothing that depends on who asked is served from pre-encoded bytes.
The config, from YAML and from a Corefile, last.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dns.message
import dns.rcode
import dns.rdatatype
import pytest
from twisted.internet import defer, task
from twisted.names import dns as tdns

from kubedns.config import KubernetesConfig, ServerBlock, parse
from kubedns.configbase import Address, ConfigError
from kubedns.corefile import parse_corefile_config
from kubedns.dns.query import Request
from kubedns.dns.records import Answer, ClusterZones
from kubedns.dns.wire import parse_question
from kubedns.k8s import objects
from kubedns.k8s.store import Store
from kubedns.plugins.autopath import AutopathConfig, AutopathPlugin, cnamer, read_search
from kubedns.plugins.base import Reply, build_chain
from kubedns.serve.protocols import DNSDatagramProtocol
from kubedns.serve.server import Block, Dispatcher
from tests.support import kubeobj
from tests.support.dispatch import CapturingTransport

SEARCH = ("example.org", "example.com", "com")


class Next:
    """CoreDNS's ``nextHandler``: an rcode per name; NOERROR answers ``<qname> 3600 IN A 127.0.0.53``,
    NXDOMAIN carries an SOA; an unknown name is SERVFAIL.  ``later``: answers as Deferreds."""

    def __init__(self, rcodes: dict[str, int], later: bool = False, nodata: tuple[str, ...] = ()):
        self.rcodes = rcodes
        self.later = later
        self.nodata = nodata
        self.asked: list[str] = []

    def __call__(self, req: Request) -> Any:
        name = req.q.qname.decode()
        self.asked.append(name)
        rcode = self.rcodes.get(name.lower(), tdns.ESERVER)
        ans = Answer(rcode=rcode)
        if rcode == tdns.OK and name.lower() not in self.nodata:
            ans.answers = [tdns.RRHeader(req.q.qname, tdns.A, ttl=3600, payload=tdns.Record_A("127.0.0.53", 3600))]
        elif rcode in (tdns.ENAME, tdns.OK):
            ans.authority = [tdns.RRHeader(b"example.org", tdns.SOA, ttl=1800, payload=tdns.Record_SOA(
                b"example.org", b"example.org", 1502165581, 14400, 3600, 604800, 14400, ttl=1800))]
        reply = Reply(ans, "", "next", cacheable=True)
        return defer.succeed(reply) if self.later else reply


def _req(name: str, qtype: str = "A", peer: Any = ("10.0.0.1", 5353)) -> Request:
    data = dns.message.make_query(name, qtype, use_edns=False).to_wire()
    pq = parse_question(data)
    assert pq is not None
    return Request(pq, data[12:pq.end], None, 512, "udp", peer, 0.0, data, None, lname=name.lower().rstrip("."))


def _file_plugin() -> AutopathPlugin:
    return AutopathPlugin(AutopathConfig(zones=("",), kubernetes=False, search=SEARCH, source="f"), ("",))


def _serve(plugin: AutopathPlugin, nxt: Next, name: str) -> Reply:
    r = plugin.serve(_req(name), nxt)
    if isinstance(r, defer.Deferred):
        got: list[Reply] = []
        r.addCallback(got.append)
        return got[0]
    return r


def _text(ans: Answer) -> list[str]:
    out = []
    for rr in ans.answers:
        p = rr.payload
        value = p.name.name.decode() if rr.type == tdns.CNAME else p.dottedQuad()
        out.append(f"{rr.name.name.decode()} {rr.ttl} {tdns.QUERY_TYPES[rr.type]} {value}")
    return out


# -- the walk, CoreDNS's examples ---------------------------------------------------------------
COREDNS_NEXT = {"b.example.org": tdns.ENAME, "b.com": tdns.OK, "a.example.com": tdns.OK}


@pytest.mark.parametrize("later", [False, True], ids=["now", "later"])
@pytest.mark.parametrize(("qname", "answers"), [
    # search path expansion: the CNAME sits before the answer, with its TTL
    ("b.example.org", ["b.example.org 3600 CNAME b.com", "b.com 3600 A 127.0.0.53"]),
    # no search path expansion (not below the first element)
    ("a.example.com", ["a.example.com 3600 A 127.0.0.53"]),
])
def test_corednss_autopath_cases(qname: str, answers: list[str], later: bool) -> None:
    r = _serve(_file_plugin(), Next(COREDNS_NEXT, later), qname)
    assert r.answer.rcode == tdns.OK
    assert _text(r.answer) == answers


def test_walk_order_and_the_name_itself_last() -> None:
    nxt = Next({"x.example.org": tdns.ENAME, "x": tdns.OK})
    r = _serve(_file_plugin(), nxt, "x.example.org")
    assert nxt.asked == ["x.example.org", "x.example.com", "x.com", "x"]
    assert _text(r.answer) == ["x.example.org 3600 CNAME x", "x 3600 A 127.0.0.53"]
    assert r.plugin == "autopath" and not r.cacheable and r.lifetime == 0


def test_no_answer_anywhere_returns_the_first_reply_as_is() -> None:
    """CoreDNS's TestAutoPathNoAnswer: every step fails (SERVFAIL), the first step's rcode goes back."""
    nxt = Next(COREDNS_NEXT)
    r = _serve(_file_plugin(), nxt, "c.example.org")
    assert r.answer.rcode == tdns.ESERVER and not r.answer.answers
    assert nxt.asked == ["c.example.org", "c.example.com", "c.com", "c"]
    nxt = Next({"d.example.org": tdns.ENAME, "d.example.com": tdns.ESERVER, "d.com": tdns.ENAME, "d": tdns.ENAME})
    r = _serve(_file_plugin(), nxt, "d.example.org")
    assert r.answer.rcode == tdns.ENAME and r.answer.authority  # the first one's NXDOMAIN and SOA
    assert r.plugin == "next" and not r.cacheable  # the client walks on: nothing kept


def test_nodata_stops_the_walk_without_a_cname() -> None:
    nxt = Next({"n.example.org": tdns.ENAME, "n.example.com": tdns.OK}, nodata=("n.example.com",))
    r = _serve(_file_plugin(), nxt, "n.example.org")
    assert nxt.asked == ["n.example.org", "n.example.com"]
    assert r.answer.rcode == tdns.OK and r.answer.answers == [] and r.answer.authority


def test_refused_and_servfail_steps_are_skipped_an_error_ends_the_walk() -> None:
    nxt = Next({"r.example.org": tdns.EREFUSED, "r.example.com": tdns.ESERVER, "r.com": tdns.OK})
    assert _text(_serve(_file_plugin(), nxt, "r.example.org").answer)[0] == "r.example.org 3600 CNAME r.com"

    def failing(req: Request) -> Reply:
        if req.q.qname == b"e.example.com":
            return Reply(Answer(rcode=tdns.ESERVER), "", "forward", error="forward: no upstream answered")
        return Reply(Answer(rcode=tdns.ENAME), "", "kubernetes")

    r = _file_plugin().serve(_req("e.example.org"), failing)
    assert isinstance(r, Reply) and r.answer.rcode == tdns.ESERVER and r.error.startswith("forward")


def test_first_step_answering_is_what_every_client_gets() -> None:
    r = _serve(_file_plugin(), Next({"f.example.org": tdns.OK}), "f.example.org")
    assert _text(r.answer) == ["f.example.org 3600 A 127.0.0.53"]
    assert r.plugin == "next" and r.cacheable  # unchanged: the fast path may keep it


@pytest.mark.parametrize(("qname", "walked"), [
    # CoreDNS's TestInSearchPath, search default.svc.cluster.local svc.cluster.local cluster.local
    ("google.com", False),
    ("a.default.svc.cluster.local", True),
    ("a.b.svc.cluster.local", False),
    # the domain itself: CoreDNS answers SERVFAIL (TrimZone overshoots), kubedns as without autopath
    ("default.svc.cluster.local", False),
])
def test_in_search_path(qname: str, walked: bool) -> None:
    plugin = AutopathPlugin(AutopathConfig(("",), False, ("default.svc.cluster.local", "svc.cluster.local",
                                                          "cluster.local"), "f"), ("",))
    nxt = Next({})
    _serve(plugin, nxt, qname)
    assert (len(nxt.asked) > 1) is walked


def test_cnamer_points_at_the_first_record_not_owned_by_the_name() -> None:
    a = tdns.RRHeader(b"www.example.net", tdns.CNAME, ttl=77, payload=tdns.Record_CNAME(b"edge.example.net", 77))
    b = tdns.RRHeader(b"edge.example.net", tdns.A, ttl=20, payload=tdns.Record_A("192.0.2.9", 20))
    out = cnamer(Answer(answers=[a, b]), b"WWW.default.svc.cluster.local")
    assert out.answers[0].name.name == b"WWW.default.svc.cluster.local" and out.answers[0].ttl == 77
    assert out.answers[0].payload.name.name == b"www.example.net" and out.answers[1:] == [a, b]
    own = tdns.RRHeader(b"www.default.svc.cluster.local", tdns.A, payload=tdns.Record_A("10.0.0.1"))
    same = Answer(answers=[own])
    assert cnamer(same, b"WWW.default.svc.cluster.local") is same  # all owned by the name: no CNAME


def test_resolv_conf_search_list(tmp_path: Path) -> None:
    f = tmp_path / "resolv.conf"
    f.write_text("# kubelet\nnameserver 10.96.0.10\ndomain old.example\nsearch A.example. b.example\noptions ndots:5\n")
    assert read_search(str(f)) == ("a.example", "b.example")
    f.write_text("nameserver 10.96.0.10\n")
    assert read_search(str(f)) is None


# -- autopath @kubernetes in a running dispatcher -----------------------------------------------
POD_IP, OTHER_POD_IP, NODE_IP = "10.244.1.5", "10.244.2.7", "10.0.0.1"


class Upstream:
    """A ``forward`` plugin stand-in: ``google.com`` has an A record (TTL 300), others NXDOMAIN;
    answers kept 30 s on the fast path as a cached forward would be."""

    name = "forward"

    def __init__(self) -> None:
        self.asked: list[str] = []

    def serve(self, req: Request, next: Any) -> Any:  # noqa: A002
        name = req.q.qname.decode()
        self.asked.append(name)
        ans = Answer(rcode=tdns.ENAME, authoritative=False)
        if name.lower() == "google.com" and req.q.qtype == tdns.A:
            ans.rcode = tdns.OK
            ans.answers = [tdns.RRHeader(req.q.qname, tdns.A, ttl=300, payload=tdns.Record_A("192.0.2.80", 300))]
        elif name.lower() == "google.com":
            ans.rcode = tdns.OK
        return defer.succeed(Reply(ans, "", self.name, ra=True, lifetime=30.0))


def _cluster() -> Store:
    store = Store(required=("namespaces", "services", "endpointslices", "pods"))
    for ns in ("default", "shop"):
        store.upsert("namespaces", *objects.namespace_from_raw(kubeobj.namespace(ns)))
    store.upsert("services", *objects.service_from_raw(kubeobj.service("kubernetes", "default",
                                                                          cluster_ip="10.96.0.1")))
    store.upsert("services", *objects.service_from_raw(kubeobj.service("web", "shop", cluster_ip="10.96.0.7")))
    store.upsert("pods", *objects.pod_from_raw(kubeobj.pod("client", "default", POD_IP)))
    store.upsert("pods", *objects.pod_from_raw(kubeobj.pod("cart", "shop", OTHER_POD_IP)))
    for kind in store.required:
        store.mark_synced(kind)
    return store


class Served:
    def __init__(self, autopath: bool = True, pods: str = "insecure"):
        self.store = _cluster()
        kcfg = KubernetesConfig(zones=("cluster.local",), pods=pods, autopath=autopath)
        ap = AutopathConfig(zones=(), kubernetes=True, search=("corp.example",)) if autopath else None
        block = Block(ServerBlock(zones=("",), listen=Address("127.0.0.1", 53), kubernetes=kcfg, autopath=ap),
                      ClusterZones(self.store, kcfg))
        self.upstream = Upstream()
        block.serve = build_chain([*block.plugins, self.upstream])
        self.disp = Dispatcher("dns://127.0.0.1:53", [block], reactor=task.Clock())
        self.store.add_listener(lambda: self.disp.fast.store_changed(self.store))
        self.proto = DNSDatagramProtocol(self.disp)
        self.tr = CapturingTransport()
        self.proto.transport = self.tr
        self.proto.startProtocol()

    def ask(self, name: str, src: str, qtype: str = "A") -> dns.message.Message:
        q = dns.message.make_query(name, qtype)
        q.id = 4242
        self.proto.datagramReceived(q.to_wire(), (src, 40000))
        return dns.message.from_wire(self.tr.socket.sent[-1][0])


def _rrs(m: dns.message.Message) -> list[str]:
    return [f"{rr.name} {rr.ttl} {dns.rdatatype.to_text(rr.rdtype)} {x}" for rr in m.answer for x in rr]


def test_a_pods_first_expansion_of_an_external_name_is_answered_with_a_cname() -> None:
    s = Served()
    for _ in range(3):  # never from the fast path: the next query may come from someone else
        r = s.ask("google.com.default.svc.cluster.local", POD_IP)
        assert r.rcode() == dns.rcode.NOERROR and r.question[0].name.to_text() == "google.com.default.svc.cluster.local."
        assert _rrs(r) == ["google.com.default.svc.cluster.local. 300 CNAME google.com.",
                           "google.com. 300 A 192.0.2.80"]
    # the walk: the cluster's three domains (NXDOMAIN from the store), the node's, then the name
    assert s.upstream.asked[:2] == ["google.com.corp.example", "google.com"]
    assert len(s.upstream.asked) == 6
    r = s.ask("google.com.default.svc.cluster.local", POD_IP, "AAAA")  # NODATA: no CNAME, NOERROR
    assert r.rcode() == dns.rcode.NOERROR and r.answer == []
    # someone who is not a Pod of default (a node, a Pod of shop) gets the name as asked
    for src in (NODE_IP, OTHER_POD_IP):
        assert s.ask("google.com.default.svc.cluster.local", src).rcode() == dns.rcode.NXDOMAIN
    # ... and that NXDOMAIN was not kept where the Pod's next query would find it
    assert _rrs(s.ask("google.com.default.svc.cluster.local", POD_IP))[0].endswith("CNAME google.com.")
    assert s.disp.fast.entries == {} or all(b"google" not in k for k in s.disp.fast.entries)


def test_a_short_service_name_from_another_namespace() -> None:
    """``kubernetes.default`` from a Pod of ``shop``: its first expansion walks on to the Service."""
    s = Served()
    r = s.ask("kubernetes.default.shop.svc.cluster.local", OTHER_POD_IP)
    assert _rrs(r) == ["kubernetes.default.shop.svc.cluster.local. 5 CNAME kubernetes.default.svc.cluster.local.",
                       "kubernetes.default.svc.cluster.local. 5 A 10.96.0.1"]
    assert s.upstream.asked == []  # found in the cluster: nothing forwarded


def test_what_every_client_gets_stays_on_the_fast_path() -> None:
    s = Served()
    r = s.ask("web.shop.svc.cluster.local", OTHER_POD_IP)  # the first step answers: as without autopath
    assert _rrs(r) == ["web.shop.svc.cluster.local. 5 A 10.96.0.7"]
    key = [k for k in s.disp.fast.entries if b"web" in k]
    assert key, "a positive first-step answer is kept"
    r = s.ask("WEB.Shop.svc.cluster.LOCAL", OTHER_POD_IP)  # the client's spelling, as without autopath
    assert _rrs(r) == ["WEB.Shop.svc.cluster.LOCAL. 5 A 10.96.0.7"]
    # not in the cluster zones, no "<ns>.svc" below them, or positive: declined, the reply untouched
    plugin = next(p for p in s.disp.blocks[0].plugins if p.name == "autopath")
    for name, rcode in (("google.com", tdns.ENAME), ("google.com.cluster.local", tdns.ENAME),
                        ("web.shop.svc.cluster.local", tdns.OK)):
        sent = Reply(Answer(rcode=rcode), "", "forward", lifetime=30.0)
        assert plugin.serve(_req(name, peer=(NODE_IP, 1)), lambda req, sent=sent: sent) is sent
    # a negative for a namespace that does not exist is kept, until that namespace appears
    assert s.ask("google.com.nowhere.svc.cluster.local", NODE_IP).rcode() == dns.rcode.NXDOMAIN
    assert any(b"nowhere" in k for k in s.disp.fast.entries)
    s.store.upsert("namespaces", *objects.namespace_from_raw(kubeobj.namespace("nowhere")))
    assert not any(b"nowhere" in k for k in s.disp.fast.entries)


def test_without_autopath_the_same_query_is_nxdomain_and_kept() -> None:
    s = Served(autopath=False)
    assert s.ask("google.com.default.svc.cluster.local", POD_IP).rcode() == dns.rcode.NXDOMAIN
    assert any(b"google" in k for k in s.disp.fast.entries)
    assert s.upstream.asked == []


def test_nothing_is_walked_before_the_store_has_synced() -> None:
    s = Served()
    s.store.synced_kinds.discard("services")  # as after start, before the Services list is in
    assert s.ask("google.com.default.svc.cluster.local", POD_IP).rcode() == dns.rcode.SERVFAIL
    assert s.upstream.asked == []


def test_a_pod_that_left_is_no_longer_walked_for() -> None:
    s = Served(pods="disabled")  # autopath alone: Pods watched, pod answers still off
    assert _rrs(s.ask("google.com.default.svc.cluster.local", POD_IP))[0].endswith("CNAME google.com.")
    s.store.delete("pods", "default/client")
    assert s.ask("google.com.default.svc.cluster.local", POD_IP).rcode() == dns.rcode.NXDOMAIN


# -- config ---------------------------------------------------------------------------------------
def _yaml(extra: str, kube: bool = True) -> str:
    k = "    kubernetes: {zones: [cluster.local], manifests: null, pods: insecure}\n" if kube else \
        "    forward: {to: ['127.0.0.1:53']}\n"
    return f"servers:\n  - zones: ['.']\n    listen: '127.0.0.1:1053'\n{k}{extra}"


def test_yaml_config(tmp_path: Path) -> None:
    node = tmp_path / "node-resolv.conf"
    node.write_text("search c.project.internal google.internal\n")
    b = parse(_yaml(f"    autopath: {{resolv_conf: '@kubernetes', node_resolv_conf: '{node}'}}\n")).servers[0]
    assert b.autopath == AutopathConfig((), True, ("c.project.internal", "google.internal"), "@kubernetes")
    assert "pods" in b.kubernetes.resources()  # autopath @kubernetes watches Pods, as pods verified
    assert b.kubernetes.pods == "insecure"
    b = parse(_yaml("    autopath: '@kubernetes'\n")).servers[0]
    assert b.autopath is not None and b.autopath.kubernetes
    rc = tmp_path / "search.conf"
    rc.write_text("search example.org example.com com\n")
    b = parse(_yaml(f"    autopath: {{resolv_conf: '{rc}', zones: [example.org]}}\n", kube=False)).servers[0]
    assert b.autopath == AutopathConfig(("example.org",), False, SEARCH, str(rc))
    assert "pods" not in parse(_yaml("")).servers[0].kubernetes.resources()


@pytest.mark.parametrize(("extra", "kube", "message"), [
    ("    autopath: '@etcd'\n", True, '"@kubernetes"'),
    ("    autopath: '@kubernetes'\n", False, "a kubernetes key in the same block"),
    ("    autopath: /nonexistent/resolv.conf\n", True, "a readable resolv.conf file"),
    ("    autopath: 5\n", True, "RESOLV-CONF"),
    ("    autopath: {resolv_conf: '@kubernetes', node_resolv_conf: /nonexistent}\n", True, "readable resolv.conf"),
    ("    autopath: {resolv_conf: '@kubernetes', search: [a]}\n", True, "search"),
])
def test_yaml_errors(extra: str, kube: bool, message: str) -> None:
    with pytest.raises(ConfigError, match="autopath") as e:
        parse(_yaml(extra, kube))
    assert message in str(e.value) and "\n" not in str(e.value)


def test_corefile(tmp_path: Path) -> None:
    cf = tmp_path / "Corefile"
    cf.write_text(".:1053 {\n    autopath @kubernetes\n    kubernetes cluster.local {\n        pods verified\n"
                  "    }\n    forward . 127.0.0.1\n}\n")
    b = parse_corefile_config(cf.read_text(), str(cf)).servers[0]
    assert b.autopath is not None and b.autopath.kubernetes and b.autopath.zones == ()
    rc = tmp_path / "my-resolv.conf"
    rc.write_text("search example.org example.com com\n")
    cf.write_text(f".:1053 {{\n    autopath example.org {rc}\n    forward . 127.0.0.1\n}}\n")
    b = parse_corefile_config(cf.read_text(), str(cf)).servers[0]
    assert b.autopath == AutopathConfig(("example.org",), False, SEARCH, str(rc))
    cf.write_text(".:1053 {\n    autopath\n    forward . 127.0.0.1\n}\n")
    with pytest.raises(Exception, match=r"Corefile:2: autopath: expected \[ZONE\.\.\.\] RESOLV-CONF"):
        parse_corefile_config(cf.read_text(), str(cf))
    cf.write_text(".:1053 {\n    autopath @kubernetes\n    forward . 127.0.0.1\n}\n")
    with pytest.raises(Exception, match="Corefile:2: autopath"):
        parse_corefile_config(cf.read_text(), str(cf))


# -- a running server over loopback: the Pod is 127.0.0.5 -------------------------------------------
def test_running_server_walks_for_a_pod_on_loopback(kubedns_process: Any, tmp_path: Path) -> None:
    """A real ``twistd kubedns`` with ``autopath @kubernetes`` and a real forward to a
    tests/dnsupstream.py server; the Pod's IP is a loopback address the client sends from."""
    import dns.query

    from tests.conftest import free_port, http_get
    from tests.dnsupstream import DNSUpstream

    pod_ip = "127.0.0.5"
    cluster = tmp_path / "cluster.yaml"
    import yaml

    cluster.write_text(yaml.safe_dump_all([
        kubeobj.namespace("default"),
        kubeobj.service("kubernetes", "default", cluster_ip="10.96.0.1"),
        kubeobj.pod("client", "default", pod_ip),
    ]))
    node_rc = tmp_path / "node-resolv.conf"
    node_rc.write_text("search corp.example\n")
    with DNSUpstream(host="127.0.0.1") as up:
        up.add("google.com", "A", "192.0.2.80", ttl=120).set_soa("com")
        port, mport = free_port(), free_port()
        p = kubedns_process({"servers": [{
            "zones": ["."], "listen": f"127.0.0.1:{port}",
            "kubernetes": {"zones": ["cluster.local"], "manifests": str(cluster), "pods": "disabled"},
            "autopath": {"resolv_conf": "@kubernetes", "node_resolv_conf": str(node_rc)},
            "forward": {"to": [up.address]}, "cache": {"ttl": 30}, "prometheus": f"127.0.0.1:{mport}",
        }]})
        p.wait_listening(port)

        def ask(src: str) -> dns.message.Message:
            q = dns.message.make_query("google.com.default.svc.cluster.local", "A")
            return dns.query.udp(q, "127.0.0.1", port=port, source=src, timeout=3)

        for _ in range(3):  # the Pod's answer is never replaced by one kept for someone else
            r = ask(pod_ip)
            cname, a = r.answer  # the CNAME carries the TTL of the record it points at (the cache's)
            assert (cname.name.to_text(), cname[0].target.to_text()) == ("google.com.default.svc.cluster.local.",
                                                                         "google.com."), p.log()
            assert a.name.to_text() == "google.com." and a[0].address == "192.0.2.80"
            assert cname.ttl == a.ttl <= 30
            assert ask("127.0.0.1").rcode() == dns.rcode.NXDOMAIN  # not a Pod: the name as asked
        assert up.count("google.com.corp.example", "A") == 1  # the node's search domain was tried once
        status, text = http_get(mport, "/metrics")
        assert status == 200
        assert f'coredns_autopath_success_total{{server="dns://127.0.0.1:{port}"}} 3.0' in text


def test_turning_autopath_on_watches_pods_from_a_new_store() -> None:
    """``autopath @kubernetes`` needs the Pod index: a reload turning it on or off makes a store
    that watches Pods (or not), as turning ``pods verified`` on does (kubedns.stores)."""
    plain, with_ap = KubernetesConfig(pods="insecure"), KubernetesConfig(pods="insecure", autopath=True)
    assert "pods" not in plain.resources() and "pods" in with_ap.resources()
    assert plain.watch_key() != with_ap.watch_key()
    assert with_ap.watch_key() == KubernetesConfig(pods="verified", autopath=True).watch_key()
