"""The method interface: a method is a model plus hooks the engine calls around each task.

The engine owns epochs, optimisers, schedules, devices, logging and checkpoints; a method only says what
to train on, what the loss of a batch is, what to do before and after a task, and how to predict.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import build_dataclass
from ..heads.linear import IncrementalLinear
from ..losses.longtail import balanced_softmax_loss, class_balanced_weights

if TYPE_CHECKING:  # pragma: no cover
    from ..engine.context import TaskContext
    from ..scenarios import Task


@dataclasses.dataclass
class NoOptions:
    """Methods without options of their own."""


def train_class_counts(ctx, indices: np.ndarray, num_classes: int) -> torch.Tensor:
    """Images per arrival label among `indices` of the train split, as a float tensor on the device."""
    labels = ctx.data.labels["train"][torch.as_tensor(indices, dtype=torch.long).to(ctx.device)]
    return torch.bincount(labels, minlength=num_classes).float()


class IncrementalNet(nn.Module):
    """Backbone + growable head; logits cover every class seen so far."""

    def __init__(self, backbone: nn.Module, head: Optional[nn.Module] = None):
        super().__init__()
        self.backbone = backbone
        self.head = head if head is not None else IncrementalLinear(backbone.num_features)

    @property
    def num_classes(self) -> int:
        return self.head.num_classes

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone.forward_features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone.forward_features(x))


class Method:
    """Base class with the no-op defaults of DESIGN.md; subclasses override what they need."""

    Options = NoOptions  # a dataclass of the method's own config keys (method.<key>)
    headline = "logits"  # which of predict()'s classifiers results.json's "accuracy" reports
    views = 1  # augmented views per image in training_step's x (contrastive methods: 2, concatenated)
    batch_indices = False  # True: training_step(x, y, idx) also gets the batch's indices into the train split
    needs_context = False  # True: training_step(..., ctx=TaskContext) gets the task's data and generators
    requires_memory = False  # True: the method is meaningless without exemplars (refused before data loads)

    def __init__(self, model: nn.Module, options, cfg, device: torch.device, networks=None):
        """`model`: what build_network made, placed; `networks`: the run's NetworkFactory (backbones and
        placement for modules the method adds later, e.g. one backbone per task), None in unit tests."""
        self.model = model.to(device)
        self.options = options
        self.cfg = cfg
        self.device = device
        self.networks = networks
        self.train_counts: Optional[torch.Tensor] = None  # per class, of the current task's training indices

    @classmethod
    def build_network(cls, networks, options, cfg) -> nn.Module:
        """The method's network: by default a backbone and a growable linear head (head.init); a method with
        another head (cosine, prototypes) or another structure (a bias layer, one backbone per task) overrides
        it. The engine places what it returns (NetworkFactory.place)."""
        backbone = networks.backbone()
        return IncrementalNet(backbone, IncrementalLinear(backbone.num_features, init=cfg.head.init))

    @classmethod
    def parse_options(cls, method_section: dict, where: str = ""):
        values = {k: v for k, v in method_section.items() if k != "name"}
        return build_dataclass(cls.Options, values, "method", where)

    @classmethod
    def check(cls, options, cfg) -> None:
        """Reject impossible option values (ConfigError naming the key) before any data is loaded."""

    # --- hooks -------------------------------------------------------------------------------------------
    def begin_task(self, task: "Task", ctx: "TaskContext") -> None:
        """Grow the head for the task's classes."""
        self.model.head.add_classes(task.num_classes)
        self.model.head.to(self.device)

    def train_indices(self, task: "Task", ctx: "TaskContext") -> np.ndarray:
        """Indices into the train split to train on in this task (default: the task's own data)."""
        return task.train_indices

    def trains(self, task: "Task") -> bool:
        """Whether the task has a main training stage (False: a frozen pre-trained backbone whose classifier is
        computed in end_task, SimpleCIL; the engine then runs no epoch)."""
        return True

    def trainable_parameters(self):
        return [p for p in self.model.parameters() if p.requires_grad]

    def augmentation(self):
        """The AugmentSpec of the main training (None: the train config's crop/flip/jitter)."""
        return None

    def begin_epoch(self, epoch: int, epochs: int, ctx: Optional["TaskContext"] = None) -> None:
        """Called before each epoch of the task's main training (0-based epoch), with the task's context."""

    def epoch_state(self) -> dict:
        """What begin_epoch keeps from one epoch to the next beyond state_dict() (tensors and plain data): saved
        in a checkpoint taken inside a task, given back to load_epoch_state when the task resumes there."""
        return {}

    def load_epoch_state(self, state: dict) -> None:
        pass

    def training_step(self, x: torch.Tensor, y: torch.Tensor) -> dict:
        """Named losses for one batch; the engine optimises losses["loss"]."""
        return {"loss": self.classification_loss(self.model(x), y)}

    def classification_loss(self, logits: torch.Tensor, y: torch.Tensor, first: int = 0) -> torch.Tensor:
        """The CE term of the main training, long-tail aware when `train.loss` says so. `train_counts` (images
        per class of what this task trains on, set by the engine before training) gives the prior. `first`:
        only the logits of classes >= first take part (a task-local CE; every label must be >= first)."""
        if first:
            logits, y = logits[:, first:], y - first
        kind = self.cfg.train.loss
        if kind == "ce":
            return F.cross_entropy(logits, y)
        counts = self.train_counts[first : first + logits.shape[1]].to(logits.device)
        if kind == "balanced_softmax":
            return balanced_softmax_loss(logits, y, counts)
        return F.cross_entropy(logits, y, weight=class_balanced_weights(counts, self.cfg.train.cb_beta))

    def end_task(self, task: "Task", ctx: "TaskContext") -> None:
        pass

    def predict(self, x: torch.Tensor) -> dict:
        """Logits over all seen classes, per classifier; the key "logits" is the headline classifier."""
        return {"logits": self.model(x)}

    def results_extra(self) -> dict:
        """Method-specific entries for results.json (e.g. BiC's fitted scale/shift per task)."""
        return {}

    # --- state -------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Tensors and plain data only (checkpoints load with weights_only=True)."""
        return {"model": self.model.state_dict(), "num_classes": self.model.num_classes}

    def load_state_dict(self, state: dict) -> None:
        missing = state["num_classes"] - self.model.num_classes
        if missing > 0:
            self.model.head.add_classes(missing)
        self.model.load_state_dict(state["model"])
        self.model.to(self.device)
