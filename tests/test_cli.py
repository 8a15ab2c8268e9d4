"""The ``kubedns`` command: ``check`` on good and bad configs, ``explain`` against a running server.

``explain`` is run as the installed command (a real process) against a real ``twistd kubedns`` on
127.0.0.1 serving a manifests cluster and forwarding to a tests/dnsupstream.py server on
127.0.0.7; it asks only the ``--server`` given (the upstream's query log shows what reached it).
The stub rules themselves (glibc's and musl's search walk) are checked as pure logic too, with
replies made up per name.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import dns.edns
import dns.message
import dns.query
import pytest

from kubedns.explain import EXPLAIN_OPTION, Reply1, walk
from tests.conftest import REPO, free_port
from tests.dnsupstream import DNSUpstream
from tests.support import kubeobj
from tests.support.cluster import write_manifests

KUBEDNS = shutil.which("kubedns")
CMD = [KUBEDNS] if KUBEDNS else [sys.executable, "-m", "kubedns.cli"]


def run(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CMD, *args], capture_output=True, text=True, timeout=timeout, cwd=REPO)


def test_the_command_is_installed():
    """The package's console script: `kubedns` on PATH next to the interpreter's scripts."""
    assert KUBEDNS is not None, "the kubedns console script is not installed (pip install -e .)"
    r = run("--help")
    assert r.returncode == 0 and "check" in r.stdout and "explain" in r.stdout


# -- check -------------------------------------------------------------------------------------


COREFILE = """\
.:{port} {{
    errors
    forward . 127.0.0.7:{up}
    cache 30
    kubernetes cluster.local in-addr.arpa ip6.arpa {{
        manifests {manifests}
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }}
    loadbalance
    health 127.0.0.1:{health}
}}
"""


def _manifests(tmp_path: Path) -> str:
    objs = [kubeobj.namespace("default"), kubeobj.namespace("otherns"),
            kubeobj.service("nginx", "default", cluster_ip="10.96.0.100"),
            kubeobj.service("db", "otherns", cluster_ip="10.96.0.200")]
    return write_manifests(tmp_path / "cluster.yaml", objs)


def test_check_a_corefile_prints_the_chain_in_execution_order(tmp_path):
    path = tmp_path / "Corefile"
    path.write_text(COREFILE.format(port=1053, up=5300, manifests=_manifests(tmp_path), health=18080))
    r = run("check", str(path))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    chain = [ln.split(". ", 1)[1].split()[0] for ln in lines if ln.strip()[:2].rstrip(".").isdigit()]
    # written forward, cache, kubernetes, loadbalance; run in CoreDNS's order
    assert chain == ["errors", "loadbalance", "cache", "kubernetes", "forward"]
    assert "listen :1053" in r.stdout and "zones ." in r.stdout
    assert "pods: insecure" in r.stdout and "ttl: 5" in r.stdout  # a default filled in
    assert "127.0.0.7:5300" in r.stdout and "health" in r.stdout.split("process:")[1]


def test_check_json_and_yaml_give_the_same_configuration(tmp_path):
    manifests = _manifests(tmp_path)
    core = tmp_path / "Corefile"
    core.write_text(COREFILE.format(port=1053, up=5300, manifests=manifests, health=18080))
    yml = tmp_path / "kubedns.yaml"
    yml.write_text(json.dumps({"servers": [{
        "zones": ["."], "listen": ":1053", "errors": {}, "forward": {"to": ["127.0.0.7:5300"]}, "cache": 30,
        "kubernetes": {"manifests": manifests, "pods": "insecure", "fallthrough": ["in-addr.arpa", "ip6.arpa"]},
        "loadbalance": None, "health": "127.0.0.1:18080"}]}))
    a, b = run("check", "--json", str(core)), run("check", "--json", str(yml))
    assert a.returncode == b.returncode == 0, a.stderr + b.stderr
    da, db = json.loads(a.stdout), json.loads(b.stdout)
    assert [p["plugin"] for p in da["servers"][0]["chain"]] == ["errors", "loadbalance", "cache", "kubernetes",
                                                                 "forward"]
    del da["file"], db["file"]
    assert da == db


@pytest.mark.parametrize("name, text, where", [
    ("Corefile", ".:53 {\n    kubernetes cluster.local\n    forward . 127.0.0.1 {\n        max_fails x\n    }\n}\n",
     "Corefile:4"),
    ("Corefile", ".:53 {\n    forward . 127.0.0.1\n    frobnicate\n}\n", "Corefile:3"),
    ("bad.yaml", "servers:\n  - zones: [\".\"]\n    forward: {to: [\"127.0.0.1\"]}\n    cache: {ttl: -3}\n",
     "cache.ttl"),
])
def test_check_an_invalid_config_exits_1_with_one_line(tmp_path, name, text, where):
    path = tmp_path / name
    path.write_text(text)
    r = run("check", str(path))
    assert r.returncode == 1 and r.stdout == ""
    msg = r.stderr.strip()
    assert "\n" not in msg and where in msg and str(path) in msg, msg


def test_check_a_missing_file():
    r = run("check", "/nonexistent/Corefile")
    assert r.returncode == 1 and "/nonexistent/Corefile" in r.stderr and "\n" not in r.stderr.strip()


# -- the stub rules, as logic ----------------------------------------------------------------------


def _fake(table: dict[str, str]):
    """A server answering each name with the outcome in ``table`` (NXDOMAIN when not listed)."""
    sent: list[str] = []

    def send(name, qtypes):
        sent.append(name)
        out = []
        for t in qtypes:
            kind = table.get(name, "NXDOMAIN")
            if kind == "answer":
                out.append(Reply1(name, t, "NOERROR", answers=(f"{name} 5 {t} x",), ancount=1, addresses=1))
            elif kind == "NODATA":
                out.append(Reply1(name, t, "NOERROR"))
            elif kind == "A-only":
                out.append(Reply1(name, t, "NOERROR", ancount=t == "A", addresses=t == "A"))
            else:
                out.append(Reply1(name, t, kind))
        return tuple(out)

    return send, sent


SEARCH = ("default.svc.cluster.local", "svc.cluster.local", "cluster.local")


def test_glibc_walk():
    send, sent = _fake({"google.com.": "answer"})
    w = walk("google.com", SEARCH, 5, send)
    assert sent == [f"google.com.{d}." for d in SEARCH] + ["google.com."] and w.queries == 8
    # NODATA goes on in glibc; REFUSED stops the search list, then the name as is
    send, sent = _fake({"a.default.svc.cluster.local.": "NODATA", "a.svc.cluster.local.": "REFUSED"})
    walk("a", SEARCH, 5, send)
    assert sent == ["a.default.svc.cluster.local.", "a.svc.cluster.local.", "a."]
    # enough dots: as is first, then the search list
    send, sent = _fake({"x.y.svc.cluster.local.": "answer"})
    w = walk("x.y", SEARCH, 1, send)
    assert sent == ["x.y.", "x.y.default.svc.cluster.local.", "x.y.svc.cluster.local."] and w.answered
    # one reply with an address is an answer
    send, sent = _fake({"nginx.default.svc.cluster.local.": "A-only"})
    assert walk("nginx", SEARCH, 5, send).answered and len(sent) == 1
    # SERVFAIL for A goes on
    send, sent = _fake({"n.default.svc.cluster.local.": "SERVFAIL"})
    walk("n", SEARCH, 5, send)
    assert len(sent) == 4
    # a trailing dot: once, whatever came back
    send, sent = _fake({})
    assert walk("nginx.", SEARCH, 5, send).queries == 2 and sent == ["nginx."]
    # "." in the search list is the name as is: not tried again at the end
    send, sent = _fake({})
    walk("x", ("a.svc", "."), 5, send)
    assert sent == ["x.a.svc.", "x."]
    # an answer to the name tried first (dots >= ndots) ends the walk at once
    send, sent = _fake({"google.com.": "answer"})
    assert walk("google.com", SEARCH, 1, send).queries == 2 and sent == ["google.com."]


def test_musl_walk():
    # NODATA stops musl at the first search domain
    send, sent = _fake({"a.default.svc.cluster.local.": "NODATA"})
    w = walk("a", SEARCH, 5, send, musl=True)
    assert sent == ["a.default.svc.cluster.local."] and w.answered is None
    # dots >= ndots: the name as is, no search list at all
    send, sent = _fake({"x.y.svc.cluster.local.": "answer"})
    w = walk("x.y", SEARCH, 1, send, musl=True)
    assert sent == ["x.y."] and w.answered is None
    # SERVFAIL stops musl too (EAI_AGAIN); NXDOMAIN goes on to the name as is
    send, sent = _fake({"s.default.svc.cluster.local.": "SERVFAIL"})
    walk("s", SEARCH, 5, send, musl=True)
    assert sent == ["s.default.svc.cluster.local."]
    send, sent = _fake({"google.com.": "answer"})
    assert walk("google.com", SEARCH, 5, send, musl=True).answered and len(sent) == 4


# -- explain against a running server ------------------------------------------------------------


@pytest.fixture
def server(kubedns_process, tmp_path):
    up = DNSUpstream(host="127.0.0.7").start()
    up.add("google.com", "A", "192.0.2.10", ttl=300)
    up.add("google.com", "AAAA", "2001:db8::10", ttl=300)
    port = free_port()
    p = kubedns_process({"servers": [{
        "zones": ["."], "listen": f"127.0.0.1:{port}",
        "kubernetes": {"zones": ["cluster.local"], "manifests": _manifests(tmp_path), "ttl": 30},
        "forward": {"to": [up.address]}, "cache": 30,
    }]})
    p.wait_listening(port)
    yield port, up, p.config_path
    up.stop()


def explain(port: int, *args: str) -> tuple[int, dict]:
    r = run("explain", *args, "--server", f"127.0.0.1:{port}", "--json")
    assert r.stderr == "", r.stderr
    return r.returncode, json.loads(r.stdout)


def _flat(d: dict) -> list[tuple[str, str, str, str | None]]:
    return [(s["name"], q["type"], q["rcode"], q["plugin"]) for s in d["steps"] for q in s["queries"]]


@pytest.mark.timeout(90)
def test_explain_against_a_running_server(server):
    port, up, config = server
    # a short Service name in the Pod's namespace: the first search domain answers
    rc, d = explain(port, "nginx", "--namespace", "default")
    assert rc == 0 and d["answered"] == "nginx.default.svc.cluster.local."
    assert _flat(d) == [("nginx.default.svc.cluster.local.", "A", "NOERROR", "kubernetes"),
                        ("nginx.default.svc.cluster.local.", "AAAA", "NOERROR", "kubernetes")]
    a = d["steps"][0]["queries"][0]
    assert a["answers"] == ["nginx.default.svc.cluster.local. 30 A 10.96.0.100"] and a["ttl"] == 30
    assert d["steps"][0]["queries"][1]["ttl"] == 30  # NODATA: the negative TTL from the SOA (RFC 2308)
    assert d["would_change"] == []  # two queries: nothing does better

    # a Service in another namespace: NXDOMAIN in the Pod's namespace, then svc.cluster.local
    rc, d = explain(port, "db.otherns", "-n", "default")
    assert rc == 0 and [s["name"] for s in d["steps"]] == ["db.otherns.default.svc.cluster.local.",
                                                          "db.otherns.svc.cluster.local."]
    assert d["steps"][0]["outcome"] == "NXDOMAIN" and d["steps"][1]["outcome"] == "answer"

    # an external name: three search domains NXDOMAIN from the cluster, then forwarded
    rc, d = explain(port, "google.com", "-n", "default")
    assert rc == 0 and d["queries"] == 8
    assert _flat(d)[:6] == [(f"google.com.{z}.", t, "NXDOMAIN", "kubernetes")
                            for z in ("default.svc.cluster.local", "svc.cluster.local", "cluster.local")
                            for t in ("A", "AAAA")]
    assert _flat(d)[6:] == [("google.com.", "A", "NOERROR", "forward"), ("google.com.", "AAAA", "NOERROR", "forward")]
    assert "192.0.2.10" in d["steps"][-1]["queries"][0]["answers"][0]
    assert any("ndots:1" in h and "2 queries" in h for h in d["would_change"])
    assert any("autopath" in h for h in d["would_change"])
    # the upstream saw the names outside the cluster only (db.otherns. from the ndots:1 alternative),
    # without kubedns explain's option (it is not relayed)
    assert {q.name for q in up.queries} == {"google.com", "db.otherns"}
    assert all(code != EXPLAIN_OPTION for q in up.queries for code, _ in q.options)

    # --config says whether the server's block has autopath (this one has not; another has)
    rc, d = explain(port, "google.com", "--config", str(config))
    assert any(h.startswith("autopath is not in the server's block") for h in d["would_change"])
    with_autopath = config.parent / "Corefile.autopath"
    with_autopath.write_text(".:53 {\n    kubernetes cluster.local {\n        pods verified\n    }\n"
                             "    autopath @kubernetes\n    forward . 127.0.0.7\n}\n")
    rc, d = explain(port, "google.com", "--config", str(with_autopath))
    assert any(h.startswith("the server's block has autopath") and "2 queries instead of 8" in h
               for h in d["would_change"])

    # a trailing dot: one step
    rc, d = explain(port, "google.com.")
    assert rc == 0 and [s["name"] for s in d["steps"]] == ["google.com."] and d["queries"] == 2

    # musl: dots >= ndots means no search list at all
    rc, d = explain(port, "nginx.default", "--musl", "--ndots", "1")
    assert rc == 1 and [s["name"] for s in d["steps"]] == ["nginx.default."] and d["stub"] == "musl"
    assert d["steps"][0]["outcome"] == "NXDOMAIN"
    rc, d = explain(port, "nginx", "--musl", "--type", "A")
    assert rc == 0 and _flat(d) == [("nginx.default.svc.cluster.local.", "A", "NOERROR", "kubernetes")]


@pytest.mark.timeout(90)
def test_explain_text_output(server):
    port, _, _ = server
    r = run("explain", "google.com", "--namespace", "default", "--server", f"127.0.0.1:{port}")
    assert r.returncode == 0, r.stderr
    assert "1 dot(s) < ndots:5: the search list first" in r.stdout
    assert "8 queries in 4 step(s); stops at google.com. (as is, after the search list): an answer" in r.stdout
    assert "What would change it:" in r.stdout


@pytest.mark.timeout(60)
def test_the_plugin_option_only_for_loopback_or_debug(server):
    """The server tells which plugin answered only when asked, and such answers are not kept on
    the fast path (each one is answered by the chain): asked twice, both carry it."""
    port, _, _ = server
    for _ in range(2):
        q = dns.message.make_query("nginx.default.svc.cluster.local", "A",
                                   options=[dns.edns.GenericOption(EXPLAIN_OPTION, b"")])
        r = dns.query.udp(q, "127.0.0.1", port=port, timeout=3)
        got = [o for o in r.options if o.otype == EXPLAIN_OPTION]
        assert len(got) == 1 and got[0].to_wire() == b"plugin=kubernetes zone=cluster.local"
    plain = dns.query.udp(dns.message.make_query("nginx.default.svc.cluster.local", "A"), "127.0.0.1", port=port,
                          timeout=3)
    assert not [o for o in plain.options if o.otype == EXPLAIN_OPTION]


def test_explain_refuses_a_bad_server_address():
    r = run("explain", "nginx", "--server", "dns.example:53")
    assert r.returncode == 2 and "expected an IP address" in r.stderr


def _explain_query(qid: int) -> bytes:
    q = dns.message.make_query("nginx.default.svc.cluster.local", "A",
                               options=[dns.edns.GenericOption(EXPLAIN_OPTION, b"")])
    q.id = qid
    return q.to_wire()


def _told(data: bytes) -> list[bytes]:
    r = dns.message.from_wire(data)
    return [o.to_wire() for o in r.options if o.otype == EXPLAIN_OPTION]


def test_the_plugin_is_told_to_loopback_or_with_debug_only():
    """In-process: a client off loopback is not told; on loopback, or in a block with ``debug``,
    it is.  No answer to a query that asked is kept on the fast path (whose key has no client
    address): a loopback client asking after another client is still told."""
    import dataclasses

    from tests.support.dispatch import udp_dispatcher

    disp, proto, tr, _ = udp_dispatcher()
    plain = dns.message.make_query("nginx.default.svc.cluster.local", "A", use_edns=0)
    proto.datagramReceived(plain.to_wire(), ("127.0.0.1", 5353))
    assert _told(tr.socket.sent[-1][0]) == [] and len(disp.fast.entries) == 1  # kept: its own key
    proto.datagramReceived(_explain_query(1), ("10.1.2.3", 5353))
    assert _told(tr.socket.sent[-1][0]) == [] and len(disp.fast.entries) == 1
    proto.datagramReceived(_explain_query(2), ("127.0.0.1", 5353))
    assert _told(tr.socket.sent[-1][0]) == [b"plugin=kubernetes zone=cluster.local"] and len(disp.fast.entries) == 1
    block = disp.blocks[0]
    block.config = dataclasses.replace(block.config, debug=True)
    proto.datagramReceived(_explain_query(3), ("10.1.2.3", 5353))
    assert _told(tr.socket.sent[-1][0]) == [b"plugin=kubernetes zone=cluster.local"] and len(disp.fast.entries) == 1


def test_explain_without_a_server_says_so():
    """Nothing listening on the port: one step, one clear line, exit 1 (nothing else is asked)."""
    port = free_port()
    r = run("explain", "nginx", "--server", f"127.0.0.1:{port}", "--timeout", "0.5")
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.strip() == f"kubedns explain: no reply from 127.0.0.1:{port} within 0.5s " \
                               "(is a DNS server listening there?)"
