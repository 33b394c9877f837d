"""Phantom cohorts for slide-level tasks: the cohort kinds and their classes, the per-kind generator
settings (stain jitter, JPEG subsampling, generator version), the cache folder of a cohort
(:func:`cohort_dir`), the ground truths of a cohort without writing it (:func:`cohort_truths`) and
:func:`make_cohort`, which writes (or reuses) the slides with ``table.csv`` and ``regions.csv``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from hipt.errors import HIPTError
from hipt.io import atomic_path, atomic_write_text
from hipt.paths import cache_dir
from hipt.phantom.layouts import _grid_cols, composition_region, context_region, tile_regions
from hipt.phantom.slides import STAIN_JITTER, PhantomTruth, _slide_truth, load_truth, make_slide, truth_path
from hipt.phantom.textures import MPP, _rng

__all__ = ["COHORT_KINDS", "COMPOSITION_CLASSES", "CONTEXT_CLASSES", "SURVIVAL_CLASSES", "COHORT_STAIN_JITTER",
           "COHORT_JPEG_SUBSAMPLING", "COHORT_VERSION", "Cohort", "cohort_dir", "cohort_truths", "make_cohort"]

COHORT_KINDS = ("composition2", "composition3", "context", "survival")
CONTEXT_CLASSES = ("apart", "touching")  # class 0: lymphocytes kept apart from tumour; 1: touching
SURVIVAL_CLASSES = ("low_contact", "high_contact")

#: Mean composition (tumour, stroma, lymphocytes, adipose) of each class of the composition cohorts.
COMPOSITION_CLASSES = {
    "composition2": {"tumour_rich": (0.45, 0.30, 0.10, 0.15), "stroma_rich": (0.12, 0.63, 0.10, 0.15)},
    "composition3": {"tumour_rich": (0.45, 0.30, 0.10, 0.15), "stroma_rich": (0.12, 0.63, 0.10, 0.15),
                     "lymphocyte_rich": (0.12, 0.33, 0.40, 0.15)},
}


@dataclass
class Cohort:
    """A generated phantom cohort.

    Attributes:
        table: one row per slide: ``slide_id`` (file stem), ``path`` (absolute), ``label`` (int),
            ``label_name``, ``case_id``, ``n_regions``, ``n_informative``, ``arrangement_score``; for
            ``survival`` also ``survival_months`` and ``censorship`` (1 = censored).
        out_dir: the cohort folder: slides ``<slide_id>.tif`` with truths ``<slide_id>.truth.npz``,
            ``table.csv``, ``regions.csv`` (one row per region: ``slide_id, region, x, y, w, h,
            informative``; level-0 px) and ``cohort.json`` (the arguments).
        kind: one of :data:`COHORT_KINDS`.
        class_names: ``label`` → name.
    """

    table: pd.DataFrame
    out_dir: Path
    kind: str
    class_names: tuple[str, ...]

    @property
    def paths(self) -> list[Path]:
        return [Path(p) for p in self.table["path"]]


#: Per-slide stain jitter (std of the optical-density multiplier, :func:`~hipt.phantom.make_slide`) of each cohort kind.
#: The arrangement cohorts draw every slide with the same stain, so that arrangement is the *only*
#: difference between slides (matched composition, matched staining): with the composition cohorts'
#: jitter, the slide-to-slide shift of the stage-1 tokens swamps the arrangement signal for the CPU
#: book's 64 slides (chapter 6, exercise).
COHORT_STAIN_JITTER = {"composition2": STAIN_JITTER, "composition3": STAIN_JITTER, "context": 0.0, "survival": 0.0}


#: JPEG chroma subsampling of each cohort kind's slides (:func:`~hipt.phantom.make_slide`).  The arrangement cohorts
#: are written 4:4:4 so that every level-0 cell decodes exactly as its bank tile, whatever its
#: neighbours (with 4:2:0 the decoder's chroma upsampling blends each cell's outer pixel ring with
#: the neighbouring cells, a trace of the arrangement inside single patches).
COHORT_JPEG_SUBSAMPLING = {"composition2": (2, 2), "composition3": (2, 2), "context": (1, 1), "survival": (1, 1)}

#: Generator version of each cohort kind, recorded in ``cohort.json`` and, above 1, in the cache folder
#: name (:func:`cohort_dir`), so features extracted from older slides are never reused.  2: the
#: arrangement cohorts are written with 4:4:4 JPEG (:data:`COHORT_JPEG_SUBSAMPLING`).
COHORT_VERSION = {"composition2": 1, "composition3": 1, "context": 2, "survival": 2}


def _cohort_stain_jitter(kind: str, stain_jitter: float | None) -> float:
    """``stain_jitter``, or the kind's default (:data:`COHORT_STAIN_JITTER`) when None."""
    return COHORT_STAIN_JITTER.get(kind, STAIN_JITTER) if stain_jitter is None else float(stain_jitter)


def cohort_dir(kind: str, n_slides: int = 32, regions_per_slide: int = 4, region_size: int = 2048, seed: int = 0,
               stain_jitter: float | None = None) -> Path:
    """The default cache folder of a cohort: ``<cache>/phantom/<kind>_n.._r.._s.._seed..[_sj..][_v..]``
    (``_sj<jitter>`` when the stain jitter is not :data:`~hipt.phantom.STAIN_JITTER`, ``_v<version>`` when the kind's
    :data:`COHORT_VERSION` is above 1)."""
    sj = _cohort_stain_jitter(kind, stain_jitter)
    tag = "" if sj == STAIN_JITTER else f"_sj{sj:g}"
    version = COHORT_VERSION.get(kind, 1)
    tag += f"_v{version}" if version > 1 else ""
    return cache_dir("phantom") / f"{kind}_n{n_slides}_r{regions_per_slide}_s{region_size}_seed{seed}{tag}"


def _survival_times(scores: np.ndarray, rng: np.random.Generator, beta: float, censor_fraction: float):
    """Weibull event times with hazard ∝ exp(−beta·(score − 0.5)) and independent exponential censoring.

    The censoring scale is solved for so that the expected censored fraction is ``censor_fraction``.
    """
    shape, scale0 = 1.3, 40.0  # months
    scale = scale0 * np.exp(beta * (scores - 0.5) / shape)  # PH: hazard ∝ exp(-beta (s - .5))
    t_event = scale * rng.weibull(shape, len(scores))
    # calibrate the censoring scale on a large deterministic sample of the same model
    cal = _rng(12345, 0xCA1)
    s_cal = cal.choice(scores, 20000) if len(scores) else np.full(20000, 0.5)
    t_cal = scale0 * np.exp(beta * (s_cal - 0.5) / shape) * cal.weibull(shape, 20000)
    u_cal = cal.exponential(1.0, 20000)
    lo, hi = 1e-2, 1e5
    for _ in range(60):
        mid = math.sqrt(lo * hi)
        frac = np.mean(mid * u_cal < t_cal)
        lo, hi = (mid, hi) if frac > censor_fraction else (lo, mid)
    c_scale = math.sqrt(lo * hi)
    t_cens = c_scale * rng.exponential(1.0, len(scores))
    censored = t_cens < t_event
    months = np.where(censored, t_cens, t_event)
    return np.round(np.maximum(months, 0.1), 2), censored.astype(int)


def _cohort_plan(kind: str, n_slides: int, regions_per_slide: int, grid: int, seed: int) -> list[dict]:
    """Per-slide plan: label, region layouts, informative flags (deterministic from the seed)."""
    rng = _rng(seed, 0xC0F0, COHORT_KINDS.index(kind))
    plans = []
    k = regions_per_slide
    if kind in ("composition2", "composition3"):
        classes = list(COMPOSITION_CLASSES[kind])
        labels = np.arange(n_slides) % len(classes)
        rng.shuffle(labels)
        for i, lab in enumerate(labels):
            fr = COMPOSITION_CLASSES[kind][classes[lab]]
            regs = [composition_region(grid, fr, rng) for _ in range(k)]
            plans.append(dict(label=int(lab), label_name=classes[lab], regions=regs, informative=[True] * k))
    elif kind == "context":
        labels = np.arange(n_slides) % 2
        rng.shuffle(labels)
        for lab in labels:
            n_inf = int(rng.integers(math.ceil(k / 2), k + 1)) if lab == 1 else 0
            flags = np.zeros(k, bool)
            flags[rng.permutation(k)[:n_inf]] = True
            regs = [context_region(grid, bool(f), rng) for f in flags]
            plans.append(dict(label=int(lab), label_name=CONTEXT_CLASSES[lab], regions=regs, informative=flags.tolist()))
    elif kind == "survival":
        n_infs = rng.integers(0, k + 1, n_slides)
        for n_inf in n_infs:
            flags = np.zeros(k, bool)
            flags[rng.permutation(k)[:n_inf]] = True
            regs = [context_region(grid, bool(f), rng) for f in flags]
            lab = int(n_inf / k >= 0.5)
            plans.append(dict(label=lab, label_name=SURVIVAL_CLASSES[lab], regions=regs, informative=flags.tolist()))
        scores = np.array([np.mean(p["informative"]) for p in plans])
        months, cens = _survival_times(scores, rng, beta=2.5, censor_fraction=0.35)
        for p, m, c in zip(plans, months, cens):
            p["survival_months"], p["censorship"] = float(m), int(c)
    else:
        raise HIPTError(f"unknown cohort kind {kind!r}; one of {', '.join(COHORT_KINDS)}")
    return plans


def cohort_truths(kind: str, n_slides: int = 32, regions_per_slide: int = 4, region_size: int = 2048,
                  patch_size: int = 256, seed: int = 0, *, n_variants: int = 8,
                  stain_jitter: float | None = None) -> list[PhantomTruth]:
    """The ground truths :func:`make_cohort` gives its slides (same arguments), without rendering or
    writing a slide: cheap (layouts and per-cell draws only), for checks over many cohort seeds.

    Each truth's ``meta`` holds ``kind``, ``label``, ``label_name`` and ``index``.
    """
    if kind not in COHORT_KINDS:
        raise HIPTError(f"unknown cohort kind {kind!r}; one of {', '.join(COHORT_KINDS)}")
    sj = _cohort_stain_jitter(kind, stain_jitter)
    truths = []
    for i, plan in enumerate(_cohort_plan(kind, n_slides, regions_per_slide, region_size // patch_size, seed)):
        layout, boxes = tile_regions(plan["regions"])
        slide_seed = int(_rng(seed, i, 0x5EED).integers(2**31))
        meta = dict(kind=kind, label=plan["label"], label_name=plan["label_name"], index=i)
        truths.append(_slide_truth(layout, _rng(slide_seed, 0x511D), slide_seed, MPP, patch_size, seed, n_variants,
                                   sj, boxes * patch_size, np.asarray(plan["informative"]), meta))
    return truths


def make_cohort(
    kind: str,
    out_dir: str | Path | None = None,
    n_slides: int = 32,
    regions_per_slide: int = 4,
    region_size: int = 2048,
    patch_size: int = 256,
    seed: int = 0,
    *,
    n_variants: int = 8,
    quality: int = 80,
    stain_jitter: float | None = None,
    progress: bool = True,
) -> Cohort:
    """Generate (or reuse) a phantom cohort of slides for a slide-level task.

    Each slide is ``regions_per_slide`` regions of ``region_size`` px (a grid of ``region_size /
    patch_size`` pure cells per side) laid out by :func:`~hipt.phantom.tile_regions` on the region grid anchored at the
    slide origin, with two cells of glass at the right and bottom.  All slides of a cohort share one
    texture bank (bank seed = ``seed``), so a tissue type looks the same in every class.

    Kinds:

    - ``composition2`` / ``composition3``: the label is the tissue composition (tumour-rich vs
      stroma-rich [vs lymphocyte-rich], :data:`COMPOSITION_CLASSES`); every region is informative.
    - ``context``: **matched composition**; the label is the spatial arrangement only.  Every region of
      every slide holds exactly the same multiset of cells (:func:`~hipt.phantom.context_counts`), so every slide of
      either class has exactly the same number of patches of each tissue type, and the patches
      themselves come from the same bank.  Class 1 (``touching``): half to all of its regions are
      informative (the lymphocyte aggregate hugs the tumour nest); class 0 (``apart``): none is
      (lymphocytes at least one stroma cell away from tumour).  A bag of patches cannot separate the
      classes; region context can.  Matched staining too: the slides have no stain jitter
      (:data:`COHORT_STAIN_JITTER`), so the arrangement is the only difference between slides.

      What the generator guarantees (checked by ``tests/test_phantom_context.py``): (1) every slide of
      either class has the same number of cells of each tissue type; (2) each cell shows a bank tile
      whose variant and flip/rotation are drawn independently of the label and of the layout; (3) no
      stain jitter; (4) slides are written with 4:4:4 JPEG (:data:`COHORT_JPEG_SUBSAMPLING`), so every
      level-0 cell decodes exactly as its bank tile, whatever its neighbours.  Hence the multiset of
      level-0 patches on the cell grid has the same distribution in both classes: a model of a bag of
      such patches (mean pooling, ABMIL) is at chance in expectation, and only what spans several
      patches separates the classes.  Not covered: patches off the cell grid (another patch size or
      offset) and the lower pyramid levels, whose pixels mix neighbouring cells.
    - ``survival``: regions as in ``context``; each case (one slide) has ``n_informative`` uniform in
      0..k, ``arrangement_score = n_informative / k``, Weibull survival with hazard ∝
      exp(−2.5·(score − 0.5)) (contact is protective) and independent exponential censoring calibrated to
      ~35 % censored.  ``label`` = score ≥ 0.5.

    ``stain_jitter``: the per-slide stain jitter (:func:`~hipt.phantom.make_slide`); None: the kind's
    (:data:`COHORT_STAIN_JITTER`: 0.06 for the composition cohorts, 0 for ``context`` and ``survival``).

    Re-running with the same arguments reuses the files (``cohort.json`` records them); a slide whose
    file and truth exist is not drawn again.  ``table.csv`` is written atomically.

    Returns:
        :class:`Cohort`.
    """
    if kind not in COHORT_KINDS:
        raise HIPTError(f"unknown cohort kind {kind!r}; one of {', '.join(COHORT_KINDS)}")
    if region_size % patch_size:
        raise HIPTError(f"make_cohort: region_size {region_size} is not a multiple of patch_size {patch_size}")
    if n_slides < 1 or regions_per_slide < 1:
        raise HIPTError("make_cohort: n_slides and regions_per_slide must be ≥ 1")
    sj = _cohort_stain_jitter(kind, stain_jitter)
    out_dir = Path(out_dir) if out_dir is not None else cohort_dir(kind, n_slides, regions_per_slide, region_size, seed, sj)
    out_dir.mkdir(parents=True, exist_ok=True)
    params = dict(kind=kind, n_slides=n_slides, regions_per_slide=regions_per_slide, region_size=region_size,
                  patch_size=patch_size, seed=seed, n_variants=n_variants, quality=quality,
                  version=COHORT_VERSION.get(kind, 1))
    if sj != STAIN_JITTER:
        params["stain_jitter"] = sj  # only when not the default: the composition cohorts' manifests stay valid
    class_names = _class_names(kind)
    manifest = out_dir / "cohort.json"
    table_csv = out_dir / "table.csv"
    if manifest.is_file() and table_csv.is_file():
        try:
            same = json.loads(manifest.read_text()) == params
        except ValueError:
            same = False
        if same:
            table = pd.read_csv(table_csv)
            table["path"] = [str(out_dir.resolve() / Path(p).name) for p in table["path"]]
            if all(Path(p).is_file() and truth_path(p).is_file() for p in table["path"]):
                return Cohort(table=table, out_dir=out_dir, kind=kind, class_names=class_names)
    atomic_write_text(manifest, json.dumps(params, indent=1))

    grid = region_size // patch_size
    plans = _cohort_plan(kind, n_slides, regions_per_slide, grid, seed)
    rows, region_rows = [], []
    it = enumerate(plans)
    if progress:
        it = tqdm(it, total=len(plans), desc=f"phantom {kind}", unit="slide")
    for i, plan in it:
        slide_id = f"{kind}_{i:03d}"
        path = (out_dir / f"{slide_id}.tif").resolve()
        meta = dict(kind=kind, label=plan["label"], label_name=plan["label_name"], params=params, index=i)
        if not _slide_done(path, meta):
            layout, boxes = tile_regions(plan["regions"])
            make_slide(path, layout, seed=int(_rng(seed, i, 0x5EED).integers(2**31)), bank_seed=seed,
                       n_variants=n_variants, cell=patch_size, quality=quality, regions=boxes * patch_size, stain_jitter=sj,
                       informative=np.asarray(plan["informative"]), meta=meta,
                       jpeg_subsampling=COHORT_JPEG_SUBSAMPLING.get(kind, (2, 2)))
        k = len(plan["informative"])
        row = dict(slide_id=slide_id, path=str(path), label=plan["label"], label_name=plan["label_name"],
                   case_id=f"case_{i:03d}", n_regions=k, n_informative=int(np.sum(plan["informative"])),
                   arrangement_score=float(np.mean(plan["informative"])) if kind in ("context", "survival") else float("nan"))
        if kind == "survival":
            row.update(survival_months=plan["survival_months"], censorship=plan["censorship"])
        rows.append(row)
        g = region_size
        for r, inf in enumerate(plan["informative"]):
            gy, gx = divmod(r, _grid_cols(k))
            region_rows.append(dict(slide_id=slide_id, region=r, x=gx * g, y=gy * g, w=g, h=g, informative=bool(inf)))
    table = pd.DataFrame(rows)
    with atomic_path(out_dir / "regions.csv") as tmp:
        pd.DataFrame(region_rows).to_csv(tmp, index=False)
    with atomic_path(table_csv) as tmp:
        table.to_csv(tmp, index=False)
    return Cohort(table=table, out_dir=out_dir, kind=kind, class_names=class_names)


def _class_names(kind: str) -> tuple[str, ...]:
    if kind in COMPOSITION_CLASSES:
        return tuple(COMPOSITION_CLASSES[kind])
    return CONTEXT_CLASSES if kind == "context" else SURVIVAL_CLASSES


def _slide_done(path: Path, meta: dict) -> bool:
    if not (path.is_file() and truth_path(path).is_file()):
        return False
    try:
        return load_truth(path).meta == json.loads(json.dumps(meta))
    except HIPTError:
        return False
