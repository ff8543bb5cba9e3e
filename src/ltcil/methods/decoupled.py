"""Decoupled classifier learning (Kang et al., "Decoupling Representation and Classifier for Long-Tailed
Recognition", ICLR 2020): train backbone + linear head with plain CE and instance sampling (stage 1), then
re-balance the classifier alone on the frozen backbone (stage 2, Sec. 4):

- cRT: a re-initialised linear classifier trained with class-balanced sampling;
- tau_norm: w_c / ||w_c||^tau on the stage-1 weights, bias dropped; tau chosen on the validation split
  (never on test) over `taus`;
- lws: the stage-1 classifier frozen, one learned scale per class, class-balanced sampling.

All three are fitted after every task and reported side by side with the stage-1 classifier ("ce");
`classifier` names the headline. Stage 2 trains, as the paper's code does, on augmented training images passed
through the frozen backbone (`stage2_features: augmented`), or on the un-augmented images' features cached
once per task (`cached`: an epoch costs a matrix product instead of a backbone pass). Inside a class-incremental run the
stage-2 data is what the task trained on (its data plus the memory), and stage 1 continues from its own head.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data.sampling import SAMPLERS
from ..errors import ConfigError
from ..evaluation.metrics import mean_class_accuracy
from ..heads.linear import IncrementalLinear
from ..registry import register_method
from .exemplar_base import ReplayMethod

CLASSIFIERS = ("crt", "tau_norm", "lws")
STAGE2_FEATURES = ("augmented", "cached")


@dataclass
class DecoupledOptions:
    classifier: str = "crt"  # the headline: crt | tau_norm | lws (all three are fitted and reported)
    sampler: str = "class_balanced"  # Sec. 4: stage 2 re-balances by class-balanced sampling
    epochs: int = 10  # cRT, ImageNet-LT config of the paper's code: 10 epochs, lr 0.2 cosine, wd 5e-4, batch 512
    lr: float = 0.2
    weight_decay: float = 5e-4
    batch_size: int = 512
    lws_epochs: int = 5  # LWS, same code base: 5 epochs, lr 0.2
    lws_lr: float = 0.2
    lws_weight_decay: float = 0.0  # the released code decays the scales with the classifier's 5e-4
    taus: list = dataclasses.field(default_factory=lambda: [round(0.1 * i, 1) for i in range(21)])  # 0..2;
    # one value: that tau, no selection (needs no validation split)
    stage2_features: str = "augmented"  # augmented (the released code's stage-2 loader) | cached (fast)
    stage2_schedule: str = "cosine"  # constant | cosine | cosine_to_zero | cosine_skip_first (the released code's)


def tau_normalized_logits(features: torch.Tensor, weight: torch.Tensor, tau: float) -> torch.Tensor:
    """Sec. 4, Eq. 3: logits with w_c / ||w_c||^tau (tau = 0: the raw weights without bias)."""
    norms = weight.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return F.linear(features, weight / norms.pow(tau))


@register_method("decoupled")
class Decoupled(ReplayMethod):
    Options = DecoupledOptions

    @classmethod
    def check(cls, options, cfg):
        if options.classifier not in CLASSIFIERS:
            raise ConfigError(f"method.classifier: {options.classifier!r} is not one of {', '.join(CLASSIFIERS)}.")
        if options.sampler not in SAMPLERS:
            raise ConfigError(f"method.sampler: {options.sampler!r} is not one of {', '.join(SAMPLERS)}.")
        if options.stage2_features not in STAGE2_FEATURES:
            raise ConfigError(f"method.stage2_features: {options.stage2_features!r} is not one of "
                              f"{', '.join(STAGE2_FEATURES)}.")
        if not options.taus or min(options.taus) < 0:
            raise ConfigError(f"method.taus must be a non-empty list of values >= 0, got {options.taus}.")
        schedules = ("constant", "cosine", "cosine_to_zero", "cosine_skip_first")
        if options.stage2_schedule not in schedules:
            raise ConfigError(f"method.stage2_schedule: {options.stage2_schedule!r} is not one of "
                              f"{', '.join(schedules)}.")

    def __init__(self, model, options, cfg, device, **kwargs):
        super().__init__(model, options, cfg, device, **kwargs)
        self.headline = options.classifier
        self.crt_head = None  # IncrementalLinear over all seen classes, refitted from scratch every task
        self.lws_scales = None  # (num_classes,) learned scales of the stage-1 logits
        self.tau = None  # chosen on validation; None when the scenario has no validation split

    def begin_task(self, task, ctx):
        has_val = sum(len(t.val_indices) for t in ctx.scenario.tasks) > 0
        if self.options.classifier == "tau_norm" and len(self.options.taus) > 1 and not has_val:
            raise ConfigError(
                "method.classifier=tau_norm chooses tau on a validation split, and this scenario has none: set "
                "scenario.val_fraction (or scenario.val_per_class), use a dataset with its own validation split, or "
                "fix one tau (method.taus=[1.0])."
            )
        super().begin_task(task, ctx)

    def end_task(self, task, ctx):
        augmented = self.options.stage2_features == "augmented"
        data = ctx.frozen_stage(self.model, ctx.train_indices, augmented)  # what stage 1 trained on
        settings = dict(optimizer="sgd", momentum=0.9, schedule=self.options.stage2_schedule, warmup_epochs=0,
                        batch_size=self.options.batch_size, sampler=self.options.sampler)
        self._fit_crt(ctx, data, ctx.stage(weight_decay=self.options.weight_decay, **settings), augmented)
        self._fit_lws(ctx, data, ctx.stage(weight_decay=self.options.lws_weight_decay, **settings), augmented)
        self._choose_tau(task, ctx)
        super().end_task(task, ctx)  # memory update last: stage 2 used the task's training set

    def _fit_crt(self, ctx, data, stage, augmented):
        """cRT: re-initialise the classifier and train it alone with class-balanced sampling."""
        trainer, positions, featurize = data
        head = IncrementalLinear(self.model.backbone.num_features, self.model.num_classes).to(self.device)

        def step(x, y):
            return {"loss": F.cross_entropy(head(featurize(x)), y)}

        ctx.fit(step, head.parameters(), positions, stage, epochs=self.options.epochs, lr=self.options.lr,
                name="crt", augment=augmented, modules=[head], trainer=trainer)
        self.crt_head = head.eval()

    def _fit_lws(self, ctx, data, stage, augmented):
        """LWS: the stage-1 classifier stays fixed; only a per-class scale of its logits learns."""
        trainer, positions, featurize = data
        scales = nn.Parameter(torch.ones(self.model.num_classes, device=self.device))
        head = self.model.head

        def step(x, y):
            with torch.no_grad():
                logits = head(featurize(x))
            return {"loss": F.cross_entropy(logits * scales, y)}

        ctx.fit(step, [scales], positions, stage, epochs=self.options.lws_epochs, lr=self.options.lws_lr,
                name="lws", augment=augmented, trainer=trainer)
        self.lws_scales = scales.detach()

    def _choose_tau(self, task, ctx):
        """Pick tau by mean class accuracy on the validation images of the classes seen so far (one tau given:
        that one)."""
        if len(self.options.taus) == 1:
            self.tau = float(self.options.taus[0])
            ctx.events.write({"event": "tau_norm", "task": task.index, "tau": self.tau, "chosen": "fixed"})
            return
        val = np.concatenate([t.val_indices for t in ctx.scenario.tasks[: task.index + 1]])
        if len(val) == 0:
            self.tau = None
            return
        feats, labels = ctx.features(self.model, val, split=ctx.scenario.val_pool)
        weight = self.model.head.weight.detach()
        scores = {float(t): mean_class_accuracy(tau_normalized_logits(feats, weight, t).argmax(1), labels)
                  for t in self.options.taus}
        self.tau = max(scores, key=lambda t: (scores[t], -t))  # ties: the smallest tau
        ctx.events.write({"event": "tau_norm", "task": task.index, "tau": self.tau,
                          "val_mean_class_accuracy": scores})

    def predict(self, x):
        feats = self.model.forward_features(x)
        ce = self.model.head(feats)
        out = {"ce": ce}
        if self.crt_head is not None:
            out["crt"] = self.crt_head(feats)
            out["lws"] = ce * self.lws_scales
        if self.tau is not None:
            out["tau_norm"] = tau_normalized_logits(feats, self.model.head.weight, self.tau)
        if self.headline not in out:  # only before the first task has finished
            out[self.headline] = ce
        return out

    def results_extra(self):
        return {"tau": self.tau}

    def state_dict(self):
        state = super().state_dict()
        state["decoupled"] = {
            "crt_head": None if self.crt_head is None else self.crt_head.state_dict(),
            "lws_scales": self.lws_scales,
            "tau": self.tau,
        }
        return state

    def load_state_dict(self, state):
        super().load_state_dict(state)
        saved = state["decoupled"]
        if saved["crt_head"] is not None:
            head = IncrementalLinear(self.model.backbone.num_features, saved["crt_head"]["weight"].shape[0])
            head.load_state_dict(saved["crt_head"])
            self.crt_head = head.to(self.device).eval()
        self.lws_scales = None if saved["lws_scales"] is None else saved["lws_scales"].to(self.device)
        self.tau = saved["tau"]
