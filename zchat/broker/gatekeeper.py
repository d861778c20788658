"""The broker's gatekeeper thread: answers ZAP requests and watches connections open and close.

It owns two sockets in the broker's ZeroMQ context: the ZAP handler
(`inproc://zeromq.zap.01`, RFC 27) that libzmq asks before completing each
CurveZMQ handshake, and a monitor of the ROUTER that reports each accepted
and each closed TCP connection. `zchat.broker.admission` decides; this thread only
moves the questions and answers, and closes the connections the policy
refuses: over the per-source cap, silent for too long, claiming a routing id
(the broker's loop says which), or holding more bytes that form no message
than the broker allows (what the kernel received, Linux's TCP_INFO, against
what the loop read: libzmq would keep a never-ending multipart message).
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import socket
import struct
import threading
import time

import zmq
from zmq.utils.monitor import parse_monitor_message

from zchat.broker.admission import Admission, Peer, peer_log
from zchat.broker.ratelimit import flush_peer_logs

log = logging.getLogger(__name__)

ZAP_ENDPOINT = "inproc://zeromq.zap.01"
MONITOR_ENDPOINT = "inproc://zchat.broker.monitor"
ZAP_VERSION = b"1.0"
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
        unread_limit: int,
    ):
        """Start answering. Call before the ROUTER binds: without a ZAP handler libzmq would admit everyone.

        A connection on which more than `unread_limit` bytes arrived that form no message the broker has read
        (a multipart message that never ends, which libzmq would keep in memory) is closed.
        """
        self.admission = admission
        self.unread_limit = unread_limit
        # Bytes of the messages the broker's loop has read, per connection (descriptor), with their framing:
        # the loop adds to it (`count()`), this thread compares it with what the kernel received.
        self.read: dict[int, int] = {}
        # From the broker's loop through `report()`: ("spoke", descriptor) and ("close", descriptor).
        self.reports: queue.SimpleQueue[tuple[str, int]] = queue.SimpleQueue()
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

    def report(self, what: str, handle: int) -> None:
        """From the broker's loop: a connection spoke ("spoke"), or is to be closed ("close")."""
        self.reports.put((what, handle))
        if what == "close":
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
            what, handle = self.reports.get_nowait()
            if what == "spoke":
                self.admission.speaking(handle)
            else:
                self._close(handle)

    def _close_silent(self, now: float) -> None:
        """Close the connections that never sent a frame: a peer must not hold a routing id without using it."""
        for handle in self.admission.silent(now):
            peer_log.info("silent", "closing a connection that has sent nothing since it was accepted")
            self._close(handle)

    def _close_unread(self) -> None:
        """Close the connections whose bytes received form no message read: libzmq holds a message until its
        last frame, so a never-ending one would grow the broker's memory without bound."""
        for handle, peer, unread in self.admission.unread(self.read, bytes_received, self.unread_limit):
            peer_log.warning(peer[0], "closing a connection from %s: %d bytes that form no message", peer[0], unread)
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

    def _answer(self, request: list[bytes]) -> list[bytes]:
        """RFC 27: version, request id, domain, address, identity, mechanism, credentials -> the reply."""
        if len(request) < 6 or request[0] != ZAP_VERSION:
            return [ZAP_VERSION, request[1] if len(request) > 1 else b"", b"500", b"bad request", b"", b""]
        request_id, address, mechanism, credentials = request[1], request[3], request[5], request[6:]
        verdict = self.admission.authenticate(
            address.decode("utf-8", "replace"), mechanism, credentials, time.monotonic()
        )
        if verdict.allowed:
            return [ZAP_VERSION, request_id, b"200", b"OK", verdict.user.encode(), b""]
        return [ZAP_VERSION, request_id, b"400", b"not allowed", b"", b""]
