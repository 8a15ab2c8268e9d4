"""The shipped configs parse, and config values mean what the README says.

Parsing only: nothing is started and no packet is sent (the shipped configs forward to 8.8.8.8
or the host's resolvers, which tests must never query).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from kubedns.config import ConfigError, load, parse
from kubedns.configbase import Address, parse_duration
from tests.conftest import REPO


@pytest.mark.parametrize("name", ["corefile.yaml", "demo.yaml"])
def test_shipped_configs_parse(name: str) -> None:
    cfg = load(str(REPO / "conf" / name))
    block = cfg.servers[0]
    assert block.kubernetes is not None and "cluster.local" in block.kubernetes.zones
    assert block.forward is not None


def test_project_default_shape() -> None:
    """conf/corefile.yaml: kubeadm's Corefile forwarding to 8.8.8.8 (see tests/test_conf_files.py)."""
    cfg = load(str(REPO / "conf" / "corefile.yaml"))
    b = cfg.servers[0]
    assert b.listen == Address("", 53)  # every address, as the Corefile's ".:53"
    assert b.kubernetes.pods == "insecure" and b.kubernetes.ttl == 30
    assert [str(u.host) for u in b.forward.to] == ["8.8.8.8"] and b.forward.max_concurrent == 1000
    assert b.cache.ttl == 30
    assert b.health.lameduck == 5.0 and b.prometheus.listen.port == 9153 and b.ready.listen.port == 8181


def test_demo_manifests_resolve_beside_the_config() -> None:
    cfg = load(str(REPO / "conf" / "demo.yaml"))
    assert Path(cfg.servers[0].kubernetes.manifests) == REPO / "conf" / "demo-cluster.yaml"
    assert cfg.servers[0].listen == Address("127.0.0.1", 1053)


@pytest.mark.parametrize("text,secs", [(5, 5.0), (0.5, 0.5), ("2s", 2.0), ("500ms", 0.5), ("1m", 60.0), ("1h", 3600.0)])
def test_durations(text, secs: float) -> None:
    assert parse_duration(text) == secs


@pytest.mark.parametrize("bad", ["5x", "-1", True, None, "s"])
def test_bad_durations(bad) -> None:
    with pytest.raises(ValueError):
        parse_duration(bad)


def test_defaults_match_coredns() -> None:
    b = parse("servers:\n  - kubernetes: {}\n", "x.yaml").servers[0]
    assert b.zones == ("",) and b.listen == Address("", 53)  # ".:53": every address
    assert b.kubernetes.ttl == 5 and b.kubernetes.pods == "disabled"
    assert b.kubernetes.zones == ("cluster.local", "in-addr.arpa", "ip6.arpa")


def test_same_zone_twice_on_one_address_is_an_error() -> None:
    text = "servers:\n  - kubernetes: {}\n  - zones: ['.']\n    forward: {to: ['127.0.0.1']}\n"
    with pytest.raises(ConfigError, match=r"servers\[1\]\.zones"):
        parse(text, "x.yaml")


def test_reload_interval_minimum() -> None:
    with pytest.raises(ConfigError, match=r"reload.*at least 2s"):
        parse("servers:\n  - kubernetes: {}\n    reload: {interval: 1s}\n", "x.yaml")


# -- cache TTLs are durations too (whole seconds) ------------------------------------------------


def _cache(value: str) -> object:
    text = f"servers:\n  - zones: ['.']\n    forward: {{to: ['127.0.0.1']}}\n    cache: {value}\n"
    return parse(text, "x.yaml").servers[0].cache


@pytest.mark.parametrize(
    ("value", "ttl", "min_ttl", "denial_ttl"),
    [
        ("30", 30, 5, 30),
        ('"30s"', 30, 5, 30),
        ("'1m'", 60, 5, 60),
        ('{ttl: "30s", min_ttl: "5s", denial_ttl: "1m"}', 30, 5, 60),
        ('{ttl: "1h", min_ttl: 0, denial_ttl: "2000ms"}', 3600, 0, 2),
        ("{ttl: 600.0}", 600, 5, 600),
    ],
)
def test_cache_ttls_accept_durations(value: str, ttl: int, min_ttl: int, denial_ttl: int) -> None:
    c = _cache(value)
    assert (c.ttl, c.min_ttl, c.denial_ttl) == (ttl, min_ttl, denial_ttl)
    assert all(type(v) is int for v in (c.ttl, c.min_ttl, c.denial_ttl))


@pytest.mark.parametrize(
    ("value", "key", "expected"),
    [
        ('"500ms"', r"servers\[0\]\.cache\.ttl", "a whole number of seconds"),
        ('{min_ttl: "1.5s"}', r"servers\[0\]\.cache\.min_ttl", "a whole number of seconds"),
        ('{denial_ttl: "soon"}', r"servers\[0\]\.cache\.denial_ttl", "a whole number of seconds"),
        ('{ttl: "8d"}', r"servers\[0\]\.cache\.ttl", "a whole number of seconds"),
        ('{ttl: "200h"}', r"servers\[0\]\.cache\.ttl", "from 0 to 604800"),
        ('{ttl: "10s", min_ttl: "20s"}', r"servers\[0\]\.cache\.min_ttl", "not above ttl"),
        ('{servfail: "500ms"}', r"servers\[0\]\.cache\.servfail", "a whole number of seconds"),
        ('"lots"', r"servers\[0\]\.cache", "a mapping"),
    ],
)
def test_cache_ttl_errors_name_file_key_and_expectation(value: str, key: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=rf"x\.yaml: {key}: expected .*{expected}"):
        _cache(value)


# -- kubernetes options (CoreDNS's names; a Corefile maps onto these keys) ------------------------


def _k8s(tmp_path: Path, body: str):
    text = "servers:\n- zones: [cluster.local]\n  listen: 127.0.0.1:1053\n  kubernetes:\n" + "".join(
        f"    {line}\n" for line in body.strip().splitlines()
    )
    return parse(text, str(tmp_path / "c.yaml")).servers[0].kubernetes


def test_kubernetes_options_parse(tmp_path: Path) -> None:
    for name in ("crt.pem", "key.pem", "ca.pem"):
        (tmp_path / name).write_text("x")
    k = _k8s(tmp_path, """
namespaces: [default, kube-system, default]
labels: "environment in (staging,  qa), application=nginx,!legacy"
endpoint_pod_names: true
ignore_empty_service: true
noendpoints: true
endpoint: ["https://10.0.0.1:6443/", "https://10.0.0.2:6443"]
tls: {cert: crt.pem, key: key.pem, cacert: ca.pem}
""")
    assert k.namespaces == ("default", "kube-system")
    assert k.labels == "application=nginx,environment in (qa,staging),!legacy"
    assert (k.endpoint_pod_names, k.ignore_empty_service, k.noendpoints) == (True, True, True)
    assert k.endpoint == ("https://10.0.0.1:6443", "https://10.0.0.2:6443")
    assert k.tls.cert == str(tmp_path / "crt.pem") and k.tls.cacert == str(tmp_path / "ca.pem")
    # only the first endpoint is used, with the tls files (CoreDNS)
    assert k.api().endpoint == "https://10.0.0.1:6443" and k.api().tls == k.tls
    # a kubeconfig wins over endpoint (CoreDNS: "The cluster address in the kubeconfig is given preference")
    k = _k8s(tmp_path, "kubeconfig: /etc/kc\ncontext: prod\nendpoint: http://127.0.0.1:8080")
    assert (k.api().kubeconfig, k.api().context, k.api().endpoint) == ("/etc/kc", "prod", None)
    k = _k8s(tmp_path, "namespaces: default testns")  # a Corefile's word list
    assert k.namespaces == ("default", "testns")


def test_kubernetes_options_defaults(tmp_path: Path) -> None:
    k = _k8s(tmp_path, "ttl: 5")
    assert (k.namespaces, k.labels, k.endpoint_pod_names, k.ignore_empty_service, k.noendpoints) == ((), "", False, False, False)
    assert (k.endpoint, k.tls, k.context) == ((), None, None)


@pytest.mark.parametrize("body,key,expected", [
    ("namespaces: []", "namespaces", "a non-empty list of namespace names"),
    ("namespaces: [Default]", "namespaces[0]", "a namespace name"),
    ("namespaces: [a.b]", "namespaces[0]", "a namespace name"),
    ("namespaces: 5", "namespaces", "a list"),
    ('labels: ""', "labels", "a non-empty string"),
    ('labels: "a in ()"', "labels", "need at least one value"),
    ('labels: "a=b,,c"', "labels", "an empty requirement"),
    ('labels: "replicas > 3"', "labels", "'<', '>', 'gt' and 'lt' are not label selector operators"),
    ('labels: "tier in (a, b"', "labels", "'(' without ')'"),
    ('labels: "a=b=c"', "labels", "is not a requirement"),
    ('labels: "-bad=x"', "labels", "a label key"),
    ('labels: "app=-x"', "labels", "a label value"),
    ('labels: "Example.COM/app=x"', "labels", "the prefix before '/'"),
    ("endpoint_pod_names: yes please", "endpoint_pod_names", "true or false"),
    ("ignore_empty_service: 1", "ignore_empty_service", "true or false"),
    ("noendpoints: []", "noendpoints", "true or false"),
    ("endpoint: ftp://10.0.0.1", "endpoint[0]", "http:// or https://"),
    ("endpoint: https://", "endpoint[0]", "http:// or https://"),
    ("endpoint: https://10.0.0.1:99999", "endpoint[0]", "the API server's URL"),
    ("endpoint: []", "endpoint", "at least one"),
    ("tls: {cert: /nonexistent/c, key: /nonexistent/k, cacert: /nonexistent/ca}", "tls.cert", "file not found"),
    ("tls: {cert: /}", "tls.cert", "not a regular file"),
    ("tls: {cert: x, key: y, cacert: z, extra: 1}", "tls.extra", "one of the keys cacert, cert, key"),
    ("tls: [a, b, c]", "tls", "a mapping"),
    ("context: prod", "context", "context only with kubeconfig"),
])
def test_kubernetes_option_errors(tmp_path: Path, body: str, key: str, expected: str) -> None:
    with pytest.raises(ConfigError) as e:
        _k8s(tmp_path, body)
    msg = str(e.value)
    assert msg.startswith(f"{tmp_path / 'c.yaml'}: servers[0].kubernetes.{key}: expected "), msg
    assert expected in msg and "\n" not in msg, msg


def test_kubernetes_tls_needs_all_three_files(tmp_path: Path) -> None:
    (tmp_path / "crt.pem").write_text("x")
    with pytest.raises(ConfigError, match=r"kubernetes\.tls\.key: expected a value \(the key is required\)"):
        _k8s(tmp_path, "tls: {cert: crt.pem}")


def test_kubernetes_labels_need_the_api(tmp_path: Path) -> None:
    (tmp_path / "m.yaml").write_text("kind: List\nitems: []\n")
    with pytest.raises(ConfigError, match=r"kubernetes\.labels: expected labels only with the API"):
        _k8s(tmp_path, "manifests: m.yaml\nlabels: app=web")


def test_every_name_imported_from_kubedns_config_is_there() -> None:
    """The records and readers moved to configfile.py and configk8s.py are still kubedns.config's
    (the names other modules, tests and bench import from it), the very same objects."""
    import kubedns.config as config
    import kubedns.configfile as configfile
    import kubedns.configk8s as configk8s

    used = {"ApiConfig", "Config", "ConfigError", "KubernetesConfig", "LoadbalanceConfig", "ReloadConfig",
            "ServerBlock", "TlsConfig", "file_digest", "load", "parse", "parse_data"}
    assert used <= set(config.__all__)
    assert all(hasattr(config, n) for n in config.__all__)
    for mod in (configfile, configk8s):
        for n in set(mod.__all__) & set(config.__all__):
            assert getattr(config, n) is getattr(mod, n), n
    assert config.KubernetesConfig.__module__ == "kubedns.configk8s"
    assert config.file_digest.__module__ == "kubedns.configfile"
