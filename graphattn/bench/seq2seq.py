"""A long-input sequence-to-sequence task on real text: ``python -m graphattn.bench seq2seq``.

**Task.** The text is Python's own documentation shipped with the interpreter (the pydoc
topics), whitespace runs collapsed; tokens are its words and punctuation characters
(:func:`tokenize`), the vocabulary those of the training text. A source is a window of 2,000 to
8,000 tokens cut into ``MARKERS`` equal zones; in each zone a marker token (``<mark0>``,
``<mark1>``, ...) is inserted before a token chosen uniformly at random, and the target is,
marker by marker, the marker and the ``TARGET`` tokens that follow it: the answer can lie
anywhere in the document. The topics are split once: every fifth topic (sorted by name) is
held out, so evaluation documents are text the models never saw.

**Models.** The same :class:`~graphattn.models.EncoderDecoder` (sinusoidal positions, a token
shift in the source embedding (:class:`ShiftedEmbedding`), full causal decoder, full
cross-attention) with two encoders: a BigBird encoder over the whole source, and full attention
over the source truncated to its first 512 tokens (what a 512-token model does: most markers
lie beyond it). Each trains in its own process (peak RSS is its own) with one schedule: a short
length curriculum (:data:`WARMUP`), then full-length documents. Evaluation is greedy decoding on
held-out documents of random lengths (a padded batch): exact match (all ``TARGET`` tokens after
a marker right), whole documents right, token accuracy, and the fraction of markers inside the
first 512 tokens (the truncated model's reach).
"""

from __future__ import annotations

import json
import re
import resource
import sys
import time

import torch
from torch import nn

from graphattn.bench._timing import format_table, spawn_worker

__all__ = ["SPECIALS", "TARGET", "TRUNCATE", "MODELS", "WARMUP", "corpus", "tokenize", "Vocabulary", "make_batch",
           "ShiftedEmbedding", "make_model", "train", "evaluate", "run_cell", "run"]

MARKERS = 4  # markers per document, one per zone
TARGET = 1  # tokens to read back after each marker
PAD, BOS, EOS, UNK, MARK = 0, 1, 2, 3, 4  # marker m is token MARK + m
SPECIALS = ("<pad>", "<bos>", "<eos>", "<unk>", *(f"<mark{m}>" for m in range(MARKERS)))
MIN_LEN, MAX_LEN = 2000, 8000
TRUNCATE = 512
MODELS = ("bigbird", "truncated")
# Length curriculum: both models first learn to find a marker in short documents (the copy is
# learnt in ~300 steps at 32-64 tokens; at thousands of tokens the first cross-attention is
# spread over so many keys that its gradient toward the marked token is too weak to start from),
# then in longer ones, then train at full length. Phases: (steps, batch, min_len, max_len).
WARMUP = ((400, 32, 32, 64), (100, 8, 256, 500))  # at most 504 tokens with the markers: both models see it all
BUCKETS = 13  # training documents of a batch share one of 13 lengths (graphs and plans reused)


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


_TOKEN = re.compile(r"\w+|[^\w\s]")  # a word, or one punctuation character


def tokenize(text: str) -> list[str]:
    """The text's words (runs of word characters) and punctuation characters, in order.

    >>> tokenize("def f(x): return x")
    ['def', 'f', '(', 'x', ')', ':', 'return', 'x']
    """
    return _TOKEN.findall(text)


class Vocabulary:
    """The words and punctuation characters of a text (:func:`tokenize`), after the special
    tokens; a token the text does not have maps to ``<unk>``."""

    def __init__(self, text: str):
        self.tokens = sorted(set(tokenize(text)))
        self.index = {t: i + len(SPECIALS) for i, t in enumerate(self.tokens)}

    def __len__(self) -> int:
        return len(SPECIALS) + len(self.tokens)

    def encode(self, text: str) -> torch.Tensor:
        return torch.tensor([self.index.get(t, UNK) for t in tokenize(text)], dtype=torch.int64)

    def decode(self, ids) -> str:
        return " ".join(self.tokens[i - len(SPECIALS)] if i >= len(SPECIALS) else SPECIALS[i] for i in ids)


def make_batch(ids: torch.Tensor, batch: int, gen: torch.Generator, *, min_len: int = MIN_LEN,
               max_len: int = MAX_LEN, markers: int = MARKERS, target: int = TARGET, buckets: int | None = None):
    """``batch`` documents from the encoded text ``ids``: ``(src [B, n] right-padded with PAD,
    src_mask [B, n], tgt [B, 2 + markers * (target + 1)], marker positions [B, markers])``.

    Document ``b`` is a window of ``L ~ U[min_len, max_len]`` tokens at a uniform offset, cut
    into ``markers`` equal zones; in zone ``m`` marker ``m`` (token ``MARK + m``) is inserted
    before a token chosen uniformly among those that leave ``target`` tokens to read inside the
    zone. The target is ``BOS``, then per marker its token and the ``target`` tokens after it,
    then ``EOS``. Marker positions count source tokens (markers included).

    With ``buckets``, the documents of the batch share one length drawn uniformly from
    ``buckets`` lengths evenly spaced from ``min_len`` to ``max_len``: training batches of equal
    length reuse the encoder's graph and tiling plan of that length across steps (bucketing by
    length)."""
    if not 1 <= markers <= MARKERS:  # marker tokens are the specials <mark0> .. <mark{MARKERS - 1}>
        raise ValueError(f"expected 1 <= markers <= {MARKERS}, got {markers}")
    if min_len // markers < target:  # the shortest zone, of the shortest document
        raise ValueError(f"expected zones of at least target = {target} tokens, got min_len = {min_len} "
                         f"for {markers} markers")
    if buckets is None:
        lengths = torch.randint(min_len, max_len + 1, (batch,), generator=gen)
    else:
        k = torch.randint(0, buckets, (1,), generator=gen)
        lengths = (min_len + (max_len - min_len) * k // max(buckets - 1, 1)).expand(batch)
    src = torch.full((batch, int(lengths.max()) + markers), PAD, dtype=torch.int64)
    tgt = torch.empty(batch, 2 + markers * (target + 1), dtype=torch.int64)
    marks = torch.empty(batch, markers, dtype=torch.int64)
    for b, L in enumerate(lengths.tolist()):
        start = int(torch.randint(0, ids.numel() - L, (1,), generator=gen))
        doc = ids[start:start + L]
        bounds = [L * m // markers for m in range(markers + 1)]
        pieces, row, prev = [], [BOS], 0
        for m in range(markers):
            lo, hi = bounds[m], bounds[m + 1]
            p = lo + int(torch.randint(0, hi - lo - target + 1, (1,), generator=gen))
            pieces += [doc[prev:p], torch.tensor([MARK + m])]
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


class ShiftedEmbedding(nn.Module):
    """Token embedding plus a learned linear map of the previous token's embedding (a token
    shift, as in RWKV's time mixing or the "smeared keys" of Olsson et al., 2022): ``emb(x_i) +
    P emb(x_{i-1})``, with ``x_{-1} = PAD``. Shapes: ``ids [B, n] -> [B, n, E]``, right-padded
    rows (a token's left neighbour is always a real token or the row start).

    Why: to read the token after a marker, a model must link the two. Without the shift that
    takes an attention head that learns to look one position back and a cross-attention that
    learns to look for it, and the two only help each other once both work. On a 20-token toy
    of random tokens this model was still at chance level after 2,100 steps without the shift
    (with a relative-position bias; 800 without it; ``torch.nn.Transformer`` after 1,200). With the shift the token after the marker carries
    the marker in its own input, and the toy is learnt in 100 steps.

    The previous token enters through a linear map of its (shared) embedding, initialised to
    the identity, not a table of its own: one map relates every marker to the token after it,
    where a separate table would have to learn each marker's row on its own."""

    def __init__(self, embedding: nn.Embedding):
        super().__init__()
        self.embedding = embedding
        self.previous = nn.Linear(embedding.embedding_dim, embedding.embedding_dim, bias=False)
        with torch.no_grad():
            self.previous.weight.copy_(torch.eye(embedding.embedding_dim))

    @property
    def weight(self) -> torch.Tensor:
        return self.embedding.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        previous = nn.functional.pad(ids[..., :-1], (1, 0), value=PAD)
        return self.embedding(ids) + self.previous(self.embedding(previous))


def make_model(name: str, vocab_size: int, *, embed_dim: int = 64, num_heads: int = 4, layers: int = 2,
               block_size: int = 16, seed: int = 0):
    """The task's encoder-decoder: ``"bigbird"`` (BigBird encoder over up to ``MAX_LEN +
    MARKERS`` tokens: 3 window, 2 random and 2 global blocks of ``block_size``, random blocks
    from ``seed``) or ``"truncated"`` (full attention over ``TRUNCATE`` tokens); the same
    layers, widths and positions otherwise. Source and target share one token embedding (one
    vocabulary; the output projection is tied to it too), so a marker or word reads the same
    on both sides; the source adds the previous token (:class:`ShiftedEmbedding`). Parameters are drawn from ``seed``
    (torch's global generator state is left as it was)."""
    from graphattn import rules
    from graphattn.models import EncoderDecoder, GraphRule

    if name == "bigbird":
        graph = GraphRule(rules.bigbird, block_size=block_size,
                          num_window_blocks=3, num_random_blocks=2, num_global_blocks=2, seed=seed)
        max_len = MAX_LEN + MARKERS
    elif name == "truncated":
        graph, max_len = GraphRule(rules.full), TRUNCATE
    else:
        raise ValueError(f"expected name in {MODELS}, got {name!r}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = EncoderDecoder(vocab_size, embed_dim, num_heads, layers, graph,
                               max_len=max(max_len, 2 + MARKERS * (TARGET + 1)), positions="sinusoidal")
        model.encoder_embedding = ShiftedEmbedding(model.decoder_embedding)
    return model


def _truncate(name: str, src, mask):
    if name == "truncated":
        return src[:, :TRUNCATE], mask[:, :TRUNCATE]
    return src, mask


def train(model, name: str, ids: torch.Tensor, *, steps: int, batch: int, lr: float, seed: int,
          warmup: tuple[tuple[int, int, int, int], ...] = WARMUP, log=None) -> dict:
    """Adam (cross-entropy of the whole target, teacher forcing) on fresh batches: first the
    ``warmup`` phases, each ``(steps, batch, min_len, max_len)``, then ``steps`` batches of
    ``batch`` full-length documents (``MIN_LEN`` to ``MAX_LEN`` tokens); every batch of one
    bucketed length (:data:`BUCKETS`). Returns the wall time, the mean loss of the last 20
    steps and the mean loss of every 50 steps (``loss_curve``)."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    phases = [*warmup, (steps, batch, MIN_LEN, MAX_LEN)]
    t0, losses = time.perf_counter(), []
    for n_steps, n_docs, lo, hi in phases:
        for _ in range(n_steps):
            src, mask, tgt, _ = make_batch(ids, n_docs, gen, min_len=lo, max_len=hi, buckets=BUCKETS)
            src, mask = _truncate(name, src, mask)
            logits = model(src, tgt[:, :-1], src_mask=mask)
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt[:, 1:].reshape(-1))
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            if log is not None and len(losses) % 25 == 0:
                log(f"    step {len(losses)} ({lo}-{hi} tokens): loss {sum(losses[-25:]) / 25:.3f} "
                    f"({time.perf_counter() - t0:.0f} s)")
    curve = [round(sum(losses[i:i + 50]) / len(losses[i:i + 50]), 3) for i in range(0, len(losses), 50)]
    return {"steps": len(losses), "full_length_steps": steps, "train_s": time.perf_counter() - t0,
            "final_loss": sum(losses[-20:]) / len(losses[-20:]), "loss_curve": curve}


@torch.no_grad()
def evaluate(model, name: str, ids: torch.Tensor, *, samples: int, seed: int, batch: int = 8,
             lengths: tuple[int, int] = (MIN_LEN, MAX_LEN)) -> dict:
    """Greedy decoding on ``samples`` held-out documents: exact match of the ``TARGET``
    tokens after each marker (per marker, and whole documents), token accuracy of those
    tokens, and the fraction of markers in the first ``TRUNCATE`` source tokens."""
    gen = torch.Generator().manual_seed(seed)
    segments = correct = documents = in_window = 0
    for start in range(0, samples, batch):
        b = min(batch, samples - start)
        src, mask, tgt, marks = make_batch(ids, b, gen, min_len=lengths[0], max_len=lengths[1])
        src, mask = _truncate(name, src, mask)
        out = model.generate(src, mask, max_new_tokens=tgt.shape[1] - 1, bos_id=BOS)
        out = torch.nn.functional.pad(out, (0, tgt.shape[1] - 1 - out.shape[1]), value=PAD)
        hits = (out == tgt[:, 1:])[:, :-1].view(b, MARKERS, TARGET + 1)[:, :, 1:]  # [b, markers, TARGET]
        segments += int(hits.all(-1).sum())
        documents += int(hits.all(-1).all(-1).sum())
        correct += int(hits.sum())
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
    result = train(model, name, train_ids, steps=steps, batch=batch, lr=lr, seed=seed, log=log)
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result["base_rss_mib"] = base
    model.eval()
    result.update(evaluate(model, name, test_ids, samples=eval_samples, seed=seed + 1))
    return result


def run(models=MODELS, steps: int = 100, batch: int = 4, lr: float = 2e-3, eval_samples: int = 64,
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
                     f"{r['marker_in_first_512']:.2f}", r["steps"], f"{r['train_s']:.0f}", f"{r['final_loss']:.3f}",
                     f"{r['peak_rss_mib']:.0f}"])
    warm = ", ".join(f"{n} x {b} documents of {lo}-{hi}" for n, b, lo, hi in WARMUP)
    head = (f"read back the {TARGET} token(s) after each of {MARKERS} markers, each placed at a random token of its "
            f"zone of a {MIN_LEN:,}-{MAX_LEN:,}-token document (pydoc topics, word and punctuation tokens; "
            f"evaluated on {eval_samples} held-out documents of random lengths, greedy decoding); E={embed_dim}, "
            f"{layers}+{layers} layers, Adam lr {lr}, seed {seed}; training: warm-up ({warm} tokens), then {steps} "
            f"steps of {batch} full-length documents (the truncated model sees their first {TRUNCATE} tokens)")
    table = format_table(["model", "exact match", "documents all right", "token accuracy", "markers in first 512",
                          "train steps", "train s", "final loss", "peak RSS MiB"], rows)
    return f"{head}\n\n{table}"


if __name__ == "__main__" and "--worker" in sys.argv:
    spec = json.loads(sys.argv[sys.argv.index("--worker") + 1])
    print(json.dumps(run_cell(**spec, log=lambda m: print(m, file=sys.stderr, flush=True))))
