"""``python -m graphattn [--n N]`` (also the ``graphattn`` command): build every catalog rule
at ``n`` tokens and print a table of nodes, edges and keys per query."""

from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="graphattn", description=__doc__)
    parser.add_argument("--n", type=int, default=1024, help="number of tokens (default 1024, at least 16)")
    args = parser.parse_args(argv)
    if args.n < 16:
        parser.error(f"expected --n >= 16, got {args.n}")
    from graphattn.catalog import overview

    print(f"graphattn: every catalog rule at n = {args.n}")
    print(overview(args.n))
    return 0


if __name__ == "__main__":
    sys.exit(main())
