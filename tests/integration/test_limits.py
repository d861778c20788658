"""Configurable limits and registry changes, on a real broker: each limit refuses only what exceeds it."""

from __future__ import annotations

import pytest

from tests.conftest import collect, wait_for
from zchat import crypto
from zchat import protocol as p
from zchat.client.session import ClientSession
from zchat.errors import BrokerBusy, ConnectError
from zchat.events import Accepted, ChatMessage, Failed, Joined, Left, Notice, SessionClosed


@pytest.mark.slow
def test_messages_over_the_per_user_rate_are_refused_to_that_user_only(make_broker, connect):
    broker = make_broker(messages_per_second_per_user=2, heartbeat_timeout=30)
    bob = connect(broker, "bob")
    carol = connect(broker, "carol")
    alice = connect(broker, "alice")
    wait_for(bob, lambda e: isinstance(e, Joined) and e.user.name == "alice")
    for i in range(10):
        alice.send(f"flood {i}")
    answers = [e for e in collect(alice, 1.5) if isinstance(e, Accepted | Failed)]
    refused = [e for e in answers if isinstance(e, Failed)]
    delivered = [e.text for e in collect(bob, 0.5) if isinstance(e, ChatMessage)]
    assert refused, "nothing was refused"
    assert all("more than 2 messages per second" in f.reason for f in refused)
    assert len(answers) == 10
    assert len(delivered) + len(refused) == 10
    assert delivered == [f"flood {i}" for i in range(len(delivered))]  # the first ones, in order
    assert not [e for e in collect(carol, 0.3) if isinstance(e, Notice | Failed)]
    alice.send("after a pause")  # the bucket refills
    assert wait_for(bob, lambda e: isinstance(e, ChatMessage)).text == "after a pause"


def test_logins_over_the_per_user_rate_are_turned_away_and_others_are_not(make_broker, connect):
    broker = make_broker(logins_per_second_per_user=0.1)  # a burst of one login, then one per 10 s
    connect(broker, "alice").close()
    with pytest.raises(BrokerBusy, match="busy"):
        connect(broker, "alice")
    assert "logins/s by alice" in broker.log()
    # bob shares alice's address (a NAT, say) and still gets in: the limit is per registered user.
    assert connect(broker, "bob").online


def test_max_clients_turns_away_logins_beyond_it(make_broker, connect):
    broker = make_broker(max_clients=2)
    alice = connect(broker, "alice")
    connect(broker, "bob")
    with pytest.raises(BrokerBusy):
        connect(broker, "carol")
    alice.close()
    assert connect(broker, "carol").online


def test_removed_key_ends_the_open_session_and_blocks_login(broker, connect):
    bob = connect(broker, "bob")
    alice = connect(broker, "alice")
    broker.keys.client_public("alice").unlink()
    closed = wait_for(alice, lambda e: isinstance(e, SessionClosed), timeout=5)
    assert "no longer registered" in closed.reason
    assert alice.closed
    left = wait_for(bob, lambda e: isinstance(e, Left), timeout=5)
    assert (left.name, left.reason) == ("alice", "key no longer registered")
    with pytest.raises(ConnectError, match="login refused"):
        connect(broker, "alice")


def test_replaced_key_ends_the_open_session(broker, connect, keyring):
    bob = connect(broker, "bob")
    connect(broker, "alice")
    broker.keys.client_public("alice").write_bytes(crypto.export_public_pem(keyring.keys["mallory"]))
    left = wait_for(bob, lambda e: isinstance(e, Left), timeout=5)
    assert (left.name, left.reason) == ("alice", "key no longer registered")


def test_every_login_failure_gets_the_same_bytes(broker, keyring, raw_dealer):
    """No oracle: bad OAEP padding, bad AEAD tag, bad signature, unknown user and replay look alike."""
    broker_pub = crypto.load_public_key(broker.keys.broker_public)
    answers = {}

    def answer(frames: list[bytes], sock=None) -> list[bytes]:
        sock = sock or raw_dealer(broker)
        sock.send_multipart(frames)
        return sock.recv_multipart()

    hello = ClientSession("alice", keyring.keys["alice"], broker_pub).hello()
    k = 256  # 2048-bit broker key
    bad_padding = bytearray(hello[2])
    bad_padding[1 : k + 1] = bytes(k)  # an RSA block that does not decode as OAEP
    answers["oaep padding"] = answer([p.MARKER, p.HELLO, bytes(bad_padding)])
    bad_tag = bytearray(hello[2])
    bad_tag[1 + k + 12] ^= 1
    answers["aead tag"] = answer([p.MARKER, p.HELLO, bytes(bad_tag)])
    # A name other than the connection's CurveZMQ user: registered (bob) or not (mallory), the same answer.
    answers["another registered user"] = answer(ClientSession("bob", keyring.keys["bob"], broker_pub).hello())
    answers["unknown user"] = answer(ClientSession("mallory", keyring.keys["mallory"], broker_pub).hello())

    # A correct HELLO, then a LOGIN signed with the wrong key.
    sock = raw_dealer(broker)
    impostor = ClientSession("alice", keyring.keys["alice"], broker_pub)
    sock.send_multipart(impostor.hello())
    impostor.receive(sock.recv_multipart())
    forged_login = p.Login(crypto.sign(keyring.keys["mallory"], b"not the challenge")).encode()
    answers["bad signature"] = answer(
        p.encode_frames(p.LOGIN, crypto.seal(broker_pub, forged_login, p.context(p.LOGIN))), sock
    )

    # A genuine login, recorded and replayed from a new connection.
    genuine = raw_dealer(broker)
    session = ClientSession("alice", keyring.keys["alice"], broker_pub)
    genuine.send_multipart(session.hello())
    _, login = session.receive(genuine.recv_multipart())
    assert login is not None
    genuine.send_multipart(login)
    assert genuine.recv_multipart()[1] == p.EVENT  # the welcome: that login was good
    answers["replayed login"] = answer(login)
    assert set(map(tuple, answers.values())) == {(p.MARKER, p.REFUSED, b"")}, answers
