"""Procedural H&E-like phantom slides and cohorts with ground truth (``hipt phantom``).

Real whole-slide images are large, slow to obtain and come without pixel-level truth.  This package
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

Modules, each built on the ones above it:

- :mod:`~hipt.phantom.textures`  tissue types, the stain colour model, renderers, patches, the texture bank
- :mod:`~hipt.phantom.layouts`   layout maps: free-form slides, the cohorts' regions, region placement
- :mod:`~hipt.phantom.slides`    ground truth, composing windows from the bank, writing slides
- :mod:`~hipt.phantom.cohorts`   cohort kinds and their settings, writing cohorts
- :mod:`~hipt.phantom.cli`       ``hipt phantom``
- :mod:`~hipt.phantom.checks`    bag-level summaries of a cohort and the label signal they carry
"""

from __future__ import annotations

from hipt.phantom.cli import add_arguments, run
from hipt.phantom.cohorts import (
    COHORT_JPEG_SUBSAMPLING, COHORT_KINDS, COHORT_STAIN_JITTER, COHORT_VERSION, COMPOSITION_CLASSES, CONTEXT_CLASSES,
    SURVIVAL_CLASSES, Cohort, cohort_dir, cohort_truths, make_cohort,
)
from hipt.phantom.layouts import (
    CONTEXT_FRACTIONS, composition_region, context_counts, context_region, random_layout, tile_regions, touches,
)
from hipt.phantom.slides import STAIN_JITTER, PhantomSlide, PhantomTruth, load_truth, make_slide, truth_path
from hipt.phantom.textures import (
    ADIPOSE, BACKGROUND, CELL, LYMPHOCYTES, MPP, STROMA, TISSUES, TUMOUR, TextureBank, phantom_patches, render_patch,
    texture_bank,
)

# Private helpers read through this package: the stain optical densities (hipt.pretrain.evaluate's
# stain matrix), the composer and the cohort plan (tests/test_phantom.py).
from hipt.phantom.cohorts import _cohort_plan  # noqa: F401
from hipt.phantom.slides import _Composer  # noqa: F401
from hipt.phantom.textures import _E_OD, _GLASS_OD, _H_OD  # noqa: F401

__all__ = [
    "TISSUES", "BACKGROUND", "TUMOUR", "STROMA", "LYMPHOCYTES", "ADIPOSE", "CELL", "MPP", "STAIN_JITTER",
    "COHORT_STAIN_JITTER", "COHORT_JPEG_SUBSAMPLING", "COHORT_VERSION",
    "COHORT_KINDS", "render_patch", "phantom_patches", "TextureBank", "texture_bank",
    "PhantomTruth", "PhantomSlide", "make_slide", "load_truth", "truth_path", "random_layout",
    "context_region", "context_counts", "composition_region", "cohort_truths", "touches", "tile_regions", "Cohort", "make_cohort",
    "cohort_dir", "COMPOSITION_CLASSES", "CONTEXT_CLASSES", "CONTEXT_FRACTIONS", "SURVIVAL_CLASSES",
    "add_arguments", "run",
]
