"""iCaRL (Rebuffi et al., CVPR 2017): sigmoid/BCE distillation, herding exemplars, nearest-mean-of-exemplars.

`method.loss: ce_kd` trains instead with softmax CE over the seen classes + KD(T) on the old classes' logits,
as PyCIL's iCaRL (models/icarl.py); exemplars and the NME classifier are the same."""

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..heads.linear import IncrementalLinear
from ..losses.distillation import kd_loss, sigmoid_targets_bce
from ..registry import register_method
from .distillation_base import TeacherMethod


@dataclass
class ICaRLOptions:
    nme_flip: bool = True  # Alg. 2 / official code: class means also over horizontally flipped exemplars
    # bce: Alg. 3's sigmoid BCE with the old model's outputs as targets for the old classes (the paper);
    # ce_kd: CE + KD at temperature T on the old logits, no T^2 (PyCIL's recipe; train.loss applies to its CE)
    loss: str = "bce"
    T: float = 2.0  # ce_kd: distillation temperature
    # bce: Alg. 3 sums over the classes seen so far (false). The official code (main_cifar_100_theano.py) and
    # Avalanche's ICaRL give the network one output per class of the scenario from the start, so their BCE also
    # trains the not-yet-seen classes' outputs towards 0, and a class's row has been trained that way before
    # it arrives (true).
    bce_unseen: bool = False


@register_method("icarl")
class ICaRL(TeacherMethod):
    Options = ICaRLOptions
    requires_memory = True  # the NME classifier is the exemplars' class means
    headline = "nme"  # Alg. 1: iCaRL classifies by nearest mean of exemplars; the linear head is reported too

    def __init__(self, model, options, cfg, device, **kwargs):
        super().__init__(model, options, cfg, device, **kwargs)
        self.class_means = torch.zeros(0, model.backbone.num_features, device=device)
        # bce_unseen: a row per class of the scenario, in arrival order; rows of classes not seen yet take part in
        # the BCE, and a task's rows move into the head when it begins
        self.unseen: IncrementalLinear | None = None

    @classmethod
    def check(cls, options, cfg):
        if options.loss not in ("bce", "ce_kd"):
            raise ConfigError(f"method.loss: {options.loss!r} is not one of bce (the paper's), ce_kd (PyCIL's).")
        if options.bce_unseen and options.loss != "bce":
            raise ConfigError("method.bce_unseen: true needs method.loss=bce (it adds the unseen classes' outputs to "
                              f"the sigmoid BCE), not {options.loss!r}.")
        if options.loss == "bce" and cfg.train.loss != "ce":
            raise ConfigError(f"train.loss: {cfg.train.loss!r} has no effect with iCaRL's method.loss=bce (sigmoid "
                              "targets); use method.loss=ce_kd for a CE-based iCaRL, or train.loss=ce.")

    def begin_task(self, task, ctx):
        super().begin_task(task, ctx)
        if not getattr(self.options, "bce_unseen", False):  # LUCIR and PODNet inherit this without the option
            return
        if self.unseen is None:
            self.unseen = IncrementalLinear(self.model.backbone.num_features, ctx.scenario.num_classes,
                                            init=self.cfg.head.init).to(self.device)
        head, seen = self.model.head, self.model.num_classes
        with torch.no_grad():  # the arriving classes' rows, as training them as unseen left them
            head.weight[self.old_classes : seen] = self.unseen.weight[self.old_classes : seen]
            if head.bias is not None:
                head.bias[self.old_classes : seen] = self.unseen.bias[self.old_classes : seen]

    def trainable_parameters(self):
        extra = list(self.unseen.parameters()) if self.unseen is not None else []
        return super().trainable_parameters() + extra

    def training_step(self, x, y):
        old = self.teacher_logits(x) if self.teacher is not None else None
        if self.unseen is not None:
            feats = self.model.forward_features(x)
            seen = self.model.num_classes
            bias = None if self.unseen.bias is None else self.unseen.bias[seen:]
            logits = torch.cat([self.model.head(feats), F.linear(feats, self.unseen.weight[seen:], bias)], dim=1)
        else:
            logits = self.model(x)
        if self.options.loss == "bce":
            return {"loss": sigmoid_targets_bce(logits, y, old, self.num_outputs)}
        ce = self.classification_loss(logits, y)
        if old is None:
            return {"loss": ce, "ce": ce}
        kd = kd_loss(logits[:, : self.old_classes], old, self.options.T)
        return {"loss": ce + kd, "ce": ce, "kd": kd}

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
        # per-sample normalisation (rojinakashefi/LwF-iCaRL-Incremental-Learning normalised by the whole batch's
        # norm: batch-dependent, not reproduced)
        nme = -torch.cdist(phi, self.class_means[: linear.shape[1]])
        return {"nme": nme, "linear": linear}

    def state_dict(self):
        state = super().state_dict()
        state["class_means"] = self.class_means.cpu()
        if self.unseen is not None:
            state["unseen"] = {k: v.cpu() for k, v in self.unseen.state_dict().items()}
        return state

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.class_means = state["class_means"].to(self.device)
        if "unseen" in state:
            weight = state["unseen"]["weight"]
            self.unseen = IncrementalLinear(weight.shape[1], 0, bias="bias" in state["unseen"],
                                            init=self.cfg.head.init)
            self.unseen.load_state_dict(state["unseen"])
            self.unseen.to(self.device)
