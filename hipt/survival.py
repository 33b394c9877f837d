"""Discrete-time survival: label binning, the negative log-likelihood loss, hazards → survival → risk.

HIPT's survival heads follow MCAT (Chen et al. 2021) and Zadeh & Schmidt (2020): time is cut into
``n_bins = 4`` intervals at the quartiles of the **uncensored** survival times; the model predicts a
hazard per interval, ``h_k = P(T ∈ bin k | T ≥ bin k) = sigmoid(logit_k)``; the survival function is
``S_k = Π_{j≤k} (1 − h_j)``; and a case's risk is ``−Σ_k S_k`` (a larger area under the survival
curve means a lower risk).

Likelihood of one case with bin ``y`` and censorship ``c`` (1 = censored, alive at last follow-up),
with ``S_pad = [1, S_0, …, S_{K−1}]`` (everybody is alive before the first bin):

- event observed in bin y (c = 0): ``P = S_pad[y] · h_y`` (survived bins < y, died in bin y);
- censored in bin y (c = 1): ``P = S_pad[y + 1]`` (survived through bin y).

The loss is ``−[(1−c)(log S_pad[y] + log h_y) + c · log S_pad[y+1]]``, every probability clamped at
``eps`` before the log, averaged over the batch (:func:`nll_loss`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch

__all__ = [
    "N_BINS",
    "nll_loss",
    "discretize_survival",
    "apply_bins",
    "hazards_to_survival",
    "risk_from_survival",
    "logits_to_hazards",
]

N_BINS = 4
_EDGE_EPS = 1e-6


def logits_to_hazards(logits: torch.Tensor) -> torch.Tensor:
    """``[B, K]`` logits → ``[B, K]`` hazards ``sigmoid(logits)`` (each bin's conditional event probability)."""
    return torch.sigmoid(logits)


def hazards_to_survival(hazards: torch.Tensor) -> torch.Tensor:
    """``[B, K]`` hazards → ``[B, K]`` survival ``S_k = Π_{j≤k} (1 − h_j)``."""
    return torch.cumprod(1.0 - hazards, dim=1)


def risk_from_survival(S: Any) -> Any:
    """``[B, K]`` survival → ``[B]`` risk ``−Σ_k S_k`` (torch tensor or numpy array in, same out)."""
    if isinstance(S, torch.Tensor):
        return -S.sum(dim=1)
    return -np.asarray(S).sum(axis=1)


def nll_loss(
    hazards: torch.Tensor,
    S: torch.Tensor | None,
    y: torch.Tensor,
    c: torch.Tensor,
    alpha: float = 0.0,
    eps: float = 1e-7,
) -> torch.Tensor:
    """Discrete-time survival negative log-likelihood (Zadeh & Schmidt 2020), mean over the batch.

    Args:
        hazards: ``[B, K]`` per-bin hazards in (0, 1).
        S: ``[B, K]`` survival ``cumprod(1 − hazards)``; ``None`` computes it from ``hazards``.
        y: ``[B]`` bin index of the event or censoring time (integer, ``0..K−1``).
        c: ``[B]`` censorship, **1 = censored** (alive at last follow-up), 0 = event observed.
        alpha: weight of an extra uncensored-only term: ``loss = (1−α)(L_cens + L_uncens) + α L_uncens``.
            HIPT uses ``α = 0``.
        eps: probabilities are clamped to ``≥ eps`` before the log.

    Returns:
        Scalar tensor: the mean loss.
    """
    if S is None:
        S = hazards_to_survival(hazards)
    B = hazards.shape[0]
    y = y.reshape(B, 1).long()
    c = c.reshape(B, 1).to(hazards.dtype)
    S_pad = torch.cat([torch.ones_like(c), S], dim=1)  # [B, K+1]: S_pad[k] = P(T ≥ bin k)
    log_s_y = torch.log(torch.gather(S_pad, 1, y).clamp(min=eps))
    log_h_y = torch.log(torch.gather(hazards, 1, y).clamp(min=eps))
    log_s_next = torch.log(torch.gather(S_pad, 1, y + 1).clamp(min=eps))
    uncensored = -(1.0 - c) * (log_s_y + log_h_y)
    censored = -c * log_s_next
    loss = (1.0 - alpha) * (censored + uncensored) + alpha * uncensored
    return loss.mean()


def discretize_survival(
    months: Any, censorship: Any, n_bins: int = N_BINS
) -> tuple[np.ndarray, np.ndarray]:
    """Bin survival times at the quantiles of the uncensored times (the MCAT rule).

    1. ``edges = quantiles(months[censorship == 0], n_bins)`` (``pandas.qcut``),
    2. the outer edges are widened to cover **all** cases: ``edges[0] = min(months) − 1e-6``,
       ``edges[-1] = max(months) + 1e-6``,
    3. every case (censored or not) is binned with ``pandas.cut(months, edges, right=False,
       include_lowest=True)``: intervals ``[e_k, e_{k+1})``.

    Call it on the patient-level table (one row per case: slides of a patient share its label).

    Args:
        months: ``[N]`` survival or follow-up times.
        censorship: ``[N]`` 1 = censored, 0 = event observed.
        n_bins: number of time bins (4 in HIPT/MCAT).

    Returns:
        ``(labels [N] int64 in 0..n_bins−1, edges [n_bins + 1] float64)``.  Reuse ``edges`` on other
        data with :func:`apply_bins`.
    """
    t = np.asarray(months, dtype=np.float64).ravel()
    cens = np.asarray(censorship, dtype=np.float64).ravel()
    if t.shape != cens.shape:
        raise ValueError(f"discretize_survival: {t.shape[0]} times but {cens.shape[0]} censorship values")
    if np.isnan(t).any() or np.isnan(cens).any():
        raise ValueError("discretize_survival: NaN in survival times or censorship")
    if not np.isin(cens, (0.0, 1.0)).all():
        raise ValueError("discretize_survival: censorship must be 0 (event) or 1 (censored)")
    uncensored = t[cens == 0]
    if uncensored.size < n_bins:
        raise ValueError(
            f"discretize_survival: {uncensored.size} uncensored cases cannot define {n_bins} quantile bins"
        )
    try:
        _, edges = pd.qcut(uncensored, q=n_bins, retbins=True, labels=False)
    except ValueError as e:  # duplicate edges: too many tied uncensored times
        raise ValueError(f"discretize_survival: quantile bins of the uncensored times are not distinct ({e})") from None
    edges = np.asarray(edges, dtype=np.float64)
    edges[0] = t.min() - _EDGE_EPS
    edges[-1] = t.max() + _EDGE_EPS
    return apply_bins(t, edges), edges


def apply_bins(months: Any, edges: Any) -> np.ndarray:
    """Bin times with given edges (``[e_k, e_{k+1})``); times outside the edges go to the first/last bin."""
    t = np.asarray(months, dtype=np.float64).ravel()
    e = np.asarray(edges, dtype=np.float64)
    labels = pd.cut(t, bins=e, right=False, include_lowest=True, labels=False)
    labels = np.asarray(labels, dtype=np.float64)
    n_bins = len(e) - 1
    labels = np.where(np.isnan(labels), np.where(t < e[0], 0, n_bins - 1), labels)
    return labels.astype(np.int64)
