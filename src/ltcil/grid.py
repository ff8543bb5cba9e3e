"""Grids of runs (`ltcil grid`): the cross product of configs, methods, seeds and swept keys, one run folder
each, then one table row per setting with the mean and standard deviation over its seeds, as a paper reports.

A run's folder is named by its settings and a short hash of its resolved config, so re-running the same
command finds its runs again: a finished one is skipped, a killed one resumed (`ltcil resume`), and a changed
setting (an edited config file too) is a new folder, never a silently reused run. Keys that do not change the
experiment (where data lives, threads, device, progress, logging) are left out of the hash. Which launcher
runs the runs (this machine, Slurm) is `launch.py`'s concern; this module knows runs, folders and tables.
What the grid knows of a run is kept under GRID_DIR: its outcome (`<run>.json`) and its output (`<run>.log`);
the run folder itself is ltcil's own, as `ltcil run` writes it.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import itertools
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

from .config import load_config
from .errors import ConfigError, LtcilError
from .sweep import split_values

GRID_DIR = ".grid"  # the grid's own records beside its run folders
NOT_EXPERIMENT = ("data.root", "data.download", "data.workers", "data.cache", "train.threads", "train.progress",
                  "device", "log")  # keys that leave the experiment unchanged: not in a run's identity
METRICS = (("average_incremental_accuracy", "avg inc. acc"), ("last_accuracy", "last acc"),
           ("forgetting", "forgetting"))
SHOTS = ("many", "medium", "few")


@dataclass(frozen=True)
class GridRun:
    config: str  # a shipped config's name or a YAML path
    overrides: tuple  # key=value, the setting's and the seed's
    setting: tuple  # (label, value) pairs that name the table row: config, method, swept keys
    seed: object  # the seed (None: the config's own)
    name: str  # the run folder's name under the grid's folder

    def command(self, out: Path) -> list[str]:
        return ["run", self.config, *self.overrides, "--out", str(out / self.name), "--quiet"]


def parse_axes(items: list[str]) -> tuple[list[str], dict[str, list[str]]]:
    """CONFIG names and key=v1,v2 items: (configs, {key: values}); a key with one value applies to every run."""
    configs, axes = [], {}
    for item in items:
        key, sep, values = item.partition("=")
        if not sep:
            configs.append(item)
            continue
        if not key or not split_values(values):
            raise ConfigError(f"ltcil grid: {item!r}: expected key=v1,v2,... (e.g. train.lr=0.1,0.01).")
        if key in axes:
            raise ConfigError(f"ltcil grid: {key} is given twice.")
        axes[key] = split_values(values)
    for key in ("method.name", "seed"):
        if key in axes:
            flag = "--methods" if key == "method.name" else "--seeds"
            raise ConfigError(f"ltcil grid: give {key} with {flag} (a column of the table), not as {key}=...")
    return configs, axes


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=+-]+", "_", text).strip("_")[:60]


def identity(cfg) -> str:
    """A short hash of what makes the experiment: the resolved config without the keys that do not."""
    tree = dataclasses.asdict(cfg)
    for dotted in NOT_EXPERIMENT:
        node, *rest = dotted.split(".")
        if not rest:
            tree.pop(node, None)
        elif isinstance(tree.get(node), dict):
            tree[node].pop(rest[0], None)
    return hashlib.sha256(json.dumps(tree, sort_keys=True, default=str).encode()).hexdigest()[:8]


def expand(configs: list[str], axes: dict[str, list[str]], methods: list[str], seeds: list[str]) -> list[GridRun]:
    """Every combination, each config loaded and checked now, so a bad value fails before anything trains."""
    from .engine.runner import check_components

    swept = [k for k, v in axes.items() if len(v) > 1]
    runs, names = [], {}
    for config, method, values, seed in itertools.product(configs, methods or [None], itertools.product(
            *axes.values()), seeds or [None]):
        chosen = dict(zip(axes, values))
        overrides = ([f"method.name={method}"] if method else []) + [f"{k}={v}" for k, v in chosen.items()]
        overrides += [f"seed={seed}"] if seed is not None else []
        try:
            cfg = load_config(config, overrides)
            check_components(cfg)
        except LtcilError as exc:
            setting = ", ".join([config, *overrides])
            raise type(exc)(f"ltcil grid: the run {setting} is not valid (nothing has been trained): {exc}") from None
        setting = [("config", Path(config).stem)] + ([("method", method)] if method else []) + [
            (k, chosen[k]) for k in swept]
        label = "__".join(_slug(v if k in ("config", "method") else f"{k}={v}") for k, v in setting)
        name = f"{label}__seed{_slug(str(seed))}__{identity(cfg)}" if seed is not None else \
            f"{label}__{identity(cfg)}"
        if name in names:
            raise ConfigError(f"ltcil grid: two runs would share the folder {name} ({names[name]} and "
                              f"{', '.join(overrides)}): a value is given twice.")
        names[name] = ", ".join(overrides)
        runs.append(GridRun(config, tuple(overrides), tuple(setting), seed, name))
    return runs


def status_path(out: Path, run: GridRun) -> Path:
    return out / GRID_DIR / f"{run.name}.json"


def log_path(out: Path, run: GridRun) -> Path:
    return out / GRID_DIR / f"{run.name}.log"


def read_status(out: Path, run: GridRun) -> dict:
    try:
        return json.loads(status_path(out, run).read_text())
    except (OSError, ValueError):
        return {}


def write_status(out: Path, run: GridRun, **fields) -> None:
    path = status_path(out, run)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"config": run.config, "overrides": list(run.overrides), "seed": run.seed, **fields}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    tmp.replace(path)


def state(out: Path, run: GridRun) -> str:
    """new | done | failed | started (begun with no end recorded: killed, or running elsewhere)."""
    status = read_status(out, run).get("status")
    if status == "done" and (out / run.name / "results.json").exists():
        return "done"
    if status == "failed":
        return "failed"
    return "started" if (out / run.name).exists() or status else "new"


def last_lines(path: Path, count: int = 3) -> list[str]:
    try:
        lines = [line.rstrip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return []
    return lines[-count:]


# ---------------------------------------------------------------------------------------------------- tables

def mean_std(values: list) -> tuple[float | None, float | None, int]:
    """Mean and sample standard deviation (n - 1; None for one value) of the values that exist."""
    vals = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return None, None, 0
    mean = sum(vals) / len(vals)
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else None
    return mean, std, len(vals)


def _last(series) -> float | None:
    return series[-1] if isinstance(series, list) and series else None


def run_metrics(results: dict) -> dict:
    out = {key: results.get(key) for key, _ in METRICS}
    for group in SHOTS:  # long-tailed runs: many / medium / few at the last task
        out[group] = _last(results.get(f"accuracy_{group}"))
    return out


def table(out: Path, runs: list[GridRun]) -> dict:
    """One row per setting, in the grid's order: the settings' values, the seeds done, mean and std of each
    metric over them (runs not done are counted as missing, never as zero)."""
    rows, by_setting = [], {}
    for run in runs:
        by_setting.setdefault(run.setting, []).append(run)
    long_tailed = False
    for setting, members in by_setting.items():
        values = []
        for run in members:
            if state(out, run) == "done":
                values.append(run_metrics(json.loads((out / run.name / "results.json").read_text())))
        stats = {}
        for key in [k for k, _ in METRICS] + list(SHOTS):
            stats[key] = mean_std([v[key] for v in values])
        long_tailed |= any(stats[g][2] for g in SHOTS)
        rows.append({"setting": list(setting), "runs": len(values), "planned": len(members), "stats": stats})
    labels = [label for label, _ in rows[0]["setting"]] if rows else []
    metrics = [k for k, _ in METRICS] + (list(SHOTS) if long_tailed else [])
    return {"labels": labels, "metrics": metrics, "rows": rows}


def _titles(metrics: list) -> list[str]:
    names = dict(METRICS)
    return [names.get(m, m) for m in metrics]


def _pm(mean, std, digits: int = 2, sep: str = " ± ") -> str:
    if mean is None:
        return "-"
    return f"{mean:.{digits}f}" + ("" if std is None else f"{sep}{std:.{digits}f}")


def markdown(tab: dict) -> str:
    head = [*tab["labels"], "seeds", *_titles(tab["metrics"])]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in tab["rows"]:
        cells = [str(v) for _, v in row["setting"]] + [f"{row['runs']}/{row['planned']}"]
        cells += [_pm(*row["stats"][m][:2]) for m in tab["metrics"]]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def latex(tab: dict) -> str:
    def esc(text: str) -> str:
        return re.sub(r"([_%&#$^{}~\\])", r"\\\1", str(text))

    head = [*tab["labels"], "seeds", *_titles(tab["metrics"])]
    lines = [r"\begin{tabular}{" + "l" * (len(tab["labels"]) + 1) + "r" * len(tab["metrics"]) + "}", r"\toprule",
             " & ".join(esc(h) for h in head) + r" \\", r"\midrule"]
    for row in tab["rows"]:
        cells = [esc(v) for _, v in row["setting"]] + [f"{row['runs']}/{row['planned']}"]
        cells += ["$" + _pm(*row["stats"][m][:2], sep=r" \pm ") + "$" if row["stats"][m][0] is not None else "-"
                  for m in tab["metrics"]]
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def csv_text(tab: dict) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow([*tab["labels"], "seeds_done", "seeds_planned",
                     *itertools.chain.from_iterable((f"{m}_mean", f"{m}_std") for m in tab["metrics"])])
    for row in tab["rows"]:
        stats = [row["stats"][m][:2] for m in tab["metrics"]]
        writer.writerow([v for _, v in row["setting"]] + [row["runs"], row["planned"]] + [
            "" if x is None else round(x, 4) for pair in stats for x in pair])
    return buf.getvalue()


def write_tables(out: Path, runs: list[GridRun]) -> dict:
    tab = table(out, runs)
    (out / "grid_table.md").write_text(markdown(tab))
    (out / "grid_table.tex").write_text(latex(tab))
    (out / "grid_table.csv").write_text(csv_text(tab))
    (out / "grid_table.json").write_text(json.dumps(tab, indent=1) + "\n")
    return tab
