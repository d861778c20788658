"""`pip install` of the package into a fresh venv: the installed commands work from any directory.

The package is built from what git tracks (copied out, so no build files land in the repository) and
installed with pip into a new virtual environment. Nothing of the repository is on the path afterwards:
the commands run in a directory of their own, without PYTHONPATH, and must find everything installed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, WAIT
from tests.e2e.helpers import Proc, assert_one_line_error

INSTALL_WAIT = 240.0  # a new venv, setuptools for the build, and the four dependencies (from pip's cache if warm)
START_WAIT = 30.0  # the broker makes its 3072-bit key pair and starts a worker


def _installed(tmp_path: Path) -> Path:
    """A fresh venv with the package pip-installed from a copy of what git tracks; returns its bin directory.

    Only tracked files: a module that was never added to git is missing here, as it would be from a clone.
    """
    source = tmp_path / "source"
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True, timeout=WAIT)
    for name in tracked.stdout.decode().split("\0"):
        if name and os.path.lexists(ROOT / name):  # not a tracked file deleted since
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name, follow_symlinks=False)  # zchat/crypto stays a link
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=INSTALL_WAIT)
    pip = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check", str(source)],
        capture_output=True,
        text=True,
        timeout=INSTALL_WAIT,
        env=_clean_env(),
    )
    assert pip.returncode == 0, f"pip install failed:\n{pip.stdout}\n{pip.stderr}"
    return venv / "bin"


def _clean_env() -> dict[str, str]:
    """The environment without anything pointing at the repository (no PYTHONPATH) or a passphrase."""
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "PASSPHRASE", "VIRTUAL_ENV"}}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _top_level_names(bin_dir: Path) -> set[str]:
    """What the zchat distribution put at the top of site-packages (from its RECORD)."""
    site = subprocess.run(
        [str(bin_dir / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
        timeout=WAIT,
    ).stdout.strip()
    (record,) = Path(site).glob("zchat-*.dist-info/RECORD")
    names = {line.split(",")[0].split("/")[0] for line in record.read_text().splitlines()}
    return {name for name in names if not name.endswith(".dist-info") and name != ".."}


def run(bin_dir: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**_clean_env(), "PASSPHRASE": ""}
    return subprocess.run(
        [str(bin_dir / args[0]), *args[1:]], cwd=cwd, env=env, capture_output=True, text=True, timeout=START_WAIT
    )


@pytest.mark.slow
def test_pip_install_gives_commands_that_chat_from_any_directory(tmp_path):
    bin_dir = _installed(tmp_path)
    assert _top_level_names(bin_dir) == {"zchat"}  # no generic `crypto`, `chat`, `bots` in site-packages

    # A broker's directory somewhere else, set up with the installed commands only.
    home = tmp_path / "anywhere"
    server = home / "server"
    server.mkdir(parents=True)
    (server / "config.json").write_text(json.dumps({"server_ip": "127.0.0.1", "server_port": 0, "workers": 1}))
    made = run(bin_dir, home, "zchat-keys", "alice", "--config", "server/config.json")  # keys_dir of the config
    assert made.returncode == 0, made.stderr
    assert (server / "keys" / "private" / "alice.pem").is_file()
    made = run(bin_dir, home, "zchat-keys", "bob", "--keys-dir", "server/keys")
    assert made.returncode == 0, made.stderr
    assert "fingerprint SHA256:" in made.stdout

    # Installed, the broker never makes a key pair unasked; --create-keys does.
    refused = run(bin_dir, home, "zchat-broker", "--config", "server/config.json")
    assert refused.returncode == 1
    line = assert_one_line_error(refused.stderr, "no broker key in", str(server / "keys"), "--create-keys")
    assert line.startswith("zchat-broker: error:")  # named as it was started
    procs: list[Proc] = []

    def start(name: str, *args: str) -> Proc:
        env = {**_clean_env(), "PASSPHRASE": ""}
        procs.append(Proc([str(bin_dir / args[0]), *args[1:]], home, env, name, command=True, group=True))
        return procs[-1]

    try:
        broker = start("zchat-broker", "zchat-broker", "--config", "server/config.json", "--create-keys")
        port = broker.expect_err(r"listening on tcp://127\.0\.0\.1:(\d+)", START_WAIT).group(1)
        bob = start(
            "zchat (bob)",
            "zchat",
            "--json",
            "--host",
            "127.0.0.1",
            "--port",
            port,
            "--user",
            "bob",
            "--keys-dir",
            "server/keys",
        )
        bob.expect_line(r'"type": "welcome"')
        alice = start("zchat (alice)", "zchat", "--config", "server/config.json", "--port", port, "--user", "alice")
        alice.send("hello from an installed client")
        shown = json.loads(bob.expect_line(r'"type": "chat"').string)
        assert (shown["from"], shown["text"]) == ("alice", "hello from an installed client")
        alice.close_stdin()
        assert alice.wait() == 0, alice.transcript()
        bob.close_stdin()
        assert bob.wait() == 0, bob.transcript()
        broker.popen.terminate()
        assert broker.wait(START_WAIT) == 0, broker.transcript()
        assert "Traceback" not in broker.err.text()
    finally:
        for proc in procs:
            proc.kill()
