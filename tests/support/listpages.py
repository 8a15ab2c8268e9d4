"""Kubernetes LIST pages as the apiserver writes them, malformed pages, and a watcher's fakes.

The streaming LIST-page parser's tests (``tests/test_list_parser.py``) and the msgspec decoder's
(``tests/test_fast_decode.py``) feed both the same pages: realistic ones (:func:`k8s_page` over
:func:`k8s_objects`, with kubectl's annotations and managedFields, Go's escaping of ``<>&``) and
the hand-picked :data:`MALFORMED` ones; :class:`SyncReactor` and :func:`no_list` let a
``ResourceWatcher`` decode pages and lines on the test's own thread.
"""

from __future__ import annotations

import copy
import json
import random
from collections.abc import Callable
from typing import Any

from kubedns.k8s.objects import KINDS
from tests.support import kubeobj

__all__ = ["MALFORMED", "SyncReactor", "k8s_objects", "k8s_page", "list_item", "no_list"]

Raw = dict[str, Any]


def list_item(obj: Raw, rv: int, rng: random.Random) -> Raw:
    """An object of :mod:`tests.support.kubeobj` as the apiserver returns it in a List: no kind/apiVersion, full metadata."""
    item = {k: v for k, v in copy.deepcopy(obj).items() if k not in ("kind", "apiVersion")}
    meta = item["metadata"]
    meta["uid"] = f"{rng.getrandbits(32):08x}-0000-4000-8000-{rng.getrandbits(48):012x}"
    meta["resourceVersion"] = str(rv)
    meta["creationTimestamp"] = "2024-05-01T12:00:00Z"
    meta["annotations"] = {
        # kubectl's annotation: JSON in a string, with quotes, brackets and an "items" of its own
        "kubectl.kubernetes.io/last-applied-configuration": json.dumps(
            {"apiVersion": "v1", "kind": "List", "items": [{"metadata": {"name": meta["name"]}}], "note": 'a "b" [c]'}
        )
        + "\n",
        "example.com/html": "<b>&amp;</b> \\ é 😀",
    }
    meta["managedFields"] = [
        {
            "manager": "kube-controller-manager",
            "operation": "Update",
            "apiVersion": "v1",
            "time": "2024-05-01T12:00:00Z",
            "fieldsType": "FieldsV1",
            "fieldsV1": {"f:status": {"f:conditions": {'k:{"type":"Ready"}': {".": {}, "f:status": {}}}}},
        }
    ]
    return item


def k8s_objects(rng: random.Random, n: int) -> dict[str, list[Raw]]:
    """``n`` objects of each kind, built with :mod:`tests.support.kubeobj`."""
    out: dict[str, list[Raw]] = {k: [] for k in KINDS}
    for i in range(n):
        ns = rng.choice(("default", "kube-system", "team-a"))
        out["namespaces"].append(kubeobj.namespace(f"ns-{i}", labels={"team": rng.choice(("a", "b"))}))
        if i % 3 == 0:
            svc = kubeobj.service(f"svc-{i}", ns, headless=True, publish_not_ready=True)
        elif i % 3 == 1:
            svc = kubeobj.service(f"svc-{i}", ns, cluster_ips=[f"10.96.0.{i % 250 + 1}", f"fd00::{i:x}"])
        else:
            svc = kubeobj.service(f"svc-{i}", ns, external_name="db.example.com")
        out["services"].append(svc)
        eps = [
            {"addresses": [f"10.244.{i % 250}.{j + 1}"], "hostname": f"h{j}" if j % 2 else None, "ready": j != 2}
            for j in range(rng.randint(0, 4))
        ]
        out["endpointslices"].append(kubeobj.endpointslice(f"svc-{i}-abcde", ns, f"svc-{i}", endpoints=eps))
        phase = rng.choice(("Running", "Running", "Pending", "Succeeded"))
        ip = None if phase == "Pending" and i % 2 else f"10.244.{i % 250}.{i % 200 + 1}"
        out["pods"].append(kubeobj.pod(f"pod-{i}", ns, ip, phase=phase))
    return out


def k8s_page(
    kind: str,
    objs: list[Raw],
    rv: int,
    cont: str | None,
    rng: random.Random,
    *,
    style: str = "go",
    metadata_last: bool = False,
) -> str:
    """A List response as the apiserver writes it (``style="go"``: compact, ``<>&`` escaped)."""
    list_kind = {"namespaces": "NamespaceList", "services": "ServiceList", "endpointslices": "EndpointSliceList"}
    meta: Raw = {"resourceVersion": str(rv)}
    if cont is not None:
        meta["continue"] = cont
        meta["remainingItemCount"] = rng.randint(1, 1000)
    page: Raw = {"kind": list_kind.get(kind, "PodList"), "apiVersion": "v1", "metadata": meta}
    page["items"] = [list_item(o, rv, rng) for o in objs]
    if metadata_last:
        page["metadata"] = page.pop("metadata")
    if style == "go":
        text = json.dumps(page, separators=(",", ":"), ensure_ascii=False)
        # Go's encoder escapes <, > and & (they only ever occur inside strings in JSON text)
        return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return json.dumps(page, indent=2)


# -- malformed pages -----------------------------------------------------------------------------

#: pages ``json.loads(page)["items"]`` fails on, each a different way
MALFORMED = [
    "",
    "   ",
    "[]",
    "null",
    '"items"',
    "{",
    "}",
    '{"items": [',
    '{"items": [{"a": 1}',
    '{"items": [{"a": 1},',
    '{"items": [{"a": 1}, ',
    '{"items": [1,]}',
    '{"items": [,1]}',
    '{"items": [1 2]}',
    '{"items": [] ,}',
    '{,"items": []}',
    '{"items": []',
    '{"items": []}}',
    '{"items": []}]',
    '{"items": []} x',
    '{"items": []}{}',
    "{'items': []}",
    "{items: []}",
    '{"items" []}',
    '{"items": [] "metadata": {}}',
    '{"items": [{"a": 1}}',
    '{"items": [{"a": "unterminated}]}',
    '{"items": [tru]}',
    '{"items": [01]}',
    '{"items": [1.]}',
    '{"items": [+1]}',
    '{"items": ["\\x"]}',
    '{"items": ["\\u12"]}',
    '{"items": ["ctrl\x01char"]}',
    '{"items": ["raw\nnewline"]}',
    '\ufeff{"items": []}',
    '{"metadata": {"resourceVersion": "1"}, "items": []',
    '{"metadata": {"resourceVersion": "1", "items": []}',
    '{"items": [], "metadata": {"continue": "abc}',
    '{"items": [], "metadata": }',
]


# -- a ResourceWatcher without a cluster ---------------------------------------------------------


class SyncReactor:
    """callFromThread at once, on the calling thread: _list then runs to the end synchronously."""

    def callFromThread(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> None:  # noqa: N802
        f(*args, **kwargs)


def no_list(**kwargs: Any) -> Any:
    """A ``list_fn`` for a ResourceWatcher that must not LIST."""
    raise AssertionError("no request expected")
