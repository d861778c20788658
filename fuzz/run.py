"""`python -m fuzz.run TARGET [libFuzzer options]`: run one fuzz target under atheris.

`tcp` writes to a broker in another process, where atheris's coverage does not reach: that target mutates
blindly (no new units are expected) and is there to find inputs that stop the broker.
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports():
    import zchat.crypto
    import zchat.protocol  # noqa: F401 - instrumented for coverage
    from fuzz.targets import TARGETS


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in TARGETS:
        sys.exit(f"usage: python -m fuzz.run {{{','.join(TARGETS)}}} [libFuzzer options]")
    target = TARGETS[sys.argv.pop(1)]
    atheris.Setup(sys.argv, target)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
