"""Layout maps of phantom slides: 2-D arrays of tissue codes, one per cell.  Free-form slide layouts
(:func:`random_layout`), the regions of the cohorts (:func:`context_region` with its exact cell counts,
:func:`composition_region`), the count of touching cells (:func:`touches`) and the placement of regions
on a slide's region grid (:func:`tile_regions`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage as ndi

from hipt.errors import HIPTError
from hipt.phantom.textures import ADIPOSE, BACKGROUND, LYMPHOCYTES, STROMA, TUMOUR, _rng, _smooth_noise

__all__ = ["CONTEXT_FRACTIONS", "touches", "context_counts", "context_region", "composition_region",
           "random_layout", "tile_regions"]


def _grow_blob(rng: np.random.Generator, allowed: np.ndarray, size: int, seeds: np.ndarray | None = None,
               prefer: np.ndarray | None = None, compact: float = 2.0) -> np.ndarray | None:
    """Grow a 4-connected blob of ``size`` cells inside ``allowed`` (bool [G, G]).

    Starts at a random cell of ``seeds`` (default: any allowed cell) and adds frontier cells with weight
    ``(1 + n_blob_neighbours)**compact × prefer``.  Returns None when the blob cannot reach ``size``.
    """
    g0, g1 = allowed.shape
    cand = np.argwhere(allowed if seeds is None else (seeds & allowed))
    if len(cand) == 0 or size > allowed.sum():
        return None
    blob = np.zeros_like(allowed)
    y, x = cand[rng.integers(len(cand))]
    blob[y, x] = True
    for _ in range(size - 1):
        nb = np.zeros(allowed.shape, np.int64)
        nb[1:] += blob[:-1]
        nb[:-1] += blob[1:]
        nb[:, 1:] += blob[:, :-1]
        nb[:, :-1] += blob[:, 1:]
        front = (nb > 0) & allowed & ~blob
        idx = np.argwhere(front)
        if len(idx) == 0:
            return None
        w = (1.0 + nb[front]) ** compact
        if prefer is not None:
            w = w * prefer[front]
        y, x = idx[rng.choice(len(idx), p=w / w.sum())]
        blob[y, x] = True
    return blob


def _dilate(mask: np.ndarray, diagonal: bool = True) -> np.ndarray:
    st = np.ones((3, 3), bool) if diagonal else ndi.generate_binary_structure(2, 1)
    return ndi.binary_dilation(mask, st)


def touches(layout: np.ndarray, a: int, b: int, diagonal: bool = False) -> int:
    """Number of neighbouring cell pairs (4- or 8-neighbourhood) with one code ``a`` and one ``b``."""
    la, lb = layout == a, layout == b
    n = int((la[:-1] & lb[1:]).sum() + (lb[:-1] & la[1:]).sum() + (la[:, :-1] & lb[:, 1:]).sum() + (lb[:, :-1] & la[:, 1:]).sum())
    if diagonal:
        n += int((la[:-1, :-1] & lb[1:, 1:]).sum() + (lb[:-1, :-1] & la[1:, 1:]).sum())
        n += int((la[:-1, 1:] & lb[1:, :-1]).sum() + (lb[:-1, 1:] & la[1:, :-1]).sum())
    return n


#: Cells per tissue type in a ``context`` region, as fractions (tumour, stroma, lymphocytes, adipose).
CONTEXT_FRACTIONS = {TUMOUR: 0.25, LYMPHOCYTES: 0.125, ADIPOSE: 0.125}


def context_counts(grid: int) -> dict[int, int]:
    """Exact cell counts per tissue type of every ``context`` region of ``grid × grid`` cells."""
    n = grid * grid
    counts = {t: int(round(f * n)) for t, f in CONTEXT_FRACTIONS.items()}
    counts[STROMA] = n - sum(counts.values())
    return counts


def context_region(grid: int, informative: bool, rng: np.random.Generator, max_tries: int = 200) -> np.ndarray:
    """A ``grid × grid`` region layout for the ``context`` cohort.

    Every region has exactly the same multiset of cells (:func:`context_counts`: 25 % tumour, 12.5 %
    lymphocytes, 12.5 % adipose, the rest stroma); only the arrangement differs:

    - informative: the lymphocyte aggregate grows from the tumour nest's margin and hugs it (at least a
      third as many shared lymphocyte–tumour cell edges as there are lymphocyte cells, and ≥ 2);
    - not informative: every lymphocyte cell is at least 2 cells (Chebyshev) from every tumour cell,
      i.e. separated by stroma (or fat); no lymphocyte cell touches tumour, not even diagonally.
    """
    counts = context_counts(grid)
    min_contact = max(2, math.ceil(counts[LYMPHOCYTES] / 3))
    for _ in range(max_tries):
        lay = np.full((grid, grid), STROMA, np.int8)
        tum = _grow_blob(rng, np.ones((grid, grid), bool), counts[TUMOUR], compact=3.0)
        if tum is None:
            continue
        free = ~tum
        if informative:
            margin = _dilate(tum, diagonal=False) & free
            lym = _grow_blob(rng, free, counts[LYMPHOCYTES], seeds=margin, prefer=np.where(margin, 10.0, 1.0))
        else:
            lym = _grow_blob(rng, free & ~_dilate(tum), counts[LYMPHOCYTES])
        if lym is None:
            continue
        lay[tum] = TUMOUR
        lay[lym] = LYMPHOCYTES
        fat = _grow_blob(rng, (lay == STROMA), counts[ADIPOSE])
        if fat is None:
            continue
        lay[fat] = ADIPOSE
        contact = touches(lay, TUMOUR, LYMPHOCYTES, diagonal=not informative)
        if (informative and contact >= min_contact) or (not informative and contact == 0):
            return lay
    raise HIPTError(f"context_region: could not place the arrangement in a {grid}x{grid} region; use a larger region")


_COMP_ORDER = (TUMOUR, STROMA, LYMPHOCYTES, ADIPOSE)


def _largest_remainder(fractions: np.ndarray, n: int) -> np.ndarray:
    raw = fractions / fractions.sum() * n
    counts = np.floor(raw).astype(int)
    for i in np.argsort(-(raw - counts))[: n - counts.sum()]:
        counts[i] += 1
    return counts


def composition_region(grid: int, fractions: Sequence[float], rng: np.random.Generator, concentration: float = 40.0) -> np.ndarray:
    """A ``grid × grid`` region whose composition is drawn around ``fractions`` (tumour, stroma, lymph, fat).

    Counts come from a Dirichlet(``concentration × fractions``); tumour, lymphocytes and fat are placed
    as compact blobs (split into several where space runs out), stroma fills the rest.
    """
    n = grid * grid
    counts = _largest_remainder(rng.dirichlet(concentration * np.asarray(fractions, float)), n)
    lay = np.full((grid, grid), STROMA, np.int8)
    for code, k in zip(_COMP_ORDER, counts):
        if code == STROMA:
            continue
        left = int(k)
        while left > 0:
            free = lay == STROMA
            part = min(left, int(free.sum()))
            for size_try in (part, max(part // 2, 1), 1):
                blob = _grow_blob(rng, free, size_try)
                if blob is not None:
                    break
            lay[blob] = code
            left -= int(blob.sum())
    return lay


def random_layout(rows: int, cols: int, seed: int = 0, tissue_fraction: float = 0.55) -> np.ndarray:
    """A free-form slide layout [rows, cols]: one tissue piece (noisy ellipse) on glass, types in patches.

    Used by ``hipt phantom slide`` and by :func:`~hipt.phantom.make_slide` when no layout is given.  Adipose is kept
    rare (~8 % of the seeds): like real fat it is nearly white at low magnification, so saturation-based
    tissue segmentation tends to miss it.
    """
    rng = _rng(seed, 0x1A70)
    yy, xx = np.mgrid[0:rows, 0:cols].astype(np.float32)
    ey, ex = (yy + 0.5) / rows - 0.5, (xx + 0.5) / cols - 0.5
    r = np.sqrt((ey / 0.42) ** 2 + (ex / 0.42) ** 2)
    noise = _smooth_noise(rng, (rows, cols), max(min(rows, cols) / 8, 1.0)) if min(rows, cols) > 2 else 0
    field_ = r + 0.12 * noise
    tissue = field_ <= np.quantile(field_, tissue_fraction) if rows * cols > 1 else np.ones((rows, cols), bool)
    # tissue types: nearest of a few random seeds (contiguous areas), weighted towards stroma
    n_seeds = max(4, int(rows * cols / 40))
    sy, sx = rng.uniform(0, rows, n_seeds), rng.uniform(0, cols, n_seeds)
    seed_type = rng.choice([TUMOUR, STROMA, LYMPHOCYTES, ADIPOSE], n_seeds, p=[0.32, 0.42, 0.18, 0.08])
    d = (yy[None] + 0.5 - sy[:, None, None]) ** 2 + (xx[None] + 0.5 - sx[:, None, None]) ** 2
    layout = seed_type[np.argmin(d, 0)].astype(np.int8)
    layout[~tissue] = BACKGROUND
    return layout


def _grid_cols(k: int) -> int:
    """Columns of the region grid of a slide with ``k`` regions (2×2 for 4, 2×3 for 5–6, ...)."""
    return math.ceil(math.sqrt(k))


def tile_regions(region_layouts: Sequence[np.ndarray], margin: int = 2, cols: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Lay regions out on a grid into one slide layout with glass around.

    Regions sit on the region grid **anchored at the slide origin** (region ``k`` at grid position
    ``(k // cols, k % cols)``), so a region grid of the same size anchored at (0, 0) — what ``hipt patch``
    uses — finds exactly these regions.  ``margin`` cells of glass are added on the right and at the
    bottom; unused grid positions are glass too.

    Returns:
        ``(layout, boxes)``: slide layout [R, C] int8 and region boxes [K, 4] ``(col, row, w, h)`` in cells.
    """
    k = len(region_layouts)
    g = region_layouts[0].shape[0]
    cols = cols or _grid_cols(k)
    rows = math.ceil(k / cols)
    layout = np.full((rows * g + margin, cols * g + margin), BACKGROUND, np.int8)
    boxes = []
    for i, reg in enumerate(region_layouts):
        r, c = divmod(i, cols)
        layout[r * g:(r + 1) * g, c * g:(c + 1) * g] = reg
        boxes.append((c * g, r * g, g, g))
    return layout, np.asarray(boxes, np.int64)
