"""Execute the book's chapters with papermill on a lent GPU and record what each one does (never part of CI).

For every chapter, with the ``gpu`` preset (the Colab-sized run: :data:`GPU_PARAMS`) and the ``paper``
preset with small caps (:data:`PAPER_PARAMS`), the run either completes or stops at once with one
message naming what it needs; a chapter that starts hours of work would be killed at ``--timeout`` and
recorded as such.  Per chapter it records: status (``ok``,
``stopped``: a :class:`hipt.errors.HIPTError` with its message, ``failed``: any other error, ``timeout``),
wall time, peak GPU memory (``nvidia-smi``, polled every 0.5 s) and the precision lines the chapter
printed (:mod:`hipt.precision`).  ``--cpu-preset`` adds the CPU defaults executed on the GPU machine, a
check that the book's own code paths put models and tensors on the device they use.

Usage (on the device machine)::

    python benchmarks/gpu_chapters.py --out $OUT                      # gpu then paper: $OUT/gpu_chapters.json
    python benchmarks/gpu_chapters.py --presets gpu --chapters 03 04 06 --timeout 400
    python benchmarks/gpu_chapters.py --presets paper --chapters 03 09 --cpu-preset --timeout 240

The ``gpu`` runs build on each other in the order 03, 04, then 06-09 (chapter 3 trains the stage-1
model that every later chapter's features come from; chapter 4 the stage-2 model and the 64-slide
context cohort, which chapters 6, 8 and 9 reuse), so run them in one call, in that order.  The first
device call measures how far they get in 10 minutes; each row says where the time went.

``--save`` writes ``benchmarks/results/gpu_chapters.json`` instead (with the command and commit).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

#: papermill parameters of the gpu runs: the preset's own schedule for chapters 3 and 4 (500 + 200 DINO
#: steps), and chapters 6-8 on the context cohort that chapter 4 built (one fold), so that the call stays
#: within the device's 10 minutes; chapter 7 draws its own survival cohort
GPU_PARAMS: dict[str, dict] = {
    "06": {"preset": "gpu", "cohorts": ["context"], "folds": [0], "extras": False},
    "07": {"preset": "gpu", "folds": [0], "n_permutations": 0},
    "08": {"preset": "gpu", "cohorts": ["context"], "folds": [0, 1]},
}

#: papermill parameters of the paper runs: small caps, so that a chapter either finishes or refuses
PAPER_PARAMS: dict[str, dict] = {
    "03": {"preset": "paper", "max_steps": 20, "max_minutes": 5},
    "04": {"preset": "paper", "max_steps": 20, "max_minutes": 5},
    "06": {"preset": "paper", "folds": [0], "max_epochs": 1},
    "07": {"preset": "paper", "folds": [0], "max_epochs": 1},
    "08": {"preset": "paper", "folds": [0]},
}


class GpuMemoryPoll:
    """Peak ``memory.used`` (MiB) of GPU 0 while the block runs, from ``nvidia-smi`` every ``period`` s."""

    def __init__(self, period: float = 0.5) -> None:
        self.period, self.peak, self._stop = period, 0, threading.Event()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                                     capture_output=True, text=True, timeout=5).stdout
                self.peak = max(self.peak, int(out.split()[0]))
            except (OSError, ValueError, IndexError, subprocess.SubprocessError):
                pass
            self._stop.wait(self.period)

    def __enter__(self) -> GpuMemoryPoll:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def _printed(nb_path: Path) -> str:
    """Every text output of an executed notebook, joined."""
    try:
        nb = json.loads(nb_path.read_text())
    except (OSError, ValueError):
        return ""
    parts = []
    for cell in nb.get("cells", []):
        for o in cell.get("outputs", []):
            text = o.get("text") or o.get("data", {}).get("text/plain") or ""
            parts.append("".join(text) if isinstance(text, list) else text)
    return "\n".join(parts)


def _hipt_error_names() -> set[str]:
    """Names of :class:`hipt.errors.HIPTError` and its subclasses: a chapter that raises one stopped on
    purpose, with a message for its user."""
    import hipt.book.zoo  # noqa: F401
    import hipt.io  # noqa: F401 (modules that define subclasses)
    import hipt.precision  # noqa: F401
    import hipt.pretrain.trainer  # noqa: F401
    import hipt.tasks.preflight  # noqa: F401
    from hipt.errors import HIPTError

    names, todo = set(), [HIPTError]
    while todo:
        cls = todo.pop()
        names.add(cls.__name__)
        todo += cls.__subclasses__()
    return names


def run_chapter(chapter: Path, params: dict, out_dir: Path, timeout: float) -> dict:
    """Execute one chapter; the row of the record."""
    import jupytext
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    src = out_dir / f"{chapter.stem}.ipynb"
    jupytext.write(jupytext.read(chapter), src)
    dest = out_dir / f"{chapter.stem}.{params.get('preset', 'cpu')}.out.ipynb"
    row = {"chapter": chapter.stem, "params": json.dumps(params), "status": "ok", "message": ""}
    t0 = time.perf_counter()
    with GpuMemoryPoll() as poll:
        try:
            pm.execute_notebook(str(src), str(dest), parameters=params, cwd=str(chapter.parent),
                                execution_timeout=timeout, progress_bar=False, kernel_name="python3")
        except PapermillExecutionError as e:
            hipt_error = e.ename in _hipt_error_names()
            row["status"] = "stopped" if hipt_error else "failed"
            row["message"] = f"{e.ename}: {e.evalue}"[:500]
        except Exception as e:  # noqa: BLE001 (the kernel died, the cell timed out, ...)
            row["status"] = "timeout" if "Timeout" in type(e).__name__ or "timed out" in str(e) else "failed"
            row["message"] = f"{type(e).__name__}: {e}"[:500]
    row["seconds"] = round(time.perf_counter() - t0, 1)
    row["peak GPU MiB"] = poll.peak
    row["precision"] = "; ".join(sorted({line.strip() for line in _printed(dest).splitlines()
                                         if line.strip().startswith("precision")}))[:300]
    print(f"{row['chapter']:28s} {row['status']:8s} {row['seconds']:7.1f} s  {row['peak GPU MiB']:6d} MiB  "
          f"{row['message'][:120]}", flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--chapters", nargs="+", default=None, help="chapter numbers (default: all, 01-09)")
    p.add_argument("--presets", nargs="+", default=["gpu", "paper"], choices=["gpu", "paper"],
                   help="which presets to run, each over every chapter (default: gpu, then paper)")
    p.add_argument("--cpu-preset", action="store_true", help="also run each chapter with its CPU defaults")
    p.add_argument("--timeout", type=float, default=120, help="seconds per cell before the run is killed")
    p.add_argument("--budget", type=float, default=None,
                   help="seconds after which no further chapter is started (each is recorded as 'not run'), so "
                        "that one device call ends in time")
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "outputs/gpu_chapters")))
    p.add_argument("--save", action="store_true", help="write benchmarks/results/gpu_chapters.json")
    args = p.parse_args(argv)

    chapters = sorted((ROOT / "book").glob("0[1-9]_*.md"))
    if args.chapters:
        chapters = [c for c in chapters if c.name[:2] in {n.zfill(2) for n in args.chapters}]
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    grids = {"gpu": GPU_PARAMS, "paper": PAPER_PARAMS}
    plan = [(c, grids[preset].get(c.name[:2], {"preset": preset})) for preset in args.presets for c in chapters]
    plan += [(c, {"preset": "cpu"}) for c in chapters] if args.cpu_preset else []
    t_start = time.perf_counter()
    for chapter, params in plan:
        if args.budget is not None and time.perf_counter() - t_start > args.budget:
            rows.append({"chapter": chapter.stem, "params": json.dumps(params), "status": "not run",
                         "message": f"--budget {args.budget:g} s spent before it started", "seconds": 0.0,
                         "peak GPU MiB": 0, "precision": ""})
            continue
        rows.append(run_chapter(chapter, params, args.out, args.timeout))
    if args.save:
        from hipt.provenance import hardware, write_benchmark_result

        write_benchmark_result("gpu_chapters", rows, title="Chapters executed with papermill on a GPU",
                               command="python benchmarks/gpu_chapters.py " + " ".join(argv or sys.argv[1:]),
                               hardware_info=hardware())
    (args.out / "gpu_chapters.json").write_text(json.dumps(rows, indent=2) + "\n")
    bad = [r["chapter"] for r in rows if r["status"] in ("failed", "timeout")]
    print(f"{len(rows)} runs; failed or timed out: {bad or 'none'}")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
