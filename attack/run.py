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
import multiprocessing
import multiprocessing.context
import multiprocessing.process
import os
import queue
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.queues import Queue
from pathlib import Path
from typing import Any

from attack.attackers import ATTACKS, attacker_main
from attack.common import AttackSpec, Stats
from attack.honest import HonestResult, HonestSpec, honest_main
from attack.measure import Sample, StoreBound, flood_share, mail_census, store_bytes
from attack.report import Memory, print_report, report
from attack.zmtp import predicted_counters
from harness.keys import make_keys
from harness.process import BrokerProcess, HarnessError
from harness.procfs import NoSuchReading, cpu_seconds
from harness.tool import Cleanup, run_tool, say
from zchat import crypto
from zchat.client.session import ClientSession
from zchat.config import Config, load_config
from zchat.keystore import KeyLayout

# Registered users who attack: issue 11's two, then one per attack of issue 18.
INSIDERS = ("mallory", "eve", "selfmailer", "awaymailer", "churner", "holder", "searcher", "refiller")
ABSENT = "absent"  # registered, never online: the away mailer's recipient
BROKER_START_TIMEOUT = 30.0
BROKER_STOP_TIMEOUT = 30.0
READY_TIMEOUT = 90.0
SAMPLE_EVERY = 0.15

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
        attack_results(arena.children, arena.specs),
        arena.config,
        store,
        bound,
        share,
    )


def attack_results(children: Children, specs: list[AttackSpec]) -> dict[str, Stats | str]:
    """Each attacker's stats, or the last line of its error (or "no report")."""
    attacks: dict[str, Stats | str] = {}
    for spec in specs:
        if spec.kind in children.results:
            attacks[spec.kind] = children.results[spec.kind]
        else:
            attacks[spec.kind] = children.errors.get(spec.kind, "no report").strip().splitlines()[-1]
    return attacks


def main(argv: list[str] | None = None) -> int:
    return run_tool("attack", parse_args(argv), run, print_report)
