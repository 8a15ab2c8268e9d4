"""The test tree's layout: test modules never import each other, the fake API serves only.

A helper two test modules need lives in ``tests/support/`` (or ``tests/conftest.py``); importing it
from another test module ties the two files together (a change to one breaks the other), runs the
other module's top level, and any test function or class imported along is collected a second time
in the importer.  Kubernetes objects come from
``tests/support/kubeobj.py``; ``tests/fakeapi.py`` is the server alone.  The imports are read with
:mod:`ast`, so an import inside a function counts as much as one at the top.
"""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
FACTORIES = {"endpointslice", "kubeconfig", "namespace", "pod", "service"}


def _is_test_module(name: str) -> bool:
    """``tests.test_x`` (or ``tests.test_x.y``): a module pytest collects tests from."""
    parts = name.split(".")
    return len(parts) >= 2 and parts[0] == "tests" and parts[1].startswith("test_")


def imports_of_test_modules(path: Path, package: str = "tests") -> list[tuple[int, str]]:
    """(line, what) for each import of a test module in ``path``, a module of ``package`` (for
    relative imports)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if _is_test_module(a.name)]
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            if _is_test_module(module):
                found.append((node.lineno, module))
            elif module == "tests":
                found += [(node.lineno, f"tests.{a.name}") for a in node.names if a.name.startswith("test_")]
    return sorted(found)


def _sources() -> list[Path]:
    return sorted([*TESTS.rglob("*.py"), *(REPO / "bench").glob("*.py")])


def test_no_module_imports_a_test_module() -> None:
    found = [
        f"{path.relative_to(REPO)}:{line} imports {name}"
        for path in _sources()
        for line, name in imports_of_test_modules(path, ".".join(path.parent.relative_to(REPO).parts))
    ]
    assert not found, "move what is shared to tests/support/ (or tests/conftest.py) and import it from there:\n" + "\n".join(found)


def test_the_checker_sees_every_form_of_import(tmp_path: Path) -> None:
    src = tmp_path / "x.py"
    src.write_text(
        "import tests.test_a\n"
        "from tests.test_b import helper\n"
        "from tests import test_c, fakeapi\n"
        "def f():\n    from tests.test_d.sub import g\n"
        "from tests.support import kubeobj\nfrom tests.conftest import query\nfrom tests import fakeapi\n"
        "from .test_e import h\nfrom . import test_f, conftest\nfrom .support import kubeobj\n"
    )
    assert imports_of_test_modules(src) == [
        (1, "tests.test_a"), (2, "tests.test_b"), (3, "tests.test_c"), (5, "tests.test_d.sub"), (9, "tests.test_e"),
        (10, "tests.test_f"),
    ]
    assert imports_of_test_modules(src, "tests.support") == [
        (1, "tests.test_a"), (2, "tests.test_b"), (3, "tests.test_c"), (5, "tests.test_d.sub"),
    ]
    (tmp_path / "y.py").write_text("from ..test_g import h\n")
    assert imports_of_test_modules(tmp_path / "y.py", "tests.support") == [(1, "tests.test_g")]


def test_fakeapi_holds_no_object_factories() -> None:
    tree = ast.parse((TESTS / "fakeapi.py").read_text())
    defined = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    assert not defined & FACTORIES, f"object factories {sorted(defined & FACTORIES)} belong in tests/support/kubeobj.py"


def test_objects_come_from_kubeobj() -> None:
    calls = [
        f"{path.relative_to(REPO)}:{n.lineno}: fakeapi.{n.attr}"
        for path in _sources()
        for n in ast.walk(ast.parse(path.read_text(), str(path)))
        if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id == "fakeapi" and n.attr in FACTORIES
    ]
    assert not calls, "the object factories are in tests/support/kubeobj.py (kubeobj.service, ...):\n" + "\n".join(calls)
