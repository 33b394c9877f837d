"""Phantom slides and cohorts: determinism, OpenSlide compatibility, ground truth, matched composition."""

from __future__ import annotations

import json
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hipt import phantom as P
from hipt.errors import HIPTError, InputFileError


# ---------------------------------------------------------------- patches

def test_render_patch_deterministic_and_shaped():
    for t in range(len(P.TISSUES)):
        a, ma = P.render_patch(t, 128, seed=3)
        b, mb = P.render_patch(P.TISSUES[t], 128, seed=3)
        assert a.shape == (128, 128, 3) and a.dtype == np.uint8
        assert ma.shape == (128, 128) and ma.dtype == bool
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(ma, mb)
    c, _ = P.render_patch("tumour", 128, seed=4)
    assert np.abs(c.astype(int) - P.render_patch("tumour", 128, seed=3)[0]).mean() > 5


def test_nuclei_fraction_by_tissue_type():
    frac = {t: np.mean([P.render_patch(t, 256, seed=s)[1].mean() for s in range(3)]) for t in range(len(P.TISSUES))}
    assert frac[P.BACKGROUND] == 0
    assert frac[P.ADIPOSE] < 0.01
    assert 0.005 < frac[P.STROMA] < 0.06
    assert 0.25 < frac[P.TUMOUR] < 0.5
    assert frac[P.LYMPHOCYTES] > frac[P.TUMOUR] and frac[P.LYMPHOCYTES] > 0.45


def test_nuclei_are_dark_and_colours_are_he_like():
    rgb, m = P.render_patch("lymphocytes", 256, seed=0)
    nuc, rest = rgb[m].astype(float), rgb[~m].astype(float)
    assert nuc.mean() < rest.mean() - 40  # nuclei are dark
    assert nuc[:, 2].mean() > nuc[:, 1].mean()  # hematoxylin: blue > green (purple-blue)
    stroma = P.render_patch("stroma", 256, seed=0)[0].reshape(-1, 3).astype(float).mean(0)
    assert stroma[0] > stroma[2] > stroma[1]  # eosin: pink (red > blue > green)
    glass = P.render_patch("background", 256, seed=0)[0]
    assert glass.min() > 220 and np.ptp(glass.reshape(-1, 3).mean(0)) < 6  # near-white, neutral


def test_phantom_patches_balanced_and_deterministic():
    x, y = P.phantom_patches(10, seed=1, size=64)
    assert x.shape == (10, 64, 64, 3) and x.dtype == np.uint8 and y.dtype == np.int64
    assert sorted(np.bincount(y, minlength=5)) == [2] * 5
    x2, y2 = P.phantom_patches(10, seed=1, size=64)
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(y, y2)
    _, y3 = P.phantom_patches(6, seed=0, size=32, tissues=["tumour", "stroma"])
    assert set(y3.tolist()) == {P.TUMOUR, P.STROMA}


def test_unknown_tissue_is_an_error():
    with pytest.raises(HIPTError, match="unknown tissue"):
        P.render_patch("muscle")


# ---------------------------------------------------------------- slides

@pytest.fixture(scope="module")
def small_slide(tmp_path_factory) -> P.PhantomSlide:
    layout = np.zeros((12, 12), np.int8)
    layout[2:10, 2:10] = P.random_layout(8, 8, seed=5)
    layout[2:10, 2:10][layout[2:10, 2:10] == P.BACKGROUND] = P.STROMA
    layout[3, 3:7] = [P.TUMOUR, P.STROMA, P.LYMPHOCYTES, P.ADIPOSE]
    return P.make_slide(tmp_path_factory.mktemp("slide") / "ph.tif", layout, seed=7, mpp=0.5, n_variants=2)


def test_openslide_reads_mpp_and_pyramid(small_slide):
    openslide = pytest.importorskip("openslide")
    s = openslide.OpenSlide(str(small_slide.path))
    assert float(s.properties["openslide.mpp-x"]) == pytest.approx(0.5, abs=1e-3)
    assert float(s.properties["openslide.mpp-y"]) == pytest.approx(0.5, abs=1e-3)
    assert s.level_count > 1
    assert s.dimensions == (12 * 256, 12 * 256)
    assert s.level_downsamples[1] == pytest.approx(4.0)


def test_other_mpp_is_written(tmp_path):
    openslide = pytest.importorskip("openslide")
    slide = P.make_slide(tmp_path / "a.tif", np.full((5, 5), P.STROMA), seed=0, mpp=0.25, n_variants=1)
    assert float(openslide.OpenSlide(str(slide.path)).properties["openslide.mpp-x"]) == pytest.approx(0.25, abs=1e-3)


def test_slide_pixels_match_truth(small_slide):
    openslide = pytest.importorskip("openslide")
    s = openslide.OpenSlide(str(small_slide.path))
    truth = P.load_truth(small_slide.path)
    np.testing.assert_array_equal(truth.layout, small_slide.truth.layout)
    assert truth.mpp == 0.5 and truth.cell == 256 and truth.tissue_names == P.TISSUES
    comp = P._Composer(truth)
    # level 0: the JPEG tile equals the composed cell up to compression error
    x, y = 3 * 256, 3 * 256
    read = np.asarray(s.read_region((x, y), 0, (1024, 256)).convert("RGB")).astype(int)
    assert np.abs(read - comp.window_rgb(x, y, 1024, 256)).mean() < 6
    # nuclei: only in tissue cells, more in lymphocytes than in stroma; glass is bright
    nuc = truth.nuclei_mask(x, y, 1024, 256)
    assert nuc[:, 512:768].mean() > nuc[:, 256:512].mean() > 0
    assert truth.nuclei_mask(0, 0, 512, 512).sum() == 0
    assert np.asarray(s.read_region((0, 0), 0, (256, 256)).convert("RGB")).min() > 200
    # a low level agrees with level 0 (block means)
    low = np.asarray(s.read_region((x, y), 1, (256, 64)).convert("RGB")).astype(float)
    full = read.reshape(64, 4, 256, 4, 3).mean((1, 3))
    assert np.abs(low - full).mean() < 8
    # the tissue map at pixel level
    tm = truth.tissue_map(x, y, 1024, 256)
    assert tm.shape == (256, 1024) and list(tm[0, ::256]) == [P.TUMOUR, P.STROMA, P.LYMPHOCYTES, P.ADIPOSE]


def test_make_slide_deterministic(tmp_path):
    lay = P.random_layout(6, 6, seed=1)
    a = P.make_slide(tmp_path / "a.tif", lay, seed=2, n_variants=2)
    b = P.make_slide(tmp_path / "b.tif", lay, seed=2, n_variants=2)
    assert a.path.read_bytes() == b.path.read_bytes()
    c = P.make_slide(tmp_path / "c.tif", lay, seed=3, n_variants=2)
    assert c.path.read_bytes() != a.path.read_bytes()


def test_load_truth_missing(tmp_path):
    with pytest.raises(InputFileError, match="ground truth not found"):
        P.load_truth(tmp_path / "nope.tif")


def test_tile_composition_memory_is_bounded():
    """Composing tiles of every level of a 32,768² slide allocates per tile, never per slide."""
    layout = P.random_layout(128, 128, seed=0)
    rng = np.random.default_rng(0)
    truth = P.PhantomTruth(layout=layout, seed=0, bank_seed=0, n_variants=2,
                           variant=rng.integers(0, 2, layout.shape), transform=rng.integers(0, 8, layout.shape))
    comp = P._Composer(truth)
    for d in (4, 16, 64):  # per-bank tables: [T, V, 8, cell/d, cell/d, 3], not per slide
        comp.level_table(d)
    tracemalloc.start()
    for d in (1, 4, 16, 64):
        for k in range(4):
            tile = comp.window_rgb(256 * k * 3, 256 * k, 256, 256, d)
            assert tile.shape == (256, 256, 3)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 32 * 2**20, f"peak {peak / 2**20:.0f} MiB for 256² tiles"  # the level-0 image is 3 GiB


def test_large_slide_peak_memory(tmp_path):
    """A 16,384² slide (768 MiB of RGB) is written with a small fraction of that in memory."""
    if not Path("/proc/self/status").is_file():
        pytest.skip("needs /proc/self/status (Linux) for the peak RSS of a fresh process")
    # VmHWM, not ru_maxrss: ru_maxrss survives fork+exec and would report pytest's own size
    code = (
        "import sys; from hipt.phantom import make_slide; "
        "make_slide(sys.argv[1], None, seed=0, size=16384, n_variants=2); "
        "print([l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1])"
    )
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "big.tif")], capture_output=True, text=True,
                         check=True, timeout=300)
    peak_mib = int(out.stdout.split()[-1]) / 1024  # kB
    full_mib = 16384 * 16384 * 3 / 2**20
    assert peak_mib < full_mib / 3, f"peak RSS {peak_mib:.0f} MiB vs {full_mib:.0f} MiB level 0"


# ---------------------------------------------------------------- layouts and cohorts

def test_context_regions_matched_composition_and_arrangement():
    rng = np.random.default_rng(0)
    for grid in (8, 16):
        counts = P.context_counts(grid)
        for informative in (True, False) * 5:
            lay = P.context_region(grid, informative, rng)
            assert {t: int((lay == t).sum()) for t in counts} == counts
            contact = P.touches(lay, P.TUMOUR, P.LYMPHOCYTES, diagonal=True)
            assert (contact >= 2) if informative else (contact == 0)


def test_composition_regions_follow_class_means():
    rng = np.random.default_rng(0)
    means = {}
    for name, fr in P.COMPOSITION_CLASSES["composition3"].items():
        lays = [P.composition_region(8, fr, rng) for _ in range(20)]
        means[name] = np.mean([[np.mean(l == t) for t in (P.TUMOUR, P.STROMA, P.LYMPHOCYTES)] for l in lays], 0)
    assert means["tumour_rich"][0] > 0.3 > means["stroma_rich"][0]
    assert means["stroma_rich"][1] > 0.5
    assert means["lymphocyte_rich"][2] > 0.3


@pytest.fixture(scope="module")
def context_cohort(tmp_path_factory) -> P.Cohort:
    return P.make_cohort("context", tmp_path_factory.mktemp("ctx"), n_slides=4, regions_per_slide=2,
                         region_size=2048, seed=1, n_variants=2, progress=False)


def test_context_cohort_table_and_truth(context_cohort):
    t = context_cohort.table
    assert list(t.columns[:5]) == ["slide_id", "path", "label", "label_name", "case_id"]
    assert sorted(t["label"]) == [0, 0, 1, 1]
    assert context_cohort.class_names == ("apart", "touching")
    assert (context_cohort.out_dir / "table.csv").is_file()
    multisets, contact = [], {0: [], 1: []}
    for _, row in t.iterrows():
        truth = P.load_truth(row["path"])
        assert len(truth.regions) == 2 and truth.informative.shape == (2,)
        assert truth.informative.any() == (row["label"] == 1) and truth.informative.sum() == row["n_informative"]
        assert truth.meta["label"] == row["label"]
        multisets.append(np.bincount(truth.layout.ravel(), minlength=5))
        for reg, inf in zip(truth.region_layouts(), truth.informative):
            assert reg.shape == (8, 8)
            c = P.touches(reg, P.TUMOUR, P.LYMPHOCYTES, diagonal=True)
            assert (c > 0) == bool(inf)
        # within regions (the unit a region encoder sees); contacts across region borders are not controlled
        contact[row["label"]].append(sum(P.touches(r, P.TUMOUR, P.LYMPHOCYTES) for r in truth.region_layouts()))
        # regions sit on the region grid anchored at the slide origin
        assert (truth.regions[:, :2] % 2048 == 0).all()
        idx = truth.region_of(truth.regions[:, :2] + 5)
        np.testing.assert_array_equal(idx, np.arange(len(truth.regions)))
        assert truth.region_of([[truth.size[0] - 1, truth.size[1] - 1]])[0] == -1  # glass margin
    regions = pd.read_csv(context_cohort.out_dir / "regions.csv")
    assert len(regions) == 8 and regions.groupby("slide_id")["informative"].sum().to_dict() == dict(
        zip(t["slide_id"], t["n_informative"]))
    for m in multisets[1:]:  # identical multiset of patch tissue types in every slide of both classes
        np.testing.assert_array_equal(m, multisets[0])
    assert min(contact[1]) > 0 and max(contact[0]) == 0


def test_make_cohort_idempotent(context_cohort):
    paths = [Path(p) for p in context_cohort.table["path"]]
    mtimes = [p.stat().st_mtime_ns for p in paths]
    again = P.make_cohort("context", context_cohort.out_dir, n_slides=4, regions_per_slide=2, region_size=2048,
                          seed=1, n_variants=2, progress=False)
    assert [p.stat().st_mtime_ns for p in paths] == mtimes
    assert again.table.drop(columns="arrangement_score").equals(context_cohort.table.drop(columns="arrangement_score"))
    assert json.loads((context_cohort.out_dir / "cohort.json").read_text())["kind"] == "context"


def test_arrangement_cohorts_have_matched_staining(context_cohort, tmp_path):
    # context and survival: no per-slide stain jitter (the arrangement is the only slide-to-slide difference)
    for _, row in context_cohort.table.iterrows():
        np.testing.assert_array_equal(P.load_truth(row["path"]).stain, np.ones(3, np.float32))
    assert json.loads((context_cohort.out_dir / "cohort.json").read_text())["stain_jitter"] == 0.0
    assert P.cohort_dir("context", 64, 4, 1024).name == "context_n64_r4_s1024_seed0_sj0_v2"
    assert P.cohort_dir("survival", 32, 4, 1024, seed=1).name.endswith("_seed1_sj0_v2")
    # the composition cohorts keep the default jitter, and their folder names (and caches)
    assert P.cohort_dir("composition2", 48, 4, 1024).name == "composition2_n48_r4_s1024_seed0"
    c = P.make_cohort("composition2", tmp_path / "c2", n_slides=2, regions_per_slide=1, region_size=1024,
                      patch_size=128, n_variants=1, progress=False)
    assert "stain_jitter" not in json.loads((c.out_dir / "cohort.json").read_text())
    assert (P.load_truth(c.table["path"][0]).stain != 1).any()
    # an explicit jitter is recorded, and changes the default folder
    assert P.cohort_dir("context", 64, 4, 1024, stain_jitter=0.06).name == "context_n64_r4_s1024_seed0_v2"


def test_survival_plan_columns_and_censoring():
    plans = P._cohort_plan("survival", 300, 4, 8, seed=0)
    months = np.array([p["survival_months"] for p in plans])
    cens = np.array([p["censorship"] for p in plans])
    score = np.array([np.mean(p["informative"]) for p in plans])
    assert (months > 0).all() and set(cens.tolist()) <= {0, 1}
    assert 0.25 <= cens.mean() <= 0.45
    events = cens == 0
    # contact is protective: high-contact cases live longer among the uncensored
    assert np.median(months[events & (score >= 0.75)]) > np.median(months[events & (score <= 0.25)])


def test_survival_cohort_table(tmp_path):
    c = P.make_cohort("survival", tmp_path, n_slides=3, regions_per_slide=1, region_size=2048, seed=0,
                      n_variants=1, progress=False)
    for col in ("case_id", "slide_id", "survival_months", "censorship"):
        assert col in c.table.columns
    assert c.table["case_id"].is_unique


def test_cli_slide(tmp_path, capsys):
    from hipt.cli import main

    out = tmp_path / "cli.tif"
    assert main(["phantom", "slide", str(out), "--size", "2048", "--seed", "1"]) == 0
    assert out.is_file() and P.truth_path(out).is_file()
    assert "2048x2048" in capsys.readouterr().out


def test_cli_cohort(tmp_path, capsys):
    from hipt.cli import main

    out = tmp_path / "coh"
    args = ["phantom", "cohort", "--kind", "composition2", "--out", str(out), "--n-slides", "2",
            "--regions-per-slide", "1", "--region-size", "1024", "--seed", "3", "--stain-jitter", "0"]
    assert main(args) == 0
    t = pd.read_csv(out / "table.csv")
    assert len(t) == 2 and set(t["label_name"]) <= {"tumour_rich", "stroma_rich"}
    assert json.loads((out / "cohort.json").read_text())["stain_jitter"] == 0.0
    assert "2 slides" in capsys.readouterr().out


def test_cli_slide_needs_a_path(capsys):
    from hipt.cli import main

    assert main(["phantom", "slide"]) == 1
    assert "give the output path" in capsys.readouterr().err
