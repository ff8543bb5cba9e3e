"""The training loop: epochs of device-resident batches, augmented on the device, fed to a step function.

Losses are summed as tensors and read once per epoch, so the loop has no host synchronisation per batch.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch

from ..data.sampling import epoch_order
from ..errors import LtcilError
from . import distributed
from .optim import build_optimizer, lr_factor, set_lr
from .stage import Stage


class NonFiniteLossError(LtcilError):
    pass


COMPILE_MODES = ("off", "default", "reduce-overhead", "max-autotune", "eager")


def compile_step(step_fn: Callable, mode: str) -> Callable:
    """The step function under torch.compile. The step (forward passes and losses) is compiled, not the
    modules, so a method may still deep-copy its network (a teacher snapshot) or grow its head: the new modules
    are traced on the next call. "reduce-overhead" replays the step's kernels as CUDA graphs; "eager" traces
    without generating code (a quick check that a step compiles)."""
    # every task brings a new teacher and a grown head, and an epoch's last batch another shape: each is a
    # recompilation of the same step, so the default limit (8) would fall back to eager after a few tasks
    import torch._dynamo.config as dynamo_config

    for name in ("cache_size_limit", "recompile_limit"):
        if hasattr(dynamo_config, name):
            setattr(dynamo_config, name, max(getattr(dynamo_config, name), 256))
    if mode == "eager":
        return torch.compile(step_fn, backend="eager")
    return torch.compile(step_fn, mode=mode)


@dataclass(frozen=True)
class PeriodicSave:
    """Checkpoints inside a stage: `save(epochs_done, loop_state)` is called after an epoch once `every_seconds`
    have passed since the stage started or since the last save (never after the stage's last epoch: the caller
    checkpoints the finished stage itself). `loop_state` holds the epoch, the optimiser's state and the
    generators' states, which `Trainer.fit(resume=...)` continues from."""

    save: Callable[[int, dict], None]
    every_seconds: float = 0.0


class Trainer:
    def __init__(self, data, device: torch.device, events, progress: bool = True, amp: bool = True,
                 compile_mode: str = "off"):
        self.data = data
        self.device = device
        self.events = events
        self.progress = progress
        self.amp = amp and device.type == "cuda"  # bf16 autocast: ~10x slower on CPUs without native bf16
        self.compile_mode = compile_mode

    def autocast(self):
        if self.amp:
            return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def fit(
        self,
        step_fn: Callable[..., dict],
        params,
        indices: np.ndarray,
        stage: Stage,
        *,
        gens: tuple[torch.Generator, torch.Generator],
        task_index: int,
        resume: Optional[dict] = None,
        periodic_save: Optional[PeriodicSave] = None,
    ) -> list[dict]:
        """Run `stage.epochs` epochs of `step_fn` over `indices`, visited as the stage's sampler says; returns
        the epoch events. Under torchrun each rank steps on its shard of every batch and gradients are averaged
        (distributed.py). `periodic_save` checkpoints between epochs (see PeriodicSave); `resume`, a loop state
        it saved, continues after its epoch with its optimiser and generators (the caller restores the model
        first)."""
        cpu_gen, dev_gen = gens
        if self.compile_mode != "off":
            step_fn = compile_step(step_fn, self.compile_mode)
        labels = None
        if stage.settings.sampler != "instance":
            where = torch.as_tensor(indices, dtype=torch.long).to(self.device)
            labels = self.data.labels[stage.split][where].cpu().numpy()
        optimizer = build_optimizer(params, stage.settings, stage.lr, self.device)
        first_epoch = 0
        if resume is not None:
            optimizer.load_state_dict(resume["optimizer"])
            cpu_gen.set_state(resume["generators"][0])
            dev_gen.set_state(resume["generators"][1])
            first_epoch = resume["epoch"]
        per_epoch = stage.steps_per_epoch(len(indices))
        bar = self._bar(stage, task_index, first_epoch, per_epoch)
        history, last_save = [], time.perf_counter()
        for epoch in range(first_epoch, stage.epochs):
            if bar is not None:
                bar.set_description(f"task {task_index + 1} {stage.name}, epoch {epoch + 1}/{stage.epochs}")
            set_lr(optimizer, stage.lr * lr_factor(stage.settings, epoch, stage.epochs))
            if stage.on_epoch is not None:  # before train(): a hook may run the model in eval mode (clustering)
                stage.on_epoch(epoch, stage.epochs)
            for m in stage.modules:
                m.train()
            order = epoch_order(stage.settings.sampler, indices, labels, cpu_gen)
            event = self._epoch(step_fn, optimizer, order, stage, epoch, per_epoch, dev_gen, task_index, bar)
            history.append(event)
            if (periodic_save is not None and epoch + 1 < stage.epochs
                    and distributed.from_main(time.perf_counter() - last_save >= periodic_save.every_seconds)):
                with distributed.averaged_buffers(stage.modules):
                    periodic_save.save(epoch + 1, {"epoch": epoch + 1, "optimizer": optimizer.state_dict(),
                                     "generators": [cpu_gen.get_state(), dev_gen.get_state()]})
                last_save = time.perf_counter()
        if bar is not None:
            bar.close()
        distributed.average_buffers(stage.modules)
        return history

    def _bar(self, stage: Stage, task_index: int, first_epoch: int, per_epoch: int):
        """A progress bar that counts steps (a 1-epoch task moves too), the epoch in its description."""
        if not self.progress:
            return None
        from tqdm.auto import tqdm

        return tqdm(total=stage.epochs * per_epoch, initial=first_epoch * per_epoch, leave=False,
                    dynamic_ncols=True, unit="step", desc=f"task {task_index + 1} {stage.name}")

    def _epoch(self, step_fn, optimizer, order, stage: Stage, epoch: int, per_epoch: int, dev_gen, task_index: int,
               bar) -> dict:
        """One epoch over `order`: losses summed on the device and read once, a non-finite loss located by step
        without a host sync per step; logs and returns the epoch event."""
        world = distributed.world()
        trained = [p for group in optimizer.param_groups for p in group["params"]]
        per_step = stage.settings.schedule_unit == "step"  # warm-up and cosine move every step
        start = time.perf_counter()
        sums: dict[str, torch.Tensor] = {}
        steps, seen = 0, 0
        first_bad = torch.full((), -1, dtype=torch.long, device=self.device)  # -1: every loss finite so far
        for idx in self.data.index_batches(order, stage.settings.batch_size, dev_gen, shuffle=False, training=True,
                                            split=stage.split, augment=stage.augment, views=stage.views):
            if world.enabled and len(idx) < 2 * world.size:
                continue  # a trailing batch too small to give every rank two images (BatchNorm)
            if stage.settings.drop_last and len(idx) < stage.settings.batch_size and steps:
                break  # a trailing partial batch (a set smaller than one batch still trains on what it has)
            if per_step and steps:
                set_lr(optimizer, stage.lr * lr_factor(stage.settings, epoch + steps / per_epoch, stage.epochs))
            # the whole batch is augmented on every rank (same generator), so each shard sees exactly the images
            # a single process would
            x, y = self.data.batch(stage.split, idx, stage.augment, dev_gen)
            if stage.views > 1:
                x = torch.cat([x] + [self.data.batch(stage.split, idx, stage.augment, dev_gen)[0]
                                     for _ in range(stage.views - 1)])
            batch_images, weight = len(idx), 1.0
            if world.enabled:
                weight = distributed.shard_weight(len(idx))
                x, y, idx = distributed.shard(x, stage.views), distributed.shard(y), distributed.shard(idx)
            with self.autocast():
                losses = step_fn(x, y, idx) if stage.with_indices else step_fn(x, y)
            bad = ~torch.isfinite(losses["loss"].detach()) & (first_bad < 0)
            first_bad = torch.where(bad, torch.full_like(first_bad, steps + 1), first_bad)
            optimizer.zero_grad(set_to_none=True)
            losses["loss"].backward()
            distributed.average_gradients(trained, weight)
            optimizer.step()
            for key, value in losses.items():
                value = value.detach().float() * weight
                sums[key] = sums[key] + value if key in sums else value
            steps += 1
            seen += batch_images
            if bar is not None:
                bar.update(1)
        if world.enabled:  # one exchange per epoch: the logged losses are means over whole batches
            sums = distributed.sum_named(sums, self.device)
            distributed.all_reduce_max(first_bad)
        record = {k: float(v) / max(steps, 1) for k, v in sums.items()}
        elapsed = time.perf_counter() - start
        event = {
            "event": "epoch", "task": task_index, "stage": stage.name, "epoch": epoch + 1, "epochs": stage.epochs,
            "lr": optimizer.param_groups[0]["lr"], "losses": record, "seconds": elapsed,
            "images_per_second": seen / elapsed if elapsed > 0 else None,
        }
        self.events.write(event)
        bad_step = int(first_bad)
        if bad_step > 0 or not all(math.isfinite(v) for v in record.values()):
            raise NonFiniteLossError(
                f"non-finite loss in task {task_index + 1}, stage {stage.name!r}, epoch {epoch + 1}, step "
                f"{bad_step if bad_step > 0 else '?'} of {steps}: {record}. "
                "The run stopped; the checkpoint of the last finished task is kept. Lower train.lr or check "
                "the data."
            )
        if bar is not None:
            bar.set_postfix({k: f"{v:.3f}" for k, v in record.items()})
        return event
