"""History replay and welcome rules of the client session, with authentic but misplaced deliveries."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.world import World
from zchat import crypto
from zchat import protocol as p
from zchat.client.session import ClientSession, State
from zchat.config import parse_config
from zchat.errors import ConfigError
from zchat.events import ChatMessage
from zchat.protocol import events as wire


def authentic_event(session: ClientSession, seq: int, event: dict) -> list[bytes]:
    """What only the broker can make: a delivery MAC'd with the session's delivery key, sealed to its key."""
    plaintext = wire.seal_delivery(session._delivery_key, session.session_id, seq, event)
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
    statement = p.Statement.build("chat", "bob", bob.client.session_id, 1, 1.0, "old news", message_id="old").text
    signed = p.SignedStatement(statement, crypto.sign(world.keys["bob"], p.statement_signing_input(statement)))
    bob_info = next(u for u in alice.welcome.users if u.name == "bob")
    late = {"type": "chat", **signed.to_doc(), "history": True, "author": wire.user_info_doc(bob_info)}
    events, _ = alice.client.receive(authentic_event(alice.client, alice.client._seq_in + 1, late))
    assert events == []  # skipped, not shown as a message
    assert alice.client.state is State.READY


def test_a_second_welcome_is_ignored_not_fatal(world):
    alice = world.login("alice")
    again = {"type": "welcome", "name": "alice", "users": [], "heartbeat_interval": 1.0}
    events, _ = alice.client.receive(authentic_event(alice.client, alice.client._seq_in + 1, again))
    assert events == []
    assert alice.client.state is State.READY


def test_a_replay_longer_than_the_send_queue_goes_out_whole_as_the_client_reads(keyring):
    """The login's replay waits apart from the send queue: a history of 30 with a queue of 10 is no reason to
    call the new client too slow; it gets everything, a window at a time, as it acknowledges."""
    world = World(keyring.keys, keyring.layout, {"history_size": 30, "send_queue_limit": 10})
    world.login("bob")
    for i in range(30):
        world.say(b"bob", f"message {i:02}")
        world.ack(b"bob")  # bob reads his answers
    carol = world.client("carol")
    (challenge,) = world.send(b"carol", carol.hello())
    _, login = carol.receive(challenge.frames)
    shown = [e for e in world.deliver(world.send(b"carol", login)).get(b"carol", []) if isinstance(e, ChatMessage)]
    for _ in range(30):
        ack = carol.ack()
        if ack is None:
            break
        shown += [e for e in world.deliver(world.send(b"carol", ack)).get(b"carol", []) if isinstance(e, ChatMessage)]
    assert [m.text for m in shown] == [f"message {i:02}" for i in range(30)]
    assert all(m.history for m in shown)
    assert b"carol" in world.core.sessions


def test_the_history_size_has_a_range():
    with pytest.raises(ConfigError, match="history_size"):
        parse_config({"server_ip": "127.0.0.1", "server_port": 1, "history_size": 10_001}, Path("config.json"))
