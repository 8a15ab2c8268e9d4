"""CoreDNS's ``cache`` options: ``success``/``denial CAPACITY [TTL [MINTTL]]``, ``disable
success|denial ZONES``, ``keepttl`` and ``cache [TTL] ZONES``.

Pure-logic checks on a ``task.Clock`` (what the config becomes, what is stored, for how long,
what is evicted), then real ``twistd kubedns`` processes on loopback: a Corefile whose cluster
comes from a manifests file and whose other names go to a ``tests/dnsupstream.py`` upstream;
the upstream's query counts show what the cache (and the pre-encoded fast path in front of it)
kept and what it did not.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import dns.rcode
import pytest
import yaml
from twisted.internet import task
from twisted.names import dns as tdns

from kubedns.configbase import ConfigError, Node
from kubedns.forward.cache import Cache, response_ttl
from kubedns.forward.chain import ForwardChain
from kubedns.forward.config import KIND_SIZE, CacheConfig, parse_cache
from kubedns.plugins.forward import ForwardPlugin
from tests.conftest import free_port, query
from tests.dnsupstream import DNSUpstream
from tests.support import kubeobj

pytestmark = pytest.mark.timeout(60)


def cfg(value: Any) -> CacheConfig:
    return parse_cache(Node(value, "test.yaml", "servers[0].cache"))


def a(name: bytes, ip: str, ttl: int) -> tdns.RRHeader:
    return tdns.RRHeader(name, tdns.A, tdns.IN, ttl, tdns.Record_A(ip, ttl))


def soa(zone: bytes = b"example.org", ttl: int = 600, minimum: int = 600) -> tdns.RRHeader:
    return tdns.RRHeader(zone, tdns.SOA, tdns.IN, ttl, tdns.Record_SOA(b"ns." + zone, b"admin." + zone, minimum=minimum))


def msg(name: bytes, rcode: int = tdns.OK, ttl: int = 300) -> tdns.Message:
    """An upstream answer for ``name``: an A record (NOERROR) or the SOA (NXDOMAIN/NODATA)."""
    m = tdns.Message(answer=1, recAv=1, rCode=rcode)
    m.queries = [tdns.Query(name, tdns.A, tdns.IN)]
    if rcode == tdns.OK:
        m.answers = [a(name, "192.0.2.1", ttl)]
    elif rcode == tdns.ENAME:
        m.authority = [soa(ttl=ttl, minimum=ttl)]
    return m


def key(name: bytes) -> tuple:
    return (name, tdns.A, tdns.IN, False, False, False, b"")


def make(config: CacheConfig) -> tuple[Cache, task.Clock]:
    clock = task.Clock()
    clock.advance(1000)
    return Cache(config, reactor=clock), clock


# -- the config --------------------------------------------------------------------------------


def test_success_and_denial_capacity_ttl_and_min_ttl() -> None:
    c = cfg({"ttl": 30, "success": {"capacity": 5000, "ttl": 60, "min_ttl": 10},
             "denial": {"capacity": 2500, "ttl": 20, "min_ttl": 2}})
    assert (c.success_size, c.ttl, c.min_ttl) == (5000, 60, 10)
    assert (c.denial_size, c.denial_ttl, c.denial_min_ttl) == (2500, 20, 2)
    assert c.size == 7500  # all entries: the sum of the two kinds when size is not written


def test_a_bare_capacity_and_a_kind_left_out_get_coredns_defaults() -> None:
    c = cfg({"ttl": 30, "success": 100})
    assert (c.success_size, c.ttl, c.min_ttl) == (100, 30, 5)  # TTL from `cache 30`, MINTTL 5
    assert (c.denial_size, c.denial_ttl, c.denial_min_ttl) == (KIND_SIZE, 30, None)  # None: min_ttl, 5
    assert c.size == 100 + KIND_SIZE
    assert cfg({"success": 100, "size": 500}).size == 500  # a written size bounds them together
    old = cfg({"ttl": 30})  # no capacities: today's one shared bound
    assert (old.success_size, old.denial_size, old.size) == (0, 0, 9984)


def test_keepttl_zones_and_disable() -> None:
    c = cfg({"keepttl": True, "zones": ["Example.ORG."], "disable": {"success": ["cluster.local"], "denial": ["."]}})
    assert c.keepttl and c.zones == ("example.org",)
    assert c.disable_success == ("cluster.local",) and c.disable_denial == ("",)
    assert cfg({"keepttl": None}).keepttl  # `keepttl` with no value, as the Corefile writes it
    assert not cfg({}).keepttl and cfg({}).zones == ()


@pytest.mark.parametrize(("value", "where", "expected"), [
    ({"success": {"capacity": 10, "ttl": 0}}, "success.ttl", "from 1 to"),
    ({"denial": {"capacity": 0}}, "denial.capacity", "a whole number from 1"),
    ({"denial": {"capacity": 10, "ttl": 5, "min_ttl": 9}}, "denial.min_ttl", "not above the denial ttl (5)"),
    ({"success": {"capacity": 10, "ttl": 5, "min_ttl": 9}}, "success.min_ttl", "not above the success ttl (5)"),
    ({"success": {"size": 10}}, "success.size", "one of the keys capacity, min_ttl, ttl"),
    ({"success": "many"}, "success", "a capacity (entries)"),
    ({"keepttl": "yes"}, "keepttl", "no argument"),
    ({"zones": ["not a zone"]}, "zones[0]", "a DNS zone name"),
])
def test_bad_values_name_the_key(value: Any, where: str, expected: str) -> None:
    with pytest.raises(ConfigError) as e:
        cfg(value)
    assert f"servers[0].cache.{where}:" in str(e.value) and expected in str(e.value)


# -- what is stored, for how long ---------------------------------------------------------------


def test_ttl_caps_and_floors_per_kind() -> None:
    c = cfg({"success": {"capacity": 10, "ttl": 60, "min_ttl": 20}, "denial": {"capacity": 10, "ttl": 40, "min_ttl": 3}})
    assert response_ttl(msg(b"a.example.org", ttl=5), c) == ("success", 20)  # success floor
    assert response_ttl(msg(b"a.example.org", ttl=500), c) == ("success", 60)  # success cap
    assert response_ttl(msg(b"nx.example.org", tdns.ENAME, ttl=4), c) == ("denial", 4)  # own floor, not 20
    assert response_ttl(msg(b"nx.example.org", tdns.ENAME, ttl=2), c) == ("denial", 3)
    assert response_ttl(msg(b"nx.example.org", tdns.ENAME, ttl=500), c) == ("denial", 40)


def test_zones_argument_caches_only_names_in_those_zones() -> None:
    c = cfg({"zones": ["example.org"]})
    assert response_ttl(msg(b"www.example.org"), c) == ("success", 300)
    assert response_ttl(msg(b"example.org"), c) == ("success", 300)
    assert response_ttl(msg(b"www.example.com"), c) is None
    assert response_ttl(msg(b"nx.example.com", tdns.ENAME), c) is None
    assert response_ttl(msg(b"x.example.com", tdns.ESERVER), c) is None


def test_disable_denial_covers_servfail_as_coredns_denial_cache() -> None:
    c = cfg({"disable": {"denial": ["cluster.local"]}})
    assert response_ttl(msg(b"x.cluster.local", tdns.ESERVER), c) is None
    assert response_ttl(msg(b"x.cluster.local", tdns.ENAME), c) is None
    assert response_ttl(msg(b"x.cluster.local"), c) == ("success", 300)  # success still cached
    assert response_ttl(msg(b"x.example.org", tdns.ESERVER), c) == ("servfail", 5)


def test_a_kind_over_its_capacity_evicts_only_its_own_entries() -> None:
    cache, _ = make(cfg({"success": 2, "denial": 2}))
    for name in (b"p1", b"p2"):
        assert cache.put(key(name), msg(name))
    for i in range(50):  # a flood of NXDOMAINs (random subdomains) ...
        cache.put(key(b"n%d" % i), msg(b"n%d" % i, tdns.ENAME))
    kinds = cache.entries_by_kind()
    assert kinds["success"] == 2 and kinds["denial"] == 2  # ... never pushes the successes out
    assert cache.get(key(b"p1")) is not None and cache.get(key(b"p2")) is not None
    assert cache.get(key(b"n49")) is not None and cache.get(key(b"n0")) is None
    cache.get(key(b"p1"))  # p1 used last: a third success evicts p2, the least recently used
    cache.put(key(b"p3"), msg(b"p3"))
    assert cache.get(key(b"p2")) is None and cache.get(key(b"p1")) is not None
    assert cache.evictions == 48 + 1


def test_the_shared_bounds_evict_the_least_recently_used_of_either_kind() -> None:
    cache, _ = make(cfg({"success": 10, "denial": 10, "size": 3}))
    cache.put(key(b"p1"), msg(b"p1"))
    cache.put(key(b"n1"), msg(b"n1", tdns.ENAME))
    cache.put(key(b"p2"), msg(b"p2"))
    assert cache.get(key(b"p1")) is not None  # n1 is now the least recently used
    cache.put(key(b"n2"), msg(b"n2", tdns.ENAME))
    assert len(cache) == 3
    assert cache.get(key(b"n1")) is None
    assert all(cache.get(key(n)) is not None for n in (b"p1", b"p2", b"n2"))
    cache.put(key(b"p3"), msg(b"p3"))  # p1, p2, n2 were read in that order: p1 goes
    assert len(cache) == 3 and cache.get(key(b"p1")) is None
    assert cache.bytes == sum(e.cost for order in (cache._pos, cache._neg) for e in order.values())


def test_keepttl_serves_the_stored_ttl_until_the_entry_expires() -> None:
    for keep, expected in ((True, 300), (False, 200)):
        cache, clock = make(cfg({"keepttl": keep}))
        cache.put(key(b"www.example.org"), msg(b"www.example.org", ttl=300))
        clock.advance(100)
        hit = cache.get(key(b"www.example.org"))
        assert hit is not None and hit[0].answers[0].ttl == expected
        assert cache.peek(key(b"www.example.org")).answers[0].ttl == expected  # type: ignore[union-attr]
        clock.advance(200)
        assert cache.get(key(b"www.example.org")) is None  # expired as usual


class _Fwd:
    def handles(self, name: bytes) -> bool:
        return True


def test_fast_path_lifetime_obeys_disable_zones_and_keepttl() -> None:
    """A relayed answer may be pre-encoded only as long as the cache keeps it: not at all for a
    disabled or out-of-zone name, nor with keepttl (the fast path counts TTLs down)."""
    def lifetime(config: CacheConfig, m: tdns.Message) -> float:
        cache, clock = make(config)
        return ForwardPlugin(ForwardChain(_Fwd(), cache, reactor=clock)).lifetime(m)  # type: ignore[arg-type]

    disable = cfg({"disable": {"success": ["cluster.local"]}})
    assert lifetime(disable, msg(b"svc.cluster.local")) == 0.0
    assert lifetime(disable, msg(b"nx.cluster.local", tdns.ENAME)) == 300.0
    assert lifetime(disable, msg(b"www.example.org")) == 300.0
    assert lifetime(cfg({"zones": ["example.org"]}), msg(b"www.example.com")) == 0.0
    assert lifetime(cfg({"keepttl": True}), msg(b"www.example.org")) == 0.0


# -- a real server over UDP -------------------------------------------------------------------


def _manifests(path: Path) -> Path:
    objs = [
        kubeobj.namespace("default"),
        kubeobj.service("nginx", "default", cluster_ip="10.96.0.100", ports=[{"name": "http", "port": 80}]),
    ]
    path.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": objs}, sort_keys=False))
    return path


def _corefile(port: int, manifests: Path, upstream: str, cache: str) -> str:
    """kubeadm's shape: the cluster (from a manifests file), falling through to forward for names
    it does not have (as a NodeLocal DNSCache-style setup forwards cluster.local), and a cache."""
    return f""".:{port} {{
    bind 127.0.0.1
    errors
    kubernetes cluster.local in-addr.arpa ip6.arpa {{
        manifests {manifests}
        pods insecure
        fallthrough
        ttl 30
    }}
    forward . {upstream}
    {cache}
}}
"""


@pytest.fixture
def upstream():
    with DNSUpstream(host="127.0.0.8") as up:
        up.add("legacy.cluster.local", "A", "192.0.2.9", ttl=300)
        up.add("www.example.org", "A", "192.0.2.1", ttl=300)
        up.set_soa("cluster.local", ttl=300, minimum=300)
        yield up


def _count_after(up: DNSUpstream, port: int, name: str, n: int = 4) -> int:
    for _ in range(n):
        r = query(port, name, "A")
        assert r.rcode() in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN)
    time.sleep(0.2)
    return up.count(name, "A")


def test_disable_success_cluster_local_end_to_end(kubedns_process, upstream, tmp_path: Path) -> None:
    """kubeadm's `cache 30 { disable success cluster.local }`: every positive answer for a
    cluster.local name the upstream gives is asked again (neither the cache nor the fast path
    keeps it), its denials are still cached, other names are cached; the cluster answers."""
    port = free_port()
    p = kubedns_process(_corefile(port, _manifests(tmp_path / "cluster.yaml"), upstream.address,
                                  "cache 30 {\n        disable success cluster.local\n    }"))
    p.wait_listening(port)
    r = query(port, "nginx.default.svc.cluster.local", "A")
    assert [rr.to_text() for rr in r.answer] == ["nginx.default.svc.cluster.local. 30 IN A 10.96.0.100"]
    assert _count_after(upstream, port, "legacy.cluster.local") == 4
    assert _count_after(upstream, port, "gone.cluster.local") == 1  # NXDOMAIN: denials are cached
    assert _count_after(upstream, port, "www.example.org") == 1
    r = query(port, "www.example.org", "A")
    assert r.answer[0].ttl <= 30  # `cache 30` caps it


def test_disable_denial_and_zones_end_to_end(kubedns_process, upstream, tmp_path: Path) -> None:
    port = free_port()
    p = kubedns_process(_corefile(port, _manifests(tmp_path / "cluster.yaml"), upstream.address,
                                  "cache 30 example.org {\n        disable denial example.org\n    }"))
    p.wait_listening(port)
    assert _count_after(upstream, port, "www.example.org") == 1
    assert _count_after(upstream, port, "nx.example.org") == 4  # denials disabled there
    assert _count_after(upstream, port, "legacy.cluster.local") == 4  # outside the cache's zones


def test_keepttl_end_to_end(kubedns_process, upstream, tmp_path: Path) -> None:
    """keepttl: a later answer, from the cache or the fast path, carries the TTL first sent."""
    port = free_port()
    p = kubedns_process(_corefile(port, _manifests(tmp_path / "cluster.yaml"), upstream.address,
                                  "cache 30 {\n        keepttl\n    }"))
    p.wait_listening(port)
    first = query(port, "www.example.org", "A").answer[0].ttl
    time.sleep(2.2)
    assert [query(port, "www.example.org", "A").answer[0].ttl for _ in range(3)] == [first] * 3 == [30] * 3
    assert upstream.count("www.example.org", "A") == 1


def test_success_capacity_end_to_end(kubedns_process, upstream, tmp_path: Path) -> None:
    """`success 1`: a second name pushes the first out; denials have their own room.  Over TCP:
    the UDP fast path keeps forwarded answers within its own bounds (the block cache's ``size``)
    until their TTL runs out, whatever the cache evicts."""
    port = free_port()
    upstream.add("one.example.org", "A", "192.0.2.11").add("two.example.org", "A", "192.0.2.12")
    p = kubedns_process(_corefile(port, _manifests(tmp_path / "cluster.yaml"), upstream.address,
                                  "cache 30 {\n        success 1\n        denial 5\n    }"))
    p.wait_listening(port)
    for name in ("one", "nx", "two", "one", "nx"):  # one is evicted by two: asked again
        query(port, f"{name}.example.org", "A", tcp=True)
    time.sleep(0.2)
    assert upstream.count("one.example.org", "A") == 2
    assert upstream.count("nx.example.org", "A") == 1
