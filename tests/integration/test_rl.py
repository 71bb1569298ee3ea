"""``mmrm rl`` for real on tiny inputs: the policy fine-tuned, GRPO for a few steps against a
running ``mmrm serve`` (started and stopped by the command), the measures written per
window, nothing left running."""

import json

import psutil
import pytest
from typer.testing import CliRunner

from mmrm.cli import app

pytest.importorskip("trl")


def test_a_tiny_rl_run_measures_every_window_and_stops_its_server(tiny_vlm_dir, tiny_pairs,
                                                                  trained_runs, tmp_path):
    before = {p.pid for p in psutil.process_iter()}
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
    left = [p for p in psutil.process_iter(["cmdline"]) if p.pid not in before
            and "serve" in " ".join(p.info["cmdline"] or [])]
    assert not left, [" ".join(p.info["cmdline"]) for p in left]
