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


def test_use_rejects_strings():
    with pytest.raises(TypeError, match="expected backend to be a graphattn.nn.backends.Backend, got str"):
        with use("triton"):
            pass


def test_auto_on_cpu_is_the_torch_engine():
    q, k, v = qkv()
    plan = build_plan(rules.band(12, radius=2).edge_index, 12, 12)
    assert backends.select(q, k, v, plan=plan) is Backend.TORCH
    g = rules.band(12, radius=2)
    with use(Backend.TORCH):
        forced = graph_attention(q, k, v, g)
    assert torch.equal(graph_attention(q, k, v, g), forced)


def test_forced_triton_on_cpu_without_interpreter_says_why():
    from graphattn.nn import triton_kernels

    if triton_kernels.unavailable_reason("cpu", torch.float32) is None:
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
