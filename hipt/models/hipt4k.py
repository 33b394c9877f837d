"""The region encoder: ViT256-16 on every 256-px patch of a region, then ViT4096-256 on the token grid.

``HIPT4K(vit256, vit4k)`` maps regions ``[B, 3, H, W]`` (H, W multiples of 256; 4096×4096 in the paper)
to one region token ``[B, 192]`` and the patch tokens ``[B, (H/256)·(W/256), 384]``, in the same
row-major patch order as the reference's ``unfold(2, 256, 256).unfold(3, 256, 256)`` (patch ``k`` sits at
row ``k // (W/256)``, column ``k % (W/256)``).

Input convention: **uint8 pixels** ``[B, 3, H, W]`` (0–255) are normalized inside, minibatch by
minibatch, with :data:`NORMALIZATION` ``[normalization]`` (default ``"hipt"``: mean = std = 0.5, what
the released checkpoints expect at inference).  Floating-point input is taken as *already normalized*
(the output of the reference's ``eval_transforms``).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from hipt.models.vit import ViT4K, ViT256

__all__ = ["HIPT4K", "HIPT4KOutput", "NORMALIZATION", "normalize", "patchify"]

#: Per-channel (mean, std) for RGB in [0, 1].  ``"hipt"`` (0.5/0.5) is what the reference uses at
#: inference and what the released checkpoints expect (author, reference issue #70); ``"imagenet"`` is
#: what the reference's stage-1 DINO *training* code used (a discrepancy in the reference).
NORMALIZATION: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "hipt": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


def _stats(normalization: str | tuple) -> tuple[tuple[float, ...], tuple[float, ...]]:
    if isinstance(normalization, str):
        if normalization not in NORMALIZATION:
            raise ValueError(f"unknown normalization {normalization!r}; choose one of {sorted(NORMALIZATION)}")
        return NORMALIZATION[normalization]
    mean, std = normalization
    return tuple(mean), tuple(std)


def normalize(x: torch.Tensor, normalization: str | tuple = "hipt", dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 pixels ``[..., 3, H, W]`` → normalized floats ``(x/255 − mean)/std`` of ``dtype``."""
    mean, std = _stats(normalization)
    shape = (3, 1, 1)
    m = torch.tensor(mean, dtype=dtype, device=x.device).view(shape)
    s = torch.tensor(std, dtype=dtype, device=x.device).view(shape)
    return (x.to(dtype) / 255.0 - m) / s


def patchify(regions: torch.Tensor, patch_size: int = 256) -> torch.Tensor:
    """``[B, C, H, W]`` → ``[B·(H/p)·(W/p), C, p, p]``, row-major per region (the reference's layout)."""
    b, c, h, w = regions.shape
    p = patch_size
    if h % p or w % p:
        raise ValueError(f"region of {h}×{w} px is not a multiple of the patch size {p}")
    x = regions.unfold(2, p, p).unfold(3, p, p)  # [B, C, H/p, W/p, p, p]
    return x.permute(0, 2, 3, 1, 4, 5).reshape(b * (h // p) * (w // p), c, p, p)


class HIPT4KOutput(NamedTuple):
    """What :class:`HIPT4K` returns.

    - ``region``: ``[B, D4k]`` ViT4096 [CLS] per region (``None`` without a ViT4K).
    - ``patches``: ``[B, n, D256]`` ViT256 [CLS] per 256-px patch, row-major (n = (H/256)·(W/256)).
    - ``attn4k``: ``[B, heads4k, H/256, W/256]`` [CLS]-query attention of ViT4K's last block over the patch
      grid (``return_attention=True`` only).
    - ``attn256``: ``[B, n, heads256, 256/16, 256/16]`` [CLS]-query attention of ViT256's last block over
      each patch's pixel-patch grid (``return_attention=True`` only).
    """

    region: torch.Tensor | None
    patches: torch.Tensor
    attn4k: torch.Tensor | None = None
    attn256: torch.Tensor | None = None


class HIPT4K(nn.Module):
    """Region encoder: ViT256 over the patches of each region, ViT4K over the resulting token grid.

    Args:
        vit256: the patch-level ViT (:func:`hipt.models.vit256_small`, or a tiny one).
        vit4k: the region-level ViT (:func:`hipt.models.vit4k_xs`), or ``None`` to compute patch tokens
            only (stage-2 pretraining data).
        patch_size: side of the patches fed to ``vit256`` (256).
        normalization: key of :data:`NORMALIZATION` or an explicit ``(mean, std)``; used for uint8 input.
        patch_batch: patches per ViT256 call (bounds memory; the reference used 256).

    ``forward(regions [B, 3, H, W], return_attention=False)`` → :class:`HIPT4KOutput`.
    """

    def __init__(
        self,
        vit256: ViT256,
        vit4k: ViT4K | None = None,
        patch_size: int = 256,
        normalization: str | tuple = "hipt",
        patch_batch: int = 256,
    ) -> None:
        super().__init__()
        if vit4k is not None and vit4k.input_embed_dim != vit256.embed_dim:
            raise ValueError(
                f"vit4k takes {vit4k.input_embed_dim}-d tokens but vit256 makes {vit256.embed_dim}-d ones"
            )
        self.vit256 = vit256
        self.vit4k = vit4k
        self.patch_size = patch_size
        self.normalization = normalization
        self.patch_batch = patch_batch

    def _prepare(self, patches: torch.Tensor) -> torch.Tensor:
        if patches.dtype == torch.uint8:
            return normalize(patches, self.normalization)
        if not patches.is_floating_point():
            raise TypeError(f"expected uint8 pixels or normalized floats, got {patches.dtype}")
        return patches

    def encode_patches(
        self, patches: torch.Tensor, return_attention: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``[N, 3, p, p]`` patches → (``[N, D256]`` tokens, ``[N, heads, p/16, p/16]`` [CLS] attention or None).

        Runs in minibatches of ``patch_batch``; uint8 patches are normalized one minibatch at a time.
        """
        feats, attns = [], []
        g = self.patch_size // self.vit256.patch_size
        for i in range(0, patches.shape[0], self.patch_batch):
            x = self._prepare(patches[i : i + self.patch_batch])
            if return_attention:
                tokens, attn = self.vit256.forward_with_attention(x)
                feats.append(self.vit256.forward_head(tokens))
                attns.append(attn[:, :, 0, 1:].reshape(attn.shape[0], attn.shape[1], g, g))
            else:
                feats.append(self.vit256(x))
        return torch.cat(feats), (torch.cat(attns) if return_attention else None)

    def forward(self, regions: torch.Tensor, return_attention: bool = False) -> HIPT4KOutput:
        if regions.ndim == 3:
            regions = regions.unsqueeze(0)
        if regions.ndim != 4 or regions.shape[1] != 3:
            raise ValueError(f"HIPT4K expects regions [B, 3, H, W], got {tuple(regions.shape)}")
        b, _, h, w = regions.shape
        gh, gw = h // self.patch_size, w // self.patch_size
        feats, attn256 = self.encode_patches(patchify(regions, self.patch_size), return_attention)
        patches = feats.reshape(b, gh * gw, -1)
        if attn256 is not None:
            attn256 = attn256.reshape(b, gh * gw, *attn256.shape[1:])
        region = attn4k = None
        if self.vit4k is not None:
            grid = patches.transpose(1, 2).reshape(b, -1, gh, gw)  # [B, D256, H/256, W/256]
            if return_attention:
                tokens, attn = self.vit4k.forward_with_attention(grid)
                region = self.vit4k.forward_head(tokens)
                attn4k = attn[:, :, 0, 1:].reshape(b, attn.shape[1], gh, gw)
            else:
                region = self.vit4k(grid)
        return HIPT4KOutput(region, patches, attn4k, attn256)

    def flops(self, height: int = 4096, width: int | None = None) -> int:
        """Analytic FLOPs to encode one ``height × width`` region (ViT256 on each patch + ViT4K on the grid).

        ViT-S/16 + ViT-XS on a 4096-px region: 256 × 12.28 + 1.71 ≈ 3,146 GFLOP.
        """
        width = height if width is None else width
        gh, gw = height // self.patch_size, width // self.patch_size
        total = gh * gw * self.vit256.flops(self.patch_size)
        if self.vit4k is not None:
            total += self.vit4k.flops(gh, gw)
        return total

    @property
    def config(self) -> dict:
        return {
            "vit256": self.vit256.config,
            "vit4k": None if self.vit4k is None else self.vit4k.config,
            "patch_size": self.patch_size,
            "normalization": self.normalization,
        }
