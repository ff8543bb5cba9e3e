"""Distillation losses between a student's and a frozen teacher's logits."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, T: float = 2.0) -> torch.Tensor:
    """Hinton et al. 2015 distillation, batch mean. LwF (Li & Hoiem 2017, Eq. 2) and BiC (Wu et al. 2019, Eq. 1)
    write it as the soft-target cross-entropy -sum softmax(teacher/T) log softmax(student/T), without T^2.
    We compute KL(teacher || student) instead: the same gradient (they differ by the teacher's entropy, a
    constant), and exactly zero when the student reproduces the teacher."""
    log_p_teacher = F.log_softmax(teacher.float() / T, dim=1)
    log_p_student = F.log_softmax(student.float() / T, dim=1)
    return (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(1).mean()


def sigmoid_targets_bce(
    logits: torch.Tensor, y: torch.Tensor, old_logits: torch.Tensor | None, num_outputs: int | None = None
) -> torch.Tensor:
    """iCaRL's loss (Rebuffi et al. 2017, Alg. 3): BCE on every seen class, one-hot targets for the labels,
    with the old classes' targets replaced by the teacher's sigmoid outputs.

    The sum is divided by batch * num_outputs. iCaRL's network has one output per class of the whole
    scenario from the start and averages over all of them, so with num_outputs = total classes the
    gradient scale, and hence the meaning of its lr 2.0, is the same at every task. Averaging over the
    seen classes only would make the first task's steps C_total / C_seen (10x on B0-Inc10) larger,
    which made lr 2.0 diverge to a constant output in our runs."""
    targets = F.one_hot(y, logits.shape[1]).to(logits.dtype)
    if old_logits is not None and old_logits.shape[1] > 0:
        n_old = old_logits.shape[1]
        targets[:, :n_old] = torch.sigmoid(old_logits.to(logits.dtype))
    total = F.binary_cross_entropy_with_logits(logits, targets, reduction="sum")
    return total / (logits.shape[0] * max(num_outputs or logits.shape[1], logits.shape[1]))
