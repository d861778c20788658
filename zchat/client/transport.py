"""The client's end of the transport: a DEALER that speaks CurveZMQ to the broker.

The broker's ROUTER admits only registered users' Curve25519 keys. A client's
Curve pair is derived from its RSA key (`crypto.curve`), the broker's Curve
public key comes from the pinned `keys/broker.pub`. A client never sets a
routing id: the broker closes a connection that claims one.
"""

from __future__ import annotations

from dataclasses import dataclass

import zmq

from zchat import crypto
from zchat.protocol import MAX_BROKER_BODY

RECONNECT_IVL_MAX_MS = 2000


def broker_curve_key(broker: crypto.PublicKeyFile, source: str) -> bytes:
    """The broker's Curve25519 key from its pinned public key file (KeyFileError when the file has none)."""
    if broker.curve is None:
        raise crypto.KeyFileError(
            f"{source}: has no CurveZMQ key bound to its RSA key (an older broker wrote it); copy the broker's"
            " keys/broker.pub again"
        )
    return broker.curve


def connect_dealer(
    context: zmq.Context[zmq.Socket[bytes]],
    endpoint: str,
    key: crypto.PrivateKey,
    broker_curve: bytes,
    queue_limit: int = 10_000,
) -> zmq.Socket[bytes]:
    """A new DEALER (so a new routing id) connected to the broker over CurveZMQ, linger 0."""
    sock = curve_dealer(context, crypto.curve_secret(key), broker_curve, queue_limit)
    sock.connect(endpoint)
    return sock


def curve_dealer(
    context: zmq.Context[zmq.Socket[bytes]], curve_secret: bytes, broker_curve: bytes, queue_limit: int = 10_000
) -> zmq.Socket[bytes]:
    """A new DEALER with the client's options and this Curve25519 secret key, not yet connected."""
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, queue_limit)
    sock.setsockopt(zmq.RCVHWM, queue_limit)
    sock.setsockopt(zmq.MAXMSGSIZE, MAX_BROKER_BODY + 1024)
    # libzmq's own reconnections (a broker not listening yet, a handshake broken off) start at 0.1 s and double
    # up to this: a broker turning us away is not asked ten times a second while an attempt runs.
    sock.setsockopt(zmq.RECONNECT_IVL_MAX, RECONNECT_IVL_MAX_MS)
    sock.setsockopt(zmq.CURVE_SECRETKEY, curve_secret)
    sock.setsockopt(zmq.CURVE_PUBLICKEY, crypto.curve_public(curve_secret))
    sock.setsockopt(zmq.CURVE_SERVERKEY, broker_curve)
    return sock


WATCHED = (
    zmq.EVENT_CONNECTED
    | zmq.EVENT_HANDSHAKE_SUCCEEDED
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
)


@dataclass
class HandshakeState:
    """What the socket monitor has said about the connection to the broker so far."""

    connected: bool = False  # TCP reached the broker
    secured: bool = False  # the CurveZMQ handshake completed
    status: int | None = None  # the ZAP status the broker refused the handshake with (RFC 27: 300, 400, 500)
    broken: int = 0  # handshakes broken off without a status (libzmq then connects again by itself)

    @property
    def refused(self) -> bool:
        """The broker's ZAP handler refused the handshake (with any status)."""
        return self.status is not None


def watch_handshake(sock: zmq.Socket[bytes]) -> zmq.Socket[bytes]:
    """A monitor socket reporting `sock`'s TCP connection and CurveZMQ handshake (read it with `read_monitor`).

    Measured with libzmq 4.3.5 (pyzmq 27.3): when the broker's ZAP handler refuses the handshake with 400 or
    500, the monitor reports EVENT_HANDSHAKE_FAILED_AUTH with that status as its value, and libzmq does not
    connect again. A 300 ("temporary") sends the client no status: depending on a race inside the broker's
    libzmq, the handshake stays unanswered until the broker's handshake timeout closes it, or it is broken off
    at once; either way the monitor says EVENT_HANDSHAKE_FAILED_NO_DETAIL, and libzmq connects again by
    itself. A handshake made with the wrong broker key is broken off at once in the same way, again at every
    reconnection. Close it with `stop_watching()`.
    """
    monitor = sock.get_monitor_socket(WATCHED)
    monitor.setsockopt(zmq.LINGER, 0)
    return monitor


def read_monitor(monitor: zmq.Socket[bytes], state: HandshakeState) -> HandshakeState:
    """Update `state` with what the monitor reported (drains it)."""
    while True:
        try:
            message = monitor.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            return state
        # Frame 0: the event (16 bits) then its value (32 bits), little-endian.
        head = message[0] if message else b""
        event = int.from_bytes(head[:2], "little") if len(head) >= 2 else 0
        value = int.from_bytes(head[2:6], "little") if len(head) >= 6 else 0
        if event == zmq.EVENT_CONNECTED:
            state.connected = True
        elif event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
            state.secured = True
        elif event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
            state.status = state.status or value
        elif event in (zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL, zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL):
            state.broken += 1


def stop_watching(sock: zmq.Socket[bytes], monitor: zmq.Socket[bytes]) -> None:
    if not sock.closed:
        sock.disable_monitor()
    monitor.close(linger=0)
