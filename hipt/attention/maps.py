"""Attention maps of HIPT at its three levels, and the hierarchical heatmaps built from them.

- **ViT256-16** (patch level): the last block's [CLS] attention over the token grid of a 256-px patch
  (``[heads, 16, 16]`` for 16-px tokens), :func:`patch_attention`.
- **ViT4096-256** (region level): the [CLS] attention over the grid of patch tokens of a region
  (``[heads, 16, 16]`` for a 4096-px region, ``[heads, 8, 8]`` for the CPU book's 1024-px regions of 128-px patches),
  :func:`region_cls_attention`.
- **The slide model** (slide level): its attention-pooling weights over regions, :func:`slide_attention`.

Grid sizes are always derived from the inputs (token size from the attention's length, patch grid from
the region), never hard-coded to 256/16/384.

:func:`region_heatmaps` implements the reference's hierarchical heatmaps (``HIPT_4K`` heatmap utilities,
reference facts §3) with its bugs fixed: percentile ranks (``rankdata(v)·100/len(v)``; the 4K map ranked
over the whole region, each 256 map ranked within its patch and tiled), shifted views (every view cut
from the region at its own offset and padded white by exactly that offset), pasted back and averaged
with an overlap counter, and the "factorized" combination of the two levels (an overlap-weighted mean)
next to a plain product. :func:`slide_heatmaps` stitches region-level results over a whole slide into a
canvas at the output resolution, reading one region at a time, so memory never scales with the slide.
The model-free arithmetic on the maps lives in :mod:`hipt.attention.map_arithmetic`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from hipt.attention.map_arithmetic import (
    ScoreCanvas,
    blend,
    check_shift,
    factorized_map,
    minmax,
    output_size,
    overlap_average,
    percentile_rank,
    product_map,
    rank_per_map,
    resize_area,
    shifted_view,
    tile_patch_maps,
    upsample_nearest,
)
from hipt.device import model_device
from hipt.models import NORMALIZATION
from hipt.slide import open_slide
from hipt.tiling import load_coords

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
]


# ==================================================================================================
# raw [CLS] attention
# ==================================================================================================
def cls_attention(attn: torch.Tensor, grid_hw: tuple[int, int]) -> torch.Tensor:
    """The [CLS] row of an attention matrix as maps over the token grid.

    ``attn`` ``[B, heads, 1+N, 1+N]`` (softmax over keys; token 0 = [CLS]) → ``[B, heads, gh, gw]``
    with ``gh·gw = N`` (attention of [CLS] to every grid token, row-major; its weight on itself is
    dropped, as in the reference's ``[:, :, 0, 1:]``).
    """
    b, heads, n1, _ = attn.shape
    gh, gw = grid_hw
    if n1 - 1 != gh * gw:
        raise ValueError(f"attention over {n1 - 1} tokens does not fit a {gh}×{gw} grid")
    return attn[:, :, 0, 1:].reshape(b, heads, gh, gw)


def _token_grid(h: int, w: int, n_tokens: int) -> tuple[int, int]:
    """Token grid of an ``h × w`` image cut into ``n_tokens`` square tokens (token side derived)."""
    side = math.sqrt(h * w / n_tokens)
    t = int(round(side))
    if t < 1 or h % t or w % t or (h // t) * (w // t) != n_tokens:
        raise ValueError(f"{n_tokens} tokens do not tile an image of {h}×{w} px with square tokens")
    return h // t, w // t


def _last_attention(model: nn.Module, x: torch.Tensor, need_tokens: bool) -> tuple[torch.Tensor | None, torch.Tensor]:
    """``(tokens [B,1+N,D] or None, attention [B,heads,1+N,1+N])``, in one pass where the model allows."""
    if need_tokens and hasattr(model, "forward_with_attention"):
        return model.forward_with_attention(x)
    attn = model.get_last_selfattention(x)
    tokens = model.forward_features(x) if need_tokens else None
    return tokens, attn


@torch.inference_mode()
def patch_attention(vit256: nn.Module, patches: torch.Tensor) -> torch.Tensor:
    """Per-head [CLS] attention of ViT256 over each patch's token grid.

    ``patches`` ``[B, 3, h, w]`` normalized → ``[B, heads, h/t, w/t]`` (t = token side, derived from
    the attention's length: 16×16 for 256-px patches and 16-px tokens).
    """
    attn = vit256.get_last_selfattention(patches)
    grid = _token_grid(patches.shape[-2], patches.shape[-1], attn.shape[-1] - 1)
    return cls_attention(attn.float(), grid)


@torch.inference_mode()
def region_cls_attention(vit4k: nn.Module, grid: torch.Tensor) -> torch.Tensor:
    """Per-head [CLS] attention of ViT4K over a region's patch-token grid.

    ``grid`` ``[B, D, gh, gw]`` (ViT256 [CLS] tokens, channels first) → ``[B, heads, gh, gw]``.
    """
    attn = vit4k.get_last_selfattention(grid)
    return cls_attention(attn.float(), tuple(grid.shape[-2:]))


# ==================================================================================================
# regions → patches → tokens
# ==================================================================================================
def _normalization(normalization: str | tuple = "hipt") -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``(mean, std)`` for a name in :data:`hipt.models.NORMALIZATION` or an explicit pair."""
    if not isinstance(normalization, str):
        mean, std = normalization
        return tuple(mean), tuple(std)
    if normalization not in NORMALIZATION:
        raise ValueError(f"unknown normalization {normalization!r}: one of {sorted(NORMALIZATION)}")
    mean, std = NORMALIZATION[normalization]
    return tuple(mean), tuple(std)


def region_to_patches(region: np.ndarray, patch_px: int) -> np.ndarray:
    """Cut a region into its patches, row-major (the reference's unfold order).

    ``region`` ``[H, W, 3]`` uint8 with H, W multiples of ``patch_px`` → ``[gh·gw, p, p, 3]``.
    """
    region = np.asarray(region)
    h, w = region.shape[:2]
    if h % patch_px or w % patch_px:
        raise ValueError(f"region of {h}×{w} px is not a multiple of the patch size {patch_px}")
    gh, gw = h // patch_px, w // patch_px
    return (
        region[..., :3].reshape(gh, patch_px, gw, patch_px, 3).transpose(0, 2, 1, 3, 4).reshape(gh * gw, patch_px, patch_px, 3)
    )


def _to_tensor(images: np.ndarray, mean_std, device) -> torch.Tensor:
    """``[B, H, W, 3]`` uint8 → ``[B, 3, H, W]`` float32 normalized, on ``device`` (one fused pass)."""
    mean, std = mean_std
    x = torch.from_numpy(np.ascontiguousarray(images)).to(device).permute(0, 3, 1, 2).float()
    scale = torch.tensor([1.0 / (255.0 * s) for s in std], device=device).view(1, 3, 1, 1)
    shift = torch.tensor([m / s for m, s in zip(mean, std)], device=device).view(1, 3, 1, 1)
    return x.mul_(scale).sub_(shift)


@torch.inference_mode()
def encode_patches(
    vit256: nn.Module,
    patches: np.ndarray,
    *,
    need_cls: bool = True,
    need_attention: bool = True,
    batch_size: int = 64,
    normalization: str | tuple = "hipt",
) -> tuple[torch.Tensor | None, np.ndarray | None]:
    """Run ViT256 over patches in minibatches.

    ``patches`` ``[n, p, p, 3]`` uint8 → ``(cls [n, D] float32 or None, attention [n, heads, th, tw]
    float32 or None)``; one forward pass per minibatch gives both where the model has
    ``forward_with_attention``.
    """
    device = model_device(vit256)
    mean_std = _normalization(normalization)
    cls_out, attn_out = [], []
    for i in range(0, len(patches), batch_size):
        x = _to_tensor(patches[i : i + batch_size], mean_std, device)
        if need_attention:
            tokens, attn = _last_attention(vit256, x, need_tokens=need_cls)
            grid = _token_grid(x.shape[-2], x.shape[-1], attn.shape[-1] - 1)
            attn_out.append(cls_attention(attn.float(), grid).cpu().numpy())
            if need_cls:
                head = vit256.forward_head(tokens) if hasattr(vit256, "forward_head") else tokens[:, 0]
                cls_out.append(head.float().cpu())
        elif need_cls:
            cls_out.append(vit256(x).float().cpu())
    cls = torch.cat(cls_out) if cls_out else None
    attn_np = np.concatenate(attn_out) if attn_out else None
    return cls, attn_np


@dataclass
class RegionScores:
    """Raw [CLS] attention of one region (one view), before ranking and upsampling.

    Attributes:
        patch_attn: ``[n_patches, heads256, th, tw]`` ViT256 attention of each patch (row-major patches),
            or None when not asked for.
        region_attn: ``[heads4k, gh, gw]`` ViT4K attention over the patch grid, or None.
        grid_hw: ``(gh, gw)`` patches per region side.
        patch_tokens: ``[n_patches, D]`` the ViT256 [CLS] tokens (the ViT4K input), or None.
    """

    patch_attn: np.ndarray | None
    region_attn: np.ndarray | None
    grid_hw: tuple[int, int]
    patch_tokens: torch.Tensor | None = None


def region_scores(
    region: np.ndarray,
    vit256: nn.Module,
    vit4k: nn.Module | None,
    *,
    patch_px: int = 256,
    need_patch_attention: bool = True,
    patch_tokens: torch.Tensor | np.ndarray | None = None,
    batch_size: int = 64,
    normalization: str | tuple = "hipt",
) -> RegionScores:
    """Attention of both ViTs on one region.

    ``region`` ``[H, W, 3]`` uint8 (H, W multiples of ``patch_px``). ``patch_tokens`` ``[n, D]``: the
    region's precomputed ViT256 [CLS] tokens (e.g. ``feats256`` of ``hipt extract``), which spares
    ViT256 when only the 4K attention is needed.
    """
    patches = region_to_patches(region, patch_px)
    gh, gw = region.shape[0] // patch_px, region.shape[1] // patch_px
    need_cls = vit4k is not None and patch_tokens is None
    cls, attn256 = None, None
    if need_cls or need_patch_attention:
        cls, attn256 = encode_patches(
            vit256, patches, need_cls=need_cls, need_attention=need_patch_attention,
            batch_size=batch_size, normalization=normalization,
        )
    if patch_tokens is not None:
        cls = torch.as_tensor(np.asarray(patch_tokens, dtype=np.float32))
    attn4k = None
    if vit4k is not None:
        assert cls is not None
        grid = cls.T.reshape(1, cls.shape[1], gh, gw).to(model_device(vit4k))
        attn4k = region_cls_attention(vit4k, grid)[0].cpu().numpy()
    return RegionScores(attn256, attn4k, (gh, gw), cls)


def _scores(attn: np.ndarray, rank: bool) -> np.ndarray:
    """Per-map percentile ranks in ``[0, 1]``, or raw attention × the number of tokens (1 = uniform)."""
    return rank_per_map(attn) if rank else attn * (attn.shape[-1] * attn.shape[-2])


def patch_level_maps(scores: RegionScores, out_hw: tuple[int, int], rank: bool = True) -> np.ndarray:
    """ViT256 maps of a region as one mosaic: ``[heads256, out_h, out_w]``.

    With ``rank`` each patch's map is percentile-ranked over its own tokens (values in ``[0, 1]``; the
    reference's ``concat_scores256``), else raw attention scaled by the token count (1 = uniform).
    The reference ranks the upsampled pixels; ranking tokens then upsampling differs from it by at most
    half a rank step (``0.5/N``) and does not depend on the output scale.
    """
    a = scores.patch_attn
    if a is None:
        raise ValueError("these scores hold no patch-level attention")
    maps = _scores(a, rank)
    return upsample_nearest(tile_patch_maps(maps, scores.grid_hw), out_hw).astype(np.float32)


def region_level_maps(scores: RegionScores, out_hw: tuple[int, int], rank: bool = True) -> np.ndarray:
    """ViT4K maps of a region: ``[heads4k, out_h, out_w]``, percentile-ranked over the region if ``rank``.

    (The reference's ``concat_scores4k``.) Without ``rank``: raw attention × number of tokens.
    """
    a = scores.region_attn
    if a is None:
        raise ValueError("these scores hold no region-level attention")
    maps = _scores(a, rank)
    return upsample_nearest(maps, out_hw).astype(np.float32)


# ==================================================================================================
# per-patch heatmaps (ViT256 alone)
# ==================================================================================================
def patch_heatmaps(
    patch: np.ndarray,
    vit256: nn.Module,
    *,
    scale: int = 1,
    offset: int | None = None,
    n_views: int = 2,
    rank: bool = True,
    normalization: str | tuple = "hipt",
) -> tuple[np.ndarray, np.ndarray]:
    """Per-head ViT256 heatmaps of one patch, smoothed over shifted views.

    ``patch`` ``[h, w, 3]`` uint8. View ``k`` is the patch shifted by ``k·offset`` px and padded white
    (default offset: one token, i.e. 16 px, and 2 views, as the reference). Returns
    ``(maps [heads, h/scale, w/scale], count [h/scale, w/scale])``: the overlap average of the views'
    maps (percentile ranks in ``[0, 1]`` when ``rank``, else attention × number of tokens) and how many
    views cover each pixel.
    """
    patch = np.asarray(patch)[..., :3]
    h, w = patch.shape[:2]
    out_hw = output_size(h, w, scale)

    def view_map(image: np.ndarray) -> np.ndarray:
        _, attn = encode_patches(vit256, image[None], need_cls=False, normalization=normalization)
        a = attn[0]  # [heads, th, tw]
        maps = _scores(a, rank)
        return upsample_nearest(maps, out_hw), h // a.shape[-2]

    first, token_px = view_map(patch)
    offset = token_px if offset is None else offset
    views, shifts = [first], [0]
    for k in range(1, n_views):
        shifts.append(check_shift(k * offset, scale))
        views.append(view_map(shifted_view(patch, k * offset))[0])
    return overlap_average(views, shifts)


# ==================================================================================================
# hierarchical region heatmaps
# ==================================================================================================
@dataclass
class HierarchicalMaps:
    """Smoothed, ranked attention of both ViTs over one region, at the output resolution.

    Attributes:
        image: ``[oh, ow, 3]`` uint8, the region downscaled to the output size (for blending).
        patch_maps: ``[heads256, oh, ow]`` ViT256 maps, the patch level (overlap-averaged percentile
            ranks in ``[0, 1]``; the reference's ``s256``).
        patch_view_counts: ``[oh, ow]`` how many shifted views cover each pixel at the patch level.
        region_maps: ``[heads4k, oh, ow]`` ViT4K maps, the region level (the reference's ``s4k``).
        region_view_counts: ``[oh, ow]`` how many shifted views cover each pixel at the region level.
        scale: input pixels per output pixel.
        rank: whether the maps are percentile ranks (else raw attention × the number of tokens).
    """

    image: np.ndarray
    patch_maps: np.ndarray
    patch_view_counts: np.ndarray
    region_maps: np.ndarray
    region_view_counts: np.ndarray
    scale: float
    rank: bool = True

    @staticmethod
    def _pick(maps: np.ndarray, head: int | None) -> np.ndarray:
        return maps.mean(0) if head is None else maps[head]

    def level(self, level: str, head: int | None = None) -> np.ndarray:
        """One map ``[oh, ow]``: ``level`` ``"256"`` (patch) or ``"4k"`` (region); ``head`` None: mean of heads."""
        if level == "256":
            return self._pick(self.patch_maps, head)
        if level == "4k":
            return self._pick(self.region_maps, head)
        raise ValueError(f"level must be '256' or '4k', not {level!r}")

    def hierarchical(self, head4k: int | None = None, head256: int | None = None, mode: str = "factorized") -> np.ndarray:
        """Combined map ``[oh, ow]`` of a 4K head and a 256 head (None = mean over that level's heads).

        ``mode="factorized"``: the reference's mean of the two levels weighted by their view counts,
        :func:`~hipt.attention.map_arithmetic.factorized_map`; ``mode="product"``: min-max of
        region map × patch map.
        """
        region, patch = self._pick(self.region_maps, head4k), self._pick(self.patch_maps, head256)
        if mode == "factorized":
            return factorized_map(region, self.region_view_counts, patch, self.patch_view_counts)
        if mode == "product":
            return product_map(region, patch)
        raise ValueError(f"mode must be 'factorized' or 'product', not {mode!r}")

    def display(self, score: np.ndarray) -> np.ndarray:
        """A map ready for a colormap: ranked maps are already in [0, 1]; raw ones are min-max scaled."""
        return score if self.rank else minmax(score)


def region_heatmaps(
    region: np.ndarray,
    vit256: nn.Module,
    vit4k: nn.Module,
    *,
    patch_px: int = 256,
    scale: int = 4,
    offset: int | None = None,
    n_views_4k: int = 4,
    n_views_256: int = 2,
    rank: bool = True,
    batch_size: int = 64,
    normalization: str | tuple = "hipt",
) -> HierarchicalMaps:
    """The reference's hierarchical heatmaps of one region, with its bugs fixed.

    View ``k`` is the region shifted by ``k·offset`` px (default ``offset = patch_px/2``: 128 px for
    256-px patches) and padded white by exactly that much; ``n_views_4k`` views (k = 0..3 in the
    reference) smooth the ViT4K maps and ``n_views_256`` (k = 0, 1) the ViT256 mosaic. Each view's maps
    are computed at the output size ``H/scale × W/scale``, pasted back at ``[k·offset/scale:, ...]`` and
    averaged where views overlap (:func:`~hipt.attention.map_arithmetic.overlap_average`).

    ``region`` ``[H, W, 3]`` uint8, H and W multiples of ``patch_px`` (non-square is fine). The ViT256
    [CLS] tokens that feed ViT4K come from the same passes as the ViT256 attention.
    """
    region = np.asarray(region)[..., :3]
    h, w = region.shape[:2]
    offset = patch_px // 2 if offset is None else offset
    out_hw = output_size(h, w, scale)
    if (h % scale) or (w % scale):
        raise ValueError(f"scale {scale} does not divide the region size {h}×{w}")
    region_views, patch_views, region_shifts, patch_shifts = [], [], [], []
    for k in range(max(n_views_4k, n_views_256, 1)):
        shift = check_shift(k * offset, scale)
        view = region if k == 0 else shifted_view(region, k * offset)
        sc = region_scores(
            view, vit256, vit4k if k < n_views_4k else None, patch_px=patch_px,
            need_patch_attention=k < n_views_256, batch_size=batch_size, normalization=normalization,
        )
        if k < n_views_4k:
            region_views.append(region_level_maps(sc, out_hw, rank))
            region_shifts.append(shift)
        if k < n_views_256:
            patch_views.append(patch_level_maps(sc, out_hw, rank))
            patch_shifts.append(shift)
    region_maps, region_view_counts = overlap_average(region_views, region_shifts)
    patch_maps, patch_view_counts = overlap_average(patch_views, patch_shifts)
    return HierarchicalMaps(
        image=resize_area(region, out_hw), patch_maps=patch_maps, patch_view_counts=patch_view_counts,
        region_maps=region_maps, region_view_counts=region_view_counts, scale=float(scale), rank=rank,
    )


# ==================================================================================================
# slide level
# ==================================================================================================
@torch.inference_mode()
def slide_attention(slide_model: nn.Module, features: torch.Tensor | np.ndarray, **kwargs: Any) -> np.ndarray:
    """The slide model's attention over its instances: ``[M]`` (softmax weights, sum 1).

    ``features``: whatever the model's ``forward`` takes (``[M, n, D]`` patch tokens or ``[M, D4k]``
    region tokens for :class:`hipt.models.HIPTSlide`); its output must be a dict with ``attention``
    (the contract of :class:`~hipt.models.HIPTSlide` and of :mod:`hipt.models.mil`).
    """
    was_training = slide_model.training
    slide_model.eval()
    try:
        x = torch.as_tensor(np.asarray(features, dtype=np.float32)) if not torch.is_tensor(features) else features.float()
        out = slide_model(x.to(model_device(slide_model)), **kwargs)
    finally:
        slide_model.train(was_training)
    att = out.get("attention") if isinstance(out, dict) else getattr(out, "attention", None)
    if att is None:
        raise ValueError(f"{type(slide_model).__name__} returns no 'attention'")
    return att.detach().float().reshape(-1).cpu().numpy()


@dataclass
class SlideHeatmap:
    """Whole-slide maps at the output resolution (all ``[oh, ow]``).

    Attributes:
        thumbnail: ``[oh, ow, 3]`` uint8 the slide at ``downsample`` × level 0.
        downsample: level-0 px per output px.
        boxes: ``[M, 4]`` int each region's ``(x0, y0, x1, y1)`` in output px (may exceed the canvas
            for padded edge regions).
        covered: bool, pixels inside some rendered region.
        slide_map: the slide model's attention painted per region (percentile rank over regions, in
            ``[0, 1]``), or None without slide attention.
        three_level: slide × region (ViT4K) × patch (ViT256) attention, min-max scaled over the covered
            pixels, or None without encoders. Without slide attention it is the two-level region × patch map.
        canvas_bytes: memory of one output canvas (two float32 planes).
    """

    thumbnail: np.ndarray
    downsample: float
    boxes: np.ndarray
    covered: np.ndarray
    slide_map: np.ndarray | None = None
    three_level: np.ndarray | None = None
    canvas_bytes: int = 0
    regions: list[int] = field(default_factory=list)

    def overlay(self, score: np.ndarray, cmap="light_jet", alpha: float = 0.5, threshold: float | None = None) -> np.ndarray:
        """Blend ``score`` over the thumbnail; pixels outside every region show the plain thumbnail."""
        out = blend(self.thumbnail, score, cmap=cmap, alpha=alpha, threshold=threshold)
        out[~self.covered] = self.thumbnail[~self.covered]
        return out


def region_boxes(coords: np.ndarray, level0_extent: float | tuple[float, float], downsample: float) -> np.ndarray:
    """Output-pixel boxes ``[M, 4]`` (x0, y0, x1, y1) of regions with level-0 top-left ``coords`` ``[M, 2]``.

    ``level0_extent``: the level-0 size a region spans (one number, or (width, height)). Edges are
    rounded independently, so neighbouring regions tile the canvas without gaps or overlaps.
    """
    ew, eh = (level0_extent, level0_extent) if np.isscalar(level0_extent) else level0_extent
    c = np.asarray(coords, dtype=np.float64).reshape(-1, 2)
    x0, y0 = np.round(c[:, 0] / downsample), np.round(c[:, 1] / downsample)
    x1, y1 = np.round((c[:, 0] + ew) / downsample), np.round((c[:, 1] + eh) / downsample)
    return np.stack([x0, y0, np.maximum(x1, x0 + 1), np.maximum(y1, y0 + 1)], axis=1).astype(np.int64)


def _compute_scale(region_px: int, box_px: int, offset: int, n_views: int) -> int:
    """Largest integer scale ≤ region/box that divides the region (and the view offset if views > 1)."""
    s = max(1, int(region_px // max(box_px, 1)))
    while s > 1 and (region_px % s or (n_views > 1 and offset % s)):
        s -= 1
    return s


@dataclass
class _Geometry:
    coords: np.ndarray
    region_size: int
    patch_size: int
    target_mpp: float
    level0_extent: float


def _geometry(coords: Any, region_size: int | None, patch_size: int | None, target_mpp: float | None,
              level0_extent: float | None) -> _Geometry:
    """Accept a :class:`hipt.tiling.RegionCoords`, a coords ``.h5`` path, or a bare ``[M, 2]`` array."""
    if isinstance(coords, (str, Path)):
        coords = load_coords(coords)
    if hasattr(coords, "coords"):
        rc = coords
        return _Geometry(
            np.asarray(rc.coords), int(region_size or rc.region_size), int(patch_size or rc.patch_size),
            float(target_mpp or rc.target_mpp), float(level0_extent or rc.level0_region_size),
        )
    if region_size is None or level0_extent is None:
        raise ValueError("with bare coordinates, give region_size and level0_extent")
    return _Geometry(np.asarray(coords).reshape(-1, 2), int(region_size), int(patch_size or 256),
                     float(target_mpp or 0.5), float(level0_extent))


def slide_heatmaps(
    slide: Any,
    coords: Any,
    *,
    attention: np.ndarray | None = None,
    vit256: nn.Module | None = None,
    vit4k: nn.Module | None = None,
    max_size: int = 2048,
    head4k: int | None = None,
    head256: int | None = None,
    n_views: int = 1,
    regions: Sequence[int] | None = None,
    region_size: int | None = None,
    patch_size: int | None = None,
    target_mpp: float | None = None,
    level0_extent: float | None = None,
    mpp: float | None = None,
    normalization: str | tuple = "hipt",
    progress: bool = False,
) -> SlideHeatmap:
    """Whole-slide heatmaps, rendered region by region into output-resolution canvases.

    Args:
        slide: a path (opened with :func:`hipt.slide.open_slide`) or an open :class:`hipt.slide.Slide`.
        coords: the regions (a :class:`hipt.tiling.RegionCoords`, its ``.h5`` path, or ``[M, 2]`` level-0
            top-left corners with ``region_size``/``level0_extent`` given).
        attention: ``[M]`` the slide model's attention over the regions (:func:`slide_attention`).
        vit256, vit4k: the encoders for the region and patch levels (both, or neither).
        max_size: longer side of the output, px.
        head4k, head256: heads to show (None: mean over heads).
        n_views: shifted views per level (1: none; the reference's smoothing costs 4× at the 4K level).
        regions: indices of the regions to render (default: all).

    Memory: one region at the target resolution (``region_size²·3`` bytes and its shifted views), the
    thumbnail and two output canvases (:class:`~hipt.attention.map_arithmetic.ScoreCanvas`); never the
    level-0 image.
    """
    geo = _geometry(coords, region_size, patch_size, target_mpp, level0_extent)
    own = isinstance(slide, (str, Path))
    sl = open_slide(slide, mpp=mpp) if own else slide
    try:
        W, H = sl.dimensions
        downsample = max(W, H) / float(max_size)
        oh, ow = int(round(H / downsample)), int(round(W / downsample))
        thumb = sl.read_lowres(downsample) if hasattr(sl, "read_lowres") else sl.thumbnail(max_size)
        if thumb.shape[:2] != (oh, ow):
            thumb = resize_area(thumb, (oh, ow))
        boxes = region_boxes(geo.coords, geo.level0_extent, downsample)
        m = len(geo.coords)
        idx = list(range(m)) if regions is None else [int(i) for i in regions]
        if attention is not None and len(attention) != m:
            raise ValueError(f"{len(attention)} attention weights for {m} regions")
        covered = np.zeros((oh, ow), dtype=bool)
        slide_canvas = ScoreCanvas(oh, ow) if attention is not None else None
        level_canvas = ScoreCanvas(oh, ow) if vit256 is not None else None
        a_rank = percentile_rank(attention) / 100.0 if attention is not None else None
        iterator: Iterable[int] = idx
        if progress:
            iterator = tqdm(idx, desc="regions", unit="region")
        for r in iterator:
            x0, y0, x1, y1 = (int(v) for v in boxes[r])
            bh, bw = y1 - y0, x1 - x0
            covered[max(y0, 0):max(y1, 0), max(x0, 0):max(x1, 0)] = True
            if slide_canvas is not None:
                slide_canvas.add(y0, x0, np.full((bh, bw), a_rank[r], np.float32))
            if level_canvas is None:
                continue
            if vit4k is None:
                raise ValueError("the region level needs vit4k as well as vit256")
            region = sl.read_region(tuple(int(v) for v in geo.coords[r]), geo.region_size, geo.target_mpp)
            s = _compute_scale(geo.region_size, max(bh, bw), geo.patch_size // 2, n_views)
            maps = region_heatmaps(
                region, vit256, vit4k, patch_px=geo.patch_size, scale=s, n_views_4k=n_views,
                n_views_256=min(n_views, 2), normalization=normalization,
            )
            del region
            tile = maps.level("4k", head4k) * maps.level("256", head256)
            if a_rank is not None:
                tile = tile * a_rank[r]
            level_canvas.add(y0, x0, upsample_nearest(tile, (bh, bw)))
        cov = covered
        canvas_bytes = max((c.nbytes for c in (slide_canvas, level_canvas) if c is not None), default=0)
        out = SlideHeatmap(thumb, downsample, boxes, cov, regions=idx, canvas_bytes=canvas_bytes)
        if slide_canvas is not None:
            out.slide_map = slide_canvas.result()
        if level_canvas is not None:
            lv = level_canvas.result()
            if cov.any():
                lo, hi = float(lv[cov].min()), float(lv[cov].max())
                lv = np.where(cov, (lv - lo) / (hi - lo) if hi > lo else 0.0, 0.0).astype(np.float32)
            out.three_level = lv
        for c in (slide_canvas, level_canvas):
            if c is not None:
                c.close()
        return out
    finally:
        if own:
            sl.close()


