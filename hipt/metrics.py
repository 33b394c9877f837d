"""Evaluation metrics of the slide-level tasks: AUC, concordance index, mean ± std, Kaplan–Meier.

- :func:`auc`: ROC AUC as the reference reports it (binary: ``roc_auc_score(y, p[:, 1])``; more
  classes: macro one-vs-rest), equal to scikit-learn's.
- :func:`concordance_index`: Harrell's C for right-censored survival with ties, written here in
  vectorized numpy and equal to ``lifelines.utils.concordance_index(times, -risks, events)``.
- :func:`mean_std` / :func:`format_mean_std`: the "mean ± std over folds" of the paper's tables.
- :func:`km_risk_groups` / :func:`plot_km`: Kaplan–Meier curves of the low- and high-risk halves of a
  cohort (split at the median predicted risk) with a log-rank test.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from lifelines import KaplanMeierFitter
from lifelines.statistics import logrank_test
from sklearn.metrics import roc_auc_score

__all__ = [
    "auc",
    "concordance_index",
    "mean_std",
    "format_mean_std",
    "KMGroup",
    "KMResult",
    "km_risk_groups",
    "plot_km",
]


# --------------------------------------------------------------------------------------------- AUC
def auc(labels: Any, probs: Any) -> float:
    """ROC AUC of class scores, as the reference computes it.

    Args:
        labels: ``[N]`` integer class labels in ``0..C-1``.
        probs: ``[N]`` scores of the positive class (binary), or ``[N, C]`` class probabilities
            (softmax outputs; any scores work, since only their order matters).

    Returns:
        Binary (``[N]`` or ``[N, 2]``): ``sklearn.metrics.roc_auc_score(labels, p[:, 1])``.
        ``C > 2``: the macro average of the one-vs-rest AUCs ``roc_auc_score(labels == c, p[:, c])``,
        which equals ``roc_auc_score(labels, p, multi_class="ovr", average="macro")``; a class absent
        from ``labels`` is skipped (``nanmean``, as the reference's ``summary`` does; scikit-learn
        would raise instead).  ``nan`` (with a :class:`RuntimeWarning`) when the AUC is undefined:
        fewer than two classes present in ``labels``.
    """
    y = np.asarray(labels).astype(np.int64).ravel()
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim == 1:
        p = np.stack([1.0 - p, p], axis=1)
    if p.ndim != 2 or p.shape[0] != y.shape[0]:
        raise ValueError(f"auc: probs of shape {np.shape(probs)} do not match {y.shape[0]} labels")
    n_classes = p.shape[1]
    if y.size and (y.min() < 0 or y.max() >= n_classes):
        raise ValueError(f"auc: labels must lie in 0..{n_classes - 1}, got {sorted(set(y.tolist()))}")
    if len(np.unique(y)) < 2:
        warnings.warn("auc: fewer than two classes among the labels; AUC undefined (nan)", RuntimeWarning, stacklevel=2)
        return float("nan")
    if n_classes == 2:
        return float(roc_auc_score(y, p[:, 1]))
    per_class = [float(roc_auc_score(y == c, p[:, c])) for c in range(n_classes) if 0 < (y == c).sum() < len(y)]
    return float(np.mean(per_class))


# ---------------------------------------------------------------------------------------- C-index
def _concordance_counts(
    times: np.ndarray, risks: np.ndarray, events: np.ndarray, tied_tol: float, chunk: int = 2048
) -> tuple[int, int, int]:
    """(concordant, tied-in-risk, comparable) pair counts, O(n²) vectorized in row chunks.

    A pair (i, j) is comparable when i is known to fail first: ``T_i < T_j`` and i had the event, or
    ``T_i == T_j`` and only i had the event (an event ranks before a censoring at the same time).
    It is concordant when ``risk_i > risk_j``; a tie in risk (``|risk_i − risk_j| <= tied_tol``)
    counts one half.
    """
    n = len(times)
    concordant = tied = comparable = 0
    ev = events.astype(bool)
    for start in range(0, n, chunk):
        sl = slice(start, min(start + chunk, n))
        ti, ri, ei = times[sl, None], risks[sl, None], ev[sl, None]
        first = ei & ((ti < times[None, :]) | ((ti == times[None, :]) & ~ev[None, :]))
        diff = ri - risks[None, :]
        is_tie = np.abs(diff) <= tied_tol
        comparable += int(first.sum())
        tied += int((first & is_tie).sum())
        concordant += int((first & ~is_tie & (diff > 0)).sum())
    return concordant, tied, comparable


def concordance_index(times: Any, risks: Any, events: Any, tied_tol: float = 0.0) -> float:
    """Harrell's concordance index of predicted risks for right-censored survival times.

    Args:
        times: ``[N]`` follow-up times (e.g. months).
        risks: ``[N]`` predicted risks; **higher risk = earlier event** (HIPT uses ``risk = −ΣS``).
        events: ``[N]`` 1 where the event (death) was observed, 0 where the time is censored.
            Note the task tables store ``censorship`` (1 = censored): pass ``1 - censorship``.
        tied_tol: risks closer than this count as tied (one half). ``0.0`` equals lifelines;
            ``1e-8`` equals ``sksurv.metrics.concordance_index_censored``, which the reference's
            survival code (MCAT) used.

    Returns:
        ``(concordant + tied / 2) / comparable`` over all comparable pairs (see
        :func:`_concordance_counts`), identical to
        ``lifelines.utils.concordance_index(times, -risks, events)``; ``nan`` with a
        :class:`RuntimeWarning` when no pair is comparable (e.g. everyone censored).
    """
    t = np.asarray(times, dtype=np.float64).ravel()
    r = np.asarray(risks, dtype=np.float64).ravel()
    e = np.asarray(events, dtype=np.float64).ravel()
    if not (t.shape == r.shape == e.shape):
        raise ValueError(f"concordance_index: times {t.shape}, risks {r.shape} and events {e.shape} differ in length")
    if np.isnan(t).any() or np.isnan(r).any() or np.isnan(e).any():
        raise ValueError("concordance_index: NaN in times, risks or events")
    if not np.isin(e, (0.0, 1.0)).all():
        raise ValueError("concordance_index: events must be 0 (censored) or 1 (event observed)")
    concordant, tied, comparable = _concordance_counts(t, r, e, tied_tol)
    if comparable == 0:
        warnings.warn("concordance_index: no comparable pairs (c-index undefined, nan)", RuntimeWarning, stacklevel=2)
        return float("nan")
    return (concordant + tied / 2.0) / comparable


# ---------------------------------------------------------------------------------- mean ± std
def mean_std(values: Any, ddof: int = 0) -> tuple[float, float]:
    """Mean and standard deviation over folds, ignoring NaN folds.

    ``ddof=0`` (numpy's default, the population std) is what the reference's KNN notebook prints;
    pass ``ddof=1`` for the sample std (pandas' default).  Returns ``(nan, nan)`` for no finite value.
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        return float("nan"), float("nan")
    std = float(v.std(ddof=ddof)) if v.size > ddof else float("nan")
    return float(v.mean()), std


def format_mean_std(values: Any, digits: int = 3, ddof: int = 0) -> str:
    """``"0.874 ± 0.060"`` (the paper's style); ``"–"`` when there is no value."""
    m, s = mean_std(values, ddof=ddof)
    if math.isnan(m):
        return "–"
    if math.isnan(s):
        return f"{m:.{digits}f}"
    return f"{m:.{digits}f} ± {s:.{digits}f}"


# ---------------------------------------------------------------------------------- Kaplan–Meier
@dataclass
class KMGroup:
    """One risk group's Kaplan–Meier estimate (``timeline`` and ``survival`` are step-function knots)."""

    name: str
    n: int
    n_events: int
    timeline: np.ndarray
    survival: np.ndarray
    ci_lower: np.ndarray
    ci_upper: np.ndarray
    median_survival: float


@dataclass
class KMResult:
    """Kaplan–Meier curves of the risk groups and the log-rank test between them."""

    groups: list[KMGroup]
    threshold: float
    logrank_statistic: float
    logrank_p: float
    high_risk: np.ndarray = field(repr=False)  # [N] bool: which cases are in the high-risk group


def km_risk_groups(times: Any, risks: Any, events: Any, threshold: float | None = None) -> KMResult:
    """Split cases at the median predicted risk and estimate each half's survival.

    Args:
        times, risks, events: as in :func:`concordance_index` (``events`` 1 = observed).
        threshold: risk cut-off; default the median risk.  Cases with ``risk > threshold`` are
            "high risk"; the rest "low risk".

    Returns:
        :class:`KMResult` with a Kaplan–Meier estimate (lifelines) per group and the log-rank test
        statistic and p-value (``nan`` if a group is empty).
    """
    t = np.asarray(times, dtype=np.float64).ravel()
    r = np.asarray(risks, dtype=np.float64).ravel()
    e = np.asarray(events, dtype=np.float64).ravel().astype(bool)
    if not (t.shape == r.shape == e.shape):
        raise ValueError("km_risk_groups: times, risks and events differ in length")
    thr = float(np.median(r)) if threshold is None else float(threshold)
    high = r > thr
    groups = []
    for name, mask in (("low risk", ~high), ("high risk", high)):
        if not mask.any():
            continue
        kmf = KaplanMeierFitter(label=name).fit(t[mask], e[mask])
        ci = kmf.confidence_interval_survival_function_.to_numpy()
        groups.append(
            KMGroup(
                name=name,
                n=int(mask.sum()),
                n_events=int(e[mask].sum()),
                timeline=kmf.survival_function_.index.to_numpy(dtype=np.float64),
                survival=kmf.survival_function_.to_numpy(dtype=np.float64).ravel(),
                ci_lower=ci[:, 0].astype(np.float64),
                ci_upper=ci[:, 1].astype(np.float64),
                median_survival=float(kmf.median_survival_time_),
            )
        )
    if high.any() and (~high).any():
        test = logrank_test(t[high], t[~high], event_observed_A=e[high], event_observed_B=e[~high])
        stat, p = float(test.test_statistic), float(test.p_value)
    else:
        stat, p = float("nan"), float("nan")
    return KMResult(groups=groups, threshold=thr, logrank_statistic=stat, logrank_p=p, high_risk=high)


def plot_km(result: KMResult, ax=None, title: str | None = None, time_unit: str = "months", ci: bool = True):
    """Draw the Kaplan–Meier curves of :func:`km_risk_groups` (with 95% bands) and the log-rank p.

    Returns the matplotlib ``Axes``.
    """
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 3.6))
    colours = {"low risk": "tab:blue", "high risk": "tab:red"}
    for g in result.groups:
        colour = colours.get(g.name)
        ax.step(g.timeline, g.survival, where="post", color=colour, label=f"{g.name} (n={g.n}, {g.n_events} events)")
        if ci:
            ax.fill_between(g.timeline, g.ci_lower, g.ci_upper, step="post", color=colour, alpha=0.15, linewidth=0)
    ax.set_xlabel(f"time ({time_unit})")
    ax.set_ylabel("survival probability")
    ax.set_ylim(0, 1.02)
    p = result.logrank_p
    ptxt = "n/a" if math.isnan(p) else (f"{p:.2e}" if p < 1e-3 else f"{p:.3f}")
    ax.set_title(title or f"Kaplan–Meier by predicted risk (log-rank p = {ptxt})")
    ax.legend(loc="lower left", fontsize="small")
    return ax
