"""Attention maps and hierarchical heatmaps for patches, regions and whole slides (``hipt heatmap``).

What HIPT looks at, at its three levels:

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

:func:`informative_region_auc` and :func:`nuclei_agreement` validate the maps against the phantom
slides' ground truth (:mod:`hipt.phantom`). The model-free arithmetic lives in :mod:`hipt.heatmaps`.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from hipt.errors import HIPTError, InputFileError
from hipt.heatmaps import (
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
    "add_arguments",
    "run",
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
    from hipt.models import NORMALIZATION

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


def _device_of(model: nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


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
    device = _device_of(vit256)
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
        grid = cls.T.reshape(1, cls.shape[1], gh, gw).to(_device_of(vit4k))
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
        s256: ``[heads256, oh, ow]`` ViT256 maps (overlap-averaged percentile ranks in ``[0, 1]``).
        o256: ``[oh, ow]`` how many shifted views cover each pixel at the 256 level.
        s4k: ``[heads4k, oh, ow]`` ViT4K maps; ``o4k`` their view counts.
        scale: input pixels per output pixel.
    """

    image: np.ndarray
    s256: np.ndarray
    o256: np.ndarray
    s4k: np.ndarray
    o4k: np.ndarray
    scale: float
    rank: bool = True

    @staticmethod
    def _pick(maps: np.ndarray, head: int | None) -> np.ndarray:
        return maps.mean(0) if head is None else maps[head]

    def level(self, level: str, head: int | None = None) -> np.ndarray:
        """One map ``[oh, ow]``: ``level`` ``"256"`` or ``"4k"``; ``head`` None = mean over heads."""
        if level == "256":
            return self._pick(self.s256, head)
        if level == "4k":
            return self._pick(self.s4k, head)
        raise ValueError(f"level must be '256' or '4k', not {level!r}")

    def hierarchical(self, head4k: int | None = None, head256: int | None = None, mode: str = "factorized") -> np.ndarray:
        """Combined map ``[oh, ow]`` of a 4K head and a 256 head (None = mean over that level's heads).

        ``mode="factorized"``: the reference's overlap-weighted mean
        ``(s4k·o4k + s256·o256)/(o4k + o256)``; ``mode="product"``: min-max of ``s4k·s256``.
        """
        a, b = self._pick(self.s4k, head4k), self._pick(self.s256, head256)
        if mode == "factorized":
            return factorized_map(a, self.o4k, b, self.o256)
        if mode == "product":
            return product_map(a, b)
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
    averaged where views overlap (:func:`hipt.heatmaps.overlap_average`).

    ``region`` ``[H, W, 3]`` uint8, H and W multiples of ``patch_px`` (non-square is fine). The ViT256
    [CLS] tokens that feed ViT4K come from the same passes as the ViT256 attention.
    """
    region = np.asarray(region)[..., :3]
    h, w = region.shape[:2]
    offset = patch_px // 2 if offset is None else offset
    out_hw = output_size(h, w, scale)
    if (h % scale) or (w % scale):
        raise ValueError(f"scale {scale} does not divide the region size {h}×{w}")
    views4k, views256, sh4k, sh256 = [], [], [], []
    for k in range(max(n_views_4k, n_views_256, 1)):
        shift = check_shift(k * offset, scale)
        view = region if k == 0 else shifted_view(region, k * offset)
        sc = region_scores(
            view, vit256, vit4k if k < n_views_4k else None, patch_px=patch_px,
            need_patch_attention=k < n_views_256, batch_size=batch_size, normalization=normalization,
        )
        if k < n_views_4k:
            views4k.append(region_level_maps(sc, out_hw, rank))
            sh4k.append(shift)
        if k < n_views_256:
            views256.append(patch_level_maps(sc, out_hw, rank))
            sh256.append(shift)
    s4k, o4k = overlap_average(views4k, sh4k)
    s256, o256 = overlap_average(views256, sh256)
    return HierarchicalMaps(resize_area(region, out_hw), s256, o256, s4k, o4k, float(scale), rank)


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
        out = slide_model(x.to(_device_of(slide_model)), **kwargs)
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
        from hipt.tiling import load_coords

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
    thumbnail and two output canvases (:class:`hipt.heatmaps.ScoreCanvas`); never the level-0 image.
    """
    from hipt.slide import open_slide

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
            from tqdm.auto import tqdm

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


# ==================================================================================================
# validation against phantom ground truth
# ==================================================================================================
def informative_region_auc(attentions: Sequence[np.ndarray], flags: Sequence[np.ndarray]) -> dict[str, float]:
    """How well slide-level attention finds the ground-truth informative regions.

    ``attentions[i]`` ``[M_i]`` one slide's attention over its regions; ``flags[i]`` ``[M_i]`` bool, which
    of them carry the discriminative arrangement. Only slides holding both kinds of region can say
    anything (a slide with no informative region must still put its attention somewhere), so the
    scores use those ("mixed") slides. Returns

    - ``mean_slide_auc``: the mean over mixed slides of the per-slide ROC AUC of attention vs flags;
    - ``pooled_auc``: one ROC AUC over all regions of the mixed slides, each slide's attention first
      percentile-ranked within the slide (softmax weights are not comparable across slide sizes);
    - ``n_slides``, ``n_mixed_slides``, ``n_regions`` (in mixed slides), ``informative_fraction`` (there).

    0.5 = attention ignores the informative regions; 1 = every informative region outranks every other.
    """
    from sklearn.metrics import roc_auc_score

    ranks, labels, per_slide = [], [], []
    n_slides = 0
    for a, f in zip(attentions, flags, strict=True):
        a, f = np.asarray(a, dtype=np.float64).ravel(), np.asarray(f, dtype=bool).ravel()
        if a.shape != f.shape:
            raise ValueError(f"attention over {a.size} regions but {f.size} flags")
        n_slides += 1
        if 0 < f.sum() < f.size:
            per_slide.append(roc_auc_score(f, a))
            ranks.append(percentile_rank(a) / 100.0)
            labels.append(f)
    y = np.concatenate(labels) if labels else np.zeros(0, bool)
    r = np.concatenate(ranks) if ranks else np.zeros(0)
    return {
        "mean_slide_auc": float(np.mean(per_slide)) if per_slide else float("nan"),
        "pooled_auc": float(roc_auc_score(y, r)) if 0 < y.sum() < y.size else float("nan"),
        "n_slides": n_slides,
        "n_mixed_slides": len(per_slide),
        "n_regions": int(y.size),
        "informative_fraction": float(y.mean()) if y.size else float("nan"),
    }


def region_flags(slide_path: str | Path, coords: np.ndarray) -> np.ndarray:
    """Ground-truth informative flags ``[M]`` of the regions at level-0 ``coords`` ``[M, 2]`` of a phantom slide.

    Regions are matched to the truth's region boxes by their top-left corner; a region the truth does
    not list (glass, or a grid that does not match the cohort's) counts as not informative.
    """
    from hipt.phantom import load_truth

    truth = load_truth(slide_path)
    lookup = {(int(x), int(y)): bool(f) for (x, y, _, _), f in zip(truth.regions, truth.informative)}
    return np.array([lookup.get((int(x), int(y)), False) for x, y in np.asarray(coords).reshape(-1, 2)], bool)


@dataclass
class ContextValidation:
    """Result of :func:`validate_context_attention`.

    Attributes:
        metrics: :func:`informative_region_auc` on the held-out slides, plus ``heldout_auc`` (the slide
            model's classification AUC there) and ``n_train``.
        slides: one row per held-out slide: ``slide_id, label, prob, attention, informative``.
        model: the slide model.
    """

    metrics: dict[str, float]
    slides: Any
    model: nn.Module


def validate_context_attention(
    features_dir: str | Path,
    table: Any = None,
    *,
    local_vit: nn.Module | None = None,
    slide_model: nn.Module | None = None,
    epochs: int = 20,
    seed: int = 0,
) -> ContextValidation:
    """Does slide-level attention find the regions that carry the label? (phantom ``context`` cohort)

    ``features_dir``: ``<slide_id>.h5`` files of ``hipt extract`` (``feats256``, ``coords``) and, unless
    ``table`` (a DataFrame with ``slide_id, path, label``) is given, a ``table.csv``. Without a
    ``slide_model``, a :class:`hipt.models.HIPTSlide` over the frozen ``local_vit`` is trained
    (:func:`train_slide_model`) on a seeded, class-stratified half of the slides; attention is always
    evaluated on the other half, against the phantom ground truth (:func:`region_flags`).
    """
    import pandas as pd
    from sklearn.metrics import roc_auc_score

    features_dir = Path(features_dir)
    if table is None:
        tp = features_dir / "table.csv"
        if not tp.is_file():
            raise InputFileError(tp, "cohort table not found", "pass table= or use hipt.zoo.cohort_features")
        table = pd.read_csv(tp)
    table = table.reset_index(drop=True)
    bags, coords = [], []
    for sid in table["slide_id"]:
        feats = _read_features(features_dir / f"{sid}.h5")
        if "feats256" not in feats or "coords" not in feats:
            raise InputFileError(features_dir / f"{sid}.h5", "has no feats256/coords datasets")
        bags.append(feats["feats256"].astype(np.float32))
        coords.append(feats["coords"])
    labels = table["label"].to_numpy().astype(int)
    rng = np.random.default_rng(seed)
    train = np.zeros(len(table), bool)
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        train[idx[: len(idx) // 2]] = True
    if slide_model is None:
        if local_vit is None:
            raise ValueError("give a trained slide_model, or the local_vit (ViT4K) to train one with")
        slide_model = train_slide_model([bags[i] for i in np.flatnonzero(train)], labels[train],
                                        local_vit=local_vit, epochs=epochs, seed=seed)
    rows = []
    for i in np.flatnonzero(~train):
        with torch.inference_mode():
            out = slide_model.eval()(torch.as_tensor(bags[i]))
        rows.append({
            "slide_id": table["slide_id"][i], "label": int(labels[i]),
            "prob": float(out["probs"][0, -1]) if "probs" in out else float("nan"),
            "attention": out["attention"].float().numpy(),
            "informative": region_flags(table["path"][i], coords[i]),
        })
    slides = pd.DataFrame(rows)
    metrics = informative_region_auc(list(slides["attention"]), list(slides["informative"]))
    y = slides["label"].to_numpy()
    metrics["heldout_auc"] = float(roc_auc_score(y, slides["prob"])) if len(set(y)) == 2 else float("nan")
    metrics["n_train"] = int(train.sum())
    return ContextValidation(metrics, slides, slide_model)


def nuclei_agreement(
    vit256: nn.Module,
    images: np.ndarray,
    masks: np.ndarray,
    *,
    token_fraction: float = 0.5,
    batch_size: int = 64,
    normalization: str | tuple = "hipt",
):
    """Per-head agreement of ViT256 [CLS] attention with ground-truth nuclei masks.

    ``images`` ``[N, h, w, 3]`` uint8 patches (mixed tissue types, background included), ``masks``
    ``[N, h, w]`` bool nuclei. Each head's attention (× the number of tokens, so 1 = uniform, comparable
    across patches) is upsampled to pixels. Returns a pandas DataFrame, one row per head, sorted best
    first, with

    - ``pixel_auc``: ROC AUC of attention against the nuclei mask over all pixels of all patches;
    - ``token_auc``: the same per token, a token being "nucleus" when ≥ ``token_fraction`` of its pixels are;
    - ``iou``: IoU of the top-attention pixels with the mask, the threshold chosen so the predicted area
      equals the true nuclei area (pooled over patches); ``iou_chance`` what a random map scores.
    """
    import pandas as pd
    from sklearn.metrics import roc_auc_score

    images = np.asarray(images)
    masks = np.asarray(masks, dtype=bool)
    _, attn = encode_patches(vit256, images, need_cls=False, batch_size=batch_size, normalization=normalization)
    assert attn is not None
    n, heads, th, tw = attn.shape
    h, w = masks.shape[1:]
    rel = attn * (th * tw)  # [N, heads, th, tw]
    # token labels: fraction of nucleus pixels per token
    frac = masks.reshape(n, th, h // th, tw, w // tw).mean(axis=(2, 4))
    tok_y = (frac >= token_fraction).ravel()
    pix_y = masks.ravel()
    area = pix_y.mean()
    rows = []
    for j in range(heads):
        pix = upsample_nearest(rel[:, j], (h, w)).ravel()
        thr = np.quantile(pix, 1.0 - area) if area > 0 else np.inf
        pred = pix > thr
        inter = np.logical_and(pred, pix_y).sum()
        union = np.logical_or(pred, pix_y).sum()
        rows.append({
            "head": j,
            "pixel_auc": float(roc_auc_score(pix_y, pix)) if 0 < pix_y.sum() < pix_y.size else float("nan"),
            "token_auc": float(roc_auc_score(tok_y, rel[:, j].ravel())) if 0 < tok_y.sum() < tok_y.size else float("nan"),
            "iou": float(inter / union) if union else float("nan"),
            "iou_chance": float(area / (2 - area)) if area < 1 else 1.0,
        })
    return pd.DataFrame(rows).sort_values("pixel_auc", ascending=False).reset_index(drop=True)


def validate_nuclei(
    vit256: nn.Module,
    *,
    n_per_tissue: int = 6,
    tissues: Sequence[str] = ("tumour", "stroma", "lymphocytes", "adipose", "background"),
    size: int = 256,
    seed: int = 0,
    normalization: str | tuple = "hipt",
):
    """:func:`nuclei_agreement` on fresh phantom patches (``n_per_tissue`` of each type, with their masks).

    Returns ``(table, images [N, size, size, 3], masks [N, size, size], tissue names [N])``.
    """
    from hipt.phantom import render_patch

    imgs, masks, names = [], [], []
    for t in tissues:
        for k in range(n_per_tissue):
            rgb, m = render_patch(t, size=size, seed=seed * 1000 + k)
            imgs.append(rgb)
            masks.append(m)
            names.append(t)
    images, masks_a = np.stack(imgs), np.stack(masks)
    table = nuclei_agreement(vit256, images, masks_a, normalization=normalization)
    return table, images, masks_a, names


# ==================================================================================================
# a slide model for the validation (until a trained one is handed in)
# ==================================================================================================
def train_slide_model(
    bags: Sequence[torch.Tensor | np.ndarray],
    labels: Sequence[int],
    *,
    local_vit: nn.Module,
    n_classes: int | None = None,
    epochs: int = 20,
    lr: float = 2e-4,
    weight_decay: float = 1e-5,
    dropout: float = 0.25,
    seed: int = 0,
    standardize: bool = True,
) -> nn.Module:
    """Train a small :class:`hipt.models.HIPTSlide` (frozen ``local_vit``) on bags of patch tokens.

    ``bags[i]`` ``[M_i, n, D]`` (``feats256`` of ``hipt extract``), ``labels[i]`` its class. The frozen
    ViT4K turns every bag into region tokens ``[M_i, D4k]`` once; the global part is then trained with
    the reference's recipe (Adam, lr 2e-4, weight decay 1e-5, one slide per step, cross-entropy), for
    ``epochs`` epochs in a seeded random order; with ``standardize`` (default) the region tokens are
    z-scored with the training regions' statistics first, as ``hipt finetune`` does
    (:meth:`~hipt.models.HIPTSlide.standardize_regions`). Returns the model in eval mode. The full training loop
    (accumulation, weighted sampling, folds) is :mod:`hipt.tasks.train`; this is the minimum the
    attention validation needs.
    """
    from hipt.models import HIPTSlide

    torch.manual_seed(seed)
    n_classes = int(max(labels)) + 1 if n_classes is None else n_classes
    model = HIPTSlide(n_classes=n_classes, local_vit=local_vit, local="frozen", dropout=dropout)
    with torch.no_grad():
        tokens = [model.encode_regions(torch.as_tensor(np.asarray(b, dtype=np.float32))) for b in bags]
    if standardize:
        model.standardize_regions(torch.cat(tokens))
    y = torch.as_tensor(np.asarray(labels, dtype=np.int64))
    opt = torch.optim.Adam(model.global_parameters(), lr=lr, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # steps of a few µs-sized ops: thread synchronisation would dominate
    try:
        for _ in range(epochs):
            for i in torch.randperm(len(tokens), generator=gen).tolist():
                loss = nn.functional.cross_entropy(model(tokens[i])["logits"], y[i : i + 1])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval()


def save_slide_model(model: nn.Module, path: str | Path) -> Path:
    """Save a :class:`hipt.models.HIPTSlide` so :func:`load_slide_model` rebuilds it (atomic write)."""
    from hipt.io import atomic_path

    cfg = {
        "n_classes": int(model.n_classes), "task": str(model.task), "local": str(model.local),
        "local_vit": dict(model.local_vit.config),
    }
    with atomic_path(path) as tmp:
        torch.save({"hipt_slide": cfg, "state_dict": model.state_dict()}, tmp)
    return Path(path)


def load_slide_model(path: str | Path) -> nn.Module:
    """Load a slide model checkpoint into a :class:`hipt.models.HIPTSlide` (eval mode), safely.

    Accepts what :func:`save_slide_model` writes (``{'hipt_slide': config, 'state_dict': ...}``) and a
    bare HIPT-LGP state dict as the reference saves it (``s_{fold}_checkpoint.pt``; ``local_vit.module.*``
    accepted), whose sizes are read from the tensor shapes (ViT4K heads assumed 32-d, as ViT-XS).
    Loaded with ``torch.load(weights_only=True)``.
    """
    from hipt.errors import CheckpointError
    from hipt.models import HIPTSlide, ViT4K

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(path, "slide model checkpoint not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 (unpickling errors come in many types)
        raise CheckpointError(path, f"cannot be read as a PyTorch checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(ckpt, dict):
        raise CheckpointError(path, f"holds a {type(ckpt).__name__}, not a state dict")
    sd = ckpt.get("state_dict", ckpt.get("model", ckpt))
    sd = {k.replace("local_vit.module.", "local_vit."): v for k, v in sd.items()}
    cfg = dict(ckpt.get("hipt_slide") or {})
    try:
        vit_cfg = dict(cfg.pop("local_vit", {}) or {})
        if not vit_cfg:
            dim = sd["local_vit.cls_token"].shape[-1]
            vit_cfg = {
                "input_embed_dim": sd["local_vit.phi.0.weight"].shape[1], "embed_dim": dim,
                "depth": 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("local_vit.blocks.")),
                "num_heads": max(1, dim // 32),
                "mlp_ratio": sd["local_vit.blocks.0.mlp.fc1.weight"].shape[0] / dim,
            }
        vit_cfg.pop("arch", None)
        n_classes = cfg.pop("n_classes", None) or sd["classifier.weight"].shape[0]
    except KeyError as e:
        raise CheckpointError(path, f"not a HIPT slide model (no {e.args[0]})") from None
    model = HIPTSlide(n_classes=int(n_classes), local_vit=ViT4K(**vit_cfg), task=cfg.get("task", "classification"),
                      local=cfg.get("local", "frozen"))
    if "region_norm.mean" in sd:  # saved after standardize_regions(): its statistics are in the state dict
        from hipt.models import FeatureStandardizer

        model.region_norm = FeatureStandardizer(model.embed_dim)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise CheckpointError(path, f"does not match HIPTSlide: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return model.eval()


# ==================================================================================================
# figures
# ==================================================================================================
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
    import matplotlib.pyplot as plt

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


@dataclass
class AttentionExplorer:
    """Browse a slide's maps: pick a region, a level, a head and the blending.

    ``slide``: the whole-slide maps (:func:`slide_heatmaps`); ``regions``: ``{region index:
    HierarchicalMaps}`` for the regions one may pick. :meth:`figure` draws one view (the thumbnail
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
            h4 = None if head is None else min(head, len(hm.s4k) - 1)
            h2 = None if head is None else min(head, len(hm.s256) - 1)
            return hm.image, hm.display(hm.hierarchical(h4, h2)), f"region {region}: factorized 4k × 256, {hname}"
        maps = hm.s256 if level == "256" else hm.s4k
        if head is not None:
            head = min(head, len(maps) - 1)
        score = maps.mean(0) if head is None else maps[head]
        return hm.image, hm.display(score), f"region {region}: ViT{'256-16' if level == '256' else '4096-256'}, {hname}"

    def figure(self, region: int, level: str = "hierarchical", head: int | None = None, alpha: float = 0.5):
        """A two-panel matplotlib figure of one view."""
        import matplotlib.pyplot as plt
        from matplotlib.patches import Rectangle

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
        import ipywidgets as w
        import matplotlib.pyplot as plt

        n_heads = max(max(len(h.s256), len(h.s4k)) for h in self.regions.values())
        region = w.Dropdown(options=sorted(self.regions), description="region")
        level = w.ToggleButtons(options=list(self.levels), value="hierarchical", description="level")
        head = w.IntSlider(value=-1, min=-1, max=n_heads - 1, description="head (-1: mean)")
        alpha = w.FloatSlider(value=0.5, min=0.0, max=1.0, step=0.05, description="alpha")

        def show(region, level, head, alpha):
            self.figure(region, level, head, alpha)
            plt.show()

        out = w.interactive_output(show, {"region": region, "level": level, "head": head, "alpha": alpha})
        return w.VBox([w.HBox([region, head, alpha]), level, out])


# ==================================================================================================
# CLI: hipt heatmap
# ==================================================================================================
def _parse_regions(s: str | None) -> list[int] | None:
    if s is None or s.strip().lower() in ("", "all"):
        return None
    out: list[int] = []
    for part in s.split(","):
        if "-" in part:
            a, b = part.split("-", 1)
            out.extend(range(int(a), int(b) + 1))
        else:
            out.append(int(part))
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = (
        "Writes, for each chosen region R: <slide>_r<R>_region.png, <slide>_r<R>_256[i].png and "
        "<slide>_r<R>_4k[j].png (per-head maps, percentile-ranked and smoothed over shifted views), "
        "<slide>_r<R>_factorized_4k[j]_256[i].png (hierarchical, every head pair); with --slide-model also "
        "<slide>_slide_attention.png and <slide>_three_level.png over the whole slide. Exit code 0 on "
        "success, 1 on a bad input (the message names the file), 2 on a usage error. Tuning: --scale 4 "
        "renders a 4096-px region at 1024 px; --views-4k 1 --views-256 1 skips the shifted-view smoothing "
        "(4-6x faster, blockier maps)."
    )
    parser.add_argument("--slide", required=True, type=Path, help="the whole-slide image")
    parser.add_argument("--coords", required=True, type=Path, help="its coords .h5 from 'hipt patch'")
    parser.add_argument("--features", type=Path, default=None,
                        help="its features .h5 from 'hipt extract' (feats256 or feats4k: the slide model's input)")
    parser.add_argument("--slide-model", type=Path, default=None,
                        help="a trained HIPTSlide checkpoint (for the whole-slide maps; needs --features)")
    parser.add_argument("--vit256", default=None, help="ViT256 checkpoint: path, URL or registry name "
                        "(e.g. vit256_small_dino)")
    parser.add_argument("--vit4k", default=None, help="ViT4K checkpoint (default: the slide model's local ViT4K)")
    parser.add_argument("--out", required=True, type=Path, help="output folder for the PNGs")
    parser.add_argument("--scale", type=int, default=4, help="input px per output px for region maps")
    parser.add_argument("--regions", default="0", help="region indices, e.g. '0,3' or '0-5' or 'all'")
    parser.add_argument("--alpha", type=float, default=0.5, help="opacity of the colour overlay")
    parser.add_argument("--cmap", default="light_jet", help="'light_jet' (the reference's), 'coolwarm', or any "
                        "matplotlib colormap")
    parser.add_argument("--threshold", type=float, default=None,
                        help="colour only pixels whose score exceeds this (0-1); others show the image")
    parser.add_argument("--mode", choices=["factorized", "product"], default="factorized",
                        help="how the hierarchical maps combine the levels")
    parser.add_argument("--views-4k", type=int, default=4, help="shifted views averaged at the 4K level")
    parser.add_argument("--views-256", type=int, default=2, help="shifted views averaged at the 256 level")
    parser.add_argument("--max-size", type=int, default=2048, help="longer side of whole-slide maps, px")
    parser.add_argument("--mpp", type=float, default=None, help="override the slide's µm/px")
    parser.add_argument("--normalization", default="hipt", choices=["hipt", "imagenet"],
                        help="pixel normalization the ViT256 expects")
    parser.add_argument("--device", default="cpu", help="torch device")


def _save_png(array: np.ndarray, dest: Path) -> Path:
    from PIL import Image

    from hipt.io import atomic_path

    with atomic_path(dest) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")
    return dest


def _read_features(path: Path) -> dict[str, np.ndarray]:
    """``feats256`` (and ``feats4k``, ``coords``) of a ``hipt extract`` file as float32/int64 numpy arrays."""
    from hipt.features import load_features

    return {k: np.asarray(v) for k, v in load_features(path).items() if k != "attrs"}


def _load_encoder(weights: str, device: str) -> nn.Module:
    from hipt.models import load_model

    return load_model(weights).to(device).eval()


def run(args: argparse.Namespace) -> int:
    """``hipt heatmap``: region-level PNGs (encoders) and whole-slide PNGs (slide model)."""
    from hipt.slide import open_slide
    from hipt.tiling import load_coords

    if not args.coords.is_file():
        raise InputFileError(args.coords, "coords file not found", "run 'hipt patch' first")
    rc = load_coords(args.coords)
    feats = _read_features(args.features) if args.features is not None else {}
    if "coords" in feats and not np.array_equal(np.asarray(feats["coords"]), np.asarray(rc.coords)):
        raise InputFileError(args.features, f"its coords do not match {args.coords} (different regions)")
    slide_model = load_slide_model(args.slide_model).to(args.device) if args.slide_model else None
    if slide_model is not None and "feats256" not in feats and "feats4k" not in feats:
        raise HIPTError("--slide-model needs --features (the slide model's input)")
    vit256 = _load_encoder(args.vit256, args.device) if args.vit256 else None
    if args.vit4k:
        vit4k = _load_encoder(args.vit4k, args.device)
    else:
        vit4k = getattr(slide_model, "local_vit", None)
    regions = _parse_regions(args.regions)
    idx = list(range(len(rc))) if regions is None else regions
    bad = [i for i in idx if not 0 <= i < len(rc)]
    if bad:
        raise InputFileError(args.coords, f"has {len(rc)} regions; no region {bad[0]}")
    if vit256 is None and slide_model is None:
        raise HIPTError("nothing to draw: give --vit256 (and --vit4k) for region maps and/or --slide-model")
    if vit256 is not None and vit4k is None:
        raise HIPTError("region maps need --vit4k too (or a --slide-model whose ViT4K to use)")
    args.out.mkdir(parents=True, exist_ok=True)
    name = Path(args.slide).stem
    written: list[Path] = []
    with open_slide(args.slide, mpp=args.mpp) as sl:
        if vit256 is not None:
            for r in idx:
                region = sl.read_region(tuple(int(v) for v in rc.coords[r]), rc.region_size, rc.target_mpp)
                maps = region_heatmaps(
                    region, vit256, vit4k, patch_px=rc.patch_size, scale=args.scale, n_views_4k=args.views_4k,
                    n_views_256=args.views_256, normalization=args.normalization,
                )
                stem = args.out / f"{name}_r{r}"
                written.append(_save_png(maps.image, Path(f"{stem}_region.png")))
                kw = dict(cmap=args.cmap, alpha=args.alpha, threshold=args.threshold)
                for i in range(len(maps.s256)):
                    written.append(_save_png(blend(maps.image, maps.s256[i], **kw), Path(f"{stem}_256[{i}].png")))
                for j in range(len(maps.s4k)):
                    written.append(_save_png(blend(maps.image, maps.s4k[j], **kw), Path(f"{stem}_4k[{j}].png")))
                    for i in range(len(maps.s256)):
                        hm = maps.hierarchical(j, i, mode=args.mode)
                        written.append(_save_png(blend(maps.image, hm, **kw), Path(f"{stem}_{args.mode}_4k[{j}]_256[{i}].png")))
        if slide_model is not None:
            x = feats["feats256"] if "feats256" in feats else feats["feats4k"]
            att = slide_attention(slide_model, x)
            shm = slide_heatmaps(
                sl, rc, attention=att, vit256=vit256, vit4k=vit4k if vit256 is not None else None,
                max_size=args.max_size, n_views=1, normalization=args.normalization,
                progress=True,
            )
            kw = dict(cmap=args.cmap, alpha=args.alpha, threshold=args.threshold)
            written.append(_save_png(shm.overlay(shm.slide_map, **kw), args.out / f"{name}_slide_attention.png"))
            if shm.three_level is not None:
                written.append(_save_png(shm.overlay(shm.three_level, **kw), args.out / f"{name}_three_level.png"))
    print(f"wrote {len(written)} PNGs to {args.out}")
    return 0
