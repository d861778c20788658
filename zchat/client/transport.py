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


def broker_curve_key(broker: crypto.PublicKeyFile, source: str) -> bytes:
    """The broker's Curve25519 key from its pinned public key file (KeyFileError when the file has none)."""
    if broker.curve is None:
        raise crypto.KeyFileError(
            f"{source}: has no CurveZMQ key (an older broker wrote it); copy the broker's keys/broker.pub again"
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
    sock.setsockopt(zmq.CURVE_SECRETKEY, curve_secret)
    sock.setsockopt(zmq.CURVE_PUBLICKEY, crypto.curve_public(curve_secret))
    sock.setsockopt(zmq.CURVE_SERVERKEY, broker_curve)
    return sock


WATCHED = zmq.EVENT_CONNECTED | zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_HANDSHAKE_FAILED_AUTH


@dataclass
class HandshakeState:
    """What the socket monitor has said about the connection to the broker so far."""

    connected: bool = False  # TCP reached the broker
    secured: bool = False  # the CurveZMQ handshake completed
    refused: bool = False  # the broker refused our key


def watch_handshake(sock: zmq.Socket[bytes]) -> zmq.Socket[bytes]:
    """A monitor socket reporting `sock`'s TCP connection and CurveZMQ handshake (read it with `read_monitor`).

    The broker refuses the handshake of a key it does not hold (EVENT_HANDSHAKE_FAILED_AUTH); a handshake
    with the wrong broker key never completes. Close it with `stop_watching()`.
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
        event = int.from_bytes(message[0][:2], "little") if message and len(message[0]) >= 2 else 0
        state.connected = state.connected or event == zmq.EVENT_CONNECTED
        state.secured = state.secured or event == zmq.EVENT_HANDSHAKE_SUCCEEDED
        state.refused = state.refused or event == zmq.EVENT_HANDSHAKE_FAILED_AUTH


def stop_watching(sock: zmq.Socket[bytes], monitor: zmq.Socket[bytes]) -> None:
    if not sock.closed:
        sock.disable_monitor()
    monitor.close(linger=0)
