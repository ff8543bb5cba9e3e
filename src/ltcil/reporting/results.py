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


SCHEMA_VERSION = 2


def build_results(steps: list, scenario, config: dict, headline: str, imbalanced: bool, extra: dict,
                  method_extra: dict | None = None) -> dict:
    """results.json. Every classifier (the method's and the plugins') sits under `classifiers`: its accuracy
    per task, top-5, old/new, average incremental and last accuracy, and many/medium/few on imbalanced data;
    `accuracy` and the other top-level series are the headline classifier's. The method's own extras (BiC's
    scales and shifts, the chosen tau, ...) sit under `method_extra`. For one release they are also written as the
    earlier flat keys (`accuracy_<classifier>`, `average_incremental_accuracy_<classifier>`, the extras' own
    names), which are deprecated; `ltcil report` reads the new keys and falls back on the flat ones only for
    files written before them."""
    head = [s["classifiers"][headline] for s in steps]
    acc = [e["top1"] for e in head]
    matrix = [e["row"][: t + 1] for t, e in enumerate(head)]
    results = {
        "schema": SCHEMA_VERSION,
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
    results["classifiers"] = {name: _classifier_entry(steps, name, imbalanced) for name in classifiers}
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
    if method_extra:
        results["method_extra"] = method_extra
        results.update(method_extra)  # deprecated flat copies (see above)
    results = _clean(results)
    results["config"] = _clean(config, digits=None)
    return results


def _classifier_entry(steps: list, name: str, imbalanced: bool) -> dict:
    entries = [s["classifiers"][name] for s in steps]
    acc = [e["top1"] for e in entries]
    entry = {"accuracy": acc, "top5": [e["top5"] for e in entries], "old": [e["old"] for e in entries],
             "new": [e["new"] for e in entries],
             "average_incremental_accuracy": metrics.average_incremental_accuracy(acc) if acc else None,
             "last_accuracy": acc[-1] if acc else None}
    if imbalanced:
        entry["shot_accuracy"] = {group: [e[group] for e in entries] for group in SHOT_GROUPS}
    return entry


def check_schema(results: dict) -> list[str]:
    """What keeps `results` from the schema build_results writes (an empty list when it follows it)."""
    problems = []

    def numbers(value) -> bool:
        return isinstance(value, list) and all(v is None or isinstance(v, (int, float)) for v in value)

    for key in ("accuracy", "accuracy_top5", "accuracy_old", "accuracy_new"):
        if not numbers(results.get(key)):
            problems.append(f"{key}: a list of numbers per task")
    if not isinstance(results.get("headline_classifier"), str):
        problems.append("headline_classifier: a string")
    classifiers = results.get("classifiers")
    if not isinstance(classifiers, dict) or not classifiers:
        problems.append("classifiers: an object with one entry per classifier")
        return problems
    if results.get("headline_classifier") not in classifiers:
        problems.append("headline_classifier: one of the classifiers")
    for name, entry in classifiers.items():
        if not isinstance(entry, dict) or not numbers(entry.get("accuracy")):
            problems.append(f"classifiers.{name}.accuracy: a list of numbers per task")
            continue
        if len(entry["accuracy"]) != len(results.get("accuracy") or []):
            problems.append(f"classifiers.{name}.accuracy: as many tasks as accuracy")
    if "method_extra" in results and not isinstance(results["method_extra"], dict):
        problems.append("method_extra: an object")
    return problems


def write_json(path: Path, data: dict) -> None:
    text = json.dumps(data, indent=1)
    write_atomic(path, lambda tmp: Path(tmp).write_text(text), kept="The previous version of the file is intact.")
