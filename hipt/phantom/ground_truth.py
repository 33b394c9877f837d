"""Ground truth of phantom regions, matched to their extracted features, and the token bank.

:func:`region_truth` lists the regions of a phantom cohort's ``hipt extract`` files with their ground
truth (slide class, informative or not); :func:`region_grids` and :func:`region_tokens` read their
stage-1 feature grids and region tokens in the same order, for stage-2 probes (chapter 4).
:func:`token_bank` and :func:`bank_grids` build many distinct regions from the real patch tokens of one
extracted cohort (stage-2 pretraining on arranged tokens).
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from hipt.errors import InputFileError
from hipt.features import load_features
from hipt.phantom.slides import load_truth
from hipt.pretrain.augment import tokens_to_grid

__all__ = ["region_truth", "region_grids", "region_tokens", "token_bank", "bank_grids"]


# ------------------------------------------------------------------------------------------------
# ground truth of phantom regions (stage-2 evaluation)
# ------------------------------------------------------------------------------------------------


def _truth_matches(features_dir: str | Path, table):
    """The regions of each slide's ``hipt extract`` file matched to the slide's phantom ground truth.

    Yields, for each row ``i`` of ``table`` (``slide_id``, ``path``) whose ``<slide_id>.h5`` exists,
    ``(i, h5 path, truth, coords [M, 2], match [M])``: ``match[j]`` is the index into ``truth.regions`` of
    the truth region whose level-0 corner equals region ``j``'s corner, or −1 (e.g. a glass border region
    kept by ``hipt patch``).
    """
    for i, (slide_id, path) in enumerate(zip(table["slide_id"], table["path"])):
        f = Path(features_dir) / f"{slide_id}.h5"
        if not f.is_file():
            continue
        truth = load_truth(path)
        corners = {(int(x), int(y)): k for k, (x, y, _, _) in enumerate(truth.regions)}
        with h5py.File(f, "r") as h5:
            coords = np.asarray(h5["coords"][:]).reshape(-1, 2)
        yield i, f, truth, coords, np.array([corners.get((int(x), int(y)), -1) for x, y in coords], np.int64)


def region_truth(features_dir: str | Path, table) -> pd.DataFrame:
    """One row per region of the ``hipt extract`` files of a phantom cohort, with its ground truth.

    Args:
        features_dir: folder of ``<slide_id>.h5`` feature files.
        table: the cohort table (``slide_id``, ``path``, ``label``), e.g. ``make_cohort(...).table``.

    Returns a DataFrame in file order (slides in table order, regions in file order): ``slide_id``,
    ``region`` (row in the file), ``x``, ``y`` (level-0 corner), ``label`` (slide class) and
    ``informative`` (the region holds the label-defining arrangement; NaN for a region that is not one of
    the slide's truth regions, e.g. a glass border region kept by ``hipt patch``).
    """
    rows = []
    for i, _, truth, coords, match in _truth_matches(features_dir, table):
        slide_id, label = table["slide_id"].iloc[i], int(table["label"].iloc[i])
        for j, ((x, y), k) in enumerate(zip(coords, match)):
            rows.append({"slide_id": slide_id, "region": j, "x": int(x), "y": int(y), "label": label,
                         "informative": bool(truth.informative[k]) if k >= 0 else np.nan})
    return pd.DataFrame(rows)


def _region_rows(features_dir: str | Path, regions, key: str) -> list:
    """``key`` (``feats256`` or ``feats4k``) of each row of a ``region_truth`` table, reading each
    slide's file once (rows of one slide are consecutive in ``region_truth``'s order)."""
    out, cache = [], {}
    for slide_id, j in zip(regions["slide_id"], regions["region"]):
        if slide_id not in cache:
            path = Path(features_dir) / f"{slide_id}.h5"
            cache = {slide_id: load_features(path)}
            if key not in cache[slide_id]:
                raise InputFileError(path, f"no {key} in this features file",
                                     "extract with a region encoder: hipt extract --vit4k ..." if key == "feats4k" else None)
        out.append(cache[slide_id][key][int(j)])
    return out


def region_grids(features_dir: str | Path, regions) -> np.ndarray:
    """``[M, D, H, W]`` float32 feature grids of the rows of ``region_truth``'s table."""
    return np.stack([tokens_to_grid(t).numpy() for t in _region_rows(features_dir, regions, "feats256")])


def region_tokens(features_dir: str | Path, regions) -> np.ndarray:
    """``[M, D4k]`` float32 region tokens (``feats4k``, the ViT-4K [CLS]) of the rows of
    ``region_truth``'s table."""
    return np.stack([t.numpy() for t in _region_rows(features_dir, regions, "feats4k")])


# ------------------------------------------------------------------------------------------------
# token-bank regions: many distinct regions at the cost of one extracted cohort
# ------------------------------------------------------------------------------------------------


def token_bank(features_dir: str | Path, table) -> dict[int, np.ndarray]:
    """The stage-1 patch tokens of a phantom cohort, grouped by the true tissue type of their cell.

    Rendering and extracting phantom regions costs about 0.5 s per 8×8 region on 2 CPU cores, so a
    CPU cohort holds a few hundred regions; stage-2 DINO needs thousands of *distinct* regions (see
    ``benchmarks/bench_stage2_arrangement.py``).  The bank and :func:`bank_grids` build as many regions
    as wanted from the real tokens of one extracted cohort: a layout (e.g.
    :func:`hipt.phantom.context_region`) gets, in every cell, a random real token of that cell's tissue.

    Args:
        features_dir: ``hipt extract`` files (``feats256``) of the cohort.
        table: its cohort table (``slide_id``, ``path``).

    Returns:
        tissue code → ``[n_code, D]`` float32 tokens (only regions that are truth regions of their slide).
    """
    bank: dict[int, list[np.ndarray]] = {}
    for _, f, truth, _, match in _truth_matches(features_dir, table):
        layouts = truth.region_layouts()
        feats = load_features(f)["feats256"]
        for j, k in enumerate(match):
            if k < 0:
                continue
            lay = layouts[k]
            tokens = np.asarray(feats[j], dtype=np.float32)  # [n, D], row-major like lay.ravel()
            if len(tokens) != lay.size:
                raise ValueError(f"{f}: region {j} has {len(tokens)} tokens, its layout {lay.shape[0]}×{lay.shape[1]} cells")
            for code, tok in zip(lay.ravel(), tokens):
                bank.setdefault(int(code), []).append(tok)
    if not bank:
        raise ValueError(f"token_bank: no truth region of the table found in {features_dir}")
    return {c: np.stack(v) for c, v in sorted(bank.items())}


def bank_grids(layouts: np.ndarray, bank: dict[int, np.ndarray], seed: int = 0, dtype=np.float32) -> np.ndarray:
    """``[N, G*G, D]`` token grids for ``[N, G, G]`` layouts: every cell a random bank token of its type.

    The tokens of one grid come from many slides, so a grid carries no slide-level stain or texture
    draw: its only structure is the layout.  Deterministic from ``seed``.
    """
    layouts = np.asarray(layouts)
    missing = sorted(set(np.unique(layouts).tolist()) - set(bank))
    if missing:
        raise ValueError(f"bank_grids: the bank has no token of tissue code(s) {missing}")
    rng = np.random.default_rng(seed)
    flat = layouts.reshape(len(layouts), -1)
    out = np.empty((*flat.shape, next(iter(bank.values())).shape[1]), dtype)
    for code, tokens in bank.items():
        m = flat == code
        out[m] = tokens[rng.integers(0, len(tokens), int(m.sum()))]
    return out
