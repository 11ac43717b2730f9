import pytest
import torch

from graphattn._random import hash_uniform, sample_without_replacement, seed_key, uniform_below


def test_seed_key_forms():
    assert seed_key(5) == 5 and seed_key(-1) == 2**64 - 1
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert seed_key(g1) == seed_key(g2)
    assert seed_key(g1) != seed_key(torch.Generator().manual_seed(4))
    with pytest.raises(TypeError, match="seed"):
        seed_key(1.5)
    with pytest.raises(TypeError, match="seed"):
        seed_key(True)


def test_int_seed_leaves_global_rng_alone():
    state = torch.get_rng_state()
    seed_key(7)
    hash_uniform(7, torch.arange(10), 0)
    assert torch.equal(state, torch.get_rng_state())


def test_hash_bits_are_uniform_and_independent():
    rows = torch.arange(200_000)
    bits = hash_uniform(1234, rows, 0)
    assert int(bits.min()) >= 0 and int(bits.max()) < 2**32
    # each of the 32 bits is set about half the time
    for b in range(32):
        frac = ((bits >> b) & 1).double().mean().item()
        assert abs(frac - 0.5) < 0.006, b
    # neighbouring counters and seeds are uncorrelated
    other = hash_uniform(1234, rows, 1)
    corr = torch.corrcoef(torch.stack([bits.double(), other.double()]))[0, 1].item()
    assert abs(corr) < 0.01
    seeds = torch.corrcoef(torch.stack([bits.double(), hash_uniform(1235, rows, 0).double()]))[0, 1].item()
    assert abs(seeds) < 0.01


def test_hash_matches_a_python_reference():
    M = 0xFFFFFFFF

    def mix(x):
        x ^= x >> 16
        x = (x * 0x7FEB352D) & M
        x ^= x >> 15
        x = (x * 0x846CA68B) & M
        return x ^ (x >> 16)

    def ref(key, row, counter, stream=0):
        h = mix((counter & M) ^ mix(stream & M))
        h = mix(h ^ (key & M))
        h = mix(h ^ ((row >> 32) & M))
        h = mix(h ^ ((key >> 32) & M))
        return mix(h ^ (row & M))

    key = 0xDEADBEEF12345678
    rows = [0, 1, 2**33 + 5, 123456789]
    got = hash_uniform(key, torch.tensor(rows), 3).tolist()
    assert got == [ref(key, r, 3) for r in rows]


def test_uniform_below_range():
    bits = hash_uniform(0, torch.arange(10_000), 0)
    v = uniform_below(bits, 7)
    assert int(v.min()) == 0 and int(v.max()) == 6
    counts = torch.bincount(v, minlength=7).double()
    assert (counts / counts.mean() - 1).abs().max() < 0.1


def test_floyd_sampling_distinct_and_uniform():
    rows = torch.arange(30_000)
    picks = sample_without_replacement(9, rows, 10, 3)
    assert picks.shape == (30_000, 3)
    s = torch.sort(picks, dim=1).values
    assert bool((s[:, 1:] > s[:, :-1]).all())  # distinct per row
    freq = torch.bincount(picks.reshape(-1), minlength=10).double()
    expected = 30_000 * 3 / 10
    assert ((freq - expected).abs() / expected).max() < 0.05
    # per-row population
    pop = torch.tensor([3, 5, 4])
    out = sample_without_replacement(1, torch.arange(3), pop, 3)
    assert bool((out < pop[:, None]).all())


def _floyd_reference(key, row, population, count, stream=0):
    """Floyd's algorithm one step at a time, for one row, with a Python set."""
    out, chosen = [], set()
    for step in range(count):
        top = population - count + step
        t = int(uniform_below(hash_uniform(key, torch.tensor([row]), step, stream), top + 1))
        pick = top if t in chosen else t
        chosen.add(pick)
        out.append(pick)
    return out


@pytest.mark.parametrize("population, count", [(10, 3), (12, 12), (40, 35), (1000, 8), (5, 0), (7, 1)])
def test_floyd_sampling_matches_a_step_by_step_reference(population, count):
    rows = torch.arange(60)
    picks = sample_without_replacement(21, rows, population, count, stream=4)
    for r in rows.tolist():
        assert picks[r].tolist() == _floyd_reference(21, r, population, count, stream=4)


@pytest.mark.parametrize("population, count", [(10, 3), (12, 12), (40, 35), (65_535, 32), (5, 0), (7, 1)])
def test_sorted_sampling_is_the_sorted_floyd_sample(population, count):
    # Rows with repeats or draws among the tops take the sequential path, the others the sort.
    from graphattn._random import sorted_sample_without_replacement

    rows = torch.arange(5_000, 9_000)
    expected = torch.sort(sample_without_replacement(5, rows, population, count), dim=1).values
    assert torch.equal(sorted_sample_without_replacement(5, rows, population, count), expected)


def test_hash_with_a_counter_vector_and_wide_rows_matches_scalar_calls():
    # Broadcasting a vector of counters, and rows beyond 32 bits (the per-row high-word rounds).
    rows = torch.tensor([0, 3, 2**32 - 1, 2**32, 2**40 + 7])
    table = hash_uniform(99, rows[:, None], torch.arange(4), stream=2)
    for c in range(4):
        assert torch.equal(table[:, c], torch.stack([hash_uniform(99, r.view(1), c, stream=2)[0] for r in rows]))
