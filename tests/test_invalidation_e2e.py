"""The real process under changes: a changed name answers anew, nothing stale survives.

``twistd kubedns`` watches tests/fakeapi.py; the test keeps answers in its fast path (repeated UDP
queries), changes other Services many times, then the queried ones, and checks over real UDP and
TCP that the changed names answer with the new data, once and for all (never the old data again),
and that kept negative answers carry the store's current SOA serial.
"""

from __future__ import annotations

from pathlib import Path

import dns.rcode
import pytest

from tests import fakeapi
from tests.conftest import free_port, query, rrset_text, wait_for
from tests.support import kubeobj

pytestmark = pytest.mark.timeout(90)

Z = "cluster.local"
WEB = f"web.default.svc.{Z}"
NX = f"nosuch.default.svc.{Z}"


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)


def _web(ip: str) -> dict:
    return kubeobj.service("web", "default", cluster_ip=ip, ports=[{"name": "http", "port": 80, "protocol": "TCP"}])


def _other(port: int) -> dict:
    return kubeobj.service("other", "default", cluster_ip="10.96.2.2", ports=[{"name": "http", "port": port, "protocol": "TCP"}])


def _serial(msg: dns.message.Message) -> int:
    return (msg.authority or msg.answer)[0][0].serial


def test_changed_names_answer_anew_and_negatives_follow_the_serial(kubedns_process, tmp_path: Path) -> None:
    with fakeapi.FakeKubeAPI() as api:
        api.load([kubeobj.namespace("default"), _web("10.96.1.1"), _other(80)])
        port = free_port()
        kc = kubeobj.kubeconfig(tmp_path / "kubeconfig", api.url)
        p = kubedns_process({"servers": [{
            "zones": ["."], "listen": f"127.0.0.1:{port}",
            "kubernetes": {"zones": [Z, "in-addr.arpa"], "kubeconfig": kc, "ttl": 5},
        }]}, env={"NO_PROXY": "127.0.0.1"})
        p.wait_listening(port)
        wait_for(lambda: rrset_text(query(port, WEB)) == [f"{WEB} A 10.96.1.1"])
        asked = [(WEB, "A"), (NX, "A"), ("1.1.96.10.in-addr.arpa", "PTR"), ("9.1.96.10.in-addr.arpa", "PTR"), (Z, "SOA")]
        for _ in range(3):  # kept by the fast path
            for name, t in asked:
                query(port, name, t)
        for i in range(10):  # changes to a name nobody asks for
            api.update("services", _other(81 + i))
        wait_for(lambda: query(port, f"_http._tcp.other.default.svc.{Z}", "SRV").answer[0][0].port == 90)
        assert rrset_text(query(port, WEB)) == [f"{WEB} A 10.96.1.1"]
        nx, nx_tcp, apex = query(port, NX), query(port, NX, tcp=True), query(port, Z, "SOA")
        assert nx.rcode() == dns.rcode.NXDOMAIN
        assert _serial(nx) == _serial(nx_tcp) == _serial(apex)  # kept negatives follow the serial
        api.update("services", _web("10.96.1.9"))
        wait_for(lambda: rrset_text(query(port, WEB)) == [f"{WEB} A 10.96.1.9"])
        for _ in range(3):  # from now on only the new data, on both paths and for its PTRs
            for tcp in (False, True):
                assert rrset_text(query(port, WEB, tcp=tcp)) == [f"{WEB} A 10.96.1.9"]
                assert query(port, "1.1.96.10.in-addr.arpa", "PTR", tcp=tcp).rcode() == dns.rcode.NXDOMAIN
                ptr = query(port, "9.1.96.10.in-addr.arpa", "PTR", tcp=tcp)
                assert rrset_text(ptr) == [f"9.1.96.10.in-addr.arpa PTR {WEB}."]
        assert _serial(query(port, NX)) == _serial(query(port, Z, "SOA", tcp=True))
