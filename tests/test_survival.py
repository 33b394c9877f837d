"""Survival NLL loss against a loop-by-loop recomputation; MCAT label binning; hazards → risk."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from hipt.survival import apply_bins, discretize_survival, hazards_to_survival, nll_loss, risk_from_survival


def _loop_nll(h, S, y, c, alpha, eps):
    total = 0.0
    B, K = h.shape
    for b in range(B):
        s_pad = [1.0] + [float(S[b, k]) for k in range(K)]
        yb, cb = int(y[b]), float(c[b])
        unc = -(1 - cb) * (math.log(max(s_pad[yb], eps)) + math.log(max(float(h[b, yb]), eps)))
        cen = -cb * math.log(max(s_pad[yb + 1], eps))
        total += (1 - alpha) * (cen + unc) + alpha * unc
    return total / B


@pytest.mark.parametrize("alpha", [0.0, 0.4])
@pytest.mark.parametrize("seed", range(4))
def test_nll_loss_matches_loops(seed, alpha):
    g = torch.Generator().manual_seed(seed)
    B, K = 16, 4
    h = torch.sigmoid(torch.randn(B, K, generator=g, dtype=torch.float64) * 3)
    h[0, 0] = 1e-12  # exercises the eps clamp
    S = hazards_to_survival(h)
    y = torch.randint(0, K, (B,), generator=g)
    c = torch.randint(0, 2, (B,), generator=g)
    ours = nll_loss(h, S, y, c, alpha=alpha)
    assert ours.item() == pytest.approx(_loop_nll(h, S, y, c, alpha, 1e-7), rel=1e-12)
    assert nll_loss(h, None, y, c, alpha=alpha).item() == pytest.approx(ours.item(), rel=1e-12)


def test_nll_loss_gradients_flow():
    logits = torch.randn(3, 4, requires_grad=True)
    h = torch.sigmoid(logits)
    loss = nll_loss(h, hazards_to_survival(h), torch.tensor([0, 3, 1]), torch.tensor([0.0, 1.0, 0.0]))
    loss.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_hazards_survival_risk():
    h = torch.tensor([[0.5, 0.5, 0.5, 0.5], [0.1, 0.1, 0.1, 0.1]])
    S = hazards_to_survival(h)
    assert torch.allclose(S[0], torch.tensor([0.5, 0.25, 0.125, 0.0625]))
    r = risk_from_survival(S)
    assert r[0] > r[1]  # higher hazards -> higher risk
    assert np.allclose(risk_from_survival(S.numpy()), r.numpy())


def _mcat_reference(months, cens, n_bins=4, eps=1e-6):
    df = pd.DataFrame({"m": months, "c": cens})
    _, q = pd.qcut(df.loc[df.c < 1, "m"], q=n_bins, retbins=True, labels=False)
    q[-1] = df.m.max() + eps
    q[0] = df.m.min() - eps
    lab, q = pd.cut(df.m, bins=q, retbins=True, labels=False, right=False, include_lowest=True)
    return lab.to_numpy().astype(int), q


@pytest.mark.parametrize("seed", range(5))
def test_discretize_matches_mcat_rule(seed):
    rng = np.random.default_rng(seed)
    months = np.round(rng.exponential(30, 200), 2)
    cens = (rng.random(200) < 0.6).astype(int)
    labels, edges = discretize_survival(months, cens)
    ref_labels, ref_edges = _mcat_reference(months, cens)
    assert np.array_equal(labels, ref_labels)
    assert np.allclose(edges, ref_edges)
    # inner edges are quartiles of the uncensored times only
    assert np.allclose(edges[1:-1], np.quantile(months[cens == 0], [0.25, 0.5, 0.75]))
    assert edges[0] < months.min() and edges[-1] > months.max()
    assert set(labels) <= {0, 1, 2, 3}
    # uncensored cases fill the bins about equally
    counts = np.bincount(labels[cens == 0], minlength=4)
    assert counts.max() - counts.min() <= 2


def test_discretize_edges_are_left_closed():
    months = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0])
    cens = np.zeros(9)
    labels, edges = discretize_survival(months, cens)
    # quartiles of 1..9 are 3, 5, 7: a time equal to an edge goes to the upper bin
    assert np.allclose(edges[1:-1], [3, 5, 7])
    assert labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 3]
    assert apply_bins([0.0, 100.0, 5.0], edges).tolist() == [0, 3, 2]


def test_discretize_errors():
    with pytest.raises(ValueError, match="uncensored"):
        discretize_survival([1, 2, 3, 4, 5], [1, 1, 1, 0, 0])
    with pytest.raises(ValueError, match="censorship must be"):
        discretize_survival([1, 2, 3, 4, 5], [0, 0, 0, 0, 2])
