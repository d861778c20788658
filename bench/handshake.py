"""What a CurveZMQ handshake costs the broker, to set against its RSA work per login.

zchat/2 puts a CurveZMQ handshake in front of every login: before a HELLO
reaches the broker, the client's DEALER and the broker's ROUTER run the
CurveZMQ handshake (Curve25519 in libzmq's I/O threads) and the broker's ZAP
handler (`zchat.broker.gatekeeper`, Python) looks the client's key up in the registry.

`measure()` makes `count` such connections to a running broker, one after the
other: a CURVE DEALER made as `zchat.client.transport.curve_dealer` makes it
(`harness.dealer.client_dealer`), with a
socket monitor attached before it connects; the time from `connect()` to
ZMQ_EVENT_HANDSHAKE_SUCCEEDED is one handshake's wall time on loopback; then
the socket is closed (no HELLO is sent). The broker's CPU time over the whole
loop, less what it uses idle over the same time, divided by `count`, is its
CPU per handshake: TCP accept, the CurveZMQ handshake, the ZAP request, the
monitor events of its gatekeeper and the disconnection.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import zmq

from bench.workspace import BenchError
from harness.dealer import client_dealer
from harness.process import ServerProcess
from zchat import protocol as p
from zchat.client.transport import HandshakeState, read_monitor, stop_watching, watch_handshake

HANDSHAKE_TIMEOUT_S = 5.0  # the broker closes a connection whose handshake took longer
IDLE_S = 1.0  # the broker's idle CPU is measured for this long first


@dataclass
class HandshakeCost:
    count: int
    wall_ms_p50: float
    wall_ms_mean: float
    broker_cpu_ms: float  # the broker's CPU per handshake (idle use subtracted)
    broker_idle_cores_busy: float
    client_cpu_ms: float  # this process (the client side, its libzmq I/O thread included) per handshake


def _cpu_self() -> float:
    return time.process_time()


def measure(
    endpoint: str, secrets: list[bytes], broker_curve: bytes, server: ServerProcess, count: int
) -> HandshakeCost:
    """`count` CurveZMQ handshakes with the broker, one at a time, keys taken round robin from `secrets`."""
    if not secrets:
        raise BenchError("no Curve keys to handshake with")
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        idle0, at0 = server.cpu_seconds(), time.monotonic()
        time.sleep(IDLE_S)
        idle_rate = (server.cpu_seconds() - idle0) / (time.monotonic() - at0)
        walls: list[float] = []
        cpu0, own0, t0 = server.cpu_seconds(), _cpu_self(), time.monotonic()
        for i in range(count):
            sock = client_dealer(context, None, secrets[i % len(secrets)], broker_curve)  # watched before it connects
            monitor = watch_handshake(sock)
            state = HandshakeState()
            started = time.perf_counter()
            sock.connect(endpoint)
            deadline = started + HANDSHAKE_TIMEOUT_S
            while not (state.secured or state.refused):
                left = deadline - time.perf_counter()
                if left <= 0:
                    break
                if monitor.poll(max(1, int(left * 1000))):
                    read_monitor(monitor, state)
            wall = time.perf_counter() - started
            stop_watching(sock, monitor)
            sock.close(linger=0)
            if state.refused:
                raise BenchError(f"{server.label}: the broker refused the CurveZMQ handshake of a registered key")
            if not state.secured:
                raise BenchError(f"{server.label}: a CurveZMQ handshake did not complete in {HANDSHAKE_TIMEOUT_S:g}s")
            walls.append(wall)
            server.check_alive()
        time.sleep(0.2)  # the broker sees the last disconnection
        seconds = time.monotonic() - t0
        broker_cpu = server.cpu_seconds() - cpu0 - idle_rate * seconds
        own_cpu = _cpu_self() - own0
    finally:
        context.term()
    walls.sort()
    return HandshakeCost(
        count=count,
        wall_ms_p50=walls[len(walls) // 2] * 1000,
        wall_ms_mean=sum(walls) / len(walls) * 1000,
        broker_cpu_ms=max(0.0, broker_cpu) / count * 1000,
        broker_idle_cores_busy=idle_rate,
        client_cpu_ms=own_cpu / count * 1000,
    )


@dataclass
class FrameCost:
    """Per message: the CPU of this process (both ends and the libzmq I/O thread), plain TCP and CurveZMQ."""

    body_bytes: int
    messages: int
    plain_us: float
    curve_us: float
    extra_us: float  # curve_us - plain_us: encrypting at one end and decrypting at the other


def _frames_cpu(body_bytes: int, messages: int, curve: bool) -> float:
    """CPU seconds for `messages` EVENT-shaped messages (marker, command, body) over loopback TCP, PUSH to PULL."""
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        pull, push = context.socket(zmq.PULL), context.socket(zmq.PUSH)
        for sock in (pull, push):
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.SNDHWM, 0)
            sock.setsockopt(zmq.RCVHWM, 0)
        if curve:  # no ZAP handler: libzmq admits every client key
            server_public, server_secret = zmq.curve_keypair()
            client_public, client_secret = zmq.curve_keypair()
            pull.curve_server = True
            pull.curve_secretkey = server_secret
            push.curve_secretkey, push.curve_publickey = client_secret, client_public
            push.curve_serverkey = server_public
        port = pull.bind_to_random_port("tcp://127.0.0.1")
        push.connect(f"tcp://127.0.0.1:{port}")
        frames = p.encode_frames(p.EVENT, b"x" * body_bytes)
        push.send_multipart(frames)
        pull.recv_multipart()  # connected and through the handshake
        started = time.process_time()
        for _ in range(messages):
            push.send_multipart(frames, copy=False)
        for _ in range(messages):
            pull.recv_multipart(copy=False)
        return time.process_time() - started
    finally:
        context.destroy(linger=0)


def frame_cost(body_bytes: int, messages: int) -> FrameCost:
    """What CurveZMQ adds per EVENT of a given body size: timed plain and over CurveZMQ, best of two each.

    Each of the three frames is a CurveZMQ MESSAGE of its own (a Curve25519-XSalsa20-Poly1305 box).
    """
    plain = min(_frames_cpu(body_bytes, messages, False) for _ in range(2)) / messages * 1e6
    curve = min(_frames_cpu(body_bytes, messages, True) for _ in range(2)) / messages * 1e6
    return FrameCost(body_bytes, messages, plain, curve, curve - plain)
