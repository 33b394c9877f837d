"""Check that ``.whl/`` holds exactly what the GPU device machine lacks (never part of CI).

``benchmarks/gpu_wheels.sh`` downloads the wheels; the device installs them all at once with
``pip install --no-index --no-deps --target /tmp/site .whl/*.whl``, so nothing there resolves anything:
this script checks, here, that the set is complete and installable there.

* every wheel's tags fit CPython 3.12 on x86-64 Linux (manylinux up to glibc 2.39) and its
  ``Requires-Python`` admits 3.12.3;
* one wheel per project, and none of a project the device already holds (unless named in ``--override``);
* every ``Requires-Dist`` that applies on the device (markers evaluated for CPython 3.12.3 on Linux,
  extras followed) is met by another wheel here, with a version inside its specifier, or by a package
  of the device's image (its version is checked where it is known, else the specifier is listed as
  unverified);
* the same for the roots: ``pyproject.toml``'s ``dependencies``, the ``book`` extra less
  ``jupyter-book`` and ``sphinx-mathjax-offline`` (the book's build, not needed there), and what
  ``benchmarks/gpu_chapters.py`` imports (papermill, jupytext, nbclient, ipykernel);
* no wheel is unreachable from the roots (a stray download).

A few requirements that nothing run there imports (:data:`OPTIONAL`: debugpy, jedi, ...) may be left
out; they are listed, not counted as errors.

Usage::

    python3 benchmarks/check_wheels.py                      # check .whl/, print the list with sizes
    python3 benchmarks/check_wheels.py --prune A==1 B==2    # first delete wheels that are not these pins

Exit status 1 on any error; the unverified specifiers are printed but are no error.
"""

from __future__ import annotations

import argparse
import email.parser
import re
import sys
import zipfile
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = None

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.tags import compatible_tags, cpython_tags
from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]

#: the packages of the device machines' image 'cuda' (nvidia-h100-x1, nvidia-h200), as the device
#: tool's KINDS.md lists them ("as last read on a machine running it on 2026-11-17")
DEVICE_PACKAGES = """
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build
certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings
cuda-core cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils
execnet filelock flatbuffers flax fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet
httpcore httpx huggingface-hub humanize hypothesis idna imageio iniconfig interface-meta jax
jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver lazy-loader lightning
lightning-utilities linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe matplotlib
mdurl meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals
networkx ninja numba numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc
nvidia-cuda-runtime nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver
nvidia-cusparse nvidia-cusparselt-cu13 nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink
nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript opencv-python-headless optax
opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy peft pillow pip
pluggy portalocker prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments
pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout
pytest-xdist python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors
scikit-build-core scikit-image scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools
shellingham simplejson six sortedcontainers statsmodels sympy tabulate tensorboard
tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm tokenizers toolz torch
torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers treescope triton typer
typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl
zipp
""".split()

#: the versions seen there (KINDS.md's 'pip list' row, 2026-11); every other version is unknown here
DEVICE_VERSIONS = {
    "accelerate": "1.15.0", "botorch": "0.18.1", "cupy-cuda13x": "14.2.0", "gpytorch": "1.15.2",
    "huggingface-hub": "1.33.0", "jax": "0.11.2", "jax-cuda13-pjrt": "0.11.2", "jax-cuda13-plugin": "0.11.2",
    "jaxlib": "0.11.2", "jaxtyping": "0.3.11", "numpy": "2.5.2", "numpyro": "0.21.0", "onnx": "1.23.1",
    "onnx-ir": "1.0.0", "onnxruntime": "1.30.0", "onnxscript": "0.7.2", "pytorch-lightning": "2.6.6",
    "safetensors": "0.8.0", "sentence-transformers": "6.0.1", "sentencepiece": "0.2.2", "tiktoken": "0.14.0",
    "tokenizers": "0.23.2", "torch": "2.11.0", "torch-geometric": "2.8.0.post1", "torchaudio": "2.11.0",
    "torchdiffeq": "0.2.5", "torchmetrics": "1.9.0", "torchvision": "0.26.0", "transformers": "5.17.0",
    "triton": "3.6.0",
}

KINDS_MD = Path("/work/.library/device/KINDS.md")
KINDS_LINE = "nvidia-h100-x1, nvidia-h200: their image, 'cuda', holds these"

#: the device's interpreter: CPython 3.12.3 on x86-64 Linux
PYTHON = (3, 12)
ENV = {**default_environment(), "python_version": "3.12", "python_full_version": "3.12.3",
       "implementation_name": "cpython", "implementation_version": "3.12.3",
       "platform_python_implementation": "CPython", "sys_platform": "linux", "platform_system": "Linux",
       "os_name": "posix", "platform_machine": "x86_64", "extra": ""}
PLATFORMS = ([f"manylinux_2_{n}_x86_64" for n in range(39, 4, -1)]
             + ["manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64", "linux_x86_64"])
SUPPORTED = set(cpython_tags(PYTHON, platforms=PLATFORMS)) | set(compatible_tags(PYTHON, "cp312", PLATFORMS))

#: what the device call needs beyond pyproject.toml: benchmarks/gpu_chapters.py runs papermill on
#: jupytext-converted chapters in an ipykernel (through nbclient)
EXTRA_ROOTS = ["papermill", "jupytext", "nbclient", "ipykernel"]
BOOK_BUILD_ONLY = {"jupyter-book", "sphinx-mathjax-offline"}

#: required in metadata but imported by nothing the device call runs (or only inside a try): left out
#: by default to keep .whl small (``gpu_wheels.sh --full`` carries them, 12 MiB more)
OPTIONAL = {
    "debugpy": "ipykernel imports it in a try (no kernel debugger without it); 5.1 MiB",
    "jedi": "IPython imports it only to complete code (find_spec, then lazily); 4.7 MiB",
    "parso": "only jedi's",
    "widgetsnbextension": "ipywidgets' notebook front-end assets, never imported; 2.1 MiB",
    "jupyterlab-widgets": "ipywidgets' JupyterLab front-end assets, never imported",
}


def norm(name: str) -> str:
    return canonicalize_name(name)


def read_wheel(path: Path) -> dict:
    name, version, _build, tags = parse_wheel_filename(path.name)
    with zipfile.ZipFile(path) as z:
        meta_name = next(n for n in z.namelist() if re.fullmatch(r"[^/]+\.dist-info/METADATA", n))
        meta = email.parser.Parser().parsestr(z.read(meta_name).decode("utf-8", "replace"), headersonly=True)
    return {"path": path, "name": norm(name), "display": meta["Name"], "version": version, "tags": tags,
            "requires_python": meta.get("Requires-Python"), "requires": [Requirement(r) for r in
                                                                         meta.get_all("Requires-Dist") or []],
            "size": path.stat().st_size}


def device_names_from_kinds() -> set[str] | None:
    if not KINDS_MD.exists():
        return None
    for line in KINDS_MD.read_text().splitlines():
        if line.startswith(KINDS_LINE) and "Packages:" in line:
            names = line.split("Packages:", 1)[1].strip().rstrip(".").split(",")
            return {norm(n.strip()) for n in names if n.strip()}
    return None


def roots() -> list[tuple[str, Requirement]]:
    if tomllib is None:
        sys.exit("check_wheels.py needs Python >= 3.11 (tomllib) to read pyproject.toml")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    out = [("pyproject dependencies", Requirement(r)) for r in project["dependencies"]]
    out += [("pyproject [book]", Requirement(r)) for r in project["optional-dependencies"]["book"]
            if norm(Requirement(r).name) not in BOOK_BUILD_ONLY]
    out += [("gpu_chapters.py", Requirement(r)) for r in EXTRA_ROOTS]
    return out


def prune(directory: Path, pins: list[str]) -> list[str]:
    """Delete the wheels that match no pin; the pins that no wheel matches (errors)."""
    want = {}
    for pin in pins:
        req = Requirement(pin)
        (spec,) = req.specifier  # a pin: NAME==VERSION
        want[norm(req.name)] = Version(spec.version)
    found = set()
    for path in sorted(directory.glob("*.whl")):
        name, version, _b, _t = parse_wheel_filename(path.name)
        if want.get(norm(name)) == version:
            found.add(norm(name))
        else:
            print(f"removing {path.name} (not pinned)")
            path.unlink()
    for path in directory.iterdir():  # pip leaves no other files, but an sdist or a partial download might
        if path.is_file() and path.suffix != ".whl":
            print(f"removing {path.name} (no wheel)")
            path.unlink()
    return [f"pinned {n}=={v} has no wheel in {directory}" for n, v in want.items() if n not in found]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", type=Path, default=ROOT / ".whl")
    ap.add_argument("--prune", nargs="+", metavar="NAME==VERSION",
                    help="delete the wheels that are not these pins before checking")
    ap.add_argument("--override", nargs="*", default=[],
                    help="projects the device holds that are carried on purpose in another version")
    args = ap.parse_args()

    errors: list[str] = []
    if args.prune:
        errors += prune(args.dir, args.prune)

    device = {norm(n) for n in DEVICE_PACKAGES}
    from_kinds = device_names_from_kinds()
    if from_kinds is not None and from_kinds != device:
        print(f"note: {KINDS_MD} now lists other device packages: added {sorted(from_kinds - device)}, "
              f"removed {sorted(device - from_kinds)}; checking against the file's list")
        device = from_kinds
    override = {norm(n) for n in args.override}

    wheels: dict[str, dict] = {}
    for path in sorted(args.dir.glob("*.whl")):
        w = read_wheel(path)
        if w["name"] in wheels:
            errors.append(f"two wheels of {w['name']}: {wheels[w['name']]['path'].name} and {path.name}")
            continue
        wheels[w["name"]] = w
        if not (w["tags"] & SUPPORTED):
            errors.append(f"{path.name}: no tag fits CPython 3.12 on manylinux x86-64")
        if w["requires_python"] and not SpecifierSet(w["requires_python"]).contains("3.12.3"):
            errors.append(f"{path.name}: Requires-Python {w['requires_python']} excludes 3.12.3")
        if w["name"] in device and w["name"] not in override:
            errors.append(f"{path.name}: the device already has {w['name']} (carrying it shadows its build)")
    if not wheels:
        errors.append(f"no wheels in {args.dir}")

    unverified: list[str] = []
    left_out: list[str] = []
    reached: set[str] = set()

    def applies(req: Requirement, extra: str = "") -> bool:
        return req.marker is None or req.marker.evaluate({**ENV, "extra": extra})

    def need(who: str, req: Requirement) -> None:
        """Check one requirement of ``who`` that applies on the device, and what it brings along."""
        name = norm(req.name)
        if name in wheels:
            w = wheels[name]
            if req.specifier and not req.specifier.contains(w["version"], prereleases=True):
                errors.append(f"{who} requires {req}, but .whl has {w['display']} {w['version']}")
            for e in ("", *sorted(req.extras)):  # the wheel's own requirements, and its extras' asked for
                if (name, e) in reached:
                    continue
                reached.add((name, e))
                for sub in w["requires"]:
                    if applies(sub, e) and not (e and applies(sub, "")):
                        need(f"{w['display']} {w['version']}" + (f"[{e}]" if e else ""), sub)
        elif name in device:
            known = DEVICE_VERSIONS.get(name)
            if known is not None:
                if req.specifier and not req.specifier.contains(known, prereleases=True):
                    errors.append(f"{who} requires {req}, but the device has {req.name} {known}")
            elif req.specifier or req.extras:
                unverified.append(f"{who} requires {req} (the device has {req.name}, version unknown here)")
        elif name in OPTIONAL:
            left_out.append(f"{who} requires {req}: {OPTIONAL[name]}")
        else:
            errors.append(f"{who} requires {req}: neither in .whl nor on the device")

    for who, req in roots():
        if applies(req):
            need(who, req)

    stray = sorted(n for n in wheels if (n, "") not in reached)
    for n in stray:
        errors.append(f"{wheels[n]['path'].name}: nothing in the roots needs it")

    total = sum(w["size"] for w in wheels.values())
    print(f"{len(wheels)} wheels in {args.dir} for CPython 3.12 (x86-64 Linux):")
    for w in sorted(wheels.values(), key=lambda w: -w["size"]):
        print(f"  {w['size'] / 2**20:7.2f} MiB  {w['display']}=={w['version']}  ({w['path'].name})")
    print(f"  {total / 2**20:7.2f} MiB  in all")
    if unverified:
        print(f"unverified here ({len(unverified)}: the device's versions of these are unknown; "
              "`python3 -m pip show NAME` there tells):")
        for line in sorted(set(unverified)):
            print(f"  {line}")
    if left_out:
        print(f"left out on purpose ({len(left_out)}; --full carries them):")
        for line in sorted(set(left_out)):
            print(f"  {line}")
    if errors:
        print(f"ERRORS ({len(errors)}):")
        for line in errors:
            print(f"  {line}")
        return 1
    print("ok: one wheel per project, all fit CPython 3.12, none the device has, every requirement met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
