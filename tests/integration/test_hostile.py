"""Property test: hostile frames thrown at a running broker never disturb honest users.

Random multipart messages, random envelopes, truncated, bit-flipped and
replayed real frames arrive from an unauthenticated identity and from a
logged-in one, while alice keeps talking to bob. After every attack the broker
is up, alice's next message reaches bob, and nothing garbage-derived (no
chat message, no notice) reaches anyone.
"""

from __future__ import annotations

import json

import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import wait_for
from tests.integration.test_chat import raw_login
from zchat import protocol as p
from zchat.events import ChatMessage, Notice

COMMANDS = sorted(p.CLIENT_COMMANDS | p.BROKER_COMMANDS)
ENVELOPE_OVERHEAD = 1 + 256 + 12 + 16  # 2048-bit test broker key

random_multipart = st.lists(st.binary(max_size=300), min_size=1, max_size=6)
random_envelope = st.builds(
    lambda command, body: [p.MARKER, command, b"\x01" + body],
    st.sampled_from(COMMANDS),
    st.binary(min_size=ENVELOPE_OVERHEAD - 1, max_size=ENVELOPE_OVERHEAD + 200),
)


def mutations(genuine: list[bytes]) -> st.SearchStrategy[list[bytes]]:
    body = genuine[2]
    truncated = st.integers(0, len(body) - 1).map(lambda n: [*genuine[:2], body[:n]])
    flipped = st.tuples(st.integers(0, len(body) - 1), st.integers(0, 7)).map(
        lambda spot: [*genuine[:2], body[: spot[0]] + bytes([body[spot[0]] ^ (1 << spot[1])]) + body[spot[0] + 1 :]]
    )
    moved = st.sampled_from(COMMANDS).map(lambda command: [p.MARKER, command, body])
    replayed = st.just(list(genuine))
    return st.one_of(truncated, flipped, moved, replayed)


@pytest.mark.slow
def test_hostile_frames_never_disturb_honest_chat(make_broker, connect, keyring, raw_dealer):
    # Clients here are polled only between examples: heartbeats must tolerate hypothesis's own pauses.
    broker = make_broker(heartbeat_timeout=60, messages_per_second_per_user=1000)
    bob = connect(broker, "bob")
    alice = connect(broker, "alice")
    intruder = raw_dealer(broker)
    insider = raw_dealer(broker, "carol")
    carol, _ = raw_login(insider, "carol", keyring, broker)
    genuine = carol.say("a real message from carol", message_id=p.new_message_id())
    insider.send_multipart(genuine)
    assert wait_for(bob, lambda e: isinstance(e, ChatMessage)).text == "a real message from carol"
    rounds = iter(range(10**6))

    @settings(
        max_examples=60,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(
        attack=st.one_of(random_multipart, random_envelope, mutations(genuine)),
        from_insider=st.booleans(),
    )
    def attack_then_chat(attack: list[bytes], from_insider: bool) -> None:
        sock = insider if from_insider else intruder
        sock.send_multipart(attack)
        insider.send_multipart(p.encode_frames(p.PING))  # carol stays alive
        honest = f"honest message {next(rounds)}"
        honest_id = alice.send(honest)
        event = wait_for(bob, lambda e: isinstance(e, ChatMessage | Notice))
        assert event == ChatMessage("alice", honest, event.timestamp, received=event.received, message_id=honest_id)
        while True:  # carol's socket holds only what the broker sent her: never an error about garbage
            try:
                insider.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break

    attack_then_chat()
    assert not [e for e in alice.drain() if isinstance(e, ChatMessage | Notice)]
    assert broker.alive()


@pytest.mark.slow
def test_lone_surrogate_from_a_logged_in_user_is_dropped(broker, connect, keyring, raw_dealer):
    """Regression: a statement whose JSON escapes decode to a lone surrogate once stopped the broker."""
    from zchat import crypto

    bob = connect(broker, "bob")
    insider = raw_dealer(broker, "carol")
    carol, _ = raw_login(insider, "carol", keyring, broker)
    # The statement itself holds a lone surrogate; the outer JSON carries it as an escape.
    statement = (
        f'{{"type":"chat","from":"carol","session":"{carol.session_id}","seq":1,"ts":1.0,"text":"hi","x":"\ud800"}}'
    )
    signed = json.dumps({"signed": statement, "sig": p.b64(b"\0" * 256)}).encode("ascii")
    broker_pub = crypto.load_public_key(broker.keys.broker_public)
    insider.send_multipart(p.encode_frames(p.SEND, crypto.seal(broker_pub, signed, p.context(p.SEND))))
    alice = connect(broker, "alice")
    alice.send("after the surrogate")
    assert wait_for(bob, lambda e: isinstance(e, ChatMessage)).text == "after the surrogate"
    assert broker.alive()
