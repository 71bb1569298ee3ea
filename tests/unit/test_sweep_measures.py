"""The shortcut sweep's cue-balanced accuracy, computed by hand on a small case."""

import importlib.util
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

SWEEP = Path(__file__).resolve().parents[2] / "benchmarks" / "shortcut_sweep.py"


def load_sweep():
    spec = importlib.util.spec_from_file_location("shortcut_sweep", SWEEP)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cue_balanced_averages_cue_right_pairs_and_anti_cue_by_hand():
    sweep = load_sweep()
    # 5 test pairs: the own cue on the preferred side of pairs 0, 1, 3 (right 2 of 3: the
    # RM gets pair 1 wrong); pairs 2 and 4 (cue on the rejected side) must not count
    result = {"own_test": {"0.95": {"chosen": [1.0, 0.0, 0.0, 2.0, 0.0],
                                    "rejected": [0.0, 1.0, 5.0, 1.0, 5.0]}},
              "anticue": 0.25}
    sides = (True, True, False, True, False)
    assert sweep.cue_balanced(result, sides, 0.95) == pytest.approx(0.5 * (2 / 3 + 0.25))
    # a tie counts one half, as in pairwise accuracy
    result["own_test"]["0.95"]["rejected"][1] = 0.0
    assert sweep.cue_balanced(result, sides, 0.95) == pytest.approx(0.5 * (2.5 / 3 + 0.25))
    with pytest.raises(ValueError, match="5 rewards for 4 test pairs"):
        sweep.cue_balanced(result, sides[:4], 0.95)


def test_mlflow_logging_updates_a_cells_run_and_keeps_explorations_apart(tmp_path, monkeypatch):
    import argparse

    import mlflow

    sweep = load_sweep()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.chdir(tmp_path)         # a new experiment's artifacts go to ./mlruns
    cells = {"V2@0.95": {"means": {"none": {"id": 0.9, "ood": float("nan")}},
                         "differences": {"sfc_two_stage": {"ood": {"mean": 0.1, "low": -0.1,
                                                                   "high": 0.3}}},
                         "criteria": {"all": False}}}

    def args(work="runs/sweep", overrides=()):
        return argparse.Namespace(lr=1e-3, epochs=4.0, finetune="freeze_vision",
                                  train_size=2000, work=work, overrides=list(overrides))

    sweep.log_mlflow(cells, args())
    cells["V2@0.95"]["means"]["none"]["id"] = 0.8          # a later report of the same runs
    sweep.log_mlflow(cells, args())
    sweep.log_mlflow(cells, args("runs/other", ["shortcut.normalize=true"]))
    experiment = mlflow.get_experiment_by_name("mmrm-shortcut-sweep")
    runs = mlflow.search_runs([experiment.experiment_id], output_format="list")
    by_work = {r.data.params["work"]: r for r in runs}
    assert len(runs) == 2 and set(by_work) == {"runs/sweep", "runs/other"}
    grid = by_work["runs/sweep"]
    assert grid.info.run_name == "V2@0.95" and grid.data.metrics["none/id"] == 0.8
    assert "none/ood" not in grid.data.metrics                 # NaN is not logged
    assert grid.data.metrics["diff/sfc_two_stage/ood_low"] == -0.1
    assert by_work["runs/other"].data.params["overrides"] == "shortcut.normalize=true"
