"""The ``hosts`` plugin as pure logic: the table (hosts(5) parsing, wildcards, reverse names,
reload on a ``task.Clock``), its config and errors, its answers (a table like CoreDNS's
``hosts_test.go``), and the fast path (byte for byte the slow path's, dropped when the file
changes).  The real process over UDP is in tests/test_hosts_e2e.py.
"""

from __future__ import annotations

import ipaddress
import os
import time

import dns.message
import dns.rdatatype
import pytest
from twisted.internet import task
from twisted.names import dns as tdns

from kubedns.config import ServerBlock, parse
from kubedns.configbase import Address, ConfigError, Node
from kubedns.dns.query import Request
from kubedns.dns.wire import parse_question
from kubedns.plugins.base import Reply
from kubedns.plugins.hosts import HostsPlugin, HostsPlugins
from kubedns.plugins.hoststable import (
    HostsConfig,
    HostsTable,
    address_from_reverse,
    parse_address,
    parse_hosts,
    parse_hosts_config,
)
from kubedns.serve.protocols import DNSDatagramProtocol
from kubedns.serve.server import Block, Dispatcher

HOSTS = """\
# The following lines are desirable for IPv4 capable hosts
127.0.0.1       localhost
192.168.1.10    Example.COM.           example   # a comment after the names
192.168.1.11    example.com
::1                     localhost ip6-localhost ip6-loopback
fdfc:a744:27b5:3b0e::1  example.com example
fe80::1%eth0    link.local
::ffff:10.1.2.3 mapped.test
10.0.0.300      bad.address
10.0.0.5
not-an-ip       name
10.0.0.6        ok.test a..b {long}.test
192.168.1.10    example.com
10.0.0.7        *.wild.test
""".replace("{long}", "x" * 64)


# -- parsing -------------------------------------------------------------------------------------
def test_parse_names_addresses_comments_and_skipped_lines():
    problems: list[tuple[int, str]] = []
    m = parse_hosts(HOSTS, problems=problems)
    assert m.name4["localhost"] == ["127.0.0.1"]
    # several names per line, names lower-cased, one final dot dropped, a repeated line not repeated
    assert m.name4["example.com"] == ["192.168.1.10", "192.168.1.11"]
    assert m.name4["example"] == ["192.168.1.10"]
    assert m.name6["localhost"] == ["::1"]
    assert m.name6["ip6-loopback"] == ["::1"]
    assert m.name6["example.com"] == ["fdfc:a744:27b5:3b0e::1"]
    assert m.name6["link.local"] == ["fe80::1"]  # the %zone is dropped
    assert m.name4["mapped.test"] == ["10.1.2.3"]  # an IPv4-mapped address is IPv4, as Go reads it
    assert "mapped.test" not in m.name6
    assert m.name4["ok.test"] == ["10.0.0.6"]
    # reverse: every name of an address, in file order
    assert m.addr["192.168.1.10"] == ["example.com", "example"]
    assert m.addr["::1"] == ["localhost", "ip6-localhost", "ip6-loopback"]
    # skipped with a reason and the line number
    lines: dict[int, list[str]] = {}
    for n, why in problems:
        lines.setdefault(n, []).append(why)
    assert lines[9] == ["'10.0.0.300' is not an IP address"]
    assert lines[10] == ["an address without a name"]
    assert lines[11] == ["'not-an-ip' is not an IP address"]
    assert lines[12][0].startswith("name 'a..b' has an empty label")
    assert lines[12][1].startswith("name 'xxxxxxxx")  # a 64-character label
    assert len(problems) == 5
    assert not any("bad.address" in k for k in m.name4)


def test_parse_keeps_only_names_in_the_zones_and_no_reverse():
    m = parse_hosts(HOSTS, zones=("com", "test"), reverse=False)
    assert set(m.name4) == {"example.com", "mapped.test", "ok.test"}
    assert m.addr == {}
    assert m.wild4 == {"*.wild.test": ["10.0.0.7"]}


def test_wildcard_matches_one_label_and_gets_no_ptr():
    t = HostsTable(None, ["10.0.0.7 *.wild.test", "10.0.0.8 a.wild.test"], reactor=task.Clock())
    assert t.addresses("apps.wild.test", False) == ["10.0.0.7"]
    assert t.addresses("a.wild.test", False) == ["10.0.0.8"]  # an exact name wins
    assert t.addresses("wild.test", False) == []  # not the apex
    assert t.addresses("deep.apps.wild.test", False) == []  # only one label
    assert t.names("10.0.0.7") == []
    assert t.names("10.0.0.8") == ["a.wild.test"]


@pytest.mark.parametrize(
    ("name", "address"),
    [
        ("4.3.2.1.in-addr.arpa", "1.2.3.4"),
        ("10.1.168.192.in-addr.arpa", "192.168.1.10"),
        ("1." + "0." * 31 + "ip6.arpa", "::1"),
        ("3.2.1.in-addr.arpa", None),  # a partial name is not an address
        ("01.2.3.4.in-addr.arpa", None),  # leading zeros are not read (Go refuses them too)
        ("x.2.3.4.in-addr.arpa", None),
        ("example.com", None),
        ("1." + "0." * 30 + "ip6.arpa", None),
        ("10." + "0." * 30 + "ip6.arpa", None),
    ],
)
def test_address_from_reverse(name, address):
    assert address_from_reverse(name) == address


def test_address_from_reverse_ipv6_full():
    ip = "fdfc:a744:27b5:3b0e::1"
    assert address_from_reverse(ipaddress.ip_address(ip).reverse_pointer) == ip


def test_parse_address():
    assert parse_address("fe80::1%eth0") == ("fe80::1", 6)
    assert parse_address("::FFFF:1.2.3.4") == ("1.2.3.4", 4)
    assert parse_address("1.2.3") is None
    assert parse_address("2001:DB8::1") == ("2001:db8::1", 6)


# -- the table: file, inline entries, reload -----------------------------------------------------
def _write(path, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def test_file_then_inline_and_a_deleted_file_leaves_inline(tmp_path):
    hosts = tmp_path / "hosts"
    _write(hosts, "10.0.0.1 a.test both.test\n")
    clock = task.Clock()
    t = HostsTable(str(hosts), ["10.0.0.2 b.test both.test", "10.0.0.1 both.test"], reload=5, reactor=clock)
    t.start()
    assert t.addresses("a.test", False) == ["10.0.0.1"]
    assert t.addresses("b.test", False) == ["10.0.0.2"]
    assert t.addresses("both.test", False) == ["10.0.0.1", "10.0.0.2"]  # the file's, then inline
    assert t.names("10.0.0.1") == ["a.test", "both.test"]
    assert t.has_name("a.test") and not t.has_name("c.test")
    os.unlink(hosts)
    clock.advance(5)
    assert t.addresses("a.test", False) == []
    assert t.addresses("both.test", False) == ["10.0.0.2", "10.0.0.1"]  # the inline lines only
    _write(hosts, "10.0.0.9 a.test\n")  # restored: read again
    clock.advance(5)
    assert t.addresses("a.test", False) == ["10.0.0.9"]
    t.stop()
    assert not clock.getDelayedCalls()


def test_reload_picks_up_an_edit_and_calls_back(tmp_path):
    hosts = tmp_path / "hosts"
    _write(hosts, "10.0.0.1 a.test\n")
    clock = task.Clock()
    t = HostsTable(str(hosts), reload=15, reactor=clock)
    changes: list[int] = []
    t.on_change.append(lambda: changes.append(t.generation))
    t.start()
    assert changes == [1]
    _write(hosts, "10.0.0.2 a.test\n")  # same size, maybe the same mtime: the content decides
    clock.advance(14)
    assert t.addresses("a.test", False) == ["10.0.0.1"]  # not before the period
    clock.advance(1)
    assert t.addresses("a.test", False) == ["10.0.0.2"]
    assert changes == [1, 2]
    clock.advance(15)  # nothing new: no callback
    clock.advance(15)
    assert changes == [1, 2]


def test_same_stat_different_content_is_read_when_racy(tmp_path):
    """A second write within the file system's timestamp granularity keeps mtime and size."""
    hosts = tmp_path / "hosts"
    _write(hosts, "10.0.0.1 a.test\n")
    st = os.stat(hosts)
    t = HostsTable(str(hosts), reload=5, reactor=task.Clock())
    t.check()
    _write(hosts, "10.0.0.2 a.test\n")
    os.utime(hosts, ns=(st.st_atime_ns, st.st_mtime_ns))  # same mtime, same size, same inode
    assert t.check()
    assert t.addresses("a.test", False) == ["10.0.0.2"]


def test_configmap_symlink_swap_is_seen(tmp_path):
    """A ConfigMap volume (k3s's NodeHosts) changes by swapping its ``..data`` symlink: the file
    seen through it is another inode, even with the same size and mtime."""
    old, new = tmp_path / "..2026_a", tmp_path / "..2026_b"
    old.mkdir()
    new.mkdir()
    _write(old / "NodeHosts", "10.0.0.1 a.test\n")
    _write(new / "NodeHosts", "10.0.0.2 a.test\n")
    st = os.stat(old / "NodeHosts")
    os.utime(new / "NodeHosts", ns=(st.st_atime_ns, st.st_mtime_ns))
    os.symlink(old.name, tmp_path / "..data")
    os.symlink("..data/NodeHosts", tmp_path / "NodeHosts")
    t = HostsTable(str(tmp_path / "NodeHosts"), reload=5, reactor=task.Clock())
    t.check()
    t._racy = False  # only the inode may tell
    assert t.addresses("a.test", False) == ["10.0.0.1"]
    os.symlink(new.name, tmp_path / "..data_tmp")
    os.replace(tmp_path / "..data_tmp", tmp_path / "..data")  # what the kubelet does
    assert t.check()
    assert t.addresses("a.test", False) == ["10.0.0.2"]


def test_unchanged_stat_is_not_read_again(tmp_path, monkeypatch):
    hosts = tmp_path / "hosts"
    _write(hosts, "10.0.0.1 a.test\n")
    old = time.time() - 60
    os.utime(hosts, (old, old))
    t = HostsTable(str(hosts), reload=5, reactor=task.Clock())
    t.check()
    opened: list[str] = []
    real_open = open
    monkeypatch.setattr("builtins.open", lambda p, *a, **k: opened.append(p) or real_open(p, *a, **k))
    assert not t.check()
    assert opened == []


def test_missing_file_at_start_then_created(tmp_path):
    hosts = tmp_path / "hosts"
    clock = task.Clock()
    t = HostsTable(str(hosts), ["10.0.0.2 b.test"], reload=1, reactor=clock)
    t.start()
    assert t.addresses("b.test", False) == ["10.0.0.2"]
    _write(hosts, "10.0.0.1 a.test\n")
    clock.advance(1)
    assert t.addresses("a.test", False) == ["10.0.0.1"]


def test_reload_zero_reads_once(tmp_path):
    hosts = tmp_path / "hosts"
    _write(hosts, "10.0.0.1 a.test\n")
    clock = task.Clock()
    t = HostsTable(str(hosts), reload=0, reactor=clock)
    t.start()
    assert t.addresses("a.test", False) == ["10.0.0.1"]
    assert not clock.getDelayedCalls()


# -- config --------------------------------------------------------------------------------------
def _cfg(value, tmp_path=None):
    return parse_hosts_config(Node(value, "c.yaml", "servers[0].hosts"), lambda p: os.path.join(str(tmp_path or "/"), p))


def test_config_defaults_are_coredns_defaults():
    assert _cfg(None) == HostsConfig(file="/etc/hosts", ttl=3600, reload=5.0)
    assert _cfg(True) == _cfg({})
    c = _cfg({"file": None, "entries": ["10.0.0.1 a.test b.test", "# c", ""], "ttl": 60, "reload": "15s",
              "fallthrough": True, "no_reverse": True, "zones": ["Test."]})
    assert c == HostsConfig(file=None, entries=("10.0.0.1 a.test b.test",), zones=("test",), ttl=60,
                            reload=15.0, no_reverse=True, fallthrough=("",))
    assert _cfg({"fallthrough": ["in-addr.arpa"]}).fallthrough == ("in-addr.arpa",)
    assert _cfg({"fallthrough": False}).fallthrough == ()


def test_config_relative_file(tmp_path):
    assert _cfg("NodeHosts", tmp_path).file == str(tmp_path / "NodeHosts")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"ttl": 0}, "servers[0].hosts.ttl: expected a whole number from 1 to 65535, got 0"),
        ({"ttl": 70000}, "servers[0].hosts.ttl: expected a whole number from 1 to 65535"),
        ({"reload": "1ms"}, "servers[0].hosts.reload: expected a duration of 0 (no reload) or at least 100ms"),
        ({"reload": "soon"}, "servers[0].hosts.reload: expected a duration"),
        ({"entries": ["ttl 60"]}, "servers[0].hosts.entries[0]: expected a hosts line \"IP name [name...]\""),
        ({"entries": ["10.0.0.1"]}, "an address without a name"),
        ({"entries": ["10.0.0.1 a..b"]}, "name 'a..b' has an empty label"),
        ({"fallthrough_unsupported": True}, "fallthrough_unsupported only with fallthrough"),
        ({"tll": 5}, "servers[0].hosts.tll: expected one of the keys entries, fallthrough"),
        ({"zones": ["a b"]}, "servers[0].hosts.zones[0]: expected a DNS zone name"),
        (5, "servers[0].hosts: expected a mapping"),
    ],
)
def test_config_errors(value, message):
    with pytest.raises(ConfigError) as e:
        _cfg(value)
    assert message in str(e.value)
    assert "\n" not in str(e.value)


# -- the plugin's answers, in process (a table like CoreDNS's hosts_test.go) ----------------------
def _request(name: str, rdtype: str):
    data = dns.message.make_query(name, rdtype, use_edns=False).to_wire()
    q = parse_question(data)
    return Request(q, data[12 : q.end], None, 512, "udp", None, 0.0, data, None,
                   lname=q.qname.decode("ascii", "replace").lower())


def _serve(plugin, name: str, rdtype: str):
    """(rcode, [owner TYPE data...], authoritative) or "next" when the query went on."""
    went: list[object] = []
    reply = plugin.serve(_request(name, rdtype), lambda req: went.append(req) or Reply(None, "", "next"))
    if went:
        return "next"
    assert isinstance(reply, Reply) and reply.plugin == "hosts"

    wire = tdns.Message(answer=1, auth=reply.answer.authoritative, rCode=reply.answer.rcode)
    wire.answers = reply.answer.answers
    msg = dns.message.from_wire(wire.toStr())
    rrs = [f"{line} {rrset.ttl}" for rrset in msg.answer for line in rrset_text_of(rrset)]
    return reply.answer.rcode, sorted(rrs), reply.answer.authoritative, reply.cacheable


def rrset_text_of(rrset) -> list[str]:
    name = rrset.name.to_text(omit_final_dot=True)
    return [f"{name} {dns.rdatatype.to_text(rrset.rdtype)} {rd.to_text()}" for rd in rrset]


def _plugin(tmp_path, **kw):
    hosts = tmp_path / "hosts"
    _write(hosts, HOSTS)
    cfg = HostsConfig(file=str(hosts), **kw)
    p = HostsPlugin(cfg, kw.get("zones") or ("",), reactor=task.Clock())
    p.start()
    return p


def test_plugin_answers_like_coredns(tmp_path):
    p = _plugin(tmp_path, entries=("10.9.9.9 inline.test",), ttl=60)
    # owner names are the query name lower-cased, as CoreDNS's state.Name()
    assert _serve(p, "EXAMPLE.com", "A") == (
        0, ["example.com A 192.168.1.10 60", "example.com A 192.168.1.11 60"], True, True)
    assert _serve(p, "example.com", "AAAA") == (0, ["example.com AAAA fdfc:a744:27b5:3b0e::1 60"], True, True)
    assert _serve(p, "inline.test", "A")[1] == ["inline.test A 10.9.9.9 60"]
    # a known name asked another type, or the family it lacks: NODATA, authoritative
    assert _serve(p, "example.com", "MX") == (0, [], True, True)
    assert _serve(p, "mapped.test", "AAAA") == (0, [], True, True)
    # PTR, every name of the address; none here: the next plugin, whatever fallthrough says
    assert _serve(p, "10.1.168.192.in-addr.arpa", "PTR")[1] == [
        "10.1.168.192.in-addr.arpa PTR example. 60",
        "10.1.168.192.in-addr.arpa PTR example.com. 60",
    ]
    v6 = "1." + "0." * 31 + "ip6.arpa"
    assert _serve(p, v6, "PTR")[1] == [f"{v6} PTR {n}. 60" for n in ("ip6-localhost", "ip6-loopback", "localhost")]
    assert _serve(p, "9.9.9.10.in-addr.arpa", "PTR")[1] == ["9.9.9.10.in-addr.arpa PTR inline.test. 60"]
    assert _serve(p, "1.1.1.10.in-addr.arpa", "PTR") == "next"
    # not here, no fallthrough: SERVFAIL (CoreDNS has no SOA to say NXDOMAIN with)
    assert _serve(p, "missing.test", "A") == (2, [], False, False)


def test_plugin_fallthrough_zones_and_unsupported(tmp_path):
    p = _plugin(tmp_path, fallthrough=("",))
    assert _serve(p, "missing.test", "A") == "next"
    assert _serve(p, "example.com", "TXT")[0] == 0  # known name: NODATA, no fallthrough
    p = _plugin(tmp_path, fallthrough=("in-addr.arpa",))
    assert _serve(p, "missing.test", "A")[0] == 2
    p = _plugin(tmp_path, fallthrough=("",), fallthrough_unsupported=True)
    assert _serve(p, "example.com", "TXT") == "next"
    assert _serve(p, "example.com", "A")[0] == 0
    # names outside the plugin's zones always go on, and are not even read from the file
    p = _plugin(tmp_path, zones=("test",))
    assert _serve(p, "example.com", "A") == "next"
    assert _serve(p, "ok.test", "A")[1] == ["ok.test A 10.0.0.6 3600"]
    assert _serve(p, "6.0.0.10.in-addr.arpa", "PTR")[1] == ["6.0.0.10.in-addr.arpa PTR ok.test. 3600"]


def test_plugin_no_reverse(tmp_path):
    p = _plugin(tmp_path, no_reverse=True)
    assert _serve(p, "10.1.168.192.in-addr.arpa", "PTR") == "next"
    assert _serve(p, "example.com", "A")[0] == 0


def test_plugins_kept_across_reloads_while_unchanged(tmp_path):
    hosts = tmp_path / "hosts"
    _write(hosts, "10.0.0.1 a.test\n")

    def config(ttl: int):
        return parse(f"servers:\n  - zones: [test]\n    listen: 127.0.0.1:5353\n"
                     f"    hosts: {{file: {hosts}, ttl: {ttl}}}\n", str(tmp_path / "c.yaml"))

    clock = task.Clock()
    changed: list[int] = []
    plugins = HostsPlugins(lambda: changed.append(1), reactor=clock)
    first = plugins.plan(config(60))
    assert first[0].table.addresses("a.test", False) == ["10.0.0.1"]  # read when planned
    plugins.commit(first)
    assert not clock.getDelayedCalls()  # not running yet
    plugins.start()
    assert len(clock.getDelayedCalls()) == 1
    again = plugins.plan(config(60))
    assert again[0] is first[0]  # same config: the same plugin, the file not read again
    plugins.commit(again)
    other = plugins.plan(config(30))
    assert other[0] is not first[0]
    plugins.commit(other)  # the old one's checks end, the new one's start
    assert len(clock.getDelayedCalls()) == 1
    _write(hosts, "10.0.0.2 a.test\n")
    clock.advance(5)
    assert other[0].table.addresses("a.test", False) == ["10.0.0.2"]
    assert changed  # the wiring is told
    plugins.stop()
    assert not clock.getDelayedCalls()


# -- the fast path: hosts answers pre-encoded, byte for byte the slow path's, dropped on a change --
class _Transport:
    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.socket = self

    def sendto(self, data: bytes, addr: object) -> None:
        self.sent.append(data)

    def write(self, data: bytes, addr: object) -> None:
        self.sent.append(data)


def _fast_setup(tmp_path, **kw):
    hosts = tmp_path / "hosts"
    _write(hosts, HOSTS)
    clock = task.Clock()
    cfg = HostsConfig(file=str(hosts), **kw)
    plugin = HostsPlugin(cfg, ("",), reactor=clock)
    block = Block(ServerBlock(zones=("",), listen=Address("127.0.0.1", 53), hosts=cfg), hosts=plugin)
    disp = Dispatcher("dns://127.0.0.1:53", [block], reactor=clock)
    plugin.on_change.append(disp.fast.clear)  # what the wiring does (kubedns.service)
    plugin.start()
    proto = DNSDatagramProtocol(disp)
    tr = _Transport()
    proto.transport = tr
    proto.startProtocol()
    return disp, proto, tr, clock, hosts


def _wire(qname: str, rdtype: str, qid: int, edns: bool) -> bytes:
    kw = {"use_edns": 0, "payload": 1232} if edns else {"use_edns": False}
    q = dns.message.make_query(qname, rdtype, **kw)
    q.id = qid
    return q.to_wire()


@pytest.mark.parametrize("edns", [False, True], ids=["plain", "edns"])
@pytest.mark.parametrize(
    ("qname", "rdtype"),
    [("example.com", "A"), ("Example.COM", "A"), ("example.com", "AAAA"), ("example.com", "MX"),
     ("10.1.168.192.in-addr.arpa", "PTR"), (ipaddress.ip_address("::1").reverse_pointer, "PTR"),
     ("apps.wild.test", "A")],
)
def test_fast_bytes_equal_slow_bytes(tmp_path, qname, rdtype, edns):
    disp, proto, tr, _, _ = _fast_setup(tmp_path)
    proto.datagramReceived(_wire(qname, rdtype, 0x1111, edns), ("127.0.0.1", 5000))
    slow = tr.sent[-1]
    assert len(disp.fast.entries) == 1
    disp.handle = None  # type: ignore[assignment]  # the slow path must not be reached now
    proto.datagramReceived(_wire(qname, rdtype, 0x2222, edns), ("127.0.0.1", 5001))
    fast = tr.sent[-1]
    assert fast[:2] == b"\x22\x22" and slow[:2] == b"\x11\x11"
    assert fast[2:] == slow[2:]
    assert disp.fast.hits() == 1


def test_servfail_is_not_pre_encoded_and_a_file_change_drops_the_fast_path(tmp_path):
    disp, proto, tr, clock, hosts = _fast_setup(tmp_path)
    proto.datagramReceived(_wire("missing.test", "A", 1, False), ("127.0.0.1", 5000))
    assert dns.message.from_wire(tr.sent[-1]).rcode() == 2 and not disp.fast.entries
    for qid in (1, 2):
        proto.datagramReceived(_wire("ok.test", "A", qid, False), ("127.0.0.1", 5000))
    assert disp.fast.hits() == 1
    clock.advance(5)  # nothing changed: kept
    assert len(disp.fast.entries) == 1
    _write(hosts, HOSTS.replace("10.0.0.6 ", "10.0.0.66"))
    clock.advance(5)
    assert not disp.fast.entries
    proto.datagramReceived(_wire("ok.test", "A", 3, False), ("127.0.0.1", 5000))
    assert dns.message.from_wire(tr.sent[-1]).answer[0][0].address == "10.0.0.66"
