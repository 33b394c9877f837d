"""Model-free arithmetic on score maps: percentile ranks, shifted views, overlap averaging, blending, canvases.

Everything here works on plain numpy score maps, so it is tested on small synthetic maps
(``tests/test_heatmaps.py``) independently of any model. :mod:`hipt.attention.maps` feeds it the [CLS]
attention of the ViTs.

Conventions
-----------
- A *score map* is ``[..., H, W]`` float; a *token grid* is the attention of one ViT over its input
  grid (``[heads, gh, gw]``), before upsampling.
- Output pixels: a region of ``H × W`` input pixels rendered at ``scale`` s is ``H/s × W/s`` output
  pixels (scale 4 → a 4096² region becomes 1024²).
- A *shifted view* ``k`` of an image is ``image[k·off:, k·off:]`` padded with white at the bottom and
  right back to the original size (the reference's ``crop`` + ``add_margin``, with the padding fixed to
  exactly ``k·off``). Its score map, computed at output resolution, is pasted back at
  ``[k·off/s:, k·off/s:]`` so that every view's pixel refers to the same tissue; an overlap counter says
  how many views cover each output pixel, and the mean over covering views is the smoothed map.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.stats import rankdata

__all__ = [
    "percentile_rank",
    "rank_per_map",
    "upsample_nearest",
    "resize_area",
    "shifted_view",
    "paste_shifted",
    "overlap_average",
    "tile_patch_maps",
    "factorized_map",
    "product_map",
    "minmax",
    "light_jet",
    "get_cmap",
    "blend",
    "ScoreCanvas",
    "output_size",
    "check_shift",
]


# --------------------------------------------------------------------------------------------------
# ranking and rescaling
# --------------------------------------------------------------------------------------------------
def percentile_rank(scores: np.ndarray) -> np.ndarray:
    """Percentile rank of every element among all elements: ``rankdata(v) * 100 / len(v)``.

    Ties get their average rank (so a constant map stays constant, at ``(n+1)/(2n)·100``). Returns
    an array of the input's shape with values in ``(0, 100]``.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.size == 0:
        return scores.astype(np.float32)
    flat = rankdata(scores.ravel(), method="average") * 100.0 / scores.size
    return flat.reshape(scores.shape).astype(np.float32)


def rank_per_map(maps: np.ndarray, n_map_dims: int = 2) -> np.ndarray:
    """Percentile-rank each map separately, in ``[0, 1]``.

    ``maps`` ``[..., h, w]``: every trailing ``n_map_dims``-dimensional block is ranked on its own
    (e.g. ``[n_patches, heads, 16, 16]`` ranks each patch's head map over its 256 tokens, as the
    reference's ``concat_scores256`` does).
    """
    maps = np.asarray(maps)
    lead = maps.shape[: maps.ndim - n_map_dims]
    block = int(np.prod(maps.shape[maps.ndim - n_map_dims :]))
    flat = maps.reshape(-1, block)
    out = np.empty(flat.shape, dtype=np.float32)
    for i, row in enumerate(flat):
        out[i] = percentile_rank(row) / 100.0
    return out.reshape(*lead, *maps.shape[maps.ndim - n_map_dims :])


def minmax(x: np.ndarray) -> np.ndarray:
    """Rescale to ``[0, 1]``; a constant map becomes all zeros (there is nothing to rank)."""
    x = np.asarray(x, dtype=np.float32)
    lo, hi = float(np.nanmin(x)), float(np.nanmax(x))
    if not hi > lo:
        return np.zeros_like(x)
    return (x - lo) / (hi - lo)


def _index_map(n_in: int, n_out: int) -> np.ndarray:
    """Nearest-neighbour source index for each of ``n_out`` output positions over ``n_in`` inputs."""
    return np.minimum((np.arange(n_out) * n_in) // n_out, n_in - 1)


def upsample_nearest(grid: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """Resize ``[..., gh, gw]`` to ``[..., out_h, out_w]`` by nearest neighbour (any ratio).

    Output pixel ``y`` takes grid row ``floor(y·gh/out_h)``: with an integer ratio every token becomes
    an exact block, as the reference's ``nn.functional.interpolate(mode='nearest')``.
    """
    grid = np.asarray(grid)
    rows = _index_map(grid.shape[-2], int(out_hw[0]))
    cols = _index_map(grid.shape[-1], int(out_hw[1]))
    return grid[..., rows[:, None], cols[None, :]]


def resize_area(image: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """Downscale an RGB image ``[H, W, 3]`` uint8 to ``out_hw`` with area averaging (PIL box filter)."""
    from PIL import Image

    image = np.asarray(image)
    if image.shape[:2] == tuple(out_hw):
        return image
    pil = Image.fromarray(image)
    return np.asarray(pil.resize((int(out_hw[1]), int(out_hw[0])), Image.Resampling.BOX))


# --------------------------------------------------------------------------------------------------
# shifted views and overlap averaging
# --------------------------------------------------------------------------------------------------
def shifted_view(image: np.ndarray, shift: int, fill: int = 255) -> np.ndarray:
    """``image[shift:, shift:]`` padded with ``fill`` at the bottom and right to the original size.

    ``image`` ``[H, W, ...]``. The padding is exactly ``shift`` on both axes (the reference padded its
    fourth view by 4·128 instead of 3·128 and then cropped, and fed the unshifted region to every pass).
    """
    image = np.asarray(image)
    if shift == 0:
        return image.copy()
    h, w = image.shape[:2]
    if not 0 < shift < min(h, w):
        raise ValueError(f"shift {shift} must be in [0, {min(h, w)}) for an image of {h}×{w}")
    out = np.full_like(image, fill)
    out[: h - shift, : w - shift] = image[shift:, shift:]
    return out


def paste_shifted(view_map: np.ndarray, shift: int) -> tuple[np.ndarray, np.ndarray]:
    """Put a shifted view's score map back in the frame of the unshifted image.

    ``view_map`` ``[..., H, W]`` at output resolution, computed on ``shifted_view(image, shift·s)``;
    its pixel ``(y, x)`` shows the image's pixel ``(y + shift, x + shift)``. Returns the map in image
    coordinates (zeros where the view does not reach: the first ``shift`` rows/columns) and the
    coverage ``[H, W]`` (1 where the view contributes, 0 elsewhere). The view's bottom/right
    ``shift`` rows/columns show the white padding and fall off the frame.
    """
    view_map = np.asarray(view_map, dtype=np.float32)
    h, w = view_map.shape[-2:]
    out = np.zeros_like(view_map)
    cover = np.zeros((h, w), dtype=np.float32)
    out[..., shift:, shift:] = view_map[..., : h - shift, : w - shift]
    cover[shift:, shift:] = 1.0
    return out, cover


def overlap_average(view_maps: Sequence[np.ndarray], shifts: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Average score maps of shifted views where they overlap.

    ``view_maps[k]`` ``[..., H, W]`` is the map of the view shifted by ``shifts[k]`` output pixels
    (``shifts[0]`` is normally 0). Returns ``(mean [..., H, W], count [H, W])``: ``count`` is how many
    views cover each pixel (the reference's ``overlay``/100) and ``mean`` their average there.
    Equivalent to the reference's ``(s_1 + Σ new_s_k) / overlay`` with scores in percent, /100.
    """
    if len(view_maps) != len(shifts) or not view_maps:
        raise ValueError("need one shift per view map, and at least one view")
    total = None
    count = None
    for vm, sh in zip(view_maps, shifts):
        pasted, cover = paste_shifted(vm, int(sh))
        total = pasted if total is None else total + pasted
        count = cover if count is None else count + cover
    assert total is not None and count is not None
    mean = total / np.maximum(count, 1.0)
    return mean.astype(np.float32), count


def tile_patch_maps(maps: np.ndarray, grid_hw: tuple[int, int]) -> np.ndarray:
    """Tile per-patch maps into one mosaic over the region.

    ``maps`` ``[n_patches, heads, ph, pw]`` in row-major patch order (the order of
    :func:`hipt.attention.maps.region_to_patches`, the reference's unfold) → ``[heads, gh·ph, gw·pw]``.
    """
    maps = np.asarray(maps)
    gh, gw = grid_hw
    n, heads, ph, pw = maps.shape
    if n != gh * gw:
        raise ValueError(f"{n} patch maps cannot tile a {gh}×{gw} grid")
    return maps.reshape(gh, gw, heads, ph, pw).transpose(2, 0, 3, 1, 4).reshape(heads, gh * ph, gw * pw)


# --------------------------------------------------------------------------------------------------
# combining the levels
# --------------------------------------------------------------------------------------------------
def factorized_map(
    region_map: np.ndarray, region_view_counts: np.ndarray, patch_map: np.ndarray, patch_view_counts: np.ndarray,
) -> np.ndarray:
    """The reference's "factorized" hierarchical map: the mean of the two levels weighted by their view counts.

    ``(region_map·region_view_counts + patch_map·patch_view_counts) / (region_view_counts + patch_view_counts)``
    (the reference's ``(s4k·o4k + s256·o256) / (o4k + o256)``), where the maps are the overlap-averaged
    percentile maps in ``[0, 1]`` of ViT4K (region level) and ViT256 (patch level) and the counts say how
    many shifted views cover each pixel (broadcast over leading head axes). Despite its name it is an
    average, not a product: a pixel is hot if either level is.
    """
    region_view_counts = np.asarray(region_view_counts, dtype=np.float32)
    patch_view_counts = np.asarray(patch_view_counts, dtype=np.float32)
    weighted = region_map * region_view_counts + patch_map * patch_view_counts
    return (weighted / np.maximum(region_view_counts + patch_view_counts, 1e-12)).astype(np.float32)


def product_map(*maps: np.ndarray) -> np.ndarray:
    """Min-max rescaled product of maps in ``[0, 1]``: hot only where every level is hot.

    The reference's commented-out alternative to :func:`factorized_map`; also the combination used
    for the three-level whole-slide map (slide × region × patch).
    """
    prod = np.ones_like(np.asarray(maps[0], dtype=np.float32))
    for m in maps:
        prod = prod * np.asarray(m, dtype=np.float32)
    return minmax(prod)


# --------------------------------------------------------------------------------------------------
# colour
# --------------------------------------------------------------------------------------------------
def light_jet():
    """The reference's "light jet": jet with every RGB channel mapped ``x → x/2 + 0.5`` (pastel)."""
    import matplotlib
    from matplotlib.colors import ListedColormap

    jet = matplotlib.colormaps["jet"](np.linspace(0, 1, 256))
    jet[:, :3] = jet[:, :3] / 2 + 0.5
    return ListedColormap(jet, name="light_jet")


def get_cmap(cmap="light_jet"):
    """A matplotlib colormap from a name (``"light_jet"``, ``"coolwarm"``, any matplotlib name) or itself."""
    import matplotlib

    if cmap == "light_jet":
        return light_jet()
    if isinstance(cmap, str):
        return matplotlib.colormaps[cmap]
    return cmap


def blend(
    image: np.ndarray,
    score: np.ndarray,
    cmap="light_jet",
    alpha: float = 0.5,
    threshold: float | None = None,
) -> np.ndarray:
    """Overlay a score map on an image: ``alpha·cmap(score) + (1-alpha)·image``.

    ``image`` ``[H, W, 3]`` uint8 (resized to the score's size with area averaging if needed);
    ``score`` ``[H, W]`` in ``[0, 1]``. With ``threshold``, pixels whose score exceeds it are blended
    with the colormap's hot colour (``cmap(0.95)``, as the reference) and the others show the raw
    image. Returns ``[H, W, 3]`` uint8.
    """
    score = np.clip(np.nan_to_num(np.asarray(score, dtype=np.float32)), 0.0, 1.0)
    image = resize_area(np.asarray(image)[..., :3], score.shape)
    cm = get_cmap(cmap)
    img = image.astype(np.float32)
    if threshold is None:
        colour = cm(score)[..., :3] * 255.0
        out = alpha * colour + (1 - alpha) * img
    else:
        hot = np.asarray(cm(0.95)[:3], dtype=np.float32) * 255.0
        mask = score > threshold
        out = img.copy()
        out[mask] = alpha * hot + (1 - alpha) * img[mask]
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------------------
# bounded whole-slide canvas
# --------------------------------------------------------------------------------------------------
@dataclass
class ScoreCanvas:
    """An output-resolution accumulator for a whole-slide map, filled region by region.

    Memory is ``2 · 4 · H·W`` bytes at the *output* resolution, never the slide's level-0 size; above
    ``memmap_above`` output pixels the two float32 planes live in a temporary ``np.memmap`` instead of
    RAM. ``add`` sums scores and counts (overlapping regions average); ``result`` returns the mean,
    ``fill`` where nothing was added.
    """

    height: int
    width: int
    memmap_above: int = 64 * 1024 * 1024
    directory: str | Path | None = None

    def __post_init__(self) -> None:
        shape = (2, int(self.height), int(self.width))
        self._tmp = None
        if self.height * self.width > self.memmap_above:
            self._tmp = tempfile.NamedTemporaryFile(prefix="hipt-canvas-", suffix=".f32", dir=self.directory)
            self.planes = np.memmap(self._tmp.name, dtype=np.float32, mode="w+", shape=shape)
        else:
            self.planes = np.zeros(shape, dtype=np.float32)

    @property
    def nbytes(self) -> int:
        return int(self.planes.nbytes)

    def add(self, y0: int, x0: int, tile: np.ndarray, weight: float = 1.0) -> None:
        """Add ``tile`` ``[h, w]`` with its top-left at output pixel ``(y0, x0)``; clipped to the canvas."""
        tile = np.asarray(tile, dtype=np.float32)
        h, w = tile.shape
        ya, xa = max(y0, 0), max(x0, 0)
        yb, xb = min(y0 + h, self.height), min(x0 + w, self.width)
        if yb <= ya or xb <= xa:
            return
        sub = tile[ya - y0 : yb - y0, xa - x0 : xb - x0]
        self.planes[0, ya:yb, xa:xb] += weight * sub
        self.planes[1, ya:yb, xa:xb] += weight

    def covered(self) -> np.ndarray:
        """``[H, W]`` bool: pixels some region wrote to."""
        return np.asarray(self.planes[1] > 0)

    def result(self, fill: float = 0.0) -> np.ndarray:
        """The averaged map ``[H, W]`` float32 (a RAM copy at the output resolution)."""
        total, count = np.asarray(self.planes[0]), np.asarray(self.planes[1])
        out = np.full(total.shape, fill, dtype=np.float32)
        np.divide(total, count, out=out, where=count > 0)
        return out

    def close(self) -> None:
        if self._tmp is not None:
            del self.planes
            self._tmp.close()
            self._tmp = None


def output_size(height: int, width: int, scale: float) -> tuple[int, int]:
    """Output size of an ``height × width`` input at ``scale`` (input px per output px), at least 1 px."""
    return max(1, int(round(height / scale))), max(1, int(round(width / scale)))


def check_shift(offset_px: int, scale: float) -> int:
    """The output-pixel shift of an input-pixel offset; it must be a whole number of output pixels."""
    shift = offset_px / scale
    if not math.isclose(shift, round(shift)):
        raise ValueError(
            f"view offset {offset_px} px is not a whole number of output pixels at scale {scale}: "
            "choose a scale that divides the offset"
        )
    return int(round(shift))
