"""Per-slide job bookkeeping of the folder commands (``hipt patch``, ``hipt extract``): ``OUT/summary.csv``.

One row per slide, ``slide,status,n_regions,reason``, sorted by slide.  A rerun updates the rows of
the slides it ran and keeps the others; a slide that was skipped because its output was already
there keeps the row of the run that made it.  A failing slide gets a ``failed`` row with the reason,
in one line (:func:`failure_reason`), and never stops the others.  Under several processes each rank
writes its own part (:func:`rank_summary_path`) and rank 0 merges the parts (:func:`merge_rank_summaries`).
The file is written atomically, so an interrupted run leaves the previous summary.
"""

from __future__ import annotations

import contextlib
import csv
import io
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

from hipt.errors import HIPTError, InputFileError
from hipt.io import atomic_write_text

__all__ = [
    "SUMMARY_COLUMNS",
    "SUMMARY_NAME",
    "SlideJob",
    "failure_reason",
    "merge_rank_summaries",
    "rank_summary_path",
    "read_summary",
    "record_results",
    "write_summary",
]

SUMMARY_NAME = "summary.csv"
SUMMARY_COLUMNS = ("slide", "status", "n_regions", "reason")


class SlideJob(Protocol):
    """What a command's per-slide result offers the summary: its slide name, whether it was skipped
    (its output was already there) and its row."""

    slide: str

    @property
    def skipped(self) -> bool: ...

    def row(self) -> dict[str, object]: ...


def failure_reason(e: BaseException) -> str:
    """The one-line reason of a failed slide: the problem (and hint) of a known error, else the type and
    message of an unexpected one."""
    if isinstance(e, InputFileError):
        return e.problem + (f"; {e.hint}" if e.hint else "")
    if isinstance(e, HIPTError):
        return str(e)
    return f"unexpected {type(e).__name__}: {e}"


def read_summary(path: str | Path) -> dict[str, dict[str, str]]:
    """The rows of a summary file by slide (empty when the file is missing or unreadable)."""
    path = Path(path)
    if not path.is_file():
        return {}
    try:
        with open(path, newline="") as f:
            return {row["slide"]: row for row in csv.DictReader(f) if row.get("slide")}
    except (OSError, KeyError, csv.Error):
        return {}


def write_summary(path: str | Path, rows: Iterable[dict[str, object]]) -> None:
    """Write ``rows`` (sorted by slide, the columns of :data:`SUMMARY_COLUMNS`) atomically."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(SUMMARY_COLUMNS), extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for row in sorted(rows, key=lambda r: r["slide"]):
        w.writerow(row)
    atomic_write_text(Path(path), buf.getvalue())


def record_results(path: str | Path, results: Iterable[SlideJob]) -> None:
    """Update the summary at ``path`` with one row per result; a skipped slide whose row says ``ok``
    keeps that row (the run that made its output)."""
    rows = read_summary(path)
    for r in results:
        if r.skipped and rows.get(r.slide, {}).get("status") == "ok":
            continue
        rows[r.slide] = {k: str(v) for k, v in r.row().items()}
    write_summary(path, rows.values())


def rank_summary_path(out_dir: str | Path, rank: int) -> Path:
    """The summary part of one rank of a multi-process run."""
    return Path(out_dir) / f"summary.rank{rank}.csv"


def merge_rank_summaries(out_dir: str | Path, world: int) -> None:
    """Merge the parts of ranks ``0 … world-1`` into ``out_dir/summary.csv`` (their rows replace the
    earlier rows of the same slides) and delete the parts.  Call it on one rank, after a barrier."""
    out_dir = Path(out_dir)
    rows = read_summary(out_dir / SUMMARY_NAME)
    for r in range(world):
        rows.update(read_summary(rank_summary_path(out_dir, r)))
    write_summary(out_dir / SUMMARY_NAME, rows.values())
    for r in range(world):
        with contextlib.suppress(FileNotFoundError):
            rank_summary_path(out_dir, r).unlink()
