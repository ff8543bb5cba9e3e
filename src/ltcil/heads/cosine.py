"""Cosine classifier (Hou et al. 2019, "Learning a Unified Classifier Incrementally via Rebalancing", LUCIR).

logits_c = sigma * cos(x, w_c): normalising both features and class weights removes the norm bias that
makes a plain linear head favour the classes of the latest task. sigma is a learnable scale, init 1.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .linear import IncrementalLinear


class CosineLinear(IncrementalLinear):
    """Growable like IncrementalLinear (no bias); `sigma=False` fixes the scale at 1.

    `frozen` rows (the old classes of LUCIR's split classifier, fc1) pass no gradient: only the new rows and
    sigma learn. Set by the method at each task; with weight decay 0 (as LUCIR and CCSI train) they stay put.
    """

    def __init__(self, in_features: int, sigma: bool = True, num_classes: int = 0, row_norm: Optional[float] = None):
        self.row_norm = row_norm  # read by _init_rows, which the base constructor calls when num_classes > 0
        super().__init__(in_features, num_classes=num_classes, bias=False)
        self.sigma = nn.Parameter(torch.ones(())) if sigma else None
        self.frozen = 0

    def _init_rows(self, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> None:
        """nn.Linear's init by default. With `row_norm`, rows drawn U(-1, 1) and rescaled to that norm (LDAM's
        released NormedLinear uses 1). Logits only see directions, but a row's norm sets its effective learning
        rate (the gradient scales with 1 / norm): the default ~0.58-norm rows take large first steps under
        LDAM's scale 30, their norms jump several-fold and the head then barely turns for the rest of a
        short schedule (measured on CIFAR-100-LT: 1.6% test accuracy after 3 epochs, 6.2% with unit rows)."""
        if self.row_norm is None:
            return super()._init_rows(weight, bias)
        weight.uniform_(-1.0, 1.0)
        weight.copy_(F.normalize(weight, dim=1) * self.row_norm)

    def cosines(self, x: torch.Tensor) -> torch.Tensor:
        """cos(x, w_c) for every class, before the sigma scale."""
        weight = self.weight
        if self.frozen:
            weight = torch.cat([weight[: self.frozen].detach(), weight[self.frozen :]])
        return F.linear(F.normalize(x, dim=1), F.normalize(weight, dim=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.cosines(x)
        return logits if self.sigma is None else self.sigma * logits

    @torch.no_grad()
    def imprint(self, class_ids: Sequence[int], features, labels: Optional[torch.Tensor] = None) -> None:
        """Weight imprinting: row c = normalize(mean of normalized features of class c) * mean old-row norm.

        `features` is either a sequence of (n_c, in_features) tensors aligned with `class_ids`, or, with
        `labels`, one (N, in_features) tensor whose rows are grouped by label. "Old" rows are those not being
        imprinted; with none, the scale is 1. The scale keeps new rows' norms comparable to old ones, which
        matters for the gradient magnitude even though logits only see directions.
        """
        class_ids = [int(c) for c in class_ids]
        if labels is not None:
            labels = torch.as_tensor(labels, device=features.device)
            features = [features[labels == c] for c in class_ids]
        if len(features) != len(class_ids):
            raise ValueError(f"imprint: {len(class_ids)} class ids but {len(features)} feature groups")
        old = torch.ones(self.num_classes, dtype=torch.bool, device=self.weight.device)
        old[class_ids] = False
        scale = self.weight[old].norm(dim=1).mean() if old.any() else self.weight.new_tensor(1.0)
        for c, feats in zip(class_ids, features):
            if len(feats) == 0:
                raise ValueError(f"imprint: no features for class {c}")
            feats = feats.to(device=self.weight.device, dtype=self.weight.dtype)
            direction = F.normalize(F.normalize(feats, dim=1).mean(dim=0), dim=0)
            self.weight[c] = direction * scale

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, num_classes={self.num_classes}, sigma={self.sigma is not None}"
