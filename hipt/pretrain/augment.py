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
16×16 grid of a 4096-px region.  The CPU book uses 1024-px regions of 128-px patches, i.e. 8×8 grids; the same ratios
give 7×7 (77 %) and 3×3 (14 %) crops (:func:`grid_crop_sizes`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torchvision.transforms import InterpolationMode, v2

from hipt.models import NORMALIZATION

def normalization_stats(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``(mean, std)`` of a named normalization (:data:`hipt.models.NORMALIZATION`): ``"imagenet"``
    (what the reference's stage-1 DINO training used) or ``"hipt"`` (mean = std = 0.5: what its
    inference code, and so every user of the released checkpoints, uses)."""
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


#: Columns of the per-view photometric parameters (:meth:`PatchMultiCrop.geometric`).
PHOTOMETRIC_PARAMS = ("jitter", "brightness", "contrast", "saturation", "hue", "order0", "order1", "order2",
                      "order3", "gray", "blur", "sigma", "solarize")
_P = {name: i for i, name in enumerate(PHOTOMETRIC_PARAMS)}


def _luma(x: torch.Tensor) -> torch.Tensor:
    """``[B, 3, H, W]`` RGB in [0, 1] → ``[B, 1, H, W]`` grey (ITU-R 601 weights, as torchvision)."""
    return (0.2989 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)


def _shift_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the hue of ``[B, 3, H, W]`` RGB in [0, 1] by ``shift`` ``[B]`` turns (RGB → HSV → RGB)."""
    r, g, b = x.unbind(1)
    maxc, _ = x.max(1)
    minc, _ = x.min(1)
    v = maxc
    delta = maxc - minc
    s = delta / torch.where(maxc > 0, maxc, torch.ones_like(maxc))
    d = torch.where(delta > 0, delta, torch.ones_like(delta))
    rc, gc, bc = (maxc - r) / d, (maxc - g) / d, (maxc - b) / d
    h = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = torch.where(delta > 0, h / 6.0, torch.zeros_like(h))
    h = torch.remainder(h + shift.view(-1, 1, 1), 1.0)
    i = torch.floor(h * 6.0)
    f = h * 6.0 - i
    i = i.long() % 6
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    # sector i → (r, g, b) from (v, t, p, q)
    table = torch.stack([torch.stack(c, 1) for c in ((v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q))], 0)
    return table.gather(0, i.unsqueeze(0).unsqueeze(2).expand(1, -1, 3, -1, -1)).squeeze(0)


def _colour_op(x: torch.Tensor, op: int, params: torch.Tensor) -> torch.Tensor:
    col = lambda name: params[:, _P[name]].view(-1, 1, 1, 1)  # noqa: E731
    if op == 0:
        out = x * col("brightness")
    elif op == 1:
        f = col("contrast")
        out = f * x + (1 - f) * _luma(x).mean(dim=(1, 2, 3), keepdim=True)
    elif op == 2:
        f = col("saturation")
        out = f * x + (1 - f) * _luma(x)
    else:
        return _shift_hue(x, params[:, _P["hue"]])
    return out.clamp(0, 1)


def _gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Separable Gaussian blur of ``[B, C, H, W]`` with one ``sigma`` per image (reflect padding, as
    torchvision's ``gaussian_blur``); ``sigma`` ≤ 0 leaves an image unchanged."""
    b, c, h, w = x.shape
    half = (kernel_size - 1) / 2
    t = torch.linspace(-half, half, kernel_size, device=x.device, dtype=x.dtype)
    s = sigma.to(x.dtype).clamp_min(1e-6).view(-1, 1)
    k = torch.exp(-0.5 * (t / s) ** 2)
    k = k / k.sum(1, keepdim=True)
    identity = torch.zeros_like(k)
    identity[:, kernel_size // 2] = 1
    k = torch.where((sigma > 0).view(-1, 1), k, identity).repeat_interleave(c, 0)  # [B·C, K]
    pad = kernel_size // 2
    y = torch.nn.functional.pad(x.reshape(1, b * c, h, w), (pad, pad, pad, pad), mode="reflect")
    y = torch.nn.functional.conv2d(y, k.view(b * c, 1, 1, kernel_size), groups=b * c)
    y = torch.nn.functional.conv2d(y, k.view(b * c, 1, kernel_size, 1), groups=b * c)
    return y.view(b, c, h, w)


class PatchMultiCrop:
    """DINO multi-crop for image patches (stage 1).

    Returns ``2 + n_local`` float tensors: two ``[3, global_size, global_size]`` then ``n_local``
    ``[3, local_size, local_size]``, normalized.

    Per view: RandomResizedCrop (bicubic, antialiased) → horizontal flip (p 0.5) → colour jitter
    (brightness 0.4, contrast 0.4, saturation 0.2, hue 0.1, in a random order; p 0.8) → grayscale (p 0.2)
    → Gaussian blur σ∈[0.1, 2], kernel 13 (p 1.0 on global view 1, 0.1 on global view 2, 0.5 on local
    views) → solarization (threshold 128, p 0.2, global view 2 only) → normalize.

    The work is split in two, so that the expensive half runs on whole batches:

    - :meth:`geometric` (per patch, cheap): the crops and flips, as uint8, plus every random
      parameter of the colour half drawn from the patch's seed (``[ncrops, 13]``,
      :data:`PHOTOMETRIC_PARAMS`);
    - :meth:`photometric` (per batch, on any device): colour jitter, grayscale, blur, solarization and
      normalization of ``[B, 3, h, w]`` views with those parameters.

    ``aug(patch, seed)`` runs both on one patch.  With ``defer_photometric=True`` it returns the uint8
    views and the parameters instead (``ncrops + 1`` tensors), and the trainer applies
    :meth:`photometric` to the collated batch, on the training device.  The views are the same; on
    2 CPU cores the augmentation of a ``cpu`` batch takes 2.6× less time than per-image
    torchvision transforms (which cost more than the tiny ViT's training step), and at the paper's
    sizes the per-patch half left to the data loaders is 6× cheaper (``benchmarks/bench_augment.py``).
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
        defer_photometric: bool = False,
    ):
        self.global_size, self.local_size, self.n_local = global_size, local_size, n_local
        self.mean, self.std = normalization_stats(normalization)
        self.blur_kernel, self.defer_photometric = blur_kernel, defer_photometric

        def rrc(size: int, scale: tuple[float, float]) -> v2.Transform:
            return v2.Compose([v2.RandomResizedCrop(size, scale=scale, interpolation=InterpolationMode.BICUBIC,
                                                    antialias=True), v2.RandomHorizontalFlip(p=0.5)])

        self.global_crop, self.local_crop = rrc(global_size, global_scale), rrc(local_size, local_scale)
        # per view: (p blur, p solarize)
        self.view_probs = [(1.0, 0.0), (0.1, 0.2)] + [(0.5, 0.0)] * n_local

    @property
    def ncrops(self) -> int:
        return 2 + self.n_local

    @staticmethod
    def draw_params(p_blur: float, p_solarize: float) -> torch.Tensor:
        """The colour parameters of one view (``[13]``, columns :data:`PHOTOMETRIC_PARAMS`), from the
        global torch RNG (:meth:`geometric` seeds it per patch).  Override to change the augmentation,
        e.g. zero the ``jitter`` and ``gray`` columns to train without colour augmentation."""
        u = torch.rand(6)
        return torch.cat([
            (u[0:1] < 0.8).float(),  # jitter applied
            torch.empty(1).uniform_(0.6, 1.4), torch.empty(1).uniform_(0.6, 1.4),  # brightness, contrast
            torch.empty(1).uniform_(0.8, 1.2), torch.empty(1).uniform_(-0.1, 0.1),  # saturation, hue
            torch.randperm(4).float(),  # order of the four colour operations
            (u[1:2] < 0.2).float(), (u[2:3] < p_blur).float(), torch.empty(1).uniform_(0.1, 2.0),
            (u[3:4] < p_solarize).float(),
        ])

    def geometric(self, img, seed: int | None = None) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Crops and flips of one patch (uint8 ``[3, h, w]`` views) and the views' colour parameters
        ``[ncrops, 13]``, all drawn from ``seed``."""
        x = to_chw_uint8(img)
        with _seeded(seed):
            views, params = [], []
            for k, (p_blur, p_sol) in enumerate(self.view_probs):
                views.append((self.global_crop if k < 2 else self.local_crop)(x))
                params.append(self.draw_params(p_blur, p_sol))
        return views, torch.stack(params)

    def photometric(self, views: Sequence[torch.Tensor], params: torch.Tensor) -> list[torch.Tensor]:
        """Colour half of the augmentation on batches: ``ncrops`` uint8 ``[B, 3, h, w]`` views and their
        parameters ``[B, ncrops, 13]`` → ``ncrops`` normalized float ``[B, 3, h, w]``."""
        out = []
        device = views[0].device if len(views) else "cpu"
        mean = torch.tensor(self.mean, device=device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=device).view(1, 3, 1, 1)
        for k, v in enumerate(views):
            p = params[:, k].to(v.device, torch.float32)
            x = v.float() / 255.0
            flag = lambda name: (p[:, _P[name]] > 0.5).view(-1, 1, 1, 1)  # noqa: E731
            y = x.clone()  # jittered copy, written in place below; x stays for the views without jitter
            order = p[:, _P["order0"]:_P["order3"] + 1].long()
            for r in range(4):  # the four colour operations, each view in its own order
                for op in range(4):
                    idx = (order[:, r] == op).nonzero().squeeze(1)
                    if len(idx):
                        y[idx] = _colour_op(y[idx], op, p[idx])
            x = torch.where(flag("jitter"), y, x)
            x = torch.where(flag("gray"), _luma(x).expand_as(x), x)
            sigma = torch.where(p[:, _P["blur"]] > 0.5, p[:, _P["sigma"]], torch.zeros_like(p[:, 0]))
            if bool((sigma > 0).any()):
                x = _gaussian_blur(x, sigma, self.blur_kernel)
            x = torch.where(flag("solarize") & (x >= 128 / 255), 1.0 - x, x)
            out.append((x - mean) / std)
        return out

    def __call__(self, img, seed: int | None = None) -> list[torch.Tensor]:
        views, params = self.geometric(img, seed)
        if self.defer_photometric:
            return views + [params]
        return [v[0] for v in self.photometric([v.unsqueeze(0) for v in views], params.unsqueeze(0))]


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
