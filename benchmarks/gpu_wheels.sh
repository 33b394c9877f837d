#!/usr/bin/env bash
# Fill .whl/ with the wheels that the GPU device machine (nvidia-h100-x1, nvidia-h200: CPython 3.12.3 on
# x86-64 Linux, no network, torch 2.11 and ~200 packages in its image) lacks to run
# benchmarks/gpu_extraction.py and benchmarks/gpu_chapters.py: hipt's own dependencies, the book's extra
# less the book build (jupyter-book, sphinx-mathjax-offline), and papermill/jupytext/nbclient/ipykernel,
# each with what it needs. Run here, in the repo root, where PyPI is reachable:
#
#   bash benchmarks/gpu_wheels.sh          # ~33 MiB; then run(command=..., carry=[".whl"]) on the device
#   bash benchmarks/gpu_wheels.sh --full   # also debugpy, jedi, parso, widgetsnbextension,
#                                          # jupyterlab_widgets (~45 MiB): required in metadata, but
#                                          # imported by nothing the device call runs (check_wheels.OPTIONAL)
#
# The device installs them with `pip install --no-index --no-deps --target /tmp/site .whl/*.whl`, so the
# set is the whole closure of what is missing (less check_wheels.OPTIONAL without --full), one version
# per project, and nothing the device already has (torch, numpy, pandas, ... carried would shadow its
# builds and overrun the 64 MiB carry limit).
# The pins below are the versions of .venv (Python 3.11 here), all with wheels for 3.12; the closure was
# resolved for 3.12 with `pip install --dry-run --report --python-version 3.12 --only-binary=:all: ...`
# and filtered by the device's package list (KINDS.md, 2026-11-17). Wheels of other versions are removed,
# then benchmarks/check_wheels.py checks the folder (tags, Requires-Python, every Requires-Dist met by a
# wheel here or by the device, nothing stray) and prints it with sizes.
# lifelines 0.30.3 declares pandas<3.0 and the device's pandas is likely 3.x (it lists no pytz/tzdata):
# hipt.metrics' use of it (KaplanMeierFitter, logrank_test) ran with pandas 3.1.1 here, so pandas stays.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

PINS=(
    # hipt's dependencies that the device lacks
    openslide-python==1.4.7 openslide-bin==4.0.1.2 imagecodecs==2026.3.6 lifelines==0.30.3
    autograd==1.9.1                    # lifelines (and autograd-gamma, built below)
    # the book's extra (less jupyter-book, sphinx-mathjax-offline) and gpu_chapters.py's imports
    papermill==2.7.0 jupytext==1.19.7 nbclient==0.11.0 ipykernel==7.4.0 ipywidgets==8.1.9
    # what those need and the device lacks
    comm==0.2.3 entrypoints==0.4.2 fastjsonschema==2.22.3 ipython==9.19.1 ipython_pygments_lexers==1.1.1
    jsonschema==4.26.0 jsonschema-specifications==2025.9.1 referencing==0.37.0 rpds-py==2026.9.1
    jupyter_client==8.10.0 jupyter_core==5.9.1 matplotlib-inline==0.2.2
    mdit-py-plugins==0.7.0 nbformat==5.11.1 nest-asyncio2==1.7.4 pexpect==4.9.0 ptyprocess==0.7.0
    platformdirs==4.14.9 prompt_toolkit==3.0.53 wcwidth==0.9.4 pyzmq==27.3.0 stack-data==0.6.3
    asttokens==3.0.2 executing==2.3.0 pure_eval==0.2.4 tenacity==9.2.1 tornado==6.6.1 traitlets==5.16.1
)
# only an sdist on PyPI for 0.5.0 (pure Python): built here into a py3-none-any wheel
BUILT=(autograd-gamma==0.5.0)
if [[ ${1:-} == --full ]]; then
    PINS+=(debugpy==1.8.22 jedi==0.20.1 parso==0.8.7 widgetsnbextension==4.0.16 jupyterlab_widgets==3.0.17)
elif [[ $# -gt 0 ]]; then
    echo "usage: bash benchmarks/gpu_wheels.sh [--full]" >&2
    exit 2
fi

mkdir -p .whl
# the device's tags: CPython 3.12 (cp312, abi3, none), manylinux x86-64; pip matches each N exactly
PLATFORMS=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_26_x86_64 manylinux_2_24_x86_64 \
         manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux_2_5_x86_64 manylinux1_x86_64 any; do
    PLATFORMS+=(--platform "$p")
done
# pip's warnings about this machine's local extra indexes (file:///opt/pypi...) are noise here
quiet() { "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }
# files already in .whl are kept (pip says "already downloaded"), so a rerun fetches only what changed
quiet "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${PLATFORMS[@]}" -d .whl "${PINS[@]}"
for pin in "${BUILT[@]}"; do
    name=${pin%%==*}
    ls .whl/"${name//-/_}"-"${pin##*==}"-*.whl >/dev/null 2>&1 ||
        quiet "$PY" -m pip wheel -q --no-deps --no-binary "$name" -w .whl "$pin"
done

"$PY" benchmarks/check_wheels.py --dir .whl --prune "${PINS[@]}" "${BUILT[@]}"
