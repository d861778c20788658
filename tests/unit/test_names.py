"""Look-alike user names (zchat.names) and the keystore refusing a name that looks like a registered one."""

from __future__ import annotations

import shutil

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zchat import crypto
from zchat.keystore import KeyLayout, create_client_key, lookalike_problem, registered_names
from zchat.names import clashing_name, name_skeleton
from zchat.protocol import NAME_PATTERN

names = st.from_regex(NAME_PATTERN, fullmatch=True)


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("alice", "Alice"),
        ("alice", "ALICE"),
        ("alice", "aIice"),
        ("alice", "a1ice"),
        ("alice", "aLice"),
        ("alice", "alIce"),  # i and l are one group
        ("bob", "b0b"),
        ("bob", "BOB"),
        ("bob", "8o8"),
        ("jo_bob", "jo-bob"),
        ("sam", "5am"),
        ("zed", "2ed"),
        ("O0o", "ooo"),
        ("l1Ii", "LLLL"),
    ],
)
def test_look_alikes_share_a_skeleton(first, second):
    assert name_skeleton(first) == name_skeleton(second)


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("alice", "alicia"),
        ("alice", "alice2"),
        ("bob", "rob"),
        ("bob", "bobb"),
        ("user1", "user2"),
        ("u10", "u01"),
        ("mary", "rnary"),  # multi-letter look-alikes are not folded (documented)
        ("a", "-a"),
    ],
)
def test_different_names_keep_different_skeletons(first, second):
    assert name_skeleton(first) != name_skeleton(second)


def test_skeleton_is_lowercase_with_one_representative_per_group():
    assert name_skeleton("Al1Ic_O0-S5Z2B8") == "alllc-oo-sszzbb"


def test_clashing_name_finds_the_first_look_alike():
    assert clashing_name("aIice", ["bob", "alice", "Alice"]) == "alice"
    assert clashing_name("ALICE", ("bob", "carol")) is None
    assert clashing_name("bob", []) is None


def test_an_identical_name_is_the_same_user_not_a_clash():
    assert clashing_name("alice", ["alice"]) is None
    assert clashing_name("alice", ["alice", "Alice"]) == "Alice"


def test_clashing_name_accepts_any_iterable():
    assert clashing_name("b0b", iter(["bob"])) == "bob"


@settings(max_examples=300)
@given(names)
def test_skeleton_is_idempotent_and_case_insensitive(name):
    skeleton = name_skeleton(name)
    assert name_skeleton(skeleton) == skeleton
    assert name_skeleton(name.upper()) == skeleton
    assert name_skeleton(name.lower()) == skeleton
    assert name_skeleton(name.swapcase()) == skeleton
    assert NAME_PATTERN.fullmatch(skeleton)  # still a valid name


@given(names, names)
def test_clash_means_different_string_same_skeleton(name, other):
    clash = clashing_name(name, [other])
    if clash is None:
        assert other == name or name_skeleton(other) != name_skeleton(name)
    else:
        assert clash == other != name
        assert name_skeleton(other) == name_skeleton(name)


# ---------------------------------------------------------------- keystore


def all_files(root):
    return sorted(str(path.relative_to(root)) for path in root.rglob("*") if path.is_file())


def test_registered_names_lists_valid_pub_stems_only(tmp_path):
    layout = KeyLayout(tmp_path / "keys")
    assert registered_names(layout) == []  # no registry directory yet
    layout.clients_dir.mkdir(parents=True)
    for file_name in ("bob.pub", "alice.pub", "alice.pub.tmp", "bad name.pub", "carol.pem", "notes.txt"):
        (layout.clients_dir / file_name).write_text("x")
    assert registered_names(layout) == ["alice", "bob"]


def test_creating_a_look_alike_of_a_registered_user_is_refused_and_writes_nothing(tmp_path):
    layout = KeyLayout(tmp_path / "keys")
    create_client_key(layout, "alice", bits=2048)
    before = all_files(layout.root)

    for impostor in ("aIice", "Alice", "a1ice", "ALICE"):
        with pytest.raises(FileExistsError) as refused:
            create_client_key(layout, impostor, bits=2048)
        message = str(refused.value)
        assert message == f"{impostor!r} looks like the registered user 'alice'; choose another name"
        assert "\n" not in message
        assert all_files(layout.root) == before

    create_client_key(layout, "bob", bits=2048)  # an unrelated name is still fine
    assert registered_names(layout) == ["alice", "bob"]


def test_keys_cli_reports_a_look_alike_on_one_line(tmp_path, capsys, monkeypatch):
    from zchat import keystore

    monkeypatch.setenv("PASSPHRASE", "")
    monkeypatch.chdir(tmp_path)  # no config.json here: the working tree's is the user's
    layout = KeyLayout(tmp_path / "keys")
    keystore.ensure_broker_keys(layout, bits=2048)
    create_client_key(layout, "alice", bits=2048)
    before = all_files(layout.root)
    assert keystore.main(["aIice", "--keys-dir", str(layout.root), "--bits", "2048"]) == 1
    err = capsys.readouterr().err
    assert err == "error: 'aIice' looks like the registered user 'alice'; choose another name\n"
    assert all_files(layout.root) == before


def test_a_name_with_its_own_key_is_no_look_alike_and_a_broken_registry_is_one_error(tmp_path):
    layout = KeyLayout(tmp_path / "keys")
    create_client_key(layout, "bob", bits=2048)
    assert lookalike_problem(layout, "b0b") == "'b0b' looks like the registered user 'bob'; choose another name"
    layout.client_private("b0b").write_text("b0b's own key, whose .pub went to the operator")
    assert lookalike_problem(layout, "b0b") is None  # not a new user: the prompt does not ask again forever
    shutil.rmtree(layout.clients_dir)
    layout.clients_dir.write_text("not a directory")
    with pytest.raises(crypto.KeyFileError, match="cannot list the registered keys"):
        lookalike_problem(layout, "carol")
