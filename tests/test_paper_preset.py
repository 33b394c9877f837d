"""``preset="paper"`` is the reference: every DINO setting of the paper preset against a table of the
reference's values, and a paper-preset pretraining run on phantom data refused before any work.

The table is written from ``shared/reference/HIPT-REFERENCE.md`` (the facts about the reference code), not
from the presets: each row cites its section.  ``§4`` = "Hierarchical pretraining" (the defaults common
to ``main_dino.py`` and ``main_dino4k.py``, then stage 1 and stage 2), ``§1a``/``§1b`` = the two ViTs.
"""

from __future__ import annotations

import pytest

from hipt.errors import HIPTError
from hipt.pretrain import make_config
from hipt.pretrain.schedules import scaled_lr
from hipt.pretrain.trainer import PaperDataError, build_backbone, build_head

# (field, reference value, where HIPT-REFERENCE.md says so) for both stages
COMMON = [
    ("out_dim", 65536, "§4 common: out_dim 65536"),
    ("norm_last_layer", True, "§4 common: norm_last_layer True"),
    ("use_bn_in_head", False, "§4 common: use_bn_in_head False; §1a DINOHead use_bn=False"),
    ("head_hidden_dim", 2048, "§1a DINOHead hidden_dim=2048"),
    ("head_bottleneck_dim", 256, "§1a DINOHead bottleneck_dim=256"),
    ("head_nlayers", 3, "§1a DINOHead nlayers=3"),
    ("momentum_teacher", 0.996, "§4 common: momentum_teacher 0.996 -> 1 (cosine)"),
    ("warmup_teacher_temp", 0.04, "§4 common: warmup_teacher_temp 0.04"),
    ("teacher_temp", 0.04, "§4 common: teacher_temp 0.04"),
    ("warmup_teacher_temp_epochs", 0, "§4 common: warmup_teacher_temp_epochs 0"),
    ("student_temp", 0.1, "§4 common: student_temp 0.1"),
    ("center_momentum", 0.9, "§4 common: center_momentum 0.9"),
    ("precision", "fp16", "§4 common: use_fp16 True"),
    ("weight_decay", 0.04, "§4 common: weight_decay 0.04 -> 0.4 cosine"),
    ("weight_decay_end", 0.4, "§4 common: weight_decay 0.04 -> 0.4 cosine"),
    ("clip_grad", 3.0, "§4 common: clip_grad 3.0"),
    ("clip_mode", "param", "§4 common: clip_grad (DINO's per-parameter clip_gradients)"),
    ("batch_size_per_gpu", 64, "§4 common: batch_size_per_gpu 64"),
    ("epochs", 100, "§4 common: epochs 100"),
    ("freeze_last_layer", 1, "§4 common: freeze_last_layer 1"),
    ("lr", 5e-4, "§4 common: lr 5e-4 x (bs_total/256)"),
    ("warmup_epochs", 10, "§4 common: 10 warmup epochs"),
    ("min_lr", 1e-6, "§4 common: cosine to min_lr 1e-6"),
    ("drop_path_rate", 0.1, "§4 common: drop_path_rate 0.1"),
    ("local_crops_number", 8, "§4 common: local_crops_number 8"),
    ("seed", 0, "§4 common: seed 0"),
    ("pos_embed_init", "trunc_normal", "§1a/§1b: trunc_normal std .02 for pos/cls"),
]
STAGE1 = [
    ("arch", "vit256_small", "§1a ViT256-16 = vit_small; §4 stage 1 (ViT256-16)"),
    ("patch_size", 256, "§4 stage 1: ImageFolder of 256² PNG patches"),
    ("global_crop_size", 224, "§4 stage 1: 2x RandomResizedCrop(224, scale (0.4,1))"),
    ("global_crops_scale", (0.4, 1.0), "§4 stage 1: scale (0.4,1)"),
    ("local_crop_size", 96, "§4 stage 1: 8x RandomResizedCrop(96, scale (0.05,0.4))"),
    ("local_crops_scale", (0.05, 0.4), "§4 stage 1: scale (0.05,0.4)"),
    ("normalization", "imagenet", "§4 stage 1: Normalize ImageNet mean/std"),
]
STAGE2 = [
    ("arch", "vit4k_xs", "§1b ViT4K-256 = vit4k_xs; §4 stage 2: must pass vit4k_xs"),
    ("input_embed_dim", 384, "§1b input_embed_dim=384"),
    ("global_crop_size", 14, "§4 stage 2: 2 global = RandomCrop(14)"),
    ("local_crop_size", 6, "§4 stage 2: 8 local = RandomCrop(6)"),
    ("grid_dropout", 0.0, "§4 stage 2: no colour/blur/dropout augmentation in code"),
]
# the schedule: the README table's iterations (§4: "ViT-S/16: 400k iterations, batch 256; ViT-XS/256:
# 200k iterations, batch 256"), over 100 epochs with 10 of warm-up (§4 common)
ITERATIONS = {1: 400_000, 2: 200_000}
GLOBAL_BATCH = 256  # §4 README table: batch 256 (64 per GPU x 4 processes)


def _rows(stage):
    return COMMON + (STAGE1 if stage == 1 else STAGE2)


@pytest.mark.parametrize("stage", [1, 2])
def test_every_paper_setting_is_the_reference(stage):
    config = make_config(stage, "paper")
    wrong = []
    for name, ref, where in _rows(stage):
        got = getattr(config, name)
        got = tuple(got) if isinstance(ref, tuple) else got
        if got != ref:
            wrong.append(f"{name} = {got!r}, the reference {ref!r} ({where})")
    assert not wrong, "paper preset departs from the reference:\n" + "\n".join(wrong)


@pytest.mark.parametrize("stage", [1, 2])
def test_paper_schedule_and_learning_rate(stage):
    config = make_config(stage, "paper")
    assert config.epochs * config.steps_per_epoch == ITERATIONS[stage]
    assert config.warmup_epochs / config.epochs == pytest.approx(0.1)  # §4: 10 of 100 epochs
    # the reference's global batch of 256 (4 processes of 64): the lr is the base lr, unscaled
    assert GLOBAL_BATCH // config.batch_size_per_gpu == 4
    assert scaled_lr(config.lr, GLOBAL_BATCH) == pytest.approx(5e-4)


@pytest.mark.parametrize("stage", [1, 2])
def test_paper_models_have_the_reference_shapes(stage):
    """The built backbone and head: ViT-S/16 (21,665,664 params, §1a) or ViT-XS (2,781,504, §1b), with a
    pos_embed of 14x14+1 (§1a, §1b), and a head without BatchNorm ending in weight_norm(256 -> 65536)."""
    import torch.nn as nn

    config = make_config(stage, "paper")
    backbone = build_backbone(config)
    n = sum(p.numel() for p in backbone.parameters())
    assert n == (21_665_664 if stage == 1 else 2_781_504)
    assert tuple(backbone.pos_embed.shape) == (1, 197, 384 if stage == 1 else 192)
    head = build_head(config, backbone.embed_dim)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in head.modules())
    linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
    assert [m.out_features for m in linears] == [2048, 2048, 256, 65536]


def test_no_cpu_setting_leaks_into_the_paper_preset():
    """The CPU book's stage-2 stabilizers (BatchNorm head, teacher temperature 0.02, sine-cosine position
    embeddings) and its small heads belong to cpu-tiny only."""
    for stage in (1, 2):
        paper = make_config(stage, "paper")
        assert not paper.use_bn_in_head and paper.teacher_temp == paper.warmup_teacher_temp == 0.04
        assert paper.pos_embed_init == "trunc_normal" and paper.out_dim == 65536 and paper.head_hidden_dim == 2048
    cpu2 = make_config(2, "cpu-tiny")  # the CPU departures are still there (they are the book's, listed in the intro)
    assert cpu2.use_bn_in_head and cpu2.teacher_temp == 0.02 and cpu2.pos_embed_init == "sincos"


def test_cpu_cache_keys_are_unchanged(tmp_path, monkeypatch):
    """The CPU cache keys change only when what the models are trained on changes (stage 2: the
    survival cohort's generator version 2, a deliberate change)."""
    from hipt.book.zoo import model_dir

    monkeypatch.setenv("HIPT_CACHE", str(tmp_path / "cache"))
    assert model_dir(make_config(1, "cpu-tiny")).name == "stage1-cpu-47c16c9f76"
    assert model_dir(make_config(2, "cpu-tiny")).name == "stage2-cpu-75724f8e04"  # survival cohort v2


# ------------------------------------------------------------------------------------------ real data only
def _refused(call, stage):
    with pytest.raises(PaperDataError) as info:
        call()
    msg = str(info.value)
    assert isinstance(info.value, HIPTError)
    assert "preset 'paper'" in msg and "phantom" in msg and "data" in msg
    if stage == 1:
        assert "folder of patches" in msg and "hipt patch" in msg and "vit256_small_dino" in msg
    else:
        assert "hipt extract" in msg and "feats256" in msg and "vit4k_xs_dino" in msg
    return msg


@pytest.mark.parametrize("stage", [1, 2])
def test_paper_pretraining_on_phantom_data_stops_before_any_work(stage, tmp_path, monkeypatch):
    import hipt.pretrain.trainer as trainer
    from hipt.book import zoo
    from hipt.book.zoo import pretrained
    from hipt.pretrain import train

    monkeypatch.setenv("HIPT_CACHE", str(tmp_path / "cache"))
    for name in ("build_dataset", "time_step", "build_backbone"):  # any work at all fails the test
        monkeypatch.setattr(trainer, name, lambda *a, **k: pytest.fail("worked before refusing"))
    monkeypatch.setattr(zoo, "cohort", lambda *a, **k: pytest.fail("drew a phantom cohort"))
    out = str(tmp_path / "run")
    _refused(lambda: train(make_config(stage, "paper", out_dir=out, device="cpu", precision="fp32")), stage)
    _refused(lambda: pretrained(stage, "paper"), stage)
    _refused(lambda: zoo.training_plan(stage, "paper"), stage)
    _refused(lambda: (zoo.stage1_model if stage == 1 else zoo.stage2_model)("paper"), stage)
    if stage == 2:
        _refused(lambda: zoo.pretraining_features("paper"), 2)
    else:
        _refused(lambda: zoo.cohort_features("context", "paper"), 1)
    assert not (tmp_path / "run").exists() and not (tmp_path / "cache" / "models").exists()


def test_cli_paper_without_data_is_one_line(capsys, tmp_path):
    from hipt.cli import main

    assert main(["pretrain", "--stage", "2", "--preset", "paper", "--precision", "fp32", "--device", "cpu",
                 "--out-dir", str(tmp_path / "run")]) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "preset 'paper' pretrains stage 2 on real data" in err


def test_paper_with_a_data_folder_is_accepted(tmp_path):
    """A folder passed as data is a real-data run: the check lets it through (nothing is trained here)."""
    from hipt.pretrain.trainer import check_pretraining_data

    check_pretraining_data(make_config(1, "paper", data=str(tmp_path)))
    check_pretraining_data(make_config(2, "paper", data=str(tmp_path)))
    check_pretraining_data(make_config(2, "paper"), dataset=[])  # a dataset given directly
    check_pretraining_data(make_config(1, "cpu-tiny"))  # the CPU book pretrains on phantom data
