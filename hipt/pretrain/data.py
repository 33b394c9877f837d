"""Pretraining data: streams of patches (stage 1) and of feature grids (stage 2), with a resumable,
shardable sampler.

Every dataset here is *map-style and lazy*: it holds an index (which slide / region / file, a few
integers per item) and reads the pixels or features of one item when asked, so memory does not grow
with the data (the index grows by a few bytes per item; the in-memory phantom arrays are the one
exception, by design).  Items are addressed by a key ``(index, seed)``: the seed drives that item's
augmentation, so the same key always gives the same crops, in any worker.

:class:`StreamSampler` turns the dataset into an endless, reproducible stream of keys: pass ``p`` over
the data uses a permutation drawn from ``(seed, p)``; global position ``g`` (the g-th sample of the
run, across all processes) gets the seed ``hash(seed, g)``.  Step ``s`` of a run with global batch
``B`` consumes positions ``s·B … s·B + B − 1``; rank ``r`` of ``W`` takes its contiguous share
``s·B + r·B/W …``.  So (a) a run restarted at step ``s`` sees exactly the samples an uninterrupted run
would, and (b) W processes with batch ``B/W`` each see, together, exactly the batch one process with
batch ``B`` sees.

Datasets:

- :class:`ArrayPatches`: in-memory ``[N, H, W, 3]`` uint8 patches (phantom patches).
- :class:`ImageFolderPatches`: a folder tree of image files (PNG/JPEG/TIFF).
- :class:`SlidePatches`: 256-px patches read straight from slides, inside the regions of
  ``hipt patch`` coordinate files (no PNG dump).
- :class:`FeatureGrids`: the ``feats256`` ``[M, n, D]`` arrays of ``hipt extract`` files, one region
  at a time, as ``[D, H, W]`` grids.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import h5py
import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from hipt.errors import InputFileError
from hipt.io import data_files
from hipt.pretrain.augment import tokens_to_grid
from hipt.slide import open_slide
from hipt.tiling import load_coords

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"}

Key = tuple[int, int]  # (item index, augmentation seed)


def sample_seed(run_seed: int, position: int) -> int:
    """A 63-bit seed for the sample at global stream ``position`` of a run seeded ``run_seed``."""
    h = hashlib.blake2b(f"{run_seed}:{position}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & ((1 << 63) - 1)


class StreamSampler(Sampler[Key]):
    """Endless (or ``total_steps``-long) reproducible stream of ``(index, seed)`` keys for one rank.

    Args:
        n_items: dataset length N.
        global_batch: samples per step over all processes (B).
        seed: run seed.
        rank, world_size: this process's share (``B`` must be divisible by ``world_size``).
        start_step: first step to produce (resume).
        total_steps: stop after this step (exclusive); ``None`` = endless.
        shuffle: permute each pass (else the identity order).
    """

    def __init__(
        self,
        n_items: int,
        global_batch: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        start_step: int = 0,
        total_steps: int | None = None,
        shuffle: bool = True,
    ):
        if n_items <= 0:
            raise ValueError("the dataset is empty")
        if global_batch % world_size:
            raise ValueError(f"global batch {global_batch} is not divisible by {world_size} processes")
        self.n_items, self.global_batch, self.seed = n_items, global_batch, seed
        self.rank, self.world_size = rank, world_size
        self.local_batch = global_batch // world_size
        self.start_step, self.total_steps, self.shuffle = start_step, total_steps, shuffle
        self._perm_pass: int | None = None
        self._perm: np.ndarray | None = None

    def _permutation(self, p: int) -> np.ndarray:
        if self._perm_pass != p:
            # uint32 when it fits: 4 bytes per item (400 MB for the paper's ~10^8 patches, per process)
            dtype = np.uint32 if self.n_items < 2**32 else np.int64
            self._perm = np.arange(self.n_items, dtype=dtype)
            if self.shuffle:
                np.random.default_rng([self.seed, p]).shuffle(self._perm)
            self._perm_pass = p
        assert self._perm is not None
        return self._perm

    def key(self, position: int) -> Key:
        """The key of global stream position ``position``."""
        p, i = divmod(position, self.n_items)
        return int(self._permutation(p)[i]), sample_seed(self.seed, position)

    def __iter__(self) -> Iterator[Key]:
        step = self.start_step
        while self.total_steps is None or step < self.total_steps:
            first = step * self.global_batch + self.rank * self.local_batch
            for pos in range(first, first + self.local_batch):
                yield self.key(pos)
            step += 1

    def __len__(self) -> int:
        if self.total_steps is None:
            raise TypeError("an endless StreamSampler has no length")
        return max(0, self.total_steps - self.start_step) * self.local_batch


class _KeyedDataset(Dataset):
    """Base: ``__getitem__((index, seed))`` → ``transform(item, seed=seed)``; ``load(index)`` → raw item."""

    transform: Callable | None = None

    def load(self, index: int):  # pragma: no cover - abstract
        raise NotImplementedError

    def __getitem__(self, key: Key | int):
        index, seed = key if isinstance(key, tuple) else (int(key), None)
        item = self.load(index)
        if self.transform is None:
            return item
        return self.transform(item, seed=seed)


class ArrayPatches(_KeyedDataset):
    """In-memory patches ``[N, H, W, 3]`` uint8 (e.g. :func:`hipt.phantom.phantom_patches`)."""

    def __init__(self, images: np.ndarray, transform: Callable | None = None):
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ValueError(f"expected [N, H, W, 3] uint8 patches, got {images.shape} {images.dtype}")
        self.images, self.transform = images, transform

    def __len__(self) -> int:
        return len(self.images)

    def load(self, index: int) -> np.ndarray:
        return self.images[index]


class ImageFolderPatches(_KeyedDataset):
    """Every image file under ``root`` (recursively, sorted), read lazily as RGB."""

    def __init__(self, root: str | Path, transform: Callable | None = None):
        self.root = Path(root)
        if not self.root.is_dir():
            raise InputFileError(self.root, "not a folder of images")
        self.files = sorted(p for p in self.root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.files:
            raise InputFileError(self.root, "contains no image files", f"expected one of {sorted(IMAGE_SUFFIXES)}")
        self.transform = transform

    def __len__(self) -> int:
        return len(self.files)

    def load(self, index: int) -> np.ndarray:
        from PIL import Image

        with Image.open(self.files[index]) as im:
            return np.asarray(im.convert("RGB"))


class SlidePatches(_KeyedDataset):
    """Patches read straight from slides, inside the regions found by ``hipt patch``.

    Args:
        coords: ``coords/<slide>.h5`` files written by ``hipt patch`` (or a ``hipt patch`` output folder).
        patch_size: patch side at the regions' resolution (default: the files' patch size, 256).
        slides_dir: where the slides are, if they moved since patching (matched by file name; default:
            the ``slide_path`` stored in each coords file).
        transform: applied as ``transform(patch, seed=seed)``.

    Item ``i`` is patch ``(r, c)`` (row-major) of region ``k``; the index holds 3 integers per region
    (slide number, level-0 corner), not one entry per patch, and slides are opened lazily, once per
    worker process, with the mpp used when patching.
    """

    def __init__(
        self,
        coords: Sequence[str | Path] | str | Path,
        patch_size: int | None = None,
        slides_dir: str | Path | None = None,
        transform: Callable | None = None,
    ):
        if isinstance(coords, (str, Path)):
            folder = Path(coords) / "coords" if (Path(coords) / "coords").is_dir() else Path(coords)
            coords = data_files(folder, "*.h5")
            if not coords:
                raise InputFileError(folder, "contains no coordinate files", "run `hipt patch` first")
        self.transform = transform
        # per slide: (slide path, slide mpp, target mpp, patch size, level-0 patch step)
        self.sources: list[tuple[Path, float, float, int, float]] = []
        rows, per_region = [], []
        for s, f in enumerate(coords):
            rc = load_coords(f)
            size = patch_size or rc.patch_size
            if rc.region_size % size:
                raise InputFileError(f, f"region size {rc.region_size} is not a multiple of the patch size {size}")
            n = rc.region_size // size
            slide = Path(slides_dir) / rc.slide_path.name if slides_dir is not None else rc.slide_path
            self.sources.append((slide, rc.slide_mpp, rc.target_mpp, size, rc.level0_region_size / n))
            rows.append(np.column_stack([np.full(len(rc), s), rc.coords]).astype(np.int64))
            per_region.append(np.full(len(rc), n * n, np.int64))
        self.regions = np.concatenate(rows) if rows else np.zeros((0, 3), np.int64)
        counts = np.concatenate(per_region) if per_region else np.zeros(0, np.int64)
        self._offsets = np.concatenate([[0], np.cumsum(counts)])
        self._open: dict[int, object] = {}

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def _slide(self, s: int):
        if s not in self._open:
            self._open[s] = open_slide(self.sources[s][0], mpp=self.sources[s][1])
        return self._open[s]

    def load(self, index: int) -> np.ndarray:
        k = int(np.searchsorted(self._offsets, index, side="right") - 1)
        s, x0, y0 = (int(v) for v in self.regions[k])
        _, _, target_mpp, size, step = self.sources[s]
        n = math.isqrt(int(self._offsets[k + 1] - self._offsets[k]))
        r, c = divmod(index - int(self._offsets[k]), n)
        xy = (int(round(x0 + c * step)), int(round(y0 + r * step)))
        return self._slide(s).read_region(xy, size, target_mpp=target_mpp)

    def __getstate__(self):  # slide handles are not pickled into workers
        state = self.__dict__.copy()
        state["_open"] = {}
        return state


class FeatureGrids(_KeyedDataset):
    """Regions of ``hipt extract`` files as ``[D, H, W]`` feature grids (stage-2 pretraining data).

    Args:
        files: HDF5 files with a ``feats256`` dataset ``[M, n, D]`` (n = H·W, row-major) — or a folder
            of them.  Also accepted: ``.pt`` files holding one ``[n, D]`` tensor per region (the
            reference's ``SeqDataset`` format) — or any in-memory ``[M, n, D]`` array via
            :meth:`from_array`.
        grid_hw: the grid shape if not square.

    Reads one region per item (h5py slicing of ``feats256[m]``); files are opened lazily per worker.
    """

    def __init__(self, files: Sequence[str | Path] | str | Path, transform: Callable | None = None, grid_hw=None):
        if isinstance(files, (str, Path)):
            folder = Path(files)
            if not folder.is_dir():
                raise InputFileError(folder, "not a folder of feature files")
            files = data_files(folder, "*.h5", "*.pt")
            if not files:
                raise InputFileError(folder, "contains no .h5 or .pt feature files", "run `hipt extract` first")
        self.files = [Path(f) for f in files]
        self.transform, self.grid_hw = transform, grid_hw
        index = []
        for i, f in enumerate(self.files):
            if f.suffix == ".pt":
                index.append((i, -1))
                continue
            try:
                with h5py.File(f, "r") as h5:
                    if "feats256" not in h5:
                        raise InputFileError(f, "has no 'feats256' dataset", "extract it with `hipt extract`")
                    m = h5["feats256"].shape[0]
            except OSError as e:
                raise InputFileError(f, f"cannot be read as HDF5 ({e})") from None
            index.extend((i, j) for j in range(m))
        self.index = np.asarray(index, dtype=np.int64).reshape(-1, 2)
        self._h5: dict[int, object] = {}
        self._array: np.ndarray | None = None

    @classmethod
    def from_array(cls, feats: np.ndarray, transform: Callable | None = None, grid_hw=None) -> FeatureGrids:
        """An in-memory ``[M, n, D]`` array of region features."""
        self = cls.__new__(cls)
        self.files, self.transform, self.grid_hw = [], transform, grid_hw
        self._array = np.asarray(feats)
        self.index = np.column_stack([np.zeros(len(self._array), np.int64), np.arange(len(self._array))])
        self._h5 = {}
        return self

    def __len__(self) -> int:
        return len(self.index)

    def tokens(self, index: int) -> np.ndarray:
        """``[n, D]`` float32 tokens of item ``index``."""
        i, j = (int(v) for v in self.index[index])
        if self._array is not None:
            return np.asarray(self._array[j], dtype=np.float32)
        f = self.files[i]
        if j < 0:
            return torch.load(f, map_location="cpu", weights_only=True).float().numpy()
        if i not in self._h5:
            self._h5[i] = h5py.File(f, "r")
        return np.asarray(self._h5[i]["feats256"][j], dtype=np.float32)

    def load(self, index: int) -> torch.Tensor:
        return tokens_to_grid(self.tokens(index), self.grid_hw)

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_h5"] = {}
        return state


def collate_crops(batch: list[list[torch.Tensor]]) -> list[torch.Tensor]:
    """``B`` lists of ``ncrops`` views → ``ncrops`` tensors ``[B, …]``."""
    return [torch.stack(views) for views in zip(*batch)]
