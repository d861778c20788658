"""The package's layers stay one-way, as its folders show them.

crypto/ (installed as zchat.crypto) imports nothing of zchat but itself and the error root (zchat.errors, which
imports nothing); the shared modules at the top of zchat/
import neither side; the broker's side and the client's side never import each other; the package imports none
of the repository's other top-level names (an installed zchat has none of them); and the sans-I/O modules
import no zmq. Read from the source with `ast`, so an import inside a function counts too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import ROOT

SANS_IO = (
    "zchat/protocol/__init__.py",
    "zchat/protocol/events.py",
    "zchat/events.py",
    "zchat/broker/core.py",
    "zchat/broker/work.py",
    "zchat/client/core.py",
    "zchat/client/session.py",
)
# Top-level names in the repository that are not installed: importing one works here and fails installed.
REPOSITORY_ONLY = (
    "crypto",
    "chat",
    "bots",
    "bench",
    "soak",
    "attack",
    "fuzz",
    "harness",
    "tests",
    "broker",
    "chat_client",
)


def module_name(path: Path, root: Path = ROOT) -> str:
    """The installed name of a source file: crypto/x.py is zchat.crypto.x."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[0] == "crypto":
        parts.insert(0, "zchat")
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported(path: Path, root: Path = ROOT) -> set[str]:
    """Every module `path` imports, as absolute names (relative imports resolved from its own package)."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1]) if node.level else ""
            module = ".".join(part for part in (base, node.module or "") if part)
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def sources(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


def offending(paths: list[Path], forbidden: tuple[str, ...], root: Path = ROOT) -> list[str]:
    return [
        f"{path.relative_to(root)} imports {name}"
        for path in paths
        for name in sorted(imported(path, root))
        if any(name == prefix or name.startswith(prefix + ".") for prefix in forbidden)
    ]


def test_the_import_reader_sees_every_kind_of_import(tmp_path):
    (tmp_path / "zchat" / "broker").mkdir(parents=True)
    sample = tmp_path / "zchat" / "broker" / "sample.py"
    sample.write_text(
        "import zmq\nfrom . import core\nfrom ..client import session\n\n\ndef f():\n    from zchat.client.x import X\n"
    )
    assert offending([sample], ("zchat.client", "zmq"), tmp_path) == [
        "zchat/broker/sample.py imports zchat.client",
        "zchat/broker/sample.py imports zchat.client.session",
        "zchat/broker/sample.py imports zchat.client.x",
        "zchat/broker/sample.py imports zchat.client.x.X",
        "zchat/broker/sample.py imports zmq",
    ]
    assert "zchat.broker.core" in imported(sample, tmp_path)


@pytest.mark.parametrize(
    ("folder", "forbidden"),
    [
        ("zchat/broker", ("zchat.client",)),
        ("zchat/client", ("zchat.broker",)),
    ],
)
def test_the_two_sides_never_import_each_other(folder, forbidden):
    assert offending(sources(folder), forbidden) == []


def test_the_shared_modules_import_neither_side():
    shared = sorted((ROOT / "zchat").glob("*.py")) + sources("zchat/protocol")
    assert offending(shared, ("zchat.broker", "zchat.client")) == []


def test_crypto_imports_nothing_of_zchat_but_itself_and_the_error_root():
    outside = [
        f"{path.name} imports {name}"
        for path in sources("crypto")
        for name in sorted(imported(path))
        if name.startswith("zchat") and not name.startswith(("zchat.crypto", "zchat.errors"))
    ]
    assert outside == []
    assert any("zchat.crypto.keys" in imported(path) for path in sources("crypto"))  # its own relative imports


def test_the_package_imports_nothing_that_is_not_installed():
    assert offending(sources("zchat") + sources("crypto"), REPOSITORY_ONLY) == []


def test_the_sans_io_modules_import_no_zmq():
    assert offending([ROOT / name for name in SANS_IO], ("zmq",)) == []


def test_the_error_root_imports_nothing():
    assert imported(ROOT / "zchat" / "errors.py") == set()
