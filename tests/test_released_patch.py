"""hipt.released.patch: the reference's patch-level protocol on synthetic pickles in the released format.

Each metric is checked against an independent computation written here (scikit-learn calls, brute-force
pair counting), never against the module's own helpers.
"""

from __future__ import annotations

import argparse
import itertools
import json
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import kendalltau

from hipt.errors import HIPTError, InputFileError
from hipt.released import patch as rp
from hipt.released.registry import PATCH_ENCODERS, local_path, patch_dir, patch_files

CRC = np.array(["ADI", "BACK", "DEB", "LYM", "MUC", "MUS", "NORM", "STR", "TUM"])


def _write(path: Path, embeddings: np.ndarray, labels: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        pickle.dump({"embeddings": embeddings, "labels": labels}, fh)
    return path


def _classes(n: int, names: np.ndarray, seed: int, dim: int = 16, spread: float = 0.5):
    """Overlapping Gaussian clusters: AUCs strictly between 0.5 and 1, so errors show."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(99).normal(0, spread, (len(names), dim))
    idx = np.r_[np.arange(len(names)), rng.integers(0, len(names), n - len(names))]  # every class present
    x = (centres[idx] + rng.normal(0, 1, (n, dim))).astype(np.float32)
    return x, names[idx]


def _bpq(n: int, seed: int, dim: int = 12):
    rng = np.random.default_rng(seed)
    w = np.random.default_rng(7).normal(0, 1, dim)
    x = rng.normal(0, 1, (n, dim)).astype(np.float32)
    y = np.clip(np.round(1 / (1 + np.exp(-x @ w / 3)) + rng.normal(0, 0.1, n), 1), 0, 1)  # ties, as the scores
    return x, y.astype(np.float64)


def _sklearn_aucs(x_tr, y_tr, x_va, y_va, merge=None):
    """The reference's loop, written independently: LabelEncoder, KNN defaults, column i per class."""
    from sklearn.metrics import roc_auc_score
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.preprocessing import LabelEncoder

    y_tr, y_va = y_tr.copy(), y_va.copy()
    for old, new in (merge or {}).items():
        y_tr[y_tr == old] = new
        y_va[y_va == old] = new
    le = LabelEncoder().fit(y_tr)
    t, v = le.transform(y_tr), le.transform(y_va)
    score = KNeighborsClassifier().fit(x_tr, t).predict_proba(x_va)
    out = [roc_auc_score(np.array(v == c, int), score[:, i]) for i, c in enumerate(np.unique(v))]
    return [str(c) for c in le.classes_] + ["All"], out + [roc_auc_score(v, score, average="macro", multi_class="ovr")]


def _brute_tau_bpq(x, y):
    """The reference's variant 'd', by counting every pair i < j."""
    n = len(x)
    dis = xtie = ytie = ntie = 0
    for i, j in itertools.combinations(range(n), 2):
        tx, ty = x[i] == x[j], y[i] == y[j]
        xtie += tx
        ytie += ty
        ntie += tx and ty
        dis += (not tx and not ty) and ((x[j] - x[i]) * (y[j] - y[i]) < 0)
    tot = n * (n - 1) // 2
    if n < 2 or xtie == tot or ytie == tot:
        return float("nan")
    c = tot - xtie - ytie + ntie
    return min(1.0, max(-1.0, (c + 0.5 * ytie) / (c + dis + ytie)))


# ------------------------------------------------------------------------------- classification
def test_crc_knn_aucs_merge_mus_into_str_and_match_sklearn(tmp_path):
    x_tr, y_tr = _classes(400, CRC, seed=0)
    x_va, y_va = _classes(150, CRC, seed=1)
    tr = _write(tmp_path / "crc100k_train_x.pkl", x_tr, y_tr)
    va = _write(tmp_path / "crc100k_val_x.pkl", x_va, y_va)
    ours = rp.patch_knn_aucs(tr, va, merge=rp.CRC_MERGE)
    cols, expected = _sklearn_aucs(x_tr, y_tr, x_va, y_va, merge={"MUS": "STR"})
    assert list(ours.index) == ["ADI", "BACK", "DEB", "LYM", "MUC", "NORM", "STR", "TUM", "All"] == cols
    np.testing.assert_allclose(ours.to_numpy(), expected, rtol=0, atol=1e-12)
    assert 0.5 < ours["All"] < 1  # the synthetic clusters overlap: the numbers are not trivially 1
    # without the merge MUS keeps its own column (9 classes + All)
    assert list(rp.patch_knn_aucs(tr, va).index) == [*CRC, "All"]
    # the caller's arrays are untouched by the merge
    assert "MUS" in set(rp.load_pickle(tr)[1])


def test_bcss_int_labels_columns_and_values(tmp_path):
    x_tr, y_tr = _classes(300, np.arange(4), seed=2)
    x_va, y_va = _classes(100, np.arange(4), seed=3)
    ours = rp.patch_knn_aucs((x_tr, y_tr), (x_va, y_va))
    cols, expected = _sklearn_aucs(x_tr, y_tr, x_va, y_va)
    assert list(ours.index) == ["0", "1", "2", "3", "All"] == cols
    np.testing.assert_allclose(ours.to_numpy(), expected, rtol=0, atol=1e-12)
    assert list(ours.index) == list(rp.REFERENCE_PATCH_TABLES["bcss"].columns)


def test_val_without_every_class_is_an_input_error(tmp_path):
    x_tr, y_tr = _classes(200, np.arange(4), seed=4)
    x_va, y_va = _classes(60, np.arange(3), seed=5)
    va = _write(tmp_path / "bcss_val.pkl", x_va, y_va)
    with pytest.raises(InputFileError, match="bcss_val.pkl: val classes"):
        rp.patch_knn_aucs((x_tr, y_tr), va)


# ----------------------------------------------------------------------------------- Kendall tau
def test_kendall_tau_bpq_hand_examples():
    # no ties: pairs (0,1) and (0,2) concordant, (1,2) discordant; c = C + D = 3, so 3 / (3 + 1)
    assert rp.kendall_tau_bpq([1, 2, 3], [1, 3, 2]) == pytest.approx(0.75)
    assert kendalltau([1, 2, 3], [1, 3, 2]).statistic == pytest.approx(1 / 3)
    # a tie in y: ytie = 1, c = 2, dis = 0 → (2 + 0.5) / (2 + 0 + 1)
    assert rp.kendall_tau_bpq([1, 2, 3], [1, 1, 2]) == pytest.approx(2.5 / 3)
    # a tie in x only: the pair leaves c; c = 2 (both concordant) → 2 / 2
    assert rp.kendall_tau_bpq([1, 1, 2], [1, 2, 3]) == pytest.approx(1.0)
    # a perfectly reversed order still scores 1/2: every pair is discordant, c = D
    assert rp.kendall_tau_bpq([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(0.5)
    # undefined cases
    assert np.isnan(rp.kendall_tau_bpq([1, 1, 1], [1, 2, 3]))  # every pair tied in x
    assert np.isnan(rp.kendall_tau_bpq([1, 2, 3], [5, 5, 5]))  # every pair tied in y
    assert np.isnan(rp.kendall_tau_bpq([1.0], [2.0]))
    assert np.isnan(rp.kendall_tau_bpq([1, np.nan, 3], [1, 2, 3]))
    with pytest.raises(ValueError):
        rp.kendall_tau_bpq([1, 2], [1, 2, 3])


@pytest.mark.parametrize("seed", range(6))
def test_kendall_tau_bpq_equals_brute_force_with_ties(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 40))
    x = rng.integers(0, 4, n).astype(float)  # many ties in x
    y = rng.integers(0, 5, n).astype(float) if seed % 2 else np.round(rng.random(n), 1)  # ties in y
    expected = _brute_tau_bpq(x, y)
    for chunk in (1, 7, 10_000):  # chunking changes nothing
        assert rp.kendall_tau_bpq(x, y, chunk_pairs=chunk) == pytest.approx(expected, abs=1e-12)


def test_kendall_tau_bpq_is_not_tau_b():
    rng = np.random.default_rng(0)
    x, y = rng.random(60), rng.random(60)
    # without ties it is a function of tau-b:
    # C + D = tot, C − D = tau_b·tot → (C + D) / (C + 2D) = 2 / (3 − tau_b)
    tau_b = kendalltau(x, y).statistic
    assert rp.kendall_tau_bpq(x, y) == pytest.approx(2 / (3 - tau_b), abs=1e-12)
    assert rp.kendall_tau_bpq(x, y) > 0.5 > abs(tau_b)  # unrelated data: near 2/3, tau-b near 0
    # with ties in y, neither tau-b nor that relation holds
    x, y = np.arange(8.0), np.array([0, 0, 1, 3, 2, 2, 5, 4.0])
    tau_b, ours = kendalltau(x, y).statistic, rp.kendall_tau_bpq(x, y)
    assert ours == pytest.approx(_brute_tau_bpq(x, y))
    assert abs(ours - tau_b) > 0.05 and abs(ours - 2 / (3 - tau_b)) > 1e-3


def test_kendall_tau_bpq_large_n_bounded():
    rng = np.random.default_rng(1)
    x = np.round(rng.random(6000), 1)
    y = x + rng.normal(0, 0.3, 6000)
    tau = rp.kendall_tau_bpq(x, y, chunk_pairs=500_000)  # 18 M pairs, 500 k at a time
    assert 0.5 < tau < 1
    assert tau == pytest.approx(rp.kendall_tau_bpq(x, y, chunk_pairs=3_000_000), abs=1e-15)


# ------------------------------------------------------------------------------------ regression
def test_bpq_regression_matches_sklearn_and_scipy(tmp_path):
    from sklearn.linear_model import LinearRegression
    from sklearn.metrics import mean_squared_error

    x_tr, y_tr = _bpq(300, seed=0)
    x_va, y_va = _bpq(80, seed=1)
    out = rp.bpq_regression(_write(tmp_path / "tr.pkl", x_tr, y_tr), _write(tmp_path / "va.pkl", x_va, y_va))
    pred = LinearRegression().fit(x_tr, y_tr).predict(x_va)
    assert list(out.index) == ["MSE", "Tau (reference)", "tau-b"]
    assert out["MSE"] == pytest.approx(mean_squared_error(y_va, pred), abs=1e-12)
    assert out["Tau (reference)"] == pytest.approx(_brute_tau_bpq(y_va, pred), abs=1e-12)
    assert out["tau-b"] == pytest.approx(kendalltau(y_va, pred).statistic, abs=1e-12)
    with pytest.raises(InputFileError, match="must be numbers"):
        rp.bpq_regression((x_tr, y_tr.astype(str)), (x_va, y_va))


# ---------------------------------------------------------------------------------------- errors
def _one_line_error(path: Path, match: str):
    with pytest.raises(InputFileError) as e:
        rp.load_pickle(path)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(str(path)) and match in msg, msg


def test_load_pickle_errors(tmp_path):
    _one_line_error(tmp_path / "absent.pkl", "not found")
    lfs = tmp_path / "lfs.pkl"
    lfs.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 123\n")
    _one_line_error(lfs, "Git LFS pointer")
    text = tmp_path / "text.pkl"
    text.write_text("hello, not a pickle")
    _one_line_error(text, "cannot be read as a pickle")
    (tmp_path / "empty.pkl").write_bytes(b"")
    _one_line_error(tmp_path / "empty.pkl", "cannot be read as a pickle")
    keys = tmp_path / "keys.pkl"
    keys.write_bytes(pickle.dumps({"features": np.zeros((2, 3)), "labels": np.zeros(2)}))
    _one_line_error(keys, "'embeddings' and 'labels'")
    lst = tmp_path / "list.pkl"
    lst.write_bytes(pickle.dumps([1, 2]))
    _one_line_error(lst, "got list")
    short = _write(tmp_path / "short.pkl", np.zeros((3, 4), np.float32), np.zeros(2))
    _one_line_error(short, "3 embeddings but 2 labels")
    nan = _write(tmp_path / "nan.pkl", np.full((3, 4), np.nan, np.float32), np.zeros(3))
    _one_line_error(nan, "NaN")
    ok = _write(tmp_path / "ok.pkl", np.ones((3, 4), np.float32), np.array(["ADI", "MUS", "STR"]))
    emb, labels = rp.load_pickle(ok)
    assert emb.shape == (3, 4) and emb.dtype == np.float32 and list(labels) == ["ADI", "MUS", "STR"]


# ---------------------------------------------------------------------------- tables on a root
def _lay_out(root: Path, dataset: str, encoders, seed: int = 0):
    """Synthetic pickles at the registry's paths under ``root`` (sizes differ from the real files)."""
    for k, enc in enumerate(encoders):
        dim = 8 + 4 * k  # encoders have different embedding sizes, as the real ones
        train, val = patch_files([dataset], [enc])
        if dataset == "breastpathq":
            parts = _bpq(200, seed + k, dim), _bpq(60, seed + k + 50, dim)
        elif dataset == "bcss":
            parts = _classes(200, np.arange(4), seed + k, dim), _classes(60, np.arange(4), seed + k + 50, dim)
        else:
            parts = _classes(300, CRC, seed + k, dim), _classes(90, CRC, seed + k + 50, dim)
        for f, (x, y) in zip((train, val), parts):
            _write(local_path(f, root), x, y)


def test_patch_table_and_compare_on_a_root(tmp_path):
    encoders = tuple(PATCH_ENCODERS)
    for d in ("crc100k", "bcss", "breastpathq"):
        _lay_out(tmp_path, d, encoders)
    assert patch_dir(tmp_path).is_dir()

    crc = rp.patch_table("crc100k", tmp_path, encoders)
    assert list(crc.index) == ["ImageNet", "SimCLR (BRCA)", "DINO (BRCA)"]
    assert list(crc.columns) == list(rp.REFERENCE_PATCH_TABLES["crc100k"].columns)  # MUS merged: 8 + All
    train, val = (local_path(f, tmp_path) for f in patch_files(["crc100k"], ["vits_tcga_brca_dino"]))
    x_tr, y_tr = rp.load_pickle(train)
    x_va, y_va = rp.load_pickle(val)
    _, expected = _sklearn_aucs(x_tr, y_tr, x_va, y_va, merge={"MUS": "STR"})
    np.testing.assert_allclose(crc.loc["DINO (BRCA)"].to_numpy(), expected, atol=1e-12)

    bcss = rp.patch_table("bcss", tmp_path)  # default encoders: DINO only
    assert list(bcss.index) == ["DINO (BRCA)"] and list(bcss.columns) == ["0", "1", "2", "3", "All"]

    bpq = rp.patch_table("breastpathq", tmp_path, encoders)
    assert list(bpq.columns) == ["MSE", "Tau (reference)", "tau-b"]
    cmp = rp.compare(bpq, rp.REFERENCE_PATCH_TABLES["breastpathq"])
    assert list(cmp.columns) == ["MSE", "Tau (reference)", "tau-b"]
    assert cmp.index.names == ["encoder", "source"] and len(cmp) == 9
    ref = rp.REFERENCE_PATCH_TABLES["breastpathq"]
    assert cmp.loc[("DINO (BRCA)", "reference"), "MSE"] == ref.loc["DINO (BRCA)", "MSE"]
    assert cmp.loc[("DINO (BRCA)", "ours − reference"), "MSE"] == pytest.approx(
        bpq.loc["DINO (BRCA)", "MSE"] - ref.loc["DINO (BRCA)", "MSE"])
    assert np.isnan(cmp.loc[("DINO (BRCA)", "reference"), "tau-b"])  # the reference printed no tau-b
    expected_max = (bpq[["MSE", "Tau (reference)"]] - ref).abs().to_numpy().max()
    assert rp.max_abs_difference(cmp) == pytest.approx(expected_max)


def test_patch_table_names_absent_files_and_the_command(tmp_path):
    _lay_out(tmp_path, "bcss", ["vits_tcga_brca_dino"])
    with pytest.raises(HIPTError) as e:
        rp.patch_table("bcss", tmp_path, ["resnet50_trunc", "vits_tcga_brca_dino"])
    msg = str(e.value)
    assert "bcss_train_resnet50_trunc.pkl" in msg and "bcss_val_resnet50_trunc.pkl" in msg
    assert "vits" not in msg.split("(get them")[0] and "hipt released patch --fetch" in msg
    with pytest.raises(HIPTError, match="unknown patch dataset"):
        rp.patch_table("camelyon", tmp_path)
    with pytest.raises(HIPTError, match="unknown patch encoder"):
        rp.patch_table("bcss", tmp_path, ["vit_giant"])
    # the synthetic files are not the registered size: not "available" as released files
    assert rp.available_encoders("bcss", tmp_path) == ()


def test_default_files_and_reference_tables():
    files = rp.default_patch_files()
    assert len(files) == 8 and all("vits_tcga_brca_dino" in f.name for f in files)
    assert rp.download_size(files) == "8 files, 347 MB"
    assert rp.download_size(rp.default_patch_files(include_resnet=True)) == "24 files, 3.1 GB"
    tables = rp.REFERENCE_PATCH_TABLES
    assert set(tables) == {"crc100k", "crc100knonorm", "bcss", "breastpathq"}
    assert all(list(t.index) == list(PATCH_ENCODERS.values()) for t in tables.values())
    assert tables["crc100k"].loc["DINO (BRCA)", "All"] == 0.987
    assert tables["crc100knonorm"].loc["ImageNet", "BACK"] == 0.909
    assert tables["bcss"].loc["SimCLR (BRCA)", "All"] == 0.625
    assert tables["breastpathq"].loc["DINO (BRCA)"].tolist() == [0.029, 0.854]


def test_cli_run_writes_tables_and_a_record(tmp_path, capsys):
    root = tmp_path / "released"
    _lay_out(root, "bcss", ["vits_tcga_brca_dino"])
    _lay_out(root, "breastpathq", ["vits_tcga_brca_dino"])
    parser = argparse.ArgumentParser()
    rp.add_arguments(parser)
    record = tmp_path / "record.json"
    args = parser.parse_args(["--root", str(root), "--datasets", "bcss", "breastpathq", "--out",
                              str(tmp_path / "out"), "--record", str(record)])
    assert rp.run(args) == 0
    printed = capsys.readouterr().out
    assert "bcss (largest |ours − reference|" in printed and "DINO (BRCA)" in printed
    for d in ("bcss", "breastpathq"):
        csv = pd.read_csv(tmp_path / "out" / f"released_patch_{d}.csv", index_col=[0, 1])
        assert set(csv.index.get_level_values("source")) == {"ours", "reference", "ours − reference"}
        assert (tmp_path / "out" / f"released_patch_{d}.md").read_text().startswith(f"**{d}:")
    meta, tables = rp.read_record(record)
    assert meta["name"] == "released_patch" and meta["reference_commit"].startswith("780fafae")
    assert {"machine", "date", "command", "commit"} <= set(meta)
    assert list(tables) == ["bcss", "breastpathq"]
    # the record gives back the tables patch_table computed, columns in order
    pd.testing.assert_frame_equal(tables["bcss"], rp.patch_table("bcss", root), check_exact=False, rtol=1e-12)
    assert list(tables["breastpathq"].columns) == ["MSE", "Tau (reference)", "tau-b"]
    rows = json.loads(record.read_text())["rows"]
    tau_b = next(r for r in rows if r["metric"] == "tau-b")
    assert tau_b["reference"] is None and tau_b["ours − reference"] is None  # the reference printed no tau-b
    assert rp.read_record(tmp_path / "absent.json") is None
    (tmp_path / "bad.json").write_text('{"rows": [{"x": 1}]}')
    with pytest.raises(InputFileError, match="not a released_patch record"):
        rp.read_record(tmp_path / "bad.json")
