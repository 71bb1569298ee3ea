"""``mmrm rl`` for real on tiny inputs: the policy fine-tuned, GRPO for a few steps against a
running ``mmrm serve`` (started and stopped by the command), the measures written per
window, nothing left running."""

import json
import uuid

import psutil
import pytest
from typer.testing import CliRunner

from mmrm.cli import app

pytest.importorskip("trl")


def test_a_tiny_rl_run_measures_every_window_and_stops_its_server(tiny_vlm_dir, tiny_pairs,
                                                                  trained_runs, tmp_path,
                                                                  monkeypatch):
    # every process the run starts (the server, its Ray cluster) inherits this mark; other
    # tests' servers running beside this one in the same session do not have it
    mark = uuid.uuid4().hex
    monkeypatch.setenv("MMRM_TEST_RL_MARK", mark)
    out = tmp_path / "rl"
    result = CliRunner().invoke(app, [
        "rl", "rl/tiny", f"base={tiny_vlm_dir}", f"reward_model={trained_runs['none'] / 'final'}",
        f"sft_pairs={tiny_pairs[('povid', 'train')]}", f"output_dir={out}",
        f"cache_dir={out / 'cache'}", "image_size=32",
        "prompts=8", "sft_steps=2", "sft_batch=4", "steps=2", "group=2", "prompts_per_step=2",
        "log_every=1", "max_completion_length=8", "--no-track"])
    assert result.exit_code == 0, result.output[-3000:]
    windows = [json.loads(line) for line in (out / "measures.jsonl").read_text().splitlines()]
    assert [w["step"] for w in windows] == [1, 2]
    for w in windows:
        assert 0 <= w["rl/gold"] <= 1 and w["rl/length"] >= 0
        assert all(0 <= w[f"rl/cue/{c}"] <= 1 for c in ("sure", "hedge", "verbose"))
        assert w["rl/reward"] == w["rl/reward"]                     # a number, not NaN
    assert json.loads((out / "result.json").read_text())["windows"] == 2
    policy = next((out / "cache" / "policies").iterdir())
    assert (policy / "policy.json").is_file() and (policy / "config.json").is_file()
    left = [" ".join(p.cmdline()) for p in _marked(mark)]
    assert not left, left


def _marked(mark: str) -> list[psutil.Process]:
    """The live processes other than this one whose environment holds ``mark``."""
    found = []
    for p in psutil.process_iter():
        if p.pid == psutil.Process().pid:
            continue
        try:
            if p.environ().get("MMRM_TEST_RL_MARK") == mark and p.status() != psutil.STATUS_ZOMBIE:
                found.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found
