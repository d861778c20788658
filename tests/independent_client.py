"""A minimal zchat/3 client written only from docs/PROTOCOL.md.

It imports nothing from the project (only the standard library, pyzmq and PyCryptodome), so a test that
talks to the real broker through it shows that the document is enough to write a compatible client.
Section numbers in the comments refer to docs/PROTOCOL.md.

Deliberately minimal: one session per `login()`, no key pinning (7.7). `receive()` never reconnects by itself;
after a session ends, `reconnect()` logs in again with the rules of 5.6, 8.3 and 9.3 (backoff; a first login
stops at its first failure; a re-login retries BUSY, a turned-away handshake and timeouts for as long as it takes,
a refusal up to three times since the last `welcome`, and never a refused key, a broker that fails its proof or an
unusable `welcome`). What outlives a session, as 6.1, 7.6 and 11 ask: the outbox of chat messages the broker has
not answered (re-sent with their ids after every `welcome`) and the `(from, id)` pairs of the messages already
shown (a message that comes again is skipped).

Run as a program (`python tests/independent_client.py --help`) it logs in, prints every event as a JSON line,
sends every line of its standard input as a chat message, reconnects as 8.3 says, and ends with the exit
statuses of 8.3: 0 (end of input, SIGINT/SIGTERM, the broker shut down), 1 (an error), 3 (`closed`, or the key
refused at a re-login).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import math
import os
import queue
import random
import re
import signal
import sys
import threading
import time
import unicodedata
from collections import OrderedDict
from collections.abc import Callable
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
# The blocks of a public key file, in this order (2.1); a file may stop after the first or the second.
PUBLIC_KEY_LABEL, CURVE_LABEL, BINDING_LABEL = "PUBLIC KEY", "ZCHAT CURVE25519 PUBLIC KEY", "ZCHAT CURVE25519 BINDING"
KEY_FILE_LABELS = (PUBLIC_KEY_LABEL, CURVE_LABEL, BINDING_LABEL)
PEM_LINE = re.compile(r"-----(BEGIN|END) ([^-]*)-----")
LOGIN_TIMEOUT = 5.0  # the reference client's per-attempt limit (5.6, 8.3)
MIN_HEARTBEAT_INTERVAL, MAX_HEARTBEAT_INTERVAL = 0.05, 60.0  # what a welcome may say (8.1)
MIN_HEARTBEAT_TIMEOUT, MAX_HEARTBEAT_TIMEOUT = 0.2, 600.0
MAX_TEXT_BYTES = 1_048_576
BACKOFF_FIRST, BACKOFF_MAX, BACKOFF_JITTER = 0.5, 8.0, 0.2  # 0.5 s doubling up to 8 s, +-20 % (8.3)
MAX_RELOGIN_REFUSALS = 3  # a re-login retries a refusal up to three times; the fourth stops (5.6, 9.3)
MAX_STATEMENT_REFUSALS = 3  # a message whose statement is refused three times is given up (6.1, 8.3)
ZAP_REFUSED = 400  # the CurveZMQ handshake's ZAP status codes, as a client's socket monitor reports them (5.6)
HANDSHAKE_EVENTS = (
    zmq.EVENT_CONNECTED
    | zmq.EVENT_HANDSHAKE_SUCCEEDED
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
)
EXIT_OK, EXIT_ERROR, EXIT_CLOSED = 0, 1, 3  # (8.3)


class ProtocolError(Exception):
    """A message from the peer that breaks the protocol."""


class LoginFailed(ProtocolError):
    """A login attempt that did not reach a usable `welcome` (5.6, 9.3). The subclasses say what to do next."""


class LoginRefused(LoginFailed):
    """A refusal: REFUSED, or a challenge that does not open (5.6). A first login stops; a re-login retries, and
    the fourth refusal since the last `welcome` stops the client."""


class KeyNotAccepted(LoginRefused):
    """The CurveZMQ handshake was refused with ZAP status 400: the key is not (or no longer) registered. Stop at
    once, on a first login and on a re-login alike (5.6); at a re-login it ends the client like `closed` (8.3)."""


class RefusedTooOften(LoginRefused):
    """A re-login refused for the fourth time since the last `welcome` (5.6)."""


class BrokerLies(LoginFailed):
    """Give up, never retry (5.6): the peer failed the broker's proof, or sent an unusable `welcome`."""


class NotTheBroker(BrokerLies):
    """The challenge opened but did not prove the pinned broker key (5.3)."""


class UnusableWelcome(BrokerLies):
    """A `welcome` that fails the checks of 7.1 step 6, 8.1 or 9.3."""


class NotNow(LoginFailed):
    """Not a refusal (5.6): a first login stops ("try again later"); a re-login retries with backoff for as long
    as it takes, and this neither resets nor adds to the count of refusals."""


class BrokerBusy(NotNow):
    """BUSY after HELLO or LOGIN: a load limit (5.6)."""


class TurnedAway(NotNow):
    """The CurveZMQ handshake was refused with ZAP status 500 (or 300, should a monitor ever report it) (5.6)."""


class LoginTimeout(NotNow, TimeoutError):
    """No `welcome` within the attempt's time: the broker is down, unreachable, turning the handshake away (300),
    or does not hold the pinned key (5.6)."""


class LostInTransit(NotNow):
    """An authentic delivery with a `seq` above the next one during the login: deliveries were lost (7.1 step 4)."""


class SessionOver(Exception):
    """`reconnect()` after `closed` or `shutdown`: the client must not reconnect (7.3, 8.3)."""


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
    return b"\x01" + bytes(wrapped) + nonce + bytes(tag) + bytes(ciphertext)


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


def public_der(key: RsaKey) -> bytes:
    """The DER SubjectPublicKeyInfo of a key (2.1, 2.2)."""
    public = key.publickey()  # type: ignore[no-untyped-call]
    return bytes(public.export_key(format="DER"))


def load_private_key(path: str | Path, passphrase: str | None = None) -> RsaKey:
    """PEM PKCS#8, optionally encrypted (2.1)."""
    key = RSA.import_key(Path(path).read_bytes(), passphrase)
    if not key.has_private() or key.size_in_bits() < MIN_KEY_BITS:
        raise ValueError(f"{path}: not an RSA private key of at least {MIN_KEY_BITS} bits")
    return key


def _key_file_blocks(text: str, source: str) -> dict[str, bytes]:
    """The blocks of a public key file (2.1), decoded: at most the three known ones, each once, in their order.

    Readers ignore whitespace inside base64 and refuse any other block, a repeated block, or a binding without a
    Curve block. (Text outside the blocks is ignored, as PEM readers do: the spec does not say.)
    """
    blocks: dict[str, bytes] = {}
    label: str | None = None
    body: list[str] = []
    for line in text.split("\n"):
        marker = PEM_LINE.fullmatch(line.strip())
        if marker is None:
            if label is not None:
                body.append(line)
            elif line.strip().startswith("-----"):
                raise ValueError(f"{source}: a line that is not a block's BEGIN or END: {line.strip()!r}")
            continue
        kind, name = marker.groups()
        if kind == "BEGIN":
            if label is not None:
                raise ValueError(f"{source}: BEGIN {name} inside the {label} block")
            if name not in KEY_FILE_LABELS:
                raise ValueError(f"{source}: a block that a public key file may not hold: {name}")
            if name in blocks:
                raise ValueError(f"{source}: the {name} block is repeated")
            expected = KEY_FILE_LABELS[len(blocks)]
            if name != expected:
                raise ValueError(f"{source}: the {name} block where the {expected} block should come")
            label, body = name, []
        else:
            if label is None or name != label:
                raise ValueError(f"{source}: END {name} without its BEGIN")
            try:
                blocks[name] = base64.b64decode("".join("".join(body).split()), validate=True)
            except (binascii.Error, ValueError) as exc:
                raise ValueError(f"{source}: the {name} block is not base64") from exc
            label = None
    if label is not None:
        raise ValueError(f"{source}: the {label} block does not end")
    if PUBLIC_KEY_LABEL not in blocks:
        raise ValueError(f"{source}: no PUBLIC KEY block")
    return blocks


def curve_binding_input(curve_public: bytes) -> bytes:
    return PREFIX + b"curve-key|" + curve_public  # what the binding block signs (2.1, 2.3)


def load_public_key_file(path: str | Path) -> tuple[RsaKey, bytes]:
    """A pinned public key file (2.1): its RSA key, and its Curve25519 key, which must be bound to it.

    A client refuses a pinned `broker.pub` whose Curve key is not bound (2.1): one without the binding block, or
    whose binding does not verify with the file's RSA key. A file without the Curve block (before zchat/2) cannot
    be used to connect at all.
    """
    source = str(path)
    blocks = _key_file_blocks(Path(path).read_text("ascii"), source)
    try:
        key = RSA.import_key(blocks[PUBLIC_KEY_LABEL])
    except (ValueError, IndexError, TypeError) as exc:
        raise ValueError(f"{source}: the PUBLIC KEY block is not an RSA public key") from exc
    if key.has_private() or key.size_in_bits() < MIN_KEY_BITS:
        raise ValueError(f"{source}: not an RSA public key of at least {MIN_KEY_BITS} bits")
    curve = blocks.get(CURVE_LABEL)
    if curve is None:
        raise ValueError(f"{source}: no ZCHAT CURVE25519 PUBLIC KEY block (a key file from before zchat/2)")
    if len(curve) != 32:
        raise ValueError(f"{source}: the Curve25519 public key is not 32 bytes")
    binding = blocks.get(BINDING_LABEL)
    if binding is None:
        raise ValueError(f"{source}: the Curve25519 key is not bound to the RSA key (no binding block)")
    if len(binding) != key.size_in_bytes() or not verify(key, curve_binding_input(curve), binding):
        raise ValueError(f"{source}: the binding of the Curve25519 key does not verify with the file's RSA key")
    return key, curve


def load_public_key(path: str | Path) -> RsaKey:
    """The RSA key of a public key file whose Curve key is bound to it (2.1); the pinned broker key."""
    return load_public_key_file(path)[0]


def load_curve_public_key(path: str | Path) -> bytes:
    """The bound 32-byte Curve25519 public key of a public key file (2.1)."""
    return load_public_key_file(path)[1]


def public_key_file_text(private_key: RsaKey) -> str:
    """The public key file of `private_key` (2.1): the three blocks, lines ending in LF, base64 in lines of 64."""

    def block(label: str, data: bytes) -> str:
        encoded = b64e(data)
        lines = [encoded[i : i + 64] for i in range(0, len(encoded), 64)]
        return "\n".join([f"-----BEGIN {label}-----", *lines, f"-----END {label}-----"]) + "\n"

    curve_public, _ = curve_keypair(private_key)
    der = public_der(private_key)
    binding = sign(private_key, curve_binding_input(curve_public))
    return block(PUBLIC_KEY_LABEL, der) + block(CURVE_LABEL, curve_public) + block(BINDING_LABEL, binding)


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


def get_finite(doc: dict[str, Any], field: str) -> float:
    value = get_number(doc, field)
    if not math.isfinite(value):
        raise ValueError(f"{field}: not a finite number")
    return value


class Welcome:
    """A `welcome` that passed the checks of 9.3 (name, the bounds of 8.1, your own entry, every user object)."""

    def __init__(self, event: dict[str, Any], name: str, own_fingerprint: str) -> None:
        # 1. the name is ours
        if get_name(event, "name") != name:
            raise ValueError("a welcome for another name")
        # 2. the numbers are within what a broker's config.json can say (8.1)
        interval = get_finite(event, "heartbeat_interval")
        timeout = get_finite(event, "heartbeat_timeout")
        max_text = get_int(event, "max_text_bytes")  # an integer (7.3)
        if not MIN_HEARTBEAT_INTERVAL <= interval <= MAX_HEARTBEAT_INTERVAL:
            raise ValueError(
                f"heartbeat_interval {interval:g} s is outside {MIN_HEARTBEAT_INTERVAL:g}-{MAX_HEARTBEAT_INTERVAL:g} s"
            )
        if not MIN_HEARTBEAT_TIMEOUT <= timeout <= MAX_HEARTBEAT_TIMEOUT:
            raise ValueError(
                f"heartbeat_timeout {timeout:g} s is outside {MIN_HEARTBEAT_TIMEOUT:g}-{MAX_HEARTBEAT_TIMEOUT:g} s"
            )
        if timeout < 2 * interval:
            raise ValueError(f"heartbeat_timeout {timeout:g} s is less than twice heartbeat_interval {interval:g} s")
        if not 1 <= max_text <= MAX_TEXT_BYTES:
            raise ValueError(f"max_text_bytes {max_text} is outside 1-{MAX_TEXT_BYTES}")
        # 4. every user object is well formed and its key has its fingerprint (7.2)
        users = event.get("users")
        if not isinstance(users, list):
            raise ValueError("users: not an array")
        checked = [check_user(u) for u in users]
        # 3. it lists us, and every entry with our name carries our own key's fingerprint
        own = [info for user, _, info in checked if user == name]
        if not own:
            raise ValueError("the welcome does not list us")
        if any(info["fingerprint"] != own_fingerprint for info in own):
            raise ValueError("the welcome names another key for us")
        self.heartbeat_interval, self.heartbeat_timeout, self.max_text_bytes = interval, timeout, max_text
        self.roster = {user: key for user, key, _ in checked}
        self.users = [info for _, _, info in checked]


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
    shutdown, evicted and connection_lost the session is over (`over`). `receive()` does not reconnect by itself:
    after refused, evicted or connection_lost call `reconnect()` (the rules of 5.6 and 8.3; never after closed or
    shutdown), or `login()` for one bare attempt. Either re-sends what the broker has not answered.

    `login()` raises a LoginFailed whose class says what 5.6 asks next: LoginRefused (a refusal; KeyNotAccepted
    for a ZAP 400), BrokerLies (NotTheBroker, UnusableWelcome: give up) or NotNow (BrokerBusy, TurnedAway,
    LoginTimeout, LostInTransit: not a refusal). `exit_status()` maps an ending to the exit statuses of 8.3.
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
        self.own_fingerprint = fingerprint(public_der(self.own_key))  # checked in 9.3
        # Pinned (2.1): the broker's RSA key, and its Curve key (the transport's server key, 1.5), which must be
        # bound to the RSA key by the file's binding block.
        self.broker_key, self.broker_curve_key = load_public_key_file(broker_key_path)
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
        self.statement_refusals: dict[str, int] = {}  # message id -> `refused` events naming it (6.1, 8.3)
        # The login rules (5.6, 8.3, 9.3), across sessions: welcomed at least once since we started (a first login
        # stops at its first failure), refusals since the last welcome, the backoff, and whether the broker ended
        # us for good (`closed`, `shutdown`, a key refused at a re-login: never reconnect).
        self.welcomed = False
        self.refusals = 0
        self.backoff = BACKOFF_FIRST
        self.ended_for_good: str | None = None
        self.sleep: Callable[[float], None] = time.sleep  # the backoff's wait (a test may replace it)
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
        # What the socket monitor said about this login's CurveZMQ handshake (5.6).
        self.handshake_connected = self.handshake_succeeded = False
        self.handshake_broken_off = 0

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
        """One login attempt: HELLO, CHALLENGE, LOGIN, welcome. Returns the welcome event, or raises a LoginFailed
        whose class says what 5.6 asks next (see `reconnect()` for the retries).

        After the welcome, every chat message still in the outbox is sent again with its own id, as new
        statements of the new session (6.1, 8.3), unless `resend` is false.
        """
        if self.ended_for_good is not None:
            raise SessionOver(f"the broker ended this client for good ({self.ended_for_good}): do not log in again")
        try:
            welcome = self._login_attempt(timeout)
        except KeyNotAccepted:
            if self.welcomed:  # the key is no longer registered: over for good, like `closed` (5.6, 8.3)
                self.ended_for_good = "the broker no longer accepts this key"
            raise
        self.welcomed, self.refusals, self.backoff = True, 0, BACKOFF_FIRST  # only a welcome resets these (5.6)
        if resend:
            self.flush_outbox()
        return welcome

    def _login_attempt(self, timeout: float) -> dict[str, Any]:
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
        # The handshake's outcome shows only on the socket monitor (1.5, 5.6).
        self.monitor = self.sock.get_monitor_socket(HANDSHAKE_EVENTS)
        self.sock.connect(self.endpoint)
        started = time.monotonic()
        deadline = started + timeout
        try:
            return self._login_exchange(deadline, timeout)
        except LoginFailed:
            self._stop_monitor()
            self.logged_in, self.over = False, True
            self.pending_ack = None
            raise

    def _login_exchange(self, deadline: float, timeout: float) -> dict[str, Any]:
        client_nonce = get_random_bytes(32)
        hello = {"user": self.name, "nonce": b64e(client_nonce), "bot": self.bot, "history": self.history}
        self._send(b"HELLO", seal(self.broker_key, dumps(hello).encode("utf-8"), b"HELLO"))
        body = self._await_login_answer(b"CHALLENGE", deadline, timeout)

        try:  # 5.3 step 1: a challenge that does not open is a refusal
            plaintext = open_envelope(self.own_key, body, b"CHALLENGE")
        except ProtocolError as exc:  # not registered, or registered with another key
            raise LoginRefused("login refused: the challenge does not open with our key") from exc
        try:  # step 2: it opened with our key, so whatever is wrong now, the peer is not the broker we pinned
            challenge = parse_object(plaintext)
            user, echoed = get_name(challenge, "user"), get_b64(challenge, "client_nonce", 32)
            server_nonce = get_b64(challenge, "server_nonce", 32)
            delivery_key = get_b64(challenge, "delivery_key", 32)
            broker_sig = get_b64(challenge, "sig")
        except (ValueError, UnicodeDecodeError) as exc:
            raise NotTheBroker(f"not the pinned broker: a malformed challenge ({exc})") from exc
        if user != self.name or echoed != client_nonce:
            raise NotTheBroker("not the pinned broker: the challenge does not echo our name and nonce")
        broker_proof = (
            PREFIX + b"broker|" + self.name.encode("ascii") + b"|" + client_nonce + server_nonce + delivery_key
        )
        if not verify(self.broker_key, broker_proof, broker_sig):  # step 3
            raise NotTheBroker("not the pinned broker: the challenge is not signed by the pinned broker key")
        self.session, self.delivery_key = server_nonce.hex(), delivery_key

        login_proof = PREFIX + b"login|" + self.name.encode("ascii") + b"|" + client_nonce + server_nonce
        document = {"sig": b64e(sign(self.own_key, login_proof))}
        self._send(b"LOGIN", seal(self.broker_key, dumps(document).encode("utf-8"), b"LOGIN"))
        while True:
            body = self._await_login_answer(b"EVENT", deadline, timeout)
            event = self._on_event(body)  # an unusable welcome raises UnusableWelcome
            if self.over:  # an authentic delivery above seq 1: deliveries were lost (7.1 step 4)
                raise LostInTransit(
                    "messages from the broker were lost on the way" + ("" if self.welcomed else "; try again later")
                )
            if event is not None and event["type"] == "welcome":
                self.logged_in = True
                self.last_sent = self.last_heard = time.monotonic()
                self._stop_monitor()
                self._flush_ack()  # the welcome is an EVENT like any other (8.4)
                return event

    def _stop_monitor(self) -> None:
        if self.monitor is not None:
            if self.sock is not None:
                self.sock.disable_monitor()
            self.monitor.close(linger=0)
            self.monitor = None

    def _on_handshake_event(self, event: dict[str, Any]) -> None:
        """What the socket monitor says about the CurveZMQ handshake (5.6, 9.3 "connecting")."""
        kind, value = event["event"], event.get("value")
        if kind == zmq.EVENT_CONNECTED:
            self.handshake_connected = True
        elif kind == zmq.EVENT_HANDSHAKE_SUCCEEDED:
            self.handshake_succeeded = True
        elif kind in (zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL, zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL):
            self.handshake_broken_off += 1  # a wrong broker key, or a 300 broken off (libzmq connects again)
        elif kind == zmq.EVENT_HANDSHAKE_FAILED_AUTH:  # libzmq does not connect again after this
            if value == ZAP_REFUSED:
                raise KeyNotAccepted("login refused: the broker does not accept this key")
            # 500 (an error in the broker), or 300 should a monitor ever report it: not a refusal. The spec names
            # no other status; anything else is taken as not a refusal too.
            raise TurnedAway(
                f"the broker at {self.endpoint} turned the connection away for now (handshake status {value}); "
                "try again later"
            )

    def _timed_out(self, timeout: float) -> LoginTimeout:
        """The message of a login that ran out of time (5.6)."""
        where = f"the broker at {self.endpoint}"
        if self.handshake_succeeded:
            return LoginTimeout(f"{where} did not answer within {timeout:g}s; try again later")
        if self.handshake_broken_off >= 2:
            return LoginTimeout(
                f"{where} did not complete the handshake within {timeout:g}s: the pinned broker key is likely not "
                "this broker's, unless the broker is turning the connection away for now; try again later"
            )
        if not self.handshake_connected:
            return LoginTimeout(f"{where} did not answer within {timeout:g}s (down or unreachable?); try again later")
        return LoginTimeout(
            f"{where} did not complete the handshake within {timeout:g}s: it may be turning the connection away "
            "for now; try again later"
        )

    def _await_login_answer(self, wanted: bytes, deadline: float, timeout: float) -> bytes:
        """Wait for `wanted` during the login (9.3): the handshake's outcome on the monitor, REFUSED (a refusal),
        BUSY (not a refusal) and PING are handled; everything else is dropped."""
        assert self.sock is not None
        assert self.monitor is not None
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        poller.register(self.monitor, zmq.POLLIN)
        while (remaining := deadline - time.monotonic()) > 0:
            ready = dict(poller.poll(max(1, int(remaining * 1000))))
            while self.monitor.poll(0, zmq.POLLIN):
                self._on_handshake_event(dict(recv_monitor_message(self.monitor, flags=zmq.NOBLOCK)))
            if self.sock not in ready:
                continue
            message = self._recv(0)
            if message is None:
                continue
            command, body = message
            if command == b"REFUSED":
                raise LoginRefused("login refused by the broker (REFUSED)")
            if command == b"BUSY":
                raise BrokerBusy("the broker is busy (too many clients or logins); try again later")
            if command == wanted:
                return body
        raise self._timed_out(timeout)

    def _wait_backoff(self) -> None:
        """Exponential backoff between attempts: 0.5 s doubling up to 8 s, +-20 % jitter (8.3)."""
        self.sleep(self.backoff * random.uniform(1 - BACKOFF_JITTER, 1 + BACKOFF_JITTER))
        self.backoff = min(2 * self.backoff, BACKOFF_MAX)

    def reconnect(self, timeout: float = LOGIN_TIMEOUT) -> dict[str, Any]:
        """Log in again after a session ended (lost, evicted, refused, 8.3), with the rules of 5.6 and 9.3.

        Before the first welcome this is a first login: one attempt, and any failure is raised. Afterwards,
        it waits the backoff before every attempt and retries, for as long as it takes, after BUSY, a handshake
        turned away (ZAP 500, or 300) or a timed-out attempt; it retries a refusal (REFUSED, a challenge that
        does not open) up to three times since the last welcome and raises RefusedTooOften at the fourth. It
        raises at once a key refused by the handshake (ZAP 400: the client is then over for good, as after
        `closed`, 8.3), a challenge that does not prove the pinned key and an unusable welcome.
        """
        if self.ended_for_good is not None:
            raise SessionOver(f"the broker ended this client for good ({self.ended_for_good}): do not reconnect")
        if not self.welcomed:
            return self.login(timeout)  # a first login ends at its first failure (5.6)
        while True:
            self._wait_backoff()
            try:
                return self.login(timeout)
            except KeyNotAccepted:
                raise  # at once (5.6); login() has marked the client as ended for good
            except LoginRefused as exc:
                self.refusals += 1
                if self.refusals > MAX_RELOGIN_REFUSALS:
                    raise RefusedTooOften(f"{exc} (the fourth refusal since the last welcome)") from exc
            except NotNow:
                pass  # neither resets nor adds to the refusals (5.6)

    def exit_status(self, error: BaseException | None = None) -> int:
        """The exit status of 8.3 for a client that ends now, with `error` (None: the user left, or the broker
        ended the session)."""
        if self.ended_for_good == "shutdown" and error is None:
            return EXIT_OK
        if self.ended_for_good is not None and (error is None or isinstance(error, KeyNotAccepted)):
            return EXIT_CLOSED  # `closed`, or the key refused at a re-login
        return EXIT_OK if error is None else EXIT_ERROR

    # --- statements (section 6)

    def _say(self, statement_type: str, **fields: Any) -> int:
        """Number, sign, seal and queue one statement; returns its seq."""
        if not self.logged_in or self.session is None:
            raise ConnectionError("not logged in")
        seq = self.seq_out + 1  # numbered only when handed to the socket; a failed send spends it (6.1)
        if seq > MAX_SEQ:
            raise ValueError("no statement numbers left in this session")  # (6.1, 9.1)
        statement = {
            "type": statement_type,
            "from": self.name,
            "session": self.session,
            "seq": seq,
            "ts": time.time(),  # a number from 0 to 4 102 444 800, or a chat is answered `failed` (6.1, 6.4)
            **fields,
        }
        signed = dumps(statement)  # serialised once, signed and sent as is (6.2)
        if len(signed) > self.max_body:  # (6.2, 9.1); not sent, so the number is not spent
            raise ValueError("statement longer than max_body")  # cannot happen for a text within max_text_bytes
        sig = sign(self.own_key, PREFIX + b"statement|" + signed.encode("utf-8"))
        document = {"signed": signed, "sig": b64e(sig)}
        body = seal(self.broker_key, dumps(document).encode("utf-8"), b"SEND")
        if len(body) > self.max_body:  # the broker would drop it silently (1.4 check 4, 9.1)
            raise ValueError("SEND body longer than max_body")
        self.seq_out = seq
        if not self._send(b"SEND", body):
            self.logged_in, self.over = False, True
            self.pending_ack = None
            raise ConnectionError("the statement could not be queued; its seq is spent, log in again")
        return seq

    def send(self, text: str, to: str | None = None, action: bool = False, message_id: str | None = None) -> str:
        """A chat message to the room, or privately `to` one user (any registered user, online or not, 6.5).

        Returns the message's id: a fresh one, or `message_id` when sending a message again (6.1: a message sent
        again keeps its id). The message stays in the outbox until `accepted` or `failed` names its id (6.4).
        Between sessions the message only waits in the outbox: it goes out after the next welcome (8.3). Raises
        ConnectionError when the statement could not be queued (the message stays in the outbox; log in again).
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
        if self.logged_in:
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
            if event_type == "welcome" and seq == 1:  # the login fails at once, and is not retried (7.1, 8.1, 9.3)
                self.logged_in, self.over = False, True
                self.pending_ack = None
                raise UnusableWelcome(f"the broker's welcome was unusable ({exc})") from exc
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
            return self._welcome(event)
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
            return self._failed(event)
        if event_type == "refused":
            return self._refused(event)
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
            self.logged_in, self.over = False, True  # over for good: do not reconnect (7.3, 8.3)
            self.ended_for_good = "closed"
            return {"type": "closed", "reason": get_str(event, "reason")}
        if event_type == "shutdown":
            self.logged_in, self.over = False, True
            self.ended_for_good = "shutdown"
            return {"type": "shutdown", "by": get_str(event, "by")}
        raise ValueError(f"unknown event type {event_type!r}")

    def _welcome(self, event: dict[str, Any]) -> dict[str, Any] | None:
        """`welcome` (7.1, 7.3): only the first event of a session; it sets the limits and the roster."""
        if self.seq_in != 1:
            return None  # a late welcome is skipped (7.1 step 6)
        welcome = Welcome(event, self.name, self.own_fingerprint)  # checked before anything in it is used (9.3)
        self.heartbeat_interval, self.heartbeat_timeout = welcome.heartbeat_interval, welcome.heartbeat_timeout
        self.max_text_bytes = welcome.max_text_bytes
        self.roster = welcome.roster
        self.history_window = True
        return {"type": "welcome", "name": self.name, "users": welcome.users}

    def _accepted(self, event: dict[str, Any]) -> dict[str, Any]:
        """`accepted` (6.4, 7.3): the message is committed at the broker; take it out of the outbox."""
        message_id, received = get_message_id(event, "id"), get_time(event, "received")
        queued = get_bool(event, "queued", default=False)  # written only when true; a boolean if present
        duplicate = get_bool(event, "duplicate", default=False)
        fields = self.outbox.pop(message_id, None)
        self.statement_refusals.pop(message_id, None)
        if fields is not None and fields.get("to") != self.name:  # a private message to ourselves is still to come
            self._remember((self.name, message_id))  # so a later history replay does not show it again (7.6)
        return {"type": "accepted", "id": message_id, "received": received, "queued": queued, "duplicate": duplicate}

    def _failed(self, event: dict[str, Any]) -> dict[str, Any]:
        """`failed` (6.4, 7.3): the message was not delivered; take it out of the outbox."""
        message_id, reason = get_message_id(event, "id"), get_str(event, "reason")  # a reason is for people
        self.outbox.pop(message_id, None)  # not delivered: do not send it again (6.4)
        self.statement_refusals.pop(message_id, None)
        return {"type": "failed", "id": message_id, "reason": reason}

    def _refused(self, event: dict[str, Any]) -> dict[str, Any]:
        """`refused` (6.3, 7.3): the broker has ended the session; a statement refused three times is given up."""
        self.logged_in, self.over = False, True  # the broker has ended the session (6.3), whatever the fields
        self.pending_ack = None
        seq = get_int(event, "seq") if "seq" in event else None
        refused_id = get_message_id(event, "id") if "id" in event else None
        given_up = False
        if refused_id is not None and refused_id in self.outbox:  # refused three times: give it up (6.1, 8.3)
            self.statement_refusals[refused_id] = self.statement_refusals.get(refused_id, 0) + 1
            if self.statement_refusals[refused_id] >= MAX_STATEMENT_REFUSALS:
                del self.outbox[refused_id], self.statement_refusals[refused_id]
                given_up = True
        return {"type": "refused", "seq": seq, "id": refused_id, "given_up": given_up}

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
        key, author_fingerprint = self._author_key(event, kind, author)
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
            self._check_replay(author, session, seq)
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

    def _author_key(self, event: dict[str, Any], kind: str, author: str) -> tuple[RsaKey, str | None]:
        """Step 2 of 7.4: the key and, for history and mail, the fingerprint of the `author` it came from."""
        if kind == "live":
            if author not in self.roster:
                raise ValueError(f"{author} is not in the roster")
            return self.roster[author], None
        name, key, info = check_user(event.get("author"))
        if name != author:
            raise ValueError(f"{kind} author does not match the statement")
        return key, info["fingerprint"]

    def _check_replay(self, author: str, session: str, seq: int) -> None:
        """Step 6 of 7.4, live only: a statement no newer than the author's last in the same session is a replay."""
        last = self.last_statement.get(author)
        if last is not None and last[0] == session and seq <= last[1]:
            raise ValueError(f"replayed statement from {author}")
        self.last_statement[author] = (session, seq)

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
        if not keep_context and not self.zmq_context.closed:
            self.zmq_context.destroy(linger=0)

    def __enter__(self) -> IndependentClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


# --- as a program: the exit statuses of 8.3 ------------------------------------------------------------------------


class _Stop(Exception):
    """SIGTERM: leave as after SIGINT (8.3)."""


def _emit(event: dict[str, Any]) -> None:
    print(dumps(event), flush=True)


def _complain(message: str) -> None:
    print(f"independent_client: {message}", file=sys.stderr, flush=True)


def _read_lines(lines: queue.Queue[str | None]) -> None:
    for line in sys.stdin:
        lines.put(line.rstrip("\r\n"))
    lines.put(None)  # end of input


def _report_unanswered(client: IndependentClient) -> None:
    """When the client closes for good, each message still waiting is reported as failed (8.3)."""
    for message_id, fields in client.outbox.items():
        _complain(f"failed (not confirmed by the broker): {message_id}: {fields['text'][:40]!r}")


def run(client: IndependentClient, lines: queue.Queue[str | None] | None) -> int:
    """Log in, print events, send input lines, reconnect as 8.3 says; returns the exit status of 8.3."""
    try:
        _emit(client.login())
    except LoginFailed as exc:  # a first login stops at its first failure, whatever it is (5.6)
        _complain(str(exc))
        client.close(say_bye=False)
        return client.exit_status(exc)
    input_ended_at: float | None = None
    while True:
        while lines is not None and input_ended_at is None:
            try:
                line = lines.get_nowait()
            except queue.Empty:
                break
            if line is None:
                input_ended_at = time.monotonic()
            elif line.strip():
                try:
                    client.send(line)
                except ValueError as exc:  # the text rules of 6.4, checked before a number is spent
                    _complain(f"not sent ({exc}): {line[:40]!r}")
                except ConnectionError:
                    pass  # it stays in the outbox; the session is over and is started again below
        if input_ended_at is not None and (not client.outbox or time.monotonic() - input_ended_at > LOGIN_TIMEOUT):
            _report_unanswered(client)
            client.close(say_bye=True)  # end of input: the user left
            return EXIT_OK
        event = client.receive(0.1)
        if event is not None:
            _emit(event)
        if not client.over:
            continue
        if client.ended_for_good is not None:  # closed or shutdown: never reconnect (7.3, 8.3)
            if event is not None and event["type"] == "closed":
                _complain(f"session closed: {event['reason']}")
            elif event is not None and event["type"] == "shutdown":
                _complain(f"the broker stopped: {event['by']}")
            _report_unanswered(client)
            client.close(say_bye=False)
            return client.exit_status()
        try:  # lost, evicted, refused, or a statement that could not be queued: log in again (8.3)
            _emit(client.reconnect())
        except LoginFailed as exc:
            _complain(str(exc))
            _report_unanswered(client)
            client.close(say_bye=False)
            return client.exit_status(exc)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="independent_client.py",
        description="A zchat/3 client written from docs/PROTOCOL.md alone: prints events as JSON lines, sends each "
        "input line as a chat message. Exit status (8.3): 0 the user left or the broker shut down, 1 an error, "
        "3 the broker closed the session for good.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--user", required=True, help="the name to log in as")
    parser.add_argument("--key", required=True, help="your private key (PEM PKCS#8; passphrase from PASSPHRASE)")
    parser.add_argument("--broker-key", default="keys/broker.pub", help="the pinned broker public key file")
    parser.add_argument("--person", action="store_true", help="log in as a person (default: a bot)")
    parser.add_argument("--history", action="store_true", help="ask for the room's recent messages (7.5)")
    parser.add_argument("--no-input", action="store_true", help="only listen: do not read standard input")
    args = parser.parse_args(argv)
    try:
        client = IndependentClient(
            args.host,
            args.port,
            args.user,
            args.key,
            args.broker_key,
            bot=not args.person,
            history=args.history,
            passphrase=os.environ.get("PASSPHRASE") or None,
        )
    except (OSError, ValueError, IndexError, TypeError) as exc:  # a bad key file (8.3: status 1)
        _complain(f"cannot start: {exc}")
        return EXIT_ERROR
    lines: queue.Queue[str | None] | None = None
    if not args.no_input:
        lines = queue.Queue()
        threading.Thread(target=_read_lines, args=(lines,), daemon=True).start()

    def on_sigterm(signum: int, frame: object) -> None:
        raise _Stop

    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        return run(client, lines)
    except (KeyboardInterrupt, _Stop):  # SIGINT or SIGTERM: the user left (8.3)
        welcomed = client.welcomed
        client.close(say_bye=True)
        return EXIT_OK if welcomed or client.bot else EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
