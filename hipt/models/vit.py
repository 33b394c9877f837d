"""The two nested Vision Transformers of HIPT, built on timm's transformer blocks.

- :class:`ViT256` (ViT256-16): a ViT over the 16×16 grid of 16-px pixel patches of a 256×256 image
  patch; ``vit256_small()`` is the paper's ViT-S/16 (384-d, 12 blocks, 6 heads, 21,665,664 parameters).
- :class:`ViT4K` (ViT4096-256): a ViT over the 16×16 grid of ViT256 [CLS] tokens of a 4096×4096 region;
  each 384-d token is embedded by ``phi = Linear(384→192) + GELU + Dropout`` instead of a conv patchify;
  ``vit4k_xs()`` is the paper's ViT-XS (192-d, 6 blocks, 6 heads, 2,781,504 parameters).

Both share one core (:class:`_ViTCore`): [CLS] token, learned position embeddings stored on the
reference's 14×14(+1) grid and bicubically interpolated to the input grid exactly as the reference
(DINO) code does — including its ``+0.1`` trick on the scale factor — pre-norm timm ``Block`` s with fused
scaled-dot-product attention, and a final LayerNorm.  State-dict keys equal the reference backbone keys
(``cls_token``, ``pos_embed``, ``patch_embed.proj.*`` / ``phi.0.*``, ``blocks.{i}.{norm1,attn.qkv,attn.proj,
norm2,mlp.fc1,mlp.fc2}.*``, ``norm.*``), so the released checkpoints load strictly
(:mod:`hipt.models.weights`).

The attention matrix of the last block (``get_last_selfattention``) is computed explicitly for that block
only (``softmax(q·kᵀ·scale)`` from its own qkv weights); every other block keeps the fused kernel.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import trunc_normal_
from timm.models.vision_transformer import Block
from torch import nn

from hipt.errors import CheckpointError
from hipt.models.weights import backbone_state_dict, load_backbone, load_checkpoint

__all__ = [
    "ViT256",
    "ViT4K",
    "interpolate_pos_embed",
    "load_model",
    "sincos_pos_embed",
    "transformer_flops",
    "vit256_small",
    "vit256_tiny",
    "vit4k_xs",
    "vit4k_tiny",
]


def interpolate_pos_embed(pos_embed: torch.Tensor, grid_h: int, grid_w: int) -> torch.Tensor:
    """Position embeddings for a ``grid_h × grid_w`` token grid, as the reference computes them.

    Args:
        pos_embed: ``[1, 1 + G·G, D]`` stored embeddings ([CLS] first, then a G×G grid, row-major).
        grid_h, grid_w: the input's token grid (rows, columns).

    Returns:
        ``[1, 1 + grid_h·grid_w, D]``.  Identity when the grid is the stored square G×G; otherwise the
        G×G grid is resized with ``F.interpolate(mode="bicubic", scale_factor=((grid_h + 0.1)/G,
        (grid_w + 0.1)/G))``: DINO's trick — the +0.1 makes ``floor(G·scale)`` land on the wanted size
        despite floating-point error, and (since the scale factor, not the size, is handed to the
        kernel) it also sets the sampling positions, so we must call it the same way to match the
        released models' outputs bit for bit (up to fp rounding).
    """
    n = pos_embed.shape[1] - 1
    if n == grid_h * grid_w and grid_h == grid_w:
        return pos_embed
    g = int(math.sqrt(n))
    if g * g != n:
        raise ValueError(f"stored position grid of {n} tokens is not square")
    dim = pos_embed.shape[-1]
    cls_pos = pos_embed[:, :1]
    patch_pos = pos_embed[:, 1:].reshape(1, g, g, dim).permute(0, 3, 1, 2)
    h0, w0 = grid_h + 0.1, grid_w + 0.1
    patch_pos = F.interpolate(
        patch_pos.float(), scale_factor=(h0 / g, w0 / g), mode="bicubic"
    ).to(pos_embed.dtype)
    if patch_pos.shape[-2:] != (grid_h, grid_w):  # pragma: no cover (the +0.1 guarantees it)
        raise RuntimeError(f"position embedding resized to {tuple(patch_pos.shape[-2:])}, not {(grid_h, grid_w)}")
    patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, grid_h * grid_w, dim)
    return torch.cat((cls_pos, patch_pos), dim=1)


def sincos_pos_embed(grid: int, dim: int) -> torch.Tensor:
    """Fixed 2-D sine-cosine position embeddings ``[1, 1 + grid·grid, dim]`` ([CLS] row zero).

    Half of the channels encode the row, half the column, each as ``sin``/``cos`` of the position at
    ``dim/4`` frequencies ``1/10000^(i/(dim/4))`` (the MAE / MoCo v3 recipe).  Neighbouring cells get
    similar vectors, so attention can tell a token's neighbours from the start of training.
    """
    if dim % 4:
        raise ValueError(f"sincos position embeddings need dim divisible by 4, got {dim}")
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    rows, cols = torch.meshgrid(torch.arange(grid, dtype=torch.float64), torch.arange(grid, dtype=torch.float64),
                                indexing="ij")
    parts = []
    for pos in (rows.flatten(), cols.flatten()):
        angle = pos[:, None] * omega[None]  # [G·G, dim/4]
        parts += [angle.sin(), angle.cos()]
    table = torch.cat(parts, dim=1)  # [G·G, dim]
    return torch.cat((torch.zeros(1, dim, dtype=torch.float64), table)).unsqueeze(0).float()


def transformer_flops(n_tokens: int, dim: int, depth: int, mlp_ratio: float = 4.0) -> int:
    """Analytic FLOPs (2 × multiply-adds) of ``depth`` pre-norm blocks on ``n_tokens`` tokens of width ``dim``.

    Per block: qkv ``6·N·D²``, attention scores and weighted sum ``4·N²·D``, output projection ``2·N·D²``,
    MLP ``4·r·N·D²`` (r = ``mlp_ratio``).  Norms, GELU, softmax and additions are not counted (they are
    < 1 % here); this is the convention of ``torch.utils.flop_counter``.
    """
    n, d = n_tokens, dim
    return int(depth * (6 * n * d * d + 4 * n * n * d + 2 * n * d * d + 4 * mlp_ratio * n * d * d))


class _ViTCore(nn.Module):
    """[CLS] + position embedding + pre-norm timm blocks + final LayerNorm.

    Subclasses define ``embed(x) -> ([B, N, D] tokens, (grid_h, grid_w))``.
    """

    def __init__(
        self,
        embed_dim: int,
        depth: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        pos_grid: int = 14,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.embed_dim = self.num_features = embed_dim
        self.depth = depth
        self.num_heads = num_heads
        self.mlp_ratio = mlp_ratio
        self.pos_grid = pos_grid
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, pos_grid * pos_grid + 1, embed_dim))
        self.pos_drop = nn.Dropout(p=drop_rate)
        dpr = [float(r) for r in torch.linspace(0, drop_path_rate, depth)]  # stochastic depth decay rule
        norm_layer = partial(nn.LayerNorm, eps=1e-6)
        self.blocks = nn.ModuleList(
            Block(
                dim=embed_dim,
                num_heads=num_heads,
                mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias,
                proj_drop=drop_rate,
                attn_drop=attn_drop_rate,
                drop_path=dpr[i],
                norm_layer=norm_layer,
                act_layer=nn.GELU,
            )
            for i in range(depth)
        )
        self.norm = norm_layer(embed_dim)
        self.head = nn.Identity()  # num_classes = 0, as the reference backbones

    # -- init ---------------------------------------------------------------------------------
    def _init_weights(self) -> None:
        trunc_normal_(self.pos_embed, std=0.02)
        trunc_normal_(self.cls_token, std=0.02)
        self.apply(_init_module)

    def init_pos_embed(self, kind: str = "trunc_normal") -> None:
        """(Re)initialize ``pos_embed`` before training: ``"trunc_normal"`` (std 0.02, as the reference and
        timm) or ``"sincos"`` (:func:`sincos_pos_embed`, still trained afterwards).  On the CPU book's
        stage 2 the sincos ViT4K reads the phantom arrangement from its region token already at
        initialization, the trunc-normal one hardly better than mean pooling, before and after DINO
        (``benchmarks/bench_stage2_arrangement.py``, chapter 4).  Loaded checkpoints carry their own
        ``pos_embed``."""
        with torch.no_grad():
            if kind == "trunc_normal":
                trunc_normal_(self.pos_embed, std=0.02)
            elif kind == "sincos":
                self.pos_embed.copy_(sincos_pos_embed(self.pos_grid, self.embed_dim))
            else:
                raise ValueError(f"unknown pos_embed init {kind!r}; choose 'trunc_normal' or 'sincos'")

    # -- tokens -------------------------------------------------------------------------------
    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:  # pragma: no cover
        raise NotImplementedError

    def prepare_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Input → ``[B, 1 + N, D]`` tokens ([CLS] first) with position embeddings added."""
        tokens, (gh, gw) = self.embed(x)
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)
        tokens = torch.cat((cls, tokens), dim=1)
        tokens = tokens + interpolate_pos_embed(self.pos_embed, gh, gw).to(tokens.dtype)
        return self.pos_drop(tokens)

    # -- forward ------------------------------------------------------------------------------
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """All tokens after the final LayerNorm: ``[B, 1 + N, D]`` ([CLS] first, then the grid row-major)."""
        t = self.prepare_tokens(x)
        for blk in self.blocks:
            t = blk(t)
        return self.norm(t)

    def forward_head(self, tokens: torch.Tensor) -> torch.Tensor:
        """``[B, 1 + N, D]`` → the [CLS] embedding ``[B, D]``."""
        return self.head(tokens[:, 0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The [CLS] embedding ``[B, D]``."""
        return self.forward_head(self.forward_features(x))

    # -- attention ----------------------------------------------------------------------------
    @staticmethod
    def block_attention(blk: Block, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Run one block with an explicit attention matrix.

        Returns ``(block output [B, N, D], attention [B, heads, N, N])``; the output equals
        ``blk(t)`` (up to floating-point rounding, checked by the tests).
        """
        attn_mod = blk.attn
        attn, v = _attention_matrix(attn_mod, blk.norm1(t))
        b, n = t.shape[:2]
        y = attn_mod.attn_drop(attn) @ v
        y = y.transpose(1, 2).reshape(b, n, -1)
        y = attn_mod.proj_drop(attn_mod.proj(attn_mod.norm(y)))
        t = t + blk.drop_path1(blk.ls1(y))
        t = t + blk.drop_path2(blk.ls2(blk.mlp(blk.norm2(t))))
        return t, attn

    def forward_with_attention(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(all normalized tokens [B, 1+N, D], last block's attention [B, heads, 1+N, 1+N])``.

        One forward pass: fused attention in every block but the last, explicit in the last.
        """
        t = self.prepare_tokens(x)
        for blk in self.blocks[:-1]:
            t = blk(t)
        t, attn = self.block_attention(self.blocks[-1], t)
        return self.norm(t), attn

    def get_last_selfattention(self, x: torch.Tensor) -> torch.Tensor:
        """Attention of the last block: ``[B, heads, 1 + N, 1 + N]`` (row 0 = [CLS] as query).

        Same output as the reference's ``get_last_selfattention`` (softmax over keys, before dropout).
        """
        t = self.prepare_tokens(x)
        for blk in self.blocks[:-1]:
            t = blk(t)
        blk = self.blocks[-1]
        attn, _ = _attention_matrix(blk.attn, blk.norm1(t))
        return attn

    def get_intermediate_layers(self, x: torch.Tensor, n: int = 1) -> list[torch.Tensor]:
        """Normalized outputs ``[B, 1+N, D]`` of the last ``n`` blocks (as DINO's linear evaluation)."""
        t = self.prepare_tokens(x)
        out = []
        for i, blk in enumerate(self.blocks):
            t = blk(t)
            if len(self.blocks) - i <= n:
                out.append(self.norm(t))
        return out

    # -- bookkeeping --------------------------------------------------------------------------
    @property
    def config(self) -> dict[str, Any]:
        """Keyword arguments that rebuild this architecture (stored in exported checkpoints)."""
        raise NotImplementedError  # pragma: no cover

    def extra_repr(self) -> str:
        return f"embed_dim={self.embed_dim}, depth={self.depth}, num_heads={self.num_heads}"


def _attention_matrix(attn_mod: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The explicit attention of a timm ``Attention`` on normalized tokens ``x [B, N, D]``:
    ``(softmax(q·kᵀ·scale) [B, heads, N, N], values [B, heads, N, head_dim])``, from the module's own qkv
    weights (the fused kernel gives no attention matrix)."""
    b, n, _ = x.shape
    qkv = attn_mod.qkv(x).reshape(b, n, 3, attn_mod.num_heads, attn_mod.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    q, k = attn_mod.q_norm(q), attn_mod.k_norm(k)
    return ((q * attn_mod.scale) @ k.transpose(-2, -1)).softmax(dim=-1), v


def _init_module(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.constant_(m.bias, 0)
    elif isinstance(m, nn.LayerNorm):
        nn.init.constant_(m.bias, 0)
        nn.init.constant_(m.weight, 1.0)


class _PatchEmbed(nn.Module):
    """``Conv2d(in, D, k=p, s=p)``: ``[B, C, H, W]`` → ``[B, (H/p)·(W/p), D]`` row-major, and the grid."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        _, _, h, w = x.shape
        p = self.patch_size
        if h % p or w % p:
            raise ValueError(f"input of {h}×{w} px is not a multiple of the patch size {p}")
        x = self.proj(x)
        return x.flatten(2).transpose(1, 2), (h // p, w // p)


class ViT256(_ViTCore):
    """ViT256-16: a ViT over 16-px pixel patches of a (256-px) image patch.

    Args:
        embed_dim, depth, num_heads, mlp_ratio, qkv_bias: the transformer's size.
        patch_size: pixel patch side (16).
        img_size: the image size the stored position grid is built for (224 in the reference:
            a 14×14 grid, bicubically interpolated to 16×16 for 256-px inputs).
        in_chans: image channels.
        drop_rate, attn_drop_rate, drop_path_rate: regularization (stage-1 DINO uses drop_path 0.1).

    Input ``[B, 3, H, W]`` (normalized floats, H and W multiples of ``patch_size``);
    ``forward`` → ``[B, embed_dim]`` ([CLS]); ``forward_features`` → ``[B, 1 + (H/p)(W/p), embed_dim]``;
    ``get_last_selfattention`` → ``[B, num_heads, 1 + N, 1 + N]``.
    """

    def __init__(
        self,
        embed_dim: int = 384,
        depth: int = 12,
        num_heads: int = 6,
        patch_size: int = 16,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        img_size: int = 224,
        in_chans: int = 3,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__(
            embed_dim, depth, num_heads, mlp_ratio, qkv_bias, img_size // patch_size,
            drop_rate, attn_drop_rate, drop_path_rate,
        )
        self.patch_size = patch_size
        self.img_size = img_size
        self.in_chans = in_chans
        self.patch_embed = _PatchEmbed(patch_size, in_chans, embed_dim)
        self._init_weights()

    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        if x.ndim != 4 or x.shape[1] != self.in_chans:
            raise ValueError(f"ViT256 expects [B, {self.in_chans}, H, W] images, got {tuple(x.shape)}")
        return self.patch_embed(x)

    def flops(self, height: int = 256, width: int | None = None) -> int:
        """Analytic FLOPs of one forward on a ``height × width`` image (patch embedding + blocks).

        ViT-S/16 on a 256-px patch: 12.28 GFLOP (checked against ``FlopCounterMode`` in the tests).
        """
        width = height if width is None else width
        n = (height // self.patch_size) * (width // self.patch_size)
        embed = 2 * n * self.in_chans * self.patch_size**2 * self.embed_dim
        return embed + transformer_flops(1 + n, self.embed_dim, self.depth, self.mlp_ratio)

    @property
    def config(self) -> dict[str, Any]:
        return {
            "arch": "vit256", "embed_dim": self.embed_dim, "depth": self.depth, "num_heads": self.num_heads,
            "patch_size": self.patch_size, "mlp_ratio": self.mlp_ratio, "img_size": self.img_size,
            "in_chans": self.in_chans,
        }


class ViT4K(_ViTCore):
    """ViT4096-256: a ViT over a 2D grid of ViT256 [CLS] tokens (one per 256-px patch of a region).

    Args:
        input_embed_dim: the ViT256 token size (384; 192 for the tiny CPU models).
        embed_dim, depth, num_heads, mlp_ratio, qkv_bias: the transformer's size.
        pos_grid: side of the stored position grid (14, as the reference: ``img_size=224 // 16``;
            the largest global crop in stage-2 DINO is 14×14; inference on 16×16 interpolates).
        drop_rate, attn_drop_rate, drop_path_rate: regularization.

    Input ``[B, input_embed_dim, H, W]`` (the token grid, channels first); each token is embedded by
    ``phi = Linear(input_embed_dim → embed_dim) + GELU + Dropout``.
    ``forward`` → ``[B, embed_dim]``; attention ``[B, num_heads, 1 + H·W, 1 + H·W]``.
    """

    def __init__(
        self,
        input_embed_dim: int = 384,
        embed_dim: int = 192,
        depth: int = 6,
        num_heads: int = 6,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        pos_grid: int = 14,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__(
            embed_dim, depth, num_heads, mlp_ratio, qkv_bias, pos_grid, drop_rate, attn_drop_rate, drop_path_rate
        )
        self.input_embed_dim = input_embed_dim
        self.phi = nn.Sequential(nn.Linear(input_embed_dim, embed_dim), nn.GELU(), nn.Dropout(p=drop_rate))
        self._init_weights()

    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        if x.ndim != 4 or x.shape[1] != self.input_embed_dim:
            raise ValueError(
                f"ViT4K expects a token grid [B, {self.input_embed_dim}, H, W], got {tuple(x.shape)}"
            )
        _, _, h, w = x.shape
        return self.phi(x.flatten(2, 3).transpose(1, 2)), (h, w)

    def flops(self, grid_h: int = 16, grid_w: int | None = None) -> int:
        """Analytic FLOPs of one forward on a ``grid_h × grid_w`` token grid (``phi`` + blocks).

        ViT-XS on a 16×16 grid: 1.71 GFLOP.
        """
        grid_w = grid_h if grid_w is None else grid_w
        n = grid_h * grid_w
        return 2 * n * self.input_embed_dim * self.embed_dim + transformer_flops(
            1 + n, self.embed_dim, self.depth, self.mlp_ratio)

    @property
    def config(self) -> dict[str, Any]:
        return {
            "arch": "vit4k", "input_embed_dim": self.input_embed_dim, "embed_dim": self.embed_dim,
            "depth": self.depth, "num_heads": self.num_heads, "mlp_ratio": self.mlp_ratio,
            "pos_grid": self.pos_grid,
        }


# -- factories ------------------------------------------------------------------------------------


def _maybe_load(model: nn.Module, weights: Any) -> nn.Module:
    if weights is not None:
        load_backbone(model, weights)
    return model


def vit256_small(weights: Any = None, **kwargs: Any) -> ViT256:
    """ViT-S/16 (the paper's ViT256-16): 384-d, 12 blocks, 6 heads; 21,665,664 parameters.

    Args:
        weights: ``None`` (random init), a registry name (``"vit256_small_dino"``), a local path or a
            URL of a checkpoint in the released DINO format (see :mod:`hipt.models.weights`).
        **kwargs: forwarded to :class:`ViT256` (e.g. ``drop_path_rate=0.1`` for pretraining).
    """
    model = ViT256(embed_dim=384, depth=12, num_heads=6, patch_size=16, **kwargs)
    return _maybe_load(model, weights)


def vit256_tiny(weights: Any = None, **kwargs: Any) -> ViT256:
    """A CPU-sized ViT256: 192-d, 4 blocks, 3 heads (for the book's CPU preset and tests)."""
    kw = {"embed_dim": 192, "depth": 4, "num_heads": 3, "patch_size": 16} | kwargs
    return _maybe_load(ViT256(**kw), weights)


def vit4k_xs(weights: Any = None, **kwargs: Any) -> ViT4K:
    """ViT-XS (the paper's ViT4096-256): 384 → 192-d, 6 blocks, 6 heads; 2,781,504 parameters."""
    model = ViT4K(input_embed_dim=384, embed_dim=192, depth=6, num_heads=6, **kwargs)
    return _maybe_load(model, weights)


def vit4k_tiny(weights: Any = None, input_embed_dim: int = 192, **kwargs: Any) -> ViT4K:
    """A CPU-sized ViT4K: ``input_embed_dim`` → 192-d, 2 blocks, 3 heads.

    Its output stays 192-d, like ViT-XS, so slide heads (:class:`hipt.models.HIPTSlide`) keep their sizes.
    """
    kw = {"embed_dim": 192, "depth": 2, "num_heads": 3} | kwargs
    return _maybe_load(ViT4K(input_embed_dim=input_embed_dim, **kw), weights)


# -- from a checkpoint --------------------------------------------------------------------------


def load_model(weights: str | Path, trusted: bool = False, **overrides: Any) -> nn.Module:
    """Rebuild a ViT256 / ViT4K from a checkpoint and load it (strictly), in eval mode.

    The architecture comes from the ``hipt.config`` a :func:`save_backbone` file stores, else from the
    DINO ``args`` of a released checkpoint (``arch`` ``vit_small`` / ``vit4k_xs`` / the tiny names, or
    ``num_heads``) and the tensor shapes (heads otherwise assumed 64-d for ViT256, 32-d for ViT4K:
    the number of heads is the one thing a state dict does not show).
    """
    ckpt = load_checkpoint(weights, trusted=trusted)
    sd = backbone_state_dict(ckpt)
    cfg = dict((ckpt.get("hipt") or {}).get("config") or {})
    if not cfg:
        cfg = _infer_config(sd, ckpt.get("args"))
    cfg.update(overrides)
    arch = cfg.pop("arch")
    model = ViT256(**cfg) if arch == "vit256" else ViT4K(**cfg)
    load_backbone(model, ckpt)
    return model.eval()


def _infer_config(sd: Mapping[str, torch.Tensor], args: Any) -> dict[str, Any]:
    if "cls_token" not in sd:
        raise CheckpointError("<checkpoint>", "has no ViT backbone (no cls_token)")
    dim = sd["cls_token"].shape[-1]
    depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    hidden = sd["blocks.0.mlp.fc1.weight"].shape[0]
    grid = int(round((sd["pos_embed"].shape[1] - 1) ** 0.5))
    arch_name = str(getattr(args, "arch", "") or "")
    heads_of = {"vit_tiny": 3, "vit_small": 6, "vit_base": 12, "vit256_tiny": 3, "vit256_small": 6,
                "vit4k_xs": 6, "vit4k_tiny": 3}
    explicit = getattr(args, "num_heads", None)
    if "patch_embed.proj.weight" in sd:
        p = sd["patch_embed.proj.weight"].shape[-1]
        heads = explicit or heads_of.get(arch_name, max(1, dim // 64))
        return {"arch": "vit256", "embed_dim": dim, "depth": depth, "num_heads": heads, "patch_size": p,
                "mlp_ratio": hidden / dim, "img_size": grid * p, "in_chans": sd["patch_embed.proj.weight"].shape[1]}
    heads = explicit or heads_of.get(arch_name, max(1, dim // 32))
    return {"arch": "vit4k", "input_embed_dim": sd["phi.0.weight"].shape[1], "embed_dim": dim, "depth": depth,
            "num_heads": heads, "mlp_ratio": hidden / dim, "pos_grid": grid}
