"""The README's two commands: scripts/demo and scripts/test, and the venv they share.

Both scripts install into a project virtual environment, ``.venv/`` in the checkout, because a
stock Debian python3 is externally managed (PEP 668) and pip refuses to touch it.  The venv
logic lives in ``scripts/venv.sh``; it keeps a stamp so that a second start runs no pip and
needs no network.  These tests run that logic for real: ``python3 -m venv`` and pip against a
tiny project in a temporary directory (its in-tree build backend has no requirements, so even
the first install needs no index), with pip replaced by a tripwire afterwards to show which runs
call it.  No test here reaches any network: pip gets no index, and as root every run is inside
a network namespace with nothing but loopback.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, free_port

pytestmark = pytest.mark.timeout(120)

VENV_SH = REPO / "scripts" / "venv.sh"

# A PEP 517/660 build backend that needs nothing: its editable wheel is one .pth file.
BACKEND = '''
"""Build backend of the tiny test project: no requirements, so pip installs it offline."""
import base64, hashlib, os, zipfile

NAME, VERSION = "tinypkg", "0.1"
DIST = f"{NAME}-{VERSION}.dist-info"
METADATA = f"Metadata-Version: 2.1\\nName: {NAME}\\nVersion: {VERSION}\\nProvides-Extra: test\\n"
WHEEL = "Wheel-Version: 1.0\\nGenerator: tiny\\nRoot-Is-Purelib: true\\nTag: py3-none-any\\n"


def _wheel(directory, files):
    name = f"{NAME}-{VERSION}-py3-none-any.whl"
    files = {**files, f"{DIST}/METADATA": METADATA, f"{DIST}/WHEEL": WHEEL}
    record = []
    with zipfile.ZipFile(os.path.join(directory, name), "w") as z:
        for path, text in files.items():
            data = text.encode()
            z.writestr(path, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            record.append(f"{path},sha256={digest},{len(data)}")
        z.writestr(f"{DIST}/RECORD", "\\n".join([*record, f"{DIST}/RECORD,,"]) + "\\n")
    return name


def get_requires_for_build_wheel(config_settings=None):
    return []


def get_requires_for_build_editable(config_settings=None):
    return []


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    here = os.path.dirname(os.path.abspath(__file__))
    with open(os.path.join(here, "tinypkg.py")) as f:
        return _wheel(wheel_directory, {"tinypkg.py": f.read()})


def build_editable(wheel_directory, config_settings=None, metadata_directory=None):
    here = os.path.dirname(os.path.abspath(__file__))
    return _wheel(wheel_directory, {"__editable__.tinypkg.pth": here + "\\n"})
'''

TRIPWIRE = """import sys
with open({calls!r}, "a") as f:
    f.write(" ".join(sys.argv[1:]) + "\\n")
"""


def _netns_prefix() -> list[str]:
    """``unshare -n`` (a namespace with only a downed loopback) when we may, else nothing."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return []
    if subprocess.run(["unshare", "-n", "true"], capture_output=True, timeout=10).returncode != 0:
        return []
    return ["unshare", "-n"]


def _offline_env() -> dict[str, str]:
    """The environment minus every pip setting, plus: no index, no config file, and an index
    URL on a loopback port where nothing listens (in case anything still looked)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_") and k != "VIRTUAL_ENV"}
    env.update(PIP_NO_INDEX="1", PIP_CONFIG_FILE=os.devnull, PIP_INDEX_URL=f"http://127.0.0.1:{free_port()}/simple")
    return env


def _venv(project: Path, extra: str = "") -> subprocess.CompletedProcess[str]:
    """``source scripts/venv.sh; kubedns_venv EXTRA`` in ``project``, offline; then which python."""
    script = f"set -euo pipefail; source {VENV_SH}; kubedns_venv {extra}; python -c 'import sys, tinypkg; print(sys.prefix)'"
    return subprocess.run([*_netns_prefix(), "bash", "-c", script], cwd=project, env=_offline_env(),
                          capture_output=True, text=True, timeout=90)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    root.mkdir()
    (root / "pyproject.toml").write_text(textwrap.dedent("""\
        [build-system]
        requires = []
        build-backend = "_backend"
        backend-path = ["."]
        """))
    (root / "setup.cfg").write_text("[metadata]\nname = tinypkg\n")
    (root / "_backend.py").write_text(BACKEND)
    (root / "tinypkg.py").write_text("ANSWER = 42\n")
    return root


def _install_tripwire(venv: Path, calls: Path) -> None:
    """Replace ``python -m pip`` in the venv by a stand-in that only records its arguments."""
    mains = list(venv.glob("lib/python3*/site-packages/pip/__main__.py"))
    assert len(mains) == 1, mains
    mains[0].write_text(TRIPWIRE.format(calls=str(calls)))


def _calls(calls: Path) -> list[str]:
    return calls.read_text().splitlines() if calls.exists() else []


def test_venv_installs_once_then_skips_pip_offline(project: Path) -> None:
    venv = project / ".venv"
    first = _venv(project)
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == str(venv), "python on PATH after kubedns_venv must be the venv's"
    assert "pip install -e '.'" in first.stderr
    stamp = (venv / ".kubedns-stamp").read_text()
    assert f" {venv}\n" in stamp and "extras \n" in stamp, stamp

    calls = project / "pip-calls"
    _install_tripwire(venv, calls)

    # Nothing changed: no pip at all, and the venv still serves the package.
    second = _venv(project)
    assert second.returncode == 0, second.stderr
    assert second.stdout.strip() == str(venv)
    assert "up to date" in second.stderr
    assert _calls(calls) == []

    # An extra not installed yet: pip runs (the tripwire records it), editable, compat mode.
    with_test = _venv(project, "test")
    assert with_test.returncode == 0, with_test.stderr
    assert _calls(calls) == ["install -q --disable-pip-version-check -e .[test] --config-settings editable_mode=compat"]

    # Asking for less than is there (the demo after the tests): no pip.
    assert _venv(project).returncode == 0
    assert len(_calls(calls)) == 1

    # A change to the packaging files: pip again, keeping the extras already there.
    with (project / "setup.cfg").open("a") as f:
        f.write("# changed\n")
    changed = _venv(project)
    assert changed.returncode == 0, changed.stderr
    assert _calls(calls)[1:] == ["install -q --disable-pip-version-check -e .[test] --config-settings editable_mode=compat"]


def test_venv_is_recreated_for_another_place(project: Path, tmp_path: Path) -> None:
    """A moved checkout gets a fresh venv: console scripts hold the old absolute path."""
    assert _venv(project).returncode == 0
    moved = tmp_path / "moved"
    project.rename(moved)
    again = _venv(moved)
    assert again.returncode == 0, again.stderr
    assert "creating .venv" in again.stderr
    assert again.stdout.strip() == str(moved / ".venv")
    assert f" {moved / '.venv'}\n" in (moved / ".venv" / ".kubedns-stamp").read_text()


def test_failed_install_leaves_no_stamp(project: Path) -> None:
    """pip failing (here: a build backend that raises) must fail the script and be retried."""
    (project / "_backend.py").write_text(BACKEND + "\nraise RuntimeError('broken backend')\n")
    r = _venv(project)
    assert r.returncode != 0
    assert not (project / ".venv" / ".kubedns-stamp").exists()


def _current(extra: str) -> bool:
    r = subprocess.run(["bash", "-c", f"source {VENV_SH}; kubedns_venv_current {extra}"], cwd=REPO,
                       capture_output=True, text=True, timeout=30)
    return r.returncode == 0


QUERY = """import sys, time, dns.message, dns.query
q = dns.message.make_query("nginx.default.svc.cluster.local", "A")
deadline = time.monotonic() + float(sys.argv[1])
while True:
    try:
        print(dns.query.udp(q, "127.0.0.1", port=1053, timeout=0.5).answer[0][0].address)
        break
    except Exception:
        if time.monotonic() > deadline:
            raise
        time.sleep(0.1)
"""


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("nsenter") is None,
                    reason="needs root, unshare and nsenter for a namespace without network")
def test_demo_second_start_answers_without_network_or_pip() -> None:
    """Once .venv is set up (scripts/test did it), ``scripts/demo`` starts and answers with no
    network at all: it runs in a namespace that has only loopback, with pip given no index."""
    if not _current(""):
        pytest.skip("the checkout's .venv is not set up (scripts/test sets it up)")
    env = _offline_env()
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if p != str(REPO / ".venv" / "bin"))
    demo = subprocess.Popen(["unshare", "-n", "bash", "-c", "ip link set lo up && exec scripts/demo"], cwd=REPO,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        started = time.monotonic()
        own = os.readlink("/proc/self/ns/net")
        while os.readlink(f"/proc/{demo.pid}/ns/net") == own:  # unshare(2) not done yet
            assert demo.poll() is None and time.monotonic() - started < 10, "unshare -n did not start"
            time.sleep(0.01)
        answer = subprocess.run(["nsenter", "-t", str(demo.pid), "-n", sys.executable, "-c", QUERY, "60"],
                                capture_output=True, text=True, timeout=90)
        took = time.monotonic() - started
    finally:
        os.killpg(demo.pid, signal.SIGTERM)
        out, _ = demo.communicate(timeout=30)
    assert answer.stdout.strip() == "10.96.0.100", answer.stderr + out
    assert "up to date (pip not run" in out, out
    assert took < 60, f"first answer after {took:.1f}s"


def test_ci_runs_the_readmes_test_command() -> None:
    """The README's two commands are scripts/demo and scripts/test, and CI runs the second."""
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## The two commands"):]
    section = section[: section.index("\n## ", 1)]
    blocks = [b.strip().splitlines()[0] for b in section.split("```sh\n")[1:]]
    assert blocks == ["scripts/demo", "scripts/test"]
    ci = [line for line in (REPO / ".ci" / "run").read_text().splitlines() if line and not line.startswith("#")]
    assert ci[-1] == "exec scripts/test"
    for script in ("demo", "test"):
        text = (REPO / "scripts" / script).read_text()
        assert "source scripts/venv.sh" in text and "kubedns_venv" in text, f"scripts/{script} skips the venv"


def _fake_debian(tmp_path: Path, uid: int) -> tuple[dict[str, str], Path]:
    """A PATH on which python3 lacks ensurepip until "apt-get install" ran, apt-get only records
    its arguments, and id says ``uid``: the decisions of venv.sh, not Debian's packages."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "apt.log"
    installed = tmp_path / "installed"
    real = shutil.which("python3", path=os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep)
                                                         if not p.startswith(str(REPO))))
    assert real
    scripts = {
        "python3": f'#!/bin/bash\nif [[ "$*" == *ensurepip* && ! -e {installed} ]]; then exit 1; fi\nexec {real} "$@"\n',
        "apt-get": f'#!/bin/bash\necho "$*" >> {log}\n[[ "$1" != install ]] || touch {installed}\n',
        "id": f"#!/bin/bash\necho {uid}\n",
    }
    for name, text in scripts.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}/usr/bin{os.pathsep}/bin")
    return env, log


def test_venv_support_installs_python3_venv_as_root_on_debian(tmp_path: Path) -> None:
    env, log = _fake_debian(tmp_path, 0)
    script = f"set -euo pipefail; source {VENV_SH}; kubedns_venv_support; kubedns_apt_install dnsutils"
    r = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    calls = log.read_text().splitlines()
    assert calls[0] == "update -qq"  # once, before the first install, not again for the second
    assert re.fullmatch(r"install -y -qq python3-venv python3\.\d+-venv", calls[1]), calls
    assert calls[2:] == ["install -y -qq dnsutils"]


def test_venv_support_says_what_to_install_when_not_root(tmp_path: Path) -> None:
    env, log = _fake_debian(tmp_path, 1000)
    r = subprocess.run(["bash", "-c", f"source {VENV_SH}; kubedns_venv_support"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 1
    assert not log.exists(), "apt-get must not run without root"
    assert r.stderr.count("\n") == 1 and "apt-get install python3-venv" in r.stderr, r.stderr
