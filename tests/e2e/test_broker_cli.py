"""broker.py as its operator runs it: console commands, signals, closed stdin, bad config files."""

from __future__ import annotations

import json
import signal
import subprocess

import pytest

from tests.conftest import WAIT
from tests.e2e.helpers import assert_one_line_error, run_broker_to_the_end


def logged_in(client, broker, *names):
    procs = [client(broker, name) for name in names]
    for proc, name in zip(procs, names, strict=True):
        proc.expect_line(rf"\* logged in as {name};")
    return procs


def assert_everyone_told_and_stopped(broker, procs, reason):
    for proc in procs:
        proc.expect_line(rf"\* the broker is shutting down \({reason}\); goodbye$")
        assert proc.wait() == 0, proc.transcript()
        assert "Traceback" not in proc.err.text()
    assert broker.proc.wait(WAIT) == 0, broker.log()
    log = broker.log()
    assert f"shutting down: {reason}" in log
    assert "broker stopped" in log
    assert "Traceback" not in log


@pytest.mark.slow
def test_console_who_and_shutdown(console_broker, client):
    broker = console_broker()
    procs = logged_in(client, broker, "alice", "bob")
    broker.proc.stdin.write(b"/who\n")
    broker.proc.stdin.flush()
    broker.wait_for_log(r"online: alice, bob")
    broker.proc.stdin.write(b"/shutdown\n")
    broker.proc.stdin.flush()
    assert_everyone_told_and_stopped(broker, procs, "/shutdown on the broker console")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signals_stop_the_broker_gracefully(broker, client, signum):
    procs = logged_in(client, broker, "alice", "bob")
    broker.proc.send_signal(signum)
    assert_everyone_told_and_stopped(broker, procs, signum.name)


@pytest.mark.slow
@pytest.mark.parametrize("stdin", ["devnull", "closed-pipe"])
def test_a_broker_whose_stdin_ended_keeps_running(make_broker, console_broker, client, stdin):
    if stdin == "devnull":
        broker = make_broker()
    else:
        broker = console_broker()
        broker.proc.stdin.close()
    # Give end of input the chance to stop it (it must not).
    with pytest.raises(subprocess.TimeoutExpired):
        broker.proc.wait(0.5)
    alice, bob = logged_in(client, broker, "alice", "bob")
    alice.send("still serving")
    bob.expect_line(r"\balice: still serving$")
    assert broker.alive(), broker.log()
    assert "console closed" not in broker.log()  # a service's closed stdin is not news: not a word about it
    broker.proc.send_signal(signal.SIGTERM)
    assert_everyone_told_and_stopped(broker, [alice, bob], "SIGTERM")


def test_no_config_here_says_to_give_one(tmp_path):
    result = run_broker_to_the_end(tmp_path)
    assert result.returncode == 1
    assert_one_line_error(result.stderr, "broker: error: no config.json in", str(tmp_path), "--config FILE")


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ('{"server_ip": "127.0.0.1", "server_port": ', "not valid JSON"),
        (json.dumps({"server_ip": "127.0.0.1", "admins": ["admin"]}), "'server_port' is missing"),
        (json.dumps({"server_ip": "300.1.2.3", "server_port": 5000}), "'server_ip' is not an IP address"),
        (json.dumps({"server_ip": "localhost", "server_port": 5000}), "'server_ip' is not an IP address"),
        (json.dumps({"server_ip": "::1", "server_port": 5000}), "IPv6 addresses are not supported"),
        (
            json.dumps({"server_ip": "127.0.0.1", "server_port": 5000, "presence_interval": -1}),
            "'presence_interval' must be a number from 0 to 60",
        ),
    ],
    ids=["invalid-json", "missing-port", "bad-ip", "hostname", "ipv6", "presence-interval"],
)
def test_bad_config_exits_1_with_one_line(tmp_path, content, fragment):
    config = tmp_path / "bad.json"
    config.write_text(content)
    result = run_broker_to_the_end(tmp_path, "--config", str(config))
    assert result.returncode == 1, result.stderr
    line = assert_one_line_error(result.stderr, "broker: error:", str(config), fragment)
    assert line.startswith("broker: error:")
    assert not (tmp_path / "keys").exists()  # nothing was created on the way out
