"""Prefect flows over the pipeline's stage functions (``mmrm.pipeline``): the same chain as
``dvc repro``, as tasks with retries where things can be flaky, and the matrix as a table
artifact. ``flows/serve.py`` serves them as deployments:

    prefect deployment run 'mmrm-pipeline/builtin'
    prefect deployment run 'mmrm-score/file' --param model=... --param input=... --param output=...
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect import task as prefect_task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from mmrm import pipeline as stages
from mmrm.pipeline import PipelineParams


def task(**kwargs):
    """Prefect's task, uncached: every stage writes files, so a cached result is not a result."""
    return prefect_task(cache_policy=NO_CACHE, **kwargs)


@task(name="benchmark")
def benchmark_task(params: PipelineParams) -> dict:
    return stages.make_benchmark(params)


@task(name="convert", task_run_name="convert[{env}]")
def convert_task(params: PipelineParams, env: str) -> dict:
    return stages.convert_environment(params, env)


@task(name="convert-real", task_run_name="convert-real[{name}]")
def convert_real_task(params: PipelineParams, name: str) -> dict:
    return stages.convert_real(params, name)


@task(name="base")
def base_task(params: PipelineParams) -> dict:
    if (Path(params.paths.base) / "config.json").exists():     # built once, like DVC's cache
        return {"cached": params.paths.base}
    return stages.pretrain_base(params)


@task(name="proxy", task_run_name="proxy[{env}]")
def proxy_task(params: PipelineParams, env: str) -> dict:
    return stages.train_proxy(params, env)


@task(name="train", task_run_name="train[{env}/{variant}]")
def train_task(params: PipelineParams, env: str, variant: str) -> dict:
    return stages.train_variant(params, env, variant)


@task(name="evaluate")
def evaluate_task(params: PipelineParams) -> dict:
    result = stages.evaluate(params)
    matrix = result["matrix"]
    create_table_artifact(
        key="cross-distribution-matrix",
        table=[{"trained on": row, **{col: round(acc, 4) for col, acc in cells.items()},
                **{k: round(v, 4) for k, v in matrix.row_summary(row).items()}}
               for row, cells in matrix.accuracy.items()],
        description="Pairwise accuracy: rows trained on, columns tested on (id = own "
                    "environment, ood = mean of the others).")
    create_markdown_artifact(key="matrix-summary", markdown=matrix.to_markdown())
    return {"metrics": result["metrics"], "champion": result["champion"]}


# Ray starts processes and talks over sockets: worth a retry before failing the run.
@task(name="score", retries=2, retry_delay_seconds=10)
def score_task(params: PipelineParams) -> dict:
    return stages.score_sample(params)


def resolve_params(params_file: str, overrides: dict[str, Any] | None) -> PipelineParams:
    """``params.yaml`` with ``overrides`` (dotted keys) applied, validated: the same
    :func:`mmrm.pipeline.load_params` as ``mmrm stage`` and DVC."""
    return stages.load_params(params_file, overrides or {})


@flow(name="mmrm-pipeline", log_prints=True)
def pipeline_flow(params_file: str = "params.yaml",
                  overrides: dict[str, Any] | None = None) -> dict:
    """The whole chain: benchmark -> convert -> base -> proxy -> train -> evaluate -> score.

    Args:
        params_file: pipeline params YAML, relative to the serving process's directory.
        overrides: dotted keys over it, e.g. ``{"train.lr": 0.002, "variants": ["none"]}``.
    """
    from prefect.states import Failed

    from mmrm.lineage import PARENT_ENV, pipeline_run

    logger = get_run_logger()
    try:
        params = resolve_params(params_file, overrides)
    except ValueError as err:           # the run's state says what is wrong, not only its log
        logger.error(str(err))
        return Failed(message=f"invalid parameters: {err}")
    if params.tracking.enabled:          # every stage's MLflow run goes under one parent
        os.environ[PARENT_ENV] = pipeline_run(params)
    try:
        benchmark_task(params)
        for env in params.environments:
            convert_task(params, env)
        for name in params.real_datasets:
            convert_real_task(params, name)
        base_task(params)
        for env in params.environments:
            proxy_task(params, env)   # weights sfc_two_stage; statistics for none
            for variant in params.variants:
                train_task(params, env, variant.value)
        evaluated = evaluate_task(params)
        scored = score_task(params)
    finally:
        os.environ.pop(PARENT_ENV, None)
    champion = evaluated["champion"]
    logger.info("champion %s: ID %.3f, OOD %.3f", champion["champion"], champion["id"],
                champion["ood"])
    for variant, values in evaluated["metrics"].items():
        logger.info("%s: %s", variant, ", ".join(f"{k} {v:.3f}" for k, v in values.items()))
    return {"metrics": evaluated["metrics"], "champion": champion, "scores": scored}


@flow(name="mmrm-score", log_prints=True)
def score_flow(model: str, input: str, output: str, workers: int = 1,
               batch_responses: int = 64, normalize: bool = False,
               on_error: str = "raise") -> dict:
    """Score an inference file with a saved RM on Ray (resumes a partial OUTPUT)."""
    from mmrm.score import ScoreConfig, score_file

    totals = score_file(ScoreConfig(model=model, input=input, output=output, workers=workers,
                                    batch_responses=batch_responses, normalize=normalize,
                                    on_error=on_error))
    return {k: v for k, v in totals.items() if k != "workers"}
