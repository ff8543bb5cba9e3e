"""The architecture's seams: a new method is one file (its own network, registered where the engine never looks),
and the layering of the package holds (methods never import the engine or the CLI, ...)."""

import ast
import shutil
from pathlib import Path

import torch
from helpers import tiny_config

import expanding_method  # noqa: F401  (registers test_expanding)
from ltcil.engine.runner import Experiment

SRC = Path(__file__).resolve().parents[1] / "src" / "ltcil"


def test_a_method_that_grows_a_backbone_per_task_runs_and_resumes(tmp_path):
    exp = Experiment(tiny_config("method.name=test_expanding"), tmp_path / "full")
    widths, frozen_ok = [], []
    original_end = exp.method.end_task

    def end_task(task, ctx):
        before = [{k: v.clone() for k, v in b.state_dict().items()} for b in exp.method.model.backbones[:-1]]
        original_end(task, ctx)
        widths.append(exp.method.model.num_features)
        frozen_ok.append(all(torch.equal(v, b.state_dict()[k]) for old, b in zip(before, exp.method.model.backbones)
                             for k, v in old.items()))

    exp.method.end_task = end_task
    full = exp.run()
    single = exp.method.model.backbones[0].num_features
    assert widths == [single, 2 * single, 3 * single]  # one backbone more per task
    assert all(frozen_ok)  # earlier backbones bit-for-bit unchanged by a later task (BatchNorm statistics too)
    crashed = tmp_path / "crashed"
    shutil.copytree(tmp_path / "full", crashed)
    (crashed / "checkpoints" / "task_002.pt").unlink()
    resumed_exp = Experiment(tiny_config("method.name=test_expanding"), crashed)
    assert resumed_exp.restore() and len(resumed_exp.method.model.backbones) == 2
    resumed = resumed_exp.run()
    assert resumed["accuracy"] == full["accuracy"] and resumed["accuracy_matrix"] == full["accuracy_matrix"]


# what each part of the package may import (the README's architecture section says why)
FORBIDDEN = {
    "methods": ("ltcil.engine", "ltcil.cli", "ltcil.sweep", "ltcil.plugins"),
    "plugins": ("ltcil.engine", "ltcil.cli", "ltcil.sweep"),
    "data": ("ltcil.scenarios", "ltcil.methods", "ltcil.engine", "ltcil.plugins", "ltcil.evaluation"),
    "scenarios": ("ltcil.data", "ltcil.methods", "ltcil.engine", "ltcil.plugins"),
    "backbones": ("ltcil.methods", "ltcil.engine", "ltcil.heads", "ltcil.plugins"),
    "heads": ("ltcil.methods", "ltcil.engine", "ltcil.backbones", "ltcil.plugins"),
    "layers": ("ltcil.methods", "ltcil.engine", "ltcil.plugins"),
    "losses": ("ltcil.methods", "ltcil.engine", "ltcil.plugins"),
    "memory": ("ltcil.methods", "ltcil.engine", "ltcil.plugins"),
    "evaluation": ("ltcil.methods", "ltcil.engine", "ltcil.plugins"),
    "reporting": ("ltcil.methods", "ltcil.engine", "ltcil.plugins"),
}


def imports_of(path: Path, root: Path = SRC) -> list[str]:
    """Absolute names of the ltcil modules a file imports (relative imports resolved)."""
    package = ".".join(("ltcil",) + path.relative_to(root).parent.parts)
    tree = ast.parse(path.read_text())
    type_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If)
                 and isinstance(block.test, ast.Name) and block.test.id == "TYPE_CHECKING"
                 for n in ast.walk(block)}  # `if TYPE_CHECKING:` imports never run: annotations only
    names = []
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            names.append(module)
            names += [f"{module}.{a.name}" for a in node.names]
    return [n for n in names if n.startswith("ltcil")]


def layering_violations(root: Path = SRC) -> list[str]:
    found = []
    for part, forbidden in FORBIDDEN.items():
        for path in sorted((root / part).rglob("*.py")):
            for name in imports_of(path, root):
                if any(name == f or name.startswith(f + ".") for f in forbidden):
                    found.append(f"{path.relative_to(root)} imports {name}")
    return found


def test_the_layering_holds():
    assert layering_violations() == []


def test_the_layering_test_catches_a_wrong_import(tmp_path):
    fake = tmp_path / "ltcil"
    shutil.copytree(SRC, fake, ignore=shutil.ignore_patterns("__pycache__"))
    (fake / "methods" / "bad.py").write_text("from ..engine.trainer import Trainer\n")
    (fake / "data" / "bad.py").write_text("import ltcil.scenarios.tasks\n")
    found = layering_violations(fake)
    assert "methods/bad.py imports ltcil.engine.trainer" in found
    assert "data/bad.py imports ltcil.scenarios.tasks" in found
