"""Does stage-2 DINO learn region arrangement at the paper's scale?  (A lent GPU; never part of CI.)

Chapter 4 finds that the CPU-sized stage-2 run keeps little of the ``context`` arrangement in the region
token although the stage-1 grids hold it.  This script asks whether scale changes that: the paper's
stage-2 setting (ViT4K-XS, 6 blocks; 16×16 grids; 14×14 global and 6×6 local crops; 65,536
prototypes) on many more regions, in bf16 on one GPU.

The regions are built from real stage-1 tokens: ``prepare`` (here, on the CPU) takes the tokens of the
book's ``cpu`` stage-1 model on the phantom pretraining cohort, grouped by tissue type (the phantom's
ground truth), and draws layouts of 16×16 cells with :func:`hipt.phantom.context_region` (half of them
informative); every cell gets a random token of its type.  ``run`` (on the GPU) assembles the grids,
trains DINO for a fixed time budget, embeds a labelled evaluation set with the teacher and with a
random-init ViT4K, and trains the same ViT4K *with* region labels as an upper bound.  ``report`` (here)
fits the linear probes and writes ``benchmarks/results/gpu_stage2_scale.json``.

Usage::

    python benchmarks/gpu_stage2_scale.py prepare                       # CPU, ~2 min
    python benchmarks/gpu_stage2_scale.py run --budget 240              # GPU: writes $OUT/stage2_scale.npz
    python benchmarks/gpu_stage2_scale.py report --npz <OUT>/stage2_scale.npz
    python benchmarks/gpu_stage2_scale.py slides --npz <OUT>/stage2_scale.npz     # claim (b), CPU

``slides`` builds phantom slides of four regions from the evaluation regions (class 1: two to four
informative regions, class 0: none, as the ``context`` cohort) and trains HIPT on the GPU-pretrained
region tokens against mean pooling and ABMIL on the patch tokens, with the book's protocol
(``benchmarks/results/gpu_stage2_slides.json``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PREP = Path("data/cache/gpu_stage2")
GRID = 16


def prepare(args) -> int:
    from hipt.book import zoo
    from hipt.phantom import context_region
    from hipt.phantom.ground_truth import token_bank

    feat_dir = zoo.pretraining_features("cpu", progress=False)
    kind, n = zoo.get_preset("cpu").stage2_cohort
    bank = token_bank(feat_dir, zoo.cohort(kind, "cpu", seed=1, n_slides=n, progress=False).table)
    codes = sorted(bank)
    rng = np.random.default_rng(0)

    def layouts(n, informative=None):
        flags = rng.integers(0, 2, n) if informative is None else informative
        return np.stack([context_region(GRID, bool(f), rng) for f in flags]).astype(np.int8), flags.astype(np.int8)

    pre, _ = layouts(args.n_pretrain)
    ev, y_ev = layouts(args.n_eval)
    sup, y_sup = layouts(args.n_supervised)
    PREP.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(PREP / "data.npz", codes=np.array(codes),
                        **{f"bank_{c}": bank[c].astype(np.float16) for c in codes},
                        pre=pre, eval=ev, y_eval=y_ev, sup=sup, y_sup=y_sup)
    print(f"wrote {PREP / 'data.npz'}: bank {[len(bank[c]) for c in codes]}, {len(pre)} pretraining, "
          f"{len(ev)} evaluation, {len(sup)} supervised layouts")
    return 0


def _grids(layouts: np.ndarray, bank: dict[int, np.ndarray], seed: int) -> np.ndarray:
    """``[N, G*G, D]`` float16 tokens: each cell a random token of its tissue type."""
    from hipt.phantom.ground_truth import bank_grids

    return bank_grids(layouts, bank, seed, dtype=np.float16)


def _auc(y: np.ndarray, s: np.ndarray) -> float:
    """Rank AUC (Mann–Whitney; no ties in continuous scores): the GPU machine has no scikit-learn."""
    order = np.argsort(s)
    ranks = np.empty(len(s)); ranks[order] = np.arange(1, len(s) + 1)
    pos = y == 1
    return float((ranks[pos].sum() - pos.sum() * (pos.sum() + 1) / 2) / (pos.sum() * (~pos).sum()))


@torch.no_grad()
def _embed(model, grids: np.ndarray, device: str) -> np.ndarray:
    from hipt.pretrain.augment import tokens_to_grid

    model = model.eval().to(device)
    out = []
    for i in range(0, len(grids), 256):
        x = torch.stack([tokens_to_grid(torch.from_numpy(g).float()) for g in grids[i : i + 256]]).to(device)
        with torch.autocast("cuda", torch.bfloat16, enabled=device.startswith("cuda")):
            out.append(model(x).float().cpu())
    return torch.cat(out).numpy()


def run(args) -> int:
    from hipt.pretrain import make_config, train
    from hipt.pretrain.augment import tokens_to_grid
    from hipt.pretrain.data import FeatureGrids
    from hipt.pretrain.trainer import build_backbone

    device = "cuda:0" if torch.cuda.is_available() else "cpu"
    out_dir = Path(os.environ.get("OUT", "data/runs/gpu_stage2_scale"))
    out_dir.mkdir(parents=True, exist_ok=True)
    d = np.load(PREP / "data.npz")
    bank = {int(c): d[f"bank_{c}"] for c in d["codes"]}
    lim = args.limit or None  # smoke tests on a CPU
    pre = _grids(d["pre"][:lim], bank, 1)
    ev, sup = _grids(d["eval"][:lim], bank, 2), _grids(d["sup"][:lim], bank, 3)
    y_eval, y_sup = d["y_eval"][:lim], d["y_sup"][:lim]
    dim = pre.shape[-1]
    common = dict(input_embed_dim=dim, precision="bf16", batch_size_per_gpu=args.batch, num_workers=args.workers,
                  progress=False, log_every=10, checkpoint_every=10**9, lr=5e-4 * 2)
    try:
        from hipt.provenance import hardware

        hw = hardware()
        hw.pop("hostname", None)
    except Exception:  # noqa: BLE001 - a record without hardware details is still a record
        hw = None
    record: dict = {"hardware": hw, "device": torch.cuda.get_device_name(0) if device != "cpu" else "cpu", "n_pretrain": len(pre),
                    "batch": args.batch, "budget": args.budget}

    common.update(json.loads(args.overrides) if args.overrides else {})
    record["overrides"] = args.overrides
    if args.steps:
        steps = args.steps
    else:  # calibrate: seconds per step of the paper stage-2 setting at this batch (worker start-up included)
        cal = make_config(2, "paper", out_dir=str(out_dir / "calibrate"), epochs=1, steps_per_epoch=args.cal_steps,
                          warmup_epochs=0, **common)
        t0 = time.perf_counter()
        train(cal, FeatureGrids.from_array(pre))
        s_per_step = (time.perf_counter() - t0) / args.cal_steps
        steps = max(50, int(args.budget / s_per_step))
        record["s_per_step_calibration"] = round(s_per_step, 4)
    epochs = 10
    spe = math.ceil(steps / epochs)
    record.update(steps=spe * epochs)
    print(f"training {spe * epochs} steps at batch {args.batch}", flush=True)

    cfg = make_config(2, "paper", out_dir=str(out_dir / "dino"), epochs=epochs, steps_per_epoch=spe,
                      warmup_epochs=1, **common)
    t0 = time.perf_counter()
    result = train(cfg, FeatureGrids.from_array(pre))
    record["train_s"] = round(time.perf_counter() - t0, 1)
    losses = [row["loss"] for row in result.log if "loss" in row]  # no pandas needed on the GPU machine
    record.update(loss_first=float(losses[0]), loss_last=float(losses[-1]),
                  regions_per_s=round(spe * epochs * args.batch / record["train_s"], 1))
    if device != "cpu":
        record["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    emb_dino = _embed(result.teacher, ev, device)
    torch.manual_seed(0)
    emb_rand = _embed(build_backbone(cfg, drop_path_rate=0.0), ev, device)

    # supervised upper bound: the same ViT4K from scratch, region labels, held-out AUC
    torch.manual_seed(0)
    model = torch.nn.Sequential(build_backbone(cfg, drop_path_rate=0.1), torch.nn.Linear(192, 1)).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.05)
    ys = torch.from_numpy(y_sup).float()
    n_tr = int(0.8 * len(sup))
    x_all = torch.stack([tokens_to_grid(torch.from_numpy(g).float()) for g in sup])
    t0 = time.perf_counter()
    sup_curve = []
    for epoch in range(args.sup_epochs):
        model.train()
        perm = torch.randperm(n_tr)
        for i in range(0, n_tr, 64):
            b = perm[i : i + 64]
            xb = x_all[b].to(device)
            if torch.rand(()) < 0.5:
                xb = xb.flip(-1)
            with torch.autocast("cuda", torch.bfloat16, enabled=device != "cpu"):
                loss = torch.nn.functional.binary_cross_entropy_with_logits(model(xb).float().squeeze(1), ys[b].to(device))
            opt.zero_grad(); loss.backward(); opt.step()
        if epoch % 5 == 4 or epoch == args.sup_epochs - 1:
            model.eval()
            with torch.no_grad(), torch.autocast("cuda", torch.bfloat16, enabled=device != "cpu"):
                s = torch.cat([model(x_all[i : i + 256].to(device)).float().cpu() for i in range(n_tr, len(sup), 256)])
            sup_curve.append((epoch + 1, _auc(y_sup[n_tr:], s.squeeze(1).numpy())))
            print(f"supervised epoch {epoch + 1}: held-out AUC {sup_curve[-1][1]:.3f}", flush=True)
    record.update(supervised_train_regions=n_tr, supervised_test_regions=len(sup) - n_tr,
                  supervised_auc=sup_curve[-1][1], supervised_curve=sup_curve,
                  supervised_s=round(time.perf_counter() - t0, 1))
    np.savez_compressed(out_dir / "stage2_scale.npz", dino=emb_dino, random=emb_rand,
                        mean=ev.astype(np.float32).mean(1), y=y_eval)
    (out_dir / "stage2_scale.json").write_text(json.dumps(record, indent=1))
    print(json.dumps(record), flush=True)
    return 0


def _dino_label(rec: dict) -> str:
    ov = json.loads(rec.get("overrides") or "{}")
    head = "BatchNorm head, teacher temp. 0.02" if ov.get("use_bn_in_head") else "paper head"
    collapsed = " (collapsed: loss = ln K)" if rec["loss_last"] >= 0.99 * math.log(65536) else ""
    return f"ViT4K-XS, DINO, {head}, {rec['steps']} steps on {rec['n_pretrain']} regions{collapsed}"


def report(args) -> int:
    from hipt.pretrain.evaluate import adjacency_counts, probe_auc
    from hipt.provenance import write_benchmark_result

    runs = [(np.load(p), json.loads((Path(p).parent / "stage2_scale.json").read_text())) for p in args.npz]
    e, rec = runs[-1]  # references from the last run (they do not depend on the DINO run)
    lay = np.load(PREP / "data.npz")["eval"][: len(e["y"])].astype(int)

    y = e["y"]
    feats = {"mean of patch tokens": e["mean"], "ViT4K-XS, random init": e["random"]}
    feats.update({_dino_label(r): ei["dino"] for ei, r in runs})
    feats["adjacency of tissue types (ceiling, no learning)"] = adjacency_counts(lay, int(lay.max()) + 1)
    auc = probe_auc(feats, y)
    rows = [{"region representation": name, "AUC (informative region)": round(v, 3)} for name, v in auc.items()]
    rows.append({"region representation": f"ViT4K-XS trained with region labels ({rec['supervised_train_regions']} "
                                          f"regions; held-out, not a probe)",
                 "AUC (informative region)": round(rec["supervised_auc"], 3)})
    for r in rows:
        print(r)
    runs_txt = "; ".join(f"{r['steps']} steps in {r['train_s']} s ({r['regions_per_s']} regions/s, peak "
                         f"{r.get('peak_gib')} GiB), loss {r['loss_first']:.2f} → {r['loss_last']:.2f}" for _, r in runs)
    path = write_benchmark_result(
        "gpu_stage2_scale", rows, title="Stage-2 DINO at paper scale on phantom context regions (GPU)",
        command="gpu_stage2_scale.py " + " | ".join(
            f"run --steps {r['steps']} --batch {r['batch']}" + (f" --overrides '{r['overrides']}'" if r.get("overrides") else "")
            for _, r in runs),
        notes=f"{rec['device']}, bf16, batch {rec['batch']}: {runs_txt}. Grids of 16×16 real cpu stage-1 tokens "
              f"drawn by tissue type on context_region layouts (half informative); linear probes 5-fold on "
              f"{len(y)} evaluation regions.", hardware_info=rec.get("hardware"))
    print(f"wrote {path}")
    return 0


def slides(args) -> int:
    """Slide-level claim (b) on the GPU-pretrained region tokens: HIPT vs mean pooling vs ABMIL (CPU)."""
    import h5py
    import pandas as pd

    from hipt.provenance import write_benchmark_result
    from hipt.tasks.splits import make_splits
    from hipt.tasks.tables import summarize
    from hipt.tasks.train import FinetuneConfig, run_cv

    torch.set_num_threads(1)  # tiny slide models: thread synchronisation would dominate
    e = np.load(args.npz)
    rec = json.loads((Path(args.npz).parent / "stage2_scale.json").read_text())
    d = np.load(PREP / "data.npz")
    bank = {int(c): d[f"bank_{c}"] for c in d["codes"]}
    n_eval = len(e["y"])
    tokens = _grids(d["eval"][:n_eval], bank, 2)  # the very grids the GPU run embedded: [N, 256, D]
    y_reg = e["y"].astype(int)
    rng = np.random.default_rng(0)
    inf, non = list(rng.permutation(np.flatnonzero(y_reg == 1))), list(rng.permutation(np.flatnonzero(y_reg == 0)))
    out = Path(args.out)
    feats = out / "features"
    feats.mkdir(parents=True, exist_ok=True)
    rows, k = [], 4
    while True:  # as the context cohort: class 1 has 2..4 informative regions of 4, class 0 none
        lab = len(rows) % 2
        n_inf = int(rng.integers(k // 2, k + 1)) if lab else 0
        if len(inf) < n_inf or len(non) < k - n_inf:
            break
        idx = [inf.pop() for _ in range(n_inf)] + [non.pop() for _ in range(k - n_inf)]
        idx = [idx[i] for i in rng.permutation(k)]
        sid = f"gpuctx_{len(rows):04d}"
        with h5py.File(feats / f"{sid}.h5", "w") as f:
            f["feats256"] = tokens[idx]
            f["feats4k"] = e["dino"][idx].astype(np.float32)
            f["coords"] = np.array([[4096 * i, 0] for i in range(k)], np.int64)
        rows.append({"slide_id": sid, "label": lab, "case_id": sid})
    table = pd.DataFrame(rows)
    table.to_csv(out / "table.csv", index=False)
    splits = out / "splits"
    make_splits(table, args.folds, "subtype", seed=0, out_dir=splits, val_frac=0.15, test_frac=0.25)
    results = []
    for method in ("hipt", "mean", "abmil"):
        cfg = FinetuneConfig(features_dir=str(feats), task=str(out / "table.csv"), splits_dir=str(splits),
                             kind="subtype", task_name="gpu_context", method=method, out=str(out / "results"),
                             fractions=[1.0], folds=list(range(args.folds)), resume=False, verbose=False,
                             standardize=args.standardize)
        results.append(run_cv(cfg))
    summ = summarize(pd.concat(results), "test", "auc")
    out_rows = [{"method": r.method, "test AUC, mean over folds": round(float(r["mean"]), 3),
                 "test AUC, std over folds": round(float(r["std"]), 3), "folds": int(r.n_folds)}
                for _, r in summ.iterrows()]
    for r in out_rows:
        print(r)
    path = write_benchmark_result(
        "gpu_stage2_slides", out_rows, title="Claim (b) at scale: slide-level context subtyping on GPU-pretrained region tokens",
        command=f"gpu_stage2_scale.py slides --folds {args.folds}" + (" --standardize" if args.standardize else ""),
        notes=f"{len(table)} phantom slides of 4 regions (class 1: 2–4 informative, class 0: none), built from the "
              f"evaluation regions of the {rec['device']} stage-2 run ({rec['steps']} steps); region tokens = its DINO "
              "ViT4K-XS teacher; patch tokens = the cpu stage-1 tokens; slide models trained here (20 epochs, "
              + ("inputs z-scored for every method, " if args.standardize else "raw inputs for every method, ") +
              "accumulation 32, last epoch; Monte-Carlo folds 60/15/25)")
    print(f"wrote {path}")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("--n-pretrain", type=int, default=12000)
    p.add_argument("--n-eval", type=int, default=2000)
    p.add_argument("--n-supervised", type=int, default=4000)
    r = sub.add_parser("run")
    r.add_argument("--budget", type=float, default=240, help="DINO training seconds (after a calibration run)")
    r.add_argument("--batch", type=int, default=256)
    r.add_argument("--workers", type=int, default=10)
    r.add_argument("--cal-steps", type=int, default=20)
    r.add_argument("--steps", type=int, default=0, help="DINO steps (skips the calibration)")
    r.add_argument("--overrides", default="", help="JSON of PretrainConfig overrides, e.g. a BatchNorm head")
    r.add_argument("--sup-epochs", type=int, default=30)
    r.add_argument("--limit", type=int, default=0, help="use only the first N layouts of each set (smoke test)")
    q = sub.add_parser("report")
    q.add_argument("--npz", required=True, nargs="+", help="stage2_scale.npz of one or more runs")
    t = sub.add_parser("slides", help="claim (b) on the GPU-pretrained region tokens (CPU, a few minutes)")
    t.add_argument("--npz", required=True, help="stage2_scale.npz of a run with a live (not collapsed) head")
    t.add_argument("--folds", type=int, default=5)
    t.add_argument("--out", default="data/runs/gpu_stage2_slides")
    t.add_argument("--standardize", action="store_true",
                   help="z-score every method's inputs with training statistics (the CPU book's protocol); "
                        "default: raw inputs for every method, as the reference and as the recorded run")
    args = ap.parse_args(argv)
    return {"prepare": prepare, "run": run, "report": report, "slides": slides}[args.cmd](args)


if __name__ == "__main__":
    raise SystemExit(main())
