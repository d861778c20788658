"""The load generator: many client sockets in one process, sending prepared frames and counting what arrives.

A `Fleet` holds DEALER sockets, one per client, all polled by one loop:

- chat clients (`ChatPeer`) connect over CurveZMQ (`harness.dealer.client_dealer`, the product's socket,
  zchat/3) and log in with `zchat.client.session.ClientSession`, the sans-I/O session
  every real client uses (HELLO, CHALLENGE, LOGIN, welcome). Their SEND frames
  are made before a timed window with `session.say()` for consecutive sequence
  numbers; during the window the loop only sends them and counts the EVENT
  frames that arrive, without opening them: for each message, one per
  recipient and one to its sender (the broker's `accepted`, `ANSWERS`). After
  each batch of frames read from a socket it sends one ACK for the newest
  EVENT of the batch (flow control: the broker stops sending a session that
  does not acknowledge);
- relay clients (`RelayPeer`) register with a reference relay and send the
  same payload over and over.

This is a measuring instrument, not a client: it does not run the client policy
(`zchat.client.core`: the outbox, reconnecting, opening every event), whose cost
would load the generator. It only retries a turned-away login (`Fleet.login`)
and keeps idle sessions alive with a PING.

`saturate()` keeps a bounded number of messages in flight (sent, not yet seen
by every recipient), so the server under test always has work queued while
the generator stays light; `paced()` sends at a fixed rate for the latency
measurement. Every wait has a deadline.
"""

from __future__ import annotations

import resource
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import zmq

from bench.stats import message_text
from bench.workspace import BenchError
from harness.dealer import client_dealer
from harness.process import ServerProcess
from harness.procfs import cpu_seconds, system_busy_seconds
from zchat import crypto
from zchat import protocol as p
from zchat.client.session import ClientSession
from zchat.errors import ChatError
from zchat.events import Welcome

Frames = list[bytes]
KEEPALIVE_S = 2.0  # a chat client that sent nothing for this long sends a PING, so the broker never times it out
ATTEMPT_TIMEOUT = 60.0  # one login attempt, HELLO to welcome
RETRY_DELAY = 0.5
SATURATE_NAP_S = 0.02  # a second of work is queued at the server: 20 ms naps between reads cost it nothing
POLL_MS = 5
ANSWERS = 1  # EVENTs a chat message brings its sender: the broker's answer (accepted, or failed)


def self_cpu_seconds(thread_only: bool = False) -> float:
    """CPU time of this process (all threads, ZeroMQ's I/O thread included), or of the calling thread alone."""
    usage = resource.getrusage(resource.RUSAGE_THREAD if thread_only else resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Peer:
    """One client socket of the generator."""

    ready = False  # logged in (chat) or registered (relay): what it receives counts as deliveries
    capture: list[Frames] | None = None  # when a list, what a ready peer receives is kept here, not counted

    def __init__(self, slot: int, name: str) -> None:
        self.slot = slot
        self.name = name
        self.socket: zmq.Socket[bytes] | None = None
        self.last_sent = time.monotonic()

    def take(self) -> tuple[int, Frames] | None:
        """The next message to send (its number and frames), or None when there is nothing left."""
        raise NotImplementedError

    def on_frames(self, frames: Frames) -> None:
        """A message that arrived before the peer was ready."""
        raise NotImplementedError

    def start(self, fleet: Fleet) -> None:
        """Begin logging in / registering on a fresh socket."""
        raise NotImplementedError

    @property
    def failed(self) -> str | None:
        return None


class ChatPeer(Peer):
    def __init__(
        self,
        slot: int,
        name: str,
        key: crypto.PrivateKey,
        broker_key: crypto.PublicKey,
        broker_curve: bytes,
        curve_secret: bytes | None = None,
    ) -> None:
        super().__init__(slot, name)
        self.key = key
        self.broker_key = broker_key
        self.broker_curve = broker_curve
        self.curve_secret = curve_secret
        self.session = ClientSession(name, key, broker_key, bot=True, history=False)
        self.state = "new"  # new, hello, login, in, failed
        self.failure: str | None = None
        self.decrypt_welcome = True
        self.prepared_hello: Frames | None = None
        self.attempt_started = 0.0
        self.logged_in_at = 0.0
        self.welcome: Frames | None = None
        self.supply: deque[tuple[int, Frames]] = deque()
        self.built = 0

    @property
    def failed(self) -> str | None:
        return self.failure

    def prepare_hello(self) -> None:
        """Seal the HELLO now, so that sending it later costs nothing."""
        self.prepared_hello = self.session.hello()

    def start(self, fleet: Fleet) -> None:
        if self.state != "new":  # a retry: a new session on a new socket
            self.session = ClientSession(self.name, self.key, self.broker_key, bot=True, history=False)
            self.prepared_hello = None
        if self.socket is None:
            fleet.connect(self)
        hello = self.prepared_hello or self.session.hello()
        self.prepared_hello = None
        self.state, self.failure, self.welcome = "hello", None, None
        self.attempt_started = time.monotonic()
        fleet.send(self, hello)

    def on_frames(self, frames: Frames) -> None:
        command = frames[1] if len(frames) == p.FRAME_COUNT else b""
        if command in (p.REFUSED, p.BUSY) and self.state in ("hello", "login"):
            self.state, self.failure = "failed", command.decode()
            return
        if command == p.CHALLENGE and self.state == "hello":
            try:
                _, reply = self.session.receive(frames)
            except ChatError as exc:
                self.state, self.failure = "failed", f"challenge: {exc}"
                return
            if reply is not None and self.socket is not None:
                self.socket.send_multipart(reply)
                self.last_sent = time.monotonic()
            self.state = "login"
        elif command == p.EVENT and self.state == "login":
            # The broker sends a session nothing but its welcome before it is logged in, so the first
            # EVENT is the welcome. Opening it is left out where it would load the generator (it holds
            # the whole roster); `check_welcome()` opens a kept one afterwards.
            self.logged_in_at = time.monotonic()
            if self.decrypt_welcome:
                try:
                    events, _ = self.session.receive(frames)
                except ChatError as exc:
                    self.state, self.failure = "failed", f"welcome: {exc}"
                    return
                if not any(isinstance(event, Welcome) for event in events):
                    self.state, self.failure = "failed", "first event was not a welcome"
                    return
            else:
                self.welcome = frames
            self.state = "in"
            self.ready = True

    def check_welcome(self) -> int:
        """Open the kept welcome with the real session code; the number of users it lists."""
        if self.welcome is None:
            raise BenchError(f"{self.name} kept no welcome")
        events, _ = self.session.receive(self.welcome)
        for event in events:
            if isinstance(event, Welcome):
                return len(event.users)
        raise BenchError(f"{self.name}: the kept first event is not a welcome")

    def build(self, count: int, message_bytes: int) -> None:
        """Prepare `count` more SEND frames (signed and sealed now, sent later in this order)."""
        for _ in range(count):
            self.built += 1
            text = message_text(self.slot, self.built, message_bytes)
            self.supply.append((self.built, self.session.say(text, message_id=p.new_message_id())))

    def take(self) -> tuple[int, Frames] | None:
        return self.supply.popleft() if self.supply else None


@dataclass
class CurveKeys:
    public: bytes
    secret: bytes
    server: bytes


class RelayPeer(Peer):
    REGISTER = b"hi"
    REGISTERED = b"ok"

    def __init__(self, slot: int, name: str, payload: bytes, curve: CurveKeys | None) -> None:
        super().__init__(slot, name)
        self.payload = payload
        self.curve = curve
        self.sent = 0

    def start(self, fleet: Fleet) -> None:
        if self.socket is None:
            fleet.connect(self)
        fleet.send(self, [self.REGISTER])

    def on_frames(self, frames: Frames) -> None:
        if frames == [self.REGISTERED]:
            self.ready = True

    def take(self) -> tuple[int, Frames] | None:
        self.sent += 1
        return self.sent, [self.payload]


@dataclass
class LoginReport:
    seconds: float = 0.0
    attempts: int = 0
    turned_away: dict[str, int] = field(default_factory=dict)  # "REFUSED", "BUSY", "timeout", ...
    per_client_s: list[float] = field(default_factory=list)  # first attempt started -> logged in


@dataclass
class Mark:
    at: float
    delivered: int
    target_cpu: float
    target_loop_cpu: float
    target_main_cpu: float
    acks: int
    own_cpu: float
    own_loop_cpu: float
    system_cpu: float


@dataclass
class Throughput:
    deliveries_per_s: float
    window_s: float
    deliveries: int
    sent: int
    lost: int
    target_cores_busy: float  # CPU seconds of the server under test per second of window
    target_loop_busy: float  # the same for its main thread alone (the Python loop that handles every message)
    target_io_busy: float  # its main process's other threads: libzmq's I/O thread (CurveZMQ), the ZAP handler
    acks_per_s: float  # ACK frames the generator sent (chat only)
    generator_cores_busy: float
    generator_loop_busy: float
    other_cores_busy: float  # everything else on the machine: the kernel's share of loopback TCP, other programs
    supply_ran_out: bool

    @classmethod
    def between(cls, start: Mark, end: Mark, share: float, sent: int, lost: int, ran_out: bool) -> Throughput:
        """The window from `start` to `end`; `share`: of the EVENTs counted, the deliveries to recipients."""
        seconds = end.at - start.at
        target = (end.target_cpu - start.target_cpu) / seconds
        own = (end.own_cpu - start.own_cpu) / seconds
        return cls(
            deliveries_per_s=(end.delivered - start.delivered) * share / seconds,
            window_s=seconds,
            deliveries=round((end.delivered - start.delivered) * share),
            sent=sent,
            lost=lost,
            target_cores_busy=target,
            target_loop_busy=(end.target_loop_cpu - start.target_loop_cpu) / seconds,
            target_io_busy=(end.target_main_cpu - start.target_main_cpu - end.target_loop_cpu + start.target_loop_cpu)
            / seconds,
            acks_per_s=(end.acks - start.acks) / seconds,
            generator_cores_busy=own,
            generator_loop_busy=(end.own_loop_cpu - start.own_loop_cpu) / seconds,
            other_cores_busy=max(0.0, (end.system_cpu - start.system_cpu) / seconds - target - own),
            supply_ran_out=ran_out,
        )


class Fleet:
    """The generator's sockets and one loop that reads them all; `delivered` counts what arrived."""

    def __init__(self, endpoint: str, chat: bool, sockets: int) -> None:
        self.endpoint = endpoint
        self.chat = chat
        self.context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.context.set(zmq.MAX_SOCKETS, max(1024, sockets + 64))
        self.poller = zmq.Poller()
        self.by_socket: dict[zmq.Socket[bytes], Peer] = {}
        self.peers: list[Peer] = []
        self.delivered = 0
        self.acks = 0  # ACK frames sent
        self.answers = ANSWERS if chat else 0  # counted EVENTs per message besides its recipients
        self.events = 0  # EVENT messages read, and the bytes of their bodies
        self.event_bytes = 0
        self.last_keepalive = time.monotonic()

    def close(self) -> None:
        for peer in list(self.peers):
            self.remove(peer)
        self.context.term()

    def stop_server(self, server: ServerProcess, timeout: float = 60.0) -> None:
        """SIGTERM the server while still reading every socket, so it can say goodbye to connected clients.

        Closing the clients first would make the broker announce every departure to
        everyone left (a seal per remaining client, per departure) before it stops.
        """
        server.ask_to_stop()
        deadline = time.monotonic() + timeout
        while server.alive() and time.monotonic() < deadline:
            self.pump(20)

    # ------------------------------------------------------------ sockets

    def connect(self, peer: Peer) -> None:
        if peer.socket is not None:
            self.disconnect(peer)
        if isinstance(peer, ChatPeer):
            # A name that reuses another name's RSA key has a Curve pair of its own (`Workspace.register`).
            secret = peer.curve_secret or crypto.curve_secret(peer.key)
            sock = client_dealer(self.context, self.endpoint, secret, peer.broker_curve, queue_limit=0)
        else:
            sock = self.context.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.RCVHWM, 0)  # never push back on the server: what it sends is queued here
            sock.setsockopt(zmq.SNDHWM, 0)
            if isinstance(peer, RelayPeer) and peer.curve is not None:
                sock.curve_secretkey = peer.curve.secret
                sock.curve_publickey = peer.curve.public
                sock.curve_serverkey = peer.curve.server
            sock.connect(self.endpoint)
        peer.socket = sock
        peer.ready = False
        self.by_socket[sock] = peer
        self.poller.register(sock, zmq.POLLIN)
        if peer not in self.peers:
            self.peers.append(peer)

    def disconnect(self, peer: Peer) -> None:
        if peer.socket is None:
            return
        self.poller.unregister(peer.socket)
        del self.by_socket[peer.socket]
        peer.socket.close(linger=0)
        peer.socket = None
        peer.ready = False

    def remove(self, peer: Peer) -> None:
        self.disconnect(peer)
        if peer in self.peers:
            self.peers.remove(peer)

    def send(self, peer: Peer, frames: Frames) -> None:
        if peer.socket is None:
            raise BenchError(f"{peer.name} has no socket")
        peer.socket.send_multipart(frames)
        peer.last_sent = time.monotonic()

    # ------------------------------------------------------------ the loop

    def pump(self, timeout_ms: int) -> int:
        """Wait up to `timeout_ms` for something to arrive, then read everything there is; deliveries counted.

        A chat socket that read EVENTs gets one ACK for the newest of them (zchat/3 flow control), as the
        reference client sends one after each poll that read an EVENT.
        """
        counted = 0
        for sock, _ in self.poller.poll(timeout_ms):
            peer = self.by_socket[sock]
            newest: bytes | None = None
            while True:
                try:
                    frames = sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                is_event = len(frames) == p.FRAME_COUNT and frames[1] == p.EVENT
                if is_event:
                    newest = frames[2]
                    self.event_bytes += len(newest)
                    self.events += 1
                if not peer.ready:
                    peer.on_frames(frames)
                elif peer.capture is not None:
                    peer.capture.append(frames)
                elif not self.chat or is_event:
                    counted += 1
            if self.chat and newest is not None and peer.socket is sock:
                self.send(peer, p.encode_frames(p.ACK, p.event_tag(newest)))
                self.acks += 1
        self.delivered += counted
        if self.chat:
            self.keepalive()
        return counted

    def keepalive(self) -> None:
        now = time.monotonic()
        if now - self.last_keepalive < KEEPALIVE_S / 4:
            return
        self.last_keepalive = now
        ping = p.encode_frames(p.PING)
        for peer in self.peers:
            if peer.ready and now - peer.last_sent > KEEPALIVE_S:
                self.send(peer, ping)

    def wait_quiet(self, quiet_s: float, timeout: float, server: ServerProcess) -> None:
        """Read until nothing counted has arrived for `quiet_s` (joins and leaves have all been delivered)."""
        deadline = time.monotonic() + timeout
        last = time.monotonic()
        while time.monotonic() - last < quiet_s:
            if self.pump(20):
                last = time.monotonic()
            if time.monotonic() > deadline:
                raise BenchError(f"{server.label}: traffic did not stop within {timeout:g}s")
            server.check_alive()

    def wait_for(self, done: Callable[[], bool], what: str, timeout: float, server: ServerProcess) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            if time.monotonic() > deadline:
                raise BenchError(f"{server.label}: timed out after {timeout:g}s waiting for {what}")
            self.pump(20)
            server.check_alive()

    # ------------------------------------------------------------ logins

    def login(
        self, peers: Sequence[Peer], in_flight: int, timeout: float, server: ServerProcess, started: float | None = None
    ) -> LoginReport:
        """Log `peers` in (or register them), at most `in_flight` at a time; turned-away peers retry."""
        report = LoginReport()
        started = time.monotonic() if started is None else started
        waiting: deque[Peer] = deque(peers)
        retry_at: dict[Peer, float] = {}
        first_attempt: dict[Peer, float] = {}
        active: list[Peer] = []
        deadline = started + timeout
        while waiting or active:
            now = time.monotonic()
            while waiting and len(active) < in_flight and retry_at.get(waiting[0], 0.0) <= now:
                peer = waiting.popleft()
                first_attempt.setdefault(peer, now)
                peer.start(self)
                report.attempts += 1
                active.append(peer)
            self.pump(POLL_MS)
            now = time.monotonic()
            for peer in list(active):
                why = peer.failed
                if peer.ready:
                    active.remove(peer)
                    report.per_client_s.append(now - first_attempt[peer])
                elif why is not None or (isinstance(peer, ChatPeer) and now - peer.attempt_started > ATTEMPT_TIMEOUT):
                    reason = (why or "no answer").split(":")[0]
                    report.turned_away[reason] = report.turned_away.get(reason, 0) + 1
                    active.remove(peer)
                    self.disconnect(peer)
                    retry_at[peer] = now + RETRY_DELAY
                    waiting.append(peer)
            if now > deadline:
                raise BenchError(
                    f"{server.label}: {len(waiting) + len(active)} of {len(peers)} clients not in after {timeout:g}s "
                    f"(turned away: {report.turned_away})"
                )
            server.check_alive()
        report.seconds = time.monotonic() - started
        return report

    # ------------------------------------------------------------ traffic

    def _mark(self, server: ServerProcess) -> Mark:
        return Mark(
            at=time.monotonic(),
            delivered=self.delivered,
            target_cpu=server.cpu_seconds(),
            target_loop_cpu=server.main_thread_cpu_seconds(),
            target_main_cpu=cpu_seconds(server.pid),
            acks=self.acks,
            own_cpu=self_cpu_seconds(),
            own_loop_cpu=self_cpu_seconds(thread_only=True),
            system_cpu=system_busy_seconds(),
        )

    def saturate(
        self,
        senders: Sequence[Peer],
        fanout: int,
        warmup: float,
        duration: float,
        in_flight: int,
        server: ServerProcess,
        drain_timeout: float = 60.0,
        on_mark: Callable[[], object] | None = None,
    ) -> Throughput:
        """Keep `in_flight` messages queued at the server for warmup + duration; count deliveries in the window.

        A message is in flight from its sending until all `fanout` recipients (all in
        this fleet) and, for chat, its sender (the broker's answer) could have counted it.
        Afterwards the run drains, so the numbers also say whether anything was lost.
        Deliveries are to recipients: the answers are taken out of the counts.
        `on_mark` is called just after the window's start and end are read (other readings of the same window).
        """
        per_message = fanout + self.answers
        base = self.delivered
        start, end, sent, ran_out = self._keep_queued(
            senders, per_message, warmup, duration, in_flight, server, on_mark
        )
        expected = sent * per_message
        deadline = time.monotonic() + drain_timeout
        while self.delivered - base < expected and time.monotonic() < deadline:
            self.pump(20)
        lost = expected - (self.delivered - base)
        return Throughput.between(start, end, fanout / per_message, sent, lost, ran_out)

    def _keep_queued(
        self,
        senders: Sequence[Peer],
        per_message: int,
        warmup: float,
        duration: float,
        in_flight: int,
        server: ServerProcess,
        on_mark: Callable[[], object] | None,
    ) -> tuple[Mark, Mark, int, bool]:
        """`saturate`'s sending: the window's start and end marks, the messages sent, whether the supply ran out."""
        base = self.delivered
        sent = 0
        active = list(senders)
        turn = 0
        ran_out = False
        go = time.monotonic()
        start: Mark | None = None
        while True:
            now = time.monotonic()
            if start is None and now >= go + warmup:
                start = self._mark(server)
                if on_mark is not None:
                    on_mark()
            if now >= go + warmup + duration:
                break
            while sent - (self.delivered - base) / per_message < in_flight and active:
                peer = active[turn % len(active)]
                item = peer.take()
                if item is None:
                    active.remove(peer)
                    continue
                self.send(peer, item[1])
                sent += 1
                turn += 1
            if not active and start is not None:
                ran_out = True
            self.pump(POLL_MS)
            time.sleep(SATURATE_NAP_S)  # read in batches: the generator needs less CPU, the broker gets more
        end = self._mark(server)
        if on_mark is not None:
            on_mark()
        if start is None:
            raise BenchError("the timed window never started")
        return start, end, sent, ran_out

    def paced(
        self, senders: Sequence[Peer], rate: float, count: int, local_fanout: int, server: ServerProcess
    ) -> tuple[dict[tuple[int, int], float], float]:
        """Send `count` messages at `rate` per second, round robin over `senders`.

        Returns when each was sent (time.time(), just before the send, by (sender slot,
        number)) and the largest lag behind the schedule, in seconds. Waits until the
        `local_fanout` recipients in this fleet have every message.
        """
        sent_at: dict[tuple[int, int], float] = {}
        base = self.delivered
        lag = 0.0
        go = time.monotonic() + 0.05
        for i in range(count):
            due = go + i / rate
            while (wait := due - time.monotonic()) > 0:
                self.pump(max(0, min(20, int(wait * 1000))))
            lag = max(lag, time.monotonic() - due)
            peer = senders[i % len(senders)]
            item = peer.take()
            if item is None:
                raise BenchError(f"{peer.name} ran out of prepared messages")
            sent_at[(peer.slot, item[0])] = time.time()
            self.send(peer, item[1])
        expected = count * (local_fanout + self.answers)
        self.wait_for(lambda: self.delivered - base >= expected, "the paced messages", 60.0, server)
        return sent_at, lag
