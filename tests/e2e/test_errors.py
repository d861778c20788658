"""Mistakes a person can make end chat_client.py with one line naming the problem and a non-zero status."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import WAIT, free_port, run_env
from tests.e2e.helpers import CLIENT, assert_one_line_error
from zchat.keystore import create_client_key


def run_client(cwd: Path, *args: str, env: dict[str, str] | None = None, stdin: str | None = None):
    return subprocess.run(
        [sys.executable, CLIENT, *args],
        cwd=cwd,
        env=run_env() if env is None else env,
        input=stdin,
        stdin=None if stdin is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=WAIT + 5,
    )


def login_args(broker, user: str, *extra: str) -> list[str]:
    return ["--host", "127.0.0.1", "--port", str(broker.port), "--user", user, "--connect-timeout", "3", *extra]


def assert_failed(result, *fragments: str) -> str:
    assert result.returncode != 0, result.stdout + result.stderr
    line = assert_one_line_error(result.stderr, "chat_client: error:", *fragments)
    assert "logged in" not in result.stdout
    return line


def test_broker_unreachable(tmp_path, keyring):
    args = ["--host", "127.0.0.1", "--port", str(free_port()), "--user", "alice"]
    keys = ["--key", str(keyring.private("alice")), "--broker-key", str(keyring.layout.broker_public)]
    started = time.monotonic()
    result = run_client(tmp_path, *args, *keys, "--connect-timeout", "1")
    assert time.monotonic() - started < 8
    assert_failed(result, "did not answer within 1s")


def test_key_file_missing(broker, tmp_path):
    missing = tmp_path / "nonexistent.pem"
    result = run_client(broker.workdir, *login_args(broker, "alice", "--key", str(missing)))
    assert_failed(result, str(missing), "not found")


def test_default_key_file_missing_on_another_machine(tmp_path, broker):
    # No keys/ here at all: the client must say which file it looked for and how to make one.
    result = run_client(tmp_path, *login_args(broker, "alice"))
    assert_failed(result, "keys/private/alice.pem", "make keys NAME=alice")


@pytest.mark.slow
def test_passphrase_protected_key(broker, client):
    create_client_key(broker.keys, "dave", passphrase="right", bits=2048)
    args = login_args(broker, "dave")

    wrong = run_client(broker.workdir, *args, env={**run_env(), "PASSPHRASE": "wrong"})
    assert_failed(wrong, "dave.pem", "wrong passphrase")

    missing = run_client(broker.workdir, *args)
    assert_failed(missing, "dave.pem", "PASSPHRASE")

    dave = client(broker, "dave", env={**run_env(), "PASSPHRASE": "right"})
    dave.expect_line(r"\* logged in as dave;")
    dave.close_stdin()
    assert dave.wait() == 0, dave.transcript()


@pytest.mark.parametrize(
    ("user", "key_owner"),
    [("mallory", "mallory"), ("alice", "mallory")],
    ids=["unregistered-name", "registered-name-wrong-key"],
)
def test_login_refused(broker, user, key_owner):
    result = run_client(broker.workdir, *login_args(broker, user, "--key", str(broker.keys.client_private(key_owner))))
    assert_failed(result, f"login refused: the broker does not accept '{user}'")
    assert broker.alive()


@pytest.mark.slow
def test_wrong_broker_key(broker):
    other = broker.keys.client_public("alice")  # a valid public key, just not the broker's
    result = run_client(broker.workdir, *login_args(broker, "alice", "--broker-key", str(other)))
    assert_failed(result, "broker key")
    assert broker.alive()


@pytest.mark.slow
def test_no_broker_key_says_where_to_get_one(broker):
    missing = broker.workdir / "nowhere" / "broker.pub"
    result = run_client(broker.workdir, *login_args(broker, "alice", "--broker-key", str(missing)))
    assert_failed(result, f"{missing}: no broker key there", "copy keys/broker.pub from the broker's machine")


def test_broker_key_file_is_not_a_public_key(broker):
    result = run_client(broker.workdir, *login_args(broker, "alice", "--broker-key", str(broker.keys.broker_private)))
    assert_failed(result, "broker.pem", "PRIVATE key")


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("[1, 2", "not valid JSON"),
        (json.dumps({"server_ip": "127.0.0.1"}), "'server_port' is missing"),
        (json.dumps({"server_ip": "1.2.3.999", "server_port": 5000}), "'server_ip' is not an IP address"),
    ],
    ids=["invalid-json", "missing-port", "bad-ip"],
)
def test_client_with_a_bad_config(tmp_path, content, fragment):
    config = tmp_path / "client.json"
    config.write_text(content)
    result = run_client(tmp_path, "--config", str(config), "--host", "127.0.0.1", "--port", "5000", "--user", "a")
    assert result.returncode == 1
    assert_failed(result, str(config), fragment)


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--user", "not a name!"], "invalid user name"),
        (["--user", "alice", "--port", "99999"], "port must be a number from 1 to 65535"),
        (["--user", "alice", "--host", "not an ip!"], "not an IPv4 address"),
    ],
    ids=["bad-name", "bad-port", "bad-host"],
)
def test_with_a_user_given_piped_stdin_is_never_taken_for_answers(tmp_path, args, fragment):
    # With --user, stdin holds the messages only: what is wrong is one line, and no line is read as an answer.
    result = run_client(tmp_path, *args, stdin="127.0.0.1\n5000\nalice\nhello\n")
    assert result.returncode == 1
    assert_failed(result, fragment)
    assert "Server IP" not in result.stderr


@pytest.mark.parametrize(
    ("answers", "fragment"),
    [
        ("not an ip!\n5000\nalice\n", "server ip (line read from stdin): 'not an ip!'"),
        ("127.0.0.1\n99999\nalice\n", "server port (line read from stdin): port must be a number"),
        ("127.0.0.1\n5000\nnot a name!\n", "username (line read from stdin): invalid user name"),
        ("127.0.0.1\n", "end of input where the server port was expected"),
    ],
    ids=["bad-ip", "bad-port", "bad-name", "too-few"],
)
def test_a_wrong_answer_on_piped_stdin_is_one_line(tmp_path, answers, fragment):
    # Without --user, the first lines answer the prompts (DESIGN 4): a wrong one is not asked again.
    result = run_client(tmp_path, stdin=answers)
    assert result.returncode == 1
    assert_failed(result, fragment)
