"""From TCGA slides to Table 1: what to download, whether every slide has features, what it costs.

``hipt route`` covers the steps around the heavy commands of the route::

    hipt route manifest --out tcga/               # 1. which slide files to fetch (TSV + GDC API request body)
    gdc-client download -m tcga/gdc_manifest.txt   # 2. download (the GDC Data Transfer Tool)
    hipt patch ... ; hipt extract ...             # 3-4. regions, then features (one .h5 per slide)
    hipt route check --features tcga/features     # 5. every table slide has a features file with feats4k
    hipt reproduce table1 --param features_dir=tcga/features ...   # 6. the table
    hipt route estimate                           # time and disk of each step at TCGA scale

- :func:`slide_manifest`: the slides of the registered tasks' tables (:func:`hipt.tasks.tcga.load_task`),
  one row per (task, slide), with the TCGA project of each slide and its file name (``<slide_id>.svs``).
- :func:`write_manifest`: the table as a TSV, the file names one per line, and ``gdc_filter.json``: the body
  of a request to the public GDC API (:data:`GDC_MANIFEST_URL`) that returns a manifest in the format
  ``gdc-client download -m`` reads (``id, filename, md5, size, state``).  The reference tables hold file
  names, not the GDC's file UUIDs, so the manifest has to come from the GDC: either with that request, or
  from the GDC Data Portal (repository page: Data Type "Slide Image", Experimental Strategy "Diagnostic
  Slide", the task's projects; add the files to the cart and download its manifest), which
  :func:`filter_gdc_manifest` then narrows to the table's slides.  Nothing here calls the network.
- :func:`check_features`: which table slides lack ``<slide_id>.h5`` in a features folder, and which files
  lack ``feats4k`` (HIPT's frozen slide head reads only those) or cannot be read.
- :func:`route_estimate`: time and disk per step for the whole of Table 1's cohorts, from the measured
  records in ``benchmarks/results/`` (each row names its record and machine) and the sizes of the
  reference's released ``[M, 192]`` files (regions per slide).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hipt.errors import HIPTError, InputFileError
from hipt.io import atomic_write_text
from hipt.paths import project_root
from hipt.provenance import read_benchmark_results
from hipt.released.registry import slide_files
from hipt.tasks.tables import TABLE_METHODS
from hipt.tasks.tcga import TASKS, TaskData, load_task, read_table

__all__ = [
    "TABLE1_TASKS",
    "GDC_FILES_ENDPOINT",
    "GDC_MANIFEST_URL",
    "GDC_MANIFEST_COLUMNS",
    "MANIFEST_COLUMNS",
    "project_of",
    "slide_manifest",
    "gdc_filter",
    "gdc_request_body",
    "write_manifest",
    "read_gdc_manifest",
    "filter_gdc_manifest",
    "FeatureCheck",
    "check_features",
    "released_regions",
    "route_estimate",
    "add_arguments",
    "run",
]

#: the tasks of the paper's Table 1 (slide-level subtyping)
TABLE1_TASKS = ("tcga_brca_subtype", "tcga_kidney_subtype", "tcga_lung_subtype")

#: the public GDC API's files endpoint (search)
GDC_FILES_ENDPOINT = "https://api.gdc.cancer.gov/files"
#: the same endpoint answering with a download manifest instead of JSON hits
GDC_MANIFEST_URL = GDC_FILES_ENDPOINT + "?return_type=manifest"
#: the columns of a GDC download manifest (tab-separated), as ``gdc-client download -m`` reads it
GDC_MANIFEST_COLUMNS = ("id", "filename", "md5", "size", "state")
#: the columns of :func:`slide_manifest`
MANIFEST_COLUMNS = ("task", "project", "case_id", "slide_id", "file_name")

# The TCGA project of a slide: by its label code where one table mixes projects (lung, kidney), else by
# the task's study.
_PROJECT_OF_CODE = {
    "LUAD": "TCGA-LUAD", "LUSC": "TCGA-LUSC",
    "CCRCC": "TCGA-KIRC", "PRCC": "TCGA-KIRP", "CHRCC": "TCGA-KICH",
}
_PROJECT_OF_STUDY = {
    "tcga_brca": "TCGA-BRCA", "tcga_luad": "TCGA-LUAD", "tcga_kirc": "TCGA-KIRC", "tcga_kirp": "TCGA-KIRP",
    "tcga_stad": "TCGA-STAD", "tcga_coadread": "TCGA-COAD/TCGA-READ",
}
_MIXED_STUDIES = ("tcga_lung", "tcga_kidney")

# Bytes per 4096-px region in a ``hipt extract`` file: feats256 [256, 384] (2 bytes in float16, 4 in
# float32), feats4k [192] float32, coords [2] int64.
_PATCHES, _D256, _D4K = 256, 384, 192
# Outputs of ``hipt patch`` per slide (thumbnail PNG, mask PNG, coords .h5): 1.08 MB measured on a
# 32768² phantom slide when this module was written (the thumbnail is ≤ 1024 px a side: about constant).
_PATCH_MB_PER_SLIDE = 1.1


# ----------------------------------------------------------------------------------------- manifest
def project_of(task: str, code: Any = None) -> str:
    """The TCGA project of a slide of a registered task (``code``: its ``oncotree_code``).

    BRCA slides are ``TCGA-BRCA``; lung slides ``TCGA-LUAD``/``TCGA-LUSC`` and kidney slides
    ``TCGA-KIRC``/``TCGA-KIRP``/``TCGA-KICH`` by their code; survival tasks by their study.
    """
    spec = TASKS[task]
    if spec.study in _MIXED_STUDIES:
        try:
            return _PROJECT_OF_CODE[str(code)]
        except KeyError:
            raise HIPTError(f"{task}: no TCGA project known for code {code!r}") from None
    return _PROJECT_OF_STUDY.get(spec.study, spec.study.upper().replace("_", "-"))


def _task_data(task: str | TaskData, root: str | Path | None = None) -> TaskData:
    return task if isinstance(task, TaskData) else load_task(task, root=root)


def slide_manifest(task_names: str | list[str] | tuple[str, ...] = TABLE1_TASKS,
                   root: str | Path | None = None) -> pd.DataFrame:
    """The slides of registered tasks' tables: one row per (task, slide), table order.

    Args:
        task_names: names in ``hipt.tasks.tcga.TASKS`` (default: Table 1's three tasks).  Only the
            slides a task uses are listed (e.g. BRCA subtyping keeps IDC and ILC).
        root: a local copy of the reference's task files (default: ``../shared/reference/tcga`` when
            present, else downloaded; see :func:`hipt.tasks.tcga.fetch_task_files`).

    Returns:
        Columns ``task, project, case_id, slide_id, file_name`` (``file_name`` = ``<slide_id>.svs``, the
        name of the slide file on the GDC).
    """
    names = [task_names] if isinstance(task_names, str) else list(task_names)
    frames = [_manifest_rows(name, _task_data(_registered(name), root)) for name in names]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(MANIFEST_COLUMNS))


def _registered(name: str) -> str:
    if name not in TASKS:
        raise HIPTError(f"{name}: not a registered task (known: {', '.join(TASKS)})")
    return name


def _manifest_rows(name: str, data: TaskData) -> pd.DataFrame:
    t = data.table
    codes = t[TASKS[name].label_col] if TASKS[name].label_col in t.columns else pd.Series([None] * len(t))
    return pd.DataFrame({
        "task": name,
        "project": [project_of(name, c) for c in codes],
        "case_id": t["case_id"].astype(str).to_numpy(),
        "slide_id": t["slide_id"].astype(str).to_numpy(),
        "file_name": (t["slide_id"].astype(str) + ".svs").to_numpy(),
    })


def gdc_filter(file_names: list[str] | pd.Series) -> dict[str, Any]:
    """The GDC API filter selecting files by name: ``{"op": "in", "content": {"field": "files.file_name",
    "value": [...]}}`` (unique names, sorted)."""
    names = sorted({str(n) for n in file_names})
    return {"op": "in", "content": {"field": "files.file_name", "value": names}}


def gdc_request_body(file_names: list[str] | pd.Series) -> dict[str, Any]:
    """The JSON body of ``POST`` :data:`GDC_MANIFEST_URL`: the :func:`gdc_filter` and ``size`` (the number
    of files: the API returns 10 hits unless told more).  The answer is a GDC download manifest::

        curl -s -X POST -H 'Content-Type: application/json' -d @gdc_filter.json \\
            'https://api.gdc.cancer.gov/files?return_type=manifest' > gdc_manifest.txt
    """
    f = gdc_filter(file_names)
    return {"filters": f, "size": len(f["content"]["value"])}


def write_manifest(df: pd.DataFrame, path: str | Path) -> dict[str, Path]:
    """Write :func:`slide_manifest`'s table and what the GDC needs to turn it into a download manifest.

    Args:
        df: the table (at least ``file_name``).
        path: the TSV to write (e.g. ``tcga/slides.tsv``); the other files go next to it.

    Returns:
        The paths written: ``"tsv"`` (the table, tab-separated), ``"file_names"`` (``file_names.txt``:
        one unique file name per line), ``"gdc_filter"`` (``gdc_filter.json``: :func:`gdc_request_body`).
    """
    if "file_name" not in df.columns:
        raise HIPTError("write_manifest: the table has no 'file_name' column (make it with slide_manifest)")
    path = Path(path)
    names = sorted(set(df["file_name"].astype(str)))
    out = {"tsv": path, "file_names": path.with_name("file_names.txt"), "gdc_filter": path.with_name("gdc_filter.json")}
    atomic_write_text(out["tsv"], df.to_csv(sep="\t", index=False))
    atomic_write_text(out["file_names"], "".join(n + "\n" for n in names))
    atomic_write_text(out["gdc_filter"], json.dumps(gdc_request_body(names), indent=1) + "\n")
    return out


def read_gdc_manifest(path: str | Path) -> pd.DataFrame:
    """Read a GDC download manifest (tab-separated ``id, filename, md5, size, state``)."""
    path = Path(path)
    if not path.is_file():
        raise InputFileError(path, "GDC manifest not found")
    try:
        df = pd.read_csv(path, sep="\t", dtype=str)
    except (ValueError, pd.errors.ParserError) as e:
        raise InputFileError(path, f"not a tab-separated GDC manifest ({e})") from None
    missing = [c for c in GDC_MANIFEST_COLUMNS if c not in df.columns]
    if missing:
        raise InputFileError(path, f"a GDC manifest needs columns {list(GDC_MANIFEST_COLUMNS)}; {missing} missing",
                             "download it from the GDC Data Portal's cart, or POST gdc_filter.json to the GDC API")
    return df


def filter_gdc_manifest(gdc_manifest: str | Path | pd.DataFrame,
                        slides: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Keep the rows of a GDC manifest whose file is one of ``slides.file_name``.

    For a manifest downloaded from the portal for whole projects (every diagnostic slide of TCGA-BRCA, …).

    Returns:
        ``(kept rows, in the manifest's columns; file names of the table absent from the manifest)``.
    """
    df = gdc_manifest if isinstance(gdc_manifest, pd.DataFrame) else read_gdc_manifest(gdc_manifest)
    wanted = set(slides["file_name"].astype(str))
    kept = df[df["filename"].astype(str).isin(wanted)].drop_duplicates("filename").reset_index(drop=True)
    absent = sorted(wanted - set(kept["filename"].astype(str)))
    return kept, absent


# ------------------------------------------------------------------------------------------- check
@dataclass
class FeatureCheck:
    """What :func:`check_features` found.

    Attributes:
        task: the task's name.
        features_dir: the folder checked.
        slide_ids: the table's slides.
        missing: slides without ``<slide_id>.h5``.
        without_feats4k: files that have no ``feats4k`` dataset (``hipt extract --vit4k none``).
        unreadable: files that are not readable HDF5 files (e.g. a copy that was cut short).
        regions: regions ``M`` per slide, for the files that were read.
    """

    task: str
    features_dir: Path
    slide_ids: list[str]
    missing: list[str] = field(default_factory=list)
    without_feats4k: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)
    regions: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Every table slide has a readable features file with ``feats4k``."""
        return not (self.missing or self.without_feats4k or self.unreadable)

    def summary(self, limit: int = 10) -> str:
        """A few lines: counts, then the first ``limit`` slides of each problem."""
        n = len(self.slide_ids)
        m = np.array(list(self.regions.values()), dtype=np.int64)
        regions = f", {int(m.sum()):,} regions ({m.mean():.1f} per slide)" if m.size else ""
        lines = [f"{self.task}: {n - len(self.missing)} of {n} slides have features in {self.features_dir}{regions}"]
        for what, ids in (("missing", self.missing), ("without feats4k", self.without_feats4k),
                          ("unreadable", self.unreadable)):
            if ids:
                more = f" (and {len(ids) - limit} more)" if len(ids) > limit else ""
                lines.append(f"  {what}: {len(ids)}: {', '.join(ids[:limit])}{more}")
        if self.ok:
            lines.append("  ok: every slide has feats4k")
        return "\n".join(lines)


def _table_slides(task: str | Path | TaskData, splits_dir: str | Path | None,
                  root: str | Path | None) -> tuple[str, list[str]]:
    if isinstance(task, TaskData):
        return task.name, task.table["slide_id"].astype(str).tolist()
    if str(task) in TASKS or splits_dir is not None:
        data = load_task(task, splits_dir=splits_dir, root=root)
        return data.name, data.table["slide_id"].astype(str).tolist()
    path = Path(task)
    df = read_table(path)
    if "slide_id" not in df.columns:
        raise InputFileError(path, f"a task table needs a 'slide_id' column; it has {list(df.columns)[:12]}")
    ids = [s.strip().removesuffix(".svs") for s in df["slide_id"].astype(str)]
    return path.name.removesuffix(".zip").removesuffix(".csv"), list(dict.fromkeys(ids))


def check_features(task: str | Path | TaskData, features_dir: str | Path, *, splits_dir: str | Path | None = None,
                   root: str | Path | None = None) -> FeatureCheck:
    """Which slides of a task's table lack a features file, or ``feats4k`` in it.

    Args:
        task: a registered task name, a loaded :class:`hipt.tasks.tcga.TaskData`, or the path of a task
            table (its ``slide_id`` column; loaded with ``splits_dir`` when one is given).
        features_dir: the ``--out`` folder of ``hipt extract`` (``<slide_id>.h5`` per slide).
        splits_dir, root: as for :func:`hipt.tasks.tcga.load_task`.

    Returns:
        A :class:`FeatureCheck` (``ok`` when nothing is missing).  Only the dataset names and shapes are
        read, not the features.
    """
    import h5py

    features_dir = Path(features_dir)
    if not features_dir.is_dir():
        raise InputFileError(features_dir, "features folder not found", "pass the --out folder of 'hipt extract'")
    name, ids = _table_slides(task, splits_dir, root)
    report = FeatureCheck(task=name, features_dir=features_dir, slide_ids=ids)
    for sid in ids:
        path = features_dir / f"{sid}.h5"
        if not path.is_file():
            report.missing.append(sid)
            continue
        try:
            with h5py.File(path, "r") as f:
                if "feats4k" not in f:
                    report.without_feats4k.append(sid)
                key = "feats4k" if "feats4k" in f else "feats256" if "feats256" in f else None
                if key is not None:
                    report.regions[sid] = int(f[key].shape[0])
        except OSError:
            report.unreadable.append(sid)
    return report


# ---------------------------------------------------------------------------------------- estimate
def released_regions(slide_ids: list[str] | pd.Series) -> np.ndarray:
    """Regions ``M`` of each slide in the reference's released embeddings, from the file sizes in
    :mod:`hipt.released.registry` (a ``torch.save``-d float32 ``[M, 192]``: 768 bytes per region after a
    760-byte header); slides it did not release are left out.

    The reference cut its regions with its own tiling (CLAM's, 4096 px at 20×); ``hipt patch`` finds a
    similar but not identical number.
    """

    files = slide_files(list(slide_ids), missing="drop")
    return np.array([(f.size - 760) // 768 for f in files], dtype=np.int64)


def _records(records_dir: str | Path | None) -> dict[str, dict]:

    if records_dir is None:
        root = project_root()
        if root is None:
            return {}
        records_dir = root / "benchmarks" / "results"
    records_dir = Path(records_dir)
    if not records_dir.is_dir():
        return {}
    return {r["name"]: r for r in read_benchmark_results(records_dir)}


def _machine(record: dict) -> str:
    hw = record.get("hardware") or {}
    if hw.get("gpu"):
        return f"{hw['gpu']}"
    return f"CPU, {hw.get('cpu_count', '?')} cores ({hw.get('cpu', 'unknown')})"


def _encoder_rates(records: dict[str, dict]) -> list[tuple[str, float, str]]:
    """``(machine, 4096-px regions/s, source)`` from every region-encoder record: the best row's
    TFLOP/s divided by the FLOPs of one 4096-px region (ViT-S/16 on 256 patches + ViT-XS)."""
    flops = records.get("region_encoder_flops")
    per_region = next((r.get("analytic GFLOP") for r in (flops or {}).get("rows", [])
                       if "4096-px region" in str(r.get("what", ""))), None)
    per_region = float(per_region) * 1e9 if per_region else 3146.03e9
    out = []
    for name, rec in sorted(records.items()):
        rows = [r for r in rec.get("rows", []) if "TFLOP/s" in r and "regions/s" in r]
        if "region_encoder" not in name or not rows:
            continue
        best = max(rows, key=lambda r: float(r["TFLOP/s"]))
        rate = float(best["TFLOP/s"]) * 1e12 / per_region
        out.append((_machine(rec), rate, f"{name}.json: '{best['variant']}', {float(best['TFLOP/s']):g} TFLOP/s "
                                         f"/ {per_region / 1e9:.0f} GFLOP per 4096-px region ({rec.get('machine')})"))
    return sorted(out, key=lambda t: t[1])


def route_estimate(task_names: str | list[str] | tuple[str, ...] = TABLE1_TASKS, *,
                   regions_per_slide: float | None = None, slide_gb: float = 1.0, download_mb_s: float = 50.0,
                   readers: int = 16, epochs: int = 20, fractions: tuple[float, ...] = (1.0, 0.25),
                   gpus: tuple[str, ...] = ("T4", "H100"), records_dir: str | Path | None = None,
                   root: str | Path | None = None) -> pd.DataFrame:
    """Time and disk of each step of the route for these tasks' slides, at TCGA scale.

    Args:
        task_names: registered tasks (default: Table 1's); slides shared by tasks are counted once.
        regions_per_slide: 4096-px regions per slide; None: from the sizes of the reference's released
            ``[M, 192]`` files (:func:`released_regions`; about 38 on average), 40 for slides it did not
            release.
        slide_gb: GB per slide file (an estimate: TCGA diagnostic slides average about 1 GB).
        download_mb_s: assumed download bandwidth in MB/s (not measured).
        readers: processes reading regions in parallel during extraction (``hipt extract --workers``);
            the measured read rate is per process and assumed to scale with them.
        epochs, fractions: the fine-tuning protocol (the paper's: 20 epochs, 100 % and 25 %).
        gpus: GPU names that get a row of their own, "no record", when no region-encoder record names
            them.
        records_dir: the measured records (default: ``benchmarks/results`` of this checkout).
        root: as for :func:`hipt.tasks.tcga.load_task`.

    Returns:
        One row per step and machine: ``step, machine, slides, regions, hours, disk_gb, source``
        (``hours`` or ``disk_gb`` NaN where the step has none or nothing was measured); ``source`` names
        the record and machine each number comes from, or says it is an estimate.
    """
    names = [task_names] if isinstance(task_names, str) else list(task_names)
    tasks = {name: _task_data(_registered(name), root) for name in names}
    slides = pd.concat([_manifest_rows(k, v) for k, v in tasks.items()]).drop_duplicates("slide_id")
    n = len(slides)
    if regions_per_slide is None:
        m = released_regions(slides["slide_id"])
        regions = float(m.sum()) + 40.0 * (n - len(m))
        how = (f"regions from the sizes of the reference's released [M, 192] files ({len(m)} of {n} slides; "
               f"{regions / max(n, 1):.1f} per slide)")
    else:
        regions = float(regions_per_slide) * n
        how = f"{regions_per_slide:g} regions per slide (given)"
    M = int(round(regions))
    records = _records(records_dir)
    rows: list[dict[str, Any]] = []

    def row(step, machine, hours, disk_gb, source):
        rows.append({"step": step, "machine": machine, "slides": n, "regions": M, "hours": hours,
                     "disk_gb": disk_gb, "source": source})

    # 1. download
    gb = n * slide_gb
    row("download (gdc-client)", "network", gb * 1e3 / download_mb_s / 3600, gb,
        f"estimate: ~{slide_gb:g} GB per TCGA diagnostic slide; {download_mb_s:g} MB/s assumed, not measured")
    # 2. patch
    seg = records.get("patching")
    if seg:
        per = max(float(r["segment_tissue (s)"]) for r in seg["rows"])
        row("hipt patch", _machine(seg), n * per / 3600, n * _PATCH_MB_PER_SLIDE / 1e3,
            f"patching.json: segment_tissue, slowest row {per:.2f} s per slide ({seg['machine']}); "
            f"disk {_PATCH_MB_PER_SLIDE} MB per slide (thumbnail, mask, coords; measured on a phantom slide)")
    else:
        row("hipt patch", "no record", math.nan, n * _PATCH_MB_PER_SLIDE / 1e3, "no patching.json record")
    # 3. extract: read regions (CPU), encode (per machine)
    reads = records.get("patching_regions")
    if reads:
        r40 = next((r for r in reads["rows"] if "40" in str(r.get("slide", ""))), reads["rows"][-1])
        rate = float(r40["hipt regions/s"])
        row(f"hipt extract: read regions ({readers} processes)", f"{readers} CPU cores", M / (rate * readers) / 3600,
            math.nan, f"patching_regions.json: '{r40['slide']}' {rate:g} regions/s per process "
                      f"({reads['machine']}), × {readers} processes assumed; {how}")
    found = _encoder_rates(records)
    for machine, rate, source in found:
        row("hipt extract: encode (ViT-256 + ViT-4K)", machine, M / rate / 3600, math.nan, source)
    for gpu in gpus:
        if not any(gpu.lower() in machine.lower() for machine, _, _ in found):
            row("hipt extract: encode (ViT-256 + ViT-4K)", f"NVIDIA {gpu}", math.nan, math.nan,
                "no record in benchmarks/results (benchmarks/gpu_check.py on that GPU would make one)")
    fp16 = M * (_PATCHES * _D256 * 2 + _D4K * 4 + 16) / 1e9
    row("features on disk (hipt extract --storage-dtype float16)", "disk", math.nan, fp16,
        f"M × (256 × 384 × 2 + 192 × 4 + 16) bytes: feats256 in float16, feats4k float32, coords; "
        f"float32 feats256 (the default) doubles it; {how}")
    row("hipt route check", "any", math.nan, math.nan, "reads only the HDF5 headers: seconds to minutes")
    # 4. fine-tuning, Table 1's grid
    folds = records.get("mil_gpu_folds")
    if folds:

        fold_rows = [r for r in folds["rows"] if r.get("precision", "fp32") == "fp32"]
        per_slide = {r["method"]: float(r["seconds_3_epochs"]) / (3 * float(r["n_train"])) for r in fold_rows}
        methods = TABLE_METHODS
        fastest = min(per_slide.values())
        seconds_per_slide_epoch = sum(per_slide.get(m, fastest) for m in methods)
        train = sum(len(s.train) for data in tasks.values() for s in data.splits)
        slide_epochs = train * epochs * sum(fractions)
        absent = [m for m in methods if m not in per_slide]
        guessed = f"; {', '.join(absent)} taken as the fastest" if absent else ""
        row(f"hipt reproduce table1 ({len(methods)} methods, {'/'.join(f'{f:g}' for f in fractions)}, all folds)",
            _machine(folds), slide_epochs * seconds_per_slide_epoch / 3600, math.nan,
            f"mil_gpu_folds.json: train_fold end to end, s per slide and epoch summed over the methods "
            f"({folds['machine']}; synthetic bags of 10-50 regions){guessed}; "
            f"{train:,} training slides over the folds × {epochs} epochs × {sum(fractions):g} (fractions)")
    return pd.DataFrame(rows, columns=["step", "machine", "slides", "regions", "hours", "disk_gb", "source"])


# --------------------------------------------------------------------------------------------- CLI
SUBCOMMANDS = ("manifest", "check", "estimate")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``hipt route``: ``manifest``, ``check``, ``estimate``."""
    sub = parser.add_subparsers(dest="route_command", required=True, metavar="{" + ",".join(SUBCOMMANDS) + "}")
    fmt = argparse.ArgumentDefaultsHelpFormatter

    m = sub.add_parser("manifest", formatter_class=fmt,
                       help="the slide files of the tasks' tables: slides.tsv, file_names.txt, gdc_filter.json")
    m.add_argument("--tasks", nargs="+", default=list(TABLE1_TASKS), help="registered tasks")
    m.add_argument("--out", type=Path, required=True, help="folder for the files")
    m.add_argument("--gdc-manifest", type=Path, default=None,
                   help="a GDC manifest downloaded for whole projects: write OUT/gdc_manifest.txt with only the "
                        "tables' slides")
    m.add_argument("--root", type=Path, default=None, help="local copy of the reference's task files")

    c = sub.add_parser("check", formatter_class=fmt,
                       help="every table slide has <slide_id>.h5 with feats4k in the features folder")
    c.add_argument("--tasks", nargs="+", default=list(TABLE1_TASKS),
                   help="registered tasks, or task table CSVs (slide_id column)")
    c.add_argument("--features", type=Path, required=True, help="the --out folder of 'hipt extract'")
    c.add_argument("--splits", type=Path, default=None, help="split folder, for a task table of your own")
    c.add_argument("--root", type=Path, default=None, help="local copy of the reference's task files")

    e = sub.add_parser("estimate", formatter_class=fmt,
                       help="time and disk of each step at TCGA scale, from the measured records")
    e.add_argument("--tasks", nargs="+", default=list(TABLE1_TASKS), help="registered tasks")
    e.add_argument("--regions-per-slide", type=float, default=None,
                   help="default: from the sizes of the reference's released [M, 192] files")
    e.add_argument("--slide-gb", type=float, default=1.0, help="GB per slide file (estimate)")
    e.add_argument("--download-mb-s", type=float, default=50.0, help="assumed download bandwidth (MB/s)")
    e.add_argument("--readers", type=int, default=16, help="processes reading regions during extraction")
    e.add_argument("--records", type=Path, default=None, help="folder of the records (default: benchmarks/results)")
    e.add_argument("--root", type=Path, default=None, help="local copy of the reference's task files")


def _manifest(args: argparse.Namespace) -> int:
    df = slide_manifest(args.tasks, root=args.root)
    paths = write_manifest(df, args.out / "slides.tsv")
    unique = df.drop_duplicates("file_name")
    counts = ", ".join(f"{p} {k}" for p, k in unique["project"].value_counts().sort_index().items())
    print(f"{len(unique)} slide files ({counts}); wrote {paths['tsv']}, {paths['file_names'].name}, "
          f"{paths['gdc_filter'].name}")
    if args.gdc_manifest is not None:
        kept, absent = filter_gdc_manifest(args.gdc_manifest, unique)
        dest = args.out / "gdc_manifest.txt"
        atomic_write_text(dest, kept.to_csv(sep="\t", index=False))
        size = pd.to_numeric(kept["size"], errors="coerce").sum() / 1e9
        print(f"wrote {dest}: {len(kept)} files, {size:.0f} GB")
        if absent:
            print(f"{len(absent)} table slides are not in {args.gdc_manifest}, e.g. {', '.join(absent[:5])}",
                  file=sys.stderr)
            return 1
        print(f"next: gdc-client download -m {dest} -d DOWNLOAD_DIR")
    else:
        print(f"next: curl -s -X POST -H 'Content-Type: application/json' -d @{paths['gdc_filter']} "
              f"'{GDC_MANIFEST_URL}' > {args.out / 'gdc_manifest.txt'}")
    return 0


def _check(args: argparse.Namespace) -> int:
    ok = True
    for task in args.tasks:
        report = check_features(task, args.features, splits_dir=args.splits, root=args.root)
        print(report.summary())
        ok &= report.ok
    return 0 if ok else 1


def _estimate(args: argparse.Namespace) -> int:
    df = route_estimate(args.tasks, regions_per_slide=args.regions_per_slide, slide_gb=args.slide_gb,
                        download_mb_s=args.download_mb_s, readers=args.readers, records_dir=args.records,
                        root=args.root)
    with pd.option_context("display.max_colwidth", 200, "display.width", 250):
        print(df.drop(columns=["source"]).to_string(index=False, float_format=lambda v: f"{v:,.1f}"))
        print()
        for r in df.itertuples():
            print(f"- {r.step} [{r.machine}]: {r.source}")
    return 0


def run(args: argparse.Namespace) -> int:
    """``hipt route``: exit 0, or 1 when ``check`` finds slides without features (or ``manifest`` finds
    table slides missing from a GDC manifest)."""
    return {"manifest": _manifest, "check": _check, "estimate": _estimate}[args.route_command](args)
