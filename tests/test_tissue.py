"""hipt.tissue: saturation/Otsu segmentation on a low level, region tissue fractions."""

from __future__ import annotations

import numpy as np
import pytest

from _helpers_slides import tissue_image, write_tiff_slide
from hipt.slide import open_slide
from hipt.tissue import TissueMask, otsu_threshold, saturation, segment_tissue


def _truth_at(mask_shape, truth):
    h, w = mask_shape
    H, W = truth.shape
    ys = ((np.arange(h) + 0.5) * H / h).astype(int)
    xs = ((np.arange(w) + 0.5) * W / w).astype(int)
    return truth[ys][:, xs]


def iou(a, b):
    return (a & b).sum() / max((a | b).sum(), 1)


def test_saturation_and_otsu():
    rgb = np.array([[[255, 255, 255], [200, 100, 150], [0, 0, 0], [100, 50, 100]]], np.uint8)
    np.testing.assert_allclose(saturation(rgb)[0], [0.0, 0.5, 0.0, 0.5])
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(0.02, 0.005, 5000), rng.normal(0.4, 0.05, 5000)]).clip(0, 1)
    assert 0.05 < otsu_threshold(values) < 0.3


def test_segments_disks_on_glass(tmp_path):
    blobs = [(600, 500, 300), (1500, 1200, 250)]
    rgb, truth = tissue_image(2048, 1536, blobs=blobs, seed=0)
    path = write_tiff_slide(tmp_path / "two.tif", rgb, mpp=0.5, downsamples=(1, 4))
    with open_slide(path) as s:
        m = segment_tissue(s)
    assert isinstance(m, TissueMask) and m.mask.dtype == bool
    assert m.mask.shape == (384, 512)  # 2 µm/px (min_mpp) for a small slide
    assert m.mpp == pytest.approx(2.0) and m.downsample == pytest.approx(4.0)
    assert iou(m.mask, _truth_at(m.mask.shape, truth)) > 0.93
    assert m.thumbnail.shape == (384, 512, 3)


def test_blank_glass_has_no_tissue(tmp_path):
    rgb, _ = tissue_image(1024, 1024, blobs=[], seed=1)
    path = write_tiff_slide(tmp_path / "blank.tif", rgb, mpp=0.5, downsamples=(1, 4))
    with open_slide(path) as s:
        m = segment_tissue(s)
    assert not m.mask.any() and m.fraction == 0.0


def test_dust_is_removed_and_holes_filled(tmp_path):
    rgb, truth = tissue_image(1024, 1024, blobs=[(512, 512, 300), (60, 60, 6)], seed=2)
    # a 40 µm lumen (80 px) inside the tissue
    yy, xx = np.mgrid[0:1024, 0:1024]
    lumen = (xx - 512) ** 2 + (yy - 512) ** 2 < 40**2
    rgb[lumen] = (244, 242, 244)
    path = write_tiff_slide(tmp_path / "dust.tif", rgb, mpp=0.5, downsamples=(1, 4))
    with open_slide(path) as s:
        m = segment_tissue(s)
    assert m.mask.shape == (256, 256)
    assert not m.mask[:40, :40].any()  # the 6-px speck is dust
    assert m.mask[128, 128]  # the lumen (mask px 128 = level-0 512) is filled


def test_mask_size_is_bounded_and_reads_a_low_level(tmp_path):
    rgb, _ = tissue_image(2048, 1024, seed=3)
    path = write_tiff_slide(tmp_path / "big.tif", rgb, mpp=0.25, downsamples=(1, 4, 16))
    with open_slide(path) as s:
        levels = []
        orig = s._read_level
        s._read_level = lambda loc, level, size: levels.append(level) or orig(loc, level, size)
        m = segment_tissue(s, max_size=200, min_mpp=0.1)
    assert max(m.mask.shape) <= 200
    assert 0 not in levels and set(levels) == {1}  # 4× level: the coarsest still finer than 10.24×


def test_region_fractions_match_brute_force():
    rng = np.random.default_rng(0)
    mask = rng.random((50, 80)) < 0.3
    tm = TissueMask(mask=mask, dimensions=(800, 500), thumbnail=np.zeros((50, 80, 3), np.uint8), threshold=0.1)
    coords = np.array([[0, 0], [100, 200], [700, 400], [780, 480]])
    got = tm.region_fractions(coords, 100)
    for (x, y), g in zip(coords, got, strict=True):
        sub = mask[y // 10:(y + 100) // 10, x // 10:(x + 100) // 10]
        assert g == pytest.approx(sub.sum() / 100)  # outside the slide counts as no tissue
    assert tm.fraction == pytest.approx(mask.mean())


def test_phantom_mask_matches_ground_truth(tmp_path):
    phantom = pytest.importorskip("hipt.phantom")
    if not hasattr(phantom, "make_slide"):
        pytest.skip("hipt.phantom.make_slide not available")
    # a layout with fat on the tissue border (the hard case for saturation thresholds)
    T = phantom
    layout = np.zeros((12, 12), np.int8)
    layout[2:10, 2:10] = T.STROMA
    layout[2:6, 2:6] = T.ADIPOSE
    layout[6:10, 6:10] = T.TUMOUR
    layout[7:9, 2:5] = T.LYMPHOCYTES
    ps = T.make_slide(tmp_path / "ph.tif", layout, seed=0)
    truth = T.load_truth(ps.path)
    with open_slide(ps.path) as s:
        m = segment_tissue(s)
    gt = _truth_at(m.mask.shape, np.kron(truth.tissue_mask(), np.ones((truth.cell, truth.cell), bool)))
    assert iou(m.mask, gt) >= 0.9
