"""Balanced Softmax (Ren et al., NeurIPS 2020): CE on logits shifted by the log class prior during training;
plain logits at test time, which then estimate the balanced (test) posterior.

In a class-incremental run the prior is the class distribution of what the task trains on (its data plus the
memory), so new classes with many images no longer crowd out old classes with a few exemplars.
"""

from __future__ import annotations

from ..losses.longtail import balanced_softmax_loss
from ..registry import register_method
from .base import train_class_counts
from .exemplar_base import ReplayMethod


@register_method("balanced_softmax")
class BalancedSoftmax(ReplayMethod):
    counts = None

    def begin_task(self, task, ctx):
        super().begin_task(task, ctx)
        self.counts = train_class_counts(ctx, self.train_indices(task, ctx), self.model.num_classes)

    def training_step(self, x, y):
        return {"loss": balanced_softmax_loss(self.model(x), y, self.counts)}
