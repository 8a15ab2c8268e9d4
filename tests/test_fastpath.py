"""The fast path serves exactly the bytes the slow path would, for every answer kind, ID aside.

A Dispatcher over a filled store is driven through the real UDP protocol class with a capturing
socket: the first query of each kind goes the slow way (decode → records → encode) and is
remembered; the same query with another ID must then be answered from the fast cache (the hit
counter moves, the slow path is not called) with the same bytes but the new ID.  A store change
must drop every pre-encoded answer.
"""

from __future__ import annotations

from typing import Any

import dns.message
import pytest

from kubedns.config import KubernetesConfig, ServerBlock
from kubedns.configbase import Address
from kubedns.k8s import objects
from kubedns.k8s.store import Store
from kubedns.records import ClusterZones
from kubedns.server import Block, Dispatcher, DNSDatagramProtocol
from tests import fakeapi
from tests.test_records import TABLE, _fill


class _Sock:
    def __init__(self) -> None:
        self.sent: list[tuple[bytes, Any]] = []

    def sendto(self, data: bytes, addr: Any) -> None:
        self.sent.append((data, addr))


class _Transport:
    def __init__(self) -> None:
        self.socket = _Sock()

    def write(self, data: bytes, addr: Any) -> None:
        self.socket.sendto(data, addr)


def _setup() -> tuple[Dispatcher, DNSDatagramProtocol, _Transport, Store]:
    store = Store(required=("namespaces", "services", "endpointslices", "pods"))
    _fill(store)
    kcfg = KubernetesConfig(pods="insecure", ttl=5)
    block = Block(ServerBlock(zones=("",), listen=Address("127.0.0.1", 53), kubernetes=kcfg), ClusterZones(store, kcfg))
    disp = Dispatcher("dns://127.0.0.1:53", [block], reactor=object())
    store.add_listener(disp.fast.clear)
    proto = DNSDatagramProtocol(disp)
    tr = _Transport()
    proto.transport = tr
    proto.startProtocol()
    return disp, proto, tr, store


def _wire(qname: str, qtype: int, qid: int, **kw: Any) -> bytes:
    q = dns.message.make_query(qname, qtype, **kw)
    q.id = qid
    return q.to_wire()


KINDS = [(qname, qtype) for qname, qtype, _, _ in TABLE] + [("big.Example.COM", 1)]


@pytest.mark.parametrize("edns", [False, True], ids=["plain", "edns"])
@pytest.mark.parametrize("qname,qtype", KINDS)
def test_fast_bytes_equal_slow_bytes(qname: str, qtype: int, edns: bool) -> None:
    disp, proto, tr, _ = _setup()
    kw = {"use_edns": 0, "payload": 1232} if edns else {"use_edns": False}
    proto.datagramReceived(_wire(qname, qtype, 0x1111, **kw), ("127.0.0.1", 5000))
    slow = tr.socket.sent[-1][0]
    if qname == "big.Example.COM":  # REFUSED (no block serves it): not cached, still answered
        assert not disp.fast.entries
        return
    assert len(disp.fast.entries) == 1
    disp.handle = None  # type: ignore[assignment]  # the slow path must not be reached now
    proto.datagramReceived(_wire(qname, qtype, 0x2222, **kw), ("127.0.0.1", 5001))
    fast = tr.socket.sent[-1][0]
    assert fast[:2] == b"\x22\x22" and slow[:2] == b"\x11\x11"
    assert fast[2:] == slow[2:]
    assert disp.fast.hits() == 1


def test_case_variants_are_separate_entries_and_echo() -> None:
    disp, proto, tr, _ = _setup()
    for name in ("nginx.default.svc.cluster.local", "NGINX.default.svc.cluster.local"):
        proto.datagramReceived(_wire(name, 1, 1), ("127.0.0.1", 5000))
        proto.datagramReceived(_wire(name, 1, 2), ("127.0.0.1", 5000))
        r = dns.message.from_wire(tr.socket.sent[-1][0])
        assert r.answer[0].name.to_text() == name + "."
    assert len(disp.fast.entries) == 2 and disp.fast.hits() == 2


def test_store_change_drops_pre_encoded_answers() -> None:
    disp, proto, tr, store = _setup()
    proto.datagramReceived(_wire("nginx.default.svc.cluster.local", 1, 1), ("127.0.0.1", 5000))
    proto.datagramReceived(_wire("nginx.default.svc.cluster.local", 1, 2), ("127.0.0.1", 5000))
    assert len(disp.fast.entries) == 1
    store.upsert("services", *objects.service_from_raw(fakeapi.service("nginx", "default", cluster_ip="10.96.5.5")))
    assert not disp.fast.entries
    assert sum(disp.fast.retired.values()) == 1  # the hit is kept for metrics
    proto.datagramReceived(_wire("nginx.default.svc.cluster.local", 1, 3), ("127.0.0.1", 5000))
    r = dns.message.from_wire(tr.socket.sent[-1][0])
    assert r.answer[0][0].address == "10.96.5.5"


def test_servfail_before_sync_is_not_cached() -> None:
    store = Store()
    kcfg = KubernetesConfig()
    block = Block(ServerBlock(zones=("",), listen=Address("127.0.0.1", 53), kubernetes=kcfg), ClusterZones(store, kcfg))
    disp = Dispatcher("dns://x", [block], reactor=object())
    proto = DNSDatagramProtocol(disp)
    proto.transport = _Transport()
    proto.startProtocol()
    proto.datagramReceived(_wire("nginx.default.svc.cluster.local", 1, 1), ("127.0.0.1", 5000))
    assert dns.message.from_wire(proto.transport.socket.sent[-1][0]).rcode() == 2
    assert not disp.fast.entries
