"""Does stage-1 DINO's KNN gain over random init hold for another training seed?

Chapter 3 measures the gain for the book's stage-1 model (training seed 0) in the page.  A second
model trained from another seed cannot be trained inside the chapter's time budget on a clean checkout,
so this script trains-or-loads the ``cpu-tiny`` stage-1 model of each training seed (``hipt.book.zoo``'s
cache: ``pretrained(1, "cpu-tiny", seed=...)``, the same data, only the seed changes) and runs the
chapter's test on each (:func:`hipt.pretrain.evaluate.stage1_knn_test`: tissue type of held-out phantom
patches, k = 20, on the training colours, after a change of the H&E stain vectors and after a colour
jitter; evaluation patches from ``--eval-seed``, 7000 by default, never used to choose the preset).
The baseline, measured in the same run, is each seed's own network at random initialization.

Usage::

    python benchmarks/bench_stage1_seeds.py            # training seeds 0 and 1
    python benchmarks/bench_stage1_seeds.py --seeds 0 1 2

Writes ``benchmarks/results/stage1_seeds.json`` (read by chapter 3 as a recorded result).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hipt.pretrain import make_config, read_log  # noqa: E402
from hipt.pretrain.evaluate import EVAL_SEED, knn_gain_rows, random_init_backbone, stage1_knn_test  # noqa: E402


def seed_rows(seed: int, args) -> list[dict]:
    from hipt.book.zoo import pretrained

    cfg = make_config(1, "cpu-tiny", seed=seed)
    t0 = time.time()
    teacher = pretrained(1, "cpu-tiny", progress=not args.no_progress, seed=seed)
    log = read_log(teacher.pretrain_dir)
    ready_s = time.time() - t0
    t0 = time.time()
    correct = stage1_knn_test({"random init": random_init_backbone(cfg), "DINO": teacher}, cfg.normalization,
                              n_eval=args.n_eval, size=cfg.patch_size, eval_seed=args.eval_seed)
    rows = []
    for r in knn_gain_rows(correct, seed=seed):
        rows.append({"train_seed": seed, **r, "acc_colour": float(correct["colour statistics"][r["test"]].mean()),
                     "eval_seed": args.eval_seed, "n_eval": args.n_eval, "train_steps": len(log),
                     "train_s": round(float(log["time"].iloc[-1]), 1),
                     "model": teacher.pretrain_dir.name})
        print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in rows[-1].items()}, flush=True)
    print(f"seed {seed}: model ready in {ready_s:.0f} s, test in {time.time() - t0:.0f} s", flush=True)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="training seeds of the stage-1 models")
    ap.add_argument("--n-eval", type=int, default=400, help="KNN train and test patches (each)")
    ap.add_argument("--eval-seed", type=int, default=EVAL_SEED, help="first seed of the evaluation patches")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--no-write", action="store_true", help="do not write benchmarks/results/stage1_seeds.json")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = [r for seed in args.seeds for r in seed_rows(seed, args)]
    if not args.no_write:
        from hipt.provenance import write_benchmark_result

        path = write_benchmark_result(
            "stage1_seeds", rows, title="Stage-1 DINO KNN gain over random init, per training seed (phantom data)",
            notes=f"cpu-tiny stage-1 models (train-or-load from the hipt.book.zoo cache) of training seeds {args.seeds}; "
                  f"tissue type of {args.n_eval} held-out phantom patches (seeds {args.eval_seed}, "
                  f"{args.eval_seed + 1}, shifts {args.eval_seed + 2}), k=20 cosine; tests: same colours, "
                  "stain vectors (OD, od_stain_shift strength 0.2), colour jitter (stain_shift); gain = DINO - random "
                  "init of the same seed, 95% paired bootstrap over the test patches; acc_colour = KNN on colour "
                  "statistics alone")
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
