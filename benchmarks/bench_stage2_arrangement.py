"""Does any CPU-sized stage-2 DINO run make the region token encode arrangement?

Chapter 4 asks whether the ``cpu-tiny`` stage-2 ViT4K's region token reads the arrangement that the
``context`` cohort's labels depend on (the stage-1 grids hold it: a k-means adjacency reader recovers
it), and whether DINO or the network at initialization does the reading.  This script retrains stage 2
with several variants and records, for each, the
linear-probe AUC (5-fold, grouped by slide) of "this region is informative" on the held-out context
cohort, next to the two references: mean-pooled patch tokens (cannot see arrangement) and the
adjacency counts of stage-1 token clusters (the ceiling).

Variants (``--variants`` picks a subset): ``base`` (the preset), ``long`` (100 epochs instead of 30),
``crops`` (global/local crops of 6/4 cells instead of 7/3), ``small-head`` (256 prototypes, the paper's
teacher temperature 0.04), ``more-regions`` (pretrain on the labelled survival cohort, 1.5x the regions),
``token-bank`` (pretrain on 4,096 distinct regions built from the pretraining cohort's real tokens,
:func:`hipt.phantom.ground_truth.token_bank`: ``context_region`` layouts, half informative, every cell a random
real token of its tissue; 600 steps, a 1,024-prototype head with 512 hidden units, base LR 2e-3),
``sincos`` (2-D sine-cosine position embeddings at init: ``pos_embed_init="sincos"``, the ``cpu-tiny``
preset's since it was measured here), ``trunc-normal`` (the reference's trunc-normal std 0.02, the
preset's before).  The default runs all but ``more-regions`` (which extracts one more cohort) and
``trunc-normal``.  Each variant is also probed at its initialization (the same seed, before training), which
separates what DINO learned from what the architecture gives for free.

Every variant is probed three ways: on the context cohort's region grids (the book's question); on the
same grids with each slide's mean token removed (:func:`hipt.pretrain.evaluate.slide_centred`: how much
of the failure is the per-slide stain and texture shift); and on 1,000 held-out token-bank regions (no
slide shift; the arrangement is the only structure).

Usage::

    python benchmarks/bench_stage2_arrangement.py                 # six variants, ~12 min on 2 cores
    python benchmarks/bench_stage2_arrangement.py --variants base long

Results: ``benchmarks/results/stage2_arrangement.json`` (shown in the appendix "Designing the phantom
experiments", ``book/appendix_phantom_design.md``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hipt.book import zoo  # noqa: E402
from hipt.phantom import context_region  # noqa: E402
from hipt.phantom.ground_truth import bank_grids, region_grids, region_truth, token_bank  # noqa: E402
from hipt.pretrain import make_config, read_log, train  # noqa: E402
from hipt.pretrain.augment import tokens_to_grid  # noqa: E402
from hipt.pretrain.data import FeatureGrids  # noqa: E402
from hipt.pretrain.evaluate import embed_grids, probe_auc, slide_centred, token_adjacency_features  # noqa: E402
from hipt.pretrain.trainer import build_backbone  # noqa: E402
from hipt.provenance import write_benchmark_result  # noqa: E402

VARIANTS = {
    "base": {},
    "long": {"epochs": 100},
    "crops": {"global_crop_size": 6, "local_crop_size": 4},
    "small-head": {"out_dim": 256, "teacher_temp": 0.04, "warmup_teacher_temp": 0.04},
    "more-regions": {"_data": "survival"},
    "token-bank": {"_data": "token-bank", "epochs": 10, "steps_per_epoch": 60, "lr": 2e-3,
                   "head_hidden_dim": 512, "out_dim": 1024},
    "sincos": {"pos_embed_init": "sincos"},
    "trunc-normal": {"pos_embed_init": "trunc_normal"},
}
N_BANK_TRAIN, N_BANK_EVAL = 4096, 1000


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variants", nargs="+", default=["base", "long", "crops", "small-head", "token-bank", "sincos"],
                    choices=list(VARIANTS))
    ap.add_argument("--out", default="data/runs/bench_stage2_arrangement", help="run folders (retrained each time)")
    ap.add_argument("--no-record", action="store_true", help="do not write benchmarks/results/")
    args = ap.parse_args(argv)

    ctx_dir = zoo.cohort_features("context", "cpu", progress=False)
    regions = region_truth(ctx_dir, zoo.cohort("context", "cpu", progress=False).table)
    regions = regions[regions["informative"].notna()].reset_index(drop=True)
    grids = region_grids(ctx_dir, regions)
    y = regions["informative"].astype(int).to_numpy()
    groups = regions["slide_id"].to_numpy()
    centred = slide_centred(grids, groups)
    # token-bank regions from the unlabelled pretraining cohort (never the evaluated cohort)
    kind, n = zoo.get_preset("cpu").stage2_cohort
    pre_dir = zoo.pretraining_features("cpu", progress=False)
    bank = token_bank(pre_dir, zoo.cohort(kind, "cpu", seed=1, n_slides=n, progress=False).table)
    side = grids.shape[-1]
    rng = np.random.default_rng(0)
    y_bank = np.arange(N_BANK_EVAL) % 2
    bank_eval = bank_grids(np.stack([context_region(side, bool(f), rng) for f in y_bank]), bank, seed=2)
    bank_eval = torch.stack([tokens_to_grid(torch.from_numpy(g)) for g in bank_eval]).numpy()
    ref = probe_auc({"mean": grids.mean(axis=(2, 3)), "adjacency": token_adjacency_features(grids)}, y, groups)
    ref["mean, centred"] = probe_auc({"m": centred.mean(axis=(2, 3))}, y, groups)["m"]
    ref["mean, bank"] = probe_auc({"m": bank_eval.mean(axis=(2, 3))}, y_bank)["m"]
    print(f"references: mean pooling {ref['mean']:.3f} (slide-centred {ref['mean, centred']:.3f}, token-bank "
          f"{ref['mean, bank']:.3f}), adjacency ceiling {ref['adjacency']:.3f}", flush=True)
    rows = []
    for name in args.variants:
        ov = dict(VARIANTS[name])
        data = ov.pop("_data", None)
        dataset = None
        if data == "survival":
            src = zoo.cohort_features("survival", "cpu", progress=False)
        elif data == "token-bank":
            src = "phantom"
            flags = np.random.default_rng(1).integers(0, 2, N_BANK_TRAIN)
            layouts = np.stack([context_region(side, bool(f), rng) for f in flags])
            dataset = FeatureGrids.from_array(bank_grids(layouts, bank, seed=1))
        else:
            src = pre_dir
        out = Path(args.out) / name
        if (out / "checkpoint.pth").is_file():
            (out / "checkpoint.pth").unlink()  # retrain: the time is part of the record
        cfg = make_config(2, "cpu-tiny", data=str(src), out_dir=str(out), progress=False, **ov)
        n_regions = len(dataset if dataset is not None else FeatureGrids(src))  # outside the timed training
        t0 = time.perf_counter()
        result = train(cfg, dataset)
        train_s = time.perf_counter() - t0
        log = read_log(result.out_dir)
        auc = probe_auc({"dino": embed_grids(result.teacher, grids)}, y, groups)["dino"]
        torch.manual_seed(cfg.seed)  # the same network before training: what DINO itself added
        auc_r = probe_auc({"r": embed_grids(build_backbone(cfg, drop_path_rate=0.0), grids)}, y, groups)["r"]
        auc_c = probe_auc({"dino": embed_grids(result.teacher, centred)}, y, groups)["dino"]
        auc_b = probe_auc({"dino": embed_grids(result.teacher, bank_eval)}, y_bank)["dino"]
        rows.append({"variant": name, "changes": ", ".join(f"{k}={v}" for k, v in VARIANTS[name].items()) or "preset",
                     "pretraining regions": n_regions, "steps": len(log), "final loss": round(float(log["loss"].iloc[-1]), 3),
                     "probe AUC, DINO ViT4K": round(auc, 3), "probe AUC, same ViT4K at init": round(auc_r, 3),
                     "probe AUC, mean pooling": round(ref["mean"], 3),
                     "probe AUC, adjacency ceiling": round(ref["adjacency"], 3),
                     "slide-centred: DINO": round(auc_c, 3), "slide-centred: mean pooling": round(ref["mean, centred"], 3),
                     "token-bank regions: DINO": round(auc_b, 3), "token-bank regions: mean pooling": round(ref["mean, bank"], 3),
                     "train s": round(train_s, 1)})
        print(rows[-1], flush=True)
    if not args.no_record:
        path = write_benchmark_result(
            "stage2_arrangement", rows, title="Stage-2 DINO variants: is arrangement in the region token?",
            command="bench_stage2_arrangement.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            notes="linear-probe AUC (5-fold, grouped by slide) of 'informative region' on the context cohort "
                  "(cpu preset), also with each slide's mean token removed; and (5-fold) on 1000 held-out "
                  f"token-bank regions; token-bank pretraining: {N_BANK_TRAIN} regions; stage-1 model and "
                  "features from hipt.book.zoo")
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    torch.manual_seed(0)
    np.random.seed(0)
    raise SystemExit(main())
