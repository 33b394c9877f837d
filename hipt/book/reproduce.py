"""Rerun the book's chapters with papermill over a grid of settings and assemble the results tables.

``hipt reproduce`` executes a chapter notebook once per point of a grid (tasks × training fractions ×
methods × folds), keeps each executed notebook with a provenance record, carries on past a failing run
(reported at the end, exit code 1), skips the runs a previous invocation finished (resume), and
assembles the paper's tables (ours beside the paper's numbers) with :mod:`hipt.tasks.tables`.

Named targets::

    hipt reproduce table1 --param features_dir=/data/tcga/features/{task}   # chapter 6, subtyping AUC
    hipt reproduce table2 --param features_dir=/data/tcga/features/{task}   # chapter 7, survival c-index
    hipt reproduce knn    --param features_dir=/data/tcga/features/{task}   # chapter 8, KNN AUC
    hipt reproduce --quick                                                  # phantom version, CPU

or a grid of your own: ``hipt reproduce --chapter 06_finetuning --tasks tcga_lung_subtype
--methods hipt abmil --fractions 1.0 --folds 0 1 --preset paper``.

Contract with the chapters (papermill parameters)
-------------------------------------------------
A chapter that produces results (``06_finetuning``, ``07_survival``, ``08_knn``) accepts these
parameters; papermill injects them in a cell after the chapter's cell tagged ``parameters``:

``preset`` (str)
    ``"cpu"`` (the default: phantom cohorts, tiny models, ≤ 3 min on 2 CPU cores) or ``"paper"``
    (TCGA, full size, a GPU).
``results_dir`` (str or None)
    Folder the chapter writes its **per-fold result records** into, in the format of
    :mod:`hipt.tasks.tables` (one record per task, method, training fraction, fold and metric,
    written atomically). ``None`` (the chapter's default when run by hand) means the chapter's
    own choice. Each run gets its own folder, ``<out>/runs/<run id>/results/``.
``task`` (str), ``methods`` (list of str), ``fractions`` (list of float), ``folds`` (list of int)
    The grid point(s) this run covers. Lists, so that one run may cover several points (the quick
    run covers all of a chapter's defaults in one execution; a KNN run covers all folds at once).
    Only the axes of the grid are injected: ``--quick`` injects none of them, so the chapter runs
    its CPU defaults.
``features_dir`` (str), ``splits_dir`` (str), ``table`` (str), ``missing`` ("error" or "drop")
    What a ``"paper"`` run reads: the folder of ``{slide_id}.h5``/``.pt`` feature files, the split
    folder of an own table, a slide table (needed for COADREAD and STAD, whose tables are not public)
    and what to do with slides that have no feature file (``--missing drop``: leave them out). Given
    with ``--param NAME=VALUE`` (``--missing`` for the last).
any ``--param NAME=VALUE``
    Passed as is (VALUE parsed as JSON when it parses, else kept as a string); ``{task}`` in a
    string value is replaced by the run's task (e.g. one features folder per task).

Inputs are checked first
------------------------
Before any notebook is executed, every planned ``"paper"`` run of chapters 6, 7 and 8 that has not
finished before is checked with :func:`hipt.tasks.preflight.check_task_inputs` (its task, table and
split files, features folder, the slides without a feature file, the arrays its methods read). If one
cannot start, nothing runs: identical problems are grouped into one message (exit code 1), e.g.
``hipt reproduce table1`` without ``--param features_dir=/path/{task}/features`` stops in seconds with
one line instead of a traceback per run. ``--dry-run`` lists every run with what it needs and whether
it is there.

Output layout (``--out``, default ``outputs/reproduce``)::

    <out>/notebooks/<chapter>.ipynb          the chapter converted from MyST (jupytext)
    <out>/runs/<run id>/notebook.ipynb       the executed notebook
    <out>/runs/<run id>/provenance.json      see :func:`provenance`; status "ok" | "failed"
    <out>/runs/<run id>/results/             the chapter's per-fold records (results_dir)
    <out>/tables/<name>.md, <name>.csv       the assembled tables
    <out>/summary.json                       every run of this invocation with its status

A run is *finished* when its ``provenance.json`` says ``"status": "ok"``; those are skipped on the next
invocation (``--force`` reruns them). The run id names the chapter and grid point and ends in a hash of
all its parameters, so changing a parameter makes a new run rather than reusing an old one. In Colab,
put ``--out`` on Google Drive (e.g. ``/content/drive/MyDrive/hipt-reproduce``): a new runtime then
resumes where the last one stopped (a runtime's own disk is lost with it).

Exit codes: 0 every run ok (tables written); 1 at least one run failed (the others completed; tables
assembled from the finished runs), or a run's inputs are missing (nothing was run); 2 usage error (e.g.
an unknown chapter or target).
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from hipt.book.evidence import EFFECTS_NAME, sweep_rows
from hipt.errors import HIPTError, InputFileError
from hipt.io import atomic_write_text
from hipt.paths import project_root
from hipt.provenance import hardware, provenance, read_provenance, safe_name, write_benchmark_result
from hipt.tasks import tables
from hipt.tasks.preflight import check_task_inputs, feature_levels
from hipt.tasks.tables import TABLE_METHODS

SUBTYPING_TASKS = ("tcga_brca_subtype", "tcga_kidney_subtype", "tcga_lung_subtype")
SURVIVAL_TASKS = (
    "tcga_brca_survival",
    "tcga_coadread_survival",
    "tcga_kirc_survival",
    "tcga_kirp_survival",
    "tcga_luad_survival",
    "tcga_stad_survival",
)
#: the slide-level methods of Table 1 / Table 2 (``hipt finetune --method``)
METHODS = TABLE_METHODS
#: the KNN embeddings of chapter 8 (mean ViT-4K region tokens, mean ViT-256 patch tokens)
KNN_METHODS = ("vit4k_mean", "vit256_mean")
GRID_AXES = ("task", "methods", "fractions", "folds")
OK, FAILED = "ok", "failed"


@dataclass(frozen=True)
class Target:
    """A named grid: which chapter, which values per axis, and which axes make separate runs."""

    chapter: str
    tasks: tuple[str, ...]
    methods: tuple[str, ...]
    fractions: tuple[float, ...]
    folds: tuple[int, ...]
    split_by: tuple[str, ...]  # axes with one run per value; the others go into each run as lists
    description: str = ""


TARGETS: dict[str, Target] = {
    "table1": Target(
        "06_finetuning", SUBTYPING_TASKS, METHODS, (0.25, 1.0), tuple(range(10)),
        ("task", "methods", "fractions", "folds"),
        "Table 1: slide-level subtyping AUC (10 folds, 25% and 100% of the training split)",
    ),
    "table2": Target(
        "07_survival", SURVIVAL_TASKS, METHODS, (1.0,), tuple(range(5)),
        ("task", "methods", "folds"),
        "Table 2: survival c-index (5 folds)",
    ),
    "knn": Target(
        "08_knn", SUBTYPING_TASKS, KNN_METHODS, (0.25, 1.0), tuple(range(10)),
        ("task",),
        "KNN AUC of mean slide embeddings (ViT-4K vs ViT-256), 25% and 100%",
    ),
}
#: the chapters that ``--quick`` runs with their CPU defaults (phantom cohorts)
QUICK_CHAPTERS = ("06_finetuning", "07_survival", "08_knn")

#: ``hipt reproduce seeds``: cohort and split seeds that no preset or cohort design was tuned on (the
#: book's own run uses cohort seed 0 and split seed 0); every combination is one run per variant
SWEEP_COHORT_SEEDS = (101, 102, 103, 104, 105)
SWEEP_SPLIT_SEEDS = (201, 202)
#: the variants each seed combination runs, per chapter (extra papermill parameters): chapter 6 once as
#: the book runs it (without its side experiments) and once with per-slide stain jitter on the context cohort
SWEEP_VARIANTS: dict[str, tuple[dict[str, Any], ...]] = {
    "06_finetuning": ({"extras": False},
                      {"extras": False, "cohorts": ["context"], "context_stain_jitter": 0.06}),
    "07_survival": ({},),
}
SWEEP_RECORD = "seeds_sweep"


@dataclass
class Run:
    """One papermill execution: a chapter (``.md`` or ``.ipynb``) and the parameters injected."""

    chapter: Path
    parameters: dict[str, Any] = field(default_factory=dict)

    @property
    def run_id(self) -> str:
        """``<chapter>-<grid point>-<hash of all parameters>`` (filesystem-safe, stable)."""
        params = {k: v for k, v in self.parameters.items() if k != "results_dir"}
        digest = hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:8]
        parts = [self.chapter.stem]
        for name, tag in (("cohort_seed", "c"), ("split_seed", "s")):
            if name in params:
                parts.append(f"{tag}{params[name]}")
        for axis in GRID_AXES:
            if axis in params:
                value = params[axis]
                values = value if isinstance(value, (list, tuple)) else [value]
                prefix = {"fractions": "frac", "folds": "fold"}.get(axis, "")
                parts.append(prefix + "+".join(str(v) for v in values))
        parts.append(digest)
        return "-".join(safe_name(p) for p in parts)


def settings_key(*settings: Any) -> str:
    """A short stable hash of JSON-able settings: names a results folder after everything that changes
    its results, so that resuming never mixes runs of different settings."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:10]


# --------------------------------------------------------------------------------------------------
# planning
# --------------------------------------------------------------------------------------------------
def book_dir() -> Path:
    """The ``book/`` folder of the checkout (chapters are not installed with the package)."""
    root = project_root()
    if root is None or not (root / "book").is_dir():
        raise HIPTError(
            "book/: the chapters are not found (hipt is installed without its checkout): "
            "pass chapter files with --chapter PATH or run from a clone of the repository"
        )
    return root / "book"


def resolve_chapter(chapter: str | Path) -> Path:
    """A chapter name (``06_finetuning``) or a path to a ``.md``/``.ipynb`` notebook → its path."""
    p = Path(chapter)
    if p.suffix in {".md", ".ipynb"}:
        if not p.is_file():
            raise InputFileError(p, "chapter notebook not found")
        return p.resolve()
    candidates = [book_dir() / f"{chapter}.md", book_dir() / "notebooks" / f"{chapter}.ipynb"]
    for c in candidates:
        if c.is_file():
            return c
    raise InputFileError(candidates[0], "chapter not found", "give a name like 06_finetuning or a path")


def _format(value: Any, task: str | None) -> Any:
    if isinstance(value, str) and task is not None and "{task}" in value:
        return value.replace("{task}", task)
    return value


def grid_runs(
    chapter: str | Path,
    *,
    tasks: Sequence[str] | None = None,
    methods: Sequence[str] | None = None,
    fractions: Sequence[float] | None = None,
    folds: Sequence[int] | None = None,
    split_by: Iterable[str] = GRID_AXES,
    params: dict[str, Any] | None = None,
) -> list[Run]:
    """The runs of a grid: one per combination of the ``split_by`` axes; other axes go in as lists.

    An axis left ``None`` is not injected (the chapter keeps its default). ``params`` are added to
    every run, with ``{task}`` in string values replaced by the run's task.
    """
    path = resolve_chapter(chapter)
    split_by = set(split_by)
    unknown = split_by - set(GRID_AXES)
    if unknown:
        raise HIPTError(f"split_by: unknown axes {sorted(unknown)} (choose from {GRID_AXES})")
    axes: dict[str, list] = {}
    if tasks is not None:
        axes["task"] = list(tasks)
    if methods is not None:
        axes["methods"] = list(methods)
    if fractions is not None:
        axes["fractions"] = [float(f) for f in fractions]
    if folds is not None:
        axes["folds"] = [int(k) for k in folds]
    # "task" is a single value per run: a list of tasks is always split
    split = [a for a in GRID_AXES if a in axes and (a in split_by or a == "task")]
    runs = []
    for combo in itertools.product(*(axes[a] for a in split)):
        point = dict(zip(split, combo))
        p: dict[str, Any] = {}
        for axis, values in axes.items():
            if axis in point:
                p[axis] = point[axis] if axis == "task" else [point[axis]]
            else:
                p[axis] = values
        task = p.get("task")
        for k, v in (params or {}).items():
            p[k] = _format(v, task)
        runs.append(Run(path, p))
    return runs


def target_runs(name: str, *, quick: bool = False, preset: str = "paper", params: dict[str, Any] | None = None,
                tasks=None, methods=None, fractions=None, folds=None, split_by=None) -> list[Run]:
    """The runs of a named target (``table1``, ``table2``, ``knn``); ``quick``: its phantom CPU run.

    ``tasks``, ``methods``, ``fractions``, ``folds`` and ``split_by`` override the target's.
    """
    if name not in TARGETS:
        raise HIPTError(f"{name}: unknown target (choose from {', '.join(TARGETS)})")
    t = TARGETS[name]
    if quick:
        return [Run(resolve_chapter(t.chapter), {"preset": "cpu", **(params or {})})]
    return grid_runs(
        t.chapter,
        tasks=tasks or t.tasks, methods=methods or t.methods,
        fractions=fractions or t.fractions, folds=folds if folds is not None else t.folds,
        split_by=split_by or t.split_by, params={"preset": preset, **(params or {})},
    )


def quick_runs(params: dict[str, Any] | None = None) -> list[Run]:
    """The phantom version: chapters 6, 7 and 8 once each with their CPU defaults."""
    return [Run(resolve_chapter(c), {"preset": "cpu", **(params or {})}) for c in QUICK_CHAPTERS]


def seed_sweep_runs(chapters: Sequence[str] | None = None, cohort_seeds: Sequence[int] = SWEEP_COHORT_SEEDS,
                    split_seeds: Sequence[int] = SWEEP_SPLIT_SEEDS, params: dict[str, Any] | None = None) -> list[Run]:
    """The seeds sweep: each chapter of :data:`SWEEP_VARIANTS` (or ``chapters``) with its CPU preset, once per
    cohort seed × split seed × variant.  Each run writes its measured effects (``effects.json``, see
    :mod:`hipt.book.evidence`) into its results folder; :func:`sweep_record_rows` gathers them."""
    names = list(chapters or SWEEP_VARIANTS)
    unknown = [c for c in names if c not in SWEEP_VARIANTS]
    if unknown:
        raise HIPTError(f"seeds sweep: no claims are swept for {unknown}; choose from {list(SWEEP_VARIANTS)}")
    runs = []
    for chapter in names:
        path = resolve_chapter(chapter)
        for c, sp in itertools.product(cohort_seeds, split_seeds):
            for variant in SWEEP_VARIANTS[chapter]:
                runs.append(Run(path, {"preset": "cpu", "cohort_seed": int(c), "split_seed": int(sp),
                                       **variant, **(params or {})}))
    return runs


def sweep_record_rows(out_dir: str | Path) -> list[dict[str, Any]]:
    """One row per finished run under ``out_dir`` that wrote ``effects.json``: chapter, seeds, settings, effects."""
    return sweep_rows([d / EFFECTS_NAME for d in result_dirs(out_dir) if (d / EFFECTS_NAME).is_file()])


def record_sweep(out_dir: str | Path, command: str, folder: str | Path | None = None) -> Path:
    """Write the seeds sweep under ``out_dir`` as the benchmark record ``seeds_sweep`` (command, commit, machine)."""
    rows = sweep_record_rows(out_dir)
    if not rows:
        raise HIPTError(f"{out_dir}: no finished sweep run wrote effects.json; nothing to record")
    chapters = sorted({r["chapter"] for r in rows})
    return write_benchmark_result(
        SWEEP_RECORD, rows, title="Seeds sweep: the book's claims over cohort and split seeds", command=command,
        notes=f"{len(rows)} runs of {', '.join(chapters)} with preset cpu; cohort seeds and split seeds that no "
              "preset was tuned on; one row per run (seeds, settings, measured effects); the claims and their "
              "conditions are in hipt.book.evidence", folder=folder)


# --------------------------------------------------------------------------------------------------
# inputs: checked before any notebook runs
# --------------------------------------------------------------------------------------------------
#: the chapters whose ``"paper"`` preset reads TCGA features, and the kind of task each trains
FEATURE_CHAPTERS = {"06_finetuning": "subtype", "07_survival": "survival", "08_knn": "subtype"}


def run_needs(run: Run) -> dict[str, Any] | None:
    """What a run reads before it can start, as :func:`hipt.tasks.preflight.check_task_inputs` arguments.

    None for a run that reads no features: a chapter other than 6, 7 and 8, or their ``"cpu"`` and ``"gpu"``
    presets (phantom cohorts; chapter 8 also runs its TCGA part when given ``features_dir``).
    """
    stem, p = run.chapter.stem, run.parameters
    kind = FEATURE_CHAPTERS.get(stem)
    paper = p.get("preset", "cpu") == "paper" or (stem == "08_knn" and p.get("features_dir") is not None)
    if kind is None or not paper:
        return None
    methods = p.get("methods") or (KNN_METHODS if stem == "08_knn" else METHODS)
    return {
        "task": p.get("task"), "features_dir": p.get("features_dir"), "splits_dir": p.get("splits_dir"),
        "table": p.get("table"), "kind": kind, "missing": p.get("missing", "error"),
        "level": feature_levels(methods, hipt_local=p.get("hipt_local", "frozen")),
    }


def preflight_runs(runs: Sequence[Run]) -> list[tuple[Run, dict[str, Any] | None, Any]]:
    """Check every run's inputs (:func:`run_needs`); ``(run, needs, result)`` in order.

    ``result`` is None (nothing to check), a :class:`hipt.tasks.preflight.TaskInputs` or the
    :class:`~hipt.errors.HIPTError` that says what is missing. Identical inputs are checked once.
    """
    checked: dict[str, Any] = {}
    out = []
    for r in runs:
        needs = run_needs(r)
        if needs is None:
            out.append((r, None, None))
            continue
        key = json.dumps(needs, sort_keys=True, default=str)
        if key not in checked:
            try:
                checked[key] = check_task_inputs(needs["task"], needs["features_dir"], splits_dir=needs["splits_dir"],
                                                 table=needs["table"], kind=needs["kind"], missing=needs["missing"],
                                                 level=needs["level"], style="reproduce")
            except HIPTError as e:
                checked[key] = e
        out.append((r, needs, checked[key]))
    return out


def check_runs(runs: Sequence[Run]) -> None:
    """Raise one :class:`~hipt.errors.HIPTError` if any run's inputs are missing (identical problems grouped).

    One problem shared by every failing run gives a single line; several give one line each, with the
    number of runs and their tasks.
    """
    failed = [(r, res) for r, _, res in preflight_runs(runs) if isinstance(res, HIPTError)]
    if not failed:
        return
    groups: dict[str, list[Run]] = {}
    for r, e in failed:
        for problem in getattr(e, "problems", None) or (str(e),):
            groups.setdefault(problem, []).append(r)
    head = f"hipt reproduce: {len(failed)} of {len(runs)} planned runs cannot start, nothing was run"
    if len(groups) == 1:
        raise HIPTError(f"{head}: {next(iter(groups))}")

    def who(rs: list[Run]) -> str:
        tasks = list(dict.fromkeys(str(r.parameters.get("task")) for r in rs))
        return (f"{len(rs)} run{'s' if len(rs) > 1 else ''}: {', '.join(tasks[:4])}"
                + (", ..." if len(tasks) > 4 else ""))

    raise HIPTError(head + ":\n" + "\n".join(f"  - {msg} ({who(rs)})" for msg, rs in groups.items()))


def is_finished(run_dir: Path) -> bool:
    """A run is finished when its provenance record says ``ok``."""
    record = read_provenance(run_dir)
    return record is not None and record.get("status") == OK


# --------------------------------------------------------------------------------------------------
# execution
# --------------------------------------------------------------------------------------------------
def to_ipynb(chapter: Path, out_dir: Path) -> Path:
    """The notebook papermill executes: a ``.ipynb`` as is, a MyST ``.md`` converted with jupytext."""
    if chapter.suffix == ".ipynb":
        return chapter
    import jupytext  # the book extra (optional): imported only when a chapter is converted

    dest = out_dir / "notebooks" / f"{chapter.stem}.ipynb"
    nb = jupytext.read(chapter, fmt="md:myst")
    atomic_write_text(dest, jupytext.writes(nb, fmt="ipynb"))
    return dest


@dataclass
class Outcome:
    """What happened to one run in this invocation."""

    run: Run
    status: str  # "ok", "failed" or "skipped" (finished before)
    run_dir: Path
    error: str | None = None
    wall_time_s: float | None = None


def execute_run(run: Run, out_dir: Path, *, kernel: str | None = None, timeout: float | None = None,
                machine: dict | None = None, log_output: bool = False) -> Outcome:
    """Execute one run with papermill; always writes its provenance record, never raises on failure."""
    import papermill as pm  # the book extra (optional): imported only when a run executes

    run_dir = out_dir / "runs" / run.run_id
    results = run_dir / "results"
    results.mkdir(parents=True, exist_ok=True)
    parameters = dict(run.parameters)
    parameters["results_dir"] = str(results.resolve())
    executed = run_dir / "notebook.ipynb"
    started = time.time()
    error = None
    try:
        source = to_ipynb(run.chapter, out_dir)
        pm.execute_notebook(
            str(source), str(executed), parameters=parameters, kernel_name=kernel,
            cwd=str(run.chapter.parent), progress_bar=False, log_output=log_output,
            execution_timeout=timeout, report_mode=False,
        )
        status = OK
    except Exception as e:  # noqa: BLE001 (a failing run is recorded; the others go on)
        status = FAILED
        error = _one_line(e)
    finished = time.time()
    # the record keeps the parameters with results_dir, which is not part of the run id
    record = provenance(run.run_id, run.chapter, parameters, status=status, started=started, finished=finished,
                        notebook=executed, error=error, machine=machine)
    atomic_write_text(run_dir / "provenance.json", json.dumps(record, indent=2, default=str) + "\n")
    return Outcome(run, status, run_dir, error, record["wall_time_s"])


def _one_line(e: BaseException) -> str:
    ename = getattr(e, "ename", None)
    evalue = getattr(e, "evalue", None)
    if ename:  # papermill's PapermillExecutionError: the chapter's own exception
        cell = getattr(e, "exec_count", None)
        return f"{ename}: {evalue}" + (f" (cell {cell})" if cell is not None else "")
    text = f"{type(e).__name__}: {e}"
    return text.strip().splitlines()[0] if text.strip() else type(e).__name__


def reproduce(runs: Sequence[Run], out_dir: str | Path, *, force: bool = False, kernel: str | None = None,
              timeout: float | None = None, assemble: bool = True, echo=print,
              preflight: bool = True) -> list[Outcome]:
    """Execute ``runs`` (skipping finished ones unless ``force``), then assemble the tables.

    ``preflight``: first check the inputs of every run still to do (:func:`check_runs`); if any is
    missing, raise one :class:`~hipt.errors.HIPTError` and execute nothing.
    Carries on past failing runs; the caller decides the exit code (see :func:`exit_code`).
    """
    out = Path(out_dir)
    ids = [r.run_id for r in runs]
    if len(set(ids)) != len(ids):
        raise HIPTError("runs: two runs have the same parameters (duplicate run ids)")
    if preflight:
        check_runs([r for r in runs if force or not is_finished(out / "runs" / r.run_id)])
    out.mkdir(parents=True, exist_ok=True)
    machine = hardware()
    outcomes: list[Outcome] = []
    for i, run in enumerate(runs, 1):
        run_dir = out / "runs" / run.run_id
        if not force and is_finished(run_dir):
            echo(f"[{i}/{len(runs)}] skip   {run.run_id} (finished before)")
            outcomes.append(Outcome(run, "skipped", run_dir))
            continue
        echo(f"[{i}/{len(runs)}] run    {run.run_id}")
        o = execute_run(run, out, kernel=kernel, timeout=timeout, machine=machine)
        echo(f"[{i}/{len(runs)}] {o.status:<6} {run.run_id} ({o.wall_time_s:.0f} s)"
             + (f": {o.error}" if o.error else ""))
        outcomes.append(o)
    summary = [
        {"run_id": o.run.run_id, "status": o.status, "error": o.error, "wall_time_s": o.wall_time_s,
         "run_dir": str(o.run_dir)}
        for o in outcomes
    ]
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    if assemble:
        written = assemble_tables(out, echo=echo)
        for p in written:
            echo(f"table  {p}")
    failed = [o for o in outcomes if o.status == FAILED]
    echo(f"{sum(o.status == OK for o in outcomes)} ok, {len(failed)} failed, "
         f"{sum(o.status == 'skipped' for o in outcomes)} skipped (finished before)")
    for o in failed:
        echo(f"FAILED {o.run.run_id}: {o.error}  (notebook: {o.run_dir / 'notebook.ipynb'})")
    return outcomes


def exit_code(outcomes: Sequence[Outcome]) -> int:
    """0 when no run failed, else 1."""
    return 1 if any(o.status == FAILED for o in outcomes) else 0


# --------------------------------------------------------------------------------------------------
# tables
# --------------------------------------------------------------------------------------------------
def result_dirs(out_dir: str | Path, finished_only: bool = True) -> list[Path]:
    """The ``results/`` folders of the runs under ``out_dir`` (by default only of finished runs)."""
    runs = sorted((Path(out_dir) / "runs").glob("*/"))
    return [r / "results" for r in runs if (r / "results").is_dir() and (not finished_only or is_finished(r))]


def assemble_tables(out_dir: str | Path, echo=print) -> list[Path]:
    """Assemble the tables from every finished run's records into ``<out>/tables/`` (Markdown + CSV).

    Uses :mod:`hipt.tasks.tables`; returns the files written (none when there are no records).
    """
    dirs = [d for d in result_dirs(out_dir) if any(d.iterdir())]
    if not dirs:
        echo("no result records yet: no tables assembled")
        return []
    return list(tables.write_tables(dirs, Path(out_dir) / "tables"))


def load_tables(out_dir: str | Path) -> dict[str, "Any"]:
    """The assembled tables under ``<out>/tables/`` as ``{name: DataFrame}`` (empty if none)."""
    folder = Path(out_dir) / "tables"
    return {p.stem: pd.read_csv(p) for p in sorted(folder.glob("*.csv"))} if folder.is_dir() else {}


# --------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------
def _parse_param(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME=VALUE")
    name, value = text.split("=", 1)
    try:
        return name.strip(), json.loads(value)
    except ValueError:
        return name.strip(), value


def default_out_dir() -> Path:
    """``outputs/reproduce`` in the checkout (git-ignored), else in the current folder."""
    return (project_root() or Path.cwd()) / "outputs" / "reproduce"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``hipt reproduce``."""
    parser.epilog = (
        "exit codes: 0 = every run ok (tables written); 1 = at least one run failed (the others completed, "
        "listed at the end; tables assembled from the finished runs) or an input error; 2 = usage error. "
        "A rerun skips the runs whose provenance.json says ok. Chapters receive preset, results_dir, task, "
        "methods, fractions, folds and every --param as papermill parameters (see the module docstring)."
    )
    targets = "; ".join(f"{k}: {t.description}" for k, t in TARGETS.items()).replace("%", "%%")
    parser.add_argument("target", nargs="?", choices=[*TARGETS, "all", "seeds"],
                        help=f"a named grid: {targets}; all: the three; seeds: the seeds sweep of the book's claims "
                             "(chapters 6 and 7 on the CPU over cohort seeds x split seeds; about an hour on 2 "
                             "cores; --record writes benchmarks/results/seeds_sweep.json)")
    parser.add_argument("--cohort-seeds", nargs="+", type=int, default=None,
                        help=f"seeds sweep: cohort seeds (default {' '.join(map(str, SWEEP_COHORT_SEEDS))})")
    parser.add_argument("--split-seeds", nargs="+", type=int, default=None,
                        help=f"seeds sweep: split seeds (default {' '.join(map(str, SWEEP_SPLIT_SEEDS))})")
    parser.add_argument("--sweep-chapters", nargs="+", default=None,
                        help=f"seeds sweep: chapters (default {' '.join(SWEEP_VARIANTS)})")
    parser.add_argument("--record", action="store_true",
                        help="seeds sweep: after the runs, write every finished run's effects under --out to "
                             "benchmarks/results/seeds_sweep.json (with this command, the commit and the machine)")
    parser.add_argument("--quick", action="store_true",
                        help="the phantom version on a CPU: chapters 6, 7 and 8 once each with their CPU "
                             "defaults (a few minutes each once data/cache holds the models and features "
                             "they build on first use)")
    parser.add_argument("--chapter", help="run this chapter (name like 06_finetuning, or a .md/.ipynb path) "
                                          "over the grid given by --tasks/--methods/--fractions/--folds")
    parser.add_argument("--tasks", nargs="+", help="tasks (override the target's)")
    parser.add_argument("--methods", nargs="+", help="methods (override the target's)")
    parser.add_argument("--fractions", nargs="+", type=float, help="training fractions, e.g. 0.25 1.0")
    parser.add_argument("--folds", nargs="+", type=int, help="fold indices")
    parser.add_argument("--split-by", default=None,
                        help="comma-separated axes that get one run per value (task,methods,fractions,folds); "
                             "default: the target's, or all axes for --chapter")
    parser.add_argument("--preset", default="paper", choices=["cpu", "gpu", "paper"],
                        help="preset injected into grid runs: paper (your TCGA features), gpu (the phantom experiment "
                             "at HIPT's geometry on a CUDA GPU) or cpu")
    parser.add_argument("--param", "-p", action="append", type=_parse_param, default=[], metavar="NAME=VALUE",
                        help="extra papermill parameter (JSON value or string; {task} is replaced); repeatable")
    parser.add_argument("--missing", choices=["error", "drop"], default=None,
                        help="slides without a feature file: error (the chapters' default) or drop (leave them out, "
                             "with a warning); passed to chapters 6, 7 and 8 as the parameter missing")
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (default: outputs/reproduce). In Colab put it on Google Drive (e.g. "
                             "/content/drive/MyDrive/hipt-reproduce): a resumed session then skips the runs that "
                             "finished; a runtime's own disk is lost with it")
    parser.add_argument("--force", action="store_true", help="rerun runs that finished before")
    parser.add_argument("--kernel", default=None, help="Jupyter kernel (default: the notebook's, python3)")
    parser.add_argument("--timeout", type=float, default=None, help="per-cell timeout in seconds")
    parser.add_argument("--dry-run", action="store_true",
                        help="list the runs, what each needs (task, table and splits, features folder) and whether "
                             "it is there, then exit")
    parser.add_argument("--tables-only", action="store_true", help="only assemble the tables from finished runs")


def _describe_needs(needs: dict[str, Any]) -> str:
    parts = [f"task {needs['task']}"]
    for key in ("table", "splits_dir"):
        if needs.get(key):
            parts.append(f"{key} {needs[key]}")
    parts.append(f"features_dir {needs['features_dir']} [{', '.join(needs['level'])}]")
    if needs.get("missing") == "drop":
        parts.append("missing drop")
    return ", ".join(parts)


def plan_from_args(args: argparse.Namespace) -> list[Run]:
    """The runs an ``hipt reproduce`` command line asks for."""
    params = dict(args.param)
    if getattr(args, "missing", None):
        params["missing"] = args.missing
    if args.chapter:
        split = args.split_by.split(",") if args.split_by else GRID_AXES
        return grid_runs(args.chapter, tasks=args.tasks, methods=args.methods, fractions=args.fractions,
                         folds=args.folds, split_by=split, params={"preset": args.preset, **params})
    if args.target is None and not args.quick:
        raise HIPTError("hipt reproduce: name a target (table1, table2, knn, all, seeds), --quick, or --chapter")
    if args.target == "seeds":
        return seed_sweep_runs(getattr(args, "sweep_chapters", None),
                               cohort_seeds=getattr(args, "cohort_seeds", None) or SWEEP_COHORT_SEEDS,
                               split_seeds=getattr(args, "split_seeds", None) or SWEEP_SPLIT_SEEDS, params=params)
    if args.quick and args.target in (None, "all"):
        return quick_runs(params)
    names = list(TARGETS) if args.target == "all" else [args.target]
    split = args.split_by.split(",") if args.split_by else None
    runs = []
    for name in names:
        runs += target_runs(name, quick=args.quick, preset=args.preset, params=params, tasks=args.tasks,
                            methods=args.methods, fractions=args.fractions, folds=args.folds, split_by=split)
    return runs


def run(args: argparse.Namespace) -> int:
    """``hipt reproduce``: returns 0 if every run is ok, 1 if any failed."""
    out = args.out or default_out_dir()
    if args.tables_only:
        for p in assemble_tables(out):
            print(f"table  {p}")
        return 0
    runs = plan_from_args(args)
    if args.dry_run:
        blocked = 0
        for r, needs, result in preflight_runs(runs):
            done = " (finished before: skipped)" if is_finished(out / "runs" / r.run_id) else ""
            print(f"{r.run_id}{done}  {json.dumps(r.parameters, default=str)}")
            if needs is not None:
                blocked += isinstance(result, HIPTError)
                print(f"    needs {_describe_needs(needs)}: "
                      + (f"MISSING: {result}" if isinstance(result, HIPTError) else f"ok, {result.summary()}"))
        print(f"{len(runs)} runs" + (f", {blocked} of them cannot start (MISSING above)" if blocked else ""))
        return 0
    # the seeds sweep repeats the same tasks, methods and folds under other seeds: its records are not one
    # table (they would collide); what it gathers is the effects record (--record)
    outcomes = reproduce(runs, out, force=args.force, kernel=args.kernel, timeout=args.timeout,
                         assemble=args.target != "seeds")
    if getattr(args, "record", False):
        command = " ".join(["hipt", "reproduce", *sys.argv[2:]]) if len(sys.argv) > 1 else "hipt reproduce seeds --record"
        print(f"record {record_sweep(out, command)}")
    return exit_code(outcomes)
