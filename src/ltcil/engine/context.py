"""What a method may use during a task: the scenario, the device data, the engine's loop and this task's RNGs.

It is the one way a method reaches the engine: an extra training stage goes through `fit` (on images, or on
cached features with `features=`), its settings through `stage`, features and class means through `features`
and `class_means`; inside `training_step` a method that sets `needs_context` gets it as `ctx=`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from ..config import Config, TrainConfig
from ..data.augment import AugmentSpec
from ..data.loader import DeviceData, FeatureData
from ..scenarios import Scenario, Task
from .stage import Stage
from .trainer import Trainer


@dataclass
class TaskContext:
    cfg: Config
    scenario: Scenario
    data: DeviceData
    trainer: Trainer
    device: torch.device
    gens: tuple  # (cpu generator, device generator), derived from (seed, task)
    events: object  # reporting.events.EventLog
    task_index: int
    rebuild_model: Optional[Callable] = None  # a freshly initialised network of the method (its build_network)
    run_dir: Optional[Path] = None  # where a method may leave pictures (CCSI's impressions)
    task: Optional[Task] = None  # the task being trained
    train_indices: Optional[np.ndarray] = None  # what the main training visits (the method's train_indices)

    def stage(self, **overrides) -> TrainConfig:
        """The settings of an extra stage: the run's train section with `overrides` (optimizer, schedule,
        milestones, batch_size, sampler, ...)."""
        return dataclasses.replace(self.cfg.train, **overrides)

    def fit(self, step_fn, params, indices: np.ndarray, stage=None, *, epochs: int, lr: float, name: str,
            split: str = "train", augment: bool = True, modules=(), on_epoch=None, trainer=None,
            features: Optional[tuple] = None) -> list:
        """Run an extra training stage (bias correction, classifier re-training) through the engine's loop.
        `features=(feats, labels)`: the stage runs over those cached features (indices are positions into
        them), so an epoch costs no network pass; `trainer` (from frozen_stage) replaces the task's trainer."""
        if features is not None:
            trainer = Trainer(FeatureData(*features), self.device, self.events, progress=False, amp=False)
        settings = stage if stage is not None else self.cfg.train
        spec = Stage(name, settings, epochs, lr, AugmentSpec.from_train_config(settings) if augment else None,
                     split=split, modules=tuple(modules), on_epoch=on_epoch)
        return (trainer or self.trainer).fit(step_fn, params, indices, spec, gens=self.gens,
                                             task_index=self.task_index)

    def frozen_stage(self, model, indices: np.ndarray, augmented: bool, embed=None):
        """What a stage that trains only on top of a frozen network (cRT, LWS, a linear probe, BiC's bias
        correction) runs on: (trainer, positions, featurize). `embed` maps images to what the stage trains on
        (default: model.forward_features; BiC: the uncorrected logits). `augmented`: the task's augmented
        training images, embedded by the frozen network (eval mode, no gradient) at every step, as the papers
        train; otherwise the embeddings of the un-augmented images, computed once, so an epoch costs a matrix
        product instead of a network pass. Pass `augment=augmented` and the returned trainer to `fit`, and call
        `featurize` on each batch."""
        embed = embed or model.forward_features
        if augmented:
            model.eval()

            def featurize(x):
                with torch.no_grad():
                    return embed(x).float()

            return self.trainer, np.asarray(indices), featurize
        feats, labels = self.features(model, indices, embed=embed)
        trainer = Trainer(FeatureData(feats, labels), self.device, self.events, progress=False, amp=False)
        return trainer, np.arange(len(labels)), lambda f: f

    @torch.inference_mode()
    def features(self, model, indices: np.ndarray, split: str = "train", batch_size: Optional[int] = None,
                 flip: bool = False, embed=None, progress: str = ""):
        """Backbone features (or `embed(x)`) of un-augmented images (mirrored with `flip`), in large no-grad
        batches; returns (features, labels). `progress`: a bar with that description (when the run shows bars),
        for passes long enough to watch (a frozen pre-trained backbone over a task's images)."""
        model.eval()
        embed = embed or model.forward_features
        feats, labels = [], []
        bar = None
        if progress and getattr(self.trainer, "progress", False):
            from tqdm.auto import tqdm

            bar = tqdm(total=len(indices), unit="img", leave=False, dynamic_ncols=True,
                       desc=f"task {self.task_index + 1} {progress}")
        for idx in self.data.index_batches(indices, batch_size or self.cfg.eval.batch_size, shuffle=False,
                                                split=split):
            x, y = self.data.batch(split, idx)
            feats.append(embed(x.flip(3) if flip else x).float())
            labels.append(y)
            if bar is not None:
                bar.update(len(idx))
        if bar is not None:
            bar.close()
        if not feats:
            return torch.zeros(0, 0, device=self.device), torch.zeros(0, dtype=torch.long, device=self.device)
        return torch.cat(feats), torch.cat(labels)

    @torch.inference_mode()
    def class_means(self, model, per_class: dict, normalize: bool = False, flip: bool = False) -> dict:
        """{class: mean feature of its images} from one batched pass over all of them (not a small pass per
        class: at 1,000 classes of 5 exemplars that was 2,000 forwards of 5 images). `normalize`: L2-normalise
        each feature first (iCaRL); `flip`: average the mirrored images' features in too."""
        classes = [c for c, idx in per_class.items() if len(idx)]
        if not classes:
            return {}
        indices = np.concatenate([np.asarray(per_class[c]) for c in classes])
        owner = torch.repeat_interleave(torch.arange(len(classes), device=self.device),
                                        torch.tensor([len(per_class[c]) for c in classes], device=self.device))
        views = [self.features(model, indices)[0]] + ([self.features(model, indices, flip=True)[0]] if flip else [])
        sums = torch.zeros(len(classes), views[0].shape[1], device=self.device)
        for feats in views:
            sums.index_add_(0, owner, torch.nn.functional.normalize(feats, dim=1) if normalize else feats)
        counts = torch.bincount(owner, minlength=len(classes)).float() * len(views)
        means = sums / counts[:, None]
        return {c: means[i] for i, c in enumerate(classes)}

    def reset_model(self, method) -> None:
        """Replace the method's network by a freshly built and placed one with the same number of classes."""
        model = self.rebuild_model()
        model.head.add_classes(method.model.num_classes)
        method.model = model.to(self.device)  # the new rows of the grown head on the device too
