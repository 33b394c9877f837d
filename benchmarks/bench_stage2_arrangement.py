"""Does any CPU-sized stage-2 DINO run make the region token encode arrangement?

Chapter 4 finds that the ``cpu-tiny`` stage-2 ViT4K keeps little of the arrangement that the
``context`` cohort's labels depend on, although the stage-1 grids contain it (a k-means adjacency
reader recovers it).  This script retrains stage 2 with several variants and records, for each, the
linear-probe AUC (5-fold, grouped by slide) of "this region is informative" on the held-out context
cohort, next to the two references: mean-pooled patch tokens (cannot see arrangement) and the
adjacency counts of stage-1 token clusters (the ceiling).

Variants (``--variants`` picks a subset): ``base`` (the preset), ``long`` (100 epochs instead of 30),
``crops`` (global/local crops of 6/4 cells instead of 7/3), ``small-head`` (256 prototypes, the paper's
teacher temperature 0.04), ``more-regions`` (pretrain on the labelled survival cohort, 1.5x the regions).
The default runs the first four; name ``more-regions`` to add it (it extracts one more cohort).

Usage::

    python benchmarks/bench_stage2_arrangement.py                 # four variants, ~8 min on 2 cores
    python benchmarks/bench_stage2_arrangement.py --variants base long

Results: ``benchmarks/results/stage2_arrangement.json`` (shown in chapter 4).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hipt import zoo  # noqa: E402
from hipt.pretrain import make_config, read_log, train  # noqa: E402
from hipt.pretrain.evaluate import embed_grids, probe_auc, token_adjacency_features  # noqa: E402
from hipt.pretrain.export import region_grids, region_truth  # noqa: E402
from hipt.reproduce import write_benchmark_result  # noqa: E402

VARIANTS = {
    "base": {},
    "long": {"epochs": 100},
    "crops": {"global_crop_size": 6, "local_crop_size": 4},
    "small-head": {"out_dim": 256, "teacher_temp": 0.04, "warmup_teacher_temp": 0.04},
    "more-regions": {"_data": "survival"},
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variants", nargs="+", default=["base", "long", "crops", "small-head"], choices=list(VARIANTS))
    ap.add_argument("--out", default="data/runs/bench_stage2_arrangement", help="run folders (retrained each time)")
    ap.add_argument("--no-record", action="store_true", help="do not write benchmarks/results/")
    args = ap.parse_args(argv)

    ctx_dir = zoo.cohort_features("context", "cpu", progress=False)
    regions = region_truth(ctx_dir, zoo.cohort("context", "cpu", progress=False).table)
    regions = regions[regions["informative"].notna()].reset_index(drop=True)
    grids = region_grids(ctx_dir, regions)
    y = regions["informative"].astype(int).to_numpy()
    groups = regions["slide_id"].to_numpy()
    ref = probe_auc({"mean": grids.mean(axis=(2, 3)), "adjacency": token_adjacency_features(grids)}, y, groups)
    print(f"references: mean pooling {ref['mean']:.3f}, adjacency ceiling {ref['adjacency']:.3f}", flush=True)
    rows = []
    for name in args.variants:
        ov = dict(VARIANTS[name])
        data = ov.pop("_data", None)
        if data == "survival":
            src = zoo.cohort_features("survival", "cpu", progress=False)
        else:
            src = zoo.pretraining_features("cpu", progress=False)
        out = Path(args.out) / name
        if (out / "checkpoint.pth").is_file():
            (out / "checkpoint.pth").unlink()  # retrain: the time is part of the record
        cfg = make_config(2, "cpu-tiny", data=str(src), out_dir=str(out), progress=False, **ov)
        t0 = time.perf_counter()
        result = train(cfg)
        train_s = time.perf_counter() - t0
        log = read_log(result.out_dir)
        auc = probe_auc({"dino": embed_grids(result.teacher, grids)}, y, groups)["dino"]
        rows.append({"variant": name, "changes": ", ".join(f"{k}={v}" for k, v in VARIANTS[name].items()) or "preset",
                     "steps": len(log), "final loss": round(float(log["loss"].iloc[-1]), 3),
                     "probe AUC, DINO ViT4K": round(auc, 3), "probe AUC, mean pooling": round(ref["mean"], 3),
                     "probe AUC, adjacency ceiling": round(ref["adjacency"], 3), "train s": round(train_s, 1)})
        print(rows[-1], flush=True)
    if not args.no_record:
        path = write_benchmark_result(
            "stage2_arrangement", rows, title="Stage-2 DINO variants: is arrangement in the region token?",
            command="bench_stage2_arrangement.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            notes="linear-probe AUC (5-fold, grouped by slide) of 'informative region' on the context cohort "
                  "(cpu preset); stage-1 model and features from hipt.zoo")
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    torch.manual_seed(0)
    np.random.seed(0)
    raise SystemExit(main())
