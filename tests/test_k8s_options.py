"""The ``kubernetes`` options CoreDNS has and kubedns took on late: what a reload keeps, the label
selector grammar, and each option end to end (a real process, ``tests/fakeapi.py`` over HTTP,
queries over UDP).

The answers themselves are pinned row by row in ``tests/test_records.py`` (``OPTION_TABLE``);
here is what only shows with the moving parts: which reloads keep the running store, what the
API server is asked for, and how the client reaches it.
"""

from __future__ import annotations

import shutil
import signal
import ssl
import subprocess
from pathlib import Path
from typing import Any

import dns.rcode
import pytest
import yaml
from twisted.application import service
from twisted.internet import task

from kubedns import stores
from kubedns.config import Config, parse
from kubedns.k8s import labels
from kubedns.k8s.store import Store
from kubedns.serve.server import Block
from tests import fakeapi
from tests.conftest import free_port, query, rrset_text, wait_for
from tests.support import kubeobj

pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("_no_proxy")]

# -- which reloads keep the store -------------------------------------------------------------------


class _Source(service.Service):
    def __init__(self, store: Store, k8s: Any):
        self.store, self.k8s = store, k8s

    def sync(self) -> None:
        for kind in sorted(self.store.required):
            self.store.mark_synced(kind)


def _config(tmp_path: Any, **k8s: Any) -> Config:
    block = {"zones": ["."], "listen": "127.0.0.1:1053", "kubernetes": {"zones": ["cluster.local"], **k8s}}
    return parse(yaml.safe_dump({"servers": [block]}), str(tmp_path / "x.yaml"))


class _Sources:
    def __init__(self) -> None:
        self.made: list[_Source] = []
        parent = service.MultiService()
        parent.startService()
        self.cs = stores.ClusterSources(parent, self._make, lambda _store: None, task.Clock())
        self.blocks: dict[int, Block] = {}

    def _make(self, store: Store, k8s: Any) -> _Source:
        src = _Source(store, k8s)
        self.made.append(src)
        return src

    def apply(self, config: Config) -> Any:
        plan = self.cs.plan(config)
        self.blocks = {b.index: Block(b, plan.clusters.get(b.index)) for b in config.servers}
        self.cs.commit(plan, self.blocks)
        for src in self.made:
            src.sync()
        return self.blocks[0].clusters


BASE: dict[str, Any] = {"kubeconfig": "/k1", "pods": "insecure"}


@pytest.mark.parametrize("change", [
    {"namespaces": ["default"]},
    {"ignore_empty_service": True},
    {"endpoint_pod_names": True},
    {"namespaces": ["a", "b"], "ignore_empty_service": True, "endpoint_pod_names": True, "ttl": 30},
    {"labels": "app = web"},  # the same selector as the base's "app=web", spelt otherwise
])
def test_options_that_only_change_answers_keep_the_running_store(tmp_path: Any, change: dict[str, Any]) -> None:
    """``namespaces``, ``ignore_empty_service`` and ``endpoint_pod_names`` are applied when
    answering: a reload that changes only them answers from the same store and watch at once."""
    s = _Sources()
    before = s.apply(_config(tmp_path, **BASE, labels="app=web"))
    after = s.apply(_config(tmp_path, **{**BASE, "labels": "app=web", **change}))
    assert len(s.made) == 1 and after.store is before.store
    assert after is not before  # new settings, at once
    for key, value in change.items():
        if key not in ("labels", "ttl"):
            got = getattr(after.config, key)
            assert got == (tuple(value) if isinstance(value, list) else value)


@pytest.mark.parametrize("change", [
    {"labels": "app=db"},
    {"noendpoints": True},
    {"kubeconfig": "/k2"},
    {"context": "other"},
])
def test_options_that_change_what_is_watched_get_a_new_store(tmp_path: Any, change: dict[str, Any]) -> None:
    s = _Sources()
    before = s.apply(_config(tmp_path, **BASE, labels="app=web"))
    after = s.apply(_config(tmp_path, **{**BASE, "labels": "app=web", **change}))
    assert len(s.made) == 2 and after.store is not before.store


def test_endpoint_and_tls_change_what_is_watched(tmp_path: Any) -> None:
    for name in ("a.pem", "b.pem", "k.pem", "ca.pem"):
        (tmp_path / name).write_text("x")
    s = _Sources()
    tls = {"cert": "a.pem", "key": "k.pem", "cacert": "ca.pem"}
    first = s.apply(_config(tmp_path, endpoint="https://127.0.0.1:6443", tls=tls))
    same = s.apply(_config(tmp_path, endpoint=["https://127.0.0.1:6443/"], tls=tls, namespaces=["x"]))
    assert same.store is first.store and len(s.made) == 1
    other_cert = s.apply(_config(tmp_path, endpoint="https://127.0.0.1:6443", tls={**tls, "cert": "b.pem"}))
    assert other_cert.store is not first.store
    other_url = s.apply(_config(tmp_path, endpoint="https://127.0.0.2:6443", tls={**tls, "cert": "b.pem"}))
    assert other_url.store is not other_cert.store and len(s.made) == 3
    # with a kubeconfig the endpoint is not used (CoreDNS), so changing it changes nothing
    a = s.apply(_config(tmp_path, kubeconfig="/k", endpoint="https://127.0.0.1:6443"))
    b = s.apply(_config(tmp_path, kubeconfig="/k", endpoint="https://127.0.0.9:6443"))
    assert a.store is b.store


# -- the label selector grammar ---------------------------------------------------------------------


@pytest.mark.parametrize("text,canonical", [
    ("app=web", "app=web"),
    ("app == web", "app=web"),
    ("app!=web", "app!=web"),
    ("environment in (staging, qa),application=nginx", "application=nginx,environment in (qa,staging)"),
    ("b=2, a=1", "a=1,b=2"),
    ("x in (b, a, b)", "x in (a,b)"),
    ("tier notin(a,b)", "tier notin (a,b)"),
    ("app", "app"),
    ("! legacy", "!legacy"),
    ("example.com/team=dns,app.kubernetes.io/name=x_y.z", "app.kubernetes.io/name=x_y.z,example.com/team=dns"),
    ("app=", "app="),
])
def test_selector_canonical(text: str, canonical: str) -> None:
    assert labels.canonical(text) == canonical


@pytest.mark.parametrize("selector,obj_labels,expected", [
    ("app=web", {"app": "web"}, True),
    ("app=web", {"app": "db"}, False),
    ("app=web", {}, False),
    ("app!=web", {}, True),  # Kubernetes: != and notin match objects without the label
    ("app!=web", {"app": "web"}, False),
    ("tier in (a,b)", {"tier": "b"}, True),
    ("tier in (a,b)", {}, False),
    ("tier notin (a,b)", {}, True),
    ("tier notin (a,b)", {"tier": "a"}, False),
    ("app", {"app": ""}, True),
    ("!app", {"app": ""}, False),
    ("app=web,!legacy", {"app": "web", "legacy": "1"}, False),
    ("app=web,!legacy", {"app": "web"}, True),
])
def test_selector_matches(selector: str, obj_labels: dict[str, str], expected: bool) -> None:
    assert labels.matches(labels.parse(selector), obj_labels) is expected


# -- end to end: a real process, the fake API over real HTTP(S), queries over real UDP --------------



@pytest.fixture
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")


def _server(port: int, **k8s: Any) -> dict[str, Any]:
    return {"servers": [{"zones": ["."], "listen": f"127.0.0.1:{port}",
                         "kubernetes": {"zones": ["cluster.local", "in-addr.arpa"], **k8s}}]}


def _ask(port: int, name: str, rdtype: str = "A") -> tuple[str, list[str]]:
    r = query(port, name, rdtype, timeout=3.0)
    return dns.rcode.to_text(r.rcode()), rrset_text(r)


def _synced(port: int, name: str = "kubernetes.default.svc.cluster.local") -> bool:
    return _ask(port, name)[0] != "SERVFAIL"


CLUSTER = [
    kubeobj.namespace("default"),
    kubeobj.namespace("other"),
    kubeobj.service("kubernetes", "default", cluster_ip="10.96.0.1", labels={"app": "web"}),
    kubeobj.service("web", "default", cluster_ip="10.96.1.1", labels={"app": "web"}),
    kubeobj.service("db", "default", cluster_ip="10.96.1.2", labels={"app": "db"}),
    kubeobj.service("api", "other", cluster_ip="10.96.2.1", labels={"app": "web"}),
    kubeobj.service("hl", "default", headless=True, labels={"app": "web"}),
    # the endpoint slice controller copies a Service's labels onto its slices
    kubeobj.endpointslice("hl-1", "default", "hl", endpoints=[{"addresses": ["10.244.0.1"], "targetRef": "hl-pod-a"}],
                          labels={"app": "web"}),
    # a slice of "hl" the selector leaves out: its endpoint never reaches the store
    kubeobj.endpointslice("hl-2", "default", "hl", endpoints=[{"addresses": ["10.244.0.2"]}], labels={"app": "other"}),
]


def test_labels_select_on_the_api_server_list_and_watch(kubedns_process: Any, tmp_path: Path) -> None:
    """``labels`` goes to the API server as labelSelector on every LIST and WATCH of Services,
    EndpointSlices and Pods (not Namespaces, as CoreDNS); objects that start or stop matching
    come and go through the watch."""
    with fakeapi.FakeKubeAPI() as api:
        api.load(CLUSTER)
        kc = kubeobj.kubeconfig(tmp_path / "kc", api.url)
        port = free_port()
        p = kubedns_process(_server(port, kubeconfig=kc, labels="app in (web)", pods="verified"))
        p.wait_listening(port)
        wait_for(lambda: _synced(port), timeout=30)
        assert _ask(port, "web.default.svc.cluster.local") == ("NOERROR", ["web.default.svc.cluster.local A 10.96.1.1"])
        assert _ask(port, "db.default.svc.cluster.local")[0] == "NXDOMAIN"
        assert _ask(port, "hl.default.svc.cluster.local") == ("NOERROR", ["hl.default.svc.cluster.local A 10.244.0.1"])
        for verb in ("list", "watch"):
            wait_for(lambda verb=verb: all(api.requests[(verb, r)] for r in ("services", "endpointslices", "pods")))
            for rec in [r for r in api.request_log if r.verb == verb]:
                want = None if rec.resource == "namespaces" else "app in (web)"
                assert rec.params.get("labelSelector") == want, rec
        # db starts matching: ADDED on the watch; web stops: DELETED
        db = api.get("services", "default", "db")
        db["metadata"]["labels"] = {"app": "web"}
        api.update("services", db)
        web = api.get("services", "default", "web")
        web["metadata"]["labels"] = {"app": "gone"}
        api.update("services", web)
        wait_for(lambda: _ask(port, "db.default.svc.cluster.local")[0] == "NOERROR")
        wait_for(lambda: _ask(port, "web.default.svc.cluster.local")[0] == "NXDOMAIN")


def test_namespaces_answer_only_for_the_listed_ones_and_a_reload_keeps_the_watch(
    kubedns_process: Any, tmp_path: Path
) -> None:
    with fakeapi.FakeKubeAPI() as api:
        api.load(CLUSTER)
        kc = kubeobj.kubeconfig(tmp_path / "kc", api.url)
        port = free_port()
        p = kubedns_process(_server(port, kubeconfig=kc, namespaces=["default"], ttl=7))
        p.wait_listening(port)
        wait_for(lambda: _synced(port), timeout=30)
        assert _ask(port, "web.default.svc.cluster.local")[0] == "NOERROR"
        assert _ask(port, "api.other.svc.cluster.local")[0] == "NXDOMAIN"
        assert _ask(port, "other.svc.cluster.local")[0] == "NXDOMAIN"
        assert _ask(port, "1.2.96.10.in-addr.arpa", "PTR")[0] == "NXDOMAIN"
        lists = api.requests[("list", "services")]
        p.write_config(_server(port, kubeconfig=kc, namespaces=["default", "other"], ttl=8))
        p.signal(signal.SIGHUP)
        wait_for(lambda: _ask(port, "api.other.svc.cluster.local") == ("NOERROR", ["api.other.svc.cluster.local A 10.96.2.1"]))
        assert _ask(port, "1.2.96.10.in-addr.arpa", "PTR") == ("NOERROR", ["1.2.96.10.in-addr.arpa PTR api.other.svc.cluster.local."])
        assert api.requests[("list", "services")] == lists, "a reload of namespaces only listed again"


def test_endpoint_url_noendpoints_endpoint_pod_names_and_ignore_empty_service(kubedns_process: Any) -> None:
    """``endpoint URL`` without a kubeconfig reaches that API; ``noendpoints`` never asks for an
    EndpointSlice; a reload to endpoint_pod_names + ignore_empty_service (which needs the
    slices: a new store) names endpoints by their Pods and hides empty ClusterIP Services."""
    with fakeapi.FakeKubeAPI() as api:
        api.load(CLUSTER)
        port = free_port()
        p = kubedns_process(_server(port, endpoint=[api.url, "http://127.0.0.1:9"], noendpoints=True))
        p.wait_listening(port)
        wait_for(lambda: _synced(port), timeout=30)
        assert _ask(port, "web.default.svc.cluster.local")[0] == "NOERROR"
        assert _ask(port, "hl.default.svc.cluster.local")[0] == "NXDOMAIN"
        assert _ask(port, "hl-pod-a.hl.default.svc.cluster.local")[0] == "NXDOMAIN"
        assert not [r for r in api.request_log if r.resource == "endpointslices"]
        p.write_config(_server(port, endpoint=api.url, endpoint_pod_names=True, ignore_empty_service=True))
        p.signal(signal.SIGHUP)
        wait_for(lambda: _ask(port, "hl-pod-a.hl.default.svc.cluster.local")
                 == ("NOERROR", ["hl-pod-a.hl.default.svc.cluster.local A 10.244.0.1"]), timeout=30)
        assert _ask(port, "web.default.svc.cluster.local")[0] == "NXDOMAIN"  # no endpoint at all
        api.create("endpointslices", kubeobj.endpointslice("web-1", "default", "web", endpoints=[{"addresses": ["10.244.1.1"]}]))
        wait_for(lambda: _ask(port, "web.default.svc.cluster.local") == ("NOERROR", ["web.default.svc.cluster.local A 10.96.1.1"]))


def _kubeconfig_two_contexts(path: Path, good: str, bad: str) -> str:
    config = {
        "apiVersion": "v1", "kind": "Config", "preferences": {},
        "clusters": [{"name": "good", "cluster": {"server": good}}, {"name": "bad", "cluster": {"server": bad}}],
        "users": [{"name": "u", "user": {}}],
        "contexts": [{"name": "prod", "context": {"cluster": "good", "user": "u"}},
                     {"name": "broken", "context": {"cluster": "bad", "user": "u"}}],
        "current-context": "broken",
    }
    path.write_text(yaml.safe_dump(config))
    return str(path)


def test_kubeconfig_context_picks_the_cluster(kubedns_process: Any, tmp_path: Path) -> None:
    """``kubeconfig FILE CONTEXT``: that context, not the file's current-context."""
    with fakeapi.FakeKubeAPI() as api:
        api.load(CLUSTER)
        kc = _kubeconfig_two_contexts(tmp_path / "kc", api.url, f"http://127.0.0.1:{free_port()}")
        port = free_port()
        p = kubedns_process(_server(port, kubeconfig=kc, context="prod"))
        p.wait_listening(port)
        wait_for(lambda: _synced(port), timeout=30)
        assert _ask(port, "web.default.svc.cluster.local")[0] == "NOERROR"
        # the file's current-context points nowhere: without ``context`` nothing syncs
        port2 = free_port()
        p2 = kubedns_process(_server(port2, kubeconfig=kc, ttl=9))
        p2.wait_listening(port2)
        wait_for(lambda: "Connection refused" in p2.log() or "connection refused" in p2.log().lower(), timeout=30)
        assert _ask(port2, "web.default.svc.cluster.local")[0] == "SERVFAIL"
        # an unknown context is said as such
        port3 = free_port()
        p3 = kubedns_process(_server(port3, kubeconfig=kc, context="nope"))
        p3.wait_listening(port3)
        wait_for(lambda: "nope" in p3.log() and "cannot load kubeconfig" in p3.log(), timeout=30)


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _pki(d: Path, name: str) -> None:
    """A CA ``name``-ca.pem, a server certificate for 127.0.0.1 and a client certificate under it."""
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2",
             "-subj", f"/CN={name}-ca", "-keyout", f"{name}-ca.key", "-out", f"{name}-ca.pem", cwd=d)
    for who, ext in (("server", "subjectAltName=IP:127.0.0.1"), ("client", "extendedKeyUsage=clientAuth")):
        _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj", f"/CN={name}-{who}",
                 "-keyout", f"{name}-{who}.key", "-out", f"{name}-{who}.csr", cwd=d)
        (d / f"{name}-{who}.ext").write_text(ext + "\n")
        _openssl("x509", "-req", "-in", f"{name}-{who}.csr", "-CA", f"{name}-ca.pem", "-CAkey", f"{name}-ca.key",
                 "-CAcreateserial", "-days", "2", "-extfile", f"{name}-{who}.ext", "-out", f"{name}-{who}.pem", cwd=d)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_tls_client_certificate_against_an_https_api(kubedns_process: Any, tmp_path: Path) -> None:
    """``endpoint https://...`` + ``tls CERT KEY CACERT``: the API server (the fake, requiring a
    client certificate of its CA) is verified with CACERT and accepts CERT; a certificate of
    another CA is refused in the handshake and nothing syncs."""
    _pki(tmp_path, "cluster")
    _pki(tmp_path, "stranger")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(tmp_path / "cluster-ca.pem"))
    ctx.load_cert_chain(tmp_path / "cluster-server.pem", tmp_path / "cluster-server.key")
    ctx.verify_mode = ssl.CERT_REQUIRED
    with fakeapi.FakeKubeAPI(tls=ctx) as api:
        api.load(CLUSTER)
        assert api.url.startswith("https://127.0.0.1:")
        port = free_port()
        tls = {"cert": str(tmp_path / "cluster-client.pem"), "key": str(tmp_path / "cluster-client.key"),
               "cacert": str(tmp_path / "cluster-ca.pem")}
        p = kubedns_process(_server(port, endpoint=api.url, tls=tls))
        p.wait_listening(port)
        wait_for(lambda: _synced(port), timeout=30)
        assert _ask(port, "web.default.svc.cluster.local") == ("NOERROR", ["web.default.svc.cluster.local A 10.96.1.1"])
        assert "with a client certificate" in p.log()
        assert api.tls_failures == []
        port2 = free_port()
        stranger = {**tls, "cert": str(tmp_path / "stranger-client.pem"), "key": str(tmp_path / "stranger-client.key")}
        p2 = kubedns_process(_server(port2, endpoint=api.url, tls=stranger))
        p2.wait_listening(port2)
        wait_for(lambda: api.tls_failures, timeout=30)
        assert _ask(port2, "web.default.svc.cluster.local")[0] == "SERVFAIL"


# -- the client built from endpoint and tls ----------------------------------------------------------


def test_tls_files_that_do_not_load_are_said_at_once(tmp_path: Path) -> None:
    """A certificate that is no PEM is a one-line error naming the files, before any request."""
    from kubedns.config import ApiConfig, TlsConfig
    from kubedns.k8s.apiclient import load_api_client

    for name in ("c.pem", "k.pem", "ca.pem"):
        (tmp_path / name).write_text("not a certificate\n")
    tls = TlsConfig(str(tmp_path / "c.pem"), str(tmp_path / "k.pem"), str(tmp_path / "ca.pem"))
    with pytest.raises(RuntimeError, match=r"cannot load tls files \(cert .*c\.pem, key .*k\.pem, cacert .*ca\.pem\)"):
        load_api_client(ApiConfig(endpoint="https://127.0.0.1:6443", tls=tls))
    client, what = load_api_client(ApiConfig(endpoint="http://127.0.0.1:6443"))
    try:
        assert (client.configuration.host, what) == ("http://127.0.0.1:6443", "endpoint http://127.0.0.1:6443")
    finally:
        client.close()


def test_a_rotated_client_certificate_is_picked_up(tmp_path: Path) -> None:
    """The files ``tls`` names are part of what the client is built from: a new certificate on
    disk builds a new client at the next retry, as a changed kubeconfig does."""
    from kubedns.config import ApiConfig, TlsConfig
    from kubedns.k8s.apiclient import ClientSource

    for name in ("c.pem", "k.pem", "ca.pem"):
        (tmp_path / name).write_text(name)
    api = ApiConfig(endpoint="https://127.0.0.1:6443",
                    tls=TlsConfig(str(tmp_path / "c.pem"), str(tmp_path / "k.pem"), str(tmp_path / "ca.pem")))
    built: list[Any] = []

    def factory(cfg: Any) -> tuple[Any, str]:
        built.append(cfg)
        return _Closable(), "endpoint"

    source = ClientSource(api, factory)
    first, _ = source.load()
    assert source.current() is first
    (tmp_path / "c.pem").write_text("rotated")
    assert source.current() is not first and built == [api, api]


class _Closable:
    configuration = None

    def close(self) -> None:
        pass


# -- the same options written as a Corefile ----------------------------------------------------------


def test_a_corefile_gives_the_same_kubernetes_config_as_the_yaml(tmp_path: Path) -> None:
    from kubedns.config import load

    for name in ("c.pem", "k.pem", "ca.pem"):
        (tmp_path / name).write_text("x")
    (tmp_path / "Corefile").write_text("""\
.:1053 {
    kubernetes cluster.local in-addr.arpa {
        endpoint https://127.0.0.1:6443
        tls c.pem k.pem ca.pem
        namespaces default kube-system
        labels environment in (staging, qa),application=nginx
        endpoint_pod_names
        ignore empty_service
        noendpoints
    }
}
.:1054 {
    kubernetes cluster.local {
        kubeconfig /etc/kc prod
    }
}
""")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"servers": [
        {"zones": ["."], "listen": "0.0.0.0:1053", "kubernetes": {
            "zones": ["cluster.local", "in-addr.arpa"], "endpoint": ["https://127.0.0.1:6443"],
            "tls": {"cert": "c.pem", "key": "k.pem", "cacert": "ca.pem"}, "namespaces": ["default", "kube-system"],
            "labels": "environment in (staging,qa), application=nginx", "endpoint_pod_names": True,
            "ignore_empty_service": True, "noendpoints": True}},
        {"zones": ["."], "listen": "0.0.0.0:1054", "kubernetes": {
            "zones": ["cluster.local"], "kubeconfig": "/etc/kc", "context": "prod"}},
    ]}))
    core, yml = load(str(tmp_path / "Corefile")), load(str(tmp_path / "c.yaml"))
    assert [b.kubernetes for b in core.servers] == [b.kubernetes for b in yml.servers]
    assert core.servers[1].kubernetes.api().context == "prod"


def test_a_corefile_selector_error_names_file_and_line(tmp_path: Path) -> None:
    from kubedns.config import ConfigError, load

    (tmp_path / "Corefile").write_text(".:1053 {\n    kubernetes cluster.local {\n        labels tier in ()\n    }\n}\n")
    with pytest.raises(ConfigError) as e:
        load(str(tmp_path / "Corefile"))
    assert str(e.value).startswith(f"{tmp_path / 'Corefile'}:3: kubernetes: labels: expected a Kubernetes label selector")
    assert "need at least one value" in str(e.value)
