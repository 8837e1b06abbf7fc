"""Sampler: the xorshift* stream, and each sampling rule on hand-made distributions."""

import numpy as np
import pytest

import model
import run

F = np.float32


def topp(probs, p, coin):
    n = probs.shape[0]
    return run.sample_topp(probs, F(p), F(coin), np.zeros(n, np.int32), np.zeros(n, np.int32),
                           np.zeros(2048, np.int64))


def xorshift_star_reference(seed, n):
    """run.c's xorshift* generator written with numpy uint64 (wrapping) arithmetic."""
    s = np.array([seed], dtype=np.uint64)
    out = []
    with np.errstate(over="ignore"):
        for _ in range(n):
            s ^= s >> np.uint64(12)
            s ^= s << np.uint64(25)
            s ^= s >> np.uint64(27)
            out.append(int((s * np.uint64(0x2545F4914F6CDD1D))[0] >> np.uint64(32)))
    return out


@pytest.mark.parametrize("seed", [1, 42, 1337, 2**32 + 7, 2**64 - 5])
def test_rng_stream_matches_independent_uint64_implementation(seed):
    state, got = seed, []
    for _ in range(2000):
        state, u = run.random_u32(state)
        got.append(u)
    assert got == xorshift_star_reference(seed, 2000)
    assert all(0 <= u < 2**32 for u in got)


def test_random_f32_is_top_24_bits_over_2_pow_24():
    state = 99
    for _ in range(1000):
        new_state, u = run.random_u32(state)
        state, f = run.random_f32(state)
        assert new_state == state
        assert isinstance(f, np.float32) and 0 <= f < 1
        assert f == F(u >> 8) / F(16777216)


def test_argmax_takes_the_first_maximum():
    assert run.sample_argmax(np.array([0.1, 0.5, 0.5, 0.2], F)) == 1
    assert run.sample_argmax(np.array([-3, -1, -2], F)) == 1
    assert run.sample_argmax(np.array([7], F)) == 0


@pytest.mark.parametrize("coin, expected", [(0.0, 0), (0.05, 0), (0.1, 1), (0.29, 1), (0.3, 2),
                                            (0.61, 3), (0.999, 3)])
def test_multinomial_walks_the_cumulative_sum(coin, expected):
    # cdf (in float32) = 0.1, 0.3, 0.6, 1.0; the first index with coin < cdf wins
    probs = np.array([0.1, 0.2, 0.3, 0.4], F)
    assert run.sample_mult(probs, F(coin)) == expected


def test_multinomial_returns_the_last_index_when_rounding_leaves_the_coin_above_the_sum():
    probs = np.array([0.25, 0.25, 0.25, 0.2], F)  # sums to 0.95
    assert run.sample_mult(probs, F(0.97)) == 3


@pytest.mark.parametrize("coin, expected", [(0.0, 1), (0.5, 1), (0.57, 1), (0.58, 3), (0.999, 3)])
def test_top_p_keeps_the_smallest_set_above_p(coin, expected):
    # cutoff (1 - 0.6) / 4 = 0.1 drops token 0; sorted: 1 (0.4), 3 (0.3), 4 (0.15), 2 (0.1)
    # running sum 0.4, 0.7 > 0.6 -> keep tokens 1 and 3; r = coin * 0.7; 0.4 / 0.7 = 0.5714
    probs = np.array([0.05, 0.4, 0.1, 0.3, 0.15], F)
    assert topp(probs, 0.6, coin) == expected


def test_top_p_sort_is_stable_on_equal_probabilities():
    # equal probabilities keep index order (glibc's qsort is a stable merge sort here)
    probs = np.array([0.3, 0.2, 0.3, 0.2], F)
    assert topp(probs, 0.5, 0.4) == 0  # r = 0.24 < 0.3
    assert topp(probs, 0.5, 0.6) == 2  # r = 0.36 in [0.3, 0.6)


def test_top_p_only_ever_returns_the_nucleus():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal(200).astype(F) * 3
    probs = np.exp(logits - logits.max())
    probs = (probs / probs.sum()).astype(F)
    order = np.argsort(-probs, kind="stable")
    nucleus = set(order[:np.searchsorted(np.cumsum(probs[order]), 0.8, side="right") + 1].tolist())
    seen = {topp(probs, 0.8, c) for c in rng.random(3000)}
    assert seen <= nucleus and len(seen) > len(nucleus) // 2


def test_sampler_temperature_zero_is_greedy_and_draws_no_random_number():
    s = run.Sampler(5, 0.0, 0.9, 123)
    logits = np.array([0.0, 2.0, 1.0, 2.0, -1.0], F)
    assert s.sample(logits.copy()) == 1
    assert s.rng_state == 123


def test_sampler_frequencies_follow_softmax_of_logits_over_temperature():
    logits = np.array([1.0, 0.0, -1.0, 2.0], F)
    temperature = 0.7
    p = np.exp(logits / temperature)
    p /= p.sum()
    s = run.Sampler(4, temperature, 1.0, 2024)  # topp 1: plain multinomial
    counts = np.bincount([s.sample(logits.copy()) for _ in range(20000)], minlength=4)
    freq = counts / counts.sum()
    print("expected", np.round(p, 4), "observed", np.round(freq, 4))
    # 20000 draws: standard error below 0.0036, so 0.015 is over 4 sigma
    assert np.max(np.abs(freq - p)) < 0.015


def test_temperature_softmax_sums_to_one_and_matches_numpy():
    rng = np.random.default_rng(1)
    logits = (rng.standard_normal(32000) * 4).astype(F)
    probs = logits.copy()
    run.temperature_softmax(probs, F(0.8))
    ref = np.exp((logits.astype(np.float64) / 0.8) - (logits.max() / 0.8))
    ref /= ref.sum()
    assert probs.dtype == F
    assert abs(float(probs.astype(np.float64).sum()) - 1) < 1e-4
    np.testing.assert_allclose(probs, ref, rtol=1e-4, atol=1e-9)


@pytest.mark.parametrize("n", [1, 2, 7, 1000, 32000])
def test_radix_sort_orders_like_a_stable_descending_sort(n):
    rng = np.random.default_rng(n)
    probs = rng.random(n).astype(F) ** 8  # many magnitudes, all positive
    probs[rng.integers(0, n, n // 3)] = probs[0]  # plenty of ties
    keep = np.flatnonzero(probs >= np.median(probs)).astype(np.int32)
    index = np.zeros(n, np.int32)
    index[:keep.size] = keep
    run.sort_by_prob_desc(index, keep.size, probs, np.zeros(n, np.int32), np.zeros(2048, np.int64))
    expected = keep[np.argsort(-probs[keep], kind="stable")]
    assert np.array_equal(index[:keep.size], expected)


@pytest.mark.parametrize("n", [1, 5, 16, 17, 33])  # the 16-lane max and its tail
def test_softmax_of_short_rows_matches_numpy(n):
    rng = np.random.default_rng(n)
    logits = (rng.standard_normal(n) * 3).astype(F)
    logits[n // 2] = 9  # the max away from the first value, in the vector part or the tail
    probs = logits.copy()
    model.softmax(probs)
    ref = np.exp(logits.astype(np.float64) - 9)
    np.testing.assert_allclose(probs, ref / ref.sum(), rtol=1e-5)


def test_softmax_keeps_a_nan_first_value_as_the_max_like_c():
    probs = np.array([np.nan] + [1.0] * 20, F)
    model.softmax(probs)
    assert np.isnan(probs).all()  # C's `if (x[i] > max_val)` never replaces a NaN


@pytest.mark.parametrize("temperature, topp", [(1.0, 0.9), (0.8, 1.0), (0.0, 0.9)])
def test_sampling_rows_together_equals_each_sampler_alone(temperature, topp):
    rng = np.random.default_rng(3)
    rows, vocab = 5, 700
    logits = (rng.standard_normal((rows, vocab)) * 4).astype(F)
    alone = [run.Sampler(vocab, temperature, topp, 10 + r) for r in range(rows)]
    together = [run.Sampler(vocab, temperature, topp, 10 + r) for r in range(rows)]
    expected = [[s.sample(row.copy()) for s, row in zip(alone, logits)] for _ in range(3)]
    got = []
    for _ in range(3):
        tokens = np.zeros(rows, np.int32)
        run.sample_rows(logits.copy(), F(temperature), F(topp), np.array([s.coin() for s in together], F),
                        np.zeros((rows, vocab), np.int32), np.zeros((rows, vocab), np.int32),
                        np.zeros((rows, 2048), np.int64), tokens)
        got.append(tokens.tolist())
    assert got == expected
