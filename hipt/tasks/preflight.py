"""Check a slide-level task's inputs before any work: one clear error naming what is missing and how to get it.

A run on TCGA (chapters 6, 7 and 8 with ``preset="paper"``, ``hipt reproduce table1/table2/knn``) needs
three things: a **task** (a registered name of ``hipt.tasks.tcga.TASKS`` or the path of a slide table),
its **slide table and split folder** (fetched for a registered task, except COADREAD and STAD whose
tables the reference does not publish), and a **features folder** holding one ``{slide_id}.h5`` (``hipt
extract``) or ``{slide_id}.pt`` (the reference's released ``[M, 192]`` region tokens) per slide.
Without this check each of them fails deep inside training (``TypeError: expected str ... not
NoneType``), once per run of a batch.

:func:`check_task_inputs` checks them in order of cost (the parameters, then the folders, then the
table and splits, then which slides have a feature file and whether those files hold the level the
methods read) and raises **one** :class:`MissingInputError` (a :class:`~hipt.errors.HIPTError`): a
single line that says what is missing, which parameter sets it, and how to get it. The wording follows
where the parameter is set (``style``): a chapter's parameter (``-p features_dir PATH`` for papermill)
or a ``hipt reproduce`` flag (``--param features_dir=/path/{task}/features``). Slides without a feature
file are an error unless ``missing="drop"``, which warns (:class:`RuntimeWarning`) and goes on.

On success it returns a :class:`TaskInputs` report whose ``task`` is the loaded
:class:`~hipt.tasks.TaskData`: pass it on (``run_cv(config, task=inputs.task)``) so that a ``table``
given here is the one trained on.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py

from hipt.errors import HIPTError, InputFileError
from hipt.tasks.datasets import read_bag
from hipt.tasks.tcga import TASKS, TaskData, fetch_task_files, load_task

__all__ = ["MissingInputError", "TaskInputs", "check_task_inputs", "feature_levels", "feature_files", "STYLES"]

#: where a parameter is set: a chapter / the Python API, or ``hipt reproduce``'s flags
STYLES = ("parameter", "reproduce")
_SUFFIXES = (".h5", ".pt")  # the order of hipt.tasks.datasets.feature_path: .h5 first
_LEVEL_WHAT = {"feats4k": "region tokens [M, D]", "feats256": "patch tokens [M, n, D]"}
_EXTRACT = "write them with `hipt extract`, chapter 5"
_RELEASED = "the reference's released files, `hipt released fetch --slides`"


class MissingInputError(HIPTError):
    """An input of a task run is not set, absent or incomplete.

    Attributes:
        parameter: the parameter (or flag) that sets the first problem, e.g. ``"features_dir"``.
        problems: each problem's own message (the message joins them with ``"; "``).
    """

    def __init__(self, message: str, parameter: str | None = None, problems: Sequence[str] | None = None):
        self.parameter = parameter
        self.problems = tuple(problems) if problems else (message,)
        super().__init__(message)


def _how(name: str, style: str, example: str) -> str:
    """How to set parameter ``name``: a chapter's parameter or a ``hipt reproduce`` flag."""
    if style == "reproduce":
        if name == "task":
            return f"pass --tasks {example}"
        if name == "missing":
            return "pass --missing drop"
        return f"pass --param {name}={example}"
    if name == "missing":
        return "pass missing='drop' (papermill: -p missing drop)"
    return f"set {name} (papermill: -p {name} {example})"


_EXAMPLES = {
    "parameter": {"features_dir": "/path/to/features", "table": "/path/to/table.csv", "splits_dir": "/path/to/splits"},
    "reproduce": {"features_dir": "/path/{task}/features", "table": "/path/{task}.csv",
                  "splits_dir": "/path/{task}/splits"},
}


def feature_levels(methods: Iterable[str], hipt_local: str = "frozen", tokens: str = "patch") -> tuple[str, ...]:
    """The feature arrays (``feats4k``, ``feats256``) that these methods read.

    Frozen HIPT, ``hipt_gp`` and any method with ``tokens="region"`` read the region tokens ``feats4k``;
    the other slide models (and HIPT with ``hipt_local`` ``"finetune"``/``"scratch"``) the patch tokens
    ``feats256`` (as :class:`hipt.tasks.train.FinetuneConfig` loads them). KNN levels ``vit4k``/``vit256``
    (or their method names ``vit4k_mean``, ``knn_vit256_mean``) map to ``feats4k``/``feats256``.
    """
    out = set()
    for m in methods:
        m = str(m).removeprefix("knn_")
        if m.startswith("vit4k"):
            out.add("feats4k")
        elif m.startswith("vit256"):
            out.add("feats256")
        elif (m == "hipt" and hipt_local == "frozen") or m == "hipt_gp" or tokens == "region":
            out.add("feats4k")
        else:
            out.add("feats256")
    return tuple(sorted(out, reverse=True))  # feats4k before feats256


def feature_files(features_dir: str | Path) -> dict[str, Path]:
    """``{slide_id: path}`` of the ``.h5``/``.pt`` files of a folder, listed once (``.h5`` wins, as
    :func:`hipt.tasks.datasets.feature_path`); one listing instead of a lookup per slide, which matters
    on a network drive such as Google Drive."""
    found: dict[str, Path] = {}
    with os.scandir(features_dir) as it:
        for entry in it:
            for suffix in _SUFFIXES:
                if entry.name.endswith(suffix) and entry.is_file():
                    stem = entry.name[: -len(suffix)]
                    if stem not in found or suffix == ".h5":
                        found[stem] = Path(entry.path)
    return found


@dataclass
class TaskInputs:
    """What :func:`check_task_inputs` found: the loaded task and which of its slides have features.

    Attributes:
        task: the loaded task (table and folds; pass it on to training).
        features_dir: the features folder.
        slides: the task's slide ids that some fold uses.
        absent: those of ``slides`` without a feature file (left out when ``missing="drop"``).
        levels: the feature arrays checked in one file (``feats4k``/``feats256``).
    """

    task: TaskData
    features_dir: Path
    slides: tuple[str, ...]
    absent: tuple[str, ...]
    levels: tuple[str, ...] = ()

    def summary(self) -> str:
        """One line: the task, its slides, how many have a feature file, where."""
        have = len(self.slides) - len(self.absent)
        lv = f" ({', '.join(self.levels)})" if self.levels else ""
        return (f"{self.task.name}: {have} of {len(self.slides)} slides have a feature file{lv} in "
                f"{self.features_dir}" + (f"; {len(self.absent)} left out" if self.absent else ""))


def _used_slides(task: TaskData) -> list[str]:
    """Slide ids of the table that at least one fold uses, in table order."""
    ids = {i for s in task.splits for part in ("train", "val", "test") for i in s[part]}
    key = "case_id" if task.kind == "survival" else "slide_id"
    used = task.table[task.table[key].astype(str).isin(ids)]
    return [str(s) for s in used["slide_id"]]


def _levels_in(path: Path) -> set[str]:
    """The feature arrays one file holds (without reading an HDF5 file's arrays)."""
    if path.suffix == ".h5":
        try:
            with h5py.File(path, "r") as f:
                return {k for k in ("feats4k", "feats256") if k in f}
        except OSError as e:
            raise InputFileError(path, f"cannot be read as HDF5 ({e})", "re-extract this slide") from None
    bag = read_bag(path, keys=("feats4k", "feats256"))  # a .pt file holds one tensor: [M, D] or [M, n, D]
    return set(bag)


def check_task_inputs(
    task: str | Path | None,
    features_dir: str | Path | None,
    *,
    splits_dir: str | Path | None = None,
    table: str | Path | None = None,
    kind: str | None = None,
    missing: str = "error",
    level: str | Sequence[str] | None = None,
    style: str = "parameter",
    root: str | Path | None = None,
    base_url: str | None = None,
) -> TaskInputs:
    """Check a task run's inputs and load its task; raise one :class:`MissingInputError` if one is missing.

    Args:
        task: a registered task name (``hipt.tasks.tcga.TASKS``) or the path of a slide table.
        features_dir: folder of ``{slide_id}.h5`` / ``.pt`` feature files.
        splits_dir: split folder (required for an own table; a registered task fetches its own).
        table: slide table overriding a registered task's (required for ``tcga_coadread_survival`` and
            ``tcga_stad_survival``, whose tables are not public).
        kind: ``"subtype"`` or ``"survival"``: the kind the caller trains (a registered task of the other
            kind is an error); ``None``: the task's.
        missing: ``"error"``: any used slide without a feature file is an error; ``"drop"``: warn and go on.
        level: ``"feats4k"``, ``"feats256"``, both, or None: the arrays the methods read
            (:func:`feature_levels`), checked in the first slide's file.
        style: ``"parameter"`` (messages name a chapter's parameters) or ``"reproduce"`` (``hipt
            reproduce`` flags).
        root, base_url: where a registered task's files are found (:func:`hipt.tasks.fetch_task_files`).

    Returns:
        :class:`TaskInputs`; ``.task`` is the loaded :class:`~hipt.tasks.TaskData`.

    Raises:
        MissingInputError: one line naming what is missing, the parameter that sets it and how to get it.
        hipt.errors.InputFileError: a table or split file that exists but cannot be read as one.
    """
    if style not in STYLES:
        raise ValueError(f"style must be one of {STYLES}, not {style!r}")
    if missing not in ("error", "drop"):
        raise MissingInputError(f"missing must be 'error' or 'drop', not {missing!r}", "missing")
    ex = dict(_EXAMPLES[style], task="tcga_luad_survival" if kind == "survival" else "tcga_lung_subtype")
    levels = (level,) if isinstance(level, str) else tuple(level or ())
    name = str(task) if task not in (None, "") else None
    spec = TASKS.get(name) if name else None

    # 1. the parameters themselves (no disk, no network): every problem of this kind in one line
    problems: list[tuple[str, str]] = []
    if name is None:
        problems.append(("task", f"task is not set, it names a registered task ({', '.join(_task_names(kind))}) "
                                 f"or a slide table: {_how('task', style, ex['task'])}"))
    if features_dir in (None, ""):
        problems.append(("features_dir", f"features_dir is not set: the paper preset reads one feature file per "
                                         f"slide; {_how('features_dir', style, ex['features_dir'])} ({_EXTRACT}; "
                                         f"region tokens only: {_RELEASED})"))
    if spec is not None:
        if kind is not None and spec.kind != kind:
            problems.append(("task", f"{name} is a {spec.kind} task, this run trains {kind} ("
                                     f"{', '.join(_task_names(kind))}): {_how('task', style, _task_names(kind)[0])}"))
        if spec.table_file is None and table in (None, ""):
            how = (_how("table", style, ex["table"]) if style == "parameter" else
                   f"run it on its own with --tasks {name} --param table=/path/{name}.csv, or leave it out of --tasks")
            problems.append(("table", f"{name}: the reference does not publish this task's slide table (a CSV with "
                                      f"case_id, slide_id, survival_months, censorship, e.g. from the TCGA clinical "
                                      f"data): {how}"))
    elif name is not None:
        if not Path(name).is_file():
            problems.append(("task", f"task {name!r}: neither a registered task ({', '.join(_task_names(kind))}) "
                                     "nor a slide table file"))
        elif splits_dir in (None, ""):
            problems.append(("splits_dir", f"{name}: an own slide table needs its split folder: "
                                           f"{_how('splits_dir', style, ex['splits_dir'])} (write one with "
                                           "hipt.tasks.make_splits)"))
    if problems:
        raise MissingInputError("; ".join(msg for _, msg in problems), problems[0][0], [msg for _, msg in problems])

    # 2. the folders
    features_dir = Path(features_dir).expanduser()
    if not features_dir.is_dir():
        raise MissingInputError(f"{features_dir}: features folder not found: "
                                f"{_how('features_dir', style, ex['features_dir'])} ({_EXTRACT})", "features_dir")
    files = feature_files(features_dir)
    if not files:
        raise MissingInputError(f"{features_dir}: no .h5 or .pt feature file in this folder: "
                                f"{_how('features_dir', style, ex['features_dir'])} ({_EXTRACT})", "features_dir")
    for param, value, what in (("table", table, "slide table"), ("splits_dir", splits_dir, "split folder")):
        if value not in (None, "") and not (Path(value).is_dir() if param == "splits_dir" else Path(value).is_file()):
            raise MissingInputError(f"{value}: {what} not found: {_how(param, style, ex[param])}", param)

    # 3. the table and the folds (a registered task's files are fetched here, once, then cached)
    if spec is not None and (table in (None, "") or splits_dir in (None, "")):
        try:
            fetched = fetch_task_files(name, root=root, base_url=base_url)
        except HIPTError as e:
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise MissingInputError(
                f"{name}: its slide table and split files cannot be had ({msg}): check the network, or "
                f"{_how('splits_dir', style, ex['splits_dir'])} and {_how('table', style, ex['table'])} "
                "of a local copy", "splits_dir") from None
        table = table if table not in (None, "") else fetched.table
        splits_dir = splits_dir if splits_dir not in (None, "") else fetched.splits_dir
    data = load_task(name, table=table or None, splits_dir=splits_dir, kind=kind)

    # 4. which used slides have a feature file
    slides = _used_slides(data)
    absent = [s for s in slides if s not in files]
    if slides and len(absent) == len(slides):
        raise MissingInputError(
            f"{features_dir}: none of the {len(slides)} slides of {data.name} has a feature file here (its slide ids "
            f"look like {slides[0]!r}, the files' like {min(files)!r}): "
            f"{_how('features_dir', style, ex['features_dir'])}, the folder of this task's feature files", "features_dir")
    if absent:
        what = (f"{features_dir}: {len(absent)} of {len(slides)} slides of {data.name} have no feature file "
                f"(e.g. {', '.join(absent[:3])})")
        if missing == "error":
            raise MissingInputError(f"{what}: {_EXTRACT.replace('write them', 'extract them')}, or "
                                    f"{_how('missing', style, 'drop')} to leave them out", "missing")
        warnings.warn(f"{what}; they are left out (missing='drop')", RuntimeWarning, stacklevel=2)

    # 5. the arrays the methods read, in the first file
    if levels and len(absent) < len(slides):
        first = files[next(s for s in slides if s in files)]
        have = _levels_in(first)
        lacking = [lv for lv in levels if lv not in have]
        if lacking:
            found = ", ".join(sorted(have)) or "no feature array"
            raise MissingInputError(
                f"{first}: holds {found}, not {', '.join(f'{lv} ({_LEVEL_WHAT[lv]})' for lv in lacking)} that the "
                f"chosen methods read: re-extract with `hipt extract` (both levels), or choose methods that read "
                f"{found}", "features_dir")
    return TaskInputs(data, features_dir, tuple(slides), tuple(absent), levels)


def _task_names(kind: str | None) -> list[str]:
    return [n for n, s in TASKS.items() if kind is None or s.kind == kind]
