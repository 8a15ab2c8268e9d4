"""The Corefile syntax: golden tests per syntax feature and per error, and real default Corefiles.

Each folder under ``tests/corefiles/`` is one case: a ``Corefile`` (and the files it imports),
read from inside the folder so that messages name ``Corefile:LINE`` as an operator would see
them.  ``syntax/`` and ``real/`` cases hold ``expected.yaml``, the YAML config the Corefile maps
to (the same dict ``--config x.yaml`` would read); ``errors/`` cases hold ``expected.error``, the
whole one-line message.  ``KUBEDNS_UPDATE_GOLDEN=1 pytest tests/test_corefile.py`` rewrites
them (then read the diff).

``real/`` holds the default Corefiles as kubeadm (``cmd/kubeadm/app/phases/addons/dns/
manifests.go``, with ``cluster.local``), EKS, AKS (with its ``import custom/*.override`` and
``import custom/*.server`` and two files as the ``coredns-custom`` ConfigMap documents them) and
k3s (``manifests/coredns.yaml``: ``hosts /etc/coredns/NodeHosts``) write them.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.names import dns

from kubedns.config import ConfigError, file_digest, load, parse
from kubedns.corefile import is_corefile, parse_corefile
from kubedns.corefile.lexer import tokenize
from kubedns.corefile.mapping import map_corefile
from kubedns.forward.cache import response_ttl
from kubedns.forward.config import CacheConfig

CASES = Path(__file__).resolve().parent / "corefiles"
UPDATE = os.environ.get("KUBEDNS_UPDATE_GOLDEN") == "1"
ENV = {
    "KUBEDNS_TEST_ZONE": "example.org",
    "KUBEDNS_TEST_PORT": "1053",
    "KUBEDNS_TEST_UPSTREAM": "127.0.0.53:5300",
}


def _cases(kind: str) -> list[str]:
    return sorted(p.name for p in (CASES / kind).iterdir() if p.is_dir())


@pytest.fixture
def in_case(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("KUBEDNS_TEST_UNSET", raising=False)
    for k, v in ENV.items():
        monkeypatch.setenv(k, v)

    def enter(kind: str, name: str) -> Path:
        d = CASES / kind / name
        monkeypatch.chdir(d)
        return d

    return enter


def _golden(path: Path, got: str) -> None:
    if UPDATE:
        path.write_text(got)
    assert path.exists(), f"{path} missing: run with KUBEDNS_UPDATE_GOLDEN=1 and review it"
    assert got == path.read_text()


@pytest.mark.parametrize("kind,name", [("syntax", n) for n in _cases("syntax")] + [("real", n) for n in _cases("real")])
def test_mapping_golden(in_case, kind: str, name: str) -> None:
    """Each syntax feature and each real default Corefile maps to the YAML config recorded."""
    d = in_case(kind, name)
    data, _ = map_corefile(parse_corefile("Corefile"))
    _golden(d / "expected.yaml", yaml.safe_dump(data, sort_keys=False))


@pytest.mark.parametrize("name", _cases("syntax"))
def test_syntax_cases_are_valid_configs(in_case, name: str) -> None:
    """What the syntax cases map to passes the YAML's own validation, and equals that YAML's."""
    d = in_case("syntax", name)
    cfg = load("Corefile")
    same = parse((d / "expected.yaml").read_text(), "Corefile")
    assert cfg.servers == same.servers


@pytest.mark.parametrize("name", _cases("errors"))
def test_error_golden(in_case, name: str) -> None:
    """Each error names file:line, the plugin or directive, and what was expected."""
    d = in_case("errors", name)
    with pytest.raises(ConfigError) as e:
        load("Corefile")
    _golden(d / "expected.error", str(e.value) + "\n")
    assert "\n" not in str(e.value)


def _real_copy(name: str, tmp_path: Path) -> Path:
    """A copy of a real Corefile's folder whose /etc/resolv.conf and /etc/coredns paths point into
    ``tmp_path`` (nothing is sent anywhere: the config is only read)."""
    d = tmp_path / name
    shutil.copytree(CASES / "real" / name, d)
    (d / "resolv.conf").write_text("nameserver 127.0.0.53\n")
    (d / "NodeHosts").write_text("127.0.0.1 node-1\n")
    core = d / "Corefile"
    core.write_text(core.read_text().replace("/etc/resolv.conf", str(d / "resolv.conf"))
                    .replace("/etc/coredns/", f"{d}/"))
    return core


def test_kubeadm_default_is_the_expected_config(tmp_path: Path) -> None:
    cfg = load(str(_real_copy("kubeadm", tmp_path)))
    (b,) = cfg.servers
    assert b.zones == ("",) and str(b.listen) == ":53"
    assert b.kubernetes.zones == ("cluster.local", "in-addr.arpa", "ip6.arpa")
    assert (b.kubernetes.pods, b.kubernetes.ttl, b.kubernetes.fallthrough) == ("insecure", 30, ("in-addr.arpa", "ip6.arpa"))
    assert [str(u) for u in b.forward.to] == ["127.0.0.53:53"] and b.forward.max_concurrent == 1000
    assert (b.cache.ttl, b.cache.denial_ttl) == (30, 30)
    assert b.cache.disable_success == b.cache.disable_denial == ("cluster.local",)
    assert b.health.lameduck == 5.0 and str(b.health.listen) == ":8080"
    assert str(b.ready.listen) == ":8181" and str(b.prometheus.listen) == ":9153"
    assert b.loop.enabled and b.reload.interval == 30.0 and b.loadbalance.policy == "round_robin"
    assert b.errors is not None and b.log is None


def test_eks_default_is_the_expected_config(tmp_path: Path) -> None:
    (b,) = load(str(_real_copy("eks", tmp_path))).servers
    assert (b.kubernetes.pods, b.kubernetes.ttl) == ("insecure", 5)  # CoreDNS's default TTL
    assert b.cache.ttl == 30 and b.cache.disable_success == () and b.forward.max_concurrent == 1000
    assert b.loadbalance is not None and b.health.lameduck == 5.0


def test_aks_default_imports_its_custom_files(tmp_path: Path) -> None:
    main, stub = load(str(_real_copy("aks", tmp_path))).servers
    assert main.kubernetes.ttl == 30 and main.log is not None  # log.override, imported inside the block
    assert stub.zones == ("abc.com",) and [str(u) for u in stub.forward.to] == ["192.0.2.53:53"]
    assert stub.kubernetes is None and stub.cache.ttl == 30


def test_aks_without_custom_files_is_no_error(tmp_path: Path) -> None:
    core = _real_copy("aks", tmp_path)
    shutil.rmtree(core.parent / "custom")
    (b,) = load(str(core)).servers
    assert b.log is None


def test_k3s_default_reads_node_hosts(tmp_path: Path) -> None:
    core = _real_copy("k3s", tmp_path)
    (b,) = load(str(core)).servers
    assert b.hosts.file == str(core.parent / "NodeHosts")
    assert (b.hosts.ttl, b.hosts.reload, b.hosts.fallthrough) == (60, 15.0, ("",))
    assert b.kubernetes.ttl == 5 and b.health.lameduck == 5.0


# -- lexer and parser details --------------------------------------------------------------------


def test_tokens_keep_their_line_across_quoted_newlines_and_continuations() -> None:
    toks = tokenize('a "b\nc" d\ne \\\nf\ng # h i\n`j k` x#y "q\\"r\\s"', "F")
    assert [(t.text, t.line) for t in toks] == [
        ("a", 1), ("b\nc", 1), ("d", 2), ("e", 3), ("f", 3), ("g", 5), ("j k", 6), ("x#y", 6), ('q"r\\s', 6),
    ]


def test_env_value_with_spaces_stays_one_token() -> None:
    toks = tokenize("forward . {$UP}", "F", {"UP": "a b"})
    assert [t.text for t in toks] == ["forward", ".", "a b"]


def test_an_env_value_is_never_a_brace() -> None:
    (blk,) = parse_corefile("F", ".:53 {\n forward . x {$B}\n}\n", {"B": "{"}).blocks
    (fwd,) = blk.directives
    assert [a.text for a in fwd.args] == [".", "x", "{"] and fwd.block is None


def test_one_snippet_imported_twice_on_one_line_each_is_two_directives() -> None:
    (blk,) = parse_corefile("F", "(s) { errors }\n.:53 {\n import s\n import s\n}\n").blocks
    assert [d.text for d in blk.directives] == ["errors", "errors"]


@pytest.mark.parametrize("text,path,expected", [
    (".:53 {\n}\n", "x.yaml", True),
    ("# kubeadm\n.:53 {\n", "Corefile", True),
    ("import common.conf\n", "x.yml", True),
    ("(snip) {\n", "x.yaml", True),
    ("servers:\n  - zones: [.]\n", "Corefile", False),
    ("{servers: []}\n", "conf", False),
    ("- a\n", "x", False),
    ("hello\n", "x.yaml", False),
    ("hello\n", "Corefile", True),
    ("# only a comment\n", "x.yaml", False),
    ("", "Corefile", True),
])
def test_corefile_or_yaml(text: str, path: str, expected: bool) -> None:
    assert is_corefile(text, path) is expected


def test_yaml_config_named_like_a_corefile_still_loads(tmp_path: Path) -> None:
    p = tmp_path / "Corefile"
    p.write_text("servers:\n  - forward: 127.0.0.1:5300\n")
    assert [str(u) for u in load(str(p)).servers[0].forward.to] == ["127.0.0.1:5300"]


# -- reload sees imported files ------------------------------------------------------------------


def test_digest_covers_imported_files_and_new_glob_matches(tmp_path: Path) -> None:
    core = tmp_path / "Corefile"
    core.write_text(".:53 {\n    forward . 127.0.0.1:5300\n    import custom/*.override\n}\nimport custom/*.server\n")
    (tmp_path / "custom").mkdir()
    (tmp_path / "custom" / "a.override").write_text("cache 30\n")
    first = file_digest(str(core))
    assert first == file_digest(str(core))
    (tmp_path / "custom" / "a.override").write_text("cache 60\n")
    second = file_digest(str(core))
    assert second != first
    (tmp_path / "custom" / "stub.server").write_text("example.org {\n    forward . 127.0.0.2\n}\n")
    third = file_digest(str(core))
    assert third != second
    # what reload compares against: the digest of the running config's raw_text
    import hashlib

    assert hashlib.sha256(load(str(core)).raw_text.encode()).hexdigest() == third


def test_digest_of_a_corefile_without_imports_is_the_file_hash(tmp_path: Path) -> None:
    import hashlib

    core = tmp_path / "Corefile"
    core.write_bytes(b".:53 {\n    forward . 127.0.0.1:5300\n}\n")
    assert file_digest(str(core)) == hashlib.sha256(core.read_bytes()).hexdigest()


# -- cache disable: what kubeadm's default asks for ----------------------------------------------


def _answer(name: str, rcode: int = dns.OK) -> dns.Message:
    m = dns.Message(answer=1, rCode=rcode)
    m.queries = [dns.Query(name, dns.A)]
    if rcode == dns.OK:
        m.answers = [dns.RRHeader(name, dns.A, ttl=60, payload=dns.Record_A("10.0.0.1"))]
    else:
        m.authority = [dns.RRHeader("example.org", dns.SOA, ttl=60, payload=dns.Record_SOA(minimum=60))]
    return m


def test_cache_disable_success_and_denial_per_zone() -> None:
    cfg = CacheConfig(ttl=30, disable_success=("cluster.local",), disable_denial=("example.org",))
    assert response_ttl(_answer("a.svc.Cluster.Local."), cfg) is None
    assert response_ttl(_answer("cluster.local"), cfg) is None
    assert response_ttl(_answer("xcluster.local"), cfg) == ("success", 30)
    assert response_ttl(_answer("nx.cluster.local", dns.ENAME), cfg) == ("denial", 60)
    assert response_ttl(_answer("nx.example.org", dns.ENAME), cfg) is None
    assert response_ttl(_answer("www.example.org"), cfg) == ("success", 30)


def test_cache_disable_in_yaml() -> None:
    cfg = parse("servers:\n  - forward: 127.0.0.1:5300\n    cache: {ttl: 30, disable: {success: [Cluster.Local.], denial: [.]}}\n")
    c = cfg.servers[0].cache
    assert (c.disable_success, c.disable_denial) == (("cluster.local",), ("",))
    with pytest.raises(ConfigError, match=r"servers\[0\]\.cache\.disable\.sucess: expected one of the keys denial, success"):
        parse("servers:\n  - forward: 127.0.0.1:5300\n    cache: {disable: {sucess: [a]}}\n")


# -- nothing but a one-line ConfigError, whatever the text ---------------------------------------


@settings(max_examples=500, deadline=None)
@given(st.lists(st.sampled_from([
    ".:53", "example.org:5353,", "dns://.:1053", "10.0.0.0/8", "{", "}", "\n", " ", '"', "`", "#", "\\\n",
    "forward", ".", "127.0.0.1:5300", "kubernetes", "cluster.local", "ttl", "30", "abc", "cache", "import",
    "(s)", "s", "*.nothing", "{$X}", "hosts", "10.0.0.1", "a.example", "log", "bind", "rewrite", "fallthrough",
    "health", "lameduck", "5s", "errors", "consolidate", "disable", "success", "reload", "loadbalance",
    '"a\nb"', '"{"', '""', "class", "denial", "serve_stale", "prefetch", "except", "policy", "max_fails",
]), max_size=60))
def test_any_text_is_a_config_or_one_config_error(tmp_path_factory: pytest.TempPathFactory, parts: list[str]) -> None:
    from kubedns.corefile import parse_corefile_config

    path = str(tmp_path_factory.mktemp("fuzz") / "Corefile")
    text = " ".join(parts)
    try:
        parse_corefile_config(text, path, environ={"X": "{"})
    except ConfigError as e:
        assert "\n" not in str(e) and str(e).startswith(path), str(e)


def test_deep_nesting_and_import_bombs_are_bounded(tmp_path: Path) -> None:
    deep = ".:53 {\n" + "a {\n" * 2000 + "}\n" * 2001
    with pytest.raises(ConfigError, match="nested at most"):
        parse_corefile(str(tmp_path / "Corefile"), deep)
    # each snippet imports the previous one twice: 2**25 copies of a line without the bound
    text = "(s0) {\n    errors\n}\n" + "".join(f"(s{i}) {{\n    import s{i - 1}\n    import s{i - 1}\n}}\n" for i in range(1, 26))
    with pytest.raises(ConfigError, match="at most 1000 imports in all"):
        parse_corefile(str(tmp_path / "Corefile"), text + ".:53 {\n    import s25\n}\n")
    # few imports of a big snippet: bounded by what they add up to
    big = "(big) {\n" + "    errors\n" * 30_000 + "}\n.:53 {\n" + "    import big\n" * 10 + "}\n"
    with pytest.raises(ConfigError, match="at most 200000 tokens in all"):
        parse_corefile(str(tmp_path / "Corefile"), big)
