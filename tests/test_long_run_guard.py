"""No silent multi-hour DINO run: estimates before training, the ``max_minutes`` guard, ``max_steps``.

The paper-size checks never run a step of the paper models: the step timing is monkeypatched (or given),
so only the schedule arithmetic and the guard are exercised.  The tiny runs take seconds.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

import hipt.pretrain.trainer as trainer
from hipt.errors import HIPTError
from hipt.pretrain import make_config, train
from hipt.pretrain.data import ArrayPatches
from hipt.pretrain.trainer import LongRunError, RunEstimate, check_run_budget, estimate_run

TINY = dict(
    arch="vit256_tiny", embed_dim=32, depth=2, num_heads=2, out_dim=64, head_hidden_dim=32, head_bottleneck_dim=16,
    global_crop_size=32, local_crop_size=16, local_crops_number=2, batch_size_per_gpu=4, epochs=3,
    steps_per_epoch=2, warmup_epochs=1, progress=False, checkpoint_every=100, num_workers=0, precision="fp32",
)


def _images(n=12, size=48, seed=0):
    return np.random.default_rng(seed).integers(0, 255, (n, size, size, 3), dtype=np.uint8)


@pytest.fixture()
def fake_timing(monkeypatch):
    """``time_step`` replaced: 0.3 s per step, and a record of the configs it was asked about."""
    asked = []

    def fake(config, device="cpu", dataset=None, **kwargs):
        asked.append(config)
        return 0.3, "monkeypatched", ""

    monkeypatch.setattr(trainer, "time_step", fake)
    return asked


def test_paper_run_is_refused_without_a_cap_or_allow_long_run(fake_timing):
    est = estimate_run(make_config(1, "paper"), device="cpu")
    assert (est.steps, est.total_steps) == (400_000, 400_000) and len(fake_timing) == 1
    assert est.minutes == pytest.approx(400_000 * 0.3 / 60)
    with pytest.raises(LongRunError) as info:
        check_run_budget([est], max_minutes=60)
    msg = str(info.value)
    assert isinstance(info.value, HIPTError)
    assert "400,000 steps" in msg and "~2,000 min (33 h)" in msg and "cpu" in msg
    assert "max_steps" in msg and "allow_long_run = True" in msg
    assert "about 12,000 steps" in msg  # what fits in 60 min at 0.3 s per step
    check_run_budget([est], max_minutes=60, allow_long_run=True)  # allowed: no error
    check_run_budget([est], max_minutes=None)  # no limit


def test_max_steps_brings_a_paper_run_under_the_limit(fake_timing):
    est = estimate_run(make_config(1, "paper", max_steps=10_000), device="cpu")
    assert (est.steps, est.total_steps) == (10_000, 400_000)
    assert "of the 400,000 of the full schedule" in str(est)
    check_run_budget([est], max_minutes=60)  # 50 min: passes


def test_stage2_plan_counts_the_uncached_stage1_run(fake_timing, tmp_path, monkeypatch):
    from hipt.book import zoo

    monkeypatch.setenv("HIPT_CACHE", str(tmp_path / "cache"))
    plan = zoo.training_plan(2, "cpu", max_steps=100)
    assert [e.steps for e in plan] == [192, 100]
    assert plan[0].label.startswith("stage 1 (cpu") and plan[1].label == "stage 2 (cpu)"
    with pytest.raises(LongRunError, match=r"max_steps caps stage 2 \(cpu\) only"):
        check_run_budget(plan, max_minutes=0.5)


def test_estimate_with_a_given_step_time_times_nothing(monkeypatch):
    monkeypatch.setattr(trainer, "time_step", lambda *a, **k: pytest.fail("timed a step"))
    est = estimate_run(make_config(2, "paper"), device="cpu", seconds_per_step=0.1)
    assert est.steps == 200_000 and est.minutes == pytest.approx(200_000 * 0.1 / 60)


def test_train_refuses_before_any_step(tmp_path, monkeypatch):
    monkeypatch.setattr(trainer, "time_step", lambda *a, **k: (100.0, "monkeypatched", ""))
    cfg = make_config(1, out_dir=str(tmp_path / "run"), **TINY)
    with pytest.raises(LongRunError, match="more than max_minutes = 1"):
        train(cfg, ArrayPatches(_images()), max_minutes=1)  # 6 steps × 100 s = 10 min
    assert not (tmp_path / "run" / "checkpoint.pth").exists()


def test_cli_max_minutes_refuses(tmp_path, monkeypatch, capsys):
    from PIL import Image

    from hipt.cli import main

    monkeypatch.setattr(trainer, "time_step", lambda *a, **k: (100.0, "monkeypatched", ""))
    for i, im in enumerate(_images(8)):
        Image.fromarray(im).save(tmp_path / f"{i}.png")
    args = ["pretrain", "--data", str(tmp_path), "--out-dir", str(tmp_path / "run"), "--embed-dim", "32",
            "--depth", "1", "--num-heads", "2", "--out-dim", "64", "--head-hidden-dim", "32",
            "--head-bottleneck-dim", "16", "--global-crop-size", "32", "--local-crop-size", "16",
            "--local-crops-number", "2", "--batch-size-per-gpu", "4", "--epochs", "1", "--no-progress",
            "--max-minutes", "1"]
    assert main(args) != 0
    assert "refusing to start DINO pretraining" in capsys.readouterr().err
    assert not (tmp_path / "run" / "checkpoint.pth").exists()


def test_max_steps_stops_at_that_step_with_the_full_schedules(tmp_path):
    torch.set_num_threads(1)
    data = _images()
    capped = train(make_config(1, out_dir=str(tmp_path / "capped"), **(TINY | {"max_steps": 2})), ArrayPatches(data))
    assert [r["step"] for r in capped.log] == [1, 2]
    assert torch.load(capped.checkpoint, weights_only=False)["step"] == 2
    full = train(make_config(1, out_dir=str(tmp_path / "full"), **TINY), ArrayPatches(data))
    assert len(capped.schedules["lr"]) == len(full.schedules["lr"]) == 6  # not compressed
    assert [r["loss"] for r in capped.log] == [r["loss"] for r in full.log[:2]]  # the start of the full run
    assert [r["lr"] for r in capped.log] == [r["lr"] for r in full.log[:2]]


def test_the_estimate_changes_no_number_of_the_run(tmp_path, capsys):
    """progress on: the run is estimated (a few timed steps of fresh models) and prints it; the losses are
    those of the same run without the estimate, and the global RNG states are left as they were."""
    torch.set_num_threads(1)
    data = _images()
    quiet = train(make_config(1, out_dir=str(tmp_path / "a"), **TINY), ArrayPatches(data))
    shown = train(make_config(1, out_dir=str(tmp_path / "b"), **(TINY | {"progress": True})), ArrayPatches(data))
    assert "DINO stage 1 (cpu): about 6 steps, ~" in capsys.readouterr().out
    assert [r["loss"] for r in shown.log] == [r["loss"] for r in quiet.log]

    torch.manual_seed(5), np.random.seed(5), random.seed(5)
    seconds, how, warning = trainer.time_step(make_config(1, **TINY), "cpu")
    assert seconds > 0 and "timed" in how and warning == ""
    after = (torch.rand(1).item(), np.random.rand(), random.random())
    torch.manual_seed(5), np.random.seed(5), random.seed(5)
    assert after == (torch.rand(1).item(), np.random.rand(), random.random())


def test_cpu_defaults_are_unchanged(tmp_path, monkeypatch):
    """The book's CPU runs: same configurations and cache keys as before the guard; no estimate is made
    when a run has progress off and no max_minutes (the book's CPU chapters)."""
    from hipt.book.zoo import model_dir
    from hipt.pretrain.trainer import config_hash

    monkeypatch.setenv("HIPT_CACHE", str(tmp_path / "cache"))
    assert make_config(1, "cpu-tiny", max_steps=None) == make_config(1, "cpu-tiny")
    assert model_dir(make_config(1, "cpu-tiny")).name == "stage1-cpu-47c16c9f76"
    assert model_dir(make_config(2, "cpu-tiny")).name == "stage2-cpu-75724f8e04"  # survival cohort v2
    assert config_hash(make_config(1, "paper")) == "a9090ecdfe"
    monkeypatch.setattr(trainer, "time_step", lambda *a, **k: pytest.fail("estimated a progress-off run"))
    result = train(make_config(1, out_dir=str(tmp_path / "run"), **(TINY | {"max_steps": 1})), ArrayPatches(_images()))
    assert [r["step"] for r in result.log] == [1]


def test_estimate_text():
    e = RunEstimate("stage 1 (paper)", 400_000, 400_000, 0.3, "cuda:0 (GPU)", "timed 2 step(s)")
    assert e.short() == "stage 1 (paper): about 400,000 steps, ~2,000 min (33 h) on cuda:0 (GPU)"
    assert str(e).endswith("(timed 2 step(s))") and e.steps_within(60) == 12_000
    assert trainer.format_minutes(0.5) == "30 s" and trainer.format_minutes(12.34) == "12 min"
