"""The SQLite file under the broker's store: making it (and its directory) private, opening it, reading its
schema version without writing, upgrading it, its journal mode, a consistent copy of it (`backup`), and the
one-line StoreError for each way this fails.

What the file holds (tables, the data key, sealing) is `zchat.broker.sqlite_store`'s; nothing here reads or writes
a row of it.
"""

from __future__ import annotations

import os
import sqlite3
import stat
from collections.abc import Mapping, Sequence
from pathlib import Path
from urllib.parse import quote

from zchat.errors import StoreError

_BUSY_TIMEOUT = 2.0  # seconds another process (a backup) may hold a lock before a write fails
DETAIL_CHARS = 200
# SQLite's primary result codes that mean "this file is not a sound database".
_DAMAGED_CODES = frozenset({sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB, sqlite3.SQLITE_FORMAT})


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:DETAIL_CHARS]


def damaged(name: str, detail: str) -> StoreError:
    return StoreError(f"{name} is damaged or not a zchat database ({detail}); restore a backup or move it away")


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
    create_file(target_file)
    try:
        source = connect(f"file:{quote(str(source_file.resolve()))}?mode=ro", uri=True, name=str(source_file))
        copy = connect(str(target_file), uri=False, name=str(target_file))
        try:
            source.backup(copy)
            pages = int(copy.execute("PRAGMA page_count").fetchone()[0])
        finally:
            copy.close()
            source.close()
    except (sqlite3.Error, StoreError) as exc:
        target_file.unlink(missing_ok=True)
        raise StoreError(f"could not back up {source_file}: {one_line(exc)}") from exc
    return pages


def create_file(file: Path) -> None:
    """Make the directory (0700) and an empty database file (0600) if missing."""
    try:
        file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(file, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    except OSError as exc:
        raise StoreError(f"could not create {file}: {exc.strerror or one_line(exc)}") from exc
    else:
        os.close(fd)
        return
    if not file.is_file():
        raise StoreError(f"{file} is not a regular file; move it away or choose another store path")
    if not os.access(file, os.R_OK | os.W_OK):
        raise StoreError(f"{file} is not readable and writable by this user; check its owner and mode")


def connect(target: str, *, uri: bool, name: str) -> sqlite3.Connection:
    try:
        db = sqlite3.connect(target, uri=uri, timeout=_BUSY_TIMEOUT, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA trusted_schema = OFF")
    except sqlite3.Error as exc:
        raise open_error(name, exc) from exc
    return db


def open_error(name: str, exc: sqlite3.Error) -> StoreError:
    code = getattr(exc, "sqlite_errorcode", None)
    if (isinstance(code, int) and code & 0xFF in _DAMAGED_CODES) or type(exc) is sqlite3.DatabaseError:
        return damaged(name, one_line(exc))
    return StoreError(f"could not open {name} ({one_line(exc)}); check the file, its directory and their modes")


def version_and_tables(db: sqlite3.Connection, name: str) -> tuple[int, set[str]]:
    """The user_version and table names, read without writing anything."""
    try:
        version = int(db.execute("PRAGMA user_version").fetchone()[0])
        tables = {str(row[0]) for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.Error as exc:
        raise open_error(name, exc) from exc
    tables.discard("sqlite_sequence")
    return version, tables


def upgrade(db: sqlite3.Connection, version: int, target: int, steps: Mapping[int, Sequence[str]]) -> None:
    """Bring a database of an older schema to `target` with `steps` (from each version to the next), all in one
    transaction."""
    if version == target:
        return
    db.execute("BEGIN IMMEDIATE")
    try:
        for step in range(version, target):
            for statement in steps[step]:
                db.execute(statement)
        db.execute(f"PRAGMA user_version = {target:d}")
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


def set_journal(db: sqlite3.Connection, name: str, *, memory: bool) -> None:
    mode = str(db.execute("PRAGMA journal_mode = WAL").fetchone()[0]).lower()
    if not memory and mode != "wal":
        raise StoreError(
            f"{name} cannot use write-ahead logging (journal mode stays {mode}); put it on a local file system"
        )
    db.execute("PRAGMA synchronous = FULL")


def tighten_modes(file: Path) -> None:
    """Give an existing database, -wal and -shm mode 0600 if they were looser."""
    for path in (file, file.with_name(file.name + "-wal"), file.with_name(file.name + "-shm")):
        try:
            mode = stat.S_IMODE(path.stat().st_mode)
            if mode != 0o600:
                path.chmod(0o600)
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise StoreError(f"could not make {path} private (mode 0600): {exc.strerror or one_line(exc)}") from exc
