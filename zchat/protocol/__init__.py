"""Wire protocol zchat/3, without I/O: frames, documents, signing inputs, limits, handshake and statements.

Every ZeroMQ message between a client (DEALER) and the broker (ROUTER) has
exactly three frames: the marker b"zchat/3", a command name, and a body. A
body is either empty (PING, REFUSED, EVICTED, BUSY), the 16 bytes of an ACK,
or a hybrid envelope (see `crypto.envelope`) whose plaintext is a UTF-8 JSON
object. The transport under it is CurveZMQ (`zchat.client.transport`, `zchat.broker.admission`). docs/PROTOCOL.md is
the normative description; this package is its one implementation: this module what a client sends (and the
fields and limits both sides check), `zchat.protocol.events` what the broker sends (deliveries and their events).

Decoding functions raise RemoteProtocolError for anything a peer could get
wrong; building functions raise LocalProtocolError for our own misuse.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
import secrets
import unicodedata
from dataclasses import dataclass
from typing import Any

from zchat.errors import LocalProtocolError, RemoteProtocolError

MARKER: bytes = b"zchat/3"

# Commands a client sends.
HELLO = b"HELLO"
LOGIN = b"LOGIN"
SEND = b"SEND"
PING = b"PING"
ACK = b"ACK"  # flow control: "I have read every EVENT up to the one whose body ends with these bytes"
# Commands the broker sends (and PING).
CHALLENGE = b"CHALLENGE"
EVENT = b"EVENT"
REFUSED = b"REFUSED"
EVICTED = b"EVICTED"
BUSY = b"BUSY"

CLIENT_COMMANDS = frozenset({HELLO, LOGIN, SEND, PING, ACK})
BROKER_COMMANDS = frozenset({CHALLENGE, EVENT, REFUSED, EVICTED, BUSY, PING})
BODYLESS_COMMANDS = frozenset({PING, REFUSED, EVICTED, BUSY})
FRAME_COUNT = 3

NONCE_BYTES = 32
DELIVERY_KEY_BYTES = 32
# Broker frames can carry the whole roster (about 1 KiB per user online): clients accept up to this.
MAX_BROKER_BODY = 16 * 1024 * 1024
NAME_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,32}")
MESSAGE_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")  # a chat statement's id, chosen by its author
DEFAULT_MAX_TEXT_BYTES = 64 * 1024
MAX_SEQ = 2**53 - 1
ACK_BYTES = 16  # an ACK names an EVENT by the last 16 bytes of its body (AES-GCM output: only its reader knows them)
MAX_TIMESTAMP = 4_102_444_800  # 2100-01-01: a time stamp is a number of seconds from 0 to this
# Statement kinds a logged-in client may send.
STATEMENT_KINDS = frozenset({"chat", "who", "shutdown", "bye"})


def max_body_bytes(max_text_bytes: int) -> int:
    """Largest acceptable body for a given text cap.

    The text is JSON-escaped twice on its way (in the statement, then as a
    string inside the SEND or EVENT document) and each escaping at most
    doubles it; 16 KiB covers every other field and the envelope.
    """
    return 4 * max_text_bytes + 16 * 1024


def context(command: bytes) -> bytes:
    """The envelope context (OAEP label and AEAD data) for a command's body."""
    return MARKER + b"|" + command


# ---------------------------------------------------------------- frames


def encode_frames(command: bytes, body: bytes = b"") -> list[bytes]:
    if command in BODYLESS_COMMANDS and body:
        raise LocalProtocolError(f"{command!r} carries no body")
    return [MARKER, command, body]


def decode_frames(frames: list[bytes], allowed: frozenset[bytes], max_body: int) -> tuple[bytes, bytes]:
    """Check frame count, marker, command and size before anything else looks at a message."""
    if len(frames) != FRAME_COUNT:
        raise RemoteProtocolError(f"expected {FRAME_COUNT} frames, got {len(frames)}")
    marker, command, body = frames
    if marker != MARKER:
        raise RemoteProtocolError("wrong protocol marker")
    if command not in allowed:
        raise RemoteProtocolError("unknown command")
    if len(body) > max_body:
        raise RemoteProtocolError(f"body of {len(body)} bytes exceeds {max_body}")
    if command in BODYLESS_COMMANDS and body:
        raise RemoteProtocolError("unexpected body")
    if command == ACK and len(body) != ACK_BYTES:
        raise RemoteProtocolError("an ACK body has 16 bytes")
    return command, body


def event_tag(body: bytes) -> bytes:
    """What an ACK carries for an EVENT body: its last ACK_BYTES bytes."""
    return body[-ACK_BYTES:]


# ---------------------------------------------------------------- JSON documents


def dump_doc(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8")


def load_doc(data: bytes | str) -> dict[str, Any]:
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        doc = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise RemoteProtocolError("body is not UTF-8 JSON") from exc
    if not isinstance(doc, dict):
        raise RemoteProtocolError("body is not a JSON object")
    return doc


def _field(doc: dict[str, Any], key: str, kind: type) -> Any:
    value = doc.get(key)
    # bool is an int in Python; never accept one for the other.
    if not isinstance(value, kind) or (kind in (int, float) and isinstance(value, bool)):
        raise RemoteProtocolError(f"field {key!r} missing or not {kind.__name__}")
    return value


def get_str(doc: dict[str, Any], key: str) -> str:
    value = str(_field(doc, key, str))
    try:
        value.encode("utf-8")  # JSON escapes can smuggle in lone surrogates, which UTF-8 cannot hold
    except UnicodeEncodeError:
        raise RemoteProtocolError(f"field {key!r} is not valid Unicode text") from None
    return value


def get_bool(doc: dict[str, Any], key: str) -> bool:
    return bool(_field(doc, key, bool))


def get_int(doc: dict[str, Any], key: str, low: int = 0, high: int = MAX_SEQ) -> int:
    value = int(_field(doc, key, int))
    if not low <= value <= high:
        raise RemoteProtocolError(f"field {key!r} out of range")
    return value


def get_float(doc: dict[str, Any], key: str) -> float:
    value = doc.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RemoteProtocolError(f"field {key!r} missing or not a number")
    try:
        number = float(value)
    except OverflowError:
        raise RemoteProtocolError(f"field {key!r} is out of range") from None
    if not math.isfinite(number):
        raise RemoteProtocolError(f"field {key!r} is not a finite number")
    return number


def get_timestamp(doc: dict[str, Any], key: str) -> float:
    """Seconds since 1970 as a JSON number from 0 to MAX_TIMESTAMP (no NaN, infinity or 4000-digit integer)."""
    value = doc.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= MAX_TIMESTAMP:
        raise RemoteProtocolError(f"field {key!r} missing or not a time from 0 to {MAX_TIMESTAMP}")
    return float(value)


def _sane_timestamp(doc: dict[str, Any], key: str) -> float | None:
    try:
        return get_timestamp(doc, key)
    except RemoteProtocolError:
        return None


def get_name(doc: dict[str, Any], key: str) -> str:
    value = get_str(doc, key)
    if not NAME_PATTERN.fullmatch(value):
        raise RemoteProtocolError(f"field {key!r} is not a valid name")
    return value


def get_message_id(doc: dict[str, Any], key: str) -> str:
    value = get_str(doc, key)
    if not MESSAGE_ID_PATTERN.fullmatch(value):
        raise RemoteProtocolError(f"field {key!r} is not a message id (1-64 of A-Z a-z 0-9 _ -)")
    return value


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def get_b64(doc: dict[str, Any], key: str, length: int | None = None, max_length: int = 8192) -> bytes:
    text = get_str(doc, key)
    if len(text) > (max_length * 4) // 3 + 4:
        raise RemoteProtocolError(f"field {key!r} too long")
    try:
        value = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise RemoteProtocolError(f"field {key!r} is not base64") from exc
    if length is not None and len(value) != length:
        raise RemoteProtocolError(f"field {key!r} has the wrong length")
    return value


# ---------------------------------------------------------------- names and text


def check_name(name: str) -> str:
    """Validate a user name we are about to use (LocalProtocolError if invalid)."""
    if not NAME_PATTERN.fullmatch(name):
        raise LocalProtocolError(f"invalid name {name!r}: use 1-32 of A-Z a-z 0-9 _ -")
    return name


def new_message_id() -> str:
    """A fresh chat message id: 128 random bits, base64url without padding (22 characters)."""
    return base64.urlsafe_b64encode(secrets.token_bytes(16)).rstrip(b"=").decode("ascii")


_ASCII_CONTROL = re.compile("[\x00-\x08\x0a-\x1f\x7f]")


def text_problem(text: str, max_text_bytes: int) -> str | None:
    """Why `text` cannot be a chat message, or None if it can.

    Control characters (other than tab) are refused: they could rewrite a
    recipient's terminal. So are format characters (bidi controls, zero-width
    ones, tag characters) and line/paragraph separators, which could make a line look
    like someone else's; only the zero-width joiner (U+200D) that emoji
    sequences need is allowed (variation selectors are marks, not format).
    """
    if not text.strip():
        return "message is empty"
    size = len(text.encode("utf-8", errors="surrogatepass"))
    if size > max_text_bytes:
        return f"message is {size} bytes, the limit is {max_text_bytes}"
    if text.isascii():  # the common case, at C speed: only control characters can be wrong
        return "message contains control characters" if _ASCII_CONTROL.search(text) else None
    distinct = set(text) - {"\t", "\u200d"}  # a peer's 64 KiB text has few distinct characters: look at each once
    categories = {unicodedata.category(ch) for ch in distinct}
    if categories & {"Cc", "Cs"}:
        return "message contains control characters"
    if categories & {"Cf", "Zl", "Zp"} or any("\U000e0000" <= ch <= "\U000e007f" for ch in distinct):
        return "message contains invisible or direction-changing characters"
    return None


# ---------------------------------------------------------------- signing inputs


def broker_proof_input(user: str, client_nonce: bytes, server_nonce: bytes, delivery_key: bytes) -> bytes:
    """Bytes the broker signs in CHALLENGE to prove it holds the pinned broker key."""
    return MARKER + b"|broker|" + user.encode("ascii") + b"|" + client_nonce + server_nonce + delivery_key


def login_proof_input(user: str, client_nonce: bytes, server_nonce: bytes) -> bytes:
    """Bytes the client signs in LOGIN to prove it holds its registered key."""
    return MARKER + b"|login|" + user.encode("ascii") + b"|" + client_nonce + server_nonce


def statement_signing_input(statement: str) -> bytes:
    """Bytes a client signs for each statement (the statement's exact UTF-8 JSON)."""
    return MARKER + b"|statement|" + statement.encode("utf-8")


def delivery_mac_input(delivery: str) -> bytes:
    """Bytes the broker MACs for each delivery (the delivery's exact UTF-8 JSON)."""
    return MARKER + b"|delivery|" + delivery.encode("utf-8")


# ---------------------------------------------------------------- handshake documents


@dataclass(frozen=True)
class Hello:
    user: str
    nonce: bytes
    bot: bool
    history: bool = True  # replay the room's recent messages after login

    def encode(self) -> bytes:
        doc = {"user": check_name(self.user), "nonce": b64(self.nonce), "bot": self.bot, "history": self.history}
        return dump_doc(doc)

    @classmethod
    def decode(cls, data: bytes) -> Hello:
        doc = load_doc(data)
        history = get_bool(doc, "history") if "history" in doc else True
        return cls(get_name(doc, "user"), get_b64(doc, "nonce", NONCE_BYTES), get_bool(doc, "bot"), history)


@dataclass(frozen=True)
class Challenge:
    """The broker's answer to HELLO: its proof of the pinned key, a fresh nonce, and the session's delivery key."""

    user: str
    client_nonce: bytes
    server_nonce: bytes
    delivery_key: bytes
    signature: bytes

    def encode(self) -> bytes:
        return dump_doc(
            {
                "user": self.user,
                "client_nonce": b64(self.client_nonce),
                "server_nonce": b64(self.server_nonce),
                "delivery_key": b64(self.delivery_key),
                "sig": b64(self.signature),
            }
        )

    @classmethod
    def decode(cls, data: bytes) -> Challenge:
        doc = load_doc(data)
        return cls(
            get_name(doc, "user"),
            get_b64(doc, "client_nonce", NONCE_BYTES),
            get_b64(doc, "server_nonce", NONCE_BYTES),
            get_b64(doc, "delivery_key", DELIVERY_KEY_BYTES),
            get_b64(doc, "sig"),
        )


@dataclass(frozen=True)
class Login:
    signature: bytes

    def encode(self) -> bytes:
        return dump_doc({"sig": b64(self.signature)})

    @classmethod
    def decode(cls, data: bytes) -> Login:
        return cls(get_b64(load_doc(data), "sig"))


def session_id(server_nonce: bytes) -> str:
    """A session's name on the wire: the hex of the broker's challenge nonce."""
    return server_nonce.hex()


# ---------------------------------------------------------------- statements (client -> broker, signed)


@dataclass(frozen=True)
class Statement:
    """Something a logged-in client says, signed by its author.

    `text` is the JSON document exactly as signed; the parsed fields are kept
    beside it so the signed bytes never have to be re-serialised. A chat
    statement may be private (`to` names its only recipient) and may be an
    action (`/me waves`). A chat statement carries its author's message `id`, which
    stays the same when the message is sent again in a later session.
    """

    kind: str
    sender: str
    session: str
    seq: int
    timestamp: float | None  # the author's clock; None when `ts` was not a sane time (the broker refuses it)
    body: str
    text: str
    to: str | None = None
    action: bool = False
    message_id: str = ""  # chat statements only

    @classmethod
    def build(
        cls,
        kind: str,
        sender: str,
        session: str,
        seq: int,
        timestamp: float,
        body: str = "",
        *,
        to: str | None = None,
        action: bool = False,
        message_id: str = "",
    ) -> Statement:
        if kind not in STATEMENT_KINDS:
            raise LocalProtocolError(f"unknown statement kind {kind!r}")
        doc: dict[str, Any] = {
            "type": kind,
            "from": check_name(sender),
            "session": session,
            "seq": seq,
            "ts": timestamp,
        }
        if kind == "chat":
            if not MESSAGE_ID_PATTERN.fullmatch(message_id):
                raise LocalProtocolError(f"invalid message id {message_id!r}")
            doc["id"] = message_id
            doc["text"] = body
            if to is not None:
                doc["to"] = check_name(to)
            if action:
                doc["action"] = True
        text = dump_doc(doc).decode("utf-8")
        return cls(kind, sender, session, seq, timestamp, body, text, to, action, message_id if kind == "chat" else "")

    @classmethod
    def parse(cls, text: str) -> Statement:
        doc = load_doc(text)
        kind = get_str(doc, "type")
        if kind not in STATEMENT_KINDS:
            raise RemoteProtocolError("unknown statement type")
        chat = kind == "chat"
        return cls(
            kind,
            get_name(doc, "from"),
            get_str(doc, "session"),
            get_int(doc, "seq", 1),
            _sane_timestamp(doc, "ts"),
            get_str(doc, "text") if chat else "",
            text,
            get_name(doc, "to") if chat and "to" in doc else None,
            get_bool(doc, "action") if chat and "action" in doc else False,
            get_message_id(doc, "id") if chat else "",
        )


@dataclass(frozen=True)
class SignedStatement:
    """A statement with its author's RSA-PSS signature: the SEND body, relayed verbatim in chat events."""

    statement: str
    signature: bytes

    def to_doc(self) -> dict[str, Any]:
        return {"signed": self.statement, "sig": b64(self.signature)}

    def encode(self) -> bytes:
        return dump_doc(self.to_doc())

    @classmethod
    def from_doc(cls, doc: dict[str, Any], max_text_bytes: int) -> SignedStatement:
        statement = get_str(doc, "signed")
        if len(statement) > max_body_bytes(max_text_bytes):
            raise RemoteProtocolError("statement too long")
        return cls(statement, get_b64(doc, "sig"))
