"""``hipt extract`` under ``torchrun --nproc_per_node 2`` (2 CPU processes, gloo) writes the same features
as one process, with the slides sharded across ranks (no duplicated work) and one merged summary."""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hipt.features import build_encoder, extract_folder, load_features
from hipt.models import save_backbone, vit4k_tiny, vit256_tiny
from test_features import make_patched_cohort


@pytest.mark.timeout(300)
def test_torchrun_two_processes_equal_one_process(tmp_path):
    slides, patch = make_patched_cohort(tmp_path, n=3)
    torch.manual_seed(2)
    w256 = save_backbone(vit256_tiny(), tmp_path / "s1.pth")
    w4k = save_backbone(vit4k_tiny(), tmp_path / "s2.pth")

    single = tmp_path / "single"
    extract_folder(patch, single, build_encoder(str(w256), str(w4k)), slides=slides, progress=False)

    multi = tmp_path / "multi"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                              "MASTER_PORT")}
    env |= {"OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "hipt.cli", "extract", "--coords", str(patch), "--slides", str(slides), "--out", str(multi),
           "--vit256", str(w256), "--vit4k", str(w4k), "--workers", "0", "--no-progress", "--device", "cpu"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # each rank did its own share: rank 0 slides 0 and 2, rank 1 slide 1 — 3 in all, none twice
    done = {int(r): int(n) for r, n in re.findall(r"\[rank (\d)/2\]: (\d+) extracted", proc.stderr)}
    assert done == {0: 2, 1: 1}, proc.stderr

    names = sorted(p.name for p in single.glob("*.h5"))
    assert names == sorted(p.name for p in multi.glob("*.h5")) == ["ph0.h5", "ph1.h5", "ph2.h5"]
    for name in names:
        a, b = load_features(single / name), load_features(multi / name)
        for k in ("feats256", "feats4k", "coords"):
            torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=0)
    with open(multi / "summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["slide"], r["status"]) for r in rows] == [("ph0", "ok"), ("ph1", "ok"), ("ph2", "ok")]
    assert not list(multi.glob("summary.rank*.csv"))
