"""Train-or-load: pretrained backbones cached under ``hipt.paths.cache_dir("models")``, and (for the
``cpu-tiny`` preset) the phantom data that stage 2 needs.  The ``paper`` preset pretrains on real data
only: ``pretrained(stage, "paper")`` needs ``data`` (a folder of patches for stage 1, of ``hipt extract``
features for stage 2) and refuses phantom data before any work
(:func:`hipt.pretrain.trainer.check_pretraining_data`).

A training run writes ``checkpoint.pth`` in the released DINO format (``teacher``/``student`` with
``backbone.*``/``head.*`` keys, ``args``, ...), which :func:`hipt.models.weights.load_backbone` and
``hipt.models.vit256_small(weights=...)`` / ``vit4k_xs(weights=...)`` read directly.  At the end,
``pretrained`` also writes a slim ``teacher.pth`` (backbone only, with its architecture:
:func:`hipt.models.weights.save_backbone`), which :func:`hipt.models.vit.load_model` rebuilds, tiny
variants included.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch.nn as nn

from hipt.io import cache_lock
from hipt.paths import cache_dir
from hipt.pretrain.trainer import PretrainConfig, check_pretraining_data, config_hash, make_config, train

TEACHER_NAME = "teacher.pth"


def model_dir(config: PretrainConfig, tag: str | None = None) -> Path:
    """The cache folder of a configuration: ``<cache>/models/stage<s>-<cpu|paper>[-<tag>]-<hash>``.

    The same folder ``hipt.zoo`` uses, so the book's chapters share one trained model per setting.
    For stage 2 on the default phantom data the hash leaves out ``data`` (a cache path) and takes in
    what that data is made of instead: the stage-1 model of the same preset, whose features it trains
    on, and the ``hipt.zoo`` preset's region and patch sizes.  A new stage-1 model or a new cohort
    geometry, or a new version of the phantom generator behind its cohort, means a new stage-2 model,
    never a stale one.
    """
    key = config
    if config.stage == 2 and config.data == "phantom":
        from hipt import zoo

        from hipt.phantom import COHORT_VERSION

        p = zoo.get_preset(config.preset)  # the pipeline preset of this pretraining preset (cpu-tiny: cpu)
        cohort = p.stage2_cohort[0] if p.stage2_cohort else None
        # the generator version of the cohort it trains on: a regenerated cohort means a new model
        version = f":{cohort}-v{COHORT_VERSION[cohort]}" if cohort and COHORT_VERSION.get(cohort, 1) > 1 else ""
        key = config.replace(data=f"phantom:{model_dir(make_config(1, config.preset)).name}"
                                  f":r{p.region_size}p{p.patch_size}{version}")
    from hipt import zoo

    name = f"stage{config.stage}-{zoo.get_preset(config.preset).name}" + (f"-{tag}" if tag else "")
    return cache_dir("models") / f"{name}-{config_hash(key)}"


def load_pretrained(path: str | Path) -> nn.Module:
    """A backbone (eval mode) from a ``teacher.pth`` or a training ``checkpoint.pth``."""
    from hipt.models.vit import load_model

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
        stage: 1 (ViT256 on patches) or 2 (ViT4K on feature grids).  With ``cpu-tiny``, by default phantom
            patches (stage 1) and the stage-1 features of the book's unlabelled phantom cohort
            (``hipt.zoo.pretraining_features``; stage 2).
        preset: ``"cpu-tiny"`` (minutes on a CPU), ``"gpu"`` (the paper's networks, minutes on a GPU; phantom or
            real data) or ``"paper"`` (every reference setting; pass ``data``:
            a folder of patches or a ``hipt patch`` folder for stage 1, a folder of ``hipt extract``
            features for stage 2; phantom data raise :class:`hipt.pretrain.trainer.PaperDataError`).
        force: retrain even if cached.
        dataset: train on this dataset instead of ``config.data`` (then name it with ``tag``: the cache
            key is the configuration plus the tag, it cannot hash the data).
        overrides: :class:`PretrainConfig` fields.

    Returns the backbone in eval mode, with ``.pretrain_dir`` (the cache folder) set.
    """
    config = make_config(stage, preset, **overrides)
    check_pretraining_data(config, dataset)  # the paper preset on phantom data: refused before any work
    if dataset is not None and not tag:
        raise ValueError("pretrained(dataset=...) needs a tag naming the data (it is part of the cache key)")
    out = model_dir(config, tag)
    teacher_path = out / TEACHER_NAME
    with cache_lock(out):  # a second process waits here, then loads what the first one trained
        model = _train_or_load(stage, preset, config, out, teacher_path, force, progress, dataset)
    model.pretrain_dir = out  # type: ignore[attr-defined]
    return model


def _train_or_load(stage, preset, config, out, teacher_path, force, progress, dataset) -> nn.Module:
    if teacher_path.is_file() and not force:
        model = load_pretrained(teacher_path)
    else:
        if force and (out / "checkpoint.pth").is_file():
            (out / "checkpoint.pth").unlink()
        if stage == 2 and dataset is None and config.data == "phantom":
            from hipt import zoo  # the book's unlabelled pretraining cohort, stage-1 features (cpu-tiny, gpu)

            config = config.replace(data=str(zoo.pretraining_features(preset, progress=progress)))
        result = train(config.replace(out_dir=str(out), progress=progress), dataset)
        export_teacher(result, teacher_path, config)
        model = result.teacher.eval()
    return model


# ------------------------------------------------------------------------------------------------
# ground truth of phantom regions (stage-2 evaluation)
# ------------------------------------------------------------------------------------------------


def _truth_matches(features_dir: str | Path, table):
    """The regions of each slide's ``hipt extract`` file matched to the slide's phantom ground truth.

    Yields, for each row ``i`` of ``table`` (``slide_id``, ``path``) whose ``<slide_id>.h5`` exists,
    ``(i, h5 path, truth, coords [M, 2], match [M])``: ``match[j]`` is the index into ``truth.regions`` of
    the truth region whose level-0 corner equals region ``j``'s corner, or −1 (e.g. a glass border region
    kept by ``hipt patch``).
    """
    import h5py

    from hipt.phantom import load_truth

    for i, (slide_id, path) in enumerate(zip(table["slide_id"], table["path"])):
        f = Path(features_dir) / f"{slide_id}.h5"
        if not f.is_file():
            continue
        truth = load_truth(path)
        corners = {(int(x), int(y)): k for k, (x, y, _, _) in enumerate(truth.regions)}
        with h5py.File(f, "r") as h5:
            coords = np.asarray(h5["coords"][:]).reshape(-1, 2)
        yield i, f, truth, coords, np.array([corners.get((int(x), int(y)), -1) for x, y in coords], np.int64)


def region_truth(features_dir: str | Path, table) -> "pd.DataFrame":  # noqa: F821
    """One row per region of the ``hipt extract`` files of a phantom cohort, with its ground truth.

    Args:
        features_dir: folder of ``<slide_id>.h5`` feature files.
        table: the cohort table (``slide_id``, ``path``, ``label``), e.g. ``make_cohort(...).table``.

    Returns a DataFrame in file order (slides in table order, regions in file order): ``slide_id``,
    ``region`` (row in the file), ``x``, ``y`` (level-0 corner), ``label`` (slide class) and
    ``informative`` (the region holds the label-defining arrangement; NaN for a region that is not one of
    the slide's truth regions, e.g. a glass border region kept by ``hipt patch``).
    """
    import pandas as pd

    rows = []
    for i, _, truth, coords, match in _truth_matches(features_dir, table):
        slide_id, label = table["slide_id"].iloc[i], int(table["label"].iloc[i])
        for j, ((x, y), k) in enumerate(zip(coords, match)):
            rows.append({"slide_id": slide_id, "region": j, "x": int(x), "y": int(y), "label": label,
                         "informative": bool(truth.informative[k]) if k >= 0 else np.nan})
    return pd.DataFrame(rows)


def _region_rows(features_dir: str | Path, regions, key: str) -> list:
    """``key`` (``feats256`` or ``feats4k``) of each row of a ``region_truth`` table, reading each
    slide's file once (rows of one slide are consecutive in ``region_truth``'s order)."""
    from hipt.errors import InputFileError
    from hipt.features import load_features

    out, cache = [], {}
    for slide_id, j in zip(regions["slide_id"], regions["region"]):
        if slide_id not in cache:
            path = Path(features_dir) / f"{slide_id}.h5"
            cache = {slide_id: load_features(path)}
            if key not in cache[slide_id]:
                raise InputFileError(path, f"no {key} in this features file",
                                     "extract with a region encoder: hipt extract --vit4k ..." if key == "feats4k" else None)
        out.append(cache[slide_id][key][int(j)])
    return out


def region_grids(features_dir: str | Path, regions) -> np.ndarray:
    """``[M, D, H, W]`` float32 feature grids of the rows of ``region_truth``'s table."""
    from hipt.pretrain.augment import tokens_to_grid

    return np.stack([tokens_to_grid(t).numpy() for t in _region_rows(features_dir, regions, "feats256")])


def region_tokens(features_dir: str | Path, regions) -> np.ndarray:
    """``[M, D4k]`` float32 region tokens (``feats4k``, the ViT-4K [CLS]) of the rows of
    ``region_truth``'s table."""
    return np.stack([t.numpy() for t in _region_rows(features_dir, regions, "feats4k")])


# ------------------------------------------------------------------------------------------------
# token-bank regions: many distinct regions at the cost of one extracted cohort
# ------------------------------------------------------------------------------------------------


def token_bank(features_dir: str | Path, table) -> dict[int, np.ndarray]:
    """The stage-1 patch tokens of a phantom cohort, grouped by the true tissue type of their cell.

    Rendering and extracting phantom regions costs about 0.5 s per 8×8 region on 2 CPU cores, so a
    CPU cohort holds a few hundred regions; stage-2 DINO needs thousands of *distinct* regions (see
    ``benchmarks/bench_stage2_arrangement.py``).  The bank and :func:`bank_grids` build as many regions
    as wanted from the real tokens of one extracted cohort: a layout (e.g.
    :func:`hipt.phantom.context_region`) gets, in every cell, a random real token of that cell's tissue.

    Args:
        features_dir: ``hipt extract`` files (``feats256``) of the cohort.
        table: its cohort table (``slide_id``, ``path``).

    Returns:
        tissue code → ``[n_code, D]`` float32 tokens (only regions that are truth regions of their slide).
    """
    from hipt.features import load_features

    bank: dict[int, list[np.ndarray]] = {}
    for _, f, truth, _, match in _truth_matches(features_dir, table):
        layouts = truth.region_layouts()
        feats = load_features(f)["feats256"]
        for j, k in enumerate(match):
            if k < 0:
                continue
            lay = layouts[k]
            tokens = np.asarray(feats[j], dtype=np.float32)  # [n, D], row-major like lay.ravel()
            if len(tokens) != lay.size:
                raise ValueError(f"{f}: region {j} has {len(tokens)} tokens, its layout {lay.shape[0]}×{lay.shape[1]} cells")
            for code, tok in zip(lay.ravel(), tokens):
                bank.setdefault(int(code), []).append(tok)
    if not bank:
        raise ValueError(f"token_bank: no truth region of the table found in {features_dir}")
    return {c: np.stack(v) for c, v in sorted(bank.items())}


def bank_grids(layouts: np.ndarray, bank: dict[int, np.ndarray], seed: int = 0, dtype=np.float32) -> np.ndarray:
    """``[N, G*G, D]`` token grids for ``[N, G, G]`` layouts: every cell a random bank token of its type.

    The tokens of one grid come from many slides, so a grid carries no slide-level stain or texture
    draw: its only structure is the layout.  Deterministic from ``seed``.
    """
    layouts = np.asarray(layouts)
    missing = sorted(set(np.unique(layouts).tolist()) - set(bank))
    if missing:
        raise ValueError(f"bank_grids: the bank has no token of tissue code(s) {missing}")
    rng = np.random.default_rng(seed)
    flat = layouts.reshape(len(layouts), -1)
    out = np.empty((*flat.shape, next(iter(bank.values())).shape[1]), dtype)
    for code, tokens in bank.items():
        m = flat == code
        out[m] = tokens[rng.integers(0, len(tokens), int(m.sum()))]
    return out
