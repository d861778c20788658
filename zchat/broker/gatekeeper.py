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

ZAP status codes (RFC 27): 200 admitted, 300 "try later" (a rate, a
lockout), 400 a key that is not registered, 500 an internal error. libzmq
sends 400 and 500 to the client as an ERROR command; on 300 it closes the
connection without one (RFC 26), and a libzmq client reconnects by itself.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import queue
import socket
import struct
import threading
import time

import zmq
from zmq.utils.monitor import parse_monitor_message

from zchat.broker.admission import OK, RETRY, Admission, Peer, peer_log
from zchat.broker.ratelimit import flush_peer_logs

log = logging.getLogger(__name__)

ZAP_ENDPOINT = "inproc://zeromq.zap.01"
MONITOR_ENDPOINT = "inproc://zchat.broker.monitor"
ZAP_VERSION = b"1.0"
ZAP_TEXT = {OK: b"OK", RETRY: b"try later", 400: b"not allowed"}
# The ZAP answer's metadata: a number for each connection admitted, which libzmq attaches to every frame the
# connection brings (`Frame.get`), so that the broker's loop tells connections apart (descriptors are reused).
CONNECTION_PROPERTY = "X-Connection"
TCP_INFO_BYTES = 256
TCPI_BYTES_RECEIVED = 128  # offset of tcpi_bytes_received in Linux's struct tcp_info
FRAME_OVERHEAD = 40  # bytes a CurveZMQ MESSAGE adds to each frame on the wire (35 to 38, measured)
UNREAD_CHECK_INTERVAL = 0.25  # seconds between two looks at what each connection received


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
        self.zap = context.socket(zmq.REP)
        self.zap.setsockopt(zmq.LINGER, 0)
        self.zap.bind(ZAP_ENDPOINT)
        router.monitor(MONITOR_ENDPOINT, zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED)
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
                ready = dict(poller.poll(int(UNREAD_CHECK_INTERVAL * 1000)))
                if self.stop_pipe in ready and self.stop_pipe.recv() == b"stop":
                    return
                # Connections first: an accepted connection is counted before its handshake asks.
                while self.monitor.poll(0):
                    self._on_monitor(self.monitor.recv_multipart())
                self._from_broker()
                if self.zap in ready:
                    self._answer_zap()
                if time.monotonic() - last_sweep >= 1.0:
                    last_sweep = time.monotonic()
                    flush_peer_logs()
                    self._close_silent(last_sweep)
                if time.monotonic() - last_count >= UNREAD_CHECK_INTERVAL:
                    last_count = time.monotonic()
                    self._close_unread()
            except zmq.ContextTerminated:
                return
            except Exception:  # a bug: log it and keep guarding the door (the broker checks that this runs)
                log.exception("gatekeeper: internal error")

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
                    "closing a connection of %s from %s that claimed routing id %s; %s is locked out for %g s",
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
        if event["event"] == zmq.EVENT_ACCEPTED:
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
