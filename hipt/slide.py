"""Slide access at a physical resolution: OpenSlide formats and plain RGB images.

A whole-slide image (WSI) is a pyramid: level 0 is the full scan (e.g. 0.5 µm/px for a "20×" scan,
0.25 µm/px for "40×"), and each further level is a downsampled copy (factors of 2 or 4) so that a
viewer, or a tissue detector, never needs to decode the gigapixel level 0.  HIPT works at a fixed
*physical* resolution (0.5 µm/px), so :meth:`Slide.read_region` takes a level-0 position and a size at
the target resolution, picks the best pyramid level and resamples.

Physical resolution (µm per level-0 pixel, "mpp") is resolved in this order:

1. the ``mpp`` given explicitly (``hipt patch --mpp``): it overrides whatever the file says;
2. OpenSlide's ``openslide.mpp-x``/``openslide.mpp-y`` (vendor metadata: Aperio ``MPP``, Hamamatsu,
   MIRAX, and, for generic tiled TIFF, the TIFF resolution tags);
3. the TIFF resolution tags ``XResolution``/``YResolution`` with ``ResolutionUnit`` centimetre or
   inch (for flat TIFFs opened as plain images);
4. nothing else.  The objective power (``openslide.objective-power``) is **not** turned into an mpp
   silently: "20×" means 0.5 µm/px only by convention and scanners differ (0.46–0.50 µm/px and
   more), so a slide with an objective power but no mpp raises :class:`~hipt.errors.MissingMPPError`
   whose hint proposes ``--mpp 10/objective`` for the user to confirm.

An mpp outside :data:`PLAUSIBLE_MPP` (0.05–20 µm/px) is rejected: such values come from TIFF writers
that store screen resolutions (72 dpi ≈ 353 µm/px, or 10 px/cm = 1000 µm/px), not from a scanner.

Scale snapping: when the ratio ``target_mpp / mpp`` is within 2 % of a whole number (or of its
reciprocal), it is taken as exactly that number.  A 0.499 µm/px Aperio scan is thus read 1:1 as
0.5 µm/px (no 0.2 % resampling blur), and a 0.2527 µm/px 40× scan is read as exactly 2:1.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

import numpy as np
import openslide
from PIL import Image

from hipt.errors import MissingMPPError, SlideError
from hipt.io import RemoteFile

__all__ = [
    "CMU1_SMALL_REGION",
    "OPENSLIDE_EXTENSIONS",
    "IMAGE_EXTENSIONS",
    "SLIDE_EXTENSIONS",
    "PLAUSIBLE_MPP",
    "SCALE_SNAP",
    "Slide",
    "open_slide",
    "level0_scale",
    "iter_slide_files",
]

#: OpenSlide's public test slide (Aperio SVS, 2220×2967 px at 0.499 µm/px, 20×, CC0).
CMU1_SMALL_REGION = RemoteFile(
    url="https://openslide.cs.cmu.edu/download/openslide-testdata/Aperio/CMU-1-Small-Region.svs",
    sha256="ed92d5a9f2e86df67640d6f92ce3e231419ce127131697fbbce42ad5e002c8a7",
    filename="CMU-1-Small-Region.svs",
    size=1_938_955,
    description="OpenSlide test data: Aperio SVS, 1 level, 2220x2967 px, 0.499 um/px (20x), CC0",
)

#: Extensions of whole-slide formats that OpenSlide reads, as picked up in a folder.  (DICOM WSIs are
#: folders of many ``.dcm`` files: pass one of them explicitly; a folder scan would list each file.)
OPENSLIDE_EXTENSIONS = frozenset(
    {".svs", ".tif", ".tiff", ".ndpi", ".vms", ".vmu", ".scn", ".mrxs", ".svslide", ".bif"}
)
#: Plain RGB images, accepted with an explicit mpp (or TIFF resolution tags).
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"})
#: Everything :func:`iter_slide_files` picks up in a folder.
SLIDE_EXTENSIONS = OPENSLIDE_EXTENSIONS | IMAGE_EXTENSIONS

#: Accepted range of µm per level-0 pixel (inclusive).
PLAUSIBLE_MPP = (0.05, 20.0)
#: Relative tolerance under which a scale factor is snapped to a whole number (see module docstring).
SCALE_SNAP = 0.02

# Plain images larger than this many pixels are refused (they would be decoded whole into memory).
_MAX_PLAIN_PIXELS = 1 << 30

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def level0_scale(mpp: float, target_mpp: float) -> float:
    """Level-0 pixels per target pixel, ``target_mpp / mpp``, snapped to a whole ratio within 2 %.

    Examples: ``(0.499, 0.5) -> 1.0``, ``(0.25, 0.5) -> 2.0``, ``(2.0, 0.5) -> 0.25``,
    ``(0.3, 0.5) -> 1.666…`` (not snapped).
    """
    f = target_mpp / mpp
    if f >= 1:
        r = float(round(f))
    else:
        r = 1.0 / round(1.0 / f)
    return r if abs(f - r) <= SCALE_SNAP * r else f


def _check_mpp(path: Path, mpp: float, source: str) -> float:
    lo, hi = PLAUSIBLE_MPP
    if not (isinstance(mpp, (int, float)) and math.isfinite(mpp) and lo <= mpp <= hi):
        raise SlideError(
            path,
            f"implausible resolution {mpp:g} µm/px from {source} (expected {lo:g}–{hi:g} µm/px; "
            "such values usually come from a TIFF writer's screen resolution, not a scanner)",
            "pass the true resolution with --mpp (e.g. --mpp 0.5 for a 20x scan)",
        )
    return float(mpp)


def _tiff_resolution_mpp(xres: object, unit: object) -> float | None:
    """µm/px from a TIFF XResolution (pixels per unit) and ResolutionUnit, or None if unusable."""
    try:
        x = float(xres)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    if not math.isfinite(x) or x <= 0:
        return None
    u = _unit_name(unit)
    if u == "centimeter":
        return 1e4 / x
    if u == "inch":
        return 25400.0 / x
    return None


def _unit_name(unit: object) -> str:
    """TIFF ResolutionUnit as a word: 1/none, 2/inch, 3/centimeter."""
    u = str(getattr(unit, "name", unit)).lower()
    return {"1": "none", "2": "inch", "3": "centimeter", "centimetre": "centimeter", "cm": "centimeter"}.get(u, u)


def _tiff_data_end(path: Path, size: int) -> tuple[str, int] | None:
    """Walk a TIFF's directory chain; return ``(what, byte)`` of the first thing past the file's end.

    Checks every image directory (IFD) offset and the end of every strip/tile (offsets + byte counts),
    which is where a truncated download shows.  Returns None when everything lies inside the file.
    """
    with open(path, "rb") as f:
        head = f.read(16)
        endian = "<" if head[:2] == b"II" else ">"
        big = head[2:4] in (b"+\x00", b"\x00+")
        if big:
            count_fmt, entry_size, off_fmt, offset = "Q", 20, "Q", struct.unpack(endian + "Q", head[8:16])[0]
        else:
            count_fmt, entry_size, off_fmt, offset = "H", 12, "I", struct.unpack(endian + "I", head[4:8])[0]
        type_sizes = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 16: 8, 17: 8, 18: 8}
        type_fmts = {3: "H", 4: "I", 16: "Q"}
        seen: set[int] = set()
        n_ifd = 0
        while offset and offset not in seen and n_ifd < 10_000:
            seen.add(offset)
            if offset >= size:
                return f"image directory #{n_ifd}", offset
            f.seek(offset)
            raw = f.read(8 if big else 2)
            if len(raw) < (8 if big else 2):
                return f"image directory #{n_ifd}", offset
            n = struct.unpack(endian + count_fmt, raw)[0]
            entries = f.read(n * entry_size)
            if len(entries) < n * entry_size:
                return f"image directory #{n_ifd}", offset + len(raw) + n * entry_size
            arrays: dict[int, list[int]] = {}
            for i in range(n):
                e = entries[i * entry_size:(i + 1) * entry_size]
                tag, typ = struct.unpack(endian + "HH", e[:4])
                cnt = struct.unpack(endian + ("Q" if big else "I"), e[4:12] if big else e[4:8])[0]
                value = e[12:20] if big else e[8:12]
                nbytes = type_sizes.get(typ, 1) * cnt
                if nbytes > len(value):
                    data_off = struct.unpack(endian + off_fmt, value)[0]
                    if data_off + nbytes > size:
                        return f"metadata of image directory #{n_ifd}", data_off + nbytes
                    if tag in (273, 279, 324, 325) and typ in type_fmts:
                        f.seek(data_off)
                        buf = f.read(nbytes)
                        arrays[tag] = list(struct.unpack(endian + type_fmts[typ] * cnt, buf))
                elif tag in (273, 279, 324, 325) and typ in type_fmts:
                    arrays[tag] = list(struct.unpack(endian + type_fmts[typ] * cnt, value[:nbytes]))
            for offs_tag, cnt_tag in ((273, 279), (324, 325)):
                if offs_tag in arrays and cnt_tag in arrays:
                    end = max((o + c for o, c in zip(arrays[offs_tag], arrays[cnt_tag]) if c), default=0)
                    if end > size:
                        return f"pixel data of image #{n_ifd}", end
            f.seek(offset + (8 if big else 2) + n * entry_size)
            nxt = f.read(8 if big else 4)
            if len(nxt) < (8 if big else 4):
                return f"image directory #{n_ifd}", offset
            offset = struct.unpack(endian + off_fmt, nxt)[0]
            n_ifd += 1
    return None


def _truncation(path: Path) -> str | None:
    """A message if ``path`` is a TIFF whose directories or pixel data run past its end, else None."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            if f.read(4) not in _TIFF_MAGIC:
                return None
        past_end = _tiff_data_end(path, size)
    except (OSError, struct.error):
        return None
    if past_end is None:
        return None
    what, byte = past_end
    return (f"truncated TIFF/SVS: its {what} needs the file to reach byte {byte}, but the file has only "
            f"{size} bytes (an interrupted download or copy?)")


def _describe_non_slide(path: Path) -> str:
    """Why OpenSlide refuses ``path``: not a TIFF at all, or a TIFF that looks truncated."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(16)
    if size == 0:
        return "file is empty"
    if head[:4] not in _TIFF_MAGIC:
        return f"not a whole-slide image: OpenSlide does not recognise its format ({size} bytes, no TIFF header)"
    truncated = _truncation(path)
    if truncated:
        return truncated
    return f"a TIFF that OpenSlide cannot read as a slide (corrupt or an unsupported layout; {size} bytes)"


class Slide:
    """An open whole-slide image (or plain image) with a known physical resolution.

    Use :func:`open_slide` to create one.  Attributes mirror OpenSlide's: ``dimensions`` (level-0
    ``(W, H)``), ``level_count``, ``level_dimensions``, ``level_downsamples``; plus ``mpp`` (µm per
    level-0 pixel, or None when opened with ``require_mpp=False``), ``mpp_source`` (where it came
    from), ``objective_power`` (float or None), ``vendor``, ``path`` and ``name`` (the file stem).
    """

    def __init__(self, path: Path, backend, vendor: str, mpp: float | None, mpp_source: str,
                 objective_power: float | None):
        self.path = path
        self.name = path.stem
        self._osr = backend
        self.vendor = vendor
        self.mpp = mpp
        self.mpp_source = mpp_source
        self.objective_power = objective_power
        self.dimensions: tuple[int, int] = tuple(backend.dimensions)  # type: ignore[assignment]
        self.level_count: int = backend.level_count
        self.level_dimensions: tuple[tuple[int, int], ...] = tuple(tuple(d) for d in backend.level_dimensions)
        self.level_downsamples: tuple[float, ...] = tuple(float(d) for d in backend.level_downsamples)

    # ------------------------------------------------------------------ pickling (DataLoader workers)
    def __getstate__(self) -> dict:
        """Pickle as (path, mpp): the unpickled copy reopens the file in its own process.

        OpenSlide handles must not be shared between processes; with a ``spawn``/``forkserver``
        DataLoader this makes a :class:`Slide` safe to pass to workers.  With ``fork``, open the slide
        inside each worker (e.g. lazily on first use) instead of before the DataLoader starts.
        """
        return {"path": str(self.path), "mpp": self.mpp, "closed": self._osr is None}

    def __setstate__(self, state: dict) -> None:
        other = open_slide(state["path"], mpp=state["mpp"], require_mpp=False)
        self.__dict__.update(other.__dict__)
        if state.get("closed"):
            self.close()

    # ------------------------------------------------------------------ context manager
    def __enter__(self) -> Slide:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Release the file handle (idempotent)."""
        if self._osr is not None:
            self._osr.close()
            self._osr = None

    def __repr__(self) -> str:
        w, h = self.dimensions
        mpp = f"{self.mpp:g} µm/px" if self.mpp else "mpp unknown"
        return f"Slide({self.name!r}, {w}x{h} px, {mpp}, {self.level_count} levels, {self.vendor})"

    @property
    def properties(self) -> dict[str, str]:
        """The raw metadata (OpenSlide properties; empty for plain images)."""
        return dict(self._backend().properties)

    def _backend(self):
        if self._osr is None:
            raise SlideError(self.path, "slide is closed")
        return self._osr

    def _need_mpp(self) -> float:
        if self.mpp is None:
            raise MissingMPPError(self.path, "resolution (µm/px) unknown", "pass mpp= / --mpp")
        return self.mpp

    # ------------------------------------------------------------------ geometry
    def level0_scale(self, target_mpp: float) -> float:
        """Level-0 pixels per pixel at ``target_mpp`` (snapped, see :func:`level0_scale`)."""
        return level0_scale(self._need_mpp(), target_mpp)

    def level0_extent(self, size: int, target_mpp: float = 0.5) -> int:
        """Level-0 pixels spanned by ``size`` pixels at ``target_mpp`` (e.g. 4096 → 8192 at 40×)."""
        return max(1, int(round(size * self.level0_scale(target_mpp))))

    def best_level(self, downsample: float) -> int:
        """The coarsest level whose downsample is ≤ ``downsample`` (1 % tolerance).

        Like OpenSlide's ``get_best_level_for_downsample`` but tolerant of the rounding in stored
        downsamples: a level at 2.0005 counts for a requested 2.0 (OpenSlide would return level 0
        and decode four times the pixels).
        """
        best = 0
        for i, d in enumerate(self.level_downsamples):
            if d <= downsample * 1.01:
                best = i
        return best

    # ------------------------------------------------------------------ reading
    def _read_level(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> Image.Image:
        """OpenSlide ``read_region`` composited onto white → RGB PIL image (out-of-slide = white)."""
        try:
            rgba = self._backend().read_region((int(location[0]), int(location[1])), level,
                                               (int(size[0]), int(size[1])))
        except openslide.OpenSlideError as e:
            raise SlideError(self.path, f"cannot read pixels at level {level}, {location}, size {size}: {e}",
                             "the file may be truncated or corrupt") from None
        if rgba.mode != "RGBA":
            return rgba.convert("RGB")
        alpha_lo, _ = rgba.getchannel("A").getextrema()
        if alpha_lo == 255:
            return rgba.convert("RGB")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        white.alpha_composite(rgba)
        return white.convert("RGB")

    def read_region(self, xy_level0: tuple[int, int], size: int | tuple[int, int],
                    target_mpp: float = 0.5) -> np.ndarray:
        """Read ``size`` pixels at ``target_mpp`` whose top-left corner is ``xy_level0`` (level-0 px).

        The level-0 extent is ``size × target_mpp / mpp`` (snapped); it is read from the coarsest
        pyramid level that is still at least as fine as the target, then resampled (area averaging
        when shrinking, bicubic when enlarging).  A 40× slide (0.25 µm/px) without a 2× level reads
        8192² px at level 0 and shrinks them to 4096².  Areas outside the slide are white.

        Returns:
            ``[H, W, 3]`` uint8 RGB, ``(W, H) = size`` (an int means a square).
        """
        w, h = (size, size) if isinstance(size, (int, np.integer)) else (int(size[0]), int(size[1]))
        if w <= 0 or h <= 0:
            raise ValueError(f"size must be positive, got {size}")
        f = self.level0_scale(target_mpp)
        ext_w, ext_h = w * f, h * f
        level = self.best_level(f)
        d = self.level_downsamples[level]
        lw, lh = ext_w / d, ext_h / d
        # Within 1 % of the wanted size (e.g. a level stored as 2.0005 for 2.0): read it 1:1.
        if abs(lw - w) <= 0.01 * w and abs(lh - h) <= 0.01 * h:
            lw, lh = w, h
        lw, lh = max(1, int(math.ceil(lw - 1e-6))), max(1, int(math.ceil(lh - 1e-6)))
        img = self._read_level(xy_level0, level, (lw, lh))
        if (lw, lh) != (w, h):
            k = lw // w
            if k > 1 and lw == k * w and lh == k * h:
                img = img.reduce(k)  # whole-ratio shrink (40× → 20×): box average, several times faster
            else:
                shrink = lw >= w and lh >= h
                img = img.resize((w, h), Image.Resampling.BOX if shrink else Image.Resampling.BICUBIC)
        return np.asarray(img)

    def read_lowres(self, downsample: float, max_pixels: int = 1 << 24) -> np.ndarray:
        """The whole slide at ``downsample`` × level 0 (``[h, w, 3]`` uint8), from a low level.

        Reads the coarsest level at least as fine as ``downsample``, in horizontal strips of at most
        ``max_pixels`` level pixels each, so that memory stays bounded even for a slide without a
        pyramid.  Cost depends on the chosen level's size, not on level 0's, for pyramidal slides.
        """
        W, H = self.dimensions
        out_w, out_h = max(1, int(round(W / downsample))), max(1, int(round(H / downsample)))
        level = self.best_level(downsample)
        lw, lh = self.level_dimensions[level]
        ld = self.level_downsamples[level]
        rows_per_strip = max(1, int(max_pixels // max(lw, 1)))
        # Strip boundaries in output rows; each maps to a band of level rows.
        out_rows = max(1, int(rows_per_strip * out_h / max(lh, 1)))
        strips = []
        for r0 in range(0, out_h, out_rows):
            r1 = min(out_h, r0 + out_rows)
            y0 = r0 * H / out_h  # level-0 rows
            y1 = r1 * H / out_h
            ly0, ly1 = int(math.floor(y0 / ld)), int(math.ceil(y1 / ld))
            ly1 = min(max(ly1, ly0 + 1), lh)
            band = self._read_level((0, int(round(ly0 * ld))), level, (lw, ly1 - ly0))
            if band.size != (out_w, r1 - r0):
                band = band.resize((out_w, r1 - r0), Image.Resampling.BOX)
            strips.append(np.asarray(band))
        return np.concatenate(strips, axis=0)

    def thumbnail(self, max_size: int = 1024) -> np.ndarray:
        """The whole slide with its longer side ``max_size`` px (``[h, w, 3]`` uint8), from a low level."""
        W, H = self.dimensions
        return self.read_lowres(max(W, H) / max_size)

    def levels_table(self) -> list[dict[str, float | int | None]]:
        """One dict per level: ``level, width, height, downsample, mpp`` (mpp None if unknown)."""
        rows = []
        for i, ((w, h), d) in enumerate(zip(self.level_dimensions, self.level_downsamples, strict=True)):
            rows.append({"level": i, "width": w, "height": h, "downsample": round(d, 4),
                         "mpp": None if self.mpp is None else round(self.mpp * d, 4)})
        return rows


def _resolve_mpp(path: Path, props: dict[str, str], plain_image: Image.Image | None) -> tuple[float | None, str]:
    """(mpp, source) from metadata, or (None, reason-it-is-missing)."""
    mx, my = props.get("openslide.mpp-x"), props.get("openslide.mpp-y")
    if mx is not None:
        try:
            x = float(mx)
            y = float(my) if my is not None else x
        except ValueError:
            x = y = float("nan")
        if math.isfinite(x) and math.isfinite(y) and x > 0 and y > 0:
            if abs(x - y) > 0.05 * max(x, y):
                raise SlideError(path, f"non-square pixels ({x:g} × {y:g} µm) are not supported")
            return _check_mpp(path, x, "openslide.mpp-x"), "openslide.mpp-x"
    # TIFF resolution tags (OpenSlide exposes them as tiff.*; PIL as tag_v2 for flat TIFFs).
    xres, unit = props.get("tiff.XResolution"), props.get("tiff.ResolutionUnit")
    if plain_image is not None and getattr(plain_image, "format", None) == "TIFF":
        tags = getattr(plain_image, "tag_v2", {})
        xres, unit = tags.get(282), tags.get(296, 2)  # XResolution, ResolutionUnit (default inch)
    m = _tiff_resolution_mpp(xres, unit)
    if m is not None:
        return _check_mpp(path, m, f"TIFF resolution tags ({float(xres):g} px per {_unit_name(unit)})"), "tiff-resolution"
    return None, "no mpp in the metadata"


def open_slide(path: str | Path, mpp: float | None = None, *, require_mpp: bool = True) -> Slide:
    """Open a whole-slide image (SVS, NDPI, MRXS, generic tiled TIFF, …) or a plain RGB image.

    Args:
        path: the slide file (for MRXS, the ``.mrxs`` file beside its data folder).
        mpp: µm per level-0 pixel; overrides the metadata (use it for slides without, or with wrong,
            resolution metadata).  Plain PNG/JPEG images need it.
        require_mpp: raise :class:`~hipt.errors.MissingMPPError` when the resolution is unknown
            (default).  ``False`` opens anyway with ``slide.mpp = None`` (viewing only).

    Raises:
        SlideError: missing file, not a slide, truncated/corrupt file, implausible mpp.
        MissingMPPError: no resolution metadata and no ``mpp`` given.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise SlideError(path, "file not found")
    if path.is_dir():
        raise SlideError(path, "is a folder, not a slide file")
    if mpp is not None:
        _check_mpp(path, float(mpp), "the mpp argument")

    ext = path.suffix.lower()
    plain: Image.Image | None = None
    try:
        vendor = openslide.OpenSlide.detect_format(str(path))
    except (openslide.OpenSlideError, OSError) as e:  # pragma: no cover - depends on the library
        raise SlideError(path, f"cannot be read: {e}") from None
    if vendor is not None:
        try:
            backend = openslide.OpenSlide(str(path))
        except (openslide.OpenSlideError, OSError) as e:
            truncated = _truncation(path)
            if truncated:
                raise SlideError(path, truncated) from None
            raise SlideError(path, f"OpenSlide cannot open this {vendor} file: {e}",
                             "the file may be truncated or corrupt") from None
    elif ext in IMAGE_EXTENSIONS:
        try:
            with Image.open(path) as probe:
                n_px = probe.size[0] * probe.size[1]
            if n_px > _MAX_PLAIN_PIXELS:
                raise SlideError(path, f"plain image of {n_px} pixels is too large to decode whole",
                                 "convert it to a tiled pyramidal TIFF")
            saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
            try:
                plain = Image.open(path)
                plain.load()
            finally:
                Image.MAX_IMAGE_PIXELS = saved
        except SlideError:
            raise
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            raise SlideError(path, f"neither a slide OpenSlide reads nor an image PIL reads ({e})") from None
        rgb = plain.convert("RGB") if plain.mode != "RGB" else plain
        backend = openslide.ImageSlide(rgb)  # level 0 only; read_region pads with transparency
        vendor = "image"
    else:
        raise SlideError(path, _describe_non_slide(path))

    props = dict(backend.properties)
    obj = props.get("openslide.objective-power")
    try:
        objective = float(obj) if obj is not None else None
    except ValueError:
        objective = None
    try:
        if mpp is not None:
            resolved, source = float(mpp), "given"
        else:
            if vendor == "image" and plain is not None and plain.format != "TIFF":
                resolved, source = None, f"a plain {plain.format or 'image'} has no trustworthy resolution"
            else:
                resolved, source = _resolve_mpp(path, props, plain)
        if resolved is None and require_mpp:
            hint = "pass the resolution with --mpp (µm per level-0 pixel)"
            if objective:
                hint = (f"the slide reports objective power {objective:g}x, which by convention is "
                        f"≈{10.0 / objective:g} µm/px: pass --mpp {10.0 / objective:g} if that is right")
            raise MissingMPPError(path, f"resolution unknown: {source}", hint)
    except BaseException:
        backend.close()
        raise
    return Slide(path, backend, vendor, resolved, source, objective)


def iter_slide_files(folder: str | Path) -> Iterator[Path]:
    """Slide and image files directly in ``folder``, sorted by name (MRXS data folders are skipped)."""
    for p in sorted(Path(folder).iterdir()):
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in SLIDE_EXTENSIONS:
            yield p
