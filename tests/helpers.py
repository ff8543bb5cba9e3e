"""Tiny experiments on generated data for method and engine tests."""

from ltcil import registry
from ltcil.config import load_config
from ltcil.engine.runner import Experiment

TINY = [
    "data.name=synthetic", "data.num_classes=6", "data.images_per_class=24", "data.image_size=8",
    "scenario.increment=2", "backbone.name=convnet", "train.epochs=1", "train.batch_size=16",
    "train.lr=0.05", "train.progress=false", "memory.size=12", "eval.batch_size=64",
    "log.report=never",  # the end-of-run report has its own tests; drawing it for every tiny run costs seconds
]

# what some methods need beyond TINY to run 3 tasks quickly
METHOD_OVERRIDES = {
    "bic": ["method.bias_epochs=2"],
    "eeil": ["method.finetune_epochs=2"],
    "podnet": ["backbone.name=resnet20", "method.proxies=2", "method.finetune_epochs=1"],
    "lucir": ["backbone.last_relu=false", "method.cbf_epochs=2"],
    "ccsi": ["memory.size=0", "scenario.val_fraction=0.2", "method.synth_per_class=4", "method.synth_batch_size=4",
             "method.synth_iterations=3", "method.synth_warmup=1", "method.synth_jitter=1"],
    "sbcl": ["method.linear_epochs=3", "method.warmup_epochs=0", "method.recluster_every=1", "method.delta=4"],
    "simplecil": ["backbone.name=vit_micro", "backbone.patch_size=4", "memory.size=0"],
    "ranpac": ["backbone.name=vit_micro", "backbone.patch_size=4", "memory.size=0", "method.projection=64"],
    "aper": ["backbone.name=vit_micro", "backbone.patch_size=4", "memory.size=0", "method.bottleneck=8"],
    "slca": ["backbone.name=vit_micro", "backbone.patch_size=4", "memory.size=0", "method.ca_epochs=2",
             "method.ca_samples=8", "head.init=trunc_normal"],
    "ease": ["backbone.name=vit_micro", "backbone.patch_size=4", "memory.size=0", "method.bottleneck=8"],
    "coda_prompt": ["backbone.name=vit_micro", "backbone.patch_size=4", "memory.size=0", "method.components=6",
                    "method.length=2", "method.layers=[0, 1]", "train.optimizer=adam", "train.lr=0.002"],
    "dualprompt": ["backbone.name=vit_micro", "backbone.patch_size=4", "memory.size=0", "method.pool_size=4",
                   "method.g_layers=[0]", "method.e_layers=[1]", "method.g_length=2", "method.e_length=2",
                   "train.optimizer=adam", "train.lr=0.002"],
    "l2p": ["backbone.name=vit_micro", "backbone.patch_size=4", "memory.size=0", "method.pool_size=6",
            "method.top_k=2", "method.length=2", "train.optimizer=adam", "train.lr=0.002"],
}


def shipped_methods() -> list[str]:
    """The methods ltcil ships, without any a test module registered in this process (collection order
    must not change which methods a test runs)."""
    return [name for name in registry.available("method")
            if registry.get("method", name).__module__.startswith("ltcil.")]


def tiny_config(*overrides):
    return load_config(None, TINY + list(overrides))


def run_tiny(run_dir, *overrides):
    return Experiment(tiny_config(*overrides), run_dir).run()
