"""Task tables and split files: the real reference files, downloads, generic tables, make_splits."""

from __future__ import annotations

import io
import logging
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hipt.errors import ChecksumError, HIPTError, InputFileError
from hipt.tasks import TASKS, load_task, make_splits, read_split_file, read_splits, read_table, subsample_train
from hipt.tasks.splits import Split, filter_split, write_split_file
from hipt.tasks.tcga import REFERENCE_BASE_URL, REFERENCE_COMMIT, fetch_task_files


def _paths(ref: Path, name: str) -> dict:
    spec = TASKS[name]
    table = ref / "dataset_csv" / spec.table_file if spec.table_file else None
    sub = "splits_subtype" if spec.kind == "subtype" else "splits_survival"
    return {"table": table, "splits_dir": ref / sub / spec.study}


# ------------------------------------------------------------------------------- real files
@pytest.mark.parametrize(
    "name, n_slides, classes, counts",
    [
        ("tcga_brca_subtype", 875, {"IDC": 726, "ILC": 149}, (715, 79, 81)),
        ("tcga_kidney_subtype", 905, {"CCRCC": 498, "PRCC": 289, "CHRCC": 118}, None),
        ("tcga_lung_subtype", 958, {"LUAD": 492, "LUSC": 466}, (785, 86, 87)),
    ],
)
def test_subtype_tasks_on_reference_files(tcga_reference, caplog, name, n_slides, classes, counts):
    with caplog.at_level(logging.INFO, logger="hipt.tasks"):
        task = load_task(name, **_paths(tcga_reference, name))
    assert task.kind == "subtype" and len(task.table) == n_slides and task.n_folds == 10
    assert task.class_names == list(TASKS[name].label_map)
    assert task.table["label_name"].value_counts().to_dict() == classes
    for code, idx in TASKS[name].label_map.items():
        assert (task.table.loc[task.table.label_name == code, "label"] == idx).all()
    # slide ids: the .svs suffix removed as a suffix (never rstrip), and nothing else touched
    assert not task.table["slide_id"].str.endswith(".svs").any()
    raw = read_table(_paths(tcga_reference, name)["table"])
    kept = raw[raw.oncotree_code.isin(TASKS[name].label_map)]
    assert (kept["slide_id"].str.len() - 4).tolist() == task.table["slide_id"].str.len().tolist()
    f0 = task.splits[0]
    if counts is not None:
        assert (len(f0.train), len(f0.val), len(f0.test)) == counts
        assert "splits_0.csv: kept train %d/" % counts[0] in caplog.text
    ids = set(task.table.slide_id)
    for s in task.splits:
        assert set(s.train) | set(s.val) | set(s.test) <= ids
        assert not (set(s.val) & set(s.test))
    row = task.split_counts.query("fold == 0 and split == 'train'").iloc[0]
    assert row.listed == {"tcga_brca_subtype": 845, "tcga_kidney_subtype": 753, "tcga_lung_subtype": 847}[name]


def test_test_sets_overlap_across_folds(tcga_reference):
    # Monte-Carlo folds, not disjoint 10-fold: documented in hipt.tasks.splits
    splits = read_splits(tcga_reference / "splits_subtype" / "tcga_lung")
    assert len(set(splits[0].test) & set(splits[1].test)) > 0
    assert sum(len(s.test) for s in splits) > len(set().union(*(s.test for s in splits)))


def test_quarter_training_set_is_reference_sample(tcga_reference):
    task = load_task("tcga_lung_subtype", **_paths(tcga_reference, "tcga_lung_subtype"))
    full, quarter = task.fold(0), task.fold(0, fraction=0.25)
    assert len(quarter.train) == 196 and quarter.val == full.val and quarter.test == full.test
    assert set(quarter.train) <= set(full.train)
    # identical to pandas' df_train.sample(frac=0.25, random_state=1) over the table rows of the train split
    df_train = task.table[task.table.slide_id.isin(full.train)]
    assert list(quarter.train) == df_train.sample(frac=0.25, random_state=1).slide_id.tolist()
    assert task.fold(0, 0.25).train == quarter.train  # deterministic


@pytest.mark.parametrize(
    "name, listed, kept",
    [("tcga_brca_survival", (764, 192), (715, 182)), ("tcga_luad_survival", (362, 91), (349, 81)),
     ("tcga_kirc_survival", (276, 69), (267, 67)), ("tcga_kirp_survival", (208, 52), (207, 50))],
)
def test_survival_tasks_on_reference_files(tcga_reference, name, listed, kept):
    task = load_task(name, **_paths(tcga_reference, name))
    assert task.kind == "survival" and task.n_folds == 5 and task.n_classes == 4
    c0 = task.split_counts.query("fold == 0").set_index("split")
    assert (c0.loc["train", "listed"], c0.loc["val", "listed"]) == listed
    assert (len(task.splits[0].train), len(task.splits[0].val)) == kept
    # patient level: one row per case, slides of a case share its label
    cases = task.cases
    assert cases.case_id.is_unique and sum(len(s) for s in cases.slide_ids) == len(task.table)
    assert (task.table.groupby("case_id").label.nunique() == 1).all()
    # MCAT bins: quartiles of the uncensored months, outer edges widened over all cases
    unc = cases.loc[cases.censorship == 0, "survival_months"]
    assert np.allclose(task.bin_edges[1:-1], np.quantile(unc, [0.25, 0.5, 0.75]))
    assert task.bin_edges[0] < cases.survival_months.min() and task.bin_edges[-1] > cases.survival_months.max()
    # val folds are disjoint (true 5-fold) and contain case ids
    vals = [set(s.val) for s in task.splits]
    assert all(not (a & b) for i, a in enumerate(vals) for b in vals[i + 1:])
    frame = task.frame(0, "val")
    assert list(frame.case_id) == list(task.splits[0].val) and "slide_ids" in frame


def test_brca_survival_counts(tcga_reference):
    task = load_task("tcga_brca_survival", **_paths(tcga_reference, "tcga_brca_survival"))
    assert len(task.table) == 937 and len(task.cases) == 897


def test_zip_members_are_read_in_memory(tcga_reference, tmp_path, monkeypatch):
    z = zipfile.ZipFile(tcga_reference / "dataset_csv" / "tcga_brca_subset.csv.zip")
    assert z.namelist() == ["../tcga_brca_subset.csv.zip"]  # the trap
    monkeypatch.chdir(tmp_path)
    df = read_table(tcga_reference / "dataset_csv" / "tcga_brca_subset.csv.zip")
    assert len(df) == 937 and df.columns[0] == "case_id"  # unnamed index dropped
    assert list(tmp_path.iterdir()) == [] and not (tmp_path.parent / "tcga_brca_subset.csv.zip").exists()


def test_removesuffix_not_rstrip(tmp_path):
    # an id ending in 's' or 'v' keeps its last characters ('…-01Z-00-DXs.svs'.rstrip('.svs') would eat them)
    pd.DataFrame({"slide_id": ["caseA-vs.svs", "caseB-DX1.svs", "caseC-s"], "label": [0, 1, 0]}).to_csv(
        tmp_path / "t.csv", index=False
    )
    write_split_file(Split(0, ("caseA-vs", "caseC-s"), ("caseB-DX1",), ("caseB-DX1x",)), tmp_path / "s" / "splits_0.csv")
    task = load_task(tmp_path / "t.csv", splits_dir=tmp_path / "s")
    assert task.table.slide_id.tolist() == ["caseA-vs", "caseB-DX1", "caseC-s"]
    assert task.splits[0].train == ("caseA-vs", "caseC-s") and task.splits[0].test == ()


# ------------------------------------------------------------------------------- downloads
def test_registry_urls_and_checksums(tcga_reference):
    assert REFERENCE_COMMIT.startswith("780fafae") and len(REFERENCE_COMMIT) == 40
    spec = TASKS["tcga_brca_subtype"]
    files = spec.remote_files()
    assert len(files) == 11
    assert files[0][1].url == f"{REFERENCE_BASE_URL}/2-Weakly-Supervised-Subtyping/dataset_csv/tcga_brca_subset.csv.zip"
    assert files[1][1].url.endswith("2-Weakly-Supervised-Subtyping/splits/10foldcv_subtype/tcga_brca/splits_0.csv")
    assert TASKS["tcga_stad_survival"].remote_files()[0][1].url.endswith(
        "2-Weakly-Supervised-Survival/splits/5foldcv/tcga_stad/splits_0.csv"
    )
    for name in TASKS:  # every checksum matches the shared copy
        fetch_task_files(name, root=tcga_reference)


def _mirror(ref: Path, dest: Path) -> None:
    """The reference repository's layout, linking to the shared copies."""
    for spec in TASKS.values():
        for rel, remote in spec.remote_files(base_url="http://x"):
            target = dest / remote.url.removeprefix("http://x/")
            target.parent.mkdir(parents=True, exist_ok=True)
            if not target.exists():
                target.symlink_to(ref / rel)


def test_fetch_over_http_then_cache(tcga_reference, tmp_path, http_server):
    mirror = tmp_path / "mirror"
    _mirror(tcga_reference, mirror)
    base = http_server(mirror)
    cache = tmp_path / "cache"
    files = fetch_task_files("tcga_kidney_subtype", base_url=base, dest=cache)
    assert files.table == cache / "dataset_csv" / "tcga_kidney_subset.csv.zip"
    assert sorted(p.name for p in files.splits_dir.iterdir())[:2] == ["splits_0.csv", "splits_1.csv"]
    task = load_task("tcga_kidney_subtype", table=files.table, splits_dir=files.splits_dir)
    assert len(task.table) == 905
    # the cache is a valid local copy; a second fetch needs no server
    import shutil

    shutil.rmtree(mirror)
    assert fetch_task_files("tcga_kidney_subtype", base_url=base, dest=cache) == files
    assert load_task("tcga_kidney_subtype", root=cache).n_folds == 10


def test_fetch_rejects_tampered_file(tcga_reference, tmp_path, http_server):
    mirror = tmp_path / "mirror"
    _mirror(tcga_reference, mirror)
    bad = mirror / "2-Weakly-Supervised-Survival/splits/5foldcv/tcga_stad/splits_3.csv"
    bad.unlink()
    bad.write_text(",train,val\n0,a,b\n")
    base = http_server(mirror)
    with pytest.raises(ChecksumError, match="splits_3.csv"):
        fetch_task_files("tcga_stad_survival", base_url=base, dest=tmp_path / "cache")
    with pytest.raises(HIPTError, match="not publish"):
        load_task("tcga_stad_survival", root=tcga_reference)


# ------------------------------------------------------------------------------- errors
def test_loader_errors_name_the_file(tmp_path):
    with pytest.raises(InputFileError, match="nope.csv: task table not found"):
        read_table(tmp_path / "nope.csv")
    z = tmp_path / "two.zip"
    with zipfile.ZipFile(z, "w") as f:
        f.writestr("a.csv", "x\n1\n")
        f.writestr("b.csv", "x\n2\n")
    with pytest.raises(InputFileError, match="two.zip: zip holds 2 files"):
        read_table(z)
    (tmp_path / "bad.zip").write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(InputFileError, match="bad.zip: corrupt zip"):
        read_table(tmp_path / "bad.zip")
    (tmp_path / "splits_0.csv").write_text(",train,test\n0,a,b\n")
    with pytest.raises(InputFileError, match="splits_0.csv: not a split file: no column val"):
        read_split_file(tmp_path / "splits_0.csv")
    (tmp_path / "splits_0.csv").write_text(",train,val,test\n0,a,b,a\n")
    with pytest.raises(InputFileError, match="splits_0.csv: train and test share 1 ids"):
        read_split_file(tmp_path / "splits_0.csv")
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "splits_1.csv").write_text(",train,val\n0,a,b\n")
    with pytest.raises(InputFileError, match="not numbered 0..0"):
        read_splits(tmp_path / "s")
    pd.DataFrame({"slide_id": ["a", "a"], "label": [0, 1]}).to_csv(tmp_path / "dup.csv", index=False)
    with pytest.raises(InputFileError, match="dup.csv: slide_id repeats"):
        load_task(tmp_path / "dup.csv", splits_dir=tmp_path / "s")
    pd.DataFrame({"slide": ["a"], "label": [0]}).to_csv(tmp_path / "nocol.csv", index=False)
    with pytest.raises(InputFileError, match=r"nocol.csv: a subtyping table needs column\(s\) \['slide_id'\]"):
        load_task(tmp_path / "nocol.csv", splits_dir=tmp_path / "s")
    pd.DataFrame({"slide_id": ["x", "y"], "label": [0, 1]}).to_csv(tmp_path / "other.csv", index=False)
    (tmp_path / "s" / "splits_0.csv").write_text(",train,val\n0,a,b\n")
    with pytest.raises(InputFileError, match="splits_0.csv: no train id of this split is in the table other.csv"):
        load_task(tmp_path / "other.csv", splits_dir=tmp_path / "s")
    with pytest.raises(HIPTError, match="no split folder given"):
        load_task(tmp_path / "other.csv")


# ------------------------------------------------------------------------------- own tables
def _phantom_table(n=40, seed=0, survival=False):
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({
        "slide_id": [f"slide_{i:03d}" for i in range(n)],
        "path": [f"/x/slide_{i:03d}.tif" for i in range(n)],
        "label": rng.integers(0, 2, n),
        "case_id": [f"case_{i // 2:03d}" for i in range(n)] if survival else [f"case_{i:03d}" for i in range(n)],
    })
    df["label_name"] = df.label.map({0: "apart", 1: "touching"})
    if survival:
        per_case = {c: (rng.exponential(30), int(rng.random() < 0.35)) for c in df.case_id.unique()}
        df["survival_months"] = df.case_id.map(lambda c: per_case[c][0])
        df["censorship"] = df.case_id.map(lambda c: per_case[c][1])
    return df


def test_make_splits_subtype_reference_format(tmp_path):
    table = _phantom_table(40)
    table.to_csv(tmp_path / "table.csv", index=False)
    folds = make_splits(table, n_folds=4, kind="subtype", seed=3, out_dir=tmp_path / "splits")
    assert [p.name for p in sorted((tmp_path / "splits").iterdir())] == [f"splits_{k}.csv" for k in range(4)]
    text = (tmp_path / "splits" / "splits_0.csv").read_text().splitlines()
    assert text[0] == ",train,val,test" and text[1].startswith("0,")
    for f in folds:
        assert set(f.train) | set(f.val) | set(f.test) == set(table.slide_id)
        assert not (set(f.val) & set(f.test)) and len(f.val) >= 2 and len(f.test) >= 2  # ≥1 per class
    assert read_split_file(tmp_path / "splits" / "splits_2.csv") == folds[2]
    task = load_task(tmp_path / "table.csv", splits_dir=tmp_path / "splits")
    assert task.class_names == ["apart", "touching"] and task.n_folds == 4
    assert make_splits(table, 4, seed=3)[1] == folds[1]  # deterministic


def test_make_splits_survival_and_patient_level(tmp_path):
    table = _phantom_table(60, survival=True)
    table.to_csv(tmp_path / "table.csv", index=False)
    folds = make_splits(table, n_folds=5, kind="survival", seed=0, out_dir=tmp_path / "splits")
    assert (tmp_path / "splits" / "splits_0.csv").read_text().splitlines()[0] == ",train,val"
    vals = [set(f.val) for f in folds]
    assert set().union(*vals) == set(table.case_id) and sum(map(len, vals)) == 30
    task = load_task(tmp_path / "table.csv", splits_dir=tmp_path / "splits", kind="survival")
    assert len(task.cases) == 30 and all(len(s) == 2 for s in task.cases.slide_ids)
    assert set(task.cases.label) <= {0, 1, 2, 3}


def test_label_names_column_and_label_map(tmp_path):
    df = pd.DataFrame({"slide_id": list("abcdef"), "subtype": ["X", "Y", "Z", "X", "Y", "Q"]})
    df.to_csv(tmp_path / "t.csv", index=False)
    write_split_file(Split(0, ("a", "b", "c"), ("d", "e"), ("f",)), tmp_path / "s" / "splits_0.csv")
    task = load_task(tmp_path / "t.csv", splits_dir=tmp_path / "s", label_col="subtype", label_map={"X": 0, "Y": 1})
    assert task.table.slide_id.tolist() == ["a", "b", "d", "e"] and task.splits[0].test == ()
    task = load_task(tmp_path / "t.csv", splits_dir=tmp_path / "s", label_col="subtype")
    assert task.class_names == ["Q", "X", "Y", "Z"]


def test_filter_split_order_and_subsample():
    s = Split(0, ("c", "a", "b", "zz"), ("d",), ())
    f = filter_split(s, ["a", "b", "c", "d"], order=["a", "b", "c", "d"])
    assert f.train == ("a", "b", "c") and f.val == ("d",)
    assert subsample_train(f, 1.0) is f
    assert len(subsample_train(f, 0.34).train) == 1
    with pytest.raises(ValueError):
        subsample_train(f, 0.0)


def test_read_table_plain_csv_and_nested_zip(tmp_path):
    csv = "Unnamed: 0,case_id,slide_id\n0,c1,s1.svs\n"
    (tmp_path / "t.csv").write_text(",case_id,slide_id\n0,c1,s1.svs\n")
    assert read_table(tmp_path / "t.csv").columns.tolist() == ["case_id", "slide_id"]
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as z:
        z.writestr("t.csv", csv)
    with zipfile.ZipFile(tmp_path / "outer.zip", "w") as z:
        z.writestr("../inner.zip", inner.getvalue())
    assert read_table(tmp_path / "outer.zip").slide_id.tolist() == ["s1.svs"]


def test_own_table_name_and_splits_without_val(tmp_path):
    table = _phantom_table(20)
    table.to_csv(tmp_path / "table.csv", index=False)
    make_splits(table, n_folds=2, seed=0, out_dir=tmp_path / "s", val_frac=0.0, test_frac=0.3)
    task = load_task(tmp_path / "table.csv", splits_dir=tmp_path / "s", name="phantom_context")
    assert task.name == "phantom_context" and task.splits[0].val == () and len(task.splits[0].test) == 6


def test_integer_labels_with_names_and_gaps(tmp_path):
    df = pd.DataFrame({"slide_id": list("abcd"), "label": [0, 2, 2, 0], "label_name": ["x", "z", "z", "x"]})
    df.to_csv(tmp_path / "t.csv", index=False)
    write_split_file(Split(0, ("a", "b"), ("c",), ("d",)), tmp_path / "s" / "splits_0.csv")
    task = load_task(tmp_path / "t.csv", splits_dir=tmp_path / "s")
    assert task.class_names == ["x", "1", "z"] and task.table.label.tolist() == [0, 2, 2, 0]
    pd.DataFrame({"slide_id": ["a"], "label": [None]}).to_csv(tmp_path / "e.csv", index=False)
    with pytest.raises(InputFileError, match="e.csv: column 'label' holds no label"):
        load_task(tmp_path / "e.csv", splits_dir=tmp_path / "s")
