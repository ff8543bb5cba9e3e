"""The shared base of methods on a frozen pre-trained backbone (SimpleCIL, RanPAC): the backbone never changes,
nothing runs an epoch, each task computes its training images' embeddings once, and evaluation computes each
test image's embedding once per run (evaluation/feature_cache.py), classifying later evaluations from memory.
Checkpoints keep the head and a digest of the backbone, not the backbone itself (a ViT-B/16 is 330 MB a task): a
resumed run rebuilds it from the same weights, and a digest that no longer matches (backbone.checkpoint changed
in between) is an error."""

from __future__ import annotations

import hashlib
import warnings

import torch

from ..errors import ConfigError, LtcilWarning
from ..evaluation.feature_cache import FeatureCache
from .base import IncrementalNet, Method


def freeze(module: torch.nn.Module) -> torch.nn.Module:
    for p in module.parameters():
        p.requires_grad_(False)
    return module.eval()


OTHER_WEIGHTS = ("the checkpoint was made with other backbone weights than this run builds (was backbone.checkpoint "
                 "or the cached pre-trained file replaced?); resume with the same weights, or start a new run.")


def digest(module: torch.nn.Module) -> str:
    """sha256 of every parameter and buffer, in order."""
    h = hashlib.sha256()
    for name, t in module.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


class FrozenBackboneMethod(Method):
    @classmethod
    def check(cls, options, cfg) -> None:
        if not (cfg.backbone.pretrained or cfg.backbone.checkpoint):
            warnings.warn(LtcilWarning(
                f"method {cfg.method['name']} keeps the backbone as it is built and {cfg.backbone.name} starts from "
                "random weights here (no backbone.pretrained or backbone.checkpoint): its features are random "
                "projections, useful for tests, not for results (`ltcil list backbones` names the pre-trained ones)."))

    @classmethod
    def make_head(cls, in_features: int, options) -> torch.nn.Module:
        raise NotImplementedError

    @classmethod
    def build_network(cls, networks, options, cfg):
        backbone = freeze(networks.backbone())
        return IncrementalNet(backbone, cls.make_head(backbone.num_features, options))

    def __init__(self, model, options, cfg, device, **kwargs):
        super().__init__(model, options, cfg, device, **kwargs)
        self.feature_cache = FeatureCache()  # evaluation embeddings: the backbone never changes

    def trains(self, task) -> bool:
        return False

    @torch.no_grad()
    def predict_features(self, feats: torch.Tensor) -> dict:
        """predict() from backbone embeddings (what the feature cache holds)."""
        return {"logits": self.model.head(feats)}

    def task_features(self, task, ctx):
        """(embeddings, labels) of the task's un-augmented training images, one batched pass."""
        return ctx.features(self.model.backbone, task.train_indices, progress="features")

    def state_dict(self) -> dict:
        return {"head": self.model.head.state_dict(), "num_classes": self.model.num_classes,
                "backbone_digest": digest(self.model.backbone)}

    def load_state_dict(self, state: dict) -> None:
        if state["backbone_digest"] != digest(self.model.backbone):
            raise ConfigError(OTHER_WEIGHTS)
        missing = state["num_classes"] - self.model.num_classes
        if missing > 0:
            self.model.head.add_classes(missing)
        self.model.head.load_state_dict(state["head"])
        self.model.to(self.device)


class AroundFrozenViT:
    """State of a method that trains modules around a frozen ViT held as `model.backbone.vit` (prompts, adapters,
    heads): checkpoints keep every weight but the ViT's, with the ViT's digest; a resumed run rebuilds the ViT from
    the same weights. Mixed in before the Method base class."""

    def state_dict(self) -> dict:
        model = {k: v for k, v in self.model.state_dict().items() if not k.startswith("backbone.vit.")}
        return {"model": model, "num_classes": self.model.num_classes,
                "backbone_digest": digest(self.model.backbone.vit)}

    def load_state_dict(self, state: dict) -> None:
        if state["backbone_digest"] != digest(self.model.backbone.vit):
            raise ConfigError(OTHER_WEIGHTS)
        missing = state["num_classes"] - self.model.num_classes
        if missing > 0:
            self.model.head.add_classes(missing)
        result = self.model.load_state_dict(state["model"], strict=False)
        wrong = [k for k in result.missing_keys if not k.startswith("backbone.vit.")] + result.unexpected_keys
        if wrong:
            raise ConfigError(f"the checkpoint does not fit method {self.cfg.method['name']}'s network: "
                              f"{', '.join(wrong[:6])}")
        self.model.to(self.device)
