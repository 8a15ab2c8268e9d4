"""The informer against a fake apiserver over real HTTP, with the official client and a real reactor.

Each test starts :class:`tests.fakeapi.FakeKubeAPI` on 127.0.0.1, writes a kubeconfig for it, and
runs an :class:`~kubedns.k8s.informer.Informer` whose threads talk to it through
``kubernetes.client``; the store is filled on the reactor thread exactly as in production.  The
timing knobs (read timeout, backoff) are shrunk so the fault-injection cases finish in seconds.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import reactor
from twisted.trial import unittest

from kubedns.k8s.informer import Informer
from kubedns.k8s.store import Store
from tests import fakeapi
from tests.conftest import wait_until
from tests.support import kubeobj
from tests.support.informer import BASE, FAST, sleep, small_cluster

pytestmark = pytest.mark.timeout(30)

ALL = ["namespaces", "services", "endpointslices", "pods"]
_PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")


class InformerTests(unittest.TestCase):
    timeout = 25  # trial's own per-test limit

    def setUp(self) -> None:
        for var in (*_PROXY_VARS, "KUBERNETES_SERVICE_HOST", "KUBECONFIG"):
            if var in os.environ:  # never route anything through an environment proxy
                self.addCleanup(os.environ.__setitem__, var, os.environ.pop(var))
        self.api = fakeapi.FakeKubeAPI().start()
        self.addCleanup(self.api.stop)
        self.api.load(small_cluster())
        self.kubeconfig = kubeobj.kubeconfig(Path(self.mktemp()), self.api.url)
        self.events: list[tuple[str, str, float]] = []
        self.records: list[object] = []

    def start(self, resources: list[str] = ALL, kubeconfig: str | None = "", **tuning: Any) -> Informer:
        self.store = Store(required=resources)
        informer = Informer(
            self.store,
            resources,
            self.kubeconfig if kubeconfig == "" else kubeconfig,
            reactor=reactor,
            on_event=lambda k, t, lag, rec: (self.events.append((k, t, lag)), self.records.append(rec)),
            **{**FAST, **tuning},
        )
        informer.startService()
        self.addCleanup(lambda: informer.running and informer.stopService())
        return informer

    async def synced(self, informer: Informer) -> None:
        await wait_until(lambda: self.store.synced, what="initial sync")
        await wait_until(lambda: self.api.watcher_count() >= len(informer.resources), what="watches open")

    def svc_ip(self, name: str, ns: str = "apps") -> tuple[str, ...] | None:
        svc = self.store.service(ns, name)
        return None if svc is None else svc.cluster_ips

    def lists(self, resource: str) -> int:
        return self.api.requests[("list", resource)]

    # -- tests --------------------------------------------------------------------------------
    async def test_initial_list_syncs_every_kind(self) -> None:
        informer = self.start()
        await self.synced(informer)
        self.assertEqual(self.store.synced_kinds, set(ALL))
        self.assertEqual(self.store.count("services"), 6)
        self.assertEqual(self.store.count("namespaces"), 3)
        self.assertEqual(self.store.count("endpointslices"), 3)
        self.assertEqual(self.store.count("pods"), 3)  # the pending pod has no IP
        self.assertEqual(self.svc_ip("kube-dns", "kube-system"), ("10.96.0.10",))
        self.assertEqual([ep.addresses for ep, _ in self.store.endpoints("apps", "svc1")], [("10.1.1.1",)])
        self.assertTrue(self.store.pod_in_namespace("10.1.1.2", "apps"))
        # paginated: 6 services at limit=2 is three pages, the later ones with a continue token
        svc_lists = [r for r in self.api.request_log if r.verb == "list" and r.resource == "services"]
        self.assertEqual([r.params.get("limit") for r in svc_lists], ["2"] * 3)
        self.assertEqual([bool(r.params.get("continue")) for r in svc_lists], [False, True, True])
        # the watch starts from the list's resourceVersion, with bookmarks and a server timeout
        watch = next(r for r in self.api.request_log if r.verb == "watch" and r.resource == "services")
        self.assertEqual(watch.params["resourceVersion"], str(self.api.resource_version))
        self.assertEqual(watch.params["allowWatchBookmarks"], "true")
        self.assertTrue(30 <= int(watch.params["timeoutSeconds"]) <= 60)
        status = informer.status()
        self.assertEqual(set(status), set(ALL))
        for st in status.values():
            self.assertEqual(st["synced"], True)
            self.assertEqual(st["resource_version"], str(self.api.resource_version))
            self.assertEqual((st["relists"], st["errors"], st["last_error"]), (0, 0, ""))
        self.assertTrue(informer.synced)
        self.assertEqual(self.events, [], "list items are not watch events")

    async def test_changes_reach_the_store_within_a_second(self) -> None:
        informer = self.start()
        await self.synced(informer)

        self.api.create("services", kubeobj.service("new", "apps", cluster_ip="10.96.2.1"))
        took = await wait_until(lambda: self.svc_ip("new") == ("10.96.2.1",), timeout=1.0, what="ADDED")
        self.assertLess(took, 1.0)

        self.api.update("services", kubeobj.service("new", "apps", cluster_ip="10.96.2.2"))
        await wait_until(lambda: self.svc_ip("new") == ("10.96.2.2",), timeout=1.0, what="MODIFIED")

        self.api.delete("services", "apps", "new")
        await wait_until(lambda: self.svc_ip("new") is None, timeout=1.0, what="DELETED")

        self.api.update(
            "endpointslices", kubeobj.endpointslice("svc0-x", "apps", "svc0", [{"addresses": ["10.1.9.9"]}])
        )
        await wait_until(
            lambda: [ep.addresses for ep, _ in self.store.endpoints("apps", "svc0")] == [("10.1.9.9",)],
            timeout=1.0,
            what="endpointslice MODIFIED",
        )
        self.api.update("pods", kubeobj.pod("p1", "apps", "10.1.1.1", phase="Succeeded"))
        await wait_until(lambda: not self.store.pod_in_namespace("10.1.1.1", "apps"), timeout=1.0, what="pod done")

        self.api.create("namespaces", kubeobj.namespace("late"))
        await wait_until(lambda: self.store.namespace_exists("late"), timeout=1.0, what="namespace ADDED")

        kinds = [(k, t) for k, t, _ in self.events]
        self.assertEqual(
            kinds,
            [
                ("services", "ADDED"),
                ("services", "MODIFIED"),
                ("services", "DELETED"),
                ("endpointslices", "MODIFIED"),
                ("pods", "MODIFIED"),
                ("namespaces", "ADDED"),
            ],
        )
        self.assertTrue(all(0 <= lag < 1.0 for _, _, lag in self.events), self.events)
        self.assertEqual(informer.status()["services"]["resource_version"], str(self.api.resource_version - 3))

    async def test_bookmark_advances_rv_so_compaction_needs_no_relist(self) -> None:
        informer = self.start(BASE)
        await self.synced(informer)
        before = informer.status()["services"]["resource_version"]
        for i in range(3):  # other kinds move the global resourceVersion on
            self.api.create("namespaces", kubeobj.namespace(f"ns{i}"))
        self.assertEqual(self.api.send_bookmark("services"), 1)
        target = str(self.api.resource_version)
        self.assertNotEqual(before, target)
        await wait_until(lambda: informer.status()["services"]["resource_version"] == target, what="bookmark rv")

        # history compacted past the list's rv: only the bookmark's rv keeps the re-watch valid
        lists = self.lists("services")
        self.api.compact()
        self.api.drop_watches("services")
        await wait_until(lambda: self.api.watcher_count("services") == 1, what="re-watch")
        self.api.create("services", kubeobj.service("after", "apps", cluster_ip="10.96.3.1"))
        await wait_until(lambda: self.svc_ip("after") is not None, what="event after re-watch")
        rewatch = [r for r in self.api.request_log if r.verb == "watch" and r.resource == "services"][-1]
        self.assertEqual(rewatch.params["resourceVersion"], target)
        self.assertEqual(self.lists("services"), lists)
        self.assertEqual(informer.status()["services"]["relists"], 0)

    async def _gap_then_410(self, http_status: bool) -> None:
        self.api.expired_watch_as_http_status = http_status
        informer = self.start(BASE)
        await self.synced(informer)
        lists = self.lists("services")

        # the API goes away; meanwhile objects change and the history is compacted
        self.api.fail_requests = True
        self.api.drop_watches()
        self.api.delete("services", "apps", "svc1")
        self.api.delete("services", "apps", "svc2")
        self.api.delete("endpointslices", "apps", "svc1-x")
        self.api.update("services", kubeobj.service("svc3", "apps", cluster_ip="10.96.9.3"))
        self.api.create("services", kubeobj.service("born", "apps", cluster_ip="10.96.9.9"))
        self.api.compact()
        await wait_until(lambda: informer.status()["services"]["errors"] > 0, what="a failed reconnect")
        self.assertIsNotNone(self.svc_ip("svc1"), "nothing is deleted while the API is unreachable")
        self.assertTrue(self.store.synced)

        self.api.fail_requests = False
        await wait_until(lambda: informer.status()["services"]["relists"] == 1, what="relist after 410")
        self.assertIsNone(self.svc_ip("svc1"))
        self.assertIsNone(self.svc_ip("svc2"))
        self.assertEqual(list(self.store.endpoints("apps", "svc1")), [])
        self.assertEqual(self.svc_ip("svc3"), ("10.96.9.3",))
        self.assertEqual(self.svc_ip("born"), ("10.96.9.9",))
        self.assertEqual(self.svc_ip("svc0"), ("10.96.1.0",))
        self.assertEqual(self.store.count("services"), 5)
        self.assertGreater(self.lists("services"), lists)
        await wait_until(lambda: informer.status()["endpointslices"]["relists"] == 1, what="slices relist")
        # and it watches on from the new list
        await wait_until(lambda: self.api.watcher_count("services") == 1, what="watch after relist")
        self.api.create("services", kubeobj.service("later", "apps", cluster_ip="10.96.9.10"))
        await wait_until(lambda: self.svc_ip("later") is not None, what="event after relist")

    async def test_410_error_event_relists_and_deletes_what_vanished_in_the_gap(self) -> None:
        await self._gap_then_410(http_status=False)

    async def test_410_http_status_relists_too(self) -> None:
        await self._gap_then_410(http_status=True)

    async def test_dropped_watches_reconnect_without_missing_events(self) -> None:
        informer = self.start(BASE)
        await self.synced(informer)
        lists = self.lists("services")
        names = []
        for round_ in range(4):
            self.assertEqual(self.api.drop_watches("services", reset=bool(round_ % 2)), 1)
            for i in range(3):  # created while the watcher is reconnecting
                name = f"gap{round_}-{i}"
                names.append(name)
                self.api.create("services", kubeobj.service(name, "apps", cluster_ip=f"10.96.4.{len(names)}"))
            await wait_until(lambda: self.api.watcher_count("services") == 1, what="reconnect")
        await wait_until(lambda: all(self.svc_ip(n) is not None for n in names), what="all gap events")
        self.assertEqual(self.lists("services"), lists, "a re-watch, not a relist")
        st = informer.status()["services"]
        self.assertEqual(st["relists"], 0)
        self.assertGreaterEqual(st["errors"], 1)
        self.assertEqual(st["resource_version"], str(self.api.resource_version))

    async def test_hung_watch_recovers_after_read_timeout(self) -> None:
        informer = self.start(BASE, read_timeout=0.5)
        await self.synced(informer)
        self.api.hang_watches = True
        self.api.drop_watches("services")
        await wait_until(lambda: self.api.watcher_count("services") == 1, what="hung watch open")
        await sleep(0.1)  # the handler registers the watch before it reads hang_watches
        self.api.hang_watches = False  # the open watch stays silent; new ones work
        self.api.create("services", kubeobj.service("stuck", "apps", cluster_ip="10.96.5.1"))
        took = await wait_until(lambda: self.svc_ip("stuck") is not None, timeout=3.0, what="recovery")
        self.assertGreater(took, 0.2, "the event could only arrive after the read timeout")
        self.assertIn("timed out", informer.status()["services"]["last_error"].lower())
        self.assertEqual(informer.status()["services"]["relists"], 0)

    async def test_server_side_timeout_rewatches_quietly(self) -> None:
        informer = self.start(["services"], watch_timeout=1.0, read_timeout=5.0)
        await self.synced(informer)
        await wait_until(lambda: self.api.requests[("watch", "services")] >= 3, timeout=8.0, what="re-watches")
        self.api.create("services", kubeobj.service("x", "apps", cluster_ip="10.96.6.1"))
        await wait_until(lambda: self.svc_ip("x") is not None, what="event")
        st = informer.status()["services"]
        self.assertEqual((st["errors"], st["relists"]), (0, 0))
        self.assertEqual(self.lists("services"), 3)  # the initial three pages only

    async def test_malformed_object_is_skipped_not_fatal(self) -> None:
        bad = kubeobj.service("bad", "apps")
        bad["spec"]["ports"] = ["not-a-port-object"]
        self.api.create("services", bad)
        informer = self.start(BASE)
        await self.synced(informer)  # the list still completes
        self.assertIsNone(self.svc_ip("bad"))
        self.assertEqual(self.store.count("services"), 6)
        bad2 = kubeobj.service("bad2", "apps")
        bad2["spec"]["ports"] = [17]
        self.api.create("services", bad2)
        self.api.create("services", kubeobj.service("good", "apps", cluster_ip="10.96.8.1"))
        await wait_until(lambda: self.svc_ip("good") is not None, what="event after a bad one")
        st = informer.status()["services"]
        self.assertEqual(st["errors"], 2)
        self.assertIn("apps/bad2", st["last_error"])
        self.assertEqual(self.lists("services"), 4)  # 7 items, limit 2: no relist

    async def test_api_down_at_start_then_up(self) -> None:
        self.api.fail_requests = True
        self.api.fail_status = None  # connections closed without an answer
        informer = self.start(BASE)
        await wait_until(lambda: all(s["errors"] >= 2 for s in informer.status().values()), what="retries")
        self.assertFalse(self.store.synced)
        self.assertFalse(informer.synced)
        self.assertEqual(self.store.count("services"), 0)
        self.assertTrue(informer.status()["services"]["last_error"])

        self.api.fail_requests = False
        await self.synced(informer)
        self.assertEqual(self.store.count("services"), 6)
        self.assertTrue(all(s["synced"] for s in informer.status().values()))

    async def test_missing_kubeconfig_is_retried_in_the_background(self) -> None:
        path = str(Path(self.mktemp()))
        informer = self.start(BASE, kubeconfig=path)
        await wait_until(lambda: informer.status()["services"]["errors"] >= 2, what="config retries")
        self.assertIn(path, informer.status()["services"]["last_error"])
        self.assertFalse(self.store.synced)
        kubeobj.kubeconfig(path, self.api.url)
        await self.synced(informer)

    async def test_default_config_search_uses_kubeconfig_env(self) -> None:
        informer = self.start(BASE, kubeconfig=None)
        await wait_until(lambda: informer.status()["services"]["errors"] >= 1, what="config attempt")
        error = informer.status()["services"]["last_error"]
        self.assertIn("in-cluster", error)
        self.assertIn("KUBECONFIG", error)
        os.environ["KUBECONFIG"] = self.kubeconfig
        self.addCleanup(os.environ.pop, "KUBECONFIG", None)
        await self.synced(informer)
        self.assertIn("KUBECONFIG", informer.config_source)

    async def test_stop_ends_threads_promptly(self) -> None:
        informer = self.start(ALL, read_timeout=10.0)
        await self.synced(informer)
        self.api.hang_watches = True  # one thread sits in a silent watch as well
        self.api.drop_watches("pods")
        await wait_until(lambda: self.api.watcher_count("pods") == 1, what="hung pods watch")
        watchers = list(informer._watchers.values())
        started = time.monotonic()
        await informer.stopService()
        took = time.monotonic() - started
        self.assertLess(took, 1.0)
        self.assertFalse(any(w.is_alive() for w in watchers))
        self.api.create("services", kubeobj.service("ghost", "apps", cluster_ip="10.96.7.1"))
        await sleep(0.2)
        self.assertIsNone(self.svc_ip("ghost"), "a stopped informer applies nothing")

    async def test_stop_during_a_stuck_list_gives_up_waiting_and_applies_nothing(self) -> None:
        self.api.withhold_lists = True
        informer = self.start(["services"], read_timeout=1.0, stop_timeout=0.3)
        await wait_until(lambda: self.lists("services") >= 1, what="list request")
        watchers = list(informer._watchers.values())
        started = time.monotonic()
        await informer.stopService()  # a request still waiting for headers cannot be interrupted...
        self.assertLess(time.monotonic() - started, 1.0)
        await wait_until(lambda: not any(w.is_alive() for w in watchers), what="thread exit after read timeout")
        self.api.withhold_lists = False  # ...but it ends with its read timeout and applies nothing
        await sleep(0.1)
        self.assertEqual(self.store.count("services"), 0)
        self.assertFalse(self.store.synced)
