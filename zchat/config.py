"""config.json: the broker's address, admins, key and data directories, and limits.

Only `server_ip` and `server_port` are required; every other key has a safe
default. Relative paths are taken relative to the config file's directory.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
from dataclasses import dataclass, field, fields, replace
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


_KNOWN_KEYS = frozenset(item.name for item in fields(Config)) - {"source"}
_DEFAULTS: dict[str, Any] = {item.name: item.default for item in fields(Config)}
_INTEGERS = frozenset(item.name for item in fields(Config) if item.type in ("int", int))

# Each number a config may set, checked in this order: (key, lowest, highest). Its default is Config's; it is an
# integer where Config's field is an int, else any number (kept as a float).
_HEARTBEAT_RANGES = (("heartbeat_interval", 0.05, 60), ("heartbeat_timeout", 0.2, 600))
_LIMIT_RANGES: tuple[tuple[str, float, float], ...] = (
    ("history_size", 0, 10_000),
    ("send_queue_limit", 10, 1_000_000),
    ("history_replay_bytes", 0, 1 << 30),
    ("send_window_bytes", 64 * 1024, 1 << 30),
    ("send_queue_bytes", 64 * 1024, 1 << 32),
    ("max_text_bytes", 1, 1024 * 1024),
    ("max_pending_logins", 1, 1_000_000),
    ("max_clients", 1, 1_000_000),
    ("logins_per_second_per_user", 0.01, 1e6),
    ("max_connections_per_source", 1, 1_000_000),
    ("handshakes_per_second_per_source", 0.01, 1e6),
    ("messages_per_second_per_user", 0.01, 1e6),
    ("history_days", 0, 100_000),
    ("mailbox_messages", 0, 100_000),
    ("mailbox_bytes", 0, 1 << 30),
    ("mailbox_days", 0.001, 100_000),
    ("presence_interval", 0, 60),
    ("workers", 0, MAX_WORKERS),
    ("max_connections_per_user", 1, 1_000_000),
    ("handshakes_per_second_per_user", 0.01, 1e6),
    ("unfinished_bytes_per_user", 64 * 1024, 1 << 32),
    ("queued_sends_per_user", 1, 1_000_000),
    ("queued_send_bytes_per_user", 64 * 1024, 1 << 32),
    ("sent_mail_messages", 0, 100_000),
    ("sent_mail_bytes", 0, 1 << 30),
    ("routing_id_lockout", 0, 86_400),
    ("connections_per_second_per_source", 0.01, 1e6),
    ("min_free_disk_bytes", 0, 1 << 50),
    ("max_store_bytes", 0, 1 << 50),
)


def _number(raw: dict[str, Any], key: str, default: float, low: float, high: float, integer: bool) -> Any:
    value = raw.get(key, default)
    kind_ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not kind_ok or not low <= value <= high:
        kind = "an integer" if integer else "a number"
        raise ConfigError(f"'{key}' must be {kind} from {low:g} to {high:g}, not {value!r}")
    return value


def _numbers(raw: dict[str, Any], ranges: tuple[tuple[str, float, float], ...]) -> dict[str, Any]:
    """The numbers `ranges` names, each checked against its range, by key."""
    numbers: dict[str, Any] = {}
    for key, low, high in ranges:
        integer = key in _INTEGERS
        value = _number(raw, key, _DEFAULTS[key], low, high, integer)
        numbers[key] = value if integer else float(value)
    return numbers


def _server_ip(raw: dict[str, Any]) -> str:
    ip = raw.get("server_ip")
    if not isinstance(ip, str):
        raise ConfigError("'server_ip' must be a string such as \"127.0.0.1\"")
    try:
        ipaddress.IPv4Address(ip)
    except ValueError:
        if ":" in ip:
            raise ConfigError(f"'server_ip' {ip!r}: IPv6 addresses are not supported; give an IPv4 address") from None
        raise ConfigError(f"'server_ip' is not an IP address: {ip!r}") from None
    return ip


def _path(raw: dict[str, Any], key: str, default: str, source: Path) -> Path:
    """A directory the config names, relative to the config file's own directory."""
    value = raw.get(key, default)
    if not isinstance(value, str) or not value:
        raise ConfigError(f"'{key}' must be a path")
    return source.parent / value


def parse_config(raw: Any, source: Path) -> Config:
    """Validate a decoded config document; ConfigError names the bad key."""
    if not isinstance(raw, dict):
        raise ConfigError("the file must hold a JSON object")
    unknown = sorted(set(raw) - _KNOWN_KEYS)
    if unknown:
        raise ConfigError(f"unknown key(s): {', '.join(unknown)}")
    ip = _server_ip(raw)
    if "server_port" not in raw:
        raise ConfigError("'server_port' is missing")
    port = _number(raw, "server_port", 0, 0, 65535, integer=True)
    admins = raw.get("admins", [])
    if not isinstance(admins, list) or not all(isinstance(a, str) and NAME_PATTERN.fullmatch(a) for a in admins):
        raise ConfigError("'admins' must be a list of user names")
    keys_dir = _path(raw, "keys_dir", "keys", source)
    data_dir = _path(raw, "data_dir", "data", source)
    heartbeat = _numbers(raw, _HEARTBEAT_RANGES)
    if heartbeat["heartbeat_timeout"] < 2 * heartbeat["heartbeat_interval"]:
        raise ConfigError("'heartbeat_timeout' must be at least twice 'heartbeat_interval'")
    limits = _numbers(raw, _LIMIT_RANGES)
    return Config(ip, port, frozenset(admins), keys_dir, data_dir, **heartbeat, **limits, source=source)


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
