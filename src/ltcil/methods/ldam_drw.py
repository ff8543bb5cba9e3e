"""LDAM-DRW (Cao et al., NeurIPS 2019): label-distribution-aware margins on a cosine classifier, with the
class-balanced re-weighting deferred to the end of training (DRW, Sec. 3.3, Alg. 1).

In a class-incremental run the margins and weights follow the class counts of what the task trains on (its
own data plus the memory), recomputed at every task.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError
from ..heads.cosine import CosineLinear
from ..losses.longtail import class_balanced_weights, ldam_loss, ldam_margins
from ..registry import register_method
from .base import IncrementalNet
from .exemplar_base import ReplayMethod


@dataclass
class LDAMOptions:
    max_margin: float = 0.5  # Sec. 3.1 / released code: the largest class margin
    scale: float = 30.0  # released code: s = 30 on the normalised (cosine) logits
    reweight: str = "drw"  # drw: uniform then class-balanced from drw_epoch | none (plain LDAM) | always (CB-LDAM)
    drw_epoch: int = 160  # released code: betas [0, 0.9999] switched at epoch 160 of 200
    beta: float = 0.9999  # effective-number weights (Cui et al. 2019) used once re-weighting is on


@register_method("ldam_drw")
class LDAMDRW(ReplayMethod):
    Options = LDAMOptions

    @classmethod
    def check(cls, options, cfg):
        if options.reweight not in ("drw", "none", "always"):
            raise ConfigError(f"method.reweight: {options.reweight!r} is not one of drw, none, always.")
        if not 0 < options.max_margin:
            raise ConfigError(f"method.max_margin must be > 0, got {options.max_margin}.")

    @classmethod
    def build_network(cls, networks, options, cfg):
        # Sec. 4 / released code: NormedLinear, class vectors initialised at unit norm
        backbone = networks.backbone()
        return IncrementalNet(backbone, CosineLinear(backbone.num_features, sigma=False, row_norm=1.0))

    def __init__(self, model, options, cfg, device, **kwargs):
        super().__init__(model, options, cfg, device, **kwargs)
        self.margins = self.class_weights = self.weights = None

    def begin_epoch(self, epoch, epochs, ctx=None):
        if epoch == 0:  # train_counts: images per class of this task's training indices, set by the engine
            self.margins = ldam_margins(self.train_counts, self.options.max_margin)
            self.class_weights = class_balanced_weights(self.train_counts, self.options.beta)
        on = self.options.reweight == "always" or (self.options.reweight == "drw" and epoch >= self.options.drw_epoch)
        self.weights = self.class_weights if on else None

    def epoch_state(self):
        return {"margins": self.margins, "class_weights": self.class_weights}

    def load_epoch_state(self, state):
        self.margins, self.class_weights = (state[k].to(self.device) for k in ("margins", "class_weights"))

    def training_step(self, x, y):
        loss = ldam_loss(self.model(x), y, self.margins, self.options.scale, self.weights)
        return {"loss": loss}
