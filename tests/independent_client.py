"""A minimal zchat/3 client written only from docs/PROTOCOL.md.

It imports nothing from the project (only the standard library, pyzmq and PyCryptodome), so a test that
talks to the real broker through it shows that the document is enough to write a compatible client.
Section numbers in the comments refer to docs/PROTOCOL.md.

Deliberately minimal: one session per `login()` and no automatic reconnect (calling `login()` again starts a new
session on a new socket), no key pinning (7.7). What outlives a session, as 6.1, 7.6 and 11 ask: the outbox of chat
messages the broker has not answered (re-sent with their ids after every `welcome`) and the `(from, id)` pairs of
the messages already shown (a message that comes again is skipped).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
import time
import unicodedata
from collections import OrderedDict
from pathlib import Path
from typing import Any

import zmq
from Crypto.Cipher import AES, PKCS1_OAEP
from Crypto.Hash import HMAC, SHA256
from Crypto.Protocol.KDF import HKDF
from Crypto.PublicKey import RSA
from Crypto.PublicKey.RSA import RsaKey
from Crypto.Random import get_random_bytes
from Crypto.Signature import pss
from zmq.utils import z85
from zmq.utils.monitor import recv_monitor_message

MARKER = b"zchat/3"  # frame 0 of every message (1.2)
PREFIX = b"zchat/3|"  # every context and signing/MAC input starts with it (2.3, 2.4, 3.1)
MAX_BROKER_BODY = 16 * 1024 * 1024  # largest body a client accepts (9.1)
BODYLESS = {b"PING", b"REFUSED", b"BUSY", b"EVICTED"}  # (1.3)
ACK_BYTES = 16  # an ACK body: the last 16 bytes of the newest EVENT body read (8.4)
FROM_BROKER = {b"CHALLENGE", b"EVENT", *BODYLESS}
NAME = re.compile(r"[A-Za-z0-9_-]{1,32}")  # (4)
MESSAGE_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")  # (4, 6.1)
MAX_B64_CHARS = 10_926  # (4)
MAX_SEALED_BYTES = MAX_BROKER_BODY  # a mail's `sealed`: up to 16 MiB decoded, not the 10 926-character limit (4, 7.3)
SEEN_LIMIT = 10_000  # (from, id) pairs remembered across sessions, as the reference client does (7.6, 9.1)
MAX_SEQ = 2**53 - 1
MIN_KEY_BITS = 2048  # (2.1)
MAX_TIME = 4_102_444_800  # `ts` and `received`: Unix seconds from 0 to 2100-01-01 (6.1, 7.3)
CURVE_INFO = b"zchat curve25519 secret key v1"  # HKDF info for the transport key pair (2.1)
CURVE_BLOCK = re.compile(
    r"-----BEGIN ZCHAT CURVE25519 PUBLIC KEY-----\s*([A-Za-z0-9+/=\s]+?)\s*-----END ZCHAT CURVE25519 PUBLIC KEY-----"
)
RSA_PUBLIC_BLOCK = re.compile(r"-----BEGIN PUBLIC KEY-----.*?-----END PUBLIC KEY-----", re.DOTALL)
LOGIN_TIMEOUT = 5.0  # the reference client's per-attempt limit (5.6)


class ProtocolError(Exception):
    """A message from the peer that breaks the protocol."""


class LoginRefused(ProtocolError):
    """REFUSED, a challenge that does not open, or an unusable welcome: give up (5.6)."""


class NotTheBroker(ProtocolError):
    """The challenge opened but did not prove the pinned broker key (5.3)."""


class BrokerBusy(ProtocolError):
    """BUSY: a load limit; retry later with backoff (5.6)."""


# --- primitives (sections 2 and 3) -------------------------------------------------------------------------------


def _mgf1_sha256(seed: bytes, length: int) -> bytes:
    return pss.MGF1(seed, length, SHA256)


def _oaep(key: RsaKey, context: bytes) -> Any:
    """RSA-OAEP with SHA-256, MGF1-SHA-256 and label = context (3.3); never the SHA-1 defaults."""
    return PKCS1_OAEP.new(key, hashAlgo=SHA256, mgfunc=_mgf1_sha256, label=context)


def _pss(key: RsaKey) -> Any:
    """RSA-PSS, SHA-256, MGF1-SHA-256, salt exactly 32 bytes (2.3)."""
    return pss.new(key, mask_func=_mgf1_sha256, salt_bytes=32)


def context_of(command: bytes) -> bytes:
    return PREFIX + command  # (3.1)


def seal(recipient: RsaKey, plaintext: bytes, command: bytes) -> bytes:
    """The hybrid envelope: 0x01 || wrapped || nonce || tag || ciphertext (3.2, 3.3)."""
    context = context_of(command)
    key, nonce = get_random_bytes(32), get_random_bytes(12)
    wrapped = _oaep(recipient, context).encrypt(key)
    cipher = AES.new(key, AES.MODE_GCM, nonce=nonce, mac_len=16)
    cipher.update(b"\x01" + wrapped + context)
    ciphertext, tag = cipher.encrypt_and_digest(plaintext)
    return b"\x01" + wrapped + nonce + tag + ciphertext


def open_envelope(own_key: RsaKey, envelope: bytes, command: bytes) -> bytes:
    """Open an envelope sealed to `own_key` (3.4); any failure is one ProtocolError."""
    context = context_of(command)
    k = own_key.size_in_bytes()
    if len(envelope) < 29 + k or envelope[0] != 0x01:
        raise ProtocolError("does not open")
    wrapped, nonce, tag, ciphertext = (
        envelope[1 : 1 + k],
        envelope[1 + k : 13 + k],
        envelope[13 + k : 29 + k],
        envelope[29 + k :],
    )
    try:
        key = _oaep(own_key, context).decrypt(wrapped)
        if len(key) != 32:
            raise ValueError("wrapped key is not 32 bytes")
        cipher = AES.new(key, AES.MODE_GCM, nonce=nonce, mac_len=16)
        cipher.update(b"\x01" + wrapped + context)
        return bytes(cipher.decrypt_and_verify(ciphertext, tag))
    except (ValueError, TypeError) as exc:
        raise ProtocolError("does not open") from exc


def sign(own_key: RsaKey, data: bytes) -> bytes:
    return bytes(_pss(own_key).sign(SHA256.new(data)))


def verify(public_key: RsaKey, data: bytes, signature: bytes) -> bool:
    try:
        _pss(public_key).verify(SHA256.new(data), signature)
    except (ValueError, TypeError):
        return False
    return True


def mac_ok(delivery_key: bytes, delivery: str, mac: bytes) -> bool:
    """HMAC-SHA256 over b"zchat/3|delivery|" + UTF-8(D) (2.4, 7.1)."""
    try:  # HMAC.verify compares in constant time
        HMAC.new(delivery_key, PREFIX + b"delivery|" + delivery.encode("utf-8"), digestmod=SHA256).verify(mac)
    except ValueError:
        return False
    return True


def fingerprint(der: bytes) -> str:
    return "SHA256:" + SHA256.new(der).hexdigest()  # (2.2)


def load_private_key(path: str | Path, passphrase: str | None = None) -> RsaKey:
    """PEM PKCS#8, optionally encrypted (2.1)."""
    key = RSA.import_key(Path(path).read_bytes(), passphrase)
    if not key.has_private() or key.size_in_bits() < MIN_KEY_BITS:
        raise ValueError(f"{path}: not an RSA private key of at least {MIN_KEY_BITS} bits")
    return key


def load_public_key(path: str | Path) -> RsaKey:
    """The PEM SubjectPublicKeyInfo block of a public key file (2.1); the pinned broker key."""
    match = RSA_PUBLIC_BLOCK.search(Path(path).read_text("ascii"))
    if match is None:
        raise ValueError(f"{path}: no PUBLIC KEY block")
    key = RSA.import_key(match.group(0))
    if key.has_private() or key.size_in_bits() < MIN_KEY_BITS:
        raise ValueError(f"{path}: not an RSA public key of at least {MIN_KEY_BITS} bits")
    return key


def load_curve_public_key(path: str | Path) -> bytes:
    """The 32-byte Curve25519 public key in the second block of a public key file (2.1); files written before
    protocol 2 have none, and their owner cannot connect."""
    match = CURVE_BLOCK.search(Path(path).read_text("ascii"))
    if match is None:
        raise ValueError(f"{path}: no ZCHAT CURVE25519 PUBLIC KEY block (a key file from before zchat/2)")
    try:
        curve = base64.b64decode("".join(match.group(1).split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"{path}: the Curve25519 block is not base64") from exc
    if len(curve) != 32:
        raise ValueError(f"{path}: the Curve25519 public key is not 32 bytes")
    return curve


def curve_keypair(own_key: RsaKey) -> tuple[bytes, bytes]:
    """The transport pair derived from the RSA private key (2.1): (public, secret), 32 raw bytes each.

    secret = HKDF-SHA256(IKM = d as a k-byte big-endian integer, salt = empty, info = CURVE_INFO, L = 32);
    public = X25519(secret, 9), which libzmq's zmq_curve_public computes (clamping included).
    """
    k = own_key.size_in_bytes()
    ikm = int(own_key.d).to_bytes(k, "big")
    secret = HKDF(ikm, 32, b"", SHA256, context=CURVE_INFO)  # empty salt = HashLen zero bytes (RFC 5869)
    assert isinstance(secret, bytes)
    public = z85.decode(zmq.curve_public(z85.encode(secret)))
    return public, secret


# --- JSON documents (section 4) ----------------------------------------------------------------------------------


def dumps(document: dict[str, Any]) -> str:
    """Compact JSON, non-ASCII written directly, never NaN/Infinity (4)."""
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _no_constants(name: str) -> Any:
    raise ValueError(f"non-standard JSON constant {name}")


def parse_object(data: str | bytes) -> dict[str, Any]:
    text = data.decode("utf-8") if isinstance(data, bytes) else data
    try:
        document = json.loads(text, parse_constant=_no_constants)
    except RecursionError as exc:  # absurdly deep nesting from a peer
        raise ValueError("JSON nested too deeply") from exc
    if not isinstance(document, dict):
        raise ValueError("not a JSON object")
    return document


def get_str(doc: dict[str, Any], field: str) -> str:
    value = doc.get(field)
    if not isinstance(value, str):
        raise ValueError(f"{field}: not a string")
    value.encode("utf-8")  # raises on a lone surrogate (4)
    return value


def get_name(doc: dict[str, Any], field: str) -> str:
    value = get_str(doc, field)
    if not NAME.fullmatch(value):
        raise ValueError(f"{field}: not a name")
    return value


def get_int(doc: dict[str, Any], field: str) -> int:
    value = doc.get(field)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{field}: not an integer")
    return value


def get_number(doc: dict[str, Any], field: str) -> float:
    value = doc.get(field)
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise ValueError(f"{field}: not a number")
    return float(value)


def get_time(doc: dict[str, Any], field: str) -> float:
    """A JSON number (not a boolean, not NaN/infinity) from 0 to 4 102 444 800 (6.1, 7.3)."""
    value = doc.get(field)
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise ValueError(f"{field}: not a number")
    if (isinstance(value, float) and not math.isfinite(value)) or not 0 <= value <= MAX_TIME:  # a huge int too
        raise ValueError(f"{field}: not a time from 0 to {MAX_TIME}")
    return float(value)


def get_bool(doc: dict[str, Any], field: str, default: bool | None = None) -> bool:
    if field not in doc and default is not None:
        return default
    value = doc.get(field)
    if not isinstance(value, bool):
        raise ValueError(f"{field}: not a boolean")
    return value


def b64e(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def get_message_id(doc: dict[str, Any], field: str) -> str:
    value = get_str(doc, field)
    if not MESSAGE_ID.fullmatch(value):
        raise ValueError(f"{field}: not a message id")
    return value


def new_message_id() -> str:
    """16 random bytes in base64url without padding, as the reference client does (6.1)."""
    return base64.urlsafe_b64encode(get_random_bytes(16)).rstrip(b"=").decode("ascii")


def get_b64(doc: dict[str, Any], field: str, length: int | None = None, max_chars: int = MAX_B64_CHARS) -> bytes:
    value = get_str(doc, field)
    if len(value) > max_chars:
        raise ValueError(f"{field}: base64 too long")
    try:
        data = base64.b64decode(value, validate=True)  # standard alphabet, padding required
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"{field}: not base64") from exc
    if length is not None and len(data) != length:
        raise ValueError(f"{field}: not {length} bytes")
    return data


def check_user(obj: Any) -> tuple[str, RsaKey, dict[str, Any]]:
    """A user object (7.2): the key parses, is public, >= 2048 bits, and its fingerprint matches."""
    if not isinstance(obj, dict):
        raise ValueError("user: not an object")
    name, der, claimed = get_name(obj, "name"), get_b64(obj, "key"), get_str(obj, "fingerprint")
    bot = get_bool(obj, "bot")
    key = RSA.import_key(der)
    if key.has_private() or key.size_in_bits() < MIN_KEY_BITS:
        raise ValueError(f"user {name}: unacceptable key")
    if fingerprint(der) != claimed:
        raise ValueError(f"user {name}: fingerprint does not match the key")
    return name, key, {"name": name, "fingerprint": claimed, "bot": bot}


def _invisible(c: str) -> bool:
    """Category Cf except the zero-width joiner, Zl, Zp, and the tag characters U+E0000-U+E007F (6.4)."""
    category = unicodedata.category(c)
    return (category == "Cf" and c != "\u200d") or category in ("Zl", "Zp") or 0xE0000 <= ord(c) <= 0xE007F


def text_problem(text: str, max_text_bytes: int) -> str | None:
    """The chat text rules of 6.4; None when the text is acceptable."""
    if not text.strip():
        return "empty message"
    if len(text.encode("utf-8")) > max_text_bytes:
        return "message too long"
    if any((ord(c) < 0x20 and c != "\t") or 0x7F <= ord(c) <= 0x9F for c in text):
        return "message contains control characters"
    if any(_invisible(c) for c in text):
        return "message contains invisible or direction-changing characters"
    return None


# --- the client --------------------------------------------------------------------------------------------------


class IndependentClient:
    """One zchat/3 session at a time, each over a fresh CurveZMQ DEALER socket.

    `receive()` returns events as plain dicts whose `type` says which: welcome, chat (live or history), mail (a
    private message kept while we were away, opened and verified), accepted, failed, refused, join, leave,
    presence, who, error, closed, shutdown, and the local ones evicted / connection_lost. After refused, closed,
    shutdown, evicted and connection_lost the session is over (`over`); this minimal client does not reconnect by
    itself, but `login()` may be called again for a new session, and re-sends what the broker has not answered.
    """

    def __init__(
        self,
        host: str,
        port: int,
        name: str,
        key_path: str | Path,
        broker_key_path: str | Path,
        *,
        bot: bool = True,
        history: bool = False,
        passphrase: str | None = None,
    ) -> None:
        if not NAME.fullmatch(name):
            raise ValueError(f"bad name {name!r}")
        self.endpoint = f"tcp://{host}:{port}"
        self.name = name
        self.bot = bot
        self.history = history
        self.own_key = load_private_key(key_path, passphrase)
        self.broker_key = load_public_key(broker_key_path)  # pinned (2.1)
        self.broker_curve_key = load_curve_public_key(broker_key_path)  # the transport's server key (1.5, 2.1)
        self.curve_public, self.curve_secret = curve_keypair(self.own_key)  # our transport pair (2.1)
        self.zmq_context = zmq.Context()
        self.sock: zmq.Socket[bytes] | None = None
        self.monitor: zmq.Socket[bytes] | None = None  # handshake events during a login (1.5)
        # Kept across sessions (6.1, 7.6): chat messages without an answer yet, id -> statement fields in the
        # order of the table of 6.1; and the (from, id) pairs of the messages already shown.
        self.outbox: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self.seen: OrderedDict[tuple[str, str], None] = OrderedDict()
        self.duplicates_skipped = 0  # authentic messages not shown again because their (from, id) was seen (7.6)
        self.skipped: list[str] = []  # why authentic, in-order events were unusable (7.1 step 6), for diagnosis
        self._reset()

    def _reset(self) -> None:
        self.session: str | None = None
        self.logged_in = False
        self.over = False  # after refused / closed / shutdown / evicted / lost: the session is gone
        self.delivery_key = b""
        self.seq_out = 0  # statements sent (6.1)
        self.seq_in = 0  # last accepted delivery (7.1)
        self.history_window = False  # history events are accepted only right after the welcome (7.5)
        self.roster: dict[str, RsaKey] = {}
        self.last_statement: dict[str, tuple[str, int]] = {}  # replay check per author (7.4 step 6)
        self.heartbeat_interval = 1.0
        self.heartbeat_timeout = 6.0
        self.max_text_bytes = 65_536
        self.last_sent = self.last_heard = time.monotonic()
        self.pings_sent = self.pings_received = 0
        self.pending_ack: bytes | None = None  # last 16 bytes of the newest EVENT body read, not yet ACKed (8.4)
        self.acks_sent = 0

    @property
    def max_body(self) -> int:
        return 4 * self.max_text_bytes + 16_384  # (9.1)

    # --- frames

    def _send(self, command: bytes, body: bytes = b"") -> bool:
        assert self.sock is not None
        try:
            self.sock.send_multipart([MARKER, command, body], flags=zmq.NOBLOCK)
        except zmq.Again:
            return False
        self.last_sent = time.monotonic()
        return True

    def _flush_ack(self) -> None:
        """ACK the newest EVENT read so far, which acknowledges it and every earlier one (8.4)."""
        if self.pending_ack is not None and self.sock is not None and self._send(b"ACK", self.pending_ack):
            self.pending_ack = None
            self.acks_sent += 1

    def acknowledge(self) -> None:
        """Send the ACK for what has been read now, rather than before the next wait (8.4)."""
        self._flush_ack()

    def _recv(self, timeout: float) -> tuple[bytes, bytes] | None:
        """One well-formed broker message within `timeout` seconds (1.4), or None."""
        assert self.sock is not None
        if self.pending_ack is not None and not self.sock.poll(0, zmq.POLLIN):
            self._flush_ack()  # a batch of frames has been read: acknowledge before waiting for more (8.4)
        if not self.sock.poll(max(0, int(timeout * 1000)), zmq.POLLIN):
            return None
        frames = self.sock.recv_multipart(flags=zmq.NOBLOCK)
        if len(frames) != 3 or frames[0] != MARKER or frames[1] not in FROM_BROKER:
            return None
        command, body = frames[1], frames[2]
        if len(body) > MAX_BROKER_BODY or (command in BODYLESS and body):
            return None
        self.last_heard = time.monotonic()
        if command == b"PING":
            self.pings_received += 1
        return command, body

    # --- login (section 5)

    def login(self, timeout: float = LOGIN_TIMEOUT, resend: bool = True) -> dict[str, Any]:
        """HELLO, CHALLENGE, LOGIN, welcome. Returns the welcome event; raises on refusal or timeout.

        After the welcome, every chat message still in the outbox is sent again with its own id, as new
        statements of the new session (6.1, 8.3), unless `resend` is false.
        """
        self.close(say_bye=False, keep_context=True)
        self._reset()
        self.sock = self.zmq_context.socket(zmq.DEALER)  # a new socket for every login; never a ZMQ_ROUTING_ID (1.1)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SNDHWM, 10_000)
        self.sock.setsockopt(zmq.RCVHWM, 10_000)
        self.sock.setsockopt(zmq.MAXMSGSIZE, MAX_BROKER_BODY + 1024)
        # A CurveZMQ client (1.5): the broker's Curve public key, and our own pair derived from the RSA key (2.1).
        self.sock.setsockopt(zmq.CURVE_SERVERKEY, self.broker_curve_key)
        self.sock.setsockopt(zmq.CURVE_PUBLICKEY, self.curve_public)
        self.sock.setsockopt(zmq.CURVE_SECRETKEY, self.curve_secret)
        # A refused handshake (our Curve key is not registered) shows only on the socket monitor (1.5).
        self.monitor = self.sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_FAILED_AUTH)
        self.sock.connect(self.endpoint)
        deadline = time.monotonic() + timeout

        client_nonce = get_random_bytes(32)
        hello = {"user": self.name, "nonce": b64e(client_nonce), "bot": self.bot, "history": self.history}
        self._send(b"HELLO", seal(self.broker_key, dumps(hello).encode("utf-8"), b"HELLO"))
        body = self._await_login_answer(b"CHALLENGE", deadline)

        try:
            challenge = parse_object(open_envelope(self.own_key, body, b"CHALLENGE"))
        except (ProtocolError, ValueError) as exc:  # not registered, or registered with another key
            raise LoginRefused("the challenge does not open with our key") from exc
        try:
            user, echoed = get_name(challenge, "user"), get_b64(challenge, "client_nonce", 32)
            server_nonce = get_b64(challenge, "server_nonce", 32)
            delivery_key = get_b64(challenge, "delivery_key", 32)
            broker_sig = get_b64(challenge, "sig")
        except ValueError as exc:
            raise NotTheBroker(f"malformed challenge: {exc}") from exc
        if user != self.name or echoed != client_nonce:
            raise NotTheBroker("the challenge does not echo our name and nonce")
        broker_proof = (
            PREFIX + b"broker|" + self.name.encode("ascii") + b"|" + client_nonce + server_nonce + delivery_key
        )
        if not verify(self.broker_key, broker_proof, broker_sig):
            raise NotTheBroker("the challenge is not signed by the pinned broker key")
        self.session, self.delivery_key = server_nonce.hex(), delivery_key

        login_proof = PREFIX + b"login|" + self.name.encode("ascii") + b"|" + client_nonce + server_nonce
        document = {"sig": b64e(sign(self.own_key, login_proof))}
        self._send(b"LOGIN", seal(self.broker_key, dumps(document).encode("utf-8"), b"LOGIN"))
        while True:
            body = self._await_login_answer(b"EVENT", deadline)
            event = self._on_event(body)
            if self.over:  # a gap at seq > 1 during the login
                raise ProtocolError(event["reason"] if event else "login failed")
            if event is not None and event["type"] == "welcome":
                self.logged_in = True
                self.last_sent = self.last_heard = time.monotonic()
                self._stop_monitor()
                self._flush_ack()  # the welcome is an EVENT like any other (8.4)
                if resend:
                    self.flush_outbox()
                return event

    def _stop_monitor(self) -> None:
        if self.monitor is not None:
            if self.sock is not None:
                self.sock.disable_monitor()
            self.monitor.close(linger=0)
            self.monitor = None

    def _await_login_answer(self, wanted: bytes, deadline: float) -> bytes:
        """Wait for `wanted` during the login; a refused CurveZMQ handshake (1.5), REFUSED and BUSY end the
        attempt (9.3)."""
        assert self.sock is not None
        assert self.monitor is not None
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        poller.register(self.monitor, zmq.POLLIN)
        while (remaining := deadline - time.monotonic()) > 0:
            ready = dict(poller.poll(max(1, int(remaining * 1000))))
            if self.monitor in ready:
                event = recv_monitor_message(self.monitor, flags=zmq.NOBLOCK)
                if event["event"] == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                    raise LoginRefused("login refused: the broker does not accept this key")
            if self.sock not in ready:
                continue
            message = self._recv(0)
            if message is None:
                continue
            command, body = message
            if command == b"REFUSED":
                raise LoginRefused("the broker refused the login")
            if command == b"BUSY":
                raise BrokerBusy("the broker is busy; try again later")
            if command == wanted:
                return body
        raise TimeoutError(f"no {wanted.decode()} from the broker within the login timeout")

    # --- statements (section 6)

    def _say(self, statement_type: str, **fields: Any) -> int:
        """Number, sign, seal and queue one statement; returns its seq."""
        if not self.logged_in or self.session is None:
            raise ConnectionError("not logged in")
        self.seq_out += 1  # numbered only when handed to the socket; a failed send spends it (6.1)
        statement = {
            "type": statement_type,
            "from": self.name,
            "session": self.session,
            "seq": self.seq_out,
            "ts": time.time(),  # a number from 0 to 4 102 444 800, or a chat is answered `failed` (6.1, 6.4)
            **fields,
        }
        signed = dumps(statement)  # serialised once, signed and sent as is (6.2)
        if len(signed) > self.max_body:
            raise ValueError("statement longer than max_body")  # cannot happen for a text within max_text_bytes
        sig = sign(self.own_key, PREFIX + b"statement|" + signed.encode("utf-8"))
        document = {"signed": signed, "sig": b64e(sig)}
        if not self._send(b"SEND", seal(self.broker_key, dumps(document).encode("utf-8"), b"SEND")):
            self.logged_in, self.over = False, True
            raise ConnectionError("the statement could not be queued; its seq is spent, log in again")
        return self.seq_out

    def send(self, text: str, to: str | None = None, action: bool = False, message_id: str | None = None) -> str:
        """A chat message to the room, or privately `to` one user (any registered user, online or not, 6.5).

        Returns the message's id: a fresh one, or `message_id` when sending a message again (6.1: a message sent
        again keeps its id). The message stays in the outbox until `accepted` or `failed` names its id (6.4).
        """
        problem = text_problem(text, self.max_text_bytes)
        if problem:  # checked before a seq is spent
            raise ValueError(problem)
        if to is not None and not NAME.fullmatch(to):
            raise ValueError(f"bad recipient {to!r}")
        message_id = new_message_id() if message_id is None else message_id
        if not MESSAGE_ID.fullmatch(message_id):
            raise ValueError(f"bad message id {message_id!r}")
        fields: dict[str, Any] = {"id": message_id, "text": text}  # the order of the table of 6.1
        if to is not None:
            fields["to"] = to
        if action:
            fields["action"] = True  # written only when true, like the reference client (6.1)
        self.outbox[message_id] = fields  # before sending: a statement that cannot be queued stays here (6.1)
        self._say("chat", **fields)
        return message_id

    def flush_outbox(self) -> None:
        """Send again every chat message without an answer, in order, each with its own id (6.1, 8.3)."""
        for fields in list(self.outbox.values()):
            self._say("chat", **fields)

    def who(self) -> None:
        self._say("who")

    # --- deliveries (section 7)

    def receive(self, timeout: float) -> dict[str, Any] | None:
        """The next usable event within `timeout` seconds, or None. Sends PINGs while waiting (8.1)."""
        deadline = time.monotonic() + timeout
        while not self.over:
            now = time.monotonic()
            due = self.logged_in and now - self.last_sent >= self.heartbeat_interval
            if due and self._send(b"PING"):  # nothing sent for heartbeat_interval (8.1)
                self.pings_sent += 1
            if now - self.last_heard > self.heartbeat_timeout:
                return self._end("connection_lost", "the broker has been silent for longer than heartbeat_timeout")
            remaining = deadline - now
            if remaining <= 0:
                return None
            message = self._recv(min(remaining, self.heartbeat_interval / 2))
            if message is None:
                continue
            command, body = message
            if command == b"EVICTED" and self.logged_in:
                return self._end("evicted", "the broker ended this session")
            if command == b"EVENT":
                event = self._on_event(body)
                if event is not None:
                    if not self.over:
                        self._flush_ack()  # the caller may not read again soon (8.4)
                    return event
            # PING: nothing to do; REFUSED / BUSY / CHALLENGE while logged in: dropped (9.3)
        return None

    def _end(self, kind: str, reason: str) -> dict[str, Any]:
        self.logged_in, self.over = False, True
        self.pending_ack = None  # never acknowledge past a gap, nor on a session that is over (8.4)
        return {"type": kind, "reason": reason}

    def _on_event(self, body: bytes) -> dict[str, Any] | None:
        """Steps 1-6 of 7.1: open, MAC, parse, session and seq, then interpret."""
        try:
            sealed = parse_object(open_envelope(self.own_key, body, b"EVENT"))
            delivery, mac = get_str(sealed, "delivery"), get_b64(sealed, "mac", 32)
        except (ProtocolError, ValueError):
            return None
        if not mac_ok(self.delivery_key, delivery, mac):  # nothing in D is looked at before this
            return None
        try:
            document = parse_object(delivery)
            session, seq = get_str(document, "session"), get_int(document, "seq")
            event = document.get("event")
            if not isinstance(event, dict) or not 1 <= seq <= MAX_SEQ:
                raise ValueError("bad delivery")
            event_type = get_str(event, "type")
        except ValueError:
            return None
        if session != self.session or seq <= self.seq_in:
            return None  # not ours, or a replay
        if seq > self.seq_in + 1:  # authentic, but deliveries in between were lost in transit
            return self._end("connection_lost", "messages from the broker were lost on the way")
        if self.seq_in == 0 and event_type != "welcome":
            return None
        self.seq_in = seq  # authentic and in order: it counts, whatever happens next (step 5)
        self.pending_ack = body[-ACK_BYTES:]  # and it is acknowledged, usable or not (7.4, 8.4)
        try:
            return self._interpret(event_type, event)
        except (ValueError, TypeError) as exc:
            if event_type == "welcome" and seq == 1:
                self.logged_in, self.over = False, True
                raise LoginRefused(f"unusable welcome: {exc}") from exc
            self.skipped.append(f"seq {seq} {event_type}: {exc}")
            return None  # an unusable event is skipped; the session goes on (step 6)

    def _presence(self, changes: list[Any]) -> list[dict[str, Any]]:
        """Joins and leaves (7.3): all are checked before the roster changes."""
        checked: list[tuple[str, Any, dict[str, Any]]] = []
        for change in changes:
            kind = change.get("type") if isinstance(change, dict) else None
            if kind == "join":
                name, key, info = check_user(change.get("user"))
                checked.append((name, key, {"type": "join", **info}))
            elif kind == "leave":
                name = get_name(change, "name")
                checked.append((name, None, {"type": "leave", "name": name, "reason": get_str(change, "reason")}))
            else:
                raise ValueError(f"presence change of type {kind!r}")
        for name, key, _ in checked:
            if key is None:
                self.roster.pop(name, None)
            else:
                self.roster[name] = key
                self.last_statement.pop(name, None)  # forget the author's last session when they join again (7.4)
        return [result for _, _, result in checked]

    def _interpret(self, event_type: str, event: dict[str, Any]) -> dict[str, Any] | None:
        """The event types of 7.3."""
        is_history = event_type == "chat" and event.get("history") is True
        window, self.history_window = self.history_window, is_history and self.history_window
        if event_type == "welcome":
            if self.seq_in != 1:
                return None  # a late welcome is skipped (7.1 step 6)
            if get_name(event, "name") != self.name:
                raise ValueError("welcome for another name")
            users = event.get("users")
            if not isinstance(users, list):
                raise ValueError("users: not an array")
            checked = [check_user(u) for u in users]
            interval, timeout = get_number(event, "heartbeat_interval"), get_number(event, "heartbeat_timeout")
            max_text = get_int(event, "max_text_bytes")
            if interval <= 0 or timeout <= 0 or not 1 <= max_text <= MAX_BROKER_BODY:
                raise ValueError("unusable limits")
            self.heartbeat_interval, self.heartbeat_timeout, self.max_text_bytes = interval, timeout, max_text
            self.roster = {name: key for name, key, _ in checked}
            self.history_window = True
            return {"type": "welcome", "name": self.name, "users": [info for _, _, info in checked]}
        if event_type == "chat":
            if get_bool(event, "away", default=False):
                raise ValueError("a chat event marked away outside a mail")  # kept messages come only as mail (7.4)
            if is_history and not window:
                return None  # history is accepted only directly after the welcome (7.5)
            return self._chat(event, "history" if is_history else "live")
        if event_type == "mail":
            return self._mail(event)
        if event_type == "accepted":
            return self._accepted(event)
        if event_type == "failed":
            message_id, reason = get_message_id(event, "id"), get_str(event, "reason")
            self.outbox.pop(message_id, None)  # not delivered: do not send it again (6.4)
            return {"type": "failed", "id": message_id, "reason": reason}
        if event_type == "refused":
            self.logged_in, self.over = False, True  # the broker has ended the session (6.3), whatever the fields
            self.pending_ack = None
            seq = get_int(event, "seq") if "seq" in event else None
            refused_id = get_message_id(event, "id") if "id" in event else None
            return {"type": "refused", "seq": seq, "id": refused_id}
        if event_type in ("join", "leave"):
            (change,) = self._presence([event])
            return change
        if event_type == "presence":
            changes = event.get("changes")
            if not isinstance(changes, list) or not changes:
                raise ValueError("changes: not a non-empty array")
            return {"type": "presence", "changes": self._presence(changes)}
        if event_type == "who":
            users = event.get("users")
            if not isinstance(users, list):
                raise ValueError("users: not an array")
            return {"type": "who", "users": [check_user(u)[2] for u in users]}
        if event_type == "error":
            return {"type": "error", "message": get_str(event, "message")}
        if event_type == "closed":
            self.logged_in, self.over = False, True  # over for good: do not reconnect
            return {"type": "closed", "reason": get_str(event, "reason")}
        if event_type == "shutdown":
            self.logged_in, self.over = False, True
            return {"type": "shutdown", "by": get_str(event, "by")}
        raise ValueError(f"unknown event type {event_type!r}")

    def _accepted(self, event: dict[str, Any]) -> dict[str, Any]:
        """`accepted` (6.4, 7.3): the message is committed at the broker; take it out of the outbox."""
        message_id, received = get_message_id(event, "id"), get_time(event, "received")
        queued = get_bool(event, "queued", default=False)  # written only when true; a boolean if present
        duplicate = get_bool(event, "duplicate", default=False)
        fields = self.outbox.pop(message_id, None)
        if fields is not None and fields.get("to") != self.name:  # a private message to ourselves is still to come
            self._remember((self.name, message_id))  # so a later history replay does not show it again (7.6)
        return {"type": "accepted", "id": message_id, "received": received, "queued": queued, "duplicate": duplicate}

    def _remember(self, pair: tuple[str, str]) -> None:
        self.seen[pair] = None
        self.seen.move_to_end(pair)
        while len(self.seen) > SEEN_LIMIT:
            self.seen.popitem(last=False)

    def _mail(self, event: dict[str, Any]) -> dict[str, Any] | None:
        """Open a `mail` (7.4): the sealed inner event is a chat event with away and author, sealed to our key."""
        sealed = get_b64(event, "sealed", max_chars=4 * ((MAX_SEALED_BYTES + 2) // 3))
        if len(sealed) > MAX_SEALED_BYTES:
            raise ValueError("sealed: more than 16 MiB")
        try:
            inner = parse_object(open_envelope(self.own_key, sealed, b"MAIL"))
        except ProtocolError as exc:
            raise ValueError("the mail does not open with our key") from exc
        if get_str(inner, "type") != "chat":
            raise ValueError("the mail does not hold a chat event")
        if not get_bool(inner, "away"):
            raise ValueError("the mail's chat event is not marked away")
        if get_bool(inner, "history", default=False):
            raise ValueError("the mail's chat event is marked history")
        return self._chat(inner, "mail")

    def _chat(self, event: dict[str, Any], kind: str) -> dict[str, Any] | None:
        """Verify a chat event (7.4): `kind` is live, history or mail (the inner event of a mail).

        Returns None for a message already shown (7.6); raises ValueError for one that fails a check.
        """
        # 1. the statement (6.1) and the broker's `received`
        signed, sig = get_str(event, "signed"), get_b64(event, "sig")
        if len(signed) > self.max_body:  # (9.1)
            raise ValueError("statement too long")
        statement = parse_object(signed)
        statement_type = get_str(statement, "type")
        author, session, seq = get_name(statement, "from"), get_str(statement, "session"), get_int(statement, "seq")
        if not 1 <= seq <= MAX_SEQ:
            raise ValueError("seq out of range")
        message_id = get_message_id(statement, "id")  # required in a chat statement (6.1)
        text = get_str(statement, "text")
        to = get_name(statement, "to") if "to" in statement else None
        action = get_bool(statement, "action", default=False)
        received = get_time(event, "received")  # the broker's clock: the time to show (7.3, 7.4)
        # 2. the key: the roster's for a live event, the `author`'s for history and mail
        if kind == "live":
            if author not in self.roster:
                raise ValueError(f"{author} is not in the roster")
            key = self.roster[author]
            author_fingerprint = None
        else:
            name, key, info = check_user(event.get("author"))
            if name != author:
                raise ValueError(f"{kind} author does not match the statement")
            author_fingerprint = info["fingerprint"]
        # 3. type, ts, to
        if statement_type != "chat":
            raise ValueError("not a chat statement")
        ts = get_time(statement, "ts")  # the author's clock: only informational, but it must be a time
        if to is not None and to != self.name:
            raise ValueError("a private message for someone else")
        if kind == "mail" and to is None:
            raise ValueError("a kept message to the room")
        # 4. the author's signature
        if not verify(key, PREFIX + b"statement|" + signed.encode("utf-8"), sig):
            raise ValueError(f"bad signature from {author}")
        # 5. the text rules
        if text_problem(text, self.max_text_bytes):
            raise ValueError("text breaks the rules")
        # 6. live only: replays
        if kind == "live":
            last = self.last_statement.get(author)
            if last is not None and last[0] == session and seq <= last[1]:
                raise ValueError(f"replayed statement from {author}")
            self.last_statement[author] = (session, seq)
        # 7. shown before?
        if (author, message_id) in self.seen:
            self.duplicates_skipped += 1
            return None
        self._remember((author, message_id))
        return {
            "type": "mail" if kind == "mail" else "chat",
            "from": author,
            "id": message_id,
            "text": text,
            "to": to,
            "received": received,
            "ts": ts,
            "private": to is not None,
            "action": action,
            "history": kind == "history",
            "away": kind == "mail",
            "author_fingerprint": author_fingerprint,  # history and mail: the `author` key that verified it
        }

    # --- leaving

    def close(self, say_bye: bool = True, keep_context: bool = False) -> None:
        """Optionally say `bye` (6.1), then close the socket (linger 0, or 200 ms to flush the goodbye)."""
        self._stop_monitor()
        if self.sock is not None:
            linger = 0
            if say_bye and self.logged_in:
                try:
                    self._flush_ack()
                    self._say("bye")
                    linger = 200  # a short linger so the goodbye goes out (6.1)
                except ConnectionError:
                    pass
            self.sock.close(linger=linger)
            self.sock = None
        self.logged_in = False
        if not keep_context:
            self.zmq_context.destroy(linger=0)

    def __enter__(self) -> IndependentClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
