"""Stage-1 multi-crop augmentation: per-image torchvision transforms vs the batched colour half.

DINO's augmentation draws 2 global + 8 local views per patch, each with colour jitter (in a random
order), grayscale, Gaussian blur and solarization.  Done per image with torchvision transforms v2 (the
baseline, built here exactly as ``hipt`` did before the split), the CPU spends more time on it than
the ``cpu-tiny`` ViT spends on the training step.  :class:`hipt.pretrain.PatchMultiCrop` now draws the
crops and all random parameters per patch (:meth:`~hipt.pretrain.PatchMultiCrop.geometric`) and runs the
colour work once per batch (:meth:`~hipt.pretrain.PatchMultiCrop.photometric`), which the trainer does
in its loop.  Both are measured here in the same run, on the same phantom patches, at the ``cpu-tiny``
sizes (128-px patches → 96/48-px crops) and optionally at the paper's (256 → 224/96).

    .venv/bin/python benchmarks/bench_augment.py            # ≈ 1 min on 2 cores
    .venv/bin/python benchmarks/bench_augment.py --paper    # adds the paper's sizes (≈ 3 min)

Writes ``benchmarks/results/augment.json``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torchvision.transforms import InterpolationMode, v2

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hipt.phantom import phantom_patches  # noqa: E402
from hipt.pretrain import PatchMultiCrop  # noqa: E402
from hipt.pretrain.augment import _seeded, normalization_stats, to_chw_uint8  # noqa: E402
from hipt.pretrain.data import collate_crops  # noqa: E402
from hipt.provenance import machine_summary, write_benchmark_result  # noqa: E402


def torchvision_multicrop(global_size: int, local_size: int, n_local: int, normalization: str = "hipt"):
    """The per-image baseline: DINO's ``DataAugmentationDINO`` in torchvision transforms v2."""
    mean, std = normalization_stats(normalization)
    normalize = v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)])
    jitter = v2.Compose([v2.RandomHorizontalFlip(p=0.5),
                         v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8), v2.RandomGrayscale(p=0.2)])

    def blur(p):
        return v2.RandomApply([v2.GaussianBlur(13, sigma=(0.1, 2.0))], p=p)

    def rrc(size, scale):
        return v2.RandomResizedCrop(size, scale=scale, interpolation=InterpolationMode.BICUBIC, antialias=True)

    g1 = v2.Compose([rrc(global_size, (0.4, 1.0)), jitter, blur(1.0), normalize])
    g2 = v2.Compose([rrc(global_size, (0.4, 1.0)), jitter, blur(0.1), v2.RandomSolarize(128, p=0.2), normalize])
    loc = v2.Compose([rrc(local_size, (0.05, 0.4)), jitter, blur(0.5), normalize])

    def run(img, seed):
        x = to_chw_uint8(img)
        with _seeded(seed):
            return [g1(x), g2(x)] + [loc(x) for _ in range(n_local)]

    return run


def measure(patch: int, global_size: int, local_size: int, batch: int, n_batches: int) -> list[dict]:
    imgs, _ = phantom_patches(batch, seed=5, size=patch)
    base = torchvision_multicrop(global_size, local_size, 8)
    ours = PatchMultiCrop(global_size, local_size, 8, normalization="hipt", defer_photometric=True)
    base(imgs[0], 0), ours(imgs[0], 0)  # warm-up

    def time_it(fn) -> float:
        t0 = time.perf_counter()
        for b in range(n_batches):
            fn(b)
        return (time.perf_counter() - t0) / n_batches

    def baseline(b):
        collate_crops([base(im, b * batch + i) for i, im in enumerate(imgs)])

    geo = {}

    def geometric(b):
        geo["batch"] = collate_crops([ours(im, b * batch + i) for i, im in enumerate(imgs)])

    def photometric(b):
        ours.photometric(geo["batch"][:-1], geo["batch"][-1])

    t_base = time_it(baseline)
    t_geo = time_it(geometric)
    t_photo = time_it(photometric)
    size = f"{patch} px → {global_size}/{local_size} px"
    return [
        {"sizes": size, "pipeline": "torchvision v2, per image (baseline)", "batch": batch,
         "ms_per_batch": round(1000 * t_base, 1), "patches_per_s": round(batch / t_base, 1), "speedup": 1.0},
        {"sizes": size, "pipeline": "hipt: per-patch crops + batched colour", "batch": batch,
         "ms_per_batch": round(1000 * (t_geo + t_photo), 1), "patches_per_s": round(batch / (t_geo + t_photo), 1),
         "speedup": round(t_base / (t_geo + t_photo), 2)},
        {"sizes": size, "pipeline": "  of which per-patch crops (data loader)", "batch": batch,
         "ms_per_batch": round(1000 * t_geo, 1), "patches_per_s": round(batch / t_geo, 1), "speedup": None},
    ]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--paper", action="store_true", help="also the paper's sizes (256-px patches, 224/96 crops)")
    ap.add_argument("--batches", type=int, default=5)
    ap.add_argument("--no-record", action="store_true", help="do not write benchmarks/results/")
    args = ap.parse_args(argv)
    print(f"machine: {machine_summary()}, torch threads {torch.get_num_threads()}")
    rows = measure(128, 96, 48, 32, args.batches)
    if args.paper:
        rows += measure(256, 224, 96, 32, max(1, args.batches // 2))
    for r in rows:
        print(f"{r['sizes']:>24s}  {r['pipeline']:<42s} {r['ms_per_batch']:8.1f} ms/batch  {r['patches_per_s']:7.1f} "
              f"patches/s  speedup {r['speedup'] if r['speedup'] is not None else '':}")
    if not args.no_record:
        path = write_benchmark_result(
            "augment", rows, title="Stage-1 multi-crop augmentation (2 global + 8 local views per patch)",
            notes=f"CPU, {torch.get_num_threads()} torch threads; batch of 32 phantom patches; the same views "
                  "and parameter distributions in both pipelines (tests/test_pretrain.py checks each colour "
                  "operation against torchvision's)")
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
