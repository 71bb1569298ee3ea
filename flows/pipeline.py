"""Prefect flows over the pipeline's stage functions (``mmrm.pipeline``): the same chain as
``dvc repro``, as tasks with retries where things can be flaky, and the matrix as a table
artifact. ``flows/serve.py`` serves them as deployments:

    prefect deployment run 'mmrm-pipeline/builtin'
    prefect deployment run 'mmrm-score/file' --param model=... --param input=... --param output=...
"""

from __future__ import annotations

import os
import time
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


@task(name="benchmark", task_run_name="benchmark")
def benchmark_task(params: PipelineParams) -> dict:
    return stages.make_benchmark(params)


@task(name="convert", task_run_name="convert[{env}]")
def convert_task(params: PipelineParams, env: str) -> dict:
    return stages.convert_environment(params, env)


@task(name="convert-real", task_run_name="convert-real[{name}]")
def convert_real_task(params: PipelineParams, name: str) -> dict:
    return stages.convert_real(params, name)


@task(name="split", task_run_name="split[{name}]")
def split_task(params: PipelineParams, name: str) -> dict:
    return stages.split_real(params, name)


@task(name="base", task_run_name="base")
def base_task(params: PipelineParams) -> dict:
    if stages.base_is_built(params):     # built once for these settings, like DVC's cache
        return {"cached": params.paths.base}
    return stages.pretrain_base(params)


@task(name="proxy", task_run_name="proxy[{env}]")
def proxy_task(params: PipelineParams, env: str) -> dict:
    return stages.train_proxy(params, env)


@task(name="train", task_run_name="train[{env}/{variant}]")
def train_task(params: PipelineParams, env: str, variant: str) -> dict:
    started = time.time()
    result = stages.train_variant(params, env, variant)
    return {**result, "started": started, "finished": time.time()}


@task(name="evaluate", task_run_name="evaluate")
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
@task(name="score", task_run_name="score", retries=2, retry_delay_seconds=10)
def score_task(params: PipelineParams) -> dict:
    return stages.score_sample(params)


def resolve_params(params_file: str, overrides: dict[str, Any] | None) -> PipelineParams:
    """``params.yaml`` with ``overrides`` (dotted keys) applied, validated: the same
    :func:`mmrm.pipeline.load_params` as ``mmrm stage`` and DVC."""
    return stages.load_params(params_file, overrides or {})


@flow(name="mmrm-pipeline", log_prints=True)
def pipeline_flow(params_file: str = "params.yaml", overrides: dict[str, Any] | None = None,
                  ray: bool = False, ray_address: str | None = None,
                  ray_cpus: int | None = None) -> dict:
    """The whole chain: benchmark -> convert -> base -> proxy -> train -> evaluate -> score.

    Args:
        params_file: pipeline params YAML, relative to the serving process's directory.
        overrides: dotted keys over it, e.g. ``{"train.lr": 0.002, "variants": ["none"]}``.
        ray: run the stages as tasks on a Ray cluster (prefect-ray), independent ones at the
            same time (the proxies, the train matrix); sequential by default.
        ray_address: the cluster to join (default: a local one on 127.0.0.1).
        ray_cpus: CPUs of the local cluster (default: all).
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
        if ray or ray_address:
            done = _on_ray(params, ray_address, ray_cpus)
        else:
            done = _in_order(params)
    finally:
        os.environ.pop(PARENT_ENV, None)
    champion = done["evaluated"]["champion"]
    logger.info("champion %s: ID %.3f, OOD %.3f", champion["champion"], champion["id"],
                champion["ood"])
    for variant, values in done["evaluated"]["metrics"].items():
        logger.info("%s: %s", variant, ", ".join(f"{k} {v:.3f}" for k, v in values.items()))
    return {"metrics": done["evaluated"]["metrics"], "champion": champion,
            "scores": done["scored"], "trained": done["trained"]}


def _in_order(params: PipelineParams) -> dict:
    """The stages one after the other, in this process."""
    benchmark_task(params)
    for env in params.builtin:
        convert_task(params, env)
    for name in params.real_datasets:
        convert_real_task(params, name)
        split_task(params, name)
    base_task(params)
    trained = []
    for env in params.environments:
        proxy_task(params, env)       # weights sfc_two_stage; statistics for none
        trained += [train_task(params, env, v.value) for v in params.variants]
    return {"trained": trained, "evaluated": evaluate_task(params),
            "scored": score_task(params)}


def _on_ray(params: PipelineParams, address: str | None, cpus: int | None) -> dict:
    """The stages as Ray tasks: what does not depend on each other runs at the same time."""
    import ray
    from prefect_ray.task_runners import RayTaskRunner

    from mmrm.score import start_ray

    started = not ray.is_initialized() and address is None
    if started:                 # a local cluster listens on loopback only, as mmrm score's
        start_ray(None, **({"num_cpus": cpus} if cpus else {}))
    try:
        return _submit_all.with_options(task_runner=RayTaskRunner(address=address))(params)
    finally:
        if started:
            ray.shutdown()


@flow(name="mmrm-pipeline-on-ray", log_prints=True)
def _submit_all(params: PipelineParams) -> dict:
    from prefect_ray.context import remote_options

    bench = benchmark_task.submit(params)
    data = [convert_task.submit(params, env, wait_for=[bench]) for env in params.builtin]
    for name in params.real_datasets:
        data.append(split_task.submit(params, name,
                                      wait_for=[convert_real_task.submit(params, name)]))
    base = base_task.submit(params, wait_for=[bench])
    trains = []
    for env in params.environments:
        proxy = proxy_task.submit(params, env, wait_for=[*data, base])
        # a training task asks Ray for the GPUs its profile trains on (none on the CPU)
        gpus = params.model.processes if params.model.base else 0
        with remote_options(num_cpus=1, num_gpus=gpus):
            trains += [train_task.submit(params, env, v.value, wait_for=[proxy])
                       for v in params.variants]
    evaluated = evaluate_task.submit(params, wait_for=trains)
    return {"trained": [t.result() for t in trains], "evaluated": evaluated.result(),
            "scored": score_task.submit(params, wait_for=[evaluated]).result()}


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
