"""A long-input sequence-to-sequence task on real text: ``python -m graphattn.bench seq2seq``.

**Task.** The text is Python's own documentation shipped with the interpreter (the pydoc
topics), whitespace runs collapsed; the vocabulary is its characters. A source is a window of
2,000 to 8,000 characters with a marker token inserted before a word chosen uniformly at
random; the target is the ``TARGET`` characters that follow the marker. The topics are split
once: every fifth topic (sorted by name) is held out, so evaluation documents are text the
models never saw.

**Models.** The same :class:`~graphattn.models.EncoderDecoder` (sinusoidal positions,
encoder self-attention with a learned per-head bias of the clipped relative position
(:func:`with_relative`), full causal decoder, full cross-attention) with two encoders: a
BigBird encoder over the whole source, and full attention over the source truncated to its
first 512 tokens (what a 512-token model does: most markers lie beyond it). Each trains for a
fixed number of steps on fresh training documents in its own process (peak RSS is its own);
evaluation is greedy decoding on held-out documents: exact match (all ``TARGET`` characters
after a marker right), token accuracy, and the fraction of markers inside the first 512
tokens (the truncated model's reach).
"""

from __future__ import annotations

import json
import re
import resource
import sys
import time

import torch

from graphattn.bench._timing import format_table, spawn_worker
from graphattn.graph import AttentionGraph

__all__ = ["SPECIALS", "TARGET", "TRUNCATE", "MODELS", "corpus", "Vocabulary", "make_batch", "with_relative",
           "make_model", "train", "evaluate", "run_cell", "run"]

MARKERS = 16  # markers per document, one per zone
TARGET = 8  # characters to read back after each marker
PAD, BOS, EOS, MARK = 0, 1, 2, 3  # marker m is token MARK + m
SPECIALS = ("<pad>", "<bos>", "<eos>", *(f"<mark{m}>" for m in range(MARKERS)))
MIN_LEN, MAX_LEN = 2000, 8000
TRUNCATE = 512
MODELS = ("bigbird", "truncated")
RELATIVE = 16  # relative positions -16..16 get their own bias, farther ones share the end buckets


def corpus() -> tuple[str, str]:
    """``(train text, held-out text)``: the pydoc topics, whitespace runs collapsed to one
    space and runs of a repeated symbol (table rules) to one symbol; every fifth topic by name
    is held out."""
    from pydoc_data.topics import topics

    def clean(text: str) -> str:
        text = re.sub(r"\s+", " ", text).strip()
        return re.sub(r"([^\w\s])\1{2,}", r"\1", text)

    names = sorted(topics)
    held = set(names[::5])
    train = " ".join(clean(topics[n]) for n in names if n not in held)
    test = " ".join(clean(topics[n]) for n in names if n in held)
    return train, test


class Vocabulary:
    """The characters of a text, after the special tokens (unknown characters map to a space)."""

    def __init__(self, text: str):
        self.chars = sorted(set(text))
        self.index = {c: i + len(SPECIALS) for i, c in enumerate(self.chars)}
        self.space = self.index.get(" ", len(SPECIALS))

    def __len__(self) -> int:
        return len(SPECIALS) + len(self.chars)

    def encode(self, text: str) -> torch.Tensor:
        return torch.tensor([self.index.get(c, self.space) for c in text], dtype=torch.int64)

    def decode(self, ids) -> str:
        return "".join(self.chars[i - len(SPECIALS)] if i >= len(SPECIALS) else SPECIALS[i] for i in ids)


def make_batch(ids: torch.Tensor, batch: int, gen: torch.Generator, *, space: int, min_len: int = MIN_LEN,
               max_len: int = MAX_LEN, markers: int = MARKERS, target: int = TARGET):
    """``batch`` documents from the encoded text ``ids``: ``(src [B, n] right-padded with PAD,
    src_mask [B, n], tgt [B, 2 + markers * (target + 1)], marker positions [B, markers])``.

    Document ``b`` is a window of ``L ~ U[min_len, max_len]`` characters at a uniform offset,
    cut into ``markers`` equal zones; in zone ``m`` marker ``m`` (token ``MARK + m``) is
    inserted before a word chosen uniformly among those that leave ``target`` characters to read
    inside the zone (``space``: the id of the space character; a word starts after one). The
    target is ``BOS``, then per marker its token and the ``target`` characters after it, then
    ``EOS``. Marker positions count source tokens (markers included)."""
    lengths = torch.randint(min_len, max_len + 1, (batch,), generator=gen)
    src = torch.full((batch, int(lengths.max()) + markers), PAD, dtype=torch.int64)
    tgt = torch.empty(batch, 2 + markers * (target + 1), dtype=torch.int64)
    marks = torch.empty(batch, markers, dtype=torch.int64)
    for b, L in enumerate(lengths.tolist()):
        start = int(torch.randint(0, ids.numel() - L, (1,), generator=gen))
        doc = ids[start:start + L]
        bounds = [L * m // markers for m in range(markers + 1)]
        pieces, row = [], [BOS]
        for m in range(markers):
            lo, hi = bounds[m], bounds[m + 1]
            starts = torch.nonzero(doc[lo:hi - target - 1] == space).flatten() + lo + 1
            if starts.numel() == 0:  # a zone without a word start (never at these lengths): its first character
                starts = torch.tensor([lo])
            p = int(starts[torch.randint(0, starts.numel(), (1,), generator=gen)])
            pieces += [doc[bounds[m] if m == 0 else prev:p], torch.tensor([MARK + m])]
            prev = p
            row += [MARK + m, *doc[p:p + target].tolist()]
            marks[b, m] = p + m
        pieces.append(doc[prev:])
        seq = torch.cat(pieces)
        src[b, :seq.numel()] = seq
        tgt[b] = torch.tensor(row + [EOS])
    mask = torch.arange(src.shape[1])[None, :] < (lengths + markers)[:, None]
    return src, mask, tgt, marks


def _data():
    train_text, test_text = corpus()
    vocab = Vocabulary(train_text)
    return vocab, vocab.encode(train_text), vocab.encode(test_text)


def with_relative(n: int, *, base, radius: int, **params) -> AttentionGraph:
    """``rule(n, **params)`` with relative-position ids ``clip(i - j, -radius, radius) + radius``
    (query ``i``, key ``j``; ``2 * radius + 1`` ids) for a layer with ``num_relative``.

    >>> from graphattn import rules
    >>> with_relative(3, base=rules.full, radius=1).relative.tolist()
    [1, 0, 0, 2, 1, 0, 2, 2, 1]
    """
    g = base(n, **params)
    keys, queries = g.edge_index
    relative = (queries - keys).clamp(-radius, radius) + radius
    return AttentionGraph.from_edge_index(g.edge_index, g.num_nodes, node_type=g.node_type,
                                          edge_label=g.edge_label, relative=relative)


def make_model(name: str, vocab_size: int, *, embed_dim: int = 64, num_heads: int = 4, layers: int = 2,
               block_size: int = 16, seed: int = 0):
    """The task's encoder-decoder: ``"bigbird"`` (BigBird encoder over up to ``MAX_LEN +
    MARKERS`` tokens: 3 window, 2 random and 2 global blocks of ``block_size``, random blocks
    from ``seed``) or ``"truncated"`` (full attention over ``TRUNCATE`` tokens); the same
    layers, widths, positions and relative-position bias otherwise. Source and target share one
    token embedding (one character vocabulary; the output projection is tied to it too), so a
    marker or character reads the same on both sides. Parameters are drawn from ``seed``
    (torch's global generator state is left as it was)."""
    from graphattn import rules
    from graphattn.models import EncoderDecoder, GraphRule

    if name == "bigbird":
        graph = GraphRule(with_relative, base=rules.bigbird, radius=RELATIVE, block_size=block_size,
                          num_window_blocks=3, num_random_blocks=2, num_global_blocks=2, seed=seed)
        max_len = MAX_LEN + MARKERS
    elif name == "truncated":
        graph, max_len = GraphRule(with_relative, base=rules.full, radius=RELATIVE), TRUNCATE
    else:
        raise ValueError(f"expected name in {MODELS}, got {name!r}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = EncoderDecoder(vocab_size, embed_dim, num_heads, layers, graph, num_relative=2 * RELATIVE + 1,
                               max_len=max(max_len, 2 + MARKERS * (TARGET + 1)), positions="sinusoidal")
    model.encoder_embedding.weight = model.decoder_embedding.weight
    return model


def _truncate(name: str, src, mask):
    if name == "truncated":
        return src[:, :TRUNCATE], mask[:, :TRUNCATE]
    return src, mask


def train(model, name: str, ids: torch.Tensor, *, space: int, steps: int, batch: int, lr: float, seed: int,
          lengths: tuple[int, int] = (MIN_LEN, MAX_LEN), log=None) -> dict:
    """Adam on ``steps`` fresh batches of documents of ``lengths`` characters (cross-entropy of
    the whole target, teacher forcing); returns the wall time, the mean loss of the last 20
    steps and the mean loss of every 50 steps (``loss_curve``)."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    t0, losses = time.perf_counter(), []
    for step in range(1, steps + 1):
        src, mask, tgt, _ = make_batch(ids, batch, gen, space=space, min_len=lengths[0], max_len=lengths[1])
        src, mask = _truncate(name, src, mask)
        logits = model(src, tgt[:, :-1], src_mask=mask)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if log is not None and step % 25 == 0:
            log(f"    step {step}: loss {sum(losses[-25:]) / 25:.3f} ({time.perf_counter() - t0:.0f} s)")
    curve = [round(sum(losses[i:i + 50]) / len(losses[i:i + 50]), 3) for i in range(0, len(losses), 50)]
    return {"steps": steps, "train_s": time.perf_counter() - t0, "final_loss": sum(losses[-20:]) / len(losses[-20:]),
            "loss_curve": curve}


@torch.no_grad()
def evaluate(model, name: str, ids: torch.Tensor, *, space: int, samples: int, seed: int, batch: int = 8,
             lengths: tuple[int, int] = (MIN_LEN, MAX_LEN)) -> dict:
    """Greedy decoding on ``samples`` held-out documents: exact match of the ``TARGET``
    characters after each marker (per marker, and whole documents), token accuracy of those
    characters, and the fraction of markers in the first ``TRUNCATE`` source tokens."""
    gen = torch.Generator().manual_seed(seed)
    segments = correct = documents = in_window = 0
    for start in range(0, samples, batch):
        b = min(batch, samples - start)
        src, mask, tgt, marks = make_batch(ids, b, gen, space=space, min_len=lengths[0], max_len=lengths[1])
        src, mask = _truncate(name, src, mask)
        out = model.generate(src, mask, max_new_tokens=tgt.shape[1] - 1, bos_id=BOS)
        out = torch.nn.functional.pad(out, (0, tgt.shape[1] - 1 - out.shape[1]), value=PAD)
        chars = (out == tgt[:, 1:])[:, :-1].view(b, MARKERS, TARGET + 1)[:, :, 1:]  # [b, markers, TARGET]
        segments += int(chars.all(-1).sum())
        documents += int(chars.all(-1).all(-1).sum())
        correct += int(chars.sum())
        in_window += int((marks + TARGET < TRUNCATE).sum())
    return {"exact_match": segments / (samples * MARKERS), "document_match": documents / samples,
            "token_accuracy": correct / (samples * MARKERS * TARGET),
            "marker_in_first_512": in_window / (samples * MARKERS)}


def run_cell(name: str, steps: int, batch: int, lr: float, eval_samples: int, seed: int, embed_dim: int,
             layers: int, log=None) -> dict:
    """Train and evaluate one model in this process: the result of :func:`train` and
    :func:`evaluate`, and the process's peak RSS (MiB) before and after training."""
    vocab, train_ids, test_ids = _data()
    model = make_model(name, len(vocab), embed_dim=embed_dim, layers=layers, seed=seed)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    space = vocab.index[" "]
    result = train(model, name, train_ids, space=space, steps=steps, batch=batch, lr=lr, seed=seed, log=log)
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result["base_rss_mib"] = base
    model.eval()
    result.update(evaluate(model, name, test_ids, space=space, samples=eval_samples, seed=seed + 1))
    return result


def run(models=MODELS, steps: int = 300, batch: int = 4, lr: float = 2e-3, eval_samples: int = 64,
        seed: int = 0, embed_dim: int = 64, layers: int = 2, timeout: int = 3600, log=print) -> str:
    """Every model of ``models`` trained and evaluated in its own process; a markdown table."""
    rows = []
    for name in models:
        spec = dict(name=name, steps=steps, batch=batch, lr=lr, eval_samples=eval_samples, seed=seed,
                    embed_dim=embed_dim, layers=layers)
        r = spawn_worker("graphattn.bench.seq2seq", spec, timeout)
        log(f"  {name}: {r}")
        if "skip" in r:
            rows.append([name, "-", "-", "-", "-", "-", "-", "-", r["skip"]])
            continue
        rows.append([name, f"{r['exact_match']:.3f}", f"{r['document_match']:.3f}", f"{r['token_accuracy']:.3f}",
                     r["steps"], f"{r['train_s']:.0f}", f"{r['final_loss']:.3f}", f"{r['peak_rss_mib']:.0f}",
                     f"{r['marker_in_first_512']:.2f}"])
    head = (f"copy the {TARGET} characters after each of {MARKERS} markers, each placed before a random word of "
            f"its zone of a {MIN_LEN:,}-{MAX_LEN:,}-character document (pydoc topics; evaluated on held-out "
            f"topics); E={embed_dim}, {layers}+{layers} layers, batch {batch}, Adam lr {lr}, {steps} steps each, "
            f"{eval_samples} held-out documents, greedy decoding, seed {seed}")
    table = format_table(["model", "exact match", "documents all right", "token accuracy", "train steps",
                          "train s", "final loss", "peak RSS MiB", "markers in first 512"], rows)
    return f"{head}\n\n{table}"


if __name__ == "__main__" and "--worker" in sys.argv:
    spec = json.loads(sys.argv[sys.argv.index("--worker") + 1])
    print(json.dumps(run_cell(**spec, log=lambda m: print(m, file=sys.stderr, flush=True))))
