"""Small synthetic slides for the slide/tissue/tiling tests (tiled pyramidal TIFFs that OpenSlide opens)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

GLASS = (243, 241, 244)
PINK = (222, 130, 180)
PURPLE = (120, 70, 160)


def tissue_image(width: int, height: int, blobs: list[tuple[float, float, float]] | None = None,
                 seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A glass image with stained disks: ``(rgb [H, W, 3] uint8, truth [H, W] bool)``.

    ``blobs`` = (cx, cy, r) in pixels; default one disk in the middle.  Disks are pink with purple
    dots (nuclei) and noise, glass is near white with faint noise.
    """
    rng = np.random.default_rng(seed)
    if blobs is None:
        blobs = [(width / 2, height / 2, min(width, height) / 3)]
    yy, xx = np.mgrid[0:height, 0:width]
    truth = np.zeros((height, width), bool)
    for cx, cy, r in blobs:
        truth |= (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
    img = np.empty((height, width, 3), np.float32)
    img[:] = GLASS
    img[truth] = PINK
    dots = truth & (rng.random((height, width)) < 0.02)
    img[dots] = PURPLE
    img += rng.normal(0, 2.0, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8), truth


def write_tiff_slide(path: str | Path, rgb: np.ndarray, mpp: float | None, downsamples: tuple[int, ...] = (1, 4),
                     tile: int = 256, resolution_unit: str = "CENTIMETER") -> Path:
    """Write ``rgb`` as a tiled pyramidal TIFF (one IFD per level) that OpenSlide opens as generic-tiff.

    ``mpp`` is stored as XResolution/YResolution (pixels per centimetre or inch); None stores no
    resolution (OpenSlide then reports no mpp).
    """
    import tifffile

    path = Path(path)
    h, w = rgb.shape[:2]
    with tifffile.TiffWriter(path) as tif:
        for k, d in enumerate(downsamples):
            lw, lh = -(-w // d), -(-h // d)
            level = rgb if d == 1 else np.asarray(Image.fromarray(rgb).resize((lw, lh), Image.Resampling.BOX))
            kwargs = {}
            if mpp is not None:
                per_unit = (1e4 if resolution_unit == "CENTIMETER" else 25400.0) / (mpp * d)
                kwargs = dict(resolution=(per_unit, per_unit), resolutionunit=resolution_unit)
            tif.write(level, tile=(tile, tile), photometric="rgb", subfiletype=0 if k == 0 else 1,
                      compression="zlib", metadata=None, **kwargs)
    return path
