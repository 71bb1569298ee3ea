"""The compile benchmark runs end to end on a tiny base and a made-up finished grid: every
kind of run twice per mode, the modes side by side in processes of their own, only the
compiled one compiles, and the grid's compiled hours follow from the measured speed-ups as the
docstring says."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def test_compile_speed_measures_both_modes_warm_and_projects_the_grid(tmp_path, tiny_grid):
    kinds = ("proxy", "none", "sfc_joint", "sfc_two_stage", "headroom")
    grid = tiny_grid(720.0, {
        "args": {"cue_rates": [0.95], "train_size": 16, "test_size": 6, "bon_items": 1,
                 "bon_candidates": 2},
        "run_seconds": {**dict.fromkeys(kinds, 100.0), "group_balance": 999.0},
        "rows": [{"variant": "none"}]})
    work = tmp_path / "work"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "compile_speed.py"),
                           "--work", str(work), "--grid", str(grid), "--jobs", "1",
                           "--warm-passes", "1"],
                          capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((work / "compile.json").read_text())
    assert report["graphs"]["eager"] == 0 and report["graphs"]["compiled"] > 0
    for mode in ("eager", "compiled"):
        assert list(report["passes"][mode]) == list(kinds)
        assert all(len(s) == 2 and min(s) > 0 for s in report["passes"][mode].values())
        # both passes trained (the warm pass into its own folders, not from the first's cache)
        for number in (1, 2):
            folder = work / "runs" / mode / f"pass{number}"
            assert len([p for p in folder.rglob("result.json") if "fold" not in str(p)]) == 5
    kind = report["kinds"]["none"]
    assert kind["ratio"] == pytest.approx(report["passes"]["eager"]["none"][1]
                                          / report["passes"]["compiled"]["none"][1])
    # the grid by hand: each kind's 100 s over its speed-up (group_balance is not measured),
    # plus the base's 720 s, one job, plus the compiling once
    runs = sum(100 / k["ratio"] for k in report["kinds"].values())
    assert report["compile_seconds"] == pytest.approx(
        sum(k["compile_extra"] for k in report["kinds"].values()))
    assert report["compiled_grid_hours"] == pytest.approx(
        (runs + 720 + report["compile_seconds"]) / 3600)
    assert report["grid_hours"] == pytest.approx((500 + 720) / 3600)
    assert set(report["accuracy_difference"]) == set(kinds)
    assert "| sfc_two_stage |" in (work / "compile.md").read_text()
