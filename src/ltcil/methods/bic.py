"""BiC, Large Scale Incremental Learning (Wu et al., CVPR 2019): distillation + CE, then a two-parameter
bias correction of the newest task's logits fitted on a small class-balanced validation split."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..heads.bias import TaskBiasCorrection
from ..losses.distillation import kd_loss
from ..registry import register_method
from .base import IncrementalNet
from .distillation_base import TeacherMethod


@dataclass
class BiCOptions:
    T: float = 2.0  # Sec. 4, Eq. 1: distillation temperature
    val_ratio: float = 0.1  # Sec. 6.1: exemplars and new data split 9:1 into train / bias-correction validation
    bias_epochs: int = 200  # Sec. 5 / released code: 2 x 100 epochs over the validation split
    bias_lr: float = 0.1
    bias_milestones: list = dataclasses.field(default_factory=lambda: [60, 120, 160, 180])
    bias_batch_size: int = 256
    shift_penalty: float = 0.1  # released code: 0.1 * beta^2 / 2 on the shift only


class BiCNet(IncrementalNet):
    """IncrementalNet whose logits pass through the per-task bias correction (so the teacher is corrected too)."""

    def __init__(self, backbone, head):
        super().__init__(backbone, head)
        self.bias = TaskBiasCorrection()

    def forward_uncorrected(self, x):
        return self.head(self.backbone.forward_features(x))

    def forward(self, x):
        return self.bias(self.forward_uncorrected(x))


@register_method("bic")
class BiC(TeacherMethod):
    Options = BiCOptions

    def __init__(self, model, options, cfg, device):
        super().__init__(BiCNet(model.backbone, model.head), options, cfg, device)
        self.val_indices = np.zeros(0, dtype=np.int64)
        self.held_out: dict = {}  # new-class validation indices of the current task

    def begin_task(self, task, ctx):
        super().begin_task(task, ctx)
        self.model.bias.add_task(task.num_classes)
        self.model.bias.to(self.device)
        self.held_out = {}
        if task.index == 0 or not self.memory.enabled:
            return
        # Sec. 6.1: the validation split holds as many images per new class as per old class (class-balanced):
        # the 1/10 share of each old class's exemplars, and as many held-out images of each new class.
        per_old = [len(v) for v in self.memory.exemplars.values()]
        n_val = max(1, int(round(self.options.val_ratio * min(per_old)))) if per_old else 0
        labels = ctx.data.labels["train"].cpu().numpy()
        rng = np.random.default_rng([self.cfg.seed, task.index, 23])
        for c in task.classes.tolist():
            idx = task.train_indices[labels[task.train_indices] == c]
            k = min(n_val, len(idx) - 1)
            self.held_out[c] = np.sort(rng.choice(idx, size=k, replace=False)) if k > 0 else idx[:0]
        self.n_val_old = n_val

    def _old_split(self):
        """Exemplars of old classes: (training part, validation part = the last n_val of each class)."""
        train, val = [], []
        for c in sorted(self.memory.exemplars):
            ex = self.memory.exemplars[c]
            k = min(self.n_val_old, len(ex) - 1) if len(ex) > 1 else 0
            train.append(ex[: len(ex) - k])
            val.append(ex[len(ex) - k:])
        return np.concatenate(train), np.concatenate(val)

    def train_indices(self, task, ctx):
        if task.index == 0 or not self.held_out:
            return super().train_indices(task, ctx)
        held = np.concatenate(list(self.held_out.values()))
        new = np.setdiff1d(task.train_indices, held)
        old_train, _ = self._old_split()
        return np.concatenate([new, old_train])

    def training_step(self, x, y):
        logits = self.model.forward_uncorrected(x)  # the newest task is uncorrected while it trains
        ce = self.classification_loss(logits, y)
        if self.teacher is None:
            return {"loss": ce, "ce": ce}
        lam = self.old_classes / logits.shape[1]  # Eq. 3: lambda = n / (n + m)
        kd = kd_loss(logits[:, : self.old_classes], self.teacher_logits(x), self.options.T)
        return {"loss": lam * kd + (1 - lam) * ce, "ce": ce, "kd": kd}

    def end_task(self, task, ctx):
        if self.held_out:
            self.fit_bias(task, ctx)
        self.update_memory(task, ctx)

    def fit_bias(self, task, ctx):
        """Stage 2 (Sec. 5, Eq. 5): only alpha, beta of the newest task train, on the validation split."""
        _, old_val = self._old_split()
        self.val_indices = np.concatenate([old_val, *self.held_out.values()])
        accuracy_before = self._val_accuracy(ctx, corrected=False)
        bias, model = self.model.bias, self.model
        for p in model.parameters():
            p.requires_grad_(False)
        # Only the newest pair is applied (heads/bias.py), so only it receives gradient; pairs are 1-d tensors
        # that grow each task, hence the whole tensors are handed to the optimiser.
        bias.alpha.requires_grad_(True)
        bias.beta.requires_grad_(True)
        penalty = self.options.shift_penalty

        def step(x, y):
            with torch.no_grad():
                logits = model.forward_uncorrected(x)
            ce = F.cross_entropy(bias(logits), y)
            return {"loss": ce + penalty * bias.beta[-1] ** 2 / 2, "ce": ce}

        stage = dataclasses.replace(
            self.cfg.train, optimizer="sgd", momentum=0.9, weight_decay=0.0, schedule="step",
            milestones=self.options.bias_milestones, gamma=0.1, warmup_epochs=0,
            batch_size=self.options.bias_batch_size,
        )
        model.eval()  # frozen network: BatchNorm uses (and keeps) its running statistics
        try:
            ctx.fit(step, [bias.alpha, bias.beta], self.val_indices, stage, epochs=self.options.bias_epochs,
                    lr=self.options.bias_lr, name="bias correction", augment=False)
        finally:
            for p in model.parameters():
                p.requires_grad_(True)
        newest = bias.num_tasks - 1
        ctx.events.write({"event": "bias_correction", "task": task.index, **bias.pairs()[newest],
                          "val_accuracy_before": accuracy_before,
                          "val_accuracy_after": self._val_accuracy(ctx, corrected=True)})

    @torch.inference_mode()
    def _val_accuracy(self, ctx, corrected: bool) -> float:
        self.model.eval()
        correct = 0
        for idx in ctx.data.index_batches(self.val_indices, ctx.cfg.eval.batch_size, shuffle=False):
            x, y = ctx.data.batch("train", idx)
            logits = self.model(x) if corrected else self.model.forward_uncorrected(x)
            correct += int((logits.argmax(1) == y).sum())
        return 100.0 * correct / max(len(self.val_indices), 1)

    def predict(self, x):
        raw = self.model.forward_uncorrected(x)
        return {"logits": self.model.bias(raw), "before_correction": raw}

    def results_extra(self):
        return {"bias_correction": self.model.bias.pairs()}
