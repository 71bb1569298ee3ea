"""The training stages: the cross-fitted text-only proxies of each environment (``proxy``),
one reward model per (environment, variant) (``train``), on this machine or through
``accelerate launch`` on ``model.processes`` GPUs, and the derived variants built from the
standard RM of the same environment after them (``derive``: conf_reg, whose teacher it is,
and ``interpolated``, its weights averaged with a shortcut-aware RM's)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from mmrm.config import with_overrides
from mmrm.tracking.runs import stage_run
from mmrm.tracking.registry import register_reward_model
from mmrm.pipeline import say, write_json
from mmrm.pipeline.params import (INTERPOLATED, STANDARD, PipelineParams, proxy_run_config,
                                  train_config)


def train_proxy(params: PipelineParams, env: str) -> dict:
    """The text-only proxies of ``env`` (cross-fitted) and their cached margins and losses:
    the weights of the cross_fit variants, the proxy statistics of the standard one."""
    from mmrm.proxy import proxy_dirs, train_text_proxy

    config = proxy_run_config(params, env)
    with stage_run(params, f"proxy/{env}") as tracker:
        tracker.log_dataset(params.pairs(env, "train"), f"{env}/train", "training")
        cache = train_text_proxy(config, tracker, log=say)
        tracker.log_metrics({"proxy/train_accuracy": cache["accuracy"]})
        tracker.set_tags({"mmrm.environment": env,
                          "mmrm.model_dir": str(proxy_dirs(config)[0])})
    return {"accuracy": cache["accuracy"]}


def train_variant(params: PipelineParams, env: str, variant: str) -> dict:
    """One reward model: train on ``env``, evaluate on every environment's test split.

    Metric names are the same for every variant (``eval/<env>/accuracy``, ``ID``, ``OOD``,
    ``weight/...``), so MLflow's compare view lines them up.
    """
    from mmrm.train import train

    if params.model.processes > 1 and "LOCAL_RANK" not in os.environ:
        return launch_distributed(params, "train", env, variant)
    if int(os.environ.get("RANK", "0")) != 0:      # one process of several: rank 0 logs
        params = with_overrides(params, {"tracking.enabled": False})
    config = train_config(params, env, variant)
    train_file = Path(config.data.train[0])
    with stage_run(params, f"train/{env}/{variant}") as tracker:
        tracker.set_tags({"mmrm.environment": env, "mmrm.variant": variant,
                          "mmrm.model_dir": str(Path(config.output_dir) / "final")})
        tracker.log_dataset(train_file, f"{env}/{train_file.stem}", "training")
        for e in params.test_columns:
            tracker.log_dataset(params.pairs(e, "test"), f"{e}/test", "evaluation")
        tracker.log_artifact(write_json(Path(config.output_dir) / "resolved_config.json",
                                        config.model_dump(mode="json")))
        result = train(config, tracker, log=say, resume=False)
        summary = run_id_ood(result, env, params.test_columns)
        tracker.log_metrics(summary)         # ID / OOD: names that sort first in MLflow
        if params.tracking.enabled:
            register_reward_model(Path(config.output_dir) / "final",
                                  params.tracking.registered_model,
                                  {"environment": env, "variant": variant, **summary})
    return {**result, **summary}


def derive_variant(params: PipelineParams, env: str, variant: str) -> dict:
    """A derived variant of ``env``: ``interpolated`` (:func:`interpolate_variant`), or a run
    config taught by the standard RM (conf_reg), trained like any variant."""
    if variant == INTERPOLATED:
        return interpolate_variant(params, env)
    return train_variant(params, env, variant)


def interpolate_variant(params: PipelineParams, env: str) -> dict:
    """The standard RM of ``env`` averaged with a shortcut-aware one, the partner and alpha
    chosen on ``env``'s validation pairs by :func:`mmrm.interpolate.choose` (the accuracy
    where the cross-fitted proxies are wrong, within ``interpolation.tolerance`` of the
    standard RM's validation accuracy). Saved as an ordinary reward model in
    ``final/``, with every candidate's numbers in ``selection.json``."""
    from mmrm.data import load_pairs
    from mmrm.interpolate import Interpolation, choose, save_interpolated

    out = params.model_dir(env, INTERPOLATED)
    standard = params.model_dir(env, STANDARD) / "final"
    table = interpolation_candidates(params, env)
    chosen = choose(table, table[0]["val_accuracy"], params.interpolation.tolerance)
    partner = chosen["partner"] if chosen["partner"] != STANDARD \
        else params.interpolation_partners[0]
    say(f"interpolate {env}: {chosen['partner']} at alpha {chosen['alpha']}")
    with stage_run(params, f"derive/{env}/{INTERPOLATED}") as tracker:
        tracker.set_tags({"mmrm.environment": env, "mmrm.variant": INTERPOLATED,
                          "mmrm.model_dir": str(out / "final")})
        tracker.log_dataset(params.pairs(env, "val"), f"{env}/val", "validation")
        config = train_config(params, env, STANDARD)
        calibration = load_pairs(config.data.train[0])[:config.calibration_pairs]
        save_interpolated(Interpolation(standard, params.model_dir(env, partner) / "final"),
                          chosen["alpha"], out / "final", calibration,
                          {"partner": chosen["partner"], "rule": "mmrm.interpolate.choose"})
        write_json(out / "selection.json", {"chosen": chosen, "candidates": table})
        tracker.log_params({"interpolation.partner": chosen["partner"],
                            "interpolation.alpha": chosen["alpha"]})
        tracker.log_metrics({"val/accuracy": chosen["val_accuracy"],
                             "val/proxy_wrong_accuracy": chosen["val_proxy_wrong_accuracy"]})
        tracker.log_artifact(out / "selection.json")
        result = evaluate_saved(out / "final", params)
        summary = run_id_ood(result, env, params.test_columns)
        tracker.log_metrics({**result, **summary})
        write_json(out / "result.json", result)
        if params.tracking.enabled:
            register_reward_model(out / "final", params.tracking.registered_model,
                                  {"environment": env, "variant": INTERPOLATED, **summary})
    return {**result, **summary, "partner": chosen["partner"], "alpha": chosen["alpha"]}


def interpolation_candidates(params: PipelineParams, env: str) -> list[dict]:
    """Every candidate of the interpolation rule on ``env``'s validation pairs: the standard
    RM itself (alpha 0, first), then each partner at each of ``interpolation.alphas``, with
    its validation accuracy and its accuracy where the text-only proxies are wrong."""
    import torch

    from mmrm.data import PairCollator, load_pairs
    from mmrm.evaluate.diagnosis import proxy_margins
    from mmrm.evaluate.metrics import pairwise_accuracy
    from mmrm.inference import score_pairs
    from mmrm.interpolate import Interpolation
    from mmrm.model import load_processor

    standard = params.model_dir(env, STANDARD) / "final"
    config = train_config(params, env, STANDARD)
    val = load_pairs(params.pairs(env, "val"))
    proxies = params.proxies(env)
    if not proxies:
        raise ValueError(f"{params.proxy_dir(env)}: no proxies: the interpolation rule needs "
                         f"them to find the validation pairs text alone gets wrong")
    wrong = proxy_margins(proxies, val) <= 0
    say(f"interpolate {env}: {len(val)} validation pairs, {int(wrong.sum())} of them wrong "
        f"for the text-only proxies")
    processor = load_processor(standard)
    table = []

    def measure(model, partner: str, alpha: float) -> None:
        collator = PairCollator(processor, config.mode, config.data.max_length,
                                share_prompt=model.shares_prompt)
        chosen, rejected = score_pairs(model, collator, val, config.eval_batch_size)
        table.append({"partner": partner, "alpha": alpha,
                      "val_accuracy": pairwise_accuracy(chosen, rejected),
                      "val_proxy_wrong_accuracy": pairwise_accuracy(chosen[wrong],
                                                                    rejected[wrong])
                      if bool(wrong.any()) else float("nan")})
        say(f"  {partner} alpha {alpha:.2f}: val {table[-1]['val_accuracy']:.4f}, where the "
            f"proxy is wrong {table[-1]['val_proxy_wrong_accuracy']:.4f}")

    with torch.no_grad():
        for partner in params.interpolation_partners:
            mix = Interpolation(standard, params.model_dir(env, partner) / "final")
            if not table:
                measure(mix.at(0.0), STANDARD, 0.0)
            for alpha in (a for a in params.interpolation.alphas if a > 0):
                measure(mix.at(alpha), partner, alpha)
    return table


def evaluate_saved(model_dir: Path, params: PipelineParams) -> dict[str, float]:
    """``eval/<env>/accuracy`` of a saved reward model on every test column (what a
    training run reports of itself)."""
    from mmrm.data import load_pairs
    from mmrm.evaluate.metrics import pairwise_accuracy
    from mmrm.inference import load_reward_model, score_pairs

    model, collator = load_reward_model(model_dir)
    return {f"eval/{e}/accuracy": pairwise_accuracy(*score_pairs(
        model, collator, load_pairs(params.pairs(e, "test")))) for e in params.test_columns}


def run_id_ood(result: dict, env: str, environments: list[str]) -> dict[str, float]:
    """The :func:`mmrm.evaluate.matrix.id_ood` of a run's ``eval/<env>/accuracy`` results."""
    from mmrm.evaluate.matrix import id_ood

    return id_ood({e: result[f"eval/{e}/accuracy"] for e in environments}, env)


def launch_command(params: PipelineParams, stage: str, env: str, variant: str,
                   params_file: Path) -> list[str]:
    """``accelerate launch`` of one stage over ``model.processes`` processes."""
    command = [sys.executable, "-m", "accelerate.commands.launch",
               "--num_processes", str(params.model.processes)]
    if params.model.accelerate_config:
        command += ["--config_file", params.model.accelerate_config]
    return command + ["-m", "mmrm", "stage", stage, "--env", env, "--variant", variant,
                      "--params", str(params_file)]


def launch_distributed(params: PipelineParams, stage: str, env: str, variant: str) -> dict:
    """Run a training stage on ``model.processes`` GPUs through accelerate (the same stage
    function runs in every process; rank 0 tracks and saves); its result from the saved run."""
    import yaml

    params_file = Path(params.paths.runs) / "launch" / f"{env}-{variant}.yaml"
    params_file.parent.mkdir(parents=True, exist_ok=True)
    params_file.write_text(yaml.safe_dump(params.model_dump(mode="json")))
    command = launch_command(params, stage, env, variant, params_file)
    say("launching: " + " ".join(command))
    subprocess.run(command, check=True)
    return json.loads((params.model_dir(env, variant) / "result.json").read_text())
