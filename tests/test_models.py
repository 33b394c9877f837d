"""Models: parity with an independent recomputation of the reference forward, shapes, parameter counts.

The first part of this file re-implements the reference forward passes in plain torch, from the
reference's description (HIPT-REFERENCE.md §1, §3) and not from ``hipt.models``: functional ops on a state
dict with the reference's key names — conv patchify / per-token ``phi``, [CLS], bicubic position
interpolation with DINO's +0.1 trick, pre-norm blocks with an explicit softmax attention (``(q @ kᵀ) *
scale``, as the reference orders it), final LayerNorm — and builds checkpoints in the released DINO
format (teacher/student with their prefixes, a DINO head with weight-norm tensors, an
``argparse.Namespace`` under ``args``, optimizer state, epoch).
"""

from __future__ import annotations

import argparse
import math
import warnings

import pytest
import torch
import torch.nn.functional as F

from hipt.models import (
    HIPT4K,
    HIPTSlide,
    ViT4K,
    ViT256,
    interpolate_pos_embed,
    normalize,
    vit4k_tiny,
    vit4k_xs,
    vit256_small,
    vit256_tiny,
)
from hipt.models.slide_heads import AttnNetGated

ATOL = 1e-5

# ---------------------------------------------------------------------------------------------------
# Independent reference recomputation
# ---------------------------------------------------------------------------------------------------


def ref_pos_encoding(pos_embed: torch.Tensor, n_tokens: int, w: int, h: int) -> torch.Tensor:
    """DINO's ``interpolate_pos_encoding``; ``w``, ``h`` = the grid's dim-2 and dim-3 sizes in tokens."""
    N = pos_embed.shape[1] - 1
    if n_tokens == N and w == h:
        return pos_embed
    cls_pos = pos_embed[:, 0]
    patch_pos = pos_embed[:, 1:]
    dim = pos_embed.shape[-1]
    w0, h0 = w + 0.1, h + 0.1
    patch_pos = F.interpolate(
        patch_pos.reshape(1, int(math.sqrt(N)), int(math.sqrt(N)), dim).permute(0, 3, 1, 2),
        scale_factor=(w0 / math.sqrt(N), h0 / math.sqrt(N)),
        mode="bicubic",
    )
    assert int(w0) == patch_pos.shape[-2] and int(h0) == patch_pos.shape[-1]
    patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, -1, dim)
    return torch.cat((cls_pos.unsqueeze(0), patch_pos), dim=1)


def _ln(x, sd, name):
    return F.layer_norm(x, (x.shape[-1],), sd[f"{name}.weight"], sd[f"{name}.bias"], eps=1e-6)


def _lin(x, sd, name):
    return F.linear(x, sd[f"{name}.weight"], sd.get(f"{name}.bias"))


def ref_block(x: torch.Tensor, sd: dict, i: int, heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    B, N, C = x.shape
    p = f"blocks.{i}"
    y = _ln(x, sd, f"{p}.norm1")
    qkv = _lin(y, sd, f"{p}.attn.qkv").reshape(B, N, 3, heads, C // heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    attn = ((q @ k.transpose(-2, -1)) * (C // heads) ** -0.5).softmax(dim=-1)
    y = (attn @ v).transpose(1, 2).reshape(B, N, C)
    x = x + _lin(y, sd, f"{p}.attn.proj")
    x = x + _lin(F.gelu(_lin(_ln(x, sd, f"{p}.norm2"), sd, f"{p}.mlp.fc1")), sd, f"{p}.mlp.fc2")
    return x, attn


def _run(x: torch.Tensor, sd: dict, heads: int, w: int, h: int) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.cat((sd["cls_token"].expand(x.shape[0], -1, -1), x), dim=1)
    x = x + ref_pos_encoding(sd["pos_embed"], x.shape[1] - 1, w, h)
    depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    attn = None
    for i in range(depth):
        x, attn = ref_block(x, sd, i, heads)
    return _ln(x, sd, "norm"), attn


def ref_vit256(img: torch.Tensor, sd: dict, heads: int, patch: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """``[B, 3, W, H]`` → (``[B, D]`` [CLS], last attention ``[B, heads, N+1, N+1]``)."""
    _, _, w, h = img.shape
    x = F.conv2d(img, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=patch)
    x, attn = _run(x.flatten(2).transpose(1, 2), sd, heads, w // patch, h // patch)
    return x[:, 0], attn


def ref_vit4k(grid: torch.Tensor, sd: dict, heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``[B, D256, W, H]`` token grid → (``[B, D]`` [CLS], last attention)."""
    _, _, w, h = grid.shape
    x = F.gelu(_lin(grid.flatten(2, 3).transpose(1, 2), sd, "phi.0"))
    x, attn = _run(x, sd, heads, w, h)
    return x[:, 0], attn


def ref_hipt4k(region: torch.Tensor, sd256: dict, sd4k: dict, heads256: int, heads4k: int):
    """The reference ``HIPT_4K.forward`` on one normalized region ``[1, 3, W', H']`` → ([1, D4k], [n, D256])."""
    _, _, W, H = region.shape
    w256, h256 = W // 256, H // 256
    patches = region.unfold(2, 256, 256).unfold(3, 256, 256)  # [1, 3, w, h, 256, 256]
    patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, 3, 256, 256)  # 'b c p1 p2 w h -> (b p1 p2) c w h'
    feats = torch.cat([ref_vit256(patches[i : i + 5], sd256, heads256)[0] for i in range(0, len(patches), 5)])
    grid = feats.reshape(w256, h256, -1).transpose(0, 1).transpose(0, 2).unsqueeze(0)
    return ref_vit4k(grid, sd4k, heads4k)[0], feats


def random_backbone(model: torch.nn.Module, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights of ``model``'s shapes with non-trivial norms/biases (so every term matters)."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k, v in model.state_dict().items():
        if k.endswith("norm1.weight") or k.endswith("norm2.weight") or k == "norm.weight":
            sd[k] = 1 + 0.1 * torch.randn(v.shape, generator=g)
        else:
            sd[k] = 0.05 * torch.randn(v.shape, generator=g)
    return sd


def released_checkpoint(backbone_sd: dict, arch: str, out_dim: int = 64, seed: int = 0) -> dict:
    """A checkpoint in the released DINO training format around ``backbone_sd``.

    teacher: ``backbone.*`` + ``head.*`` (MLP + weight-normed last layer ``weight_g``/``weight_v``);
    student: ``module.backbone.*`` with *different* values (loading the wrong one is caught) + ``module.head.*``.
    """
    g = torch.Generator().manual_seed(seed)
    D = backbone_sd["cls_token"].shape[-1]
    head = {
        "head.mlp.0.weight": torch.randn(32, D, generator=g), "head.mlp.0.bias": torch.zeros(32),
        "head.mlp.2.weight": torch.randn(32, 32, generator=g), "head.mlp.2.bias": torch.zeros(32),
        "head.mlp.4.weight": torch.randn(16, 32, generator=g), "head.mlp.4.bias": torch.zeros(16),
        "head.last_layer.weight_g": torch.ones(out_dim, 1),
        "head.last_layer.weight_v": torch.randn(out_dim, 16, generator=g),
    }
    teacher = {f"backbone.{k}": v.clone() for k, v in backbone_sd.items()} | head
    student = {f"module.backbone.{k}": v + 1.0 for k, v in backbone_sd.items()}
    student |= {f"module.{k}": v.clone() for k, v in head.items()}
    args = argparse.Namespace(arch=arch, patch_size=16, out_dim=out_dim, norm_last_layer=True, lr=5e-4,
                              local_crops_scale=(0.05, 0.4), data_path="/data/patches", use_fp16=True)
    optimizer = {"state": {0: {"step": torch.tensor(10.0), "exp_avg": torch.zeros(3)}},
                 "param_groups": [{"lr": 1e-4, "weight_decay": 0.04, "params": [0]}]}
    return {"student": student, "teacher": teacher, "optimizer": optimizer, "epoch": 100, "args": args,
            "dino_loss": {"center": torch.zeros(1, out_dim)}}


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


# ---------------------------------------------------------------------------------------------------
# Parameter counts and keys
# ---------------------------------------------------------------------------------------------------


def test_parameter_counts_full_size():
    assert n_params(vit256_small()) == 21_665_664
    assert n_params(vit4k_xs()) == 2_781_504
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        slide = HIPTSlide(n_classes=2)
    assert sum(p.numel() for p in slide.global_parameters()) == 595_011
    assert n_params(slide) == 3_376_515


def test_state_dict_keys_equal_reference_backbone_keys():
    sd256 = vit256_small().state_dict()
    expected = {"cls_token": (1, 1, 384), "pos_embed": (1, 197, 384), "patch_embed.proj.weight": (384, 3, 16, 16),
                "patch_embed.proj.bias": (384,), "norm.weight": (384,), "norm.bias": (384,)}
    for i in range(12):
        b = f"blocks.{i}."
        expected |= {b + "norm1.weight": (384,), b + "norm1.bias": (384,), b + "norm2.weight": (384,),
                     b + "norm2.bias": (384,), b + "attn.qkv.weight": (1152, 384), b + "attn.qkv.bias": (1152,),
                     b + "attn.proj.weight": (384, 384), b + "attn.proj.bias": (384,),
                     b + "mlp.fc1.weight": (1536, 384), b + "mlp.fc1.bias": (1536,),
                     b + "mlp.fc2.weight": (384, 1536), b + "mlp.fc2.bias": (384,)}
    assert {k: tuple(v.shape) for k, v in sd256.items()} == expected
    sd4k = vit4k_xs().state_dict()
    assert len(sd4k) == 78
    assert tuple(sd4k["phi.0.weight"].shape) == (192, 384) and tuple(sd4k["pos_embed"].shape) == (1, 197, 192)
    assert tuple(sd4k["blocks.5.attn.qkv.weight"].shape) == (576, 192)
    assert tuple(sd4k["blocks.0.mlp.fc1.weight"].shape) == (768, 192)
    assert not any(k.startswith("patch_embed") for k in sd4k)


# ---------------------------------------------------------------------------------------------------
# Parity with the reference recomputation (released-format checkpoints, fp32, 1e-5)
# ---------------------------------------------------------------------------------------------------


def test_vit256_small_parity_from_released_checkpoint(tmp_path):
    sd = random_backbone(vit256_small(), seed=1)
    path = tmp_path / "vit256_custom.pth"
    torch.save(released_checkpoint(sd, "vit_small"), path)
    model = vit256_small(weights=path).eval()
    x = torch.randn(2, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    ref_cls, ref_attn = ref_vit256(x, sd, heads=6)
    with torch.no_grad():
        out = model(x)
        attn = model.get_last_selfattention(x)
    assert out.shape == (2, 384) and attn.shape == (2, 6, 257, 257)
    torch.testing.assert_close(out, ref_cls, atol=ATOL, rtol=0)
    torch.testing.assert_close(attn, ref_attn, atol=ATOL, rtol=0)


def test_vit4k_xs_parity_from_released_checkpoint(tmp_path):
    sd = random_backbone(vit4k_xs(), seed=2)
    path = tmp_path / "vit4k_custom.pth"
    torch.save(released_checkpoint(sd, "vit4k_xs"), path)
    model = vit4k_xs(weights=str(path)).eval()
    for h, w in [(16, 16), (14, 14), (6, 6), (5, 9)]:
        g = torch.randn(2, 384, h, w, generator=torch.Generator().manual_seed(h * w))
        ref_cls, ref_attn = ref_vit4k(g, sd, heads=6)
        with torch.no_grad():
            torch.testing.assert_close(model(g), ref_cls, atol=ATOL, rtol=0)
            attn = model.get_last_selfattention(g)
        assert attn.shape == (2, 6, 1 + h * w, 1 + h * w)
        torch.testing.assert_close(attn, ref_attn, atol=ATOL, rtol=0)


@pytest.mark.parametrize("h,w", [(256, 256), (224, 224), (96, 96), (128, 192), (320, 256)])
def test_vit256_parity_tiny_any_grid(h, w):
    model = vit256_tiny().eval()
    sd = random_backbone(model, seed=h + w)
    model.load_state_dict(sd)
    x = torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(3))
    ref_cls, ref_attn = ref_vit256(x, sd, heads=3)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref_cls, atol=ATOL, rtol=0)
        torch.testing.assert_close(model.get_last_selfattention(x), ref_attn, atol=ATOL, rtol=0)


def test_pos_embed_identity_on_stored_grid_and_interpolated_otherwise():
    pos = torch.randn(1, 197, 8)
    assert interpolate_pos_embed(pos, 14, 14) is pos
    for gh, gw in [(16, 16), (6, 6), (3, 11), (30, 30)]:
        out = interpolate_pos_embed(pos, gh, gw)
        assert out.shape == (1, 1 + gh * gw, 8)
        torch.testing.assert_close(out, ref_pos_encoding(pos, gh * gw, gh, gw), atol=0, rtol=0)
        torch.testing.assert_close(out[:, 0], pos[:, 0])


def test_sincos_pos_embed_values_and_init_option():
    from hipt.models import sincos_pos_embed

    g, d = 6, 16
    pe = sincos_pos_embed(g, d)
    assert pe.shape == (1, 1 + g * g, d) and pe.dtype == torch.float32
    assert torch.all(pe[0, 0] == 0)  # the [CLS] row
    grid = pe[0, 1:].reshape(g, g, d)
    # the first frequency is 1: channel 0 is sin(row), channel d/4 is cos(row), channel d/2 is sin(col)
    rows = torch.arange(g, dtype=torch.float32)
    torch.testing.assert_close(grid[:, 2, 0], rows.sin())
    torch.testing.assert_close(grid[:, 2, d // 4], rows.cos())
    torch.testing.assert_close(grid[3, :, d // 2], rows.sin())
    # neighbours are closer than far cells: what lets attention find a token's neighbours
    dist = lambda a, b: float((grid[a] - grid[b]).norm())  # noqa: E731
    assert dist((2, 2), (2, 3)) < dist((2, 2), (2, 5)) and dist((2, 2), (3, 2)) < dist((2, 2), (5, 2))
    with pytest.raises(ValueError, match="divisible by 4"):
        sincos_pos_embed(4, 10)
    m = vit4k_tiny(pos_grid=g, input_embed_dim=8)
    assert m.pos_embed.abs().max() < 0.1  # trunc-normal std 0.02, the reference's init
    m.init_pos_embed("sincos")
    torch.testing.assert_close(m.pos_embed.detach(), sincos_pos_embed(g, m.embed_dim))
    assert m.pos_embed.requires_grad  # still trained
    with pytest.raises(ValueError, match="unknown pos_embed init"):
        m.init_pos_embed("learned")
    from hipt.pretrain import make_config
    from hipt.pretrain.trainer import build_backbone

    # the paper preset keeps the reference's init; the CPU book's stage 2 starts from sincos (chapter 4)
    assert make_config(2, "paper").pos_embed_init == "trunc_normal" == make_config(1, "cpu-tiny").pos_embed_init
    b = build_backbone(make_config(2, "cpu-tiny"))
    torch.testing.assert_close(b.pos_embed.detach(), sincos_pos_embed(b.pos_grid, b.embed_dim))
    ref = build_backbone(make_config(2, "cpu-tiny", pos_embed_init="trunc_normal"))
    assert 0.01 < float(ref.pos_embed[0, 1:].std()) < 0.03  # trunc-normal, std 0.02


def test_explicit_last_attention_agrees_with_fused_path():
    """The last block recomputed with an explicit softmax attention gives the fused block's output."""
    model = vit256_tiny().eval()
    x = torch.randn(3, 3, 256, 256)
    with torch.no_grad():
        assert model.blocks[-1].attn.fused_attn  # the normal path uses the fused kernel
        fused = model.forward_features(x)
        tokens, attn = model.forward_with_attention(x)
        torch.testing.assert_close(tokens, fused, atol=ATOL, rtol=0)
        torch.testing.assert_close(attn, model.get_last_selfattention(x), atol=0, rtol=0)
        t = model.prepare_tokens(x)
        for blk in model.blocks[:-1]:
            t = blk(t)
        y, _ = model.block_attention(model.blocks[-1], t)
        torch.testing.assert_close(y, model.blocks[-1](t), atol=ATOL, rtol=0)
    torch.testing.assert_close(attn.sum(-1), torch.ones(3, 3, 257), atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------------------------------
# Shapes
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("B", [1, 3])
@pytest.mark.parametrize("dim,depth,heads,patch", [(192, 2, 3, 16), (96, 1, 2, 8)])
@pytest.mark.parametrize("h,w", [(64, 64), (64, 96)])
def test_vit256_shapes(B, dim, depth, heads, patch, h, w):
    m = ViT256(embed_dim=dim, depth=depth, num_heads=heads, patch_size=patch).eval()
    x = torch.randn(B, 3, h, w)
    n = (h // patch) * (w // patch)
    with torch.no_grad():
        assert m(x).shape == (B, dim)
        assert m.forward_features(x).shape == (B, 1 + n, dim)
        assert m.get_last_selfattention(x).shape == (B, heads, 1 + n, 1 + n)
        assert [t.shape for t in m.get_intermediate_layers(x, 2)] == [(B, 1 + n, dim)] * min(2, depth)


@pytest.mark.parametrize("B", [1, 2])
@pytest.mark.parametrize("din,dim,heads", [(384, 192, 6), (192, 96, 3)])
@pytest.mark.parametrize("h,w", [(16, 16), (8, 8), (4, 6)])
def test_vit4k_shapes(B, din, dim, heads, h, w):
    m = ViT4K(input_embed_dim=din, embed_dim=dim, depth=1, num_heads=heads).eval()
    g = torch.randn(B, din, h, w)
    with torch.no_grad():
        assert m(g).shape == (B, dim)
        assert m.get_last_selfattention(g).shape == (B, heads, 1 + h * w, 1 + h * w)


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="multiple of the patch size"):
        vit256_tiny()(torch.randn(1, 3, 100, 100))
    with pytest.raises(ValueError, match="token grid"):
        vit4k_tiny()(torch.randn(1, 384, 4, 4))
    with pytest.raises(ValueError, match="takes 384-d tokens but vit256 makes 192-d"):
        HIPT4K(vit256_tiny(), vit4k_tiny(input_embed_dim=384))


def test_drop_path_schedule_and_train_mode_randomness():
    m = vit256_tiny(drop_path_rate=0.1)
    rates = [blk.drop_path1.drop_prob if hasattr(blk.drop_path1, "drop_prob") else 0.0 for blk in m.blocks]
    assert rates[0] == 0.0 and abs(rates[-1] - 0.1) < 1e-7
    x = torch.randn(4, 3, 64, 64)
    m.train()
    torch.manual_seed(0)
    a = m(x)
    torch.manual_seed(1)
    assert not torch.allclose(a, m(x))
    m.eval()
    torch.testing.assert_close(m(x), m(x))


# ---------------------------------------------------------------------------------------------------
# The region encoder
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("h,w", [(512, 512), (512, 768)])
def test_hipt4k_matches_reference_region_forward(h, w):
    vit256, vit4k = vit256_tiny().eval(), vit4k_tiny(input_embed_dim=192).eval()
    sd256, sd4k = random_backbone(vit256, 5), random_backbone(vit4k, 6)
    vit256.load_state_dict(sd256)
    vit4k.load_state_dict(sd4k)
    enc = HIPT4K(vit256, vit4k, patch_batch=3).eval()
    region = torch.randint(0, 256, (2, 3, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        out = enc(region)
    n = (h // 256) * (w // 256)
    assert out.region.shape == (2, 192) and out.patches.shape == (2, n, 192)
    assert out.attn4k is None and out.attn256 is None
    for b in range(2):
        x = normalize(region[b : b + 1])  # the reference's ToTensor + Normalize(0.5, 0.5)
        torch.testing.assert_close(x, (region[b : b + 1].float() / 255 - 0.5) / 0.5)
        ref_region, ref_patches = ref_hipt4k(x, sd256, sd4k, 3, 3)
        torch.testing.assert_close(out.region[b : b + 1], ref_region, atol=ATOL, rtol=0)
        torch.testing.assert_close(out.patches[b], ref_patches, atol=ATOL, rtol=0)
        # row-major: patch k is at row k // cols, column k % cols
        cols = w // 256
        k = n - 1
        r, c = divmod(k, cols)
        with torch.no_grad():
            one = vit256(x[:, :, r * 256 : (r + 1) * 256, c * 256 : (c + 1) * 256])
        torch.testing.assert_close(out.patches[b, k], one[0], atol=ATOL, rtol=0)


def test_hipt4k_attention_maps_and_float_input():
    enc = HIPT4K(vit256_tiny(), vit4k_tiny()).eval()
    region = torch.randint(0, 256, (1, 3, 512, 768), dtype=torch.uint8)
    with torch.no_grad():
        out = enc(region, return_attention=True)
        plain = enc(region)
        from_float = enc(normalize(region))
    assert out.attn4k.shape == (1, 3, 2, 3)
    assert out.attn256.shape == (1, 6, 3, 16, 16)
    torch.testing.assert_close(out.region, plain.region, atol=ATOL, rtol=0)
    torch.testing.assert_close(from_float.region, plain.region, atol=ATOL, rtol=0)
    # attention rows are distributions over the tokens (minus the [CLS] column)
    assert torch.all(out.attn4k.sum((-1, -2)) <= 1 + 1e-5)


def test_hipt4k_patch_tokens_only():
    enc = HIPT4K(vit256_tiny(), None).eval()
    with torch.no_grad():
        out = enc(torch.randint(0, 256, (2, 3, 256, 512), dtype=torch.uint8))
    assert out.region is None and out.patches.shape == (2, 2, 192)


# ---------------------------------------------------------------------------------------------------
# The slide head
# ---------------------------------------------------------------------------------------------------


def ref_slide_forward(model: HIPTSlide, x_256: torch.Tensor) -> torch.Tensor:
    """The reference HIPT_LGP_FC forward (16×16 grid), in eval mode; returns logits."""
    x = x_256.unfold(1, 16, 16).transpose(1, 2)
    h = model.local_vit(x)
    h = model.global_phi(h)
    h = model.global_transformer(h.unsqueeze(1)).squeeze(1)
    A, h = model.global_attn_pool(h)
    A = F.softmax(torch.transpose(A, 1, 0), dim=1)
    return model.classifier(model.global_rho(torch.mm(A, h)))


def _reference_keyed_state(n_classes: int, dataparallel: bool) -> dict[str, torch.Tensor]:
    """A state dict as the reference's HIPT_LGP_FC saves it (random values, reference key names)."""
    torch.manual_seed(0)
    d = 192
    local = {("local_vit.module." if dataparallel else "local_vit.") + k: v
             for k, v in random_backbone(vit4k_xs(), 9).items()}
    glob = {"global_phi.0.weight": (d, d), "global_phi.0.bias": (d,)}
    for i in range(2):
        p = f"global_transformer.layers.{i}."
        glob |= {p + "self_attn.in_proj_weight": (3 * d, d), p + "self_attn.in_proj_bias": (3 * d,),
                 p + "self_attn.out_proj.weight": (d, d), p + "self_attn.out_proj.bias": (d,),
                 p + "linear1.weight": (d, d), p + "linear1.bias": (d,), p + "linear2.weight": (d, d),
                 p + "linear2.bias": (d,), p + "norm1.weight": (d,), p + "norm1.bias": (d,),
                 p + "norm2.weight": (d,), p + "norm2.bias": (d,)}
    glob |= {"global_attn_pool.attention_a.0.weight": (d, d), "global_attn_pool.attention_a.0.bias": (d,),
             "global_attn_pool.attention_b.0.weight": (d, d), "global_attn_pool.attention_b.0.bias": (d,),
             "global_attn_pool.attention_c.weight": (1, d), "global_attn_pool.attention_c.bias": (1,),
             "global_rho.0.weight": (d, d), "global_rho.0.bias": (d,),
             "classifier.weight": (n_classes, d), "classifier.bias": (n_classes,)}
    return local | {k: 0.1 * torch.randn(s) for k, s in glob.items()}


@pytest.mark.parametrize("dataparallel", [False, True])
def test_slide_loads_reference_checkpoint_strictly(dataparallel):
    sd = _reference_keyed_state(2, dataparallel)
    model = HIPTSlide(2, local="scratch")
    model.load_state_dict(sd, strict=True)
    plain = {k.replace("local_vit.module.", "local_vit."): v for k, v in sd.items()}
    assert set(model.state_dict()) == set(plain)
    torch.testing.assert_close(model.state_dict()["local_vit.blocks.0.attn.qkv.weight"],
                               plain["local_vit.blocks.0.attn.qkv.weight"])
    # and nested inside another module (the hook honours the prefix)
    outer = torch.nn.ModuleDict({"net": HIPTSlide(2, local="scratch")})
    outer.load_state_dict({"net." + k: v for k, v in sd.items()}, strict=True)


def test_slide_matches_reference_forward_and_precomputed_features():
    model = HIPTSlide(3, local_vit=vit4k_xs()).eval()
    x = torch.randn(7, 256, 384)
    with torch.no_grad():
        out = model(x)
        ref = ref_slide_forward(model, x)
        feats = model.local_vit(x.transpose(1, 2).reshape(7, 384, 16, 16))
        out2 = model(feats)
        out3 = model(x.unsqueeze(0))
    torch.testing.assert_close(out["logits"], ref, atol=ATOL, rtol=0)
    torch.testing.assert_close(out2["logits"], out["logits"], atol=ATOL, rtol=0)
    torch.testing.assert_close(out3["logits"], out["logits"], atol=ATOL, rtol=0)
    assert out["logits"].shape == (1, 3) and out["probs"].shape == (1, 3) and out["y_hat"].shape == (1,)
    assert out["attention"].shape == (7,)
    torch.testing.assert_close(out["attention"].sum(), torch.tensor(1.0))


def test_slide_survival_mode():
    model = HIPTSlide(4, task="survival", local_vit=vit4k_tiny()).eval()
    with torch.no_grad():
        out = model(torch.randn(5, 64, 192))
    h, S = out["hazards"], out["S"]
    assert h.shape == S.shape == (1, 4)
    torch.testing.assert_close(h, torch.sigmoid(out["logits"]))
    torch.testing.assert_close(S, torch.cumprod(1 - h, dim=1))
    assert torch.all(S[:, 1:] <= S[:, :-1])


def test_slide_frozen_local_stays_eval_and_gets_no_grad():
    model = HIPTSlide(2, local_vit=vit4k_tiny(drop_rate=0.5))
    model.train()
    assert model.training and not model.local_vit.training
    assert all(not p.requires_grad for p in model.local_vit.parameters())
    model(torch.randn(4, 64, 192))["logits"].sum().backward()
    assert all(p.grad is None for p in model.local_vit.parameters())
    assert all(p.grad is not None for p in model.global_parameters())
    # a fine-tuned local ViT trains, and refuses precomputed features
    ft = HIPTSlide(2, local="finetune", local_vit=vit4k_tiny()).train()
    assert ft.local_vit.training
    ft(torch.randn(4, 64, 192))["logits"].sum().backward()
    assert all(p.grad is not None for p in ft.local_vit.parameters())
    with pytest.raises(ValueError, match="precomputed"):
        ft(torch.randn(4, 192))


def test_slide_standardize_regions():
    model = HIPTSlide(2, local_vit=vit4k_tiny()).eval()
    reference_keys = set(model.state_dict())
    tokens = 0.8 + 0.005 * torch.randn(50, 192, dtype=torch.float64).float()  # nearly constant, as a tiny ViT4K's
    tokens[:, 3] = 1.0  # a dimension constant on the training data: its std is floored, not 0
    model.standardize_regions(tokens)
    z = model.region_norm(tokens)
    torch.testing.assert_close(z[:, :3].mean(0), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(z[:, :3].std(0), torch.ones(3), atol=1e-4, rtol=0)
    assert torch.isfinite(model.region_norm(tokens + 1)).all()
    assert set(model.state_dict()) == reference_keys | {"region_norm.mean", "region_norm.std"}
    with torch.no_grad():  # the same z-scored tokens whether the bag comes as patch tokens or region tokens
        x = torch.randn(3, 64, 192)
        torch.testing.assert_close(model(x)["logits"], model(model.encode_regions(x))["logits"])
    with pytest.raises(ValueError, match="frozen"):
        HIPTSlide(2, local="finetune", local_vit=vit4k_tiny()).standardize_regions(tokens)
    with pytest.raises(ValueError, match=r"\[N, 192\]"):
        model.standardize_regions(torch.randn(5, 7))


def test_slide_non_square_grid_and_errors():
    model = HIPTSlide(2, local_vit=vit4k_tiny()).eval()
    with torch.no_grad():
        assert model(torch.randn(3, 12, 192), grid=(3, 4))["logits"].shape == (1, 2)
    with pytest.raises(ValueError, match="square"):
        model(torch.randn(3, 12, 192))
    assert isinstance(model.global_attn_pool, AttnNetGated)


def test_slide_warns_when_frozen_local_vit_is_random():
    with pytest.warns(UserWarning, match="randomly initialized"):
        HIPTSlide(2)


# ---------------------------------------------------------------------------------------------------
# FLOPs
# ---------------------------------------------------------------------------------------------------


def _counted_flops(model: torch.nn.Module, x: torch.Tensor) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    for blk in model.blocks:  # explicit attention: FlopCounterMode has no formula for the CPU SDPA kernel
        blk.attn.fused_attn = False
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model(x)
    return int(fc.get_total_flops())


def test_analytic_flops_equal_flop_counter():
    v256, v4k = vit256_tiny(), vit4k_tiny()
    assert v256.flops(256) == _counted_flops(v256, torch.randn(1, 3, 256, 256))
    assert v256.flops(96, 160) == _counted_flops(v256, torch.randn(1, 3, 96, 160))
    assert v4k.flops(8, 6) == _counted_flops(v4k, torch.randn(1, 192, 8, 6))
    assert abs(vit256_small().flops(256) / 1e9 - 12.283) < 1e-3
    assert abs(vit4k_xs().flops(16) / 1e9 - 1.706) < 1e-3
    enc = HIPT4K(v256, v4k)
    assert enc.flops(512, 768) == 6 * v256.flops(256) + v4k.flops(2, 3)
