"""The soak runner: keys, a real broker process, worker processes full of clients, and the verdict.

    python -m soak [--duration 60] [--clients 200] [--rate 2.0] [--churn 0.005] [--kill-broker-every SECONDS]
                   [--workers N] [--json] [--seed S]

Steps, each bounded by a timeout and all under one hard deadline (`--timeout`):

1. a temporary directory with config.json (port 0, limits far above the load,
   a history that keeps and replays the whole run) and keys: the broker's and
   one 2048-bit pair per client, made in parallel;
2. `broker.py --config DIR/config.json` started as its own process, stdin
   closed, output to DIR/broker.log (`harness.process.BrokerProcess`), its port
   read from the "listening on" line and kept in config.json (so that a restart
   listens on the same port);
3. `--workers` processes (`soak.worker`) log their share of the clients in;
   once every worker reports all of its clients online, they start together;
4. for `--duration` seconds the clients send `--rate` messages per second in
   total while the non-stable half churns, and with `--kill-broker-every N`
   the broker is killed every N seconds with SIGKILL (it and its crypto
   workers, as a crash) and started again at once on the same port, config
   and database (data/zchat.db), its log appended to; then the run drains
   until every sender has an answer (`accepted` or `failed`) for every
   message and every stable receiver has every accepted message (or gives up
   after 30 s, 120 s with kills), closes every client, sends SIGTERM to the
   broker and requires exit status 0 (of the last broker: a killed one has
   none);
5. the numbers (`soak.stats`), as a table or one JSON object (`--json`).

The count is over acknowledged messages: a message is accepted when its sender
got `Accepted` for it, refused when it got `Failed`, and unanswered otherwise
(reported as `unanswered`, which must be 0). Clients log in again after each
kill (they notice the dead broker by its silence: with kills the heartbeat
timeout is shorter, half the kill period, 2 to 10 s), re-send what was not
answered, and catch up through the history replay; a stable receiver must
still end with every accepted message of every other sender, exactly once.

The defaults are what a 2-core machine sustains: every delivery costs the
recipient an RSA-OAEP decryption (~1.2 ms) and the broker an RSA encryption,
and each rejoin sends a leave and a join to everyone else plus a welcome with
the whole roster, so 200 clients at 2 msg/s with churn 0.005 (0.5 rejoins/s)
keep latency under a second (p99 0.6 s over 60 s), while 4 msg/s with churn
0.02 outruns the CPUs: the backlog grows (p99 4.7 s after 20 s, 9.2 s after
60 s) towards the 10 s heartbeat timeout. Kills cost far more: after each one,
every client logs in again, which costs it a welcome with 200 public keys to
import (~50 ms) and a replay of the whole history so far, one RSA decryption
per message even for those it has shown and skips; with a kill every 10 s
two cores fall behind (latency of tens of seconds, sessions timed out), which
the counts must survive.

A failed run keeps its directory, with results.json: per name what it sent,
the answers it got and what it showed, session by session.

Exit status 0 when nothing was lost, duplicated, reordered, unexpected or left
unanswered, the broker logged no internal error (nor a traceback) and the last
one exited 0; 1 otherwise (also when the run itself failed: a timeout, a worker
dying, or the broker dying other than by the soak's own SIGKILL). Whatever
happens, Ctrl-C included, the broker and the workers are killed on the way out.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import multiprocessing.context
import multiprocessing.process
import os
import queue
import random
import re
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.queues import Queue
from pathlib import Path
from typing import Any

from harness.keys import make_keys
from harness.process import BrokerProcess, HarnessError
from harness.stats import percentile
from harness.tool import Cleanup, run_tool, say
from soak.stats import Tally, tally
from soak.worker import Message, Progress, WorkerResult, WorkerSpec, worker_main

KEY_BITS = 2048
BROKER_START_TIMEOUT = 20.0
BROKER_STOP_TIMEOUT = 60.0
DRAIN_TIMEOUT = 30.0
DRAIN_TIMEOUT_WITH_KILLS = 120.0  # after the last kill: notice the silence, log in again, replay, re-send
HISTORY_SIZE = 10_000  # the broker's maximum: the whole run is replayed after every login
HISTORY_REPLAY_BYTES = 64 * 1024 * 1024
SEND_QUEUE_BYTES = 256 * 1024 * 1024  # room for a whole replay waiting for the window, and live traffic behind it
CONNECT_TIMEOUT = 30.0  # per login attempt; a login storm of hundreds of clients is slow on purpose-built hardware too
LOGINS_IN_FLIGHT = 8  # per worker, while everyone logs in for the first time
START_DELAY = 0.5  # between "go" and the first message, so every worker starts on time


class SoakError(HarnessError):
    """The run itself failed (not the chat): a timeout, a dead worker, a broker that never started."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m soak", description="Soak test: many clients, steady traffic and churn against a real broker."
    )
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of sending (default 60)")
    parser.add_argument("--clients", type=int, default=200, help="number of clients (default 200)")
    parser.add_argument(
        "--rate", type=float, default=2.0, help="chat messages per second, all clients together (default 2)"
    )
    parser.add_argument(
        "--churn",
        type=float,
        default=0.005,
        help="per non-stable client: probability per second of leaving and coming back (default 0.005)",
    )
    parser.add_argument(
        "--kill-broker-every",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="while sending, SIGKILL the broker and its crypto workers this often, and restart it (default 0: never)",
    )
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="client processes (default: cores)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument("--seed", type=int, help="random seed for who sends, who churns and when (default: random)")
    parser.add_argument("--timeout", type=float, help="hard limit for the whole run in seconds (default: generous)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (config, keys, broker.log)")
    args = parser.parse_args(argv)
    if args.clients < 2:
        parser.error("--clients must be at least 2")
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    if not args.duration > 0 or args.rate < 0 or args.churn < 0:
        parser.error("--duration must be positive, --rate and --churn not negative")
    if not 0 <= args.kill_broker_every < math.inf:
        parser.error("--kill-broker-every must be a number of seconds, 0 or more")
    args.workers = min(args.workers, args.clients)
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(1 << 31)
    if args.timeout is None:
        args.timeout = 240 + args.duration + args.clients
        if args.kill_broker_every:
            args.timeout += DRAIN_TIMEOUT_WITH_KILLS - DRAIN_TIMEOUT + 10 * kills_in(args)
    return args


def log(message: str) -> None:
    say("soak", message)


# ---------------------------------------------------------------- keys and config


def kills_in(args: argparse.Namespace) -> int:
    """How many times the broker is killed: every --kill-broker-every seconds, strictly within --duration."""
    every: float = args.kill_broker_every
    return 0 if every <= 0 else math.ceil(args.duration / every) - 1


def heartbeat(kill_every: float) -> tuple[float, float]:
    """(interval, timeout). Without kills, a timeout far above the worst backlog; with them, short enough
    that clients notice a dead broker (by its silence) well before the next kill."""
    if kill_every <= 0:
        return 1.0, 10.0
    timeout = min(10.0, max(2.0, kill_every / 2))
    return min(1.0, timeout / 4), timeout


def broker_config(clients: int, kill_every: float = 0.0) -> dict[str, Any]:
    """The broker's config.json: limits out of the way of 200 clients on one address, heartbeats to suit the kills."""
    interval, timeout = heartbeat(kill_every)
    return {
        "server_ip": "127.0.0.1",
        "server_port": 0,
        "keys_dir": "keys",
        "messages_per_second_per_user": 1000,
        "logins_per_second_per_user": 100000,
        "max_connections_per_source": 100000,  # every bot connects from 127.0.0.1
        "handshakes_per_second_per_source": 1e6,
        "handshakes_per_second_per_user": 1e6,
        "connections_per_second_per_source": 1e6,  # every bot connects from 127.0.0.1
        "max_clients": clients + 50,
        "send_queue_limit": 10000,
        "send_queue_bytes": SEND_QUEUE_BYTES,
        "history_size": HISTORY_SIZE,
        "history_replay_bytes": HISTORY_REPLAY_BYTES,
        "heartbeat_interval": interval,
        "heartbeat_timeout": timeout,
    }


# ---------------------------------------------------------------- the broker


def log_counts(text: str) -> dict[str, int]:
    """What the broker's log says went wrong."""
    return {
        "broker_internal_errors": text.count("internal error"),
        "broker_tracebacks": text.count("Traceback"),
        "broker_timed_out": len(re.findall(r" timed out$", text, re.MULTILINE)),
        "broker_too_slow": text.count("too slow to keep up"),
        "broker_busy": text.count("turned away"),
    }


# ---------------------------------------------------------------- the workers


@dataclass
class Workers:
    procs: Sequence[multiprocessing.process.BaseProcess]
    controls: list[Queue[Message]]
    out: Queue[Message]
    ready: set[int] = field(default_factory=set)
    sent: dict[int, dict[str, int]] = field(default_factory=dict)
    progress: dict[int, Progress] = field(default_factory=dict)
    results: dict[int, WorkerResult] = field(default_factory=dict)

    def tell(self, *message: Any) -> None:
        for control in self.controls:
            control.put(tuple(message))

    def receive(self, timeout: float, broker: BrokerProcess) -> None:
        """Take the next worker message (if any within `timeout`); SoakError if a worker or the broker died."""
        try:
            kind, wid, payload = self.out.get(timeout=timeout)
        except queue.Empty:
            for wid, proc in enumerate(self.procs):
                if proc.exitcode is not None and wid not in self.results:
                    raise SoakError(f"worker {wid} exited with status {proc.exitcode} before reporting") from None
            broker.check_alive()
            return
        if kind == "error":
            raise SoakError(f"worker {wid} failed:\n{payload}")
        if kind == "ready":
            self.ready.add(wid)
        elif kind == "sent":
            self.sent[wid] = payload
        elif kind == "progress":
            self.progress[wid] = payload
        elif kind == "result":
            self.results[wid] = payload

    def wait(self, what: str, done: Callable[[], bool], timeout: float, broker: BrokerProcess) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise SoakError(f"timed out after {timeout:g}s waiting for {what}")
            self.receive(min(remaining, 0.2), broker)

    def stop(self) -> None:
        for control in self.controls:
            control.cancel_join_thread()
        for proc in self.procs:
            if proc.is_alive():
                proc.terminate()
        for proc in self.procs:
            proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join(5)


def split(names: list[str], stable: set[str], workers: int) -> list[tuple[str, ...]]:
    """Deal stable and churning clients round-robin, so every worker gets some of each."""
    shares: list[list[str]] = [[] for _ in range(workers)]
    ordered = [n for n in names if n in stable] + [n for n in names if n not in stable]
    for i, name in enumerate(ordered):
        shares[i % workers].append(name)
    return [tuple(share) for share in shares]


def drained(workers: Workers, stable: set[str]) -> bool:
    """True when every message sent has its answer and every stable receiver holds every accepted message
    of every other sender."""
    if len(workers.progress) < len(workers.procs):
        return False
    if any(n for p in workers.progress.values() for n in p.waiting.values()):
        return False
    accepted = {name: n for p in workers.progress.values() for name, n in p.accepted.items()}
    total = sum(accepted.values())
    have = {name: n for p in workers.progress.values() for name, n in p.have.items()}
    return all(have.get(name, 0) >= total - accepted.get(name, 0) for name in stable)


@dataclass
class Kill:
    at: float  # time.time() of the SIGKILL
    processes: int  # the broker and its crypto workers
    restart_s: float  # from the SIGKILL until the new broker listened


def kill_and_restart(broker: BrokerProcess, t0: float) -> Kill:
    """SIGKILL the broker's whole process tree and start it again on the same port, config and database."""
    old = broker.pid
    at = time.time()
    killed = broker.kill_tree()
    log(f"t+{at - t0:.1f}s: killed the broker (pid {old} and {killed - 1} crypto workers) with SIGKILL")
    pinned = broker.port
    port = broker.start(timeout=BROKER_START_TIMEOUT).port
    if port != pinned or port == 0:
        raise SoakError(f"the restarted broker listens on port {port}, not on {pinned}")
    restart_s = time.time() - at
    log(f"t+{time.time() - t0:.1f}s: restarted the broker as pid {broker.pid} on port {port} in {restart_s:.1f}s")
    return Kill(at, killed, restart_s)


# ---------------------------------------------------------------- the run


def start_workers(
    args: argparse.Namespace, port: int, keys_root: Path, names: list[str], stable: set[str], cleanup: Cleanup
) -> Workers:
    """`args.workers` spawned processes (`soak.worker`), each logging its share of the clients in."""
    mp = multiprocessing.get_context("spawn")
    deadline = time.time() + args.timeout + 10
    shares = split(names, stable, args.workers)
    out: Queue[Message] = mp.Queue()
    controls: list[Queue[Message]] = [mp.Queue() for _ in shares]
    procs = []
    for wid, share in enumerate(shares):
        spec = WorkerSpec(
            wid=wid,
            port=port,
            keys_root=keys_root,
            names=share,
            stable=frozenset(stable & set(share)),
            rate=args.rate * len(share) / args.clients,
            churn=args.churn,
            duration=args.duration,
            seed=args.seed * 1000 + wid,
            connect_timeout=CONNECT_TIMEOUT,
            logins_in_flight=LOGINS_IN_FLIGHT,
            deadline=deadline,
        )
        procs.append(mp.Process(target=worker_main, args=(spec, out, controls[wid]), name=f"soak-worker-{wid}"))
    workers = Workers(procs, controls, out)
    cleanup.append(workers.stop)
    for proc in procs:
        proc.daemon = True
        proc.start()
    return workers


def traffic(args: argparse.Namespace, workers: Workers, broker: BrokerProcess) -> tuple[float, list[Kill]]:
    """The go, `args.duration` seconds of traffic (the broker killed and restarted as asked), every sender's
    count: when the traffic ended (time.time()) and the kills."""
    t0 = time.time() + START_DELAY
    workers.tell("go", t0)
    end = t0 + args.duration
    kills: list[Kill] = []
    next_kill = t0 + args.kill_broker_every if args.kill_broker_every > 0 else math.inf
    while (now := time.time()) < end:
        if now >= next_kill:
            kills.append(kill_and_restart(broker, t0))
            next_kill += args.kill_broker_every
            continue
        workers.receive(min(0.5, max(0.01, min(end, next_kill) - now)), broker)
    workers.wait("the senders' counts", lambda: len(workers.sent) == len(workers.procs), 60, broker)
    return end, kills


def drain(
    workers: Workers, stable: set[str], broker: BrokerProcess, end: float, kills: list[Kill]
) -> tuple[bool, float]:
    """Wait until every message has its answer and every stable receiver everything (`drained`), or give up:
    whether it drained, and how long it took."""
    log("sending done; draining")
    drain_deadline = end + (DRAIN_TIMEOUT_WITH_KILLS if kills else DRAIN_TIMEOUT)
    complete = False
    while time.time() < drain_deadline:
        complete = drained(workers, stable)
        if complete:
            break
        workers.receive(min(0.2, max(0.01, drain_deadline - time.time())), broker)
    drain_s = time.time() - end
    log(f"drained in {drain_s:.1f}s" if complete else f"gave up draining after {drain_s:.1f}s")
    return complete, drain_s


def run(args: argparse.Namespace, workdir: Path, cleanup: Cleanup) -> dict[str, Any]:
    started = time.monotonic()
    rng = random.Random(args.seed)  # noqa: S311 - load pattern, not a secret
    width = len(str(args.clients - 1))
    names = [f"soak{i:0{width}d}" for i in range(args.clients)]
    stable = set(rng.sample(names, max(2, math.ceil(args.clients / 2))))

    log(f"generating {args.clients + 1} RSA-{KEY_BITS} keys on {os.cpu_count()} cores in {workdir}")
    make_keys(workdir / "keys", names, KEY_BITS)
    keygen_s = time.monotonic() - started

    broker = BrokerProcess(workdir, broker_config(args.clients, args.kill_broker_every))
    cleanup.append(broker.kill)
    port = broker.start(timeout=BROKER_START_TIMEOUT).port
    log(f"keys in {keygen_s:.1f}s; broker pid {broker.pid} listening on port {port}")

    workers = start_workers(args, port, workdir / "keys", names, stable, cleanup)
    login_started = time.monotonic()
    log(f"logging in {args.clients} clients from {args.workers} workers")
    every_one = len(workers.procs)
    workers.wait("every client to log in", lambda: len(workers.ready) == every_one, 60 + 0.5 * args.clients, broker)
    login_s = time.monotonic() - login_started
    log(
        f"all logged in after {login_s:.1f}s; sending {args.rate:g} msg/s for {args.duration:g}s"
        f" with churn {args.churn:g}/s on {args.clients - len(stable)} clients"
    )
    end, kills = traffic(args, workers, broker)
    complete, drain_s = drain(workers, stable, broker, end, kills)

    workers.tell("finish")
    workers.wait("the workers' results", lambda: len(workers.results) == every_one, 60, broker)
    for proc in workers.procs:
        proc.join(15)
    peak_rss = broker.peak_rss_mb()
    broker_exit = broker.stop(BROKER_STOP_TIMEOUT)
    log(f"broker stopped with status {broker_exit}")
    timings = Timings(keygen_s, login_s, drain_s, started)
    numbers = report(args, workers, stable, broker, kills, timings, complete, broker_exit, peak_rss)
    if args.keep or not numbers["ok"]:
        dump(workdir / "results.json", workers, stable, kills)
    return numbers


def dump(path: Path, workers: Workers, stable: set[str], kills: list[Kill]) -> None:
    """What every worker reported, for a post-mortem: per name what it sent, the answers, what it showed."""
    names: dict[str, Any] = {}
    for r in workers.results.values():
        for name, n in r.sent.items():
            names[name] = {
                "stable": name in stable,
                "sent": n,
                "sent_at": r.sent_at.get(name, {}),
                "accepted": {str(seq): at for seq, at in r.accepted.get(name, {}).items()},
                "refused": r.refused.get(name, []),
                "given_up": r.abandoned.get(name, []),
                "sessions": [
                    {"client": s.client, "started": s.started, "got": s.got} for s in r.sessions.get(name, [])
                ],
            }
    kills_out = [{"at": k.at, "processes": k.processes, "restart_s": k.restart_s} for k in kills]
    path.write_text(json.dumps({"kills": kills_out, "names": names}) + "\n")
    log(f"wrote what each client sent and showed to {path}")


@dataclass(frozen=True)
class Timings:
    keygen_s: float
    login_s: float
    drain_s: float
    started: float  # time.monotonic() at the start of the run


# What each worker counts, summed over the workers under the same name.
CLIENT_SUMS = (
    "reconnects",
    "churn_leaves",
    "connection_losses",
    "login_failures",
    "relogins",
    "relogins_refused",
    "closed_by_broker",
    "history_replayed",
    "history_then_live",
    "own_history",
    "own_history_pending",
    "own_repeated",
    "skipped_sends",
    "send_errors",
)


def rounded(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


def message_numbers(results: list[WorkerResult], counts: Tally, kills: list[Kill]) -> dict[str, Any]:
    """What became of the messages: sent, answered, delivered, lost (`soak.stats`)."""
    accepted = [at for r in results for answers in r.accepted.values() for at in answers.values()]
    last_kill = kills[-1].at if kills else None
    before_leave = {pair for r in results for pair in r.last_before_leave}
    return {
        "sent": counts.sent,
        "accepted": counts.accepted,
        "refused": counts.refused,
        "unanswered": counts.unanswered,
        "unanswered_given_up": sum(len(seqs) for r in results for seqs in r.abandoned.values()),
        "refused_by_client": sum(r.refused_by_client for r in results),
        "delivered": counts.delivered,
        "expected": counts.expected,
        "lost": counts.lost,
        "duplicated": counts.duplicated + sum(r.own_repeated for r in results),
        "out_of_order": counts.out_of_order,
        "unexpected": counts.unexpected,
        "delivered_unanswered": counts.delivered_unanswered,
        "duplicate_answers": sum(r.duplicate_answers for r in results),
        "accepted_after_last_kill": None if last_kill is None else sum(1 for at in accepted if at >= last_kill),
        "broker_restart_s_max": rounded(max((k.restart_s for k in kills), default=None), 2),
        "lost_messages": len(counts.missing),
        "lost_last_before_leave": len(before_leave & set(counts.missing)),
        "lost_examples": [f"{sender}|{seq} x{n}" for (sender, seq), n in counts.missing.most_common(5)],
    }


def client_numbers(results: list[WorkerResult]) -> dict[str, Any]:
    """What the clients saw: latency, reconnections, history, their own troubles."""
    latencies = [ms for r in results for ms in r.latencies_ms]
    return {
        "latency_ms_p50": rounded(percentile(latencies, 50)),
        "latency_ms_p99": rounded(percentile(latencies, 99)),
        "latency_ms_max": rounded(max(latencies, default=None)),
        **{key: sum(getattr(r, key) for r in results) for key in CLIENT_SUMS},
        "worker_max_turn_s": rounded(max(r.max_turn_s for r in results), 2),
    }


def report(
    args: argparse.Namespace,
    workers: Workers,
    stable: set[str],
    broker: BrokerProcess,
    kills: list[Kill],
    timings: Timings,
    complete: bool,
    broker_exit: int | None,
    peak_rss: float | None,
) -> dict[str, Any]:
    results = list(workers.results.values())
    counts: Tally = tally(
        {name: n for r in results for name, n in r.sent.items()},
        {name: answers for r in results for name, answers in r.accepted.items()},
        {name: seqs for r in results for name, seqs in r.refused.items()},
        stable,
        {name: logs for r in results for name, logs in r.sessions.items()},
        unparsed=sum(r.unparsed for r in results),
    )
    messages = message_numbers(results, counts, kills)
    notices: Counter[str] = Counter()
    for r in results:
        notices.update(r.notices)
    broker_log = log_counts(broker.log())
    ok = (
        counts.lost == 0
        and messages["duplicated"] == 0
        and counts.out_of_order == 0
        and counts.unexpected == 0
        and counts.unanswered == 0
        and broker_exit == 0
        and broker_log["broker_internal_errors"] == 0
        and broker_log["broker_tracebacks"] == 0
    )
    return {
        "ok": ok,
        "clients": args.clients,
        "stable_clients": len(stable),
        "workers": args.workers,
        "duration_s": args.duration,
        "rate": args.rate,
        "churn": args.churn,
        "seed": args.seed,
        "kill_broker_every_s": args.kill_broker_every,
        "kills": len(kills),
        **messages,
        **client_numbers(results),
        "broker_peak_rss_mb": rounded(peak_rss),
        "broker_exit": broker_exit,
        **broker_log,
        "drained": complete,
        "keygen_s": round(timings.keygen_s, 1),
        "login_s": round(timings.login_s, 1),
        "drain_s": round(timings.drain_s, 1),
        "wall_s": round(time.monotonic() - timings.started, 1),
        "notices": dict(notices.most_common(10)),
    }


def print_table(numbers: dict[str, Any]) -> None:
    width = max(len(key) for key in numbers)
    for key, value in numbers.items():
        if key == "notices":
            for text, count in value.items():
                print(f"{'notice':<{width}}  {count} x {text}")
            continue
        print(f"{key:<{width}}  {value}")


def main(argv: list[str] | None = None) -> int:
    return run_tool("soak", parse_args(argv), run, print_table)
