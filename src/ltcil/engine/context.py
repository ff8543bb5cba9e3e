"""What a method may use during a task: the scenario, the device data, the trainer and this task's RNGs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch


@dataclass
class TaskContext:
    cfg: object
    scenario: object
    data: object  # DeviceData
    trainer: object  # Trainer
    device: torch.device
    gens: tuple  # (cpu generator, device generator), derived from (seed, task)
    events: object
    task_index: int
    rebuild_model: object = None  # callable returning a freshly initialised IncrementalNet
    run_dir: Optional[Path] = None  # where a method may leave pictures (CCSI's impressions)

    def fit(self, step_fn, params, indices: np.ndarray, stage=None, *, epochs: int, lr: float, name: str,
            split: str = "train", augment: bool = True, modules=(), on_epoch=None, trainer=None) -> list:
        """Run an extra training stage (bias correction, classifier re-training) through the engine's loop;
        `trainer` replaces the task's trainer (e.g. one over cached features)."""
        return (trainer or self.trainer).fit(
            step_fn, params, indices, stage if stage is not None else self.cfg.train, epochs=epochs, lr=lr,
            gens=self.gens, task_index=self.task_index, name=name, split=split, augment=augment, modules=modules,
            on_epoch=on_epoch,
        )

    @torch.inference_mode()
    def features(self, model, indices: np.ndarray, split: str = "train", batch_size: Optional[int] = None):
        """Backbone features of un-augmented images, in large no-grad batches; returns (features, labels)."""
        model.eval()
        feats, labels = [], []
        for idx in self.data.index_batches(indices, batch_size or self.cfg.eval.batch_size, shuffle=False):
            x, y = self.data.batch(split, idx)
            feats.append(model.forward_features(x).float())
            labels.append(y)
        if not feats:
            return torch.zeros(0, 0, device=self.device), torch.zeros(0, dtype=torch.long, device=self.device)
        return torch.cat(feats), torch.cat(labels)

    def reset_model(self, method) -> None:
        """Replace the method's network by a freshly initialised one with the same number of classes."""
        model = self.rebuild_model()
        model.head.add_classes(method.model.num_classes)
        method.model = model.to(self.device)
