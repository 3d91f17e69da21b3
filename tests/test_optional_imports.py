"""Optional packages are imported where they are used, through ``agent.optional.require``, so
that a plain ``pip install`` works and a missing extra gets one sentence instead of a traceback."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from agent.optional import EXTRAS, MissingDependency, require

REPO = Path(__file__).resolve().parents[1]
OPTIONAL = sorted({name.split(".")[0] for name in EXTRAS})
PACKAGES = ("agent", "sims", "robot")


def direct_imports(source: str) -> list[tuple[int, str]]:
    """(line, module) of every ``import X`` / ``from X import ...`` of an optional package."""
    found = []
    for node in ast.walk(ast.parse(source)):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
            [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
        found += [(node.lineno, n) for n in names if n.split(".")[0] in OPTIONAL]
    return found


def test_no_module_of_the_package_imports_an_optional_package_directly():
    hits = [f"{path.relative_to(REPO)}:{line}: import {name}"
            for package in PACKAGES for path in sorted((REPO / package).rglob("*.py"))
            for line, name in direct_imports(path.read_text())]
    assert not hits, "use agent.optional.require(...) instead:\n" + "\n".join(hits)


def test_the_check_sees_imports_at_any_depth():
    source = "import numpy\ndef f():\n    import h5py\n    from pyarrow import parquet\n"
    assert direct_imports(source) == [(3, "h5py"), (4, "pyarrow")]


def test_a_missing_package_is_one_sentence_naming_its_extra(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "h5py", None)  # what an uninstalled package looks like to import
    with pytest.raises(MissingDependency) as err:
        require("h5py", "reading a D4RL file")
    message = str(err.value)
    assert message == ("reading a D4RL file needs the optional package 'h5py', which is not installed; "
                       "install it with `pip install 'agent[io]'`.")
