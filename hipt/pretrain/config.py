"""The settings of a DINO pretraining run: :class:`PretrainConfig` and the one preset table.

:data:`PRESETS` names three presets, the same names as the book's pipeline presets (:mod:`hipt.book.zoo`):

- ``cpu``: the CPU book's tiny runs on phantom data (minutes on 2 cores); ``cpu-tiny`` is an accepted
  alias (:data:`PRESET_ALIASES`), its name before the presets were unified;
- ``gpu``: the paper's networks, crops and geometry on a schedule that fits a Colab session;
- ``paper``: every hyper-parameter of the reference (real data only: :func:`check_pretraining_data`).

:func:`make_config` builds a configuration from a preset and overrides; :func:`config_hash` keys the
cache folders of trained models by the settings that change the result.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any

from hipt.errors import HIPTError

__all__ = [
    "PRESETS",
    "PRESET_ALIASES",
    "PaperDataError",
    "PretrainConfig",
    "check_pretraining_data",
    "config_hash",
    "make_config",
    "paper_data_message",
    "preset_name",
]

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
    preset: str = "cpu"
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

#: The pretraining presets, by stage: ``cpu`` (the CPU book's tiny runs), ``paper`` (the reference
#: hyper-parameters, §4 of the reference notes) and ``gpu`` (below, built on ``paper``).
PRESETS: dict[str, dict[int, dict[str, Any]]] = {
    "cpu": {
        # 4 epochs × 48 steps of 32 patches in bf16, with a head of 512 hidden units for the 192-d
        # tiny ViT (the paper's 2048 serve a 384-d ViT-S), so that the run takes minutes on 2 CPU cores:
        # bf16 autocast is faster than fp32 on CPUs with bf16 support, and a smaller head costs less per
        # step for a similar KNN gain over random init, so more steps fit in the chapter's budget.  The
        # settings were chosen on the colour-jittered KNN test of seeds 101-103 (benchmarks/bench_dino_knn.py),
        # so chapter 3 tests them on other seeds (hipt.pretrain.evaluate.EVAL_SEED).
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
    # warm-up epoch), so that it fits one Colab session on a slower GPU too (minutes on an H200:
    # benchmarks/results/gpu_dino_stage1.json).  Precision follows the GPU (hipt.precision: bf16 on Ampere or newer, fp16 with a gradient scaler on a T4).  Phantom
    # patches are allowed (this preset is a teaching run, not the paper's model); pass data for real ones.
    1: {**PRESETS["paper"][1], **dict(
        data="phantom", n_phantom=6400, steps_per_epoch=None, epochs=5, warmup_epochs=1,
        precision="auto", num_workers=2, checkpoint_every=100, out_dir="data/runs/pretrain_stage1_gpu",
    )},
    # Stage 2: the reference's ViT-XS on 14/6-cell crops of 16x16 grids of 384-d tokens, for 50 epochs of
    # the pretraining regions (200 steps on the book's 64-slide phantom cohort).  On phantom regions it
    # takes the three settings with which the cpu preset's stage 2 trains instead of collapsing (every
    # phantom region holds the same tissue mixture): a BatchNorm head, teacher temperature 0.02, sine-cosine
    # position embeddings (book/appendix_phantom_design.md).  For real features pass data, and the
    # reference head with use_bn_in_head=False, teacher_temp=0.04, pos_embed_init="trunc_normal".
    2: {**PRESETS["paper"][2], **dict(
        data="phantom", steps_per_epoch=None, epochs=50, warmup_epochs=5, precision="auto", num_workers=2,
        use_bn_in_head=True, warmup_teacher_temp=0.02, teacher_temp=0.02, pos_embed_init="sincos",
        checkpoint_every=100, out_dir="data/runs/pretrain_stage2_gpu",
    )},
}


#: Other accepted names of presets: ``cpu-tiny`` is the ``cpu`` preset's name in older code and commands.
PRESET_ALIASES: dict[str, str] = {"cpu-tiny": "cpu"}


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
            "cpu preset's.")


def check_pretraining_data(config: PretrainConfig, dataset=None) -> None:
    """Refuse (:class:`PaperDataError`) a ``paper``-preset run on phantom data, before any work.

    ``dataset``: a dataset passed to :func:`train` directly (then ``config.data`` is not read)."""
    if config.preset == "paper" and config.data == "phantom" and dataset is None:
        raise PaperDataError(paper_data_message(config.stage))


def preset_name(preset: str) -> str:
    """The preset's name in :data:`PRESETS` (``"cpu-tiny"`` → ``"cpu"``); an unknown name is an error."""
    name = PRESET_ALIASES.get(preset, preset)
    if name not in PRESETS:
        raise HIPTError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    return name


def make_config(stage: int = 1, preset: str = "cpu", **overrides: Any) -> PretrainConfig:
    """A :class:`PretrainConfig` from a preset (``"cpu"``, ``"gpu"`` or ``"paper"``; ``"cpu-tiny"`` = ``"cpu"``)
    and overrides (``None`` values are ignored: the preset's value stays)."""
    preset = preset_name(preset)
    if stage not in (1, 2):
        raise HIPTError(f"stage must be 1 or 2, not {stage!r}")
    values = {**PRESETS[preset][stage], **{k: v for k, v in overrides.items() if v is not None}}
    return PretrainConfig(stage=stage, preset=preset, **values)


_NOT_HASHED = ("out_dir", "progress", "num_workers", "resume", "device", "checkpoint_every", "log_every")


#: Names the hash reads in place of a preset's: the ``cpu`` preset was called ``cpu-tiny`` when the cache
#: keys of its trained models were fixed, and the models keep their folders.
_HASHED_PRESET_NAME = {"cpu": "cpu-tiny"}


def config_hash(config: PretrainConfig, ignore: tuple[str, ...] = _NOT_HASHED) -> str:
    """A short hash of the settings that change the result (for cache folders)."""
    d = {k: v for k, v in asdict(config).items() if k not in ignore}
    if "preset" in d:
        d["preset"] = _HASHED_PRESET_NAME.get(d["preset"], d["preset"])
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:10]

