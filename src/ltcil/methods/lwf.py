"""Learning without Forgetting (Li & Hoiem, ECCV 2016 / TPAMI 2017), class-incremental, no exemplars."""

from dataclasses import dataclass

from ..errors import ConfigError
from ..losses.distillation import kd_loss, sigmoid_targets_bce
from ..registry import register_method
from .distillation_base import TeacherMethod
from .finetune import check_ce_classes


@dataclass
class LwFOptions:
    # "bce": iCaRL-style sigmoid targets from the old model (rojinakashefi/LwF-iCaRL-Incremental-Learning's
    # "second way"); "kd": CE + lambda * KD(T).
    # bce is the default: with softmax CE + KD on tasks of 2 classes the new-class bias swamps the old logits
    # and LwF barely beats finetune, while the per-class sigmoid targets keep the old outputs calibrated.
    loss: str = "bce"
    T: float = 2.0  # Sec. 3, Eq. 2: temperature of the knowledge-distillation term (kd loss)
    lamb: float = 1.0  # Sec. 3: lambda_o balancing old-task distillation against the new-task loss (kd loss)
    # kd loss: CE over every seen class ("seen") or over the new task's classes only ("new": the new task's own
    # head, as Sec. 3's L_new and PyCIL's lwf.py)
    ce_classes: str = "seen"


@register_method("lwf")
class LwF(TeacherMethod):
    Options = LwFOptions
    uses_memory = False  # LwF stores no exemplars

    @classmethod
    def check(cls, options, cfg):
        if options.loss not in ("kd", "bce"):
            raise ConfigError(f"method.loss: {options.loss!r} is not one of kd, bce.")
        check_ce_classes(options)
        if options.loss == "bce" and cfg.train.loss != "ce":
            raise ConfigError(f"train.loss: {cfg.train.loss!r} has no effect with LwF's method.loss=bce (sigmoid "
                              "targets); use method.loss=kd for a CE-based LwF, or train.loss=ce.")

    def training_step(self, x, y):
        logits = self.model(x)
        old = self.teacher_logits(x) if self.teacher is not None else None
        if self.options.loss == "bce":
            return {"loss": sigmoid_targets_bce(logits, y, old, self.num_outputs)}
        first = self.old_classes if self.options.ce_classes == "new" else 0
        ce = self.classification_loss(logits, y, first)
        if old is None:
            return {"loss": ce, "ce": ce}
        kd = kd_loss(logits[:, : self.old_classes], old, self.options.T)
        return {"loss": ce + self.options.lamb * kd, "ce": ce, "kd": kd}
