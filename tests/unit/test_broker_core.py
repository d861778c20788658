"""zchat/broker/core.py driven by real client sessions, frame by frame, with a hand-held clock."""

from __future__ import annotations

import collections
import shutil
from typing import Any

import pytest

from tests.unit.world import PING_FRAMES, REFUSED_FRAMES, T0, World
from zchat import crypto
from zchat import protocol as p
from zchat.broker.login import HANDSHAKE_TIMEOUT
from zchat.broker.work import Outgoing
from zchat.client.session import State
from zchat.errors import BrokerBusy, ConnectError, StatementRefused
from zchat.events import Accepted, ChatMessage, Failed, Joined, Left, Notice, SessionClosed, Shutdown, WhoList
from zchat.keystore import KeyLayout

BUSY_FRAMES = [p.MARKER, p.BUSY, b""]
EVICTED_FRAMES = [p.MARKER, p.EVICTED, b""]


def names(users) -> list[str]:
    return [user.name for user in users]


def forged_login(world: World, identity: bytes, name: str, signer: crypto.PrivateKey) -> list[Outgoing]:
    """The strongest login forgery: HELLO as `name`, then a LOGIN over the right nonces signed with `signer`.

    The attacker cannot open the CHALLENGE (it is sealed to `name`'s key); the test reads the nonces from
    the broker's state instead, so only the signature check stands between it and a session.
    """
    attacker = world.client(name, identity, key=signer)
    (challenge,) = world.send(identity, attacker.hello())
    assert challenge.frames[1] == p.CHALLENGE
    pending = world.core.logins.pending[identity]
    proof = crypto.sign(signer, p.login_proof_input(name, pending.client_nonce, pending.server_nonce))
    body = crypto.seal(world.broker_public, p.Login(proof).encode(), p.context(p.LOGIN))
    return world.send(identity, p.encode_frames(p.LOGIN, body))


# ---------------------------------------------------------------- login


def test_two_users_log_in_and_see_each_other(world, keyring):
    alice = world.login("alice")
    assert names(alice.welcome.users) == ["alice"]
    assert alice.others == {}
    assert alice.client.state is State.READY

    bob = world.login("bob")
    assert names(bob.welcome.users) == ["alice", "bob"]
    (joined,) = bob.others[b"alice"]
    assert isinstance(joined, Joined)
    assert joined.user.name == "bob"
    assert joined.user.fingerprint == crypto.fingerprint(keyring.keys["bob"])
    assert joined.user.bot is False
    assert names(world.core.online()) == ["alice", "bob"]
    assert world.core.logins.pending == {}


def test_session_ids_are_fresh_per_login(world):
    first = world.login("alice", b"alice-1")
    second = world.login("alice", b"alice-2")
    assert len(first.client.session_id) == 64
    assert first.client.session_id != second.client.session_id


def test_unknown_user_gets_a_decoy_challenge_that_looks_like_a_real_one(world, keyring):
    (real,) = world.send(b"bob", world.client("bob").hello())
    zed = world.client("zed", key=keyring.keys["mallory"])  # unregistered, same name length as bob
    (decoy,) = world.send(b"zed", zed.hello())
    assert decoy.frames[:2] == real.frames[:2] == [p.MARKER, p.CHALLENGE]
    assert len(decoy.frames[2]) == len(real.frames[2])
    with pytest.raises(ConnectError, match="login refused"):
        zed.receive(decoy.frames)


@pytest.mark.parametrize("signer", ["mallory", "broker"], ids=["own-key", "decoy-key"])
def test_unknown_user_is_refused_at_login(world, keyring, signer):
    # Even a LOGIN signed with the key the decoy challenge was sealed to (here the broker's own) is refused.
    out = forged_login(world, b"mallory", "mallory", keyring.keys[signer])
    assert out == [Outgoing(b"mallory", REFUSED_FRAMES)]
    assert world.core.logins.pending == {}
    assert world.core.sessions == {}


def test_registered_name_with_the_wrong_key_is_refused(world, keyring):
    out = forged_login(world, b"mallory", "alice", keyring.keys["mallory"])
    assert out == [Outgoing(b"mallory", REFUSED_FRAMES)]
    assert world.core.sessions == {}
    assert world.core.logins.pending == {}


def test_forged_login_helper_succeeds_with_the_right_key(world, keyring):
    # Control for the test above: the same forgery with alice's own key is a login.
    out = forged_login(world, b"alice", "alice", keyring.keys["alice"])
    assert [m.identity for m in out] == [b"alice"]
    assert out[0].frames[1] == p.EVENT
    assert names(world.core.online()) == ["alice"]


def test_the_client_cannot_open_a_challenge_meant_for_another_key(world, keyring):
    impostor = world.client("alice", b"mallory", key=keyring.keys["mallory"])
    (challenge,) = world.send(b"mallory", impostor.hello())
    with pytest.raises(ConnectError, match="login refused"):
        impostor.receive(challenge.frames)


def test_replayed_login_from_a_new_identity_is_refused(world):
    alice = world.login("alice")
    assert world.send(b"eve", alice.login) == [Outgoing(b"eve", REFUSED_FRAMES)]
    # Replaying the whole handshake: the broker challenges afresh, the old proof does not fit the new nonce.
    (challenge,) = world.send(b"eve", alice.hello)
    assert challenge.frames[1] == p.CHALLENGE
    assert world.send(b"eve", alice.login) == [Outgoing(b"eve", REFUSED_FRAMES)]
    assert world.core.by_name == {"alice": b"alice"}
    assert set(world.core.sessions) == {b"alice"}


def test_login_frames_from_a_logged_in_identity_are_ignored(world):
    alice = world.login("alice")
    assert world.send(b"alice", alice.login) == []
    assert world.send(b"alice", alice.hello) == []
    assert set(world.core.sessions) == {b"alice"}


def test_login_after_the_handshake_timeout_is_refused(world):
    session = world.client("alice")
    (challenge,) = world.send(b"alice", session.hello())
    _, login = session.receive(challenge.frames)
    world.now += HANDSHAKE_TIMEOUT + 0.1
    assert world.run(world.core.tick(world.now)) == []
    assert world.send(b"alice", login) == [Outgoing(b"alice", REFUSED_FRAMES)]
    assert world.core.sessions == {}


def test_refusals_are_byte_identical(world, keyring):
    garbage_hellos = [
        b"\x01" + bytes(range(256)) * 2,
        b"",
        crypto.seal(world.broker_public, b"not json", p.context(p.HELLO)),
        crypto.seal(world.broker_public, b'{"user": "alice"}', p.context(p.HELLO)),
        crypto.seal(world.broker_public, p.Hello("alice", b"n" * 32, False).encode(), p.context(p.LOGIN)),
    ]
    refusals = [forged_login(world, b"mallory", "mallory", keyring.keys["mallory"])]  # unknown user
    refusals.append(forged_login(world, b"forger", "bob", keyring.keys["mallory"]))  # bad signature
    refusals += [world.send(b"garbage%d" % i, [p.MARKER, p.HELLO, body]) for i, body in enumerate(garbage_hellos)]
    refusals.append(world.send(b"no-hello", [p.MARKER, p.LOGIN, b"\x01" * 300]))
    assert all(len(out) == 1 for out in refusals)
    assert {tuple(out[0].frames) for out in refusals} == {tuple(REFUSED_FRAMES)}
    assert world.core.sessions == {}


def test_busy_when_max_clients_are_online(keyring):
    world = World(keyring.keys, keyring.layout, {"max_clients": 1})
    world.login("alice")
    bob = world.client("bob")
    out = world.send(b"bob", bob.hello())
    assert out == [Outgoing(b"bob", BUSY_FRAMES)]
    with pytest.raises(BrokerBusy):
        bob.receive(out[0].frames)


def test_busy_when_the_last_place_was_taken_during_the_handshake(keyring):
    world = World(keyring.keys, keyring.layout, {"max_clients": 1})
    bob = world.client("bob")
    (challenge,) = world.send(b"bob", bob.hello())
    _, login = bob.receive(challenge.frames)
    world.login("alice")
    out = world.send(b"bob", login)
    assert out == [Outgoing(b"bob", BUSY_FRAMES)]
    with pytest.raises(BrokerBusy):
        bob.receive(out[0].frames)


def test_login_that_replaces_a_session_is_not_turned_away_when_full(keyring):
    world = World(keyring.keys, keyring.layout, {"max_clients": 1})
    second = world.client("alice", b"alice-2")
    (challenge,) = world.send(b"alice-2", second.hello())
    _, login = second.receive(challenge.frames)
    world.login("alice", b"alice-1")  # the room is now full
    seen = world.deliver(world.send(b"alice-2", login))
    assert seen[b"alice-1"] == [SessionClosed("you logged in again elsewhere")]
    assert [type(e).__name__ for e in seen[b"alice-2"]] == ["Welcome"]
    assert world.core.by_name == {"alice": b"alice-2"}


# ---------------------------------------------------------------- chat


def test_chat_fans_out_to_everyone_but_the_sender(world):
    for name in ("alice", "bob", "carol"):
        world.login(name)
    frames = world.clients[b"alice"].say("hello, ünïcode 👋", message_id="m-1")
    out = world.send(b"alice", frames)
    assert sorted(m.identity for m in out) == [b"alice", b"bob", b"carol"]
    assert all(m.frames[1] == p.EVENT and "ünïcode".encode() not in m.frames[2] for m in out)
    seen = world.deliver(out)
    for identity in (b"bob", b"carol"):
        (message,) = seen[identity]
        assert isinstance(message, ChatMessage)
        assert (message.sender, message.text, message.message_id) == ("alice", "hello, ünïcode 👋", "m-1")
    # The sender hears only that the broker took it, with the time the others see.
    assert seen[b"alice"] == [Accepted("m-1", seen[b"bob"][0].received)]


def refusal(world: World, out: list[Outgoing], identity: bytes) -> dict[str, Any]:
    """The one `refused` event `out` sends `identity` (and the client session's reaction to it: it ends)."""
    (frames,) = [m.frames for m in out if m.identity == identity]
    event = world.open_event(identity, frames)
    with pytest.raises(StatementRefused, match="the broker refused a statement"):
        world.clients[identity].receive(frames)
    assert world.clients[identity].state is State.CLOSED
    return event


def ended(world: World, out: list[Outgoing], name: str, identity: bytes) -> None:
    """`name`'s session (on `identity`) is over: the others were told it was lost, and it is no longer online."""
    assert identity not in world.core.sessions
    assert name not in world.core.by_name
    others = {m.identity for m in out} - {identity}
    assert world.deliver([m for m in out if m.identity != identity]) == {
        other: [Left(name, "connection lost")] for other in others
    }
    assert others == set(world.core.sessions)


def test_replayed_send_is_refused_and_ends_the_session(world):
    world.login("alice")
    world.login("bob")
    frames = world.clients[b"alice"].say("only once", message_id="once")
    seen = world.deliver(world.send(b"alice", frames))
    assert [m.text for m in seen[b"bob"]] == ["only once"]
    assert [type(e) for e in seen[b"alice"]] == [Accepted]
    out = world.send(b"alice", frames)
    assert refusal(world, out, b"alice") == {"type": "refused", "seq": 1, "id": "once"}
    ended(world, out, "alice", b"alice")


def test_reordered_send_is_refused_and_a_new_login_sends_again(world):
    world.login("alice")
    world.login("bob")
    alice = world.clients[b"alice"]
    first, second = alice.say("first", message_id="first"), alice.say("second", message_id="second")
    out = world.send(b"alice", second)
    assert refusal(world, out, b"alice") == {"type": "refused", "seq": 2, "id": "second"}
    ended(world, out, "alice", b"alice")
    assert world.send(b"alice", first) == []  # no session any more: dropped
    # The client logs in again and re-sends, in order, with the same ids: each is delivered once.
    world.login("alice")
    for text in ("first", "second"):
        seen = world.say(b"alice", text, message_id=text)
        assert [(m.text, m.message_id) for m in seen[b"bob"]] == [(text, text)]
        assert seen[b"alice"] == [Accepted(text, seen[b"bob"][0].received)]


def test_send_that_skips_a_sequence_number_is_refused(world, keyring):
    world.login("alice")
    world.login("bob")
    session = world.clients[b"alice"].session_id
    out = world.send(b"alice", world.signed_send(b"alice", keyring.keys["alice"], "alice", session, 2, message_id="x2"))
    assert refusal(world, out, b"alice") == {"type": "refused", "seq": 2, "id": "x2"}
    ended(world, out, "alice", b"alice")
    # Its session is over: even the statement that was due is dropped.
    assert world.send(b"alice", world.signed_send(b"alice", keyring.keys["alice"], "alice", session, 1)) == []
    assert world.core.archive.history == collections.deque()


def test_send_from_an_unauthenticated_identity_is_dropped(world):
    world.login("alice")
    world.login("bob")
    frames = world.clients[b"alice"].say("hijack", message_id="hijack")
    assert world.send(b"stranger", frames) == []
    assert world.send(b"stranger", PING_FRAMES) == []
    # The genuine sender's sequence was not consumed by the stranger's attempt.
    seen = world.deliver(world.send(b"alice", frames))
    assert [m.text for m in seen[b"bob"]] == ["hijack"]
    assert seen[b"alice"] == [Accepted("hijack", seen[b"bob"][0].received)]


FORGERIES = {
    "bobs-statement-on-alices-pipe": ("bob", "bob", "bob"),
    "claims-bob-on-alices-session": ("alice", "bob", "alice"),
    "claims-bobs-session": ("alice", "alice", "bob"),
    "wrong-signer": ("mallory", "alice", "alice"),
}


@pytest.mark.parametrize(("signer", "sender", "session_of"), FORGERIES.values(), ids=FORGERIES.keys())
def test_statement_claiming_another_sender_or_session_is_refused(world, keyring, signer, sender, session_of):
    world.login("alice")
    world.login("bob")
    session = world.clients[session_of.encode()].session_id
    forgery = world.signed_send(b"alice", keyring.keys[signer], sender, session, 1, message_id="forged")
    out = world.send(b"alice", forgery)
    assert refusal(world, out, b"alice") == {"type": "refused", "seq": 1, "id": "forged"}
    ended(world, out, "alice", b"alice")
    # Control: the same construction, honest, is delivered (so the refusal was not about seq or format).
    world.login("alice")
    alice_session = world.clients[b"alice"].session_id
    genuine = world.signed_send(b"alice", keyring.keys["alice"], "alice", alice_session, 1, "genuine", "forged")
    seen = world.deliver(world.send(b"alice", genuine))
    (message,) = seen[b"bob"]
    assert (message.sender, message.text) == ("alice", "genuine")
    assert seen[b"alice"] == [Accepted("forged", message.received)]


@pytest.mark.parametrize(
    "frames",
    [[p.MARKER, p.SEND], [b"zchat/2", p.SEND, b"x"], [p.MARKER, p.EVENT, b"x"], [p.MARKER, p.PING, b"x"]],
    ids=["two-frames", "old-marker", "broker-command", "ping-with-body"],
)
def test_malformed_frames_from_a_logged_in_user_are_dropped(world, frames):
    world.login("alice")
    world.login("bob")
    assert world.send(b"alice", frames) == []
    assert names(world.core.online()) == ["alice", "bob"]
    assert world.core.sessions[b"alice"].seq_in == 0


@pytest.mark.parametrize("body", [b"", b"\x01" * 400], ids=["empty", "garbage"])
def test_a_send_that_does_not_open_is_refused_without_naming_it(world, body):
    world.login("alice")
    world.login("bob")
    out = world.send(b"alice", [p.MARKER, p.SEND, body])
    assert refusal(world, out, b"alice") == {"type": "refused"}
    ended(world, out, "alice", b"alice")


def test_send_sealed_for_another_context_is_refused(world, keyring):
    world.login("alice")
    world.login("bob")
    session = world.clients[b"alice"].session_id
    statement = p.Statement.build("chat", "alice", session, 1, world.now, "moved", message_id="moved")
    signature = crypto.sign(keyring.keys["alice"], p.statement_signing_input(statement.text))
    body = crypto.seal(world.broker_public, p.SignedStatement(statement.text, signature).encode(), p.context(p.HELLO))
    out = world.send(b"alice", [p.MARKER, p.SEND, body])
    assert refusal(world, out, b"alice") == {"type": "refused"}  # it did not open: the broker cannot name it
    ended(world, out, "alice", b"alice")


def test_unacceptable_text_is_refused_to_its_sender_only(world, keyring):
    world.login("alice")
    world.login("bob")
    session = world.clients[b"alice"].session_id
    frames = world.signed_send(b"alice", keyring.keys["alice"], "alice", session, 1, "evil \x1b[2J", "evil")
    seen = world.deliver(world.send(b"alice", frames))
    assert seen == {b"alice": [Failed("evil", "message contains control characters: 'evil \\x1b[2J'")]}
    assert world.core.archive.history == collections.deque()
    assert world.core.sessions[b"alice"].seq_in == 1  # authentic and in order: the session goes on


def test_message_rate_limit_tells_the_sender(keyring):
    world = World(keyring.keys, keyring.layout, {"messages_per_second_per_user": 1.0})
    world.login("alice")
    world.login("bob")
    for i in range(2):  # a burst of 2
        seen = world.say(b"alice", f"m{i}", message_id=f"m{i}")
        assert [m.text for m in seen[b"bob"]] == [f"m{i}"]
        assert seen[b"alice"] == [Accepted(f"m{i}", seen[b"bob"][0].received)]
    seen = world.say(b"alice", "one too many", message_id="m2")
    assert seen == {b"alice": [Failed("m2", "you are sending more than 1 messages per second: 'one too many'")]}
    world.now += 1.0
    seen = world.say(b"alice", "later", message_id="m2")  # not kept, so the same id is new to the broker
    assert [m.text for m in seen[b"bob"]] == ["later"]
    assert seen[b"alice"] == [Accepted("m2", seen[b"bob"][0].received)]


# ---------------------------------------------------------------- commands


def test_who_lists_everyone_online(world):
    for name in ("carol", "alice", "bob"):
        world.login(name)
    seen = world.request(b"bob", "who")
    assert list(seen) == [b"bob"]
    (who,) = seen[b"bob"]
    assert isinstance(who, WhoList)
    assert names(who.users) == ["alice", "bob", "carol"]


def test_bye_removes_the_session_and_others_see_leave(world):
    world.login("alice")
    world.login("bob")
    world.login("carol")
    seen = world.request(b"alice", "bye")
    assert seen == {b"bob": [Left("alice", "left")], b"carol": [Left("alice", "left")]}
    assert names(world.core.online()) == ["bob", "carol"]
    assert "alice" not in world.core.by_name


def test_shutdown_from_a_non_admin_is_refused(world):
    world.login("alice")
    world.login("bob")
    seen = world.request(b"alice", "shutdown")
    (notice,) = seen.pop(b"alice")
    assert isinstance(notice, Notice)
    assert "/shutdown refused" in notice.message
    assert seen == {}
    assert world.core.shutdown_requested_by is None


def test_shutdown_from_an_admin_is_recorded(world):
    world.login("admin")
    world.login("bob")
    assert world.send(b"admin", world.clients[b"admin"].request("shutdown")) == []
    assert world.core.shutdown_requested_by == "admin"


def test_shutdown_tells_everyone(world):
    for name in ("alice", "bob", "admin"):
        world.login(name)
    seen = world.deliver(world.run(world.core.shutdown("admin", world.now)))
    assert seen == {identity: [Shutdown("admin")] for identity in (b"alice", b"bob", b"admin")}
    assert world.core.sessions == {}
    assert world.core.by_name == {}
    assert all(client.state is State.CLOSED for client in world.clients.values())


def test_second_login_replaces_the_first(world):
    world.login("alice", b"alice-old")
    world.login("bob")
    again = world.login("alice", b"alice-new")
    assert again.others[b"alice-old"] == [SessionClosed("you logged in again elsewhere")]
    assert world.clients[b"alice-old"].state is State.CLOSED
    left, joined = again.others[b"bob"]
    assert left == Left("alice", "logged in again")
    assert isinstance(joined, Joined)
    assert joined.user.name == "alice"
    assert names(again.welcome.users) == ["alice", "bob"]
    assert world.core.by_name["alice"] == b"alice-new"
    assert b"alice-old" not in world.core.sessions
    # The old identity can no longer speak. It is not answered EVICTED: that could overtake its `closed`.
    assert world.send(b"alice-old", PING_FRAMES) == []
    seen = world.say(b"alice-new", "I am back", message_id="back")
    assert [m.text for m in seen[b"bob"]] == ["I am back"]
    assert seen[b"alice-new"] == [Accepted("back", seen[b"bob"][0].received)]


# ---------------------------------------------------------------- liveness


def test_tick_pings_idle_sessions_after_the_heartbeat_interval(world):
    world.login("alice")
    world.login("bob")
    interval = world.config.heartbeat_interval
    assert world.run(world.core.tick(world.now + interval / 2)) == []
    world.now += interval
    out = world.run(world.core.tick(world.now))
    assert sorted(out, key=lambda m: m.identity) == [Outgoing(b"alice", PING_FRAMES), Outgoing(b"bob", PING_FRAMES)]
    assert world.deliver(out) == {b"alice": [], b"bob": []}
    world.now += interval / 5
    assert world.run(world.core.tick(world.now)) == []  # a sweep, and the PINGs are not due again yet


def test_tick_looks_at_sessions_a_bounded_number_of_times_per_interval(world):
    """The I/O loop may turn thousands of times a second; tick() sweeps every session only every tenth of an
    interval, so a timeout or PING is at most that late."""
    world.login("alice")
    interval = world.config.heartbeat_interval
    world.now += interval * 0.95
    assert world.core.tick(world.now) == []  # a sweep: no PING due yet
    world.now += interval * 0.05
    assert world.core.tick(world.now) == []  # the PING is due, but the last sweep was too recent
    world.now += interval * 0.06
    assert world.core.tick(world.now) == [Outgoing(b"alice", PING_FRAMES)]


def test_pings_do_not_wait_for_deliveries(world):
    """A PING is plain frames sent at once: even a session whose deliveries queue behind a burst gets one."""
    world.login("alice")
    world.login("bob")
    world.now += world.config.heartbeat_interval / 2
    world.say(b"alice", "keeps bob's line busy")
    world.now = T0 + world.config.heartbeat_interval
    out = world.core.tick(world.now)
    assert sorted(out, key=lambda m: m.identity) == [Outgoing(b"alice", PING_FRAMES), Outgoing(b"bob", PING_FRAMES)]


def test_silent_session_times_out_and_others_see_leave(world):
    world.login("alice")
    world.login("bob")
    timeout = world.config.heartbeat_timeout
    world.now += timeout - 1
    assert world.send(b"alice", world.clients[b"alice"].ping()) == []  # alice is alive, bob is silent
    world.deliver(world.run(world.core.tick(world.now)))
    world.now = T0 + timeout
    world.deliver(world.run(world.core.tick(world.now)))
    assert names(world.core.online()) == ["alice", "bob"]  # exactly at the limit: not yet
    world.now += 0.5
    seen = world.deliver(world.run(world.core.tick(world.now)))
    assert Left("bob", "timed out") in seen[b"alice"]
    assert b"bob" not in seen
    assert names(world.core.online()) == ["alice"]
    # bob's next frame is answered with EVICTED, which his session reports.
    out = world.send(b"bob", PING_FRAMES)
    assert out == [Outgoing(b"bob", EVICTED_FRAMES)]
    assert isinstance(world.deliver(out)[b"bob"][0], Notice)


def test_unreachable_peer_is_dropped_and_others_are_told(world):
    world.login("alice")
    world.login("bob")
    assert world.run(world.core.unreachable(b"bob", world.now)) == []  # nothing is sent to it any more...
    assert world.run(world.core.unreachable(b"bob", world.now)) == []
    seen = world.deliver(world.run(world.core.drained(world.now)))  # ...and it ends once its queued frames were read
    assert seen == {b"alice": [Left("bob", "connection lost")]}
    assert names(world.core.online()) == ["alice"]
    assert world.send(b"bob", PING_FRAMES) == []  # not evicted: it may simply log in again


def test_last_words_of_a_peer_that_vanished_still_count(world):
    """Regression: a message and goodbye queued before the connection dropped were lost."""
    world.login("alice")
    world.login("bob")
    last = world.clients[b"bob"].say("last words")
    bye = world.clients[b"bob"].request("bye")
    assert world.run(world.core.unreachable(b"bob", world.now)) == []  # the broker noticed the drop first
    seen = world.deliver(world.send(b"bob", last))
    assert [e.text for e in seen[b"alice"]] == ["last words"]
    assert b"bob" not in seen  # its answer has no connection to go to (its client re-sends, and hears "duplicate")
    seen = world.deliver(world.send(b"bob", bye))
    assert seen == {b"alice": [Left("bob", "left")]}
    assert world.deliver(world.run(world.core.drained(world.now))) == {}


def test_too_slow_peer_is_dropped_and_evicted(world):
    world.login("alice")
    world.login("bob")
    seen = world.deliver(world.run(world.core.too_slow(b"bob", world.now)))
    assert seen == {b"alice": [Left("bob", "too slow to keep up")]}
    assert names(world.core.online()) == ["alice"]
    assert world.send(b"bob", PING_FRAMES) == [Outgoing(b"bob", EVICTED_FRAMES)]


def test_session_ends_when_its_key_is_unregistered(keyring, tmp_path):
    root = tmp_path / "keys"
    shutil.copytree(keyring.root, root)
    world = World(keyring.keys, KeyLayout(root))
    world.login("alice")
    world.login("bob")
    world.layout.client_public("bob").unlink()
    world.now += world.config.heartbeat_interval
    out = world.read_keys()  # as the broker's I/O loop does at every heartbeat
    seen = world.deliver(out + world.run(world.core.tick(world.now)))
    assert seen[b"bob"] == [SessionClosed("your key is no longer registered with this broker")]
    assert Left("bob", "key no longer registered") in seen[b"alice"]
    assert names(world.core.online()) == ["alice"]


def test_silence_counts_only_up_to_the_last_time_the_loop_had_read_everything(world):
    world.login("bob")
    timeout = world.config.heartbeat_timeout
    # A long turn of the broker's loop: bob's PINGs may wait unread behind it, so he is not silent yet.
    world.now = T0 + timeout + 5
    world.deliver(world.run(world.core.tick(world.now, read_all_at=T0 + 1)))
    assert names(world.core.online()) == ["bob"]
    # Once the loop has read everything and still heard nothing from him, he is.
    world.now += 0.5
    world.deliver(world.run(world.core.tick(world.now, read_all_at=world.now)))
    assert names(world.core.online()) == []
