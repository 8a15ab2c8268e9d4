"""What metrics and the error log read from a block's config and its forward chain, on real
objects (no scrape, no socket).

``coredns_plugin_enabled`` lists ``loop`` only when the block's loop detection is on; the cache
counters come from the chain's real :class:`~kubedns.forward.cache.Cache` and forwarder; a SERVFAIL of a
block whose every upstream loops is explained as such in the error log.  Pure logic: nothing is
sent anywhere (the upstream is a loopback address never asked).
"""

from __future__ import annotations

from typing import Any

import dns.message
import dns.rrset
import pytest
import yaml
from twisted.internet import task
from twisted.logger import Logger
from twisted.names import dns as tdns

from kubedns.config import ServerBlock, parse
from kubedns.forward.cache import Cache
from kubedns.forward.chain import ForwardChain
from kubedns.forward.forwarder import Forwarder
from kubedns.forward.message import decode_response
from kubedns.ops.metrics import _chain_counters, _plugins_of
from kubedns.ops.querylog import ErrorLog
from kubedns.serve.server import Block, Dispatcher
from tests.support.ops import query_info

pytestmark = pytest.mark.timeout(30)


def _block(**keys: Any) -> ServerBlock:
    block = {"zones": ["."], "listen": "127.0.0.1:1053", "forward": {"to": ["127.0.0.1:5300"]}, **keys}
    return parse(yaml.safe_dump({"servers": [block]}), "x.yaml").servers[0]


def test_plugin_enabled_names_loop_only_while_it_is_on() -> None:
    assert _plugins_of(_block(log={}, cache=30, loop=True)) == ["log", "cache", "forward", "loop"]
    assert _plugins_of(_block(loop=False)) == ["forward"]
    assert _plugins_of(_block()) == ["forward"]


def _answer(i: int) -> tdns.Message:
    q = dns.message.make_query(f"n{i}.example.org", "A")
    r = dns.message.make_response(q)
    r.answer.append(dns.rrset.from_text(q.question[0].name, 300, "IN", "A", f"192.0.2.{i}"))
    return decode_response(r.to_wire())


def test_cache_hits_and_evictions_are_counted_as_success() -> None:
    clock = task.Clock()
    clock.advance(1000)
    block = _block(cache={"success": 2})
    cache = Cache(block.cache, reactor=clock)
    chain = ForwardChain(Forwarder(block.forward, reactor=clock), cache=cache, reactor=clock)

    def key(i: int) -> tuple[Any, ...]:
        return (f"n{i}.example.org".encode(), tdns.A, tdns.IN, False, False, False, b"")

    for i in range(3):  # room for two: the first is evicted
        cache.put(key(i), _answer(i))
    assert cache.get(key(2)) is not None and cache.get(key(0)) is None
    samples = dict(_chain_counters(chain, "dns://:53", "."))
    assert cache.evictions == 1 and cache.hits == 1
    assert samples[("coredns_cache_evictions_total", ("dns://:53", "success", ".", ""))] == 1
    assert samples[("coredns_cache_evictions_total", ("dns://:53", "denial", ".", ""))] == 0
    assert samples[("coredns_cache_hits_total", ("dns://:53", "success", ".", ""))] == 1
    assert samples[("coredns_cache_hits_total", ("dns://:53", "denial", ".", ""))] == 0
    assert samples[("coredns_cache_misses_total", ("dns://:53", ".", ""))] == 1
    assert samples[("coredns_forward_healthcheck_broken_total", ())] == 0


def test_a_servfail_with_every_upstream_looping_is_explained_so() -> None:
    clock = task.Clock()
    block = _block(errors={"consolidate": 10})
    chain = ForwardChain(Forwarder(block.forward, reactor=clock), reactor=clock)
    events: list[dict[str, Any]] = []
    elog = ErrorLog(Dispatcher("dns://127.0.0.1:1053", [Block(block, None, chain)], reactor=clock),
                    reactor=clock, logger=Logger(observer=events.append))
    servfail = query_info(rcode=2, zone="", qname=b"x.example.org")
    elog(servfail)
    assert "forward: no upstream answered" in events[-1]["log_format"].format(**events[-1])
    chain.forwarder.isolate(0, "it sends our probe back")  # the only upstream: forwarding is off
    assert chain.loop_detected
    elog(query_info(rcode=2, zone="", qname=b"y.example.org"))
    assert "forward: disabled, a forwarding loop was detected" in events[-1]["log_format"].format(**events[-1])
