"""The informer against a misbehaving API: auth failures, throttling, broken streams, odd objects.

Complements tests/test_informer.py (which covers the happy path, 410 relists, dropped and hung
watches, a malformed object in a list, the API down at start, stopping) and
tests/test_watch_e2e.py.  Same set-up: the real informer threads and the official client talk
HTTP to :class:`tests.fakeapi.FakeKubeAPI`, whose scripted faults (:meth:`fail_next`,
:meth:`inject_watch_lines`, :meth:`poison_history`) play the misbehaving server.  Each test checks
what a DNS client would see (answers computed by :class:`~kubedns.dns.records.ClusterZones` from the
store: SERVFAIL before the first sync, the last known state during trouble, the change after
recovery) and that the watcher threads survive.  The last tests run the real ``twistd`` process.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import dns.exception
import dns.rcode
import pytest
from twisted.internet import reactor
from twisted.logger import formatEvent, globalLogPublisher
from twisted.names import dns as tdns
from twisted.trial import unittest

from kubedns.config import KubernetesConfig
from kubedns.dns.records import ClusterZones
from kubedns.k8s.informer import Informer
from kubedns.k8s.store import Store
from tests import fakeapi
from tests.conftest import free_port, http_get, query, rrset_text, wait_for, wait_until
from tests.support import kubeobj
from tests.support.informer import BASE, FAST, sleep, small_cluster

pytestmark = pytest.mark.timeout(30)

_PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")
ZONE = "cluster.local"


def _has_continue(params: Any) -> bool:
    return bool(params.get("continue"))


def _first_page(params: Any) -> bool:
    return not params.get("continue")


class _Base(unittest.TestCase):
    timeout = 25

    def setUp(self) -> None:
        for var in (*_PROXY_VARS, "KUBERNETES_SERVICE_HOST", "KUBECONFIG"):
            if var in os.environ:
                self.addCleanup(os.environ.__setitem__, var, os.environ.pop(var))
        self.api = fakeapi.FakeKubeAPI().start()
        self.addCleanup(self.api.stop)
        self.api.load(small_cluster())
        self.kubeconfig = kubeobj.kubeconfig(Path(self.mktemp()), self.api.url)
        self.logs: list[str] = []
        self._log_lock = threading.Lock()

        def observe(event: dict[str, Any]) -> None:
            if str(event.get("log_namespace", "")).startswith("kubedns.k8s"):
                text = formatEvent(event)
                with self._log_lock:
                    self.logs.append(text)

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)

    def start(self, resources: list[str] = BASE, **tuning: Any) -> Informer:
        self.store = Store(required=resources)
        self.zones = ClusterZones(self.store, KubernetesConfig())
        informer = Informer(self.store, resources, self.kubeconfig, reactor=reactor, **{**FAST, **tuning})
        informer.startService()
        self.addCleanup(lambda: informer.running and informer.stopService())
        self.informer = informer
        return informer

    async def synced(self) -> None:
        await wait_until(lambda: self.store.synced, timeout=6.0, what="initial sync")
        await wait_until(lambda: self.api.watcher_count() >= len(self.informer.resources), timeout=6.0,
                         what="watches open")

    # -- what a DNS client sees ---------------------------------------------------------------
    def answer(self, name: str, qtype: int = tdns.A) -> tuple[str, list[str]]:
        """(rcode text, sorted rdata) for ``name`` (relative to the cluster zone)."""
        fqdn = f"{name}.{ZONE}".encode()
        result = self.zones.answer(fqdn, qtype)
        assert result is not None
        ans = result[1]
        rdata = []
        for rr in ans.answers:
            p = rr.payload
            rdata.append(p.dottedQuad() if hasattr(p, "dottedQuad") else str(p))
        return dns.rcode.to_text(ans.rcode), sorted(rdata)

    def a(self, name: str) -> tuple[str, list[str]]:
        return self.answer(name)

    # -- helpers ------------------------------------------------------------------------------
    def st(self, resource: str = "services") -> dict[str, Any]:
        return self.informer.status()[resource]

    def lists(self, resource: str = "services", first_pages_only: bool = False) -> int:
        return sum(
            1
            for r in list(self.api.request_log)
            if r.verb == "list" and r.resource == resource and not (first_pages_only and r.params.get("continue"))
        )

    def request_times(self, verb: str, resource: str = "services") -> list[float]:
        return [r.time for r in list(self.api.request_log) if r.verb == verb and r.resource == resource]

    def log_lines(self, *needles: str) -> list[str]:
        with self._log_lock:
            return [ln for ln in self.logs if all(n in ln for n in needles)]

    def threads_alive(self) -> bool:
        return all(w.is_alive() for w in self.informer._watchers.values())


class AuthAndThrottlingTests(_Base):
    """401/403/429/5xx: named clearly in the log, retried with backoff (and Retry-After), no crash."""

    async def test_forbidden_list_names_resource_and_verb_and_retries_with_backoff(self) -> None:
        # a bare message, so that the verb in the log line must come from kubedns itself
        self.api.fail_next("list", "services", 403, times=None, message="access denied")
        self.start()
        await wait_until(lambda: self.st()["errors"] >= 4, what="repeated 403s")
        # the kinds it may read sync; services do not, so cluster names stay SERVFAIL, never NXDOMAIN
        await wait_until(lambda: {"namespaces", "endpointslices"} <= self.store.synced_kinds, what="other kinds")
        self.assertEqual(self.store.missing_kinds(), ["services"])
        self.assertFalse(self.informer.synced)
        self.assertEqual(self.a("svc0.apps.svc")[0], "SERVFAIL")
        self.assertEqual(self.a("nosuch.apps.svc")[0], "SERVFAIL")
        lines = self.log_lines("services", "HTTP 403")
        self.assertTrue(lines, self.logs)
        self.assertIn("'list'", lines[0], self.logs)
        self.assertIn("RBAC", lines[0], self.logs)
        self.assertIn("'list'", self.st()["last_error"])
        # retried with a growing delay, not in a tight loop, and the thread lives on
        await sleep(1.0)
        times = self.request_times("list")
        gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
        self.assertGreater(max(gaps), FAST["backoff_cap"] / 2 - 0.02, gaps)
        self.assertLess(len(times), 30, gaps)
        self.assertTrue(self.threads_alive())

        self.api.clear_faults()  # RBAC fixed
        await self.synced()
        self.assertEqual(self.a("svc0.apps.svc"), ("NOERROR", ["10.96.1.0"]))
        self.assertEqual(self.a("nosuch.apps.svc")[0], "NXDOMAIN")

    async def test_forbidden_watch_keeps_the_listed_state_and_names_the_verb(self) -> None:
        self.api.fail_next("watch", "services", 403, times=None, message="access denied")
        self.start()
        await wait_until(lambda: self.store.synced, what="sync by list alone")
        await wait_until(lambda: self.st()["errors"] >= 3, what="watch retries")
        lines = self.log_lines("services", "HTTP 403")
        self.assertTrue(lines and "'watch'" in lines[-1], self.logs)
        self.assertEqual(self.a("svc0.apps.svc"), ("NOERROR", ["10.96.1.0"]))
        lists = self.lists()
        self.api.create("services", kubeobj.service("late", "apps", cluster_ip="10.96.2.1"))
        await sleep(0.5)
        self.assertEqual(self.lists(), lists, "a denied watch is retried, not answered with relists")
        self.assertTrue(self.threads_alive())

        self.api.clear_faults()
        await wait_until(lambda: self.a("late.apps.svc") == ("NOERROR", ["10.96.2.1"]), what="change after fix")

    async def test_unauthorized_says_credentials_were_rejected(self) -> None:
        self.api.fail_next("list", "namespaces", 401, times=3, message="Unauthorized")
        self.start()
        await self.synced()
        lines = self.log_lines("namespaces", "HTTP 401")
        self.assertTrue(lines, self.logs)
        self.assertIn("credentials", lines[0])
        self.assertEqual(self.a("apps.svc")[0], "NOERROR")

    async def test_429_retry_after_on_list_is_honoured(self) -> None:
        self.api.fail_next("list", "services", 429, retry_after=1)
        self.start(backoff_cap=2.0)
        await self.synced()
        times = self.request_times("list")
        self.assertGreaterEqual(times[1] - times[0], 0.9, "Retry-After: 1 beats a 50 ms backoff")
        self.assertIn("429", self.st()["last_error"])
        self.assertEqual(self.a("svc1.apps.svc"), ("NOERROR", ["10.96.1.1"]))

    async def test_retry_after_is_capped_by_the_backoff_cap(self) -> None:
        self.api.fail_next("list", "services", 503, retry_after=3600)
        self.start()  # backoff_cap 0.3 s
        await wait_until(lambda: self.st()["errors"] >= 1, what="the 503")
        await wait_until(lambda: self.store.synced, timeout=3.0, what="sync despite an hour's Retry-After")

    async def test_503_retry_after_on_watch_keeps_answering_then_catches_up(self) -> None:
        self.start(backoff_cap=2.0)
        await self.synced()
        self.api.fail_next("watch", "services", 503, retry_after=1, times=1)
        self.api.drop_watches("services")
        self.api.create("services", kubeobj.service("late", "apps", cluster_ip="10.96.2.1"))
        await wait_until(lambda: self.st()["errors"] >= 2, what="drop, then 503")
        self.assertEqual(self.a("svc0.apps.svc"), ("NOERROR", ["10.96.1.0"]), "last known state served")
        self.assertEqual(self.a("late.apps.svc")[0], "NXDOMAIN")
        await wait_until(lambda: self.a("late.apps.svc")[0] == "NOERROR", what="the change after the pause")
        watches = self.request_times("watch")
        self.assertGreaterEqual(watches[-1] - watches[-2], 0.9)
        self.assertEqual(self.st()["relists"], 0)

    async def test_500_on_a_list_page_restarts_the_list(self) -> None:
        self.api.fail_next("list", "services", 500, when=_has_continue)
        self.start()
        await self.synced()
        svc = [r for r in self.api.request_log if r.verb == "list" and r.resource == "services"]
        self.assertEqual([bool(r.params.get("continue")) for r in svc], [False, True, False, True, True])
        self.assertEqual(self.store.count("services"), 6)


class ListFaultTests(_Base):
    """Lists cut short: the store is never pruned against a partial or bogus list."""

    async def test_continue_token_410_restarts_the_first_list_cleanly(self) -> None:
        self.api.fail_next("list", "services", 410, when=_has_continue)
        self.start()
        await self.synced()
        svc = [r for r in self.api.request_log if r.verb == "list" and r.resource == "services"]
        self.assertEqual([bool(r.params.get("continue")) for r in svc], [False, True, False, True, True])
        self.assertEqual(self.store.count("services"), 6)
        self.assertEqual(self.st()["relists"], 0)

    async def test_continue_token_410_during_a_relist_after_a_gap(self) -> None:
        self.start()
        await self.synced()
        self.api.fail_requests = True
        self.api.drop_watches("services")
        self.api.delete("services", "apps", "svc0")
        self.api.delete("services", "apps", "svc4")
        self.api.create("services", kubeobj.service("born", "apps", cluster_ip="10.96.9.9"))
        self.api.compact()
        self.api.fail_next("list", "services", 410, when=_has_continue)
        await wait_until(lambda: self.st()["errors"] >= 1, what="failed reconnect")
        self.assertEqual(self.a("svc0.apps.svc")[0], "NOERROR", "nothing deleted while the API is down")
        self.api.fail_requests = False
        await wait_until(lambda: self.st()["relists"] >= 1, what="relist")
        self.assertEqual(self.a("svc0.apps.svc")[0], "NXDOMAIN")
        self.assertEqual(self.a("svc4.apps.svc")[0], "NXDOMAIN")
        self.assertEqual(self.a("born.apps.svc"), ("NOERROR", ["10.96.9.9"]))
        self.assertEqual(self.a("svc2.apps.svc"), ("NOERROR", ["10.96.1.2"]))
        self.assertEqual(self.a("kube-dns.kube-system.svc"), ("NOERROR", ["10.96.0.10"]))
        self.assertEqual(self.store.count("services"), 5)
        self.assertEqual(self.st()["relists"], 1, "the cut list did not count as a relist")
        await wait_until(lambda: self.api.watcher_count("services") == 1, what="watch again")
        self.api.create("services", kubeobj.service("later", "apps", cluster_ip="10.96.9.10"))
        await wait_until(lambda: self.a("later.apps.svc")[0] == "NOERROR", what="event after relist")

    def first_page_gaps(self) -> list[float]:
        times = [r.time for r in list(self.api.request_log)
                 if r.verb == "list" and r.resource == "services" and not r.params.get("continue")]
        return [b - a for a, b in zip(times, times[1:], strict=False)]

    async def test_repeated_410_on_list_pages_backs_off(self) -> None:
        self.api.fail_next("list", "services", 410, when=_has_continue, times=None)
        self.start(backoff_base=0.2, backoff_cap=0.8)
        await wait_until(lambda: self.lists(first_pages_only=True) >= 2, what="a restarted list")
        await sleep(2.5)
        gaps = self.first_page_gaps()
        # a list whose pages always expire is restarted with a growing delay, not in a tight loop
        self.assertGreater(max(gaps), 0.35, gaps)
        self.assertLess(len(gaps), 12, gaps)
        self.assertEqual(self.a("svc0.apps.svc")[0], "SERVFAIL")
        self.assertTrue(self.threads_alive())
        self.api.clear_faults()
        await self.synced()
        self.assertEqual(self.a("svc0.apps.svc")[0], "NOERROR")

    async def _relists_back_off(self, **fault: Any) -> None:
        self.start(backoff_base=0.2, backoff_cap=0.8)
        await self.synced()
        self.api.fail_next("watch", "services", times=None, **fault)
        self.api.drop_watches("services")
        await wait_until(lambda: self.st()["relists"] >= 1, what="a relist")
        await sleep(3.0)
        gaps = self.first_page_gaps()
        self.assertGreater(max(gaps), 0.35, gaps)
        self.assertLess(self.st()["relists"], 8, gaps)
        self.assertEqual(self.a("svc0.apps.svc")[0], "NOERROR", "the last known state is served meanwhile")
        self.api.clear_faults()
        await wait_until(lambda: self.api.watcher_count("services") == 1, what="watch again")
        self.api.create("services", kubeobj.service("late", "apps", cluster_ip="10.96.2.1"))
        await wait_until(lambda: self.a("late.apps.svc")[0] == "NOERROR", what="event after the trouble")

    async def test_repeated_410_on_watch_backs_off_between_relists(self) -> None:
        await self._relists_back_off(code=410)

    async def test_repeated_error_events_back_off_between_relists(self) -> None:
        await self._relists_back_off(code=500, action="error-event")

    async def test_stalled_list_body_hits_the_read_timeout_and_is_retried(self) -> None:
        self.api.fail_next("list", "services", action="stall")
        self.start(read_timeout=0.5)
        await wait_until(lambda: self.st()["errors"] >= 1, what="read timeout")
        self.assertFalse(self.store.synced)
        self.assertEqual(self.a("svc0.apps.svc")[0], "SERVFAIL")
        await self.synced()
        self.assertIn("timed out", self.st()["last_error"].lower())
        self.assertEqual(self.store.count("services"), 6)

    async def test_truncated_or_non_json_list_during_relist_prunes_nothing(self) -> None:
        self.start()
        await self.synced()
        self.api.fail_next("watch", "services", 410)
        self.api.fail_next("list", "services", action="truncate")
        self.api.fail_next("list", "services", 200, body=b"<html>502 Bad Gateway</html>", content_type="text/html")
        self.api.fail_next("list", "services", 200, body=b'{"kind":"Status","status":"Success"}')
        self.api.drop_watches("services")
        seen: list[int] = []
        deadline = time.monotonic() + 8
        while self.st()["relists"] < 1:
            self.assertLess(time.monotonic(), deadline, self.st())
            seen.append(self.store.count("services"))
            self.assertEqual(self.a("svc0.apps.svc")[0], "NOERROR")
            await sleep(0.005)
        self.assertEqual(set(seen), {6}, "a bogus list page must never empty the store")
        self.assertGreaterEqual(self.st()["errors"], 4)
        self.assertTrue(self.threads_alive())


class WatchStreamTests(_Base):
    """What comes down an open watch: errors, garbage, unknown events, odd objects."""

    def ev(self, type_: str, obj: Any) -> bytes:
        return json.dumps({"type": type_, "object": obj}).encode()

    async def test_error_event_other_than_410_rewatches_then_relists_after_three(self) -> None:
        self.start()
        await self.synced()
        rv = self.st()["resource_version"]
        lists = self.lists()
        self.api.fail_next("watch", "services", 500, action="error-event", times=2)
        self.api.drop_watches("services")
        await wait_until(lambda: self.api.watcher_count("services") == 1 and not self.api._faults[0].matches(
            "watch", "services", {}), what="two ERROR events")
        self.assertIn("500", self.st()["last_error"])
        self.assertEqual(self.st()["resource_version"], rv, "an ERROR event moves no resourceVersion")
        self.assertEqual(self.lists(), lists, "two errors: re-watch, no relist")
        self.api.create("services", kubeobj.service("a", "apps", cluster_ip="10.96.2.1"))
        await wait_until(lambda: self.a("a.apps.svc")[0] == "NOERROR", what="event after the errors")

        self.api.fail_next("watch", "services", 500, action="error-event", times=3)
        self.api.drop_watches("services")
        await wait_until(lambda: self.st()["relists"] == 1, what="relist after three ERROR events")
        self.api.create("services", kubeobj.service("b", "apps", cluster_ip="10.96.2.2"))
        await wait_until(lambda: self.a("b.apps.svc")[0] == "NOERROR", what="event after the relist")
        self.assertEqual(self.a("a.apps.svc")[0], "NOERROR")

    async def test_malformed_json_line_rewatches_from_the_last_good_event(self) -> None:
        self.start()
        await self.synced()
        lists = self.lists()
        self.api.create("services", kubeobj.service("a", "apps", cluster_ip="10.96.2.1"))
        await wait_until(lambda: self.a("a.apps.svc")[0] == "NOERROR", what="a")
        self.assertEqual(self.api.inject_watch_lines("services", b'{"type":"ADDED","object":{"metadata":'), 1)
        self.api.create("services", kubeobj.service("b", "apps", cluster_ip="10.96.2.2"))
        await wait_until(lambda: self.a("b.apps.svc")[0] == "NOERROR", what="b after the garbage")
        self.assertGreaterEqual(self.st()["errors"], 1)
        self.assertEqual(self.lists(), lists, "a re-watch replays the gap; no relist needed")
        self.assertTrue(self.threads_alive())

    async def _poisoned(self, line: bytes) -> None:
        self.start()
        await self.synced()
        self.api.poison_history("services", line)
        self.api.create("services", kubeobj.service("after", "apps", cluster_ip="10.96.2.9"))
        # every re-watch from the last good resourceVersion replays the bad line: only a relist
        # gets past it
        await wait_until(lambda: self.a("after.apps.svc")[0] == "NOERROR", timeout=8.0, what="event past the poison")
        await wait_until(lambda: self.st()["relists"] == 1, what="the relist's end")
        self.assertIn("malformed watch event", self.st()["last_error"])
        self.assertEqual(self.a("svc0.apps.svc")[0], "NOERROR")
        self.assertTrue(self.threads_alive())

    async def test_a_malformed_line_replayed_on_every_rewatch_is_passed_by_a_relist(self) -> None:
        await self._poisoned(b"this is not json")

    async def test_an_event_that_is_not_an_object_is_passed_by_a_relist(self) -> None:
        await self._poisoned(b'["ADDED", {}]')

    async def test_an_event_whose_object_is_not_an_object_is_passed_by_a_relist(self) -> None:
        await self._poisoned(b'{"type":"MODIFIED","object":"svc0"}')

    async def test_watch_that_stalls_mid_event_times_out_and_drops_the_half_event(self) -> None:
        self.start(read_timeout=0.5)
        await self.synced()
        self.api.hang_watches = True
        self.api.drop_watches("services")
        await wait_until(lambda: self.api.watcher_count("services") == 1, what="hung watch open")
        await sleep(0.1)  # the handler registers the watch before it reads hang_watches
        self.api.hang_watches = False
        half = self.ev("ADDED", {"metadata": {"name": "half", "namespace": "apps", "resourceVersion": "1"},
                                 "spec": {"clusterIP": "10.96.6.6"}})[:40]
        self.assertEqual(self.api.inject_watch_lines("services", half, newline=False), 1)
        self.api.create("services", kubeobj.service("whole", "apps", cluster_ip="10.96.6.7"))
        took = await wait_until(lambda: self.a("whole.apps.svc")[0] == "NOERROR", what="after the read timeout")
        self.assertGreater(took, 0.3)
        self.assertEqual(self.a("half.apps.svc")[0], "NXDOMAIN")
        self.assertIn("timed out", self.st()["last_error"].lower())
        self.assertEqual(self.a("svc0.apps.svc")[0], "NOERROR")
        self.assertEqual(self.st()["relists"], 0)

    async def test_a_line_that_never_ends_is_a_broken_watch_not_a_growing_buffer(self) -> None:
        from kubedns.k8s import watch as watch_mod

        saved = watch_mod.MAX_WATCH_LINE
        watch_mod.MAX_WATCH_LINE = 200_000
        try:
            self.start()
            await self.synced()
            chunk = b'{"type":"ADDED","object":{"metadata":{"name":"' + b"x" * 100_000
            self.assertEqual(self.api.inject_watch_lines("services", chunk, chunk, chunk, newline=False), 1)
            await wait_until(lambda: "without a newline" in (self.st()["last_error"] or ""), what="the cap")
            self.api.create("services", kubeobj.service("next", "apps", cluster_ip="10.96.6.8"))
            await wait_until(lambda: self.a("next.apps.svc")[0] == "NOERROR", what="the re-watch")
            self.assertEqual(self.a("svc0.apps.svc")[0], "NOERROR")
            self.assertTrue(self.threads_alive())
        finally:
            watch_mod.MAX_WATCH_LINE = saved

    async def test_a_resource_version_the_server_then_refuses_is_left_by_a_relist(self) -> None:
        self.start()
        await self.synced()
        self.api.inject_watch_lines("services", self.ev("BOOKMARK", {"kind": "Service", "metadata": {"resourceVersion": "x"}}))
        await wait_until(lambda: self.st()["resource_version"] == "x", what="the odd bookmark")
        self.api.drop_watches("services")  # every re-watch from "x" is now a 400 Bad Request
        self.api.create("services", kubeobj.service("late", "apps", cluster_ip="10.96.2.1"))
        await wait_until(lambda: self.a("late.apps.svc")[0] == "NOERROR", timeout=6.0, what="the change")
        await wait_until(lambda: self.st()["relists"] == 1, what="the relist's end")
        self.assertIn("400", self.st()["last_error"])
        self.assertEqual(self.a("svc0.apps.svc")[0], "NOERROR")

    async def test_unknown_event_type_is_ignored(self) -> None:
        self.start()
        await self.synced()
        rv = str(self.api.resource_version + 5)
        self.api.inject_watch_lines(
            "services",
            self.ev("SURPRISE", {"kind": "Service", "metadata": {"name": "x", "namespace": "apps", "resourceVersion": rv}}),
            self.ev("ADDED", None),  # no object at all: nothing to apply, nothing to die of
        )
        self.api.create("services", kubeobj.service("a", "apps", cluster_ip="10.96.2.1"))
        await wait_until(lambda: self.a("a.apps.svc")[0] == "NOERROR", what="event after the surprise")
        self.assertEqual(self.a("x.apps.svc")[0], "NXDOMAIN")
        self.assertEqual(self.st()["relists"], 0)
        self.assertTrue(self.threads_alive())

    async def test_objects_missing_optional_fields_list_and_watch(self) -> None:
        def odd_objects(tag: str, base: int) -> list[dict[str, Any]]:
            hl = kubeobj.service(f"hl{tag}", "apps", headless=True, ports=[{"name": "http", "port": 80}])
            good = kubeobj.endpointslice(
                f"hl{tag}-good", "apps", f"hl{tag}", [{"addresses": [f"10.1.{base}.1"], "hostname": "h1"}],
                ports=[{"name": "http", "port": 80}],
            )
            nulls = kubeobj.endpointslice(f"hl{tag}-nulls", "apps", f"hl{tag}", [], ports=[])
            nulls["endpoints"] = None
            nulls["ports"] = [{"name": None, "port": None, "protocol": None}, {"name": None, "port": 81}]
            holes = kubeobj.endpointslice(f"hl{tag}-holes", "apps", f"hl{tag}", [{"addresses": ["10.9.9.9"]}])
            holes["endpoints"] = [
                {"addresses": None, "conditions": None},
                {"addresses": [f"10.1.{base}.2"], "conditions": None, "hostname": None},
            ]
            nospec = {"kind": "Service", "apiVersion": "v1", "metadata": {"name": f"nospec{tag}", "namespace": "apps"}}
            return [hl, good, nulls, holes, nospec]

        self.api.load(odd_objects("l", 5))  # seen by the list
        self.start()
        await self.synced()
        self.api.load(odd_objects("w", 6))  # seen by the watch
        await wait_until(lambda: self.store.count("endpointslices") == 9 and self.store.count("services") == 10,
                         what="watched objects")
        for tag, base in (("l", 5), ("w", 6)):
            self.assertEqual(self.a(f"hl{tag}.apps.svc"), ("NOERROR", [f"10.1.{base}.1", f"10.1.{base}.2"]))
            self.assertEqual(self.a(f"h1.hl{tag}.apps.svc"), ("NOERROR", [f"10.1.{base}.1"]))
            rcode, srv = self.answer(f"_http._tcp.hl{tag}.apps.svc", tdns.SRV)
            self.assertEqual(rcode, "NOERROR")
            self.assertTrue(srv and all("port=80 " in s for s in srv), srv)
            self.assertIn(self.a(f"nospec{tag}.apps.svc")[0], ("NXDOMAIN", "NOERROR"))
        self.assertEqual(self.st("endpointslices")["errors"], 0)
        self.assertEqual(self.st()["errors"], 0)
        self.assertTrue(self.threads_alive())

    async def test_bad_addresses_are_dropped_not_served(self) -> None:
        def objs(tag: str, third: int) -> list[dict[str, Any]]:
            svc = kubeobj.service(f"ips{tag}", "apps", cluster_ip="10.96.4.4")
            svc["spec"]["clusterIPs"] = [f"10.96.{third}.4", "not-an-ip", 7, None, "fe80::1%eth0"]
            svc["spec"]["clusterIP"] = f"10.96.{third}.4"
            hl = kubeobj.service(f"hl{tag}", "apps", headless=True)
            sl = kubeobj.endpointslice(f"hl{tag}-x", "apps", f"hl{tag}", [{"addresses": [f"10.1.{third}.1"]}])
            sl["endpoints"] = [
                {"addresses": ["999.1.1.1", f"10.1.{third}.1", None, 5]},
                {"addresses": "10.1.1.1"},  # not a list
                {"addresses": [f"fd00::{third}"]},
            ]
            return [svc, hl, sl]

        self.api.load(objs("l", 11))
        self.start()
        await self.synced()
        self.api.load(objs("w", 12))
        await wait_until(lambda: self.a("hlw.apps.svc")[0] == "NOERROR" and self.a("ipsw.apps.svc")[0] == "NOERROR",
                         what="watched objects")
        for tag, third in (("l", 11), ("w", 12)):
            # what is valid is served; the garbage next to it breaks nothing
            self.assertEqual(self.a(f"ips{tag}.apps.svc"), ("NOERROR", [f"10.96.{third}.4"]))
            self.assertEqual(self.a(f"hl{tag}.apps.svc"), ("NOERROR", [f"10.1.{third}.1"]))
            self.assertEqual(self.answer(f"hl{tag}.apps.svc", tdns.AAAA)[0], "NOERROR")
            rcode, srv = self.answer(f"_http._tcp.hl{tag}.apps.svc", tdns.SRV)
            self.assertEqual((rcode, len(srv)), ("NOERROR", 2), srv)
        self.assertTrue(self.threads_alive())

    async def test_object_without_a_name_is_skipped(self) -> None:
        self.start()
        await self.synced()
        rv = str(self.api.resource_version + 1)
        self.api.inject_watch_lines(
            "services",
            self.ev("ADDED", {"metadata": {"namespace": "apps", "resourceVersion": rv}, "spec": {"clusterIP": "10.96.7.7"}}),
            self.ev("ADDED", {"metadata": None, "spec": None}),
        )
        await wait_until(lambda: self.st()["errors"] >= 2, what="skipped objects")
        self.assertEqual(self.store.count("services"), 6)
        self.assertEqual(self.store.reverse("10.96.7.7"), [])
        self.assertIn("name", self.st()["last_error"])
        self.api.create("services", kubeobj.service("a", "apps", cluster_ip="10.96.2.1"))
        await wait_until(lambda: self.a("a.apps.svc")[0] == "NOERROR", what="event after")

    async def test_delete_of_an_object_that_turned_malformed_still_deletes(self) -> None:
        self.start()
        await self.synced()
        bad = kubeobj.service("svc0", "apps", cluster_ip="10.96.1.0")
        bad["spec"]["ports"] = ["garbage"]
        self.api.update("services", bad)
        await wait_until(lambda: self.st()["errors"] >= 1, what="skipped update")
        self.assertEqual(self.a("svc0.apps.svc"), ("NOERROR", ["10.96.1.0"]), "the last good state is kept")
        self.api.delete("services", "apps", "svc0")
        await wait_until(lambda: self.a("svc0.apps.svc")[0] == "NXDOMAIN", what="the delete")
        self.assertEqual(self.store.reverse("10.96.1.0"), [])

    async def test_namespace_deleted_while_its_services_remain(self) -> None:
        self.start()
        await self.synced()
        self.api.delete("namespaces", None, "apps")
        await wait_until(lambda: "apps" not in self.store._objects["namespaces"], what="namespace DELETED")
        # its Services (being deleted by the namespace controller) keep answering until they go
        self.assertEqual(self.a("svc0.apps.svc"), ("NOERROR", ["10.96.1.0"]))
        self.assertEqual(self.a("apps.svc")[0], "NOERROR")
        # a relist in that state keeps them too
        self.api.fail_next("watch", "namespaces", 410)
        self.api.fail_next("watch", "services", 410)
        self.api.drop_watches()
        await wait_until(lambda: self.st()["relists"] == 1 and self.st("namespaces")["relists"] == 1, what="relists")
        self.assertEqual(self.a("svc3.apps.svc"), ("NOERROR", ["10.96.1.3"]))
        await wait_until(lambda: self.api.watcher_count() == 3, what="watches")
        for i in range(5):
            self.api.delete("services", "apps", f"svc{i}")
        for i in range(3):
            self.api.delete("endpointslices", "apps", f"svc{i}-x")
        await wait_until(lambda: self.a("apps.svc")[0] == "NXDOMAIN", what="namespace gone from DNS")
        self.assertEqual(self.a("svc0.apps.svc")[0], "NXDOMAIN")
        self.assertEqual(self.a("kube-dns.kube-system.svc"), ("NOERROR", ["10.96.0.10"]))

    async def test_very_large_objects_in_list_and_watch(self) -> None:
        def fat_service(name: str, ip: str) -> dict[str, Any]:
            svc = kubeobj.service(name, "apps", cluster_ip=ip)
            svc["metadata"]["annotations"] = {"kubectl.kubernetes.io/last-applied-configuration": "x" * 1_400_000}
            return svc

        def big_slice(name: str, svc: str, third: int) -> dict[str, Any]:
            eps = [{"addresses": [f"10.{third}.{i // 250}.{i % 250 + 1}"]} for i in range(1000)]
            return kubeobj.endpointslice(name, "apps", svc, eps)

        self.api.load([fat_service("fat1", "10.96.3.1"), kubeobj.service("big1", "apps", headless=True),
                       big_slice("big1-x", "big1", 201)])
        self.start()
        await self.synced()
        self.assertEqual(self.a("fat1.apps.svc"), ("NOERROR", ["10.96.3.1"]))
        self.assertEqual(len(self.a("big1.apps.svc")[1]), 1000)
        started = time.monotonic()
        self.api.load([fat_service("fat2", "10.96.3.2"), kubeobj.service("big2", "apps", headless=True),
                       big_slice("big2-x", "big2", 202)])
        await wait_until(lambda: self.a("fat2.apps.svc")[0] == "NOERROR", what="1.4 MB watch event")
        await wait_until(lambda: len(self.a("big2.apps.svc")[1]) == 1000, what="1000-endpoint watch event")
        self.assertLess(time.monotonic() - started, 6.0)
        self.api.create("services", kubeobj.service("small", "apps", cluster_ip="10.96.3.9"))
        await wait_until(lambda: self.a("small.apps.svc")[0] == "NOERROR", what="a small one after")
        self.assertEqual((self.st()["errors"], self.st("endpointslices")["errors"]), (0, 0))


def test_retry_after_header_forms() -> None:
    import email.utils

    from kubedns.k8s.watch import _retry_after

    def err(value: str | None) -> Exception:
        e = Exception("HTTP 429")
        e.headers = {} if value is None else {"Retry-After": value}  # type: ignore[attr-defined]
        return e

    assert _retry_after(err("2")) == 2.0
    assert _retry_after(err("0.5")) == 0.5
    for bad in (None, "", "soon", "-3", "nan", "inf"):
        assert _retry_after(err(bad)) == 0.0, bad
    later = email.utils.formatdate(time.time() + 10, usegmt=True)
    assert 8.0 < _retry_after(err(later)) <= 10.0
    assert _retry_after(err(email.utils.formatdate(time.time() - 10, usegmt=True))) == 0.0
    assert _retry_after(Exception("no headers at all")) == 0.0


# -- the real process -------------------------------------------------------------------------------


@pytest.fixture
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in _PROXY_VARS:
        monkeypatch.delenv(var, raising=False)


def _rcode(port: int, name: str) -> str:
    """The rcode of an A query; a lost datagram or a socket hiccup on the client side is retried."""
    for attempt in range(3):
        try:
            return dns.rcode.to_text(query(port, name, "A", timeout=1).rcode())
        except (OSError, dns.exception.Timeout):
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def _start(kubedns_process: Any, api: fakeapi.FakeKubeAPI, tmp_path: Path, **block: Any) -> tuple[int, Any]:
    """The real process watching ``api``; ``block`` adds server-block keys.  (DNS port, process)."""
    dns_port = free_port()
    cfg = {"servers": [{
        "zones": ["."], "listen": f"127.0.0.1:{dns_port}",
        "kubernetes": {"kubeconfig": kubeobj.kubeconfig(tmp_path / "kubeconfig", api.url)},
        **block,
    }]}
    p = kubedns_process(cfg, env={"NO_PROXY": "127.0.0.1"})
    p.wait_listening(dns_port)
    return dns_port, p


@pytest.mark.usefixtures("_no_proxy")
def test_process_forbidden_then_granted(kubedns_process: Any, tmp_path: Path) -> None:
    with fakeapi.FakeKubeAPI() as api:
        api.load([kubeobj.namespace("default"), kubeobj.service("web", "default", cluster_ip="10.96.1.1")])
        api.fail_next("list", "endpointslices", 403, times=None)
        http = free_port()
        dns_port, p = _start(kubedns_process, api, tmp_path, ready=f"127.0.0.1:{http}")
        wait_for(lambda: api.requests[("list", "endpointslices")] >= 3)
        status, body = wait_for(lambda: http_get(http, "/ready"))
        assert status == 503, body
        assert "endpointslices" in body and "403" in body, body
        for name in ("web.default.svc.cluster.local", "nope.default.svc.cluster.local"):
            assert _rcode(dns_port, name) == "SERVFAIL"
        time.sleep(1.0)
        assert p.proc is not None and p.proc.poll() is None, "no crash loop"
        lines = [ln for ln in p.log().splitlines() if "endpointslices" in ln and "HTTP 403" in ln]
        assert lines and "'list'" in lines[0] and "discovery.k8s.io" in lines[0], p.log()
        attempts = api.requests[("list", "endpointslices")]
        assert attempts < 15, f"{attempts} attempts in a few seconds: no backoff?"

        api.clear_faults()
        wait_for(lambda: http_get(http, "/ready")[0] == 200, timeout=40)
        assert rrset_text(query(dns_port, "web.default.svc.cluster.local")) == ["web.default.svc.cluster.local A 10.96.1.1"]
        assert _rcode(dns_port, "nope.default.svc.cluster.local") == "NXDOMAIN"


@pytest.mark.usefixtures("_no_proxy")
def test_process_survives_a_hostile_watch_stream(kubedns_process: Any, tmp_path: Path) -> None:
    with fakeapi.FakeKubeAPI() as api:
        api.load([kubeobj.namespace("default"), kubeobj.service("web", "default", cluster_ip="10.96.1.1")])
        dns_port, p = _start(kubedns_process, api, tmp_path)
        wait_for(lambda: _rcode(dns_port, "web.default.svc.cluster.local") == "NOERROR")
        assert api.wait_for_watchers(3)
        api.inject_watch_lines("services", b"\x00garbage{", b'{"type":"WHAT","object":{}}')
        api.poison_history("endpointslices", b'{"type":"ADDED","object":7}')
        api.fail_next("watch", "services", 503, retry_after=1)
        api.fail_next("watch", "services", 500, action="error-event")
        for _ in range(3):
            assert _rcode(dns_port, "web.default.svc.cluster.local") == "NOERROR"
            time.sleep(0.2)
        api.create("services", kubeobj.service("late", "default", cluster_ip="10.96.1.2"))
        api.create("services", kubeobj.service("db", "default", headless=True))
        api.create("endpointslices", kubeobj.endpointslice("db-1", "default", "db", [{"addresses": ["10.244.0.7"]}]))
        try:
            wait_for(lambda: _rcode(dns_port, "late.default.svc.cluster.local") == "NOERROR", timeout=15)
        except AssertionError:
            raise AssertionError(p.log()) from None
        wait_for(lambda: rrset_text(query(dns_port, "db.default.svc.cluster.local", timeout=1))
                  == ["db.default.svc.cluster.local A 10.244.0.7"], timeout=15)
        assert p.proc is not None and p.proc.poll() is None


@pytest.mark.usefixtures("_no_proxy")
def test_process_namespace_deleted_before_its_services(kubedns_process: Any, tmp_path: Path) -> None:
    with fakeapi.FakeKubeAPI() as api:
        api.load([kubeobj.namespace("default"), kubeobj.namespace("shop"),
                  kubeobj.service("cart", "shop", cluster_ip="10.96.2.1")])
        dns_port, p = _start(kubedns_process, api, tmp_path)
        wait_for(lambda: _rcode(dns_port, "cart.shop.svc.cluster.local") == "NOERROR")
        assert api.wait_for_watchers(3)
        api.delete("namespaces", None, "shop")
        api.create("namespaces", kubeobj.namespace("marker"))  # applied after the delete
        wait_for(lambda: _rcode(dns_port, "marker.svc.cluster.local") == "NOERROR")
        # the namespace controller deletes the Services afterwards: until then they answer
        assert rrset_text(query(dns_port, "cart.shop.svc.cluster.local")) == ["cart.shop.svc.cluster.local A 10.96.2.1"]
        assert _rcode(dns_port, "shop.svc.cluster.local") == "NOERROR"
        api.delete("services", "shop", "cart")
        wait_for(lambda: _rcode(dns_port, "cart.shop.svc.cluster.local") == "NXDOMAIN")
        assert _rcode(dns_port, "shop.svc.cluster.local") == "NXDOMAIN"
