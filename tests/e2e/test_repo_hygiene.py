"""What the repository tells and leaves behind: `make help` lists every target, the archive bot writes under
data/, and what programs write there is git-ignored."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

from tests.conftest import ROOT, WAIT, run_env, wait_for
from zchat.events import Joined
from zchat.keystore import create_client_key


def test_make_help_lists_every_target():
    env = {k: v for k, v in os.environ.items() if k not in {"MAKEFLAGS", "MFLAGS", "MAKELEVEL"}}
    shown = subprocess.run(
        ["make", "--no-print-directory", "-C", str(ROOT), "help"],
        env=env,
        capture_output=True,
        text=True,
        timeout=WAIT,
        check=True,
    ).stdout
    phony = re.search(r"^\.PHONY:(.*)$", (ROOT / "Makefile").read_text(), re.MULTILINE)
    assert phony is not None
    targets = set(phony.group(1).split()) - {"help"}
    listed = set(re.findall(r"^make ([\w-]+)", shown, re.MULTILINE))
    assert targets - listed == set(), f"make help does not list {sorted(targets - listed)}"
    assert {"lint", "typecheck", "unit", "clean"} <= listed


def test_the_archive_bot_writes_under_data_which_git_ignores(broker, connect, tmp_path):
    create_client_key(broker.keys, "archive", bits=2048)
    config = tmp_path / "config.json"
    config.write_text(
        json.dumps({"server_ip": "127.0.0.1", "server_port": broker.port, "keys_dir": str(broker.keys.root)})
    )
    bot = subprocess.Popen(
        [sys.executable, "-m", "bots.archive", "--config", str(config)],
        cwd=tmp_path,
        env=run_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        alice = connect(broker, "alice")
        wait_for(alice, lambda e: isinstance(e, Joined) and e.user.name == "archive", timeout=20)
        alice.send("for the record")
        archive = tmp_path / "data" / "archive.jsonl"
        deadline = time.monotonic() + WAIT
        while not (archive.exists() and "for the record" in archive.read_text()):
            assert time.monotonic() < deadline, f"{archive} never got the message"
            alice.receive(timeout=0.05)  # keeps alice's heartbeats going while waiting
        assert json.loads(archive.read_text().splitlines()[-1])["text"] == "for the record"
        assert not (tmp_path / "archive.jsonl").exists()
    finally:
        bot.terminate()
        bot.wait(WAIT)
    ignored = subprocess.run(
        ["git", "-C", str(ROOT), "check-ignore", "data/archive.jsonl", "archive.jsonl", "data/zchat.db"],
        capture_output=True,
        text=True,
        timeout=WAIT,
    )
    assert ignored.stdout.split() == ["data/archive.jsonl", "archive.jsonl", "data/zchat.db"], ignored.stderr
