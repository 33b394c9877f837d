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


def knn_predict(
    train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, k: int = 20,
) -> np.ndarray:
    """Labels ``[N_test]`` predicted by a k-NN classifier (cosine similarity on L2-normalized
    features, uniform votes, as DINO's KNN evaluation)."""
    from sklearn.neighbors import KNeighborsClassifier

    def l2(x):
        x = np.asarray(x, dtype=np.float64)
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

    knn = KNeighborsClassifier(n_neighbors=min(k, len(train_x)), metric="euclidean")
    knn.fit(l2(train_x), np.asarray(train_y))
    return knn.predict(l2(test_x))


def knn_accuracy(
    train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, k: int = 20,
    balanced: bool = False,
) -> float:
    """Accuracy of a k-NN classifier (:func:`knn_predict`).

    ``balanced=True``: the mean of the per-class recalls (chance = 1 / n_classes whatever the class
    frequencies), for imbalanced labels.
    """
    pred = knn_predict(train_x, train_y, test_x, k)
    if balanced:
        from sklearn.metrics import balanced_accuracy_score

        return float(balanced_accuracy_score(np.asarray(test_y), pred))
    return float((pred == np.asarray(test_y)).mean())


def paired_gain_interval(
    correct_new: np.ndarray, correct_base: np.ndarray, n_boot: int = 5000, level: float = 0.95, seed: int = 0,
) -> tuple[float, float, float]:
    """Accuracy gain of one classifier over another on the *same* test items, with a paired
    bootstrap interval: ``(gain, low, high)``.

    ``correct_new``, ``correct_base``: ``[N]`` booleans (item i classified correctly).  Resampling the
    items (not each classifier separately) keeps the pairing, so the interval reflects only the items on
    which the two disagree; a gain whose interval excludes 0 is not an accident of the test sample.
    """
    a = np.asarray(correct_new, dtype=np.float64)
    b = np.asarray(correct_base, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
        raise ValueError(f"expected two [N] arrays of the same length, got {a.shape} and {b.shape}")
    d = a - b
    idx = np.random.default_rng(seed).integers(0, len(d), (n_boot, len(d)))
    boots = d[idx].mean(axis=1)
    tail = (1 - level) / 2
    return float(d.mean()), float(np.quantile(boots, tail)), float(np.quantile(boots, 1 - tail))


# ------------------------------------------------------------------------------------------------
# arrangement probes: is "which tissue touches which" readable from a region representation?
# ------------------------------------------------------------------------------------------------


def token_adjacency_features(grids: np.ndarray, n_clusters: int = 5, seed: int = 0, fit_on: int = 20000) -> np.ndarray:
    """Counts of 4-neighbour pairs of token types, per feature grid: an explicit *locality-aware* reader.

    The tokens of all grids are clustered with k-means (``n_clusters``; on phantom data the clusters are
    the tissue types, since stage-1 features separate them), every cell is replaced by its cluster, and
    each grid is summarized by how often each unordered pair of clusters meets across a cell edge.  No
    weights are learned beyond k-means, so whatever a linear classifier reads from these counts was in
    the stage-1 tokens *and their positions*: it is the ceiling that a region encoder could reach by
    looking at neighbours.

    Args:
        grids: ``[M, D, H, W]`` stage-1 feature grids (:func:`hipt.pretrain.export.region_grids`).

    Returns:
        ``[M, K(K+1)/2]`` float32 counts (upper triangle of the symmetric cluster-pair matrix, diagonal
        included: same-cluster edges measure how compact each tissue is).
    """
    from sklearn.cluster import KMeans

    grids = np.asarray(grids, dtype=np.float32)
    if grids.ndim != 4:
        raise ValueError(f"token_adjacency_features: grids must be [M, D, H, W], got shape {grids.shape}")
    m, d, h, w = grids.shape
    tokens = grids.transpose(0, 2, 3, 1).reshape(-1, d)
    rng = np.random.default_rng(seed)
    fit = tokens[rng.permutation(len(tokens))[:fit_on]]
    km = KMeans(n_clusters, n_init=4, random_state=seed).fit(fit)
    return adjacency_counts(km.predict(tokens).reshape(m, h, w), n_clusters)


def adjacency_counts(labels: np.ndarray, n_types: int) -> np.ndarray:
    """``[M, K(K+1)/2]`` float32: per label map ``[M, H, W]`` (ints in ``0..K-1``), how often each unordered
    pair of labels meets across a cell edge (upper triangle of the symmetric pair matrix, diagonal
    included).  Used on k-means token clusters (:func:`token_adjacency_features`) or on true tissue maps."""
    labels = np.asarray(labels, dtype=np.int64)
    iu = np.triu_indices(n_types)
    out = np.zeros((len(labels), len(iu[0])), np.float32)
    for i, g in enumerate(labels):
        a = np.zeros((n_types, n_types))
        for u, v in ((g[:-1], g[1:]), (g[:, :-1], g[:, 1:])):
            np.add.at(a, (u.ravel(), v.ravel()), 1)
        out[i] = (a + a.T - np.diag(np.diag(a)))[iu]
    return out


def slide_centred(grids: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Feature grids ``[M, D, H, W]`` minus their slide's mean token (``groups``: ``[M]`` slide ids).

    A diagnostic, not part of HIPT: the regions of one slide share its stain and texture draw, which
    shifts all their tokens together.  Removing the per-slide mean shows how much of a region encoder's
    failure to read arrangement on real grids is that shift (chapter 4).
    """
    grids = np.asarray(grids, dtype=np.float32)
    groups = np.asarray(groups)
    if grids.ndim != 4 or len(groups) != len(grids):
        raise ValueError(f"slide_centred: grids [M, D, H, W] and groups [M], got {grids.shape} and {groups.shape}")
    out = grids.copy()
    for g in np.unique(groups):
        m = groups == g
        out[m] -= grids[m].mean(axis=(0, 2, 3), keepdims=True)
    return out


def probe_auc(
    features: dict[str, np.ndarray], y: np.ndarray, groups: np.ndarray | None = None, folds: int = 5, c: float = 0.1,
) -> dict[str, float]:
    """Cross-validated AUC of a logistic-regression probe for a binary region label, per feature set.

    Args:
        features: name → ``[M, F]`` region representations (e.g. mean patch tokens, ViT4K [CLS] tokens,
            :func:`token_adjacency_features`).
        y: ``[M]`` 0/1 labels (e.g. the phantom's ``informative`` flag).
        groups: ``[M]`` slide ids: folds never split a slide (regions of one slide share its stain and
            texture draw, which would leak).  ``None``: stratified folds over regions.
        c: inverse L2 strength of the standardized logistic regression (small data: keep it strong).

    Returns name → the mean over folds of each test fold's AUC (0.5 = chance; folds whose test part has
    one class only are skipped).  Per-fold, not pooled: pooling out-of-fold scores of folds with
    different class ratios biases a feature without signal far *below* 0.5 (each fold's intercept
    follows its training labels, which anti-correlate with its test labels).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import GroupKFold, StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    y = np.asarray(y).astype(int)
    cv = GroupKFold(folds) if groups is not None else StratifiedKFold(folds, shuffle=True, random_state=0)
    splits = [(tr, te) for tr, te in cv.split(np.zeros(len(y)), y, groups) if len(np.unique(y[te])) == 2]
    if not splits:
        raise ValueError("probe_auc: no test fold holds both classes")
    out = {}
    for name, x in features.items():
        x = np.asarray(x, dtype=np.float64)
        aucs = []
        for tr, te in splits:
            clf = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=5000)).fit(x[tr], y[tr])
            aucs.append(roc_auc_score(y[te], clf.predict_proba(x[te])[:, 1]))
        out[name] = float(np.mean(aucs))
    return out
