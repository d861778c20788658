"""The broker's store in one SQLite database, encrypted at rest: `SQLiteStore`, the `zchat.broker.store.Store`
the broker runs (the file's making, opening, upgrading and copying are `zchat.broker.sqlite_file`'s).

At rest, a copy of the file without the broker's private key reveals no text
and no names: every message body is sealed with a `crypto.DataKey` (stored
only wrapped to the broker's RSA key, table `meta`), and names, message ids
and recipients appear only as the data key's HMAC tags. Times, sizes and row
counts are in clear.

Schema (PRAGMA user_version = `SQLiteStore.SCHEMA_VERSION`):

    meta  (name, value)                                    the wrapped data key, the creation time
    seen  (tag = tag("seen", author, id), received)        accepted statements, room and private
    chat  (id, seen_tag, received, body)                   room history; body seals author, id and document
    mail  (id, recipient = tag("recipient", name), seen_tag, stored, size, body, sender = tag("sender", name))
                                                           waiting private messages; body seals the recipient's envelope

Schema 1 (before `mail.sender`) is brought to 2 when a broker opens it: its
waiting mail counts for no sender.

Writes since the last `commit()` form one SQLite transaction, each write a
savepoint inside it. A `SQLiteStore` is not thread-safe: use it from one
thread at a time.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sqlite3
import struct
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

from zchat import crypto
from zchat.broker.sqlite_file import (
    DETAIL_CHARS,
    connect,
    create_file,
    damaged,
    one_line,
    open_error,
    set_journal,
    tighten_modes,
    upgrade,
    version_and_tables,
)
from zchat.broker.store import DAY, Mail, StoredChat
from zchat.errors import StoreError

MEMORY = ":memory:"

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

_T = TypeVar("_T")


def _time(value: float) -> bytes:
    return struct.pack(">d", value)


def _finite(what: str, value: float) -> float:
    if not math.isfinite(value):
        raise ValueError(f"{what} must be a finite number of seconds")
    return float(value)


class SQLiteStore:
    """The broker's SQLite database; see the module docstring, and `zchat.broker.store.Store` for what each
    method promises."""

    SCHEMA_VERSION = 2

    def __init__(self, db: sqlite3.Connection, key: crypto.DataKey, name: str) -> None:
        """Use `SQLiteStore.open`; this only wraps a connection that passed its checks."""
        self._db = db
        self._key = key
        self._name = name
        self._file = None if name == MEMORY else Path(name)
        self._units = 0  # writes that succeeded in the open transaction
        self._failed: str | None = None  # why the open transaction was lost, until commit() reports it
        self._closed = False

    # -- opening -----------------------------------------------------------------------------------------

    @classmethod
    def open(cls, path: str | Path, broker_key: crypto.PrivateKey, *, now: float) -> SQLiteStore:
        """Open the database at `path`, creating it (and its directory, mode 0700) if missing.

        Raises StoreError if the file is damaged, not a zchat database, from a newer zchat, or was made
        with another broker key; such a file is never modified.
        """
        name = str(path)
        if name == MEMORY:
            db = connect(MEMORY, uri=False, name=name)
            return cls._create(db, broker_key, name, now=now, memory=True)
        file = Path(path)
        create_file(file)
        target = f"file:{quote(str(file.absolute()))}"
        # Checks run on a read-only connection: one that fails leaves the file as it was (a connection
        # that may write would fold a leftover -wal into it on closing).
        probe = connect(f"{target}?mode=ro", uri=True, name=name)
        try:
            version, tables = version_and_tables(probe, name)
            key = None if version == 0 and not tables else cls._check(probe, broker_key, name, version, tables)
        finally:
            probe.close()
        db = connect(f"{target}?mode=rw", uri=True, name=name)
        try:
            if key is None:
                store = cls._create(db, broker_key, name, now=now, memory=False)
            else:
                try:
                    set_journal(db, name, memory=False)
                    upgrade(db, version, cls.SCHEMA_VERSION, _UPGRADES)
                except sqlite3.Error as exc:
                    raise open_error(name, exc) from exc
                store = cls(db, key, name)
            tighten_modes(file)
        except BaseException:
            db.close()
            raise
        return store

    @classmethod
    def _create(
        cls, db: sqlite3.Connection, broker_key: crypto.PrivateKey, name: str, *, now: float, memory: bool
    ) -> SQLiteStore:
        key = crypto.DataKey.generate()
        try:
            set_journal(db, name, memory=memory)
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
            raise StoreError(f"could not create the database {name}: {one_line(exc)}") from exc
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
            raise damaged(name, f"schema {version} with tables {', '.join(sorted(tables)) or 'none'}")
        try:
            problems = [str(row[0]) for row in db.execute("PRAGMA quick_check")]
            found = db.execute("SELECT value FROM meta WHERE name = ?", (_DATA_KEY,)).fetchone()
        except sqlite3.Error as exc:
            raise open_error(name, exc) from exc
        if problems != ["ok"]:
            raise damaged(name, " ".join(" ".join(problems[:3]).split())[:DETAIL_CHARS])
        if found is None or not isinstance(found[0], bytes):
            raise damaged(name, "no data key")
        try:
            return crypto.DataKey.unwrap(broker_key, found[0])
        except crypto.CryptoError:
            raise StoreError(
                f"{name} was made with another broker key (keys/broker.pem does not open its data key)"
            ) from None

    # -- reading -----------------------------------------------------------------------------------------

    def seen(self, author: str, message_id: str) -> float | None:
        row = self._read(
            lambda: self._db.execute(
                "SELECT received FROM seen WHERE tag = ?", (self._seen_tag(author, message_id),)
            ).fetchone()
        )
        return None if row is None else float(row[0])

    def history(self, count: int, since: float) -> list[StoredChat]:
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
        messages, size = self._read(
            lambda: self._db.execute(
                "SELECT count(*), coalesce(sum(size), 0) FROM mail WHERE recipient = ?",
                (self._recipient_tag(recipient),),
            ).fetchone()
        )
        return int(messages), int(size)

    def sent_usage(self, sender: str, recipient: str | None = None) -> tuple[int, int]:
        query = (
            "SELECT count(*), coalesce(sum(size), 0) FROM mail WHERE sender = ? AND recipient != ?"
            if recipient is None
            else "SELECT count(*), coalesce(sum(size), 0) FROM mail WHERE sender = ? AND recipient = ?"
        )
        other = self._recipient_tag(sender if recipient is None else recipient)
        messages, size = self._read(lambda: self._db.execute(query, (self._sender_tag(sender), other)).fetchone())
        return int(messages), int(size)

    def last_mail_row(self) -> int:
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
            raise StoreError(f"could not read the free space of {self._file.parent}: {one_line(exc)}") from exc
        return (pages - free) * page_size, disk.f_bavail * disk.f_frsize + free * page_size

    # -- writing (each joins the open transaction; commit() makes it durable) ------------------------------

    def add_chat(self, author: str, message_id: str, received: float, document: dict[str, Any]) -> None:
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
        ids = [(int(row),) for row in rows]
        if ids:
            self._write("the mailbox", lambda: self._db.executemany("DELETE FROM mail WHERE id = ?", ids))

    def prune(self, now: float, *, history_size: int, history_days: float, mail_days: float, seen_days: float) -> None:
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
            raise StoreError(f"could not store messages: {one_line(exc)}") from exc

    def close(self) -> None:
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
            raise StoreError(f"could not read {self._name}: {one_line(exc)}") from exc

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
            raise StoreError(f"could not store {what}: {one_line(exc)}") from exc
        try:
            result = statements()
            self._db.execute("RELEASE unit")
            self._units += 1
        except sqlite3.Error as exc:
            detail = one_line(exc)
            self._undo_unit(detail)
            raise StoreError(f"could not store {what}: {detail}") from exc
        except BaseException as exc:
            self._undo_unit(one_line(exc))
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
            raise damaged(self._name, "a stored message is not a sealed blob")
        try:
            return self._key.open(body, aad)
        except crypto.CryptoError:
            raise damaged(self._name, "a stored message does not open") from None

    def _open_chat(self, seen_tag: Any, received: float, body: Any) -> StoredChat:
        if not isinstance(seen_tag, bytes):
            raise damaged(self._name, "a stored message has no tag")
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
            raise damaged(self._name, "a stored message is not a chat message")
        return StoredChat(kept["author"], kept["id"], received, kept["document"])


def _chat_aad(seen_tag: bytes, received: float) -> bytes:
    return _CHAT_AAD + seen_tag + _time(received)


def _mail_aad(recipient_tag: bytes, seen_tag: bytes, stored: float) -> bytes:
    return _MAIL_AAD + recipient_tag + seen_tag + _time(stored)
