"""One experiment end to end: data -> scenario -> per task (begin, train, end, evaluate, checkpoint) -> results.

Every arrow is a plain function call on plain data; see DESIGN.md for the flow.
"""

from __future__ import annotations

import functools
import inspect
import os
import time
import warnings
from pathlib import Path
from typing import Optional

import torch

from .. import registry
from ..backbones import check_backbone, check_weights
from ..config import Config, dump_config, migrate
from ..data.augment import AugmentSpec
from ..data.loader import DeviceData
from ..data.stream import StreamedImages, default_workers
from ..data.stream_loader import StreamData
from ..errors import ConfigError, LtcilError, LtcilWarning
from ..evaluation.evaluator import evaluate_step
from ..methods.base import train_class_counts
from ..plugins import build_plugins
from ..reporting.events import EventLog
from ..reporting.results import build_results, write_json
from ..reporting.trackers import check_trackers, open_trackers
from ..scenarios import build_scenario
from . import distributed, run_folder
from .checkpoint import (
    latest_checkpoint, load_checkpoint, load_partial, partial_path, remove_partial, save_checkpoint, save_partial,
)
from .context import TaskContext
from .networks import NetworkFactory
from .stage import Stage, task_settings
from .seed import generators, seed_task, task_seed
from .trainer import PeriodicSave, Trainer


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device: {name!r} was requested but no CUDA GPU is available; use device=cpu or auto.")
    return torch.device(name)


def usable_cores() -> int:
    """The cores this process may run on (not the host's count inside a container)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def set_threads(threads: int) -> int:
    """Use the cores this process may run on, shared between the processes torchrun started on this machine.
    More threads than cores only slow training (512 on 2 cores: 25x) and thousands crash OpenBLAS (it cannot
    create them: a segfault), so train.threads is bounded by the usable cores, with a warning."""
    cores = usable_cores()
    n = threads or distributed.cpu_threads_per_rank(cores)
    if n > cores:
        warnings.warn(LtcilWarning(f"train.threads={threads} is more than the {cores} core(s) this process may use; "
                                   f"using {cores} (more threads than cores only slow training down)."))
        n = cores
    torch.set_num_threads(n)
    return n


def load_dataset(cfg: Config):
    """The data source; one that can decode a subset (image lists) gets only the classes an explicit
    scenario.order uses (20 of 200 classes: a tenth of the decoding and memory)."""
    loader = registry.get("dataset", cfg.data.name, key="data.name")
    order = cfg.scenario.order
    if isinstance(order, list) and "classes" in inspect.signature(loader).parameters:
        return loader(cfg.data, classes=set(order))
    return loader(cfg.data)


def check_components(cfg: Config) -> None:
    """Fail on unknown names, method options and missing optional packages before any data is loaded."""
    check_trackers(cfg.log)
    if cfg.log.report == "always" and not report_available():
        raise ConfigError("log.report=always writes the run's report at the end, which needs matplotlib: "
                          "pip install matplotlib (or use log.report=auto / never).")
    registry.get("dataset", cfg.data.name, key="data.name")
    check_backbone(cfg.backbone)
    method_cls = registry.get("method", cfg.method["name"], key="method.name")
    if method_cls.requires_memory and cfg.memory.size == 0 and cfg.memory.per_class == 0:
        raise ConfigError(f"method {cfg.method['name']} keeps exemplars and means nothing without them: set "
                          "memory.size (e.g. 2000) or memory.per_class (e.g. 20).")
    method_cls.check(method_cls.parse_options(cfg.method), cfg)


def build_method(cfg: Config, in_channels: int, image_size: int, device: torch.device):
    """The method with the network it builds (build_network), placed; and a callable that builds it afresh."""
    method_cls = registry.get("method", cfg.method["name"], key="method.name")
    options = method_cls.parse_options(cfg.method)
    networks = NetworkFactory(cfg, in_channels, image_size, device)

    def new_model():
        return networks.place(method_cls.build_network(networks, options, cfg))

    return method_cls(new_model(), options, cfg, device, networks=networks), new_model


class Experiment:
    """Holds the pieces of a run; `run()` executes the remaining tasks."""

    def __init__(self, cfg: Config, run_dir: Path, progress: Optional[bool] = None, log=None):
        check_components(cfg)
        check_weights(cfg.backbone)
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.log = log or (lambda text: print(text, flush=True))
        self.world, device_name = distributed.setup(cfg.device)  # a world of one outside torchrun
        self.progress = (cfg.train.progress if progress is None else progress) and self.world.is_main
        self.threads = set_threads(cfg.train.threads)
        self.device = resolve_device(device_name)

        t0 = time.perf_counter()
        if self.progress:
            where = "" if cfg.data.name in ("digits", "synthetic") else f" from {cfg.data.root}"
            self.log(f"loading {cfg.data.name}{where} ...")
        self.dataset = load_dataset(cfg)
        val_labels = self.dataset.val.labels if self.dataset.val is not None else None
        self.scenario = build_scenario(
            cfg.scenario, self.dataset.train.labels, self.dataset.test.labels, self.dataset.num_classes, val_labels
        )
        channels_last = cfg.train.channels_last
        if isinstance(self.dataset.train.images, StreamedImages):  # too large to hold decoded: read as needed
            workers = cfg.data.workers
            if workers < 0 and self.world.size > 1:  # torchrun: the cores shared among the ranks' workers
                workers = max(1, default_workers() // self.world.size)
            self.data = StreamData(self.dataset, self.scenario.label_maps, self.device, channels_last,
                                   workers, cfg.data.max_bad_images)
            self.data.bad_log = self.run_dir / "unreadable_images.txt"
        else:
            self.data = DeviceData(self.dataset, self.scenario.label_maps, self.device, channels_last)
        if not cfg.data.normalize:
            self.data.set_stats(torch.zeros(self.data.in_channels), torch.ones(self.data.in_channels))
        elif cfg.data.mean:
            if len(cfg.data.mean) != self.data.in_channels:
                raise ConfigError(f"data.mean: {len(cfg.data.mean)} value(s) for images with {self.data.in_channels} "
                                  "channel(s).")
            self.data.set_stats(torch.tensor(cfg.data.mean, dtype=torch.float32),
                                torch.tensor(cfg.data.std, dtype=torch.float32))
        self.load_seconds = time.perf_counter() - t0
        if self.progress:
            self.log(f"loaded {len(self.dataset.train):,} training and {len(self.dataset.test):,} test images of "
                     f"{self.dataset.num_classes} classes ({self.load_seconds:.1f}s); {len(self.tasks)} task(s) on "
                     f"{self.device}")
        if len(self.tasks) == 1 and len(self.tasks[0].classes) == 1:  # every accuracy it reports is trivial
            only = self.dataset.class_names[int(self.scenario.order[0])]
            warnings.warn(LtcilWarning(
                f"this run trains and tests a single class ({only!r}) in a single task: every test image is "
                "predicted as that class, so its accuracy is 100% by construction and says nothing about the model; "
                "give it at least 2 classes (scenario.initial, scenario.increment, scenario.order, "
                "scenario.max_tasks)."))
        torch.manual_seed(task_seed(cfg.seed, 0, 3))  # the initial weights depend on the seed alone
        self.method, self.new_model = build_method(cfg, self.data.in_channels, self.data.image_size, self.device)
        stats = getattr(self.method.networks, "input_stats", None)
        if stats is not None and cfg.data.normalize and not cfg.data.mean:  # pre-trained weights: their statistics
            mean, std = stats
            if len(mean) == self.data.in_channels:
                self.data.set_stats(torch.tensor(mean, dtype=torch.float32), torch.tensor(std, dtype=torch.float32))
        self.plugins = build_plugins(cfg, self.method)  # cross-method stages (two_stage), run after each task
        # the classifier results.json reports as "accuracy": the config's choice, else a plugin's own (two_stage
        # reports its scaled head), else the method's
        self.headline = (cfg.eval.headline or next((p.headline for p in self.plugins if p.headline), None)
                         or self.method.headline)
        self.steps: list = []
        self.timing: list = []
        self.next_task = 0
        self.partial: Optional[dict] = None  # a checkpoint inside task next_task, used when it runs

    @property
    def tasks(self) -> list:
        """The tasks this run trains: the scenario's, or its first scenario.max_tasks."""
        return self.scenario.tasks[: self.cfg.scenario.max_tasks or None]

    # --- persistence -------------------------------------------------------------------------------------
    def _state(self, task_index: int) -> dict:
        return {
            "format": 1,
            "task": task_index,
            "config": self.cfg.to_dict(),
            "method": self.method.state_dict(),
            "plugins": self._plugin_state(),
            "steps": self.steps,
            "timing": self.timing,
            "rng": {"torch": torch.get_rng_state()},
        }

    def restore(self, same_config: bool = True) -> bool:
        """Continue after the last complete checkpoint, and inside the next task from its partial checkpoint
        when there is one; False when there is neither. A checkpoint of another experiment (config.yaml edited
        since) is refused, naming the keys, unless `same_config` is False (a sweep continues every candidate
        from the chosen one's checkpoint)."""
        path = latest_checkpoint(self.run_dir)
        if path is not None:
            state = load_checkpoint(path)
            if same_config:
                check_same_experiment(state.get("config"), self.cfg.to_dict(), path)
            self.method.load_state_dict(state["method"])
            self._load_plugin_state(state)
            self.steps = state["steps"]
            self.timing = state["timing"]
            self.next_task = state["task"] + 1
        partial = load_partial(self.run_dir)
        if partial is not None and partial["task"] == self.next_task:  # older ones: that task finished since
            if same_config:
                check_same_experiment(partial.get("config"), self.cfg.to_dict(), partial_path(self.run_dir))
            self.partial = partial
        if path is None and self.partial is None:
            return False
        if self.world.is_main:
            where = [f"after task {self.next_task} of {len(self.tasks)}"] if path is not None else []
            if self.partial is not None:
                where.append(f"inside task {self.next_task + 1} after epoch {self.partial['loop']['epoch']}")
            self.log(f"resuming {self.run_dir} {', '.join(where)}")
        return True

    def results(self) -> dict:
        names = self.dataset.class_names
        extra = {"timing": self.timing, "device": str(self.device), "threads": self.threads,
                 "processes": self.world.size,
                 "class_names": [names[c] for c in self.scenario.order.tolist()]}  # arrival order, as per_class
        return build_results(self.steps, self.scenario, self.cfg.to_dict(), self.headline,
                             self.scenario.is_imbalanced, extra, method_extra=self.method.results_extra())

    # --- the loop ----------------------------------------------------------------------------------------
    def run(self) -> dict:
        """Run the remaining tasks; returns results (under torchrun: on rank 0, the other ranks get {})."""
        main = self.world.is_main
        if main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            run_folder.mark(self.run_dir)
            (self.run_dir / "config.yaml").write_text(dump_config(self.cfg))
            self._write_skipped_images()
        trackers = open_trackers(self.cfg.log, self.run_dir, self.cfg.to_dict()) if main else []
        events = EventLog(self.run_dir / "events.jsonl" if main else None, trackers)
        trainer = Trainer(self.data, self.device, events, progress=self.progress, amp=self.cfg.train.amp,
                          compile_mode=self.cfg.train.compile)
        tasks = self.tasks
        if self.next_task == 0:
            events.write({"event": "start", "num_tasks": len(tasks), "load_seconds": self.load_seconds,
                          **self.scenario.to_dict(), "device": str(self.device), "threads": self.threads,
                          "processes": self.world.size})
        else:  # epochs logged after the last checkpoint belong to an interrupted task that now runs again
            events.write({"event": "resume", "next_task": self.next_task})
        try:
            for task in tasks[self.next_task:]:
                self._run_task(task, trainer, events)
            if not main:
                return {}
            results = self.results()
            write_json(self.run_dir / "results.json", results)
            events.write({"event": "end", "average_incremental_accuracy": results["average_incremental_accuracy"],
                          "last_accuracy": results["last_accuracy"]})
        finally:
            events.close()
            self.data.close()
        self._write_report()
        return results

    def _write_skipped_images(self) -> None:
        """Images the loader skipped as unreadable (within data.max_bad_images), listed in the run folder."""
        skipped = self.dataset.meta.get("unreadable", []) + [
            f"{path}\t{message}" for path, message in getattr(self.data, "bad", {}).items()]  # streamed, so far
        if skipped:
            (self.run_dir / "unreadable_images.txt").write_text("".join(f"{m}\n" for m in skipped), encoding="utf-8")

    def _write_report(self) -> None:
        """The run's own report.html / report.md (log.report: auto writes it when matplotlib is installed)."""
        mode = self.cfg.log.report
        if mode == "never" or (mode == "auto" and not report_available()):
            return
        from ..reporting.report import write_report

        try:
            html_path, _ = write_report([self.run_dir], self.run_dir)
        except LtcilError as exc:  # e.g. the user's own report.md in the run folder: results.json is written
            warnings.warn(LtcilWarning(f"the run's report was not written: {exc}"))
            return
        if self.progress:
            self.log(f"report: {html_path}")

    def _run_task(self, task, trainer: Trainer, events: EventLog, evaluate: bool = True) -> None:
        """Train one task and checkpoint it; `evaluate=False` (sweep trials) never touches the test split."""
        cfg, t = self.cfg, task.index
        seed_task(cfg.seed, t)
        ctx = TaskContext(cfg, self.scenario, self.data, trainer, self.device,
                          generators(cfg.seed, t, self.device), events, t, self.new_model, self.run_dir, task=task)
        timing = {"task": t}
        t0 = time.perf_counter()
        self.method.begin_task(task, ctx)
        timing["begin"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        settings, epochs, lr = task_settings(cfg.train, first=t == 0)
        indices = ctx.train_indices = self.method.train_indices(task, ctx)
        self.method.train_counts = train_class_counts(ctx, indices, self.method.model.num_classes)
        resume = self._resume_inside(t, events)
        if resume is not None:
            timing["resumed_at_epoch"] = resume["epoch"]
        step = self.method.training_step
        if self.method.needs_context:  # what a step needs of the task comes through the context, as ctx=
            step = functools.partial(step, ctx=ctx)
        stage = Stage("train", settings, epochs, lr,
                      augment=self.method.augmentation() or AugmentSpec.from_train_config(settings),
                      views=self.method.views, with_indices=self.method.batch_indices,
                      modules=(self.method.model,), on_epoch=functools.partial(self.method.begin_epoch, ctx=ctx))
        periodic = (PeriodicSave(self._save_inside(t), every_seconds=cfg.train.checkpoint_minutes * 60)
                    if cfg.train.checkpoint_minutes > 0 else None)
        trains = self.method.trains(task)
        if trains:
            trainer.fit(step, self.method.trainable_parameters(), indices, stage, gens=ctx.gens, task_index=t,
                        resume=resume, periodic_save=periodic)
        timing["train"] = time.perf_counter() - t0
        timing["train_images"] = int(len(indices)) * epochs if trains else 0

        t0 = time.perf_counter()
        self.method.end_task(task, ctx)
        for plugin in self.plugins:
            plugin.after_task(self.method, ctx)
        self._share_method_state()
        timing["end"] = time.perf_counter() - t0

        self.timing.append(timing)
        if not self.world.is_main:  # rank 0 alone evaluates and checkpoints; the others go on to the next task
            self.next_task = t + 1
            return
        if not evaluate:
            save_checkpoint(self.run_dir, t, self._state(t))
            remove_partial(self.run_dir)
            self.next_task = t + 1
            return
        t0 = time.perf_counter()
        step = evaluate_step(self.method, self.data, self.scenario, t, cfg.eval, plugins=self.plugins)
        if self.headline not in step["classifiers"]:
            raise ConfigError(f"eval.headline: {self.headline!r} is not a classifier of this run; it has "
                              f"{', '.join(step['classifiers'])}.")
        timing["eval"] = time.perf_counter() - t0
        self.steps.append(step)

        head = step["classifiers"][self.headline]
        events.write({"event": "task", "task": t, "classes": task.original_classes, "top1": head["top1"],
                      "top5": head["top5"], "row": head["row"], "old": head["old"], "new": head["new"],
                      "classifiers": {k: v["top1"] for k, v in step["classifiers"].items()}, "timing": timing})
        save_checkpoint(self.run_dir, t, self._state(t))
        remove_partial(self.run_dir)  # after the task's own checkpoint: a crash between them loses nothing
        write_json(self.run_dir / "results.json", self.results())  # partial results survive a crash
        self.next_task = t + 1
        if self.progress:
            self.log(f"task {t + 1}/{len(self.tasks)}: top-1 {head['top1']:.2f} on "
                     f"{step['seen_classes']} classes ({timing['train']:.1f}s training, {timing['end']:.1f}s end of "
                     f"task: memory, extra stages)")

    def _save_inside(self, task_index: int):
        """The trainer's save hook for the main training of a task: rank 0 writes partial.pt (the method state
        after the epoch, begin_epoch's state, the loop's optimiser and generators, the global RNG)."""
        def save(epochs_done: int, loop: dict) -> None:
            if not self.world.is_main:
                return
            rng = {"torch": torch.get_rng_state()}
            if self.device.type == "cuda":
                rng["cuda"] = torch.cuda.get_rng_state(self.device)
            save_partial(self.run_dir, {
                "format": 1, "task": task_index, "config": self.cfg.to_dict(), "loop": loop,
                "method": self.method.state_dict(), "plugins": self._plugin_state(),
                "epoch_state": self.method.epoch_state(), "rng": rng,
            })
        return save

    def _resume_inside(self, task_index: int, events: EventLog) -> Optional[dict]:
        """Load the partial checkpoint of this task into the method (after begin_task has rebuilt what the task
        starts from: teacher, memory, grown head) and return its loop state for the trainer."""
        partial, self.partial = self.partial, None
        if partial is None or partial["task"] != task_index:
            return None
        self.method.load_state_dict(partial["method"])
        self._load_plugin_state(partial)
        self.method.load_epoch_state(partial["epoch_state"])
        torch.set_rng_state(partial["rng"]["torch"])
        if "cuda" in partial["rng"] and self.device.type == "cuda":
            torch.cuda.set_rng_state(partial["rng"]["cuda"], self.device)
        events.write({"event": "resume_inside", "task": task_index, "epoch": partial["loop"]["epoch"]})
        return partial["loop"]

    def _share_method_state(self) -> None:
        """Under torchrun: every rank continues from rank 0's method state (model, memory, calibration), so
        work done on every rank outside the training loop can never leave the ranks apart."""
        if not self.world.enabled:
            return
        state = distributed.broadcast_object(
            distributed.to_cpu({"method": self.method.state_dict(), "plugins": self._plugin_state()})
            if self.world.is_main else None)
        if not self.world.is_main:
            self.method.load_state_dict(state["method"])
            self._load_plugin_state(state)

    def _plugin_state(self) -> dict:
        return {p.name: p.state_dict() for p in self.plugins}

    def _load_plugin_state(self, state: dict) -> None:
        saved = dict(state.get("plugins") or {})
        if "two_stage" in state.get("method", {}):  # checkpoints written before plugins kept it in the method
            saved.setdefault("two_stage", state["method"]["two_stage"])
        for plugin in self.plugins:
            if plugin.name in saved:
                plugin.load_state_dict(saved[plugin.name], self.device)

    def train_task(self, task_index: int) -> None:
        """Train task `task_index` (the next one) without evaluating on the test split, and checkpoint it."""
        if task_index != self.next_task:
            raise LtcilError(f"{self.run_dir}: task {task_index + 1} cannot run before task {self.next_task + 1}.")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "config.yaml").write_text(dump_config(self.cfg))
        events = EventLog(self.run_dir / "events.jsonl")
        try:
            trainer = Trainer(self.data, self.device, events, progress=False, amp=self.cfg.train.amp,
                              compile_mode=self.cfg.train.compile)
            self._run_task(self.scenario.tasks[task_index], trainer, events, evaluate=False)
        finally:
            events.close()


# Keys that may change between a run and its resume: where things are and how the run reports or checkpoints,
# nothing that changes what is trained or measured.
RESUMABLE_CHANGES = ("log.", "device", "data.root", "data.download", "data.workers", "data.cache",
                     "data.max_bad_images", "train.threads", "train.checkpoint_minutes", "train.progress",
                     "train.compile", "eval.batch_size", "scenario.max_tasks")


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and not (prefix + key).startswith("log."):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def check_same_experiment(saved: Optional[dict], now: dict, path) -> None:
    """Refuse to continue a checkpoint under a config that changes the experiment (RESUMABLE_CHANGES may
    differ), naming every changed key with both values."""
    if saved is None:  # written before configs were stored in every checkpoint
        return
    old, new = _flat(migrate(saved, warn=False)), _flat(now)
    # a key the run's version of ltcil did not have yet ran with the behaviour its default now names
    defaults = _flat(Config().to_dict())
    old = {**{k: v for k, v in defaults.items() if k not in old and k in new}, **old}
    changed = [k for k in sorted(set(old) | set(new))
               if old.get(k) != new.get(k) and not any(k == a or k.startswith(a) for a in RESUMABLE_CHANGES)]
    if changed:
        diffs = "; ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed[:8])
        raise ConfigError(
            f"config.yaml no longer describes the run in {path}: {diffs}{' ...' if len(changed) > 8 else ''}. "
            "Resuming would mix two experiments; restore those values, or start a new run with --out. (Only "
            f"{', '.join(a.rstrip('.') for a in RESUMABLE_CHANGES)} may change on resume.)")


def report_available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def default_run_dir(cfg: Config) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{cfg.method['name']}_{cfg.data.name}_{stamp}"
