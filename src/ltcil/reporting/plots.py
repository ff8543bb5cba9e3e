"""The report's figures, drawn with matplotlib and returned as PNG data URIs for inlining into report.html.

Only report.py imports this module, and only when a report is written: matplotlib is an optional dependency.
Figures are built with matplotlib's object API (Figure + Agg canvas) rather than pyplot, so drawing a report
neither needs a display nor switches the backend of a notebook or program that calls write_report().
Every function takes the loaded runs and returns a data URI, or None when no run has the data to draw.
"""

from __future__ import annotations

import base64
import io
import math

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .report import PHASES, Run, classifier_series

LINE_STYLES = ("--", ":", "-.")  # further classifiers of a run: same colour as the run, a different dash
MAX_ANNOTATED_TASKS = 10  # above this the heatmap's numbers would not be legible
# colours of the timing phases: neutral, so they are not read as run colours
PHASE_COLORS = ("#b0b0b0", "#4c72b0", "#dd8452", "#55a868")


def to_uri(fig: Figure) -> str:
    FigureCanvasAgg(fig)  # attach an Agg canvas: savefig then needs no backend selection
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _floats(values) -> list[float]:
    """None (JSON null) -> NaN: matplotlib leaves a gap there instead of failing."""
    return [float(v) if isinstance(v, (int, float)) else math.nan for v in values or []]


def _color(index: int) -> str:
    return f"C{index % 10}"


def _tasks(n: int) -> list[int]:
    return list(range(1, n + 1))


def _classes_seen(results: dict, n: int) -> list[int]:
    """x for accuracy curves: classes learned so far (the usual CIL axis); task number when tasks are unknown."""
    tasks = results.get("tasks") or []
    if len(tasks) < n:
        return _tasks(n)
    seen, total = [], 0
    for task in tasks[:n]:
        total += len(task)
        seen.append(total)
    return seen


def _integer_ticks(ax) -> None:
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # task numbers: no 1.5th task


def _legend(ax) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", frameon=False)


def _grid(count: int, width: float = 3.6, height: float = 3.2, max_cols: int = 3):
    """One panel per run, wrapped into rows of at most max_cols; the spare panels are hidden."""
    cols = min(count, max_cols)
    rows = math.ceil(count / cols)
    fig = Figure(figsize=(width * cols + 1.0, height * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[count:]:
        ax.set_visible(False)
    return fig, axes[:count]


# ---------------------------------------------------------------------------------------------------- figures


def accuracy_curves(runs: list[Run]) -> str | None:
    fig = Figure(figsize=(8.5, 4.2), layout="constrained")
    ax = fig.add_subplot()
    for i, run in enumerate(runs):
        acc = run.results.get("accuracy") or []
        if not acc:
            continue
        x = _classes_seen(run.results, len(acc))
        headline = run.results.get("headline_classifier") or "top-1"
        ax.plot(x, _floats(acc), marker="o", color=_color(i), label=f"{run.name} ({headline})")
        for j, (name, values) in enumerate(classifier_series(run.results).items()):
            values = values[: len(x)]
            ax.plot(x[: len(values)], _floats(values), linestyle=LINE_STYLES[j % len(LINE_STYLES)], marker=".",
                    color=_color(i), label=f"{run.name}: {name}")
    if not ax.lines:
        return None
    ax.set(xlabel="classes learned", ylabel="top-1 accuracy (%)", ylim=(0, 101))
    ax.grid(alpha=0.3)
    _legend(ax)
    return to_uri(fig)


def accuracy_matrices(runs: list[Run]) -> str | None:
    runs = [run for run in runs if run.results.get("accuracy_matrix")]
    if not runs:
        return None
    fig, axes = _grid(len(runs))
    image = None
    for ax, run in zip(axes, runs):
        image = _heatmap(ax, run.results["accuracy_matrix"])
        ax.set_title(run.name, fontsize="medium")
    fig.colorbar(image, ax=list(axes), label="accuracy (%)", shrink=0.9)
    return to_uri(fig)


def _heatmap(ax, rows: list):
    """rows is ragged lower-triangular (row t: accuracy on tasks 0..t after task t); the rest stays blank."""
    n = max(len(rows), max((len(r or []) for r in rows), default=0))
    grid = [[math.nan] * n for _ in range(n)]
    for t, row in enumerate(rows):
        for k, value in enumerate(_floats(row)):
            grid[t][k] = value
    image = ax.imshow(grid, vmin=0, vmax=100, cmap="viridis", origin="upper")
    ticks = list(range(n))
    ax.set_xticks(ticks, [str(k + 1) for k in ticks])
    ax.set_yticks(ticks, [str(t + 1) for t in ticks])
    ax.set(xlabel="accuracy on the classes of task", ylabel="after task")
    if n <= MAX_ANNOTATED_TASKS:
        for t in range(n):
            for k in range(n):
                if not math.isnan(grid[t][k]):
                    ax.text(k, t, f"{grid[t][k]:.0f}", ha="center", va="center", fontsize="x-small",
                            color="black" if grid[t][k] > 60 else "white")
    return image


def forgetting_curves(runs: list[Run]) -> str | None:
    fig = Figure(figsize=(8.5, 3.8), layout="constrained")
    ax = fig.add_subplot()
    for i, run in enumerate(runs):
        values = _floats(run.results.get("forgetting_per_step"))
        if any(not math.isnan(v) for v in values):
            ax.plot(_tasks(len(values)), values, marker="o", color=_color(i), label=run.name)
    if not ax.lines:
        return None
    ax.set(xlabel="after task", ylabel="average forgetting (points)")
    ax.grid(alpha=0.3)
    _integer_ticks(ax)
    _legend(ax)
    return to_uri(fig)


def per_class_vs_counts(runs: list[Run]) -> str | None:
    fig = Figure(figsize=(8.5, 4.2), layout="constrained")
    ax = fig.add_subplot()
    for i, run in enumerate(runs):
        per_class = run.results.get("per_class_accuracy") or [None]
        last = per_class[-1] if isinstance(per_class[-1], list) else []
        counts = run.results.get("train_counts") or []
        # both are indexed by arrival label, so the last row lines up with the first classes of train_counts
        pairs = [(c, a) for c, a in zip(counts, last)
                 if isinstance(c, (int, float)) and c > 0 and isinstance(a, (int, float))]
        if pairs:
            ax.scatter(*zip(*pairs, strict=True), s=18, alpha=0.65, color=_color(i), label=run.name)
    if not ax.collections:
        return None
    low, high = ax.dataLim.x0, ax.dataLim.x1
    wide = high >= 10 * low  # a long tail: log scale; a narrow range (balanced data) reads better linear
    if wide:
        ax.set_xscale("log")
    ax.set(xlabel="training images of the class" + (" (log scale)" if wide else ""),
           ylabel="top-1 accuracy after the last task (%)", ylim=(-2, 102))
    ax.grid(alpha=0.3, which="both")
    _legend(ax)
    return to_uri(fig)


def shot_groups(runs: list[Run]) -> str | None:
    groups = ("many", "medium", "few")
    runs_with = [(i, run) for i, run in enumerate(runs) if any(run.results.get(f"accuracy_{g}") for g in groups)]
    if not runs_with:
        return None
    num_tasks = max(len(run.results.get(f"accuracy_{g}") or []) for _, run in runs_with for g in groups)
    fig = Figure(figsize=(11, 3.6), layout="constrained")
    axes = fig.subplots(1, 3, sharey=True)
    for ax, group in zip(axes, groups):
        for i, run in runs_with:
            values = _floats(run.results.get(f"accuracy_{group}"))
            ax.plot(_tasks(len(values)), values, marker="o", color=_color(i), label=run.name)
        if all(math.isnan(y) for line in ax.lines for y in line.get_ydata()):
            # null throughout: no seen class had that many (or that few) training images
            ax.text(0.5, 0.5, f"no {group}-shot classes", transform=ax.transAxes, ha="center", color="grey")
        ax.set(title=f"{group}-shot classes", xlabel="after task", xlim=(0.5, num_tasks + 0.5), ylim=(0, 101))
        ax.grid(alpha=0.3)
        _integer_ticks(ax)
    axes[0].set_ylabel("top-1 accuracy (%)")
    _legend(axes[-1])
    return to_uri(fig)


def bias_correction(runs: list[Run]) -> str | None:
    runs_with = [(i, run) for i, run in enumerate(runs) if run.results.get("bias_correction")]
    if not runs_with:
        return None
    fig = Figure(figsize=(10, 3.6), layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, key, neutral in zip(axes, ("scale", "shift"), (1.0, 0.0)):
        ax.axhline(neutral, color="grey", linewidth=0.8)  # the value that leaves the new-class logits untouched
        for i, run in runs_with:
            values = _floats([(p or {}).get(key) if isinstance(p, dict) else None
                              for p in run.results["bias_correction"]])
            ax.plot(_tasks(len(values)), values, marker="o", color=_color(i), label=run.name)
        ax.set(title=f"BiC {key} (new-class logits)", xlabel="task")
        ax.grid(alpha=0.3)
        _integer_ticks(ax)
    _legend(axes[-1])
    return to_uri(fig)


def timing(runs: list[Run]) -> str | None:
    runs = [run for run in runs if run.results.get("timing")]
    if not runs:
        return None
    fig, axes = _grid(len(runs))  # own y scale each: runs can differ a hundredfold in speed
    for ax, run in zip(axes, runs):
        entries = [e for e in run.results["timing"] if isinstance(e, dict)]
        tasks = [int(e["task"]) + 1 if isinstance(e.get("task"), int) else k + 1 for k, e in enumerate(entries)]
        bottom = [0.0] * len(entries)
        for j, phase in enumerate(PHASES):
            heights = [v if not math.isnan(v) else 0.0 for v in _floats([e.get(phase) for e in entries])]
            ax.bar(tasks, heights, bottom=bottom, color=PHASE_COLORS[j], label=phase)
            bottom = [b + h for b, h in zip(bottom, heights)]
        ax.set(title=run.name, xlabel="task", ylabel="seconds", xticks=tasks)
        ax.grid(alpha=0.3, axis="y")
    _legend(axes[-1])
    return to_uri(fig)


def training_loss(runs: list[Run]) -> str | None:
    """From events.jsonl: main-stage loss per epoch, at x = task + fraction of its epochs so runs line up."""
    fig = Figure(figsize=(8.5, 3.8), layout="constrained")
    ax = fig.add_subplot()
    for i, run in enumerate(runs):
        points = [(e["task"] + e["epoch"] / e["epochs"], e["losses"]["loss"]) for e in run.events
                  if e.get("event") == "epoch" and e.get("stage") == "train" and _has_loss(e)]
        if points:
            ax.plot(*zip(*points, strict=True), marker=".", color=_color(i), label=run.name)
    if not ax.lines:
        return None
    ax.set(xlabel="tasks trained", ylabel="training loss")
    ax.grid(alpha=0.3)
    _legend(ax)
    return to_uri(fig)


def _has_loss(event: dict) -> bool:
    numbers = (int, float)
    return (isinstance(event.get("task"), int) and isinstance(event.get("epoch"), numbers)
            and isinstance(event.get("epochs"), numbers) and event["epochs"] > 0
            and isinstance(event.get("losses"), dict) and isinstance(event["losses"].get("loss"), numbers))


def all_figures(runs: list[Run]) -> list[tuple[str, str, str | None]]:
    """(title, caption, data URI or None) in the order the page shows them."""
    return [
        ("Accuracy curves", ("Top-1 accuracy on all classes learned so far, after each task. Solid: the headline "
                             "classifier (results.json's accuracy); dashed/dotted: the run's other classifiers."),
         accuracy_curves(runs)),
        ("Accuracy matrix", "Row t: accuracy on the classes of each earlier task, measured after task t.",
         accuracy_matrices(runs)),
        ("Forgetting", "Average drop from each old task's best accuracy to its accuracy after this task.",
         forgetting_curves(runs)),
        ("Per-class accuracy against training images", ("The long-tail view: each point is one class, its "
                                                        "accuracy after the last task against the number of "
                                                        "training images it had."), per_class_vs_counts(runs)),
        ("Many / medium / few-shot accuracy", ("Headline-classifier accuracy on classes grouped by training images "
                                               "(thresholds eval.many_shot and eval.few_shot); only imbalanced "
                                               "runs record it."), shot_groups(runs)),
        ("BiC bias correction", "Scale and shift fitted for each task's new-class logits.", bias_correction(runs)),
        ("Timing", "Seconds per phase of each task.", timing(runs)),
        ("Training loss", "Loss of each epoch of the main training stage (from events.jsonl).", training_loss(runs)),
    ]
