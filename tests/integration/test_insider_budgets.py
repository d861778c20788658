"""A registered user turned hostile, at the level of the attack: real brokers over loopback, hand-driven sessions.

Each test is one finding of the insider review: mail that grew without bound while its owner stayed online,
SENDs that outlived their session, a message rate that refilled at every login, and a disk that could fill.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable

import pytest
import zmq

from tests.conftest import BrokerProcess, KeyRing, raw_login, wait_for
from zchat.client.session import ClientSession
from zchat.events import Accepted, ChatMessage, Event, Failed, Joined

BIG = "m" * 40_000  # a large private message: about 54 KB sealed, twice at rest


def answers(session: ClientSession, sock: zmq.Socket[bytes], wanted: int, timeout: float = 15.0) -> list[Event]:
    """Read EVENTs on a raw session (never acknowledging them) until `wanted` answers (accepted or failed) came."""
    got: list[Event] = []
    deadline = time.monotonic() + timeout
    while len(got) < wanted:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"only {len(got)} of {wanted} answers: {got!r}"
        if not sock.poll(int(remaining * 1000)):
            continue
        events, _ = session.receive(sock.recv_multipart())
        got += [e for e in events if isinstance(e, Accepted | Failed)]
    return got


def database_bytes(broker: BrokerProcess) -> int:
    data = broker.workdir / "data"
    return sum(f.stat().st_size for f in data.glob("zchat.db*"))


def test_an_online_user_who_never_reads_her_mail_cannot_grow_her_mailbox_past_its_limit(
    make_broker: Callable[..., BrokerProcess], raw_dealer: Callable[..., zmq.Socket[bytes]], keyring: KeyRing, connect
):
    """Finding 1: the mailbox limits were skipped while the recipient was online, so a user who mailed herself
    and never acknowledged stored 96 MB in 30 s against a 4 MB limit."""
    limit = 6
    broker = make_broker(mailbox_messages=limit, messages_per_second_per_user=1000, heartbeat_timeout=30)
    bob = connect(broker, "bob")
    sock = raw_dealer(broker, "alice")
    session, _ = raw_login(sock, "alice", keyring, broker)
    before = database_bytes(broker)
    count = 3 * limit
    for i in range(count):
        sock.send_multipart(session.say(f"{i} {BIG}", to="alice"))
    got = answers(session, sock, count)
    accepted = [a for a in got if isinstance(a, Accepted)]
    refused = [a for a in got if isinstance(a, Failed)]
    assert len(accepted) == limit
    assert len(refused) == count - limit
    assert all("alice's mailbox is full" in f.reason for f in refused)
    # What she kept is her quota, not what she sent (the WAL may hold a page twice).
    assert database_bytes(broker) - before < 4 * limit * len(BIG)
    bob.send("the room goes on")  # and an honest user is not affected
    assert wait_for(bob, lambda e: isinstance(e, Accepted))


@pytest.mark.slow
def test_a_sender_cannot_keep_more_mail_waiting_for_one_recipient_than_a_share_of_her_quota(
    make_broker: Callable[..., BrokerProcess], connect
):
    """Each sender has a quota of mail waiting for others, and one recipient who does not read holds at most a
    tenth of it: one user cannot fill everyone's mailboxes, nor make someone (a bot answering privately) spend
    the whole quota on her."""
    broker = make_broker(sent_mail_messages=20, messages_per_second_per_user=1000)
    alice = connect(broker, "alice")
    for i, to in enumerate(["bob", "bob", "bob", "carol", "bob"]):
        alice.send(f"note {i}", to=to)
    got = [wait_for(alice, lambda e: isinstance(e, Accepted | Failed)) for _ in range(5)]
    by_text = {answer.text: type(answer) for answer in got}  # a refusal may come before an earlier acceptance
    assert by_text == {"note 0": Accepted, "note 1": Accepted, "note 2": Failed, "note 3": Accepted, "note 4": Failed}
    assert all("private messages waiting for bob to read" in f.reason for f in got if isinstance(f, Failed))
    bob = connect(broker, "bob")  # bob reads his two: alice may send to him again
    for _ in range(2):
        wait_for(bob, lambda e: isinstance(e, ChatMessage))
    deadline = time.monotonic() + 10
    while True:
        alice.send("after bob read", to="bob")
        answer = wait_for(alice, lambda e: isinstance(e, Accepted | Failed))
        if isinstance(answer, Accepted):
            break
        assert time.monotonic() < deadline, "bob's acknowledgement never freed alice's quota"
        time.sleep(0.2)  # bob's client acknowledges after its next read; ask again


@pytest.mark.slow
def test_sends_queued_by_a_session_that_is_replaced_are_dropped_unopened(
    make_broker: Callable[..., BrokerProcess], raw_dealer: Callable[..., zmq.Socket[bytes]], keyring: KeyRing, connect
):
    """Finding 2: the SENDs a refused, evicted or replaced session had queued were still opened (an RSA
    private-key operation each), and each new login got a fresh allowance and a turn of its own."""
    broker = make_broker(workers=1, heartbeat_timeout=30)
    bob = connect(broker, "bob")
    sock = raw_dealer(broker, "alice")
    session, _ = raw_login(sock, "alice", keyring, broker)
    for i in range(900):
        sock.send_multipart(session.say(f"flood {i}"))
    # alice logs in again on a new connection: the first session ends, with most of its SENDs not yet opened.
    second = raw_dealer(broker, "alice")
    raw_login(second, "alice", keyring, broker)
    match = broker.wait_for_log(r"alice's session ended with (\d+) envelopes not yet opened")
    assert int(match.group(1)) > 0
    # Nothing of the old session reaches the room once it ended: what bob sees is a prefix of the flood.
    bob.send("still here")
    assert wait_for(bob, lambda e: isinstance(e, Accepted))
    shown = [e.text for e in _drain(bob) if isinstance(e, ChatMessage)]
    assert shown == [f"flood {i}" for i in range(len(shown))]


def test_logging_in_again_does_not_refill_the_message_rate(make_broker: Callable[..., BrokerProcess], connect):
    """Finding 5: logging in again after every 40 messages gave 115 accepted/s against 20/s per user."""
    broker = make_broker(messages_per_second_per_user=0.05)  # a burst of one message, then one per 20 s
    connect(broker, "bob")
    alice = connect(broker, "alice")
    alice.send("first")
    alice.send("second")
    got = [wait_for(alice, lambda e: isinstance(e, Accepted | Failed)) for _ in range(2)]
    assert {answer.text: type(answer) for answer in got} == {"first": Accepted, "second": Failed}
    alice.close()
    again = connect(broker, "alice")
    again.send("after logging in again")
    answer = wait_for(again, lambda e: isinstance(e, Accepted | Failed))
    assert isinstance(answer, Failed)
    assert "messages per second" in answer.reason


def test_a_full_store_refuses_new_messages_until_reading_frees_room(make_broker: Callable[..., BrokerProcess], connect):
    """The disk: past `max_store_bytes` new messages are refused with a clear `failed` and one log line, the
    rest of the chat goes on, and storing resumes by itself once reading frees room."""
    broker = make_broker(max_store_bytes=400_000, messages_per_second_per_user=1000, mailbox_bytes=10**8)
    alice = connect(broker, "alice")
    refused = None
    for i in range(40):  # about 40 KB each at rest: the store is full long before the last
        alice.send(f"{i} {'z' * 20_000}", to="bob")
        answer = wait_for(alice, lambda e: isinstance(e, Accepted | Failed))
        if isinstance(answer, Failed):
            refused = answer
            break
    assert refused is not None, "the store never filled"
    assert "the broker's store is full" in refused.reason
    alice.send("public, no room either")
    assert isinstance(wait_for(alice, lambda e: isinstance(e, Accepted | Failed)), Failed)
    assert len(re.findall("new messages are refused until there is room", broker.log())) == 1
    bob = connect(broker, "bob")  # logging in and reading still work; reading frees the mail's room
    wait_for(alice, lambda e: isinstance(e, Joined) and e.user.name == "bob")
    for _ in range(i):
        wait_for(bob, lambda e: isinstance(e, ChatMessage))
    deadline = time.monotonic() + 20
    while True:
        alice.send("stored again")
        answer = wait_for(alice, lambda e: isinstance(e, Accepted | Failed))
        if isinstance(answer, Accepted):
            break
        assert time.monotonic() < deadline, f"storing never resumed: {answer!r}"
        time.sleep(0.3)
    assert wait_for(bob, lambda e: isinstance(e, ChatMessage) and e.text == "stored again")
    assert "there is room in the store again" in broker.log()


def _drain(client) -> list[Event]:
    events: list[Event] = []
    while (event := client.receive(timeout=0.5)) is not None:
        events.append(event)
    return events
