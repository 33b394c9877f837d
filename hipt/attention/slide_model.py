"""The slide model whose attention the maps show: a small HIPT-LGP trained for the validation, and checkpoints.

:func:`train_slide_model` trains a :class:`hipt.models.HIPTSlide` over a frozen ViT4K with the epoch loop
of ``hipt finetune`` (``hipt.tasks.train.train_epoch``), set to the reference's batch-1 steps;
:func:`save_slide_model` / :func:`load_slide_model` write and read slide-model checkpoints (ours and the
reference's ``s_{fold}_checkpoint.pt``) for ``hipt heatmap --slide-model``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from hipt.errors import CheckpointError
from hipt.features import load_features
from hipt.io import atomic_path
from hipt.models import FeatureStandardizer, HIPTSlide, ViT4K
from hipt.models.mil import HIPTMIL
from hipt.models.vit import _infer_config
from hipt.tasks.train import train_epoch

__all__ = [
    "train_slide_model",
    "save_slide_model",
    "load_slide_model",
]


def _read_features(path: Path) -> dict[str, np.ndarray]:
    """``feats256`` (and ``feats4k``, ``coords``) of a ``hipt extract`` file as float32/int64 numpy arrays."""
    return {k: np.asarray(v) for k, v in load_features(path).items() if k != "attrs"}


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
) -> HIPTSlide:
    """Train a small :class:`hipt.models.HIPTSlide` (frozen ``local_vit``) on bags of patch tokens.

    ``bags[i]`` ``[M_i, n, D]`` (``feats256`` of ``hipt extract``), ``labels[i]`` its class. The frozen
    ViT4K turns every bag into region tokens ``[M_i, D4k]`` once; the global part is then trained with
    the reference's recipe (Adam, lr 2e-4, weight decay 1e-5, one slide per step, cross-entropy), for
    ``epochs`` epochs in a seeded random order; with ``standardize`` (default) the region tokens are
    z-scored with the training regions' statistics first, as ``hipt finetune`` does
    (:meth:`~hipt.models.HIPTSlide.standardize_regions`). The epochs are ``hipt finetune``'s
    (``hipt.tasks.train.train_epoch``) with an optimizer step after every slide, on the CPU; what
    :func:`hipt.tasks.train.train_fold` adds (accumulation, weighted sampling, folds, model selection)
    the attention validation does not need. Returns the model in eval mode.
    """
    torch.manual_seed(seed)
    n_classes = int(max(labels)) + 1 if n_classes is None else n_classes
    wrapper = HIPTMIL(n_classes, local="frozen", local_vit=local_vit, dropout=dropout)  # reads bags' feats4k
    model = wrapper.slide
    with torch.no_grad():
        tokens = [model.encode_regions(torch.as_tensor(np.asarray(b, dtype=np.float32))) for b in bags]
    if standardize:
        model.standardize_regions(torch.cat(tokens))
    y = torch.as_tensor(np.asarray(labels, dtype=np.int64))
    items = [{"bag": {"feats4k": t}, "label": y[i : i + 1]} for i, t in enumerate(tokens)]
    opt = torch.optim.Adam(model.global_parameters(), lr=lr, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # steps of a few µs-sized ops: thread synchronisation would dominate
    try:
        for _ in range(epochs):
            # a list in this epoch's seeded order, not a DataLoader: a DataLoader draws a worker seed
            # from the global RNG every epoch, which would move the dropout masks
            order = torch.randperm(len(items), generator=gen).tolist()
            train_epoch(wrapper, [items[i] for i in order], opt, survival=False, accumulation=1)
    finally:
        torch.set_num_threads(threads)
    return model.eval()


def save_slide_model(model: nn.Module, path: str | Path) -> Path:
    """Save a :class:`hipt.models.HIPTSlide` so :func:`load_slide_model` rebuilds it (atomic write)."""
    cfg = {
        "n_classes": int(model.n_classes), "task": str(model.task), "local": str(model.local),
        "local_vit": dict(model.local_vit.config),
    }
    with atomic_path(path) as tmp:
        torch.save({"hipt_slide": cfg, "state_dict": model.state_dict()}, tmp)
    return Path(path)


def load_slide_model(path: str | Path) -> HIPTSlide:
    """Load a slide model checkpoint into a :class:`hipt.models.HIPTSlide` (eval mode), safely.

    Accepts what :func:`save_slide_model` writes (``{'hipt_slide': config, 'state_dict': ...}``) and a
    bare HIPT-LGP state dict as the reference saves it (``s_{fold}_checkpoint.pt``; ``local_vit.module.*``
    accepted), whose ViT4K sizes are read from the tensor shapes as :func:`hipt.models.load_model` reads
    them (heads assumed 32-d, as ViT-XS). Loaded with ``torch.load(weights_only=True)``.
    """
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
            local_sd = {k[len("local_vit."):]: v for k, v in sd.items() if k.startswith("local_vit.")}
            if "cls_token" not in local_sd:
                raise KeyError("local_vit.cls_token")
            vit_cfg = _infer_config(local_sd, None)
        vit_cfg.pop("arch", None)
        n_classes = cfg.pop("n_classes", None) or sd["classifier.weight"].shape[0]
    except KeyError as e:
        raise CheckpointError(path, f"not a HIPT slide model (no {e.args[0]})") from None
    model = HIPTSlide(n_classes=int(n_classes), local_vit=ViT4K(**vit_cfg), task=cfg.get("task", "classification"),
                      local=cfg.get("local", "frozen"))
    if "region_norm.mean" in sd:  # saved after standardize_regions(): its statistics are in the state dict
        model.region_norm = FeatureStandardizer(model.embed_dim)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise CheckpointError(path, f"does not match HIPTSlide: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return model.eval()
