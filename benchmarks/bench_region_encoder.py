"""Region-encoder benchmark: throughput (fp32/bf16, batch sizes) vs a naive baseline, memory, FLOPs.

Run by hand (not part of the tests)::

    python benchmarks/bench_region_encoder.py --quick          # a couple of minutes on 2 CPU cores
    python benchmarks/bench_region_encoder.py                  # 4096-px regions, ViT-S/16 + ViT-XS
    python benchmarks/bench_region_encoder.py --device cuda    # on a GPU (adds achieved TFLOP/s)
    python benchmarks/bench_region_encoder.py --flops          # FLOPs per level (analytic + FlopCounterMode)

``--save`` writes the tables to ``benchmarks/results/region_encoder*.json`` (the Performance appendix).

1. **Throughput** (regions/s) of :class:`hipt.models.HIPT4K` (random weights, full-size ViT-S/16 + ViT-XS
   unless ``--tiny``) in fp32 and bf16 autocast at several region batch sizes, against a **naive baseline
   measured in the same run**: one region at a time, fp32, its patches encoded one by one in a Python loop
   (then ViT-XS on the grid) — roughly what a first re-implementation does.  The table gives each
   variant's speed-up over that baseline.  Acceptance for this project: bf16 ≥ 1.8× the naive fp32
   baseline on the CPU.
2. **Memory** (skipped by ``--no-memory``): peak RSS of :func:`hipt.features.extract_slide` (tiny models)
   on phantom slides of N and 2N regions and at region batches 1 and 4, each in a fresh process (peak =
   ``VmHWM`` after resetting it through ``/proc/self/clear_refs`` once the model is warm): the increase
   over the RSS before extraction grows with the region batch, not with the slide.
3. **FLOPs** (``--flops``): the analytic count of ViT-S/16 on one 256-px patch, ViT-XS on a 16×16 grid
   and a whole 4096-px region, cross-checked with ``torch.utils.flop_counter.FlopCounterMode``
   (FLOPs = 2 × multiply-adds of matmuls/convs/attention; norms, GELU and softmax are not counted).

The CPU numbers are noisy on a shared machine: rerun, and compare ratios measured in one run only.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hipt.models import HIPT4K, normalize, vit4k_tiny, vit4k_xs, vit256_small, vit256_tiny  # noqa: E402


# ------------------------------------------------------------------------------------------ machine
def _save(name: str, rows: list[dict], **kw) -> None:
    from hipt.provenance import write_benchmark_result

    print(f"wrote {write_benchmark_result(name, rows, **kw)}")


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
    s = (f"{platform.node()} | {platform.system()} {platform.release()} | {cpu} | {os.cpu_count()} CPUs "
         f"| torch {torch.__version__}, {torch.get_num_threads()} threads")
    if torch.cuda.is_available():
        s += f" | GPU {torch.cuda.get_device_name(0)}"
    return s


# ------------------------------------------------------------------------------------------- FLOPs
def counted_flops(model: torch.nn.Module, x: torch.Tensor) -> int:
    """FlopCounterMode's count, with explicit (unfused) attention: its table has no entry for the CPU
    fused SDPA kernel, which it would silently count as 0 FLOPs."""
    from torch.utils.flop_counter import FlopCounterMode

    for blk in model.blocks:
        blk.attn.fused_attn = False
    try:
        with torch.inference_mode(), FlopCounterMode(display=False) as fc:
            model(x)
    finally:
        for blk in model.blocks:
            blk.attn.fused_attn = True
    return int(fc.get_total_flops())


def flops_report(save: bool) -> None:
    print("\n## FLOPs per level (FLOPs = 2 x multiply-adds)\n")
    v256, v4k = vit256_small().eval(), vit4k_xs().eval()
    a256, a4k = v256.flops(256), v4k.flops(16)
    c256 = counted_flops(v256, torch.randn(1, 3, 256, 256))
    c4k = counted_flops(v4k, torch.randn(1, 384, 16, 16))
    rows = [
        ("ViT-S/16 on one 256-px patch (257 tokens)", a256, c256),
        ("ViT-XS on a 16x16 grid (257 tokens)", a4k, c4k),
        ("one 4096-px region: 256 x ViT-S/16 + ViT-XS", 256 * a256 + a4k, 256 * c256 + c4k),
    ]
    print(f"| {'what':<46} | {'analytic GFLOP':>14} | {'FlopCounterMode GFLOP':>21} | {'ratio':>6} |")
    print(f"|{'-' * 48}|{'-' * 16}|{'-' * 23}|{'-' * 8}|")
    for name, a, c in rows:
        print(f"| {name:<46} | {a / 1e9:>14.3f} | {c / 1e9:>21.3f} | {c / a:>6.3f} |")
    print("\nMFU = (region FLOPs x regions/s) / the device's peak FLOP/s in the compute dtype.")
    if save:
        _save("region_encoder_flops", [{"what": n, "analytic GFLOP": round(a / 1e9, 3),
                                        "FlopCounterMode GFLOP": round(c / 1e9, 3)} for n, a, c in rows],
              title="FLOPs per level (2 x multiply-adds)",
              notes="FlopCounterMode run with explicit attention (it does not count the CPU SDPA kernel)")


# -------------------------------------------------------------------------------------- throughput
def naive_encode(vit256: torch.nn.Module, vit4k: torch.nn.Module, region: torch.Tensor, p: int = 256) -> torch.Tensor:
    """Baseline: one region ``[3, H, W]`` uint8, fp32, its patches one by one in a Python loop."""
    _, h, w = region.shape
    feats = []
    for r in range(h // p):
        for c in range(w // p):
            patch = normalize(region[:, r * p : (r + 1) * p, c * p : (c + 1) * p].unsqueeze(0))
            feats.append(vit256(patch))
    grid = torch.cat(feats).reshape(h // p, w // p, -1).permute(2, 0, 1).unsqueeze(0)
    return vit4k(grid)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_once(fn, n_regions: int, device: torch.device) -> float:
    """Regions/s of one call of ``fn()`` (which encodes ``n_regions``)."""
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return n_regions / (time.perf_counter() - t0)


def throughput(args: argparse.Namespace) -> None:
    device = torch.device(args.device)
    torch.manual_seed(0)
    v256 = (vit256_tiny() if args.tiny else vit256_small()).eval().to(device)
    v4k = (vit4k_tiny(input_embed_dim=v256.embed_dim) if args.tiny else vit4k_xs()).eval().to(device)
    size = args.region_size
    n = args.regions
    regions = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, device=device)
    g = size // 256
    enc = HIPT4K(v256, v4k, patch_batch=args.patch_batch).eval()
    region_flops = enc.flops(size)

    print(f"\n## Region-encoder throughput: {size}-px regions ({g * g} patches of 256 px), "
          f"{'tiny' if args.tiny else 'ViT-S/16 + ViT-XS'}, {n} regions per measurement, device {device}, "
          f"median of {args.rounds} interleaved rounds\n")

    def naive():
        for i in range(n):
            naive_encode(v256, v4k, regions[i])

    def batched(bs: int, dtype: str):
        def fn():
            ctx = torch.autocast(device.type, dtype=torch.bfloat16) if dtype == "bf16" else _null()
            with ctx:
                for i in range(0, n, bs):
                    enc(regions[i : i + bs])
        return fn

    variants = [("naive: 1 region, patches one by one, fp32", naive)]
    variants += [(f"HIPT4K {dtype}, {bs} region(s) per call", batched(bs, dtype))
                 for dtype in args.dtypes for bs in args.batch_sizes]
    speeds: dict[str, list[float]] = {name: [] for name, _ in variants}
    with torch.inference_mode():
        for _, fn in variants:  # warm-up (kernels, allocator, autocast caches)
            fn()
        # interleaved rounds: a change of load on a shared machine hits every variant alike
        for _ in range(args.rounds):
            for name, fn in variants:
                speeds[name].append(time_once(fn, n, device))
    results = [(name, statistics.median(v)) for name, v in speeds.items()]
    base = results[0][1]

    print(f"| {'variant':<44} | {'regions/s':>9} | {'vs naive':>8} | {'TFLOP/s':>8} | {'spread':>7} |")
    print(f"|{'-' * 46}|{'-' * 11}|{'-' * 10}|{'-' * 10}|{'-' * 9}|")
    for name, rps in results:
        v = speeds[name]
        spread = (max(v) - min(v)) / rps
        print(f"| {name:<44} | {rps:>9.3f} | {rps / base:>7.2f}x | {rps * region_flops / 1e12:>8.3f} | {spread:>6.0%} |")
    best_bf16 = max((r for name, r in results if "bf16" in name), default=None)
    if best_bf16 is not None:
        verdict = "PASS" if best_bf16 / base >= 1.8 else "FAIL"
        print(f"\nacceptance (best bf16 >= 1.8x naive fp32): {best_bf16 / base:.2f}x {verdict}")
    print("spread = (max - min) / median over the rounds")
    if args.save:
        _save("region_encoder", [{"variant": name, "regions/s": round(rps, 4), "vs naive": round(rps / base, 2),
                                  "TFLOP/s": round(rps * region_flops / 1e12, 4)} for name, rps in results],
              title=f"Region encoder throughput, {size}-px regions ({'tiny models' if args.tiny else 'ViT-S/16 + ViT-XS'})",
              notes=f"device {device}; random weights; {n} regions per measurement, median of {args.rounds} "
                    "interleaved rounds; naive = one region at a time, fp32, patches one by one; "
                    "bf16 = torch.autocast(bfloat16); shared machine: read the ratios")


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


# ------------------------------------------------------------------------------------------ memory
_CHILD = r"""
import sys, torch
torch.set_num_threads(1)
from hipt.features import extract_slide
from hipt.models import HIPT4K, vit256_tiny, vit4k_tiny


def status(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key + ":"))


torch.manual_seed(0)
enc = HIPT4K(vit256_tiny(), vit4k_tiny()).eval()
with torch.inference_mode():  # warm up allocator and kernels on one region
    enc(torch.zeros(1, 3, int(sys.argv[4]), int(sys.argv[4]), dtype=torch.uint8))
with open("/proc/self/clear_refs", "w") as f:  # reset the peak (VmHWM) to the current RSS
    f.write("5")
before = status("VmRSS")
extract_slide(None, sys.argv[1], sys.argv[2], enc, batch_regions=int(sys.argv[3]), progress=False)
print(before, status("VmHWM"))
"""


def memory(args: argparse.Namespace) -> None:
    from hipt.phantom import make_slide
    from hipt.tiling import patch_slide

    size = args.mem_region_size
    cells = size // 256
    print(f"\n## Peak memory of extract_slide (tiny models, {size}-px regions, fresh process each, 1 thread)\n")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        slides = {}
        for k in (args.mem_regions, 2 * args.mem_regions):
            import numpy as np

            layout = np.ones((cells, k * cells), dtype=np.int64)  # one row of k regions of tumour
            layout[:, ::3] = 2
            path = make_slide(tmp / f"s{k}.tif", layout=layout, seed=k).path
            res = patch_slide(path, tmp / "patch", region_size=size, patch_size=256, min_tissue=0.0)
            slides[k] = res.coords_path
        rows: list[dict] = []
        print(f"| {'regions in slide':>16} | {'region batch':>12} | {'RSS before (MiB)':>16} | "
              f"{'peak RSS (MiB)':>14} | {'increase (MiB)':>14} |")
        print(f"|{'-' * 18}|{'-' * 14}|{'-' * 18}|{'-' * 16}|{'-' * 16}|")
        for k, coords in slides.items():
            for bs in args.mem_batches:
                out = tmp / f"f{k}_{bs}.h5"
                proc = subprocess.run([sys.executable, "-c", _CHILD, str(coords), str(out), str(bs), str(size)],
                                      capture_output=True, text=True, env=os.environ | {"OMP_NUM_THREADS": "1"})
                if proc.returncode:
                    print(proc.stderr[-2000:])
                    continue
                before, after = (int(v) / 1024 for v in proc.stdout.split()[-2:])
                print(f"| {k:>16} | {bs:>12} | {before:>16.0f} | {after:>14.0f} | {after - before:>14.0f} |")
                rows.append({"regions in slide": k, "region batch": bs, "RSS before (MiB)": round(before),
                             "peak RSS (MiB)": round(after), "increase (MiB)": round(after - before)})
    if args.save and rows:
        _save("region_encoder_memory", rows, title=f"Peak memory of extract_slide ({size}-px regions, tiny models)",
              notes="fresh process per row, 1 thread; the increase grows with the region batch, not the slide")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--quick", action="store_true", help="1024-px regions, 2 per measurement, batches 1 and 2")
    p.add_argument("--flops", action="store_true", help="only the FLOPs table")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--tiny", action="store_true", help="tiny models instead of ViT-S/16 + ViT-XS")
    p.add_argument("--region-size", type=int, default=4096)
    p.add_argument("--regions", type=int, default=4, help="regions per timed measurement")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    p.add_argument("--patch-batch", type=int, default=256)
    p.add_argument("--rounds", type=int, default=3, help="interleaved measurement rounds (median reported)")
    p.add_argument("--no-memory", action="store_true")
    p.add_argument("--no-throughput", action="store_true")
    p.add_argument("--mem-region-size", type=int, default=2048)
    p.add_argument("--mem-batches", type=int, nargs="+", default=[1, 4], help="region batches for the memory table")
    p.add_argument("--mem-regions", type=int, default=4)
    p.add_argument("--save", action="store_true", help="write benchmarks/results/region_encoder*.json")
    args = p.parse_args(argv)
    print(f"# bench_region_encoder\n\nmachine: {machine()}")
    if args.flops:
        flops_report(args.save)
        return
    if args.quick:
        args.region_size, args.regions, args.batch_sizes = 1024, 2, [1, 2]
    if not args.no_throughput:
        throughput(args)
    if not args.no_memory:
        memory(args)
    print("\n(noisy on a shared machine: compare ratios within one run)")


if __name__ == "__main__":
    main()
