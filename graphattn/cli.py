"""The ``graphattn`` command.

``graphattn atlas`` (the default) builds every catalog rule, prints a table of its structure and
theory (edges, keys per query, hops to cover, star containment, spectral epsilon) and, with
matplotlib installed, writes a PNG atlas of the adjacency patterns. ``graphattn show RULE``
prints one rule's ASCII grid and summary; ``graphattn study`` runs the real-attention study;
``graphattn bench SUITE`` runs a benchmark suite.
"""

from __future__ import annotations

import argparse
import inspect
import sys
from pathlib import Path

from graphattn._report import Progress

__all__ = ["main", "build_parser", "atlas_rows"]


class CLIError(Exception):
    """A user error: printed as one line, exit status 2, no traceback."""


def _rules():
    from graphattn import rules

    return {name: getattr(rules, name) for name in rules.RULES}


def _parse_value(text: str):
    """CLI parameter values: ints, floats, bools, comma lists of ints."""
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if "," in text:
        return [int(t) for t in text.split(",") if t]
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    raise CLIError(f"cannot read parameter value {text!r}: expected an int, a float, true/false or a comma list")


def _build(name: str, n: int, params: dict):
    import torch

    rules = _rules()
    if name not in rules:
        raise CLIError(f"unknown rule {name!r}; valid rules: {', '.join(sorted(rules))}")
    fn = rules[name]
    sig = inspect.signature(fn)
    valid = [p for p in sig.parameters if p not in ("n", "x", "queries")]
    for key in params:
        if key not in valid:
            raise CLIError(f"rule {name} has no parameter {key!r}; valid parameters: {', '.join(valid)}")
    try:
        if name in ("lsh", "kmeans"):  # content-based: random unit vectors stand in for queries
            x = torch.randn(n, 32, generator=torch.Generator().manual_seed(0))
            return fn(x, **params)
        return fn(n, **params)
    except (TypeError, ValueError) as err:
        raise CLIError(f"{name}: {err}") from None


def _cmd_show(args) -> int:
    params = {}
    extra = list(args.params)
    if len(extra) % 2:
        raise CLIError("expected parameters as --name value pairs, got an odd count")
    for flag, value in zip(extra[::2], extra[1::2]):
        if not flag.startswith("--"):
            raise CLIError(f"expected a --name before {flag!r}")
        params[flag[2:].replace("-", "_")] = _parse_value(value)
    g = _build(args.rule, args.n, params)
    from graphattn.analysis import summary

    print(g.to_string(max_nodes=args.max_nodes))
    print(repr(g))
    for key, value in summary(g).items():
        print(f"  {key}: {value}")
    return 0


def atlas_rows(n: int, *, progress: bool | None = None):
    """Rows of the atlas table at ``n`` tokens: one per catalog rule (see graphattn.catalog)."""
    import math

    from graphattn.analysis import contains_star, hops_to_cover, spectral
    from graphattn.catalog import default_rules

    builders = default_rules(n)
    bar = Progress(len(builders), "atlas", enabled=progress)
    rows, graphs = [], {}
    for name, build in builders.items():
        g = build()
        graphs[name] = g
        deg = g.keys_per_query()[: g.num_tokens].double()
        hops = hops_to_cover(g)
        eps = spectral(g)["epsilon"]
        rows.append([name, g.num_nodes, g.num_edges, f"{deg.mean():.1f}", int(deg.max()),
                     "inf" if math.isinf(hops) else int(hops), "yes" if contains_star(g) else "no",
                     f"{eps:.3f}"])
        bar.step(name)
    return rows, graphs


def _cmd_atlas(args) -> int:
    from graphattn.bench._timing import format_table

    if args.n < 16:
        raise CLIError(f"expected --n >= 16, got {args.n}")
    rows, graphs = atlas_rows(args.n)
    print(f"graphattn atlas: every catalog rule at n = {args.n} tokens")
    print(format_table(["rule", "nodes", "edges", "keys/query", "max", "hops to cover", "star", "epsilon"], rows))
    if args.out:
        try:
            from graphattn.plots import save_atlas
        except ImportError as err:
            raise CLIError(f"the PNG atlas needs matplotlib (pip install 'graphattn[plots]'): {err}") from None
        path = save_atlas(graphs, Path(args.out))
        print(f"wrote {path}")
    return 0


def _cmd_study(args) -> int:
    from graphattn.study import format_study, run_study

    try:
        result = run_study(num_tokens=args.tokens, progress=None)
    except ImportError as err:
        raise CLIError(f"the study needs the 'study' extra (pip install 'graphattn[study]'): {err}") from None
    print(format_study(result))
    return 0


def _cmd_bench(args) -> int:
    from graphattn.bench.__main__ import main as bench_main

    return bench_main(args.bench_args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="graphattn", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command")
    a = sub.add_parser("atlas", help="every catalog rule: table (and PNG atlas with --out)")
    a.add_argument("--n", type=int, default=512, help="tokens (default 512)")
    a.add_argument("--out", default=None, help="directory for atlas.png (needs matplotlib)")
    a.set_defaults(func=_cmd_atlas)
    s = sub.add_parser("show", help="ASCII grid and summary of one rule; extra --param value pairs")
    s.add_argument("rule")
    s.add_argument("--n", type=int, default=32)
    s.add_argument("--max-nodes", type=int, default=64)
    s.set_defaults(func=_cmd_show, params=[])
    st = sub.add_parser("study", help="is attention sparse? a real pretrained model's attention vs every pattern")
    st.add_argument("--tokens", type=int, default=256)
    st.set_defaults(func=_cmd_study)
    b = sub.add_parser("bench", help="benchmark suites (python -m graphattn.bench --help)", add_help=False)
    b.add_argument("bench_args", nargs=argparse.REMAINDER)
    b.set_defaults(func=_cmd_bench)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0].startswith("--n") or argv[0] == "--out":
        argv = ["atlas", *argv]  # the main job on a built-in default
    args, unknown = parser.parse_known_args(argv)
    if args.command == "show":
        args.params = unknown  # the rule's own parameters, checked against its signature
    elif unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        return args.func(args)
    except CLIError as err:
        print(f"graphattn: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
