"""Every shipped config loads and validates; bad ones name the file and the key."""

from pathlib import Path

import pytest
import yaml

from mmrm.config import ProxySource, TrainConfig, load_config
from mmrm.weighting import Weighting

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs"
SHIPPED = ROOT / "mmrm" / "configs"
TRAIN_CONFIGS = sorted([p for p in (SHIPPED / "tiny").glob("*.yaml") if p.stem != "base"]
                       + [*(CONFIGS / "gpu").glob("*.yaml")])
#: A config's file name ends in its variant; each variant's proxy source and weighting.
VARIANTS = {"none": ("none", "none"), "neutral": ("none", "none"),
            "sfc_joint": ("joint", "sfc"), "sfc_two_stage": ("cross_fit", "sfc"),
            "sfc_normalized": ("cross_fit", "sfc"),
            "group_balance": ("cross_fit", "group_balance"), "poe": ("cross_fit", "poe"),
            "conf_reg": ("cross_fit", "conf_reg")}


def test_configs_are_shipped():
    names = {p.relative_to(p.parents[1]).as_posix() for p in TRAIN_CONFIGS}
    assert {f"tiny/{v}.yaml" for v in VARIANTS} | {
        "gpu/internvl_8b_none.yaml", "gpu/internvl_8b_sfc_joint.yaml",
        "gpu/qwen2vl_2b_none.yaml", "gpu/qwen2vl_2b_sfc_two_stage.yaml"} <= names


@pytest.mark.parametrize("path", TRAIN_CONFIGS, ids=lambda p: p.name)
def test_every_train_config_validates(path):
    config = load_config(path)
    assert isinstance(config, TrainConfig)
    # the file name says which variant it runs
    [named] = [v for v in VARIANTS if path.stem.endswith(v)]
    assert (config.shortcut.proxy.value, config.shortcut.weighting.value) == VARIANTS[named]


def test_an_old_config_fails_with_one_line_naming_the_new_keys(tmp_path):
    for old, new in (("weighting: sfc_two_stage", "shortcut.proxy: cross_fit with "
                                                  "shortcut.weighting: sfc"),
                     ("weighting: sfc_joint", "shortcut.proxy: joint with shortcut.weighting: "
                                              "sfc"),
                     ("weighting: sfc\n  proxy: cross_fit\n  formula: group_balance",
                      "shortcut.weighting (none | sfc | group_balance | poe)")):
        path = tmp_path / "old.yaml"
        path.write_text(f"model: m\noutput_dir: o\ndata: {{train: [a.jsonl]}}\nshortcut:\n"
                        f"  {old}\n  proxy_losses: p.json\n")
        with pytest.raises(ValueError) as caught:
            load_config(path)
        assert len(str(caught.value).splitlines()) == 1 and new in str(caught.value)


@pytest.mark.parametrize("shortcut, problem", [
    ({"weighting": "sfc"}, "needs a text-only proxy"),
    ({"proxy": "joint", "weighting": "poe"}, "needs a fixed proxy"),
    ({"proxy": "cross_fit", "weighting": "sfc"}, "proxy_losses is required"),
])
def test_inconsistent_shortcut_settings_are_refused(shortcut, problem):
    raw = {"model": "m", "output_dir": "o", "data": {"train": ["a.jsonl"]}, "shortcut": shortcut}
    with pytest.raises(Exception, match=problem):
        TrainConfig.model_validate(raw)
    assert ProxySource.NONE.value == "none"


def test_paper_faithful_internvl_settings():
    config = load_config(CONFIGS / "gpu" / "internvl_8b_sfc_joint.yaml")
    o = config.optim
    assert (o.lr, o.warmup_ratio, o.weight_decay, o.beta2, o.scheduler) == \
        (1e-5, 0.1, 0.05, 0.98, "cosine")
    assert (config.epochs, config.per_device_batch_size, config.gradient_accumulation_steps,
            config.mixed_precision, config.gradient_checkpointing, config.finetune.value) == \
        (1.0, 4, 2, "bf16", True, "freeze_vision")
    assert (config.shortcut.proxy, config.shortcut.weighting) == (ProxySource.JOINT,
                                                                   Weighting.SFC)


@pytest.mark.parametrize("path", [p for p in TRAIN_CONFIGS
                                  if "paper-faithful" in p.read_text().lower()],
                         ids=lambda p: p.name)
def test_configs_that_call_themselves_paper_faithful_use_the_papers_options(path):
    """The reference recipe: vision tower frozen, one epoch, and a proxy that sees one white
    tile where the real image would be (AlignRM/Generalizable-MM-RM)."""
    config = load_config(path)
    assert config.finetune.value == "freeze_vision" and config.epochs == 1.0
    if config.shortcut.weighting is not Weighting.NONE:
        assert config.shortcut.proxy_mode.value == "blank_image"


@pytest.mark.parametrize("stage", [2, 3])
def test_accelerate_deepspeed_configs(stage):
    raw = yaml.safe_load((CONFIGS / "accelerate" / f"zero{stage}.yaml").read_text())
    assert raw["distributed_type"] == "DEEPSPEED"
    assert raw["deepspeed_config"]["zero_stage"] == stage


def test_bad_config_names_file_and_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model: m\noutput_dir: o\ndata: {train: [a.jsonl]}\noptim: {lr: -1}\n"
                    "shortcut: {weighting: none}\nunknown_key: 3\n")
    with pytest.raises(ValueError) as caught:
        load_config(path)
    message = str(caught.value)
    assert f"{path}: optim.lr: Input should be greater than 0" in message
    assert f"{path}: unknown_key: Extra inputs are not permitted" in message


def test_overrides_use_dotted_keys(tmp_path):
    config = load_config(SHIPPED / "tiny" / "none.yaml",
                         ["optim.lr=3e-4", "seed=7", "shortcut.proxy=joint",
                          "shortcut.weighting=sfc"])
    assert (config.optim.lr, config.seed, config.shortcut.weighting) == \
        (3e-4, 7, Weighting.SFC)
    with pytest.raises(ValueError, match="not key=value"):
        load_config(SHIPPED / "tiny" / "none.yaml", ["seed"])


def test_a_multi_gpu_profile_launches_each_training_through_accelerate(tmp_path):
    from mmrm.pipeline.params import PipelineParams
    from mmrm.pipeline.training import launch_command

    params = PipelineParams.model_validate({"variants": ["none", "sfc_joint"], "model": {
        "base": "models/x", "config": str(CONFIGS / "gpu" / "internvl_8b_{variant}.yaml"),
        "processes": 8, "accelerate_config": "configs/accelerate/zero3.yaml"}})
    command = launch_command(params, "train", "povid", "sfc_joint", tmp_path / "p.yaml")
    assert command[1:3] == ["-m", "accelerate.commands.launch"]
    assert command[command.index("--num_processes") + 1] == "8"
    assert command[command.index("--config_file") + 1] == "configs/accelerate/zero3.yaml"
    assert command[-8:] == ["stage", "train", "--env", "povid", "--variant", "sfc_joint",
                            "--params", str(tmp_path / "p.yaml")]
    assert params.base_model == "models/x"


def test_params_train_holds_the_run_configs_own_keys(tmp_path):
    from mmrm.pipeline.params import load_params, train_config

    params = load_params(ROOT / "params.yaml", {"train": {"optim": {"lr": 0.002},
                                                          "epochs": 3}})
    config = train_config(params, "povid", "sfc_two_stage")
    assert (config.optim.lr, config.epochs, config.shortcut.weighting) == (0.002, 3, Weighting.SFC)
    assert config.shortcut.proxy_losses.endswith("proxy/povid/proxy_losses.json")
    assert train_config(params, "povid", "none").optim.lr == 0.002
    for old in ("batch_size", "lr"):          # not run-config keys: named, and refused
        with pytest.raises(ValueError, match=f"{old}: Extra inputs are not permitted"):
            load_params(ROOT / "params.yaml", {f"train.{old}": 1})
    with pytest.raises(ValueError, match="train.output_dir: set by the pipeline"):
        load_params(ROOT / "params.yaml", {"train.output_dir": "x"})
    with pytest.raises(ValueError, match="optim.lrr"):
        load_params(ROOT / "params.yaml", {"train.optim.lrr": 1})


def test_the_shipped_rl_config_validates():
    from mmrm.rl import RLConfig

    config = load_config("rl/tiny", cls=RLConfig)
    assert config.env == "povid" and config.group >= 2 and config.reward_model.endswith("final")
    with pytest.raises(ValueError, match="group"):
        load_config("rl/tiny", ["group=1"], RLConfig)


def test_a_preset_is_its_difference_from_one_base(tmp_path):
    """``extends``: the shipped presets hold their shortcut section (and what else differs)
    only; every other value lives once, in tiny/base.yaml."""
    base = load_config("tiny/base")
    for path in TRAIN_CONFIGS:
        if path.parent.name != "tiny":
            continue
        raw = yaml.safe_load(path.read_text())
        assert "extends" in raw and not {"optim", "epochs", "model", "seed"} & set(raw), path
        config = load_config(path)
        assert (config.optim, config.epochs, config.model) == (base.optim, base.epochs,
                                                               base.model)
    (tmp_path / "a.yaml").write_text("extends: b\n")
    (tmp_path / "b.yaml").write_text("extends: a\n")
    with pytest.raises(ValueError, match="cannot extend itself"):
        load_config(tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text("extends: nowhere\n")
    with pytest.raises(ValueError, match="c.yaml: extends: 'nowhere': no such config"):
        load_config(tmp_path / "c.yaml")
