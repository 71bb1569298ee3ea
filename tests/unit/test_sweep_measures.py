"""The shortcut sweep's cue-balanced accuracy, computed by hand on a small case."""

import pytest

pytestmark = pytest.mark.unit


def test_cue_balanced_averages_cue_right_pairs_and_anti_cue_by_hand(benchmark_script):
    sweep = benchmark_script("shortcut_sweep")
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


def test_mlflow_logging_updates_a_cells_run_and_keeps_explorations_apart(tmp_path, monkeypatch,
                                                                         benchmark_script):
    import argparse

    import mlflow

    sweep = benchmark_script("shortcut_sweep")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.chdir(tmp_path)
    cells = {"V2@0.95": {"means": {"none": {"id": 0.9, "ood": float("nan")}},
                         "differences": {"sfc_two_stage": {"ood": {"mean": 0.1, "low": -0.1,
                                                                   "high": 0.3}}},
                         "criteria": {"all": False}}}

    def args(work=str(tmp_path / "sweep"), overrides=()):
        return argparse.Namespace(lr=1e-3, epochs=4.0, finetune="freeze_vision",
                                  train_size=2000, work=work, overrides=list(overrides))

    sweep.log_mlflow(cells, args())
    cells["V2@0.95"]["means"]["none"]["id"] = 0.8          # a later report of the same runs
    sweep.log_mlflow(cells, args())
    sweep.log_mlflow(cells, args("runs/other", ["shortcut.normalize=true"]))
    experiment = mlflow.get_experiment_by_name("mmrm-shortcut-sweep")
    runs = mlflow.search_runs([experiment.experiment_id], output_format="list")
    by_work = {r.data.params["work"]: r for r in runs}
    assert len(runs) == 2 and set(by_work) == {str(tmp_path / "sweep"), "runs/other"}
    # the experiment's artifacts lie beside the sweep that made it, not in the cwd
    assert experiment.artifact_location == (tmp_path / "sweep" / "mlartifacts").as_uri()
    assert not (tmp_path / "mlruns").exists()
    grid = by_work[str(tmp_path / "sweep")]
    assert grid.info.run_name == "V2@0.95" and grid.data.metrics["none/id"] == 0.8
    assert "none/ood" not in grid.data.metrics                 # NaN is not logged
    assert grid.data.metrics["diff/sfc_two_stage/ood_low"] == -0.1
    assert by_work["runs/other"].data.params["overrides"] == "shortcut.normalize=true"


def test_held_out_frames_are_new_and_readable_by_the_tiny_base(benchmark_script):
    """Every frame of --frame-shift differs from every training frame, and every text in
    them (scenes of one thing and of several) is made of words the tiny base knows."""
    import random

    from mmrm.synthetic.environments import (ANSWER_FRAMES, RLHFV_FRAME_SEVERAL, SplitConfig,
                                             povid_items, rlhfv_items, vlfeedback_items)
    from mmrm.synthetic.tiny_vlm import build_tokenizer, vocabulary_corpus
    from mmrm.synthetic.visual import visual_level

    sweep = benchmark_script("shortcut_sweep")
    assert not set(sweep.FRAME_SHIFT.values()) & {*ANSWER_FRAMES.values(), RLHFV_FRAME_SEVERAL}
    tokenizer = build_tokenizer(vocabulary_corpus())
    split = SplitConfig(name="x", size=30, cue_rate=0.5)
    texts = []
    for level in ("V1", "V2", "V3"):
        rng, visual = random.Random(level), visual_level(level)
        for env, make in (("povid", povid_items), ("rlhfv", rlhfv_items)):
            texts += [t for it in make(split, rng, 0, visual, sweep.FRAME_SHIFT[env])
                      for t in (it.chosen, it.rejected)]
        texts += [t for it in vlfeedback_items(split, rng, 0, visual,
                                               sweep.FRAME_SHIFT["vlfeedback"])
                  for t in it.responses]
    assert any(" and " in t for t in texts)         # scenes of several things are among them
    assert all(tokenizer.unk_token not in tokenizer.tokenize(t) for t in texts)


def test_frame_splits_are_written_once_per_setting(tmp_path, benchmark_script):
    import json

    from mmrm.synthetic.environments import own_cue_on_chosen

    sweep = benchmark_script("shortcut_sweep")
    folder = sweep.make_frames(tmp_path, "V2", 0, [0.95], 12)
    for env in sweep.ENVIRONMENTS:
        words = sweep.FRAME_SHIFT[env][:-4].lower()
        for split in ("frames-95", "frames-anticue"):
            lines = (tmp_path / "data" / "V2-d0" / "pairs" / env / f"{split}.jsonl"
                     ).read_text().splitlines()
            pairs = [json.loads(line) for line in lines]
            assert len(pairs) == 12 and all(words in p["chosen"] for p in pairs)
            if split == "frames-anticue":       # the own cue on the rejected side, always
                assert not any(own_cue_on_chosen(env, p["chosen"], p["rejected"])
                               for p in pairs)
    assert sweep.make_frames(tmp_path, "V2", 0, [0.95], 12) == folder     # cached
    with pytest.raises(SystemExit, match="frames-done was made with"):
        sweep.make_frames(tmp_path, "V2", 0, [0.95], 20)


def test_held_out_frame_measures_are_reported_only_where_measured(benchmark_script):
    import argparse

    sweep = benchmark_script("shortcut_sweep")
    args = argparse.Namespace(levels=["V2"], cue_rates=[0.95], base_seeds=[0],
                              data_seeds=[0, 1], resamples=200)

    def row(variant, d, env, value, framed):
        base = {"level": "V2", "rate": 0.95, "base": 0, "data": d, "env": env,
                "variant": variant, "id": value, "ood": value, "anticue": value,
                "cue_balanced": value, "bon_correct": value}
        headroom = {"headroom_id": 0.8, "headroom_frames_id": 0.7, "headroom_anticue": 0.75,
                    "headroom_frames_anticue": 0.65}
        return {**base, **headroom, "frames_id": value - 0.1, "frames_anticue": value - 0.2} \
            if framed else base

    for framed in (True, False):
        rows = [row(v, d, env, value + 0.05 * d, framed) for d in (0, 1)
                for env in sweep.ENVIRONMENTS
                for v, value in (("none", 0.6), ("sfc_two_stage", 0.7))]
        cell = sweep.summarise(rows, args)["V2@0.95"]
        differences = cell["differences"]["sfc_two_stage"]
        text = sweep.table({"V2@0.95": cell})
        assert differences["id"]["mean"] == pytest.approx(0.1)
        if framed:
            assert differences["frames_id"]["mean"] == pytest.approx(0.1)
            assert cell["means"]["none"]["frames_anticue"] == pytest.approx(0.425)
            expected = ("| V2@0.95 | none | 0.625 | 0.525 | 0.625 | 0.425 "
                        "| 0.800 | 0.700 | 0.750 | 0.650 |")
            assert expected in text
        else:
            assert "frames_id" not in differences and "held-out frames" not in text
