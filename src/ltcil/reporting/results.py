"""results.json: every metric of a run, assembled from the per-task evaluation steps."""

from __future__ import annotations

import json
import math
from pathlib import Path

from ..evaluation import metrics
from ..files import write_atomic

SHOT_GROUPS = ("many", "medium", "few")


def _clean(obj, digits: int | None = 6):
    """NaN -> None so results.json is strict JSON; measured floats to 6 decimals (48.175, not
    48.175000000000004). `digits=None` keeps values exact (the config: an lr of 1e-7 must stay one)."""
    if isinstance(obj, float):
        return None if math.isnan(obj) else (obj if digits is None else round(obj, digits))
    if isinstance(obj, dict):
        return {k: _clean(v, digits) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v, digits) for v in obj]
    return obj


def build_results(steps: list, scenario, config: dict, headline: str, imbalanced: bool, extra: dict) -> dict:
    head = [s["classifiers"][headline] for s in steps]
    acc = [e["top1"] for e in head]
    matrix = [e["row"][: t + 1] for t, e in enumerate(head)]
    results = {
        "accuracy": acc,
        "accuracy_top5": [e["top5"] for e in head],
        "accuracy_matrix": matrix,
        "average_incremental_accuracy": metrics.average_incremental_accuracy(acc) if acc else None,
        "last_accuracy": acc[-1] if acc else None,
        "forgetting": metrics.forgetting(matrix),
        "forgetting_per_step": metrics.forgetting_per_step(matrix),
        "accuracy_old": [e["old"] for e in head],
        "accuracy_new": [e["new"] for e in head],
        "headline_classifier": headline,
        "tasks": [t.original_classes for t in scenario.tasks],
        "completed_tasks": len(steps),
        **scenario.to_dict(),
        "per_class_accuracy": [e["per_class"] for e in head],
    }
    classifiers = list(steps[0]["classifiers"]) if steps else [headline]
    if len(classifiers) > 1:
        for name in classifiers:
            series = [s["classifiers"][name]["top1"] for s in steps]
            results[f"accuracy_{name}"] = series
            results[f"average_incremental_accuracy_{name}"] = metrics.average_incremental_accuracy(series)
    if imbalanced:
        for group in SHOT_GROUPS:
            results[f"accuracy_{group}"] = [e[group] for e in head]
        # every classifier's many/medium/few series (decoupled stage 2 vs stage 1, NME vs linear, ...)
        ev = config.get("eval", {})
        rule = ev.get("shot_split", "absolute")
        many, few = metrics.shot_thresholds(scenario.train_counts, ev.get("many_shot", 100), ev.get("few_shot", 20),
                                            rule)
        results["shot_groups"] = {"rule": rule, "many_above": many, "few_below": few}
        results["shot_accuracy"] = {
            name: {group: [s["classifiers"][name][group] for s in steps] for group in SHOT_GROUPS}
            for name in classifiers
        }
    results.update(extra)
    results = _clean(results)
    results["config"] = _clean(config, digits=None)
    return results


def write_json(path: Path, data: dict) -> None:
    text = json.dumps(data, indent=1)
    write_atomic(path, lambda tmp: Path(tmp).write_text(text), kept="The previous version of the file is intact.")
