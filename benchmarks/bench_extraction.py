"""Extraction benchmark: a slide file to features, the parallel reader against a serial one, and the
pipeline against a reference-style loop, all measured in the same run.

Run by hand (not part of the tests)::

    python benchmarks/bench_extraction.py --quick               # a few minutes on 2 CPU cores
    python benchmarks/bench_extraction.py --slide my.svs        # your slide (its regions found by hipt patch)
    python benchmarks/bench_extraction.py --tcga-size --save    # phantom of a TCGA slide's size

For each slide (a phantom written here, a ``--slide`` given, and the real sample slides of
``../shared/data/slides`` when present):

1. **Reader supply**: regions/s of :class:`hipt.features.RegionReader` reading and decoding the slide's
   4096-px regions with nothing else running: serial (``workers=0``, one region after the other), and
   ``--workers`` threads and processes, in interleaved rounds; the table gives each against the serial
   reader of the same round (median over rounds) and the CPU cores the process kept busy
   (CPU seconds / wall seconds, children included).  Acceptance for this project on 2 CPU cores:
   parallel ≥ 1.6× serial.
2. **End to end** (skipped by ``--no-encode``): :func:`hipt.features.extract_slide` with the parallel
   reader (its ``timing``: waiting for the reader, host-to-GPU copies, compute, writing), against a
   **reference-style loop** over the same regions: read a region, encode it in fp32 with all its patches
   in one batch (``patch_batch=256``), copy the features back, next region — what the reference's
   extraction does.  On a CPU with ``--model tiny`` (the full-size encoder takes ~15 s per region here).

The machine is shared: numbers move between runs; read the same-run ratios.  ``--save`` writes
``benchmarks/results/extraction.json``.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hipt.features import RegionDataset, RegionReader, extract_slide  # noqa: E402
from hipt.models import HIPT4K, vit4k_tiny, vit4k_xs, vit256_small, vit256_tiny  # noqa: E402

#: Slide side of a typical TCGA diagnostic slide's tissue area at 20x, for the phantom (about 40 tissue
#: regions of 4096 px at the default tissue threshold; TCGA averages ~39 per slide).
TCGA_SIZE = (40960, 32768)


# ------------------------------------------------------------------------------------------ inputs
def make_phantom(dest: Path, size: tuple[int, int], seed: int = 0, maxworkers: int | None = None) -> Path:
    from hipt.phantom import make_slide

    return make_slide(dest / f"phantom_{size[0]}x{size[1]}.tif", size=size, seed=seed, maxworkers=maxworkers).path


def patch(slide: Path, out: Path, mpp: float | None = None) -> Path:
    """The slide's 4096-px regions (``hipt patch`` defaults); returns the coords file."""
    from hipt.tiling import patch_slide

    return patch_slide(slide, out, mpp=mpp).coords_path


def shared_slides() -> list[tuple[Path, float | None, str]]:
    """The real sample slides: (path, mpp override, note).  TCGA-CR-7395 has no mpp in its metadata;
    the data README calls it roughly 2 µm/px, an assumption named in the results."""
    from hipt.paths import shared_data_dir

    d = shared_data_dir()
    if d is None or not (d / "slides").is_dir():
        return []
    out = []
    for p in sorted((d / "slides").glob("*.svs")):
        if p.name.startswith("TCGA-CR-7395"):
            out.append((p, 2.0, "real TCGA (downsampled), mpp 2.0 assumed"))
        else:
            out.append((p, None, "real (OpenSlide test slide)"))
    return out


class Repeated(RegionDataset):
    """A slide's regions read ``times`` over (small real slides hold one or two regions)."""

    def __init__(self, coords_h5: Path, times: int) -> None:
        super().__init__(coords_h5)
        self.base, self.times = len(self.rc), times

    def __len__(self) -> int:
        return self.base * self.times

    def read_hwc(self, i: int, out: torch.Tensor | None = None) -> torch.Tensor:
        return super().read_hwc(i % self.base, out)


def subset_coords(src: Path, dst: Path, k: int) -> Path:
    """A coords file with the first ``k`` regions of ``src`` (same attributes)."""
    import h5py

    with h5py.File(src, "r") as f, h5py.File(dst, "w") as g:
        for name in f:
            d = g.create_dataset(name, data=f[name][:k])
            for a, v in f[name].attrs.items():
                d.attrs[a] = v
        for a, v in f.attrs.items():
            g.attrs[a] = v
    return dst


def cpu_seconds() -> float:
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


# ------------------------------------------------------------------------------------------ reading
def reader_pass(ds: RegionDataset, workers: int, backend: str, batch: int = 1, pin: bool = False) -> tuple[float, float]:
    """(regions/s, CPU cores busy) of one pass of a :class:`RegionReader` over ``ds``, nothing else running."""
    t, c = time.perf_counter(), cpu_seconds()
    n = 0
    for _, b in RegionReader(ds, batch, workers, backend=backend, pin=pin):
        n += b.shape[0]
    wall = time.perf_counter() - t
    return n / wall, (cpu_seconds() - c) / wall


def reader_table(ds: RegionDataset, label: str, workers: list[int], backends: list[str], rounds: int,
                 pin: bool = False) -> list[dict]:
    variants = [("serial", 0, "thread")] + [(f"{b} x{w}", w, b) for w in workers for b in backends]
    reader_pass(ds, 0, "thread")  # warm the page cache and the libraries
    speed: dict[str, list[float]] = {v[0]: [] for v in variants}
    busy: dict[str, list[float]] = {v[0]: [] for v in variants}
    for r in range(rounds):  # interleaved: a change of load hits every variant of a round alike
        for name, w, b in variants:
            rps, cores = reader_pass(ds, w, b, pin=pin)
            speed[name].append(rps)
            busy[name].append(cores)
            print(f"  round {r}: {label} reader {name}: {rps:.2f} regions/s, {cores:.2f} cores busy", flush=True)
    rows = []
    for name, w, b in variants:
        ratios = [s / base for s, base in zip(speed[name], speed["serial"])]
        rows.append({"slide": label, "what": f"reader alone, {name}", "workers": w,
                     "regions/s": round(statistics.median(speed[name]), 3),
                     "vs serial (median of rounds)": round(statistics.median(ratios), 2),
                     "cores busy": round(statistics.median(busy[name]), 2)})
    return rows


# ------------------------------------------------------------------------------------------ encoding
def build_model(kind: str) -> HIPT4K:
    torch.manual_seed(0)
    if kind == "tiny":
        return HIPT4K(vit256_tiny(), vit4k_tiny(), patch_batch=256).eval()
    return HIPT4K(vit256_small(), vit4k_xs(), patch_batch=256).eval()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reference_loop(coords: Path, model: HIPT4K, device: torch.device, limit: int | None = None) -> float:
    """Regions/s of the reference-style loop: read one region, encode it in fp32 (all its patches in one
    batch), features back to the host, next region."""
    ds = RegionDataset(coords)
    model = model.to(device)
    n = len(ds) if limit is None else min(limit, len(ds))
    sync(device)
    t = time.perf_counter()
    with torch.inference_mode():
        for i in range(n):
            x = ds[i].unsqueeze(0).to(device)
            out = model(x)
            out.patches.cpu().numpy(), out.region.cpu().numpy()
    sync(device)
    ds.close()
    return n / (time.perf_counter() - t)


def pipeline(coords: Path, out: Path, model: HIPT4K, device: torch.device, *, dtype: str, workers: int,
             backend: str, batch: int, compile: bool = False) -> dict:
    """One :func:`extract_slide` run: regions/s end to end (wall of the whole call) and its timing split."""
    out.unlink(missing_ok=True)
    sync(device)
    t = time.perf_counter()
    res = extract_slide(None, coords, out, model, batch_regions=batch, workers=workers, reader=backend, dtype=dtype,
                        device=device, progress=False, overwrite=True, compile=compile)
    sync(device)
    wall = time.perf_counter() - t
    return {"regions/s": res.n_regions / wall, "n": res.n_regions, "wall": wall, **res.timing}


def e2e_rows(label: str, coords: Path, tmp: Path, model: HIPT4K, device: torch.device, *, dtype: str,
             workers: int, backend: str, batch: int, ref_limit: int | None) -> list[dict]:
    ref = reference_loop(coords, model, device, ref_limit)
    print(f"  {label}: reference-style loop (fp32, 1 region per call, serial read): {ref:.3f} regions/s", flush=True)
    p = pipeline(coords, tmp / "bench.h5", model, device, dtype=dtype, workers=workers, backend=backend, batch=batch)
    print(f"  {label}: pipeline {dtype}, {backend} x{workers}, batch {batch}: {p['regions/s']:.3f} regions/s "
          f"(wait for reader {p['wait_read']:.1f} s, h2d {p['h2d']:.2f} s, compute {p['compute']:.1f} s, "
          f"write {p['write']:.2f} s, loop {p['wall']:.1f} s)", flush=True)
    return [
        {"slide": label, "what": "reference-style loop: serial read, fp32, 1 region per call", "workers": 0,
         "regions/s": round(ref, 3), "vs reference loop": 1.0},
        {"slide": label, "what": f"pipeline: {backend} reader, {dtype}, batch {batch}", "workers": workers,
         "regions/s": round(p["regions/s"], 3), "vs reference loop": round(p["regions/s"] / ref, 2),
         "wait for reader s": round(p["wait_read"], 2), "h2d s": round(p["h2d"], 3),
         "compute s": round(p["compute"], 2), "write s": round(p["write"], 3)},
    ]


# ------------------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> None:
    from hipt.provenance import hardware, machine_summary

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--slide", type=Path, default=None, help="a slide of yours (read at its own mpp)")
    p.add_argument("--phantom-size", type=int, nargs=2, default=[16384, 12288], metavar=("W", "H"))
    p.add_argument("--tcga-size", action="store_true", help=f"phantom of {TCGA_SIZE[0]}x{TCGA_SIZE[1]} px")
    p.add_argument("--no-phantom", action="store_true")
    p.add_argument("--no-shared", action="store_true", help="skip the real sample slides")
    p.add_argument("--workers", type=int, nargs="+", default=[2])
    p.add_argument("--backends", nargs="+", default=["thread", "process"], choices=["thread", "process"])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--min-regions", type=int, default=8, help="small slides are read over until this many regions")
    p.add_argument("--no-encode", action="store_true", help="reader table only")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--model", choices=["tiny", "small"], default=None,
                   help="encoder (default: small = ViT-S/16 + ViT-XS on a GPU, tiny on a CPU)")
    p.add_argument("--dtype", default=None, help="pipeline precision (default: auto)")
    p.add_argument("--batch", type=int, default=None, help="regions per batch (default 4 on a GPU, 1 on a CPU)")
    p.add_argument("--e2e-regions", type=int, default=None,
                   help="end to end on the first N regions (default: all on a GPU, 4 on a CPU)")
    p.add_argument("--quick", action="store_true", help="2 rounds, phantom 12288x8192, 2 regions end to end")
    p.add_argument("--save", action="store_true", help="write benchmarks/results/extraction.json")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    if args.quick:
        args.rounds, args.phantom_size, args.e2e_regions = 2, [12288, 8192], args.e2e_regions or 2
    model_kind = args.model or ("small" if gpu else "tiny")
    dtype = args.dtype or "auto"
    batch = args.batch or (4 if gpu else 1)
    e2e_limit = args.e2e_regions if args.e2e_regions is not None else (None if gpu else 4)
    size = TCGA_SIZE if args.tcga_size else tuple(args.phantom_size)
    load0 = os.getloadavg()
    print(f"# bench_extraction\n\nmachine: {machine_summary()}\nload average at start: {load0[0]:.1f}\n", flush=True)

    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        slides: list[tuple[Path, float | None, str]] = []
        if not args.no_phantom:
            t = time.perf_counter()
            slides.append((make_phantom(tmp, size), None, f"phantom {size[0]}x{size[1]}"))
            print(f"phantom written in {time.perf_counter() - t:.0f} s", flush=True)
        if args.slide is not None:
            slides.append((args.slide, None, args.slide.name))
        if not args.no_shared:
            slides += shared_slides()
        model = None if args.no_encode else build_model(model_kind)
        for k, (slide, mpp, note) in enumerate(slides):
            try:
                coords = patch(slide, tmp / f"patch{k}", mpp=mpp)
            except Exception as e:  # noqa: BLE001 - a slide without regions is reported, the others go on
                print(f"{slide.name}: no regions ({e})")
                continue
            n = len(RegionDataset(coords))
            label = f"{slide.name} ({note}, {n} regions)"
            times = max(1, -(-args.min_regions // n))
            print(f"\n## {label}" + (f", read {times}x over" if times > 1 else ""), flush=True)
            ds = Repeated(coords, times)
            rows += reader_table(ds, label, args.workers, args.backends, args.rounds, pin=gpu)
            if model is not None:
                sub = coords if e2e_limit is None or e2e_limit >= n else subset_coords(coords, tmp / f"sub{k}.h5", e2e_limit)
                rows += e2e_rows(label, sub, tmp, model, device, dtype=dtype, workers=max(args.workers),
                                 backend=args.backends[0], batch=batch, ref_limit=e2e_limit)
    load1 = os.getloadavg()
    keys = ["slide", "what", "workers", "regions/s", "vs serial (median of rounds)", "cores busy", "vs reference loop",
            "wait for reader s", "h2d s", "compute s", "write s"]
    rows = [{k: r.get(k) for k in keys} for r in rows]
    print(f"\n| {' | '.join(keys)} |\n|{'---|' * len(keys)}")
    for r in rows:
        print("| " + " | ".join("–" if r[k] is None else str(r[k]) for k in keys) + " |")
    parallel = [r["vs serial (median of rounds)"] for r in rows
                if r["what"].startswith("reader alone") and r["workers"] and r["slide"].startswith("phantom")]
    verdict = ""
    if parallel:
        best = max(parallel)
        verdict = f"best parallel reader on the phantom {best:.2f}x serial: {'PASS' if best >= 1.6 else 'FAIL'} (target >= 1.6x)"
        print("\nacceptance: " + verdict)
    print(f"load average at start {load0[0]:.1f}, at end {load1[0]:.1f} ({os.cpu_count()} CPUs)")
    if args.save:
        from hipt.provenance import write_benchmark_result

        notes = (f"device {device}; encoder {model_kind} ({'ViT-S/16 + ViT-XS' if model_kind == 'small' else 'tiny'}, "
                 f"random weights), pipeline dtype {dtype}, batch {batch}; end to end on "
                 f"{'all' if e2e_limit is None else f'the first {e2e_limit}'} regions; reader rows: median of "
                 f"{args.rounds} interleaved rounds, ratios within each round; cores busy = CPU s / wall s; "
                 f"load average {load0[0]:.1f} at start, {load1[0]:.1f} at end on {os.cpu_count()} CPUs "
                 f"(other jobs share the machine when it exceeds the CPU count); {verdict}")
        dest = write_benchmark_result("extraction" if not gpu else "extraction_gpu", rows,
                                      title="Extraction: parallel reader vs serial, pipeline vs reference-style loop",
                                      notes=notes, hardware_info=hardware())
        print(f"wrote {dest}")


if __name__ == "__main__":
    main()
