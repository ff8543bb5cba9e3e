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

With `storage` (Optuna's RDB storage: sqlite:///sweep.db on one machine, PostgreSQL across machines) several
`ltcil sweep` processes with the same arguments share each task's study: each runs trials until the study has
`optuna_trials` finished ones, waits for those still running elsewhere, and all go on from the same best one
(the sweep folder must be shared too: trials' runs are task<N>/trial<number>/). A worker that dies leaves a
trial whose heartbeat stops; after the grace period it is marked failed and run again by another worker.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import shutil
import time
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


def _open_storage(storages, url: str, heartbeat: float, retry: dict, attempts: int = 6):
    """RDBStorage, tried again a few times: workers started together on a new database race to create its
    tables, and all but one fail once ("table ... already exists", a unique-key violation)."""
    for attempt in range(attempts):
        try:
            return storages.RDBStorage(url, heartbeat_interval=max(1, int(heartbeat)),
                                       grace_period=max(2, int(2 * heartbeat)), **retry)
        except ImportError:
            raise
        except Exception:
            if attempt == attempts - 1:
                raise
            time.sleep(0.5 + attempt)


def optuna_shared(grid: dict[str, list[str]], trials: int, seed: int, evaluate, storage: str, study_name: str,
                   heartbeat: float = 60.0, poll: float = 1.0):
    """One task's study shared through Optuna's RDB storage: run trials (with a heartbeat) until `trials` are
    finished across all workers, wait while the rest run elsewhere, and return the study. A trial whose
    worker died (no heartbeat for 2 x `heartbeat` s) is failed and retried (RetryFailedTrialCallback)."""
    import optuna
    from optuna import storages
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna's words since 2.8
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if hasattr(storages, "RetryHeartbeatStaleTrialCallback"):  # Optuna >= 4.9 names
            retry = {"heartbeat_stale_trial_callback": storages.RetryHeartbeatStaleTrialCallback(max_retry=3)}
        else:
            retry = {"failed_trial_callback": storages.RetryFailedTrialCallback(max_retry=3)}
        try:
            rdb = _open_storage(storages, storage, heartbeat, retry)
        except ImportError as exc:
            raise ConfigError(f"--storage {storage}: no database driver for it ({exc}). PostgreSQL: pip install "
                              "'psycopg[binary]' (or write postgresql+psycopg2:// with psycopg2 installed); "
                              "MySQL: pip install pymysql and write mysql+pymysql://.") from None
        except Exception as exc:  # a wrong URL, a server that does not answer, a refused login
            raise ConfigError(f"--storage {storage}: Optuna cannot open it: {type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else ''}") from None
    # each worker its own sampler stream: the same seed everywhere would propose the same points at once
    sampler = optuna.samplers.TPESampler(seed=(seed * 100003 + os.getpid()) % 2**31)
    study = optuna.create_study(study_name=study_name, storage=rdb, load_if_exists=True, direction="maximize",
                                sampler=sampler)

    def objective(trial):
        values = {key: trial.suggest_categorical(key, options) for key, options in grid.items()}
        return evaluate(values, trial)

    while True:
        states = [t.state for t in study.get_trials(deepcopy=False)]
        done, running, waiting = (states.count(s) for s in (TrialState.COMPLETE, TrialState.RUNNING,
                                                           TrialState.WAITING))
        if done >= trials and not running:  # every worker then reads the same finished trials
            return study
        if done + running >= trials and not waiting:
            storages.fail_stale_trials(study)  # a dead worker's trial: failed, and queued again by the callback
            time.sleep(poll)
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.optimize(objective, n_trials=1, catch=())


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


def scenario_tasks(cfg: Config) -> int:
    """The number of tasks a run of `cfg` trains (Experiment.tasks): the scenario's, or scenario.max_tasks."""
    ds = load_dataset(cfg)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tasks = build_scenario(cfg.scenario, ds.train.labels, ds.test.labels, ds.num_classes,
                               ds.val.labels if ds.val is not None else None).tasks
    return len(tasks[: cfg.scenario.max_tasks or None])


def run_sweep(config: str | None, overrides: list[str], grid: dict[str, list[str]], out: Path,
              random_count: int = 0, seed: int = 0, log=print, optuna_trials: int = 0, prepared=None,
              storage: str = "", study: str = "", heartbeat: float = 60.0) -> dict:
    out = Path(out)
    combos, configs = prepared or prepare(config, overrides, grid, random_count, seed, optuna_trials)
    num_tasks = None
    chosen: list[tuple[Path, Config]] = []
    search = f"optuna TPE, {optuna_trials} trials per task" if optuna_trials else (
        f"random, {len(combos)} of the grid" if random_count else "grid")
    if storage:
        search += f", shared study {study!r} in {storage.split('://')[0]} storage"
    record: dict = {"grid": grid, "search": search,
                    "protocol": "per task, on validation images of the classes seen so far",
                    "candidates": combos, "tasks": []}
    for t in itertools.count():
        trials: list[dict] = []
        scored: dict[str, dict] = {}

        def evaluate(values: dict[str, str], trial=None) -> float:
            if trial is None and _key(values) in scored:  # a repeated proposal: its score is known
                return scored[_key(values)]["validation_accuracy"]
            if trial is not None:  # shared study: a point any worker has scored is not trained again
                for known in trial.study.get_trials(deepcopy=False):
                    if known.state.name == "COMPLETE" and known.params == values:
                        trial.set_user_attr("dir", known.user_attrs["dir"])
                        return known.value
            nonlocal num_tasks
            k = len(trials) + 1
            cfg = configs[_key(values)]
            name = f"trial{trial.number}" if trial is not None else f"candidate{k}"
            trial_dir = out / f"task{t + 1}" / name
            if trial is not None:
                trial.set_user_attr("dir", str(trial_dir.relative_to(out)))
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
            log(f"task {t + 1}/{num_tasks} {name} {values}: validation {score:.2f}")
            return score

        if storage:  # every worker's trials, in trial order
            shared = optuna_shared(grid, optuna_trials, seed + t, evaluate, storage, f"{study}-task{t + 1}",
                                   heartbeat)
            trials = [{"candidate": tr.number, "values": tr.params, "validation_accuracy": tr.value,
                       "dir": tr.user_attrs["dir"]} for tr in sorted(shared.get_trials(deepcopy=False),
                                                                   key=lambda tr: tr.number)
                      if tr.state.name == "COMPLETE"]
            if num_tasks is None:  # this worker trained nothing at the first task: the scenario says
                num_tasks = scenario_tasks(configs[_key(trials[0]["values"])])
        elif optuna_trials:
            optuna_search(grid, optuna_trials, seed + t, evaluate)
        else:
            for values in combos:
                evaluate(values)
        best = max(range(len(trials)), key=lambda i: trials[i]["validation_accuracy"])  # ties: the first
        best_dir = out / trials[best]["dir"] if storage else out / f"task{t + 1}" / f"candidate{best + 1}"
        chosen.append((best_dir, configs[_key(trials[best]["values"])]))
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
