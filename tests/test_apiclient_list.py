"""``list_function``: the official client's list and watch requests without its API modules.

:func:`kubedns.k8s.apiclient.list_function` sends through the client's ``ApiClient`` the request
the generated ``CoreV1Api``/``DiscoveryV1Api`` methods send, without importing those modules
(on pydantic-based clients they build ~60 models: ~0.6 s of CPU at start-up).  These tests hold
it to that: against :class:`tests.fakeapi.FakeKubeAPI` over real HTTP, the same path and query
as the generated method for every resource and parameter kubedns uses, the same body, the
client's ``ApiException`` with the server's status for an error, and a process that lists every
kind without ever importing the generated API modules.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from kubedns.k8s.apiclient import list_function
from tests.fakeapi import FakeKubeAPI
from tests.support.kubeobj import endpointslice, kubeconfig, namespace, pod, service

pytestmark = pytest.mark.timeout(30)

REPO = Path(__file__).resolve().parent.parent
GENERATED = {
    "namespaces": ("CoreV1Api", "list_namespace"),
    "services": ("CoreV1Api", "list_service_for_all_namespaces"),
    "pods": ("CoreV1Api", "list_pod_for_all_namespaces"),
    "endpointslices": ("DiscoveryV1Api", "list_endpoint_slice_for_all_namespaces"),
}


@pytest.fixture
def fake() -> Iterator[FakeKubeAPI]:
    with FakeKubeAPI() as api:
        api.load([
            namespace("prod"),
            service("web", "prod", cluster_ip="10.96.0.10"),
            service("api", "prod", cluster_ip="10.96.0.11"),
            endpointslice("web-x1", "prod", "web", endpoints=[{"addresses": ["10.1.0.7"]}], ports=[80]),
            pod("web-0", "prod", "10.1.0.7"),
        ])
        yield api


@pytest.fixture
def api_client(fake: FakeKubeAPI, tmp_path: Path) -> Iterator[Any]:
    api = config.new_client_from_config(config_file=kubeconfig(tmp_path / "kubeconfig", fake.url))
    yield api
    api.close()


def _generated(api_client: Any, resource: str) -> Any:
    cls, method = GENERATED[resource]
    return getattr(getattr(client, cls)(api_client), method)


@pytest.mark.parametrize("resource", sorted(GENERATED))
def test_same_request_and_body_as_the_generated_method(fake: FakeKubeAPI, api_client: Any, resource: str) -> None:
    ours = list_function(api_client, resource)
    theirs = _generated(api_client, resource)
    calls: list[dict[str, Any]] = [
        {"limit": 1},
        {"limit": 50, "label_selector": "app=web"},
        {"watch": True, "resource_version": str(fake.resource_version), "allow_watch_bookmarks": True,
         "timeout_seconds": 1},
    ]
    first = json.loads(theirs(_preload_content=False, _request_timeout=(2, 5), limit=1).data)
    token = first["metadata"].get("continue")
    if token:
        calls.append({"limit": 1, "_continue": token})
    for kwargs in calls:
        fake.request_log.clear()
        bodies = []
        for fn in (theirs, ours):
            resp = fn(_preload_content=False, _request_timeout=(2, 5), **kwargs)
            bodies.append(resp.read())
            resp.release_conn()
        mine, generated = fake.request_log[-1], fake.request_log[-2]
        assert (mine.verb, mine.resource, mine.path, dict(mine.params)) == (
            generated.verb, generated.resource, generated.path, dict(generated.params)), kwargs
        if not kwargs.get("watch"):  # the same objects (a continue token is new each time)
            a, b = (json.loads(x) for x in bodies)
            assert a["items"] == b["items"] and a["metadata"]["resourceVersion"] == b["metadata"]["resourceVersion"]


def test_error_status_raises_the_clients_api_exception(fake: FakeKubeAPI, api_client: Any) -> None:
    fn = list_function(api_client, "services")
    fake.fail_next("list", "services", 403)
    with pytest.raises(ApiException) as e:
        fn(_preload_content=False, _request_timeout=(2, 5), limit=10)
    assert e.value.status == 403
    assert "cannot list" in str(e.value)  # the server's Status message, as the client reports it
    fake.fail_next("list", "pods", 410)
    with pytest.raises(ApiException) as e:
        list_function(api_client, "pods")(_preload_content=False, _request_timeout=(2, 5), limit=10)
    assert e.value.status == 410


def test_unknown_resource_or_parameter_is_refused(api_client: Any) -> None:
    with pytest.raises(ValueError, match="unknown resource 'configmaps'"):
        list_function(api_client, "configmaps")
    with pytest.raises(TypeError, match="unknown list parameters"):
        list_function(api_client, "pods")(_preload_content=False, limitt=5)


def test_listing_every_kind_imports_no_generated_api_module(fake: FakeKubeAPI, tmp_path: Path) -> None:
    """The start-up saving itself: a fresh process lists all four kinds, and the ~60 pydantic
    models of the generated API modules are never built."""
    kc = kubeconfig(tmp_path / "kubeconfig", fake.url)
    script = (
        "import json, sys\n"
        "from kubedns.k8s.apiclient import list_function, load_api_client\n"
        f"api, _ = load_api_client({kc!r})\n"
        "counts = {}\n"
        "for r in ('namespaces', 'services', 'endpointslices', 'pods'):\n"
        "    resp = list_function(api, r)(_preload_content=False, _request_timeout=(2, 5), limit=100)\n"
        "    counts[r] = len(json.loads(resp.read())['items'])\n"
        "heavy = sorted(m for m in sys.modules if m.startswith(('kubernetes.client.api.', 'kubernetes.client.models.')))\n"
        "print(json.dumps({'counts': counts, 'heavy': heavy}))\n"
    )
    res = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=25,
                         env={"PATH": "/usr/bin:/bin", "NO_PROXY": "127.0.0.1", "HOME": str(tmp_path)})
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["counts"] == {"namespaces": 1, "services": 2, "endpointslices": 1, "pods": 1}
    assert out["heavy"] == []


def test_listing_skips_the_packages_init_but_kubernetes_still_works(fake: FakeKubeAPI, tmp_path: Path) -> None:
    """``lean_kubernetes``: a fresh process that loads the client and lists every kind never
    imports what ``kubernetes/__init__.py`` would (the dynamic client, streams, the watch helper,
    leader election, the informer), and code that then uses the package as usual still finds
    every subpackage and ``__version__``."""
    kc = kubeconfig(tmp_path / "kubeconfig", fake.url)
    script = (
        "import json, sys\n"
        "from kubedns.k8s.apiclient import UNUSED_SUBPACKAGES, list_function, load_api_client\n"
        f"api, _ = load_api_client({kc!r})\n"
        "counts = {}\n"
        "for r in ('namespaces', 'services', 'endpointslices', 'pods'):\n"
        "    resp = list_function(api, r)(_preload_content=False, _request_timeout=(2, 5), limit=100)\n"
        "    counts[r] = len(json.loads(resp.read())['items'])\n"
        "unused = sorted(p for p in UNUSED_SUBPACKAGES if 'kubernetes.' + p in sys.modules)\n"
        "import importlib.metadata, kubernetes\n"
        "later = [kubernetes.watch.Watch.__name__, kubernetes.dynamic.DynamicClient.__name__,\n"
        "         kubernetes.__version__ == importlib.metadata.version('kubernetes')]\n"
        "try:\n"
        "    kubernetes.no_such_module\n"
        "except AttributeError as e:\n"
        "    later.append(str(e))\n"
        "print(json.dumps({'counts': counts, 'unused': unused, 'later': later}))\n"
    )
    res = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=25,
                         env={"PATH": "/usr/bin:/bin", "NO_PROXY": "127.0.0.1", "HOME": str(tmp_path)})
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["counts"] == {"namespaces": 1, "services": 2, "endpointslices": 1, "pods": 1}
    assert out["unused"] == []
    assert out["later"] == ["Watch", "DynamicClient", True, "module 'kubernetes' has no attribute 'no_such_module'"]
