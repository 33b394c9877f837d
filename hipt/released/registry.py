"""What the reference released: every embedding file, with its size, sha256 and download URL.

The HIPT reference repository (github.com/mahmoodlab/HIPT at commit 780fafae) ships, as Git LFS
objects, the embeddings its authors computed on TCGA and on three patch datasets with its released
checkpoints.  This module is the registry of those files, read from package data
(``hipt/data/released_manifest.csv.gz``, written by ``tools/released_manifest.py`` from the reference's
LFS pointer files): nothing here touches the network.

Three *sets*:

- ``slides``: ``vit256mean_tcga_slide_embeddings/<slide_id>.pt``, one float32 ``[M, 192]`` tensor per
  TCGA slide (10,678 slides, 341 MB): the ViT-4K [CLS] token of each 4096-px region;
- ``knn``: ``knn-subtyping/<encoder>/<study>_<encoder>_class_split_{train,test}_<k>.pkl``: pickled dicts
  ``{'embeddings': [N, D], 'labels': [N]}`` of mean slide embeddings for the 10 subtyping folds
  (encoders ``resnet50mean``, ``vit16mean``, ``vit256mean``; 160 MB);
- ``patch``: ``embeddings_patch_lib/<dataset>_{train,val}_<encoder>.pkl``: the same dict format for
  CRC-100K (``crc100k``, ``crc100knonorm``), BCSS and BreastPathQ patches (3.1 GB, most of it the
  ResNet-50 CRC-100K files).

A local copy mirrors the repository's paths under one *root*: ``<root>/<repository path>``.  So a git
clone of the reference with its LFS files is a valid root, and so is the download cache
(:func:`released_root`).
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from hipt.errors import HIPTError, InputFileError
from hipt.paths import PACKAGE_DIR, cache_dir

__all__ = [
    "REFERENCE_COMMIT",
    "MEDIA_URL",
    "EVAL_DIR",
    "SLIDE_DIR",
    "PATCH_DIR",
    "KNN_STUDIES",
    "KNN_ENCODERS",
    "PATCH_DATASETS",
    "PATCH_ENCODERS",
    "ReleasedFile",
    "manifest",
    "released_file",
    "slide_files",
    "knn_files",
    "patch_files",
    "released_root",
    "local_path",
    "missing_files",
    "knn_folds_dir",
    "slide_embeddings_dir",
    "patch_dir",
    "read_embedding_pickle",
]

REFERENCE_COMMIT = "780fafaed2e5b112bc1ed6e78852af1fe6714342"
#: GitHub serves a public repository's LFS objects from its media host: ``MEDIA_URL.format(path=...)``.
MEDIA_URL = "https://media.githubusercontent.com/media/mahmoodlab/HIPT/" + REFERENCE_COMMIT + "/{path}"

EVAL_DIR = "3-Self-Supervised-Eval"
SLIDE_DIR = f"{EVAL_DIR}/embeddings_slide_lib/embeddings_slide_lib"
PATCH_DIR = f"{EVAL_DIR}/embeddings_patch_lib"
_SLIDE_EMB = f"{SLIDE_DIR}/vit256mean_tcga_slide_embeddings"
_KNN = f"{SLIDE_DIR}/knn-subtyping"

KNN_STUDIES = ("tcga_brca", "tcga_lung", "tcga_kidney")
#: encoder folder → (what it is, embedding size)
KNN_ENCODERS = {
    "resnet50mean": ("ResNet-50 (ImageNet), mean of patch features", 1024),
    "vit16mean": ("ViT-16 (DINO), mean of ViT-256 patch [CLS] tokens", 384),
    "vit256mean": ("ViT-256 (DINO), mean of ViT-4K region [CLS] tokens", 192),
}
PATCH_DATASETS = ("crc100k", "crc100knonorm", "bcss", "breastpathq")
#: encoder file tag → the name the reference's tables print
PATCH_ENCODERS = {
    "resnet50_trunc": "ImageNet",
    "resnet50_tcga_brca_simclr": "SimCLR (BRCA)",
    "vits_tcga_brca_dino": "DINO (BRCA)",
}

_MANIFEST = PACKAGE_DIR / "data" / "released_manifest.csv.gz"
_LFS_MAGIC = b"version https://git-lfs.github.com/spec"


@dataclass(frozen=True)
class ReleasedFile:
    """One released LFS object: its path in the reference repository, size in bytes and sha256."""

    path: str
    sha256: str
    size: int

    @property
    def url(self) -> str:
        """Where GitHub serves the file's bytes (not the pointer)."""
        return MEDIA_URL.format(path=self.path)

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]


@lru_cache(maxsize=1)
def manifest() -> pd.DataFrame:
    """Every released file: columns ``path`` (in the reference repository), ``sha256``, ``size``; indexed by path."""
    if not _MANIFEST.is_file():
        raise HIPTError(f"{_MANIFEST}: the package's manifest of released files is missing (reinstall hipt)")
    with gzip.open(_MANIFEST, "rb") as fh:
        df = pd.read_csv(io.BytesIO(fh.read()), dtype={"path": str, "sha256": str, "size": "int64"})
    df["path"] = f"{EVAL_DIR}/" + df["path"]
    return df.set_index("path", drop=False)


def released_file(path: str) -> ReleasedFile:
    """The registry entry of one repository path (raises naming the path if the reference has no such file)."""
    df = manifest()
    if path not in df.index:
        raise HIPTError(f"{path}: not a released embedding file of the reference (commit {REFERENCE_COMMIT[:8]})")
    row = df.loc[path]
    return ReleasedFile(path, str(row["sha256"]), int(row["size"]))


def _entries(paths: Iterable[str]) -> list[ReleasedFile]:
    return [released_file(p) for p in paths]


def _slide_stem(slide_id: str) -> str:
    return slide_id.removesuffix(".pt").removesuffix(".svs")


def slide_files(slide_ids: Iterable[str], missing: str = "error") -> list[ReleasedFile]:
    """The ``[M, 192]`` embedding files of these slides (ids with or without ``.svs``/``.pt``).

    ``missing="error"`` raises naming the first slides the reference did not release;
    ``"drop"`` leaves them out.
    """
    df = manifest()
    ids = list(dict.fromkeys(_slide_stem(s) for s in slide_ids))
    paths = [f"{_SLIDE_EMB}/{s}.pt" for s in ids]
    absent = [s for s, p in zip(ids, paths) if p not in df.index]
    if absent and missing == "error":
        raise HIPTError(f"{len(absent)} of {len(ids)} slides have no released embedding, e.g. {absent[:3]}")
    return _entries(p for p in paths if p in df.index)


def _check_known(names: Iterable[str], known: Iterable[str], what: str) -> None:
    """Raise naming the first of ``names`` that is not one of ``known``."""
    known = list(known)
    for name in names:
        if name not in known:
            raise HIPTError(f"{name}: unknown {what} (one of {', '.join(known)})")


def knn_files(studies: Sequence[str] = KNN_STUDIES, encoders: Sequence[str] = tuple(KNN_ENCODERS),
              folds: Sequence[int] = range(10)) -> list[ReleasedFile]:
    """The pickled KNN folds (train and test of each fold) of these studies and encoders."""
    _check_known(studies, KNN_STUDIES, "KNN study")
    _check_known(encoders, KNN_ENCODERS, "KNN encoder")
    return _entries(f"{_KNN}/{e}/{s}_{e}_class_split_{split}_{k}.pkl"
                    for s in studies for e in encoders for k in folds for split in ("train", "test"))


def patch_files(datasets: Sequence[str] = PATCH_DATASETS, encoders: Sequence[str] = tuple(PATCH_ENCODERS),
                missing: str = "error") -> list[ReleasedFile]:
    """The train and val pickles of these patch datasets and encoders.

    All 24 combinations were released; ``missing="error"`` raises naming any pair absent from the
    manifest, ``"drop"`` leaves it out.
    """
    _check_known(datasets, PATCH_DATASETS, "patch dataset")
    _check_known(encoders, PATCH_ENCODERS, "patch encoder")
    df = manifest()
    paths = [f"{PATCH_DIR}/{d}_{split}_{e}.pkl" for d in datasets for e in encoders for split in ("train", "val")]
    absent = [p for p in paths if p not in df.index]
    if absent and missing == "error":
        raise HIPTError(f"the reference released no {', '.join(Path(p).name for p in absent)}")
    return _entries(p for p in paths if p in df.index)


def released_root(root: str | Path | None = None) -> Path:
    """The folder that holds (or will hold) the local copy: ``root`` if given, else ``$HIPT_RELEASED``,
    else ``<cache>/released`` (``$HIPT_CACHE``; see :mod:`hipt.paths`)."""
    if root is not None:
        return Path(root).expanduser()
    env = os.environ.get("HIPT_RELEASED")
    if env:
        return Path(env).expanduser()
    return cache_dir("released")


def local_path(file: ReleasedFile, root: str | Path | None = None) -> Path:
    """Where ``file`` lives under ``root`` (same relative path as in the reference repository)."""
    return released_root(root) / file.path


def missing_files(files: Iterable[ReleasedFile], root: str | Path | None = None) -> list[ReleasedFile]:
    """The files not present under ``root`` with their registered size (a cheap check; the sha256 is
    checked when a file is fetched)."""
    out = []
    for f in files:
        p = local_path(f, root)
        if not p.is_file() or p.stat().st_size != f.size:
            out.append(f)
    return out


def knn_folds_dir(root: str | Path | None = None) -> Path:
    """``<root>/…/knn-subtyping``: the ``folds_dir`` of :func:`hipt.knn.released_knn_aucs`."""
    return released_root(root) / _KNN


def slide_embeddings_dir(root: str | Path | None = None) -> Path:
    """``<root>/…/vit256mean_tcga_slide_embeddings``: a features folder of ``<slide_id>.pt`` files."""
    return released_root(root) / _SLIDE_EMB


def patch_dir(root: str | Path | None = None) -> Path:
    """``<root>/3-Self-Supervised-Eval/embeddings_patch_lib``."""
    return released_root(root) / PATCH_DIR


def read_embedding_pickle(path: str | Path, fetch_hint: str = "hipt released fetch") -> tuple[np.ndarray, np.ndarray]:
    """The ``(embeddings [N, D], labels [N])`` of one released pickle (a KNN fold or a patch dataset).

    The file is a pickled dict ``{'embeddings': [N, D] ndarray, 'labels': [N] ndarray}``; the arrays are
    returned as stored (float32 embeddings; labels are strings for the KNN folds and CRC-100K, ints for
    BCSS, floats in [0, 1] for BreastPathQ).  ``fetch_hint`` is the command that gets the file, quoted in
    the errors.

    Unpickling can run arbitrary code, so this function must only read trusted files.  It is used on the
    reference's released files, which ``hipt released fetch`` downloads and checks against the sha256
    recorded in the package's manifest (:mod:`hipt.released.registry`): the bytes are exactly those the
    reference's authors published.  Do not point it at pickles of unknown origin.

    Raises:
        InputFileError: one line naming the file when it is missing, a Git LFS pointer (a clone without
            ``git lfs pull``), not a pickle, or not a dict with those two keys and matching lengths.
    """
    path = Path(path)
    if not path.is_file():
        raise InputFileError(path, "released embedding file not found", f"get it with: {fetch_hint}")
    with open(path, "rb") as fh:
        head = fh.read(len(_LFS_MAGIC))
        if head == _LFS_MAGIC:
            raise InputFileError(path, "is a Git LFS pointer, not the embeddings",
                                 f"run 'git lfs pull' in the clone, or: {fetch_hint}")
        fh.seek(0)
        try:
            obj = pickle.load(fh)  # noqa: S301 (trusted, sha256-verified release files; see the docstring)
        except Exception as e:  # noqa: BLE001 (unpickling fails in many ways: EOFError, UnpicklingError, ...)
            raise InputFileError(path, f"cannot be read as a pickle ({type(e).__name__}: {e})") from None
    if not isinstance(obj, Mapping) or not {"embeddings", "labels"} <= set(obj):
        keys = sorted(map(str, obj))[:8] if isinstance(obj, Mapping) else type(obj).__name__
        raise InputFileError(path, f"expected a dict with keys 'embeddings' and 'labels', got {keys}")
    emb, labels = np.asarray(obj["embeddings"]), np.asarray(obj["labels"]).ravel()
    if emb.ndim != 2 or emb.shape[0] == 0:
        raise InputFileError(path, f"embeddings must be a non-empty [N, D] array, got shape {list(emb.shape)}")
    if len(labels) != len(emb):
        raise InputFileError(path, f"{len(emb)} embeddings but {len(labels)} labels")
    if not np.issubdtype(emb.dtype, np.number):
        raise InputFileError(path, f"embeddings are not numbers (dtype {emb.dtype})")
    # row blocks: a 0.8 GB file must not need a second 0.8 GB boolean array
    for start in range(0, len(emb), 16384):
        if not np.isfinite(emb[start:start + 16384]).all():
            raise InputFileError(path, "embeddings have NaN or infinite values")
    return emb, labels
