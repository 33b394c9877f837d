"""Compute precision that follows the hardware: one choice for extraction, pretraining and fine-tuning.

Four names, the same in every command (``--precision``, ``hipt extract --dtype``):

- ``"auto"``: on a CUDA GPU with native bf16 (compute capability ≥ 8: A100, H100, L4, RTX 30xx…)
  **bf16**; on an older CUDA GPU (T4, the free Colab GPU; V100) **fp16**, with a gradient scaler when
  training; on a CPU **fp32**.  CPU autocast is bf16 only, and on a CPU it buys little (×1.15 for the
  tiny DINO run, ×1.6 for extraction) while changing the numbers, so it is never picked silently: the
  places that use it on purpose ask for ``"bf16"`` explicitly (the ``cpu`` stage-1 pretraining
  preset, the ``hipt.book.zoo`` CPU extraction), and their results stay what they were.
- ``"bf16"``: autocast to bfloat16, on a CPU or a GPU.  Asked for explicitly on a GPU without native
  bf16 it is honoured (PyTorch emulates it, slowly), and :func:`describe` says so.
- ``"fp16"``: autocast to float16, CUDA only (a CPU has no fast float16 kernels, and an fp16 run is
  meant for an old GPU); training pairs it with a :class:`torch.amp.GradScaler`, since float16's
  narrow range underflows small gradients, as DINO's reference (``fp16_scaler``) and AMP do.
- ``"fp32"``: no autocast.

:func:`resolve_precision` turns a name into ``"bf16" | "fp16" | "fp32"`` for a device;
:func:`autocast` and :func:`grad_scaler` give the context and the scaler for it, so that one training
step serves every precision (a disabled scaler passes the loss and ``optimizer.step()`` through
unchanged); :func:`describe` is the line each command prints.
"""

from __future__ import annotations

import contextlib
from contextlib import AbstractContextManager

import torch

from hipt.device import resolve_device
from hipt.errors import HIPTError

__all__ = ["PRECISIONS", "PrecisionError", "resolve_precision", "native_bf16", "autocast", "grad_scaler", "describe"]

#: The names every command accepts (``--precision``, ``hipt extract --dtype``).
PRECISIONS = ("auto", "bf16", "fp16", "fp32")

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class PrecisionError(HIPTError, ValueError):
    """An unknown precision name, or one the device cannot run (the CLI prints it as one line)."""


def native_bf16(device: torch.device | str) -> bool:
    """Whether a CUDA device computes in bf16 natively (Ampere or newer; every ROCm device).

    ``torch.cuda.is_bf16_supported()`` also answers True where bf16 is only *emulated* (a T4), which is
    slower than fp16 there; the compute capability of the device itself is what tells them apart (and
    it asks about this device, not the current one).
    """
    if torch.version.hip:
        return True
    return torch.cuda.get_device_capability(resolve_device(device))[0] >= 8


def resolve_precision(requested: str = "auto", device: torch.device | str = "cpu") -> str:
    """The precision a run uses on ``device``: ``"bf16"``, ``"fp16"`` or ``"fp32"``.

    ``"auto"``: bf16 on a CUDA GPU with native bf16, fp16 on an older CUDA GPU, fp32 elsewhere (see the
    module's notes).  An explicit name is honoured; ``"fp16"`` on a CPU raises :class:`PrecisionError`,
    as does an unknown name.  Resolving an already resolved name returns it (idempotent).
    """
    if requested not in PRECISIONS:
        raise PrecisionError(f"unknown precision {requested!r}; choose one of {', '.join(PRECISIONS)}")
    device = resolve_device(device)
    if requested == "auto":
        if device.type != "cuda":
            return "fp32"
        return "bf16" if native_bf16(device) else "fp16"
    if requested == "fp16" and device.type == "cpu":
        raise PrecisionError("precision fp16 needs a CUDA GPU; on a CPU use bf16, fp32 or auto (= fp32)")
    return requested


def autocast(device: torch.device | str, precision: str) -> AbstractContextManager:
    """The autocast context of ``precision`` (any name; resolved for ``device``): none for fp32."""
    device = resolve_device(device)
    resolved = resolve_precision(precision, device)
    if resolved == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=_DTYPES[resolved])


def grad_scaler(device: torch.device | str, precision: str) -> torch.amp.GradScaler:
    """A gradient scaler, enabled only for fp16 on CUDA.

    Disabled, ``scale(loss)`` returns the loss, ``unscale_`` does nothing and ``step(optimizer)`` calls
    ``optimizer.step()``: the same training step serves every precision, and fp32/bf16 runs are exactly
    what they were without a scaler.
    """
    device = resolve_device(device)
    enabled = resolve_precision(precision, device) == "fp16" and device.type == "cuda"
    return torch.amp.GradScaler(device.type, enabled=enabled)


def describe(precision: str, device: torch.device | str, training: bool = True) -> str:
    """One line saying which precision a run uses on ``device`` and why, e.g.
    ``"precision: fp16 with gradient scaling (auto: Tesla T4 has no native bf16)"``.

    ``precision``: the requested name; ``training=False`` (inference) leaves the scaler out.
    """
    device = resolve_device(device)
    resolved = resolve_precision(precision, device)
    text = f"precision: {resolved}"
    if resolved == "fp16" and training:
        text += " with gradient scaling"
    if device.type != "cuda":
        why = "auto on a CPU" if precision == "auto" else f"on {device.type}"
        return f"{text} ({why})"
    name = torch.cuda.get_device_name(device)
    if resolved == "fp32":
        return f"{text} (as requested, on {name})"
    native = native_bf16(device)
    if precision == "auto":
        return f"{text} (auto: {name} {'has' if native else 'has no'} native bf16)"
    if resolved == "bf16" and not native:
        return f"{text}, emulated ({name} has no native bf16: slower than fp16, which auto picks)"
    return f"{text} (as requested, on {name})"
