"""Hierarchical feature extraction: every region of every slide through ViT256-16 and ViT4096-256.

``hipt extract --coords PATCH_DIR --slides SLIDE_DIR --out OUT`` reads the regions that ``hipt patch``
kept (``PATCH_DIR/coords/<slide>.h5``), encodes them with :class:`hipt.models.HIPT4K` and writes one
HDF5 file per slide, ``OUT/<slide>.h5``:

- ``feats256`` ``[M, n, D256]``: ViT256 [CLS] token of each of the n = (R/256)² patches of each of the M
  regions, row-major within a region (``[M, 256, 384]`` for 4096-px regions and ViT-S/16) — the input of
  the slide head :class:`hipt.models.HIPTSlide` and the stage-2 pretraining data.  Stored as float32 by
  default; ``storage_dtype="float16"`` halves the files (the values are LayerNorm outputs of order 1,
  float16 keeps ~3 significant digits, as much as bf16 compute produces anyway);
- ``feats4k`` ``[M, D4k]``: ViT4096 [CLS] per region (float32), only when a ViT4K is given;
- ``coords`` ``[M, 2]`` int64: the regions' level-0 top-left ``x, y`` (as in the coords file);
- attributes: ``models`` (JSON: architectures and weights), ``dtype`` (compute: ``fp32``/``bf16``/``fp16``),
  ``normalization`` (JSON mean/std), ``storage_dtype``, ``region_size``, ``patch_size``, ``grid``
  (patches per region, rows × cols), ``target_mpp``, ``slide_mpp``, ``slide_path``, ``coords_path``,
  ``n_regions``, ``hipt_version``.

Robust batch behaviour:

- **resumable**: a slide whose output file exists (complete by construction, see next) is skipped;
- **atomic**: each file is written to a temporary name and renamed when complete
  (:func:`hipt.io.atomic_path`), so a killed run leaves no half file;
- **failures recorded**: a slide that fails is logged, recorded in ``OUT/summary.csv``
  (``slide,status,n_regions,reason``, as ``hipt patch``'s) and skipped; the exit code is 1 if any failed;
- **reading overlaps compute** (:class:`RegionReader`): regions are read and decoded by ``--workers``
  threads (``--reader thread``, the default: OpenSlide decodes tiles without holding the GIL, and a
  thread writes the pixels straight into the batch) or DataLoader worker processes (``--reader
  process``: no GIL at all, one more copy per region), a few batches ahead of the model; on a GPU each batch lands in pinned memory, is copied
  on a side stream (``non_blocking``) while the previous batch is encoded, and the features of batch
  *k* are written while batch *k + 1* computes;
- **bounded memory**: a bounded number of batches of pixels is in flight
  (:attr:`RegionReader.max_batches_in_flight`) and features are written to the file batch by batch, so
  memory grows with ``--batch-regions`` and ``--workers``, not with the slide;
- **torch.compile** (``--compile``, off by default): the ViT256 is compiled once per process for the
  fixed patch batch; it costs tens of seconds up front, so it pays back only where the encoder, not the
  reader, limits the run (see the Performance appendix);
- **precision** (:mod:`hipt.precision`, printed at the start): ``--dtype bf16`` runs under
  ``torch.autocast(bfloat16)`` (tested: cosine similarity ≥ 0.999 with fp32 features), ``fp16`` under
  float16 autocast (CUDA only), ``auto`` takes bf16 on a GPU that has it, fp16 on an older one (T4) and
  fp32 on a CPU; the default stays fp32.  Inference needs no gradient scaler;
- **several GPUs / nodes**: under ``torchrun`` each rank takes the slides ``i ≡ rank (mod world_size)``
  of the sorted list (no duplicated work) on ``cuda:LOCAL_RANK`` when the device is CUDA; a gloo process
  group is used only for the final barrier before rank 0 writes the summary.  A single process needs no
  process group.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from hipt import __version__, models
from hipt.device import resolve_device
from hipt.errors import HIPTError, InputFileError
from hipt.io import atomic_path, data_files
from hipt.jobs import (
    SUMMARY_NAME,
    failure_reason,
    merge_rank_summaries,
    rank_summary_path,
    record_results,
    write_summary,
)
from hipt.models import HIPT4K, load_model
from hipt.models.hipt4k import _stats
from hipt.slide import iter_slide_files, open_slide
from hipt.tiling import load_coords
from hipt.precision import PRECISIONS, autocast, describe, resolve_precision

__all__ = [
    "ExtractResult",
    "READERS",
    "RegionDataset",
    "RegionReader",
    "build_encoder",
    "extract_folder",
    "extract_slide",
    "load_features",
    "add_arguments",
    "run",
]

# ------------------------------------------------------------------------------------------ models
def _load_vit(spec: Any, kind: str) -> torch.nn.Module | None:
    """A model spec → a ViT in eval mode.

    ``spec``: a module (used as is); ``None``/``"none"`` (no model); ``"random:<factory>"`` (random
    weights of ``hipt.models.<factory>``, seed 0, for tests and demos); a registry name, path or URL
    of a checkpoint (architecture read from the checkpoint, see :func:`hipt.models.load_model`).
    """
    if spec is None or (isinstance(spec, str) and spec.lower() == "none"):
        return None
    if isinstance(spec, torch.nn.Module):
        return spec.eval()
    s = str(spec)
    if s.startswith("random:"):
        factory = getattr(models, s.split(":", 1)[1], None)
        if factory is None or not callable(factory):
            raise HIPTError(f"{s}: unknown model factory (try random:vit256_tiny or random:vit4k_tiny)")
        torch.manual_seed(0)
        return factory().eval()
    return load_model(s).eval()


def build_encoder(vit256: Any = "vit256_small_dino", vit4k: Any = "vit4k_xs_dino", *,
                  normalization: str | tuple = "hipt", patch_batch: int = 256, patch_size: int = 256):
    """A :class:`hipt.models.HIPT4K` from model specs (modules, checkpoint names/paths/URLs, ``random:…``).

    ``vit4k=None`` builds a patch-token-only encoder (``feats256`` only: stage-2 pretraining data).
    ``patch_size``: the side of the patches the ViT256 reads (256 as HIPT; the ``hipt patch`` coords
    files must have been cut with the same size).
    """
    v256 = _load_vit(vit256, "vit256")
    if v256 is None:
        raise HIPTError("a ViT256 is needed (--vit256)")
    v4k = _load_vit(vit4k, "vit4k")
    enc = HIPT4K(v256, v4k, patch_size=patch_size, normalization=normalization, patch_batch=patch_batch).eval()
    enc.weights = {"vit256": _describe(vit256), "vit4k": _describe(vit4k)}  # type: ignore[attr-defined]
    return enc


def _describe(spec: Any) -> str | None:
    if spec is None:
        return None
    if isinstance(spec, torch.nn.Module):
        return f"<in-memory {type(spec).__name__}>"
    return str(spec)


# ------------------------------------------------------------------------------------------ reading
class RegionDataset(torch.utils.data.Dataset):
    """The regions of one slide as uint8 tensors ``[3, R, R]``, read lazily (one slide handle per worker).

    Args:
        coords_h5: the slide's ``coords/<slide>.h5`` from ``hipt patch`` (:func:`hipt.tiling.load_coords`).
        slide_path: the slide file (default: the path stored in the coords file).
    """

    def __init__(self, coords_h5: str | Path, slide_path: str | Path | None = None) -> None:
        self.coords_h5 = Path(coords_h5)
        self.rc = load_coords(self.coords_h5)
        self.slide_path = Path(slide_path) if slide_path is not None else self.rc.slide_path
        self._slide = None

    def __len__(self) -> int:
        return len(self.rc)

    def _open(self):
        if self._slide is None:
            self._slide = open_slide(self.slide_path, mpp=self.rc.slide_mpp)
        return self._slide

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.read_hwc(i).permute(2, 0, 1)

    def read_hwc(self, i: int, out: torch.Tensor | None = None) -> torch.Tensor:
        """Region ``i`` as ``[R, R, 3]`` uint8, the layout it is decoded in (written into ``out`` if given)."""
        img = self.rc.read_region(self._open(), i)  # [R, R, 3] uint8
        if out is None:
            return torch.from_numpy(np.array(img, dtype=np.uint8, copy=True))
        np.copyto(out.numpy(), img)  # through NumPy: ``out`` may be an inference tensor of another thread
        return out

    def close(self) -> None:
        if self._slide is not None:
            with contextlib.suppress(Exception):
                self._slide.close()
            self._slide = None

    def __getstate__(self) -> dict:  # never pickle an open slide handle into workers
        d = dict(self.__dict__)
        d["_slide"] = None
        return d


class _HWCView(torch.utils.data.Dataset):
    """A :class:`RegionDataset` whose items are ``[R, R, 3]`` (DataLoader workers; collate stacks contiguously)."""

    def __init__(self, ds: RegionDataset) -> None:
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.ds.read_hwc(i)


#: How :class:`RegionReader` reads in parallel: ``thread`` (a pool of threads, one slide handle each) or
#: ``process`` (DataLoader worker processes).
READERS = ("thread", "process")


class RegionReader:
    """The regions of one slide in batches ``[b, R, R, 3]`` uint8, read ahead by parallel workers.

    Iterating yields ``(start, batch)`` in region order (``batch[j]`` is region ``start + j``; the encoder
    takes the ``batch.permute(0, 3, 1, 2)`` view, so no transposing copy is made on the host).

    Args:
        dataset: the slide's :class:`RegionDataset`.
        batch_regions: regions per batch.
        workers: readers working at once; 0 reads inline, one region after the other, when the
            consumer asks (no overlap: the serial baseline).
        backend: ``"thread"``: a thread pool, one slide handle per thread, each region decoded straight
            into its batch (OpenSlide's tile decoding, most of the work, runs through ctypes, which
            releases the GIL; Python-side steps such as PIL's conversion to an array may hold it and
            cap how many threads help, which is why ``benchmarks/gpu_extraction.py`` compares both);
            ``"process"``: DataLoader worker processes (pixels cross a process boundary through shared
            memory, one more copy per region, but no GIL at all).
        pin: allocate batches in page-locked memory (for asynchronous copies to a GPU).
        prefetch: batches read ahead beyond those the workers are busy with.

    Memory: at most ``ceil(workers / batch_regions) + prefetch + 1`` batches exist at once (threads), or
    ``workers × prefetch + 1`` (processes): it depends on these settings, never on the slide.
    """

    def __init__(self, dataset: RegionDataset, batch_regions: int = 1, workers: int = 0, *,
                 backend: str = "thread", pin: bool = False, prefetch: int = 2) -> None:
        if backend not in READERS:
            raise ValueError(f"reader backend must be one of {READERS}, got {backend!r}")
        if batch_regions < 1 or workers < 0 or prefetch < 1:
            raise ValueError("batch_regions and prefetch must be >= 1 and workers >= 0")
        self.ds = dataset
        self.batch_regions = batch_regions
        self.workers = workers
        self.backend = backend
        self.pin = pin
        self.prefetch = prefetch
        rs = dataset.rc.region_size
        self.shape = (rs, rs, 3)

    def __len__(self) -> int:
        return -(-len(self.ds) // self.batch_regions)

    @property
    def max_batches_in_flight(self) -> int:
        if self.workers == 0:
            return 1
        if self.backend == "thread":
            return -(-self.workers // self.batch_regions) + self.prefetch + 1
        return self.workers * self.prefetch + 1

    def _empty(self, b: int) -> torch.Tensor:
        return torch.empty((b, *self.shape), dtype=torch.uint8, pin_memory=self.pin)

    def __iter__(self) -> Iterator[tuple[int, torch.Tensor]]:
        if self.workers == 0:
            return self._serial()
        return self._threads() if self.backend == "thread" else self._processes()

    def _serial(self) -> Iterator[tuple[int, torch.Tensor]]:
        n, bs = len(self.ds), self.batch_regions
        try:
            for start in range(0, n, bs):
                buf = self._empty(min(bs, n - start))
                for j in range(buf.shape[0]):
                    self.ds.read_hwc(start + j, out=buf[j])
                yield start, buf
        finally:
            self.ds.close()

    def _threads(self) -> Iterator[tuple[int, torch.Tensor]]:
        n, bs = len(self.ds), self.batch_regions
        local = threading.local()
        handles: list[RegionDataset] = []
        lock = threading.Lock()

        def read(i: int, out: torch.Tensor) -> None:
            ds = getattr(local, "ds", None)
            if ds is None:  # one slide handle per thread: no locking inside OpenSlide's caches
                ds = local.ds = type(self.ds).__new__(type(self.ds))
                ds.__dict__.update(self.ds.__getstate__())
                with lock:
                    handles.append(ds)
            ds.read_hwc(i, out=out)

        depth = -(-self.workers // bs) + self.prefetch  # batches submitted ahead of the one yielded
        starts = iter(range(0, n, bs))
        pending: collections.deque = collections.deque()
        pool = ThreadPoolExecutor(self.workers, thread_name_prefix="hipt-reader")

        def submit() -> None:
            start = next(starts, None)
            if start is not None:
                buf = self._empty(min(bs, n - start))
                pending.append((start, buf, [pool.submit(read, start + j, buf[j]) for j in range(buf.shape[0])]))

        try:
            for _ in range(depth):
                submit()
            while pending:
                start, buf, futures = pending.popleft()
                for f in futures:
                    f.result()  # re-raises a reader's error here, in region order
                submit()
                yield start, buf
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            for ds in handles:
                ds.close()

    def _processes(self) -> Iterator[tuple[int, torch.Tensor]]:
        loader = torch.utils.data.DataLoader(
            _HWCView(self.ds), batch_size=self.batch_regions, shuffle=False, num_workers=self.workers,
            pin_memory=self.pin, prefetch_factor=self.prefetch, persistent_workers=False,
        )
        start = 0
        for batch in loader:
            yield start, batch
            start += batch.shape[0]


# ------------------------------------------------------------------------------------------ writing
@dataclass
class ExtractResult:
    """Outcome of one slide: ``status`` is ``ok``, ``skipped`` (already done) or ``failed``.

    ``timing`` (extracted slides): seconds the main loop spent waiting for the reader (``wait_read``),
    encoding (``compute``: GPU time from CUDA events on a GPU), copying pixels to the GPU (``h2d``, on a
    side stream, overlapped with compute) and writing features (``write``), and ``wall`` for the loop.
    """

    slide: str
    status: str
    n_regions: int = 0
    reason: str = ""
    path: Path | None = None
    seconds: float = 0.0
    timing: dict[str, float] | None = None

    @property
    def skipped(self) -> bool:
        """The slide's features were already there (its summary row stays the one of the run that made them)."""
        return self.status == "skipped"

    def row(self) -> dict[str, str]:
        status = "ok" if self.status == "skipped" else self.status
        return {"slide": self.slide, "status": status, "n_regions": str(self.n_regions), "reason": self.reason}


def _is_complete(path: Path) -> bool:
    try:
        with h5py.File(path, "r") as f:
            return "feats256" in f and int(f.attrs.get("n_regions", -1)) == f["feats256"].shape[0]
    except (OSError, KeyError, ValueError):
        return False


def extract_slide(
    slide_path: str | Path | None,
    coords_h5: str | Path,
    out_path: str | Path,
    model,
    *,
    batch_regions: int = 1,
    workers: int = 0,
    dtype: str = "fp32",
    device: str | torch.device = "cpu",
    storage_dtype: str = "float32",
    overwrite: bool = False,
    progress: bool = True,
    reader: str = "thread",
    prefetch: int = 2,
    compile: bool = False,
) -> ExtractResult:
    """Encode the regions of one slide and write ``out_path`` (HDF5, atomically).

    Args:
        slide_path: the slide (``None``: the path stored in the coords file).
        coords_h5: its coords file from ``hipt patch``.
        out_path: the ``.h5`` to write.
        model: a :class:`hipt.models.HIPT4K` (see :func:`build_encoder`); moved to ``device``.
        batch_regions: regions per forward pass (memory grows with it: 4096-px regions hold 256 patches).
        workers: readers decoding regions in parallel while the model computes (0: read inline, serially).
        dtype: compute precision, ``"fp32"``, ``"bf16"``, ``"fp16"`` (autocast) or ``"auto"``
            (:func:`hipt.precision.resolve_precision`); the file's ``dtype`` attribute is the resolved one.
        device: torch device.
        storage_dtype: ``"float32"`` or ``"float16"`` for ``feats256``.
        overwrite: recompute even if ``out_path`` exists and is complete.
        progress: tqdm bar over the regions.
        reader: ``"thread"`` or ``"process"`` workers (:class:`RegionReader`).
        prefetch: batches read ahead (:class:`RegionReader`).
        compile: encode with the ViT256 under ``torch.compile`` (:func:`_compiled`; same features within
            the precision's tolerance, a one-off compilation per process).

    Returns an :class:`ExtractResult` (``skipped`` when the file was already there). Errors raise.
    """
    device = torch.device(device)
    dtype = resolve_precision(dtype, device)  # unknown names and fp16 on a CPU fail before any work
    if storage_dtype not in ("float32", "float16"):
        raise ValueError(f"storage_dtype must be float32 or float16, got {storage_dtype!r}")
    out_path = Path(out_path)
    name = out_path.stem
    if not overwrite and out_path.is_file() and _is_complete(out_path):
        with h5py.File(out_path, "r") as f:
            return ExtractResult(name, "skipped", int(f.attrs["n_regions"]), path=out_path)
    t0 = time.perf_counter()
    ds = RegionDataset(coords_h5, slide_path)
    rc = ds.rc
    if len(ds) == 0:
        raise InputFileError(coords_h5, "holds no regions (the slide has no tissue region)")
    if rc.patch_size != model.patch_size:
        raise InputFileError(coords_h5, f"patches of {rc.patch_size} px, but the encoder cuts {model.patch_size}-px patches")
    if not Path(ds.slide_path).is_file():
        raise InputFileError(ds.slide_path, "slide file not found", f"named by {coords_h5}; pass --slides")
    ds._open()  # fail early (unreadable slide) in the main process
    ds.close()
    model = model.to(device).eval()
    encode = _compiled(model, device) if compile else model
    gh = gw = rc.region_size // rc.patch_size
    n = gh * gw
    d256 = model.vit256.embed_dim
    d4k = model.vit4k.embed_dim if model.vit4k is not None else None
    cuda = device.type == "cuda"
    reader = RegionReader(ds, batch_regions, workers, backend=reader, pin=cuda, prefetch=prefetch)
    m = len(ds)
    timing = {"wait_read": 0.0, "h2d": 0.0, "compute": 0.0, "write": 0.0, "wall": 0.0}
    with atomic_path(out_path) as tmp:
        with h5py.File(tmp, "w") as f:
            f256 = f.create_dataset("feats256", shape=(m, n, d256), dtype=storage_dtype, chunks=(1, n, d256))
            f4k = f.create_dataset("feats4k", shape=(m, d4k), dtype="float32") if d4k else None
            f.create_dataset("coords", data=rc.coords.astype(np.int64))
            bar = tqdm(total=m, desc=name, unit="region", leave=False, disable=not progress)

            def write(i: int, patches: torch.Tensor, region: torch.Tensor | None) -> None:
                t = time.perf_counter()
                b = patches.shape[0]
                f256[i : i + b] = patches.numpy().astype(storage_dtype, copy=False)
                if f4k is not None:
                    f4k[i : i + b] = region.numpy()
                timing["write"] += time.perf_counter() - t
                bar.update(b)

            run = _CudaLoop(encode, device, storage_dtype) if cuda else _CpuLoop(encode)
            batches = iter(reader)
            t_loop = time.perf_counter()
            try:
                with torch.inference_mode(), autocast(device, dtype):
                    while True:
                        t = time.perf_counter()
                        item = next(batches, None)
                        timing["wait_read"] += time.perf_counter() - t
                        if item is None:
                            break
                        for done in run.submit(*item):  # on a GPU: the previous batch, once this one is queued
                            write(*done)
                    for done in run.flush():
                        write(*done)
            finally:
                close = getattr(batches, "close", None)
                if close is not None:
                    close()  # stop the reader threads/processes, also when the model failed
            timing["wall"] = time.perf_counter() - t_loop
            timing.update(run.times())
            bar.close()
            a = f.attrs
            a["models"] = json.dumps({"config": model.config, "weights": getattr(model, "weights", None)})
            a["dtype"] = dtype
            mean, std = _norm_stats(model.normalization)
            a["normalization"] = json.dumps({"name": model.normalization if isinstance(model.normalization, str)
                                             else "custom", "mean": mean, "std": std})
            a["storage_dtype"] = storage_dtype
            a["region_size"] = int(rc.region_size)
            a["patch_size"] = int(rc.patch_size)
            a["grid"] = np.asarray([gh, gw], dtype=np.int64)
            a["target_mpp"] = float(rc.target_mpp)
            a["slide_mpp"] = float(rc.slide_mpp)
            a["level0_region_size"] = int(rc.level0_region_size)
            a["slide_path"] = str(Path(ds.slide_path).resolve())
            a["coords_path"] = str(Path(coords_h5).resolve())
            a["hipt_version"] = __version__
            a["n_regions"] = int(m)  # written last: marks the file complete
    return ExtractResult(name, "ok", m, path=out_path, seconds=time.perf_counter() - t0,
                         timing={k: round(v, 4) for k, v in timing.items()})


class _CpuLoop:
    """Encode each batch as it comes and hand it back at once (the reader threads overlap with it)."""

    def __init__(self, encode) -> None:
        self.encode, self.compute = encode, 0.0

    def submit(self, start: int, batch: torch.Tensor):
        t = time.perf_counter()
        out = self.encode(batch.permute(0, 3, 1, 2))
        region = out.region.float() if out.region is not None else None
        self.compute += time.perf_counter() - t
        yield start, out.patches.float(), region

    def flush(self):
        return iter(())

    def times(self) -> dict[str, float]:
        return {"compute": self.compute}


class _CudaLoop:
    """One batch in flight on the GPU while the host writes the previous one and fetches the next.

    Pixels are copied on a side stream from the reader's pinned batch (``non_blocking``), so the copy of
    batch *k + 1* overlaps the encoding of batch *k*; features come back into pinned buffers
    asynchronously and are written once their event has completed.
    """

    def __init__(self, encode, device: torch.device, storage_dtype: str) -> None:
        self.encode, self.device = encode, device
        self.storage = getattr(torch, storage_dtype)
        self.copy_stream = torch.cuda.Stream(device)
        self.pending = None
        self.events: list[tuple[str, torch.cuda.Event, torch.cuda.Event]] = []

    @staticmethod
    def _event() -> torch.cuda.Event:
        return torch.cuda.Event(enable_timing=True)

    def submit(self, start: int, batch: torch.Tensor):
        compute_stream = torch.cuda.current_stream(self.device)
        c0, c1, k0, k1 = (self._event() for _ in range(4))
        with torch.cuda.stream(self.copy_stream):
            c0.record()
            x = batch.to(self.device, non_blocking=True)
            c1.record()
        compute_stream.wait_stream(self.copy_stream)
        x.record_stream(compute_stream)  # allocated on the copy stream, used on the compute stream
        k0.record(compute_stream)
        out = self.encode(x.permute(0, 3, 1, 2))
        # features to the host: cast to the storage dtype on the GPU, copy into pinned memory asynchronously
        patches = torch.empty(out.patches.shape, dtype=self.storage, pin_memory=True)
        patches.copy_(out.patches.to(self.storage), non_blocking=True)
        region = None
        if out.region is not None:
            region = torch.empty(out.region.shape, dtype=torch.float32, pin_memory=True)
            region.copy_(out.region.float(), non_blocking=True)
        k1.record(compute_stream)
        self.events += [("h2d", c0, c1), ("compute", k0, k1)]
        previous, self.pending = self.pending, (start, patches, region, k1)
        if previous is not None:
            yield self._wait(previous)

    @staticmethod
    def _wait(item):
        start, patches, region, done = item
        done.synchronize()
        return start, patches, region

    def flush(self):
        if self.pending is not None:
            item, self.pending = self.pending, None
            yield self._wait(item)

    def times(self) -> dict[str, float]:
        torch.cuda.synchronize(self.device)
        out = {"h2d": 0.0, "compute": 0.0}
        for what, a, b in self.events:
            out[what] += a.elapsed_time(b) / 1000
        return out


def _compiled(model, device: torch.device):
    """``model`` with its ViT256 under ``torch.compile`` (compiled once per model and device, then reused).

    The ViT256 always sees ``[patch_batch, 3, p, p]`` (a region holds a whole number of patch batches at
    the default 256), so one static graph serves every slide; the ViT4K (<0.1 % of the FLOPs) stays eager.
    """
    cache = model.__dict__.setdefault("_hipt_compiled", {})
    key = str(device)
    if key not in cache:
        fast = HIPT4K(model.vit256, model.vit4k, patch_size=model.patch_size, normalization=model.normalization,
                      patch_batch=model.patch_batch).eval()
        fast.vit256 = torch.compile(model.vit256, dynamic=False)
        cache[key] = fast
    return cache[key]


def _norm_stats(normalization: str | tuple) -> tuple[list[float], list[float]]:
    mean, std = _stats(normalization)
    return list(mean), list(std)


def load_features(path: str | Path, float32: bool = True) -> dict[str, Any]:
    """Read a ``hipt extract`` file.

    Returns ``{"feats256": [M, n, D] tensor, "feats4k": [M, D4k] tensor (if present), "coords": [M, 2]
    int64 tensor, "attrs": dict}`` (features as float32 unless ``float32=False``; JSON attributes decoded).
    """
    path = Path(path)
    if not path.is_file():
        raise InputFileError(path, "features file not found", "run 'hipt extract' first")
    try:
        with h5py.File(path, "r") as f:
            out: dict[str, Any] = {}
            for k in ("feats256", "feats4k", "coords"):
                if k in f:
                    t = torch.from_numpy(np.asarray(f[k][:]))
                    out[k] = t.float() if (float32 and k != "coords") else t
            attrs = {}
            for k, v in f.attrs.items():
                v = v.decode() if isinstance(v, bytes) else v
                if k in ("models", "normalization") and isinstance(v, str):
                    with contextlib.suppress(ValueError):
                        v = json.loads(v)
                elif isinstance(v, np.ndarray):
                    v = v.tolist()
                elif isinstance(v, np.generic):
                    v = v.item()
                attrs[k] = v
            out["attrs"] = attrs
    except OSError as e:
        raise InputFileError(path, f"not a readable HDF5 features file ({e})") from None
    if "feats256" not in out:
        raise InputFileError(path, "has no 'feats256' dataset: not a hipt extract file")
    return out


# ------------------------------------------------------------------------------------------ folders
def _coords_files(coords: str | Path) -> list[Path]:
    p = Path(coords)
    if p.is_file():
        return [p]
    if not p.is_dir():
        raise InputFileError(p, "coords folder not found", "pass the --out folder of 'hipt patch'")
    folder = p / "coords" if (p / "coords").is_dir() else p
    files = data_files(folder, "*.h5")
    if not files:
        raise InputFileError(p, "holds no coords .h5 files", "pass the --out folder of 'hipt patch'")
    return files


def _slide_index(slides: str | Path | Sequence[str | Path] | None) -> dict[str, Path]:
    if slides is None:
        return {}
    items = [slides] if isinstance(slides, (str, Path)) else list(slides)
    index: dict[str, Path] = {}
    for item in items:
        p = Path(item)
        if p.is_dir():
            for s in iter_slide_files(p):
                index.setdefault(s.stem, s)
        elif p.is_file():
            index.setdefault(p.stem, p)
        else:
            raise InputFileError(p, "slides folder or file not found")
    return index


def _dist_info() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's environment (0, 1, 0 for a plain process)."""
    rank = int(os.environ.get("RANK", 0))
    world = int(os.environ.get("WORLD_SIZE", 1))
    local = int(os.environ.get("LOCAL_RANK", rank))
    return rank, world, local


def extract_folder(
    coords: str | Path,
    out_dir: str | Path,
    model,
    *,
    slides: str | Path | Sequence[str | Path] | None = None,
    batch_regions: int = 1,
    workers: int = 0,
    dtype: str = "fp32",
    device: str | torch.device = "cpu",
    storage_dtype: str = "float32",
    overwrite: bool = False,
    progress: bool = True,
    reader: str = "thread",
    prefetch: int = 2,
    compile: bool = False,
    rank: int | None = None,
    world_size: int | None = None,
    log=None,
) -> list[ExtractResult]:
    """Extract every slide of a ``hipt patch`` output folder into ``out_dir/<slide>.h5``.

    Args:
        coords: the ``hipt patch --out`` folder (or its ``coords/`` subfolder, or one coords file).
        out_dir: where the feature files and ``summary.csv`` go.
        model: a :class:`hipt.models.HIPT4K` (:func:`build_encoder`).
        slides: folder(s) of slides, matched to coords files by name (default: the slide path stored in
            each coords file).
        rank, world_size: this process's shard (default: from torchrun's ``RANK``/``WORLD_SIZE``); it
            takes the slides ``i ≡ rank (mod world_size)`` of the sorted list.
        Others: as :func:`extract_slide`.

    Slides already extracted are skipped; a failing slide is recorded (``failed`` row with its reason
    in ``summary.csv``) and the others go on.  Under several ranks, each writes
    ``summary.rank<r>.csv`` and, after a barrier, rank 0 merges them into ``summary.csv``.
    """
    env_rank, env_world, _ = _dist_info()
    rank = env_rank if rank is None else rank
    world_size = env_world if world_size is None else world_size
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = _coords_files(coords)
    index = _slide_index(slides)
    log = log or (lambda line: tqdm.write(line, file=sys.stderr))
    requested, dtype = dtype, resolve_precision(dtype, device)  # once: a bad name fails the run, not each slide
    if progress and rank == 0:
        log(describe(requested, device, training=False))
    mine = files[rank::world_size]
    results: list[ExtractResult] = []
    bar = tqdm(mine, desc=f"hipt extract{f' [rank {rank}]' if world_size > 1 else ''}", unit="slide",
               disable=not progress, position=rank if world_size > 1 else None)
    for cf in bar:
        name = cf.stem
        bar.set_postfix_str(name, refresh=False)
        try:
            slide_path = index.get(name)
            if slides is not None and slide_path is None:
                raise InputFileError(cf, f"no slide named {name!r} in {slides}")
            r = extract_slide(slide_path, cf, out_dir / f"{name}.h5", model, batch_regions=batch_regions,
                              workers=workers, dtype=dtype, device=device, storage_dtype=storage_dtype,
                              overwrite=overwrite, progress=progress, reader=reader, prefetch=prefetch,
                              compile=compile)
        except Exception as e:  # noqa: BLE001 - one bad slide must not stop the batch
            r = ExtractResult(name, "failed", reason=failure_reason(e))
            log(f"error: {e}" if isinstance(e, HIPTError) else f"error: {cf}: {r.reason}")
        results.append(r)
    bar.close()
    _write_summaries(out_dir, results, rank, world_size)
    return results


def _write_summaries(out_dir: Path, results: list[ExtractResult], rank: int, world: int) -> None:
    """``out_dir/summary.csv`` (:mod:`hipt.jobs`): directly in one process; under several, each rank
    writes its part and, after a barrier, rank 0 merges them."""
    if world == 1:
        record_results(out_dir / SUMMARY_NAME, results)
        return
    write_summary(rank_summary_path(out_dir, rank), {r.slide: r.row() for r in results}.values())
    _barrier()
    if rank == 0:
        merge_rank_summaries(out_dir, world)


def _barrier() -> None:
    """Wait for every rank (gloo process group from torchrun's env, created on first use)."""
    if not dist.is_available():  # pragma: no cover
        return
    created = False
    if not dist.is_initialized():
        dist.init_process_group(backend="gloo")
        created = True
    dist.barrier()
    if created:
        dist.destroy_process_group()


# ---------------------------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Extract hierarchical features: for every region that 'hipt patch' kept, the ViT256 [CLS] tokens of "
        "its patches (feats256 [M,n,384]) and the ViT4096 [CLS] token (feats4k [M,192]); one HDF5 file per "
        "slide, OUT/<slide>.h5. Finished slides are skipped, a failing slide is recorded in "
        "OUT/summary.csv and skipped. Exit code: 0 all slides ok, 1 some failed, 2 usage error. "
        "Several GPUs or nodes: run under 'torchrun --nproc_per_node N -m hipt.cli extract ...' "
        "(slides are sharded by index across ranks)."
    )
    parser.add_argument("--coords", required=True, help="the --out folder of 'hipt patch' (holding coords/*.h5)")
    parser.add_argument("--slides", default=None,
                        help="folder of the slides (default: the slide path stored in each coords file)")
    parser.add_argument("--out", required=True, help="output folder for <slide>.h5 and summary.csv")
    parser.add_argument("--vit256", default="vit256_small_dino",
                        help="ViT256 weights: registry name, checkpoint path or URL, or random:vit256_tiny")
    parser.add_argument("--vit4k", default="vit4k_xs_dino",
                        help="ViT4K weights (as --vit256), or 'none' to write feats256 only (stage-2 data)")
    parser.add_argument("--dtype", choices=list(PRECISIONS), default="fp32",
                        help="compute precision: fp32; bf16 = autocast (cos. sim. >= 0.999 with fp32); fp16 = "
                             "float16 autocast (CUDA); auto = bf16 on a GPU that has it, fp16 on older GPUs (T4), "
                             "fp32 on a CPU")
    parser.add_argument("--storage-dtype", choices=["float32", "float16"], default="float32",
                        help="storage of feats256 (float16 halves the files)")
    parser.add_argument("--device", default=None,
                        help="torch device (default: cuda[:LOCAL_RANK] if available, else cpu)")
    parser.add_argument("--batch-regions", type=int, default=1, help="regions per forward pass")
    parser.add_argument("--patch-batch", type=int, default=256, help="256-px patches per ViT256 call")
    parser.add_argument("--patch-size", type=int, default=256,
                        help="patch side the ViT256 reads; must match 'hipt patch --patch-size' (256 as HIPT)")
    parser.add_argument("--workers", type=int, default=2,
                        help="readers decoding regions in parallel with the model (0: read serially); on a GPU "
                             "machine give it about the number of CPU cores: one core decodes ~1-2 4096-px regions/s")
    parser.add_argument("--reader", choices=list(READERS), default="thread",
                        help="parallel readers: threads (default) or DataLoader worker processes")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the ViT256 (a one-off compilation; pays where the GPU, not reading, "
                             "limits the run)")
    parser.add_argument("--normalization", default="hipt", choices=["hipt", "imagenet"],
                        help="pixel normalization (hipt = mean=std=0.5, as the released checkpoints)")
    parser.add_argument("--overwrite", action="store_true", help="recompute slides already extracted")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    rank, world, local = _dist_info()
    device = str(resolve_device(args.device or "auto", local))
    if args.batch_regions < 1 or args.workers < 0:
        raise HIPTError("--batch-regions must be >= 1 and --workers >= 0")
    model = build_encoder(args.vit256, args.vit4k, normalization=args.normalization, patch_batch=args.patch_batch,
                          patch_size=args.patch_size)
    results = extract_folder(
        args.coords, args.out, model, slides=args.slides, batch_regions=args.batch_regions, workers=args.workers,
        dtype=args.dtype, device=device, storage_dtype=args.storage_dtype, overwrite=args.overwrite,
        progress=not args.no_progress, reader=args.reader, compile=args.compile,
    )
    n_ok = sum(r.status == "ok" for r in results)
    n_skip = sum(r.status == "skipped" for r in results)
    failed = [r for r in results if r.status == "failed"]
    print(f"hipt extract{f' [rank {rank}/{world}]' if world > 1 else ''}: {n_ok} extracted, {n_skip} already done, "
          f"{len(failed)} failed -> {args.out}", file=sys.stderr)
    return 1 if failed else 0
