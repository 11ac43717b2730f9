"""The ``graphattn`` command.

``graphattn atlas`` (the default) builds every rule in a few variants at ``--n`` tokens and
prints a table of their structure and theory (edges, keys per query, hops to cover, star
containment, spectral epsilon); with ``--out DIR`` and matplotlib installed it also writes
``DIR/atlas.png``, a picture of every pattern at a size where its structure shows.
``graphattn show RULE`` prints one rule's ASCII grid and summary (``graphattn show RULE --help``
lists the rule's parameters); ``graphattn study`` runs the real-attention study;
``graphattn bench SUITE`` runs a benchmark suite.

A user mistake is one line on stderr, ``graphattn: error: ...``, and exit status 2. Tables go to
stdout, progress to stderr.
"""

from __future__ import annotations

import argparse
import inspect
import os
import sys
from pathlib import Path

from graphattn import __version__
from graphattn._args import ArgumentParser, UsageError, int_at_least, int_list, report_usage_error
from graphattn._memory import MemoryBudgetError, check_memory, format_bytes
from graphattn._report import Progress

__all__ = ["main", "build_parser", "atlas_rows", "atlas_memory_estimate", "ATLAS_TITLE"]

ATLAS_TITLE = "graphattn atlas: sparse-attention patterns as graphs"

#: Peak bytes per edge of building one atlas graph and running its analyses, measured with
#: /proc/self/status VmHWM on graphs of 0.6 to 17 million edges (full, band, random, BigBird,
#: BP-Transformer, Star, LSH, k-means): building takes 19 to 127 bytes an edge, hops_to_cover 2
#: to 94, spectral 66 to 100 (260 on the Star graph, which has few edges per node), on top of the
#: graph's own 17 (int64 edge list, int8 labels).
ATLAS_BYTES_PER_EDGE = 128
ATLAS_BYTES_PER_NODE = 2048  # per-node arrays of the analyses (orderings, BFS levels, eigenvectors)


class CLIError(Exception):
    """A user error: printed as one line, exit status 2, no traceback."""


# ------------------------------------------------------------------------------------- show
def _rules():
    from graphattn import rules

    return {name: getattr(rules, name) for name in rules.RULES}


def _bool(text: str) -> bool:
    low = text.lower()
    if low not in ("true", "false", "1", "0", "yes", "no"):
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return low in ("true", "1", "yes")


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an int, got {text!r}") from None


def _int_or_int_list(text: str):
    """``3`` -> 3, ``1,3`` -> [1, 3]: parameters annotated ``int | Sequence[int]``."""
    return int_list(text) if "," in text else _int(text)


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def _option_type(param: inspect.Parameter):
    """The argparse ``type`` of a rule parameter from its annotation (the rules' annotations are
    strings: ``"int"``, ``"Sequence[int] | None"``, ...) or, unannotated, from its default; None
    for parameters the command line cannot give (tensors, query ranges)."""
    ann = param.annotation
    if ann is inspect.Parameter.empty:
        default = param.default
        if isinstance(default, bool):
            return _bool
        if isinstance(default, (tuple, list)):
            return int_list
        if isinstance(default, float):
            return _float
        return _int  # None (seeds) or an int
    text = ann if isinstance(ann, str) else getattr(ann, "__name__", str(ann))
    kinds = {part.strip() for part in text.split("|")} - {"None"}
    if any("Tensor" in k or "range" in k for k in kinds):
        return None
    is_list = any(k.startswith(("Sequence", "list", "tuple")) for k in kinds)
    if is_list:
        return _int_or_int_list if "int" in kinds else int_list
    if "bool" in kinds:
        return _bool
    if "float" in kinds:
        return _float
    return _int


def _rule_parser(name: str, fn) -> tuple[ArgumentParser, list[str]]:
    """A parser for ``graphattn show NAME``: --n, --max-nodes and the rule's own keyword
    parameters (``--global-indices 0,5``, ``--causal``), typed from its signature."""
    doc = (inspect.getdoc(fn) or "").split("\n\n")[0]
    p = ArgumentParser(prog=f"graphattn show {name}", description=doc, allow_abbrev=False)
    content = name in ("lsh", "kmeans")
    p.add_argument("--n", type=int_at_least(1), default=32,
                   help="tokens (default 32)" + ("; the rule runs on n random vectors of width 32 (seed 0)"
                                                 if content else ""))
    p.add_argument("--max-nodes", type=int_at_least(1), default=64, help="largest grid drawn (default 64)")
    names = []
    for param in inspect.signature(fn).parameters.values():
        if param.kind is not inspect.Parameter.KEYWORD_ONLY:
            continue
        kind = _option_type(param)
        if kind is None:
            continue
        required = param.default is inspect.Parameter.empty
        flag = "--" + param.name.replace("_", "-")
        extra = {"nargs": "?", "const": True} if kind is _bool else {}
        help_text = "required" if required else f"default {param.default!r}"
        if kind in (int_list, _int_or_int_list):
            help_text += "; a comma list such as 0,5 (one element: 5)"
        # SUPPRESS: a parameter not given is not passed, so the rule's own default applies
        p.add_argument(flag, dest=param.name, type=kind, required=required, default=argparse.SUPPRESS,
                       help=help_text, **extra)
        names.append(param.name)
    return p, names


def _build(name: str, n: int, params: dict):
    import torch

    fn = _rules()[name]
    try:
        if name in ("lsh", "kmeans"):  # content-based: random vectors stand in for queries
            x = torch.randn(n, 32, generator=torch.Generator().manual_seed(0))
            return fn(x, **params)
        return fn(n, **params)
    except MemoryBudgetError as err:
        raise CLIError(f"{err}; try a smaller --n") from None
    except (TypeError, ValueError) as err:
        raise CLIError(f"{name}: {err}") from None


def _cmd_show(args) -> int:
    parser, names = _rule_parser(args.rule, _rules()[args.rule])
    opts, unknown = parser.parse_known_args(args.options)
    if unknown:
        valid = ", ".join("--" + k.replace("_", "-") for k in names)
        raise UsageError(f"rule {args.rule} has no parameter {unknown[0]!r}; its parameters: {valid} "
                         f"(and --n, --max-nodes)")
    params = {k: getattr(opts, k) for k in names if hasattr(opts, k)}
    g = _build(args.rule, opts.n, params)
    from graphattn.analysis import summary

    print(g.to_string(max_nodes=opts.max_nodes))
    print(repr(g))
    for key, value in summary(g).items():
        print(f"  {key}: {value}")
    return 0


# ------------------------------------------------------------------------------------ atlas
def atlas_memory_estimate(n: int) -> tuple[int, str]:
    """``(bytes, the variant that needs them)``: the peak of the atlas table at ``n`` tokens,
    the largest variant built and analysed (one at a time) from its edge estimate."""
    from graphattn.catalog import edge_estimates

    name, edges = max(edge_estimates(n).items(), key=lambda kv: kv[1])
    nodes = 3 * n  # tokens and extra nodes: at most 2n + 1 (Star-Transformer, BP-Transformer)
    return edges * ATLAS_BYTES_PER_EDGE + nodes * ATLAS_BYTES_PER_NODE, f"{name}: {edges:,} edges"


def atlas_rows(n: int, *, progress: bool | None = None) -> list[list]:
    """Rows of the atlas table at ``n`` tokens: one per variant of :func:`graphattn.catalog.default_rules`
    (each graph is dropped once analysed, so the peak is the largest one)."""
    import math

    from graphattn.analysis import contains_star, hops_to_cover, spectral
    from graphattn.catalog import default_rules

    builders = default_rules(n)
    bar = Progress(len(builders), "atlas", enabled=progress)
    rows = []
    for name, build in builders.items():
        g = build()
        deg = g.keys_per_query()[: g.num_tokens].double()
        hops = hops_to_cover(g)
        eps = spectral(g)["epsilon"]
        rows.append([name, g.num_nodes, g.num_edges, f"{deg.mean():.1f}", int(deg.max()),
                     "inf" if math.isinf(hops) else int(hops), "yes" if contains_star(g) else "no",
                     f"{eps:.3f}"])
        del g
        bar.step(name)
    return rows


def _require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise CLIError("the PNG atlas (--out) needs matplotlib: pip install 'graphattn[plots]'") from None


def _output_dir(text: str) -> Path:
    """``--out``: a directory that exists (created if need be) and can be written to."""
    path = Path(text)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CLIError(f"cannot use --out {text!r} as a directory: {err.strerror or err}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise CLIError(f"cannot write to --out {text!r}: permission denied")
    return path


def _cmd_atlas(args) -> int:
    from graphattn.bench._timing import format_table

    if args.out is not None:  # every check before the work
        _require_matplotlib()
    estimate, largest = atlas_memory_estimate(args.n)
    try:
        check_memory(f"graphattn atlas --n {args.n}: its largest variant ({largest}) and its analyses", estimate)
    except MemoryBudgetError as err:
        raise CLIError(f"{err}; try a smaller --n") from None
    out = None if args.out is None else _output_dir(args.out)
    try:
        rows = atlas_rows(args.n)
    except MemoryBudgetError as err:  # a rule's own check, should the estimate fall short
        raise CLIError(f"{err}; try a smaller --n") from None
    print(f"graphattn atlas: every rule at n = {args.n} tokens (peak memory estimate {format_bytes(estimate)})")
    print(format_table(["rule", "nodes", "edges", "keys/query", "max", "hops to cover", "star", "epsilon"], rows))
    if out is not None:
        from graphattn.catalog import ATLAS_CAPTION, atlas_panels
        from graphattn.plots import save_atlas

        graphs = {name: build() for name, build in atlas_panels().items()}
        try:
            path = save_atlas(graphs, out, title=ATLAS_TITLE, caption=ATLAS_CAPTION)
        except OSError as err:
            raise CLIError(f"cannot write the atlas into --out {args.out!r}: {err.strerror or err}") from None
        print(f"wrote {path} (every pattern at its own size, see the caption)")
    return 0


# ------------------------------------------------------------------------------- study, bench
def _cmd_study(args) -> int:
    from graphattn.study import format_study, run_study

    try:
        result = run_study(num_tokens=args.tokens, progress=None)
    except ImportError as err:
        raise CLIError(f"the study needs the 'study' extra (pip install 'graphattn[study]'): {err}") from None
    except ValueError as err:  # --tokens beyond the model's positions or the text
        raise CLIError(f"study: {err}") from None
    print(format_study(result))
    return 0


def _cmd_bench(argv: list[str]) -> int:
    from graphattn.bench.__main__ import main as bench_main

    return bench_main(argv, prog="graphattn bench")


def build_parser() -> ArgumentParser:
    from graphattn.rules import RULES

    parser = ArgumentParser(prog="graphattn", description=__doc__.split("\n\n")[0],
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"graphattn {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="{atlas,show,study,bench}")
    a = sub.add_parser("atlas", help="every rule: a table at --n tokens (and a PNG atlas with --out)")
    a.add_argument("--n", type=int_at_least(16), default=512, help="tokens of the table (default 512)")
    a.add_argument("--out", default=None, help="directory for atlas.png (needs matplotlib)")
    a.set_defaults(func=_cmd_atlas)
    s = sub.add_parser("show", help="ASCII grid and summary of one rule (graphattn show RULE --help)",
                       description="ASCII grid and summary of one rule; its parameters as --name value "
                                   "(graphattn show RULE --help lists them).")
    s.add_argument("rule", choices=RULES, metavar="RULE", help=f"one of {', '.join(RULES)}")
    s.add_argument("options", nargs=argparse.REMAINDER, help="--n N, --max-nodes M and the rule's parameters")
    s.set_defaults(func=_cmd_show)
    st = sub.add_parser("study", help="is attention sparse? a real pretrained model's attention vs every pattern")
    st.add_argument("--tokens", type=int_at_least(2), default=256, help="tokens of text (default 256, at most 512)")
    st.set_defaults(func=_cmd_study)
    sub.add_parser("bench", help="benchmark suites (graphattn bench --help)", add_help=False)
    return parser


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv[:1] == ["bench"]:  # the suites parse their own arguments, --help included
            return _cmd_bench(argv[1:])
        if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help", "--version")):
            argv = ["atlas", *argv]  # the main job
        args = build_parser().parse_args(argv)
        return args.func(args)
    except (UsageError, CLIError) as err:
        return report_usage_error(err)
    except BrokenPipeError:  # stdout closed early (graphattn show ... | head): not an error to report
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # the interpreter's final flush then goes nowhere
        return 1


if __name__ == "__main__":
    sys.exit(main())
