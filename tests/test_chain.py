"""The plugin chain: CoreDNS's order whatever the order given, REFUSED at the end, answers now or
later, transformed on the way back; and the server's dispatch going through it.

Pure-logic checks of :mod:`kubedns.plugins.base` with small recording plugins, then a real
Dispatcher over a filled store (the real kubernetes plugin, the real UDP protocol class) whose
block chain gets a recording plugin after ``kubernetes``: what the cluster answers never reaches
it, a name outside the cluster zones does, and a ``fallthrough`` miss goes on to it, or comes
back as the cluster's NXDOMAIN when nobody after serves the name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dns.message
import dns.rcode
import pytest
from twisted.internet import defer, task
from twisted.names import dns as tdns

from kubedns.config import KubernetesConfig, ServerBlock
from kubedns.configbase import Address
from kubedns.dns.query import Request
from kubedns.dns.records import Answer, ClusterZones
from kubedns.dns.wire import parse_question
from kubedns.k8s import objects
from kubedns.k8s.store import Store
from kubedns.plugins.base import END, ORDER, Reply, build_chain, refused, then, unserved
from kubedns.serve.protocols import DNSDatagramProtocol
from kubedns.serve.server import Block, Dispatcher
from tests.support import kubeobj


class Recorder:
    """A plugin that records that it ran, then answers (``answer``) or passes on."""

    def __init__(self, name: str, trail: list[str], answer: int | None = None, later: bool = False):
        self.name = name
        self.trail = trail
        self.answer = answer
        self.later = later
        self.deferreds: list[defer.Deferred] = []

    def serve(self, req: Request, next: Any) -> Any:  # noqa: A002
        self.trail.append(self.name)
        if self.answer is None:
            return then(next(req), self._mark)
        reply = Reply(Answer(rcode=self.answer), "", self.name)
        if self.later:
            d: defer.Deferred = defer.Deferred()
            self.deferreds.append(d)
            d.callback(reply)
            return d
        return reply

    def _mark(self, r: Reply) -> Reply:
        self.trail.append(f"<{self.name}")
        return r


def _req(name: str = "a.example.org") -> Request:
    q = dns.message.make_query(name, "A", use_edns=False)
    data = q.to_wire()
    pq = parse_question(data)
    assert pq is not None
    return Request(pq, data[12:pq.end], None, 512, "udp", None, 0.0, data, None, lname=name.lower())


def test_order_is_corednss_whatever_the_order_given() -> None:
    trail: list[str] = []
    given = [Recorder(n, trail) for n in ("forward", "loop", "kubernetes", "hosts", "cache", "loadbalance", "log")]
    r = build_chain(given)(_req())
    assert trail[:7] == ["log", "loadbalance", "cache", "hosts", "kubernetes", "loop", "forward"]
    assert trail[7:] == ["<forward", "<loop", "<kubernetes", "<hosts", "<cache", "<loadbalance", "<log"]
    assert unserved(r) and r.answer.rcode == tdns.EREFUSED and not r.answer.authoritative


def test_order_matches_plugin_cfg_positions() -> None:
    """The plugins kubedns has, in CoreDNS's plugin.cfg order (coredns/coredns master)."""
    ours = ["reload", "bind", "debug", "ready", "health", "prometheus", "errors", "log", "loadbalance", "cache",
            "hosts", "kubernetes", "loop", "forward"]
    assert sorted(ours, key=ORDER.index) == ours
    assert len(set(ORDER)) == len(ORDER)


def test_first_answer_wins_and_the_rest_never_run() -> None:
    trail: list[str] = []
    chain = build_chain([Recorder("forward", trail), Recorder("kubernetes", trail, answer=tdns.ENAME),
                         Recorder("loadbalance", trail)])
    r = chain(_req())
    assert r.plugin == "kubernetes" and r.answer.rcode == tdns.ENAME
    assert trail == ["loadbalance", "kubernetes", "<loadbalance"]


def test_answers_later_are_transformed_on_the_way_back() -> None:
    trail: list[str] = []
    chain = build_chain([Recorder("forward", trail, answer=tdns.OK, later=True), Recorder("log", trail)])
    d = chain(_req())
    assert isinstance(d, defer.Deferred)
    got: list[Reply] = []
    d.addCallback(got.append)
    assert got[0].plugin == "forward" and trail == ["log", "forward", "<log"]


def test_an_unknown_plugin_has_no_place() -> None:
    class Odd:
        name = "nonesuch"

        def serve(self, req: Request, next: Any) -> Any:  # noqa: A002
            return next(req)

    with pytest.raises(ValueError, match="nonesuch"):
        build_chain([Odd()])


def test_empty_chain_refuses() -> None:
    r = build_chain([])(_req())
    assert r.plugin == END and r.answer.rcode == tdns.EREFUSED
    assert refused(_req()).answer.rcode == tdns.EREFUSED


# -- the dispatcher over a real store ------------------------------------------------------------
def _store() -> Store:
    store = Store(required=("namespaces", "services", "endpointslices"))
    store.upsert("namespaces", *objects.namespace_from_raw(kubeobj.namespace("default")))
    store.upsert("services", *objects.service_from_raw(kubeobj.service("web", "default", cluster_ip="10.96.0.7")))
    for kind in store.required:
        store.mark_synced(kind)
    return store


class _Sock:
    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def sendto(self, data: bytes, addr: Any) -> None:
        self.sent.append(data)


def _served(fallthrough: tuple[str, ...], after: Recorder | None) -> tuple[Dispatcher, DNSDatagramProtocol, _Sock]:
    kcfg = KubernetesConfig(zones=("cluster.local",), fallthrough=fallthrough)
    block = Block(ServerBlock(zones=("",), listen=Address("127.0.0.1", 53), kubernetes=kcfg),
                  ClusterZones(_store(), kcfg))
    if after is not None:
        block.serve = build_chain([*block.plugins, after])
    disp = Dispatcher("dns://127.0.0.1:53", [block], reactor=task.Clock())
    proto = DNSDatagramProtocol(disp)

    class _Tr:
        socket = _Sock()

    proto.transport = _Tr()
    proto.startProtocol()
    return disp, proto, _Tr.socket


def _ask(proto: DNSDatagramProtocol, sock: _Sock, name: str) -> dns.message.Message:
    proto.datagramReceived(dns.message.make_query(name, "A").to_wire(), ("127.0.0.1", 5353))
    return dns.message.from_wire(sock.sent[-1])


def test_cluster_answers_never_reach_the_plugins_after_kubernetes() -> None:
    trail: list[str] = []
    _, proto, sock = _served((), Recorder("forward", trail, answer=tdns.OK))
    r = _ask(proto, sock, "web.default.svc.cluster.local")
    assert r.answer[0][0].address == "10.96.0.7" and trail == []
    r = _ask(proto, sock, "missing.default.svc.cluster.local")  # NXDOMAIN, no fallthrough: final
    assert r.rcode() == dns.rcode.NXDOMAIN and trail == []
    r = _ask(proto, sock, "www.example.org")  # not a cluster name: on down the chain
    assert r.rcode() == dns.rcode.NOERROR and trail == ["forward"]


def test_fallthrough_goes_on_and_comes_back_when_nobody_serves() -> None:
    trail: list[str] = []
    _, proto, sock = _served(("cluster.local",), Recorder("forward", trail, answer=tdns.OK))
    r = _ask(proto, sock, "missing.default.svc.cluster.local")
    assert r.rcode() == dns.rcode.NOERROR and trail == ["forward"]  # the next plugin answered
    _, proto, sock = _served(("cluster.local",), None)
    r = _ask(proto, sock, "missing.default.svc.cluster.local")  # nobody after: the cluster's NXDOMAIN
    assert r.rcode() == dns.rcode.NXDOMAIN and r.authority[0].rdtype == 6  # with its SOA


def test_a_failing_deferred_answers_servfail() -> None:
    class Broken:
        name = "forward"

        def serve(self, req: Request, next: Any) -> Any:  # noqa: A002
            return defer.fail(RuntimeError("boom"))

    disp, proto, sock = _served((), None)
    disp.blocks[0].serve = build_chain([*disp.blocks[0].plugins, Broken()])
    r = _ask(proto, sock, "www.example.org")
    assert r.rcode() == dns.rcode.SERVFAIL


def test_query_records_live_below_the_server() -> None:
    """QueryInfo and Request come from kubedns.dns.query; nothing imports them from server.py."""
    root = Path(__file__).resolve().parent.parent / "kubedns"
    for path in root.rglob("*.py"):
        text = path.read_text()
        assert "from kubedns.serve.server import QueryInfo" not in text and "from kubedns.serve.server import Request" not in text, path
