"""Pretrained backbones on disk: the cache folder of a DINO configuration, and the slim teacher export.

A training run writes ``checkpoint.pth`` in the released DINO format (``teacher``/``student`` with
``backbone.*``/``head.*`` keys, ``args``, ...), which :func:`hipt.models.weights.load_backbone` and
``hipt.models.vit256_small(weights=...)`` / ``vit4k_xs(weights=...)`` read directly.
:func:`export_teacher` writes a slim ``teacher.pth`` (backbone only, with its architecture:
:func:`hipt.models.weights.save_backbone`), which :func:`load_pretrained` (that is,
:func:`hipt.models.vit.load_model`) rebuilds, tiny variants included.  :func:`model_dir` names the
folder a configuration trains into, so that one setting is trained once (the book's train-or-load cache,
``hipt.book.zoo.pretrained``, builds on it).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch.nn as nn

from hipt.models.vit import load_model
from hipt.models.weights import save_backbone
from hipt.paths import cache_dir
from hipt.pretrain.config import PretrainConfig, config_hash

__all__ = ["TEACHER_NAME", "model_dir", "load_pretrained", "export_teacher"]

#: file name of the slim backbone-only export in a model folder
TEACHER_NAME = "teacher.pth"


def model_dir(config: PretrainConfig, tag: str | None = None, *, label: str | None = None,
              data_key: str | None = None) -> Path:
    """The cache folder of a configuration: ``<cache>/models/stage<s>-<label>[-<tag>]-<hash>``.

    ``label``: names the setting in the folder name (default: ``config.preset``).  The hash covers every
    hashed field of ``config`` (:func:`hipt.pretrain.trainer.config_hash`); ``data_key`` replaces
    ``config.data`` in it when the data ``config`` names cannot be hashed as they are (e.g. data built on
    demand into a cache folder: the key then says what they are made of).
    """
    key = config if data_key is None else config.replace(data=data_key)
    name = f"stage{config.stage}-{label or config.preset}" + (f"-{tag}" if tag else "")
    return cache_dir("models") / f"{name}-{config_hash(key)}"


def load_pretrained(path: str | Path) -> nn.Module:
    """A backbone (eval mode) from a ``teacher.pth`` or a training ``checkpoint.pth``."""
    return load_model(path)


def export_teacher(result_or_checkpoint, dest: str | Path, config: PretrainConfig | None = None) -> Path:
    """Write the slim backbone-only export (``{'teacher': {'backbone.*'}, 'hipt': {...}}``) of a run."""
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
