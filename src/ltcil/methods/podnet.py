"""PODNet, Pooled Outputs Distillation (Douillard et al., ECCV 2020): POD-spatial distillation of every stage's
feature maps pooled along width and along height (Sec. 3.1, Eq. 2-3), POD-flat distillation of the final
embedding (Eq. 4), both weighted by sqrt(seen / new classes); the Local Similarity Classifier with K proxies per
class trained with the NCA loss with a margin (Sec. 3.2, Eq. 5-7); after each task, balanced fine-tuning on the
exemplars (Sec. 4.1). Reported: the LSC (the headline, "linear") and the NME over exemplars."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..heads.lsc import LSCHead
from ..memory import ExemplarMemory
from ..registry import register_method
from .base import IncrementalNet
from .icarl import ICaRL


def pod_spatial(old_maps: list, new_maps: list) -> torch.Tensor:
    """Eq. 2-3 on each stage's maps: squared activations summed over height (one vector per column and channel)
    and over width, concatenated, L2-normalised per image; the L2 distance of old and new, averaged over the
    batch and the stages (the squaring and the stage mean follow the released code and PyCIL's podnet.py)."""
    total = 0.0
    for a, b in zip(old_maps, new_maps):
        a, b = a.pow(2), b.pow(2)
        a = torch.cat([a.sum(dim=2).flatten(1), a.sum(dim=3).flatten(1)], dim=1)
        b = torch.cat([b.sum(dim=2).flatten(1), b.sum(dim=3).flatten(1)], dim=1)
        total = total + (F.normalize(a, dim=1) - F.normalize(b, dim=1)).norm(dim=1).mean()
    return total / len(new_maps)


def nca_loss(similarities: torch.Tensor, y: torch.Tensor, scale: torch.Tensor, margin: float,
             hinge: bool = True, form: str = "paper") -> torch.Tensor:
    """Eq. 7, [-log(exp(eta s_y - delta) / sum_{i != y} exp(eta s_i))]_+, averaged over the batch (without the
    hinge with `hinge=False`, as PyCIL's podnet.py, whose margin also cancels out: margin 0 there).

    The margin is subtracted after the learned scale, as in the released code (arthurdouillard/
    incremental_learning.pytorch, losses nca after the learned_scaling postprocessor), not inside it as Eq. 7
    writes eta (s_y - delta): with eta inside, d loss / d eta = E_softmax[s_i] - s_y + delta stays positive until
    the classes are delta apart in cosine, so the learned eta shrinks through zero and the classifier inverts
    (measured on digits: eta -0.3, LSC 25.6% against the NME's 95% on the first task).

    form "released": the released code's stabilised form, which PyCIL's podnet.py keeps: after subtracting the
    row's largest logit it sets the target's slot of the denominator to 0 instead of removing it, so
    exp(max logit) joins the sum over the other classes. That is the plain cross-entropy whenever the target
    has the largest logit, and the loss never falls below 0; the paper's form keeps falling (without the hinge)
    as the target pulls ahead.

    form "ce": the released nca() as FACIL-based code calls it (xialeiliu/Long-Tailed-CIL's podnet.py, with its
    defaults exclude_pos_denominator=False and scale 1): cross-entropy over scale * s - delta, the margin taken from
    every logit, where it cancels; so plain cross-entropy on the scaled similarities (no hinge)."""
    logits = scale * similarities
    if form == "ce":
        return F.cross_entropy(logits, y)
    target = logits.gather(1, y.unsqueeze(1)).squeeze(1) - margin
    is_target = F.one_hot(y, logits.shape[1]).bool()
    others = logits.masked_fill(is_target, float("-inf"))
    if form == "released":
        largest = torch.maximum(others.max(dim=1).values, target)
        others = torch.cat([others, largest.unsqueeze(1)], dim=1)
    loss = torch.logsumexp(others, dim=1) - target
    return (F.relu(loss) if hinge else loss).mean()


NCA_FORMS = ("paper", "released", "ce")
FINETUNE_SETS = ("memory", "old_quota")


@dataclass
class PODNetOptions:
    proxies: int = 10  # Sec. 4.1: K = 10 proxies per class on CIFAR-100
    margin: float = 0.6  # Sec. 3.2: delta of the NCA loss
    hinge: bool = True  # Eq. 7's [.]_+
    lambda_spatial: float = 3.0  # Sec. 4.1, CIFAR-100 (PyCIL's podnet.py: 5)
    lambda_flat: float = 1.0
    nme_flip: bool = True
    finetune_epochs: int = 20  # Sec. 4.1: balanced fine-tuning on the exemplars (0: off)
    finetune_lr: float = 0.005
    # "memory": fine-tune on the exemplar memory as updated for this task (size / seen classes each);
    # "old_quota": PyCIL's podnet.py, on each old class's exemplars as they stand (size / old classes each) and
    # as many of each new class, herded before the fine-tuning; the memory is chosen after it
    finetune_set: str = "memory"
    # "released": the released code's (and PyCIL's) stabilised NCA | "ce": FACIL-based code's (see nca_loss)
    nca_form: str = "paper"
    imprint: bool = True  # new classes' proxies from k-means of their features (False: the head's random init,
    # as PyCIL's podnet.py)


@register_method("podnet")
class PODNet(ICaRL):
    Options = PODNetOptions
    headline = "linear"  # the LSC; "nme" beside it

    @classmethod
    def build_network(cls, networks, options, cfg):
        backbone = networks.backbone()
        return IncrementalNet(backbone, LSCHead(backbone.num_features, options.proxies))

    @classmethod
    def check(cls, options, cfg):
        if options.proxies < 1 or options.finetune_epochs < 0:
            raise ConfigError("method.proxies must be >= 1 and method.finetune_epochs >= 0.")
        if options.nca_form not in NCA_FORMS:
            raise ConfigError(f"method.nca_form: {options.nca_form!r} is not one of {', '.join(NCA_FORMS)}.")
        if options.finetune_set not in FINETUNE_SETS:
            raise ConfigError(f"method.finetune_set: {options.finetune_set!r} is not one of "
                              f"{', '.join(FINETUNE_SETS)}.")

    def __init__(self, model, options, cfg, device, **kwargs):
        super().__init__(model, options, cfg, device, **kwargs)
        if not hasattr(model.backbone, "forward_maps"):
            raise ConfigError(f"method podnet distils every stage's feature maps; backbone {cfg.backbone.name!r} does "
                              "not expose them (the ResNets do).")
        self.factor = 0.0

    def begin_task(self, task, ctx):
        super().begin_task(task, ctx)  # teacher; head grows by the task's classes (K proxies each)
        head = self.model.head
        head.frozen = self.old_classes * head.proxies  # the old classes' proxies stay (lr 0 in the released code)
        self.factor = math.sqrt(self.model.num_classes / task.num_classes) if task.index > 0 else 0.0
        if task.index > 0 and self.options.imprint:
            feats, labels = ctx.features(self.model, task.train_indices)
            head.imprint_proxies(task.classes.tolist(), feats, labels, ctx.gens[0])

    def training_step(self, x, y):
        o = self.options
        maps, feats = self.model.backbone.forward_maps(x)
        head = self.model.head
        lsc = nca_loss(head.class_similarities(feats), y, head.sigma, o.margin, o.hinge, o.nca_form)
        losses = {"lsc": lsc}
        loss = lsc
        if self.teacher is not None:
            with torch.no_grad():
                old_maps, old_feats = self.teacher.backbone.forward_maps(x)
            losses["pod_flat"] = (1 - F.cosine_similarity(feats, old_feats, dim=1)).mean()  # Eq. 4
            losses["pod_spatial"] = pod_spatial(old_maps, maps)
            loss = loss + self.factor * (o.lambda_flat * losses["pod_flat"] + o.lambda_spatial * losses["pod_spatial"])
        losses["loss"] = loss
        return losses

    def end_task(self, task, ctx):
        finetune = task.index > 0 and self.options.finetune_epochs
        if finetune and self.options.finetune_set == "old_quota":
            self.balanced_finetuning(ctx, self.old_quota_set(task, ctx))
            self.update_memory(task, ctx)
        else:
            self.update_memory(task, ctx)
            if finetune:
                self.balanced_finetuning(ctx, self.memory.indices())
        self.model.head.frozen = 0
        self.class_means = self.exemplar_means(ctx)

    def old_quota_set(self, task, ctx) -> np.ndarray:
        """PyCIL's podnet.py fine-tuning set: quota = memory size // old classes (or memory.per_class); each old
        class's first `quota` exemplars and `quota` of each new class, chosen by the memory's selection with the
        model as trained."""
        quota = self.memory.per_class or self.memory.total // max(self.old_classes, 1)
        subset = ExemplarMemory(per_class=quota, selection=self.memory.selection)
        subset.exemplars = {c: v[:quota] for c, v in self.memory.exemplars.items()}
        self.update_memory(task, ctx, memory=subset, stream=18)
        return subset.indices()

    def balanced_finetuning(self, ctx, indices: np.ndarray) -> None:
        """Sec. 4.1 (and PyCIL's podnet.py): the network, its old proxies fixed, on a class-balanced set of
        exemplars, with the training loss, at a small lr with cosine decay."""
        stage = ctx.stage(schedule="cosine", warmup_epochs=0, sampler="instance")
        ctx.fit(self.training_step, self.trainable_parameters(), indices, stage,
                epochs=self.options.finetune_epochs, lr=self.options.finetune_lr, name="balanced fine-tuning",
                modules=[self.model])
