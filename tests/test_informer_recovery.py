"""How the informer comes back: from an API outage, from bad credentials, from a restored API.

Real parts as in ``tests/test_informer.py``: the fake apiserver over real HTTP on 127.0.0.1, the
official client, the informer's own threads and a real reactor.  The backoff is made long on
purpose in the outage and credential tests: what is shown is that recovery does not wait for it.
"""

from __future__ import annotations

import os
import re
import socket
import time
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import reactor
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial import unittest

from kubedns.k8s.apiclient import ClientSource, load_api_client
from kubedns.k8s.informer import Informer
from kubedns.k8s.store import Store
from tests import fakeapi
from tests.conftest import wait_until
from tests.support import kubeobj

pytestmark = pytest.mark.timeout(60)

BASE = ["namespaces", "services", "endpointslices"]
ALL = [*BASE, "pods"]
_ENV = ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY",
        "KUBERNETES_SERVICE_HOST", "KUBECONFIG")

FAST = {
    "watch_timeout": 30.0,
    "connect_timeout": 1.0,
    "read_timeout": 1.0,
    "backoff_base": 0.05,
    "backoff_cap": 0.3,
    "config_retry_base": 0.05,
    "config_retry_cap": 0.2,
    "stop_timeout": 3.0,
    "freeze_gc": False,
}
_STEP = re.compile(r"^(\w+): (.*); the Kubernetes API is unreachable: list and watch retry in ([\d.]+)s")


def _cluster() -> list[dict[str, Any]]:
    return [
        kubeobj.namespace("default"),
        kubeobj.namespace("apps"),
        kubeobj.service("web", "apps", cluster_ip="10.96.1.1"),
        kubeobj.endpointslice("web-x", "apps", "web", [{"addresses": ["10.1.1.1"]}]),
        kubeobj.pod("p0", "apps", "10.1.1.1"),
    ]


def _free_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Base(unittest.TestCase):
    timeout = 55

    def setUp(self) -> None:
        for var in _ENV:
            if var in os.environ:
                self.addCleanup(os.environ.__setitem__, var, os.environ.pop(var))
        self.api = fakeapi.FakeKubeAPI().start()
        self.addCleanup(self.api.stop)
        self.api.load(_cluster())
        self.kubeconfig = kubeobj.kubeconfig(Path(self.mktemp()), self.api.url)
        self.logged: list[tuple[float, str, str]] = []  # (monotonic time, level, text)

        def observe(event: dict[str, Any]) -> None:
            if str(event.get("log_namespace", "")).startswith("kubedns.k8s"):
                self.logged.append((time.monotonic(), event["log_level"].name, formatEvent(event)))

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)

    def start(self, resources: list[str] = BASE, **tuning: Any) -> Informer:
        self.store = Store(required=resources)
        informer = Informer(self.store, resources, self.kubeconfig, reactor=reactor, **{**FAST, **tuning})
        informer.startService()
        self.addCleanup(lambda: informer.running and informer.stopService())
        return informer

    async def synced(self, informer: Informer, timeout: float = 10.0) -> None:
        await wait_until(lambda: self.store.synced, timeout, what="initial sync")
        await wait_until(lambda: self.api.watcher_count() >= len(informer.resources), timeout, what="watches")

    def steps(self) -> list[tuple[float, str, str, float]]:
        """The outage lines: (time, resource, error, delay announced)."""
        out = []
        for t, _, text in self.logged:
            m = _STEP.match(text)
            if m:
                out.append((t, m[1], m[2], float(m[3])))
        return out


class OutageTests(_Base):
    async def test_one_warning_per_backoff_step_for_all_resources(self) -> None:
        """Four watches losing the API at once log one line per step, naming resource, error, delay."""
        informer = self.start(ALL, backoff_base=0.2, backoff_cap=0.8)
        await self.synced(informer)
        self.api.stop()
        await wait_until(lambda: len(self.steps()) >= 5, 20, what="five backoff steps")
        steps = self.steps()
        for (t0, _, _, delay), (t1, _, _, _) in zip(steps, steps[1:], strict=False):
            # the next line comes when the step it announced is over, not from another resource
            # (the delay is printed to 0.1 s: allow for the rounding)
            self.assertGreaterEqual(t1 - t0, delay - 0.06, steps)
        self.assertTrue(all(r in ALL for _, r, _, _ in steps))
        self.assertTrue(any("Connection refused" in err for _, _, err, _ in steps[1:]), steps)
        per_resource = [text for _, level, text in self.logged if "retrying in" in text]
        self.assertEqual(per_resource, [], "connection errors during an outage are not logged per resource")
        # every resource's status still says what went wrong
        self.assertTrue(all(s["last_error"] for s in informer.status().values()))
        self.assertTrue(informer.outage is not None and informer.outage.away)

    async def test_the_apis_return_is_noticed_at_once_whatever_the_backoff(self) -> None:
        """Backoff past 10 s, then the API comes back on its port with a change: seen within 2 s."""
        informer = self.start(BASE, backoff_base=12.0, backoff_cap=30.0)
        await self.synced(informer)
        port = self.api.port
        self.api.stop()
        # first step 6-12 s, the second 12-24 s: wait until a step longer than 10 s has begun
        await wait_until(lambda: any(d > 10 for *_, d in self.steps()), 30, what="a backoff step over 10 s")
        self.api.create("services", kubeobj.service("late", "apps", cluster_ip="10.96.1.9"))
        self.api.start(port=port)
        returned = time.monotonic()
        seen = await wait_until(lambda: self.store.service("apps", "late") is not None, 10, what="the change")
        print(f"\nAPI return to change seen in the store: {seen:.2f}s (backoff step was over 10 s)")
        self.assertLess(seen, 3.0)  # the bound is 2 s; room for a loaded machine
        self.assertLess(time.monotonic() - returned, 5.0)
        self.assertFalse(informer.outage is not None and informer.outage.away)
        self.assertTrue(any("the Kubernetes API is back" in text for _, _, text in self.logged))

    async def test_a_hung_watch_while_the_api_answers_is_not_an_outage(self) -> None:
        """A read timeout with the API reachable: that resource backs off alone, nobody is woken."""
        informer = self.start(BASE)
        await self.synced(informer)
        self.api.hang_watches = True
        self.api.drop_watches()
        await wait_until(lambda: informer.status()["services"]["errors"] >= 1, 10, what="a read timeout")
        self.assertEqual(self.steps(), [])
        assert informer.outage is not None
        self.assertEqual(informer.outage.outages, 0)
        self.api.hang_watches = False
        self.api.create("services", kubeobj.service("after", "apps", cluster_ip="10.96.1.8"))
        await wait_until(lambda: self.store.service("apps", "after") is not None, 10, what="the change")


class CredentialTests(_Base):
    async def test_a_kubeconfig_fixed_on_disk_is_picked_up_without_reload(self) -> None:
        """Wrong port first (unreachable), then the file is fixed: synced within seconds, no SIGHUP."""
        kubeobj.kubeconfig(self.kubeconfig, f"http://127.0.0.1:{_free_port()}")
        informer = self.start(BASE, backoff_base=12.0, backoff_cap=30.0)
        await wait_until(lambda: len(self.steps()) >= 1, 10, what="the outage")
        self.assertFalse(self.store.synced)
        kubeobj.kubeconfig(self.kubeconfig, self.api.url)
        took = await wait_until(lambda: self.store.synced, 10, what="sync after the fix")
        self.assertLess(took, 5.0)  # the backoff step was 6-12 s
        self.assertTrue(any("credentials changed" in text for _, _, text in self.logged))
        await self.synced(informer)

    async def test_a_rejected_token_fixed_on_disk_is_picked_up_on_the_next_retry(self) -> None:
        self.api.token = "right"
        kubeobj.kubeconfig(self.kubeconfig, self.api.url, token="wrong")
        informer = self.start(BASE, backoff_base=0.5, backoff_cap=1.0)
        await wait_until(lambda: informer.status()["services"]["errors"] >= 2, 10, what="401s")
        self.assertIn("HTTP 401", informer.status()["services"]["last_error"])
        kubeobj.kubeconfig(self.kubeconfig, self.api.url, token="right")
        await self.synced(informer, timeout=5.0)

    async def test_reload_retries_at_once_with_the_fixed_token(self) -> None:
        """A long backoff after a 401 is cut short by a reload (SIGHUP), which re-reads the file."""
        self.api.token = "right"
        kubeobj.kubeconfig(self.kubeconfig, self.api.url, token="wrong")
        informer = self.start(BASE, backoff_base=20.0, backoff_cap=30.0)
        await wait_until(lambda: all(s["errors"] >= 1 for s in informer.status().values()), 10, what="401s")
        kubeobj.kubeconfig(self.kubeconfig, self.api.url, token="right")
        informer.reload_credentials()
        took = await wait_until(lambda: self.store.synced, 5, what="sync after reload")
        self.assertLess(took, 3.0)  # the backoff was 10-20 s

    async def test_a_missing_kubeconfig_says_file_not_found(self) -> None:
        path = str(Path(self.mktemp()))
        with self.assertRaises(RuntimeError) as info:
            load_api_client(path)
        self.assertEqual(str(info.exception), f"cannot load kubeconfig: file not found: {path}")
        self.kubeconfig = path
        informer = self.start(BASE)
        await wait_until(lambda: informer.status()["services"]["errors"] >= 1, 10, what="config attempt")
        self.assertIn(f"file not found: {path}", informer.status()["services"]["last_error"])
        self.assertNotIn("Invalid kube-config", informer.status()["services"]["last_error"])
        kubeobj.kubeconfig(path, self.api.url)
        await self.synced(informer)


class SilentWatchTests(_Base):
    async def test_a_watch_that_never_catches_up_after_a_restore_is_relisted(self) -> None:
        """The API comes back from a backup behind our resourceVersion: relist after the silence bound."""
        self.api.bookmark_interval = 0.3  # a healthy apiserver bookmarks idle watches
        informer = self.start(BASE, max_watch_silence=2.0)
        await self.synced(informer)
        self.api.create("services", kubeobj.service("gone", "apps", cluster_ip="10.96.1.7"))
        await wait_until(lambda: self.store.service("apps", "gone") is not None, 5, what="the new service")
        # idle but bookmarked for longer than the bound: no relist
        t0 = time.monotonic()
        await wait_until(lambda: time.monotonic() - t0 > 3.0, 5, what="an idle spell")
        self.assertEqual([s["relists"] for s in informer.status().values()], [0, 0, 0])

        restored = [*_cluster(), kubeobj.service("restored", "apps", cluster_ip="10.96.1.6")]
        self.api.restore(restored, resource_version=500)  # older than what the informer holds
        took = await wait_until(
            lambda: self.store.service("apps", "gone") is None and self.store.service("apps", "restored") is not None,
            15,
            what="the restored state",
        )
        self.assertLess(took, 8.0)  # bound 2 s + a read timeout + the list
        self.assertGreaterEqual(informer.status()["services"]["relists"], 1)
        self.assertTrue(any("delivered nothing, not even a BOOKMARK" in text for _, _, text in self.logged))
        # and the watch is on the server's timeline again: a change after the restore arrives
        self.api.create("services", kubeobj.service("later", "apps", cluster_ip="10.96.1.5"))
        await wait_until(lambda: self.store.service("apps", "later") is not None, 5, what="a change after the restore")


def test_client_source_rebuilds_only_when_the_bytes_change_and_keeps_the_old_client_on_a_bad_file(
    tmp_path: Path,
) -> None:
    path = tmp_path / "kubeconfig"
    kubeobj.kubeconfig(path, "http://127.0.0.1:1")
    built: list[str] = []

    def factory(kubeconfig: str | None) -> tuple[Any, str]:
        text = Path(str(kubeconfig)).read_text()
        if "server:" not in text:
            raise RuntimeError(f"cannot load kubeconfig {kubeconfig!r}: no server")
        built.append(text)
        return object(), str(kubeconfig)

    source = ClientSource(str(path), factory)
    first, _ = source.load()
    assert source.current() is first and len(built) == 1  # same bytes: nothing rebuilt
    os.utime(path)  # a new mtime alone changes nothing either
    assert source.current() is first
    path.write_text("apiVersion: v1\nkind: Config\n")  # half-written / broken
    assert source.current() is first and source.current() is first  # kept (and logged once)
    kubeobj.kubeconfig(path, "http://127.0.0.1:2")
    second = source.current()
    assert second is not first and len(built) == 2 and source.reloads == 1
    assert source.current() is second
