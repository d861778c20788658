"""chat_client.py's questions, as a person answers them in a terminal (a pty), and what it asks when piped (nothing).

Ctrl-D or Ctrl-C at any question gives up with one line and no traceback; an answer that cannot be right is
asked again; a wrong passphrase is asked again (three tries). With stdin not a terminal nothing is asked: the
address comes from the config file and every line is a message.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pexpect
import pytest

from tests.conftest import WAIT, run_env, wait_for
from tests.e2e.helpers import CLIENT
from zchat.events import ChatMessage, Joined
from zchat.keystore import KeyLayout, create_client_key

CTRL_C, CTRL_D = "\x03", "\x04"
QUESTIONS = ["Server IP", "Server port", "Username", "Passphrase"]
ANSWERS = ["127.0.0.1", "5000", "dave"]  # the first three; the passphrase is never given here


def spawn_client(cwd: Path, *args: str) -> pexpect.spawn:
    return pexpect.spawn(
        sys.executable,
        [CLIENT, *args],
        cwd=str(cwd),
        env={**run_env(), "NO_COLOR": "1"},
        encoding="utf-8",
        timeout=WAIT,
    )


def finished(child: pexpect.spawn) -> tuple[int | None, str]:
    """Exit status and everything after the last question, once the program ended."""
    child.expect(pexpect.EOF)
    child.close()
    status = child.exitstatus if child.signalstatus is None else -child.signalstatus
    return status, child.before


@pytest.fixture(scope="module")
def machine(tmp_path_factory: pytest.TempPathFactory, keyring) -> Path:
    """A client machine: the broker's public key and dave's passphrase-protected key (nothing listens)."""
    root = tmp_path_factory.mktemp("machine")
    layout = KeyLayout(root / "keys")
    layout.root.mkdir()
    shutil.copyfile(keyring.layout.broker_public, layout.broker_public)
    create_client_key(layout, "dave", passphrase="right", bits=2048)
    return root


def test_a_terminal_without_the_broker_key_is_told_before_any_question(tmp_path):
    child = spawn_client(tmp_path)  # a new machine: nothing copied yet
    try:
        status, rest = finished(child)
    finally:
        child.terminate(force=True)
    assert status == 1, rest
    assert not any(question in rest for question in QUESTIONS), rest
    assert "keys/broker.pub: no broker key there: copy keys/broker.pub from the broker's machine" in rest


@pytest.mark.slow
@pytest.mark.parametrize(
    ("question", "key"),
    [*((question, CTRL_D) for question in QUESTIONS), ("Server IP", CTRL_C), ("Passphrase", CTRL_C)],
    ids=[*(f"{question}-ctrl-d" for question in QUESTIONS), "Server IP-ctrl-c", "Passphrase-ctrl-c"],
)
def test_giving_up_at_any_question_is_one_line(machine, question, key):
    child = spawn_client(machine)
    try:
        for asked, answer in zip(QUESTIONS, ANSWERS, strict=False):
            child.expect_exact(asked)
            if asked == question:
                break
            child.sendline(answer)
        else:
            child.expect_exact(question)
        child.expect_exact(": ")
        child.send(key)
        status, rest = finished(child)
    finally:
        child.terminate(force=True)
    assert "Traceback" not in rest, rest
    lines = [line for line in rest.replace("^C", "").splitlines() if line.strip()]
    assert len(lines) == 1, rest
    assert lines[0].startswith("chat_client: cancelled"), rest
    assert question.lower() in lines[0], rest
    assert status == (1 if key == CTRL_D else 130), rest


@pytest.mark.slow
def test_a_wrong_answer_is_asked_again(make_broker, connect):
    broker = make_broker(heartbeat_timeout=30)
    create_client_key(broker.keys, "dave", passphrase="right", bits=2048)  # picked up without a restart
    child = spawn_client(broker.workdir)
    try:
        for question, wrongs, right in [
            ("Server IP", [("not an ip!", "is not an IPv4 address")], "127.0.0.1"),
            ("Server port", [("99999", "port must be a number from 1 to 65535")], str(broker.port)),
            (
                "Username",
                [("not a name!", "invalid user name"), ("b0b", "looks like the registered user 'bob'")],
                "dave",
            ),
        ]:
            child.expect_exact(question)
            for wrong, error in wrongs:
                child.sendline(wrong)
                child.expect_exact(error)
                child.expect_exact(question)  # asked again, not ended
            child.sendline(right)
        for _ in range(2):  # three tries: two wrong ones are forgiven
            child.expect_exact("Passphrase for ")
            child.sendline("wrong")
            child.expect_exact("wrong passphrase; try again")
        child.expect_exact("Passphrase for ")
        child.sendline("right")
        child.expect(r"\* logged in as dave; online: nobody else \(/help for commands\)")
        bob = connect(broker, "bob")
        child.expect(r"\* bob joined")
        child.sendline("made it")
        message = wait_for(bob, lambda e: isinstance(e, ChatMessage))
        assert (message.sender, message.text) == ("dave", "made it")
        child.sendline("/exit")
        status, rest = finished(child)
    finally:
        child.terminate(force=True)
    assert status == 0, rest
    assert "Traceback" not in rest


def test_three_wrong_passphrases_end_with_one_line(machine):
    child = spawn_client(machine, "--host", "127.0.0.1", "--port", "5000", "--user", "dave")
    try:
        for _ in range(3):
            child.expect_exact("Passphrase for ")
            child.sendline("wrong")
        status, rest = finished(child)
    finally:
        child.terminate(force=True)
    assert status == 1
    assert "Traceback" not in rest
    assert rest.strip().splitlines()[-1].startswith("chat_client: error: keys/private/dave.pem: wrong passphrase")


def test_piped_client_takes_the_address_from_the_config_and_every_line_as_a_message(broker, connect, spawn):
    bob = connect(broker, "bob")
    config = broker.workdir / "client.json"
    config.write_text(json.dumps({"server_ip": "127.0.0.1", "server_port": broker.port}))
    alice = spawn([CLIENT, "--config", str(config), "--user", "alice"], broker.workdir, name="alice")
    alice.send("127.0.0.1", "not an answer, a message")  # what a prompt would once have eaten
    alice.expect_line(r"\* logged in as alice; online: bob$")
    wait_for(bob, lambda e: isinstance(e, Joined) and e.user.name == "alice")
    texts = [wait_for(bob, lambda e: isinstance(e, ChatMessage)).text for _ in range(2)]
    assert texts == ["127.0.0.1", "not an answer, a message"]
    alice.close_stdin()
    assert alice.wait() == 0, alice.transcript()
    assert alice.err.text() == "", alice.transcript()
