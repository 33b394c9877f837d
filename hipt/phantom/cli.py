"""Generate a phantom slide with a free-form layout, or a phantom cohort, with ground truth (``hipt phantom``).

The command line of :func:`hipt.phantom.make_slide` and :func:`hipt.phantom.make_cohort`.
"""

from __future__ import annotations

import argparse
import time

from hipt.errors import HIPTError
from hipt.phantom.cohorts import COHORT_KINDS, COHORT_STAIN_JITTER, make_cohort
from hipt.phantom.slides import make_slide
from hipt.phantom.textures import MPP

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``hipt phantom slide OUT.tif [--size N]`` or ``hipt phantom cohort --kind K --out DIR``."""
    parser.add_argument("what", choices=("slide", "cohort"), help="one slide with a free-form layout, or a cohort")
    parser.add_argument("out", nargs="?", help="slide: the output .tif (cohort: same as --out)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (everything is deterministic)")
    g = parser.add_argument_group("slide")
    g.add_argument("--size", type=int, default=16384, help="slide side in pixels at 0.5 µm/px")
    g.add_argument("--mpp", type=float, default=MPP, help="µm per pixel written into the file")
    g = parser.add_argument_group("cohort")
    g.add_argument("--kind", choices=COHORT_KINDS, default="context", help="cohort kind")
    g.add_argument("--out", dest="out_dir", help="cohort folder; None: a folder under the cache (data/cache/phantom/)")
    g.add_argument("--n-slides", type=int, default=32)
    g.add_argument("--regions-per-slide", type=int, default=4)
    g.add_argument("--region-size", type=int, default=2048, help="region side in px (4096 as in the paper)")
    g.add_argument("--patch-size", type=int, default=256, help="patch = layout cell side in px")
    g.add_argument("--stain-jitter", type=float, default=None,
                   help="per-slide stain jitter (std of the optical-density multiplier); default: the kind's "
                        f"({', '.join(f'{k} {v:g}' for k, v in COHORT_STAIN_JITTER.items())})")


def run(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    if args.what == "slide":
        if not args.out:
            raise HIPTError("hipt phantom slide: give the output path, e.g. hipt phantom slide out.tif")
        s = make_slide(args.out, None, seed=args.seed, mpp=args.mpp, size=args.size, progress=True)
        w, h = s.size
        print(f"{s.path}: {w}x{h} px at {args.mpp} µm/px, {s.path.stat().st_size / 1e6:.1f} MB, "
              f"truth {s.truth_path.name} ({time.perf_counter() - t0:.1f} s)")
    else:
        out_dir = args.out_dir or args.out
        c = make_cohort(args.kind, out_dir, n_slides=args.n_slides, regions_per_slide=args.regions_per_slide,
                        region_size=args.region_size, patch_size=args.patch_size, seed=args.seed,
                        stain_jitter=args.stain_jitter)
        counts = c.table["label_name"].value_counts().to_dict()
        print(f"{c.out_dir}: {len(c.table)} slides ({counts}), table {c.out_dir / 'table.csv'} "
              f"({time.perf_counter() - t0:.1f} s)")
    return 0
