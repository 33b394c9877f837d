"""``hipt released``: real TCGA numbers from the reference's released embeddings, in minutes.

    hipt released fetch              # KNN folds + the [M, 192] files of the task slides (~500 MB)
    hipt released knn                # the reference's KNN table, regenerated, beside its numbers
    hipt released table1 --out DIR   # HIPT-GP and MIL on [M, 192] region tokens, 10 folds x 25 % / 100 %
    hipt released survival --out DIR # HIPT-GP overall survival, BRCA and LUAD, 5 folds by case
    hipt released patch              # the patch-level tables (CRC-100K, BCSS, BreastPathQ)

Files live under one root (``--root``, else ``$HIPT_RELEASED``, else the cache): a git clone of the
reference with its LFS files works as a root too.  Every command checks its files before any work and
names what is missing and how to get it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from hipt.errors import HIPTError
from hipt.io import atomic_write_text
from hipt.provenance import write_benchmark_result
from hipt.released import fetch as fx
from hipt.released.fetch import fetch_files
from hipt.released.patch import add_arguments as add_patch_arguments, default_patch_files, run as run_patch
from hipt.released.registry import knn_files, released_root
from hipt.released.slide import (
    estimate_seconds, format_mean_std, knn_table, run_survival, run_table1, SURVIVAL_TASKS, table1_runs,
    table1_summary, task_slide_files, vit4k_knn_row,
)
from hipt.tasks.tables import markdown_table

SUBCOMMANDS = ("fetch", "knn", "table1", "survival", "patch")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``hipt released``: one sub-command per table, and ``fetch``."""

    sub = parser.add_subparsers(dest="released_command", required=True, metavar="{" + ",".join(SUBCOMMANDS) + "}")

    def common(p: argparse.ArgumentParser, fetch: bool = True) -> None:
        p.add_argument("--root", type=Path, default=None,
                       help="folder holding the files under their repository paths (default: $HIPT_RELEASED or the cache); "
                            "a git clone of mahmoodlab/HIPT with its LFS files works too")
        if fetch:
            p.add_argument("--fetch", action="store_true", help="download the files this command needs first")

    f = sub.add_parser("fetch", help="download and verify released files (size + sha256), resumable",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    common(f, fetch=False)
    f.add_argument("--knn", action="store_true", help="the pickled KNN folds (180 files, 160 MB)")
    f.add_argument("--slides", action="store_true",
                   help="the [M, 192] files of every slide of the BRCA/lung/kidney tables (~2,800 files, ~90 MB)")
    f.add_argument("--patch", action="store_true", help="the small patch-level files (ViT-S DINO, ~350 MB)")
    f.add_argument("--include-resnet", action="store_true",
                   help="with --patch: also the ResNet-50 files (0.4-0.8 GB each for CRC-100K; ~3 GB in all)")
    f.add_argument("--workers", type=int, default=8, help="parallel downloads")
    f.add_argument("--verify", choices=["size", "sha256"], default="size",
                   help="how files already present are checked (sha256 reads them all)")
    f.add_argument("--base-url", default=None, help="a mirror holding the repository paths (default: GitHub's media host)")
    f.add_argument("--dry-run", action="store_true", help="list what would be downloaded and stop")

    k = sub.add_parser("knn", help="the reference's KNN table from its released folds",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    common(k)
    k.add_argument("--vit4k", action="store_true",
                   help="also KNN on the mean of the [M, 192] region tokens (needs the slide files)")
    k.add_argument("--out", type=Path, default=None, help="folder for the table (CSV, Markdown)")
    k.add_argument("--record", action="store_true",
                   help="also write benchmarks/results/released_knn.json (command, commit, machine) for the book")

    for name, help_ in (("table1", "HIPT-GP and MIL on the [M, 192] region tokens (the reference's issue-25 rerun)"),
                        ("survival", "HIPT-GP overall survival (BRCA, LUAD) on the [M, 192] region tokens")):
        t = sub.add_parser(name, help=help_, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        common(t)
        t.add_argument("--out", type=Path, required=True,
                       help="results folder; finished folds there are read back, so a rerun resumes")
        t.add_argument("--folds", type=int, nargs="+", default=None, help="folds to run (default: all)")
        t.add_argument("--epochs", type=int, default=20, help="epochs per fold (the reference: 20)")
        t.add_argument("--device", default="auto", help="'cpu', 'cuda', or 'auto'")
        t.add_argument("--dry-run", action="store_true", help="list the runs and stop")
        t.add_argument("--record", action="store_true",
                       help=f"also write benchmarks/results/released_{name}.json (command, commit, machine) for the book")
        if name == "table1":
            t.add_argument("--methods", nargs="+", default=["hipt_gp", "mil"], choices=["hipt_gp", "mil"])
            t.add_argument("--fractions", type=float, nargs="+", default=[0.25, 1.0])

    p = sub.add_parser("patch", help="the reference's patch-level tables (CRC-100K, BCSS, BreastPathQ)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_patch_arguments(p)


def _record(args: argparse.Namespace, name: str, df: pd.DataFrame, title: str) -> None:
    """With ``--record``: keep the table in ``benchmarks/results/<name>.json`` with its command and commit,
    for the book to show where the files are absent."""
    if not getattr(args, "record", False):
        return
    import sys


    rows = [{k: (", ".join(f"{x:.4f}" for x in v) if isinstance(v, list) else v) for k, v in r.items()}
            for r in df.to_dict("records")]
    path = write_benchmark_result(name, rows, title=title, command="hipt " + " ".join(sys.argv[1:]),
                                  notes="computed from the reference's released embeddings (mahmoodlab/HIPT "
                                        "commit 780fafae), verified by sha256")
    print(f"recorded {path}")


def _save(df: pd.DataFrame, out: Path | None, name: str) -> None:
    if out is None:
        return

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / f"{name}.csv", df.to_csv(index=False))
    atomic_write_text(out / f"{name}.md", markdown_table(df))
    print(f"wrote {out / name}.csv and .md")


def _fetch(args: argparse.Namespace) -> int:

    chosen = args.knn or args.slides or args.patch
    files = []
    if args.knn or not chosen:
        files += knn_files()
    if args.slides or not chosen:
        files += task_slide_files()
    if args.patch:
        files += default_patch_files(include_resnet=args.include_resnet)
    root = released_root(args.root)
    print(f"{len(files)} files, {fx.format_bytes(fx.total_bytes(files))}, into {root}")
    if args.dry_run:
        return 0
    report = fx.fetch_files(files, root=root, workers=args.workers, verify_present=args.verify,
                            base_url=args.base_url)
    print(report.summary())
    return 1 if report.failed else 0


def _fetch_first(args: argparse.Namespace, files) -> None:
    """With ``--fetch``: download what is missing; stop with one error if anything failed."""
    if not args.fetch:
        return

    report = fetch_files(files, root=args.root)
    print(report.summary())
    if report.failed:
        raise HIPTError(f"{len(report.failed)} files could not be fetched; run the same command again to resume")


def _knn(args: argparse.Namespace) -> int:

    _fetch_first(args, knn_files() + (task_slide_files() if args.vit4k else []))

    table = knn_table(args.root)
    shown = table.drop(columns=["aucs"])
    print(markdown_table(shown, "{:+.3f}"))
    _save(shown, args.out, "released_knn")
    _record(args, "released_knn", table, "KNN on the reference's released mean-embedding folds (test AUC)")
    if args.vit4k:
        rec = vit4k_knn_row(args.root)

        rows = [{"encoder": "ViT-4K mean of [M, 192] (this package)", "task": t, "fraction": f,
                 "ours": format_mean_std(g["value"])} for (t, f), g in rec.groupby(["task", "fraction"])]
        print(markdown_table(pd.DataFrame(rows)))
        _save(pd.DataFrame(rows), args.out, "released_knn_vit4k")
    return 0


def _train(args: argparse.Namespace) -> int:


    overrides = {"max_epochs": args.epochs, "device": args.device}
    if args.folds is not None:
        overrides["folds"] = list(args.folds)
    if args.released_command == "table1":
        plan = table1_runs(methods=args.methods, fractions=args.fractions, folds=args.folds)
        minutes = estimate_seconds(plan, args.epochs, args.device) / 60
        print(f"{len(plan)} runs (task x method x fraction x fold), {args.epochs} epochs each, "
              f"{int(plan['n_train'].sum()) * args.epochs:,} slide steps in all: about {minutes:.0f} min of "
              f"training on this machine ({args.device}; measured step times); results in {args.out}, "
              "and a rerun skips the finished folds")
        if args.dry_run:
            print(plan.to_string(index=False))
            return 0
        _fetch_first(args, task_slide_files())
        records = run_table1(args.root, args.out, methods=args.methods, fractions=list(args.fractions), **overrides)
        summary = table1_summary(records)
        print(markdown_table(summary, "{:+.3f}"))
        _save(summary, args.out, "released_table1")
        _record(args, "released_table1", summary, "HIPT-GP and MIL on the released [M, 192] embeddings (test AUC)")
        return 0
    if args.dry_run:
        print(f"hipt_gp survival on {', '.join(SURVIVAL_TASKS)}: 5 folds each, {args.epochs} epochs")
        return 0
    _fetch_first(args, task_slide_files())
    result = run_survival(args.root, args.out, **overrides)
    print(markdown_table(result.drop(columns=["c_index"])))
    _save(result.drop(columns=["c_index"]), args.out, "released_survival")
    _record(args, "released_survival", result, "HIPT-GP overall survival on the released [M, 192] embeddings (c-index)")
    return 0


def run(args: argparse.Namespace) -> int:
    """Dispatch ``hipt released <sub-command>``."""
    cmd = args.released_command
    if cmd == "fetch":
        return _fetch(args)
    if cmd == "knn":
        return _knn(args)
    if cmd in ("table1", "survival"):
        return _train(args)
    if cmd == "patch":

        return run_patch(args)
    raise HIPTError(f"unknown sub-command {cmd!r}")
