"""Faults with real processes: a stopped receiver, a killed bot, /shutdown in the middle of heavy traffic."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from tests.conftest import ROOT, run_env, wait_for
from zchat.events import ChatMessage, Joined, Left, Shutdown
from zchat.keystore import create_client_key


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.mark.slow
def test_a_stopped_receiver_is_dropped_and_told_while_the_room_goes_on(make_broker, connect, client):
    # In-process clients heartbeat only while polled: a long timeout keeps bob and alice in while alice floods.
    broker = make_broker(
        messages_per_second_per_user=10_000, send_queue_limit=100, heartbeat_timeout=30, history_size=0
    )
    bob = connect(broker, "bob")
    carol = client(broker, "carol")
    carol.expect_line("logged in as carol")
    wait_for(bob, lambda e: isinstance(e, Joined) and e.user.name == "carol")
    alice = connect(broker, "alice")
    rss_before = rss_mb(broker.proc.pid)
    os.kill(carol.popen.pid, signal.SIGSTOP)
    try:
        texts = [f"{i:04d} " + "x" * 20_000 for i in range(300)]
        for text in texts:
            alice.send(text)
            alice.poll(0)  # alice reads the broker's answers (a sender that never reads falls behind too)
            bob.poll(0)  # bob keeps reading (and acknowledging) while alice floods: only carol falls behind
        received = []
        left = None
        while len(received) < len(texts):
            event = wait_for(bob, lambda e: isinstance(e, ChatMessage | Left))
            if isinstance(event, Left):
                left = event
            else:
                received.append(event.text)
        assert received == texts  # the room kept going, in order, nothing lost
        if left is None:
            left = wait_for(bob, lambda e: isinstance(e, Left))
        assert left.name == "carol"
        assert left.reason == "too slow to keep up"
        assert rss_mb(broker.proc.pid) - rss_before < 150  # bounded: the queue limit, not the traffic
    finally:
        os.kill(carol.popen.pid, signal.SIGCONT)
    carol.expect_line("the broker ended our session", timeout=30)
    carol.expect_line("logged in as carol", timeout=30)  # and it comes back by itself
    wait_for(bob, lambda e: isinstance(e, Joined) and e.user.name == "carol", timeout=30)


@pytest.mark.slow
def test_a_killed_bot_is_removed_and_the_room_goes_on(broker, connect):
    create_client_key(broker.keys, "echo", bits=2048)
    alice = connect(broker, "alice")
    bot = subprocess.Popen(
        [sys.executable, "-m", "bots.echo", "--config", str(broker.config_path), "--port", str(broker.port)],
        cwd=ROOT,
        env=run_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(alice, lambda e: isinstance(e, Joined) and e.user.name == "echo", timeout=20)
        for i in range(20):
            alice.send(f"ping {i}")
        bot.kill()
        left = wait_for(alice, lambda e: isinstance(e, Left), timeout=10)
        assert left.name == "echo"
        bob = connect(broker, "bob", history=False)
        alice.send("still here")
        assert wait_for(bob, lambda e: isinstance(e, ChatMessage)).text == "still here"
    finally:
        bot.kill()
        bot.wait(10)


@pytest.mark.slow
def test_shutdown_in_heavy_traffic_delivers_everything_accepted_first(make_broker, connect):
    broker = make_broker(messages_per_second_per_user=10_000, send_queue_limit=100_000, heartbeat_timeout=30)
    carol = connect(broker, "carol")
    alice = connect(broker, "alice")
    bob = connect(broker, "bob")
    admin = connect(broker, "admin")
    wait_for(carol, lambda e: isinstance(e, Joined) and e.user.name == "admin")
    for i in range(150):
        alice.send(f"alice {i}")
        bob.send(f"bob {i}")
        admin.send(f"admin {i}")
    admin.request_shutdown()
    for receiver, senders in ((carol, ("alice", "bob", "admin")), (alice, ("bob", "admin"))):
        got: dict[str, list[str]] = {s: [] for s in senders}
        while not isinstance(event := wait_for(receiver, lambda e: isinstance(e, ChatMessage | Shutdown)), Shutdown):
            got[event.sender].append(event.text)
        # Everything the admin sent before /shutdown was accepted first, so all of it arrives before the notice.
        assert got["admin"] == [f"admin {i}" for i in range(150)]
        for sender in senders:  # from the others, whatever the broker accepted: a complete prefix, in order
            assert got[sender] == [f"{sender} {i}" for i in range(len(got[sender]))]
        assert receiver.receive(timeout=0.5) is None  # nothing after the shutdown notice
    assert broker.proc.wait(20) == 0


def test_a_client_killed_while_streaming_leaves_only_whole_messages_in_order(make_broker, connect, client):
    broker = make_broker(messages_per_second_per_user=10_000, heartbeat_timeout=30)
    bob = connect(broker, "bob", history=False)
    alice = client(broker, "alice")
    alice.expect_line("logged in as alice")
    wait_for(bob, lambda e: isinstance(e, Joined) and e.user.name == "alice")
    alice.send(*(f"line {i:04d} " + "y" * 3000 for i in range(400)))
    wait_for(bob, lambda e: isinstance(e, ChatMessage))  # it is mid-stream
    os.kill(alice.popen.pid, signal.SIGKILL)
    received = ["line 0000"]
    while not isinstance(event := wait_for(bob, lambda e: isinstance(e, ChatMessage | Left)), Left):
        received.append(event.text.split(" ")[0] + " " + event.text.split(" ")[1])
    assert event.name == "alice"
    assert received == [f"line {i:04d}" for i in range(len(received))]  # a prefix: whole messages, in order
    carol = connect(broker, "carol", history=False)
    bob.send("the room goes on")
    assert wait_for(carol, lambda e: isinstance(e, ChatMessage)).text == "the room goes on"
