"""Multi-crop augmentations for both DINO stages.

Stage 1 (:class:`PatchMultiCrop`): image patches → 2 global + 8 local views, the colour and blur
augmentations of DINO (torchvision transforms v2).  Stage 2 (:class:`GridMultiCrop`): a grid of
ViT256 [CLS] features ``[D, H, W]`` → 2 global + 8 local crops of the grid, with horizontal flips.

Both are deterministic given a ``seed`` argument, independent of the process's global random state,
of the DataLoader worker that runs them and of the number of workers: the trainer passes one seed per
sample (derived from the run seed and the sample's position in the data stream), which is what makes
a resumed run bit-identical to an uninterrupted one.

Crop sizes scale with the input
-------------------------------
The paper's stage-1 crops keep roughly the native resolution: 224-px global crops cover 40–100 % of
a 256-px patch (side 162–256 px, so a zoom of 0.9–1.4×), 96-px local crops cover 5–40 % (side 57–162
px, zoom 0.6–1.7×).  The CPU preset keeps these ratios on 128-px patches (global 96, local 48), so a
16-px token still sees about one nucleus, as in the paper and as at inference on 256-px patches.

At stage 2 the paper crops 14×14 (global, 77 % of the area) and 6×6 (local, 14 %) tokens out of the
16×16 grid of a 4096-px region.  The CPU book uses 2048-px regions, i.e. 8×8 grids; the same ratios
give 7×7 (77 %) and 3×3 (14 %) crops (:func:`grid_crop_sizes`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torchvision.transforms import InterpolationMode, v2

def normalization_stats(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``(mean, std)`` of a named normalization (:data:`hipt.models.NORMALIZATION`): ``"imagenet"``
    (what the reference's stage-1 DINO training used) or ``"hipt"`` (mean = std = 0.5: what its
    inference code, and so every user of the released checkpoints, uses)."""
    from hipt.models import NORMALIZATION

    if name not in NORMALIZATION:
        raise ValueError(f"unknown normalization {name!r}; choose one of {sorted(NORMALIZATION)}")
    mean, std = NORMALIZATION[name]
    return tuple(mean), tuple(std)


def to_chw_uint8(img) -> torch.Tensor:
    """A patch as a ``[3, H, W]`` uint8 tensor, from ``[H, W, 3]`` numpy, a PIL image or a tensor."""
    if isinstance(img, torch.Tensor):
        t = img
        if t.ndim == 3 and t.shape[0] != 3 and t.shape[-1] == 3:
            t = t.permute(2, 0, 1)
    elif isinstance(img, np.ndarray):
        a = np.ascontiguousarray(img[..., :3])
        t = torch.from_numpy(a if a.flags.writeable else a.copy()).permute(2, 0, 1)
    else:  # PIL
        t = v2.functional.pil_to_tensor(img.convert("RGB"))
    if t.dtype != torch.uint8:
        raise TypeError(f"expected uint8 pixels, got {t.dtype}")
    return t.contiguous()


def _blur(p: float, kernel_size: int) -> v2.Transform:
    return v2.RandomApply([v2.GaussianBlur(kernel_size, sigma=(0.1, 2.0))], p=p)


class PatchMultiCrop:
    """DINO multi-crop for image patches (stage 1).

    Returns ``2 + n_local`` float tensors: two ``[3, global_size, global_size]`` then ``n_local``
    ``[3, local_size, local_size]``, normalized.

    Per view: RandomResizedCrop (bicubic, antialiased) → horizontal flip (p 0.5) → colour jitter
    (brightness 0.4, contrast 0.4, saturation 0.2, hue 0.1; p 0.8) → grayscale (p 0.2) → Gaussian
    blur σ∈[0.1, 2] (p 1.0 on global view 1, 0.1 on global view 2, 0.5 on local views) → solarization
    (threshold 128, p 0.2, global view 2 only) → normalize.
    """

    def __init__(
        self,
        global_size: int = 224,
        local_size: int = 96,
        n_local: int = 8,
        global_scale: tuple[float, float] = (0.4, 1.0),
        local_scale: tuple[float, float] = (0.05, 0.4),
        normalization: str = "imagenet",
        blur_kernel: int = 13,
    ):
        self.global_size, self.local_size, self.n_local = global_size, local_size, n_local
        mean, std = normalization_stats(normalization)
        normalize = v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)])
        flip_and_color_jitter = v2.Compose(
            [
                v2.RandomHorizontalFlip(p=0.5),
                v2.RandomApply([v2.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1)], p=0.8),
                v2.RandomGrayscale(p=0.2),
            ]
        )

        def rrc(size: int, scale: tuple[float, float]) -> v2.Transform:
            return v2.RandomResizedCrop(size, scale=scale, interpolation=InterpolationMode.BICUBIC, antialias=True)

        self.global1 = v2.Compose([rrc(global_size, global_scale), flip_and_color_jitter, _blur(1.0, blur_kernel), normalize])
        self.global2 = v2.Compose(
            [rrc(global_size, global_scale), flip_and_color_jitter, _blur(0.1, blur_kernel), v2.RandomSolarize(128, p=0.2), normalize]
        )
        self.local = v2.Compose([rrc(local_size, local_scale), flip_and_color_jitter, _blur(0.5, blur_kernel), normalize])

    @property
    def ncrops(self) -> int:
        return 2 + self.n_local

    def __call__(self, img, seed: int | None = None) -> list[torch.Tensor]:
        x = to_chw_uint8(img)
        with _seeded(seed):
            crops = [self.global1(x), self.global2(x)]
            crops += [self.local(x) for _ in range(self.n_local)]
        return crops


def grid_crop_sizes(grid: int) -> tuple[int, int]:
    """(global, local) crop sizes for a ``grid × grid`` feature map keeping the paper's area ratios
    (14×14 and 6×6 out of 16×16): 16 → (14, 6), 8 → (7, 3), 4 → (3, 2)."""
    g = max(1, round(grid * 14 / 16))
    loc = max(1, round(grid * 6 / 16))
    return g, loc


class GridMultiCrop:
    """DINO multi-crop for feature grids (stage 2), as the reference's ``DataAugmentationDINO4K``.

    Input ``[D, H, W]`` (the ViT256 [CLS] tokens of one region, row-major grid); output two
    ``[D, global_size, global_size]`` random crops then ``n_local`` ``[D, local_size, local_size]`` ones,
    each flipped horizontally with p 0.5.  No colour or blur augmentation exists for features.

    ``dropout`` (default 0, as in the reference code) zeroes each feature value of each crop with this
    probability and rescales the others by ``1/(1-p)``: the paper mentions p = 0.1 as an option; the
    reference code never applies it, and we keep it off by default to match the released weights'
    training.
    """

    def __init__(self, global_size: int = 14, local_size: int = 6, n_local: int = 8, dropout: float = 0.0):
        self.global_size, self.local_size, self.n_local, self.dropout = global_size, local_size, n_local, dropout

    @property
    def ncrops(self) -> int:
        return 2 + self.n_local

    def _crop(self, x: torch.Tensor, size: int) -> torch.Tensor:
        _, h, w = x.shape
        if size > h or size > w:
            raise ValueError(f"crop {size}×{size} larger than the {h}×{w} grid")
        top = int(torch.randint(0, h - size + 1, (1,)))
        left = int(torch.randint(0, w - size + 1, (1,)))
        out = x[:, top : top + size, left : left + size]
        if torch.rand(1).item() < 0.5:
            out = out.flip(-1)
        if self.dropout > 0:
            keep = (torch.rand(out.shape) >= self.dropout).to(out.dtype)
            out = out * keep / (1 - self.dropout)
        return out.contiguous()

    def __call__(self, grid: torch.Tensor, seed: int | None = None) -> list[torch.Tensor]:
        x = torch.as_tensor(grid).float()
        with _seeded(seed):
            crops = [self._crop(x, self.global_size) for _ in range(2)]
            crops += [self._crop(x, self.local_size) for _ in range(self.n_local)]
        return crops


def tokens_to_grid(tokens: torch.Tensor | np.ndarray, grid_hw: Sequence[int] | None = None) -> torch.Tensor:
    """``[n, D]`` row-major patch tokens of one region → ``[D, H, W]`` (square unless ``grid_hw``)."""
    t = torch.as_tensor(tokens).float()
    n, d = t.shape
    if grid_hw is None:
        side = math.isqrt(n)
        if side * side != n:
            raise ValueError(f"{n} tokens do not form a square grid; pass grid_hw")
        grid_hw = (side, side)
    h, w = grid_hw
    return t.reshape(h, w, d).permute(2, 0, 1).contiguous()


class _seeded:
    """Context manager: run a block with the global CPU torch RNG seeded, restoring its state after
    (CUDA generators are not touched: the augmentations run on CPU tensors)."""

    def __init__(self, seed: int | None):
        self.seed = seed

    def __enter__(self):
        if self.seed is not None:
            self._state = torch.random.get_rng_state()
            torch.random.default_generator.manual_seed(self.seed)

    def __exit__(self, *exc):
        if self.seed is not None:
            torch.random.set_rng_state(self._state)
        return False


def eval_patch_transform(normalization: str = "imagenet", size: int | None = None) -> v2.Transform:
    """uint8 ``[3, H, W]`` → normalized float (optionally resized to ``size``, bicubic): the transform
    for extracting features of whole patches (KNN evaluation)."""
    mean, std = normalization_stats(normalization)
    steps: list[v2.Transform] = []
    if size is not None:
        steps.append(v2.Resize(size, interpolation=InterpolationMode.BICUBIC, antialias=True))
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]
    return v2.Compose(steps)
