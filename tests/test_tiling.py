"""hipt.tiling: the region grid, coords files, patch_slide/patch_folder and resumability."""

from __future__ import annotations

import csv

import h5py
import numpy as np
import pytest
from PIL import Image

from _helpers_slides import tissue_image, write_tiff_slide
from hipt.slide import open_slide
from hipt.tiling import (
    DEFAULT_MIN_TISSUE,
    load_coords,
    patch_folder,
    patch_slide,
    region_grid,
    split_patches,
)
from hipt.tissue import TissueMask, segment_tissue


@pytest.fixture(scope="module")
def slide_path(tmp_path_factory):
    # 1280×768 at 0.5 µm/px; tissue in the left half → with 256-px regions: a 5×3 grid
    rgb, _ = tissue_image(1280, 768, blobs=[(350, 384, 300)], seed=0)
    return write_tiff_slide(tmp_path_factory.mktemp("slides") / "s1.tif", rgb, mpp=0.5, downsamples=(1, 4))


def _fake_mask(dims, mask):
    return TissueMask(mask=mask, dimensions=dims, thumbnail=np.zeros((*mask.shape, 3), np.uint8), threshold=0.1)


def test_grid_anchored_at_origin_and_filtered(slide_path):
    with open_slide(slide_path) as s:
        tissue = segment_tissue(s)
        g = region_grid(s, tissue, region_size=256, min_tissue=0.5)
    assert g.level0_region_size == 256 and g.grid_shape == (3, 5)
    assert len(g.all_coords) == 15 and (g.all_coords % 256 == 0).all()
    assert (g.all_coords[:5, 1] == 0).all() and list(g.all_coords[:5, 0]) == [0, 256, 512, 768, 1024]
    assert len(g.coords) > 0 and (g.tissue_fraction >= 0.5).all()
    assert (g.coords[:, 0] < 700).all()  # nothing kept on the glass on the right
    assert g.coords.dtype == np.int64


def test_grid_extent_scales_with_mpp(tmp_path):
    rgb, _ = tissue_image(1024, 1024, seed=1)
    path = write_tiff_slide(tmp_path / "forty.tif", rgb, mpp=0.25, downsamples=(1, 4))
    with open_slide(path) as s:
        mask = _fake_mask(s.dimensions, np.ones((64, 64), bool))
        g = region_grid(s, mask, region_size=256, min_tissue=0.1)
    assert g.level0_region_size == 512 and g.grid_shape == (2, 2)  # 256 px at 0.5 µm = 512 level-0 px at 40×
    assert sorted(map(tuple, g.coords.tolist())) == [(0, 0), (0, 512), (512, 0), (512, 512)]


def test_small_slide_gives_one_padded_region(tmp_path):
    rgb, _ = tissue_image(700, 500, blobs=[(350, 250, 200)], seed=2)
    path = write_tiff_slide(tmp_path / "small.tif", rgb, mpp=0.5, downsamples=(1,))
    with open_slide(path) as s:
        tissue = segment_tissue(s)
        g = region_grid(s, tissue, region_size=4096)
    assert g.coords.tolist() == [[0, 0]]
    assert g.tissue_fraction[0] < DEFAULT_MIN_TISSUE  # kept although the region is mostly padding


def test_patch_slide_outputs_and_load_coords(slide_path, tmp_path):
    out = tmp_path / "out"
    r = patch_slide(slide_path, out, region_size=256, patch_size=64, min_tissue=0.3)
    assert r.status == "ok" and not r.skipped and r.n_regions > 0
    rc = load_coords(out / "coords" / "s1.h5")
    assert len(rc) == r.n_regions and rc.coords.dtype == np.int64 and rc.coords.shape == (r.n_regions, 2)
    assert (rc.region_size, rc.patch_size, rc.target_mpp, rc.slide_mpp) == (256, 64, 0.5, 0.5)
    assert rc.level0_region_size == 256 and rc.slide_path == slide_path.resolve()
    assert rc.slide_dimensions == (1280, 768) and rc.patches_per_side == 4
    pc = rc.patch_coords()
    assert pc.shape == (len(rc), 16, 2)
    np.testing.assert_array_equal(pc[:, 0], rc.coords)
    np.testing.assert_array_equal(pc[:, 5] - rc.coords, np.tile([64, 64], (len(rc), 1)))  # row 1, col 1
    with h5py.File(out / "coords" / "s1.h5") as f:
        a = f["coords"].attrs
        assert f["coords"].dtype == np.int64
        for key in ("level0_region_size", "target_mpp", "slide_mpp", "region_size", "patch_size", "slide_path"):
            assert key in a
    mask = np.asarray(Image.open(out / "masks" / "s1.png"))
    assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 255} and mask.any()
    thumb = Image.open(out / "thumbnails" / "s1.png")
    assert thumb.mode == "RGB" and thumb.size[0] >= mask.shape[1]
    with rc.open_slide() as s:
        region = rc.read_region(s, 0)
    assert region.shape == (256, 256, 3)
    assert not list(out.rglob("*.tmp*"))


def test_rerun_skips_and_parameter_change_redoes(slide_path, tmp_path):
    out = tmp_path / "out"
    r1 = patch_slide(slide_path, out, region_size=256, patch_size=64)
    mtime = (out / "coords" / "s1.h5").stat().st_mtime_ns
    r2 = patch_slide(slide_path, out, region_size=256, patch_size=64)
    assert r2.skipped and r2.n_regions == r1.n_regions
    assert (out / "coords" / "s1.h5").stat().st_mtime_ns == mtime
    r3 = patch_slide(slide_path, out, region_size=512, patch_size=64)
    assert not r3.skipped and load_coords(out / "coords" / "s1.h5").region_size == 512
    r4 = patch_slide(slide_path, out, region_size=512, patch_size=64, overwrite=True)
    assert not r4.skipped


def test_patch_folder_summary_and_resume(slide_path, tmp_path):
    out = tmp_path / "out"
    res = patch_folder(slide_path.parent, out, progress=False, region_size=256, patch_size=64)
    assert [r.slide for r in res] == ["s1"] and res[0].status == "ok"
    rows = list(csv.DictReader(open(out / "summary.csv")))
    assert rows == [{"slide": "s1", "status": "ok", "n_regions": str(res[0].n_regions), "reason": ""}]
    res2 = patch_folder(slide_path, out, progress=False, region_size=256, patch_size=64)
    assert res2[0].skipped
    assert list(csv.DictReader(open(out / "summary.csv"))) == rows


def test_invalid_parameters(slide_path, tmp_path):
    with pytest.raises(ValueError, match="multiple"):
        patch_slide(slide_path, tmp_path, region_size=500, patch_size=256)
    with pytest.raises(ValueError, match="min_tissue"):
        patch_slide(slide_path, tmp_path, min_tissue=1.5)


def test_phantom_regions_align_with_the_grid(tmp_path):
    phantom = pytest.importorskip("hipt.phantom")
    if not hasattr(phantom, "tile_regions"):
        pytest.skip("hipt.phantom.tile_regions not available")
    T = phantom
    g = 4  # regions of 4×4 cells of 256 px = 1024 px
    reg = np.full((g, g), T.STROMA, np.int8)
    reg[1:3, 1:3] = T.TUMOUR
    layout, boxes = T.tile_regions([reg, reg, reg], margin=1, cols=2)
    ps = T.make_slide(tmp_path / "cohort_slide.tif", layout, seed=0)
    r = patch_slide(ps.path, tmp_path / "out", region_size=1024, patch_size=256, min_tissue=0.5)
    rc = load_coords(r.coords_path)
    expected = sorted((int(c) * 256, int(rr) * 256) for c, rr, _, _ in boxes)
    assert sorted(map(tuple, rc.coords.tolist())) == expected


def test_split_patches_row_major():
    region = np.zeros((8, 8, 3), np.uint8)
    for r in range(4):
        for c in range(4):
            region[2 * r:2 * r + 2, 2 * c:2 * c + 2] = 10 * r + c
    patches = split_patches(region, 2)
    assert patches.shape == (16, 2, 2, 3)
    assert [int(p[0, 0, 0]) for p in patches[:6]] == [0, 1, 2, 3, 10, 11]
    with pytest.raises(ValueError):
        split_patches(region[:, :6], 2)


def test_failure_removes_outputs_of_an_earlier_run(slide_path, tmp_path):
    out = tmp_path / "out"
    patch_slide(slide_path, out, region_size=256, patch_size=64)
    assert (out / "coords" / "s1.h5").exists()
    with pytest.raises(Exception, match="no 1024-px region"):
        patch_slide(slide_path, out, region_size=1024, patch_size=64, min_tissue=0.9)
    assert not list((out / "coords").iterdir()) and not list((out / "masks").iterdir())
