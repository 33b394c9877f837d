"""Precision that follows the hardware (hipt.precision), and its use in fine-tuning, pretraining, extraction.

No GPU here: the CUDA answers are checked with the device queries monkeypatched (a T4 is compute
capability 7.5 and, through PyTorch's emulation, still passes ``torch.cuda.is_bf16_supported()``; an
A100 is 8.0, an H100 9.0).  The CPU paths run for real, and must give what they gave before the module
existed: fp32 and ``auto`` (= fp32 on a CPU) bit-identical, the cpu-tiny preset's bf16 unchanged.
"""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
from test_features import make_patched_cohort
from test_pretrain_train import TINY, _images
from test_train import _config, _write_cohort

from hipt import precision as P
from hipt.errors import HIPTError
from hipt.precision import PrecisionError, autocast, describe, grad_scaler, resolve_precision

GPUS = {"t4": ((7, 5), "Tesla T4"), "v100": ((7, 0), "Tesla V100-SXM2-16GB"),
        "a100": ((8, 0), "NVIDIA A100-SXM4-40GB"), "h100": ((9, 0), "NVIDIA H100 80GB HBM3")}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture()
def fake_gpu(monkeypatch):
    """``fake_gpu("t4")``: make torch report a CUDA device of that kind (nothing runs on it)."""

    def install(kind: str) -> None:
        capability, name = GPUS[kind]
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
        monkeypatch.setattr(torch.version, "hip", None)

    return install


# ------------------------------------------------------------------------------------------ resolution
@pytest.mark.parametrize("kind, expected", [("t4", "fp16"), ("v100", "fp16"), ("a100", "bf16"), ("h100", "bf16")])
def test_auto_follows_the_gpu(fake_gpu, kind, expected):
    fake_gpu(kind)
    assert resolve_precision("auto", "cuda") == expected
    assert resolve_precision("auto", torch.device("cuda:0")) == expected
    assert resolve_precision() == "fp32"  # the default device is the CPU


def test_emulated_bf16_does_not_count_as_bf16(fake_gpu):
    """``torch.cuda.is_bf16_supported()`` says True on a T4 (emulation); auto must still pick fp16 there."""
    fake_gpu("t4")
    assert torch.cuda.is_bf16_supported() and not P.native_bf16("cuda")


@pytest.mark.parametrize("kind", ["t4", "h100"])
@pytest.mark.parametrize("requested", ["fp32", "bf16", "fp16"])
def test_explicit_requests_are_honoured_on_a_gpu(fake_gpu, kind, requested):
    fake_gpu(kind)
    assert resolve_precision(requested, "cuda") == requested


def test_cpu_auto_is_fp32_and_explicit_names_are_kept():
    assert resolve_precision("auto", "cpu") == "fp32"
    assert resolve_precision("fp32", "cpu") == "fp32"
    assert resolve_precision("bf16", torch.device("cpu")) == "bf16"  # the cpu-tiny preset's, on purpose


def test_resolution_is_idempotent(fake_gpu):
    fake_gpu("t4")
    for name in P.PRECISIONS:
        once = resolve_precision(name, "cuda")
        assert resolve_precision(once, "cuda") == once


def test_fp16_on_a_cpu_is_a_clear_error():
    with pytest.raises(PrecisionError, match="fp16 needs a CUDA GPU") as e:
        resolve_precision("fp16", "cpu")
    assert isinstance(e.value, ValueError) and isinstance(e.value, HIPTError)  # the CLI prints one line
    assert "\n" not in str(e.value)
    with pytest.raises(PrecisionError):
        autocast("cpu", "fp16")
    with pytest.raises(PrecisionError):
        grad_scaler("cpu", "fp16")


@pytest.mark.parametrize("name", ["float16", "half", "FP16", "amp", ""])
def test_unknown_names_list_the_choices(name):
    with pytest.raises(ValueError, match="auto, bf16, fp16, fp32"):
        resolve_precision(name, "cpu")


# ------------------------------------------------------------------------------------------ autocast, scaler
def test_autocast_contexts_on_a_cpu():
    x = torch.randn(4, 8)
    w = torch.randn(8, 3)
    with autocast("cpu", "fp32"):
        assert (x @ w).dtype == torch.float32
    with autocast("cpu", "auto"):
        assert (x @ w).dtype == torch.float32
    with autocast(torch.device("cpu"), "bf16"):
        assert (x @ w).dtype == torch.bfloat16


@pytest.mark.parametrize("name", ["fp32", "bf16", "auto"])
def test_the_scaler_is_disabled_on_a_cpu(name):
    scaler = grad_scaler("cpu", name)
    assert not scaler.is_enabled()
    loss = torch.tensor(2.5, requires_grad=True)
    assert scaler.scale(loss) is loss  # a pass-through: fp32/bf16 steps are what they were


@pytest.mark.parametrize("kind, name, enabled", [("h100", "bf16", False), ("h100", "auto", False),
                                                 ("h100", "fp32", False), ("h100", "fp16", True),
                                                 ("t4", "auto", True), ("t4", "bf16", False)])
def test_the_scaler_is_enabled_for_fp16_on_cuda_only(fake_gpu, kind, name, enabled):
    fake_gpu(kind)
    assert grad_scaler("cuda", name).is_enabled() is enabled  # constructing it touches no GPU memory


def test_describe_says_what_and_why(fake_gpu):
    assert describe("fp32", "cpu") == "precision: fp32 (on cpu)"
    assert describe("auto", "cpu") == "precision: fp32 (auto on a CPU)"
    assert describe("bf16", "cpu") == "precision: bf16 (on cpu)"
    fake_gpu("t4")
    assert describe("auto", "cuda") == "precision: fp16 with gradient scaling (auto: Tesla T4 has no native bf16)"
    assert describe("auto", "cuda", training=False) == "precision: fp16 (auto: Tesla T4 has no native bf16)"
    assert "emulated" in describe("bf16", "cuda") and "Tesla T4" in describe("bf16", "cuda")
    fake_gpu("h100")
    assert describe("auto", "cuda") == "precision: bf16 (auto: NVIDIA H100 80GB HBM3 has native bf16)"
    assert describe("fp16", "cuda") == "precision: fp16 with gradient scaling (as requested, on NVIDIA H100 80GB HBM3)"


# ------------------------------------------------------------------------------------------ fine-tuning
@pytest.fixture(scope="module")
def bags(tmp_path_factory):
    return _write_cohort(tmp_path_factory.mktemp("bags"))


def test_finetuning_fp32_and_auto_on_a_cpu_are_bit_identical(bags, tmp_path):
    """The default (fp32), an explicit fp32 and auto (= fp32 on a CPU) train exactly the same fold."""
    runs = {name: train_fold_(bags, tmp_path / name, precision=name) for name in ("default", "fp32", "auto")}
    for name in ("fp32", "auto"):
        assert runs[name].history["loss"].tolist() == runs["default"].history["loss"].tolist()
        pd.testing.assert_frame_equal(runs[name].predictions, runs["default"].predictions)
    assert all(math.isfinite(v) for v in runs["auto"].history["loss"])


def train_fold_(bags, out, precision: str):
    from hipt.tasks.train import train_fold

    kw = {} if precision == "default" else {"precision": precision}
    return train_fold(_config(bags, out, method="abmil", max_epochs=2, **kw), 0, write=False)


def test_finetuning_bf16_on_a_cpu_still_trains(bags, tmp_path):
    res = train_fold_(bags, tmp_path, precision="bf16")
    assert all(math.isfinite(v) for v in res.history["loss"])


def test_finetuning_fp16_on_a_cpu_fails_before_training(bags, tmp_path):
    from hipt.tasks.train import train_fold

    with pytest.raises(PrecisionError, match="fp16 needs a CUDA GPU"):
        train_fold(_config(bags, tmp_path, precision="fp16"), 0, write=False)


def test_run_cv_prints_the_precision_once(bags, tmp_path, capsys):
    from hipt.tasks.train import run_cv

    cfg = _config(bags, tmp_path, precision="auto", max_epochs=1, verbose=True)
    run_cv(cfg)
    out = capsys.readouterr().out
    assert out.count("precision: fp32 (auto on a CPU)") == 1 and out.count("fold 1") == 1
    run_cv(cfg)  # every fold resumed from its results: nothing trains, nothing to say
    assert "precision" not in capsys.readouterr().out


def test_finetune_cli_accepts_auto_and_fp16():
    import argparse

    from hipt.tasks.train import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    base = ["--features", "f", "--task", "t"]
    for name in ("auto", "fp16", "bf16", "fp32"):
        assert parser.parse_args(base + ["--precision", name]).precision == name
    assert parser.parse_args(base).precision == "fp32"  # the reference's, and the CPU book's


# ------------------------------------------------------------------------------------------ pretraining
def test_pretraining_with_the_cpu_tiny_precision_runs_and_auto_is_fp32(tmp_path, capsys):
    from hipt.pretrain import make_config, train
    from hipt.pretrain.data import ArrayPatches

    preset = make_config(1, "cpu-tiny").precision
    assert preset == "bf16"  # the book's CPU chapters were measured with it: unchanged
    tiny = TINY | {"epochs": 1, "steps_per_epoch": 2}
    runs = {}
    for name in (preset, "fp32", "auto"):
        result = train(make_config(1, out_dir=str(tmp_path / name), **(tiny | {"precision": name})),
                       ArrayPatches(_images()))
        runs[name] = [r["loss"] for r in result.log]
        assert len(runs[name]) == 2 and all(math.isfinite(v) for v in runs[name])
    assert runs["auto"] == runs["fp32"] != runs["bf16"]
    ckpt = torch.load(tmp_path / "fp32" / "checkpoint.pth", weights_only=False)
    assert "fp16_scaler" not in ckpt  # the checkpoint format of a run without a scaler is unchanged

    train(make_config(1, out_dir=str(tmp_path / "shown"), **(tiny | {"precision": "auto", "progress": True,
                                                                      "max_steps": 1})), ArrayPatches(_images()))
    assert "precision: fp32 (auto on a CPU)" in capsys.readouterr().out


def test_pretraining_fp16_on_a_cpu_fails_before_drawing_data(tmp_path):
    from hipt.pretrain import make_config, train

    with pytest.raises(PrecisionError, match="fp16 needs a CUDA GPU"):
        train(make_config(1, "paper", out_dir=str(tmp_path), device="cpu", progress=False))


# ------------------------------------------------------------------------------------------ extraction
def test_extraction_auto_on_a_cpu_is_fp32_and_printed(tmp_path):
    from hipt.features import extract_folder, extract_slide, load_features
    from hipt.models import HIPT4K, vit4k_tiny, vit256_tiny

    slides, patch = make_patched_cohort(tmp_path / "cohort", n=1)
    torch.manual_seed(0)
    enc = HIPT4K(vit256_tiny(), vit4k_tiny(), patch_batch=3).eval()
    coords = patch / "coords" / "ph0.h5"
    extract_slide(None, coords, tmp_path / "fp32.h5", enc, dtype="fp32", progress=False)
    lines: list[str] = []
    extract_folder(patch, tmp_path / "auto", enc, dtype="auto", progress=True, log=lines.append)
    assert lines == ["precision: fp32 (auto on a CPU)"]
    a, b = load_features(tmp_path / "fp32.h5"), load_features(tmp_path / "auto" / "ph0.h5")
    assert b["attrs"]["dtype"] == "fp32"  # the file records what ran, not what was asked
    assert torch.equal(a["feats256"], b["feats256"]) and torch.equal(a["feats4k"], b["feats4k"])
    with pytest.raises(PrecisionError, match="fp16 needs a CUDA GPU"):  # once, not a failure per slide
        extract_folder(patch, tmp_path / "fp16", enc, dtype="fp16", progress=False)
    assert not (tmp_path / "fp16" / "ph0.h5").exists()
