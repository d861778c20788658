"""Reading processes from /proc (Linux only): CPU time, memory, children and whether a process still runs."""

from __future__ import annotations

import os
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class NoSuchReading(Exception):
    """A process's /proc files lack the line asked for."""


def _fields(pid: int, thread: int | None = None) -> list[str]:
    """The fields of /proc/PID/stat (or of one thread's) after the command name, state first; OSError when gone."""
    path = f"/proc/{pid}/stat" if thread is None else f"/proc/{pid}/task/{thread}/stat"
    with open(path) as handle:
        stat = handle.read()
    return stat[stat.rindex(")") + 2 :].split()


def _stat(pid: int) -> list[str] | None:
    """`_fields(pid)`, or None when there is no such process."""
    try:
        return _fields(pid)
    except OSError:
        return None


def cpu_seconds(pid: int, thread: int | None = None) -> float:
    """User + system CPU time of process `pid`, all of its threads (or only thread `thread`); OSError when gone."""
    fields = _fields(pid, thread)
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
    raise NoSuchReading(f"no {field} for process {pid}")


def child_pids(pid: int) -> list[int]:
    """The child processes of `pid`'s main thread (a broker's crypto workers, a supervisor's broker)."""
    try:
        return [int(kid) for kid in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def descendants(pid: int) -> list[int]:
    """Every descendant of `pid`, started by any of its threads (the broker's crypto workers and their own)."""
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


def start_time(pid: int) -> str | None:
    """When `pid` started (clock ticks since boot): with the pid, it names one process even if the id is reused."""
    fields = _stat(pid)
    return None if fields is None else fields[19]


def running(pid: int, started: str | None = None) -> bool:
    """The process exists and is not a zombie waiting to be reaped (and, given `started`, is the one that
    started then)."""
    fields = _stat(pid)
    if fields is None or fields[0] in ("Z", "X"):
        return False
    return started is None or fields[19] == started
