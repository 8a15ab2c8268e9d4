"""The ``template`` plugin: its Go-template subset and record text, CoreDNS's matching rules as
table tests, the fast path, then a real server over UDP.

The table tests run :class:`~kubedns.plugins.template.TemplatePlugin` in front of a recording
``next``; a Dispatcher over the record table's store shows a templated answer's fast-path bytes
equal its slow-path bytes (and that one using ``.Remote`` is not kept).  The process tests start
``twistd kubedns`` on a manifests cluster with ``forward`` to a tests/dnsupstream.py server on
127.0.0.x (nothing leaves loopback) and check the two uses people add it for: AAAA answered
NODATA at once in an IPv4-only cluster, and search-path expansions of external names answered
NXDOMAIN at once, both without asking the upstream, from YAML and from a Corefile.
"""

from __future__ import annotations

import io
import random
import signal
from typing import Any

import dns.flags
import dns.message
import dns.rcode
import pytest
from twisted.internet import task
from twisted.names import dns as tdns

from kubedns.config import KubernetesConfig, ServerBlock, parse_data
from kubedns.configbase import Address, ConfigError, Node
from kubedns.corefile import CorefileSyntaxError, parse_corefile_config
from kubedns.dns.query import Request
from kubedns.dns.records import Answer, ClusterZones
from kubedns.dns.wire import parse_question
from kubedns.k8s import objects
from kubedns.k8s.store import Store
from kubedns.plugins.base import Reply
from kubedns.plugins.gotext import GoTemplate, TemplateError, parse_name, parse_rr, present
from kubedns.plugins.template import TemplatePlugin, parse_template_config
from kubedns.serve.protocols import DNSDatagramProtocol
from kubedns.serve.server import Block, Dispatcher
from tests.conftest import KubeDNSProcess, free_port, query, rrset_text, wait_for
from tests.dnsupstream import DNSUpstream
from tests.support import kubeobj
from tests.support.cluster import write_manifests
from tests.support.dispatch import CapturingTransport
from tests.support.records_table import fill

TYPES_READ = ["A", "AAAA", "CNAME", "DNAME", "NS", "PTR", "MX", "SRV", "TXT", "SPF", "HINFO", "SOA"]
DATA = {"Name": "ip-10-1-2-3.example.", "Zone": "example.", "Class": "IN", "Type": "A",
        "Match": ["ip-10-1-2-3.example.", "10", "1"], "Group": {"0": "ip-10-1-2-3.example.", "a": "10", "b": "ff"},
        "Remote": "10.0.0.1", "Regex": ".*"}


# -- the Go-template subset and the record text ------------------------------------------------------


@pytest.mark.parametrize("text,want", [
    ("{{ .Name }} 60 IN A {{ .Group.a }}.0.0.1", "ip-10-1-2-3.example. 60 IN A 10.0.0.1"),
    ("{{.Zone}} {{ .Class }} {{ .Type }} {{ .Remote }}", "example. IN A 10.0.0.1"),
    ("{{ index .Match 1 }}.{{ index .Match 2 }} {{ index .Group \"a\" }}", "10.1 10"),
    ("{{ parseInt .Group.b 16 8 }}", "255"),
    ("a {{- /* a comment */ -}} b", "ab"),
    ("{{ .Group.missing }}x {{ \"lit\" }} {{ 7 }}", "x lit 7"),
])
def test_go_template_subset(text, want):
    assert GoTemplate(text).render(DATA) == want


@pytest.mark.parametrize("text,why", [
    ("{{ if .Name }}x{{ end }}", "not supported by kubedns"),
    ("{{ .Name | printf \"%s\" }}", "not supported by kubedns"),
    ("{{ $x := 1 }}", "not supported by kubedns"),
    ("{{ .Meta \"kubernetes/client-namespace\" }}", ".Meta is not supported"),
    ("{{ .Var.ip }}", ".Var is not supported"),
    ("{{ .Nope }}", "a field of CoreDNS's template data"),
    ("{{ .Name.x }}", "only .Group has keys"),
    ("{{ .Name }", "every {{ closed by }}"),
])
def test_go_template_refused_when_read(text, why):
    with pytest.raises(TemplateError, match=why.replace("|", "\\|")):
        GoTemplate(text)


def test_go_template_fails_per_query_on_a_bad_index_or_number():
    with pytest.raises(TemplateError, match="out of range"):
        GoTemplate("{{ index .Match 9 }}").render(DATA)
    with pytest.raises(TemplateError, match="out of range for 4 bits"):
        GoTemplate("{{ parseInt .Group.b 16 4 }}").render(DATA)


@pytest.mark.parametrize("text,want", [
    ("a.example. 60 IN A 192.0.2.1", "a.example 60 A"),
    ("a.example 60 A 192.0.2.1", "a.example 60 A"),  # class IN by default, relative to the root
    ("a.example. IN 60 AAAA 2001:db8::1", "a.example 60 AAAA"),
    ("a.example. A 192.0.2.1", "a.example 3600 A"),  # miekg/dns's default TTL
    ("foogle.com 60 IN CNAME google.com", "foogle.com 60 CNAME"),
    ("a.example. 1h MX 10 mx.example.", "a.example 3600 MX"),
    ("_x._tcp.a. 60 IN SRV 0 100 80 t.a.", "_x._tcp.a 60 SRV"),
    ("a. 60 IN TXT \"hello world\" two ; a comment", "a 60 TXT"),
    ("invalid. 60 IN SOA ns.invalid. hostmaster.invalid. (1 60 60 60 60)", "invalid 60 SOA"),
])
def test_record_text(text, want):
    rr = parse_rr(text)
    assert f"{rr.name.name.decode()} {rr.ttl} {tdns.QUERY_TYPES[rr.type]}" == want


@pytest.mark.parametrize("text,why", [
    ("a. 60 IN A 2001:db8::1", "an IPv4 address"),
    ("a. 60 IN", "a record"),
    ("a. 60 IN WKS x", "a record type kubedns builds"),
    ("a. 60 IN MX mx.example.", "PREFERENCE NAME"),
    ("a..b. 60 IN A 192.0.2.1", "a domain name"),
    ("a. 60 IN NOPE x", "a record type"),
])
def test_record_text_refused(text, why):
    with pytest.raises(ValueError, match=why):
        parse_rr(text)


def test_any_text_is_a_record_that_encodes_or_one_value_error():
    """Rendered templates come from query names: whatever the text, reading it either gives a
    record that encodes or raises ValueError (the query is then SERVFAIL), never anything else."""
    rnd = random.Random(12)
    toks = ["a.b", "1", "65536", "300", "1h", '"x y"', "(", ")", "1.2.3.4", "::1", "@", ".", "a..b", "x" * 70,
            "IN", "CH", ";c", "\\046", '"' + "y" * 300 + '"', "{{", "é", *TYPES_READ]
    made = 0
    for _ in range(5000):
        text = " ".join(rnd.choice(toks) for _ in range(rnd.randint(2, 10)))
        try:
            rr = parse_rr(text)
        except ValueError as e:
            assert "\n" not in str(e)
            continue
        rr.encode(io.BytesIO(), {})
        made += 1
    assert made > 100


def test_names_in_presentation_form():
    assert present(b"Foo.Example") == "foo.example." and present(b"") == "."
    assert present(b"a b.ex") == "a\\032b.ex." and parse_name("a\\032b.ex.") == b"a b.ex"
    assert parse_name("a" * 64 + ".ex.") is None and parse_name("a..b.") is None


# -- config ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("item,why", [
    ({"type": "A"}, "template\\[0\\].class: expected a value"),
    ({"class": "IN", "type": "NOPE"}, "template\\[0\\].type: expected a query type"),
    ({"class": "XX", "type": "A"}, "template\\[0\\].class: expected a query class"),
    ({"class": "IN", "type": "A", "rcode": "BOGUS"}, "template\\[0\\].rcode: expected a response code"),
    ({"class": "IN", "type": "A", "match": ["(x"]}, "template\\[0\\].match\\[0\\]: expected a regular expression"),
    ({"class": "IN", "type": "A", "answer": "{{ if .Name }}"}, "template\\[0\\].answer\\[0\\]: expected a record template"),
    ({"class": "IN", "type": "A", "answer": "a. 60 IN A nope"}, "an IPv4 address"),
    ({"class": "IN", "type": "A", "ederror": 70000}, "template\\[0\\].ederror.code: expected a whole number from 0 to 65535"),
    ({"class": "IN", "type": "A", "ederror": {"code": 21, "text": "x"}}, "one of the keys code, reason"),
    ({"class": "IN", "type": "A", "var": "ip"}, "one of the keys"),
])
def test_config_refused_with_the_key(item, why):
    with pytest.raises(ConfigError, match=why):
        parse_template_config(Node([item], "f.yaml", "template"))


def test_a_block_with_only_templates_is_a_block():
    cfg = parse_data({"servers": [{"zones": ["invalid"], "template": {"class": "ANY", "type": "ANY",
                                                                       "rcode": "NXDOMAIN"}}]}, "x.yaml")
    (t,) = cfg.servers[0].template
    assert (t.qclass, t.qtype, t.rcode, t.zones) == (255, 255, 3, ())


# -- the plugin in front of a recording next ---------------------------------------------------------


def _request(name: str, rdtype: str | int = "A", rdclass: str = "IN") -> Request:
    data = dns.message.make_query(name, rdtype, rdclass, use_edns=False).to_wire()
    q = parse_question(data)
    return Request(q, data[12 : q.end], None, 512, "udp", ("10.0.0.9", 5353), 0.0, data, None,
                   lname=q.qname.decode("ascii", "replace").lower())


_NEXT = Reply(Answer(rcode=tdns.EREFUSED), "", "next")


def _serve(templates: list[dict], name: str, rdtype: str | int = "A", zones: tuple[str, ...] = ("",),
           rdclass: str = "IN") -> Any:
    """(rcode, [records as text], authoritative, cacheable), or "next" when the query went on."""
    plugin = TemplatePlugin(parse_template_config(Node(templates, "f.yaml", "template")), zones)
    reply = plugin.serve(_request(name, rdtype, rdclass), lambda req: _NEXT)
    if reply is _NEXT:
        return "next"
    ans = reply.answer
    texts = [f"{s}: {rr.name.name.decode()} {rr.ttl} {tdns.QUERY_TYPES.get(rr.type)} {rr.payload}"
             for s, rrs in (("an", ans.answers), ("ns", ans.authority), ("ar", ans.additional)) for rr in rrs]
    return tdns.Message(rCode=ans.rcode).rCode, texts, ans.authoritative, reply.cacheable


AAAA_NODATA = {"class": "IN", "type": "AAAA", "rcode": "NOERROR"}
SEARCH_NX = {"class": "ANY", "type": "ANY", "zones": ["cluster.local"],
             "match": ["^(?:[^.]+\\.)+(?:com|net|org|io)\\.(?:[^.]+\\.svc\\.|svc\\.)?cluster\\.local\\.$"],
             "rcode": "NXDOMAIN",
             "authority": ["{{ .Zone }} 30 IN SOA ns.dns.cluster.local. hostmaster.cluster.local. (1 7200 1800 86400 30)"],
             "fallthrough": True}
FOOGLE = {"class": "IN", "type": "ANY", "zones": ["foogle.com"], "match": "^foogle\\.com\\.$",
          "answer": "foogle.com 60 IN CNAME google.com"}
IP_A = {"class": "IN", "type": "A", "zones": ["example"],
        "match": ["(^|[.])ip-(?P<a>[0-9]*)-(?P<b>[0-9]*)-(?P<c>[0-9]*)-(?P<d>[0-9]*)[.]example[.]$"],
        "answer": ["{{ .Name }} 60 IN A {{ .Group.a }}.{{ .Group.b }}.{{ .Group.c }}.{{ .Group.d }}"],
        "fallthrough": True}


@pytest.mark.parametrize("templates,name,rdtype,want", [
    # AAAA NODATA in an IPv4-only cluster: every AAAA, nothing else
    ([AAAA_NODATA], "google.com", "AAAA", (0, [], True, True)),
    ([AAAA_NODATA], "google.com", "A", "next"),
    ([AAAA_NODATA], "google.com", "ANY", (0, [], True, True)),  # a query for ANY meets every template
    # NXDOMAIN at once for the search-path expansions of external names
    ([SEARCH_NX], "google.com.default.svc.cluster.local", "A",
     (3, ["ns: cluster.local 30 SOA <SOA mname=ns.dns.cluster.local rname=hostmaster.cluster.local serial=1 "
          "refresh=7200 retry=1800 expire=86400 minimum=30 ttl=30>"], True, True)),
    ([SEARCH_NX], "api.github.io.svc.cluster.local", "AAAA", (3, ["ns"], True, True)),
    ([SEARCH_NX], "google.com.cluster.local", "A", (3, ["ns"], True, True)),
    ([SEARCH_NX], "nginx.default.svc.cluster.local", "A", "next"),  # fallthrough: the cluster answers
    ([SEARCH_NX], "google.com", "A", "next"),  # outside the zone
    # named groups; the first regexp that matches wins
    ([IP_A], "ip-10-1-2-3.example", "A",
     (0, ["an: ip-10-1-2-3.example 60 A <A address=10.1.2.3 ttl=60>"], True, True)),
    ([IP_A], "www.ip-10-1-2-3.example", "A", (0, ["an"], True, True)),  # the A is a wildcard, as CoreDNS's
    ([IP_A], "other.example", "A", "next"),
    # no regexp matches and no fallthrough: SERVFAIL
    ([{**IP_A, "fallthrough": False}], "other.example", "A", (2, [], False, False)),
    ([{**IP_A, "fallthrough": ["in-addr.arpa"]}], "other.example", "A", (2, [], False, False)),
    # the next template after a fallthrough, the next plugin after the last
    ([IP_A, {"class": "IN", "type": "A", "zones": ["example"], "answer": "{{ .Name }} 5 A 192.0.2.1"}],
     "other.example", "A", (0, ["an: other.example 5 A <A address=192.0.2.1 ttl=5>"], True, True)),
    # another class or type skips the template
    ([{"class": "CH", "type": "TXT", "rcode": "REFUSED"}], "version.bind", "TXT", "next"),
    ([{"class": "CH", "type": "TXT", "rcode": "REFUSED"}, AAAA_NODATA], "x.", "AAAA", (0, [], True, True)),
    # rcode SERVFAIL is a bare SERVFAIL
    ([{"class": "IN", "type": "A", "rcode": "SERVFAIL"}], "x.", "A", (2, [], False, False)),
    # .Remote: the answer depends on who asks, it is not kept
    ([{"class": "IN", "type": "TXT", "answer": "{{ .Name }} 5 TXT {{ .Remote }} {{ .Type }} {{ .Class }}"}],
     "WhoAmI.example", "TXT", (0, ["an: whoami.example 5 TXT <TXT data=['10.0.0.9', 'TXT', 'IN'] ttl=5>"],
                              True, False)),
    # a template that fails for this query: SERVFAIL
    ([{"class": "IN", "type": "A", "answer": "{{ index .Match 3 }} 5 A 192.0.2.1"}], "x.", "A",
     (2, [], False, False)),
    ([{"class": "IN", "type": "A", "answer": "{{ .Name }} 5 A {{ .Name }}"}], "x.", "A", (2, [], False, False)),
])
def test_templates(templates, name, rdtype, want):
    got = _serve(templates, name, rdtype)
    if isinstance(want, tuple) and want[1] in (["ns"], ["an"]):  # only the section of each record
        got = (got[0], [t[:2] for t in got[1]], got[2], got[3])
    assert got == want


def test_zone_field_and_block_zones():
    got = _serve([{"class": "IN", "type": "NS", "answer": "{{ .Zone }} 60 NS ns.{{ .Zone }}"}], "a.b.example", "NS",
                 zones=("example", "b.example"))
    assert got[1] == ["an: b.example 60 NS <NS name=ns.b.example ttl=60>"]  # the longest zone
    assert _serve([AAAA_NODATA], "x.other", "AAAA", zones=("example",)) == "next"


# -- the fast path -----------------------------------------------------------------------------------


def _dispatcher(templates: list[dict]) -> tuple[Dispatcher, DNSDatagramProtocol, CapturingTransport]:
    store = Store(required=("namespaces", "services", "endpointslices", "pods"))
    fill(store)
    kcfg = KubernetesConfig(pods="insecure", ttl=5)
    cfg = ServerBlock(zones=("",), listen=Address("127.0.0.1", 53), kubernetes=kcfg,
                      template=parse_template_config(Node(templates, "f.yaml", "template")))
    disp = Dispatcher("dns://127.0.0.1:53", [Block(cfg, ClusterZones(store, kcfg))], reactor=task.Clock())
    proto = DNSDatagramProtocol(disp)
    tr = CapturingTransport()
    proto.transport = tr
    proto.startProtocol()
    return disp, proto, tr


def _wire(name: str, rdtype: str, qid: int, edns: bool) -> bytes:
    q = dns.message.make_query(name, rdtype, use_edns=0 if edns else False)
    q.id = qid
    return q.to_wire()


@pytest.mark.parametrize("edns", [False, True], ids=["plain", "edns"])
@pytest.mark.parametrize("name,rdtype,rcode", [
    ("Google.com.default.svc.cluster.local", "A", dns.rcode.NXDOMAIN),
    ("nginx.default.svc.cluster.local", "AAAA", dns.rcode.NOERROR),
    ("ip-10-1-2-3.example", "A", dns.rcode.NOERROR),
])
def test_templated_fast_bytes_equal_slow_bytes(name, rdtype, rcode, edns):
    disp, proto, tr = _dispatcher([AAAA_NODATA, SEARCH_NX, IP_A])
    proto.datagramReceived(_wire(name, rdtype, 0x1111, edns), ("127.0.0.1", 5000))
    slow = tr.socket.sent[-1][0]
    msg = dns.message.from_wire(slow)
    assert msg.rcode() == rcode and msg.flags & dns.flags.AA
    assert len(disp.fast.entries) == 1
    disp.handle = None  # type: ignore[assignment]  # the slow path must not be reached now
    proto.datagramReceived(_wire(name, rdtype, 0x2222, edns), ("127.0.0.1", 5001))
    fast = tr.socket.sent[-1][0]
    assert fast[:2] == b"\x22\x22" and fast[2:] == slow[2:]


def test_a_templated_cname_is_followed_through_the_chain():
    """``answer "... CNAME target"`` for A: the block's chain answers the target (here the
    cluster), its records follow the CNAME, and the whole answer may be kept (the cluster's is);
    a template that CNAMEs to itself forever stops after 8 lookups."""
    disp, proto, tr = _dispatcher([
        {"class": "IN", "type": "ANY", "zones": ["db.example"], "answer": "db.example. 60 IN CNAME nginx.default.svc.cluster.local."},
        {"class": "IN", "type": "ANY", "zones": ["loop.example"], "answer": "{{ .Name }} 60 IN CNAME x{{ .Name }}"},
    ])
    proto.datagramReceived(_wire("db.example", "A", 1, False), ("127.0.0.1", 5000))
    slow = tr.socket.sent[-1][0]
    assert rrset_text(dns.message.from_wire(slow)) == ["db.example CNAME nginx.default.svc.cluster.local.",
                                                       "nginx.default.svc.cluster.local A 10.96.0.100"]
    assert len(disp.fast.entries) == 1
    proto.datagramReceived(_wire("db.example", "A", 2, False), ("127.0.0.1", 5000))
    assert tr.socket.sent[-1][0][2:] == slow[2:]
    proto.datagramReceived(_wire("db.example", "TXT", 3, False), ("127.0.0.1", 5000))
    assert len(dns.message.from_wire(tr.socket.sent[-1][0]).answer) == 1  # only A and AAAA follow
    proto.datagramReceived(_wire("a.loop.example", "A", 4, False), ("127.0.0.1", 5000))
    assert len(dns.message.from_wire(tr.socket.sent[-1][0]).answer) == 9


def test_templated_answers_stay_through_store_changes_unless_they_hold_an_soa():
    """A templated answer depends on no store: a cluster change leaves it on the fast path (one
    with an SOA goes, as any kept answer with an SOA kubedns cannot keep current)."""
    disp, proto, tr = _dispatcher([AAAA_NODATA, SEARCH_NX])
    store = disp.blocks[0].clusters.store
    for i, (name, rdtype) in enumerate((("google.com", "AAAA"), ("google.com.default.svc.cluster.local", "A"))):
        proto.datagramReceived(_wire(name, rdtype, i, False), ("127.0.0.1", 5000))
    assert len(disp.fast.entries) == 2
    store.upsert("services", *objects.service_from_raw(kubeobj.service("new", "default", cluster_ip="10.96.9.9")))
    disp.fast.store_changed(store)
    assert [dns.message.from_wire(b"\0\0" + e[0]).question[0].name.to_text() for e in disp.fast.entries.values()] == [
        "google.com."]


INVALID = {"class": "ANY", "type": "ANY", "zones": ["invalid"], "rcode": "NXDOMAIN",
           "authority": "invalid. 60 {{ .Class }} SOA ns.invalid. hostmaster.invalid. (1 60 60 60 60)",
           "ederror": {"code": 21, "reason": "Blocked according to RFC2606"}}


@pytest.mark.parametrize("edns", [False, True], ids=["plain", "edns"])
def test_ederror_goes_to_clients_that_sent_edns_and_fast_bytes_equal_slow_bytes(edns):
    """CoreDNS's "Resolve .invalid as NXDOMAIN" example: NXDOMAIN, its SOA, and the Extended
    DNS Error 21 with its text for a client with EDNS (one without gets no OPT at all)."""
    disp, proto, tr = _dispatcher([INVALID])
    proto.datagramReceived(_wire("Host.invalid", "A", 1, edns), ("127.0.0.1", 5000))
    slow = tr.socket.sent[-1][0]
    msg = dns.message.from_wire(slow)
    assert msg.rcode() == dns.rcode.NXDOMAIN and rrset_text(msg, "authority") == [
        "invalid SOA ns.invalid. hostmaster.invalid. 1 60 60 60 60"]
    if edns:
        (ede,) = msg.options
        assert (ede.otype, ede.code, ede.text) == (15, 21, "Blocked according to RFC2606")
    else:
        assert msg.edns < 0
    proto.datagramReceived(_wire("Host.invalid", "A", 2, edns), ("127.0.0.1", 5000))
    assert len(disp.fast.entries) == 1 and tr.socket.sent[-1][0][2:] == slow[2:]


def test_an_answer_using_remote_is_not_kept():
    disp, proto, tr = _dispatcher([{"class": "IN", "type": "TXT", "answer": "{{ .Name }} 5 TXT {{ .Remote }}"}])
    for i, peer in enumerate((("127.0.0.1", 5000), ("127.0.0.2", 5000))):
        proto.datagramReceived(_wire("whoami.example", "TXT", i, False), peer)
        assert rrset_text(dns.message.from_wire(tr.socket.sent[-1][0])) == [f'whoami.example TXT "{peer[0]}"']
    assert not disp.fast.entries


# -- a real server over UDP ------------------------------------------------------------------------


@pytest.fixture
def upstream():
    up = DNSUpstream(host="127.0.0.6").start()
    up.add("google.com", "A", "192.0.2.10")
    up.add("google.com", "AAAA", "2001:db8::10")
    yield up
    up.stop()


def _manifests(tmp_path) -> str:
    objs = [kubeobj.namespace("default"), kubeobj.service("nginx", "default", cluster_ip="10.96.0.100")]
    return write_manifests(tmp_path / "cluster.yaml", objs)


def _check(port: int, upstream: DNSUpstream) -> None:
    # AAAA answered NODATA at once, whatever the name; A still forwarded / from the cluster
    r = query(port, "google.com", "AAAA")
    assert r.rcode() == dns.rcode.NOERROR and not r.answer and r.flags & dns.flags.AA
    assert rrset_text(query(port, "google.com")) == ["google.com A 192.0.2.10"]
    assert upstream.count("google.com", "AAAA") == 0 and upstream.count("google.com", "A") == 1
    assert rrset_text(query(port, "nginx.default.svc.cluster.local")) == ["nginx.default.svc.cluster.local A 10.96.0.100"]
    # a CNAME made up for one name, its target's records from the upstream (CoreDNS's example)
    assert rrset_text(query(port, "foogle.com")) == ["foogle.com CNAME google.com.", "google.com A 192.0.2.10"]
    # search-path expansions of an external name: NXDOMAIN with the SOA, nobody else asked
    for name in ("google.com.default.svc.cluster.local", "google.com.svc.cluster.local", "google.com.cluster.local"):
        r = query(port, name)
        assert r.rcode() == dns.rcode.NXDOMAIN, name
        assert rrset_text(r, "authority") == ["cluster.local SOA ns.dns.cluster.local. hostmaster.cluster.local. "
                                              "1 7200 1800 86400 30"]
    assert query(port, "missing.default.svc.cluster.local").rcode() == dns.rcode.NXDOMAIN  # the cluster's own
    assert len(upstream.queries) == 2


@pytest.mark.timeout(60)
def test_server_templates_yaml(kubedns_process, tmp_path, upstream):
    port = free_port()
    p = kubedns_process({"servers": [{
        "zones": ["."], "listen": f"127.0.0.1:{port}",
        "template": [AAAA_NODATA, SEARCH_NX, FOOGLE],
        "kubernetes": {"zones": ["cluster.local"], "manifests": _manifests(tmp_path)},
        "forward": {"to": [upstream.address]},
    }]})
    p.wait_listening(port)
    _check(port, upstream)


@pytest.mark.timeout(60)
def test_a_reload_drops_templated_answers_kept_on_the_fast_path(kubedns_process, tmp_path, upstream):
    """Templated answers are pre-encoded; a reload that changes the template answers anew."""
    port = free_port()
    cfg = {"servers": [{"zones": ["."], "listen": f"127.0.0.1:{port}", "template": [AAAA_NODATA],
                        "forward": {"to": [upstream.address]}}]}
    p = kubedns_process(cfg)
    p.wait_listening(port)
    for _ in range(3):  # the second and third come from the fast path
        assert query(port, "google.com", "AAAA").rcode() == dns.rcode.NOERROR
    cfg["servers"][0]["template"] = [{**AAAA_NODATA, "rcode": "NXDOMAIN"}]
    p.write_config(cfg)
    p.signal(signal.SIGHUP)
    wait_for(lambda: query(port, "google.com", "AAAA").rcode() == dns.rcode.NXDOMAIN, timeout=15)
    assert upstream.count("google.com", "AAAA") == 0


@pytest.mark.timeout(60)
def test_server_templates_corefile(tmp_path, upstream):
    port = free_port()
    work = tmp_path / "coredns"
    work.mkdir()
    corefile = f""".:{port} {{
    bind 127.0.0.1
    template IN AAAA . {{
        rcode NOERROR
    }}
    template ANY ANY cluster.local {{
        match "^(?:[^.]+\\.)+(?:com|net|org|io)\\.(?:[^.]+\\.svc\\.|svc\\.)?cluster\\.local\\.$"
        rcode NXDOMAIN
        authority "{{{{ .Zone }}}} 30 IN SOA ns.dns.cluster.local. hostmaster.cluster.local. (1 7200 1800 86400 30)"
        fallthrough
    }}
    template IN ANY foogle.com {{
        match "^foogle\\.com\\.$"
        answer "foogle.com 60 IN CNAME google.com"
    }}
    kubernetes cluster.local {{
        manifests {_manifests(tmp_path)}
    }}
    forward . {upstream.address}
}}
"""
    p = KubeDNSProcess(corefile, work)
    p.config_path.unlink()
    p.config_path = work / "Corefile"
    p.write_config(corefile)
    p.start()
    try:
        p.wait_listening(port)
        _check(port, upstream)
    finally:
        p.stop()


def test_corefile_and_yaml_give_the_same_templates(tmp_path):
    text = """example {
    template IN A example {
        match (^|[.])ip-(?P<a>[0-9]*)-(?P<b>[0-9]*)-(?P<c>[0-9]*)-(?P<d>[0-9]*)[.]example[.]$
        answer "{{ .Name }} 60 IN A {{ .Group.a }}.{{ .Group.b }}.{{ .Group.c }}.{{ .Group.d }}"
        fallthrough
    }
    template IN AAAA {
        rcode NOERROR
    }
}
"""
    core = parse_corefile_config(text, str(tmp_path / "Corefile")).servers[0].template
    yaml_cfg = parse_data({"servers": [{"zones": ["example"], "template": [IP_A, AAAA_NODATA]}]}, "x.yaml")
    assert core == yaml_cfg.servers[0].template


@pytest.mark.parametrize("body,why", [
    ("template IN", "Corefile:2: template: expected CLASS TYPE"),
    ("template IN A {\n        var ip group('ip')\n    }", "Corefile:3: template: var: CoreDNS's expression options"),
    ("template IN A {\n        ederror\n    }", "Corefile:3: template: ederror: expected EXTENDED_ERROR_CODE"),
    ("template IN A {\n        ederror x\n    }", "Corefile:3: template: ederror: code: expected a whole number"),
    ("template IN A {\n        bogus 1\n    }", "Corefile:3: template: expected match, answer"),
    ("template IN BOGUS", "Corefile:2: template: TYPE: expected a query type"),
    ("template IN A {\n        answer \"{{ if .Name }}x{{ end }}\"\n    }", "Corefile:3: template: answer: expected a record"),
])
def test_corefile_errors_name_the_line(tmp_path, body, why):
    with pytest.raises(CorefileSyntaxError, match=why):
        parse_corefile_config(f".:53 {{\n    {body}\n    forward . 127.0.0.1\n}}\n", str(tmp_path / "Corefile"))
