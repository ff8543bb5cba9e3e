"""The `ltcil` command: run, resume, list, report, sweep, grid, data."""

from __future__ import annotations

import argparse
import signal
import sys
import textwrap
import threading
import warnings
from pathlib import Path

from .errors import LtcilError, LtcilWarning

_default_showwarning = warnings.showwarning

QUICKSTART = "quickstart_digits"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ltcil", description="Class-incremental learning under long-tailed data.",
        epilog="Examples:\n  ltcil run\n  ltcil run icarl_resnet32_cifar100_b0inc10 data.root=../shared/data "
               "train.epochs=1\n  ltcil resume runs/finetune_digits_20261123-101500\n  ltcil list methods\n"
               "  ltcil report runs/finetune_digits_20261123-101500 runs/icarl_digits_20261123-103000\n"
               "  ltcil sweep quickstart_digits scenario.val_fraction=0.1 --grid train.lr=0.01,0.05 --out runs/sweep",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--debug", action="store_true", help="show Python tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)
    # --debug is accepted after the command too (`ltcil run ... --debug`); SUPPRESS keeps the top-level value
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show Python tracebacks")

    run = sub.add_parser("run", parents=[common],
                         help="run an experiment from a config (default: the quick start on digits)")
    run.add_argument("items", nargs="*", metavar="[CONFIG] [key=value ...]",
                     help="a YAML file or shipped config name, then dotted overrides such as train.epochs=2")
    run.add_argument("--out", type=Path, help="run folder (default: runs/<method>_<data>_<time>)")
    run.add_argument("--force", action="store_true", help="overwrite an existing run folder")
    run.add_argument("--quiet", action="store_true", help="no progress bars")

    resume = sub.add_parser("resume", parents=[common], help="continue a run from its last complete checkpoint")
    resume.add_argument("run_dir", type=Path)
    resume.add_argument("--quiet", action="store_true")

    data = sub.add_parser("data", parents=[common], help="check a dataset and scenario without training")
    data.add_argument("action", choices=["check"])
    data.add_argument("items", nargs="*", metavar="[CONFIG] [key=value ...]", help="as for `ltcil run`")
    data.add_argument("--all", action="store_true", help="list every class (default: the first and last 10)")

    lst = sub.add_parser("list", parents=[common], help="list registered components or shipped configs")
    lst.add_argument("what", choices=["methods", "datasets", "backbones", "configs"])

    report = sub.add_parser("report", parents=[common],
                            help="compare runs: an HTML page with inlined figures and a Markdown summary")
    report.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR", help="run folders made by `ltcil run`")
    report.add_argument("--out", type=Path, metavar="DIR",
                        help="folder for report.html and report.md (default: the run folder when one run is given, "
                             "else reports/report_<time>)")

    grid = sub.add_parser("grid", parents=[common],
                          help="a grid of runs (configs x methods x seeds x values) and its mean ± std table")
    grid.add_argument("items", nargs="*", metavar="[CONFIG ...] [key=v1,v2 ...]",
                      help="configs (default: the quick start) and keys with the values to cross")
    grid.add_argument("--methods", default="", metavar="A,B", help="methods to cross (method.name)")
    grid.add_argument("--seeds", default="", metavar="1,2,3", help="seeds to cross: the table's mean ± std")
    grid.add_argument("--out", type=Path, required=True, help="grid folder: a run folder per run, the tables")
    grid.add_argument("--launcher", choices=("local", "slurm"), default="local")
    grid.add_argument("--jobs", type=int, default=0,
                      help="local: runs at once, each on its share of the cores (default 1; one per GPU)")
    grid.add_argument("--partition", default="", help="slurm: partition")
    grid.add_argument("--time", type=int, default=240, metavar="MIN",
                      help="slurm: minutes per run (a run past it is requeued and resumes)")
    grid.add_argument("--gpus", type=int, default=0, help="slurm: GPUs per run")
    grid.add_argument("--cpus", type=int, default=0, help="slurm: CPUs per run (0: the partition's default)")
    grid.add_argument("--parallel", type=int, default=0, help="slurm: at most this many runs at once")
    grid.add_argument("--plan", action="store_true", help="list the runs and their state; run nothing")

    sweep = sub.add_parser("sweep", parents=[common],
                           help="choose hyper-parameters task by task on validation data (never test)")
    sweep.add_argument("items", nargs="*", metavar="[CONFIG] [key=value ...]",
                       help="the config and fixed overrides, as for `ltcil run`")
    sweep.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                       help="values to try for one key (repeat for more keys; the grid is their product)")
    sweep.add_argument("--random", type=int, default=0, metavar="N", help="try N random points of the grid")
    sweep.add_argument("--optuna", type=int, default=0, metavar="N",
                       help="N proposals per task from Optuna's TPE sampler over the grid (pip install optuna)")
    sweep.add_argument("--seed", type=int, default=0, help="seed of the random search / the sampler")
    sweep.add_argument("--storage", default="", metavar="URL",
                       help="with --optuna: share each task's study with other `ltcil sweep` processes through "
                            "Optuna's RDB storage (sqlite:///sweep.db, postgresql://...)")
    sweep.add_argument("--study", default="", help="with --storage: the study's name (default: the --out folder's)")
    sweep.add_argument("--heartbeat", type=float, default=60.0, metavar="S",
                       help="with --storage: a worker silent for 2 x S seconds has its trial failed and retried")
    sweep.add_argument("--out", type=Path, required=True, help="sweep folder (candidates' runs and sweep.json)")
    sweep.add_argument("--force", action="store_true", help="overwrite an existing sweep folder")
    return parser


def _split_items(items: list[str]) -> tuple[str | None, list[str]]:
    if items and "=" not in items[0]:
        return items[0], items[1:]
    return None, items


def _say_method_defaults(source, overrides: list[str], cfg) -> None:
    """Name the settings a config's by_method block gave this run's method (the quick start's PODNet schedule),
    and where a command-line override replaced one, the value the run has."""
    from .config import method_defaults_applied

    items = method_defaults_applied(source, overrides)
    if not items:
        return
    resolved = cfg.to_dict()

    def value(dotted):
        node = resolved
        for part in dotted.split("."):
            node = node[part]
        return node

    said = [f"{k}={v}" + ("" if value(k) == v else f" (command line: {value(k)})") for k, v in items.items()]
    name = cfg.method["name"]
    print(f"{name}: {Path(str(source)).stem}'s by_method.{name} block sets {', '.join(said)}")


def cmd_run(args) -> int:
    from .config import load_config
    from .engine import distributed, run_folder
    from .engine.runner import Experiment, default_run_dir

    config, overrides = _split_items(args.items)
    source = config if config is not None else QUICKSTART
    cfg = load_config(source, overrides)
    if config is None and overrides:
        print(f"no config given: starting from the quick start's ({QUICKSTART}: digits, 5 tasks of 2 classes) with "
              "your overrides")
    _say_method_defaults(source, overrides, cfg)
    world, _ = distributed.setup(cfg.device)  # under torchrun: join the process group
    run_dir = distributed.broadcast_object(args.out or default_run_dir(cfg))  # rank 0's clock names the folder
    replace = run_folder.check(run_dir, args.force)  # every rank: nothing is touched yet
    lock = run_folder.Lock(run_dir) if world.is_main else None
    try:
        experiment = Experiment(cfg, run_dir, progress=False if args.quiet else None)  # loads and checks the data
    except BaseException:
        if lock is not None:
            lock.release(remove_empty=True)
        raise
    if replace and world.is_main:  # --force: the old run goes only now that config and data have been checked
        left = run_folder.clear(run_dir)
        if left:
            warnings.warn(LtcilWarning(run_folder.left_behind(run_dir, left, args.force)))
    distributed.barrier()
    args.started_run = run_dir  # from here on, Ctrl-C leaves a run that `ltcil resume` continues
    return _finish(experiment)


def cmd_resume(args) -> int:
    from .config import from_dict, read_yaml
    from .engine import distributed, run_folder
    from .engine.runner import Experiment

    cfg_path = args.run_dir / "config.yaml"
    if run_folder.is_sweep_folder(args.run_dir):
        raise LtcilError(f"{args.run_dir} holds an ltcil sweep, and a sweep cannot be resumed: run the same `ltcil "
                         f"sweep` with --force --out {args.run_dir} to start it again (each candidate's run is in "
                         "task<N>/candidate<K>/).")
    if not args.run_dir.is_dir() or not cfg_path.exists():
        raise LtcilError(f"{args.run_dir} is not a run folder: {cfg_path} is missing.")
    cfg = from_dict(read_yaml(cfg_path), f"{cfg_path}: ")
    world, _ = distributed.setup(cfg.device)
    lock = run_folder.Lock(args.run_dir) if world.is_main else None  # noqa: F841 (held until the process ends)
    args.started_run = args.run_dir
    experiment = Experiment(cfg, args.run_dir, progress=False if args.quiet else None)
    if not experiment.restore():
        print(f"no finished task in {args.run_dir}; starting it from the first task")
    return _finish(experiment)


def _finish(experiment) -> int:
    from .reporting.summary import summary_table

    results = experiment.run()
    if not experiment.world.is_main:
        return 0
    print()
    print(summary_table(results))
    report = " report.html," if (experiment.run_dir / "report.html").exists() else ""
    print(f"\nrun folder: {experiment.run_dir}  (config.yaml, events.jsonl, results.json,{report} checkpoints/)")
    return 0


def cmd_data(args) -> int:
    from .config import load_config
    from .datacheck import describe

    config, overrides = _split_items(args.items)
    cfg = load_config(config if config is not None else QUICKSTART, overrides)
    print(describe(cfg, all_classes=args.all))
    return 0


def cmd_list(args) -> int:
    from . import registry
    from .config import shipped_configs

    if args.what == "configs":
        for name, path in shipped_configs().items():
            print(f"{name:45s} {path}")
        return 0
    kind = args.what[:-1]
    for name in registry.available(kind):
        print(name)
    if kind == "backbone":
        import importlib.util

        timm = "installed" if importlib.util.find_spec("timm") else "not installed: `pip install timm`"
        print("\nvit_* names take timm's pretrained tags (vit_base_patch16_224.augreg_in21k) with "
              "backbone.pretrained=true or backbone.checkpoint=PATH; any other timm model name needs timm "
              f"({timm}).")
    return 0


def cmd_report(args) -> int:
    from .reporting.report import write_report

    html_path, md_path = write_report(args.run_dirs, args.out)
    print(f"wrote {html_path}\nwrote {md_path}")
    return 0


def cmd_grid(args) -> int:
    from .grid import GRID_DIR, expand, markdown, parse_axes, state, write_tables
    from .launch import SlurmOptions, run_local, run_slurm
    from .sweep import split_values

    configs, axes = parse_axes(args.items)
    runs = expand(configs or [QUICKSTART], axes, split_values(args.methods), split_values(args.seeds))
    out = args.out
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / GRID_DIR).is_dir())):
        raise LtcilError(f"--out {out} exists and is not a grid folder (it has no {GRID_DIR}/); choose another "
                         "--out.")
    states = [state(out, run) for run in runs]
    count = {s: states.count(s) for s in ("done", "started", "failed", "new")}
    print(f"{len(runs)} run(s) in {out}: {count['done']} done (kept), {count['started']} to resume, "
          f"{count['failed']} failed before (run again), {count['new']} new")
    if args.plan:
        for run, st in zip(runs, states):
            print(f"  {st:8s} {run.name}")
        return 0
    (out / GRID_DIR).mkdir(parents=True, exist_ok=True)
    todo = [run for run, st in zip(runs, states) if st != "done"]
    if todo and args.launcher == "slurm":
        run_slurm(out, todo, SlurmOptions(args.partition, args.time, args.gpus, args.cpus, args.parallel), poll=5)
    elif todo:
        run_local(out, todo, args.jobs)
    tab = write_tables(out, runs)
    print("\n" + markdown(tab))
    print(f"tables: {out / 'grid_table.md'} (.tex, .csv, .json)")
    done = [out / run.name for run in runs if state(out, run) == "done"]
    if done:
        try:
            from .reporting.report import write_report

            html, _ = write_report(done, out / "report")
            print(f"report with the curves: {html}")
        except LtcilError as exc:  # matplotlib missing, say: the tables stand without it
            print(f"no HTML report: {exc}")
    failed = [run for run in runs if state(out, run) == "failed"]
    for run in failed:
        from .grid import read_status

        print(f"failed: {run.name}: " + " / ".join(read_status(out, run).get("error") or []), file=sys.stderr)
    if failed:
        print(f"{len(failed)} run(s) failed (their output: {out / GRID_DIR}/<run>.log); the same command runs "
              "them again and keeps the finished ones.", file=sys.stderr)
    return 1 if failed else 0


def cmd_sweep(args) -> int:
    from .engine import run_folder
    from .engine.distributed import launched_by_torchrun
    from .sweep import parse_grid, prepare, run_sweep, sweep_table

    if not args.grid:
        raise LtcilError("ltcil sweep: give at least one --grid key=v1,v2.")
    if launched_by_torchrun():
        raise LtcilError("ltcil sweep runs its candidates one after another in one process; start it without "
                         "torchrun (each candidate is a short run).")
    if args.random and args.optuna:
        raise LtcilError("ltcil sweep: choose --random or --optuna, not both.")
    if args.storage and not args.optuna:
        raise LtcilError("ltcil sweep --storage shares Optuna studies: give --optuna N (trials per task) too.")
    config, overrides = _split_items(args.items)
    grid = parse_grid(args.grid)
    config = config if config is not None else QUICKSTART
    if args.storage:
        return _shared_sweep(args, config, overrides, grid)
    replace = run_folder.check(args.out, args.force)
    prepared = prepare(config, overrides, grid, args.random, args.seed, args.optuna)  # nothing written yet
    lock = run_folder.Lock(args.out)
    if replace:
        left = run_folder.clear(args.out)
        if left:
            warnings.warn(LtcilWarning(run_folder.left_behind(args.out, left, args.force)))
    run_folder.mark(args.out, sweep=True)
    try:
        record = run_sweep(config, overrides, grid, args.out, args.random, args.seed, optuna_trials=args.optuna,
                           prepared=prepared)
    except BaseException:
        if run_folder.nothing_written(args.out):  # leave no folder a re-run would refuse
            (args.out / run_folder.MARKER).unlink()
        lock.release(remove_empty=True)
        raise
    print()
    print(sweep_table(record))
    print(f"\nsweep folder: {args.out}  (sweep.json, task<N>/candidate<K>/ runs)")
    return 0


def _shared_sweep(args, config, overrides, grid) -> int:
    """One worker of a sweep shared through Optuna's storage: the sweep folder is everyone's (each trial writes
    its own task<N>/trial<number>/), so it is joined, never locked or replaced."""
    from .engine import run_folder
    from .sweep import prepare, run_sweep, sweep_table

    if args.force:
        raise LtcilError("ltcil sweep --storage: --force would empty a folder other workers write to; remove the "
                         "folder and the study yourself to start again.")
    out = args.out
    if out.exists() and any(out.iterdir()) and not run_folder.is_sweep_folder(out):
        raise LtcilError(f"--out {out} is not empty and holds no ltcil sweep; choose another --out.")
    try:
        import optuna  # noqa: F401
    except ImportError:
        raise LtcilError("ltcil sweep --storage needs the optuna package: pip install optuna.") from None
    prepared = prepare(config, overrides, grid, 0, args.seed, args.optuna)  # checked before anything trains
    out.mkdir(parents=True, exist_ok=True)
    if not run_folder.is_sweep_folder(out):
        run_folder.mark(out, sweep=True)
    study = args.study or out.resolve().name
    record = run_sweep(config, overrides, grid, out, 0, args.seed, optuna_trials=args.optuna, prepared=prepared,
                       storage=args.storage, study=study, heartbeat=args.heartbeat)
    print()
    print(sweep_table(record))
    print(f"\nsweep folder: {out}  (sweep.json, task<N>/trial<number>/ runs; study {study!r} in {args.storage})")
    return 0


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """ltcil's own warnings as one paragraph ("warning: ..."), others as Python prints them."""
    if issubclass(category, LtcilWarning):
        text = textwrap.fill(str(message), width=100, subsequent_indent="  ", break_on_hyphens=False,
                             break_long_words=False)
        print("warning: " + text, file=sys.stderr)
    else:
        _default_showwarning(message, category, filename, lineno, file, line)


def _terminate(signum, frame) -> None:
    raise KeyboardInterrupt


def _import_libraries(trains: bool) -> None:
    """numpy, torch and ltcil's engine (and for a command that trains, torch._dynamo, which the first optimizer
    imports) imported with Ctrl-C held until all are in, then raised. A KeyboardInterrupt
    that lands inside torch's import of numpy is cleared by torch's C++ code: numpy stays half-imported (the run
    fails later with "module 'numpy' has no attribute ..."), or the run goes on as if never interrupted; inside
    pybind11 code it aborts the process. One that lands while a dataclass is built (dataclasses exec their
    methods' source) makes CPython 3.11 end the process by SIGINT after main has returned 130, caught or not.
    Held, it becomes the usual one line and exit 130."""
    if "torch" in sys.modules or threading.current_thread() is not threading.main_thread():
        return
    pending = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: pending.append(signum))
    try:
        import numpy  # noqa: F401
        import torch  # noqa: F401

        from .engine import runner  # noqa: F401  (methods, plugins, scenarios, data: their dataclasses)
        if trains:
            import torch._dynamo  # noqa: F401  (a second long import, full of dataclasses)
    finally:
        signal.signal(signal.SIGINT, previous)
    if pending:
        raise KeyboardInterrupt


def main(argv=None) -> int:
    args = argparse.Namespace(debug=False)
    try:  # everything inside: Ctrl-C at any moment, even while torch is imported, is one line and exit 130
        return _main(argv, args)
    except LtcilError as exc:
        if args.debug:
            raise
        print("error: " + _paragraph(str(exc)), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\n" + interrupted_message(getattr(args, "started_run", None)), file=sys.stderr)
        return 130


def _main(argv, args: argparse.Namespace) -> int:
    warnings.showwarning = _show_warning
    parser = _parser()
    _, extra = parser.parse_known_args(argv, namespace=args)
    # argparse ends a positional list at the first option, so `run CONFIG --out DIR key=value` leaves the
    # overrides after --out unparsed: they belong to the same list.
    if extra and args.command in ("run", "sweep", "data", "grid") and not any(e.startswith("-") for e in extra):
        args.items += extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    handler = {"run": cmd_run, "resume": cmd_resume, "list": cmd_list, "report": cmd_report,
               "sweep": cmd_sweep, "data": cmd_data, "grid": cmd_grid}[args.command]
    _import_libraries(trains=args.command in ("run", "resume", "sweep"))
    if threading.current_thread() is threading.main_thread():
        # SIGTERM (a scheduler, torchrun, kill) ends the run as Ctrl-C does: locks, worker processes and the
        # event log are released on the way out instead of left behind
        signal.signal(signal.SIGTERM, _terminate)
    code = handler(args)
    from .engine import distributed

    distributed.teardown()
    return code


# A message longer than this has a value pasted into it (a 50 MB string in a config): words longer than
# LONG_WORD are cut, so the paragraph stays readable and the terminal is not flooded.
LONG_WORD = 300


def _paragraph(text: str) -> str:
    if len(text) > 4 * LONG_WORD * 4:  # a message of a few hundred words at most
        text = f"{text[:3000]} ...[{len(text) - 3600:,} characters cut]... {text[-600:]}"
    words = [w if len(w) <= LONG_WORD else f"{w[:200]}...[{len(w) - 260:,} characters cut]...{w[-60:]}"
             for w in text.split(" ")]
    return textwrap.fill(" ".join(words), width=100, subsequent_indent="  ", break_on_hyphens=False,
                         break_long_words=False)  # paths stay copyable


def interrupted_message(run_dir) -> str:
    """What Ctrl-C leaves: the resume hint only where `ltcil resume` has something to continue."""
    if run_dir is None or not (Path(run_dir) / "config.yaml").exists():
        return "interrupted."
    from .engine.checkpoint import latest_checkpoint, partial_path

    if latest_checkpoint(run_dir) is None and not partial_path(run_dir).exists():
        return (f"interrupted before the first checkpoint; `ltcil resume {run_dir}` starts the run again from its "
                "first task.")
    return (f"interrupted; `ltcil resume {run_dir}` continues the run from its last checkpoint (the last finished "
            "task, or inside the task when one was taken there: train.checkpoint_minutes).")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
