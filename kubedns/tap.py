"""twistd glue: ``twistd -n kubedns --config FILE`` (a Corefile, or the YAML config).

The config is read and validated in ``postOptions`` so that a missing or invalid file makes
twistd exit 1 with our one-line message (file, key, expectation) on stderr, before anything is
started and without twistd's usage text.  ``twistd kubedns --version`` prints kubedns's version
(``usage.Options`` would print Twisted's).  ``makeService`` logs the first line an operator
reads: the version, the config file and every listener; the listen addresses themselves are
bound by :meth:`kubedns.service.KubeDNS.privilegedStartService`, which turns a failure into one
line and exit 1.  Heavy imports wait for ``makeService``.
"""

from __future__ import annotations

import gc
import sys
from typing import Any

from twisted.python import usage

from kubedns import __version__
from kubedns.config import ConfigError, load

#: Seconds after which the start-up hold on the garbage collector ends if the first sync of the
#: cluster has not ended it (an unreachable API server, a huge cluster).
GC_HOLD_BOUND = 60.0

DEFAULT_CONFIG = "/etc/kubedns/corefile.yaml"


class Options(usage.Options):
    synopsis = "[--config FILE]"
    longdesc = "Kubernetes cluster DNS: serves cluster.local from a Kubernetes watch, forwards the rest."
    optParameters = [  # noqa: N815 (Twisted API)
        ["config", "c", DEFAULT_CONFIG,
         "Path to the config: a Corefile (CoreDNS's syntax, e.g. the cluster's ConfigMap coredns), "
         "or kubedns's YAML (.yaml/.yml). Told apart by content."],
        ["node-local-interface", None, "nodelocaldns",
         "With --node-local: the dummy interface that carries the addresses."],
        ["node-local-check", None, "60",
         "With --node-local: seconds between checks that the interface and rules are still "
         "there (written again if not); 0: no checks."],
    ]
    optFlags = [  # noqa: N815 (Twisted API)
        ["node-local", None,
         "Node-local cache mode (NodeLocal DNSCache's role): put every address the config "
         "listens on (bind) on a dummy interface with NOTRACK rules, removed on exit. "
         "See conf/nodelocal.Corefile."],
    ]

    def opt_version(self) -> None:
        """Print kubedns's version (with Twisted's and Python's) and exit."""
        import platform

        from twisted import version as twisted_version

        print(f"kubedns {__version__} (Twisted {twisted_version.short()}, Python {platform.python_version()})")
        sys.exit(0)

    def postOptions(self) -> None:  # noqa: N802 (Twisted API)
        # No cyclic garbage collection from here (twistd parsing our options: the process is
        # starting) until the first sync: see kubedns.k8s.informer.hold_gc and makeService.
        self["gc_held"] = gc.isenabled()
        gc.disable()
        try:
            self["parsed"] = load(self["config"])
        except ConfigError as e:
            # One line on stderr and exit 1; a UsageError would make twistd print its whole
            # usage text first, burying the one line an operator needs (file, key, expectation).
            sys.stderr.write(f"kubedns: invalid config: {e}\n")
            sys.stderr.flush()
            raise SystemExit(1) from None
        if self["node-local"]:
            from kubedns.node.nodelocal import plan

            try:
                self["node-local-plan"] = plan(self["parsed"], self["node-local-interface"])
                self["node-local-check"] = _seconds("--node-local-check", self["node-local-check"])
            except ValueError as e:
                sys.stderr.write(f"kubedns: {e}\n")
                sys.stderr.flush()
                raise SystemExit(1) from None


def _seconds(flag: str, text: str) -> float:
    """A non-negative finite number of seconds, or a ValueError naming ``flag``."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise ValueError(f"{flag}: seconds (0 or more), got {text!r}")
    return value


def makeService(options: Options) -> Any:  # noqa: N802
    from twisted.logger import Logger

    from kubedns.serve.listen import raise_fd_limit
    from kubedns.serve.workers import worker_index
    from kubedns.service import banner, build

    config = options["parsed"]
    if worker_index() == 0:
        # logged before twistd's logging starts: it is buffered and comes out as the first line
        Logger(namespace="kubedns").info("{banner}", banner=banner(config))
    raise_fd_limit()  # process start-up: as Go does for CoreDNS, before any socket is opened
    service = build(config)
    if options.get("node-local-plan") is not None and worker_index() == 0:
        from kubedns.node.nodelocal import NodeLocalNetwork

        service.add_first(NodeLocalNetwork(options["node-local-plan"], check_interval=options["node-local-check"],
                                           reactor=service.reactor))
    _hold_gc_until_synced(service, options.get("gc_held", False))
    return service


def _hold_gc_until_synced(service: Any, held: bool) -> None:
    """Keep the start-up hold on the collector (``held``: taken by ``postOptions``) until the
    first sync, if an informer will end it; else end it now."""
    if not held:
        return  # the collector was off before kubedns: not ours to turn on
    from kubedns.k8s import informer

    informer.hold_gc()  # owned by the informer module from here on
    if not any(isinstance(s, informer.Informer) for s in service.sources):
        informer.release_gc()  # nothing to sync: collect as usual at once
        return
    service.reactor.callLater(GC_HOLD_BOUND, informer.release_gc)
