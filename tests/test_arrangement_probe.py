"""The arrangement probes of hipt.pretrain.evaluate on synthetic grids whose label is adjacency only."""

import numpy as np
import pytest

from hipt.pretrain.evaluate import probe_auc, token_adjacency_features


def _grids(n: int = 120, d: int = 8, g: int = 8, seed: int = 0):
    """Grids with 8 'A' cells and 8 'B' cells on a background; label 1 = the A and B blocks share an edge."""
    rng = np.random.default_rng(seed)
    protos = rng.normal(size=(3, d)) * 3
    grids, ys = [], []
    for i in range(n):
        lab = np.zeros((g, g), int)  # 0 background, 1 A, 2 B
        touching = i % 2
        r = rng.integers(0, g - 4 + 1)
        c = rng.integers(0, g - 4 + 1)
        lab[r : r + 2, c : c + 4] = 1
        if touching:
            lab[r + 2 : r + 4, c : c + 4] = 2
        else:  # the B block two rows below or above: separated by background
            rb = r + 3 if r + 5 <= g else r - 3
            lab[rb : rb + 2, c : c + 4] = 2
        if rng.random() < 0.5:
            lab = lab.T
        grid = protos[lab] + rng.normal(scale=0.3, size=(g, g, d))
        grids.append(grid.transpose(2, 0, 1))
        ys.append(touching)
    return np.stack(grids).astype(np.float32), np.array(ys)


def test_adjacency_features_shape_and_counts():
    grids, _ = _grids(10)
    f = token_adjacency_features(grids, n_clusters=3)
    assert f.shape == (10, 6)
    # every 8x8 grid has 2 * 8 * 7 = 112 cell edges
    np.testing.assert_allclose(f.sum(1), 112)


def test_adjacency_probe_reads_arrangement_that_mean_pooling_cannot():
    grids, y = _grids()
    auc = probe_auc({"mean": grids.mean(axis=(2, 3)), "adjacency": token_adjacency_features(grids, n_clusters=3)}, y)
    assert auc["adjacency"] > 0.95
    assert abs(auc["mean"] - 0.5) < 0.2  # the same cells in both classes


def test_probe_auc_groups_never_split_a_group():
    grids, y = _grids(40)
    groups = np.repeat(np.arange(20), 2)
    auc = probe_auc({"adjacency": token_adjacency_features(grids, n_clusters=3)}, y, groups=groups)
    assert 0.0 <= auc["adjacency"] <= 1.0


def test_adjacency_features_reject_bad_shape():
    with pytest.raises(ValueError, match=r"\[M, D, H, W\]"):
        token_adjacency_features(np.zeros((4, 8, 8)))


def test_adjacency_counts_on_a_known_map():
    from hipt.pretrain.evaluate import adjacency_counts

    lab = np.array([[[0, 1], [0, 1]]])  # two vertical stripes: 0-0 and 1-1 edges vertically, 0-1 horizontally
    # pairs in triu order: (0,0), (0,1), (1,1)
    np.testing.assert_array_equal(adjacency_counts(lab, 2), [[1, 2, 1]])
