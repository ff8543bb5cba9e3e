"""Seeding without hidden global state: each task derives its own generators from (run seed, task index),
so a run resumed at task t draws exactly what an uninterrupted run would have drawn."""

from __future__ import annotations

import random

import numpy as np
import torch


def task_seed(seed: int, task_index: int, stream: int = 0) -> int:
    return int(np.random.SeedSequence([seed, task_index, stream]).generate_state(1)[0])


def seed_task(seed: int, task_index: int) -> None:
    """Seed torch's default generator (weight init of new head rows, dropout) for this task."""
    s = task_seed(seed, task_index, 0)
    torch.manual_seed(s)
    random.seed(s)


def generators(seed: int, task_index: int, device: torch.device) -> tuple[torch.Generator, torch.Generator]:
    """(CPU generator for shuffling, device generator for augmentation)."""
    cpu = torch.Generator().manual_seed(task_seed(seed, task_index, 1))
    dev = torch.Generator(device=device).manual_seed(task_seed(seed, task_index, 2))
    return cpu, dev
