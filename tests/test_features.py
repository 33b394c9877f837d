"""Feature extraction: shapes and parity with the region encoder, resumability, atomicity, failures, bf16, CLI."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from hipt import cli
from hipt.features import build_encoder, extract_folder, extract_slide, load_features
from hipt.models import HIPT4K, save_backbone, vit4k_tiny, vit256_tiny

LAYOUTS = [
    np.array([[1, 2, 3], [2, 1, 0], [4, 1, 2]]),  # 768 px: a 2×2 grid of 512-px regions (edges padded)
    np.array([[2, 2], [3, 1]]),  # 512 px: one region
    np.array([[1, 4, 4, 2], [0, 1, 3, 2]]),  # 1024×512: two regions
]


def make_patched_cohort(root: Path, n: int = 3) -> tuple[Path, Path]:
    """Small phantom slides and their ``hipt patch`` output (512-px regions of 2×2 256-px patches)."""
    from hipt.phantom import make_slide
    from hipt.tiling import patch_folder

    slides = root / "slides"
    for i in range(n):
        make_slide(slides / f"ph{i}.tif", layout=LAYOUTS[i % len(LAYOUTS)], seed=i)
    patch_folder(slides, root / "patch", region_size=512, patch_size=256, min_tissue=0.0, progress=False)
    return slides, root / "patch"


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> tuple[Path, Path]:
    return make_patched_cohort(tmp_path_factory.mktemp("cohort"))


@pytest.fixture(scope="module")
def encoder() -> HIPT4K:
    torch.manual_seed(0)
    return HIPT4K(vit256_tiny(), vit4k_tiny(), patch_batch=3).eval()


def test_extract_slide_matches_the_region_encoder(cohort, encoder, tmp_path):
    from hipt.tiling import load_coords

    slides, patch = cohort
    coords = patch / "coords" / "ph0.h5"
    res = extract_slide(None, coords, tmp_path / "ph0.h5", encoder, batch_regions=3, progress=False)
    assert res.status == "ok" and res.n_regions == 4
    d = load_features(tmp_path / "ph0.h5")
    assert d["feats256"].shape == (4, 4, 192) and d["feats4k"].shape == (4, 192) and d["coords"].shape == (4, 2)
    rc = load_coords(coords)
    np.testing.assert_array_equal(d["coords"].numpy(), rc.coords)
    a = d["attrs"]
    assert a["dtype"] == "fp32" and a["normalization"]["mean"] == [0.5, 0.5, 0.5] and a["grid"] == [2, 2]
    assert a["models"]["config"]["vit256"]["embed_dim"] == 192 and a["n_regions"] == 4
    # the same regions through the encoder directly
    with rc.open_slide() as s:
        regions = torch.stack([torch.from_numpy(rc.read_region(s, i).copy()).permute(2, 0, 1) for i in range(4)])
    with torch.no_grad():
        out = encoder(regions)
    torch.testing.assert_close(d["feats256"], out.patches, atol=1e-5, rtol=0)
    torch.testing.assert_close(d["feats4k"], out.region, atol=1e-5, rtol=0)


def test_workers_give_the_same_features(cohort, encoder, tmp_path):
    _, patch = cohort
    coords = patch / "coords" / "ph2.h5"
    extract_slide(None, coords, tmp_path / "a.h5", encoder, workers=0, progress=False)
    extract_slide(None, coords, tmp_path / "b.h5", encoder, workers=2, batch_regions=2, progress=False)
    a, b = load_features(tmp_path / "a.h5"), load_features(tmp_path / "b.h5")
    torch.testing.assert_close(a["feats256"], b["feats256"], atol=1e-5, rtol=0)
    torch.testing.assert_close(a["feats4k"], b["feats4k"], atol=1e-5, rtol=0)


def test_folder_is_resumable_and_records_failures(cohort, encoder, tmp_path):
    slides, patch = cohort
    out = tmp_path / "feats"
    r1 = extract_folder(patch, out, encoder, slides=slides, progress=False)
    assert [r.status for r in r1] == ["ok", "ok", "ok"]
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.glob("*.h5")}
    r2 = extract_folder(patch, out, encoder, slides=slides, progress=False)
    assert [r.status for r in r2] == ["skipped"] * 3
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.h5")} == mtimes
    # a slide that is gone fails, is recorded, and does not stop the others
    (out / "ph1.h5").unlink()
    broken = tmp_path / "slides_missing_one"
    broken.mkdir()
    for p in slides.glob("*.tif"):
        if p.stem != "ph1":
            os.symlink(p, broken / p.name)
    r3 = extract_folder(patch, out, encoder, slides=broken, progress=False, log=lambda line: None)
    assert {r.slide: r.status for r in r3} == {"ph0": "skipped", "ph1": "failed", "ph2": "skipped"}
    with open(out / "summary.csv", newline="") as f:
        rows = {r["slide"]: r for r in csv.DictReader(f)}
    assert rows["ph1"]["status"] == "failed" and "no slide named 'ph1'" in rows["ph1"]["reason"]
    assert rows["ph0"]["status"] == "ok" and rows["ph0"]["n_regions"] == "4"
    assert not (out / "ph1.h5").exists()


def test_killed_run_leaves_no_file(cohort, tmp_path):
    _, patch = cohort
    enc = HIPT4K(vit256_tiny(), vit4k_tiny()).eval()
    calls = {"n": 0}
    real = enc.forward

    def dying(x, **kw):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(x, **kw)

    enc.forward = dying
    with pytest.raises(KeyboardInterrupt):
        extract_slide(None, patch / "coords" / "ph0.h5", tmp_path / "ph0.h5", enc, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_patch_tokens_only_and_float16_storage(cohort, tmp_path):
    _, patch = cohort
    enc = HIPT4K(vit256_tiny(), None).eval()
    extract_slide(None, patch / "coords" / "ph1.h5", tmp_path / "ph1.h5", enc, storage_dtype="float16", progress=False)
    import h5py

    with h5py.File(tmp_path / "ph1.h5") as f:
        assert set(f) == {"feats256", "coords"} and f["feats256"].dtype == np.float16
    d = load_features(tmp_path / "ph1.h5")
    assert d["feats256"].dtype == torch.float32 and "feats4k" not in d and d["attrs"]["storage_dtype"] == "float16"


def _cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(a.flatten(0, -2), b.flatten(0, -2), dim=-1)


def test_bf16_autocast_keeps_cosine_similarity(cohort, encoder, tmp_path):
    _, patch = cohort
    coords = patch / "coords" / "ph0.h5"
    extract_slide(None, coords, tmp_path / "fp32.h5", encoder, dtype="fp32", progress=False)
    extract_slide(None, coords, tmp_path / "bf16.h5", encoder, dtype="bf16", progress=False)
    a, b = load_features(tmp_path / "fp32.h5"), load_features(tmp_path / "bf16.h5")
    assert b["attrs"]["dtype"] == "bf16"
    for k in ("feats256", "feats4k"):
        cos = _cos(a[k], b[k])
        assert cos.min() >= 0.999, (k, cos.min())
    assert not torch.equal(a["feats256"], b["feats256"])  # bf16 really ran


def test_bf16_full_size_patch_encoder():
    """ViT-S/16 at full size (random weights) under bf16 autocast: cosine ≥ 0.999 with fp32."""
    from hipt.models import normalize, vit256_small

    torch.manual_seed(0)
    m = vit256_small().eval()
    x = normalize(torch.randint(0, 256, (2, 3, 256, 256), dtype=torch.uint8))
    with torch.inference_mode():
        ref = m(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = m(x).float()
    assert _cos(ref, low).min() >= 0.999


def test_cli_extract_with_checkpoint_files(cohort, tmp_path, capsys):
    slides, patch = cohort
    torch.manual_seed(1)
    w256 = save_backbone(vit256_tiny(), tmp_path / "stage1.pth")
    w4k = save_backbone(vit4k_tiny(), tmp_path / "stage2.pth")
    out = tmp_path / "out"
    code = cli.main(["extract", "--coords", str(patch), "--slides", str(slides), "--out", str(out),
                     "--vit256", str(w256), "--vit4k", str(w4k), "--workers", "0", "--no-progress",
                     "--device", "cpu"])
    assert code == 0
    assert sorted(p.name for p in out.glob("*.h5")) == ["ph0.h5", "ph1.h5", "ph2.h5"]
    assert "3 extracted" in capsys.readouterr().err
    # a model spec that does not exist is one clear error line, exit 1
    code = cli.main(["extract", "--coords", str(patch), "--out", str(out), "--vit256", str(tmp_path / "nope.pth")])
    assert code == 1 and "checkpoint file not found" in capsys.readouterr().err


def test_build_encoder_specs():
    enc = build_encoder("random:vit256_tiny", "none")
    assert enc.vit4k is None and enc.vit256.embed_dim == 192
    with pytest.raises(Exception, match="unknown model factory"):
        build_encoder("random:nope", None)


def test_cli_extract_128px_patches(cohort, tmp_path, capsys):
    """The CPU book's geometry: coords cut with 128-px patches need ``--patch-size 128``; without it the
    error names the coords file and both sizes, and no feature file is written."""
    from hipt.tiling import patch_folder

    slides, _ = cohort
    patch = tmp_path / "patch128"
    patch_folder(slides, patch, region_size=256, patch_size=128, min_tissue=0.0, progress=False)
    torch.manual_seed(1)
    w256 = save_backbone(vit256_tiny(), tmp_path / "stage1.pth")
    args = ["extract", "--coords", str(patch), "--slides", str(slides), "--vit256", str(w256), "--vit4k", "none",
            "--workers", "0", "--no-progress", "--device", "cpu"]
    bad = tmp_path / "bad"
    assert cli.main(args + ["--out", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "patches of 128 px, but the encoder cuts 256-px patches" in err and "ph0.h5" in err
    assert not list(bad.glob("*.h5"))
    out = tmp_path / "out"
    assert cli.main(args + ["--out", str(out), "--patch-size", "128"]) == 0
    d = load_features(out / "ph1.h5")  # one 512-px slide: 2×2 regions of 2×2 128-px patches
    assert d["feats256"].shape == (4, 4, 192) and d["attrs"]["patch_size"] == 128
    enc = build_encoder(str(w256), None, patch_size=128)
    with torch.no_grad():
        ref = enc(torch.zeros(1, 3, 256, 256, dtype=torch.uint8))
    assert ref.patches.shape == (1, 4, 192)
