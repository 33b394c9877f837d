"""KNN evaluation of mean slide embeddings (``hipt knn``): how good are the frozen features alone?

The protocol of the reference (``3-Self-Supervised-Eval``, paper §4.3):

- a slide's embedding is the **mean of its tokens**: the mean of the ViT-4096 region [CLS] tokens
  (``feats4k`` [M,192] → [192], the reference's "ViT-256 mean") or the mean of the ViT-256 patch
  [CLS] tokens (``feats256`` [M,n,384] → [384], the reference's "ViT-16 mean");
- ``sklearn.neighbors.KNeighborsClassifier()`` with its defaults: **k = 5, Euclidean distance,
  uniform weights**, no normalization of the embeddings;
- for every split file, fit on ``train`` and score the AUC (:func:`hipt.metrics.auc`) on ``test``
  (``val`` is unused), with all of train ("100%") or a seeded sample of it ("25%":
  ``sample(frac=0.25, random_state=1)``, as the fine-tuning experiments); mean ± std over folds.

The reference's "25%" KNN rows actually sampled ``frac=0.1`` of the training split (a bug); this module
uses 0.25 and offers ``reference_bug_frac=0.1`` (CLI ``--reference-bug-frac 0.1``) to reproduce the
reference's numbers.  (Its lung task also numbers the classes the other way round, LUSC:0/LUAD:1;
binary AUC is unchanged by that.)

Inputs: a folder of ``hipt extract`` files ``{slide_id}.h5`` (datasets ``feats256``, ``feats4k``) or of
the reference's released embeddings ``{slide_id}.pt`` (one [M,192] tensor of ViT-4096 [CLS] tokens per
slide; ``[M,n,D]`` tensors are read as patch tokens), a task table and its split files
(:func:`hipt.tasks.load_task`).  Results are per-fold record files (:mod:`hipt.tasks.tables`), methods
``knn_vit4k_mean`` and ``knn_vit256_mean``.
"""

from __future__ import annotations

import argparse
import logging
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import torch
from sklearn.metrics import roc_auc_score
from sklearn.neighbors import KNeighborsClassifier
from sklearn.preprocessing import LabelEncoder

from hipt.errors import HIPTError, InputFileError
from hipt.metrics import auc
from hipt.released.registry import read_embedding_pickle
from hipt.tasks import TaskData, load_task
from hipt.tasks.tables import markdown_table, table1, write_fold_results

__all__ = [
    "LEVELS",
    "method_name",
    "slide_embedding",
    "load_embeddings",
    "knn_probs",
    "knn_auc",
    "evaluate_knn",
    "add_arguments",
    "run",
    "released_knn_aucs",
]

log = logging.getLogger("hipt.knn")

#: Embedding levels: name → (HDF5 dataset, what it is).
LEVELS = {
    "vit4k": ("feats4k", "mean of the ViT-4096 region [CLS] tokens (reference: 'ViT-256 mean')"),
    "vit256": ("feats256", "mean of the ViT-256 patch [CLS] tokens (reference: 'ViT-16 mean')"),
}


def method_name(level: str) -> str:
    """The results-table method name of a level: ``knn_vit4k_mean`` / ``knn_vit256_mean``."""
    return f"knn_{_level(level)}_mean"


def _level(level: str) -> str:
    level = level.removeprefix("knn_").removesuffix("_mean")
    if level not in LEVELS:
        raise HIPTError(f"{level}: unknown embedding level (one of {', '.join(LEVELS)})")
    return level


# ---------------------------------------------------------------------------------- embeddings
def _mean_tokens(x: np.ndarray, level: str, path: Path) -> np.ndarray:
    if level == "vit4k" and x.ndim != 2:
        raise InputFileError(path, f"region tokens must be [M, D], got shape {list(x.shape)}")
    if level == "vit256" and x.ndim != 3:
        raise InputFileError(path, f"patch tokens must be [M, n, D], got shape {list(x.shape)}")
    if x.shape[0] == 0:
        raise InputFileError(path, "holds no region (M = 0)")
    flat = x.reshape(-1, x.shape[-1])
    out = flat.mean(axis=0, dtype=np.float64)
    if not np.isfinite(out).all():
        raise InputFileError(path, "embedding has NaN or infinite values")
    return out


def slide_embedding(path: str | Path, level: str = "vit4k") -> np.ndarray:
    """The mean embedding ``[D]`` (float64) of one slide's feature file.

    Args:
        path: ``.h5`` from ``hipt extract`` (``feats4k`` [M,192], ``feats256`` [M,n,384]) or ``.pt``
            holding one tensor: ``[M, D]`` region tokens (the reference's released embeddings) or
            ``[M, n, D]`` patch tokens.
        level: ``"vit4k"`` (mean of region tokens) or ``"vit256"`` (mean of patch tokens).
    """
    path = Path(path)
    level = _level(level)
    if not path.is_file():
        raise InputFileError(path, "feature file not found")
    if path.suffix == ".h5":
        key = LEVELS[level][0]
        try:
            with h5py.File(path, "r") as f:
                if key not in f:
                    raise InputFileError(path, f"no dataset {key!r} (has {sorted(f.keys())})",
                                         "feats4k needs a ViT-4K in 'hipt extract'" if key == "feats4k" else None)
                x = f[key][()]
        except OSError as e:
            raise InputFileError(path, f"cannot be read as HDF5 ({e})") from None
        return _mean_tokens(np.asarray(x), level, path)
    if path.suffix == ".pt":
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 (unpickling errors of many kinds)
            raise InputFileError(path, f"cannot be loaded as a tensor file ({e})") from None
        if isinstance(obj, dict):
            key = LEVELS[level][0]
            if key not in obj:
                raise InputFileError(path, f"dict without key {key!r} (has {sorted(obj)[:8]})")
            obj = obj[key]
        if not isinstance(obj, torch.Tensor):
            raise InputFileError(path, f"holds a {type(obj).__name__}, expected a tensor")
        return _mean_tokens(obj.float().numpy(), level, path)
    raise InputFileError(path, "unknown feature file type (expected .h5 or .pt)")


def _find(features_dir: Path, slide_id: str) -> Path | None:
    for suffix in (".h5", ".pt"):
        p = features_dir / f"{slide_id}{suffix}"
        if p.is_file():
            return p
    return None


def load_embeddings(
    features_dir: str | Path, slide_ids: Iterable[str], level: str = "vit4k", missing: str = "error"
) -> tuple[np.ndarray, list[str]]:
    """Mean embeddings of the given slides, looked up as ``{slide_id}.h5`` then ``{slide_id}.pt``.

    Args:
        missing: ``"error"`` (default) raises naming the folder and the first missing slides;
            ``"drop"`` skips them with a warning.

    Returns:
        ``(X [N, D] float64, ids found in order)``.
    """
    features_dir = Path(features_dir)
    if not features_dir.is_dir():
        raise InputFileError(features_dir, "features folder not found")
    ids, rows, absent = [], [], []
    for sid in slide_ids:
        p = _find(features_dir, sid)
        if p is None:
            absent.append(sid)
            continue
        rows.append(slide_embedding(p, level))
        ids.append(sid)
    if absent:
        msg = f"{len(absent)} of {len(absent) + len(ids)} slides have no feature file, e.g. {absent[:3]}"
        if missing == "error":
            raise InputFileError(features_dir, msg, "extract them, or pass missing='drop' / --allow-missing")
        warnings.warn(f"{features_dir}: {msg}; they are left out", RuntimeWarning, stacklevel=2)
    if not rows:
        raise InputFileError(features_dir, "no feature file for any slide of the task")
    dims = {r.shape[0] for r in rows}
    if len(dims) != 1:
        raise InputFileError(features_dir, f"embeddings of different sizes {sorted(dims)}")
    return np.stack(rows), ids


# ---------------------------------------------------------------------------------------- KNN
def knn_probs(
    train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, n_classes: int, k: int = 5, metric: str = "euclidean"
) -> np.ndarray:
    """Class probabilities ``[N_test, n_classes]`` of a k-nearest-neighbour vote (uniform weights).

    ``KNeighborsClassifier(n_neighbors=k, metric=metric)``; columns of classes absent from the
    training labels are 0; ``k`` is capped at the training-set size.
    """
    k_eff = min(k, len(train_x))
    if k_eff < k:
        warnings.warn(f"knn: only {len(train_x)} training slides, using k={k_eff}", RuntimeWarning, stacklevel=2)
    clf = KNeighborsClassifier(n_neighbors=k_eff, metric=metric).fit(train_x, train_y)
    proba = clf.predict_proba(test_x)
    out = np.zeros((len(test_x), n_classes), dtype=np.float64)
    out[:, clf.classes_.astype(int)] = proba
    return out


def knn_auc(train_x, train_y, test_x, test_y, n_classes: int | None = None, k: int = 5, metric: str = "euclidean") -> float:
    """AUC (:func:`hipt.metrics.auc`) of :func:`knn_probs` on the test set."""
    train_y = np.asarray(train_y).astype(int)
    test_y = np.asarray(test_y).astype(int)
    n_classes = n_classes or int(max(train_y.max(), test_y.max()) + 1)
    return auc(test_y, knn_probs(np.asarray(train_x), train_y, np.asarray(test_x), n_classes, k, metric))


def evaluate_knn(
    task,
    features_dir: str | Path,
    levels: Sequence[str] = ("vit4k", "vit256"),
    fractions: Sequence[float] = (0.25, 1.0),
    k: int = 5,
    metric: str = "euclidean",
    folds: Sequence[int] | None = None,
    eval_split: str = "test",
    reference_bug_frac: float | None = None,
    random_state: int = 1,
    results_dir: str | Path | None = None,
    missing: str = "error",
) -> pd.DataFrame:
    """KNN AUC per level × training fraction × fold; optionally writes the per-fold record files.

    Args:
        task: a :class:`hipt.tasks.TaskData` (subtyping) or anything :func:`hipt.tasks.load_task` takes.
        features_dir: folder of ``{slide_id}.h5`` / ``.pt`` feature files.
        levels: ``"vit4k"`` and/or ``"vit256"``.
        fractions: training fractions; < 1 draws ``sample(frac, random_state)`` of train (not stratified).
        eval_split: the split scored (``"test"``, as the reference; ``val`` otherwise unused).
        reference_bug_frac: if set (the reference used 0.1), every fraction < 1 samples this fraction
            instead; records keep the nominal fraction and note the one used (``frac_used``).
        results_dir: if given, one record file per (level, fraction, fold) is written there.

    Returns:
        Long records (:data:`hipt.tasks.tables.RECORD_COLUMNS` plus ``n_train``, ``n_test``, ``k``,
        ``frac_used``).
    """
    if not isinstance(task, TaskData):
        task = load_task(task)
    if task.kind != "subtype":
        raise HIPTError(f"{task.name}: KNN evaluation needs a classification task, not {task.kind}")
    folds = list(range(task.n_folds)) if folds is None else list(folds)
    label_of = dict(zip(task.table["slide_id"], task.table["label"]))
    records = []
    for level in levels:
        level = _level(level)
        X, ids = load_embeddings(features_dir, task.table["slide_id"], level, missing=missing)
        row_of = {sid: i for i, sid in enumerate(ids)}
        for fraction in fractions:
            frac_used = reference_bug_frac if (reference_bug_frac and fraction < 1) else fraction
            for fold in folds:
                split = task.fold(fold, frac_used, random_state=random_state)
                tr = [row_of[s] for s in split.train if s in row_of]
                te = [row_of[s] for s in split[eval_split] if s in row_of]
                if not te:
                    raise HIPTError(f"{task.name}: fold {fold} has no {eval_split} slide with features")
                ytr = np.array([label_of[ids[i]] for i in tr])
                yte = np.array([label_of[ids[i]] for i in te])
                value = knn_auc(X[tr], ytr, X[te], yte, n_classes=task.n_classes, k=k, metric=metric)
                extra = {"n_train": len(tr), "n_test": len(te), "k": k, "frac_used": frac_used}
                records.append({"task": task.name, "method": method_name(level), "fraction": float(fraction),
                                "fold": fold, "split": eval_split, "metric": "auc", "value": value, **extra})
                if results_dir is not None:
                    write_fold_results(results_dir, task.name, method_name(level), fraction, fold,
                                       {eval_split: {"auc": value}}, extra=extra)
                log.info("%s %s frac %g fold %d: AUC %.4f (%d train, %d %s)", task.name, level, fraction, fold,
                         value, len(tr), len(te), eval_split)
    return pd.DataFrame(records)


# ---------------------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``hipt knn``."""
    parser.add_argument("--released-folds", type=Path, default=None,
                        help="instead of --features/--task: the reference's released knn-subtyping folder (pickled "
                             "mean embeddings of its 10 folds; 'hipt released fetch --knn'): prints its KNN table "
                             "regenerated beside its printed numbers")
    parser.add_argument("--features", type=Path, default=None,
                        help="folder of per-slide feature files: {slide_id}.h5 from 'hipt extract' or released .pt")
    parser.add_argument("--task", default=None,
                        help="a registered task name (e.g. tcga_lung_subtype: files fetched) or a task table CSV")
    parser.add_argument("--splits", type=Path, default=None,
                        help="folder of splits_{k}.csv (needed for your own table; overrides a registered task's)")
    parser.add_argument("--label-col", default=None, help="label column of your own table (None: 'label')")
    parser.add_argument("--levels", nargs="+", default=["vit4k", "vit256"], choices=list(LEVELS),
                        help="embeddings: vit4k = mean region [CLS] (feats4k), vit256 = mean patch [CLS] (feats256)")
    parser.add_argument("--k", type=int, default=5, help="neighbours (the reference: scikit-learn's default 5)")
    parser.add_argument("--metric", default="euclidean", help="distance (scikit-learn name)")
    parser.add_argument("--fractions", nargs="+", type=float, default=[0.25, 1.0], help="training fractions")
    parser.add_argument("--folds", nargs="+", type=int, default=None, help="folds to run (None: all)")
    parser.add_argument("--reference-bug-frac", type=float, default=None,
                        help="sample this fraction for every fraction < 1, as the reference's KNN did (0.1)")
    parser.add_argument("--allow-missing", action="store_true", help="skip slides without a feature file")
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for the per-fold result records and the summary (needed with --features)")


def run(args: argparse.Namespace) -> int:
    """``hipt knn``: per-fold records into ``--out``, then a mean ± std summary (CSV, Markdown, stdout)."""
    if args.released_folds is not None:
        # here, not at the top: hipt.released.slide builds on this module (an import circle otherwise)
        from hipt.released.slide import knn_table_from_folds

        table = knn_table_from_folds(args.released_folds, fractions=args.fractions)
        print(markdown_table(table.drop(columns=["aucs"]), "{:+.3f}"))
        return 0
    missing = [flag for flag, value in (("--features", args.features), ("--task", args.task), ("--out", args.out))
               if value is None]
    if missing:
        raise HIPTError(f"hipt knn needs {', '.join(missing)} (or --released-folds DIR for the reference's released folds)")
    task = load_task(args.task, splits_dir=args.splits, label_col=args.label_col)
    records = evaluate_knn(
        task, args.features, levels=args.levels, fractions=args.fractions, k=args.k, metric=args.metric,
        folds=args.folds, reference_bug_frac=args.reference_bug_frac, results_dir=args.out,
        missing="drop" if args.allow_missing else "error",
    )
    methods = [method_name(level) for level in args.levels]
    table = table1(records, tasks=[task.name], fractions=args.fractions, methods=methods)
    csv_path, md_path = table.save(args.out, f"knn_{task.name}")
    print(table.to_markdown())
    print(f"{len(records)} fold results in {args.out}; summary {md_path.name}, {csv_path.name}")
    return 0


# ------------------------------------------------------------------------ the reference's released folds
def released_knn_aucs(
    folds_dir: str | Path, study: str, encoder: str, fraction: float = 1.0, *, n_folds: int = 10,
    sample_frac: float | None = None,
) -> list[float]:
    """The per-fold test AUCs of the reference's KNN protocol on its released mean-embedding folds.

    Reads ``{folds_dir}/{encoder}/{study}_{encoder}_class_split_{train,test}_{i}.pkl`` (dicts
    ``{'embeddings': [N, D], 'labels': [N]}``) for i < ``n_folds`` and, per fold, as the reference's
    ``get_knn_classification_results``:

    - ``fraction < 1`` keeps ``pandas.DataFrame(range(N)).sample(frac=0.1, random_state=1)`` of the
      training rows: the reference's "25%" rows sample **0.1** (its bug); ``sample_frac=0.25`` samples
      what the label says instead;
    - ``LabelEncoder`` fit on the training labels; ``KNeighborsClassifier()`` with its defaults (k = 5,
      uniform weights, Euclidean) fit on the (sampled) training embeddings;
    - AUC of ``predict_proba`` on the test fold: ``roc_auc_score(y, p[:, 1])`` for two classes, macro
      one-vs-rest for more.

    Deterministic: the same files give the reference notebook's numbers.

    Args:
        folds_dir: the ``knn-subtyping`` folder (:func:`hipt.released.registry.knn_folds_dir`).
        study: ``tcga_brca``, ``tcga_lung`` or ``tcga_kidney`` (``brca`` etc. accepted).
        encoder: ``resnet50mean``, ``vit16mean`` or ``vit256mean``.
        fraction: the reference's ``prop``: 1.0, or < 1 for its "25%" setting.

    Returns:
        ``n_folds`` test AUCs, fold 0 first.
    """
    folds_dir = Path(folds_dir)
    study = study if study.startswith("tcga_") else f"tcga_{study}"
    if not (folds_dir / encoder).is_dir():
        raise InputFileError(folds_dir / encoder, "folder of released KNN folds not found",
                             "get them with 'hipt released fetch --knn', or pass the knn-subtyping folder of a copy")
    frac = sample_frac if sample_frac is not None else 0.1
    aucs = []
    for i in range(n_folds):
        stem = folds_dir / encoder / f"{study}_{encoder}_class_split"
        x_tr, y_tr = read_embedding_pickle(f"{stem}_train_{i}.pkl", "hipt released fetch --knn")
        x_te, y_te = read_embedding_pickle(f"{stem}_test_{i}.pkl", "hipt released fetch --knn")
        if fraction < 1:
            rows = pd.DataFrame(range(x_tr.shape[0])).sample(frac=frac, random_state=1).index
            x_tr, y_tr = x_tr[rows], y_tr[rows]
        unseen = sorted(set(np.unique(y_te)) - set(np.unique(y_tr)))
        if unseen:
            raise HIPTError(f"{stem}_test_{i}.pkl: labels {unseen} have no training slide in the sampled "
                            f"{len(y_tr)} (fraction {fraction}); the KNN AUC is undefined")
        le = LabelEncoder().fit(y_tr)
        y_tr, y_te = le.transform(y_tr), le.transform(y_te)
        proba = KNeighborsClassifier().fit(x_tr, y_tr).predict_proba(x_te)
        if len(np.unique(y_te)) > 2:
            aucs.append(float(roc_auc_score(y_te, proba, average="macro", multi_class="ovr")))
        else:
            aucs.append(float(roc_auc_score(y_te, proba[:, 1])))
    return aucs
