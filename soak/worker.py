"""One worker process of the soak: hosts its share of the clients in a single non-blocking loop.

A `ChatClient` heartbeats only while it is polled, so the loop never blocks on
one client: every turn it calls `poll(0)` and `drain()` on each client in
turn, sends what the schedule says is due, churns, and sleeps a moment only
when nothing happened. Logins are non-blocking too (`ChatClient.start_login`).
Reconnecting, re-sending after a reconnect and heartbeats are the client's
(`zchat.client.core`); the worker only maps the broker's answers, `Accepted` and
`Failed` (by message id), back to the soak's seqs, and lets a client leave on
churn only once the broker has answered everything it sent, so no message's
fate is unknown. What a client shows is recorded session by session, history
replays included (`soak.stats.ReceiverSession`), with the number of the client
(a churning name gets a new `ChatClient` for each rejoin).

The worker talks to `soak.run` over two queues:

    parent -> worker   ("go", t0)  ("finish",)  ("abort",)
    worker -> parent   ("ready", wid, None)  ("sent", wid, {name: n})
                       ("progress", wid, Progress)  ("result", wid, WorkerResult)  ("error", wid, traceback)

Phases: log everyone in (a few at a time) and report "ready"; wait for "go";
from t0 for `duration` seconds send at this worker's share of the rate and
churn the non-stable clients; then report how many messages each sender sent,
keep receiving (and reporting progress) until "finish", close every client and
report everything that was received.
"""

from __future__ import annotations

import math
import os
import queue
import random
import re
import signal
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from multiprocessing.queues import Queue
from pathlib import Path
from typing import Any

import zmq

import zchat.client.driver
from soak.stats import ReceiverSession, message_text, parse_text
from zchat import crypto
from zchat.client.sync_client import ChatClient
from zchat.errors import ConnectError
from zchat.events import (
    Accepted,
    ChatMessage,
    ConnectionLost,
    Event,
    Failed,
    Joined,
    Left,
    Notice,
    SessionClosed,
    Shutdown,
    Welcome,
)
from zchat.keystore import KeyLayout

IDLE_SLEEP = 0.002
PROGRESS_EVERY = 0.2
RETRY_AFTER_FAILED_LOGIN = 1.0
REJOIN_DELAY = (0.5, 3.0)
MAX_NOTICES_KEPT = 20
# Frames one client reads per poll. A ChatClient reads up to 100 (zchat.client.driver.MAX_FRAMES_PER_POLL),
# which suits a process with one client; here ~100 share one loop, and after a broker restart each has a whole
# history replay to read (an RSA decryption per message): 100 frames each would make one turn of the loop last
# many seconds, so no client would send its heartbeat in time. Fewer per turn keep every client's heartbeats and
# ACKs going.
FRAMES_PER_POLL = 4
# How the client's own Failed events begin (zchat.client.core.ClientCore) when it closes for good with messages
# the broker never answered: "not confirmed" for one it had sent (its fate is unknown: counted as unanswered),
# "not sent" for one it never sent (or that the broker refused as a statement: certainly not delivered).
GIVEN_UP = "not confirmed: "
NOT_SENT = "not sent: "
NAMES_IN_NOTICES = re.compile(r"soak\d+(\|\d+\|[\d.]+)?")  # the soak's names, and its texts (sender|seq|time)

Message = tuple[Any, ...]


@dataclass(frozen=True)
class WorkerSpec:
    wid: int
    port: int
    keys_root: Path
    names: tuple[str, ...]
    stable: frozenset[str]
    rate: float  # this worker's share of the messages per second
    churn: float  # probability per second that a non-stable client leaves
    duration: float
    seed: int
    connect_timeout: float
    logins_in_flight: int
    deadline: float  # time.time() after which the worker gives up on its own (the parent is gone or stuck)


@dataclass(frozen=True)
class Progress:
    have: dict[str, int]  # stable receiver -> distinct messages from others it has shown
    accepted: dict[str, int]  # sender -> messages the broker answered with Accepted so far
    waiting: dict[str, int]  # sender -> messages sent and not answered yet


@dataclass
class WorkerResult:
    wid: int
    sent: dict[str, int] = field(default_factory=dict)
    sent_at: dict[str, dict[int, float]] = field(default_factory=dict)  # sender -> seq -> time.time() it was sent
    accepted: dict[str, dict[int, float]] = field(default_factory=dict)  # sender -> seq -> broker's received time
    refused: dict[str, list[int]] = field(default_factory=dict)
    abandoned: dict[str, list[int]] = field(default_factory=dict)
    sessions: dict[str, list[ReceiverSession]] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list)  # live messages only
    unparsed: int = 0
    history_replayed: int = 0  # messages shown from a history replay (own ones included)
    refused_by_client: int = 0  # Failed "not sent": the client gave up on a message it never sent
    duplicate_answers: int = 0  # Accepted with duplicate: a re-send the broker had already accepted
    history_then_live: int = 0  # (session, sender) pairs with history then live messages: checked for order too
    own_history: int = 0  # own messages shown in a history replay, sent by an earlier client of the name
    own_history_pending: int = 0  # own messages shown in a history replay while still waiting for their answer
    own_repeated: int = 0  # own messages shown again by a client that had them accepted or shown (duplicates)
    churn_leaves: int = 0
    last_before_leave: list[tuple[str, int]] = field(default_factory=list)  # each leaver's last message before it
    reconnects: int = 0
    connection_losses: int = 0
    login_failures: int = 0
    relogins: int = 0  # logins of a client again after it lost its connection (the broker died, say)
    relogins_refused: int = 0  # clients that had logged in before and closed for good on a failed re-login
    closed_by_broker: int = 0
    skipped_sends: int = 0
    send_errors: int = 0
    max_turn_s: float = 0.0
    notices: Counter[str] = field(default_factory=Counter)


class Slot:
    """One user name: its current ChatClient (a fresh one after each churn), what it sent and what it got."""

    def __init__(self, name: str, key: crypto.PrivateKey, stable: bool) -> None:
        self.name = name
        self.key = key
        self.stable = stable
        self.client: ChatClient | None = None
        self.connect_at: float | None = 0.0  # when to start a login (None: nothing scheduled)
        self.logging_in = False
        self.rejoining = False
        self.leave_at = math.inf
        self.seq = 0
        self.seq_at_login = 0
        self.sent_at: dict[int, float] = {}  # seq -> when it was handed to the client
        self.accepted: dict[int, float] = {}  # seq -> the broker's received time
        self.refused: list[int] = []
        self.abandoned: list[int] = []  # given up by a client closing for good with no answer from the broker
        self.waiting: dict[str, int] = {}  # message id -> seq, until the broker answers
        self.clients = 0  # ChatClients made for this name so far; the current one is number clients - 1
        self.client_own: set[int] = set()  # own seqs the current client had accepted or shown
        self.sessions: list[ReceiverSession] = []
        self.current: ReceiverSession | None = None
        self.from_history: set[str] = set()  # senders the current session has shown history of
        self.then_live: set[str] = set()  # ...and then live messages of
        self.distinct: set[tuple[str, int]] = set()
        self.from_others = 0  # len() of the pairs in `distinct` not sent by this name

    @property
    def online(self) -> bool:
        return self.client is not None and self.client.online


class Worker:
    def __init__(self, spec: WorkerSpec, out: Queue[Message]) -> None:
        zchat.client.driver.MAX_FRAMES_PER_POLL = FRAMES_PER_POLL  # in this worker process only
        self.spec = spec
        self.out = out
        self.rng = random.Random(spec.seed)  # noqa: S311 - load pattern, not a secret
        self.context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.context.set(zmq.MAX_SOCKETS, max(1024, 4 * len(spec.names) + 64))
        layout = KeyLayout(spec.keys_root)
        self.broker_key = crypto.load_public_key_file(layout.broker_public)
        self.slots = [
            Slot(name, crypto.load_private_key(layout.client_private(name)), name in spec.stable) for name in spec.names
        ]
        self.result = WorkerResult(spec.wid)
        self.t0: float | None = None
        self.sends_done = 0
        self.sent_reported = False
        self.ready_reported = False
        self.next_progress = 0.0
        self.parent = os.getppid()

    # ------------------------------------------------------------ the loop

    def run(self, control: Queue[Message]) -> None:
        while True:
            started = time.time()
            if started > self.spec.deadline or os.getppid() != self.parent:
                raise TimeoutError("worker deadline passed (or the soak runner is gone)")
            command = self._command(control)
            if command is not None:
                if command[0] == "go":
                    self._go(float(command[1]))
                elif command[0] == "finish":
                    self._finish()
                    return
                elif command[0] == "abort":
                    self._close_all(say_bye=False)
                    return
            busy = self._turn(started)
            self.result.max_turn_s = max(self.result.max_turn_s, time.time() - started)
            if not busy:
                time.sleep(IDLE_SLEEP)

    @staticmethod
    def _command(control: Queue[Message]) -> Message | None:
        try:
            return control.get_nowait()
        except queue.Empty:
            return None

    def _turn(self, now: float) -> bool:
        busy = False
        in_flight = sum(1 for slot in self.slots if slot.logging_in)
        for slot in self.slots:
            if slot.client is None:
                limited = self.t0 is None and in_flight >= self.spec.logins_in_flight
                if slot.connect_at is not None and now >= slot.connect_at and not limited:
                    self._start_login(slot)
                    in_flight += 1
                    busy = True
                continue
            busy = self._pump(slot, now) or busy
        if self.t0 is None:
            if not self.ready_reported and all(slot.online for slot in self.slots):
                self.ready_reported = True
                self.out.put(("ready", self.spec.wid, None))
            return busy
        end = self.t0 + self.spec.duration
        if now < end:
            busy = self._send_due(now) or busy
            busy = self._churn(now) or busy
        elif not self.sent_reported:
            busy = self._send_due(end) or busy  # what a slow last turn left due
            self.sent_reported = True
            self.result.sent = {slot.name: slot.seq for slot in self.slots}
            self.out.put(("sent", self.spec.wid, dict(self.result.sent)))
        if self.sent_reported and now >= self.next_progress:
            self.next_progress = now + PROGRESS_EVERY
            self.out.put(("progress", self.spec.wid, self._progress()))
        return busy

    # ------------------------------------------------------------ clients

    def _start_login(self, slot: Slot) -> None:
        slot.connect_at = None
        slot.logging_in = True
        client = ChatClient(
            "127.0.0.1",
            self.spec.port,
            slot.name,
            slot.key,
            self.broker_key,
            bot=True,
            connect_timeout=self.spec.connect_timeout,
            context=self.context,
        )
        slot.client = client
        slot.clients += 1
        slot.client_own = set()
        client.start_login()

    def _pump(self, slot: Slot, now: float) -> bool:
        """Poll one client without waiting and handle what it received; True if anything happened."""
        client = slot.client
        if client is None:
            return False
        try:
            client.poll(0)
        except ConnectError as exc:  # a login failed for good: refused, busy, or no answer in time
            # A client that was logged in before gives up too when a re-login is refused: its messages
            # still waiting come as Failed "not confirmed" events, which must be counted.
            for event in client.drain():
                self._on_event(slot, event)
            self.result.login_failures += 1
            if client.core.logged_in_before:
                self.result.relogins_refused += 1
                self._notice(f"a re-login failed for good: {exc}")
            else:
                self._notice(f"login failed: {exc}")
            slot.client = None
            slot.current = None
            slot.logging_in = False
            slot.connect_at = now + RETRY_AFTER_FAILED_LOGIN
            return True
        events = client.drain()
        for event in events:
            self._on_event(slot, event)
        if client.closed and slot.client is client:  # the broker shut down or ended the session for good
            slot.client = None
            slot.current = None
            slot.logging_in = False
            slot.connect_at = now + RETRY_AFTER_FAILED_LOGIN
        return bool(events)

    def _on_event(self, slot: Slot, event: Event) -> None:
        if isinstance(event, ChatMessage):
            self._on_chat(slot, event)
        elif isinstance(event, Welcome):
            if slot.sessions and slot.sessions[-1].client == slot.clients - 1:
                self.result.relogins += 1
            slot.current = ReceiverSession(slot.clients - 1, started=time.time())
            slot.sessions.append(slot.current)
            slot.from_history, slot.then_live = set(), set()
            slot.seq_at_login = slot.seq
            slot.logging_in = False
            if slot.rejoining:
                slot.rejoining = False
                self.result.reconnects += 1
            self._schedule_leave(slot, time.time())
        elif isinstance(event, Accepted):
            seq = slot.waiting.pop(event.message_id, None)
            if seq is None:
                self._notice("an answer for a message not sent: accepted")
            else:
                slot.accepted[seq] = event.received
                slot.client_own.add(seq)
            self.result.duplicate_answers += event.duplicate
        elif isinstance(event, Failed):
            seq = slot.waiting.pop(event.message_id, None)
            if seq is None:
                self._notice(f"an answer for a message not sent: {event.reason}")
            elif event.reason.startswith(GIVEN_UP):
                slot.abandoned.append(seq)  # the client closed without the broker's answer: its fate is unknown
                self._notice(f"a message given up: {event.reason}")
            else:
                slot.refused.append(seq)
                self.result.refused_by_client += event.reason.startswith(NOT_SENT)
                self._notice(f"a message refused: {event.reason}")
        elif isinstance(event, Notice):
            self._notice(event.message)
        elif isinstance(event, ConnectionLost):
            self.result.connection_losses += 1
            self._notice(f"connection lost: {event.reason}")
            slot.current = None
        elif isinstance(event, Shutdown | SessionClosed):
            self.result.closed_by_broker += 1
            self._notice(f"session ended by the broker: {event}")
            slot.current = None
        elif not isinstance(event, Joined | Left):
            self._notice(f"other event: {type(event).__name__}")

    def _on_chat(self, slot: Slot, event: ChatMessage) -> None:
        """Record a message the client shows: live, or replayed from the history after a login (which counts:
        after the broker died it is how a receiver gets what was said while it was logging in again)."""
        received_at = time.time()
        self.result.history_replayed += event.history
        parsed = parse_text(event.text)
        if parsed is None or parsed[0] != event.sender:
            self.result.unparsed += 1
            return
        sender, seq, sent_at = parsed
        if sender == slot.name and event.history:  # our own line, as everyone else sees it: not a delivery
            if seq in slot.client_own:  # the client records its own line as shown when it is accepted
                self.result.own_repeated += 1
            elif seq in slot.waiting.values():
                self.result.own_history_pending += 1
            else:
                self.result.own_history += 1
            slot.client_own.add(seq)
            return
        if slot.current is None:  # cannot happen: chat arrives only inside a session
            slot.current = ReceiverSession(slot.clients - 1)
            slot.sessions.append(slot.current)
        slot.current.got.setdefault(sender, []).append(seq)
        if (sender, seq) not in slot.distinct:
            slot.distinct.add((sender, seq))
            slot.from_others += sender != slot.name
        if event.history:
            slot.from_history.add(sender)
        else:
            self.result.latencies_ms.append((received_at - sent_at) * 1000)
            if sender in slot.from_history and sender not in slot.then_live:
                slot.then_live.add(sender)
                self.result.history_then_live += 1

    def _notice(self, text: str) -> None:
        text = NAMES_IN_NOTICES.sub("<name>", text)  # one line per kind of notice, not per client
        if len(self.result.notices) < MAX_NOTICES_KEPT or text in self.result.notices:
            self.result.notices[text] += 1

    # ------------------------------------------------------------ phases

    def _go(self, t0: float) -> None:
        self.t0 = t0
        for slot in self.slots:
            if slot.online:
                self._schedule_leave(slot, t0)

    def _schedule_leave(self, slot: Slot, now: float) -> None:
        if slot.stable or self.spec.churn <= 0 or self.t0 is None:
            slot.leave_at = math.inf
        else:
            slot.leave_at = max(now, self.t0) + self.rng.expovariate(self.spec.churn)

    def _send_due(self, now: float) -> bool:
        if self.t0 is None:
            return False
        due = min(math.floor((now - self.t0) * self.spec.rate), math.floor(self.spec.duration * self.spec.rate))
        sent_any = False
        while self.sends_done < due:
            self.sends_done += 1
            # Online, or logging in again after a lost connection (the broker died): a person types on, and
            # the client keeps the message in its outbox until it is logged in again.
            able = [(slot, slot.client) for slot in self.slots if slot.client is not None and sendable(slot.client)]
            if not able:
                self.result.skipped_sends += 1
                continue
            slot, client = self.rng.choice(able)
            try:
                message_id = client.send(message_text(slot.name, slot.seq + 1, time.time()))
            except (ConnectError, ValueError) as exc:
                self.result.send_errors += 1
                self._notice(f"send failed: {exc}")
                continue
            slot.seq += 1
            slot.waiting[message_id] = slot.seq
            slot.sent_at[slot.seq] = time.time()
            sent_any = True
        return sent_any

    def _churn(self, now: float) -> bool:
        churned = False
        for slot in self.slots:
            if slot.client is None or not slot.client.online or now < slot.leave_at:
                continue
            if slot.client.pending:  # leave once the broker answered what this client sent
                continue
            if slot.seq > slot.seq_at_login:
                self.result.last_before_leave.append((slot.name, slot.seq))
            slot.client.close()  # says bye; the shared context flushes it in the background
            slot.client = None
            slot.current = None
            slot.leave_at = math.inf
            slot.rejoining = True
            slot.connect_at = now + self.rng.uniform(*REJOIN_DELAY)
            self.result.churn_leaves += 1
            churned = True
        return churned

    def _progress(self) -> Progress:
        have = {slot.name: slot.from_others for slot in self.slots if slot.stable}
        accepted = {slot.name: len(slot.accepted) for slot in self.slots}
        return Progress(have, accepted, {slot.name: len(slot.waiting) for slot in self.slots})

    def _finish(self) -> None:
        self._close_all(say_bye=True)
        result = self.result
        result.sent_at = {slot.name: dict(slot.sent_at) for slot in self.slots}
        result.accepted = {slot.name: dict(slot.accepted) for slot in self.slots}
        result.refused = {slot.name: sorted(set(slot.refused)) for slot in self.slots}
        result.abandoned = {slot.name: sorted(set(slot.abandoned)) for slot in self.slots}
        result.sessions = {slot.name: slot.sessions for slot in self.slots}
        if not result.sent:
            result.sent = {slot.name: slot.seq for slot in self.slots}
        self.out.put(("result", self.spec.wid, result))

    def _close_all(self, say_bye: bool) -> None:
        for slot in self.slots:
            if slot.client is not None:
                slot.client.close(say_bye=say_bye)
                slot.client = None
        self.context.term()  # returns once the goodbyes are flushed (each socket lingers at most 1 s)


def sendable(client: ChatClient) -> bool:
    """Logged in, or logging in again: not a first login, not closed."""
    return client.online or (client.core.logged_in_before and not client.closed)


def worker_main(spec: WorkerSpec, out: Queue[Message], control: Queue[Message]) -> None:
    """Entry point of a worker process. Ctrl-C is left to the parent, which stops the workers itself."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        worker = Worker(spec, out)
        worker.run(control)
    except BaseException:
        out.put(("error", spec.wid, traceback.format_exc()))
        raise SystemExit(1) from None
