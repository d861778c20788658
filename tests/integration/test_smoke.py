from chat.events import ChatMessage, Joined

from tests.conftest import collect, wait_for


def test_alice_reaches_bob_not_herself(broker, connect):
    bob = connect(broker, "bob")
    alice = connect(broker, "alice")
    wait_for(bob, lambda e: isinstance(e, Joined) and e.user.name == "alice")
    alice.send("hello")
    msg = wait_for(bob, lambda e: isinstance(e, ChatMessage))
    assert (msg.sender, msg.text) == ("alice", "hello")
    assert not [e for e in collect(alice, 0.5) if isinstance(e, ChatMessage)]
