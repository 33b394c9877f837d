"""Two-stage DINO pretraining (``hipt pretrain``): ViT256-16 on patches, then ViT4096-256 on feature grids.

One entry point serves both stages: :func:`train` takes a flat :class:`PretrainConfig` (its fields are
the book chapters' papermill parameters and the CLI's options), built from a preset
(:data:`~hipt.pretrain.config.PRESETS`: ``cpu`` for a CPU, ``gpu`` for the paper's networks on a schedule
that fits a Colab session, ``paper`` for the reference hyper-parameters; :mod:`hipt.pretrain.config`).
The run is laid out as DINO's ``main_dino.py``: :func:`setup` builds the data, the networks, the loss,
the optimizer and the schedules; :func:`resume` restores a checkpoint; :func:`train_one_epoch` takes
the steps of one epoch.

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
import json
import math
import os
import random
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
import torch.nn as nn
from tqdm.auto import tqdm

from hipt import models
from hipt.device import describe_device, resolve_device
from hipt.errors import HIPTError
from hipt.io import atomic_path, atomic_write_text
from hipt.models.weights import load_backbone, load_checkpoint
from hipt.phantom import phantom_patches
from hipt.precision import autocast, describe, grad_scaler, resolve_precision
from hipt.pretrain.augment import GridMultiCrop, PatchMultiCrop
# The configuration's names stay importable from here (documented in hipt.pretrain.config only).
from hipt.pretrain.config import (  # noqa: F401
    PRESET_ALIASES,
    PRESETS,
    PaperDataError,
    PretrainConfig,
    check_pretraining_data,
    config_hash,
    make_config,
    paper_data_message,
    preset_name,
)
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

__all__ = [
    "CHECKPOINT_NAME",
    "LOG_NAME",
    "LongRunError",
    "RunEstimate",
    "TrainResult",
    "TrainingRun",
    "add_arguments",
    "build_backbone",
    "build_dataset",
    "build_head",
    "build_transform",
    "cancel_last_layer_gradients",
    "check_run_budget",
    "clip_gradients",
    "ema_update",
    "estimate_run",
    "format_minutes",
    "param_groups",
    "read_log",
    "resume",
    "run",
    "run_steps",
    "setup",
    "time_step",
    "train",
    "train_one_epoch",
]

CHECKPOINT_NAME = "checkpoint.pth"
LOG_NAME = "log.jsonl"

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
            defer_photometric=True,  # colour work on whole batches in the training loop: far fewer small ops
        )
    return GridMultiCrop(config.global_crop_size, config.local_crop_size, config.local_crops_number, config.grid_dropout)


def build_dataset(config: PretrainConfig):
    """The dataset named by ``config.data`` (with the stage's multi-crop transform)."""
    check_pretraining_data(config)
    transform = build_transform(config)
    data = config.data
    if config.stage == 1:
        if data == "phantom":
            images, _ = phantom_patches(config.n_phantom, seed=config.phantom_seed, size=config.patch_size)
            return ArrayPatches(images, transform)
        path = Path(data)
        if (path / "coords").is_dir():
            return SlidePatches(path, config.patch_size, config.slides, transform=transform)
        return ImageFolderPatches(path, transform)
    if data == "phantom":
        raise HIPTError("stage 2 on phantom data: pass the feature grids as train(config, dataset=...) "
                        "or use hipt.pretrain.pretrained(2, 'cpu'), which extracts them")
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
    """The run's device as a string (``cuda:<local rank>`` for ``auto``/``cuda`` on a GPU), made current:
    NCCL and the CUDA RNG act on the current device."""
    resolved = resolve_device(device)
    if resolved.type == "cuda":
        torch.cuda.set_device(resolved)
    return str(resolved)


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
    """A run's checkpoint (its own file: no registry check)."""
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
# training: setup, resume, one epoch at a time
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


@dataclass
class TrainingRun:
    """Everything a DINO run carries from one step to the next (:func:`setup` builds it).

    ``student_ddp`` is the student wrapped for several processes (the student itself in one process);
    ``step`` is the number of optimizer steps taken so far (the step a resumed run starts from);
    ``finished``: the checkpoint it resumes from already holds the whole run (nothing to train; the
    data were not built).
    """

    config: PretrainConfig
    device: str
    rank: int
    world: int
    precision: str
    student: MultiCropWrapper
    teacher: MultiCropWrapper
    student_ddp: nn.Module
    dino_loss: DINOLoss
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    schedules: dict[str, np.ndarray]
    steps_per_epoch: int
    total_steps: int
    finished: bool = False
    step: int = 0
    log: list[dict[str, Any]] = field(default_factory=list)
    deferred: Any = None  # the stage-1 transform whose colour half runs on whole batches in the loop
    started: float = 0.0  # time.time() at the first step of this process (the log's "time")

    @property
    def out_dir(self) -> Path:
        return Path(self.config.out_dir)

    @property
    def checkpoint_path(self) -> Path:
        return self.out_dir / CHECKPOINT_NAME

    @property
    def stop_step(self) -> int:
        return _stop_step(self.config, self.total_steps)

    @property
    def global_batch(self) -> int:
        return self.config.batch_size_per_gpu * self.world

    def result(self) -> TrainResult:
        checkpoint = self.checkpoint_path if self.finished or self.checkpoint_path.is_file() else None
        return TrainResult(self.teacher.backbone.eval(), self.student.backbone, self.log, self.out_dir, checkpoint,
                           self.schedules, self.config)


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

    The run is :func:`setup`, :func:`resume` from ``<out_dir>/checkpoint.pth`` when there is one, then
    :func:`train_one_epoch` for each epoch left, as in DINO's ``main_dino.py``.
    """
    device = _resolve_device(config.device)
    rank, world, created_pg = _dist_setup(device)
    try:
        run, dataset, checkpoint = setup(config, dataset, device, rank, world, max_minutes)
        if checkpoint is not None:
            resume(run, checkpoint)
        if run.finished:
            return run.result()
        loader = _loader(run, dataset)
        bar = _progress_bar(run)
        batches = iter(loader)
        run.started = time.time()
        spe = run.steps_per_epoch
        for epoch in range(run.step // spe, -(-run.stop_step // spe)):
            train_one_epoch(run, batches, epoch, bar)
        if bar is not None:
            bar.close()
        return run.result()
    finally:
        if created_pg and dist.is_initialized():
            dist.destroy_process_group()


def setup(config: PretrainConfig, dataset, device: str, rank: int = 0, world: int = 1,
          max_minutes: float | None = None) -> tuple[TrainingRun, Any, dict[str, Any] | None]:
    """Everything before the first step: the data, the estimate, the student and teacher, the loss, the
    optimizer and the schedules.  Returns ``(run, dataset, checkpoint)``: ``checkpoint`` is the one to
    :func:`resume` from (None for a fresh run); ``dataset`` is None for a finished run (a finished run
    needs no data, and the phantom patches take a while to draw)."""
    torch.manual_seed(config.seed)  # the same initial weights on every rank
    ckpt_path = Path(config.out_dir) / CHECKPOINT_NAME
    global_batch = config.batch_size_per_gpu * world
    ckpt = _torch_load(ckpt_path) if config.resume and ckpt_path.is_file() else None
    # the epoch length a checkpointed run used, so that a finished run is recognized without its data
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
    schedules = dino_schedules(
        lr=scaled_lr(config.lr, global_batch), min_lr=config.min_lr, weight_decay=config.weight_decay,
        weight_decay_end=config.weight_decay_end, momentum_teacher=config.momentum_teacher,
        epochs=config.epochs, steps_per_epoch=steps_per_epoch, warmup_epochs=config.warmup_epochs,
    )
    transform = getattr(dataset, "transform", None)
    deferred = transform if getattr(transform, "defer_photometric", False) else None
    run = TrainingRun(config, device, rank, world, precision, student, teacher, student_ddp, dino_loss, optimizer,
                      scaler, schedules, steps_per_epoch, total_steps, finished=finished, deferred=deferred)
    return run, dataset, ckpt


def resume(run: TrainingRun, checkpoint: Mapping[str, Any]) -> None:
    """Continue ``run`` where ``checkpoint`` left it: weights, optimizer, loss centre, gradient scale,
    step, this rank's RNG states and the log up to that step (the loss sequence that follows equals an
    uninterrupted run's)."""
    run.student.load_state_dict(_strip(checkpoint["student"], "module."))
    run.teacher.load_state_dict(checkpoint["teacher"])
    run.optimizer.load_state_dict(checkpoint["optimizer"])
    run.dino_loss.load_state_dict(checkpoint["dino_loss"])
    if run.scaler.is_enabled() and checkpoint.get("fp16_scaler"):
        run.scaler.load_state_dict(checkpoint["fp16_scaler"])
    run.step = int(checkpoint["step"])
    rng = checkpoint.get("rng") or {}
    if run.rank < len(rng.get("per_rank", [])):
        _set_rng_state(rng["per_rank"][run.rank])
    run.log = _read_log(run.out_dir / LOG_NAME, run.step)


def train_one_epoch(run: TrainingRun, batches: Iterator, epoch: int, bar=None) -> None:
    """The steps of ``epoch`` that are left (up to ``max_steps``), one batch of ``batches`` each: the
    schedules' values for the step, forward of teacher and student, DINO loss, backward, gradient
    clipping, the prototypes frozen during the first ``freeze_last_layer`` epochs, the optimizer step,
    the teacher's EMA update, a log row every ``log_every`` steps and a checkpoint every
    ``checkpoint_every`` (and at the last step)."""
    config, device = run.config, run.device
    student, teacher, optimizer, scaler, dino_loss = run.student, run.teacher, run.optimizer, run.scaler, run.dino_loss
    schedules = run.schedules
    student.train()
    teacher.train()
    end = min(run.stop_step, (epoch + 1) * run.steps_per_epoch)
    while run.step < end:
        step = run.step
        crops = next(batches)
        for i, group in enumerate(optimizer.param_groups):
            group["lr"] = float(schedules["lr"][step])
            if i == 0:
                group["weight_decay"] = float(schedules["wd"][step])
        crops = [c.to(device, non_blocking=True) for c in crops]
        if run.deferred is not None:  # stage 1: the colour half of the augmentation, on the whole batch
            crops = run.deferred.photometric(crops[:-1], crops[-1])
        with autocast(device, run.precision):
            with torch.no_grad():
                teacher_out = teacher(crops[:2])
            student_out = run.student_ddp(crops)
            loss = dino_loss(student_out, teacher_out, epoch)
        if not math.isfinite(loss.item()):
            raise HIPTError(f"{run.out_dir}: loss is {loss.item()} at step {step}; stopping "
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
        if run.world > 1:
            dist.all_reduce(loss_value)
            loss_value = loss_value / run.world
        run.step = step = step + 1
        if step % config.log_every == 0 or step == run.stop_step:
            run.log.append({
                "step": step, "epoch": epoch, "loss": float(loss_value), "lr": float(schedules["lr"][step - 1]),
                "wd": float(schedules["wd"][step - 1]), "momentum": float(schedules["momentum"][step - 1]),
                "teacher_temp": dino_loss.teacher_temp(epoch), "time": round(time.time() - run.started, 3),
            })
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{float(loss_value):.3f}", epoch=epoch)
        if step % config.checkpoint_every == 0 or step == run.stop_step:
            _save_checkpoint(run, epoch)


def _loader(run: TrainingRun, dataset) -> torch.utils.data.DataLoader:
    """One stream of batches from the run's step to its last: every rank its shard of each global batch."""
    config = run.config
    sampler = StreamSampler(len(dataset), run.global_batch, seed=config.seed, rank=run.rank, world_size=run.world,
                            start_step=run.step, total_steps=run.stop_step)
    return torch.utils.data.DataLoader(
        dataset, batch_size=config.batch_size_per_gpu, sampler=sampler, num_workers=config.num_workers,
        collate_fn=collate_crops, pin_memory=run.device.startswith("cuda"),
        generator=torch.Generator().manual_seed(config.seed),  # keeps the global RNG untouched
        persistent_workers=False, prefetch_factor=4 if config.num_workers > 0 else None,
    )


def _progress_bar(run: TrainingRun):
    """A tqdm bar over the run's steps (rank 0, ``progress`` on), with the precision and, at the start,
    the loss of a uniform output (what a collapsed run stays at)."""
    config = run.config
    if not (config.progress and run.rank == 0):
        return None
    bar = tqdm(total=run.stop_step, initial=run.step, desc=f"DINO stage {config.stage}", unit="step",
               dynamic_ncols=True)
    bar.write(describe(config.precision, run.device))
    if run.step == 0:
        bar.write(f"uniform-output loss ln(out_dim) = {uniform_loss(config.out_dim):.3f}; "
                  f"{run.total_steps} steps ({config.epochs} epochs × {run.steps_per_epoch}), "
                  f"global batch {run.global_batch}")
    return bar


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
    ckpt = load_checkpoint(weights)
    load_backbone(student.backbone, ckpt, key="student" if "student" in ckpt else "teacher")
    src = ckpt.get("student", ckpt.get("teacher", {}))
    head = {k.removeprefix("module.").removeprefix("head."): v for k, v in src.items()
            if k.removeprefix("module.").startswith("head.")}
    own = student.head.state_dict()
    if head and all(k in head and head[k].shape == v.shape for k, v in own.items()):
        student.head.load_state_dict(head)


def _save_checkpoint(run: TrainingRun, epoch: int) -> None:
    """Atomic checkpoint in the released DINO format, plus what exact resumption needs."""
    path, config, step, log, rank, world = run.checkpoint_path, run.config, run.step, run.log, run.rank, run.world
    student, teacher = run.student, run.teacher
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
            "optimizer": run.optimizer.state_dict(),
            "epoch": epoch + 1,
            "step": step,
            "steps_per_epoch": run.steps_per_epoch,
            "args": argparse.Namespace(**asdict(config)),
            "dino_loss": run.dino_loss.state_dict(),
            "rng": {"per_rank": per_rank},
            "hipt": {"config": dict(teacher.backbone.config), "stage": config.stage,
                     "normalization": config.normalization, "pretrain_config": json.dumps(asdict(config))},
        }
        if run.scaler.is_enabled():
            ckpt["fp16_scaler"] = run.scaler.state_dict()
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
    return pd.DataFrame(_read_log(Path(run_dir) / LOG_NAME, sys.maxsize))


# ------------------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------------------

_HELP = {
    "stage": "1: ViT256-16 on patches; 2: ViT4096-256 on feature grids",
    "preset": "base settings: cpu (CPU, minutes, phantom data; cpu-tiny is the same); gpu (the paper's networks at HIPT's geometry, "
              "500 + 200 steps: minutes on an H100/H200, estimated before it starts; phantom or real data); paper "
              "(every reference setting; real data only)",
    "data": "phantom (cpu, gpu) | folder of images | `hipt patch` output folder (stage 1) | folder of "
            "`hipt extract` .h5 (stage 2)",
    "slides": "folder of the slides, if they moved since `hipt patch` (stage 1 from slides)",
    "n_phantom": "phantom patches drawn for --data phantom (stage 1)",
    "patch_size": "stage-1 input patch side in px (the paper: 256; cpu: 128, keeping the crop ratios)",
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
                      "sincos (2-D sine-cosine; the cpu stage-2 default: a short run of a tiny ViT4K reads "
                      "the arrangement of a region only with it, at init already: chapter 4)",
    "resume": "resume from <out_dir>/checkpoint.pth when present",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options: ``--stage``, ``--preset`` and one per :class:`PretrainConfig` field (default: the preset's)."""
    parser.description = (__doc__ or "").split("\n\n")[0]
    parser.epilog = "Tuning advice:\n" + (__doc__ or "").split("----------------------------------------------------\n", 1)[-1]
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--stage", type=int, choices=(1, 2), default=1, help=_HELP["stage"])
    parser.add_argument("--preset", default="cpu", choices=sorted(PRESETS) + sorted(PRESET_ALIASES), help=_HELP["preset"])
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