"""WA, Weight Aligning (Zhao et al., "Maintaining Discrimination and Fairness in Class Incremental Learning",
CVPR 2020): CE + KD with exemplars, then the new classes' weight vectors rescaled so their mean norm equals the old
classes' (Sec. 3.3, Eq. 6-7), which removes the classifier's bias towards new classes without a validation split."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import ConfigError
from ..heads.linear import IncrementalLinear, align_new_rows
from ..losses.distillation import kd_loss
from ..registry import register_method
from .distillation_base import TeacherMethod


@dataclass
class WAOptions:
    T: float = 2.0  # Sec. 3.2, Eq. 3: distillation temperature
    clip_weights: bool = True  # Sec. 3.3: the FC weights are kept non-negative during training (weight clipping),
    # so their norms compare like with like; PyCIL's wa.py trains without it
    align: bool = True  # off: CE + KD only (the ablation without weight aligning)


@register_method("wa")
class WA(TeacherMethod):
    Options = WAOptions
    requires_memory = True  # Sec. 4.1: exemplars of old classes (2,000 on CIFAR-100)

    def __init__(self, model, options, cfg, device, **kwargs):
        super().__init__(model, options, cfg, device, **kwargs)
        self.gammas: list = []  # the alignment factor of each task (1.0 for the first)

    @classmethod
    def check(cls, options, cfg):
        if options.T <= 0:
            raise ConfigError(f"method.T: {options.T!r} must be > 0.")

    def begin_task(self, task, ctx):
        super().begin_task(task, ctx)
        if not isinstance(self.model.head, IncrementalLinear):
            raise ConfigError("method wa aligns the rows of a linear head; this network has another head.")

    def _clip(self) -> None:
        if self.options.clip_weights:
            with torch.no_grad():
                self.model.head.weight.clamp_(min=0)

    def training_step(self, x, y):
        self._clip()  # the weights as the previous step left them, clipped before they are used (Sec. 3.3)
        logits = self.model(x)
        ce = self.classification_loss(logits, y)
        if self.teacher is None:
            return {"loss": ce, "ce": ce}
        lam = self.old_classes / logits.shape[1]  # Sec. 3.2, Eq. 4: lambda = old / all classes
        kd = kd_loss(logits[:, : self.old_classes], self.teacher_logits(x), self.options.T)
        return {"loss": (1 - lam) * ce + lam * kd, "ce": ce, "kd": kd}

    def align_weights(self) -> float:
        """Eq. 6-7 of WA: the new rows rescaled to the old rows' mean norm."""
        return align_new_rows(self.model.head, self.old_classes)

    def end_task(self, task, ctx):
        self._clip()
        gamma = self.align_weights() if self.options.align and task.index > 0 else 1.0
        self.gammas.append(gamma)
        ctx.events.write({"event": "weight_aligning", "task": task.index, "gamma": gamma})
        self.update_memory(task, ctx)

    def results_extra(self):
        return {"weight_aligning": self.gammas}

    def state_dict(self):
        return {**super().state_dict(), "gammas": list(self.gammas)}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.gammas = list(state.get("gammas", []))
