import itertools
import math

import pytest
import torch
from tests.nn.reference import dense_attention

from graphattn import rules
from graphattn.models import CausalRule, DecoderCache, beam_search, greedy_search, row_attention
from graphattn.nn import graph_attention


# ---------------------------------------------------------------- CausalRule
@pytest.mark.parametrize("rule,params", [(rules.full, {}), (rules.band, dict(radius=3, causal=True)),
                                         (rules.band, dict(radius=2)), (rules.dilated, dict(radius=2, dilation=3)),
                                         (rules.block_local, dict(block_size=5))])
def test_length_free_rules_are_the_causal_part_of_the_rule(rule, params):
    causal = CausalRule(rule, **params)
    for n in (1, 7, 70):
        assert causal(n).equals(rule(n, **params).causal())


def test_a_context_fixes_the_rows_of_a_length_dependent_rule():
    params = dict(block_size=4, num_random_blocks=2, seed=3)
    causal = CausalRule(rules.bigbird, context=96, **params)
    ref = rules.bigbird(96, **params).causal()
    for n in (1, 13, 96):
        g = causal(n)
        assert g.num_nodes == n
        assert torch.equal(g.edge_index, ref.query_slice(0, n).edge_index)
    # without the context the rows change with the length (the last global block moves)
    assert not torch.equal(rules.bigbird(40, **params).causal().query_slice(0, 20).edge_index,
                           rules.bigbird(96, **params).causal().query_slice(0, 20).edge_index)


@pytest.mark.parametrize("causal", [CausalRule(rules.band, radius=5, causal=True),
                                    CausalRule(rules.bigbird, context=300, block_size=8, seed=1),
                                    CausalRule(rules.full)])
def test_row_keys_are_the_rows_of_the_graph(causal):
    positions = torch.tensor([0, 63, 64, 299, 5, 128])  # several row chunks at once
    index, valid = causal.row_keys(positions)
    g = causal(300)
    for b, t in enumerate(positions.tolist()):
        keys = g.edge_index[0, g.edge_index[1] == t].tolist()
        got = valid[b].nonzero().flatten() if index is None else index[b][valid[b]]
        assert sorted(got.tolist()) == keys


def test_causal_rule_errors():
    with pytest.raises(TypeError, match="expected rule to be callable"):
        CausalRule(3)
    with pytest.raises(ValueError, match="expected context >= 1, got 0"):
        CausalRule(rules.full, context=0)
    with pytest.raises(ValueError, match="expected at most context = 8 tokens, got n = 9"):
        CausalRule(rules.bigbird, context=8, block_size=2)(9)
    with pytest.raises(ValueError, match="expected positions < context = 8, got 8"):
        CausalRule(rules.bigbird, context=8, block_size=2).row_keys(torch.tensor([8]))
    with pytest.raises(ValueError, match="expected a rule whose graph has token nodes only"):
        CausalRule(rules.bigbird_etc, context=16, block_size=2, num_global=1)(4)
    assert repr(CausalRule(rules.band, radius=2)) == "CausalRule(band, radius=2)"


# ---------------------------------------------------------------- row attention
def test_row_attention_equals_dense_attention_and_the_engine():
    gen = torch.Generator().manual_seed(0)
    B, R, m, S, H, D = 3, 2, 5, 9, 2, 4
    q = torch.randn(B, R, H, D, generator=gen, dtype=torch.float64)
    k = torch.randn(B, S, H, D, generator=gen, dtype=torch.float64)
    v = torch.randn(B, S, H, 3, generator=gen, dtype=torch.float64)
    index = torch.stack([torch.randperm(S, generator=gen)[:m] for _ in range(B * R)]).view(B, R, m)
    valid = torch.rand(B, R, m, generator=gen) < 0.7
    valid[0, 1] = False  # a row without keys gives zeros
    bias = torch.randn(B, R, m, H, generator=gen, dtype=torch.float64)
    out = row_attention(q, k, v, valid, index, bias=bias)
    for b in range(B):
        mask = torch.zeros(R, S, dtype=torch.bool)
        dense_b = torch.zeros(H, R, S, dtype=torch.float64)
        for r in range(R):
            keys = index[b, r][valid[b, r]]
            mask[r, keys] = True
            dense_b[:, r, keys] = bias[b, r][valid[b, r]].t()
        ref, _ = dense_attention(q[b], k[b], v[b], mask, dense_b)
        torch.testing.assert_close(out[b], ref, rtol=1e-12, atol=1e-12)
        # the engine on the same edges
        r_ids, s_ids = valid[b].nonzero(as_tuple=True)
        edge_index = torch.stack([index[b][r_ids, s_ids], r_ids])
        order = torch.argsort(edge_index[1] * S + edge_index[0])
        eng = graph_attention(q[b], k[b], v[b], edge_index[:, order], bias=bias[b][r_ids, s_ids][order])
        torch.testing.assert_close(out[b], eng, rtol=1e-12, atol=1e-12)
    assert bool((out[0, 1] == 0).all())


def test_row_attention_over_a_prefix_of_the_cache():
    gen = torch.Generator().manual_seed(1)
    q = torch.randn(2, 1, 2, 4, generator=gen)
    k, v = torch.randn(2, 6, 2, 4, generator=gen), torch.randn(2, 6, 2, 4, generator=gen)
    valid = torch.tensor([[[True, True, True, False]], [[True, True, False, False]]])
    out = row_attention(q, k, v, valid)
    ref = row_attention(q, k, v, valid, torch.arange(4).expand(2, 1, 4))
    torch.testing.assert_close(out, ref)
    assert out.dtype == torch.float32


def test_cache_write_and_reorder():
    cache = DecoderCache.empty(2, 3, 4, 1, 2, dtype=torch.float64, device="cpu")
    cache.extra["inputs"] = torch.arange(3.0)[:, None]
    cache.write(1, torch.tensor([0, 2, 3]), torch.ones(3, 1, 2), torch.full((3, 1, 2), 2.0))
    assert cache.keys[1][:, :, 0, 0].tolist() == [[1, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]
    cache.lengths = torch.tensor([1, 3, 4])
    cache.reorder(torch.tensor([2, 2, 0]))
    assert cache.lengths.tolist() == [4, 4, 1] and cache.extra["inputs"].flatten().tolist() == [2, 2, 0]
    assert cache.values[1][:, :, 0, 0].tolist() == [[0, 0, 0, 2], [0, 0, 0, 2], [2, 0, 0, 0]]
    with pytest.raises(ValueError, match="expected the cache to hold slot 4, got capacity 4"):
        cache.write(0, torch.tensor([4, 0, 0]), torch.ones(3, 1, 2), torch.ones(3, 1, 2))


# ---------------------------------------------------------------- search
class ToyModel:
    """Next-token scores as a deterministic function of the whole prefix of each row (a
    hash-seeded draw), so beams that share a last token still differ. ``reorder`` moves rows."""

    def __init__(self, batch: int, vocab: int, seed: int = 0):
        self.vocab, self.seed = vocab, seed
        self.prefix = [(b,) for b in range(batch)]
        self.calls = 0

    def logits(self, prefix) -> torch.Tensor:
        gen = torch.Generator().manual_seed(hash((self.seed, prefix)) % (2**31))
        return 2.0 * torch.randn(self.vocab, generator=gen, dtype=torch.float64)

    def first(self) -> torch.Tensor:
        return torch.stack([self.logits(p) for p in self.prefix])

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.prefix = [p + (int(t),) for p, t in zip(self.prefix, tokens)]
        return self.first()

    def reorder(self, index: torch.Tensor) -> None:
        self.prefix = [self.prefix[i] for i in index.tolist()]

    def expand(self, beams: int) -> None:
        self.prefix = [p for p in self.prefix for _ in range(beams)]


def _score(model: ToyModel, b: int, seq, lp: float) -> float:
    prefix, total = (b,), 0.0
    for t in seq:
        total += float(torch.log_softmax(model.logits(prefix), -1)[t])
        prefix = prefix + (t,)
    return total / len(seq) ** lp


def _beam(batch, vocab, beams, max_new, eos, lp, seed=0):
    toy = ToyModel(batch, vocab, seed)
    toy.expand(beams)
    return beam_search(toy.step, toy.reorder, toy.first(), num_beams=beams, max_new_tokens=max_new, eos_id=eos,
                       length_penalty=lp), toy


def test_greedy_picks_the_argmax_and_pads_after_eos():
    toy = ToyModel(4, 5)
    out = greedy_search(toy.step, toy.first(), max_new_tokens=6, eos_id=2, pad_id=4)
    for b in range(4):
        prefix, ended = (b,), False
        for t in out[b].tolist():
            if ended:
                assert t == 4
                continue
            assert t == int(toy.logits(prefix).argmax())
            prefix, ended = prefix + (t,), t == 2


@pytest.mark.parametrize("lp", [0.0, 1.0, -0.5])
def test_one_beam_is_greedy(lp):
    beam, _ = _beam(6, 5, 1, 7, 1, lp, seed=1)
    toy = ToyModel(6, 5, seed=1)
    greedy = greedy_search(toy.step, toy.first(), max_new_tokens=7, eos_id=1)
    if lp == 0.0:
        assert torch.equal(beam, greedy)
    # with a length penalty a longer hypothesis may overtake an early eos: greedy is a lower bound
    for b in range(6):
        cut = lambda s: s[: s.index(1) + 1] if 1 in s else s  # noqa: E731
        sb, sg = cut(beam[b].tolist()), cut(greedy[b].tolist())
        assert _score(ToyModel(6, 5, 1), b, sb, lp) >= _score(ToyModel(6, 5, 1), b, sg, lp) - 1e-12


@pytest.mark.parametrize("lp", [0.0, 1.0, -0.5])
def test_wide_beam_finds_the_best_sequence_by_enumeration(lp):
    V, L, eos = 3, 4, 0
    out, _ = _beam(3, V, 30, L, eos, lp)  # 30 beams hold every live prefix: exhaustive
    ref_model = ToyModel(3, V)
    for b in range(3):
        seqs = set()
        for length in range(1, L + 1):
            for s in itertools.product(range(V), repeat=length):
                if eos in s[:-1]:
                    continue
                if s[-1] == eos or length == L:
                    seqs.add(s)
        best = max(seqs, key=lambda s: _score(ref_model, b, s, lp))
        got = out[b].tolist()
        got = tuple(got[: got.index(eos) + 1]) if eos in got else tuple(got)
        assert math.isclose(_score(ref_model, b, got, lp), _score(ref_model, b, best, lp), rel_tol=1e-12)
        assert got == best


def _reference_beam(model: ToyModel, b: int, K: int, max_new: int, eos: int, lp: float):
    """Per-sample beam search with Python lists: the same rules, bookkept differently."""
    alive = [(0.0, ())]
    best = (-math.inf, None)
    for t in range(max_new):
        cands = []
        for score, seq in alive:
            logp = torch.log_softmax(model.logits((b,) + seq), -1)
            cands += [(score + float(logp[v]), seq + (v,)) for v in range(model.vocab)]
        cands.sort(key=lambda c: -c[0])
        cands = cands[: 2 * K]
        for rank, (score, seq) in enumerate(cands):
            if seq[-1] == eos and rank < K and score / len(seq) ** lp > best[0]:
                best = (score / len(seq) ** lp, seq)
        alive = [c for c in cands if c[1][-1] != eos][:K]
        top = max(s for s, _ in alive)
        reach = top / max_new ** lp if lp > 0 else (top / (t + 2) ** lp if lp < 0 else top)
        if best[0] >= reach:
            return best[1]
    live = max(alive, key=lambda c: c[0])
    return live[1] if live[0] / max_new ** lp > best[0] else best[1]


@pytest.mark.parametrize("beams,lp", [(2, 0.0), (3, 1.0), (4, 0.0), (3, -0.5)])
def test_beam_search_matches_a_list_based_reference(beams, lp):
    V, L, eos = 6, 6, 2
    out, _ = _beam(5, V, beams, L, eos, lp, seed=2)
    for b in range(5):
        ref = _reference_beam(ToyModel(5, V, 2), b, beams, L, eos, lp)
        got = out[b].tolist()
        got = tuple(got[: got.index(eos) + 1]) if eos in got else tuple(got)
        assert got == ref, b
        assert out[b, len(ref):].eq(eos).all()  # padded with eos (the default pad_id)


def test_search_errors():
    toy = ToyModel(2, 4)
    with pytest.raises(ValueError, match="expected max_new_tokens >= 1, got 0"):
        greedy_search(toy.step, toy.first(), max_new_tokens=0)
    with pytest.raises(ValueError, match="expected eos_id <= 3, got 4"):
        greedy_search(toy.step, toy.first(), max_new_tokens=2, eos_id=4)
    with pytest.raises(ValueError, match="expected logits with B \\* num_beams rows, got 2 rows for 3 beams"):
        beam_search(toy.step, toy.reorder, toy.first(), num_beams=3, max_new_tokens=2)
    with pytest.raises(ValueError, match="expected num_beams >= 1, got 0"):
        beam_search(toy.step, toy.reorder, toy.first(), num_beams=0, max_new_tokens=2)
