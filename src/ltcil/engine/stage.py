"""A training stage as data: what the Trainer runs (the task's main training, or an extra stage a method or a
plugin asks for through TaskContext.fit)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, Optional

from ..config import TrainConfig
from ..data.augment import AugmentSpec


@dataclass
class Stage:
    name: str
    settings: TrainConfig  # optimizer, momentum, weight_decay, schedule (+ milestones, gamma, warm-up, unit),
    # batch_size and sampler
    epochs: int
    lr: float
    augment: Optional[AugmentSpec] = None  # None: the images as they are
    views: int = 1  # independently augmented copies of each batch, concatenated (contrastive learning)
    with_indices: bool = False  # the step also gets the batch's indices into the split
    split: str = "train"
    modules: tuple = ()  # put in train mode every epoch (the rest stays as it is)
    on_epoch: Optional[Callable] = None  # on_epoch(epoch, epochs) before each epoch

    def steps_per_epoch(self, n: int) -> int:
        """Steps an epoch over n images takes (a trailing batch of one image is dropped: BatchNorm; any partial
        one with train.drop_last)."""
        full, rest = divmod(n, self.settings.batch_size)
        return max(1, full + (1 if rest >= 2 and not self.settings.drop_last else 0))


def task_settings(train: TrainConfig, first: bool) -> tuple[TrainConfig, int, float]:
    """The settings, epochs and lr of a task's main training: train.first_task overrides the first task's."""
    if not first:
        return train, train.epochs, train.lr
    ft = train.first_task
    settings = dataclasses.replace(
        train,
        milestones=train.milestones if ft.milestones is None else ft.milestones,
        weight_decay=train.weight_decay if ft.weight_decay is None else ft.weight_decay,
        batch_size=ft.batch_size or train.batch_size,
    )
    return settings, ft.epochs or train.epochs, ft.lr or train.lr
