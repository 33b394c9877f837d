"""Train and evaluate slide-level models (HIPT and MIL baselines) for subtyping or survival: ``hipt finetune``.

The protocol of the paper's reference code (CLAM scaffold for subtyping, MCAT for survival), with its
bugs made explicit and optional:

- **one slide per step** (batch size 1: bags differ in size), Adam (lr 2e-4, weight decay 1e-5), 20
  epochs, no LR schedule, dropout 0.25;
- **gradient accumulation over 32 slides**: the loss of each slide is divided by 32 and the optimizer
  steps every 32 slides (and at the end of each epoch).  The reference divides by 32 but steps after
  *every* slide (its issue #53), so it does not accumulate at all (and, Adam being nearly invariant to
  the scale of the loss, trains like plain batch-1 Adam); ``reference_accumulation=True`` reproduces that;
- **class-balanced sampling**: ``WeightedRandomSampler`` with weight ``N / n_c`` for a slide of class c,
  ``len(train)`` draws with replacement per epoch; for survival the classes are the (time bin,
  censorship) pairs (8 strata), as MCAT;
- the **last-epoch model** is evaluated (the reference has no model selection); ``selection="val"``
  keeps the epoch with the best validation metric instead;
- losses: cross-entropy (classification); discrete-time survival NLL (:func:`hipt.survival.nll_loss`,
  4 bins at the quartiles of the uncensored times, ``alpha=0``), risk ``= −Σ_k S_k``;
- metrics: AUC (binary, or macro one-vs-rest) and accuracy on val and test (subtyping); concordance
  index on val (survival, 5-fold CV without a test split);
- every fold starts from the same seed (the reference re-seeds with ``seed=1`` per fold), so a fold's
  result does not depend on which other folds ran; the 25% setting trains on a seeded sample
  ``frac=0.25, random_state=1`` of the fold's training split (not stratified, as the reference).

Outputs per (task, method, fraction, fold), written atomically into ``out``: the per-fold metric records
(:mod:`hipt.tasks.tables` format) and the per-slide (per-case) predictions.  :func:`run_cv` loops over
folds and fractions and skips the ones already written (resume).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from hipt.device import resolve_device
from hipt.errors import HIPTError
from hipt.io import atomic_path
from hipt.metrics import auc, concordance_index, mean_std
from hipt.models.mil import build_model, METHODS, StandardizedInput
from hipt.models.slide_heads import FeatureStandardizer
from hipt.precision import PRECISIONS, autocast, describe, grad_scaler, resolve_precision
from hipt.survival import hazards_to_survival, nll_loss
from hipt.tasks.datasets import BagDataset, bag_items
from hipt.tasks.tables import RECORD_COLUMNS, summarize, write_fold_results
from hipt.tasks.tcga import load_task

__all__ = [
    "FinetuneConfig",
    "FoldResult",
    "seed_everything",
    "class_weights",
    "make_sampler",
    "train_fold",
    "run_cv",
    "permutation_null",
    "standardize_inputs",
    "evaluate",
    "fold_paths",
    "method_name",
    "add_arguments",
    "run",
]

log = logging.getLogger("hipt.tasks")


@dataclass
class FinetuneConfig:
    """Everything one fine-tuning run needs; flat, so that its fields are the chapters' papermill parameters.

    Data: ``features_dir`` (``hipt extract`` files), ``task`` (a registered task name such as
    ``tcga_lung_subtype``, or the path of a task table ``slide_id,label[,case_id,survival_months,
    censorship]``), ``splits_dir`` (``splits_{k}.csv``; optional for a registered task), ``kind``
    (``"subtype"``/``"survival"``; default from the task), ``task_name`` (name in the records; default
    the task's).

    Model: ``method`` (see ``hipt.models.mil.METHODS``), ``dropout``, ``hipt_local``
    (``"frozen"``/``"finetune"``/``"scratch"``) and ``vit4k_weights`` for HIPT's ViT-4096;
    ``standardize=True``: every method z-scores what it reads (frozen HIPT its region tokens, the
    baselines their patch tokens) with the statistics of the fold's training slides
    (:func:`standardize_inputs`; a departure from the reference, which feeds them raw: ``False``
    reproduces it).  ``tokens``: what the MIL baselines read, ``"patch"``
    (``feats256``, default) or ``"region"`` (``feats4k`` ``[M, 192]``: the only level of the reference's
    released embeddings; ``hipt_gp`` always reads region tokens).

    Optimization (reference defaults): ``max_epochs=20``, ``lr=2e-4``, ``weight_decay=1e-5``,
    ``accumulation=32`` slides per optimizer step, ``reference_accumulation=False`` (True: the
    reference's non-accumulating behaviour), ``weighted_sample=True``, ``selection="last"`` (or
    ``"val"``), ``seed=1``.

    Protocol: ``folds`` (None: all), ``fractions`` of the training split (1.0 and 0.25),
    ``frac_seed=1``; survival: ``n_bins=4``, ``alpha_surv=0.0``.

    Running: ``out`` (results folder), ``device`` (``"auto"``: CUDA if available), ``precision``
    (``"fp32"``, the reference's; ``"auto"``: bf16 on a GPU that has it, fp16 with a gradient scaler on
    an older GPU such as the T4, fp32 on a CPU; or ``"bf16"``/``"fp16"``: :mod:`hipt.precision`.  Half
    precision autocasts the forward pass, e.g. for TransMIL's attention over tens of thousands of patch
    tokens on a GPU), ``cache_mb`` (LRU
    cache of decoded bags), ``num_workers`` (DataLoader workers reading feature files), ``missing``
    (``"error"``/``"drop"`` for slides without a feature file), ``resume`` (skip finished folds),
    ``save_model`` (keep each fold's final weights), ``verbose``.
    """

    features_dir: str = ""
    task: str = ""
    splits_dir: str | None = None
    method: str = "hipt"
    out: str = "outputs/finetune"
    kind: str | None = None
    task_name: str | None = None
    dropout: float = 0.25
    hipt_local: str = "frozen"
    standardize: bool = True
    tokens: str = "patch"
    vit4k_weights: str | None = None
    max_epochs: int = 20
    lr: float = 2e-4
    weight_decay: float = 1e-5
    accumulation: int = 32
    reference_accumulation: bool = False
    weighted_sample: bool = True
    selection: str = "last"
    seed: int = 1
    folds: list[int] | None = None
    fractions: list[float] = field(default_factory=lambda: [1.0, 0.25])
    frac_seed: int = 1
    n_bins: int = 4
    alpha_surv: float = 0.0
    device: str = "auto"
    precision: str = "fp32"
    cache_mb: float = 512.0
    num_workers: int = 0
    missing: str = "error"
    resume: bool = True
    save_model: bool = False
    verbose: bool = True

    def replace(self, **changes: Any) -> FinetuneConfig:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)


@dataclass
class FoldResult:
    """The outcome of one fold: metric records, per-unit predictions, loss history, the model."""

    records: pd.DataFrame
    predictions: pd.DataFrame
    history: pd.DataFrame
    model: torch.nn.Module | None = None
    seconds: float = 0.0

    def metric(self, split: str, metric: str) -> float:
        r = self.records
        v = r[(r["split"] == split) & (r["metric"] == metric)]["value"]
        return float(v.iloc[0]) if len(v) else float("nan")


# ------------------------------------------------------------------------------------------ helpers
def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (CPU and CUDA); cuDNN deterministic as the reference's ``seed_torch``."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False


def class_weights(strata: np.ndarray) -> np.ndarray:
    """Per-item sampling weights ``N / n_c`` (``n_c``: number of items in the item's stratum c)."""
    strata = np.asarray(strata)
    _, inverse, counts = np.unique(strata, return_inverse=True, return_counts=True, axis=0)
    return len(strata) / counts[inverse.reshape(-1)].astype(np.float64)


def _strata(ds: BagDataset) -> np.ndarray:
    """Sampling strata: the class; for survival the (time bin, censorship) pair."""
    cens = ds.censorship
    if cens is None:
        return ds.labels
    return np.stack([ds.labels, cens], axis=1)


def make_sampler(ds: BagDataset, weighted: bool, generator: torch.Generator) -> torch.utils.data.Sampler:
    """``WeightedRandomSampler`` (``N/n_c`` weights, ``len(ds)`` draws with replacement) or a random permutation."""
    if weighted:
        w = torch.as_tensor(class_weights(_strata(ds)), dtype=torch.double)
        return torch.utils.data.WeightedRandomSampler(w, num_samples=len(ds), replacement=True, generator=generator)
    return torch.utils.data.RandomSampler(ds, generator=generator)


def _to(bag: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in bag.items()}


def _keys_for(method: str, hipt_local: str, tokens: str = "patch") -> tuple[str, ...]:
    """Which arrays a method reads (so that only those are loaded)."""
    if tokens not in ("patch", "region"):
        raise ValueError(f"tokens must be 'patch' or 'region', not {tokens!r}")
    if (method == "hipt" and hipt_local == "frozen") or method == "hipt_gp" or tokens == "region":
        return ("feats4k",)
    if method == "gcn":
        return ("feats256", "coords")
    return ("feats256",)


def _survival_outputs(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:

    hazards = torch.sigmoid(logits)
    return hazards, hazards_to_survival(hazards)


def task_loss(logits: torch.Tensor, item: dict, survival: bool, alpha: float = 0.0) -> torch.Tensor:
    """Cross-entropy, or the survival NLL on ``hazards = sigmoid(logits)`` (item's ``label`` = time bin)."""
    if survival:

        hazards, S = _survival_outputs(logits)
        return nll_loss(hazards, S, item["label"], item["censorship"], alpha=alpha)
    return F.cross_entropy(logits, item["label"])


def _item_to(item: dict, device: torch.device) -> dict:
    """Move an item's tensors, and those of its bag, to ``device``."""
    out = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in item.items()}
    out["bag"] = _to(item["bag"], device)
    return out


def _loader(ds: BagDataset, sampler=None, num_workers: int = 0) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(
        ds, batch_size=None, sampler=sampler, shuffle=False, num_workers=num_workers,
        persistent_workers=False, pin_memory=False,
    )


# ------------------------------------------------------------------------------------------ loops
def train_epoch(
    model: torch.nn.Module,
    loader: torch.utils.data.DataLoader,
    optimizer: torch.optim.Optimizer,
    survival: bool,
    accumulation: int = 32,
    reference_accumulation: bool = False,
    alpha: float = 0.0,
    device: torch.device = torch.device("cpu"),
    precision: str = "fp32",
    scaler: torch.amp.GradScaler | None = None,
) -> dict[str, float]:
    """One epoch, one bag per step, with gradient accumulation.

    Each bag's loss (task loss + ``extra_loss`` + task loss on ``aux_logits``, when the model returns
    them) is divided by ``accumulation`` and back-propagated; the optimizer steps every
    ``accumulation`` bags and after the last one.  ``reference_accumulation=True``: steps after every
    bag (the reference's behaviour, issue #53).  Returns the mean loss and the number of steps.

    ``precision`` (:mod:`hipt.precision`): the forward pass runs under its autocast; fp16 scales the
    loss with ``scaler`` (pass the fold's, so that its scale carries over from epoch to epoch; None:
    a new one, from :func:`hipt.precision.grad_scaler`).  For fp32 and bf16 the scaler is disabled and
    the step is exactly ``backward(); optimizer.step()``.
    """
    scaler = scaler if scaler is not None else grad_scaler(device, precision)
    model.train()
    optimizer.zero_grad(set_to_none=True)
    total, n, steps = 0.0, 0, 0
    n_items = len(loader)
    for i, item in enumerate(loader):
        item = _item_to(item, device)
        with autocast(device, precision):
            out = model(item["bag"], label=item["label"])
        loss = task_loss(out["logits"].float(), item, survival, alpha)
        if "aux_logits" in out:
            loss = loss + task_loss(out["aux_logits"].float(), item, survival, alpha)
        if "extra_loss" in out:
            loss = loss + out["extra_loss"]
        scaler.scale(loss / accumulation).backward()
        total += float(loss.detach())
        n += 1
        if reference_accumulation or (i + 1) % accumulation == 0 or i + 1 == n_items:
            scaler.step(optimizer)  # fp16: skipped when a gradient overflowed (and the scale drops)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            steps += 1
    return {"loss": total / max(n, 1), "steps": steps}


@torch.no_grad()
def predict(
    model: torch.nn.Module, ds: BagDataset, survival: bool, device: torch.device, num_workers: int = 0,
    precision: str = "fp32",
) -> pd.DataFrame:
    """Per-unit predictions: ``id, label`` and ``prob_0..`` (classification) or ``risk, S_0.., time,
    censorship`` (survival), in the dataset's order."""
    model.eval()
    rows = []
    for item in _loader(ds, num_workers=num_workers):
        item = _item_to(item, device)
        with autocast(device, precision):
            logits = model(item["bag"])["logits"].float()
        row = {"id": item["id"], "label": int(item["label"][0])}
        if survival:
            _, S = _survival_outputs(logits)
            row["risk"] = float(-S.sum())
            row.update({f"S_{k}": float(v) for k, v in enumerate(S[0].tolist())})
            row["time"] = float(item["time"][0])
            row["censorship"] = int(item["censorship"][0])
        else:
            row.update({f"prob_{k}": float(v) for k, v in enumerate(F.softmax(logits, dim=1)[0].tolist())})
        rows.append(row)
    return pd.DataFrame(rows)


def evaluate(pred: pd.DataFrame, survival: bool) -> dict[str, float]:
    """Metrics of a prediction frame: ``auc`` and ``acc`` (classification), ``c_index`` (survival)."""
    import warnings


    if len(pred) == 0:
        return {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # undefined metric on a one-class split → nan
        if survival:
            return {"c_index": concordance_index(pred["time"], pred["risk"], 1 - pred["censorship"])}
        probs = pred.filter(like="prob_").to_numpy()
        y = pred["label"].to_numpy()
        return {"auc": auc(y, probs), "acc": float((probs.argmax(1) == y).mean())}


# ------------------------------------------------------------------------------------------ outputs
def _frac_tag(fraction: float) -> str:
    return f"{int(round(fraction * 100)):d}pct"


def method_name(config: FinetuneConfig) -> str:
    """The method's name in the records: ``hipt_finetune``/``hipt_scratch`` for HIPT's ViT-4096 variants,
    ``<method>_regions`` for a baseline that reads region tokens (``tokens="region"``).  The input
    normalization (``standardize``) applies to every method alike, so it does not rename one: runs with
    and without it belong in different results folders."""
    if config.method == "hipt" and config.hipt_local != "frozen":
        return f"hipt_{config.hipt_local}"
    if config.tokens == "region" and config.method not in ("hipt", "hipt_gp"):
        return f"{config.method}_regions"
    return config.method


def fold_paths(out: str | Path, task: str, method: str, fraction: float, fold: int) -> dict[str, Path]:
    """Where a fold's outputs go: ``<out>/<task>__<method>__frac<f>__fold<k>.{results,predictions}.csv``
    (the default record-file name of :func:`hipt.tasks.tables.write_fold_results`) and ``.model.pt``."""
    safe = [re.sub(r"[^A-Za-z0-9_.-]+", "-", str(s)) for s in (task, method)]
    stem = Path(out) / f"{safe[0]}__{safe[1]}__frac{float(fraction):g}__fold{int(fold)}"
    return {k: stem.with_name(stem.name + f".{k}.{ext}")
            for k, ext in (("results", "csv"), ("predictions", "csv"), ("model", "pt"))}


def _write_csv(df: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)


def _records(task: str, method: str, fraction: float, fold: int, metrics: dict[str, dict[str, float]]) -> pd.DataFrame:
    rows = [
        {"task": task, "method": method, "fraction": float(fraction), "fold": int(fold), "split": split,
         "metric": m, "value": float(v)}
        for split, ms in metrics.items()
        for m, v in ms.items()
    ]
    return pd.DataFrame(rows, columns=list(RECORD_COLUMNS))


# ------------------------------------------------------------------------------------------ folds
def _load_task(config: FinetuneConfig):

    return load_task(config.task, splits_dir=config.splits_dir, kind=config.kind, n_bins=config.n_bins)


def _build(config: FinetuneConfig, in_dim: int, n_outputs: int, survival: bool, local_vit: torch.nn.Module | None):

    kwargs: dict[str, Any] = {}
    if config.method == "hipt":
        kwargs = {"local": config.hipt_local, "local_vit": local_vit, "vit4k_weights": config.vit4k_weights}
    elif config.method == "clam_sb":
        kwargs = {"subtyping": not survival}
    return build_model(config.method, in_dim, n_outputs, dropout=config.dropout, **kwargs)


def standardize_inputs(model: torch.nn.Module, config: FinetuneConfig, train: BagDataset) -> torch.nn.Module:
    """One input normalization for every method: z-score what the model reads with the statistics of
    the fold's training slides only (val/test never leak into them).

    Frozen HIPT z-scores its region tokens inside its head (:meth:`hipt.models.HIPTSlide.standardize_regions`,
    ``region_norm.*`` in its state dict); the other methods get their patch tokens (or region tokens,
    ``tokens="region"``) z-scored by :class:`hipt.models.mil.StandardizedInput`.  HIPT whose ViT-4K is
    fine-tuned or trained from scratch is left alone: its input is the patch-token grid that the ViT-4K
    was pretrained on.
    """

    if config.method == "hipt":
        if config.hipt_local == "frozen":
            tokens = [train.load(i)["feats4k"].float() for i in range(len(train))]  # each bag read once
            model.slide.standardize_regions(torch.cat([t.reshape(-1, t.shape[-1]) for t in tokens]))
        return model
    key = "feats4k" if "feats4k" in train.keys else "feats256"
    norm = FeatureStandardizer.fit_batches(train.load(i)[key] for i in range(len(train)))
    return StandardizedInput(model, {key: norm})


def train_fold(
    config: FinetuneConfig,
    fold: int,
    fraction: float = 1.0,
    task: Any = None,
    local_vit: torch.nn.Module | None = None,
    on_epoch: Callable[[int, dict], None] | None = None,
    write: bool = True,
) -> FoldResult:
    """Train one model on fold ``fold`` (training split subsampled to ``fraction``) and evaluate it.

    Args:
        config: the run's settings.
        task: a loaded :class:`hipt.tasks.TaskData` (default: loaded from ``config``).
        local_vit: HIPT's ViT-4096 module (e.g. a pretrained tiny one for the CPU book); else
            ``config.vit4k_weights`` or a default ViT-XS.
        on_epoch: called with ``(epoch, {"loss": ..., "val_<metric>": ...})`` after each epoch.
        write: write the records and predictions into ``config.out``.
    """
    t0 = time.perf_counter()
    task = task if task is not None else _load_task(config)
    survival = task.kind == "survival"
    name = config.task_name or task.name
    method = method_name(config)
    device = resolve_device(config.device)
    precision = resolve_precision(config.precision, device)  # once, before any data are read
    keys = _keys_for(config.method, config.hipt_local, config.tokens)
    split = task.fold(fold, fraction, random_state=config.frac_seed)

    def dataset(split_name: str) -> BagDataset | None:
        if not split[split_name]:
            return None
        frame = task.frame(fold, split_name, fraction, random_state=config.frac_seed)
        return BagDataset(config.features_dir, bag_items(frame, task.kind), keys=keys, missing=config.missing,
                          cache_mb=config.cache_mb)

    sets = {s: dataset(s) for s in ("train", "val", "test")}
    train = sets["train"]
    if train is None or len(train) == 0:
        raise HIPTError(f"{name}: fold {fold} has no training slide with features in {config.features_dir}")
    first = train.load(0)
    in_dim = first["feats256"].shape[-1] if "feats256" in first else first["feats4k"].shape[-1]
    n_outputs = config.n_bins if survival else task.n_classes

    seed_everything(config.seed)
    model = _build(config, in_dim, n_outputs, survival, local_vit)
    if config.standardize:
        model = standardize_inputs(model, config, train)
    model = model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    scaler = grad_scaler(device, precision)  # one per fold: fp16's loss scale adapts over its epochs
    g = torch.Generator().manual_seed(config.seed)
    loader = _loader(train, make_sampler(train, config.weighted_sample, g), config.num_workers)

    history, best, best_state = [], -math.inf, None
    for epoch in range(config.max_epochs):
        stats = train_epoch(model, loader, optimizer, survival, config.accumulation,
                            config.reference_accumulation, config.alpha_surv, device, precision, scaler)
        row = {"epoch": epoch, **stats}
        if config.selection == "val" and sets["val"] is not None:
            m = evaluate(predict(model, sets["val"], survival, device, precision=precision), survival)
            key = "c_index" if survival else "auc"
            row[f"val_{key}"] = m.get(key, float("nan"))
            if row[f"val_{key}"] > best:
                best = row[f"val_{key}"]
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        history.append(row)
        if on_epoch is not None:
            on_epoch(epoch, row)
    if config.selection == "val" and best_state is not None:
        model.load_state_dict(best_state)
    elif config.selection not in ("last", "val"):
        raise ValueError(f"selection must be 'last' or 'val', not {config.selection!r}")

    preds, metrics = [], {}
    for s in ("val", "test"):
        if sets[s] is None:
            continue
        p = predict(model, sets[s], survival, device, config.num_workers, precision)
        metrics[s] = evaluate(p, survival)
        preds.append(p.assign(split=s))
    metrics.setdefault("train", {})["loss"] = history[-1]["loss"] if history else float("nan")
    predictions = pd.concat(preds, ignore_index=True) if preds else pd.DataFrame()
    predictions = predictions.assign(task=name, method=method, fraction=fraction, fold=fold)
    records = _records(name, method, fraction, fold, metrics)
    result = FoldResult(records, predictions, pd.DataFrame(history), model, time.perf_counter() - t0)
    if write:
        paths = fold_paths(config.out, name, method, fraction, fold)
        _write_csv(predictions, paths["predictions"])
        if config.save_model:
            with atomic_path(paths["model"]) as tmp:
                torch.save(model.state_dict(), tmp)
        # last: its presence marks the fold as finished
        write_fold_results(config.out, name, method, fraction, fold, metrics, filename=paths["results"].name)
    if config.verbose:
        shown = ", ".join(f"{s} {m}={v:.3f}" for s, ms in metrics.items() if s != "train" for m, v in ms.items())
        print(f"{name} {method} {_frac_tag(fraction)} fold {fold}: {shown} ({result.seconds:.1f} s)")
    return result


def run_cv(config: FinetuneConfig, local_vit: torch.nn.Module | None = None, task: Any = None) -> pd.DataFrame:
    """Every fold (``config.folds``, default all) × training fraction (``config.fractions``).

    Folds whose results file exists are read back instead of retrained when ``config.resume``.
    Returns all metric records (columns ``task, method, fraction, fold, split, metric, value``).
    """
    task = task if task is not None else _load_task(config)
    name = config.task_name or task.name
    folds = config.folds if config.folds is not None else list(range(task.n_folds))
    frames, shown = [], False
    for fraction in config.fractions:
        for k in folds:
            path = fold_paths(config.out, name, method_name(config), fraction, k)["results"]
            if config.resume and path.is_file():
                frames.append(pd.read_csv(path))
                continue
            if config.verbose and not shown:  # once, and only when a fold trains (not for a resumed run)
                print(describe(config.precision, resolve_device(config.device)))
                shown = True
            frames.append(train_fold(config, k, fraction, task=task, local_vit=local_vit).records)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(RECORD_COLUMNS))


def permutation_null(
    config: FinetuneConfig, n_permutations: int = 3, seed: int = 0, out: str | Path | None = None,
) -> pd.DataFrame:
    """Cross-validate ``config`` on copies of its task whose outcomes are shuffled across cases.

    With a few dozen cases, one cross-validation run of a model that has nothing to learn scatters
    widely around chance, and small validation folds can bias it *below* chance (each fold's training
    cases are the complement of its validation cases).  Rerunning the same protocol on shuffled
    outcomes (survival: time and censorship together; subtyping: the label), with the same folds, shows
    that spread: a result inside it cannot be told from chance.

    Args:
        config: the run to calibrate (its task must have a ``splits_dir``; ``out`` replaces its ``out``).
        n_permutations: shuffles (each a full cross-validation).
        seed: seeds the shuffles.
        out: folder for the shuffled tables and their results (default: a temporary folder).

    Returns one row per shuffle: ``permutation``, ``mean`` and ``std`` over folds of the run's metric
    (survival: validation c-index; subtyping: test AUC).
    """
    import tempfile


    task = _load_task(config)
    if task.splits_dir is None:
        raise HIPTError(f"permutation_null: task {config.task!r} has no splits_dir to reuse")
    survival = task.kind == "survival"
    cols = ["survival_months", "censorship"] if survival else ["label"]
    cols += ["label"] if survival and "label" in task.table.columns else []
    cases = task.table.drop_duplicates("case_id").set_index("case_id")[cols]
    split, metric = ("val", "c_index") if survival else ("test", "auc")
    out = Path(out) if out is not None else Path(tempfile.mkdtemp(prefix="hipt_permutation_"))
    rows = []
    for i in range(n_permutations):
        rng = np.random.default_rng([seed, i])
        shuffled = pd.DataFrame(cases.to_numpy()[rng.permutation(len(cases))], index=cases.index, columns=cols)
        table = task.table.copy()
        for c in cols:
            table[c] = table["case_id"].map(shuffled[c]).astype(task.table[c].dtype)
        folder = out / f"permutation{i}"
        folder.mkdir(parents=True, exist_ok=True)
        table.to_csv(folder / "table.csv", index=False)
        cfg = dataclasses.replace(config, task=str(folder / "table.csv"), splits_dir=str(task.splits_dir),
                                  out=str(folder / "results"), task_name=f"{task.name}_permuted")
        rec = run_cv(cfg)
        per_fold = rec[(rec["split"] == split) & (rec["metric"] == metric) & (rec["fraction"] == max(cfg.fractions))]
        m, sd = mean_std(per_fold["value"])
        rows.append({"permutation": i, "mean": m, "std": sd})
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------ CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:

    d = FinetuneConfig()
    parser.add_argument("--features", required=True, help="folder of 'hipt extract' feature files (<slide_id>.h5)")
    parser.add_argument("--task", required=True, help="registered task name (e.g. tcga_lung_subtype) or a task table CSV")
    parser.add_argument("--splits", default=None, help="folder of splits_{k}.csv (optional for registered tasks)")
    parser.add_argument("--method", default=d.method, choices=list(METHODS))
    parser.add_argument("--out", default=d.out, help="results folder")
    parser.add_argument("--kind", default=None, choices=["subtype", "survival"], help="default: from the task")
    parser.add_argument("--task-name", default=None, help="name of the task in the result records")
    parser.add_argument("--folds", type=int, nargs="+", default=None, help="folds to run (default: all)")
    parser.add_argument("--fractions", type=float, nargs="+", default=d.fractions, help="training fractions")
    parser.add_argument("--epochs", type=int, default=d.max_epochs)
    parser.add_argument("--lr", type=float, default=d.lr)
    parser.add_argument("--weight-decay", type=float, default=d.weight_decay)
    parser.add_argument("--accumulation", type=int, default=d.accumulation, help="slides per optimizer step")
    parser.add_argument("--reference-accumulation", action="store_true",
                        help="step after every slide with the loss divided by --accumulation (the reference's issue #53)")
    parser.add_argument("--no-weighted-sample", action="store_true", help="uniform instead of class-balanced sampling")
    parser.add_argument("--selection", default=d.selection, choices=["last", "val"], help="model evaluated")
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--dropout", type=float, default=d.dropout)
    parser.add_argument("--hipt-local", default=d.hipt_local, choices=["frozen", "finetune", "scratch"],
                        help="HIPT's ViT-4096: frozen pretrained, fine-tuned, or trained from scratch")
    parser.add_argument("--no-standardize", action="store_true",
                        help="feed every method its features raw, as the reference (default: z-scored with the "
                             "training slides' statistics, the same for every method; raw region tokens of a "
                             "small or briefly trained ViT-4096 differ too little for HIPT's head to learn from)")
    parser.add_argument("--tokens", default=d.tokens, choices=["patch", "region"],
                        help="what the MIL baselines read: patch tokens feats256, or region tokens feats4k [M, 192] "
                             "(the only level of the reference's released embeddings; hipt_gp always reads these)")
    parser.add_argument("--vit4k-weights", default=None,
                        help="HIPT's ViT-4096 weights (registry name, path or URL; e.g. vit4k_xs_dino)")
    parser.add_argument("--device", default=d.device)
    parser.add_argument("--precision", default=d.precision, choices=list(PRECISIONS),
                        help="fp32 (the reference's); auto: bf16 on a GPU that has it, fp16 with a gradient "
                             "scaler on older GPUs (T4), fp32 on a CPU; bf16/fp16: autocast the forward pass "
                             "(e.g. TransMIL on large bags)")
    parser.add_argument("--workers", type=int, default=d.num_workers, help="DataLoader workers reading features")
    parser.add_argument("--cache-mb", type=float, default=d.cache_mb, help="LRU cache of decoded bags (MB)")
    parser.add_argument("--missing", default=d.missing, choices=["error", "drop"],
                        help="slides without a feature file: stop with an error, or drop them")
    parser.add_argument("--no-resume", action="store_true", help="retrain folds whose results exist")
    parser.add_argument("--save-model", action="store_true", help="keep each fold's final weights")


def run(args: argparse.Namespace) -> int:
    config = FinetuneConfig(
        features_dir=args.features, task=args.task, splits_dir=args.splits, method=args.method, out=args.out,
        kind=args.kind, task_name=args.task_name, folds=args.folds, fractions=list(args.fractions),
        max_epochs=args.epochs, lr=args.lr, weight_decay=args.weight_decay, accumulation=args.accumulation,
        reference_accumulation=args.reference_accumulation, weighted_sample=not args.no_weighted_sample,
        selection=args.selection, seed=args.seed, dropout=args.dropout, hipt_local=args.hipt_local,
        standardize=not args.no_standardize, tokens=args.tokens,
        vit4k_weights=args.vit4k_weights, device=args.device, precision=args.precision, num_workers=args.workers, cache_mb=args.cache_mb,
        missing=args.missing, resume=not args.no_resume, save_model=args.save_model,
    )

    records = run_cv(config)
    for split, metric in (("val", "c_index"), ("val", "auc"), ("test", "auc")):
        s = summarize(records, split, metric)
        if len(s):
            print(f"{split} {metric} (mean ± std over folds):")
            print(s.to_string(index=False))
    return 0
