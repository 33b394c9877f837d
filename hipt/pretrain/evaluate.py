"""Probes that show whether pretraining learned something: KNN accuracy on frozen features.

The protocol (used by the book chapters and ``benchmarks/bench_dino_knn.py``): embed a labelled
training set and a held-out test set (drawn from different seeds) with the frozen backbone, L2-normalize
the embeddings, and classify each test item by a majority vote of its ``k`` nearest training items
(cosine similarity; k = 20 as in DINO's ``eval_knn``, uniform votes).  Compare the pretrained teacher
with the same architecture at random initialization.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from hipt.pretrain.augment import _seeded, eval_patch_transform, to_chw_uint8


def stain_shift(images: np.ndarray, seed: int = 0, strength: float = 0.3, hue: float = 0.1) -> np.ndarray:
    """Colour-jittered copies of uint8 patches ``[N, H, W, 3]``: a held-out *stain shift* (brightness,
    contrast and saturation factors in ``[1 − strength, 1 + strength]``, hue shift up to ``hue``),
    deterministic from ``seed``.  A KNN classifier trained on the original colours and tested on these
    cannot rely on colour alone."""
    from torchvision.transforms import v2

    jitter = v2.ColorJitter(strength, strength, strength, hue)
    out = np.empty_like(images)
    for i, im in enumerate(images):
        with _seeded(seed * 1_000_003 + i):
            out[i] = jitter(to_chw_uint8(im)).permute(1, 2, 0).numpy()
    return out


@torch.no_grad()
def embed_patches(
    model: nn.Module,
    images: np.ndarray,
    normalization: str = "hipt",
    batch_size: int = 64,
    size: int | None = None,
    device: str = "cpu",
) -> np.ndarray:
    """[CLS] embeddings ``[N, D]`` of uint8 patches ``[N, H, W, 3]`` (optionally resized to ``size``)."""
    transform = eval_patch_transform(normalization, size)
    model = model.eval().to(device)
    out = []
    for i in range(0, len(images), batch_size):
        x = torch.stack([transform(to_chw_uint8(im)) for im in images[i : i + batch_size]]).to(device)
        out.append(model(x).float().cpu())
    return torch.cat(out).numpy()


@torch.no_grad()
def embed_grids(model: nn.Module, grids: torch.Tensor | np.ndarray, batch_size: int = 64, device: str = "cpu") -> np.ndarray:
    """[CLS] embeddings ``[M, D']`` of feature grids ``[M, D, H, W]`` (a ViT4K)."""
    grids = torch.as_tensor(grids).float()
    model = model.eval().to(device)
    return torch.cat([model(grids[i : i + batch_size].to(device)).float().cpu() for i in range(0, len(grids), batch_size)]).numpy()


def knn_accuracy(
    train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, k: int = 20,
    balanced: bool = False,
) -> float:
    """Accuracy of a k-NN classifier (cosine similarity on L2-normalized features, uniform votes).

    ``balanced=True``: the mean of the per-class recalls (chance = 1 / n_classes whatever the class
    frequencies), for imbalanced labels.
    """
    from sklearn.neighbors import KNeighborsClassifier

    def l2(x):
        x = np.asarray(x, dtype=np.float64)
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

    knn = KNeighborsClassifier(n_neighbors=min(k, len(train_x)), metric="euclidean")
    knn.fit(l2(train_x), np.asarray(train_y))
    pred = knn.predict(l2(test_x))
    if balanced:
        from sklearn.metrics import balanced_accuracy_score

        return float(balanced_accuracy_score(np.asarray(test_y), pred))
    return float((pred == np.asarray(test_y)).mean())
