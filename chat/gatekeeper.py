"""The broker's gatekeeper thread: answers ZAP requests and watches connections open and close.

It owns two sockets in the broker's ZeroMQ context: the ZAP handler
(`inproc://zeromq.zap.01`, RFC 27) that libzmq asks before completing each
CurveZMQ handshake, and a monitor of the ROUTER that reports each accepted
and each closed TCP connection. `chat.admission` decides; this thread only
moves the questions and answers, and closes a connection the policy refuses.
"""

from __future__ import annotations

import logging
import os
import queue
import socket
import threading
import time

import zmq
from zmq.utils.monitor import parse_monitor_message

from chat.admission import Admission
from chat.ratelimit import flush_peer_logs

log = logging.getLogger(__name__)

ZAP_ENDPOINT = "inproc://zeromq.zap.01"
MONITOR_ENDPOINT = "inproc://zchat.broker.monitor"
ZAP_VERSION = b"1.0"


def peer_address(handle: int) -> str:
    """The remote address of a connected TCP socket, from a duplicate of its descriptor ("" if it is gone)."""
    try:
        with socket.socket(fileno=os.dup(handle)) as sock:
            return str(sock.getpeername()[0])
    except OSError:
        return ""


def close_connection(handle: int) -> None:
    """Shut a TCP connection down under libzmq; it sees the end, closes it and reports it closed."""
    try:
        with socket.socket(fileno=os.dup(handle)) as sock:
            sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


class Gatekeeper:
    def __init__(self, context: zmq.Context[zmq.Socket[bytes]], router: zmq.Socket[bytes], admission: Admission):
        """Start answering. Call before the ROUTER binds: without a ZAP handler libzmq would admit everyone."""
        self.admission = admission
        self.admitted = 0  # handshakes admitted so far (chat.admission.RoutingIds)
        self.spoke: queue.SimpleQueue[int] = queue.SimpleQueue()  # from the broker's loop: descriptors that spoke
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

    def close(self) -> None:
        """Stop the thread and close its sockets."""
        if self.thread.is_alive():
            self.stopper.send(b"stop")
            self.thread.join(timeout=5)
        for sock in (self.zap, self.monitor, self.stop_pipe, self.stopper):
            sock.close(linger=0)

    def _run(self) -> None:
        poller = zmq.Poller()
        for sock in (self.monitor, self.zap, self.stop_pipe):
            poller.register(sock, zmq.POLLIN)
        while True:
            ready = dict(poller.poll(1000))
            flush_peer_logs()
            self._close_silent()
            if self.stop_pipe in ready:
                return
            try:
                # Connections first: an accepted connection is counted before its handshake asks.
                while self.monitor.poll(0):
                    self._on_monitor(self.monitor.recv_multipart())
                if self.zap in ready:
                    request = self.zap.recv_multipart()
                    try:
                        reply = self._answer(request)
                    except Exception:  # a bug: keep guarding the door, and refuse what was asked
                        log.exception("gatekeeper: internal error; handshake refused")
                        reply = [ZAP_VERSION, request[1] if len(request) > 1 else b"", b"500", b"error", b"", b""]
                    self.zap.send_multipart(reply)
            except zmq.ContextTerminated:
                return

    def _close_silent(self) -> None:
        """Close the connections that never sent a frame: a peer must not hold a routing id without using it."""
        while not self.spoke.empty():
            self.admission.speaking(self.spoke.get_nowait())
        for handle in self.admission.silent(time.monotonic()):
            log.info("closing a connection that sent nothing since it was accepted")
            close_connection(handle)
            self.admission.closed(handle)

    def _on_monitor(self, message: list[bytes]) -> None:
        try:
            event = parse_monitor_message(message)
        except Exception:  # not a monitor event: nothing to count
            log.exception("gatekeeper: unreadable monitor event")
            return
        handle = int(event["value"])
        if event["event"] == zmq.EVENT_ACCEPTED:
            if not self.admission.accepted(handle, peer_address(handle), time.monotonic()):
                close_connection(handle)
        elif event["event"] == zmq.EVENT_DISCONNECTED:
            self.admission.closed(handle)

    def _answer(self, request: list[bytes]) -> list[bytes]:
        """RFC 27: version, request id, domain, address, identity, mechanism, credentials -> the reply."""
        if len(request) < 6 or request[0] != ZAP_VERSION:
            return [ZAP_VERSION, request[1] if len(request) > 1 else b"", b"500", b"bad request", b"", b""]
        request_id, address, mechanism, credentials = request[1], request[3], request[5], request[6:]
        verdict = self.admission.authenticate(
            address.decode("utf-8", "replace"), mechanism, credentials, time.monotonic()
        )
        if verdict.allowed:
            self.admitted += 1  # before the handshake completes: libzmq's counter never gets ahead of this
            return [ZAP_VERSION, request_id, b"200", b"OK", verdict.user.encode(), b""]
        return [ZAP_VERSION, request_id, b"400", b"not allowed", b"", b""]
