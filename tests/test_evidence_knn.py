"""Chapter 8's findings follow its numbers (hipt.book.evidence.knn)."""

from hipt.book.evidence.knn import knn_findings


def _auc(comp4, comp2, ctx4, ctx2, sd=0.08):
    return {"phantom_composition2": {"knn_vit4k_mean": (comp4, sd), "knn_vit256_mean": (comp2, sd)},
            "phantom_context": {"knn_vit4k_mean": (ctx4, sd), "knn_vit256_mean": (ctx2, sd)}}


def test_knn_findings_turn_with_the_numbers():
    good = knn_findings(_auc(0.99, 0.98, 0.75, 0.5))
    assert "both separate the classes" in good and "at chance" in good and "carry some of the arrangement" in good
    weak = knn_findings(_auc(0.7, 0.98, 0.52, 0.5))
    assert "not both separate" in weak and "within the fold spread" in weak
    leak = knn_findings(_auc(0.99, 0.98, 0.5, 0.75))
    assert "away from chance" in leak and "below the ViT-256 mean" in leak
    assert knn_findings({}) == ""
