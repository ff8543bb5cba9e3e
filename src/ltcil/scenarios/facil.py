"""FACIL's validation split, image for image (Masana et al., TPAMI 2022, FACIL `src/datasets/memory_dataset.py`;
Long-Tailed-CIL and DGR's imbalanced_cil run it unchanged).

Per task, the images of its classes stand in one list in dataset order (class id ascending; within a class, the
order the long-tail subsampling left them in). For each class in arrival order, round(0.1 n) of its positions are
drawn with Python's `random.sample` (seeded by the run seed) and popped into validation. [QUIRK] When the share
rounds to 0 (classes of 5 or fewer images at 10%), the released code pops position 0 of the task's list instead,
an image of whichever class stands first, so the tail classes keep all their images and the task's lowest-id
class gives one more. Reproduced as released, for parity runs; ltcil's own split (`scenario.val_rule: per_class`)
takes at least one image of the class itself.
"""

from __future__ import annotations

import random

import numpy as np


def facil_validation(labels: np.ndarray, task_classes: list, kept: dict, fraction: float, seed: int):
    """(train, validation) indices per class. `task_classes`: each task's class ids in arrival order; `kept`:
    class -> its kept indices in the subsampling's order; `labels`: class id per image of the train split."""
    rnd = random.Random(seed)  # FACIL: utils.seed_everything(seed) right before get_loaders
    train: dict = {}
    val: dict = {}
    for classes in task_classes:
        pool = [i for c in sorted(classes) for i in kept[c].tolist()]  # the task's list, in dataset order
        moved = []
        for c in classes:
            positions = [p for p, i in enumerate(pool) if labels[i] == c]
            k = int(np.round(len(positions) * fraction))
            chosen = [0] if k == 0 else rnd.sample(positions, k)
            for p in sorted(chosen, reverse=True):
                moved.append(pool.pop(p))
        for c in classes:
            train[c] = np.sort(np.asarray([i for i in pool if labels[i] == c], dtype=np.int64))
            val[c] = np.sort(np.asarray([i for i in moved if labels[i] == c], dtype=np.int64))
    return train, val
