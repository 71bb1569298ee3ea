"""Fixtures of the integration tests."""

import json

import pytest


@pytest.fixture
def tiny_grid(tmp_path, benchmark_script):
    """A made-up finished sweep's folder for the scripts that measure against one: the tiny
    V2 base of base seed 0, pre-trained in seconds and said to have taken ``seconds``, and
    ``finished`` (the JSON the sweep would have written): ``grid = tiny_grid(600.0, {...})``."""
    from mmrm.synthetic.tiny_vlm import TinyVLMConfig, pretrain

    def make(seconds: float, finished: dict):
        sweep = benchmark_script("shortcut_sweep")
        grid = tmp_path / "grid"
        base = sweep.base_dir(grid, "V2", 0)
        pretrain(base, TinyVLMConfig(visual="V2", hidden_size=32, vision_layers=1,
                                     text_layers=1, heads=2, align_steps=2, tune_steps=2,
                                     batch_size=4, eval_scenes=5), log=lambda line: None)
        (base / "built.json").write_text(json.dumps({"seconds": seconds}))
        (grid / "sweep.json").write_text(json.dumps(finished))
        return grid

    return make
