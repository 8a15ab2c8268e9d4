"""A Corefile as ``--config``, in a real ``twistd`` process: kubeadm's default serving a cluster.

kubeadm's default Corefile (``tests/corefiles/real/kubeadm/Corefile``, the same bytes as
``conf/Corefile`` without its comment) runs with the fewest edits a test needs, each checked to
apply exactly once: its port and a ``bind`` on loopback, ``kubeconfig`` for the
``tests/fakeapi.py`` API server, the HTTP endpoints on free loopback ports, and ``forward`` to a
``tests/dnsupstream.py`` upstream on 127.0.0.x instead of ``/etc/resolv.conf``.  The YAML
config of the same setup is started beside it and every query of the record table
(``tests/support/records_table.py``) must get the same answer from both.  Reload (SIGHUP and the
``reload`` plugin) re-reads files the Corefile imports.
"""

from __future__ import annotations

import copy
import signal
import subprocess
from pathlib import Path
from typing import Any

import dns.message
import dns.rcode
import pytest

from kubedns.config import load
from kubedns.corefile import SUPPORTED
from kubedns.k8s import objects
from kubedns.k8s.store import Store
from kubedns.serve.workers import TWISTD
from tests import fakeapi
from tests.conftest import REPO, KubeDNSProcess, free_port, http_get, query, wait_for
from tests.dnsupstream import DNSUpstream
from tests.support import kubeobj

KUBEADM = Path(__file__).resolve().parent / "corefiles" / "real" / "kubeadm" / "Corefile"


def _edit(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, f"the kubeadm Corefile no longer has {old!r} exactly once"
    return text.replace(old, new)


def _kubeadm_for_test(port: int, kubeconfig: str, upstream: str, http: tuple[int, int, int]) -> str:
    text = KUBEADM.read_text()
    text = _edit(text, ".:53 {\n", f".:{port} {{\n    bind 127.0.0.1\n")
    text = _edit(text, "    health {\n", f"    health 127.0.0.1:{http[0]} {{\n")
    text = _edit(text, "    ready\n", f"    ready 127.0.0.1:{http[1]}\n")
    text = _edit(text, "       pods insecure\n", f"       pods insecure\n       kubeconfig {kubeconfig}\n")
    text = _edit(text, "    prometheus :9153\n", f"    prometheus 127.0.0.1:{http[2]}\n")
    return _edit(text, "forward . /etc/resolv.conf {", f"forward . {upstream} {{")


def _real_for_test(name: str, d: Path, port: int, kubeconfig: str, upstream: str, http: tuple[int, int, int]) -> Path:
    """A copy of a real default Corefile's folder in ``d`` with the same edits as kubeadm's: its
    port and a bind on loopback, the HTTP endpoints on free ports, the fake API's kubeconfig,
    forward to the loopback upstream, /etc/coredns/ paths into ``d``."""
    import shutil

    shutil.copytree(KUBEADM.parent.parent / name, d)
    text = (d / "Corefile").read_text().replace("/etc/coredns/", f"{d}/")
    text = _edit(text, ".:53 {\n", f".:{port} {{\n    bind 127.0.0.1\n")
    if "    health {\n" in text:
        text = _edit(text, "    health {\n", f"    health 127.0.0.1:{http[0]} {{\n")
    else:
        text = _edit(text, "    health\n", f"    health 127.0.0.1:{http[0]}\n")
    text = _edit(text, "    ready\n", f"    ready 127.0.0.1:{http[1]}\n")
    text = _edit(text, "kubernetes cluster.local in-addr.arpa ip6.arpa {\n",
                 f"kubernetes cluster.local in-addr.arpa ip6.arpa {{\n      kubeconfig {kubeconfig}\n")
    text = _edit(text, "    prometheus :9153\n", f"    prometheus 127.0.0.1:{http[2]}\n")
    text = _edit(text, "forward . /etc/resolv.conf", f"forward . {upstream}")
    (d / "Corefile").write_text(text)
    for f in d.glob("custom/*.server"):  # AKS's stub domain: on the test port, to the test upstream
        f.write_text(f.read_text().replace(":53 {", f":{port} {{\n    bind 127.0.0.1")
                     .replace("forward . 192.0.2.53", f"forward . {upstream}"))
    return d / "Corefile"


def _kubeadm_yaml(port: int, kubeconfig: str, upstream: str, http: tuple[int, int, int]) -> dict[str, Any]:
    """The same server as YAML (the ConfigMap alternative in conf/kubernetes, key for key)."""
    return {"servers": [{
        "zones": ["."],
        "listen": f"127.0.0.1:{port}",
        "errors": {},
        "health": {"listen": f"127.0.0.1:{http[0]}", "lameduck": "5s"},
        "ready": f"127.0.0.1:{http[1]}",
        "kubernetes": {"zones": ["cluster.local", "in-addr.arpa", "ip6.arpa"], "pods": "insecure", "ttl": 30,
                       "fallthrough": ["in-addr.arpa", "ip6.arpa"], "kubeconfig": kubeconfig},
        "prometheus": f"127.0.0.1:{http[2]}",
        "forward": {"to": [upstream], "max_concurrent": 1000},
        "cache": {"ttl": 30, "disable": {"success": ["cluster.local"], "denial": ["cluster.local"]}},
        "loop": {},
        "reload": {},
        "loadbalance": "round_robin",
    }]}


def _record_table_objects() -> list[dict[str, Any]]:
    """The objects the record table is answered from, as API objects for the fake API."""
    from tests.support import records_table

    raws: list[dict[str, Any]] = []
    with pytest.MonkeyPatch.context() as mp:
        for name in ("namespace_from_raw", "service_from_raw", "endpointslice_from_raw", "pod_from_raw"):
            orig = getattr(objects, name)

            def spy(raw: dict[str, Any], _orig: Any = orig) -> Any:
                raws.append(copy.deepcopy(raw))
                return _orig(raw)

            mp.setattr(objects, name, spy)
        records_table.fill(Store(required=("namespaces", "services", "endpointslices", "pods")))
    return raws


@pytest.fixture
def start(tmp_path: Path):
    """``start(config, name="Corefile", env=None)``: a kubedns process on a Corefile (text) or a
    YAML config (dict), each in its own folder; all are stopped after the test."""
    procs: list[KubeDNSProcess] = []

    def run(config: str | dict[str, Any], name: str = "Corefile", env: dict[str, str] | None = None) -> KubeDNSProcess:
        d = tmp_path / f"proc{len(procs)}"
        d.mkdir()
        p = KubeDNSProcess(config, d, env)
        if isinstance(config, str):
            p.config_path.unlink()
            p.config_path = d / name
            p.write_config(config)
        procs.append(p.start())
        return p

    yield run
    for p in procs:
        p.stop()


def _answer(port: int, qname: str, qtype: Any, tcp: bool = False) -> tuple[str, list[list[str]]]:
    r = query(port, qname, qtype, tcp=tcp)

    def line(text: str) -> str:
        # the SOA serial is when this server's store last changed (two servers listing the same
        # cluster a second apart differ, as CoreDNS replicas do): compare all but that number
        f = text.split()
        return " ".join(f[:6] + ["SERIAL"] + f[7:]) if len(f) == 11 and f[3] == "SOA" else text

    # loadbalance shuffles record order: compare each section as a sorted list
    return dns.rcode.to_text(r.rcode()), [sorted(line(t) for rrset in sec for t in rrset.to_text().splitlines())
                                        for sec in (r.answer, r.authority, r.additional)]


@pytest.fixture
def cluster(tmp_path: Path):
    with fakeapi.FakeKubeAPI() as api:
        api.load(_record_table_objects())
        with DNSUpstream(host="127.0.0.7") as up:
            up.add("www.example.com", "A", "192.0.2.1")
            up.add("outside.example", "A", "192.0.2.7")
            yield api, up, kubeobj.kubeconfig(tmp_path / "kubeconfig", api.url)


def test_kubeadm_default_corefile_serves_the_cluster_and_forwards(cluster, start) -> None:
    api, up, kc = cluster
    port, http = free_port(), (free_port(), free_port(), free_port())
    p = start(_kubeadm_for_test(port, kc, up.address, http))
    p.wait_listening(port)
    wait_for(lambda: http_get(http[1], "/ready")[0] == 200, timeout=20)
    assert http_get(http[0], "/health")[0] == 200
    assert "kubedns" in p.log() and "Corefile" in p.log()
    r = query(port, "nginx.default.svc.cluster.local", "A")
    assert [rr.to_text() for rr in r.answer] == ["nginx.default.svc.cluster.local. 30 IN A 10.96.0.100"]  # ttl 30
    assert query(port, "missing.default.svc.cluster.local", "A").rcode() == dns.rcode.NXDOMAIN
    assert query(port, "100.0.96.10.in-addr.arpa", "PTR").answer[0][0].to_text() == "nginx.default.svc.cluster.local."
    r = query(port, "outside.example", "A")
    assert r.answer[0][0].to_text() == "192.0.2.7" and up.count("outside.example", "A") == 1
    query(port, "outside.example", "A")
    assert up.count("outside.example", "A") == 1  # cache 30: the second answer came from the cache
    code, body = http_get(http[2], "/metrics")
    assert code == 200 and "coredns_dns_requests_total" in body


@pytest.mark.parametrize("name", ["eks", "aks", "k3s"])
def test_managed_cluster_defaults_serve_the_cluster_and_forward(cluster, tmp_path: Path, name: str) -> None:
    """EKS's, AKS's (its custom/ imports: a log.override, a stub domain in test.server) and
    k3s's (hosts /etc/coredns/NodeHosts) default Corefiles, each as a real process."""
    api, up, kc = cluster
    up.add("www.abc.com", "A", "192.0.2.53")
    port, http = free_port(), (free_port(), free_port(), free_port())
    core = _real_for_test(name, tmp_path / name, port, kc, up.address, http)
    (core.parent / "NodeHosts").write_text("172.18.0.2 k3s-server\n")
    p = KubeDNSProcess(core.read_text(), core.parent)
    p.config_path.unlink()
    p.config_path = core
    p.start()
    try:
        p.wait_listening(port)
        wait_for(lambda: http_get(http[1], "/ready")[0] == 200, timeout=20)
        r = query(port, "nginx.default.svc.cluster.local", "A")
        assert [rr.to_text() for rr in r.answer[0]] == ["10.96.0.100"]
        assert query(port, "outside.example", "A").answer[0][0].to_text() == "192.0.2.7"
        if name == "aks":
            assert query(port, "www.abc.com", "A").answer[0][0].to_text() == "192.0.2.53"
            assert "outside.example" in p.log()  # log.override: queries are logged
        if name == "k3s":
            assert query(port, "k3s-server", "A").answer[0][0].to_text() == "172.18.0.2"
            assert query(port, "2.0.18.172.in-addr.arpa", "PTR").answer[0][0].to_text() == "k3s-server."
    finally:
        p.stop()


def test_yaml_and_corefile_of_one_setup_answer_alike(cluster, start, tmp_path: Path) -> None:
    """Every query of the record table gets the same answer from both syntaxes of one setup."""
    from tests.support.records_table import TABLE

    api, up, kc = cluster
    ports = free_port(), free_port()
    https = [(free_port(), free_port(), free_port()) for _ in range(2)]
    core_text = _kubeadm_for_test(ports[0], kc, up.address, https[0])
    yaml_cfg = _kubeadm_yaml(ports[1], kc, up.address, https[1])
    # as config objects, the two are one apart from their ports
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "Corefile").write_text(core_text)
    from_core = load(str(tmp_path / "c" / "Corefile"))
    same_ports = _kubeadm_yaml(ports[0], kc, up.address, https[0])
    import yaml

    (tmp_path / "c" / "same.yaml").write_text(yaml.safe_dump(same_ports))
    assert from_core.servers == load(str(tmp_path / "c" / "same.yaml")).servers
    core, yml = start(core_text), start(yaml_cfg)
    for p, port in ((core, ports[0]), (yml, ports[1])):
        p.wait_listening(port)
    for _h, r, _m in https:
        wait_for(lambda r=r: http_get(r, "/ready")[0] == 200, timeout=20)
    compared = 0
    for qname, qtype, _rcode, _answers in TABLE:
        for tcp in (False, True):
            assert _answer(ports[0], qname, qtype, tcp) == _answer(ports[1], qname, qtype, tcp), (qname, qtype, tcp)
            compared += 1
    assert compared == 2 * len(TABLE) >= 80


def test_reload_plugin_and_sighup_reread_imported_files(start, tmp_path: Path) -> None:
    """A server block added by a new file matching ``import custom/*.server`` is served after the
    ``reload`` plugin's next check; an edit to it is served after SIGHUP."""
    with DNSUpstream(host="127.0.0.8") as main_up, DNSUpstream(host="127.0.0.9") as stub_up:
        main_up.add("www.stub.example", "A", "192.0.2.8")
        stub_up.add("www.stub.example", "A", "192.0.2.9")
        stub_up.add("www.stub.example", "AAAA", "2001:db8::9")
        port = free_port()
        core = (
            f".:{port} {{\n    bind 127.0.0.1\n    forward . {main_up.address}\n    reload 2s\n"
            "    import custom/*.override\n}\nimport custom/*.server\n"
        )
        p = start(core)
        d = p.config_path.parent
        (d / "custom").mkdir()
        p.wait_listening(port)
        assert query(port, "www.stub.example", "A").answer[0][0].to_text() == "192.0.2.8"
        (d / "custom" / "stub.server").write_text(
            f"stub.example:{port} {{\n    bind 127.0.0.1\n    forward . {stub_up.address}\n}}\n")
        wait_for(lambda: query(port, "www.stub.example", "A").answer[0][0].to_text() == "192.0.2.9", timeout=15)
        # an imported file with an error is rejected naming its file and line; the old config serves on
        (d / "custom" / "bad.override").write_text("cache 30 {\n    servfail 10m\n}\n")
        wait_for(lambda: "custom/bad.override:2: cache: servfail" in p.log(), timeout=15)
        assert query(port, "www.stub.example", "A").answer[0][0].to_text() == "192.0.2.9"
        (d / "custom" / "bad.override").unlink()
        (d / "custom" / "stub.server").write_text(
            f"stub.example:{port} {{\n    bind 127.0.0.1\n    forward . {main_up.address}\n}}\n")
        p.signal(signal.SIGHUP)
        wait_for(lambda: query(port, "www.stub.example", "A").answer[0][0].to_text() == "192.0.2.8", timeout=15)


def test_invalid_corefile_stops_the_start_with_one_line(tmp_path: Path) -> None:
    core = tmp_path / "Corefile"
    core.write_text(".:53 {\n    errors\n    etcd example.org\n    forward . 127.0.0.1:5300\n}\n")
    r = subprocess.run([*TWISTD, "-n", "--pidfile=", "kubedns", "--config", str(core)], cwd=REPO,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [
        f"kubedns: invalid config: {core}:3: etcd: expected a plugin kubedns has ({', '.join(SUPPORTED)}); "
        "'etcd' is not one"
    ]


def test_env_substitution_sets_the_port_and_upstream(start) -> None:
    with DNSUpstream(host="127.0.0.10") as up:
        up.add("env.example", "A", "192.0.2.10")
        port = free_port()
        p = start(".:{$TEST_PORT} {\n    bind 127.0.0.1\n    forward . {$TEST_UPSTREAM}\n}\n",
                  env={"TEST_PORT": str(port), "TEST_UPSTREAM": up.address})
        p.wait_listening(port)
        assert query(port, "env.example", "A").answer[0][0].to_text() == "192.0.2.10"
        assert up.count("env.example", "A") >= 1


def test_cache_disable_leaves_those_zones_uncached(start) -> None:
    """kubeadm's ``cache 30 { disable success|denial ZONE }``: answers for ZONE always go upstream
    (neither the cache nor the pre-encoded fast path keeps them); other names are cached."""
    with DNSUpstream(host="127.0.0.11") as up:
        up.add("www.nocache.example", "A", "192.0.2.11")
        up.add("www.cached.example", "A", "192.0.2.12")
        up.set_soa("nocache.example")
        port = free_port()
        p = start(f".:{port} {{\n    bind 127.0.0.1\n    forward . {up.address}\n    cache 30 {{\n"
                  "       disable success nocache.example\n       disable denial nocache.example\n    }\n}\n")
        p.wait_listening(port)
        for _ in range(3):
            assert query(port, "www.nocache.example", "A").answer[0][0].to_text() == "192.0.2.11"
            assert query(port, "nx.nocache.example", "A").rcode() == dns.rcode.NXDOMAIN
            assert query(port, "www.cached.example", "A").answer[0][0].to_text() == "192.0.2.12"
        assert up.count("www.nocache.example", "A") == 3
        assert up.count("nx.nocache.example", "A") == 3
        assert up.count("www.cached.example", "A") == 1
