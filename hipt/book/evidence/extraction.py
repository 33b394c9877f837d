"""What extracting one slide costs, and issue 19's extraction targets, worded from the benchmark records.

Chapter 5 and the Performance appendix read the committed records (:func:`hipt.provenance.read_benchmark_result`):

- ``extraction``: ``benchmarks/bench_extraction.py`` on the CPU machine: reader supply (serial and
  parallel), the encoder alone against the machine's matmul peak, end to end against a reference-style
  loop, and the targets with what limits each;
- ``region_encoder``: ``bench_region_encoder.py`` on the CPU (1024-px regions), used only when the
  ``extraction`` record holds no full-size encoder rows;
- ``gpu_region_encoder``: the encoder alone on a lent GPU, on random tensors already on the GPU;
- ``extraction_gpu``: ``benchmarks/gpu_extraction.py`` on a lent GPU, slide file to features;
- ``region_encoder_memory``: ``bench_region_encoder.py``'s peak memory of ``extract_slide`` per slide size
  and region batch (:func:`memory_target`).

Every row says how its number was obtained: ``measured`` (on the machine named), or an ``estimate``
that names the measured rate it scales and the datasheet figure it scales by.  A card nothing was
measured on is never given a bare number.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

__all__ = ["TCGA_REGIONS_PER_SLIDE", "DATASHEET_PEAK_TFLOPS", "COLAB_VCPUS", "GPU_HOST_CORES", "MEMORY_FLAT",
           "extraction_expectations", "memory_target", "extraction_verdicts"]

#: Regions of 4096 px per TCGA slide on average (~110,000 regions over ~2,800 slides).
TCGA_REGIONS_PER_SLIDE = 39

#: Dense tensor-core peaks (TFLOP/s, bf16 or fp16, no sparsity) from NVIDIA's datasheets.  Used only to
#: scale a rate measured on one card to another, and every such number is labelled an estimate.
DATASHEET_PEAK_TFLOPS = {"T4": 65.0, "H100": 989.0, "H200": 989.0}

#: CPUs of a Colab GPU runtime: the readers' share of a Colab T4 session.
COLAB_VCPUS = 2

#: CPU cores of the lent H100/H200 machines (the device tool's machines).
GPU_HOST_CORES = 16


def _rate(record: Mapping | None, key: str, match: Callable[[dict], bool]) -> float | None:
    """The largest numeric ``key`` over the record's rows that ``match``."""
    if not record:
        return None
    values = [r.get(key) for r in record.get("rows", []) if match(r) and isinstance(r.get(key), (int, float))]
    return max(values) if values else None


def _what(prefix: str, *, phantom: bool = True, contains: str = "") -> Callable[[dict], bool]:
    def match(r: dict) -> bool:
        return (str(r.get("what", "")).startswith(prefix) and contains in str(r.get("what", ""))
                and (not phantom or str(r.get("slide", "phantom")).startswith("phantom")))
    return match


def _per_slide(rate: float, regions: float) -> str:
    seconds = regions / rate
    return f"{seconds / 60:.0f} min" if seconds >= 120 else f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"


def _r(rate: float) -> float:
    """A rate to three significant digits (the table mixes 0.06 and 50 regions/s)."""
    return float(f"{rate:.3g}")


def _gpu_kind(name: str | None) -> str | None:
    return next((k for k in DATASHEET_PEAK_TFLOPS if name and k in name), None)


def extraction_expectations(records: Mapping[str, dict | None],
                            regions_per_slide: float = TCGA_REGIONS_PER_SLIDE) -> tuple[list[dict], str]:
    """What one TCGA slide costs to extract on this CPU, a Colab T4 and an H100: ``(rows, text)``.

    ``records``: the records named in the module docstring, by name (any may be None).  Rows have the
    columns ``machine``, ``step``, ``regions/s``, ``per slide`` and ``how``; the text says which step
    limits on each machine, from the same numbers.
    """
    rows: list[dict] = []
    said: list[str] = []
    cpu = records.get("extraction")
    machine = machine_enc = cpu["machine"] if cpu else "this CPU"
    full = "ViT-S/16 + ViT-XS"

    # -- this CPU: reading, encoding, end to end (measured)
    def phantom_serial(r: dict) -> bool:
        return r.get("what") == "reader alone, serial" and str(r.get("slide", "")).startswith("phantom")

    serial, serial_busy = _rate(cpu, "regions/s", phantom_serial), _rate(cpu, "cores busy", phantom_serial)
    parallel = _rate(cpu, "regions/s", lambda r: str(r.get("what", "")).startswith("reader alone, ")
                     and bool(r.get("workers")) and str(r.get("slide", "")).startswith("phantom"))
    per_core = serial / serial_busy if serial and serial_busy else serial  # regions per CPU second
    read = parallel or serial
    if read:
        rows.append({"machine": machine, "step": "read and decode (parallel reader)" if parallel else "read (serial)",
                     "regions/s": _r(read), "per slide": _per_slide(read, regions_per_slide), "how": "measured"})
        if serial_busy is not None and serial_busy < 0.8:
            rows[-1]["how"] = f"measured while other jobs held the CPUs (serial reader: {serial_busy:.2f} cores busy)"
    encode = _rate(cpu, "regions/s", _what("encoder alone", contains=f"({full}, 4096-px"))
    how = "measured (best of fp32 and bf16, 4096-px regions)"
    if encode is None:
        enc = records.get("region_encoder")
        enc1024 = _rate(enc, "regions/s", lambda r: "fp32" in str(r.get("variant", "")) or "bf16" in str(r.get("variant", "")))
        if enc1024:
            scale = 16 if "1024-px" in enc.get("title", "") else 1
            encode, how = enc1024 / scale, ("measured on 1024-px regions, scaled x16 to 4096 px" if scale > 1 else "measured")
            machine_enc = enc["machine"]
    if encode:
        rows.append({"machine": machine_enc, "step": f"encode ({full})", "regions/s": _r(encode),
                     "per slide": _per_slide(encode, regions_per_slide), "how": how})
    e2e = _rate(cpu, "regions/s", _what("pipeline", contains=f"({full})"))
    ref = _rate(cpu, "regions/s", _what("reference-style loop", contains=f"({full})"))
    if e2e:
        rows.append({"machine": machine, "step": f"end to end ({full}, pipeline)", "regions/s": _r(e2e),
                     "per slide": _per_slide(e2e, regions_per_slide), "how": "measured"})
    if encode and read:
        limit = "encoding" if encode < read else "reading"
        said.append(f"On this CPU {limit} limits: {_per_slide(encode, regions_per_slide)} of encoding per slide against "
                    f"{_per_slide(read, regions_per_slide)} of reading"
                    + (f"; end to end the pipeline took {_per_slide(e2e, regions_per_slide)} per slide"
                       + (f", {e2e / ref:.2f}x the reference-style loop" if ref else "") if e2e else "") + ".")

    # -- GPUs: measured end to end where a record exists, else estimates from the measured H200 encoder
    g = records.get("extraction_gpu")
    g_name = ((g or {}).get("hardware") or {}).get("gpu")
    g_e2e = _rate(g, "regions/s", lambda r: str(r.get("what", "")).startswith("end to end:"))
    g_read = _rate(g, "regions/s", lambda r: str(r.get("what", "")).startswith("reader alone"))
    if g_e2e:
        rows.append({"machine": g["machine"], "step": f"end to end ({full}, bf16, parallel reader)",
                     "regions/s": _r(g_e2e), "per slide": _per_slide(g_e2e, regions_per_slide), "how": "measured"})
        if g_read:
            pace = "reading set the pace" if g_e2e >= 0.8 * g_read else "something besides reading held it back"
            said.append(f"On the {g_name or 'GPU'} end to end ran at {g_e2e / g_read:.0%} of what the readers alone "
                        f"supplied ({g_read:.1f} regions/s): {pace}.")
    ge = records.get("gpu_region_encoder")
    ge_name = ((ge or {}).get("hardware") or {}).get("gpu")
    ge_rate = _rate(ge, "regions/s", lambda r: "bf16" in str(r.get("variant", r.get("what", ""))))
    ge_kind = _gpu_kind(ge_name)
    for card, cores, why in (("T4", COLAB_VCPUS, "a Colab T4 runtime has 2 vCPUs"),
                             ("H100", GPU_HOST_CORES, f"a {GPU_HOST_CORES}-core GPU host")):
        if g_e2e and _gpu_kind(g_name) == card:
            continue  # measured above
        label = "Colab T4" if card == "T4" else "H100"
        if not (ge_rate and ge_kind):
            rows.append({"machine": label, "step": "end to end", "regions/s": None, "per slide": "–",
                         "how": "not measured"})
            continue
        enc_est = ge_rate * DATASHEET_PEAK_TFLOPS[card] / DATASHEET_PEAK_TFLOPS[ge_kind]
        scale_how = (f"estimate: {ge_kind} encoder measured at {ge_rate:.1f} regions/s (random tensors on the GPU)"
                     + ("" if card == ge_kind or DATASHEET_PEAK_TFLOPS[card] == DATASHEET_PEAK_TFLOPS[ge_kind] else
                        f" x {DATASHEET_PEAK_TFLOPS[card]:.0f}/{DATASHEET_PEAK_TFLOPS[ge_kind]:.0f} datasheet peaks"
                        " (an upper bound: a smaller card reaches a smaller share of its peak)")
                     + ("" if card == ge_kind else f" ({card} and {ge_kind} have the same datasheet peak)"
                        if DATASHEET_PEAK_TFLOPS[card] == DATASHEET_PEAK_TFLOPS[ge_kind] else ""))
        rows.append({"machine": label, "step": f"encode ({full}, bf16 or fp16)", "regions/s": _r(enc_est),
                     "per slide": _per_slide(enc_est, regions_per_slide), "how": scale_how})
        if read and per_core:
            supply = read if cores == (cpu or {}).get("hardware", {}).get("cpu_count") else per_core * cores
            read_how = ("estimate: the parallel reader as measured on this 2-core machine" if supply == read else
                        f"estimate: {per_core:.2f} regions per busy core (measured here) x {cores} cores, if reading "
                        "scales with cores (measured only up to 2 here)")
            rows.append({"machine": label, "step": f"read and decode ({why})", "regions/s": _r(supply),
                         "per slide": _per_slide(supply, regions_per_slide), "how": read_how})
            both = min(enc_est, supply)
            limit = ("reading and encoding about even" if max(enc_est, supply) < 1.2 * both else
                     "reading the limit" if supply < enc_est else "encoding the limit")
            rows.append({"machine": label, "step": "end to end (the slower of the two, overlapped)",
                         "regions/s": _r(both), "per slide": _per_slide(both, regions_per_slide),
                         "how": "estimate: not measured on this card"})
            said.append(f"On {'a ' + label if card == 'T4' else 'an ' + label} one slide would take about "
                        f"{_per_slide(both, regions_per_slide)}, {limit} "
                        f"({supply:.1f} regions/s of reading against {enc_est:.1f} of encoding): an estimate, "
                        "not a measurement.")
    return rows, " ".join(said)


#: the memory target: peak memory growth at the largest slide over that at the smallest, same batch
MEMORY_FLAT = 1.25


def memory_target(record: Mapping) -> dict | None:
    """The target "peak memory flat in slide size" from ``bench_region_encoder.py``'s memory record
    (``region_encoder_memory``: fresh process per row, peak RSS increase of ``extract_slide`` per slide
    size and region batch): the largest, over batches, of the increase at the most regions over the
    increase at the fewest."""
    by_batch: dict = {}
    for r in record.get("rows", []):
        by_batch.setdefault(r.get("region batch"), []).append((r.get("regions in slide"), r.get("increase (MiB)")))
    ratios = []
    for batch, points in sorted(by_batch.items()):
        (n0, small), (n1, large) = min(points), max(points)
        if n1 > n0 and small:
            ratios.append((large / small, f"batch {batch}: {large} MiB for {n1} regions against {small} MiB for {n0}"))
    if not ratios:
        return None
    value, worst = max(ratios)
    return {"target": f"peak memory flat in slide size (largest / smallest slide <= {MEMORY_FLAT})",
            "threshold": MEMORY_FLAT, "value": round(value, 2), "met": value <= MEMORY_FLAT, "limited by": worst}


def extraction_verdicts(cpu: Mapping | None, gpu: Mapping | None, memory: Mapping | None = None) -> str:
    """Issue 19's targets against the records ``extraction`` (CPU), ``extraction_gpu`` (a GPU) and
    ``region_encoder_memory`` (optional, :func:`memory_target`), as Markdown: each target with its
    measured value, the machine and date, met or not met, and for a missed one what the run's own
    measurements say limits it."""
    lines: list[str] = []
    for record, kind in ((cpu, "CPU"), (gpu, "GPU"), (memory, "memory")):
        if not record and kind == "memory":
            continue
        if not record:
            if kind == "CPU":
                lines.append("- CPU: no record yet (`python benchmarks/bench_extraction.py --tcga-size --model small --save`).")
            else:
                lines.append("- GPU: **not measured** (no GPU was lent to a session that worked on this). The targets "
                             "encoder ≥ 0.5 of the bf16 matmul peak, end to end ≥ 0.8 of reader supply and ≥ 30× the "
                             "reference-style loop are set for one H100/H200; the prepared one-call check is "
                             "`benchmarks/gpu_session.sh` (`benchmarks/gpu_extraction.py`).")
            continue
        targets = record.get("targets")
        if kind == "memory":
            targets = [t for t in (memory_target(record),) if t]
        if not targets:
            lines.append(f"- {kind} record of {record.get('date', '')[:10]} holds no targets: rerun its command "
                         f"(`{record.get('command', '')}`).")
            continue
        lines.append(f"- **{record['machine']}** ({record.get('date', '')[:10]}, `{record.get('command', '')}`):")
        for t in targets:
            value = "not measured" if t.get("value") is None else f"{t['value']:g}"
            verdict = "met" if t.get("met") else "not met"
            lines.append(f"  - {t['target']}: {value}, **{verdict}**"
                         + (f"; {t['limited by']}" if t.get("limited by") and not t.get("met") else "") + ".")
        if kind == "CPU" and any(not t.get("met") for t in targets[1:]):
            lines.append("  - The encoder and end-to-end targets are set for one H100/H200; on a CPU they say how far "
                         "it is from them and, measured, why.")
    return "\n".join(lines)
