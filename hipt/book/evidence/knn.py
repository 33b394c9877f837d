"""Chapter 8's findings on the phantom cohorts (KNN on mean slide embeddings), worded from its numbers."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from hipt.book.evidence import fmt

__all__ = ["knn_findings"]


def knn_findings(auc: Mapping[str, Mapping[str, tuple[float, float]]], vit4k: str = "knn_vit4k_mean",
                 vit256: str = "knn_vit256_mean") -> str:
    """Markdown bullets from ``auc[task][method] = (mean, std)`` test AUC over folds at the full training
    fraction, for the tasks ``phantom_composition2`` and ``phantom_context`` (either may be missing).

    A mean "separates the classes" at AUC ≥ 0.8; "near chance" is within one fold standard deviation (at
    least 0.05) of 0.5; the ViT-4K mean "beats" the ViT-256 mean only by more than the larger of their
    fold standard deviations.
    """
    lines = []
    comp = auc.get("phantom_composition2", {})
    if vit4k in comp and vit256 in comp:
        (a4, _), (a2, _) = comp[vit4k], comp[vit256]
        both = min(a4, a2) >= 0.8
        lines.append(f"- On `composition2` the mean ViT-4K embedding reaches {fmt(a4, '.2f')} and the mean ViT-256 "
                     f"embedding {fmt(a2, '.2f')}: "
                     + ("both separate the classes, as a mean of patch features captures composition and KNN "
                        "needs no training to use it." if both else
                        "not both separate the classes (AUC below 0.8), although the classes differ in composition."))
    ctx = auc.get("phantom_context", {})
    if vit4k in ctx and vit256 in ctx:
        (a4, s4), (a2, s2) = ctx[vit4k], ctx[vit256]
        s2 = s2 if np.isfinite(s2) else 0.0
        s4 = s4 if np.isfinite(s4) else 0.0
        chance = abs(a2 - 0.5) <= max(s2, 0.05)
        lines.append(f"- On `context` the mean ViT-256 embedding reaches {fmt(a2, '.2f')} (± {fmt(s2, '.2f')} over folds): "
                     + ("at chance within the fold-to-fold spread, as it must be when both classes have the same "
                        "patches." if chance else
                        "away from chance by more than the fold-to-fold spread, although both classes have the same "
                        "patches: a sign of chance on small test sets or of a leak (chapter 6 checks for one)."))
        margin = a4 - a2
        noise = max(s4, s2)
        if margin > noise:
            verdict = (f"above the ViT-256 mean by {fmt(margin)}, more than the fold spread ({fmt(noise, '.2f')}): the "
                       "region tokens carry some of the arrangement into a training-free KNN.")
        elif margin > -noise:
            verdict = (f"within the fold spread of the ViT-256 mean ({fmt(margin)} against ± {fmt(noise, '.2f')}): "
                       "this KNN does not show the region tokens' arrangement signal that chapter 4's linear probe "
                       "reads; a vote of neighbours in a 192-d mean is a blunter instrument.")
        else:
            verdict = f"below the ViT-256 mean by {fmt(-margin, '.2f')}, more than the fold spread."
        lines.append(f"- The mean ViT-4K embedding reaches {fmt(a4, '.2f')} (± {fmt(s4, '.2f')}): {verdict}")
    return "\n".join(lines)
