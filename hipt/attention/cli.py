"""``hipt heatmap``: PNG heatmaps of chosen regions (both ViTs) and of whole slides (a slide model).

Region maps need ViT256 and ViT4K checkpoints (``--vit256``, ``--vit4k``, or the ViT4K of
``--slide-model``); whole-slide maps need a slide model and the slide's ``hipt extract`` features.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image
from torch import nn

from hipt.attention.map_arithmetic import blend
from hipt.attention.maps import region_heatmaps, slide_attention, slide_heatmaps
from hipt.attention.slide_model import _read_features, load_slide_model
from hipt.errors import HIPTError, InputFileError
from hipt.io import atomic_path
from hipt.models import load_model
from hipt.slide import open_slide
from hipt.tiling import load_coords

__all__ = ["add_arguments", "run"]


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
    with atomic_path(dest) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")
    return dest


def _load_encoder(weights: str, device: str) -> nn.Module:
    return load_model(weights).to(device).eval()


def run(args: argparse.Namespace) -> int:
    """``hipt heatmap``: region-level PNGs (encoders) and whole-slide PNGs (slide model)."""
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
                for i, patch_map in enumerate(maps.patch_maps):
                    written.append(_save_png(blend(maps.image, patch_map, **kw), Path(f"{stem}_256[{i}].png")))
                for j, region_map in enumerate(maps.region_maps):
                    written.append(_save_png(blend(maps.image, region_map, **kw), Path(f"{stem}_4k[{j}].png")))
                    for i in range(len(maps.patch_maps)):
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
