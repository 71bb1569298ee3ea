"""The sweep-budget benchmark runs end to end on a tiny base and a made-up finished grid: per
split size, standard RMs timed against the first size and neutral RMs after E and 2E epochs,
trained on the data it made; a rerun reports from the cache."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def test_sweep_budget_measures_each_size_and_reports_from_its_cache(tmp_path, tiny_grid):
    # a finished grid of two standard runs of 50 s each (and 150 s of others)
    grid = tiny_grid(600.0, {
        "args": {"cue_rates": [0.95], "test_size": 6, "bon_items": 1, "bon_candidates": 2},
        "run_seconds": {"none": 100.0, "proxy": 150.0},
        "rows": [{"variant": "none"}, {"variant": "none"}, {"variant": "sfc_joint"}]})
    command = [sys.executable, str(ROOT / "benchmarks" / "sweep_budget.py"), "--work",
               str(tmp_path / "work"), "--grid", str(grid), "--sizes", "16", "8",
               "--epochs", "0.5", "--jobs", "1"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "work" / "budget.json").read_text())
    assert [r["size"] for r in report["rows"]] == [16, 8]
    assert report["rows"][0]["ratio"] == 1.0
    assert (report["bases_timed"], report["bases"], report["base_seconds"]) == (1, 1, 600.0)
    baseline = report["rows"][0]["none_seconds"]
    for row in report["rows"]:
        assert row["ratio"] == pytest.approx(row["none_seconds"] / baseline)
        # 250 s of grid runs at today's speed (baseline / 50 s per standard run), one job
        runs = 250 * (baseline / 50) * row["ratio"] / 3600
        assert row["runs_hours"] == pytest.approx(runs)
        assert row["hours"] == pytest.approx(runs + 600 / 3600)
        assert 0 <= row["neutral_short"] <= 1 and 0 <= row["neutral_long"] <= 1
    # every size trained on its own data: standard RMs on the cue split, neutral ones on the
    # neutral split, twice as many epochs in the long runs
    configs = {}
    for path in (tmp_path / "work").rglob("train_config.json"):
        parts = path.relative_to(tmp_path / "work").parts      # n16/runs/.../ENV/VARIANT/eE
        configs[parts[0], parts[-4], parts[-3], parts[-2]] = json.loads(path.read_text())
    assert len(configs) == 2 * 3 * 3        # sizes x environments x (none, neutral E, 2E)
    assert {k[2:] for k in configs} == {("none", "e0.5"), ("headroom", "e0.5"),
                                         ("headroom", "e1")}
    for (size, env, variant, epochs), config in configs.items():
        (train,) = config["data"]["train"]
        assert f"/{size}/data/" in train and f"/{env}/" in train
        assert train.endswith("neutral.jsonl" if variant == "headroom" else "train-95.jsonl")
        assert config["epochs"] == float(epochs[1:])
    for size in ("n16", "n8"):
        lines = (tmp_path / "work" / size / "data" / "V2-d0" / "done").read_text()
        assert json.loads(lines)["train"] == int(size[1:])
    table = (tmp_path / "work" / "budget.md").read_text()
    assert "bases: 1 of 1 timed" in table and "| 16 |" in table and "| 8 |" in table
    # a rerun trains nothing and reports the same rows
    again = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads((tmp_path / "work" / "budget.json").read_text())["rows"] == report["rows"]
