"""Cut slides into the grid of 4096-px regions that HIPT encodes (the ``hipt patch`` command).

HIPT's unit of computation is a *region*: ``region_size`` px (4096) at ``target_mpp`` (0.5 µm/px, "20×"),
itself a grid of ``(region_size / patch_size)²`` patches of ``patch_size`` px (16×16 patches of 256).
The grid is anchored at the slide's origin ``(0, 0)`` and steps by the level-0 extent of one region
(``region_size × target_mpp / mpp``, e.g. 4096 at 0.5 µm/px, 8192 at 0.25 µm/px), so a phantom slide whose
tissue map is aligned to 256-px cells stays aligned with the patches.  Regions whose tissue fraction
(from :func:`hipt.tissue.segment_tissue`, over the whole region; the part outside the slide counts as
no tissue) is at least ``min_tissue`` are kept.  Regions that overhang the slide's right or bottom
edge are padded with white when read.  A slide smaller than one region in both directions yields its
single, padded region whenever it has any tissue.

Default ``min_tissue`` = 0.25: a kept region is at least a quarter tissue (≥ 64 of its 256 patches'
worth).  Regions mostly of glass cost as much to encode as full ones and dilute attention pooling;
0.25 keeps tissue borders.  Use 0 to keep every region of the grid.

Outputs of ``hipt patch SLIDE_OR_FOLDER --out DIR`` (every file written atomically):

- ``DIR/coords/<slide>.h5``: dataset ``coords`` ``[N, 2]`` int64 (level-0 top-left ``x, y``),
  ``tissue_fraction`` ``[N]`` float32, and attributes ``level0_region_size`` (level-0 px each region
  spans), ``target_mpp``, ``slide_mpp``, ``region_size``, ``patch_size``, ``slide_path`` and more;
  read it with :func:`load_coords`;
- ``DIR/masks/<slide>.png``: the tissue mask at thumbnail resolution (white = tissue);
- ``DIR/thumbnails/<slide>.png``: the thumbnail with the grid (grey) and kept regions (green);
- ``DIR/summary.csv``: one row per input, ``slide,status,n_regions,reason``.

A slide whose ``coords`` file exists with the same parameters is skipped on a re-run (its summary
row is kept); a failed slide is retried.  When a slide fails, outputs an earlier run left for it (with
other options) are removed, so that ``coords/`` always agrees with ``summary.csv``.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
from PIL import Image, ImageDraw
from tqdm.auto import tqdm

from hipt import __version__
from hipt.errors import HIPTError, InputFileError, SlideError
from hipt.io import atomic_path
from hipt.jobs import SUMMARY_NAME, failure_reason, record_results
from hipt.slide import Slide, iter_slide_files, open_slide
from hipt.tissue import TissueMask, segment_tissue

__all__ = [
    "DEFAULT_TARGET_MPP",
    "DEFAULT_REGION_SIZE",
    "DEFAULT_PATCH_SIZE",
    "DEFAULT_MIN_TISSUE",
    "RegionGrid",
    "RegionCoords",
    "PatchResult",
    "region_grid",
    "patch_slide",
    "patch_folder",
    "load_coords",
    "draw_regions",
    "split_patches",
    "add_arguments",
    "run",
]

DEFAULT_TARGET_MPP = 0.5
DEFAULT_REGION_SIZE = 4096
DEFAULT_PATCH_SIZE = 256
DEFAULT_MIN_TISSUE = 0.25



# ---------------------------------------------------------------------------------------------- grid
@dataclass
class RegionGrid:
    """The full region grid of one slide and which regions are kept.

    Attributes:
        coords: ``[N, 2]`` int64 level-0 top-left ``x, y`` of the kept regions (row-major order).
        tissue_fraction: ``[N]`` tissue fraction of each kept region.
        all_coords: ``[G, 2]`` every grid position; ``all_fractions`` ``[G]`` their tissue fractions.
        level0_region_size: level-0 pixels one region spans.
        grid_shape: ``(rows, cols)`` of the full grid.
    """

    coords: np.ndarray
    tissue_fraction: np.ndarray
    all_coords: np.ndarray
    all_fractions: np.ndarray
    level0_region_size: int
    grid_shape: tuple[int, int]


def region_grid(slide: Slide, tissue: TissueMask, *, target_mpp: float = DEFAULT_TARGET_MPP,
                region_size: int = DEFAULT_REGION_SIZE, min_tissue: float = DEFAULT_MIN_TISSUE) -> RegionGrid:
    """Lay the region grid over ``slide`` (anchored at (0, 0)) and keep the regions with tissue.

    The tissue fraction of a region is measured over the whole region (padding counts as no tissue)
    and a region is kept when it is ``≥ min_tissue``.  A slide smaller than one region in both
    directions keeps its single region whenever the mask has any tissue.
    """
    W, H = slide.dimensions
    extent = slide.level0_extent(region_size, target_mpp)
    cols, rows = max(1, math.ceil(W / extent)), max(1, math.ceil(H / extent))
    ys, xs = np.meshgrid(np.arange(rows) * extent, np.arange(cols) * extent, indexing="ij")
    all_coords = np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.int64)
    fractions = tissue.region_fractions(all_coords, extent)
    if rows == 1 and cols == 1 and W <= extent and H <= extent:
        keep = np.array([bool(tissue.mask.any())])
    else:
        keep = fractions >= min_tissue
    return RegionGrid(coords=all_coords[keep], tissue_fraction=fractions[keep].astype(np.float32),
                      all_coords=all_coords, all_fractions=fractions, level0_region_size=int(extent),
                      grid_shape=(rows, cols))


# ------------------------------------------------------------------------------------- coords files
@dataclass
class RegionCoords:
    """The content of a ``coords/<slide>.h5`` file (see :func:`load_coords`).

    Attributes:
        coords: ``[N, 2]`` int64 level-0 top-left ``x, y`` of each region.
        region_size: region side in pixels at ``target_mpp`` (e.g. 4096).
        patch_size: patch side in pixels at ``target_mpp`` (e.g. 256).
        target_mpp: µm per pixel of the regions as read.
        slide_mpp: µm per level-0 pixel used when patching (metadata or ``--mpp``).
        level0_region_size: level-0 pixels one region spans (``region_size × target_mpp / slide_mpp``,
            snapped).
        slide_path: the slide file.
        tissue_fraction: ``[N]`` tissue fraction of each region.
        slide_dimensions: level-0 ``(W, H)``.
        attrs: every attribute stored in the file.
    """

    coords: np.ndarray
    region_size: int
    patch_size: int
    target_mpp: float
    slide_mpp: float
    level0_region_size: int
    slide_path: Path
    tissue_fraction: np.ndarray
    slide_dimensions: tuple[int, int]
    attrs: dict = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return int(self.coords.shape[0])

    @property
    def patches_per_side(self) -> int:
        """Patches along one side of a region (16 for 4096/256)."""
        return self.region_size // self.patch_size

    @property
    def level0_patch_size(self) -> float:
        """Level-0 pixels one patch spans (may be fractional when the scale is not a whole ratio)."""
        return self.level0_region_size / self.patches_per_side

    def patch_coords(self) -> np.ndarray:
        """Level-0 top-left of every patch: ``[N, n·n, 2]`` int64, patches row-major within a region."""
        n = self.patches_per_side
        r, c = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
        offsets = np.stack([c.ravel(), r.ravel()], axis=1) * self.level0_patch_size  # [n·n, 2] (x, y)
        return (self.coords[:, None, :] + np.round(offsets)[None]).astype(np.int64)

    def open_slide(self) -> Slide:
        """Open the slide with the resolution used when patching (so ``--mpp`` overrides carry over)."""
        return open_slide(self.slide_path, mpp=self.slide_mpp)

    def read_region(self, slide: Slide, index: int) -> np.ndarray:
        """Region ``index`` of ``slide`` as ``[region_size, region_size, 3]`` uint8 (edges padded white)."""
        x, y = (int(v) for v in self.coords[index])
        return slide.read_region((x, y), self.region_size, self.target_mpp)


def _plain(v: object) -> object:
    """h5py attribute → plain Python (str, int, float, tuple)."""
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, np.ndarray):
        return tuple(v.tolist())
    if isinstance(v, np.generic):
        return v.item()
    return v


def load_coords(h5_path: str | Path) -> RegionCoords:
    """Read a ``coords/<slide>.h5`` written by ``hipt patch`` / :func:`patch_slide`."""
    path = Path(h5_path)
    if not path.is_file():
        raise InputFileError(path, "coords file not found", "run 'hipt patch' first")
    try:
        with h5py.File(path, "r") as f:
            coords = np.asarray(f["coords"][:], dtype=np.int64).reshape(-1, 2)
            frac = np.asarray(f["tissue_fraction"][:], dtype=np.float32) if "tissue_fraction" in f else \
                np.full(len(coords), np.nan, np.float32)
            attrs = {k: _plain(v) for k, v in f["coords"].attrs.items()}
    except (OSError, KeyError) as e:
        raise InputFileError(path, f"not a readable hipt coords file ({e})") from None
    try:
        return RegionCoords(
            coords=coords,
            region_size=int(attrs["region_size"]),
            patch_size=int(attrs["patch_size"]),
            target_mpp=float(attrs["target_mpp"]),
            slide_mpp=float(attrs["slide_mpp"]),
            level0_region_size=int(attrs["level0_region_size"]),
            slide_path=Path(str(attrs["slide_path"])),
            tissue_fraction=frac,
            slide_dimensions=tuple(int(v) for v in attrs.get("slide_dimensions", (0, 0))),  # type: ignore[arg-type]
            attrs=attrs,
        )
    except KeyError as e:
        raise InputFileError(path, f"coords file lacks attribute {e}") from None


def _write_coords(dest: Path, slide: Slide, grid: RegionGrid, tissue: TissueMask, *, target_mpp: float,
                  region_size: int, patch_size: int, min_tissue: float, mpp_override: float | None) -> None:
    with atomic_path(dest) as tmp:
        with h5py.File(tmp, "w") as f:
            ds = f.create_dataset("coords", data=grid.coords.astype(np.int64))
            f.create_dataset("tissue_fraction", data=grid.tissue_fraction.astype(np.float32))
            a = ds.attrs
            a["level0_region_size"] = int(grid.level0_region_size)
            a["target_mpp"] = float(target_mpp)
            a["slide_mpp"] = float(slide.mpp)  # type: ignore[arg-type]
            a["mpp_source"] = slide.mpp_source
            a["mpp_override"] = float("nan") if mpp_override is None else float(mpp_override)
            a["region_size"] = int(region_size)
            a["patch_size"] = int(patch_size)
            a["min_tissue"] = float(min_tissue)
            a["slide_path"] = str(slide.path.resolve())
            a["slide_name"] = slide.name
            a["slide_dimensions"] = np.asarray(slide.dimensions, dtype=np.int64)
            a["grid_shape"] = np.asarray(grid.grid_shape, dtype=np.int64)
            a["tissue_threshold"] = float(tissue.threshold)
            a["mask_downsample"] = float(tissue.downsample)
            a["hipt_version"] = __version__
            f.attrs.update({k: a[k] for k in ("level0_region_size", "target_mpp", "slide_mpp", "region_size",
                                              "patch_size", "slide_path")})


def _matches(h5: Path, *, target_mpp: float, region_size: int, patch_size: int, min_tissue: float,
             mpp: float | None) -> bool:
    """True when ``h5`` is a finished coords file made with these parameters."""
    try:
        rc = load_coords(h5)
    except HIPTError:
        return False
    a = rc.attrs
    same_override = (mpp is None and np.isnan(a.get("mpp_override", np.nan))) or (
        mpp is not None and np.isclose(a.get("mpp_override", np.nan), mpp))
    return (rc.region_size == region_size and rc.patch_size == patch_size and np.isclose(rc.target_mpp, target_mpp)
            and np.isclose(float(a.get("min_tissue", np.nan)), min_tissue) and bool(same_override))


def split_patches(region: np.ndarray, patch_size: int = DEFAULT_PATCH_SIZE) -> np.ndarray:
    """Cut a region into its patches, row-major: ``[R, R, 3]`` → ``[(R/p)², p, p, 3]`` (a view-free copy).

    The order matches :meth:`RegionCoords.patch_coords` and HIPT's ``[M, 256, 384]`` feature layout
    (patch ``k`` is row ``k // n``, column ``k % n`` of the region's n×n grid).
    """
    region = np.asarray(region)
    R = region.shape[0]
    if region.shape[1] != R or R % patch_size:
        raise ValueError(f"region of shape {region.shape} is not a square multiple of {patch_size}")
    n = R // patch_size
    grid = region.reshape(n, patch_size, n, patch_size, *region.shape[2:]).swapaxes(1, 2)
    return np.ascontiguousarray(grid.reshape(n * n, patch_size, patch_size, *region.shape[2:]))


# --------------------------------------------------------------------------------------- thumbnails
def draw_regions(tissue: TissueMask, grid: RegionGrid, *, mask_alpha: float = 0.0) -> Image.Image:
    """The thumbnail on a canvas covering the whole grid (padding in light grey), with the grid in
    grey and kept regions outlined in green.  ``mask_alpha`` > 0 tints non-tissue in blue."""
    sx, sy = tissue.scale_xy
    h, w = tissue.mask.shape
    rows, cols = grid.grid_shape
    E = grid.level0_region_size
    cw, ch = max(w, int(math.ceil(cols * E / sx))), max(h, int(math.ceil(rows * E / sy)))
    canvas = Image.new("RGB", (cw, ch), (225, 225, 225))
    thumb = tissue.thumbnail.copy()
    if mask_alpha > 0:
        tint = np.array([60, 90, 200], np.float32)
        sel = ~tissue.mask
        thumb[sel] = ((1 - mask_alpha) * thumb[sel] + mask_alpha * tint).astype(np.uint8)
    canvas.paste(Image.fromarray(thumb), (0, 0))
    draw = ImageDraw.Draw(canvas)
    lw = max(1, round(max(cw, ch) / 400))
    for x, y in grid.all_coords:
        draw.rectangle([x / sx, y / sy, (x + E) / sx - 1, (y + E) / sy - 1], outline=(150, 150, 150), width=1)
    for x, y in grid.coords:
        draw.rectangle([x / sx, y / sy, (x + E) / sx - 1, (y + E) / sy - 1], outline=(0, 170, 60), width=lw + 1)
    return canvas


def _save_png(img: Image.Image, dest: Path) -> None:
    with atomic_path(dest) as tmp:
        img.save(tmp, format="PNG")


# ----------------------------------------------------------------------------------------- patching
@dataclass
class PatchResult:
    """What happened to one input of :func:`patch_slide` / :func:`patch_folder`."""

    slide: str
    path: Path
    status: str  # "ok" or "failed"
    n_regions: int = 0
    reason: str = ""
    coords_path: Path | None = None
    mask_path: Path | None = None
    thumbnail_path: Path | None = None
    skipped: bool = False

    def row(self) -> dict[str, str | int]:
        return {"slide": self.slide, "status": self.status, "n_regions": self.n_regions, "reason": self.reason}


def _output_paths(out_dir: Path, name: str) -> tuple[Path, Path, Path]:
    return out_dir / "coords" / f"{name}.h5", out_dir / "masks" / f"{name}.png", out_dir / "thumbnails" / f"{name}.png"


def _validate(target_mpp: float, region_size: int, patch_size: int, min_tissue: float) -> None:
    if region_size <= 0 or patch_size <= 0 or region_size % patch_size:
        raise ValueError(f"region_size ({region_size}) must be a positive multiple of patch_size ({patch_size})")
    if not target_mpp > 0:
        raise ValueError(f"target_mpp must be positive, got {target_mpp}")
    if not 0.0 <= min_tissue <= 1.0:
        raise ValueError(f"min_tissue must be in [0, 1], got {min_tissue}")


def patch_slide(
    slide_path: str | Path,
    out_dir: str | Path,
    *,
    target_mpp: float = DEFAULT_TARGET_MPP,
    region_size: int = DEFAULT_REGION_SIZE,
    patch_size: int = DEFAULT_PATCH_SIZE,
    mpp: float | None = None,
    min_tissue: float = DEFAULT_MIN_TISSUE,
    overwrite: bool = False,
    tissue_kwargs: dict | None = None,
) -> PatchResult:
    """Segment tissue, lay the region grid and write coords, mask and thumbnail for one slide.

    Skips the slide (``skipped=True``) when its coords file exists with the same parameters, unless
    ``overwrite``.  Writes nothing unless everything succeeds; on failure, outputs an earlier run left
    for this slide (with other options) are removed.

    Raises:
        SlideError / MissingMPPError: the slide cannot be opened or read, has no resolution, has no
            tissue, or has no region with ``≥ min_tissue`` tissue (the message names the file).
        ValueError: inconsistent parameters.
    """
    _validate(target_mpp, region_size, patch_size, min_tissue)
    slide_path, out_dir = Path(slide_path), Path(out_dir)
    name = slide_path.stem
    coords_path, mask_path, thumb_path = _output_paths(out_dir, name)
    if not overwrite and coords_path.is_file() and _matches(coords_path, target_mpp=target_mpp, region_size=region_size,
                                                              patch_size=patch_size, min_tissue=min_tissue, mpp=mpp):
        n = len(load_coords(coords_path))
        return PatchResult(name, slide_path, "ok", n, "", coords_path, mask_path, thumb_path, skipped=True)

    try:
        return _patch_one(slide_path, name, coords_path, mask_path, thumb_path, target_mpp=target_mpp,
                          region_size=region_size, patch_size=patch_size, mpp=mpp, min_tissue=min_tissue,
                          tissue_kwargs=tissue_kwargs)
    except Exception:
        # outputs an earlier run left with other options would contradict this failure
        for stale in (coords_path, mask_path, thumb_path):
            stale.unlink(missing_ok=True)
        raise


def _patch_one(slide_path: Path, name: str, coords_path: Path, mask_path: Path, thumb_path: Path, *,
               target_mpp: float, region_size: int, patch_size: int, mpp: float | None, min_tissue: float,
               tissue_kwargs: dict | None) -> PatchResult:
    with open_slide(slide_path, mpp=mpp) as slide:
        tissue = segment_tissue(slide, **(tissue_kwargs or {}))
        if not tissue.mask.any():
            raise SlideError(slide_path, f"no tissue found (nothing above saturation threshold {tissue.threshold:.3f} "
                                         "survived the clean-up)", "is this an empty or blank slide?")
        grid = region_grid(slide, tissue, target_mpp=target_mpp, region_size=region_size, min_tissue=min_tissue)
        if len(grid.coords) == 0:
            best = float(grid.all_fractions.max()) if grid.all_fractions.size else 0.0
            raise SlideError(slide_path, f"no {region_size}-px region at {target_mpp:g} µm/px has ≥ {min_tissue:.0%} "
                                         f"tissue (best {best:.0%}; tissue covers {tissue.fraction:.1%} of the slide)",
                             "lower --min-tissue or --region-size")
        written: list[Path] = []
        try:
            _save_png(Image.fromarray(tissue.mask.astype(np.uint8) * 255), mask_path)
            written.append(mask_path)
            _save_png(draw_regions(tissue, grid), thumb_path)
            written.append(thumb_path)
            # The coords file is the "done" marker: written last.
            _write_coords(coords_path, slide, grid, tissue, target_mpp=target_mpp, region_size=region_size,
                          patch_size=patch_size, min_tissue=min_tissue, mpp_override=mpp)
        except BaseException:
            for p in written:
                p.unlink(missing_ok=True)
            raise
    return PatchResult(name, slide_path, "ok", int(len(grid.coords)), "", coords_path, mask_path, thumb_path)


def _collect_inputs(inputs: str | Path | Sequence[str | Path]) -> list[Path]:
    items = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    paths: list[Path] = []
    for item in items:
        p = Path(item).expanduser()
        if p.is_dir():
            found = list(iter_slide_files(p))
            if not found:
                raise InputFileError(p, "folder holds no slide files",
                                     "expected extensions: .svs .ndpi .mrxs .tif .tiff .scn .png .jpg …")
            paths.extend(found)
        elif p.exists():
            paths.append(p)
        else:
            raise InputFileError(p, "file not found")
    return paths


def patch_folder(
    inputs: str | Path | Sequence[str | Path],
    out_dir: str | Path,
    *,
    progress: bool = True,
    log=None,
    **kwargs,
) -> list[PatchResult]:
    """Run :func:`patch_slide` on a slide, a folder of slides or a list of either; write ``summary.csv``.

    A failing slide is recorded as ``failed`` with its reason and never stops the others (any
    exception, not only :class:`~hipt.errors.HIPTError`).  Slides already done are skipped and keep
    their summary rows; rows of slides from earlier runs that are not among ``inputs`` are kept too.

    Args:
        inputs: slide file(s) and/or folder(s).
        out_dir: output folder (``coords/``, ``masks/``, ``thumbnails/``, ``summary.csv``).
        progress: show a tqdm bar over slides.
        log: callable taking one line per failure (default: print to stderr).
        **kwargs: :func:`patch_slide` options (``target_mpp``, ``region_size``, ``patch_size``,
            ``mpp``, ``min_tissue``, ``overwrite``, ``tissue_kwargs``).

    Raises:
        InputFileError: an input does not exist, or a folder holds no slide files (nothing written).
    """
    _validate(kwargs.get("target_mpp", DEFAULT_TARGET_MPP), kwargs.get("region_size", DEFAULT_REGION_SIZE),
              kwargs.get("patch_size", DEFAULT_PATCH_SIZE), kwargs.get("min_tissue", DEFAULT_MIN_TISSUE))
    paths = _collect_inputs(inputs)
    out_dir = Path(out_dir)
    log = log or (lambda line: tqdm.write(line, file=sys.stderr))
    results: list[PatchResult] = []
    seen: dict[str, Path] = {}
    bar = tqdm(paths, desc="hipt patch", unit="slide", disable=not progress)
    for p in bar:
        bar.set_postfix_str(p.name, refresh=False)
        name = p.stem
        if name in seen:
            r = PatchResult(name, p, "failed", reason=f"duplicate slide name: {seen[name].name} has the same stem")
            log(f"error: {p}: {r.reason}")
            results.append(r)
            continue
        seen[name] = p
        try:
            r = patch_slide(p, out_dir, **kwargs)
        except Exception as e:  # noqa: BLE001 - one bad slide must not stop the batch
            r = PatchResult(name, p, "failed", reason=failure_reason(e))
            log(f"error: {e}" if isinstance(e, HIPTError) else f"error: {p}: {r.reason}")
        results.append(r)
    bar.close()

    record_results(out_dir / SUMMARY_NAME, results)
    return results


# ---------------------------------------------------------------------------------------------- CLI
def _positive_int(s: str) -> int:
    v = int(s)
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {s}")
    return v


def _positive_float(s: str) -> float:
    v = float(s)
    if not (v > 0 and math.isfinite(v)):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {s}")
    return v


def _fraction(s: str) -> float:
    v = float(s)
    if not 0.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {s}")
    return v


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``hipt patch``."""
    parser.description = (
        "Find tissue and cut slides into a grid of regions (HIPT: 4096 px at 0.5 µm/px, 16x16 patches of 256). "
        "Writes OUT/coords/<slide>.h5 (level-0 top-left x,y of each kept region), OUT/masks/<slide>.png, "
        "OUT/thumbnails/<slide>.png and OUT/summary.csv (slide,status,n_regions,reason). Re-running skips "
        "slides already done with the same options; failed slides are retried."
    )
    parser.epilog = (
        "exit status: 0 = every slide ok (or already done); 1 = at least one slide failed (see summary.csv "
        "and the 'error:' lines), or the input does not exist / holds no slides; 2 = usage error.\n"
        "tips: slides without resolution metadata fail with 'resolution unknown': pass --mpp (e.g. 0.5 for a "
        "20x scan, 0.25 for 40x); --min-tissue 0 keeps every region; the CPU book's cohorts use --region-size 1024 "
        "--patch-size 128 (8×8 patches per region)."
    )
    parser.add_argument("inputs", nargs="+", metavar="SLIDE_OR_FOLDER",
                        help="slide file(s) (.svs .ndpi .mrxs .tif …, or .png/.jpg with --mpp) or folder(s) of them")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--target-mpp", type=_positive_float, default=DEFAULT_TARGET_MPP,
                        help="µm per pixel of the regions (0.5 = '20x', as in HIPT)")
    parser.add_argument("--region-size", type=_positive_int, default=DEFAULT_REGION_SIZE,
                        help="region side in pixels at --target-mpp")
    parser.add_argument("--patch-size", type=_positive_int, default=DEFAULT_PATCH_SIZE,
                        help="patch side in pixels (the region size must be a multiple of it)")
    parser.add_argument("--mpp", type=_positive_float, default=None,
                        help="µm per level-0 pixel, overriding the slides' metadata (for slides without or "
                             "with wrong resolution metadata; applies to every input)")
    parser.add_argument("--min-tissue", type=_fraction, default=DEFAULT_MIN_TISSUE,
                        help="keep regions whose tissue fraction is at least this (0 keeps all)")
    parser.add_argument("--overwrite", action="store_true", help="redo slides that are already done")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """``hipt patch``: returns 0 (all ok), 1 (some slide failed) or 2 (usage error)."""
    if args.region_size % args.patch_size:
        print(f"error: --region-size ({args.region_size}) must be a multiple of --patch-size ({args.patch_size})",
              file=sys.stderr)
        return 2
    results = patch_folder(args.inputs, args.out, progress=not args.no_progress, target_mpp=args.target_mpp,
                           region_size=args.region_size, patch_size=args.patch_size, mpp=args.mpp,
                           min_tissue=args.min_tissue, overwrite=args.overwrite)
    n_ok = sum(r.status == "ok" for r in results)
    n_skip = sum(r.skipped for r in results)
    n_fail = len(results) - n_ok
    n_reg = sum(r.n_regions for r in results)
    print(f"{n_ok} ok ({n_skip} already done), {n_fail} failed, {n_reg} regions; summary: {Path(args.out) / 'summary.csv'}")
    return 1 if n_fail else 0
