"""The shortcut sweep reuses a cached run only for the settings it was made with."""

import json

import pytest

pytestmark = pytest.mark.unit


def cache_run(sweep, spec: dict, **changed) -> None:
    """Write ``spec``'s result.json as a run made with ``changed`` settings would have."""
    out = sweep.Path(spec["out"])
    out.mkdir(parents=True)
    (out / "result.json").write_text(json.dumps({"accuracy": {}, "spec": {**spec, **changed}}))


def grid(sweep, work, *extra):
    args = sweep.parse_args(["--work", str(work), "--levels", "V2", "--cue-rates", "0.95",
                             "--base-seeds", "0", "--data-seeds", "0", *extra])
    keys = {("V2", 0): str(work / "bases" / "V2-s0")}
    return args, sweep.specs(args, keys, {("V2", 0): str(work / "data" / "V2-d0")})


def test_a_run_of_the_same_settings_is_reused_and_paths_compare_resolved(
        tmp_path, monkeypatch, benchmark_script):
    sweep = benchmark_script("shortcut_sweep")
    monkeypatch.chdir(tmp_path)
    _, tasks = grid(sweep, sweep.Path("w"))
    (two_stage,) = [t for t in tasks if t["variant"] == "sfc_two_stage" and t["env"] == "povid"]
    # the same run, cached by a sweep given its folders as absolute paths and models kept
    cache_run(sweep, two_stage, base=str(tmp_path / two_stage["base"]), keep_models=True)
    assert sweep.cached_result(two_stage)["accuracy"] == {}
    assert sweep.execute(two_stage)["accuracy"] == {}       # reused: nothing trained
    (none,) = [t for t in tasks if t["variant"] == "none" and t["env"] == "povid"]
    assert sweep.cached_result(none) is None


def test_a_run_of_other_settings_is_an_error_naming_the_file_and_the_setting(
        tmp_path, benchmark_script):
    sweep = benchmark_script("shortcut_sweep")
    _, tasks = grid(sweep, tmp_path, "--lr", "3e-4")
    (none,) = [t for t in tasks if t["variant"] == "none" and t["env"] == "rlhfv"]
    cache_run(sweep, none, recipe={**none["recipe"], "optim.lr": 1e-3})
    with pytest.raises(ValueError) as error:
        sweep.execute(none)
    message = str(error.value)
    assert str(sweep.Path(none["out"]) / "result.json") in message
    assert '"optim.lr": 0.001' in message and '"optim.lr": 0.0003' in message
    assert sweep.cached_result(none, trust=True)["accuracy"] == {}
    # the sweep stops before making bases or data; --trust-cache reports the run anyway
    argv = ["--work", str(tmp_path), "--levels", "V2", "--cue-rates", "0.95", "--base-seeds",
            "0", "--data-seeds", "0", "--lr", "3e-4", "--variants", "none", "--report-only"]
    with pytest.raises(SystemExit, match="1 cached runs do not match"):
        sweep.main(argv)
    assert not (tmp_path / "bases").exists() and not (tmp_path / "sweep.json").exists()


@pytest.mark.parametrize(("variant", "changed", "serves"), [
    ("none", {"overrides": ["shortcut.normalize=true"]}, False),
    ("none", {"rate": 0.85}, False),
    ("none", {"all_rates": [0.85]}, True),             # only the neutral RM is tested at all
    ("headroom", {"all_rates": [0.85]}, False),        # ... and it lacks the wanted rate
    ("headroom", {"all_rates": [0.85, 0.95]}, True),   # more rates than wanted serve
    ("none", {"proxy_out": "elsewhere"}, True),        # a standard RM reads no proxy
    ("sfc_two_stage", {"proxy_out": "elsewhere"}, False),
    ("sfc_joint", {"frame_shift": True}, False),
])
def test_which_settings_must_match_per_variant(tmp_path, benchmark_script, variant, changed,
                                               serves):
    sweep = benchmark_script("shortcut_sweep")
    _, tasks = grid(sweep, tmp_path)
    (task,) = [t for t in tasks if t["variant"] == variant and t["env"] == "povid"]
    cached = {**task, **changed}
    assert (sweep.spec_differences(cached, task) == []) is serves


def test_runs_cached_before_the_frame_shift_setting_count_as_made_without_it(
        tmp_path, benchmark_script):
    sweep = benchmark_script("shortcut_sweep")
    _, tasks = grid(sweep, tmp_path)
    old = {k: v for k, v in tasks[0].items() if k != "frame_shift"}
    assert sweep.spec_differences(old, tasks[0]) == []
    _, shifted = grid(sweep, tmp_path, "--frame-shift")
    assert sweep.spec_differences(old, shifted[0]) == ['frame_shift: false, here true']
