"""Tissue textures of the phantom: the tissue types and their codes, the stain colour model (hematoxylin and
eosin concentrations turned into RGB by Beer–Lambert), one renderer per tissue type, single patches
(:func:`render_patch`), labelled batches of patches (:func:`phantom_patches`) and the texture bank that
slides are composed from (:class:`TextureBank`, :func:`texture_bank`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage as ndi

from hipt.errors import HIPTError

__all__ = ["TISSUES", "BACKGROUND", "TUMOUR", "STROMA", "LYMPHOCYTES", "ADIPOSE", "CELL", "MPP",
           "render_patch", "phantom_patches", "TextureBank", "texture_bank"]

#: Names of the tissue types; a type's code is its index.
TISSUES: tuple[str, ...] = ("background", "tumour", "stroma", "lymphocytes", "adipose")
BACKGROUND, TUMOUR, STROMA, LYMPHOCYTES, ADIPOSE = range(len(TISSUES))
CELL = 256  #: default layout cell = one ViT-256 patch, in level-0 pixels
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
# texture bank
# --------------------------------------------------------------------------------------------------

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
