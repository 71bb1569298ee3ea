"""The run-profile benchmark runs end to end on a tiny base and a made-up finished grid: one
run of each kind, freshly trained every time, its parts timed and the grid's floor computed
from them as the docstring says."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def test_run_profile_times_each_kind_of_run_and_bounds_the_grid(tmp_path, tiny_grid):
    kinds = ("proxy", "none", "sfc_joint", "sfc_two_stage", "headroom")
    # a finished grid: 100 s of runs per kind, the standard ones two runs of 50 s
    grid = tiny_grid(720.0, {
        "args": {"cue_rates": [0.95], "train_size": 16, "test_size": 6, "bon_items": 1,
                 "bon_candidates": 2},
        "run_seconds": {**dict.fromkeys(kinds, 100.0), "group_balance": 999.0},
        "rows": [{"variant": "none"}, {"variant": "none"}, {"variant": "sfc_joint"}]})
    work = tmp_path / "work"
    command = [sys.executable, str(ROOT / "benchmarks" / "run_profile.py"), "--work", str(work),
               "--grid", str(grid), "--jobs", "1"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((work / "profile.json").read_text())
    rows = {r["variant"]: r for r in report["rows"]}
    assert list(rows) == list(kinds)
    for kind, row in rows.items():
        parts = [row[p] for p in ("forward", "backward", "encoding", "test")]
        assert all(p > 0 for p in parts), (kind, parts)    # every part of every run timed
        assert sum(parts) < row["seconds"]
        assert row["steps_share"] == pytest.approx((row["forward"] + row["backward"])
                                                   / row["seconds"])
        assert row["rest_share"] == pytest.approx(1 - sum(parts) / row["seconds"])
    # the floor by hand: each kind's 100 s times its steps share (the grid's group_balance
    # runs are not profiled and do not count), plus the base's 720 s, one job
    steps = sum(100 * r["steps_share"] for r in rows.values())
    assert report["grid_none_mean_seconds"] == 50.0
    assert report["floor_hours"] == pytest.approx((steps + 720) / 3600)
    now = steps * report["none_seconds"] / 50
    assert report["floor_hours_now"] == pytest.approx((now + 720) / 3600)
    assert report["grid_hours"] == pytest.approx((500 + 720) / 3600)
    assert "| sfc_joint |" in (work / "profile.md").read_text()
    # the runs trained in the work folder on its own data (a warm-up on another environment
    # first), and a second invocation trains them again instead of reusing them
    results = sorted(p.relative_to(work).parts[-3:-1] for p in work.rglob("result.json")
                     if "fold" not in str(p))
    assert results == sorted([("rlhfv", "none"), *[("povid", k) for k in kinds]])
    stamp = (work / "runs" / "V2" / "b0-d0" / "c-95" / "povid" / "none" / "result.json")
    first = stamp.stat().st_mtime_ns
    again = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    assert stamp.stat().st_mtime_ns > first
