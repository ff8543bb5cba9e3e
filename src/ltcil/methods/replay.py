"""Replay (experience replay with an exemplar memory): CE over all seen classes on the task's data plus the
stored exemplars, nothing else. The simplest rehearsal baseline; finetune is the same without memory."""

from ..registry import register_method
from .exemplar_base import ReplayMethod


@register_method("replay")
class Replay(ReplayMethod):
    """Needs memory.size or memory.per_class > 0 (with neither it would be finetune)."""

    requires_memory = True
