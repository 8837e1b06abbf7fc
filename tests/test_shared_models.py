"""The real checkpoint and vocabulary in ../shared/models (skipped when absent)."""

import os

import numpy as np
import pytest

import model
from checkpoints import read_v0
from conftest import SHARED_MODELS
from reference import NumpyModel, ScalarModel

STORIES260K = os.path.join(SHARED_MODELS, "stories260K.bin")
need_260k = pytest.mark.skipif(not os.path.exists(STORIES260K), reason="needs ../shared/models/stories260K.bin")


@need_260k
def test_stories260k_header_is_read():
    t = model.Transformer(STORIES260K)
    assert tuple(t.config) == (64, 172, 5, 8, 4, 512, 512)
    assert t.version == 0 and t.weights.wcls is t.weights.token_embedding_table


@need_260k
def test_stories260k_logits_agree_with_numpy_reference_over_200_positions():
    t = model.Transformer(STORIES260K)
    ref = NumpyModel(read_v0(STORIES260K))
    token, worst = 1, 0.0
    for pos in range(200):
        got = t.forward(token, pos)
        want = ref.forward(token, pos)
        worst = max(worst, float(np.max(np.abs(got - want)) / np.max(np.abs(want))))
        token = int(np.argmax(want))  # follow the reference's greedy path
    print(f"stories260K: maxdiff {worst:.2e} over 200 positions", "OK" if worst < 1e-4 else "NOT OK")
    assert worst < 1e-4


@need_260k
def test_stories260k_strict_logits_equal_scalar_float32_reference_bit_for_bit():
    t = model.Transformer(STORIES260K)
    ref = ScalarModel(read_v0(STORIES260K))
    for pos, token in enumerate([1, 403, 261]):
        got = t.forward(token, pos)
        want = ref.forward(token, pos)
        assert int(np.sum(got.view(np.int32) != want.view(np.int32))) == 0, f"position {pos}"


@need_260k
def test_stories260k_greedy_text_is_not_degenerate():
    """A trained model's greedy continuation varies (random weights tend to repeat one token)."""
    t = model.Transformer(STORIES260K)
    token, seen = 1, []
    for pos in range(64):
        token = int(np.argmax(t.forward(token, pos)))
        seen.append(token)
    assert len(set(seen)) > 15
