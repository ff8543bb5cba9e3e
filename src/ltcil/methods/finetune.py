"""Finetune: plain cross-entropy on the current task's data only; the lower bound of CIL."""

from dataclasses import dataclass

from ..errors import ConfigError
from ..registry import register_method
from .base import Method


@dataclass
class FinetuneOptions:
    # seen: CE over every class seen so far; new: over the current task's classes only (PyCIL's finetune),
    # so the old classes' rows get no gradient and only the shared features drift.
    ce_classes: str = "seen"


@register_method("finetune")
class Finetune(Method):
    """Trains on each task's data with CE; nothing protects old classes."""

    Options = FinetuneOptions

    def __init__(self, model, options, cfg, device, **kwargs):
        super().__init__(model, options, cfg, device, **kwargs)
        self.old_classes = 0

    @classmethod
    def check(cls, options, cfg):
        check_ce_classes(options)

    def begin_task(self, task, ctx):
        self.old_classes = self.model.num_classes
        super().begin_task(task, ctx)

    def training_step(self, x, y):
        first = self.old_classes if self.options.ce_classes == "new" else 0
        return {"loss": self.classification_loss(self.model(x), y, first)}


def check_ce_classes(options) -> None:
    if options.ce_classes not in ("seen", "new"):
        raise ConfigError(f"method.ce_classes: {options.ce_classes!r} is not one of seen, new.")
