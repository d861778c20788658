"""A broker core and client sessions wired together by hand: frames pass through plain lists, time is a number."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zchat import crypto
from zchat import protocol as p
from zchat.broker.core import BrokerCore
from zchat.broker.registered import read_keys
from zchat.broker.sqlite_store import MEMORY, SQLiteStore
from zchat.broker.work import JobRunner, Outgoing, Work, run_inline
from zchat.client.session import ClientSession, SeenMessages
from zchat.config import Config
from zchat.events import Event, Welcome
from zchat.keystore import KeyLayout, Registry
from zchat.protocol import events as wire

T0 = 1000.0
WALL0 = 1_700_000_000.0  # a wall-clock time for worlds that set their own (`WallClock`)
REFUSED_FRAMES = [p.MARKER, p.REFUSED, b""]
PING_FRAMES = [p.MARKER, p.PING, b""]


class WallClock:
    """The broker's wall clock (chat events' `received`, the store's retention), set by hand."""

    def __init__(self, value: float = WALL0) -> None:
        self.value = value

    def __call__(self) -> float:
        return self.value


@dataclass
class Handshake:
    """Every frame of one login, for replaying."""

    client: ClientSession
    identity: bytes
    hello: list[bytes]
    login: list[bytes]
    welcome: Welcome
    welcome_frames: list[bytes]
    others: dict[bytes, list[Event]]
    replay: list[Event] = field(default_factory=list)  # what the login's client saw after its welcome


@dataclass
class World:
    keys: dict[str, crypto.PrivateKey]
    layout: KeyLayout
    config_overrides: dict[str, Any] = field(default_factory=dict)
    now: float = T0
    db_path: Path | None = None  # the broker's database file (it survives restart()); None: in memory
    wall_clock: Callable[[], float] = time.time  # read by the world, never by the core: it is given the time

    def __post_init__(self) -> None:
        self.config = Config(
            server_ip="127.0.0.1",
            server_port=0,
            admins=frozenset({"admin"}),
            keys_dir=self.layout.root,
            **{"presence_interval": 0.0, **self.config_overrides},  # joins and leaves at once, unless a test says
        )
        self.runner = JobRunner(self.keys["broker"])
        self.clients: dict[bytes, ClientSession] = {}
        self.store = SQLiteStore.open(MEMORY if self.db_path is None else self.db_path, self.keys["broker"], now=T0)
        self.core = self._new_core()

    def _new_core(self) -> BrokerCore:
        self.registry = Registry(self.layout)
        return BrokerCore(self.broker_public, read_keys(self.registry), self.config, self.store, self.wall_clock())

    def restart(self) -> None:
        """The broker stops and starts again on the same database file, as after a crash: what the store did not
        commit is lost, every session is gone (the client sessions here are stale: log in again)."""
        assert self.db_path is not None, "a restart needs a World with a db_path"
        self.store.close()
        self.store = SQLiteStore.open(self.db_path, self.keys["broker"], now=self.now)
        self.core = self._new_core()

    @property
    def broker_public(self) -> crypto.PublicKey:
        return self.keys["broker"].public_key()

    def client(
        self,
        name: str,
        identity: bytes | None = None,
        key: crypto.PrivateKey | None = None,
        seen: SeenMessages | None = None,
    ) -> ClientSession:
        """A fresh client session for `name` (with `name`'s key unless another is given), bound to `identity`;
        `seen`: the messages its client showed in earlier sessions."""
        session = ClientSession(name, key if key is not None else self.keys[name], self.broker_public, seen=seen)
        self.clients[identity or name.encode()] = session
        return session

    def send(self, identity: bytes, frames: list[bytes]) -> list[Outgoing]:
        """One message from `identity` into the broker; each identity is its own login source."""
        return self.run(self.core.receive(identity, list(frames), self.now, source=identity.hex()))

    def run(self, work: list[Work]) -> list[Outgoing]:
        """Do the core's crypto jobs, as the broker does without workers, then commit what the store took and
        send the joins and leaves that wait, as the broker does every turn: the frames it sends."""
        wall = self.wall_clock()
        out = run_inline(self.core, self.runner, work, self.now, wall)
        out += run_inline(self.core, self.runner, self.core.commit(self.now, wall), self.now, wall)
        return out + run_inline(self.core, self.runner, self.core.flush_presence(self.now), self.now, wall)

    def read_keys(self) -> list[Outgoing]:
        """The key files read again, as the broker's I/O loop does at every heartbeat (and when a connection
        names a user whose file changed): the frames that sends (to sessions whose key is gone)."""
        return self.run(self.core.keys_read(read_keys(self.registry), self.now))

    def deliver(self, out: list[Outgoing]) -> dict[bytes, list[Event]]:
        """Feed each outgoing message to its client session; the events each identity saw, in order."""
        seen: dict[bytes, list[Event]] = {}
        for message in out:
            events, reply = self.clients[message.identity].receive(message.frames)
            assert reply is None
            seen.setdefault(message.identity, []).extend(events)
        return seen

    def login(self, name: str, identity: bytes | None = None, seen: SeenMessages | None = None) -> Handshake:
        """A complete, successful login; the join notices it caused are delivered to everyone else.

        What the new session got after its welcome (history, kept private messages) is in `replay`.
        """
        identity = identity or name.encode()
        session = self.client(name, identity, seen=seen)
        hello = session.hello()
        (challenge,) = self.send(identity, hello)
        assert challenge.identity == identity
        assert challenge.frames[1] == p.CHALLENGE
        events, login = session.receive(challenge.frames)
        assert events == []
        assert login is not None
        out = self.send(identity, login)
        welcome, *_ = [m for m in out if m.identity == identity]
        seen_by = self.deliver(out)
        event, *replay = seen_by.pop(identity)
        assert isinstance(event, Welcome)
        return Handshake(session, identity, hello, login, event, welcome.frames, seen_by, replay)

    def say(
        self, identity: bytes, text: str, *, to: str | None = None, message_id: str = ""
    ) -> dict[bytes, list[Event]]:
        """A chat message from `identity` (a fresh message id unless given): the events everyone saw."""
        frames = self.clients[identity].say(text, to=to, message_id=message_id or p.new_message_id())
        return self.deliver(self.send(identity, frames))

    def request(self, identity: bytes, kind: str) -> dict[bytes, list[Event]]:
        return self.deliver(self.send(identity, self.clients[identity].request(kind)))

    def ack(self, identity: bytes) -> dict[bytes, list[Event]]:
        """`identity`'s client acknowledges every EVENT it has read: the events that releases, for everyone."""
        frames = self.clients[identity].ack()
        assert frames is not None, "nothing to acknowledge"
        return self.deliver(self.send(identity, frames))

    def open_event(self, identity: bytes, frames: list[bytes]) -> dict[str, Any]:
        """The event an EVENT for `identity` carries, as the broker wrote it (read with its client's keys, without
        the client session's checks)."""
        assert frames[:2] == [p.MARKER, p.EVENT]
        client = self.clients[identity]
        plaintext = crypto.open_envelope(client.key, frames[2], p.context(p.EVENT))
        return wire.Delivery.open(plaintext, client._delivery_key).event

    def signed_send(
        self,
        identity: bytes,
        key: crypto.PrivateKey,
        sender: str,
        session: str,
        seq: int,
        text: str = "forged",
        message_id: str = "",
    ) -> list[bytes]:
        """SEND frames with a hand-built chat statement: any claimed sender, session, sequence number and id."""
        statement = p.Statement.build(
            "chat", sender, session, seq, self.now, text, message_id=message_id or p.new_message_id()
        )
        signature = crypto.sign(key, p.statement_signing_input(statement.text))
        body = p.SignedStatement(statement.text, signature).encode()
        return p.encode_frames(p.SEND, crypto.seal(self.broker_public, body, p.context(p.SEND)))
