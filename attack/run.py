"""The attack runner: a real broker, honest users chatting, every attack at once (issues 11 and 18), the verdict.

    python -m attack [--duration 30] [--clients 6] [--interval 0.2] [--bits 2048] [--quick] [--json] [--keep]

Steps:

1. a temporary directory with config.json (port 0, every limit at its
   default) and keys made in parallel: the broker's, one per honest user, the
   insiders (registered users who attack: `mallory`, `eve` for issue 11, and
   one per attack of issue 18) and `absent`, registered but never online;
2. `broker.py --config DIR/config.json` as its own process (default crypto
   workers), output to DIR/broker.log, its port read from "listening on";
3. the honest users' process (`attack.honest`) logs everyone in; the
   attacker processes (`attack.attackers`) start, take their steps before the
   go (`PREPARE`) and wait;
4. go: for `--duration` seconds the honest users chat while every attack
   runs; the resident memory of the broker and its child processes, the CPU
   time of the broker's process and the size of its store (data/zchat.db and
   its -wal) are sampled every 0.15 s throughout; then the honest users drain
   (up to `--drain` seconds), close, the mail table is counted (row counts
   and sizes are in clear), and the broker gets SIGTERM;
5. the report (a table, or one JSON object with `--json`) and the verdict
   against the targets: the broker stayed up, memory growth <= 100 MB, store
   growth <= the attackers' quotas (`store_bound`), honest p99 latency <= 1 s,
   nothing lost or duplicated, the refilling insider held to its message rate,
   and the connection flood costing the broker at most a quarter of a core
   (`flood_share`). Exit status 0 only when all hold.

Ctrl-C or an error kills the broker and every child process on the way out.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import multiprocessing
import multiprocessing.context
import multiprocessing.process
import os
import queue
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.queues import Queue
from pathlib import Path
from typing import Any

from attack.attackers import ATTACKS, attacker_main
from attack.common import AttackSpec, Stats
from attack.flood import PULSE
from attack.honest import HonestResult, HonestSpec, honest_main
from attack.zmtp import predicted_counters
from harness.keys import make_keys
from harness.process import BrokerProcess, HarnessError
from harness.procfs import NoSuchReading, cpu_seconds
from harness.stats import percentile
from harness.tool import Cleanup, run_tool, say
from zchat import crypto
from zchat.broker.main import DATABASE_FILE
from zchat.client.session import ClientSession
from zchat.config import Config, load_config
from zchat.keystore import KeyLayout
from zchat.protocol import max_body_bytes

# Registered users who attack: issue 11's two, then one per attack of issue 18.
INSIDERS = ("mallory", "eve", "selfmailer", "awaymailer", "churner", "holder", "searcher", "refiller")
ABSENT = "absent"  # registered, never online: the away mailer's recipient
# Issue 18's attacks that send mail, and the insider who sends it.
MAILERS = {"mail_self": "selfmailer", "mail_away": "awaymailer", "rate_refill": "refiller"}
BROKER_START_TIMEOUT = 30.0
BROKER_STOP_TIMEOUT = 30.0
READY_TIMEOUT = 90.0
SAMPLE_EVERY = 0.15

# The targets (issues 11 and 18), on 2 cores.
MAX_MEMORY_GROWTH_MB = 100.0
MAX_P99_MS = 1000.0
MAX_FLOOD_SHARE = 0.25  # of a core: what one address flooding connections may cost the broker
PULSE_MARGIN = 0.4  # seconds left out at each end of a flood pulse when the broker's CPU share is measured

Message = tuple[Any, ...]


class AttackError(HarnessError):
    """The run itself failed: the broker never started, the honest users could not log in, a process died."""


def log(message: str) -> None:
    say("attack", message)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m attack",
        description="Every attack of issues 11 and 18 at once on a real broker while honest users chat; a verdict.",
    )
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of chat and attack (default 30)")
    parser.add_argument("--clients", type=int, help="honest users (default 6; 3 with --quick)")
    parser.add_argument("--interval", type=float, default=0.2, help="seconds between one user's messages (0.2)")
    parser.add_argument("--bits", type=int, default=2048, choices=[2048, 3072], help="RSA key size (default 2048)")
    parser.add_argument("--drain", type=float, help="seconds to wait for the last deliveries (default 15; 5 quick)")
    parser.add_argument("--flood-sources", type=int, default=8, help="source addresses of the connection flood (8)")
    parser.add_argument(
        "--attacks",
        default=",".join(ATTACKS),
        help=f"comma-separated attacks to run (default all: {','.join(ATTACKS)}; 'none' for a baseline)",
    )
    parser.add_argument("--quick", action="store_true", help="small scale: fewer users, a tenth of every attack rate")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (config, keys, broker.log)")
    parser.add_argument("--timeout", type=float, help="hard limit for the whole run in seconds (default: generous)")
    args = parser.parse_args(argv)
    if args.clients is None:
        args.clients = 3 if args.quick else 6
    if args.drain is None:
        args.drain = 5.0 if args.quick else 15.0
    if args.clients < 2:
        parser.error("--clients must be at least 2")
    if not args.duration > 0 or not args.interval > 0 or args.drain < 0:
        parser.error("--duration and --interval must be positive, --drain not negative")
    if not 1 <= args.flood_sources <= 250:
        parser.error("--flood-sources must be from 1 to 250")
    args.attacks = [] if args.attacks == "none" else [a.strip() for a in args.attacks.split(",") if a.strip()]
    unknown = sorted(set(args.attacks) - set(ATTACKS))
    if unknown:
        parser.error(f"unknown attack(s): {', '.join(unknown)}")
    args.scale = 0.1 if args.quick else 1.0
    if args.timeout is None:
        args.timeout = 180 + 2 * args.duration + args.drain + 10 * args.clients
    return args


# ---------------------------------------------------------------- keys and config


# Every limit at its default: the point is what a broker as shipped withstands.
BROKER_CONFIG = {"server_ip": "127.0.0.1", "server_port": 0, "keys_dir": "keys"}


# ---------------------------------------------------------------- the broker


def log_numbers(data: bytes) -> dict[str, Any]:
    """What the broker's log holds: its size, and what went wrong in it."""
    text = data.decode("utf-8", errors="replace")
    lines = text.splitlines()
    return {
        "log_bytes": len(data),
        "log_lines": len(lines),
        "tracebacks": text.count("Traceback"),
        "assertion_failures": text.count("Assertion failed"),
        "internal_errors": text.count("internal error"),
        "suppressed_summaries": sum("suppressed" in line for line in lines),
        "errors_or_warnings": sum(" ERROR " in line or " WARNING " in line for line in lines),
    }


# ---------------------------------------------------------------- children


@dataclass
class Children:
    procs: dict[str, multiprocessing.process.BaseProcess]
    out: Queue[Message]
    honest_control: Queue[Message]
    go: Any  # a multiprocessing Event
    armed: set[str] = field(default_factory=set)
    ready: bool = False
    results: dict[str, Any] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)

    def receive(self, timeout: float) -> None:
        try:
            kind, who, payload = self.out.get(timeout=timeout)
        except queue.Empty:
            return
        if kind == "armed":
            self.armed.add(who)
        elif kind == "ready":
            self.ready = True
        elif kind == "result":
            self.results[who] = payload
        elif kind == "error":
            self.errors[who] = payload

    def dead_without_report(self) -> list[str]:
        return [
            who
            for who, proc in self.procs.items()
            if proc.exitcode is not None and who not in self.results and who not in self.errors
        ]

    def wait(self, what: str, done: Callable[[], bool], timeout: float, broker: BrokerProcess) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            if "honest" in self.errors:
                raise AttackError(f"the honest users failed:\n{self.errors['honest']}")
            if not broker.alive():
                raise AttackError(
                    f"the broker exited with status {broker.running_proc.returncode}:\n{broker.log_tail()}"
                )
            if time.monotonic() > deadline:
                raise AttackError(f"timed out after {timeout:g}s waiting for {what}")
            self.receive(0.1)

    def stop(self) -> None:
        self.honest_control.cancel_join_thread()
        for proc in self.procs.values():
            if proc.is_alive():
                proc.terminate()
        for proc in self.procs.values():
            proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join(5)


@dataclass(frozen=True)
class Memory:
    """Resident memory of the broker and its children (MiB): before the attacks, the peak, at the end."""

    baseline: float
    peak: float
    end: float | None
    samples: int


# ---------------------------------------------------------------- the store


def store_bytes(data_dir: Path) -> int:
    """The size of the broker's database on disk: zchat.db and its write-ahead log."""
    total = 0
    for name in (DATABASE_FILE, DATABASE_FILE + "-wal"):
        with contextlib.suppress(OSError):
            total += (data_dir / name).stat().st_size
    return total


@dataclass(frozen=True)
class StoreBound:
    """What the attackers may make the store hold, from the config: their mailboxes, their senders' quotas of
    mail waiting for others, and the room history (`history_size` messages of the largest size)."""

    mailboxes: tuple[str, ...]  # the attackers' recipients
    senders: tuple[str, ...]  # the attackers who mail
    mailbox_bytes: int
    sent_mail_bytes: int
    history_size: int
    max_message_bytes: int

    @classmethod
    def of(cls, config: Config, attacks: list[str], recipients: dict[str, str]) -> StoreBound:
        mailers = [kind for kind in attacks if kind in MAILERS]
        return cls(
            mailboxes=tuple(sorted({recipients[kind] for kind in mailers})),
            senders=tuple(sorted(MAILERS[kind] for kind in mailers)),
            mailbox_bytes=config.mailbox_bytes,
            sent_mail_bytes=config.sent_mail_bytes,
            history_size=config.history_size,
            max_message_bytes=max_body_bytes(config.max_text_bytes),
        )

    def numbers(self) -> dict[str, Any]:
        """The bound's terms, for the report."""
        return {
            "mailboxes": list(self.mailboxes),
            "mailbox_bytes": self.mailbox_bytes,
            "senders": list(self.senders),
            "sent_mail_bytes": self.sent_mail_bytes,
            "history_size": self.history_size,
            "max_message_bytes": self.max_message_bytes,
        }

    @property
    def total(self) -> int:
        return (
            len(self.mailboxes) * self.mailbox_bytes
            + len(self.senders) * self.sent_mail_bytes
            + self.history_size * self.max_message_bytes
        )


def mail_census(data_dir: Path) -> dict[str, Any]:
    """What the store holds at the end, read-only: the rooms' history, and the mail by mailbox (recipients are
    HMAC tags, but row counts and sizes are in clear), largest first."""
    try:
        db = sqlite3.connect(f"file:{data_dir / DATABASE_FILE}?mode=ro", uri=True, timeout=5)
    except sqlite3.Error as exc:
        return {"error": str(exc)}
    try:
        boxes = db.execute(
            "SELECT count(*), coalesce(sum(size), 0) FROM mail GROUP BY recipient ORDER BY 2 DESC"
        ).fetchall()
        history = int(db.execute("SELECT count(*) FROM chat").fetchone()[0])
        seen = int(db.execute("SELECT count(*) FROM seen").fetchone()[0])
    except sqlite3.Error as exc:
        return {"error": str(exc)}
    finally:
        db.close()
    return {
        "mail_rows": sum(int(rows) for rows, _ in boxes),
        "mail_mb": round(sum(int(size) for _, size in boxes) / 1e6, 1),
        "mailboxes": [{"rows": int(rows), "mb": round(int(size) / 1e6, 2)} for rows, size in boxes[:5]],
        "history_rows": history,
        "seen_rows": seen,
    }


# ---------------------------------------------------------------- the broker's CPU during the flood's pulses


Sample = tuple[float, float]  # (time.monotonic(), CPU seconds)


def _cpu_at(samples: list[Sample], t: float) -> float | None:
    """The CPU seconds at `t`, interpolated between the samples around it."""
    for (t1, c1), (t2, c2) in itertools.pairwise(samples):
        if t1 <= t <= t2:
            return c1 if t2 == t1 else c1 + (c2 - c1) * (t - t1) / (t2 - t1)
    return None


def pulse_shares(samples: list[Sample], pulse_start: float, end: float) -> tuple[float, float] | None:
    """The CPU share (cores) of what `samples` measure while the flood is on, and while it is off. Each
    pulse's first and last PULSE_MARGIN seconds are left out."""
    totals = {True: [0.0, 0.0], False: [0.0, 0.0]}  # on -> [cpu seconds, seconds]
    k = 0
    while (begin := pulse_start + k * PULSE + PULSE_MARGIN) < end:
        finish = pulse_start + (k + 1) * PULSE - PULSE_MARGIN
        if finish <= end:
            c1, c2 = _cpu_at(samples, begin), _cpu_at(samples, finish)
            if c1 is not None and c2 is not None:
                totals[k % 2 == 0][0] += c2 - c1
                totals[k % 2 == 0][1] += finish - begin
        k += 1
    if not totals[True][1] or not totals[False][1]:
        return None
    return totals[True][0] / totals[True][1], totals[False][0] / totals[False][1]


def flood_share(process: list[Sample], threads: list[Sample], pulse_start: float, end: float) -> dict[str, float]:
    """What the flood costs the broker's process (its crypto workers are not involved): the CPU share while
    the flood is on minus the share while it is off, for the whole process and for its threads other than the
    main loop (libzmq's I/O thread, which does the handshakes, and the gatekeeper, which answers ZAP and
    watches connections). On a saturated machine the whole-process figure understates the cost (the flood
    takes CPU from the main loop), so the larger of the two is the flood's share."""
    numbers: dict[str, float] = {}
    for name, samples in (("process", process), ("threads", threads)):
        shares = pulse_shares(samples, pulse_start, end)
        if shares is not None:
            numbers[f"{name}_cores_on"] = round(shares[0], 3)
            numbers[f"{name}_cores_off"] = round(shares[1], 3)
            numbers[f"{name}_share"] = round(shares[0] - shares[1], 3)
    if "process_share" in numbers and "threads_share" in numbers:
        numbers["share"] = max(numbers["process_share"], numbers["threads_share"])
    return numbers


# ---------------------------------------------------------------- the run


def attack_specs(
    args: argparse.Namespace,
    port: int,
    keys_root: Path,
    config: Config,
    broker: BrokerProcess,
    captured: list[bytes],
    counters: list[int],
) -> tuple[list[AttackSpec], dict[str, str]]:
    """Every attack's spec (issue 11's, then issue 18's, each from its own addresses) and whom each mailer mails."""
    flood_sources = tuple(f"127.0.1.{i + 1}" for i in range(args.flood_sources))
    common = {"port": port, "keys_root": keys_root, "duration": args.duration, "scale": args.scale}

    def issue18(kind: str, source: str | tuple[str, ...], insider: str = "", **extra: Any) -> AttackSpec:
        """An attack of issue 18: its own address, its own registered user, the broker's limits it paces by."""
        return AttackSpec(
            kind,
            port,
            keys_root,
            args.duration,
            args.scale,
            (source,) if isinstance(source, str) else source,
            insider=insider,
            messages_per_second=config.messages_per_second_per_user,
            max_text_bytes=config.max_text_bytes,
            heartbeat_timeout=config.heartbeat_timeout,
            **extra,
        )

    recipients = {"mail_self": "selfmailer", "mail_away": ABSENT, "rate_refill": "refiller"}
    specs = [
        AttackSpec("random_bytes", sources=("127.0.0.2",), **common),
        AttackSpec("routing_claims", sources=("127.0.0.3",), insider="mallory", counters=tuple(counters), **common),
        AttackSpec("endless_multipart", sources=("127.0.0.4",), **common),
        AttackSpec("conn_flood", sources=flood_sources, **common),
        AttackSpec(
            "rsa_work",
            sources=("127.0.0.5", "127.0.0.6", "127.0.0.7"),
            insider="mallory",
            captured_hello=tuple(captured),
            **common,
        ),
        AttackSpec("log_amp", sources=("127.0.0.8",), insider="eve", **common),
        # Issue 18: each from its own address, as its own registered user.
        issue18("mail_self", "127.0.2.1", "selfmailer", recipient=recipients["mail_self"]),
        issue18("mail_away", "127.0.2.2", "awaymailer", recipient=recipients["mail_away"]),
        issue18("session_churn", "127.0.2.3", "churner"),
        issue18("held_multipart", ("127.0.2.7", "127.0.2.8"), "holder"),
        issue18("routing_search", "127.0.2.4", "searcher", broker_log=broker.log_path),
        issue18("rate_refill", "127.0.2.5", "refiller", recipient=recipients["rate_refill"]),
        issue18("hello_flood", "127.0.2.6"),
    ]
    return specs, recipients


@dataclass
class Watch:
    """What sampling the broker every SAMPLE_EVERY seconds while the honest users ran found."""

    peak_rss: float
    samples: int
    store_peak: int
    cpu_samples: list[Sample]  # the broker's process
    thread_samples: list[Sample]  # its threads other than the main loop
    broker_up: bool


def watch_broker(
    children: Children, broker: BrokerProcess, t0: float, hard_end: float, data_dir: Path, start: Watch
) -> Watch:
    """Sample the broker's memory, store and CPU from `start` on until the honest users report (or fail, or
    `hard_end` passes)."""
    watch = start
    next_sample = time.monotonic()
    while "honest" not in children.results and "honest" not in children.errors:
        now = time.monotonic()
        if now > hard_end:
            raise AttackError("the honest users did not report within a minute after the drain")
        if children.dead_without_report() == ["honest"]:
            raise AttackError("the honest users' process died without a report")
        if watch.broker_up and not broker.alive():
            watch.broker_up = False
            log(f"the broker died with status {broker.running_proc.returncode} at t+{now - t0:.1f}s")
        if watch.broker_up and now >= next_sample:
            watch.peak_rss = max(watch.peak_rss, broker.rss_mb())
            watch.store_peak = max(watch.store_peak, store_bytes(data_dir))
            with contextlib.suppress(OSError, NoSuchReading):
                pid, when = broker.pid, time.monotonic()
                process_cpu, main_cpu = cpu_seconds(pid), cpu_seconds(pid, pid)
                watch.cpu_samples.append((when, process_cpu))
                watch.thread_samples.append((when, process_cpu - main_cpu))
            watch.samples += 1
            next_sample = now + SAMPLE_EVERY
        children.receive(min(SAMPLE_EVERY, max(0.01, next_sample - time.monotonic())))
    return watch


def start_children(honest_spec: HonestSpec, specs: list[AttackSpec], cleanup: Cleanup) -> Children:
    """The honest users' process and one process per attack, spawned and started (stopped by `cleanup`)."""
    mp = multiprocessing.get_context("spawn")
    out: Queue[Message] = mp.Queue()
    honest_control: Queue[Message] = mp.Queue()
    go = mp.Event()
    procs: dict[str, multiprocessing.process.BaseProcess] = {}
    procs["honest"] = mp.Process(target=honest_main, args=(honest_spec, out, honest_control), name="attack-honest")
    for spec in specs:
        procs[spec.kind] = mp.Process(target=attacker_main, args=(spec, out, go), name=f"attack-{spec.kind}")
    children = Children(procs, out, honest_control, go)
    cleanup.append(children.stop)
    for proc in procs.values():
        proc.daemon = True
        proc.start()
    return children


@dataclass
class Arena:
    """The broker under attack, the honest users' and the attackers' processes, armed and waiting for the go."""

    broker: BrokerProcess
    config: Config
    names: list[str]  # the honest users
    specs: list[AttackSpec]
    recipients: dict[str, str]  # whom each mailing attack mails
    children: Children


@dataclass(frozen=True)
class Before:
    """The broker just before the go, and the go itself."""

    t0: float  # the go, time.monotonic()
    rss: float
    cpu: float
    store: int
    load: float


@dataclass(frozen=True)
class After:
    """The broker once the honest users and the attackers reported, and how it stopped."""

    up: bool
    rss: float | None
    cpu: float | None
    store: int
    census: dict[str, Any]
    exit_status: int | None


def prepare(args: argparse.Namespace, workdir: Path, cleanup: Cleanup) -> Arena:
    """Keys, the broker, the honest users logged in and every attacker armed."""
    started = time.monotonic()
    names = [f"honest{i}" for i in range(args.clients)]
    keys_root = workdir / "keys"
    registered = [*names, *INSIDERS, ABSENT]
    log(f"generating {len(registered) + 1} RSA-{args.bits} keys in {workdir}")
    make_keys(keys_root, registered, args.bits)
    counters = predicted_counters(8)

    broker = BrokerProcess(workdir, BROKER_CONFIG)
    cleanup.append(broker.kill)
    port = broker.start(timeout=BROKER_START_TIMEOUT).port
    config = load_config(broker.config_path)
    log(f"keys in {time.monotonic() - started:.1f}s; broker pid {broker.pid} on port {port}")

    layout = KeyLayout(keys_root)
    broker_rsa = crypto.load_public_key_file(layout.broker_public).rsa
    captured = ClientSession(names[0], crypto.load_private_key(layout.client_private(names[0])), broker_rsa).hello()

    honest_spec = HonestSpec(port, keys_root, tuple(names), args.interval, args.duration, args.drain)
    specs, recipients = attack_specs(args, port, keys_root, config, broker, captured, counters)
    specs = [spec for spec in specs if spec.kind in args.attacks]
    children = start_children(honest_spec, specs, cleanup)
    log(f"logging in {len(names)} honest users; arming {len(specs)} attackers")
    children.wait(
        "the honest users to log in and the attackers to arm",
        lambda: children.ready and len(children.armed) == len(specs),
        READY_TIMEOUT,
        broker,
    )
    if children.errors:
        raise AttackError("an attacker failed before the start:\n" + "\n".join(children.errors.values()))
    return Arena(broker, config, names, specs, recipients, children)


def go(args: argparse.Namespace, arena: Arena) -> tuple[Before, Watch]:
    """The go: honest users chat under every attack while the broker is watched, until they report."""
    broker, children, data_dir = arena.broker, arena.children, arena.config.data_dir
    baseline = broker.rss_mb()
    cpu_before = broker.cpu_seconds()
    store_start = store_bytes(data_dir)
    load_before = os.getloadavg()[0]
    t0 = time.monotonic() + 0.2
    children.honest_control.put(("go", t0))
    children.go.set()
    log(
        f"go: {len(arena.names)} users chat every {args.interval:g}s for {args.duration:g}s"
        f" under {len(arena.specs)} attacks"
    )
    hard_end = t0 + args.duration + args.drain + 60
    watch = watch_broker(children, broker, t0, hard_end, data_dir, Watch(baseline, 1, store_start, [], [], True))
    if "honest" in children.errors:
        raise AttackError(f"the honest users failed:\n{children.errors['honest']}")
    return Before(t0, baseline, cpu_before, store_start, load_before), watch


def wind_down(arena: Arena, before: Before, watch: Watch) -> After:
    """Wait for the attackers' reports (30 s at most), read the broker's last numbers and store, stop it."""
    broker, children, data_dir = arena.broker, arena.children, arena.config.data_dir

    def attackers_done() -> bool:
        return all(s.kind in children.results or s.kind in children.errors for s in arena.specs)

    deadline = time.monotonic() + 30
    while not attackers_done() and time.monotonic() < deadline and not children.dead_without_report():
        children.receive(0.1)
    broker_up = watch.broker_up and broker.alive()
    end_rss = broker.rss_mb() if broker_up else None
    broker_cpu = broker.cpu_seconds() - before.cpu if broker_up else None
    store_end = store_bytes(data_dir)
    census = mail_census(data_dir)
    for proc in children.procs.values():
        proc.join(10)
    exit_status = broker.stop(BROKER_STOP_TIMEOUT) if broker_up else broker.running_proc.returncode
    log(f"broker {'stopped' if broker_up else 'was down'}; exit status {exit_status}")
    return After(broker_up, end_rss, broker_cpu, store_end, census, exit_status)


def run(args: argparse.Namespace, workdir: Path, cleanup: Cleanup) -> dict[str, Any]:
    arena = prepare(args, workdir, cleanup)
    before, watch = go(args, arena)
    after = wind_down(arena, before, watch)
    honest: HonestResult = arena.children.results["honest"]
    memory = Memory(before.rss, watch.peak_rss, after.rss, watch.samples)
    args.load = (round(before.load, 2), round(os.getloadavg()[0], 2))
    store = {
        "start_mb": round(before.store / 1e6, 1),
        "peak_mb": round(watch.store_peak / 1e6, 1),
        "end_mb": round(after.store / 1e6, 1),
        "growth_mb": round((after.store - before.store) / 1e6, 1),
        "growth_bytes": after.store - before.store,
        **after.census,
    }
    bound = StoreBound.of(arena.config, [spec.kind for spec in arena.specs], arena.recipients)
    flood = arena.children.results.get("hello_flood")
    share = None
    if isinstance(flood, dict) and "pulse_start" in flood and watch.cpu_samples:
        pulse_start = float(flood.pop("pulse_start"))
        attack_end = min(before.t0 + args.duration, watch.cpu_samples[-1][0])
        share = flood_share(watch.cpu_samples, watch.thread_samples, pulse_start, attack_end)
    return report(
        args,
        arena.broker,
        after.up,
        after.exit_status,
        after.cpu,
        memory,
        honest,
        arena.children,
        arena.specs,
        arena.config,
        store,
        bound,
        share,
    )


def _round(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


def report(
    args: argparse.Namespace,
    broker: BrokerProcess,
    broker_up: bool,
    exit_status: int | None,
    broker_cpu: float | None,
    memory: Memory,
    honest: HonestResult,
    children: Children,
    specs: list[AttackSpec],
    config: Config,
    store: dict[str, Any],
    bound: StoreBound,
    share: dict[str, float] | None,
) -> dict[str, Any]:
    """The run's numbers, one section each, and the targets met or missed."""
    attacks = attack_results(children, specs)
    attacker_cpu = sum(float(s.get("cpu_s", 0)) for s in attacks.values() if isinstance(s, dict))
    targets = {
        "broker_up": broker_up,
        "memory_growth_le_100mb": memory.peak - memory.baseline <= MAX_MEMORY_GROWTH_MB,
        "store_growth_le_quotas": store["growth_bytes"] <= bound.total,
        **honest_targets(honest),
        **attack_targets(args, config, attacks, share),
    }
    return {
        "ok": all(targets.values()),
        "targets": targets,
        "duration_s": args.duration,
        "scale": args.scale,
        "key_bits": args.bits,
        "cores": len(os.sched_getaffinity(0)),
        "load_avg_1min_before_after": list(args.load),
        "broker": {
            "up": broker_up,
            "exit_status": exit_status,
            "cpu_s": _round(broker_cpu),
            **log_numbers(broker.log_path.read_bytes()),
            **({} if broker_up else {"log_tail": broker.log_tail()}),
        },
        "memory": {
            "baseline_mb": _round(memory.baseline),
            "peak_mb": _round(memory.peak),
            "end_mb": _round(memory.end),
            "growth_mb": _round(memory.peak - memory.baseline),
            "samples": memory.samples,
        },
        "store": {**store, "bound_mb": round(bound.total / 1e6, 1), "bound": bound.numbers()},
        "flood_cpu": share,
        "honest": honest_numbers(args, honest),
        "attacks": attacks,
        "attackers_cpu_s": round(attacker_cpu, 1),
    }


def attack_results(children: Children, specs: list[AttackSpec]) -> dict[str, Stats | str]:
    """Each attacker's stats, or the last line of its error (or "no report")."""
    attacks: dict[str, Stats | str] = {}
    for spec in specs:
        if spec.kind in children.results:
            attacks[spec.kind] = children.results[spec.kind]
        else:
            attacks[spec.kind] = children.errors.get(spec.kind, "no report").strip().splitlines()[-1]
    return attacks


def honest_targets(honest: HonestResult) -> dict[str, bool]:
    p99 = percentile(honest.latencies_ms, 99)
    return {
        "p99_le_1s": p99 is not None and p99 <= MAX_P99_MS,
        "nothing_lost": honest.lost() == 0 and honest.expected() > 0,
        "nothing_duplicated": honest.duplicated == 0,
    }


def attack_targets(
    args: argparse.Namespace, config: Config, attacks: dict[str, Stats | str], share: dict[str, float] | None
) -> dict[str, bool]:
    """The targets of the attacks that ran: the refilling user held to its rate, the flood's cost."""
    targets: dict[str, bool] = {}
    refill = attacks.get("rate_refill")
    if refill is not None:
        # The broker's bucket: `rate` per second, bursts of twice that.
        rate = config.messages_per_second_per_user
        targets["refill_within_rate"] = isinstance(refill, dict) and refill.get("accepted_seen", 0) <= rate * (
            args.duration + 2
        )
    if "hello_flood" in attacks:
        targets["flood_le_quarter_core"] = share is not None and share.get("share", 1.0) <= MAX_FLOOD_SHARE
    return targets


def honest_numbers(args: argparse.Namespace, honest: HonestResult) -> dict[str, Any]:
    return {
        "clients": len(honest.sent),
        "interval_s": args.interval,
        "sent": sum(honest.sent.values()),
        "expected_deliveries": honest.expected(),
        "delivered": len(honest.latencies_ms),
        "lost": honest.lost(),
        "duplicated": honest.duplicated,
        "unexpected": honest.unexpected,
        "latency_ms_p50": _round(percentile(honest.latencies_ms, 50)),
        "latency_ms_p99": _round(percentile(honest.latencies_ms, 99)),
        "latency_ms_max": _round(max(honest.latencies_ms, default=None)),
        "connection_losses": honest.connection_losses,
        "sessions_closed": honest.sessions_closed,
        "send_errors": honest.send_errors,
        "drained": honest.drained,
        "drain_s": honest.drain_s,
        "login_s": honest.login_s,
        "max_turn_s": _round(honest.max_turn_s, 3),
        "cpu_s": honest.cpu_s,
        "notices": dict(honest.notices.most_common(10)),
    }


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def print_report(numbers: dict[str, Any]) -> None:
    _print_broker(numbers["broker"], numbers["memory"], numbers["store"])
    _print_honest(numbers["honest"])
    _print_attacks(numbers)
    print("targets:")
    for name, met in numbers["targets"].items():
        print(f"  {name + ':':<24} {'met' if met else 'MISSED'}")
    load = numbers["load_avg_1min_before_after"]
    busy = " (already busy before the start: other work competed for the CPU)" if load[0] > 1.0 else ""
    print(f"machine:            {numbers['cores']} cores, 1-min load average {load[0]} before, {load[1]} after{busy}")
    print(f"verdict:            {'PASS' if numbers['ok'] else 'FAIL'}")


def _print_broker(b: dict[str, Any], m: dict[str, Any], st: dict[str, Any]) -> None:
    """The broker's lines: up, memory, store (and what it holds), log."""
    print(
        f"broker up:          {b['up']} (exit status after SIGTERM: {b['exit_status']};"
        f" {b['cpu_s']} CPU seconds during the run, workers included)"
    )
    print(
        f"broker memory:      {m['baseline_mb']} MB at the start, peak {m['peak_mb']} MB,"
        f" growth {m['growth_mb']} MB ({m['samples']} samples; broker + its worker processes)"
    )
    bd = st["bound"]
    print(
        f"broker store:       {st['start_mb']} MB at the start, peak {st['peak_mb']} MB, {st['end_mb']} MB at the end:"
        f" growth {st['growth_mb']} MB against a bound of {st['bound_mb']} MB"
        f" ({len(bd['mailboxes'])} mailboxes x {bd['mailbox_bytes']} + {len(bd['senders'])} senders x"
        f" {bd['sent_mail_bytes']} + history {bd['history_size']} x {bd['max_message_bytes']} bytes)"
    )
    if "error" in st:
        print(f"  store contents:   not read: {st['error']}")
    else:
        boxes = ", ".join(f"{box['rows']} ({box['mb']} MB)" for box in st["mailboxes"]) or "none"
        print(
            f"  store contents:   {st['mail_rows']} mails waiting ({st['mail_mb']} MB), by mailbox: {boxes};"
            f" {st['history_rows']} history rows, {st['seen_rows']} remembered message ids"
        )
    print(
        f"broker log:         {b['log_bytes']} bytes, {b['log_lines']} lines ({b['tracebacks']} tracebacks,"
        f" {b['assertion_failures']} assertion failures, {b['internal_errors']} internal errors,"
        f" {b['suppressed_summaries']} suppression summaries)"
    )


def _print_honest(h: dict[str, Any]) -> None:
    print(
        f"honest users:       {h['clients']} clients, {h['sent']} messages sent, {h['delivered']} of"
        f" {h['expected_deliveries']} deliveries received; lost {h['lost']}, duplicated {h['duplicated']},"
        f" unexpected {h['unexpected']}"
    )
    print(
        f"honest latency:     p50 {h['latency_ms_p50']} ms, p99 {h['latency_ms_p99']} ms, max {h['latency_ms_max']} ms"
        f" (connection losses {h['connection_losses']}, send errors {h['send_errors']},"
        f" drained in {h['drain_s']} s, client CPU {h['cpu_s']} s)"
    )
    for text, count in h["notices"].items():
        print(f"  honest notice:    {count} x {text}")


def _print_attacks(numbers: dict[str, Any]) -> None:
    """Each attack's stats, the flood's cost, and the broker's log tail when it went down."""
    print(f"attacks ({numbers['attackers_cpu_s']} CPU seconds in all):")
    for kind, stats in numbers["attacks"].items():
        shown = stats if isinstance(stats, str) else ", ".join(f"{k} {_number(v)}" for k, v in stats.items())
        print(f"  {kind + ':':<19} {shown}")
    flood = numbers["flood_cpu"]
    if flood and "share" in flood:
        print(
            f"flood's cost:       {flood['share']} of a core: the broker's process used {flood['process_cores_on']}"
            f" cores while the flood was on, {flood['process_cores_off']} while it was off; its threads other than"
            f" the main loop {flood['threads_cores_on']} and {flood['threads_cores_off']}"
        )
    if "log_tail" in numbers["broker"]:
        print("broker log tail:")
        print(numbers["broker"]["log_tail"])


def main(argv: list[str] | None = None) -> int:
    return run_tool("attack", parse_args(argv), run, print_report)
