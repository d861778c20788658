"""DEALER sockets to a broker: a client's, made by the product, and one with hand-picked credentials.

`client_dealer` is the socket `zchat.client.transport` makes for a client (its options, CurveZMQ with a
Curve25519 secret key), connected unless no endpoint is given. `hand_picked_dealer` is what the product
never makes, so it cannot come from `zchat.client.transport`: a NULL socket or a CURVE one with any secret,
claiming a routing id if told, without the client's message-size and reconnection options - the peers a
broker must withstand (attack/, tests/integration/test_open_network.py).
"""

from __future__ import annotations

import zmq

from zchat import crypto
from zchat.client.transport import curve_dealer

Context = zmq.Context[zmq.Socket[bytes]]


def client_dealer(
    context: Context,
    endpoint: str | None,
    curve_secret: bytes,
    broker_curve: bytes,
    *,
    queue_limit: int = 10_000,
    receive_timeout_ms: int | None = None,
) -> zmq.Socket[bytes]:
    """A client's DEALER (`zchat.client.transport.curve_dealer`, linger 0) with this Curve25519 secret key
    (`crypto.curve_secret(key)` for a user's own), connected to `endpoint` unless it is None."""
    sock = curve_dealer(context, curve_secret, broker_curve, queue_limit)
    if receive_timeout_ms is not None:
        sock.setsockopt(zmq.RCVTIMEO, receive_timeout_ms)
    if endpoint is not None:
        sock.connect(endpoint)
    return sock


def hand_picked_dealer(
    context: Context,
    endpoint: str | None,
    curve_secret: bytes | None,
    server_key: bytes,
    *,
    routing_id: bytes | None = None,
    queue_limit: int | None = None,
    timeout_ms: int | None = None,
) -> zmq.Socket[bytes]:
    """A DEALER (linger 0) speaking CURVE with `curve_secret` to a server of `server_key`, or NULL when the
    secret is None; claiming `routing_id` if given; `queue_limit` its high-water marks, `timeout_ms` its send
    and receive timeouts (libzmq's defaults when None). Connected to `endpoint` unless it is None."""
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    if queue_limit is not None:
        sock.setsockopt(zmq.SNDHWM, queue_limit)
        sock.setsockopt(zmq.RCVHWM, queue_limit)
    if timeout_ms is not None:
        sock.setsockopt(zmq.RCVTIMEO, timeout_ms)
        sock.setsockopt(zmq.SNDTIMEO, timeout_ms)
    if routing_id is not None:
        sock.setsockopt(zmq.ROUTING_ID, routing_id)
    if curve_secret is not None:
        sock.setsockopt(zmq.CURVE_SECRETKEY, curve_secret)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, crypto.curve_public(curve_secret))
        sock.setsockopt(zmq.CURVE_SERVERKEY, server_key)
    if endpoint is not None:
        sock.connect(endpoint)
    return sock
