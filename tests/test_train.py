"""Feature bags (hipt.tasks.datasets) and the fine-tuning loop (hipt.tasks.train) on tiny synthetic features."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch

from hipt.errors import InputFileError
from hipt.tasks.datasets import BagDataset, bag_items, concat_bags, read_bag
from hipt.tasks.splits import make_splits
from hipt.tasks.train import (
    FinetuneConfig,
    class_weights,
    fold_paths,
    make_sampler,
    run_cv,
    train_epoch,
    train_fold,
)

N_SLIDES = 24
D = 8


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _write_cohort(root: Path, n: int = N_SLIDES, seed: int = 0) -> Path:
    """Feature files with a learnable signal (class 1 shifts one feature), a table (two slides per case)."""
    rng = np.random.default_rng(seed)
    feats = root / "features"
    feats.mkdir(parents=True)
    rows = []
    for i in range(n):
        y = i % 2
        m = int(rng.integers(1, 4))
        f256 = rng.normal(size=(m, 4, D)).astype(np.float16)
        f256[..., 0] += 2.0 * y
        with h5py.File(feats / f"s{i}.h5", "w") as f:
            f["feats256"] = f256
            f["feats4k"] = (rng.normal(size=(m, 192)) + y).astype(np.float32)
            f["coords"] = (np.arange(2 * m).reshape(m, 2) * 512).astype(np.int64)
        case = i // 2
        months = 5.0 + 10.0 * (case % 6) + rng.random()
        rows.append({"slide_id": f"s{i}", "label": y, "case_id": f"c{case}", "survival_months": months,
                     "censorship": int(case % 3 == 0)})
    table = pd.DataFrame(rows)
    # both slides of a case share its survival
    table["survival_months"] = table.groupby("case_id")["survival_months"].transform("first")
    table.to_csv(root / "table.csv", index=False)
    make_splits(table, 2, "subtype", seed=0, out_dir=root / "splits")
    make_splits(table, 3, "survival", seed=0, out_dir=root / "splits_survival")
    return root


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    return _write_cohort(tmp_path_factory.mktemp("cohort"))


def _config(cohort: Path, tmp_path: Path, **kw) -> FinetuneConfig:
    base = dict(features_dir=str(cohort / "features"), task=str(cohort / "table.csv"),
                splits_dir=str(cohort / "splits"), method="mean", out=str(tmp_path / "out"), max_epochs=2,
                accumulation=4, fractions=[1.0], verbose=False, device="cpu")
    base.update(kw)
    return FinetuneConfig(**base)


# ------------------------------------------------------------------------------------------ datasets
def test_read_bag_and_missing_keys(cohort, tmp_path):
    bag = read_bag(cohort / "features" / "s0.h5")
    assert bag["feats256"].dtype == torch.float32 and bag["feats256"].shape[1:] == (4, D)
    assert set(bag) == {"feats256", "feats4k", "coords"}
    assert set(read_bag(cohort / "features" / "s0.h5", keys=("feats4k",))) == {"feats4k"}
    with h5py.File(tmp_path / "empty.h5", "w") as f:
        f["coords"] = np.zeros((1, 2))
    with pytest.raises(InputFileError, match="empty.h5.*none of the feature arrays"):
        read_bag(tmp_path / "empty.h5")
    (tmp_path / "bad.h5").write_bytes(b"not hdf5")
    with pytest.raises(InputFileError, match="bad.h5"):
        read_bag(tmp_path / "bad.h5")


def test_read_released_pt_layout(tmp_path):
    torch.save(torch.randn(5, 192), tmp_path / "x.pt")
    bag = read_bag(tmp_path / "x.pt")
    assert set(bag) == {"feats4k"} and bag["feats4k"].shape == (5, 192)


def test_patient_bags_concatenate_slides(cohort):
    table = pd.read_csv(cohort / "table.csv")
    items = bag_items(table, "survival")
    assert len(items) == N_SLIDES // 2 and items[0].slide_ids == ("s0", "s1")
    ds = BagDataset(cohort / "features", items)
    b0, b1 = read_bag(cohort / "features" / "s0.h5"), read_bag(cohort / "features" / "s1.h5")
    bag = ds[0]["bag"]
    assert bag["feats256"].shape[0] == b0["feats256"].shape[0] + b1["feats256"].shape[0]
    torch.testing.assert_close(bag["feats4k"], torch.cat([b0["feats4k"], b1["feats4k"]]))
    # coords of the second slide are moved past the first: no two regions coincide
    assert len({tuple(c) for c in bag["coords"].tolist()}) == bag["coords"].shape[0]
    assert ds[0]["censorship"].shape == (1,) and ds[0]["time"].shape == (1,)


def test_concat_keeps_common_keys():
    a = {"feats256": torch.zeros(2, 4, 3), "coords": torch.zeros(2, 2)}
    b = {"feats256": torch.ones(1, 4, 3)}
    assert set(concat_bags([a, b])) == {"feats256"}


def test_missing_feature_files(cohort, tmp_path):
    table = pd.DataFrame({"slide_id": ["s0", "nope"], "label": [0, 1]})
    with pytest.raises(InputFileError, match="nope.h5.*feature file not found"):
        BagDataset(cohort / "features", bag_items(table))
    ds = BagDataset(cohort / "features", bag_items(table), missing="drop")
    assert len(ds) == 1
    with pytest.raises(InputFileError, match="feature folder not found"):
        BagDataset(tmp_path / "absent", bag_items(table))


def test_lazy_loading_and_bounded_cache(cohort, monkeypatch):
    import hipt.tasks.datasets as datasets

    reads = []
    real = datasets.read_bag
    monkeypatch.setattr(datasets, "read_bag", lambda p, keys: reads.append(p) or real(p, keys))
    table = pd.read_csv(cohort / "table.csv")
    ds = BagDataset(cohort / "features", bag_items(table), keys=("feats256",), cache_mb=0)
    assert reads == []  # nothing read at construction
    ds[0], ds[0]
    assert len(reads) == 2  # no cache: read each time
    one = ds.load(0)["feats256"]
    budget = 3 * one.numel() * one.element_size()
    cached = BagDataset(cohort / "features", bag_items(table), keys=("feats256",), cache_mb=budget / 2**20)
    for i in range(len(cached)):
        cached[i]
    assert cached._cached <= cached.cache_bytes  # the cache never exceeds its budget
    assert 0 < len(cached._cache) < len(cached)
    n = len(reads)
    last = max(cached._cache)
    cached[last]
    assert len(reads) == n  # a cached bag is not read again


# ------------------------------------------------------------------------------------------ sampling
def test_class_weights_and_sampler():
    w = class_weights(np.array([0, 0, 0, 1]))
    np.testing.assert_allclose(w, [4 / 3, 4 / 3, 4 / 3, 4.0])
    strata = np.array([[0, 1], [0, 1], [0, 0], [1, 0]])  # survival: (bin, censorship)
    np.testing.assert_allclose(class_weights(strata), [2.0, 2.0, 4.0, 4.0])


def test_weighted_sampler_draws_len_with_replacement(cohort):
    table = pd.read_csv(cohort / "table.csv").iloc[:9]  # 5 of class 0, 4 of class 1
    ds = BagDataset(cohort / "features", bag_items(table))
    sampler = make_sampler(ds, True, torch.Generator().manual_seed(0))
    assert isinstance(sampler, torch.utils.data.WeightedRandomSampler)
    assert sampler.num_samples == len(ds) and sampler.replacement
    draws = np.concatenate([list(make_sampler(ds, True, torch.Generator().manual_seed(s))) for s in range(300)])
    frac1 = np.isin(draws, np.flatnonzero(ds.labels == 1)).mean()
    assert abs(frac1 - 0.5) < 0.03  # classes balanced in expectation


# ------------------------------------------------------------------------------------------ accumulation
class _CountingAdam(torch.optim.Adam):
    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.steps = 0

    def step(self, closure=None):
        self.steps += 1
        return super().step(closure)


def _loader(cohort, n):
    table = pd.read_csv(cohort / "table.csv").iloc[:n]
    ds = BagDataset(cohort / "features", bag_items(table), keys=("feats256",))
    return torch.utils.data.DataLoader(ds, batch_size=None, shuffle=False)


@pytest.mark.parametrize("reference, expected_steps", [(False, 3), (True, 10)])
def test_accumulation_steps(cohort, reference, expected_steps):
    """Proper accumulation steps every 4 bags and at the epoch end (10 bags → 3 steps); the
    reference's mode steps after every bag (10 steps)."""
    from hipt.models.mil import build_model

    model = build_model("mean", D, 2)
    opt = _CountingAdam(model.parameters(), lr=1e-3)
    stats = train_epoch(model, _loader(cohort, 10), opt, survival=False, accumulation=4, reference_accumulation=reference)
    assert opt.steps == expected_steps == stats["steps"]


def test_accumulated_gradient_is_the_mean(cohort):
    """One accumulated step over 4 bags applies the mean of their gradients (loss/4 each)."""
    from hipt.models.mil import build_model

    torch.manual_seed(0)
    model = build_model("mean", D, 2, dropout=0.0)
    grads = []
    for item in _loader(cohort, 4):
        model.zero_grad()
        torch.nn.functional.cross_entropy(model(item["bag"])["logits"], item["label"]).backward()
        grads.append(model.classifier.weight.grad.clone())
    expected = torch.stack(grads).mean(0)

    captured = {}

    class _Capture(torch.optim.SGD):
        def step(self, closure=None):
            captured.setdefault("g", model.classifier.weight.grad.clone())

    train_epoch(model, _loader(cohort, 4), _Capture(model.parameters(), lr=0.0), survival=False, accumulation=4)
    torch.testing.assert_close(captured["g"], expected)


# ------------------------------------------------------------------------------------------ folds
def test_train_fold_writes_records_and_learns(cohort, tmp_path):
    cfg = _config(cohort, tmp_path, max_epochs=15, lr=2e-3, accumulation=1)
    res = train_fold(cfg, 0)
    paths = fold_paths(cfg.out, "table", "mean", 1.0, 0)
    rec = pd.read_csv(paths["results"])
    assert list(rec.columns) == ["task", "method", "fraction", "fold", "split", "metric", "value"]
    assert set(rec["split"]) == {"val", "test", "train"}
    assert set(rec[rec["split"] == "test"]["metric"]) == {"auc", "acc"}
    pred = pd.read_csv(paths["predictions"])
    assert {"id", "label", "prob_0", "prob_1", "split", "fold"} <= set(pred.columns)
    np.testing.assert_allclose(pred[["prob_0", "prob_1"]].sum(1), 1.0, atol=1e-6)
    assert res.metric("test", "auc") >= 0.9  # the signal is easy
    assert not list(Path(paths["results"]).parent.glob(".*tmp*"))  # atomic writes leave no temp file


def test_same_seed_same_result(cohort, tmp_path):
    a = train_fold(_config(cohort, tmp_path, method="abmil"), 1, write=False)
    b = train_fold(_config(cohort, tmp_path, method="abmil"), 1, write=False)
    pd.testing.assert_frame_equal(a.predictions, b.predictions)


def test_run_cv_fractions_and_resume(cohort, tmp_path, monkeypatch):
    cfg = _config(cohort, tmp_path, fractions=[1.0, 0.25], max_epochs=1)
    rec = run_cv(cfg)
    assert set(rec["fraction"]) == {1.0, 0.25} and set(rec["fold"]) == {0, 1}
    from hipt.tasks.tables import collect_results

    collected = collect_results(cfg.out)  # the record files, not the prediction files beside them
    assert len(collected) == len(rec)
    import hipt.tasks.train as train

    monkeypatch.setattr(train, "train_fold", lambda *a, **k: pytest.fail("finished folds must not be retrained"))
    again = run_cv(cfg)
    pd.testing.assert_frame_equal(rec.reset_index(drop=True), again.reset_index(drop=True))


def test_quarter_fraction_is_the_seeded_sample(cohort, tmp_path):
    from hipt.tasks.tcga import load_task

    task = load_task(str(cohort / "table.csv"), splits_dir=cohort / "splits")
    full = task.fold(0).train
    quarter = train_fold(_config(cohort, tmp_path, max_epochs=1), 0, 0.25, task=task, write=False)
    expected = pd.Series(full, dtype=object).sample(frac=0.25, random_state=1).tolist()
    assert list(task.fold(0, 0.25).train) == expected
    assert quarter.records["fraction"].eq(0.25).all()


def test_survival_fold(cohort, tmp_path):
    cfg = _config(cohort, tmp_path, kind="survival", splits_dir=str(cohort / "splits_survival"), method="abmil",
                  task_name="surv")
    res = train_fold(cfg, 0)
    assert set(res.records["metric"]) == {"c_index", "loss"}
    pred = res.predictions
    assert {"risk", "S_0", "S_3", "time", "censorship"} <= set(pred.columns)
    np.testing.assert_allclose(pred["risk"], -pred[[f"S_{k}" for k in range(4)]].sum(1), atol=1e-6)
    assert (pred["split"] == "val").all()  # survival folds have no test split
    assert pred["id"].str.startswith("c").all()  # patient-level units


@pytest.mark.parametrize("method", ["hipt", "clam_sb", "dsmil"])
def test_methods_with_extra_outputs_train(cohort, tmp_path, method):
    res = train_fold(_config(cohort, tmp_path, method=method, max_epochs=1), 0, write=False)
    assert np.isfinite(res.history["loss"]).all()


def test_val_selection(cohort, tmp_path):
    res = train_fold(_config(cohort, tmp_path, selection="val", max_epochs=3), 0, write=False)
    assert "val_auc" in res.history.columns


def test_cli(cohort, tmp_path):
    from hipt.cli import main

    out = tmp_path / "cli"
    rc = main(["finetune", "--features", str(cohort / "features"), "--task", str(cohort / "table.csv"),
               "--splits", str(cohort / "splits"), "--method", "mean", "--out", str(out), "--epochs", "1",
               "--folds", "0", "--fractions", "1.0", "--device", "cpu"])
    assert rc == 0
    assert (out / "table__mean__frac1__fold0.results.csv").is_file()
    rc = main(["finetune", "--features", str(tmp_path / "none"), "--task", str(cohort / "table.csv"),
               "--splits", str(cohort / "splits"), "--out", str(out), "--epochs", "1", "--no-resume"])
    assert rc == 1  # a user error is one line, not a traceback


def test_items_and_their_bags_move_to_the_device():
    """The bag's tensors travel with the item (a GPU run must not leave features on the CPU)."""
    from hipt.tasks.train import _item_to

    item = {"bag": {"feats256": torch.zeros(2, 4, 3)}, "label": torch.tensor([1]), "id": "s0"}
    moved = _item_to(item, torch.device("meta"))
    assert moved["bag"]["feats256"].device.type == "meta" and moved["label"].device.type == "meta"
    assert moved["id"] == "s0"


@pytest.mark.parametrize("kind", ["context", "survival"])
def test_phantom_task_writes_splits_once(cohort, tmp_path, monkeypatch, kind):
    """A phantom cohort becomes a task: its features folder, its table and split files made once."""
    import shutil

    from hipt.book import zoo
    from hipt.book.tasks import phantom_task
    from hipt.tasks.splits import read_splits

    feats = tmp_path / "feats"
    shutil.copytree(cohort / "features", feats)
    shutil.copy(cohort / "table.csv", feats / "table.csv")
    monkeypatch.setattr(zoo, "cohort_features", lambda *a, **k: feats)
    spec = phantom_task(kind, n_folds=3)
    assert spec["task_name"] == f"phantom_{kind}" and spec["kind"] == ("survival" if kind == "survival" else "subtype")
    folds = read_splits(spec["splits_dir"])
    assert len(folds) == 3 and all(f.has_test == (kind != "survival") for f in folds)
    stamp = (Path(spec["splits_dir"]) / "splits_0.csv").stat().st_mtime_ns
    assert phantom_task(kind, n_folds=3) == spec
    assert (Path(spec["splits_dir"]) / "splits_0.csv").stat().st_mtime_ns == stamp  # reused, not rewritten


def test_survival_training_learns_the_direction_of_risk(tmp_path):
    """End to end (bins, NLL, risk = −ΣS, c-index): features that track survival time give c-index ≫ 0.5.

    Guards the sign conventions together: a flip anywhere (bins, censorship, risk) drives it below 0.5.
    """
    rng = np.random.default_rng(3)
    feats = tmp_path / "features"
    feats.mkdir()
    rows = []
    for case in range(60):
        months = float(rng.uniform(2, 100))
        signal = (50.0 - months) / 25.0  # shorter survival, larger feature
        m = 2
        f256 = rng.normal(scale=0.3, size=(m, 4, D)).astype(np.float32)
        f256[..., 0] += signal
        with h5py.File(feats / f"s{case}.h5", "w") as f:
            f["feats256"] = f256
            f["feats4k"] = np.zeros((m, 192), np.float32)
            f["coords"] = (np.arange(2 * m).reshape(m, 2) * 512).astype(np.int64)
        rows.append({"slide_id": f"s{case}", "label": 0, "case_id": f"c{case}", "survival_months": round(months, 2),
                     "censorship": int(rng.random() < 0.3)})
    table = pd.DataFrame(rows)
    table.to_csv(tmp_path / "table.csv", index=False)
    make_splits(table, 3, "survival", seed=0, out_dir=tmp_path / "splits")
    cfg = FinetuneConfig(features_dir=str(feats), task=str(tmp_path / "table.csv"), splits_dir=str(tmp_path / "splits"),
                         kind="survival", task_name="surv", method="mean", out=str(tmp_path / "out"), max_epochs=8,
                         accumulation=4, lr=2e-3, fractions=[1.0], verbose=False, device="cpu")
    rec = run_cv(cfg)
    cidx = rec[(rec["metric"] == "c_index") & (rec["split"] == "val")]["value"]
    assert len(cidx) == 3 and cidx.mean() > 0.75, cidx.tolist()


@pytest.mark.parametrize("kind", ["subtype", "survival"])
def test_permutation_null_shuffles_outcomes_by_case_and_keeps_the_folds(cohort, tmp_path, kind):
    from hipt.tasks.train import permutation_null

    splits = "splits" if kind == "subtype" else "splits_survival"
    cfg = _config(cohort, tmp_path, kind=kind, splits_dir=str(cohort / splits), max_epochs=1, task_name="t")
    null = permutation_null(cfg, n_permutations=2, seed=0, out=tmp_path / "null")
    assert list(null["permutation"]) == [0, 1]
    # a tiny test split can hold one class after shuffling (AUC undefined); otherwise a valid metric
    assert (null["mean"].between(0, 1) | null["mean"].isna()).all()
    if kind == "survival":
        assert null["mean"].notna().all()
    orig = pd.read_csv(cohort / "table.csv")
    for i in range(2):
        t = pd.read_csv(tmp_path / "null" / f"permutation{i}" / "table.csv")
        col = "label" if kind == "subtype" else "survival_months"
        # the outcomes are a permutation of the cases' outcomes, and the slides of a case still agree
        assert sorted(t.drop_duplicates("case_id")[col]) == sorted(orig.drop_duplicates("case_id")[col])
        assert (t.groupby("case_id")[col].nunique() == 1).all()
        assert not t[col].equals(orig[col])
    again = permutation_null(cfg, n_permutations=2, seed=0, out=tmp_path / "null2")
    pd.testing.assert_frame_equal(null, again)  # deterministic from the seed


def test_standardized_hipt_learns_from_nearly_constant_region_tokens(tmp_path):
    """Region tokens that differ from slide to slide by a tiny fraction of their size (a small or briefly
    trained ViT4K's): HIPT's head fits them once z-scored with the training statistics, not raw."""
    rng = np.random.default_rng(0)
    feats = tmp_path / "features"
    feats.mkdir()
    rows = []
    for i in range(40):
        y = i % 2
        tokens = 0.8 + 0.004 * rng.normal(size=(3, 192))
        tokens[:, :8] += 0.006 * y  # the class: 1.5 token standard deviations along 8 dimensions
        with h5py.File(feats / f"s{i}.h5", "w") as f:
            f["feats4k"] = tokens.astype(np.float32)
            f["feats256"] = np.zeros((3, 4, 192), np.float32)
            f["coords"] = (np.arange(6).reshape(3, 2) * 512).astype(np.int64)
        rows.append({"slide_id": f"s{i}", "label": y, "case_id": f"c{i}"})
    table = pd.DataFrame(rows)
    table.to_csv(tmp_path / "table.csv", index=False)
    make_splits(table, 2, "subtype", seed=0, out_dir=tmp_path / "splits", val_frac=0.1, test_frac=0.3)
    cfg = FinetuneConfig(features_dir=str(feats), task=str(tmp_path / "table.csv"), splits_dir=str(tmp_path / "splits"),
                         method="hipt", out=str(tmp_path / "out"), max_epochs=10, accumulation=4, lr=1e-3,
                         fractions=[1.0], verbose=False, device="cpu")
    std = [train_fold(cfg, k, write=False) for k in range(2)]
    assert all(r.model.slide.region_norm is not None for r in std)
    from hipt.tasks.tcga import load_task

    train_ids = set(load_task(cfg.task, splits_dir=cfg.splits_dir).fold(0).train)
    expected = np.concatenate([h5py.File(feats / f"{s}.h5")["feats4k"][:] for s in table.slide_id if s in train_ids])
    np.testing.assert_allclose(std[0].model.slide.region_norm.mean.numpy(), expected.mean(0), rtol=1e-5)
    assert np.mean([r.metric("test", "auc") for r in std]) > 0.85
    raw = train_fold(cfg.replace(standardize=False, max_epochs=1), 0, write=False)
    assert raw.model.slide.region_norm is None
    assert set(raw.records["method"]) == {"hipt"} and set(std[0].records["method"]) == {"hipt"}
