"""`ltcil report`: compare finished (or partial) runs in one self-contained HTML page and a Markdown summary.

The HTML page inlines its figures as base64 PNG data URIs and carries no scripts or external assets, so it can be
mailed, archived next to a paper or opened offline. The figures live in plots.py, which needs matplotlib; this
module does not, and imports plots.py only when a report is written, so `import ltcil` never needs matplotlib.
"""

from __future__ import annotations

import html
import importlib
import json
import math
import re
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from ..errors import LtcilError, LtcilWarning
from .results import check_schema

PHASES = ("begin", "train", "end", "eval")
# accuracy_<suffix> lists that are not a classifier's top-1 series (the flat keys of results.json files written
# before the `classifiers` key)
NOT_CLASSIFIERS = {"top5", "old", "new", "matrix", "many", "medium", "few"}
MISSING = object()  # a config key one run has and another lacks


class Table(NamedTuple):
    header: list[str]
    rows: list[list[str]]
    numeric: frozenset[int] = frozenset()  # column indices to right-align


@dataclass
class Run:
    name: str
    path: Path
    results: dict
    events: list = field(default_factory=list)

    @property
    def config(self) -> dict:
        return self.results.get("config") or {}

    @property
    def method(self) -> str:
        return str((self.config.get("method") or {}).get("name") or "?")

    @property
    def status(self) -> str:
        """complete; "first k of n tasks" (scenario.max_tasks); "partial: k of n tasks" (stopped or running);
        with ", resumed" when the event log shows a resume."""
        done, total = len(self.results.get("accuracy") or []), len(self.results.get("tasks") or [])
        limit = ((self.config.get("scenario") or {}).get("max_tasks") or 0)
        text = "complete"
        if total and done < total:
            text = f"first {done} of {total} tasks" if limit and done >= limit else f"partial: {done} of {total} tasks"
        if any(e.get("event") in ("resume", "resume_inside") for e in self.events):
            text += ", resumed"
        return text


# ----------------------------------------------------------------------------------------------------- loading


def load_run(path: Path) -> Run:
    path = Path(path)
    results_path = path / "results.json"
    if not results_path.is_file():
        what = "does not exist" if not path.exists() else f"has no results.json ({results_path} is missing)"
        raise LtcilError(f"cannot report on {path}: the run folder {what}. A run writes results.json after its "
                         "first task; pass folders made by `ltcil run`.")
    try:
        results = json.loads(results_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LtcilError(f"cannot report on {path}: {results_path} is not valid JSON ({exc}).") from None
    if not isinstance(results, dict):
        raise LtcilError(f"cannot report on {path}: {results_path} must hold a JSON object.")
    _check_types(results, results_path)
    if "schema" in results:
        problems = check_schema(results)
        if problems:
            raise LtcilError(f"cannot report on {path}: {results_path} does not follow the results schema: "
                             f"{'; '.join(problems[:4])}; the file was edited or is damaged.")
    if not results.get("config"):
        results["config"] = _config_from_yaml(path / "config.yaml")
    name = path.resolve().name or str(path)  # `ltcil report .` is named after the folder, not "."
    return Run(name, path, results, _read_events(path / "events.jsonl"))


def _is_number(v) -> bool:
    return v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))


def _check_types(results: dict, path: Path) -> None:
    """The entries the report reads have the types ltcil writes; otherwise an error naming the key."""
    def bad(key, expected):
        raise LtcilError(f"cannot report on {path.parent}: {path} entry {key!r} should be {expected}, "
                         f"got {str(results[key])[:60]!r}; the file was not written by this version of ltcil, "
                         "or was edited.")

    for key, value in results.items():
        if key in ("average_incremental_accuracy", "last_accuracy", "forgetting") or (
                key.startswith("average_incremental_accuracy_")):
            if not _is_number(value):
                bad(key, "a number or null")
        elif key.startswith("accuracy") and key != "accuracy_matrix":
            if not isinstance(value, list) or not all(_is_number(v) for v in value):
                bad(key, "a list of numbers (one per task)")
    for key, kind in (("accuracy_matrix", list), ("per_class_accuracy", list), ("tasks", list),
                      ("train_counts", list), ("timing", list), ("headline_classifier", str), ("config", dict)):
        if key in results and results[key] is not None and not isinstance(results[key], kind):
            bad(key, f"a {kind.__name__}")
    for key in ("accuracy_matrix", "per_class_accuracy"):
        if not all(isinstance(row, list) and all(_is_number(v) for v in row) for row in results.get(key) or []):
            bad(key, "a list of lists of numbers")
    if not all(isinstance(t, dict) for t in results.get("timing") or []):
        bad("timing", "a list of objects")


def _config_from_yaml(path: Path) -> dict:
    # results.json normally embeds the resolved config; config.yaml is the fallback for hand-trimmed results
    if not path.is_file():
        return {}
    from ..config import read_yaml

    return read_yaml(path)


def _read_events(path: Path) -> list[dict]:
    """The event log, skipping a line cut short by a killed run: the report should still be drawn."""
    if not path.is_file():
        return []
    events = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(event, dict):
            events.append(event)
    return events


def _unique_names(runs: list[Run]) -> None:
    """Folder names label everything; runs/a/run and runs/b/run would collide, so fall back to parent/name."""
    names = [r.name for r in runs]
    for run in runs:
        if names.count(run.name) > 1:
            run.name = f"{run.path.parent.name}/{run.path.name}"
    for i, run in enumerate(runs):
        if [r.name for r in runs[:i]].count(run.name):
            run.name = f"{run.name} ({i + 1})"


def load_plots():
    """plots.py needs matplotlib; turn its absence into an instruction rather than a traceback."""
    try:
        return importlib.import_module(".plots", __package__)
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] != "matplotlib":
            raise
        # short enough that the CLI's line wrapping keeps the command on one line
        raise LtcilError('`ltcil report` needs matplotlib for its figures: pip install "ltcil[report]"') from None


# ------------------------------------------------------------------------------------------- values from runs


def classifier_series(results: dict) -> dict[str, list]:
    """Top-1 per task of every classifier besides the headline one (which is `accuracy` itself)."""
    headline = results.get("headline_classifier")
    if isinstance(results.get("classifiers"), dict):
        return {name: entry["accuracy"] for name, entry in results["classifiers"].items() if name != headline}
    series = {}
    for key, value in results.items():
        name = key.removeprefix("accuracy_")
        if name != key and name and isinstance(value, list) and name not in NOT_CLASSIFIERS and name != headline:
            series[name] = value
    return series


def wall_time(results: dict) -> float | None:
    """Seconds spent in the timed phases of all tasks (loading data and startup are not in `timing`)."""
    timing = results.get("timing") or []
    seconds = [entry.get(phase) for entry in timing if isinstance(entry, dict) for phase in PHASES]
    seconds = [s for s in seconds if isinstance(s, (int, float))]
    return sum(seconds) if seconds else None


def fmt(value, digits: int = 2) -> str:
    """A number for the tables; "-" for null (a task not evaluated, a metric undefined after one task)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or math.isnan(value):
        return "-"
    return f"{value:.{digits}f}"


def flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


# ------------------------------------------------------------------------------------------------------ tables


def summary_table(runs: list[Run]) -> Table:
    header = ["run", "method", "avg. incremental acc.", "last acc.", "forgetting", "headline classifier",
              "wall time (s)", "status"]
    rows = [[run.name, run.method, fmt(run.results.get("average_incremental_accuracy")),
             fmt(run.results.get("last_accuracy")), fmt(run.results.get("forgetting")),
             str(run.results.get("headline_classifier") or "-"), fmt(wall_time(run.results), 1), run.status]
            for run in runs]
    return Table(header, rows, frozenset({2, 3, 4, 6}))


def accuracy_table(runs: list[Run]) -> Table:
    """Top-1 after each task: one row per run (its headline classifier), then one per further classifier."""
    num_tasks = max((len(r.results.get("accuracy") or []) for r in runs), default=0)
    header = ["run", "classifier"] + [f"task {t + 1}" for t in range(num_tasks)]
    rows = []
    for run in runs:
        headline = str(run.results.get("headline_classifier") or "top-1")
        series = {headline: run.results.get("accuracy") or [], **classifier_series(run.results)}
        for name, values in series.items():
            cells = [fmt(v) for v in values] + [""] * (num_tasks - len(values))  # shorter (partial) runs
            rows.append([run.name, name] + cells[:num_tasks])
    return Table(header, rows, frozenset(range(2, len(header))))


def hardest_classes_table(runs: list[Run], count: int = 10) -> Table:
    """The `count` classes with the lowest accuracy after each run's last evaluated task, by name."""
    header = ["run", "class", "training images", "accuracy"]
    rows = []
    for run in runs:
        per_class = (run.results.get("per_class_accuracy") or [[]])[-1] or []
        names = run.results.get("class_names") or []
        counts = run.results.get("train_counts") or []
        scored = [(a, c) for c, a in enumerate(per_class) if a is not None]
        for acc, c in sorted(scored)[:count]:
            name = names[c] if c < len(names) else str(c)
            rows.append([run.name, name, str(counts[c]) if c < len(counts) else "-", fmt(acc)])
    return Table(header, rows, frozenset({2, 3}))


def config_diff_table(runs: list[Run]) -> Table:
    """Dotted config keys whose values differ between the runs (a key only some runs have counts as differing)."""
    flats = [flatten(run.config) for run in runs]
    keys = sorted({key for flat in flats for key in flat})
    rows = []
    for key in keys:
        values = [flat.get(key, MISSING) for flat in flats]
        # compare as JSON (lists are unhashable, and 1 vs "1" must differ); show strings without quotes
        if len({json.dumps(v) if v is not MISSING else "" for v in values}) > 1:
            rows.append([key] + [_config_value(v) for v in values])
    return Table(["key"] + [run.name for run in runs], rows)


def _config_value(value) -> str:
    if value is MISSING:
        return "(absent)"
    return value if isinstance(value, str) else json.dumps(value)


# ---------------------------------------------------------------------------------------------------- Markdown


_MARKDOWN_SPECIAL = re.compile(r"([\\`*\[\]<>|])")  # intraword underscores stay literal in GFM tables


def markdown_escape(text) -> str:
    """A cell as literal text: run names may hold characters Markdown would read as markup or as HTML."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", str(text))


def markdown_table(table: Table) -> str:
    def line(cells, escape=True):
        return "| " + " | ".join(markdown_escape(c) if escape else str(c) for c in cells) + " |"

    align = ["---:" if i in table.numeric else "---" for i in range(len(table.header))]
    return "\n".join([line(table.header), line(align, escape=False)] + [line(row) for row in table.rows])


def markdown_report(runs: list[Run], generated: str) -> str:
    return "\n".join([
        MD_MARK, "# ltcil report", "", f"{len(runs)} run(s), generated {generated}. Accuracies are top-1 in %.", "",
        "## Summary", "", markdown_table(summary_table(runs)), "",
        "## Accuracy after each task", "", markdown_table(accuracy_table(runs)), "",
        "## Hardest classes after the last task", "", markdown_table(hardest_classes_table(runs)), "",
    ])


# -------------------------------------------------------------------------------------------------------- HTML

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 1100px; margin: 2em auto;
       padding: 0 1em; color: #222; line-height: 1.45; }
h1 { margin-bottom: 0.2em; } h2 { margin-top: 2em; border-bottom: 1px solid #ddd; padding-bottom: 0.2em; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; } th { background: #f3f3f3; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
img { max-width: 100%; height: auto; display: block; margin: 0.8em 0; }
.note { color: #666; font-size: 0.92em; } code { background: #f3f3f3; padding: 0 0.2em; }
"""


def html_table(table: Table) -> str:
    esc = html.escape
    head = "".join(f"<th>{esc(h)}</th>" for h in table.header)
    body = "".join(
        "<tr>" + "".join(f'<td class="num">{esc(c)}</td>' if i in table.numeric else f"<td>{esc(c)}</td>"
                         for i, c in enumerate(row)) + "</tr>"
        for row in table.rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _figure_html(title: str, uri: str | None) -> str:
    if uri is None:
        return '<p class="note">None of these runs recorded this.</p>'
    return f'<img alt="{html.escape(title)}" src="{uri}">'


def html_report(runs: list[Run], figures: list[tuple[str, str, str | None]], generated: str) -> str:
    """figures: (title, caption, PNG data URI or None when no run has the data) in page order."""
    esc = html.escape
    names = ", ".join(run.name for run in runs)
    intro = f"{len(runs)} run(s): {names}. Generated {generated}. Accuracies are top-1 in %."
    parts = [f'<h1>ltcil report</h1><p class="note">{esc(intro)}</p>',
             "<h2>Summary</h2>", html_table(summary_table(runs)),
             "<h2>Accuracy after each task</h2>", html_table(accuracy_table(runs)),
             "<h2>Hardest classes after the last task</h2>", html_table(hardest_classes_table(runs))]
    for title, caption, uri in figures:
        parts += [f"<h2>{esc(title)}</h2>", f'<p class="note">{esc(caption)}</p>', _figure_html(title, uri)]
    parts += ["<h2>Config differences</h2>", _config_diff_html(runs), "<h2>Run folders</h2>",
              "<ul>" + "".join(f"<li>{esc(run.name)} ({esc(run.method)}): <code>{esc(str(run.path))}</code></li>"
                               for run in runs) + "</ul>"]
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">{HTML_MARK}<title>ltcil report: '
            f"{esc(names)}</title><style>{CSS}</style></head><body>\n" + "\n".join(parts) + "\n</body></html>\n")


def _config_diff_html(runs: list[Run]) -> str:
    if len(runs) < 2:
        return '<p class="note">One run: nothing to compare.</p>'
    table = config_diff_table(runs)
    if not table.rows:
        return '<p class="note">The runs\' resolved configs are identical.</p>'
    return ('<p class="note">Resolved config keys whose values differ between the runs (from results.json).</p>'
            + html_table(table))


# ------------------------------------------------------------------------------------------------------- write


def default_out_dir(run_dirs: list[Path]) -> Path:
    if len(run_dirs) == 1:
        return Path(run_dirs[0])
    return Path("reports") / f"report_{time.strftime('%Y%m%d-%H%M%S')}"


# What marks a report ltcil wrote, so `--out` never overwrites a user's own report.md / report.html: the mark
# ltcil writes now, or how ltcil's reports began before it did.
MD_MARK = "<!-- written by `ltcil report`, which may replace this file -->"
HTML_MARK = '<meta name="generator" content="ltcil report">'
_OWN_STARTS = {"report.md": (MD_MARK, "# ltcil report\n"),
               "report.html": ('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>ltcil report:',)}


def _written_by_ltcil(path: Path) -> bool:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            head = fh.read(400)
    except OSError:
        return False
    return head.startswith(_OWN_STARTS[path.name]) or HTML_MARK in head


def check_out(out: Path) -> None:
    """Refuse an --out whose report.md / report.html ltcil did not write (the user's own), before any work."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise LtcilError(f"report folder {out} is a file, not a folder; choose another --out.")
    foreign = [name for name in ("report.md", "report.html")
               if (out / name).exists() and ((out / name).is_dir() or not _written_by_ltcil(out / name))]
    if foreign:
        raise LtcilError(f"{out} already holds {' and '.join(foreign)} that ltcil did not write; nothing was "
                         "written, so they stay as they are. Choose another --out, or move them away.")


SCENARIO_KEYS = ("data.name", "data.subset", "scenario.order", "scenario.initial", "scenario.increment",
                 "scenario.imbalance_factor", "scenario.longtail_profile", "scenario.longtail_by", "scenario.seed")


def warn_different_scenarios(runs: list[Run]) -> None:
    """Runs on different data or scenarios are not comparable number for number: say which keys differ."""
    if len(runs) < 2:
        return

    def get(run: Run, dotted: str):
        section, key = dotted.split(".")
        return (run.config.get(section) or {}).get(key)

    differ = [k for k in SCENARIO_KEYS if len({json.dumps(get(r, k), sort_keys=True) for r in runs}) > 1]
    if differ:
        shown = "; ".join(f"{k}: " + ", ".join(f"{r.name}={json.dumps(get(r, k))[:60]}" for r in runs)
                          for k in differ[:4])
        warnings.warn(LtcilWarning(f"the runs in this report do not share a scenario ({shown}"
                                   f"{' ...' if len(differ) > 4 else ''}): their accuracies are not comparable "
                                   "number for number."))


def write_report(run_dirs: list[Path], out: Path | None = None) -> tuple[Path, Path]:
    """Write report.html and report.md into `out` (see default_out_dir); returns their paths."""
    if not run_dirs:
        raise LtcilError("`ltcil report` needs at least one run folder.")
    out = Path(out) if out is not None else default_out_dir(run_dirs)
    check_out(out)
    plots = load_plots()  # before any work: a missing matplotlib should fail at once
    runs = [load_run(Path(d)) for d in run_dirs]
    _unique_names(runs)
    warn_different_scenarios(runs)
    generated = time.strftime("%Y-%m-%d %H:%M:%S")
    # build both documents before writing, so a failure leaves no half-written report behind
    page = html_report(runs, plots.all_figures(runs), generated)
    summary = markdown_report(runs, generated)
    html_path, md_path = out / "report.html", out / "report.md"
    try:
        out.mkdir(parents=True, exist_ok=True)
        html_path.write_text(page, encoding="utf-8")
        md_path.write_text(summary, encoding="utf-8")
    except OSError as exc:
        raise LtcilError(f"cannot write the report into {out}: {exc.strerror or exc}.") from None
    return html_path, md_path
