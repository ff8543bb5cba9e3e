"""Balanced Softmax (Ren et al., NeurIPS 2020): CE on logits shifted by the log class prior during training;
plain logits at test time, which then estimate the balanced (test) posterior.

In a class-incremental run the prior is the class distribution of what the task trains on (its data plus the
memory), so new classes with many images no longer crowd out old classes with a few exemplars. The same loss
is available to every CE-based method as `train.loss=balanced_softmax`.
"""

from __future__ import annotations

from ..losses.longtail import balanced_softmax_loss
from ..registry import register_method
from .exemplar_base import ReplayMethod


@register_method("balanced_softmax")
class BalancedSoftmax(ReplayMethod):
    def training_step(self, x, y):
        # train_counts: images per class of this task's training indices, set by the engine before training
        return {"loss": balanced_softmax_loss(self.model(x), y, self.train_counts)}
