"""The terminal client, as `make client` runs it from the repository: `python chat_client.py [--config FILE]`.

The client itself is `zchat.client.terminal` (installed, the `zchat` command).
"""

import sys

from zchat.client.terminal.app import main

if __name__ == "__main__":
    sys.exit(main())
