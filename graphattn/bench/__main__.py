"""``python -m graphattn.bench SUITE``: run a benchmark suite and print a markdown table."""

from __future__ import annotations

import argparse
import sys

import torch


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m graphattn.bench", description=__doc__)
    sub = parser.add_subparsers(dest="suite", required=True)
    p = sub.add_parser("graphs", help="edge-construction speed of every rule at scale")
    p.add_argument("--scale", type=float, default=1.0, help="multiply every n by this (default 1)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--only", default=None, help="run the rules whose name contains this text")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.suite == "graphs":
        from graphattn.bench.graphs import run

        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
        print(run(scale=args.scale, repeats=args.repeats, only=args.only))
    return 0


if __name__ == "__main__":
    sys.exit(main())
