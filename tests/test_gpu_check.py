"""benchmarks/gpu_check.py's CPU dry run: every step of the script a GPU slot will run, on tiny data, so the
script cannot fail on the device for a reason a CPU could have shown."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_dry_run_runs_every_step(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--dry-run", "--out",
                           str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rows = [json.loads(line) for line in (tmp_path / "gpu_check.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == ["env", "gpu_tests", "torchrun", "smoke", "throughput", "streaming",
                                         "vit", "full_run"]
    failed = {r["step"]: r.get("error") or r.get("tail") for r in rows if not r["ok"]}
    assert not failed, failed
    smoke = next(r for r in rows if r["step"] == "smoke")["methods"]
    assert len(smoke) >= 12 and all(m["ok"] for m in smoke.values())
    assert next(r for r in rows if r["step"] == "full_run")["average_incremental_accuracy"] is not None
    vit = next(r for r in rows if r["step"] == "vit")["rows"]
    assert [r["measure"] for r in vit] == ["feature pass", "linear probe", "prompt step"]
    assert all(r.get("images_per_second", 1) > 0 for r in vit) and vit[1]["speedup"] > 0
    streaming = next(r for r in rows if r["step"] == "streaming")["rows"]
    assert {r.get("pipeline") for r in streaming} >= {"dataloader", "stream", "packed"}
