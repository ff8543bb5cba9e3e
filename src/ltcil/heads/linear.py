"""A linear classifier that grows by whole classes as tasks arrive.

Storage is one weight Parameter (and one bias) re-allocated on growth with the old rows copied in: growing
creates only the new rows' values, old logits stay exactly as they were, and the optimiser sees a single
tensor (the engine rebuilds the optimiser each task, so the swapped Parameter object is never stale).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


INITS = ("uniform", "kaiming_uniform", "kaiming_normal", "trunc_normal")


class IncrementalLinear(nn.Module):
    """logits = x W^T + b over every class added so far; starts with `num_classes` (default 0) rows.
    `init` of new rows: "uniform", nn.Linear's default; "kaiming_uniform", U(+-sqrt(3 / fan_in)) with a zero
    bias (PyCIL's SimpleLinear); "kaiming_normal", N(0, 1 / fan_in) with a zero bias (Avalanche's
    initialize_icarl_net: He-normal with the sigmoid's gain 1); "trunc_normal", N(0, 0.02^2) cut at +-2 with a zero bias
    (timm's ViT head, which L2P / DualPrompt-style prompt methods train)."""

    def __init__(self, in_features: int, num_classes: int = 0, bias: bool = True, init: str = "uniform"):
        super().__init__()
        if init not in INITS:
            raise ValueError(f"unknown head init {init!r}; expected one of {', '.join(INITS)}")
        self.init = init
        self.in_features = in_features
        self.weight = nn.Parameter(torch.empty(0, in_features))
        self.bias = nn.Parameter(torch.empty(0)) if bias else None
        if num_classes:
            self.add_classes(num_classes)

    @property
    def num_classes(self) -> int:
        return self.weight.shape[0]

    def add_classes(self, n: int) -> None:
        """Append n freshly initialised rows; existing rows are copied bit for bit."""
        if n < 0:
            raise ValueError(f"cannot add a negative number of classes ({n})")
        if n:
            self._resize(self.num_classes + n)

    def _resize(self, n: int) -> None:
        # The new tensors inherit device, dtype and requires_grad from the current ones. `n` and `keep` count
        # rows: a head with several rows per class (LSCHead's proxies) keeps all of them.
        keep = min(n, self.weight.shape[0])
        with torch.no_grad():
            weight = self.weight.new_empty(n, self.in_features)
            weight[:keep] = self.weight[:keep]
            bias = None
            if self.bias is not None:
                bias = self.bias.new_empty(n)
                bias[:keep] = self.bias[:keep]
            self._init_rows(weight[keep:], None if bias is None else bias[keep:])
        self.weight = nn.Parameter(weight, requires_grad=self.weight.requires_grad)
        if bias is not None:
            self.bias = nn.Parameter(bias, requires_grad=self.bias.requires_grad)

    def _init_rows(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        """nn.Linear's default: kaiming_uniform(a=sqrt(5)) reduces to U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for
        weights and bias; with gain 1 (He et al. 2015, Sec. 2.2): kaiming_uniform U(-sqrt(3/fan_in), sqrt(3/fan_in)),
        kaiming_normal N(0, 1/fan_in), both with bias 0."""
        fan_in = max(self.in_features, 1)
        if self.init == "trunc_normal":
            torch.nn.init.trunc_normal_(weight, std=0.02)
            if bias is not None:
                bias.zero_()
            return
        if self.init in ("kaiming_uniform", "kaiming_normal"):
            if self.init == "kaiming_uniform":
                weight.uniform_(-math.sqrt(3.0 / fan_in), math.sqrt(3.0 / fan_in))
            else:
                weight.normal_(0.0, 1.0 / math.sqrt(fan_in))
            if bias is not None:
                bias.zero_()
            return
        bound = 1.0 / math.sqrt(fan_in) if self.in_features else 0.0
        weight.uniform_(-bound, bound)
        if bias is not None:
            bias.uniform_(-bound, bound)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        # Resize to the stored class count first, so a fresh (or smaller) head loads a grown one, also when
        # it is nested in a bigger model. A wrong in_features is left for the default shape check to report.
        stored = state_dict.get(prefix + "weight")
        if isinstance(stored, torch.Tensor) and stored.dim() == 2 and stored.shape[1] == self.in_features:
            if stored.shape[0] != self.weight.shape[0]:
                self._resize(stored.shape[0])
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, num_classes={self.num_classes}, bias={self.bias is not None}"


@torch.no_grad()
def align_new_rows(head: IncrementalLinear, old_classes: int) -> float:
    """Weight aligning (Zhao et al., CVPR 2020, Eq. 6-7): the rows from `old_classes` on are rescaled by
    gamma = mean ||w_old|| / mean ||w_new||, so old and new classes' weight norms match; biases stay. Returns
    gamma."""
    norms = head.weight.norm(dim=1)
    gamma = float(norms[:old_classes].mean() / norms[old_classes:].mean().clamp_min(1e-12))
    head.weight[old_classes:] *= gamma
    return gamma
