"""iCaRL (Rebuffi et al., CVPR 2017): sigmoid/BCE distillation, herding exemplars, nearest-mean-of-exemplars."""

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..losses.distillation import sigmoid_targets_bce
from ..registry import register_method
from .distillation_base import TeacherMethod


@dataclass
class ICaRLOptions:
    nme_flip: bool = True  # Alg. 2 / official code: class means also over horizontally flipped exemplars


@register_method("icarl")
class ICaRL(TeacherMethod):
    Options = ICaRLOptions
    headline = "nme"  # Alg. 1: iCaRL classifies by nearest mean of exemplars; the linear head is reported too

    def __init__(self, model, options, cfg, device):
        super().__init__(model, options, cfg, device)
        self.class_means = torch.zeros(0, model.backbone.num_features, device=device)

    def training_step(self, x, y):
        logits = self.model(x)
        old = self.teacher_logits(x) if self.teacher is not None else None
        return {"loss": sigmoid_targets_bce(logits, y, old, self.num_outputs)}

    def end_task(self, task, ctx):
        self.update_memory(task, ctx)  # Alg. 3: reduce old sets, construct new sets
        self.class_means = self.exemplar_means(ctx)

    @torch.no_grad()
    def exemplar_means(self, ctx) -> torch.Tensor:
        """Alg. 2: mu_y = normalised mean of the L2-normalised features of class y's exemplars."""
        means = torch.zeros(self.model.num_classes, self.model.backbone.num_features, device=self.device)
        flip = self.options.nme_flip and ctx.cfg.train.flip
        for c, mean in ctx.class_means(self.model, self.memory.exemplars, normalize=True, flip=flip).items():
            means[c] = F.normalize(mean, dim=0)
        return means

    def predict(self, x):
        feats = self.model.forward_features(x)
        linear = self.model.head(feats)
        phi = F.normalize(feats.float(), dim=1)
        # per-sample normalisation (seed 3 normalised by the whole batch's norm: batch-dependent, not reproduced)
        nme = -torch.cdist(phi, self.class_means[: linear.shape[1]])
        return {"nme": nme, "linear": linear}

    def state_dict(self):
        state = super().state_dict()
        state["class_means"] = self.class_means.cpu()
        return state

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.class_means = state["class_means"].to(self.device)
