"""The CPU book's cohort geometry: 1024-px regions of 128-px patches against 2048-px regions of 256-px patches.

Both geometries give every region the same 8×8 grid of patch tokens, so the slide-level chapters see
bags of the same shape; what changes is the pixels behind each token.  The ``cpu`` preset of
:mod:`hipt.book.zoo` uses 128-px patches (the size its tiny stage-1 ViT is pretrained on, chapter 3).  This
script measures, in one process and on fresh folders, what one phantom ``context`` cohort costs in
each geometry: generating the slides (:func:`hipt.phantom.make_cohort`), patching them
(:func:`hipt.tiling.patch_folder`) and extracting ``feats256`` + ``feats4k`` with the tiny ViT256 and
ViT4K in bf16 (:func:`hipt.features.extract_folder`; random weights: the cost does not depend on them).
The 2048/256 geometry is the baseline (the preset before this change).

Usage::

    .venv/bin/python benchmarks/bench_cpu_geometry.py             # 16 slides per geometry, ~2 min on 2 cores
    .venv/bin/python benchmarks/bench_cpu_geometry.py --n-slides 8

Writes ``benchmarks/results/cpu_geometry.json``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hipt.features import build_encoder, extract_folder  # noqa: E402
from hipt.models import vit4k_tiny, vit256_tiny  # noqa: E402
from hipt.phantom import make_cohort  # noqa: E402
from hipt.provenance import machine_summary, write_benchmark_result  # noqa: E402
from hipt.tiling import patch_folder  # noqa: E402

GEOMETRIES = [("2048-px regions, 256-px patches (baseline)", 2048, 256),
              ("1024-px regions, 128-px patches (cpu preset)", 1024, 128)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n-slides", type=int, default=16, help="slides of the context cohort per geometry")
    ap.add_argument("--no-record", action="store_true", help="do not write benchmarks/results/")
    args = ap.parse_args(argv)
    print(f"machine: {machine_summary()}; torch threads {torch.get_num_threads()}", flush=True)
    torch.manual_seed(0)
    vit256, vit4k = vit256_tiny().eval(), vit4k_tiny().eval()
    rows, base = [], None
    with tempfile.TemporaryDirectory() as tmp:
        for name, region, patch in GEOMETRIES:
            root = Path(tmp) / f"r{region}"
            t0 = time.perf_counter()
            cohort = make_cohort("context", root / "slides", n_slides=args.n_slides, regions_per_slide=4,
                                 region_size=region, patch_size=patch, seed=0, progress=False)
            t1 = time.perf_counter()
            patch_folder(cohort.paths, root / "patch", region_size=region, patch_size=patch, progress=False)
            t2 = time.perf_counter()
            enc = build_encoder(vit256, vit4k, patch_size=patch)
            results = extract_folder(root / "patch", root / "features", enc, batch_regions=2, dtype="bf16",
                                     device="cpu", progress=False)
            t3 = time.perf_counter()
            n_regions = sum(r.n_regions for r in results)
            n_patches = n_regions * (region // patch) ** 2
            total = t3 - t0
            base = base or total
            rows.append({"geometry": name, "slides": args.n_slides, "regions": n_regions,
                         "generate s": round(t1 - t0, 1), "patch s": round(t2 - t1, 1),
                         "extract s": round(t3 - t2, 1), "patches/s (extract)": round(n_patches / (t3 - t2), 1),
                         "total s": round(total, 1), "speedup vs baseline": round(base / total, 2)})
            print(rows[-1], flush=True)
    if not args.no_record:
        path = write_benchmark_result(
            "cpu_geometry", rows, title="CPU book cohorts: 128-px patches vs 256-px patches (same 8×8 grid)",
            command="bench_cpu_geometry.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            notes="one phantom context cohort per geometry, fresh folders, same process: make_cohort, "
                  "patch_folder, extract_folder (tiny ViT256 + ViT4K, random weights, bf16, 2 regions per batch)")
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
