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
    a = sub.add_parser("attention", help="graph attention vs dense SDPA, Longformer, BigBird, gather/scatter, CSR, FlexAttention")
    a.add_argument("--n", type=int, nargs="+", default=[4096, 16384, 65536])
    a.add_argument("--patterns", nargs="+", default=["band", "bigbird", "random"])
    a.add_argument("--methods", nargs="+", default=None, help="subset of the methods (default all)")
    a.add_argument("--heads", type=int, default=4)
    a.add_argument("--head-dim", type=int, default=64)
    a.add_argument("--repeats", type=int, default=3)
    a.add_argument("--timeout", type=int, default=600, help="seconds per cell")
    args = parser.parse_args(argv)
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    if args.suite == "attention":
        from graphattn.bench.attention import METHODS, run

        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; fp32, "
              f"{args.heads} heads x {args.head_dim}; medians of {args.repeats}")
        print(run(ns=args.n, patterns=args.patterns, methods=args.methods or METHODS, H=args.heads,
                  D=args.head_dim, repeats=args.repeats, timeout=args.timeout))
    if args.suite == "graphs":
        from graphattn.bench.graphs import run

        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
        print(run(scale=args.scale, repeats=args.repeats, only=args.only))
    return 0


if __name__ == "__main__":
    sys.exit(main())
