"""What a load tool (`python -m soak`, `python -m attack`) needs around a real broker.

Keys made in parallel, `broker.py` run as its own process the way a person
runs it (output in a log file, stopped with SIGTERM; or killed with SIGKILL,
crypto workers and all, and started again on the same port and database), the
memory and CPU of that process and its crypto workers read from /proc (with the
readers of `bench.workspace`), and `run_tool()`: a
temporary directory, a hard deadline, cleanup whatever happens (Ctrl-C
included), the directory kept when the run failed, and the report.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import multiprocessing
import multiprocessing.context
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
from types import FrameType
from typing import Any

from bench.workspace import BenchError, cpu_seconds, memory_mb
from zchat import crypto
from zchat.keystore import KeyLayout, write_private_key, write_public_key

ROOT = Path(__file__).resolve().parent.parent
BROKER = ROOT / "broker.py"
LISTENING = re.compile(r"listening on tcp://127\.0\.0\.1:(\d+)")

Cleanup = list[Callable[[], None]]


class ToolError(Exception):
    """The run itself failed (not what it measures): a timeout, a process that died, a broker that never started."""


def say(tool: str, message: str) -> None:
    print(f"{tool}: {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- keys


def _make_key(job: tuple[Path, str | None, int]) -> None:
    """Generate and write one key pair: the broker's (name None) or a user's (private key and registration)."""
    root, name, bits = job
    layout = KeyLayout(root)
    key = crypto.generate_private_key(bits)
    if name is None:
        write_private_key(layout.broker_private, key)
        write_public_key(layout.broker_public, key)
    else:
        write_private_key(layout.client_private(name), key)
        write_public_key(layout.client_public(name), key)


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def make_keys(mp: multiprocessing.context.BaseContext, root: Path, names: list[str], bits: int) -> None:
    """The broker's key pair and one per name under `root`, on every core."""
    KeyLayout(root).clients_dir.mkdir(parents=True)
    (root / "private").mkdir()
    jobs: list[tuple[Path, str | None, int]] = [(root, None, bits), *((root, name, bits) for name in names)]
    with mp.Pool(os.cpu_count() or 1, initializer=_ignore_sigint) as pool:
        for _ in pool.imap_unordered(_make_key, jobs, chunksize=4):
            pass


# ---------------------------------------------------------------- /proc


def children(pid: int) -> list[int]:
    """Every descendant of `pid` (the broker's crypto workers and whatever they start)."""
    found: list[int] = []
    todo = [pid]
    while todo:
        parent = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                with open(f"/proc/{parent}/task/{task}/children") as handle:
                    kids = [int(k) for k in handle.read().split()]
            except OSError:
                continue
            found.extend(kids)
            todo.extend(kids)
    return found


# ---------------------------------------------------------------- the broker


class BrokerProcess:
    """broker.py run the way a person runs it, with its output in a log file (appended to across restarts)."""

    def __init__(self, workdir: Path, config_path: Path) -> None:
        self.workdir = workdir
        self.log_path = workdir / "broker.log"
        self.config_path = config_path
        self.port = 0
        self.log_offset = 0  # where this start's part of the log begins
        self._start()

    def _start(self) -> None:
        with self.log_path.open("ab") as log_file:
            self.log_offset = log_file.tell()
            self.proc = subprocess.Popen(
                [sys.executable, str(BROKER), "--config", str(self.config_path), "--no-supervisor"],
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=log_file,
            )

    def log(self) -> str:
        """The whole log, every start's part of it."""
        return self.log_path.read_bytes().decode("utf-8", errors="replace")

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def wait_for_port(self, timeout: float) -> int:
        """The port from this start's "listening on" line (ToolError if it does not come within `timeout`)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.log_path.open("rb") as handle:
                handle.seek(self.log_offset)
                match = LISTENING.search(handle.read().decode("utf-8", errors="replace"))
            if match:
                self.port = int(match.group(1))
                return self.port
            if self.proc.poll() is not None:
                raise ToolError(f"the broker exited with status {self.proc.returncode}:\n{self.log_tail()}")
            time.sleep(0.05)
        raise ToolError(f"the broker did not log 'listening on' within {timeout:g}s:\n{self.log_tail()}")

    def pin_port(self) -> None:
        """Write the port this broker got into its config.json, so that a restart listens on the same one."""
        config = json.loads(self.config_path.read_text())
        config["server_port"] = self.port
        self.config_path.write_text(json.dumps(config, indent=2) + "\n")

    def kill_tree(self, timeout: float = 10.0) -> int:
        """SIGKILL the broker and every process under it (its crypto workers), as a crash would; wait until
        they are all gone. Returns how many processes were killed.

        The broker is stopped (SIGSTOP) first: it can then neither start a new worker nor notice a dead one,
        and none of its children can be reaped (so their ids cannot be reused) until it is dead itself. Its
        children go first, then the broker.
        """
        pid = self.proc.pid
        if self.proc.poll() is not None:
            return 0
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGSTOP)
        kids = {kid: started for kid in children(pid) if (started := _start_time(kid)) is not None}
        ipc_dirs = {d for kid in kids if (d := _worker_ipc_dir(kid)) is not None}
        for kid in kids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(kid, signal.SIGKILL)
        self.proc.kill()
        self.proc.wait(timeout)
        deadline = time.monotonic() + timeout
        while (alive := [k for k, started in kids.items() if _running(k, started)]) and time.monotonic() < deadline:
            time.sleep(0.01)
        if alive:
            raise ToolError(f"processes {alive} of the killed broker are still running after {timeout:g}s")
        for directory in ipc_dirs:  # the workers' private socket directory, which only a clean stop removes
            shutil.rmtree(directory, ignore_errors=True)
        return 1 + len(kids)

    def restart(self, timeout: float) -> int:
        """Start broker.py again with the same config (and so the same port and database); its new port."""
        if self.proc.poll() is None:
            raise ToolError("restart() while the broker is still running")
        self._start()
        return self.wait_for_port(timeout)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def check_alive(self) -> None:
        if not self.alive():
            raise ToolError(f"the broker exited early with status {self.proc.returncode}:\n{self.log_tail()}")

    def peak_rss_mb(self) -> float | None:
        """VmHWM: the most resident memory the broker's main process ever had."""
        try:
            return memory_mb(self.proc.pid, "VmHWM")
        except (OSError, BenchError):
            return None

    def tree_rss_mb(self) -> float:
        """Resident memory of the broker and all its child processes, in MiB."""
        return self._sum(lambda pid: memory_mb(pid, "VmRSS"))

    def tree_cpu_s(self) -> float:
        """CPU seconds (user + system) the broker and its living child processes have used so far."""
        return self._sum(cpu_seconds)

    def _sum(self, read: Callable[[int], float]) -> float:
        total = 0.0
        for pid in [self.proc.pid, *children(self.proc.pid)]:
            with contextlib.suppress(OSError, BenchError):  # a process that just exited
                total += read(pid)
        return total

    def stop(self, timeout: float) -> int | None:
        """SIGTERM, like a service manager; the exit status, or None if it had to be killed."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (state first), or None when there is no such process."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            stat = handle.read()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2 :].split()


def _start_time(pid: int) -> str | None:
    """When `pid` started (clock ticks since boot): with the pid, it names one process even if the id is reused."""
    fields = _stat(pid)
    return None if fields is None else fields[19]


def _running(pid: int, started: str) -> bool:
    """True while the process `pid` that started at `started` exists and is not a zombie."""
    fields = _stat(pid)
    return fields is not None and fields[19] == started and fields[0] not in ("Z", "X")


def _worker_ipc_dir(pid: int) -> Path | None:
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


# ---------------------------------------------------------------- the command line


def run_tool(
    tool: str,
    args: argparse.Namespace,
    run: Callable[[argparse.Namespace, Path, Cleanup], dict[str, Any]],
    show: Callable[[dict[str, Any]], None],
) -> int:
    """Run `run(args, workdir, cleanup)` under `args.timeout`, clean up, show its numbers (or JSON with
    `args.json`); exit status 0 when they say "ok". The directory is kept with `args.keep` or on failure."""

    def on_alarm(_signum: int, _frame: FrameType | None) -> None:
        raise ToolError(f"the whole run took longer than --timeout {args.timeout:g}s")

    def on_term(_signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGALRM, on_alarm)
    signal.signal(signal.SIGTERM, on_term)
    signal.alarm(max(1, math.ceil(args.timeout)))
    workdir = Path(tempfile.mkdtemp(prefix=f"zchat-{tool}-"))
    cleanup: Cleanup = []
    keep = args.keep
    try:
        numbers = run(args, workdir, cleanup)
        keep = keep or not numbers["ok"]
    except ToolError as exc:
        say(tool, f"error: {exc}")
        keep = True
        return 1
    except KeyboardInterrupt:
        say(tool, "interrupted")
        return 130
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the cleanup short
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for step in reversed(cleanup):
            step()
        if keep:
            say(tool, f"kept {workdir} (config.json, keys, broker.log)")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        print(json.dumps(numbers))
    else:
        show(numbers)
    return 0 if numbers["ok"] else 1
