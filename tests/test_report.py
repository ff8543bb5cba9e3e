"""`ltcil report`: an HTML page and a Markdown summary comparing tiny real runs."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from helpers import run_tiny

from ltcil.cli import main
from ltcil.errors import LtcilError
from ltcil.reporting.report import write_report  # needs no matplotlib: it imports plots.py when writing

pytest.importorskip("matplotlib")

RUNS = {
    "a": ["method.name=finetune"],
    "b": ["method.name=icarl"],
    "c": ["method.name=bic", "method.bias_epochs=2"],
    "d": ["method.name=finetune", "scenario.imbalance_factor=4"],
}
METHODS = {"a": "finetune", "b": "icarl", "c": "bic", "d": "finetune"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("runs")
    for name, overrides in RUNS.items():
        run_tiny(base / name, *overrides)
    return {name: base / name for name in RUNS}


@pytest.fixture(scope="module")
def report(runs, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    return write_report(list(runs.values()), out)


def results(run_dir):
    return json.loads((run_dir / "results.json").read_text())


def table_rows(markdown: str, heading: str) -> list[list[str]]:
    """The body rows of the table under `## heading`."""
    section = markdown.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]


def test_html_is_self_contained_and_compares_every_run(report):
    html_path, _ = report
    page = html_path.read_text()
    # accuracy curves, matrices, forgetting, per-class vs counts, many/medium/few (run d), BiC (run c), timing,
    # training loss: every figure has data in these four runs
    assert page.count('src="data:image/png;base64,') == 8
    assert "<script" not in page and "http://" not in page and "https://" not in page
    for name, method in METHODS.items():
        assert f"<td>{name}</td><td>{method}</td>" in page
    assert "<h2>Config differences</h2>" in page
    diff = page.split("<h2>Config differences</h2>", 1)[1]
    assert "<td>method.name</td>" in diff and "<td>scenario.imbalance_factor</td>" in diff
    assert "<td>train.epochs</td>" not in diff  # the same in every run


def test_markdown_summary_has_one_row_per_run_with_its_metrics(runs, report):
    _, md_path = report
    markdown = md_path.read_text()
    rows = table_rows(markdown, "Summary")
    assert [row[0] for row in rows] == list(RUNS)
    for row in rows:
        res = results(runs[row[0]])
        assert row[1] == METHODS[row[0]]
        assert row[2] == f"{res['average_incremental_accuracy']:.2f}"
        assert row[3] == f"{res['last_accuracy']:.2f}"
        assert row[5] == res["headline_classifier"]
        assert float(row[6]) >= 0
    per_task = {(row[0], row[1]): row[2:] for row in table_rows(markdown, "Accuracy after each task")}
    assert per_task[("a", "logits")] == [f"{v:.2f}" for v in results(runs["a"])["accuracy"]]
    assert per_task[("b", "linear")] == [f"{v:.2f}" for v in results(runs["b"])["accuracy_linear"]]
    assert ("b", "nme") in per_task and ("c", "before_correction") in per_task


def test_single_run_reports_into_its_folder_and_tolerates_nulls(runs, tmp_path):
    run = shutil.copytree(runs["d"], tmp_path / "partial")
    res = results(run)
    # what a crashed or hand-edited run can hold: nulls everywhere, no timing, no config (config.yaml is used)
    res.update(average_incremental_accuracy=None, forgetting=None, forgetting_per_step=[None] * 3,
               accuracy=[50.0, None, None], accuracy_matrix=[[50.0], [None, None]], per_class_accuracy=[],
               accuracy_many=[None] * 3, bias_correction=[{"scale": None, "shift": 0.1}, None])
    for key in ("timing", "config"):
        res.pop(key)
    (run / "results.json").write_text(json.dumps(res))
    (run / "events.jsonl").write_text((run / "events.jsonl").read_text() + '{"event": "epo')  # cut short
    html_path, md_path = write_report([run])
    assert html_path == run / "report.html" and md_path == run / "report.md"
    [row] = table_rows(md_path.read_text(), "Summary")
    assert row[:3] == ["partial", "finetune", "-"] and row[4] == "-" and row[6] == "-"
    assert "nothing to compare" in html_path.read_text()


def test_runs_with_the_same_folder_name_stay_apart(runs, tmp_path):
    first = shutil.copytree(runs["a"], tmp_path / "x" / "run")
    second = shutil.copytree(runs["b"], tmp_path / "y" / "run")
    _, md_path = write_report([first, second], tmp_path / "out")
    assert [row[0] for row in table_rows(md_path.read_text(), "Summary")] == ["x/run", "y/run"]


def test_cli_writes_the_report(runs, tmp_path):
    out = tmp_path / "out"
    args = [sys.executable, "-m", "ltcil", "report", str(runs["a"]), str(runs["c"]), "--out", str(out)]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    assert (out / "report.html").is_file() and (out / "report.md").is_file()
    assert str(out / "report.html") in proc.stdout


def test_cli_default_folder_for_several_runs(runs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["report", str(runs["a"]), str(runs["b"])]) == 0
    [folder] = (tmp_path / "reports").glob("report_*")
    assert sorted(p.name for p in folder.iterdir()) == ["report.html", "report.md"]


def test_folder_without_results_is_an_error_naming_it(runs, tmp_path, capsys):
    empty = tmp_path / "not_a_run"
    empty.mkdir()
    out = tmp_path / "out"
    assert main(["report", str(runs["a"]), str(empty), "--out", str(out)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert err.startswith("error: ") and str(empty) in err and "results.json" in err and "Traceback" not in err
    assert not out.exists()  # nothing half-written


def test_missing_matplotlib_says_how_to_install_it(runs, tmp_path, monkeypatch):
    for module in [m for m in sys.modules if m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, module)  # loaded submodules would otherwise import without their parent
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    monkeypatch.delitem(sys.modules, "ltcil.reporting.plots", raising=False)
    with pytest.raises(LtcilError, match=r'pip install "ltcil\[report\]"'):
        write_report([runs["a"]], tmp_path / "out")
    assert not (tmp_path / "out").exists()


BROWSERS = ("chromium", "chromium-browser", "google-chrome", "chrome")


@pytest.mark.slow
def test_page_renders_in_a_headless_browser(report, tmp_path):
    # the page as a user sees it: Debian's chromium renders it; the screenshot must show the tables and figures
    browser = next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)
    if browser is None:
        pytest.skip("no headless browser (chromium) installed: apt-get install chromium")
    image_module = pytest.importorskip("PIL.Image")
    html_path, _ = report
    shot = tmp_path / "shot.png"
    proc = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           f"--screenshot={shot}", "--window-size=1280,4000", html_path.resolve().as_uri()],
                          capture_output=True, text=True, timeout=120)
    assert shot.exists(), proc.stderr[-2000:]
    pixels = np.asarray(image_module.open(shot).convert("RGB")).astype(int)
    assert pixels.shape == (4000, 1280, 3)
    ink = (pixels.min(axis=2) < 200).mean()  # text, table rules, plot lines and heatmaps
    saturated = pixels[pixels.max(axis=2) - pixels.min(axis=2) > 60]  # only the figures are in colour
    assert ink > 0.03, f"the page looks blank ({ink:.1%} non-white)"
    assert len(np.unique(saturated, axis=0)) > 200, "no coloured figure was drawn"
    assert (pixels[:120].min(axis=2) < 60).any(), "no title at the top of the page"
