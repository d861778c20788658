"""Reference relays with no target: what the same fan-out costs without RSA.

    python -m bench.relay [--curve DIR]

A ZeroMQ ROUTER on a free loopback port that forwards every message to every
other registered client, nothing else: no JSON, no signatures, no per-message
crypto in Python. A DEALER client registers by sending b"hi" and gets b"ok".
With `--curve DIR` the socket is a CurveZMQ server (DIR/server/relay.key_secret)
and a ZAP handler (`zmq.auth.thread.ThreadAuthenticator`) admits only client
keys found in DIR/clients/*.key: the allow-list, like the broker's
keys/clients/. libzmq then encrypts and authenticates every frame
(Curve25519, XSalsa20-Poly1305) in its I/O thread.

Like the broker it logs "listening on tcp://127.0.0.1:PORT", never blocks on a
send (a peer whose queue is full misses the message, counted in the last log
line) and stops on SIGTERM.
"""

from __future__ import annotations

import argparse
import errno
import signal
import sys
from pathlib import Path
from types import FrameType

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

REGISTER = b"hi"
REGISTERED = b"ok"
QUEUE_LIMIT = 1_000_000
MAX_MESSAGES_PER_TURN = 1000


class Relay:
    """The forwarding: registered peers in order of registration, and what was forwarded or dropped."""

    def __init__(self, sock: zmq.Socket[bytes]) -> None:
        self.sock = sock
        self.peers: list[bytes] = []
        self.forwarded = 0
        self.dropped = 0
        self.stopping = False

    def on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self.stopping = True

    def serve(self) -> None:
        """Read and forward until SIGTERM or SIGINT, at most MAX_MESSAGES_PER_TURN messages per poll."""
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        while not self.stopping:
            if not poller.poll(100):
                continue
            for _ in range(MAX_MESSAGES_PER_TURN):
                try:
                    message = self.sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                if len(message) == 2:
                    self.handle(*message)

    def handle(self, identity: bytes, payload: bytes) -> None:
        """Register a peer that says hi; send anything else to every other registered peer, never blocking."""
        if payload == REGISTER:
            if identity not in self.peers:
                self.peers.append(identity)
            self.sock.send_multipart([identity, REGISTERED], zmq.NOBLOCK)
            return
        for peer in self.peers:
            if peer == identity:
                continue
            try:
                self.sock.send_multipart([peer, payload], zmq.NOBLOCK)
                self.forwarded += 1
            except zmq.Again:
                self.dropped += 1
            except zmq.ZMQError as exc:
                if exc.errno != errno.EHOSTUNREACH:
                    raise
                self.dropped += 1


def router(context: zmq.Context[zmq.Socket[bytes]]) -> zmq.Socket[bytes]:
    """The relay's ROUTER: never blocking nor dropping silently, queues far above the load."""
    sock = context.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    sock.setsockopt(zmq.SNDHWM, QUEUE_LIMIT)
    sock.setsockopt(zmq.RCVHWM, QUEUE_LIMIT)
    return sock


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.relay", description=__doc__.split("\n\n")[0])
    parser.add_argument("--curve", type=Path, help="CurveZMQ: DIR/server/relay.key_secret and DIR/clients/*.key")
    args = parser.parse_args(argv)
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    auth: ThreadAuthenticator | None = None
    relay = Relay(router(context))
    signal.signal(signal.SIGTERM, relay.on_signal)
    signal.signal(signal.SIGINT, relay.on_signal)
    if args.curve is not None:
        auth = ThreadAuthenticator(context)
        auth.start()
        auth.configure_curve(domain="*", location=str(args.curve / "clients"))
        public, secret = zmq.auth.load_certificate(args.curve / "server" / "relay.key_secret")
        if secret is None:
            parser.error("the relay's certificate has no secret key")
        relay.sock.curve_secretkey = secret
        relay.sock.curve_publickey = public
        relay.sock.curve_server = True
    relay.sock.bind("tcp://127.0.0.1:*")
    endpoint = relay.sock.getsockopt_string(zmq.LAST_ENDPOINT)
    print(f"relay: listening on {endpoint} ({'CurveZMQ' if auth else 'plain'})", flush=True)
    relay.serve()
    print(f"relay: stopped; {len(relay.peers)} peers, {relay.forwarded} forwarded, {relay.dropped} dropped", flush=True)
    if auth is not None:
        auth.stop()
    relay.sock.close(linger=0)
    context.term()
    return 0


if __name__ == "__main__":
    sys.exit(main())
