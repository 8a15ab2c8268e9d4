"""The informer tests' cluster and tuning, for an Informer against :class:`tests.fakeapi.FakeKubeAPI`.

The numbers in :data:`FAST` are shrunk so that reconnects, read timeouts and backoff happen within
a test's budget; :func:`small_cluster` spans several LIST pages at ``page_size`` 2.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, reactor, task

from tests.support import kubeobj

__all__ = ["BASE", "FAST", "sleep", "small_cluster"]

#: the kinds every cluster zone needs (no pods)
BASE = ["namespaces", "services", "endpointslices"]

#: small numbers so that reconnects and timeouts happen within the test budget
FAST = {
    "page_size": 2,  # every list below spans several pages
    "watch_timeout": 30.0,
    "connect_timeout": 1.0,
    "read_timeout": 1.0,
    "backoff_base": 0.05,
    "backoff_cap": 0.3,
    "config_retry_base": 0.05,
    "config_retry_cap": 0.2,
    "stop_timeout": 3.0,
}


def sleep(seconds: float) -> defer.Deferred[None]:
    """A Deferred that fires after ``seconds`` on the real reactor (``await sleep(0.1)``)."""
    return task.deferLater(reactor, seconds, lambda: None)


def small_cluster() -> list[dict[str, Any]]:
    """Three namespaces, Services svc0-svc4 in ``apps`` and kube-dns, slices for svc0-svc2, pods
    p0-p2 on those addresses and a pending pod without one."""
    objs: list[dict[str, Any]] = [kubeobj.namespace(n) for n in ("default", "kube-system", "apps")]
    objs += [kubeobj.service(f"svc{i}", "apps", cluster_ip=f"10.96.1.{i}") for i in range(5)]
    objs.append(kubeobj.service("kube-dns", "kube-system", cluster_ip="10.96.0.10"))
    objs += [kubeobj.endpointslice(f"svc{i}-x", "apps", f"svc{i}", [{"addresses": [f"10.1.1.{i}"]}]) for i in range(3)]
    objs += [kubeobj.pod(f"p{i}", "apps", f"10.1.1.{i}") for i in range(3)]
    objs.append(kubeobj.pod("pending", "apps", None))
    return objs
