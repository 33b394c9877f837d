#!/usr/bin/env bash
# One device call (the `device` tool's `run`, at most 10 minutes): the prepared GPU checks of issues 17 and
# 19, in order of what they can only measure on a GPU, each with a time budget so that the call ends in time.
#
# First, here (where PyPI is reachable), fill .whl/ with the wheels of what the device machine lacks
# (hipt's dependencies, papermill, jupytext, nbclient, ipykernel, ...; ~33 MiB, checked by
# benchmarks/check_wheels.py), then make the call with .whl carried:
#
#   bash benchmarks/gpu_wheels.sh
#   run(command="bash benchmarks/gpu_session.sh", carry=[".whl"], timeout_s=600)
#
# There the wheels are installed without network (--no-index --no-deps) into /tmp/site.
# Writes $OUT/extraction_gpu.json (issue 19) and $OUT/gpu_chapters.json (issue 17); commit them as
# benchmarks/results/ records with the date, the machine and this command.
set -u
export OUT=${OUT:-outputs/gpu_session}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-} HIPT_CACHE=$PWD/data/cache
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
# 1. extraction (issue 19): encoder MFU, reader supply, end to end vs the reference-style loop (~3 min)
timeout 220 python3 benchmarks/gpu_extraction.py --budget 180 || echo "gpu_extraction.py ended with $?"
# 2. the chapters with preset gpu (issue 17), in the order they build on each other (~6 min)
timeout 330 python3 benchmarks/gpu_chapters.py --presets gpu --chapters 03 04 06 07 08 09 02 05 \
    --timeout 300 --budget 240 --out "$OUT" || echo "gpu_chapters.py ended with $?"
ls -la "$OUT"
