"""The book's pipeline, train-or-load: phantom cohorts → patches → stage 1 → features → stage 2.

Several chapters need the same expensive artefacts: a phantom cohort, its ``hipt patch`` grid, a
stage-1 ViT256 pretrained with DINO, the hierarchical features of every cohort and a stage-2 ViT4K.
Each function here returns the artefact from the cache (``hipt.paths.cache_dir()``, by default
``data/cache/`` in a checkout) when it is there, and otherwise computes it exactly as the chapter that
introduces it does, so any chapter can run on its own (in Colab, say) while the book build pays for
each artefact once.

Three presets (the chapters' ``preset`` parameter; :func:`chapter_run` resolves it):

=========  ==========================  ================  =====================  ======================
preset     region (patches)            cohort            stage-1 model          stage-2 model
=========  ==========================  ================  =====================  ======================
``cpu``    1024 px (8×8 of 128 px)     48–64 slides × 4  ViT256 192-d × 4       ViT4K 192-d × 2 (tiny)
``gpu``    4096 px (16×16 of 256 px)   48–64 slides × 4  ViT-S/16 (384-d × 12)  ViT-XS (192-d × 6)
``paper``  4096 px (16×16 of 256 px)   128 slides × 8    ViT-S/16 (384-d × 12)  ViT-XS (192-d × 6)
=========  ==========================  ================  =====================  ======================

The ``cpu`` preset keeps the physical scale (0.5 µm/px, 16-px tokens) and shrinks the rest: cohorts
of 48 slides (``context`` 64), patches of 128 px (the
size the tiny stage-1 ViT is pretrained on, chapter 3) and regions of 8×8 patches (1024 px) instead of
16×16 patches of 256 px, a tiny ViT256 and a short DINO run, so the whole pipeline fits a few minutes
on 2 CPU cores.  Its models are pretrained here, on phantom patches and on the stage-1 features of an
unlabelled phantom cohort.

``gpu`` is the CPU book's experiment at HIPT's geometry, sized for one Colab session on a GPU: the same
phantom cohorts (slides, regions per slide, seeds) with 4096-px regions of 256-px patches, and the
paper's networks pretrained here with DINO for a bounded number of steps (the ``gpu`` pretraining preset:
500 steps of stage 1, 200 of stage 2), extraction and training on the GPU in the precision it supports.

``paper`` is the full-size setting for a GPU, with the reference's settings: its phantom cohorts
(:func:`cohort`, :func:`patches`) have HIPT's geometry and serve as *evaluation* data (chapter 9), and its
features are extracted in fp32 as the reference's.  Its models are never pretrained on phantom data (the
reference pretrained on TCGA): :func:`stage1_model`, :func:`stage2_model` and :func:`training_plan` need
``data=`` (a folder of patches for stage 1, of ``hipt extract`` features for stage 2), and
:func:`pretraining_features` / :func:`cohort_features` refuse the preset with a
:class:`hipt.pretrain.trainer.PaperDataError` that says how to get those folders, or to load the released
checkpoints (``vit256_small_dino``, ``vit4k_xs_dino``) instead.

All artefacts are deterministic from ``seed``; cache folders are named by their settings.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from hipt import phantom
from hipt.device import describe_device, resolve_device
from hipt.errors import HIPTError
from hipt.features import build_encoder, extract_folder
from hipt.io import atomic_path, cache_lock, data_files
from hipt.paths import cache_dir
from hipt.pretrain import export
from hipt.pretrain.export import TEACHER_NAME, export_teacher, load_pretrained
from hipt.pretrain.trainer import (
    CHECKPOINT_NAME,
    PaperDataError,
    PretrainConfig,
    _torch_load,
    check_pretraining_data,
    estimate_run,
    make_config,
    paper_data_message,
    train,
)
from hipt.tiling import patch_folder

__all__ = ["Preset", "PRESETS", "get_preset", "pipeline_preset", "ChapterRun", "CHAPTER_PRESETS", "GPUNeededError",
           "chapter_run", "cohort", "patches", "model_dir", "pretrained", "stage1_model",
           "stage2_model", "cohort_features", "pretraining_features", "training_plan", "describe"]


@dataclass(frozen=True)
class Preset:
    """Sizes of the book's pipeline (see the module docstring)."""

    name: str
    region_size: int
    patch_size: int
    n_slides: int
    regions_per_slide: int
    pretrain_preset: str  #: :data:`hipt.pretrain.PRESETS` key (the pretraining preset of the models)
    extract_dtype: str  #: ``fp32`` or ``bf16`` compute for feature extraction
    batch_regions: int
    #: the unlabelled phantom cohort whose stage-1 features pretrain stage 2 (kind, n_slides); None: real
    #: data only (the ``paper`` preset)
    stage2_cohort: tuple[str, int] | None
    #: slides per cohort where a kind needs another number than ``n_slides``: ((kind, n), ...)
    cohort_sizes: tuple = ()


PRESETS: dict[str, Preset] = {
    # bf16 extraction and 128-px patches (the stage-1 model's pretraining size, chapter 3) keep a cohort's
    # generation, patching and extraction within a chapter's CPU budget; the region keeps HIPT's 8x8-style
    # grid of patches (measurements: benchmarks/results/cpu_geometry.json, the Performance appendix).
    "cpu": Preset("cpu", region_size=1024, patch_size=128, n_slides=48, regions_per_slide=4,
                  pretrain_preset="cpu", extract_dtype="bf16", batch_regions=2,
                  # the context cohort carries the book's central question and its region probes, which
                  # need more slides per class than a composition task: 64 slides, the others 48
                  cohort_sizes=(("context", 64),),
                  stage2_cohort=("survival", 32)),
    # HIPT's geometry for the phantom evaluation cohorts; fp32 extraction (the reference's); no phantom
    # pretraining data: stage 2 pretrains on hipt extract features of real slides (the reference: 433,779
    # TCGA regions), passed as data=
    # the cpu cohorts (sizes, seeds) at HIPT's geometry, with the gpu pretraining preset's models;
    # extraction in the precision the GPU supports (hipt.precision "auto")
    "gpu": Preset("gpu", region_size=4096, patch_size=256, n_slides=48, regions_per_slide=4,
                  pretrain_preset="gpu", extract_dtype="auto", batch_regions=4,
                  cohort_sizes=(("context", 64),), stage2_cohort=("survival", 64)),
    "paper": Preset("paper", region_size=4096, patch_size=256, n_slides=128, regions_per_slide=8,
                    pretrain_preset="paper", extract_dtype="fp32", batch_regions=4,
                    stage2_cohort=None),
}


def get_preset(preset: str | Preset = "cpu") -> Preset:
    """A :class:`Preset` by name (``"cpu"``, ``"gpu"`` or ``"paper"``)."""
    if isinstance(preset, Preset):
        return preset
    if preset not in PRESETS:
        raise HIPTError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[preset]


def pipeline_preset(config: PretrainConfig) -> Preset:
    """The :class:`Preset` whose pretraining preset made ``config`` (its ``preset`` field)."""
    for p in PRESETS.values():
        if make_config(config.stage, p.pretrain_preset).preset == config.preset:
            return p
    raise HIPTError(f"pretraining preset {config.preset!r} belongs to no preset of the book's pipeline "
                    f"({', '.join(PRESETS)})")


class GPUNeededError(HIPTError):
    """A chapter was run with ``preset="gpu"`` on a machine without a CUDA GPU."""


@dataclass(frozen=True)
class ChapterRun:
    """What a chapter's ``preset`` parameter means on this machine (:func:`chapter_run`).

    ``pipeline``: the :class:`Preset` of the book's pipeline; ``pretrain_preset``: the DINO preset
    (:data:`hipt.pretrain.PRESETS`); ``device``: where models and tensors go; ``phantom``: the chapter
    runs its phantom experiment (``cpu``, ``gpu``) rather than your real data (``paper``);
    ``full_size``: the paper's networks and 4096-px regions (``gpu``, ``paper``); ``progress``: progress
    bars (on for the GPU presets' long steps, off on the CPU pages).
    """

    preset: str
    pipeline: Preset
    device: str

    @property
    def pretrain_preset(self) -> str:
        return self.pipeline.pretrain_preset

    @property
    def phantom(self) -> bool:
        return self.preset != "paper"

    @property
    def full_size(self) -> bool:
        return self.preset != "cpu"

    @property
    def progress(self) -> bool:
        return self.preset != "cpu"

    def __str__(self) -> str:
        where = describe_device(self.device)
        what = "phantom cohorts" if self.phantom else "your data"
        size = "HIPT's geometry (4096-px regions, ViT-S/16 + ViT-XS)" if self.full_size else "the CPU book's sizes"
        return f"preset {self.preset}: {what} at {size}, on {where}"


CHAPTER_PRESETS = ("cpu", "gpu", "paper")


def chapter_run(preset: str, *, needs_gpu: bool = True) -> ChapterRun:
    """Resolve a chapter's ``preset`` parameter, before any work.

    ``cpu``: the CPU book (phantom cohorts, tiny models, the CPU).  ``gpu``: the same experiment at HIPT's
    geometry with the paper's networks on a CUDA GPU, sized for a Colab session; with ``needs_gpu``
    (the chapter trains or encodes) and no CUDA device it stops at once with :class:`GPUNeededError`,
    saying how to get one.  ``paper``: the reference's protocol on your data, on the GPU when there is one.
    """
    if preset not in CHAPTER_PRESETS:
        raise HIPTError(f"unknown preset {preset!r}; choose one of {', '.join(CHAPTER_PRESETS)}")
    cuda = torch.cuda.is_available()
    if preset == "gpu" and needs_gpu and not cuda:
        raise GPUNeededError(
            "preset 'gpu' runs this chapter on a CUDA GPU, and torch sees none here (torch.cuda.is_available() "
            "is False). In Colab: Runtime > Change runtime type > T4 GPU (or better), then run the notebook "
            "again. On a machine without a GPU use preset 'cpu': the same experiment at the CPU book's sizes.")
    p = get_preset(preset)
    return ChapterRun(preset=preset, pipeline=p, device=str(resolve_device("auto")) if preset != "cpu" else "cpu")


@contextlib.contextmanager
def _all_cores():
    """Use every core for a heavy build step (training, extraction), then restore the caller's setting.

    Chapters that train many tiny slide models set torch to one thread (faster for µs-sized ops); the
    artefacts they pull from the cache on first use are large ViT passes that want all cores.  An
    explicit ``OMP_NUM_THREADS`` is the user's choice and is left alone.
    """
    before = torch.get_num_threads()
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    change = "OMP_NUM_THREADS" not in os.environ and before < cores
    if change:
        torch.set_num_threads(cores)
    try:
        yield
    finally:
        if change:
            torch.set_num_threads(before)


# ------------------------------------------------------------------------------------------ data
def cohort(kind: str, preset: str | Preset = "cpu", seed: int = 0, n_slides: int | None = None,
           progress: bool = True, stain_jitter: float | None = None):
    """The phantom cohort ``kind`` (``composition2``, ``composition3``, ``context``, ``survival``).

    ``stain_jitter``: per-slide stain jitter; None: the kind's (:data:`hipt.phantom.COHORT_STAIN_JITTER`).
    Returns a :class:`hipt.phantom.Cohort` (``.table`` with ``slide_id, path, label, …``).
    """
    p = get_preset(preset)
    n = dict(p.cohort_sizes).get(kind, p.n_slides) if n_slides is None else n_slides
    return phantom.make_cohort(kind, n_slides=n, regions_per_slide=p.regions_per_slide,
                               region_size=p.region_size, patch_size=p.patch_size, seed=seed,
                               stain_jitter=stain_jitter, progress=progress)


def patches(kind: str, preset: str | Preset = "cpu", seed: int = 0, n_slides: int | None = None,
            progress: bool = True, stain_jitter: float | None = None) -> Path:
    """``hipt patch`` output folder (``coords/``, ``masks/``, ``thumbnails/``, ``summary.csv``) of a cohort."""
    p = get_preset(preset)
    c = cohort(kind, p, seed, n_slides, progress, stain_jitter)
    out = cache_dir("patches", c.out_dir.name)
    patch_folder(c.paths, out, region_size=p.region_size, patch_size=p.patch_size, progress=progress)
    return out


# ------------------------------------------------------------------------------------------ models
def model_dir(config: PretrainConfig, tag: str | None = None) -> Path:
    """The cache folder of a configuration: ``<cache>/models/stage<s>-<cpu|gpu|paper>[-<tag>]-<hash>``
    (:func:`hipt.pretrain.export.model_dir`, named by the pipeline preset), so that the chapters share one
    trained model per setting.

    For stage 2 on the default phantom data the hash leaves out ``data`` (a cache path) and takes in
    what that data is made of instead: the stage-1 model of the same preset, whose features it trains
    on, and the preset's region and patch sizes.  A new stage-1 model or a new cohort geometry, or a new
    version of the phantom generator behind its cohort, means a new stage-2 model, never a stale one.
    """
    p = pipeline_preset(config)
    data_key = None
    if config.stage == 2 and config.data == "phantom":
        kind = p.stage2_cohort[0] if p.stage2_cohort else None
        # the generator version of the cohort it trains on: a regenerated cohort means a new model
        version = f":{kind}-v{phantom.COHORT_VERSION[kind]}" if kind and phantom.COHORT_VERSION.get(kind, 1) > 1 else ""
        data_key = (f"phantom:{model_dir(make_config(1, config.preset)).name}"
                    f":r{p.region_size}p{p.patch_size}{version}")
    return export.model_dir(config, tag, label=p.name, data_key=data_key)


def pretrained(
    stage: int = 1,
    preset: str = "cpu",
    *,
    force: bool = False,
    progress: bool = True,
    dataset=None,
    tag: str | None = None,
    **overrides: Any,
) -> torch.nn.Module:
    """The teacher backbone of a DINO run: loaded from the cache if this configuration was trained
    before, else trained now (resuming an interrupted run) and cached (:func:`model_dir`).

    Args:
        stage: 1 (ViT256 on patches) or 2 (ViT4K on feature grids).  With ``cpu`` and ``gpu``, by default
            phantom patches (stage 1) and the stage-1 features of the book's unlabelled phantom cohort
            (:func:`pretraining_features`; stage 2).
        preset: the pretraining preset (:data:`hipt.pretrain.PRESETS`): ``"cpu"`` (minutes on a CPU),
            ``"gpu"`` (the paper's networks, minutes on a GPU; phantom or real data) or ``"paper"`` (every
            reference setting; pass ``data``: a folder of patches or a ``hipt patch`` folder for stage 1, a
            folder of ``hipt extract`` features for stage 2; phantom data raise
            :class:`hipt.pretrain.trainer.PaperDataError`).
        force: retrain even if cached.
        dataset: train on this dataset instead of ``config.data`` (then name it with ``tag``: the cache
            key is the configuration plus the tag, it cannot hash the data).
        overrides: :class:`hipt.pretrain.PretrainConfig` fields.

    Returns the backbone in eval mode, with ``.pretrain_dir`` (the cache folder) set.
    """
    config = make_config(stage, preset, **overrides)
    check_pretraining_data(config, dataset)  # the paper preset on phantom data: refused before any work
    if dataset is not None and not tag:
        raise ValueError("pretrained(dataset=...) needs a tag naming the data (it is part of the cache key)")
    out = model_dir(config, tag)
    with cache_lock(out):  # a second process waits here, then loads what the first one trained
        model = _train_or_load(config, out, force, progress, dataset)
    model.pretrain_dir = out  # type: ignore[attr-defined]
    return model


def _train_or_load(config: PretrainConfig, out: Path, force: bool, progress: bool, dataset) -> torch.nn.Module:
    teacher_path = out / TEACHER_NAME
    if teacher_path.is_file() and not force:
        return load_pretrained(teacher_path)
    if force and (out / CHECKPOINT_NAME).is_file():
        (out / CHECKPOINT_NAME).unlink()
    if config.stage == 2 and dataset is None and config.data == "phantom":
        # the book's unlabelled pretraining cohort, its stage-1 features
        config = config.replace(data=str(pretraining_features(pipeline_preset(config), progress=progress)))
    result = train(config.replace(out_dir=str(out), progress=progress), dataset)
    export_teacher(result, teacher_path, config)
    return result.teacher.eval()


def stage1_model(preset: str | Preset = "cpu", progress: bool = True, **overrides) -> torch.nn.Module:
    """The stage-1 ViT256 (teacher, eval mode): :func:`pretrained` (train-or-load).

    ``overrides`` change :class:`hipt.pretrain.PretrainConfig` fields (and so the cache folder).  The
    ``paper`` preset needs ``data=`` (a folder of patches or a ``hipt patch`` folder of real slides).
    """
    with _all_cores():
        return pretrained(1, get_preset(preset).pretrain_preset, progress=progress, **overrides).eval()


def pretraining_features(preset: str | Preset = "cpu", progress: bool = True) -> Path:
    """Stage-1 patch features (``feats256`` only) of the unlabelled phantom cohort that pretrains stage 2
    (``cpu`` preset; the ``paper`` preset pretrains on real data and raises
    :class:`hipt.pretrain.trainer.PaperDataError`)."""
    p = get_preset(preset)
    _refuse_paper_pretraining(p, 2)
    kind, n = p.stage2_cohort
    return _extract(kind, p, seed=1, n_slides=n, with_vit4k=False, progress=progress)


def stage2_model(preset: str | Preset = "cpu", progress: bool = True, **overrides) -> torch.nn.Module:
    """The stage-2 ViT4K (teacher, eval mode), trained with DINO on stage-1 feature grids, or loaded.

    Its pretraining data (``cpu``) are the ``feats256`` of a separate phantom cohort (seed 1,
    :func:`pretraining_features`), never the cohorts that the slide-level chapters evaluate on.  The
    ``paper`` preset needs ``data=`` (a folder of ``hipt extract`` features of real slides).
    """
    with _all_cores():
        return pretrained(2, get_preset(preset).pretrain_preset, progress=progress, **overrides).eval()


def training_plan(stage: int, preset: str | Preset = "cpu", *, force: bool = False, **overrides) -> list:
    """The DINO runs that ``stage1_model`` / ``stage2_model`` (or ``pretrained(stage, ...)``) with these
    ``overrides`` would start now, each with its estimate (:class:`hipt.pretrain.trainer.RunEstimate`);
    empty when the models are cached.  Nothing is trained or written.

    Stage 2 on the book's phantom data trains on the stage-1 features of the preset's *full-schedule*
    stage-1 model: when that model is not cached, its run comes first in the list (``max_steps`` in
    ``overrides`` caps the stage-2 run only).  A partly trained run (a checkpoint without the final
    export) counts its remaining steps.  Each estimate times a few steps of fresh models on synthetic
    batches (:func:`hipt.pretrain.trainer.time_step`: seconds on a GPU, up to tens of seconds for the
    ``paper`` models on a CPU).  Pass the list to :func:`hipt.pretrain.trainer.check_run_budget`.
    """
    p = get_preset(preset)
    name = p.pretrain_preset
    check_pretraining_data(make_config(stage, name, **overrides))  # paper on phantom data: refused here

    def pending(config, label: str, fresh: bool, n_items: int | None = None):
        out = model_dir(config)
        if (out / TEACHER_NAME).is_file() and not fresh:
            return None
        ckpt = out / CHECKPOINT_NAME
        start = int(_torch_load(ckpt).get("step", 0)) if ckpt.is_file() and not fresh else 0
        return estimate_run(config, n_items=n_items, start_step=start, label=label)

    plan = []
    config = make_config(stage, name, **overrides)
    n_items = None
    if stage == 2 and config.data == "phantom":
        stage1 = pending(make_config(1, name), f"stage 1 ({config.preset}, the full run whose features stage 2 "
                                               "trains on)", False)
        if stage1 is not None:
            plan.append(stage1)
        _, n = p.stage2_cohort  # at most this many regions: the tissue regions of its slides
        n_items = n * p.regions_per_slide
    run = pending(config, f"stage {stage} ({config.preset})", force, n_items)
    if run is not None:
        plan.append(run)
    return plan


# ------------------------------------------------------------------------------------------ features
def _model_key(stage: int, p: Preset) -> str:
    """The hash part of the preset's stage-``stage`` model cache folder (:func:`model_dir`)."""
    return model_dir(make_config(stage, p.pretrain_preset)).name.rsplit("-", 1)[-1]


def _refuse_paper_pretraining(p: Preset, stage: int) -> None:
    """The ``paper`` preset's models are pretrained on real data only: refuse before drawing a cohort."""
    if p.pretrain_preset == "paper":
        raise PaperDataError(paper_data_message(stage))


def _extract(kind: str, p: Preset, seed: int, n_slides: int | None, with_vit4k: bool, progress: bool,
             stain_jitter: float | None = None) -> Path:
    # the book's features come from the book's own pretrained models; with the paper preset those would
    # be phantom-pretrained (refused): extract with the released checkpoints instead (chapter 9)
    _refuse_paper_pretraining(p, 1)
    c = cohort(kind, p, seed, n_slides, progress, stain_jitter)
    patch_dir = patches(kind, p, seed, n_slides, progress, stain_jitter)
    tag = "feats" if with_vit4k else "feats256"
    # the folder names the models too: features of a retrained model never mix with stale ones
    models = [_model_key(1, p)] + ([_model_key(2, p)] if with_vit4k else [])
    out = cache_dir("features", f"{c.out_dir.name}-{tag}-{'-'.join(models)}")
    with cache_lock(out), _all_cores():
        return _extract_locked(c, p, patch_dir, out, with_vit4k, progress)


def _extract_locked(c, p: Preset, patch_dir: Path, out: Path, with_vit4k: bool, progress: bool) -> Path:
    table = out / "table.csv"
    if not table.is_file() or len(data_files(out, "*.h5")) < len(c.table):
        vit256 = stage1_model(p, progress)
        vit4k = stage2_model(p, progress) if with_vit4k else None
        enc = build_encoder(vit256, vit4k, patch_size=p.patch_size)
        results = extract_folder(patch_dir, out, enc, batch_regions=p.batch_regions, dtype=p.extract_dtype,
                                 device=str(resolve_device("auto")), progress=progress)
        failed = [r for r in results if getattr(r, "status", "ok") == "failed"]
        if failed:
            raise HIPTError(f"{out}: feature extraction failed for {len(failed)} slide(s); see summary.csv")
        with atomic_path(table) as tmp:
            shutil.copyfile(c.out_dir / "table.csv", tmp)
    return out


def cohort_features(kind: str, preset: str | Preset = "cpu", seed: int = 0, n_slides: int | None = None,
                    progress: bool = True, stain_jitter: float | None = None) -> Path:
    """Folder of ``<slide>.h5`` (``feats256`` ``[M, n, D]``, ``feats4k`` ``[M, 192]``, ``coords``) and
    ``table.csv`` for the phantom cohort ``kind``, from the preset's stage-1 and stage-2 models
    (``stain_jitter``: see :func:`cohort`; the folder names follow it).  ``cpu`` only: the ``paper``
    preset's models are not pretrained on phantom data (extract its cohorts with the released
    checkpoints, as chapter 9 does)."""
    return _extract(kind, get_preset(preset), seed, n_slides, with_vit4k=True, progress=progress,
                    stain_jitter=stain_jitter)


def describe(preset: str | Preset = "cpu") -> dict:
    """The preset as a plain dict (for provenance records)."""
    return asdict(get_preset(preset))
