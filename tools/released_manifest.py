"""Write ``hipt/data/released_manifest.csv.gz`` from the reference's LFS manifest.

The manifest (``shared/reference/released_embeddings/lfs_manifest.csv``: ``path,sha256,size`` of every
LFS object of the released embeddings at the reference's pinned commit) becomes package data, so that
:mod:`hipt.released.registry` knows every file's size and sha256 without network.  Paths are stored
relative to ``3-Self-Supervised-Eval/`` (the registry adds it back); rows are sorted by path.

Usage: ``python tools/released_manifest.py [path/to/lfs_manifest.csv]``
"""

from __future__ import annotations

import gzip
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
PREFIX = "3-Self-Supervised-Eval/"


def main(argv: list[str]) -> int:
    src = Path(argv[0]) if argv else ROOT.parent / "shared/reference/released_embeddings/lfs_manifest.csv"
    df = pd.read_csv(src, dtype={"path": str, "sha256": str, "size": "int64"})
    if not df["path"].str.startswith(PREFIX).all():
        raise SystemExit(f"{src}: every path must start with {PREFIX}")
    df["path"] = df["path"].str.removeprefix(PREFIX)
    df = df.sort_values("path")
    out = ROOT / "hipt/data/released_manifest.csv.gz"
    # mtime=0: the same manifest gives the same bytes (a reproducible package file)
    with gzip.GzipFile(out, "wb", mtime=0) as fh:
        fh.write(df.to_csv(index=False).encode())
    print(f"{out}: {len(df)} files, {out.stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
