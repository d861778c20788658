"""The benchmark runner: every measurement in one run, on one machine, with one client count and message size.

    python -m bench [--clients 50] [--message-bytes 200] [--key-bits 3072] [--duration 10]
                    [--idle-clients 1000] [--storm-clients 200] [--quick] [--json] [--keep]

Steps, in this order (each bounded by timeouts; whatever happens, every
process started is stopped on the way out):

1. keys: one RSA key pair per client (up to KEY_POOL_MAX distinct ones) and
   the broker's, generated in parallel processes;
2. the crypto bound (`bench.cryptobound`), timed before anything else runs,
   then the same loop in one process per core at once;
3. the broker (`broker.py --config ...` as its own process) with `--clients`
   clients logged in from the load generator (`bench.fleet`): deliveries per
   second while it is kept saturated, then latency at half that rate with a
   few verifying receivers in their own processes (`bench.verifier`); then
   the crypto bound again: efficiencies use the mean of the two timings, and
   a note says when the machine's speed changed between them; during each
   throughput window the broker's commits are counted in its write-ahead log
   (`bench.commit.WalWatcher`);
4. the reference relays (`bench.relay`), plain and CurveZMQ, with the same
   clients, fan-out and message size; what CurveZMQ costs per EVENT; the
   store's group commit timed alone for groups of 1, 10 and 100 messages
   (`bench.commit`);
5. on a fresh broker, CurveZMQ handshakes one at a time (`bench.handshake`:
   what the transport costs per login, against the RSA work per HELLO), then
   a login storm on that broker; a fresh broker filled with idle clients for
   its resident memory.

Prints a table, or one JSON object with `--json`. Exit status 1 when a phase
failed or something was wrong (a lost delivery, a failed verification, an
internal error in the broker's log, a broker that did not exit 0).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import platform
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import zmq
import zmq.auth

from bench import commit, cryptobound, handshake
from bench.fleet import (
    ChatPeer,
    CurveKeys,
    Fleet,
    Frames,
    Peer,
    RelayPeer,
    Throughput,
    self_cpu_seconds,
)
from bench.report import render_table
from bench.stats import message_text
from bench.verifier import verifier_main
from bench.workspace import BenchError, Workspace, cores, log_problems, progress
from harness.process import HarnessError, ServerProcess
from harness.procfs import cpu_seconds, system_busy_seconds
from harness.stats import interpolated_percentile
from zchat import crypto
from zchat.broker.main import DATABASE_FILE
from zchat.errors import StoreError
from zchat.events import WhoList

KEY_POOL_MAX = 64  # distinct client keys; more names reuse their RSA halves, each with a Curve pair of its own
LOGINS_IN_FLIGHT = 8  # while filling a broker: the broker drops a handshake that takes over 10 s
IN_FLIGHT_S = 1.0  # the broker always has about this much work queued during the window
SUPPLY_MARGIN = 1.25  # prepared messages: this much more than the crypto bound allows in the window
# --quick often runs on a busy machine (beside the test suite): the bound measured there can be far below
# what the broker then does, so a quick run prepares more (a few seconds of signing, in small windows).
QUICK_SUPPLY_MARGIN = 4.0
RELAY_IN_FLIGHT = 1000  # messages in flight for the relays
VERIFIERS = 3
MIN_LATENCY_MESSAGES = 50
OTHER_CPU_WARNING = 0.2  # cores busy outside the benchmark during a timed phase before the report warns
BOUND_DRIFT_WARNING = 0.1  # the crypto bound's two timings differ by more: the report says the machine's speed changed


@dataclass
class Settings:
    clients: int
    message_bytes: int
    key_bits: int
    duration: float
    warmup: float
    idle_clients: int
    storm_clients: int
    quick: bool
    crypto_seconds: float
    argv: list[str]


def parse_args(argv: list[str] | None) -> tuple[Settings, bool, bool]:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark the encrypted chat broker against its crypto bound and plain/CurveZMQ relays.",
    )
    parser.add_argument("--clients", type=int, help="clients online for throughput and latency (default 50)")
    parser.add_argument("--message-bytes", type=int, help="chat text size in UTF-8 bytes (default 200)")
    parser.add_argument("--key-bits", type=int, help="RSA key size of broker and clients (default 3072)")
    parser.add_argument("--duration", type=float, help="seconds of each timed window (default 10)")
    parser.add_argument("--idle-clients", type=int, help="idle logged-in clients for the memory row (default 1000)")
    parser.add_argument("--storm-clients", type=int, help="clients logging in at once (default 200)")
    parser.add_argument(
        "--quick", action="store_true", help="small and fast: 10 clients, 2048-bit keys, 2 s windows, 50 idle, 20 storm"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (keys, configs, logs)")
    args = parser.parse_args(argv)
    quick = bool(args.quick)

    def pick(value: Any, full: Any, small: Any) -> Any:
        return value if value is not None else (small if quick else full)

    settings = Settings(
        clients=pick(args.clients, 50, 10),
        message_bytes=pick(args.message_bytes, 200, 200),
        key_bits=pick(args.key_bits, 3072, 2048),
        duration=pick(args.duration, 10.0, 2.0),
        warmup=0.5 if quick else 1.0,
        idle_clients=pick(args.idle_clients, 1000, 50),
        storm_clients=pick(args.storm_clients, 200, 20),
        quick=quick,
        crypto_seconds=0.5 if quick else 3.0,
        argv=list(sys.argv[1:] if argv is None else argv),
    )
    if settings.clients < 3:
        parser.error("--clients must be at least 3")
    if not 32 <= settings.message_bytes <= 65536:
        parser.error("--message-bytes must be from 32 to 65536")
    if settings.key_bits < 2048:
        parser.error("--key-bits must be at least 2048")
    if not settings.duration > 0:
        parser.error("--duration must be positive")
    if settings.idle_clients < 2 or settings.storm_clients < 2:
        parser.error("--idle-clients and --storm-clients must be at least 2")
    return settings, bool(args.json), bool(args.keep)


def broker_config(clients: int, workers: int | None = None) -> dict[str, Any]:
    """Limits far above the load, so the broker's rules never turn the benchmark's traffic away.

    `workers` is the broker's crypto worker processes (0: none); by default one per core, as config.json's default.
    """
    return {
        "server_ip": "127.0.0.1",
        "workers": cores() if workers is None else workers,
        "server_port": 0,
        "messages_per_second_per_user": 1e6,
        "logins_per_second_per_user": 1e6,
        "handshakes_per_second_per_source": 1e6,
        "handshakes_per_second_per_user": 1e6,
        "connections_per_second_per_source": 1e6,
        "max_connections_per_source": clients + 100,
        "max_clients": clients + 100,
        "max_pending_logins": clients + 100,
        "send_queue_limit": 1_000_000,
        "history_size": 0,
        "heartbeat_interval": 1,
        "heartbeat_timeout": 60,
    }


ASKER = "who-asker"  # the client that asks the idle broker who is online


def names(prefix: str, count: int) -> list[str]:
    return [f"{prefix}{i:04d}" for i in range(count)]


@dataclass
class Run:
    """Everything measured, plus what went wrong."""

    settings: Settings
    started: float = field(default_factory=time.monotonic)
    numbers: dict[str, Any] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def server_done(self, server: ServerProcess) -> None:
        """Stop a server (if it still runs): it must exit 0 and its log must show no trouble of its own."""
        status = server.stop()
        self.details.setdefault("exit_status", {})[server.label] = status
        if status != 0:
            self.problems.append(f"{server.label} exited with status {status}")
        self.problems += [f"{server.label} log: {line}" for line in log_problems(server)]


# ---------------------------------------------------------------- phases


def measure_crypto(ws: Workspace, run: Run, label: str = "crypto") -> cryptobound.CryptoBound:
    s = run.settings
    progress(f"timing the broker's crypto for one message to {s.clients - 1} recipients ({label})")
    recipients = [ws.client_key(i).public_key() for i in range(1, min(s.clients, ws.pool_size))] or [
        ws.client_key(0).public_key()
    ]
    own0, system0, t0 = self_cpu_seconds(), system_busy_seconds(), time.monotonic()
    bound = cryptobound.measure(
        ws.broker_key(), ws.client_key(0), recipients, s.clients, s.message_bytes, s.crypto_seconds
    )
    seconds = time.monotonic() - t0
    own = (self_cpu_seconds() - own0) / seconds
    run.details[label] = {
        "open_ms": bound.open_s * 1e3,
        "verify_ms": bound.verify_s * 1e3,
        "mac_ms": bound.mac_s * 1e3,
        "seal_ms": bound.seal_s * 1e3,
        "fanouts_timed": bound.fanouts_timed,
        "messages_per_s": bound.messages_per_s,
        "cores_busy": own,
        "other_cores_busy": max(0.0, (system_busy_seconds() - system0) / seconds - own),
    }
    return bound


def measure_all_cores(ws: Workspace, run: Run) -> None:
    """The bound's loop in one process per core at once: how much all the cores give together on this machine."""
    s, n = run.settings, cores()
    progress(f"timing the same crypto in {n} processes at once")
    key_files = [ws.layout.broker_private, *(ws.pool_pem(i) for i in range(min(s.clients, ws.pool_size)))]
    try:
        total = cryptobound.all_cores(key_files, s.clients, s.message_bytes, s.crypto_seconds, n)
    except Exception as exc:  # a process that died or never answered
        raise BenchError(f"timing the crypto on all cores failed: {exc}") from None
    run.numbers["crypto_bound_per_s_all_cores"] = total


def _wait_verifiers(
    fleet: Fleet, conns: list[Connection], procs: list[BaseProcess], server: ServerProcess, timeout: float
) -> None:
    ready: set[int] = set()
    deadline = time.monotonic() + timeout
    while len(ready) < len(conns):
        fleet.pump(20)
        for i, conn in enumerate(conns):
            if i not in ready and conn.poll():
                message = conn.recv()
                if message[0] == "error":
                    raise BenchError(f"verifying receiver {i} failed: {message[1]}")
                ready.add(i)
            elif i not in ready and not procs[i].is_alive():
                raise BenchError(f"verifying receiver {i} exited with status {procs[i].exitcode}")
        server.check_alive()
        if time.monotonic() > deadline:
            raise BenchError(f"verifying receivers not logged in after {timeout:g}s")


def measure_broker(ws: Workspace, run: Run, bound: cryptobound.CryptoBound, workers: int | None = None) -> None:
    """Deliveries per second with the broker saturated, then (with worker processes) latency at half that rate.

    With `workers=0` the broker does its crypto in its own loop: one process, the "one broker process" row.
    """
    s = run.settings
    one_process = workers == 0
    label = "broker_one_process" if one_process else "broker"
    clients = names("c", s.clients)
    ws.register(clients)
    config = broker_config(s.clients, workers)
    server = ws.start_broker(label, config)
    progress(f"{label} pid {server.pid} on {server.endpoint}: logging in {s.clients} clients")
    fleet = Fleet(server.endpoint, chat=True, sockets=s.clients)
    procs: list[BaseProcess] = []
    try:
        peers = chat_peers(ws, clients)
        tp = _throughput(run, fleet, server, peers, bound, label, config["workers"])
        if one_process:
            fleet.stop_server(server)
            return
        _latency(ws, run, fleet, server, peers, tp, procs)
    finally:
        for proc in procs:
            proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join(5)
        fleet.close()
        run.server_done(server)


def _throughput(
    run: Run,
    fleet: Fleet,
    server: ServerProcess,
    peers: list[ChatPeer],
    bound: cryptobound.CryptoBound,
    label: str,
    crypto_workers: int,
) -> Throughput:
    """Log everyone in, prepare the messages, keep the broker saturated for the window; record what it did."""
    s = run.settings
    one_process = crypto_workers == 0
    login = fleet.login(peers, LOGINS_IN_FLIGHT, 600.0, server)
    fleet.wait_quiet(0.5, 120.0, server)
    run.details["broker_rss_mb_during_run"] = server.rss_mb()
    capacity = bound.messages_per_s * max(1, crypto_workers)  # messages/s if every worker reached the bound
    in_flight = max(4, math.ceil(capacity * IN_FLIGHT_S))
    margin = QUICK_SUPPLY_MARGIN if s.quick else SUPPLY_MARGIN
    need = math.ceil(capacity * (s.warmup + s.duration) * margin) + in_flight
    progress(f"preparing {need} sealed, signed messages ({s.message_bytes}-byte texts)")
    prepare_s = _fill_supply(fleet, server, peers, need, s.message_bytes)
    progress(f"saturating the broker for {s.warmup:g} + {s.duration:g} s")
    marks: list[commit.WalCount] = []
    with commit.WalWatcher(broker_database(server)) as wal:
        tp = fleet.saturate(
            peers, s.clients - 1, s.warmup, s.duration, in_flight, server, on_mark=lambda: marks.append(wal.mark())
        )
    messages_per_s = tp.deliveries_per_s / (s.clients - 1)
    commits = commit.broker_commits(marks[0], marks[-1], messages_per_s)
    run.numbers["deliveries_per_s_one_process" if one_process else "deliveries_per_s"] = tp.deliveries_per_s
    if not one_process:
        run.numbers["broker_commits_per_s"] = commits["commits_per_s"]
        run.numbers["broker_messages_per_commit"] = commits["messages_per_commit"]
    run.details[label] = {
        **asdict(tp),
        "messages_per_s": messages_per_s,
        **commits,
        "in_flight_messages": in_flight,
        "prepared_messages": need,
        "prepare_s": prepare_s,
        "login_s": login.seconds,
        "generator_processes": 1,
        "crypto_workers": crypto_workers,
    }
    if not one_process:
        run.details[label]["event_body_bytes_mean"] = fleet.event_bytes / max(1, fleet.events)
    if tp.lost:
        run.problems.append(f"{label}: {tp.lost} deliveries never arrived")
    if tp.supply_ran_out:
        run.problems.append(f"{label}: the prepared messages ran out inside the window (not saturated)")
    if tp.deliveries == 0:
        raise BenchError(f"{label} delivered nothing in the timed window")
    return tp


def _fill_supply(fleet: Fleet, server: ServerProcess, peers: list[ChatPeer], total: int, message_bytes: int) -> float:
    """Sealed, signed messages until every peer holds its share of `total`; the seconds the building took."""
    built = time.monotonic()
    for peer in peers:
        missing = math.ceil(total / len(peers)) - len(peer.supply)
        if missing > 0:
            peer.build(missing, message_bytes)
        fleet.pump(0)
    seconds = time.monotonic() - built
    fleet.wait_quiet(0.3, 60.0, server)
    return seconds


def _latency(
    ws: Workspace,
    run: Run,
    fleet: Fleet,
    server: ServerProcess,
    peers: list[ChatPeer],
    tp: Throughput,
    procs: list[BaseProcess],
) -> None:
    """Latency at half the saturated rate, with verifying receivers in their own processes (added to `procs`)."""
    s = run.settings
    verifiers = min(VERIFIERS, s.clients - 2)
    handed, senders = peers[-verifiers:], peers[:-verifiers]
    for peer in handed:
        fleet.remove(peer)
    conns = _start_verifiers(ws, server, handed, procs)
    progress(f"{verifiers} verifying receivers log in (they replace {', '.join(p.name for p in handed)})")
    _wait_verifiers(fleet, conns, procs, server, 120.0)
    fleet.wait_quiet(0.5, 60.0, server)
    rate = 0.5 * tp.deliveries_per_s / (s.clients - 1)
    count = max(MIN_LATENCY_MESSAGES, round(rate * s.duration))
    _fill_supply(fleet, server, senders, count, s.message_bytes)
    progress(f"latency: {count} messages at {rate:.1f}/s ({rate * (s.clients - 1):.0f} deliveries/s)")
    pids = [proc.pid for proc in procs if proc.pid is not None]
    before = _cpu_snapshot(server, pids)
    sent_at, lag = fleet.paced(senders, rate, count, len(senders) - 1, server)
    busy = _cores_busy(before, _cpu_snapshot(server, pids))
    latencies, unmatched, verifier_problems = _verified_latencies(conns, sent_at, count)
    fleet.stop_server(server)
    expected = count * verifiers
    run.numbers["latency_ms_p50"] = interpolated_percentile(latencies, 50)
    run.numbers["latency_ms_p99"] = interpolated_percentile(latencies, 99)
    run.details["latency"] = {
        "offered_messages_per_s": rate,
        "offered_deliveries_per_s": rate * (s.clients - 1),
        "messages": count,
        "verifying_receivers": verifiers,
        "samples": len(latencies),
        "missing": expected - len(latencies),
        "ms_p90": interpolated_percentile(latencies, 90),
        "ms_max": max(latencies) if latencies else math.nan,
        "sender_lag_ms_max": lag * 1000,
        **busy,
    }
    if len(latencies) < expected or unmatched:
        run.problems.append(f"latency: {expected - len(latencies)} of {expected} verified receipts missing")
    for what, n in verifier_problems.items():
        run.problems.append(f"verifying receivers: {n} x {what}")


def _start_verifiers(
    ws: Workspace, server: ServerProcess, handed: list[ChatPeer], procs: list[BaseProcess]
) -> list[Connection]:
    """One verifying receiver process per handed-over name (appended to `procs`); the pipes to them."""
    mp = multiprocessing.get_context("spawn")
    conns: list[Connection] = []
    for peer in handed:
        parent_end, child_end = mp.Pipe()
        proc: BaseProcess = mp.Process(
            target=verifier_main,
            args=(
                child_end,
                server.endpoint,
                peer.name,
                str(ws.pool_pem(peer.slot)),
                str(ws.layout.broker_public),
                ws.curve_secret(peer.name),
            ),
            daemon=True,
        )
        proc.start()
        procs.append(proc)
        conns.append(parent_end)
    return conns


def _verified_latencies(
    conns: list[Connection], sent_at: dict[tuple[int, int], float], count: int
) -> tuple[list[float], int, dict[str, int]]:
    """Stop the verifying receivers; the latencies (ms) of what they verified, receipts of nothing sent, problems."""
    latencies: list[float] = []
    unmatched = 0
    verifier_problems: dict[str, int] = {}
    for i, conn in enumerate(conns):
        conn.send(("stop", count, 30.0))
        if not conn.poll(60.0):
            raise BenchError(f"verifying receiver {i} did not report")
        message = conn.recv()
        if message[0] != "result":
            raise BenchError(f"verifying receiver {i} failed: {message[1]}")
        received: list[tuple[int, int, float]] = message[1]
        for slot, number, at in received:
            sent = sent_at.get((slot, number))
            if sent is None:
                unmatched += 1
            else:
                latencies.append((at - sent) * 1000)
        for what, n in message[2].items():
            verifier_problems[what] = verifier_problems.get(what, 0) + n
    return latencies, unmatched, verifier_problems


def _curve_keys(root: Path, count: int) -> tuple[list[CurveKeys], CurveKeys]:
    """Certificates for the CurveZMQ relay: its own, `count` allow-listed clients, and one outsider."""
    for sub in ("server", "clients", "outsider"):
        (root / sub).mkdir(parents=True)
    server_public, _ = zmq.auth.create_certificates(root / "server", "relay")
    server_key = zmq.auth.load_certificate(server_public)[0]

    def pair(directory: Path, name: str) -> CurveKeys:
        _, secret_file = zmq.auth.create_certificates(directory, name)
        public, secret = zmq.auth.load_certificate(secret_file)
        if secret is None:
            raise BenchError(f"{secret_file} holds no secret key")
        return CurveKeys(public, secret, server_key)

    return [pair(root / "clients", f"client{i}") for i in range(count)], pair(root / "outsider", "outsider")


def measure_relay(ws: Workspace, run: Run, curve: bool) -> None:
    s = run.settings
    label = "curve_relay" if curve else "plain_relay"
    keys: list[CurveKeys | None] = [None] * s.clients
    outsider: CurveKeys | None = None
    arguments: list[str] = []
    if curve:
        curve_keys, outsider = _curve_keys(ws.root / "curve", s.clients)
        keys = list(curve_keys)
        arguments = ["--curve", str(ws.root / "curve")]
    server = ws.start_relay(label.replace("_", "-"), arguments)
    progress(f"{label.replace('_', ' ')} pid {server.pid}: {s.clients} clients, same fan-out, {s.duration:g} s")
    fleet = Fleet(server.endpoint, chat=False, sockets=s.clients + 1)
    try:
        payload = message_text(0, 0, s.message_bytes).encode("utf-8")
        peers: list[Peer] = [RelayPeer(i, f"r{i}", payload, keys[i]) for i in range(s.clients)]
        fleet.login(peers, s.clients, 30.0, server)
        detail: dict[str, Any] = {}
        if outsider is not None:  # the allow-list must really keep an unlisted key out
            stranger = RelayPeer(-1, "outsider", payload, outsider)
            stranger.start(fleet)
            deadline = time.monotonic() + 1.0
            while time.monotonic() < deadline and not stranger.ready:
                fleet.pump(20)
            detail["unlisted_key_admitted"] = stranger.ready
            if stranger.ready:
                run.problems.append("curve relay: a key that is not on the allow-list was admitted")
            fleet.remove(stranger)
        tp = fleet.saturate(peers, s.clients - 1, s.warmup, s.duration, RELAY_IN_FLIGHT, server, drain_timeout=10.0)
        fleet.stop_server(server)
    finally:
        fleet.close()
    run.numbers[f"{label}_deliveries_per_s"] = tp.deliveries_per_s
    run.details[label] = {**asdict(tp), **detail, "in_flight_messages": RELAY_IN_FLIGHT}
    run.server_done(server)


def broker_database(server: ServerProcess) -> Path:
    """The database of a broker the workspace started: its config leaves data_dir at "data", next to the config."""
    return server.log_path.parent / "data" / DATABASE_FILE


def measure_commit(ws: Workspace, run: Run) -> None:
    """The store's group commit, timed alone on this disk: groups of 1, 10 and 100 room messages."""
    s = run.settings
    seconds = 0.25 if s.quick else 2.0
    progress(f"timing the store's commits of {', '.join(map(str, commit.GROUP_SIZES))} messages ({seconds:g} s each)")
    directory = ws.root / "commit"
    directory.mkdir()
    try:
        cost = commit.measure(directory / DATABASE_FILE, ws.broker_key(), s.message_bytes, seconds, authors=s.clients)
    except StoreError as exc:
        raise BenchError(f"timing the store's commits failed: {exc}") from None
    run.numbers["commit_latency"] = [
        {
            "messages": group.messages,
            "ms_p50": group.ms_p50,
            "ms_p99": group.ms_p99,
            "messages_per_s": group.messages_per_s,
        }
        for group in cost.groups
    ]
    run.details["commit"] = asdict(cost)


def measure_frame_cost(run: Run) -> None:
    """What CurveZMQ's encryption of every frame costs per delivery, at the size of the broker's EVENTs."""
    body = round(run.details["broker"]["event_body_bytes_mean"])
    messages = 20_000 if run.settings.quick else 100_000
    progress(f"timing {messages} EVENT-sized messages ({body}-byte bodies) plain and over CurveZMQ")
    cost = handshake.frame_cost(body, messages)
    run.numbers["curve_cpu_us_per_delivery"] = cost.extra_us
    run.details["curve_frame_cost"] = asdict(cost)


def login_storm(ws: Workspace, run: Run) -> None:
    s = run.settings
    storm = names("s", s.storm_clients)
    ws.register(storm)
    server = ws.start_broker("storm", broker_config(s.storm_clients))
    fleet = Fleet(server.endpoint, chat=True, sockets=s.storm_clients)
    try:
        peers = chat_peers(ws, storm)
        progress(f"{s.storm_clients} CurveZMQ handshakes one at a time (broker pid {server.pid})")
        secrets = [peer.curve_secret or crypto.curve_secret(peer.key) for peer in peers]
        cost = handshake.measure(server.endpoint, secrets, ws.broker_curve(), server, s.storm_clients)
        time.sleep(0.5)
        progress(f"login storm: {s.storm_clients} clients log in at once")
        for peer in peers:
            peer.decrypt_welcome = False
            peer.prepare_hello()  # sealed to the broker's key before the clock starts
            fleet.connect(peer)
        # every TCP connection is up and through its CurveZMQ handshake before the clock starts
        settle = time.monotonic() + 0.5 + 0.005 * len(peers)
        while time.monotonic() < settle:
            fleet.pump(20)
        cpu0, own0 = server.cpu_seconds(), self_cpu_seconds()
        report = fleet.login(peers, len(peers), 600.0, server)
        cpu1, own1 = server.cpu_seconds(), self_cpu_seconds()
        roster = _fullest_welcome(peers, s.storm_clients)
        fleet.wait_quiet(0.5, 120.0, server)
        fleet.stop_server(server)
    finally:
        fleet.close()
    run.numbers["login_storm_s"] = report.seconds
    run.numbers["curve_handshake_ms"] = cost.wall_ms_p50
    run.numbers["curve_handshake_broker_cpu_ms"] = cost.broker_cpu_ms
    run.details["curve_handshake"] = asdict(cost)
    run.details["login_storm"] = {
        "clients": s.storm_clients,
        "per_client_s_p50": interpolated_percentile(report.per_client_s, 50),
        "per_client_s_max": max(report.per_client_s),
        "attempts": report.attempts,
        "turned_away": report.turned_away,
        "broker_cpu_s": cpu1 - cpu0,
        "generator_cpu_s": own1 - own0,
        "last_welcome_roster": roster,
    }
    if roster != s.storm_clients:
        run.problems.append(f"login storm: the last welcome lists {roster} users, not {s.storm_clients}")
    if report.turned_away:
        run.notes.append(
            f"login storm: the broker turned logins away ({_counts(report.turned_away)}); those clients tried again"
            " (a real client gives up on REFUSED), and the time includes the retries"
        )
    run.server_done(server)


def idle_memory(ws: Workspace, run: Run) -> None:
    s = run.settings
    idle = names("i", s.idle_clients)
    ws.register([*idle, ASKER])
    server = ws.start_broker("idle", broker_config(s.idle_clients))
    time.sleep(0.5)
    empty_rss = server.rss_mb()
    progress(f"filling a broker (pid {server.pid}, {empty_rss:.1f} MiB) with {s.idle_clients} idle clients")
    fleet = Fleet(server.endpoint, chat=True, sockets=s.idle_clients)
    try:
        *peers, asker = chat_peers(ws, [*idle, ASKER])
        for peer in peers:
            peer.decrypt_welcome = False
        cpu0 = server.cpu_seconds()
        report = fleet.login(peers, LOGINS_IN_FLIGHT, 3600.0, server)
        fleet.wait_quiet(1.0, 300.0, server)
        fill_cpu = server.cpu_seconds() - cpu0
        settle = time.monotonic() + 1.0
        while time.monotonic() < settle:
            fleet.pump(20)
        rss = server.rss_mb()
        peak = server.peak_rss_mb()
        roster = _fullest_welcome(peers, s.idle_clients)
        online = _who(fleet, asker, server) - 1  # the asker is online too
        fleet.stop_server(server)
    finally:
        fleet.close()
    run.numbers["rss_mb_1000_clients"] = rss
    run.details["idle"] = {
        "clients": s.idle_clients,
        "rss_mb_empty": empty_rss,
        "rss_mb_peak_while_filling": peak,
        "fill_s": report.seconds,
        "fill_broker_cpu_s": fill_cpu,
        "logins_in_flight": LOGINS_IN_FLIGHT,
        "turned_away": report.turned_away,
        "last_welcome_roster": roster,
        "who_online": online,
    }
    if roster != s.idle_clients or online != s.idle_clients:
        run.problems.append(f"idle: {online} online and {roster} in the last welcome, not {s.idle_clients}")
    run.server_done(server)


def chat_peers(ws: Workspace, registered: list[str]) -> list[ChatPeer]:
    """The generator's chat clients for the registered names (name i has pool slot i)."""
    broker_public, broker_curve = ws.broker_public(), ws.broker_curve()
    return [
        ChatPeer(i, name, ws.client_key(i), broker_public, broker_curve, ws.curve_secret(name))
        for i, name in enumerate(registered)
    ]


def _fullest_welcome(peers: list[ChatPeer], everyone: int) -> int:
    """The most users a kept welcome lists, opened with the real session code from the last one in backwards.

    The broker's last welcome lists everyone; the generator may see another client's welcome after that one
    (they log in together), so the first one it opens that lists `everyone` ends the search.
    """
    fullest = 0
    for peer in sorted(peers, key=lambda peer: peer.logged_in_at, reverse=True):
        fullest = max(fullest, peer.check_welcome())
        if fullest >= everyone:
            break
    return fullest


def _who(fleet: Fleet, peer: ChatPeer, server: ServerProcess) -> int:
    """Log `peer` in and ask the broker who is online, as a client would (/who); the count, `peer` included.

    `peer` keeps every frame from its welcome on: its session must open each delivery in order. (The
    fleet's other clients count what they receive without opening it, so their sessions fall behind.)
    """
    capture: list[Frames] = []
    peer.capture = capture
    fleet.login([peer], 1, 120.0, server)
    fleet.send(peer, peer.session.request("who"))
    answer: list[int] = []

    def answered() -> bool:
        while capture:
            events, _ = peer.session.receive(capture.pop(0))  # PINGs come too
            answer.extend(len(event.users) for event in events if isinstance(event, WhoList))
        return bool(answer)

    fleet.wait_for(answered, "the answer to who", 120.0, server)
    return answer[0]


def _cpu_snapshot(server: ServerProcess, pids: list[int]) -> tuple[float, ...]:
    return (
        time.monotonic(),
        server.cpu_seconds(),
        self_cpu_seconds(),
        sum(cpu_seconds(pid) for pid in pids),
        system_busy_seconds(),
    )


def _cores_busy(before: tuple[float, ...], after: tuple[float, ...]) -> dict[str, float]:
    """CPU seconds per second between two snapshots: the server, the generator, the verifiers, everything else."""
    seconds = after[0] - before[0]
    server, own, verifiers, system = ((after[i] - before[i]) / seconds for i in range(1, 5))
    return {
        "broker_cores_busy": server,
        "generator_cores_busy": own,
        "verifiers_cores_busy": verifiers,
        "other_cores_busy": max(0.0, system - server - own - verifiers),
    }


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} x {what}" for what, n in counts.items())


# ---------------------------------------------------------------- the whole run


def reproduce(settings: Settings) -> str:
    args = shlex.join(settings.argv)
    return f"make bench ARGS={shlex.quote(args)}" if args else "make bench"


def summarise(run: Run, bound: cryptobound.CryptoBound) -> dict[str, Any]:
    s = run.settings
    n = cores()
    deliveries = run.numbers["deliveries_per_s"]
    result: dict[str, Any] = {
        "quick": s.quick,
        "clients": s.clients,
        "message_bytes": s.message_bytes,
        "key_bits": s.key_bits,
        "cores": n,
        "deliveries_per_s": deliveries,
        "crypto_bound_per_s_one_core": bound.deliveries_per_s,
        "efficiency": deliveries / (n * bound.deliveries_per_s),
        "efficiency_one_core": deliveries / bound.deliveries_per_s,
        "crypto_bound_per_s_all_cores": run.numbers["crypto_bound_per_s_all_cores"],
        "efficiency_all_cores": deliveries / run.numbers["crypto_bound_per_s_all_cores"],
        "workers": broker_config(s.clients)["workers"],
        "deliveries_per_s_one_process": run.numbers["deliveries_per_s_one_process"],
        "efficiency_one_process": run.numbers["deliveries_per_s_one_process"] / bound.deliveries_per_s,
        "latency_ms_p50": run.numbers["latency_ms_p50"],
        "latency_ms_p99": run.numbers["latency_ms_p99"],
        "fanout_crypto_ms": bound.fanout_s * 1000,
        "plain_relay_deliveries_per_s": run.numbers["plain_relay_deliveries_per_s"],
        "curve_relay_deliveries_per_s": run.numbers["curve_relay_deliveries_per_s"],
        "rss_mb_1000_clients": run.numbers["rss_mb_1000_clients"],
        "login_storm_s": run.numbers["login_storm_s"],
        "login_crypto_ms": bound.login_s * 1000,
        "login_storm_target_s": 1.5 * s.storm_clients * bound.login_s / n,
        "client_login_crypto_ms": bound.client_login_s * 1000,
        "login_storm_floor_s": s.storm_clients * (bound.login_s + bound.client_login_s) / n,
        "curve_handshake_ms": run.numbers["curve_handshake_ms"],
        "curve_handshake_broker_cpu_ms": run.numbers["curve_handshake_broker_cpu_ms"],
        "login_crypto_per_curve_handshake": bound.login_s * 1000 / run.numbers["curve_handshake_broker_cpu_ms"]
        if run.numbers["curve_handshake_broker_cpu_ms"] > 0
        else None,
        "curve_cpu_us_per_delivery": run.numbers["curve_cpu_us_per_delivery"],
        "commit_latency": run.numbers["commit_latency"],
        "broker_commits_per_s": run.numbers["broker_commits_per_s"],
        "broker_messages_per_commit": run.numbers["broker_messages_per_commit"],
        "idle_clients": s.idle_clients,
        "storm_clients": s.storm_clients,
        "duration_s": s.duration,
        "machine": {
            "cpu": _cpu_model(),
            "python": platform.python_version(),
            "pyzmq": zmq.pyzmq_version(),
            "libzmq": zmq.zmq_version(),
        },
        "details": run.details,
        "notes": run.notes,
        "problems": run.problems,
        "command": reproduce(s),
        "bench_s": time.monotonic() - run.started,
    }
    rounded: dict[str, Any] = _rounded(result)
    return rounded


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _rounded(value: Any) -> Any:
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return None
        return float(f"{value:.4g}") if abs(value) < 1000 else round(value, 1)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value


def standard_notes(run: Run, ws: Workspace) -> None:
    s = run.settings
    distinct = ws.pool_size
    run.notes[:0] = [
        f"keys: {distinct} distinct RSA-{s.key_bits} client keys, generated in parallel; "
        + (
            f"the {s.clients} throughput clients have one each, "
            if distinct >= s.clients
            else f"the {s.clients} throughput clients share them, "
        )
        + f"the {s.storm_clients} storm and {s.idle_clients} idle clients reuse their RSA halves, each name with "
        "a random Curve25519 pair of its own in its .pub (the broker maps a Curve key to one user): RSA and "
        "CurveZMQ cost the same for any key of a size",
        "load generator: one process with a CurveZMQ DEALER per client (the broker and the generator share the "
        "cores); senders' frames are signed and sealed before the window, receivers only count EVENT frames and "
        "send one ACK per socket per batch read; CPU use of both is in details",
        f"latency: {min(VERIFIERS, s.clients - 2)} receivers in their own processes run ClientSession.receive() "
        "(open, MAC, sequence, author signature); time from just before the send to just after the verification",
        "crypto bound: open + verify per message, HMAC + seal per recipient, with crypto/ in one process",
        f"broker: {broker_config(s.clients)['workers']} crypto worker processes (config.json's default, one per "
        "core) do its RSA; the 'one process' row is the same broker with workers: 0, its ROUTER loop doing all of it",
        "login storm target: 1.5 x (storm clients x one login's crypto) / cores; one login's crypto is what the "
        "broker does for a handshake: open HELLO, sign its proof, seal the challenge, open LOGIN, verify the "
        "signature, seal the welcome",
        "login storm floor: storm clients x (the broker's + a client's login crypto) / cores; the clients run on "
        "the same cores, so no broker can finish the storm sooner",
        f"CurveZMQ handshake: {s.storm_clients} connections to the storm's broker before the storm, one at a time, "
        "connect to ZMQ_EVENT_HANDSHAKE_SUCCEEDED (p50), then closed; the broker's CPU per handshake has its idle "
        "use subtracted; compare login_crypto_ms, the RSA work per login",
        "curve_cpu_us_per_delivery: CPU per EVENT (its 3 frames, body of the mean size the generator read) sent "
        "over loopback TCP in one process with CurveZMQ, less without: the sender's encryption and the receiver's "
        "decryption; the broker pays the sending half",
        "commit_latency: a real Store (WAL, synchronous=FULL) on a file in the bench's temporary directory, with the "
        "broker's key; per group, seen() and add_chat() of each room message's history document, then commit(); "
        "broker_commits_per_s: the commit frames the broker wrote to its -wal file in the throughput window, "
        "broker_messages_per_commit: the window's messages per second divided by that",
    ]


def drift_note(run: Run, before: cryptobound.CryptoBound, after: cryptobound.CryptoBound) -> None:
    """The VM's speed can change from minute to minute: say so when the two timings of the bound disagree."""
    drift = after.deliveries_per_s / before.deliveries_per_s - 1
    run.details["crypto_bound_drift"] = drift
    if abs(drift) > BOUND_DRIFT_WARNING:
        run.notes.append(
            f"the crypto bound was {before.deliveries_per_s:.0f}/s before the broker's rows and "
            f"{after.deliveries_per_s:.0f}/s after them ({drift:+.0%}): the machine's speed changed, "
            "so the efficiencies are uncertain by about that much; run again"
        )


def interference_notes(run: Run) -> None:
    """Say so when something besides the benchmark's own processes used the CPU during a timed phase."""
    phases = {
        "the crypto bound": run.details.get("crypto", {}),
        "the crypto bound's second timing": run.details.get("crypto_after", {}),
        "the broker's window": run.details.get("broker", {}),
        "the latency run": run.details.get("latency", {}),
    }
    for what, numbers in phases.items():
        other = numbers.get("other_cores_busy", 0.0)
        if other > OTHER_CPU_WARNING:
            run.notes.append(
                f"during {what}, {other:.2f} cores were busy outside the benchmark's processes (other programs, "
                "kernel work): its numbers may be low; run again on a quiet machine"
            )


def main(argv: list[str] | None = None) -> int:
    settings, as_json, keep = parse_args(argv)
    run = Run(settings)
    n = cores()
    try:
        with Workspace(keep) as ws:
            distinct = min(settings.clients, KEY_POOL_MAX)
            progress(f"generating {distinct + 1} RSA-{settings.key_bits} keys in {n} processes")
            ws.make_keys(distinct, settings.key_bits, n)
            run.details["keygen_s"] = time.monotonic() - run.started
            before = measure_crypto(ws, run)
            measure_all_cores(ws, run)
            measure_broker(ws, run, before, workers=0)
            measure_broker(ws, run, before)
            after = measure_crypto(ws, run, "crypto_after")
            bound = cryptobound.averaged(before, after)
            run.details["crypto_mean"] = {  # the bound's breakdown, as the table shows it
                "open_ms": bound.open_s * 1e3,
                "verify_ms": bound.verify_s * 1e3,
                "mac_ms": bound.mac_s * 1e3,
                "seal_ms": bound.seal_s * 1e3,
            }
            drift_note(run, before, after)
            measure_relay(ws, run, curve=False)
            measure_relay(ws, run, curve=True)
            measure_frame_cost(run)
            measure_commit(ws, run)
            login_storm(ws, run)
            idle_memory(ws, run)
            standard_notes(run, ws)
            interference_notes(run)
    except HarnessError as exc:
        print(f"bench: failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        return 130
    result = summarise(run, bound)
    if as_json:
        print(json.dumps(result, indent=None if settings.quick else 1))
    else:
        print(render_table(result))
    for problem in run.problems:
        print(f"bench: problem: {problem}", file=sys.stderr)
    progress(f"done in {result['bench_s']:.0f} s")
    return 1 if run.problems else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
