"""hipt.book.evidence: claims over seeds, sweep records, and findings text that follows its numbers."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pandas as pd
import pytest
import torch

from hipt.book.evidence import Claim, claim_lines, read_effects, summarize_claims, sweep_rows, verdict, write_effects
from hipt.book.evidence.finetuning import FINETUNING_CLAIMS, context_findings, finetuning_effects, raw_findings


def test_claim_holds_and_nan():
    c = Claim("gap", "06", "gap", ">", 0.1, "HIPT wins")
    assert c.holds(0.2) and not c.holds(0.1) and not c.holds(float("nan"))
    assert Claim("x", "06", "v", "<", 0.65, "").holds(0.5)
    with pytest.raises(ValueError):
        Claim("x", "06", "v", ">=", 0, "").holds(1.0)


def test_summarize_claims_counts_and_groups():
    rows = [{"chapter": "06", "gap": g, "sj": sj} for g, sj in
            [(0.3, 0), (0.2, 0), (-0.1, 0), (0.05, 0.06), (-0.2, 0.06)]]
    c = Claim("gap", "06", "gap", ">", 0.0, "HIPT wins")
    s = summarize_claims(rows, [c], by=["sj"]).set_index("sj")
    assert s.loc[0, "holds"] == 2 and s.loc[0, "seeds"] == 3 and s.loc[0, "median"] == pytest.approx(0.2)
    assert s.loc[0.06, "holds"] == 1 and s.loc[0.06, "share"] == pytest.approx(0.5)
    # another chapter's rows and missing effects are left out
    assert summarize_claims([{"chapter": "07", "gap": 1.0}], [c]).empty


@pytest.mark.parametrize("share,word", [(1.0, "every"), (0.9, "most"), (0.7, "more often"), (0.5, "coin toss"),
                                        (0.2, "mostly does not"), (0.0, "does not hold on any")])
def test_verdict_follows_share(share, word):
    assert word in verdict(share)


def test_effects_round_trip(tmp_path):
    p = write_effects(tmp_path, "06_finetuning", {"cohort_seed": 101, "split_seed": 201, "seed": 1},
                      {"gap": 0.1, "missing": float("nan")}, settings={"context_stain_jitter": 0.06})
    rec = read_effects(p)
    assert rec["seeds"]["cohort_seed"] == 101 and np.isnan(rec["effects"]["missing"])
    assert json.loads(p.read_text())["effects"]["missing"] is None  # valid JSON, no NaN literal
    (row,) = sweep_rows([p])
    assert row["cohort_seed"] == 101 and row["context_stain_jitter"] == 0.06 and row["gap"] == pytest.approx(0.1)


def _effects(gap, gap_n=0.2, bag=0.5, p4k=0.8, pmean=0.5, comp=0.95):
    auc = {"phantom_composition2": {"hipt": comp, "mean": 0.99},
           "phantom_context": {"hipt": bag + gap, "hipt_n": bag + gap - gap_n, "mean": bag, "abmil": bag - 0.05}}
    return finetuning_effects(auc, {"ViT-4K region token": p4k, "mean of patch tokens": pmean})


def test_finetuning_effects():
    e = _effects(0.25)
    assert e["ctx_gap_hipt_vs_bag"] == pytest.approx(0.25) and e["ctx_auc_bag_best"] == pytest.approx(0.5)
    assert e["comp_min_auc"] == pytest.approx(0.95) and e["probe_gap_4k_vs_mean"] == pytest.approx(0.3)
    # a cohort that was not run gives NaN, not an error
    assert np.isnan(finetuning_effects({})["ctx_gap_hipt_vs_bag"])


def test_context_findings_follow_the_numbers():
    win = context_findings(_effects(0.3))
    tie = context_findings(_effects(0.02))
    lose = context_findings(_effects(-0.25))
    no_vit = context_findings(_effects(0.3, gap_n=0.0))
    leak = context_findings(_effects(0.0, bag=0.75))
    assert "ahead of the bag-of-patches models" in win and "through the region tokens" in win
    assert "cannot tell them apart" in tie and "ahead" not in tie
    assert "**behind**" in lose
    assert "does not come from the region encoder" in no_vit
    assert "leaks" in leak and "leaks" not in win
    # the probe sentence turns with the probe
    assert "do carry the arrangement" in tie and "agrees" in win
    assert "carry part of" in context_findings(_effects(0.3, p4k=0.69, pmean=0.44))
    assert "does not single out" in context_findings(_effects(0.02, p4k=0.55, pmean=0.5))


def test_context_findings_quote_the_sweep():
    sweep = summarize_claims([{"chapter": "06_finetuning", "ctx_gap_hipt_vs_bag": g, "context_stain_jitter": 0.0}
                              for g in (0.3, -0.1, -0.2, 0.1)], FINETUNING_CLAIMS, by=["context_stain_jitter"])
    text = context_findings(_effects(0.3), sweep)
    assert "on 2 of 4 seed combinations" in text


def test_claim_lines_say_one_draw_without_a_sweep_and_count_with_one():
    e = _effects(0.3)
    lines = claim_lines(FINETUNING_CLAIMS, e, None)
    assert all("one draw" in line for line in lines)
    gap_line = next(line for line in lines if "better of mean pooling and ABMIL (" in line)
    assert "holds in this run" in gap_line
    lose = next(line for line in claim_lines(FINETUNING_CLAIMS, _effects(-0.3), None)
                if "better of mean pooling and ABMIL (" in line)
    assert "does **not** hold" in lose
    sweep = summarize_claims([{"chapter": "06_finetuning", "ctx_gap_hipt_vs_bag": g} for g in (0.3, -0.1, -0.2)],
                             FINETUNING_CLAIMS)
    line = next(x for x in claim_lines(FINETUNING_CLAIMS, e, sweep) if "better of mean pooling and ABMIL (" in x)
    assert "on 1 of 3 seed combinations" in line and "mostly does not hold" in line


def test_raw_findings_follow_the_numbers():
    same = raw_findings({"hipt": 0.7, "mean": 0.5}, {"hipt": 0.72, "mean": 0.52}, 0.01)
    helps = raw_findings({"hipt": 0.5, "mean": 0.5}, {"hipt": 0.8, "mean": 0.5}, 0.01)
    hurts = raw_findings({"hipt": 0.8, "mean": 0.5}, {"hipt": 0.6, "mean": 0.5}, 0.01)
    assert "does not decide" in same
    assert "helps hipt" in helps and "nearly the same vector" in helps
    assert "hurts hipt" in hurts


# ------------------------------------------------------------------------------------------ one protocol
def test_fit_batches_equals_fit():
    from hipt.models.slide_heads import FeatureStandardizer

    x = torch.randn(3, 40, 8, dtype=torch.float64) * torch.arange(1, 9) + 5
    a = FeatureStandardizer.fit(x.reshape(-1, 8))
    b = FeatureStandardizer.fit_batches(list(x))
    assert torch.allclose(a.mean, b.mean, atol=1e-5) and torch.allclose(a.std, b.std, rtol=1e-4)


def test_every_method_gets_the_same_normalization(tmp_path, one_torch_thread):
    """standardize=True z-scores the baselines' patch tokens as it does HIPT's region tokens, with
    statistics of the training slides only; False leaves every method raw."""
    from hipt.models.mil import StandardizedInput
    from hipt.tasks.train import FinetuneConfig, train_fold
    from test_train import _write_cohort

    root = _write_cohort(tmp_path / "cohort")
    base = FinetuneConfig(features_dir=str(root / "features"), task=str(root / "table.csv"),
                          splits_dir=str(root / "splits"), kind="subtype", max_epochs=1, accumulation=1,
                          fractions=[1.0], verbose=False, device="cpu", out=str(tmp_path / "o"))
    for method in ("mean", "abmil"):
        z = train_fold(base.replace(method=method), 0, write=False).model
        raw = train_fold(base.replace(method=method, standardize=False), 0, write=False).model
        assert isinstance(z, StandardizedInput) and not isinstance(raw, StandardizedInput)
        norm = z.norms["feats256"]
        assert norm.mean.shape == (norm.mean.numel(),) and float(norm.std.min()) > 0
    hipt = train_fold(base.replace(method="hipt"), 0, write=False).model
    assert hipt.slide.region_norm is not None


def test_standardized_input_uses_training_statistics_only(tmp_path):
    from hipt.models.mil import StandardizedInput, build_model
    from hipt.models.slide_heads import FeatureStandardizer

    train = [torch.randn(2, 4, 6) + 3.0 for _ in range(5)]
    norm = FeatureStandardizer.fit_batches(train)
    m = StandardizedInput(build_model("mean", 6, 2), {"feats256": norm})
    bag = {"feats256": torch.randn(2, 4, 6) + 100.0}  # a test slide far off: its own statistics are not used
    seen = {}
    m.model.register_forward_pre_hook(lambda mod, args: seen.update(x=args[0]["feats256"].clone()))
    m(bag)
    assert float(seen["x"].mean()) > 50  # z-scored with the training mean (~3), not its own


# ------------------------------------------------------------------------------------------ the sweep
def test_seed_sweep_runs_and_record(tmp_path):
    from hipt.book import reproduce as rp

    runs = rp.seed_sweep_runs(cohort_seeds=(101, 102), split_seeds=(201,))
    ids = [r.run_id for r in runs]
    assert len(ids) == len(set(ids)) == 2 * 2 + 2  # chapter 6: two variants, chapter 7: one
    assert any("-c101-s201-" in i for i in ids)
    assert all(r.parameters["preset"] == "cpu" for r in runs)
    with pytest.raises(rp.HIPTError, match="no claims are swept"):
        rp.seed_sweep_runs(["08_knn"])
    args = argparse.Namespace(target="seeds", param=[], missing=None, chapter=None, quick=False, cohort_seeds=[7],
                              split_seeds=[8, 9], sweep_chapters=["07_survival"])
    assert [r.parameters["split_seed"] for r in rp.plan_from_args(args)] == [8, 9]

    # two finished runs with effects, one failed run: the record holds the finished two
    out = tmp_path / "sweep"
    for i, (run, status) in enumerate(zip(runs[:3], ("ok", "ok", "failed"))):
        d = out / "runs" / run.run_id
        (d / "results").mkdir(parents=True)
        (d / "provenance.json").write_text(json.dumps({"status": status}))
        write_effects(d / "results", "06_finetuning", {"cohort_seed": 100 + i, "split_seed": 201, "seed": 1},
                      {"ctx_gap_hipt_vs_bag": 0.1 * i})
    path = rp.record_sweep(out, "hipt reproduce seeds --record", folder=tmp_path / "results")
    rec = json.loads(path.read_text())
    assert rec["name"] == "seeds_sweep" and len(rec["rows"]) == 2 and rec["command"].startswith("hipt reproduce seeds")
    assert {"cohort_seed", "split_seed", "seed", "chapter"} <= set(rec["rows"][0])
    with pytest.raises(rp.HIPTError, match="nothing to record"):
        rp.record_sweep(tmp_path / "empty", "x", folder=tmp_path / "results")
