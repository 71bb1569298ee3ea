"""The training stages: the cross-fitted text-only proxies of each environment (``proxy``)
and one reward model per (environment, variant) (``train``), on this machine or through
``accelerate launch`` on ``model.processes`` GPUs."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from mmrm.config import with_overrides
from mmrm.lineage import stage_run
from mmrm.model_registry import register_reward_model
from mmrm.pipeline import say, write_json
from mmrm.pipeline.params import PipelineParams, proxy_run_config, train_config


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

    Metric names are the same for every variant (``eval/<env>/accuracy``, ``iid_mean``,
    ``ood_mean``, ``weight/...``), so MLflow's compare view lines them up.
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
        summary = id_ood(result, env, params.test_columns)
        # ID / OOD again under names that sort first in MLflow's compare view
        tracker.log_metrics({**summary, "ID": summary["iid_mean"], "OOD": summary["ood_mean"]})
        if params.tracking.enabled:
            register_reward_model(Path(config.output_dir) / "final",
                                  params.tracking.registered_model,
                                  {"environment": env, "variant": variant, **summary})
    return {**result, **summary}


def id_ood(result: dict, env: str, environments: list[str]) -> dict[str, float]:
    """``iid_mean`` (accuracy on the training environment's test split) and ``ood_mean``
    (mean accuracy on the others) from a run's ``eval/<env>/accuracy`` results."""
    ood = [result[f"eval/{e}/accuracy"] for e in environments if e != env]
    return {"iid_mean": result[f"eval/{env}/accuracy"],
            "ood_mean": statistics.mean(ood) if ood else float("nan")}


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
