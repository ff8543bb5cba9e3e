"""BiC, Large Scale Incremental Learning (Wu et al., CVPR 2019): distillation + CE, then a two-parameter
bias correction of the newest task's logits fitted on a small class-balanced validation split."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError
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
    # PyCIL's bic.py differs from the paper's code in these; each is here so its recipe can be run exactly:
    keep_corrections: bool = False  # True: every task's fitted pair stays on its classes in every later forward
    # pass, the training of later tasks included (PyCIL); False: only the newest task's pair (Sec. 5, Eq. 4)
    bias_loss: str = "ce"  # ce: Eq. 5; softmax_ce: CE applied to the softmax of the corrected logits (PyCIL)
    bias_weight_decay: float = 0.0  # on the scale and shift (PyCIL: the stage-1 weight decay, 2e-4)
    bias_augment: bool = False  # validation images augmented as in training (PyCIL) or not (the paper's code)
    bias_bn: str = "eval"  # eval: BatchNorm frozen in the stage; train: batch statistics, running ones updated (PyCIL)


class BiCNet(IncrementalNet):
    """IncrementalNet whose logits pass through the per-task bias correction (so the teacher is corrected too)."""

    def __init__(self, backbone, head, keep_all: bool = False):
        super().__init__(backbone, head)
        self.bias = TaskBiasCorrection(keep_all)

    def forward_uncorrected(self, x):
        return self.head(self.backbone.forward_features(x))

    def forward(self, x):
        return self.bias(self.forward_uncorrected(x))


@register_method("bic")
class BiC(TeacherMethod):
    Options = BiCOptions
    requires_memory = True  # the bias-correction split comes from the exemplars (Sec. 6.1)

    @classmethod
    def build_network(cls, networks, options, cfg):
        net = super().build_network(networks, options, cfg)
        return BiCNet(net.backbone, net.head, options.keep_corrections)

    def __init__(self, model, options, cfg, device, **kwargs):
        super().__init__(model, options, cfg, device, **kwargs)
        self.val_indices = np.zeros(0, dtype=np.int64)
        self.held_out: dict = {}  # new-class validation indices of the current task

    @classmethod
    def check(cls, options, cfg):
        if options.bias_loss not in ("ce", "softmax_ce"):
            raise ConfigError(f"method.bias_loss: {options.bias_loss!r} is not one of ce, softmax_ce.")
        if options.bias_bn not in ("eval", "train"):
            raise ConfigError(f"method.bias_bn: {options.bias_bn!r} is not one of eval, train.")

    def trainable_parameters(self):
        """The first stage trains network and head; the correction pairs learn only in the second."""
        frozen = {id(p) for p in self.model.bias.parameters()}
        return [p for p in self.model.parameters() if p.requires_grad and id(p) not in frozen]

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
        # the newest task is uncorrected while it trains (its pair is still the identity with keep_corrections)
        logits = self.model(x) if self.options.keep_corrections else self.model.forward_uncorrected(x)
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
        bias, model, opt = self.model.bias, self.model, self.options
        scale = torch.nn.Parameter(bias.alpha.detach()[-1].clone())
        shift = torch.nn.Parameter(bias.beta.detach()[-1].clone())
        for p in model.parameters():
            p.requires_grad_(False)

        train_bn = opt.bias_bn == "train"
        if train_bn:  # PyCIL: BatchNorm in training mode, so every epoch passes the images through the network
            trainer, positions, featurize = ctx.trainer, self.val_indices, None
        else:  # a frozen network: its logits of each validation image, cached once when not augmented
            trainer, positions, featurize = ctx.frozen_stage(model, self.val_indices, opt.bias_augment,
                                                            embed=model.forward_uncorrected)

        def step(x, y):
            if featurize is None:
                with torch.no_grad():
                    raw = model.forward_uncorrected(x)
            else:
                raw = featurize(x)
            logits = bias(raw, newest=(scale, shift))
            if opt.bias_loss == "softmax_ce":  # PyCIL: cross-entropy of the probabilities (a double softmax)
                logits = logits.softmax(1)
            ce = F.cross_entropy(logits, y)
            return {"loss": ce + opt.shift_penalty * shift ** 2 / 2, "ce": ce}

        stage = ctx.stage(optimizer="sgd", momentum=0.9, weight_decay=opt.bias_weight_decay, schedule="step",
                          milestones=opt.bias_milestones, gamma=0.1, warmup_epochs=0, batch_size=opt.bias_batch_size)
        model.train(train_bn)  # eval: the frozen network's BatchNorm uses (and keeps) its running statistics
        try:
            ctx.fit(step, [scale, shift], positions, stage, epochs=opt.bias_epochs, lr=opt.bias_lr,
                    name="bias correction", augment=opt.bias_augment, modules=[model] if train_bn else (),
                    trainer=trainer)
        finally:
            for p in model.parameters():
                p.requires_grad_(True)
            model.eval()
        with torch.no_grad():
            bias.alpha[-1] = scale
            bias.beta[-1] = shift
        newest = bias.num_tasks - 1
        ctx.events.write({"event": "bias_correction", "task": task.index, **bias.pairs()[newest],
                          "val_accuracy_before": accuracy_before,
                          "val_accuracy_after": self._val_accuracy(ctx, corrected=True)})

    @torch.inference_mode()
    def _val_accuracy(self, ctx, corrected: bool) -> float:
        self.model.eval()
        correct = 0
        batches = ctx.data.index_batches(self.val_indices, ctx.cfg.eval.batch_size, shuffle=False, split="train")
        for idx in batches:
            x, y = ctx.data.batch("train", idx)
            logits = self.model(x) if corrected else self.model.forward_uncorrected(x)
            correct += int((logits.argmax(1) == y).sum())
        return 100.0 * correct / max(len(self.val_indices), 1)

    def predict(self, x):
        raw = self.model.forward_uncorrected(x)
        return {"logits": self.model.bias(raw), "before_correction": raw}

    def results_extra(self):
        return {"bias_correction": self.model.bias.pairs()}
