"""Driving the real programs as child processes without ever hanging.

`Proc` wraps `subprocess.Popen`: one thread per output stream collects lines,
`expect_line` waits (with a timeout) for a line matching a pattern, and
`send` writes a line to the child's stdin.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from harness.process import run_to_the_end
from tests.conftest import ROOT, WAIT, run_env

CLIENT = str(ROOT / "chat_client.py")
BROKER = str(ROOT / "broker.py")


class Lines:
    """Lines read from one stream by a background thread; waiters are woken on each new line."""

    def __init__(self, stream: IO[bytes]) -> None:
        self.lines: list[str] = []
        self.closed = False
        self._cond = threading.Condition()
        self._cursor = 0
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: IO[bytes]) -> None:
        try:
            for raw in iter(stream.readline, b""):
                with self._cond:
                    self.lines.append(raw.decode("utf-8", errors="replace").rstrip("\r\n"))
                    self._cond.notify_all()
        finally:
            with self._cond:
                self.closed = True
                self._cond.notify_all()

    def expect(self, pattern: str, timeout: float, what: str) -> re.Match[str]:
        """The first line after the previous match that matches `pattern`; fails listing the lines seen."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                while self._cursor < len(self.lines):
                    line = self.lines[self._cursor]
                    self._cursor += 1
                    match = regex.search(line)
                    if match:
                        return match
                remaining = deadline - time.monotonic()
                if self.closed or remaining <= 0:
                    state = "stream closed" if self.closed else f"nothing within {timeout}s"
                    raise AssertionError(f"{what}: no line matching {pattern!r} ({state}); got:\n{self.text()}")
                self._cond.wait(remaining)

    def text(self) -> str:
        return "\n".join(self.lines)

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)


class Proc:
    """A child process with piped stdin/stdout/stderr read by threads.

    `args` run under this Python, or as a command of their own with `command=True`; `group=True` starts the
    child in a process group of its own, which `kill()` kills whole (make, the shell and Python under it).
    """

    def __init__(
        self,
        args: Sequence[str],
        cwd: Path,
        env: dict[str, str] | None = None,
        name: str = "",
        *,
        command: bool = False,
        group: bool = False,
    ) -> None:
        self.name = name or Path(args[0 if command else 1]).name
        self.group = group
        self.popen = subprocess.Popen(
            list(args) if command else [sys.executable, *args],
            cwd=cwd,
            env=run_env() if env is None else env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=group,
        )
        assert self.popen.stdout is not None
        assert self.popen.stderr is not None
        self.out = Lines(self.popen.stdout)
        self.err = Lines(self.popen.stderr)

    def send(self, *lines: str) -> None:
        assert self.popen.stdin is not None
        for line in lines:
            self.popen.stdin.write(line.encode("utf-8") + b"\n")
        self.popen.stdin.flush()

    def close_stdin(self) -> None:
        if self.popen.stdin is not None and not self.popen.stdin.closed:
            self.popen.stdin.close()

    def expect_line(self, pattern: str, timeout: float = WAIT) -> re.Match[str]:
        """Wait for a stdout line matching `pattern` (searched after the previous stdout match)."""
        return self.out.expect(pattern, timeout, f"{self.name} stdout")

    def expect_err(self, pattern: str, timeout: float = WAIT) -> re.Match[str]:
        return self.err.expect(pattern, timeout, f"{self.name} stderr")

    def wait(self, timeout: float = WAIT) -> int:
        """The exit status; fails (showing the output) if the process is still running after `timeout`."""
        try:
            code = self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{self.name} still running after {timeout}s:\n{self.transcript()}") from None
        self.out.join(5)
        self.err.join(5)
        return code

    def alive(self) -> bool:
        return self.popen.poll() is None

    def transcript(self) -> str:
        return f"--- stdout\n{self.out.text()}\n--- stderr\n{self.err.text()}"

    def kill(self) -> None:
        """Kill if still running (its whole group, with `group`), then release every pipe (after the reader
        threads saw end of file)."""
        if self.popen.poll() is None:
            if self.group:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.popen.pid, signal.SIGKILL)
            else:
                self.popen.kill()
        self.popen.wait(10)
        with contextlib.suppress(BrokenPipeError):
            self.close_stdin()
        self.out.join(5)
        self.err.join(5)
        for stream in (self.popen.stdout, self.popen.stderr):
            if stream is not None:
                stream.close()


def run_broker_to_the_end(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """broker.py with `args` (`harness.process.run_to_the_end`) in the tests' environment: for the ways it refuses
    to start."""
    return run_to_the_end(cwd, *args, env=run_env(), timeout=WAIT)


def assert_one_line_error(stderr: str, *fragments: str) -> str:
    """stderr holds exactly one non-empty line, no traceback, containing every fragment (case-insensitive)."""
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got:\n{stderr}"
    for fragment in fragments:
        assert fragment.lower() in lines[0].lower(), f"{fragment!r} not in {lines[0]!r}"
    return lines[0]
