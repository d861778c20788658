"""The broker's supervisor: the process `make broker`, `python broker.py` and `zchat-broker` start.

It runs the real broker (`zchat.broker.main`) as its child, with the same command line plus
`--no-supervisor` and the same stdin, stdout and stderr, so the console, the log and the exit status are the
broker's own. When the broker dies abnormally, the supervisor starts it again (after `RESTART_DELAY`) and says
so in one log line; when it keeps dying soon after it started (more than `MAX_RESTARTS` times in
`RESTART_WINDOW` seconds, each within `STABLE_AFTER` seconds of its start: it cannot run) it gives up with a
one-line error. A broker that ran `STABLE_AFTER` seconds before it died starts the count afresh: a peer who
can crash a running broker now and then costs restarts, never the service. libzmq aborts the whole process
when a peer has claimed the routing id it makes up next (socket_base.cpp); the broker makes that hard to
reach, and this makes what is left cost a restart.

Which deaths are restarted (`crashed`, a pure function, like `RestartBudget`):
- killed by a signal (SIGABRT, SIGSEGV, SIGBUS, the OOM killer's SIGKILL, ...), except the signals of a stop:
  SIGINT, SIGTERM, SIGHUP and SIGPIPE (the ones systemd counts as clean);
- any exit status but 0 (stopped), 1 (refused to start: config, keys, database, port; it would only fail
  again) and 2 (a command-line error). The broker itself exits with 70 (`os.EX_SOFTWARE`) when it stops on a
  failure after it started (its crypto workers or its gatekeeper kept failing).

SIGINT, SIGTERM and SIGHUP sent to the supervisor are passed to the broker, which stops gracefully; the
supervisor then exits with the broker's status (128 + N for signal N), and never restarts it. A Ctrl-C typed on
a terminal reaches the broker directly (it is in the terminal's foreground process group with the
supervisor): that SIGINT, which the kernel sends (si_code SI_KERNEL), is not passed on a second time.

The broker dies with its supervisor: `die_with_supervisor` (run in the child before anything else) asks Linux
for SIGKILL when its parent dies (PR_SET_PDEATHSIG), so a `kill -9` of the supervisor leaves no broker
holding the port; without prctl, a thread watches `os.getppid()` instead. The broker's crypto workers leave by
themselves once their broker is gone. `--no-supervisor` runs the broker in the first process (for systemd or
another service manager; contrib/systemd/zchat-broker.service); so do `--backup` and `--help`, and every
platform without `signal.sigtimedwait` (macOS, Windows).
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import logging
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

NO_SUPERVISOR = "--no-supervisor"
SUPERVISOR_PID = "ZCHAT_SUPERVISOR_PID"  # set for the child: the pid it must die with
RESTART_DELAY = 0.2  # seconds between a crash and the next start
MAX_RESTARTS = 5  # restarts allowed within RESTART_WINDOW seconds; one more crash and the supervisor gives up
RESTART_WINDOW = 60.0
STABLE_AFTER = 10.0  # seconds: a broker that ran this long before it died clears the restart count
STOP_SIGNALS = frozenset({signal.SIGINT, signal.SIGTERM, signal.SIGHUP})  # passed on to the broker
CLEAN_SIGNALS = frozenset({signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGPIPE})  # a death by these: a stop
NOT_RESTARTED = {0: "stopped", 1: "refused to start", 2: "a command-line error"}
SI_KERNEL = 0x80  # Linux si_code of a signal the kernel sent: a terminal's Ctrl-C reaches the whole process group
PR_SET_PDEATHSIG = 1
PARENT_POLL = 0.5  # seconds, for the getppid() watch where prctl is missing


# ------------------------------------------------------------ the policy (no processes)


def crashed(status: int) -> bool:
    """True when a broker that ended with `status` (a `Popen.returncode`: -N when killed by signal N) died
    abnormally, and is to be started again."""
    if status < 0:
        return -status not in CLEAN_SIGNALS
    return status not in NOT_RESTARTED


def passed_on(signum: int, si_code: int) -> bool:
    """Whether a stop signal the supervisor got goes on to the broker: all but a SIGINT the kernel sent, which
    is a terminal's Ctrl-C and reached the broker, in the same foreground process group, already."""
    return not (signum == signal.SIGINT and si_code == SI_KERNEL)


def describe(status: int, core_dumped: bool = False) -> str:
    """How a broker ended, for a log line: "killed by SIGABRT (core dumped)", "exited with status 70"."""
    if status < 0:
        try:
            name = signal.Signals(-status).name
        except ValueError:
            name = f"signal {-status}"
        return f"killed by {name}" + (" (core dumped)" if core_dumped else "")
    return f"exited with status {status}"


def exit_status(status: int) -> int:
    """The supervisor's own exit status for a broker that ended with `status`: the same, 128 + N for signal N."""
    return 128 - status if status < 0 else status


@dataclass
class RestartBudget:
    """At most `limit` restarts within any `window` seconds of brokers that died within `stable_after` seconds of
    their start; one that ran longer clears the count."""

    limit: int = MAX_RESTARTS
    window: float = RESTART_WINDOW
    stable_after: float = STABLE_AFTER
    times: collections.deque[float] = field(default_factory=collections.deque)

    def take(self, now: float, ran_for: float = 0.0) -> bool:
        """Count a restart at `now` (monotonic seconds) of a broker that ran `ran_for` seconds; False, counting
        nothing, when the budget is spent."""
        if ran_for >= self.stable_after:
            self.times.clear()
        while self.times and self.times[0] <= now - self.window:
            self.times.popleft()
        if len(self.times) >= self.limit:
            return False
        self.times.append(now)
        return True


def wants_supervisor(args: list[str]) -> bool:
    """False for a command line that runs the broker in this process: `--no-supervisor`, `--backup`, `--help`
    (or an abbreviation argparse would take for one of them)."""
    for arg in args:
        if arg == "--":
            break
        name = arg.split("=", 1)[0]
        if arg == "-h" or any(len(name) >= 3 and option.startswith(name) for option in (NO_SUPERVISOR, "--help")):
            return False
        if len(name) >= 3 and "--backup".startswith(name):
            return False
    return True


# ------------------------------------------------------------ the supervisor's process


def can_supervise() -> bool:
    return os.name == "posix" and hasattr(signal, "sigtimedwait") and hasattr(os, "posix_spawn")


def program() -> str:
    """The name the broker was started by (broker, zchat-broker), for the one-line error."""
    return Path(sys.argv[0]).name.removesuffix(".py")


def supervise(command: list[str], budget: RestartBudget | None = None, delay: float = RESTART_DELAY) -> int:
    """Run `command` (the broker, with --no-supervisor) until it stops; start it again each time it crashes.
    Returns the exit status for this process."""
    budget = budget or RestartBudget()
    handled = {*STOP_SIGNALS, signal.SIGCHLD}
    # Blocked, they wait for sigwaitinfo(): no handler can run between a check and a wait, and a child's death
    # or a stop is never missed. The child is started with nothing blocked.
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, handled)
    try:
        pid, started = _spawn(command), time.monotonic()
        stopping = False
        while True:
            info = signal.sigwaitinfo(handled)
            if info.si_signo != signal.SIGCHLD:
                stopping = True
                if passed_on(info.si_signo, info.si_code):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, info.si_signo)
                continue
            ended = _reap(pid)
            if ended is None:  # stopped or continued, not gone
                continue
            status, core_dumped = ended
            if stopping or not crashed(status):
                return exit_status(status)
            if not budget.take(time.monotonic(), ran_for=time.monotonic() - started):
                print(
                    f"{program()}: error: the broker died {budget.limit + 1} times within {budget.window:g} s"
                    f" (last: {describe(status, core_dumped)}); not starting it again",
                    file=sys.stderr,
                    flush=True,
                )
                return exit_status(status)
            if signal.sigtimedwait(STOP_SIGNALS, delay) is not None:  # asked to stop while it was down
                return exit_status(status)
            old, pid, started = pid, _spawn(command), time.monotonic()
            log.warning(
                "the broker (pid %d) %s; started it again as pid %d (restart %d in the last %g s)",
                old,
                describe(status, core_dumped),
                pid,
                len(budget.times),
                budget.window,
            )
    finally:
        while signal.sigtimedwait(handled, 0) is not None:  # a second SIGTERM must not kill us once unblocked
            pass
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _spawn(command: list[str]) -> int:
    environment = {**os.environ, SUPERVISOR_PID: str(os.getpid())}
    return os.posix_spawn(command[0], command, environment, setsigmask=(), setsigdef=(signal.SIGPIPE,))


def _reap(pid: int) -> tuple[int, bool] | None:
    """(status as a returncode, core dumped) once `pid` has ended; None while it runs."""
    try:
        done, raw = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return -signal.SIGKILL, False  # reaped already: cannot happen here, but never wait for ever
    if done == 0:
        return None
    return os.waitstatus_to_exitcode(raw), os.WIFSIGNALED(raw) and os.WCOREDUMP(raw)


# ------------------------------------------------------------ the broker's side


def die_with_supervisor(supervisor_pid: int) -> None:
    """In the broker started by a supervisor, before anything else: be killed (SIGKILL) when the supervisor
    dies, however it dies, so that no broker is left holding the port."""
    if not _set_parent_death_signal(signal.SIGKILL):
        threading.Thread(target=_watch_parent, args=(supervisor_pid,), daemon=True, name="supervisor-watch").start()
    if os.getppid() != supervisor_pid:  # it died before we asked: nobody would stop or restart us
        raise SystemExit(f"{program()}: error: its supervisor (pid {supervisor_pid}) is gone; not starting")


def _set_parent_death_signal(signum: int) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(PR_SET_PDEATHSIG, ctypes.c_ulong(signum), 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def _watch_parent(supervisor_pid: int) -> None:
    while os.getppid() == supervisor_pid:
        time.sleep(PARENT_POLL)
    os.kill(os.getpid(), signal.SIGKILL)


# ------------------------------------------------------------ the command


def launch(argv: list[str] | None = None, own_keys_dir: Path | None = None) -> int:
    """`python broker.py` and `zchat-broker`: the supervisor, or (with --no-supervisor, and as the supervisor's
    child) the broker itself. `own_keys_dir` as for `zchat.broker.main.main`."""
    args = sys.argv[1:] if argv is None else argv
    supervisor_pid = os.environ.pop(SUPERVISOR_PID, None)
    if supervisor_pid is not None and supervisor_pid.isdigit():
        die_with_supervisor(int(supervisor_pid))
    if supervisor_pid is None and wants_supervisor(args) and can_supervise():
        logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
        return supervise([sys.executable, os.path.abspath(sys.argv[0]), NO_SUPERVISOR, *args])
    from zchat.broker.main import main  # only here: the supervisor stays a small process

    return main(args, own_keys_dir=own_keys_dir)


def main() -> int:
    """The `zchat-broker` command."""
    return launch()
