"""DeepSpeed ZeRO-2 through accelerate, single process on CPU (multi-GPU is for GPU machines):
the shipped ZeRO-2 accelerate config with the CPU and one process swapped in."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mmrm.config import TrainConfig
from mmrm.train import train

pytestmark = pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None,
                                reason="DeepSpeed is not installed (make test installs it)")

ROOT = Path(__file__).resolve().parents[2]


def test_zero2_single_process_cpu_trains_like_the_plain_loop(tiny_vlm_dir, tiny_pairs,
                                                            tmp_path):
    accelerate = yaml.safe_load((ROOT / "configs" / "accelerate" / "zero2.yaml").read_text())
    accelerate.update(use_cpu=True, num_processes=1, mixed_precision="no")
    accelerate["deepspeed_config"].update(gradient_accumulation_steps=1, gradient_clipping=1.0)
    (tmp_path / "zero2_cpu.yaml").write_text(yaml.safe_dump(accelerate))
    raw = {"model": str(tiny_vlm_dir), "output_dir": str(tmp_path / "ds"),
           "data": {"train": [str(tiny_pairs[("povid", "train")])]},
           "max_steps": 2, "per_device_batch_size": 4, "save_steps": 1, "log_steps": 1,
           "optim": {"lr": 1e-2, "warmup_ratio": 0}}
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(raw))

    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
         str(tmp_path / "zero2_cpu.yaml"), "-m", "mmrm", "train", str(tmp_path / "train.yaml"),
         "--no-resume"], env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]

    checkpoint = tmp_path / "ds" / "checkpoint-2" / "pytorch_model"
    assert (checkpoint / "zero_pp_rank_0_mp_rank_00_optim_states.pt").exists()  # ZeRO ran
    assert (tmp_path / "ds" / "final" / "value_head.safetensors").exists()
    plain = {**raw, "output_dir": str(tmp_path / "plain"), "save_steps": None}
    train(TrainConfig.model_validate(plain), resume=False, log=lambda line: None)
    losses = [[json.loads(line)["loss"] for line in (tmp_path / run / "metrics.jsonl")
               .read_text().splitlines()] for run in ("ds", "plain")]
    assert losses[0] == pytest.approx(losses[1], abs=1e-4)
