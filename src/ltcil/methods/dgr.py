"""DGR, gradient reweighting for imbalanced class-incremental learning (He, "Gradient Reweighting: Towards
Imbalanced Class-Incremental Learning", CVPR 2024; released code JiangpengHe/imbalanced_cil, src/approach/DGR.py).

Exemplar replay with a linear head, where only the classifier's gradient is rebalanced (Sec. 3, Fig. 3):
- intra-phase: each class row's CE gradient is scaled by its class-balance ratio alpha_c = min_k Phi_k / Phi_c,
  Phi the per-class gradient norms accumulated over the task's iterations (classes whose rows receive large
  gradients, the head classes, are slowed down);
- inter-phase (from the second task, "decoupled"): alpha is computed separately among old and among new classes,
  then scaled by task-balance ratios r_old = min(1, mean Phi_new / mean Phi_old) and r_new = gamma * that ratio
  (capped at 1), gamma = exp(-n_old / (n_old + n_new)) attenuating new-class learning as data accumulates; the
  distillation gradient of the old rows is rescaled so its norm matches the reweighted CE gradient's;
- the CE is a logit-adjusted softmax over the training set's class prior (logits + log p_c), and the
  distillation is distribution-aware (DAKD): the student's old logits are mixed with the teacher's in proportion
  to how many training images each old class lost to the memory budget, weighted by the normalised entropy of
  those losses, and the term is scaled by beta = lambda_b * sqrt(n_old / n_new).
The backbone gets the plain gradient of CE + DAKD. Prediction: the linear head's logits.

`method.variant: pilot` is the form LAMDA-PILOT runs on a pre-trained ViT (models/dgr.py, exps/dgr.json; the
"DGR's pre-trained variant" of the configs dgr_vit_b16_*): the same gradient reweighting and logit-adjusted CE,
with plain distillation (soft-target CE at T, no DAKD) weighted by lambda * old classes / new classes (classes,
not images; no square root and no T^2), and the attenuation exp(-gamma * old classes / all classes).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..heads.linear import IncrementalLinear
from ..registry import register_method
from .base import train_class_counts
from .distillation_base import TeacherMethod


@dataclass
class DGROptions:
    T: float = 2.0  # DAKD temperature (the released code fixes 2 and scales the term by T^2 = 4)
    lambda_b: float = 0.7  # loss balance: beta = lambda_b * sqrt(n_old / n_new) (released code: 0.7)
    attenuation: float = 1.0  # gamma = exp(-attenuation * n_old / (n_old + n_new)) (released code: 1)
    reweight: bool = True  # off: plain gradients (the ablation without gradient reweighting)
    logit_adjust: bool = True  # CE on logits + log(class prior of the training set); off: plain CE
    dakd: bool = True  # off: plain distillation (soft-target CE at T) instead of DAKD
    variant: str = "released"  # released: the CVPR code's weights (images) | pilot: LAMDA-PILOT's (classes)


def normalised_entropy(counts: np.ndarray) -> float:
    """Entropy of counts (+1e-3, as released) over log(#classes): 1 for equal counts, towards 0 when one dominates."""
    p = np.asarray(counts, dtype=np.float64) + 1e-3
    p = p / p.sum()
    return float(-(p * np.log(p)).sum() / np.log(len(p))) if len(p) > 1 else 1.0


def dakd_loss(student: torch.Tensor, teacher: torch.Tensor, lost: np.ndarray, T: float) -> torch.Tensor:
    """Distribution-aware KD (DAKD): soft-target CE against the teacher at T, the student's log-probabilities a
    mix of its own and of logits blended towards the teacher's by each old class's share of lost images."""
    w = torch.as_tensor(lost / max(lost.sum(), 1e-12), dtype=torch.float32, device=student.device)
    w = w / w.norm().clamp_min(1e-12)  # the released code L2-normalises the prior after the sum-normalisation
    rho = normalised_entropy(lost)
    student, teacher = student.float(), teacher.float()
    blended = student * w + teacher * (1 - w)
    log_p = rho * F.log_softmax(student / T, dim=1) + (1 - rho) * F.log_softmax(blended / T, dim=1)
    return -(F.softmax(teacher / T, dim=1) * log_p).sum(1).mean()


def soft_ce(student: torch.Tensor, teacher: torch.Tensor, T: float) -> torch.Tensor:
    return -(F.softmax(teacher.float() / T, dim=1) * F.log_softmax(student.float() / T, dim=1)).sum(1).mean()


@register_method("dgr")
class DGR(TeacherMethod):
    Options = DGROptions
    requires_memory = True  # Sec. 4: 20 exemplars per class (herding)

    def __init__(self, model, options, cfg, device, **kwargs):
        super().__init__(model, options, cfg, device, **kwargs)
        self.learned_counts = torch.zeros(0)  # training images each class had in the task that brought it
        self.phi = torch.zeros(0)  # per-class CE gradient norms accumulated over this task's steps
        self._hooks: list = []
        self._priors = None  # (lost images per old class, n_old, n_new) of the current task
        self.last_weights = None  # the latest step's per-class factors (alpha * r), for tests and inspection

    @classmethod
    def check(cls, options, cfg):
        for key in ("T", "lambda_b"):
            if getattr(options, key) <= 0:
                raise ConfigError(f"method.{key}: {getattr(options, key)!r} must be > 0.")
        if options.attenuation < 0:
            raise ConfigError(f"method.attenuation: {options.attenuation!r} must be >= 0.")
        if options.variant not in ("released", "pilot"):
            raise ConfigError(f"method.variant: {options.variant!r} is not one of released, pilot.")
        if options.variant == "pilot" and options.dakd:
            raise ConfigError("method.variant pilot distils without DAKD: set method.dakd=false.")

    def begin_task(self, task, ctx):
        super().begin_task(task, ctx)
        if not isinstance(self.model.head, IncrementalLinear):
            raise ConfigError("method dgr reweights the rows of a linear head; this network has another head.")
        self.phi = torch.zeros(self.model.num_classes, dtype=torch.float64, device=self.device)
        self._priors = None

    # --- the task's priors, from what it trains on (its data plus the memory): fixed within a task ---------
    def _old_new(self):
        """(images each old class lost to the memory budget, n_old, n_new), computed once per task."""
        if self._priors is None:
            counts = self.train_counts.double().cpu().numpy()
            old = self.old_classes
            learned = self.learned_counts[:old].double().numpy()
            lost = np.clip(learned - counts[:old], 0, None)
            self._priors = (lost, float(learned.sum()), float(counts[old:].sum()))
        return self._priors

    # --- one step: everything stays on the device (no host synchronisation per step) -----------------------
    def _release_hooks(self):
        for handle in self._hooks:
            handle.remove()
        self._hooks = []

    def _set_head_gradient(self, weight_grad: torch.Tensor, bias_grad) -> None:
        """The head's gradient of this step's backward is replaced by the given one (the backbone's is left to
        autograd): a one-shot hook per parameter, removed before the next step."""
        head = self.model.head
        for param, value in ((head.weight, weight_grad), (head.bias, bias_grad)):
            if param is None or value is None:
                continue
            fired = []

            def hook(grad, value=value, fired=fired):
                if fired:  # a later backward (another stage) gets its own gradient
                    return grad
                fired.append(True)
                return value.to(grad.dtype)

            self._hooks.append(param.register_hook(hook))

    def training_step(self, x, y):
        self._release_hooks()
        head = self.model.head
        logits = self.model(x)
        adjusted = logits
        if self.options.logit_adjust:  # logit-adjusted softmax over the training set's class prior
            prior = self.train_counts[: logits.shape[1]].to(logits.device)
            adjusted = logits + torch.log((prior / prior.sum()).clamp_min(1e-12)).to(logits.dtype)
        ce = F.cross_entropy(adjusted.float(), y)
        kd = None
        if self.teacher is None:
            losses = {"loss": ce, "ce": ce}
        else:
            lost, n_old, n_new = self._old_new()
            teacher = self.teacher_logits(x)
            student = logits[:, : self.old_classes]
            raw = dakd_loss(student, teacher, lost, self.options.T) if self.options.dakd else \
                soft_ce(student, teacher, self.options.T)
            if self.options.variant == "pilot":  # lambda * known / new classes, no T^2
                kd = self.options.lambda_b * self.old_classes / max(logits.shape[1] - self.old_classes, 1) * raw
            else:
                beta = self.options.lambda_b * float(np.sqrt(n_old / max(n_new, 1.0)))
                kd = beta * self.options.T ** 2 * raw
            losses = {"loss": ce + kd, "ce": ce, "kd": kd}
        if self.options.reweight and torch.is_grad_enabled():
            self._reweight(ce, kd, head)
        return losses

    def _reweight(self, ce: torch.Tensor, kd, head) -> None:
        params = [head.weight] + ([head.bias] if head.bias is not None else [])
        g_ce = torch.autograd.grad(ce, params, retain_graph=True)  # the head's part of the graph only
        w_ce, b_ce = g_ce[0], (g_ce[1] if len(g_ce) > 1 else None)
        norms = w_ce.detach().norm(dim=1).double()  # per class: its weight row's (as released)
        self.phi = self.phi.to(norms.device) + norms
        old = self.old_classes
        if kd is None:  # first task: alpha over every class
            alpha = self.phi.min() / self.phi.clamp_min(1e-12)
            self.last_weights = alpha
            scale = alpha.to(w_ce.dtype)
            self._set_head_gradient(w_ce * scale[:, None], None if b_ce is None else b_ce * scale)
            return
        g_kd = torch.autograd.grad(kd, params, retain_graph=True)
        w_kd, b_kd = g_kd[0], (g_kd[1] if len(g_kd) > 1 else None)
        phi_old, phi_new = self.phi[:old], self.phi[old:]
        alpha = torch.cat([phi_old.min() / phi_old.clamp_min(1e-12), phi_new.min() / phi_new.clamp_min(1e-12)])
        ratio = phi_new.mean() / phi_old.mean().clamp_min(1e-12)
        _, n_old, n_new = self._old_new()
        if self.options.variant == "pilot":  # by classes: exp(-gamma * known / total)
            n_old, n_new = float(old), float(len(self.phi) - old)
        gamma = float(np.exp(-self.options.attenuation * n_old / (n_old + n_new)))
        alpha = torch.cat([alpha[:old] * ratio.clamp(max=1.0),  # task-balance ratio of the old classes
                           alpha[old:] * (ratio * gamma).clamp(max=1.0)])  # of the new ones, attenuated
        self.last_weights = alpha
        # the distillation gradient rescaled to the norm of the reweighted CE gradient (per-class norms)
        kd_norms = w_kd[:old].detach().norm(dim=1).double()
        rescale = ((alpha * norms).norm() / kd_norms.norm().clamp_min(1e-12)).to(w_ce.dtype)
        scale = alpha.to(w_ce.dtype)
        weight = w_ce * scale[:, None]
        weight[:old] += rescale * w_kd[:old]
        bias = None
        if b_ce is not None:
            bias = b_ce * scale
            bias[:old] += rescale * b_kd[:old]
        self._set_head_gradient(weight, bias)

    def end_task(self, task, ctx):
        self._release_hooks()
        n = self.model.num_classes
        learned = torch.zeros(n, dtype=torch.float64)
        learned[: len(self.learned_counts)] = self.learned_counts.double()
        # the task's own images of its classes (what the memory budget later takes from them)
        own = train_class_counts(ctx, task.train_indices, n)
        learned[self.old_classes : n] = own[self.old_classes :].double().cpu()
        self.learned_counts = learned
        super().end_task(task, ctx)

    # --- state -------------------------------------------------------------------------------------------
    def epoch_state(self):
        return {"phi": self.phi.clone()}

    def load_epoch_state(self, state):
        self.phi = state["phi"].clone().double().to(self.device)

    def state_dict(self):
        return {**super().state_dict(), "learned_counts": self.learned_counts.clone()}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.learned_counts = state["learned_counts"].clone().double()
