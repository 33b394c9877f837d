"""Phantom slides: the ground truth of a slide (:class:`PhantomTruth`, saved beside it and read back by
:func:`load_truth`), the composer that draws any window of any pyramid level from the texture bank, and
:func:`make_slide`, which writes a pyramidal tiled JPEG TIFF that OpenSlide opens, tile by tile.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tifffile
from tqdm.auto import tqdm

from hipt.errors import HIPTError, InputFileError
from hipt.io import atomic_path
from hipt.phantom.layouts import random_layout
from hipt.phantom.textures import BACKGROUND, CELL, MPP, TISSUES, _rng, texture_bank

__all__ = ["STAIN_JITTER", "PhantomTruth", "PhantomSlide", "make_slide", "load_truth", "truth_path"]

STAIN_JITTER = 0.06  #: default per-slide stain jitter of :func:`make_slide`


@dataclass
class PhantomTruth:
    """Ground truth of a phantom slide (saved beside it as ``<stem>.truth.npz``).

    Attributes:
        layout: [R, C] int8 tissue codes, one per ``cell × cell`` block of level-0 pixels (row-major:
            cell ``(i, j)`` covers x in ``[j·cell, (j+1)·cell)``, y in ``[i·cell, (i+1)·cell)``).
        tissue_names: names of the codes (:data:`~hipt.phantom.TISSUES`).
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


# --------------------------------------------------------------------------------------------------
# composing windows of a slide from its texture bank
# --------------------------------------------------------------------------------------------------

def _dihedral(a: np.ndarray, t: int, axes: tuple[int, int] = (0, 1)) -> np.ndarray:
    """One of the 8 flips/rotations (``t`` in 0..7) of ``a`` in the plane ``axes``."""
    if t >= 4:
        a = np.flip(a, axes[1])
    return np.rot90(a, t % 4, axes)


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
        layout: [R, C] tissue codes, one per ``cell`` px block; None draws :func:`~hipt.phantom.random_layout` of
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
            (the arrangement cohorts use it: :data:`~hipt.phantom.COHORT_JPEG_SUBSAMPLING`).

    Returns:
        :class:`PhantomSlide` (path and truth).
    """
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
