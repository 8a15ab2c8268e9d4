"""twistd glue: ``twistd -n kubedns --config FILE``.

The config is read and validated in ``postOptions`` so that a missing or invalid file makes
twistd exit non-zero with our message (file, key, expectation) before anything is started.
Heavy imports wait for ``makeService``.
"""

from __future__ import annotations

from typing import Any

from twisted.python import usage

from kubedns.config import ConfigError, load

DEFAULT_CONFIG = "/etc/kubedns/corefile.yaml"


class Options(usage.Options):
    synopsis = "[--config FILE]"
    longdesc = "Kubernetes cluster DNS: serves cluster.local from a Kubernetes watch, forwards the rest."
    optParameters = [  # noqa: N815 (Twisted API)
        ["config", "c", DEFAULT_CONFIG, "Path to the YAML config (a Corefile mirror)."],
    ]

    def postOptions(self) -> None:  # noqa: N802 (Twisted API)
        try:
            self["parsed"] = load(self["config"])
        except ConfigError as e:
            raise usage.UsageError(f"invalid config: {e}") from None


def makeService(options: Options) -> Any:  # noqa: N802
    from kubedns.service import build

    return build(options["parsed"])
