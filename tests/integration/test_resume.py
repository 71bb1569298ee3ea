"""A run killed with SIGKILL after a checkpoint and resumed ends where an uninterrupted run ends."""

import json
import os
import signal
import subprocess
import sys
import time

import torch
import yaml
from safetensors.torch import load_file



def write_config(path, tiny_vlm_dir, tiny_pairs, out):
    path.write_text(yaml.safe_dump({
        "model": str(tiny_vlm_dir), "output_dir": str(out),
        "data": {"train": [str(tiny_pairs[("povid", "train")]),
                           str(tiny_pairs[("rlhfv", "train")])]},
        "max_steps": 8, "per_device_batch_size": 4, "save_steps": 3, "log_steps": 1,
        "optim": {"lr": 5e-3, "warmup_ratio": 0.25}, "seed": 3}))
    return path


def run(config, *extra, wait=True):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MMRM_TEST_STEP_DELAY": "0.5"}
    command = [sys.executable, "-m", "mmrm", "train", str(config), *extra]
    if wait:
        return subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)


def test_sigkill_after_checkpoint_then_resume_matches_uninterrupted(tiny_vlm_dir, tiny_pairs,
                                                                   tmp_path):
    clean = write_config(tmp_path / "clean.yaml", tiny_vlm_dir, tiny_pairs, tmp_path / "clean")
    run(clean)

    killed = write_config(tmp_path / "killed.yaml", tiny_vlm_dir, tiny_pairs, tmp_path / "k")
    process = run(killed, wait=False)
    marker = tmp_path / "k" / "checkpoint-3" / "trainer_state.json"
    deadline = time.time() + 240
    while not marker.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert marker.exists(), "no checkpoint appeared"
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not (tmp_path / "k" / "final").exists()   # it really died before the end

    output = run(killed).stdout
    assert "resumed from" in output and "checkpoint-3" in output
    a = load_file(str(tmp_path / "clean" / "final" / "model.safetensors"))
    b = load_file(str(tmp_path / "k" / "final" / "model.safetensors"))
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    head_a = load_file(str(tmp_path / "clean" / "final" / "value_head.safetensors"))
    head_b = load_file(str(tmp_path / "k" / "final" / "value_head.safetensors"))
    assert torch.allclose(head_a["weight"], head_b["weight"], atol=1e-6)
    steps = [json.loads(line)["step"] for line in
             (tmp_path / "k" / "metrics.jsonl").read_text().splitlines()]
    assert steps[-1] == 8 and 4 in steps
