"""Decoding benchmark: ``python -m graphattn.bench decode``.

Per-token time of incremental decoding (:meth:`graphattn.models.SparseDecoder.decode_step`) at
a context of ``t`` tokens, for a band-causal decoder (radius 128: a step attends at most 129
keys, so its time should not grow with ``t``) against a full causal decoder (a step attends
all ``t + 1`` keys). Each cell builds a cache holding ``t`` tokens and times decoding steps of
a batch of ``batch`` sequences; the cache is filled with random keys and values (a step's cost
does not depend on them), so no ``t``-token prefill is run. The cells take turns, a few steps
each per round, and report their median step. Also counted: tiling plans
built inside the decoding loop (:func:`count_plan_builds`), and for one short ``generate``
call per graph the plans built in all (its prefill included).
"""

from __future__ import annotations

import contextlib
import gc
import statistics
import time

import torch

from graphattn.bench._timing import format_table

__all__ = ["run", "count_plan_builds", "decode_cell", "decode_cells", "generate_plan_builds", "GRAPHS"]

GRAPHS = ("band", "full")
BAND_RADIUS = 128


@contextlib.contextmanager
def count_plan_builds():
    """Count the tiling plans built while the block runs: every edge-list plan of the engine
    goes through ``graphattn.nn.plan._build_plan``, and a structured graph's (band, lifted
    blocks) through ``plan.structural_plan`` (counted when it returns a plan; when it declines,
    the edge-list build that follows is the one counted). Yields a one-element list holding
    the count."""
    from graphattn.nn import functional, plan

    count = [0]
    original, original_structural = plan._build_plan, plan.structural_plan

    def counting(*args, **kwargs):
        count[0] += 1
        return original(*args, **kwargs)

    def counting_structural(*args, **kwargs):
        built = original_structural(*args, **kwargs)
        count[0] += built is not None
        return built

    plan._build_plan, functional._build_plan, plan.structural_plan = counting, counting, counting_structural
    try:
        yield count
    finally:
        plan._build_plan, functional._build_plan, plan.structural_plan = original, original, original_structural


def _model(graph: str, E: int, H: int, layers: int, vocab: int, max_len: int):
    from graphattn import rules
    from graphattn.models import CausalRule, SparseDecoder

    causal = (CausalRule(rules.band, radius=BAND_RADIUS, causal=True) if graph == "band"
              else CausalRule(rules.full))
    return SparseDecoder(vocab, E, H, layers, causal, max_len=max_len).eval()


class _Cell:
    """A decoder and a cache holding ``t`` tokens of random keys and values (a step's cost does
    not depend on them), with room for ``room`` more steps."""

    def __init__(self, graph: str, t: int, room: int, *, batch: int, E: int, H: int, layers: int, vocab: int):
        self.model = _model(graph, E, H, layers, vocab, t + room + 1)
        gen = torch.Generator().manual_seed(0)
        self.cache = self.model._empty_cache(batch, t + room, torch.float32, "cpu")
        for keys, values in zip(self.cache.keys, self.cache.values):
            keys[:, :t].normal_(generator=gen)
            values[:, :t].normal_(generator=gen)
        self.cache.lengths.fill_(t)
        self.tokens = torch.randint(0, vocab, (batch,), generator=gen)

    def steps(self, count: int) -> tuple[list[float], int]:
        """Seconds of each of ``count`` steps, and the plans built meanwhile."""
        times = []
        with torch.no_grad(), count_plan_builds() as builds:
            for _ in range(count):
                t0 = time.perf_counter()
                self.model.decode_step(self.tokens, self.cache)
                times.append(time.perf_counter() - t0)
        return times, builds[0]


def decode_cells(cells: dict, *, steps: int, repeats: int) -> dict:
    """Per-step median seconds and plans built of every cell. The cells take turns, ``steps``
    steps each per round (the first round warms up), so a slow spell of a shared machine
    falls on all of them alike."""
    times = {key: [] for key in cells}
    builds = {key: 0 for key in cells}
    for r in range(repeats + 1):
        for key, cell in cells.items():
            gc.collect()
            t, b = cell.steps(steps)
            builds[key] += b
            if r:
                times[key] += t
    return {key: {"per_token_s": statistics.median(times[key]), "plan_builds": builds[key]} for key in cells}


def decode_cell(graph: str, t: int, *, batch: int = 1, steps: int = 16, E: int = 256, H: int = 4, layers: int = 2,
                vocab: int = 256, repeats: int = 3) -> dict:
    """Per-token seconds (median step) of decoding from a context of ``t`` tokens."""
    cell = _Cell(graph, t, steps * (repeats + 1), batch=batch, E=E, H=H, layers=layers, vocab=vocab)
    return decode_cells({0: cell}, steps=steps, repeats=repeats)[0]


def generate_plan_builds(graph: str, *, prompt: int = 300, new_tokens: int = 40, E: int = 64, H: int = 4,
                         layers: int = 2, vocab: int = 256) -> dict:
    """Plans built by one ``generate`` call (prompt prefill included) and by a second call."""
    model = _model(graph, E, H, layers, vocab, prompt + new_tokens)
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, vocab, (3, prompt), generator=gen)
    mask = torch.arange(prompt)[None] < torch.tensor([prompt, prompt // 2, prompt - 7])[:, None]
    counts = []
    for _ in range(2):
        with count_plan_builds() as count:
            model.generate(ids, mask, max_new_tokens=new_tokens)
        counts.append(count[0])
    return {"first": counts[0], "second": counts[1]}


def run(ts=(1024, 4096, 16384, 65536), graphs=GRAPHS, batch: int = 1, steps: int = 16, E: int = 256, H: int = 4,
        layers: int = 2, repeats: int = 5, log=print) -> str:
    rows, base = [], {}
    cells = {(graph, t): _Cell(graph, t, steps * (repeats + 1), batch=batch, E=E, H=H, layers=layers, vocab=256)
             for graph in graphs for t in ts}
    results = decode_cells(cells, steps=steps, repeats=repeats)
    for (graph, t), r in results.items():
        log(f"  {graph:5s} t={t:<6d} {r}")
        base.setdefault(graph, r["per_token_s"])
        rows.append([graph, f"{t:,}", f"{r['per_token_s'] * 1e3:.2f}", f"{batch / r['per_token_s']:.0f}",
                     f"{r['per_token_s'] / base[graph]:.2f}x", r["plan_builds"]])
    table = format_table(["decoder", "context t", "ms / step", "tokens / s", f"vs t={ts[0]:,}",
                          "plans built in the loop"], rows)
    plan_rows = []
    for graph in graphs:
        g = generate_plan_builds(graph, E=min(E, 64), H=H, layers=layers)
        plan_rows.append([graph, g["first"], g["second"]])
    plans = format_table(["decoder", "plans built, first generate", "second generate (same lengths)"], plan_rows)
    return (f"decode steps, batch {batch}, E={E}, {H} heads, {layers} layers, band radius {BAND_RADIUS}; median "
            f"step of {repeats} rounds x {steps} steps, cells in turn\n\n{table}"
            f"\n\ngenerate (3 prompts of 300/150/293 tokens, 40 new tokens, {layers} layers)\n\n{plans}")
