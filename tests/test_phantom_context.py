"""The ``context`` cohort separates its classes by arrangement only (hipt.phantom, hipt.phantom.checks).

Over many cohort seeds at the CPU preset's sizes (regions of 8×8 cells of 128 px): every slide has the
same tissue-class counts, and the stain/colour summaries of the composed tissue pixels carry no label
signal beyond the permutation null.  Written slides decode every cell exactly as its bank tile, so
the pixels hipt patch reads add nothing.  Each check is shown to fail on a deliberately leaky variant.
"""

import numpy as np
import pytest

from hipt import phantom as P
from hipt.phantom import checks as C
from hipt.phantom import cohorts

SEEDS = range(10)
N_SLIDES, REGIONS, REGION, PATCH = 32, 4, 1024, 128  # the cpu preset's sizes (32 of its 64 slides: speed)


def _cohorts(kind="context"):
    return [P.cohort_truths(kind, N_SLIDES, REGIONS, REGION, PATCH, seed=s) for s in SEEDS]


def _counts_identical(cohorts) -> bool:
    return all(len(np.unique(C.layout_summaries(tr), axis=0)) == 1 for tr in cohorts)


def _stain_signal(cohorts) -> dict:
    xs = [C.pixel_summaries(tr) for tr in cohorts]
    ys = [np.array([t.meta["label"] for t in tr]) for tr in cohorts]
    return C.pooled_signal(xs, ys, n_permutations=20, n_repeats=1)


@pytest.fixture(scope="module")
def context_cohorts():
    return _cohorts()


def test_context_tissue_counts_are_identical_across_slides(context_cohorts):
    assert _counts_identical(context_cohorts)
    for tr in context_cohorts:
        assert {t.meta["label"] for t in tr} == {0, 1}
        counts = P.context_counts(REGION // PATCH)
        assert (C.layout_summaries(tr)[0] == [REGIONS * counts[c] for c in (1, 2, 3, 4)]).all()


def test_context_stain_summaries_carry_no_label_signal(context_cohorts):
    r = _stain_signal(context_cohorts)
    # the mean cross-validated AUC over the seeds is within the permutation null (p > 0.05)
    assert r["p_value"] > 0.05, r


@pytest.fixture
def leaky(monkeypatch):
    """A leaky variant: regions of class 1 (touching) get two more lymphocyte cells (fewer stroma)."""
    original = P.context_region

    def more_lymphocytes(grid, informative, rng, max_tries=200):
        lay = original(grid, informative, rng, max_tries)
        if informative:
            stroma = np.argwhere(lay == P.STROMA)[:2]
            lay[stroma[:, 0], stroma[:, 1]] = P.LYMPHOCYTES
        return lay

    monkeypatch.setattr(cohorts, "context_region", more_lymphocytes)  # the name the cohort plan calls


def test_the_checks_fail_on_a_leaky_cohort(leaky):
    cohorts = _cohorts()
    assert not _counts_identical(cohorts)
    r = _stain_signal(cohorts)
    assert r["p_value"] <= 0.05 and r["mean_auc"] > 0.7, r


@pytest.mark.parametrize("subsampling, exact", [((1, 1), True), ((2, 2), False)])
def test_written_cells_decode_as_their_bank_tiles(tmp_path, subsampling, exact):
    """With the arrangement cohorts' 4:4:4 JPEG every cell reads back (OpenSlide) as the same pixels
    wherever it is and whatever its neighbours; with 4:2:0 the outer pixel ring mixes with neighbours."""
    openslide = pytest.importorskip("openslide")
    rng = np.random.default_rng(0)
    layout = rng.integers(1, 5, (6, 6))
    s = P.make_slide(tmp_path / "s.tif", layout, seed=1, cell=128, n_variants=1, stain_jitter=0.0,
                     jpeg_subsampling=subsampling)
    with openslide.OpenSlide(str(s.path)) as sl:
        img = np.asarray(sl.read_region((0, 0), 0, s.size).convert("RGB")).astype(int)
    cells = img.reshape(6, 128, 6, 128, 3).swapaxes(1, 2)
    keys = np.stack([layout, s.truth.variant, s.truth.transform], -1).reshape(-1, 3)
    flat = cells.reshape(36, 128, 128, 3)
    worst = max(np.abs(flat[i] - flat[j]).max() for i in range(36) for j in range(i)
                if (keys[i] == keys[j]).all())
    assert (worst == 0) == exact, worst
    assert P.COHORT_JPEG_SUBSAMPLING["context"] == P.COHORT_JPEG_SUBSAMPLING["survival"] == (1, 1)
