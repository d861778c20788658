"""Values given to make (NAME=, BOT=, CONFIG=, ARGS=, DURATION=, FUZZ_SECONDS=, PYTHON=) are data, never code.

Each attempt at shell or make injection must stop make before any recipe runs,
with one line on stderr naming the variable, a non-zero status and no file
written. Everything runs in a copy of the repository (the venv linked in), so
the real keys/ is never touched; no broker or bot is started.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import copy_checkout
from zchat import crypto
from zchat.keystore import KeyLayout, ensure_broker_keys

STAMP = ".venv/.runtime-installed"

# Each payload tries to run `touch OWNED`; {owned} is replaced by a path in the test's tmp_path.
PAYLOADS = {
    "quote": 'x"; touch {owned}; echo "',
    "semicolon": "x; touch {owned}",
    "substitution": "$(touch {owned})",
    "backticks": "`touch {owned}`",
    "make-shell": "$(shell touch {owned})",
    "newline": "x\ntouch {owned}",
}

# (variable, goal and any other assignments it needs)
TARGETS = [
    ("NAME", ["keys"]),
    ("NAME", ["fingerprint"]),
    ("BOT", ["bot"]),
    ("CONFIG", ["broker"]),
    ("CONFIG", ["client"]),
    ("CONFIG", ["bot", "BOT=echo"]),
    ("CONFIG", ["keys", "NAME=alice"]),
    ("CONFIG", ["fingerprint", "NAME=alice"]),
    ("ARGS", ["bench"]),
    ("DURATION", ["soak"]),
    ("KILL_BROKER_EVERY", ["soak"]),
    ("TO", ["backup"]),
    ("CONFIG", ["backup", "TO=copy.db"]),
    ("FUZZ_SECONDS", ["fuzz"]),
]


def copy_repo(dest: Path, *, with_venv: bool = True) -> Path:
    return copy_checkout(dest, packages=("bots", "bench", "soak", "fuzz", "harness"), venv=with_venv)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One copy for the whole module: every refused call must leave it as it was."""
    return copy_repo(tmp_path_factory.mktemp("make-vars") / "repo")


def make(repo: Path, *args: str, stamp_is_fresh: bool = True) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "MAKEFLAGS", "MFLAGS", "MAKELEVEL"}}
    env["PASSPHRASE"] = ""  # no passphrase, and no prompt
    options = ["-o", STAMP] if stamp_is_fresh else []  # -o: never (re)install into the shared venv
    return subprocess.run(
        ["make", "--no-print-directory", "-C", str(repo), *options, *args],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )


def files_in(repo: Path) -> set[str]:
    """Every file and directory in the copy, except the linked venv and Python's caches."""
    found = set()
    for directory, subdirs, files in os.walk(repo):
        subdirs[:] = [d for d in subdirs if d not in {".venv", "__pycache__"}]
        found.update(os.path.join(directory, name) for name in subdirs + files)
    return found


def assert_refused(result: subprocess.CompletedProcess[str], variable: str, owned: Path) -> None:
    assert not owned.exists(), f"the payload ran:\n{result.stdout}{result.stderr}"
    assert result.returncode != 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got:\n{result.stderr}"
    assert f"{variable} must be" in lines[0]
    assert result.stdout == ""  # stopped before any recipe ran


@pytest.mark.parametrize("payload", PAYLOADS.values(), ids=PAYLOADS.keys())
@pytest.mark.parametrize(("variable", "goal"), TARGETS, ids=[f"{v}-{g[0]}" for v, g in TARGETS])
def test_an_injected_value_is_refused_before_any_recipe_runs(repo, tmp_path, variable, goal, payload):
    owned = tmp_path / "owned"
    before = files_in(repo)
    result = make(repo, *goal, f"{variable}={payload.format(owned=owned)}")
    assert_refused(result, variable, owned)
    assert files_in(repo) == before
    assert not (repo / "keys").exists()


@pytest.mark.parametrize("payload", PAYLOADS.values(), ids=PAYLOADS.keys())
def test_an_injected_python_is_refused_before_the_venv_is_made(tmp_path, payload):
    repo = copy_repo(tmp_path / "repo", with_venv=False)
    owned = tmp_path / "owned"
    result = make(repo, "keys", "NAME=zed", f"PYTHON={payload.format(owned=owned)}", stamp_is_fresh=False)
    assert_refused(result, "PYTHON", owned)
    assert not (repo / ".venv").exists()


def test_make_never_expands_any_command_line_variable(repo, tmp_path):
    """`make help FOO='$(shell ...)'` would run the shell when make exports FOO to the recipe."""
    owned = tmp_path / "owned"
    result = make(repo, "help", f"UNRELATED=$(shell touch {owned})")
    assert result.returncode == 0, result.stderr
    assert not owned.exists()
    assert "make keys NAME=alice" in result.stdout


def test_an_unknown_bot_is_named(repo):
    result = make(repo, "bot", "BOT=nope")
    assert result.returncode != 0
    assert "no bot named 'nope'; bots: archive dice echo" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("value", ["", "1.5", "-1", "60s"])
def test_durations_are_whole_seconds(repo, tmp_path, value):
    for variable, goal in (("DURATION", "soak"), ("KILL_BROKER_EVERY", "soak"), ("FUZZ_SECONDS", "fuzz")):
        assert_refused(make(repo, goal, f"{variable}={value}"), variable, tmp_path / "owned")


def test_bench_args_are_split_into_words(repo):
    """ARGS="--clients 200 --help" reaches bench's argparse as three words (one word would be refused)."""
    result = make(repo, "bench", "ARGS=--clients 200 --help")
    assert result.returncode == 0, result.stderr
    assert "usage: python -m bench" in result.stdout


def test_a_name_that_looks_like_an_option_stays_a_name(repo):
    """`make fingerprint NAME=--help` looks up the user `--help`; it does not print the program's help."""
    result = make(repo, "fingerprint", "NAME=--help")
    assert result.returncode != 0
    assert "usage:" not in result.stdout + result.stderr
    assert "--help.pub" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_command_line_values_reach_programs_literally(tmp_path):
    """PASSPHRASE='...' on make's command line still reaches `make keys`, `$` and quotes included."""
    repo = copy_repo(tmp_path / "repo")
    ensure_broker_keys(KeyLayout(repo / "keys"), bits=2048)  # only the user's key is made by make
    passphrase = "pa$(ss) `w`'o\"rd $$HOME"
    result = make(repo, "keys", "NAME=zed", f"PASSPHRASE={passphrase}")
    assert result.returncode == 0, result.stdout + result.stderr
    key_file = repo / "keys" / "private" / "zed.pem"
    assert b"ENCRYPTED" in key_file.read_bytes()
    crypto.load_private_key(key_file, passphrase)  # raises if make changed a single character
