"""``kubedns.stores.ClusterSources``: which reloads keep the store, and make before break.

In process, with a fake clock and sources that never talk to anything: the stores are real
:class:`~kubedns.k8s.store.Store` objects, marked synced by the test the way a source does.  The
same behaviour end to end (a real process, the fake API, UDP queries) is in
``tests/test_reload_gap.py``.
"""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from twisted.application import service
from twisted.internet import task
from twisted.logger import Logger, formatEvent

from kubedns import stores
from kubedns.config import Config, parse
from kubedns.k8s.source import ClusterSource
from kubedns.k8s.store import Store
from kubedns.serve.server import Block


class _Source(ClusterSource):
    def __init__(self, store: Store, k8s: Any):
        self.store, self.k8s = store, k8s
        self.config_error = ""

    def problem(self) -> str:
        return self.config_error

    def sync(self) -> None:
        for kind in sorted(self.store.required):
            self.store.mark_synced(kind)


def _config(**k8s: Any) -> Config:
    block = {"zones": ["."], "listen": "127.0.0.1:1053", "kubernetes": {"zones": ["cluster.local"], **k8s}}
    return parse(yaml.safe_dump({"servers": [block]}), "x.yaml")


class _World:
    def __init__(self, monkeypatch: pytest.MonkeyPatch):
        self.clock = task.Clock()
        self.sources: list[_Source] = []
        self.changes = 0
        self.events: list[dict[str, Any]] = []
        monkeypatch.setattr(stores, "log", Logger(namespace="kubedns.service", observer=self.events.append))
        self.parent = service.MultiService()
        self.parent.startService()
        self.cs = stores.ClusterSources(self.parent, self._make, self._changed, self.clock)
        self.blocks: dict[int, Block] = {}

    def _make(self, store: Store, k8s: Any) -> _Source:
        src = _Source(store, k8s)
        self.sources.append(src)
        return src

    def _changed(self, store: Store | None = None) -> None:
        self.changes += 1

    def apply(self, config: Config) -> stores.Plan:
        plan = self.cs.plan(config)
        self.blocks = {b.index: Block(b, plan.clusters.get(b.index)) for b in config.servers}
        self.cs.commit(plan, self.blocks)
        return plan

    @property
    def answering(self) -> Any:
        return self.blocks[0].clusters

    def log(self) -> str:
        return "\n".join(formatEvent(e) for e in self.events)


@pytest.fixture
def world(monkeypatch: pytest.MonkeyPatch) -> _World:
    return _World(monkeypatch)


def test_options_that_watch_the_same_keep_the_store(world: _World) -> None:
    world.apply(_config(kubeconfig="/k1", pods="insecure", ttl=5))
    world.sources[0].sync()
    store = world.answering.store
    for change in ({"ttl": 7}, {"ttl": 7, "pods": "disabled"}, {"ttl": 7, "zones": ["cluster.local", "x.test"]},
                   {"ttl": 9, "fallthrough": ["in-addr.arpa"]}):
        cfg = _config(kubeconfig="/k1", **{"pods": "insecure", **change})
        world.apply(cfg)
        assert world.answering.store is store and len(world.sources) == 1
        assert world.answering.config == cfg.servers[0].kubernetes  # new settings at once
    assert world.sources[0].running and world.cs.pending() == []


def test_a_new_store_answers_only_once_synced_and_the_old_one_stops_then(world: _World) -> None:
    world.apply(_config(kubeconfig="/k1", ttl=5))
    old_src = world.sources[0]
    old_src.sync()
    old = world.answering
    cfg = _config(kubeconfig="/k2", pods="verified", ttl=6)
    world.apply(cfg)
    new_src = world.sources[1]
    assert new_src.running and new_src.store.required == {"namespaces", "services", "endpointslices", "pods"}
    assert world.answering is old and old_src.running  # make before break
    assert world.cs.pending() == ["servers[0]"]
    assert "keeps answering from its previous cluster data until the new source (kubeconfig /k2, with pods)" in world.log()
    before = world.changes
    new_src.store.mark_synced("services")  # still listing: nothing answers from it, nothing to drop
    assert world.answering is old and world.changes == before
    new_src.sync()
    assert world.answering.store is new_src.store and world.answering.config == cfg.servers[0].kubernetes
    assert not old_src.running and old_src.parent is None  # stopped once nothing answers from it
    assert world.changes > before and world.cs.pending() == []
    assert "servers[0] now answers from its new cluster source" in world.log()


def test_a_new_store_that_never_syncs_is_logged_and_the_old_one_keeps_answering(world: _World) -> None:
    world.apply(_config(kubeconfig="/k1", ttl=5))
    world.sources[0].sync()
    old = world.answering
    world.apply(_config(kubeconfig="/broken", ttl=6))
    world.sources[1].config_error = "Invalid kube-config file"
    world.clock.advance(world.cs.sync_warning - 1)
    assert "has not synced" not in world.log()
    world.clock.advance(1)
    assert ("servers[0]: the new cluster source (kubeconfig /broken) has not synced after 30s (waiting for "
            "endpointslices, namespaces, services; last error: Invalid kube-config file); still answering from "
            "the previous one") in world.log()
    world.clock.advance(600)
    assert world.answering is old and world.sources[0].running


def test_reloading_back_while_a_swap_waits_keeps_the_old_store_and_drops_the_new(world: _World) -> None:
    world.apply(_config(kubeconfig="/k1", ttl=5))
    world.sources[0].sync()
    first = world.answering.store
    world.apply(_config(kubeconfig="/k2", ttl=6))
    waiting = world.sources[1]
    world.apply(_config(kubeconfig="/k1", ttl=7))  # back before /k2 synced
    assert len(world.sources) == 2 and world.answering.store is first and world.answering.ttl == 7
    assert not waiting.running and world.sources[0].running and world.cs.pending() == []
    assert [s is first for s in world.cs.stores] == [True]
    world.clock.advance(60)
    assert "has not synced" not in world.log()  # the warning went with the swap


def test_a_store_that_never_answered_before_is_used_at_once(world: _World) -> None:
    """At start (nothing answers yet) the new store answers, SERVFAIL until it syncs, as before."""
    world.apply(_config(kubeconfig="/k1", ttl=5))
    assert world.answering.store is world.sources[0].store and world.cs.pending() == []
