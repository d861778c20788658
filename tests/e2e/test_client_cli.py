"""chat_client.py as a person runs it: prompts on piped stdin and on a terminal, commands, chatting, leaving."""

from __future__ import annotations

import json
import re
import sys

import pexpect
import pytest

from tests.conftest import WAIT, run_env, wait_for
from tests.e2e.helpers import CLIENT
from zchat import crypto
from zchat.events import ChatMessage, Left

TEXT = "héllo wörld 😀👍🏽 中文 — ✓"


def client_config(broker, name: str = "client.json") -> str:
    """A config file in the broker's directory naming its address, as config.json does for `make client`."""
    path = broker.workdir / name
    path.write_text(json.dumps({"server_ip": "127.0.0.1", "server_port": broker.port}))
    return str(path)


def test_piped_client_asks_nothing_chats_who_help_and_exit(broker, spawn, client, keyring):
    # Piped stdin holds messages only: --user is given, the address comes from the config file.
    bob = spawn([CLIENT, "--user", "bob", "--config", client_config(broker)], broker.workdir, name="bob")
    welcome = bob.expect_line(r"\* logged in as bob; online: nobody else")
    assert welcome.string.endswith("online: nobody else"), welcome.string  # no "(/help for commands)" in a pipe

    alice = client(broker, "alice")
    alice.expect_line(r"\* logged in as alice; online: bob$")
    bob.expect_line(r"\* alice joined \(SHA256:")

    alice.send(TEXT)
    received = bob.expect_line(r"\balice: (.*)$")
    assert received.group(1) == TEXT

    # The broker answers /who after relaying her message, so an echo would show up before the list.
    alice.send("/who")
    alice.expect_line(r"\* 2 online:$")
    for name in ("alice", "bob"):
        fingerprint = crypto.fingerprint(keyring.keys[name])
        alice.expect_line(rf"^\s+{name}\s+{re.escape(fingerprint)}$")
    assert not [line for line in alice.out.lines if TEXT in line], alice.transcript()

    alice.send("/help")
    for command in ("/who", "/trust", "/exit", "/shutdown", "/help"):
        alice.expect_line(rf"^\s*{command}\s")
    alice.send("/help msg")
    alice.expect_line(r"^\s*/msg NAME TEXT\s+send TEXT to NAME only")
    alice.expect_line(r"queued for NAME")  # what the answers mean, beyond the command's line

    alice.send("/exit")
    assert alice.wait() == 0, alice.transcript()
    bob.expect_line(r"\* alice left$")  # not "alice left (left)"
    assert [line for line in bob.out.lines if TEXT in line] == [received.string]
    assert not [line for line in alice.out.lines if TEXT in line], alice.transcript()

    bob.close_stdin()  # end of input leaves like /exit
    assert bob.wait() == 0, bob.transcript()
    assert bob.err.text() == "", bob.transcript()  # nothing asked
    assert "Traceback" not in alice.err.text()


def test_shutdown_is_refused_to_non_admins_and_stops_everything_for_an_admin(broker, client):
    alice, bob = client(broker, "alice"), client(broker, "bob")
    alice.expect_line(r"logged in as alice")
    bob.expect_line(r"logged in as bob")

    bob.send("/shutdown")
    bob.expect_line(r"! /shutdown refused: only admins")
    # Nothing stopped: the broker still relays, both clients still run.
    bob.send("after the refusal")
    alice.expect_line(r"\bbob: after the refusal$")
    assert broker.alive()
    assert alice.alive()
    assert bob.alive()

    admin = client(broker, "admin")
    admin.expect_line(r"logged in as admin")
    admin.send("/shutdown")
    for proc in (alice, bob, admin):
        proc.expect_line(r"\* the broker is shutting down \(/shutdown by admin\); goodbye$")
        assert proc.wait() == 0, proc.transcript()
        assert "Traceback" not in proc.err.text()
    assert broker.proc.wait(WAIT) == 0, broker.log()
    assert "broker stopped" in broker.log()


def test_a_session_the_broker_closes_ends_the_client_with_status_3(broker, client, connect):
    """`closed` (here: the same name logged in elsewhere) is no error of ours, and no reason to start again."""
    alice = client(broker, "alice")
    alice.expect_line(r"logged in as alice")
    connect(broker, "alice")  # the newer login wins
    alice.expect_line(r"! the broker closed this session: you logged in again elsewhere; goodbye$")
    assert alice.wait() == 3, alice.transcript()
    assert "Traceback" not in alice.err.text()


@pytest.mark.slow
def test_a_new_name_on_the_brokers_machine_gets_a_key_created_and_registered(broker, spawn, connect):
    args = [CLIENT, "--config", str(broker.config_path), "--host", "127.0.0.1", "--port", str(broker.port)]
    newbie = spawn([*args, "--user", "newbie"], broker.workdir, name="newbie")
    newbie.expect_err(r"\* created a key for newbie: .*newbie\.pem \(registered as .*newbie\.pub, SHA256:")
    newbie.expect_line(r"\* logged in as newbie; online: nobody else")
    assert broker.keys.client_private("newbie").is_file()
    assert broker.keys.client_public("newbie").is_file()

    # Connected only now: an in-process client is not polled (so not heartbeating) while the key is made.
    bob = connect(broker, "bob")
    newbie.expect_line(r"\* bob joined")
    newbie.send("first words")
    msg = wait_for(bob, lambda e: isinstance(e, ChatMessage))
    assert (msg.sender, msg.text) == ("newbie", "first words")
    newbie.send("/exit")
    assert newbie.wait() == 0, newbie.transcript()
    wait_for(bob, lambda e: isinstance(e, Left) and e.name == "newbie")


@pytest.mark.slow
def test_terminal_prompts_chat_and_exit_in_a_pty(broker, connect):
    # Plain text on the terminal, so the expected lines are not split by colour codes.
    child = pexpect.spawn(
        sys.executable,
        [CLIENT],
        cwd=str(broker.workdir),
        env={**run_env(), "NO_COLOR": "1"},
        encoding="utf-8",
        timeout=WAIT,
    )
    try:
        child.expect_exact("Server IP [127.0.0.1]: ")
        child.sendline("127.0.0.1")
        child.expect_exact("Server port")
        child.sendline(str(broker.port))
        child.expect_exact("Username: ")
        child.sendline("carol")
        child.expect(r"\* logged in as carol; online: nobody else")
        bob = connect(broker, "bob")  # only now: an in-process client heartbeats only while polled
        child.expect(r"\* bob joined")

        child.sendline(TEXT)
        msg = wait_for(bob, lambda e: isinstance(e, ChatMessage))
        assert (msg.sender, msg.text) == ("carol", TEXT)

        child.sendline("/exit")
        child.expect(pexpect.EOF)
        child.close()
        assert child.exitstatus == 0, child.before
        assert "Traceback" not in (child.before or "")
        wait_for(bob, lambda e: isinstance(e, Left) and e.name == "carol")
    finally:
        if child.isalive():
            child.terminate(force=True)


@pytest.mark.slow
def test_piped_client_without_a_user_reads_the_answers_first_then_the_messages(broker, spawn, client):
    """`make client` in a pipe (DESIGN 4): the prompt answers come first, one per line, then the messages."""
    alice = client(broker, "alice")
    alice.expect_line(r"\* logged in as alice")
    bob = spawn([CLIENT], broker.workdir, name="bob")
    bob.send("127.0.0.1", str(broker.port), "bob", "answers read, then this message")
    bob.expect_line(r"\* logged in as bob; online: alice$")
    received = alice.expect_line(r"\bbob: (.*)$")
    assert received.group(1) == "answers read, then this message"
    bob.close_stdin()
    assert bob.wait() == 0, bob.transcript()
    for prompt in ("Server IP", "Server port", "Username"):
        assert prompt not in bob.err.text()  # read, not asked


@pytest.mark.slow
def test_piped_client_shows_what_the_broker_did_not_deliver_and_what_it_keeps(broker, client):
    bob = client(broker, "bob")
    bob.expect_line(r"logged in as bob")
    alice = client(broker, "alice")
    alice.expect_line(r"logged in as alice")
    alice.send("/msg carol see you tomorrow", "/msg nobody_here hello?", "/msg bob psst", "to the room", "/exit")
    assert alice.wait() == 0, alice.transcript()
    lines = alice.out.lines
    assert [line for line in lines if re.search(r"\* queued for carol \(offline\): 'see you tomorrow'$", line)], lines
    assert [line for line in lines if re.search(r"! not delivered: .*nobody_here.*: 'hello\?'$", line)], lines
    # Never shown as if sent: a private message appears once the broker has taken it, not before.
    assert not [line for line in lines if "private to nobody_here" in line], lines
    assert [line for line in lines if re.search(r"\* \(private to bob\) psst$", line)], lines
    assert not [line for line in lines if "private to carol" in line], lines  # carol's is queued, said so above
    assert not [line for line in alice.out.lines if "to the room" in line], alice.transcript()  # acks are quiet
    bob.expect_line(r"\(private\) alice: psst$")

    carol = client(broker, "carol")
    carol.expect_line(r"\(private\) \(while you were away\) alice: see you tomorrow$")
    carol.send("/exit")
    assert carol.wait() == 0, carol.transcript()


@pytest.mark.slow
def test_json_client_prints_the_brokers_answers(broker, client):
    alice = client(broker, "alice", "--json")
    alice.expect_line(r'"type": "welcome"')
    alice.send("for the record", "/msg nobody_here hello?")
    # In either order: the broker answers `failed` at once and `accepted` after the commit that holds the message.
    answers = [json.loads(alice.expect_line(r'"type": "(acked|failed)"').string) for _ in range(2)]
    (acked,) = [answer for answer in answers if answer["type"] == "acked"]
    (failed,) = [answer for answer in answers if answer["type"] == "failed"]
    assert acked["id"] != failed["id"]
    assert (acked["queued"], acked["duplicate"]) == (False, False)
    assert "nobody_here" in failed["reason"]
    alice.send("/exit")
    assert alice.wait() == 0, alice.transcript()
