"""Prefect flows over the pipeline's stage registry (``mmrm.pipeline.registry``): the same
chain as ``dvc repro``, one task per stage run, with retries where things can be flaky, and
the matrix as a table artifact. ``flows/serve.py`` serves them as deployments:

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

from mmrm.pipeline.params import PipelineParams, load_params
from mmrm.pipeline.registry import STAGES, Stage, instances, run_in_order, upstream


def stage_task(stage: Stage):
    """A Prefect task running one registered stage (uncached: every stage writes files, so a
    cached result is not a result), named ``stage[arguments]``; flaky engines get retries."""

    def run(params: PipelineParams, arguments: dict, label: str) -> dict:
        started = time.time()
        result = stage.run(params, **arguments)
        if stage.name == "evaluate":
            publish_matrix(result["matrix"])
            return {"metrics": result["metrics"], "champion": result["champion"]}
        if stage.name == "train":    # when it ran: the Ray test sees trainings overlap
            return {**result, "started": started, "finished": time.time()}
        return result

    return prefect_task(run, name=stage.name, task_run_name="{label}", cache_policy=NO_CACHE,
                        retries=stage.retries, retry_delay_seconds=10 if stage.retries else 0)


TASKS = {stage.name: stage_task(stage) for stage in STAGES}


def label(stage: Stage, arguments: dict) -> str:
    return f"{stage.name}[{'/'.join(arguments.values())}]" if arguments else stage.name


def publish_matrix(matrix) -> None:
    """The matrix as a Prefect table artifact and a markdown summary."""
    create_table_artifact(
        key="cross-distribution-matrix",
        table=[{"trained on": row, **{col: round(acc, 4) for col, acc in cells.items()},
                **{k: round(v, 4) for k, v in matrix.row_summary(row).items()}}
               for row, cells in matrix.accuracy.items()],
        description="Pairwise accuracy: rows trained on, columns tested on (ID = own "
                    "environment, OOD = mean of the others).")
    create_markdown_artifact(key="matrix-summary", markdown=matrix.to_markdown())


def resolve_params(params_file: str, overrides: dict[str, Any] | None) -> PipelineParams:
    """``params.yaml`` with ``overrides`` (dotted keys) applied, validated: the same
    :func:`mmrm.pipeline.params.load_params` as ``mmrm stage`` and DVC."""
    return load_params(params_file, overrides or {})


@flow(name="mmrm-pipeline", log_prints=True)
def pipeline_flow(params_file: str = "params.yaml", overrides: dict[str, Any] | None = None,
                  ray: bool = False, ray_address: str | None = None,
                  ray_cpus: int | None = None) -> dict:
    """The whole chain: benchmark -> convert -> base -> proxy -> train -> evaluate -> score.

    Args:
        params_file: pipeline params YAML, relative to the serving process's directory.
        overrides: dotted keys over it, e.g. ``{"train.optim.lr": 0.002, "variants": ["none"]}``.
        ray: run the stages as tasks on a Ray cluster (prefect-ray), independent ones at the
            same time (the proxies, the train matrix); sequential by default.
        ray_address: the cluster to join (default: a local one on 127.0.0.1).
        ray_cpus: CPUs of the local cluster (default: all).
    """
    from prefect.states import Failed

    from mmrm.tracking.runs import PARENT_ENV, pipeline_run

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
    logger.info("champion %s: ID %.3f, OOD %.3f", champion["champion"], champion["ID"],
                champion["OOD"])
    for variant, values in done["evaluated"]["metrics"].items():
        logger.info("%s: %s", variant, ", ".join(f"{k} {v:.3f}" for k, v in values.items()))
    return {"metrics": done["evaluated"]["metrics"], "champion": champion,
            "scores": done["scored"], "trained": done["trained"]}


def _in_order(params: PipelineParams) -> dict:
    """The registry's stages one after the other, in this process."""
    return _done(run_in_order(params, lambda stage, arguments: TASKS[stage.name](
        params, arguments, label(stage, arguments))))


def _done(results: dict[str, list]) -> dict:
    return {"trained": results["train"], "evaluated": results["evaluate"][0],
            "scored": results["score"][0]}


def _on_ray(params: PipelineParams, address: str | None, cpus: int | None) -> dict:
    """The stages as Ray tasks: what does not depend on each other runs at the same time."""
    import ray
    from prefect_ray.task_runners import RayTaskRunner

    from mmrm.cluster import start_ray

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
    """Every run of every stage submitted at once, each waiting for the runs it reads
    (:func:`mmrm.pipeline.registry.upstream`)."""
    from prefect_ray.context import remote_options

    futures: dict[tuple, object] = {}
    for stage in STAGES:
        if stage.reuse is not None and stage.reuse(params):
            continue
        # a training task asks Ray for the GPUs its profile trains on (none on the CPU)
        gpus = params.model.processes if stage.name == "train" and params.model.base else 0
        for arguments in instances(params, stage):
            waits = [futures[(s.name, tuple(a.items()))] for s, a in
                     upstream(stage, arguments, params) if (s.name, tuple(a.items())) in futures]
            with remote_options(num_cpus=1, num_gpus=gpus):
                futures[(stage.name, tuple(arguments.items()))] = TASKS[stage.name].submit(
                    params, arguments, label(stage, arguments), wait_for=waits)
    results = {}
    for (name, _), future in futures.items():
        results.setdefault(name, []).append(future.result())
    return _done(results)


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
