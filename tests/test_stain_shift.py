"""hipt.pretrain.evaluate: the stain-vector shift and the stage-1 KNN test protocol."""

from __future__ import annotations

import numpy as np
import pytest

from hipt.phantom import phantom_patches
from hipt.pretrain.evaluate import (
    EVAL_SEED, KNN_TESTS, colour_statistics, knn_gain_rows, od_stain_shift, phantom_stain_matrix, stage1_knn_test,
)


@pytest.fixture(scope="module")
def patches():
    return phantom_patches(10, seed=3, size=32)


def test_zero_strength_returns_the_patches(patches):
    x, _ = patches
    out = od_stain_shift(x, seed=0, strength=0.0)
    assert out.dtype == np.uint8 and out.shape == x.shape
    assert np.abs(out.astype(int) - x).max() <= 1 and (out != x).mean() < 1e-3


def test_shift_is_deterministic_and_changes_stains(patches):
    x, _ = patches
    a, b = od_stain_shift(x, seed=1), od_stain_shift(x, seed=1)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, x) and not np.array_equal(a, od_stain_shift(x, seed=2))


def test_shift_recomposes_with_the_new_stain_vectors():
    """A patch of pure hematoxylin comes back with the scaled hematoxylin vector, glass unchanged."""
    m = phantom_stain_matrix()
    h = np.linspace(0.0, 1.5, 64)[:, None]
    rgb = np.clip(np.rint(255 * np.exp(-(h * m[0] + m[2]))), 0, 255).astype(np.uint8)
    x = np.broadcast_to(rgb[:, None, :], (64, 8, 3))[None].copy()
    out = od_stain_shift(x, seed=5, strength=0.2)
    factors = np.random.default_rng(5).uniform(0.8, 1.2, (1, 2, 3))[0]
    want = np.clip(np.rint(255 * np.exp(-(h * m[0] * factors[0] + m[2]))), 0, 255)
    assert np.abs(out[0, :, 0].astype(int) - want).max() <= 2
    assert np.array_equal(out[0, 0], x[0, 0])  # no stain: glass stays as it was


def test_bad_input_is_refused(patches):
    x, _ = patches
    with pytest.raises(ValueError, match="uint8"):
        od_stain_shift(x.astype(np.float32))
    with pytest.raises(ValueError, match="strength"):
        od_stain_shift(x, strength=1.5)
    with pytest.raises(ValueError, match="stains"):
        od_stain_shift(x, stains=np.eye(2))


def test_colour_statistics_shape(patches):
    x, _ = patches
    f = colour_statistics(x)
    assert f.shape == (len(x), 6) and np.allclose(f[:, :3], x.reshape(len(x), -1, 3).mean(1))


def test_stage1_knn_test_protocol(one_torch_thread):
    import torch

    class MeanColour(torch.nn.Module):  # a stand-in "network": mean colour per channel, [B, 3]
        def forward(self, x):
            return x.mean((2, 3))

    assert EVAL_SEED not in (101, 102, 103)  # the seeds the cpu-tiny preset was chosen on
    correct = stage1_knn_test({"random init": MeanColour(), "DINO": MeanColour()}, n_eval=30, size=32, k=5)
    assert set(correct) == {"random init", "DINO", "colour statistics"}
    assert tuple(correct["DINO"]) == KNN_TESTS
    assert all(v.shape == (30,) and v.dtype == bool for v in correct["DINO"].values())
    rows = knn_gain_rows(correct)
    assert [r["test"] for r in rows] == list(KNN_TESTS)
    assert all(r["gain"] == 0 and r["disagree"] == 0 for r in rows)  # the same model twice
