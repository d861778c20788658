"""A server program as its own process, and broker.py as one: the one launcher of the tools and the tests.

`ServerProcess` runs a command (stdin closed unless told) with all its output appended to a log file, reads
its port from its "listening on" line, and reads its memory and CPU, its workers' included, from /proc. It
stops it with SIGTERM as a service manager would, or kills it, alone or with its whole process tree as a crash
would. `BrokerProcess` is broker.py run that way from a working directory: it writes the config.json there
(with the port of its last start, so a restart listens where it did) and runs `python broker.py --config
FILE` with `options` (`--no-supervisor` unless a subclass says otherwise). The bench's reference relay and
the fuzzer's watched broker are the same class with another command.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, Self

from harness import procfs
from zchat import crypto
from zchat.keystore import KeyLayout

ROOT = Path(__file__).resolve().parent.parent
BROKER = ROOT / "broker.py"
LISTENING = re.compile(r"listening on tcp://[\d.]+:(\d+)")
START_TIMEOUT = 30.0  # a broker that makes its key pair first, on a loaded machine
LOG_WAIT = 30.0  # a log line that a loaded machine may take a while to write
STOP_TIMEOUT = 60.0

Stdin = int | IO[Any] | None


class HarnessError(Exception):
    """A process under test did not start, died, or would not stop: the run itself failed, not what it measures."""


class ServerProcess:
    """A command run as its own process in `cwd`, its output appended to `log_path`; `proc` is that process."""

    def __init__(self, log_path: Path, cwd: Path, label: str = "server") -> None:
        self.log_path = log_path
        self.cwd = cwd
        self.label = label
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.log_offset = 0  # where the last start's part of the log begins

    def launch(self, command: list[str], stdin: Stdin = subprocess.DEVNULL, env: dict[str, str] | None = None) -> Self:
        """Start `command` (not waiting for anything)."""
        with self.log_path.open("ab") as log_file:
            self.log_offset = log_file.tell()
            self.proc = subprocess.Popen(command, cwd=self.cwd, env=env, stdin=stdin, stdout=log_file, stderr=log_file)
        return self

    @property
    def running_proc(self) -> subprocess.Popen[bytes]:
        """`proc`, which a caller asks for only after a start."""
        if self.proc is None:
            raise HarnessError(f"{self.label} was never started")
        return self.proc

    @property
    def pid(self) -> int:
        return self.running_proc.pid

    @property
    def endpoint(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    # ------------------------------------------------------------ the log

    def log(self, since: int = 0) -> str:
        """The log from byte `since` (the whole log by default: every start's part of it)."""
        return self.log_path.read_bytes()[since:].decode("utf-8", errors="replace")

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def wait_for_log(self, pattern: str, timeout: float = LOG_WAIT, since: int = 0) -> re.Match[str]:
        """The first match of `pattern` in the log after byte `since`, within `timeout` (HarnessError if the
        process ends or the time runs out first)."""
        deadline = time.monotonic() + timeout
        while True:
            ended = not self.alive()
            match = re.search(pattern, self.log(since))
            if match:
                return match
            if ended or time.monotonic() >= deadline:
                break
            time.sleep(0.02)
        why = f"exited with status {self.proc.returncode}" if self.proc is not None and ended else "is silent"
        raise HarnessError(f"{self.label} {why}: its log never matched {pattern!r} ({timeout:g}s):\n{self.log(since)}")

    def wait_for_port(self, timeout: float = START_TIMEOUT) -> int:
        """The port from the last start's "listening on" line."""
        self.port = int(self.wait_for_log(LISTENING.pattern, timeout, self.log_offset).group(1))
        return self.port

    # ------------------------------------------------------------ alive or not

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def check_alive(self) -> None:
        if not self.alive():
            status = self.proc.returncode if self.proc is not None else None
            raise HarnessError(f"{self.label} exited with status {status}:\n{self.log_tail()}")

    # ------------------------------------------------------------ memory and CPU, its workers' included

    def pids(self) -> list[int]:
        """The process and every process under it (the broker's crypto workers)."""
        return [self.pid, *procfs.descendants(self.pid)]

    def _sum(self, read: Callable[[int], float]) -> float:
        total = 0.0
        for pid in self.pids():
            with contextlib.suppress(OSError, procfs.NoSuchReading):  # a process that just exited
                total += read(pid)
        return total

    def cpu_seconds(self) -> float:
        """CPU seconds (user + system) the process and its living descendants have used so far."""
        return self._sum(procfs.cpu_seconds)

    def main_thread_cpu_seconds(self) -> float:
        """CPU time of the main thread alone: the Python loop, without ZeroMQ's I/O thread."""
        return procfs.cpu_seconds(self.pid, self.pid)

    def rss_mb(self) -> float:
        """Resident memory of the process and its descendants, in MiB."""
        return self._sum(lambda pid: procfs.memory_mb(pid, "VmRSS"))

    def peak_rss_mb(self) -> float | None:
        """VmHWM: the most resident memory the main process ever had (None once it is gone)."""
        try:
            return procfs.memory_mb(self.pid, "VmHWM")
        except (OSError, procfs.NoSuchReading):
            return None

    # ------------------------------------------------------------ stopping

    def ask_to_stop(self) -> None:
        """SIGTERM, not waiting for the end."""
        if self.alive():
            self.running_proc.send_signal(signal.SIGTERM)

    def terminate(self, timeout: float = LOG_WAIT) -> int:
        """SIGTERM, like a service manager: the exit status (subprocess.TimeoutExpired if it does not end)."""
        self.ask_to_stop()
        return self.running_proc.wait(timeout)

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM; the exit status, or None when it had to be killed after `timeout`."""
        try:
            return self.terminate(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def kill(self) -> None:
        """SIGKILL the process (not its children) if it still runs, and reap it."""
        if self.alive():
            self.running_proc.kill()
            self.running_proc.wait(10)

    def kill_tree(self, timeout: float = 10.0) -> int:
        """SIGKILL the process and every process under it, as a crash would; wait until they are all gone.
        Returns how many processes were killed.

        The process is stopped (SIGSTOP) first: it can then neither start a new worker nor notice a dead one,
        and none of its children can be reaped (so their ids cannot be reused) until it is dead itself. Its
        children go first, then the process.
        """
        if not self.alive():
            return 0
        pid = self.pid
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGSTOP)
        kids = {kid: started for kid in procfs.descendants(pid) if (started := procfs.start_time(kid)) is not None}
        ipc_dirs = {d for kid in kids if (d := worker_ipc_dir(kid)) is not None}
        for kid in kids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(kid, signal.SIGKILL)
        self.running_proc.kill()
        self.running_proc.wait(timeout)
        deadline = time.monotonic() + timeout
        while (alive := [k for k, s in kids.items() if procfs.running(k, s)]) and time.monotonic() < deadline:
            time.sleep(0.01)
        if alive:
            raise HarnessError(f"processes {alive} of the killed {self.label} are still running after {timeout:g}s")
        for directory in ipc_dirs:  # the workers' private socket directory, which only a clean stop removes
            shutil.rmtree(directory, ignore_errors=True)
        return 1 + len(kids)


def worker_ipc_dir(pid: int) -> Path | None:
    """The private directory of a broker crypto worker's ipc:// endpoint, from its command line."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            args = handle.read().decode("utf-8", errors="replace").split("\0")
    except OSError:
        return None
    for arg in args:
        if arg.startswith("ipc://") and arg.endswith("/jobs"):
            directory = Path(arg[len("ipc://") :]).parent
            if directory.name.startswith("zchat-workers-") and directory.parent == Path(tempfile.gettempdir()):
                return directory
    return None


class BrokerProcess(ServerProcess):
    """broker.py run from `workdir` with `config` (written to workdir/config.json at each start), logging to
    workdir/broker.log; `proc` is the broker itself (`options`: without its supervisor)."""

    options: tuple[str, ...] = ("--no-supervisor",)

    def __init__(self, workdir: Path, config: dict[str, Any], label: str = "broker") -> None:
        super().__init__(workdir / "broker.log", workdir, label)
        self.workdir = workdir
        self.config_path = workdir / "config.json"
        self.config = dict(config)

    @property
    def keys(self) -> KeyLayout:
        """Its keys directory (`keys_dir` of its config, from the working directory)."""
        return KeyLayout(self.workdir / self.config.get("keys_dir", "keys"))

    @property
    def curve_key(self) -> bytes:
        """The broker's Curve25519 public key, from its broker.pub as clients read it."""
        curve = crypto.load_public_key_file(self.keys.broker_public).curve
        if curve is None:
            raise HarnessError(f"{self.keys.broker_public} holds no Curve25519 key")
        return curve

    def command(self) -> list[str]:
        return [sys.executable, str(BROKER), "--config", str(self.config_path), *self.options]

    def start(self, port: int | None = None, stdin: Stdin = subprocess.DEVNULL, timeout: float = START_TIMEOUT) -> Self:
        """Start it on `port` (by default the port of its last start, 0 at first: any free one) and wait until it
        listens. A restart after a kill reuses the same config, port and database."""
        self.config["server_port"] = self.port if port is None else port
        self.config_path.write_text(json.dumps(self.config))
        self.launch(self.command(), stdin)
        self.wait_for_port(timeout)
        return self

    def run_to_the_end(self, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """broker.py with its config file (as written by the last start), supervised, waited for."""
        return run_to_the_end(self.workdir, "--config", str(self.config_path), env=env)


def run_to_the_end(
    cwd: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 30.0
) -> subprocess.CompletedProcess[str]:
    """broker.py with `args`, stdin closed, waited for, its output captured: for the ways it refuses to start."""
    return subprocess.run(
        [sys.executable, str(BROKER), *args],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
