"""Per-fold result records and the paper's results tables (Table 1: subtyping AUC, Table 2: c-index).

Per-fold record format
----------------------
Every evaluation (the training loop of :mod:`hipt.tasks.train`, the KNN of :mod:`hipt.knn`) writes
one small file per (task, method, training fraction, fold) with :func:`write_fold_results`, atomically
(temporary file, then rename), into a results folder (the chapters' papermill parameter
``results_dir``).  A record file is a CSV with one row per (split, metric) and the columns

=========== ======= ===========================================================================
column      type    meaning
=========== ======= ===========================================================================
task        str     task name (``tcga_brca_subtype``, ``phantom_context``, …)
method      str     method name (``hipt``, ``abmil``, ``knn_vit4k_mean``, …; see :data:`METHOD_LABELS`)
fraction    float   training fraction (``0.25`` or ``1.0``)
fold        int     fold index (0-based)
split       str     ``train``, ``val`` or ``test``
metric      str     ``auc``, ``acc``, ``c_index``, ``loss``, … (``cindex`` is read as ``c_index``)
value       float   the metric's value
=========== ======= ===========================================================================

Extra columns (e.g. ``n`` examples, ``seed``, ``epoch``) are allowed and kept.  A JSON file holding a
list of such records (or ``{"records": [...]}``) is read too.  The default file name is
``{task}__{method}__frac{fraction}__fold{fold}.results.csv``; :func:`collect_results` reads every
``*.csv``/``*.json`` below the folder whose columns include the seven above and ignores others (such as
per-slide prediction files), so the name is not a contract.  The same (task, method, fraction, fold,
split, metric) in two files is an error.

Tables
------
:func:`table1` (test AUC, mean ± std over folds, tasks × {25%, 100%} × methods) and :func:`table2`
(validation c-index per cohort × methods) put the paper's reported numbers (:data:`PAPER_TABLE1`,
:data:`PAPER_TABLE2`, from the HIPT paper and the reference repository) in a row beside ours.
:meth:`ResultsTable.save` writes CSV and Markdown.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from hipt.errors import InputFileError
from hipt.io import atomic_path, atomic_write_text
from hipt.metrics import mean_std

__all__ = [
    "RECORD_COLUMNS",
    "TABLE_METHODS",
    "METRIC_ALIASES",
    "METHOD_LABELS",
    "TASK_LABELS",
    "PAPER_TABLE1",
    "PAPER_TABLE2",
    "write_fold_results",
    "collect_results",
    "summarize",
    "ResultsTable",
    "markdown_table",
    "table1",
    "table2",
    "write_tables",
]

log = logging.getLogger("hipt.tasks")

#: The slide-level methods of the paper's Table 1 and Table 2 (``hipt finetune --method``), in its order
TABLE_METHODS = ("hipt", "hipt_n", "mean", "abmil", "clam_sb", "dsmil", "deepattnmisl", "gcn", "transmil")

#: The columns every per-fold record has (see the module docstring); extra columns are kept.
RECORD_COLUMNS = ("task", "method", "fraction", "fold", "split", "metric", "value")
_KEY = list(RECORD_COLUMNS[:-1])
#: Other spellings of metric names, normalized when records are read.
METRIC_ALIASES = {"cindex": "c_index", "c-index": "c_index", "concordance": "c_index", "roc_auc": "auc"}

#: Display names of the methods (unknown names are shown as they are).
METHOD_LABELS: dict[str, str] = {
    "hipt": "HIPT (ViT-256 frozen → ViT-4K frozen → global)",
    "hipt_finetune": "HIPT, ViT-4K fine-tuned",
    "hipt_scratch": "HIPT, ViT-4K from scratch",
    "hipt_n": "HIPT without ViT-4K (hipt_n)",
    "hipt_gp": "HIPT-GP on released [M,192] features",
    "mean": "Mean pooling",
    "abmil": "ABMIL",
    "clam_sb": "CLAM-SB",
    "dsmil": "DS-MIL",
    "deepattnmisl": "DeepAttnMISL",
    "gcn": "GCN-MIL",
    "transmil": "TransMIL",
    "knn_vit4k_mean": "KNN, mean ViT-4K region [CLS]",
    "knn_vit256_mean": "KNN, mean ViT-256 patch [CLS]",
    "knn_resnet50_mean": "KNN, mean ResNet-50 patch features",
}

#: Short column names of the TCGA tasks.
TASK_LABELS: dict[str, str] = {
    "tcga_brca_subtype": "BRCA",
    "tcga_kidney_subtype": "Kidney",
    "tcga_lung_subtype": "Lung",
    "tcga_brca_survival": "BRCA",
    "tcga_coadread_survival": "COADREAD",
    "tcga_kirc_survival": "KIRC",
    "tcga_kirp_survival": "KIRP",
    "tcga_luad_survival": "LUAD",
    "tcga_stad_survival": "STAD",
}

_B, _K, _L = "tcga_brca_subtype", "tcga_kidney_subtype", "tcga_lung_subtype"


def _rows(b25, b100, l25, l100, k25, k100) -> dict[str, dict[float, tuple[float, float | None] | None]]:
    return {_B: {0.25: b25, 1.0: b100}, _L: {0.25: l25, 1.0: l100}, _K: {0.25: k25, 1.0: k100}}


def _m(x: float | None) -> tuple[float, None] | None:
    return None if x is None else (x, None)


#: The paper's test AUCs (mean, std or None) per method → task → training fraction.  HIPT rows from the
#: paper's Table 1; ablations from its Table 2 (std not reproduced here); CLAM-SB at 100%; HIPT-GP from
#: the reference repository's ``results_Issue25`` re-run on the released [M,192] features; KNN rows from
#: the reference's KNN notebook (its "ViT-256 mean" is the mean of the ViT-4096-256 region [CLS] tokens
#: = our ``knn_vit4k_mean``; its "ViT-16 mean" the mean of ViT-256-16 patch [CLS] = our
#: ``knn_vit256_mean``).  **Its KNN "25%" rows used 10% of the training set** (``frac=0.1``, a bug).
PAPER_TABLE1: dict[str, dict[str, dict[float, tuple[float, float | None] | None]]] = {
    "hipt": _rows((0.821, 0.069), (0.874, 0.060), (0.923, 0.020), (0.952, 0.021), (0.974, 0.012), (0.980, 0.013)),
    "hipt_n": _rows(_m(0.784), _m(0.837), _m(0.835), _m(0.928), _m(0.955), _m(0.965)),
    "hipt_scratch": _rows(_m(0.758), _m(0.823), _m(0.695), _m(0.786), None, _m(0.956)),
    "hipt_finetune": _rows(_m(0.762), _m(0.827), _m(0.652), _m(0.820), _m(0.935), _m(0.956)),
    "clam_sb": _rows(None, _m(0.858), None, _m(0.928), None, _m(0.973)),
    "hipt_gp": _rows(_m(0.837), _m(0.879), _m(0.918), _m(0.953), _m(0.965), _m(0.979)),
    "knn_vit4k_mean": _rows(_m(0.682), _m(0.775), _m(0.773), _m(0.889), _m(0.916), _m(0.974)),
    "knn_vit256_mean": _rows(_m(0.605), _m(0.725), _m(0.622), _m(0.742), _m(0.848), _m(0.899)),
    "knn_resnet50_mean": _rows(_m(0.638), _m(0.667), _m(0.696), _m(0.794), _m(0.862), _m(0.951)),
}

#: The paper's survival c-index (mean, std or None) per method → task (5-fold cross-validation, val folds).
PAPER_TABLE2: dict[str, dict[str, tuple[float, float | None]]] = {
    "hipt": {
        "tcga_brca_survival": (0.634, 0.050),
        "tcga_coadread_survival": (0.608, 0.088),
        "tcga_kirc_survival": (0.642, 0.028),
        "tcga_kirp_survival": (0.670, 0.065),
        "tcga_luad_survival": (0.538, 0.044),
        "tcga_stad_survival": (0.570, 0.081),
    },
    "abmil": {"tcga_brca_survival": (0.487, None)},
    "dsmil": {"tcga_brca_survival": (0.534, None)},
}


# --------------------------------------------------------------------------------------- records
def _safe(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", str(s))


def write_fold_results(
    results_dir: str | Path,
    task: str,
    method: str,
    fraction: float,
    fold: int,
    metrics: Mapping[str, Mapping[str, float]],
    extra: Mapping[str, object] | None = None,
    filename: str | None = None,
) -> Path:
    """Write one fold's metrics as a record file (atomic); returns its path.

    Args:
        metrics: ``{split: {metric: value}}``, e.g. ``{"test": {"auc": 0.91, "acc": 0.85}, "val": {...}}``.
        extra: columns added to every row (e.g. ``{"seed": 1, "n_train": 196}``).
        filename: default ``{task}__{method}__frac{fraction}__fold{fold}.results.csv``.
    """
    rows = []
    for split, values in metrics.items():
        for metric, value in values.items():
            rows.append({"task": task, "method": method, "fraction": float(fraction), "fold": int(fold),
                         "split": split, "metric": metric, "value": float(value), **(extra or {})})
    if not rows:
        raise ValueError("write_fold_results: no metrics given")
    name = filename or f"{_safe(task)}__{_safe(method)}__frac{float(fraction):g}__fold{int(fold)}.results.csv"
    path = Path(results_dir) / name
    with atomic_path(path) as tmp:
        pd.DataFrame(rows).to_csv(tmp, index=False)
    return path


def _read_record_file(path: Path) -> pd.DataFrame | None:
    try:
        if path.suffix == ".json":
            data = json.loads(path.read_text())
            if isinstance(data, dict):
                data = data.get("records")
            if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
                return None
            df = pd.DataFrame(data)
        else:
            df = pd.read_csv(path)
    except Exception as e:  # noqa: BLE001
        raise InputFileError(path, f"cannot be read as a result file ({e})") from None
    if not set(RECORD_COLUMNS) <= set(df.columns):
        return None
    try:
        df["fraction"] = df["fraction"].astype(float)
        df["fold"] = df["fold"].astype(int)
        df["value"] = pd.to_numeric(df["value"], errors="raise").astype(float)
    except (ValueError, TypeError) as e:
        raise InputFileError(path, f"bad record values ({e})") from None
    df["metric"] = df["metric"].astype(str).replace(METRIC_ALIASES)
    df["source"] = str(path)
    return df


def collect_results(results: str | Path | pd.DataFrame | Iterable[str | Path]) -> pd.DataFrame:
    """Read every record file below a folder (or below several folders, or a list of files) into one
    long DataFrame (a DataFrame is returned as it is).

    Files without the record columns are skipped.  Raises :class:`~hipt.errors.InputFileError` when two
    files hold the same (task, method, fraction, fold, split, metric).
    """
    if isinstance(results, pd.DataFrame):
        return results.assign(metric=results["metric"].astype(str).replace(METRIC_ALIASES))
    files: list[Path] = []
    for item in [results] if isinstance(results, (str, Path)) else results:
        p = Path(item)
        if p.is_dir():
            files += sorted(q for q in p.rglob("*") if q.suffix in (".csv", ".json") and q.is_file())
        elif p.is_file():
            files.append(p)
        else:
            raise InputFileError(p, "results folder not found")
    frames = [df for df in (_read_record_file(p) for p in files) if df is not None]
    if not frames:
        return pd.DataFrame(columns=[*RECORD_COLUMNS, "source"])
    df = pd.concat(frames, ignore_index=True)
    dup = df[df.duplicated(_KEY, keep=False)]
    if len(dup):
        first = dup.iloc[0]
        where = sorted(set(dup.loc[(dup[_KEY] == first[_KEY]).all(axis=1), "source"]))
        raise InputFileError(
            Path(where[0]), f"record {dict(first[_KEY])} also appears in {where[1:] or 'the same file'}"
        )
    return df


def summarize(results, split: str, metric: str, ddof: int = 0) -> pd.DataFrame:
    """Mean ± std over folds per (task, method, fraction) of one split's metric.

    Returns columns ``task, method, fraction, mean, std, n_folds`` (``std`` is NaN for a single fold).
    """
    df = collect_results(results)
    metric = METRIC_ALIASES.get(metric, metric)
    df = df[(df["split"] == split) & (df["metric"] == metric)]
    rows = []
    for (task, method, fraction), g in df.groupby(["task", "method", "fraction"], sort=False):
        m, s = mean_std(g["value"], ddof=ddof)
        if g["fold"].nunique() < 2:
            s = float("nan")  # one fold: no spread to report
        rows.append({"task": task, "method": method, "fraction": float(fraction), "mean": m, "std": s,
                     "n_folds": int(g["fold"].nunique())})
    return pd.DataFrame(rows, columns=["task", "method", "fraction", "mean", "std", "n_folds"])


# ----------------------------------------------------------------------------------------- tables
def _fmt(mean: float, std: float | None, digits: int = 3) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "–"
    if std is None or (isinstance(std, float) and math.isnan(std)):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def _fraction_label(f: float) -> str:
    return f"{f * 100:g}%"


def markdown_table(df: pd.DataFrame, float_format: str = "{:.3f}") -> str:
    """A GitHub-flavoured Markdown table of ``df`` (no index), floats formatted with ``float_format``.

    Written here rather than with ``DataFrame.to_markdown`` so that the package does not need
    ``tabulate``."""

    def cell(v: object) -> str:
        if isinstance(v, float):
            return "" if np.isnan(v) else float_format.format(v)
        return str(v)

    lines = ["| " + " | ".join(map(str, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"


@dataclass
class ResultsTable:
    """An assembled table.

    Attributes:
        long: one row per (method, source, task, fraction): ``mean``, ``std``, ``n_folds``, ``text``;
            ``source`` is ``"ours"`` or ``"paper"``.
        wide: the display layout: rows (method, source), columns ``"{task} {fraction}"``.
        title: a caption.
    """

    long: pd.DataFrame
    wide: pd.DataFrame
    title: str

    def to_markdown(self) -> str:
        """A GitHub-flavoured Markdown table (method, source, then the task columns)."""
        header = ["method", "source", *self.wide.columns]
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for (method, source), row in self.wide.iterrows():
            label = METHOD_LABELS.get(method, method)
            lines.append("| " + " | ".join([label, source, *(str(v) for v in row.tolist())]) + " |")
        return "\n".join(lines) + "\n"

    def save(self, out_dir: str | Path, stem: str) -> tuple[Path, Path]:
        """Write ``{stem}.csv`` (the long table) and ``{stem}.md`` (title + wide table), atomically."""
        out_dir = Path(out_dir)
        csv_path, md_path = out_dir / f"{stem}.csv", out_dir / f"{stem}.md"
        with atomic_path(csv_path) as tmp:
            self.long.to_csv(tmp, index=False)
        atomic_write_text(md_path, f"**{self.title}**\n\n{self.to_markdown()}")
        return csv_path, md_path

    def _repr_markdown_(self) -> str:  # pragma: no cover (notebook display)
        return f"**{self.title}**\n\n{self.to_markdown()}"


def _assemble(
    ours: pd.DataFrame,
    paper: dict,
    tasks: Sequence[str],
    fractions: Sequence[float | None],
    methods: Sequence[str] | None,
    include_paper: bool,
    title: str,
    digits: int,
) -> ResultsTable:
    rows = []
    for r in ours.itertuples(index=False):
        frac = None if fractions == [None] else r.fraction
        rows.append({"method": r.method, "source": "ours", "task": r.task, "fraction": frac,
                     "mean": r.mean, "std": r.std, "n_folds": r.n_folds})
    if include_paper:
        for method, per_task in paper.items():
            for task in tasks:
                entry = per_task.get(task)
                if entry is None:
                    continue
                per_frac = entry if isinstance(entry, dict) else {None: entry}
                for frac in fractions:
                    val = per_frac.get(frac)
                    if val is None:
                        continue
                    rows.append({"method": method, "source": "paper", "task": task, "fraction": frac,
                                 "mean": val[0], "std": val[1], "n_folds": np.nan})
    long = pd.DataFrame(rows, columns=["method", "source", "task", "fraction", "mean", "std", "n_folds"])
    long = long[long["task"].isin(tasks)]
    if methods is not None:
        long = long[long["method"].isin(methods)]
    long["text"] = [_fmt(m, None if pd.isna(s) else s, digits) for m, s in zip(long["mean"], long["std"])]

    # display order: methods as given (or ours first, then paper-only), ours before paper
    order = list(methods) if methods is not None else list(dict.fromkeys(
        [m for m in METHOD_LABELS if m in set(long["method"])] + list(long["method"])))
    columns = [(t, f) for t in tasks for f in fractions]

    def col_name(t, f):
        name = TASK_LABELS.get(t, t)
        return name if f is None else f"{name} {_fraction_label(f)}"

    index = [(m, s) for m in order for s in ("ours", "paper") if ((long["method"] == m) & (long["source"] == s)).any()]
    wide = pd.DataFrame("–", index=pd.MultiIndex.from_tuples(index, names=["method", "source"]) if index else None,
                        columns=[col_name(t, f) for t, f in columns])
    for r in long.itertuples(index=False):
        frac = None if pd.isna(r.fraction) else r.fraction
        if (r.task, frac) in columns:
            wide.loc[(r.method, r.source), col_name(r.task, frac)] = r.text
    long = long.assign(method=pd.Categorical(long["method"], categories=order, ordered=True))
    long = long.sort_values(["method", "source", "task", "fraction"], kind="stable").reset_index(drop=True)
    long["method"] = long["method"].astype(str)
    return ResultsTable(long=long, wide=wide, title=title)


def table1(
    results,
    tasks: Sequence[str] | None = None,
    fractions: Sequence[float] = (0.25, 1.0),
    methods: Sequence[str] | None = None,
    split: str = "test",
    metric: str = "auc",
    include_paper: bool = True,
    digits: int = 3,
    ddof: int = 0,
) -> ResultsTable:
    """Table 1 layout: slide-level subtyping, mean ± std test AUC over folds.

    Columns are tasks × training fractions; rows are methods (MIL models and the KNN baselines), each
    with our row and, where the paper reports one, the paper's row.

    Args:
        results: a results folder, record files, or a DataFrame from :func:`collect_results`.
        tasks: columns, default the tasks present in ``results`` (TCGA tasks in the paper's order).
        methods: rows to show (default: all, in :data:`METHOD_LABELS` order).
    """
    ours = summarize(results, split, metric, ddof=ddof)
    if tasks is None:
        present = list(dict.fromkeys(ours["task"]))
        tasks = [t for t in (_B, _L, _K) if t in present] + [t for t in present if t not in (_B, _L, _K)]
    return _assemble(ours, PAPER_TABLE1, list(tasks), [float(f) for f in fractions], methods, include_paper,
                     f"Slide-level classification: {split} {metric.upper()}, mean ± std over folds", digits)


def table2(
    results,
    tasks: Sequence[str] | None = None,
    methods: Sequence[str] | None = None,
    split: str = "val",
    metric: str = "c_index",
    fraction: float = 1.0,
    include_paper: bool = True,
    digits: int = 3,
    ddof: int = 0,
) -> ResultsTable:
    """Table 2 layout: survival c-index per cohort (columns) × methods (rows), mean ± std over folds.

    The paper evaluates on the validation fold of 5-fold cross-validation (there is no test split).
    """
    ours = summarize(results, split, metric, ddof=ddof)
    ours = ours[ours["fraction"] == float(fraction)]
    if tasks is None:
        present = list(dict.fromkeys(ours["task"]))
        paper_order = list(PAPER_TABLE2["hipt"])
        tasks = [t for t in paper_order if t in present] + [t for t in present if t not in paper_order]
    return _assemble(ours, PAPER_TABLE2, list(tasks), [None], methods, include_paper,
                     f"Survival prediction: {split} c-index, mean ± std over folds", digits)


def write_tables(results, out_dir: str | Path) -> list[Path]:
    """Assemble every table the records allow and write them as CSV + Markdown into ``out_dir``.

    ``table1`` from the ``test``/``auc`` records (MIL methods and KNN rows), ``table2`` from the
    ``val``/``c_index`` records; a table without records is not written.  Returns the files written.
    """
    df = collect_results(results)
    written: list[Path] = []
    if ((df["split"] == "test") & (df["metric"] == "auc")).any():
        fractions = sorted(set(df.loc[(df["split"] == "test") & (df["metric"] == "auc"), "fraction"]))
        written += table1(df, fractions=fractions).save(out_dir, "table1")
    if ((df["split"] == "val") & (df["metric"] == "c_index")).any():
        written += table2(df).save(out_dir, "table2")
    return written
