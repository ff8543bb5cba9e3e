"""Hyper-parameter sweeps that never touch the test set (`ltcil sweep`).

Continual protocol: values are chosen task by task with only what exists at that task. For task t every
candidate continues from the model chosen at task t - 1, trains task t, and is scored on the validation
images (held out from training data) of the classes seen so far; the best becomes the starting point of
task t + 1. Selection never reads the test split. Once every task is chosen, the chosen model of each
task is evaluated on the test split once, for the report (sweep.json and the printed table).

Candidates are the grid's full product, `random` of them drawn with `seed` (random search), or, with the
optional Optuna backend, `optuna_trials` proposals per task from a TPE sampler over the grid's values (each
task's study starts afresh: what scored well at one task is not assumed to at the next). A proposal already
scored at this task is not trained again.
"""

from __future__ import annotations

import itertools
import json
import random
import shutil
import warnings
from pathlib import Path

from .config import Config, load_config, short
from .engine.runner import Experiment, check_components, load_dataset
from .errors import ConfigError, LtcilError
from .evaluation.evaluator import evaluate_step, validation_accuracy
from .reporting.results import build_results, write_json
from .scenarios import build_scenario


def split_values(text: str) -> list[str]:
    """'0.1,0.01' -> ['0.1', '0.01']; commas inside [...] stay (milestones=[10,20],[20,40])."""
    values, depth, current = [], 0, ""
    for ch in text:
        depth += ch == "["
        depth -= ch == "]"
        if ch == "," and depth == 0:
            values.append(current)
            current = ""
        else:
            current += ch
    values.append(current)
    return [v.strip() for v in values if v.strip()]


def parse_grid(items: list[str]) -> dict[str, list[str]]:
    grid = {}
    for item in items:
        key, sep, values = item.partition("=")
        if not sep or not key or not split_values(values):
            raise ConfigError(f"--grid {item!r}: expected key=v1,v2,... (e.g. train.lr=0.1,0.01).")
        if key in grid:
            raise ConfigError(f"--grid: {key} is given twice.")
        grid[key] = split_values(values)
    return grid


def candidates(grid: dict[str, list[str]], random_count: int = 0, seed: int = 0) -> list[dict[str, str]]:
    combos = [dict(zip(grid, values)) for values in itertools.product(*grid.values())]
    if random_count and random_count < len(combos):
        combos = random.Random(seed).sample(combos, random_count)
    return combos


def _overrides(values: dict[str, str]) -> list[str]:
    return [f"{k}={v}" for k, v in values.items()]


def _key(values: dict[str, str]) -> str:
    return json.dumps(values, sort_keys=True)


def optuna_search(grid: dict[str, list[str]], trials: int, seed: int, evaluate) -> None:
    """Let Optuna's TPE sampler propose `trials` points of the grid; `evaluate(values)` returns their score."""
    try:
        import optuna
    except ImportError:
        raise ConfigError("ltcil sweep --optuna needs the optuna package: pip install optuna (or use the grid or "
                          "--random).") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))
    for _ in range(trials):
        trial = study.ask()
        values = {key: trial.suggest_categorical(key, options) for key, options in grid.items()}
        study.tell(trial, evaluate(values))


def prepare(config: str | None, overrides: list[str], grid: dict[str, list[str]], random_count: int = 0,
            seed: int = 0, optuna_trials: int = 0) -> tuple[list[dict], dict[str, Config]]:
    """The candidates and their configs, every one checked before anything trains (or the sweep folder is
    written): its keys and values, its method and components, and its scenario on the dataset's labels, so a
    bad value in the grid fails in seconds, not after the first candidates have trained."""
    combos = candidates(grid, 0 if optuna_trials else random_count, seed)
    configs: dict[str, Config] = {}
    datasets: dict[str, object] = {}  # one load per distinct data section
    for values in combos:
        try:
            cfg = load_config(config, [*overrides, "train.progress=false", *_overrides(values)])
            check_components(cfg)
            data_key = json.dumps(cfg.to_dict()["data"], sort_keys=True)
            if data_key not in datasets:
                datasets[data_key] = load_dataset(cfg)
            ds = datasets[data_key]
            with warnings.catch_warnings():  # the candidate's own run warns, once, when it starts
                warnings.simplefilter("ignore")
                build_scenario(cfg.scenario, ds.train.labels, ds.test.labels, ds.num_classes,
                               ds.val.labels if ds.val is not None else None)
        except LtcilError as exc:
            raise ConfigError(f"ltcil sweep: the candidate {short(values)} cannot run, so nothing was trained: "
                              f"{exc}") from None
        configs[_key(values)] = cfg
    return combos, configs


def run_sweep(config: str | None, overrides: list[str], grid: dict[str, list[str]], out: Path,
              random_count: int = 0, seed: int = 0, log=print, optuna_trials: int = 0, prepared=None) -> dict:
    out = Path(out)
    combos, configs = prepared or prepare(config, overrides, grid, random_count, seed, optuna_trials)
    num_tasks = None
    chosen: list[tuple[Path, Config]] = []
    search = f"optuna TPE, {optuna_trials} trials per task" if optuna_trials else (
        f"random, {len(combos)} of the grid" if random_count else "grid")
    record: dict = {"grid": grid, "search": search,
                    "protocol": "per task, on validation images of the classes seen so far",
                    "candidates": combos, "tasks": []}
    for t in itertools.count():
        trials: list[dict] = []
        scored: dict[str, dict] = {}

        def evaluate(values: dict[str, str]) -> float:
            if _key(values) in scored:  # a repeated proposal: its score is known
                return scored[_key(values)]["validation_accuracy"]
            nonlocal num_tasks
            k = len(trials) + 1
            cfg = configs[_key(values)]
            trial_dir = out / f"task{t + 1}" / f"candidate{k}"
            if trial_dir.exists():
                shutil.rmtree(trial_dir)
            trial_dir.mkdir(parents=True)
            if t > 0:
                shutil.copytree(chosen[-1][0] / "checkpoints", trial_dir / "checkpoints")
            exp = Experiment(cfg, trial_dir, progress=False, log=lambda *_: None)
            num_tasks = len(exp.tasks)
            if t > 0 and not exp.restore(same_config=False):
                raise ConfigError(f"{trial_dir}: the chosen checkpoint of task {t} did not load.")
            exp.train_task(t)
            score = validation_accuracy(exp.method, exp.data, exp.scenario, t, cfg.eval.batch_size, exp.headline,
                                        exp.plugins)
            trials.append({"candidate": k, "values": values, "validation_accuracy": score})
            scored[_key(values)] = trials[-1]
            log(f"task {t + 1}/{num_tasks} candidate {k} {values}: validation {score:.2f}")
            return score

        if optuna_trials:
            optuna_search(grid, optuna_trials, seed + t, evaluate)
        else:
            for values in combos:
                evaluate(values)
        best = max(range(len(trials)), key=lambda i: trials[i]["validation_accuracy"])  # ties: the first
        chosen.append((out / f"task{t + 1}" / f"candidate{best + 1}", configs[_key(trials[best]["values"])]))
        record["tasks"].append({"task": t, "trials": trials, "chosen": trials[best]})
        if t + 1 == num_tasks:
            break
    # Reporting only: the chosen model of each task, evaluated once on the test split.
    steps, last = [], None
    for t, (run_dir, cfg) in enumerate(chosen):
        last = Experiment(cfg, run_dir, progress=False, log=lambda *_: None)
        last.restore()
        steps.append(evaluate_step(last.method, last.data, last.scenario, t, cfg.eval, plugins=last.plugins))
    results = build_results(steps, last.scenario, last.cfg.to_dict(), last.headline,
                            last.scenario.is_imbalanced, {})
    record["test"] = {k: results[k] for k in ("accuracy", "average_incremental_accuracy", "last_accuracy",
                                              "forgetting")}
    write_json(out / "sweep.json", record)
    return record


def sweep_table(record: dict) -> str:
    lines = [f"{'task':>4s}  {'chosen':40s} {'val':>6s}  candidates (validation top-1)"]
    for entry in record["tasks"]:
        chosen = entry["chosen"]
        others = " ".join(f"{t['validation_accuracy']:.1f}" for t in entry["trials"])
        lines.append(f"{entry['task'] + 1:4d}  {json.dumps(chosen['values'])[:40]:40s} "
                     f"{chosen['validation_accuracy']:6.2f}  {others}")
    test = record["test"]
    lines.append("")
    lines.append("test top-1 of the chosen models (reported, never used to choose): "
                 + " ".join(f"{a:.2f}" for a in test["accuracy"]))
    lines.append(f"average incremental accuracy: {test['average_incremental_accuracy']:.2f}   "
                 f"last: {test['last_accuracy']:.2f}")
    return "\n".join(lines)
