"""Per-fold records → Table 1 / Table 2: means, stds, layout, the paper's numbers beside ours."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from hipt.errors import InputFileError
from hipt.tasks.tables import PAPER_TABLE1, RECORD_COLUMNS, collect_results, summarize, table1, table2, write_fold_results


def _synthetic(results_dir, rng):
    truth = {}
    for task in ("tcga_brca_subtype", "tcga_lung_subtype", "phantom_context"):
        for method in ("hipt", "abmil", "knn_vit4k_mean"):
            for frac in (0.25, 1.0):
                aucs = rng.uniform(0.5, 1.0, 5)
                truth[(task, method, frac)] = aucs
                for k, a in enumerate(aucs):
                    write_fold_results(results_dir, task, method, frac, k,
                                       {"test": {"auc": a, "acc": a - 0.1}, "val": {"auc": 1 - a}}, extra={"seed": 1})
    return truth


def test_record_files_round_trip(tmp_path):
    p = write_fold_results(tmp_path, "t", "hipt", 0.25, 3, {"test": {"auc": 0.9}})
    assert p.name == "t__hipt__frac0.25__fold3.results.csv"
    df = pd.read_csv(p)
    assert list(df.columns[:7]) == list(RECORD_COLUMNS) and df.iloc[0].value == 0.9
    assert [q.name for q in tmp_path.iterdir()] == [p.name]  # atomic: no temporary left


def test_table1_means_stds_and_layout(tmp_path):
    rng = np.random.default_rng(0)
    truth = _synthetic(tmp_path / "res", rng)
    # unrelated files in the folder are ignored: per-slide predictions and JSON without records
    pd.DataFrame({"slide_id": ["a"], "prob": [0.3]}).to_csv(tmp_path / "res" / "preds.csv", index=False)
    (tmp_path / "res" / "provenance.json").write_text(json.dumps({"status": "ok"}))
    t = table1(tmp_path / "res")
    # columns: tasks (TCGA in the paper's order, then others) × fractions
    assert list(t.wide.columns) == ["BRCA 25%", "BRCA 100%", "Lung 25%", "Lung 100%", "phantom_context 25%",
                                    "phantom_context 100%"]
    # rows: methods in METHOD_LABELS order, ours then the paper; paper-only methods included
    idx = list(t.wide.index)
    assert idx[:2] == [("hipt", "ours"), ("hipt", "paper")]
    assert ("abmil", "ours") in idx and ("clam_sb", "paper") in idx and ("knn_vit4k_mean", "paper") in idx
    assert idx.index(("abmil", "ours")) < idx.index(("knn_vit4k_mean", "ours"))
    for (task, method, frac), aucs in truth.items():
        row = t.long.query("task == @task and method == @method and fraction == @frac and source == 'ours'").iloc[0]
        assert row["mean"] == pytest.approx(aucs.mean()) and row["std"] == pytest.approx(aucs.std())
        assert row["n_folds"] == 5
    cell = t.wide.loc[("hipt", "ours"), "BRCA 25%"]
    a = truth[("tcga_brca_subtype", "hipt", 0.25)]
    assert cell == f"{a.mean():.3f} ± {a.std():.3f}"
    assert t.wide.loc[("hipt", "paper"), "BRCA 100%"] == "0.874 ± 0.060"
    assert t.wide.loc[("hipt", "paper"), "phantom_context 25%"] == "–"  # no paper number for phantoms
    assert t.wide.loc[("clam_sb", "paper"), "Lung 25%"] == "–"  # paper reports CLAM at 100% only
    md = t.to_markdown()
    assert md.count("\n") == len(idx) + 2 and "| HIPT (ViT-256 frozen" in md
    csv, mdp = t.save(tmp_path / "out", "table1")
    assert pd.read_csv(csv).shape[0] == len(t.long) and mdp.read_text().startswith("**Slide-level")


def test_table1_filters_and_other_metric(tmp_path):
    rng = np.random.default_rng(1)
    truth = _synthetic(tmp_path, rng)
    t = table1(tmp_path, tasks=["tcga_brca_subtype"], methods=["abmil", "hipt"], split="val", include_paper=False)
    assert list(t.wide.index) == [("abmil", "ours"), ("hipt", "ours")]
    v = 1 - truth[("tcga_brca_subtype", "hipt", 1.0)]
    assert t.wide.loc[("hipt", "ours"), "BRCA 100%"] == f"{v.mean():.3f} ± {v.std():.3f}"
    s = summarize(tmp_path, "test", "acc", ddof=1)
    a = truth[("phantom_context", "abmil", 0.25)] - 0.1
    got = s.query("task == 'phantom_context' and method == 'abmil' and fraction == 0.25").iloc[0]
    assert got["mean"] == pytest.approx(a.mean()) and got["std"] == pytest.approx(a.std(ddof=1))


def test_table2_cindex(tmp_path):
    vals = {"tcga_brca_survival": [0.6, 0.7, 0.65, 0.62, 0.58], "tcga_luad_survival": [0.5, 0.55, 0.6, 0.52, 0.53]}
    records = []
    for task, v in vals.items():
        for k, c in enumerate(v):
            records.append({"task": task, "method": "hipt", "fraction": 1.0, "fold": k, "split": "val",
                            "metric": "c_index", "value": c})
    (tmp_path / "surv.json").write_text(json.dumps({"records": records}))
    t = table2(tmp_path)
    assert list(t.wide.columns) == ["BRCA", "LUAD"]
    assert t.wide.loc[("hipt", "ours"), "BRCA"] == f"{np.mean(vals['tcga_brca_survival']):.3f} ± " \
        f"{np.std(vals['tcga_brca_survival']):.3f}"
    assert t.wide.loc[("hipt", "paper"), "LUAD"] == "0.538 ± 0.044"
    assert t.wide.loc[("abmil", "paper"), "BRCA"] == "0.487"


def test_duplicates_and_bad_files_are_errors(tmp_path):
    write_fold_results(tmp_path, "t", "m", 1.0, 0, {"test": {"auc": 0.9}})
    write_fold_results(tmp_path, "t", "m", 1.0, 0, {"test": {"auc": 0.8}}, filename="again.csv")
    with pytest.raises(InputFileError, match="also appears in"):
        collect_results(tmp_path)
    with pytest.raises(InputFileError, match="results folder not found"):
        collect_results(tmp_path / "missing")
    bad = tmp_path / "b"
    bad.mkdir()
    pd.DataFrame([{**dict.fromkeys(RECORD_COLUMNS, "x"), "fraction": 1.0, "fold": 0}]).to_csv(bad / "r.csv", index=False)
    with pytest.raises(InputFileError, match="r.csv: bad record values"):
        collect_results(bad)


def test_paper_numbers_structure():
    assert PAPER_TABLE1["hipt"]["tcga_kidney_subtype"][1.0] == (0.980, 0.013)
    assert PAPER_TABLE1["knn_vit4k_mean"]["tcga_lung_subtype"] == {0.25: (0.773, None), 1.0: (0.889, None)}
    assert PAPER_TABLE1["hipt_scratch"]["tcga_kidney_subtype"][0.25] is None


def test_write_tables_from_training_loop_layout(tmp_path):
    """Nested folders as hipt.tasks.train writes them (records + per-slide predictions), KNN flat files."""
    from hipt.tasks.tables import write_tables

    runs = [tmp_path / "run_a", tmp_path / "run_b"]
    for k in range(3):
        d = runs[0] / "tcga_lung_subtype" / "hipt" / "100pct"
        d.mkdir(parents=True, exist_ok=True)
        pd.DataFrame([{"task": "tcga_lung_subtype", "method": "hipt", "fraction": 1.0, "fold": k, "split": s,
                       "metric": "auc", "value": 0.9 + 0.01 * k} for s in ("val", "test")]).to_csv(
            d / f"fold{k}.results.csv", index=False)
        pd.DataFrame({"id": ["a"], "label": [1], "prob_0": [0.2], "prob_1": [0.8], "split": ["test"],
                      "task": ["tcga_lung_subtype"], "method": ["hipt"], "fraction": [1.0], "fold": [k]}).to_csv(
            d / f"fold{k}.predictions.csv", index=False)
        write_fold_results(runs[1], "tcga_luad_survival", "hipt", 1.0, k, {"val": {"c_index": 0.5 + 0.05 * k}})
    written = write_tables(runs, tmp_path / "tables")
    assert sorted(p.name for p in written) == ["table1.csv", "table1.md", "table2.csv", "table2.md"]
    t1 = pd.read_csv(tmp_path / "tables" / "table1.csv")
    ours = t1.query("source == 'ours'").iloc[0]
    assert ours["mean"] == pytest.approx(0.91) and ours["n_folds"] == 3
    assert "0.550 ± 0.041" in (tmp_path / "tables" / "table2.md").read_text()
    # the spelling 'cindex' reads as 'c_index'
    write_fold_results(tmp_path / "alias", "t", "m", 1.0, 0, {"val": {"cindex": 0.7}})
    assert collect_results(tmp_path / "alias").metric.tolist() == ["c_index"]
    assert table2(tmp_path / "alias", include_paper=False).wide.iloc[0, 0] == "0.700"
