"""``python -m graphattn.bench SUITE``: run a benchmark suite and print a markdown table.

Tables go to stdout, progress lines to stderr; a mistake in the arguments is one line,
``graphattn: error: ...``, and exit status 2.
"""

from __future__ import annotations

import argparse
import sys

import torch

from graphattn._args import ArgumentParser, UsageError, int_at_least, report_usage_error


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text}")
    return value


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def build_parser(prog: str = "python -m graphattn.bench") -> ArgumentParser:
    from graphattn.bench.attention import METHODS, PATTERNS
    from graphattn.bench.distributed import PATTERNS as HALO_PATTERNS
    from graphattn.bench.longdoc import METHODS as LONGDOC_METHODS

    count = int_at_least(1)
    parser = ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="suite", required=True, metavar="SUITE")
    p = sub.add_parser("graphs", help="edge-construction speed of every rule at scale")
    p.add_argument("--scale", type=_positive_float, default=1.0, help="multiply every n by this (default 1)")
    p.add_argument("--repeats", type=count, default=3)
    p.add_argument("--only", default=None, help="run the rules whose name contains this text")
    p.add_argument("--threads", type=count, default=None, help="torch threads (default: torch's)")
    a = sub.add_parser("attention", help="graph attention vs dense SDPA, Longformer, BigBird, gather/scatter, CSR, FlexAttention")
    a.add_argument("--n", type=count, nargs="+", default=[4096, 16384, 65536])
    a.add_argument("--patterns", nargs="+", default=list(PATTERNS), choices=PATTERNS)
    a.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS,
                   help="subset of the methods (default all)")
    a.add_argument("--heads", type=count, default=4)
    a.add_argument("--head-dim", type=count, default=64)
    a.add_argument("--repeats", type=count, default=3)
    a.add_argument("--timeout", type=count, default=600, help="seconds per cell")
    a.add_argument("--floor", action="store_true",
                   help="measure the fp32 matmul rate in the same run and report each graphattn cell's time / FLOP floor")
    a.add_argument("--large", action="store_true", help="add n = 2^20 for graphattn (and its time / 16 x the 65,536 time)")
    d = sub.add_parser("distributed", help="sequence-parallel traffic per pattern and world size, and a measured gloo run")
    d.add_argument("--n", type=count, nargs="+", default=[2**20])
    d.add_argument("--world", type=count, nargs="+", default=[2, 8, 64, 1024])
    d.add_argument("--patterns", nargs="+", default=list(HALO_PATTERNS), choices=list(HALO_PATTERNS),
                   metavar="PATTERN",
                   help=f"subset of the patterns (default all: {', '.join(map(repr, HALO_PATTERNS))})")
    d.add_argument("--heads", type=count, default=4)
    d.add_argument("--head-dim", type=count, default=64)
    d.add_argument("--measure", type=int_at_least(2), nargs="*", default=[2, 4],
                   help="gloo world sizes to run (none: skip)")
    d.add_argument("--measure-n", type=count, default=65536)
    d.add_argument("--repeats", type=count, default=3)
    m = sub.add_parser("models", help="reversible vs plain encoder memory, chunked FFN, LSH and routing vs dense "
                                      "and vs lucidrains' routing-transformer")
    m.add_argument("--suites", nargs="+", default=["encoder", "ffn", "attention", "routing"],
                   choices=["encoder", "ffn", "attention", "routing"])
    m.add_argument("--n", type=count, nargs="+", default=[4096, 16384, 65536], help="attention lengths")
    m.add_argument("--encoder-n", type=count, default=4096)
    m.add_argument("--ffn-n", type=count, default=65536)
    m.add_argument("--depth", type=count, default=24)
    m.add_argument("--embed-dim", type=count, default=256)
    m.add_argument("--heads", type=count, default=4)
    m.add_argument("--repeats", type=count, default=3)
    m.add_argument("--timeout", type=count, default=600, help="seconds per cell")
    ex = sub.add_parser("exactness", help="forward and gradient errors against float64 per engine path as scores grow")
    ex.add_argument("--n", type=count, default=256)
    dc = sub.add_parser("decode", help="per-token decoding time vs context length: band-causal vs full causal decoder")
    dc.add_argument("--t", type=count, nargs="+", default=[1024, 4096, 16384, 65536], help="context lengths")
    dc.add_argument("--graphs", nargs="+", default=["band", "full"], choices=["band", "full"])
    dc.add_argument("--batch", type=count, default=1)
    dc.add_argument("--steps", type=count, default=16, help="decoding steps timed per cell")
    dc.add_argument("--embed-dim", type=count, default=256)
    dc.add_argument("--heads", type=count, default=4)
    dc.add_argument("--layers", type=count, default=2)
    dc.add_argument("--repeats", type=count, default=5)
    dc.add_argument("--threads", type=count, default=None, help="torch threads (default: torch's)")
    ss = sub.add_parser("seq2seq", help="long-input seq2seq on the pydoc topics: BigBird encoder at full length vs "
                                         "full attention truncated to 512 tokens")
    ss.add_argument("--models", nargs="+", default=["bigbird", "truncated"], choices=["bigbird", "truncated"])
    ss.add_argument("--steps", type=count, default=100,
                    help="full-length training steps per model, after the short-document warm-up")
    ss.add_argument("--batch", type=count, default=4, help="documents per full-length training step")
    ss.add_argument("--lr", type=_positive_float, default=2e-3, help="Adam learning rate")
    ss.add_argument("--eval-samples", type=count, default=64, help="held-out documents evaluated")
    ss.add_argument("--embed-dim", type=count, default=64)
    ss.add_argument("--layers", type=count, default=2, help="encoder layers (and decoder layers)")
    ss.add_argument("--seed", type=int_at_least(0), default=0)
    ss.add_argument("--timeout", type=count, default=3600, help="seconds per model")
    gp = sub.add_parser("gpu", help="fused Triton kernels on a CUDA GPU: exactness, timings vs SDPA, FlexAttention, gather/scatter")
    gp.add_argument("--out", default="gpu_bench.md", help="markdown report path (default ./gpu_bench.md)")
    gp.add_argument("--budget", type=_positive_float, default=480.0, help="seconds for the whole run (default 480)")
    gp.add_argument("--max-n", type=count, default=1048576, help="largest sequence length timed")
    gp.add_argument("--exact-n", type=count, default=4096, help="nodes of the exactness graphs")
    gp.add_argument("--allow-cpu", action="store_true", help=argparse.SUPPRESS)  # dry runs in the tests
    gc = sub.add_parser("gpu-compile", help="compile the fused kernels for a GPU (no GPU needed): registers, spills, "
                                           "shared memory, tensor cores")
    gc.add_argument("--arch", type=int, choices=[80, 90], default=90, help="compute capability (default 90: H100/H200)")
    gc.add_argument("--n", type=count, default=4096, help="nodes of the stand-in graphs")
    gc.add_argument("--sweep", action="store_true",
                    help="compile the dense kernels under every (warps, stages) per class and print the choices")
    ld = sub.add_parser("longdoc", help="long-document retrieval with MiniLM made long (truncated, dense, Longformer, "
                                        "BigBird) and the sparsified model's speed against SDPA")
    ld.add_argument("--tables", nargs="+", default=["retrieval", "speed"], choices=["retrieval", "speed"])
    ld.add_argument("--methods", nargs="+", default=list(LONGDOC_METHODS), choices=list(LONGDOC_METHODS),
                    help="retrieval methods (default all)")
    ld.add_argument("--min-tokens", type=count, default=2000)
    ld.add_argument("--max-tokens", type=count, default=4000)
    ld.add_argument("--queries-per-doc", type=count, default=3)
    ld.add_argument("--remove", action="store_true", help="remove the query sentences from their documents")
    ld.add_argument("--max-docs", type=count, default=None, help="use the first documents only")
    ld.add_argument("--speed-n", type=count, nargs="+", default=[4096, 16384])
    ld.add_argument("--repeats", type=count, default=3)
    ld.add_argument("--timeout", type=count, default=3600, help="seconds per cell")
    ld.add_argument("--seed", type=int_at_least(0), default=0)
    ld.add_argument("--threads", type=count, default=None, help="torch threads in every cell (default: torch's)")
    return parser


def main(argv=None, *, prog: str = "python -m graphattn.bench") -> int:
    try:
        args = build_parser(prog).parse_args(argv)
    except UsageError as err:
        return report_usage_error(err)
    return _run(args)


def _run(args) -> int:
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    if args.suite == "attention":
        from graphattn.bench.attention import run

        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; fp32, "
              f"{args.heads} heads x {args.head_dim}; medians of {args.repeats}")
        print(run(ns=args.n, patterns=args.patterns, methods=args.methods, H=args.heads,
                  D=args.head_dim, repeats=args.repeats, timeout=args.timeout, log=_progress,
                  floor=args.floor, large=args.large))
    if args.suite == "exactness":
        from graphattn.bench.exactness import run

        print(f"torch {torch.__version__}; band radius 40, 4 heads x 32, fp32, loss out.square().sum(); "
              f"errors max|x - ref| over max|ref| (own) and over the largest summand M")
        print(run(n=args.n))
    if args.suite == "graphs":
        from graphattn.bench.graphs import run

        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
        print(run(scale=args.scale, repeats=args.repeats, only=args.only, log=_progress))
    if args.suite == "distributed":
        from graphattn.bench.distributed import measured_table, plan_table

        print(f"torch {torch.__version__}; every rank of every world size simulated; {args.heads} heads x "
              f"{args.head_dim} fp32, bytes received per rank per step (keys: halo exchange only; "
              f"plan: queries move where that is smaller)")
        print(plan_table(args.n, args.world, args.patterns, H=args.heads, D=args.head_dim))
        if args.measure:
            print(f"\nmeasured: n={args.measure_n:,}, {args.heads} heads x {args.head_dim}, fp32, "
                  f"forward+backward, medians of {args.repeats}")
            print(measured_table(args.measure, n=args.measure_n, H=args.heads, D=args.head_dim,
                                 repeats=args.repeats))
    if args.suite == "models":
        from graphattn.bench.models import run

        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; fp32; each cell in its own process")
        print(run(suites=args.suites, ns=args.n, encoder_n=args.encoder_n, ffn_n=args.ffn_n, depth=args.depth,
                  E=args.embed_dim, H=args.heads, repeats=args.repeats, timeout=args.timeout, log=_progress))
    if args.suite == "decode":
        from graphattn.bench.decode import run

        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; fp32; medians of {args.repeats}")
        print(run(ts=args.t, graphs=args.graphs, batch=args.batch, steps=args.steps, E=args.embed_dim, H=args.heads,
                  layers=args.layers, repeats=args.repeats, log=_progress))
    if args.suite == "seq2seq":
        from graphattn.bench.seq2seq import run

        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; fp32; each model in its own process")
        print(run(models=args.models, steps=args.steps, batch=args.batch, lr=args.lr, eval_samples=args.eval_samples,
                  seed=args.seed, embed_dim=args.embed_dim, layers=args.layers, timeout=args.timeout, log=_progress))
    if args.suite == "longdoc":
        from graphattn.bench.longdoc import run

        print(run(tables=args.tables, methods=args.methods, min_tokens=args.min_tokens,
                  max_tokens=args.max_tokens, queries_per_document=args.queries_per_doc, remove=args.remove,
                  max_documents=args.max_docs, speed_n=args.speed_n, repeats=args.repeats, timeout=args.timeout,
                  seed=args.seed, threads=args.threads, log=_progress))
    if args.suite == "gpu":
        from graphattn.bench.gpu import main as gpu_main

        return gpu_main(args)
    if args.suite == "gpu-compile":
        from graphattn.bench.gpu_compile import main as compile_main

        return compile_main(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
