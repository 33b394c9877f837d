"""KNN of mean slide embeddings: feature files (.h5 and released .pt), protocol, records, CLI."""

from __future__ import annotations

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import roc_auc_score
from sklearn.neighbors import KNeighborsClassifier

from hipt.cli import main
from hipt.errors import InputFileError
from hipt.knn import evaluate_knn, knn_auc, load_embeddings, slide_embedding
from hipt.tasks import load_task, make_splits
from hipt.tasks.tables import collect_results


def _cohort(tmp_path, n=48, n_classes=2, seed=0, m=3, n_patch=4):
    """Feature files where the class shifts the region tokens strongly and the patch tokens weakly."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % n_classes
    feats = tmp_path / "features"
    feats.mkdir()
    for i, y in enumerate(labels):
        f4k = rng.normal(size=(m + i % 3, 8)) + 1.5 * y
        f256 = rng.normal(size=(m + i % 3, n_patch, 6)) + 0.3 * y
        with h5py.File(feats / f"s{i:03d}.h5", "w") as f:
            f["feats4k"] = f4k.astype(np.float32)
            f["feats256"] = f256.astype(np.float16)
            f["coords"] = np.zeros((len(f4k), 2), dtype=np.int64)
    table = pd.DataFrame({"slide_id": [f"s{i:03d}" for i in range(n)], "label": labels})
    table.to_csv(tmp_path / "table.csv", index=False)
    make_splits(table, n_folds=3, kind="subtype", seed=0, out_dir=tmp_path / "splits", val_frac=0.2, test_frac=0.25)
    return feats, load_task(tmp_path / "table.csv", splits_dir=tmp_path / "splits")


def test_slide_embedding_means(tmp_path):
    feats, _ = _cohort(tmp_path, n=6)
    with h5py.File(feats / "s001.h5") as f:
        f4k, f256 = f["feats4k"][()], f["feats256"][()]
    assert np.allclose(slide_embedding(feats / "s001.h5", "vit4k"), f4k.mean(0))
    assert np.allclose(slide_embedding(feats / "s001.h5", "vit256"), f256.astype(np.float64).reshape(-1, 6).mean(0))
    # the reference's released layout: one [M, 192] tensor per slide in a .pt
    t = torch.randn(7, 192)
    torch.save(t, tmp_path / "TCGA-XX.pt")
    assert np.allclose(slide_embedding(tmp_path / "TCGA-XX.pt"), t.double().mean(0).numpy())
    with pytest.raises(InputFileError, match=r"TCGA-XX.pt: patch tokens must be \[M, n, D\]"):
        slide_embedding(tmp_path / "TCGA-XX.pt", "vit256")


def test_embedding_errors_name_the_file(tmp_path):
    with h5py.File(tmp_path / "a.h5", "w") as f:
        f["feats256"] = np.zeros((1, 4, 6))
    with pytest.raises(InputFileError, match="a.h5: no dataset 'feats4k'"):
        slide_embedding(tmp_path / "a.h5", "vit4k")
    (tmp_path / "b.h5").write_bytes(b"not hdf5")
    with pytest.raises(InputFileError, match="b.h5: cannot be read as HDF5"):
        slide_embedding(tmp_path / "b.h5")
    (tmp_path / "c.pt").write_bytes(b"junk")
    with pytest.raises(InputFileError, match="c.pt: cannot be loaded"):
        slide_embedding(tmp_path / "c.pt")
    with pytest.raises(InputFileError, match="2 of 3 slides have no feature file"):
        load_embeddings(tmp_path, ["a", "x", "y"], "vit256")
    with pytest.warns(RuntimeWarning, match="left out"):
        X, ids = load_embeddings(tmp_path, ["a", "x"], "vit256", missing="drop")
    assert ids == ["a"] and X.shape == (1, 6)


def test_knn_auc_equals_sklearn_defaults():
    rng = np.random.default_rng(0)
    xtr, ytr = rng.normal(size=(60, 5)), rng.integers(0, 3, 60)
    xte, yte = rng.normal(size=(30, 5)), rng.integers(0, 3, 30)
    xtr[:, 0] += ytr
    xte[:, 0] += yte
    p = KNeighborsClassifier().fit(xtr, ytr).predict_proba(xte)
    assert knn_auc(xtr, ytr, xte, yte) == pytest.approx(roc_auc_score(yte, p, multi_class="ovr", average="macro"))
    ybin = (ytr > 0).astype(int)
    p = KNeighborsClassifier().fit(xtr, ybin).predict_proba(xte)
    assert knn_auc(xtr, ybin, xte, (yte > 0).astype(int)) == pytest.approx(roc_auc_score(yte > 0, p[:, 1]))


def test_evaluate_knn_protocol_and_records(tmp_path):
    feats, task = _cohort(tmp_path)
    rec = evaluate_knn(task, feats, fractions=(0.25, 1.0), results_dir=tmp_path / "res")
    assert len(rec) == 2 * 2 * 3 and set(rec.method) == {"knn_vit4k_mean", "knn_vit256_mean"}
    # recompute one fold by hand: train vs test, val unused, 25% = sample(frac=0.25, random_state=1)
    split = task.splits[1]
    train_ids = task.table[task.table.slide_id.isin(split.train)].sample(frac=0.25, random_state=1).slide_id
    X = {s: slide_embedding(feats / f"{s}.h5", "vit4k") for s in task.table.slide_id}
    y = dict(zip(task.table.slide_id, task.table.label))
    clf = KNeighborsClassifier().fit(np.stack([X[s] for s in train_ids]), [y[s] for s in train_ids])
    p = clf.predict_proba(np.stack([X[s] for s in split.test]))[:, 1]
    expected = roc_auc_score([y[s] for s in split.test], p)
    got = rec.query("method == 'knn_vit4k_mean' and fraction == 0.25 and fold == 1").iloc[0]
    assert got.value == pytest.approx(expected) and got.n_train == len(train_ids) and got.n_test == len(split.test)
    # region tokens carry the class here, patch tokens barely: the mean ViT-4K embedding wins
    means = rec.groupby("method").value.mean()
    assert means["knn_vit4k_mean"] > 0.9 and means["knn_vit4k_mean"] > means["knn_vit256_mean"]
    on_disk = collect_results(tmp_path / "res")
    assert len(on_disk) == len(rec) and np.allclose(np.sort(on_disk.value), np.sort(rec.value))


def test_reference_bug_fraction(tmp_path):
    feats, task = _cohort(tmp_path, n=120)
    rec = evaluate_knn(task, feats, levels=["vit4k"], fractions=[0.25], folds=[0], reference_bug_frac=0.1)
    r = rec.iloc[0]
    assert r.fraction == 0.25 and r.frac_used == 0.1
    assert r.n_train == round(0.1 * len(task.splits[0].train))


def test_three_classes_and_missing_class_in_small_train(tmp_path):
    feats, task = _cohort(tmp_path, n=30, n_classes=3)
    with pytest.warns(RuntimeWarning, match="using k="):  # 25% of ~16 train slides < k
        rec = evaluate_knn(task, feats, levels=["vit4k"], fractions=[0.1], folds=[0], k=5)
    assert 0.0 <= rec.value.iloc[0] <= 1.0


def test_cli_knn(tmp_path, capsys):
    feats, _ = _cohort(tmp_path)
    code = main(["knn", "--features", str(feats), "--task", str(tmp_path / "table.csv"),
                 "--splits", str(tmp_path / "splits"), "--fractions", "0.25", "1.0", "--out", str(tmp_path / "out")])
    assert code == 0
    out = capsys.readouterr().out
    assert "KNN, mean ViT-4K region [CLS]" in out and "table 25%" in out
    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert "knn_table.md" in files and sum(f.endswith(".results.csv") for f in files) == 12
    code = main(["knn", "--features", str(tmp_path / "nope"), "--task", str(tmp_path / "table.csv"),
                 "--splits", str(tmp_path / "splits"), "--out", str(tmp_path / "out2")])
    assert code == 1 and "nope: features folder not found" in capsys.readouterr().err
