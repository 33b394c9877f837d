"""Bag-level summaries of a phantom cohort and the label signal they carry.

The ``context`` cohort (:func:`hipt.phantom.make_cohort`) is meant to separate its classes by the
*arrangement* of tissue inside regions only.  A model that sees a slide as a bag of patches (mean
pooling, ABMIL) must then be at chance, and the check is that no bag-level summary of a slide predicts
its label better than chance:

- :func:`layout_summaries`: tissue-class cell counts per slide (from the truths' layouts);
- :func:`pixel_summaries`: stain/colour statistics of the tissue pixels (mean and standard deviation
  of the optical density per RGB channel, and the mean optical density of the outer pixel ring of
  each cell, where rendering or compression could mix neighbouring cells), from the composed
  level-0 pixels (:func:`hipt.phantom.cohort_truths`: nothing written) or read back from the slide
  files (:func:`file_pixel_summaries`: what ``hipt patch`` sees, JPEG included);
- :func:`token_summaries`: the mean patch token (``feats256``) of each slide's ``hipt extract`` file.

:func:`label_signal` measures the label signal of such a summary: the cross-validated AUC of an
L2-regularized logistic regression, against its permutation null (the same cross-validation on
shuffled labels), so "no signal beyond chance" is a statement that can fail: a small permutation
p-value.  :func:`pooled_signal` does the same for the mean AUC over several cohort seeds.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import openslide
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold
from sklearn.preprocessing import StandardScaler

from hipt.features import load_features
from hipt.phantom.slides import PhantomTruth, _Composer, load_truth
from hipt.phantom.textures import BACKGROUND, TISSUES

__all__ = ["SUMMARIES", "layout_summaries", "pixel_summaries", "file_pixel_summaries", "token_summaries",
           "cv_auc", "label_signal", "pooled_signal"]

#: Summary names (the ``summary`` column of the benchmark) and their columns.
SUMMARIES = {
    "tissue_counts": [f"n_{t}" for t in TISSUES[1:]],
    "stain": ["od_mean_r", "od_mean_g", "od_mean_b", "od_std_r", "od_std_g", "od_std_b"],
    "cell_rim": ["rim_od_r", "rim_od_g", "rim_od_b"],
}


def _od(rgb: np.ndarray) -> np.ndarray:
    """Optical density ``-ln((I + 1) / 256)`` of uint8 RGB, float64 ``[..., 3]``."""
    return -np.log((rgb.astype(np.float64) + 1.0) / 256.0)


def layout_summaries(truths: Sequence[PhantomTruth]) -> np.ndarray:
    """Tissue-class cell counts of each slide: ``[N, 4]`` int (tumour, stroma, lymphocytes, adipose)."""
    return np.stack([np.bincount(t.layout.ravel(), minlength=len(TISSUES))[1:] for t in truths])


def _ring(cell: int) -> np.ndarray:
    m = np.zeros((cell, cell), bool)
    m[0], m[-1], m[:, 0], m[:, -1] = True, True, True, True
    return m


def _stats(tiles: np.ndarray, ring: np.ndarray) -> np.ndarray:
    """Per-tile sums ``[n, 9]``: OD sum (3), OD² sum (3), ring OD sum (3) of tiles ``[n, c, c, 3]``."""
    od = _od(tiles)
    return np.concatenate([od.sum((1, 2)), (od ** 2).sum((1, 2)), od[:, ring].sum(1)], 1)


def _finish(sums: np.ndarray, n_px: int, n_ring: int) -> np.ndarray:
    mean = sums[:3] / n_px
    std = np.sqrt(np.maximum(sums[3:6] / n_px - mean ** 2, 0.0))
    return np.concatenate([mean, std, sums[6:9] / n_ring])


def pixel_summaries(truths: Sequence[PhantomTruth]) -> np.ndarray:
    """Stain/colour statistics of each slide's tissue cells, from the composed level-0 pixels: ``[N, 9]``
    (columns ``SUMMARIES["stain"] + SUMMARIES["cell_rim"]``).

    Composes each cell as the slide does (bank tile, flip/rotation, stain jitter; before JPEG), so it
    needs only the truths (:func:`hipt.phantom.cohort_truths`).  Tile statistics are computed once per
    distinct (stain, tissue, variant, transform).
    """
    cache: dict[tuple, np.ndarray] = {}
    out = []
    for t in truths:
        comp = _Composer(t)
        ring = _ring(t.cell)
        keys = np.stack([t.layout.ravel(), t.variant.ravel(), t.transform.ravel()], 1)[t.layout.ravel() != BACKGROUND]
        uniq, counts = np.unique(keys, axis=0, return_counts=True)
        sums = np.zeros(9)
        base = (t.bank_seed, t.n_variants, t.cell, tuple(np.round(t.stain, 6)))
        for (code, var, xf), n in zip(uniq, counts):
            key = base + (int(code), int(var), int(xf))
            if key not in cache:
                cache[key] = _stats(comp.cell_tile(int(code), int(var), int(xf))[None], ring)[0]
            sums += n * cache[key]
        n_cells = int(counts.sum())
        out.append(_finish(sums, n_cells * t.cell ** 2, n_cells * int(ring.sum())))
    return np.stack(out)


def file_pixel_summaries(paths: Sequence[str | Path]) -> np.ndarray:
    """As :func:`pixel_summaries`, from the level-0 pixels of the written slides (JPEG decoded by
    OpenSlide, as ``hipt patch`` reads them) and their truths: ``[N, 9]``."""
    out = []
    for p in paths:
        t = load_truth(p)
        with openslide.OpenSlide(str(p)) as s:
            img = np.asarray(s.read_region((0, 0), 0, t.size).convert("RGB"))
        c = t.cell
        r, k = t.layout.shape
        cells = img[: r * c, : k * c].reshape(r, c, k, c, 3).swapaxes(1, 2)[t.layout != BACKGROUND]
        ring = _ring(c)
        sums = _stats(cells, ring).sum(0)
        out.append(_finish(sums, len(cells) * c * c, len(cells) * int(ring.sum())))
    return np.stack(out)


def token_summaries(features_dir: str | Path, slide_ids: Sequence[str]) -> np.ndarray:
    """The mean patch token of each slide: ``feats256`` ``[M, n, D]`` of ``<features_dir>/<slide_id>.h5``
    averaged over regions and patches: ``[N, D]``."""
    return np.stack([load_features(Path(features_dir) / f"{s}.h5")["feats256"].mean((0, 1)).numpy()
                     for s in slide_ids])


def cv_auc(x: np.ndarray, y: np.ndarray, n_splits: int = 5, n_repeats: int = 2, c: float = 1.0,
           seed: int = 0) -> float:
    """Cross-validated AUC of an L2 logistic regression (``C = c``) on standardized ``x`` ``[N, F]``:
    out-of-fold probabilities pooled over the folds, averaged over ``n_repeats`` stratified splits.
    A summary that is constant over the slides gives 0.5."""
    x = np.asarray(x, np.float64).reshape(len(y), -1)
    y = np.asarray(y)
    keep = x.std(0) > 1e-12 * (1 + np.abs(x).max(0))
    if not keep.any():
        return 0.5
    x = x[:, keep]
    aucs = []
    for r in range(n_repeats):
        p = np.zeros(len(y))
        for tr, te in StratifiedKFold(n_splits, shuffle=True, random_state=seed + r).split(x, y):
            sc = StandardScaler().fit(x[tr])
            m = LogisticRegression(C=c, solver="liblinear").fit(sc.transform(x[tr]), y[tr])
            p[te] = m.decision_function(sc.transform(x[te]))
        aucs.append(roc_auc_score(y, p))
    return float(np.mean(aucs))


def label_signal(x: np.ndarray, y: np.ndarray, n_permutations: int = 100, seed: int = 0, **kw) -> dict:
    """Label signal of a bag-level summary ``x`` ``[N, F]``: :func:`cv_auc` against its permutation null.

    Returns ``{"auc", "null_mean", "null_q95", "p_value", "n_permutations"}``; ``p_value`` is the
    one-sided permutation p-value ``(1 + #{null AUC >= auc}) / (1 + n_permutations)``.
    """
    y = np.asarray(y)
    auc = cv_auc(x, y, seed=seed, **kw)
    rng = np.random.default_rng(seed)
    null = np.array([cv_auc(x, rng.permutation(y), seed=seed, **kw) for _ in range(n_permutations)])
    return dict(auc=auc, null_mean=float(null.mean()), null_q95=float(np.quantile(null, 0.95)),
                p_value=float((1 + np.sum(null >= auc)) / (1 + n_permutations)), n_permutations=n_permutations)


def pooled_signal(xs: Sequence[np.ndarray], ys: Sequence[np.ndarray], n_permutations: int = 50, seed: int = 0,
                  **kw) -> dict:
    """Label signal pooled over cohorts (e.g. cohort seeds): the mean :func:`cv_auc` over the cohorts
    against the permutation null of that mean (each round shuffles every cohort's labels).

    Returns ``{"mean_auc", "aucs", "null_mean", "null_q95", "p_value", "n_permutations"}``.
    """
    aucs = [cv_auc(x, y, seed=seed, **kw) for x, y in zip(xs, ys)]
    rng = np.random.default_rng(seed)
    null = np.array([np.mean([cv_auc(x, rng.permutation(y), seed=seed, **kw) for x, y in zip(xs, ys)])
                     for _ in range(n_permutations)])
    m = float(np.mean(aucs))
    return dict(mean_auc=m, aucs=[float(a) for a in aucs], null_mean=float(null.mean()),
                null_q95=float(np.quantile(null, 0.95)),
                p_value=float((1 + np.sum(null >= m)) / (1 + n_permutations)), n_permutations=n_permutations)
