"""hipt.book.evidence.stage2: the interval of chapter 4's experiment and text that changes with the numbers.

Each findings test feeds numbers that contradict the book's (e.g. a DINO run that beats its own
initialization, a ``long`` variant that is better than ``base``) and checks that the sentence changes.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from hipt.book.evidence.stage2 import (
    _auc, _balanced_accuracy, arrangement_findings, collapse_findings, grouped_bootstrap_gain, oof_probe_scores,
    scale_findings, variant_findings,
)


def _regions(n_slides=20, per_slide=8, signal=2.0, seed=0):
    rng = np.random.default_rng(seed)
    groups = np.repeat([f"s{i}" for i in range(n_slides)], per_slide)
    y = rng.integers(0, 2, len(groups))
    x_good = np.c_[y * signal + rng.normal(size=len(y)), rng.normal(size=(len(y), 3))]
    x_none = rng.normal(size=(len(y), 4))
    return x_good, x_none, y, groups


def test_metrics_match_scikit_learn():
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score

    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 60)
    s = np.round(rng.normal(size=60) + y, 1)  # with ties
    pred = (s > 0.5).astype(int)
    assert _auc(y, s) == pytest.approx(roc_auc_score(y, s))
    assert _balanced_accuracy(y, pred) == pytest.approx(balanced_accuracy_score(y, pred))
    assert np.isnan(_auc(np.ones(5, int), s[:5]))


def test_oof_scores_give_probe_auc():
    from hipt.pretrain.evaluate import probe_auc

    x_good, x_none, y, groups = _regions()
    feats = {"good": x_good, "none": x_none}
    scores, fold = oof_probe_scores(feats, y, groups)
    want = probe_auc(feats, y, groups)
    for name in feats:
        got = np.mean([_auc(y[fold == f], scores[name][fold == f]) for f in np.unique(fold[fold >= 0])])
        assert got == pytest.approx(want[name])


def test_bootstrap_interval_excludes_zero_only_for_a_real_gain():
    x_good, x_none, y, groups = _regions()
    scores, fold = oof_probe_scores({"good": x_good, "none": x_none}, y, groups)
    g, lo, hi = grouped_bootstrap_gain(y, groups, scores["good"], scores["none"], fold=fold, n_boot=300)
    assert lo > 0 and lo <= g <= hi
    same = grouped_bootstrap_gain(y, groups, scores["none"], scores["none"], fold=fold, n_boot=100)
    assert same == (0.0, 0.0, 0.0)
    # balanced accuracy on predicted labels, one fold (the KNN split)
    pred_good, pred_bad = y.copy(), 1 - y
    g, lo, hi = grouped_bootstrap_gain(y, groups, pred_bad, pred_good, metric="balanced_accuracy", n_boot=100)
    assert g == pytest.approx(-1.0) and hi < 0


BOOK_PROBE = {"mean": 0.463, "random": 0.744, "dino": 0.747}
BOOK_GAINS = {"dino_vs_random": (0.003, -0.019, 0.024), "dino_vs_mean": (0.284, 0.177, 0.396),
              "random_vs_mean": (0.281, 0.178, 0.388)}


def test_arrangement_findings_credit_dino_only_when_its_interval_says_so():
    book = arrangement_findings(BOOK_PROBE, BOOK_GAINS, 1.0, "sine-cosine")
    assert "No effect of DINO" in book and "the architecture" in book and "adds to the network" not in book
    assert "better than a bag of patches" in book and "The arrangement is in the stage-1 grids" in book

    better = arrangement_findings({**BOOK_PROBE, "dino": 0.85}, {**BOOK_GAINS, "dino_vs_random": (0.1, 0.05, 0.15)},
                                  1.0, "sine-cosine")
    assert "DINO stage 2 adds to the network it started from" in better and "No effect of DINO" not in better

    worse = arrangement_findings(BOOK_PROBE, {**BOOK_GAINS, "dino_vs_random": (-0.1, -0.15, -0.05)}, 1.0, "x")
    assert "*removes*" in worse

    blind = arrangement_findings({"mean": 0.5, "random": 0.5, "dino": 0.5},
                                 {k: (0.0, -0.05, 0.05) for k in BOOK_GAINS}, 0.6, "x")
    assert "hold little of it" in blind and "cannot be told apart" in blind and "the architecture" not in blind


def _variants(long_dino=0.755, long_bank=0.747):
    cols = ["changes", "steps", "train s", "probe AUC, DINO ViT4K", "probe AUC, same ViT4K at init",
            "probe AUC, mean pooling", "token-bank regions: DINO"]
    rows = {"base": ["preset", 120, 49, 0.747, 0.744, 0.463, 0.747],
            "long": ["epochs=100", 400, 167, long_dino, 0.744, 0.463, long_bank],
            "sincos": ["pos_embed_init=sincos", 120, 50, 0.747, 0.744, 0.463, 0.747],
            "trunc-normal": ["pos_embed_init=trunc_normal", 120, 51, 0.485, 0.513, 0.463, 0.596]}
    return pd.DataFrame.from_dict(rows, orient="index", columns=cols)


def test_variant_findings_follow_the_long_run():
    same = variant_findings(_variants())
    line = next(x for x in same.splitlines() if x.startswith("- `long`"))
    assert "leaves the cohort probe unchanged" in line and "leaves the held-out token-bank probe unchanged" in line
    better = variant_findings(_variants(long_dino=0.85, long_bank=0.81))
    line = next(x for x in better.splitlines() if x.startswith("- `long`"))
    assert "raises the cohort probe by 0.103" in line and "raises the held-out token-bank probe by 0.063" in line
    assert "do not help" not in better
    assert "the position signal, not DINO" in same


def test_collapse_and_scale_findings_change_with_the_numbers():
    ln_k = float(np.log(4096))
    diag = pd.DataFrame({"[CLS] cosine similarity between regions": [0.99, 0.99],
                         "entropy of the centred target": [ln_k, 2.0]}, index=["paper head", "BN head"])
    text = collapse_findings(diag, ln_k)
    assert "nearly parallel" in text and "as flat as the uniform" in text and "peaked enough" in text
    diag2 = diag.assign(**{"[CLS] cosine similarity between regions": 0.3, "entropy of the centred target": 1.0})
    text2 = collapse_findings(diag2, ln_k)
    assert "already differ" in text2 and "as flat" not in text2

    gpu = pd.DataFrame({"AUC": [0.503, 0.622, 0.576, 0.782]},
                       index=["mean of patch tokens", "ViT4K-XS, random init", "DINO, paper head (collapsed: loss = ln K)",
                              "DINO, BatchNorm head"])
    assert "raises the AUC by 0.160" in scale_findings(gpu) and "collapsed" in scale_findings(gpu)
    flat = gpu.assign(AUC=[0.503, 0.78, 0.576, 0.782])
    assert "leaves the AUC unchanged" in scale_findings(flat)


def test_arrangement_findings_without_a_ceiling():
    text = arrangement_findings(BOOK_PROBE, BOOK_GAINS, None, "sine-cosine", metric="KNN balanced accuracy")
    assert "adjacency" not in text and "ceiling" not in text and text.startswith("- KNN balanced accuracy")
