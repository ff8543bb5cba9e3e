"""Tiny experiments on generated data for method and engine tests."""

from ltcil.config import load_config
from ltcil.engine.runner import Experiment

TINY = [
    "data.name=synthetic", "data.num_classes=6", "data.images_per_class=24", "data.image_size=8",
    "scenario.increment=2", "backbone.name=convnet", "train.epochs=1", "train.batch_size=16",
    "train.lr=0.05", "train.progress=false", "memory.size=12", "eval.batch_size=64",
]


def tiny_config(*overrides):
    return load_config(None, TINY + list(overrides))


def run_tiny(run_dir, *overrides):
    return Experiment(tiny_config(*overrides), run_dir).run()
