"""Chapter 4's experiment (does stage-2 DINO see arrangement?) and the text that follows its numbers.

The chapter embeds the regions of the held-out ``context`` cohort three ways (mean-pooled stage-1
patch tokens, the ViT4K at initialization, the ViT4K after DINO stage 2) and asks how well each one
tells an *informative* region from the others.  Regions of one slide share its texture draws, so the
uncertainty comes from resampling *slides*: :func:`grouped_bootstrap_gain` gives the difference of two
representations with a paired bootstrap interval over slides, on the predictions of
:func:`oof_probe_scores` (the linear probe of :func:`hipt.pretrain.evaluate.probe_auc`, out of fold) or
of a KNN vote.

The findings helpers turn numbers into sentences whose wording depends on them: a difference is called
an effect only when its interval excludes 0.  The design appendix uses :func:`variant_findings`,
:func:`collapse_findings` and :func:`scale_findings` on the benchmark records; those are single runs
without an interval, so a change smaller than ``tol`` is worded as no change.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import pandas as pd
from scipy.stats import rankdata
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from hipt.book.evidence import fmt

__all__ = ["CHAPTER", "VARIANT_TOL", "oof_probe_scores", "grouped_bootstrap_gain", "gain_text",
           "arrangement_findings", "variant_findings", "collapse_findings", "scale_findings"]

CHAPTER = "04_dino_stage2"
#: single benchmark runs have no interval: AUC changes smaller than this are worded as "no change"
VARIANT_TOL = 0.02

Interval = tuple[float, float, float]


# ------------------------------------------------------------------------------------------ numbers
def oof_probe_scores(features: Mapping[str, np.ndarray], y: np.ndarray, groups: np.ndarray, folds: int = 5,
                     c: float = 0.1) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Out-of-fold scores of the linear probe of :func:`hipt.pretrain.evaluate.probe_auc` (same folds,
    same model), and each region's test fold (``-1`` where its fold holds one class and is skipped).

    The mean over folds of each fold's AUC on these scores is ``probe_auc``'s number.
    """
    y = np.asarray(y).astype(int)
    fold = np.full(len(y), -1)
    splits = [(tr, te) for tr, te in GroupKFold(folds).split(np.zeros(len(y)), y, groups)
              if len(np.unique(y[te])) == 2]
    if not splits:
        raise ValueError("oof_probe_scores: no test fold holds both classes")
    for k, (_, te) in enumerate(splits):
        fold[te] = k
    scores = {}
    for name, x in features.items():
        x = np.asarray(x, dtype=np.float64)
        s = np.full(len(y), np.nan)
        for tr, te in splits:
            clf = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=5000)).fit(x[tr], y[tr])
            s[te] = clf.predict_proba(x[te])[:, 1]
        scores[name] = s
    return scores, fold


def _auc(y: np.ndarray, s: np.ndarray) -> float:
    """ROC AUC by the rank-sum (Mann–Whitney) formula, ties counted half; NaN with one class only."""
    n1 = int(y.sum())
    n0 = len(y) - n1
    if n1 == 0 or n0 == 0:
        return float("nan")
    return float((rankdata(s)[y == 1].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def _balanced_accuracy(y: np.ndarray, pred: np.ndarray) -> float:
    """Mean of the two classes' recalls; NaN with one class only."""
    if y.min() == y.max():
        return float("nan")
    return float(((pred[y == 1] == 1).mean() + (pred[y == 0] == 0).mean()) / 2)


def _metric(name: str) -> Callable[[np.ndarray, np.ndarray], float]:
    # numpy versions of scikit-learn's metrics: the bootstrap calls them thousands of times
    if name == "auc":
        return _auc
    if name == "balanced_accuracy":
        return _balanced_accuracy
    raise ValueError(f"metric must be 'auc' or 'balanced_accuracy', not {name!r}")


def grouped_bootstrap_gain(y: np.ndarray, groups: np.ndarray, new: np.ndarray, base: np.ndarray,
                           metric: str = "auc", fold: np.ndarray | None = None, n_boot: int = 1000,
                           level: float = 0.95, seed: int = 0) -> Interval:
    """``metric(new) − metric(base)`` on the same regions, with a paired bootstrap interval over slides:
    ``(gain, low, high)``.

    ``new``, ``base``: ``[M]`` scores (``metric="auc"``) or predicted labels (``"balanced_accuracy"``)
    of two representations for the same regions; ``groups``: ``[M]`` slide ids; ``fold``: ``[M]`` test
    fold of each region (``-1``: left out), the metric being the mean over folds as in ``probe_auc``
    (``None``: one fold).  Each replicate draws, within each fold, as many slides as it holds, with
    replacement, and keeps both representations' predictions of the drawn slides (the pairing).
    """
    y = np.asarray(y).astype(int)
    groups = np.asarray(groups)
    new, base = np.asarray(new), np.asarray(base)
    fold = np.zeros(len(y), dtype=int) if fold is None else np.asarray(fold)
    m = _metric(metric)
    folds = [f for f in np.unique(fold) if f >= 0]
    # per fold: the slides and the row indices of each slide
    members = []
    for f in folds:
        idx = np.flatnonzero(fold == f)
        slides = list(dict.fromkeys(groups[idx]))
        members.append([idx[groups[idx] == s] for s in slides])

    def gain(rows_per_fold: list[np.ndarray]) -> float:
        d = [m(y[r], new[r]) - m(y[r], base[r]) for r in rows_per_fold]
        return float(np.nanmean(d)) if np.isfinite(d).any() else float("nan")

    point = gain([np.concatenate(mem) for mem in members])
    rng = np.random.default_rng(seed)
    boots = np.array([gain([np.concatenate([mem[j] for j in rng.integers(0, len(mem), len(mem))])
                            for mem in members]) for _ in range(n_boot)])
    boots = boots[np.isfinite(boots)]
    tail = (1 - level) / 2
    return point, float(np.quantile(boots, tail)), float(np.quantile(boots, 1 - tail))


# ------------------------------------------------------------------------------------------ text
def gain_text(g: Interval, spec: str = "+.3f") -> str:
    """``"+0.014 (95 % interval −0.020 to +0.048)"``."""
    return f"{fmt(g[0], spec)} (95 % interval {fmt(g[1], spec)} to {fmt(g[2], spec)})".replace("-", "−")


def _sign(g: Interval) -> int:
    """+1 when the interval lies above 0, −1 below, 0 when it holds 0 (or is undefined)."""
    if not all(np.isfinite(g)):
        return 0
    return 1 if g[1] > 0 else -1 if g[2] < 0 else 0


def arrangement_findings(probe: Mapping[str, float], gains: Mapping[str, Interval], adjacency: float | None,
                         pos_embed: str, metric: str = "probe AUC") -> str:
    """The chapter's findings from this run.

    ``probe``: ``{"mean": .., "random": .., "dino": ..}`` (the metric of each representation);
    ``gains``: ``{"dino_vs_random": (g, lo, hi), "dino_vs_mean": .., "random_vs_mean": ..}`` (slide
    bootstrap); ``adjacency``: the metric of the adjacency reader (the ceiling; None: not measured
    with this metric); ``pos_embed``: the position embeddings the ViT4K starts from, in words.
    """
    lines = [f"- {metric}: mean pooling {probe['mean']:.3f}, ViT4K at initialization {probe['random']:.3f}, "
             f"ViT4K after DINO stage 2 {probe['dino']:.3f}"
             + (f"; adjacency counts of the stage-1 tokens {adjacency:.3f}." if adjacency is not None else ".")]
    if adjacency is None:
        pass
    elif adjacency >= 0.9:
        lines.append("- The arrangement is in the stage-1 grids: counting which token type touches which "
                     "recovers it almost perfectly.")
    else:
        lines.append(f"- Even the adjacency counts read the arrangement only with {adjacency:.2f}: the stage-1 "
                     "grids hold little of it here, so no region encoder can do much better.")
    s_dm, s_dr, s_rm = (_sign(gains[k]) for k in ("dino_vs_mean", "dino_vs_random", "random_vs_mean"))
    lines.append("- DINO region token − mean pooling: " + gain_text(gains["dino_vs_mean"]) + ". "
                 + {1: "The region token reads the arrangement better than a bag of patches.",
                    0: "The two cannot be told apart on this cohort.",
                    -1: "The region token reads it *worse* than a bag of patches."}[s_dm])
    if s_dr > 0:
        tail = "DINO stage 2 adds to the network it started from."
    elif s_dr < 0:
        tail = "DINO stage 2 *removes* part of what the network read at initialization."
    elif s_rm > 0:
        tail = (f"No effect of DINO that this cohort can detect. The network at initialization, with its {pos_embed} "
                "position embeddings, already reads the arrangement better than mean pooling, by "
                f"{gain_text(gains['random_vs_mean'])}: what reads it here is the architecture, "
                "not what stage 2 learned.")
    else:
        tail = "No effect of DINO that this cohort can detect."
    lines.append("- DINO region token − the same ViT4K at initialization: " + gain_text(gains["dino_vs_random"])
                 + ". " + tail)
    if adjacency is not None and adjacency >= 0.9 and probe["dino"] < adjacency - 0.15:
        lines.append(f"- The region token stays {adjacency - probe['dino']:.2f} below the ceiling: it keeps only part "
                     "of what the grid holds.")
    return "\n".join(lines)


def _change(d: float, tol: float, what: str) -> str:
    if abs(d) < tol:
        return f"leaves {what} unchanged ({d:+.3f}, within ±{tol:g})"
    return f"{'raises' if d > 0 else 'lowers'} {what} by {abs(d):.3f}"


def variant_findings(v: pd.DataFrame, tol: float = VARIANT_TOL) -> str:
    """Findings of the ``stage2_arrangement`` record (one row per variant, indexed by ``variant``):
    what each variant changes against ``base`` and what DINO adds over the same network at
    initialization, with changes below ``tol`` worded as none (one run per variant: no interval)."""
    dino, init, mean = "probe AUC, DINO ViT4K", "probe AUC, same ViT4K at init", "probe AUC, mean pooling"
    bank = "token-bank regions: DINO"
    lines = []
    if "base" in v.index:
        b = v.loc["base"]
        lines.append(f"- `base` (the preset): probe AUC {b[dino]:.3f} after DINO, {b[init]:.3f} at initialization, "
                     f"{b[mean]:.3f} for mean pooling; DINO " + _change(b[dino] - b[init], tol, "the probe") + ".")
        for name in v.index.drop("base"):
            r = v.loc[name]
            parts = [_change(r[dino] - b[dino], tol, "the cohort probe")]
            if bank in v.columns and np.isfinite(r[bank]) and np.isfinite(b[bank]):
                parts.append(_change(r[bank] - b[bank], tol, "the held-out token-bank probe"))
            parts.append("DINO over its own initialization: " + f"{r[dino] - r[init]:+.3f}")
            lines.append(f"- `{name}` ({r['changes']}; {int(r['steps'])} steps, {r['train s']:.0f} s) against `base`: "
                         + "; ".join(parts) + ".")
    if {"sincos", "trunc-normal"} <= set(v.index):
        s, t = v.loc["sincos"], v.loc["trunc-normal"]
        d = s[init] - t[init]
        lines.append(f"- Position embeddings: at initialization the sine-cosine network reads the arrangement with "
                     f"{s[init]:.3f}, the trunc-normal one with {t[init]:.3f}"
                     + (": the position signal, not DINO, is what makes it readable on a CPU." if d >= tol and
                        abs(s[dino] - s[init]) < abs(d) else "."))
    return "\n".join(lines)


def collapse_findings(diag: pd.DataFrame, ln_k: float) -> str:
    """Findings of the collapse diagnosis: one row per teacher setting, with columns
    ``"[CLS] cosine similarity between regions"`` and ``"entropy of the centred target"``."""
    cos = diag["[CLS] cosine similarity between regions"].iloc[0]
    lines = [f"- The [CLS] embeddings of different regions have a mean cosine similarity of {cos:.3f} at "
             "initialization" + (": nearly parallel." if cos >= 0.9 else ": they already differ.")]
    for name, row in diag.iterrows():
        h = row["entropy of the centred target"]
        lines.append(f"- {name}: target entropy {h:.2f} of ln K = {ln_k:.2f}"
                     + (" — as flat as the uniform distribution: nothing to learn from." if h >= 0.99 * ln_k else
                        " — peaked enough to give the student a target."))
    return "\n".join(lines)


def scale_findings(rows: pd.DataFrame, tol: float = VARIANT_TOL) -> str:
    """Findings of the ``gpu_stage2_scale`` record (index: region representation; one AUC column)."""
    col = rows.columns[0]
    mean = rows.loc["mean of patch tokens", col]
    rand = rows.loc[[i for i in rows.index if "random init" in i][0], col]
    live = rows[rows.index.str.contains("DINO") & ~rows.index.str.contains("collapsed")]
    best = live[col].max()
    lines = [f"- The best DINO run reads the arrangement with AUC {best:.3f}, against {mean:.3f} for mean pooling "
             f"and {rand:.3f} for the same network at initialization: DINO "
             + _change(best - rand, tol, "the AUC") + " over its initialization."]
    collapsed = rows[rows.index.str.contains("collapsed")]
    if len(collapsed):
        lines.append(f"- The paper's head collapsed (loss = ln K) and its region token reads "
                     f"{collapsed[col].iloc[0]:.3f}.")
    return "\n".join(lines)
