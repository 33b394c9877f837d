"""Bad inputs to ``hipt patch`` / the slide API: each fails with one clear line naming the file and the
problem, never a library traceback and never a partial output."""

from __future__ import annotations

import csv
import shutil

import numpy as np
import pytest
from PIL import Image

from _helpers_slides import tissue_image, write_tiff_slide
from hipt.cli import main
from hipt.errors import InputFileError, MissingMPPError, SlideError
from hipt.slide import open_slide
from hipt.tiling import load_coords, patch_folder, patch_slide


def _summary(out):
    with open(out / "summary.csv", newline="") as f:
        return {row["slide"]: row for row in csv.DictReader(f)}


def _outputs(out, name):
    return [p for p in (out / "coords" / f"{name}.h5", out / "masks" / f"{name}.png",
                        out / "thumbnails" / f"{name}.png") if p.exists()]


def _no_temp_files(out):
    return not [p for p in out.rglob("*") if ".tmp" in p.name] if out.exists() else True


def _cli_error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


@pytest.fixture(scope="module")
def good_slide(tmp_path_factory):
    rgb, _ = tissue_image(1024, 768, blobs=[(400, 380, 300)], seed=0)
    return write_tiff_slide(tmp_path_factory.mktemp("good") / "good.tif", rgb, mpp=0.5, downsamples=(1, 4))


def test_missing_file(tmp_path, capsys):
    missing = tmp_path / "nope.svs"
    with pytest.raises(SlideError, match=r"nope\.svs: file not found"):
        open_slide(missing)
    with pytest.raises(SlideError, match=r"nope\.svs: file not found"):
        patch_slide(missing, tmp_path / "out")
    assert main(["patch", str(missing), "--out", str(tmp_path / "out"), "--no-progress"]) == 1
    assert f"error: {missing}: file not found" in _cli_error(capsys)
    assert not (tmp_path / "out").exists()


def test_not_a_slide_with_a_slide_extension(tmp_path, capsys):
    fake = tmp_path / "notes.svs"
    fake.write_text("this is not a slide\n")
    with pytest.raises(SlideError, match=r"notes\.svs: not a whole-slide image"):
        open_slide(fake)
    out = tmp_path / "out"
    assert main(["patch", str(fake), "--out", str(out), "--no-progress"]) == 1
    assert f"{fake}: not a whole-slide image" in _cli_error(capsys)
    assert _summary(out)["notes"]["status"] == "failed" and _outputs(out, "notes") == []


@pytest.mark.parametrize("fraction", [0.3, 0.9, 0.999])
def test_truncated_svs(shared_slides, tmp_path, fraction):
    data = (shared_slides / "CMU-1-Small-Region.svs").read_bytes()
    cut = tmp_path / "cut.svs"
    cut.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(SlideError, match=r"cut\.svs: truncated TIFF/SVS.*only \d+ bytes"):
        open_slide(cut)
    out = tmp_path / "out"
    res = patch_folder(cut, out, progress=False, log=lambda line: None)
    assert res[0].status == "failed" and "truncated" in res[0].reason
    assert _outputs(out, "cut") == [] and _no_temp_files(out)


def test_truncated_synthetic_tiff_is_reported(tmp_path):
    rgb, _ = tissue_image(512, 512)
    full = write_tiff_slide(tmp_path / "full.tif", rgb, mpp=0.5, downsamples=(1,))
    data = full.read_bytes()
    cut = tmp_path / "cut.tif"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(SlideError, match=r"cut\.tif: (truncated|neither a slide)"):
        open_slide(cut)


def test_slide_with_no_tissue(tmp_path, capsys):
    rgb, _ = tissue_image(1024, 1024, blobs=[], seed=3)
    blank = write_tiff_slide(tmp_path / "blank.tif", rgb, mpp=0.5, downsamples=(1, 4))
    out = tmp_path / "out"
    with pytest.raises(SlideError, match=r"blank\.tif: no tissue found"):
        patch_slide(blank, out)
    assert main(["patch", str(blank), "--out", str(out), "--no-progress"]) == 1
    assert f"{blank}: no tissue found" in _cli_error(capsys)
    row = _summary(out)["blank"]
    assert row["status"] == "failed" and "no tissue" in row["reason"] and row["n_regions"] == "0"
    assert _outputs(out, "blank") == [] and _no_temp_files(out)


def test_slide_smaller_than_one_region(tmp_path):
    rgb, _ = tissue_image(900, 700, blobs=[(450, 350, 250)], seed=4)
    small = write_tiff_slide(tmp_path / "small.tif", rgb, mpp=0.5, downsamples=(1,))
    r = patch_slide(small, tmp_path / "out")  # default 4096-px regions: 8× larger than the slide
    assert r.status == "ok" and r.n_regions == 1
    rc = load_coords(r.coords_path)
    assert rc.coords.tolist() == [[0, 0]] and rc.level0_region_size == 4096
    with rc.open_slide() as s:
        region = rc.read_region(s, 0)
    assert region.shape == (4096, 4096, 3) and (region[800:, :] == 255).all()  # white padding
    # small and empty: a clear "no tissue", not an empty coords file
    rgb, _ = tissue_image(900, 700, blobs=[], seed=5)
    tiny_blank = write_tiff_slide(tmp_path / "tiny_blank.tif", rgb, mpp=0.5, downsamples=(1,))
    with pytest.raises(SlideError, match=r"tiny_blank\.tif: no tissue found"):
        patch_slide(tiny_blank, tmp_path / "out")


def test_no_region_with_enough_tissue_says_so(tmp_path):
    rgb, _ = tissue_image(1024, 1024, blobs=[(512, 512, 250)], seed=6)  # spread over 4 regions of 512
    path = write_tiff_slide(tmp_path / "speck.tif", rgb, mpp=0.5, downsamples=(1, 4))
    with pytest.raises(SlideError, match=r"speck\.tif: no 512-px region .* has ≥ 90% tissue.*--min-tissue"):
        patch_slide(path, tmp_path / "out", region_size=512, min_tissue=0.9)


def test_slide_without_mpp(tmp_path, capsys):
    rgb, _ = tissue_image(1024, 768, blobs=[(500, 380, 300)], seed=7)
    nompp = write_tiff_slide(tmp_path / "nompp.tif", rgb, mpp=None, downsamples=(1, 4))
    with pytest.raises(MissingMPPError, match=r"nompp\.tif: resolution unknown"):
        open_slide(nompp)
    out = tmp_path / "out"
    assert main(["patch", str(nompp), "--out", str(out), "--no-progress"]) == 1
    err = _cli_error(capsys)
    assert f"{nompp}: resolution unknown" in err and "--mpp" in err
    assert _outputs(out, "nompp") == []
    assert main(["patch", str(nompp), "--out", str(out), "--mpp", "0.5", "--no-progress"]) == 0
    assert _summary(out)["nompp"]["status"] == "ok"
    assert load_coords(out / "coords" / "nompp.h5").slide_mpp == 0.5


def test_objective_power_is_only_a_hint(tmp_path, monkeypatch):
    import openslide

    rgb, _ = tissue_image(512, 512)
    path = write_tiff_slide(tmp_path / "obj.tif", rgb, mpp=None, downsamples=(1,))
    real = openslide.OpenSlide.properties

    def props(self):
        d = dict(real.fget(self))
        d["openslide.objective-power"] = "40"
        return d

    monkeypatch.setattr(openslide.OpenSlide, "properties", property(props))
    with pytest.raises(MissingMPPError, match=r"objective power 40x.*--mpp 0\.25"):
        open_slide(path)


def test_implausible_mpp_from_tiff_tags(tmp_path, capsys):
    import tifffile

    rgb, _ = tissue_image(512, 512, seed=8)
    # 10 pixels per centimetre = 1000 µm/px, as some real TIFF writers store
    tiled = tmp_path / "huge_px.tif"
    tifffile.imwrite(tiled, rgb, tile=(256, 256), resolution=(10.0, 10.0), resolutionunit="CENTIMETER",
                     photometric="rgb", metadata=None)
    flat = tmp_path / "flat_72dpi.tif"
    tifffile.imwrite(flat, rgb, resolution=(72.0, 72.0), resolutionunit="INCH", photometric="rgb", metadata=None)
    with pytest.raises(SlideError, match=r"huge_px\.tif: implausible resolution 1000 µm/px.*--mpp"):
        open_slide(tiled)
    with pytest.raises(SlideError, match=r"flat_72dpi\.tif: implausible resolution 352\.\d+ µm/px"):
        open_slide(flat)
    out = tmp_path / "out"
    assert main(["patch", str(tiled), "--out", str(out), "--no-progress"]) == 1
    assert f"{tiled}: implausible resolution" in _cli_error(capsys)
    assert _outputs(out, "huge_px") == []
    assert main(["patch", str(tiled), "--out", str(out), "--mpp", "0.5", "--region-size", "512",
                 "--no-progress"]) == 0


def test_folder_mixing_good_and_bad(good_slide, shared_data, tmp_path, capsys):
    folder = tmp_path / "mixed"
    folder.mkdir()
    shutil.copy(good_slide, folder / "a_good.tif")
    (folder / "b_fake.svs").write_text("not a slide")
    rgb, _ = tissue_image(512, 512, blobs=[], seed=9)
    write_tiff_slide(folder / "c_blank.tif", rgb, mpp=0.5, downsamples=(1,))
    write_tiff_slide(folder / "d_nompp.tif", tissue_image(512, 512)[0], mpp=None, downsamples=(1,))
    Image.fromarray(tissue_image(600, 400, blobs=[(300, 200, 180)])[0]).save(folder / "e_image.png")
    (folder / "README.txt").write_text("ignored: not a slide extension")
    out = tmp_path / "out"
    rc = main(["patch", str(folder), "--out", str(out), "--region-size", "512", "--no-progress"])
    assert rc == 1
    err = _cli_error(capsys)
    rows = _summary(out)
    assert set(rows) == {"a_good", "b_fake", "c_blank", "d_nompp", "e_image"}
    assert rows["a_good"]["status"] == "ok" and int(rows["a_good"]["n_regions"]) >= 1
    for bad, words in (("b_fake", "not a whole-slide image"), ("c_blank", "no tissue"),
                       ("d_nompp", "resolution unknown"), ("e_image", "resolution unknown")):
        assert rows[bad]["status"] == "failed" and words in rows[bad]["reason"], rows[bad]
        assert f"{folder / bad}" in err
        assert _outputs(out, bad) == []
    assert len(_outputs(out, "a_good")) == 3 and _no_temp_files(out)
    # a non-existent input stops before anything is written
    assert main(["patch", str(tmp_path / "absent"), "--out", str(tmp_path / "out3"), "--no-progress"]) == 1
    assert not (tmp_path / "out3").exists()
    # an empty folder says so
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputFileError, match="holds no slide files"):
        patch_folder(tmp_path / "empty", tmp_path / "out4", progress=False)


def test_unexpected_errors_do_not_stop_the_batch(good_slide, tmp_path, monkeypatch):
    import hipt.tiling as tiling

    folder = tmp_path / "two"
    folder.mkdir()
    shutil.copy(good_slide, folder / "x1.tif")
    shutil.copy(good_slide, folder / "x2.tif")
    real = tiling.segment_tissue

    def flaky(slide, **kw):
        if slide.name == "x1":
            raise RuntimeError("boom")
        return real(slide, **kw)

    monkeypatch.setattr(tiling, "segment_tissue", flaky)
    lines = []
    res = patch_folder(folder, tmp_path / "out", progress=False, log=lines.append, region_size=512)
    assert [r.status for r in res] == ["failed", "ok"]
    assert "unexpected RuntimeError: boom" in res[0].reason and "x1.tif" in lines[0]
    assert np.all(load_coords(tmp_path / "out" / "coords" / "x2.h5").coords % 512 == 0)


def test_plain_image_works_with_mpp(tmp_path, capsys):
    rgb, _ = tissue_image(600, 400, blobs=[(300, 200, 180)], seed=10)
    png = tmp_path / "tile.png"
    Image.fromarray(rgb).save(png)
    out = tmp_path / "out"
    assert main(["patch", str(png), "--out", str(out), "--no-progress"]) == 1
    assert f"{png}: resolution unknown: a plain PNG has no trustworthy resolution" in _cli_error(capsys)
    assert main(["patch", str(png), "--out", str(out), "--mpp", "0.5", "--no-progress"]) == 0
    rc = load_coords(out / "coords" / "tile.h5")
    assert rc.coords.tolist() == [[0, 0]] and rc.attrs["mpp_source"] == "given"
