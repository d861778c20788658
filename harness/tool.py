"""The frame of a load tool run from the command line (`python -m soak`, `python -m attack`).

`run_tool()`: a temporary directory, a hard deadline, cleanup whatever happens (Ctrl-C included), the
directory kept when the run failed, and the report (a table, or JSON with --json).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from harness.process import HarnessError

Cleanup = list[Callable[[], None]]


def say(tool: str, message: str) -> None:
    print(f"{tool}: {message}", file=sys.stderr, flush=True)


def run_tool(
    tool: str,
    args: argparse.Namespace,
    run: Callable[[argparse.Namespace, Path, Cleanup], dict[str, Any]],
    show: Callable[[dict[str, Any]], None],
) -> int:
    """Run `run(args, workdir, cleanup)` under `args.timeout`, clean up, show its numbers (or JSON with
    `args.json`); exit status 0 when they say "ok". The directory is kept with `args.keep` or on failure."""

    def on_alarm(_signum: int, _frame: FrameType | None) -> None:
        raise HarnessError(f"the whole run took longer than --timeout {args.timeout:g}s")

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
    except HarnessError as exc:
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
