"""Slide-level evaluation on the reference's released embeddings: KNN folds, HIPT-GP, instance MIL, Table 1.

The files are synthetic but in the exact released formats: pickled fold dicts
``{'embeddings': [N, D], 'labels': [N]}`` and ``.pt`` files holding one float32 ``[M, 192]`` tensor.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hipt.cli import main as cli_main
from hipt.errors import HIPTError
from hipt.knn import released_knn_aucs
from hipt.models import HIPTGP
from hipt.models.mil import InstanceMIL, build_model
from hipt.released import slide as rs
from hipt.tasks.splits import make_splits
from hipt.tasks.train import FinetuneConfig, _keys_for, method_name, run_cv

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --------------------------------------------------------------------------------- KNN on the folds
def _write_folds(folds_dir: Path, study: str, encoder: str, n_classes: int, n_folds: int = 3, d: int = 6,
                 seed: int = 0, n_train: int = 90) -> None:
    rng = np.random.default_rng(seed)
    names = np.array(["LUAD", "LUSC", "XTRA"][:n_classes])
    (folds_dir / encoder).mkdir(parents=True, exist_ok=True)
    for i in range(n_folds):
        for split, n in (("train", n_train), ("test", 30)):
            y = names[rng.integers(0, n_classes, n)]
            x = rng.normal(size=(n, d)) + (y[:, None] == names[0]) * 0.8
            with open(folds_dir / encoder / f"{study}_{encoder}_class_split_{split}_{i}.pkl", "wb") as fh:
                pickle.dump({"embeddings": x.astype(np.float32), "labels": y}, fh)


def _reference_protocol(folds_dir: Path, study: str, encoder: str, prop: float, n_folds: int) -> list[float]:
    """The reference's KNN steps, spelled out independently of the package."""
    from sklearn.metrics import roc_auc_score
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.preprocessing import LabelEncoder

    out = []
    for i in range(n_folds):
        with open(folds_dir / encoder / f"{study}_{encoder}_class_split_train_{i}.pkl", "rb") as fh:
            d = pickle.load(fh)
        xtr, ytr = d["embeddings"], d["labels"]
        if prop < 1:
            idx = pd.DataFrame(range(xtr.shape[0])).sample(frac=0.1, random_state=1).index
            xtr, ytr = xtr[idx], ytr[idx]
        with open(folds_dir / encoder / f"{study}_{encoder}_class_split_test_{i}.pkl", "rb") as fh:
            d = pickle.load(fh)
        xte, yte = d["embeddings"], d["labels"]
        le = LabelEncoder().fit(ytr)
        ytr, yte = le.transform(ytr), le.transform(yte)
        p = KNeighborsClassifier().fit(xtr, ytr).predict_proba(xte)
        out.append(roc_auc_score(yte, p, average="macro", multi_class="ovr") if len(np.unique(yte)) > 2
                   else roc_auc_score(yte, p[:, 1]))
    return out


@pytest.mark.parametrize("n_classes", [2, 3])
@pytest.mark.parametrize("fraction", [1.0, 0.25])
def test_released_knn_aucs_follow_the_reference_protocol(tmp_path, n_classes, fraction):
    _write_folds(tmp_path, "tcga_lung", "vit256mean", n_classes)
    ours = released_knn_aucs(tmp_path, "tcga_lung", "vit256mean", fraction, n_folds=3)
    assert len(ours) == 3
    assert ours == pytest.approx(_reference_protocol(tmp_path, "tcga_lung", "vit256mean", fraction, 3), abs=0)
    assert released_knn_aucs(tmp_path, "lung", "vit256mean", fraction, n_folds=3) == ours  # short study name


def test_released_knn_quarter_samples_a_tenth_unless_told(tmp_path):
    _write_folds(tmp_path, "tcga_brca", "vit16mean", 2)
    bug = released_knn_aucs(tmp_path, "tcga_brca", "vit16mean", 0.25, n_folds=3)
    fixed = released_knn_aucs(tmp_path, "tcga_brca", "vit16mean", 0.25, n_folds=3, sample_frac=0.25)
    assert bug != fixed


def test_released_knn_quarter_without_a_class_says_so(tmp_path):
    _write_folds(tmp_path, "tcga_kidney", "vit16mean", 3, n_folds=1, n_train=12)
    with pytest.raises(HIPTError, match="have no training slide"):
        released_knn_aucs(tmp_path, "tcga_kidney", "vit16mean", 0.25, n_folds=1)


def test_released_knn_errors_name_the_file(tmp_path):
    with pytest.raises(HIPTError, match="hipt released fetch --knn"):
        released_knn_aucs(tmp_path, "tcga_brca", "vit16mean", 1.0)
    _write_folds(tmp_path, "tcga_brca", "vit16mean", 2, n_folds=1)
    p = tmp_path / "vit16mean" / "tcga_brca_vit16mean_class_split_test_0.pkl"
    p.write_bytes(b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 12\n")
    with pytest.raises(HIPTError, match="LFS pointer"):
        released_knn_aucs(tmp_path, "tcga_brca", "vit16mean", 1.0, n_folds=1)


# ------------------------------------------------------------------------------------------- HIPT-GP
class _AttnGated(nn.Module):
    """The reference's Attn_Net_Gated layout (attention_a/b/c), written out for the test."""

    def __init__(self) -> None:
        super().__init__()
        self.attention_a = nn.Sequential(nn.Linear(192, 192), nn.Tanh(), nn.Dropout(0.25))
        self.attention_b = nn.Sequential(nn.Linear(192, 192), nn.Sigmoid(), nn.Dropout(0.25))
        self.attention_c = nn.Linear(192, 1)

    def forward(self, x):
        return self.attention_c(self.attention_a(x) * self.attention_b(x)), x


class _ReferenceGP(nn.Module):
    """HIPT_GP_FC's modules and forward (without its pdb.set_trace), from the reference's description."""

    def __init__(self, n_classes: int) -> None:
        super().__init__()
        self.global_phi = nn.Sequential(nn.Linear(192, 192), nn.ReLU(), nn.Dropout(0.25))
        self.global_transformer = nn.TransformerEncoder(
            nn.TransformerEncoderLayer(d_model=192, nhead=3, dim_feedforward=192, dropout=0.25, activation="relu"),
            num_layers=2, enable_nested_tensor=False)
        self.global_attn_pool = _AttnGated()
        self.global_rho = nn.Sequential(nn.Linear(192, 192), nn.ReLU(), nn.Dropout(0.25))
        self.classifier = nn.Linear(192, n_classes)

    def forward(self, h):
        h = self.global_phi(h)
        h = self.global_transformer(h.unsqueeze(1)).squeeze(1)
        a, h = self.global_attn_pool(h)
        a = F.softmax(torch.transpose(a, 1, 0), dim=1)
        return self.classifier(self.global_rho(torch.mm(a, h)))


@pytest.mark.parametrize("n_classes", [2, 3])
def test_hipt_gp_loads_a_reference_state_dict_and_gives_its_logits(n_classes):
    torch.manual_seed(0)
    ref = _ReferenceGP(n_classes).eval()
    ours = HIPTGP(n_classes).eval()
    assert sorted(ours.state_dict()) == sorted(ref.state_dict())
    ours.load_state_dict(ref.state_dict(), strict=True)
    h = torch.randn(37, 192)
    with torch.no_grad():
        out = ours(h)
        assert torch.allclose(out["logits"], ref(h), atol=1e-6)
    assert out["logits"].shape == (1, n_classes) and out["attention"].shape == (37,)
    assert torch.allclose(out["attention"].sum(), torch.tensor(1.0))
    assert torch.equal(ours(h[None])["logits"], out["logits"])  # [1, M, D] accepted


def test_hipt_gp_rejects_wrong_shapes():
    with pytest.raises(ValueError, match=r"\[M, 192\]"):
        HIPTGP(2)(torch.randn(4, 384))


# ---------------------------------------------------------------------------------------- instance MIL
@pytest.mark.parametrize("n_out", [2, 3])
def test_instance_mil_takes_the_top_instance(n_out):
    torch.manual_seed(0)
    model = InstanceMIL(192, n_out).eval()
    x = torch.randn(9, 192)
    out = model({"feats4k": x})
    with torch.no_grad():
        per = torch.cat([c(model.fc(x)) for c in model.classifiers], dim=1)
        p = per.softmax(1)
        top = int((p[:, 1] if n_out == 2 else p.max(1).values).argmax())
    assert torch.allclose(out["logits"], per[top : top + 1])
    assert int(out["attention"].argmax()) == top and out["attention"].sum() == 1
    out["logits"].sum().backward()  # gradient reaches the layers through the chosen instance
    assert model.fc[0].weight.grad is not None and model.fc[0].weight.grad.abs().sum() > 0


def test_region_token_methods_read_feats4k():
    assert _keys_for("hipt_gp", "frozen") == ("feats4k",)
    assert _keys_for("mil", "frozen", "region") == ("feats4k",)
    assert _keys_for("mil", "frozen", "patch") == ("feats256",)
    assert method_name(FinetuneConfig(method="mil", tokens="region")) == "mil_regions"
    assert method_name(FinetuneConfig(method="hipt_gp", tokens="region")) == "hipt_gp"
    m = build_model("mean", 192, 2)
    assert m({"feats4k": torch.randn(5, 192)})["logits"].shape == (1, 2)


# ------------------------------------------------------------------------------- Table 1 on .pt files
def _released_cohort(root: Path, n: int = 24) -> Path:
    rng = np.random.default_rng(1)
    feats = root / "vit256mean_tcga_slide_embeddings"
    feats.mkdir(parents=True)
    rows = []
    for i in range(n):
        y = i % 2
        torch.save(torch.from_numpy((rng.normal(size=(int(rng.integers(2, 9)), 192)) + 1.5 * y).astype(np.float32)),
                   feats / f"s{i}.pt")
        rows.append({"slide_id": f"s{i}", "label": y, "case_id": f"c{i}"})
    table = pd.DataFrame(rows)
    table.to_csv(root / "table.csv", index=False)
    make_splits(table, 2, "subtype", seed=0, out_dir=root / "splits")
    return root


@pytest.mark.parametrize("method", ["hipt_gp", "mil"])
def test_region_token_methods_train_on_released_pt_files(tmp_path, method):
    root = _released_cohort(tmp_path)
    config = rs.table1_config(tmp_path, tmp_path / "out", method, task=str(root / "table.csv"),
                              splits_dir=str(root / "splits"), max_epochs=3, device="cpu", verbose=False)
    config = config.replace(features_dir=str(root / "vit256mean_tcga_slide_embeddings"))
    assert config.reference_accumulation and not config.standardize and config.tokens == "region"
    records = run_cv(config)
    summary = rs.table1_summary(records)
    name = "hipt_gp" if method == "hipt_gp" else "mil_regions"
    assert set(summary["method"]) == {name} and set(summary["fraction"]) == {0.25, 1.0}
    assert (summary["folds"] == 2).all()
    assert summary["reference"].eq("").all()  # an own table has no reference number


def test_table1_summary_sits_beside_the_reference():
    rec = pd.DataFrame([{"task": "tcga_lung_subtype", "method": "hipt_gp", "fraction": 1.0, "fold": k,
                         "split": "test", "metric": "auc", "value": v} for k, v in enumerate([0.9, 0.95, 1.0])])
    s = rs.table1_summary(rec).iloc[0]
    assert s["ours"] == "0.950 ± 0.050"  # sample std (ddof=1), as the reference's pandas .std()
    assert s["reference"] == "0.953 ± 0.023"
    assert s["diff"] == pytest.approx(0.95 - 0.953)


def test_table1_config_refuses_other_methods(tmp_path):
    with pytest.raises(HIPTError, match="hipt_gp or mil"):
        rs.table1_config(tmp_path, tmp_path, "abmil")


# ---------------------------------------------------------------------------------------------- CLI
def test_cli_knn_without_files_says_what_to_fetch(tmp_path, capsys):
    assert cli_main(["released", "knn", "--root", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "hipt released fetch" in err[0] and str(tmp_path) in err[0]


def test_cli_fetch_dry_run_lists_the_knn_folds(tmp_path, capsys):
    assert cli_main(["released", "fetch", "--knn", "--dry-run", "--root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("180 files") and str(tmp_path) in out


def test_knn_table_reads_the_registry_layout_and_compares(tmp_path, monkeypatch):
    from hipt.released import registry

    folds = registry.knn_folds_dir(tmp_path)
    for study, n in (("tcga_brca", 2), ("tcga_kidney", 3)):
        _write_folds(folds, study, "vit256mean", n, n_folds=10)
    monkeypatch.setattr(rs, "require_files", lambda *a, **k: tmp_path)  # synthetic files, not the registry's
    table = rs.knn_table(tmp_path, encoders=["vit256mean"], studies=["tcga_brca", "tcga_kidney"])
    assert len(table) == 4 and table["aucs"].map(len).eq(10).all()
    row = table[(table.study == "tcga_kidney") & (table.fraction == 1.0)].iloc[0]
    assert row["reference"] == "0.974 ± 0.016"
    assert row["diff"] == pytest.approx(np.mean(row["aucs"]) - 0.974)
    assert row["aucs"] == released_knn_aucs(folds, "tcga_kidney", "vit256mean", 1.0)


def test_run_table1_on_a_registered_task_in_the_released_layout(tmp_path, monkeypatch):
    """The whole path of ``hipt released table1`` for one fold: registered task, released file layout."""
    from hipt.paths import shared_reference_dir
    from hipt.released import registry
    from hipt.tasks import load_task

    if shared_reference_dir() is None or not (shared_reference_dir() / "tcga").is_dir():
        pytest.skip("the TCGA task tables are in ../shared/reference/tcga (absent here; without them they are downloaded)")
    task = load_task("tcga_lung_subtype")
    folder = registry.slide_embeddings_dir(tmp_path)
    folder.mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    for sid, y in zip(task.table["slide_id"], task.table["label"]):
        torch.save(torch.randn(3, 192, generator=g) + float(y), folder / f"{sid}.pt")
    monkeypatch.setattr(rs, "require_files", lambda *a, **k: tmp_path)  # synthetic files, not the registry's
    rec = rs.run_table1(tmp_path, tmp_path / "out", tasks=["tcga_lung_subtype"], methods=["mil"], folds=[0],
                        fractions=[1.0], max_epochs=1, device="cpu", verbose=False)
    summary = rs.table1_summary(rec)
    assert summary[["method", "task", "fraction"]].values.tolist() == [["mil_regions", "tcga_lung_subtype", 1.0]]
    assert summary["reference"].iloc[0] == "0.928 ± 0.026"
    test_auc = rec[(rec.split == "test") & (rec.metric == "auc")]["value"].iloc[0]
    assert test_auc > 0.9  # the label shifts every token by 1: an easy task once the files are read right


def test_hipt_knn_reads_released_folds(tmp_path, capsys):
    for enc in ("resnet50mean", "vit16mean", "vit256mean"):
        for study, n in (("tcga_brca", 2), ("tcga_lung", 2), ("tcga_kidney", 3)):
            _write_folds(tmp_path, study, enc, n, n_folds=10, d=4, n_train=300)
    assert cli_main(["knn", "--released-folds", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.count("\n| ") == 18 and "0.889 ± 0.027" in out  # 3 encoders x 3 studies x 2 fractions; lung ViT-256 100%
    assert cli_main(["knn", "--features", str(tmp_path)]) == 1
    assert "--task, --out" in capsys.readouterr().err
