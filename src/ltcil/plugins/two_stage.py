"""The two-stage recipe of long-tailed CIL (Liu et al., "Long-Tailed Class Incremental Learning", ECCV 2022,
Sec. 4), added to any method whose network ends in a linear or cosine head (`two_stage.enabled: true`).

Stage 1 is the method's own task training. Stage 2, after the method's end of task: the backbone is frozen
and the classifier is fine-tuned together with a learnable weight-scaling layer (LWS: one scale per class,
multiplying its logit) on class-balanced batches of what the task trained on (its data plus the memory).
As in the authors' code: 30 epochs, cosine lr from the stage-1 lr, the scales at a tenth of it, only the
new task's classifier rows fine-tuned (their LUCIR/PODNet keep old rows fixed; PODNet's K proxies a class), every
class's scale trained.
The fine-tuned rows stay in the network for the next task, as there; the scales only enter predictions.
The scaled head is reported as the classifier "two_stage", the run's headline unless eval.headline says otherwise.

Stage 2 trains on features of the un-augmented images cached once per task, so an epoch costs a matrix product
(`two_stage.features: cached`), or, as the authors' code does, on augmented images fed through the frozen
backbone at every step (`augmented`).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ConfigError
from ..heads.linear import IncrementalLinear
from .base import Plugin

CLASSIFIER = "two_stage"


def check_method(method, method_name: str, key: str = "two_stage.enabled") -> None:
    """A classifier stage needs a linear or cosine head (PODNet's LSC, K rows a class, included), and exemplars:
    on the new classes' images alone it would only push the old classes down."""
    head = method.model.head
    if not isinstance(head, IncrementalLinear):
        raise ConfigError(f"{key}: method {method_name!r} classifies with a {type(head).__name__}; the stage "
                          "re-trains a linear or cosine head (icarl, bic, wa, lucir, eeil, der, replay, ldam_drw, "
                          "balanced_softmax, finetune or joint with a memory).")
    memory = getattr(method, "memory", None)
    if memory is None or not memory.enabled:
        raise ConfigError(f"{key}: method {method_name!r} keeps no exemplars here; the stage balances old and new "
                          "classes with the memory. Set memory.size or memory.per_class (LwF and CCSI never "
                          "store exemplars).")


class TwoStage(Plugin):
    name = CLASSIFIER
    headline = CLASSIFIER  # Liu et al. report the scaled head

    def __init__(self, cfg, method):
        check_method(method, cfg.method["name"])
        self.cfg = cfg
        self.scales = None  # (classes,) learned weight scales; None until the first task's stage 2

    def after_task(self, method, ctx) -> None:
        self.fit(method, ctx.train_indices, ctx)

    def fit(self, method, indices: np.ndarray, ctx) -> None:
        opts, train = self.cfg.two_stage, self.cfg.train
        model, head = method.model, method.model.head
        augmented = opts.features == "augmented"
        trainer, positions, featurize = ctx.frozen_stage(model, indices, augmented)
        n = model.num_classes
        scales = torch.ones(n, device=ctx.device)
        if self.scales is not None:
            scales[: len(self.scales)] = self.scales.to(ctx.device)  # every class's scale keeps learning
        scales = nn.Parameter(scales)
        # the old classes' rows: PODNet's LSC stores K proxies a class, class by class
        old = (n - ctx.scenario.tasks[ctx.task_index].num_classes) * getattr(head, "proxies", 1)
        fixed = {k: v.detach().clone() for k, v in head.named_parameters()} if opts.head == "new" else {}

        groups = [{"params": [scales], "lr_scale": opts.scale_lr_factor}]
        if opts.head != "none":
            groups.insert(0, {"params": list(head.parameters()), "lr_scale": 1.0})
        stage = ctx.stage(schedule="cosine", warmup_epochs=0, sampler=opts.sampler,
                          batch_size=opts.batch_size or train.batch_size,
                          weight_decay=train.weight_decay if opts.weight_decay is None else opts.weight_decay)

        def step(x, y):
            if fixed:  # old rows stay as they were in every forward (the optimiser's last update is undone)
                with torch.no_grad():
                    for name in ("weight", "bias"):
                        if fixed.get(name) is not None:
                            getattr(head, name)[:old] = fixed[name][:old]
            return {"loss": F.cross_entropy(head(featurize(x)) * scales, y)}

        ctx.fit(step, groups, positions, stage, epochs=opts.epochs, lr=opts.lr or train.lr, name=CLASSIFIER,
                augment=augmented, modules=[head], trainer=trainer)
        with torch.no_grad():  # undo the last update of the old rows too; a cosine head's sigma learns
            for name in ("weight", "bias"):
                if fixed.get(name) is not None:
                    getattr(head, name)[:old] = fixed[name][:old]
        self.scales = scales.detach()
        ctx.events.write({"event": CLASSIFIER, "task": ctx.task_index, "scales": self.scales.cpu().tolist()})

    @torch.no_grad()
    def logits(self, model, x: torch.Tensor) -> torch.Tensor:
        logits = model.head(model.forward_features(x))
        return logits * self.scales[: logits.shape[1]] if self.scales is not None else logits

    def classifiers(self, method, x: torch.Tensor) -> dict:
        return {CLASSIFIER: self.logits(method.model, x)}

    def state_dict(self) -> dict:
        return {"scales": None if self.scales is None else self.scales.cpu()}

    def load_state_dict(self, state: dict, device) -> None:
        self.scales = None if state["scales"] is None else state["scales"].to(device)
