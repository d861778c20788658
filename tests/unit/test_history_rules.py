"""History replay and welcome rules of the client session, with authentic but misplaced deliveries."""

from __future__ import annotations

from pathlib import Path

import pytest

import crypto
from chat import protocol as p
from chat.config import parse_config
from chat.errors import ConfigError
from chat.events import ChatMessage
from chat.session import ClientSession, State


def authentic_event(session: ClientSession, seq: int, event: dict) -> list[bytes]:
    """What only the broker can make: a delivery MAC'd with the session's delivery key, sealed to its key."""
    plaintext = p.seal_delivery(session._delivery_key, session.session_id, seq, event)
    return p.encode_frames(p.EVENT, crypto.seal(session.key, plaintext, p.context(p.EVENT)))


def test_history_is_replayed_right_after_the_welcome_and_marked(world):
    world.login("bob")
    world.say(b"bob", "before carol")
    carol = world.client("carol")
    (challenge,) = world.send(b"carol", carol.hello())
    _, login = carol.receive(challenge.frames)
    out = world.send(b"carol", login)
    seen = world.deliver([o for o in out if o.identity == b"carol"])[b"carol"]
    history = [e for e in seen if isinstance(e, ChatMessage)]
    assert [(m.sender, m.text, m.history) for m in history] == [("bob", "before carol", True)]


def test_history_arriving_later_in_a_session_is_rejected(world):
    bob = world.login("bob")
    alice = world.login("alice")
    world.say(b"bob", "live message")
    # bob's genuine signature on an old statement, dressed up as history in the middle of alice's session.
    statement = p.Statement.build("chat", "bob", bob.client.session_id, 1, 1.0, "old news").text
    signed = p.SignedStatement(statement, crypto.sign(world.keys["bob"], p.statement_signing_input(statement)))
    bob_info = next(u for u in alice.welcome.users if u.name == "bob")
    late = {"type": "chat", **signed.to_doc(), "history": True, "author": p.user_info_doc(bob_info)}
    events, _ = alice.client.receive(authentic_event(alice.client, alice.client._seq_in + 1, late))
    assert events == []  # skipped, not shown as a message
    assert alice.client.state is State.READY


def test_a_second_welcome_is_ignored_not_fatal(world):
    alice = world.login("alice")
    again = {"type": "welcome", "name": "alice", "users": [], "heartbeat_interval": 1.0}
    events, _ = alice.client.receive(authentic_event(alice.client, alice.client._seq_in + 1, again))
    assert events == []
    assert alice.client.state is State.READY


def test_history_must_fit_in_a_clients_send_queue():
    with pytest.raises(ConfigError, match="history_size"):
        parse_config({"server_ip": "127.0.0.1", "server_port": 1, "history_size": 995}, Path("config.json"))
