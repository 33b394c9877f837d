"""The book's phantom cohorts as slide-level tasks (chapters 6 to 9): features, table and split files."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from hipt.book import zoo
from hipt.tasks.splits import make_splits

__all__ = ["phantom_task"]


def phantom_task(
    kind: str,
    preset: str = "cpu",
    n_slides: int | None = None,
    n_folds: int = 5,
    split_seed: int = 0,
    val_frac: float = 0.15,
    test_frac: float = 0.25,
    progress: bool = False,
    stain_jitter: float | None = None,
    cohort_seed: int = 0,
) -> dict[str, str]:
    """A phantom cohort as a fine-tuning task: its features (from :func:`hipt.book.zoo.cohort_features`),
    its table and generated split files, as :class:`hipt.tasks.train.FinetuneConfig` fields.

    ``composition2``/``composition3``/``context``: Monte-Carlo subtyping folds (train/val/test; the
    small CPU cohorts get larger val/test fractions than TCGA's 10 %/10 % so that a test set holds more
    than a handful of slides).  ``survival``: ``n_folds``-fold cross-validation over cases.

    Two seeds, so that a result can be checked on other draws: ``cohort_seed`` draws the slides (a new
    seed generates, patches and extracts a new cohort, ~45 s for the 64-slide context cohort on 2 CPU
    cores) and ``split_seed`` draws the folds (split files are written once beside the features,
    ``splits_<kind>_k<n>_..._seed<s>/``).  ``stain_jitter``: the cohort's per-slide stain jitter (None: the
    kind's, :data:`hipt.phantom.COHORT_STAIN_JITTER`).

    Returns ``{"features_dir", "task", "splits_dir", "kind", "task_name"}``.
    """
    feats = Path(zoo.cohort_features(kind, preset=preset, seed=cohort_seed, n_slides=n_slides, progress=progress,
                                     stain_jitter=stain_jitter))
    table = feats / "table.csv"
    split_kind = "survival" if kind == "survival" else "subtype"
    tag = f"splits_{split_kind}_k{n_folds}_v{val_frac:g}_t{test_frac:g}_seed{split_seed}"
    splits = feats / tag
    if not (splits / f"splits_{n_folds - 1}.csv").is_file():
        make_splits(pd.read_csv(table), n_folds, split_kind, seed=split_seed, out_dir=splits,
                    val_frac=val_frac, test_frac=test_frac)
    return {"features_dir": str(feats), "task": str(table), "splits_dir": str(splits), "kind": split_kind,
            "task_name": f"phantom_{kind}"}
