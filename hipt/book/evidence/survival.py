"""Chapter 7 (survival) as evidence: its effects, its claims, the chance level of a c-index, and the
findings text that follows the numbers.

The chapter cross-validates HIPT and two bag-of-patches models on the phantom survival cohort and
reports each method's mean per-fold validation c-index.  Two chance references:

- **retrained on shuffled outcomes** (:func:`hipt.tasks.train.permutation_null`, per method): the whole
  protocol rerun with survival time and censorship permuted across cases;
- **held-out permutations** (:func:`heldout_permutation_null`): the run's own predictions kept, the
  outcomes permuted among the cases of each validation fold; thousands of draws in milliseconds.

Why they agree in expectation: the c-index of one fold compares the risks of that fold's cases only,
and the risks depend on the training cases' outcomes, not on which held-out case got which outcome.
Swapping two held-out cases' outcomes leaves the trained model unchanged and turns every concordant
pair between them into a discordant one, so under shuffled outcomes each pair is concordant with
probability one half and the per-fold c-index averages 0.5; cross-validation adds no bias to it.  It
does add one to the **pooled** out-of-fold c-index, which ranks cases from different folds: each
fold model's overall risk level follows its training cases' outcomes, the complement of its held-out
cases' (:func:`pooled_cindex`).

Everything returns numbers or Markdown whose wording depends on the numbers; ``tests/test_evidence_survival.py``
feeds numbers that contradict the book's and checks that the text changes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from hipt.book.evidence import Claim, fmt, holds_share_text, summarize_claims, verdict
from hipt.metrics import concordance_index

__all__ = ["CHAPTER", "METHODS", "BAG_METHODS", "SURVIVAL_CLAIMS", "heldout_permutation_null", "pooled_cindex",
           "survival_effects", "chance_findings", "comparison_findings", "claims_this_run", "sweep_table",
           "sweep_findings"]

CHAPTER = "07_survival"
#: the methods the CPU chapter trains; HIPT is compared with the best of the bag-of-patches models
METHODS = ("hipt", "mean", "abmil")
BAG_METHODS = ("mean", "abmil")

_NAMES = {"hipt": "HIPT", "mean": "mean pooling", "abmil": "ABMIL"}
SURVIVAL_CLAIMS: list[Claim] = [
    Claim("survival_signal", CHAPTER, "cindex_oracle", ">", 0.6,
          "the simulated arrangement score ranks the cases well (oracle c-index above 0.6)"),
    Claim("survival_hipt_beats_bags", CHAPTER, "hipt_minus_best_bag", ">", 0.0,
          "HIPT ranks patients better than the best bag-of-patches model"),
    *[Claim(f"survival_{m}_above_chance", CHAPTER, f"{m}_minus_chance", ">", 0.0,
            f"{_NAMES[m]}'s c-index is above the mean of its shuffled-outcome reruns") for m in METHODS],
    *[Claim(f"survival_{m}_beyond_band", CHAPTER, f"{m}_above_band", ">", 0.0,
            f"{_NAMES[m]} ranks patients better than 95 % of chance rankings of the same cases") for m in METHODS],
]


# ------------------------------------------------------------------------------------------ numbers
def _fold_arrays(pred: pd.DataFrame) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per fold: (times, risks, events) of the held-out (``split == "val"``) cases."""
    if "split" in pred:
        pred = pred[pred["split"] == "val"]
    out = []
    for _, g in pred.groupby("fold", sort=True):
        out.append((g["time"].to_numpy(float), g["risk"].to_numpy(float), 1.0 - g["censorship"].to_numpy(float)))
    return out


def _cindex_batch(t: np.ndarray, r: np.ndarray, e: np.ndarray) -> np.ndarray:
    """Harrell's c-index (as :func:`hipt.metrics.concordance_index`, ``tied_tol=0``) for ``[P, n]``
    times and events against one ``[n]`` risk vector; NaN where no pair is comparable."""
    ev = e.astype(bool)
    ti, tj = t[:, :, None], t[:, None, :]
    first = ev[:, :, None] & ((ti < tj) | ((ti == tj) & ~ev[:, None, :]))  # [P, n, n]: i fails first
    diff = r[:, None] - r[None, :]
    comparable = first.sum(axis=(1, 2))
    score = (first & (diff > 0)).sum(axis=(1, 2)) + 0.5 * (first & (diff == 0)).sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(comparable > 0, score / np.maximum(comparable, 1), np.nan)


def heldout_permutation_null(pred: pd.DataFrame, n_permutations: int = 2000, seed: int = 0) -> np.ndarray:
    """Mean-over-folds c-index of a run's own held-out risks when the outcomes (time and censorship
    together) are permuted among the cases of each validation fold: ``[n_permutations]``.

    ``pred``: the run's per-case predictions (columns ``fold, time, risk, censorship``, optionally
    ``split``; only ``val`` rows are used).  The trained models do not change under such a permutation,
    so this is the exact chance distribution of the run's statistic given its predictions: with ~10
    cases per fold, how far from 0.5 a model that ranks at random lands.
    """
    rng = np.random.default_rng(seed)
    per_fold = []
    for t, r, e in _fold_arrays(pred):
        idx = np.argsort(rng.random((n_permutations, len(t))), axis=1)
        per_fold.append(_cindex_batch(t[idx], r, e[idx]))
    return np.nanmean(np.stack(per_fold), axis=0) if per_fold else np.full(n_permutations, np.nan)


def pooled_cindex(pred: pd.DataFrame) -> float:
    """The c-index of all held-out risks pooled over folds (each case once, ranked against cases of
    other folds too; the fold models' risks are not on one scale)."""
    if "split" in pred:
        pred = pred[pred["split"] == "val"]
    return concordance_index(pred["time"], pred["risk"], 1 - pred["censorship"])


def survival_effects(cindex: Mapping[str, float], chance: Mapping[str, float], oracle: float,
                     band: Mapping[str, tuple[float, float]] | None = None) -> dict[str, float]:
    """The chapter's effects for :func:`hipt.book.evidence.write_effects`.

    ``cindex``: mean per-fold validation c-index per method; ``chance``: mean of the same statistic over
    that method's shuffled-outcome reruns (missing or NaN: not measured); ``oracle``: c-index of the true
    arrangement score on the cohort; ``band``: per method, the 5–95 % range of
    :func:`heldout_permutation_null` (``{m}_above_band`` is the c-index minus its 95 % end).
    """
    nan = float("nan")
    band = band or {}
    eff: dict[str, float] = {"cindex_oracle": float(oracle)}
    for m in METHODS:
        c, ch = float(cindex.get(m, nan)), float(chance.get(m, nan))
        eff[f"cindex_{m}"] = c
        eff[f"chance_{m}"] = ch
        eff[f"{m}_minus_chance"] = c - ch
        eff[f"{m}_above_band"] = c - float(band[m][1]) if m in band else nan
    bags = [cindex[m] for m in BAG_METHODS if m in cindex and np.isfinite(cindex[m])]
    eff["hipt_minus_best_bag"] = float(cindex.get("hipt", nan)) - max(bags) if bags else nan
    return eff


# ------------------------------------------------------------------------------------------ text
def _names(items: Sequence[str]) -> str:
    items = list(items)
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def chance_findings(cindex: Mapping[str, float], null: pd.DataFrame | None, band: Mapping[str, tuple[float, float]],
                    cases_per_fold: float, n_heldout: int, null_epochs: int | None = None,
                    heldout_sd: Mapping[str, float] | None = None) -> str:
    """What the two chance references show, and where each method's c-index falls against them.

    ``null``: one row per (``method``, ``permutation``) retrained on shuffled outcomes, with ``mean``
    (mean per-fold c-index) and ``pooled`` (pooled out-of-fold c-index); None or empty when not run.
    ``band``: per method, the 5–95 % range of :func:`heldout_permutation_null` (``n_heldout`` draws);
    ``heldout_sd``: per method, the standard deviation of those draws (compared with the reruns' spread).
    """
    lines = []
    if null is not None and len(null):
        v = null["mean"].to_numpy(float)
        mu, n = float(np.mean(v)), len(v)
        sd = float(np.std(v, ddof=1)) if n > 1 else float("nan")
        se = sd / np.sqrt(n)
        per = null.groupby("method")["permutation"].nunique()
        epochs = f", {null_epochs} epochs each" if null_epochs else ""
        head = (f"- Retrained on shuffled outcomes ({_names([f'{m} ×{k}' for m, k in per.items()])}{epochs}), "
                f"the mean per-fold c-index averages {fmt(mu, '.3f')} ± {fmt(se, '.3f')} (standard error; sd "
                f"{fmt(sd, '.3f')} over {n} reruns). ")
        centred = bool(np.isfinite(se) and abs(mu - 0.5) <= 2 * se)
        if centred:
            head += "That is 0.5 within twice its standard error, as the swap argument says it must be."
        elif np.isfinite(se):
            head += (f"That is {'below' if mu < 0.5 else 'above'} 0.5 by more than twice its standard error, "
                     "which the swap argument does not explain: look at the individual reruns (ties in risk? "
                     "a fold without comparable pairs?) before trusting it.")
        else:
            head += "One rerun says nothing about a bias."
        lines.append(head)
        if heldout_sd and np.isfinite(sd):
            h = float(np.mean(list(heldout_sd.values())))
            ratio = sd / h if h > 0 else float("nan")
            lines.append(f"- Their spread (sd {sd:.3f}) "
                         + (f"is close to that of the held-out permutations of the fully trained models (sd {h:.3f}, "
                            "ratio within 2/3 to 3/2): consistent with the argument that shorter training on "
                            "shuffled outcomes leaves the chance distribution as it is." if 2 / 3 <= ratio <= 1.5 else
                            f"differs from that of the held-out permutations of the fully trained models (sd {h:.3f}, "
                            "ratio outside 2/3 to 3/2): the shortened reruns are not a faithful chance level here; "
                            "raise null_epochs."))
        if "pooled" in null and null["pooled"].notna().any():
            both = null.dropna(subset=["pooled"])
            p = both["pooled"].to_numpy(float)
            d = p - both["mean"].to_numpy(float)
            pse = float(np.std(p, ddof=1)) / np.sqrt(len(p)) if len(p) > 1 else float("nan")
            dse = float(np.std(d, ddof=1)) / np.sqrt(len(d)) if len(d) > 1 else float("nan")
            text = (f"- The pooled out-of-fold c-index of the same reruns averages {p.mean():.3f} "
                    f"± {fmt(pse, '.3f')}, "
                    f"{fmt(float(d.mean()), '+.3f')} ± {fmt(dse, '.3f')} against their per-fold mean")
            pooled_low = bool(np.isfinite(pse) and p.mean() < 0.5 - 2 * pse)
            lower = bool(np.isfinite(dse) and d.mean() < -2 * dse)
            if pooled_low and lower:
                text += (": below 0.5 and below the per-fold mean, each by more than twice its standard error. "
                         "That is the complement bias of pooling: it belongs to the pooled number (the "
                         "Kaplan–Meier titles), not to the per-fold mean.")
            elif pooled_low:
                text += (": below 0.5 by more than twice its standard error, but not measurably below the "
                         "per-fold mean of the same reruns, so these reruns cannot attribute it to pooling.")
            else:
                text += (": not below 0.5 by more than twice its standard error; the complement bias that can "
                         "pull a pooled c-index down is too small to measure with these reruns.")
            lines.append(text)
    else:
        lines.append("- No shuffled-outcome reruns in this run (`n_permutations = 0`).")
    if band:
        lo = min(b[0] for b in band.values())
        hi = max(b[1] for b in band.values())
        lines.append(f"- Permuting the outcomes within each held-out fold ({n_heldout} times, each model's "
                     f"predictions fixed) puts 90 % of chance rankings between {fmt(lo, '.3f')} and {fmt(hi, '.3f')} "
                     f"with about {cases_per_fold:.0f} cases per fold: that is the scatter of one run of this "
                     "protocol around 0.5.")
        inside = [m for m in band if band[m][0] <= cindex.get(m, np.nan) <= band[m][1]]
        below = [m for m in band if cindex.get(m, np.nan) < band[m][0]]
        above = [m for m in band if cindex.get(m, np.nan) > band[m][1]]
        if inside:
            low = [m for m in inside if cindex[m] < 0.5]
            lines.append(f"- Inside that band: {_names([f'{m} ({cindex[m]:.3f})' for m in inside])}: on this run "
                         f"{'it' if len(inside) == 1 else 'they'} cannot be told from chance"
                         + (f"; {_names(low)} below 0.5: the scatter of a chance ranking, not a bias." if low
                            else "."))
        if below:
            lines.append(f"- Below it: {_names([f'{m} ({cindex[m]:.3f})' for m in below])}: worse than 95 % of chance "
                         "rankings of the same cases. That is either a 1-in-20 draw (likelier with several methods "
                         "checked) or something learned on the training folds that reverses on held-out cases; "
                         "other split seeds tell which.")
        if above:
            lines.append(f"- Above it: {_names([f'{m} ({cindex[m]:.3f})' for m in above])}: better than 95 % of "
                         "chance rankings of the same cases.")
    return "\n".join(lines)


def comparison_findings(cindex: Mapping[str, float], oracle: float, band: Mapping[str, tuple[float, float]],
                        n_cases: int | None = None) -> str:
    """HIPT against the best bag-of-patches model, and every model against the oracle (the c-index of
    the cohort's true arrangement score; NaN when there is none, e.g. on TCGA), for one run."""
    nan = float("nan")
    h = float(cindex.get("hipt", nan))
    bags = {m: cindex[m] for m in BAG_METHODS if m in cindex}
    first = "- Mean validation c-index over the folds: " + ", ".join(f"{m} {v:.3f}" for m, v in cindex.items())
    if np.isfinite(oracle):
        first += f"; the true arrangement score reaches {oracle:.3f} on the same cases"
    lines = [first + "."]
    if bags and np.isfinite(h):
        best = max(bags, key=bags.get)
        diff = h - bags[best]
        half = float(np.mean([(b[1] - b[0]) / 2 for b in band.values()])) if band else nan
        if diff > 0:
            text = f"- HIPT's c-index is higher than the best bag-of-patches model's ({best}) by {diff:.3f}"
            if np.isfinite(half) and diff > half:
                text += (f", more than the half-width of the chance band ({half:.3f}): on this run HIPT separates "
                         "from the bags.")
            elif np.isfinite(half):
                text += (f", less than the half-width of the chance band ({half:.3f}): one run this size does not "
                         "separate them.")
            else:
                text += "."
        else:
            text = f"- HIPT is not higher than the best bag-of-patches model ({best}): {diff:+.3f}."
        lines.append(text)
    if np.isfinite(oracle) and cindex:
        top = max(cindex.values())
        cases = f"{n_cases} cases" if n_cases else "this many cases"
        if oracle >= 0.6 and oracle - top > 0.05:
            lines.append(f"- The signal is in the cohort (oracle {oracle:.3f}) and no model comes within 0.05 of it "
                         f"(best {top:.3f}): what the models read does not carry the arrangement well enough, or "
                         f"{cases} are too few to learn it from.")
        elif oracle >= 0.6:
            lines.append(f"- The best model ({top:.3f}) comes within 0.05 of the oracle ({oracle:.3f}).")
        else:
            lines.append(f"- The oracle itself ranks poorly here ({oracle:.3f}): the simulated survival times are "
                         "too noisy on this cohort for any model to do well.")
    return "\n".join(lines)


def claims_this_run(effects: Mapping[str, float], claims: Sequence[Claim] = SURVIVAL_CLAIMS) -> pd.DataFrame:
    """Per claim: its condition, this run's effect and whether it holds on this run."""
    rows = []
    for c in claims:
        v = effects.get(c.effect, float("nan"))
        rows.append({"claim": c.name, "condition": c.condition, "this run": v,
                     "holds on this run": "yes" if c.holds(v) else ("n/a" if not np.isfinite(v) else "no")})
    return pd.DataFrame(rows)


def sweep_table(rows: Sequence[Mapping[str, Any]], claims: Sequence[Claim] = SURVIVAL_CLAIMS) -> pd.DataFrame:
    """The recorded sweep's rows of this chapter summarized per claim (median, 10–90 % range, holds k of n)."""
    rows = [r for r in rows if r.get("chapter") == CHAPTER]
    s = summarize_claims(rows, claims)
    if not len(s):
        return s
    return pd.DataFrame({"claim": s["claim"], "condition": s["condition"], "median": s["median"].round(3),
                         "10–90 %": [f"{a:+.3f} … {b:+.3f}" for a, b in zip(s["p10"], s["p90"])],
                         "holds": [f"{k} of {n}" for k, n in zip(s["holds"], s["seeds"])],
                         "share": s["share"]})


def sweep_findings(summary: pd.DataFrame | None, effects: Mapping[str, float],
                   claims: Sequence[Claim] = SURVIVAL_CLAIMS) -> str:
    """Each claim worded with :func:`hipt.book.evidence.verdict` over the recorded sweep; without a sweep,
    from this run alone, said as such."""
    by_name = {c.name: c for c in claims}
    lines = []
    if summary is None or not len(summary):
        lines.append("The seeds sweep has not been run, so each claim rests on this run alone (one cohort, one "
                     "split, one training seed):")
        for c in claims:
            v = effects.get(c.effect, float("nan"))
            state = "holds" if c.holds(v) else ("is not measured" if not np.isfinite(v) else "does not hold")
            lines.append(f"- {c.text[0].upper() + c.text[1:]}: {state} on this run ({c.effect} = {fmt(v, '+.3f')}).")
        return "\n".join(lines)
    lines.append("Over the recorded sweep:")
    for _, row in summary.iterrows():
        c = by_name.get(row["claim"])
        if c is None:
            continue
        n_hold, n = (int(x) for x in str(row["holds"]).split(" of "))
        v = effects.get(c.effect, float("nan"))
        lines.append(f"- The claim that {c.text} {verdict(float(row['share']))} "
                     f"({holds_share_text(n_hold, n)}, median {c.effect} {row['median']:+.3f}; this run "
                     f"{fmt(v, '+.3f')}).")
    return "\n".join(lines)
