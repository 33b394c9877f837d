"""Browse a slide's attention maps in a notebook: region, level, head and blending picked with ipywidgets."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Rectangle

from hipt.attention.map_arithmetic import blend
from hipt.attention.maps import HierarchicalMaps, SlideHeatmap

__all__ = ["AttentionExplorer"]


@dataclass
class AttentionExplorer:
    """Browse a slide's maps: pick a region, a level, a head and the blending.

    ``slide``: the whole-slide maps (:func:`~hipt.attention.maps.slide_heatmaps`); ``regions``:
    ``{region index: HierarchicalMaps}`` for the regions one may pick. :meth:`figure` draws one view (the thumbnail
    with the region outlined, and the chosen map); :meth:`widget` wires it to ipywidgets controls
    (``interactive_output``), for a live notebook.
    """

    slide: SlideHeatmap
    regions: dict[int, HierarchicalMaps]
    cmap: Any = "light_jet"
    levels: tuple[str, ...] = ("256", "4k", "hierarchical", "slide")

    def map_for(self, region: int, level: str, head: int | None) -> tuple[np.ndarray, np.ndarray, str]:
        """``(image, score in [0, 1], title)`` of one view; ``head`` None or < 0 = mean over heads."""
        head = None if head is None or head < 0 else head
        hm = self.regions[region]
        hname = "mean of heads" if head is None else f"head {head}"
        if level == "slide":
            score = self.slide.slide_map if self.slide.slide_map is not None else self.slide.three_level
            return self.slide.thumbnail, score, "slide attention over regions"
        if level == "hierarchical":
            h4 = None if head is None else min(head, len(hm.region_maps) - 1)
            h2 = None if head is None else min(head, len(hm.patch_maps) - 1)
            return hm.image, hm.display(hm.hierarchical(h4, h2)), f"region {region}: factorized 4k × 256, {hname}"
        maps = hm.patch_maps if level == "256" else hm.region_maps
        if head is not None:
            head = min(head, len(maps) - 1)
        score = maps.mean(0) if head is None else maps[head]
        return hm.image, hm.display(score), f"region {region}: ViT{'256-16' if level == '256' else '4096-256'}, {hname}"

    def figure(self, region: int, level: str = "hierarchical", head: int | None = None, alpha: float = 0.5):
        """A two-panel matplotlib figure of one view."""
        image, score, title = self.map_for(region, level, head)
        fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(10, 4.6))
        ax0.imshow(self.slide.thumbnail)
        for r, (x0, y0, x1, y1) in enumerate(self.slide.boxes):
            if r in self.regions:
                ax0.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, lw=2.5 if r == region else 1,
                                        ec="black" if r == region else "grey"))
                ax0.text(x0 + 4, y0 + 4, str(r), va="top", fontsize=8)
        ax0.set_title("thumbnail (pick a region)", fontsize=10)
        if level == "slide":
            ax1.imshow(self.slide.overlay(score, cmap=self.cmap, alpha=alpha))
        else:
            ax1.imshow(blend(image, score, cmap=self.cmap, alpha=alpha))
        ax1.set_title(title, fontsize=10)
        for ax in (ax0, ax1):
            ax.axis("off")
        fig.tight_layout()
        return fig

    def widget(self):
        """ipywidgets controls + output that redraw :meth:`figure` on every change."""
        import ipywidgets as w  # here, not at the top: ipywidgets is optional (notebooks only)

        n_heads = max(max(len(h.patch_maps), len(h.region_maps)) for h in self.regions.values())
        region = w.Dropdown(options=sorted(self.regions), description="region")
        level = w.ToggleButtons(options=list(self.levels), value="hierarchical", description="level")
        head = w.IntSlider(value=-1, min=-1, max=n_heads - 1, description="head (-1: mean)")
        alpha = w.FloatSlider(value=0.5, min=0.0, max=1.0, step=0.05, description="alpha")

        def show(region, level, head, alpha):
            self.figure(region, level, head, alpha)
            plt.show()

        out = w.interactive_output(show, {"region": region, "level": level, "head": head, "alpha": alpha})
        return w.VBox([w.HBox([region, head, alpha]), level, out])
