"""Slide-level models over pre-extracted features: HIPT and the paper's multiple-instance baselines.

Every model reads the same bag, the dict that :mod:`hipt.tasks.datasets` builds from one ``hipt extract``
file (or from the slides of one patient, concatenated along M):

- ``feats256`` ``[M, n, D]``: the ViT-256 [CLS] token of each of the n patches of each of the M regions
  (row-major within a region; n = 256 for 4096-px regions, 64 for the CPU book's 1024-px regions of 128-px patches);
- ``feats4k`` ``[M, D4k]`` (optional): the ViT-4096 [CLS] token of each region;
- ``coords`` ``[M, 2]`` (optional): each region's level-0 top-left ``(x, y)`` in pixels.

and has the same interface::

    out = model(bag, label=None)   # label: [1] long, used only by CLAM's instance loss in training
    out["logits"]        # [1, n_outputs]: class logits, or the K time-bin logits in survival mode
    out["attention"]     # optional: the model's attention over its instances ([M] regions or [M·n] patches)
    out["extra_loss"]    # optional: a scalar added to the task loss (CLAM's instance-clustering loss)
    out["aux_logits"]    # optional: logits on which the task loss is applied too (DS-MIL's max instance)

The head is the training loop's business (:mod:`hipt.tasks.train`): softmax + cross-entropy for
classification; ``hazards = sigmoid(logits)``, ``S = cumprod(1 − hazards)`` and the discrete-time NLL for
survival.  So each model works for both tasks with ``n_outputs`` = number of classes or of time bins.

Methods (names as in ``hipt finetune --method``):

==================  =====================================================================================
``hipt``            HIPT-LGP-FC (:class:`hipt.models.HIPTSlide`): ViT-4096 over each region's patch-token
                    grid (frozen pretrained by default, or fine-tuned, or from scratch), then a 2-layer
                    transformer and gated attention over regions.  Frozen: reads ``feats4k`` directly.
``hipt_n``          HIPT without the ViT-4096 (the reference's ``HIPT_None_FC``): gated attention pooling
                    of each region's patch tokens, then gated attention over regions.
``mean``            mean pooling of the (embedded) patch tokens.
``abmil``           gated attention MIL (Ilse et al. 2018) over the patch tokens.
``clam_sb``         CLAM single-branch (Lu et al. 2021): ABMIL + instance-level clustering loss.
``dsmil``           DS-MIL (Li et al. 2021): max-instance classifier + critical-instance attention.
``deepattnmisl``    DeepAttnMISL (Yao et al. 2020): k-means phenotypes → Siamese MLP → attention.
``gcn``             GCN-MIL (in the spirit of Patch-GCN, Chen et al. 2021): GCN over the patch grid.
``transmil``        TransMIL (Shao et al. 2021): transformer with PPEG; standard (not Nyström) attention.
``hipt_gp``         HIPT's global part alone (the reference's ``HIPT_GP_FC``, :class:`hipt.models.HIPTGP`)
                    on the region tokens ``feats4k`` ``[M, 192]``, e.g. the reference's released embeddings.
``mil``             instance-level MIL (the reference's ``MIL_fc``/``MIL_fc_mc``): an MLP scores every
                    instance, the bag takes the logits of its top-scoring instance.
==================  =====================================================================================

The baselines operate on the flattened patch tokens ``[M·n, D]`` (the "256-level bag"), or on the region
tokens ``[M, D4k]`` when the bag has no patch tokens (a released ``[M, 192]`` file; ``hipt finetune
--tokens region``); HIPT and ``hipt_n`` keep the region structure.  Use :func:`build_model` to make any of them by name.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from hipt.models.slide_heads import HIPTGP, AttnNetGated, HIPTSlide

__all__ = [
    "METHODS",
    "MILModel",
    "HIPTMIL",
    "HIPTGPMIL",
    "InstanceMIL",
    "StandardizedInput",
    "HIPTNone",
    "MeanMIL",
    "ABMIL",
    "CLAMSB",
    "DSMIL",
    "DeepAttnMISL",
    "GCNMIL",
    "TransMIL",
    "build_model",
    "count_parameters",
    "smooth_top1_svm_loss",
    "kmeans",
    "patch_positions",
    "grid8_edges",
    "knn_edges",
]

Bag = dict[str, torch.Tensor]


def _tokens(bag: Bag) -> torch.Tensor:
    """The bag's instances: flattened patch tokens ``[M·n, D]``, or its region tokens ``[M, D4k]`` when it
    holds no patch tokens (a bag read with ``keys=("feats4k",)``)."""
    if "feats256" not in bag and "feats4k" in bag:
        x = bag["feats4k"]
        x = x[0] if x.ndim == 3 and x.shape[0] == 1 else x
        if x.ndim != 2:
            raise ValueError(f"feats4k must be [M, D], got {tuple(x.shape)}")
        return x.float()
    x = bag["feats256"]
    if x.ndim == 4 and x.shape[0] == 1:  # a batch of one from a DataLoader
        x = x[0]
    if x.ndim != 3:
        raise ValueError(f"feats256 must be [M, n, D], got {tuple(x.shape)}")
    return x.reshape(-1, x.shape[-1]).float()


def _mlp(d_in: int, d_out: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, d_out), nn.ReLU(), nn.Dropout(dropout))


def _attention_pool(attn: AttnNetGated, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Gated-attention pooling: ``h [N, H]`` → (pooled ``[1, H]``, softmax weights ``[N]``)."""
    scores, _ = attn(h)  # [N, 1]
    weights = F.softmax(scores[:, 0], dim=0)
    return weights[None] @ h, weights


class MILModel(nn.Module):
    """Base class: every model maps a bag to a dict with at least ``logits`` ``[1, n_outputs]``."""

    method: str = ""

    def forward(self, bag: Bag, label: torch.Tensor | None = None) -> dict[str, torch.Tensor]:  # pragma: no cover
        raise NotImplementedError


# ---------------------------------------------------------------------------------------------- HIPT
class HIPTMIL(MILModel):
    """HIPT-LGP-FC behind the common interface: a thin wrapper of :class:`hipt.models.HIPTSlide`.

    Args:
        n_outputs: classes, or time bins in survival mode.
        local: ``"frozen"`` (default: the pretrained ViT-4096 is not trained; if the bag carries
            ``feats4k`` — extracted with that same ViT-4096 — they are used directly and the ViT is
            skipped: identical outputs, much faster), ``"finetune"`` or ``"scratch"``.
        local_vit: the ViT-4096 module (e.g. ``hipt.book.zoo`` 's stage-2 model, or ``vit4k_xs`` with the
            released weights).  Needed unless ``local="frozen"`` and every bag has ``feats4k``.
        vit4k_weights: weights for a default ViT-XS when ``local_vit`` is None.
        use_feats4k: use the bag's ``feats4k`` in frozen mode (default True).
    """

    method = "hipt"

    def __init__(
        self,
        n_outputs: int,
        local: Literal["frozen", "finetune", "scratch"] = "frozen",
        local_vit: nn.Module | None = None,
        vit4k_weights: Any = None,
        dropout: float = 0.25,
        use_feats4k: bool = True,
    ) -> None:
        super().__init__()
        with warnings.catch_warnings():
            # frozen mode on precomputed feats4k never runs the local ViT: random init is harmless then
            if use_feats4k and local == "frozen":
                warnings.simplefilter("ignore", UserWarning)
            self.slide = HIPTSlide(
                n_outputs, local=local, local_vit=local_vit, vit4k_weights=vit4k_weights, dropout=dropout
            )
        self.use_feats4k = use_feats4k and local == "frozen"
        # a frozen ViT-4096 with random weights is the reference's silent failure (issues #36, #56)
        self._random_frozen = local == "frozen" and local_vit is None and vit4k_weights is None

    def forward(self, bag: Bag, label: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        x = bag.get("feats4k") if self.use_feats4k else None
        if x is None:
            if self._random_frozen:
                raise ValueError(
                    "HIPT (frozen) got a bag without feats4k and has no pretrained ViT-4096: pass local_vit= or "
                    "vit4k_weights=, or extract feats4k with 'hipt extract --vit4k ...'"
                )
            x = bag["feats256"]
        out = self.slide(x.float())
        return {"logits": out["logits"], "attention": out["attention"]}


class HIPTGPMIL(MILModel):
    """HIPT-GP-FC behind the common interface (:class:`hipt.models.HIPTGP` on the bag's ``feats4k``)."""

    method = "hipt_gp"

    def __init__(self, in_dim: int, n_outputs: int, dropout: float = 0.25) -> None:
        super().__init__()
        self.slide = HIPTGP(n_outputs, embed_dim=in_dim, dropout=dropout)

    def forward(self, bag: Bag, label: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        if "feats4k" not in bag:
            raise ValueError("hipt_gp reads region tokens feats4k [M, 192]: the bag has none "
                             "(extract with a ViT-4K, or use the reference's released [M, 192] embeddings)")
        out = self.slide(bag["feats4k"].float())
        return {"logits": out["logits"], "attention": out["attention"]}


class InstanceMIL(MILModel):
    """Instance-level MIL, the reference's ``MIL_fc`` (2 outputs) and ``MIL_fc_mc`` (more).

    ``h = Dropout(ReLU(W x))`` per instance; per-instance logits ``[K, C]`` from one ``Linear(H, 1)`` per
    output (as ``MIL_fc_mc``; for two outputs the same function as ``MIL_fc``'s ``Linear(H, 2)``); the bag's logits are those of
    its top instance: the one with the highest softmax probability of output 1 (two outputs), or with the
    highest probability of any output (more).  Hidden size = input size, Xavier-normal weights and zero
    biases, as the reference's ``initialize_weights``.  The bag's gradient flows through one instance.
    """

    method = "mil"

    def __init__(self, in_dim: int, n_outputs: int, dropout: float = 0.25) -> None:
        super().__init__()
        self.fc = _mlp(in_dim, in_dim, dropout)
        self.classifiers = nn.ModuleList([nn.Linear(in_dim, 1) for _ in range(n_outputs)])
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_normal_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, bag: Bag, label: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        h = self.fc(_tokens(bag))  # [K, H]
        logits = torch.cat([c(h) for c in self.classifiers], dim=1)  # [K, C]
        probs = F.softmax(logits, dim=1)
        score = probs[:, 1] if logits.shape[1] == 2 else probs.max(dim=1).values
        top = int(score.argmax())
        return {"logits": logits[top : top + 1], "attention": F.one_hot(torch.tensor(top), len(h)).float()}


class HIPTNone(MILModel):
    """HIPT without the ViT-4096 (reference ``HIPT_None_FC``, ``--model_type hipt_n``).

    Local: ``Linear(D, H) + ReLU + Dropout``, then gated attention over each region's n patch tokens
    (batched over regions) → region embeddings ``[M, H]``.  Global: ``Linear + ReLU + Dropout``, gated
    attention over regions, ``rho = Linear + ReLU + Dropout``, ``Linear(H, n_outputs)``.  H = 256 as the
    reference's "small" size.  No transformer and no spatial information inside a region: the region
    embedding is a permutation-invariant pooling of its patches.
    """

    method = "hipt_n"

    def __init__(self, in_dim: int, n_outputs: int, hidden: int = 256, dropout: float = 0.25) -> None:
        super().__init__()
        self.local_phi = _mlp(in_dim, hidden, dropout)
        self.local_attn_pool = AttnNetGated(L=hidden, D=hidden, dropout=dropout, n_out=1)
        self.global_phi = _mlp(hidden, hidden, dropout)
        self.global_attn_pool = AttnNetGated(L=hidden, D=hidden, dropout=dropout, n_out=1)
        self.global_rho = _mlp(hidden, hidden, dropout)
        self.classifier = nn.Linear(hidden, n_outputs)

    def forward(self, bag: Bag, label: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        x = bag["feats256"].float()
        if x.ndim == 4 and x.shape[0] == 1:
            x = x[0]
        h = self.local_phi(x)  # [M, n, H]
        a, _ = self.local_attn_pool(h)  # [M, n, 1]
        a = F.softmax(a[..., 0], dim=1)  # [M, n]
        regions = torch.einsum("mn,mnh->mh", a, h)
        h_slide, w = _attention_pool(self.global_attn_pool, self.global_phi(regions))
        logits = self.classifier(self.global_rho(h_slide))
        return {"logits": logits, "attention": w, "patch_attention": a}


# ------------------------------------------------------------------------------------ patch-level MIL
class MeanMIL(MILModel):
    """Mean pooling: ``Linear(D, H) + ReLU + Dropout`` per patch token, mean over the bag, ``Linear(H, C)``."""

    method = "mean"

    def __init__(self, in_dim: int, n_outputs: int, hidden: int = 256, dropout: float = 0.25) -> None:
        super().__init__()
        self.phi = _mlp(in_dim, hidden, dropout)
        self.classifier = nn.Linear(hidden, n_outputs)

    def forward(self, bag: Bag, label: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        h = self.phi(_tokens(bag)).mean(dim=0, keepdim=True)
        return {"logits": self.classifier(h)}


class ABMIL(MILModel):
    """Gated attention MIL (Ilse et al. 2018): embed, gated attention weights, weighted mean, classify.

    ``h_i = ReLU(W x_i)``; ``a_i = softmax_i(w^T (tanh(V h_i) ⊙ sigmoid(U h_i)))``; ``z = Σ a_i h_i``;
    logits ``= rho(z)`` with ``rho = Linear + ReLU + Dropout`` then ``Linear(H, C)`` (as CLAM's heads).
    """

    method = "abmil"

    def __init__(
        self, in_dim: int, n_outputs: int, hidden: int = 256, attn_dim: int = 128, dropout: float = 0.25
    ) -> None:
        super().__init__()
        self.phi = _mlp(in_dim, hidden, dropout)
        self.attn = AttnNetGated(L=hidden, D=attn_dim, dropout=dropout, n_out=1)
        self.rho = _mlp(hidden, hidden, dropout)
        self.classifier = nn.Linear(hidden, n_outputs)

    def embed(self, bag: Bag) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h = self.phi(_tokens(bag))
        z, w = _attention_pool(self.attn, h)
        return h, z, w

    def forward(self, bag: Bag, label: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        _, z, w = self.embed(bag)
        return {"logits": self.classifier(self.rho(z)), "attention": w}


def smooth_top1_svm_loss(logits: torch.Tensor, target: torch.Tensor, alpha: float = 1.0, tau: float = 1.0) -> torch.Tensor:
    """Smooth top-1 multi-class SVM loss (Berrada et al. 2018), CLAM's instance loss (``SmoothTop1SVM``).

    ``L = τ · log Σ_j exp((s_j + α·[j ≠ y]) / τ) − s_y``, the log-sum-exp smoothing of the hinge
    ``max_j (s_j + α·[j ≠ y]) − s_y``; mean over the batch.  ``logits [B, C]``, ``target [B]``.
    """
    margin = alpha * (1.0 - F.one_hot(target, logits.shape[1]).to(logits.dtype))
    return (tau * torch.logsumexp((logits + margin) / tau, dim=1) - logits.gather(1, target[:, None])[:, 0]).mean()


class CLAMSB(ABMIL):
    """CLAM single-branch (Lu et al. 2021): ABMIL plus an instance-level clustering loss.

    In training (``label`` given) for each class c an instance classifier ``Linear(H, 2)`` is trained on
    pseudo-labels: if c is the slide's class, the k most attended patches are positives and the k least
    attended negatives; otherwise (``subtyping=True``, classes mutually exclusive) the k most attended
    are negatives.  The instance loss (smooth top-1 SVM, or cross-entropy) is averaged over classes.
    CLAM optimizes ``0.7 · bag_loss + 0.3 · instance_loss``; we return ``extra_loss = (0.3/0.7) ·
    instance_loss`` so that the loop's ``bag_loss + extra_loss`` is the same objective divided by 0.7
    (Adam is insensitive to that scale).  k shrinks to ``N // 2`` for small bags.  In survival mode the
    time bin plays the role of the class.
    """

    method = "clam_sb"

    def __init__(
        self,
        in_dim: int,
        n_outputs: int,
        hidden: int = 256,
        attn_dim: int = 128,
        dropout: float = 0.25,
        k_sample: int = 8,
        inst_loss: Literal["svm", "ce"] = "svm",
        bag_weight: float = 0.7,
        subtyping: bool = True,
    ) -> None:
        super().__init__(in_dim, n_outputs, hidden, attn_dim, dropout)
        if inst_loss not in ("svm", "ce"):
            raise ValueError(f"inst_loss must be 'svm' or 'ce', not {inst_loss!r}")
        self.instance_classifiers = nn.ModuleList(nn.Linear(hidden, 2) for _ in range(n_outputs))
        self.k_sample = k_sample
        self.inst_loss = inst_loss
        self.inst_weight = (1.0 - bag_weight) / bag_weight
        self.subtyping = subtyping

    def _instance_loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.inst_loss == "svm":
            return smooth_top1_svm_loss(logits, target)
        return F.cross_entropy(logits, target)

    def instance_loss(self, h: torch.Tensor, w: torch.Tensor, label: int) -> torch.Tensor:
        k = min(self.k_sample, h.shape[0] // 2)
        if k == 0:
            return h.new_zeros(())
        top = torch.topk(w, k).indices
        bottom = torch.topk(-w, k).indices
        total = h.new_zeros(())
        for c, clf in enumerate(self.instance_classifiers):
            if c == label:  # in-class: top k → 1, bottom k → 0
                idx = torch.cat([top, bottom])
                target = torch.cat([torch.ones(k), torch.zeros(k)]).long().to(h.device)
            elif self.subtyping:  # out-of-class: the top k cannot show class c
                idx, target = top, torch.zeros(k, dtype=torch.long, device=h.device)
            else:
                continue
            total = total + self._instance_loss(clf(h[idx]), target)
        return total / len(self.instance_classifiers) if self.subtyping else total

    def forward(self, bag: Bag, label: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        h, z, w = self.embed(bag)
        out = {"logits": self.classifier(self.rho(z)), "attention": w}
        if label is not None and self.training:
            out["extra_loss"] = self.inst_weight * self.instance_loss(h, w.detach(), int(label.reshape(-1)[0]))
        return out


class DSMIL(MILModel):
    """DS-MIL (Li et al. 2021): a max-instance stream and a critical-instance attention stream.

    Instance stream: ``s_i = W x_i`` (``[N, C]``), the max-scoring instance per class gives
    ``aux_logits = max_i s_i`` (the loop applies the task loss to it too, as DS-MIL's
    ``0.5·bag + 0.5·max`` loss).  Bag stream: ``q_i = tanh(Q₂ ReLU(Q₁ x_i))``, critical instances
    ``m_c = argmax_i s_ic``, attention ``A = softmax_i(q_i · q_{m_c} / √d_q)`` (``[N, C]``),
    ``B = Aᵀ v`` with ``v_i = ReLU(V x_i)`` (``[C, D]``), and a ``Conv1d(C, C, kernel=D)`` → bag logits.
    """

    method = "dsmil"

    def __init__(self, in_dim: int, n_outputs: int, q_dim: int = 128, dropout: float = 0.25) -> None:
        super().__init__()
        self.instance_classifier = nn.Linear(in_dim, n_outputs)
        self.q = nn.Sequential(nn.Linear(in_dim, q_dim), nn.ReLU(), nn.Linear(q_dim, q_dim), nn.Tanh())
        self.v = nn.Sequential(nn.Dropout(dropout), nn.Linear(in_dim, in_dim), nn.ReLU())
        self.fcc = nn.Conv1d(n_outputs, n_outputs, kernel_size=in_dim)

    def forward(self, bag: Bag, label: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        x = _tokens(bag)
        s = self.instance_classifier(x)  # [N, C]
        crit = s.argmax(dim=0)  # [C]
        q = self.q(x)  # [N, dq]
        a = F.softmax(q @ q[crit].T / math.sqrt(q.shape[1]), dim=0)  # [N, C]
        b = a.T @ self.v(x)  # [C, D]
        logits = self.fcc(b[None])[..., 0]  # [1, C]
        return {"logits": logits, "aux_logits": s.max(dim=0, keepdim=True).values, "attention": a.mean(dim=1)}


def kmeans(x: torch.Tensor, k: int, iters: int = 20, seed: int = 0) -> torch.Tensor:
    """Cluster ids ``[N]`` of k-means (k-means++ init from a fixed seed, Lloyd iterations): deterministic.

    Works on any device; k is reduced to N when the bag is smaller.
    """
    n = x.shape[0]
    k = min(k, n)
    g = torch.Generator(device="cpu").manual_seed(seed)
    x = x.detach().float()
    centres = [x[int(torch.randint(n, (1,), generator=g))]]
    d2 = ((x - centres[0]) ** 2).sum(1)
    for _ in range(1, k):
        p = (d2 / d2.sum()).cpu() if d2.sum() > 0 else torch.full((n,), 1.0 / n)
        c = x[int(torch.multinomial(p, 1, generator=g))]
        centres.append(c)
        d2 = torch.minimum(d2, ((x - c) ** 2).sum(1))
    c = torch.stack(centres)
    assign = torch.cdist(x, c).argmin(1)
    for _ in range(iters):
        new = torch.zeros_like(c).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k).clamp_min(1).to(x.dtype)
        c = torch.where(torch.bincount(assign, minlength=k)[:, None] > 0, new / counts[:, None], c)
        new_assign = torch.cdist(x, c).argmin(1)
        if torch.equal(new_assign, assign):
            break
        assign = new_assign
    return assign


class DeepAttnMISL(MILModel):
    """DeepAttnMISL (Yao et al. 2020): cluster the bag into phenotypes, embed each, attend over them.

    1. k-means (k = ``n_clusters``, 8 by default; deterministic, on the frozen features, no gradient)
       groups the bag's patch tokens into phenotype clusters;
    2. a Siamese MLP (the same ``Linear+ReLU+Dropout`` ×2 for every cluster; the original's 1×1 convs)
       embeds each token, and each cluster is average-pooled → ``[K, H]``;
    3. gated attention over the K cluster embeddings, ``rho``, ``Linear(H, C)``.

    ``attention`` is returned per patch token (its cluster's weight).
    """

    method = "deepattnmisl"

    def __init__(
        self, in_dim: int, n_outputs: int, hidden: int = 256, n_clusters: int = 8, dropout: float = 0.25
    ) -> None:
        super().__init__()
        self.n_clusters = n_clusters
        self.phi = nn.Sequential(_mlp(in_dim, hidden, dropout), _mlp(hidden, hidden, dropout))
        self.attn = AttnNetGated(L=hidden, D=hidden, dropout=dropout, n_out=1)
        self.rho = _mlp(hidden, hidden, dropout)
        self.classifier = nn.Linear(hidden, n_outputs)

    def forward(self, bag: Bag, label: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        x = _tokens(bag)
        cluster = bag.get("clusters")
        if cluster is None:
            cluster = kmeans(x, self.n_clusters)
        k = int(cluster.max()) + 1
        h = self.phi(x)
        counts = torch.bincount(cluster, minlength=k)
        sums = torch.zeros(k, h.shape[1], device=h.device, dtype=h.dtype).index_add(0, cluster, h)
        present = counts > 0
        z = sums[present] / counts[present, None].to(h.dtype)  # [K', H]
        pooled, w = _attention_pool(self.attn, z)
        per_cluster = torch.zeros(k, device=h.device, dtype=w.dtype)
        per_cluster[present] = w
        return {"logits": self.classifier(self.rho(pooled)), "attention": per_cluster[cluster]}


# ------------------------------------------------------------------------------------------ GCN-MIL
def patch_positions(bag: Bag, patch_px: float = 256.0, grid: tuple[int, int] | None = None) -> torch.Tensor:
    """Level-0 positions ``[M·n, 2]`` (x, y) of the bag's patch tokens.

    Token t of region m sits at ``coords[m] + patch_px · (t mod cols, t div cols)`` (row-major).  Without
    ``coords`` the regions are laid side by side on one row.
    """
    x = bag["feats256"]
    if x.ndim == 4 and x.shape[0] == 1:
        x = x[0]
    m, n = x.shape[:2]
    if grid is None:
        side = math.isqrt(n)
        if side * side != n:
            raise ValueError(f"{n} patch tokens per region is not a square grid; pass grid=(rows, cols)")
        grid = (side, side)
    rows, cols = grid
    dev = x.device
    coords = bag.get("coords")
    if coords is None:
        coords = torch.stack([torch.arange(m, device=dev) * cols * patch_px, torch.zeros(m, device=dev)], dim=1)
    coords = coords.reshape(m, 2).to(device=dev, dtype=torch.float64)
    t = torch.arange(n, device=dev)
    offs = torch.stack([(t % cols), (t // cols)], dim=1).to(torch.float64) * patch_px  # [n, 2]
    return (coords[:, None, :] + offs[None]).reshape(-1, 2)


def grid8_edges(pos: torch.Tensor, patch_px: float = 256.0) -> torch.Tensor:
    """8-neighbour edges ``[2, E]`` (both directions) between patches on the ``patch_px`` grid.

    Positions are snapped to integer grid cells; neighbours are found by binary search on sorted cell
    keys, O(N log N) time and O(N) memory (no N×N distance matrix).
    """
    g = torch.round(pos / patch_px).long()
    g = g - g.min(0).values + 1
    width = int(g[:, 1].max()) + 2
    key = g[:, 0] * width + g[:, 1]
    order = torch.argsort(key)
    sorted_key = key[order]
    src, dst = [], []
    for dx in (-1, 0, 1):
        for dy in (-1, 0, 1):
            if dx == 0 and dy == 0:
                continue
            target = key + dx * width + dy
            j = torch.searchsorted(sorted_key, target).clamp_max(len(key) - 1)
            hit = sorted_key[j] == target
            src.append(torch.nonzero(hit)[:, 0])
            dst.append(order[j[hit]])
    return torch.stack([torch.cat(src), torch.cat(dst)])


def knn_edges(pos: torch.Tensor, k: int = 8, chunk: int = 4096) -> torch.Tensor:
    """Symmetrized k-nearest-neighbour edges ``[2, E]`` on positions (computed in row chunks)."""
    n = pos.shape[0]
    k = min(k, n - 1)
    if k <= 0:
        return torch.zeros(2, 0, dtype=torch.long, device=pos.device)
    p = pos.float()
    nbrs = []
    for s in range(0, n, chunk):
        d = torch.cdist(p[s : s + chunk], p)
        rows = torch.arange(d.shape[0], device=pos.device)
        d[rows, rows + s] = float("inf")
        nbrs.append(d.topk(k, largest=False).indices)
    dst = torch.cat(nbrs).reshape(-1)
    src = torch.arange(n, device=pos.device).repeat_interleave(k)
    e = torch.cat([torch.stack([src, dst]), torch.stack([dst, src])], dim=1)
    return torch.unique(e, dim=1)


class GCNLayer(nn.Module):
    """Graph convolution (Kipf & Welling): ``H' = D̂^{-1/2} (A + I) D̂^{-1/2} H W``, in plain PyTorch."""

    def __init__(self, d_in: int, d_out: int) -> None:
        super().__init__()
        self.lin = nn.Linear(d_in, d_out)

    def forward(self, h: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
        h = self.lin(h)
        src, dst = edges
        deg = torch.bincount(dst, minlength=h.shape[0]).to(h.dtype) + 1.0
        inv = deg.rsqrt()
        msg = h[src] * (inv[src] * inv[dst])[:, None]
        return torch.zeros_like(h).index_add(0, dst, msg) + h / deg[:, None]


class GCNMIL(MILModel):
    """GCN-MIL: a graph over the patches' slide coordinates, GCN message passing, attention pooling.

    Nodes are the patch tokens at their level-0 positions (:func:`patch_positions`); edges join the 8
    grid neighbours (``adjacency="grid8"``, default; also across region borders when regions touch) or
    the k nearest patches (``adjacency="knn"``).  ``Linear+ReLU+Dropout`` embedding, ``n_layers`` GCN
    layers with residual connections, the layer outputs concatenated (as Patch-GCN's DeeperGCN) and
    projected back to H, gated attention, ``rho``, ``Linear(H, C)``.
    """

    method = "gcn"

    def __init__(
        self,
        in_dim: int,
        n_outputs: int,
        hidden: int = 256,
        n_layers: int = 3,
        adjacency: Literal["grid8", "knn"] = "grid8",
        k: int = 8,
        patch_px: float = 256.0,
        dropout: float = 0.25,
    ) -> None:
        super().__init__()
        if adjacency not in ("grid8", "knn"):
            raise ValueError(f"adjacency must be 'grid8' or 'knn', not {adjacency!r}")
        self.adjacency, self.k, self.patch_px = adjacency, k, patch_px
        self.phi = _mlp(in_dim, hidden, dropout)
        self.layers = nn.ModuleList(GCNLayer(hidden, hidden) for _ in range(n_layers))
        self.drop = nn.Dropout(dropout)
        self.path_phi = _mlp(hidden * (n_layers + 1), hidden, dropout)
        self.attn = AttnNetGated(L=hidden, D=hidden, dropout=dropout, n_out=1)
        self.rho = _mlp(hidden, hidden, dropout)
        self.classifier = nn.Linear(hidden, n_outputs)

    def edges(self, bag: Bag) -> torch.Tensor:
        pos = patch_positions(bag, self.patch_px)
        if self.adjacency == "grid8":
            return grid8_edges(pos, self.patch_px)
        return knn_edges(pos, self.k)

    def forward(self, bag: Bag, label: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        x = _tokens(bag)
        edges = bag.get("edges")
        if edges is None:
            edges = self.edges(bag)
        edges = edges.to(x.device)
        h = self.phi(x)
        outs = [h]
        for layer in self.layers:
            h = h + self.drop(F.relu(layer(h, edges)))
            outs.append(h)
        h = self.path_phi(torch.cat(outs, dim=1))
        z, w = _attention_pool(self.attn, h)
        return {"logits": self.classifier(self.rho(z)), "attention": w}


# ----------------------------------------------------------------------------------------- TransMIL
class _SelfAttention(nn.Module):
    """Pre-norm multi-head self-attention block ``x + Attn(LN(x))`` with fused SDPA."""

    def __init__(self, dim: int, heads: int = 8, dropout: float = 0.1) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.heads, self.dropout = heads, dropout

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, n, d = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        o = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        # attention of the [CLS] query only (cheap: one row), averaged over heads, for inspection
        cls_attn = F.softmax(q[:, :, :1] @ k.transpose(-1, -2) * (d // self.heads) ** -0.5, dim=-1)
        return x + self.proj(o.transpose(1, 2).reshape(b, n, d)), cls_attn.mean(1)[0, 0]


class PPEG(nn.Module):
    """TransMIL's pyramid position encoding generator: depthwise 7×7, 5×5 and 3×3 convs on the token square."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj7 = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.proj5 = nn.Conv2d(dim, dim, 5, padding=2, groups=dim)
        self.proj3 = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)

    def forward(self, x: torch.Tensor, side: int) -> torch.Tensor:
        cls, feat = x[:, :1], x[:, 1:]
        b, n, d = feat.shape
        g = feat.transpose(1, 2).reshape(b, d, side, side)
        g = g + self.proj7(g) + self.proj5(g) + self.proj3(g)
        return torch.cat([cls, g.flatten(2).transpose(1, 2)], dim=1)


class TransMIL(MILModel):
    """TransMIL (Shao et al. 2021): ``Linear+ReLU`` embedding, tokens padded to a square (repeating the
    first ones), [CLS], attention block, PPEG, attention block, LayerNorm, [CLS] → ``Linear(H, C)``.

    Difference from the original, on purpose: standard (exact) multi-head attention through
    ``scaled_dot_product_attention`` instead of the Nyström approximation.  On a GPU the fused kernels
    keep memory linear in N, but time is quadratic: for the largest TCGA bags (~250 regions = 64k patch
    tokens) one step takes ~1.9 s in fp32 and ~0.23 s with bf16 autocast on an H200
    (``hipt finetune --precision bf16``); on a CPU keep bags small.  ``attention``: the last block's
    [CLS] attention over the first N tokens.
    """

    method = "transmil"

    def __init__(self, in_dim: int, n_outputs: int, hidden: int = 256, heads: int = 8, dropout: float = 0.25) -> None:
        super().__init__()
        self.phi = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(dropout))
        self.cls_token = nn.Parameter(torch.randn(1, 1, hidden) * 0.02)
        self.layer1 = _SelfAttention(hidden, heads)
        self.ppeg = PPEG(hidden)
        self.layer2 = _SelfAttention(hidden, heads)
        self.norm = nn.LayerNorm(hidden)
        self.classifier = nn.Linear(hidden, n_outputs)

    def forward(self, bag: Bag, label: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        h = self.phi(_tokens(bag))
        n = h.shape[0]
        side = math.ceil(math.sqrt(n))
        extra = side * side - n
        if extra:
            h = torch.cat([h, h[torch.arange(extra, device=h.device) % n]], dim=0)
        x = torch.cat([self.cls_token, h[None]], dim=1)
        x, _ = self.layer1(x)
        x = self.ppeg(x, side)
        x, attn = self.layer2(x)
        logits = self.classifier(self.norm(x)[:, 0])
        return {"logits": logits, "attention": attn[1 : n + 1]}


# ------------------------------------------------------------------------------------------- factory
class StandardizedInput(MILModel):
    """A slide model whose bag arrays are z-scored first, with fixed training statistics.

    ``norms`` maps a bag key (``feats256`` ``[M, n, D]`` or ``feats4k`` ``[M, D]``) to a
    :class:`hipt.models.slide_heads.FeatureStandardizer` fitted on the training slides: the same input
    normalization that frozen HIPT applies to its region tokens, so that every method of a comparison
    sees its features on the same footing (``hipt finetune`` without ``--no-standardize``).
    """

    def __init__(self, model: MILModel, norms: dict[str, nn.Module]) -> None:
        super().__init__()
        self.model = model
        self.norms = nn.ModuleDict(norms)
        self.method = getattr(model, "method", "")

    def forward(self, bag: Bag, label: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        bag = {k: (self.norms[k](v.float()) if k in self.norms else v) for k, v in bag.items()}
        return self.model(bag, label=label)


METHODS: dict[str, type[MILModel]] = {
    "hipt": HIPTMIL,
    "hipt_n": HIPTNone,
    "mean": MeanMIL,
    "abmil": ABMIL,
    "clam_sb": CLAMSB,
    "dsmil": DSMIL,
    "deepattnmisl": DeepAttnMISL,
    "gcn": GCNMIL,
    "transmil": TransMIL,
    "hipt_gp": HIPTGPMIL,
    "mil": InstanceMIL,
}


def build_model(method: str, in_dim: int, n_outputs: int, dropout: float = 0.25, **kwargs: Any) -> MILModel:
    """Make a slide-level model by name (``hipt finetune --method``).

    Args:
        method: one of :data:`METHODS`.
        in_dim: dimension D of the patch tokens ``feats256 [M, n, D]`` (ignored by ``hipt``, whose input
            size is its ViT-4096's).
        n_outputs: classes, or time bins for survival.
        dropout: dropout of the model's hidden layers (0.25 as the reference).
        kwargs: model-specific options (e.g. ``local="finetune"``, ``local_vit=...`` for ``hipt``;
            ``k_sample``, ``inst_loss`` for ``clam_sb``; ``adjacency`` for ``gcn``).
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if method == "hipt":
        return HIPTMIL(n_outputs, dropout=dropout, **kwargs)
    return METHODS[method](in_dim, n_outputs, dropout=dropout, **kwargs)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (optionally only those with ``requires_grad``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
