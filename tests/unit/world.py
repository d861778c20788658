"""A broker core and client sessions wired together by hand: frames pass through plain lists, time is a number."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import crypto
from chat import protocol as p
from chat.broker_core import BrokerCore, run_inline
from chat.broker_work import JobRunner, Outgoing, Work
from chat.config import Config
from chat.events import Event, Welcome
from chat.keystore import KeyLayout, Registry
from chat.session import ClientSession

T0 = 1000.0
REFUSED_FRAMES = [p.MARKER, p.REFUSED, b""]
PING_FRAMES = [p.MARKER, p.PING, b""]


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


@dataclass
class World:
    keys: dict[str, crypto.PrivateKey]
    layout: KeyLayout
    config_overrides: dict[str, Any] = field(default_factory=dict)
    now: float = T0

    def __post_init__(self) -> None:
        self.config = Config(
            server_ip="127.0.0.1",
            server_port=0,
            admins=frozenset({"admin"}),
            keys_dir=self.layout.root,
            **{"presence_interval": 0.0, **self.config_overrides},  # joins and leaves at once, unless a test says
        )
        self.core = BrokerCore(self.keys["broker"].public_key(), Registry(self.layout), self.config)
        self.runner = JobRunner(self.keys["broker"])
        self.clients: dict[bytes, ClientSession] = {}

    @property
    def broker_public(self) -> crypto.PublicKey:
        return self.keys["broker"].public_key()

    def client(self, name: str, identity: bytes | None = None, key: crypto.PrivateKey | None = None) -> ClientSession:
        """A fresh client session for `name` (with `name`'s key unless another is given), bound to `identity`."""
        session = ClientSession(name, key if key is not None else self.keys[name], self.broker_public)
        self.clients[identity or name.encode()] = session
        return session

    def send(self, identity: bytes, frames: list[bytes]) -> list[Outgoing]:
        """One message from `identity` into the broker; each identity is its own login source."""
        return self.run(self.core.receive(identity, list(frames), self.now, source=identity.hex()))

    def run(self, work: list[Work]) -> list[Outgoing]:
        """Do the core's crypto jobs, as the broker does without workers, then send the joins and leaves
        that wait, as the broker does every turn: the frames it sends."""
        out = run_inline(self.core, self.runner, work, self.now)
        return out + run_inline(self.core, self.runner, self.core.flush_presence(self.now), self.now)

    def deliver(self, out: list[Outgoing]) -> dict[bytes, list[Event]]:
        """Feed each outgoing message to its client session; the events each identity saw, in order."""
        seen: dict[bytes, list[Event]] = {}
        for message in out:
            events, reply = self.clients[message.identity].receive(message.frames)
            assert reply is None
            seen.setdefault(message.identity, []).extend(events)
        return seen

    def login(self, name: str, identity: bytes | None = None) -> Handshake:
        """A complete, successful login; the join notices it caused are delivered to everyone else."""
        identity = identity or name.encode()
        session = self.client(name, identity)
        hello = session.hello()
        (challenge,) = self.send(identity, hello)
        assert challenge.identity == identity
        assert challenge.frames[1] == p.CHALLENGE
        events, login = session.receive(challenge.frames)
        assert events == []
        assert login is not None
        out = self.send(identity, login)
        (welcome,) = [m for m in out if m.identity == identity]
        seen = self.deliver(out)
        (event,) = seen.pop(identity)
        assert isinstance(event, Welcome)
        return Handshake(session, identity, hello, login, event, welcome.frames, seen)

    def say(self, identity: bytes, text: str) -> dict[bytes, list[Event]]:
        return self.deliver(self.send(identity, self.clients[identity].say(text)))

    def request(self, identity: bytes, kind: str) -> dict[bytes, list[Event]]:
        return self.deliver(self.send(identity, self.clients[identity].request(kind)))

    def signed_send(
        self, identity: bytes, key: crypto.PrivateKey, sender: str, session: str, seq: int, text: str = "forged"
    ) -> list[bytes]:
        """SEND frames with a hand-built chat statement: any claimed sender, session and sequence number."""
        statement = p.Statement.build("chat", sender, session, seq, self.now, text)
        signature = crypto.sign(key, p.statement_signing_input(statement.text))
        body = p.SignedStatement(statement.text, signature).encode()
        return p.encode_frames(p.SEND, crypto.seal(self.broker_public, body, p.context(p.SEND)))
