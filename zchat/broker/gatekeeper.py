"""The broker's gatekeeper thread: answers ZAP requests and watches connections open and close.

It owns two sockets in the broker's ZeroMQ context: the ZAP handler
(`inproc://zeromq.zap.01`, RFC 27) that libzmq asks before completing each
CurveZMQ handshake, and a monitor of the ROUTER that reports each accepted
and each closed TCP connection. `zchat.broker.admission` decides; this thread only
moves the questions and answers, and closes the connections the policy
refuses: over the per-source cap or rate, silent for too long, claiming a
routing id or over the user's connection cap (the broker's loop says which,
and a claim locks the user out), or holding more bytes that form no message
than the user's budget allows (what the kernel received, Linux's TCP_INFO,
against what the loop read: libzmq would keep a never-ending multipart
message). It tells the loop (`ended`) which connections have closed.

An address over its connection rate costs more than its connections are
worth: libzmq accepts each and often answers its HELLO before this thread
hears of it. So on Linux the addresses on the policy's `Blocklist` are
refused in the kernel: a classic BPF filter on the listening socket (which
the monitor names when the ROUTER binds) drops their SYNs, and the filter is
replaced as addresses come off the list (an accepted connection keeps the
filter of its listener's at the time, which never names its own peer). Where
the kernel refuses the filter, connections over the rate are closed once
accepted, as always.

ZAP status codes (RFC 27): 200 admitted, 300 "try later" (a rate, a
lockout), 400 a key that is not registered, 500 an internal error. libzmq
sends 400 and 500 to the client as an ERROR command; on 300 it closes the
connection without one (RFC 26), and a libzmq client reconnects by itself.
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import itertools
import logging
import math
import os
import queue
import socket
import struct
import sys
import threading
import time
from collections.abc import Iterable

import zmq
from zmq.utils.monitor import parse_monitor_message

from zchat.broker.admission import DENIED, OK, RETRY, Admission, Peer, peer_log
from zchat.broker.ratelimit import flush_peer_logs

log = logging.getLogger(__name__)

ZAP_ENDPOINT = "inproc://zeromq.zap.01"
MONITOR_ENDPOINT = "inproc://zchat.broker.monitor"
ZAP_VERSION = b"1.0"
ZAP_TEXT = {OK: b"OK", RETRY: b"try later", DENIED: b"not allowed"}
# The ZAP answer's metadata: a number for each connection admitted, which libzmq attaches to every frame the
# connection brings (`Frame.get`), so that the broker's loop tells connections apart (descriptors are reused).
CONNECTION_PROPERTY = "X-Connection"
TCP_INFO_BYTES = 256
TCPI_BYTES_RECEIVED = 128  # offset of tcpi_bytes_received in Linux's struct tcp_info
FRAME_OVERHEAD = 40  # bytes a CurveZMQ MESSAGE adds to each frame on the wire (35 to 38, measured)
UNREAD_CHECK_INTERVAL = 0.25  # seconds between two looks at what each connection received
# Classic BPF (Linux: linux/filter.h, asm-generic/socket.h) for the filter on the listening socket.
SO_ATTACH_FILTER = getattr(socket, "SO_ATTACH_FILTER", 26)
SO_DETACH_FILTER = getattr(socket, "SO_DETACH_FILTER", 27)
SKF_NET_OFF = -0x100000  # a load at this offset plus n reads byte n of the packet's IP header
LD_W_ABS, LD_B_ABS, RSH_K, JEQ_K, RET_K = 0x20, 0x30, 0x74, 0x15, 0x06  # BPF_LD|BPF_W|BPF_ABS, ... BPF_RET|BPF_K
DROP, PASS = 0, 0xFFFFFFFF  # what a filter returns: bytes of the packet to keep


def peer_of(handle: int) -> Peer | None:
    """The remote address and port of a connected TCP socket, read through a duplicate of its descriptor."""
    try:
        with socket.socket(fileno=os.dup(handle)) as sock:
            name = sock.getpeername()
    except OSError:
        return None
    return (str(name[0]), int(name[1])) if isinstance(name, tuple) else None


def bytes_received(handle: int, peer: Peer) -> int | None:
    """How many bytes the kernel has received on a TCP connection (Linux TCP_INFO), if it still belongs to `peer`."""
    try:
        with socket.socket(fileno=os.dup(handle)) as sock:
            if sock.getpeername() != peer:
                return None
            info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, TCP_INFO_BYTES)
    except (OSError, AttributeError):  # gone, or not Linux
        return None
    if len(info) < TCPI_BYTES_RECEIVED + 8:
        return None
    return int(struct.unpack_from("=Q", info, TCPI_BYTES_RECEIVED)[0])


def close_connection(handle: int, peer: Peer) -> None:
    """Shut a TCP connection down under libzmq (it sees the end, closes it and reports it closed).

    Only if the descriptor still belongs to `peer`: libzmq may have closed it and reused the number.
    """
    try:
        with socket.socket(fileno=os.dup(handle)) as sock:
            if sock.getpeername() == peer:
                sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def _instruction(code: int, jump_true: int, jump_false: int, k: int) -> bytes:
    return struct.pack("=HBBI", code, jump_true, jump_false, k & 0xFFFFFFFF)  # struct sock_filter


def refusal_filter(sources: Iterable[str]) -> bytes:
    """A classic BPF program (struct sock_filter[]) that drops every packet from these addresses and passes all
    others. IPv4 and IPv6 (an IPv4-mapped address is its IPv4 address); one that does not parse is left out.
    Each address is one test and a drop; at most 126 IPv4 addresses (the jump over them is 8 bits)."""
    ipv4: list[int] = []
    ipv6: list[bytes] = []
    for source in sources:
        try:
            address = ipaddress.ip_address(source)
        except ValueError:
            continue
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        if address.version == 4:
            ipv4.append(int(address))
        else:
            ipv6.append(address.packed)
    drop, passing = _instruction(RET_K, 0, 0, DROP), _instruction(RET_K, 0, 0, PASS)
    v4 = [_instruction(LD_W_ABS, 0, 0, SKF_NET_OFF + 12)]  # the IPv4 source address
    for value in ipv4:
        v4 += [_instruction(JEQ_K, 0, 1, value), drop]
    v4.append(passing)
    if len(v4) > 255:
        raise ValueError(f"{len(ipv4)} IPv4 addresses are more than one filter can test")
    v6: list[bytes] = []
    for packed in ipv6:  # the IPv6 source address, 4 words from byte 8: on the first that differs, the next address
        for word in range(4):
            value = int.from_bytes(packed[4 * word : 4 * word + 4], "big")
            v6.append(_instruction(LD_W_ABS, 0, 0, SKF_NET_OFF + 8 + 4 * word))
            v6.append(_instruction(JEQ_K, 0, 7 - 2 * word, value))
        v6.append(drop)
    v6.append(passing)
    version = [  # the IP version: the high 4 bits of the header's first byte
        _instruction(LD_B_ABS, 0, 0, SKF_NET_OFF),
        _instruction(RSH_K, 0, 0, 4),
        _instruction(JEQ_K, 0, len(v4), 4),
    ]
    return b"".join(version + v4 + v6)


def set_refusal_filter(handle: int, name: object, program: bytes | None) -> None:
    """Attach a classic BPF program to the listening socket with this descriptor (None: detach the one attached),
    through a duplicate of the descriptor, if it is still that listener bound to `name`. OSError if it is not,
    or if the kernel refuses."""
    with socket.socket(fileno=os.dup(handle)) as sock:
        if sock.getsockname() != name or not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            raise OSError(f"descriptor {handle} is no longer the listening socket bound to {name}")
        if program is None:
            with contextlib.suppress(FileNotFoundError):  # none attached
                sock.setsockopt(socket.SOL_SOCKET, SO_DETACH_FILTER, 0)
            return
        code = ctypes.create_string_buffer(program, len(program))
        fprog = struct.pack("@HP", len(program) // 8, ctypes.addressof(code))  # struct sock_fprog
        sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


def listener_name(handle: int) -> object | None:
    """The address a listening TCP socket is bound to, or None if this descriptor is not one."""
    try:
        with socket.socket(fileno=os.dup(handle)) as sock:
            if sock.type != socket.SOCK_STREAM or sock.family not in (socket.AF_INET, socket.AF_INET6):
                return None
            if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
                return None
            name: object = sock.getsockname()
            return name
    except OSError:
        return None


class Gatekeeper:
    def __init__(
        self,
        context: zmq.Context[zmq.Socket[bytes]],
        router: zmq.Socket[bytes],
        admission: Admission,
    ):
        """Start answering. Call before the ROUTER binds: without a ZAP handler libzmq would admit everyone."""
        self.admission = admission
        # Bytes of the messages the broker's loop has read, per connection (descriptor), with their framing:
        # the loop adds to it (`count()`), this thread compares it with what the kernel received.
        self.read: dict[int, int] = {}
        # From the broker's loop through `report()`: (what, descriptor, user, detail).
        self.reports: queue.SimpleQueue[tuple[str, int, str, str]] = queue.SimpleQueue()
        # To the broker's loop: descriptors of connections that have closed, in the order libzmq reported them
        # (before the descriptor can be reused, and before this thread answers any later handshake).
        self.ended: queue.SimpleQueue[int] = queue.SimpleQueue()
        self.serials = itertools.count(1)  # for CONNECTION_PROPERTY
        # Listening TCP sockets (descriptor -> bound address), whose filter drops the blocklist's connection attempts;
        # the blocklist's version last given to them (-1: none yet).
        self.listeners: dict[int, object] = {}
        self.filtered_version = -1
        self.filtering = sys.platform.startswith("linux")
        self.zap = context.socket(zmq.REP)
        self.zap.setsockopt(zmq.LINGER, 0)
        self.zap.bind(ZAP_ENDPOINT)
        router.monitor(MONITOR_ENDPOINT, zmq.EVENT_LISTENING | zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED)
        self.monitor = context.socket(zmq.PAIR)
        self.monitor.setsockopt(zmq.LINGER, 0)
        self.monitor.connect(MONITOR_ENDPOINT)
        self.stop_pipe = context.socket(zmq.PAIR)
        self.stop_pipe.bind("inproc://zchat.gatekeeper.stop")
        self.stopper = context.socket(zmq.PAIR)
        self.stopper.connect("inproc://zchat.gatekeeper.stop")
        self.thread = threading.Thread(target=self._run, name="gatekeeper", daemon=True)
        self.thread.start()

    def count(self, handle: int, frames: list[bytes]) -> None:
        """From the broker's loop: it read a message of these frames from this connection."""
        self.read[handle] = self.read.get(handle, 0) + sum(map(len, frames)) + FRAME_OVERHEAD * len(frames)

    def report(self, what: str, handle: int, user: str = "", detail: str = "") -> None:
        """From the broker's loop: a connection spoke for `user` ("spoke"), is to be closed ("close"), or claimed
        a routing id (`detail`): closed, and its user locked out ("claim")."""
        self.reports.put((what, handle, user, detail))
        if what != "spoke":
            with contextlib.suppress(zmq.Again):  # wakes queued already: it is on its way
                self.stopper.send(b"wake", zmq.NOBLOCK)

    def close(self) -> None:
        """Stop the thread and close its sockets."""
        if self.thread.is_alive():
            with contextlib.suppress(zmq.Again):
                self.stopper.send(b"stop", zmq.NOBLOCK)
            self.thread.join(timeout=5)
        for sock in (self.zap, self.monitor, self.stop_pipe, self.stopper):
            sock.close(linger=0)

    def _run(self) -> None:
        poller = zmq.Poller()
        for sock in (self.monitor, self.zap, self.stop_pipe):
            poller.register(sock, zmq.POLLIN)
        last_sweep = last_count = time.monotonic()
        while True:
            try:
                ready = dict(poller.poll(self._timeout_ms()))
                if self.stop_pipe in ready and self.stop_pipe.recv() == b"stop":
                    return
                # Connections first: an accepted connection is counted before its handshake asks.
                while self.monitor.poll(0):
                    self._on_monitor(self.monitor.recv_multipart())
                self._from_broker()
                self._update_filter(time.monotonic())
                if self.zap in ready:
                    self._answer_zap()
                if time.monotonic() - last_sweep >= 1.0:
                    last_sweep = time.monotonic()
                    flush_peer_logs(last_sweep)
                    self._close_silent(last_sweep)
                if time.monotonic() - last_count >= UNREAD_CHECK_INTERVAL:
                    last_count = time.monotonic()
                    self._close_unread()
            except zmq.ContextTerminated:
                return
            except Exception:  # a bug: log it and keep guarding the door (the broker checks that this runs)
                log.exception("gatekeeper: internal error")

    def _timeout_ms(self) -> int:
        """Until the next look at the connections, or the next address to come off the blocklist."""
        timeout = UNREAD_CHECK_INTERVAL
        expiry = self.admission.blocklist.next_expiry()
        if expiry is not None and self.filtering:
            timeout = min(timeout, expiry - time.monotonic())
        return max(1, math.ceil(timeout * 1000))

    def _update_filter(self, now: float) -> None:
        """Give the listening sockets a filter that drops the connection attempts of the blocklist's addresses."""
        blocklist = self.admission.blocklist
        blocklist.expire(now)
        if not self.filtering or blocklist.version == self.filtered_version or not self.listeners:
            return
        self.filtered_version = blocklist.version
        sources = blocklist.sources()
        program = refusal_filter(sources) if sources else None
        try:
            for handle, name in self.listeners.items():
                set_refusal_filter(handle, name, program)
        except (OSError, ValueError) as error:
            self.filtering = False
            log.warning(
                "connections over the rate cannot be refused before they are accepted (%s): they are closed once "
                "accepted",
                error,
            )

    def _answer_zap(self) -> None:
        request = self.zap.recv_multipart()
        try:
            reply = self._answer(request)
        except Exception:  # a bug: refuse what was asked, and say so
            log.exception("gatekeeper: internal error; handshake refused")
            reply = [ZAP_VERSION, request[1] if len(request) > 1 else b"", b"500", b"error", b"", b""]
        self.zap.send_multipart(reply)

    def _from_broker(self) -> None:
        """What the broker's loop reported: connections that spoke, connections to close."""
        while not self.reports.empty():
            what, handle, user, detail = self.reports.get_nowait()
            if what == "spoke":
                self.admission.speaking(handle, user)
                continue
            peer = self.admission.peer(handle)
            self._close(handle)
            if what == "claim" and self.admission.lock_out(user, time.monotonic()):
                log.warning(
                    "closing a connection of %s from %s that claimed a routing id (connection %s);"
                    " %s is locked out for %g s",
                    user,
                    peer[0] if peer else "?",
                    detail,
                    user,
                    self.admission.routing_id_lockout,
                )

    def _close_silent(self, now: float) -> None:
        """Close the connections that never sent a frame: a peer must not hold a routing id without using it."""
        for handle in self.admission.silent(now):
            peer_log.info("silent", "closing a connection that has sent nothing since it was accepted")
            self._close(handle)

    def _close_unread(self) -> None:
        """Close the connections whose bytes received form no message read: libzmq holds a message until its
        last frame, so a never-ending one would grow the broker's memory without bound."""
        for handle, peer, unread in self.admission.unread(self.read, bytes_received):
            user = self.admission.user_of(handle)
            peer_log.warning(
                user or peer[0],
                "closing a connection %sfrom %s: %d bytes that form no message",
                f"of {user} " if user else "",
                peer[0],
                unread,
            )
            self._close(handle)

    def _close(self, handle: int) -> None:
        peer = self.admission.peer(handle)
        if peer is not None:
            close_connection(handle, peer)
        self.admission.closed(handle)

    def _on_monitor(self, message: list[bytes]) -> None:
        try:
            event = parse_monitor_message(message)
        except Exception:  # not a monitor event: nothing to count
            log.exception("gatekeeper: unreadable monitor event")
            return
        handle = int(event["value"])
        if event["event"] == zmq.EVENT_LISTENING:
            name = listener_name(handle)
            if name is not None:
                self.listeners[handle] = name
                self.filtered_version = -1  # give it the filter of the moment
                if not self.filtering:
                    log.info("connections over the rate are closed once accepted (no filter on %s)", sys.platform)
        elif event["event"] == zmq.EVENT_ACCEPTED:
            self.read[handle] = 0
            peer = peer_of(handle)
            if peer is not None and not self.admission.accepted(handle, peer, time.monotonic()):
                close_connection(handle, peer)
        elif event["event"] == zmq.EVENT_DISCONNECTED:
            self.admission.closed(handle)
            self.read.pop(handle, None)
            self.ended.put(handle)

    def _answer(self, request: list[bytes]) -> list[bytes]:
        """RFC 27: version, request id, domain, address, identity, mechanism, credentials -> the reply."""
        if len(request) < 6 or request[0] != ZAP_VERSION:
            return [ZAP_VERSION, request[1] if len(request) > 1 else b"", b"500", b"bad request", b"", b""]
        request_id, address, mechanism, credentials = request[1], request[3], request[5], request[6:]
        verdict = self.admission.authenticate(
            address.decode("utf-8", "replace"), mechanism, credentials, time.monotonic()
        )
        if not verdict.allowed:
            return [ZAP_VERSION, request_id, str(verdict.status).encode(), ZAP_TEXT[verdict.status], b"", b""]
        serial = str(next(self.serials)).encode()
        name = CONNECTION_PROPERTY.encode()
        metadata = bytes([len(name)]) + name + len(serial).to_bytes(4, "big") + serial
        return [ZAP_VERSION, request_id, b"200", ZAP_TEXT[OK], verdict.user.encode(), metadata]
