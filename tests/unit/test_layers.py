"""The package's layers stay one-way, as its folders show them.

crypto/ (installed as zchat.crypto) imports nothing of zchat; the shared modules at the top of zchat/ import
neither side; the broker's side and the client's side never import each other; and the sans-I/O modules
import no zmq. Read from the source with `ast`, so a late import inside a function counts too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import ROOT

SANS_IO = ("zchat/protocol.py", "zchat/events.py", "zchat/broker/core.py", "zchat/broker/work.py")
SANS_IO_CLIENT = ("zchat/client/core.py", "zchat/client/session.py")


def imported(path: Path) -> set[str]:
    """Every module `path` imports, absolute names (relative imports resolved inside crypto/)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = "zchat.crypto" if node.level else ""
            module = ".".join(part for part in (base, node.module or "") if part)
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def sources(folder: str, recursive: bool = False) -> list[Path]:
    root = ROOT / folder
    return sorted(root.rglob("*.py") if recursive else root.glob("*.py"))


def offending(paths: list[Path], forbidden: tuple[str, ...]) -> list[str]:
    return [
        f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path.name} imports {name}"
        for path in paths
        for name in sorted(imported(path))
        if any(name == prefix or name.startswith(prefix + ".") for prefix in forbidden)
    ]


def test_the_import_reader_sees_every_kind_of_import(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("import zmq\nfrom zchat.client import core\n\n\ndef f():\n    from zchat.broker.store import X\n")
    assert offending([sample], ("zchat.broker", "zmq")) == [
        "sample.py imports zchat.broker.store",
        "sample.py imports zchat.broker.store.X",
        "sample.py imports zmq",
    ]


@pytest.mark.parametrize(
    ("folder", "forbidden"),
    [
        ("zchat", ("zchat.broker", "zchat.client")),
        ("zchat/broker", ("zchat.client",)),
        ("zchat/client", ("zchat.broker",)),
    ],
)
def test_no_layer_imports_one_above_it_or_the_other_side(folder, forbidden):
    assert offending(sources(folder), forbidden) == []


def test_the_sans_io_modules_import_no_zmq():
    assert offending([ROOT / name for name in SANS_IO + SANS_IO_CLIENT], ("zmq",)) == []


def test_crypto_imports_nothing_of_zchat_but_itself():
    outside = [
        f"{path.name} imports {name}"
        for path in sources("crypto")
        for name in sorted(imported(path))
        if name.startswith("zchat") and not name.startswith("zchat.crypto")
    ]
    assert outside == []
    assert any("zchat.crypto.keys" in imported(path) for path in sources("crypto"))  # its own relative imports
