"""Tests for the fake kube-apiserver in ``tests/fakeapi.py``.

Everything goes through the official ``kubernetes`` client over real HTTP on
127.0.0.1, configured from the kubeconfig that :func:`tests.support.kubeobj.kubeconfig`
writes, so these tests also pin down how that client behaves on the wire
(watch streams, 410, dropped connections, read timeouts, retries).
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import urllib3
from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException
from kubernetes.watch.watch import iter_resp_lines

from tests.fakeapi import FakeKubeAPI
from tests.support.kubeobj import endpointslice, kubeconfig, namespace, pod, service

PROXY_VARS = ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY")


@pytest.fixture(autouse=True)
def _no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # The kubernetes client (37.x) Configuration picks up *_proxy from the
    # environment; keep every request on 127.0.0.1.
    for var in PROXY_VARS:
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def fake() -> Iterator[FakeKubeAPI]:
    with FakeKubeAPI() as api:
        yield api
    assert api.errors == []


@pytest.fixture
def api_client(fake: FakeKubeAPI, tmp_path: Path) -> Iterator[client.ApiClient]:
    path = kubeconfig(tmp_path / "kubeconfig", fake.url)
    api = config.new_client_from_config(config_file=path)
    assert api.configuration.host == fake.url
    assert api.configuration.proxy is None
    yield api
    api.close()


@pytest.fixture
def core(api_client: client.ApiClient) -> client.CoreV1Api:
    return client.CoreV1Api(api_client)


def _raw(resp: Any) -> dict[str, Any]:
    return json.loads(resp.data)


def _watch_services(core: client.CoreV1Api, **kwargs: Any) -> urllib3.HTTPResponse:
    kwargs.setdefault("_request_timeout", (1, 2))
    return core.list_service_for_all_namespaces(watch=True, _preload_content=False, **kwargs)


def _events(resp: urllib3.HTTPResponse) -> Iterator[dict[str, Any]]:
    for line in iter_resp_lines(resp):
        yield json.loads(line)


def _names(items: list[dict[str, Any]]) -> list[str]:
    return [f"{i['metadata'].get('namespace', '')}/{i['metadata']['name']}" for i in items]


# --------------------------------------------------------------------------
# LIST


@pytest.mark.timeout(30)
def test_kubeconfig_is_yaml_loadable_by_load_kube_config(fake: FakeKubeAPI, tmp_path: Path) -> None:
    path = kubeconfig(tmp_path / "kc.yaml", fake.url, namespace="kube-system")
    conf = client.Configuration()
    config.load_kube_config(config_file=path, client_configuration=conf)
    assert conf.host == fake.url
    assert fake.url.startswith("http://127.0.0.1:")
    assert Path(path).read_text().startswith("apiVersion: v1\n")


@pytest.mark.timeout(30)
def test_list_services_raw_shape(fake: FakeKubeAPI, core: client.CoreV1Api) -> None:
    fake.load([service("web", "prod", cluster_ip="10.96.0.10"), service("api", "default", cluster_ip="10.96.0.11")])
    body = _raw(core.list_service_for_all_namespaces(_preload_content=False))
    assert body["kind"] == "ServiceList"
    assert body["apiVersion"] == "v1"
    assert body["metadata"] == {"resourceVersion": str(fake.resource_version)}
    assert _names(body["items"]) == ["default/api", "prod/web"]  # etcd key order
    web = body["items"][1]
    assert "kind" not in web and "apiVersion" not in web  # like the real apiserver's list items
    assert web["metadata"]["uid"] and web["metadata"]["resourceVersion"].isdigit()
    assert web["spec"]["clusterIP"] == "10.96.0.10"
    assert web["spec"]["clusterIPs"] == ["10.96.0.10"]
    assert web["spec"]["ports"] == [{"name": "http", "protocol": "TCP", "port": 80, "targetPort": 80}]


@pytest.mark.timeout(30)
def test_list_deserializes_into_official_models(fake: FakeKubeAPI, api_client: client.ApiClient) -> None:
    fake.load(
        [
            namespace("prod"),
            service("web", "prod", cluster_ips=["10.96.0.10", "fd00::10"], ports=[{"name": "dns", "port": 53, "protocol": "UDP"}]),
            service("db", "prod", headless=True, publish_not_ready=True),
            service("ext", "prod", external_name="example.com"),
            endpointslice(
                "db-x1",
                "prod",
                "db",
                endpoints=[{"addresses": ["10.1.0.7"], "hostname": "db-0", "ready": False, "targetRef": "db-0"}],
                ports=[5432],
            ),
            pod("db-0", "prod", "10.1.0.7", ips=["10.1.0.7", "fd00::7"], deletion_timestamp="now"),
        ]
    )
    core = client.CoreV1Api(api_client)
    services = {s.metadata.name: s for s in core.list_service_for_all_namespaces().items}
    assert services["web"].spec.cluster_ips == ["10.96.0.10", "fd00::10"]
    assert services["web"].spec.ip_families == ["IPv4", "IPv6"]
    assert services["web"].spec.ports[0].protocol == "UDP"
    assert services["db"].spec.cluster_ip == "None"
    assert services["db"].spec.publish_not_ready_addresses is True
    assert services["ext"].spec.type == "ExternalName"
    assert services["ext"].spec.external_name == "example.com"
    assert services["ext"].spec.cluster_ip is None

    slices = client.DiscoveryV1Api(api_client).list_endpoint_slice_for_all_namespaces().items
    assert len(slices) == 1
    ep = slices[0].endpoints[0]
    assert (ep.addresses, ep.hostname, ep.conditions.ready, ep.target_ref.name) == (["10.1.0.7"], "db-0", False, "db-0")
    assert slices[0].ports[0].port == 5432 and slices[0].ports[0].name == ""

    (db0,) = core.list_pod_for_all_namespaces().items
    assert db0.status.pod_ip == "10.1.0.7"
    assert [p.ip for p in db0.status.pod_ips] == ["10.1.0.7", "fd00::7"]
    assert db0.metadata.deletion_timestamp is not None

    (prod,) = core.list_namespace().items
    assert prod.metadata.labels == {"kubernetes.io/metadata.name": "prod"}


@pytest.mark.timeout(30)
def test_list_endpointslices_raw_shape(fake: FakeKubeAPI, api_client: client.ApiClient) -> None:
    fake.create(
        "endpointslices",
        endpointslice("web-abc", "prod", "web", endpoints=[{"addresses": ["10.1.0.5"], "hostname": "web-0"}]),
    )
    api = client.DiscoveryV1Api(api_client)
    body = _raw(api.list_endpoint_slice_for_all_namespaces(_preload_content=False))
    assert (body["kind"], body["apiVersion"]) == ("EndpointSliceList", "discovery.k8s.io/v1")
    (item,) = body["items"]
    assert item["addressType"] == "IPv4"
    assert item["metadata"]["labels"]["kubernetes.io/service-name"] == "web"
    assert item["endpoints"] == [
        {"addresses": ["10.1.0.5"], "conditions": {"ready": True, "serving": True, "terminating": False}, "hostname": "web-0"}
    ]
    assert item["ports"] == [{"name": "http", "protocol": "TCP", "port": 80}]
    assert fake.requests[("list", "endpointslices")] == 1


@pytest.mark.timeout(30)
def test_namespaced_paths_get_and_404(fake: FakeKubeAPI, core: client.CoreV1Api) -> None:
    fake.load([namespace("a"), service("s", "a"), service("s", "b"), pod("p", "a", "10.1.0.1")])
    assert [s.metadata.namespace for s in core.list_namespaced_service("b").items] == ["b"]
    assert [p.metadata.name for p in core.list_namespaced_pod("a").items] == ["p"]
    assert core.read_namespaced_service("s", "a").metadata.namespace == "a"
    assert core.read_namespace("a").status.phase == "Active"
    with pytest.raises(ApiException) as info:
        core.read_namespaced_service("missing", "a")
    assert info.value.status == 404
    assert json.loads(info.value.body)["reason"] == "NotFound"
    assert fake.requests[("get", "services")] == 2


@pytest.mark.timeout(30)
def test_label_and_field_selectors(fake: FakeKubeAPI, core: client.CoreV1Api) -> None:
    fake.load(
        [
            service("a", "x", labels={"app": "web", "tier": "fe"}),
            service("b", "x", labels={"app": "db"}),
            service("c", "y"),
        ]
    )

    def names(**kw: Any) -> list[str]:
        return _names(_raw(core.list_service_for_all_namespaces(_preload_content=False, **kw))["items"])

    assert names(label_selector="app=web") == ["x/a"]
    assert names(label_selector="app") == ["x/a", "x/b"]
    assert names(label_selector="!app") == ["y/c"]
    assert names(label_selector="app in (web,db),tier!=fe") == ["x/b"]
    assert names(field_selector="metadata.namespace=y") == ["y/c"]
    assert names(field_selector="metadata.name!=a,metadata.namespace==x") == ["x/b"]


@pytest.mark.timeout(30)
def test_discovery_endpoints(api_client: client.ApiClient) -> None:
    assert client.VersionApi(api_client).get_code().major == "1"
    assert client.CoreApi(api_client).get_api_versions().versions == ["v1"]
    groups = client.ApisApi(api_client).get_api_versions().groups
    assert [g.name for g in groups] == ["discovery.k8s.io"]


@pytest.mark.timeout(30)
def test_pagination_is_a_consistent_snapshot(fake: FakeKubeAPI, core: client.CoreV1Api) -> None:
    fake.load([service(f"s{i}", "ns") for i in range(5)])
    list_rv = str(fake.resource_version)
    seen: list[str] = []
    token: str | None = None
    pages = 0
    while True:
        kw: dict[str, Any] = {"limit": 2}
        if token:
            kw["_continue"] = token
        body = _raw(core.list_service_for_all_namespaces(_preload_content=False, **kw))
        pages += 1
        assert body["metadata"]["resourceVersion"] == list_rv
        seen += _names(body["items"])
        token = body["metadata"].get("continue")
        if not token:
            assert "remainingItemCount" not in body["metadata"]
            break
        assert body["metadata"]["remainingItemCount"] == 5 - len(seen)
        # changes between pages are not visible in the continued list
        fake.create("services", service(f"new{pages}", "ns"))
        if pages == 1:
            fake.delete("services", "ns", "s4")
    assert pages == 3
    assert seen == [f"ns/s{i}" for i in range(5)]
    # deserialized pagination works too
    page = core.list_service_for_all_namespaces(limit=3)
    assert len(page.items) == 3 and page.metadata.remaining_item_count == 3
    assert len(core.list_service_for_all_namespaces().items) == 6


@pytest.mark.timeout(30)
def test_expired_continue_token_is_410(fake: FakeKubeAPI, core: client.CoreV1Api) -> None:
    fake.load([service(f"s{i}", "ns") for i in range(3)])
    token = _raw(core.list_service_for_all_namespaces(_preload_content=False, limit=1))["metadata"]["continue"]
    fake.create("services", service("later", "ns"))
    fake.compact()
    with pytest.raises(ApiException) as info:
        core.list_service_for_all_namespaces(_preload_content=False, limit=1, _continue=token)
    assert info.value.status == 410
    assert json.loads(info.value.body)["reason"] == "Expired"


# --------------------------------------------------------------------------
# Store


@pytest.mark.timeout(30)
def test_single_global_resource_version_and_store_api(fake: FakeKubeAPI) -> None:
    rv0 = fake.resource_version
    ns = fake.create("namespaces", namespace("a"))
    svc = fake.create("services", service("s", "a"))
    sl = fake.create("endpointslices", endpointslice("s-1", "a", "s"))
    assert [int(o["metadata"]["resourceVersion"]) for o in (ns, svc, sl)] == [rv0 + 1, rv0 + 2, rv0 + 3]
    assert "namespace" not in ns["metadata"] and svc["metadata"]["uid"]
    with pytest.raises(KeyError):
        fake.create("services", service("s", "a"))

    changed = service("s", "a", cluster_ip="10.96.9.9")
    updated = fake.update("services", changed)
    assert updated["metadata"]["uid"] == svc["metadata"]["uid"]
    assert updated["metadata"]["resourceVersion"] == str(rv0 + 4)
    assert fake.get("services", "a", "s")["spec"]["clusterIP"] == "10.96.9.9"

    gone = fake.delete("services", "a", "s")
    assert gone["metadata"]["resourceVersion"] == str(rv0 + 5) == str(fake.resource_version)
    assert fake.get("services", "a", "s") is None
    for op in (lambda: fake.delete("services", "a", "s"), lambda: fake.update("services", changed)):
        with pytest.raises(KeyError):
            op()
    with pytest.raises(ValueError):
        fake.create("ingresses", {"metadata": {"name": "x"}})

    fake.load([pod("p2", "b", "10.1.0.2"), pod("p1", "b", "10.1.0.1"), namespace("b")])
    assert [p["metadata"]["name"] for p in fake.objects("pods")] == ["p1", "p2"]
    assert [n["metadata"]["name"] for n in fake.objects("namespaces")] == ["a", "b"]


# --------------------------------------------------------------------------
# WATCH


@pytest.mark.timeout(30)
def test_watch_streams_added_modified_deleted_and_bookmark(fake: FakeKubeAPI, core: client.CoreV1Api) -> None:
    rv = _raw(core.list_service_for_all_namespaces(_preload_content=False))["metadata"]["resourceVersion"]
    with _watch_services(core, resource_version=rv, allow_watch_bookmarks=True) as resp:
        assert resp.status == 200
        assert resp.headers["Transfer-Encoding"] == "chunked"
        assert fake.watcher_count("services") == 1
        fake.create("services", service("web", "default"))
        fake.update("services", service("web", "default", cluster_ip="10.96.1.1"))
        fake.create("pods", pod("unrelated", "default", "10.1.0.1"))
        fake.delete("services", "default", "web")
        assert fake.send_bookmark() == 1
        events = _events(resp)
        got = [next(events) for _ in range(4)]
    assert [e["type"] for e in got] == ["ADDED", "MODIFIED", "DELETED", "BOOKMARK"]
    rvs = [int(e["object"]["metadata"]["resourceVersion"]) for e in got]
    assert rvs == [int(rv) + 1, int(rv) + 2, int(rv) + 4, int(rv) + 4]
    assert got[0]["object"]["kind"] == "Service" and got[0]["object"]["apiVersion"] == "v1"
    assert got[1]["object"]["spec"]["clusterIP"] == "10.96.1.1"
    assert got[2]["object"]["spec"]["clusterIP"] == "10.96.1.1"  # last state
    assert got[3]["object"] == {"kind": "Service", "apiVersion": "v1", "metadata": {"resourceVersion": str(rvs[3])}}
    assert fake.requests[("watch", "services")] == 1
    params = fake.request_log[-1].params
    assert params["watch"] == "true" and params["allowWatchBookmarks"] == "true"


@pytest.mark.timeout(30)
def test_watch_replays_history_after_resource_version(fake: FakeKubeAPI, core: client.CoreV1Api) -> None:
    rv0 = str(fake.resource_version)
    fake.create("services", service("a", "ns"))
    rv1 = str(fake.resource_version)
    fake.update("services", service("a", "ns", cluster_ip="10.96.2.2"))
    fake.create("pods", pod("p", "ns", "10.1.0.1"))
    fake.create("services", service("b", "ns"))
    with _watch_services(core, resource_version=rv0, timeout_seconds=1) as resp:
        got = [(e["type"], e["object"]["metadata"]["name"]) for e in _events(resp)]
    assert got == [("ADDED", "a"), ("MODIFIED", "a"), ("ADDED", "b")]
    with _watch_services(core, resource_version=rv1, timeout_seconds=1) as resp:
        got = [(e["type"], e["object"]["metadata"]["name"]) for e in _events(resp)]
    assert got == [("MODIFIED", "a"), ("ADDED", "b")]


@pytest.mark.timeout(30)
def test_watch_without_resource_version_starts_with_current_state(fake: FakeKubeAPI, core: client.CoreV1Api) -> None:
    fake.load([service("a", "ns"), service("b", "ns")])
    with _watch_services(core, timeout_seconds=1) as resp:
        got = [(e["type"], e["object"]["metadata"]["name"]) for e in _events(resp)]
    assert got == [("ADDED", "a"), ("ADDED", "b")]


@pytest.mark.timeout(30)
def test_watch_with_selector_sees_objects_leave_and_enter(fake: FakeKubeAPI, core: client.CoreV1Api) -> None:
    rv = str(fake.resource_version)
    fake.create("services", service("a", "ns", labels={"app": "web"}))
    fake.update("services", service("a", "ns", labels={"app": "other"}))
    fake.update("services", service("a", "ns", labels={"app": "web"}))
    with _watch_services(core, resource_version=rv, label_selector="app=web", timeout_seconds=1) as resp:
        got = [e["type"] for e in _events(resp)]
    assert got == ["ADDED", "DELETED", "ADDED"]


@pytest.mark.timeout(30)
def test_periodic_bookmarks_only_when_allowed() -> None:
    with FakeKubeAPI(bookmark_interval=0.2) as api:
        conf = client.Configuration(host=api.url)
        with client.ApiClient(conf) as api_client:
            v1 = client.CoreV1Api(api_client)
            rv = str(api.resource_version)
            with v1.list_service_for_all_namespaces(
                watch=True, resource_version=rv, allow_watch_bookmarks=True, _preload_content=False, _request_timeout=(1, 2)
            ) as resp:
                first = next(_events(resp))
            assert first["type"] == "BOOKMARK" and first["object"]["metadata"]["resourceVersion"] == rv
            with v1.list_service_for_all_namespaces(
                watch=True, resource_version=rv, timeout_seconds=1, _preload_content=False, _request_timeout=(1, 2)
            ) as resp:
                assert list(_events(resp)) == []
        assert api.errors == []


@pytest.mark.timeout(30)
def test_watch_from_compacted_resource_version_gets_410_error_event(fake: FakeKubeAPI, core: client.CoreV1Api) -> None:
    old = fake.resource_version
    fake.create("services", service("a", "ns"))
    compacted = fake.compact()
    with _watch_services(core, resource_version=str(old)) as resp:
        assert resp.status == 200  # the apiserver reports it inside the stream
        got = list(_events(resp))  # ... and then ends the stream
    assert got == [
        {
            "type": "ERROR",
            "object": {
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Failure",
                "message": f"too old resource version: {old} ({compacted})",
                "reason": "Expired",
                "code": 410,
            },
        }
    ]
    # the compaction revision itself is still watchable
    with _watch_services(core, resource_version=str(compacted), timeout_seconds=1) as resp:
        assert list(_events(resp)) == []


@pytest.mark.timeout(30)
def test_official_watch_helper_retries_410_once_then_raises(fake: FakeKubeAPI, core: client.CoreV1Api) -> None:
    old = str(fake.resource_version)
    fake.create("services", service("a", "ns"))
    fake.compact()
    with pytest.raises(ApiException) as info:
        list(watch.Watch().stream(core.list_service_for_all_namespaces, resource_version=old, _request_timeout=(1, 2)))
    assert info.value.status == 410
    assert fake.requests[("watch", "services")] == 2  # one silent retry with the same rv
    fake.reset_requests()
    with pytest.raises(ApiException):
        list(watch.Watch().stream(core.list_service_for_all_namespaces, resource_version=old, timeout_seconds=5))
    assert fake.requests[("watch", "services")] == 1  # timeout_seconds disables the retry


@pytest.mark.timeout(30)
def test_expired_watch_as_http_410(fake: FakeKubeAPI, core: client.CoreV1Api) -> None:
    old = str(fake.resource_version)
    fake.create("services", service("a", "ns"))
    fake.compact()
    fake.expired_watch_as_http_status = True
    with pytest.raises(ApiException) as info:
        _watch_services(core, resource_version=old)
    assert info.value.status == 410
    assert json.loads(info.value.body)["reason"] == "Expired"


@pytest.mark.timeout(30)
@pytest.mark.parametrize(("reset", "cause"), [(False, "ended prematurely"), (True, "reset")])
def test_drop_watches_breaks_the_stream(fake: FakeKubeAPI, core: client.CoreV1Api, reset: bool, cause: str) -> None:
    rv = str(fake.resource_version)
    fake.create("services", service("a", "ns"))
    with _watch_services(core, resource_version=rv) as resp:
        events = _events(resp)
        assert next(events)["type"] == "ADDED"  # mid-stream
        assert fake.drop_watches(reset=reset) == 1
        with pytest.raises(urllib3.exceptions.ProtocolError, match=cause):
            next(events)
    assert fake.watcher_count() == 0


@pytest.mark.timeout(30)
def test_timeout_seconds_ends_the_stream_cleanly(fake: FakeKubeAPI, core: client.CoreV1Api) -> None:
    start = time.monotonic()
    with _watch_services(core, resource_version=str(fake.resource_version), timeout_seconds=1) as resp:
        assert list(_events(resp)) == []
    assert 0.9 <= time.monotonic() - start < 10  # ends at the server's timeout, not never
    deadline = time.monotonic() + 5  # the fake's handler thread deregisters just after the end
    while fake.watcher_count() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert fake.watcher_count() == 0


@pytest.mark.timeout(30)
def test_hung_watch_trips_the_client_read_timeout(fake: FakeKubeAPI, core: client.CoreV1Api) -> None:
    fake.hang_watches = True
    start = time.monotonic()
    with _watch_services(core, resource_version=str(fake.resource_version), _request_timeout=(1, 0.5)) as resp:
        assert resp.status == 200  # headers arrive, then nothing
        fake.create("services", service("a", "ns"))
        with pytest.raises(urllib3.exceptions.ReadTimeoutError):
            next(_events(resp))
    assert time.monotonic() - start < 10  # the read timeout fired (without it: the 30 s test timeout)
    # the fake notices that the client hung up
    deadline = time.monotonic() + 5
    while fake.watcher_count() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert fake.watcher_count() == 0


# --------------------------------------------------------------------------
# Fault injection and lifecycle


@pytest.mark.timeout(30)
def test_withheld_lists_block_until_released(fake: FakeKubeAPI, core: client.CoreV1Api) -> None:
    fake.create("services", service("a", "ns"))
    fake.withhold_lists = True
    result: list[int] = []
    t = threading.Thread(
        target=lambda: result.append(
            len(core.list_service_for_all_namespaces(_request_timeout=(1, 5)).items)
        )
    )
    t.start()
    assert fake.wait_for_requests("list", "services", 1, timeout=2)
    t.join(0.3)
    assert t.is_alive() and result == []
    fake.withhold_lists = False
    t.join(2)
    assert result == [1]


@pytest.mark.timeout(30)
def test_withheld_lists_can_answer_503(fake: FakeKubeAPI, core: client.CoreV1Api) -> None:
    fake.withhold_lists = True
    fake.withhold_lists_status = 503
    with pytest.raises(ApiException) as info:
        core.list_service_for_all_namespaces(_preload_content=False)
    assert info.value.status == 503
    # watches are not withheld
    with _watch_services(core, resource_version=str(fake.resource_version), timeout_seconds=1) as resp:
        assert resp.status == 200


@pytest.mark.timeout(30)
def test_stop_releases_blocked_lists_and_closes_the_socket() -> None:
    api = FakeKubeAPI().start()
    port = api.port
    api.withhold_lists = True
    v1 = client.CoreV1Api(api.api_client())
    errors: list[BaseException] = []

    def blocked_list() -> None:
        try:
            v1.list_service_for_all_namespaces(_request_timeout=(1, 5))
        except Exception as e:
            errors.append(e)

    t = threading.Thread(target=blocked_list)
    t.start()
    assert api.wait_for_requests("list", "services", 1, timeout=2)
    start = time.monotonic()
    api.stop()
    assert time.monotonic() - start < 3  # stop() does not wait for the blocked request
    t.join(2)
    assert not t.is_alive()
    # urllib3 retried the GET after the connection closed and found nobody listening
    assert len(errors) == 1 and isinstance(errors[0], urllib3.exceptions.MaxRetryError)
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port), timeout=1):
        pass
    assert api.errors == []


@pytest.mark.timeout(30)
def test_fail_requests(fake: FakeKubeAPI, core: client.CoreV1Api) -> None:
    fake.fail_requests = True
    with pytest.raises(ApiException) as info:
        core.list_service_for_all_namespaces(_preload_content=False)
    assert info.value.status == 500
    with pytest.raises(ApiException):
        _watch_services(core, resource_version="1")

    fake.fail_status = None  # close the connection without answering
    fake.reset_requests()
    with pytest.raises(urllib3.exceptions.MaxRetryError):
        core.list_service_for_all_namespaces(_preload_content=False)
    assert fake.requests[("list", "services")] > 1  # urllib3's default Retry resent the GET

    fake.fail_requests = False
    assert core.list_service_for_all_namespaces().items == []


@pytest.mark.timeout(30)
def test_request_counters_and_wait_helpers(fake: FakeKubeAPI, api_client: client.ApiClient) -> None:
    core = client.CoreV1Api(api_client)
    core.list_service_for_all_namespaces(_preload_content=False)
    core.list_service_for_all_namespaces(_preload_content=False)
    core.list_namespaced_pod("ns", _preload_content=False)
    with _watch_services(core, resource_version=str(fake.resource_version)):
        assert fake.wait_for_watchers(1, "services", timeout=1)
        assert not fake.wait_for_watchers(1, "pods", timeout=0.1)
    assert fake.requests[("list", "services")] == 2
    assert fake.requests[("list", "pods")] == 1
    assert fake.requests[("watch", "services")] == 1
    assert fake.wait_for_requests("watch", "services", 1, timeout=0.1)
    assert [(r.verb, r.resource, r.namespace) for r in fake.request_log][2] == ("list", "pods", "ns")


# --------------------------------------------------------------------------
# Object constructors


def test_constructor_shapes() -> None:
    headless = service("db", "ns", headless=True, ports=[{"port": 5432}])
    assert headless["spec"]["clusterIP"] == "None" and headless["spec"]["clusterIPs"] == ["None"]
    assert headless["spec"]["ports"] == [{"protocol": "TCP", "port": 5432, "targetPort": 5432}]
    assert "publishNotReadyAddresses" not in headless["spec"]  # omitempty, like the apiserver
    ext = service("ext", "ns", external_name="example.com")
    assert ext["spec"]["type"] == "ExternalName" and "clusterIP" not in ext["spec"] and "ports" not in ext["spec"]
    v6 = service("v6", "ns", cluster_ip="fd00::1")
    assert v6["spec"]["ipFamilies"] == ["IPv6"] and v6["spec"]["ipFamilyPolicy"] == "SingleStack"
    assert service("d", "ns")["spec"]["clusterIP"] == service("d", "ns")["spec"]["clusterIP"]  # stable default

    es = endpointslice("s-1", "ns", "s", [{"addresses": ["fd00::5"], "terminating": True, "ready": False}], [53], "IPv6")
    assert es["addressType"] == "IPv6"
    assert es["endpoints"][0]["conditions"] == {"ready": False, "serving": False, "terminating": True}
    assert es["ports"] == [{"name": "", "protocol": "TCP", "port": 53}]

    pending = pod("p", "ns", None, phase="Pending")
    assert "podIP" not in pending["status"] and pending["status"]["phase"] == "Pending"
    dying = pod("p", "ns", "10.1.0.1", deletion_timestamp="2024-01-01T00:00:00Z")
    assert dying["metadata"]["deletionTimestamp"] == "2024-01-01T00:00:00Z"
    assert dying["status"]["podIPs"] == [{"ip": "10.1.0.1"}]
    assert namespace("kube-system")["status"] == {"phase": "Active"}


# --------------------------------------------------------------------------
# Outages, credentials, restores


@pytest.mark.timeout(30)
def test_restart_on_the_same_port_keeps_objects_and_replays_changes_made_while_down(tmp_path: Path) -> None:
    api = FakeKubeAPI().start()
    try:
        api.load([service("web", "default", cluster_ip="10.96.0.10")])
        v1 = client.CoreV1Api(api.api_client())
        rv = v1.list_service_for_all_namespaces(_preload_content=False).json()["metadata"]["resourceVersion"]
        url, port = api.url, api.port
        api.stop()
        with pytest.raises(urllib3.exceptions.MaxRetryError):
            v1.list_service_for_all_namespaces(_request_timeout=(1, 1), _preload_content=False)
        api.create("services", service("late", "default", cluster_ip="10.96.0.11"))  # while it is down
        api.start(port=port)
        assert api.url == url
        with _watch_services(v1, resource_version=rv, timeout_seconds=1) as resp:
            events = list(_events(resp))
        assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [("ADDED", "late")]
    finally:
        api.stop()
    assert api.errors == []


@pytest.mark.timeout(30)
def test_bearer_token_is_required_when_set(fake: FakeKubeAPI, tmp_path: Path) -> None:
    fake.token = "s3cret"
    bad = config.new_client_from_config(config_file=kubeconfig(tmp_path / "bad", fake.url, token="wrong"))
    with pytest.raises(ApiException) as info:
        client.CoreV1Api(bad).list_namespace(_preload_content=False)
    assert info.value.status == 401
    good = config.new_client_from_config(config_file=kubeconfig(tmp_path / "good", fake.url, token="s3cret"))
    assert client.CoreV1Api(good).list_namespace(_preload_content=False).status == 200


@pytest.mark.timeout(30)
def test_restore_goes_back_in_time_and_a_watch_from_the_future_sees_nothing(
    fake: FakeKubeAPI, core: client.CoreV1Api
) -> None:
    fake.bookmark_interval = 0.2
    fake.load([service("old", "default", cluster_ip="10.96.0.10")])
    fake.create("services", service("new", "default", cluster_ip="10.96.0.11"))
    ahead = str(fake.resource_version)
    fake.restore([service("old", "default", cluster_ip="10.96.0.10")], resource_version=500)
    body = core.list_service_for_all_namespaces(_preload_content=False).json()
    assert body["metadata"]["resourceVersion"] == "500"
    assert _names(body["items"]) == ["default/old"]
    fake.create("services", service("after", "default", cluster_ip="10.96.0.12"))  # rv 501 < ahead
    with _watch_services(core, resource_version=ahead, allow_watch_bookmarks=True, timeout_seconds=1) as resp:
        assert list(_events(resp)) == []  # no event, and no BOOKMARK going backwards
    with _watch_services(core, resource_version="500", allow_watch_bookmarks=True, timeout_seconds=1) as resp:
        events = list(_events(resp))
    assert events[0]["type"] == "ADDED" and events[0]["object"]["metadata"]["name"] == "after"
    assert {e["type"] for e in events[1:]} <= {"BOOKMARK"}
