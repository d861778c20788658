"""The honest users: one process that drives every honest `ChatClient` in one non-blocking round-robin loop.

As in `soak.worker`, a client heartbeats only while it is polled, so the loop
never blocks on one client: each turn it polls every client with `poll(0)`,
handles what it drained and sends what the schedule says is due. Sender and
receivers live in this one process, so a delivery's latency is simply
`time.monotonic()` at receipt minus `time.monotonic()` at `send()`.

Talks to `attack.run` over two queues:

    parent -> here   ("go", t0)             t0 a time.monotonic() value (one clock for every process on Linux)
    here -> parent   ("ready", "honest", None)  ("result", "honest", HonestResult)  ("error", "honest", traceback)

Phases: log everyone in, report ready, wait for go; from t0 for `duration`
seconds each client sends a numbered message every `interval` seconds
(staggered); then keep receiving until every client holds every other
client's messages or `drain` seconds pass; close every client; report.
"""

from __future__ import annotations

import queue
import resource
import signal
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from multiprocessing.queues import Queue
from pathlib import Path
from typing import Any

import zmq

from zchat import crypto
from zchat.client.sync_client import ChatClient
from zchat.errors import ConnectError
from zchat.events import (
    Accepted,
    ChatMessage,
    ConnectionLost,
    Failed,
    Joined,
    Left,
    Notice,
    SessionClosed,
    Shutdown,
    Welcome,
)
from zchat.keystore import KeyLayout

PREFIX = "attack-honest"
LOGIN_TIMEOUT = 60.0
GO_TIMEOUT = 120.0
IDLE_SLEEP = 0.001
MAX_NOTICES = 20

Message = tuple[Any, ...]


@dataclass(frozen=True)
class HonestSpec:
    port: int
    keys_root: Path
    names: tuple[str, ...]
    interval: float  # seconds between one client's messages
    duration: float
    drain: float  # seconds to wait at most, after sending, for every delivery


@dataclass
class HonestResult:
    sent: dict[str, int] = field(default_factory=dict)
    # (receiver, sender) -> distinct sequence numbers received
    received: dict[tuple[str, str], int] = field(default_factory=dict)
    duplicated: int = 0
    unexpected: int = 0  # chat that is not one of ours, or a sequence number never sent
    latencies_ms: list[float] = field(default_factory=list)
    connection_losses: int = 0
    sessions_closed: int = 0
    send_errors: int = 0
    login_s: float = 0.0
    drain_s: float = 0.0
    drained: bool = False
    max_turn_s: float = 0.0
    cpu_s: float = 0.0
    notices: Counter[str] = field(default_factory=Counter)

    def expected(self) -> int:
        names = list(self.sent)
        return sum(self.sent[s] for r in names for s in names if r != s)

    def lost(self) -> int:
        names = list(self.sent)
        return sum(max(0, self.sent[s] - self.received.get((r, s), 0)) for r in names for s in names if r != s)


def text_of(sender: str, seq: int) -> str:
    return f"{PREFIX} {sender} {seq}"


def parse(text: str) -> tuple[str, int] | None:
    parts = text.split(" ")
    if len(parts) != 3 or parts[0] != PREFIX or not parts[2].isdigit():
        return None
    return parts[1], int(parts[2])


class Honest:
    def __init__(self, spec: HonestSpec) -> None:
        self.spec = spec
        self.context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        layout = KeyLayout(spec.keys_root)
        broker_key = crypto.load_public_key_file(layout.broker_public)
        self.clients = {
            name: ChatClient(
                "127.0.0.1",
                spec.port,
                name,
                crypto.load_private_key(layout.client_private(name)),
                broker_key,
                bot=True,
                history=False,
                context=self.context,
            )
            for name in spec.names
        }
        self.result = HonestResult(sent=dict.fromkeys(spec.names, 0))
        self.sent_at: dict[tuple[str, int], float] = {}
        self.seen: set[tuple[str, str, int]] = set()

    def notice(self, text: str) -> None:
        if len(self.result.notices) < MAX_NOTICES or text in self.result.notices:
            self.result.notices[text] += 1

    def turn(self) -> bool:
        """Poll every client once and handle its events; True if anything arrived."""
        busy = False
        for name, client in self.clients.items():
            try:
                client.poll(0)
            except ConnectError as exc:
                self.notice(f"{name}: {exc}")
                continue
            for event in client.drain():
                busy = True
                self.on_event(name, event)
        return busy

    def on_event(self, receiver: str, event: object) -> None:
        if isinstance(event, ChatMessage):
            parsed = parse(event.text)
            if parsed is None or parsed[0] != event.sender or event.sender == receiver:
                if event.sender in self.clients:
                    self.result.unexpected += 1
                return  # an insider's chat, or nothing of ours
            sender, seq = parsed
            sent_at = self.sent_at.get((sender, seq))
            if sent_at is None:
                self.result.unexpected += 1
                return
            if (receiver, sender, seq) in self.seen:
                self.result.duplicated += 1
                return
            self.seen.add((receiver, sender, seq))
            key = (receiver, sender)
            self.result.received[key] = self.result.received.get(key, 0) + 1
            self.result.latencies_ms.append((time.monotonic() - sent_at) * 1000)
        elif isinstance(event, ConnectionLost):
            self.result.connection_losses += 1
            self.notice(f"{receiver}: connection lost: {event.reason}")
        elif isinstance(event, SessionClosed | Shutdown):
            self.result.sessions_closed += 1
            self.notice(f"{receiver}: session ended: {event}")
        elif isinstance(event, Notice):
            self.notice(f"{receiver}: notice: {event.message}")
        elif isinstance(event, Failed):
            self.notice(f"{receiver}: not delivered: {event.reason}")
        elif not isinstance(event, Welcome | Joined | Left | Accepted):
            self.notice(f"{receiver}: {type(event).__name__}")

    def login(self) -> None:
        started = time.monotonic()
        for client in self.clients.values():
            client.start_login()
        while not all(client.online for client in self.clients.values()):
            if time.monotonic() - started > LOGIN_TIMEOUT:
                offline = [name for name, client in self.clients.items() if not client.online]
                raise TimeoutError(f"not logged in after {LOGIN_TIMEOUT:g}s: {', '.join(offline)}")
            if not self.turn():
                time.sleep(IDLE_SLEEP)
        self.result.login_s = round(time.monotonic() - started, 2)

    def idle(self, control: Queue[Message]) -> float:
        """Keep everyone's heartbeats going until the parent says go; returns t0."""
        deadline = time.monotonic() + GO_TIMEOUT
        while time.monotonic() < deadline:
            try:
                command = control.get_nowait()
            except queue.Empty:
                if not self.turn():
                    time.sleep(IDLE_SLEEP)
                continue
            if command[0] == "go":
                return float(command[1])
        raise TimeoutError("no go from the attack runner")

    def chat(self, t0: float) -> None:
        names = list(self.clients)
        interval = self.spec.interval
        per_client = int(self.spec.duration / interval)
        # client i sends message n (from 1) at t0 + (i / clients + n - 1) * interval
        offsets = {name: i * interval / len(names) for i, name in enumerate(names)}
        end = t0 + self.spec.duration
        while (now := time.monotonic()) < end:
            for name in names:
                while self.result.sent[name] < min(self.due(name, now, t0, offsets), per_client):
                    seq = self.result.sent[name] + 1
                    self.sent_at[(name, seq)] = time.monotonic()
                    try:
                        self.clients[name].send(text_of(name, seq))
                    except (ConnectError, ValueError) as exc:
                        self.result.send_errors += 1
                        self.notice(f"{name}: send failed: {exc}")
                    self.result.sent[name] = seq
            busy = self.turn()
            self.result.max_turn_s = max(self.result.max_turn_s, time.monotonic() - now)
            if not busy:
                time.sleep(IDLE_SLEEP)

    def due(self, name: str, now: float, t0: float, offsets: dict[str, float]) -> int:
        elapsed = now - t0 - offsets[name]
        return 0 if elapsed < 0 else int(elapsed / self.spec.interval) + 1

    def drain(self) -> None:
        started = time.monotonic()
        while time.monotonic() - started < self.spec.drain:
            if self.result.lost() == 0:
                self.result.drained = True
                break
            if not self.turn():
                time.sleep(IDLE_SLEEP)
        self.result.drain_s = round(time.monotonic() - started, 2)

    def close(self) -> None:
        for client in self.clients.values():
            client.close()
        self.context.term()


def honest_main(spec: HonestSpec, out: Queue[Message], control: Queue[Message]) -> None:
    """Entry point of the honest users' process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the runner stops us
    try:
        honest = Honest(spec)
        honest.login()
        out.put(("ready", "honest", None))
        t0 = honest.idle(control)
        cpu_before = resource.getrusage(resource.RUSAGE_SELF)
        honest.chat(t0)
        honest.drain()
        honest.close()
        cpu_after = resource.getrusage(resource.RUSAGE_SELF)
        honest.result.cpu_s = round(
            cpu_after.ru_utime + cpu_after.ru_stime - cpu_before.ru_utime - cpu_before.ru_stime, 2
        )
        out.put(("result", "honest", honest.result))
    except BaseException:
        out.put(("error", "honest", traceback.format_exc()))
        raise SystemExit(1) from None
