"""Where the broker's crypto jobs run: in its own loop, or in worker processes.

`InlineJobs` (config `workers: 0`) does each job the moment it is submitted.
`WorkerPool` runs `workers` processes (`python -m zchat.broker.workers`, which
runs `zchat.broker.worker_process`) and feeds them with the ZeroMQ
load-balancing pattern: a ROUTER in the broker on a
private ipc:// socket (a fresh 0700 directory in the temporary directory,
named after the broker's pid: a broker killed with SIGKILL cannot remove it,
so the next one to start removes those whose broker is gone), a DEALER per
worker, at most `CREDIT` batches handed to each worker at a time. Workers get the broker's
private key on their stdin, never on a socket or a command line.

Both keep the order the core relies on: each recipient's deliveries in the
order the core made them, and each connection's envelopes opened in the order
its frames arrived. Envelopes wait in an `OpenQueue`: logged-in users'
statements take turns, one user at a time, ahead of handshake work (which
gets every fifth turn while both wait), so neither a login storm nor one
user's flood delays everyone else. The pool numbers each batch as it hands it
out and releases results in batch order (a reorder buffer), whichever worker
finishes first.

The queues are bounded by what feeds them. Deliveries go first: a fan-out
under way finishes before the next envelope is opened, which keeps latency
low and the delivery queue short (at most a few batches of envelopes' worth
of fan-outs). So in a burst the backlog is unopened SEND frames (at most
`queued_sends_per_user` per user, see BrokerCore.receive), not sealed copies
for every member; a session's that ended are dropped unopened (`Cancel`).
Deliveries to a peer the broker could not reach are dropped unsealed.
"""

from __future__ import annotations

import collections
import logging
import os
import shutil
import stat
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import zmq

from zchat import crypto
from zchat.broker.work import Cancel, DeliveryJob, Job, JobRunner, OpenJob, Result, decode_results, encode_jobs
from zchat.broker.worker_process import READY, main, pack, perform, unpack
from zchat.errors import WorkerError
from zchat.protocol import SEND

log = logging.getLogger(__name__)

CREDIT = 2  # batches handed to one worker at a time: one to work on, one waiting
DELIVERY_BATCH = 16  # about 4.5 ms of sealing with RSA-3072
OPEN_BATCH = 2
START_TIMEOUT = 30.0
MAX_RESTARTS = 10  # within RESTART_WINDOW: workers that keep dying stop the broker
RESTART_WINDOW = 600.0
BATCH_TIMEOUT = 30.0  # a batch takes milliseconds: a worker that holds one this long is hung, and is restarted
CHECK_INTERVAL = 0.1  # check() looks at the workers at most this often


DIRECTORY_PREFIX = "zchat-workers-"  # then the broker's pid and a random part, in the temporary directory


def worker_environment() -> dict[str, str]:
    """The workers import what the broker imported: its sys.path, in its order (the repository first when
    broker.py runs from it, only the installed places for zchat-broker). `-P` keeps the working directory out."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(entry for entry in sys.path if entry)}


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def remove_stale_directories(root: Path | None = None) -> list[Path]:
    """Remove the socket directories of brokers that died without removing them (kill -9, a crash).

    Only ours (same user) and only those whose broker pid no longer runs; returns what was removed.
    """
    root = Path(tempfile.gettempdir()) if root is None else root
    removed: list[Path] = []
    try:
        candidates = list(root.glob(f"{DIRECTORY_PREFIX}*"))
    except OSError:
        return removed
    for path in candidates:
        pid_text = path.name.removeprefix(DIRECTORY_PREFIX).split("-", 1)[0]
        try:
            info = path.lstat()
        except OSError:
            continue
        if not pid_text.isdigit() or not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
            continue
        if int(pid_text) == os.getpid() or _running(int(pid_text)):
            continue
        shutil.rmtree(path, ignore_errors=True)
        if not path.exists():
            log.info(
                "cleaned up %s, left behind by an earlier broker (pid %s) that did not stop cleanly", path, pid_text
            )
            removed.append(path)
    return removed


HANDSHAKE_TURN = 5  # while both wait, every fifth envelope opened is handshake work
INLINE_OPENS_PER_TURN = 8  # `workers: 0`: envelopes opened per turn of the loop, so it reads frames in between


class OpenQueue:
    """Envelopes to open and challenges to sign, served fairly.

    Logged-in users' SENDs take turns (round robin per user, whatever the number of their sessions, each
    user's in arrival order) ahead of handshake work (HELLO, LOGIN, challenges), which gets every
    HANDSHAKE_TURN-th turn while both wait. `cancel()` drops the SENDs of a session that ended.
    """

    def __init__(self) -> None:
        self.users: dict[str, collections.deque[OpenJob]] = {}  # insertion order is the round
        self.handshakes: collections.deque[Job] = collections.deque()
        self.turn = 0

    def append(self, job: Job) -> None:
        if isinstance(job, OpenJob) and job.command == SEND:
            self.users.setdefault(job.owner, collections.deque()).append(job)
        else:
            self.handshakes.append(job)

    def popleft(self) -> Job:
        self.turn += 1
        if self.handshakes and (not self.users or self.turn % HANDSHAKE_TURN == 0):
            return self.handshakes.popleft()
        owner, jobs = next(iter(self.users.items()))
        job = jobs.popleft()
        del self.users[owner]
        if jobs:
            self.users[owner] = jobs  # to the end of the round
        return job

    def cancel(self, cancel: Cancel) -> int:
        """Drop the ended session's SENDs not yet handed out; how many were dropped."""
        jobs = self.users.get(cancel.owner)
        if not jobs:
            return 0
        kept = collections.deque(job for job in jobs if job.session != cancel.session)
        dropped = len(jobs) - len(kept)
        if kept:
            self.users[cancel.owner] = kept
        else:
            del self.users[cancel.owner]
        return dropped

    def clear(self) -> None:
        self.users.clear()
        self.handshakes.clear()

    def __len__(self) -> int:
        return len(self.handshakes) + sum(len(jobs) for jobs in self.users.values())

    def __bool__(self) -> bool:
        return bool(self.handshakes or self.users)


class InlineJobs:
    """`workers: 0`: the crypto is done in the broker's own loop: deliveries at once, envelopes a few per turn."""

    def __init__(self, broker_key: crypto.PrivateKey, deliverable: Callable[[bytes], bool]) -> None:
        self.sockets: list[zmq.Socket[bytes]] = []
        self.runner = JobRunner(broker_key)
        self.deliverable = deliverable
        self.results: list[Result] = []
        self.opens = OpenQueue()

    def submit(self, jobs: list[Job | Cancel]) -> None:
        for job in jobs:
            if isinstance(job, Cancel):
                self.opens.cancel(job)
            elif not isinstance(job, DeliveryJob):
                self.opens.append(job)
            elif self.deliverable(job.identity):
                self._perform(job)

    def _perform(self, job: Job) -> None:
        result = perform(self.runner, job)
        if result is not None:
            self.results.append(result)

    def dispatch(self) -> None:
        pass

    def discard_opens(self) -> None:
        self.opens.clear()

    def collect(self) -> list[Result]:
        for _ in range(INLINE_OPENS_PER_TURN):
            if not self.opens:
                break
            self._perform(self.opens.popleft())
        results, self.results = self.results, []
        return results

    def idle(self) -> bool:
        return not self.results and not self.opens

    def has_results(self) -> bool:
        return bool(self.results or self.opens)

    def check(self) -> None:
        pass

    def close(self) -> None:
        pass


@dataclass
class Worker:
    index: int
    identity: bytes
    process: subprocess.Popen[bytes]
    started: float
    ready: bool = False
    batches: dict[int, float] = field(default_factory=dict)  # handed to it, no answer yet: batch → when


class WorkerPool:
    """Crypto jobs done by worker processes, results released in submission order."""

    def __init__(
        self,
        count: int,
        broker_key: crypto.PrivateKey,
        context: zmq.Context[zmq.Socket[bytes]],
        deliverable: Callable[[bytes], bool],
    ) -> None:
        self.key_pem = crypto.export_private_pem(broker_key)
        self.deliverable = deliverable
        remove_stale_directories()
        # Mode 0700: only this user can connect. The name holds our pid, so that the next broker can remove it
        # if we die without cleaning up (kill -9).
        self.directory = Path(tempfile.mkdtemp(prefix=f"{DIRECTORY_PREFIX}{os.getpid()}-"))
        self.endpoint = f"ipc://{self.directory}/jobs"
        self.socket = context.socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.socket.setsockopt(zmq.ROUTER_HANDOVER, 1)  # a restarted worker takes over its identity
        self.sockets = [self.socket]
        self.deliveries: collections.deque[DeliveryJob] = collections.deque()
        self.opens = OpenQueue()  # OpenJobs and ChallengeJobs
        self.sent: dict[int, list[bytes]] = {}  # batch → its frames, until its results arrive
        self.resend: list[int] = []  # batches of a worker that died, to hand out again first
        self.done: dict[int, list[Result]] = {}
        self.next_batch = 0
        self.next_release = 0
        self.restarts: list[float] = []
        self.last_check = time.monotonic()
        self.workers: list[Worker] = []
        try:
            self.socket.bind(self.endpoint)
            self.workers = [self._start(index) for index in range(count)]
            self._wait_until_ready()
        except BaseException as exc:
            self.close()
            if isinstance(exc, (OSError, zmq.ZMQError)):
                raise WorkerError(f"cannot start the crypto workers: {exc}") from None
            raise

    # ------------------------------------------------------------ the broker's side

    def submit(self, jobs: list[Job | Cancel]) -> None:
        for job in jobs:
            if isinstance(job, Cancel):
                self.opens.cancel(job)
            elif isinstance(job, DeliveryJob):
                self.deliveries.append(job)
            else:
                self.opens.append(job)
        self.dispatch()

    def discard_opens(self) -> None:
        """Stopping: envelopes not yet handed out will never matter."""
        self.opens.clear()

    def dispatch(self) -> None:
        """Hand batches to every worker with credit left."""
        for worker in self.workers:
            while worker.ready and len(worker.batches) < CREDIT:
                if self.resend:
                    batch = self.resend.pop(0)
                    if batch not in self.sent:  # its results arrived after all
                        continue
                    frames = self.sent[batch]
                else:
                    jobs = self._next_jobs()
                    if not jobs:
                        return
                    batch, self.next_batch = self.next_batch, self.next_batch + 1
                    frames = [struct.pack(">Q", batch), pack(encode_jobs(jobs))]
                self.sent[batch] = frames
                try:
                    self.socket.send_multipart([worker.identity, *frames])
                except zmq.ZMQError:  # it is gone: check() restarts it, then the batch goes out again
                    worker.ready = False
                    self.resend = sorted([*self.resend, batch])
                    break
                worker.batches[batch] = time.monotonic()

    def collect(self) -> list[Result]:
        """Results that arrived, in the order their jobs were submitted."""
        while True:
            try:
                identity, *frames = self.socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            worker = next((w for w in self.workers if w.identity == identity), None)
            if worker is None:  # not one of ours (same user, same directory): ignore it
                continue
            if frames == [READY]:
                worker.ready = True
                continue
            (batch,) = struct.unpack(">Q", frames[0])
            worker.batches.pop(batch, None)
            if self.sent.pop(batch, None) is None:  # answered twice: by a worker that died, and again
                continue
            self.done[batch] = decode_results(unpack(frames[1]))
        results: list[Result] = []
        while self.next_release in self.done:
            results += self.done.pop(self.next_release)
            self.next_release += 1
        self.dispatch()
        return results

    def idle(self) -> bool:
        return not (self.deliveries or self.opens or self.sent or self.done)

    def has_results(self) -> bool:
        """Results that `collect()` would release without waiting for a worker."""
        return self.next_release in self.done

    def check(self) -> None:
        """Restart a worker that died or hung and hand its batches out again; WorkerError if they keep failing."""
        now = time.monotonic()
        if now - self.last_check < CHECK_INTERVAL:
            return
        if now - self.last_check > BATCH_TIMEOUT / 2:  # the broker itself was stopped: its workers are not to blame
            for worker in self.workers:
                worker.batches = dict.fromkeys(worker.batches, now)
        self.last_check = now
        for worker in self.workers:
            status = worker.process.poll()
            if status is None and self._hung(worker, now):
                log.error("crypto worker %d does not answer; killing it", worker.index)
                worker.process.kill()
                status = worker.process.wait()
            if status is None:
                continue
            self.restarts = [t for t in self.restarts if now - t < RESTART_WINDOW] + [now]
            log.error("crypto worker %d exited with status %s; restarting it", worker.index, status)
            if len(self.restarts) > MAX_RESTARTS:
                raise WorkerError(f"crypto workers exited {len(self.restarts)} times in {RESTART_WINDOW:g} s")
            self.resend = sorted([*self.resend, *worker.batches])
            self.workers[worker.index] = self._start(worker.index)

    def close(self) -> None:
        """Stop the workers (they ignore SIGTERM and SIGINT, and hold nothing to save) and remove the socket."""
        for worker in self.workers:
            if worker.process.poll() is None:
                worker.process.kill()
        for worker in self.workers:
            worker.process.wait()
        self.socket.close(linger=0)
        shutil.rmtree(self.directory, ignore_errors=True)

    # ------------------------------------------------------------ internals

    def _hung(self, worker: Worker, now: float) -> bool:
        """Holds a batch for BATCH_TIMEOUT, or is not ready START_TIMEOUT after it started."""
        if worker.batches and now - min(worker.batches.values()) > BATCH_TIMEOUT:
            return True
        return not worker.ready and now - worker.started > START_TIMEOUT

    def _next_jobs(self) -> list[Job]:
        jobs: list[Job] = []
        while self.deliveries and len(jobs) < DELIVERY_BATCH:
            job = self.deliveries.popleft()
            if self.deliverable(job.identity):
                jobs.append(job)
        if jobs:
            return jobs
        return [self.opens.popleft() for _ in range(min(OPEN_BATCH, len(self.opens)))]

    def _start(self, index: int) -> Worker:
        identity = f"w{index}".encode()
        command = [
            sys.executable,
            "-P",
            "-m",
            "zchat.broker.workers",
            self.endpoint,
            identity.decode(),
            str(os.getpid()),
        ]
        process = subprocess.Popen(command, stdin=subprocess.PIPE, env=worker_environment())
        if process.stdin is None:
            raise WorkerError("no pipe to the crypto worker's stdin")
        with process.stdin:
            process.stdin.write(self.key_pem)
        return Worker(index, identity, process, time.monotonic())

    def _wait_until_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while not all(worker.ready for worker in self.workers):
            for worker in self.workers:
                if worker.process.poll() is not None:
                    raise WorkerError(f"crypto worker {worker.index} exited with status {worker.process.returncode}")
            if time.monotonic() > deadline:
                raise WorkerError(f"crypto workers did not start within {START_TIMEOUT:g} s")
            if self.socket.poll(100):
                self.collect()


if __name__ == "__main__":  # how WorkerPool starts a worker process
    sys.exit(main())
