"""What a slide costs to extract and issue 19's targets: the text follows the benchmark records, and the
prepared GPU benchmark runs end to end (its CPU dry run)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hipt.book.evidence.extraction import extraction_expectations, extraction_verdicts, memory_target

ROOT = Path(__file__).resolve().parents[1]
FULL = "ViT-S/16 + ViT-XS"


def _cpu(read: float, encode: float | None, e2e: float | None = None, ref: float | None = None,
         busy: float = 1.0, targets: list | None = None) -> dict:
    rows = [{"slide": "phantom x", "what": "reader alone, serial", "workers": 0, "regions/s": read / 1.8, "cores busy": busy},
            {"slide": "phantom x", "what": "reader alone, thread x2", "workers": 2, "regions/s": read}]
    if encode is not None:
        rows.append({"slide": "phantom x", "what": f"encoder alone ({FULL}, 4096-px regions): bf16", "regions/s": encode})
    if e2e is not None:
        rows.append({"slide": "phantom x", "what": f"pipeline ({FULL}): thread reader, bf16, batch 1", "regions/s": e2e})
        rows.append({"slide": "phantom x", "what": f"reference-style loop ({FULL}): serial read", "regions/s": ref})
    return {"machine": "test CPU", "date": "2026-12-06T00:00:00", "command": "bench_extraction.py",
            "hardware": {"gpu": None, "cpu_count": 2}, "rows": rows, "targets": targets}


GPU_ENCODER = {"machine": "GPU box", "hardware": {"gpu": "NVIDIA H200"},
               "rows": [{"variant": "HIPT4K bf16, 4 region(s) per call", "regions/s": 50.0}]}


def _step(rows: list[dict], machine: str, step: str) -> dict:
    return next(r for r in rows if r["machine"] == machine and r["step"].startswith(step))


def test_expectations_follow_the_numbers():
    rows, text = extraction_expectations({"extraction": _cpu(3.6, 0.05, 0.045, 0.035), "gpu_region_encoder": GPU_ENCODER})
    assert "On this CPU encoding limits" in text and "1.29x the reference-style loop" in text
    assert _step(rows, "test CPU", "encode")["how"].startswith("measured")
    # the T4 scales the H200's 50 regions/s by 65/989 datasheet peaks: 3.29, within 20 % of the 3.6 read on 2 cores
    t4 = _step(rows, "Colab T4", "encode")
    assert t4["regions/s"] == float(f"{50 * 65 / 989:.3g}") and "estimate" in t4["how"]
    assert "On a Colab T4 one slide would take about 12 s, reading and encoding about even" in text
    # the H100: same datasheet peak as the H200; reading = 2 regions per busy core x 16 cores = 32 < 50
    assert _step(rows, "H100", "read")["regions/s"] == 32.0
    assert "On an H100 one slide would take about 1.2 s, reading the limit" in text
    assert all("estimate" in r["how"] for r in rows if r["machine"] in ("Colab T4", "H100"))

    # contradicting numbers: a CPU whose encoder outruns its readers, slow or fast readers on a T4 host
    rows, text = extraction_expectations({"extraction": _cpu(1.0, 5.0), "gpu_region_encoder": GPU_ENCODER})
    assert "On this CPU reading limits" in text
    assert "Colab T4 one slide would take about 39 s, reading the limit" in text
    _, text = extraction_expectations({"extraction": _cpu(5.0, 0.05), "gpu_region_encoder": GPU_ENCODER})
    assert "Colab T4 one slide would take about 12 s, encoding the limit" in text


def test_expectations_without_gpu_records_say_not_measured():
    rows, text = extraction_expectations({"extraction": _cpu(3.6, 0.05)})
    assert [r["how"] for r in rows if r["machine"] in ("Colab T4", "H100")] == ["not measured"] * 2
    assert "T4" not in text
    # a starved serial reader is named as such
    rows, _ = extraction_expectations({"extraction": _cpu(3.6, 0.05, busy=0.4)})
    assert "other jobs held the CPUs" in _step(rows, "test CPU", "read")["how"]
    # the old CPU encoder record (1024-px regions) is scaled x16 only when the extraction record has none
    enc = {"machine": "old CPU", "title": "Region encoder throughput, 1024-px regions (ViT-S/16 + ViT-XS)",
           "rows": [{"variant": "HIPT4K bf16, 2 region(s) per call", "regions/s": 0.16}]}
    rows, _ = extraction_expectations({"extraction": _cpu(3.6, None), "region_encoder": enc})
    assert _step(rows, "old CPU", "encode")["regions/s"] == 0.01


def test_expectations_use_a_measured_gpu_run():
    gpu = {"machine": "H100 box", "hardware": {"gpu": "NVIDIA H100 80GB HBM3"}, "rows": [
        {"what": "reader alone: thread x16, pinned batches of 4", "regions/s": 20.0},
        {"what": "end to end: thread x16, bf16, batch 4, eager", "regions/s": 10.0}]}
    rows, text = extraction_expectations({"extraction": _cpu(3.6, 0.05), "gpu_region_encoder": GPU_ENCODER,
                                          "extraction_gpu": gpu})
    assert _step(rows, "H100 box", "end to end")["how"] == "measured"
    assert not [r for r in rows if r["machine"] == "H100"]  # measured: no estimate beside it
    assert "50% of what the readers alone supplied" in text and "something besides reading" in text
    gpu["rows"][1]["regions/s"] = 19.0
    _, text = extraction_expectations({"extraction": _cpu(3.6, 0.05), "extraction_gpu": gpu})
    assert "95%" in text and "reading set the pace" in text


def test_verdicts_follow_the_targets():
    targets = [{"target": "parallel reader >= 1.6x serial (2 CPU cores)", "value": 1.84, "met": True, "limited by": ""},
               {"target": "end to end >= 0.8 of reader supply", "value": 0.02, "met": False,
                "limited by": "compute took 97% of the wall time"}]
    text = extraction_verdicts(_cpu(3.6, 0.05, targets=targets), None)
    assert "1.84, **met**" in text and "0.02, **not met**; compute took 97%" in text
    assert "GPU: **not measured**" in text and "gpu_session.sh" in text
    targets[0] |= {"value": 1.2, "met": False, "limited by": "1.1 cores busy"}
    text = extraction_verdicts(_cpu(3.6, 0.05, targets=targets), {"machine": "H100 box", "date": "2026-12-07",
                                                                  "command": "gpu_extraction.py", "targets": [
        {"target": "encoder >= 0.5 of the measured matmul peak", "value": 0.55, "met": True, "limited by": ""}]})
    assert "1.2, **not met**; 1.1 cores busy" in text and "H100 box" in text and "0.55, **met**" in text
    assert "holds no targets" in extraction_verdicts(_cpu(3.6, 0.05), None)


def test_gpu_extraction_dry_run_on_cpu(tmp_path):
    """The prepared device benchmark runs every stage (on the CPU, tiny model, 1024-px regions) and writes
    a record with the three GPU targets; keeps the one-call GPU script from rotting between lent GPUs."""
    env = {**os.environ, "OUT": str(tmp_path), "HIPT_NO_SHARED": "1", "OMP_NUM_THREADS": "2"}
    cmd = [sys.executable, str(ROOT / "benchmarks" / "gpu_extraction.py"), "--device", "cpu", "--model", "tiny",
           "--no-compile", "--size", "4096", "2048", "--region-size", "1024", "--peak-n", "256",
           "--enc-regions", "2", "--reps", "1", "--ref-regions", "2"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    record = json.loads((tmp_path / "extraction_gpu.json").read_text())
    assert [t["target"] for t in record["targets"]] == ["encoder >= 0.5 of the measured matmul peak",
                                                        "end to end >= 0.8 of reader supply",
                                                        "end to end >= 30x the reference-style loop"]
    assert all(t["value"] is not None for t in record["targets"])
    whats = [r["what"] for r in record["rows"]]
    assert any(w.startswith("encoder alone (tiny") for w in whats)
    assert any(w.startswith("reader alone: thread") for w in whats) and any(w.startswith("end to end:") for w in whats)
    assert any(w.startswith("reference-style loop") for w in whats)
    raw = json.loads((tmp_path / "gpu_extraction_raw.json").read_text())
    assert raw["cosine_vs_fp32"]["bf16 eager"]["patch_min"] >= 0.999
    assert set(raw["time_shares_bf16_eager"]) >= {"matmul and convolution", "attention"}


@pytest.mark.parametrize("name", ["gpu_session.sh", "gpu_wheels.sh"])
def test_gpu_shell_scripts_parse(name):
    assert subprocess.run(["bash", "-n", str(ROOT / "benchmarks" / name)]).returncode == 0


def test_memory_target_follows_the_rows():
    def record(increases):  # {(regions, batch): increase MiB}
        return {"machine": "test CPU", "date": "2026-11-27", "command": "bench_region_encoder.py --save",
                "rows": [{"regions in slide": n, "region batch": b, "increase (MiB)": v} for (n, b), v in increases.items()]}

    flat = memory_target(record({(4, 1): 291, (8, 1): 279, (4, 4): 899, (8, 4): 864}))
    assert flat["met"] and flat["value"] == round(279 / 291, 2)
    grows = memory_target(record({(4, 1): 300, (8, 1): 600, (4, 4): 900, (8, 4): 910}))
    assert not grows["met"] and grows["value"] == 2.0 and "600 MiB for 8 regions" in grows["limited by"]
    assert memory_target(record({(4, 1): 300})) is None
    text = extraction_verdicts(None, None, record({(4, 1): 300, (8, 1): 600}))
    assert "peak memory flat in slide size" in text and "2, **not met**; batch 1: 600 MiB" in text
