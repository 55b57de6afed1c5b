"""`python -m tfmetric ...`: the command line of tfmetric/cli.py."""

import sys

from tfmetric.cli import main

if __name__ == "__main__":
    sys.exit(main())
