"""One prepared GPU session (run by hand on a lent GPU; never part of CI).

1. bf16 vs fp32 correctness of the full-size region encoder (ViT-S/16 + ViT-XS, random weights) on
   phantom 4096-px regions: cosine similarity of region and patch tokens.
2. Region-encoder throughput (regions/s) in fp32 and bf16 at several region batches, a naive baseline
   (one region, patches one by one, fp32) in the same run, and model FLOP utilisation (MFU) against the
   bf16 matmul peak measured in the same run.
3. A short stage-1 DINO run at the ``paper`` preset (ViT-S/16, 224/96 crops, out_dim 65536) in bf16 on
   phantom patches: images/s and peak GPU memory.
4. Precision that follows the hardware (:mod:`hipt.precision`): one fine-tuning epoch (HIPT with its
   ViT-4K fine-tuned, and TransMIL, on synthetic ViT-S-sized features) and a few stage-1 DINO steps (the
   cpu-tiny model) with precision ``auto``, ``fp16`` (gradient scaler), ``bf16`` where the GPU has it
   natively, and ``fp32`` for comparison; then the ``paper`` preset's own fp16 for a few steps.  Records
   what each request resolved to, the printed line, the losses (all finite?) and the final loss scale.

Writes ``$OUT/gpu_check.json`` (or ``benchmarks/results/gpu_check.json`` with ``--save``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hipt.models import HIPT4K, vit4k_xs, vit256_small  # noqa: E402
from hipt.precision import describe, native_bf16, resolve_precision  # noqa: E402


def sync():
    torch.cuda.synchronize()


def matmul_peak(n: int = 8192, iters: int = 20) -> float:
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    sync()
    t = time.perf_counter()
    for _ in range(iters):
        a @ b
    sync()
    return 2 * n**3 * iters / (time.perf_counter() - t)


def phantom_regions(n: int, size: int = 4096) -> torch.Tensor:
    """``n`` H&E-like regions ``[n, 3, size, size]`` uint8 tiled from phantom patches (no slide I/O)."""
    from hipt.phantom import phantom_patches

    g = size // 256
    imgs, _ = phantom_patches(64, seed=0, size=256)
    rng = np.random.default_rng(0)
    out = np.empty((n, size, size, 3), np.uint8)
    for k in range(n):
        idx = rng.integers(0, len(imgs), (g, g))
        out[k] = imgs[idx].transpose(0, 2, 1, 3, 4).reshape(size, size, 3)
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


def finetune_bags(root: Path, n: int = 16, seed: int = 0) -> dict[str, str]:
    """``n`` synthetic slides of ViT-S-sized features (2-4 regions of 256 patch tokens, class 1 shifted),
    their table and split files: a fine-tuning task as :class:`hipt.tasks.train.FinetuneConfig` fields."""
    import h5py
    import pandas as pd

    from hipt.tasks.splits import make_splits

    rng = np.random.default_rng(seed)
    feats = root / "features"
    feats.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        m = int(rng.integers(2, 5))
        with h5py.File(feats / f"s{i}.h5", "w") as f:
            f["feats256"] = (rng.normal(size=(m, 256, 384)) + 0.5 * (i % 2)).astype(np.float16)
            f["feats4k"] = (rng.normal(size=(m, 192)) + 0.5 * (i % 2)).astype(np.float32)
            f["coords"] = (np.arange(2 * m).reshape(m, 2) * 4096).astype(np.int64)
    table = pd.DataFrame({"slide_id": [f"s{i}" for i in range(n)], "label": [i % 2 for i in range(n)],
                          "case_id": [f"c{i}" for i in range(n)]})
    table.to_csv(root / "table.csv", index=False)
    make_splits(table, 1, "subtype", seed=seed, out_dir=root / "splits", val_frac=0.25, test_frac=0.25)
    return {"features_dir": str(feats), "task": str(root / "table.csv"), "splits_dir": str(root / "splits")}


def precision_check(paper_steps: int = 10) -> dict:
    """Section 4: each precision request through fine-tuning and DINO pretraining on this GPU.

    Runs in a temporary folder, not under ``$OUT``: the paper preset's checkpoint is hundreds of MB.  A
    run that fails (e.g. a non-finite DINO loss, which stops training) is recorded with its error and
    the others go on, so that one failure does not cost the rest of the device time.
    """
    from hipt.pretrain import make_config, train
    from hipt.tasks.train import FinetuneConfig, train_fold

    requests = ["auto", "fp16"] + (["bf16"] if native_bf16("cuda") else []) + ["fp32"]
    report: dict = {"native_bf16": native_bf16("cuda"), "rows": []}
    out = Path(tempfile.mkdtemp(prefix="gpu_check_precision_"))
    task = finetune_bags(out / "bags")

    def record(what: str, requested: str, run) -> None:
        """``run()`` returns ``(losses, extra fields)``; the row says what the request resolved to."""
        r: dict = {"what": what, "requested": requested}
        t = time.perf_counter()
        try:
            r.update(resolved=resolve_precision(requested, "cuda"), printed=describe(requested, "cuda"))
            losses, extra = run()
            r.update(losses=[round(v, 4) for v in losses], finite=all(math.isfinite(v) for v in losses), **extra)
        except Exception as e:  # noqa: BLE001 - recorded, and the next run goes on
            r.update(finite=False, error=f"{type(e).__name__}: {e}")
        r["seconds"] = round(time.perf_counter() - t, 1)
        report["rows"].append(r)
        print(r, flush=True)

    def finetune(method: str, local: str, requested: str):
        cfg = FinetuneConfig(**task, method=method, hipt_local=local, max_epochs=1, accumulation=4, fractions=[1.0],
                             folds=[0], out=str(out / "finetune"), device="cuda", precision=requested, verbose=False)
        res = train_fold(cfg, 0, write=False)
        probs = res.predictions.filter(like="prob_").to_numpy()
        return res.history["loss"].tolist(), {"predictions_finite": bool(np.isfinite(probs).all())}

    def dino(cfg, dataset=None):
        result = train(cfg, dataset)
        ckpt = torch.load(Path(cfg.out_dir) / "checkpoint.pth", map_location="cpu", weights_only=False)
        return [r["loss"] for r in result.log], {"loss_scale": (ckpt.get("fp16_scaler") or {}).get("scale")}

    for requested in requests:
        for method, local in (("hipt", "finetune"), ("transmil", "frozen")):
            record(f"finetune {method} ({local}), 1 epoch", requested,
                   lambda method=method, local=local: finetune(method, local, requested))
        tiny = make_config(1, "cpu-tiny", n_phantom=128, steps_per_epoch=4, max_steps=8, checkpoint_every=10**9,
                           num_workers=4, precision=requested, device="cuda", progress=False,
                           out_dir=str(out / f"dino_tiny_{requested}"))
        record("DINO stage 1, cpu-tiny model, 8 steps", requested, lambda tiny=tiny: dino(tiny))
    # the paper preset's own precision (fp16, as the reference): ViT-S/16 and 65,536 prototypes
    # (the paper preset refuses phantom data unless they are passed explicitly: a speed check may)
    from hipt.phantom import phantom_patches
    from hipt.pretrain.data import ArrayPatches

    paper = make_config(1, "paper", batch_size_per_gpu=64, num_workers=8,
                        max_steps=paper_steps, checkpoint_every=10**9, progress=False, device="cuda",
                        out_dir=str(out / "dino_paper"))
    paper_data = ArrayPatches(phantom_patches(256, size=256)[0])
    record(f"DINO stage 1, paper preset, {paper_steps} steps", paper.precision, lambda: dino(paper, paper_data))
    report["all_finite"] = all(r["finite"] and r.get("predictions_finite", True) for r in report["rows"])
    return report


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dino-seconds", type=float, default=60)
    ap.add_argument("--dino-batch", type=int, default=128)
    ap.add_argument("--paper-fp16-steps", type=int, default=10, help="section 4: steps of the paper preset in fp16")
    ap.add_argument("--only-precision", action="store_true", help="run section 4 only (a few minutes less)")
    ap.add_argument("--save", action="store_true")
    args = ap.parse_args()
    res: dict = {"machine": torch.cuda.get_device_name(0), "torch": torch.__version__,
                 "date": time.strftime("%Y-%m-%d")}
    t0 = time.time()
    out_root = Path(os.environ.get("OUT", "/tmp"))
    if not args.only_precision:
        sections_1_to_3(args, res, t0)
    res["precision"] = precision_check(args.paper_fp16_steps)
    print("precision: all losses finite" if res["precision"]["all_finite"] else "precision: NON-FINITE losses", flush=True)
    res["total_s"] = round(time.time() - t0, 1)
    dest = out_root / "gpu_check.json"
    dest.write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))


def sections_1_to_3(args: argparse.Namespace, res: dict, t0: float) -> None:
    """bf16 correctness and throughput of the region encoder, then a short paper-preset DINO run (into ``res``)."""
    peak = matmul_peak()
    res["bf16_matmul_peak_tflops"] = round(peak / 1e12, 1)
    print("bf16 matmul peak TFLOP/s", res["bf16_matmul_peak_tflops"], flush=True)

    torch.manual_seed(0)
    v256, v4k = vit256_small().cuda().eval(), vit4k_xs().cuda().eval()
    enc = HIPT4K(v256, v4k, patch_batch=256).eval()
    regions = phantom_regions(4).cuda()
    print("regions", tuple(regions.shape), f"{time.time() - t0:.0f}s", flush=True)
    with torch.inference_mode():
        ref = enc(regions[:2])
        with torch.autocast("cuda", dtype=torch.bfloat16):
            low = enc(regions[:2])
    cos = torch.nn.functional.cosine_similarity
    res["bf16_vs_fp32"] = {
        "region_token_cos_min": float(cos(ref[0].float(), low[0].float(), dim=-1).min()),
        "patch_token_cos_min": float(cos(ref[1].float(), low[1].float(), dim=-1).min()),
    }
    print("bf16 vs fp32", res["bf16_vs_fp32"], flush=True)

    region_flops = enc.flops(4096)
    rows = []

    def timed(fn, n):
        fn()
        sync()
        t = time.perf_counter()
        fn()
        sync()
        return n / (time.perf_counter() - t)

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_region_encoder import naive_encode

    with torch.inference_mode():
        rps = timed(lambda: naive_encode(v256, v4k, regions[0]), 1)
        rows.append({"variant": "naive: 1 region, patches one by one, fp32", "regions/s": round(rps, 3)})
        for dtype in ("fp32", "bf16"):
            for bs in (1, 2, 4):
                def fn(bs=bs, dtype=dtype):
                    ctx = torch.autocast("cuda", dtype=torch.bfloat16) if dtype == "bf16" else torch.autocast("cuda", enabled=False)
                    with ctx:
                        for i in range(0, 4, bs):
                            enc(regions[i:i + bs])
                rps = timed(fn, 4)
                rows.append({"variant": f"HIPT4K {dtype}, {bs} region(s) per call", "regions/s": round(rps, 3)})
    base = rows[0]["regions/s"]
    for r in rows:
        r["vs naive"] = round(r["regions/s"] / base, 2)
        r["TFLOP/s"] = round(r["regions/s"] * region_flops / 1e12, 1)
        r["MFU vs bf16 peak"] = round(r["regions/s"] * region_flops / peak, 3)
        print(r, flush=True)
    res["region_encoder"] = rows
    res["region_gflops"] = round(region_flops / 1e9, 1)
    del enc, v256, v4k, regions
    torch.cuda.empty_cache()

    # -- stage-1 DINO, paper preset, short
    from hipt.pretrain import make_config, train

    out = Path(os.environ.get("OUT", "/tmp")) / "dino_paper"
    steps = 40
    from hipt.phantom import phantom_patches
    from hipt.pretrain.data import ArrayPatches

    cfg = make_config(1, "paper", batch_size_per_gpu=args.dino_batch,
                      precision="bf16", num_workers=12, out_dir=str(out), max_steps=steps, checkpoint_every=10**9,
                      progress=False, device="cuda", log_every=1)
    data = ArrayPatches(phantom_patches(512, size=256)[0])  # speed only: the paper preset refuses implicit phantom data
    torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    result = train(cfg, data)
    sync()
    wall = time.perf_counter() - t
    log = result.log
    times = [r.get("time") or r.get("elapsed") for r in log]
    res["dino_stage1_paper"] = {
        "batch": args.dino_batch, "steps": len(log), "wall_s_incl_data_and_startup": round(wall, 1),
        "images_per_s_incl_startup": round(len(log) * args.dino_batch / wall, 1),
        "peak_gpu_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
        "loss_first_last": [log[0].get("loss"), log[-1].get("loss")] if log else None,
        "log_keys": sorted(log[0].keys()) if log else [],
        "times": times[:3] + times[-3:] if times and times[0] is not None else None,
    }
    print(res["dino_stage1_paper"], flush=True)


if __name__ == "__main__":
    main()
