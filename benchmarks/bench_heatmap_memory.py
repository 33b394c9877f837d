"""Peak memory of a whole-slide three-level heatmap vs the slide's level-0 image size.

Renders :func:`hipt.attention.slide_heatmaps` (slide attention × ViT4K × ViT256 attention, region by
region, into an output canvas) over phantom slides of two sizes (default 16,384² and 32,768² px at
0.5 µm/px, 2048-px regions as the CPU book), each in a fresh subprocess whose peak RSS
(``VmHWM``, the high-water mark of its resident memory) is reported next to

- the same process's peak RSS right before rendering (baseline: imports, models, slide opened), and
- the level-0 RGB image size (``W·H·3`` bytes) that a naive renderer would hold.

Bounded memory = the peak is far below the level-0 size and does not grow with the slide.
Tiny random models (32-d ViT256 and ViT4K of 1 block each) keep it to a few minutes on a
CPU: memory does not depend on the weights. The slide attention is a random Dirichlet vector (the
slide model's cost and memory are negligible next to the region passes).

    .venv/bin/python benchmarks/bench_heatmap_memory.py            # 16k² and 32k² (≈ 5 min on 2 cores)
    .venv/bin/python benchmarks/bench_heatmap_memory.py --quick    # 8k² and 16k²

Writes ``benchmarks/results/heatmap_memory.json`` (format: ``benchmarks/README.md``).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _rss_bytes() -> int:
    """This process's peak resident set size, bytes.

    ``VmHWM`` of ``/proc/self/status`` (the high-water mark of this address space, reset by exec) where
    available; ``ru_maxrss`` is not used first because Linux carries it over from the parent across
    fork + exec, so a child of a big parent would report the parent's peak.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # kB
    except OSError:
        pass
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux: KiB


def _machine() -> dict:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = None
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        pass
    return {"cpu": cpu, "cpu_count": os.cpu_count(), "memory_gib": round(mem, 1) if mem else None,
            "gpu": None, "torch": torch.__version__, "python": platform.python_version()}


def make_inputs(size: int, region_size: int, seed: int = 0) -> tuple[Path, Path]:
    """A cached phantom slide of ``size``² px and its ``hipt patch`` coords (regions of ``region_size``)."""
    from hipt.paths import cache_dir
    from hipt.phantom import make_slide
    from hipt.tiling import patch_slide

    d = cache_dir("bench_heatmap")
    slide = d / f"phantom_{size}.tif"
    if not slide.is_file():
        t = time.perf_counter()
        make_slide(slide, size=size, seed=seed, progress=True)
        print(f"generated {slide.name} in {time.perf_counter() - t:.0f} s", flush=True)
    patch_slide(slide, d / f"patch_{region_size}", region_size=region_size, patch_size=256)
    return slide, d / f"patch_{region_size}" / "coords" / f"{slide.stem}.h5"


def child(slide: str, coords: str, max_size: int, render: bool) -> None:
    """Runs in a subprocess: print one JSON line with this process's peak RSS (and timings)."""
    import numpy as np
    import torch

    from hipt.attention import slide_heatmaps
    from hipt.models import ViT4K, ViT256
    from hipt.slide import open_slide
    from hipt.tiling import load_coords

    torch.manual_seed(0)
    vit256 = ViT256(embed_dim=32, depth=1, num_heads=2).eval()
    vit4k = ViT4K(input_embed_dim=32, embed_dim=32, depth=1, num_heads=2).eval()
    rc = load_coords(coords)
    attention = np.random.default_rng(0).dirichlet(np.ones(len(rc)))
    out: dict = {"n_regions": len(rc)}
    with open_slide(slide) as sl:
        out["level0_wh"] = list(sl.dimensions)
        out["baseline_rss"] = _rss_bytes()
        if render:
            t = time.perf_counter()
            hm = slide_heatmaps(sl, rc, attention=attention, vit256=vit256, vit4k=vit4k, max_size=max_size)
            out["seconds"] = time.perf_counter() - t
            out["output_hw"] = list(hm.three_level.shape)
            out["canvas_bytes"] = hm.canvas_bytes
    out["peak_rss"] = _rss_bytes()
    print(json.dumps(out))


def measure(slide: Path, coords: Path, max_size: int) -> dict:
    cmd = [sys.executable, __file__, "--child", str(slide), str(coords), "--max-size", str(max_size)]
    res = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[16384, 32768], help="phantom slide sides, px")
    p.add_argument("--quick", action="store_true", help="sizes 8192 and 16384")
    p.add_argument("--region-size", type=int, default=2048)
    p.add_argument("--max-size", type=int, default=2048, help="longer side of the output heatmap")
    p.add_argument("--child", nargs=2, metavar=("SLIDE", "COORDS"), help=argparse.SUPPRESS)
    p.add_argument("--no-render", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, default=HERE / "results" / "heatmap_memory.json")
    args = p.parse_args()
    if args.child:
        child(args.child[0], args.child[1], args.max_size, render=not args.no_render)
        return
    sizes = [8192, 16384] if args.quick else args.sizes
    hw = _machine()
    machine = f"{hw['cpu']} ({hw['cpu_count']} cores, {hw['memory_gib']} GiB), no GPU, torch {hw['torch']}"
    print(f"machine: {machine}")
    rows = []
    for size in sizes:
        slide, coords = make_inputs(size, args.region_size)
        r = measure(slide, coords, args.max_size)
        w, h = r["level0_wh"]
        level0 = w * h * 3
        rows.append({
            "slide_px": f"{w}x{h}",
            "regions": r["n_regions"],
            "level0_rgb_MiB": round(level0 / 2**20, 1),
            "output_px": "x".join(str(v) for v in reversed(r["output_hw"])),
            "canvas_MiB": round(r["canvas_bytes"] / 2**20, 1),
            "baseline_rss_MiB": round(r["baseline_rss"] / 2**20, 1),
            "peak_rss_MiB": round(r["peak_rss"] / 2**20, 1),
            "render_extra_MiB": round((r["peak_rss"] - r["baseline_rss"]) / 2**20, 1),
            "peak_over_level0": round(r["peak_rss"] / level0, 4),
            "render_s": round(r["seconds"], 1),
        })
        print(json.dumps(rows[-1]), flush=True)
    keys = list(rows[0])
    widths = [max(len(k), *(len(str(r[k])) for r in rows)) for k in keys]
    print("\n" + "  ".join(k.ljust(wd) for k, wd in zip(keys, widths)))
    for r in rows:
        print("  ".join(str(r[k]).ljust(wd) for k, wd in zip(keys, widths)))
    result = {
        "name": "heatmap_memory",
        "title": "Whole-slide three-level heatmap: peak RSS vs level-0 image size",
        "machine": machine,
        "hardware": hw,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": "bench_heatmap_memory.py " + " ".join(sys.argv[1:]),
        "notes": (f"phantom slides at 0.5 um/px, {args.region_size}-px regions, output longer side {args.max_size} px; "
                  "tiny random ViTs (32-d, 1 block); peak RSS of a fresh subprocess (VmHWM); baseline = same process "
                  "before rendering (imports, models, slide open); shared noisy machine"),
        "rows": rows,
    }
    from hipt.io import atomic_write_text

    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
