"""zchat/config.py: every key a config file may hold is checked, and each number against its own range."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest

from zchat import config
from zchat.errors import ConfigError

BASE = {"server_ip": "127.0.0.1", "server_port": 5000}


def test_every_setting_of_config_is_a_key_with_a_check():
    settings = {item.name for item in fields(config.Config)} - {"source"}
    ranged = [key for key, _, _ in config._HEARTBEAT_RANGES + config._LIMIT_RANGES]
    assert len(ranged) == len(set(ranged))
    assert settings == config._KNOWN_KEYS == {"server_ip", "server_port", "admins", "keys_dir", "data_dir", *ranged}


def test_an_omitted_number_is_the_default_of_config():
    assert config.parse_config(BASE, Path("config.json")) == config.Config("127.0.0.1", 5000)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("history_size", 10_001, "'history_size' must be an integer from 0 to 10000, not 10001"),
        ("history_size", 1.0, "'history_size' must be an integer from 0 to 10000, not 1.0"),
        ("mailbox_days", 0, "'mailbox_days' must be a number from 0.001 to 100000, not 0"),
        ("presence_interval", True, "'presence_interval' must be a number from 0 to 60, not True"),
        ("heartbeat_timeout", 1.0, "'heartbeat_timeout' must be at least twice 'heartbeat_interval'"),
    ],
)
def test_a_number_out_of_its_range_is_named(key, value, message):
    with pytest.raises(ConfigError) as info:
        config.parse_config({**BASE, key: value}, Path("config.json"))
    assert str(info.value) == message


def test_a_whole_number_for_a_float_setting_is_kept_as_a_float():
    parsed = config.parse_config({**BASE, "history_days": 7, "max_clients": 9}, Path("config.json"))
    assert (parsed.history_days, parsed.max_clients) == (7.0, 9)
    assert isinstance(parsed.history_days, float)
    assert isinstance(parsed.max_clients, int)
