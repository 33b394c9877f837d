"""Chapter 3's KNN test of stage-1 DINO and the text that follows its numbers.

The chapter classifies the tissue type of held-out phantom patches with a KNN on the [CLS] embeddings of
the DINO teacher and of the same network at random initialization
(:func:`hipt.pretrain.evaluate.stage1_knn_test`), on three test sets: the training colours, a change of
the H&E stain vectors (:func:`hipt.pretrain.evaluate.od_stain_shift`, the main test) and a colour jitter
close to DINO's own augmentation (:func:`hipt.pretrain.evaluate.stain_shift`).  A KNN on colour
statistics alone (no network) says whether a test set still lets colour identify the tissue.
:func:`hipt.pretrain.evaluate.knn_gain_rows` gives the paired gain of DINO over random init per test set
with a bootstrap interval over the test patches.

The helpers here word those numbers: a gain is called one only when its interval excludes 0, a test is
called saturated or colour-solvable only when its accuracies say so.  ``bench_stage1_seeds.py`` records
the same rows for other training seeds; :func:`seeds_findings` words them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from hipt.book.evidence import fmt

__all__ = ["CHAPTER", "SATURATED", "MAIN_TEST", "JITTER_TEST", "SAME_TEST", "gain_verdict", "gain_table",
           "seeds_table", "knn_findings", "seeds_findings", "seed_rows", "record_agreement"]

CHAPTER = "03_dino_stage1"
#: an accuracy at or above this leaves no room to show a gain (a test "any representation passes")
SATURATED = 0.95
SAME_TEST, MAIN_TEST, JITTER_TEST = "same colours", "stain vectors (OD)", "colour jitter"


def _interval(row: Mapping) -> str:
    return f"{fmt(row['gain'], '+.3f')} (95 % interval {fmt(row['low'], '+.3f')} to {fmt(row['high'], '+.3f')})"


def _sign(row: Mapping) -> int:
    """+1: the gain's interval lies above 0; −1: below; 0: it holds 0, or the two agree on every patch."""
    if row.get("disagree", 1) == 0 or not all(np.isfinite([row["gain"], row["low"], row["high"]])):
        return 0
    return 1 if row["low"] > 0 else -1 if row["high"] < 0 else 0


def gain_verdict(row: Mapping) -> str:
    """One row of :func:`hipt.pretrain.evaluate.knn_gain_rows` in words."""
    if row.get("disagree", 1) == 0:
        return "same answer on every patch"
    return {1: "above random init", -1: "below random init", 0: "not distinguishable from 0"}[_sign(row)]


def _r(x: float, digits: int = 3) -> float:
    """Rounded as the sentences print it (``format``), so a table and its text show the same digits."""
    return float(format(x, f".{digits}f")) if x is not None and np.isfinite(x) else float("nan")


def _table_row(r: Mapping, colour: float | None = None) -> dict:
    return {**({"colour statistics": _r(colour)} if colour is not None else {}),
            "random init": _r(r["acc_base"]), "DINO": _r(r["acc_new"]), "DINO − random init": _r(r["gain"]),
            "95 % low": _r(r["low"]), "95 % high": _r(r["high"]), "verdict": gain_verdict(r)}


def gain_table(rows: Sequence[Mapping], colour: Mapping[str, float] | None = None) -> pd.DataFrame:
    """The chapter's table (one row per test set): the accuracies (``colour``: test → accuracy of the
    colour-statistics KNN, a column when given), the gain with its interval, and :func:`gain_verdict`,
    rounded to 3 digits as the findings print them."""
    return pd.DataFrame([{"test": r["test"], **_table_row(r, colour[r["test"]] if colour else None)}
                         for r in rows]).set_index("test")


def seeds_table(record_rows: Sequence[Mapping]) -> pd.DataFrame:
    """A ``stage1_seeds`` record as a table indexed by (training seed, test), as :func:`gain_table`."""
    return pd.DataFrame([{"training seed": r["train_seed"], "test": r["test"], **_table_row(r, r.get("acc_colour"))}
                         for r in record_rows]).set_index(["training seed", "test"])


def _by_test(rows: Sequence[Mapping]) -> dict[str, Mapping]:
    return {r["test"]: r for r in rows}


def knn_findings(rows: Sequence[Mapping], colour: Mapping[str, float] | None = None,
                 saturated: float = SATURATED) -> str:
    """The findings of one KNN test, as Markdown bullets.

    ``rows``: :func:`hipt.pretrain.evaluate.knn_gain_rows` (tests :data:`SAME_TEST`, :data:`MAIN_TEST`,
    :data:`JITTER_TEST`); ``colour``: test → accuracy of the colour-statistics KNN (None: not measured).
    """
    t = _by_test(rows)
    lines = []
    if SAME_TEST in t:
        r = t[SAME_TEST]
        line = f"- Training colours: random init {r['acc_base']:.3f}, DINO {r['acc_new']:.3f}. "
        if r["acc_base"] >= saturated:
            line += ("Even the random network separates the phantom's tissue types here, so this column cannot "
                     "show what pretraining bought: beating chance is a weak test.")
        else:
            line += (f"The random network reaches only {r['acc_base']:.3f}, so there is room for pretraining even "
                     f"without a change of stain; DINO − random init: {_interval(r)}, {gain_verdict(r)}.")
        lines.append(line)
    if MAIN_TEST in t:
        r = t[MAIN_TEST]
        line = f"- Changed stain vectors (the main test): random init {r['acc_base']:.3f}, DINO {r['acc_new']:.3f}"
        if colour is not None and MAIN_TEST in colour:
            c = colour[MAIN_TEST]
            line += f", colour statistics alone {c:.3f}. "
            line += ("Colour still identifies the tissue after this change of stain, so the test does not force a "
                     "network to read morphology; " if c >= saturated else
                     "Colour alone no longer identifies the tissue here; ")
        else:
            line += ". "
        s = _sign(r)
        if r.get("disagree", 1) == 0:
            line += "the two networks give the same answer on every test patch: no difference to measure."
        elif s > 0:
            line += (f"DINO is ahead of its random initialization by {_interval(r)}: pretraining bought robustness "
                     "to a change of stain that its augmentation never produced.")
        elif s < 0:
            line += f"DINO is *behind* its random initialization by {_interval(r)}."
        elif r["acc_base"] >= saturated and r["acc_new"] >= saturated:
            line += (f"both networks stay near perfect and their difference, {_interval(r)}, cannot be told from 0: "
                     "on the phantom a change of stain vectors of this size is no obstacle even without pretraining.")
        else:
            line += f"DINO − random init is {_interval(r)}: no gain that these test patches can detect."
        lines.append(line)
    if JITTER_TEST in t:
        r = t[JITTER_TEST]
        s, s_main = _sign(r), (_sign(t[MAIN_TEST]) if MAIN_TEST in t else None)
        line = (f"- Colour jitter (brightness, contrast, saturation, hue: the kind of change DINO's augmentation "
                f"trains the network to ignore): random init {r['acc_base']:.3f}, DINO {r['acc_new']:.3f}, "
                f"gain {_interval(r)}. ")
        main = t.get(MAIN_TEST)
        main_saturated = main is not None and min(main["acc_base"], main["acc_new"]) >= saturated
        if s > 0 and s_main is not None and s_main <= 0 and main_saturated:
            line += ("The only gain is under the shift that DINO was trained to ignore; the stain-vector test leaves "
                     "no room for one (both networks near perfect), so this test cannot say whether pretraining "
                     "bought robustness to stain beyond its own augmentation.")
        elif s > 0 and s_main is not None and s_main <= 0:
            line += ("The gain appears only under the shift that DINO was trained on, not under the stain change it "
                     "was not: this test measures the augmentation on itself more than robustness to stain.")
        elif s > 0 and s_main is not None and s_main > 0:
            line += "DINO gains under both shifts, including the one its augmentation does not imitate."
        elif s > 0:
            line += "DINO gains under the shift its augmentation imitates."
        elif s < 0:
            line += "DINO loses even under the shift its augmentation imitates."
        else:
            line += "No gain that these test patches can detect, even under the shift its augmentation imitates."
        if colour is not None and JITTER_TEST in colour and colour[JITTER_TEST] >= r["acc_new"]:
            line += (f" Colour statistics alone classify {colour[JITTER_TEST]:.3f} of these patches, at least as many "
                     "as the DINO network: what the jitter leaves of colour is still worth more than its embedding.")
        lines.append(line)
    return "\n".join(lines)


def seed_rows(record_rows: Sequence[Mapping], test: str = MAIN_TEST) -> pd.DataFrame:
    """The rows of one test set from a ``stage1_seeds`` record, one per training seed."""
    df = pd.DataFrame(list(record_rows))
    return df[df["test"] == test].set_index("train_seed").sort_index()


def seeds_findings(record_rows: Sequence[Mapping], tests: Sequence[str] = (MAIN_TEST, JITTER_TEST)) -> str:
    """Per test set, how many recorded training seeds give a gain whose interval excludes 0, in words.

    ``record_rows``: rows with ``train_seed``, ``test``, ``gain``, ``low``, ``high`` (and ``disagree``).
    """
    lines = []
    for test in tests:
        rows = [r for r in record_rows if r["test"] == test]
        if not rows:
            continue
        signs = [_sign(r) for r in rows]
        n, up, down = len(signs), signs.count(1), signs.count(-1)
        gains = ", ".join(f"{fmt(r['gain'], '+.3f')} (training seed {r['train_seed']})" for r in rows)
        every = "both" if n == 2 else f"all {n}"
        line = f"- {test}: DINO − random init {gains}. "
        if n == 1:
            line += "One training seed only: it says nothing about how the gain varies between runs."
        elif up == n:
            line += f"The interval lies above 0 for {every} training seeds: the gain is not an accident of one run."
        elif down == n:
            line += f"The interval lies below 0 for {every} training seeds."
        elif up == 0 and down == 0:
            line += f"No training seed of the {n} shows a gain whose interval excludes 0."
        else:
            line += (f"The interval lies above 0 for {up} of the {n} training seeds"
                     + (f" and below 0 for {down}" if down else "")
                     + ": whether pretraining helps here depends on the training run.")
        lines.append(line)
    return "\n".join(lines)


def record_agreement(live: Sequence[Mapping], recorded: Sequence[Mapping], train_seed: int, tol: float = 1e-9) -> str:
    """Whether the recorded rows of ``train_seed`` give the gains computed in the page (``live``), in words.

    Compare only runs of the same test (the record's ``eval_seed`` and ``n_eval`` equal the page's); a
    difference means another model (retrained elsewhere) or other library versions, not another test.
    """
    rec = {r["test"]: r for r in recorded if r.get("train_seed") == train_seed}
    pairs = [(r, rec[r["test"]]) for r in live if r["test"] in rec]
    if not pairs:
        return f"The record holds no run of training seed {train_seed} to compare with this page."
    diff = max(abs(a["gain"] - b["gain"]) for a, b in pairs)
    if diff <= tol:
        return (f"Its row for training seed {train_seed} gives the same gains as this page: the recorded "
                "protocol is the one computed above.")
    return (f"Its row for training seed {train_seed} differs from this page by up to {diff:.3f} in the gain: "
            "the model or the libraries of the recorded run are not those of this build.")
