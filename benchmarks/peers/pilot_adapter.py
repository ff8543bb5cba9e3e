"""Run one LAMDA-PILOT experiment (sun-hailong/LAMDA-PILOT) from an unmodified checkout, with run-time adaptations
only, and write what it measured as JSON in the format of pycil_adapter.py. Runs under a venv with timm and
torchvision (PILOT imports both); ltcil is not imported here.

    python pilot_adapter.py --make-weights vit_tiny_c32.pth          # once: the shared random ViT
    python pilot_adapter.py --repo ../peers/LAMDA-PILOT --method simplecil --weights vit_tiny_c32.pth \
        --tasks 4 --seed 1993 --data ../shared/data --out result.json

Hub weights cannot be downloaded here, so both toolkits start from the same random ViT: timm's
vit_tiny_patch16_224 built at 32 px with 4-px patches (64 tokens; --make-weights, torch seed 0), whose state dict
ltcil loads with backbone.checkpoint. Adaptations, all applied in memory to the imported modules:
- backbone: `utils.inc_net.get_backbone` returns that model (its `out_dim` set, eval mode) for every
  backbone_type, so PILOT's ViT-B/16 recipes run on it;
- images: CIFAR-100 read from the shared archive (as pycil_adapter.py does) and fed at 32 px as pixels in
  [0, 1] (PILOT's transforms end in ToTensor without normalisation; its resize to 224 is dropped, the model's
  input being 32 px), the same pixels ltcil feeds with data.normalize=false;
- device and workers: the CPU (PILOT's `_set_device` compares with -1 and would pick CUDA), DataLoader workers 0
  (the module globals `num_workers`), torch threads --threads;
- L2P and DualPrompt: PILOT's own prompted ViT class (backbone/vit_l2p.py, vit_dualprompt.py) at the shared ViT's
  size, loading its weights through that module's checkpoint_filter_fn (for L2P it widens the position embedding
  over the prompt tokens with the class token's), and the same class without prompts as the query model
  (PromptVitNet.get_original_backbone); epochs from --epochs; training images through PILOT's own augmentation at
  32 px (RandomResizedCrop(32, area 5-100%) and flip, its build_transform with 32 for 224);
- APER (adapters) and EASE: `get_backbone` gives PILOT's own adapter ViT (backbone/vit_adapter.py, vit_ease.py, the
  tuning config from utils/inc_net.py at the shared ViT's width) with the shared weights converted as its
  vit_base_patch16_224_adapter / _ease convert timm's (qkv split into q/k/v, mlp.fc* renamed, all but the adapters
  frozen), and for APER the shared ViT itself as the pre-trained branch (backbone_type without "_adapter"); epochs
  from --epochs (APER's tuned_epoch, EASE's init_epochs and later_epochs); APER's SSF and VPT variants likewise
  on PILOT's backbone/vit_ssf.py VisionTransformer and backbone/vpt.py VPT_ViT at the shared ViT's size;
- CODA-Prompt: PILOT's backbone/vit_coda_promtpt.py ViT at the shared ViT's size with its weights, and
  CodaPromptVitNet's head, prompt and key widths at that size (PILOT writes 768 for all three); its augmentation
  RandomResizedCrop(32, area 8-100%) and flip (build_transform_coda_prompt at 32 px);
- SLCA and DGR: the shared ViT fine-tuned as PILOT fine-tunes its ViT-B/16; epochs from --epochs, SLCA's lr
  milestones from --milestones (the parity's scaling of its [18] of 20);
- RanPAC with Phase 1 (`ranpac_phase1`): its exps/ranpac.json as it is (adapters on the first task, --epochs of
  them), M from --projection;
- RanPAC: M from --projection; Phase 1 skipped (`tuned_epoch` 0 and its training loop not entered: with 0
  epochs the loop's final log line reads a variable only the loop sets), as ltcil's RanPAC has none;
- CPU and width fixes (_cpu_fixes): DGR's .cuda() prior, CODA-Prompt's leaf prompt-loss tensor, EASE's
  reweighted head's hard-coded 768-wide blocks;
- timm: PILOT's `timm.models.layers.weight_init` / `.helpers` imports (timm 0.6.12, which does not import on
  Python 3.11) are aliased to timm 1.x's `timm.layers` modules;
- --exp KEY=JSON sets keys of the method's exps/*.json (the parity's batchwise_prompt=false);
- tasks: the run stops after --tasks tasks; each task's top-1 over the seen classes (PILOT's eval_task) is
  recorded with the time since the start.
Diagnostics, none changing what PILOT computes: --save-models keeps the network and the exemplars after each task
(shared_start.py), --record-task keeps what DGR's task N trains from (pilot_dgr_steps.py --replay), --stream-seed
reseeds torch as the second task begins (the spread of PILOT's own later tasks from one first model),
--no-augment trains the later tasks on the images as they are.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

START = time.perf_counter()
HERE = Path(__file__).resolve().parent
METHODS = {"simplecil": "models.simplecil", "ranpac": "models.ranpac", "l2p": "models.l2p",
           "dualprompt": "models.dualprompt", "aper_adapter": "models.aper_adapter", "ease": "models.ease",
           "slca": "models.slca", "dgr": "models.dgr", "aper_ssf": "models.aper_ssf",
           "aper_vpt_deep": "models.aper_vpt", "aper_vpt_shallow": "models.aper_vpt",
           "coda_prompt": "models.coda_prompt", "ranpac_phase1": "models.ranpac"}
PROMPTED = {"l2p": "vit_l2p", "dualprompt": "vit_dualprompt"}  # PILOT's prompted ViT module of each prompt method
EXPS = {"aper_adapter": "aper_aperpter", "ranpac_phase1": "ranpac"}  # exps/<name>.json when not the method's name
ADAPTED = {"aper_adapter": ("_adapter", "vit_adapter"), "ease": ("_ease", "vit_ease"),  # backbone_type tag, module
           "ranpac_phase1": ("_adapter", "vit_adapter"), "aper_ssf": ("_ssf", "vit_ssf"),
           "aper_vpt_deep": ("_vpt", "vpt"), "aper_vpt_shallow": ("_vpt", "vpt")}
FINE_TUNED = ("slca", "dgr")  # train the shared ViT itself
TINY = dict(img_size=32, patch_size=4, embed_dim=192, depth=12, num_heads=3)  # timm's vit_tiny_patch16_224 at 32 px


def make_model(weights: Path | None = None):
    import timm
    import torch

    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=32, patch_size=4)
    if weights is not None:
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    model.out_dim = model.num_features
    return model.eval()


def prompt_model(weights: Path, a: dict, module_name: str, prompted: bool):
    """PILOT's prompted ViT class (`module_name` in its backbone/) at the shared ViT's size with its weights,
    through that module's checkpoint_filter_fn, with the arguments utils/inc_net.get_backbone passes it;
    `prompted` False: the query model, as get_original_backbone builds it (no prompt)."""
    import importlib

    import torch

    module = importlib.import_module(f"backbone.{module_name}")
    extra = {}
    if prompted:
        extra = dict(prompt_length=a["length"], embedding_key=a["embedding_key"], prompt_init=a["prompt_key_init"],
                     prompt_pool=a["prompt_pool"], prompt_key=a["prompt_key"], pool_size=a["size"], top_k=a["top_k"],
                     batchwise_prompt=a["batchwise_prompt"], prompt_key_init=a["prompt_key_init"],
                     head_type=a["head_type"], use_prompt_mask=a["use_prompt_mask"])
        if module_name == "vit_dualprompt":
            extra.update({k: a[k] for k in ("use_g_prompt", "g_prompt_length", "g_prompt_layer_idx",
                                             "use_prefix_tune_for_g_prompt", "use_e_prompt", "e_prompt_layer_idx",
                                             "use_prefix_tune_for_e_prompt", "same_key_value")})
    model = module.VisionTransformer(num_classes=a["nb_classes"], drop_rate=a["drop"],
                                     drop_path_rate=a["drop_path"], **TINY, **extra)
    state = module.checkpoint_filter_fn(torch.load(weights, map_location="cpu", weights_only=True), model)
    missing, unexpected = model.load_state_dict(state, strict=False)
    own = ("head.", "prompt.", "e_prompt.", "g_prompt")
    if unexpected or any(not k.startswith(own) for k in missing):
        raise SystemExit(f"the shared ViT does not fit PILOT's {module_name}: missing {missing}, "
                         f"unexpected {unexpected}")
    return model if prompted else model.eval()


def adapter_model(weights: Path, a: dict, module_name: str):
    """PILOT's adapter ViT (backbone/`module_name`.py: vit_adapter or vit_ease) at the shared ViT's size, its tuning
    config as utils/inc_net.get_backbone builds it, the shared weights converted as its vit_base_patch16_224_*
    converts timm's, everything but the adapters frozen."""
    import importlib
    from functools import partial

    import torch
    from easydict import EasyDict

    module = importlib.import_module(f"backbone.{module_name}")
    d = TINY["embed_dim"]
    config = EasyDict(ffn_adapt=True, ffn_option="parallel", ffn_adapter_layernorm_option="none",
                      ffn_adapter_init_option="lora", ffn_adapter_scalar="0.1", ffn_num=a["ffn_num"], d_model=d,
                      vpt_on=False, vpt_num=0, _device=torch.device("cpu"))
    model = module.VisionTransformer(mlp_ratio=4, qkv_bias=True, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
                                     num_classes=0, global_pool=False, drop_path_rate=0.0, tuning_config=config,
                                     **TINY)
    state = torch.load(weights, map_location="cpu", weights_only=True)
    for key in list(state):
        if "qkv." in key:
            qkv = state.pop(key)
            for i, name in enumerate(("q_proj", "k_proj", "v_proj")):
                state[key.replace("qkv", name)] = qkv[i * d:(i + 1) * d]
    for key in list(state):
        if "mlp.fc" in key:
            state[key.replace("mlp.", "")] = state.pop(key)
    msg = model.load_state_dict(state, strict=False)
    if msg.unexpected_keys or any("adapt" not in k for k in msg.missing_keys):
        raise SystemExit(f"the shared ViT does not fit PILOT's adapter ViT: {msg}")
    for name, p in model.named_parameters():
        p.requires_grad = name in msg.missing_keys
    model.out_dim = d
    return model.eval()


def ssf_model(weights: Path):
    """PILOT's SSF ViT (backbone/vit_ssf.py, as timm.create_model("vit_base_patch16_224_ssf") builds it) at the shared
    ViT's size with its weights; the scale/shift parameters at their own init (models/aper_ssf.py freezes the rest)."""
    import torch

    from backbone import vit_ssf

    model = vit_ssf.VisionTransformer(num_classes=0, **TINY)
    msg = model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True), strict=False)
    if msg.unexpected_keys or any("ssf_" not in k for k in msg.missing_keys):
        raise SystemExit(f"the shared ViT does not fit PILOT's SSF ViT: {msg}")
    model.out_dim = TINY["embed_dim"]
    return model.eval()


def vpt_model(weights: Path, a: dict):
    """PILOT's VPT ViT (backbone/vpt.py's VPT_ViT, as its build_promptmodel sets it up) at the shared ViT's size with
    its weights: prompt tokens at zero, head removed, all but the prompts frozen."""
    import torch

    from backbone import vpt

    model = vpt.VPT_ViT(Prompt_Token_num=a["prompt_token_num"],
                        VPT_type="Shallow" if a["vpt_type"] == "shallow" else "Deep", **TINY)
    msg = model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True), strict=False)
    if msg.unexpected_keys or any(not k.startswith(("head.", "Prompt_Tokens")) for k in msg.missing_keys):
        raise SystemExit(f"the shared ViT does not fit PILOT's VPT ViT: {msg}")
    model.head = torch.nn.Identity()
    model.Freeze()
    model.out_dim = TINY["embed_dim"]
    return model.eval()


def coda_model(weights: Path):
    """PILOT's CODA-Prompt ViT (backbone/vit_coda_promtpt.py's VisionTransformer, which returns all tokens and
    takes the prompt module) at the shared ViT's size with its weights, through that module's checkpoint filter."""
    import torch

    from backbone import vit_coda_promtpt as coda

    model = coda.VisionTransformer(num_classes=0, **TINY)
    state = torch.load(weights, map_location="cpu", weights_only=True)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise SystemExit(f"the shared ViT does not fit PILOT's CODA-Prompt ViT: missing {missing}, "
                         f"unexpected {unexpected}")
    return model


def coda_net_init(self, a, pretrained):
    """CodaPromptVitNet.__init__ at the shared ViT's width (PILOT writes 768 for the head, the prompt width and,
    through CodaPrompt's default, the key width). Its components per task are divided by the scenario's whole
    task count, not the --tasks the run stops after (args["nb_tasks"] reads the shortened DataManager)."""
    import torch.nn as nn

    from backbone.prompt import CodaPrompt
    from utils import inc_net

    nn.Module.__init__(self)
    d = TINY["embed_dim"]
    self.args = a
    self.backbone = inc_net.get_backbone(a, pretrained)
    self.fc = nn.Linear(d, a["nb_classes"])
    tasks = 1 + -(-(a["nb_classes"] - a["init_cls"]) // a["increment"])
    self.prompt = CodaPrompt(d, tasks, a["prompt_param"], key_dim=d)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--make-weights", type=Path, default=None, help="write the shared random ViT here and stop")
    p.add_argument("--repo", type=Path, help="LAMDA-PILOT checkout (its root holds main.py)")
    p.add_argument("--method", choices=sorted(METHODS))
    p.add_argument("--weights", type=Path, help="the shared ViT's state dict (--make-weights)")
    p.add_argument("--tasks", type=int, default=0, help="stop after this many tasks (0: all)")
    p.add_argument("--seed", type=int, default=1993, help="PILOT's seed: the class order (numpy permutation)")
    p.add_argument("--data", type=Path, help="folder with cifar-100-python.tar.gz")
    p.add_argument("--projection", type=int, default=10000, help="RanPAC's M")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--milestones", type=int, nargs="*", default=None, help="SLCA's lr milestones (epochs)")
    p.add_argument("--epochs", type=int, default=0, help="L2P's epochs a task (tuned_epoch); SimpleCIL and RanPAC "
                                                         "train nothing")
    p.add_argument("--exp", nargs="*", default=[], metavar="KEY=JSON",
                   help="set keys of the method's exps/*.json (e.g. batchwise_prompt=false); a key the file does "
                        "not have is refused")
    p.add_argument("--out", type=Path)
    p.add_argument("--save-models", type=Path, default=None,
                   help="keep PILOT's network after each task as DIR/task_NNN.pt (its state dict, for shared_start.py)"
                        " and its exemplars as DIR/task_NNN_memory.npz")
    p.add_argument("--stream-seed", type=int, default=None,
                   help="seed torch's generator with this as the second task begins (its new head rows, batch order "
                        "and augmentation), the first task as --seed makes it: the spread of the later tasks from "
                        "the same first model")
    p.add_argument("--no-augment", action="store_true",
                   help="from the second task on, train on the images as they are (ToTensor only: no crop, no "
                        "flip), the first task as the recipe has it")
    p.add_argument("--record-task", type=int, default=0,
                   help="dgr: keep what task N (1: the second) trains from, in the --save-models folder: the network "
                        "as it enters _update_representation (new head rows drawn) and every batch it is fed "
                        "(pilot_dgr_steps.py --replay feeds them to ltcil)")
    args = p.parse_args()

    import torch

    if args.make_weights:
        torch.save(make_model().state_dict(), args.make_weights)
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    repo, out_path = args.repo.resolve(), args.out.resolve()
    archive = (args.data / "cifar-100-python.tar.gz").resolve()
    weights = args.weights.resolve()
    if args.save_models is not None:
        args.save_models = args.save_models.resolve()  # before the chdir below
    work = out_path.parent / (out_path.stem + "_work")  # PILOT writes logs/ into the working folder
    work.mkdir(parents=True, exist_ok=True)
    os.chdir(work)
    sys.path.insert(0, str(HERE))
    from facil_adapter import checkout_commit
    from pycil_adapter import read_cifar100  # the same arrays the PyCIL pairs read

    sys.path.insert(0, str(repo))
    _timm_layer_aliases()
    from torchvision import transforms

    import models.base as pilot_base
    import trainer as pilot_trainer
    import utils.data as pilot_data
    import utils.data_manager as pilot_dm
    import utils.inc_net as pilot_net

    train_x, train_y, test_x, test_y = read_cifar100(archive)

    def download_data(self):
        self.train_data, self.train_targets = train_x, train_y
        self.test_data, self.test_targets = test_x, test_y

    pilot_data.iCIFAR224.download_data = download_data
    if args.method in PROMPTED or args.method in ADAPTED or args.method in FINE_TUNED or args.method == "coda_prompt":
        def build_transform(is_train, a, area=0.05):  # PILOT's augmentation at 32 px
            if not is_train:
                return [transforms.ToTensor()]
            return [transforms.RandomResizedCrop(32, scale=(area, 1.0), ratio=(3 / 4, 4 / 3)),
                    transforms.RandomHorizontalFlip(p=0.5), transforms.ToTensor()]

        pilot_data.build_transform = build_transform
        pilot_data.build_transform_coda_prompt = lambda is_train, a: build_transform(is_train, a, area=0.08)
        if args.method == "coda_prompt":
            pilot_net.get_backbone = lambda a, pretrained=False: coda_model(weights)
            pilot_net.CodaPromptVitNet.__init__ = coda_net_init
        elif args.method in FINE_TUNED:
            def fine_tuned(a, pretrained=False):
                model = make_model(weights)
                model.requires_grad_(True)
                return model.train()

            pilot_net.get_backbone = fine_tuned
        elif args.method in ADAPTED:
            tag, module_name = ADAPTED[args.method]
            tuned = {"_ssf": lambda a: ssf_model(weights), "_vpt": lambda a: vpt_model(weights, a)}.get(
                tag, lambda a: adapter_model(weights, a, module_name))
            pilot_net.get_backbone = lambda a, pretrained=False: (tuned(a) if tag in a["backbone_type"]
                                                                  else make_model(weights))
        else:
            pilot_net.get_backbone = lambda a, pretrained=False: prompt_model(weights, a, PROMPTED[args.method], True)
            pilot_net.PromptVitNet.get_original_backbone = lambda self, a: prompt_model(weights, a,
                                                                                        PROMPTED[args.method], False)
    else:
        pilot_data.build_transform = lambda is_train, a: [transforms.ToTensor()]
        pilot_net.get_backbone = lambda a, pretrained=False: make_model(weights)

    def set_device(a):
        a["device"] = [torch.device("cpu")]

    pilot_trainer._set_device = set_device
    if args.tasks:
        real = pilot_dm.DataManager.nb_tasks
        pilot_dm.DataManager.nb_tasks = property(lambda self: min(args.tasks, real.fget(self)))
    module = __import__(METHODS[args.method], fromlist=["Learner"])
    module.num_workers = 0
    _cpu_fixes(args.method, module)

    tasks: list = []
    eval_task = pilot_base.BaseLearner.eval_task

    def recording_eval_task(self, *a, **k):
        cnn, nme = eval_task(self, *a, **k)
        if args.save_models is not None:  # the task's final network, its memory already chosen with it
            args.save_models.mkdir(parents=True, exist_ok=True)
            torch.save(self._network.state_dict(), args.save_models / f"task_{len(tasks):03d}.pt")
            if len(self._targets_memory):  # the exemplars' pixels and (ordered) labels, for shared_start.py
                np.savez(args.save_models / f"task_{len(tasks):03d}_memory.npz", images=self._data_memory,
                         labels=self._targets_memory)
        tasks.append({"task": len(tasks), "cnn": float(cnn["top1"]),
                      "nme": None if nme is None else float(nme["top1"]), "seconds": time.perf_counter() - START})
        return cnn, nme

    pilot_base.BaseLearner.eval_task = recording_eval_task
    if args.stream_seed is not None or args.no_augment:
        incremental_train = module.Learner.incremental_train

        def second_task(self, data_manager):
            if self._cur_task == 0:  # incremented inside: the second task begins
                if args.stream_seed is not None:
                    torch.manual_seed(args.stream_seed)
                if args.no_augment:
                    data_manager._train_trsf = [transforms.ToTensor()]
            return incremental_train(self, data_manager)

        module.Learner.incremental_train = second_task
    if args.record_task:
        if args.method != "dgr" or args.save_models is None:
            raise SystemExit("--record-task: only with --method dgr and --save-models")
        _record_update(module.Learner, args.record_task, args.save_models)

    exp_file = f"exps/{EXPS.get(args.method, args.method)}.json"
    exp = json.loads((repo / exp_file).read_text())
    exp.update({"seed": [args.seed], "device": ["cpu"], "dataset": "cifar224", "init_cls": 10, "increment": 10,
                "config": exp_file})
    if args.method in PROMPTED or args.method.startswith("aper_") or args.method in ("coda_prompt", "ranpac_phase1"):
        exp["tuned_epoch"] = args.epochs
    if args.method == "ranpac_phase1":
        exp["M"] = args.projection
    if args.method == "ease":
        exp.update({"init_epochs": args.epochs, "later_epochs": args.epochs})
    if args.method == "slca":
        exp["epochs"] = args.epochs
        if args.milestones is not None:
            exp["milestones"] = args.milestones
    if args.method == "dgr":
        exp.update({"init_epoch": args.epochs, "epochs": args.epochs})
    if args.method == "ranpac":  # Phase 1 skipped: its loop logs a variable only set inside it, so not run at all
        exp.update({"M": args.projection, "tuned_epoch": 0})
        module.Learner._init_train = lambda self, *a, **k: None
    for item in args.exp:
        key, sep, value = item.partition("=")
        if not sep or key not in exp:
            raise SystemExit(f"--exp {item!r}: {exp_file} has no key {key!r}" if sep
                             else f"--exp {item!r}: expected KEY=JSON")
        exp[key] = json.loads(value)
    pilot_trainer.train(exp)

    result = {"toolkit": "lamda-pilot", "commit": checkout_commit(repo), "method": args.method, "seed": args.seed,
              "tasks": tasks, "wall_s": time.perf_counter() - START, "threads": torch.get_num_threads(),
              "torch": torch.__version__}
    out_path.write_text(json.dumps(result, indent=1))


def _record_update(learner, task: int, folder: Path) -> None:
    """Wrap DGR's `_update_representation` so that, in task `task`, the network it starts from, the settings of
    its step (the task's label distribution, the lr of every epoch), every (images, labels) batch of its train
    loader, and the task's raw training images with each batch's positions in them (to augment them again) are
    saved to folder/task_NNN_replay.pt."""
    import numpy as np
    import torch

    update = learner._update_representation

    def recorded(self, train_loader, test_loader, optimizer, scheduler, label_distribution):
        if self._cur_task != task:
            return update(self, train_loader, test_loader, optimizer, scheduler, label_distribution)
        dataset = train_loader.dataset  # PILOT's DummyDataset: the task's images (uint8 HWC) and labels
        record = {"start": {k: v.clone() for k, v in self._network.state_dict().items()},
                  "label_distribution": [int(c) for c in label_distribution], "epochs": [], "lr": [],
                  "indices": [], "images": torch.from_numpy(np.asarray(dataset.images)).clone(),
                  "labels": torch.from_numpy(np.asarray(dataset.labels)).clone()}

        class Recording:  # the loader, keeping what it yields (one list per epoch)
            def __len__(self):
                return len(train_loader)

            def __iter__(self):
                record["epochs"].append([])
                record["indices"].append([])
                record["lr"].append(optimizer.param_groups[0]["lr"])
                for batch in train_loader:
                    record["epochs"][-1].append((batch[1].clone(), batch[2].clone()))
                    record["indices"][-1].append(batch[0].clone())  # positions in `images`: to re-augment
                    yield batch

        out = update(self, Recording(), test_loader, optimizer, scheduler, label_distribution)
        folder.mkdir(parents=True, exist_ok=True)
        torch.save(record, folder / f"task_{task:03d}_replay.pt")
        return out

    learner._update_representation = recorded


def _cpu_fixes(method: str, module) -> None:
    """What stops PILOT's code on a CPU or at a width other than ViT-B's, changed in memory without changing what
    it computes: DGR's loss moves its prior with .cuda(); CODA-Prompt's ViT starts its prompt loss as a leaf
    tensor that `.to(device)` only copies on a GPU (in-place adds to it fail on the CPU); EASE's reweighted cosine
    head splits the embedding in blocks of out_dim=768 (its default) instead of the ViT's width."""
    import functools
    import types

    import torch

    if method == "dgr":
        def regularized_cn(outputs, targets, label_distribution):
            prior = torch.log(torch.as_tensor(label_distribution / np.sum(label_distribution), dtype=torch.float32))
            return torch.nn.functional.cross_entropy(outputs + prior.to(outputs.device), targets)

        module.regularized_cn = regularized_cn
    if method == "coda_prompt":
        from backbone import vit_coda_promtpt as coda

        proxy = types.ModuleType("torch_for_coda")
        proxy.__getattr__ = lambda name: getattr(torch, name)
        proxy.zeros = lambda *a, **k: torch.zeros(*a, **k).clone()  # not a leaf: its in-place += is allowed
        coda.torch = proxy
    if method == "ease":
        from backbone.linears import EaseCosineLinear

        EaseCosineLinear.forward_reweight = functools.partialmethod(EaseCosineLinear.forward_reweight,
                                                                    out_dim=TINY["embed_dim"])


def _timm_layer_aliases() -> None:
    """PILOT pins timm 0.6.12, which no longer imports on Python 3.11 (a dataclass with a mutable default);
    under timm 1.x its `timm.models.layers.<module>` imports are served from the modules' new home,
    `timm.layers.<module>` (timm keeps `timm.models.layers` itself as an alias package)."""
    import importlib

    for name in ("weight_init", "helpers"):
        sys.modules.setdefault(f"timm.models.layers.{name}", importlib.import_module(f"timm.layers.{name}"))


if __name__ == "__main__":
    main()
