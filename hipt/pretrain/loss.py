"""The DINO loss: cross-entropy between a centred, sharpened teacher and the student, across views."""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from hipt.pretrain.schedules import teacher_temp_schedule


class DINOLoss(nn.Module):
    r"""DINO's self-distillation loss (Caron et al. 2021), with the DINO authors' semantics.

    With ``s`` the student logits of all ``ncrops`` views and ``t`` the teacher logits of the 2 global
    views:

    .. math::
        P_t^{(i)} = \mathrm{softmax}\big((t^{(i)} - c)/\tau_t(e)\big),\quad
        \log P_s^{(j)} = \mathrm{log\_softmax}(s^{(j)}/\tau_s),\quad
        L = \frac{1}{|\{(i,j): i\ne j\}|}\sum_{i\in\{0,1\}}\sum_{j\ne i}
            \frac{1}{B}\sum_b -P_t^{(i)}[b]\cdot\log P_s^{(j)}[b]

    The teacher is detached; same-view pairs ``(i, i)`` are skipped.  After the loss, the centre ``c``
    is updated by an exponential moving average of the teacher's batch mean (all-reduced over
    processes under DDP): ``c ← m·c + (1−m)·mean_b t``.  ``τ_t(e)`` warms up linearly over the first
    ``warmup_teacher_temp_epochs`` epochs (index ``epoch``).

    Args:
        out_dim: K, the head's output dimension.
        ncrops: total number of views per image (2 global + local ones).

    Shapes: ``student_output [ncrops·B, K]``, ``teacher_output [2·B, K]``, both ordered view by view.
    """

    def __init__(
        self,
        out_dim: int,
        ncrops: int,
        warmup_teacher_temp: float,
        teacher_temp: float,
        warmup_teacher_temp_epochs: int,
        nepochs: int,
        student_temp: float = 0.1,
        center_momentum: float = 0.9,
    ):
        super().__init__()
        self.out_dim = out_dim
        self.ncrops = ncrops
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(1, out_dim))
        self.teacher_temp_schedule = teacher_temp_schedule(
            warmup_teacher_temp, teacher_temp, warmup_teacher_temp_epochs, nepochs
        )

    def teacher_temp(self, epoch: int) -> float:
        """τ_t for an epoch (the last value after the schedule's end)."""
        sched = self.teacher_temp_schedule
        return float(sched[min(epoch, len(sched) - 1)]) if len(sched) else float("nan")

    def forward(self, student_output: torch.Tensor, teacher_output: torch.Tensor, epoch: int) -> torch.Tensor:
        student_output = student_output.float()
        teacher_output = teacher_output.detach().float()
        student_out = (student_output / self.student_temp).chunk(self.ncrops)
        temp = self.teacher_temp(epoch)
        teacher_out = F.softmax((teacher_output - self.center) / temp, dim=-1).chunk(2)

        total_loss = student_output.new_zeros(())
        n_terms = 0
        for iq, q in enumerate(teacher_out):
            for v in range(len(student_out)):
                if v == iq:
                    continue  # same view for teacher and student
                loss = torch.sum(-q * F.log_softmax(student_out[v], dim=-1), dim=-1)
                total_loss = total_loss + loss.mean()
                n_terms += 1
        total_loss = total_loss / n_terms
        self.update_center(teacher_output)
        return total_loss

    @torch.no_grad()
    def update_center(self, teacher_output: torch.Tensor) -> None:
        """EMA of the teacher's batch mean (summed over processes, divided by the global count)."""
        batch_center = torch.sum(teacher_output, dim=0, keepdim=True)
        count = len(teacher_output)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(batch_center)
            count *= dist.get_world_size()
        batch_center = batch_center / count
        self.center.mul_(self.center_momentum).add_(batch_center * (1 - self.center_momentum))


def uniform_loss(out_dim: int) -> float:
    """``ln K``: the loss when both distributions are uniform — a DINO run stuck here has collapsed to
    a uniform output (too high a teacher temperature, or a dead head)."""
    return float(np.log(out_dim))
