"""HIPT's models: the nested ViTs, the region encoder and the slide-level head.

- :class:`ViT256` / :func:`vit256_small` (ViT-S/16, 21.7 M parameters) / :func:`vit256_tiny`:
  ``[B, 3, 256, 256]`` normalized patches → ``[B, 384]``.
- :class:`ViT4K` / :func:`vit4k_xs` (ViT-XS, 2.8 M parameters) / :func:`vit4k_tiny`:
  ``[B, 384, H, W]`` grids of ViT256 tokens → ``[B, 192]``.
- :class:`HIPT4K`: regions ``[B, 3, H, W]`` (uint8) → region tokens ``[B, 192]`` + patch tokens
  ``[B, n, 384]`` (+ attention maps).
- :class:`HIPTSlide`: HIPT-LGP-FC, ``[M, 256, 384]`` (or ``[M, 192]``) → slide logits + attention over regions.
- :class:`HIPTGP`: HIPT-GP-FC, HIPT's global part alone on region tokens ``[M, 192]`` (the reference's released embeddings).
- :mod:`hipt.models.weights`: the released checkpoints (registry, checks, safe loading, export);
  :func:`load_model` rebuilds a ViT from any of them.
- :data:`NORMALIZATION`: ``"hipt"`` (mean = std = 0.5; the released checkpoints, default) and
  ``"imagenet"`` (what the reference's stage-1 training used).

``hipt.models.mil`` (MIL baselines) is a separate module and is not imported here.
"""

from hipt.models.hipt4k import HIPT4K, NORMALIZATION, HIPT4KOutput, normalize, patchify
from hipt.models.slide_heads import HIPTGP, AttnNetGated, FeatureStandardizer, HIPTSlide
from hipt.models.vit import (
    ViT4K,
    ViT256,
    interpolate_pos_embed,
    load_model,
    sincos_pos_embed,
    transformer_flops,
    vit4k_tiny,
    vit4k_xs,
    vit256_small,
    vit256_tiny,
)
from hipt.models.weights import CHECKPOINTS, load_backbone, save_backbone

__all__ = [
    "CHECKPOINTS",
    "HIPT4K",
    "HIPT4KOutput",
    "NORMALIZATION",
    "AttnNetGated",
    "FeatureStandardizer",
    "HIPTSlide",
    "HIPTGP",
    "ViT4K",
    "ViT256",
    "interpolate_pos_embed",
    "sincos_pos_embed",
    "load_backbone",
    "load_model",
    "normalize",
    "patchify",
    "save_backbone",
    "transformer_flops",
    "vit4k_tiny",
    "vit4k_xs",
    "vit256_small",
    "vit256_tiny",
]
