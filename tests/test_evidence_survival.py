"""Chapter 7's evidence helpers: the chance references of a c-index, the effects, and findings text
that changes when the numbers contradict the book's."""

import numpy as np
import pandas as pd
import pytest

from hipt.book.evidence import summarize_claims, verdict
from hipt.book.evidence.survival import (SURVIVAL_CLAIMS, _cindex_batch, chance_findings, claims_this_run,
                                    comparison_findings, heldout_permutation_null, pooled_cindex,
                                    survival_effects, sweep_findings, sweep_table)
from hipt.metrics import concordance_index


def _pred(n_folds=5, per_fold=10, signal=0.0, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for k in range(n_folds):
        t = np.round(rng.exponential(30, per_fold), 0)  # rounded: ties in time
        cens = (rng.random(per_fold) < 0.35).astype(int)
        risk = -signal * t + rng.normal(0, 1, per_fold)
        risk[:2] = risk[0]  # a tie in risk
        for i in range(per_fold):
            rows.append({"fold": k, "split": "val", "time": t[i], "risk": risk[i], "censorship": cens[i]})
    return pd.DataFrame(rows)


def test_batch_cindex_equals_concordance_index():
    pred = _pred(n_folds=1, per_fold=15, signal=0.02, seed=3)
    t, r, c = pred["time"].to_numpy(), pred["risk"].to_numpy(), pred["censorship"].to_numpy()
    rng = np.random.default_rng(1)
    idx = np.stack([rng.permutation(len(t)) for _ in range(20)])
    got = _cindex_batch(t[idx], r, 1.0 - c[idx])
    want = [concordance_index(t[i], r, 1 - c[i]) for i in idx]
    np.testing.assert_allclose(got, want)


def test_heldout_null_is_centred_on_chance_whatever_the_model():
    good = _pred(signal=1.0)  # risks that order the times almost perfectly
    per_fold = np.mean([concordance_index(g["time"], g["risk"], 1 - g["censorship"]) for _, g in good.groupby("fold")])
    assert per_fold > 0.8
    null = heldout_permutation_null(good, n_permutations=3000, seed=0)
    assert abs(null.mean() - 0.5) < 0.01  # the permutation breaks the ranking, the model stays
    assert 0.02 < null.std() < 0.12  # ~10 cases per fold: a wide scatter around 0.5
    assert np.quantile(null, 0.95) < per_fold


def test_pooled_cindex_uses_held_out_rows_only():
    pred = _pred(signal=1.0)
    noise = pred.assign(split="train", risk=-pred["risk"])
    assert pooled_cindex(pd.concat([pred, noise])) == pytest.approx(pooled_cindex(pred))


def test_effects():
    eff = survival_effects({"hipt": 0.6, "mean": 0.52, "abmil": 0.55}, {"hipt": 0.5, "mean": 0.49}, oracle=0.7,
                           band={"hipt": (0.4, 0.62), "mean": (0.4, 0.6), "abmil": (0.41, 0.6)})
    assert eff["hipt_minus_best_bag"] == pytest.approx(0.05)
    assert eff["hipt_above_band"] == pytest.approx(-0.02)
    assert eff["hipt_minus_chance"] == pytest.approx(0.1)
    assert np.isnan(eff["abmil_minus_chance"])  # no shuffled reruns of abmil: not measured
    assert eff["cindex_oracle"] == 0.7
    assert {c.effect for c in SURVIVAL_CLAIMS} <= set(eff)


def _null(mean_values, pooled_values):
    return pd.DataFrame({"method": ["hipt"] * len(mean_values), "permutation": range(len(mean_values)),
                         "mean": mean_values, "pooled": pooled_values})


def test_chance_findings_follow_the_numbers():
    band = {"hipt": (0.43, 0.57), "mean": (0.44, 0.56)}
    sd = {"hipt": 0.03, "mean": 0.03}
    centred = chance_findings({"hipt": 0.45, "mean": 0.50}, _null([0.48, 0.52, 0.50, 0.47], [0.40, 0.42, 0.41, 0.43]),
                              band, 9.6, 2000, null_epochs=5, heldout_sd=sd)
    assert "as the swap argument says it must be" in centred and "5 epochs each" in centred
    assert "is close to that of the held-out permutations" in centred
    assert "complement bias of pooling" in centred
    assert "cannot be told from chance" in centred and "hipt below 0.5: the scatter" in centred
    assert "Below it" not in centred and "Above it" not in centred

    # contradicting numbers: shuffled reruns far below 0.5 and twice as spread as the held-out permutations,
    # pooled no lower than per-fold, one model below and one above the band
    shifted = chance_findings({"hipt": 0.30, "mean": 0.70}, _null([0.36, 0.44, 0.32, 0.40], [0.40, 0.45, 0.30, 0.42]),
                              band, 9.6, 2000, heldout_sd=sd)
    assert "below 0.5 by more than twice its standard error, which the swap argument does not explain" in shifted
    assert "as the swap argument says" not in shifted
    assert "differs from that of the held-out permutations" in shifted and "raise null_epochs" in shifted
    assert "complement bias of pooling" not in shifted and "cannot attribute it to pooling" in shifted
    assert "Below it: hipt (0.300)" in shifted and "Above it: mean (0.700)" in shifted
    assert "cannot be told from chance" not in shifted

    flat = chance_findings({"hipt": 0.5}, _null([0.48, 0.52, 0.50, 0.49], [0.49, 0.52, 0.50, 0.49]), band, 9.6, 2000)
    assert "too small to measure" in flat
    assert "No shuffled-outcome reruns" in chance_findings({"hipt": 0.5}, None, {}, 9.6, 0)


def test_comparison_findings_follow_the_numbers():
    band = {"hipt": (0.43, 0.57), "mean": (0.44, 0.56)}
    small = comparison_findings({"hipt": 0.56, "mean": 0.54, "abmil": 0.53}, 0.72, band)
    assert "higher than the best bag-of-patches model's (mean) by 0.020" in small
    assert "does not separate them" in small and "no model comes within 0.05" in small
    big = comparison_findings({"hipt": 0.70, "mean": 0.54, "abmil": 0.53}, 0.72, band)
    assert "HIPT separates from the bags" in big and "comes within 0.05 of the oracle" in big
    worse = comparison_findings({"hipt": 0.45, "mean": 0.54, "abmil": 0.58}, 0.55, band)
    assert "HIPT is not higher than the best bag-of-patches model (abmil): -0.130" in worse
    assert "oracle itself ranks poorly" in worse


def test_claims_this_run_and_sweep_findings():
    eff = survival_effects({"hipt": 0.56, "mean": 0.54, "abmil": 0.53}, {"hipt": 0.5, "mean": 0.5, "abmil": 0.5}, 0.7)
    table = claims_this_run(eff)
    assert table.set_index("claim").loc["survival_hipt_beats_bags", "holds on this run"] == "yes"

    alone = sweep_findings(None, eff)
    assert "has not been run" in alone and "holds on this run" in alone

    def rows(diffs):
        return [{"chapter": "07_survival", "cohort_seed": 101 + i, "split_seed": 201, "seed": 1,
                 **survival_effects({"hipt": 0.5 + d, "mean": 0.5, "abmil": 0.5}, {"hipt": 0.5, "mean": 0.5,
                                                                                     "abmil": 0.5}, 0.7,
                                    {m: (0.4, 0.6) for m in ("hipt", "mean", "abmil")})}
                for i, d in enumerate(diffs)] + [{"chapter": "06_finetuning", "hipt_minus_best_bag": 9.0}]

    always = sweep_table(rows([0.05, 0.02, 0.03, 0.01]))
    assert always.set_index("claim").loc["survival_hipt_beats_bags", "holds"] == "4 of 4"  # chapter 6 row left out
    text = sweep_findings(always, eff)
    assert verdict(1.0) in text and "has not been run" not in text
    rarely = sweep_findings(sweep_table(rows([0.05, -0.02, -0.03, -0.01])), eff)
    assert "The claim that HIPT ranks patients better than the best bag-of-patches model " + verdict(0.25) in rarely
    assert len(summarize_claims(rows([0.05]), SURVIVAL_CLAIMS)) == len(SURVIVAL_CLAIMS)


def test_comparison_without_an_oracle_says_nothing_about_one():
    text = comparison_findings({"hipt": 0.56, "mean": 0.54}, float("nan"), {})
    assert "oracle" not in text and "arrangement score" not in text
    assert "higher than the best bag-of-patches model's (mean) by 0.020." in text


def test_sweep_from_a_recorded_benchmark(tmp_path):
    """The chapter's path: a seeds_sweep record (here a temporary one) → this chapter's rows → claims table."""
    from hipt.provenance import read_benchmark_result, write_benchmark_result

    rows = [{"chapter": "07_survival", "cohort_seed": c, "split_seed": s, "seed": 1,
             **survival_effects({"hipt": 0.5 + 0.01 * (c - 103), "mean": 0.5, "abmil": 0.49},
                                {"hipt": 0.5, "mean": 0.5, "abmil": 0.5}, 0.7)}
            for c in range(101, 106) for s in (201, 202)]
    write_benchmark_result("seeds_sweep", rows + [{"chapter": "06_finetuning", "cohort_seed": 101}],
                           command="hipt reproduce seeds --record", folder=tmp_path)
    record = read_benchmark_result("seeds_sweep", folder=tmp_path)
    table = sweep_table(record["rows"]).set_index("claim")
    assert table.loc["survival_hipt_beats_bags", "holds"] == "4 of 10"  # cohorts 104 and 105, both splits
    assert table.loc["survival_mean_above_chance", "holds"] == "0 of 10"
    text = sweep_findings(sweep_table(record["rows"]), {})
    assert "that HIPT ranks patients better than the best bag-of-patches model " + verdict(0.4) in text
    assert "that mean pooling's c-index is above the mean of its shuffled-outcome reruns " + verdict(0.0) in text
