"""Typed, strictly validated configuration: YAML file + dotted overrides -> Config.

Every section is a dataclass; an unknown key fails with the key, the file and the closest valid key;
a wrong type or an out-of-range value fails naming the key and the value.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import io
import math
import re
import types
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import yaml

from .errors import ConfigError, LtcilWarning
from .files import read_text


@dataclass
class DataConfig:
    name: str = "digits"  # digits, cifar10, cifar100, medmnist, imagelist, npz, synthetic
    root: str = "data"  # folder (or file) holding the dataset; CIFAR is downloaded here when missing
    download: bool = True  # fetch official archives when absent (only CIFAR has an official URL here)
    subset: str = ""  # medmnist: which one (breastmnist, bloodmnist, ...): reads ROOT/<subset>.npz
    image_size: int = 0  # resize once at load (imagelist needs it; 0 keeps the native size)
    normalize: bool = True  # standardise each channel by the training split's mean and std; false feeds pixels
    # in [0, 1] as they are (Avalanche's iCaRL baseline)
    mean: list = field(default_factory=list)  # with std: fixed per-channel statistics (pixels in [0, 1]) instead of
    std: list = field(default_factory=list)  # the training split's, e.g. a reference code's constants
    train_list: str = ""  # imagelist: "<relpath> <label>" lines, relative to root (empty: class folders)
    val_list: str = ""
    test_list: str = ""
    class_names: str = ""  # imagelist: a names file under root: one name per line in label order, or "<id> <name>"
    # lines keyed by class folder / WordNet id (Tiny-ImageNet's words.txt, found by itself when present)
    # imagelist storage: memory decodes every image once at load; stream decodes each batch in worker processes
    # (data too large to hold decoded: ImageNet); auto streams when the decoded images would exceed stream_above_gb
    storage: str = "auto"
    stream_above_gb: float = 8.0
    workers: int = -1  # streamed decoding processes (-1: one per core; 0: decode in the training process)
    cache: str = "auto"  # streamed: a packed cache of the images (auto: under $LTCIL_CACHE or ~/.cache/ltcil,
    # built on first use; off: read the image files; or a folder)
    pack_side: int = 0  # short side of the packed images (0: 8/7 of image_size, 256 for 224)
    pack_quality: int = 90  # JPEG quality of the packed images
    max_bad_images: int = 0  # unreadable images to skip (listed in the run folder) before the run stops
    num_classes: int = 10  # synthetic only: classes to generate
    images_per_class: int = 30  # synthetic only: training images per class (a quarter as many for test)


@dataclass
class ScenarioConfig:
    order: Union[str, list] = "natural"  # natural | seed:N (seed:1993 = iCaRL order) | explicit list of ids
    initial: int = 0  # classes in the first task (0: same as increment)
    increment: Union[int, list] = 0  # classes per later task, or a list of task sizes; 0 = a single task
    imbalance_factor: float = 1.0  # n_max / n_min of training images per class; 1 = balanced
    longtail_profile: str = "exp"  # exp: n_i = floor(n_max * IF^(-i/(C-1))); step: half the classes get n_max/IF;
    # random: n_i = floor(n_max * IF^(-r_i)), r_i ~ U(0, 1) per class (the thesis profile of
    # COAOX/Class_incremental_learning_in_long_tail, IF = R)
    longtail_by: str = "class_id"  # class_id: i = original id; arrival: i = arrival position
    longtail_images: str = "random"  # which images a class keeps: random (a subset drawn with scenario.seed) |
    # ldam_drw (numpy.random.seed(0), then per class in id order its indices shuffled and the first n kept:
    # LDAM-DRW's IMBALANCECIFAR, which Long-Tailed-CIL, DGR and SBCL reuse, all with seed 0)
    val_fraction: float = 0.0  # per-class share of training images held out as validation (never trained on)
    val_rule: str = "per_class"  # val_fraction's split: per_class (each class gives round(fraction * n), at least
    # one, drawn with scenario.seed) | facil (FACIL's, as Long-Tailed-CIL and DGR run it: Python's random seeded
    # with scenario.seed, and a class whose share rounds to 0 gives nothing while its task's lowest-id class gives
    # one more image: scenarios/facil.py)
    val_per_class: int = 0  # balanced validation: this many images per class, first from the images the
    # long-tail subsampling left out (so the training profile is untouched), else carved from training images
    seed: int = 0  # scenario randomness (long-tail subsampling, validation split), separate from training
    max_tasks: int = 0  # run only the first N tasks of the scenario (a quick check of a long one); 0: all


@dataclass
class BackboneConfig:
    name: str = "resnet32"
    block: str = "basic"  # resnet_cifar: basic | bottleneck
    shortcut: str = "conv"  # resnets: conv (1x1 conv + BN where the shape changes) | pad (parameter-free, option A)
    last_relu: bool = True  # resnets: False ends the last block without its ReLU (LUCIR; iCaRL's and Avalanche's net)
    block_relu: bool = True  # resnets: False ends every block without its ReLU (Long-Tailed-CIL's resnet32_podnet,
    # whose _make_layer hands last_relu=False to all blocks of all stages)
    conv_init: str = "fan_out"  # resnets: He-normal conv weights scaled by fan_out (torchvision, PyCIL) | fan_in
    # (Avalanche's initialize_icarl_net)
    norm: str = "bn"  # bn | cn: every BatchNorm2d becomes Continual Normalization (GroupNorm, then BN) | gn
    norm_groups: int = 4  # cn / gn: groups of the GroupNorm (CCSI's gn_size default)
    # pre-trained models (vit.py, timm_backbone.py): a name may carry timm's pretrained tag
    # (vit_base_patch16_224.augreg_in21k); names ltcil does not build are timm's (needs `pip install timm`)
    pretrained: bool = False  # the name's weights from the Hugging Face hub cache (never downloaded by ltcil)
    checkpoint: str = ""  # weights on disk (.safetensors / .pth state dict with timm's keys) instead
    patch_size: int = 0  # ViTs: 0 = the architecture's (16); smaller for small images
    input_size: int = 0  # ViTs: the size images are resized to on the device; 0 = 224 when pretrained, else the
    # data's (rounded up to a patch)


@dataclass
class HeadConfig:
    init: str = "uniform"  # new rows of the growable linear head: uniform (nn.Linear's default) | kaiming_uniform
    # (U(+-sqrt(3/fan_in)), bias 0: PyCIL's head) | kaiming_normal (N(0, 1/fan_in), bias 0: Avalanche's IcarlNet) |
    # trunc_normal (N(0, 0.02^2) cut at +-2, bias 0: timm's ViT head)


@dataclass
class MemoryConfig:
    size: int = 0  # total exemplars, divided among seen classes (0 = no memory unless per_class is set)
    per_class: int = 0  # fixed exemplars per class (takes precedence over size when > 0)
    selection: str = "herding"  # herding | random | closest


@dataclass
class FirstTaskConfig:
    """Settings of the first task where they differ from the later tasks' (PyCIL: 200 epochs and weight decay
    5e-4 first, then 170 and 2e-4); each unset one is the train section's."""
    epochs: int = 0  # 0: train.epochs
    lr: float = 0.0  # 0: train.lr
    milestones: Optional[list] = None  # None: train.milestones
    weight_decay: Optional[float] = None  # None: train.weight_decay
    batch_size: int = 0  # 0: train.batch_size


# train.initial_<key> before the first_task section existed: still read, with a warning naming the new key
DEPRECATED_TRAIN_KEYS = {f"initial_{k}": k for k in ("epochs", "lr", "milestones", "weight_decay", "batch_size")}


@dataclass
class TrainConfig:
    epochs: int = 10
    first_task: FirstTaskConfig = field(default_factory=FirstTaskConfig)
    batch_size: int = 128
    sampler: str = "instance"  # instance | class_balanced | sqrt: how an epoch visits images (data/sampling.py)
    drop_last: bool = False  # drop an epoch's trailing partial batch (DataLoader(drop_last=True): CODA-Prompt's code)
    loss: str = "ce"  # ce | balanced_softmax | class_balanced: the classification term of methods built on CE
    cb_beta: float = 0.9999  # class_balanced: effective-number weights (Cui et al. 2019)
    lr: float = 0.1
    optimizer: str = "sgd"  # sgd | adam | adamw
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"  # constant | step | cosine | quarter_cosine (CODA-Prompt's) | cosine_to_zero (the
    # last epoch at lr 0: Balanced Softmax's code) | cosine_skip_first (stepped before each epoch: Kang et al.'s
    # classifier-balancing code); engine/optim.py
    milestones: list = field(default_factory=list)  # step schedule: epochs where lr is multiplied by gamma
    gamma: float = 0.1
    warmup_epochs: int = 0  # linear warm-up before the schedule
    warmup_from: Optional[float] = None  # the warm-up's first lr factor, rising linearly to 1 at warmup_epochs
    # (None: (e+1)/(W+1)); Balanced Softmax's code warms up from 0.5 (its base lr 0.05 to its warm-up lr 0.1)
    schedule_unit: str = "step"  # step: warm-up and cosine move every step (milestones stay whole epochs) |
    # epoch: the lr changes once per epoch (as the released LDAM-DRW and SBCL code)
    crop_padding: int = 4  # random crop with this zero padding (0 disables)
    flip: bool = True  # random horizontal flip
    color_jitter: Union[float, list] = 0.0  # brightness/contrast/saturation jitter strength (0 disables), or
    # [brightness, contrast, saturation] strengths ([0.247, 0, 0]: PyCIL's ColorJitter(brightness=63/255))
    resized_crop: bool = False  # random resized crop (area crop_scale) instead of padded crop
    crop_scale: list = field(default_factory=lambda: [0.35, 1.0])  # area range of the resized crop (ImageNet: 0.08-1)
    resized_crop_padding: int = 0  # zero padding added before the resized crop (FACIL-based code, e.g.
    # Long-Tailed-CIL and DGR on CIFAR: Pad(4) then RandomResizedCrop(32) with scale 0.08-1); in-memory data only
    resized_crop_style: str = "affine"  # affine: a continuous box (sides clamped to the image) resampled by one
    # bilinear grid_sample | torchvision: torchvision's RandomResizedCrop on PIL images (integer box, up to ten
    # tries, Pillow's antialiased bilinear resize rounded to 8 bits), as the FACIL-based reference code crops
    autoaugment: str = "none"  # none | cifar10: AutoAugment's CIFAR-10 policy after crop and flip (Cubuk et al.
    # 2019; the CIFAR-LT recipe of Balanced Softmax's code, with cutout: 16)
    cutout: int = 0  # Cutout (DeVries & Taylor 2017): a square of zeros of this side per image, before normalising
    amp: bool = True  # bf16 autocast on GPU (ignored on CPU, where it is ~10x slower)
    compile: str = "off"  # torch.compile of the training step: off | default | reduce-overhead (CUDA graphs) |
    # max-autotune | eager (trace only: checks that a step compiles)
    channels_last: bool = True  # NHWC activations: +20% training, +50% eval on CPU; faster convs on GPU
    threads: int = 0  # CPU threads for torch (0: all cores)
    checkpoint_minutes: float = 10.0  # inside a task's main training, save partial.pt this often (0: only per task)
    progress: bool = True  # tqdm progress bars


@dataclass
class EvalConfig:
    batch_size: int = 256  # larger batches fall out of CPU cache (ResNet-32: 700 img/s at 256, 500 at 1024)
    many_shot: int = 100  # classes with more training images than this are "many-shot"
    few_shot: int = 20  # classes with fewer training images than this are "few-shot"
    shot_split: str = "absolute"  # absolute: the two thresholds above | quantile: thirds of the training counts
    headline: str = ""  # the classifier reported as "accuracy" (e.g. linear for iCaRL); "": the method's own, or
    # two_stage when that stage is on


@dataclass
class LogConfig:
    tensorboard: bool = False  # scalars to RUN_DIR/tensorboard (needs the tensorboard package)
    wandb: dict = field(default_factory=dict)  # non-empty: wandb.init(**this), e.g. {project: ltcil, mode: offline}
    report: str = "auto"  # report.html + report.md in the run folder at the end: auto (when matplotlib is
    # installed) | always (fail early without it) | never


@dataclass
class TwoStageConfig:
    """Liu et al. (ECCV 2022) second stage after every task, for any method with a linear or cosine head."""
    enabled: bool = False
    epochs: int = 30  # Liu et al.'s code: 30 epochs per task
    lr: float = 0.0  # 0: the task's train.lr (their code re-uses the stage-1 lr), cosine to 0
    scale_lr_factor: float = 0.1  # their code: the weight-scaling layer learns at lr / 10
    weight_decay: Optional[float] = None  # None: train.weight_decay
    batch_size: int = 0  # 0: train.batch_size
    sampler: str = "class_balanced"  # class_balanced | sqrt | instance
    head: str = "new"  # new: the task's own rows (their LUCIR/PODNet code) | all | none: only the scales
    features: str = "cached"  # cached: un-augmented features computed once per task (fast) | augmented: the
    # training augmentation through the frozen backbone at every step (their code's loader)


@dataclass
class GVAlignConfig:
    """Classifier alignment on pseudo-features from class prototypes and one global covariance (plugins/gvalign.py,
    after Kalla & Biswas 2024), after every task, for any method with a linear or cosine head and a memory."""
    enabled: bool = False
    # pooled: ltcil's reading of the paper (pooled within-class covariance each task, a re-trained copy of the head);
    # released: the authors' code (JAYATEJAK/GVAlign, lucir_gvalign_2stage.py; see plugins/gvalign.py)
    variant: str = "pooled"
    samples_per_class: int = 256  # pooled: pseudo-features drawn per seen class
    epochs: int = 10  # pooled
    lr: float = 0.01
    batch_size: int = 256  # pooled
    shrinkage: float = 0.1  # pooled: of the pooled covariance towards its mean variance (tail classes: few exemplars)
    steps: int = 100  # released: steps of one pseudo-feature per seen class each


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    scenario: ScenarioConfig = field(default_factory=ScenarioConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    method: dict = field(default_factory=lambda: {"name": "finetune"})  # name + that method's own options
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    two_stage: TwoStageConfig = field(default_factory=TwoStageConfig)
    gvalign: GVAlignConfig = field(default_factory=GVAlignConfig)
    log: LogConfig = field(default_factory=LogConfig)
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


_CHOICES = {
    "scenario.longtail_profile": ("exp", "step", "random"),
    "scenario.longtail_by": ("class_id", "arrival"),
    "scenario.longtail_images": ("random", "ldam_drw"),
    "scenario.val_rule": ("per_class", "facil"),
    "memory.selection": ("herding", "random", "closest"),
    "train.optimizer": ("sgd", "adam", "adamw"),
    "train.schedule": ("constant", "step", "cosine", "quarter_cosine", "cosine_to_zero", "cosine_skip_first"),
    "train.schedule_unit": ("step", "epoch"),
    "train.sampler": ("instance", "class_balanced", "sqrt"),
    "train.loss": ("ce", "balanced_softmax", "class_balanced"),
    "train.compile": ("off", "default", "reduce-overhead", "max-autotune", "eager"),
    "backbone.block": ("basic", "bottleneck"),
    "backbone.shortcut": ("conv", "pad"),
    "backbone.conv_init": ("fan_out", "fan_in"),
    "head.init": ("uniform", "kaiming_uniform", "kaiming_normal", "trunc_normal"),
    "backbone.norm": ("bn", "cn", "gn"),
    "two_stage.sampler": ("instance", "class_balanced", "sqrt"),
    "gvalign.variant": ("pooled", "released"),
    "two_stage.head": ("new", "all", "none"),
    "two_stage.features": ("cached", "augmented"),
    "log.report": ("auto", "always", "never"),
    "eval.shot_split": ("absolute", "quantile"),
    "data.storage": ("auto", "memory", "stream"),
    "train.autoaugment": ("none", "cifar10"),
    "train.resized_crop_style": ("affine", "torchvision"),
}

_NON_NEGATIVE = {
    "scenario.initial", "scenario.val_per_class", "scenario.max_tasks", "memory.size", "memory.per_class",
    "train.first_task.epochs", "train.first_task.batch_size", "train.lr", "train.first_task.lr", "train.momentum",
    "train.weight_decay",
    "train.warmup_epochs", "train.crop_padding", "train.resized_crop_padding", "train.cutout",
    "train.checkpoint_minutes", "train.threads", "data.image_size", "data.pack_side", "data.max_bad_images",
    "scenario.seed", "seed",
    "eval.few_shot",
    "eval.many_shot", "two_stage.lr", "two_stage.batch_size", "two_stage.scale_lr_factor",
    "backbone.patch_size", "backbone.input_size",
}
_POSITIVE = {"backbone.norm_groups", "train.epochs", "train.batch_size", "eval.batch_size", "train.gamma",
             "gvalign.samples_per_class", "gvalign.epochs", "gvalign.lr", "gvalign.batch_size", "gvalign.steps",
             "data.num_classes", "data.images_per_class", "two_stage.epochs", "data.stream_above_gb"}


MAX_CONFIG_BYTES = 1_000_000  # a config file, and all command-line overrides together (ltcil's own: a few KB)
SHORT = 200  # values longer than this are cut in messages


def short(value, limit: int = SHORT) -> str:
    """repr(value), cut to about `limit` characters with the full length named: a 50 MB value pasted into a
    config is one line of an error, not 50 MB of terminal."""
    text = repr(value)
    if len(text) <= limit:
        return text
    size = f"{len(value):,} items" if isinstance(value, (list, dict, tuple)) else f"{len(text):,} characters"
    return f"{text[:limit - 20]}...({size})"


def _megabytes(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 100_000 else f"{n:,} bytes"


_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")
INT_LIMIT = 2**63  # integer keys become torch / numpy int64 values
SEED_LIMIT = 2**32  # numpy's RandomState and torch's seeds take 0 <= seed < 2^32
_SEEDS = ("seed", "scenario.seed")


class _BadValue(ConfigError):
    """A value of the right type that no key accepts (NaN, out of range)."""


def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp, key: str, where: str):
    """Check `value` against annotation `tp`; ints are accepted where floats are expected."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        for option in typing.get_args(tp):
            try:
                return _coerce(value, option, key, where)
            except _BadValue:
                raise  # the right type, a wrong value: that is the error to report
            except ConfigError:
                continue
        names = " or ".join(_type_name(t) for t in typing.get_args(tp))
        raise ConfigError(f"{where}{key}: expected {names}, got {short(value)} ({type(value).__name__}).")
    if tp is type(None):
        if value is None:
            return None
    elif tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in _YAML11_BOOLS:  # yes / no / on / off, as YAML 1.1 read them
            return _YAML11_BOOLS[value.lower()]
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            if not -INT_LIMIT <= value < INT_LIMIT:
                raise _BadValue(f"{where}{key}: {short(value)} is out of range (|value| < 2^63).")
            return value
    elif tp is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str) and _FLOAT.fullmatch(value.strip()):
            number = float(value)  # YAML 1.1 reads 1e-3 (no dot) as a string
        if number is not None:
            if not math.isfinite(number):
                raise _BadValue(f"{where}{key}: {short(value)} is not a finite number.")
            return number
    elif tp is str:
        if isinstance(value, str):
            return value
    elif tp is list or origin is list:
        if isinstance(value, list):
            return value
    elif tp is dict or origin is dict:
        if isinstance(value, dict):
            return value
    raise ConfigError(f"{where}{key}: expected {_type_name(tp)}, got {short(value)} ({type(value).__name__}).")


def unknown_key_error(key: str, valid, where: str) -> ConfigError:
    close = difflib.get_close_matches(key.rsplit(".", 1)[-1], list(valid), n=1)
    prefix = key.rsplit(".", 1)[0] + "." if "." in key else ""
    hint = f" Did you mean {prefix + close[0]!r}?" if close else ""
    return ConfigError(f"{where}unknown config key {short(key)}.{hint} Valid keys here: {', '.join(sorted(valid))}.")


def build_dataclass(cls, values: dict, prefix: str, where: str):
    """Instantiate dataclass `cls` from a dict, rejecting unknown keys and wrong types."""
    if not isinstance(values, dict):
        raise ConfigError(f"{where}{prefix or 'config'}: expected a mapping, got {short(values)}.")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        if key not in fields:
            raise unknown_key_error(full, fields, where)
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = build_dataclass(tp, value if value is not None else {}, full, where)
        else:
            kwargs[key] = _coerce(value, tp, full, where)
    return cls(**kwargs)


def _validate_ranges(cfg: Config, where: str) -> None:
    for dotted, choices in _CHOICES.items():
        value = _get(cfg, dotted)
        if value not in choices:
            raise ConfigError(f"{where}{dotted}: {short(value)} is not one of {', '.join(choices)}.")
    for dotted in _NON_NEGATIVE:
        value = _get(cfg, dotted)
        if value < 0:
            raise ConfigError(f"{where}{dotted}: {short(value)} must be >= 0.")
    for dotted in _POSITIVE:
        value = _get(cfg, dotted)
        if value <= 0:
            raise ConfigError(f"{where}{dotted}: {short(value)} must be > 0.")
    for dotted in _SEEDS:
        if not 0 <= _get(cfg, dotted) < SEED_LIMIT:
            raise ConfigError(f"{where}{dotted}: {_get(cfg, dotted)!r} must be in 0 .. 2^32 - 1.")
    if cfg.train.lr <= 0:
        raise ConfigError(f"{where}train.lr: {short(cfg.train.lr)} must be > 0.")
    if cfg.scenario.imbalance_factor < 1:
        raise ConfigError(
            f"{where}scenario.imbalance_factor: {short(cfg.scenario.imbalance_factor)} must be >= 1 "
            "(1 = balanced, 100 = CIFAR-100-LT)."
        )
    scale = cfg.train.crop_scale
    if not (len(scale) == 2 and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                                    for v in scale) and 0 < scale[0] <= scale[1] <= 1):
        raise ConfigError(f"{where}train.crop_scale: {short(scale)} must be [low, high] with 0 < low <= high <= 1.")
    stats = (cfg.data.mean, cfg.data.std)
    if any(stats) and not (len(stats[0]) == len(stats[1]) > 0 and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in stats[0] + stats[1])
            and min(stats[1]) > 0):
        raise ConfigError(f"{where}data.mean / data.std: {short(cfg.data.mean)} / {short(cfg.data.std)} must be "
                          "two lists of the same length (one value per channel), the std values > 0; leave both empty "
                          "to use the training split's statistics.")
    if cfg.data.workers < -1:
        raise ConfigError(f"{where}data.workers: {short(cfg.data.workers)} must be >= 0, or -1 for one per core.")
    if not 1 <= cfg.data.pack_quality <= 95:
        raise ConfigError(f"{where}data.pack_quality: {short(cfg.data.pack_quality)} must be in 1 .. 95 (JPEG quality).")
    if not 0 <= cfg.gvalign.shrinkage <= 1:
        raise ConfigError(f"{where}gvalign.shrinkage: {short(cfg.gvalign.shrinkage)} must be in [0, 1].")
    if not 0 <= cfg.scenario.val_fraction < 1:
        raise ConfigError(f"{where}scenario.val_fraction: {short(cfg.scenario.val_fraction)} must be in [0, 1).")
    inc = cfg.scenario.increment
    if isinstance(inc, int) and inc < 0:
        raise ConfigError(f"{where}scenario.increment: {short(inc)} must be >= 0.")
    if isinstance(inc, list) and not all(isinstance(v, int) and v > 0 for v in inc):
        raise ConfigError(f"{where}scenario.increment: every task size in {short(inc)} must be a positive integer.")
    order = cfg.scenario.order
    if isinstance(order, str) and order != "natural":
        if not order.startswith("seed:") or not order[5:].isdigit() or int(order[5:]) >= SEED_LIMIT:
            raise ConfigError(
                f"{where}scenario.order: {short(order)} is not valid; use 'natural', 'seed:N' with 0 <= N < 2^32 "
                "(seed:1993 gives the iCaRL order) or an explicit list of class ids."
            )
    if isinstance(order, list) and not all(isinstance(v, int) and not isinstance(v, bool) for v in order):
        raise ConfigError(f"{where}scenario.order: an explicit order must be a list of integer class ids.")
    jitter = cfg.train.color_jitter
    values = jitter if isinstance(jitter, list) else [jitter]
    if (isinstance(jitter, list) and len(jitter) != 3) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0 for v in values):
        raise ConfigError(f"{where}train.color_jitter: {short(jitter)} must be a strength >= 0 or a list of three "
                          "(brightness, contrast, saturation), e.g. [0.247, 0, 0].")
    first = cfg.train.first_task
    for key, value in (("milestones", cfg.train.milestones), ("first_task.milestones", first.milestones)):
        if value is not None and not all(isinstance(m, int) and not isinstance(m, bool) and m > 0 for m in value):
            raise ConfigError(f"{where}train.{key}: {short(value)} must be a list of positive epoch numbers.")
    if cfg.train.first_task.weight_decay is not None and cfg.train.first_task.weight_decay < 0:
        raise ConfigError(f"{where}train.first_task.weight_decay: {short(cfg.train.first_task.weight_decay)} must be >= 0.")
    start = cfg.train.warmup_from
    if start is not None and (isinstance(start, bool) or not isinstance(start, (int, float)) or not 0 <= start <= 1):
        raise ConfigError(f"{where}train.warmup_from: {short(start)} must be a factor in [0, 1] (or null).")
    if cfg.eval.few_shot > cfg.eval.many_shot:
        raise ConfigError(f"{where}eval.few_shot ({cfg.eval.few_shot}) must not exceed eval.many_shot.")
    if not (cfg.device in ("auto", "cpu", "cuda") or cfg.device.startswith("cuda:")):
        raise ConfigError(f"{where}device: {short(cfg.device)} is not one of auto, cpu, cuda, cuda:N.")
    if not isinstance(cfg.method.get("name"), str):
        raise ConfigError(f"{where}method.name: required, the name of a registered method (see `ltcil list methods`).")


def _get(cfg, dotted: str):
    obj = cfg
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def parse_override(text: str) -> tuple[str, Any]:
    """'train.epochs=2' -> ('train.epochs', 2); values are parsed as YAML scalars/lists."""
    if "=" not in text:
        raise ConfigError(f"override {short(text)} is not of the form key=value (e.g. train.epochs=2).")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {short(text)} has an empty key.")
    try:
        value = parse_yaml(raw) if raw.strip() else ""
    except yaml.constructor.ConstructorError as exc:
        raise ConfigError(f"override {short(text)}: {exc.problem}.") from None
    except yaml.YAMLError:
        value = raw
    return key, value


def apply_override(tree: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"override {key}: {short(part)} is not a section.")
        node = child
    node[parts[-1]] = value


class StrictLoader(yaml.SafeLoader):
    """YAML without surprises: a key given twice in one mapping is an error naming it and its line (PyYAML
    keeps the last silently), and aliases are refused (nested aliases expand exponentially: a few hundred bytes
    can hold gigabytes)."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.constructor.ConstructorError(
                None, None, f"YAML aliases (*{event.anchor}) are not supported in ltcil configs; write the value out",
                event.start_mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {short(key)} appears twice in one section (first on line {seen[key] + 1})",
                    key_node.start_mark)
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


# YAML 1.2 booleans only (true / false): YAML 1.1 also reads on / off / yes / no as booleans, which turned
# `train.compile: off` and `data.cache: off` into False; bool keys still accept those words (_coerce).
_YAML11_BOOLS = {"yes": True, "no": False, "on": True, "off": False, "y": True, "n": False}
StrictLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
StrictLoader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                                   list("tTfF"))


def parse_yaml(text: str, name: str = "<override>"):
    stream = io.StringIO(text)
    stream.name = name  # named in PyYAML's error marks
    return yaml.load(stream, Loader=StrictLoader)


def read_yaml(path: Path) -> dict:
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist (see `ltcil list configs` for the shipped ones).")
    try:
        tree = parse_yaml(read_text(path, "config file", ConfigError, max_bytes=MAX_CONFIG_BYTES), str(path)) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections, got {type(tree).__name__}.")
    return tree


def migrate(tree: dict, where: str = "", warn: bool = True) -> dict:
    """The config tree with deprecated keys moved to their new place (train.initial_epochs ->
    train.first_task.epochs, ...), each named in a warning; both forms at once are an error."""
    train = tree.get("train")
    if not isinstance(train, dict) or not any(k in DEPRECATED_TRAIN_KEYS for k in train):
        return tree
    train = dict(train)
    first = dict(train.get("first_task") or {})
    for old, new in DEPRECATED_TRAIN_KEYS.items():
        if old not in train:
            continue
        if new in first:
            raise ConfigError(f"{where}train.{old} and train.first_task.{new} are both set; keep "
                              f"train.first_task.{new}.")
        first[new] = train.pop(old)
        if warn:
            warnings.warn(LtcilWarning(f"{where}train.{old} is deprecated: use train.first_task.{new} (same "
                                       "meaning); it was read as that."))
    train["first_task"] = first
    return {**tree, "train": train}


def from_dict(tree: dict, where: str = "") -> Config:
    """Build and validate a Config; `where` (e.g. 'configs/x.yaml: ') prefixes every error."""
    tree = migrate(dict(tree), where)
    method = tree.get("method", {"name": "finetune"})
    if isinstance(method, str):
        method = {"name": method}
    if not isinstance(method, dict):
        raise ConfigError(f"{where}method: expected a mapping with 'name' and the method's options.")
    tree["method"] = {"name": "finetune", **method} if "name" not in method else dict(method)
    cfg = build_dataclass(Config, tree, "", where)
    _validate_ranges(cfg, where)
    return cfg


def deep_merge(base: dict, top: dict) -> dict:
    merged = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def read_with_base(path: Path, chain: tuple = ()) -> dict:
    """A config may start from another: `base: icarl_resnet32_cifar100_b0inc10` (a shipped name or a path
    relative to the file); its own keys override the base's, section by section."""
    tree = read_yaml(path)
    base = tree.pop("base", None)
    if base is None:
        return tree
    if not isinstance(base, str):
        raise ConfigError(f"{path}: base: expected the name or path of another config, got {short(base)}.")
    candidate = path.parent / base
    base_path = candidate if candidate.exists() else resolve_config_path(base)
    if base_path.resolve() in chain:
        raise ConfigError(f"{path}: base: {short(base)} includes itself (cycle: {' -> '.join(map(str, chain))}).")
    parent = read_with_base(base_path, chain + (path.resolve(),))
    # Another method's options would not validate: a config naming a new method starts its section afresh.
    new_method = tree.get("method", {}).get("name") if isinstance(tree.get("method"), dict) else None
    if new_method and isinstance(parent.get("method"), dict) and parent["method"].get("name") != new_method:
        parent = {k: v for k, v in parent.items() if k != "method"}
    return deep_merge(parent, tree)


BY_METHOD = "by_method"


def _method_name(tree: dict) -> Any:
    """The method a config tree runs (from_dict's reading: a name, a mapping with one, or finetune)."""
    method = tree.get("method")
    if isinstance(method, dict):
        return method.get("name", "finetune")
    return "finetune" if method is None else method


def split_by_method(tree: dict, where: str = "", warn: bool = True) -> tuple[dict, dict]:
    """A config's `by_method` block taken out of it and checked: `by_method: {podnet: {train: {lr: 0.1}}}`
    holds sections merged over the file's own when the run's method (after the command line's overrides) is
    that one, as the quick start gives PODNet the schedule its classifier needs. Each block must validate
    merged over the file, and may name only its own method."""
    tree = dict(tree)
    blocks = tree.pop(BY_METHOD, None)
    if blocks is None:
        return tree, {}
    example = "by_method: {podnet: {train: {lr: 0.1, epochs: 60}}}"
    if not isinstance(blocks, dict):
        raise ConfigError(f"{where}{BY_METHOD}: expected a mapping of method names to config sections, e.g. "
                          f"{example}; got {blocks!r}.")
    checked = {}
    for name, block in blocks.items():
        key = f"{BY_METHOD}.{name}"
        if not isinstance(name, str) or not isinstance(block, dict):
            raise ConfigError(f"{where}{key}: expected a method name mapping to config sections, e.g. {example}.")
        block = migrate(block, f"{where}{key}.", warn)
        method = block.get("method", {})
        named = method.get("name", name) if isinstance(method, dict) else method
        if named != name:
            raise ConfigError(f"{where}{key}.method: names method {named!r}; a by_method block may set only its "
                              f"own method's ({name!r}) options.")
        if BY_METHOD in block or "base" in block:
            raise ConfigError(f"{where}{key}: holds config sections only, not {BY_METHOD!r} or 'base'.")
        from_dict(deep_merge(tree, block), f"{where}{key}: ")
        checked[name] = block
    return tree, checked


def method_block_items(block: dict, prefix: str = "") -> dict:
    """The dotted keys a by_method block sets (method.name aside), with their values."""
    items = {}
    for k, v in block.items():
        dotted = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            items.update(method_block_items(v, dotted + "."))
        elif dotted != "method.name":
            items[dotted] = v
    return items


def _chosen_block(tree: dict, blocks: dict, overrides) -> Optional[dict]:
    """The by_method block of the method the run will have once the overrides are applied, if any."""
    if not blocks:
        return None
    probe = copy.deepcopy(tree)
    for text in overrides:
        apply_override(probe, *parse_override(text))
    return blocks.get(_method_name(probe))


def method_defaults_applied(path: Optional[str | Path], overrides: list[str] = ()) -> dict:
    """The dotted keys (with values) that `path`'s by_method block sets for the run `load_config(path, overrides)`
    gives (empty without a block for its method), so the command line can say where a setting came from."""
    if path is None:
        return {}
    path = resolve_config_path(path)
    tree, blocks = split_by_method(migrate(read_with_base(path), warn=False), f"{path}: ", warn=False)
    block = _chosen_block(tree, blocks, overrides)
    return method_block_items(block) if block is not None else {}


def load_config(path: Optional[str | Path], overrides: list[str] = ()) -> Config:
    """YAML file (or the built-in defaults when None), merged with its by_method block for the run's method,
    then the dotted overrides (which win over both) -> validated Config."""
    tree: dict = {}
    where = ""
    if path is not None:
        path = resolve_config_path(path)
        where = f"{path}: "
        tree, blocks = split_by_method(migrate(read_with_base(path), where), where)
        block = _chosen_block(tree, blocks, overrides)
        if block is not None:
            tree = deep_merge(tree, block)
    if not overrides:
        return from_dict(tree, where)
    from_dict(tree, where)  # the file alone first, so its own mistakes are reported against it
    size = sum(len(text.encode("utf-8", "replace")) for text in overrides)
    if size > MAX_CONFIG_BYTES:
        longest = max(overrides, key=len)
        raise ConfigError(f"command-line overrides: {_megabytes(size)} in all, above the {_megabytes(MAX_CONFIG_BYTES)} "
                          f"a config may hold (the longest: {short(longest, 80)}); they were not parsed. Put long "
                          "lists in a config file of their own.")
    for text in overrides:
        key, value = parse_override(text)
        apply_override(tree, key, value)
    return from_dict(tree, "command-line override: ")


def config_dirs() -> list[Path]:
    """Shipped configs: inside the installed wheel, or the repo's configs/ folder in a source checkout."""
    here = Path(__file__).resolve().parent
    return [p for p in (here / "configs", here.parents[1] / "configs") if p.is_dir()]


def shipped_configs() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for folder in config_dirs():
        for p in sorted(folder.glob("*.yaml")):
            found.setdefault(p.stem, p)
    return found


def resolve_config_path(path: str | Path) -> Path:
    """A path, or the name of a shipped config (with or without .yaml)."""
    p = Path(path)
    if p.exists():
        return p
    shipped = shipped_configs()
    name = p.name[:-5] if p.name.endswith(".yaml") else p.name
    if name in shipped and len(p.parts) == 1:
        return shipped[name]
    close = difflib.get_close_matches(name, list(shipped), n=1)
    hint = f" Did you mean the shipped config {short(close[0])}?" if close else ""
    raise ConfigError(f"config file {path} does not exist.{hint} `ltcil list configs` shows the shipped ones.")


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
