"""Evaluation after a task: predictions on the test split of every seen class, in large no-grad batches,
turned into one step of the metrics (top-1/top-5, accuracy-matrix row, old/new, many/medium/few)."""

from __future__ import annotations

import numpy as np
import torch

from . import metrics


def classify(method, plugins, x):
    """The method's classifiers (predict) and those of the plugins, for a batch."""
    out = method.predict(x)
    for plugin in plugins:
        out.update(plugin.classifiers(method, x))
    return out


@torch.inference_mode()
def predict_all(method, data, split: str, indices: np.ndarray, batch_size: int, plugins=()) -> dict:
    """Logits of every classifier the method and the plugins report, as float32 NumPy arrays, plus the
    targets."""
    method.model.eval()
    outputs: dict = {}
    targets = []
    for idx in data.index_batches(indices, batch_size, shuffle=False, split=split):
        x, y = data.batch(split, idx)
        for name, logits in classify(method, plugins, x).items():
            outputs.setdefault(name, []).append(logits.float().cpu())
        targets.append(y.cpu())
    result = {name: torch.cat(chunks).numpy() for name, chunks in outputs.items()}
    result["target"] = torch.cat(targets).numpy() if targets else np.zeros(0, dtype=np.int64)
    return result


@torch.inference_mode()
def predict_tasks(method, data, split: str, index_lists: list, batch_size: int, plugins=()) -> dict:
    """predict_all over the concatenated index lists (one per task). A method with a feature cache (a frozen
    backbone: methods/frozen_base.py) and no plugin embeds each list once per run and classifies from memory; a
    prompt method with a query cache (methods/l2p.py and its kin) computes each image's frozen query once per run
    and runs only the prompted pass at later evaluations."""
    cache = getattr(method, "feature_cache", None)
    queries = getattr(method, "query_cache", None)  # a prompt method: the frozen query of each image, cached
    if (cache is None and queries is None) or plugins:
        return predict_all(method, data, split, np.concatenate(index_lists), batch_size, plugins)
    method.model.eval()
    device = next(method.model.parameters()).device
    outputs: dict = {}
    targets = []
    for indices in index_lists:
        if cache is not None:
            feats, y = cache.features(method.model.forward_features, data, split, indices, batch_size)
            batches = (method.predict_features(feats[s : s + batch_size].to(device))
                       for s in range(0, len(y), batch_size))
        else:
            query, y = queries.features(method.query_embed, data, split, indices, batch_size)
            batches = (method.predict_with_query(data.batch(split, idx)[0], query[s : s + len(idx)].to(device))
                       for s, idx in zip(range(0, len(y), batch_size),
                                         data.index_batches(indices, batch_size, shuffle=False, split=split)))
        for predictions in batches:
            for name, logits in predictions.items():
                outputs.setdefault(name, []).append(logits.float().cpu())
        targets.append(y)
    result = {name: torch.cat(chunks).numpy() for name, chunks in outputs.items()}
    result["target"] = torch.cat(targets).numpy() if targets else np.zeros(0, dtype=np.int64)
    return result


def evaluate_step(method, data, scenario, task_index: int, eval_cfg, split: str = "test", plugins=()) -> dict:
    """Metrics on all classes seen after task `task_index`."""
    tasks = scenario.tasks[: task_index + 1]
    out = predict_tasks(method, data, split, [t.test_indices for t in tasks], eval_cfg.batch_size, plugins)
    target = out.pop("target")
    seen = scenario.seen_classes(task_index)
    task_of_class = np.concatenate([np.full(t.num_classes, t.index) for t in scenario.tasks])
    new_mask = np.zeros(scenario.num_classes, dtype=bool)
    new_mask[tasks[-1].classes] = True
    old_mask = np.zeros(scenario.num_classes, dtype=bool)
    old_mask[: seen] = True
    old_mask &= ~new_mask

    step: dict = {"task": task_index, "seen_classes": seen, "classifiers": {}}
    for name, logits in out.items():
        pred = logits.argmax(1)
        entry = {
            "top1": metrics.accuracy(pred, target),
            "top5": float(metrics.topk_correct(logits, target, 5).mean() * 100) if len(target) else None,
            "row": metrics.task_accuracies(pred, target, task_of_class, len(scenario.tasks)),
            "old": metrics.group_accuracy(pred, target, old_mask),
            "new": metrics.group_accuracy(pred, target, new_mask),
            "per_class": metrics.per_class_accuracy(pred, target, seen).tolist(),
        }
        groups = metrics.shot_groups(scenario.train_counts, eval_cfg.many_shot, eval_cfg.few_shot, eval_cfg.shot_split)
        for group, mask in groups.items():
            entry[group] = metrics.group_accuracy(pred, target, mask)
        step["classifiers"][name] = entry
    return step


def validation_accuracy(method, data, scenario, task_index: int, batch_size: int, headline: str,
                        plugins=()) -> float:
    """Top-1 of the headline classifier on the validation images of every class seen after `task_index`
    (held out from training data; the test split is not read). Raises when the scenario has none."""
    lists = [t.val_indices for t in scenario.tasks[: task_index + 1]]
    if sum(len(v) for v in lists) == 0:
        from ..errors import ConfigError

        raise ConfigError("selection needs validation images: set scenario.val_fraction (e.g. 0.1) or "
                          "scenario.val_per_class, or use a dataset with its own validation split.")
    out = predict_tasks(method, data, scenario.val_pool, lists, batch_size, plugins)
    return metrics.accuracy(out[headline].argmax(1), out["target"])
