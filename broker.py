"""The broker, as `make broker` runs it from the repository: `python broker.py [--config FILE]`.

The broker itself is `zchat.broker.main` (installed, the `zchat-broker` command). Run from
here, it makes its own key pair in this repository's keys/ at its first start.
"""

import sys
from pathlib import Path

from zchat.broker.main import main

if __name__ == "__main__":
    sys.exit(main(own_keys_dir=Path(__file__).resolve().parent / "keys"))
