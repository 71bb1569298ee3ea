"""Training on a tiny random LLaVA for a few CPU steps: parameters move, files are right."""

import json
import math
import warnings
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText
from typer.testing import CliRunner

from mmrm.cli import app
from mmrm.config import TrainConfig, with_overrides
from mmrm.data import PairCollator, load_pairs, set_right_padding
from mmrm.inference import score_pairs
from mmrm.model import RewardModel, load_processor
from mmrm.proxy import train_text_proxy
from mmrm.train import encode_cache_budget, train


#: Parameters this architecture never uses, so no step can change them: CLIP's final
#: layer norm (LLaVA reads the last hidden state before it).
UNUSED = ("vision_tower.post_layernorm",)


def config(tiny_vlm_dir, tiny_pairs, out, **changes):
    raw = {"model": str(tiny_vlm_dir), "output_dir": str(out),
           "data": {"train": [str(tiny_pairs[("povid", "train")])],
                    "eval": {"povid": str(tiny_pairs[("povid", "test")])}},
           "max_steps": 2, "per_device_batch_size": 4, "optim": {"lr": 1e-2, "warmup_ratio": 0},
           "log_steps": 1}
    for key, value in changes.items():
        node = raw
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return TrainConfig.model_validate(raw)


def metrics(out):
    """The run's logged records (``metrics.jsonl``), one dict per log step."""
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def unchanged_used(changed, names):
    """Tensor names that did not change, less those the architecture never uses."""
    return {n for n in names - changed if not any(u in n for u in UNUSED)}


def changed_tensors(before_dir, after_dir):
    """Names of the tensors that differ (in the later file's dtype), and all names."""
    before, after = load_file(f"{before_dir}/model.safetensors"), \
        load_file(f"{after_dir}/model.safetensors")
    assert before.keys() == after.keys()
    return {k for k in before if not torch.equal(before[k].to(after[k].dtype), after[k])}, \
        set(before)


def test_two_steps_change_every_used_parameter_and_save_load_round_trips(
        tiny_vlm_dir, tiny_pairs, tmp_path):
    result = train(config(tiny_vlm_dir, tiny_pairs, tmp_path / "run"), resume=False)
    assert result["steps"] == 2 and result["pairs_seen"] == 8
    assert 0.0 <= result["eval/povid/accuracy"] <= 1.0
    changed, names = changed_tensors(tiny_vlm_dir, tmp_path / "run" / "final")
    assert unchanged_used(changed, names) == set()
    log = metrics(tmp_path / "run")
    assert [r["step"] for r in log] == [1, 2]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in log)

    # save -> load gives identical rewards, with no mmrm-specific loading code needed
    final = tmp_path / "run" / "final"
    reward_config = json.loads((final / "reward_config.json").read_text())
    assert reward_config["base_model"] == str(tiny_vlm_dir) and reward_config["reward_std"] > 0
    model = RewardModel.load(final).eval()
    processor = load_processor(final)
    set_right_padding(processor)
    pairs = load_pairs(tiny_pairs[("povid", "test")])[:6]
    first = score_pairs(model, PairCollator(processor), pairs)
    second = score_pairs(RewardModel.load(final).eval(), PairCollator(processor), pairs)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])


def test_each_image_is_encoded_once_per_pair(tiny_vlm_dir, tiny_pairs):
    model = RewardModel.from_base(tiny_vlm_dir)
    processor = load_processor(tiny_vlm_dir)
    set_right_padding(processor)
    pairs = load_pairs(tiny_pairs[("povid", "train")])[:3]
    batch = PairCollator(processor)(pairs)
    seen = []
    encode = model.backbone.model.get_image_features
    model.backbone.model.get_image_features = lambda **kw: (seen.append(
        kw["pixel_values"].shape[0]), encode(**kw))[1]
    rewards = model(**{k: v for k, v in batch.items() if k != "ids"}, sequences_per_image=2)
    assert seen == [3] and rewards.shape == (6,)
    # the same rewards as encoding each sequence's image separately
    model.backbone.model.get_image_features = encode
    separate = [model(input_ids=batch["input_ids"][i:i + 1],
                      attention_mask=batch["attention_mask"][i:i + 1],
                      pixel_values=batch["pixel_values"][i % 3:i % 3 + 1]) for i in range(6)]
    assert torch.allclose(rewards, torch.cat(separate), atol=1e-5)


def test_text_only_batches_carry_no_image(tiny_vlm_dir, tiny_pairs):
    processor = load_processor(tiny_vlm_dir)
    pairs = load_pairs(tiny_pairs[("rlhfv", "train")])[:2]
    batch = PairCollator(processor, mode="text_only")(pairs)
    assert "pixel_values" not in batch
    image_id = processor.tokenizer.convert_tokens_to_ids("<image>")
    assert not (batch["input_ids"] == image_id).any()
    blank = PairCollator(processor, mode="blank_image")(pairs)
    assert torch.equal(blank["pixel_values"][0], blank["pixel_values"][1])  # both white


def test_freeze_vision_keeps_the_vision_tower(tiny_vlm_dir, tiny_pairs, tmp_path):
    train(config(tiny_vlm_dir, tiny_pairs, tmp_path / "run", finetune="freeze_vision"),
          resume=False)
    changed, names = changed_tensors(tiny_vlm_dir, tmp_path / "run" / "final")
    vision = {n for n in names if "vision_tower" in n}
    assert vision and not (vision & changed)
    assert any("language_model" in n for n in changed)


def test_gradient_checkpointing_trains_whole_sequences_to_the_same_losses(
        tiny_vlm_dir, tiny_pairs, tmp_path):
    losses = {}
    for checkpointing in (False, True):
        out = tmp_path / f"checkpointing-{checkpointing}"
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            train(config(tiny_vlm_dir, tiny_pairs, out, gradient_checkpointing=checkpointing),
                  resume=False)
        losses[checkpointing] = [r["loss"] for r in metrics(out)]
        # the deprecated name (removed in transformers v6) is not what turns it on
        assert not [w for w in caught if "gradient_checkpointing_enable" in str(w.message)]
    changed, names = changed_tensors(tiny_vlm_dir, tmp_path / "checkpointing-True" / "final")
    assert unchanged_used(changed, names) == set()
    # recomputed activations, whole sequences instead of the shared prompt: same run
    assert losses[True] == pytest.approx(losses[False], abs=1e-4)


def test_torch_compile_trains_to_the_same_losses_and_saves_plain_weights(
        tiny_vlm_dir, tiny_pairs, tmp_path):
    import torch._dynamo

    torch._dynamo.utils.counters.clear()
    runs = {}
    for compiled in (False, True):
        out = tmp_path / f"compile-{compiled}"
        runs[compiled] = train(config(tiny_vlm_dir, tiny_pairs, out, torch_compile=compiled),
                               resume=False)
        runs[compiled]["losses"] = [r["loss"] for r in metrics(out)]
    frames = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    torch._dynamo.reset()            # later tests in this process start eager and uncompiled
    assert frames > 0                # the compiler did run
    assert runs[True]["losses"] == pytest.approx(runs[False]["losses"], abs=1e-4)
    assert runs[True]["eval/povid/accuracy"] == runs[False]["eval/povid/accuracy"]
    # compiled in place: the saved weights carry the backbone's own names, and they load
    changed, names = changed_tensors(tiny_vlm_dir, tmp_path / "compile-True" / "final")
    assert unchanged_used(changed, names) == set()
    assert not any("_orig_mod" in n for n in names)


@pytest.fixture
def fresh_accelerator_state():
    """accelerate keeps one mixed-precision setting per process: reset it around a test that
    asks for another one."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


@pytest.mark.parametrize("saved_in", ["fp32", "bf16"])
def test_bf16_without_deepspeed_keeps_fp32_weights_so_small_updates_land(
        tiny_vlm_dir, tiny_pairs, tmp_path, fresh_accelerator_state, saved_in):
    base = tiny_vlm_dir
    if saved_in == "bf16":   # as most released VLMs are: transformers 5 loads them so by default
        base = tmp_path / "base-bf16"
        AutoModelForImageTextToText.from_pretrained(tiny_vlm_dir, dtype=torch.bfloat16
                                                    ).save_pretrained(base)
        load_processor(tiny_vlm_dir).save_pretrained(base)
    train(config(base, tiny_pairs, tmp_path / "run", mixed_precision="bf16",
                 **{"optim.lr": 1e-5}), resume=False)
    final = tmp_path / "run" / "final"
    # in bf16 weights a 1e-5 step on a norm weight of 1.0 rounds away (bf16 spacing at 1.0
    # is 2^-7); the fp32 weights take every step
    changed, names = changed_tensors(base, final)
    assert unchanged_used(changed, names) == set()
    assert {t.dtype for t in load_file(f"{final}/model.safetensors").values()} == \
        {torch.float32}


def test_lora_trains_adapters_on_the_language_model_and_saves_a_plain_backbone(
        tiny_vlm_dir, tiny_pairs, tmp_path):
    train(config(tiny_vlm_dir, tiny_pairs, tmp_path / "run", finetune="lora"), resume=False)
    final = tmp_path / "run" / "final"
    changed, names = changed_tensors(tiny_vlm_dir, final)   # same keys: adapters merged
    adapted = {n for n in names if "language_model" in n
               and any(f"{m}.weight" in n for m in ("q_proj", "k_proj", "v_proj", "o_proj"))}
    language = {n for n in names if "language_model" in n}
    vision = {n for n in names if "vision_tower" in n}
    assert adapted and changed & language == adapted      # only the adapted weights moved
    assert vision and not changed & vision                 # the vision tower stays frozen
    assert any("multi_modal_projector" in n for n in changed)
    rewards = score_pairs(RewardModel.load(final).eval(), PairCollator(load_processor(final)),
                          load_pairs(tiny_pairs[("povid", "test")])[:4])
    assert all(torch.isfinite(r).all() for r in rewards)


def test_sfc_two_stage_and_joint_train(tiny_vlm_dir, tiny_pairs, trained_runs, tmp_path):
    two = config(tiny_vlm_dir, tiny_pairs, tmp_path / "two", **{
        "shortcut.proxy": "cross_fit", "shortcut.weighting": "sfc",
        "shortcut.proxy_losses": str(tmp_path / "two" / "proxy_losses.json")})
    cache = train_text_proxy(two)
    losses = cache["losses"]
    assert len(losses) == 24 and all(v >= 0 for v in losses.values())
    # the margin and the loss of a pair agree: loss = log(1 + exp(-margin)) (to rounding)
    assert all(losses[i] == pytest.approx(math.log1p(math.exp(-m)), abs=2e-6)
               for i, m in cache["margins"].items())
    # cross-fitted (2 folds by default): each pair's loss is from the proxy that never saw it
    trained_on = {f: set((tmp_path / "two" / "proxy" / f"fold{f}" / "train_ids.txt")
                         .read_text().split()) for f in (0, 1)}
    assert trained_on[0] | trained_on[1] == set(losses) and not trained_on[0] & trained_on[1]
    assert all(pair not in trained_on[cache["source"][pair]] for pair in losses)
    assert cache["folds"] == 2 and 0 <= cache["accuracy_out_of_sample"] <= 1
    for f in (0, 1):
        assert json.loads((tmp_path / "two" / "proxy" / f"fold{f}" / "final" /
                           "reward_config.json").read_text())["mode"] == "text_only"
    train(two, resume=False)
    log = metrics(tmp_path / "two")
    assert 0 < log[-1]["weight/mean"] < 1 and "weight/p90" in log[-1]

    # the same proxy's verdicts, group-balanced: fixed weights 0.5 / share per group
    balanced = config(tiny_vlm_dir, tiny_pairs, tmp_path / "balanced", **{
        "shortcut.proxy": "cross_fit", "shortcut.weighting": "group_balance",
        "shortcut.proxy_losses": str(tmp_path / "two" / "proxy_losses.json")})
    train(balanced, resume=False)
    share = sum(v > math.log(2) for v in losses.values()) / len(losses)
    assert 0 < share < 1     # the tiny proxy gets some pairs wrong: both groups are there
    for record in metrics(tmp_path / "balanced"):
        for group, weight in (("wrong", 0.5 / share), ("right", 0.5 / (1 - share))):
            mean = record[f"weight/mean_proxy_{group}"]
            assert mean != mean or mean == pytest.approx(weight, rel=1e-5), record
    with pytest.raises(ValueError, match="group_balance needs a text-only proxy"):
        config(tiny_vlm_dir, tiny_pairs, tmp_path / "x",
               **{"shortcut.weighting": "group_balance"})

    # the same proxies as a product of experts: the loss is -log sigmoid(margin + proxy's)
    poe = config(tiny_vlm_dir, tiny_pairs, tmp_path / "poe", **{
        "shortcut.proxy": "cross_fit", "shortcut.weighting": "poe",
        "shortcut.proxy_losses": str(tmp_path / "two" / "proxy_losses.json")})
    train(poe, resume=False)
    log = metrics(tmp_path / "poe")
    # its logged weights are its share of the BT gradient, sigmoid(-(m + t)) / sigmoid(-m)
    assert all(r["weight/mean"] != 1.0 and r["weight/mean"] > 0 and r["loss"] != r["bt_loss"]
               for r in log)

    # confidence regularization: the standard RM teaches, its margins cached and reused
    teacher = trained_runs["none"] / "final"
    conf = config(tiny_vlm_dir, tiny_pairs, tmp_path / "conf", **{
        "shortcut.proxy": "cross_fit", "shortcut.weighting": "conf_reg",
        "shortcut.proxy_losses": str(tmp_path / "two" / "proxy_losses.json"),
        "shortcut.teacher": str(teacher),
        "shortcut.teacher_margins": str(tmp_path / "conf" / "teacher_margins.json")})
    train(conf, resume=False)
    cached = json.loads((tmp_path / "conf" / "teacher_margins.json").read_text())
    pairs = load_pairs(tiny_pairs[("povid", "train")])
    model = RewardModel.load(teacher).eval()
    chosen, rejected = score_pairs(model, PairCollator(load_processor(teacher), "multimodal"),
                                   pairs)
    assert cached["margins"] == pytest.approx({p.id: float(c - r) for p, c, r in
                                               zip(pairs, chosen, rejected)}, abs=1e-5)
    log = metrics(tmp_path / "conf")
    assert all(r["loss"] != r["bt_loss"] and "weight/mean_sq" in r for r in log)
    stamp = (tmp_path / "conf" / "teacher_margins.json").stat().st_mtime_ns
    train(conf, resume=False)                                     # same teacher: reused
    assert (tmp_path / "conf" / "teacher_margins.json").stat().st_mtime_ns == stamp
    other = with_overrides(conf, {"shortcut.teacher": str(trained_runs["sfc_joint"] /
                                                          "final")})
    train(other, resume=False)                                    # another teacher: remade
    assert json.loads((tmp_path / "conf" / "teacher_margins.json").read_text())[
        "teacher"].endswith(str(trained_runs["sfc_joint"] / "final"))
    with pytest.raises(ValueError, match="conf_reg needs shortcut.teacher"):
        config(tiny_vlm_dir, tiny_pairs, tmp_path / "x", **{
            "shortcut.proxy": "cross_fit", "shortcut.weighting": "conf_reg",
            "shortcut.proxy_losses": "p.json"})

    joint = config(tiny_vlm_dir, tiny_pairs, tmp_path / "joint",
                   **{"shortcut.proxy": "joint", "shortcut.weighting": "sfc"})
    train(joint, resume=False)
    log = metrics(tmp_path / "joint")
    assert "proxy_loss" in log[-1] and 0 < log[-1]["weight/mean"] < 1


def test_train_proxy_then_train_through_the_cli(tiny_vlm_dir, tiny_pairs, tmp_path):
    out = tmp_path / "run"
    path = tmp_path / "two_stage.yaml"
    path.write_text(yaml.safe_dump(config(tiny_vlm_dir, tiny_pairs, out, **{
        "shortcut.proxy": "cross_fit", "shortcut.weighting": "sfc",
        "shortcut.proxy_losses": str(out / "proxy_losses.json")}).model_dump(mode="json")))
    runner = CliRunner()
    result = runner.invoke(app, ["train-proxy", str(path)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    cache = json.loads((out / "proxy_losses.json").read_text())
    assert cache["mode"] == "text_only" and len(cache["losses"]) == 24
    assert f"proxy accuracy on its training data: {cache['accuracy']:.4f}" in result.output
    result = runner.invoke(app, ["train", str(path), "seed=1", "--no-resume"],
                           catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert json.loads((out / "train_config.json").read_text())["seed"] == 1   # the override
    log = metrics(out)
    assert [r["step"] for r in log] == [1, 2] and 0 < log[-1]["weight/mean"] < 1


def test_saved_model_scores_the_same_without_mmrm(tiny_vlm_dir, tiny_pairs, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    train(config(tiny_vlm_dir, tiny_pairs, tmp_path / "run"), resume=False)
    final = tmp_path / "run" / "final"
    [pair] = load_pairs(tiny_pairs[("rlhfv", "test")])[:1]
    script = Path(__file__).resolve().parents[2] / "examples" / "score_without_mmrm.py"
    out = subprocess.run([sys.executable, str(script), str(final), str(pair.image_file),
                          pair.prompt, pair.chosen], capture_output=True, text=True, check=True)
    reward = json.loads(out.stdout.strip().splitlines()[-1])["reward"]
    processor = load_processor(final)
    set_right_padding(processor)
    chosen, _ = score_pairs(RewardModel.load(final), PairCollator(processor), [pair])
    assert reward == pytest.approx(chosen.item(), abs=1e-5)


def test_collator_preprocesses_each_batchs_images_once(tiny_vlm_dir, tiny_pairs):
    processor = load_processor(tiny_vlm_dir)
    inner, calls = processor.image_processor, []

    class Counting:
        def __call__(self, images, *args, **kwargs):
            calls.append(len(images))
            return inner(images, *args, **kwargs)

        def __getattr__(self, name):
            return getattr(inner, name)

    processor.image_processor = Counting()
    batch = PairCollator(processor)(load_pairs(tiny_pairs[("povid", "train")])[:3])
    assert calls == [3] and batch["pixel_values"].shape[0] == 3
    assert processor.image_processor.__class__ is Counting      # restored after the batch


def test_loader_workers_give_the_same_run(tiny_vlm_dir, tiny_pairs, tmp_path):
    results = [train(config(tiny_vlm_dir, tiny_pairs, tmp_path / f"w{n}",
                            dataloader_num_workers=n), resume=False) for n in (0, 1)]
    logs = [[r["loss"] for r in metrics(tmp_path / f"w{n}")] for n in (0, 1)]
    assert logs[0] == logs[1]
    assert results[0]["eval/povid/accuracy"] == results[1]["eval/povid/accuracy"]


def test_encoding_cache_keeps_what_its_budget_allows_and_gives_the_same_run(
        tiny_vlm_dir, tiny_pairs, tmp_path):
    processor = load_processor(tiny_vlm_dir)
    set_right_padding(processor)
    pairs = load_pairs(tiny_pairs[("povid", "train")])[:6]
    one = PairCollator(processor, share_prompt=True, cache_mib=64)
    one(pairs[:1])
    pair_bytes = one.cache.bytes
    small = PairCollator(processor, share_prompt=True, cache_mib=2.5 * pair_bytes / 2**20)
    small(pairs)
    assert len(small.cache.entries) == 3          # stops once over budget
    assert small.cache.get(pairs[:3]) is not None and small.cache.get(pairs[2:4]) is None
    assert PairCollator(processor, cache_mib=0).cache is None
    # 24 pairs in batches of 4 for 14 steps: three epochs, the later two from the cache
    runs = {mib: config(tiny_vlm_dir, tiny_pairs, tmp_path / f"c{mib}", max_steps=14,
                        encode_cache_mib=mib) for mib in (0, 64)}
    results = {mib: train(c, resume=False) for mib, c in runs.items()}
    logs = {mib: [r["loss"] for r in metrics(tmp_path / f"c{mib}")] for mib in runs}
    assert len(logs[0]) == 14 and logs[0] == logs[64]
    assert results[0]["eval/povid/accuracy"] == results[64]["eval/povid/accuracy"]


def test_encoding_cache_is_kept_only_where_pairs_are_read_again():
    def budget(pairs=24, **changes):
        raw = {"model": "m", "output_dir": "o", "data": {"train": ["t.jsonl"]},
               "per_device_batch_size": 4, "encode_cache_mib": 64, **changes}
        return encode_cache_budget(TrainConfig.model_validate(raw), pairs)

    # 24 pairs in batches of 4: 6 steps per epoch
    assert budget(epochs=1) == 0 and budget(epochs=0.5) == 0
    assert budget(epochs=2) == 64 and budget(epochs=1.2) == 64
    assert budget(max_steps=6) == 0 and budget(max_steps=7) == 64
    # 2 batches per step: 3 steps per epoch
    assert budget(max_steps=3, gradient_accumulation_steps=2) == 0
    assert budget(max_steps=4, gradient_accumulation_steps=2) == 64
    assert budget(epochs=3, encode_cache_mib=0) == 0


def test_a_proxy_trains_the_same_without_what_only_a_reward_model_needs(tiny_vlm_dir,
                                                                       tiny_pairs, tmp_path):
    """The proxy stage skips the reward statistics and end-of-run tests (only a reward model
    needs them): its losses step by step and its weights are those of the run with them."""
    from mmrm.proxy import proxy_config

    base = config(tiny_vlm_dir, tiny_pairs, tmp_path / "p", max_steps=None, epochs=1,
                  **{"shortcut.proxy": "cross_fit", "shortcut.weighting": "sfc",
                     "shortcut.proxy_losses": str(tmp_path / "p.json")})
    lean = proxy_config(base, fold=0)
    assert lean.calibration_pairs == 0 and lean.data.eval == {}
    assert (lean.epochs, lean.max_steps, lean.data.holdout_fold) == (1, None, 0)
    full = with_overrides(lean, {"calibration_pairs": 1000, "data.eval": base.data.eval,
                                 "output_dir": str(tmp_path / "full")})
    train(lean, resume=False)
    train(full, resume=False)
    lean_out, full_out = Path(lean.output_dir), Path(full.output_dir)
    assert [r["loss"] for r in metrics(lean_out)] == [r["loss"] for r in metrics(full_out)]
    assert not changed_tensors(lean_out / "final", full_out / "final")[0]
