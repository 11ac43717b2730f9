import itertools

import pytest
import torch

from graphattn import rules
from graphattn.bench import seq2seq
from graphattn.bench.__main__ import main


@pytest.fixture(scope="module")
def data():
    return seq2seq._data()


def _clean(text):  # whitespace runs to one space, runs of 3+ of one symbol to one symbol
    out = []
    for c, run in itertools.groupby(" ".join(text.split())):
        n = len(list(run))
        out.append(c if n >= 3 and not (c.isalnum() or c == "_" or c == " ") else c * n)
    return "".join(out)


def test_corpus_holds_out_every_fifth_topic():
    from pydoc_data.topics import topics

    train, test = seq2seq.corpus()
    names = sorted(topics)
    assert test == " ".join(_clean(topics[t]) for t in names[::5])
    assert train == " ".join(_clean(topics[t]) for i, t in enumerate(names) if i % 5)
    assert len(train) > 5 * seq2seq.MAX_LEN and len(test) > 2 * seq2seq.MAX_LEN


def test_vocabulary_round_trip_and_unknown_characters(data):
    vocab, train_ids, test_ids = data
    assert len(vocab) == len(seq2seq.SPECIALS) + len(vocab.chars)
    assert int(train_ids.min()) >= len(seq2seq.SPECIALS) and int(train_ids.max()) < len(vocab)
    assert vocab.decode(vocab.encode("def f(x):").tolist()) == "def f(x):"
    assert vocab.encode("\x00").tolist() == [vocab.index[" "]]  # not in the text: a space
    assert vocab.decode([seq2seq.BOS, seq2seq.MARK + 2]) == "<bos><mark2>"


@pytest.mark.parametrize("seed", [0, 1])
def test_make_batch_targets_are_the_characters_after_each_marker(data, seed):
    vocab, train_ids, _ = data
    B, M, T = 3, seq2seq.MARKERS, seq2seq.TARGET
    space = vocab.index[" "]
    src, mask, tgt, marks = seq2seq.make_batch(train_ids, B, torch.Generator().manual_seed(seed), space=space)
    lengths = mask.sum(1)
    assert mask.shape == src.shape and tgt.shape == (B, 2 + M * (T + 1)) and marks.shape == (B, M)
    assert bool(((lengths >= seq2seq.MIN_LEN + M) & (lengths <= seq2seq.MAX_LEN + M)).all())
    assert bool((src[~mask] == seq2seq.PAD).all()) and bool((src[mask] != seq2seq.PAD).all())
    for b in range(B):
        n = int(lengths[b])
        row = src[b, :n]
        is_marker = (row >= seq2seq.MARK) & (row < seq2seq.MARK + M)
        assert torch.nonzero(is_marker).flatten().tolist() == marks[b].tolist()  # in order, one each
        assert row[marks[b]].tolist() == list(range(seq2seq.MARK, seq2seq.MARK + M))
        text = row[~is_marker]  # the document window, markers removed: a slice of the text
        starts = torch.nonzero((train_ids.unfold(0, 32, 1) == text[:32]).all(1)).flatten().tolist()
        assert any(torch.equal(train_ids[s:s + text.numel()], text) for s in starts)
        assert tgt[b, 0] == seq2seq.BOS and tgt[b, -1] == seq2seq.EOS
        segments = tgt[b, 1:-1].view(M, T + 1)
        for m in range(M):
            p = int(marks[b, m])
            assert segments[m, 0] == seq2seq.MARK + m
            assert segments[m, 1:].tolist() == row[p + 1:p + 1 + T].tolist()  # no marker among them
            assert p == 0 or row[p - 1] == space  # a word starts there
        L = n - M  # marker m lies in zone m of the window
        assert all(L * m // M <= int(marks[b, m]) - m < L * (m + 1) // M for m in range(M))


def test_make_batch_is_reproducible_from_the_generator(data):
    vocab, train_ids, _ = data
    a = seq2seq.make_batch(train_ids, 2, torch.Generator().manual_seed(5), space=vocab.index[" "])
    b = seq2seq.make_batch(train_ids, 2, torch.Generator().manual_seed(5), space=vocab.index[" "])
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_with_relative_ids_are_clipped_offsets():
    g = rules.bigbird(70, block_size=5, num_window_blocks=3, num_random_blocks=1, num_global_blocks=1, seed=3)
    r = seq2seq.with_relative(70, base=rules.bigbird, radius=4, block_size=5, num_window_blocks=3,
                              num_random_blocks=1, num_global_blocks=1, seed=3)
    assert torch.equal(r.edge_index, g.edge_index) and torch.equal(r.node_type, g.node_type)
    for (j, i), rel in zip(r.edge_index.t().tolist(), r.relative.tolist()):
        assert rel == min(max(i - j, -4), 4) + 4


def test_make_model_is_seeded_and_leaves_the_global_generator_alone():
    state = torch.random.get_rng_state()
    a = seq2seq.make_model("bigbird", 30, embed_dim=8, num_heads=2, layers=1, seed=4)
    b = seq2seq.make_model("bigbird", 30, embed_dim=8, num_heads=2, layers=1, seed=4)
    c = seq2seq.make_model("truncated", 30, embed_dim=8, num_heads=2, layers=1, seed=5)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))
    assert not torch.equal(a.encoder_embedding.weight, c.encoder_embedding.weight)
    g = a.encoder.graphs[0](100)
    assert g.relative is not None and int(g.relative.max()) < 2 * seq2seq.RELATIVE + 1
    assert c.encoder.graphs[0](7).num_edges == 49  # full attention
    with pytest.raises(ValueError, match="expected name in"):
        seq2seq.make_model("dense", 30)


def test_train_and_evaluate_run_at_tiny_size(data):
    vocab, train_ids, test_ids = data
    model = seq2seq.make_model("truncated", len(vocab), embed_dim=8, num_heads=2, layers=1, seed=0)
    space = vocab.index[" "]
    r = seq2seq.train(model, "truncated", train_ids, space=space, steps=2, batch=2, lr=1e-3, seed=0,
                      lengths=(200, 300))
    assert r["steps"] == 2 and r["train_s"] > 0 and r["final_loss"] > 0
    e = seq2seq.evaluate(model, "truncated", test_ids, space=space, samples=3, seed=1, batch=2,
                          lengths=(200, 300))
    assert set(e) == {"exact_match", "document_match", "token_accuracy", "marker_in_first_512"}
    assert all(0 <= v <= 1 for v in e.values())
    assert e["marker_in_first_512"] == 1.0  # 300-character documents lie inside the first 512 tokens


def test_seq2seq_suite_table(monkeypatch, capsys):
    calls = []

    def spawn(module, spec, timeout, env=None):
        calls.append(spec)
        if spec["name"] == "truncated":
            return {"skip": "timeout > 5 s"}
        return {"exact_match": 0.5, "document_match": 0.25, "token_accuracy": 0.75, "steps": spec["steps"],
                "train_s": 12.3, "final_loss": 0.4, "peak_rss_mib": 700.0, "marker_in_first_512": 0.1}

    monkeypatch.setattr(seq2seq, "spawn_worker", spawn)
    assert main(["seq2seq", "--steps", "7", "--eval-samples", "3", "--timeout", "5"]) == 0
    out = capsys.readouterr().out
    assert [c["name"] for c in calls] == ["bigbird", "truncated"] and calls[0]["steps"] == 7
    assert "| bigbird   | 0.500       | 0.250" in out and "| 0.750 " in out and "| 700 " in out
    assert "| truncated | -" in out and "timeout > 5 s" in out and "7 steps each" in out


def test_seq2seq_suite_rejects_bad_arguments(capsys):
    assert main(["seq2seq", "--steps", "0"]) == 2
    assert "expected an int >= 1, got 0" in capsys.readouterr().err
    assert main(["seq2seq", "--models", "dense"]) == 2

