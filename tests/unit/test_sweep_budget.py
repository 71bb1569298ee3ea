"""The sweep-budget benchmark's arithmetic, computed by hand on small cases."""

import pytest

pytestmark = pytest.mark.unit


def test_neutral_accuracy_is_the_mean_over_environments_of_their_column_means(benchmark_script):
    budget = benchmark_script("sweep_budget")
    results = [{"accuracy": {"a@0.85": 0.8, "b@0.85": 0.6}},     # 0.7
               {"accuracy": {"a@0.85": 1.0, "b@0.85": 0.8}},     # 0.9
               {"accuracy": {"a@0.85": 0.5, "b@0.85": 0.5}}]     # 0.5
    assert budget.neutral_accuracy(results) == pytest.approx(0.7)


def test_budget_rule_holds_within_the_tolerance_only(benchmark_script):
    budget = benchmark_script("sweep_budget")
    assert budget.budget_holds(0.80, 0.815, 0.02)
    assert budget.budget_holds(0.80, 0.78, 0.02)        # the longer run did worse: reached
    assert not budget.budget_holds(0.771, 0.817, 0.02)  # the grid's own check: doubled


def test_grid_hours_scales_the_grid_to_todays_speed_and_the_split(benchmark_script):
    budget = benchmark_script("sweep_budget")
    # 3,600 s summed over variants; the grid's standard run took 40 s, today's baseline
    # takes 20 s (half), the smaller split a quarter of that: 3600 * 0.5 * 0.25 / 2 jobs
    # = 225 s of runs; bases 1,800 s over 2 jobs add 900 s
    runs, total = budget.grid_hours({"none": 1200.0, "sfc_joint": 2400.0}, 40.0, 20.0, 0.25,
                                    2, 1800.0)
    assert runs == pytest.approx(225 / 3600)
    assert total == pytest.approx((225 + 900) / 3600)


def test_bases_are_timed_by_the_sweep_or_their_old_report_and_the_rest_count_as_the_mean(
        tmp_path, benchmark_script):
    budget = benchmark_script("sweep_budget")
    for name, record, file in (("V2-s0", {"seconds": 500.0}, "built.json"),
                               ("V2-s1", {"seconds": 700.0, "grounding": {}},
                                "pretrain_report.json"),      # a base of an older sweep
                               ("V2-s2", {"grounding": {}}, "pretrain_report.json")):
        (tmp_path / name).mkdir()
        (tmp_path / name / file).write_text(budget.json.dumps(record))
    assert budget.sweep.base_seconds(tmp_path / "V2-s2") is None
    assert budget.bases_seconds(tmp_path) == (1800.0, 2, 3)     # (500 + 700) * 3 / 2


def test_a_grid_folder_with_a_base_but_no_finished_sweep_is_named_in_the_error(
        tmp_path, benchmark_script):
    budget = benchmark_script("sweep_budget")
    base = budget.sweep.base_dir(tmp_path, "V2", 0)
    base.mkdir(parents=True)
    (base / "pretrain_report.json").write_text("{}")
    with pytest.raises(SystemExit, match="sweep.json: missing"):
        budget.main(["--grid", str(tmp_path), "--work", str(tmp_path / "work")])
    assert not (tmp_path / "work").exists()         # nothing measured, nothing written
