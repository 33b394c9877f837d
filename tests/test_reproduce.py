"""``hipt reproduce``: papermill runs over a grid, failures carried past, resume, provenance."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest

from hipt.book import reproduce as rp
from hipt.cli import main

GOOD = """\
import json, os, pathlib
pathlib.Path(results_dir, "params.json").write_text(json.dumps(
    {"task": task, "methods": methods, "folds": folds, "preset": preset, "cwd": os.getcwd()}))
counter = pathlib.Path(results_dir).parent.parent.parent / "executions.txt"
with open(counter, "a") as f:
    f.write(f"{task}\\n")
"""


def _notebook(path: Path, body: str) -> Path:
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell('preset = "cpu"\ntask = "default"\nmethods = ["m"]\nfolds = [0]\nresults_dir = None')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(body)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


@pytest.fixture()
def chapters(tmp_path):
    good = _notebook(tmp_path / "good.ipynb", GOOD)
    bad = _notebook(tmp_path / "bad.ipynb", 'raise ValueError("this run fails on purpose")')
    return good, bad


def test_grid_splits_axes_into_runs(chapters):
    good, _ = chapters
    runs = rp.grid_runs(good, tasks=["a", "b"], methods=["x", "y"], folds=[0, 1, 2], split_by=["task", "methods"],
                        params={"features_dir": "/feats/{task}", "preset": "paper"})
    assert len(runs) == 4
    assert {r.parameters["task"] for r in runs} == {"a", "b"}
    assert all(len(r.parameters["methods"]) == 1 and r.parameters["folds"] == [0, 1, 2] for r in runs)
    assert {r.parameters["features_dir"] for r in runs} == {"/feats/a", "/feats/b"}
    ids = [r.run_id for r in runs]
    assert len(set(ids)) == 4 and all(i.startswith("good-") for i in ids)
    # the id is stable and depends on every parameter
    again = rp.grid_runs(good, tasks=["a", "b"], methods=["x", "y"], folds=[0, 1, 2], split_by=["task", "methods"],
                         params={"features_dir": "/feats/{task}", "preset": "paper"})
    assert [r.run_id for r in again] == ids
    other = rp.Run(good, {**runs[0].parameters, "preset": "cpu"})
    assert other.run_id != runs[0].run_id


def test_named_targets_plan_the_paper_grids():
    t1 = rp.target_runs("table1")
    assert len(t1) == 3 * 9 * 2 * 10  # tasks × methods × fractions × folds, one run each
    assert {r.chapter.stem for r in t1} == {"06_finetuning"}
    assert all(r.parameters["preset"] == "paper" for r in t1)
    knn = rp.target_runs("knn")
    assert len(knn) == 3 and knn[0].parameters["folds"] == list(range(10))
    quick = rp.quick_runs()
    assert [r.chapter.stem for r in quick] == ["06_finetuning", "07_survival", "08_knn"]
    assert all(r.parameters == {"preset": "cpu"} for r in quick)


def test_failing_run_is_reported_others_complete_then_resume(chapters, tmp_path, capsys):
    good, bad = chapters
    out = tmp_path / "out"
    runs = (rp.grid_runs(good, tasks=["a", "b"], methods=["m1"], folds=[3], params={"preset": "paper"})
            + rp.grid_runs(bad, tasks=["a"]))
    outcomes = rp.reproduce(runs, out, assemble=False, timeout=120)
    assert [o.status for o in outcomes] == ["ok", "ok", "failed"]
    assert rp.exit_code(outcomes) == 1
    assert "ValueError: this run fails on purpose" in outcomes[2].error
    printed = capsys.readouterr().out
    assert "2 ok, 1 failed" in printed and "FAILED bad-" in printed

    # parameters injected (papermill), results_dir per run, executed in the chapter's folder
    for o, task in zip(outcomes[:2], ["a", "b"]):
        got = json.loads((o.run_dir / "results" / "params.json").read_text())
        assert got == {"task": task, "methods": ["m1"], "folds": [3], "preset": "paper", "cwd": str(good.parent)}
        executed = nbformat.read(o.run_dir / "notebook.ipynb", as_version=4)
        assert any("injected-parameters" in c.metadata.get("tags", []) for c in executed.cells)

    # provenance of every run, failed included
    for o in outcomes:
        record = json.loads((o.run_dir / "provenance.json").read_text())
        for key in ("run_id", "chapter", "notebook", "parameters", "status", "error", "hipt_version",
                    "git_commit", "hardware", "started", "finished", "wall_time_s"):
            assert key in record, key
        assert record["status"] == o.status and record["wall_time_s"] > 0
        assert record["git_commit"] and record["hipt_version"]
        assert {"cpu", "cpu_count", "gpu", "torch", "python"} <= set(record["hardware"])
        assert record["parameters"]["results_dir"] == str((o.run_dir / "results").resolve())
    summary = json.loads((out / "summary.json").read_text())
    assert [s["status"] for s in summary] == ["ok", "ok", "failed"]

    # second invocation: the finished runs are skipped, the failed one is tried again
    outcomes2 = rp.reproduce(runs, out, assemble=False, timeout=120)
    assert [o.status for o in outcomes2] == ["skipped", "skipped", "failed"]
    assert (out / "executions.txt").read_text().split() == ["a", "b"]
    # --force reruns a finished one
    outcomes3 = rp.reproduce(runs[:1], out, assemble=False, force=True, timeout=120)
    assert [o.status for o in outcomes3] == ["ok"]
    assert (out / "executions.txt").read_text().split() == ["a", "b", "a"]


def test_cli_runs_markdown_chapter_and_exit_codes(tmp_path, capsys):
    """A MyST ``.md`` chapter is converted with jupytext; exit code 1 when a run fails, 0 otherwise."""
    md = tmp_path / "chap.md"
    md.write_text(
        "---\njupytext:\n  text_representation:\n    extension: .md\n    format_name: myst\n"
        "kernelspec:\n  display_name: Python 3\n  language: python\n  name: python3\n---\n\n# Chap\n\n"
        "```{code-cell} ipython3\n:tags: [parameters]\npreset = \"cpu\"\ntask = \"x\"\nresults_dir = None\n```\n\n"
        "```{code-cell} ipython3\nimport pathlib\nassert task != \"boom\"\n"
        "pathlib.Path(results_dir, task + \".txt\").write_text(preset)\n```\n"
    )
    out = tmp_path / "out"
    assert main(["reproduce", "--chapter", str(md), "--tasks", "ok1", "--out", str(out), "--dry-run"]) == 0
    assert "1 runs" in capsys.readouterr().out
    assert not (out / "runs").exists()
    code = main(["reproduce", "--chapter", str(md), "--tasks", "ok1", "boom", "--out", str(out),
                 "--preset", "paper", "--timeout", "120"])
    assert code == 1
    assert (out / "notebooks" / "chap.ipynb").is_file()
    ok = [d for d in (out / "runs").iterdir() if rp.is_finished(d)]
    assert len(ok) == 1 and (ok[0] / "results" / "ok1.txt").read_text() == "paper"
    assert main(["reproduce", "--chapter", str(md), "--tasks", "ok1", "--out", str(out)]) == 0
    assert "skip" in capsys.readouterr().out


def test_help(capsys):
    with pytest.raises(SystemExit) as e:
        main(["reproduce", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "table1" in out and "--quick" in out and "exit codes" in out.lower()


def test_unknown_target_or_chapter_is_a_clear_error(tmp_path, capsys):
    assert main(["reproduce", "--chapter", str(tmp_path / "nope.md"), "--out", str(tmp_path)]) == 1
    assert "nope.md: chapter notebook not found" in capsys.readouterr().err
    assert main(["reproduce", "--out", str(tmp_path)]) == 1
    assert "name a target" in capsys.readouterr().err


RECORDS = """\
from hipt.tasks.tables import write_fold_results
for method in methods:
    for frac in fractions:
        for fold in folds:
            auc = 0.8 + 0.01 * fold + (0.05 if method == "hipt" else 0.0)
            write_fold_results(results_dir, task, method, frac, fold, {"test": {"auc": auc}})
"""


def test_tables_assembled_from_finished_runs(tmp_path):
    """Chapters write per-fold records into results_dir; the tables hold ours beside the paper's."""
    nb = _notebook(tmp_path / "records.ipynb", RECORDS)
    nb_json = nbformat.read(nb, as_version=4)
    nb_json.cells[0].source += "\nfractions = [1.0]"
    nbformat.write(nb_json, nb)
    runs = rp.grid_runs(nb, tasks=["tcga_lung_subtype"], methods=["hipt", "abmil"], fractions=[0.25, 1.0],
                        folds=[0, 1], split_by=["task", "methods"])
    outcomes = rp.reproduce(runs, tmp_path / "out", timeout=120)
    assert rp.exit_code(outcomes) == 0
    md = (tmp_path / "out" / "tables" / "table1.md").read_text()
    assert "0.855 ± 0.005" in md  # hipt: folds 0, 1 -> 0.85, 0.86 (ours)
    assert "0.952 ± 0.021" in md  # the paper's HIPT lung 100% beside it
    tables = rp.load_tables(tmp_path / "out")
    assert set(tables) == {"table1"} and {"ours", "paper"} <= set(tables["table1"]["source"])
