"""ManifestSource: a YAML file of Kubernetes objects as the store's source, reloaded on change.

The polling runs on a ``task.Clock`` so reloads happen exactly when the test advances time; the
file itself is real and rewritten the way a ConfigMap mount or an editor would.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from twisted.internet import task
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial import unittest

from kubedns.configbase import ConfigError
from kubedns.k8s.manifests import ManifestSource
from kubedns.k8s.store import Store
from tests.support import kubeobj

pytestmark = pytest.mark.timeout(30)

BASE_KINDS = ["namespaces", "services", "endpointslices"]


def _objects() -> list[dict[str, Any]]:
    return [
        kubeobj.namespace("default"),
        kubeobj.namespace("apps"),
        kubeobj.service("web", "apps", cluster_ip="10.96.0.20"),
        kubeobj.service("db", "apps", headless=True),
        kubeobj.endpointslice("web-abc", "apps", "web", [{"addresses": ["10.1.0.5"]}]),
        kubeobj.pod("web-0", "apps", "10.1.0.5"),
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg", "namespace": "apps"}, "data": {}},
    ]


def _as_list(objs: list[dict[str, Any]]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": ""}, "items": objs}


def _write(path: Path, text: str, atomic: bool = False) -> None:
    """Rewrite ``path``: in place like an editor, or by rename like a ConfigMap update."""
    if atomic:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
    else:
        path.write_text(text)


class ManifestTests(unittest.TestCase):
    timeout = 20  # trial's own per-test limit

    def setUp(self) -> None:
        self.dir = Path(self.mktemp())
        self.dir.mkdir()
        self.path = self.dir / "cluster.yaml"
        self.store = Store()
        self.clock = task.Clock()
        self.logged: list[dict[str, Any]] = []
        observer: Any = self.logged.append  # an ILogObserver is any callable taking the event
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)

    def source(self, kinds: list[str] = BASE_KINDS) -> ManifestSource:
        src = ManifestSource(self.store, str(self.path), kinds, reactor=self.clock, interval=1.0)

        def stop() -> None:
            if src.running:
                src.stopService()

        self.addCleanup(stop)
        return src

    def test_list_form(self) -> None:
        """A ``kubectl get -o yaml`` List: every wanted kind lands in the store, others are ignored."""
        _write(self.path, yaml.safe_dump(_as_list(_objects())))
        src = self.source()
        src.startService()
        self.assertTrue(self.store.synced)
        web = self.store.service("apps", "web")
        assert web is not None
        self.assertEqual(web.cluster_ips, ("10.96.0.20",))
        db = self.store.service("apps", "db")
        assert db is not None
        self.assertTrue(db.headless)
        self.assertEqual([ep.addresses for ep, _ in self.store.endpoints("apps", "web")], [("10.1.0.5",)])
        self.assertEqual(sorted(n.name for n in self.store.namespaces()), ["apps", "default"])
        self.assertEqual(self.store.count("pods"), 0)  # pods not requested

    def test_multi_document_form_with_pods_and_a_list(self) -> None:
        """Documents and Lists mix; pods are loaded when asked for; a missing namespace means default."""
        objs = _objects()
        bare = kubeobj.service("plain", "x", cluster_ip="10.96.0.30")
        del bare["metadata"]["namespace"]
        docs = [objs[0], objs[1], None, _as_list(objs[2:4]), *objs[4:], bare]
        _write(self.path, "---\n" + yaml.safe_dump_all(docs))
        src = self.source(BASE_KINDS + ["pods"])
        self.assertEqual(src.load_now(), 7)
        self.assertIsNotNone(self.store.service("apps", "web"))
        self.assertIsNotNone(self.store.service("apps", "db"))
        self.assertIsNotNone(self.store.service("default", "plain"))
        self.assertTrue(self.store.pod_in_namespace("10.1.0.5", "apps"))
        self.assertEqual(self.store.synced_kinds, set(BASE_KINDS + ["pods"]))

    def test_load_and_reload_log_how_many_objects_of_each_kind(self) -> None:
        """The operator sees what the file gave (issue: the sync line said "synced ()")."""
        _write(self.path, yaml.safe_dump(_as_list(_objects())))
        src = self.source(BASE_KINDS + ["pods"])
        src.startService()
        lines = [formatEvent(e) for e in self.logged if e.get("log_namespace") == "kubedns.k8s.manifests"]
        self.assertIn(f"loaded {self.path}: 2 namespaces, 2 services, 1 endpointslices, 1 pods (6 objects)", lines)
        self.assertEqual(src.counts, {"namespaces": 2, "services": 2, "endpointslices": 1, "pods": 1})

        objs = [o for o in _objects() if o.get("kind") != "Pod"]
        _write(self.path, yaml.safe_dump(_as_list(objs)), atomic=True)
        self.clock.advance(1.0)
        lines = [formatEvent(e) for e in self.logged if e.get("log_namespace") == "kubedns.k8s.manifests"]
        self.assertIn(f"reloaded {self.path}: 2 namespaces, 2 services, 1 endpointslices, 0 pods (5 objects)", lines)

    def test_raw_api_list_json_with_kindless_items(self) -> None:
        """``kubectl get --raw /api/v1/services`` output: JSON, a ServiceList whose items have no kind."""
        items = [{k: v for k, v in o.items() if k not in ("kind", "apiVersion")} for o in _objects()[2:4]]
        raw = {"kind": "ServiceList", "apiVersion": "v1", "metadata": {"resourceVersion": "7"}, "items": items}
        _write(self.path, json.dumps(raw))
        self.assertEqual(self.source().load_now(), 2)
        self.assertIsNotNone(self.store.service("apps", "web"))
        self.assertIsNotNone(self.store.service("apps", "db"))

    def test_reload_on_change_removes_deleted_objects(self) -> None:
        _write(self.path, yaml.safe_dump(_as_list(_objects())))
        src = self.source()
        src.startService()
        gen = self.store.generation
        self.clock.advance(1.0)
        self.assertEqual(self.store.generation, gen, "an unchanged file is not reloaded")

        objs = [o for o in _objects() if o["metadata"]["name"] not in ("web", "web-abc")]
        objs.append(kubeobj.service("api", "apps", cluster_ip="10.96.0.21"))
        _write(self.path, yaml.safe_dump(_as_list(objs)), atomic=True)
        self.clock.advance(1.0)
        self.assertIsNone(self.store.service("apps", "web"))
        self.assertEqual(list(self.store.endpoints("apps", "web")), [])
        self.assertEqual(self.store.reverse("10.96.0.20"), [])
        self.assertIsNotNone(self.store.service("apps", "api"))
        self.assertEqual(src.loads, 2)

        # same bytes written again (new mtime): hashed, not re-applied
        gen = self.store.generation
        _write(self.path, yaml.safe_dump(_as_list(objs)))
        self.clock.advance(1.0)
        self.assertEqual((src.loads, self.store.generation), (2, gen))

    def test_bad_file_on_reload_keeps_previous_state(self) -> None:
        good = yaml.safe_dump(_as_list(_objects()))
        _write(self.path, good)
        src = self.source()
        src.startService()
        gen = self.store.generation

        _write(self.path, "items: [unclosed\n  - : :\n")
        self.clock.advance(1.0)
        self.assertIsNotNone(self.store.service("apps", "web"))
        self.assertEqual(self.store.generation, gen)
        self.assertEqual(src.errors, 1)
        self.assertIn(str(self.path), src.last_error)
        self.assertIn("YAML", src.last_error)
        errors = [e for e in self.logged if e.get("log_level") is not None and e["log_level"].name == "error"]
        self.assertTrue(any(str(self.path) in str(e.get("error")) for e in errors), errors)

        self.clock.advance(1.0)
        self.assertEqual(src.errors, 1, "the same bad file is reported once")

        os.unlink(self.path)
        self.clock.advance(1.0)
        self.assertIsNotNone(self.store.service("apps", "web"), "a missing file keeps the state too")
        self.assertEqual(src.errors, 2)
        self.assertIn("FileNotFoundError", src.last_error)

        objs = [o for o in _objects() if o["metadata"]["name"] != "db"]
        _write(self.path, yaml.safe_dump(_as_list(objs)))
        self.clock.advance(1.0)
        self.assertIsNone(self.store.service("apps", "db"))
        self.assertEqual(src.last_error, "")

    def test_bad_file_at_start_raises_naming_the_file(self) -> None:
        src = self.source()
        with self.assertRaises(ConfigError) as cm:
            src.load_now()  # missing
        self.assertIn(str(self.path), str(cm.exception))
        self.assertIn("No such file", str(cm.exception))

        _write(self.path, "kind: List\nitems:\n  - kind: Service\n    metadata: {name: [x\n")
        with self.assertRaises(ConfigError) as cm:
            src.startService()
        self.assertIn(str(self.path), str(cm.exception))
        self.assertIn("valid YAML", str(cm.exception))
        self.assertFalse(self.store.synced)
        self.assertEqual(self.store.generation, 0)

    def test_malformed_object_names_its_position(self) -> None:
        nameless = kubeobj.service("x", "apps")
        del nameless["metadata"]["name"]
        _write(self.path, yaml.safe_dump(_as_list([kubeobj.namespace("apps"), nameless])))
        with self.assertRaises(ConfigError) as cm:
            self.source().load_now()
        self.assertEqual(cm.exception.key, "items[1].metadata.name")
        self.assertIn(str(self.path), str(cm.exception))

        _write(self.path, yaml.safe_dump_all([kubeobj.namespace("apps"), ["not", "an", "object"]]))
        with self.assertRaises(ConfigError) as cm:
            self.source().load_now()
        self.assertEqual(cm.exception.key, "document[1]")

    def test_stop_service_stops_polling(self) -> None:
        _write(self.path, yaml.safe_dump(_as_list(_objects())))
        src = self.source()
        src.startService()
        src.stopService()
        _write(self.path, yaml.safe_dump(_as_list([])), atomic=True)
        self.clock.advance(5.0)
        self.assertIsNotNone(self.store.service("apps", "web"))
        self.assertEqual(self.clock.getDelayedCalls(), [])
