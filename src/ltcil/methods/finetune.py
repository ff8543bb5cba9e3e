"""Finetune: plain cross-entropy on the current task's data only; the lower bound of CIL."""

from ..registry import register_method
from .base import Method


@register_method("finetune")
class Finetune(Method):
    """Trains on each task's data with CE over all seen classes; nothing protects old classes."""
