"""DINO components: loss, schedules, head, optimizer groups, augmentations, sampler and datasets."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hipt.pretrain import (
    DINOHead,
    DINOLoss,
    FeatureGrids,
    GridMultiCrop,
    MultiCropWrapper,
    PatchMultiCrop,
    StreamSampler,
    cosine_schedule,
    dino_schedules,
    grid_crop_sizes,
    scaled_lr,
    teacher_temp_schedule,
    tokens_to_grid,
)
from hipt.pretrain.data import ArrayPatches, ImageFolderPatches, collate_crops
from hipt.pretrain.evaluate import knn_accuracy
from hipt.pretrain.trainer import clip_gradients, ema_update, param_groups

# ---------------------------------------------------------------------------------------- loss


def _direct_dino_loss(s, t, center, ncrops, tt, ts=0.1):
    """Plain re-computation: mean over cross-view pairs of the batch-mean cross-entropy."""
    b = t.shape[0] // 2
    terms = []
    for i in range(2):
        p_t = torch.softmax((t[i * b:(i + 1) * b] - center) / tt, dim=-1)
        for j in range(ncrops):
            if j == i:
                continue
            logp_s = torch.log_softmax(s[j * b:(j + 1) * b] / ts, dim=-1)
            terms.append((-(p_t * logp_s).sum(-1)).mean())
    return torch.stack(terms).mean()


def test_dino_loss_equals_direct_computation_and_updates_center():
    torch.manual_seed(0)
    k, ncrops, b = 16, 5, 3
    loss_fn = DINOLoss(k, ncrops, warmup_teacher_temp=0.04, teacher_temp=0.07, warmup_teacher_temp_epochs=3, nepochs=10)
    center = torch.zeros(1, k)
    for epoch in range(5):
        s = torch.randn(ncrops * b, k, requires_grad=True)
        t = torch.randn(2 * b, k)
        tt = [0.04, 0.055, 0.07, 0.07, 0.07][epoch]
        assert loss_fn.teacher_temp(epoch) == pytest.approx(tt)
        expected = _direct_dino_loss(s, t, center, ncrops, tt)
        got = loss_fn(s, t, epoch)
        assert torch.allclose(got, expected, atol=1e-6), (epoch, got, expected)
        center = 0.9 * center + 0.1 * t.mean(0, keepdim=True)
        assert torch.allclose(loss_fn.center, center, atol=1e-7)
        got.backward()  # the student gets gradients, the teacher is detached
        assert s.grad is not None


def test_dino_loss_number_of_pairs_and_detached_teacher():
    k, b = 8, 2
    loss_fn = DINOLoss(k, 4, 0.04, 0.04, 0, 1)
    s = torch.zeros(4 * b, k, requires_grad=True)
    t = torch.randn(2 * b, k, requires_grad=True)
    loss = loss_fn(s, t, 0)
    assert loss.item() == pytest.approx(math.log(k), rel=1e-6)  # uniform student → ln K
    loss.backward()
    assert t.grad is None


# ----------------------------------------------------------------------------------- schedules


def test_cosine_schedule_lengths_and_end_points():
    s = cosine_schedule(1.0, 0.1, total_iters=100, warmup_iters=10, start_warmup_value=0.0)
    assert s.shape == (100,)
    assert s[0] == 0.0 and s[9] == pytest.approx(1.0) and s[10] == pytest.approx(1.0)
    assert np.all(np.diff(s[:10]) > 0) and np.all(np.diff(s[10:]) < 0)
    assert s[-1] == pytest.approx(0.1, abs=(1.0 - 0.1) * (math.pi / 90) ** 2 / 4 + 1e-12)
    assert len(cosine_schedule(1, 0, 0)) == 0


def test_dino_schedules_and_teacher_temperature():
    sch = dino_schedules(lr=scaled_lr(5e-4, 512), min_lr=1e-6, weight_decay=0.04, weight_decay_end=0.4,
                         momentum_teacher=0.996, epochs=10, steps_per_epoch=7, warmup_epochs=2)
    assert {k: len(v) for k, v in sch.items()} == {"lr": 70, "wd": 70, "momentum": 70}
    assert sch["lr"].max() == pytest.approx(1e-3)  # 5e-4 × 512/256
    assert sch["lr"][13] == pytest.approx(1e-3) and sch["lr"][-1] < 1e-5
    assert sch["wd"][0] == pytest.approx(0.04) and sch["wd"][-1] == pytest.approx(0.4, abs=1e-3)
    assert sch["momentum"][0] == pytest.approx(0.996) and sch["momentum"][-1] == pytest.approx(1.0, abs=1e-5)
    tt = teacher_temp_schedule(0.04, 0.07, 3, 10)
    assert len(tt) == 10 and tt[0] == 0.04 and tt[2] == pytest.approx(0.07) and np.all(tt[2:] == 0.07)


# ---------------------------------------------------------------------------------------- head


def test_dino_head_shapes_norm_and_reference_keys():
    head = DINOHead(24, out_dim=50, hidden_dim=32, bottleneck_dim=16)
    x = torch.randn(5, 24)
    assert head(x).shape == (5, 50)
    sd = head.state_dict()
    assert set(sd) == {"mlp.0.weight", "mlp.0.bias", "mlp.2.weight", "mlp.2.bias", "mlp.4.weight", "mlp.4.bias",
                       "last_layer.weight_g", "last_layer.weight_v"}
    assert sd["last_layer.weight_g"].shape == (50, 1) and torch.all(sd["last_layer.weight_g"] == 1)
    trainable = {n for n, p in head.named_parameters() if p.requires_grad}
    assert not any(n.endswith("original0") for n in trainable)  # g frozen when norm_last_layer
    # forward = normalized prototypes · L2-normalized bottleneck
    z = F.normalize(head.mlp(x), dim=-1)
    w = sd["last_layer.weight_v"] / sd["last_layer.weight_v"].norm(dim=1, keepdim=True)
    assert torch.allclose(head(x), z @ w.T, atol=1e-6)
    assert DINOHead(24, 50, norm_last_layer=False, hidden_dim=32, bottleneck_dim=16).last_layer.parametrizations.weight.original0.requires_grad


def test_dino_head_loads_deprecated_weight_norm_state_dict():
    """A head saved with the reference's ``torch.nn.utils.weight_norm`` loads and gives the same output."""
    torch.manual_seed(1)
    ref_mlp = torch.nn.Sequential(torch.nn.Linear(12, 20), torch.nn.GELU(), torch.nn.Linear(20, 20), torch.nn.GELU(),
                                  torch.nn.Linear(20, 8))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref_last = torch.nn.utils.weight_norm(torch.nn.Linear(8, 30, bias=False))
    ref_last.weight_g.data.uniform_(0.5, 2.0)
    ref_sd = {f"mlp.{k}": v for k, v in ref_mlp.state_dict().items()}
    ref_sd |= {f"last_layer.{k}": v for k, v in ref_last.state_dict().items()}
    assert {"last_layer.weight_g", "last_layer.weight_v"} <= set(ref_sd)
    head = DINOHead(12, 30, hidden_dim=20, bottleneck_dim=8, norm_last_layer=False)
    head.load_state_dict(ref_sd, strict=True)
    x = torch.randn(4, 12)
    expected = ref_last(F.normalize(ref_mlp(x), dim=-1))
    assert torch.allclose(head(x), expected, atol=1e-6)


def test_multicrop_wrapper_groups_by_resolution():
    class Backbone(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.calls = []
            self.lin = torch.nn.Linear(3, 4)

        def forward(self, x):
            self.calls.append(tuple(x.shape))
            return self.lin(x.mean((2, 3)))

    bb = Backbone()
    wrapper = MultiCropWrapper(bb, torch.nn.Identity())
    crops = [torch.randn(2, 3, 8, 8)] * 2 + [torch.randn(2, 3, 4, 4)] * 3
    out = wrapper(crops)
    assert out.shape == (10, 4) and bb.calls == [(4, 3, 8, 8), (6, 3, 4, 4)]
    assert torch.allclose(out[4:6], bb.lin(crops[2].mean((2, 3))))


# ------------------------------------------------------------------------------ optimization


def test_param_groups_follow_dino():
    from hipt.models import vit256_tiny

    model = MultiCropWrapper(vit256_tiny(embed_dim=32, depth=1, num_heads=2), DINOHead(32, 16, hidden_dim=8, bottleneck_dim=4))
    reg, noreg = param_groups(model)
    names = {id(p): n for n, p in model.named_parameters()}
    reg_names = {names[id(p)] for p in reg["params"]}
    noreg_names = {names[id(p)] for p in noreg["params"]}
    assert noreg["weight_decay"] == 0.0
    assert "backbone.pos_embed" in reg_names and "backbone.cls_token" in reg_names  # ndim 3: regularized (DINO)
    assert all(n.endswith(".bias") or "norm" in n for n in noreg_names)
    assert not any("original0" in n for n in reg_names | noreg_names)  # frozen g left out
    assert "head.last_layer.parametrizations.weight.original1" in reg_names


def test_clip_gradients_per_parameter_and_global():
    a, b = torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(4))
    m = torch.nn.ParameterList([a, b])
    a.grad, b.grad = torch.full((3,), 10.0), torch.full((4,), 0.1)
    clip_gradients(m, 3.0, "param")
    assert a.grad.norm() == pytest.approx(3.0, rel=1e-4) and torch.allclose(b.grad, torch.full((4,), 0.1))
    a.grad, b.grad = torch.full((3,), 10.0), torch.full((4,), 0.1)
    clip_gradients(m, 3.0, "global")
    assert torch.cat([a.grad, b.grad]).norm() == pytest.approx(3.0, rel=1e-4)


def test_ema_update():
    t, s = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    before = t.weight.detach().clone()
    ema_update(t, s, 0.9)
    assert torch.allclose(t.weight, 0.9 * before + 0.1 * s.weight)


# ------------------------------------------------------------------------------ augmentations


def test_patch_multicrop_shapes_and_determinism():
    aug = PatchMultiCrop(global_size=32, local_size=16, n_local=3, normalization="imagenet")
    img = np.random.default_rng(0).integers(0, 255, (48, 48, 3), dtype=np.uint8)
    state = torch.random.get_rng_state()
    a, b, c = aug(img, seed=7), aug(img, seed=7), aug(img, seed=8)
    assert torch.equal(state, torch.random.get_rng_state())  # the global RNG is left untouched
    assert [tuple(x.shape) for x in a] == [(3, 32, 32)] * 2 + [(3, 16, 16)] * 3
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))
    assert aug.ncrops == 5 and a[0].dtype == torch.float32


def test_patch_multicrop_batched_colour_equals_per_patch():
    """The trainer's path (crops per patch, colour on the collated batch) gives the same views as
    ``aug(patch, seed)`` on each patch alone."""
    imgs = np.random.default_rng(1).integers(0, 255, (6, 40, 40, 3), dtype=np.uint8)
    deferred = PatchMultiCrop(32, 16, 3, normalization="hipt", defer_photometric=True)
    single = PatchMultiCrop(32, 16, 3, normalization="hipt")
    items = [deferred(im, seed=10 + i) for i, im in enumerate(imgs)]
    assert [tuple(t.shape) for t in items[0]] == [(3, 32, 32)] * 2 + [(3, 16, 16)] * 3 + [(5, 13)]
    assert items[0][0].dtype == torch.uint8
    batch = collate_crops(items)
    views = deferred.photometric(batch[:-1], batch[-1])
    for i, im in enumerate(imgs):
        for v, s in zip(views, single(im, seed=10 + i)):
            torch.testing.assert_close(v[i], s, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["brightness", "contrast", "saturation", "hue", "blur", "gray", "solarize"])
def test_batched_colour_operations_match_torchvision(name):
    from torchvision.transforms.v2 import functional as TF

    from hipt.pretrain.augment import _P, PHOTOMETRIC_PARAMS, _colour_op, _gaussian_blur, _shift_hue

    g = torch.Generator().manual_seed(0)
    x = torch.rand(5, 3, 24, 24, generator=g)
    f = {"brightness": [0.6, 0.9, 1.0, 1.2, 1.4], "contrast": [0.6, 0.8, 1.0, 1.3, 1.4],
         "saturation": [0.8, 0.9, 1.0, 1.1, 1.2], "hue": [-0.1, -0.03, 0.0, 0.05, 0.1],
         "blur": [0.1, 0.5, 1.0, 1.7, 2.0]}.get(name, [0.0] * 5)
    p = torch.zeros(5, len(PHOTOMETRIC_PARAMS))
    if name in ("brightness", "contrast", "saturation"):
        p[:, _P[name]] = torch.tensor(f)
        ours = _colour_op(x, ("brightness", "contrast", "saturation").index(name), p)
        ref = torch.stack([getattr(TF, f"adjust_{name}")(x[i], f[i]) for i in range(5)])
    elif name == "hue":
        ours = _shift_hue(x, torch.tensor(f))
        ref = torch.stack([TF.adjust_hue(x[i], f[i]) for i in range(5)])
    elif name == "blur":
        ours = _gaussian_blur(x, torch.tensor(f), 13)
        ref = torch.stack([TF.gaussian_blur(x[i], [13, 13], [f[i], f[i]]) for i in range(5)])
    else:  # through the whole colour half, with only this operation switched on
        u8 = (x * 255).round().to(torch.uint8)
        p[:, _P[name]] = 1.0
        p[:, _P["order0"]:_P["order3"] + 1] = torch.arange(4.0)
        ours = PatchMultiCrop(24, 8, 0, normalization="hipt").photometric([u8], p.unsqueeze(1))[0] * 0.5 + 0.5
        ref = (TF.rgb_to_grayscale(u8, num_output_channels=3) if name == "gray" else TF.solarize(u8, 128)).float() / 255
        assert not torch.allclose(ours, u8.float() / 255, atol=1e-3)  # the operation did something
    # torchvision rounds grey to uint8 (one step = 1/255); the float path keeps the exact value
    torch.testing.assert_close(ours, ref, atol=1.01 / 255 if name == "gray" else 2e-5, rtol=0)


def test_photometric_parameters_cover_their_ranges():
    aug = PatchMultiCrop(16, 8, 8, defer_photometric=True)
    img = np.zeros((24, 24, 3), np.uint8)
    from hipt.pretrain.augment import _P

    p = torch.cat([aug(img, seed=s)[-1] for s in range(200)])  # [200 · 10, 13]
    assert 0.6 <= p[:, _P["brightness"]].min() and p[:, _P["brightness"]].max() <= 1.4
    assert -0.1 <= p[:, _P["hue"]].min() and p[:, _P["hue"]].max() <= 0.1
    assert abs(p[:, _P["jitter"]].mean() - 0.8) < 0.05 and abs(p[:, _P["gray"]].mean() - 0.2) < 0.05
    per_view = p.view(200, 10, -1)
    assert per_view[:, 0, _P["blur"]].min() == 1 and abs(per_view[:, 1, _P["blur"]].mean() - 0.1) < 0.06
    assert per_view[:, 2:, _P["solarize"]].max() == 0 and 0.1 < per_view[:, 1, _P["solarize"]].mean() < 0.3
    orders = p[:, _P["order0"]:_P["order3"] + 1]
    assert torch.equal(orders.sort(1).values, torch.arange(4.0).expand_as(orders))


def test_paired_gain_interval():
    from hipt.pretrain.evaluate import paired_gain_interval

    rng = np.random.default_rng(0)
    base = rng.random(400) < 0.7
    better = base | (rng.random(400) < 0.5)  # fixes half of the base's errors, breaks none
    g, lo, hi = paired_gain_interval(better, base)
    assert g == pytest.approx(better.mean() - base.mean()) and 0 < lo < g < hi
    g, lo, hi = paired_gain_interval(base, base)
    assert g == lo == hi == 0.0  # identical classifiers: no spread at all
    shuffled = rng.permutation(base)  # same accuracy, unrelated errors: an interval around 0
    g, lo, hi = paired_gain_interval(shuffled, base)
    assert lo < 0 < hi
    with pytest.raises(ValueError):
        paired_gain_interval(base, base[:10])


def test_grid_multicrop_crops_are_subgrids():
    assert grid_crop_sizes(16) == (14, 6) and grid_crop_sizes(8) == (7, 3)
    d, h, w = 5, 8, 8
    grid = torch.arange(d * h * w, dtype=torch.float32).reshape(d, h, w)
    crops = GridMultiCrop(7, 3, n_local=4)(grid, seed=3)
    assert [tuple(c.shape) for c in crops] == [(d, 7, 7)] * 2 + [(d, 3, 3)] * 4
    windows = {(t, l, f) for t in range(h) for l in range(w) for f in (0, 1)}
    for c in crops:
        s = c.shape[-1]
        assert any(
            t + s <= h and l + s <= w and torch.equal(c, grid[:, t:t + s, l:l + s].flip(-1) if f else grid[:, t:t + s, l:l + s])
            for t, l, f in windows
        )
    flips = {bool(torch.equal(c[:, :, 0] - c[:, :, 1], torch.ones_like(c[:, :, 0]))) for c in GridMultiCrop(7, 3, 16)(grid, seed=1)}
    assert flips == {True, False}  # both flipped and unflipped crops occur
    assert all(torch.equal(x, y) for x, y in zip(GridMultiCrop(7, 3)(grid, seed=5), GridMultiCrop(7, 3)(grid, seed=5)))


def test_grid_dropout_option():
    crops = GridMultiCrop(4, 2, n_local=1, dropout=0.5)(torch.ones(64, 4, 4), seed=0)
    values = torch.cat([c.flatten() for c in crops]).unique()
    assert set(values.tolist()) == {0.0, 2.0}


def test_tokens_to_grid_is_row_major():
    tokens = torch.arange(12, dtype=torch.float32).reshape(6, 2)  # 6 tokens of D=2 in a 2×3 grid
    g = tokens_to_grid(tokens, (2, 3))
    assert g.shape == (2, 2, 3) and g[:, 1, 0].tolist() == tokens[3].tolist()
    with pytest.raises(ValueError):
        tokens_to_grid(tokens)


# ---------------------------------------------------------------------------- sampler, data


def test_stream_sampler_shards_and_resumes():
    single = list(StreamSampler(10, global_batch=4, seed=3, total_steps=6))
    r0 = list(StreamSampler(10, global_batch=4, seed=3, rank=0, world_size=2, total_steps=6))
    r1 = list(StreamSampler(10, global_batch=4, seed=3, rank=1, world_size=2, total_steps=6))
    assert len(single) == 24 and len(r0) == len(r1) == 12
    for step in range(6):  # per step, rank 0's share then rank 1's = the single-process batch
        assert r0[2 * step:2 * step + 2] + r1[2 * step:2 * step + 2] == single[4 * step:4 * step + 4]
    assert list(StreamSampler(10, 4, seed=3, start_step=2, total_steps=6)) == single[8:]
    assert sorted(i for i, _ in single[:10]) == list(range(10))  # each pass is a permutation
    assert len({s for _, s in single}) == 24  # one augmentation seed per stream position
    assert single != list(StreamSampler(10, 4, seed=4, total_steps=6))


def test_array_and_folder_datasets(tmp_path):
    from PIL import Image

    imgs = np.random.default_rng(0).integers(0, 255, (3, 40, 40, 3), dtype=np.uint8)
    for i, im in enumerate(imgs):
        (tmp_path / f"c{i % 2}").mkdir(exist_ok=True)
        Image.fromarray(im).save(tmp_path / f"c{i % 2}" / f"{i}.png")
    aug = PatchMultiCrop(32, 16, 2)
    folder = ImageFolderPatches(tmp_path, aug)
    assert len(folder) == 3 and np.array_equal(folder.load(0), imgs[0])
    arr = ArrayPatches(imgs, aug)
    batch = collate_crops([arr[(i, 100 + i)] for i in range(3)])
    assert [tuple(b.shape) for b in batch] == [(3, 3, 32, 32)] * 2 + [(3, 3, 16, 16)] * 2
    assert all(torch.equal(x, y) for x, y in zip(arr[(2, 5)], folder[(1, 5)]))  # c0/0, c0/2, c1/1


def test_feature_grids_from_h5_read_one_region(tmp_path):
    import h5py

    feats = np.random.default_rng(0).standard_normal((3, 16, 6)).astype(np.float16)
    for name in ("a", "b"):
        with h5py.File(tmp_path / f"{name}.h5", "w") as f:
            f["feats256"] = feats
            f["coords"] = np.zeros((3, 2), np.int64)
    ds = FeatureGrids(tmp_path, GridMultiCrop(3, 2, 2))
    assert len(ds) == 6
    grid = ds.load(4)
    assert grid.shape == (6, 4, 4)
    assert torch.allclose(grid, tokens_to_grid(torch.from_numpy(feats[1].astype(np.float32))))
    assert [tuple(c.shape) for c in ds[(4, 0)]] == [(6, 3, 3)] * 2 + [(6, 2, 2)] * 2
    import pickle

    assert pickle.loads(pickle.dumps(ds)).load(0).shape == (6, 4, 4)  # picklable for workers after reading


def test_feature_grids_bad_input(tmp_path):
    from hipt.errors import InputFileError

    with pytest.raises(InputFileError, match="no .h5"):
        FeatureGrids(tmp_path)
    (tmp_path / "x.h5").write_bytes(b"not hdf5")
    with pytest.raises(InputFileError, match="x.h5"):
        FeatureGrids(tmp_path)


def test_knn_accuracy():
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((3, 8)) * 5
    y_tr, y_te = rng.integers(0, 3, 60), rng.integers(0, 3, 30)
    x_tr = centers[y_tr] + rng.standard_normal((60, 8))
    x_te = centers[y_te] + rng.standard_normal((30, 8))
    assert knn_accuracy(x_tr, y_tr, x_te, y_te, k=5) > 0.9


def test_slide_patches_read_from_hipt_patch_regions(tmp_path):
    from hipt.phantom import make_slide
    from hipt.pretrain import SlidePatches
    from hipt.tiling import load_coords, patch_slide

    layout = np.zeros((4, 4), np.int64)
    layout[:2, :2] = [[1, 2], [3, 4]]  # one 512-px region of tissue, the rest glass
    make_slide(tmp_path / "s.tif", layout, seed=0, n_variants=1)
    patch_slide(tmp_path / "s.tif", tmp_path / "patch", region_size=512, patch_size=256, min_tissue=0.1)
    rc = load_coords(tmp_path / "patch" / "coords" / "s.h5")
    assert len(rc) >= 1
    ds = SlidePatches(tmp_path / "patch")
    assert len(ds) == 4 * len(rc)
    region = rc.read_region(rc.open_slide(), 0)
    for j, (r, c) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
        assert np.array_equal(ds.load(j), region[r * 256:(r + 1) * 256, c * 256:(c + 1) * 256])
    small = SlidePatches([tmp_path / "patch" / "coords" / "s.h5"], patch_size=128, transform=PatchMultiCrop(32, 16, 2))
    assert len(small) == 16 * len(rc) and small.load(5).shape == (128, 128, 3)
    assert len(small[(5, 1)]) == 4


def test_region_truth_matches_feature_coords_to_phantom_regions(tmp_path):
    import h5py

    from hipt.errors import InputFileError
    from hipt.phantom import load_truth, make_cohort
    from hipt.phantom.ground_truth import region_grids, region_tokens, region_truth

    cohort = make_cohort("context", tmp_path / "cohort", n_slides=2, regions_per_slide=2, region_size=1024,
                         n_variants=1, progress=False)
    feats_dir = tmp_path / "feats"
    feats_dir.mkdir()
    expected = []
    for sid, path in zip(cohort.table["slide_id"], cohort.table["path"]):
        truth = load_truth(path)
        coords = np.vstack([truth.regions[::-1, :2], [[10**6, 10**6]]])  # reversed, plus a non-truth region
        with h5py.File(feats_dir / f"{sid}.h5", "w") as f:
            f["coords"] = coords
            f["feats256"] = np.random.default_rng(0).standard_normal((len(coords), 16, 3)).astype(np.float32)
            f["feats4k"] = np.arange(len(coords) * 5, dtype=np.float32).reshape(-1, 5) + 100 * len(expected)
        expected += [bool(v) for v in truth.informative[::-1]] + [None]
    regions = region_truth(feats_dir, cohort.table)
    assert len(regions) == len(expected)
    got = [None if v != v else bool(v) for v in regions["informative"]]  # NaN -> None
    assert got == expected
    assert set(regions["label"]) <= {0, 1}
    grids = region_grids(feats_dir, regions.iloc[:2])
    assert grids.shape == (2, 3, 4, 4)
    picked = regions.iloc[[1, 4]]  # slide 0 region 1, slide 1 region 1 (each file's rows start at 100·3·i)
    np.testing.assert_array_equal(region_tokens(feats_dir, picked), [np.arange(5, 10) + 0.0, np.arange(5, 10) + 300.0])
    with h5py.File(feats_dir / f"{regions['slide_id'][0]}.h5", "a") as f:
        del f["feats4k"]
    with pytest.raises(InputFileError, match="no feats4k"):
        region_tokens(feats_dir, regions)


def test_stain_shift_is_deterministic_and_changes_colours():
    from hipt.pretrain.evaluate import stain_shift

    x = np.random.default_rng(0).integers(0, 255, (3, 32, 32, 3), dtype=np.uint8)
    a, b = stain_shift(x, seed=1), stain_shift(x, seed=1)
    assert a.shape == x.shape and a.dtype == np.uint8 and np.array_equal(a, b)
    assert not np.array_equal(a, x) and not np.array_equal(a, stain_shift(x, seed=2))


def test_token_bank_groups_real_tokens_by_true_tissue_and_bank_grids_follow_layouts(tmp_path):
    import h5py

    from hipt.phantom import load_truth, make_cohort
    from hipt.phantom.ground_truth import bank_grids, token_bank

    cohort = make_cohort("context", tmp_path / "cohort", n_slides=2, regions_per_slide=2, region_size=1024,
                         n_variants=1, progress=False)
    feats_dir = tmp_path / "feats"
    feats_dir.mkdir()
    for i, (sid, path) in enumerate(zip(cohort.table["slide_id"], cohort.table["path"])):
        truth = load_truth(path)
        # token = (tissue code, slide, 0): the bank must put each token under its cell's true tissue
        toks = np.stack([np.stack([lay.ravel().astype(np.float32), np.full(lay.size, i, np.float32),
                                   np.zeros(lay.size, np.float32)], 1) for lay in truth.region_layouts()])
        with h5py.File(feats_dir / f"{sid}.h5", "w") as f:
            f["coords"] = truth.regions[:, :2]
            f["feats256"] = toks
    bank = token_bank(feats_dir, cohort.table)
    assert set(bank) == set(int(c) for lay in load_truth(cohort.table["path"][0]).region_layouts() for c in np.unique(lay))
    for code, tokens in bank.items():
        assert tokens.shape[1] == 3 and np.all(tokens[:, 0] == code)
    assert sum(len(t) for t in bank.values()) == 2 * 2 * 16  # 2 slides × 2 regions × 4×4 cells

    layouts = np.stack([load_truth(cohort.table["path"][0]).region_layouts()[0]] * 3)
    grids = bank_grids(layouts, bank, seed=5)
    assert grids.shape == (3, 16, 3) and grids.dtype == np.float32
    np.testing.assert_array_equal(grids[:, :, 0], layouts.reshape(3, -1))
    np.testing.assert_array_equal(grids, bank_grids(layouts, bank, seed=5))
    with pytest.raises(ValueError, match="no token of tissue code"):
        bank_grids(np.full((1, 4, 4), 99), bank)


def test_slide_centred_removes_each_slides_mean_token():
    from hipt.pretrain.evaluate import slide_centred

    rng = np.random.default_rng(0)
    grids = rng.normal(size=(6, 3, 2, 2)).astype(np.float32)
    groups = np.array(["a", "a", "b", "b", "b", "c"])
    grids[groups == "b"] += 10.0  # a slide-level shift
    out = slide_centred(grids, groups)
    for g in "abc":
        np.testing.assert_allclose(out[groups == g].mean(axis=(0, 2, 3)), 0, atol=1e-5)
    np.testing.assert_allclose(out[0] - out[1], grids[0] - grids[1], atol=1e-6)  # within a slide: unchanged
    with pytest.raises(ValueError, match="groups"):
        slide_centred(grids, groups[:3])
