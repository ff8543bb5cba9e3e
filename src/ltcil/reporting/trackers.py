"""Optional experiment trackers fed from the event log: TensorBoard (`log.tensorboard: true`) and Weights &
Biases (`log.wandb: {project: ..., mode: offline, ...}`, the keys passed to wandb.init). Each package is
imported only when its tracker is enabled; `check_trackers` fails before any training when one is missing.

What they receive: per epoch of every stage its losses, lr and images/s (step: epochs logged so far); per task
top-1 / top-5 / old / new of the headline and every classifier's top-1 (step: tasks finished); at the end the
average incremental and last accuracy.
"""

from __future__ import annotations

import importlib

from ..errors import ConfigError


def _require(module: str, key: str, package: str):
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(f"{key} is on but the {package} package is not installed: pip install {package} "
                          f"(or switch {key} off).") from None


def check_trackers(log_cfg) -> None:
    if log_cfg.tensorboard:
        _require("torch.utils.tensorboard", "log.tensorboard", "tensorboard")
    if log_cfg.wandb:
        _require("wandb", "log.wandb", "wandb")


def scalars(event: dict) -> tuple[str, dict[str, float]] | None:
    """(kind, {tag: value}) of the numbers a tracker shows for one event; None for the other events."""
    kind = event.get("event")
    if kind == "epoch":
        stage = event["stage"]
        out = {f"{stage}/{name}": value for name, value in event["losses"].items()}
        out[f"{stage}/lr"] = event["lr"]
        if event.get("images_per_second") is not None:
            out[f"{stage}/images_per_second"] = event["images_per_second"]
        return "epoch", out
    if kind == "task":
        out = {f"accuracy/{k}": event[k] for k in ("top1", "top5", "old", "new") if event.get(k) is not None}
        out.update({f"accuracy/classifier/{name}": v for name, v in event.get("classifiers", {}).items()})
        return "task", out
    if kind == "end":
        return "end", {f"final/{k}": event[k] for k in ("average_incremental_accuracy", "last_accuracy")
                       if event.get(k) is not None}
    return None


class TensorBoardTracker:
    def __init__(self, run_dir):
        module = _require("torch.utils.tensorboard", "log.tensorboard", "tensorboard")
        self.writer = module.SummaryWriter(log_dir=str(run_dir / "tensorboard"))
        self.steps = {"epoch": 0, "task": 0, "end": 0}

    def write(self, event: dict) -> None:
        found = scalars(event)
        if found is None:
            return
        kind, values = found
        self.steps[kind] += 1
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, self.steps[kind])

    def close(self) -> None:
        self.writer.close()


class WandbTracker:
    def __init__(self, run_dir, options: dict, config: dict):
        self.wandb = _require("wandb", "log.wandb", "wandb")
        self.run = self.wandb.init(**{"dir": str(run_dir), "config": config, **options})

    def write(self, event: dict) -> None:
        found = scalars(event)
        if found is not None:
            self.run.log(found[1])

    def close(self) -> None:
        self.run.finish()


def open_trackers(log_cfg, run_dir, config: dict) -> list:
    trackers = []
    if log_cfg.tensorboard:
        trackers.append(TensorBoardTracker(run_dir))
    if log_cfg.wandb:
        trackers.append(WandbTracker(run_dir, dict(log_cfg.wandb), config))
    return trackers
