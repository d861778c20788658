"""The broker's store: durability across restarts and crashes, retention, refusal of damaged, newer or
foreign databases, a full disk, secrecy at rest; and the data key that seals it. No sockets."""

from __future__ import annotations

import inspect
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from zchat import crypto
from zchat.broker.sqlite_file import backup
from zchat.broker.sqlite_store import SQLiteStore
from zchat.broker.store import DAY, Mail, Store, StoredChat
from zchat.errors import StoreError

ROOT = Path(__file__).resolve().parents[2]
T0 = 1_700_000_000.0


@pytest.fixture(scope="module")
def broker_key() -> crypto.PrivateKey:
    return crypto.generate_private_key(2048)


@pytest.fixture(scope="module")
def other_key() -> crypto.PrivateKey:
    return crypto.generate_private_key(2048)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "broker.db"


@pytest.fixture
def store(db_path: Path, broker_key: crypto.PrivateKey) -> Iterator[SQLiteStore]:
    opened = SQLiteStore.open(db_path, broker_key, now=T0)
    yield opened
    opened.close()


def doc(text: str) -> dict[str, Any]:
    return {"type": "chat", "text": text}


def texts(history: list[StoredChat]) -> list[str]:
    return [item.document["text"] for item in history]


def fill(store: SQLiteStore, count: int, *, start: float = T0, step: float = 1.0) -> None:
    for i in range(count):
        store.add_chat("alice", f"m{i}", start + i * step, doc(f"message {i}"))
    store.commit()


def expect_refusal(path: Path, key: crypto.PrivateKey, *words: str) -> str:
    """Opening fails with a one-line StoreError naming the file, and the file is left exactly as it was."""
    before = path.read_bytes()
    with pytest.raises(StoreError) as caught:
        SQLiteStore.open(path, key, now=T0)
    message = str(caught.value)
    assert "\n" not in message
    assert str(path) in message
    for word in words:
        assert word in message
    assert path.read_bytes() == before
    return message


# -- the protocol ------------------------------------------------------------------------------------------


def test_the_sqlite_store_has_every_method_of_the_store_protocol_with_its_signature() -> None:
    """Structural, at run time: every method the `Store` protocol names, with the same parameters (names, kinds,
    defaults, annotations) and return annotation. `runtime_checkable` would check the names only; mypy checks the
    same where the broker assigns a `SQLiteStore` to a `Store` (zchat/broker/main.py)."""
    methods = sorted(name for name, value in vars(Store).items() if callable(value) and not name.startswith("_"))
    reading = ["seen", "history", "mailbox", "mailbox_usage", "sent_usage", "last_mail_row", "space"]
    writing = ["add_chat", "add_mail", "delete_mail", "prune", "commit", "close"]
    assert methods == sorted(reading + writing)
    for name in methods:
        assert inspect.signature(getattr(SQLiteStore, name)) == inspect.signature(getattr(Store, name)), name


# -- round trips -------------------------------------------------------------------------------------------


def test_history_mail_and_seen_survive_close_and_reopen(db_path: Path, broker_key: crypto.PrivateKey) -> None:
    store = SQLiteStore.open(db_path, broker_key, now=T0)
    store.add_chat("alice", "a1", T0 + 1, doc("hello room"))
    store.add_chat("bob", "b1", T0 + 2, {"type": "chat", "text": "ünïcødé ✓", "nested": {"n": [1, 2.5, None]}})
    row = store.add_mail("carol", "alice", "a2", T0 + 3, b"sealed for carol")
    store.add_mail("carol", "bob", "b2", T0 + 4, b"second")
    store.commit()
    store.close()

    store = SQLiteStore.open(db_path, broker_key, now=T0 + 10)
    try:
        assert store.history(10, 0.0) == [
            StoredChat("alice", "a1", T0 + 1, doc("hello room")),
            StoredChat("bob", "b1", T0 + 2, {"type": "chat", "text": "ünïcødé ✓", "nested": {"n": [1, 2.5, None]}}),
        ]
        mails = store.mailbox("carol")
        assert mails[0] == Mail(row, b"sealed for carol", T0 + 3)
        assert [m.sealed for m in mails] == [b"sealed for carol", b"second"]
        assert store.mailbox("alice") == []
        assert store.mailbox_usage("carol") == (2, len(b"sealed for carol") + len(b"second"))
        assert store.mailbox_usage("nobody") == (0, 0)
        assert store.seen("alice", "a1") == T0 + 1
        assert store.seen("alice", "a2") == T0 + 3  # private statements count as seen too
        assert store.seen("alice", "b1") is None
        assert store.seen("bob", "a1") is None

        store.delete_mail([row])
        store.commit()
    finally:
        store.close()

    store = SQLiteStore.open(db_path, broker_key, now=T0 + 20)
    try:
        assert [m.sealed for m in store.mailbox("carol")] == [b"second"]
        assert store.seen("alice", "a2") == T0 + 3  # delivered, still remembered
    finally:
        store.close()


def test_memory_store_works(broker_key: crypto.PrivateKey) -> None:
    store = SQLiteStore.open(":memory:", broker_key, now=T0)
    try:
        store.add_chat("alice", "1", T0, doc("hi"))
        store.commit()
        assert texts(store.history(5, 0.0)) == ["hi"]
    finally:
        store.close()


def test_seen_includes_the_open_transaction(store: SQLiteStore) -> None:
    store.add_chat("alice", "x", T0, doc("pending"))
    store.add_mail("bob", "carol", "y", T0 + 1, b"pending mail")
    assert store.seen("alice", "x") == T0
    assert store.seen("carol", "y") == T0 + 1
    assert texts(store.history(5, 0.0)) == ["pending"]


def test_history_is_the_newest_count_since_oldest_first(store: SQLiteStore) -> None:
    fill(store, 10)
    assert texts(store.history(3, 0.0)) == ["message 7", "message 8", "message 9"]
    assert texts(store.history(100, T0 + 8)) == ["message 8", "message 9"]
    assert texts(store.history(1, T0 + 8)) == ["message 9"]
    assert store.history(0, 0.0) == []
    assert store.history(-1, 0.0) == []


def test_same_private_message_for_several_recipients(store: SQLiteStore) -> None:
    store.add_mail("bob", "alice", "p1", T0, b"to bob")
    store.add_mail("carol", "alice", "p1", T0, b"to carol")
    store.commit()
    assert [m.sealed for m in store.mailbox("bob")] == [b"to bob"]
    assert [m.sealed for m in store.mailbox("carol")] == [b"to carol"]


def test_a_room_message_stored_twice_is_refused_and_the_rest_of_the_group_stays(store: SQLiteStore) -> None:
    store.add_chat("alice", "dup", T0, doc("first"))
    with pytest.raises(StoreError, match="could not store"):
        store.add_chat("alice", "dup", T0 + 1, doc("again"))
    store.add_chat("alice", "next", T0 + 2, doc("next"))
    store.commit()
    assert texts(store.history(10, 0.0)) == ["first", "next"]


# -- uncommitted writes vanish -----------------------------------------------------------------------------


def test_uncommitted_writes_are_invisible_to_another_connection_and_gone_after_close(
    db_path: Path, broker_key: crypto.PrivateKey
) -> None:
    store = SQLiteStore.open(db_path, broker_key, now=T0)
    store.add_chat("alice", "kept", T0, doc("committed"))
    store.commit()
    store.add_chat("alice", "lost", T0 + 1, doc("not committed"))
    store.add_mail("bob", "alice", "lost-mail", T0 + 2, b"not committed")

    other = SQLiteStore.open(db_path, broker_key, now=T0)
    try:
        assert texts(other.history(10, 0.0)) == ["committed"]
        assert other.seen("alice", "lost") is None
        assert other.mailbox("bob") == []
    finally:
        other.close()
    store.close()  # without commit

    store = SQLiteStore.open(db_path, broker_key, now=T0)
    try:
        assert texts(store.history(10, 0.0)) == ["committed"]
        assert store.seen("alice", "lost") is None
        assert store.seen("alice", "lost-mail") is None
        assert store.mailbox_usage("bob") == (0, 0)
    finally:
        store.close()


def test_kill_9_keeps_what_was_committed_and_nothing_else(
    tmp_path: Path, db_path: Path, broker_key: crypto.PrivateKey, other_key: crypto.PrivateKey
) -> None:
    key_file = tmp_path / "broker.pem"
    key_file.write_bytes(crypto.export_private_pem(broker_key))
    script = textwrap.dedent(
        """
        import os, signal, sys
        from pathlib import Path
        from zchat import crypto
        from zchat.broker.sqlite_store import SQLiteStore

        key = crypto.private_key_from_pem(Path(sys.argv[2]).read_bytes())
        store = SQLiteStore.open(sys.argv[1], key, now=1.0)
        store.add_chat("alice", "one", 1.0, {"text": "acknowledged"})
        store.add_mail("bob", "alice", "two", 2.0, b"acknowledged mail")
        store.commit()
        store.add_chat("alice", "three", 3.0, {"text": "never acknowledged"})
        store.add_mail("bob", "alice", "four", 4.0, b"never acknowledged")
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(db_path), str(key_file)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == -signal.SIGKILL, done.stderr.decode()

    # the crash left the committed group in the -wal; a refused open folds nothing into the database file
    wal = db_path.with_name(db_path.name + "-wal")
    before = wal.read_bytes()
    assert before
    expect_refusal(db_path, other_key, "another broker key")
    assert wal.read_bytes() == before

    store = SQLiteStore.open(db_path, broker_key, now=10.0)
    try:
        assert texts(store.history(10, 0.0)) == ["acknowledged"]
        assert [m.sealed for m in store.mailbox("bob")] == [b"acknowledged mail"]
        assert store.seen("alice", "two") == 2.0
        assert store.seen("alice", "three") is None
        assert store.seen("alice", "four") is None
    finally:
        store.close()


# -- retention ---------------------------------------------------------------------------------------------


def test_prune_keeps_the_newest_history_size(store: SQLiteStore) -> None:
    fill(store, 10)
    store.prune(T0 + 20, history_size=4, history_days=0, mail_days=0, seen_days=0)
    store.commit()
    assert texts(store.history(100, 0.0)) == ["message 6", "message 7", "message 8", "message 9"]
    assert store.seen("alice", "m0") == T0  # seen_days 0: remembered forever
    store.prune(T0 + 20, history_size=0, history_days=0, mail_days=0, seen_days=0)
    store.commit()
    assert store.history(100, 0.0) == []


def test_prune_by_age(store: SQLiteStore) -> None:
    for day in range(5):
        store.add_chat("alice", f"d{day}", T0 + day * DAY, doc(f"day {day}"))
        store.add_mail("bob", "alice", f"p{day}", T0 + day * DAY, f"mail {day}".encode())
    store.commit()
    now = T0 + 4 * DAY + 1
    store.prune(now, history_size=100, history_days=2, mail_days=3, seen_days=0)
    store.commit()
    assert texts(store.history(100, 0.0)) == ["day 3", "day 4"]  # day 2 is 2 days and 1 second old
    assert [m.sealed for m in store.mailbox("bob")] == [b"mail 2", b"mail 3", b"mail 4"]
    assert store.mailbox_usage("bob") == (3, 18)


def test_prune_days_zero_keeps_forever(store: SQLiteStore) -> None:
    store.add_chat("alice", "old", T0, doc("old"))
    store.add_mail("bob", "alice", "oldmail", T0, b"old mail")
    store.commit()
    store.prune(T0 + 10_000 * DAY, history_size=10, history_days=0, mail_days=0, seen_days=0)
    store.commit()
    assert texts(store.history(10, 0.0)) == ["old"]
    assert len(store.mailbox("bob")) == 1
    assert store.seen("alice", "old") == T0


def test_prune_forgets_old_seen_records_but_not_those_of_kept_messages(store: SQLiteStore) -> None:
    store.add_chat("alice", "room-kept", T0, doc("kept"))
    store.add_chat("alice", "room-gone", T0 - 1, doc("gone"))
    store.add_mail("bob", "alice", "mail-kept", T0, b"waiting")
    store.add_mail("bob", "alice", "mail-delivered", T0, b"delivered")
    store.commit()
    delivered = [m.row for m in store.mailbox("bob") if m.sealed == b"delivered"]
    store.delete_mail(delivered)
    store.prune(T0 + 5 * DAY, history_size=1, history_days=0, mail_days=0, seen_days=1)
    store.commit()
    assert store.seen("alice", "room-kept") == T0  # its message is still in the history
    assert store.seen("alice", "mail-kept") == T0  # still waiting
    assert store.seen("alice", "room-gone") is None
    assert store.seen("alice", "mail-delivered") is None


def test_prune_refuses_negative_limits(store: SQLiteStore) -> None:
    with pytest.raises(ValueError, match="negative"):
        store.prune(T0, history_size=-1, history_days=0, mail_days=0, seen_days=0)


def test_mail_ids_are_never_reused(store: SQLiteStore) -> None:
    first = store.add_mail("bob", "alice", "1", T0, b"one")
    second = store.add_mail("bob", "alice", "2", T0, b"two")
    store.commit()
    store.delete_mail([second])
    store.commit()
    third = store.add_mail("bob", "alice", "3", T0, b"three")
    assert first < second < third


# -- refusing files it must not touch ----------------------------------------------------------------------


def test_random_bytes_are_refused_untouched(db_path: Path, broker_key: crypto.PrivateKey) -> None:
    db_path.parent.mkdir()
    db_path.write_bytes(os.urandom(8192))
    expect_refusal(db_path, broker_key, "is damaged or not a zchat database", "restore a backup or move it away")


def test_a_damaged_page_is_refused_untouched(db_path: Path, broker_key: crypto.PrivateKey) -> None:
    store = SQLiteStore.open(db_path, broker_key, now=T0)
    fill(store, 200)
    store.close()
    with sqlite3.connect(db_path) as db:
        page_size = db.execute("PRAGMA page_size").fetchone()[0]
        root = db.execute("SELECT rootpage FROM sqlite_master WHERE name = 'chat'").fetchone()[0]
    db.close()
    raw = bytearray(db_path.read_bytes())
    start = (root - 1) * page_size
    raw[start : start + page_size] = os.urandom(page_size)
    db_path.write_bytes(bytes(raw))
    expect_refusal(db_path, broker_key, "is damaged or not a zchat database", "restore a backup or move it away")


def test_another_sqlite_database_is_refused_untouched(db_path: Path, broker_key: crypto.PrivateKey) -> None:
    db_path.parent.mkdir()
    db = sqlite3.connect(db_path)
    db.execute("CREATE TABLE notes (text TEXT)")
    db.commit()
    db.close()
    expect_refusal(db_path, broker_key, "not a zchat database")


def test_a_newer_schema_is_refused_untouched(db_path: Path, broker_key: crypto.PrivateKey) -> None:
    SQLiteStore.open(db_path, broker_key, now=T0).close()
    db = sqlite3.connect(db_path)
    db.execute(f"PRAGMA user_version = {SQLiteStore.SCHEMA_VERSION + 1}")
    db.close()
    message = expect_refusal(db_path, broker_key)
    assert message == (
        f"{db_path} was written by a newer zchat (schema {SQLiteStore.SCHEMA_VERSION + 1}; this broker knows"
        f" {SQLiteStore.SCHEMA_VERSION})"
    )


def test_another_broker_key_is_refused(
    db_path: Path, broker_key: crypto.PrivateKey, other_key: crypto.PrivateKey
) -> None:
    store = SQLiteStore.open(db_path, broker_key, now=T0)
    fill(store, 3)
    store.close()
    message = expect_refusal(db_path, other_key)
    assert message == f"{db_path} was made with another broker key (keys/broker.pem does not open its data key)"
    store = SQLiteStore.open(db_path, broker_key, now=T0)  # the right key still opens it
    try:
        assert len(store.history(10, 0.0)) == 3
    finally:
        store.close()


def test_a_swapped_message_body_is_reported_as_damage(db_path: Path, broker_key: crypto.PrivateKey) -> None:
    store = SQLiteStore.open(db_path, broker_key, now=T0)
    fill(store, 2)
    store.close()
    db = sqlite3.connect(db_path)
    bodies = [row[0] for row in db.execute("SELECT body FROM chat ORDER BY id")]
    db.execute("UPDATE chat SET body = ? WHERE id = (SELECT min(id) FROM chat)", (bodies[1],))
    db.commit()
    db.close()
    store = SQLiteStore.open(db_path, broker_key, now=T0)
    try:
        with pytest.raises(StoreError, match="damaged"):
            store.history(10, 0.0)
    finally:
        store.close()


# -- a full disk -------------------------------------------------------------------------------------------


def test_full_disk_refuses_messages_and_the_store_keeps_working(store: SQLiteStore) -> None:
    fill(store, 5)
    pages = store._db.execute("PRAGMA page_count").fetchone()[0]
    store._db.execute(f"PRAGMA max_page_count = {pages + 4}")
    big = "x" * 3000
    refused: StoreError | None = None
    for i in range(100):
        try:
            store.add_chat("bob", f"big{i}", T0 + 100 + i, doc(f"{big} {i}"))
            store.commit()
        except StoreError as exc:
            refused = exc
            break
    assert refused is not None
    message = str(refused)
    assert "\n" not in message
    assert message.startswith("could not store")
    assert "full" in message

    # a message refused alone leaves nothing behind; reads and later groups work
    store.commit()
    assert texts(store.history(3, 0.0))[-1].startswith(big)
    assert store.seen("bob", f"big{i}") is None
    assert store.seen("alice", "m0") == T0
    with pytest.raises(StoreError, match="full"):
        store.add_chat("bob", "still-full", T0 + 500, doc(big))
    store.commit()

    store.prune(T0 + 1000, history_size=2, history_days=0, mail_days=0, seen_days=0)
    store.commit()
    store.add_chat("bob", "after-prune", T0 + 1000, doc("fits again"))
    store.commit()
    assert texts(store.history(1, 0.0)) == ["fits again"]


def test_a_full_disk_never_loses_a_write_that_commit_then_confirms(store: SQLiteStore) -> None:
    fill(store, 3)
    store.add_chat("alice", "small", T0 + 10, doc("small"))
    pages = store._db.execute("PRAGMA page_count").fetchone()[0]
    store._db.execute(f"PRAGMA max_page_count = {pages}")
    with pytest.raises(StoreError, match=r"^could not store the message: database or disk is full$"):
        store.add_chat("bob", "big", T0 + 11, doc("y" * 20_000))
    if not store._db.in_transaction:  # SQLite dropped the whole group: commit says so, nothing of it stays
        with pytest.raises(StoreError, match=r"^could not store messages: database or disk is full$"):
            store.commit()
        assert store.seen("alice", "small") is None
    else:  # SQLite undid only the failed statement: the rest of the group is durable
        store.commit()
        assert store.seen("alice", "small") == T0 + 10
    assert store.seen("bob", "big") is None
    store._db.execute(f"PRAGMA max_page_count = {pages + 100}")
    store.add_chat("alice", "later", T0 + 12, doc("later"))
    store.commit()
    assert texts(store.history(1, 0.0)) == ["later"]


# -- secrecy and file modes --------------------------------------------------------------------------------

SECRETS = {
    "author": "zaphod-beeblebrox",
    "recipient": "trillian-mcmillan",
    "room id": "room-msg-3f9a1c",
    "mail id": "mail-msg-77e2b0",
    "room text": "the vault code is 8817-alpha",
    "document key": "secret_field_name",
    "sealed": "SEALED-ENVELOPE-BYTES",
}


def raw_files(db_path: Path) -> bytes:
    return b"".join(
        path.read_bytes()
        for path in (db_path, db_path.with_name(db_path.name + "-wal"), db_path.with_name(db_path.name + "-shm"))
        if path.exists()
    )


def test_the_file_reveals_no_text_names_or_ids(db_path: Path, broker_key: crypto.PrivateKey) -> None:
    store = SQLiteStore.open(db_path, broker_key, now=T0)
    store.add_chat(
        SECRETS["author"],
        SECRETS["room id"],
        T0,
        {"text": SECRETS["room text"], SECRETS["document key"]: 1},
    )
    store.add_mail(SECRETS["recipient"], SECRETS["author"], SECRETS["mail id"], T0, SECRETS["sealed"].encode())
    store.commit()
    assert db_path.with_name(db_path.name + "-wal").stat().st_size > 0
    snapshots = [raw_files(db_path)]
    store.close()  # checkpoints the log into the database file
    snapshots.append(raw_files(db_path))
    for raw in snapshots:
        for what, secret in SECRETS.items():
            for encoding in ("utf-8", "utf-16-le", "utf-16-be"):
                assert secret.encode(encoding) not in raw, f"{what} readable in the database ({encoding})"
    store = SQLiteStore.open(db_path, broker_key, now=T0)
    try:
        assert store.history(1, 0.0)[0].author == SECRETS["author"]
        assert store.mailbox(SECRETS["recipient"])[0].sealed == SECRETS["sealed"].encode()
    finally:
        store.close()


def test_database_and_log_files_are_private(db_path: Path, broker_key: crypto.PrivateKey) -> None:
    store = SQLiteStore.open(db_path, broker_key, now=T0)
    try:
        store.add_chat("alice", "1", T0, doc("hi"))
        store.commit()
        assert stat.S_IMODE(db_path.parent.stat().st_mode) & 0o077 == 0
        for suffix in ("", "-wal", "-shm"):
            path = db_path.with_name(db_path.name + suffix)
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        assert store._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert store._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    finally:
        store.close()


def test_an_existing_database_with_a_loose_mode_is_made_private(db_path: Path, broker_key: crypto.PrivateKey) -> None:
    SQLiteStore.open(db_path, broker_key, now=T0).close()
    db_path.chmod(0o644)
    store = SQLiteStore.open(db_path, broker_key, now=T0)
    try:
        store.add_chat("alice", "1", T0, doc("hi"))
        store.commit()
        for suffix in ("", "-wal", "-shm"):
            path = db_path.with_name(db_path.name + suffix)
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    finally:
        store.close()


# -- the data key ------------------------------------------------------------------------------------------


def test_data_key_round_trip_and_wrapping(broker_key: crypto.PrivateKey, other_key: crypto.PrivateKey) -> None:
    key = crypto.DataKey.generate()
    blob = key.seal(b"plain text", b"aad")
    assert b"plain text" not in blob
    assert key.open(blob, b"aad") == b"plain text"
    assert key.seal(b"plain text", b"aad") != blob  # a fresh nonce each time

    wrapped = key.wrap(broker_key.public_key())
    again = crypto.DataKey.unwrap(broker_key, wrapped)
    assert again.open(blob, b"aad") == b"plain text"
    assert again.tag("alice") == key.tag("alice")
    with pytest.raises(crypto.CryptoError):
        crypto.DataKey.unwrap(other_key, wrapped)
    with pytest.raises(crypto.CryptoError):
        crypto.DataKey.unwrap(broker_key, wrapped[:-1] + bytes([wrapped[-1] ^ 1]))
    assert "secret" in repr(key)


def test_data_key_detects_tampering() -> None:
    key = crypto.DataKey.generate()
    blob = key.seal(b"some stored message", b"chat|row")
    for position in range(len(blob)):
        tampered = bytearray(blob)
        tampered[position] ^= 0x01
        with pytest.raises(crypto.CryptoError):
            key.open(bytes(tampered), b"chat|row")
    for bad in (b"", blob[:20], blob[:-1], blob + b"x"):
        with pytest.raises(crypto.CryptoError):
            key.open(bad, b"chat|row")
    with pytest.raises(crypto.CryptoError):
        key.open(blob, b"mail|row")
    with pytest.raises(crypto.CryptoError):
        crypto.DataKey.generate().open(blob, b"chat|row")


def test_data_key_tags_are_unambiguous_and_keyed() -> None:
    key = crypto.DataKey.generate()
    assert key.tag("ab", "c") != key.tag("a", "bc")
    assert key.tag("a", "") != key.tag("a")
    assert key.tag("seen", "alice", "1") == key.tag("seen", "alice", "1")
    assert len(key.tag("x")) == 32
    assert crypto.DataKey.generate().tag("x") != key.tag("x")


def test_backup_while_the_store_is_open_copies_what_was_committed(
    db_path: Path, broker_key: crypto.PrivateKey, other_key: crypto.PrivateKey, tmp_path: Path
) -> None:
    live = SQLiteStore.open(db_path, broker_key, now=T0)
    fill(live, 3)
    live.add_chat("alice", "uncommitted", T0 + 10, doc("not yet"))  # a transaction open during the backup
    copy = tmp_path / "copy.db"
    assert backup(db_path, copy) > 0
    live.close()
    restored = SQLiteStore.open(copy, broker_key, now=T0)
    assert texts(restored.history(10, 0)) == ["message 0", "message 1", "message 2"]
    restored.close()
    expect_refusal(copy, other_key, "another broker key")  # as encrypted as the original


def test_backup_never_overwrites_and_names_a_missing_database(
    store: SQLiteStore, db_path: Path, tmp_path: Path
) -> None:
    existing = tmp_path / "existing.db"
    existing.write_bytes(b"keep me")
    with pytest.raises(StoreError, match="exists already"):
        backup(db_path, existing)
    assert existing.read_bytes() == b"keep me"
    with pytest.raises(StoreError, match="does not exist"):
        backup(tmp_path / "nowhere.db", tmp_path / "copy.db")
    assert not (tmp_path / "copy.db").exists()
