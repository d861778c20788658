"""Bots through a real broker: the example bots as processes, the JSON client mode, and many bots at once."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from tests.conftest import ROOT, BrokerProcess, collect, run_env, wait_for
from tests.e2e.helpers import Proc
from zchat import crypto
from zchat.client.sync_client import ChatClient
from zchat.events import ChatMessage, Joined, Left, WhoList
from zchat.keystore import create_client_key, write_private_key


class BotProcess:
    """`python -m bots.<name>` against a test broker, logging to a file.

    It finds its keys through the broker's config file, or with `keys_dir` through --keys-dir alone, run in a
    directory with no config file (the address then from --host and --port).
    """

    def __init__(
        self, broker: BrokerProcess, module: str, *extra: str, name: str | None = None, keys_dir: bool = False
    ) -> None:
        self.log_path = broker.workdir / f"{module}.log"
        args = [sys.executable, "-m", f"bots.{module}", "--port", str(broker.port)]
        cwd = ROOT
        if keys_dir:
            args += ["--keys-dir", str(broker.keys.root), "--host", "127.0.0.1"]
            cwd = broker.workdir / f"{module}-home"
            cwd.mkdir()
        else:
            args += ["--config", str(broker.config_path)]
        args += extra
        if name:
            args += ["--name", name]
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                args, cwd=cwd, env=run_env(), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
        return self.proc.wait(15)


@pytest.fixture
def start_bot(broker: BrokerProcess) -> Iterator:
    bots: list[BotProcess] = []

    def factory(
        module: str, *extra: str, register: bool = True, name: str | None = None, keys_dir: bool = False
    ) -> BotProcess:
        if register:
            create_client_key(broker.keys, name or module, bits=2048)
        bot = BotProcess(broker, module, *extra, name=name, keys_dir=keys_dir)
        bots.append(bot)
        return bot

    yield factory
    for bot in bots:
        bot.stop()


def bot_online(client: ChatClient, name: str) -> None:
    wait_for(client, lambda e: isinstance(e, Joined) and e.user.name == name and e.user.bot, timeout=20)


def reply_from(client: ChatClient, name: str) -> str:
    return wait_for(client, lambda e: isinstance(e, ChatMessage) and e.sender == name).text


@pytest.mark.slow
def test_echo_bot_answers_others_and_shows_as_a_bot(broker, connect, start_bot):
    alice = connect(broker, "alice")
    start_bot("echo")
    bot_online(alice, "echo")
    alice.send("hello, bot ✓")
    assert reply_from(alice, "echo") == "echo: hello, bot ✓"
    alice.who()
    who = wait_for(alice, lambda e: isinstance(e, WhoList))
    assert {u.name: u.bot for u in who.users} == {"alice": False, "echo": True}


@pytest.mark.slow
def test_a_bot_warns_of_a_changed_key_and_goes_on_answering(broker, connect, start_bot):
    pins = broker.keys.client_private("echo").with_name("echo.known.json")
    pinned = "SHA256:" + "0" * 64
    pins.parent.mkdir(parents=True, exist_ok=True)
    pins.write_text(json.dumps({"alice": pinned}))
    bot = start_bot("echo")
    alice = connect(broker, "alice")
    bot_online(alice, "echo")
    alice.send("still there?")
    assert reply_from(alice, "echo") == "echo: still there?"
    warning = rf"WARNING .*alice.s key is not the one pinned in .*echo\.known\.json \(pinned {pinned}"
    assert re.search(warning, bot.log())
    assert json.loads(pins.read_text()) == {"alice": pinned}  # nobody checked the new key: the pin stays


@pytest.mark.slow
def test_bots_never_answer_bots(broker, connect, start_bot, keyring):
    """The echo bot answers people, never another bot: two bots would otherwise fill the room."""
    create_client_key(broker.keys, "robot", bits=2048)
    alice = connect(broker, "alice")
    robot = connect(broker, "robot", bot=True)
    echo = start_bot("echo")
    bot_online(alice, "echo")
    robot.send("beep")
    seen = wait_for(alice, lambda e: isinstance(e, ChatMessage) and e.sender == "robot")
    assert seen.bot  # the author logs in as a bot, as /who shows
    alice.send("hello")
    # The echo bot reads in order: had it answered the robot, that answer would come first.
    answers: list[ChatMessage] = []
    wait_for(
        robot,
        lambda e: isinstance(e, ChatMessage) and e.sender == "echo" and (answers.append(e) or e.text == "echo: hello"),
    )
    assert [(m.text, m.bot) for m in answers] == [("echo: hello", True)]
    assert echo.proc.poll() is None
    assert "not answering robot, a bot" in echo.log()


@pytest.mark.slow
def test_dice_bot_rolls_and_explains_bad_requests(broker, connect, start_bot):
    alice = connect(broker, "alice")
    bot = start_bot("dice", keys_dir=True)  # found with --keys-dir, no config file
    bot_online(alice, "dice")
    alice.send("!roll 2d6")
    match = re.fullmatch(r"alice rolled 2d6: (\d) \+ (\d) = (\d+)", reply_from(alice, "dice"))
    assert match, "unexpected dice answer"
    a, b, total = map(int, match.groups())
    assert 1 <= a <= 6
    assert 1 <= b <= 6
    assert a + b == total
    for odd in ("!roll", "!roll 0d6", "!roll 2d1", "!roll 99999d99999", "!roll banana", "!roll 2d6 extra", "!ROLL ½d6"):
        alice.send(odd)
        assert reply_from(alice, "dice").startswith("usage: !roll NdM")
    alice.send("!roll 1d20")
    assert re.fullmatch(r"alice rolled 1d20: (\d+)", reply_from(alice, "dice"))
    assert bot.proc.poll() is None


@pytest.mark.slow
def test_archive_bot_appends_json_lines(broker, connect, start_bot, tmp_path):
    archive = tmp_path / "room.jsonl"
    bob = connect(broker, "bob")
    start_bot("archive", "--file", str(archive))
    bot_online(bob, "archive")
    alice = connect(broker, "alice")
    texts = ["first", "second 😀", "third"]
    for text in texts:
        alice.send(text)
    deadline = time.monotonic() + 10
    records: list[dict] = []
    while len(records) < 3 and time.monotonic() < deadline:
        records = [json.loads(line) for line in archive.read_text().splitlines()] if archive.exists() else []
        time.sleep(0.05)
    assert [(r["sender"], r["text"]) for r in records] == [("alice", t) for t in texts]
    assert all(isinstance(r["ts"], float) and r["time"] for r in records)


@pytest.mark.slow
def test_unregistered_bot_is_refused_with_a_clear_error(broker, start_bot):
    write_private_key(broker.keys.client_private("echo"), crypto.generate_private_key(2048))  # a key, not registered
    bot = start_bot("echo", register=False)
    assert bot.proc.wait(20) == 1
    assert "login refused" in bot.log()
    assert "Traceback" not in bot.log()


def test_bot_with_the_wrong_key_is_refused(broker, start_bot, keyring):
    bot = start_bot("echo", "--key", str(keyring.private("mallory")), name="alice", register=False)
    assert bot.proc.wait(20) == 1
    assert "login refused" in bot.log()


@pytest.mark.slow
def test_bot_stops_cleanly_on_sigterm_and_others_see_it_leave(broker, connect, start_bot):
    alice = connect(broker, "alice")
    bot = start_bot("echo")
    bot_online(alice, "echo")
    assert bot.stop() == 0
    left = wait_for(alice, lambda e: isinstance(e, Left))
    assert (left.name, left.reason) == ("echo", "left")


@pytest.mark.slow
def test_bot_exits_with_status_3_when_the_broker_closes_its_session(broker, connect, start_bot):
    """Not 1: a supervisor that starts a failed bot again would only close the session that replaced it."""
    alice = connect(broker, "alice")
    bot = start_bot("echo")
    bot_online(alice, "echo")
    again = ChatClient.connect(
        "127.0.0.1", broker.port, "echo", broker.keys.client_private("echo"), broker.keys.broker_public, bot=True
    )
    try:
        assert bot.proc.wait(20) == 3, bot.log()
        assert "the broker ended the session: you logged in again elsewhere" in bot.log()
        assert "Traceback" not in bot.log()
    finally:
        again.close()


@pytest.mark.slow
def test_bot_exits_with_status_0_when_the_broker_shuts_down(broker, connect, start_bot):
    admin = connect(broker, "admin")
    bot = start_bot("echo")
    bot_online(admin, "echo")
    admin.request_shutdown()
    assert bot.proc.wait(20) == 0, bot.log()
    assert "the broker is shutting down" in bot.log()


@pytest.mark.slow
def test_json_mode_prints_one_object_per_event(broker, connect):
    bob = connect(broker, "bob")
    alice = Proc(
        [
            str(ROOT / "chat_client.py"),
            "--json",
            "--host=127.0.0.1",
            f"--port={broker.port}",
            "--user=alice",
            f"--key={broker.keys.client_private('alice')}",
            f"--broker-key={broker.keys.broker_public}",
        ],
        cwd=broker.workdir,  # its config.json, not the working tree's
        name="alice",
    )
    try:
        welcome = json.loads(alice.expect_line(r"^\{").string)
        assert welcome["type"] == "welcome"
        wait_for(bob, lambda e: isinstance(e, Joined))
        bob.send('quote " and ünïcode')
        chat = json.loads(alice.expect_line(r'"type": "chat"').string)
        assert {"type": "chat", "from": "bob", "text": 'quote " and ünïcode', "private": False}.items() <= chat.items()
        alice.send("from a pipeline")
        assert reply_for(bob) == "from a pipeline"
        alice.close_stdin()
        assert alice.wait() == 0
        assert "Traceback" not in alice.err.text()
    finally:
        alice.kill()


def reply_for(client: ChatClient) -> str:
    return wait_for(client, lambda e: isinstance(e, ChatMessage)).text


MESSAGES_EACH = 10  # 20 bots: 3,800 deliveries, each an RSA decryption in this one test process


@pytest.mark.slow
def test_twenty_bots_each_get_every_other_bots_messages_once_in_order(make_broker, connect, keyring):
    # Slow heartbeats: one test process polls twenty clients in turn.
    broker = make_broker(
        heartbeat_interval=1.0,
        heartbeat_timeout=60.0,
        send_queue_limit=5000,
        messages_per_second_per_user=1000,
        logins_per_second_per_user=1000,
    )
    names = [f"bot{i:02d}" for i in range(20)]
    for name in names:
        create_client_key(broker.keys, name, bits=2048)
    bots = {name: connect(broker, name, bot=True) for name in names}
    last = bots[names[-1]]
    for name in names:  # everyone is online before anyone speaks
        if name != names[-1]:
            wait_for(bots[name], lambda e: isinstance(e, Joined) and e.user.name == names[-1], timeout=30)
    for i in range(MESSAGES_EACH):
        for name, bot in bots.items():
            bot.send(f"{name} #{i}")
    expected = {
        name: [f"{other} #{i}" for other in names if other != name for i in range(MESSAGES_EACH)] for name in names
    }
    received: dict[str, dict[str, list[str]]] = {name: {} for name in names}
    deadline = time.monotonic() + 240
    pending = set(names)
    while pending and time.monotonic() < deadline:
        for name in list(pending):
            for event in collect(bots[name], 0.05):
                if isinstance(event, ChatMessage):
                    received[name].setdefault(event.sender, []).append(event.text)
            if sum(map(len, received[name].values())) >= len(expected[name]):
                pending.discard(name)
    assert last.online
    for name in names:
        for sender in names:
            if sender != name:
                assert received[name].get(sender) == [f"{sender} #{i}" for i in range(MESSAGES_EACH)], (name, sender)
        assert name not in received[name]


def test_make_bot_without_bot_prints_usage():
    # -o: never (re)install into the shared venv while other tests run.
    make = ["make", "-s", "-o", ".venv/.runtime-installed", "bot"]
    result = subprocess.run(make, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode != 0
    assert "usage: make bot BOT=echo" in result.stderr
    assert "dice" in result.stderr
    unknown = subprocess.run([*make, "BOT=nope"], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert unknown.returncode != 0
    assert "no bot named 'nope'" in unknown.stderr


@pytest.mark.slow
def test_bots_answer_private_messages_privately_and_ignore_history(broker, connect, start_bot):
    alice = connect(broker, "alice")
    carol = connect(broker, "carol")
    alice.send("said before the bot came")
    start_bot("echo")
    bot_online(alice, "echo")
    alice.send("just for you", to="echo")
    reply = wait_for(alice, lambda e: isinstance(e, ChatMessage) and e.sender == "echo")
    assert (reply.text, reply.private) == ("echo: just for you", True)
    assert not [e for e in collect(carol, 0.5) if isinstance(e, ChatMessage) and e.sender == "echo"]
