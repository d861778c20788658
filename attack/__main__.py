"""`python -m attack`: see `attack.run`."""

import sys

from attack.run import main

if __name__ == "__main__":
    sys.exit(main())
