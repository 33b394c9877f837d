"""Chapter 6's claims (slide-level fine-tuning on the phantom cohorts) and the text that follows them.

The chapter measures, for its cohort, split and training seeds, the effects below
(:func:`finetuning_effects`) and writes them with :func:`hipt.book.evidence.write_effects`; the seeds sweep
(``hipt reproduce seeds``) collects them over seed combinations.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from hipt.book.evidence import Claim, fmt

__all__ = ["FINETUNING_CLAIMS", "CHAPTER", "finetuning_effects", "context_findings", "raw_findings"]

CHAPTER = "06_finetuning"
#: a bag-of-patches AUC below this on the context cohort counts as "near chance": the spread of a chance
#: AUC over 3 folds of ~16 test slides is about ±0.08 (one standard deviation)
NEAR_CHANCE = 0.65

FINETUNING_CLAIMS: list[Claim] = [
    Claim("composition", CHAPTER, "comp_min_auc", ">", 0.8,
          "Every method learns composition (lowest AUC over methods and composition cohorts)"),
    Claim("context_gap", CHAPTER, "ctx_gap_hipt_vs_bag", ">", 0.0,
          "On context, HIPT beats the better of mean pooling and ABMIL (AUC difference)"),
    Claim("context_gap_0.1", CHAPTER, "ctx_gap_hipt_vs_bag", ">", 0.1,
          "On context, HIPT beats the better of mean pooling and ABMIL by at least 0.1 AUC"),
    Claim("vit4k_needed", CHAPTER, "ctx_gap_hipt_vs_hipt_n", ">", 0.0,
          "On context, HIPT beats its ablation without the ViT-4K, `hipt_n` (AUC difference)"),
    Claim("bag_near_chance", CHAPTER, "ctx_auc_bag_best", "<", NEAR_CHANCE,
          "On context, the better bag-of-patches model stays near chance (its AUC)"),
    Claim("no_bag_leak", CHAPTER, "ctx_token_signal_p", ">", 0.05,
          "On context, the mean patch token of a slide carries no label signal beyond chance (permutation p-value)"),
    Claim("probe_gap", CHAPTER, "probe_gap_4k_vs_mean", ">", 0.0,
          "The ViT-4K region token reads the arrangement better than the mean of patch tokens "
          "(region-probe AUC difference)"),
]


def _get(d: Mapping[str, float], k: str) -> float:
    v = d.get(k, float("nan"))
    return float("nan") if v is None else float(v)


def finetuning_effects(auc: Mapping[str, Mapping[str, float]], probe: Mapping[str, float] | None = None,
                       leak: Mapping[str, float] | None = None) -> dict[str, float]:
    """The chapter's effects from ``auc[task][method]`` (mean test AUC over folds, tasks named
    ``phantom_<cohort>``), the context region probe (``{"ViT-4K region token": auc, "mean of patch
    tokens": auc, ...}``) and the label signal of the context slides' mean patch tokens
    (:func:`hipt.phantom.checks.label_signal`: ``{"auc", "p_value", ...}``).  Effects of cohorts or
    methods that were not run are NaN."""
    comp = [v for t in ("phantom_composition2", "phantom_composition3") for v in auc.get(t, {}).values()]
    ctx = auc.get("phantom_context", {})
    bag = [ctx[m] for m in ("mean", "abmil") if m in ctx]
    best_bag = max(bag) if bag else float("nan")
    probe, leak = probe or {}, leak or {}
    out = {
        "ctx_token_signal_auc": _get(leak, "auc"),
        "ctx_token_signal_p": _get(leak, "p_value"),
        "comp_min_auc": min(comp) if comp else float("nan"),
        "ctx_auc_hipt": _get(ctx, "hipt"),
        "ctx_auc_hipt_n": _get(ctx, "hipt_n"),
        "ctx_auc_mean": _get(ctx, "mean"),
        "ctx_auc_abmil": _get(ctx, "abmil"),
        "ctx_auc_bag_best": best_bag,
        "ctx_gap_hipt_vs_bag": _get(ctx, "hipt") - best_bag,
        "ctx_gap_hipt_vs_hipt_n": _get(ctx, "hipt") - _get(ctx, "hipt_n"),
        "probe_auc_4k": _get(probe, "ViT-4K region token"),
        "probe_auc_mean": _get(probe, "mean of patch tokens"),
        "probe_gap_4k_vs_mean": _get(probe, "ViT-4K region token") - _get(probe, "mean of patch tokens"),
    }
    return out


def context_findings(effects: Mapping[str, float], sweep: pd.DataFrame | None = None) -> str:
    """What the context experiment shows, worded from this run's effects and the recorded sweep.

    The interpretation sentence depends on the numbers: it credits the region encoder only when HIPT
    beats both the bag-of-patches models and its own ablation without the ViT-4K; it says the slide
    head is the bottleneck only when the region probe reads the arrangement but HIPT does not win; and
    it names a leak when a bag-of-patches model is far from chance.
    """
    gap = _get(effects, "ctx_gap_hipt_vs_bag")
    gap_n = _get(effects, "ctx_gap_hipt_vs_hipt_n")
    bag = _get(effects, "ctx_auc_bag_best")
    p4k, pmean = _get(effects, "probe_auc_4k"), _get(effects, "probe_auc_mean")
    lines = []
    if np.isfinite(gap):
        if gap > 0.1 and (not np.isfinite(gap_n) or gap_n > 0.05):
            lines.append(f"In this run HIPT is ahead of the bag-of-patches models by {fmt(gap)} AUC"
                         + (f" and of its ablation without the ViT-4K by {fmt(gap_n)}" if np.isfinite(gap_n) else "")
                         + ": what separates the classes reaches the slide head through the region tokens.")
        elif gap > 0.1:
            lines.append(f"In this run HIPT is ahead of the bag-of-patches models by {fmt(gap)} AUC, but not of "
                         f"`hipt_n` ({fmt(gap_n)}), which has no ViT-4K: the gain does not come from the region "
                         "encoder.")
        elif gap > -0.1:
            lines.append(f"In this run HIPT and the best bag-of-patches model are within 0.1 AUC of each other "
                         f"({fmt(gap)}): one draw of ~16 test slides per fold cannot tell them apart.")
        else:
            lines.append(f"In this run HIPT is **behind** the best bag-of-patches model by {fmt(-gap, '.2f')} AUC.")
    if np.isfinite(bag) and bag >= 0.65:
        lines.append(f"A bag-of-patches model reaches {fmt(bag, '.2f')} AUC on a cohort whose classes have the same "
                     "patches: either chance on a small test set or a bag-level signal the generator leaks "
                     "(see the leak check above).")
    if np.isfinite(p4k) and np.isfinite(pmean):
        if p4k >= 0.6 and p4k - pmean >= 0.1:
            how = "carry" if p4k >= 0.8 else "carry part of"
            if np.isfinite(gap) and gap <= 0.1:
                lines.append(f"The region tokens do {how} the arrangement (probe {fmt(p4k, '.2f')} against "
                             f"{fmt(pmean, '.2f')} for the mean patch token): the limit is the slide-level learning "
                             "from a few dozen labelled slides, not only the region encoder.")
            else:
                lines.append(f"The region probe agrees: the region tokens {how} the arrangement (probe "
                             f"{fmt(p4k, '.2f')}, against {fmt(pmean, '.2f')} for the mean patch token).")
        else:
            lines.append(f"The region probe does not single out the region token (probe {fmt(p4k, '.2f')} against "
                         f"{fmt(pmean, '.2f')} for the mean patch token).")
    if sweep is not None and len(sweep):
        row = sweep[(sweep["claim"] == "context_gap")]
        if "context_stain_jitter" in row:
            row = row[row["context_stain_jitter"].fillna(0) == 0]
        if len(row):
            r = row.iloc[0]
            lines.append(f"Over the recorded seeds sweep, HIPT is ahead on {int(r['holds'])} of {int(r['seeds'])} seed "
                         f"combinations (median {fmt(r['median'])}): one run's margin, this one's included, is not "
                         "the effect.")
    return "\n\n".join(lines)


def raw_findings(raw: Mapping[str, float], standardized: Mapping[str, float], spread: float) -> str:
    """Raw inputs for every method vs z-scored inputs for every method, on the context cohort.

    ``raw``/``standardized``: mean test AUC per method; ``spread``: the median over dimensions of the
    region tokens' standard deviation divided by their absolute mean.
    """
    lines = []
    diffs = {m: standardized[m] - raw[m] for m in raw if m in standardized}
    if not diffs:
        return "No method was run both ways."
    big = {m: d for m, d in diffs.items() if abs(d) >= 0.1}
    table = ", ".join(f"{m} {fmt(raw[m], '.2f')} → {fmt(standardized[m], '.2f')}" for m in diffs)
    lines.append(f"Raw → z-scored inputs, test AUC: {table}.")
    if not big:
        lines.append("No method changes by 0.1 AUC or more: on these features the normalization does not decide "
                     "the comparison.")
    else:
        helped = [m for m, d in big.items() if d > 0]
        hurt = [m for m, d in big.items() if d < 0]
        if helped:
            lines.append(f"Z-scoring helps {', '.join(helped)} by 0.1 AUC or more"
                         + (f" (the region tokens' spread is {spread:.3f} × their mean: raw, they are nearly the same "
                            "vector for every region)" if "hipt" in helped and np.isfinite(spread) else "") + ".")
        if hurt:
            lines.append(f"Z-scoring hurts {', '.join(hurt)} by 0.1 AUC or more.")
        lines.append("The normalization matters here, so the chapter's comparison gives every method the same one.")
    return " ".join(lines)
