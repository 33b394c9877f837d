"""Training schedules, precomputed as arrays with one value per iteration (or per epoch).

DINO changes four quantities during training; precomputing them makes a resumed run use exactly the
values an uninterrupted run would, and makes them easy to plot:

============================  ==========================================  ====================
quantity                      shape of the schedule                       granularity
============================  ==========================================  ====================
learning rate                 linear warm-up, then cosine to ``min_lr``   per iteration
weight decay                  cosine from 0.04 to 0.4                     per iteration
teacher EMA momentum          cosine from 0.996 to 1                      per iteration
teacher temperature           linear warm-up, then constant               per epoch
============================  ==========================================  ====================

The learning rate is scaled with the global batch size (``lr = base_lr × batch / 256``, the linear
scaling rule of Goyal et al. that DINO uses).
"""

from __future__ import annotations

import numpy as np


def scaled_lr(base_lr: float, global_batch: int) -> float:
    """The linear scaling rule: ``base_lr × global_batch / 256``."""
    return base_lr * global_batch / 256.0


def cosine_schedule(
    base_value: float,
    final_value: float,
    total_iters: int,
    warmup_iters: int = 0,
    start_warmup_value: float = 0.0,
) -> np.ndarray:
    """``[total_iters]`` values: a linear warm-up from ``start_warmup_value`` to ``base_value`` over
    ``warmup_iters`` iterations (both ends included, as in DINO's ``cosine_scheduler``), then a half
    cosine from ``base_value`` to ``final_value``.

    The first value after warm-up is ``base_value``; the last one approaches ``final_value`` (the cosine
    is sampled at ``i / n`` for ``i = 0 … n-1``, as in DINO's ``cosine_scheduler``, so the last value is
    ``final + (base - final)(1 + cos(π (n-1)/n)) / 2``, within ``(base - final)·(π/n)²/4`` of ``final``).
    """
    if total_iters < 0 or warmup_iters < 0:
        raise ValueError("total_iters and warmup_iters must be >= 0")
    warmup_iters = min(warmup_iters, total_iters)
    warmup = np.linspace(start_warmup_value, base_value, warmup_iters) if warmup_iters else np.zeros(0)
    n = total_iters - warmup_iters
    i = np.arange(n)
    cosine = final_value + 0.5 * (base_value - final_value) * (1 + np.cos(np.pi * i / max(n, 1)))
    out = np.concatenate([warmup, cosine]).astype(np.float64)
    assert len(out) == total_iters
    return out


def teacher_temp_schedule(warmup_teacher_temp: float, teacher_temp: float, warmup_epochs: int, nepochs: int) -> np.ndarray:
    """``[nepochs]`` teacher temperatures: linear from ``warmup_teacher_temp`` to ``teacher_temp`` over
    ``warmup_epochs`` epochs (both ends included, as in DINO), then constant ``teacher_temp``."""
    warmup_epochs = min(warmup_epochs, nepochs)
    return np.concatenate(
        [np.linspace(warmup_teacher_temp, teacher_temp, warmup_epochs), np.full(nepochs - warmup_epochs, teacher_temp)]
    ).astype(np.float64)


def dino_schedules(
    *,
    lr: float,
    min_lr: float,
    weight_decay: float,
    weight_decay_end: float,
    momentum_teacher: float,
    epochs: int,
    steps_per_epoch: int,
    warmup_epochs: int,
) -> dict[str, np.ndarray]:
    """The three per-iteration schedules of a DINO run (``lr`` already batch-scaled): ``lr``,
    ``wd``, ``momentum``, each ``[epochs × steps_per_epoch]``."""
    total = epochs * steps_per_epoch
    return {
        "lr": cosine_schedule(lr, min_lr, total, warmup_epochs * steps_per_epoch),
        "wd": cosine_schedule(weight_decay, weight_decay_end, total),
        "momentum": cosine_schedule(momentum_teacher, 1.0, total),
    }
