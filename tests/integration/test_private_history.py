"""Private messages, the room's history on login, and key pins, through a real broker."""

from __future__ import annotations

import json

import pytest

from tests.conftest import collect, wait_for
from zchat import crypto
from zchat.events import Accepted, ChatMessage, Failed, KeyChanged, WhoList
from zchat.keystore import create_client_key, write_public_key


def chats(events):
    return [e for e in events if isinstance(e, ChatMessage)]


@pytest.mark.slow
def test_private_message_reaches_its_recipient_only(broker, connect):
    alice, bob, carol = (connect(broker, n) for n in ("alice", "bob", "carol"))
    alice.send("for bob's eyes", to="bob")
    message = wait_for(bob, lambda e: isinstance(e, ChatMessage))
    assert (message.sender, message.text, message.private) == ("alice", "for bob's eyes", True)
    assert chats(collect(carol, 0.5)) == []
    assert chats(collect(alice, 0.2)) == []


def test_private_message_to_someone_offline_is_kept_and_to_no_one_is_refused_clearly(broker, connect):
    alice = connect(broker, "alice")
    kept = alice.send("hello?", to="bob")
    answer = wait_for(alice, lambda e: isinstance(e, Accepted | Failed))
    assert answer == Accepted(kept, answer.received, queued=True)
    lost = alice.send("anyone?", to="nobody_here")
    failure = wait_for(alice, lambda e: isinstance(e, Accepted | Failed))
    assert isinstance(failure, Failed)
    assert failure.message_id == lost
    assert "nobody_here" in failure.reason
    assert alice.pending == ()


def test_a_private_message_to_a_user_registered_a_moment_ago_is_kept_for_them(broker, connect):
    alice = connect(broker, "alice")
    assert alice.flush(5)  # the broker's loop has read the key files since it started
    create_client_key(broker.keys, "newcomer", bits=2048)
    kept = alice.send("welcome aboard", to="newcomer")
    answer = wait_for(alice, lambda e: isinstance(e, Accepted | Failed))
    assert answer == Accepted(kept, answer.received, queued=True)


def test_private_messages_work_for_bots(broker, connect):
    bot = connect(broker, "carol", bot=True)
    alice = connect(broker, "alice")
    bot.send("psst", to="alice")
    assert wait_for(alice, lambda e: isinstance(e, ChatMessage)).private


def test_history_replays_recent_public_messages_marked_and_in_order(make_broker, connect):
    broker = make_broker(history_size=3)
    bob = connect(broker, "bob")
    carol = connect(broker, "carol")
    for i in range(5):
        bob.send(f"public {i}")
    bob.send("private", to="carol")
    wait_for(carol, lambda e: isinstance(e, ChatMessage) and e.text == "private")
    alice = connect(broker, "alice")
    history = chats(collect(alice, 0.5))
    assert [(m.sender, m.text, m.history) for m in history] == [("bob", f"public {i}", True) for i in (2, 3, 4)]
    bob.send("live")
    live = wait_for(alice, lambda e: isinstance(e, ChatMessage))
    assert (live.text, live.history) == ("live", False)


@pytest.mark.slow
def test_history_survives_its_author_leaving_and_bots_can_opt_out(broker, connect):
    bob = connect(broker, "bob")
    bob.send("bob was here")
    bob.who()
    wait_for(bob, lambda e: isinstance(e, WhoList))
    bob.close()
    alice = connect(broker, "alice")
    assert [m.text for m in chats(collect(alice, 0.5))] == ["bob was here"]
    quiet_bot = connect(broker, "carol", bot=True, history=False)
    assert chats(collect(quiet_bot, 0.5)) == []


def test_keys_are_pinned_on_first_sight_and_a_change_is_reported(broker, connect, keyring):
    alice = connect(broker, "alice")
    bob = connect(broker, "bob")
    collect(alice, 0.3)
    pins = json.loads((broker.keys.root / "private" / "alice.known.json").read_text())
    assert pins["bob"] == crypto.fingerprint(keyring.keys["bob"])
    bob.close()
    write_public_key(broker.keys.client_public("bob"), keyring.keys["mallory"])  # replaced as make keys does
    connect(broker, "bob", key_path=keyring.private("mallory"))
    warning = wait_for(alice, lambda e: isinstance(e, KeyChanged))
    assert (warning.name, warning.pinned, warning.seen) == (
        "bob",
        crypto.fingerprint(keyring.keys["bob"]),
        crypto.fingerprint(keyring.keys["mallory"]),
    )
    assert alice.pins.status("bob", warning.seen).startswith("DIFFERENT")
