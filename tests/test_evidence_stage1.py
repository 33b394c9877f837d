"""hipt.book.evidence.stage1: chapter 3's KNN findings change with the numbers.

Each test feeds numbers that contradict the book's (a saturated test that is not, a stain-vector gain
that is there or is negative, a colour-jitter gain that disappears, training seeds that disagree) and
checks that the sentence changes.
"""

from __future__ import annotations

from hipt.book.evidence.stage1 import (
    JITTER_TEST, MAIN_TEST, SAME_TEST, gain_table, gain_verdict, knn_findings, seed_rows, seeds_findings,
)


def _row(test, base, new, gain, low, high, disagree=20):
    return {"test": test, "acc_base": base, "acc_new": new, "gain": gain, "low": low, "high": high, "n": 400,
            "disagree": disagree}


def _rows(main=(0.97, 0.975, 0.005, -0.01, 0.02), jitter=(0.70, 0.78, 0.08, 0.04, 0.12), same=(1.0, 1.0, 0, 0, 0, 0)):
    return [_row(SAME_TEST, *same), _row(MAIN_TEST, *main), _row(JITTER_TEST, *jitter)]


def test_verdict_follows_the_interval():
    assert gain_verdict(_row(MAIN_TEST, 0.7, 0.8, 0.1, 0.05, 0.15)) == "above random init"
    assert gain_verdict(_row(MAIN_TEST, 0.8, 0.7, -0.1, -0.15, -0.05)) == "below random init"
    assert gain_verdict(_row(MAIN_TEST, 0.8, 0.8, 0.0, -0.02, 0.02)) == "not distinguishable from 0"
    assert gain_verdict(_row(MAIN_TEST, 1.0, 1.0, 0.0, 0.0, 0.0, disagree=0)) == "same answer on every patch"
    assert list(gain_table(_rows())["verdict"]) == ["same answer on every patch", "not distinguishable from 0",
                                                    "above random init"]


def test_saturated_training_colours_and_room_to_gain():
    text = knn_findings(_rows())
    assert "cannot show what pretraining bought" in text
    text = knn_findings(_rows(same=(0.80, 0.90, 0.10, 0.06, 0.14)))
    assert "cannot show what pretraining bought" not in text
    assert "reaches only 0.800" in text and "above random init" in text


def test_stain_vector_gain_is_worded_by_its_interval():
    none = knn_findings(_rows(), colour={MAIN_TEST: 1.0})
    assert "cannot be told from 0" in none and "Colour still identifies the tissue" in none
    assert "DINO is ahead" not in none
    # the shift is hard for colour and DINO gains: the opposite sentences
    gain = knn_findings(_rows(main=(0.60, 0.75, 0.15, 0.10, 0.20)), colour={MAIN_TEST: 0.40})
    assert "DINO is ahead" in gain and "no longer identifies" in gain and "cannot be told" not in gain
    loss = knn_findings(_rows(main=(0.75, 0.60, -0.15, -0.20, -0.10)))
    assert "*behind*" in loss and "DINO is ahead" not in loss
    unsaturated_zero = knn_findings(_rows(main=(0.70, 0.71, 0.01, -0.03, 0.05)))
    assert "no gain that these test patches can detect" in unsaturated_zero
    same = knn_findings(_rows(main=(1.0, 1.0, 0.0, 0.0, 0.0, 0)))
    assert "same answer on every test patch" in same


def test_colour_jitter_is_compared_with_the_main_test():
    saturated = knn_findings(_rows())  # the stain-vector test: both networks near perfect
    assert "leaves no room for one" in saturated and "measures the augmentation on itself" not in saturated
    only_jitter = knn_findings(_rows(main=(0.70, 0.71, 0.01, -0.03, 0.05)))
    assert "measures the augmentation on itself" in only_jitter and "no room" not in only_jitter
    both = knn_findings(_rows(main=(0.60, 0.75, 0.15, 0.10, 0.20)))
    assert "gains under both shifts" in both and "on itself" not in both
    neither = knn_findings(_rows(jitter=(0.70, 0.71, 0.01, -0.03, 0.05)))
    assert "No gain that these test patches can detect, even under" in neither and "on itself" not in neither


def _seed(seed, test, gain, low, high):
    return {"train_seed": seed, **_row(test, 0.7, 0.7 + gain, gain, low, high)}


def test_seeds_findings_count_the_seeds():
    agree = [_seed(0, MAIN_TEST, 0.05, 0.01, 0.09), _seed(1, MAIN_TEST, 0.06, 0.02, 0.10)]
    assert "above 0 for both training seeds" in seeds_findings(agree)
    split = [_seed(0, MAIN_TEST, 0.05, 0.01, 0.09), _seed(1, MAIN_TEST, 0.0, -0.03, 0.03)]
    text = seeds_findings(split)
    assert "above 0 for 1 of the 2" in text and "depends on the training run" in text
    none = [_seed(0, MAIN_TEST, 0.0, -0.03, 0.03), _seed(1, MAIN_TEST, 0.01, -0.02, 0.04)]
    assert "No training seed of the 2" in seeds_findings(none)
    assert "One training seed only" in seeds_findings(agree[:1])
    assert list(seed_rows(split).index) == [0, 1]


def test_record_agreement_says_when_the_record_differs():
    from hipt.book.evidence.stage1 import record_agreement

    live = _rows()
    recorded = [{"train_seed": 0, **r} for r in live] + [{"train_seed": 1, **r} for r in live]
    assert "same gains as this page" in record_agreement(live, recorded, 0)
    moved = [{**r, "gain": r["gain"] + 0.02} for r in recorded]
    text = record_agreement(live, moved, 0)
    assert "differs from this page by up to 0.020" in text and "same gains" not in text
    assert "holds no run of training seed 5" in record_agreement(live, recorded, 5)
    assert list(gain_table(live, colour={t: 1.0 for t in (SAME_TEST, MAIN_TEST, JITTER_TEST)}).columns)[0] == \
        "colour statistics"


def test_colour_statistics_against_dino_under_jitter():
    rows = _rows()  # DINO 0.78 under the jitter
    assert "at least as many as the DINO network" in knn_findings(rows, colour={JITTER_TEST: 0.79})
    assert "at least as many" not in knn_findings(rows, colour={JITTER_TEST: 0.60})


def test_tables_round_as_the_text_prints():
    from hipt.book.evidence.stage1 import seeds_table

    row = _row(JITTER_TEST, 0.6675, 0.745, 0.0775, 0.0425, 0.1125)
    table = gain_table([row])
    text = knn_findings([row])
    assert f"{table.loc[JITTER_TEST, 'DINO − random init']:+.3f}" in text
    assert f"{table.loc[JITTER_TEST, '95 % low']:+.3f}" in text
    rec = seeds_table([{"train_seed": 1, "acc_colour": 0.7875, **row}])
    assert rec.loc[(1, JITTER_TEST), "colour statistics"] == float(format(0.7875, ".3f"))
