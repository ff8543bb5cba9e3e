"""Growable classifier heads: logits over every class seen so far, extended by add_classes(n) per task."""

from .bias import TaskBiasCorrection
from .cosine import CosineLinear
from .linear import IncrementalLinear

__all__ = ["CosineLinear", "IncrementalLinear", "TaskBiasCorrection"]
