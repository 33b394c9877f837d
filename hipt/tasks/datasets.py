"""Bags of pre-extracted features for slide-level training: one slide, or all slides of one patient.

A *bag* is what the slide-level models of :mod:`hipt.models.mil` read: a dict of tensors from one
``hipt extract`` file ``<features_dir>/<slide_id>.h5``:

- ``feats256`` ``[M, n, D]``: ViT-256 [CLS] tokens of the n patches of each of the M regions;
- ``feats4k`` ``[M, D4k]``: ViT-4096 [CLS] token of each region;
- ``coords`` ``[M, 2]``: level-0 top-left corner of each region.

Also read: the reference's released ``<slide_id>.pt`` layout (a ``[M, 192]`` tensor → ``feats4k``, or a
``[M, 256, 384]`` tensor → ``feats256``), loaded with ``torch.load(weights_only=True)``.

:class:`BagDataset` is lazy: an item is read from disk when asked for, and only the keys the model
needs (e.g. just ``feats4k`` for frozen HIPT, a few KB per slide), so memory does not grow with the
cohort; an optional LRU cache keeps up to ``cache_mb`` megabytes of decoded bags (useful on a CPU for
the book's small cohorts, where reading dominates).  Patient-level bags (survival, as MCAT and the HIPT
authors do, reference issue #14) concatenate the slides of one case along M; their ``coords`` are
offset so that the slides lie side by side and never overlap (graph models then see no false
neighbours across slides).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import torch

from hipt.errors import InputFileError

__all__ = ["FEATURE_KEYS", "BagItem", "BagDataset", "feature_path", "read_bag", "concat_bags", "bag_items"]

log = logging.getLogger("hipt.tasks")

FEATURE_KEYS = ("feats256", "feats4k", "coords")
_SUFFIXES = (".h5", ".pt")


def feature_path(features_dir: str | Path, slide_id: str) -> Path | None:
    """``<features_dir>/<slide_id>.h5`` (or ``.pt``) if it exists, else None."""
    for suffix in _SUFFIXES:
        p = Path(features_dir) / f"{slide_id}{suffix}"
        if p.is_file():
            return p
    return None


def read_bag(path: str | Path, keys: Sequence[str] = FEATURE_KEYS) -> dict[str, torch.Tensor]:
    """Read the ``keys`` present in one feature file as float32 tensors (``coords`` as float64 → float32).

    Raises :class:`~hipt.errors.InputFileError` naming the file when it cannot be read or holds none of
    the feature arrays asked for.
    """
    path = Path(path)
    out: dict[str, torch.Tensor] = {}
    if path.suffix == ".pt":
        try:
            t = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 (unpickling raises many kinds)
            raise InputFileError(path, f"cannot be read as a feature tensor ({e})") from None
        if not isinstance(t, torch.Tensor) or t.ndim not in (2, 3):
            raise InputFileError(path, "expected a [M, D] region or [M, n, D] patch feature tensor")
        key = "feats4k" if t.ndim == 2 else "feats256"
        if key in keys:
            out[key] = t.float()
    else:
        try:
            with h5py.File(path, "r") as f:
                for k in keys:
                    if k in f:
                        out[k] = torch.from_numpy(np.asarray(f[k][()], dtype=np.float32))
        except OSError as e:
            raise InputFileError(path, f"cannot be read as HDF5 ({e})") from None
    if not any(k in out for k in ("feats256", "feats4k")):
        raise InputFileError(path, f"holds none of the feature arrays {[k for k in keys if k != 'coords']}")
    m = {k: v.shape[0] for k, v in out.items()}
    if len(set(m.values())) > 1:
        raise InputFileError(path, f"arrays disagree on the number of regions M: {m}")
    return out


def concat_bags(bags: Sequence[dict[str, torch.Tensor]], gap_px: float = 8192.0) -> dict[str, torch.Tensor]:
    """Concatenate the bags of several slides along M (a patient-level bag).

    Keys present in every bag are kept.  ``coords`` of slide j are shifted in x past the previous
    slides' extent plus ``gap_px``, so positions from different slides never coincide.
    """
    if len(bags) == 1:
        return dict(bags[0])
    keys = set.intersection(*(set(b) for b in bags))
    out = {}
    for k in keys:
        if k == "coords":
            shifted, x0 = [], 0.0
            for b in bags:
                c = b["coords"].clone()
                c[:, 0] += x0 - c[:, 0].min()
                shifted.append(c)
                x0 = float(c[:, 0].max()) + gap_px
            out[k] = torch.cat(shifted)
        else:
            out[k] = torch.cat([b[k] for b in bags])
    return out


@dataclass(frozen=True)
class BagItem:
    """One training unit: an id (slide or case), its slides, its label and survival data."""

    id: str
    slide_ids: tuple[str, ...]
    label: int
    survival_months: float | None = None
    censorship: int | None = None
    paths: tuple[Path, ...] = field(default=(), compare=False)


def bag_items(frame: pd.DataFrame, kind: str = "subtype") -> list[BagItem]:
    """Items of a task frame (e.g. :meth:`hipt.tasks.TaskData.frame`).

    ``kind="subtype"``: one item per row (``slide_id``, ``label``).  ``kind="survival"``: one item per case
    (``case_id``, ``slide_ids`` — a tuple or one slide per row, grouped —, ``label`` = time bin,
    ``survival_months``, ``censorship``).
    """
    if kind == "subtype":
        return [BagItem(str(r.slide_id), (str(r.slide_id),), int(r.label)) for r in frame.itertuples()]
    if kind != "survival":
        raise ValueError(f"kind must be 'subtype' or 'survival', not {kind!r}")
    if "slide_ids" not in frame.columns:
        frame = frame.groupby("case_id", sort=False).agg(
            slide_ids=("slide_id", tuple), label=("label", "first"),
            survival_months=("survival_months", "first"), censorship=("censorship", "first"),
        ).reset_index()
    return [
        BagItem(str(r.case_id), tuple(str(s) for s in r.slide_ids), int(r.label), float(r.survival_months), int(r.censorship))
        for r in frame.itertuples()
    ]


class BagDataset(torch.utils.data.Dataset):
    """Lazily loaded bags of features, one item per slide or per patient.

    Args:
        features_dir: folder of ``<slide_id>.h5`` (or ``.pt``) feature files.
        items: the units (:func:`bag_items`).
        keys: arrays to read (only these are loaded).
        missing: ``"error"`` (default): a unit whose feature file is absent raises an
            :class:`~hipt.errors.InputFileError` naming it; ``"drop"``: such slides are dropped (a case
            with none left is dropped) and the count logged, as the reference drops slides without a
            4096-px region.
        cache_mb: keep up to this many megabytes of decoded bags in an LRU cache (0: none).

    Items are dicts: ``bag`` (tensors), ``label`` ``[1]`` long, ``id``, and for survival ``time``
    ``[1]`` and ``censorship`` ``[1]``.  Use ``DataLoader(..., batch_size=None)`` or index directly.
    """

    def __init__(
        self,
        features_dir: str | Path,
        items: Sequence[BagItem],
        keys: Sequence[str] = FEATURE_KEYS,
        missing: str = "error",
        cache_mb: float = 0.0,
    ) -> None:
        if missing not in ("error", "drop"):
            raise ValueError(f"missing must be 'error' or 'drop', not {missing!r}")
        self.features_dir = Path(features_dir)
        if not self.features_dir.is_dir():
            raise InputFileError(self.features_dir, "feature folder not found")
        self.keys = tuple(keys)
        resolved, absent = [], []
        for it in items:
            found = [(s, feature_path(self.features_dir, s)) for s in it.slide_ids]
            absent += [s for s, p in found if p is None]
            kept = tuple((s, p) for s, p in found if p is not None)
            if kept:
                resolved.append(
                    BagItem(it.id, tuple(s for s, _ in kept), it.label, it.survival_months, it.censorship,
                            tuple(p for _, p in kept))
                )
        if absent:
            if missing == "error":
                raise InputFileError(
                    self.features_dir / f"{absent[0]}.h5",
                    f"feature file not found ({len(absent)} of the task's slides have none here, e.g. {absent[:3]})",
                    "run 'hipt extract' for them, or pass missing='drop'",
                )
            log.info("%s: %d slides without a feature file dropped (%d units left of %d)",
                     self.features_dir, len(absent), len(resolved), len(items))
        self.items = resolved
        self.cache_bytes = int(cache_mb * 2**20)
        self._cache: OrderedDict[int, dict[str, torch.Tensor]] = OrderedDict()
        self._cached = 0

    def __len__(self) -> int:
        return len(self.items)

    @property
    def labels(self) -> np.ndarray:
        """``[N]`` labels (class, or time bin), without reading any feature file."""
        return np.array([it.label for it in self.items], dtype=np.int64)

    @property
    def censorship(self) -> np.ndarray | None:
        if self.items and self.items[0].censorship is None:
            return None
        return np.array([it.censorship for it in self.items], dtype=np.int64)

    @property
    def survival_months(self) -> np.ndarray | None:
        if self.items and self.items[0].survival_months is None:
            return None
        return np.array([it.survival_months for it in self.items], dtype=np.float64)

    def load(self, i: int) -> dict[str, torch.Tensor]:
        """The bag of item ``i`` (through the cache)."""
        if i in self._cache:
            self._cache.move_to_end(i)
            return self._cache[i]
        bag = concat_bags([read_bag(p, self.keys) for p in self.items[i].paths])
        if self.cache_bytes > 0:
            size = sum(t.numel() * t.element_size() for t in bag.values())
            if size <= self.cache_bytes:
                self._cache[i] = bag
                self._cached += size
                while self._cached > self.cache_bytes:
                    _, old = self._cache.popitem(last=False)
                    self._cached -= sum(t.numel() * t.element_size() for t in old.values())
        return bag

    def __getitem__(self, i: int) -> dict:
        it = self.items[i]
        out = {"bag": self.load(i), "label": torch.tensor([it.label]), "id": it.id}
        if it.censorship is not None:
            out["time"] = torch.tensor([it.survival_months], dtype=torch.float32)
            out["censorship"] = torch.tensor([it.censorship], dtype=torch.float32)
        return out
