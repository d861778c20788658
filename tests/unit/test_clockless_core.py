"""The broker's rules read no clock and no file: time and who is registered come in as inputs.

Read from the source with `ast`: no module of the core imports `time`, `os` or `pathlib`, none calls a `time.*`
function or `.stat()` on anything, and none reaches the key files' `Registry` (its I/O loop hands it a
`RegisteredKeys` snapshot instead).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import ROOT

CORE = ("core", "outbound", "login", "sessions", "presence", "archive", "work")
FORBIDDEN = ("time", "os", "pathlib")


def findings(path: Path) -> list[str]:
    """Each place in `path` that imports a clock, the file system or the registry, or calls a clock or a stat."""
    found: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        where = f"line {getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Import):
            found += [f"{where}: imports {a.name}" for a in node.names if a.name.split(".")[0] in FORBIDDEN]
        elif isinstance(node, ast.ImportFrom):
            if (node.module or "").split(".")[0] in FORBIDDEN:
                found.append(f"{where}: imports from {node.module}")
            found += [f"{where}: imports {a.name}" for a in node.names if a.name == "Registry"]
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = node.func.value
            if isinstance(owner, ast.Name) and owner.id == "time":
                found.append(f"{where}: calls time.{node.func.attr}")
            elif node.func.attr in ("stat", "lstat", "monotonic", "perf_counter"):
                found.append(f"{where}: calls .{node.func.attr}()")
    return found


def test_the_reader_sees_clocks_and_stats(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import time\nfrom os import stat\nfrom zchat.keystore import Registry\n\n\n"
        "def f(path):\n    return time.monotonic(), path.stat()\n"
    )
    assert len(findings(sample)) == 5


@pytest.mark.parametrize("name", CORE)
def test_the_core_reads_no_clock_and_no_file(name):
    assert findings(ROOT / "zchat" / "broker" / f"{name}.py") == []
