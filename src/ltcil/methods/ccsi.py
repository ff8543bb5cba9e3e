"""CCSI: continual class-specific impressions, data-free class-incremental learning (Ayromlou et al., TMI 2024,
arXiv 2406.05631; MICCAI 2022 "Class Impression"; code sanaAyrml/Class-Impresion-for-Data-free-Incremental-Learning).

No real image of an old class is kept. What the method retains per class is the mean training image, taken
while the class was being learnt. At the start of each later task it synthesises impressions of every old
class from the frozen previous model (impressions.py), then trains on batches of new real images plus
impressions (a share `ratio` of each batch) with (Sec. 3.3 of the paper; released incremental_train_and_eval):
- a LUCIR-style cosine classifier, old rows frozen, new rows imprinted from the new classes' features;
- feature distillation 1 - cos(f(x), f_old(x)), weight lamda * sqrt(old / new classes);
- cosine-normalised CE with class weights max_c n_c / n_c over real and synthetic counts;
- margin ranking on impressions: each one's own-class cosine above its top-K new-class cosines by `margin`;
- the intra-domain contrastive loss (IdC) between class centroids of the training batch and of unlabelled
  real images grouped by the model's pseudo-labels.

Differences from the released code, following the paper's intent:
- IdC's unlabelled images are the current task's held-out validation images, never the test set (the
  release draws them from the cumulative test set, a transductive leak); only the new classes' validation
  images are used, since the old classes' real images are gone by then.
- The reference model for distillation is a frozen copy of the previous model (the release crashes here).
- Impressions stay in the model's input space (the release re-normalises them by their own mean and a
  variance mislabelled std); pixels are clamped on every channel (the release clamps channel 0 only).
- The synthesis lr follows DeepInversion's 0.5 (1 + cos) after the warm-up (the release: 0.2).
- The model after the last epoch is kept (the release keeps the best checkpoint on test accuracy) and the lr
  follows train.schedule (the release's ReduceLROnPlateau steps on test accuracy in "min" mode).
- Impression labels are balanced across old classes (the release draws them uniformly at random).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..heads.cosine import CosineLinear
from ..impressions import ImpressionConfig, synthesize
from ..losses.ccsi import class_centroids, class_weights, idc_loss
from ..losses.margin import lucir_regularisers
from ..registry import register_method
from .base import IncrementalNet
from .distillation_base import TeacherMethod


@dataclass
class CCSIOptions:
    ratio: float = 0.66  # rs_ratio: expected share of impressions in a batch
    lamda: float = 5.0  # distillation base weight (LUCIR's lambda_base)
    margin: float = 0.3  # margin ranking: m ("dist")
    top_k: int = 1  # margin ranking: hardest new classes per impression
    margin_weight: float = 1.0  # lw_mr * alpha_3
    idc: float = 1.0  # da_coef: weight of the intra-domain contrastive loss (0: off)
    idc_momentum: float = 0.9  # ro: share of the current batch in the centroid EMA
    idc_temperature: float = 1.0  # temprature
    # CE class weights max_c f_c / f_c: "dataset" (release's compute_class_weights): f = images per class among
    # real images + impressions; "batch": f = each class's expected share of a batch after the ratio sampling
    # (the release's weights compensate twice when impressions are few: 10 per class vs 450 real gives 45x);
    # "none": plain CE.
    class_weights: str = "dataset"
    imprint: bool = True  # new classifier rows from the new classes' mean normalised features
    # synthesis (impressions.py)
    synth_per_class: int = 250  # impressions per old class (seed: 640-1,400 images over 2-6 old classes)
    synth_batch_size: int = 40  # images sharing BN statistics
    synth_parallel: int = 0  # batches optimised in one forward pass (0: all)
    synth_iterations: int = 5000
    synth_lr: float = 0.05
    synth_warmup: int = 100
    synth_main: float = 1.0
    synth_bn: float = 1.0
    synth_first_bn: float = 10.0
    synth_tv_l2: float = 0.01
    synth_tv_l1: float = 0.0
    synth_l2: float = 0.1
    synth_jitter: int = 30
    synth_flip: bool = True
    synth_noise: float = 0.1
    picture_per_class: int = 8  # impressions per class in the run folder's picture (0: none)


@register_method("ccsi")
class CCSI(TeacherMethod):
    Options = CCSIOptions
    uses_memory = False  # data-free: no real exemplars
    batch_indices = True  # the indices of the real images (tests check none is an old class's)

    @classmethod
    def check(cls, options, cfg):
        if cfg.memory.size or cfg.memory.per_class:
            raise ConfigError("method ccsi is data-free: it stores no exemplars, so memory.size and "
                              f"memory.per_class must be 0 (got {cfg.memory.size} and {cfg.memory.per_class}).")
        if not 0 <= options.ratio < 1:
            raise ConfigError(f"method.ratio: {options.ratio!r} must be in [0, 1) (share of impressions per batch).")
        for key in ("synth_per_class", "synth_batch_size", "synth_iterations"):
            if getattr(options, key) < 1:
                raise ConfigError(f"method.{key}: {getattr(options, key)!r} must be >= 1.")
        if options.class_weights not in ("dataset", "batch", "none"):
            raise ConfigError(f"method.class_weights: {options.class_weights!r} is not one of dataset, batch, none.")
        if options.top_k < 1:
            raise ConfigError(f"method.top_k: {options.top_k!r} must be >= 1.")

    @classmethod
    def build_network(cls, networks, options, cfg):
        backbone = networks.backbone()
        return IncrementalNet(backbone, CosineLinear(backbone.num_features, sigma=True))

    def __init__(self, model, options, cfg, device, **kwargs):
        super().__init__(model, options, cfg, device, **kwargs)
        self.mean_images = torch.zeros(0, device=device)  # per class, pixel scale [0, 1]: the only class data kept
        self.synthetic = None  # (images in input space, labels) of the current task
        self.synthesis_log: list = []

    # --- task hooks --------------------------------------------------------------------------------------
    def begin_task(self, task, ctx):
        o = self.options
        if task.index == 0 and o.idc > 0 and len(task.val_indices) == 0:
            raise ConfigError("method.idc > 0: the intra-domain contrastive loss needs unlabelled held-out images, "
                              "and this scenario has no validation split. Set scenario.val_fraction (e.g. 0.1) or "
                              "scenario.val_per_class, or method.idc=0.")
        super().begin_task(task, ctx)  # teacher = frozen copy of the previous model; head grows
        self.remember_mean_images(task, ctx)
        head = self.model.head
        head.frozen = self.old_classes
        self.synthetic = None
        if task.index > 0:
            self.synthetic = self.synthesize_old_classes(task, ctx)
            if o.imprint:
                feats, labels = ctx.features(self.model, task.train_indices)
                head.imprint(task.classes.tolist(), feats, labels)
        self._centroids = None
        self._weights = None

    @torch.no_grad()
    def remember_mean_images(self, task, ctx):
        """Per-class mean training image of the task's classes (pixel scale), kept for later syntheses."""
        n, device = self.model.num_classes, ctx.device
        sums, y_all = None, []
        for idx in ctx.data.index_batches(task.train_indices, 4096, shuffle=False, split="train"):
            x, y = ctx.data.pixels("train", idx), ctx.data.labels["train"].index_select(0, idx.to(device))
            if sums is None:
                sums = torch.zeros(n, *x.shape[1:], device=device)
            sums.index_add_(0, y, x.float().div_(255))
            y_all.append(y)
        y = torch.cat(y_all)
        counts = torch.bincount(y, minlength=n).clamp_min(1).view(-1, 1, 1, 1)
        means = sums / counts
        grown = torch.zeros(n, *sums.shape[1:], device=device)
        if len(self.mean_images):
            grown[: len(self.mean_images)] = self.mean_images
        new = torch.as_tensor(task.classes, device=device)
        grown[new] = means[new]
        self.mean_images = grown

    def synthesize_old_classes(self, task, ctx):
        o, data = self.options, ctx.data
        cpu_gen = ctx.gens[0]
        old = self.old_classes
        labels = torch.arange(old, device=self.device).repeat_interleave(o.synth_per_class)
        labels = labels[torch.randperm(len(labels), generator=cpu_gen).to(self.device)]  # classes mixed per batch
        noise = torch.randn(len(labels), *self.mean_images.shape[1:], generator=cpu_gen).to(self.device)
        init = data.finish((self.mean_images[labels] + o.synth_noise * noise).clamp(0, 1))
        low, high = (0 - data.mean) / data.std, (1 - data.mean) / data.std
        cfg = ImpressionConfig(
            iterations=o.synth_iterations, lr=o.synth_lr, warmup=o.synth_warmup, main=o.synth_main, bn=o.synth_bn,
            first_bn_weight=o.synth_first_bn, tv_l2=o.synth_tv_l2, tv_l1=o.synth_tv_l1, l2=o.synth_l2,
            jitter=o.synth_jitter, flip=o.synth_flip, noise=o.synth_noise)
        images, stats = synthesize(self.teacher, init, labels, o.synth_batch_size, cfg, low, high, cpu_gen,
                                   o.synth_parallel)
        with torch.inference_mode():  # how many impressions the old model itself calls their class
            hits = sum(int((self.teacher(images[i : i + 512]).argmax(1) == labels[i : i + 512]).sum())
                       for i in range(0, len(images), 512))
        stats.update(task=task.index, old_classes=old, teacher_accuracy=100.0 * hits / max(1, len(labels)))
        self.synthesis_log.append(stats)
        ctx.events.write({"event": "synthesis", **stats})
        if o.picture_per_class and getattr(ctx, "run_dir", None) is not None:
            self.write_picture(images, labels, Path(ctx.run_dir) / f"impressions_task{task.index + 1}.png", data)
        return images.detach(), labels

    def write_picture(self, images, labels, path: Path, data) -> None:
        """One row per old class: its mean image, then its first impressions (pixel scale, PNG)."""
        from ..reporting.png import image_grid, write_png

        per = self.options.picture_per_class
        rows = []
        for c in range(self.old_classes):
            mine = images[labels == c][:per]
            pixels = (mine * data.std + data.mean).clamp(0, 1)
            rows.append(torch.cat([self.mean_images[c : c + 1], pixels]))
        write_png(path, image_grid(rows), scale=max(1, 64 // images.shape[-1]))

    def end_task(self, task, ctx):
        self.synthetic = None
        self.model.head.frozen = 0

    # --- training ----------------------------------------------------------------------------------------
    needs_context = True  # impressions and the unlabelled validation batches draw from the task's generators

    def begin_epoch(self, epoch, epochs, ctx=None):
        self._centroids = None  # IdC centroids restart every epoch (released code)

    def _class_weights(self):
        """CE weights max_c f_c / f_c, f_c the frequency of class c (see CCSIOptions.class_weights)."""
        if self._weights is None:
            real = self.train_counts[: self.model.num_classes].to(self.device).float()
            fake = torch.zeros_like(real)
            if self.synthetic is not None:
                fake = torch.bincount(self.synthetic[1], minlength=len(real)).float()
            self._weights = class_weights(real, fake, self.options.ratio, self.options.class_weights)
        return self._weights

    def _synthetic_batch(self, real: int, ctx):
        images, labels = self.synthetic
        n = min(len(labels), max(1, round(real * self.options.ratio / (1 - self.options.ratio))))
        pick = torch.randint(len(labels), (n,), generator=ctx.gens[0]).to(self.device)
        return images.index_select(0, pick), labels.index_select(0, pick)

    def _val_batch(self, size: int, ctx):
        val = ctx.task.val_indices
        pick = torch.randint(len(val), (min(size, len(val)),), generator=ctx.gens[0])
        x, _ = ctx.data.batch(ctx.scenario.val_pool, torch.as_tensor(val)[pick])  # labels are never read
        return x

    def training_step(self, x, y, idx, ctx):
        o = self.options
        n_real = len(x)
        if self.synthetic is not None and o.ratio > 0:
            xs, ys = self._synthetic_batch(n_real, ctx)
            x, y = torch.cat([x, xs]), torch.cat([y, ys])
        feats = self.model.forward_features(x)
        head = self.model.head
        cos = head.cosines(feats)
        weights = self._class_weights() if o.class_weights != "none" else None
        ce = F.cross_entropy(head.sigma * cos, y, weight=weights)
        losses = {"ce": ce}
        loss = ce
        if self.teacher is not None:
            with torch.no_grad():
                old_feats = self.teacher.forward_features(x)
            extra, losses["distill"], ranking = lucir_regularisers(
                feats, old_feats, cos, y, self.old_classes,
                lambda_base=o.lamda, margin=o.margin, top_k=o.top_k, margin_weight=o.margin_weight,
            )
            loss = loss + extra
            if ranking is not None:
                losses["margin"] = ranking
        if o.idc > 0 and self.teacher is not None:  # the first task trains on weighted CE only (release)
            losses["idc"] = self._idc_loss(cos, y, ctx)
            loss = loss + o.idc * losses["idc"]
        losses["loss"] = loss
        return losses

    def _idc_loss(self, cos: torch.Tensor, y: torch.Tensor, ctx) -> torch.Tensor:
        """Intra-domain contrastive loss between training-batch class centroids (source) and pseudo-labelled
        unlabelled real images (target), both EMAs over the epoch. As in the release, the unlabelled batch goes
        through the model in training mode and its gradient counts."""
        head, o = self.model.head, self.options
        target_cos = head.cosines(self.model.forward_features(self._val_batch(len(y), ctx)))
        source = class_centroids(cos, y, head.num_classes)
        target = class_centroids(target_cos, target_cos.argmax(1), head.num_classes)
        if self._centroids is not None:
            m = o.idc_momentum
            source = (1 - m) * self._centroids[0] + m * source
            target = (1 - m) * self._centroids[1] + m * target
        self._centroids = (source.detach(), target.detach())
        return idc_loss(source, target, o.idc_temperature)

    # --- state -------------------------------------------------------------------------------------------
    def state_dict(self):
        state = super().state_dict()
        state["mean_images"] = self.mean_images.cpu()
        return state

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.mean_images = state["mean_images"].to(self.device)

    def results_extra(self):
        return {"synthesis": self.synthesis_log}

