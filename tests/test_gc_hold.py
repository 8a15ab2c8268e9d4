"""The start-up hold on the cyclic garbage collector (:func:`kubedns.k8s.informer.hold_gc`).

kubedns turns the collector off when twistd parses its options (:class:`kubedns.tap.Options`)
and keeps it off until the first full sync of the cluster, where it collects once, freezes the heap and turns it back
on.  These tests hold it to the three ways the hold may end: the informer's first sync against
:class:`tests.fakeapi.FakeKubeAPI` over real HTTP (and not before), at once when the config has
no informer to wait for, and after :data:`kubedns.tap.GC_HOLD_BOUND` when no sync comes.  Each
test restores the collector's state of the test run.
"""

from __future__ import annotations

import gc
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
from twisted.internet import reactor, task
from twisted.trial import unittest

from kubedns import tap
from kubedns.k8s import informer as informer_mod
from kubedns.k8s.informer import Informer, hold_gc, release_gc
from kubedns.k8s.store import Store
from tests import fakeapi
from tests.conftest import wait_until
from tests.support import kubeobj
from tests.support.informer import FAST, small_cluster

pytestmark = pytest.mark.timeout(30)

ALL = ["namespaces", "services", "endpointslices", "pods"]
_PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")


class _GCState(unittest.TestCase):
    def setUp(self) -> None:
        was = gc.isenabled()
        self.addCleanup(lambda: (gc.enable() if was else gc.disable()))
        self.addCleanup(gc.set_threshold, *gc.get_threshold())
        self.addCleanup(setattr, informer_mod, "_gc_held", False)
        gc.enable()


class HoldUntilSyncTests(_GCState):
    timeout = 25

    def setUp(self) -> None:
        super().setUp()
        for var in (*_PROXY_VARS, "KUBERNETES_SERVICE_HOST", "KUBECONFIG"):
            if var in os.environ:
                self.addCleanup(os.environ.__setitem__, var, os.environ.pop(var))
        self.api = fakeapi.FakeKubeAPI().start()
        self.addCleanup(self.api.stop)
        self.api.load(small_cluster())
        self.kubeconfig = kubeobj.kubeconfig(Path(self.mktemp()), self.api.url)

    async def test_collector_off_until_the_first_full_sync_then_heap_frozen(self) -> None:
        store = Store(required=ALL)
        # the pods' list fails a few times: the other kinds sync, the hold must stay on
        self.api.fail_next("list", "pods", 500, times=3)
        inf = Informer(store, ALL, self.kubeconfig, reactor=reactor, **FAST)
        hold_gc()
        self.assertFalse(gc.isenabled())
        frozen_before = gc.get_freeze_count()
        inf.startService()
        self.addCleanup(lambda: inf.running and inf.stopService())
        await wait_until(lambda: {"namespaces", "services", "endpointslices"} <= store.synced_kinds, what="3 kinds")
        self.assertNotIn("pods", store.synced_kinds)
        self.assertFalse(gc.isenabled(), "released before every kind was in")
        await wait_until(lambda: store.synced, what="full sync")
        self.assertTrue(gc.isenabled())
        self.assertGreater(gc.get_freeze_count(), frozen_before)
        # serving: young collections far apart (each miss keeps cache entries alive)
        self.assertEqual(gc.get_threshold(), informer_mod.SERVING_GC_THRESHOLDS)
        self.assertFalse(release_gc(), "a second release is a no-op")


class TapHoldTests(_GCState):
    def _service(self, sources: list[object], clock: task.Clock) -> SimpleNamespace:
        return SimpleNamespace(sources=sources, reactor=clock)

    def test_released_at_once_without_an_informer(self) -> None:
        gc.disable()
        clock = task.Clock()
        tap._hold_gc_until_synced(self._service([], clock), True)
        self.assertTrue(gc.isenabled())
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_released_after_the_bound_when_no_sync_comes(self) -> None:
        gc.disable()
        clock = task.Clock()
        never_started = Informer(Store(required=ALL), ALL, "/nonexistent/kubeconfig", reactor=clock)
        tap._hold_gc_until_synced(self._service([never_started], clock), True)
        clock.advance(tap.GC_HOLD_BOUND - 1)
        self.assertFalse(gc.isenabled())
        clock.advance(1)
        self.assertTrue(gc.isenabled())

    def test_left_alone_when_the_collector_was_off_before_kubedns(self) -> None:
        gc.disable()
        clock = task.Clock()
        tap._hold_gc_until_synced(self._service([], clock), False)
        self.assertFalse(gc.isenabled(), "someone else turned it off: not ours to turn on")

    def test_option_parsing_starts_the_hold(self) -> None:
        cfg = Path(self.mktemp())
        cfg.write_text("servers:\n  - zones: ['.']\n    listen: '127.0.0.1:5353'\n    forward: {to: ['127.0.0.1:5300']}\n")
        opts = tap.Options()
        opts.parseOptions(["--config", str(cfg)])
        self.assertTrue(opts["gc_held"])
        self.assertFalse(gc.isenabled())
        gc.disable()
        opts = tap.Options()
        opts.parseOptions(["--config", str(cfg)])
        self.assertFalse(opts["gc_held"], "already off before kubedns: not a hold of ours")
