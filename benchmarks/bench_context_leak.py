"""Does the phantom ``context`` cohort leak its label into bag-level summaries? (issue 15)

For each cohort seed (the cpu preset's sizes: 64 slides, 4 regions of 8×8 cells of 128 px) and each
bag-level summary of a slide (hipt.phantom.checks): the cross-validated AUC of a logistic regression
and its permutation null.  Summaries: tissue-class counts and stain/colour statistics of the composed
tissue pixels (cheap: no slide is written) for every seed in ``--seeds``; the mean patch token
(``feats256``) for the seeds whose features are already cached (``--token-seeds``; extracting a new
seed costs minutes: ``hipt.book.zoo.cohort_features("context", seed=S)``, run it first).

    nice -n 10 .venv/bin/python benchmarks/bench_context_leak.py --seeds 0-9 --token-seeds 101-105 --permutations 25

Writes ``benchmarks/results/context_leak.json``: one row per (seed, summary).
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def _seeds(text: str) -> list[int]:
    out = []
    for part in text.split(","):
        a, _, b = part.partition("-")
        out += list(range(int(a), int(b or a) + 1))
    return out


def main() -> None:
    from hipt import phantom as P
    from hipt.phantom import checks as C
    from hipt.book import zoo
    from hipt.paths import cache_dir
    from hipt.provenance import write_benchmark_result

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0-11", help="cohort seeds for the layout and pixel summaries")
    ap.add_argument("--token-seeds", default="101-105", help="cohort seeds for the token means (cached only)")
    ap.add_argument("--permutations", type=int, default=100)
    args = ap.parse_args()
    p = zoo.get_preset("cpu")
    n = dict(p.cohort_sizes).get("context", p.n_slides)
    rows = []

    def add(seed, summary, x, y, t0, source):
        r = C.label_signal(x, y, n_permutations=args.permutations)
        rows.append(dict(seed=seed, summary=summary, source=source, n_slides=len(y), n_features=int(x.shape[1]),
                         distinct_rows=int(len(np.unique(np.round(x, 9), axis=0))),
                         auc=round(r["auc"], 4), null_mean=round(r["null_mean"], 4), null_q95=round(r["null_q95"], 4),
                         p_value=round(r["p_value"], 4), seconds=round(time.perf_counter() - t0, 1)))
        print(rows[-1], flush=True)

    for seed in _seeds(args.seeds):
        t0 = time.perf_counter()
        truths = P.cohort_truths("context", n, p.regions_per_slide, p.region_size, p.patch_size, seed=seed)
        y = np.array([t.meta["label"] for t in truths])
        add(seed, "tissue_counts", C.layout_summaries(truths).astype(float), y, t0, "layouts")
        px = C.pixel_summaries(truths)
        add(seed, "stain", px[:, :6], y, t0, "composed pixels")
        add(seed, "cell_rim", px[:, 6:], y, t0, "composed pixels")
    for seed in _seeds(args.token_seeds):
        c = P.cohort_dir("context", n, p.regions_per_slide, p.region_size, seed)
        folders = sorted(cache_dir("features").glob(f"{c.name}-feats-*"))
        if not folders or not (folders[-1] / "table.csv").is_file():
            print(f"seed {seed}: no cached features ({c.name}-feats-*), skipped", flush=True)
            continue
        import pandas as pd

        t0 = time.perf_counter()
        table = pd.read_csv(folders[-1] / "table.csv")
        add(seed, "token_mean", C.token_summaries(folders[-1], table["slide_id"]), table["label"].to_numpy(), t0,
            folders[-1].name)
    aucs = {s: [r["auc"] for r in rows if r["summary"] == s] for s in dict.fromkeys(r["summary"] for r in rows)}
    notes = "; ".join(f"{s}: mean AUC {np.mean(a):.3f} over {len(a)} seeds, "
                      f"{sum(r['p_value'] <= 0.05 for r in rows if r['summary'] == s)} with p <= 0.05"
                      for s, a in aucs.items())
    write_benchmark_result("context_leak", rows, title="Label signal of bag-level summaries of the context cohort",
                           notes=notes)
    print(notes)


if __name__ == "__main__":
    main()
