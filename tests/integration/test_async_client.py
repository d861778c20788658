"""zchat/client/async_client.py against a real broker: login, the broker's answers, reconnecting, leaving.

No asyncio test plugin: each test runs its own event loop with `asyncio.run`, with a timeout on every wait.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from tests.conftest import WAIT, BrokerProcess, wait_for
from zchat.client.async_client import AsyncChatClient
from zchat.errors import ConnectError
from zchat.events import Accepted, ChatMessage, ConnectionLost, Event, Failed, Left, Shutdown, Welcome


async def connect_async(broker: BrokerProcess, name: str, **kwargs: Any) -> AsyncChatClient:
    return await AsyncChatClient.connect(
        "127.0.0.1",
        broker.port,
        name,
        broker.keys.client_private(name),
        broker.keys.broker_public,
        **kwargs,
    )


async def next_matching(client: AsyncChatClient, predicate: Callable[[Event], bool], timeout: float = WAIT) -> Event:
    seen: list[Event] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while (remaining := deadline - loop.time()) > 0:
        event = await client.receive(timeout=remaining)
        if event is None:
            break
        if predicate(event):
            return event
        seen.append(event)
    raise AssertionError(f"{client.name}: no matching event within {timeout}s; got {seen!r}")


@pytest.mark.slow
def test_an_async_client_chats_and_gets_the_brokers_answers(broker, connect):
    bob = connect(broker, "bob")

    async def scenario() -> None:
        async with await connect_async(broker, "alice") as alice:
            assert alice.online
            assert "bob" in alice.roster
            sent = await alice.send("hello from asyncio")
            answer = await next_matching(alice, lambda e: isinstance(e, Accepted))
            assert answer.message_id == sent
            assert alice.pending == ()
            failed_id = await alice.send("psst", to="nobody_here")
            failure = await next_matching(alice, lambda e: isinstance(e, Failed))
            assert failure.message_id == failed_id
            assert "nobody_here" in failure.reason
            bob.send("and hello back")
            reply = await next_matching(alice, lambda e: isinstance(e, ChatMessage))
            assert (reply.sender, reply.text) == ("bob", "and hello back")

    asyncio.run(asyncio.wait_for(scenario(), 60))
    message = wait_for(bob, lambda e: isinstance(e, ChatMessage))
    assert (message.sender, message.text) == ("alice", "hello from asyncio")
    assert wait_for(bob, lambda e: isinstance(e, Left)).name == "alice"  # close() said bye


@pytest.mark.slow
def test_an_async_client_keeps_its_session_while_the_program_awaits_something_else(make_broker):
    broker = make_broker(heartbeat_interval=0.1, heartbeat_timeout=0.5)

    async def scenario() -> None:
        async with await connect_async(broker, "alice") as alice:
            await asyncio.sleep(2.0)  # four heartbeat timeouts: the background task keeps the session alive
            assert alice.online
            events = alice.drain()
            assert not [e for e in events if isinstance(e, ConnectionLost)]
            assert len([e for e in events if isinstance(e, Welcome)]) == 1  # the first login's, no other

    asyncio.run(asyncio.wait_for(scenario(), 60))
    assert "timed out" not in broker.log()


@pytest.mark.slow
def test_an_async_client_logs_in_again_and_sends_what_waited(broker, connect):
    async def scenario() -> None:
        alice = await connect_async(broker, "alice")
        try:
            port = broker.port
            broker.kill()
            await next_matching(alice, lambda e: isinstance(e, ConnectionLost))
            waiting = await alice.send("typed while the broker was down")
            assert alice.pending == (waiting,)
            broker.start(port=port)
            carol = connect(broker, "carol")
            await next_matching(alice, lambda e: isinstance(e, Welcome), timeout=20)
            answer = await next_matching(alice, lambda e: isinstance(e, Accepted))
            assert answer.message_id == waiting
            message = await asyncio.to_thread(wait_for, carol, lambda e: isinstance(e, ChatMessage))
            assert message.text == "typed while the broker was down"
        finally:
            await alice.close()

    asyncio.run(asyncio.wait_for(scenario(), 90))


@pytest.mark.slow
def test_iterating_an_async_client_ends_with_the_shutdown(broker, connect):
    admin = connect(broker, "admin")

    async def scenario() -> list[Event]:
        async with await connect_async(broker, "bob") as bob:
            admin.request_shutdown()
            return [event async for event in bob]

    events = asyncio.run(asyncio.wait_for(scenario(), 60))
    assert isinstance(events[-1], Shutdown)


@pytest.mark.slow
def test_an_async_client_reports_an_unreachable_broker(broker):
    port = broker.port
    broker.kill()

    async def scenario() -> None:
        with pytest.raises(ConnectError, match="did not answer"):
            await AsyncChatClient.connect(
                "127.0.0.1",
                port,
                "alice",
                broker.keys.client_private("alice"),
                broker.keys.broker_public,
                connect_timeout=1.0,
            )

    asyncio.run(asyncio.wait_for(scenario(), 30))
