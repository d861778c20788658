"""The client in tests/independent_client.py, written only from docs/PROTOCOL.md, against the real broker.

The independent client imports nothing from the project; the other side of most conversations is the
project's own ChatClient, so both directions are checked: reference → independent and independent → reference.
The mailbox tests use the independent client on both sides (sender, then the recipient who logs in later), and
the duplicate test adds a second independent receiver, which, unlike the reference client, reports what it
skips as already shown (7.6).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.conftest import TEST_CONFIG, WAIT, BrokerProcess, wait_for
from tests.independent_client import (
    PREFIX,
    IndependentClient,
    LoginRefused,
    b64e,
    dumps,
    fingerprint,
    load_private_key,
    load_public_key,
    new_message_id,
    seal,
    sign,
)
from zchat.events import ChatMessage, Left

Event = dict[str, Any]


@pytest.fixture
def independent() -> Iterator[Callable[..., IndependentClient]]:
    """Log a user in through the independent client; every one is closed (linger 0) at teardown."""
    clients: list[IndependentClient] = []

    def factory(broker: BrokerProcess, name: str, **kwargs: Any) -> IndependentClient:
        client = IndependentClient(
            "127.0.0.1", broker.port, name, broker.keys.client_private(name), broker.keys.broker_public, **kwargs
        )
        clients.append(client)
        client.login(timeout=5.0)
        return client

    yield factory
    for client in clients:
        client.close(say_bye=False)


def wait_event(client: IndependentClient, predicate: Callable[[Event], bool], timeout: float = WAIT) -> Event:
    """The first event matching `predicate` within `timeout`; fails listing what arrived instead."""
    seen: list[Event] = []
    deadline = time.monotonic() + timeout
    while (remaining := deadline - time.monotonic()) > 0:
        event = client.receive(timeout=remaining)
        if event is None:
            continue
        for one in event["changes"] if event["type"] == "presence" else [event]:  # joins and leaves sent together
            if predicate(one):
                return one
            seen.append(one)
    raise AssertionError(f"{client.name}: no matching event within {timeout}s; got {seen!r}")


def chat_from(sender: str, text: str | None = None) -> Callable[[Event], bool]:
    return lambda e: e["type"] == "chat" and e["from"] == sender and (text is None or e["text"] == text)


def test_independent_client_logs_in(broker, independent):
    carol = independent(broker, "carol")

    assert carol.logged_in
    assert len(carol.session or "") == 64
    assert carol.seq_in == 1  # the welcome, and no history: HELLO said "history": false
    assert carol.heartbeat_interval == pytest.approx(0.2)
    assert carol.heartbeat_timeout == pytest.approx(TEST_CONFIG["heartbeat_timeout"])
    assert "carol" in carol.roster


def test_unregistered_name_is_refused(broker, independent):
    with pytest.raises(LoginRefused):  # mallory has a key but is not registered: the challenge does not open
        independent(broker, "mallory")


def test_message_from_a_normal_client_reaches_the_independent_client(broker, connect, independent):
    alice = connect(broker, "alice")
    carol = independent(broker, "carol")
    assert "alice" in carol.roster  # from the welcome

    text = 'Hello, Carol — ça va? "quoted" 👋'
    alice.send(text)
    event = wait_event(carol, chat_from("alice"))

    assert event["text"] == text  # the author's signature was verified with alice's roster key
    assert not event["private"]
    assert not event["action"]
    assert not event["history"]


def test_message_from_a_client_that_joins_later_is_verified(broker, connect, independent):
    carol = independent(broker, "carol")
    alice = connect(broker, "alice")
    joined = wait_event(carol, lambda e: e["type"] == "join")
    assert joined["name"] == "alice"

    alice.send("after the join")
    assert wait_event(carol, chat_from("alice"))["text"] == "after the join"


def test_a_forged_author_signature_is_rejected(broker, connect, independent):
    connect(broker, "alice")
    carol = independent(broker, "carol")
    # A statement claiming to be alice's but signed with carol's key must fail 7.4 step 4.
    statement = dumps(
        {
            "type": "chat",
            "from": "alice",
            "session": "00" * 32,
            "seq": 1,
            "ts": time.time(),
            "id": new_message_id(),
            "text": "forged",
        }
    )
    sig = sign(load_private_key(broker.keys.client_private("carol")), PREFIX + b"statement|" + statement.encode())
    event = {"type": "chat", "signed": statement, "sig": b64e(sig), "received": time.time()}
    with pytest.raises(ValueError, match="bad signature"):
        carol._chat(event, "live")


def test_message_from_the_independent_client_reaches_a_normal_client(broker, connect, independent):
    bob = connect(broker, "bob")
    carol = independent(broker, "carol")

    text = 'Grüße aus Köln — 日本語, émoji 👋🏽 and "quotes" and a\ttab'
    carol.send(text)
    event = wait_for(bob, lambda e: isinstance(e, ChatMessage) and e.sender == "carol")
    assert event.text == text

    carol.send("just for bob", to="bob")
    event = wait_for(bob, lambda e: isinstance(e, ChatMessage) and e.sender == "carol")
    assert event.text == "just for bob"


def test_independent_client_survives_idle_heartbeat_intervals(broker, connect, independent):
    carol = independent(broker, "carol")
    idle = 2 * carol.heartbeat_timeout  # without PINGs the broker would have timed carol out by now

    deadline = time.monotonic() + idle
    events: list[Event] = []
    while (remaining := deadline - time.monotonic()) > 0:
        event = carol.receive(timeout=remaining)
        if event is not None:
            events.append(event)

    assert events == []  # no connection_lost, evicted or closed
    assert carol.logged_in
    assert carol.pings_sent >= idle / carol.heartbeat_interval / 2
    assert carol.pings_received > 0  # the broker heartbeats too

    alice = connect(broker, "alice")  # the broker still counts carol as online: she is told of the join
    assert wait_event(carol, lambda e: e["type"] == "join")["name"] == "alice"
    alice.send("still there?")
    assert wait_event(carol, chat_from("alice"))["text"] == "still there?"
    carol.send("yes")
    assert wait_for(alice, lambda e: isinstance(e, ChatMessage) and e.sender == "carol").text == "yes"


def test_history_is_verified_with_the_author_key(broker, connect, independent):
    alice = connect(broker, "alice")
    alice.send("before carol came")
    bob = connect(broker, "bob")  # bob's own history replay shows that the broker has kept the message
    wait_for(bob, lambda e: isinstance(e, ChatMessage) and e.text == "before carol came")
    alice.close(say_bye=True)  # the author need not be online for a history event (7.5)
    wait_for(bob, lambda e: isinstance(e, Left))

    carol = independent(broker, "carol", history=True)
    assert "alice" not in carol.roster  # so the signature can only have been checked with the `author` key
    event = wait_event(carol, chat_from("alice"))
    assert event["text"] == "before carol came"
    assert event["history"]


# --- zchat/3: answers by id, duplicates, mailboxes, refused statements -------------------------------------------


def reference_events_until(client: Any, predicate: Callable[[Any], bool], timeout: float = WAIT) -> list[Any]:
    """Every event the reference client receives up to and including the first one matching `predicate`."""
    seen: list[Any] = []
    deadline = time.monotonic() + timeout
    while (remaining := deadline - time.monotonic()) > 0:
        event = client.receive(timeout=remaining)
        if event is None:
            continue
        seen.append(event)
        if predicate(event):
            return seen
    raise AssertionError(f"{client.name}: no matching event within {timeout}s; got {seen!r}")


def independent_events_until(
    client: IndependentClient, predicate: Callable[[Event], bool], timeout: float = WAIT
) -> list[Event]:
    """Every event the independent client returns up to and including the first one matching `predicate`."""
    seen: list[Event] = []
    deadline = time.monotonic() + timeout
    while (remaining := deadline - time.monotonic()) > 0:
        event = client.receive(timeout=remaining)
        if event is None:
            continue
        seen.append(event)
        if predicate(event):
            return seen
    raise AssertionError(f"{client.name}: no matching event within {timeout}s; got {seen!r}")


def answer_for(message_id: str) -> Callable[[Event], bool]:
    return lambda e: e["type"] in ("accepted", "failed", "refused") and e.get("id") == message_id


def from_carol(text: str) -> Callable[[Any], bool]:
    return lambda e: isinstance(e, ChatMessage) and e.sender == "carol" and e.text == text


def round_trip(client: IndependentClient) -> list[Event]:
    """Send `who` and read up to its answer: the broker handles a connection's frames in order, and everything it
    had for this session before the answer (a mail included, 5.5 step 6) comes before it."""
    client.who()
    return independent_events_until(client, lambda e: e["type"] == "who")


def test_a_room_message_is_accepted_by_its_id_and_reaches_the_reference_client(broker, connect, independent):
    bob = connect(broker, "bob")
    carol = independent(broker, "carol")

    before = time.time()
    message_id = carol.send("hello with an id")
    assert message_id in carol.outbox  # kept until the broker answers (6.1, 6.4)
    accepted = wait_event(carol, answer_for(message_id))

    assert accepted["type"] == "accepted"
    assert not accepted["queued"]  # a room message waits in nobody's mailbox
    assert not accepted["duplicate"]
    assert before - 1 <= accepted["received"] <= time.time() + 1  # the broker's clock
    assert message_id not in carol.outbox
    assert carol.skipped == []
    assert wait_for(bob, from_carol("hello with an id")).text == "hello with an id"


def test_a_resend_in_a_new_session_is_a_duplicate_and_is_not_delivered_again(broker, connect, independent):
    bob = connect(broker, "bob")  # the reference client
    alice = independent(broker, "alice")  # a second receiver that counts what it skips as already shown (7.6)
    first = independent(broker, "carol")

    message_id = first.send("only once, please")
    accepted = wait_event(first, answer_for(message_id))
    assert accepted["type"] == "accepted"
    assert not accepted["duplicate"]
    assert wait_for(bob, from_carol("only once, please"))
    live = wait_event(alice, chat_from("carol", "only once, please"))
    assert live["id"] == message_id
    assert live["received"] == accepted["received"]  # the same `received` as in the sender's answer (10.5)
    first.close(say_bye=True)

    second = independent(broker, "carol")  # a new object: a new socket, a new session, an empty outbox
    assert second.session != first.session
    assert second.send("only once, please", message_id=message_id) == message_id  # the same id (6.1, 6.4 step 1)
    again = wait_event(second, answer_for(message_id))
    assert again["type"] == "accepted"
    assert again["duplicate"] is True
    assert not again["queued"]
    assert again["received"] == accepted["received"]  # the time of the first one (6.4 step 1)
    assert second.skipped == []

    # A message sent after the duplicate reaches everyone after anything the duplicate could have caused.
    second.send("a new message")
    assert wait_event(second, lambda e: e["type"] == "accepted")["duplicate"] is False
    seen_by_bob = reference_events_until(bob, from_carol("a new message"))
    assert [e for e in seen_by_bob if from_carol("only once, please")(e)] == []
    seen_by_alice = independent_events_until(alice, chat_from("carol", "a new message"))
    assert [e for e in seen_by_alice if e["type"] == "chat" and e["id"] == message_id] == []
    assert alice.duplicates_skipped == 0  # the broker did not send it again at all, not even to be skipped
    assert alice.skipped == []


def test_a_private_message_to_an_offline_user_is_kept_and_comes_as_mail(broker, independent):
    carol = independent(broker, "carol")
    assert "bob" not in carol.roster  # registered, but not online

    message_id = carol.send("are you there, bob?", to="bob")
    accepted = wait_event(carol, answer_for(message_id))
    assert accepted["type"] == "accepted"
    assert accepted["queued"] is True  # kept in bob's mailbox (6.4, 6.5)
    assert not accepted["duplicate"]

    bob = independent(broker, "bob")  # history=False: mail comes whatever the HELLO said (5.1, 6.5)
    mail = wait_event(bob, lambda e: e["type"] == "mail")
    assert mail["from"] == "carol"
    assert mail["id"] == message_id
    assert mail["text"] == "are you there, bob?"
    assert mail["to"] == "bob"  # addressed to the receiver itself (7.4 step 3)
    assert mail["away"] is True  # the inner event was marked away (7.4)
    assert mail["private"] is True
    assert mail["history"] is False
    assert mail["received"] == accepted["received"]
    # Verified with the `author` key carried in the mail (7.4 step 2): carol's registered key.
    carol_der = load_public_key(broker.keys.client_public("carol")).export_key(format="DER")
    assert mail["author_fingerprint"] == fingerprint(carol_der)
    assert bob.skipped == []

    # Acknowledged (8.4): nothing is left unacknowledged, and the broker has deleted the kept copy (6.5).
    bob.acknowledge()
    assert bob.pending_ack is None
    assert bob.acks_sent >= 1  # the welcome and the mail, together or one by one
    assert all(e["type"] != "mail" for e in round_trip(bob))  # the ACK went out before the `who`
    bob.close(say_bye=True)

    bob_again = independent(broker, "bob")  # a fresh client: it would show a mail that came again
    assert all(e["type"] != "mail" for e in round_trip(bob_again))  # a mail would have come before the answer
    assert bob_again.duplicates_skipped == 0
    assert bob_again.skipped == []

    # With bob online, a private message comes live at once, not queued, and not marked away.
    message_id = carol.send("now you are here", to="bob")
    live = wait_event(bob_again, chat_from("carol", "now you are here"))
    assert live["to"] == "bob"
    assert live["private"]
    assert not live["away"]
    accepted = wait_event(carol, answer_for(message_id))
    assert accepted["type"] == "accepted"
    assert not accepted["queued"]


def test_a_mail_that_fails_the_checks_of_7_4_is_skipped(broker, independent):
    bob = independent(broker, "bob")
    carol_key = load_private_key(broker.keys.client_private("carol"))
    carol_der = carol_key.publickey().export_key(format="DER")
    bob_public = bob.own_key.publickey()

    def mail(to: str | None = "bob", away: Any = True, context: bytes = b"MAIL", signer: Any = carol_key) -> Event:
        statement = {
            "type": "chat",
            "from": "carol",
            "session": "00" * 32,
            "seq": 1,
            "ts": time.time(),
            "id": new_message_id(),
            "text": "kept for you",
        }
        if to is not None:
            statement["to"] = to
        signed = dumps(statement)
        inner = {
            "type": "chat",
            "signed": signed,
            "sig": b64e(sign(signer, PREFIX + b"statement|" + signed.encode())),
            "received": time.time(),
            "away": away,
            "author": {"name": "carol", "key": b64e(carol_der), "fingerprint": fingerprint(carol_der), "bot": True},
        }
        return {"type": "mail", "sealed": b64e(seal(bob_public, dumps(inner).encode(), context))}

    assert bob._mail(mail())["text"] == "kept for you"  # the well-formed one opens and verifies
    for bad, problem in [
        (mail(context=b"EVENT"), "does not open"),  # sealed under another context than zchat/3|MAIL (3.1)
        (mail(away=False), "not marked away"),
        (mail(to=None), "kept message to the room"),
        (mail(to="alice"), "someone else"),
        (mail(signer=load_private_key(broker.keys.client_private("alice"))), "bad signature"),
    ]:
        with pytest.raises(ValueError, match=problem):
            bob._mail(bad)


def test_a_skipped_sequence_number_is_refused_and_ends_the_session(broker, connect, independent):
    bob = connect(broker, "bob")
    carol = independent(broker, "carol")
    first_session = carol.session

    carol.seq_out += 1  # a number spent on a statement that never reached the socket (6.1)
    message_id = carol.send("after a lost statement")  # so this one is numbered 2 where the broker expects 1
    refused = wait_event(carol, lambda e: e["type"] == "refused")
    assert refused == {"type": "refused", "seq": 2, "id": message_id}  # what the statement claimed (6.3)
    assert carol.over
    assert not carol.logged_in
    assert message_id in carol.outbox  # not answered: it is sent again in the next session
    after = list(iter(lambda: carol._recv(0.5), None))  # raw frames on the old socket until 0.5 s of silence
    assert [command for command, _ in after if command != b"PING"] == []  # nothing follows a refused (7.3)
    seen_by_bob = reference_events_until(bob, lambda e: isinstance(e, Left))  # "connection lost" (6.3)
    assert [e for e in seen_by_bob if from_carol("after a lost statement")(e)] == []

    carol.login()  # a new socket and session; the outbox is sent again after the welcome (6.3, 8.3)
    assert carol.session != first_session
    accepted = wait_event(carol, answer_for(message_id))
    assert accepted["type"] == "accepted"
    assert not accepted["duplicate"]  # the refused statement had not been accepted
    assert message_id not in carol.outbox
    assert wait_for(bob, from_carol("after a lost statement"))
