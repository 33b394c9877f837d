"""The DINO projection head and the multi-crop wrapper (backbone + head over crops of several sizes).

State-dict compatibility with the released checkpoints
------------------------------------------------------
The reference head (DINO's ``DINOHead``) uses the deprecated ``torch.nn.utils.weight_norm``, which
stores the last layer as ``last_layer.weight_g [out_dim, 1]`` and ``last_layer.weight_v
[out_dim, bottleneck_dim]``.  This head uses the current
:func:`torch.nn.utils.parametrizations.weight_norm`, whose parameters are named
``last_layer.parametrizations.weight.original0`` (= g) and ``…original1`` (= v).  Two state-dict
hooks translate between the spellings, so ``state_dict()`` writes the reference keys and
``load_state_dict`` accepts either:

=======================================================  ===============================
reference / saved key                                    parameter in this module
=======================================================  ===============================
``last_layer.weight_g``                                  ``last_layer.parametrizations.weight.original0``
``last_layer.weight_v``                                  ``last_layer.parametrizations.weight.original1``
=======================================================  ===============================
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.parametrizations import weight_norm

_PARAM_G = "last_layer.parametrizations.weight.original0"
_PARAM_V = "last_layer.parametrizations.weight.original1"
_REF_G = "last_layer.weight_g"
_REF_V = "last_layer.weight_v"


class DINOHead(nn.Module):
    """MLP projection head of DINO: ``in_dim → hidden → hidden → bottleneck``, L2-normalization, then a
    weight-normalized linear layer ``bottleneck → out_dim`` without bias.

    Args:
        in_dim: backbone output dimension (384 for ViT256-16, 192 for ViT4096-256).
        out_dim: number of prototypes K (65,536 in the paper).
        use_bn: BatchNorm after the hidden layers (off in HIPT).
        norm_last_layer: fix the weight-norm magnitude ``g`` to 1 (not trained), which DINO recommends
            for stability with ViTs.
        nlayers, hidden_dim, bottleneck_dim: the MLP shape (3, 2048, 256 in the paper).

    Shapes: ``[B, in_dim] → [B, out_dim]`` (logits, before any temperature).
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int = 65536,
        use_bn: bool = False,
        norm_last_layer: bool = True,
        nlayers: int = 3,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
    ):
        super().__init__()
        nlayers = max(nlayers, 1)
        if nlayers == 1:
            self.mlp: nn.Module = nn.Linear(in_dim, bottleneck_dim)
        else:
            layers: list[nn.Module] = [nn.Linear(in_dim, hidden_dim)]
            if use_bn:
                layers.append(nn.BatchNorm1d(hidden_dim))
            layers.append(nn.GELU())
            for _ in range(nlayers - 2):
                layers.append(nn.Linear(hidden_dim, hidden_dim))
                if use_bn:
                    layers.append(nn.BatchNorm1d(hidden_dim))
                layers.append(nn.GELU())
            layers.append(nn.Linear(hidden_dim, bottleneck_dim))
            self.mlp = nn.Sequential(*layers)
        self.apply(self._init_weights)
        self.last_layer = weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False), name="weight", dim=0)
        g = self.last_layer.parametrizations.weight.original0
        with torch.no_grad():
            g.fill_(1.0)
        if norm_last_layer:
            g.requires_grad_(False)
        self._register_state_dict_hook(_to_reference_keys)
        self._register_load_state_dict_pre_hook(_from_reference_keys)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, in_dim] → [B, out_dim]``."""
        x = self.mlp(x)
        x = F.normalize(x, dim=-1, p=2)
        return self.last_layer(x)


def _to_reference_keys(module, state_dict, prefix, local_metadata):
    for ours, ref in ((_PARAM_G, _REF_G), (_PARAM_V, _REF_V)):
        if prefix + ours in state_dict:
            state_dict[prefix + ref] = state_dict.pop(prefix + ours)
    return state_dict


def _from_reference_keys(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
    for ours, ref in ((_PARAM_G, _REF_G), (_PARAM_V, _REF_V)):
        if prefix + ref in state_dict:
            state_dict[prefix + ours] = state_dict.pop(prefix + ref)


class MultiCropWrapper(nn.Module):
    """Backbone + head applied to a list of crops of possibly different sizes.

    Crops of equal resolution are concatenated into one batch for the backbone (one forward per
    resolution, e.g. one for the 2 global and one for the 8 local views), then the head runs once on
    all [CLS] embeddings.  Input: a list of ``[B, C, h_i, w_i]`` tensors; output ``[ncrops·B, out_dim]``
    ordered crop by crop (crop 0 of every sample, then crop 1, …), the layout :class:`DINOLoss` expects.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, crops: Sequence[torch.Tensor] | torch.Tensor) -> torch.Tensor:
        if isinstance(crops, torch.Tensor):
            crops = [crops]
        sizes = torch.tensor([c.shape[-1] * 10_000 + c.shape[-2] for c in crops])
        # boundaries of runs of equal size (crops of one size are consecutive: globals, then locals)
        idx_crops = torch.cumsum(torch.unique_consecutive(sizes, return_counts=True)[1], 0).tolist()
        outputs = []
        start = 0
        for end in idx_crops:
            outputs.append(self.backbone(torch.cat(list(crops[start:end]))))
            start = end
        return self.head(torch.cat(outputs))
