"""Packaging: a normal ``pip install .`` ships the twistd plugin, and twistd lists ``kubedns``.

The editable install the README uses is exercised by every other test (they run twistd); these
install a real wheel into a scratch folder and run twistd from elsewhere, so a plugin missing
from the wheel (the classic setup.cfg mistake) fails here.  The systemd unit runs from a venv on
a read-only file system (``ProtectSystem=strict``), so its install steps build Twisted's plugin
cache as root: the command in the unit's comment is run here on the installed tree, which is
then mounted read-only, and twistd must find the plugin there with nothing left to write.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.support.unit import UNIT_VENV, unit_install_steps

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel of the checkout installed (without dependencies) into a scratch folder."""
    target = tmp_path_factory.mktemp("wheel") / "site"
    r = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(REPO)],
        capture_output=True, text=True, timeout=280,
    )
    assert r.returncode == 0, r.stderr
    return target


def _env(site: Path, home: Path) -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(site), "HOME": str(home)}


def test_wheel_ships_plugin_and_twistd_lists_it(site: Path, tmp_path: Path) -> None:
    target = site
    assert (target / "twisted" / "plugins" / "kubedns_plugin.py").is_file()
    assert not (target / "twisted" / "plugins" / "__init__.py").exists()  # must stay a plugin dir
    assert (target / "kubedns" / "k8s" / "store.py").is_file()
    env = _env(target, tmp_path)
    code = "import sys; from twisted.scripts.twistd import run; sys.argv = ['twistd', '--help']; run()"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert "kubedns" in out.stdout, out.stdout + out.stderr
    # and it imports the installed copy, not the checkout
    where = subprocess.run([sys.executable, "-c", "import kubedns; print(kubedns.__file__)"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert where.stdout.strip().startswith(str(target))


# Lists the twistd plugins with Twisted's log going to stdout, so a failed cache write shows.
LIST_PLUGINS = """import sys
from twisted.python import log
log.startLogging(sys.stdout, setStdout=False)
from twisted.application.service import IServiceMaker
from twisted.plugin import getPlugins
print("tapnames:", *sorted(p.tapname for p in getPlugins(IServiceMaker)))
"""


def _list_plugins_read_only(site: Path, home: Path) -> str:
    """LIST_PLUGINS with ``site`` mounted read-only (as ProtectSystem=strict has /opt), in a mount
    namespace of its own."""
    script = 'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" && exec "$2" -c "$3"'
    r = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh", str(site),
                        sys.executable, LIST_PLUGINS], cwd=home, env=_env(site, home),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None, reason="needs root and unshare -m")
def test_unit_plugin_cache_step_leaves_nothing_to_write(site: Path, tmp_path: Path) -> None:
    plugins = site / "twisted" / "plugins"
    unwritable = f"Unable to write to plugin cache {plugins}"
    # Without the step, twistd on the read-only tree finds the plugin but fails to save the cache
    # (and would rescan at every start): the read-only mount really is read-only.
    (plugins / "dropin.cache").unlink(missing_ok=True)
    before = _list_plugins_read_only(site, tmp_path)
    assert unwritable in before, before

    steps = [shlex.split(s) for s in unit_install_steps() if s.startswith(f"{UNIT_VENV}/bin/python ")]
    assert len(steps) == 1, unit_install_steps()
    step = [sys.executable, *steps[0][1:]]  # the venv's python: here, the one running the tests
    r = subprocess.run(step, cwd=tmp_path, env=_env(site, tmp_path), capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert (plugins / "dropin.cache").is_file()

    after = _list_plugins_read_only(site, tmp_path)
    assert "kubedns" in after.split("tapnames:", 1)[1].split(), after
    assert unwritable not in after, after
