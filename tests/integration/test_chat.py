"""A real broker process on loopback and real client sessions: the chat behaviours of the core issue."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest
import zmq

from tests.conftest import ROOT, collect, raw_login, run_env, wait_for
from zchat import crypto
from zchat import protocol as p
from zchat.client.sync_client import ChatClient
from zchat.errors import ConnectError, LocalProtocolError
from zchat.events import ChatMessage, ConnectionLost, Joined, Left, Notice, SessionClosed, Shutdown, Welcome, WhoList


def is_chat(text: str | None = None):
    return lambda e: isinstance(e, ChatMessage) and (text is None or e.text == text)


@pytest.mark.slow
def test_fan_out_reaches_everyone_but_the_sender(broker, connect):
    alice, bob, carol = (connect(broker, n) for n in ("alice", "bob", "carol"))
    wait_for(alice, lambda e: isinstance(e, Joined) and e.user.name == "carol")
    alice.send("one for all")
    for client in (bob, carol):
        msg = wait_for(client, is_chat())
        assert (msg.sender, msg.text) == ("alice", "one for all")
    assert not [e for e in collect(alice, 0.5) if isinstance(e, ChatMessage)]


@pytest.mark.slow
@pytest.mark.parametrize(
    "text",
    [
        "héllo wörld — ünïcode ✓",
        "emoji 😀👍🏽 and 中文 and עברית",
        "x" * (64 * 1024),  # exactly the default cap
        "🙂" * (16 * 1024),  # 64 KiB of 4-byte characters
        '"\\' * (32 * 1024),  # 64 KiB of characters JSON must escape
    ],
    ids=["latin", "emoji-cjk-rtl", "64KiB-ascii", "64KiB-emoji", "64KiB-escapes"],
)
def test_unicode_and_long_messages_arrive_intact(broker, connect, text):
    bob = connect(broker, "bob")
    alice = connect(broker, "alice")
    alice.send(text)
    assert wait_for(bob, is_chat()).text == text


@pytest.mark.slow
def test_messages_over_the_cap_or_with_control_characters_are_refused_locally(broker, connect):
    alice = connect(broker, "alice")
    with pytest.raises(LocalProtocolError, match="limit"):
        alice.send("x" * (64 * 1024 + 1))
    with pytest.raises(LocalProtocolError, match="control"):
        alice.send("evil \x1b[2J terminal escape")
    with pytest.raises(ValueError, match="control"):  # as it was before the one error root: bots catch ValueError
        alice.send("evil \x1b[2J terminal escape")


def test_messages_from_one_sender_arrive_in_order_exactly_once(make_broker, connect):
    broker = make_broker(messages_per_second_per_user=1000)
    bob = connect(broker, "bob")
    alice = connect(broker, "alice")
    for i in range(50):
        alice.send(f"message {i}")
    got = [wait_for(bob, is_chat()).text for _ in range(50)]
    assert got == [f"message {i}" for i in range(50)]
    assert not [e for e in collect(bob, 0.5) if isinstance(e, ChatMessage)]


@pytest.mark.slow
def test_exit_tells_the_others(broker, connect):
    bob = connect(broker, "bob")
    alice = connect(broker, "alice")
    wait_for(bob, lambda e: isinstance(e, Joined))
    alice.close()
    left = wait_for(bob, lambda e: isinstance(e, Left))
    assert (left.name, left.reason) == ("alice", "left")


@pytest.mark.slow
def test_who_lists_everyone_with_fingerprints(broker, connect, keyring):
    alice = connect(broker, "alice")
    connect(broker, "bob", bot=True)
    wait_for(alice, lambda e: isinstance(e, Joined))
    alice.who()
    who = wait_for(alice, lambda e: isinstance(e, WhoList))
    assert {u.name: u.bot for u in who.users} == {"alice": False, "bob": True}
    fingerprints = {u.name: u.fingerprint for u in who.users}
    assert fingerprints["bob"] == crypto.fingerprint(keyring.keys["bob"])


def test_shutdown_is_refused_for_non_admins(broker, connect):
    alice = connect(broker, "alice")
    alice.request_shutdown()
    notice = wait_for(alice, lambda e: isinstance(e, Notice))
    assert "refused" in notice.message
    assert broker.alive()
    alice.send("still here")  # the session still works
    alice.who()
    wait_for(alice, lambda e: isinstance(e, WhoList))


def test_admin_shutdown_tells_everyone_and_stops_the_broker(broker, connect):
    bob = connect(broker, "bob")
    admin = connect(broker, "admin")
    admin.request_shutdown()
    for client in (bob, admin):
        assert wait_for(client, lambda e: isinstance(e, Shutdown)).by == "/shutdown by admin"
    assert broker.proc.wait(15) == 0
    assert "broker stopped" in broker.log()


def test_messages_sent_before_shutdown_are_delivered_first(broker, connect):
    bob = connect(broker, "bob")
    admin = connect(broker, "admin")
    for i in range(20):
        admin.send(f"last words {i}")
    admin.request_shutdown()
    texts = []
    while not isinstance(event := wait_for(bob, lambda e: isinstance(e, ChatMessage | Shutdown)), Shutdown):
        texts.append(event.text)
    assert texts == [f"last words {i}" for i in range(20)]


def test_unregistered_user_is_refused(broker, connect, keyring):
    with pytest.raises(ConnectError, match="login refused"):
        connect(broker, "mallory", key_path=keyring.private("mallory"))


def test_registered_name_with_the_wrong_key_is_refused(broker, connect, keyring):
    with pytest.raises(ConnectError, match="login refused"):
        connect(broker, "alice", key_path=keyring.private("mallory"))


@pytest.mark.slow
def test_broker_without_the_pinned_key_is_refused(make_broker, connect, keyring, tmp_path):
    broker = make_broker()
    impostor_pub = tmp_path / "impostor.pub"
    impostor_pub.write_bytes(crypto.export_public_file(keyring.keys["carol"]))
    with pytest.raises(ConnectError, match="did not complete the encrypted handshake"):
        connect(broker, "alice", broker_key_path=impostor_pub, connect_timeout=1.0)
    # The broker's Curve key (and its binding) with another RSA key: the binding does not verify, so the
    # client refuses the file itself.
    real_curve = broker.keys.broker_public.read_bytes().split(b"-----END PUBLIC KEY-----")[1]
    impostor_pub.write_bytes(crypto.export_public_pem(keyring.keys["carol"]).rstrip() + real_curve)
    with pytest.raises(crypto.KeyFileError, match="not bound to its RSA key"):
        connect(broker, "alice", broker_key_path=impostor_pub)
    # The broker's Curve key signed anew by another RSA key: the transport opens, the RSA proof still fails.
    impostor_pub.write_bytes(crypto.export_public_file(keyring.keys["carol"], curve=broker.curve_key))
    with pytest.raises(ConnectError, match="login refused"):
        connect(broker, "alice", broker_key_path=impostor_pub)


def test_keys_registered_while_running_are_picked_up(broker, connect, tmp_path):
    from zchat.keystore import create_client_key

    create_client_key(broker.keys, "newcomer", bits=2048)
    newcomer = connect(broker, "newcomer")
    assert newcomer.online


@pytest.mark.slow
def test_second_login_with_the_same_name_replaces_the_first(broker, connect):
    bob = connect(broker, "bob")
    first = connect(broker, "alice")
    second = connect(broker, "alice")
    closed = wait_for(first, lambda e: isinstance(e, SessionClosed))
    assert closed.reason == "you logged in again elsewhere"
    assert first.closed  # and it does not come back to take the name over
    wait_for(bob, lambda e: isinstance(e, Left) and e.reason == "logged in again")
    second.send("from the new session")
    assert wait_for(bob, is_chat()).text == "from the new session"
    bob.who()
    who = wait_for(bob, lambda e: isinstance(e, WhoList))
    assert sorted(u.name for u in who.users) == ["alice", "bob"]


@pytest.mark.slow
def test_replayed_login_is_refused(broker, connect, keyring, raw_dealer):
    first = raw_dealer(broker)
    _, (hello, login) = raw_login(first, "alice", keyring, broker)
    # The recorded LOGIN alone, from a new connection.
    replay = raw_dealer(broker)
    replay.send_multipart(login)
    assert replay.recv_multipart() == [p.MARKER, p.REFUSED, b""]
    # The recorded HELLO then LOGIN: the broker's fresh challenge makes the old signature useless.
    replay2 = raw_dealer(broker)
    replay2.send_multipart(hello)
    assert replay2.recv_multipart()[1] == p.CHALLENGE
    replay2.send_multipart(login)
    assert replay2.recv_multipart() == [p.MARKER, p.REFUSED, b""]


@pytest.mark.slow
def test_frames_from_unauthenticated_identities_are_ignored(broker, connect, keyring, raw_dealer):
    bob = connect(broker, "bob")
    sock = raw_dealer(broker)
    session, _ = raw_login(sock, "alice", keyring, broker)
    captured = session.say("captured once", message_id=p.new_message_id())
    sock.send_multipart(captured)
    assert wait_for(bob, is_chat()).text == "captured once"
    intruder = raw_dealer(broker)
    intruder.setsockopt(zmq.RCVTIMEO, 500)
    intruder.send_multipart(captured)  # alice's genuine frame, from another identity
    intruder.send_multipart(p.encode_frames(p.PING))
    sock.send_multipart(captured)  # and replayed on alice's own connection
    with pytest.raises(zmq.Again):
        intruder.recv_multipart()
    assert not [e for e in collect(bob, 1.0) if isinstance(e, ChatMessage)]


def test_garbage_frames_do_not_disturb_the_broker(broker, connect, raw_dealer):
    bob = connect(broker, "bob")
    alice = connect(broker, "alice")
    junk = raw_dealer(broker)
    for frames in (
        [b""],
        [b"garbage"],
        [p.MARKER],
        [p.MARKER, p.HELLO],
        [p.MARKER, p.HELLO, b"\x01" + os.urandom(300)],
        [p.MARKER, p.LOGIN, os.urandom(1000)],
        [p.MARKER, p.SEND, os.urandom(1000)],
        [p.MARKER, b"NOPE", b""],
        [b"zchat/2", p.HELLO, b""],
        [p.MARKER, p.PING, b"body"],
        [os.urandom(50) for _ in range(20)],
    ):
        junk.send_multipart(frames)
    big = raw_dealer(broker)
    big.send_multipart([p.MARKER, p.SEND, b"\0" * (2 * 1024 * 1024)])  # over libzmq's size limit
    alice.send("still working")
    assert wait_for(bob, is_chat()).text == "still working"
    assert broker.alive()


def test_killed_client_is_removed_and_announced(broker, connect, keyring):
    bob = connect(broker, "bob")
    victim = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "chat_client.py"),
            "--host=127.0.0.1",
            f"--port={broker.port}",
            "--user=alice",
            f"--key={broker.keys.client_private('alice')}",
            f"--broker-key={broker.keys.broker_public}",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        cwd=broker.workdir,  # its config.json, not the working tree's
        env=run_env(),
    )
    try:
        wait_for(bob, lambda e: isinstance(e, Joined) and e.user.name == "alice", timeout=15)
        killed_at = time.monotonic()
        victim.send_signal(signal.SIGKILL)
        left = wait_for(bob, lambda e: isinstance(e, Left), timeout=10)
        assert left.name == "alice"
        assert left.reason in ("timed out", "connection lost")
        assert time.monotonic() - killed_at < 10
    finally:
        victim.kill()
        victim.wait(10)
        victim.stdin.close()


@pytest.mark.slow
def test_client_logs_in_again_after_a_broker_restart(broker, connect):
    alice = connect(broker, "alice")
    bob = connect(broker, "bob")
    port = broker.port
    broker.kill()
    for client in (alice, bob):
        assert isinstance(wait_for(client, lambda e: isinstance(e, ConnectionLost)), ConnectionLost)
    broker.start(port=port)
    for client in (alice, bob):
        wait_for(client, lambda e: isinstance(e, Welcome), timeout=20)
    alice.send("back again")
    assert wait_for(bob, is_chat()).text == "back again"


@pytest.mark.slow
def test_messages_typed_while_reconnecting_are_sent_after_login(broker, connect):
    alice = connect(broker, "alice")
    port = broker.port
    broker.kill()
    wait_for(alice, lambda e: isinstance(e, ConnectionLost))
    alice.send("queued while offline")
    broker.start(port=port)
    # ChatClient only acts when polled, so carol is surely online before alice logs in again.
    carol = connect(broker, "carol")
    wait_for(alice, lambda e: isinstance(e, Welcome), timeout=20)
    assert wait_for(carol, is_chat(), timeout=20).text == "queued while offline"


@pytest.mark.slow
def test_no_reconnect_after_a_deliberate_shutdown(broker, connect):
    admin = connect(broker, "admin")
    admin.request_shutdown()
    wait_for(admin, lambda e: isinstance(e, Shutdown))
    assert broker.proc.wait(15) == 0
    assert admin.receive(timeout=1.0) is None  # closed: no ConnectionLost, no retries


def test_a_receiver_that_stops_reading_is_disconnected_and_told(make_broker, connect, keyring, raw_dealer):
    broker = make_broker(send_queue_limit=10, history_size=0)
    bob = connect(broker, "bob")
    slow = raw_dealer(broker, "carol")
    slow.setsockopt(zmq.RCVHWM, 1)
    raw_login(slow, "carol", keyring, broker)
    alice = connect(broker, "alice")
    chunk = "z" * 30_000
    deadline = time.monotonic() + 60
    left = None
    while left is None and time.monotonic() < deadline:
        for _ in range(20):
            alice.send(chunk)
            bob.poll(0)  # bob and alice read (and acknowledge) as they go: only carol falls behind
            alice.poll(0)
        slow.send_multipart(p.encode_frames(p.PING))  # alive, just not reading
        for event in collect(bob, 0.2):
            if isinstance(event, Left) and event.name == "carol":
                left = event
    assert left is not None
    assert left.reason == "too slow to keep up"
    # Once it reads again, its next frame is answered with EVICTED.
    slow.setsockopt(zmq.RCVTIMEO, 200)
    saw_evicted = False
    while not saw_evicted and time.monotonic() < deadline:
        slow.send_multipart(p.encode_frames(p.PING))
        try:
            while True:
                if slow.recv_multipart()[1] == p.EVICTED:
                    saw_evicted = True
                    break
        except zmq.Again:
            pass
    assert saw_evicted
    assert broker.alive()


def test_broker_answers_nothing_to_an_unknown_client_ping(broker, raw_dealer):
    sock = raw_dealer(broker)
    sock.setsockopt(zmq.RCVTIMEO, 500)
    sock.send_multipart(p.encode_frames(p.PING))
    with pytest.raises(zmq.Again):
        sock.recv_multipart()


def test_client_reports_unreachable_broker():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    key = crypto.generate_private_key(2048)
    broker_key = crypto.PublicKeyFile(key.public_key(), crypto.curve_public(crypto.curve_secret(key)))
    client = ChatClient("127.0.0.1", port, "alice", key, broker_key, connect_timeout=1.0)
    started = time.monotonic()
    with pytest.raises(ConnectError, match="did not answer"):
        client.login()
    assert time.monotonic() - started < 5


@pytest.mark.slow
def test_bad_registry_files_are_refused_by_name(make_broker, keyring, tmp_path, connect):
    from Crypto.PublicKey import RSA

    broker = make_broker()
    clients = broker.keys.clients_dir
    (clients / "leaky.pub").write_bytes(crypto.export_private_pem(keyring.keys["carol"]))
    (clients / "small.pub").write_bytes(RSA.generate(1024).public_key().export_key(format="PEM"))  # noqa: S505 - on purpose
    broker.kill()
    broker.start(port=broker.port)
    log = broker.wait_for_log(r"small\.pub.*1024 bits").string
    assert re.search(r"leaky\.pub.*PRIVATE key", log)
    with pytest.raises(ConnectError, match="login refused"):
        connect(broker, "leaky", key_path=keyring.private("carol"))


def test_iterating_a_client_ends_with_the_shutdown_event(broker, connect):
    bob = connect(broker, "bob")
    admin = connect(broker, "admin")
    admin.request_shutdown()
    events = list(bob)  # ends by itself once the broker has shut down
    assert isinstance(events[-1], Shutdown)
    assert bob.closed


@pytest.mark.slow
def test_a_last_message_and_goodbye_sent_just_before_closing_still_count(broker, connect):
    """The broker may hear the connection close before it has read what came on it: those frames are the
    connection's last words, never dropped (five rounds: the race is lost only now and then)."""
    bob = connect(broker, "bob")
    for round_ in range(5):
        alice = connect(broker, "alice")
        wait_for(bob, lambda e: isinstance(e, Joined) and e.user.name == "alice")
        alice.send(f"last words {round_}")
        alice.close()
        assert wait_for(bob, lambda e: isinstance(e, ChatMessage)).text == f"last words {round_}"
        left = wait_for(bob, lambda e: isinstance(e, Left))
        assert (left.name, left.reason) == ("alice", "left")


def test_a_silent_session_times_out_when_nobody_else_speaks(make_broker, keyring, raw_dealer):
    broker = make_broker(heartbeat_interval=0.2, heartbeat_timeout=1.0)
    sock = raw_dealer(broker, "alice")
    raw_login(sock, "alice", keyring, broker)  # then silence: no PING, no bye, the connection left open
    broker.wait_for_log(r"alice timed out", timeout=30)
