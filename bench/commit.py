"""What the broker's group commit costs, and how the running broker groups its commits.

zchat/3 keeps every chat message in SQLite (`zchat.broker.sqlite_store.SQLiteStore`: WAL,
synchronous=FULL, one fsync of the write-ahead log per commit) and answers the
sender `accepted` only after the commit that holds the message. The broker
commits once per turn of its loop: one transaction for everything the core
stored since the previous turn (group commit).

`measure()` opens a real `Store` on a fresh file (on the disk of the bench's
temporary directory, where the brokers under test keep theirs) with the
broker's RSA key, and for each group size (1, 10, 100 messages) repeats: for
every message of the group, what `BrokerCore._on_chat` asks of the store for a
room message (`seen()` of its author and id, then `add_chat()` of the history
document: the signed statement, the broker's `received` stamp and the
author's user object, as `ChatEvent(..., history=True).to_doc()` makes it),
then `commit()`. The time from the first `seen()` to the end of `commit()` is
one group's commit latency; `commit()` alone (writing the log and its fsync,
and now and then SQLite's automatic checkpoint into the database file) is
timed too. The documents are built before the clock starts; their statements
are real ones of the bench's message size, all with one signature (the store
never checks it, and its size is that of a real one). Before any timing,
groups of 10 are committed until SQLite has checkpointed and started its log
over once, as in a broker that has run for a while: the -wal file then has its
full size and is written over, which costs an fsync less than extending it.

`WalWatcher` counts the commits of a running broker from outside, without any
code in the broker: it reads the broker's write-ahead log (`<data_dir>/zchat.db-wal`)
as a file, every few milliseconds. SQLite appends one frame per page written,
and the last frame of each transaction is a commit frame (its "database size
after commit" field is not zero); every frame carries the log's current salts,
which change when SQLite starts the log over after a checkpoint. Counting the
commit frames with the current salts, and finishing the old log's count when
the salts change, gives the broker's commits; the bench divides the messages it
saw delivered by them.
"""

from __future__ import annotations

import math
import os
import secrets
import struct
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.stats import message_text
from harness.stats import interpolated_percentile
from zchat import crypto
from zchat import protocol as p
from zchat.broker.sqlite_store import SQLiteStore
from zchat.broker.store import Store
from zchat.events import UserInfo
from zchat.protocol import events as wire

GROUP_SIZES = (1, 10, 100)
MIN_ROUNDS = 20  # commits timed per group size, at least
WARMUP_MAX_MESSAGES = 20_000  # before any timing, groups of 10 until SQLite started its log over once (or this many)

WAL_HEADER = struct.Struct(">IIIIIIII")  # magic, format, page size, checkpoint sequence, salt-1, salt-2, checksums
WAL_FRAME_HEADER = struct.Struct(">IIIIII")  # page number, database size after a commit (else 0), salts, checksums
WAL_MAGIC = (0x377F0682, 0x377F0683)
WAL_POLL_S = 0.01


@dataclass
class GroupCommit:
    """Committing groups of `messages` room messages, `rounds` times."""

    messages: int
    rounds: int
    ms_p50: float  # writes (seen + add_chat per message) and commit()
    ms_p99: float
    ms_max: float
    commit_only_ms_p50: float  # commit() alone: the log written and fsynced
    commit_only_ms_p99: float
    messages_per_s: float  # messages committed per second of that work, one group after another
    wal_frames_per_commit: float  # pages written to the log per commit
    wal_restarts: int  # times SQLite checkpointed and started its log over while this size was timed


@dataclass
class CommitCost:
    document_bytes: int  # one stored document's JSON (before the store seals it)
    warmup_messages: int  # committed in groups of 10 before the timing, until the log had started over once
    groups: list[GroupCommit]


class Documents:
    """Room messages as `BrokerCore._on_chat` stores them: (author, message id, history document)."""

    def __init__(self, key: crypto.PrivateKey, message_bytes: int, authors: int) -> None:
        der = crypto.public_key_to_der(key.public_key())
        self.signature = crypto.sign(key, b"zchat bench: a signature of the real size")
        self.session = p.session_id(secrets.token_bytes(p.NONCE_BYTES))
        self.infos = [UserInfo(f"c{i:04d}", crypto.fingerprint_der(der), False, der) for i in range(authors)]
        self.message_bytes = message_bytes
        self.made = 0

    def make(self, count: int) -> list[tuple[str, str, dict[str, Any]]]:
        out: list[tuple[str, str, dict[str, Any]]] = []
        for _ in range(count):
            self.made += 1
            slot = self.made % len(self.infos)
            info, message_id, received = self.infos[slot], p.new_message_id(), round(time.time(), 3)
            text = message_text(slot, self.made, self.message_bytes)
            statement = p.Statement.build(
                "chat", info.name, self.session, self.made, received, text, message_id=message_id
            )
            signed = p.SignedStatement(statement.text, self.signature)
            out.append((info.name, message_id, wire.ChatEvent(signed, received, info, history=True).to_doc()))
        return out


def _group(store: Store, documents: list[tuple[str, str, dict[str, Any]]]) -> tuple[float, float]:
    """Store one group the way the broker does, then commit it: (whole seconds, commit() seconds)."""
    started = time.perf_counter()
    for author, message_id, document in documents:
        if store.seen(author, message_id) is not None:
            raise RuntimeError("a fresh message id was seen already")
        store.add_chat(author, message_id, round(time.time(), 3), document)
    committing = time.perf_counter()
    store.commit()
    done = time.perf_counter()
    return done - started, done - committing


def measure(
    path: Path,
    key: crypto.PrivateKey,
    message_bytes: int,
    seconds: float,
    authors: int = 50,
    sizes: tuple[int, ...] = GROUP_SIZES,
) -> CommitCost:
    """For each group size, groups stored and committed one after another for at least `seconds` (and MIN_ROUNDS).

    Before the timing, groups of 10 are committed until SQLite has checkpointed and started its log over once: a
    broker that has run for a while reuses a log file of full size (about 1000 pages), and extending the file
    costs every fsync more than writing over it.
    """
    store = SQLiteStore.open(path, key, now=time.time())
    wal = WalWatcher(path)  # read by hand, after each commit (no thread)
    try:
        documents = Documents(key, message_bytes, authors)
        document_bytes = len(p.dump_doc(documents.make(1)[0][2]))
        warmup = 0
        while wal.restarts == 0 and warmup < WARMUP_MAX_MESSAGES:
            _group(store, documents.make(10))
            warmup += 10
            wal.poll()
        groups: list[GroupCommit] = []
        for size in sizes:
            whole: list[float] = []
            alone: list[float] = []
            first = wal.mark()
            deadline = time.monotonic() + seconds
            while len(whole) < MIN_ROUNDS or time.monotonic() < deadline:
                total, commit_s = _group(store, documents.make(size))
                whole.append(total)
                alone.append(commit_s)
                wal.poll()
            last = wal.mark()
            commits = last.commits - first.commits
            groups.append(
                GroupCommit(
                    messages=size,
                    rounds=len(whole),
                    ms_p50=interpolated_percentile(whole, 50) * 1000,
                    ms_p99=interpolated_percentile(whole, 99) * 1000,
                    ms_max=max(whole) * 1000,
                    commit_only_ms_p50=interpolated_percentile(alone, 50) * 1000,
                    commit_only_ms_p99=interpolated_percentile(alone, 99) * 1000,
                    messages_per_s=size * len(whole) / sum(whole),
                    wal_frames_per_commit=(last.frames - first.frames) / commits if commits else math.nan,
                    wal_restarts=last.restarts - first.restarts,
                )
            )
    finally:
        store.close()
    return CommitCost(document_bytes, warmup, groups)


@dataclass(frozen=True)
class WalCount:
    at: float  # time.monotonic() of the reading
    commits: int  # commit frames seen so far
    frames: int  # frames of those commits
    restarts: int  # times SQLite started the log over (after a checkpoint)


class WalWatcher:
    """The commits of a running SQLite database in WAL mode, read from its -wal file in a thread of this process."""

    def __init__(self, database: Path, interval: float = WAL_POLL_S) -> None:
        self.path = database.with_name(database.name + "-wal")
        self.interval = interval
        self.commits = 0
        self.frames = 0
        self.restarts = 0
        self._salts: tuple[int, int] | None = None
        self._frame_bytes = 0
        self._next = 0  # the frame after the last commit frame counted, in the current log
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="wal-watcher", daemon=True)

    def __enter__(self) -> WalWatcher:
        self.poll()  # what the log holds already counts as before
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.poll()

    def mark(self) -> WalCount:
        """Read the log now and return the counts."""
        self.poll()
        with self._lock:
            return WalCount(time.monotonic(), self.commits, self.frames, self.restarts)

    def poll(self) -> None:
        with self._lock:
            try:
                fd = os.open(self.path, os.O_RDONLY)
            except OSError:  # not written yet, or gone with the broker
                return
            try:
                self._read(fd)
            except OSError:
                return
            finally:
                os.close(fd)

    def _read(self, fd: int) -> None:
        header = os.pread(fd, WAL_HEADER.size, 0)
        if len(header) < WAL_HEADER.size:
            return
        magic, _, page_size, _, salt1, salt2, _, _ = WAL_HEADER.unpack(header)
        if magic not in WAL_MAGIC or page_size < 512:
            return
        salts = (salt1, salt2)
        if self._salts is not None and salts != self._salts:
            # Started over: the old log's frames that the new one has not overwritten yet are still there.
            self._scan(fd, self._salts)
            self._next = 0
            self.restarts += 1
        self._salts = salts
        self._frame_bytes = WAL_FRAME_HEADER.size + page_size
        self._scan(fd, salts)

    def _scan(self, fd: int, salts: tuple[int, int]) -> None:
        """Count the commit frames from `_next` on that carry `salts`; stop at the first frame that does not."""
        index = self._next
        while True:
            raw = os.pread(fd, WAL_FRAME_HEADER.size, WAL_HEADER.size + index * self._frame_bytes)
            if len(raw) < WAL_FRAME_HEADER.size:
                return
            _, size_after_commit, salt1, salt2, _, _ = WAL_FRAME_HEADER.unpack(raw)
            if (salt1, salt2) != salts:
                return
            index += 1
            if size_after_commit:
                self.commits += 1
                self.frames += index - self._next
                self._next = index


def broker_commits(first: WalCount, last: WalCount, messages_per_s: float) -> dict[str, float]:
    """The broker's commits between two readings, against the messages per second it handled meanwhile."""
    seconds = last.at - first.at
    commits = last.commits - first.commits
    per_s = commits / seconds if seconds > 0 else 0.0
    return {
        "commits": commits,
        "commits_per_s": per_s,
        "messages_per_commit": messages_per_s / per_s if per_s > 0 else math.nan,
        "wal_frames_per_commit": (last.frames - first.frames) / commits if commits else math.nan,
        "wal_restarts": last.restarts - first.restarts,
    }
