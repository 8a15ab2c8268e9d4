"""Packaging: a normal ``pip install .`` ships the twistd plugin, and twistd lists ``kubedns``.

The editable install the README uses is exercised by every other test (they run twistd); this
one installs a real wheel into a scratch folder and runs twistd from elsewhere, so a plugin
missing from the wheel (the classic setup.cfg mistake) fails here.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.timeout(300)


def test_wheel_ships_plugin_and_twistd_lists_it(tmp_path: Path) -> None:
    target = tmp_path / "site"
    r = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(REPO)],
        capture_output=True, text=True, timeout=280,
    )
    assert r.returncode == 0, r.stderr
    assert (target / "twisted" / "plugins" / "kubedns_plugin.py").is_file()
    assert not (target / "twisted" / "plugins" / "__init__.py").exists()  # must stay a plugin dir
    assert (target / "kubedns" / "k8s" / "store.py").is_file()
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(target), "HOME": str(tmp_path)}
    code = "import sys; from twisted.scripts.twistd import run; sys.argv = ['twistd', '--help']; run()"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert "kubedns" in out.stdout, out.stdout + out.stderr
    # and it imports the installed copy, not the checkout
    where = subprocess.run([sys.executable, "-c", "import kubedns; print(kubedns.__file__)"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert where.stdout.strip().startswith(str(target))
