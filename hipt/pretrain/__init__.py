"""Two-stage DINO pretraining of HIPT (paper §3.3; reference notes §4).

Stage 1 trains ViT256-16 on 256×256 patches (here: any patch size) with DINO's multi-crop; stage 2
trains ViT4096-256 on the grids of ViT256 [CLS] features of 4096×4096 regions.  Both use the same
machinery:

- :mod:`~hipt.pretrain.augment`   multi-crop views of patches and of feature grids
- :mod:`~hipt.pretrain.head`      :class:`DINOHead` (reference-compatible state dict), :class:`MultiCropWrapper`
- :mod:`~hipt.pretrain.loss`      :class:`DINOLoss`
- :mod:`~hipt.pretrain.schedules` LR / weight decay / momentum / teacher temperature schedules
- :mod:`~hipt.pretrain.data`      streaming datasets and the resumable, shardable sampler
- :mod:`~hipt.pretrain.config`    :class:`PretrainConfig`, the presets (``cpu``, ``gpu``, ``paper``), :func:`make_config`
- :mod:`~hipt.pretrain.trainer`   :func:`train` (setup, resume, one epoch at a time), ``hipt pretrain``
- ``hipt.pretrain.export``    model cache folders, the slim teacher export and checkpoint loading
- ``hipt.pretrain.evaluate``  KNN probes used to show that pretraining learns
"""

from __future__ import annotations

from hipt.pretrain.augment import GridMultiCrop, PatchMultiCrop, grid_crop_sizes, tokens_to_grid
from hipt.pretrain.data import ArrayPatches, FeatureGrids, ImageFolderPatches, SlidePatches, StreamSampler
from hipt.pretrain.head import DINOHead, MultiCropWrapper
from hipt.pretrain.loss import DINOLoss
from hipt.pretrain.schedules import cosine_schedule, dino_schedules, scaled_lr, teacher_temp_schedule
from hipt.pretrain.config import PRESETS, PretrainConfig, make_config
from hipt.pretrain.trainer import TrainResult, read_log, train

__all__ = [
    "PRESETS",
    "ArrayPatches",
    "DINOHead",
    "DINOLoss",
    "FeatureGrids",
    "GridMultiCrop",
    "ImageFolderPatches",
    "MultiCropWrapper",
    "PatchMultiCrop",
    "PretrainConfig",
    "SlidePatches",
    "StreamSampler",
    "TrainResult",
    "cosine_schedule",
    "dino_schedules",
    "grid_crop_sizes",
    "make_config",
    "read_log",
    "scaled_lr",
    "teacher_temp_schedule",
    "tokens_to_grid",
    "train",
]
