"""Classifier alignment with a global covariance, after Kalla & Biswas ("Robust feature learning and global
variance-driven classifier alignment for long-tail class incremental learning", 2024), as a plugin for any method
with a linear or cosine head and a memory (`gvalign.enabled: true`).

After each task (the method's end of task done, the backbone frozen from here on):
1. class prototypes: the mean feature of every seen class, from what the task can see of it (the task's data for
   new classes, the exemplars for old ones) under the current backbone (the paper's Sec. 3.3, prototypes);
2. one covariance shared by all classes, pooled from the within-class deviations of those features (Sec. 3.3:
   a single global variance, so tail classes with a handful of exemplars borrow the head classes' spread),
   shrunk towards its mean variance for stability;
3. pseudo-features drawn from N(prototype_c, global covariance), the same number for every class (Sec. 3.4);
4. a copy of the method's classifier re-trained on them with cross-entropy, every class equally represented.
The re-trained classifier is reported as "gvalign" (the headline unless eval.headline says otherwise); the method's
own head is left as it was, so its next task trains as without the plugin. The paper's stage-1 robustness term
(mixup between classes while the backbone trains) belongs to a method's training step and is not part of this
plugin.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F

from .base import Plugin
from .two_stage import check_method

CLASSIFIER = "gvalign"


def class_statistics(feats: torch.Tensor, labels: torch.Tensor, num_classes: int,
                     shrinkage: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(means (C, D), the pooled within-class covariance (D, D), which classes have features)."""
    d = feats.shape[1]
    counts = torch.bincount(labels, minlength=num_classes).to(feats.dtype)
    means = torch.zeros(num_classes, d, device=feats.device, dtype=feats.dtype).index_add_(0, labels, feats)
    present = counts > 0
    means[present] /= counts[present, None]
    centred = feats - means[labels]
    dof = max(1, len(labels) - int(present.sum()))
    cov = centred.T @ centred / dof
    target = torch.eye(d, device=feats.device, dtype=feats.dtype) * cov.diagonal().mean()
    return means, (1 - shrinkage) * cov + shrinkage * target, present


def sample_features(means: torch.Tensor, cov: torch.Tensor, per_class: int, gen: torch.Generator):
    """`per_class` draws from N(mean_c, cov) for every class: (features (C * per_class, D), labels)."""
    c, d = means.shape
    chol = torch.linalg.cholesky(cov + 1e-6 * torch.eye(d, device=cov.device, dtype=cov.dtype))
    noise = torch.randn(c * per_class, d, generator=gen, device=gen.device).to(means)
    labels = torch.arange(c, device=means.device).repeat_interleave(per_class)
    return means[labels] + noise @ chol.T, labels


class GVAlign(Plugin):
    name = CLASSIFIER
    headline = CLASSIFIER

    def __init__(self, cfg, method):
        check_method(method, cfg.method["name"], "gvalign.enabled")
        self.cfg = cfg
        self.method = method  # its head is the template of the re-trained copy when a checkpoint is loaded
        self.head = None  # the re-trained copy of the method's classifier

    def after_task(self, method, ctx) -> None:
        o = self.cfg.gvalign
        model = method.model
        feats, labels = ctx.features(model, ctx.train_indices)
        means, cov, present = class_statistics(feats, labels, model.num_classes, o.shrinkage)
        gen = torch.Generator(device=feats.device).manual_seed(int(torch.randint(0, 2**31 - 1, (1,),
                                                                                 generator=ctx.gens[0])))
        pseudo, pseudo_labels = sample_features(means[present], cov, o.samples_per_class, gen)
        pseudo_labels = torch.nonzero(present).flatten()[pseudo_labels]
        head = copy.deepcopy(model.head)
        if hasattr(head, "frozen"):
            head.frozen = 0  # every row re-learns
        head.requires_grad_(True)

        def step(f, y):
            return {"loss": F.cross_entropy(head(f), y)}

        stage = ctx.stage(optimizer="sgd", momentum=0.9, weight_decay=0.0, schedule="cosine", warmup_epochs=0,
                          batch_size=o.batch_size, sampler="instance")
        ctx.fit(step, head.parameters(), np.arange(len(pseudo_labels)), stage, epochs=o.epochs, lr=o.lr,
                name=CLASSIFIER, augment=False, modules=[head], features=(pseudo, pseudo_labels))
        self.head = head.eval()
        ctx.events.write({"event": CLASSIFIER, "task": ctx.task_index, "classes": int(present.sum()),
                          "pseudo_features": len(pseudo_labels),
                          "covariance_trace": float(cov.diagonal().sum())})

    @torch.no_grad()
    def classifiers(self, method, x: torch.Tensor) -> dict:
        feats = method.model.forward_features(x)
        return {CLASSIFIER: (self.head or method.model.head)(feats)}

    def state_dict(self) -> dict:
        if self.head is None:
            return {"head": None}
        return {"head": {k: v.cpu() for k, v in self.head.state_dict().items()}, "classes": self.head.num_classes}

    def load_state_dict(self, state: dict, device) -> None:
        if state.get("head") is None:
            self.head = None
            return
        head = copy.deepcopy(self.method.model.head)  # the method's head, loaded first, has the right shape
        head.load_state_dict(state["head"])
        self.head = head.to(device).eval()
