"""Phantom generation speed and memory: the book's default cohort and single large slides.

Measures, in one run on this machine:

- ``render_patch``: ms per fresh 256² patch per tissue type (the per-cell cost without a texture bank);
- the default book cohort (``context``, 32 slides × 4 regions × 2048 px, fresh folder): wall and CPU
  seconds, MB per slide, level-0 megapixels per second, and the speedup over the baseline measured in
  the same run, i.e. rendering every layout cell fresh with ``render_patch`` (CPU time extrapolated
  from the per-type timings; the composition and JPEG encoding are not even counted for the baseline);
- single slides (``hipt phantom slide``; 8k², 16k² and 32k², ``--quick``: 8k² and 16k²), each in a
  fresh subprocess: wall seconds, file size and peak RSS next to the level-0 RGB size.

    .venv/bin/python benchmarks/bench_phantom.py            # ≈ 2 min on 2 cores
    .venv/bin/python benchmarks/bench_phantom.py --quick

Writes ``benchmarks/results/phantom.json`` (format: ``benchmarks/README.md``).
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from hipt import phantom as P
from hipt.provenance import machine_summary, write_benchmark_result

# Peak RSS from VmHWM (reset by exec), not ru_maxrss: on Linux ru_maxrss survives fork+exec, so a child
# of a large parent would report the parent's size.
_SLIDE = (
    "import sys, time; from hipt.phantom import make_slide; t = time.perf_counter(); "
    "make_slide(sys.argv[1], None, seed=0, size=int(sys.argv[2])); "
    "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]; "
    "print(time.perf_counter() - t, hwm)"
)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="single slides of 8k² and 16k² only")
    ap.add_argument("--n-slides", type=int, default=32)
    args = ap.parse_args(argv)
    rows = []
    print(f"machine: {machine_summary()}")

    per_type = {}
    for t in range(len(P.TISSUES)):
        P.render_patch(t, 256, seed=99)  # warm-up
        t0, c0 = time.perf_counter(), time.process_time()
        for s in range(8):
            P.render_patch(t, 256, seed=s)
        wall, per_type[t] = (time.perf_counter() - t0) / 8, (time.process_time() - c0) / 8
        rows.append({"what": f"render_patch {P.TISSUES[t]} 256²", "wall_s": round(wall, 4),
                     "cpu_s": round(per_type[t], 4), "mb_per_slide": None, "peak_rss_mib": None, "level0_mib": None,
                     "speedup": None})

    with tempfile.TemporaryDirectory() as tmp:
        c0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        cohort = P.make_cohort("context", Path(tmp) / "ctx", n_slides=args.n_slides, regions_per_slide=4,
                               region_size=2048, seed=0, progress=False)
        wall = time.perf_counter() - t0
        c1 = resource.getrusage(resource.RUSAGE_SELF)
        cpu = (c1.ru_utime - c0.ru_utime) + (c1.ru_stime - c0.ru_stime)
        sizes = [Path(p).stat().st_size for p in cohort.paths]
        cells = np.zeros(len(P.TISSUES))
        mpx = 0.0
        for p in cohort.paths:
            lay = P.load_truth(p).layout
            cells += np.bincount(lay.ravel(), minlength=len(P.TISSUES))
            mpx += lay.size * 256 * 256 / 1e6
        baseline = float(sum(cells[t] * per_type[t] for t in per_type))  # CPU seconds
        rows.append({"what": f"context cohort {args.n_slides}×4×2048² (fresh, bank included)", "wall_s": round(wall, 2),
                     "cpu_s": round(cpu, 2), "mb_per_slide": round(np.mean(sizes) / 1e6, 2), "peak_rss_mib": None,
                     "level0_mib": round(mpx * 3 / 1.048576, 0), "speedup": round(baseline / cpu, 1)})
        rows.append({"what": "baseline: fresh render_patch per cell (same cohort)", "wall_s": None,
                     "cpu_s": round(baseline, 1), "mb_per_slide": None, "peak_rss_mib": None, "level0_mib": None, "speedup": 1.0})
        print(f"cohort: {wall:.1f} s wall, {cpu:.1f} s CPU, {mpx / wall:.0f} Mpx/s, {np.mean(sizes) / 1e6:.1f} MB/slide; "
              f"fresh rendering would take {baseline:.0f} s CPU")

        for size in (8192, 16384) if args.quick else (8192, 16384, 32768):
            path = Path(tmp) / f"s{size}.tif"
            out = subprocess.run([sys.executable, "-c", _SLIDE, str(path), str(size)], capture_output=True, text=True,
                                 check=True)
            secs, rss_kib = out.stdout.split()[-2:]
            full = size * size * 3 / 2**20
            rows.append({"what": f"hipt phantom slide {size}²", "wall_s": round(float(secs), 2), "cpu_s": None,
                         "mb_per_slide": round(path.stat().st_size / 1e6, 1),
                         "peak_rss_mib": round(int(rss_kib) / 1024, 0), "level0_mib": round(full, 0), "speedup": None})
            print(f"slide {size}²: {float(secs):.1f} s, {path.stat().st_size / 1e6:.0f} MB, peak RSS "
                  f"{int(rss_kib) / 1024:.0f} MiB vs level 0 {full:.0f} MiB")

    for r in rows:
        print("  ".join(f"{k}={v}" for k, v in r.items() if v is not None))
    dest = write_benchmark_result(
        "phantom", rows, title="Phantom generation: per-patch rendering, the default cohort, large slides",
        notes="speedup = CPU time of fresh per-cell rendering (extrapolated, same run) / cohort CPU time; "
              "peak RSS = VmHWM of a fresh subprocess per slide; wall times are noisy on a shared machine")
    print(dest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
