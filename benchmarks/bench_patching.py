"""Benchmark of slide access and patching (run by hand; prints a Markdown table).

1. Tissue segmentation time on pyramidal phantom slides of growing level-0 size: it must stay flat,
   because :func:`hipt.tissue.segment_tissue` reads a low pyramid level, never level 0.  Next to it,
   the time to decode the whole of level 0 (what a naive implementation would pay) is estimated from
   a sample of tiles, measured in the same run.
2. Regions read per second at 0.5 µm/px with :meth:`hipt.slide.Slide.read_region` next to the raw
   ``openslide.OpenSlide.read_region`` baseline on the same regions, in the same run: for a 20× slide
   (1:1) and for a "40×" slide without a 2× level (read 2× the size at level 0, then shrink).

Usage::

    python benchmarks/bench_patching.py                 # 8k², 16k², 32k² slides, 4096-px regions
    python benchmarks/bench_patching.py --quick         # 4k², 8k², 16k² slides, 2048-px regions

Phantom slides are cached under ``data/cache/bench_patching/`` (``--cache`` to change).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{platform.platform()}; {cpu}; {n} CPUs usable (os.cpu_count={os.cpu_count()})"


def timed(fn, repeat: int = 3) -> float:
    """Median wall time of ``repeat`` calls, in seconds."""
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def phantom_slide(cache: Path, size: int, mpp: float = 0.5) -> Path:
    from hipt.phantom import make_slide

    path = cache / f"phantom_{size}_mpp{mpp:g}.tif"
    if not path.is_file():
        t = time.perf_counter()
        make_slide(path, size=size, seed=0, mpp=mpp, progress=True)
        print(f"  generated {path.name} in {time.perf_counter() - t:.1f} s ({path.stat().st_size / 1e6:.1f} MB)")
    return path


def level0_decode_estimate(path: Path, n_tiles: int = 64, tile: int = 512) -> float:
    """Seconds to decode all of level 0, extrapolated from ``n_tiles`` random reads of ``tile`` px."""
    import openslide

    osr = openslide.OpenSlide(str(path))
    W, H = osr.dimensions
    rng = np.random.default_rng(0)
    xs = rng.integers(0, max(W - tile, 1), n_tiles)
    ys = rng.integers(0, max(H - tile, 1), n_tiles)
    t = time.perf_counter()
    for x, y in zip(xs, ys, strict=True):
        osr.read_region((int(x), int(y)), 0, (tile, tile))
    per_px = (time.perf_counter() - t) / (n_tiles * tile * tile)
    osr.close()
    return per_px * W * H


def bench_segmentation(paths: list[Path]) -> list[dict]:
    from hipt.slide import open_slide
    from hipt.tissue import segment_tissue

    rows = []
    for p in paths:
        with open_slide(p) as s:
            levels = []
            orig = s._read_level
            s._read_level = lambda loc, level, size, _o=orig: levels.append((level, size)) or _o(loc, level, size)
            segment_tissue(s)  # warm-up (file cache)
            levels.clear()
            t = timed(lambda s=s: segment_tissue(s))
            level = levels[0][0]
            lw, lh = s.level_dimensions[level]
            rows.append(dict(size=s.dimensions[0], level0_mpx=s.dimensions[0] * s.dimensions[1] / 1e6,
                             level=level, level_mpx=lw * lh / 1e6, seg_s=t, level0_s=level0_decode_estimate(p)))
    return rows


def bench_regions(path: Path, region: int, n: int, mpp_label: str) -> dict:
    import openslide

    from hipt.slide import open_slide

    rng = np.random.default_rng(1)
    with open_slide(path) as s:
        extent = s.level0_extent(region, 0.5)
        W, H = s.dimensions
        coords = [(int(rng.integers(0, max(W - extent, 1))), int(rng.integers(0, max(H - extent, 1)))) for _ in range(n)]
        s.read_region(coords[0], region)  # warm-up
        t = time.perf_counter()
        for xy in coords:
            s.read_region(xy, region, 0.5)
        ours = n / (time.perf_counter() - t)
        level = s.best_level(s.level0_scale(0.5))
        read_px = int(round(extent / s.level_downsamples[level]))
    osr = openslide.OpenSlide(str(path))
    t = time.perf_counter()
    for xy in coords:
        osr.read_region(xy, level, (read_px, read_px))
    raw = n / (time.perf_counter() - t)
    osr.close()
    return dict(slide=mpp_label, region=region, read_px=read_px, level=level, ours=ours, raw=raw)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller slides (4k², 8k², 16k²) and 2048-px regions")
    ap.add_argument("--sizes", type=int, nargs="+", default=None, help="phantom slide sides in px")
    ap.add_argument("--region", type=int, default=None, help="region side at 0.5 µm/px")
    ap.add_argument("--n-regions", type=int, default=None, help="regions read per measurement")
    ap.add_argument("--cache", type=Path, default=None, help="where phantom slides are kept")
    ap.add_argument("--no-save", action="store_true", help="do not write benchmarks/results/patching*.json")
    args = ap.parse_args(argv)

    from hipt.paths import cache_dir

    sizes = args.sizes or ([4096, 8192, 16384] if args.quick else [8192, 16384, 32768])
    region = args.region or (2048 if args.quick else 4096)
    n_regions = args.n_regions or (6 if args.quick else 8)
    cache = args.cache or cache_dir("bench_patching")
    cache.mkdir(parents=True, exist_ok=True)

    print(f"machine: {machine()}")
    print("generating / reusing phantom slides ...")
    paths = [phantom_slide(cache, s) for s in sizes]
    forty = phantom_slide(cache, max(sizes[0], 2 * region), mpp=0.25)

    print("\n### Tissue segmentation vs level-0 size (median of 3)\n")
    print("| level-0 size | level-0 Mpx | level read | its Mpx | segment_tissue s | ratio to smallest | "
          "decode all of level 0 (est.) s |")
    print("|---|---|---|---|---|---|---|")
    rows = bench_segmentation(paths)
    for r in rows:
        print(f"| {r['size']}² | {r['level0_mpx']:.0f} | {r['level']} | {r['level_mpx']:.1f} | {r['seg_s']:.2f} | "
              f"{r['seg_s'] / rows[0]['seg_s']:.2f} | {r['level0_s']:.1f} |")
    area_ratio = rows[-1]["level0_mpx"] / rows[0]["level0_mpx"]
    print(f"\nlevel-0 area grows {area_ratio:.0f}×; segmentation time grows {rows[-1]['seg_s'] / rows[0]['seg_s']:.2f}×.")

    print(f"\n### Regions read per second ({region} px at 0.5 µm/px, {n_regions} random regions)\n")
    print("| slide | pyramid level read | px read per side | hipt read_region /s | raw OpenSlide read_region /s | ratio |")
    print("|---|---|---|---|---|---|")
    region_rows = []
    for label, p in (("20× (0.5 µm/px), 1:1", paths[-1]), ("40× (0.25 µm/px), no 2× level", forty)):
        b = bench_regions(p, region, n_regions, label)
        region_rows.append(b)
        print(f"| {b['slide']} | {b['level']} | {b['read_px']} | {b['ours']:.2f} | {b['raw']:.2f} | "
              f"{b['ours'] / b['raw']:.2f} |")
    print("\n(raw = OpenSlide's RGBA read of the same level-0 box at the same level; hipt adds white compositing, "
          "resampling for 40×, and the conversion to a numpy array)")

    if not args.no_save:
        try:
            from hipt.provenance import write_benchmark_result
        except ImportError:  # pragma: no cover - the book's helper is absent
            return
        seg = [{"level-0 side (px)": r["size"], "level-0 Mpx": round(r["level0_mpx"], 1), "level read": r["level"],
                "its Mpx": round(r["level_mpx"], 2), "segment_tissue (s)": round(r["seg_s"], 3),
                "ratio to smallest": round(r["seg_s"] / rows[0]["seg_s"], 2),
                "decode all of level 0, est. (s)": round(r["level0_s"], 2)} for r in rows]
        reg = [{"slide": b["slide"], "region (px)": b["region"], "level read": b["level"],
                "px read per side": b["read_px"], "hipt regions/s": round(b["ours"], 3),
                "raw OpenSlide regions/s": round(b["raw"], 3), "ratio": round(b["ours"] / b["raw"], 2)}
               for b in region_rows]
        p1 = write_benchmark_result("patching", seg, title="Tissue segmentation time vs level-0 size",
                                    notes="phantom pyramidal TIFFs (factor-4 pyramid); median of 3; shared machine")
        p2 = write_benchmark_result("patching_regions", reg, title=f"Regions read per second ({region} px at 0.5 µm/px)",
                                    notes="baseline = raw openslide.OpenSlide.read_region of the same box, same run")
        print(f"\nwrote {p1} and {p2}")


if __name__ == "__main__":
    main()
