"""hipt.slide: opening slides, resolving the resolution, reading regions at a target mpp."""

from __future__ import annotations

import numpy as np
import openslide
import pytest
from PIL import Image

from _helpers_slides import GLASS, tissue_image, write_tiff_slide
from hipt.errors import MissingMPPError, SlideError
from hipt.slide import CMU1_SMALL_REGION, PLAUSIBLE_MPP, level0_scale, open_slide


@pytest.mark.parametrize(
    ("mpp", "target", "expected"),
    [(0.5, 0.5, 1.0), (0.499, 0.5, 1.0), (0.25, 0.5, 2.0), (0.2527, 0.5, 2.0), (0.1245, 0.5, 4.0),
     (2.0, 0.5, 0.25), (1.0, 0.5, 0.5), (0.3, 0.5, 0.5 / 0.3), (0.46, 0.5, 0.5 / 0.46)],
)
def test_level0_scale_snaps_whole_ratios(mpp, target, expected):
    assert level0_scale(mpp, target) == pytest.approx(expected)


def test_cmu1_remote_constant():
    assert CMU1_SMALL_REGION.url.endswith("/Aperio/CMU-1-Small-Region.svs")
    assert CMU1_SMALL_REGION.sha256 == "ed92d5a9f2e86df67640d6f92ce3e231419ce127131697fbbce42ad5e002c8a7"
    assert CMU1_SMALL_REGION.filename == "CMU-1-Small-Region.svs"


def test_real_svs_metadata_and_padded_read(shared_slides):
    with open_slide(shared_slides / "CMU-1-Small-Region.svs") as s:
        assert s.name == "CMU-1-Small-Region"
        assert s.dimensions == (2220, 2967)
        assert s.mpp == pytest.approx(0.499) and s.mpp_source == "openslide.mpp-x"
        assert s.objective_power == 20
        assert s.level_count == 1 and s.levels_table()[0]["mpp"] == pytest.approx(0.499)
        # 0.499 → 0.5 is snapped to 1:1, so a read equals OpenSlide's own pixels
        assert s.level0_extent(4096) == 4096
        ref = np.asarray(openslide.OpenSlide(str(s.path)).read_region((1000, 1200), 0, (64, 48)).convert("RGB"))
        np.testing.assert_array_equal(s.read_region((1000, 1200), (64, 48)), ref)
        region = s.read_region((0, 0), 4096)
        assert region.shape == (4096, 4096, 3) and region.dtype == np.uint8
        assert (region[:, 2230:] == 255).all() and (region[2980:, :] == 255).all()  # padding is white
        assert region[:2967, :2220].mean() < 240  # tissue inside


def test_real_svs_without_mpp(shared_slides):
    path = shared_slides / "TCGA-CR-7395-01A-01-TS1.svs"
    with pytest.raises(MissingMPPError, match=r"TCGA-CR-7395.*resolution unknown.*--mpp"):
        open_slide(path)
    with open_slide(path, mpp=2.0) as s:
        assert s.mpp == 2.0 and s.mpp_source == "given"
        assert s.level_downsamples[1] == pytest.approx(2.0005, abs=1e-4)
        assert s.best_level(2.0) == 1  # OpenSlide's exact rule would say 0 (2.0005 > 2.0)
        assert s.read_region((0, 0), 256, target_mpp=4.0).shape == (256, 256, 3)
    with open_slide(path, require_mpp=False) as s:
        assert s.mpp is None


def test_pyramid_level_choice_and_resampling(tmp_path):
    rgb, _ = tissue_image(1024, 768, seed=1)
    path = write_tiff_slide(tmp_path / "forty.tif", rgb, mpp=0.25, downsamples=(1, 2, 4))
    with open_slide(path) as s:
        assert s.mpp == pytest.approx(0.25) and s.vendor == "generic-tiff"
        assert s.level_count == 3 and s.best_level(2.0) == 1 and s.best_level(1.9) == 0 and s.best_level(8) == 2
        assert s.level0_extent(256, 0.5) == 512
        calls = []
        orig = s._read_level
        s._read_level = lambda loc, level, size: calls.append((level, size)) or orig(loc, level, size)
        out = s.read_region((256, 128), 128, target_mpp=0.5)
        assert calls == [(1, (128, 128))]  # the 2× level, read 1:1
        expected = np.asarray(Image.fromarray(rgb).resize((512, 384), Image.Resampling.BOX))[64:192, 128:256]
        assert np.abs(out.astype(int) - expected.astype(int)).mean() < 2


def test_forty_x_without_a_2x_level_reads_level0_and_shrinks(tmp_path):
    rgb, _ = tissue_image(1024, 1024, seed=2)
    path = write_tiff_slide(tmp_path / "forty_no2x.tif", rgb, mpp=0.25, downsamples=(1, 4))
    with open_slide(path) as s:
        calls = []
        orig = s._read_level
        s._read_level = lambda loc, level, size: calls.append((level, size)) or orig(loc, level, size)
        out = s.read_region((0, 0), 256, target_mpp=0.5)
        assert calls == [(0, (512, 512))]  # 2× the size at level 0, then shrunk (like 8192 → 4096)
        assert out.shape == (256, 256, 3)
        expected = rgb[:512, :512].reshape(256, 2, 256, 2, 3).mean(axis=(1, 3))
        assert np.abs(out.astype(float) - expected).mean() < 1.5


def test_upsampling_and_outside_is_white(tmp_path):
    rgb, _ = tissue_image(512, 512, seed=3)
    path = write_tiff_slide(tmp_path / "coarse.tif", rgb, mpp=2.0, downsamples=(1,))
    with open_slide(path) as s:
        out = s.read_region((256, 256), 1024, target_mpp=0.5)  # 256 level-0 px → 1024 px
        assert out.shape == (1024, 1024, 3)
        assert s.level0_extent(1024) == 256
        far = s.read_region((5000, 5000), 64)
        assert (far == 255).all()
        half = s.read_region((480, 0), 256)  # 64 level-0 px: 32 inside, 32 outside
        assert (half[:, 140:] == 255).all() and (half[:, :120] != 255).any()


def test_thumbnail_and_lowres_bounded(tmp_path):
    rgb, _ = tissue_image(2048, 1024, seed=4)
    path = write_tiff_slide(tmp_path / "t.tif", rgb, mpp=0.5, downsamples=(1, 4, 16))
    with open_slide(path) as s:
        th = s.thumbnail(256)
        assert th.shape == (128, 256, 3)
        calls = []
        orig = s._read_level
        s._read_level = lambda loc, level, size: calls.append(level) or orig(loc, level, size)
        s.read_lowres(8.0)
        assert set(calls) == {1}  # the 4× level, never level 0


def test_plain_images_need_an_explicit_mpp(tmp_path):
    rgb, _ = tissue_image(300, 200)
    png = tmp_path / "tile.png"
    Image.fromarray(rgb).save(png)
    with pytest.raises(MissingMPPError, match=r"tile\.png.*resolution unknown"):
        open_slide(png)
    with open_slide(png, mpp=0.5) as s:
        assert s.dimensions == (300, 200) and s.vendor == "image"
        out = s.read_region((250, 150), 100)
        np.testing.assert_array_equal(out[:50, :50], rgb[150:200, 250:300])
        assert (out[60:, :] == 255).all()


def test_flat_tiff_resolution_tags(tmp_path):
    import tifffile

    rgb, _ = tissue_image(256, 256)
    good = tmp_path / "flat_good.tif"
    tifffile.imwrite(good, rgb, resolution=(1e4 / 0.5, 1e4 / 0.5), resolutionunit="CENTIMETER", photometric="rgb")
    with open_slide(good) as s:
        assert s.vendor == "image" and s.mpp == pytest.approx(0.5) and s.mpp_source == "tiff-resolution"


@pytest.mark.parametrize("mpp", [1000.0, 0.001, float("nan")])
def test_implausible_mpp_argument(tmp_path, mpp):
    rgb, _ = tissue_image(256, 256)
    path = write_tiff_slide(tmp_path / "s.tif", rgb, mpp=0.5, downsamples=(1,))
    with pytest.raises(SlideError, match=r"s\.tif: implausible resolution"):
        open_slide(path, mpp=mpp)
    lo, hi = PLAUSIBLE_MPP
    assert lo <= 0.5 <= hi


def test_slide_is_a_context_manager(tmp_path):
    rgb, _ = tissue_image(256, 256)
    path = write_tiff_slide(tmp_path / "s.tif", rgb, mpp=0.5, downsamples=(1,))
    with open_slide(path) as s:
        pass
    with pytest.raises(SlideError, match="closed"):
        s.read_region((0, 0), 16)
    assert "0.5 µm/px" in repr(open_slide(path))
    assert tuple(int(v) for v in GLASS) == GLASS


def test_slide_pickles_by_path(tmp_path):
    import pickle

    rgb, _ = tissue_image(256, 256)
    path = write_tiff_slide(tmp_path / "s.tif", rgb, mpp=0.5, downsamples=(1,))
    with open_slide(path, mpp=0.4) as s:
        clone = pickle.loads(pickle.dumps(s))
        assert clone.mpp == 0.4 and clone.dimensions == s.dimensions
        np.testing.assert_array_equal(clone.read_region((0, 0), 32), s.read_region((0, 0), 32))
        clone.close()
