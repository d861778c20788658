"""A CurveZMQ client written by hand (RFC 23 framing, RFC 26 handshake), for sending what libzmq cannot.

libzmq only ever passes complete messages to the wire, and always announces
its `Identity`. An attacker does neither: this client completes a real
CurveZMQ handshake with a registered user's key, then sends single frames
(`send_frame(data, more=True)` as often as it likes), so a multipart message
can be left unfinished, and it announces whatever routing id it is told to.
Only PyNaCl and the standard library.

    client = RawCurveClient("127.0.0.1", port, server_public, public, secret, source="127.0.0.2")
    client.handshake(timeout=5)          # greeting, HELLO, WELCOME, INITIATE (with the vouch), READY
    client.send_frame(b"hello", more=False)
    client.recv_frame(timeout=1)         # (data, more) or None
    client.close()

`hello_bytes()` gives a greeting and a HELLO once, for replay (each reply is a
WELCOME: the cost a stranger can put on the broker).

The wire, in short (RFC 26): the client's short nonces count up from 1 (HELLO
1, INITIATE 2, then one per MESSAGE); every box is crypto_box (Curve25519,
XSalsa20, Poly1305) with a 24-byte nonce of a fixed prefix and the counter.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import time

from nacl.bindings import (
    crypto_box,
    crypto_box_afternm,
    crypto_box_beforenm,
    crypto_box_keypair,
    crypto_box_open,
    crypto_box_open_afternm,
)

SIGNATURE = b"\xff" + bytes(8) + b"\x7f"
MORE, LONG, COMMAND = 0x01, 0x02, 0x04
SEND_TIMEOUT = 10.0  # seconds a write may block (the broker reads what a peer sends, or closes the connection)


class HandshakeFailed(Exception):
    """The broker ended the handshake (ERROR, with its ZAP status code if it gave one) or the connection."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def greeting(as_server: bool = False) -> bytes:
    return SIGNATURE + b"\x03\x00" + b"CURVE".ljust(20, b"\x00") + bytes([as_server]) + bytes(31)


def wire_frame(body: bytes, flags: int = 0) -> bytes:
    if len(body) > 255:
        return bytes([flags | LONG]) + len(body).to_bytes(8, "big") + body
    return bytes([flags, len(body)]) + body


def command(name: bytes, data: bytes) -> bytes:
    return wire_frame(bytes([len(name)]) + name + data, COMMAND)


def properties(items: dict[bytes, bytes]) -> bytes:
    return b"".join(bytes([len(k)]) + k + len(v).to_bytes(4, "big") + v for k, v in items.items())


def short_nonce(counter: int) -> bytes:
    return counter.to_bytes(8, "big")


class RawCurveClient:
    """One TCP connection speaking CurveZMQ as a DEALER, frame by frame."""

    def __init__(
        self,
        host: str,
        port: int,
        server_public: bytes,
        client_public: bytes,
        client_secret: bytes,
        source: str | None = None,
        identity: bytes | None = b"",
    ) -> None:
        """`identity`: the routing id announced in INITIATE (b"": none, as libzmq does; None: no property)."""
        self.server_public = server_public
        self.client_public = client_public
        self.client_secret = client_secret
        self.identity = identity
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close = reset
        if source:
            self.sock.bind((source, 0))
        self.sock.settimeout(5)
        self.sock.connect((host, port))
        self.nonce = 0  # the last short nonce sent
        self.short_public, self.short_secret = crypto_box_keypair()
        self.precomputed = b""  # C' with S', once WELCOME gave S'
        self.buffer = b""

    # ------------------------------------------------------------ the handshake

    def _next_nonce(self) -> bytes:
        self.nonce += 1
        return short_nonce(self.nonce)

    def hello(self) -> bytes:
        """The HELLO command: version 1.0, 72 bytes of anti-amplification padding, C', nonce, Box[64 zeros](C'->S)."""
        nonce = self._next_nonce()
        box = crypto_box(bytes(64), b"CurveZMQHELLO---" + nonce, self.server_public, self.short_secret)
        return command(b"HELLO", b"\x01\x00" + bytes(72) + self.short_public + nonce + box)

    def handshake(self, timeout: float = 5.0) -> dict[bytes, bytes]:
        """Greeting, HELLO, WELCOME, INITIATE, READY. Returns the broker's READY metadata; raises HandshakeFailed."""
        deadline = time.monotonic() + timeout
        self.send_raw(greeting() + self.hello())
        server_greeting = self._read_exact(64, deadline)
        if server_greeting[:1] != b"\xff" or server_greeting[12:17] != b"CURVE":
            raise HandshakeFailed("not a CurveZMQ server")
        welcome = self._read_command(deadline)
        if not welcome.startswith(b"\x07WELCOME") or len(welcome) != 8 + 16 + 144:
            raise HandshakeFailed(f"expected WELCOME, got {welcome[:16]!r}")
        opened = crypto_box_open(
            welcome[24:], b"WELCOME-" + welcome[8:24], self.server_public, self.short_secret
        )  # raises nacl.exceptions.CryptoError on a wrong server key
        server_short, cookie = opened[:32], opened[32:]
        self.precomputed = crypto_box_beforenm(server_short, self.short_secret)
        vouch_nonce = os.urandom(16)
        vouch = crypto_box(
            self.short_public + self.server_public, b"VOUCH---" + vouch_nonce, server_short, self.client_secret
        )
        metadata = {b"Socket-Type": b"DEALER"}
        if self.identity is not None:
            metadata[b"Identity"] = self.identity
        nonce = self._next_nonce()
        initiate = crypto_box_afternm(
            self.client_public + vouch_nonce + vouch + properties(metadata),
            b"CurveZMQINITIATE" + nonce,
            self.precomputed,
        )
        self.send_raw(command(b"INITIATE", cookie + nonce + initiate))
        reply = self._read_command(deadline)
        if reply.startswith(b"\x05ERROR"):
            reason = reply[7 : 7 + reply[6]] if len(reply) > 6 else b""
            status = int(reason) if reason.isdigit() else None
            raise HandshakeFailed(f"ERROR {reason.decode('ascii', 'replace')}", status)
        if not reply.startswith(b"\x05READY") or len(reply) < 6 + 8 + 16:
            raise HandshakeFailed(f"expected READY, got {reply[:16]!r}")
        plain = crypto_box_open_afternm(reply[14:], b"CurveZMQREADY---" + reply[6:14], self.precomputed)
        return _parse_properties(plain)

    # ------------------------------------------------------------ after it

    def send_frame(self, data: bytes, more: bool) -> None:
        """One frame of a message, MORE set or not (libzmq's framing: an outer data frame holding MESSAGE)."""
        self.send_raw(self.frame_bytes(data, more))

    def send_raw(self, data: bytes) -> None:
        """Write bytes as they are (frames from `frame_bytes`, batched). Raises OSError once the broker closed."""
        self.sock.settimeout(SEND_TIMEOUT)
        self.sock.sendall(data)

    def frame_bytes(self, data: bytes, more: bool) -> bytes:
        """The bytes `send_frame` would write (to batch many frames in one write)."""
        nonce = self._next_nonce()
        box = crypto_box_afternm(bytes([MORE if more else 0]) + data, b"CurveZMQMESSAGEC" + nonce, self.precomputed)
        return wire_frame(b"\x07MESSAGE" + nonce + box)

    def send_message(self, frames: list[bytes]) -> None:
        self.send_raw(b"".join(self.frame_bytes(f, i < len(frames) - 1) for i, f in enumerate(frames)))

    def recv_frame(self, timeout: float) -> tuple[bytes, bool] | None:
        """The next frame from the broker as (data, more); None when nothing came in time. Raises
        ConnectionError once the broker closed the connection."""
        deadline = time.monotonic() + timeout
        try:
            body = self._read_frame(deadline)
        except TimeoutError:
            return None
        if not body.startswith(b"\x07MESSAGE"):
            return self.recv_frame(max(0.0, deadline - time.monotonic()))  # a command (PING): not a frame
        plain = crypto_box_open_afternm(body[16:], b"CurveZMQMESSAGES" + body[8:16], self.precomputed)
        return plain[1:], bool(plain[0] & MORE)

    def closed_by_peer(self, timeout: float) -> bool:
        """True once the broker has closed the connection (whatever it sent first is read and dropped)."""
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            self.sock.settimeout(remaining)
            try:
                if not self.sock.recv(65536):
                    return True
            except (ConnectionResetError, BrokenPipeError):
                return True
            except (TimeoutError, BlockingIOError):
                return False
        return False

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def __enter__(self) -> RawCurveClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # ------------------------------------------------------------ reading

    def _read_exact(self, count: int, deadline: float) -> bytes:
        while len(self.buffer) < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("timed out")
            self.sock.settimeout(remaining)
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError as exc:
                raise ConnectionError("closed by the broker") from exc
            except TimeoutError:
                raise
            if not chunk:
                raise ConnectionError("closed by the broker")
            self.buffer += chunk
        data, self.buffer = self.buffer[:count], self.buffer[count:]
        return data

    def _read_frame(self, deadline: float) -> bytes:
        flags = self._read_exact(1, deadline)[0]
        size = int.from_bytes(self._read_exact(8 if flags & LONG else 1, deadline), "big")
        return self._read_exact(size, deadline)

    def _read_command(self, deadline: float) -> bytes:
        try:
            return self._read_frame(deadline)
        except (ConnectionError, TimeoutError) as exc:
            raise HandshakeFailed(f"handshake ended: {exc}") from exc


def _parse_properties(data: bytes) -> dict[bytes, bytes]:
    found: dict[bytes, bytes] = {}
    at = 0
    while at < len(data):
        name_length = data[at]
        name = data[at + 1 : at + 1 + name_length]
        at += 1 + name_length
        value_length = int.from_bytes(data[at : at + 4], "big")
        found[name] = data[at + 4 : at + 4 + value_length]
        at += 4 + value_length
    return found


def hello_bytes(server_public: bytes) -> bytes:
    """A CURVE greeting and a HELLO from a throw-away key: replayed unchanged, each one earns a WELCOME."""
    public, secret = crypto_box_keypair()
    client = RawCurveClient.__new__(RawCurveClient)
    client.server_public, client.short_public, client.short_secret, client.nonce = server_public, public, secret, 0
    return greeting() + client.hello()
