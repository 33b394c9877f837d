"""Two-stage DINO pretraining (``hipt pretrain``): ViT256-16 on patches, then ViT4096-256 on feature grids.

One entry point serves both stages: :func:`train` takes a flat :class:`PretrainConfig` (its fields are
the book chapters' papermill parameters and the CLI's options), built from a preset
(:data:`PRESETS`: ``cpu-tiny`` for a CPU, ``gpu`` for the paper's networks on a schedule that fits a
Colab session, ``paper`` for the reference hyper-parameters).

Runs on one CPU or GPU without any process group, or on several GPUs / nodes with
``torchrun --nproc_per_node N -m hipt.cli pretrain ...`` (DDP; the global batch is
``batch_size_per_gpu × N``).  A checkpoint in the released DINO format (``student``, ``teacher``,
``optimizer``, ``epoch``, ``args``, ``dino_loss``, plus the RNG states, the step and the log) is written
atomically every ``checkpoint_every`` steps; rerunning the same command resumes exactly (the loss
sequence after a resume equals an uninterrupted run's).

Before the first step, the CLI (and :func:`train` with ``progress`` on) times a few steps of fresh
models and prints ``about N steps, ~X min on <device>`` (:func:`estimate_run`); ``--max-minutes``
refuses a longer run before it starts, and ``--max-steps`` stops a run after that many steps of its
full schedule (a capped run is the start of the full one).

Tuning advice (DINO's, and ours on the phantom data)
----------------------------------------------------
- **Loss stuck at ln(out_dim)** (printed at start): the output collapsed to uniform.  Lower the teacher
  temperature (``--teacher-temp 0.04``), keep ``--norm-last-layer`` on, check the LR is not too high
  and that the data are not constant (e.g. all background).
- **Loss drops to ~0 fast**: collapse to one prototype (the teacher is one-hot and the student copies
  it).  Raise the teacher temperature a little (0.04 → 0.05-0.07, with ``--warmup-teacher-temp-epochs``)
  and keep the centring responsive (``--center-momentum`` 0.9 or lower, not higher).
- **Batch size and LR**: the LR is scaled by ``global_batch / 256``; when changing the number of GPUs,
  keep ``--lr`` (the base LR) and the rule does the rest.  Small batches (< 64) train but need more
  steps; a longer ``--warmup-epochs`` helps when the loss spikes early.
- **Teacher momentum**: 0.996 for long runs; for short runs (a few thousand steps) 0.99-0.995 lets the
  teacher improve faster.
- **Epochs vs iterations**: the paper trained ≈ 1 pass over its data (400k iterations of batch 256 for
  stage 1, 200k for stage 2, 40k warm-up).  Here an "epoch" is ``steps_per_epoch`` iterations (default:
  one pass over the data), so ``--epochs 100 --steps-per-epoch 4000 --warmup-epochs 10`` reproduces the
  paper's schedule whatever the data size.
- **Out of memory**: lower ``--batch-size-per-gpu`` (and maybe ``--local-crops-number``), use
  ``--precision auto`` (bf16 where the GPU has it, fp16 with a gradient scaler on older GPUs such as
  the T4).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import random
import sys
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn

from hipt.errors import HIPTError
from hipt.io import atomic_path, atomic_write_text
from hipt.precision import autocast, describe, grad_scaler, resolve_precision
from hipt.pretrain.augment import GridMultiCrop, PatchMultiCrop
from hipt.pretrain.data import (
    ArrayPatches,
    FeatureGrids,
    ImageFolderPatches,
    SlidePatches,
    StreamSampler,
    collate_crops,
)
from hipt.pretrain.head import DINOHead, MultiCropWrapper
from hipt.pretrain.loss import DINOLoss, uniform_loss
from hipt.pretrain.schedules import dino_schedules, scaled_lr

CHECKPOINT_NAME = "checkpoint.pth"
LOG_NAME = "log.jsonl"


# ------------------------------------------------------------------------------------------------
# configuration
# ------------------------------------------------------------------------------------------------


@dataclass
class PretrainConfig:
    """Every setting of a DINO run (flat: the fields are the chapters' papermill parameters).

    Data (``data``): ``"phantom"`` (stage 1: ``n_phantom`` in-memory phantom patches of
    ``patch_size`` px; stage 2: pass the grids to :func:`train` as ``dataset``), a folder of images, a
    ``hipt patch`` output folder (stage 1: ``patch_size``-px patches read from the slides inside its
    regions; ``slides`` = the slides' folder if they moved since patching), or a folder of
    ``hipt extract`` HDF5 files (stage 2, their ``feats256``).
    """

    stage: int = 1
    preset: str = "cpu-tiny"
    # -- data
    data: str = "phantom"
    slides: str | None = None
    n_phantom: int = 1536
    phantom_seed: int = 1000
    patch_size: int = 128
    # -- backbone
    arch: str = "vit256_tiny"
    input_embed_dim: int = 192
    embed_dim: int | None = None
    depth: int | None = None
    num_heads: int | None = None
    drop_path_rate: float = 0.1
    init_weights: str | None = None
    pos_embed_init: str = "trunc_normal"
    # -- head
    out_dim: int = 4096
    head_hidden_dim: int = 2048
    head_bottleneck_dim: int = 256
    head_nlayers: int = 3
    norm_last_layer: bool = True
    use_bn_in_head: bool = False
    # -- crops
    global_crop_size: int = 96
    local_crop_size: int = 48
    local_crops_number: int = 8
    global_crops_scale: tuple[float, float] = (0.4, 1.0)
    local_crops_scale: tuple[float, float] = (0.05, 0.4)
    normalization: str = "hipt"
    grid_dropout: float = 0.0
    # -- optimization
    batch_size_per_gpu: int = 32
    epochs: int = 3
    steps_per_epoch: int | None = None
    lr: float = 5e-4
    min_lr: float = 1e-6
    warmup_epochs: int = 1
    weight_decay: float = 0.04
    weight_decay_end: float = 0.4
    momentum_teacher: float = 0.99
    warmup_teacher_temp: float = 0.04
    teacher_temp: float = 0.04
    warmup_teacher_temp_epochs: int = 0
    student_temp: float = 0.1
    center_momentum: float = 0.9
    clip_grad: float = 3.0
    clip_mode: str = "param"
    freeze_last_layer: int = 1
    precision: str = "fp32"
    # -- run
    out_dir: str = "data/runs/pretrain_stage1"
    checkpoint_every: int = 100
    log_every: int = 1
    seed: int = 0
    num_workers: int = 0
    device: str = "auto"
    resume: bool = True
    max_steps: int | None = None
    progress: bool = True

    def replace(self, **changes: Any) -> PretrainConfig:
        """A copy with some fields changed (unknown names are an error)."""
        return dataclasses.replace(self, **changes)

    @property
    def ncrops(self) -> int:
        return 2 + self.local_crops_number


#: The reference's DINO settings shared by both stages of the ``paper`` preset (main_dino / main_dino4k):
#: head, temperatures, schedules, optimizer, precision.
_PAPER_DINO: dict[str, Any] = dict(
    out_dim=65536, head_hidden_dim=2048, head_bottleneck_dim=256, head_nlayers=3, norm_last_layer=True,
    use_bn_in_head=False, pos_embed_init="trunc_normal", drop_path_rate=0.1,
    batch_size_per_gpu=64, epochs=100, warmup_epochs=10, lr=5e-4, min_lr=1e-6,
    weight_decay=0.04, weight_decay_end=0.4, momentum_teacher=0.996, warmup_teacher_temp=0.04,
    teacher_temp=0.04, warmup_teacher_temp_epochs=0, student_temp=0.1, center_momentum=0.9,
    clip_grad=3.0, clip_mode="param", freeze_last_layer=1, precision="fp16", seed=0,
    checkpoint_every=2000, log_every=10,
)

#: Presets: the CPU book's tiny runs and the reference hyper-parameters (§4 of the reference notes).
PRESETS: dict[str, dict[int, dict[str, Any]]] = {
    "cpu-tiny": {
        # 4 epochs × 48 steps of 32 patches in bf16, with a head of 512 hidden units for the 192-d
        # tiny ViT (the paper's 2048 serve a 384-d ViT-S): ~2 min on 2 CPU cores.  bf16 autocast is
        # faster than fp32 on CPUs with bf16 support, and a smaller head costs less per step for a
        # similar KNN gain over random init, so more steps fit in the chapter's budget.  These settings
        # were chosen on the colour-jittered KNN test of seeds 101-103 (benchmarks/bench_dino_knn.py);
        # chapter 3 tests them on other seeds (hipt.pretrain.evaluate.EVAL_SEED).
        1: dict(
            arch="vit256_tiny", data="phantom", n_phantom=1536, patch_size=128, global_crop_size=96,
            local_crop_size=48, out_dim=4096, head_hidden_dim=512, batch_size_per_gpu=32, epochs=4, warmup_epochs=1,
            momentum_teacher=0.99, normalization="hipt", drop_path_rate=0.1, checkpoint_every=100,
            precision="bf16",
            out_dir="data/runs/pretrain_stage1",
        ),
        # Every phantom region holds the same tissue mixture, so at initialization all views give
        # nearly the same teacher output and centring leaves a uniform target: the paper's head (no
        # BatchNorm, teacher temperature 0.04) collapses.  DINO's BatchNorm head and a sharper teacher
        # keep it training; 2-D sine-cosine position embeddings give a short run a position signal
        # that tells neighbouring cells apart.  Measurements: book/appendix_phantom_design.md.
        2: dict(
            arch="vit4k_tiny", input_embed_dim=192, data="phantom", global_crop_size=7, local_crop_size=3,
            out_dim=4096, batch_size_per_gpu=32, epochs=30, warmup_epochs=3, momentum_teacher=0.99,
            drop_path_rate=0.1, use_bn_in_head=True, warmup_teacher_temp=0.02, teacher_temp=0.02,
            pos_embed_init="sincos",
            checkpoint_every=200, out_dir="data/runs/pretrain_stage2",
        ),
    },
    "paper": {
        # Every setting of the reference's main_dino.py / main_dino4k.py (HIPT-REFERENCE.md §4), spelled
        # out rather than left to the dataclass defaults: a DINO head without BatchNorm, 65,536
        # prototypes, teacher temperature 0.04 without warm-up, teacher momentum 0.996 -> 1, lr 5e-4 per
        # 256 images with 10 warm-up epochs, weight decay 0.04 -> 0.4, 2 global + 8 local crops, fp16
        # with a gradient scaler, trunc-normal position embeddings.  The schedule is the README table's
        # (400k iterations for stage 1, 200k for stage 2): 100 "epochs" of a fixed number of steps.
        # Batch 64 per GPU: the paper's 256 in total needs 4 processes (torchrun); with fewer the
        # global batch is smaller and the lr scales down with it (scaled_lr).  Data: real patches
        # (stage 1) or hipt extract features (stage 2) only; phantom data are refused
        # (check_pretraining_data).  On a CPU pass precision="bf16" or "fp32".
        1: dict(
            arch="vit256_small", patch_size=256, global_crop_size=224, local_crop_size=96, local_crops_number=8,
            global_crops_scale=(0.4, 1.0), local_crops_scale=(0.05, 0.4), normalization="imagenet",
            steps_per_epoch=4000, num_workers=10, out_dir="data/runs/pretrain_stage1_paper",
            **_PAPER_DINO,
        ),
        2: dict(
            arch="vit4k_xs", input_embed_dim=384, patch_size=256, global_crop_size=14, local_crop_size=6,
            local_crops_number=8, grid_dropout=0.0,
            steps_per_epoch=2000, num_workers=4, out_dir="data/runs/pretrain_stage2_paper",
            **_PAPER_DINO,
        ),
    },
}


#: The ``gpu`` preset, built on the ``paper`` one: the paper's networks, crops and geometry on a schedule
#: that fits a Colab session.
PRESETS["gpu"] = {
    # Stage 1: the reference's ViT-S/16, 224/96-px crops of 256-px patches, head and temperatures, cut
    # from 400,000 steps to 500 (5 epochs of 6,400 phantom patches, or of your data, at batch 64; one
    # warm-up epoch): about 2.5 min at the 218 images/s measured on an H200 (gpu_dino_stage1.json), a
    # slower GPU in proportion, within one Colab session.  Precision follows
    # the GPU (hipt.precision: bf16 on Ampere or newer, fp16 with a gradient scaler on a T4).  Phantom
    # patches are allowed (this preset is a teaching run, not the paper's model); pass data for real ones.
    1: {**PRESETS["paper"][1], **dict(
        data="phantom", n_phantom=6400, steps_per_epoch=None, epochs=5, warmup_epochs=1,
        precision="auto", num_workers=2, checkpoint_every=100, out_dir="data/runs/pretrain_stage1_gpu",
    )},
    # Stage 2: the reference's ViT-XS on 14/6-cell crops of 16x16 grids of 384-d tokens, for 50 epochs of
    # the pretraining regions (200 steps on the book's 64-slide phantom cohort).  On phantom regions it
    # takes the three settings with which the CPU preset's stage 2 trains instead of collapsing (every
    # phantom region holds the same tissue mixture): a BatchNorm head, teacher temperature 0.02, sine-cosine
    # position embeddings (book/appendix_phantom_design.md).  For real features pass data, and the
    # reference head with use_bn_in_head=False, teacher_temp=0.04, pos_embed_init="trunc_normal".
    2: {**PRESETS["paper"][2], **dict(
        data="phantom", steps_per_epoch=None, epochs=50, warmup_epochs=5, precision="auto", num_workers=2,
        use_bn_in_head=True, warmup_teacher_temp=0.02, teacher_temp=0.02, pos_embed_init="sincos",
        checkpoint_every=100, out_dir="data/runs/pretrain_stage2_gpu",
    )},
}


class PaperDataError(HIPTError):
    """A ``paper``-preset DINO run asked for phantom data (it pretrains on real data only)."""


def paper_data_message(stage: int) -> str:
    """What a ``paper``-preset run on phantom data is told: which folder to pass, and how to get it."""
    if stage == 1:
        what = ("pass data (hipt pretrain --data) a folder of patches: 256-px images, or the output folder of "
                "hipt patch SLIDES --out PATCH_DIR (4096-px regions of 256-px patches at 0.5 µm/px, read from "
                "your slides; the reference used TCGA slides, and released no patches)")
        released = 'vit256_small_dino (hipt.models.vit256_small(weights="vit256_small_dino"))'
    else:
        what = ("pass data (hipt pretrain --data) a folder of hipt extract features: the feats256 of your "
                "stage-1 model on 4096-px regions (hipt patch SLIDES --out PATCH_DIR, then hipt extract "
                "--coords PATCH_DIR --vit256 STAGE1_CHECKPOINT --vit4k none --out FEATURES_DIR; the reference "
                "used 433,779 TCGA regions, not released)")
        released = 'vit4k_xs_dino (hipt.models.vit4k_xs(weights="vit4k_xs_dino"))'
    return (f"preset 'paper' pretrains stage {stage} on real data, not on phantom tissue: {what}. Or train "
            f"nothing and load the reference's released checkpoint {released}. Phantom pretraining is the "
            "cpu-tiny preset's.")


def check_pretraining_data(config: PretrainConfig, dataset=None) -> None:
    """Refuse (:class:`PaperDataError`) a ``paper``-preset run on phantom data, before any work.

    ``dataset``: a dataset passed to :func:`train` directly (then ``config.data`` is not read)."""
    if config.preset == "paper" and config.data == "phantom" and dataset is None:
        raise PaperDataError(paper_data_message(config.stage))


def make_config(stage: int = 1, preset: str = "cpu-tiny", **overrides: Any) -> PretrainConfig:
    """A :class:`PretrainConfig` from a preset (``"cpu-tiny"``/``"cpu"``, ``"gpu"`` or ``"paper"``) and overrides."""
    preset = {"cpu": "cpu-tiny"}.get(preset, preset)
    if preset not in PRESETS:
        raise HIPTError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    if stage not in (1, 2):
        raise HIPTError(f"stage must be 1 or 2, not {stage!r}")
    values = {**PRESETS[preset][stage], **{k: v for k, v in overrides.items() if v is not None}}
    return PretrainConfig(stage=stage, preset=preset, **values)


_NOT_HASHED = ("out_dir", "progress", "num_workers", "resume", "device", "checkpoint_every", "log_every")


def config_hash(config: PretrainConfig, ignore: tuple[str, ...] = _NOT_HASHED) -> str:
    """A short hash of the settings that change the result (for cache folders)."""
    d = {k: v for k, v in asdict(config).items() if k not in ignore}
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:10]


# ------------------------------------------------------------------------------------------------
# models
# ------------------------------------------------------------------------------------------------


_ARCHS: dict[str, tuple[str, dict[str, Any]]] = {
    "vit256_small": ("ViT256", dict(embed_dim=384, depth=12, num_heads=6, patch_size=16)),
    "vit256_tiny": ("ViT256", dict(embed_dim=192, depth=4, num_heads=3, patch_size=16)),
    "vit4k_xs": ("ViT4K", dict(input_embed_dim=384, embed_dim=192, depth=6, num_heads=6)),
    "vit4k_tiny": ("ViT4K", dict(input_embed_dim=192, embed_dim=192, depth=2, num_heads=3)),
}


def build_backbone(config: PretrainConfig, drop_path_rate: float | None = None) -> nn.Module:
    """The ViT of the stage: ``vit256_small|vit256_tiny`` (stage 1) or ``vit4k_xs|vit4k_tiny`` (stage 2),
    the sizes of :mod:`hipt.models`' factories, overridden by ``embed_dim``/``depth``/``num_heads`` (and
    ``input_embed_dim`` for ViT4K) when set."""
    from hipt import models

    if config.arch not in _ARCHS:
        raise HIPTError(f"unknown arch {config.arch!r}; choose one of {sorted(_ARCHS)}")
    cls_name, kwargs = _ARCHS[config.arch]
    kwargs = dict(kwargs)
    if cls_name == "ViT4K":
        kwargs["input_embed_dim"] = config.input_embed_dim
    for name in ("embed_dim", "depth", "num_heads"):  # optional size overrides (tests, experiments)
        if getattr(config, name) is not None:
            kwargs[name] = getattr(config, name)
    dpr = config.drop_path_rate if drop_path_rate is None else drop_path_rate
    model = getattr(models, cls_name)(drop_path_rate=dpr, **kwargs)
    if config.pos_embed_init != "trunc_normal":  # the constructor's init; no second draw (same RNG stream)
        model.init_pos_embed(config.pos_embed_init)
    return model


def build_head(config: PretrainConfig, in_dim: int) -> DINOHead:
    return DINOHead(
        in_dim, config.out_dim, use_bn=config.use_bn_in_head, norm_last_layer=config.norm_last_layer,
        nlayers=config.head_nlayers, hidden_dim=config.head_hidden_dim, bottleneck_dim=config.head_bottleneck_dim,
    )


def param_groups(model: nn.Module) -> list[dict[str, Any]]:
    """DINO's two groups: weights regularized; biases and every 1-D parameter (norms) not.

    As in DINO, ``pos_embed`` and ``cls_token`` (3-D) *are* regularized.  Frozen parameters (the
    weight-norm magnitude when ``norm_last_layer``) are left out.
    """
    regularized, not_regularized = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (not_regularized if name.endswith(".bias") or p.ndim == 1 else regularized).append(p)
    return [{"params": regularized}, {"params": not_regularized, "weight_decay": 0.0}]


def clip_gradients(model: nn.Module, clip: float, mode: str = "param") -> None:
    """Clip gradients to norm ``clip``: ``"param"`` = each parameter's gradient separately (DINO's
    ``clip_gradients``, the reference's behaviour), ``"global"`` = all together
    (``torch.nn.utils.clip_grad_norm_``)."""
    if clip <= 0:
        return
    if mode == "global":
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.grad is not None], clip)
        return
    for p in model.parameters():
        if p.grad is not None:
            norm = p.grad.detach().norm(2)
            coef = clip / (norm + 1e-6)
            p.grad.mul_(torch.clamp(coef, max=1.0))


def cancel_last_layer_gradients(model: nn.Module) -> None:
    """``freeze_last_layer``: drop the prototypes' gradients (first epoch(s) of training)."""
    for name, p in model.named_parameters():
        if "last_layer" in name:
            p.grad = None


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """``θ_t ← m·θ_t + (1 − m)·θ_s`` over matching parameters."""
    t_params = [p for _, p in sorted(teacher.named_parameters())]
    s_params = [p.detach() for _, p in sorted(student.named_parameters())]
    torch._foreach_mul_(t_params, momentum)
    torch._foreach_add_(t_params, s_params, alpha=1.0 - momentum)


# ------------------------------------------------------------------------------------------------
# data
# ------------------------------------------------------------------------------------------------


def build_transform(config: PretrainConfig):
    if config.stage == 1:
        return PatchMultiCrop(
            config.global_crop_size, config.local_crop_size, config.local_crops_number,
            tuple(config.global_crops_scale), tuple(config.local_crops_scale), config.normalization,
            defer_photometric=True,  # colour work on whole batches in the training loop (2.6x faster on 2 cores)
        )
    return GridMultiCrop(config.global_crop_size, config.local_crop_size, config.local_crops_number, config.grid_dropout)


def build_dataset(config: PretrainConfig):
    """The dataset named by ``config.data`` (with the stage's multi-crop transform)."""
    check_pretraining_data(config)
    transform = build_transform(config)
    data = config.data
    if config.stage == 1:
        if data == "phantom":
            from hipt.phantom import phantom_patches

            images, _ = phantom_patches(config.n_phantom, seed=config.phantom_seed, size=config.patch_size)
            return ArrayPatches(images, transform)
        path = Path(data)
        if (path / "coords").is_dir():
            return SlidePatches(path, config.patch_size, config.slides, transform=transform)
        return ImageFolderPatches(path, transform)
    if data == "phantom":
        raise HIPTError("stage 2 on phantom data: pass the feature grids as train(config, dataset=...) "
                        "or use hipt.pretrain.pretrained(2, 'cpu-tiny'), which extracts them")
    return FeatureGrids(data, transform)


# ------------------------------------------------------------------------------------------------
# distributed helpers
# ------------------------------------------------------------------------------------------------


def _dist_setup(device: str) -> tuple[int, int, bool]:
    """(rank, world_size, created) — initializes the process group under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, False
    created = False
    if not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        dist.init_process_group(backend)
        created = True
    return dist.get_rank(), dist.get_world_size(), created


def _resolve_device(device: str) -> str:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":  # set_device needs an index: this process's local rank (0 without torchrun)
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    if device.startswith("cuda"):
        torch.cuda.set_device(torch.device(device))
    return device


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "torch": torch.random.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": random.getstate(),
    }


def _set_rng_state(state: Mapping[str, Any]) -> None:
    torch.random.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))


def _torch_load(path: Path) -> dict[str, Any]:
    from hipt.models.weights import load_checkpoint

    return load_checkpoint(path, verify=False)


# ------------------------------------------------------------------------------------------------
# how long a run takes: an estimate before it starts, and a guard against silent multi-hour runs
# ------------------------------------------------------------------------------------------------


class LongRunError(HIPTError):
    """A DINO run estimated longer than the time allowed (:func:`check_run_budget`)."""


@dataclass(frozen=True)
class RunEstimate:
    """How long a DINO run would take, estimated before it starts (:func:`estimate_run`).

    ``steps``: the optimizer steps this run would take (from step 0, or the step it resumes from, to
    ``max_steps`` or the end of the schedule); ``total_steps``: the full schedule;
    ``seconds_per_step``: timed on this machine (:func:`time_step`); ``device``: where, in words;
    ``how``: how the step time was obtained; ``warning``: why the run cannot start as configured on
    this device, if it cannot (e.g. ``fp16`` on a CPU; it was then timed in fp32).  The estimate
    covers the training steps (with the augmentation, when it runs in the training process); not the
    drawing of phantom data, nor checkpoint writes.
    """

    label: str
    steps: int
    total_steps: int
    seconds_per_step: float
    device: str
    how: str = ""
    warning: str = ""

    @property
    def minutes(self) -> float:
        return self.steps * self.seconds_per_step / 60.0

    def steps_within(self, minutes: float) -> int:
        """How many steps of this run fit in ``minutes``."""
        return max(0, int(minutes * 60.0 // max(self.seconds_per_step, 1e-9)))

    def short(self) -> str:
        """``<label>: about N steps, ~X min on <device>`` (and the warning, if any)."""
        capped = f" of the {self.total_steps:,} of the full schedule" if self.steps < self.total_steps else ""
        warning = f" [{self.warning}]" if self.warning else ""
        return (f"{self.label}: about {self.steps:,} steps{capped}, ~{format_minutes(self.minutes)} on "
                f"{self.device}{warning}")

    def __str__(self) -> str:
        return self.short() + (f" ({self.how})" if self.how else "")


def format_minutes(minutes: float) -> str:
    """``0.5 → '30 s'``, ``12.3 → '12 min'``, ``1980 → '1,980 min (33 h)'``."""
    if minutes < 1:
        return f"{minutes * 60:.0f} s"
    text = f"{minutes:.1f} min" if minutes < 10 else f"{minutes:,.0f} min"
    return text + (f" ({minutes / 60:,.0f} h)" if minutes >= 120 else "")


def describe_device(device: str) -> str:
    """``cuda:0 (NVIDIA H100 80GB HBM3)`` or ``cpu (2 threads)``."""
    if device.startswith("cuda"):
        return f"{device} ({torch.cuda.get_device_name(torch.device(device))})"
    n = torch.get_num_threads()
    return f"{device} ({n} thread{'s' if n > 1 else ''})"


def run_steps(config: PretrainConfig, n_items: int | None = None, world: int = 1) -> int:
    """The full schedule's steps: ``epochs × steps_per_epoch`` (one pass over ``n_items`` per epoch
    when ``steps_per_epoch`` is None; ``n_items`` defaults to ``n_phantom`` for stage-1 phantom data)."""
    spe = config.steps_per_epoch
    if spe is None:
        if n_items is None and config.stage == 1 and config.data == "phantom":
            n_items = config.n_phantom
        if n_items is None:
            raise HIPTError("run_steps: the number of items is needed when steps_per_epoch is not set")
        spe = max(1, n_items // (config.batch_size_per_gpu * world))
    return config.epochs * spe


def _probe_items(config: PretrainConfig, n: int, dataset=None) -> list:
    """``n`` training items (crop lists): from ``dataset`` when given, else synthetic ones of the
    run's shapes (random patches of ``patch_size`` px through the stage-1 multi-crop; random feature
    grids for stage 2, of the side whose crops keep the paper's 14/16 ratio)."""
    if dataset is not None and len(dataset) > 0:
        return [dataset[(i % len(dataset), i)] for i in range(n)]
    transform = build_transform(config)
    rng = np.random.default_rng(0)
    if config.stage == 1:
        images = rng.integers(0, 256, (n, config.patch_size, config.patch_size, 3), dtype=np.uint8)
        return [transform(images[i], seed=i) for i in range(n)]
    side = max(config.global_crop_size, round(config.global_crop_size * 16 / 14))
    grids = torch.from_numpy(rng.standard_normal((n, config.input_embed_dim, side, side), dtype=np.float32))
    return [transform(grids[i], seed=i) for i in range(n)]


def _sync(device: str) -> float:
    if device.startswith("cuda"):
        torch.cuda.synchronize(torch.device(device))
    return time.perf_counter()


def time_step(config: PretrainConfig, device: str = "cpu", dataset=None, *, probe_batch: int | None = None,
              repeats: int = 2, slow_step_s: float = 3.0) -> tuple[float, str, str]:
    """Seconds per training step of ``config`` on ``device``, timed on a few batches; how; and a
    warning when the run cannot start as configured here (its precision needs a GPU).

    Fresh copies of the run's student and teacher take ``1 + repeats`` full steps (forward, loss,
    backward, clipping, AdamW, EMA, in the run's precision) on items of ``dataset`` or synthetic ones
    (:func:`_probe_items`); the first step is a warm-up, unless it alone took more than ``slow_step_s``
    (then it is the measurement).  On a GPU the batch is the run's; on a CPU a batch of at most 4, the
    per-sample part (augmentation on the batch, forward, backward) scaled to the run's batch and the
    fixed part (optimizer, EMA) added once.  The augmentation's per-patch half is timed when it runs
    in the training process (``num_workers = 0``).  The global RNG states are restored and nothing is
    written: the run that follows draws the same numbers as without the probe.
    """
    batch = config.batch_size_per_gpu
    cuda = device.startswith("cuda")
    b = min(batch, probe_batch or (batch if cuda else 4))
    warning = ""
    try:
        precision = resolve_precision(config.precision, device)
    except HIPTError:  # fp16 on a CPU: the run itself will refuse; time it in fp32 to say how long anyway
        precision = "fp32"
        warning = f"precision {config.precision} needs a CUDA GPU; timed in fp32"
    state = (np.random.get_state(), random.getstate())
    with torch.random.fork_rng(devices=[torch.device(device).index or 0] if cuda else []):
        t0 = time.perf_counter()
        crops = collate_crops(_probe_items(config, b, dataset))
        t_items = time.perf_counter() - t0
        backbone = build_backbone(config)
        student = MultiCropWrapper(backbone, build_head(config, backbone.embed_dim)).to(device)
        teacher = MultiCropWrapper(build_backbone(config, drop_path_rate=0.0),
                                   build_head(config, backbone.embed_dim)).to(device)
        teacher.load_state_dict(student.state_dict())
        for p in teacher.parameters():
            p.requires_grad_(False)
        dino_loss = DINOLoss(config.out_dim, config.ncrops, config.warmup_teacher_temp, config.teacher_temp,
                             config.warmup_teacher_temp_epochs, config.epochs, config.student_temp,
                             config.center_momentum).to(device)
        optimizer = torch.optim.AdamW(param_groups(student), lr=1e-6)
        scaler = grad_scaler(device, precision)
        transform = build_transform(config)
        deferred = transform if getattr(transform, "defer_photometric", False) else None
        student.train()
        teacher.train()
        per_sample, fixed = [], []
        for i in range(1 + repeats):
            t0 = _sync(device)
            x = [c.to(device, non_blocking=True) for c in crops]
            if deferred is not None:
                x = deferred.photometric(x[:-1], x[-1])
            with autocast(device, precision):
                with torch.no_grad():
                    teacher_out = teacher(x[:2])
                loss = dino_loss(student(x), teacher_out, 0)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            t1 = _sync(device)
            scaler.unscale_(optimizer)
            clip_gradients(student, config.clip_grad, config.clip_mode)
            scaler.step(optimizer)
            scaler.update()
            ema_update(teacher, student, 0.996)
            t2 = _sync(device)
            if i > 0 or t2 - t0 > slow_step_s:
                per_sample.append(t1 - t0)
                fixed.append(t2 - t1)
            if t2 - t0 > slow_step_s:
                break
        del student, teacher, optimizer, dino_loss, crops, x, teacher_out, loss
        if cuda:
            torch.cuda.empty_cache()
    np.random.set_state(state[0])
    random.setstate(state[1])
    seconds = float(np.median(per_sample)) * batch / b + float(np.median(fixed))
    if config.num_workers == 0:
        seconds += t_items * batch / b
        data = "with the augmentation"
    else:
        data = f"the per-patch augmentation left to {config.num_workers} workers"
    how = (f"timed {len(per_sample)} step(s) of batch {b}" + (f", scaled to {batch}" if b < batch else "")
           + f", {precision}, {data}")
    return seconds, how, warning


def estimate_run(config: PretrainConfig, dataset=None, *, n_items: int | None = None, start_step: int = 0,
                 world: int = 1, device: str | None = None, seconds_per_step: float | None = None,
                 label: str | None = None) -> RunEstimate:
    """How long :func:`train` would take on this machine for ``config``, before anything is trained.

    The steps follow the schedule (``max_steps`` caps them; ``start_step`` is where a resumed run
    starts); the time per step is ``seconds_per_step`` if given, else :func:`time_step` (a few steps
    of fresh models on ``dataset``'s items or synthetic ones: seconds, nothing written).  ``n_items``:
    the dataset's length when ``dataset`` is not given and ``steps_per_epoch`` is not set.
    """
    if device is None:
        device = _resolve_device(config.device)
    phantom1 = config.stage == 1 and config.data == "phantom"
    if dataset is None and n_items is None and config.steps_per_epoch is None and not phantom1:
        dataset = build_dataset(config)  # its length sets the epoch (a folder is indexed, not read)
    if dataset is not None and n_items is None:
        n_items = len(dataset)
    total = run_steps(config, n_items, world)
    steps = max(0, _stop_step(config, total) - start_step)
    how, warning = "step time given", ""
    if seconds_per_step is None:
        seconds_per_step, how, warning = time_step(config, device, dataset)
    return RunEstimate(label or f"DINO stage {config.stage} ({config.preset})", steps, total, float(seconds_per_step),
                       describe_device(device), how, warning)


def check_run_budget(estimates, max_minutes: float | None, allow_long_run: bool = False, *,
                     quiet: bool = False, cap_name: str = "max_steps",
                     allow_name: str = "set allow_long_run = True") -> None:
    """Print each estimate; raise :class:`LongRunError` when together they exceed ``max_minutes``.

    ``max_minutes`` None or ``allow_long_run`` True: no limit.  ``max_steps`` caps the last run of
    the list (the one asked for; the others are runs it depends on), and the message says how many of
    its steps fit, or that the runs before it alone are over the limit.  ``cap_name`` and
    ``allow_name``: how the message names the two ways on (the chapters' parameters by default).
    """
    estimates = [e for e in estimates if e.steps > 0]
    if not quiet:
        for e in estimates:
            print(e, flush=True)
    total = sum(e.minutes for e in estimates)
    if not estimates or max_minutes is None or allow_long_run or total <= max_minutes:
        return
    last, before = estimates[-1], estimates[:-1]
    left = max_minutes - sum(e.minutes for e in before)
    what = "; ".join(e.short() for e in estimates)
    if left > 0 and last.steps_within(left) > 0:
        cap = (f"cap it with {cap_name} (about {last.steps_within(left):,} steps of {last.label} fit in "
               f"{max_minutes:g} min; the schedules stay those of the full run, so a capped run is its start)")
    elif not before:
        cap = f"not even one step of {last.label} fits in {max_minutes:g} min: raise max_minutes"
    else:
        one = len(before) == 1
        cap = (f"{cap_name} caps {last.label} only, and {'; '.join(e.label for e in before)} alone "
               f"{'exceeds' if one else 'exceed'} {max_minutes:g} min: train {'it' if one else 'them'} first where "
               "that time is available (a GPU job), or raise max_minutes")
    raise LongRunError(
        f"refusing to start DINO pretraining estimated at ~{format_minutes(total)}, more than max_minutes = "
        f"{max_minutes:g}: {what}. Two ways on: {cap}; or {allow_name} to train it all."
    )


# ------------------------------------------------------------------------------------------------
# training
# ------------------------------------------------------------------------------------------------


@dataclass
class TrainResult:
    """What :func:`train` returns: the teacher backbone (eval mode), the log rows and the run folder."""

    teacher: nn.Module
    student: nn.Module
    log: list[dict[str, Any]]
    out_dir: Path
    checkpoint: Path | None
    schedules: dict[str, np.ndarray] = field(default_factory=dict)
    config: PretrainConfig | None = None


def train(config: PretrainConfig, dataset=None, *, max_minutes: float | None = None) -> TrainResult:
    """Run (or resume) DINO pretraining for ``config.stage``; returns the trained teacher.

    ``dataset``: optional map-style dataset whose ``__getitem__((index, seed))`` returns the list of
    crops (e.g. ``FeatureGrids.from_array(feats, GridMultiCrop(...))``); by default built from
    ``config.data``.  Under ``torchrun`` each process runs this function; only rank 0 writes files.

    Before the first step, when ``config.progress`` is on or ``max_minutes`` is given, the run is
    estimated (:func:`time_step`: a few steps of fresh models, the RNG restored) and rank 0 prints
    ``about N steps, ~X min on <device>``; with ``max_minutes``, a longer run raises
    :class:`LongRunError` before training.  ``config.max_steps`` stops the run after that many steps
    of the full schedule (the learning-rate, weight-decay, momentum and temperature schedules are the
    full run's, not compressed: a capped run is the start of the full one, and a later run with a
    larger ``max_steps`` and the same ``out_dir`` resumes it).
    """
    device = _resolve_device(config.device)
    rank, world, created_pg = _dist_setup(device)
    try:
        return _train(config, dataset, device, rank, world, max_minutes)
    finally:
        if created_pg and dist.is_initialized():
            dist.destroy_process_group()


def _train(config: PretrainConfig, dataset, device: str, rank: int, world: int,
           max_minutes: float | None = None) -> TrainResult:
    torch.manual_seed(config.seed)  # the same initial weights on every rank
    out_dir = Path(config.out_dir)
    ckpt_path = out_dir / CHECKPOINT_NAME

    global_batch = config.batch_size_per_gpu * world
    ckpt = _torch_load(ckpt_path) if config.resume and ckpt_path.is_file() else None
    # A finished run needs no data (and the phantom patches take a while to draw): read the epoch
    # length it used from its checkpoint.
    done_spe = int(ckpt["steps_per_epoch"]) if ckpt is not None and "steps_per_epoch" in ckpt else None
    finished = done_spe is not None and int(ckpt["step"]) >= _stop_step(config, config.epochs * done_spe)
    # resolved before the data are drawn (fp16 on a CPU fails here); a finished run only loads its
    # checkpoint, so an fp16 run trained on a GPU can still be read on a CPU
    precision = "fp32" if finished else resolve_precision(config.precision, device)
    check_pretraining_data(config, dataset)  # the paper preset on phantom data: refused before any work
    if dataset is None and not finished:
        dataset = build_dataset(config)
    elif dataset is not None and getattr(dataset, "transform", "unset") is None:
        dataset.transform = build_transform(config)
    steps_per_epoch = done_spe if finished else (config.steps_per_epoch or max(1, len(dataset) // global_batch))
    total_steps = config.epochs * steps_per_epoch
    if not finished and (config.progress or max_minutes is not None):  # the same on every rank
        estimate = _estimate_in_run(config, dataset, device, rank, world, total_steps,
                                    int(ckpt["step"]) if ckpt is not None else 0)
        check_run_budget([estimate], max_minutes, quiet=rank != 0, cap_name="max_steps (hipt pretrain --max-steps)",
                         allow_name="give no max_minutes (hipt pretrain: no --max-minutes)")

    # -- models: student (with drop path) and teacher (without), same initial weights
    backbone = build_backbone(config)
    student = MultiCropWrapper(backbone, build_head(config, backbone.embed_dim))
    teacher = MultiCropWrapper(build_backbone(config, drop_path_rate=0.0), build_head(config, backbone.embed_dim))
    if config.init_weights:
        _load_initial_weights(student, teacher, config.init_weights)
    teacher.load_state_dict(student.state_dict())
    for p in teacher.parameters():
        p.requires_grad_(False)
    torch.manual_seed(config.seed + rank)  # per-rank randomness from here on (stochastic depth)
    np.random.seed(config.seed + rank)
    random.seed(config.seed + rank)
    if world > 1 and config.use_bn_in_head and device.startswith("cuda"):
        # as DINO: batch statistics over the global batch (both networks run in train mode).  On CPU
        # (gloo) each process keeps its own batch statistics.
        student = nn.SyncBatchNorm.convert_sync_batchnorm(student)
        teacher = nn.SyncBatchNorm.convert_sync_batchnorm(teacher)
    student.to(device)
    teacher.to(device)
    student_ddp: nn.Module = student
    if world > 1:
        student_ddp = nn.parallel.DistributedDataParallel(
            student, device_ids=[torch.device(device).index] if device.startswith("cuda") else None
        )

    dino_loss = DINOLoss(
        config.out_dim, config.ncrops, config.warmup_teacher_temp, config.teacher_temp,
        config.warmup_teacher_temp_epochs, config.epochs, config.student_temp, config.center_momentum,
    ).to(device)
    optimizer = torch.optim.AdamW(param_groups(student))
    scaler = grad_scaler(device, precision)  # enabled for fp16 only; otherwise a pass-through
    device_type = "cuda" if device.startswith("cuda") else "cpu"

    schedules = dino_schedules(
        lr=scaled_lr(config.lr, global_batch), min_lr=config.min_lr, weight_decay=config.weight_decay,
        weight_decay_end=config.weight_decay_end, momentum_teacher=config.momentum_teacher,
        epochs=config.epochs, steps_per_epoch=steps_per_epoch, warmup_epochs=config.warmup_epochs,
    )

    # -- resume
    start_step = 0
    log: list[dict[str, Any]] = []
    if ckpt is not None:
        student.load_state_dict(_strip(ckpt["student"], "module."))
        teacher.load_state_dict(ckpt["teacher"])
        optimizer.load_state_dict(ckpt["optimizer"])
        dino_loss.load_state_dict(ckpt["dino_loss"])
        if scaler.is_enabled() and ckpt.get("fp16_scaler"):
            scaler.load_state_dict(ckpt["fp16_scaler"])
        start_step = int(ckpt["step"])
        rng = ckpt.get("rng") or {}
        if rank < len(rng.get("per_rank", [])):
            _set_rng_state(rng["per_rank"][rank])
        log = _read_log(out_dir / LOG_NAME, start_step)

    stop_step = _stop_step(config, total_steps)
    if finished:
        return TrainResult(teacher.backbone.eval(), student.backbone, log, out_dir, ckpt_path, schedules, config)
    sampler = StreamSampler(len(dataset), global_batch, seed=config.seed, rank=rank, world_size=world,
                            start_step=start_step, total_steps=stop_step)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=config.batch_size_per_gpu, sampler=sampler, num_workers=config.num_workers,
        collate_fn=collate_crops, pin_memory=device_type == "cuda",
        generator=torch.Generator().manual_seed(config.seed),  # keeps the global RNG untouched
        persistent_workers=False, prefetch_factor=4 if config.num_workers > 0 else None,
    )

    transform = getattr(dataset, "transform", None)
    deferred = transform if getattr(transform, "defer_photometric", False) else None
    show = config.progress and rank == 0
    bar = None
    if show:
        from tqdm.auto import tqdm

        bar = tqdm(total=stop_step, initial=start_step, desc=f"DINO stage {config.stage}", unit="step",
                   dynamic_ncols=True)
        bar.write(describe(config.precision, device))
        if start_step == 0:
            bar.write(f"uniform-output loss ln(out_dim) = {uniform_loss(config.out_dim):.3f}; "
                      f"{total_steps} steps ({config.epochs} epochs × {steps_per_epoch}), global batch {global_batch}")

    student.train()
    teacher.train()
    step = start_step
    t0 = time.time()
    for crops in loader:
        epoch = step // steps_per_epoch
        for i, group in enumerate(optimizer.param_groups):
            group["lr"] = float(schedules["lr"][step])
            if i == 0:
                group["weight_decay"] = float(schedules["wd"][step])
        crops = [c.to(device, non_blocking=True) for c in crops]
        if deferred is not None:  # stage 1: the colour half of the augmentation, on the whole batch
            crops = deferred.photometric(crops[:-1], crops[-1])
        with autocast(device, precision):
            with torch.no_grad():
                teacher_out = teacher(crops[:2])
            student_out = student_ddp(crops)
            loss = dino_loss(student_out, teacher_out, epoch)
        if not math.isfinite(loss.item()):
            raise HIPTError(f"{out_dir}: loss is {loss.item()} at step {step}; stopping "
                            "(lower --lr, raise --warmup-epochs, or use --precision fp32)")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)  # clipping must see the true gradients, as DINO's fp16_scaler
        clip_gradients(student, config.clip_grad, config.clip_mode)
        if epoch < config.freeze_last_layer:
            cancel_last_layer_gradients(student)
        scaler.step(optimizer)  # fp16: skipped when a gradient overflowed (and the scale drops)
        scaler.update()
        ema_update(teacher, student, float(schedules["momentum"][step]))

        loss_value = loss.detach()
        if world > 1:
            dist.all_reduce(loss_value)
            loss_value = loss_value / world
        step += 1
        if step % config.log_every == 0 or step == stop_step:
            log.append({
                "step": step, "epoch": epoch, "loss": float(loss_value), "lr": float(schedules["lr"][step - 1]),
                "wd": float(schedules["wd"][step - 1]), "momentum": float(schedules["momentum"][step - 1]),
                "teacher_temp": dino_loss.teacher_temp(epoch), "time": round(time.time() - t0, 3),
            })
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{float(loss_value):.3f}", epoch=epoch)
        if step % config.checkpoint_every == 0 or step == stop_step:
            _save_checkpoint(ckpt_path, config, student, teacher, optimizer, dino_loss, scaler, step, epoch,
                             steps_per_epoch, log, rank, world)
    if bar is not None:
        bar.close()

    teacher_backbone = teacher.backbone.eval()
    return TrainResult(teacher_backbone, student.backbone, log, out_dir, ckpt_path if ckpt_path.is_file() else None,
                       schedules, config)


def _estimate_in_run(config: PretrainConfig, dataset, device: str, rank: int, world: int, total_steps: int,
                     start_step: int) -> RunEstimate:
    """The run's estimate, timed on rank 0 and shared with the other ranks (they all decide alike)."""
    seconds, how, warning = time_step(config, device, dataset) if rank == 0 else (0.0, "", "")
    if world > 1:
        box = [(seconds, how, warning)]
        dist.broadcast_object_list(box, src=0)
        seconds, how, warning = box[0]
        how += f"; each of {world} processes"
    steps = max(0, _stop_step(config, total_steps) - start_step)
    return RunEstimate(f"DINO stage {config.stage} ({config.preset})", steps, total_steps, seconds,
                       describe_device(device), how, warning)


def _stop_step(config: PretrainConfig, total_steps: int) -> int:
    return total_steps if config.max_steps is None else min(total_steps, config.max_steps)


def _strip(sd: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k.removeprefix(prefix): v for k, v in sd.items()}


def _load_initial_weights(student: MultiCropWrapper, teacher: MultiCropWrapper, weights: str) -> None:
    """Continued pretraining: backbones (and heads, where their shapes match) from a checkpoint."""
    from hipt.models.weights import load_backbone, load_checkpoint

    ckpt = load_checkpoint(weights)
    load_backbone(student.backbone, ckpt, key="student" if "student" in ckpt else "teacher")
    src = ckpt.get("student", ckpt.get("teacher", {}))
    head = {k.removeprefix("module.").removeprefix("head."): v for k, v in src.items()
            if k.removeprefix("module.").startswith("head.")}
    own = student.head.state_dict()
    if head and all(k in head and head[k].shape == v.shape for k, v in own.items()):
        student.head.load_state_dict(head)


def _save_checkpoint(path: Path, config, student, teacher, optimizer, dino_loss, scaler, step, epoch,
                     steps_per_epoch, log, rank: int, world: int) -> None:
    """Atomic checkpoint in the released DINO format, plus what exact resumption needs."""
    rng = _rng_state()
    if world > 1:
        gathered: list[Any] = [None] * world
        dist.all_gather_object(gathered, rng)
        per_rank = gathered
    else:
        per_rank = [rng]
    if rank == 0:
        ckpt = {
            "student": {f"module.{k}": v for k, v in student.state_dict().items()},
            "teacher": teacher.state_dict(),
            "optimizer": optimizer.state_dict(),
            "epoch": epoch + 1,
            "step": step,
            "steps_per_epoch": steps_per_epoch,
            "args": argparse.Namespace(**asdict(config)),
            "dino_loss": dino_loss.state_dict(),
            "rng": {"per_rank": per_rank},
            "hipt": {"config": dict(teacher.backbone.config), "stage": config.stage,
                     "normalization": config.normalization, "pretrain_config": json.dumps(asdict(config))},
        }
        if scaler.is_enabled():
            ckpt["fp16_scaler"] = scaler.state_dict()
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            torch.save(ckpt, tmp)
        atomic_write_text(path.parent / LOG_NAME, "".join(json.dumps(r) + "\n" for r in log))
    if world > 1:
        dist.barrier()


def _read_log(path: Path, upto_step: int) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if r["step"] <= upto_step]


def read_log(run_dir: str | Path):
    """The run's log as a pandas DataFrame (one row per logged step)."""
    import pandas as pd

    return pd.DataFrame(_read_log(Path(run_dir) / LOG_NAME, sys.maxsize))


# ------------------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------------------

_HELP = {
    "stage": "1: ViT256-16 on patches; 2: ViT4096-256 on feature grids",
    "preset": "base settings: cpu-tiny (CPU, minutes, phantom data); gpu (the paper's networks at HIPT's geometry, "
              "500 + 200 steps: minutes on an H100/H200, estimated before it starts; phantom or real data); paper "
              "(every reference setting; real data only)",
    "data": "phantom (cpu-tiny, gpu) | folder of images | `hipt patch` output folder (stage 1) | folder of "
            "`hipt extract` .h5 (stage 2)",
    "slides": "folder of the slides, if they moved since `hipt patch` (stage 1 from slides)",
    "n_phantom": "phantom patches drawn for --data phantom (stage 1)",
    "patch_size": "stage-1 input patch side in px (the paper: 256; cpu-tiny: 128, keeping the crop ratios)",
    "arch": "vit256_small | vit256_tiny (stage 1); vit4k_xs | vit4k_tiny (stage 2)",
    "input_embed_dim": "stage 2: dimension of the stage-1 features (384 for ViT-S/16, 192 for the tiny ViT)",
    "drop_path_rate": "stochastic depth of the student (0.1 in the paper)",
    "global_crop_size": "global view side: px (stage 1, 224) or tokens (stage 2, 14 of 16)",
    "local_crop_size": "local view side: px (stage 1, 96) or tokens (stage 2, 6 of 16)",
    "grid_dropout": "stage 2: feature dropout on the crops (the paper's option p=0.1; the reference code: 0)",
    "batch_size_per_gpu": "per process; the global batch is this × processes (the paper: 256 in total)",
    "warmup_epochs": "linear LR warm-up (the paper: 10 epochs = 40k iterations)",
    "weight_decay": "start of the cosine weight-decay schedule (0.04 → --weight-decay-end 0.4)",
    "warmup_teacher_temp": "teacher temperature at the start of its linear warm-up",
    "center_momentum": "EMA momentum of the teacher centre (0.9); raise it if the loss drops to ~0 (collapse)",
    "freeze_last_layer": "epochs during which the prototypes (last layer) get no updates (1)",
    "checkpoint_every": "steps between atomic checkpoints (the last step always checkpoints)",
    "num_workers": "DataLoader worker processes (augmentations are deterministic whatever this is)",
    "device": "auto | cpu | cuda (under torchrun: cuda:LOCAL_RANK)",
    "out_dim": "prototypes K (65536 in the paper); a loss stuck at ln(K) means collapse to uniform",
    "teacher_temp": "teacher temperature after warm-up (0.04; raise up to 0.07 only with warm-up)",
    "lr": "base LR, scaled by global_batch/256",
    "momentum_teacher": "teacher EMA momentum, cosine to 1 (0.996 for long runs, 0.99 for short)",
    "epochs": "epochs of steps_per_epoch steps each",
    "steps_per_epoch": "steps per epoch (default: one pass over the data)",
    "max_steps": "stop after this many steps of the full schedule (the schedules still span all epochs, so a capped "
                 "run is the start of the full one; rerun with a larger cap or none to go on)",
    "clip_mode": "param: clip each parameter's gradient (DINO); global: clip the total norm",
    "precision": "auto (bf16 on a GPU that has it, fp16 on older GPUs such as the T4, fp32 on a CPU) | bf16 "
                 "(autocast, CPU or GPU) | fp16 (CUDA only, with a gradient scaler) | fp32",
    "normalization": "hipt (0.5/0.5, what inference uses) | imagenet (what the reference's stage 1 used)",
    "embed_dim": "override the arch's width (with --depth/--num-heads: custom sizes)",
    "init_weights": "start from a released-format checkpoint (continued pretraining)",
    "pos_embed_init": "position embeddings at init: trunc_normal (std 0.02, the reference; the paper preset) or "
                      "sincos (2-D sine-cosine; the cpu-tiny stage-2 default: a short run of a tiny ViT4K reads "
                      "the arrangement of a region only with it, at init already: chapter 4)",
    "resume": "resume from <out_dir>/checkpoint.pth when present",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options: ``--stage``, ``--preset`` and one per :class:`PretrainConfig` field (default: the preset's)."""
    parser.description = (__doc__ or "").split("\n\n")[0]
    parser.epilog = "Tuning advice:\n" + (__doc__ or "").split("----------------------------------------------------\n", 1)[-1]
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--stage", type=int, choices=(1, 2), default=1, help=_HELP["stage"])
    parser.add_argument("--preset", default="cpu-tiny", choices=sorted(PRESETS) + ["cpu"], help=_HELP["preset"])
    parser.add_argument("--max-minutes", type=float, default=None,
                        help="refuse to start a run whose estimate (printed before the first step) is longer than this; "
                             "default: no limit")
    for f in fields(PretrainConfig):
        if f.name in ("stage", "preset"):
            continue
        opt = "--" + f.name.replace("_", "-")
        help_ = _HELP.get(f.name, "") + " (default: the preset's)"
        if f.type in ("bool", bool):
            parser.add_argument(opt, action=argparse.BooleanOptionalAction, default=None, help=help_)
        elif str(f.type).startswith("tuple"):
            parser.add_argument(opt, type=float, nargs=2, default=None, metavar=("MIN", "MAX"), help=help_)
        else:
            parser.add_argument(opt, type=_field_type(f), default=None, help=help_)


def _field_type(f: dataclasses.Field):
    t = str(f.type)
    if t.startswith("int"):
        return int
    if t.startswith("float"):
        return float
    return str


def run(args: argparse.Namespace) -> int:
    overrides = {f.name: getattr(args, f.name, None) for f in fields(PretrainConfig) if f.name not in ("stage", "preset")}
    config = make_config(args.stage, args.preset, **overrides)
    result = train(config, max_minutes=getattr(args, "max_minutes", None))
    if int(os.environ.get("RANK", "0")) == 0:
        last = result.log[-1] if result.log else {}
        print(f"stage {config.stage}: {len(result.log)} log rows, last loss {last.get('loss', float('nan')):.4f}; "
              f"checkpoint {result.checkpoint}")
    return 0
