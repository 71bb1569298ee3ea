"""The GPU check script runs end to end in its CPU dry-run, so a GPU minute is never spent on a
script that has not run."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path



ROOT = Path(__file__).resolve().parents[2]


def test_gpu_check_dry_run_measures_every_row(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"),
                           "--dry-run", "--work", str(tmp_path / "work"),
                           "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    rows = {r["run"]: r for r in report["training"]}
    expected = {f"{w}-{s}" for w in ("none", "sfc_joint", "sfc_two_stage")
                for s in ("shared", "whole")} | {"none-shared-zero2"}
    assert set(rows) == expected
    for name, row in rows.items():
        if name.endswith("zero2") and importlib.util.find_spec("deepspeed") is None:
            assert row["status"].startswith("skipped")
            continue
        assert row["status"] == "ok", row
        assert row["pairs_per_second"] > 0 and row["mfu"] > 0
    assert rows["sfc_two_stage-shared"]["proxy_seconds"] > 0
    assert rows["sfc_joint-shared"]["proxy_seconds"] == 0
    naive, mmrm = report["scoring"]
    assert naive["responses_per_second"] > 0 and mmrm["speedup"] > 0
    # fp32 on the CPU: the shared prompt gives the whole-sequence rewards
    assert report["correctness"]["shared_prompt"]["max_abs_difference"] < 1e-4
    assert report["correctness"]["loss_falls"]
    assert "training run" in (tmp_path / "out" / "gpu_check.txt").read_text()
