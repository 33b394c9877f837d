"""Train-or-load: pretrained backbones cached under ``hipt.paths.cache_dir("models")``, and the phantom
data that stage 2 needs.

A training run writes ``checkpoint.pth`` in the released DINO format (``teacher``/``student`` with
``backbone.*``/``head.*`` keys, ``args``, ...), which :func:`hipt.models.weights.load_backbone` and
``hipt.models.vit256_small(weights=...)`` / ``vit4k_xs(weights=...)`` read directly.  At the end,
:func:`pretrained` also writes a slim ``teacher.pth`` (backbone only, with its architecture:
:func:`hipt.models.weights.save_backbone`), which :func:`hipt.models.weights.load_model` rebuilds, tiny
variants included.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch.nn as nn

from hipt.paths import cache_dir
from hipt.pretrain.trainer import PretrainConfig, config_hash, make_config, train

TEACHER_NAME = "teacher.pth"


def model_dir(config: PretrainConfig, tag: str | None = None) -> Path:
    """The cache folder of a configuration: ``<cache>/models/dino_stage<s>_<preset>[_<tag>]_<hash>``."""
    name = f"dino_stage{config.stage}_{config.preset}" + (f"_{tag}" if tag else "")
    return cache_dir("models") / f"{name}_{config_hash(config)}"


def load_pretrained(path: str | Path) -> nn.Module:
    """A backbone (eval mode) from a ``teacher.pth`` or a training ``checkpoint.pth``."""
    from hipt.models.weights import load_model

    return load_model(path)


def export_teacher(result_or_checkpoint, dest: str | Path, config: PretrainConfig | None = None) -> Path:
    """Write the slim backbone-only export (``{'teacher': {'backbone.*'}, 'hipt': {...}}``) of a run."""
    from hipt.models.weights import save_backbone

    if isinstance(result_or_checkpoint, (str, Path)):
        model = load_pretrained(result_or_checkpoint)
    else:
        model = result_or_checkpoint.teacher
        config = config or result_or_checkpoint.config
    extra: dict[str, Any] = {}
    if config is not None:
        extra = {"stage": config.stage, "normalization": config.normalization,
                 "pretrain_config": json.dumps(config.__dict__, default=str)}
    return save_backbone(model, dest, extra=extra)


def pretrained(
    stage: int = 1,
    preset: str = "cpu-tiny",
    *,
    force: bool = False,
    progress: bool = True,
    dataset=None,
    tag: str | None = None,
    **overrides: Any,
) -> nn.Module:
    """The teacher backbone of a DINO run: loaded from the cache if this configuration was trained
    before, else trained now (resuming an interrupted run) and cached.

    Args:
        stage: 1 (ViT256 on phantom patches by default) or 2 (ViT4K on feature grids: by default the
            stage-1 features of the phantom ``context`` cohort, see :func:`phantom_stage2_data`).
        preset: ``"cpu-tiny"`` (minutes on a CPU) or ``"paper"``.
        force: retrain even if cached.
        dataset: train on this dataset instead of ``config.data`` (then name it with ``tag``: the cache
            key is the configuration plus the tag, it cannot hash the data).
        overrides: :class:`PretrainConfig` fields.

    Returns the backbone in eval mode, with ``.pretrain_dir`` (the cache folder) set.
    """
    config = make_config(stage, preset, **overrides)
    if dataset is not None and not tag:
        raise ValueError("pretrained(dataset=...) needs a tag naming the data (it is part of the cache key)")
    out = model_dir(config, tag)
    teacher_path = out / TEACHER_NAME
    if teacher_path.is_file() and not force:
        model = load_pretrained(teacher_path)
    else:
        if force and (out / "checkpoint.pth").is_file():
            (out / "checkpoint.pth").unlink()
        if stage == 2 and dataset is None and config.data == "phantom":
            dataset = phantom_stage2_data(progress=progress).train_dataset()
        result = train(config.replace(out_dir=str(out), progress=progress), dataset)
        export_teacher(result, teacher_path, config)
        model = result.teacher.eval()
    model.pretrain_dir = out  # type: ignore[attr-defined]
    return model


# ------------------------------------------------------------------------------------------------
# stage-2 data on phantom slides
# ------------------------------------------------------------------------------------------------


class Stage2Data:
    """Stage-1 features of the regions of a phantom cohort, with per-region ground truth.

    Attributes:
        features_dir: the ``hipt extract`` output folder (one ``<slide>.h5`` per slide, ``feats256``
            ``[M, n, D]``).
        regions: a DataFrame, one row per region of the feature files in file order: ``slide_id``,
            ``region`` (row in the file), ``x``, ``y`` (level-0 corner), ``label`` (slide class),
            ``informative`` (the region holds the label-defining arrangement, from the truth), ``split``
            (``"train"``/``"test"``: slides alternate by their order in the cohort table).
    """

    def __init__(self, features_dir: Path, regions):
        self.features_dir = Path(features_dir)
        self.regions = regions

    def files(self) -> list[Path]:
        return [self.features_dir / f"{s}.h5" for s in dict.fromkeys(self.regions["slide_id"])]

    def train_dataset(self, transform=None):
        """All regions as a :class:`~hipt.pretrain.data.FeatureGrids` dataset (self-supervised: no labels)."""
        from hipt.pretrain.data import FeatureGrids

        return FeatureGrids(self.files(), transform)

    def grids(self) -> np.ndarray:
        """``[M, D, H, W]`` float32 grids of every region (row order of :attr:`regions`)."""
        from hipt.pretrain.data import FeatureGrids

        ds = FeatureGrids(self.files())
        return np.stack([ds.load(i).numpy() for i in range(len(ds))])


def phantom_stage2_data(
    stage1: nn.Module | None = None,
    kind: str = "context",
    n_slides: int = 32,
    regions_per_slide: int = 4,
    region_size: int = 2048,
    seed: int = 0,
    normalization: str | None = None,
    progress: bool = True,
) -> Stage2Data:
    """Phantom cohort → ``hipt patch`` → ``hipt extract`` (feats256 only) with a stage-1 model, cached.

    ``stage1`` defaults to :func:`pretrained` ``(1)``.  Every step is cached and resumable: the cohort
    under ``<cache>/phantom``, coordinates and features under ``<cache>/features/stage2_<...>``.
    """
    import pandas as pd

    from hipt.features import build_encoder, extract_folder
    from hipt.phantom import load_truth, make_cohort
    from hipt.tiling import patch_folder

    if stage1 is None:
        stage1 = pretrained(1, progress=progress)
    if normalization is None:
        normalization = _stage1_normalization(stage1)
    cohort = make_cohort(kind, n_slides=n_slides, regions_per_slide=regions_per_slide, region_size=region_size,
                         seed=seed, progress=progress)
    tag = getattr(stage1, "pretrain_dir", None)
    tag = Path(tag).name if tag is not None else "custom"
    work = cache_dir("features") / f"stage2_{cohort.out_dir.name}_{tag}"
    patch_folder(cohort.paths, work / "patch", region_size=region_size, patch_size=256, progress=progress)
    encoder = build_encoder(stage1, None, normalization=normalization)
    extract_folder(work / "patch", work / "feats", encoder, progress=progress)

    import h5py

    rows = []
    for i, (slide_id, label, path) in enumerate(zip(cohort.table["slide_id"], cohort.table["label"], cohort.paths)):
        f = work / "feats" / f"{slide_id}.h5"
        if not f.is_file():
            continue
        truth = load_truth(path)
        boxes = {(int(x), int(y)): bool(inf) for (x, y, _, _), inf in zip(truth.regions, truth.informative)}
        with h5py.File(f, "r") as h5:
            coords = np.asarray(h5["coords"][:]).reshape(-1, 2)
        for j, (x, y) in enumerate(coords):
            rows.append({"slide_id": slide_id, "region": j, "x": int(x), "y": int(y), "label": int(label),
                         "informative": boxes.get((int(x), int(y))), "split": "train" if i % 2 == 0 else "test"})
    return Stage2Data(work / "feats", pd.DataFrame(rows))


def _stage1_normalization(model: nn.Module) -> str:
    """The normalization a cached stage-1 model was trained with (default ``"hipt"``)."""
    d = getattr(model, "pretrain_dir", None)
    if d is not None and (Path(d) / TEACHER_NAME).is_file():
        from hipt.models.weights import load_checkpoint

        meta = load_checkpoint(Path(d) / TEACHER_NAME).get("hipt") or {}
        return str(meta.get("normalization", "hipt"))
    return "hipt"
