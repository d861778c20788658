"""The client in tests/independent_client.py, written only from docs/PROTOCOL.md, against the real broker.

The independent client imports nothing from the project; the other side of most conversations is the
project's own ChatClient, so both directions are checked: reference → independent and independent → reference.
The mailbox tests use the independent client on both sides (sender, then the recipient who logs in later), and
the duplicate test adds a second independent receiver, which, unlike the reference client, reports what it
skips as already shown (7.6).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import TEST_CONFIG, WAIT, BrokerProcess, wait_for
from tests.independent_client import (
    EXIT_CLOSED,
    EXIT_ERROR,
    EXIT_OK,
    PREFIX,
    BrokerBusy,
    IndependentClient,
    KeyNotAccepted,
    LoginRefused,
    LoginTimeout,
    NotNow,
    NotTheBroker,
    RefusedTooOften,
    SessionOver,
    TurnedAway,
    UnusableWelcome,
    Welcome,
    b64e,
    dumps,
    fingerprint,
    load_private_key,
    load_public_key,
    load_public_key_file,
    new_message_id,
    public_der,
    public_key_file_text,
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


@pytest.mark.slow
def test_independent_client_logs_in(broker, independent):
    carol = independent(broker, "carol")

    assert carol.logged_in
    assert len(carol.session or "") == 64
    assert carol.seq_in == 1  # the welcome, and no history: HELLO said "history": false
    assert carol.heartbeat_interval == pytest.approx(0.2)
    assert carol.heartbeat_timeout == pytest.approx(TEST_CONFIG["heartbeat_timeout"])
    assert "carol" in carol.roster


def test_unregistered_name_is_refused(broker, independent):
    # mallory has a key but is not registered: the CurveZMQ handshake is refused with ZAP 400 (1.5, 5.6)
    with pytest.raises(KeyNotAccepted, match="does not accept this key") as refused:
        independent(broker, "mallory")
    assert isinstance(refused.value, LoginRefused)


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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_a_skipped_sequence_number_is_refused_and_ends_the_session(broker, connect, independent):
    bob = connect(broker, "bob")
    carol = independent(broker, "carol")
    first_session = carol.session

    carol.seq_out += 1  # a number spent on a statement that never reached the socket (6.1)
    message_id = carol.send("after a lost statement")  # so this one is numbered 2 where the broker expects 1
    refused = wait_event(carol, lambda e: e["type"] == "refused")
    assert refused == {"type": "refused", "seq": 2, "id": message_id, "given_up": False}  # as claimed (6.3)
    assert carol.over
    assert not carol.logged_in
    assert message_id in carol.outbox  # not answered: it is sent again in the next session
    after = list(iter(lambda: carol._recv(0.5), None))  # raw frames on the old socket until 0.5 s of silence
    assert [command for command, _ in after if command != b"PING"] == []  # nothing follows a refused (7.3)
    seen_by_bob = reference_events_until(bob, lambda e: isinstance(e, Left))  # "connection lost" (6.3)
    assert [e for e in seen_by_bob if from_carol("after a lost statement")(e)] == []

    carol.reconnect()  # after the backoff, a new socket and session; the outbox is sent again (6.3, 8.3)
    assert carol.session != first_session
    accepted = wait_event(carol, answer_for(message_id))
    assert accepted["type"] == "accepted"
    assert not accepted["duplicate"]  # the refused statement had not been accepted
    assert message_id not in carol.outbox
    assert wait_for(bob, from_carol("after a lost statement"))


@pytest.mark.slow
def test_a_message_refused_three_times_is_given_up(broker, independent):
    carol = independent(broker, "carol")
    message_id = new_message_id()
    for attempt in range(3):
        carol.seq_out += 1  # a spent number: the broker refuses the next statement (6.3)
        carol.send("refused every time", message_id=message_id)
        refused = wait_event(carol, lambda e: e["type"] == "refused")
        assert refused["id"] == message_id
        assert refused["given_up"] is (attempt == 2)  # three times: given up, not re-sent forever (6.1, 8.3)
        carol.login(resend=False)
    assert message_id not in carol.outbox


# --- the welcome (8.1, 9.3), key files (2.1), the handshake (1.5, 5.6), re-login rules (5.6, 9.3) ----------------


def user_object(public_pem_path: Path, name: str) -> Event:
    der = public_der(load_public_key(public_pem_path))
    return {"name": name, "key": b64e(der), "fingerprint": fingerprint(der), "bot": False}


def test_a_welcome_outside_the_bounds_or_with_another_key_for_us_is_unusable(broker, independent):
    carol = independent(broker, "carol")
    me = user_object(broker.keys.client_public("carol"), "carol")
    bob = user_object(broker.keys.client_public("bob"), "bob")
    good = {
        "type": "welcome",
        "name": "carol",
        "users": [bob, me],
        "heartbeat_interval": 1.0,
        "heartbeat_timeout": 6.0,
        "max_text_bytes": 65536,
    }
    Welcome(good, "carol", carol.own_fingerprint)  # a usable one
    Welcome(
        {**good, "heartbeat_interval": 0.05, "heartbeat_timeout": 0.2, "max_text_bytes": 1},
        "carol",
        carol.own_fingerprint,
    )  # the bounds are included
    Welcome(
        {**good, "heartbeat_interval": 60, "heartbeat_timeout": 600, "max_text_bytes": 1_048_576},
        "carol",
        carol.own_fingerprint,
    )
    for changes, problem in [
        ({"heartbeat_interval": 0}, "heartbeat_interval"),
        ({"heartbeat_interval": 0.04}, "heartbeat_interval"),
        ({"heartbeat_interval": 61, "heartbeat_timeout": 600}, "heartbeat_interval"),
        ({"heartbeat_interval": float("nan")}, "finite"),
        ({"heartbeat_timeout": 0}, "heartbeat_timeout"),
        ({"heartbeat_timeout": 601}, "heartbeat_timeout"),
        ({"heartbeat_timeout": float("inf")}, "finite"),
        ({"heartbeat_interval": 1.0, "heartbeat_timeout": 1.9}, "twice"),
        ({"heartbeat_interval": True}, "number"),
        ({"max_text_bytes": 0}, "max_text_bytes"),
        ({"max_text_bytes": 1_048_577}, "max_text_bytes"),
        ({"max_text_bytes": 65536.0}, "integer"),
        ({"name": "bob"}, "another name"),
        ({"users": [bob]}, "does not list us"),
        ({"users": [bob, {**bob, "name": "carol"}]}, "another key for us"),  # bob's key named as ours (9.3)
        ({"users": [bob, me, {**bob, "name": "carol"}]}, "another key for us"),  # every entry with our name
        ({"users": [bob, {**me, "fingerprint": bob["fingerprint"]}]}, "fingerprint does not match"),
    ]:
        with pytest.raises(ValueError, match=problem):
            Welcome({**good, **changes}, "carol", carol.own_fingerprint)

    # Arriving as seq 1 of a login, such a welcome ends the login at once, as a broker that lies (5.6, 7.1 step 6).
    carol.seq_in = 0
    delivery = dumps({"session": carol.session, "seq": 1, "event": {**good, "heartbeat_interval": 0}})
    mac = hmac.new(carol.delivery_key, PREFIX + b"delivery|" + delivery.encode(), hashlib.sha256).digest()
    body = seal(carol.own_key.publickey(), dumps({"delivery": delivery, "mac": b64e(mac)}).encode(), b"EVENT")
    with pytest.raises(UnusableWelcome, match=re.escape("heartbeat_interval 0 s is outside 0.05-60 s")):
        carol._on_event(body)
    assert carol.exit_status(UnusableWelcome("x")) == EXIT_ERROR


def split_blocks(text: str) -> list[str]:
    """The blocks of a key file written by public_key_file_text, each with its BEGIN and END lines."""
    blocks, current = [], []
    for line in text.splitlines(keepends=True):
        current.append(line)
        if line.startswith("-----END "):
            blocks.append("".join(current))
            current = []
    return blocks


def test_a_public_key_file_must_bind_its_curve_key(broker, tmp_path):
    load_public_key_file(broker.keys.broker_public)  # the broker's own file: bound, and it verifies
    carol_key = load_private_key(broker.keys.client_private("carol"))
    bob_key = load_private_key(broker.keys.client_private("bob"))
    rsa, curve, binding = split_blocks(public_key_file_text(carol_key))
    _, bob_curve, bob_binding = split_blocks(public_key_file_text(bob_key))
    spaced = binding.replace("\n", "\n  \n", 2)  # whitespace inside base64 is ignored
    foreign_block = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"

    def write(text: str) -> Path:
        path = tmp_path / f"key{len(list(tmp_path.iterdir()))}.pub"
        path.write_text(text)
        return path

    key, curve_key = load_public_key_file(write(rsa + curve + spaced))
    assert public_der(key) == public_der(carol_key)
    assert len(curve_key) == 32
    for text, problem in [
        (rsa + curve, "not bound"),  # written before keys were bound (2.1)
        (rsa, "no ZCHAT CURVE25519 PUBLIC KEY block"),  # before zchat/2
        (rsa + curve + bob_binding, "does not verify"),  # another key's binding
        (rsa + bob_curve + binding, "does not verify"),  # another Curve key under carol's binding
        (rsa + binding, "where the ZCHAT CURVE25519 PUBLIC KEY block should come"),  # a binding without a Curve key
        (curve + rsa + binding, "should come"),  # not in the order of 2.1
        (rsa + rsa + curve + binding, "repeated"),
        (rsa + curve + binding + binding, "repeated"),
        (rsa + curve + binding + foreign_block, "may not hold"),  # any other block
        (rsa + curve + binding.replace("-----END ZCHAT CURVE25519 BINDING-----\n", ""), "does not end"),
    ]:
        with pytest.raises(ValueError, match=problem):
            load_public_key_file(write(text))

    # A client refuses a pinned broker.pub whose Curve key is not bound (2.1).
    unbound = write("".join(split_blocks(Path(broker.keys.broker_public).read_text())[:2]))
    with pytest.raises(ValueError, match="not bound"):
        IndependentClient("127.0.0.1", broker.port, "carol", broker.keys.client_private("carol"), unbound)


@pytest.mark.slow
def test_a_wrong_broker_key_times_out_and_is_named_as_the_likely_cause(broker, tmp_path):
    # A well-formed, bound key file, but carol's key, not the broker's: the handshake breaks off (5.6).
    wrong = tmp_path / "not-the-broker.pub"
    wrong.write_text(public_key_file_text(load_private_key(broker.keys.client_private("bob"))))
    client = IndependentClient("127.0.0.1", broker.port, "carol", broker.keys.client_private("carol"), wrong)
    try:
        with pytest.raises(LoginTimeout, match="pinned broker key is likely not this broker's") as timed_out:
            client.login(timeout=2.0)
        assert isinstance(timed_out.value, NotNow)  # not a refusal
        assert not isinstance(timed_out.value, LoginRefused)
        assert client.exit_status(timed_out.value) == EXIT_ERROR  # a first login that failed (8.3)
    finally:
        client.close(say_bye=False)


def scripted(client: IndependentClient, outcomes: list[Any]) -> list[float]:
    """Replace the client's login attempts by `outcomes` (an exception to raise, or a welcome to return)."""
    waits: list[float] = []

    def attempt(timeout: float) -> Any:
        outcome = outcomes.pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    client._login_attempt = attempt
    client.sleep = waits.append
    return waits


LOGIN_WELCOME = {"type": "welcome", "name": "carol", "users": []}


def carol(broker: BrokerProcess) -> IndependentClient:
    return IndependentClient(
        "127.0.0.1", broker.port, "carol", broker.keys.client_private("carol"), broker.keys.broker_public
    )


def logged_in_carol(broker: BrokerProcess) -> IndependentClient:
    client = carol(broker)
    scripted(client, [LOGIN_WELCOME])
    client.login()
    return client


def test_the_login_rules_of_5_6_a_first_login_stops_at_its_first_failure(broker):
    # A first login stops at its first failure of any kind, refusal or not, without waiting.
    for failure in [BrokerBusy("busy"), TurnedAway("500"), LoginTimeout("slow"), LoginRefused("no")]:
        first = carol(broker)
        waits = scripted(first, [failure, LOGIN_WELCOME])
        with pytest.raises(type(failure)):
            first.reconnect()
        assert waits == []
        assert first.exit_status(failure) == EXIT_ERROR
        first.close()


def test_the_login_rules_of_5_6_a_relogin_retries_and_counts_refusals(broker):
    # A re-login retries BUSY, turned-away handshakes and timeouts for as long as it takes, and refusals up to
    # three times since the last welcome; the others neither reset nor add to that count.
    again = logged_in_carol(broker)
    assert again.welcomed
    outcomes = [LoginRefused("1"), BrokerBusy("b"), LoginRefused("2"), TurnedAway("t"), LoginTimeout("s")]
    outcomes += [BrokerBusy("b")] * 3 + [LoginRefused("3"), LOGIN_WELCOME]
    waits = scripted(again, outcomes)
    assert again.reconnect() == LOGIN_WELCOME
    assert len(waits) == 10  # a backoff before every attempt
    for wait, nominal in zip(waits, [0.5, 1, 2, 4, 8, 8, 8, 8, 8, 8], strict=True):
        assert 0.8 * nominal <= wait <= 1.2 * nominal  # 0.5 s doubling to 8 s, +-20 % (8.3)
    assert again.refusals == 0  # reset by the welcome, and so is the backoff
    waits = scripted(again, [LoginRefused(str(n)) for n in range(4)] + [LOGIN_WELCOME])
    with pytest.raises(RefusedTooOften):
        again.reconnect()  # the fourth refusal since the last welcome stops the client
    assert len(waits) == 4
    assert 0.4 <= waits[0] <= 0.6
    assert again.exit_status(RefusedTooOften("4")) == EXIT_ERROR
    again.close()


def test_the_login_rules_of_5_6_a_lying_broker_is_given_up_and_a_refused_key_ends_the_client(broker):
    # A broker that fails its proof, or sends an unusable welcome, is given up at once (status 1).
    for lie in [NotTheBroker("proof"), UnusableWelcome("bounds")]:
        liar = logged_in_carol(broker)
        waits = scripted(liar, [lie, LOGIN_WELCOME])
        with pytest.raises(type(lie)):
            liar.reconnect()
        assert len(waits) == 1
        assert liar.exit_status(lie) == EXIT_ERROR
        liar.close()

    # A key refused by the handshake (ZAP 400) at a re-login ends the client as `closed` does (status 3).
    revoked = logged_in_carol(broker)
    scripted(revoked, [KeyNotAccepted("400"), LOGIN_WELCOME])
    with pytest.raises(KeyNotAccepted) as refused:
        revoked.reconnect()
    assert revoked.exit_status(refused.value) == EXIT_CLOSED
    with pytest.raises(SessionOver):
        revoked.reconnect()
    revoked.close()


# --- the client as a program: exit statuses (8.3) ----------------------------------------------------------------

PROGRAM = Path(__file__).resolve().parents[1] / "independent_client.py"


def start_program(broker: BrokerProcess, name: str, *extra: str) -> subprocess.Popen[str]:
    command = [sys.executable, str(PROGRAM), "--host", "127.0.0.1", "--port", str(broker.port), "--user", name]
    command += ["--key", str(broker.keys.client_private(name)), "--broker-key", str(broker.keys.broker_public)]
    return subprocess.Popen(
        [*command, *extra], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def read_line_until(proc: subprocess.Popen[str], predicate: Callable[[str], bool], timeout: float = WAIT) -> str:
    assert proc.stdout is not None
    lines: list[str] = []
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            if not selector.select(remaining):
                continue
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if predicate(line):
                return line
    raise AssertionError(f"no matching line from the program; got {lines!r}")


def finish(proc: subprocess.Popen[str], stdin: str | None = None) -> tuple[int, str]:
    try:
        _, stderr = proc.communicate(stdin, timeout=WAIT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    return proc.returncode, stderr


@pytest.mark.slow
def test_the_program_exits_1_when_its_first_login_fails(broker):
    status, stderr = finish(start_program(broker, "mallory", "--no-input"))
    assert status == EXIT_ERROR
    assert "login refused: the broker does not accept this key" in stderr


@pytest.mark.slow
def test_the_program_sends_its_input_and_exits_0_at_its_end(broker, connect):
    bob = connect(broker, "bob")
    proc = start_program(broker, "carol")
    read_line_until(proc, lambda line: '"type":"welcome"' in line)
    status, stderr = finish(proc, "hello from the program\n")
    assert status == EXIT_OK, stderr
    assert "failed" not in stderr  # the message was answered before the client left
    assert wait_for(bob, from_carol("hello from the program"))


def test_the_program_exits_3_when_the_broker_closes_its_session(broker, independent):
    proc = start_program(broker, "carol", "--no-input")
    read_line_until(proc, lambda line: '"type":"welcome"' in line)
    independent(broker, "carol")  # the newer login wins: the program's session is closed for good (5.5 step 4)
    status, stderr = finish(proc)
    assert status == EXIT_CLOSED
    assert "session closed: you logged in again elsewhere" in stderr


@pytest.mark.slow
def test_the_program_exits_0_on_sigterm(broker):
    proc = start_program(broker, "carol", "--no-input")
    read_line_until(proc, lambda line: '"type":"welcome"' in line)
    proc.send_signal(signal.SIGTERM)
    status, stderr = finish(proc)
    assert status == EXIT_OK, stderr
