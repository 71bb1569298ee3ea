"""Every shipped config loads and validates; bad ones name the file and the key."""

from pathlib import Path

import pytest
import yaml

from mmrm.config import TrainConfig, load_config
from mmrm.weighting import Weighting

pytestmark = pytest.mark.unit
CONFIGS = Path(__file__).resolve().parents[2] / "configs"
TRAIN_CONFIGS = sorted(p for sub in ("tiny", "gpu") for p in (CONFIGS / sub).glob("*.yaml"))


def test_configs_are_shipped():
    names = {p.relative_to(CONFIGS).as_posix() for p in TRAIN_CONFIGS}
    assert {"tiny/none.yaml", "tiny/sfc_joint.yaml", "tiny/sfc_two_stage.yaml",
            "gpu/internvl_8b_none.yaml", "gpu/internvl_8b_sfc_joint.yaml",
            "gpu/qwen2vl_2b_none.yaml", "gpu/qwen2vl_2b_sfc_two_stage.yaml"} <= names


@pytest.mark.parametrize("path", TRAIN_CONFIGS, ids=lambda p: p.name)
def test_every_train_config_validates(path):
    config = load_config(path)
    assert isinstance(config, TrainConfig)
    # the file name says which weighting it runs
    [named] = [w for w in Weighting if path.stem.endswith(w.value)]
    assert config.shortcut.weighting is named


def test_paper_faithful_internvl_settings():
    config = load_config(CONFIGS / "gpu" / "internvl_8b_sfc_joint.yaml")
    o = config.optim
    assert (o.lr, o.warmup_ratio, o.weight_decay, o.beta2, o.scheduler) == \
        (1e-5, 0.1, 0.05, 0.98, "cosine")
    assert (config.epochs, config.per_device_batch_size, config.gradient_accumulation_steps,
            config.mixed_precision, config.gradient_checkpointing, config.finetune.value) == \
        (1.0, 4, 2, "bf16", True, "freeze_vision")
    assert config.shortcut.weighting is Weighting.SFC_JOINT


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
                    "shortcut: {weighting: sfc_two_stage}\nunknown_key: 3\n")
    with pytest.raises(ValueError) as caught:
        load_config(path)
    message = str(caught.value)
    assert f"{path}: optim.lr: Input should be greater than 0" in message
    assert f"{path}: unknown_key: Extra inputs are not permitted" in message


def test_overrides_use_dotted_keys(tmp_path):
    config = load_config(CONFIGS / "tiny" / "none.yaml",
                         ["optim.lr=3e-4", "seed=7", "shortcut.weighting=sfc_joint"])
    assert (config.optim.lr, config.seed, config.shortcut.weighting) == \
        (3e-4, 7, Weighting.SFC_JOINT)
    with pytest.raises(ValueError, match="not key=value"):
        load_config(CONFIGS / "tiny" / "none.yaml", ["seed"])


def test_a_multi_gpu_profile_launches_each_training_through_accelerate(tmp_path):
    from mmrm.pipeline import PipelineParams, launch_command

    params = PipelineParams.model_validate({"model": {
        "base": "models/x", "config": "configs/gpu/internvl_8b_{variant}.yaml", "processes": 8,
        "accelerate_config": "configs/accelerate/zero3.yaml"}})
    command = launch_command(params, "train", "povid", "sfc_joint", tmp_path / "p.yaml")
    assert command[1:3] == ["-m", "accelerate.commands.launch"]
    assert command[command.index("--num_processes") + 1] == "8"
    assert command[command.index("--config_file") + 1] == "configs/accelerate/zero3.yaml"
    assert command[-8:] == ["stage", "train", "--env", "povid", "--variant", "sfc_joint",
                            "--params", str(tmp_path / "p.yaml")]
    assert params.base_model == "models/x"
