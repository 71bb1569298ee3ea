"""Weight interpolation of two tiny reward models of one base: the ends are the two models,
the middle is the weight average, the result is an ordinary saved RM, and two models that
are not fine-tunes of one base are refused."""

import json
import shutil

import pytest
import torch
from typer.testing import CliRunner

from mmrm.cli import app
from mmrm.data import load_pairs
from mmrm.inference import load_reward_model, score_pairs
from mmrm.interpolate import RECORD, Interpolation, check_compatible
from mmrm.model import write_files_record


def rewards(model_dir, pairs):
    model, collator = load_reward_model(model_dir)
    return torch.cat(score_pairs(model, collator, pairs))


def test_the_ends_are_the_models_and_the_middle_their_average(trained_runs, tiny_pairs,
                                                              tmp_path):
    a, b = trained_runs["none"] / "final", trained_runs["sfc_joint"] / "final"
    mix = Interpolation(a, b)
    head = "value_head.weight"
    assert torch.equal(mix.at(0.0).state_dict()[head], mix.state_a[head])
    assert torch.equal(mix.at(1.0).state_dict()[head], mix.state_b[head])
    assert not torch.equal(mix.state_a[head], mix.state_b[head])   # two different models
    half = mix.at(0.5).state_dict()
    for key in (head, next(k for k in half if "layers.0" in k and "weight" in k)):
        assert torch.allclose(half[key], (mix.state_a[key] + mix.state_b[key]) / 2)
    # OUT through the command: an ordinary saved RM that scores like the model in memory
    pairs = load_pairs(tiny_pairs[("povid", "test")])
    out = tmp_path / "mix"
    done = CliRunner().invoke(app, ["interpolate", str(a), str(b), str(out), "--alpha", "0.5"])
    assert done.exit_code == 0, done.output
    record = json.loads((out / RECORD).read_text())
    assert record["alpha"] == 0.5 and record["a"] == str(a) and len(record["a_digest"]) == 64
    mix.at(0.5)
    _, collator = load_reward_model(a)
    in_memory = torch.cat(score_pairs(mix.model, collator, pairs))
    assert torch.allclose(rewards(out, pairs), in_memory, atol=1e-5)
    assert not torch.allclose(rewards(out, pairs), rewards(a, pairs))
    # alpha 0 gives A's rewards back
    zero = tmp_path / "zero"
    assert CliRunner().invoke(app, ["interpolate", str(a), str(b), str(zero), "--alpha",
                                    "0"]).exit_code == 0
    assert torch.allclose(rewards(zero, pairs), rewards(a, pairs), atol=1e-6)


def test_models_of_another_base_or_architecture_are_refused(trained_runs, tmp_path):
    a = trained_runs["none"] / "final"
    other = tmp_path / "other"
    shutil.copytree(a, other)
    reward_config = json.loads((other / "reward_config.json").read_text())
    reward_config["base_model"] = "models/another-base"
    (other / "reward_config.json").write_text(json.dumps(reward_config))
    write_files_record(other)                        # saved so: a model of another base
    with pytest.raises(ValueError, match="base_model .* two fine-tunes of one base"):
        check_compatible(a, other)
    reward_config["base_model"] = json.loads((a / "reward_config.json").read_text())[
        "base_model"]
    (other / "reward_config.json").write_text(json.dumps(reward_config))
    config = json.loads((other / "config.json").read_text())
    config["text_config"]["rope_theta"] = 1234.0
    (other / "config.json").write_text(json.dumps(config))
    write_files_record(other)
    with pytest.raises(ValueError, match="text_config: not one architecture"):
        check_compatible(a, other)
    done = CliRunner().invoke(app, ["interpolate", str(a), str(other), str(tmp_path / "o")])
    assert done.exit_code == 2 and "not one architecture" in done.output
    # OUT may not be (or hold) an input
    done = CliRunner().invoke(app, ["interpolate", str(a), str(a), str(a.parent)])
    assert done.exit_code == 2 and "holds the input" in done.output
