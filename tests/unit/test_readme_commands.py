"""README as a newcomer follows it literally: the commands it shows work on a fresh machine, its facts are true."""

from __future__ import annotations

import re

from tests.conftest import ROOT

README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_every_python_command_in_the_readme_uses_the_venv():
    # A bare `python` has none of the dependencies: they are installed into .venv by the make targets.
    bare = [
        match.group(0)
        for match in re.finditer(r"(?<![\w/.-])python3?\s+(-m\s+[\w.]+|[\w/.-]+\.py)", README)
        if not README[: match.start()].endswith(".venv/bin/")
        and not re.fullmatch(r"-m\s+venv", match.group(1))  # making a venv is what a bare python is for
    ]
    assert bare == [], f"README shows python commands that fail on a fresh machine: {bare}"
    assert ".venv/bin/python chat_client.py --host" in README


def test_the_readme_names_every_pinned_dependency():
    pinned = [
        line.split("==")[0].strip()
        for line in (ROOT / "requirements.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    requirements = README[README.index("Requirements:") :].split("\n\n")[0]
    missing = [name for name in pinned if name not in requirements]
    assert pinned
    assert missing == [], f"requirements.txt pins {missing} but README's Requirements do not name them"
