"""A crypto worker process: what `python -m zchat.broker.workers` runs.

The broker's `WorkerPool` (zchat.broker.workers) starts one per configured worker, hands it the broker's private
key on its stdin, and feeds it batches of jobs over a private ipc:// DEALER socket. The worker does each batch
(`perform`, with a `JobRunner`) and answers with its results, batch for batch, until the broker goes away. A batch
and its results travel as one frame (`pack`, `unpack`); both sides use these.
"""

from __future__ import annotations

import logging
import os
import signal
import struct
import sys

import zmq

from zchat import crypto
from zchat.broker.work import Job, JobRunner, Opened, OpenJob, Result, decode_jobs, encode_results

log = logging.getLogger(__name__)

READY = b"ready"  # a worker's first message: it has its key and is connected


# ------------------------------------------------------------ batches as one frame


def pack(fields: list[bytes]) -> bytes:
    """Many byte strings as one: a count, each length, then the bytes."""
    return struct.pack(f">I{len(fields)}I", len(fields), *map(len, fields)) + b"".join(fields)


def unpack(data: bytes) -> list[bytes]:
    (count,) = struct.unpack_from(">I", data)
    lengths = struct.unpack_from(f">{count}I", data, 4)
    fields = []
    offset = 4 + 4 * count
    for length in lengths:
        fields.append(data[offset : offset + length])
        offset += length
    return fields


# ------------------------------------------------------------ the worker process


def run_worker(endpoint: str, identity: bytes, broker_key: crypto.PrivateKey, broker_pid: int) -> None:
    """Do batches of jobs until the broker goes away (it may be gone before we start)."""
    runner = JobRunner(broker_key)
    context = zmq.Context()
    socket = context.socket(zmq.DEALER)
    socket.setsockopt(zmq.LINGER, 0)
    socket.setsockopt(zmq.IDENTITY, identity)
    socket.connect(endpoint)
    socket.send(READY)
    try:
        while os.getppid() == broker_pid:
            if not socket.poll(1000):
                continue
            batch, packed = socket.recv_multipart()
            try:
                jobs = decode_jobs(unpack(packed))
            except Exception:  # a bug: say so, and answer, or the broker waits for this batch for ever
                log.exception("internal error in a crypto worker: a batch it cannot read; batch dropped")
                jobs = []
            results = [perform(runner, job) for job in jobs]
            socket.send_multipart([batch, pack(encode_results([r for r in results if r is not None]))])
    finally:
        socket.close(linger=0)
        context.term()


def perform(runner: JobRunner, job: Job) -> Result | None:
    """One job. A bug is logged loudly: an envelope then counts as not opening, and a delivery is dropped
    (its recipient sees a gap in the sequence numbers and logs in afresh)."""
    try:
        return runner.perform(job)
    except Exception:
        log.exception("internal error while doing a crypto job; job dropped")
        return Opened(job.identity, job.command, None, job.session) if isinstance(job, OpenJob) else None


def main(argv: list[str] | None = None) -> int:
    # Ctrl-C, or a service manager's SIGTERM, reaches the whole process group: the broker decides when workers stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    endpoint, identity, broker_pid = argv if argv is not None else sys.argv[1:]
    try:
        key = crypto.private_key_from_pem(sys.stdin.buffer.read(), source="broker key on stdin")
    except crypto.KeyFileError as exc:
        log.error("%s", exc)
        return 1
    run_worker(endpoint, identity.encode(), key, int(broker_pid))
    return 0
