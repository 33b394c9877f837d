"""Attention maps and hierarchical heatmaps for patches, regions and whole slides (``hipt heatmap``).

One module per concept; every public name is importable from ``hipt.attention`` itself:

- :mod:`hipt.attention.maps`: the [CLS] attention of ViT256 (patch level) and ViT4K (region level), the
  slide model's attention over regions, the reference's hierarchical heatmaps of a region
  (:class:`~hipt.attention.maps.HierarchicalMaps`) and whole-slide heatmaps rendered region by region.
- :mod:`hipt.attention.map_arithmetic`: model-free arithmetic on score maps (percentile ranks, shifted
  views, overlap averaging, blending, canvases), tested on synthetic maps.
- :mod:`hipt.attention.validation`: the maps checked against the phantom slides' ground truth
  (informative regions, nuclei masks).
- :mod:`hipt.attention.slide_model`: the small slide model the validation trains, and slide-model checkpoints.
- :mod:`hipt.attention.plotting` (figures) and :mod:`hipt.attention.explorer` (an ipywidgets browser).
- :mod:`hipt.attention.cli`: the ``hipt heatmap`` command.
"""

from __future__ import annotations

from hipt.attention.explorer import AttentionExplorer
from hipt.attention.maps import (
    HierarchicalMaps,
    RegionScores,
    SlideHeatmap,
    cls_attention,
    encode_patches,
    patch_attention,
    patch_heatmaps,
    patch_level_maps,
    region_boxes,
    region_cls_attention,
    region_heatmaps,
    region_level_maps,
    region_scores,
    region_to_patches,
    slide_attention,
    slide_heatmaps,
)
from hipt.attention.plotting import plot_head_maps
from hipt.attention.slide_model import load_slide_model, save_slide_model, train_slide_model
from hipt.attention.validation import (
    ContextValidation,
    informative_region_auc,
    nuclei_agreement,
    region_flags,
    validate_context_attention,
    validate_nuclei,
)

__all__ = [
    "cls_attention",
    "patch_attention",
    "region_cls_attention",
    "region_to_patches",
    "encode_patches",
    "RegionScores",
    "region_scores",
    "patch_level_maps",
    "region_level_maps",
    "patch_heatmaps",
    "HierarchicalMaps",
    "region_heatmaps",
    "slide_attention",
    "SlideHeatmap",
    "region_boxes",
    "slide_heatmaps",
    "informative_region_auc",
    "region_flags",
    "ContextValidation",
    "validate_context_attention",
    "nuclei_agreement",
    "validate_nuclei",
    "train_slide_model",
    "save_slide_model",
    "load_slide_model",
    "plot_head_maps",
    "AttentionExplorer",
]
