"""The broker's durable store: one SQLite database, encrypted at rest.

It owns what must survive a restart or a `kill -9`: the room history, the
private messages waiting for their recipients, and the record of statements
already accepted (author and message id), which makes a client's re-send
idempotent. Writes since the last `commit()` form one transaction (group
commit); the broker acknowledges a statement only after the commit that holds
it returned.

At rest, a copy of the file without the broker's private key reveals no text
and no names: every message body is sealed with a `crypto.DataKey` (stored
only wrapped to the broker's RSA key, table `meta`), and names, message ids
and recipients appear only as the data key's HMAC tags. Times, sizes and row
counts are in clear.

Schema (PRAGMA user_version = `Store.SCHEMA_VERSION`):

    meta  (name, value)                                    the wrapped data key, the creation time
    seen  (tag = tag("seen", author, id), received)        accepted statements, room and private
    chat  (id, seen_tag, received, body)                   room history; body seals author, id and document
    mail  (id, recipient = tag("recipient", name), seen_tag, stored, size, body, sender = tag("sender", name))
                                                           waiting private messages; body seals the recipient's envelope

Schema 1 (before `mail.sender`) is brought to 2 when a broker opens it: its
waiting mail counts for no sender.

Each user's share is bounded by the caller (`mailbox_usage`, `sent_usage`);
`space` tells how much of the file holds data, so the caller can stop
storing before the disk is full.

The interface is deliberately small, so that a server database can replace
SQLite for a team that outgrows one disk. A `Store` is not thread-safe: use
it from one thread at a time.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sqlite3
import stat
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

from zchat import crypto
from zchat.errors import StoreError

MEMORY = ":memory:"
DAY = 86_400.0  # seconds
_BUSY_TIMEOUT = 2.0  # seconds another process (a backup) may hold a lock before a write fails
_DETAIL_CHARS = 200

_SCHEMA = (
    "CREATE TABLE meta (name TEXT PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID",
    "CREATE TABLE seen (tag BLOB PRIMARY KEY, received REAL NOT NULL) WITHOUT ROWID",
    "CREATE INDEX seen_received ON seen (received)",
    "CREATE TABLE chat (id INTEGER PRIMARY KEY, seen_tag BLOB NOT NULL UNIQUE,"
    " received REAL NOT NULL, body BLOB NOT NULL)",
    "CREATE INDEX chat_received ON chat (received)",
    # AUTOINCREMENT: a mail id the broker still holds is never given to another message.
    "CREATE TABLE mail (id INTEGER PRIMARY KEY AUTOINCREMENT, recipient BLOB NOT NULL, seen_tag BLOB NOT NULL,"
    " stored REAL NOT NULL, size INTEGER NOT NULL, body BLOB NOT NULL, sender BLOB NOT NULL DEFAULT x'')",
    "CREATE INDEX mail_recipient ON mail (recipient)",
    "CREATE INDEX mail_seen ON mail (seen_tag)",
    "CREATE INDEX mail_stored ON mail (stored)",
    "CREATE INDEX mail_sender ON mail (sender)",
)
# From one schema version to the next: run in one transaction when a broker opens an older file.
_UPGRADES = {
    1: (
        "ALTER TABLE mail ADD COLUMN sender BLOB NOT NULL DEFAULT x''",
        "CREATE INDEX mail_sender ON mail (sender)",
    ),
}
_TABLES = frozenset({"meta", "seen", "chat", "mail"})
_DATA_KEY = "data_key"
_CREATED = "created"
_CHAT_AAD = b"zchat|store|chat|v1|"
_MAIL_AAD = b"zchat|store|mail|v1|"
# SQLite's primary result codes that mean "this file is not a sound database".
_DAMAGED_CODES = frozenset({sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB, sqlite3.SQLITE_FORMAT})

_T = TypeVar("_T")


@dataclass(frozen=True)
class StoredChat:
    """A room message as kept: who wrote it, its id, when the broker received it, what it replays."""

    author: str
    message_id: str
    received: float
    document: dict[str, Any]


@dataclass(frozen=True)
class Mail:
    """A private message waiting for its recipient, sealed to the recipient (opaque to the store)."""

    row: int
    sealed: bytes
    stored: float  # Unix seconds


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:_DETAIL_CHARS]


def _damaged(name: str, detail: str) -> StoreError:
    return StoreError(f"{name} is damaged or not a zchat database ({detail}); restore a backup or move it away")


def _time(value: float) -> bytes:
    return struct.pack(">d", value)


def _finite(what: str, value: float) -> float:
    if not math.isfinite(value):
        raise ValueError(f"{what} must be a finite number of seconds")
    return float(value)


class Store:
    """The broker's SQLite database; see the module docstring."""

    SCHEMA_VERSION = 2

    def __init__(self, db: sqlite3.Connection, key: crypto.DataKey, name: str) -> None:
        """Use `Store.open`; this only wraps a connection that passed its checks."""
        self._db = db
        self._key = key
        self._name = name
        self._file = None if name == MEMORY else Path(name)
        self._units = 0  # writes that succeeded in the open transaction
        self._failed: str | None = None  # why the open transaction was lost, until commit() reports it
        self._closed = False

    # -- opening -----------------------------------------------------------------------------------------

    @classmethod
    def open(cls, path: str | Path, broker_key: crypto.PrivateKey, *, now: float) -> Store:
        """Open the database at `path`, creating it (and its directory, mode 0700) if missing.

        Raises StoreError if the file is damaged, not a zchat database, from a newer zchat, or was made
        with another broker key; such a file is never modified.
        """
        name = str(path)
        if name == MEMORY:
            db = _connect(MEMORY, uri=False, name=name)
            return cls._create(db, broker_key, name, now=now, memory=True)
        file = Path(path)
        _create_file(file)
        target = f"file:{quote(str(file.absolute()))}"
        # Checks run on a read-only connection: one that fails leaves the file as it was (a connection
        # that may write would fold a leftover -wal into it on closing).
        probe = _connect(f"{target}?mode=ro", uri=True, name=name)
        try:
            version, tables = _inspect(probe, name)
            key = None if version == 0 and not tables else cls._check(probe, broker_key, name, version, tables)
        finally:
            probe.close()
        db = _connect(f"{target}?mode=rw", uri=True, name=name)
        try:
            if key is None:
                store = cls._create(db, broker_key, name, now=now, memory=False)
            else:
                try:
                    _set_journal(db, name, memory=False)
                    _upgrade(db, version, cls.SCHEMA_VERSION)
                except sqlite3.Error as exc:
                    raise _open_error(name, exc) from exc
                store = cls(db, key, name)
            _tighten_modes(file)
        except BaseException:
            db.close()
            raise
        return store

    @classmethod
    def _create(
        cls, db: sqlite3.Connection, broker_key: crypto.PrivateKey, name: str, *, now: float, memory: bool
    ) -> Store:
        key = crypto.DataKey.generate()
        try:
            _set_journal(db, name, memory=memory)
            db.execute("BEGIN IMMEDIATE")
            for statement in _SCHEMA:
                db.execute(statement)
            db.executemany(
                "INSERT INTO meta (name, value) VALUES (?, ?)",
                [(_DATA_KEY, key.wrap(broker_key.public_key())), (_CREATED, float(now))],
            )
            db.execute(f"PRAGMA user_version = {cls.SCHEMA_VERSION:d}")
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            db.close()
            raise StoreError(f"could not create the database {name}: {_one_line(exc)}") from exc
        return cls(db, key, name)

    @classmethod
    def _check(
        cls, db: sqlite3.Connection, broker_key: crypto.PrivateKey, name: str, version: int, tables: set[str]
    ) -> crypto.DataKey:
        """An existing database's version, soundness and data key, or StoreError."""
        if version > cls.SCHEMA_VERSION:
            raise StoreError(
                f"{name} was written by a newer zchat (schema {version}; this broker knows {cls.SCHEMA_VERSION})"
            )
        if version not in (cls.SCHEMA_VERSION, *_UPGRADES) or not tables >= _TABLES:
            raise _damaged(name, f"schema {version} with tables {', '.join(sorted(tables)) or 'none'}")
        try:
            problems = [str(row[0]) for row in db.execute("PRAGMA quick_check")]
            found = db.execute("SELECT value FROM meta WHERE name = ?", (_DATA_KEY,)).fetchone()
        except sqlite3.Error as exc:
            raise _open_error(name, exc) from exc
        if problems != ["ok"]:
            raise _damaged(name, " ".join(" ".join(problems[:3]).split())[:_DETAIL_CHARS])
        if found is None or not isinstance(found[0], bytes):
            raise _damaged(name, "no data key")
        try:
            return crypto.DataKey.unwrap(broker_key, found[0])
        except crypto.CryptoError:
            raise StoreError(
                f"{name} was made with another broker key (keys/broker.pem does not open its data key)"
            ) from None

    # -- reading -----------------------------------------------------------------------------------------

    def seen(self, author: str, message_id: str) -> float | None:
        """When an earlier accepted statement (room or private) with this author and id was received, else None.

        Sees writes of the current, uncommitted transaction.
        """
        row = self._read(
            lambda: self._db.execute(
                "SELECT received FROM seen WHERE tag = ?", (self._seen_tag(author, message_id),)
            ).fetchone()
        )
        return None if row is None else float(row[0])

    def history(self, count: int, since: float) -> list[StoredChat]:
        """The newest `count` room messages received at or after `since`, oldest first."""
        if count <= 0:
            return []
        rows = self._read(
            lambda: self._db.execute(
                "SELECT seen_tag, received, body FROM chat WHERE received >= ? ORDER BY received DESC, id DESC LIMIT ?",
                (float(since), count),
            ).fetchall()
        )
        return [self._open_chat(seen_tag, float(received), body) for seen_tag, received, body in reversed(rows)]

    def mailbox(self, recipient: str, after: int = 0, until: int | None = None, limit: int = -1) -> list[Mail]:
        """The mail waiting for `recipient`, oldest first: rows after `after` and up to `until`, at most `limit`
        of them (-1: all). A caller reads a long mailbox a page at a time this way."""
        recipient_tag = self._recipient_tag(recipient)
        last = (1 << 63) - 1 if until is None else until
        rows = self._read(
            lambda: self._db.execute(
                "SELECT id, seen_tag, stored, body FROM mail WHERE recipient = ? AND id > ? AND id <= ?"
                " ORDER BY id LIMIT ?",
                (recipient_tag, after, last, limit),
            ).fetchall()
        )
        return [
            Mail(int(row), self._unseal(body, _mail_aad(recipient_tag, seen_tag, float(stored))), float(stored))
            for row, seen_tag, stored, body in rows
        ]

    def mailbox_usage(self, recipient: str) -> tuple[int, int]:
        """(messages, bytes of their sealed envelopes) waiting for `recipient`."""
        messages, size = self._read(
            lambda: self._db.execute(
                "SELECT count(*), coalesce(sum(size), 0) FROM mail WHERE recipient = ?",
                (self._recipient_tag(recipient),),
            ).fetchone()
        )
        return int(messages), int(size)

    def sent_usage(self, sender: str, recipient: str | None = None) -> tuple[int, int]:
        """(messages, bytes of their sealed envelopes) that `sender` has waiting for others, or for `recipient`."""
        query = (
            "SELECT count(*), coalesce(sum(size), 0) FROM mail WHERE sender = ? AND recipient != ?"
            if recipient is None
            else "SELECT count(*), coalesce(sum(size), 0) FROM mail WHERE sender = ? AND recipient = ?"
        )
        other = self._recipient_tag(sender if recipient is None else recipient)
        messages, size = self._read(lambda: self._db.execute(query, (self._sender_tag(sender), other)).fetchone())
        return int(messages), int(size)

    def last_mail_row(self) -> int:
        """The newest mail row id given out so far (0 if none): mail stored later has a greater one."""
        row = self._read(lambda: self._db.execute("SELECT coalesce(max(id), 0) FROM mail").fetchone())
        return int(row[0])

    def space(self) -> tuple[int, int]:
        """(bytes of the database that hold data, bytes it can still take: the free space of its disk and its own
        free pages, which new rows reuse). An in-memory database has no disk: room is unbounded there."""
        page_size, pages, free = self._read(
            lambda: (
                int(self._db.execute("PRAGMA page_size").fetchone()[0]),
                int(self._db.execute("PRAGMA page_count").fetchone()[0]),
                int(self._db.execute("PRAGMA freelist_count").fetchone()[0]),
            )
        )
        if self._file is None:
            return (pages - free) * page_size, 1 << 62
        try:
            disk = os.statvfs(self._file.parent)
        except OSError as exc:
            raise StoreError(f"could not read the free space of {self._file.parent}: {_one_line(exc)}") from exc
        return (pages - free) * page_size, disk.f_bavail * disk.f_frsize + free * page_size

    # -- writing (each joins the open transaction; commit() makes it durable) ------------------------------

    def add_chat(self, author: str, message_id: str, received: float, document: dict[str, Any]) -> None:
        """Keep a room message in the history and record it as seen.

        Raises StoreError if SQLite fails (disk full) or the message is already in the history; the caller
        refuses that message and the store stays usable.
        """
        received = _finite("received", received)
        seen_tag = self._seen_tag(author, message_id)
        plain = json.dumps(
            {"author": author, "id": message_id, "document": document},
            ensure_ascii=False,
            allow_nan=False,
            separators=(",", ":"),
        ).encode("utf-8", "surrogatepass")
        body = self._key.seal(plain, _chat_aad(seen_tag, received))

        def write() -> None:
            self._db.execute("INSERT OR IGNORE INTO seen (tag, received) VALUES (?, ?)", (seen_tag, received))
            self._db.execute("INSERT INTO chat (seen_tag, received, body) VALUES (?, ?, ?)", (seen_tag, received, body))

        self._write("the message", write)

    def add_mail(self, recipient: str, author: str, message_id: str, received: float, sealed: bytes) -> int:
        """Store a private message for `recipient` and record it as seen; return its row id.

        The same author and id may be stored for several recipients. Raises StoreError as `add_chat`.
        """
        received = _finite("received", received)
        seen_tag = self._seen_tag(author, message_id)
        recipient_tag = self._recipient_tag(recipient)
        body = self._key.seal(bytes(sealed), _mail_aad(recipient_tag, seen_tag, received))

        def write() -> int:
            self._db.execute("INSERT OR IGNORE INTO seen (tag, received) VALUES (?, ?)", (seen_tag, received))
            cursor = self._db.execute(
                "INSERT INTO mail (recipient, seen_tag, stored, size, body, sender) VALUES (?, ?, ?, ?, ?, ?)",
                (recipient_tag, seen_tag, received, len(sealed), body, self._sender_tag(author)),
            )
            row = cursor.lastrowid
            if row is None:
                raise sqlite3.OperationalError("no row id for the new mail")
            return row

        return self._write("the private message", write)

    def delete_mail(self, rows: Iterable[int]) -> None:
        """Forget delivered mail by row id (ids that are gone already are ignored)."""
        ids = [(int(row),) for row in rows]
        if ids:
            self._write("the mailbox", lambda: self._db.executemany("DELETE FROM mail WHERE id = ?", ids))

    def prune(self, now: float, *, history_size: int, history_days: float, mail_days: float, seen_days: float) -> None:
        """Forget what is past keeping; 0 days means no limit by age for that kind.

        Room messages beyond the newest `history_size` or received more than `history_days` ago go; so does
        mail stored more than `mail_days` ago, and seen-records older than `seen_days` whose message is
        neither in the history nor waiting as mail.
        """
        now = _finite("now", now)
        if history_size < 0 or min(history_days, mail_days, seen_days) < 0:
            raise ValueError("prune limits must not be negative")

        def write() -> None:
            if history_days > 0:
                self._db.execute("DELETE FROM chat WHERE received < ?", (now - history_days * DAY,))
            self._db.execute(
                "DELETE FROM chat WHERE id IN (SELECT id FROM chat ORDER BY received DESC, id DESC LIMIT -1 OFFSET ?)",
                (history_size,),
            )
            if mail_days > 0:
                self._db.execute("DELETE FROM mail WHERE stored < ?", (now - mail_days * DAY,))
            if seen_days > 0:
                self._db.execute(
                    "DELETE FROM seen WHERE received < ?"
                    " AND NOT EXISTS (SELECT 1 FROM chat WHERE chat.seen_tag = seen.tag)"
                    " AND NOT EXISTS (SELECT 1 FROM mail WHERE mail.seen_tag = seen.tag)",
                    (now - seen_days * DAY,),
                )

        self._write("the pruned database", write)

    def commit(self) -> None:
        """Make every write since the last commit durable, all or nothing.

        On failure the writes are rolled back and StoreError says why, e.g.
        "could not store messages: database or disk is full"; the store stays usable.
        """
        if self._failed is not None:
            detail, self._failed = self._failed, None
            self._rollback()
            raise StoreError(f"could not store messages: {detail}")
        if not self._db.in_transaction:
            return
        try:
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback()
            raise StoreError(f"could not store messages: {_one_line(exc)}") from exc

    def close(self) -> None:
        """Close the database; writes not committed are dropped. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._failed = None
        self._rollback()
        self._db.close()

    # -- helpers -----------------------------------------------------------------------------------------

    def _seen_tag(self, author: str, message_id: str) -> bytes:
        return self._key.tag("seen", author, message_id)

    def _recipient_tag(self, recipient: str) -> bytes:
        return self._key.tag("recipient", recipient)

    def _sender_tag(self, sender: str) -> bytes:
        return self._key.tag("sender", sender)

    def _read(self, query: Callable[[], _T]) -> _T:
        try:
            return query()
        except sqlite3.Error as exc:
            raise StoreError(f"could not read {self._name}: {_one_line(exc)}") from exc

    def _write(self, what: str, statements: Callable[[], _T]) -> _T:
        """Run `statements` as one unit inside the open transaction (begun here if none is)."""
        if self._failed is not None:
            raise StoreError(f"could not store {what}: an earlier write since the last commit failed ({self._failed})")
        try:
            if not self._db.in_transaction:
                self._db.execute("BEGIN IMMEDIATE")
                self._units = 0
            self._db.execute("SAVEPOINT unit")
        except sqlite3.Error as exc:
            raise StoreError(f"could not store {what}: {_one_line(exc)}") from exc
        try:
            result = statements()
            self._db.execute("RELEASE unit")
            self._units += 1
        except sqlite3.Error as exc:
            detail = _one_line(exc)
            self._undo_unit(detail)
            raise StoreError(f"could not store {what}: {detail}") from exc
        except BaseException as exc:
            self._undo_unit(_one_line(exc))
            raise
        return result

    def _undo_unit(self, detail: str) -> None:
        """Take back the failed unit only; if SQLite dropped the whole transaction (it may, on a full disk),
        the earlier writes of this group are gone too, and the next commit() must not report success."""
        if self._db.in_transaction:
            try:
                self._db.execute("ROLLBACK TO unit")
                self._db.execute("RELEASE unit")
            except sqlite3.Error:
                self._rollback()
            else:
                return
        if self._units:
            self._failed = detail

    def _rollback(self) -> None:
        if self._db.in_transaction:
            with contextlib.suppress(sqlite3.Error):  # SQLite rolled back already: nothing is left to undo
                self._db.execute("ROLLBACK")

    def _unseal(self, body: Any, aad: bytes) -> bytes:
        if not isinstance(body, bytes):
            raise _damaged(self._name, "a stored message is not a sealed blob")
        try:
            return self._key.open(body, aad)
        except crypto.CryptoError:
            raise _damaged(self._name, "a stored message does not open") from None

    def _open_chat(self, seen_tag: Any, received: float, body: Any) -> StoredChat:
        if not isinstance(seen_tag, bytes):
            raise _damaged(self._name, "a stored message has no tag")
        plain = self._unseal(body, _chat_aad(seen_tag, received))
        try:
            kept = json.loads(plain.decode("utf-8", "surrogatepass"))
        except ValueError:
            kept = None
        if (
            not isinstance(kept, dict)
            or not isinstance(kept.get("author"), str)
            or not isinstance(kept.get("id"), str)
            or not isinstance(kept.get("document"), dict)
        ):
            raise _damaged(self._name, "a stored message is not a chat message")
        return StoredChat(kept["author"], kept["id"], received, kept["document"])


def backup(path: str | Path, target: str | Path) -> int:
    """Write a consistent copy of the database at `path` to `target` with SQLite's backup API, safe while a broker
    writes to it (a plain copy of a live file can be torn); the number of pages copied. StoreError says what failed.

    The copy is as encrypted as the original: it needs the same keys/broker.pem.
    """
    source_file, target_file = Path(path), Path(target)
    if not source_file.is_file():
        raise StoreError(f"{source_file} does not exist (is data_dir in the config right?)")
    if target_file.exists():
        raise StoreError(f"{target_file} exists already; choose a new file for the copy")
    _create_file(target_file)
    try:
        source = _connect(f"file:{quote(str(source_file.resolve()))}?mode=ro", uri=True, name=str(source_file))
        copy = _connect(str(target_file), uri=False, name=str(target_file))
        try:
            source.backup(copy)
            pages = int(copy.execute("PRAGMA page_count").fetchone()[0])
        finally:
            copy.close()
            source.close()
    except (sqlite3.Error, StoreError) as exc:
        target_file.unlink(missing_ok=True)
        raise StoreError(f"could not back up {source_file}: {_one_line(exc)}") from exc
    return pages


def _chat_aad(seen_tag: bytes, received: float) -> bytes:
    return _CHAT_AAD + seen_tag + _time(received)


def _mail_aad(recipient_tag: bytes, seen_tag: bytes, stored: float) -> bytes:
    return _MAIL_AAD + recipient_tag + seen_tag + _time(stored)


def _create_file(file: Path) -> None:
    """Make the directory (0700) and an empty database file (0600) if missing."""
    try:
        file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(file, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    except OSError as exc:
        raise StoreError(f"could not create {file}: {exc.strerror or _one_line(exc)}") from exc
    else:
        os.close(fd)
        return
    if not file.is_file():
        raise StoreError(f"{file} is not a regular file; move it away or choose another store path")
    if not os.access(file, os.R_OK | os.W_OK):
        raise StoreError(f"{file} is not readable and writable by this user; check its owner and mode")


def _connect(target: str, *, uri: bool, name: str) -> sqlite3.Connection:
    try:
        db = sqlite3.connect(target, uri=uri, timeout=_BUSY_TIMEOUT, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA trusted_schema = OFF")
    except sqlite3.Error as exc:
        raise _open_error(name, exc) from exc
    return db


def _open_error(name: str, exc: sqlite3.Error) -> StoreError:
    code = getattr(exc, "sqlite_errorcode", None)
    if (isinstance(code, int) and code & 0xFF in _DAMAGED_CODES) or type(exc) is sqlite3.DatabaseError:
        return _damaged(name, _one_line(exc))
    return StoreError(f"could not open {name} ({_one_line(exc)}); check the file, its directory and their modes")


def _inspect(db: sqlite3.Connection, name: str) -> tuple[int, set[str]]:
    """The user_version and table names, read without writing anything."""
    try:
        version = int(db.execute("PRAGMA user_version").fetchone()[0])
        tables = {str(row[0]) for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.Error as exc:
        raise _open_error(name, exc) from exc
    tables.discard("sqlite_sequence")
    return version, tables


def _upgrade(db: sqlite3.Connection, version: int, target: int) -> None:
    """Bring a database of an older schema to `target`, all steps in one transaction."""
    if version == target:
        return
    db.execute("BEGIN IMMEDIATE")
    try:
        for step in range(version, target):
            for statement in _UPGRADES[step]:
                db.execute(statement)
        db.execute(f"PRAGMA user_version = {target:d}")
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


def _set_journal(db: sqlite3.Connection, name: str, *, memory: bool) -> None:
    mode = str(db.execute("PRAGMA journal_mode = WAL").fetchone()[0]).lower()
    if not memory and mode != "wal":
        raise StoreError(
            f"{name} cannot use write-ahead logging (journal mode stays {mode}); put it on a local file system"
        )
    db.execute("PRAGMA synchronous = FULL")


def _tighten_modes(file: Path) -> None:
    """Give an existing database, -wal and -shm mode 0600 if they were looser."""
    for path in (file, file.with_name(file.name + "-wal"), file.with_name(file.name + "-shm")):
        try:
            mode = stat.S_IMODE(path.stat().st_mode)
            if mode != 0o600:
                path.chmod(0o600)
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise StoreError(f"could not make {path} private (mode 0600): {exc.strerror or _one_line(exc)}") from exc
