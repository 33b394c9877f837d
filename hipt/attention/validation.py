"""Does HIPT's attention point at what the phantom's ground truth says matters?

- Slide level (:func:`validate_context_attention`): the phantom ``context`` cohort's label lives in some
  regions only (:func:`region_flags` reads which, from the slide's truth); a slide model's attention over
  the regions of held-out slides is scored against those flags (:func:`informative_region_auc`).
- Patch level (:func:`validate_nuclei`): each ViT256 head's [CLS] attention is scored against the nuclei
  masks of phantom patches (:func:`nuclei_agreement`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import roc_auc_score
from torch import nn

from hipt.attention.map_arithmetic import percentile_rank, upsample_nearest
from hipt.attention.maps import encode_patches
from hipt.attention.slide_model import _read_features, train_slide_model
from hipt.errors import InputFileError
from hipt.phantom import load_truth, render_patch

__all__ = [
    "informative_region_auc",
    "region_flags",
    "ContextValidation",
    "validate_context_attention",
    "nuclei_agreement",
    "validate_nuclei",
]


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
    (:func:`~hipt.attention.slide_model.train_slide_model`) on a seeded, class-stratified half of the
    slides; attention is always evaluated on the other half, against the phantom ground truth
    (:func:`region_flags`).
    """
    features_dir = Path(features_dir)
    if table is None:
        tp = features_dir / "table.csv"
        if not tp.is_file():
            raise InputFileError(tp, "cohort table not found", "pass table= or use hipt.book.zoo.cohort_features")
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
