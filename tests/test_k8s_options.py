"""The ``kubernetes`` options CoreDNS has and kubedns took on late: what a reload keeps, the label
selector grammar, and each option end to end (a real process, ``tests/fakeapi.py`` over HTTP,
queries over UDP).

The answers themselves are pinned row by row in ``tests/test_records.py`` (``OPTION_TABLE``);
here is what only shows with the moving parts: which reloads keep the running store, what the
API server is asked for, and how the client reaches it.
"""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from twisted.application import service
from twisted.internet import task

from kubedns import stores
from kubedns.config import Config, parse
from kubedns.k8s import labels
from kubedns.k8s.store import Store
from kubedns.server import Block

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
        self.cs = stores.ClusterSources(parent, self._make, lambda: None, task.Clock())
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
    ("environment in (staging, qa),application=nginx", "environment in (staging,qa),application=nginx"),
    ("tier notin(a,b)", "tier notin (a,b)"),
    ("app", "app"),
    ("! legacy", "!legacy"),
    ("example.com/team=dns,app.kubernetes.io/name=x_y.z", "example.com/team=dns,app.kubernetes.io/name=x_y.z"),
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
