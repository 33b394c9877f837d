"""Figures of attention maps: an image and its per-head maps blended over it, side by side."""

from __future__ import annotations

import math
from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np

from hipt.attention.map_arithmetic import blend, resize_area

__all__ = ["plot_head_maps"]


def plot_head_maps(
    image: np.ndarray,
    maps: np.ndarray,
    *,
    titles: Sequence[str] | None = None,
    cmap="light_jet",
    alpha: float = 0.5,
    threshold: float | None = None,
    ncols: int | None = None,
    size: float = 2.2,
    suptitle: str | None = None,
):
    """A matplotlib figure: the image, then each map ``maps[k]`` ``[h, w]`` blended over it.

    ``maps`` ``[K, h, w]`` in ``[0, 1]`` (ranked maps; min-max raw ones first). Returns the figure.
    """
    maps = np.asarray(maps)
    k = len(maps) + 1
    ncols = ncols or min(k, 7)
    nrows = math.ceil(k / ncols)
    h, w = maps.shape[-2:]
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows * h / w + (0.4 if suptitle else 0)),
                             squeeze=False)
    small = resize_area(image, (h, w))
    axes.flat[0].imshow(small)
    axes.flat[0].set_title("image", fontsize=9)
    for i, m in enumerate(maps):
        ax = axes.flat[i + 1]
        ax.imshow(blend(small, m, cmap=cmap, alpha=alpha, threshold=threshold))
        ax.set_title(titles[i] if titles else f"head {i}", fontsize=9)
    for ax in axes.flat:
        ax.axis("off")
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout()
    return fig
