"""What a cluster source says keeps it from syncing (``ClusterSource.problem``), as /ready shows it.

The Informer and the ManifestSource answer the same question the same way, so /ready and the
reload warning ask it without knowing which kind of source they hold.  Real parts: the server
built from a config, the fake API server over HTTP, a manifests file on disk.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from twisted.internet import task
from twisted.trial import unittest

from kubedns.config import parse
from kubedns.k8s.manifests import ManifestSource
from kubedns.k8s.source import ClusterSource
from kubedns.k8s.store import Store
from kubedns.service import build
from tests import fakeapi
from tests.conftest import free_port, wait_until
from tests.support import kubeobj

pytestmark = pytest.mark.timeout(60)

_ENV = ("http_proxy", "https_proxy", "all_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY",
        "KUBERNETES_SERVICE_HOST", "KUBECONFIG")


class ReadyNamesTheProblem(unittest.TestCase):
    """A server whose cluster cannot sync says why on /ready (CoreDNS's plugin/ready body)."""

    timeout = 30

    def setUp(self) -> None:
        for var in _ENV:
            if var in os.environ:
                self.addCleanup(os.environ.__setitem__, var, os.environ.pop(var))

    def _start(self, kubernetes: str) -> Any:
        text = f"""
servers:
  - zones: ["."]
    listen: "127.0.0.1:{free_port()}"
    kubernetes: {kubernetes}
    ready: "127.0.0.1:{free_port()}"
"""
        kd = build(parse(text, str(Path(self.mktemp()))))
        kd.startService()
        self.addCleanup(kd.stopService)
        return kd

    async def test_a_kubeconfig_that_cannot_be_read(self) -> None:
        missing = Path(self.mktemp()) / "no-such-kubeconfig"
        kd = self._start(f"{{kubeconfig: {missing}}}")
        (src,) = kd.sources
        self.assertIsInstance(src, ClusterSource)
        await wait_until(lambda: src.problem(), timeout=10, what="the kubeconfig error")
        self.assertEqual(src.problem(), src.config_error)
        status, body = kd.ops.readiness.status()
        self.assertEqual(status, 503)
        self.assertTrue(body.startswith("not ready: kubernetes: waiting for "), body)
        self.assertIn(f"(last error: {src.problem()[:40]}", body)

    async def test_an_api_that_refuses_the_lists(self) -> None:
        api = fakeapi.FakeKubeAPI().start()
        self.addCleanup(api.stop)
        api.load([kubeobj.namespace("default")])
        api.fail_status = 403
        api.fail_requests = True
        kd = self._start(f"{{kubeconfig: {kubeobj.kubeconfig(Path(self.mktemp()), api.url)}}}")
        (src,) = kd.sources
        await wait_until(lambda: src.problem(), timeout=10, what="the API's refusal")
        self.assertEqual(src.config_error, "")  # the client loaded: the error is a watch's
        self.assertIn("403", src.problem())
        status, body = kd.ops.readiness.status()
        self.assertEqual(status, 503)
        self.assertIn("(last error: ", body)
        self.assertIn("403", body.split("(last error: ", 1)[1])
        api.fail_requests = False  # and once it syncs, nothing is wrong
        await wait_until(lambda: kd.synced, timeout=15, what="sync after the API recovers")
        self.assertEqual(src.problem(), "")
        self.assertEqual(kd.ops.readiness.status(), (200, "OK"))


def test_a_manifests_file_that_breaks_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": [kubeobj.namespace("default")]}))
    src = ManifestSource(Store(required=("namespaces",)), str(path), kinds=["namespaces"], reactor=task.Clock())
    src.load_now()
    assert src.problem() == ""
    path.write_text("items: [unclosed\n")
    assert not src.check()
    assert str(path) in src.problem() and src.problem() == src.last_error
