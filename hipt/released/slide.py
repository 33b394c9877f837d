"""Slide-level results on the reference's released TCGA embeddings: KNN, Table 1 (HIPT-GP, MIL), survival.

Everything here reads files under a local root laid out like the reference repository
(:mod:`hipt.released.registry`) and compares with the numbers the reference's own notebooks printed
(:data:`REFERENCE_KNN`, :data:`REFERENCE_TABLE1`, :data:`PAPER_SURVIVAL`):

- :func:`knn_table`: the reference's KNN protocol on its pickled mean-embedding folds
  (:func:`hipt.knn.released_knn_aucs`; deterministic, so equal to the reference to the printed digit),
  plus a row the reference never reported: KNN on the mean of the ``[M, 192]`` region tokens of each
  slide's ``.pt`` file, on the task's split files (:func:`hipt.knn.evaluate_knn`);
- :func:`table1_runs` / :func:`run_table1`: ``hipt_gp`` (the reference's ``HIPT_GP_FC``) and ``mil`` on
  region tokens (its ``MIL_fc``), 10 folds × 25 % / 100 %, with the reference's training settings
  (Adam 2e-4, 20 epochs, class-balanced sampling, raw tokens, its non-accumulating "accumulation");
- :func:`run_survival`: ``hipt_gp`` for BRCA and LUAD overall survival, 5 folds by case.

The embeddings were computed by the reference's authors with its released checkpoints at 0.5 µm/px,
not by this package; what is regenerated here is the evaluation on top of them.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from hipt.device import resolve_device
from hipt.errors import HIPTError
from hipt.knn import evaluate_knn, released_knn_aucs
from hipt.models.mil import build_model
from hipt.released.fetch import require_files
from hipt.released.registry import (
    KNN_ENCODERS,
    KNN_STUDIES,
    knn_files,
    knn_folds_dir,
    slide_embeddings_dir,
    slide_files,
)
from hipt.tasks.tcga import TaskData, load_task
from hipt.tasks.train import FinetuneConfig, run_cv

__all__ = [
    "REFERENCE_KNN",
    "REFERENCE_TABLE1",
    "PAPER_SURVIVAL",
    "SUBTYPE_TASKS",
    "SURVIVAL_TASKS",
    "STUDY_OF_TASK",
    "knn_table",
    "knn_table_from_folds",
    "vit4k_knn_row",
    "table1_config",
    "table1_runs",
    "seconds_per_step",
    "estimate_seconds",
    "run_table1",
    "table1_summary",
    "run_survival",
    "task_slide_files",
    "format_mean_std",
]

SUBTYPE_TASKS = ("tcga_brca_subtype", "tcga_lung_subtype", "tcga_kidney_subtype")
SURVIVAL_TASKS = ("tcga_brca_survival", "tcga_luad_survival")
STUDY_OF_TASK = {"tcga_brca_subtype": "tcga_brca", "tcga_lung_subtype": "tcga_lung",
                 "tcga_kidney_subtype": "tcga_kidney"}

#: KNN test AUC (mean, std over 10 folds) printed by ``3-Self-Supervised-Eval/slide_extraction-evaluation.ipynb``:
#: encoder → study → fraction → (mean, std).
REFERENCE_KNN: dict[str, dict[str, dict[float, tuple[float, float]]]] = {
    "resnet50mean": {"tcga_brca": {0.25: (0.638, 0.089), 1.0: (0.667, 0.070)},
                     "tcga_lung": {0.25: (0.696, 0.055), 1.0: (0.794, 0.035)},
                     "tcga_kidney": {0.25: (0.862, 0.030), 1.0: (0.951, 0.016)}},
    "vit16mean": {"tcga_brca": {0.25: (0.605, 0.092), 1.0: (0.725, 0.083)},
                  "tcga_lung": {0.25: (0.622, 0.067), 1.0: (0.742, 0.045)},
                  "tcga_kidney": {0.25: (0.848, 0.032), 1.0: (0.899, 0.027)}},
    "vit256mean": {"tcga_brca": {0.25: (0.682, 0.055), 1.0: (0.775, 0.042)},
                   "tcga_lung": {0.25: (0.773, 0.048), 1.0: (0.889, 0.027)},
                   "tcga_kidney": {0.25: (0.916, 0.022), 1.0: (0.974, 0.016)}},
}

#: Test AUC (mean, std over 10 folds) of the reference's issue-25 rerun on the released [M, 192]
#: embeddings (``2-Weakly-Supervised-Subtyping/Evaluation-Classification-Issue25.ipynb``).
REFERENCE_TABLE1: dict[str, dict[str, dict[float, tuple[float, float]]]] = {
    "mil_regions": {"tcga_brca_subtype": {0.25: (0.790, 0.079), 1.0: (0.832, 0.067)},
                    "tcga_lung_subtype": {0.25: (0.907, 0.025), 1.0: (0.928, 0.026)},
                    "tcga_kidney_subtype": {0.25: (0.948, 0.018), 1.0: (0.978, 0.013)}},
    "hipt_gp": {"tcga_brca_subtype": {0.25: (0.837, 0.049), 1.0: (0.879, 0.062)},
                "tcga_lung_subtype": {0.25: (0.918, 0.023), 1.0: (0.953, 0.023)},
                "tcga_kidney_subtype": {0.25: (0.965, 0.011), 1.0: (0.979, 0.009)}},
}

#: The paper's HIPT c-index (5-fold mean, std) from its full hierarchical features (not these embeddings).
PAPER_SURVIVAL = {"tcga_brca_survival": (0.634, 0.050), "tcga_luad_survival": (0.538, 0.044)}

_ENCODER_NAMES = {"resnet50mean": "ResNet-50 (ImageNet)", "vit16mean": "ViT-16 (DINO)", "vit256mean": "ViT-256 (DINO)"}


def format_mean_std(values: Sequence[float], digits: int = 3) -> str:
    """``mean ± std`` over folds, with the sample standard deviation (``ddof=1``): the reference's notebooks
    print pandas' ``.mean()`` and ``.std()`` of the fold AUCs."""
    v = np.asarray(values, dtype=float)
    std = v.std(ddof=1) if len(v) > 1 else float("nan")
    return f"{v.mean():.{digits}f} ± {std:.{digits}f}"


def _ref(mean_std: tuple[float, float] | None) -> str:
    return "" if mean_std is None else f"{mean_std[0]:.3f} ± {mean_std[1]:.3f}"


def task_slide_files(tasks: Sequence[str | TaskData] = SUBTYPE_TASKS + SURVIVAL_TASKS):
    """The released ``[M, 192]`` files of every slide in these tasks' tables (registry entries, deduplicated);
    ``tasks`` are registered names or tasks already loaded."""
    ids: list[str] = []
    for t in tasks:
        ids += list((t if isinstance(t, TaskData) else load_task(t)).table["slide_id"])
    return slide_files(ids)


# ---------------------------------------------------------------------------------------------- KNN
def knn_table(root: str | Path | None = None, encoders: Sequence[str] = tuple(KNN_ENCODERS),
              studies: Sequence[str] = KNN_STUDIES, fractions: Sequence[float] = (0.25, 1.0)) -> pd.DataFrame:
    """The reference's KNN table regenerated from its released folds, beside its printed numbers.

    Returns one row per (encoder, study, fraction): ``encoder``, ``study``, ``fraction``, ``aucs`` (the 10
    fold AUCs), ``ours`` and ``reference`` (``mean ± std``), ``diff`` (our mean − the reference's).
    Raises one :class:`~hipt.errors.HIPTError` naming the missing files and how to get them.
    """
    require_files(knn_files(studies, encoders), root, "--knn")
    return knn_table_from_folds(knn_folds_dir(root), encoders, studies, fractions)


def knn_table_from_folds(folds: str | Path, encoders: Sequence[str] = tuple(KNN_ENCODERS),
                         studies: Sequence[str] = KNN_STUDIES,
                         fractions: Sequence[float] = (0.25, 1.0)) -> pd.DataFrame:
    """:func:`knn_table` on a ``knn-subtyping`` folder given directly (``hipt knn --released-folds``)."""
    rows = []
    for enc in encoders:
        for study in studies:
            for frac in fractions:
                aucs = released_knn_aucs(folds, study, enc, frac)
                ref = REFERENCE_KNN.get(enc, {}).get(study, {}).get(frac)
                rows.append({"encoder": _ENCODER_NAMES.get(enc, enc), "study": study, "fraction": frac,
                             "aucs": aucs, "ours": format_mean_std(aucs), "reference": _ref(ref),
                             "diff": (float(np.mean(aucs)) - ref[0]) if ref else np.nan})
    return pd.DataFrame(rows)


def vit4k_knn_row(root: str | Path | None = None, tasks: Sequence[str] = SUBTYPE_TASKS,
                  fractions: Sequence[float] = (0.25, 1.0), reference_frac: bool = True) -> pd.DataFrame:
    """KNN on the mean of each slide's released ``[M, 192]`` region tokens, on the tasks' split files.

    The reference reported no such row.  ``reference_frac=True`` samples 0.1 of the training split for
    the "25 %" setting, as the reference's KNN did, so that the row compares with its table.
    Returns the records of :func:`hipt.knn.evaluate_knn` (one per task, fraction and fold).
    """
    loaded = [load_task(t) for t in tasks]
    require_files(task_slide_files(loaded), root, "--slides")
    frames = [evaluate_knn(task, slide_embeddings_dir(root), levels=("vit4k",), fractions=fractions,
                           reference_bug_frac=0.1 if reference_frac else None) for task in loaded]
    return pd.concat(frames, ignore_index=True)


# ------------------------------------------------------------------------------------ fine-tuning
def table1_config(root: str | Path | None, out: str | Path, method: str, **overrides) -> FinetuneConfig:
    """The reference's issue-25 training settings for ``method`` (``hipt_gp`` or ``mil``) on region tokens.

    Adam (lr 2e-4, weight decay 1e-5), 20 epochs, class-balanced sampling, seed 1, dropout 0.25, the
    last epoch's model, raw region tokens (``standardize=False``) and the reference's accumulation
    (loss / 32, a step after every slide: ``reference_accumulation=True``).  ``overrides`` change any field
    (e.g. ``device="cuda"``, ``folds=[0]``, ``max_epochs=2``).
    """
    if method not in ("hipt_gp", "mil"):
        raise HIPTError(f"{method}: Table 1 on the released embeddings runs hipt_gp or mil")
    base = FinetuneConfig(features_dir=str(slide_embeddings_dir(root)), method=method, out=str(out),
                          tokens="region", standardize=False, reference_accumulation=True,
                          fractions=[0.25, 1.0], verbose=True)
    return base.replace(**overrides)


def table1_runs(tasks: Sequence[str] = SUBTYPE_TASKS, methods: Sequence[str] = ("hipt_gp", "mil"),
                fractions: Sequence[float] = (0.25, 1.0), folds: Sequence[int] | None = None) -> pd.DataFrame:
    """The plan: one row per (task, method, fraction, fold) with the number of training slides."""
    rows = []
    for t in tasks:
        task = load_task(t)
        for m in methods:
            for f in fractions:
                for k in (range(task.n_folds) if folds is None else folds):
                    rows.append({"task": t, "method": m, "fraction": f, "fold": k,
                                 "n_train": len(task.fold(k, f).train)})
    return pd.DataFrame(rows)


def seconds_per_step(method: str, device: str = "cpu", n_regions: int = 40, steps: int = 20) -> float:
    """Measured seconds of one training step (forward, backward, Adam) of ``method`` on a random bag of
    ``n_regions`` region tokens (the released slides have ~40 on average), on ``device``: the basis of the
    time estimate that ``hipt released table1`` prints before it starts."""
    dev = resolve_device(device)
    model = build_model(method, 192, 2).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=2e-4)
    bag = {"feats4k": torch.randn(n_regions, 192, device=dev)}
    y = torch.tensor([1], device=dev)

    def step() -> None:
        loss = torch.nn.functional.cross_entropy(model(bag)["logits"], y)
        loss.backward()
        opt.step()
        opt.zero_grad()

    step()  # first call: allocation and kernel selection
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / steps


def estimate_seconds(plan: pd.DataFrame, epochs: int = 20, device: str = "cpu") -> float:
    """Training time of a :func:`table1_runs` plan from measured step times (evaluation not counted)."""
    rate = {m: seconds_per_step(m, device) for m in plan["method"].unique()}
    return float(sum(rate[m] * n * epochs for m, n in zip(plan["method"], plan["n_train"])))


def run_table1(root: str | Path | None, out: str | Path, tasks: Sequence[str] = SUBTYPE_TASKS,
               methods: Sequence[str] = ("hipt_gp", "mil"), **overrides) -> pd.DataFrame:
    """Train and evaluate every run of :func:`table1_runs` (finished folds in ``out`` are read back).

    Checks first that every slide of the tasks has its released file under ``root`` (one error naming
    what is missing and the command that fetches it), then runs :func:`hipt.tasks.train.run_cv` per
    task and method.  Returns the metric records of all runs.
    """
    loaded = {t: load_task(t) for t in tasks}
    require_files(task_slide_files(list(loaded.values())), root, "--slides")
    records = []
    for t, task in loaded.items():
        for m in methods:
            config = table1_config(root, out, m, task=t, **overrides)
            records.append(run_cv(config, task=task))
    return pd.concat(records, ignore_index=True)


def table1_summary(records: pd.DataFrame) -> pd.DataFrame:
    """Test AUC ``mean ± std`` per (method, task, fraction) beside the reference's issue-25 numbers."""
    test = records[(records["split"] == "test") & (records["metric"] == "auc")]
    rows = []
    for (method, task, frac), g in test.groupby(["method", "task", "fraction"]):
        ref = REFERENCE_TABLE1.get(method, {}).get(task, {}).get(float(frac))
        rows.append({"method": method, "task": task, "fraction": frac, "folds": len(g),
                     "ours": format_mean_std(g["value"]), "reference": _ref(ref),
                     "diff": (float(g["value"].mean()) - ref[0]) if ref else np.nan})
    return pd.DataFrame(rows)


def run_survival(root: str | Path | None, out: str | Path, tasks: Sequence[str] = SURVIVAL_TASKS,
                 method: str = "hipt_gp", **overrides) -> pd.DataFrame:
    """``method`` on region tokens for overall survival (5 folds by case; c-index on each fold's val cases).

    The MCAT/HIPT survival protocol of :mod:`hipt.tasks.train` (discrete-time NLL, 4 bins, patient-level
    bags), with the same settings as :func:`table1_config`.  Returns one row per task: the fold c-indices,
    ``ours`` (mean ± std) and the paper's HIPT number (from its full hierarchical features, not these).
    """
    loaded = {t: load_task(t) for t in tasks}
    require_files(task_slide_files(list(loaded.values())), root, "--slides")
    rows = []
    for t, task in loaded.items():
        config = table1_config(root, out, method, task=t, fractions=[1.0], **overrides)
        rec = run_cv(config, task=task)
        c = rec[(rec["split"] == "val") & (rec["metric"] == "c_index")]["value"].to_numpy()
        rows.append({"task": t, "method": method, "c_index": list(c), "ours": format_mean_std(c),
                     "paper_hipt": _ref(PAPER_SURVIVAL.get(t))})
    return pd.DataFrame(rows)
