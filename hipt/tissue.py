"""Tissue segmentation on a low-resolution view of a slide.

Stained tissue is coloured (haematoxylin purple, eosin pink) while glass and the white outside the
scan are grey-white, so the HSV *saturation* separates the two well.  The recipe:

1. read the whole slide at a low resolution (longer side ≤ ``max_size`` px, and no finer than
   ``min_mpp`` µm/px) from the coarsest pyramid level that is fine enough: the cost depends on that
   level's size, never on level 0's (except for a slide without a pyramid, where level 0 is the only
   level and is read in bounded strips);
2. saturation ``(max − min) / max`` per pixel, lightly smoothed; Otsu's threshold, clipped to
   ``[min_saturation, max_saturation]`` so that a slide of pure glass (Otsu would split its noise) or
   a slide that is nearly all tissue (Otsu would split haematoxylin from eosin) stay sane;
3. *sparse* tissue: fat (empty cells inside thin membranes) and loose stroma are too faint at this
   scale to pass the threshold, but they are dense in faintly stained pixels over a few tens of µm,
   which glass is not; places where more than ``sparse_density`` of the pixels within ``sparse_um``
   are faintly stained join the mask (fat is the classic failure of saturation thresholding);
4. morphological closing (joins nuclei and fibres into tissue), filling of holes smaller than
   ``max_hole_um2`` (fat, lumina), removal of components smaller than ``min_area_um2`` (dust) and an
   opening (drops threads), all sized in micrometres so that results do not depend on the mask's
   resolution.  Closing and opening use square structuring elements (separable min/max filters).

The result, :class:`TissueMask`, is a boolean array at thumbnail resolution with its downsample to
level 0; :meth:`TissueMask.region_fractions` gives the tissue fraction of level-0 boxes (the region
grid of :mod:`hipt.tiling`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from hipt.slide import Slide

__all__ = ["TissueMask", "segment_tissue", "saturation", "otsu_threshold", "DEFAULT_MAX_SIZE", "DEFAULT_MIN_MPP"]

#: Longer side of the segmentation mask, in pixels (bounds the cost for any slide size).
DEFAULT_MAX_SIZE = 1024
#: The mask is never finer than this (µm per mask pixel): small slides are not segmented at full res.
DEFAULT_MIN_MPP = 2.0


@dataclass
class TissueMask:
    """A tissue mask at thumbnail resolution.

    Attributes:
        mask: ``[h, w]`` bool, True = tissue.
        dimensions: level-0 ``(W, H)`` of the slide.
        thumbnail: ``[h, w, 3]`` uint8, the RGB image the mask was computed from.
        threshold: the saturation threshold used (in [0, 1]).
        mpp: µm per mask pixel (None if the slide's mpp is unknown).
    """

    mask: np.ndarray
    dimensions: tuple[int, int]
    thumbnail: np.ndarray
    threshold: float
    mpp: float | None = None

    @property
    def scale_xy(self) -> tuple[float, float]:
        """Level-0 pixels per mask pixel along x and y (they differ by rounding only)."""
        h, w = self.mask.shape
        return self.dimensions[0] / w, self.dimensions[1] / h

    @property
    def downsample(self) -> float:
        """Level-0 pixels per mask pixel (mean of x and y)."""
        sx, sy = self.scale_xy
        return (sx + sy) / 2

    @property
    def fraction(self) -> float:
        """Fraction of the slide covered by tissue."""
        return float(self.mask.mean()) if self.mask.size else 0.0

    def region_fractions(self, coords: np.ndarray, extent: int | tuple[int, int]) -> np.ndarray:
        """Tissue fraction of level-0 boxes ``[x, x + extent) × [y, y + extent)``.

        The fraction is over the whole box: parts outside the slide count as non-tissue.

        Args:
            coords: ``[N, 2]`` level-0 top-left ``x, y``.
            extent: level-0 box size (int = square).
        Returns:
            ``[N]`` float64 in [0, 1].
        """
        coords = np.asarray(coords, dtype=np.float64).reshape(-1, 2)
        ew, eh = (extent, extent) if np.isscalar(extent) else extent  # type: ignore[misc]
        sx, sy = self.scale_xy
        h, w = self.mask.shape
        # Summed-area table with a zero first row/column: sum over [r0, r1) × [c0, c1).
        sat = np.zeros((h + 1, w + 1), dtype=np.int64)
        sat[1:, 1:] = self.mask.cumsum(0).cumsum(1)
        c0 = np.clip(np.round(coords[:, 0] / sx), 0, w).astype(np.int64)
        c1 = np.clip(np.round((coords[:, 0] + ew) / sx), 0, w).astype(np.int64)
        r0 = np.clip(np.round(coords[:, 1] / sy), 0, h).astype(np.int64)
        r1 = np.clip(np.round((coords[:, 1] + eh) / sy), 0, h).astype(np.int64)
        tissue = sat[r1, c1] - sat[r0, c1] - sat[r1, c0] + sat[r0, c0]
        area = (ew / sx) * (eh / sy)
        return np.clip(tissue / area, 0.0, 1.0)


def saturation(rgb: np.ndarray) -> np.ndarray:
    """HSV saturation ``(max − min) / max`` of ``[h, w, 3]`` uint8 RGB → ``[h, w]`` float32 in [0, 1]."""
    rgb = np.asarray(rgb)
    mx = rgb.max(axis=2)
    mn = rgb.min(axis=2)
    return (mx - mn).astype(np.float32) / np.maximum(mx, 1).astype(np.float32)


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of values in [0, 1] (maximises the between-class variance)."""
    hist, edges = np.histogram(np.asarray(values).ravel(), bins=bins, range=(0.0, 1.0))
    hist = hist.astype(np.float64)
    centers = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centers)
    mean0 = m0 / np.maximum(w0, 1)
    mean1 = (m0[-1] - m0) / np.maximum(w1, 1)
    between = w0 * w1 * (mean0 - mean1) ** 2
    # With a gap between the modes the maximum is a plateau: take its middle, not its first bin.
    best = np.flatnonzero(between >= between.max() * (1 - 1e-9))
    return float(edges[int(round((best[0] + best[-1]) / 2)) + 1])


def _dilate(mask: np.ndarray, r: float) -> np.ndarray:
    """Dilation by a (2r+1)² square: separable max filter, cost independent of ``r``."""
    k = 2 * int(round(r)) + 1
    if k <= 1 or not mask.any():
        return mask.copy()
    return ndimage.maximum_filter(mask, size=k, mode="constant", cval=False)


def _erode(mask: np.ndarray, r: float) -> np.ndarray:
    """Erosion by a (2r+1)² square (the image border does not erode tissue touching it)."""
    k = 2 * int(round(r)) + 1
    if k <= 1 or not mask.any():
        return mask.copy()
    return ndimage.minimum_filter(mask, size=k, mode="nearest")


def _close(mask: np.ndarray, r: float) -> np.ndarray:
    if r < 1:
        return mask
    pad = int(np.ceil(r)) + 1
    m = np.pad(mask, pad)
    return _erode(_dilate(m, r), r)[pad:-pad, pad:-pad] | mask


def _open(mask: np.ndarray, r: float) -> np.ndarray:
    if r < 1:
        return mask
    return _dilate(_erode(mask, r), r) & mask


def _remove_small(mask: np.ndarray, min_pixels: float) -> np.ndarray:
    if min_pixels <= 1 or not mask.any():
        return mask
    labels, n = ndimage.label(mask)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    keep = sizes >= min_pixels
    keep[0] = False
    return keep[labels]


def _fill_small_holes(mask: np.ndarray, max_pixels: float | None) -> np.ndarray:
    filled = ndimage.binary_fill_holes(mask)
    if max_pixels is None:
        return filled
    holes = filled & ~mask
    labels, n = ndimage.label(holes)
    if n == 0:
        return mask
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    small = sizes <= max_pixels
    small[0] = False
    return mask | small[labels]


def segment_tissue(
    slide: Slide,
    *,
    max_size: int = DEFAULT_MAX_SIZE,
    min_mpp: float = DEFAULT_MIN_MPP,
    threshold: float | None = None,
    min_saturation: float = 0.05,
    max_saturation: float = 0.15,
    weak_saturation: float = 0.03,
    sparse_um: float = 40.0,
    sparse_density: float = 0.1,
    close_um: float = 32.0,
    open_um: float = 8.0,
    min_area_um2: float = 20_000.0,
    max_hole_um2: float | None = 250_000.0,
) -> TissueMask:
    """Segment tissue from a low-resolution view of ``slide``.

    Args:
        slide: an open :class:`~hipt.slide.Slide` (its mpp sizes the morphology; without one the
            mask is taken to be at ``min_mpp``).
        max_size: longer side of the mask in pixels (the cost bound).
        min_mpp: the mask is not finer than this many µm per pixel (small slides).
        threshold: fixed saturation threshold; None = Otsu clipped to
            ``[min_saturation, max_saturation]``.
        weak_saturation, sparse_um, sparse_density: sparse tissue (fat, loose stroma) = places where
            more than ``sparse_density`` of the pixels within ``sparse_um`` µm are faintly stained
            (saturation above ``weak_saturation``, or above the glass's level + 0.01 if higher).
        close_um, open_um: radii of the closing / opening, in µm (the closing joins fat-cell
            membranes and fibres; the opening drops threads).
        min_area_um2: tissue components smaller than this are dropped (dust, debris).
        max_hole_um2: holes up to this area are filled (fat, lumina); None fills every hole.

    Returns:
        :class:`TissueMask` (``mask [h, w]`` bool with ``max(h, w) ≤ max_size``).
    """
    W, H = slide.dimensions
    downsample = max(W, H) / max_size
    if slide.mpp is not None:
        downsample = max(downsample, min_mpp / slide.mpp)
    downsample = max(downsample, 1.0)
    rgb = slide.read_lowres(downsample)
    h, w = rgb.shape[:2]
    mask_mpp = None if slide.mpp is None else slide.mpp * ((W / w + H / h) / 2)
    um = mask_mpp if mask_mpp is not None else min_mpp  # µm per mask pixel

    sat = ndimage.uniform_filter(saturation(rgb), size=3)
    if threshold is None:
        threshold = float(np.clip(otsu_threshold(sat), min_saturation, max_saturation))
    strong = sat > threshold
    # Sparse tissue: fat (thin membranes around empty cells) and loose stroma are faint at this scale,
    # but dense in faintly stained pixels over a few tens of µm, which glass is not.  "Faint" = above
    # the glass's own saturation (its 95th percentile away from tissue) + 0.01, and at least
    # ``weak_saturation``.  Lone faint lines (blurred tissue borders) are too thin to reach the density.
    away = ~_dilate(strong, sparse_um / um)
    glass = float(np.percentile(sat[away], 95)) if away.any() else 0.0
    weak = min(threshold, max(weak_saturation, glass + 0.01))
    faint = (sat > weak) & ~strong
    density = ndimage.uniform_filter(faint.astype(np.float32), size=2 * max(1, round(sparse_um / um)) + 1)
    mask = strong | (density > sparse_density)
    mask = _close(mask, close_um / um)
    mask = _fill_small_holes(mask, None if max_hole_um2 is None else max_hole_um2 / um**2)
    mask = _remove_small(mask, min_area_um2 / um**2)
    if open_um / um >= 1:
        mask = _open(mask, open_um / um)
    mask = _remove_small(mask, min_area_um2 / um**2)
    return TissueMask(mask=mask.astype(bool), dimensions=(W, H), thumbnail=rgb, threshold=threshold, mpp=mask_mpp)
