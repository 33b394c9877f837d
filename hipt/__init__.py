"""hipt: Hierarchical Image Pyramid Transformer for gigapixel pathology.

One module per concept:

- :mod:`hipt.slide`     slide access (OpenSlide and plain images) at a target resolution
- :mod:`hipt.tissue`    tissue segmentation on a low-resolution level
- :mod:`hipt.tiling`    the grid of 4096-px regions and the ``hipt patch`` command
- :mod:`hipt.phantom`   procedural H&E-like phantom slides with ground truth
- :mod:`hipt.models`    ViT256-16, ViT4096-256, the region encoder and slide-level heads
- :mod:`hipt.features`  hierarchical feature extraction (``hipt extract``)
- :mod:`hipt.pretrain`  two-stage DINO pretraining (``hipt pretrain``)
- :mod:`hipt.tasks`     slide-level tasks: TCGA tables, splits, MIL training
- :mod:`hipt.metrics`, :mod:`hipt.survival`, :mod:`hipt.knn`
- :mod:`hipt.attention` attention maps and hierarchical heatmaps (``hipt heatmap``)
- :mod:`hipt.provenance` commit, machine and command of a result (benchmark and run records)
- :mod:`hipt.released` the reference's released TCGA embeddings (``hipt released``)
- :mod:`hipt.io`, :mod:`hipt.jobs`, :mod:`hipt.device`, :mod:`hipt.precision`, :mod:`hipt.paths`, :mod:`hipt.errors`  shared plumbing

The book's pipeline sits above the library in :mod:`hipt.book` (its presets and train-or-load cache,
the phantom tasks, the chapters' evidence claims, ``hipt reproduce``); no library module imports it.

Submodules are imported lazily so that ``import hipt`` stays cheap.
"""

from __future__ import annotations

__version__ = "0.1.0"

from hipt.errors import HIPTError  # noqa: E402,F401
