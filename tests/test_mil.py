"""Slide-level models (hipt.models.mil): shapes, interface, invariances and the pieces they are built from."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from hipt.models.mil import (
    METHODS,
    CLAMSB,
    DSMIL,
    GCNMIL,
    HIPTMIL,
    build_model,
    count_parameters,
    grid8_edges,
    kmeans,
    knn_edges,
    patch_positions,
    smooth_top1_svm_loss,
)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _bag(m: int, n: int, d: int, d4k: int = 192, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    side = math.isqrt(n)
    return {
        "feats256": torch.randn(m, n, d, generator=g),
        "feats4k": torch.randn(m, d4k, generator=g),
        "coords": torch.tensor([[i * side * 256.0, 0.0] for i in range(m)]),
    }


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("n_outputs", [2, 3, 4])  # 2/3 classes, survival with 4 time bins
@pytest.mark.parametrize("shape", [(1, 4, 16), (5, 16, 24)])
def test_forward_backward_shapes(method, n_outputs, shape):
    m, n, d = shape
    torch.manual_seed(0)
    model = build_model(method, 192 if method == "hipt_gp" else d, n_outputs)  # hipt_gp reads feats4k [M, 192]
    model.train()
    bag = _bag(m, n, d)
    label = torch.tensor([n_outputs - 1])
    out = model(bag, label=label)
    assert out["logits"].shape == (1, n_outputs)
    assert torch.isfinite(out["logits"]).all()
    if "attention" in out:
        expected = m if method in ("hipt", "hipt_n", "hipt_gp") else m * n
        assert out["attention"].shape == (expected,)
        assert torch.isfinite(out["attention"]).all()
    loss = F.cross_entropy(out["logits"], label)
    for extra in ("extra_loss",):
        if extra in out:
            assert out[extra].ndim == 0
            loss = loss + out[extra]
    if "aux_logits" in out:
        assert out["aux_logits"].shape == (1, n_outputs)
        loss = loss + F.cross_entropy(out["aux_logits"], label)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and any(g is not None and g.abs().sum() > 0 for g in grads)
    model.eval()
    with torch.no_grad():
        out2 = model(bag)
    assert "extra_loss" not in out2
    assert out2["logits"].shape == (1, n_outputs)


@pytest.mark.parametrize("method", ["mean", "abmil", "hipt", "hipt_n"])
def test_permutation_invariance(method):
    """Bag models ignore order: patches (mean, abmil) or regions (hipt, hipt_n).

    (DeepAttnMISL's k-means++ initialization depends on the order, so its clusters may differ.)
    """
    torch.manual_seed(0)
    model = build_model(method, 16, 3).eval()
    bag = _bag(5, 4, 16)
    if method in ("hipt", "hipt_n"):
        perm = torch.randperm(5)
        shuffled = {"feats256": bag["feats256"][perm], "feats4k": bag["feats4k"][perm]}
    else:  # a bag of patches: any order of the flattened tokens
        flat = bag["feats256"].reshape(20, 1, 16)
        shuffled = {"feats256": flat[torch.randperm(20)]}
        bag = {"feats256": flat}
    with torch.no_grad():
        a, b = model(bag)["logits"], model(shuffled)["logits"]
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_hipt_frozen_feats4k_equals_local_vit():
    """Frozen HIPT on precomputed region tokens equals HIPT running its ViT-4096 on the patch tokens."""
    from hipt.models import vit4k_tiny

    torch.manual_seed(0)
    vit = vit4k_tiny(input_embed_dim=24).eval()
    bag = _bag(3, 16, 24)
    with torch.no_grad():
        grid = bag["feats256"].transpose(1, 2).reshape(3, 24, 4, 4)
        bag["feats4k"] = vit(grid)
    torch.manual_seed(1)
    a = HIPTMIL(2, local="frozen", local_vit=vit).eval()
    b = HIPTMIL(2, local="frozen", local_vit=vit, use_feats4k=False).eval()
    b.load_state_dict(a.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(a(bag)["logits"], b(bag)["logits"], atol=1e-5, rtol=1e-5)
    # frozen: only the global part trains; finetune/scratch: the ViT too
    assert count_parameters(a, trainable_only=True) < count_parameters(a)
    c = HIPTMIL(2, local="finetune", local_vit=vit4k_tiny(input_embed_dim=24))
    assert count_parameters(c, trainable_only=True) == count_parameters(c)
    out = c(bag)  # fine-tuned: reads the patch tokens even though feats4k are there
    out["logits"].sum().backward()
    assert c.slide.local_vit.blocks[0].attn.qkv.weight.grad is not None


def test_hipt_frozen_without_weights_refuses_patch_tokens():
    """No silent random ViT-4096 (the reference's issues #36/#56): feats4k or a pretrained ViT is needed."""
    model = HIPTMIL(2)
    with pytest.raises(ValueError, match="no pretrained ViT-4096"):
        model({"feats256": torch.randn(2, 16, 384)})


def test_hipt_global_part_parameter_count():
    """The reference's HIPT-LGP-FC global part has 595,011 parameters for 2 classes."""
    model = HIPTMIL(2)
    total = count_parameters(model)
    local = count_parameters(model.slide.local_vit)
    assert total - local == 595_011
    assert local == 2_781_504


def test_clam_instance_loss():
    torch.manual_seed(0)
    model = CLAMSB(16, 2, k_sample=4).train()
    bag = _bag(2, 4, 16)  # 8 patches: k = 4 fits exactly
    out = model(bag, label=torch.tensor([1]))
    assert out["extra_loss"] > 0
    assert model.inst_weight == pytest.approx(0.3 / 0.7)
    # a bag of one patch has no top/bottom k: no instance loss
    tiny = {"feats256": torch.randn(1, 1, 16)}
    assert model(tiny, label=torch.tensor([0]))["extra_loss"] == 0
    ce = CLAMSB(16, 3, k_sample=2, inst_loss="ce").train()
    assert ce(bag, label=torch.tensor([2]))["extra_loss"] > 0
    with pytest.raises(ValueError):
        CLAMSB(16, 2, inst_loss="hinge")


def test_smooth_top1_svm_loss():
    s = torch.tensor([[2.0, 0.0], [0.0, 0.5]])
    y = torch.tensor([0, 0])
    got = smooth_top1_svm_loss(s, y)
    # τ log(e^{s_y} + e^{s_j + 1}) − s_y per row
    want = torch.stack([torch.log(torch.exp(torch.tensor(2.0)) + torch.exp(torch.tensor(1.0))) - 2.0,
                        torch.log(torch.exp(torch.tensor(0.0)) + torch.exp(torch.tensor(1.5))) - 0.0]).mean()
    torch.testing.assert_close(got, want)
    # an upper bound of the hinge max_j(s_j + α[j≠y]) − s_y
    hinge = torch.stack([torch.tensor(0.0), torch.tensor(1.5)]).mean()
    assert got >= hinge


def test_dsmil_max_instance_stream():
    torch.manual_seed(0)
    model = DSMIL(8, 3).eval()
    bag = _bag(2, 4, 8)
    out = model(bag)
    scores = model.instance_classifier(bag["feats256"].reshape(-1, 8))
    torch.testing.assert_close(out["aux_logits"], scores.max(0, keepdim=True).values)


def test_kmeans_deterministic_and_separates():
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    x = torch.cat([c + 0.1 * torch.randn(20, 2, generator=g) for c in centres])
    a = kmeans(x, 3)
    assert torch.equal(a, kmeans(x, 3))
    for k in range(3):  # each true cluster maps to one id, and the ids differ
        assert len(set(a[20 * k:20 * (k + 1)].tolist())) == 1
    assert len(set(a.tolist())) == 3
    assert kmeans(x[:2], 8).max() <= 1  # k shrinks to the bag size


def test_patch_positions_and_grid8_edges():
    bag = {"feats256": torch.zeros(2, 9, 4), "coords": torch.tensor([[0.0, 0.0], [768.0, 0.0]])}
    pos = patch_positions(bag, patch_px=256)
    assert pos.shape == (18, 2)
    assert pos[1].tolist() == [256.0, 0.0] and pos[3].tolist() == [0.0, 256.0]  # row-major
    e = grid8_edges(pos, 256)
    deg = torch.bincount(e[1], minlength=18)
    assert deg[4] == 8  # centre of region 0
    assert deg[0] == 3  # corner
    assert deg[2] == 5  # right edge of region 0 touches region 1 (regions adjacent)
    pairs = set(map(tuple, e.T.tolist()))
    assert all((b, a) in pairs for a, b in pairs)  # symmetric
    assert not any(a == b for a, b in pairs)  # no self loops


def test_knn_edges_symmetric():
    pos = torch.rand(30, 2) * 1000
    e = knn_edges(pos, k=4, chunk=7)
    pairs = set(map(tuple, e.T.tolist()))
    assert all((b, a) in pairs for a, b in pairs)
    assert torch.bincount(e[0], minlength=30).min() >= 4


def test_gcn_uses_the_graph():
    """Moving patches apart changes a GCN's output (positions matter); a knn graph works too."""
    torch.manual_seed(0)
    model = GCNMIL(8, 2, dropout=0.0).eval()
    bag = _bag(2, 4, 8)
    far = dict(bag, coords=bag["coords"] * 0 + torch.tensor([[0.0, 0.0], [1e5, 0.0]]))
    near = dict(bag, coords=torch.tensor([[0.0, 0.0], [512.0, 0.0]]))
    with torch.no_grad():
        assert not torch.allclose(model(far)["logits"], model(near)["logits"])
        assert GCNMIL(8, 2, adjacency="knn", k=3)(bag)["logits"].shape == (1, 2)


def test_build_model_errors():
    with pytest.raises(ValueError, match="unknown method"):
        build_model("clam_mb", 8, 2)
    with pytest.raises(ValueError):
        GCNMIL(8, 2, adjacency="delaunay")
