"""config.json: the broker's address, admins, key and data directories, and limits.

Only `server_ip` and `server_port` are required; every other key has a safe
default. Relative paths are taken relative to the config file's directory.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from zchat.errors import ConfigError
from zchat.protocol import DEFAULT_MAX_TEXT_BYTES, NAME_PATTERN

DEFAULT_CONFIG = Path("config.json")
DEFAULT_KEYS_DIR = Path("keys")
MAX_WORKERS = 256
# The cores this process may run on (its CPU affinity), where the platform says so.
DEFAULT_WORKERS = min(
    MAX_WORKERS, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
)


@dataclass(frozen=True)
class Config:
    server_ip: str
    server_port: int
    admins: frozenset[str] = frozenset()
    keys_dir: Path = DEFAULT_KEYS_DIR
    data_dir: Path = Path("data")  # the broker's database (history, offline mail), created on first start
    max_text_bytes: int = DEFAULT_MAX_TEXT_BYTES
    heartbeat_interval: float = 1.0
    heartbeat_timeout: float = 6.0
    send_queue_limit: int = 1000
    max_pending_logins: int = 1000
    max_clients: int = 1000
    logins_per_second_per_user: float = 5.0
    max_connections_per_source: int = 64
    handshakes_per_second_per_source: float = 20.0
    messages_per_second_per_user: float = 20.0
    history_size: int = 100
    history_days: float = 30.0  # room messages older than this are dropped (0: kept however old)
    mailbox_messages: int = 500  # private messages kept for one offline user, at most
    mailbox_bytes: int = 4 * 1024 * 1024  # ... and their size
    mailbox_days: float = 30.0  # a kept private message not collected by then is dropped
    history_replay_bytes: int = 1024 * 1024  # a login replays at most this much of the history
    send_window_bytes: int = 1024 * 1024  # EVENT bytes sent to a session and not yet acknowledged, at most
    send_queue_bytes: int = 8 * 1024 * 1024  # EVENT bytes waiting for a session's window: more, it is too slow
    presence_interval: float = 0.5  # joins and leaves go out at most this often, each member's in one event
    # Per-user budgets (docs/SECURITY.md): each counts across all of a user's connections and sessions.
    max_connections_per_user: int = 8  # TCP connections past the handshake
    handshakes_per_second_per_user: float = 10.0  # CurveZMQ handshakes (bursts of twice that)
    unfinished_bytes_per_user: int = 8 * 1024 * 1024  # bytes received that form no message yet, all connections
    queued_sends_per_user: int = 1000  # SEND envelopes waiting to be opened
    queued_send_bytes_per_user: int = 8 * 1024 * 1024  # ... and their size
    sent_mail_messages: int = 500  # private messages one sender has waiting for others, at most
    sent_mail_bytes: int = 4 * 1024 * 1024  # ... and their size
    routing_id_lockout: float = 300.0  # seconds a user who claimed a routing id may not connect
    # Strangers: accepted TCP connections per source address per second (bursts of twice that).
    connections_per_second_per_source: float = 20.0
    # The disk: below this much free space, or above this store size (0: no limit), new history and mail are
    # refused while live chat goes on.
    min_free_disk_bytes: int = 64 * 1024 * 1024
    max_store_bytes: int = 0
    workers: int = DEFAULT_WORKERS  # crypto worker processes; 0 does the crypto in the broker's own loop
    source: Path = field(default=DEFAULT_CONFIG, compare=False)


_KNOWN_KEYS = {
    "server_ip",
    "server_port",
    "admins",
    "keys_dir",
    "data_dir",
    "max_text_bytes",
    "heartbeat_interval",
    "heartbeat_timeout",
    "send_queue_limit",
    "max_pending_logins",
    "max_clients",
    "logins_per_second_per_user",
    "max_connections_per_source",
    "handshakes_per_second_per_source",
    "messages_per_second_per_user",
    "history_size",
    "history_days",
    "mailbox_messages",
    "mailbox_bytes",
    "mailbox_days",
    "history_replay_bytes",
    "send_window_bytes",
    "send_queue_bytes",
    "presence_interval",
    "workers",
    "max_connections_per_user",
    "handshakes_per_second_per_user",
    "unfinished_bytes_per_user",
    "queued_sends_per_user",
    "queued_send_bytes_per_user",
    "sent_mail_messages",
    "sent_mail_bytes",
    "routing_id_lockout",
    "connections_per_second_per_source",
    "min_free_disk_bytes",
    "max_store_bytes",
}


def _number(raw: dict[str, Any], key: str, default: float, low: float, high: float, integer: bool) -> Any:
    value = raw.get(key, default)
    kind_ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not kind_ok or not low <= value <= high:
        kind = "an integer" if integer else "a number"
        raise ConfigError(f"'{key}' must be {kind} from {low:g} to {high:g}, not {value!r}")
    return value


def parse_config(raw: Any, source: Path) -> Config:
    """Validate a decoded config document; ConfigError names the bad key."""
    if not isinstance(raw, dict):
        raise ConfigError("the file must hold a JSON object")
    unknown = sorted(set(raw) - _KNOWN_KEYS)
    if unknown:
        raise ConfigError(f"unknown key(s): {', '.join(unknown)}")
    ip = raw.get("server_ip")
    if not isinstance(ip, str):
        raise ConfigError("'server_ip' must be a string such as \"127.0.0.1\"")
    try:
        ipaddress.IPv4Address(ip)
    except ValueError:
        if ":" in ip:
            raise ConfigError(f"'server_ip' {ip!r}: IPv6 addresses are not supported; give an IPv4 address") from None
        raise ConfigError(f"'server_ip' is not an IP address: {ip!r}") from None
    if "server_port" not in raw:
        raise ConfigError("'server_port' is missing")
    port = _number(raw, "server_port", 0, 0, 65535, integer=True)
    admins = raw.get("admins", [])
    if not isinstance(admins, list) or not all(isinstance(a, str) and NAME_PATTERN.fullmatch(a) for a in admins):
        raise ConfigError("'admins' must be a list of user names")
    keys_dir = raw.get("keys_dir", "keys")
    if not isinstance(keys_dir, str) or not keys_dir:
        raise ConfigError("'keys_dir' must be a path")
    data_dir = raw.get("data_dir", "data")
    if not isinstance(data_dir, str) or not data_dir:
        raise ConfigError("'data_dir' must be a path")
    interval = _number(raw, "heartbeat_interval", 1.0, 0.05, 60, integer=False)
    timeout = _number(raw, "heartbeat_timeout", 6.0, 0.2, 600, integer=False)
    if timeout < 2 * interval:
        raise ConfigError("'heartbeat_timeout' must be at least twice 'heartbeat_interval'")
    history_size = _number(raw, "history_size", 100, 0, 10_000, integer=True)
    send_queue_limit = _number(raw, "send_queue_limit", 1000, 10, 1_000_000, integer=True)
    history_replay_bytes = _number(raw, "history_replay_bytes", 1024 * 1024, 0, 1 << 30, integer=True)
    send_window_bytes = _number(raw, "send_window_bytes", 1024 * 1024, 64 * 1024, 1 << 30, integer=True)
    send_queue_bytes = _number(raw, "send_queue_bytes", 8 * 1024 * 1024, 64 * 1024, 1 << 32, integer=True)
    return Config(
        server_ip=ip,
        server_port=port,
        admins=frozenset(admins),
        keys_dir=(source.parent / keys_dir),
        data_dir=(source.parent / data_dir),
        max_text_bytes=_number(raw, "max_text_bytes", DEFAULT_MAX_TEXT_BYTES, 1, 1024 * 1024, integer=True),
        heartbeat_interval=float(interval),
        heartbeat_timeout=float(timeout),
        send_queue_limit=send_queue_limit,
        max_pending_logins=_number(raw, "max_pending_logins", 1000, 1, 1_000_000, integer=True),
        max_clients=_number(raw, "max_clients", 1000, 1, 1_000_000, integer=True),
        logins_per_second_per_user=float(_number(raw, "logins_per_second_per_user", 5.0, 0.01, 1e6, False)),
        max_connections_per_source=_number(raw, "max_connections_per_source", 64, 1, 1_000_000, integer=True),
        handshakes_per_second_per_source=float(
            _number(raw, "handshakes_per_second_per_source", 20.0, 0.01, 1e6, False)
        ),
        messages_per_second_per_user=float(_number(raw, "messages_per_second_per_user", 20.0, 0.01, 1e6, False)),
        history_size=history_size,
        history_days=float(_number(raw, "history_days", 30.0, 0, 100_000, integer=False)),
        mailbox_messages=_number(raw, "mailbox_messages", 500, 0, 100_000, integer=True),
        mailbox_bytes=_number(raw, "mailbox_bytes", 4 * 1024 * 1024, 0, 1 << 30, integer=True),
        mailbox_days=float(_number(raw, "mailbox_days", 30.0, 0.001, 100_000, integer=False)),
        history_replay_bytes=history_replay_bytes,
        send_window_bytes=send_window_bytes,
        send_queue_bytes=send_queue_bytes,
        presence_interval=float(_number(raw, "presence_interval", 0.5, 0, 60, integer=False)),
        workers=_number(raw, "workers", DEFAULT_WORKERS, 0, MAX_WORKERS, integer=True),
        max_connections_per_user=_number(raw, "max_connections_per_user", 8, 1, 1_000_000, integer=True),
        handshakes_per_second_per_user=float(_number(raw, "handshakes_per_second_per_user", 10.0, 0.01, 1e6, False)),
        unfinished_bytes_per_user=_number(
            raw, "unfinished_bytes_per_user", 8 * 1024 * 1024, 64 * 1024, 1 << 32, integer=True
        ),
        queued_sends_per_user=_number(raw, "queued_sends_per_user", 1000, 1, 1_000_000, integer=True),
        queued_send_bytes_per_user=_number(
            raw, "queued_send_bytes_per_user", 8 * 1024 * 1024, 64 * 1024, 1 << 32, integer=True
        ),
        sent_mail_messages=_number(raw, "sent_mail_messages", 500, 0, 100_000, integer=True),
        sent_mail_bytes=_number(raw, "sent_mail_bytes", 4 * 1024 * 1024, 0, 1 << 30, integer=True),
        routing_id_lockout=float(_number(raw, "routing_id_lockout", 300.0, 0, 86_400, integer=False)),
        connections_per_second_per_source=float(
            _number(raw, "connections_per_second_per_source", 20.0, 0.01, 1e6, False)
        ),
        min_free_disk_bytes=_number(raw, "min_free_disk_bytes", 64 * 1024 * 1024, 0, 1 << 50, integer=True),
        max_store_bytes=_number(raw, "max_store_bytes", 0, 0, 1 << 50, integer=True),
        source=source,
    )


def add_location_arguments(parser: argparse.ArgumentParser) -> None:
    """--config and --keys-dir, the same for every command (broker, client, bots, zchat-keys)."""
    parser.add_argument("--config", type=Path, help=f"config file (default: {DEFAULT_CONFIG} here, if there is one)")
    parser.add_argument("--keys-dir", type=Path, help="key directory (default: keys_dir of the config, else keys)")


def load_config(path: Path = DEFAULT_CONFIG, keys_dir: Path | None = None) -> Config:
    """Read and check a config file; `keys_dir` (--keys-dir) replaces the file's keys_dir when given."""
    config = _read_config(path)
    return config if keys_dir is None else replace(config, keys_dir=keys_dir)


def _read_config(path: Path) -> Config:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise ConfigError(f"config file {path} is not valid JSON: {exc}") from None
    try:
        return parse_config(raw, path)
    except ConfigError as exc:
        raise ConfigError(f"config file {path}: {exc}") from None


@dataclass(frozen=True)
class ClientSettings:
    """What a client-side command (the client, a bot, zchat-keys) takes from --config and --keys-dir."""

    server_ip: str
    server_port: int
    keys_dir: Path


def client_settings(config_path: Path | None = None, keys_dir: Path | None = None) -> ClientSettings:
    """The broker's address and the key directory for a client-side command.

    A file --config names must exist. Without --config, config.json in the current directory is read if there
    is one (a client machine needs none): else 127.0.0.1, 5000 and keys/. --keys-dir wins over keys_dir.
    """
    if config_path is None and not DEFAULT_CONFIG.exists():
        return ClientSettings("127.0.0.1", 5000, DEFAULT_KEYS_DIR if keys_dir is None else keys_dir)
    config = load_config(DEFAULT_CONFIG if config_path is None else config_path, keys_dir)
    return ClientSettings(config.server_ip, config.server_port, config.keys_dir)
