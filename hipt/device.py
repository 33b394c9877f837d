"""Which device a computation runs on: one rule for every command, chapter and training loop.

``"auto"`` means the GPU when torch sees one, else the CPU; a bare ``"cuda"`` means this process's
GPU, ``cuda:<LOCAL_RANK>`` (the local rank torchrun gives each process; 0 in a plain process), so that
several processes on one machine use different GPUs; any other name is taken as given.
"""

from __future__ import annotations

import os

import torch
from torch import nn

__all__ = ["describe_device", "model_device", "resolve_device"]


def resolve_device(device: str | torch.device = "auto", local_rank: int | None = None) -> torch.device:
    """The :class:`torch.device` that ``device`` names.

    ``"auto"``: ``cuda:<rank>`` when torch sees a CUDA GPU, else ``cpu``; ``"cuda"``: ``cuda:<rank>``,
    where ``rank`` is ``local_rank`` (default: ``LOCAL_RANK`` from the environment, else 0) modulo the
    number of GPUs; anything else (``"cpu"``, ``"cuda:1"``, a :class:`torch.device`) unchanged.
    """
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and torch.cuda.is_available():
        rank = int(os.environ.get("LOCAL_RANK", "0")) if local_rank is None else local_rank
        return torch.device("cuda", rank % max(1, torch.cuda.device_count()))
    return torch.device(device)


def model_device(model: nn.Module) -> torch.device:
    """The device of ``model``'s parameters (the CPU for a model without parameters)."""
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def describe_device(device: str | torch.device) -> str:
    """``cuda:0 (NVIDIA H100 80GB HBM3)`` or ``cpu (2 threads)``: where a run goes, in words."""
    device = str(device)
    if device.startswith("cuda"):
        return f"{device} ({torch.cuda.get_device_name(torch.device(device))})"
    n = torch.get_num_threads()
    return f"{device} ({n} thread{'s' if n > 1 else ''})"
