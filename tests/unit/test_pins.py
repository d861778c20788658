"""zchat/client/pins.py: the pins file, and which names the client pins."""

from __future__ import annotations

import json
import stat

import pytest

from tests.unit.test_client_core import Harness, user_info
from zchat import crypto
from zchat.client.pins import PinStore, parse_pins
from zchat.events import KeyChanged

OTHER = "SHA256:" + "0" * 64


def test_pins_are_one_json_object_of_names_to_fingerprints_written_0600(tmp_path, keyring):
    path = tmp_path / "alice.known.json"
    pins = PinStore(path)
    bob = crypto.fingerprint(keyring.keys["bob"])
    assert pins.check("bob", bob) is None
    assert pins.check("carol", OTHER) is None
    assert json.loads(path.read_text()) == {"bob": bob, "carol": OTHER}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert PinStore(path).check("bob", OTHER) == bob  # read back: a different key is reported


def test_the_own_name_is_not_pinned_and_others_are(keyring, tmp_path):
    path = tmp_path / "alice.known.json"
    h = Harness(keyring.keys, pins=PinStore(path))
    h.log_in(user_info("bob", keyring.keys["bob"]))
    assert json.loads(path.read_text()) == {"bob": crypto.fingerprint(keyring.keys["bob"])}


def test_an_own_name_pinned_by_an_older_client_is_never_reported(keyring, tmp_path):
    path = tmp_path / "alice.known.json"
    path.write_text(json.dumps({"alice": OTHER}))
    h = Harness(keyring.keys, pins=PinStore(path))
    events = h.log_in()
    assert not [e for e in events if isinstance(e, KeyChanged)]


@pytest.mark.parametrize(
    "content",
    [
        "{not json",
        "[]",
        '{"bob": 1}',
        '{"bob": "SHA256:abc"}',
        '{"no spaces": "SHA256:' + "0" * 64 + '"}',
        "[" * 100_000,
        b"\xff\xfe",
    ],
    ids=["not-json", "not-an-object", "not-a-string", "not-a-fingerprint", "not-a-name", "deep", "not-utf8"],
)
def test_a_pin_file_that_cannot_be_used_is_left_as_it_is(tmp_path, caplog, content):
    path = tmp_path / "alice.known.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    before = path.read_bytes()
    pins = PinStore(path)
    assert pins.check("bob", OTHER) is None  # pinned for this run
    assert pins.check("bob", "SHA256:" + "1" * 64) == OTHER
    assert path.read_bytes() == before
    assert "keys are pinned for this run only" in caplog.text


def test_parse_pins_takes_what_the_client_writes(tmp_path):
    path = tmp_path / "alice.known.json"
    PinStore(path).check("bob", OTHER)
    assert parse_pins(path.read_text()) == {"bob": OTHER}
