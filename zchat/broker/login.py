"""Logging in, without sockets: HELLO, the challenge, LOGIN, and who is turned away (PROTOCOL.md 5).

`Logins` holds the logins in progress and answers their frames: cheap checks
first (a user's login rate, logins in progress, a user no longer registered,
`max_clients`: BUSY or REFUSED before any RSA work), then the HELLO's
OpenJob, the ChallengeJob sealed to the user's registered key (or, for an
unregistered name or one with a registered look-alike, to the broker's own
key: a decoy nobody can open, so a HELLO does not reveal who is registered),
and the LOGIN's proof. A LOGIN that proves its key becomes a session in
`zchat.broker.core`, which greets it with `welcome()`.

Who is registered comes in as an input (`RegisteredKeys`, read from the key
files by the I/O loop): this module reads no files and no clock. Every failure
is the one generic REFUSED answer; details go to the log.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass

from zchat import crypto
from zchat import protocol as p
from zchat.broker.ratelimit import PeerLog, TokenBucket, short
from zchat.broker.registered import RegisteredKeys
from zchat.broker.work import ChallengeJob, OpenJob, Outgoing, Work, require_plaintext
from zchat.config import Config
from zchat.errors import RemoteProtocolError
from zchat.events import UserInfo
from zchat.protocol import events as wire

log = logging.getLogger(__name__)
peer_log = PeerLog(log)  # lines a peer's frames cause: rate-limited per source

HANDSHAKE_TIMEOUT = 10.0


@dataclass
class Pending:
    """A login between its CHALLENGE and its LOGIN."""

    user: str
    key: crypto.PublicKey
    key_der: bytes
    bot: bool
    client_nonce: bytes
    server_nonce: bytes
    delivery_key: bytes
    started: float
    history: bool


def refuse(identity: bytes, why: str) -> list[Work]:
    """The one answer to a login that fails, whatever failed; `why` goes to the log only."""
    peer_log.info(short(identity), "login refused for %s: %s", short(identity), why)
    return [Outgoing(identity, p.encode_frames(p.REFUSED))]


def busy(identity: bytes, why: str, who: str = "") -> list[Work]:
    """A login turned away for now (the client tries again later); `why` goes to the log only."""
    peer_log.warning(who or short(identity), "login from %s turned away: %s", short(identity), why)
    return [Outgoing(identity, p.encode_frames(p.BUSY))]


def welcome(info: UserInfo, online: list[UserInfo], config: Config) -> wire.WelcomeEvent:
    """The first event of a new session: who it is, who is online, and the broker's timing and size limits."""
    return wire.WelcomeEvent(
        info.name, tuple(online), config.heartbeat_interval, config.heartbeat_timeout, config.max_text_bytes
    )


class Logins:
    """The logins in progress, and the decisions about them up to a proven LOGIN."""

    def __init__(self, broker_public: crypto.PublicKey, keys: RegisteredKeys, config: Config) -> None:
        # Unregistered names get a challenge sealed to the broker's own key, so a HELLO does not reveal who is
        # registered.
        self.decoy_key = broker_public
        self.decoy_key_der = crypto.public_key_to_der(broker_public)
        self.keys = keys  # who is registered, as the I/O loop last read it
        self.config = config
        self.pending: dict[bytes, Pending] = {}
        self.hellos_opening = 0
        self.logins_opening: dict[bytes, Pending] = {}  # LOGINs handed out as OpenJobs, their challenge used up
        self.hello_users: dict[bytes, str] = {}  # HELLOs handed out as OpenJobs: the user their connection is
        self.login_buckets: dict[str, TokenBucket] = {}

    def refuse(self, identity: bytes, why: str) -> list[Work]:
        self.pending.pop(identity, None)
        return refuse(identity, why)

    def hello_frame(self, identity: bytes, body: bytes, now: float, user: str, source: str, online: int) -> list[Work]:
        """A HELLO frame from a connection with no session (`online` sessions exist): its OpenJob, or the answer
        that turns it away. Cheap checks first: no RSA work for logins we would turn away anyway."""
        who = user or source  # the transport's user; a core driven without one (tests, fuzzing) goes by source
        bucket = self.login_buckets.setdefault(who, TokenBucket.full(self.config.logins_per_second_per_user, now))
        if not bucket.take(now):
            return busy(identity, f"more than {self.config.logins_per_second_per_user:g} logins/s by {who}", who)
        logins_in_progress = len(self.pending) + self.hellos_opening + len(self.logins_opening)
        if identity not in self.pending and logins_in_progress >= self.config.max_pending_logins:
            return busy(identity, "too many logins in progress")
        if user and self.keys.registered(user) is None:  # revoked since its connection was admitted
            return self.refuse(identity, f"{user} is no longer registered")
        if online >= self.config.max_clients:  # before reading the name: no hint who is online
            return busy(identity, f"{self.config.max_clients} clients online (max_clients)")
        self.hellos_opening += 1
        self.hello_users[identity] = user
        return [OpenJob(identity, p.HELLO, body)]

    def login_frame(self, identity: bytes, body: bytes) -> list[Work]:
        """A LOGIN frame: its OpenJob, once per challenge."""
        pending = self.pending.pop(identity, None)
        if pending is None:  # also a second LOGIN while the first is being opened: one RSA open per HELLO
            return self.refuse(identity, "LOGIN without a challenge")
        self.logins_opening[identity] = pending
        return [OpenJob(identity, p.LOGIN, body)]

    def hello(self, identity: bytes, plaintext: bytes | None, now: float, logged_in: bool) -> list[Work]:
        """The HELLO opened (None: it did not open): the ChallengeJob for its user, or REFUSED."""
        self.hellos_opening -= 1
        transport_user = self.hello_users.pop(identity, "")
        if logged_in:
            return []
        try:
            hello = p.Hello.decode(require_plaintext(plaintext))
        except (crypto.CryptoError, RemoteProtocolError) as exc:
            return self.refuse(identity, f"bad HELLO ({exc})")
        if transport_user and hello.user != transport_user:
            return self.refuse(identity, f"HELLO for {hello.user!r} on {transport_user!r}'s connection")
        registered = self.keys.registered(hello.user)
        if registered is None:
            peer_log.info(
                short(identity), "login for unregistered %r from %s; it will be refused", hello.user, short(identity)
            )
            user_key, key_der = self.decoy_key, self.decoy_key_der
        elif (twin := self.keys.look_alike(hello.user)) is not None:
            log.error(
                "%r and %r are both registered and look alike: neither may log in until one is removed",
                hello.user,
                twin,
            )
            user_key, key_der = self.decoy_key, self.decoy_key_der
        else:
            user_key, key_der = registered.key, registered.der
        server_nonce = secrets.token_bytes(p.NONCE_BYTES)
        delivery_key = secrets.token_bytes(p.DELIVERY_KEY_BYTES)
        self.pending[identity] = Pending(
            hello.user, user_key, key_der, hello.bot, hello.nonce, server_nonce, delivery_key, now, hello.history
        )
        return [ChallengeJob(identity, key_der, hello.user, hello.nonce, server_nonce, delivery_key)]

    def login(self, identity: bytes, plaintext: bytes | None) -> Pending | list[Work]:
        """The LOGIN opened (None: it did not open): the login it proves, or what to answer instead."""
        pending = self.logins_opening.pop(identity, None)
        if pending is None:  # its connection dropped meanwhile
            return []
        try:
            login = p.Login.decode(require_plaintext(plaintext))
            signed = p.login_proof_input(pending.user, pending.client_nonce, pending.server_nonce)
            crypto.verify(pending.key, signed, login.signature)
            if pending.key is self.decoy_key:
                raise RemoteProtocolError("not registered")
        except (crypto.CryptoError, RemoteProtocolError) as exc:
            return self.refuse(identity, f"bad LOGIN for {pending.user!r} ({exc})")
        return pending

    def sweep(self, now: float) -> None:
        """Forget challenges not answered in time, and login rates that are full again."""
        for identity, pending in list(self.pending.items()):
            if now - pending.started > HANDSHAKE_TIMEOUT:
                del self.pending[identity]
        for source, bucket in list(self.login_buckets.items()):
            if bucket.idle(now):
                del self.login_buckets[source]
