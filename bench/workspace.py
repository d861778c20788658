"""A throw-away directory for one run: RSA keys made in parallel, registered names, and the processes under test.

Layout of the directory:

    pool/key<i>.pem, pool/key<i>.pub    the distinct RSA key pairs (key0 is the broker's)
    keys/broker.pem, keys/broker.pub    the broker's key pair (a copy of key0)
    keys/clients/<name>.pub             every registered name of the current phase (see `register`)
    <broker-label>/config.json, .log    one directory per broker started
    curve/                              CurveZMQ certificates for the reference relay

Process statistics (CPU time, resident memory) come from /proc, so this runs on Linux only.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from zchat import crypto
from zchat.keystore import KeyLayout, write_private_key, write_public_key

ROOT = Path(__file__).resolve().parent.parent
LISTENING = re.compile(r"listening on tcp://127\.0\.0\.1:(\d+)")
START_TIMEOUT = 30.0
STOP_TIMEOUT = 60.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class BenchError(Exception):
    """The run itself failed: a process did not start, a phase timed out, a client was turned away for good."""


def progress(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def cores() -> int:
    """CPU cores this process may run on (what the broker and the load generator share)."""
    return len(os.sched_getaffinity(0))


# ---------------------------------------------------------------- /proc


def cpu_seconds(pid: int, thread: int | None = None) -> float:
    """User + system CPU time of process `pid`, all of its threads (or only thread `thread`)."""
    path = f"/proc/{pid}/stat" if thread is None else f"/proc/{pid}/task/{thread}/stat"
    with open(path) as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def system_busy_seconds() -> float:
    """CPU time spent by everything on the machine (all cores, not idle), from /proc/stat."""
    with open("/proc/stat") as handle:
        fields = [int(value) for value in handle.readline().split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS


def memory_mb(pid: int, field: str = "VmRSS") -> float:
    """A /proc/<pid>/status memory line (VmRSS: resident now, VmHWM: the peak) in MiB."""
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise BenchError(f"no {field} for process {pid}")


# ---------------------------------------------------------------- keys


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _make_key(job: tuple[Path, int]) -> None:
    path, bits = job
    key = crypto.generate_private_key(bits)
    write_private_key(path.with_suffix(".pem"), key)
    write_public_key(path.with_suffix(".pub"), key)


class Workspace:
    def __init__(self, keep: bool = False) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="zchat-bench-"))
        self.keep = keep
        self.layout = KeyLayout(self.root / "keys")
        self.pool_dir = self.root / "pool"
        self.pool_size = 0
        self.key_cache: dict[int, crypto.PrivateKey] = {}
        self.own_curve: dict[str, bytes] = {}  # registered name -> its own Curve25519 secret (see `register`)
        self.processes: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> Workspace:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        for proc in self.processes:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        if self.keep:
            progress(f"kept {self.root}")
        else:
            shutil.rmtree(self.root, ignore_errors=True)

    def make_keys(self, distinct: int, bits: int, processes: int) -> None:
        """`distinct` client key pairs plus the broker's, generated in parallel processes."""
        self.pool_dir.mkdir()
        jobs = [(self.pool_dir / f"key{i}", bits) for i in range(distinct + 1)]
        mp = multiprocessing.get_context("spawn")
        with mp.Pool(processes, initializer=_ignore_sigint) as pool:
            for _ in pool.imap_unordered(_make_key, jobs):
                pass
        self.pool_size = distinct
        self.layout.clients_dir.mkdir(parents=True)
        shutil.copyfile(self.pool_dir / "key0.pem", self.layout.broker_private)
        self.layout.broker_private.chmod(0o600)
        shutil.copyfile(self.pool_dir / "key0.pub", self.layout.broker_public)

    def pool_pem(self, slot: int) -> Path:
        """The private key file of client slot `slot` (slots beyond the pool reuse its keys round robin)."""
        return self.pool_dir / f"key{slot % self.pool_size + 1}.pem"

    def client_key(self, slot: int) -> crypto.PrivateKey:
        index = slot % self.pool_size
        if index not in self.key_cache:
            self.key_cache[index] = crypto.load_private_key(self.pool_pem(slot))
        return self.key_cache[index]

    def broker_key(self) -> crypto.PrivateKey:
        return crypto.load_private_key(self.layout.broker_private)

    def broker_public(self) -> crypto.PublicKey:
        return crypto.load_public_key(self.layout.broker_public)

    def register(self, names: Sequence[str]) -> None:
        """Make `names` the registered users (name i gets pool slot i), replacing the previous phase's names.

        The broker maps a connection's Curve25519 key to exactly one registered user, so
        every name needs a Curve key of its own. A name whose slot is a pool key of its own
        gets that key's .pub (written by `write_public_key`: RSA key and derived Curve key).
        A name that reuses a pool key (slot beyond the pool) gets a .pub with that pool
        key's RSA half and a random Curve25519 pair of its own (`curve_secret(name)`), bound by the pool key:
        RSA and CurveZMQ cost the same for any key of a size, and keys for 1000 names
        would take minutes to generate.
        """
        for old in self.layout.clients_dir.glob("*.pub"):
            old.unlink()
        self.own_curve = {}
        for slot, name in enumerate(names):
            pool_pub = self.pool_pem(slot).with_suffix(".pub")
            target = self.layout.client_public(name)
            if slot < self.pool_size:
                shutil.copyfile(pool_pub, target)
                continue
            secret = os.urandom(crypto.CURVE_KEY_BYTES)
            public = crypto.curve_public(secret)
            target.write_bytes(crypto.export_public_file(self.client_key(slot), curve=public))  # bound by its RSA key
            if crypto.load_public_key_file(target).curve != public:
                raise BenchError(f"{target}: the Curve25519 key did not read back")
            self.own_curve[name] = secret

    def curve_secret(self, name: str) -> bytes | None:
        """The Curve25519 secret key of a registered name, or None when it is the one derived from its RSA key."""
        return self.own_curve.get(name)

    def broker_curve(self) -> bytes:
        """The broker's Curve25519 public key, from its .pub file as clients read it."""
        curve = crypto.load_public_key_file(self.layout.broker_public).curve
        if curve is None:
            raise BenchError(f"{self.layout.broker_public} holds no Curve25519 key")
        return curve

    # ------------------------------------------------------------ processes

    def start_broker(self, label: str, config: dict[str, Any]) -> ServerProcess:
        """broker.py started the way `make broker` starts it: `python broker.py --config FILE`, stdin closed."""
        workdir = self.root / label
        workdir.mkdir()
        config_path = workdir / "config.json"
        config_path.write_text(json.dumps({**config, "keys_dir": str(self.layout.root)}, indent=2) + "\n")
        command = [sys.executable, "broker.py", "--config", str(config_path), "--no-supervisor"]
        return self._start(label, command, workdir / "broker.log")

    def start_relay(self, label: str, arguments: list[str]) -> ServerProcess:
        workdir = self.root / label
        workdir.mkdir()
        return self._start(label, [sys.executable, "-m", "bench.relay", *arguments], workdir / "relay.log")

    def _start(self, label: str, command: list[str], log_path: Path) -> ServerProcess:
        with log_path.open("ab") as log_file:
            proc = subprocess.Popen(
                command, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file, env=child_env()
            )
        self.processes.append(proc)
        server = ServerProcess(label, proc, log_path)
        server.wait_for_port(START_TIMEOUT)
        return server


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


class ServerProcess:
    """The broker or a reference relay, running as its own process, with its output in a log file."""

    def __init__(self, label: str, proc: subprocess.Popen[bytes], log_path: Path) -> None:
        self.label = label
        self.proc = proc
        self.log_path = log_path
        self.port = 0

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def endpoint(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_bytes().decode("utf-8", errors="replace")

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def wait_for_port(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = LISTENING.search(self.log())
            if match:
                self.port = int(match.group(1))
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise BenchError(f"{self.label} did not start listening:\n{self.log_tail()}")

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise BenchError(f"{self.label} exited with status {self.proc.returncode}:\n{self.log_tail()}")

    def pids(self) -> list[int]:
        """The server and its child processes (the broker's crypto workers)."""
        try:
            with open(f"/proc/{self.pid}/task/{self.pid}/children") as handle:
                return [self.pid, *map(int, handle.read().split())]
        except OSError:
            return [self.pid]

    def cpu_seconds(self) -> float:
        """CPU time of the server and its workers."""
        total = 0.0
        for pid in self.pids():
            with contextlib.suppress(OSError):  # a worker that just exited
                total += cpu_seconds(pid)
        return total

    def main_thread_cpu_seconds(self) -> float:
        """CPU time of the main thread alone: the Python loop, without ZeroMQ's I/O thread."""
        return cpu_seconds(self.pid, self.pid)

    def rss_mb(self) -> float:
        """Resident memory of the server and its workers."""
        return sum(memory_mb(pid, "VmRSS") for pid in self.pids())

    def peak_rss_mb(self) -> float:
        return memory_mb(self.pid, "VmHWM")

    def terminate(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM, like a service manager; the exit status, or None when it had to be killed."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            return None

    def problems(self) -> list[str]:
        """Lines of the log that say the process failed, or dropped a benchmark client it should have kept."""
        bad = ("internal error", "Traceback", "too slow to keep up", "timed out")
        return [line for line in self.log().splitlines() if any(word in line for word in bad)]
