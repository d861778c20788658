"""The broker's I/O loop and command line: a ZeroMQ ROUTER that moves frames.

All chat rules live in `zchat.broker.core`. This file opens the database
(`zchat.broker.store`), binds the socket, reads frames, hands the core's crypto
jobs to `zchat.broker.workers` (worker processes, or its own loop with `workers: 0`) and
their results back to the core, commits what the core stored once per turn,
sends what is ready without ever blocking, lets waiting joins and leaves go out, reports
peers that cannot be reached or keep up, and stops gracefully on an admin's
/shutdown, `/shutdown` typed on its console, SIGINT or SIGTERM.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import errno
import logging
import math
import os
import queue
import secrets
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType

import zmq

from zchat import crypto
from zchat.broker.admission import Admission, RoutingIds, Seen, Speaker, Speakers
from zchat.broker.core import BrokerCore
from zchat.broker.gatekeeper import CONNECTION_PROPERTY, Gatekeeper
from zchat.broker.process import raise_open_file_limit, seed_routing_ids
from zchat.broker.ratelimit import PeerLog, flush_peer_logs, short
from zchat.broker.registered import clients_stamp, read_keys
from zchat.broker.sqlite_file import backup
from zchat.broker.sqlite_store import SQLiteStore
from zchat.broker.store import Store
from zchat.broker.work import Outgoing, Work
from zchat.broker.workers import InlineJobs, WorkerPool
from zchat.config import DEFAULT_CONFIG, Config, add_location_arguments, load_config
from zchat.errors import ChatError, ConfigError, StoreError, WorkerError
from zchat.keystore import KeyLayout, Registry, ensure_broker_keys
from zchat.protocol import max_body_bytes

log = logging.getLogger("broker")
peer_log = PeerLog(log)

FLUSH_LINGER_MS = 3000
MAX_MESSAGES_PER_TURN = 1000
MAX_REMEMBERED_UNREACHABLE = 100_000
PROBE_TIMEOUT_MS = 1000
SEND_MORE, SEND_LAST = int(zmq.SNDMORE | zmq.NOBLOCK), int(zmq.NOBLOCK)
HANDSHAKE_TIMEOUT_MS = 5000  # a connection that has not completed its CurveZMQ handshake by then is closed
ZAP_DOMAIN = b"zchat"
DATABASE_FILE = "zchat.db"  # in the config's data_dir
CONSOLE_CLOSED = "console closed (end of input); stop the broker with Ctrl-C or SIGTERM"


def program() -> str:
    """The name the broker was started by, for its error lines: broker (broker.py) or zchat-broker."""
    return Path(sys.argv[0]).name.removesuffix(".py")


class Broker:
    def __init__(self, config: Config, key: crypto.PrivateKey, store: Store) -> None:
        self.config = config
        self.key = key
        self.store = store
        self.registry = Registry(KeyLayout(config.keys_dir))  # the loop's own: the gatekeeper's thread has one
        self.keys_read_at, self.keys_stamp = time.monotonic(), clients_stamp(self.registry)
        self.read_all_at = self.keys_read_at  # the last time every frame waiting for the loop had been read
        self.core = BrokerCore(key.public_key(), read_keys(self.registry), config, store, wall=time.time())
        self.context = zmq.Context()
        self.unreachable_ids: set[bytes] = set()  # a send to them failed: their deliveries need no sealing
        self.jobs: InlineJobs | WorkerPool = InlineJobs(key, self._deliverable)
        if config.workers:
            try:
                self.jobs = WorkerPool(config.workers, key, self.context, self._deliverable)
            except BaseException:
                self.context.term()
                raise
        seed_routing_ids()
        self.socket = self.context.socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.socket.setsockopt(zmq.SNDHWM, config.send_queue_limit)
        self.socket.setsockopt(zmq.RCVHWM, config.send_queue_limit)
        # A bigger frame makes libzmq drop the connection before any of our code sees it.
        self.socket.setsockopt(zmq.MAXMSGSIZE, max_body_bytes(config.max_text_bytes) + 1024)
        # CurveZMQ: only registered users' keys complete the handshake (the gatekeeper answers ZAP).
        self.socket.setsockopt(zmq.CURVE_SERVER, 1)
        self.socket.setsockopt(zmq.CURVE_SECRETKEY, crypto.curve_secret(key))
        self.socket.setsockopt(zmq.ZAP_DOMAIN, ZAP_DOMAIN)
        self.socket.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)  # no ZAP handler answering: nobody gets in
        self.socket.setsockopt(zmq.HANDSHAKE_IVL, HANDSHAKE_TIMEOUT_MS)
        admission = Admission(
            Registry(KeyLayout(config.keys_dir)),
            config.max_connections_per_source,
            config.handshakes_per_second_per_source,
            connections_per_second_per_source=config.connections_per_second_per_source,
            handshakes_per_second_per_user=config.handshakes_per_second_per_user,
            # A user's unfinished bytes: at least a few of the largest messages on their way in.
            unfinished_bytes_per_user=max(config.unfinished_bytes_per_user, 4 * max_body_bytes(config.max_text_bytes)),
            routing_id_lockout=config.routing_id_lockout,
        )
        self.gatekeeper: Gatekeeper | None = None
        port = "*" if config.server_port == 0 else str(config.server_port)
        try:
            self.gatekeeper = Gatekeeper(self.context, self.socket, admission)
            self.ended = self.gatekeeper.ended  # descriptors of connections that closed, for `speakers`
            self.probe_endpoint = f"inproc://zchat-probe-{secrets.token_hex(8)}"
            self.socket.bind(self.probe_endpoint)
            self.early: collections.deque[list[zmq.Frame]] = collections.deque()  # read while probing, not handled
            routing_ids = RoutingIds(self._routing_id_counter(), self._routing_id_counter, time.monotonic())
            # Connections that have spoken: routing id -> address, user, descriptor; at most so many per user.
            self.speakers = Speakers(routing_ids, config.max_connections_per_user)
            self.socket.bind(f"tcp://{config.server_ip}:{port}")
        except zmq.ZMQError:
            self.close(linger=0)
            raise
        self.endpoint = self.socket.getsockopt_string(zmq.LAST_ENDPOINT)
        self.console: queue.Queue[str] = queue.Queue()
        self.stop_reason: str | None = None

    def _routing_id_counter(self) -> int:
        """libzmq's routing-id counter now: the id a new probe connection over inproc gets (it uses that one up).

        Frames from clients read while waiting for the probe's are kept, in order, for `_read_clients`.
        """
        token = secrets.token_bytes(16)
        probe = self.context.socket(zmq.DEALER)
        try:
            probe.setsockopt(zmq.LINGER, 0)
            probe.connect(self.probe_endpoint)
            probe.send(token)
            while self.socket.poll(PROBE_TIMEOUT_MS):
                message = self.socket.recv_multipart(copy=False)
                if len(message) == 2 and message[1].bytes == token:
                    return int.from_bytes(message[0].bytes[1:], "big")
                self.early.append(message)
        finally:
            probe.close()
        raise RuntimeError("the routing-id probe got no answer")

    def request_stop(self, reason: str) -> None:
        self.stop_reason = self.stop_reason or reason

    def run(self) -> None:
        poller = zmq.Poller()
        for socket in [self.socket, *self.jobs.sockets]:
            poller.register(socket, zmq.POLLIN)
        tick_ms = max(10, int(self.config.heartbeat_interval * 1000 / 2))
        while self.stop_reason is None:
            timeout_ms = 0 if self.jobs.has_results() or self.early else tick_ms
            presence_due = self.core.presence_due(time.monotonic())
            if presence_due is not None:  # waiting joins and leaves go out when their interval ends
                timeout_ms = min(timeout_ms, math.ceil(presence_due * 1000))
            ready = dict(poller.poll(timeout_ms))
            if clients_stamp(self.registry) != self.keys_stamp:
                self._read_keys()  # a key added or removed counts at once: a message to a user just registered
            if self.socket in ready or self.core.gone or self.early:
                self._read_clients()
            else:
                self.read_all_at = time.monotonic()  # nothing was waiting: every session's silence is real
            self._take_results()
            self._handle(self.core.commit(time.monotonic(), time.time()))  # group commit: one transaction per turn
            self._handle(self.core.flush_presence(time.monotonic()))
            while not self.console.empty():
                self._console_command(self.console.get_nowait())
            self.jobs.check()
            if self.gatekeeper is not None and not self.gatekeeper.thread.is_alive():
                raise WorkerError("the gatekeeper thread stopped: nobody could connect any more")
            if time.monotonic() - self.keys_read_at >= self.config.heartbeat_interval:
                self._read_keys()  # a key removed or replaced ends its sessions within a heartbeat
            self._handle(self.core.tick(time.monotonic(), time.time(), self.read_all_at))
            flush_peer_logs(time.monotonic())
            if self.core.shutdown_requested_by:
                self.request_stop(f"/shutdown by {self.core.shutdown_requested_by}")
        self._shutdown()

    def _read_clients(self) -> None:
        for _ in range(MAX_MESSAGES_PER_TURN):
            try:
                message = self.early.popleft() if self.early else self.socket.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                self.read_all_at = time.monotonic()
                self._handle(self.core.drained(self.read_all_at))
                return
            head = message[0]
            identity, frames = head.bytes, [frame.bytes for frame in message[1:]]
            known = self.speakers.live.get(identity)
            # Served only on the connection it was first seen on; connections that ended are forgotten first.
            if known is None or head.get(zmq.SRCFD) != known.handle or not self.ended.empty():
                known = self._first_frame(identity, head)
                if known is None:
                    continue
            if self.gatekeeper is not None and self.speakers.live.get(identity) is known:  # not an ended one's
                self.gatekeeper.count(known.handle, frames)
            try:
                self._handle(self.core.receive(identity, frames, time.monotonic(), known.source, known.user))
            except Exception:
                # A bug, not the peer's fault: keep serving everyone else, and say so loudly.
                log.exception("internal error while handling a frame from %s; frame dropped", short(identity))

    def _first_frame(self, identity: bytes, frame: zmq.Frame) -> Speaker | None:
        """A frame from a routing id not yet live on its connection: the connection's address, user and
        descriptor, or None when it is to be dropped. A connection that claimed its routing id is closed and
        its user locked out; one over its user's connection cap is closed."""
        if self.gatekeeper is None:
            return None
        now = time.monotonic()
        while not self.ended.empty():  # the gatekeeper saw these close (before any later handshake was answered)
            self.speakers.ended_connection(self.ended.get_nowait(), now)
        known = self.speakers.live.get(identity)
        try:
            handle = int(frame.get(zmq.SRCFD))  # the TCP connection's descriptor
            if known is not None and known.handle == handle:
                return known
            source = str(frame.get("Peer-Address"))
            user = str(frame.get("User-Id"))  # the registered user the gatekeeper let in
            serial = int(frame.get(CONNECTION_PROPERTY))  # the connection's number, from the same ZAP answer
        except (zmq.ZMQError, ValueError):  # no transport metadata: not a connection the gatekeeper admitted
            return None
        try:
            seen = self.speakers.first_frame(identity, source, user, handle, serial, now)
        except RuntimeError:  # the probe failed (a bug): close the connection rather than risk the abort
            log.exception("cannot read the routing-id counter")
            seen = Seen.CLAIM
        if seen is Seen.SERVE:
            self.gatekeeper.report("spoke", handle, user)
            if self.registry.registered(user) is not self.core.logins.keys.registered(user):
                self._read_keys()  # registered (or replaced, or removed) since the keys were read: it counts at once
            return self.speakers.live[identity]
        if seen is Seen.LAST:  # what it sent before it went (a goodbye, a last message) still counts
            return self.speakers.last_words(identity)
        if seen is Seen.CLAIM:  # the gatekeeper logs it once per lockout
            self.gatekeeper.report("claim", handle, user, short(identity))  # never the id itself: it shows the counter
        elif seen is Seen.FULL:
            peer_log.warning(
                user,
                "closing a connection of %s from %s: %d connections open already",
                user,
                source,
                self.speakers.per_user.get(user, 0),
            )
            self.gatekeeper.report("close", handle, user)
        return None  # Seen.DROP: frames left over from a connection the broker closed, dropped without a word

    def _take_results(self) -> None:
        """Send what the crypto jobs produced; opened envelopes go back to the core, which may make more."""
        for _ in range(MAX_MESSAGES_PER_TURN):  # results keep coming while workers work: read clients in between
            results = self.jobs.collect()
            if not results:
                return
            sealed: list[Outgoing] = []  # consecutive sealed frames go through the core's flow control together
            for result in results:
                if isinstance(result, Outgoing):
                    sealed.append(result)
                    continue
                self._handle(self.core.sendable(sealed, time.monotonic()))
                sealed = []
                try:
                    self._handle(self.core.opened(result, time.monotonic(), time.time()))
                except Exception:
                    log.exception("internal error after opening a frame from %s; frame dropped", short(result.identity))
            self._handle(self.core.sendable(sealed, time.monotonic()))

    def _read_keys(self) -> None:
        """Read the key files again for the core: at every heartbeat, when keys/clients/ gained or lost a file, and
        when a connection names a user whose file changed since."""
        self.keys_read_at, self.keys_stamp = time.monotonic(), clients_stamp(self.registry)
        self._handle(self.core.keys_read(read_keys(self.registry), self.keys_read_at))

    def _console_command(self, line: str) -> None:
        line = line.strip()
        if line == "/shutdown":
            self.request_stop("/shutdown on the broker console")
        elif line == "/who":
            names = ", ".join(u.name for u in self.core.online()) or "nobody"
            print(f"online: {names}", flush=True)
        elif line:
            print("console commands: /who, /shutdown (Ctrl-C and SIGTERM also stop the broker)", flush=True)

    def _handle(self, work: list[Work]) -> None:
        self.jobs.submit([item for item in work if not isinstance(item, Outgoing)])
        self._send([item for item in work if isinstance(item, Outgoing)])

    def _deliverable(self, identity: bytes) -> bool:
        return identity not in self.unreachable_ids

    def _send(self, outgoing: list[Outgoing]) -> None:
        send = self.socket.send
        for item in outgoing:
            *more, last = item.frames  # before sending anything: a message is never left half sent
            try:
                # send_multipart() with these flags, without its per-frame flag arithmetic (a tenth of the loop)
                send(item.identity, SEND_MORE)
                for frame in more:
                    send(frame, SEND_MORE)
                send(last, SEND_LAST)
            except zmq.Again:
                self._handle(self.core.too_slow(item.identity, time.monotonic()))
            except zmq.ZMQError as exc:
                if exc.errno != errno.EHOSTUNREACH:
                    raise
                if len(self.unreachable_ids) >= MAX_REMEMBERED_UNREACHABLE:
                    self.unreachable_ids.clear()
                self.unreachable_ids.add(item.identity)
                self._handle(self.core.unreachable(item.identity, time.monotonic()))

    def _shutdown(self) -> None:
        log.info("shutting down: %s", self.stop_reason)
        self.jobs.discard_opens()
        self._handle(self.core.shutdown(self.stop_reason or "broker", time.monotonic(), time.time()))
        deadline = time.monotonic() + FLUSH_LINGER_MS / 1000
        while not self.jobs.idle() and time.monotonic() < deadline:
            self.jobs.check()
            self._take_results()
            for socket in self.jobs.sockets:
                socket.poll(10)
        if not self.jobs.idle():
            log.warning("stopped before every queued delivery was sealed")
        self.close(linger=FLUSH_LINGER_MS)
        log.info("broker stopped")

    def close(self, linger: int = 0) -> None:
        self.store.close()
        self.jobs.close()
        if self.gatekeeper is not None:
            self.socket.disable_monitor()
            self.gatekeeper.close()
        self.socket.close(linger=linger)
        self.context.term()


def _console_reader(lines: queue.Queue[str]) -> None:
    """Feed stdin lines to the poll loop, which looks at them every tick.

    At end of input it stops reading and the broker keeps running; on a terminal (someone pressed Ctrl-D)
    it says so, since what they type next is no longer read. A closed or redirected stdin (a service)
    ends it without a word.
    """
    try:
        interactive = sys.stdin.isatty()
        for line in sys.stdin:
            lines.put(line)
    except (OSError, ValueError):
        return
    if interactive:
        print(CONSOLE_CLOSED, flush=True)


def _backup(config_path: Path, target: Path) -> int:
    """`--backup FILE`: copy the database with SQLite's backup API (safe while the broker runs)."""
    try:
        source = load_config(config_path).data_dir / DATABASE_FILE
        pages = backup(source, target)
    except (ConfigError, StoreError) as exc:
        print(f"{program()}: error: {exc}", file=sys.stderr)
        return 1
    print(f"copied {source} to {target} ({pages} pages); it opens only with the broker key it was made with")
    return 0


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Encrypted chat broker (ZeroMQ ROUTER).")
    add_location_arguments(parser)
    parser.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="default: INFO"
    )
    parser.add_argument(
        "--backup", type=Path, metavar="FILE", help="write a consistent copy of the database to FILE and exit"
    )
    parser.add_argument(
        "--create-keys",
        action="store_true",
        help="create the broker key pair if keys_dir has none (done unasked only in the repository's own keys/)",
    )
    parser.add_argument(
        "--no-supervisor",
        action="store_true",
        help="run the broker in this process, without the supervisor that starts it again after a crash"
        " (for systemd or another service manager that restarts it)",
    )
    return parser.parse_args(argv)


def _config_and_key(args: argparse.Namespace, own_keys_dir: Path | None) -> tuple[Config, crypto.PrivateKey, bool]:
    """The config and the broker's key pair (made if allowed: True when it was); ChatError or OSError when not."""
    config = load_config(args.config, args.keys_dir)
    layout = KeyLayout(config.keys_dir)
    keys_dir = config.keys_dir.resolve()
    if not (layout.broker_private.exists() or args.create_keys or keys_dir == own_keys_dir):
        # A config file copied elsewhere moves keys_dir with it: a new key pair there would lock every
        # client that pinned the real broker.pub out, so it is made only when asked for.
        where = "--keys-dir" if args.keys_dir is not None else f"keys_dir of {args.config}"
        raise ConfigError(
            f"no broker key in {keys_dir} ({where}): point keys_dir or --keys-dir at the"
            f" directory holding broker.pem{f' (e.g. {str(own_keys_dir)!r})' if own_keys_dir else ''},"
            " or start once with --create-keys"
            " to make a new key pair there (every client must then be given the new broker.pub)"
        )
    key, created = ensure_broker_keys(layout)
    return config, key, created


def _start(config: Config, key: crypto.PrivateKey) -> Broker:
    """Open the database and bind the socket; ChatError or zmq.ZMQError when either fails."""
    for problem in Registry(KeyLayout(config.keys_dir)).audit():
        log.error("registry: %s", problem)
    store: Store = SQLiteStore.open(config.data_dir / DATABASE_FILE, key, now=time.time())
    raise_open_file_limit()
    try:
        return Broker(config, key, store)
    except BaseException:
        store.close()
        raise


def _log_start(broker: Broker, config_path: Path, created: bool, new_database: bool) -> None:
    """Where the keys and the data are, resolved (a config file copied elsewhere moves both), and what runs."""
    config, layout = broker.config, KeyLayout(broker.config.keys_dir)
    database = config.data_dir.resolve() / DATABASE_FILE
    if created:
        log.info("created a new broker key pair %s (give %s to clients)", layout.broker_private, layout.broker_public)
    log.info("keys: %s (config %s)", config.keys_dir.resolve(), config_path.resolve())
    if new_database:  # expected at a first start; later, the history is gone (a moved data_dir?)
        (log.info if created else log.warning)("data: %s did not exist: a new database, with no history", database)
    else:
        log.info("data: %s", database)
    log.info("listening on %s (broker key %s)", broker.endpoint, crypto.fingerprint(broker.key))
    log.info("admins: %s", ", ".join(sorted(config.admins)) or "none")
    log.info("crypto: %s", f"{config.workers} worker processes" if config.workers else "in the broker's own loop")


def _serve(broker: Broker, config_path: Path, created: bool, new_database: bool) -> int:
    """Run until stopped: 0, or EX_SOFTWARE after a failure (the supervisor starts the broker again)."""

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        broker.request_stop(signal.Signals(signum).name)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)  # a closed terminal or a service manager: stop gracefully too
    if sys.stdin is not None and not sys.stdin.closed:
        threading.Thread(target=_console_reader, args=(broker.console,), daemon=True).start()
    _log_start(broker, config_path, created, new_database)  # "listening on": it answers signals from now on
    try:
        broker.run()
    except WorkerError as exc:
        log.error("%s; stopping", exc)
        broker.close()
        return os.EX_SOFTWARE  # a failure after the start, unlike 1: the supervisor starts the broker again
    except Exception:  # a bug outside the per-frame safety nets: the supervisor starts the broker again
        log.exception("internal error in the broker's loop; stopping")
        with contextlib.suppress(Exception):
            broker.close()
        return os.EX_SOFTWARE
    return 0


def main(argv: list[str] | None = None, own_keys_dir: Path | None = None) -> int:
    """The broker's command line. It makes its own key pair unasked only in `own_keys_dir`: the repository's
    keys/, which broker.py names, so that a fresh clone's `make broker` just starts. Elsewhere it takes
    --create-keys, so that a config file copied away never silently makes a second broker identity."""
    args = _arguments(argv)
    if args.config is None and not DEFAULT_CONFIG.exists():
        print(
            f"{program()}: error: no {DEFAULT_CONFIG} in {Path.cwd()}: give the broker's config file with --config FILE"
            ' (at least {"server_ip": "127.0.0.1", "server_port": 5000})',
            file=sys.stderr,
        )
        return 1
    args.config = args.config or DEFAULT_CONFIG
    if args.backup is not None:
        return _backup(args.config, args.backup)
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    try:
        config, key, created = _config_and_key(args, own_keys_dir)
        new_database = not (config.data_dir.resolve() / DATABASE_FILE).exists()
        broker = _start(config, key)
    except (ChatError, OSError) as exc:
        print(f"{program()}: error: {exc}", file=sys.stderr)
        return 1
    except zmq.ZMQError as exc:
        print(f"{program()}: error: cannot listen on {config.server_ip}:{config.server_port}: {exc}", file=sys.stderr)
        return 1
    return _serve(broker, args.config, created, new_database)


if __name__ == "__main__":
    sys.exit(main())
