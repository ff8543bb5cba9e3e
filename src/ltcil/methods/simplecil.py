"""SimpleCIL (Zhou et al., "Revisiting Class-Incremental Learning with Pre-Trained Models: Generalizability and
Adaptivity are All You Need", IJCV 2024, Sec. 4.1): the pre-trained backbone stays frozen and each class's
classifier row is the mean embedding of its training images (a prototype), compared by cosine. Nothing is
trained and nothing is stored, so there is no forgetting beyond what the frozen features cannot separate.

As LAMDA-PILOT computes it (`models/simplecil.py`): prototypes from the un-augmented training images, the mean
of the raw (not normalised) embeddings, cosine similarity with unit scale at test time. Each image's embedding
is computed once, in one batched pass per task.
"""

from __future__ import annotations

import torch

from ..heads.cosine import CosineLinear
from ..registry import register_method
from .frozen_base import FrozenBackboneMethod


@torch.no_grad()
def set_prototypes(head: CosineLinear, feats: torch.Tensor, labels: torch.Tensor, classes) -> None:
    """Row c of `head` = mean of the embeddings of class c (Sec. 4.1, Eq. 5)."""
    for c in classes:
        rows = feats[labels == int(c)]
        if len(rows) == 0:
            raise ValueError(f"class {int(c)} has no training images to make its prototype from")
        head.weight[int(c)] = rows.mean(0).to(head.weight.dtype)


@register_method("simplecil")
class SimpleCIL(FrozenBackboneMethod):
    @classmethod
    def make_head(cls, in_features, options):
        return CosineLinear(in_features, sigma=False)

    def end_task(self, task, ctx) -> None:
        set_prototypes(self.model.head, *self.task_features(task, ctx), task.classes)
