"""The systemd unit's install steps, as the unit file's header comment writes them.

``conf/kubedns.service`` opens with an "Install" paragraph of shell commands; the deploy-file tests
check them against the README and the unit's ``ExecStart``, and the packaging test runs the step
that prebuilds Twisted's plugin cache.  Both read them through :func:`unit_install_steps`.
"""

from __future__ import annotations

import re
from pathlib import Path

__all__ = ["UNIT_FILE", "UNIT_VENV", "shell_commands", "unit_install_steps"]

UNIT_FILE = Path(__file__).resolve().parent.parent.parent / "conf" / "kubedns.service"

#: the virtualenv the install steps make and the unit's ExecStart runs from
UNIT_VENV = "/opt/kubedns"


def shell_commands(lines: list[str]) -> list[str]:
    """Shell command lines with their trailing ``# comments`` and comment-only lines dropped."""
    out = []
    for line in lines:
        command = re.split(r"(?:^|\s)#", line.strip(), maxsplit=1)[0].strip()
        if command:
            out.append(command)
    return out


def unit_install_steps() -> list[str]:
    """The commands of the "Install" paragraph of the unit's header comment."""
    header = UNIT_FILE.read_text().split("\n[Unit]", 1)[0].splitlines()
    start = next(i for i, line in enumerate(header) if line.startswith("# Install"))
    block = []
    for line in header[start + 1 :]:
        if line.strip() == "#":
            break
        block.append(line.removeprefix("#"))
    return shell_commands(block)
