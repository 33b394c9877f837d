"""TCGA slide-level tasks of the paper, and a generic loader for task tables in the same format.

A *task* is a slide table plus cross-validation split files (:mod:`hipt.tasks.splits`):

- **slide table**: a CSV (or a zip holding one) with ``case_id``, ``slide_id`` (``….svs``), the label
  column (``oncotree_code`` for TCGA) and, for survival, ``survival_months`` and ``censorship``
  (1 = censored).  The first column of the reference files is an unnamed row index (dropped).
- **split files**: ``splits_{k}.csv`` with slide ids (subtyping) or case ids (survival).

:data:`TASKS` registers the paper's tasks with the reference's public files (github.com/mahmoodlab/HIPT
at commit 780fafae): they are downloaded at run time through :func:`hipt.io.download` (cached,
sha256-checked) or read from a local copy (``root=``).  :func:`load_task` returns a :class:`TaskData`
whose ``table`` has the canonical columns

- ``slide_id``: the slide's stem (``.svs`` removed with ``str.removesuffix``: ``rstrip('.svs')``, as
  the reference does, strips *characters* and would eat a trailing ``s``/``v``/``.`` of the id),
- ``case_id``, ``label`` (int), ``label_name``, and for survival ``survival_months``, ``censorship``.

Traps handled here: the BRCA and lung zips hold one member named ``../tcga_*_subset.csv.zip`` (a
path that climbs out of an extraction folder; it is a plain CSV): archives are read in memory and
never extracted by member name.  Subtyping split files list whole cohorts: ids absent from the table
are dropped and the counts logged (logger ``hipt.tasks``).

Survival is patient-level: the slides of a case are one bag (concatenated along M) with the case's
label, the time bin of its survival (:func:`hipt.survival.discretize_survival`, quartiles of the
uncensored times over all cases of the table, as MCAT computes them before splitting).
"""

from __future__ import annotations

import io
import logging
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from hipt.errors import HIPTError, InputFileError
from hipt.io import RemoteFile, download
from hipt.paths import cache_dir, shared_reference_dir
from hipt.survival import discretize_survival
from hipt.tasks.splits import Split, filter_split, read_splits, subsample_train

__all__ = [
    "REFERENCE_COMMIT",
    "REFERENCE_BASE_URL",
    "TaskSpec",
    "TASKS",
    "TaskFiles",
    "TaskData",
    "read_table",
    "fetch_task_files",
    "load_task",
    "get_task",
]

log = logging.getLogger("hipt.tasks")

REFERENCE_COMMIT = "780fafaed2e5b112bc1ed6e78852af1fe6714342"
REFERENCE_BASE_URL = f"https://raw.githubusercontent.com/mahmoodlab/HIPT/{REFERENCE_COMMIT}"

# Where each kind of file lives, in the reference repository and in a local copy (the layout of
# ``shared/reference/tcga`` and of the download cache).
_REMOTE_LAYOUT = {
    "table": "2-Weakly-Supervised-Subtyping/dataset_csv/{file}",
    "subtype": "2-Weakly-Supervised-Subtyping/splits/10foldcv_subtype/{study}/splits_{k}.csv",
    "survival": "2-Weakly-Supervised-Survival/splits/5foldcv/{study}/splits_{k}.csv",
}
_LOCAL_LAYOUT = {
    "table": "dataset_csv/{file}",
    "subtype": "splits_subtype/{study}/splits_{k}.csv",
    "survival": "splits_survival/{study}/splits_{k}.csv",
}

# sha256 of every public file (computed from the files at commit 780fafae), keyed by local path.
_SHA256 = {
    "dataset_csv/tcga_brca_subset.csv.zip": "695cb61de9795d6a0ffba18b81c28f5556d07ef8314cc95276a10d8818544636",
    "dataset_csv/tcga_kidney_subset.csv.zip": "e137f5bdef7f569e416703b2201f1544578c3fbd9feaf25ad359bf997f459405",
    "dataset_csv/tcga_lung_subset.csv.zip": "5fc6e99daffe54b2447dabec4a3ff7b8c60f25ff97714bc706415e250ac6e480",
    "splits_subtype/tcga_brca/splits_0.csv": "b2ad2226125981722da83957c9107f1b8523187cee709e706bc0f327cbbf3925",
    "splits_subtype/tcga_brca/splits_1.csv": "c9cfa4cff950bfa0468500462b6d17ea5846b8014186db5a1f112adf6625d805",
    "splits_subtype/tcga_brca/splits_2.csv": "a8b6f204310b4b6a0b19d7565ad32eb438d35be0f35e69a4fceee442c0866b5d",
    "splits_subtype/tcga_brca/splits_3.csv": "42ffdaabcf00c3dc2c8d8e0b875adb76794befa76f40c82affe9d0c2d0f52cdb",
    "splits_subtype/tcga_brca/splits_4.csv": "72e12e0dfcd07aad3c27007d66bbe814e63a88aca79af23c3c756632bf42f1b7",
    "splits_subtype/tcga_brca/splits_5.csv": "00ccbfb82d6ac4111ff4ea5069958a8bc4ca54a2da91e54d68567c07a73c9fe0",
    "splits_subtype/tcga_brca/splits_6.csv": "85cbe61fe0def0c595a30944181fa013f623a6403abcb62858e3314729d50345",
    "splits_subtype/tcga_brca/splits_7.csv": "42c442758ce86a9eaaf3c673991fc785465e204aacf0f717d4f2410a386eaf4d",
    "splits_subtype/tcga_brca/splits_8.csv": "b6e68888850b5ef7c93d2f6da5390c5c13dddf02a04c531a3ca856fb2f1d0fce",
    "splits_subtype/tcga_brca/splits_9.csv": "6601756006338b7921de0e1ae0ba64fc5d331bbd5e6826e9545dc43e2ff66103",
    "splits_subtype/tcga_kidney/splits_0.csv": "c5acffd6d61927fa04a43daa360c671abb2381da05d5ba631f98afcf5bef3d92",
    "splits_subtype/tcga_kidney/splits_1.csv": "896ad288fb9fedae1fe9f14982bae838f715ab4ea10c41eb1bf0794938e6a0b1",
    "splits_subtype/tcga_kidney/splits_2.csv": "63a3cef50eb1d153f9b22ad0f35e9bf4b98ef82216187e1753182570fabee1ef",
    "splits_subtype/tcga_kidney/splits_3.csv": "53a19759455d59f18891ece45d3ee9fcf2423cd61136dd2197e0613185d1d47b",
    "splits_subtype/tcga_kidney/splits_4.csv": "ed3ba74f0dcb3a710cf91a71bd6be66a671eb676502467bb882e22f6aa962fab",
    "splits_subtype/tcga_kidney/splits_5.csv": "3e393b001266b17cf4fa856a64c1a4d5938c14a5578a02cd01e589feddacb1cf",
    "splits_subtype/tcga_kidney/splits_6.csv": "b6f2e7ed0ce2a05216b3046bcc83b927d63fce1edc156f47ee7896c6cab371cd",
    "splits_subtype/tcga_kidney/splits_7.csv": "99669d95bb983e4f6d937e385e3ceb54c545d57c784a15aa4306f6a0cccaa8f3",
    "splits_subtype/tcga_kidney/splits_8.csv": "0fac4c77ff2582983d7d199bca036d90364174b9a80700665d737c3f9835392c",
    "splits_subtype/tcga_kidney/splits_9.csv": "6d3223393936e612a2253dc80c5685e1e4e3e6276117e107cfa155e7c67718ca",
    "splits_subtype/tcga_lung/splits_0.csv": "ebb73f7b978f609e52d40ccfd3fdc5c6118ef2a2dd4ca42558f8c158102836bc",
    "splits_subtype/tcga_lung/splits_1.csv": "85fcc12526163835effc345f00e3d2fbdaf26fd516d7c394ab530b44888a7dc7",
    "splits_subtype/tcga_lung/splits_2.csv": "8efa097350ea8f3babcd24a560167e177dc220001b3fa3d1176892a6cc772e25",
    "splits_subtype/tcga_lung/splits_3.csv": "1f3c6e31bab4afc18dfaedf1b0378cca1e408dda08d84ae76312401d5cd2d3c7",
    "splits_subtype/tcga_lung/splits_4.csv": "27f45eaa89279dc46d47d3ff4d904ab5c829553e34da06a98d85dcef78b9d427",
    "splits_subtype/tcga_lung/splits_5.csv": "a1d6d8e70e4328e417528a51266dfbb29377f889b35a6671c9fdae5ce84eb27b",
    "splits_subtype/tcga_lung/splits_6.csv": "3e15fa63397763a07bf57f292cb78851a64c38f08cf14fc66a29e194c02f0acd",
    "splits_subtype/tcga_lung/splits_7.csv": "cd5644f70aa99c5219cabfdc661a54bd43e446539fec95c644aaccccf316d8a2",
    "splits_subtype/tcga_lung/splits_8.csv": "9a557762700ed81b62046657dc1890d76719417b12d37bdfaae43ee898074bca",
    "splits_subtype/tcga_lung/splits_9.csv": "6976abad30d04e75dd6646f98adcae0e18bd4de751a6461f97df5394f99bdc15",
    "splits_survival/tcga_brca/splits_0.csv": "cd0fef824431ac396ed75ac93203a5d64d65ee419746be981789ba1dfabd4d0d",
    "splits_survival/tcga_brca/splits_1.csv": "2dee790eafe66d0c9b9d91a82eaa98f28a91471c6817ff215e28ee231c18c3d2",
    "splits_survival/tcga_brca/splits_2.csv": "4e9572ba7d1c8ca1adaacd159b74479a5aa71f4604d91f138ce00fbb1ca57008",
    "splits_survival/tcga_brca/splits_3.csv": "751ce860ba1669ee4a8b570fc9984c8f93cade89db02397eeb64c5e001310c93",
    "splits_survival/tcga_brca/splits_4.csv": "7bb014ec7cae42bddebd0bd116879515252a57785468d6b6489933b6f70bc2a5",
    "splits_survival/tcga_coadread/splits_0.csv": "fb6b3d4e457edd2c74a49fd3ac993aa4967f6129316099475060d7b21270b85e",
    "splits_survival/tcga_coadread/splits_1.csv": "4a1b9a01438815d619c7a9353ff946588a412ad7e5c99371534922b199c27fcc",
    "splits_survival/tcga_coadread/splits_2.csv": "7943b07ebcda6c45ec25ce2d6d6c0b11b2a65d2724dc38a9f25731b2b28f4b51",
    "splits_survival/tcga_coadread/splits_3.csv": "cd59bc8a4ded34de3804876ebc69781bb99db1ca61f2ce52b685da7cc65bb729",
    "splits_survival/tcga_coadread/splits_4.csv": "e8a7866d222b0075177a3374ba13423ae1e0cb4814e7634d3b38ea558d74033d",
    "splits_survival/tcga_kirc/splits_0.csv": "5ddbbaec01c27127428bf93a09ecd9054a13810c18411dcf9a523026c596f8ec",
    "splits_survival/tcga_kirc/splits_1.csv": "c625d80f265cc94b07eca62e20b0cad158a11d57b58f3418d46b22e0bee1d319",
    "splits_survival/tcga_kirc/splits_2.csv": "b6f9021a11c7914d162414031a97f43beadf0b0fcbf62a419fc4076373a62cf2",
    "splits_survival/tcga_kirc/splits_3.csv": "c5a9be402f294ec7bc398b6819a5b6d264db168a6efb464d6d539220dcb4c2f6",
    "splits_survival/tcga_kirc/splits_4.csv": "21d56987ff2fc9d36eeb03c13e6bf76b7eb3d4b47a9f18fe1fbefc1767c7e5e0",
    "splits_survival/tcga_kirp/splits_0.csv": "dac4a8b96581479d311620626e08f69f54e6f6fe6f809dbf4710350b64818e56",
    "splits_survival/tcga_kirp/splits_1.csv": "9a7f1847613c8387cc002420ad55e0e1d717373657401d428ec2eba926271e0e",
    "splits_survival/tcga_kirp/splits_2.csv": "dde5bdbb5adc696606459c8b0d79615f3407a4e01947585602a35908fdd4182a",
    "splits_survival/tcga_kirp/splits_3.csv": "4abaad28b98d265be5164ffb6275920a42f5b2bf6b8abbe371025d6162fd36e1",
    "splits_survival/tcga_kirp/splits_4.csv": "c630516a27ae398b23a16dfe789b23dc8ddc900d5699c3f88c3db1bc32bdb96d",
    "splits_survival/tcga_luad/splits_0.csv": "d976be2835a5f3488bd2e851481ec726044429ced5a49f8d0b323796f87dfb0a",
    "splits_survival/tcga_luad/splits_1.csv": "5be58f24b9a58707487a4dc84d8a3415bf4aeaddc2fc92c82747a6c17892c395",
    "splits_survival/tcga_luad/splits_2.csv": "7a54e47261efc2509d0f7d8ddc213ee01ed6d0ad78ad6ec5d4fd81262e8da06e",
    "splits_survival/tcga_luad/splits_3.csv": "5ab10da514755dc41c4a16ae1179f30e9f6cf92868e378b976e55603a0a8def4",
    "splits_survival/tcga_luad/splits_4.csv": "a560353629ca37eed0feffcd9b6d01b55567b22cc758c07d6d5592ec6415d90e",
    "splits_survival/tcga_stad/splits_0.csv": "76b5bdb3bdb0e43e3dfcb84737f5220b8149741d20e62258c8a6df3c0db29d8d",
    "splits_survival/tcga_stad/splits_1.csv": "2c03deba58851321e4f3f80982938824593c4ad8c989ea55e8b431bd0ab5b875",
    "splits_survival/tcga_stad/splits_2.csv": "e0134bce888272e761fce908976934862c49aaef6f5bad8cc9ddb876619da196",
    "splits_survival/tcga_stad/splits_3.csv": "7361ab0e701f46ca5a818904e93ec25ce55a0732e8548cec52b2c5407a680a8f",
    "splits_survival/tcga_stad/splits_4.csv": "061d014c9014fbe89814c3def5847ff6f017555dee652da2bbb5bf06805529c0",
}


@dataclass(frozen=True)
class TaskSpec:
    """A registered task: which public files define it and how to read them.

    Attributes:
        name: e.g. ``"tcga_brca_subtype"``.
        kind: ``"subtype"`` (slide-level classification, split ids are slides) or ``"survival"``
            (patient-level, split ids are cases).
        table_file: the slide table's file name in ``dataset_csv/`` (``None``: not public; pass
            your own table to :func:`load_task`).
        study: folder of the split files (``tcga_brca``, …).
        n_folds: number of split files.
        label_map: label codes → class index (subtyping); rows with other codes are ignored.
        keep_codes: survival: keep only slides with these ``oncotree_code`` values (``None``: all).
        label_col: the column holding the label codes.
    """

    name: str
    kind: str
    table_file: str | None
    study: str
    n_folds: int
    label_map: dict[str, int] | None = None
    keep_codes: tuple[str, ...] | None = None
    label_col: str = "oncotree_code"
    description: str = ""

    def _rel(self, layout: dict[str, str]) -> tuple[str | None, list[str]]:
        table = layout["table"].format(file=self.table_file) if self.table_file else None
        splits = [layout[self.kind].format(study=self.study, k=k) for k in range(self.n_folds)]
        return table, splits

    def remote_files(self, base_url: str = REFERENCE_BASE_URL) -> list[tuple[str, RemoteFile]]:
        """``(local relative path, RemoteFile)`` for the table (if public) and every split file."""
        base_url = base_url.rstrip("/")
        local_table, local_splits = self._rel(_LOCAL_LAYOUT)
        remote_table, remote_splits = self._rel(_REMOTE_LAYOUT)
        pairs = list(zip(local_splits, remote_splits))
        if local_table is not None:
            pairs.insert(0, (local_table, remote_table))
        return [
            (loc, RemoteFile(url=f"{base_url}/{rem}", sha256=_SHA256[loc], filename=Path(loc).name,
                             description=f"{self.name}: {Path(loc).name}"))
            for loc, rem in pairs
        ]


_BRCA, _KIDNEY, _LUNG = "tcga_brca_subset.csv.zip", "tcga_kidney_subset.csv.zip", "tcga_lung_subset.csv.zip"

TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in [
        TaskSpec("tcga_brca_subtype", "subtype", _BRCA, "tcga_brca", 10, {"IDC": 0, "ILC": 1},
                 description="BRCA: invasive ductal (IDC) vs lobular (ILC) carcinoma; other codes ignored"),
        TaskSpec("tcga_kidney_subtype", "subtype", _KIDNEY, "tcga_kidney", 10, {"CCRCC": 0, "PRCC": 1, "CHRCC": 2},
                 description="RCC: clear-cell vs papillary vs chromophobe"),
        TaskSpec("tcga_lung_subtype", "subtype", _LUNG, "tcga_lung", 10, {"LUAD": 0, "LUSC": 1},
                 description="NSCLC: adenocarcinoma vs squamous cell carcinoma"),
        TaskSpec("tcga_brca_survival", "survival", _BRCA, "tcga_brca", 5,
                 description="BRCA overall survival (all slides of the BRCA table)"),
        TaskSpec("tcga_luad_survival", "survival", _LUNG, "tcga_luad", 5, keep_codes=("LUAD",),
                 description="LUAD overall survival (LUAD slides of the lung table)"),
        TaskSpec("tcga_kirc_survival", "survival", _KIDNEY, "tcga_kirc", 5, keep_codes=("CCRCC",),
                 description="KIRC overall survival (CCRCC slides of the kidney table; only part of the cohort)"),
        TaskSpec("tcga_kirp_survival", "survival", _KIDNEY, "tcga_kirp", 5, keep_codes=("PRCC",),
                 description="KIRP overall survival (PRCC slides of the kidney table)"),
        TaskSpec("tcga_coadread_survival", "survival", None, "tcga_coadread", 5,
                 description="COADREAD overall survival: split files only, the slide table is not public"),
        TaskSpec("tcga_stad_survival", "survival", None, "tcga_stad", 5,
                 description="STAD overall survival: split files only, the slide table is not public"),
    ]
}


def get_task(name: str) -> TaskSpec:
    """The registered :class:`TaskSpec` called ``name`` (error lists the known names)."""
    try:
        return TASKS[name]
    except KeyError:
        raise HIPTError(f"{name}: unknown task (known: {', '.join(TASKS)})") from None


# ----------------------------------------------------------------------------------------- files
@dataclass(frozen=True)
class TaskFiles:
    """Local paths of a task's slide table (``None`` if not public) and split folder."""

    table: Path | None
    splits_dir: Path


def fetch_task_files(
    name: str, root: str | Path | None = None, base_url: str | None = None, dest: str | Path | None = None
) -> TaskFiles:
    """Find or download a registered task's files, every one checked against its sha256.

    Order: a local copy ``root`` (layout ``dataset_csv/``, ``splits_subtype/``, ``splits_survival/``,
    as in ``shared/reference/tcga``) if given; else ``base_url`` (a mirror of the reference
    repository's layout) if given; else the shared reference copy beside the checkout if present;
    else the reference repository on raw.githubusercontent.com.  Downloads go to ``dest`` (default
    ``hipt.paths.cache_dir("tcga")``) in the local layout, so that folder is itself a valid ``root``.
    """
    spec = get_task(name)
    if root is None and base_url is None:
        shared = shared_reference_dir()
        if shared is not None and (shared / "tcga").is_dir():
            root = shared / "tcga"
    paths: dict[str, Path] = {}
    if root is not None:
        root = Path(root)
        for rel, remote in spec.remote_files():
            local = root / rel
            if not local.is_file():
                raise InputFileError(local, f"missing from the local copy of task {name}")
            paths[rel] = download(str(local), remote.sha256)
    else:
        folder = Path(dest) if dest is not None else cache_dir("tcga")
        for rel, remote in spec.remote_files(base_url or REFERENCE_BASE_URL):
            paths[rel] = download(remote.url, remote.sha256, dest_dir=(folder / rel).parent,
                                  filename=remote.filename, progress=False)
    table_rel, split_rels = spec._rel(_LOCAL_LAYOUT)
    return TaskFiles(table=paths[table_rel] if table_rel else None, splits_dir=paths[split_rels[0]].parent)


# ----------------------------------------------------------------------------------------- tables
def _read_csv_bytes(data: bytes, path: Path, member: str | None = None) -> pd.DataFrame:
    where = f" (zip member {member!r})" if member is not None else ""
    try:
        return pd.read_csv(io.BytesIO(data), low_memory=False)
    except Exception as e:  # noqa: BLE001
        raise InputFileError(path, f"cannot be read as a CSV{where}: {e}") from None


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a slide table: a ``.csv``, or a ``.zip`` holding exactly one CSV (read in memory).

    Zip members are never extracted to disk (the reference's zips hold a member named
    ``../tcga_*_subset.csv.zip``, a path outside the extraction folder); a member that is itself a zip
    is opened in memory too.  A leading unnamed index column is dropped.
    """
    path = Path(path)
    if not path.is_file():
        raise InputFileError(path, "task table not found")
    data = path.read_bytes()
    member = None
    for _ in range(3):  # a zip, possibly holding a zip
        if not data.startswith(b"PK\x03\x04"):
            break
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as z:
                members = [i for i in z.infolist() if not i.is_dir()]
                if len(members) != 1:
                    names = [i.filename for i in members]
                    raise InputFileError(path, f"zip holds {len(members)} files {names[:5]}, expected one CSV")
                member = members[0].filename
                data = z.read(members[0])
        except zipfile.BadZipFile as e:
            raise InputFileError(path, f"corrupt zip archive ({e})") from None
    df = _read_csv_bytes(data, path, member)
    if len(df.columns) and (df.columns[0] == "" or str(df.columns[0]).startswith("Unnamed: 0")):
        df = df.drop(columns=df.columns[0])
    return df


def _require(df: pd.DataFrame, cols: list[str], path: Path | None, what: str) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise InputFileError(path or Path("<table>"), f"{what} needs column(s) {missing}; it has {list(df.columns)[:12]}")


def _slide_stems(df: pd.DataFrame, path: Path | None) -> pd.Series:
    stems = df["slide_id"].astype(str).str.strip().map(lambda s: s.removesuffix(".svs"))
    dup = stems[stems.duplicated()]
    if len(dup):
        raise InputFileError(path or Path("<table>"), f"slide_id repeats, e.g. {dup.iloc[:3].tolist()}")
    return stems


def _subtype_table(df: pd.DataFrame, path: Path | None, label_col: str, label_map: dict[str, int] | None):
    _require(df, ["slide_id", label_col], path, "a subtyping table")
    df = df.copy()
    df["slide_id"] = _slide_stems(df, path)
    if "case_id" not in df.columns:
        df["case_id"] = df["slide_id"]
    values = df[label_col].dropna()
    if values.empty:
        raise InputFileError(path or Path("<table>"), f"column {label_col!r} holds no label")
    if label_map is None and pd.api.types.is_numeric_dtype(values) and bool((values % 1 == 0).all()):
        # class indices already; names from a label_name column if there is one
        codes = values.astype(int)
        names = dict(zip(codes, df.loc[values.index, "label_name"].astype(str))) if "label_name" in df else {}
        label_map = {names.get(c, str(c)): c for c in range(int(codes.max()) + 1)}
        df["label_name"] = df[label_col].map(lambda v: names.get(int(v), str(int(v))) if pd.notna(v) else None)
    else:
        if label_map is None:  # class names: indices in sorted order
            label_map = {name: i for i, name in enumerate(sorted(values.astype(str).unique()))}
            log.info("%s: label names mapped to classes %s", path, label_map)
        df["label_name"] = df[label_col].astype(str).where(df[label_col].notna())
    keep = df["label_name"].isin(list(label_map))
    if not keep.all():
        dropped = df.loc[~keep, "label_name"].value_counts().to_dict()
        log.info("%s: ignored %d slides with labels %s", path, int((~keep).sum()), dropped)
    df = df[keep].reset_index(drop=True)
    if df.empty:
        raise InputFileError(path or Path("<table>"), f"no slide has a label in {list(label_map)}")
    df["label"] = df["label_name"].map(label_map).astype(np.int64)
    class_names = [name for name, _ in sorted(label_map.items(), key=lambda kv: kv[1])]
    return df, class_names


def _survival_tables(df: pd.DataFrame, path: Path | None, label_col: str, keep_codes, n_bins: int):
    _require(df, ["case_id", "slide_id", "survival_months", "censorship"], path, "a survival table")
    df = df.copy()
    df["slide_id"] = _slide_stems(df, path)
    df["case_id"] = df["case_id"].astype(str).str.strip()
    if keep_codes is not None:
        _require(df, [label_col], path, "this survival task")
        df = df[df[label_col].astype(str).isin(keep_codes)].reset_index(drop=True)
    bad = df["survival_months"].isna() | df["censorship"].isna()
    if bad.any():
        log.info("%s: dropped %d slides without survival_months/censorship", path, int(bad.sum()))
        df = df[~bad].reset_index(drop=True)
    if not df["censorship"].isin([0, 1]).all():
        raise InputFileError(path or Path("<table>"), "censorship must be 0 (event) or 1 (censored)")
    cases = df.groupby("case_id", sort=False).agg(
        slide_ids=("slide_id", tuple), survival_months=("survival_months", "first"), censorship=("censorship", "first")
    ).reset_index()
    cases["censorship"] = cases["censorship"].astype(np.int64)
    try:
        labels, edges = discretize_survival(cases["survival_months"], cases["censorship"], n_bins=n_bins)
    except ValueError as e:
        raise InputFileError(path or Path("<table>"), str(e)) from None
    cases["label"] = labels
    df["label"] = df["case_id"].map(dict(zip(cases["case_id"], labels))).astype(np.int64)
    df["censorship"] = df["censorship"].astype(np.int64)
    names = [f"[{edges[k]:.2f}, {edges[k + 1]:.2f})" for k in range(n_bins)]
    df["label_name"] = df["label"].map(lambda k: names[k])
    return df, cases, names, edges


# ----------------------------------------------------------------------------------------- tasks
@dataclass
class TaskData:
    """A loaded task: the table(s) and the filtered folds.

    Attributes:
        name, kind: the task's name and ``"subtype"`` or ``"survival"``.
        table: one row per slide (canonical columns, see the module docstring).
        cases: survival only: one row per case: ``case_id``, ``slide_ids`` (tuple, table order),
            ``survival_months``, ``censorship``, ``label`` (time bin).
        splits: the folds, ids filtered to those in the table, in table order.
        class_names: class names (subtyping) or the time bins' intervals (survival).
        bin_edges: survival only: the ``n_bins + 1`` bin edges in months.
        split_counts: per fold and split, the ids kept and listed in the file.
    """

    name: str
    kind: str
    table: pd.DataFrame
    splits: list[Split]
    class_names: list[str]
    cases: pd.DataFrame | None = None
    bin_edges: np.ndarray | None = None
    table_path: Path | None = None
    splits_dir: Path | None = None
    split_counts: pd.DataFrame = field(default_factory=pd.DataFrame, repr=False)

    @property
    def n_folds(self) -> int:
        return len(self.splits)

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @property
    def units(self) -> pd.DataFrame:
        """The rows that split ids refer to: ``table`` (subtyping, by slide) or ``cases`` (survival)."""
        return self.cases if self.kind == "survival" else self.table

    def fold(self, k: int, fraction: float = 1.0, random_state: int = 1) -> Split:
        """Fold ``k``, with the training split subsampled to ``fraction`` (``random_state=1``, not stratified)."""
        if not 0 <= k < self.n_folds:
            raise IndexError(f"{self.name}: fold {k} out of range (0..{self.n_folds - 1})")
        return subsample_train(self.splits[k], fraction, random_state=random_state)

    def frame(self, k: int, split: str, fraction: float = 1.0, random_state: int = 1) -> pd.DataFrame:
        """The rows of ``units`` in one split of fold ``k`` (in the split's order)."""
        ids = list(self.fold(k, fraction, random_state)[split])
        key = "case_id" if self.kind == "survival" else "slide_id"
        return self.units.set_index(key).loc[ids].reset_index()


def load_task(
    task: str | Path,
    table: str | Path | None = None,
    splits_dir: str | Path | None = None,
    *,
    kind: str | None = None,
    label_col: str | None = None,
    label_map: dict[str, int] | None = None,
    keep_codes: tuple[str, ...] | None = None,
    n_bins: int = 4,
    name: str | None = None,
    root: str | Path | None = None,
    base_url: str | None = None,
) -> TaskData:
    """Load a registered task by name, or a user's own task table and split folder.

    Args:
        task: a name in :data:`TASKS` (files fetched by :func:`fetch_task_files`), or the path of a
            slide table (then ``splits_dir`` is required; make one with
            :func:`hipt.tasks.splits.make_splits`).
        table, splits_dir: override the registered task's files (needed for COADREAD/STAD, whose
            tables are not public).
        kind: ``"subtype"`` or ``"survival"`` (registered: from the spec; own table: default
            ``"subtype"``).
        label_col: column of the labels (registered: ``oncotree_code``; own table: ``label``, which
            may hold class indices, with names in ``label_name``, or class names).
        label_map: class names → indices; rows with other labels are ignored.
        keep_codes: survival: keep only slides whose ``label_col`` is one of these.
        n_bins: survival time bins.
        name: the task's name in results (own table: default the table's file stem).
        root, base_url: where to find the registered files (see :func:`fetch_task_files`).

    Returns:
        :class:`TaskData` with the folds filtered to the table's ids (counts logged and kept in
        ``split_counts``).
    """
    if str(task) in TASKS:
        spec = TASKS[str(task)]
        name = name or spec.name
        if table is None or splits_dir is None:
            files = fetch_task_files(spec.name, root=root, base_url=base_url)
            table = table if table is not None else files.table
            splits_dir = splits_dir if splits_dir is not None else files.splits_dir
        if table is None:
            raise HIPTError(f"{spec.name}: the reference does not publish this task's slide table; pass table=PATH")
        kind = kind or spec.kind
        label_col = label_col or spec.label_col
        label_map = label_map if label_map is not None else spec.label_map
        keep_codes = keep_codes if keep_codes is not None else spec.keep_codes
    else:
        table = Path(task) if table is None else table
        name = name or Path(table).name.removesuffix(".zip").removesuffix(".csv")
        kind = kind or "subtype"
        label_col = label_col or "label"
        if splits_dir is None:
            raise HIPTError(f"{table}: no split folder given (pass splits_dir, or write one with hipt.tasks.make_splits)")
    if kind not in ("subtype", "survival"):
        raise HIPTError(f"{name}: kind must be 'subtype' or 'survival', got {kind!r}")
    table_path = Path(table)
    df = read_table(table_path)
    cases, edges = None, None
    if kind == "subtype":
        df, class_names = _subtype_table(df, table_path, label_col, label_map)
        order = df["slide_id"].tolist()
    else:
        df, cases, class_names, edges = _survival_tables(df, table_path, label_col, keep_codes, n_bins)
        order = cases["case_id"].tolist()
    raw = read_splits(splits_dir)
    splits, counts = [], []
    for s in raw:
        kept = filter_split(s, order, order=order)
        if not kept.train or not (kept.val or kept.test):
            raise InputFileError(
                s.source or Path(splits_dir),
                f"no {'train' if not kept.train else 'val or test'} id of this split is in the table {table_path.name}",
                "do the split files and the table belong to the same task?",
            )
        splits.append(kept)
        for split_name in ("train", "val", "test"):
            if s[split_name] or split_name != "test":
                counts.append({"fold": s.fold, "split": split_name, "kept": len(kept[split_name]), "listed": len(s[split_name])})
    log.info("%s: %d %s, %d folds", name, len(order), "cases" if kind == "survival" else "slides", len(splits))
    return TaskData(
        name=name, kind=kind, table=df, splits=splits, class_names=class_names, cases=cases, bin_edges=edges,
        table_path=table_path, splits_dir=Path(splits_dir), split_counts=pd.DataFrame(counts),
    )
