"""Joins and leaves queued per member and sent together (zchat/broker/core.py), and how a client reads them.

The `world` harness (`presence_interval` 0) flushes presence after every step; these tests drive
`world.core` with `run_inline` (which never flushes) to see what waits, and when it goes out.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest

from tests.unit.test_session import broker_event
from tests.unit.world import World
from zchat import crypto
from zchat import protocol as p
from zchat.broker.work import DeliveryJob, Outgoing, Work, run_inline
from zchat.events import Accepted, ChatMessage, Joined, Left, UserInfo, Welcome
from zchat.protocol import events as wire


def run(world: World, work: list[Work]) -> list[Outgoing]:
    """Do the core's jobs now, without sending the joins and leaves that wait."""
    return run_inline(world.core, world.runner, work, world.now)


def receive(world: World, identity: bytes, frames: list[bytes]) -> list[Outgoing]:
    """One message from `identity` into the broker, without a presence flush."""
    return run(world, world.core.receive(identity, list(frames), world.now, source=identity.hex()))


def flush(world: World) -> list[Work]:
    return world.core.flush_presence(world.now)


def quiet_login(world: World, name: str) -> None:
    """World.login without the flush: the new user gets its welcome, the others hear nothing yet."""
    identity = name.encode()
    session = world.client(name, identity)
    (challenge,) = receive(world, identity, session.hello())
    assert challenge.frames[1] == p.CHALLENGE
    events, login = session.receive(challenge.frames)
    assert events == []
    assert login is not None
    out = receive(world, identity, login)
    assert {m.identity for m in out} == {identity}, "only the welcome (and history) goes out before a flush"
    welcome, *_ = world.deliver(out)[identity]
    assert isinstance(welcome, Welcome)


def deliveries(work: list[Work]) -> list[DeliveryJob]:
    assert all(isinstance(item, DeliveryJob) for item in work), work
    return [item for item in work if isinstance(item, DeliveryJob)]


def user(world: World, name: str) -> UserInfo:
    return world.core.sessions[world.core.by_name[name]].info


# ---------------------------------------------------------------- batching at the broker


def test_logins_without_a_flush_reach_a_member_as_one_event(world):
    world.login("bob")
    for name in ("alice", "carol", "admin"):
        quiet_login(world, name)

    out = run(world, flush(world))
    to_bob = [m for m in out if m.identity == b"bob"]
    assert len(to_bob) == 1
    assert to_bob[0].frames[1] == p.EVENT

    events = world.deliver(out)
    assert events[b"bob"] == [Joined(user(world, name)) for name in ("alice", "carol", "admin")]
    # Those who logged in later than others heard of them too, in order; nobody hears of themselves.
    assert events[b"alice"] == [Joined(user(world, "carol")), Joined(user(world, "admin"))]
    assert events[b"carol"] == [Joined(user(world, "admin"))]
    assert b"admin" not in events
    for identity in (b"bob", b"alice", b"carol", b"admin"):
        assert set(world.clients[identity].roster) == {"alice", "bob", "carol", "admin"}
    assert world.clients[b"bob"].roster["carol"].fingerprint == crypto.fingerprint(world.keys["carol"])
    assert flush(world) == []  # nothing left to send


@pytest.fixture
def paced(keyring) -> World:
    """A broker that sends joins and leaves at most every half second, as by default."""
    return World(keyring.keys, keyring.layout, {"presence_interval": INTERVAL})


INTERVAL = 0.5


def test_presence_goes_out_at_once_after_a_quiet_spell_then_at_most_once_per_interval(paced):
    world = paced
    world.login("bob")
    start = world.now
    quiet_login(world, "alice")
    (job,) = deliveries(flush(world))  # nothing went out lately: at once
    assert world.deliver(run(world, [job])) == {b"bob": [Joined(user(world, "alice"))]}

    world.now = start + INTERVAL * 0.6
    quiet_login(world, "carol")
    assert flush(world) == []
    world.now = start + INTERVAL * 0.9
    quiet_login(world, "admin")
    assert flush(world) == []

    world.now = start + INTERVAL  # counted from the last flush
    jobs = deliveries(flush(world))
    by_identity = {job.identity: job.event for job in jobs}
    assert set(by_identity) == {b"bob", b"alice", b"carol"}
    assert by_identity[b"bob"]["type"] == "presence"
    assert [c["user"]["name"] for c in by_identity[b"bob"]["changes"]] == ["carol", "admin"]
    events = world.deliver(run(world, jobs))
    assert events[b"bob"] == [Joined(user(world, "carol")), Joined(user(world, "admin"))]
    assert events[b"carol"] == [Joined(user(world, "admin"))]
    assert flush(world) == []

    world.now += 10.0  # quiet again: the next change goes out at once
    receive(world, b"admin", world.clients[b"admin"].request("bye"))
    assert {job.identity for job in deliveries(flush(world))} == {b"bob", b"alice", b"carol"}


def test_presence_sent_early_with_an_event_does_not_delay_the_next_flush(paced):
    world = paced
    world.login("bob")
    quiet_login(world, "alice")
    receive(world, b"alice", world.clients[b"alice"].say("hi"))  # bob hears of alice with her chat
    quiet_login(world, "carol")
    assert {job.identity for job in deliveries(flush(world))} == {b"bob", b"alice"}  # no flush yet: at once


def test_presence_due_tells_the_loop_how_long_it_may_sleep(paced):
    world = paced
    world.login("bob")
    assert world.core.presence_due(world.now) is None  # nothing waits: sleep as long as you like
    quiet_login(world, "alice")
    assert world.core.presence_due(world.now) == 0.0  # nothing went out lately: now
    deliveries(flush(world))
    world.now += INTERVAL / 5
    quiet_login(world, "carol")
    assert world.core.presence_due(world.now) == pytest.approx(INTERVAL * 0.8)


def test_chat_from_a_new_user_comes_after_their_pending_join(world):
    world.login("bob")
    quiet_login(world, "alice")
    assert "alice" not in world.clients[b"bob"].roster

    out = receive(world, b"alice", world.clients[b"alice"].say("hi bob", message_id="hi"))
    assert [m.identity for m in out] == [b"bob", b"bob"]
    events = world.deliver(out)
    message = events[b"bob"][1]
    assert events == {
        b"bob": [
            Joined(user(world, "alice")),
            ChatMessage("alice", "hi bob", message.timestamp, received=message.received, message_id="hi"),
        ]
    }
    assert "alice" in world.clients[b"bob"].roster
    assert flush(world) == []  # the join went out with the chat: it is not sent twice
    # alice hears that the broker took it at the commit, not before, and nothing about presence.
    assert world.deliver(run(world, world.core.commit(world.now))) == {b"alice": [Accepted("hi", message.received)]}


def test_a_private_message_also_sends_the_pending_presence_first(world):
    world.login("bob")
    world.login("carol")
    quiet_login(world, "alice")
    world.core.unreachable(b"carol", world.now)
    assert run(world, world.core.drained(world.now)) == []

    out = receive(world, b"alice", world.clients[b"alice"].say("psst", to="bob", message_id="psst"))
    events = world.deliver(out)
    joined, left, message = events[b"bob"]
    assert (joined, left) == (Joined(user(world, "alice")), Left("carol", "connection lost"))
    assert isinstance(message, ChatMessage)
    assert (message.sender, message.text, message.private, message.away) == ("alice", "psst", True, False)
    assert set(events) == {b"bob"}
    # Delivered live, so not queued; carol's leave, still waiting for alice, goes first with her answer too.
    assert world.deliver(run(world, world.core.commit(world.now))) == {
        b"alice": [Left("carol", "connection lost"), Accepted("psst", message.received, queued=False)]
    }
    assert flush(world) == []


def test_a_single_change_goes_out_as_a_plain_join_or_leave(world):
    world.login("bob")
    quiet_login(world, "alice")
    (job,) = deliveries(flush(world))
    assert job.identity == b"bob"
    assert job.event["type"] == "join"
    assert job.event["user"]["name"] == "alice"
    assert world.deliver(run(world, [job]))[b"bob"] == [Joined(user(world, "alice"))]

    assert receive(world, b"alice", world.clients[b"alice"].request("bye")) == []
    (job,) = deliveries(flush(world))
    assert job.identity == b"bob"
    assert job.event == {"type": "leave", "name": "alice", "reason": "left"}
    assert world.deliver(run(world, [job]))[b"bob"] == [Left("alice", "left")]
    assert set(world.clients[b"bob"].roster) == {"bob"}


def test_mass_disconnect_reaches_a_member_as_one_event(world):
    for name in ("bob", "alice", "carol", "admin"):
        world.login(name)
    gone = (b"alice", b"carol", b"admin")
    for identity in gone:
        assert world.core.unreachable(identity, world.now) == []

    drained = world.core.drained(world.now)
    assert not [item for item in drained if isinstance(item, DeliveryJob)]
    assert run(world, drained) == []
    jobs = deliveries(flush(world))
    assert [job.identity for job in jobs] == [b"bob"]
    (job,) = jobs
    assert job.event["type"] == "presence"
    changes = job.event["changes"]
    assert sorted(c["name"] for c in changes) == ["admin", "alice", "carol"]
    assert all(c == {"type": "leave", "name": c["name"], "reason": "connection lost"} for c in changes)

    out = run(world, jobs)
    assert [m.identity for m in out] == [b"bob"]
    events = world.deliver(out)[b"bob"]
    assert events == [Left(c["name"], "connection lost") for c in changes]
    assert set(world.clients[b"bob"].roster) == {"bob"}
    assert world.core.online() == [user(world, "bob")]


def test_a_gone_session_still_opening_an_envelope_gets_no_presence(world):
    for name in ("bob", "alice", "carol"):
        world.login(name)
    # carol's last message is still being opened when the connections drop: her session outlives drained().
    held = world.core.receive(b"carol", world.clients[b"carol"].say("last words"), world.now, source="carol")
    for identity in (b"alice", b"carol"):
        world.core.unreachable(identity, world.now)
    assert run(world, world.core.drained(world.now)) == []
    assert b"carol" in world.core.sessions
    (job,) = deliveries(flush(world))
    assert job.identity == b"bob"
    assert job.event == {"type": "leave", "name": "alice", "reason": "connection lost"}
    out = run(world, [job])

    out += run(world, held)  # her message reaches bob, and only bob
    out += run(world, world.core.drained(world.now))
    out += run(world, flush(world))
    assert [m.identity for m in out] == [b"bob", b"bob", b"bob"]
    events = world.deliver(out)[b"bob"]
    assert events[0] == Left("alice", "connection lost")
    assert isinstance(events[1], ChatMessage)
    assert (events[1].sender, events[1].text) == ("carol", "last words")
    assert events[2:] == [Left("carol", "connection lost")]


def test_presence_for_a_member_who_leaves_before_the_flush_is_dropped(world):
    world.login("bob")
    quiet_login(world, "alice")  # a join waits for bob
    assert receive(world, b"bob", world.clients[b"bob"].request("bye")) == []
    (job,) = deliveries(flush(world))  # alice hears bob left; nothing is sealed for bob
    assert job.identity == b"alice"
    assert world.deliver(run(world, [job]))[b"alice"] == [Left("bob", "left")]


def test_logging_in_again_reaches_others_as_leave_then_join(world):
    world.login("bob")
    quiet_login(world, "alice")
    first = world.core.by_name["alice"]
    second = world.client("alice", b"alice-2")
    (challenge,) = receive(world, b"alice-2", second.hello())
    _, login = second.receive(challenge.frames)
    assert login is not None
    out = receive(world, b"alice-2", login)
    # The old session is told it was closed, the new one welcomed; bob hears nothing yet.
    assert [m.identity for m in out] == [first, b"alice-2"]

    (job,) = deliveries(flush(world))
    assert job.identity == b"bob"
    assert [c["type"] for c in job.event["changes"]] == ["join", "leave", "join"]
    events = world.deliver(run(world, [job]))[b"bob"]
    assert events == [
        Joined(user(world, "alice")),
        Left("alice", "logged in again"),
        Joined(user(world, "alice")),
    ]
    assert set(world.clients[b"bob"].roster) == {"alice", "bob"}


# ---------------------------------------------------------------- the client's side


@pytest.fixture
def pair(world):
    """alice and bob logged in; returns the world."""
    world.login("alice")
    world.login("bob")
    return world


def join_doc(world: World, name: str, fingerprint_of: str | None = None) -> dict[str, Any]:
    key = world.keys[name]
    fingerprint = crypto.fingerprint(world.keys[fingerprint_of or name])
    return {
        "type": "join",
        "user": wire.user_info_doc(UserInfo(name, fingerprint, False, crypto.public_key_to_der(key))),
    }


BAD_CHANGES = {
    "wrong-fingerprint": lambda w: join_doc(w, "admin", fingerprint_of="alice"),
    "bogus-type": lambda w: {"type": "bogus", "name": "admin"},
    "not-an-object": lambda w: "join",
    "leave-without-reason": lambda w: {"type": "leave", "name": "admin"},
    "leave-bad-name": lambda w: {"type": "leave", "name": "no spaces allowed", "reason": "left"},
    "join-without-user": lambda w: {"type": "join"},
}


@pytest.mark.parametrize("bad", list(BAD_CHANGES), ids=list(BAD_CHANGES))
@pytest.mark.parametrize("where", ["last", "first"])
def test_presence_with_one_bad_change_is_skipped_whole(pair, caplog, bad, where):
    bob = pair.clients[b"bob"]
    before = bob.roster
    # Good changes next to the bad one: a join and a leave that must not be applied either.
    good = [join_doc(pair, "carol"), {"type": "leave", "name": "alice", "reason": "left"}]
    changes = [*good, BAD_CHANGES[bad](pair)] if where == "last" else [BAD_CHANGES[bad](pair), *good]
    with caplog.at_level(logging.WARNING, logger="zchat.client.session"):
        result = bob.receive(broker_event(pair, b"bob", {"type": "presence", "changes": changes}))
    assert result == ([], None)
    assert bob.roster == before
    assert "ignored a 'presence' event" in caplog.text

    # The session goes on: the next genuine event is accepted and applied in order.
    events, _ = bob.receive(broker_event(pair, b"bob", {"type": "presence", "changes": good}))
    carol = pair.keys["carol"]
    assert events == [
        Joined(UserInfo("carol", crypto.fingerprint(carol), False, crypto.public_key_to_der(carol))),
        Left("alice", "left"),
    ]
    assert set(bob.roster) == {"bob", "carol"}


@pytest.mark.parametrize(
    "event",
    [{"type": "presence"}, {"type": "presence", "changes": []}, {"type": "presence", "changes": {"type": "join"}}],
    ids=["missing", "empty", "not-a-list"],
)
def test_presence_without_a_list_of_changes_is_skipped(pair, event):
    bob = pair.clients[b"bob"]
    before = bob.roster
    assert bob.receive(broker_event(pair, b"bob", event)) == ([], None)
    assert bob.roster == before
    events, _ = bob.receive(broker_event(pair, b"bob", {"type": "leave", "name": "alice", "reason": "left"}))
    assert events == [Left("alice", "left")]
    assert set(bob.roster) == {"bob"}


def test_presence_changes_apply_in_order(pair):
    bob = pair.clients[b"bob"]
    changes = [
        join_doc(pair, "carol"),
        {"type": "leave", "name": "carol", "reason": "left"},
        {"type": "leave", "name": "alice", "reason": "timed out"},
        join_doc(pair, "alice"),
    ]
    events, _ = bob.receive(broker_event(pair, b"bob", {"type": "presence", "changes": changes}))
    assert [type(e).__name__ for e in events] == ["Joined", "Left", "Left", "Joined"]
    assert set(bob.roster) == {"alice", "bob"}
