"""The table printed at the end of a run: accuracy per task and the headline metrics."""

from __future__ import annotations


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.2f}"


def summary_table(results: dict) -> str:
    acc = results["accuracy"]
    lines = []
    header = ["task", "classes", "top-1", "top-5", "old", "new"]
    classifiers = results.get("classifiers") or {}
    series = {name: entry["accuracy"] for name, entry in classifiers.items()} if len(classifiers) > 1 else {}
    header += list(series)
    rows = []
    seen = 0
    for t, a in enumerate(acc):
        seen += len(results["tasks"][t])
        row = [str(t + 1), str(seen), _fmt(a), _fmt(results["accuracy_top5"][t]),
               _fmt(results["accuracy_old"][t]), _fmt(results["accuracy_new"][t])]
        rows.append(row + [_fmt(values[t]) for values in series.values()])
    widths = [max(7, len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]  # columns never run together
    lines.append("  ".join(f"{h:>{w}}" for h, w in zip(header, widths)))
    lines += ["  ".join(f"{c:>{w}}" for c, w in zip(row, widths)) for row in rows]
    lines.append("")
    lines.append(f"average incremental accuracy: {_fmt(results['average_incremental_accuracy']).strip()}")
    lines.append(f"last accuracy:                {_fmt(results['last_accuracy']).strip()}")
    lines.append(f"forgetting:                   {_fmt(results['forgetting']).strip()}")
    lines.append(f"headline classifier:          {results['headline_classifier']}")
    shots = results.get("shot_accuracy")
    if shots:
        lines.append("")
        ev = results.get("config", {}).get("eval", {})
        grouping = results.get("shot_groups") or {"rule": "absolute", "many_above": ev.get("many_shot", 100),
                                                   "few_below": ev.get("few_shot", 20)}
        many, few = f"{grouping['many_above']:g}", f"{grouping['few_below']:g}"
        how = "thirds of the training counts" if grouping["rule"] == "quantile" else "eval.many_shot / eval.few_shot"
        lines.append(f"after the last task, by training images per class (many > {many} >= medium >= {few} > few; "
                     f"{how}):")
        lines.append(f"{'classifier':>16}  {'all':>6}  {'many':>6}  {'medium':>6}  {'few':>6}")
        for name, groups in shots.items():
            overall = (classifiers.get(name) or {}).get("last_accuracy")
            lines.append(f"{name:>16}  {_fmt(overall):>6}  {_fmt(groups['many'][-1]):>6}  "
                         f"{_fmt(groups['medium'][-1]):>6}  {_fmt(groups['few'][-1]):>6}")
    return "\n".join(lines)
