"""Metrics against scikit-learn and lifelines: AUC, c-index (censored, tied), mean ± std, Kaplan–Meier."""

from __future__ import annotations

import numpy as np
import pytest
from lifelines.utils import concordance_index as lifelines_cindex
from sklearn.metrics import roc_auc_score

from hipt.metrics import auc, concordance_index, format_mean_std, km_risk_groups, mean_std, plot_km


@pytest.mark.parametrize("seed", range(5))
def test_auc_binary_equals_sklearn(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 60)
    logits = rng.normal(size=(60, 2)) + y[:, None] * np.array([0, 1.0])
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    ref = roc_auc_score(y, p[:, 1])
    assert auc(y, p) == pytest.approx(ref, abs=1e-12)
    assert auc(y, p[:, 1]) == pytest.approx(ref, abs=1e-12)  # [N] form


@pytest.mark.parametrize("seed", range(5))
def test_auc_three_classes_is_macro_ovr(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, 90)
    logits = rng.normal(size=(90, 3))
    logits[np.arange(90), y] += 1.0
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    assert auc(y, p) == pytest.approx(roc_auc_score(y, p, multi_class="ovr", average="macro"), abs=1e-12)


def test_auc_missing_class_and_single_class():
    y = np.array([0, 0, 1, 1])
    p = np.array([[0.6, 0.3, 0.1], [0.5, 0.3, 0.2], [0.2, 0.7, 0.1], [0.3, 0.6, 0.1]])
    # class 2 absent: averaged over the classes present (reference nanmean)
    assert auc(y, p) == pytest.approx(1.0)
    with pytest.warns(RuntimeWarning):
        assert np.isnan(auc([1, 1, 1], [0.2, 0.4, 0.9]))
    with pytest.raises(ValueError, match="labels must lie"):
        auc([0, 3], [[0.5, 0.5], [0.4, 0.6]])


def _random_survival(rng, n, tie_times, tie_risks):
    times = rng.exponential(20.0, n)
    if tie_times:
        times = np.round(times / 5.0) * 5.0  # many tied times
    events = (rng.random(n) < 0.6).astype(int)
    risks = rng.normal(size=n) - 0.02 * times
    if tie_risks:
        risks = np.round(risks * 2) / 2  # many tied risks
    return times, risks, events


@pytest.mark.parametrize("seed", range(30))
def test_cindex_equals_lifelines_randomized(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 200))
    times, risks, events = _random_survival(rng, n, tie_times=seed % 2 == 0, tie_risks=seed % 3 == 0)
    if events.sum() == 0:
        events[0] = 1
    ours = concordance_index(times, risks, events)
    ref = lifelines_cindex(times, -risks, events)
    assert ours == pytest.approx(ref, abs=1e-9)


def test_cindex_hand_example():
    # times 1 (event), 2 (censored), 3 (event), 3 (censored), 4 (event)
    t = [1, 2, 3, 3, 4]
    e = [1, 0, 1, 0, 1]
    r = [5, 1, 3, 3, 0]
    # comparable pairs (i fails first): (0,1) (0,2) (0,3) (0,4) (2,3)[tie in time, only 2 has event] (2,4)
    # concordant: 0>1,0>2,0>3,0>4 yes; (2,3) risk tie -> 0.5; (2,4) 3>0 yes  => (5 + 0.5) / 6
    assert concordance_index(t, r, e) == pytest.approx(5.5 / 6)
    assert concordance_index(t, r, e) == pytest.approx(lifelines_cindex(t, -np.array(r), e))


def test_cindex_tied_tol_and_undefined():
    t, e = [1.0, 2.0], [1, 1]
    assert concordance_index(t, [1.0, 1.0 - 1e-10], e) == 1.0
    assert concordance_index(t, [1.0, 1.0 - 1e-10], e, tied_tol=1e-8) == 0.5  # sksurv's convention
    with pytest.warns(RuntimeWarning):
        assert np.isnan(concordance_index([1, 2, 3], [1, 2, 3], [0, 0, 0]))
    with pytest.raises(ValueError, match="differ in length"):
        concordance_index([1, 2], [1], [1, 1])


def test_cindex_large_chunked():
    rng = np.random.default_rng(7)
    times, risks, events = _random_survival(rng, 5000, tie_times=True, tie_risks=True)
    assert concordance_index(times, risks, events) == pytest.approx(lifelines_cindex(times, -risks, events), abs=1e-9)


def test_mean_std():
    m, s = mean_std([0.8, 0.9, np.nan, 1.0])
    assert m == pytest.approx(0.9) and s == pytest.approx(np.std([0.8, 0.9, 1.0]))
    assert mean_std([0.8, 1.0], ddof=1)[1] == pytest.approx(np.std([0.8, 1.0], ddof=1))
    assert format_mean_std([0.8, 0.9, 1.0]) == "0.900 ± 0.082"
    assert format_mean_std([]) == "–"


def test_km_risk_groups_and_plot():
    rng = np.random.default_rng(0)
    n = 80
    risks = rng.normal(size=n)
    times = rng.exponential(10 * np.exp(-risks))
    events = (rng.random(n) < 0.7).astype(int)
    res = km_risk_groups(times, risks, events)
    assert [g.name for g in res.groups] == ["low risk", "high risk"]
    assert sum(g.n for g in res.groups) == n and res.high_risk.sum() == n // 2
    assert 0 <= res.logrank_p < 0.05  # risk truly drives survival here
    for g in res.groups:
        assert g.survival[0] == 1.0 and np.all(np.diff(g.survival) <= 1e-12)
    ax = plot_km(res)
    assert len(ax.lines) == 2 and "log-rank" in ax.get_title()
