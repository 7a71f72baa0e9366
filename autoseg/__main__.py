"""``python -m autoseg`` and ``torchrun -m autoseg``: the same command line as ``autoseg``."""

import sys

from autoseg.cli import main

if __name__ == "__main__":
    sys.exit(main())
