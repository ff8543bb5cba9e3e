"""Which ltcil config reproduces which peer recipe, how a short parity schedule is set on both sides, and how
the two toolkits' figures are compared. Pure functions: no peer is imported, so the tests run without them.

A peer recipe is the peer's own method file with its own hyper-parameters (PyCIL: models/<method>.py and
exps/<method>.json at the pinned commit; Avalanche: the strategy with the continual-learning-baselines
recipe where one exists). Its ltcil config sets every difference the peer's code makes (loss form, schedule,
augmentation, network details); the comments of each config list them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# Seeds in the order --seeds N takes them: 1993 is iCaRL's class order, the one every peer ships.
SEEDS = (1993, 1, 2, 3, 4, 5, 6, 7)
PYCIL_COMMIT = "87cc4110d60765dc3f64af7ef7a693efed8418ff"
TOLERANCE = 1.0  # points of average incremental accuracy; the seed spread replaces it when larger


@dataclass(frozen=True)
class Recipe:
    peer: str
    method: str  # the name both harness and peer adapter use
    config: str  # the shipped ltcil config that reproduces the peer's recipe
    classifiers: dict  # peer classifier name -> ltcil classifier name
    epoch_keys: tuple = ("train.epochs", "train.first_task.epochs")  # ltcil keys the short schedule sets
    extra: tuple = ()  # further ltcil overrides the parity run needs
    notes: str = ""
    peer_args: tuple = ()  # the adapter's arguments that select the peer's own experiment (FACIL-based peers)
    peer_epoch_args: tuple = ()  # the peer's own arguments that take the parity run's epochs (FACIL: after --)
    order_from_seed: bool = True  # PyCIL / Avalanche: the seed draws the class order (scenario.order=seed:N);
    # FACIL-based peers fix the order per scenario and seed training and the validation split (scenario.seed=N)


def _facil(peer: str, method: str, config: str, classifier: str, approach: str, scenario: str,
           tasks: int = 11) -> "Recipe":
    """A FACIL-based peer's recipe: its approach on its scenario (lt: shuffled, ltio: ordered), 50 classes then
    `tasks` - 1 tasks sharing the other 50; the class order is the scenario's, the seed trains and draws the
    validation split."""
    more = {}
    if approach in ("eeil", "eeil_2stage"):  # its balanced fine-tuning (40 epochs) takes the parity schedule too
        more = dict(epoch_keys=("train.epochs", "method.finetune_epochs"), peer_epoch_args=("--nepochs-finetuning",))
    return Recipe(peer, method, config, {"cnn": classifier}, **{"epoch_keys": ("train.epochs",), **more},
                  order_from_seed=False,
                  peer_args=("--approach", approach, "--scenario", scenario, "--first", "50", "--tasks", str(tasks)))


_ALL = (
    Recipe("pycil", "finetune", "finetune_resnet32_cifar100_b0inc10_pycil", {"cnn": "logits"}),
    Recipe("pycil", "lwf", "lwf_resnet32_cifar100_b0inc10_pycil", {"cnn": "logits"}),
    Recipe("pycil", "icarl", "icarl_resnet32_cifar100_b0inc10_pycil", {"nme": "nme", "cnn": "linear"}),
    # PyCIL's BiC runs its bias-correction stage for as many epochs as the first stage (one global)
    Recipe("pycil", "bic", "bic_resnet32_cifar100_b0inc10_pycil", {"cnn": "logits"},
           epoch_keys=("train.epochs", "train.first_task.epochs", "method.bias_epochs")),
    Recipe("pycil", "wa", "wa_resnet32_cifar100_b0inc10_pycil", {"cnn": "logits"}),
    Recipe("pycil", "der", "der_resnet32_cifar100_b0inc10_pycil", {"cnn": "logits"}),
    Recipe("pycil", "podnet", "podnet_resnet32_cifar100_b0inc10_pycil", {"nme": "nme", "cnn": "linear"}),
    Recipe("avalanche", "naive", "finetune_resnet32_cifar100_b0inc10_avalanche", {"cnn": "logits"}),
    Recipe("avalanche", "lwf", "lwf_resnet32_cifar100_b0inc10_avalanche", {"cnn": "logits"}),
    Recipe("avalanche", "icarl", "icarl_resnet32_cifar100_b0inc10_avalanche", {"nme": "nme"}),
    # FACIL-based long-tailed references (benchmarks/peers/facil_adapter.py): CIFAR-100-LT IF 100, 50 + 10 x 5;
    # Liu et al.'s second stage keeps its 30 epochs at any parity schedule, on both sides
    *(_facil(peer, f"{name}_{scenario}", f"{config}_{order}_b50inc5{suffix}", classifier, approach, scenario)
      for peer, name, config, suffix, classifier, approach in (
          ("imbalanced-cil", "dgr", "dgr_resnet32_cifar100lt", "", "logits", "DGR"),
          ("long-tailed-cil", "lucir", "lucir_resnet32_cifar100lt", "_facil", "linear", "lucir"),
          ("long-tailed-cil", "lucir_2stage", "lucir_two_stage_resnet32_cifar100lt", "_facil", "two_stage",
           "lucir_2stage"),
          ("long-tailed-cil", "eeil", "eeil_resnet32_cifar100lt", "_facil", "logits", "eeil"),
          ("long-tailed-cil", "eeil_2stage", "eeil_two_stage_resnet32_cifar100lt", "_facil", "two_stage",
           "eeil_2stage"),
          ("long-tailed-cil", "podnet", "podnet_resnet32_cifar100lt", "_facil", "linear", "podnet"),
          ("long-tailed-cil", "podnet_2stage", "podnet_two_stage_resnet32_cifar100lt", "_facil", "two_stage",
           "podnet_2stage"))
      for scenario, order in (("lt", "shuffled"), ("ltio", "ordered"))),
    # GVAlign's own code (a Long-Tailed-CIL fork): its LUCIR with stage-1 mixup and stage-2 alignment, 50 + 5 x 10
    *(_facil("gvalign", f"lucir_gvalign_{scenario}", f"lucir_gvalign_resnet32_cifar100lt_{order}_b50inc10_released",
             "gvalign", "lucir_gvalign_2stage", scenario, tasks=6)
      for scenario, order in (("lt", "shuffled"), ("ltio", "ordered"))),
)
# LAMDA-PILOT (benchmarks/peers/pilot_adapter.py): its ViT-B/16 recipes on the shared random ViT (timm's
# vit_tiny_patch16_224 at 32 px, 4-px patches, loaded by both sides; run.py --vit-weights), CIFAR-100 at 32 px,
# pixels in [0, 1]; nothing is trained, so no epochs
PILOT_VIT = ("backbone.name=vit_tiny_patch16_224", "backbone.pretrained=false", "backbone.patch_size=4",
             "backbone.input_size=32")
PILOT_PROJECTION = 2000  # RanPAC's M in the parity runs (PILOT's 10000 costs minutes of solves per task on a CPU)
_ALL = _ALL + (
    Recipe("pilot", "simplecil", "simplecil_vit_b16_cifar100_b0inc10", {"cnn": "logits"}, epoch_keys=(),
           extra=PILOT_VIT),
    # PILOT scores RanPAC by cosine (its CosineLinear normalises both sides), the paper by h W^T
    Recipe("pilot", "ranpac", "ranpac_vit_b16_cifar100_b0inc10", {"cnn": "logits"}, epoch_keys=(),
           extra=(*PILOT_VIT, "method.scoring=cosine", f"method.projection={PILOT_PROJECTION}", "method.tuning=none"),
           peer_args=("--projection", str(PILOT_PROJECTION))),
    # RanPAC with its Phase 1 (PILOT's adapters on the first task, the parity's epochs there)
    Recipe("pilot", "ranpac_phase1", "ranpac_vit_b16_cifar100_b0inc10", {"cnn": "logits"},
           extra=(*PILOT_VIT, "method.scoring=cosine", f"method.projection={PILOT_PROJECTION}"),
           peer_args=("--projection", str(PILOT_PROJECTION))),
    # L2P trains its prompts and head: the parity's epochs on both sides (PILOT's tuned_epoch). Prompts chosen per
    # image on both sides: PILOT's batchwise choice at test time votes over its class-sorted test batches (16 or
    # 24 images of one class), which ltcil's batches over the archive's order cannot reproduce
    *(Recipe("pilot", name, f"{name}_vit_b16_cifar100_b0inc10", {"cnn": "logits"},
             extra=(*PILOT_VIT, "method.batchwise=never"), peer_args=("--exp", "batchwise_prompt=false"))
      for name in ("l2p", "dualprompt")),
    # APER adapts on the first task only: the parity's epochs there (PILOT's tuned_epoch)
    *(Recipe("pilot", f"aper_{tuning}", f"aper_{tuning}_vit_b16_cifar100_b0inc10", {"cnn": "logits"}, extra=PILOT_VIT)
      for tuning in ("adapter", "ssf", "vpt_deep", "vpt_shallow")),
    Recipe("pilot", "ease", "ease_vit_b16_cifar100_b0inc10", {"cnn": "logits"}, extra=PILOT_VIT),
    # CODA-Prompt: PILOT keeps classes in id order (shuffle false) whatever the seed, which trains
    Recipe("pilot", "coda_prompt", "coda_prompt_vit_b16_cifar100_b0inc10", {"cnn": "logits"}, extra=PILOT_VIT,
           order_from_seed=False),
    Recipe("pilot", "slca", "slca_vit_b16_cifar100_b0inc10", {"cnn": "logits"}, extra=PILOT_VIT),
    # DGR's 2,000 exemplars scaled with a --train-per-class subset (PILOT's herding stops when a class has fewer
    # images than its share): 400 on both sides, 4% of the training images as 2,000 of 50,000
    Recipe("pilot", "dgr", "dgr_vit_b16_cifar100_b0inc10", {"cnn": "logits"}, extra=(*PILOT_VIT, "memory.size=400"),
           peer_args=("--exp", "memory_size=400")),
)
# kaidic/LDAM-DRW (benchmarks/peers/ldam_adapter.py): plain long-tailed recognition on CIFAR-100-LT IF 100, one task
# of 100 classes; both sides train on the images IMBALANCECIFAR100 keeps (numpy seed 0: ltcil's ldam_drw images, and
# no validation, which the reference has none of and ltcil's recipe takes 20 of from the head class's 500) and test
# on the whole test set
LT_RECOGNITION = ("scenario.longtail_images=ldam_drw", "scenario.val_per_class=0")
_ALL = _ALL + tuple(
    Recipe("ldam-drw", method, config, {"cnn": "logits"}, epoch_keys=("train.epochs",), extra=LT_RECOGNITION,
           order_from_seed=False, peer_args=("--loss", loss, "--rule", rule))
    for method, config, loss, rule in (("ldam_drw", "ldam_drw_resnet32_cifar100lt_if100", "LDAM", "DRW"),
                                       ("ce", "ce_resnet32_cifar100lt_if100", "CE", "None")))
# jiawei-ren/BalancedMetaSoftmax-Classification (benchmarks/peers/balms_adapter.py): its CIFAR-100-LT recipe (batch
# 512, warm-up then a cosine to 0, AutoAugment + Cutout) at IF 100, Balanced Softmax and its softmax baseline; the
# images LDAM-DRW's (the adapter seeds the reference's unseeded draw with 0), no validation, the whole test set
_ALL = _ALL + tuple(
    Recipe("balms", method, config, {"cnn": "logits"}, epoch_keys=("train.epochs",), extra=LT_RECOGNITION,
           order_from_seed=False, peer_args=("--loss", method))
    for method, config in (("balanced_softmax", "balanced_softmax_resnet32_cifar100lt_if100_balms"),
                           ("softmax", "ce_resnet32_cifar100lt_if100_balms")))
# Kang et al.'s decoupled stage 2 from the same code base (it forks facebookresearch/classifier-balancing): the
# softmax stage 1 above, then cRT and LWS for the parity's epochs each, tau-norm compared at tau = 1 (the reference
# prints its test accuracy at every tau and selects none; ltcil's recipe chooses on validation, which the parity
# has none of)
_ALL = _ALL + (Recipe("balms", "decoupled", "decoupled_resnet32_cifar100lt_if100_balms",
                      {"cnn": "ce", "crt": "crt", "lws": "lws", "tau_norm": "tau_norm"},
                      epoch_keys=("train.epochs", "method.epochs", "method.lws_epochs"),
                      extra=(*LT_RECOGNITION, "method.taus=[1.0]"), order_from_seed=False,
                      peer_args=("--loss", "softmax", "--decouple")),)
BALMS_MIN_WARMUP = 2  # its CosineAnnealingLRWarmup asserts a warm-up of at least 2 epochs
# peers run through facil_adapter.py from a --repo checkout
FACIL_PEERS = ("imbalanced-cil", "long-tailed-cil", "gvalign")
RECIPES: dict[tuple[str, str], Recipe] = {(r.peer, r.method): r for r in _ALL}


def peer_methods(peer: str) -> list[str]:
    return [m for (p, m) in RECIPES if p == peer]


def recipe(peer: str, method: str) -> Recipe:
    if (peer, method) not in RECIPES:
        raise KeyError(f"no {peer} recipe for {method!r}; {peer} has: {', '.join(peer_methods(peer)) or 'none'}")
    return RECIPES[(peer, method)]


def seed_list(count: int = 0, explicit: list | None = None) -> list[int]:
    """Explicit seeds, else the first `count` of SEEDS."""
    if explicit:
        return [int(s) for s in explicit]
    if not 1 <= count <= len(SEEDS):
        raise ValueError(f"--seeds: {count} is not between 1 and {len(SEEDS)} (or give --seed-list)")
    return list(SEEDS[:count])


def class_order(seed: int, num_classes: int = 100) -> list[int]:
    """The order PyCIL and iCaRL draw: numpy.random.seed(seed); numpy.random.permutation(num_classes)."""
    return np.random.RandomState(seed).permutation(num_classes).tolist()


def scale_milestones(milestones: list, full_epochs: int, epochs: int) -> list[int]:
    """A full schedule's lr milestones at the same fractions of a short one (rounded half up, at least 1)."""
    return [max(1, int(m * epochs / full_epochs + 0.5)) for m in milestones]


def short_schedule(rec: Recipe, epochs: int) -> dict:
    """The recipe's milestones scaled to `epochs` per task: {"init": [...], "later": [...], "bias": [...]},
    read from its ltcil config (which holds the peer's own schedule)."""
    from ltcil.config import load_config

    train = load_config(rec.config).train
    first_epochs = train.first_task.epochs or train.epochs
    first = train.first_task.milestones if train.first_task.milestones is not None else train.milestones
    out = {"init": scale_milestones(first, first_epochs, epochs),
           "later": scale_milestones(train.milestones, train.epochs, epochs)}
    if "method.bias_epochs" in rec.epoch_keys:
        method = load_config(rec.config).method
        out["bias"] = scale_milestones(method["bias_milestones"], method["bias_epochs"], epochs)
    if "method.finetune_epochs" in rec.epoch_keys:  # FACIL's EEIL steps its fine-tuning lr at the task's epochs
        out["finetune"] = out["later"]
    if train.warmup_epochs:  # ltcil warms up over its first W epochs ((e+1)/(W+1)); the LDAM-DRW code reaches the
        # base lr at 1-based epoch W+1 ((e+1)/(W+1) until then): the peer's epoch, scaled, and ltcil's one fewer
        peer_warmup = scale_milestones([train.warmup_epochs + 1], train.epochs, epochs)[0]
        if rec.peer == "balms":  # its warm-up reaches the peak lr at 1-based epoch W (ltcil: 0-based W - 1)
            peer_warmup = max(BALMS_MIN_WARMUP, peer_warmup)
        out["warmup"] = {"peer": peer_warmup, "ltcil": peer_warmup - 1}
    drw = load_config(rec.config).method.get("drw_epoch")
    if drw:
        out["drw"] = scale_milestones([drw], train.epochs, epochs)[0]
    return out


def ltcil_overrides(rec: Recipe, epochs: int, seed: int, tasks: int, data_root: str, threads: int = 0,
                    scaled: bool = True) -> list[str]:
    """Overrides that turn the recipe's config into the parity run: the short schedule on every epoch key (with
    the recipe's lr milestones scaled to it when `scaled`, else kept: a constant lr), the seed and the peer's
    class order for it (`seed:N` is the same numpy permutation), the first `tasks` tasks of the full 100-class
    scenario, no report or progress bar."""
    out = [f"{key}={epochs}" for key in rec.epoch_keys]
    if scaled:
        sched = short_schedule(rec, epochs)
        out += [f"train.first_task.milestones={sched['init']}", f"train.milestones={sched['later']}"]
        if "bias" in sched:
            out.append(f"method.bias_milestones={sched['bias']}")
        if "finetune" in sched:
            out.append(f"method.finetune_milestones={sched['finetune']}")
        if "warmup" in sched:
            out.append(f"train.warmup_epochs={sched['warmup']['ltcil']}")
        if "drw" in sched:
            out.append(f"method.drw_epoch={sched['drw']}")
    scenario = f"scenario.order=seed:{seed}" if rec.order_from_seed else f"scenario.seed={seed}"
    out += [f"seed={seed}", scenario, f"scenario.max_tasks={tasks}", f"data.root={data_root}",
            "log.report=never", "train.progress=false", *rec.extra]
    if threads:
        out.append(f"train.threads={threads}")
    return out


def ltcil_record(results: dict, rec: Recipe, seed: int, wall_s: float) -> dict:
    """A finished ltcil run (results.json) as a parity record: per-task top-1 of each compared classifier, in
    the peer's names."""
    headline = results["headline_classifier"]
    classifiers = results.get("classifiers")
    if classifiers is None:  # results.json written before the classifiers key: the flat keys
        classifiers = {k[len("accuracy_"):]: {"accuracy": v} for k, v in results.items() if k.startswith("accuracy_")}
        classifiers[headline] = {"accuracy": results["accuracy"]}
    per_classifier = {}
    for peer_name, name in rec.classifiers.items():
        if name not in classifiers:
            raise KeyError(f"ltcil results have no classifier {name!r} (headline {headline!r})")
        per_classifier[peer_name] = classifiers[name]["accuracy"]
    return {"toolkit": "ltcil", "method": rec.method, "seed": seed, "accuracy": per_classifier, "wall_s": wall_s}


def peer_record(raw: dict, rec: Recipe, wall_s: float) -> dict:
    """A peer adapter's output ({"tasks": [{"cnn": .., "nme": ..}, ...]}) as a parity record."""
    per_classifier = {name: [t[name] for t in raw["tasks"]] for name in rec.classifiers}
    return {"toolkit": rec.peer, "method": rec.method, "seed": raw["seed"], "accuracy": per_classifier,
            "wall_s": wall_s, "commit": raw.get("commit")}


def average(values: list) -> float:
    return float(sum(values) / len(values))


@dataclass
class Row:
    method: str
    classifier: str
    seeds: list
    peer: list = field(default_factory=list)  # average incremental accuracy per seed
    ltcil: list = field(default_factory=list)
    peer_wall: list = field(default_factory=list)
    ltcil_wall: list = field(default_factory=list)

    @property
    def gap(self) -> float:
        return average(self.ltcil) - average(self.peer)

    @property
    def spread(self) -> float:
        """The larger of the two toolkits' ranges over seeds (0 with one seed)."""
        return max(max(v) - min(v) for v in (self.peer, self.ltcil))

    @property
    def tolerance(self) -> float:
        return max(TOLERANCE, self.spread)

    @property
    def agrees(self) -> bool:
        return abs(self.gap) <= self.tolerance

    @property
    def time_ratio(self) -> float | None:
        if not self.peer_wall or not self.ltcil_wall:
            return None
        return average(self.ltcil_wall) / average(self.peer_wall)

    def as_dict(self) -> dict:
        return {"method": self.method, "classifier": self.classifier, "seeds": self.seeds,
                "peer_aia": self.peer, "ltcil_aia": self.ltcil, "peer_mean": average(self.peer),
                "ltcil_mean": average(self.ltcil), "gap": self.gap, "spread": self.spread,
                "tolerance": self.tolerance, "agrees": self.agrees, "peer_wall_s": self.peer_wall,
                "ltcil_wall_s": self.ltcil_wall, "time_ratio": self.time_ratio}


def summarise(records: list[dict]) -> list[Row]:
    """One row per (method, classifier) over the seeds both toolkits finished, in first-seen order."""
    by_key: dict = {}
    for r in records:
        by_key[(r["toolkit"] == "ltcil", r["method"], r["seed"])] = r
    rows: list[Row] = []
    methods = list(dict.fromkeys(r["method"] for r in records))
    for method in methods:
        seeds = [s for (is_ltcil, m, s) in by_key if is_ltcil and m == method and (False, m, s) in by_key]
        if not seeds:
            continue
        classifiers = by_key[(False, method, seeds[0])]["accuracy"].keys()
        for name in classifiers:
            row = Row(method, name, seeds)
            for s in seeds:
                peer, ours = by_key[(False, method, s)], by_key[(True, method, s)]
                row.peer.append(average(peer["accuracy"][name]))
                row.ltcil.append(average(ours["accuracy"][name]))
                row.peer_wall.append(peer["wall_s"])
                row.ltcil_wall.append(ours["wall_s"])
            rows.append(row)
    return rows


def _fmt(values: list, digits: int = 2) -> str:
    return "/".join(f"{v:.{digits}f}" for v in values)


def format_table(rows: list[Row], peer: str) -> str:
    """A fixed-width table: per-seed and mean average incremental accuracy, gap, tolerance, verdict, times."""
    head = (f"{'method':<9} {'clf':<4} {'seeds':<9} {peer + ' AIA':>17} {'ltcil AIA':>17} {'gap':>6} {'tol':>5}"
            f" {'verdict':<8} {peer + ' s':>10} {'ltcil s':>10} {'ratio':>6}")
    lines = [head, "-" * len(head)]
    for r in rows:
        ratio = "-" if r.time_ratio is None else f"{r.time_ratio:.2f}"
        lines.append(
            f"{r.method:<9} {r.classifier:<4} {_fmt(r.seeds, 0):<9} "
            f"{_fmt(r.peer, 1) + f' ={average(r.peer):.2f}':>17} {_fmt(r.ltcil, 1) + f' ={average(r.ltcil):.2f}':>17} "
            f"{r.gap:>+6.2f} {r.tolerance:>5.2f} {'agrees' if r.agrees else 'GAP':<8} "
            f"{average(r.peer_wall):>10.0f} {average(r.ltcil_wall):>10.0f} {ratio:>6}")
    return "\n".join(lines)


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())

