"""``python -m graphattn`` is the ``graphattn`` command (see :mod:`graphattn.cli`)."""

import sys

from graphattn.cli import main

if __name__ == "__main__":
    sys.exit(main())
