"""broker.py at start and at its console, as an operator meets it.

A config file copied elsewhere never makes a new broker key pair unasked; the console says when Ctrl-D closed
it; a broker killed with SIGKILL leaves no socket directory behind once the next one has started.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pexpect
import pytest

from harness.process import BROKER, LISTENING, BrokerProcess, ServerProcess
from tests.conftest import (
    ROOT,
    TEST_CONFIG,
    WAIT,
    broker_config,
    broker_on_terminal,
    copy_checkout,
    run_env,
)
from tests.e2e.helpers import assert_one_line_error, run_broker_to_the_end
from zchat.broker.main import CONSOLE_CLOSED

START_WAIT = 30.0  # a broker that makes a 3072-bit key pair first


def run_broker(
    log: Path, config: Path | None, *args: str, cwd: Path, env: dict[str, str] | None = None
) -> ServerProcess:
    """broker.py (`cwd`'s own with no config, or this checkout's with `config`), its output appended to `log`."""
    command = [str(BROKER), "--config", str(config)] if config is not None else ["broker.py"]
    broker = ServerProcess(log, cwd, "the broker")
    return broker.launch([sys.executable, *command, *args], env=run_env() if env is None else env)


def wait_until_listening(broker: ServerProcess) -> str:
    """The broker's output up to its "listening on" line (it must get there within START_WAIT)."""
    match = broker.wait_for_log(LISTENING.pattern, START_WAIT, since=broker.log_offset)
    return broker.log(broker.log_offset)[: match.end()]


def stop(broker: ServerProcess) -> None:
    status = broker.terminate(WAIT)
    assert status == 0, broker.log()


@pytest.mark.slow
def test_a_config_elsewhere_never_makes_a_new_key_pair_unasked(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    config = elsewhere / "config.json"
    config.write_text(json.dumps({**TEST_CONFIG, "workers": 0}))
    # cwd: the way `make broker CONFIG=/elsewhere/config.json` runs it
    refused = run_broker_to_the_end(ROOT, "--config", str(config))
    assert refused.returncode == 1, refused.stderr
    line = assert_one_line_error(refused.stderr, "broker: error:", str(elsewhere / "keys"), "--create-keys")
    assert str(ROOT / "keys") in line  # where the real keys are
    assert not (elsewhere / "keys").exists()
    assert not (elsewhere / "data").exists()

    # Asked for: a new key pair there, and the start-up log says where the keys and the data are.
    proc = run_broker(tmp_path / "broker.log", config, "--create-keys", cwd=ROOT)
    try:
        started = wait_until_listening(proc)
        assert f"created a new broker key pair {elsewhere / 'keys' / 'broker.pem'}" in started
        assert f"keys: {elsewhere / 'keys'} (config {config})" in started
        assert f"data: {elsewhere / 'data' / 'zchat.db'} did not exist: a new database" in started
        stop(proc)
    finally:
        proc.kill()
    assert (elsewhere / "keys" / "broker.pem").is_file()

    # Once there, the key pair is used without being asked again.
    proc = run_broker(tmp_path / "broker.log", config, cwd=ROOT)
    try:
        started = wait_until_listening(proc)
        assert "created" not in started
        assert "a new database" not in started
        assert f"data: {elsewhere / 'data' / 'zchat.db'}" in started
        stop(proc)
    finally:
        proc.kill()


def test_keys_dir_on_the_command_line_wins_over_the_config(tmp_path, keyring):
    shutil.copytree(keyring.root, tmp_path / "keyring")
    config = tmp_path / "config.json"
    config.write_text(json.dumps({**TEST_CONFIG, "workers": 0, "keys_dir": "nowhere"}))
    proc = run_broker(tmp_path / "broker.log", config, "--keys-dir", str(tmp_path / "keyring"), cwd=tmp_path)
    try:
        started = wait_until_listening(proc)
        assert f"keys: {tmp_path / 'keyring'} (config {config})" in started
        assert "created" not in started  # the broker key of the keyring, not a new one
        stop(proc)
    finally:
        proc.kill()
    assert not (tmp_path / "nowhere").exists()

    refused = run_broker_to_the_end(tmp_path, "--config", str(config), "--keys-dir", str(tmp_path / "empty"))
    assert refused.returncode == 1
    assert_one_line_error(refused.stderr, f"no broker key in {tmp_path / 'empty'} (--keys-dir)", "--create-keys")


def test_a_fresh_clone_makes_its_key_pair_in_its_own_keys_dir(tmp_path):
    clone = copy_checkout(tmp_path / "clone", venv=False)
    (clone / "config.json").write_text(json.dumps({**TEST_CONFIG, "workers": 0}))
    env = {**run_env(), "PYTHONPATH": str(clone)}
    # `make broker` on a fresh clone: the default config, next to broker.py
    proc = run_broker(tmp_path / "broker.log", None, cwd=clone, env=env)
    try:
        started = wait_until_listening(proc)
        assert "created a new broker key pair keys/broker.pem" in started
        assert " WARNING " not in started  # a first start is normal: nothing to warn about
        stop(proc)
    finally:
        proc.kill()
    assert (clone / "keys" / "broker.pub").is_file()


def test_ctrl_d_at_the_console_says_it_closed_and_the_broker_keeps_running(tmp_path, keyring):
    child = broker_on_terminal(broker_config(tmp_path, keyring, workers=0), tmp_path)
    try:
        child.expect("listening on")
        child.sendline("/who")
        child.expect_exact("online: nobody")
        child.sendeof()
        child.expect_exact(CONSOLE_CLOSED)
        assert child.isalive()
        child.kill(signal.SIGTERM)
        child.expect(pexpect.EOF)
        child.close()
        assert child.exitstatus == 0, child.before
        assert "Traceback" not in child.before
    finally:
        if child.isalive():
            child.terminate(force=True)


@pytest.fixture
def private_tmpdir(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A temporary directory for the brokers started here only (short: it holds an ipc:// socket path)."""
    directory = Path(tempfile.mkdtemp(prefix="zt"))
    monkeypatch.setenv("TMPDIR", str(directory))
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def test_a_broker_killed_with_sigkill_leaves_no_socket_directory_after_the_next_start(
    tmp_path, keyring, private_tmpdir
):
    def workers_dirs() -> list[Path]:
        return sorted(private_tmpdir.glob("zchat-workers-*"))

    shutil.copytree(keyring.root, tmp_path / "keys")
    broker = BrokerProcess(tmp_path, {**TEST_CONFIG, "workers": 1, "keys_dir": "keys"}).start()
    assert broker.proc is not None
    (left_behind,) = workers_dirs()
    broker.proc.send_signal(signal.SIGKILL)
    broker.proc.wait(WAIT)
    assert left_behind.exists()  # nobody could remove it: the broker had no say

    broker.start()  # the next broker, as the same user: the dead one's directory goes
    try:
        (current,) = workers_dirs()
        assert current != left_behind
        assert not left_behind.exists()
        assert f"cleaned up {left_behind}, left behind by an earlier broker" in broker.log()
    finally:
        broker.terminate()
    assert workers_dirs() == []
    assert os.listdir(private_tmpdir) == []


def test_an_unexpected_error_in_the_loop_exits_70_so_the_supervisor_starts_it_again(tmp_path, keyring, monkeypatch):
    """A bug outside the per-frame safety nets ends the broker with os.EX_SOFTWARE, which its supervisor restarts
    (status 1 is kept for a broker that refuses to start, and is not restarted)."""
    from zchat.broker import main as broker_main
    from zchat.broker.supervisor import crashed

    config = broker_config(tmp_path, keyring, workers=0)

    def boom(self: broker_main.Broker) -> None:
        raise RuntimeError("a bug in the loop")

    monkeypatch.setattr(broker_main.Broker, "run", boom)
    monkeypatch.setattr(broker_main.signal, "signal", lambda *args: None)  # leave pytest's own handlers alone
    monkeypatch.setattr(broker_main.sys, "stdin", None)  # no console thread
    status = broker_main.main(["--config", str(config), "--no-supervisor"])
    assert status == os.EX_SOFTWARE
    assert crashed(status)
