"""Does DINO pretraining learn?  KNN accuracy on phantom data before and after, at both stages.

Stage 1: a ``cpu-tiny`` DINO run on phantom patches (train-or-load from the cache; ``--fresh``
retrains, timed; ``--fresh 2`` retrains stage 2 only), then the KNN accuracy (k = 20, cosine) of
the tissue type of held-out phantom patches (train and test drawn from other seeds than the
pretraining data) from the [CLS] embedding of patches of the preset's patch size (128 px for cpu-tiny, the
size of the book's CPU cohorts; ``--eval-px 256`` for HIPT's): the pretrained teacher versus the same
network at random initialization (the baseline, measured in the same run).  Also on a *stain-shifted*
test set (colour jitter of the test patches only; the KNN training set keeps the original colours),
where colour alone no longer identifies the tissue.

Stage 2: a ``cpu-tiny`` DINO run of the ViT4K on the stage-1 feature grids of the book's unlabelled
pretraining cohort (timed), then the KNN accuracy (k = 5) of a region-level property of the ``context``
cohort — is the region *informative* (lymphocytes touching tumour); balanced accuracy, chance 0.5 —
from (a) mean-pooled stage-1 patch
features (the bag-of-patches baseline), (b) a random-init ViT4K, (c) the pretrained ViT4K.  Train/test
regions come from different slides; the gains over the random-init ViT4K carry a 95 % paired bootstrap
interval over the test *slides* (regions of one slide are not independent).

Usage::

    python benchmarks/bench_dino_knn.py            # both stages, cpu-tiny
    python benchmarks/bench_dino_knn.py --stage 1 --quick
    python benchmarks/bench_dino_knn.py --fresh 2      # stage 1 from the cache, stage 2 retrained

Writes ``benchmarks/results/dino_knn.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hipt.pretrain import make_config, read_log, train  # noqa: E402
from hipt.pretrain.evaluate import (  # noqa: E402
    embed_grids, embed_patches, knn_accuracy, knn_predict, paired_gain_interval, stain_shift,
)
from hipt.pretrain.trainer import build_backbone  # noqa: E402


def stage1(args, out_dir: Path) -> list[dict]:
    from hipt.phantom import phantom_patches

    overrides = json.loads(args.overrides) if args.overrides else {}
    cfg, teacher, log = _pretrain(1, args, out_dir, overrides)
    train_s = float(log["time"].iloc[-1])
    n = args.n_eval
    x_tr, y_tr = phantom_patches(n, seed=101, size=args.eval_px)
    x_te, y_te = phantom_patches(n, seed=102, size=args.eval_px)
    x_sh = stain_shift(x_te, seed=103)
    torch.manual_seed(cfg.seed)
    models = {"random init": build_backbone(cfg, drop_path_rate=0.0).eval(), "DINO": teacher}
    rows, correct = [], {}
    for name, model in models.items():
        f_tr = embed_patches(model, x_tr, cfg.normalization)
        f_te = embed_patches(model, x_te, cfg.normalization)
        f_sh = embed_patches(model, x_sh, cfg.normalization)
        correct[name] = knn_predict(f_tr, y_tr, f_sh, k=20) == y_te
        gain = "n/a"
        if name != "random init":  # paired bootstrap over the same test patches
            g, lo, hi = paired_gain_interval(correct[name], correct["random init"])
            gain = f"{g:+.3f} [{lo:+.3f}, {hi:+.3f}]"
        rows.append({
            "stage": 1, "model": f"ViT256 tiny, {name}", "task": "tissue type (5 classes)", "k": 20,
            "knn_acc": round(knn_accuracy(f_tr, y_tr, f_te, y_te, k=20), 4),
            "knn_acc_stain_shift": round(float(correct[name].mean()), 4),
            "stain_shift_gain_95ci": gain, "gain_over_random_95ci": "n/a", "train_steps": len(log),
            "train_s": round(train_s, 1),
        })
        print(rows[-1], flush=True)
    return rows


def _pretrain(stage: int, args, out_dir: Path, overrides: dict, **extra):
    """Train (``--fresh``: in the run folder, timed) or train-or-load from the cache (``pretrained``)."""
    from hipt.book.zoo import pretrained

    progress = not args.no_progress
    if args.fresh in ("both", str(stage)):
        cfg = make_config(stage, "cpu-tiny", out_dir=str(out_dir / f"stage{stage}"), progress=progress,
                          **extra, **overrides)
        result = train(cfg)
        teacher, run_dir = result.teacher, result.out_dir
    else:
        cfg = make_config(stage, "cpu-tiny", **overrides)
        teacher = pretrained(stage, "cpu-tiny", progress=progress, **overrides)
        run_dir = teacher.pretrain_dir
    log = read_log(run_dir)
    print(f"stage {stage}: {len(log)} steps in {log['time'].iloc[-1]:.0f} s ({run_dir}); loss "
          f"{log['loss'].iloc[0]:.3f} → {log['loss'].iloc[-1]:.3f}", flush=True)
    return cfg, teacher, log


def stage2(args, out_dir: Path) -> list[dict]:
    from hipt.book import zoo
    from hipt.phantom.ground_truth import region_grids, region_truth

    overrides = json.loads(args.overrides2) if args.overrides2 else {}
    extra = {}
    if args.fresh in ("both", "2"):  # train on the features today's code extracts, not on the cached model's
        extra = {"data": str(zoo.pretraining_features("cpu", progress=not args.no_progress))}
    cfg, teacher, log = _pretrain(2, args, out_dir, overrides, **extra)
    train_s = float(log["time"].iloc[-1])

    ctx_dir = zoo.cohort_features("context", "cpu", progress=not args.no_progress)
    regions = region_truth(ctx_dir, zoo.cohort("context", "cpu", progress=False).table)
    regions = regions[regions["informative"].notna()].reset_index(drop=True)
    grids = region_grids(ctx_dir, regions)  # [M, D, H, W]
    slide_order = {s: i for i, s in enumerate(dict.fromkeys(regions["slide_id"]))}
    train_mask = np.array([slide_order[s] % 2 == 0 for s in regions["slide_id"]])
    y = regions["informative"].astype(int).to_numpy()
    torch.manual_seed(cfg.seed)
    feats_by_model = {
        "mean-pooled stage-1 patch features": grids.mean(axis=(2, 3)),
        "ViT4K tiny, random init": embed_grids(build_backbone(cfg, drop_path_rate=0.0), grids),
        "ViT4K tiny, DINO": embed_grids(teacher, grids),
    }
    from hipt.book.evidence.stage2 import gain_text, grouped_bootstrap_gain

    groups = regions["slide_id"].to_numpy()
    test_y, test_groups = y[~train_mask], groups[~train_mask]
    preds = {name: knn_predict(f[train_mask], y[train_mask], f[~train_mask], k=5) for name, f in feats_by_model.items()}
    base = preds["ViT4K tiny, random init"]
    rows = []
    for name, f in feats_by_model.items():
        gain = "n/a"
        if name != "ViT4K tiny, random init":
            gain = gain_text(grouped_bootstrap_gain(test_y, test_groups, preds[name], base,
                                                    metric="balanced_accuracy", n_boot=2000))
        rows.append({
            "stage": 2, "model": name, "task": "region informative (balanced acc.)", "k": 5,
            "knn_acc": round(knn_accuracy(f[train_mask], y[train_mask], f[~train_mask], y[~train_mask], k=5,
                                          balanced=True), 4),
            "knn_acc_stain_shift": "n/a", "stain_shift_gain_95ci": "n/a", "gain_over_random_95ci": gain,
            "train_steps": len(log), "train_s": round(train_s, 1),
        })
        print(rows[-1], flush=True)
    print(f"(regions: {train_mask.sum()} train / {(~train_mask).sum()} test, "
          f"{y.mean():.0%} informative)", flush=True)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--stage", choices=("1", "2", "both"), default="both")
    ap.add_argument("--quick", action="store_true", help="fewer evaluation patches (200 per split)")
    ap.add_argument("--n-eval", type=int, default=400, help="KNN train and test patches (each)")
    ap.add_argument("--eval-px", type=int, default=None, help="KNN patch size (default: the preset's patch size)")
    ap.add_argument("--overrides", default="", help="JSON of stage-1 PretrainConfig overrides")
    ap.add_argument("--overrides2", default="", help="JSON of stage-2 PretrainConfig overrides")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--fresh", nargs="?", const="both", default=None, choices=("1", "2", "both"),
                    help="train new runs (of both stages, or of the one given) in the run folder (timed) instead of "
                         "train-or-load from the cache")
    ap.add_argument("--out", default=None, help="run folder for --fresh (default: a temporary folder)")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--no-write", action="store_true", help="do not write benchmarks/results/dino_knn.json")
    args = ap.parse_args(argv)
    if args.quick:
        args.n_eval = 200
    if args.eval_px is None:  # resolved once: the stage-1 run's patch size (overrides included), for the record too
        args.eval_px = make_config(1, "cpu-tiny", **(json.loads(args.overrides) if args.overrides else {})).patch_size
    if args.threads:
        torch.set_num_threads(args.threads)
    machine = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    print(f"machine: {machine}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        out_dir = Path(args.out) if args.out else Path(tmp)
        rows = []
        if args.stage in ("1", "both"):
            rows += stage1(args, out_dir)
        if args.stage in ("2", "both"):
            rows += stage2(args, out_dir)
    print()
    for r in rows:
        print(f"stage {r['stage']}  {r['model']:<40} {r['task']:<32} knn {r['knn_acc']:.3f}"
              + (f"  stain-shift {r['knn_acc_stain_shift']:.3f}" if r["knn_acc_stain_shift"] != "n/a" else ""))
    if not args.no_write:
        from hipt.provenance import write_benchmark_result

        write_benchmark_result(
            "dino_knn", rows, title="KNN accuracy before/after DINO pretraining (phantom data)",
            notes=f"cpu-tiny presets; stage 1: tissue type of {args.n_eval} held-out phantom patches of "
                  f"{args.eval_px} px (k=20, cosine), "
                  "stain shift = colour-jittered test set (gain over random init with a 95% paired-bootstrap "
                  "interval over the test patches); stage 2: informative regions of the context cohort "
                  "(k=5, train/test by slide; gain over the random-init ViT4K with a 95% paired bootstrap interval over "
                  "the test slides); " + {None: "both models train-or-load from the hipt.book.zoo cache (the book's)",
                                        "both": "both models retrained in the run (--fresh)",
                                        "1": "stage 1 retrained in the run, stage 2 from the hipt.book.zoo cache",
                                        "2": "stage 1 from the hipt.book.zoo cache, stage 2 retrained in the run on "
                                             "today's pretraining features"}[args.fresh],
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
