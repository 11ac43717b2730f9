"""Backend selection for graph_attention (graphattn.nn.backends): the context manager, the
automatic choice, and the errors of a forced backend that cannot run. The Triton kernels
themselves are checked in test_triton_kernels.py (interpreter subprocess)."""

import threading

import pytest
import torch

from graphattn import rules
from graphattn.nn import graph_attention
from graphattn.nn import backends
from graphattn.nn.backends import Backend, use
from graphattn.nn.plan import build_plan


def qkv(n=12, H=2, D=4, requires_grad=False):
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(n, H, D, generator=gen).requires_grad_(requires_grad) for _ in range(3)]


def test_use_nests_and_restores():
    assert backends.current() is Backend.AUTO
    with use(Backend.FLEX):
        assert backends.current() is Backend.FLEX
        with use(Backend.TORCH) as b:
            assert b is Backend.TORCH and backends.current() is Backend.TORCH
        assert backends.current() is Backend.FLEX
    assert backends.current() is Backend.AUTO
    with pytest.raises(RuntimeError):
        with use(Backend.TORCH):
            raise RuntimeError("boom")
    assert backends.current() is Backend.AUTO


def test_use_is_per_thread():
    seen = []
    with use(Backend.TORCH):
        t = threading.Thread(target=lambda: seen.append(backends.current()))
        t.start()
        t.join()
    assert seen == [Backend.AUTO]


def test_use_takes_names_and_rejects_unknown_ones():
    with use("torch") as b:
        assert b is Backend.TORCH and backends.current() == "torch"
    with pytest.raises(ValueError, match="expected a registered backend .* got 'cuda_cpp'"):
        with use("cuda_cpp"):
            pass
    with pytest.raises(TypeError, match="expected backend to be a graphattn.nn.backends.Backend or a registered"):
        with use(3):
            pass


class _RecordingBackend:
    """A backend written against the interface only: the torch engine behind a call log."""

    auto_devices = ("cpu",)

    def __init__(self, decline=None):
        self.calls, self.decline = [], decline

    def unavailable_reason(self, q, k, v, *, plan, bias, dropout_p, needs_grad, score_bound):
        return self.decline

    def attention(self, q, k, v, bias, plan, scale, dropout_p, drop_key, score_bound):
        self.calls.append((tuple(q.shape), plan.num_edges, scale))
        return backends.get(Backend.TORCH).attention(q, k, v, bias, plan, scale, dropout_p, drop_key, score_bound)


@pytest.fixture
def registry():
    saved = dict(backends._REGISTRY)
    yield
    backends._REGISTRY.clear()
    backends._REGISTRY.update(saved)


def test_a_new_backend_is_one_registration(registry):
    rec = _RecordingBackend()
    backends.register("recording", rec)
    assert list(backends.registered())[-1] == "recording"
    q, k, v = qkv(requires_grad=True)
    g = rules.band(12, radius=2)
    out = graph_attention(q, k, v, g)  # AUTO tries it on CPU: its auto_devices say so
    assert rec.calls == [((12, 2, 4), g.num_edges, 0.5)]
    out.sum().backward()
    with use("recording"):
        graph_attention(q, k, v, g, scale=0.25)
    assert rec.calls[-1][2] == 0.25
    with pytest.raises(ValueError, match="registered already"):
        backends.register("recording", _RecordingBackend())
    with pytest.raises(TypeError, match="implement AttentionBackend"):
        backends.register("broken", object())


def test_a_declining_backend_is_skipped_by_auto_and_explains_when_forced(registry):
    backends.register("picky", _RecordingBackend(decline="only on Tuesdays"))
    q, k, v = qkv()
    g = rules.band(12, radius=2)
    assert backends.select(q, k, v, plan=build_plan(g.edge_index, 12, 12)) is Backend.TORCH
    with use("picky"), pytest.raises(RuntimeError, match="backend 'picky' was requested but cannot run: only on Tuesdays"):
        graph_attention(q, k, v, g)


def test_auto_on_cpu_is_the_torch_engine():
    q, k, v = qkv()
    plan = build_plan(rules.band(12, radius=2).edge_index, 12, 12)
    assert backends.select(q, k, v, plan=plan) is Backend.TORCH
    g = rules.band(12, radius=2)
    with use(Backend.TORCH):
        forced = graph_attention(q, k, v, g)
    assert torch.equal(graph_attention(q, k, v, g), forced)


def test_forced_triton_on_cpu_without_interpreter_says_why():
    from graphattn.nn import triton as fused

    if fused.unavailable_reason("cpu", torch.float32) is None:
        pytest.skip("this process runs the Triton interpreter")
    q, k, v = qkv()
    with use(Backend.TRITON), pytest.raises(RuntimeError, match="backend TRITON was requested but cannot run: "):
        graph_attention(q, k, v, rules.band(12, radius=2))


def test_forced_triton_rejects_float64():
    q, k, v = (t.double() for t in qkv())
    with use(Backend.TRITON), pytest.raises(RuntimeError, match="backend TRITON was requested but cannot run"):
        graph_attention(q, k, v, rules.band(12, radius=2))


def test_forced_flex_errors_name_the_reason():
    g = rules.band(12, radius=2)
    q, k, v = qkv(requires_grad=True)
    with use(Backend.FLEX):
        with pytest.raises(RuntimeError, match="FlexAttention has no attention dropout"):
            graph_attention(q, k, v, g, dropout_p=0.1)
        with pytest.raises(RuntimeError, match="no FlexAttention backward on CPU"):
            graph_attention(q, k, v, g)
        with torch.no_grad():
            out = graph_attention(q, k, v, g, tile=4)
    with use(Backend.TORCH), torch.no_grad():
        ref = graph_attention(q, k, v, g, tile=4)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", list(backends.registered()))
def test_every_registered_backend_is_exact_or_says_why(name):
    """Walks the registry: a new backend gets its output, lse and gradients checked against the
    float64 dense reference on a graph with dense tiles, sparse edges and a keyless query, or it
    must decline the call with a reason (a string), never run it wrongly."""
    from graphattn.nn.reference import dense_attention, dense_mask

    n, H, D = 40, 2, 8
    g = rules.band(n, radius=3) | rules.random(n, num_random_keys=2, seed=1)
    ei = g.edge_index[:, g.edge_index[1] != 5]  # query 5: no keys
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(n, H, D, generator=gen, requires_grad=True) for _ in range(3))
    from graphattn.nn.plan import get_plan

    plan = get_plan(ei, n, n, tile=16, dense_threshold=0.25)
    why = backends.get(name).unavailable_reason(q, k, v, plan=plan, bias=None, dropout_p=0.0, needs_grad=True,
                                                score_bound=8.0)
    if why is not None:
        assert isinstance(why, str) and why
        with use(name), pytest.raises(RuntimeError, match="cannot run"):
            graph_attention(q, k, v, ei, num_queries=n)
        return
    with use(name):
        out, lse = graph_attention(q, k, v, ei, num_queries=n, return_lse=True)
    ref_in = [t.detach().double().requires_grad_() for t in (q, k, v)]
    mask = dense_mask(ei, n, n)
    ref = dense_attention(*ref_in, mask)[0]
    scores = torch.einsum("ihd,jhd->hij", ref_in[0], ref_in[1]) * D**-0.5
    ref_lse = torch.logsumexp(scores.masked_fill(~mask, float("-inf")), dim=-1).t()  # [n, H]
    go = torch.randn(out.shape, generator=gen, dtype=torch.float64)
    grads = torch.autograd.grad((out.double() * go).sum() + lse[lse.isfinite()].double().sum(), (q, k, v))
    ref_grads = torch.autograd.grad((ref * go).sum() + ref_lse[ref_lse.isfinite()].sum(), ref_in)
    assert torch.allclose(out.double(), ref, atol=1e-5) and torch.equal(lse.isfinite(), ref_lse.isfinite())
    assert torch.allclose(lse[lse.isfinite()].double(), ref_lse[ref_lse.isfinite()], atol=1e-5)
    for got, want in zip(grads, ref_grads):
        assert torch.allclose(got.double(), want, atol=1e-4)
