"""Where things live: the project root, the shared real data, caches and outputs.

Environment variables override every default:

- ``HIPT_SHARED_DATA``: folder of small real slides and tiles (default ``<project>/../shared/data``).
- ``HIPT_SHARED_REFERENCE``: the reference task tables (default ``<project>/../shared/reference``).
- ``HIPT_NO_SHARED``: set to ``1`` (any value but empty, ``0``, ``false``, ``no``, ``off``) to act as if
  there were no shared folder: ``shared_dir()``, ``shared_data_dir()`` and
  ``shared_reference_dir()`` return None, whatever the two variables above say and whatever lies
  beside the checkout.  This is how to see what a new user sees (CI builds the book this way): tests
  that need the shared data skip, and the chapters download public samples or fall back to phantoms.
- ``HIPT_CACHE``: downloads and trained-model cache (default ``<project>/data/cache`` inside a
  checkout, else ``~/.cache/hipt``).
"""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


def project_root() -> Path | None:
    """The checkout root (the folder holding ``pyproject.toml`` and ``hipt/``), or None if installed."""
    root = PACKAGE_DIR.parent
    if (root / "pyproject.toml").is_file() and (root / "_toc.yml").is_file():
        return root
    return None


def _env_path(name: str) -> Path | None:
    value = os.environ.get(name)
    return Path(value).expanduser() if value else None


def _no_shared() -> bool:
    """True when ``HIPT_NO_SHARED`` asks to ignore the shared data (see the module docstring)."""
    return os.environ.get("HIPT_NO_SHARED", "").strip().lower() not in {"", "0", "false", "no", "off"}


def shared_dir() -> Path | None:
    """The ``shared/`` folder beside the checkout, if present (None under ``HIPT_NO_SHARED``)."""
    if _no_shared():
        return None
    root = project_root()
    if root is not None and (root.parent / "shared").is_dir():
        return root.parent / "shared"
    return None


def shared_data_dir() -> Path | None:
    """Folder of small real slides/tiles, or None when it is absent or ``HIPT_NO_SHARED`` is set (tests then skip)."""
    if _no_shared():
        return None
    p = _env_path("HIPT_SHARED_DATA")
    if p is None and shared_dir() is not None:
        p = shared_dir() / "data"
    return p if p is not None and p.is_dir() else None


def shared_reference_dir() -> Path | None:
    """Folder with ``HIPT-REFERENCE.md`` and ``tcga/``, or None when absent or ``HIPT_NO_SHARED`` is set."""
    if _no_shared():
        return None
    p = _env_path("HIPT_SHARED_REFERENCE")
    if p is None and shared_dir() is not None:
        p = shared_dir() / "reference"
    return p if p is not None and p.is_dir() else None


def cache_dir(*parts: str) -> Path:
    """A (created) cache folder for downloads, generated cohorts and trained models."""
    base = _env_path("HIPT_CACHE")
    if base is None:
        root = project_root()
        base = root / "data" / "cache" if root is not None else Path.home() / ".cache" / "hipt"
    path = base.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
