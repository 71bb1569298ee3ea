"""The MLflow runs of the pipeline (an adapter beside :mod:`mmrm.pipeline`; the core logs
through :mod:`mmrm.tracking` only); the model registry and the champion alias are
:mod:`mmrm.tracking.registry`.

Layout: one parent run per pipeline run (found by a key of the params and the git commit, or
given as ``MMRM_PARENT_RUN_ID``), one child run per stage (:func:`stage_run`). The store is
``sqlite:///mlflow.db`` in the working directory unless ``MLFLOW_TRACKING_URI`` says otherwise;
artifacts go to ``mlartifacts/``.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from contextlib import contextmanager
from pathlib import Path

from mmrm.config import flatten
from mmrm.tracking.tracker import MLflowTracker, NoOpTracker, _short

PARENT_ENV = "MMRM_PARENT_RUN_ID"


def tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI``, else the project's sqlite store ``./mlflow.db``."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path('mlflow.db').resolve()}"


def check_tracking_server(uri: str, timeout: float = 5.0) -> None:
    """A tracking server (``http(s)://``) that answers within ``timeout`` seconds, or a
    one-line error at once: MLflow's own client retries a dead server for minutes."""
    if not uri.startswith(("http://", "https://")):
        return
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout):
            return
    except urllib.error.HTTPError:
        return                       # it answered (an old server without /health)
    except (OSError, ValueError) as err:
        raise ValueError(f"MLflow tracking server {uri} does not answer within {timeout:g} s "
                         f"({getattr(err, 'reason', err)}): start it (make mlflow-ui), point "
                         f"MLFLOW_TRACKING_URI elsewhere, or set tracking.enabled: false"
                         ) from None


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


#: MLflow 3's UI opens an experiment without this tag in its GenAI view.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


def _experiment_id(mlflow, name: str) -> str:
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        if not experiment.tags.get("mlflow.experimentKind"):
            for key, value in EXPERIMENT_KIND.items():
                mlflow.MlflowClient().set_experiment_tag(experiment.experiment_id, key, value)
        return experiment.experiment_id
    location = None
    if tracking_uri().startswith("sqlite:"):
        location = Path("mlartifacts").resolve().as_uri()
    return mlflow.create_experiment(name, artifact_location=location, tags=EXPERIMENT_KIND)


def pipeline_run(params, experiment_id: str | None = None) -> str:
    """The parent run of this pipeline run: ``MMRM_PARENT_RUN_ID`` if set, else the run whose
    key (params + git commit) matches, created on first use."""
    import mlflow

    if os.environ.get(PARENT_ENV):
        return os.environ[PARENT_ENV]
    mlflow.set_tracking_uri(tracking_uri())
    experiment_id = experiment_id or _experiment_id(mlflow, params.tracking.experiment)
    commit = git_commit()
    key = hashlib.sha256((params.model_dump_json() + commit).encode()).hexdigest()[:16]
    found = mlflow.search_runs([experiment_id], filter_string=f"tags.`mmrm.pipeline_key` = "
                               f"'{key}'", output_format="list", max_results=1)
    if found:
        return found[0].info.run_id
    run = mlflow.MlflowClient().create_run(experiment_id, run_name=f"pipeline-{key[:8]}", tags={
        "mmrm.pipeline_key": key, "mmrm.role": "pipeline", "mlflow.source.git.commit": commit})
    mlflow.MlflowClient().set_terminated(run.info.run_id)
    for name, value in flatten(params.model_dump(mode="json")).items():
        mlflow.MlflowClient().log_param(run.info.run_id, name, _short(value))
    return run.info.run_id


@contextmanager
def stage_run(params, stage: str):
    """An MLflow child run for one pipeline stage (a no-op tracker when tracking is off)."""
    if not params.tracking.enabled:
        yield NoOpTracker()
        return
    import mlflow
    from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

    check_tracking_server(tracking_uri())
    mlflow.set_tracking_uri(tracking_uri())
    mlflow.set_registry_uri(tracking_uri())
    experiment_id = _experiment_id(mlflow, params.tracking.experiment)
    parent = pipeline_run(params, experiment_id)
    tags = {MLFLOW_PARENT_RUN_ID: parent, "mmrm.stage": stage, "mmrm.role": "stage",
            "mlflow.source.git.commit": git_commit()}
    with mlflow.start_run(experiment_id=experiment_id, run_name=stage, tags=tags):
        yield MLflowTracker()


def active_run_id() -> str | None:
    """The id of the MLflow run in progress, if any (the stage that decides, say)."""
    import mlflow

    run = mlflow.active_run()
    return run.info.run_id if run else None
