"""Unit-test fixtures: a broker core with client sessions, no sockets."""

from __future__ import annotations

import pytest

from tests.unit.world import World


@pytest.fixture
def world(keyring) -> World:
    return World(keyring.keys, keyring.layout)
