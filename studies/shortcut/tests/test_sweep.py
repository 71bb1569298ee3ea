"""The study's sweep and report: the rules worked by hand, and one tiny replicate of both
phases through the real pipeline stages, resumed from its result files."""

import json

import pytest

import report
import sweep

TINY = ["benchmark.train_size=24", "benchmark.test_size=12", "benchmark.image_size=32",
        "benchmark.best_of_n.items=2", "benchmark.best_of_n.candidates=3",
        "base.image_size=32", "base.hidden_size=32", "base.vision_layers=1",
        "base.text_layers=1", "base.align_steps=2", "base.tune_steps=2", "base.batch_size=8",
        "base.eval_scenes=4", "train.max_steps=2", "train.per_device_batch_size=8"]


def rows_of(env, method, id_, ood, anticue=0.5, proxy=0.9):
    return {"env": env, "method": method, "id": id_, "ood": ood, "anticue": anticue,
            "proxy_test": proxy}


def test_the_default_rule_by_hand():
    # standard RM: ID .95, anti-cue .55 (gap .40 -> slack +.10), proxy .92 (|.03| -> +.02);
    # neutral: OOD .85 vs .70 (headroom .15 -> +.05), ID .88 vs .95 (-.07 + .05 -> -.02)
    rows = [rows_of("a", "none", 0.95, 0.70, anticue=0.55, proxy=0.92),
            rows_of("a", "neutral", 0.88, 0.85)]
    slack = report.criteria(rows)["a"]
    assert slack == pytest.approx({"anticue": 0.10, "proxy": 0.02, "headroom": 0.05,
                                   "image": -0.02})
    slacks = {"V2-c0.95-f0.2-fresh": {"a": {"x": 0.01}}, "V1-c0.95-f0.2-fresh": {"a": {"x": 0.2}},
              "V1-c0.95-f0.5-fresh": {"a": {"x": 0.0}}, "V2-c0.95-f0.5-repeated": None}
    # V1 before V2, then the foreign rate closer to 0.5: V1 f0.5 although its slack is 0
    assert report.choose_default(slacks) == {"cell": "V1-c0.95-f0.5-fresh", "qualifies": True,
                                             "smallest_slack": 0.0}
    missed = report.choose_default({"V1-c0.95-f0.5-fresh": {"a": {"x": -0.2}},
                                    "V2-c0.95-f0.5-fresh": {"a": {"x": -0.1}}})
    assert missed == {"cell": "V2-c0.95-f0.5-fresh", "qualifies": False,
                      "smallest_slack": -0.1}
    assert report.criteria([rows_of("a", "none", 0.9, 0.8)]) is None    # neutral missing


def test_headroom_capture_is_a_ratio_of_summed_gains():
    reps = {(0, d): {"none": {"ood": 0.70}, "neutral": {"ood": 0.90},
                     "poe": {"ood": 0.70 + g}} for d, g in enumerate([0.10, 0.05, 0.15])}
    capture = report.headroom_capture(reps, "poe", resamples=2000)
    assert capture["mean"] == pytest.approx(0.30 / 0.60) and capture["n"] == 3
    assert capture["low"] <= 0.5 <= capture["high"] and capture["high"] <= 0.75 + 1e-9


def test_replicates_are_interleaved_over_base_and_data_seeds():
    order = sweep.GRIDS["grid2"].replicates()
    assert len(order) == 10 and len(set(order)) == 10
    assert {b for b, _ in order[:2]} == {0, 1} and len({d for _, d in order[:5]}) == 5


def test_one_tiny_replicate_of_both_phases_then_nothing_to_do(tmp_path, monkeypatch):
    grid = sweep.Grid((sweep.Cell("V2", 0.95, 0.2, "repeated"),), (0,), (0,))
    monkeypatch.setitem(sweep.GRIDS, "tiny", grid)
    args = ["tiny", "--work", str(tmp_path / "work"), "--results", str(tmp_path / "results")]
    args += [item for kv in TINY for item in ("--set", kv)]
    sweep.main(args)
    runs = sorted((tmp_path / "results" / "runs" / "V2-c0.95-f0.2-repeated").glob("*.json"))
    assert [p.name for p in runs] == ["b0-d0.aware.json", "b0-d0.sfc-free.json"]
    free, aware = (json.loads(p.read_text()) for p in runs[::-1])
    assert set(free["matrix"]) == {f"{e}/{m}" for e in ("povid", "rlhfv", "vlfeedback")
                                   for m in ("none", "neutral")}
    assert {r.split("/")[1] for r in aware["matrix"]} == set(sweep.AWARE)
    assert free["params"]["benchmark"]["foreign_cue_rate"] == 0.2
    assert free["params"]["benchmark"]["train_size"] == 24        # the --set override
    assert all(0 <= v <= 1 for cells in aware["matrix"].values() for v in cells.values())
    assert set(free["diagnosis"]["proxies"]) == {"povid", "rlhfv", "vlfeedback"}
    weights = aware["diagnosis"]["models"]["povid/sfc_two_stage"]["weights"]
    assert weights and 0 < weights[0]["mean"] <= 1
    text = (tmp_path / "results" / "report.md").read_text()
    assert "V2-c0.95-f0.2-repeated (1 replicates)" in text and "| poe |" in text
    # targets and the best non-paper method at the (only) cell; the predictions that speak of
    # grid 2's eight cells are left undecided, those of the default cell alone (11, 12) not
    assert "**Best non-paper method: " in text and "(best) |" in text
    assert text.count("*not decided yet*") == 10 and "\n12. *" in text
    assert json.loads((tmp_path / "results" / "default.json").read_text())["default"]["cell"] \
        == "V2-c0.95-f0.2-repeated"
    assert (tmp_path / "results" / "phase.png").stat().st_size > 1000
    # a rerun finds every result: nothing to run; other overrides are refused
    assert sweep.tasks(sweep.parse_args(args), grid) == []
    with pytest.raises(SystemExit, match="made with extra overrides"):
        sweep.tasks(sweep.parse_args([*args, "--set", "train.seed=3"]), grid)


def test_a_cell_without_results_is_missing_not_an_error():
    assert report.criteria([]) is None
    assert report.choose_default({"V1-c0.95-f0.5-fresh": None}) == {}


def test_phases_that_report_different_proxies_are_listed():
    cell = {"visual": "V1", "cue": 0.95, "foreign": 0.5, "reuse": "fresh"}

    def result(phase, data_seed, accuracy):
        return {"cell": cell, "base_seed": 0, "data_seed": data_seed, "phase": phase,
                "diagnosis": {"proxies": {"povid": {"test": accuracy}}}}

    found = [result("sfc-free", 0, 0.95), result("aware", 0, 0.95),
             result("sfc-free", 1, 0.95), result("aware", 1, 0.94),
             result("sfc-free", 2, 0.90)]                 # one phase only: nothing to compare
    assert report.unshared_proxies(found) == ["V1-c0.95-f0.5-fresh b0-d1"]
