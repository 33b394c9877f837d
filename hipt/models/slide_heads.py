"""The slide-level head of HIPT: HIPT-LGP-FC (local ViT4096 + global transformer + gated attention pool).

:class:`HIPTSlide` takes one slide as a bag of M regions, each the row-major grid of its patch tokens
``[M, n, 384]`` (n = 256 for 4096-px regions), and returns slide logits and attention over regions:

1. ``local_vit`` (ViT4096-256, frozen by default) → region tokens ``h [M, 192]``;
2. ``global_phi`` = Linear + ReLU + Dropout(0.25);
3. ``global_transformer``: 2 post-norm ``nn.TransformerEncoderLayer`` s (d=192, 3 heads, FFN 192,
   dropout 0.25, ReLU) over the M regions (sequence first, batch 1, as the reference);
4. ``global_attn_pool``: gated attention (Ilse et al.) → softmax weights over regions ``A [M]``;
   ``h_slide = Σ A_m h_m``;
5. ``global_rho`` = Linear + ReLU + Dropout; ``classifier`` = Linear(192, n_classes).

Its ``state_dict`` keys and shapes equal the reference's ``HIPT_LGP_FC`` (global part 595,011 parameters
for 2 classes; 3,376,515 with the local ViT-XS), so a reference fine-tuned checkpoint loads with
``strict=True``; keys saved under the reference's ``nn.DataParallel`` wrapper (``local_vit.module.*``)
are accepted too and renamed on load.

Differences from the reference, on purpose: a frozen local ViT stays in eval mode under ``.train()``
(the reference left it in train mode), precomputed region features ``[M, 192]`` may be passed
instead of the patch tokens to skip the frozen local ViT (a large speed-up when training), and the
region tokens of a frozen ViT can be z-scored with training statistics before ``global_phi``
(:meth:`HIPTSlide.standardize_regions`, used by ``hipt finetune`` unless ``--no-standardize``).  A
small or briefly trained ViT4K gives region tokens that differ from region to region by a tiny
fraction of their size (the book's CPU stage-2 model: per dimension, a standard deviation of about
1 % of the mean); the reference's head, fed them raw, outputs the same logits for every slide and
does not even fit its training slides (chapter 6).  Without it, the ``state_dict`` is the reference's.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from hipt.models.vit import ViT4K, vit4k_xs

__all__ = ["AttnNetGated", "FeatureStandardizer", "GlobalAggregator", "HIPTGP", "HIPTSlide"]

LocalMode = Literal["frozen", "finetune", "scratch"]


class AttnNetGated(nn.Module):
    """Gated attention (Ilse et al. 2018), the reference's ``Attn_Net_Gated``.

    ``a = tanh(W_a h)``, ``b = sigmoid(W_b h)``, ``A = W_c (a ⊙ b)``: ``[M, L]`` → (``[M, n_out]`` scores, h).
    Keys: ``attention_a.0.*``, ``attention_b.0.*``, ``attention_c.*``.
    """

    def __init__(self, L: int = 192, D: int = 192, dropout: float = 0.25, n_out: int = 1) -> None:
        super().__init__()
        a: list[nn.Module] = [nn.Linear(L, D), nn.Tanh()]
        b: list[nn.Module] = [nn.Linear(L, D), nn.Sigmoid()]
        if dropout:
            a.append(nn.Dropout(dropout))
            b.append(nn.Dropout(dropout))
        self.attention_a = nn.Sequential(*a)
        self.attention_b = nn.Sequential(*b)
        self.attention_c = nn.Linear(D, n_out)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.attention_c(self.attention_a(h) * self.attention_b(h)), h


class FeatureStandardizer(nn.Module):
    """``(x − mean) / std`` per feature dimension, with fixed statistics (buffers ``mean``, ``std`` ``[D]``).

    The normalization that linear probes of frozen features use (MAE's BatchNorm without affine
    parameters), fitted once on training features with :meth:`fit`.  ``std`` is floored at
    ``1e-3 × max(std)`` so that a dimension constant on the training data cannot blow up.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    @classmethod
    def fit(cls, x: torch.Tensor) -> FeatureStandardizer:
        """Statistics of ``x`` ``[N, D]`` (float64 accumulation)."""
        x = torch.as_tensor(x).detach().reshape(-1, torch.as_tensor(x).shape[-1]).double()
        if len(x) < 2:
            raise ValueError(f"FeatureStandardizer.fit needs at least 2 feature vectors, got {len(x)}")
        out = cls(x.shape[1])
        std = x.std(dim=0)
        out.mean.copy_(x.mean(dim=0).float())
        out.std.copy_(std.clamp_min(1e-3 * float(std.max()) + 1e-12).float())
        return out

    @classmethod
    def fit_batches(cls, batches) -> FeatureStandardizer:
        """Statistics of the rows of every ``[..., D]`` tensor in ``batches``, streamed (float64 sums), so
        that the patch tokens of a whole training split (``[M, n, D]`` per slide) need not fit in memory."""
        n, s, ss = 0, None, None
        for x in batches:
            x = torch.as_tensor(x).detach()
            x = x.reshape(-1, x.shape[-1]).double()
            s = x.sum(0) if s is None else s + x.sum(0)
            ss = (x * x).sum(0) if ss is None else ss + (x * x).sum(0)
            n += len(x)
        if n < 2:
            raise ValueError(f"FeatureStandardizer.fit_batches needs at least 2 feature vectors, got {n}")
        mean = s / n
        std = ((ss - n * mean * mean).clamp_min(0) / (n - 1)).sqrt()
        out = cls(len(mean))
        out.mean.copy_(mean.float())
        out.std.copy_(std.clamp_min(1e-3 * float(std.max()) + 1e-12).float())
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class GlobalAggregator(nn.Module):
    """The global part of HIPT, shared by :class:`HIPTSlide` and :class:`HIPTGP`: region tokens ``[M, D]`` →
    slide outputs.

    ``global_phi`` → ``global_transformer`` (over the M regions, sequence first, batch 1) →
    ``global_attn_pool`` (gated attention, softmax over regions) → ``global_rho`` → ``classifier``;
    optionally ``region_norm`` (a :class:`FeatureStandardizer`) first.  Subclasses call
    :meth:`_init_global` once their own modules exist, so that the ``state_dict`` keys keep the
    reference's order.
    """

    def _init_global(self, d: int, n_classes: int, task: str, dropout: float, heads: int, layers: int) -> None:
        if task not in ("classification", "survival"):
            raise ValueError(f"task must be 'classification' or 'survival', not {task!r}")
        self.n_classes = n_classes
        self.task = task
        self.embed_dim = d
        self.global_phi = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Dropout(dropout))
        layer = nn.TransformerEncoderLayer(d_model=d, nhead=heads, dim_feedforward=d, dropout=dropout, activation="relu")
        self.global_transformer = nn.TransformerEncoder(layer, num_layers=layers, enable_nested_tensor=False)
        self.global_attn_pool = AttnNetGated(L=d, D=d, dropout=dropout, n_out=1)
        self.global_rho = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Dropout(dropout))
        self.classifier = nn.Linear(d, n_classes)
        self.add_module("region_norm", None)  # FeatureStandardizer after standardize_regions()

    def _fit_region_norm(self, tokens: torch.Tensor) -> None:
        tokens = torch.as_tensor(tokens)
        if tokens.ndim != 2 or tokens.shape[1] != self.embed_dim:
            raise ValueError(f"region tokens must be [N, {self.embed_dim}], got {tuple(tokens.shape)}")
        self.region_norm = FeatureStandardizer.fit(tokens).to(self.classifier.weight.device)

    def aggregate(self, h: torch.Tensor) -> dict[str, torch.Tensor]:
        """Region tokens ``h [M, D]`` → the output dict (see :class:`HIPTSlide`)."""
        if self.region_norm is not None:
            h = self.region_norm(h)
        h = self.global_phi(h)
        h = self.global_transformer(h.unsqueeze(1)).squeeze(1)  # sequence = regions, batch = 1
        a, h = self.global_attn_pool(h)  # [M, 1]
        a = a.transpose(1, 0)  # [1, M]
        weights = F.softmax(a, dim=1)
        h_slide = self.global_rho(weights @ h)  # [1, D]
        logits = self.classifier(h_slide)
        out = {
            "logits": logits,
            "y_hat": logits.argmax(dim=1),
            "attention": weights[0],
            "attention_logits": a[0],
            "features": h_slide,
        }
        if self.task == "survival":
            hazards = torch.sigmoid(logits)
            out["hazards"] = hazards
            out["S"] = torch.cumprod(1 - hazards, dim=1)
        else:
            out["probs"] = F.softmax(logits, dim=1)
        return out


class HIPTGP(GlobalAggregator):
    """HIPT's global part alone on precomputed region tokens ``[M, 192]``: the reference's ``HIPT_GP_FC``.

    What the reference trained on its released ``[M, 192]`` TCGA embeddings (its issue #25 rerun,
    ``--model_type hipt_gp``).  Its ``state_dict`` keys and shapes equal ``HIPT_GP_FC``'s, so a reference
    checkpoint loads with ``strict=True`` and gives the same logits.  The reference's ``forward`` stops in
    the debugger (``pdb.set_trace()``) on its first call; this one does not.

    ``forward(h)`` with ``h`` ``[M, D]`` (or ``[1, M, D]``) returns the dict of :class:`HIPTSlide`.
    """

    def __init__(
        self,
        n_classes: int,
        task: Literal["classification", "survival"] = "classification",
        embed_dim: int = 192,
        dropout: float = 0.25,
        global_heads: int = 3,
        global_layers: int = 2,
    ) -> None:
        super().__init__()
        self._init_global(embed_dim, n_classes, task, dropout, global_heads, global_layers)

    def standardize_regions(self, tokens: torch.Tensor) -> HIPTGP:
        """Z-score region tokens with the statistics of ``tokens`` ``[N, D]`` (adds ``region_norm.*`` keys)."""
        self._fit_region_norm(tokens)
        return self

    def forward(self, h: torch.Tensor) -> dict[str, torch.Tensor]:
        if h.ndim == 3 and h.shape[0] == 1:
            h = h[0]
        if h.ndim != 2 or h.shape[1] != self.embed_dim:
            raise ValueError(f"region tokens must be [M, {self.embed_dim}], got {tuple(h.shape)}")
        return self.aggregate(h)


class HIPTSlide(GlobalAggregator):
    """HIPT-LGP-FC: slide classification or survival from the patch tokens of a slide's regions.

    Args:
        n_classes: outputs (classes; or time bins in survival mode, 4 in the reference).
        task: ``"classification"`` (probabilities by softmax) or ``"survival"`` (discrete-time hazards by
            sigmoid, survival ``S = cumprod(1 − hazards)``).
        local: ``"frozen"`` (default; pretrained ViT4K, no gradients, always in eval mode),
            ``"finetune"`` (pretrained, trained end-to-end) or ``"scratch"`` (random init, trained).
        local_vit: the ViT4K to use (default: a new :func:`~hipt.models.vit4k_xs`).
        vit4k_weights: weights for the default ViT-XS (registry name, path or URL; see
            :mod:`hipt.models.weights`); ignored when ``local_vit`` is given or in ``"scratch"`` mode.
        dropout: dropout of the global part (0.25 as the reference).
        global_heads, global_layers: size of the global transformer (3 heads, 2 layers).

    ``forward(x)`` with ``x`` either the patch tokens ``[M, n, D256]`` (or ``[1, M, n, D256]``) of a slide's
    M regions, row-major within each region (square grid unless ``grid=(rows, cols)`` is given), or
    precomputed region tokens ``[M, D4k]`` (frozen mode only).  Returns a dict:

    - ``logits`` ``[1, n_classes]``; ``y_hat`` ``[1]`` (argmax);
    - classification: ``probs`` ``[1, n_classes]``; survival: ``hazards`` and ``S`` ``[1, n_classes]``;
    - ``attention`` ``[M]``: softmax weights over regions; ``attention_logits`` ``[M]`` before softmax.
    """

    def __init__(
        self,
        n_classes: int,
        task: Literal["classification", "survival"] = "classification",
        local: LocalMode = "frozen",
        local_vit: ViT4K | None = None,
        vit4k_weights: Any = None,
        dropout: float = 0.25,
        global_heads: int = 3,
        global_layers: int = 2,
    ) -> None:
        super().__init__()
        if local not in ("frozen", "finetune", "scratch"):
            raise ValueError(f"local must be 'frozen', 'finetune' or 'scratch', not {local!r}")
        self.local = local
        if local_vit is None:
            if local != "scratch" and vit4k_weights is None:
                warnings.warn(
                    f"HIPTSlide(local={local!r}) without vit4k_weights or local_vit: the local ViT4K is "
                    "randomly initialized (pass vit4k_weights='vit4k_xs_dino' for the released one)",
                    stacklevel=2,
                )
            local_vit = vit4k_xs(weights=None if local == "scratch" else vit4k_weights)
        self.local_vit = local_vit
        self._init_global(local_vit.embed_dim, n_classes, task, dropout, global_heads, global_layers)
        if local == "frozen":
            for p in self.local_vit.parameters():
                p.requires_grad_(False)
            self.local_vit.eval()
        self.register_load_state_dict_pre_hook(_strip_dataparallel)

    # a frozen local ViT never leaves eval mode (the reference's train-mode leak, fixed)
    def train(self, mode: bool = True) -> HIPTSlide:
        super().train(mode)
        if self.local == "frozen":
            self.local_vit.eval()
        return self

    def global_parameters(self) -> list[nn.Parameter]:
        """Parameters of the global part (everything except ``local_vit``)."""
        return [p for n, p in self.named_parameters() if not n.startswith("local_vit.")]

    def standardize_regions(self, tokens: torch.Tensor) -> HIPTSlide:
        """Z-score region tokens before ``global_phi`` with the statistics of ``tokens`` ``[N, D4k]`` (the
        frozen ViT4K's tokens of the training regions).  Frozen mode only: a trained ViT moves its tokens."""
        if self.local != "frozen":
            raise ValueError(f"standardize_regions needs a frozen local ViT; local={self.local!r} changes the tokens")
        self._fit_region_norm(tokens)
        return self

    def encode_regions(self, x: torch.Tensor, grid: tuple[int, int] | None = None) -> torch.Tensor:
        """Patch tokens ``[M, n, D256]`` → region tokens ``[M, D4k]`` (``[M, D4k]`` input passes through)."""
        if x.ndim == 4 and x.shape[0] == 1:
            x = x[0]
        if x.ndim == 2:
            if x.shape[1] != self.embed_dim:
                raise ValueError(f"region features must be [M, {self.embed_dim}], got {tuple(x.shape)}")
            if self.local != "frozen":
                raise ValueError(
                    f"precomputed region features skip the local ViT, which local={self.local!r} trains; "
                    "pass the patch tokens [M, n, D] instead"
                )
            return x
        if x.ndim != 3:
            raise ValueError(f"expected patch tokens [M, n, D] or region features [M, D], got {tuple(x.shape)}")
        m, n, dim = x.shape
        if grid is None:
            side = math.isqrt(n)
            if side * side != n:
                raise ValueError(f"{n} patch tokens per region is not a square grid; pass grid=(rows, cols)")
            grid = (side, side)
        # row-major tokens → [M, D, rows, cols]: the reference's x.unfold(1, 16, 16).transpose(1, 2)
        g = x.transpose(1, 2).reshape(m, dim, grid[0], grid[1])
        if self.local == "frozen":
            with torch.no_grad():
                return self.local_vit(g)
        return self.local_vit(g)

    def forward(self, x: torch.Tensor, grid: tuple[int, int] | None = None) -> dict[str, torch.Tensor]:
        return self.aggregate(self.encode_regions(x, grid))


def _strip_dataparallel(module: nn.Module, state_dict: dict, prefix: str, *args: Any) -> None:
    """Load-time hook: ``local_vit.module.*`` (saved under ``nn.DataParallel``) → ``local_vit.*``."""
    old = prefix + "local_vit.module."
    for key in [k for k in state_dict if k.startswith(old)]:
        state_dict[prefix + "local_vit." + key[len(old):]] = state_dict.pop(key)
