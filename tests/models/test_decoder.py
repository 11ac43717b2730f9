import pytest
import torch
from graphattn import rules
from graphattn.bench.decode import count_plan_builds
from graphattn.models import BPTDecoder, CausalRule, GraphRule, SparseDecoder, beam_search

GRAPHS = {
    "full": lambda: CausalRule(rules.full),
    "band": lambda: CausalRule(rules.band, radius=3, causal=True),
    "bigbird": lambda: CausalRule(rules.bigbird, context=160, block_size=4, num_random_blocks=2, seed=0),
}


def _model(name, **kw):
    torch.manual_seed(0)
    if name == "bpt":
        model = BPTDecoder(20, 8, 2, 2, k=1, max_len=160, **kw)
    else:
        model = SparseDecoder(20, 8, 2, 2, GRAPHS[name](), max_len=160, **kw)
    model = model.double().eval()
    for m in model.modules():
        if getattr(m, "relative_bias", None) is not None:
            torch.nn.init.normal_(m.relative_bias.weight)
    return model


def _ragged(B, width, gen, min_len=1):
    tokens = torch.randint(0, 20, (B, width), generator=gen)
    lengths = torch.randint(min_len, width + 1, (B,), generator=gen)
    lengths[0] = width
    mask = torch.arange(width)[None] < lengths[:, None]
    return tokens, mask


@pytest.mark.parametrize("name", ["full", "band", "bigbird", "bpt"])
def test_padded_batch_equals_each_sample_alone(name):
    model = _model(name)
    tokens, mask = _ragged(4, 37, torch.Generator().manual_seed(1))
    mask[1] = mask[1].flip(0)
    out = model(tokens, mask)
    for b in range(4):
        alone = model(tokens[b][mask[b]][None])[0]
        torch.testing.assert_close(out[b][mask[b]], alone, rtol=1e-9, atol=1e-9)
    assert bool((out[~mask] == 0).all())


@pytest.mark.parametrize("name", ["full", "band", "bigbird", "bpt"])
def test_logits_depend_on_the_past_only(name):
    """Edit token j: the logits before j are unchanged bit for bit, those from j on change."""
    model = _model(name)
    x = torch.randint(0, 20, (1, 33), generator=torch.Generator().manual_seed(5))
    base = model(x)[0]
    for j in (0, 7, 16, 32):
        edited = x.clone()
        edited[0, j] = (edited[0, j] + 1) % 20
        out = model(edited)[0]
        assert torch.equal(out[:j], base[:j])
        assert bool((out[j:] - base[j:]).abs().amax(-1)[0] > 0)


@pytest.mark.parametrize("name", ["full", "band", "bigbird", "bpt"])
def test_incremental_decoding_equals_the_full_forward_at_every_step(name):
    """Prompts of different lengths (samples decode at different positions), then every
    remaining token fed one step at a time; float64, 1e-9."""
    model = _model(name)
    gen = torch.Generator().manual_seed(2)
    T = 70  # several 64-row chunks of the graph, BPT spans up to level 6
    seqs = torch.randint(0, 20, (3, T), generator=gen)
    full = model(seqs)
    prompt_len = torch.tensor([5, 1, 17])
    prompt_mask = torch.arange(17)[None] < prompt_len[:, None]
    prompt = torch.where(prompt_mask, seqs[:, :17], 0)
    cache, logits = model.prefill(prompt, prompt_mask, capacity=T)
    torch.testing.assert_close(logits, full[torch.arange(3), prompt_len - 1], rtol=1e-9, atol=1e-9)
    pos = prompt_len.clone()
    for _ in range(T - 17):
        logits = model.decode_step(seqs[torch.arange(3), pos], cache)
        torch.testing.assert_close(logits, full[torch.arange(3), pos], rtol=1e-9, atol=1e-9)
        pos += 1
    assert cache.lengths.tolist() == pos.tolist()


@pytest.mark.parametrize("name", ["band", "bpt"])
def test_generate_greedy_equals_argmax_of_the_full_forward_and_one_beam(name):
    model = _model(name)
    model.train()
    tokens, mask = _ragged(3, 9, torch.Generator().manual_seed(3), min_len=2)
    out = model.generate(tokens, mask, max_new_tokens=12)
    assert model.training and out.shape == (3, 12)
    model.eval()
    for b in range(3):
        seq = torch.cat([tokens[b][mask[b]], out[b]])[None]
        pred = model(seq[:, :-1])[0].argmax(-1)[int(mask[b].sum()) - 1:]
        assert torch.equal(pred, out[b])
    assert torch.equal(model.generate(tokens, mask, max_new_tokens=12, num_beams=1), out)


def test_beam_search_with_the_cache_equals_beam_search_on_full_forwards():
    model = _model("bpt", tie_embeddings=False)
    torch.nn.init.normal_(model.output.weight, std=0.7)
    tokens, mask = _ragged(2, 6, torch.Generator().manual_seed(4), min_len=3)
    out = model.generate(tokens, mask, max_new_tokens=7, eos_id=3, num_beams=4)

    class FullForward:
        def __init__(self):
            self.seqs = [tokens[b][mask[b]] for b in range(2) for _ in range(4)]

        def logits(self):
            return torch.stack([model(s[None])[0, -1] for s in self.seqs])

        def step(self, new):
            self.seqs = [torch.cat([s, t[None]]) for s, t in zip(self.seqs, new)]
            return self.logits()

        def reorder(self, index):
            self.seqs = [self.seqs[i] for i in index.tolist()]

    ref_model = FullForward()
    ref = beam_search(ref_model.step, ref_model.reorder, ref_model.logits(), num_beams=4, max_new_tokens=7, eos_id=3)
    assert torch.equal(out, ref)


def test_decoder_errors():
    with pytest.raises(TypeError, match="expected graph to be a CausalRule, got GraphRule"):
        SparseDecoder(20, 8, 2, 1, GraphRule(rules.band, radius=1))
    model = _model("band")
    with pytest.raises(ValueError, match="expected sequences of at most max_len = 160 tokens, got 161"):
        model(torch.zeros(1, 161, dtype=torch.long))
    with pytest.raises(ValueError, match=r"expected capacity >= the longest prompt \(5 tokens\), got 4"):
        model.prefill(torch.zeros(1, 5, dtype=torch.long), capacity=4)
    cache, _ = model.prefill(torch.zeros(1, 3, dtype=torch.long), capacity=3)
    with pytest.raises(ValueError, match=r"expected a free position in the cache \(capacity 3, max_len 160\), got position 3"):
        model.decode_step(torch.zeros(1, dtype=torch.long), cache)
    with pytest.raises(ValueError, match="expected k >= 1, got 0"):
        BPTDecoder(20, 8, 2, 1, k=0)


@pytest.mark.parametrize("name", ["bigbird", "bpt"])
def test_generate_builds_the_prompt_plan_only(name):
    model = _model(name)
    tokens, mask = _ragged(3, 20, torch.Generator().manual_seed(6))
    with count_plan_builds() as count:
        model.generate(tokens, mask, max_new_tokens=30, num_beams=2)
    assert count[0] == 1  # the prompt's union graph, shared by both layers
    with count_plan_builds() as count:
        model.generate(tokens, mask, max_new_tokens=30)
    assert count[0] == 0
