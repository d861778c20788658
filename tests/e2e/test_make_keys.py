"""`make keys NAME=...` in a copy of the repository, as a person runs it."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pexpect
import pytest

from tests.conftest import copy_checkout
from zchat import crypto
from zchat.keystore import KeyLayout, public_file_is_current, write_private_key

STAMP = ".venv/.runtime-installed"


@pytest.fixture
def repo_copy(tmp_path: Path) -> Path:
    """The files `make keys` needs, with the project's venv linked in (nothing is installed)."""
    return copy_checkout(tmp_path / "repo")


def make(repo: Path, *targets: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "MAKEFLAGS", "MFLAGS", "MAKELEVEL"}}
    env["PASSPHRASE"] = ""  # no passphrase, and no prompt
    # -o: never (re)install into the shared venv, whatever the file times say.
    return subprocess.run(
        ["make", "--no-print-directory", "-C", str(repo), "-o", STAMP, *targets],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.slow
def test_make_keys_creates_registers_and_never_overwrites(repo_copy):
    keys = repo_copy / "keys"
    first = make(repo_copy, "keys", "NAME=zed")
    assert first.returncode == 0, first.stdout + first.stderr
    assert "Traceback" not in first.stderr

    private = keys / "private" / "zed.pem"
    public = keys / "clients" / "zed.pub"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert b"PRIVATE KEY" in private.read_bytes()
    assert b"ENCRYPTED" not in private.read_bytes()
    assert b"PUBLIC KEY" in public.read_bytes()
    assert not (keys / "broker.pem").exists()  # only the broker makes its own keys, at its first start
    assert not (keys / "broker.pub").exists()
    assert "fingerprint SHA256:" in first.stdout
    assert "wrote keys/private/zed.pem (mode 0600" in first.stdout
    assert "broker key" not in first.stdout

    before = (private.read_bytes(), public.read_bytes())
    fingerprint = first.stdout.split("fingerprint ")[1].split()[0]
    second = make(repo_copy, "keys", "NAME=zed")
    assert second.returncode == 0, second.stdout + second.stderr
    assert "exists; already there: keys/clients/zed.pub" in second.stdout
    assert f"fingerprint {fingerprint}" in second.stdout
    assert "Traceback" not in second.stderr
    assert (private.read_bytes(), public.read_bytes()) == before


@pytest.mark.slow
def test_make_keys_registers_an_existing_key_again(repo_copy):
    """A lost .pub, or one from before the Curve25519 key or its binding, or one whose binding is damaged, is
    written again from the private key, bound."""
    keys = repo_copy / "keys"
    assert make(repo_copy, "keys", "NAME=zed").returncode == 0
    public = keys / "clients" / "zed.pub"
    current = public.read_bytes()
    zed = crypto.load_private_key(keys / "private" / "zed.pem")
    cut = current.index(b"BINDING-----\n") + len(b"BINDING-----\n")  # the binding's first base64 character
    damaged_binding = current[:cut] + (b"B" if current[cut : cut + 1] == b"A" else b"A") + current[cut + 1 :]
    for damaged in (
        None,  # lost
        current.split(b"-----BEGIN ZCHAT")[0],  # without its Curve block (before zchat/2)
        current.split(b"-----BEGIN ZCHAT CURVE25519 BINDING")[0],  # without its binding (before keys were bound)
        damaged_binding,
    ):
        if damaged is None:
            public.unlink()
        else:
            public.write_bytes(damaged)
            assert not public_file_is_current(public, zed)
        again = make(repo_copy, "keys", "NAME=zed")
        assert again.returncode == 0, again.stderr
        assert "wrote keys/clients/zed.pub: give it to the broker's operator" in again.stdout  # no broker here
        assert public_file_is_current(public, zed)
        held = crypto.load_public_key_file(public)
        assert (held.rsa, held.curve) == (zed.public_key(), crypto.curve_public(crypto.curve_secret(zed)))
    someone_else = crypto.export_public_file(crypto.generate_private_key(2048))
    public.write_bytes(someone_else)  # someone else's key under zed's name
    refused = make(repo_copy, "keys", "NAME=zed")
    assert refused.returncode != 0
    assert "holds another key; not overwriting it" in refused.stderr
    assert public.read_bytes() == someone_else


@pytest.mark.slow
def test_make_keys_on_a_client_machine_keeps_the_copied_broker_key(repo_copy, tmp_path):
    keys = repo_copy / "keys"
    keys.mkdir()
    copied = crypto.export_public_file(crypto.generate_private_key(2048))
    (keys / "broker.pub").write_bytes(copied)
    result = make(repo_copy, "keys", "NAME=zed")
    assert result.returncode == 0, result.stderr
    assert "created the broker key pair" not in result.stdout
    assert (keys / "broker.pub").read_bytes() == copied
    assert not (keys / "broker.pem").exists()


def test_make_keys_without_a_name_prints_usage(repo_copy):
    result = make(repo_copy, "keys")
    assert result.returncode != 0
    assert "usage: make keys NAME=alice" in result.stderr
    assert not (repo_copy / "keys").exists()


@pytest.mark.slow
def test_make_fingerprint_prints_the_registered_keys_fingerprint(repo_copy):
    created = make(repo_copy, "keys", "NAME=zed")
    printed = created.stdout.split("fingerprint ")[1].split()[0]
    shown = make(repo_copy, "fingerprint", "NAME=zed")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.strip() == f"zed {printed}"
    missing = make(repo_copy, "fingerprint", "NAME=nobody")
    assert missing.returncode != 0
    assert "nobody.pub: key file not found" in missing.stderr
    assert "Traceback" not in missing.stderr


@pytest.mark.slow
def test_make_keys_and_fingerprint_use_the_keys_dir_of_config(repo_copy):
    other = repo_copy / "other"
    other.mkdir()
    (other / "config.json").write_text('{"server_ip": "127.0.0.1", "server_port": 5999, "keys_dir": "otherkeys"}')
    created = make(repo_copy, "keys", "NAME=zed", "CONFIG=other/config.json")
    assert created.returncode == 0, created.stderr
    assert (other / "otherkeys" / "private" / "zed.pem").is_file()
    assert not (repo_copy / "keys" / "private" / "zed.pem").exists()
    printed = created.stdout.split("fingerprint ")[1].split()[0]
    shown = make(repo_copy, "fingerprint", "NAME=zed", "CONFIG=other/config.json")
    assert shown.stdout.strip() == f"zed {printed}", shown.stderr
    assert make(repo_copy, "fingerprint", "NAME=zed").returncode != 0  # not in the repository's keys/


def test_if_missing_creates_a_key_once_and_then_says_nothing(repo_copy):
    """What `make bot` runs before starting a bot: the bot's key, made only if it has none."""
    command = [".venv/bin/python", "-m", "zchat.keystore", "--keys-dir", "botkeys", "--if-missing", "--", "echo"]
    env = {**os.environ, "PASSPHRASE": ""}
    env.pop("PYTHONPATH", None)
    first = subprocess.run(command, cwd=repo_copy, env=env, capture_output=True, text=True, timeout=60)
    assert first.returncode == 0, first.stderr
    assert "fingerprint SHA256:" in first.stdout
    key = repo_copy / "botkeys" / "private" / "echo.pem"
    before = key.read_bytes()
    again = subprocess.run(command, cwd=repo_copy, env=env, capture_output=True, text=True, timeout=60)
    assert (again.returncode, again.stdout, again.stderr) == (0, "", "")
    assert key.read_bytes() == before


@pytest.mark.slow
def test_if_missing_binds_a_pub_written_before_keys_were_bound(repo_copy):
    """A bot whose .pub has no binding (an installation from before it) gets it bound at its next `make bot`."""
    command = [".venv/bin/python", "-m", "zchat.keystore", "--keys-dir", "botkeys", "--if-missing", "--", "echo"]
    env = {**os.environ, "PASSPHRASE": ""}
    env.pop("PYTHONPATH", None)
    assert subprocess.run(command, cwd=repo_copy, env=env, capture_output=True, timeout=60).returncode == 0
    layout = KeyLayout(repo_copy / "botkeys")
    public, key = layout.client_public("echo"), crypto.load_private_key(layout.client_private("echo"))
    public.write_bytes(public.read_bytes().split(b"-----BEGIN ZCHAT CURVE25519 BINDING")[0])
    assert not public_file_is_current(public, key)
    rebound = subprocess.run(command, cwd=repo_copy, env=env, capture_output=True, text=True, timeout=60)
    assert rebound.returncode == 0, rebound.stderr
    assert "now bound to its RSA key" in rebound.stdout
    assert f"fingerprint {crypto.fingerprint(key)}" in rebound.stdout
    assert public_file_is_current(public, key)
    again = subprocess.run(command, cwd=repo_copy, env=env, capture_output=True, text=True, timeout=60)
    assert (again.returncode, again.stdout, again.stderr) == (0, "", "")


@pytest.mark.parametrize(
    ("existing", "answers", "key"),
    [
        (False, [], "\x03"),
        (False, ["secret"], "\x04"),
        (True, [], "\x03"),
        (True, [], "\x04"),
    ],
    ids=["new-key-ctrl-c", "new-key-ctrl-d-at-repeat", "existing-key-ctrl-c", "existing-key-ctrl-d"],
)
def test_giving_up_at_a_passphrase_prompt_is_one_line(repo_copy, keyring, existing, answers, key):
    """Ctrl-C or Ctrl-D at any of `make keys`' passphrase prompts (in a terminal): one line, no traceback."""
    layout = KeyLayout(repo_copy / "keys")
    layout.clients_dir.mkdir(parents=True)
    for path in (layout.broker_private, layout.broker_public):  # made already: no 3072-bit key to wait for
        shutil.copyfile(keyring.layout.root / path.name, path)
    if existing:  # a protected key whose .pub was lost: make keys asks for its passphrase to register it again
        write_private_key(layout.client_private("zed"), keyring.keys["mallory"], passphrase="right")
    env = {
        k: v for k, v in os.environ.items() if k not in {"PASSPHRASE", "PYTHONPATH", "MAKEFLAGS", "MFLAGS", "MAKELEVEL"}
    }
    child = pexpect.spawn(
        "make",
        ["--no-print-directory", "-C", str(repo_copy), "-o", STAMP, "keys", "NAME=zed"],
        env=env,
        encoding="utf-8",
        timeout=60,
    )
    try:
        for answer in answers:
            child.expect_exact("Passphrase for the new key")
            child.expect_exact(": ")
            child.sendline(answer)
        child.expect("(Repeat the passphrase|Passphrase for [^:]*): ")
        child.send(key)
        child.expect(pexpect.EOF)
        child.close()
    finally:
        child.terminate(force=True)
    output = child.before
    assert "Traceback" not in output
    assert "KeyboardInterrupt" not in output
    ours = [line for line in output.replace("^C", "").splitlines() if line.strip() and not line.startswith("make: ")]
    assert len(ours) == 1, output
    assert ours[0].startswith("error: cancelled ("), output
    assert "no key written for zed" in ours[0]
    assert not layout.client_public("zed").exists()
    assert layout.client_private("zed").exists() == existing
