"""Guarded inputs: a task run's inputs are checked before any work, and a missing one is one clear line.

``hipt.tasks.preflight.check_task_inputs`` (chapters 6, 7, 8 in their paper preset) and the check that
``hipt reproduce`` runs over every planned run before it executes a notebook.
"""

from __future__ import annotations

import ast
import time
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest

from hipt.book import reproduce as rp
from hipt.cli import main
from hipt.errors import HIPTError
from hipt.io import DownloadError
from hipt.tasks import make_splits
from hipt.tasks import preflight
from hipt.tasks.preflight import MissingInputError, check_task_inputs, feature_levels

ROOT = Path(__file__).resolve().parents[1]


def _one_line(e: BaseException) -> str:
    text = str(e)
    assert text and "\n" not in text, f"not one line: {text!r}"
    return text


def _write_features(folder: Path, slide_ids, levels=("feats4k", "feats256")) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for s in slide_ids:
        with h5py.File(folder / f"{s}.h5", "w") as f:
            if "feats4k" in levels:
                f["feats4k"] = np.zeros((2, 8), dtype=np.float32)
            if "feats256" in levels:
                f["feats256"] = np.zeros((2, 4, 8), dtype=np.float32)
            f["coords"] = np.zeros((2, 2), dtype=np.float64)
    return folder


@pytest.fixture()
def own_task(tmp_path):
    """An own subtyping task: a 24-slide table, its split folder, and a features folder for every slide."""
    table = pd.DataFrame({"slide_id": [f"s{i:02d}" for i in range(24)], "label": [i % 2 for i in range(24)]})
    table_path = tmp_path / "table.csv"
    table.to_csv(table_path, index=False)
    splits = tmp_path / "splits"
    make_splits(table, 3, "subtype", seed=0, out_dir=splits)
    feats = _write_features(tmp_path / "features", table.slide_id)
    return {"task": str(table_path), "splits_dir": str(splits), "features_dir": str(feats), "ids": list(table.slide_id)}


# ------------------------------------------------------------------------------------------ passes
def test_complete_inputs_pass_and_return_the_task(own_task):
    got = check_task_inputs(own_task["task"], own_task["features_dir"], splits_dir=own_task["splits_dir"],
                            level=("feats4k", "feats256"))
    assert got.task.name == "table" and got.task.n_folds == 3
    assert sorted(got.slides) == own_task["ids"] and got.absent == ()
    assert "24 of 24 slides have a feature file (feats4k, feats256)" in got.summary()


def test_missing_drop_passes_with_a_warning(own_task):
    for s in own_task["ids"][:3]:
        (Path(own_task["features_dir"]) / f"{s}.h5").unlink()
    with pytest.warns(RuntimeWarning, match=r"3 of 24 slides of table have no feature file .*left out"):
        got = check_task_inputs(own_task["task"], own_task["features_dir"], splits_dir=own_task["splits_dir"],
                                missing="drop")
    assert set(got.absent) == set(own_task["ids"][:3])
    assert "21 of 24" in got.summary() and "3 left out" in got.summary()


def test_released_pt_files_count_as_features(own_task, tmp_path):
    import torch

    pt = tmp_path / "released"
    pt.mkdir()
    for s in own_task["ids"]:
        torch.save(torch.zeros(3, 192), pt / f"{s}.pt")
    got = check_task_inputs(own_task["task"], pt, splits_dir=own_task["splits_dir"], level="feats4k")
    assert got.absent == ()
    with pytest.raises(MissingInputError, match=r"holds feats4k, not feats256"):
        check_task_inputs(own_task["task"], pt, splits_dir=own_task["splits_dir"], level="feats256")


# ------------------------------------------------------------------------------------------ failures
@pytest.mark.parametrize(
    "kwargs, parameter, expected",
    [
        ({"task": None, "features_dir": "X"}, "task", ["task is not set", "-p task", "tcga_lung_subtype"]),
        ({"task": "tcga_lung_subtype", "features_dir": None}, "features_dir",
         ["features_dir is not set", "-p features_dir", "hipt extract", "hipt released fetch --slides"]),
        ({"task": "tcga_coadread_survival", "features_dir": "X", "kind": "survival"}, "table",
         ["tcga_coadread_survival", "does not publish", "-p table"]),
        ({"task": "tcga_lung_subtype", "features_dir": "X", "kind": "survival"}, "task",
         ["tcga_lung_subtype is a subtype task", "tcga_brca_survival"]),
        ({"task": "no_such_task", "features_dir": "X"}, "task", ["neither a registered task", "tcga_brca_subtype"]),
    ],
)
def test_unset_parameters_are_one_line_naming_the_parameter_and_the_fix(kwargs, parameter, expected):
    kwargs = dict(kwargs)
    with pytest.raises(MissingInputError) as e:
        check_task_inputs(kwargs.pop("task"), kwargs.pop("features_dir"), **kwargs)
    text = _one_line(e.value)
    assert isinstance(e.value, HIPTError) and e.value.parameter == parameter
    for piece in expected:
        assert piece in text, (piece, text)


def test_every_unset_parameter_is_named_at_once():
    with pytest.raises(MissingInputError) as e:
        check_task_inputs("tcga_stad_survival", None, kind="survival", style="reproduce")
    text = _one_line(e.value)
    assert len(e.value.problems) == 2
    assert "--param features_dir=/path/{task}/features" in text
    assert "--tasks tcga_stad_survival --param table=" in text


def test_own_table_without_splits_dir(own_task):
    with pytest.raises(MissingInputError) as e:
        check_task_inputs(own_task["task"], own_task["features_dir"])
    assert e.value.parameter == "splits_dir"
    assert "-p splits_dir" in _one_line(e.value) and "make_splits" in str(e.value)


def test_absent_or_empty_features_folder(own_task, tmp_path):
    with pytest.raises(MissingInputError) as e:
        check_task_inputs(own_task["task"], tmp_path / "nope", splits_dir=own_task["splits_dir"])
    assert "nope: features folder not found" in _one_line(e.value) and e.value.parameter == "features_dir"
    (tmp_path / "empty").mkdir()
    with pytest.raises(MissingInputError) as e:
        check_task_inputs(own_task["task"], tmp_path / "empty", splits_dir=own_task["splits_dir"])
    assert "no .h5 or .pt feature file" in _one_line(e.value)


def test_slides_without_features_are_an_error_unless_drop(own_task):
    for s in own_task["ids"][:5]:
        (Path(own_task["features_dir"]) / f"{s}.h5").unlink()
    with pytest.raises(MissingInputError) as e:
        check_task_inputs(own_task["task"], own_task["features_dir"], splits_dir=own_task["splits_dir"])
    text = _one_line(e.value)
    assert "5 of 24 slides of table have no feature file (e.g. s00, s01, s02)" in text
    assert "missing='drop'" in text and e.value.parameter == "missing"
    with pytest.raises(MissingInputError, match="pass --missing drop"):
        check_task_inputs(own_task["task"], own_task["features_dir"], splits_dir=own_task["splits_dir"],
                          style="reproduce")


def test_no_slide_with_features_says_how_ids_and_files_differ(own_task, tmp_path):
    feats = _write_features(tmp_path / "other", ["s00.svs", "s01.svs"])
    with pytest.raises(MissingInputError) as e:
        check_task_inputs(own_task["task"], feats, splits_dir=own_task["splits_dir"], missing="drop")
    text = _one_line(e.value)
    assert "none of the 24 slides" in text and "'s00.svs'" in text


def test_features_without_the_level_the_methods_read(own_task, tmp_path):
    feats = _write_features(tmp_path / "only4k", own_task["ids"], levels=("feats4k",))
    with pytest.raises(MissingInputError) as e:
        check_task_inputs(own_task["task"], feats, splits_dir=own_task["splits_dir"],
                          level=feature_levels(["hipt", "abmil"]))
    assert "holds feats4k, not feats256" in _one_line(e.value)
    check_task_inputs(own_task["task"], feats, splits_dir=own_task["splits_dir"], level=feature_levels(["hipt"]))


def test_registered_task_files_that_cannot_be_had(monkeypatch, tmp_path):
    def offline(*args, **kwargs):
        raise DownloadError("https://raw.githubusercontent.com/x: download failed (no network)")

    monkeypatch.setattr(preflight, "fetch_task_files", offline)
    feats = _write_features(tmp_path / "f", ["a"])
    with pytest.raises(MissingInputError) as e:
        check_task_inputs("tcga_lung_subtype", feats)
    text = _one_line(e.value)
    assert "tcga_lung_subtype: its slide table and split files cannot be had" in text
    assert "download failed" in text and "-p splits_dir" in text


def test_a_table_for_a_task_whose_table_is_not_public(tcga_reference, tmp_path):
    """COADREAD: the split files are public, the table is not: a table given as a parameter is used."""
    from hipt.tasks.splits import read_splits

    cases = sorted({i for s in read_splits(tcga_reference / "splits_survival" / "tcga_coadread")
                    for part in ("train", "val") for i in s[part]})
    rng = np.random.default_rng(0)
    table = pd.DataFrame({"case_id": cases, "slide_id": [f"{c}-01Z.svs" for c in cases],
                          "survival_months": rng.uniform(1, 100, len(cases)).round(1),
                          "censorship": rng.integers(0, 2, len(cases))})
    table.to_csv(tmp_path / "coadread.csv", index=False)
    feats = _write_features(tmp_path / "f", [f"{c}-01Z" for c in cases])
    got = check_task_inputs("tcga_coadread_survival", feats, table=tmp_path / "coadread.csv", kind="survival",
                            root=tcga_reference)
    assert got.task.name == "tcga_coadread_survival" and got.task.kind == "survival" and got.task.n_folds == 5
    assert len(got.slides) == len(cases) and got.absent == ()


def test_feature_levels():
    assert feature_levels(["hipt"]) == ("feats4k",)
    assert feature_levels(["hipt"], hipt_local="finetune") == ("feats256",)
    assert feature_levels(["hipt", "mean", "gcn"]) == ("feats4k", "feats256")
    assert feature_levels(["abmil"], tokens="region") == ("feats4k",)
    assert feature_levels(["vit4k_mean", "knn_vit256_mean"]) == ("feats4k", "feats256")
    assert feature_levels(["vit4k"]) == ("feats4k",)


# ------------------------------------------------------------------------------------------ hipt reproduce
def test_reproduce_table1_without_features_fails_fast_with_one_line(tmp_path, capsys, monkeypatch):
    def must_not_run(*args, **kwargs):
        raise AssertionError("a notebook was executed")

    monkeypatch.setattr(rp, "execute_run", must_not_run)
    t0 = time.perf_counter()
    code = main(["reproduce", "table1", "--out", str(tmp_path / "out")])
    elapsed = time.perf_counter() - t0
    err = capsys.readouterr().err.strip()
    assert code == 1 and elapsed < 30
    assert len(err.splitlines()) == 1, err
    assert "540 of 540 planned runs cannot start, nothing was run" in err
    assert "--param features_dir=/path/{task}/features" in err
    assert not (tmp_path / "out").exists()


def test_reproduce_groups_identical_problems(tmp_path, monkeypatch):
    monkeypatch.setattr(rp, "execute_run", lambda *a, **k: pytest.fail("a notebook was executed"))
    runs = rp.target_runs("table2", folds=[0], methods=["hipt"])
    with pytest.raises(HIPTError) as e:
        rp.reproduce(runs, tmp_path / "out")
    lines = str(e.value).splitlines()
    assert lines[0] == "hipt reproduce: 6 of 6 planned runs cannot start, nothing was run:"
    assert len(lines) == 4  # features_dir (every run), then the COADREAD and STAD tables
    assert "features_dir is not set" in lines[1] and "(6 runs:" in lines[1]
    assert "tcga_coadread_survival" in lines[2] and "(1 run: tcga_coadread_survival)" in lines[2]


def test_reproduce_checks_only_runs_still_to_do(own_task, tmp_path):
    chapter = ROOT / "book" / "06_finetuning.md"
    good = rp.Run(chapter, {"preset": "paper", "task": own_task["task"], "splits_dir": own_task["splits_dir"],
                            "features_dir": own_task["features_dir"], "methods": ["hipt"]})
    bad = rp.Run(chapter, {"preset": "paper", "task": own_task["task"], "splits_dir": own_task["splits_dir"],
                           "methods": ["hipt"]})
    cpu = rp.Run(chapter, {"preset": "cpu"})
    assert rp.run_needs(cpu) is None and rp.run_needs(rp.Run(Path("x.ipynb"), {"preset": "paper"})) is None
    assert rp.run_needs(good)["level"] == ("feats4k",) and rp.run_needs(good)["kind"] == "subtype"
    rp.check_runs([good, cpu])
    with pytest.raises(HIPTError, match="1 of 2 planned runs cannot start"):
        rp.check_runs([good, bad])
    # a run that finished before is skipped, so its inputs are not needed any more
    out = tmp_path / "out"
    (out / "runs" / bad.run_id).mkdir(parents=True)
    (out / "runs" / bad.run_id / "provenance.json").write_text('{"status": "ok"}')
    outcomes = rp.reproduce([bad], out, assemble=False)
    assert [o.status for o in outcomes] == ["skipped"]


def test_dry_run_lists_what_each_run_needs(tmp_path, capsys):
    args = ["reproduce", "table1", "--tasks", "tcga_lung_subtype", "--methods", "hipt", "mean", "--fractions", "1.0",
            "--folds", "0", "--dry-run", "--out", str(tmp_path)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert out.count("    needs task tcga_lung_subtype") == 2
    assert "[feats4k]: MISSING: features_dir is not set" in out and "[feats256]: MISSING" in out
    assert "2 runs, 2 of them cannot start" in out
    assert not (tmp_path / "runs").exists()


def test_missing_flag_is_passed_to_the_chapters(tmp_path):
    parser = __import__("argparse").ArgumentParser()
    rp.add_arguments(parser)
    runs = rp.plan_from_args(parser.parse_args(["knn", "--missing", "drop"]))
    assert {r.parameters["missing"] for r in runs} == {"drop"}
    assert "missing" not in rp.plan_from_args(parser.parse_args(["knn"]))[0].parameters  # run ids unchanged
    assert "Google Drive" in parser.format_help()


# ------------------------------------------------------------------------------------------ chapters
@pytest.mark.parametrize("name", ["06_finetuning", "07_survival", "08_knn"])
def test_chapters_take_missing_and_table_and_check_their_inputs(name):
    import jupytext

    nb = jupytext.read(ROOT / "book" / f"{name}.md", fmt="md:myst")
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    values = {t.id: n.value for n in ast.parse(cell.source).body if isinstance(n, ast.Assign) for t in n.targets}
    assert values["missing"].value == "error" and values["table"].value is None
    code = [c.source for c in nb.cells if c.cell_type == "code"]
    first_work = code[2]  # setup, parameters, then the first cell that does work
    assert "check_task_inputs(" in first_work and "missing=missing" in first_work and "table=table" in first_work
