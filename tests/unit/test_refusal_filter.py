"""The socket filter that refuses the blocklist's addresses in the kernel (zchat/broker/gatekeeper.py): the bytes
of its classic BPF program, and what it does on a real listening socket (Linux)."""

from __future__ import annotations

import contextlib
import socket
import struct
import sys
import time
from collections.abc import Iterator

import pytest

from zchat.broker.gatekeeper import listener_name, refusal_filter, set_refusal_filter


def op(code: int, jt: int, jf: int, k: int) -> bytes:
    return struct.pack("=HBBI", code, jt, jf, k)  # struct sock_filter


VERSION = [op(0x30, 0, 0, 0xFFF00000), op(0x74, 0, 0, 4)]  # ldb [SKF_NET_OFF]; rsh #4
LOAD_V4 = op(0x20, 0, 0, 0xFFF0000C)  # ld [SKF_NET_OFF + 12]: the IPv4 source address
DROP, PASS = op(0x06, 0, 0, 0), op(0x06, 0, 0, 0xFFFFFFFF)


def test_the_program_drops_each_ipv4_address_and_passes_the_rest():
    expected = [
        *VERSION,
        op(0x15, 0, 6, 4),  # jeq #4 (else over the 6 IPv4 instructions)
        LOAD_V4,
        op(0x15, 0, 1, 0x7F000009),  # jeq #127.0.0.9
        DROP,
        op(0x15, 0, 1, 0xC0000201),  # jeq #192.0.2.1 (an IPv4-mapped IPv6 address is its IPv4 address)
        DROP,
        PASS,
        PASS,  # IPv6: no address
    ]
    assert refusal_filter(["127.0.0.9", "::ffff:192.0.2.1", "not an address"]) == b"".join(expected)
    assert refusal_filter([]) == b"".join([*VERSION, op(0x15, 0, 2, 4), LOAD_V4, PASS, PASS])


def test_the_program_compares_an_ipv6_address_word_by_word():
    words = [0x20010DB8, 0, 0, 1]
    block = []
    for n, word in enumerate(words):
        block += [op(0x20, 0, 0, 0xFFF00008 + 4 * n), op(0x15, 0, 7 - 2 * n, word)]  # differs: the next address
    expected = [*VERSION, op(0x15, 0, 2, 4), LOAD_V4, PASS, *block, DROP, PASS]
    assert refusal_filter(["2001:db8::1"]) == b"".join(expected)


def test_too_many_ipv4_addresses_for_one_program_are_refused():
    refusal_filter([f"10.0.0.{n}" for n in range(126)])
    with pytest.raises(ValueError, match="more than one filter can test"):
        refusal_filter([f"10.0.0.{n}" for n in range(127)])


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    with socket.create_server(("127.0.0.1", 0), backlog=16) as server:
        yield server


def attempt(port: int, source: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((source, 0))
    sock.setblocking(False)
    sock.connect_ex(("127.0.0.1", port))
    return sock


def state(sock: socket.socket) -> int:
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0]  # tcpi_state: 1 established, 2 SYN sent


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SO_ATTACH_FILTER is Linux's")
def test_a_blocked_address_cannot_connect_and_its_open_connection_is_untouched(listener):
    port = listener.getsockname()[1]
    name = listener_name(listener.fileno())
    assert name == listener.getsockname()
    before = socket.create_connection(("127.0.0.1", port), timeout=5, source_address=("127.0.0.9", 0))
    earlier, _ = listener.accept()
    with contextlib.ExitStack() as stack:
        stack.enter_context(before)
        stack.enter_context(earlier)
        set_refusal_filter(listener.fileno(), name, refusal_filter(["127.0.0.9"]))
        blocked = stack.enter_context(attempt(port, "127.0.0.9"))
        other = stack.enter_context(attempt(port, "127.0.0.1"))
        listener.settimeout(5)
        accepted, peer = listener.accept()
        stack.enter_context(accepted)
        assert peer[0] == "127.0.0.1", "the SYN of 127.0.0.9, sent first, was dropped"
        assert state(other) == 1
        assert state(blocked) == 2, "127.0.0.9 still waits for an answer to its SYN"
        # The connection accepted before the block still carries data both ways.
        before.sendall(b"ping")
        earlier.settimeout(5)
        assert earlier.recv(4) == b"ping"
        earlier.sendall(b"pong")
        assert before.recv(4) == b"pong"
        # Unblocked (no filter): the address connects again.
        set_refusal_filter(listener.fileno(), name, None)
        set_refusal_filter(listener.fileno(), name, None)  # none attached: harmless
        again = stack.enter_context(attempt(port, "127.0.0.9"))
        accepted, peer = listener.accept()
        stack.enter_context(accepted)
        assert peer[0] == "127.0.0.9"
        deadline = time.monotonic() + 5
        while state(again) != 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert state(again) == 1


def test_a_descriptor_that_is_not_that_listener_is_left_alone(listener):
    with socket.create_connection(listener.getsockname(), timeout=5) as client:
        assert listener_name(client.fileno()) is None, "not listening"
        with pytest.raises(OSError, match="no longer the listening socket"):
            set_refusal_filter(client.fileno(), listener.getsockname(), refusal_filter(["127.0.0.9"]))
    with pytest.raises(OSError, match="no longer the listening socket"):
        set_refusal_filter(listener.fileno(), ("127.0.0.1", 1), None)
    assert listener_name(10_000) is None
    with pytest.raises(OSError, match="Bad file descriptor"):
        set_refusal_filter(10_000, ("127.0.0.1", 1), None)
