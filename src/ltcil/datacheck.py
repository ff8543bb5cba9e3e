"""`ltcil data check`: what a run would train on, without training: the data as loaded, the scenario's task
split, per-class counts, the many/medium/few groups and the memory budget per class."""

from __future__ import annotations

import numpy as np

from .config import Config
from .evaluation.metrics import shot_groups, shot_thresholds
from .memory.buffer import class_budgets
from .scenarios import build_scenario


def describe(cfg: Config, all_classes: bool = False) -> str:
    from .engine.runner import load_dataset

    ds = load_dataset(cfg)
    val_labels = ds.val.labels if ds.val is not None else None
    sc = build_scenario(cfg.scenario, ds.train.labels, ds.test.labels, ds.num_classes, val_labels)
    names = ds.class_names
    lines = [f"data: {cfg.data.name} ({cfg.data.root}), {ds.num_classes} classes, images {ds.train.images.shape[1:]} "
             f"{ds.train.images.dtype}; {len(ds.train):,} train / {len(ds.test):,} test"
             + (f" / {len(ds.val):,} val" if ds.val is not None else "") + " images"]
    if ds.meta.get("storage") == "stream":
        where = f"the packed cache {ds.meta['cache']}" if ds.meta.get("cache") else "the image files"
        lines.append(f"storage: streamed (decoded per batch by data.workers processes) from {where}")
    order = sc.order.tolist()
    tasks = sc.tasks[: cfg.scenario.max_tasks or None]
    running = f", running the first {len(tasks)}" if len(tasks) < len(sc.tasks) else ""
    lines.append(f"scenario: {len(sc.tasks)} task(s){running}, class order {cfg.scenario.order!r}")
    for t in tasks:
        ids = t.original_classes
        shown = ", ".join(f"{c} {names[c]}" for c in ids[:4]) + (", ..." if len(ids) > 4 else "")
        lines.append(f"  task {t.index + 1}: {len(ids)} classes ({shown}); {len(t.train_indices):,} train, "
                     f"{len(t.val_indices):,} val, {len(t.test_indices):,} test images")
    counts = sc.train_counts
    val = np.array([0] * len(order))
    for t in sc.tasks:
        if len(t.val_indices):
            pool = sc.label_maps[sc.val_pool][t.val_indices]
            val += np.bincount(pool, minlength=len(order))
    test = np.bincount(sc.label_maps["test"][np.concatenate([t.test_indices for t in sc.tasks])],
                       minlength=len(order))
    many, few = shot_thresholds(counts, cfg.eval.many_shot, cfg.eval.few_shot, cfg.eval.shot_split)
    groups = shot_groups(counts, cfg.eval.many_shot, cfg.eval.few_shot, cfg.eval.shot_split)
    lines.append(f"training images per class: max {counts.max()}, median {int(np.median(counts))}, min {counts.min()}"
                 f" (imbalance {counts.max() / max(counts.min(), 1):.1f}); groups (many > {many:g} >= medium >= "
                 f"{few:g} > few, {cfg.eval.shot_split}): {int(groups['many'].sum())} many, "
                 f"{int(groups['medium'].sum())} medium, {int(groups['few'].sum())} few")
    mem = cfg.memory
    if mem.size or mem.per_class:
        seen = {c: int(counts[c]) for c in range(len(order))}
        budget = class_budgets(seen, mem.size, mem.per_class)
        values = list(budget.values())
        lines.append(f"memory after the last task: {sum(values):,} exemplars, {min(values)}-{max(values)} per class "
                     f"({'memory.per_class' if mem.per_class else 'memory.size'} = {mem.per_class or mem.size})")
    else:
        lines.append("memory: none (memory.size = memory.per_class = 0)")
    rows = list(range(len(order)))
    if not all_classes and len(rows) > 20:
        rows = rows[:10] + [-1] + rows[-10:]
    lines.append(f"\n{'arrival':>7} {'id':>6} {'name':<24} {'train':>7} {'val':>6} {'test':>6} group")
    for i in rows:
        if i < 0:
            lines.append(f"{'...':>7}  ({len(order) - 20} more; --all lists every class)")
            continue
        group = next(g for g in ("many", "medium", "few") if groups[g][i])
        lines.append(f"{i:>7} {order[i]:>6} {names[order[i]][:24]:<24} {counts[i]:>7} {val[i]:>6} {test[i]:>6} {group}")
    return "\n".join(lines)
