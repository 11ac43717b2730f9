"""Long documents: ``python -m graphattn.bench longdoc``.

Two tables:

* **retrieval**: does reading past token 512 bring evidence? Documents of ``min_tokens`` to
  ``max_tokens`` MiniLM tokens are cut from real English text shipped with Python (the pydoc
  topics, whole paragraphs); queries are sentences that start beyond token ``min_position`` of
  their document and occur nowhere else. The sentences stay in their document (or are
  removed, ``remove=True``). Every method embeds documents and queries (mean-pooled last hidden
  state) and ranks the documents by cosine: recall@1 and @5, time per document, peak memory. The
  methods: MiniLM truncated to 512 tokens (what users do today), MiniLM with
  :func:`graphattn.hf.extend_positions` to 4,096 tokens and dense SDPA attention over all
  tokens (the quadratic reference), and the same extended model sparsified with Longformer's
  published attention (window 512: band radius 256, plus the ``[CLS]`` token global) and with
  BigBird's (blocks of 64; 3 window, 3 random and 2 global blocks). The copied positions are not
  trained further.
* **speed**: the extended MiniLM sparsified with a band of radius 128 plus ``[CLS]`` global
  against the same model with SDPA, batch 1, forward and forward+backward, at 4,096 and 16,384
  tokens of the same text: time, the time of the model's attention calls run alone on the q, k,
  v captured from the model (and its share of the model's time), and peak memory.

The machine may be shared: the methods being compared take turns in one process (document by
document, repeat by repeat), so they see the same load. Peak memory comes from separate
processes, one per method, with glibc's mmap threshold fixed at 64 KiB (see
:data:`graphattn.bench.models.MMAP_ENV`) so that RSS tracks live tensors.
"""

from __future__ import annotations

import gc
import json
import re
import resource
import statistics
import sys
import time
from dataclasses import dataclass, field

import torch

from graphattn._validate import check_int
from graphattn.bench._timing import describe_cell, format_table, spawn_worker

__all__ = ["METHODS", "SPEED_MODELS", "Corpus", "build_corpus", "recall_at", "load_method", "embed", "run",
           "run_retrieval", "run_retrieval_memory", "run_speed_times", "run_speed_memory", "retrieval_table",
           "speed_table"]

#: Retrieval methods and what each reads.
METHODS = {
    "truncated": "MiniLM truncated to 512 tokens, full attention",
    "dense": "extended to 4,096, dense attention (SDPA)",
    "longformer": "extended to 4,096, Longformer band r=256 + [CLS] global",
    "bigbird": "extended to 4,096, BigBird blocks of 64 (3 window, 3 random, 2 global)",
}
#: Speed-table models: the sparsified model and its SDPA peer.
SPEED_MODELS = {"sdpa": "extended MiniLM, SDPA", "sparse": "extended MiniLM, band r=128 + [CLS] global"}
LONG = 4096  # tokens the extended retrieval models read


def _rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1 << 20)


def _clock() -> tuple[float, float]:
    """(wall, CPU) seconds now. CPU time (all threads of this process) is what a busy shared
    machine perturbs least; wall time is what a user waits."""
    return time.perf_counter(), time.process_time()


def _since(start: tuple[float, float]) -> list[float]:
    now = _clock()
    return [now[0] - start[0], now[1] - start[1]]


# ---------------------------------------------------------------------------------- the corpus
@dataclass
class Corpus:
    """Documents, queries, and the document each query was taken from.

    documents: texts. doc_tokens: their token counts (no special tokens). queries: sentence texts.
    labels: the document of each query. positions: the token index where each query starts in its
    document (no special tokens).
    """

    documents: list = field(default_factory=list)
    doc_tokens: list = field(default_factory=list)
    queries: list = field(default_factory=list)
    labels: list = field(default_factory=list)
    positions: list = field(default_factory=list)


_SENTENCE = re.compile(r"[A-Z][^.!?]*[.!?](?=\s|$)")


def _normalise(text: str) -> str:
    return " ".join(text.split())


def _is_prose(sentence: str) -> bool:
    """Plain English, not code, tables or headings."""
    letters = sum(c.isalpha() or c.isspace() for c in sentence)
    return (letters >= 0.85 * len(sentence) and ">>>" not in sentence and "*" not in sentence
            and "\n\n" not in sentence)


def build_corpus(tokenizer, *, min_tokens: int = 2000, max_tokens: int = 4000, queries_per_document: int = 3,
                 min_position: int = 512, query_tokens: tuple = (12, 60), remove: bool = False, seed: int = 0,
                 text: str | None = None) -> Corpus:
    """Documents of ``min_tokens .. max_tokens`` tokens from consecutive paragraphs of ``text``
    (default: the pydoc topics), each ending at a length drawn uniformly in that range (the last
    paragraphs that do not reach ``min_tokens`` are dropped, as is any paragraph longer than
    ``max_tokens``); up to ``queries_per_document`` query sentences per document, drawn among its
    prose sentences of ``query_tokens`` tokens that start at token ``min_position`` or later and
    occur nowhere else (in no other document, and once in their own). ``remove=True`` deletes the
    query sentences from their document."""
    from graphattn.study import english_text

    min_tokens = check_int("min_tokens", min_tokens, minimum=1)
    max_tokens = check_int("max_tokens", max_tokens, minimum=min_tokens)
    queries_per_document = check_int("queries_per_document", queries_per_document, minimum=0)
    min_position = check_int("min_position", min_position, minimum=0)
    gen = torch.Generator().manual_seed(check_int("seed", seed))
    text = english_text() if text is None else text
    paragraphs = [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]
    # verbose=False here and below: these calls only count and locate tokens, so the warning that a
    # text exceeds the (truncated) model's 512 positions does not apply
    counts = [len(ids) for ids in tokenizer(paragraphs, add_special_tokens=False, verbose=False)["input_ids"]]

    def target():
        return int(torch.randint(min_tokens, max_tokens + 1, (1,), generator=gen))

    docs, current, total, goal = [], [], 0, target()
    for para, count in zip(paragraphs, counts):
        if count > max_tokens:
            continue
        if total + count > max_tokens:  # the next paragraph would overflow: close what there is
            if total >= min_tokens:
                docs.append("\n\n".join(current))
            current, total, goal = [], 0, target()
        current.append(para)
        total += count
        if total >= goal:
            docs.append("\n\n".join(current))
            current, total, goal = [], 0, target()
    normalised = [_normalise(d) for d in docs]
    corpus = Corpus()
    for doc in docs:
        enc = tokenizer(doc, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        starts = torch.tensor([s for s, _ in enc["offset_mapping"]])
        candidates = []
        for match in _SENTENCE.finditer(doc):
            sentence = match.group()
            first = int(torch.searchsorted(starts, match.start()))
            last = int(torch.searchsorted(starts, match.end()))
            norm = _normalise(sentence)
            if (first >= min_position and query_tokens[0] <= last - first <= query_tokens[1] and _is_prose(sentence)
                    and sum(other.count(norm) for other in normalised) == 1):
                candidates.append((match.start(), match.end(), norm, first))
        chosen = [candidates[i] for i in torch.randperm(len(candidates), generator=gen)[:queries_per_document]]
        chosen.sort()
        if remove:
            for start, end, _, _ in reversed(chosen):
                doc = doc[:start] + doc[end:]
        doc_index = len(corpus.documents)
        corpus.documents.append(doc)
        corpus.doc_tokens.append(len(tokenizer(doc, add_special_tokens=False, verbose=False)["input_ids"]))
        for _, _, norm, first in chosen:
            corpus.queries.append(norm)
            corpus.labels.append(doc_index)
            corpus.positions.append(first)
    return corpus


# ---------------------------------------------------------------------------------- retrieval
def recall_at(similarity: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    """Share of queries (rows of ``similarity [Q, D]``) whose document ``labels[q]`` ranks in the
    top ``k``; a document ranks below every document with a strictly higher score (ties favour it)."""
    k = check_int("k", k, minimum=1)
    own = similarity.gather(1, labels.view(-1, 1))
    rank = (similarity > own).sum(dim=1)
    return float((rank < k).double().mean()) if labels.numel() else float("nan")


def load_method(method: str, *, max_length: int = LONG):
    """``(model, tokenizer, tokens read)`` of a retrieval method, from the shipped MiniLM."""
    from graphattn import hf, rules
    from graphattn.models import GraphRule
    from graphattn.study import load_minilm

    if method not in METHODS:
        raise ValueError(f"expected method in {sorted(METHODS)}, got {method!r}")
    model, tokenizer = load_minilm()
    model.set_attn_implementation("sdpa")
    if method == "truncated":
        return model, tokenizer, model.config.max_position_embeddings
    hf.extend_positions(model, max_length, tokenizer=tokenizer)
    if method == "longformer":
        hf.sparsify(model, GraphRule(rules.longformer, radius=256, global_indices=[0]))
    elif method == "bigbird":
        hf.sparsify(model, GraphRule(rules.bigbird, block_size=64, num_window_blocks=3, num_random_blocks=3,
                                     num_global_blocks=2, seed=0))
    return model, tokenizer, max_length


def _build_graphs(model, n: int) -> float:
    """``[wall, CPU]`` seconds to build (or find cached) every sparsified layer's graph over ``n``
    tokens and its tiling plan, as the model's first call at that length would."""
    import inspect

    from graphattn.hf.attention import LAYER_ATTRIBUTE
    from graphattn.nn import graph_attention
    from graphattn.nn.plan import get_plan

    defaults = inspect.signature(graph_attention).parameters
    holders = {id(h): h for h in (getattr(m, LAYER_ATTRIBUTE, None) for m in model.modules()) if h is not None}
    start = _clock()
    for holder in holders.values():
        get_plan(holder.graph(n, "cpu"), n, n, tile=defaults["tile"].default,
                 dense_threshold=defaults["dense_threshold"].default)
    return _since(start)


def embed(model, tokenizer, texts, *, max_length: int, batch_size: int = 1):
    """Unit-norm mean-pooled last hidden states ``[len(texts), E]`` (padded batches of
    ``batch_size``), the ``[wall, CPU]`` seconds spent in the model, and (batch size 1) those spent
    building graphs and tiling plans before the model runs (0 for a model sparsify did not touch)."""
    out, seconds, building = [], [0.0, 0.0], [0.0, 0.0]
    for i in range(0, len(texts), batch_size):
        enc = tokenizer(texts[i:i + batch_size], return_tensors="pt", padding=True, truncation=True,
                        max_length=max_length)
        if batch_size == 1:
            building = [a + b for a, b in zip(building, _build_graphs(model, enc["input_ids"].shape[1]))]
        start = _clock()
        with torch.no_grad():
            hidden = model(**enc).last_hidden_state
        seconds = [a + b for a, b in zip(seconds, _since(start))]
        mask = enc["attention_mask"][..., None].to(hidden.dtype)
        out.append(torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1))
    return torch.cat(out), seconds, building


def _subset(corpus: Corpus, max_documents: int | None) -> Corpus:
    if max_documents is None:
        return corpus
    keep = check_int("max_documents", max_documents, minimum=1)
    picked = [i for i, d in enumerate(corpus.labels) if d < keep]
    return Corpus(corpus.documents[:keep], corpus.doc_tokens[:keep], [corpus.queries[i] for i in picked],
                  [corpus.labels[i] for i in picked], [corpus.positions[i] for i in picked])


def run_retrieval(methods=tuple(METHODS), *, min_tokens: int = 2000, max_tokens: int = 4000,
                  queries_per_document: int = 3, remove: bool = False, max_documents: int | None = None,
                  seed: int = 0) -> dict:
    """Every method in this process, document by document: the methods take turns on each
    document (in a rotating order), so they share the machine's load alike. Per method: recall@1
    and @5, model and graph-building seconds per document (wall and CPU), mean tokens read."""
    loaded = {m: load_method(m, max_length=max(LONG, max_tokens + 2)) for m in methods}
    tokenizer = next(iter(loaded.values()))[1]
    corpus = _subset(build_corpus(tokenizer, min_tokens=min_tokens, max_tokens=max_tokens,
                                  queries_per_document=queries_per_document, remove=remove, seed=seed),
                     max_documents)
    for model, tok, length in loaded.values():
        embed(model, tok, ["warm up"], max_length=length)
    docs = {m: [] for m in methods}
    seconds = {m: [0.0, 0.0] for m in methods}
    building = {m: [0.0, 0.0] for m in methods}
    for i, text in enumerate(corpus.documents):
        for j in range(len(methods)):
            m = methods[(i + j) % len(methods)]
            model, tok, length = loaded[m]
            e, t, b = embed(model, tok, [text], max_length=length)
            docs[m].append(e)
            seconds[m] = [a + c for a, c in zip(seconds[m], t)]
            building[m] = [a + c for a, c in zip(building[m], b)]
    labels = torch.tensor(corpus.labels, dtype=torch.int64)
    out = {}
    for m, (model, tok, length) in loaded.items():
        queries, _, _ = embed(model, tok, corpus.queries, max_length=length, batch_size=16)
        sim = queries @ torch.cat(docs[m]).t()
        read = [min(t + 2, length) for t in corpus.doc_tokens]
        out[m] = {"recall@1": recall_at(sim, labels, 1), "recall@5": recall_at(sim, labels, 5),
                  "time_per_doc_s": seconds[m][0] / len(corpus.documents),
                  "cpu_per_doc_s": seconds[m][1] / len(corpus.documents),
                  "graphs_per_doc_s": building[m][0] / len(corpus.documents),
                  "graphs_cpu_per_doc_s": building[m][1] / len(corpus.documents), "tokens_read": sum(read) / len(read),
                  "documents": len(corpus.documents), "queries": len(corpus.queries),
                  "doc_tokens": [min(corpus.doc_tokens), max(corpus.doc_tokens)]}
    return out


def run_retrieval_memory(method: str, num_tokens: int) -> dict:
    """Peak RSS of one method embedding ``num_tokens`` tokens of the pydoc text (graph included)."""
    from graphattn.study import english_text

    model, tokenizer, length = load_method(method, max_length=max(LONG, num_tokens))
    embed(model, tokenizer, ["warm up"], max_length=length)
    base = _rss_gib()
    embed(model, tokenizer, [english_text()], max_length=min(num_tokens, length))
    return {"peak_rss_gib": _rss_gib(), "base_rss_gib": base}


def retrieval_table(results: dict, memory: dict) -> str:
    """Markdown table of :func:`run_retrieval` results and :func:`run_retrieval_memory` per method."""
    rows = []
    for method, r in results.items():
        mem = memory.get(method, {"skip": "not run"})
        live = "-" if "skip" in mem else f"{mem['peak_rss_gib'] - mem['base_rss_gib']:.2f}"
        rows.append([method, METHODS[method], f"{r['tokens_read']:,.0f}", f"{r['recall@1']:.3f}",
                     f"{r['recall@5']:.3f}", f"{r['time_per_doc_s']:.3f} / {r['cpu_per_doc_s']:.3f}",
                     f"{r['graphs_per_doc_s']:.3f} / {r['graphs_cpu_per_doc_s']:.3f}", live])
    return format_table(["method", "reads", "mean tokens read", "recall@1", "recall@5", "model s / doc (wall / CPU)",
                         "graphs + plans s / doc (wall / CPU)", "peak - start GiB (longest doc)"], rows)


# ---------------------------------------------------------------------------------- speed
def _speed_model(n: int):
    """The extended MiniLM, sparsified (band r=128 + [CLS]); ``n`` tokens of the pydoc text."""
    from graphattn import hf, rules
    from graphattn.models import GraphRule
    from graphattn.study import english_text, load_minilm

    model, tokenizer = load_minilm()
    model.set_attn_implementation("sdpa")
    hf.extend_positions(model, max(n, LONG), tokenizer=tokenizer)
    hf.sparsify(model, GraphRule(rules.longformer, radius=128, global_indices=[0]))
    enc = tokenizer(english_text(), return_tensors="pt", truncation=True, max_length=n)
    if enc["input_ids"].shape[1] < n:
        raise ValueError(f"expected a text of at least {n} tokens, got {enc['input_ids'].shape[1]}")
    return model, enc


def _use(model, name: str) -> None:
    """Switch the sparsified model between its graphs and SDPA (the graphs stay cached)."""
    from graphattn import hf

    target = hf.IMPLEMENTATION if name == "sparse" else "sdpa"
    if model.config._attn_implementation != target:
        model.set_attn_implementation(target)


def _model_step(model, enc, backward: bool):
    params = [p for p in model.parameters() if p.requires_grad]

    def step():
        if backward:
            model(**enc).last_hidden_state.square().mean().backward()
            for p in params:
                p.grad = None
        else:
            with torch.no_grad():
                model(**enc)
    return step


def _attention_step(model, enc, backward: bool):
    """The model's attention calls alone (same function, same q, k, v as in the model)."""
    from transformers import AttentionInterface

    attend = AttentionInterface()[model.config._attn_implementation]
    captured = []

    def capture(module, query, key, value, attention_mask, **kwargs):
        captured.append((module, query.detach(), key.detach(), value.detach(), attention_mask, kwargs))
        return attend(module, query, key, value, attention_mask, **kwargs)

    name = "graphattn_bench_capture"
    AttentionInterface.register(name, capture)
    previous = model.config._attn_implementation
    model.config._attn_implementation_internal = name  # one forward through the capturing wrapper
    try:
        with torch.no_grad():
            model(**enc)
    finally:
        model.config._attn_implementation_internal = previous
    inputs = [(m, *(t.clone().requires_grad_(backward) for t in (q, k, v)), mask, kw)
              for m, q, k, v, mask, kw in captured]

    def step():
        for m, q, k, v, mask, kw in inputs:
            if backward:
                out, _ = attend(m, q, k, v, mask, **kw)
                out.backward(torch.ones_like(out))
                q.grad = k.grad = v.grad = None
            else:
                with torch.no_grad():
                    attend(m, q, k, v, mask, **kw)
    return step


def _check_mode(mode: str) -> bool:
    if mode not in ("fwd", "fwd+bwd"):
        raise ValueError(f"expected mode 'fwd' or 'fwd+bwd', got {mode!r}")
    return mode == "fwd+bwd"


def run_speed_times(n: int, mode: str, *, repeats: int = 3) -> dict:
    """Both models in this process, taking turns repeat by repeat (they share the machine's load
    alike): median wall and CPU seconds of the model and of its attention calls alone, per model."""
    backward = _check_mode(mode)
    model, enc = _speed_model(n)
    steps = {}
    for name in SPEED_MODELS:
        _use(model, name)
        steps[name] = (_model_step(model, enc, backward), _attention_step(model, enc, backward))
    times = {name: ([], []) for name in SPEED_MODELS}
    for r in range(repeats + 1):  # the first round warms up (graph, plan, allocator)
        for name in SPEED_MODELS:
            _use(model, name)
            for part, step in enumerate(steps[name]):
                gc.collect()
                start = _clock()
                step()
                if r:
                    times[name][part].append(_since(start))
    med = lambda xs, i: statistics.median(x[i] for x in xs)  # noqa: E731
    return {name: {"time_s": med(t, 0), "cpu_s": med(t, 1), "attention_s": med(a, 0), "attention_cpu_s": med(a, 1)}
            for name, (t, a) in times.items()}


def run_speed_memory(model_name: str, n: int, mode: str) -> dict:
    """Peak RSS of one step of one model in this process (run it in a fresh process)."""
    backward = _check_mode(mode)
    if model_name not in SPEED_MODELS:
        raise ValueError(f"expected model_name in {sorted(SPEED_MODELS)}, got {model_name!r}")
    model, enc = _speed_model(n)
    _use(model, model_name)
    with torch.no_grad():
        # Imports, kernels' code and the allocator at a small size; 512 tokens so that every kernel
        # of the measured step (the sparse model's CSR part for the [CLS] row and column too) has run.
        model(**{k: v[:, :512] for k, v in enc.items()})
    base = _rss_gib()
    _model_step(model, enc, backward)()
    return {"peak_rss_gib": _rss_gib(), "base_rss_gib": base}


def speed_table(rows: list) -> str:
    """Markdown table of ``(n, mode, times, memory)``: :func:`run_speed_times` and, per model,
    :func:`run_speed_memory`. Speed-ups are SDPA's seconds over the sparse model's, from CPU time
    and from wall time; the attention share is the attention calls' CPU time over the model's."""
    body = []
    for n, mode, times, memory in rows:
        for name, label in SPEED_MODELS.items():
            if "skip" in times:
                body.append([label, f"{n:,}", mode, "-", "-", "-", "-", "-", "-", times["skip"]])
                continue
            r, ref = times[name], times["sdpa"]
            mem, ref_mem = memory.get(name, {"skip": ""}), memory.get("sdpa", {"skip": ""})
            live = None if "skip" in mem else mem["peak_rss_gib"] - mem["base_rss_gib"]
            ref_live = None if "skip" in ref_mem else ref_mem["peak_rss_gib"] - ref_mem["base_rss_gib"]
            faster = (f"{ref['cpu_s'] / r['cpu_s']:.2f}x / {ref['time_s'] / r['time_s']:.2f}x"
                      if name != "sdpa" else "")
            less = (f"{ref_live / live:.2f}x" if name != "sdpa" and live and ref_live is not None else "")
            body.append([label, f"{n:,}", mode, f"{r['time_s']:.2f}", f"{r['cpu_s']:.2f}",
                         f"{r['attention_cpu_s']:.2f}", f"{r['attention_cpu_s'] / r['cpu_s']:.0%}",
                         "-" if live is None else f"{live:.2f}", faster, less or mem.get("skip", "")])
    return format_table(["model", "n", "mode", "wall s", "CPU s", "attention alone CPU s", "attention share",
                         "peak - start GiB", "faster than SDPA (CPU / wall)", "less memory than SDPA"], body)


# ---------------------------------------------------------------------------------- the suite
def _spawn(spec: dict, timeout: int, env: dict | None = None, threads: int | None = None) -> dict:
    return spawn_worker("graphattn.bench.longdoc", dict(spec, threads=threads), timeout, env)


def _describe_retrieval(result: dict) -> str:
    """One method's retrieval cell as a progress line."""
    return (f"recall@1 {result['recall@1']:.3f}, recall@5 {result['recall@5']:.3f}, "
            f"model {result['time_per_doc_s']:.3f} s / doc, graphs {result['graphs_per_doc_s']:.3f} s / doc")


def _describe_speed(result: dict) -> str:
    """One model's speed cell as a progress line."""
    return (f"{result['time_s']:.2f} s (CPU {result['cpu_s']:.2f} s), attention alone {result['attention_s']:.2f} s "
            f"(CPU {result['attention_cpu_s']:.2f} s)")


def run(*, tables=("retrieval", "speed"), methods=tuple(METHODS), min_tokens: int = 2000, max_tokens: int = 4000,
        queries_per_document: int = 3, remove: bool = False, max_documents: int | None = None,
        speed_n=(4096, 16384), repeats: int = 3, timeout: int = 3600, seed: int = 0, threads: int | None = None,
        log=print) -> str:
    """Both tables (cells in their own processes, with ``threads`` torch threads, default torch's);
    returns markdown."""
    from graphattn.bench.models import MMAP_ENV

    out = []
    if "retrieval" in tables:
        spec = dict(kind="retrieval", methods=list(methods), min_tokens=min_tokens, max_tokens=max_tokens,
                    queries_per_document=queries_per_document, remove=remove, max_documents=max_documents, seed=seed)
        results = _spawn(spec, timeout, threads=threads)
        if "skip" in results:
            log(f"  retrieval  {describe_cell(results)}")
            out.append(f"Long-document retrieval: {results['skip']}")
        else:
            for method, result in results.items():
                log(f"  retrieval  {method:10s} {_describe_retrieval(result)}")
            first = next(iter(results.values()))
            lo, hi = first["doc_tokens"]
            memory = {}
            for method in methods:
                memory[method] = _spawn(dict(kind="retrieval-memory", method=method, num_tokens=hi + 2), timeout,
                                        MMAP_ENV, threads)
                log(f"  retrieval  {method:10s} memory: {describe_cell(memory[method])}")
            head = (f"Long-document retrieval (pydoc topics): {first['documents']} documents of {lo:,} to {hi:,} "
                    f"tokens, {first['queries']} query sentences starting beyond token 512 of their document, "
                    f"{'removed from' if remove else 'kept in'} it; mean-pooled embeddings ranked by cosine; "
                    f"no further training of the copied positions")
            out.append(head + "\n\n" + retrieval_table(results, memory))
    if "speed" in tables:
        rows = []
        for n in speed_n:
            for mode in ("fwd", "fwd+bwd"):
                times = _spawn(dict(kind="speed", n=n, mode=mode, repeats=repeats), timeout, threads=threads)
                memory = {}
                if "skip" in times:
                    log(f"  speed n={n:<6d} {mode:8s} {describe_cell(times)}")
                else:
                    for name in SPEED_MODELS:
                        memory[name] = _spawn(dict(kind="speed-memory", model_name=name, n=n, mode=mode), timeout,
                                              MMAP_ENV, threads)
                        log(f"  speed n={n:<6d} {mode:8s} {name:6s} {_describe_speed(times[name])}; "
                            f"memory: {describe_cell(memory[name])}")
                rows.append((n, mode, times, memory))
        out.append(f"MiniLM-L6 made long, batch 1, fp32, torch {torch.__version__}, "
                   f"torch threads: {threads or torch.get_num_threads()}; "
                   f"the two models take turns in one process, medians of {repeats} (wall and process CPU time); "
                   f"peak memory of one step, each model in its own process (glibc mmap threshold 64 KiB, so RSS "
                   f"tracks live tensors)\n\n"
                   + speed_table(rows))
    return "\n\n".join(out)


_WORKERS = {"retrieval": run_retrieval, "retrieval-memory": run_retrieval_memory, "speed": run_speed_times,
            "speed-memory": run_speed_memory}


if __name__ == "__main__" and "--worker" in sys.argv:
    spec = json.loads(sys.argv[sys.argv.index("--worker") + 1])
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    spec.pop("threads", None)
    print(json.dumps(_WORKERS[spec.pop("kind")](**spec)))
