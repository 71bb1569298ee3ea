"""params.yaml's benchmark and variants: the anti-cue split places every cue against the side
training favoured, the neutral split places every cue at random, the neutral variant needs
it; the derived variants are built from the standard RM and need what they read."""

import pytest

from mmrm.pipeline.data import benchmark_config
from mmrm.pipeline.params import PipelineParams, train_config


@pytest.mark.parametrize("foreign, anticue_foreign", [(0.5, 0.5), (0.2, 1.0), (0.8, 0.0)])
def test_the_anticue_split_reverses_every_cue_training_favoured(foreign, anticue_foreign):
    params = PipelineParams.model_validate({"benchmark": {"cue_rate": 0.95,
                                                          "foreign_cue_rate": foreign}})
    splits = {s.name: s for s in benchmark_config(params).splits}
    assert set(splits) == {"train", "test", "anticue"}
    assert (splits["train"].cue_rate, splits["train"].foreign_cue_rate) == (0.95, foreign)
    assert (splits["test"].cue_rate, splits["test"].foreign_cue_rate) == (0.95, foreign)
    assert (splits["anticue"].cue_rate, splits["anticue"].foreign_cue_rate) == \
        (0.0, anticue_foreign)


def test_the_neutral_variant_trains_on_the_neutral_split():
    params = PipelineParams.model_validate({
        "benchmark": {"neutral": True, "train_size": 100, "foreign_cue_rate": 0.2},
        "variants": ["none", "neutral", "sfc_two_stage"]})
    neutral = {s.name: s for s in benchmark_config(params).splits}["neutral"]
    assert (neutral.size, neutral.cue_rate, neutral.foreign_cue_rate) == (100, 0.5, 0.5)
    config = train_config(params, "povid", "neutral")
    assert config.data.train == ["data/envs/povid/neutral.jsonl"]
    assert config.shortcut.proxy_losses is None          # the proxies know the train split
    assert train_config(params, "povid", "none").shortcut.proxy_losses
    with pytest.raises(ValueError, match="needs benchmark.neutral: true"):
        PipelineParams.model_validate({"variants": ["none", "neutral"]})
    with pytest.raises(ValueError, match="no such config file"):
        PipelineParams.model_validate({"variants": ["none", "nonsense"]})


def test_a_cross_fitted_fold_trains_its_share_of_the_steps():
    """k folds: each proxy sees (k - 1) / k of the pairs, so of the steps: with epochs by
    itself, with max_steps by the same share (rounded up)."""
    from mmrm.config import TrainConfig
    from mmrm.proxy import proxy_config

    raw = {"model": "m", "output_dir": "o", "data": {"train": ["a.jsonl"]}, "epochs": 4}
    by_epochs = proxy_config(TrainConfig.model_validate(raw), fold=0)
    assert (by_epochs.epochs, by_epochs.max_steps, by_epochs.data.holdout_fold) == (4, None, 0)
    by_steps = TrainConfig.model_validate({**raw, "max_steps": 7,
                                           "shortcut": {"proxy_folds": 3}})
    assert proxy_config(by_steps, fold=2).max_steps == 5          # ceil(7 * 2 / 3)
    assert proxy_config(by_steps).max_steps == 7                   # one proxy: all of them


def test_derived_variants_are_built_from_the_standard_rm():
    params = PipelineParams.model_validate({
        "benchmark": {"val_size": 50}, "variants": ["none", "sfc_two_stage", "poe"],
        "derived_variants": ["conf_reg", "interpolated"]})
    assert params.all_variants == ["none", "sfc_two_stage", "poe", "conf_reg", "interpolated"]
    assert params.trained_variants == ["none", "sfc_two_stage", "poe", "conf_reg"]
    assert params.interpolation_partners == ["sfc_two_stage", "poe"]   # the aware ones
    # conf_reg's teacher is the standard RM of its environment; its cache in its own folder
    config = train_config(params, "rlhfv", "conf_reg")
    assert config.shortcut.teacher == "runs/pipeline/models/rlhfv/none/final"
    assert config.shortcut.teacher_margins == \
        "runs/pipeline/models/derived/rlhfv/conf_reg/teacher_margins.json"
    assert str(params.model_dir("rlhfv", "interpolated")) == \
        "runs/pipeline/models/derived/rlhfv/interpolated"
    # the validation split is written last (the other splits' pairs stay as they were)
    assert [s.name for s in benchmark_config(params).splits][-1] == "val"


@pytest.mark.parametrize("raw, message", [
    ({"variants": ["none", "conf_reg"]}, "list it under derived_variants"),
    ({"variants": ["sfc_two_stage"], "derived_variants": ["conf_reg"]},
     "variants must include none"),
    ({"variants": ["none", "sfc_two_stage"], "derived_variants": ["sfc_two_stage"]},
     "also in variants"),
    ({"variants": ["none", "sfc_two_stage"], "derived_variants": ["interpolated"]},
     "chooses on validation pairs"),
    ({"benchmark": {"val_size": 10}, "variants": ["none", "neutral"],
      "derived_variants": ["interpolated"]}, "needs a shortcut-aware variant"),
    ({"benchmark": {"val_size": 10}, "variants": ["none", "sfc_two_stage"],
      "derived_variants": ["interpolated"], "interpolation": {"partners": ["poe"]}},
     "partners are variants other than none"),
    ({"benchmark": {"val_size": 10}, "variants": ["none", "sfc_two_stage"],
      "derived_variants": ["interpolated"], "interpolation": {"alphas": [1.5]}},
     "shares between 0 and 1"),
])
def test_derived_variants_refuse_what_they_cannot_build(raw, message):
    raw = {"benchmark": {**raw.pop("benchmark", {}), "neutral": True}, **raw}
    with pytest.raises(ValueError, match=message):
        PipelineParams.model_validate(raw)
