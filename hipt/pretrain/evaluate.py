"""Probes that show whether pretraining learned something: KNN accuracy on frozen features.

The protocol (used by the book chapters and ``benchmarks/bench_dino_knn.py``): embed a labelled
training set and a held-out test set (drawn from different seeds) with the frozen backbone, L2-normalize
the embeddings, and classify each test item by a majority vote of its ``k`` nearest training items
(cosine similarity; k = 20 as in DINO's ``eval_knn``, uniform votes).  Compare the pretrained teacher
with the same architecture at random initialization.

Two held-out *stain shifts* of the test patches (the KNN training set keeps its colours):

- :func:`od_stain_shift`, the main one: the patches are unmixed into hematoxylin and eosin
  concentrations with the phantom's own stain vectors (Beer–Lambert, optical density) and recomposed
  with other stain vectors, as if the test slides came from another lab.  Each stain moves on its own,
  which DINO's training augmentation (one brightness / contrast / saturation / hue jitter of the whole
  RGB patch) cannot produce.
- :func:`stain_shift`: a colour jitter of the RGB patch.  It is close to DINO's own augmentation, so a
  gain there partly tests the augmentation on itself; kept for comparison.

:func:`stage1_knn_test` runs the whole protocol on fresh phantom patches drawn from ``eval_seed``
(:data:`EVAL_SEED`), and :func:`knn_gain_rows` gives the paired gains with their intervals.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
from sklearn.cluster import KMeans
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score, roc_auc_score
from sklearn.model_selection import GroupKFold, StratifiedKFold
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torchvision.transforms import v2

from hipt.phantom import _E_OD, _GLASS_OD, _H_OD, phantom_patches
from hipt.pretrain.augment import _seeded, eval_patch_transform, to_chw_uint8
from hipt.pretrain.trainer import build_backbone

#: First seed of the stage-1 KNN test's patches (KNN training set, test set, stain shift: ``+0, +1, +2``).
#: Fixed after the cpu preset was chosen and never used to choose it: the settings of that preset were
#: compared on patches of seeds 101–103, which a test of the preset must therefore not reuse.
EVAL_SEED = 7000

#: Test sets of :func:`stage1_knn_test`: the training colours, the stain-vector shift, the colour jitter.
KNN_TESTS = ("same colours", "stain vectors (OD)", "colour jitter")


def stain_shift(images: np.ndarray, seed: int = 0, strength: float = 0.3, hue: float = 0.1) -> np.ndarray:
    """Colour-jittered copies of uint8 patches ``[N, H, W, 3]`` (brightness, contrast and saturation
    factors in ``[1 − strength, 1 + strength]``, hue shift up to ``hue``), deterministic from ``seed``.

    The same kind of change as DINO's colour augmentation (:class:`hipt.pretrain.PatchMultiCrop`), so a
    pretrained model is tested on shifts it was trained to ignore; :func:`od_stain_shift` is the test
    that does not share that augmentation."""
    jitter = v2.ColorJitter(strength, strength, strength, hue)
    out = np.empty_like(images)
    for i, im in enumerate(images):
        with _seeded(seed * 1_000_003 + i):
            out[i] = jitter(to_chw_uint8(im)).permute(1, 2, 0).numpy()
    return out


def phantom_stain_matrix() -> np.ndarray:
    """``[3, 3]`` optical densities per RGB channel of one unit of hematoxylin, one of eosin, and of the
    glass (rows), as :mod:`hipt.phantom` renders them: ``rgb = 255·exp(−(h·H + e·E + glass))``."""
    return np.stack([_H_OD, _E_OD, _GLASS_OD]).astype(np.float64)


def od_stain_shift(
    images: np.ndarray, seed: int = 0, strength: float = 0.2, stains: np.ndarray | None = None,
) -> np.ndarray:
    """Copies of uint8 H&E patches ``[N, H, W, 3]`` stained with other stain vectors, one draw per patch.

    Each patch is converted to optical density (``od = −ln(rgb / 255)``) and unmixed by least squares
    into hematoxylin and eosin concentrations with the stain vectors ``stains`` (rows H, E, glass; the
    phantom's by default, :func:`phantom_stain_matrix`).  Each of the two stain vectors is then scaled
    per RGB channel by factors drawn uniformly in ``[1 − strength, 1 + strength]``, which changes both its
    hue and its amount, independently for H and E, and the patch is recomposed.  What the unmixing
    does not explain (sensor noise, clipping) is added back unchanged, so ``strength=0`` returns the
    patches as they were.

    ``strength = 0.2``: the ±20 % range of the "HED-strong" stain augmentation of Tellez et al. (2019,
    ±5 % for their "HED-light"), here applied to each channel of each stain vector; chosen before any
    model was evaluated with it.  Deterministic from ``seed``.
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"od_stain_shift: expected uint8 [N, H, W, 3] patches, got {images.dtype} {images.shape}")
    if not 0 <= strength < 1:
        raise ValueError(f"od_stain_shift: strength must be in [0, 1), got {strength}")
    m = phantom_stain_matrix() if stains is None else np.asarray(stains, np.float64)
    if m.shape != (3, 3):
        raise ValueError(f"od_stain_shift: stains must be [3, 3] (rows H, E, glass), got {m.shape}")
    he, glass = m[:2], m[2]
    unmix = np.linalg.pinv(he)  # [3, 2]: optical density above the glass → (h, e)
    factors = np.random.default_rng(seed).uniform(1 - strength, 1 + strength, (len(images), 2, 3))
    out = np.empty_like(images)
    for i, im in enumerate(images):
        od = -np.log(np.maximum(im.astype(np.float64), 0.5) / 255.0) - glass  # [H, W, 3]
        conc = od @ unmix  # [H, W, 2]
        residual = od - conc @ he
        shifted = conc @ (he * factors[i]) + residual + glass
        out[i] = np.clip(np.rint(255.0 * np.exp(-shifted)), 0, 255).astype(np.uint8)
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


def random_init_backbone(config) -> nn.Module:
    """The backbone of a :class:`hipt.pretrain.PretrainConfig` at random initialization (seeded by its
    ``seed``, eval mode, no stochastic depth): the baseline of the KNN test.  The global torch RNG is
    left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        return build_backbone(config, drop_path_rate=0.0).eval()


def stage1_knn_test(
    models: dict[str, nn.Module],
    normalization: str = "hipt",
    *,
    n_eval: int = 400,
    size: int = 128,
    k: int = 20,
    eval_seed: int = EVAL_SEED,
    od_strength: float = 0.2,
    device: str = "cpu",
    colour_reference: bool = True,
) -> dict[str, dict[str, np.ndarray]]:
    """The stage-1 KNN test of tissue type: which held-out phantom patches each model classifies right.

    ``n_eval`` labelled patches of ``size`` px from seed ``eval_seed`` train the KNN (k = ``k``, cosine on
    the [CLS] embeddings), ``n_eval`` from ``eval_seed + 1`` are the test set, classified as they are
    ("same colours"), after :func:`od_stain_shift` ("stain vectors (OD)", seed ``eval_seed + 2``) and after
    :func:`stain_shift` ("colour jitter", seed ``eval_seed + 2``).

    ``colour_reference``: also classify with :func:`colour_statistics` (no network) under the name
    ``"colour statistics"``: where it stays accurate, colour alone still identifies the tissue and the test
    cannot show a gain of *morphology*.

    Returns ``{model name: {test name (KNN_TESTS): [n_eval] bool, True where classified right}}``.
    """
    x_tr, y_tr = phantom_patches(n_eval, seed=eval_seed, size=size)
    x_te, y_te = phantom_patches(n_eval, seed=eval_seed + 1, size=size)
    tests = {
        "same colours": x_te,
        "stain vectors (OD)": od_stain_shift(x_te, seed=eval_seed + 2, strength=od_strength),
        "colour jitter": stain_shift(x_te, seed=eval_seed + 2),
    }
    out: dict[str, dict[str, np.ndarray]] = {}
    for name, model in models.items():
        f_tr = embed_patches(model, x_tr, normalization, device=device)
        out[name] = {test: knn_predict(f_tr, y_tr, embed_patches(model, x, normalization, device=device), k=k) == y_te
                     for test, x in tests.items()}
    if colour_reference:
        f_tr = colour_statistics(x_tr)
        mean, std = f_tr.mean(0), f_tr.std(0) + 1e-6  # standardized with the training set's statistics
        out["colour statistics"] = {test: knn_predict((f_tr - mean) / std, y_tr, (colour_statistics(x) - mean) / std,
                                                      k=k) == y_te for test, x in tests.items()}
    return out


def colour_statistics(images: np.ndarray) -> np.ndarray:
    """``[N, 6]``: the mean and standard deviation of each RGB channel of uint8 patches ``[N, H, W, 3]``,
    a description of a patch by its colours alone (no network, no arrangement of pixels)."""
    x = np.asarray(images, dtype=np.float64).reshape(len(images), -1, 3)
    return np.concatenate([x.mean(1), x.std(1)], axis=1)


def knn_gain_rows(
    correct: dict[str, dict[str, np.ndarray]], new: str = "DINO", base: str = "random init", seed: int = 0,
) -> list[dict]:
    """Per test of :func:`stage1_knn_test`: both accuracies and the paired gain of ``new`` over ``base``
    with its 95 % bootstrap interval (:func:`paired_gain_interval`).

    Rows: ``test``, ``acc_base``, ``acc_new``, ``gain``, ``low``, ``high``, ``n`` (test patches) and
    ``disagree`` (patches on which exactly one of the two is right).
    """
    rows = []
    for test in correct[new]:
        a, b = correct[new][test], correct[base][test]
        g, lo, hi = paired_gain_interval(a, b, seed=seed)
        rows.append({"test": test, "acc_base": float(np.mean(b)), "acc_new": float(np.mean(a)), "gain": g,
                     "low": lo, "high": hi, "n": int(len(a)), "disagree": int(np.sum(a != b))})
    return rows


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
        grids: ``[M, D, H, W]`` stage-1 feature grids (:func:`hipt.phantom.ground_truth.region_grids`).

    Returns:
        ``[M, K(K+1)/2]`` float32 counts (upper triangle of the symmetric cluster-pair matrix, diagonal
        included: same-cluster edges measure how compact each tissue is).
    """
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
