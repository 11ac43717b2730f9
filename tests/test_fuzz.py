"""A fuzzer over the public API (hypothesis).

``graph_attention`` on random edge lists (empty, keyless queries, repeated edges, one query with
every key), random shapes, dtypes and values (normal, huge, NaN, +-inf), with and without bias and
per-head masks: either a documented error (TypeError / ValueError) or outputs and gradients equal
to the float64 dense reference on every query the inputs did not poison, and NaN exactly on the
poisoned ones. Every rule with random arguments (ints of any sign, floats, bools, None, strings,
lists): either a TypeError / ValueError / MemoryError that names a parameter, or a graph whose
edges are unique, sorted and in range.

The default profile draws a few dozen examples per test (seconds); ``HYPOTHESIS_PROFILE=ci``
draws several hundred (the longer run in ``.ci/run``).
"""

from __future__ import annotations

import inspect

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from graphattn import AttentionGraph, rules
from graphattn._memory import memory_limit
from graphattn.nn import graph_attention
from graphattn.nn.reference import dense_attention

FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

DTYPES = [torch.float32, torch.float64, torch.bfloat16]
TOL = {torch.float32: 1e-4, torch.float64: 1e-9, torch.bfloat16: 3e-2}


@st.composite
def attention_calls(draw):
    nq = draw(st.integers(0, 24))
    nk = draw(st.integers(0, 24))
    H = draw(st.integers(1, 3))
    D = draw(st.integers(1, 9))
    Dv = draw(st.integers(1, 6))
    dtype = draw(st.sampled_from(DTYPES))
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    shape = draw(st.sampled_from(["random", "empty", "hub", "repeats", "full"]))
    E = 0
    if nq and nk:
        if shape == "random":
            E = draw(st.integers(0, 3 * nq * nk))
            ei = torch.stack([torch.randint(0, nk, (E,), generator=gen), torch.randint(0, nq, (E,), generator=gen)])
        elif shape == "hub":  # one query attends every key, twice; the rest a key each
            ei = torch.cat([torch.stack([torch.arange(nk).repeat(2), torch.zeros(2 * nk, dtype=torch.long)]),
                            torch.stack([torch.randint(0, nk, (nq,), generator=gen), torch.arange(nq)])], dim=1)
        elif shape == "repeats":
            base = torch.stack([torch.randint(0, nk, (nq,), generator=gen), torch.arange(nq)])
            ei = base.repeat(1, draw(st.integers(1, 4)))
        elif shape == "full":
            ei = torch.stack([torch.arange(nk).repeat(nq), torch.arange(nq).repeat_interleave(nk)])
        else:
            ei = torch.zeros(2, 0, dtype=torch.long)
    else:
        ei = torch.zeros(2, 0, dtype=torch.long)
    E = ei.shape[1]
    magnitude = draw(st.sampled_from([1.0, 1.0, 30.0, 1e3, 1e4]))
    q = torch.randn(nq, H, D, generator=gen) * magnitude
    k = torch.randn(nk, H, D, generator=gen) * magnitude
    v = torch.randn(nk, H, Dv, generator=gen)
    bias = None
    if draw(st.booleans()):
        bias = torch.randn(E, H, generator=gen) * draw(st.sampled_from([1.0, 100.0]))
        if E and draw(st.booleans()):
            bias[torch.rand(E, H, generator=gen) < 0.2] = float("-inf")
    head_mask = None
    if H > 1 and E and draw(st.booleans()):
        head_mask = torch.rand(E, H, generator=gen) < 0.7
    # Poison a few entries.
    poison = draw(st.lists(st.tuples(st.sampled_from(["q", "k", "v", "bias"]), st.integers(0, 10**6),
                                     st.sampled_from([float("nan"), float("inf"), float("-inf")])), max_size=2))
    tensors = dict(q=q, k=k, v=v, bias=bias)
    for name, pos, val in poison:
        t = tensors[name]
        if t is None or t.numel() == 0:
            continue
        if name == "bias" and val != val:  # NaN bias (a +inf bias is an error, -inf removes an edge)
            t.view(-1)[pos % t.numel()] = val
        elif name != "bias":
            t.view(-1)[pos % t.numel()] = val
    q, k, v = (tensors[n].to(dtype) for n in "qkv")
    bias = None if tensors["bias"] is None else tensors["bias"].to(dtype)
    return q, k, v, ei, bias, head_mask


def dense_reference(q, k, v, ei, bias, head_mask):
    """float64 (out, poisoned [Nq, H]) with the copy-counting softmax of repeated edges."""
    nq, H = q.shape[:2]
    nk = k.shape[0]
    qd, kd, vd = (t.double() for t in (q, k, v))
    b = torch.zeros(ei.shape[1], H, dtype=torch.float64) if bias is None else bias.double()
    active = torch.ones(ei.shape[1], H, dtype=torch.bool) if head_mask is None else head_mask
    bad_q = ~torch.isfinite(qd).all(-1)
    bad_kv = ~(torch.isfinite(kd).all(-1) & torch.isfinite(vd).all(-1))
    poisoned = bad_q.clone()
    for e in range(ei.shape[1]):
        j, i = int(ei[0, e]), int(ei[1, e])
        poisoned[i] |= active[e] & (bad_kv[j] | torch.isnan(b[e]))
    # weights per cell: sum over copies of exp(bias) (a -inf bias adds nothing)
    clean_b = torch.where(torch.isnan(b), torch.zeros_like(b), b)  # -inf stays: it removes the copy
    cells = torch.zeros(H, nq, nk, dtype=torch.float64)
    top = torch.full((H, nq, nk), float("-inf"), dtype=torch.float64)
    for e in range(ei.shape[1]):
        j, i = int(ei[0, e]), int(ei[1, e])
        for h in range(H):
            if active[e, h]:
                top[h, i, j] = max(float(top[h, i, j]), float(clean_b[e, h]))
    for e in range(ei.shape[1]):
        j, i = int(ei[0, e]), int(ei[1, e])
        for h in range(H):
            if active[e, h] and top[h, i, j] > float("-inf"):
                cells[h, i, j] += float(torch.exp(clean_b[e, h] - top[h, i, j]))
    mask = cells > 0
    bias_d = torch.where(mask, top + torch.log(torch.where(mask, cells, torch.ones_like(cells))), torch.zeros_like(cells))
    clean = [torch.nan_to_num(t, nan=0.0, posinf=0.0, neginf=0.0) for t in (qd, kd, vd)]
    out, _ = dense_attention(*clean, mask, bias_d)
    return out, poisoned


@FUZZ
@given(attention_calls())
def test_graph_attention_is_exact_or_says_why(call):
    q, k, v, ei, bias, head_mask = call
    try:
        with memory_limit("2G"):
            out = graph_attention(q, k, v, ei, bias=bias, head_mask=head_mask)
    except (TypeError, ValueError) as err:
        pytest.fail(f"a valid call was refused: {err}")
    assert out.shape == (q.shape[0], q.shape[1], v.shape[2]) and out.dtype == q.dtype
    ref, poisoned = dense_reference(q, k, v, ei, bias, head_mask)
    got = out.double()
    assert torch.isnan(got[poisoned]).all()
    clean = ~poisoned
    assert torch.isfinite(got[clean]).all()
    if clean.any():
        err = float((got[clean] - ref[clean]).abs().max())
        assert err <= TOL[q.dtype] * max(1.0, float(ref[clean].abs().max())), err


@FUZZ
@given(attention_calls(), st.integers(0, 2**31 - 1))
def test_gradients_stay_finite_off_the_poisoned_queries(call, seed):
    q, k, v, ei, bias, head_mask = call
    if q.dtype == torch.bfloat16:
        return
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    out = graph_attention(*leaves, ei, bias=bias, head_mask=head_mask)
    _, poisoned = dense_reference(q, k, v, ei, bias, head_mask)
    go = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=out.dtype)
    dq, dk, dv = torch.autograd.grad(out, leaves, go, allow_unused=True)
    assert torch.isfinite(dq[~poisoned]).all()
    key, query = ei
    reached = torch.zeros(k.shape[0], k.shape[1], dtype=torch.bool)
    active = torch.ones(ei.shape[1], q.shape[1], dtype=torch.bool) if head_mask is None else head_mask
    for e in range(ei.shape[1]):
        reached[key[e]] |= poisoned[query[e]] & active[e]
    assert torch.isfinite(dk[~reached]).all() and torch.isfinite(dv[~reached]).all()


GOOD = dict(q=torch.randn(4, 2, 3), k=torch.randn(5, 2, 3), v=torch.randn(5, 2, 2), ei=torch.tensor([[0, 4], [1, 3]]))


def bad_call_strategy():
    junk = st.one_of(st.none(), st.integers(-5, 5), st.floats(allow_nan=True), st.text(max_size=3),
                     st.just(torch.randn(3)), st.just(torch.randn(4, 2, 3, dtype=torch.float64)),
                     st.just(torch.zeros(2, 2, dtype=torch.long) - 1), st.just(torch.ones(4, 2, 3, dtype=torch.long)),
                     st.just(torch.randn(5, 3, 3)))
    return st.tuples(st.sampled_from(["q", "k", "v", "ei", "bias", "scale", "dropout_p", "num_queries", "head_mask",
                                      "tile"]), junk)


@FUZZ
@given(bad_call_strategy())
def test_bad_arguments_raise_documented_errors(bad):
    name, value = bad
    args = dict(GOOD)
    kwargs = {}
    if name in args:
        args[name] = value
    else:
        kwargs[name] = value
    try:
        graph_attention(args["q"], args["k"], args["v"], args["ei"], **kwargs)
    except (TypeError, ValueError, RuntimeError) as err:
        assert str(err), name
        if isinstance(err, RuntimeError):
            # only a backend refusal (e.g. a forced one) is a RuntimeError
            assert "backend" in str(err), err


# ------------------------------------------------------------------------------------- rules


def _value():
    # Huge counts too: every rule must refuse them by its memory check, never allocate or hang.
    return st.one_of(st.integers(-3, 40), st.integers(2**20, 2**62), st.floats(-2, 2), st.booleans(), st.none(),
                     st.text(max_size=2), st.lists(st.integers(-2, 12), max_size=3), st.sampled_from([1, 2, 3]))


def _check_graph(g: AttentionGraph):
    assert isinstance(g, AttentionGraph)
    key, query = g.edge_index
    if g.num_edges:
        assert int(key.min()) >= 0 and int(key.max()) < g.num_nodes
        assert int(query.min()) >= 0 and int(query.max()) < g.num_nodes
        code = query * g.num_nodes + key
        assert bool((code[1:] > code[:-1]).all())
    assert g.node_type.shape == (g.num_nodes,)


@FUZZ
@pytest.mark.parametrize("name", rules.RULES)
@given(data=st.data())
def test_every_rule_builds_a_valid_graph_or_names_the_problem(name, data):
    fn = getattr(rules, name)
    params = [p for p in inspect.signature(fn).parameters.values() if p.kind == p.KEYWORD_ONLY and p.name != "queries"]
    kwargs = {}
    for p in params:
        if p.default is p.empty or data.draw(st.booleans()):
            kwargs[p.name] = data.draw(_value(), label=p.name)
    first = data.draw(st.one_of(st.integers(-2, 60), st.integers(2**20, 2**62), st.floats(0, 5), st.none()), label="n")
    if name in ("lsh", "kmeans"):
        rows = first if isinstance(first, int) and 0 <= first <= 60 else 7
        first = torch.randn(rows, 4, generator=torch.Generator().manual_seed(0))
    try:
        with memory_limit("16M"):  # small: a fuzz example may build what fits, and must stay quick
            g = fn(first, **kwargs)
            _check_graph(g)  # a structured graph builds its edges here: under the same budget
    except MemoryError as err:
        assert "need an estimated" in str(err)
        return
    except (TypeError, ValueError) as err:
        text = str(err)
        assert text and ("expected" in text or "got" in text or "parameter" in text), text
        return
