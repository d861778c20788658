"""zchat/client/session.py: what a client accepts from the broker, fed real and forged frames by hand."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from tests.unit.world import PING_FRAMES, World
from zchat import crypto
from zchat import protocol as p
from zchat.broker.work import Outgoing
from zchat.client.session import (
    HEARTBEAT_INTERVAL_RANGE,
    HEARTBEAT_TIMEOUT_RANGE,
    MAX_TEXT_BYTES_RANGE,
    ClientSession,
    SeenMessages,
    State,
)
from zchat.config import parse_config
from zchat.errors import (
    BrokerBusy,
    ConfigError,
    ConnectError,
    LocalProtocolError,
    RemoteProtocolError,
    StatementRefused,
)
from zchat.events import Accepted, ChatMessage, Failed, Joined, Left, Notice, SessionClosed, UserInfo, Welcome
from zchat.protocol import events as wire

LEAVE = {"type": "leave", "name": "carol", "reason": "left"}


def broker_event(
    world: World, identity: bytes, event: dict[str, Any], seq: int | None = None, delivery_key: bytes | None = None
) -> list[bytes]:
    """An EVENT for `identity` sealed and MACed as the broker does: what a compromised broker could send.

    `seq` defaults to the session's next delivery number; `delivery_key` to the session's own key.
    """
    session = world.core.sessions[identity]
    if seq is None:
        session.outbound.seq_out += 1
        seq = session.outbound.seq_out
    key = session.delivery_key if delivery_key is None else delivery_key
    plaintext = wire.seal_delivery(key, session.session_id, seq, event)
    return p.encode_frames(p.EVENT, crypto.seal(session.key, plaintext, p.context(p.EVENT)))


def chat_event(
    key: crypto.PrivateKey,
    sender: str,
    session: str,
    seq: int,
    text: str = "forged",
    *,
    message_id: str = "",
    to: str | None = None,
) -> dict[str, Any]:
    """A live chat event relaying a statement signed with `key` (a fresh message id unless given)."""
    statement = p.Statement.build(
        "chat", sender, session, seq, 1.0, text, to=to, message_id=message_id or p.new_message_id()
    )
    signature = crypto.sign(key, p.statement_signing_input(statement.text))
    return {"type": "chat", **p.SignedStatement(statement.text, signature).to_doc(), "received": 2.0}


def to(identity: bytes, out: list[Outgoing]) -> Outgoing:
    """The one message in `out` for `identity`."""
    (message,) = [m for m in out if m.identity == identity]
    return message


def remote_error(client: ClientSession, frames: list[bytes], match: str) -> None:
    with pytest.raises(RemoteProtocolError, match=match):
        client.receive(frames)


def still_in_step(world: World, identity: bytes) -> None:
    """The session accepts the broker's next genuine event (its sequence counter is where the broker's is)."""
    events, _ = world.clients[identity].receive(broker_event(world, identity, LEAVE))
    assert events == [Left("carol", "left")]


@pytest.fixture
def pair(world):
    """alice and bob logged in; returns the world."""
    world.login("alice")
    world.login("bob")
    return world


# ---------------------------------------------------------------- events from the broker


def test_replayed_event_is_rejected(pair):
    delivery = to(b"bob", pair.send(b"alice", pair.clients[b"alice"].say("hi bob")))
    bob = pair.clients[b"bob"]
    events, reply = bob.receive(delivery.frames)
    assert reply is None
    assert [(e.sender, e.text) for e in events] == [("alice", "hi bob")]
    remote_error(bob, delivery.frames, "sequence")
    still_in_step(pair, b"bob")


def test_event_sealed_for_someone_else_is_rejected(pair):
    pair.login("carol")
    out = pair.send(b"carol", pair.clients[b"carol"].say("hello both"))
    for_bob = next(m for m in out if m.identity == b"bob")
    for_alice = next(m for m in out if m.identity == b"alice")
    alice = pair.clients[b"alice"]
    remote_error(alice, for_bob.frames, "did not open")
    # The rejected frame left alice's session intact.
    (message,) = alice.receive(for_alice.frames)[0]
    assert message == ChatMessage(
        "carol", "hello both", message.timestamp, received=message.received, message_id=message.message_id
    )
    assert len(message.message_id) == 22


def test_event_from_an_earlier_session_is_rejected(world):
    first = world.login("alice", b"alice-1")
    second = world.login("alice", b"alice-2")
    with pytest.raises(RemoteProtocolError):
        second.client.receive(first.welcome_frames)
    still_in_step(world, b"alice-2")


def test_event_without_the_session_delivery_key_is_rejected(pair):
    # Anyone can seal to bob's public key and may know his session id; only the broker knows the delivery key.
    frames = broker_event(pair, b"bob", {"type": "shutdown", "by": "a forger"}, delivery_key=bytes(32))
    remote_error(pair.clients[b"bob"], frames, "MAC")
    assert pair.clients[b"bob"].state is State.READY
    pair.core.sessions[b"bob"].outbound.seq_out -= 1  # the forgery used up no genuine number
    still_in_step(pair, b"bob")


def test_event_naming_another_session_is_rejected(pair):
    session = pair.core.sessions[b"bob"]
    plaintext = wire.seal_delivery(session.delivery_key, "ab" * 32, session.outbound.seq_out + 1, LEAVE)
    frames = p.encode_frames(p.EVENT, crypto.seal(session.key, plaintext, p.context(p.EVENT)))
    remote_error(pair.clients[b"bob"], frames, "another session")


@pytest.mark.parametrize("offset", [0, 2, -1], ids=["repeat", "gap", "back"])
def test_event_out_of_sequence_is_rejected(pair, offset):
    still_in_step(pair, b"bob")  # bob is at delivery 2, so "back" is a valid number
    seq = pair.core.sessions[b"bob"].outbound.seq_out + offset
    remote_error(pair.clients[b"bob"], broker_event(pair, b"bob", LEAVE, seq=seq), "seq")
    still_in_step(pair, b"bob")


def test_event_moved_to_another_command_is_rejected(pair):
    delivery = to(b"bob", pair.send(b"alice", pair.clients[b"alice"].say("hi")))
    with pytest.raises(RemoteProtocolError):
        pair.clients[b"bob"].receive([p.MARKER, p.CHALLENGE, delivery.frames[2]])


def test_ping_from_the_broker_needs_no_answer(pair):
    assert pair.clients[b"alice"].receive(PING_FRAMES) == ([], None)


def test_closed_event_ends_the_session_for_good(pair):
    events, _ = pair.clients[b"bob"].receive(broker_event(pair, b"bob", {"type": "closed", "reason": "because"}))
    assert events == [SessionClosed("because")]
    assert pair.clients[b"bob"].state is State.CLOSED


# ---------------------------------------------------------------- unusable events are skipped


def skipped(world: World, identity: bytes, event: dict[str, Any]) -> None:
    """An authentic, in-order event the client cannot use yields nothing, and the session carries on."""
    assert world.clients[identity].receive(broker_event(world, identity, event)) == ([], None)
    still_in_step(world, identity)


def test_unknown_event_type_is_skipped(pair):
    skipped(pair, b"bob", {"type": "confetti"})


def test_chat_with_a_forged_author_signature_is_skipped(pair, keyring):
    # The broker cannot put words in alice's mouth: it does not hold her key.
    session = pair.clients[b"alice"].session_id
    skipped(pair, b"bob", chat_event(keyring.keys["mallory"], "alice", session, 1))


def test_genuine_chat_built_the_same_way_is_accepted(pair, keyring):
    # Control for the forgery tests: the helper's honest output is accepted.
    session = pair.clients[b"alice"].session_id
    event = chat_event(keyring.keys["alice"], "alice", session, 1, "real")
    (message,) = pair.clients[b"bob"].receive(broker_event(pair, b"bob", event))[0]
    assert (message.sender, message.text) == ("alice", "real")


def test_chat_replayed_by_the_broker_is_skipped(pair, keyring, caplog):
    delivery = to(b"bob", pair.send(b"alice", pair.clients[b"alice"].say("pay carol 10")))
    bob = pair.clients[b"bob"]
    assert len(bob.receive(delivery.frames)[0]) == 1
    # The broker re-sends the same signed statement in a fresh, correctly numbered and MACed event.
    plaintext = crypto.open_envelope(keyring.keys["bob"], delivery.frames[2], p.context(p.EVENT))
    original = wire.Delivery.open(plaintext, pair.core.sessions[b"bob"].delivery_key)
    with caplog.at_level(logging.WARNING, logger="zchat.client.session"):
        skipped(pair, b"bob", original.event)
    assert "replayed message from alice" in caplog.text  # caught as a replay, before the client's memory of ids


def test_chat_from_someone_not_online_is_skipped(pair, keyring):
    skipped(pair, b"bob", chat_event(keyring.keys["carol"], "carol", "cafe" * 16, 1))


def test_chat_with_control_characters_is_skipped_even_if_signed(pair, keyring):
    session = pair.clients[b"alice"].session_id
    skipped(pair, b"bob", chat_event(keyring.keys["alice"], "alice", session, 1, "\x1b]0;pwned\x07"))


def test_join_with_a_mismatched_fingerprint_is_skipped(pair, keyring):
    carol = keyring.keys["carol"]
    user = UserInfo("carol", crypto.fingerprint(keyring.keys["alice"]), False, crypto.public_key_to_der(carol))
    skipped(pair, b"bob", {"type": "join", "user": wire.user_info_doc(user)})
    # carol never entered bob's roster, so a message signed by her is not accepted either.
    skipped(pair, b"bob", chat_event(carol, "carol", "cafe" * 16, 1))


def test_join_with_a_good_key_is_accepted(pair, keyring):
    carol = keyring.keys["carol"]
    user = UserInfo("carol", crypto.fingerprint(carol), True, crypto.public_key_to_der(carol))
    frames = broker_event(pair, b"bob", {"type": "join", "user": wire.user_info_doc(user)})
    events, _ = pair.clients[b"bob"].receive(frames)
    assert events == [Joined(user)]


# ---------------------------------------------------------------- answers to our statements


ANSWERS = {
    "accepted": ({"type": "accepted", "id": "m1", "received": 1.5}, Accepted("m1", 1.5)),
    "queued": (
        {"type": "accepted", "id": "m1", "received": 1.5, "queued": True},
        Accepted("m1", 1.5, queued=True),
    ),
    "duplicate": (
        {"type": "accepted", "id": "m1", "received": 1.5, "duplicate": True},
        Accepted("m1", 1.5, duplicate=True),
    ),
    "failed": ({"type": "failed", "id": "m1", "reason": "why not"}, Failed("m1", "why not")),
    "error": ({"type": "error", "message": "/shutdown refused"}, Notice("/shutdown refused")),
}


@pytest.mark.parametrize(("event", "expected"), ANSWERS.values(), ids=ANSWERS.keys())
def test_the_brokers_answers_reach_the_user_and_the_session_goes_on(pair, event, expected):
    assert pair.clients[b"alice"].receive(broker_event(pair, b"alice", event)) == ([expected], None)
    assert pair.clients[b"alice"].state is State.READY
    still_in_step(pair, b"alice")


@pytest.mark.parametrize(
    ("event", "message"),
    [
        ({"type": "refused", "seq": 3, "id": "m3"}, "the broker refused a statement (statement 3, message m3)"),
        ({"type": "refused", "seq": 3}, "the broker refused a statement (statement 3)"),
        ({"type": "refused"}, "the broker refused a statement"),
    ],
    ids=["named", "no-id", "unread"],
)
def test_refused_ends_the_session_and_names_the_statement(pair, event, message):
    alice = pair.clients[b"alice"]
    with pytest.raises(StatementRefused) as caught:
        alice.receive(broker_event(pair, b"alice", event))
    assert str(caught.value) == message
    assert alice.state is State.CLOSED
    with pytest.raises(LocalProtocolError):
        alice.say("not any more")


# ---------------------------------------------------------------- kept private messages (mail)


def author_doc(world: World, name: str, bot: bool = False) -> dict[str, Any]:
    key = world.keys[name]
    return wire.user_info_doc(UserInfo(name, crypto.fingerprint(key), bot, crypto.public_key_to_der(key)))


def mail_event(
    world: World,
    sender: str,
    recipient: str,
    text: str = "while you were out",
    *,
    message_id: str = "kept",
    sealed_to: str | None = None,
    author: str | None = None,
    private: bool = True,
    bot: bool = False,
) -> dict[str, Any]:
    """A `mail` event as the broker makes it: `sender`'s statement to `recipient`, relayed in a chat event with
    `away` and the author's user object, sealed to `sealed_to` (the recipient) with MAIL_CONTEXT."""
    inner = chat_event(
        world.keys[sender], sender, "cafe" * 16, 1, text, message_id=message_id, to=recipient if private else None
    )
    inner |= {"away": True, "author": author_doc(world, author or sender, bot)}
    sealed = crypto.seal(world.keys[sealed_to or recipient].public_key(), p.dump_doc(inner), wire.MAIL_CONTEXT)
    return wire.MailEvent(sealed).to_doc()


def test_mail_is_shown_as_a_private_message_kept_while_away(pair):
    # carol is not online: a kept message names its author's key itself.
    events, _ = pair.clients[b"bob"].receive(broker_event(pair, b"bob", mail_event(pair, "carol", "bob")))
    assert events == [
        ChatMessage("carol", "while you were out", 1.0, private=True, received=2.0, message_id="kept", away=True)
    ]
    still_in_step(pair, b"bob")


def test_a_kept_message_from_a_bot_says_so(pair):
    # The author is offline: whether it logs in as a bot comes from the author record the broker kept.
    event = mail_event(pair, "carol", "bob", message_id="from-a-bot", bot=True)
    events, _ = pair.clients[b"bob"].receive(broker_event(pair, b"bob", event))
    assert [(e.sender, e.bot) for e in events if isinstance(e, ChatMessage)] == [("carol", True)]


BAD_MAIL = {
    "sealed-to-another": ({"sealed_to": "alice"}, "a kept message that does not open with our key"),
    "for-another": ({"sealed_to": "bob", "recipient": "carol"}, "not a chat message for us"),
    "to-the-room": ({"private": False}, "a kept message to the room"),
    "another-author": ({"author": "alice"}, "a kept message that names another author"),
}


@pytest.mark.parametrize(("bad", "reason"), BAD_MAIL.values(), ids=BAD_MAIL.keys())
def test_unusable_mail_is_skipped(pair, caplog, bad, reason):
    fields = {"recipient": "bob", **bad}
    recipient = fields.pop("recipient")
    with caplog.at_level(logging.WARNING, logger="zchat.client.session"):
        skipped(pair, b"bob", mail_event(pair, "carol", recipient, **fields))
    assert f"ignored a 'mail' event from the broker: {reason}" in caplog.text


def test_a_kept_message_outside_its_sealed_mail_is_skipped(pair, caplog):
    event = chat_event(pair.keys["carol"], "carol", "cafe" * 16, 1, "unsealed", to="bob")
    with caplog.at_level(logging.WARNING, logger="zchat.client.session"):
        skipped(pair, b"bob", event | {"away": True, "author": author_doc(pair, "carol")})
    assert "a kept private message outside its sealed mail" in caplog.text


# ---------------------------------------------------------------- messages shown before


def test_a_message_shown_live_is_not_shown_again_as_mail(pair):
    session = pair.clients[b"alice"].session_id
    live = chat_event(pair.keys["alice"], "alice", session, 1, "psst", message_id="psst", to="bob")
    (message,) = pair.clients[b"bob"].receive(broker_event(pair, b"bob", live))[0]
    assert (message.text, message.private, message.away) == ("psst", True, False)
    # The broker kept it until bob acknowledged it; bob's session ended first, so it comes again.
    skipped(pair, b"bob", mail_event(pair, "alice", "bob", "psst", message_id="psst"))
    # Another id from the same author is another message.
    (again,) = pair.clients[b"bob"].receive(broker_event(pair, b"bob", mail_event(pair, "alice", "bob", "2nd")))[0]
    assert (again.text, again.away) == ("2nd", True)


def test_messages_seen_outlive_the_session_that_showed_them(world):
    world.login("alice")
    seen = SeenMessages()
    world.login("bob", b"bob-1", seen=seen)
    session = world.clients[b"alice"].session_id
    live = chat_event(world.keys["alice"], "alice", session, 1, "hello", message_id="hello")
    assert len(world.clients[b"bob-1"].receive(broker_event(world, b"bob-1", live))[0]) == 1
    # bob reconnects (the same client) and the broker replays the message: it is not shown twice.
    world.login("bob", b"bob-2", seen=seen)
    mail = mail_event(world, "alice", "bob", "hello", message_id="hello")
    assert world.clients[b"bob-2"].receive(broker_event(world, b"bob-2", mail)) == ([], None)
    # Control: a client that has not seen it (another SeenMessages) shows it.
    world.login("bob", b"bob-3")
    (message,) = world.clients[b"bob-3"].receive(broker_event(world, b"bob-3", mail))[0]
    assert (message.sender, message.text, message.message_id) == ("alice", "hello", "hello")


def test_seen_messages_forget_the_oldest_beyond_their_limit():
    seen = SeenMessages(limit=2)
    assert [seen.first_time("alice", i) for i in ("a", "b", "a", "c")] == [True, True, False, True]
    assert seen.first_time("bob", "c") is True  # the author is part of the key
    assert seen.first_time("alice", "a") is True  # forgotten: the two newest are ("alice", "c") and ("bob", "c")
    assert seen.first_time("bob", "c") is False


# ---------------------------------------------------------------- handshake

SERVER_NONCE = b"s" * 32
DELIVERY_KEY = b"d" * 32


def start_login(world: World, name: str = "alice") -> tuple[ClientSession, p.Hello]:
    """A client that sent HELLO, and the HELLO as the (real) broker reads it."""
    client = world.client(name)
    hello_frames = client.hello()
    hello = p.Hello.decode(crypto.open_envelope(world.keys["broker"], hello_frames[2], p.context(p.HELLO)))
    return client, hello


def challenge_frames(
    client_key: crypto.PrivateKey,
    signer: crypto.PrivateKey,
    user: str,
    client_nonce: bytes,
    signed_delivery_key: bytes = DELIVERY_KEY,
    context: bytes = p.context(p.CHALLENGE),
) -> list[bytes]:
    """A CHALLENGE whose proof is signed by `signer` over `signed_delivery_key` (it always carries DELIVERY_KEY)."""
    proof = crypto.sign(signer, p.broker_proof_input(user, client_nonce, SERVER_NONCE, signed_delivery_key))
    challenge = p.Challenge(user, client_nonce, SERVER_NONCE, DELIVERY_KEY, proof)
    return p.encode_frames(p.CHALLENGE, crypto.seal(client_key, challenge.encode(), context))


@pytest.mark.parametrize("signer", ["mallory", "alice"], ids=["wrong-broker-key", "client-key"])
def test_challenge_signed_with_the_wrong_key_is_refused(world, keyring, signer):
    client, hello = start_login(world)
    frames = challenge_frames(keyring.keys["alice"], keyring.keys[signer], "alice", hello.nonce)
    with pytest.raises(ConnectError, match="broker authentication failed"):
        client.receive(frames)
    assert client.state is State.CLOSED


def test_challenge_whose_proof_does_not_cover_its_delivery_key_is_refused(world, keyring):
    client, hello = start_login(world)
    frames = challenge_frames(keyring.keys["alice"], keyring.keys["broker"], "alice", hello.nonce, bytes(32))
    with pytest.raises(ConnectError, match="broker authentication failed"):
        client.receive(frames)


def test_challenge_for_another_login_is_refused(world, keyring):
    client, hello = start_login(world)
    broker, alice = keyring.keys["broker"], keyring.keys["alice"]
    with pytest.raises(ConnectError, match="broker authentication failed"):
        client.receive(challenge_frames(alice, broker, "alice", bytes(32)))
    client, hello = start_login(world)
    with pytest.raises(ConnectError, match="broker authentication failed"):
        client.receive(challenge_frames(alice, broker, "bob", hello.nonce))


def test_challenge_with_a_valid_broker_proof_is_answered(world, keyring):
    # Control for the refusals above: the same construction with the real broker key logs in.
    client, hello = start_login(world)
    frames = challenge_frames(keyring.keys["alice"], keyring.keys["broker"], "alice", hello.nonce)
    events, login = client.receive(frames)
    assert events == []
    assert login is not None
    assert login[1] == p.LOGIN
    assert client.state is State.LOGIN_SENT
    assert client.session_id == SERVER_NONCE.hex()
    signed = p.Login.decode(crypto.open_envelope(keyring.keys["broker"], login[2], p.context(p.LOGIN)))
    crypto.verify(keyring.keys["alice"], p.login_proof_input("alice", hello.nonce, SERVER_NONCE), signed.signature)


def test_challenge_sealed_in_another_context_is_refused(world, keyring):
    client, hello = start_login(world)
    broker, alice = keyring.keys["broker"], keyring.keys["alice"]
    with pytest.raises(ConnectError):
        client.receive(challenge_frames(alice, broker, "alice", hello.nonce, context=p.context(p.EVENT)))


def test_refused_and_busy_end_the_handshake(world):
    refused = world.client("alice", b"a1")
    refused.hello()
    with pytest.raises(ConnectError, match="login refused"):
        refused.receive([p.MARKER, p.REFUSED, b""])
    assert refused.state is State.CLOSED
    busy = world.client("alice", b"a2")
    busy.hello()
    with pytest.raises(BrokerBusy):
        busy.receive([p.MARKER, p.BUSY, b""])
    assert busy.state is State.CLOSED


def test_first_event_must_be_the_welcome(world):
    client = world.client("alice")
    (challenge,) = world.send(b"alice", client.hello())
    _, login = client.receive(challenge.frames)
    world.send(b"alice", login)  # the broker's welcome (seq 1) is lost; a who with seq 1 arrives instead
    frames = broker_event(world, b"alice", {"type": "who", "users": []}, seq=1)
    remote_error(client, frames, "first event is not a welcome")


# ---------------------------------------------------------------- a welcome from a broker that lies


def me_info(world: World, name: str = "alice", key_of: str | None = None) -> dict[str, Any]:
    """`name` as the welcome's user object, with the key of `key_of` (`name`'s own unless given)."""
    key = world.keys[key_of or name]
    return wire.user_info_doc(UserInfo(name, crypto.fingerprint(key), False, crypto.public_key_to_der(key)))


def forged_welcome(world: World, **fields: Any) -> tuple[ClientSession, list[bytes]]:
    """alice after her LOGIN, and a welcome (seq 1) for her that says `fields` instead of the broker's values."""
    client = world.client("alice")
    (challenge,) = world.send(b"alice", client.hello())
    _, login = client.receive(challenge.frames)
    assert login is not None
    world.send(b"alice", login)  # the broker's own welcome is dropped: a forged one comes in its place
    doc = {
        "type": "welcome",
        "name": "alice",
        "users": [me_info(world, "alice"), me_info(world, "bob")],
        "heartbeat_interval": 1.0,
        "heartbeat_timeout": 6.0,
        "max_text_bytes": p.DEFAULT_MAX_TEXT_BYTES,
        **fields,
    }
    return client, broker_event(world, b"alice", doc, seq=1)


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"heartbeat_interval": 0}, "heartbeat_interval 0 s is outside 0.05-60 s"),
        ({"heartbeat_interval": -1.0}, "heartbeat_interval -1 s is outside"),
        ({"heartbeat_interval": 0.049}, "heartbeat_interval 0.049 s is outside"),
        ({"heartbeat_interval": 61, "heartbeat_timeout": 600}, "heartbeat_interval 61 s is outside"),
        ({"heartbeat_timeout": 0}, "heartbeat_timeout 0 s is outside 0.2-600 s"),
        ({"heartbeat_timeout": 601}, "heartbeat_timeout 601 s is outside"),
        ({"heartbeat_timeout": 1.9}, "heartbeat_timeout 1.9 s is less than twice heartbeat_interval 1 s"),
        ({"max_text_bytes": 1024 * 1024 + 1}, "max_text_bytes 1048577 is outside 1-1048576"),
    ],
    ids=[
        "interval-0",
        "interval-negative",
        "interval-too-fast",
        "interval-too-slow",
        "timeout-0",
        "timeout-too-long",
        "timeout-under-twice-the-interval",
        "text-limit-too-large",
    ],
)
def test_a_welcome_with_numbers_no_broker_is_configured_with_ends_the_login(world, fields, reason):
    client, welcome = forged_welcome(world, **fields)
    with pytest.raises(ConnectError, match=f"the broker's welcome was unusable \\({reason}"):
        client.receive(welcome)
    assert client.state is State.CLOSED


@pytest.mark.parametrize(
    ("users", "reason"),
    [
        ([("bob", "bob")], "leaves us out"),
        ([("alice", "mallory"), ("bob", "bob")], "gives us another key"),
        ([("alice", "alice"), ("alice", "mallory")], "gives us another key"),
    ],
    ids=["without-us", "us-with-another-key", "us-twice-once-with-another-key"],
)
def test_a_welcome_that_does_not_list_us_with_our_key_ends_the_login(world, users, reason):
    client, welcome = forged_welcome(world, users=[me_info(world, name, key) for name, key in users])
    with pytest.raises(ConnectError, match=reason):
        client.receive(welcome)
    assert client.state is State.CLOSED


@pytest.mark.parametrize(
    "fields",
    [
        {"heartbeat_interval": 0.05, "heartbeat_timeout": 0.2, "max_text_bytes": 1},
        {"heartbeat_interval": 60, "heartbeat_timeout": 600, "max_text_bytes": 1024 * 1024},
        {"heartbeat_interval": 2, "heartbeat_timeout": 4},
    ],
    ids=["lowest", "highest", "timeout-twice-the-interval"],
)
def test_a_welcome_at_the_edges_of_the_brokers_bounds_is_taken(world, fields):
    client, welcome = forged_welcome(world, **fields)
    events, _ = client.receive(welcome)
    assert [type(e) for e in events] == [Welcome]
    assert client.state is State.READY
    assert (client.heartbeat_interval, client.heartbeat_timeout) == (
        fields["heartbeat_interval"],
        fields["heartbeat_timeout"],
    )


@pytest.mark.parametrize(
    ("key", "bounds"),
    [
        ("heartbeat_interval", HEARTBEAT_INTERVAL_RANGE),
        ("heartbeat_timeout", HEARTBEAT_TIMEOUT_RANGE),
        ("max_text_bytes", MAX_TEXT_BYTES_RANGE),
    ],
)
def test_the_bounds_a_client_checks_are_the_ones_the_broker_config_takes(tmp_path, key, bounds):
    """What a welcome may say is what a broker can be configured to say: no more, no less."""

    def config(value: float) -> None:
        raw: dict[str, Any] = {"server_ip": "127.0.0.1", "server_port": 5000, key: value}
        if key == "heartbeat_interval":
            raw["heartbeat_timeout"] = 600
        if key == "heartbeat_timeout":
            raw["heartbeat_interval"] = 0.05
        parse_config(raw, tmp_path / "config.json")

    low, high = bounds
    config(low)
    config(high)
    step = 1 if key == "max_text_bytes" else 0.001
    for outside in (low - step, high + step):
        with pytest.raises(ConfigError):
            config(outside)


@pytest.mark.parametrize(
    "frames",
    [[p.MARKER, p.REFUSED, b""], [p.MARKER, p.BUSY, b""], [p.MARKER, p.CHALLENGE, b"\x01" * 300]],
    ids=["refused", "busy", "challenge"],
)
def test_handshake_commands_are_rejected_once_logged_in(pair, frames):
    alice = pair.clients[b"alice"]
    remote_error(alice, frames, "unexpected")
    assert alice.state is State.READY


def test_event_before_hello_is_rejected(pair):
    fresh = ClientSession("carol", pair.keys["carol"], pair.broker_public)
    delivery = to(b"bob", pair.send(b"alice", pair.clients[b"alice"].say("hi")))
    remote_error(fresh, delivery.frames, "unexpected EVENT in state new")


# ---------------------------------------------------------------- local misuse


def test_local_misuse_is_a_local_error(pair):
    fresh = pair.client("carol")
    with pytest.raises(LocalProtocolError):
        fresh.say("not logged in")
    fresh.hello()
    with pytest.raises(LocalProtocolError):
        fresh.hello()
    with pytest.raises(LocalProtocolError):
        pair.clients[b"alice"].request("chat")
    with pytest.raises(LocalProtocolError):
        ClientSession("no spaces allowed", pair.keys["carol"], pair.broker_public)


@pytest.mark.parametrize("text", ["", "   ", "bell\x07", "x" * (p.DEFAULT_MAX_TEXT_BYTES + 1)])
def test_say_refuses_text_it_cannot_send(pair, text):
    with pytest.raises(LocalProtocolError):  # the message is the user-facing reason, checked in protocol tests
        pair.clients[b"alice"].say(text)
