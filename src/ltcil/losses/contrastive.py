"""Supervised contrastive losses over a batch of 2N unit vectors (two views of N images, concatenated)."""

from __future__ import annotations

import math

import torch


def _mean_log_prob(sim: torch.Tensor, tau: torch.Tensor, positives: torch.Tensor,
                   contrast: torch.Tensor) -> torch.Tensor:
    """Per anchor: mean over its positives p of log(exp(s_ip/tau_i) / sum_{a in contrast_i} exp(s_ia/tau_i))."""
    logits = sim / tau[:, None]
    denom = torch.logsumexp(logits.masked_fill(~contrast, float("-inf")), dim=1, keepdim=True)
    log_prob = (logits - denom).masked_fill(~positives, 0.0)
    return log_prob.sum(1) / positives.sum(1).clamp_min(1)


def supcon_loss(z: torch.Tensor, labels: torch.Tensor, temperature: float = 0.1,
                base_temperature: float = 0.1) -> torch.Tensor:
    """SupCon (Khosla et al., NeurIPS 2020, Eq. 2): positives share the label, contrast is every other view;
    scaled by temperature / base_temperature as in the reference code."""
    n = len(z)
    eye = torch.eye(n, dtype=torch.bool, device=z.device)
    positives = (labels[:, None] == labels[None, :]) & ~eye
    tau = torch.full((n,), temperature, device=z.device, dtype=z.dtype)
    return -(temperature / base_temperature) * _mean_log_prob(z @ z.T, tau, positives, ~eye).mean()


def sbcl_loss(z: torch.Tensor, labels: torch.Tensor, subclasses: torch.Tensor, tau_class: torch.Tensor,
              temperature: float = 0.1, base_temperature: float = 0.07, beta: float = 0.25) -> torch.Tensor:
    """SBCL's bi-granularity loss (Hou et al., ICCV 2023, Eq. 4-6).

    Subclass term: positives are the same subclass (with the anchor's other view), contrast is every other
    sample, temperature tau1. Class term: positives are the same class in another subclass plus the anchor's
    other view; same-subclass samples leave its contrast set (the other view stays); temperature tau2(y_i) =
    `tau_class[i]`. The subclass term carries tau1 / base_temperature like SupCon's code; the class term beta.
    """
    n = len(z)
    half = n // 2
    eye = torch.eye(n, dtype=torch.bool, device=z.device)
    other_view = torch.roll(eye, half, dims=1)  # i <-> i + N
    same_sub = (subclasses[:, None] == subclasses[None, :]) & ~eye
    same_class = (labels[:, None] == labels[None, :]) & ~eye
    sim = z @ z.T
    tau1 = torch.full((n,), temperature, device=z.device, dtype=z.dtype)
    sub_term = _mean_log_prob(sim, tau1, same_sub, ~eye)
    class_pos = (same_class & ~same_sub) | other_view
    class_contrast = (~same_sub & ~eye) | other_view
    class_term = _mean_log_prob(sim, tau_class.to(z.dtype), class_pos, class_contrast)
    return -((temperature / base_temperature) * sub_term + beta * class_term).mean()


def class_temperatures(z: torch.Tensor, labels: torch.Tensor, num_classes: int, temperature: float,
                       alpha: float = 10.0) -> torch.Tensor:
    """SBCL Eq. 6 (paper form): phi(c) = sum_i ||z_i - t_c|| / (n_c log(n_c + alpha)), t_c the class centre;
    tau2(c) = tau1 * exp(phi(c) / mean phi), so tau2 > tau1 always. [BUG/QUIRK in the released code: a linear
    tau1 * d_c / mean d clipped to percentiles, which can fall below tau1; we follow the paper.]"""
    counts = torch.bincount(labels, minlength=num_classes).to(z.dtype)
    centres = torch.zeros(num_classes, z.shape[1], device=z.device, dtype=z.dtype).index_add_(0, labels, z)
    centres = centres / counts.clamp_min(1)[:, None]
    spread = torch.zeros(num_classes, device=z.device, dtype=z.dtype).index_add_(
        0, labels, (z - centres[labels]).norm(dim=1))
    present = counts > 0
    phi = torch.zeros_like(counts)
    phi[present] = spread[present] / (counts[present] * torch.log(counts[present] + alpha))
    mean_phi = phi[present].mean() if present.any() else phi.new_tensor(1.0)
    if float(mean_phi) <= 0 or not math.isfinite(float(mean_phi)):
        return torch.full_like(phi, temperature * math.e)
    return temperature * torch.exp(phi / mean_phi)
