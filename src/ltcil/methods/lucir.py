"""LUCIR, Learning a Unified Classifier Incrementally via Rebalancing (Hou et al., CVPR 2019): a cosine-normalised
classifier with a learned scale (Sec. 3.2, Eq. 4) on a backbone without its last ReLU, the new classes' rows
imprinted and the old ones fixed, the less-forget constraint on normalised features (Sec. 3.2, Eq. 6-7) and the
inter-class margin ranking on old-class samples (Sec. 3.3, Eq. 8); optionally class-balanced fine-tuning of the
classifier on the exemplars (Sec. 3.4). Both the cosine classifier (CNN, the headline) and the NME over
exemplars are reported."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError, LtcilWarning
from ..heads.cosine import CosineLinear
from ..losses.margin import lucir_regularisers
from ..registry import register_method
from .base import IncrementalNet
from .icarl import ICaRL


@dataclass
class LUCIROptions:
    lambda_base: float = 5.0  # Sec. 4.1, CIFAR-100: the less-forget weight lambda = lambda_base sqrt(old / new)
    margin: float = 0.5  # Sec. 4.1: m of the margin ranking loss
    top_k: int = 2  # Sec. 4.1: K hardest new-class cosines
    margin_weight: float = 1.0
    imprint: bool = True  # Sec. 3.2: new rows from the new classes' mean normalised features
    nme_flip: bool = True  # class means of the NME classifier also over the mirrored exemplars
    cbf_epochs: int = 0  # Sec. 3.4: class-balanced fine-tuning of the classifier on the exemplars (0: off)
    cbf_lr: float = 0.01
    # GVAlign's stage 1 (Kalla & Biswas, WACV 2024, Sec. 3.2; lucir_gvalign_2stage.py's train_epoch): each batch is
    # doubled by its mixup (one lambda ~ Beta(a, a) a batch, partners a shuffle of the batch) and the mixed half adds
    # lambda CE(y) + (1 - lambda) CE(partner's y); CE and the LUCIR terms stay on the original half. 0: off
    mixup_alpha: float = 0.0


@register_method("lucir")
class LUCIR(ICaRL):
    Options = LUCIROptions
    headline = "linear"  # the cosine classifier (PyCIL and the paper report it as CNN); "nme" beside it

    @classmethod
    def build_network(cls, networks, options, cfg):
        backbone = networks.backbone()
        return IncrementalNet(backbone, CosineLinear(backbone.num_features, sigma=True))

    @classmethod
    def check(cls, options, cfg):
        if options.top_k < 1 or options.lambda_base < 0 or options.cbf_epochs < 0 or options.mixup_alpha < 0:
            raise ConfigError("method.top_k must be >= 1, method.lambda_base, method.cbf_epochs and "
                              "method.mixup_alpha >= 0.")
        if cfg.backbone.last_relu:
            warnings.warn(LtcilWarning("method lucir is meant for a backbone without its last ReLU (Sec. 3.2: the "
                                       "features and their cosines may be negative): set backbone.last_relu=false."))

    def begin_task(self, task, ctx):
        super().begin_task(task, ctx)  # teacher = frozen copy of the previous model; head grows
        head = self.model.head
        head.frozen = self.old_classes  # the old classes' rows are fixed (their lr is 0 in the released code)
        if task.index > 0 and self.options.imprint:
            feats, labels = ctx.features(self.model, task.train_indices)
            head.imprint(task.classes.tolist(), feats, labels)

    @property
    def needs_context(self) -> bool:  # mixup draws its lambda and partners from the task's generator
        return self.options.mixup_alpha > 0

    def training_step(self, x, y, ctx=None):
        o = self.options
        head = self.model.head
        n = len(x)
        mix = None
        if o.mixup_alpha > 0:
            cpu_gen = ctx.gens[0]
            seed = int(torch.randint(0, 2**31 - 1, (1,), generator=cpu_gen))
            lam = float(np.random.RandomState(seed).beta(o.mixup_alpha, o.mixup_alpha))
            partner = torch.randperm(n, generator=cpu_gen).to(x.device)
            mix = (lam, y[partner])
            x = torch.cat([x, lam * x + (1 - lam) * x[partner]])  # one forward: BatchNorm sees both halves
        feats_all = self.model.forward_features(x)
        cos_all = head.cosines(feats_all)
        feats, cos = feats_all[:n], cos_all[:n]
        ce = self.classification_loss(head.sigma * cos, y)
        losses = {"ce": ce}
        loss = ce
        if mix is not None:
            lam, partner_y = mix
            mixed = head.sigma * cos_all[n:]
            losses["mixup"] = lam * F.cross_entropy(mixed, y) + (1 - lam) * F.cross_entropy(mixed, partner_y)
            loss = loss + losses["mixup"]
        if self.teacher is not None:
            with torch.no_grad():
                old_feats = self.teacher.forward_features(x[:n])
            extra, losses["less_forget"], ranking = lucir_regularisers(  # Eqs. 6-8
                feats, old_feats, cos, y, self.old_classes,
                lambda_base=o.lambda_base, margin=o.margin, top_k=o.top_k, margin_weight=o.margin_weight,
            )
            loss = loss + extra
            if ranking is not None:
                losses["margin"] = ranking
        losses["loss"] = loss
        return losses

    def end_task(self, task, ctx):
        self.model.head.frozen = 0
        self.update_memory(task, ctx)
        if self.options.cbf_epochs and task.index > 0:
            self.class_balanced_finetuning(ctx)
        self.class_means = self.exemplar_means(ctx)

    def class_balanced_finetuning(self, ctx) -> None:
        """Sec. 3.4: the classifier (all rows and the scale) on class-balanced batches of the exemplars, the
        backbone frozen (its features of the exemplars computed once)."""
        head = self.model.head
        indices = self.memory.indices()
        trainer, positions, featurize = ctx.frozen_stage(self.model, indices, augmented=False)

        def step(f, y):
            return {"loss": F.cross_entropy(head(featurize(f)), y)}

        stage = ctx.stage(optimizer="sgd", momentum=0.9, weight_decay=0.0, schedule="cosine", warmup_epochs=0,
                          sampler="class_balanced")
        ctx.fit(step, head.parameters(), np.asarray(positions), stage, epochs=self.options.cbf_epochs,
                lr=self.options.cbf_lr, name="class-balanced fine-tuning", augment=False, modules=[head],
                trainer=trainer)
