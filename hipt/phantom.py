"""Procedural H&E-like phantom slides and cohorts with ground truth (``hipt phantom``).

Real whole-slide images are large, slow to obtain and come without pixel-level truth.  This module
draws *phantom* tissue at the physical scale HIPT works at (0.5 µm/px, "20×") from a **layout map**: a
2-D array of tissue codes, one per ``cell × cell`` block of pixels (256 px = one ViT-256 patch by
default).  Every cell is one pure tissue type, so every patch on the cell grid is pure too, and each
slide comes with its ground truth: the tissue map, the nuclei mask of every pixel, and for cohorts the
regions and which of them carry the label-defining arrangement.

Tissue types (:data:`TISSUES`; codes are indices into it):

====  ===============  ======================================================================
code  name             looks like
====  ===============  ======================================================================
0     ``background``   glass: near white, faint noise, no nuclei
1     ``tumour``       carcinoma: dense, large irregular hyperchromatic nuclei (8–12 µm), pleomorphic,
                       nucleoli, pale purple cytoplasm with faint cell borders
2     ``stroma``       pink eosin fibres (wavy, oriented) with sparse elongated fibroblast nuclei
3     ``lymphocytes``  aggregate of small round very dark nuclei (6–7 µm), densely packed
4     ``adipose``      empty polygonal adipocytes (~60 µm) with thin pink membranes
====  ===============  ======================================================================

Colours are made the way light makes them: each tissue is drawn as two stain-concentration maps
(hematoxylin, eosin), converted to RGB with Beer–Lambert (``rgb = 255·exp(−(c_H·h + c_E·e))``).

Main entry points:

- :func:`render_patch` — one patch of a tissue type and its nuclei mask (fresh, from a seed);
- :func:`phantom_patches` — a labelled batch of patches (stage-1 DINO data, tissue-type KNN);
- :func:`make_slide` / :func:`load_truth` — a pyramidal tiled TIFF that OpenSlide opens with its
  ``openslide.mpp-x``, written tile by tile (memory does not grow with the slide), and its truth;
- :func:`make_cohort` — folders of slides with a ``table.csv`` for slide-level tasks: ``composition2``,
  ``composition3`` (label = tissue composition), ``context`` (label = spatial arrangement only,
  composition matched exactly) and ``survival`` (hazard depends on the arrangement).

Speed: a slide is composed from a small **texture bank** (``n_variants`` fresh renders per tissue type,
made once per bank seed and cached) by copying bank tiles per layout cell with one of the 8 dihedral
transforms (flips/rot90) and a per-slide stain jitter.  Lower pyramid levels are composed from
block-averaged bank tiles, so every level agrees with level 0 without ever materializing it.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from hipt.errors import HIPTError, InputFileError
from hipt.io import atomic_path, atomic_write_text

__all__ = [
    "TISSUES", "BACKGROUND", "TUMOUR", "STROMA", "LYMPHOCYTES", "ADIPOSE", "CELL", "MPP", "STAIN_JITTER",
    "COHORT_STAIN_JITTER", "COHORT_JPEG_SUBSAMPLING", "COHORT_VERSION",
    "COHORT_KINDS", "render_patch", "phantom_patches", "TextureBank", "texture_bank",
    "PhantomTruth", "PhantomSlide", "make_slide", "load_truth", "truth_path", "random_layout",
    "context_region", "context_counts", "composition_region", "cohort_truths", "touches", "tile_regions", "Cohort", "make_cohort",
    "cohort_dir", "COMPOSITION_CLASSES", "CONTEXT_CLASSES", "SURVIVAL_CLASSES",
    "add_arguments", "run",
]

TISSUES: tuple[str, ...] = ("background", "tumour", "stroma", "lymphocytes", "adipose")
BACKGROUND, TUMOUR, STROMA, LYMPHOCYTES, ADIPOSE = range(len(TISSUES))
CELL = 256  #: default layout cell = one ViT-256 patch, in level-0 pixels
STAIN_JITTER = 0.06  #: default per-slide stain jitter of :func:`make_slide`
MPP = 0.5  #: default resolution, µm per pixel ("20×")

# Optical densities of one unit of stain (per RGB channel).  Hematoxylin: purple-blue; eosin: pink.
_H_OD = np.array([0.56, 0.80, 0.38], np.float32)
_E_OD = np.array([0.16, 0.88, 0.44], np.float32)
_GLASS_OD = np.array([0.030, 0.034, 0.028], np.float32)  # slide glass + mounting medium


# --------------------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------------------

def _tissue_code(tissue: int | str) -> int:
    if isinstance(tissue, str):
        name = tissue.lower().replace("tumor", "tumour")
        aliases = {"glass": "background", "lymphocyte": "lymphocytes", "lymph": "lymphocytes", "fat": "adipose"}
        name = aliases.get(name, name)
        if name not in TISSUES:
            raise HIPTError(f"unknown tissue type {tissue!r}; one of {', '.join(TISSUES)}")
        return TISSUES.index(name)
    code = int(tissue)
    if not 0 <= code < len(TISSUES):
        raise HIPTError(f"unknown tissue code {tissue!r}; codes are 0..{len(TISSUES) - 1} ({', '.join(TISSUES)})")
    return code


def _rng(*keys: int) -> np.random.Generator:
    """A generator seeded by a tuple of non-negative ints (independent streams per key)."""
    return np.random.default_rng(np.random.SeedSequence([int(k) & 0xFFFFFFFF for k in keys]))


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float | Sequence[float]) -> np.ndarray:
    """Gaussian-filtered white noise rescaled to zero mean and unit standard deviation, float32 ``shape``.

    ``sigma`` is capped at a quarter of the side, so small patches still get a varying field.
    """
    sigma = np.minimum(np.broadcast_to(np.asarray(sigma, float), (2,)), np.asarray(shape) / 4)
    # smooth fields are drawn on a coarser grid (≥ 2.5 samples per sigma) and interpolated: much faster
    step = [max(1, int(s_ / 2.5)) for s_ in sigma]
    small = tuple(-(-n_ // f) for n_, f in zip(shape, step))
    n = ndi.gaussian_filter(rng.standard_normal(small).astype(np.float32), sigma / np.asarray(step), mode="wrap")
    if step != [1, 1]:
        n = ndi.zoom(n, step, order=1, mode="grid-wrap", grid_mode=True)[: shape[0], : shape[1]]
    n -= n.mean()
    return n / (n.std() + 1e-6)


def _od_to_rgb(od: np.ndarray, rng: np.random.Generator, noise: float = 1.6) -> np.ndarray:
    """Optical density ``[H, W, 3]`` → RGB uint8 with a little sensor noise."""
    rgb = 255.0 * np.exp(-od)
    rgb += rng.normal(0.0, noise, rgb.shape).astype(np.float32)
    return np.clip(rgb + 0.5, 0, 255).astype(np.uint8)


def _compose_od(h: np.ndarray, e: np.ndarray, blur: float = 0.6) -> np.ndarray:
    """Stain concentrations ``[H, W]`` (hematoxylin, eosin) → optical density ``[H, W, 3]``."""
    if blur:
        h = ndi.gaussian_filter(h, blur)
        e = ndi.gaussian_filter(e, blur)
    return h[..., None] * _H_OD + e[..., None] * _E_OD + _GLASS_OD


def _label_borders(labels: np.ndarray) -> np.ndarray:
    """bool [H, W]: pixels whose right or lower neighbour has another label (1-px cell borders)."""
    border = np.zeros(labels.shape, bool)
    border[:-1] |= labels[:-1] != labels[1:]
    border[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    return border


def _hex_points(rng: np.random.Generator, size: int, spacing: float, jitter: float, margin: float) -> np.ndarray:
    """Jittered hexagonal lattice of points covering ``[-margin, size + margin)²``: ``[N, 2]`` (y, x)."""
    dy = spacing * math.sqrt(3) / 2
    oy, ox = rng.uniform(0, dy), rng.uniform(0, spacing)
    ys = np.arange(-margin + oy, size + margin, dy)
    pts = []
    for i, y in enumerate(ys):
        xs = np.arange(-margin + ox + (spacing / 2) * (i % 2), size + margin, spacing)
        pts.append(np.stack([np.full_like(xs, y), xs], 1))
    p = np.concatenate(pts, 0)
    return p + rng.normal(0, jitter * spacing, p.shape)


def _stamp_nuclei(
    h: np.ndarray, e: np.ndarray, mask: np.ndarray, rng: np.random.Generator,
    centres: np.ndarray, semi_major: np.ndarray, semi_minor: np.ndarray, angles: np.ndarray,
    irregularity: float, intensity: np.ndarray, texture: np.ndarray | None, texture_amp: float,
    rim: float = 0.25, nucleoli: float = 0.0, vesicular: float = 0.0,
) -> None:
    """Draw nuclei into the hematoxylin map ``h`` (in place), paling eosin under them; set ``mask``.

    Each nucleus is an ellipse (``semi_major``, ``semi_minor`` px, rotated by ``angles``) whose radius
    is modulated by low harmonics (``irregularity``) for pleomorphic outlines, with chromatin texture
    (``texture`` [H, W] sampled in place), a darker nuclear membrane (``rim``) and, with probability
    ``nucleoli``, one or two nucleoli; ``vesicular`` pales the centre (open chromatin).
    """
    n = len(centres)
    if n == 0:
        return
    size_y, size_x = h.shape
    half = int(math.ceil(float(np.max(semi_major)) * (1 + 2.5 * irregularity) + 2))
    k = 2 * half + 1
    # every nucleus is drawn in its own k×k window, all at once: [N, k, k]
    iy, ix = np.floor(centres[:, 0]).astype(np.int64), np.floor(centres[:, 1]).astype(np.int64)
    off = np.arange(-half, half + 1, dtype=np.float32)
    dy = off[None, :, None] - (centres[:, 0] - iy).astype(np.float32)[:, None, None]
    dx = off[None, None, :] - (centres[:, 1] - ix).astype(np.float32)[:, None, None]
    ca = np.cos(angles).astype(np.float32)[:, None, None]
    sa = np.sin(angles).astype(np.float32)[:, None, None]
    u, v = dx * ca + dy * sa, -dx * sa + dy * ca
    a = np.asarray(semi_major, np.float32)[:, None, None]
    b = np.asarray(semi_minor, np.float32)[:, None, None]
    r = np.sqrt((u / a) ** 2 + (v / b) ** 2)
    bound = np.float32(1.0)
    if irregularity:
        theta = np.arctan2(v, u)
        harmonics = np.array([2, 3, 4, 5], np.float32)
        coef = (rng.normal(size=(n, 4)) * irregularity / np.sqrt(harmonics)).astype(np.float32)
        phase = rng.uniform(0, 2 * math.pi, (n, 4)).astype(np.float32)
        for j, m in enumerate(harmonics):
            bound = bound + coef[:, j, None, None] * np.cos(m * theta + phase[:, j, None, None])
    depth = (bound - r) * b  # ≈ px inside the boundary
    alpha = np.clip(depth + 0.5, 0.0, 1.0)
    inside = depth > 0
    val = np.asarray(intensity, np.float32)[:, None, None] * (1.0 + rim * np.exp(-0.5 * (depth / 1.2) ** 2))
    if vesicular:  # open chromatin: paler centre, chromatin along the membrane
        val *= 1.0 - vesicular * np.clip(depth / (0.6 * b), 0.0, 1.0)
    if texture is not None:
        windows = np.lib.stride_tricks.sliding_window_view(np.pad(texture, half, mode="wrap"), (k, k))
        val *= 1.0 + texture_amp * windows[np.clip(iy, 0, size_y - 1), np.clip(ix, 0, size_x - 1)]
    if nucleoli:
        has = rng.random(n) < nucleoli
        count = rng.integers(1, 3, n)
        for j in range(2):
            rr, ta = rng.uniform(0, 0.5, n), rng.uniform(0, 2 * math.pi, n)
            ny, nx = rr * semi_minor * np.sin(ta), rr * semi_major * np.cos(ta)
            ly = (nx * np.sin(angles) + ny * np.cos(angles)).astype(np.float32)[:, None, None]
            lx = (nx * np.cos(angles) - ny * np.sin(angles)).astype(np.float32)[:, None, None]
            on = (has & (count > j)).astype(np.float32)[:, None, None]
            val += on * 0.9 * np.exp(-((dy - ly) ** 2 + (dx - lx) ** 2) / (2 * 1.3**2))
    # scatter into the maps through a padded canvas (windows may hang over the edges)
    wy = (iy[:, None] + np.arange(k)[None, :])[:, :, None]  # padded coordinates
    wx = (ix[:, None] + np.arange(k)[None, :])[:, None, :]
    ok = ((wy >= 0) & (wy < size_y + 2 * half) & (wx >= 0) & (wx < size_x + 2 * half))
    flat = (wy * (size_x + 2 * half) + wx)[ok]
    hp, ep, mp = np.pad(h, half), np.pad(e, half), np.pad(mask, half)
    np.maximum.at(hp.reshape(-1), flat, (alpha * val)[ok])
    np.multiply.at(ep.reshape(-1), flat, (1.0 - 0.55 * alpha)[ok])
    np.logical_or.at(mp.reshape(-1), flat, inside[ok])
    h[:] = hp[half:-half, half:-half]
    e[:] = ep[half:-half, half:-half]
    mask[:] = mp[half:-half, half:-half]


# --------------------------------------------------------------------------------------------------
# tissue renderers: each returns (hematoxylin [S,S], eosin [S,S], nuclei mask [S,S] bool)
# --------------------------------------------------------------------------------------------------

def _render_background(size: int, rng: np.random.Generator):
    h = np.zeros((size, size), np.float32)
    e = 0.008 + 0.006 * _smooth_noise(rng, (size, size), 24)
    return h, np.clip(e, 0, None), np.zeros((size, size), bool)


def _render_tumour(size: int, rng: np.random.Generator):
    """Carcinoma cells: crowded pleomorphic nuclei 8–12 µm (16–24 px at 0.5 µm/px), ~13 µm apart."""
    spacing = rng.uniform(26, 30)
    centres = _hex_points(rng, size, spacing, 0.25, margin=spacing)
    n = len(centres)
    # cytoplasm: purple-pink, blotchy; cell borders from the Voronoi tessellation of the nuclei
    h = 0.34 + 0.07 * _smooth_noise(rng, (size, size), 5)
    e = 0.62 + 0.10 * _smooth_noise(rng, (size, size), 7)
    grid = np.zeros((size, size), bool)
    iy = np.clip(np.round(centres[:, 0]).astype(int), 0, size - 1)
    ix = np.clip(np.round(centres[:, 1]).astype(int), 0, size - 1)
    labels = np.full((size, size), -1, np.int32)
    labels[iy, ix] = np.arange(n)
    grid[iy, ix] = True
    _, (ny, nx) = ndi.distance_transform_edt(~grid, return_indices=True)
    cell_id = labels[ny, nx]
    border = _label_borders(cell_id)
    e = e + 0.22 * border
    h = h - 0.10 * border
    shade = rng.normal(0, 0.06, n + 1).astype(np.float32)  # per-cell cytoplasm shade
    h = h + shade[cell_id]
    # nuclei: pleomorphic sizes and shapes, hyperchromatic, coarse chromatin, nucleoli
    diam_um = rng.uniform(8.0, 12.0, n) * rng.lognormal(0, 0.12, n)
    radius = diam_um / MPP / 2
    ecc = rng.uniform(0.1, 0.5, n)
    semi_major, semi_minor = radius * (1 + ecc / 2), radius * (1 - ecc / 2)
    intensity = rng.uniform(1.3, 2.1, n) * rng.lognormal(0, 0.10, n)
    chromatin = _smooth_noise(rng, (size, size), 1.2)
    mask = np.zeros((size, size), bool)
    h = np.clip(h, 0, None).astype(np.float32)
    e = np.clip(e, 0, None).astype(np.float32)
    _stamp_nuclei(h, e, mask, rng, centres, semi_major, semi_minor, rng.uniform(0, np.pi, n),
                  irregularity=0.08, intensity=intensity, texture=chromatin, texture_amp=0.30,
                  rim=0.45, nucleoli=0.55, vesicular=0.35)
    return h, e, mask


def _fibre_field(size: int, rng: np.random.Generator):
    """Wavy oriented fibre intensity in [0, 1] and the local fibre angle, both ``[S, S]``."""
    big = size + 2 * 32
    streak = 0.8 * _smooth_noise(rng, (big, big), (1.4, 14.0)) + 0.6 * _smooth_noise(rng, (big, big), (0.7, 5.0))
    theta = rng.uniform(0, np.pi)
    wave_amp, wave_len = rng.uniform(2, 7), rng.uniform(90, 220)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    yy -= size / 2
    xx -= size / 2
    c, s = math.cos(theta), math.sin(theta)
    u = xx * c + yy * s
    v = -xx * s + yy * c
    bend = _smooth_noise(rng, (size, size), 40) * 8
    phase = rng.uniform(0, 2 * np.pi)
    v_w = v + wave_amp * np.sin(2 * np.pi * u / wave_len + phase) + bend
    f = ndi.map_coordinates(streak, [v_w + big / 2, u + big / 2], order=1, mode="wrap")
    slope = wave_amp * 2 * np.pi / wave_len * np.cos(2 * np.pi * u / wave_len + phase)
    local = theta + np.arctan(slope)
    f = np.clip(0.5 + 0.3 * f, 0, 1).astype(np.float32)
    return f, local.astype(np.float32)


def _render_stroma(size: int, rng: np.random.Generator):
    """Collagenous stroma: pink wavy fibre bundles with clefts; sparse spindle-shaped fibroblast nuclei."""
    f, local = _fibre_field(size, rng)
    looseness = rng.uniform(0.0, 0.35)
    clefts = np.clip(1.6 * (0.25 + looseness - f), 0, 1)  # pale clefts between bundles
    density = 1.0 + 0.15 * _smooth_noise(rng, (size, size), 30)
    e = (0.55 + 0.75 * f) * density * (1 - 0.85 * clefts)
    h = (0.08 + 0.06 * f) * (1 - 0.7 * clefts)
    n = rng.poisson(14 * (size / 256) ** 2)
    centres = rng.uniform(0, size, (n, 2))
    iy = np.clip(centres[:, 0].astype(int), 0, size - 1)
    ix = np.clip(centres[:, 1].astype(int), 0, size - 1)
    angles = local[iy, ix] + rng.normal(0, 0.12, n)
    semi_major = rng.uniform(9, 15, n)  # 9–15 µm long
    semi_minor = rng.uniform(2.0, 3.2, n)
    mask = np.zeros((size, size), bool)
    h = h.astype(np.float32)
    e = e.astype(np.float32)
    _stamp_nuclei(h, e, mask, rng, centres, semi_major, semi_minor, angles, irregularity=0.05,
                  intensity=rng.uniform(1.4, 1.9, n), texture=None, texture_amp=0, rim=0.1)
    return h, e, mask


def _render_lymphocytes(size: int, rng: np.random.Generator):
    """Lymphoid aggregate: small round very dark nuclei (6–7 µm) packed on a ~8 µm lattice."""
    spacing = rng.uniform(15.5, 17.0)
    centres = _hex_points(rng, size, spacing, 0.16, margin=spacing)
    centres = centres[rng.random(len(centres)) > 0.06]  # a few gaps
    n = len(centres)
    radius = rng.uniform(6.0, 7.0, n) / MPP / 2
    ecc = rng.uniform(0, 0.12, n)
    h = 0.22 + 0.05 * _smooth_noise(rng, (size, size), 4)
    e = 0.22 + 0.05 * _smooth_noise(rng, (size, size), 6)
    h = np.clip(h, 0, None).astype(np.float32)
    e = np.clip(e, 0, None).astype(np.float32)
    mask = np.zeros((size, size), bool)
    _stamp_nuclei(h, e, mask, rng, centres, radius * (1 + ecc / 2), radius * (1 - ecc / 2),
                  rng.uniform(0, np.pi, n), irregularity=0.04, intensity=rng.uniform(2.1, 2.7, n),
                  texture=_smooth_noise(rng, (size, size), 0.9), texture_amp=0.10, rim=0.15)
    return h, e, mask


def _render_adipose(size: int, rng: np.random.Generator):
    """Adipocytes: empty Voronoi polygons (~60 µm) with thin pink membranes, rare flat nuclei."""
    spacing = rng.uniform(95, 125)
    seeds = _hex_points(rng, size, spacing, 0.25, margin=spacing * 1.2)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    warp = 7.0
    wy = yy + warp * _smooth_noise(rng, (size, size), 18)
    wx = xx + warp * _smooth_noise(rng, (size, size), 18)
    d = (wy[None] - seeds[:, 0, None, None]) ** 2 + (wx[None] - seeds[:, 1, None, None]) ** 2
    border = ndi.binary_dilation(_label_borders(np.argmin(d, 0)), iterations=1)
    e = 0.012 + 0.6 * border * (1 + 0.25 * _smooth_noise(rng, (size, size), 3))
    h = 0.04 * border
    h = h.astype(np.float32)
    e = np.clip(e, 0, None).astype(np.float32)
    mask = np.zeros((size, size), bool)
    by, bx = np.nonzero(border)
    n = rng.poisson(1.5 * (size / 256) ** 2)
    if n and len(by):
        pick = rng.integers(0, len(by), n)
        cy, cx = by[pick].astype(np.float32), bx[pick].astype(np.float32)
        # orient along the membrane: perpendicular to the local gradient of the cell-id map
        gy, gx = np.gradient(ndi.gaussian_filter(border.astype(np.float32), 3))
        angles = np.arctan2(gy[by[pick], bx[pick]], gx[by[pick], bx[pick]]) + np.pi / 2
        _stamp_nuclei(h, e, mask, rng, np.stack([cy, cx], 1), rng.uniform(6, 9, n), rng.uniform(1.8, 2.5, n),
                      angles, irregularity=0.03, intensity=rng.uniform(1.4, 1.8, n), texture=None,
                      texture_amp=0, rim=0.1)
    return h, e, mask


_RENDERERS = {
    BACKGROUND: _render_background,
    TUMOUR: _render_tumour,
    STROMA: _render_stroma,
    LYMPHOCYTES: _render_lymphocytes,
    ADIPOSE: _render_adipose,
}


def render_patch(tissue: int | str, size: int = 256, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Render one fresh patch of a tissue type at 0.5 µm/px.

    Args:
        tissue: a code (index into :data:`TISSUES`) or a name (``"tumour"``, ``"stroma"``, ...).
        size: side in pixels (256 px = 128 µm).
        seed: the same (tissue, size, seed) always gives the same patch.

    Returns:
        ``(rgb, nuclei)``: ``rgb`` [size, size, 3] uint8 and ``nuclei`` [size, size] bool, True on the
        pixels inside a nucleus (empty for background).
    """
    code = _tissue_code(tissue)
    size = int(size)
    if size < 16:
        raise HIPTError(f"render_patch: size must be at least 16 px, got {size}")
    rng = _rng(seed, code, size, 0x9A7C)
    h, e, mask = _RENDERERS[code](size, rng)
    rgb = _od_to_rgb(_compose_od(h, e), rng)
    return rgb, mask


def phantom_patches(
    n: int, seed: int = 0, size: int = 256, tissues: Sequence[int | str] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """A balanced, shuffled batch of fresh phantom patches with their tissue codes.

    Args:
        n: number of patches.
        seed: the batch is a deterministic function of ``(n, seed, size, tissues)``; different seeds give
            disjoint renders (use one seed for training, another for held-out data).
        size: patch side in pixels.
        tissues: codes or names to draw from (default: all five types, background included).

    Returns:
        ``(images, labels)``: ``images`` [N, size, size, 3] uint8, ``labels`` [N] int64 tissue codes.
    """
    codes = [_tissue_code(t) for t in (tissues if tissues is not None else range(len(TISSUES)))]
    if not codes:
        raise HIPTError("phantom_patches: tissues must not be empty")
    rng = _rng(seed, 0x51DE)
    labels = np.asarray(codes, np.int64)[np.arange(n) % len(codes)]
    rng.shuffle(labels)
    images = np.empty((n, size, size, 3), np.uint8)
    patch_seeds = rng.integers(0, 2**31 - 1, n)
    for i in range(n):
        images[i] = render_patch(int(labels[i]), size, int(patch_seeds[i]))[0]
    return images, labels


# --------------------------------------------------------------------------------------------------
# texture bank and slide composition
# --------------------------------------------------------------------------------------------------

def _dihedral(a: np.ndarray, t: int, axes: tuple[int, int] = (0, 1)) -> np.ndarray:
    """One of the 8 flips/rotations (``t`` in 0..7) of ``a`` in the plane ``axes``."""
    if t >= 4:
        a = np.flip(a, axes[1])
    return np.rot90(a, t % 4, axes)


class TextureBank:
    """``n_variants`` renders of each tissue type at ``cell`` px, with block-averaged copies per downsample.

    ``rgb`` [T, V, cell, cell, 3] uint8 and ``nuclei`` [T, V, cell, cell] bool; :meth:`level` gives the
    float32 block means [T, V, cell/d, cell/d, 3] (1 px per cell once ``d >= cell``).
    """

    def __init__(self, seed: int = 0, n_variants: int = 8, cell: int = CELL):
        self.seed, self.n_variants, self.cell = int(seed), int(n_variants), int(cell)
        t, v = len(TISSUES), self.n_variants
        self.rgb = np.empty((t, v, cell, cell, 3), np.uint8)
        self.nuclei = np.empty((t, v, cell, cell), bool)
        for code in range(t):
            for k in range(v):
                self.rgb[code, k], self.nuclei[code, k] = render_patch(code, cell, seed=_bank_seed(self.seed, code, k))
        self._levels: dict[int, np.ndarray] = {}

    def level(self, d: int) -> np.ndarray:
        """Bank tiles block-averaged by ``d`` (a power of two): float32 [T, V, s, s, 3], ``s = max(cell/d, 1)``."""
        s = max(self.cell // d, 1)
        if s not in self._levels:
            f = self.cell // s
            a = self.rgb.astype(np.float32)
            t, v = a.shape[:2]
            self._levels[s] = a.reshape(t, v, s, f, s, f, 3).mean((3, 5))
        return self._levels[s]


def _bank_seed(seed: int, code: int, k: int) -> int:
    return int(np.random.SeedSequence([seed & 0xFFFFFFFF, code, k, 0xBA4C]).generate_state(1)[0])


@functools.lru_cache(maxsize=4)
def texture_bank(seed: int = 0, n_variants: int = 8, cell: int = CELL) -> TextureBank:
    """The (cached) :class:`TextureBank` for a bank seed."""
    return TextureBank(seed, n_variants, cell)


@dataclass
class PhantomTruth:
    """Ground truth of a phantom slide (saved beside it as ``<stem>.truth.npz``).

    Attributes:
        layout: [R, C] int8 tissue codes, one per ``cell × cell`` block of level-0 pixels (row-major:
            cell ``(i, j)`` covers x in ``[j·cell, (j+1)·cell)``, y in ``[i·cell, (i+1)·cell)``).
        tissue_names: names of the codes (:data:`TISSUES`).
        mpp: µm per level-0 pixel.
        cell: cell side in level-0 pixels.
        seed: the slide seed; ``bank_seed``/``n_variants`` name the texture bank.
        variant, transform: [R, C] which bank tile and which of the 8 flips/rotations each cell shows
            (zeros when not given).
        stain: [3] per-channel stain jitter of this slide: exponents ``k`` of ``255·(I/255)**k``, i.e.
            multipliers of the optical density, so glass stays white.
        regions: [K, 4] int64 level-0 boxes ``(x, y, w, h)`` of the slide's regions (cohorts; may be empty).
        informative: [K] bool, True where a region carries the label-defining arrangement.
        meta: free-form JSON-able facts (cohort kind, label, ...).
    """

    layout: np.ndarray
    tissue_names: tuple[str, ...] = TISSUES
    mpp: float = MPP
    cell: int = CELL
    seed: int = 0
    bank_seed: int = 0
    n_variants: int = 8
    variant: np.ndarray | None = None
    transform: np.ndarray | None = None
    stain: np.ndarray = field(default_factory=lambda: np.ones(3, np.float32))
    regions: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.int64))
    informative: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        self.layout = np.asarray(self.layout, np.int8)
        if self.variant is None:
            self.variant = np.zeros(self.layout.shape, np.int64)
        if self.transform is None:
            self.transform = np.zeros(self.layout.shape, np.int64)

    @property
    def size(self) -> tuple[int, int]:
        """Level-0 ``(width, height)`` in pixels."""
        return self.layout.shape[1] * self.cell, self.layout.shape[0] * self.cell

    def tissue_mask(self) -> np.ndarray:
        """[R, C] bool: the cells holding tissue (any non-background type)."""
        return self.layout != BACKGROUND

    def tissue_map(self, x: int = 0, y: int = 0, w: int | None = None, h: int | None = None) -> np.ndarray:
        """Per-pixel tissue codes [h, w] int8 of a level-0 window (background outside the slide)."""
        w = self.size[0] - x if w is None else w
        h = self.size[1] - y if h is None else h
        cols = np.clip(np.arange(x, x + w) // self.cell, -1, self.layout.shape[1])
        rows = np.clip(np.arange(y, y + h) // self.cell, -1, self.layout.shape[0])
        padded = np.pad(self.layout, 1, constant_values=BACKGROUND)
        return padded[rows[:, None] + 1, cols[None, :] + 1]

    def nuclei_mask(self, x: int, y: int, w: int, h: int) -> np.ndarray:
        """Per-pixel nuclei mask [h, w] bool of a level-0 window (False outside the slide)."""
        comp = _Composer(self)
        return comp.window_nuclei(x, y, w, h)

    def region_of(self, coords: np.ndarray) -> np.ndarray:
        """Index into :attr:`regions` of the region holding each level-0 point ``coords`` [N, 2] (x, y); −1 if none.

        Use it to match ``hipt patch`` coordinates (region top-left corners) to the ground truth, e.g.
        ``truth.informative[idx]`` where ``idx >= 0``.
        """
        xy = np.asarray(coords, np.int64).reshape(-1, 2)
        out = np.full(len(xy), -1, np.int64)
        for k, (x, y, w, h) in enumerate(self.regions):
            inside = (xy[:, 0] >= x) & (xy[:, 0] < x + w) & (xy[:, 1] >= y) & (xy[:, 1] < y + h)
            out[inside & (out < 0)] = k
        return out

    def region_layouts(self) -> list[np.ndarray]:
        """The [G, G] layout of each region, in the order of :attr:`regions`."""
        c = self.cell
        return [self.layout[y // c:(y + h) // c, x // c:(x + w) // c] for x, y, w, h in self.regions]

    def save(self, path: str | Path) -> Path:
        """Write the truth to ``path`` (compressed ``.npz``, atomically); :func:`load_truth` reads it."""
        arrays = dict(
            layout=self.layout.astype(np.int8), tissue_names=np.array(self.tissue_names), mpp=np.float64(self.mpp),
            cell=np.int64(self.cell), seed=np.int64(self.seed), bank_seed=np.int64(self.bank_seed),
            n_variants=np.int64(self.n_variants), variant=self.variant.astype(np.int16),
            transform=self.transform.astype(np.int8), stain=np.asarray(self.stain, np.float32),
            regions=np.asarray(self.regions, np.int64).reshape(-1, 4), informative=np.asarray(self.informative, bool),
            meta=np.array(json.dumps(self.meta)),
        )
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.savez_compressed(f, **arrays)
        return Path(path)


def truth_path(slide_path: str | Path) -> Path:
    """Where the ground truth of a phantom slide lives: ``<dir>/<stem>.truth.npz``."""
    p = Path(slide_path)
    return p.with_name(p.stem + ".truth.npz")


def load_truth(slide_path: str | Path) -> PhantomTruth:
    """Load the ground truth saved beside a phantom slide (``<stem>.truth.npz``, or that file itself)."""
    p = Path(slide_path)
    tp = p if p.name.endswith(".truth.npz") else truth_path(p)
    if not tp.is_file():
        raise InputFileError(tp, "phantom ground truth not found", "was the slide made by hipt.phantom.make_slide?")
    try:
        with np.load(tp, allow_pickle=False) as z:
            return PhantomTruth(
                layout=z["layout"].astype(np.int8), tissue_names=tuple(str(s) for s in z["tissue_names"]),
                mpp=float(z["mpp"]), cell=int(z["cell"]), seed=int(z["seed"]), bank_seed=int(z["bank_seed"]),
                n_variants=int(z["n_variants"]), variant=z["variant"].astype(np.int64),
                transform=z["transform"].astype(np.int64), stain=z["stain"].astype(np.float32),
                regions=z["regions"].astype(np.int64), informative=z["informative"].astype(bool),
                meta=json.loads(str(z["meta"])),
            )
    except (KeyError, ValueError, OSError) as e:
        raise InputFileError(tp, f"not a phantom ground-truth file ({e})") from None


def _unblock(g: np.ndarray) -> np.ndarray:
    """Cells [nr, nc, s, s, ...] → one canvas [nr·s, nc·s, ...]."""
    nr, nc, s = g.shape[0], g.shape[1], g.shape[2]
    return np.moveaxis(g, 2, 1).reshape(nr * s, nc * s, *g.shape[4:])


class _Composer:
    """Composes any window of any pyramid level of a phantom slide from its texture bank."""

    def __init__(self, truth: PhantomTruth):
        self.t = truth
        self.bank = texture_bank(truth.bank_seed, truth.n_variants, truth.cell)
        self.rows, self.cols = truth.layout.shape
        levels = np.arange(256, dtype=np.float64) / 255.0
        self.lut = [np.clip(255.0 * levels ** float(k) + 0.5, 0, 255).astype(np.uint8) for k in truth.stain]
        self._cell_tiles: dict[tuple[int, int, int], np.ndarray] = {}
        self._level_tables: dict[int, np.ndarray] = {}

    def _jitter(self, rgb: np.ndarray) -> np.ndarray:
        """Apply the slide's stain jitter (a per-channel power law, i.e. scaled optical density) to uint8 RGB."""
        out = np.empty_like(rgb)
        for c in range(3):
            out[..., c] = self.lut[c][rgb[..., c]]
        return out

    def cell_tile(self, code: int, var: int, xf: int) -> np.ndarray:
        """One transformed, jittered level-0 cell [cell, cell, 3] uint8 (contiguous; cached per slide).

        Transposed copies are slow, so each (type, variant, transform) is made once per slide: at most
        ``T·V·8`` tiles, however large the slide.
        """
        key = (code, var, xf)
        tile = self._cell_tiles.get(key)
        if tile is None:
            tile = self._jitter(np.ascontiguousarray(_dihedral(self.bank.rgb[code, var], xf)))
            self._cell_tiles[key] = tile
        return tile

    def level_table(self, d: int) -> np.ndarray:
        """Every bank tile block-averaged by ``d`` > 1, jittered, in all 8 transforms: [T, V, 8, s, s, 3] uint8.

        Small (``s = cell/d`` ≤ 128 px), so each level's tiles are one vectorized gather from it.
        """
        table = self._level_tables.get(d)
        if table is None:
            base = self._jitter(np.clip(self.bank.level(d) + 0.5, 0, 255).astype(np.uint8))
            table = np.stack([_dihedral(base, t, (2, 3)) for t in range(8)], 2)
            self._level_tables[d] = table
        return table

    def _cells(self, r0: int, c0: int, nr: int, nc: int):
        """Codes, variants, transforms of a cell window (background beyond the layout) [nr, nc]."""
        code = np.zeros((nr, nc), np.int64)
        var = np.zeros((nr, nc), np.int64)
        xf = np.zeros((nr, nc), np.int64)
        rs, cs = slice(max(r0, 0), min(r0 + nr, self.rows)), slice(max(c0, 0), min(c0 + nc, self.cols))
        if rs.start < rs.stop and cs.start < cs.stop:
            dst = (slice(rs.start - r0, rs.stop - r0), slice(cs.start - c0, cs.stop - c0))
            code[dst] = self.t.layout[rs, cs]
            var[dst] = self.t.variant[rs, cs]
            xf[dst] = self.t.transform[rs, cs]
        return code, var, xf

    @staticmethod
    def _gather(tiles: np.ndarray, code, var, xf) -> np.ndarray:
        """Bank tiles [T, V, s, s, ...] → canvas [nr·s, nc·s, ...] of the transformed cells."""
        g = tiles[code, var]  # [nr, nc, s, s, ...]
        for t in np.unique(xf):
            if t:
                sel = xf == t
                g[sel] = _dihedral(g[sel], int(t), (1, 2))
        return _unblock(g)

    def window_rgb(self, x: int, y: int, w: int, h: int, d: int = 1) -> np.ndarray:
        """RGB uint8 [h, w, 3] of the window at level pixels ``(x, y)`` of downsample ``d`` (power of 2)."""
        cell = self.t.cell
        s = max(cell // d, 1)  # level px per cell
        r = max(d // cell, 1)  # cells per level px when a cell is below one pixel
        c0, c1 = (x * r) // s, -(-((x + w) * r) // s)
        r0, r1 = (y * r) // s, -(-((y + h) * r) // s)
        code, var, xf = self._cells(r0, c0, r1 - r0, c1 - c0)
        ox, oy = x * r - c0 * s, y * r - r0 * s
        if d == 1:
            if code.shape == (1, 1) and (ox, oy, w, h) == (0, 0, cell, cell):  # the common case: one cell
                return self.cell_tile(int(code[0, 0]), int(var[0, 0]), int(xf[0, 0]))
            canvas = np.empty((code.shape[0] * cell, code.shape[1] * cell, 3), np.uint8)
            for i, j in np.ndindex(code.shape):
                canvas[i * cell:(i + 1) * cell, j * cell:(j + 1) * cell] = self.cell_tile(
                    int(code[i, j]), int(var[i, j]), int(xf[i, j]))
            return np.ascontiguousarray(canvas[oy:oy + h, ox:ox + w])
        canvas = _unblock(self.level_table(d)[code, var, xf])[oy:oy + h * r, ox:ox + w * r]
        if r > 1:  # cells smaller than a pixel: average r×r cells per pixel
            canvas = canvas.reshape(h, r, w, r, 3).mean((1, 3))
            canvas = np.clip(canvas + 0.5, 0, 255).astype(np.uint8)
        return np.ascontiguousarray(canvas)

    def window_nuclei(self, x: int, y: int, w: int, h: int) -> np.ndarray:
        cell = self.t.cell
        c0, c1 = x // cell, -(-(x + w) // cell)
        r0, r1 = y // cell, -(-(y + h) // cell)
        code, var, xf = self._cells(r0, c0, r1 - r0, c1 - c0)
        canvas = self._gather(self.bank.nuclei, code, var, xf)
        ox, oy = x - c0 * cell, y - r0 * cell
        return canvas[oy:oy + h, ox:ox + w].copy()


@dataclass
class PhantomSlide:
    """A written phantom slide: its path and its ground truth."""

    path: Path
    truth: PhantomTruth

    @property
    def truth_path(self) -> Path:
        return truth_path(self.path)

    @property
    def size(self) -> tuple[int, int]:
        return self.truth.size


def _level_downsamples(width: int, height: int, factor: int, min_size: int) -> list[int]:
    ds = [1]
    while max(width, height) / ds[-1] > min_size:
        ds.append(ds[-1] * factor)
    return ds


def _slide_truth(layout: np.ndarray, rng: np.random.Generator, seed: int, mpp: float, cell: int,
                 bank_seed: int | None, n_variants: int, stain_jitter: float, regions: np.ndarray | None,
                 informative: np.ndarray | None, meta: dict | None) -> PhantomTruth:
    """The truth of a slide: the layout plus the per-cell bank variants and transforms and the stain
    jitter, drawn from ``rng`` (``_rng(seed, 0x511D)``), i.e. independently of the layout."""
    truth = PhantomTruth(
        layout=layout.astype(np.int8), mpp=float(mpp), cell=int(cell), seed=int(seed),
        bank_seed=int(seed if bank_seed is None else bank_seed), n_variants=int(n_variants),
        variant=rng.integers(0, n_variants, layout.shape).astype(np.int64),
        transform=rng.integers(0, 8, layout.shape).astype(np.int64),
        stain=np.clip(1 + rng.normal(0, stain_jitter, 3), 0.7, 1.3).astype(np.float32),
        regions=np.zeros((0, 4), np.int64) if regions is None else np.asarray(regions, np.int64).reshape(-1, 4),
        informative=np.zeros(0, bool) if informative is None else np.asarray(informative, bool),
        meta=dict(meta or {}),
    )
    if len(truth.informative) != len(truth.regions):
        raise HIPTError("make_slide: informative needs one flag per region")
    return truth


def make_slide(
    path: str | Path,
    layout: np.ndarray | None = None,
    seed: int = 0,
    mpp: float = MPP,
    *,
    size: int | tuple[int, int] | None = None,
    cell: int = CELL,
    tile: int = 256,
    pyramid_factor: int = 4,
    min_level_size: int = 1024,
    quality: int = 80,
    bank_seed: int | None = None,
    n_variants: int = 8,
    stain_jitter: float = STAIN_JITTER,
    regions: np.ndarray | None = None,
    informative: np.ndarray | None = None,
    meta: dict | None = None,
    progress: bool = False,
    maxworkers: int | None = None,
    jpeg_subsampling: tuple[int, int] = (2, 2),
) -> PhantomSlide:
    """Write a phantom slide as a pyramidal tiled JPEG TIFF and its ground truth beside it.

    The file is a generic tiled TIFF (one IFD per pyramid level, level 0 first, reduced levels marked
    ``NewSubfileType=1``) with ``XResolution``/``YResolution`` in pixels per centimetre, from which
    OpenSlide (≥ 4.0) derives ``openslide.mpp-x``/``-y``.  Tiles are composed and JPEG-encoded one at a
    time (tifffile's tile-iterator API), so memory stays bounded whatever the slide size.

    Args:
        path: output ``.tif``; the truth goes to ``<stem>.truth.npz`` (:func:`load_truth`).
        layout: [R, C] tissue codes, one per ``cell`` px block; None draws :func:`random_layout` of
            ``size`` px.
        seed: slide seed (variants, transforms, stain jitter); the bank seed defaults to it.
        mpp: µm per pixel written into the file (the textures are drawn for 0.5 µm/px).
        size: slide side(s) in px when ``layout`` is None (rounded up to whole cells).
        cell, tile: layout cell and TIFF tile side (powers of two).
        pyramid_factor: downsample between levels (2 or 4); levels stop at ``min_level_size`` px.
        quality: JPEG quality.
        bank_seed, n_variants: texture bank (default: ``seed``, 8 variants per type).
        stain_jitter: std of the per-slide, per-channel optical-density multiplier (colour jitter).
        regions, informative, meta: cohort facts stored in the truth (see :class:`PhantomTruth`).
        progress: show a tqdm bar over tiles.
        maxworkers: JPEG encoding threads (tifffile; default 2).
        jpeg_subsampling: JPEG chroma subsampling: ``(2, 2)`` (4:2:0, the default, smaller files) or
            ``(1, 1)`` (4:4:4).  With 4:2:0 a decoder's chroma upsampling mixes each cell's outer pixel
            ring with its neighbours' colours, so a patch shows a trace of what lies next to it; with
            4:4:4 and cells that are multiples of 8 px every level-0 cell decodes exactly as its bank tile
            (the arrangement cohorts use it: :data:`COHORT_JPEG_SUBSAMPLING`).

    Returns:
        :class:`PhantomSlide` (path and truth).
    """
    import tifffile

    path = Path(path)
    for v, name in ((cell, "cell"), (tile, "tile")):
        if v < 16 or v & (v - 1):
            raise HIPTError(f"make_slide: {name} must be a power of two ≥ 16, got {v}")
    if pyramid_factor not in (2, 4):
        raise HIPTError(f"make_slide: pyramid_factor must be 2 or 4, got {pyramid_factor}")
    if not 0.01 <= mpp <= 100:
        raise HIPTError(f"make_slide: implausible mpp {mpp}")
    rng = _rng(seed, 0x511D)
    if layout is None:
        if size is None:
            raise HIPTError("make_slide: give a layout or a size")
        sw, sh = (size, size) if np.isscalar(size) else size
        layout = random_layout(-(-int(sh) // cell), -(-int(sw) // cell), seed=seed)
    layout = np.asarray(layout)
    if layout.ndim != 2 or layout.size == 0:
        raise HIPTError(f"make_slide: layout must be a non-empty 2-D array of tissue codes, got shape {layout.shape}")
    if layout.min() < 0 or layout.max() >= len(TISSUES):
        raise HIPTError(f"make_slide: layout codes must be in 0..{len(TISSUES) - 1}")
    truth = _slide_truth(layout, rng, seed, mpp, cell, bank_seed, n_variants, stain_jitter, regions, informative, meta)
    comp = _Composer(truth)
    width, height = truth.size
    downsamples = _level_downsamples(width, height, pyramid_factor, min_level_size)
    res = 1e4 / mpp  # pixels per centimetre

    def level_shape(d: int) -> tuple[int, int]:
        return -(-height // d), -(-width // d)

    total = sum(-(-level_shape(d)[0] // tile) * -(-level_shape(d)[1] // tile) for d in downsamples)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, unit="tile", desc=path.name, leave=False)

    def tiles(d: int) -> Iterator[np.ndarray]:
        lh, lw = level_shape(d)
        for ty in range(0, lh, tile):
            for tx in range(0, lw, tile):
                yield comp.window_rgb(tx, ty, tile, tile, d)
                if bar is not None:
                    bar.update(1)

    description = f"hipt phantom slide; mpp={mpp}; seed={seed}; cell={cell}"
    try:
        with atomic_path(path) as tmp:
            with tifffile.TiffWriter(tmp, bigtiff=width * height * 3 > 2**31) as tif:
                for k, d in enumerate(downsamples):
                    lh, lw = level_shape(d)
                    tif.write(
                        tiles(d), shape=(lh, lw, 3), dtype=np.uint8, tile=(tile, tile), photometric="rgb",
                        compression="jpeg", compressionargs={"level": quality},
                        resolution=(res / (width / lw), res / (height / lh)), resolutionunit="CENTIMETER",
                        subfiletype=0 if k == 0 else 1, description=description if k == 0 else None,
                        software="hipt.phantom", maxworkers=maxworkers or 2, buffersize=16 << 20, metadata=None,
                        subsampling=tuple(jpeg_subsampling),
                    )
            truth.save(truth_path(path))
    finally:
        if bar is not None:
            bar.close()
    return PhantomSlide(path=path, truth=truth)


# --------------------------------------------------------------------------------------------------
# layouts
# --------------------------------------------------------------------------------------------------

_N4 = ((-1, 0), (1, 0), (0, -1), (0, 1))


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


#: Mean composition (tumour, stroma, lymphocytes, adipose) of each class of the composition cohorts.
COMPOSITION_CLASSES = {
    "composition2": {"tumour_rich": (0.45, 0.30, 0.10, 0.15), "stroma_rich": (0.12, 0.63, 0.10, 0.15)},
    "composition3": {"tumour_rich": (0.45, 0.30, 0.10, 0.15), "stroma_rich": (0.12, 0.63, 0.10, 0.15),
                     "lymphocyte_rich": (0.12, 0.33, 0.40, 0.15)},
}
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

    Used by ``hipt phantom slide`` and by :func:`make_slide` when no layout is given.  Adipose is kept
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


# --------------------------------------------------------------------------------------------------
# cohorts
# --------------------------------------------------------------------------------------------------

COHORT_KINDS = ("composition2", "composition3", "context", "survival")
CONTEXT_CLASSES = ("apart", "touching")  # class 0: lymphocytes kept apart from tumour; 1: touching
SURVIVAL_CLASSES = ("low_contact", "high_contact")


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

    table: "pd.DataFrame"  # noqa: F821
    out_dir: Path
    kind: str
    class_names: tuple[str, ...]

    @property
    def paths(self) -> list[Path]:
        return [Path(p) for p in self.table["path"]]


#: Per-slide stain jitter (std of the optical-density multiplier, :func:`make_slide`) of each cohort kind.
#: The arrangement cohorts draw every slide with the same stain, so that arrangement is the *only*
#: difference between slides (matched composition, matched staining): with the composition cohorts'
#: jitter, the slide-to-slide shift of the stage-1 tokens swamps the arrangement signal for the CPU
#: book's 64 slides (chapter 6, exercise).
COHORT_STAIN_JITTER = {"composition2": STAIN_JITTER, "composition3": STAIN_JITTER, "context": 0.0, "survival": 0.0}


#: JPEG chroma subsampling of each cohort kind's slides (:func:`make_slide`).  The arrangement cohorts
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
    (``_sj<jitter>`` when the stain jitter is not :data:`STAIN_JITTER`, ``_v<version>`` when the kind's
    :data:`COHORT_VERSION` is above 1)."""
    from hipt.paths import cache_dir

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
    patch_size`` pure cells per side) laid out by :func:`tile_regions` on the region grid anchored at the
    slide origin, with two cells of glass at the right and bottom.  All slides of a cohort share one
    texture bank (bank seed = ``seed``), so a tissue type looks the same in every class.

    Kinds:

    - ``composition2`` / ``composition3``: the label is the tissue composition (tumour-rich vs
      stroma-rich [vs lymphocyte-rich], :data:`COMPOSITION_CLASSES`); every region is informative.
    - ``context``: **matched composition**; the label is the spatial arrangement only.  Every region of
      every slide holds exactly the same multiset of cells (:func:`context_counts`), so every slide of
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

    ``stain_jitter``: the per-slide stain jitter (:func:`make_slide`); None: the kind's
    (:data:`COHORT_STAIN_JITTER`: 0.06 for the composition cohorts, 0 for ``context`` and ``survival``).

    Re-running with the same arguments reuses the files (``cohort.json`` records them); a slide whose
    file and truth exist is not drawn again.  ``table.csv`` is written atomically.

    Returns:
        :class:`Cohort`.
    """
    import pandas as pd

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
        from tqdm.auto import tqdm

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


# --------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------

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
