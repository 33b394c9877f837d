"""Cross-validation split files in the reference's format: read, filter, subsample, generate, write.

Format (the reference's ``splits_{k}.csv``, one file per fold)::

    ,train,val,test
    0,TCGA-A7-A6VV-01Z-00-DX1.07AE…,TCGA-A2-A0YH-01Z-00-DX1.FBA5…,TCGA-BH-A202-01Z-00-DX1.8CEC…
    1,…
    844,TCGA-AR-A2LM-01Z-00-DX1.CB64…,,

- an unnamed first column (row index), then one column per split; shorter columns are padded with
  empty cells;
- **subtyping** folds (``,train,val,test``) list *slide* ids without the ``.svs`` suffix; the
  reference's 10 folds are repeated random ~80/10/10 draws, stratified by class (Monte-Carlo
  cross-validation): val and test are disjoint within a fold, but **test sets overlap across folds**,
  so the 10 test AUCs are not independent estimates;
- **survival** folds (``,train,val``) list *case* (patient) ids; the val folds are disjoint (true
  5-fold cross-validation) and there is no test split.

The reference files cover whole TCGA cohorts while its slide tables keep only slides with at least
one 4096-px region, so :func:`filter_split` drops ids absent from the table and logs how many remain.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from hipt.errors import InputFileError
from hipt.io import atomic_path

__all__ = [
    "Split",
    "read_split_file",
    "read_splits",
    "split_files",
    "filter_split",
    "subsample_train",
    "write_split_file",
    "make_splits",
]

log = logging.getLogger("hipt.tasks")

SPLIT_NAMES = ("train", "val", "test")
_SPLIT_FILE = re.compile(r"^splits_(\d+)\.csv$")


@dataclass(frozen=True)
class Split:
    """One fold: ids (slide ids for subtyping, case ids for survival) per split.

    ``test`` is empty for survival folds.  ``source`` is the file it was read from (if any).
    """

    fold: int
    train: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...] = ()
    source: Path | None = field(default=None, compare=False)

    def __getitem__(self, name: str) -> tuple[str, ...]:
        if name not in SPLIT_NAMES:
            raise KeyError(f"unknown split {name!r} (one of {', '.join(SPLIT_NAMES)})")
        return getattr(self, name)

    def sizes(self) -> dict[str, int]:
        return {name: len(self[name]) for name in SPLIT_NAMES}

    @property
    def has_test(self) -> bool:
        return len(self.test) > 0


def _column(df: pd.DataFrame, name: str) -> tuple[str, ...]:
    if name not in df.columns:
        return ()
    values = df[name].dropna().astype(str).str.strip()
    return tuple(v for v in values if v)


def read_split_file(path: str | Path, fold: int | None = None) -> Split:
    """Read one ``splits_{k}.csv`` (subtyping ``,train,val,test`` or survival ``,train,val``).

    Raises :class:`~hipt.errors.InputFileError` naming the file when it is missing, not a CSV, lacks a
    ``train`` or ``val`` column, repeats an id within a split, or shares ids between splits.
    """
    path = Path(path)
    if not path.is_file():
        raise InputFileError(path, "split file not found")
    if fold is None:
        m = _SPLIT_FILE.match(path.name)
        fold = int(m.group(1)) if m else 0
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=True)
    except Exception as e:  # noqa: BLE001 (pandas raises several kinds)
        raise InputFileError(path, f"cannot be read as a CSV ({e})") from None
    missing = [c for c in ("train", "val") if c not in df.columns]
    if missing:
        raise InputFileError(
            path, f"not a split file: no column {', '.join(missing)}; columns are {list(df.columns)}",
            "expected ',train,val,test' (subtyping) or ',train,val' (survival)",
        )
    split = Split(fold=fold, train=_column(df, "train"), val=_column(df, "val"), test=_column(df, "test"), source=path)
    for name in SPLIT_NAMES:
        ids = split[name]
        if len(set(ids)) != len(ids):
            dup = sorted({i for i in ids if ids.count(i) > 1})[:3]
            raise InputFileError(path, f"{name} repeats ids, e.g. {dup}")
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        common = set(split[a]) & set(split[b])
        if common:
            raise InputFileError(path, f"{a} and {b} share {len(common)} ids, e.g. {sorted(common)[:3]}")
    return split


def split_files(split_dir: str | Path) -> list[Path]:
    """The ``splits_{k}.csv`` files of a folder, ordered by k (``_bool``/``_descriptor`` files ignored).

    Raises :class:`~hipt.errors.InputFileError` when the folder is missing, holds none, or skips a k.
    """
    split_dir = Path(split_dir)
    if not split_dir.is_dir():
        raise InputFileError(split_dir, "split folder not found")
    found = {}
    for p in split_dir.iterdir():
        m = _SPLIT_FILE.match(p.name)
        if m:
            found[int(m.group(1))] = p
    if not found:
        raise InputFileError(split_dir, "no splits_{k}.csv files in this folder")
    ks = sorted(found)
    if ks != list(range(len(ks))):
        raise InputFileError(split_dir, f"split files are not numbered 0..{len(ks) - 1}: found folds {ks}")
    return [found[k] for k in ks]


def read_splits(split_dir: str | Path) -> list[Split]:
    """Read every fold of a split folder (see :func:`split_files`)."""
    return [read_split_file(p, fold=k) for k, p in enumerate(split_files(split_dir))]


def filter_split(split: Split, present: Iterable[str], order: Sequence[str] | None = None) -> Split:
    """Keep only ids in ``present`` (e.g. the slides of a task table); log the counts kept.

    Args:
        split: the fold as read.
        present: ids known to the task table.
        order: if given, each split's ids are returned in this order (e.g. the table's row order,
            which is what the reference's ``isin`` mask yields and what a seeded
            :func:`subsample_train` depends on); otherwise the file's order is kept.
    """
    present_set = set(present)
    rank = {k: i for i, k in enumerate(order)} if order is not None else None
    kept = {}
    for name in SPLIT_NAMES:
        ids = [i for i in split[name] if i in present_set]
        if rank is not None:
            ids.sort(key=rank.__getitem__)
        kept[name] = tuple(ids)
    out = replace(split, **kept)
    where = split.source.name if split.source is not None else f"fold {split.fold}"
    counts = ", ".join(
        f"{name} {len(out[name])}/{len(split[name])}" for name in SPLIT_NAMES if split[name] or name != "test"
    )
    log.info("%s: kept %s (ids absent from the task table dropped)", where, counts)
    return out


def subsample_train(split: Split, frac: float, random_state: int = 1) -> Split:
    """The data-efficiency setting: a seeded sample of ``frac`` of the training ids; val/test unchanged.

    Reproduces the reference's ``df_train.sample(frac=frac, random_state=1)`` (pandas): **not
    stratified** by class, ``round(frac · n)`` ids, drawn from the ids in the order given (the
    reference samples the table rows of the training split, i.e. table order: see
    :func:`filter_split`'s ``order``).  ``frac=1`` returns the split unchanged.
    """
    if not 0 < frac <= 1:
        raise ValueError(f"subsample_train: frac must be in (0, 1], got {frac}")
    if frac == 1:
        return split
    sampled = pd.Series(split.train, dtype=object).sample(frac=frac, random_state=random_state)
    return replace(split, train=tuple(sampled.tolist()))


def write_split_file(split: Split, path: str | Path, with_test: bool | None = None) -> Path:
    """Write a fold in the reference format (atomically); ``with_test`` defaults to ``split.has_test``."""
    with_test = split.has_test if with_test is None else with_test
    names = SPLIT_NAMES if with_test else SPLIT_NAMES[:2]
    n = max(len(split[name]) for name in names)
    df = pd.DataFrame({name: list(split[name]) + [None] * (n - len(split[name])) for name in names})
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=True)
    return Path(path)


def make_splits(
    table: pd.DataFrame,
    n_folds: int,
    kind: str = "subtype",
    seed: int = 0,
    out_dir: str | Path | None = None,
    val_frac: float = 0.1,
    test_frac: float = 0.1,
    label_col: str = "label",
    id_col: str | None = None,
) -> list[Split]:
    """Generate split files in the reference format for a user's own task table.

    - ``kind="subtype"``: ``n_folds`` Monte-Carlo folds like the reference's: for every fold and every
      class independently, a random ``val_frac`` of the slides goes to val, another ``test_frac`` to
      test, the rest to train (at least one slide of each class in val and in test when the class
      has ≥ 3 slides).  Ids are ``slide_id`` (``id_col``).  Test sets overlap across folds.
    - ``kind="survival"``: true ``n_folds``-fold cross-validation over **cases** (``case_id``): the
      cases are shuffled and cut into ``n_folds`` disjoint val folds, stratified by censorship so
      each fold sees events; train = the other cases.  No test split.

    Returns the folds and, if ``out_dir`` is given, writes ``out_dir/splits_{k}.csv`` (atomic).
    """
    if kind not in ("subtype", "survival"):
        raise ValueError(f"make_splits: kind must be 'subtype' or 'survival', got {kind!r}")
    if n_folds < 1:
        raise ValueError("make_splits: n_folds must be ≥ 1")
    rng = np.random.default_rng(seed)
    folds: list[Split] = []
    if kind == "subtype":
        id_col = id_col or "slide_id"
        for col in (id_col, label_col):
            if col not in table.columns:
                raise ValueError(f"make_splits: the table has no column {col!r}")
        ids = table[id_col].astype(str).to_numpy()
        labels = table[label_col].to_numpy()
        for k in range(n_folds):
            train, val, test = [], [], []
            for c in pd.unique(labels):
                members = ids[labels == c][rng.permutation(int((labels == c).sum()))]
                n = len(members)
                n_val = int(round(val_frac * n))
                n_test = int(round(test_frac * n))
                if n >= 3:
                    n_val, n_test = max(n_val, 1 if val_frac > 0 else 0), max(n_test, 1 if test_frac > 0 else 0)
                val += members[:n_val].tolist()
                test += members[n_val:n_val + n_test].tolist()
                train += members[n_val + n_test:].tolist()
            folds.append(Split(fold=k, train=tuple(train), val=tuple(val), test=tuple(test)))
    else:
        id_col = id_col or "case_id"
        if id_col not in table.columns:
            raise ValueError(f"make_splits: the table has no column {id_col!r}")
        cases = table.drop_duplicates(id_col)
        case_ids = cases[id_col].astype(str).to_numpy()
        strata = cases["censorship"].to_numpy() if "censorship" in cases.columns else np.zeros(len(cases))
        if n_folds > len(case_ids):
            raise ValueError(f"make_splits: {n_folds} folds need at least {n_folds} cases, got {len(case_ids)}")
        assignment = np.empty(len(case_ids), dtype=np.int64)
        offset = 0
        for s in pd.unique(strata):
            idx = np.flatnonzero(strata == s)
            idx = idx[rng.permutation(len(idx))]
            assignment[idx] = (np.arange(len(idx)) + offset) % n_folds
            offset += len(idx)
        for k in range(n_folds):
            folds.append(
                Split(fold=k, train=tuple(case_ids[assignment != k]), val=tuple(case_ids[assignment == k]))
            )
    if out_dir is not None:
        out_dir = Path(out_dir)
        folds = [
            replace(f, source=write_split_file(f, out_dir / f"splits_{f.fold}.csv", with_test=kind == "subtype"))
            for f in folds
        ]
    return folds
