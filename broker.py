"""The broker, as `make broker` runs it from the repository: `python broker.py [--config FILE]`.

It starts the broker's supervisor (`zchat.broker.supervisor`), which runs the broker (`zchat.broker.main`) in
a child process and starts it again if it crashes; `--no-supervisor` runs the broker in this process. Installed,
the same is the `zchat-broker` command. Run from here, the broker makes its own key pair in this repository's
keys/ at its first start.
"""

import sys
from pathlib import Path

from zchat.broker.supervisor import launch

if __name__ == "__main__":
    sys.exit(launch(own_keys_dir=Path(__file__).resolve().parent / "keys"))
