"""The reference's patch-level evaluation, rerun on its released patch embeddings.

The reference (``3-Self-Supervised-Eval/patch_evaluation.ipynb``) compares three frozen patch encoders
on three public patch datasets, from embeddings its authors computed with its released checkpoints and
released as ``embeddings_patch_lib/<dataset>_{train,val}_<encoder>.pkl`` (see
:mod:`hipt.released.registry`):

- encoders: ``resnet50_trunc`` (ResNet-50 on ImageNet, truncated after its third stage, 1024-d;
  printed "ImageNet"), ``resnet50_tcga_brca_simclr`` (ResNet-50 trained with SimCLR on TCGA-BRCA,
  2048-d; "SimCLR (BRCA)") and ``vits_tcga_brca_dino`` (HIPT's ViT-S/16 trained with DINO on
  TCGA-BRCA, 384-d; "DINO (BRCA)");
- datasets: CRC-100K tissue types (``crc100k``: stain-normalized train set, ``crc100knonorm``: not
  normalized; validation on CRC-VAL-HE-7K), BCSS (4 classes, int labels) and BreastPathQ (tumour
  cellularity in [0, 1], a regression target).

The protocol, as in the reference:

- **classification** (CRC-100K, BCSS): ``KNeighborsClassifier()`` with scikit-learn's defaults (k = 5,
  Euclidean, uniform weights) fit on the train embeddings as stored (no normalization); per-class
  one-vs-rest AUC of ``predict_proba`` on val, plus the macro one-vs-rest AUC ("All").  CRC-100K's
  muscle class (``MUS``) is merged into stroma (``STR``) in train and val first (:data:`CRC_MERGE`);
- **regression** (BreastPathQ): ``LinearRegression()`` on the train embeddings; the val mean squared
  error and the reference's modified Kendall tau (:func:`kendall_tau_bpq`, not a standard tau; this
  module prints scipy's tau-b beside it).

:data:`REFERENCE_PATCH_TABLES` holds the numbers the reference's notebook printed (3 decimals), and
:func:`compare` sets a rerun beside them.  The ResNet-50 CRC-100K files are 0.4–0.8 GB each, so the book
reads only the DINO files by default (:data:`DEFAULT_ENCODERS`, :func:`default_patch_files`: 347 MB).

CLI: ``hipt released patch [--fetch] [--datasets ...] [--encoders ...|--include-resnet] [--out DIR]``.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Union

import numpy as np
import pandas as pd

from hipt.errors import HIPTError, InputFileError
from hipt.io import atomic_path, atomic_write_text
from hipt.provenance import benchmark_results_dir, git_commit, hardware, machine_summary
from hipt.released.fetch import fetch_files
from hipt.released.registry import (
    read_embedding_pickle,
    PATCH_DATASETS,
    PATCH_ENCODERS,
    REFERENCE_COMMIT,
    ReleasedFile,
    local_path,
    missing_files,
    patch_files,
    released_root,
)

__all__ = [
    "CRC_MERGE",
    "DEFAULT_ENCODERS",
    "REFERENCE_NOTEBOOK",
    "REFERENCE_PATCH_TABLES",
    "RECORD_NAME",
    "load_pickle",
    "patch_knn_aucs",
    "kendall_tau_bpq",
    "bpq_regression",
    "default_patch_files",
    "download_size",
    "available_encoders",
    "patch_table",
    "compare",
    "max_abs_difference",
    "write_record",
    "read_record",
    "add_arguments",
    "run",
]

log = logging.getLogger("hipt.released.patch")

REFERENCE_NOTEBOOK = "3-Self-Supervised-Eval/patch_evaluation.ipynb"
#: CRC-100K label merge of the reference: muscle counts as stroma (8 classes instead of 9).
CRC_MERGE: dict[str, str] = {"MUS": "STR"}
#: The encoders the book reads by default: the DINO ViT-S files are small (CRC-100K 166 MB per
#: variant); the ResNet-50 ones are opt-in (``include_resnet``), their CRC-100K files are 0.4–0.8 GB each.
DEFAULT_ENCODERS: tuple[str, ...] = ("vits_tcga_brca_dino",)
#: ``benchmarks/results/<RECORD_NAME>.json``: the recorded run the book shows when the files are absent.
RECORD_NAME = "released_patch"

_CLASSIFICATION = ("crc100k", "crc100knonorm", "bcss")
_BPQ_COLUMNS = ("MSE", "Tau (reference)", "tau-b")

PickleInput = Union[str, Path, tuple[np.ndarray, np.ndarray]]


def _reference_tables() -> dict[str, pd.DataFrame]:
    names = list(PATCH_ENCODERS.values())  # ImageNet, SimCLR (BRCA), DINO (BRCA): the reference's row order
    crc_cols = ["ADI", "BACK", "DEB", "LYM", "MUC", "NORM", "STR", "TUM", "All"]
    rows = {
        "crc100k": (crc_cols, [[0.983, 1.0, 0.997, 0.974, 0.963, 0.988, 0.982, 0.978, 0.983],
                               [0.988, 1.0, 0.994, 0.980, 0.969, 0.973, 0.979, 0.969, 0.981],
                               [0.999, 1.0, 0.999, 0.985, 0.992, 0.960, 0.992, 0.967, 0.987]]),
        "crc100knonorm": (crc_cols, [[0.988, 0.909, 0.900, 0.870, 0.886, 0.988, 0.963, 0.978, 0.935],
                                     [0.981, 0.765, 0.955, 0.951, 0.926, 0.976, 0.979, 0.973, 0.938],
                                     [0.991, 0.729, 0.961, 0.950, 0.978, 0.957, 0.990, 0.973, 0.941]]),
        "bcss": (["0", "1", "2", "3", "All"], [[0.503, 0.704, 0.552, 0.636, 0.599],
                                               [0.543, 0.715, 0.577, 0.667, 0.625],
                                               [0.520, 0.678, 0.540, 0.632, 0.593]]),
        # the reference printed its tau as "Tau"; named as in bpq_regression so the columns align
        "breastpathq": (["MSE", "Tau (reference)"], [[0.058, 0.828], [0.078, 0.788], [0.029, 0.854]]),
    }
    out = {}
    for dataset, (cols, values) in rows.items():
        df = pd.DataFrame(values, index=pd.Index(names, name="encoder"), columns=cols)
        df.attrs["dataset"] = dataset
        out[dataset] = df
    return out


#: The reference notebook's printed tables (3 decimals), keyed by dataset; rows are the printed encoder
#: names (:data:`hipt.released.registry.PATCH_ENCODERS`), BCSS class columns are strings ``"0"``–``"3"``.
REFERENCE_PATCH_TABLES: dict[str, pd.DataFrame] = _reference_tables()


# ------------------------------------------------------------------------------------------ loading
def load_pickle(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """The ``(embeddings [N, D], labels [N])`` of one released patch pickle
    (:func:`hipt.released.registry.read_embedding_pickle`, whose errors quote ``hipt released patch --fetch``)."""
    return read_embedding_pickle(path, "hipt released patch --fetch")


def _load(item: PickleInput) -> tuple[np.ndarray, np.ndarray, str]:
    if isinstance(item, tuple):
        emb, labels = item
        return np.asarray(emb), np.asarray(labels).ravel(), "<arrays>"
    emb, labels = load_pickle(item)
    return emb, labels, str(item)


def _class_name(value: Any) -> str:
    """Column name of a class: the label as text (``"STR"``, ``"0"``; integral floats without ``.0``)."""
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value)


# -------------------------------------------------------------------------------- classification
def patch_knn_aucs(train_pkl: PickleInput, val_pkl: PickleInput, merge: Mapping[Any, Any] | None = None,
                   k: int = 5) -> pd.Series:
    """Per-class and macro one-vs-rest AUCs of a KNN classifier on patch embeddings (the reference's protocol).

    ``KNeighborsClassifier(n_neighbors=k)`` (the reference: scikit-learn's defaults, k = 5, Euclidean,
    uniform weights) is fit on the train embeddings as stored; ``predict_proba`` on val gives one
    column per training class in sorted order (as the reference's ``LabelEncoder`` numbers them).  For
    each class, the AUC of its column for telling that class from the rest; "All" is
    ``roc_auc_score(val, proba, average='macro', multi_class='ovr')``, the mean of the per-class AUCs.

    Args:
        train_pkl, val_pkl: released pickles (:func:`load_pickle`) or ``(embeddings [N, D], labels [N])``
            pairs.
        merge: labels to rename in train and val before anything else; CRC-100K uses
            :data:`CRC_MERGE` (``{'MUS': 'STR'}``), BCSS nothing.
        k: neighbours.

    Returns:
        AUCs indexed by class name (the label as text, sorted as the labels sort) then ``"All"``.

    Raises:
        InputFileError: naming the val file when its classes differ from the training classes (a
            one-vs-rest AUC needs every class in val, and a class unseen in training has no column).
    """
    from sklearn.metrics import roc_auc_score
    from sklearn.neighbors import KNeighborsClassifier

    x_tr, y_tr, _ = _load(train_pkl)
    x_va, y_va, val_name = _load(val_pkl)
    if merge:
        # object dtype: a fixed-width '<U3' array would truncate a longer new label
        y_tr, y_va = y_tr.astype(object), y_va.astype(object)
        for old, new in merge.items():
            y_tr[y_tr == old] = new
            y_va[y_va == old] = new
    classes = np.unique(y_tr)
    val_classes = np.unique(y_va)
    if len(val_classes) != len(classes) or not np.all(val_classes == classes):
        raise InputFileError(Path(val_name), f"val classes {[_class_name(c) for c in val_classes]} differ from "
                             f"the training classes {[_class_name(c) for c in classes]}")
    if x_tr.shape[1] != x_va.shape[1]:
        raise InputFileError(Path(val_name), f"embedding size {x_va.shape[1]} differs from train's {x_tr.shape[1]}")
    # integer codes 0..C-1 in sorted label order: the reference's LabelEncoder for CRC-100K; BCSS's int
    # labels 0..3 already are their own codes
    c_tr, c_va = np.searchsorted(classes, y_tr), np.searchsorted(classes, y_va)
    clf = KNeighborsClassifier(n_neighbors=k).fit(x_tr, c_tr)
    proba = clf.predict_proba(x_va)  # [N_val, C], columns = clf.classes_ = 0..C-1
    # the reference pairs the i-th class present in val with column i; val holds every class (checked
    # above), so that is column = class code
    aucs = {_class_name(c): float(roc_auc_score(c_va == i, proba[:, i])) for i, c in enumerate(classes)}
    aucs["All"] = float(roc_auc_score(c_va, proba, average="macro", multi_class="ovr"))
    return pd.Series(aucs, name="AUC")


# ------------------------------------------------------------------------------------ regression
def _pair_signs(v: np.ndarray, rows: slice, start: int) -> np.ndarray:
    """``sign(v[j] - v[i])`` for i in ``rows`` and j ≥ ``start`` as int8, by comparison (inf == inf ties)."""
    a, b = v[rows, None], v[None, start:]
    return (b > a).astype(np.int8) - (b < a).astype(np.int8)


def kendall_tau_bpq(x: np.ndarray, y: np.ndarray, chunk_pairs: int = 4_000_000) -> float:
    """The reference's BreastPathQ "Tau": its modified ``scipy.stats.kendalltau`` (``variant='d'``).

    **Not a standard Kendall tau.**  Over the pairs i < j of ``n = len(x)`` points, count

    - ``dis``: discordant pairs (x and y strictly ordered in opposite directions);
    - ``xtie`` / ``ytie``: pairs tied in x / in y (each including the pairs tied in both);
    - ``ntie``: pairs tied in both; ``tot = n (n − 1) / 2``;

    then ``c = tot − xtie − ytie + ntie`` and ``tau = (c + ytie / 2) / (c + dis + ytie)``, clipped to
    [−1, 1]; NaN when every pair is tied in x or every pair in y (``xtie == tot`` or ``ytie == tot``),
    when ``n < 2``, or when an input is NaN (scipy's ``nan_policy='propagate'``).

    The quirk: ``c`` counts the pairs tied in neither x nor y, i.e. *concordant plus discordant* pairs,
    where the formula wants the concordant ones only (the form ``(C + T_y / 2) / (C + D + T_y)`` of a
    prediction-probability score).  So discordant pairs count in the numerator too: with no ties in the
    predictions, tau = (C + D) / (C + 2D), which is 2/3 for unrelated predictions (C ≈ D), 1/2 for a
    perfectly reversed order, and never below 1/2.  Compare it only with the reference's numbers; the
    standard tau-b is ``scipy.stats.kendalltau(x, y)``.

    Args:
        x: ``[n]`` the reference passes the true values (BreastPathQ cellularity).
        y: ``[n]`` the predictions.
        chunk_pairs: about how many pairs are compared at once: memory stays ~10 bytes × this
            (40 MB) whatever ``n`` (n = 10,000 has 50 M pairs).

    Returns:
        tau as a float (NaN in the cases above).
    """
    x = np.asarray(x, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    if x.size != y.size:
        raise ValueError(f"kendall_tau_bpq: x has {x.size} values, y has {y.size}")
    n = x.size
    if n < 2 or np.isnan(x).any() or np.isnan(y).any():
        return float("nan")
    rows_per_chunk = max(1, chunk_pairs // n)
    dis = xtie = ytie = ntie = 0
    for a in range(0, n - 1, rows_per_chunk):
        b = min(a + rows_per_chunk, n - 1)
        # block [b - a, n - a - 1]: row r is point i = a + r, column q is point j = a + 1 + q; keep j > i
        upper = np.arange(n - a - 1)[None, :] >= np.arange(b - a)[:, None]
        sx = _pair_signs(x, slice(a, b), a + 1)
        sy = _pair_signs(y, slice(a, b), a + 1)
        tx, ty = (sx == 0) & upper, (sy == 0) & upper
        xtie += int(tx.sum())
        ytie += int(ty.sum())
        ntie += int((tx & ty).sum())
        dis += int((((sx * sy) < 0) & upper).sum())
    tot = n * (n - 1) // 2
    if xtie == tot or ytie == tot:
        return float("nan")
    c = tot - xtie - ytie + ntie  # = concordant + discordant (see the docstring)
    tau = (c + 0.5 * ytie) / (c + dis + ytie)
    return float(min(1.0, max(-1.0, tau)))


def bpq_regression(train_pkl: PickleInput, val_pkl: PickleInput) -> pd.Series:
    """BreastPathQ: ``LinearRegression()`` from embeddings to cellularity, scored on val.

    Returns:
        ``MSE`` (``mean_squared_error(val, pred)``), ``Tau (reference)`` (:func:`kendall_tau_bpq` of
        ``(val, pred)``: the reference's printed "Tau", not a standard tau) and ``tau-b``
        (``scipy.stats.kendalltau(val, pred)``, the standard rank correlation with ties).
    """
    from scipy.stats import kendalltau
    from sklearn.linear_model import LinearRegression
    from sklearn.metrics import mean_squared_error

    x_tr, y_tr, tr_name = _load(train_pkl)
    x_va, y_va, va_name = _load(val_pkl)
    for y, name in ((y_tr, tr_name), (y_va, va_name)):
        if not np.issubdtype(y.dtype, np.number):
            raise InputFileError(Path(name), f"regression targets must be numbers, got dtype {y.dtype}")
    if x_tr.shape[1] != x_va.shape[1]:
        raise InputFileError(Path(va_name), f"embedding size {x_va.shape[1]} differs from train's {x_tr.shape[1]}")
    pred = LinearRegression().fit(x_tr, y_tr).predict(x_va)
    return pd.Series({
        "MSE": float(mean_squared_error(y_va, pred)),
        "Tau (reference)": kendall_tau_bpq(y_va, pred),
        "tau-b": float(kendalltau(y_va, pred).statistic),
    }, name="BreastPathQ")


# ----------------------------------------------------------------------------------------- tables
def _encoders(encoders: Sequence[str] | None, include_resnet: bool = False) -> tuple[str, ...]:
    if encoders is None:
        return tuple(PATCH_ENCODERS) if include_resnet else DEFAULT_ENCODERS
    unknown = [e for e in encoders if e not in PATCH_ENCODERS]
    if unknown:
        raise HIPTError(f"{unknown[0]}: unknown patch encoder (one of {', '.join(PATCH_ENCODERS)})")
    return tuple(encoders)


def default_patch_files(include_resnet: bool = False,
                        datasets: Sequence[str] = PATCH_DATASETS) -> list[ReleasedFile]:
    """The files the book reads by default: the DINO ViT-S pickles of every dataset (8 files, 347 MB).

    ``include_resnet=True`` adds the two ResNet-50 encoders (24 files, 3.1 GB: their CRC-100K train
    files are 0.4 and 0.8 GB each).  :func:`download_size` sums them.
    """
    return patch_files(datasets, _encoders(None, include_resnet))


def download_size(files: Sequence[ReleasedFile]) -> str:
    """``"<n> files, <size>"`` of registered files, e.g. ``"8 files, 347 MB"`` (decimal units)."""
    total = sum(f.size for f in files)
    size = f"{total / 1e9:.1f} GB" if total >= 1e9 else f"{total / 1e6:.0f} MB"
    return f"{len(files)} files, {size}"


def available_encoders(dataset: str, root: str | Path | None = None,
                       encoders: Sequence[str] = tuple(PATCH_ENCODERS)) -> tuple[str, ...]:
    """The encoders among ``encoders`` whose train and val files of ``dataset`` are under ``root`` with their
    registered size (:func:`hipt.released.registry.missing_files`), in the reference's order."""
    return tuple(e for e in encoders if not missing_files(patch_files([dataset], [e]), root))


def _fetch_hint(datasets: Sequence[str], encoders: Sequence[str], root: Path) -> str:
    return (f"get them with: hipt released patch --fetch --root {root} --datasets {' '.join(datasets)} "
            f"--encoders {' '.join(encoders)}")


def patch_table(dataset: str, root: str | Path | None = None,
                encoders: Sequence[str] = DEFAULT_ENCODERS) -> pd.DataFrame:
    """The reference's table of one dataset, recomputed from the released pickles under ``root``.

    Args:
        dataset: ``crc100k``, ``crc100knonorm``, ``bcss`` (KNN AUCs, :func:`patch_knn_aucs`; CRC-100K with
            MUS merged into STR) or ``breastpathq`` (:func:`bpq_regression`).
        root: the local copy (:func:`hipt.released.registry.released_root`); files are read from
            ``patch_dir(root)``.
        encoders: file tags (:data:`hipt.released.registry.PATCH_ENCODERS`).

    Returns:
        One row per encoder (index: the printed names, e.g. ``"DINO (BRCA)"``), columns as in
        :data:`REFERENCE_PATCH_TABLES` (BreastPathQ adds ``tau-b``).

    Raises:
        HIPTError: naming every absent file and the command that downloads them.
    """
    if dataset not in PATCH_DATASETS:
        raise HIPTError(f"{dataset}: unknown patch dataset (one of {', '.join(PATCH_DATASETS)})")
    encoders = _encoders(encoders)
    root = released_root(root)
    files = patch_files([dataset], encoders)
    absent = [f for f in files if not local_path(f, root).is_file()]
    if absent:
        raise HIPTError(f"{len(absent)} released patch file(s) absent under {root}: "
                        f"{', '.join(f.name for f in absent)} ({_fetch_hint([dataset], encoders, root)})")
    rows = {}
    for enc in encoders:
        train, val = (local_path(f, root) for f in patch_files([dataset], [enc]))  # train then val
        t0 = time.perf_counter()
        if dataset == "breastpathq":
            rows[PATCH_ENCODERS[enc]] = bpq_regression(train, val)
        else:
            merge = CRC_MERGE if dataset.startswith("crc100k") else None
            rows[PATCH_ENCODERS[enc]] = patch_knn_aucs(train, val, merge=merge)
        log.info("%s %s: %.1f s", dataset, enc, time.perf_counter() - t0)
    table = pd.DataFrame(rows).T
    table.index.name = "encoder"
    table.attrs["dataset"] = dataset
    return table


def compare(ours: pd.DataFrame, reference: pd.DataFrame) -> pd.DataFrame:
    """Our table beside the reference's printed one, and the difference.

    Returns:
        Rows ``(encoder, source)`` for each encoder of ``ours`` (in its order), ``source`` one of
        ``"ours"``, ``"reference"``, ``"ours − reference"``; columns: the reference's, then any column
        only ours has (e.g. ``tau-b``: NaN in the reference rows).  An encoder the reference did not
        print gets NaN reference and difference rows.
    """
    columns = list(reference.columns) + [c for c in ours.columns if c not in reference.columns]
    ours = ours.reindex(columns=columns).astype(float)
    ref = reference.reindex(index=ours.index, columns=columns).astype(float)
    parts = {"ours": ours, "reference": ref, "ours − reference": ours - ref}
    out = pd.concat(parts, names=["source", "encoder"]).swaplevel(0, 1)
    order = [(e, s) for e in ours.index for s in parts]
    return out.reindex(pd.MultiIndex.from_tuples(order, names=["encoder", "source"]))


def max_abs_difference(comparison: pd.DataFrame) -> float:
    """The largest ``|ours − reference|`` of a :func:`compare` table (NaN when no number is in both).

    The reference printed 3 decimals, so a value ≤ 0.0005 is a match at its precision.
    """
    diff = comparison.xs("ours − reference", level="source").abs()
    return float(np.nanmax(diff.to_numpy())) if diff.notna().any().any() else float("nan")


# ------------------------------------------------------------------------------------------ records
def _record_path(path: str | Path | None) -> Path:
    if path is not None:
        return Path(path)

    return benchmark_results_dir() / f"{RECORD_NAME}.json"


def write_record(tables: Mapping[str, pd.DataFrame], path: str | Path | None = None,
                 command: str | None = None, root: str | Path | None = None) -> Path:
    """Write a run's tables to ``benchmarks/results/released_patch.json`` (or ``path``).

    The benchmark-result format (``benchmarks/README.md``: ``name``, ``title``, ``machine``, ``hardware``,
    ``date``, ``command``, ``notes``, ``rows``) plus ``commit`` (this checkout's git commit) and
    ``reference_commit``; one row per (dataset, encoder, metric) with ``ours``, ``reference`` and
    ``ours − reference`` (None where the reference printed nothing).
    """
    import datetime as dt
    import sys


    rows = []
    for dataset, table in tables.items():
        ref = REFERENCE_PATCH_TABLES[dataset]
        for enc, row in table.iterrows():
            for metric, value in row.items():
                r = ref.at[enc, metric] if (enc in ref.index and metric in ref.columns) else None
                rows.append({"dataset": dataset, "encoder": enc, "metric": str(metric), "ours": float(value),
                             "reference": r, "ours − reference": None if r is None else float(value) - r})
    machine = hardware()
    machine.pop("hostname", None)
    record = {
        "name": RECORD_NAME,
        "title": "The reference's patch-level tables, recomputed from its released embeddings",
        "machine": machine_summary(machine),
        "hardware": machine,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": command if command is not None else " ".join(["hipt", *sys.argv[1:]]),
        "commit": git_commit(),
        "reference_commit": REFERENCE_COMMIT,
        "notes": (f"embeddings released by the reference ({REFERENCE_NOTEBOOK} protocol); "
                  f"files read from {released_root(root)}"),
        "rows": rows,
    }
    dest = _record_path(path)
    atomic_write_text(dest, json.dumps(record, indent=2, ensure_ascii=False) + "\n")
    return dest


def read_record(path: str | Path | None = None) -> tuple[dict[str, Any], dict[str, pd.DataFrame]] | None:
    """A recorded run (:func:`write_record`), or None if there is none.

    Returns:
        ``(metadata, tables)``: the record without its rows (``command``, ``commit``, ``date``,
        ``machine``, ...), and per dataset the recorded table as :func:`patch_table` returns it (rows:
        printed encoder names in the reference's order), ready for :func:`compare`.

    Raises:
        InputFileError: naming the file when it is not valid JSON or not such a record.
    """
    path = _record_path(path)
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise InputFileError(path, f"not valid JSON ({e})") from None
    needed = {"dataset", "encoder", "metric", "ours"}
    rows = record.get("rows") if isinstance(record, dict) else None
    if not isinstance(rows, list) or not rows or not all(isinstance(r, dict) and needed <= set(r) for r in rows):
        raise InputFileError(path, f"not a {RECORD_NAME} record (rows need {sorted(needed)})")
    long = pd.DataFrame(rows)
    unknown = sorted(set(long["dataset"]) - set(PATCH_DATASETS))
    if unknown:
        raise InputFileError(path, f"unknown datasets {unknown}")
    tables = {}
    order = list(PATCH_ENCODERS.values())
    for dataset in [d for d in PATCH_DATASETS if d in set(long["dataset"])]:
        part = long[long["dataset"] == dataset]
        table = part.pivot(index="encoder", columns="metric", values="ours").astype(float)
        metrics = list(dict.fromkeys(part["metric"]))  # as written: the table's column order
        table = table.reindex(index=sorted(table.index, key=lambda e: order.index(e) if e in order else len(order)),
                              columns=metrics)
        table.index.name, table.columns.name = "encoder", None
        table.attrs["dataset"] = dataset
        tables[dataset] = table
    return {k: v for k, v in record.items() if k != "rows"}, tables


# ---------------------------------------------------------------------------------------------- CLI
def _markdown(df: pd.DataFrame, digits: int = 4) -> str:
    index_names = [n or "" for n in df.index.names]
    lines = ["| " + " | ".join([*index_names, *map(str, df.columns)]) + " |",
             "|" + "---|" * (len(index_names) + len(df.columns))]
    for key, row in df.iterrows():
        keys = list(key) if isinstance(key, tuple) else [key]
        cells = ["–" if pd.isna(v) else f"{v:.{digits}f}" for v in row.tolist()]
        lines.append("| " + " | ".join([*map(str, keys), *cells]) + " |")
    return "\n".join(lines) + "\n"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``hipt released patch``."""
    parser.add_argument("--root", type=Path, default=None,
                        help="local copy of the released files (default: $HIPT_RELEASED or <cache>/released)")
    parser.add_argument("--datasets", nargs="+", default=list(PATCH_DATASETS), choices=list(PATCH_DATASETS),
                        help="patch datasets")
    parser.add_argument("--encoders", nargs="+", default=None, choices=list(PATCH_ENCODERS),
                        help=f"encoder file tags (default: {' '.join(DEFAULT_ENCODERS)}; all with --include-resnet)")
    parser.add_argument("--include-resnet", action="store_true",
                        help="also the ResNet-50 encoders (ImageNet, SimCLR): 3.1 GB in all instead of 347 MB")
    parser.add_argument("--fetch", action="store_true", help="download (and verify) the absent files first")
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for released_patch_<dataset>.csv / .md (ours, reference, difference)")
    parser.add_argument("--record", nargs="?", type=Path, default=None, const=_RECORD_DEFAULT,
                        help="also write the run as a JSON record (bare flag: benchmarks/results/released_patch.json,"
                             " which the book shows when the files are absent)")


_RECORD_DEFAULT = Path(f"benchmarks/results/{RECORD_NAME}.json")


def run(args: argparse.Namespace) -> int:
    """``hipt released patch``: (fetch,) recompute each dataset's table, print it beside the reference's."""
    import sys

    encoders = _encoders(args.encoders, args.include_resnet)
    root = released_root(args.root)
    files = patch_files(args.datasets, encoders)
    absent = missing_files(files, root)
    if args.fetch and absent:

        print(f"fetching {download_size(absent)} into {root}")
        fetch_files(absent, root=root)
    tables = {}
    for dataset in args.datasets:
        table = patch_table(dataset, root, encoders)
        tables[dataset] = table
        cmp = compare(table, REFERENCE_PATCH_TABLES[dataset])
        print(f"\n{dataset} (largest |ours − reference| = {max_abs_difference(cmp):.4f}; "
              "the reference printed 3 decimals)")
        print(cmp.round(4).to_string())
        if args.out is not None:

            stem = Path(args.out) / f"released_patch_{dataset}"
            with atomic_path(stem.with_suffix(".csv")) as tmp:
                cmp.to_csv(tmp)
            atomic_write_text(stem.with_suffix(".md"),
                              f"**{dataset}: ours vs the reference's printed numbers**\n\n{_markdown(cmp)}")
    if args.record is not None:
        record = args.record if args.record != _RECORD_DEFAULT else None  # the bare flag: the checkout's folder
        dest = write_record(tables, record, command=" ".join(["hipt released patch", *sys.argv[3:]]), root=root)
        print(f"record written to {dest}")
    return 0
