"""The ``gpu`` preset: the CPU book's experiment at HIPT's geometry, sized for one Colab session.

What it keeps from the paper and what it shortens are checked against the ``paper`` preset (itself
checked against the reference in ``test_paper_preset.py``); without a CUDA GPU every chapter that would
encode or train stops at its first code cell with :class:`hipt.book.zoo.GPUNeededError`, whose message says
how to get one.  The GPU run itself is ``benchmarks/gpu_chapters.py`` (a lent device, never CI).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from hipt.book import zoo
from hipt.book.zoo import model_dir
from hipt.errors import HIPTError
from hipt.pretrain import make_config
from hipt.pretrain.trainer import check_pretraining_data, run_steps

BOOK = Path(__file__).resolve().parents[1] / "book"

#: settings the gpu preset takes unchanged from the paper preset, per stage
ARCHITECTURE = ["arch", "patch_size", "global_crop_size", "local_crop_size", "local_crops_number",
                "global_crops_scale", "local_crops_scale", "normalization", "out_dim", "head_hidden_dim",
                "head_bottleneck_dim", "head_nlayers", "norm_last_layer", "batch_size_per_gpu", "lr", "min_lr",
                "weight_decay", "weight_decay_end", "momentum_teacher", "student_temp", "clip_grad", "input_embed_dim"]
#: stage 2 on phantom regions takes the CPU preset's three changes against collapse
STAGE2_FROM_CPU = ["use_bn_in_head", "warmup_teacher_temp", "teacher_temp", "pos_embed_init"]


@pytest.mark.parametrize("stage", [1, 2])
def test_gpu_pretraining_keeps_the_papers_networks_and_crops(stage):
    gpu, paper = make_config(stage, "gpu"), make_config(stage, "paper")
    same = {f: (getattr(gpu, f), getattr(paper, f)) for f in ARCHITECTURE}
    assert {f: v for f, v in same.items() if v[0] != v[1]} == {}
    if stage == 1:
        assert gpu.use_bn_in_head is False and gpu.teacher_temp == 0.04
    else:
        cpu = make_config(2, "cpu-tiny")
        assert {f: getattr(gpu, f) for f in STAGE2_FROM_CPU} == {f: getattr(cpu, f) for f in STAGE2_FROM_CPU}
    assert gpu.precision == "auto"  # bf16 where the GPU has it, fp16 with a scaler on a T4


def test_gpu_pretraining_schedule_is_bounded():
    s1 = make_config(1, "gpu")
    assert run_steps(s1) == 500  # 5 epochs of 6,400 phantom patches at batch 64
    assert run_steps(make_config(1, "paper"), world=1) == 400_000
    p = zoo.get_preset("gpu")
    n_regions = p.stage2_cohort[1] * p.regions_per_slide
    assert run_steps(make_config(2, "gpu"), n_regions) == 200


def test_gpu_pretraining_accepts_phantom_data_and_caches_apart():
    check_pretraining_data(make_config(1, "gpu"))  # no PaperDataError: a teaching run on phantom patches
    check_pretraining_data(make_config(2, "gpu"))
    names = {preset: model_dir(make_config(1, preset)).name for preset in ("cpu-tiny", "gpu")}
    assert names["cpu-tiny"].startswith("stage1-cpu-") and names["gpu"].startswith("stage1-gpu-")
    # the CPU book's cache keys are what they were before the gpu preset existed (its models are reused)
    assert names["cpu-tiny"] == "stage1-cpu-47c16c9f76"
    assert model_dir(make_config(2, "cpu-tiny")).name == "stage2-cpu-75724f8e04"


def test_gpu_pipeline_preset_is_the_cpu_cohorts_at_hipt_geometry():
    cpu, gpu, paper = (zoo.get_preset(n) for n in ("cpu", "gpu", "paper"))
    assert (gpu.region_size, gpu.patch_size) == (paper.region_size, paper.patch_size) == (4096, 256)
    assert (gpu.n_slides, gpu.regions_per_slide, gpu.cohort_sizes) == (cpu.n_slides, cpu.regions_per_slide,
                                                                       cpu.cohort_sizes)
    assert gpu.pretrain_preset == "gpu" and gpu.extract_dtype == "auto"


def test_chapter_run_without_cuda_stops_at_once(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(zoo.GPUNeededError, match="Runtime > Change runtime type.*preset 'cpu'"):
        zoo.chapter_run("gpu")
    run = zoo.chapter_run("gpu", needs_gpu=False)  # patching: no GPU needed
    assert run.full_size and run.phantom and run.device == "cpu"
    cpu = zoo.chapter_run("cpu")
    assert (cpu.device, cpu.full_size, cpu.phantom, cpu.progress, cpu.pretrain_preset) == ("cpu", False, True, False,
                                                                                         "cpu")
    paper = zoo.chapter_run("paper")
    assert (paper.full_size, paper.phantom, paper.pretrain_preset) == (True, False, "paper")
    with pytest.raises(HIPTError, match="unknown preset 'colab'"):
        zoo.chapter_run("colab")


def test_chapter_run_with_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    run = zoo.chapter_run("gpu")
    assert run.device == "cuda:0" and run.progress and run.pretrain_preset == "gpu"


CHAPTERS = sorted(BOOK.glob("0[1-9]_*.md"))


@pytest.mark.parametrize("page", CHAPTERS, ids=lambda p: p.stem)
def test_every_chapter_takes_the_gpu_preset(page):
    """Each chapter resolves ``preset`` through :func:`hipt.book.zoo.chapter_run` in its first code cells (so
    preset gpu without a GPU stops before any work), and its parameter cell says what gpu does."""
    text = page.read_text()
    params = text.split(":tags: [parameters]", 1)[1].split("```", 1)[0]
    assert re.search(r'"gpu"', params), f"{page.name}: the parameter cell does not describe preset gpu"
    code = text.split(":tags: [parameters]", 1)[1].split("```{code-cell}", 2)
    first_code = code[1] if len(code) > 1 else ""
    assert "zoo.chapter_run(preset" in first_code, f"{page.name}: preset is not resolved by zoo.chapter_run first"


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is here: preset gpu would run, not stop")
@pytest.mark.parametrize("page", [p for p in CHAPTERS if not p.name.startswith("01")], ids=lambda p: p.stem)
def test_gpu_preset_without_a_gpu_stops_before_any_work(page, tmp_path):
    """papermill-executed with ``preset="gpu"`` on this CPU machine, a chapter stops with one message at
    its first code cell (chapter 1 patches on the CPU with every preset, and is left out)."""
    import time

    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    notebook = BOOK / "notebooks" / f"{page.stem}.ipynb"
    t0 = time.perf_counter()
    with pytest.raises(PapermillExecutionError) as err:
        pm.execute_notebook(str(notebook), str(tmp_path / "out.ipynb"), parameters={"preset": "gpu"},
                            cwd=str(BOOK), progress_bar=False, kernel_name="python3", execution_timeout=120)
    assert err.value.ename == "GPUNeededError", f"{page.name}: {err.value.ename}: {err.value.evalue}"
    assert "preset 'cpu'" in err.value.evalue
    assert time.perf_counter() - t0 < 90  # imports and one cell, not a cohort or a DINO run
