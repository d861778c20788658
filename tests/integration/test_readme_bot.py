"""The bot example in the README works as printed (only the address and key paths are swapped in)."""

from __future__ import annotations

import re
import subprocess
import sys

from chat.events import ChatMessage, Joined
from chat.keystore import create_client_key
from tests.conftest import ROOT, run_env, wait_for


def readme_bot_source() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("### Writing a bot") :]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match, "README has no bot example"
    return match.group(1)


def test_readme_bot_example_runs(broker, connect, tmp_path):
    source = readme_bot_source()
    assert len(source.strip().splitlines()) <= 10
    create_client_key(broker.keys, "shouty", bits=2048)
    source = (
        source.replace("5000", str(broker.port))
        .replace('"keys/private/shouty.pem"', repr(str(broker.keys.client_private("shouty"))))
        .replace('"keys/broker.pub"', repr(str(broker.keys.broker_public)))
    )
    script = tmp_path / "shouty.py"
    script.write_text(source)
    alice = connect(broker, "alice")
    proc = subprocess.Popen([sys.executable, str(script)], cwd=ROOT, env=run_env(), stderr=subprocess.PIPE)
    try:
        wait_for(alice, lambda e: isinstance(e, Joined) and e.user.name == "shouty", timeout=20)
        alice.send("quiet please")
        reply = wait_for(alice, lambda e: isinstance(e, ChatMessage))
        assert (reply.sender, reply.text) == ("shouty", "alice said QUIET PLEASE")
    finally:
        proc.terminate()
        proc.wait(10)
        proc.stderr.close()
