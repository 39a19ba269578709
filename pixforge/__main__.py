"""`python -m pixforge`: the same command as `pixforge` (for environments without the script on PATH)."""

import sys

from pixforge.cli import main

if __name__ == "__main__":
    sys.exit(main())
