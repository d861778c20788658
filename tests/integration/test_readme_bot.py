"""The bot example in the README works as printed (only the address and key paths are swapped in)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.conftest import ROOT, run_env, wait_for
from zchat.events import ChatMessage, Joined
from zchat.keystore import create_client_key


def readme_bot_source(heading: str = "### Writing a bot\n") -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index(heading) :]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match, f"README has no example under {heading.strip()!r}"
    return match.group(1)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("heading", "lines"),
    [("### Writing a bot\n", 10), ("### Writing a bot with asyncio\n", 17)],
    ids=["sync", "asyncio"],
)
def test_readme_bot_example_runs(broker, connect, tmp_path, heading, lines):
    source = readme_bot_source(heading)
    assert len(source.strip().splitlines()) <= lines
    create_client_key(broker.keys, "shouty", bits=2048)
    source = (
        source.replace("5000", str(broker.port))
        .replace('"keys/private/shouty.pem"', repr(str(broker.keys.client_private("shouty"))))
        .replace('"keys/broker.pub"', repr(str(broker.keys.broker_public)))
    )
    script = tmp_path / "shouty.py"
    script.write_text(source)
    alice = connect(broker, "alice")
    carol = connect(broker, "carol")
    # Before the bot logs in: the room's history, which it must not answer, and a private question kept for it.
    alice.send("said before the bot came")
    alice.send("are you up?", to="shouty")
    assert alice.flush(5)
    proc = subprocess.Popen([sys.executable, str(script)], cwd=tmp_path, env=run_env(), stderr=subprocess.PIPE)
    try:
        wait_for(alice, lambda e: isinstance(e, Joined) and e.user.name == "shouty", timeout=20)
        # Its first words: the answer to the question kept for it, privately (nothing about the history).
        reply = wait_for(alice, lambda e: isinstance(e, ChatMessage) and e.sender == "shouty")
        assert (reply.text, reply.private) == ("alice said ARE YOU UP?", True)
        alice.send("quiet please")
        reply = wait_for(alice, lambda e: isinstance(e, ChatMessage) and e.sender == "shouty")
        assert (reply.text, reply.private) == ("alice said QUIET PLEASE", False)
        # The room heard only that: neither the private answer nor an answer to its history.
        heard = wait_for(carol, lambda e: isinstance(e, ChatMessage) and e.sender == "shouty")
        assert (heard.text, heard.private) == ("alice said QUIET PLEASE", False)
    finally:
        proc.terminate()
        proc.wait(10)
        proc.stderr.close()
