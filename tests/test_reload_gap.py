"""Reloads that touch the ``kubernetes`` block answer without a gap.

A real ``twistd kubedns`` process watches ``tests/fakeapi.py`` over real HTTP while a thread asks
it for a cluster name over UDP every few milliseconds; the config is then reloaded (SIGHUP) again
and again, each kind of change several times:

- options that do not change what is watched (``ttl``, ``pods`` between insecure and disabled,
  ``zones``, ``fallthrough``): the running store and watch are kept (no new LIST reaches the API);
- changes that need a new store (another kubeconfig, ``pods: verified`` on and off, a manifests
  file instead of the API, another manifests file): the old store answers until the new one has
  synced, even while the API holds the new store's LIST back.

Not one answer may be SERVFAIL (or missing), and after each reload the answers follow the new
config.  The swap itself (and what is logged when a new store never syncs) is also checked in
process with a fake clock in ``tests/test_stores.py``.
"""

from __future__ import annotations

import signal
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import dns.rcode
import pytest

from tests import fakeapi
from tests.conftest import free_port, query, wait_for
from tests.support import kubeobj
from tests.support.cluster import write_manifests

pytestmark = [pytest.mark.timeout(180), pytest.mark.usefixtures("_no_proxy")]

NAME = "nginx.default.svc.cluster.local"
POD = "10-244-0-5.default.pod.cluster.local"
OBJS = [
    kubeobj.namespace("default"),
    kubeobj.service("nginx", "default", cluster_ip="10.96.0.100"),
    kubeobj.pod("web", "default", "10.244.0.5"),
]


@pytest.fixture
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")


class Poller(threading.Thread):
    """Asks ``NAME`` every ``every`` seconds; counts rcodes (a timeout counts as ``timeout``)."""

    def __init__(self, port: int, every: float = 0.003):
        super().__init__(daemon=True)
        self.port, self.every = port, every
        self.rcodes: Counter[str] = Counter()
        self.bad: list[tuple[float, str]] = []
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            try:
                r = query(self.port, NAME, timeout=3.0)
                code = dns.rcode.to_text(r.rcode())
                if code == "NOERROR" and not r.answer:
                    code = "NODATA"
            except Exception as e:
                code = f"timeout ({type(e).__name__})"
            self.rcodes[code] += 1
            if code != "NOERROR":
                self.bad.append((time.monotonic(), code))
            time.sleep(self.every)


def _block(port: int, **k8s: Any) -> dict[str, Any]:
    return {"servers": [{"zones": ["."], "listen": f"127.0.0.1:{port}",
                         "kubernetes": {"zones": ["cluster.local"], **k8s}}]}


def _ttl(port: int, name: str = NAME) -> int | None:
    r = query(port, name, timeout=3.0)
    return r.answer[0].ttl if r.answer else None


def _rcode(port: int, name: str) -> str:
    return dns.rcode.to_text(query(port, name, timeout=3.0).rcode())


def test_reloads_of_every_kind_answer_without_a_gap(kubedns_process: Any, tmp_path: Path) -> None:
    with fakeapi.FakeKubeAPI() as api:
        api.load(OBJS)
        kc1 = kubeobj.kubeconfig(tmp_path / "kc1", api.url)
        kc2 = kubeobj.kubeconfig(tmp_path / "kc2", api.url)  # the same API, another file: a new store
        m1 = write_manifests(tmp_path / "m1.yaml", OBJS)
        m2 = write_manifests(tmp_path / "m2.yaml", [*OBJS, kubeobj.service("only-m2", "default", cluster_ip="10.96.0.2")])
        port = free_port()
        ttl = iter(range(10, 100))
        cur = {"kubeconfig": kc1, "pods": "insecure", "ttl": next(ttl)}
        p = kubedns_process(_block(port, **cur), env={"NO_PROXY": "127.0.0.1"})
        p.wait_listening(port)
        wait_for(lambda: _ttl(port) == cur["ttl"], timeout=20)
        poller = Poller(port)
        poller.start()

        def reload(**change: Any) -> int:
            cur.update(change)
            cur["ttl"] = next(ttl)
            p.write_config(_block(port, **{k: v for k, v in cur.items() if v is not None}))
            p.signal(signal.SIGHUP)
            return cur["ttl"]

        def applied(want: int) -> None:
            wait_for(lambda: _ttl(port) == want, timeout=20)

        # 1. what is watched stays the same: the store and its watch are kept (no new LIST)
        lists = api.requests[("list", "services")]
        for _ in range(3):
            applied(reload())  # ttl only
        for mode, want in (("disabled", "NXDOMAIN"), ("insecure", "NOERROR"), ("disabled", "NXDOMAIN"),
                           ("insecure", "NOERROR")):
            applied(reload(pods=mode))
            assert _rcode(port, POD) == want, mode
        for zones in (["cluster.local", "example.test"], ["cluster.local"], ["cluster.local", "example.test"]):
            applied(reload(zones=zones))
            has = "example.test" in zones
            assert _rcode(port, "nginx.default.svc.example.test") == ("NOERROR" if has else "REFUSED"), zones
        applied(reload(fallthrough=["in-addr.arpa"]))
        assert api.requests[("list", "services")] == lists, "a reload that watches the same relisted"

        # 2. a new kubeconfig: the old store answers until the new one has synced, even while
        #    the API holds its LIST back
        for kc in (kc2, kc1):
            old = cur["ttl"]
            api.withhold_lists = True
            try:
                want = reload(kubeconfig=kc)
                wait_for(lambda: "keeps answering from its previous cluster data" in p.log())
                time.sleep(0.5)
                assert _ttl(port) == old  # the previous config's answers, not SERVFAIL
            finally:
                api.withhold_lists = False
            applied(want)
        lists = api.requests[("list", "services")]

        # 3. pods: verified watches Pods too (a new store), and back
        for mode, want in (("verified", "NOERROR"), ("insecure", "NOERROR"), ("verified", "NOERROR")):
            applied(reload(pods=mode))
            assert _rcode(port, POD) == want
            assert _rcode(port, "10-244-9-9.default.pod.cluster.local") == ("NXDOMAIN" if mode == "verified" else "NOERROR")
        assert api.requests[("list", "services")] > lists  # those did make new stores

        # 4. from the API to a manifests file, to another file, and back to the API
        applied(reload(kubeconfig=None, manifests=m1))
        applied(reload(manifests=m2))
        assert _rcode(port, "only-m2.default.svc.cluster.local") == "NOERROR"
        applied(reload(manifests=None, kubeconfig=kc1))

        time.sleep(0.2)
        poller.halt.set()
        poller.join(5)
    total = sum(poller.rcodes.values())
    print(f"\nreload gap: {total} queries over the reloads, rcodes {dict(poller.rcodes)}")
    assert poller.bad == [], (dict(poller.rcodes), poller.bad[:10], p.log()[-3000:])
    assert poller.rcodes["NOERROR"] > 300
    assert "Traceback" not in p.log()
