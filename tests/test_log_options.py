"""CoreDNS's ``log`` (NAMES, FORMAT with its placeholders, ``class``), ``errors``
(``consolidate DURATION REGEXP [LEVEL] [show_first]``), ``reload [INTERVAL] [JITTER]`` and
``debug``, in both syntaxes.

Pure-logic checks of the config, of CoreDNS's response classes and of the format replacer, the
error consolidation on a ``task.Clock``; then real ``twistd kubedns`` processes on loopback (a
cluster from a manifests file, a ``tests/dnsupstream.py`` upstream) whose log shows which
queries were logged, and how.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from twisted.internet import task
from twisted.logger import Logger

from kubedns.config import ConfigError, load, parse
from kubedns.configbase import Node
from kubedns.dns.query import QueryInfo
from kubedns.ops.logconfig import COMMON_FORMAT, LOG_CLASSES, parse_errors, parse_log
from kubedns.ops.querylog import (
    ErrorLog,
    QueryLog,
    common_line,
    compile_format,
    format_line,
    go_duration,
    response_class,
    response_type,
)
from kubedns.serve.server import Block
from tests.conftest import free_port, query
from tests.dnsupstream import DNSUpstream
from tests.support import kubeobj

pytestmark = pytest.mark.timeout(60)


def query_info(**kw: Any) -> QueryInfo:
    """A UDP A query for ``Nginx.Default.svc.cluster.local`` from 127.0.0.1:50759 answered NOERROR
    in 38 ms (CoreDNS's log example), with the fields in ``kw`` changed."""
    base: dict[str, Any] = dict(
        server="dns://127.0.0.1:53", zone="cluster.local", proto="udp", peer=("127.0.0.1", 50759),
        qname=b"Nginx.Default.svc.cluster.local", qtype=1, qclass=1, qid=29008, request_size=41,
        response_size=68, rcode=0, flags=0x8580, duration=0.037990251, do=False,
    )
    base.update(kw)
    return QueryInfo(**base)


# -- config --------------------------------------------------------------------------------------


def test_log_names_classes_and_format() -> None:
    c = parse_log(Node({"names": ["Example.ORG."], "classes": ["denial", "error"], "format": "{name} {rcode}"}, "f", "log"))
    assert c.names == ("example.org",) and c.classes == {"denial", "error"} and c.format == "{name} {rcode}"
    assert parse_log(Node(None, "f", "log")).classes == set(LOG_CLASSES)  # bare `log`: all
    assert parse_log(Node({"classes": ["all", "denial"]}, "f", "log")).classes == set(LOG_CLASSES)
    assert parse_log(Node({"classes": "error"}, "f", "log")).classes == {"error"}
    assert parse_log(Node({"names": ["."]}, "f", "log")).names == ()  # the root: every name
    for fmt in ("common", "combined", "json"):
        assert parse_log(Node({"format": fmt}, "f", "log")).format == fmt


@pytest.mark.parametrize(("value", "key", "expected"), [
    ({"classes": ["errors"]}, "log.classes[0]", "one of all | success | denial | error"),
    ({"format": "xml"}, "log.format", "one of common | json | combined, or a format with placeholders"),
    ({"names": ["bad name"]}, "log.names[0]", "a DNS zone name"),
])
def test_log_errors_name_the_key(value: Any, key: str, expected: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_log(Node(value, "f", "log"))
    assert f"f: {key}: expected {expected}" in str(e.value)


def test_errors_consolidate_rules_and_the_old_shape() -> None:
    c = parse_errors(Node({"consolidate": [
        {"duration": "5m", "regexp": ".* i/o timeout$", "level": "warning", "show_first": True},
        {"duration": "30s", "regexp": "^Failed to .+"},
    ]}, "f", "errors"))
    assert c.consolidate == 0 and [(r.duration, r.regexp, r.level, r.show_first) for r in c.rules] == [
        (300.0, ".* i/o timeout$", "warning", True), (30.0, "^Failed to .+", "error", False)]
    assert parse_errors(Node({"consolidate": "20s"}, "f", "errors")).consolidate == 20.0  # kubedns's own
    assert parse_errors(Node(None, "f", "errors")).rules == ()


@pytest.mark.parametrize(("rule", "key", "expected"), [
    ({"duration": "5m", "regexp": "(unclosed"}, "regexp", "a regular expression (missing )"),
    ({"duration": "5m", "regexp": "x", "level": "fatal"}, "level", "one of error | warning | info | debug"),
    ({"duration": "5m", "regexp": "x" * 10001}, "regexp", "a regular expression of at most 10000 characters"),
    ({"regexp": "x"}, "duration", "a value (the key is required)"),
])
def test_consolidate_errors_name_the_key(rule: dict, key: str, expected: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_errors(Node({"consolidate": [rule]}, "f", "errors"))
    assert f"errors.consolidate[0].{key}: expected {expected}" in str(e.value)


def _block(extra: str) -> Any:
    return parse(f"servers: [{{zones: ['.'], listen: '127.0.0.1:53', forward: {{to: ['127.0.0.1:5300']}}, {extra}}}]")


def test_reload_interval_and_jitter() -> None:
    assert _block("reload: {}").servers[0].reload.jitter == 15.0  # CoreDNS's defaults: 30s, 15s
    r = _block("reload: {interval: 1m, jitter: 10s}").servers[0].reload
    assert (r.interval, r.jitter) == (60.0, 10.0)
    assert _block("reload: 10s").servers[0].reload.jitter == 5.0  # at most half the interval
    assert _block("reload: {interval: 10s, jitter: 0s}").servers[0].reload.jitter == 0.0
    with pytest.raises(ConfigError, match=r"servers\[0\].reload.jitter: expected a duration of 0s"):
        _block("reload: {interval: 10s, jitter: 500ms}")


def test_debug_is_accepted() -> None:
    assert _block("debug: {}").servers[0].debug and not _block("log: {}").servers[0].debug


def test_corefile_maps_log_errors_and_reload(tmp_path: Path) -> None:
    path = tmp_path / "Corefile"
    path.write_text(""".:53 {
    forward . 127.0.0.1:5300
    log example.org {combined} {
        class denial
        class error
    }
    errors {
        consolidate 5m ".* i/o timeout$" warning show_first
        consolidate 30s "^Failed to .+"
    }
    reload 10s 2s
    debug
}
""")
    b = load(str(path)).servers[0]
    assert b.log.names == ("example.org",) and b.log.classes == {"denial", "error"} and b.log.format == "combined"
    assert [(r.duration, r.regexp, r.level, r.show_first) for r in b.errors.rules] == [
        (300.0, ".* i/o timeout$", "warning", True), (30.0, "^Failed to .+", "error", False)]
    assert (b.reload.interval, b.reload.jitter) == (10.0, 2.0) and b.debug


# -- CoreDNS's classes and placeholders -----------------------------------------------------------


@pytest.mark.parametrize(("kw", "rtype", "klass"), [
    ({"rcode": 0, "answers": 1}, "NOERROR", "success"),
    ({"rcode": 0, "answers": 0}, "NOERROR", "success"),  # no SOA either: a referral/empty answer
    ({"rcode": 0, "answers": 0, "soa": True}, "NODATA", "denial"),
    ({"rcode": 3, "answers": 0, "soa": True}, "NXDOMAIN", "denial"),
    ({"rcode": 3, "answers": 0}, "NXDOMAIN", "denial"),
    ({"rcode": 3, "answers": 2}, "OTHERERROR", "error"),  # as CoreDNS's Typify
    ({"rcode": 2}, "SERVERERROR", "error"),
    ({"rcode": 4}, "SERVERERROR", "error"),
    ({"rcode": 5}, "OTHERERROR", "error"),
    ({"rcode": 0, "answers": 1, "qtype": 252}, "META", "error"),  # AXFR
    ({"rcode": 0, "opcode": 5}, "UPDATE", "error"),
])
def test_response_type_and_class_as_coredns(kw: dict, rtype: str, klass: str) -> None:
    info = query_info(**kw)
    assert response_type(info) == rtype and response_class(info) == klass


def test_the_common_format_through_the_replacer_is_the_common_line() -> None:
    info = query_info(answers=1)
    assert format_line(compile_format(COMMON_FORMAT), info) == common_line(info)
    assert format_line(compile_format("{common}"), info) == common_line(info)
    assert format_line(compile_format("{combined}"), info) == common_line(info) + ' "0"'
    assert common_line(info) == ('127.0.0.1:50759 - 29008 "A IN nginx.default.svc.cluster.local. udp 41 false 512" '
                                 'NOERROR qr,aa,rd,ra 68 0.037990251s')


@pytest.mark.parametrize(("fmt", "line"), [
    ("{proto} Request: {name} {type} {>id}", "udp Request: nginx.default.svc.cluster.local. A 29008"),
    ("{remote} {local} {/log/class} {/log/type} {/other}", "[::1] [::] denial NXDOMAIN -"),
    ("{unknown} {rcode} } {", "{unknown} NXDOMAIN } {"),
    ("{ {rsize}}", "{ 68}"),  # from each } back to the nearest {, as CoreDNS's replacer
    ("{>do} {>bufsize} {>rflags}", "true 1232 qr,rd,ra"),
])
def test_custom_formats(fmt: str, line: str) -> None:
    info = query_info(rcode=3, soa=True, peer=("::1", 5353, 0, 0), server="dns://:::53", do=True, bufsize=1232,
                      flags=0x8180)
    assert format_line(compile_format(fmt), info) == line


def test_local_is_the_listen_address() -> None:
    parts = compile_format("{local}")
    assert [format_line(parts, query_info(server=s)) for s in ("dns://:53", "dns://127.0.0.1:53", "dns://[::1]:53")] == [
        "0.0.0.0", "127.0.0.1", "[::1]"]


def test_go_durations() -> None:
    assert [go_duration(s) for s in (0.25, 30, 300, 5400, 1.5, 90.25)] == [
        "250ms", "30s", "5m0s", "1h30m0s", "1.5s", "1m30.25s"]


# -- the query log: names and classes -------------------------------------------------------------


def test_query_log_names_and_classes() -> None:
    events: list[dict] = []

    class Disp:
        blocks = [Block(_block("log: {names: [example.org], classes: [denial]}").servers[0], None, chain=None, loop=None)]

    qlog = QueryLog(Disp(), logger=Logger(observer=events.append))
    qlog(query_info(qname=b"www.example.org", rcode=0, answers=1))  # success: not logged
    qlog(query_info(qname=b"nx.example.org", rcode=3, soa=True))  # denial: logged
    qlog(query_info(qname=b"nx.example.com", rcode=3, soa=True))  # another name: not logged
    qlog(query_info(qname=b"empty.example.org", rcode=0, soa=True))  # NODATA: logged
    assert [e["line"].split('"')[1].split()[2] for e in events] == ["nx.example.org.", "empty.example.org."]


# -- errors: consolidate rules ---------------------------------------------------------------------


def test_consolidate_rules_count_summarise_and_show_first() -> None:
    events: list[dict] = []
    clock = task.Clock()

    class Disp:
        blocks = [Block(_block("errors: {consolidate: [{duration: 30s, regexp: 'timeout$', level: warning},"
                               " {duration: 1m, regexp: '^forward', show_first: true}]}").servers[0],
                        None, chain=None, loop=None)]

    elog = ErrorLog(Disp(), reactor=clock, logger=Logger(observer=events.append))

    def fail(error: str, name: bytes = b"a.example.org") -> None:
        elog(query_info(qname=name, rcode=2, error=error))

    def lines() -> list[tuple[str, str]]:
        from twisted.logger import formatEvent

        out = [(e["log_level"].name, formatEvent(e)) for e in events]
        events.clear()
        return out

    for _ in range(3):
        fail("upstream: i/o timeout")
    fail("kubernetes: not synced yet")  # no rule matches: logged as it comes
    assert lines() == [("error", "plugin/errors: 2 a.example.org. A: kubernetes: not synced yet")]
    clock.advance(30)
    assert lines() == [("warn", "plugin/errors: 3 errors like 'timeout$' occurred in last 30s")]
    fail("forward: no upstream answered")  # show_first: the first is logged at once ...
    assert lines() == [("error", "plugin/errors: 2 a.example.org. A: forward: no upstream answered")]
    clock.advance(60)
    assert lines() == []  # ... and one alone gets no summary
    fail("forward: x")
    fail("forward: y")
    lines()
    clock.advance(60)
    assert lines() == [("error", "plugin/errors: 2 errors like '^forward' occurred in last 1m0s")]
    fail("upstream: i/o timeout")
    elog.flush()  # at shutdown the pending count is written out
    assert lines() == [("warn", "plugin/errors: 1 errors like 'timeout$' occurred in last 30s")]


# -- a real server over UDP -------------------------------------------------------------------------


def _manifests(path: Path) -> Path:
    objs = [kubeobj.namespace("default"),
            kubeobj.service("nginx", "default", cluster_ip="10.96.0.100", ports=[{"name": "http", "port": 80}])]
    path.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": objs}, sort_keys=False))
    return path


@pytest.fixture
def upstreams():
    with DNSUpstream(host="127.0.0.9") as good, DNSUpstream(host="127.0.0.10") as bad:
        good.add("www.example.org", "A", "192.0.2.1")
        bad.mode = "servfail"
        yield good, bad


def _corefile(port: int, manifests: Path, good: str, bad: str, log: str) -> str:
    return f""".:{port} {{
    bind 127.0.0.1
    kubernetes cluster.local in-addr.arpa ip6.arpa {{
        manifests {manifests}
        pods insecure
    }}
    forward . {good}
    cache 30
    {log}
}}
broken.test:{port} {{
    bind 127.0.0.1
    forward . {bad}
    {log}
}}
"""


def _logged(p: Any, marker: str) -> list[str]:
    return [ln.split(marker, 1)[1].strip() for ln in p.log().splitlines() if marker in ln]


def test_log_classes_end_to_end(kubedns_process, upstreams, tmp_path: Path) -> None:
    """`log . "..." { class denial error }`: NXDOMAIN, NODATA and SERVFAIL are logged in the
    format given, successful answers (cluster, forwarded, cached) are not."""
    good, bad = upstreams
    port = free_port()
    log = 'log . "Q {name} {type} {rcode} {/log/class} {proto}" {\n        class denial error\n    }'
    p = kubedns_process(_corefile(port, _manifests(tmp_path / "c.yaml"), good.address, bad.address, log))
    p.wait_listening(port)
    for _ in range(2):
        assert query(port, "nginx.default.svc.cluster.local", "A").answer
        assert query(port, "www.example.org", "A").answer
    query(port, "missing.default.svc.cluster.local", "A")
    query(port, "nginx.default.svc.cluster.local", "MX")
    query(port, "x.broken.test", "A")
    want = ["missing.default.svc.cluster.local. A NXDOMAIN denial udp",
            "nginx.default.svc.cluster.local. MX NOERROR denial udp",
            "x.broken.test. A SERVFAIL error udp"]
    deadline = time.monotonic() + 10
    while _logged(p, " Q ")[-3:] != want and time.monotonic() < deadline:
        time.sleep(0.1)
    got = [ln for ln in _logged(p, " Q ") if "dns-version" not in ln]  # wait_listening's probes
    assert got == want, p.log()


def test_log_names_and_default_format_end_to_end(kubedns_process, upstreams, tmp_path: Path) -> None:
    """`log example.org`: only names in example.org, in CoreDNS's Common Log Format."""
    good, bad = upstreams
    port = free_port()
    p = kubedns_process(_corefile(port, _manifests(tmp_path / "c.yaml"), good.address, bad.address,
                                  "log example.org"))
    p.wait_listening(port)
    query(port, "nginx.default.svc.cluster.local", "A")
    query(port, "www.example.org", "A")
    common = re.compile(r'127\.0\.0\.1:\d+ - \d+ "A IN www\.example\.org\. udp \d+ (true|false) \d+" NOERROR '
                        r'qr,rd,ra \d+ [0-9.]+s$')
    deadline = time.monotonic() + 10
    while not any(common.search(ln) for ln in p.log().splitlines()) and time.monotonic() < deadline:
        time.sleep(0.1)
    lines = [ln for ln in p.log().splitlines() if ' "A IN ' in ln or ' "TXT IN ' in ln]
    assert len(lines) == 1 and common.search(lines[0]), p.log()


# -- reload: the jittered period ------------------------------------------------------------------


def test_reload_period_is_interval_plus_jitter_drawn_per_change() -> None:
    from kubedns.service import KubeDNS

    clock = task.Clock()
    kd = KubeDNS(_block("reload: {interval: 10s, jitter: 4s}"), reactor=clock)
    draws: list[tuple[float, float]] = []
    kd.jitter_random = lambda lo, hi: draws.append((lo, hi)) or lo  # type: ignore[assignment,func-returns-value]
    checks: list[int] = []
    kd.reload = lambda force=False: checks.append(1) or False  # type: ignore[method-assign,assignment,func-returns-value]
    kd.running = 1
    kd._schedule_reload()
    assert draws == [(-2.0, 2.0)]  # within ±JITTER/2, as CoreDNS draws it
    loop = kd._reload_loop
    assert loop is not None and loop.interval == 8.0
    clock.advance(7.9)
    assert checks == []
    clock.advance(0.2)
    assert checks == [1]
    kd._schedule_reload()  # an applied reload with the same key keeps the timer (no new draw)
    assert kd._reload_loop is loop and len(draws) == 1
    kd.config = _block("reload: {interval: 10s, jitter: 0s}")
    kd._schedule_reload()  # a changed key: a new period, no jitter at all
    assert kd._reload_loop is not loop and kd._reload_loop.interval == 10.0 and len(draws) == 1
    kd._reload_loop.stop()
