"""Loading (and saving) ViT backbones in the released HIPT checkpoint format, safely and loudly.

The released files ``vit256_small_dino.pth`` and ``vit4k_xs_dino.pth`` are full DINO training checkpoints:
``{'student', 'teacher', 'optimizer', 'epoch', 'args' (an argparse.Namespace), 'dino_loss', ...}``.  The
backbone is the teacher's ``backbone.*`` (the student's keys carry ``module.backbone.*``); ``head.*`` is the
DINO projection head, not part of the backbone.

What :func:`load_backbone` does, fixing the reference loader's silent failures (its issues #36/#56):

- ``weights`` is a registry name (:data:`CHECKPOINTS`), a URL (downloaded once into the cache through
  :func:`hipt.io.download`, atomically, sha256-checked for known files) or a local path;
- a Git LFS pointer file (what a clone without LFS holds) or a truncated file is refused with a message
  that says which, and a known file is checked against its size and sha256;
- ``torch.load(weights_only=True)`` is used always — the safe unpickler of current PyTorch — with only
  :class:`argparse.Namespace` (the pickled ``args``) added to its allow-list for the duration of the call;
  ``trusted=True`` is an explicit opt-out for files you trust that pickle other objects;
- ``teacher`` is taken, ``module.`` and ``backbone.`` prefixes stripped, ``head.*`` ignored, and the rest
  must match the model exactly: any missing or unexpected key, or a shape mismatch, raises
  :class:`~hipt.errors.CheckpointError` naming the keys.

:func:`save_backbone` writes a slim checkpoint in the same format (``{'teacher': {'backbone.*'}, 'hipt':
{config}}``: only tensors, strings and numbers, so it loads with ``weights_only=True`` and no allow-list);
:func:`hipt.models.vit.load_model` rebuilds any ViT256/ViT4K (tiny ones too) from such a file or a released
one.  This module reads and writes state dicts of any module; it knows no architecture, so that the
ViTs (:mod:`hipt.models.vit`) can load weights without an import circle.
"""

from __future__ import annotations

import argparse
import contextlib
import pickle
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hipt.errors import CheckpointError
from hipt.io import RemoteFile, _is_url, atomic_path, download, sha256sum

__all__ = [
    "CHECKPOINTS",
    "LFS_POINTER_PREFIX",
    "backbone_state_dict",
    "load_backbone",
    "load_checkpoint",
    "resolve_weights",
    "save_backbone",
]

_MEDIA = "https://media.githubusercontent.com/media/mahmoodlab/HIPT/master/HIPT_4K/Checkpoints/"

#: The released checkpoints (Git LFS objects of the reference repository), with their size and sha256.
CHECKPOINTS: dict[str, RemoteFile] = {
    "vit256_small_dino": RemoteFile(
        url=_MEDIA + "vit256_small_dino.pth",
        sha256="6960cd5a8657dc8bb214671aa0c6dbd3f5b698e84386884955836487ddc89e24",
        filename="vit256_small_dino.pth",
        size=704_238_867,
        description="ViT-S/16 (ViT256-16) stage-1 DINO checkpoint, TCGA patches at 20x",
    ),
    "vit4k_xs_dino": RemoteFile(
        url=_MEDIA + "vit4k_xs_dino.pth",
        sha256="2b0bd9e9a602a35f2bb3f76da39d2b53a91f23fc3f115dc59a63267d95ad2b7b",
        filename="vit4k_xs_dino.pth",
        size=395_710_078,
        description="ViT-XS (ViT4096-256) stage-2 DINO checkpoint, TCGA regions at 20x",
    ),
}

LFS_POINTER_PREFIX = b"version https://git-lfs.github.com/spec/v1"
_BY_FILENAME = {r.filename: r for r in CHECKPOINTS.values()}


def _known(path: Path) -> RemoteFile | None:
    return _BY_FILENAME.get(path.name)


def resolve_weights(weights: str | Path, verify: bool = True) -> Path:
    """A registry name, URL or path → a local, checked checkpoint file.

    Raises :class:`CheckpointError` for a missing file, an LFS pointer, a truncated known file or a
    sha256 mismatch of a known file (``verify=False`` skips hashing a known local file; sizes are
    always checked).
    """
    remote: RemoteFile | None = None
    if isinstance(weights, str) and weights in CHECKPOINTS:
        remote = CHECKPOINTS[weights]
        path = download(remote.url, remote.sha256, filename=remote.filename)
    elif isinstance(weights, str) and _is_url(weights):
        name = Path(weights.split("?")[0]).name
        remote = _BY_FILENAME.get(name)
        path = download(weights, remote.sha256 if remote else None)
        _check_not_pointer(path)
    else:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise CheckpointError(
                path, "checkpoint file not found",
                "the reference would silently keep random weights here; give an existing path, "
                f"a URL or one of {sorted(CHECKPOINTS)}",
            )
        _check_not_pointer(path)
        remote = _known(path)
        if remote is not None:
            size = path.stat().st_size
            if remote.size is not None and size != remote.size:
                raise CheckpointError(
                    path, f"truncated or incomplete: {size:,} bytes, the released file has {remote.size:,}",
                    "download it again (hipt.models.weights.resolve_weights"
                    f"({path.stem!r}) fetches and verifies it)",
                )
            if verify and remote.sha256 and sha256sum(path) != remote.sha256:
                raise CheckpointError(path, f"sha256 differs from the released file's ({remote.sha256[:12]}…)",
                                      "the file is corrupt or not the released one")
    return Path(path)


def _check_not_pointer(path: Path) -> None:
    with open(path, "rb") as f:
        head = f.read(len(LFS_POINTER_PREFIX))
    if head == LFS_POINTER_PREFIX:
        raise CheckpointError(
            path,
            "is a Git LFS pointer file, not a checkpoint (the repository was cloned without Git LFS)",
            "run 'git lfs pull', or let hipt download it: weights='vit256_small_dino' / 'vit4k_xs_dino'",
        )


@contextlib.contextmanager
def _namespace_allowed() -> Iterator[None]:
    """Allow ``argparse.Namespace`` in ``torch.load(weights_only=True)`` for this block only."""
    ser = torch.serialization
    if hasattr(ser, "safe_globals"):
        with ser.safe_globals([argparse.Namespace]):
            yield
    elif hasattr(ser, "add_safe_globals"):  # torch 2.4: global registration (Namespace holds only data)
        ser.add_safe_globals([argparse.Namespace])
        yield
    else:  # torch < 2.4: no allow-list; a checkpoint with a Namespace then needs trusted=True
        yield


def load_checkpoint(weights: str | Path, trusted: bool = False, verify: bool = True) -> dict[str, Any]:
    """Load a checkpoint file (name, URL or path) into a dict on the CPU, safely.

    Uses ``torch.load(weights_only=True)`` with ``argparse.Namespace`` allowed.  ``trusted=True`` uses the
    full unpickler instead (it can run arbitrary code: only for files you trust).
    """
    path = resolve_weights(weights, verify=verify)
    _check_not_pointer(path)
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic == b"PK\x03\x04" and not zipfile.is_zipfile(path):
        raise CheckpointError(
            path, f"truncated: a zip checkpoint without its end (central directory); {path.stat().st_size:,} bytes",
            "the download or copy was interrupted; fetch it again",
        )
    try:
        if trusted:
            obj = torch.load(path, map_location="cpu", weights_only=False)
        else:
            with _namespace_allowed():
                obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        msg = str(e)
        if "weights_only" in msg or "Unsupported global" in msg or "not an allowed global" in msg:
            first = msg.strip().splitlines()[0][:300]
            raise CheckpointError(
                path, f"holds pickled objects that the safe loader refuses ({first})",
                "if you trust this file, load it with trusted=True",
            ) from None
        raise CheckpointError(path, f"truncated or not a PyTorch checkpoint (unpickling failed: {msg[:200]})") from None
    except Exception as e:  # noqa: BLE001 (torch raises many kinds on a corrupt file)
        first = (str(e).splitlines() or [type(e).__name__])[0][:200]
        raise CheckpointError(path, f"truncated or not a PyTorch checkpoint ({type(e).__name__}: {first})") from None
    if not isinstance(obj, Mapping):
        raise CheckpointError(path, f"holds a {type(obj).__name__}, not a dict of weights")
    return dict(obj)


def backbone_state_dict(checkpoint: Mapping[str, Any], key: str = "teacher") -> dict[str, torch.Tensor]:
    """Released-format checkpoint → backbone state dict (``module.``/``backbone.`` stripped, ``head.*`` dropped).

    Takes ``checkpoint[key]`` when present (the DINO teacher), else treats the dict as a state dict.
    """
    sd = checkpoint.get(key, checkpoint) if key else checkpoint
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        if not isinstance(v, torch.Tensor):
            continue
        k = k.removeprefix("module.").removeprefix("backbone.")
        if k.startswith("head."):
            continue
        out[k] = v
    return out


def load_backbone(model: nn.Module, weights: str | Path | Mapping[str, Any], key: str = "teacher",
                  trusted: bool = False, verify: bool = True) -> nn.Module:
    """Load backbone weights into ``model`` strictly (``head.*`` of the DINO head is ignored).

    ``weights``: registry name, URL, path, or an already loaded checkpoint dict.  Raises
    :class:`CheckpointError` naming the missing / unexpected / mis-shaped keys.  Returns ``model``.
    """
    if isinstance(weights, Mapping):
        source: str | Path = "<checkpoint dict>"
        ckpt = dict(weights)
    else:
        source = weights if _is_url(str(weights)) or str(weights) in CHECKPOINTS else Path(weights)
        ckpt = load_checkpoint(weights, trusted=trusted, verify=verify)
    sd = backbone_state_dict(ckpt, key)
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shapes = [f"{k} {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in sd and sd[k].shape != own[k].shape]
    problems = []
    if missing:
        problems.append(f"missing backbone keys {_short(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_short(unexpected)}")
    if shapes:
        problems.append(f"shape mismatches {_short(shapes)}")
    if problems:
        raise CheckpointError(
            source, "does not match the model " + type(model).__name__ + ": " + "; ".join(problems),
            "is it the checkpoint of this architecture (ViT-S/16 for vit256_small, ViT-XS for vit4k_xs)?",
        )
    model.load_state_dict(sd, strict=True)
    return model


def _short(keys: list[str], n: int = 8) -> str:
    more = f" … (+{len(keys) - n} more)" if len(keys) > n else ""
    return "[" + ", ".join(keys[:n]) + "]" + more


def save_backbone(model: nn.Module, path: str | Path, extra: Mapping[str, Any] | None = None) -> Path:
    """Write ``model``'s weights as a slim released-format checkpoint (atomic).

    Content: ``{'teacher': {'backbone.<key>': tensor}, 'hipt': {'config': model.config, **extra}}`` —
    tensors, strings and numbers only, so :func:`load_checkpoint` reads it with ``weights_only=True``,
    :func:`load_backbone` loads it, and :func:`hipt.models.vit.load_model` rebuilds the architecture from it.
    """
    sd = {f"backbone.{k}": v.detach().cpu().clone() for k, v in model.state_dict().items()}
    meta: dict[str, Any] = dict(extra or {})
    cfg = getattr(model, "config", None)
    if cfg is not None:
        meta["config"] = dict(cfg)
    with atomic_path(path) as tmp:
        torch.save({"teacher": sd, "hipt": meta}, tmp)
    return Path(path)
