"""The route from slides to Table 1 (``hipt route``), end to end on three phantom slides on the CPU, and the
download manifest of the real TCGA tables."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hipt.cli import main
from hipt.tasks.route import (
    GDC_MANIFEST_COLUMNS,
    TABLE1_TASKS,
    check_features,
    filter_gdc_manifest,
    gdc_request_body,
    route_estimate,
    slide_manifest,
    write_manifest,
)
from hipt.tasks.splits import make_splits
from hipt.tasks.train import fold_paths

# 1024-px regions of 256-px layout cells: 2, 1 and 2 regions
SHAPES = [(4, 8), (4, 4), (8, 4)]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def route(tmp_path_factory) -> Path:
    """Phantom slides → ``hipt patch`` → ``hipt extract`` (tiny random models), and a task table with splits."""
    from hipt.phantom import make_slide, random_layout

    root = tmp_path_factory.mktemp("route")
    for i, (rows, cols) in enumerate(SHAPES):
        make_slide(root / "slides" / f"ph{i}.tif", layout=random_layout(rows, cols, seed=i), seed=i)
    assert main(["patch", str(root / "slides"), "--out", str(root / "patch"), "--region-size", "1024",
                 "--min-tissue", "0", "--no-progress"]) == 0
    assert main(["extract", "--coords", str(root / "patch"), "--out", str(root / "features"),
                 "--vit256", "random:vit256_tiny", "--vit4k", "random:vit4k_tiny", "--storage-dtype", "float16",
                 "--workers", "0", "--no-progress", "--device", "cpu"]) == 0
    table = pd.DataFrame({"slide_id": ["ph0", "ph1", "ph2"], "label": [0, 1, 0], "case_id": ["c0", "c1", "c2"]})
    table.to_csv(root / "table.csv", index=False)
    # one fold: a slide of each class to train on, the other class-0 slide to validate on
    make_splits(table, 1, "subtype", seed=0, out_dir=root / "splits", val_frac=0.5, test_frac=0.0)
    return root


def test_route_on_phantom_slides(route, tmp_path, capsys):
    feats = route / "features"
    assert sorted(p.name for p in feats.glob("*.h5")) == ["ph0.h5", "ph1.h5", "ph2.h5"]

    # every table slide has features with feats4k
    report = check_features(route / "table.csv", feats)
    assert report.ok and report.regions == {"ph0": 2, "ph1": 1, "ph2": 2}
    capsys.readouterr()
    assert main(["route", "check", "--tasks", str(route / "table.csv"), "--features", str(feats)]) == 0
    assert "3 of 3 slides have features" in capsys.readouterr().out

    # fine-tuning on those features with the reference's settings writes the per-fold records
    out = tmp_path / "finetune"
    assert main(["finetune", "--features", str(feats), "--task", str(route / "table.csv"), "--splits",
                 str(route / "splits"), "--method", "hipt", "--out", str(out), "--epochs", "1", "--folds", "0",
                 "--fractions", "1.0", "--reference-accumulation", "--no-standardize", "--device", "cpu"]) == 0
    records = pd.read_csv(fold_paths(out, "table", "hipt", 1.0, 0)["results"])
    assert set(records["split"]) >= {"train", "val"} and {"auc", "acc"} <= set(records["metric"])

    # a slide whose file is gone is named, and the command fails
    (feats / "ph1.h5").rename(tmp_path / "ph1.h5")
    try:
        assert main(["route", "check", "--tasks", str(route / "table.csv"), "--features", str(feats),
                     "--splits", str(route / "splits")]) == 1
        shown = capsys.readouterr().out
        assert "2 of 3 slides" in shown and "missing: 1: ph1" in shown
        assert check_features(route / "table.csv", feats).missing == ["ph1"]
    finally:
        (tmp_path / "ph1.h5").rename(feats / "ph1.h5")


def test_check_names_files_without_region_tokens(route, tmp_path):
    import h5py

    feats = tmp_path / "feats"
    feats.mkdir()
    for sid in ("ph0", "ph1"):
        with h5py.File(feats / f"{sid}.h5", "w") as f:
            f["feats256"] = np.zeros((2, 16, 8), np.float16)
    (feats / "ph2.h5").write_bytes(b"not hdf5")
    report = check_features(route / "table.csv", feats)
    assert not report.ok and report.without_feats4k == ["ph0", "ph1"] and report.unreadable == ["ph2"]
    assert "without feats4k: 2" in report.summary()


def test_manifest_files_and_gdc_filter(tmp_path):
    df = pd.DataFrame({"task": "t", "project": "TCGA-BRCA", "case_id": ["c0", "c0", "c1"],
                       "slide_id": ["s0", "s1", "s2"], "file_name": ["s0.svs", "s1.svs", "s2.svs"]})
    paths = write_manifest(pd.concat([df, df.assign(task="u")]), tmp_path / "slides.tsv")
    assert len(pd.read_csv(paths["tsv"], sep="\t")) == 6
    assert paths["file_names"].read_text().split() == ["s0.svs", "s1.svs", "s2.svs"]
    body = json.loads(paths["gdc_filter"].read_text())
    assert body == gdc_request_body(df["file_name"]) and body["size"] == 3
    names = ["s0.svs", "s1.svs", "s2.svs"]
    assert body["filters"] == {"op": "in", "content": {"field": "files.file_name", "value": names}}

    # a manifest of a whole project, narrowed to the table's slides
    gdc = pd.DataFrame({"id": ["u0", "u1", "u9"], "filename": ["s0.svs", "s1.svs", "other.svs"],
                        "md5": ["a", "b", "c"], "size": ["10", "20", "30"], "state": "released"})
    gdc.to_csv(tmp_path / "gdc.txt", sep="\t", index=False)
    kept, absent = filter_gdc_manifest(tmp_path / "gdc.txt", df)
    assert list(kept.columns) == list(GDC_MANIFEST_COLUMNS) and kept["filename"].tolist() == ["s0.svs", "s1.svs"]
    assert absent == ["s2.svs"]


def test_slide_manifest_of_the_real_tables(tcga_reference, tmp_path, capsys):
    df = slide_manifest(TABLE1_TASKS, root=tcga_reference)
    assert list(df.columns) == ["task", "project", "case_id", "slide_id", "file_name"]
    for task, g in df.groupby("task"):
        assert g["slide_id"].is_unique, task
    assert df["file_name"].str.endswith(".svs").all()
    assert (df["file_name"] == df["slide_id"] + ".svs").all()
    assert df["slide_id"].str.startswith("TCGA-").all()
    counts = df.groupby("task")["project"].value_counts().to_dict()
    assert counts == {
        ("tcga_brca_subtype", "TCGA-BRCA"): 875,
        ("tcga_kidney_subtype", "TCGA-KIRC"): 498, ("tcga_kidney_subtype", "TCGA-KIRP"): 289,
        ("tcga_kidney_subtype", "TCGA-KICH"): 118,
        ("tcga_lung_subtype", "TCGA-LUAD"): 492, ("tcga_lung_subtype", "TCGA-LUSC"): 466,
    }
    # the slide's case is the barcode's first three fields
    assert (df["slide_id"].str.split("-").str[:3].str.join("-") == df["case_id"]).all()

    assert main(["route", "manifest", "--tasks", "tcga_lung_subtype", "--out", str(tmp_path), "--root",
                 str(tcga_reference)]) == 0
    assert "958 slide files (TCGA-LUAD 492, TCGA-LUSC 466)" in capsys.readouterr().out
    assert json.loads((tmp_path / "gdc_filter.json").read_text())["size"] == 958

    # a portal manifest of the two projects, lacking one table slide: narrowed, and the absent slide named
    lung = df[df["task"] == "tcga_lung_subtype"]
    gdc = pd.DataFrame({"id": [f"u{i}" for i in range(len(lung))], "filename": lung["file_name"].tolist(),
                        "md5": "0" * 32, "size": "1000000000", "state": "released"})
    gdc = pd.concat([gdc.iloc[1:], gdc.iloc[:1].assign(filename="TCGA-XX-0000-01Z-00-DX1.svs")])
    gdc.to_csv(tmp_path / "portal.txt", sep="\t", index=False)
    assert main(["route", "manifest", "--tasks", "tcga_lung_subtype", "--out", str(tmp_path), "--root",
                 str(tcga_reference), "--gdc-manifest", str(tmp_path / "portal.txt")]) == 1
    assert lung["file_name"].iloc[0] in capsys.readouterr().err
    assert len(pd.read_csv(tmp_path / "gdc_manifest.txt", sep="\t")) == 957


def test_route_estimate(tcga_reference, tmp_path):
    est = route_estimate(root=tcga_reference)
    assert (est["slides"] == 875 + 905 + 958).all()
    m = int(est["regions"].iloc[0])
    assert 35 * 2738 < m < 45 * 2738  # the released files hold ~38 regions per slide
    disk = est.set_index("step")["disk_gb"]
    assert disk["download (gdc-client)"] == pytest.approx(2738.0)
    feats = next(v for k, v in disk.items() if k.startswith("features on disk"))
    assert feats == pytest.approx(m * (256 * 384 * 2 + 192 * 4 + 16) / 1e9)
    assert est["source"].str.len().gt(0).all()

    # without records: the measured steps say so instead of inventing a number
    bare = route_estimate("tcga_brca_subtype", regions_per_slide=40, records_dir=tmp_path, root=tcga_reference)
    assert int(bare["regions"].iloc[0]) == 40 * 875
    encode = bare[bare["step"].str.startswith("hipt extract: encode")]
    assert set(encode["machine"]) == {"NVIDIA T4", "NVIDIA H100"} and encode["hours"].map(math.isnan).all()
