"""Provenance records: which commit, machine and command produced a result.

Two kinds of record carry them:

- a **benchmark record** ``benchmarks/results/<name>.json`` (:func:`write_benchmark_result`,
  :func:`read_benchmark_result`, :func:`read_benchmark_results`): a measured table with the machine, the
  date, the command and the commit that measured it; the benchmarks write them and the book's
  Performance appendix reads them (format: ``benchmarks/README.md``);
- a **run record** ``provenance.json`` (:func:`provenance`, :func:`read_provenance`): one executed notebook,
  its parameters, status, timing and machine (written by ``hipt reproduce`` for each run).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hipt import __version__
from hipt.errors import InputFileError
from hipt.io import atomic_write_text
from hipt.paths import project_root

__all__ = ["git_commit", "hardware", "machine_summary", "benchmark_results_dir", "write_benchmark_result",
           "read_benchmark_result", "read_benchmark_results", "provenance", "read_provenance", "safe_name"]


def safe_name(s: str) -> str:
    """``s`` with every character other than letters, digits and ``._+`` replaced by ``_`` (a file name)."""
    return "".join(c if c.isalnum() or c in "._+" else "_" for c in s)


def git_commit(path: Path | None = None) -> str:
    """The checkout's commit (with ``+dirty`` when it has changes), or ``"unknown"``."""
    cwd = path or project_root() or Path.cwd()
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return sha + ("+dirty" if dirty else "") if sha else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware() -> dict[str, Any]:
    """CPU, core count, memory, GPU name (if any), torch and CUDA versions of this machine."""
    info: dict[str, Any] = {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "gpu": None,
        "torch": None,
        "cuda": None,
    }
    try:
        pages, page_size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        info["memory_gib"] = round(pages * page_size / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        info["memory_gib"] = None
    try:
        # imported here: `hipt reproduce` starts (and answers --help) without loading torch
        import torch

        info["torch"] = torch.__version__
        info["cuda"] = torch.version.cuda
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
            info["gpu_count"] = torch.cuda.device_count()
    except Exception:  # noqa: BLE001 (provenance must never fail a run)
        pass
    return info


def machine_summary(machine: dict | None = None) -> str:
    """One line naming a machine, e.g. ``"Intel Xeon … (2 cores, 23.4 GiB), no GPU, torch 2.x"``."""
    m = machine if machine is not None else hardware()
    gpu = m.get("gpu") or "no GPU"
    mem = f", {m['memory_gib']} GiB" if m.get("memory_gib") else ""
    return f"{m.get('cpu')} ({m.get('cpu_count')} cores{mem}), {gpu}, torch {m.get('torch')}"


def _checkout_or_cwd() -> Path:
    root = project_root()
    return root if root is not None else Path.cwd()


def benchmark_results_dir() -> Path:
    """``benchmarks/results`` of the checkout (of the current folder when hipt runs without its checkout)."""
    return _checkout_or_cwd() / "benchmarks" / "results"


def write_benchmark_result(name: str, rows: Sequence[dict], *, title: str | None = None,
                           command: str | None = None, notes: str | None = None,
                           folder: str | Path | None = None, hardware_info: dict | None = None,
                           targets: Sequence[dict] | None = None) -> Path:
    """Write a benchmark's table to ``benchmarks/results/<name>.json`` (read by the Performance appendix).

    The format (see ``benchmarks/README.md``)::

        {"name": ..., "title": ..., "machine": "<one line>", "hardware": {...}, "date": "<ISO 8601 UTC>",
         "command": ..., "notes": ..., "rows": [{"column": value, ...}, ...]}

    ``rows`` are flat dicts with the same keys (one table row each; numbers or strings).
    ``targets``: the acceptance targets the run was measured against, one flat dict each (e.g.
    ``{"target": ..., "threshold": ..., "value": ..., "met": ..., "limited by": ...}``), stored as
    ``"targets"`` so that readers need not parse ``notes``.
    ``hardware_info``: the :func:`hardware` of the machine that measured, when that is not this one
    (a GPU run whose numbers are reported here).
    """
    dest_dir = Path(folder) if folder is not None else benchmark_results_dir()
    machine = dict(hardware_info) if hardware_info is not None else hardware()
    machine.pop("hostname", None)
    record = {
        "name": name,
        "title": title or name,
        "machine": machine_summary(machine),
        "hardware": machine,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": command if command is not None else " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "commit": git_commit(_checkout_or_cwd()),
        "notes": notes,
        "rows": [dict(r) for r in rows],
    }
    if targets is not None:
        record["targets"] = [dict(t) for t in targets]
    dest = dest_dir / f"{safe_name(name)}.json"
    atomic_write_text(dest, json.dumps(record, indent=2, default=float) + "\n")
    return dest


def read_benchmark_result(name: str, folder: str | Path | None = None) -> dict[str, Any] | None:
    """The record ``benchmarks/results/<name>.json``, or None when no run has been recorded."""
    folder = Path(folder) if folder is not None else benchmark_results_dir()
    return next((r for r in read_benchmark_results(folder) if r["name"] == name), None)


def read_benchmark_results(folder: str | Path | None = None) -> list[dict[str, Any]]:
    """Every ``benchmarks/results/*.json`` record, sorted by name; malformed files raise ``InputFileError``."""
    folder = Path(folder) if folder is not None else benchmark_results_dir()
    records = []
    for p in sorted(Path(folder).glob("*.json")):
        try:
            record = json.loads(p.read_text())
        except ValueError as e:
            raise InputFileError(p, f"not valid JSON ({e})") from None
        missing = {"machine", "date", "rows"} - set(record)
        if missing:
            raise InputFileError(p, f"benchmark result lacks {sorted(missing)}", "see benchmarks/README.md")
        record.setdefault("name", p.stem)
        record.setdefault("title", record["name"])
        records.append(record)
    return records


def provenance(run_id: str, chapter: str | Path, parameters: dict[str, Any], *, status: str, started: float,
               finished: float, notebook: Path, error: str | None = None, machine: dict | None = None) -> dict[str, Any]:
    """The provenance record of one executed notebook (what ``provenance.json`` holds).

    Fields: ``run_id``, ``chapter``, ``notebook`` (executed), ``parameters``, ``status`` ("ok" or
    "failed"), ``error`` (one line, or None), ``hipt_version``, ``git_commit`` (or "unknown"),
    ``hardware`` (:func:`hardware`), ``started``/``finished`` (ISO 8601, UTC), ``wall_time_s``,
    ``papermill_version``, ``command`` (the command line).
    """
    try:
        # papermill is an optional dependency (the book extra): the record says None without it
        import papermill

        pm_version = papermill.__version__
    except ImportError:  # pragma: no cover
        pm_version = None
    iso = lambda t: _dt.datetime.fromtimestamp(t, _dt.timezone.utc).isoformat(timespec="seconds")  # noqa: E731
    return {
        "run_id": run_id,
        "chapter": str(chapter),
        "notebook": str(notebook),
        "parameters": parameters,
        "status": status,
        "error": error,
        "hipt_version": __version__,
        "git_commit": git_commit(),
        "hardware": machine if machine is not None else hardware(),
        "started": iso(started),
        "finished": iso(finished),
        "wall_time_s": round(finished - started, 2),
        "papermill_version": pm_version,
        "command": " ".join(sys.argv),
    }


def read_provenance(run_dir: Path) -> dict[str, Any] | None:
    """The provenance record in ``run_dir``, or None if absent or unreadable."""
    try:
        return json.loads((run_dir / "provenance.json").read_text())
    except (OSError, ValueError):
        return None
