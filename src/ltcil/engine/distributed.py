"""Data-parallel training over processes launched by torchrun (NCCL on GPUs, gloo on CPUs).

Every rank holds the whole device-resident dataset, draws the same batches from the same seeded generators,
augments the whole batch and keeps its own shard of it (rank r takes images r, r + W, ...). After the backward
pass the gradients are averaged across ranks weighted by shard size, so an optimiser step equals the
single-process step on the whole batch (up to the order of the float sums); BatchNorm statistics are per shard
during the step, and running statistics are averaged at the end of each training stage.

ltcil reduces gradients itself rather than wrapping the network in torch's DistributedDataParallel: methods
call the network several ways per step (features, heads, a frozen teacher, bias layers, extra parameters of a
calibration stage), which the wrapper's forward hook does not see. One flattened all-reduce per step.

Work outside the training loop (herding, prototypes, clustering, bias-correction fits, synthesis) runs on
every rank from identical state, and the method's whole state is copied from rank 0 after every task, so the
ranks can never drift apart. Only rank 0 logs, evaluates on the test split and writes checkpoints.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..errors import ConfigError


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


_WORLD = World()


def world() -> World:
    """This process's place among the training processes (a world of one outside torchrun)."""
    return _WORLD


def launched_by_torchrun() -> bool:
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def setup(device_name: str) -> tuple[World, str]:
    """Join the process group torchrun describes in the environment; returns the world and the device name
    this rank trains on (cuda:LOCAL_RANK on GPUs). Outside torchrun: a world of one, the device unchanged."""
    global _WORLD
    if not launched_by_torchrun():
        return _WORLD, device_name
    env = os.environ
    size = int(env["WORLD_SIZE"])
    local_rank = int(env.get("LOCAL_RANK", 0))
    _WORLD = World(int(env["RANK"]), size, local_rank, int(env.get("LOCAL_WORLD_SIZE", size)))
    cuda = device_name.startswith("cuda") or (device_name == "auto" and torch.cuda.is_available())
    if cuda:
        if not torch.cuda.is_available():
            raise ConfigError(f"device: {device_name!r} was requested under torchrun but no CUDA GPU is available.")
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(f"torchrun started {_WORLD.local_size} processes on this node but only "
                              f"{torch.cuda.device_count()} GPUs are visible; lower --nproc_per_node.")
        torch.cuda.set_device(local_rank)
        device_name = f"cuda:{local_rank}"
    elif device_name == "auto":
        device_name = "cpu"
    if _WORLD.enabled and not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    return _WORLD, device_name


def teardown() -> None:
    global _WORLD
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    _WORLD = World()


def cpu_threads_per_rank(cores: int) -> int:
    """Processes on one node share its cores: oversubscribed threads cost far more than they give."""
    return max(1, cores // world().local_size)


def shard(tensor: torch.Tensor, views: int = 1) -> torch.Tensor:
    """This rank's share of a batch; with `views` > 1 the batch is that many copies concatenated, and each
    copy is sharded alike so the views of one image stay together."""
    w = world()
    if not w.enabled:
        return tensor
    if views == 1:
        return tensor[w.rank :: w.size]
    return torch.cat([part[w.rank :: w.size] for part in tensor.chunk(views)])


def shard_weight(batch_size: int) -> float:
    """This rank's shard size over the batch size: the weight of its mean loss in the global mean."""
    w = world()
    return len(range(w.rank, batch_size, w.size)) / batch_size


def average_gradients(params: list, weight: float) -> None:
    """Sum weight * grad over ranks in one flattened all-reduce. A parameter with no gradient on any rank
    keeps none (the optimiser skips it, as it would in one process); one with a gradient on some rank only
    gets the weighted sum of those."""
    if not world().enabled or not params:
        return
    device = params[0].device
    parts, flags = [], []
    for p in params:
        has = p.grad is not None
        parts.append((p.grad * weight).reshape(-1) if has else torch.zeros(p.numel(), device=device, dtype=p.dtype))
        flags.append(1.0 if has else 0.0)
    flat = torch.cat([torch.cat(parts).float(), torch.tensor(flags, device=device)])
    dist.all_reduce(flat)
    present = (flat[-len(params):] > 0).tolist()
    offset = 0
    for p, keep in zip(params, present):
        n = p.numel()
        if not keep:
            p.grad = None
        else:  # copy into the gradient's own layout (a channels_last weight keeps a channels_last gradient)
            if p.grad is None:
                p.grad = torch.empty_like(p)
            p.grad.copy_(flat[offset : offset + n].view(p.shape))
        offset += n


def all_reduce_max(tensor: torch.Tensor) -> torch.Tensor:
    if world().enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor


def sum_named(values: dict, device) -> dict:
    """Sum named scalars over ranks; a name missing on some rank counts as 0 there."""
    names: list = [None] * world().size
    dist.all_gather_object(names, sorted(values))
    keys = sorted(set().union(*names))
    zero = torch.zeros((), device=device)
    stacked = torch.stack([values.get(k, zero).float() for k in keys])
    dist.all_reduce(stacked)
    return dict(zip(keys, stacked.unbind()))


def to_cpu(obj):
    """A copy of nested dicts/lists/tuples with every tensor on the CPU (what is broadcast between ranks)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_cpu(v) for v in obj)
    return obj


def average_buffers(modules) -> None:
    """Average floating-point buffers (BatchNorm running statistics) of `modules` over ranks: each rank
    estimated them on its own shards."""
    w = world()
    if not w.enabled:
        return
    for module in modules:
        for buf in module.buffers():
            if buf.is_floating_point():
                dist.all_reduce(buf)
                buf.div_(w.size)


@contextlib.contextmanager
def averaged_buffers(modules):
    """Inside the block the floating-point buffers hold their average over ranks; after it each rank has its
    own again. A checkpoint taken inside a stage stores the average: running statistics are linear in their
    updates, so resuming every rank from it and averaging at the end of the stage gives what the ranks would
    have averaged without the stop (up to rounding)."""
    w = world()
    if not w.enabled:
        yield
        return
    own = [(buf, buf.detach().clone()) for m in modules for buf in m.buffers() if buf.is_floating_point()]
    average_buffers(modules)
    try:
        yield
    finally:
        with torch.no_grad():
            for buf, value in own:
                buf.copy_(value)


def from_main(flag: bool) -> bool:
    """Rank 0's value of `flag` on every rank (a decision such as "checkpoint now" that must be taken
    together: it may involve a collective)."""
    if not world().enabled:
        return flag
    return bool(broadcast_object(flag))


def broadcast_object(obj):
    """Rank 0's `obj` on every rank (run folders, method state)."""
    if not world().enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if world().enabled:
        dist.barrier()
