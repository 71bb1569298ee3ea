"""The tracker interface the training, evaluation and pipeline code logs through, and its
two twins.

Code calls ``tracker.log_metrics(...)`` unconditionally; whether anything is recorded depends
on which tracker it was handed (``NoOpTracker`` in tests or with tracking off,
``MLflowTracker`` in the pipeline). Nothing here runs at import time.

MLflow layout of a pipeline run (:func:`stage_run`): one parent run per pipeline run (found
by a key of the params and the git commit, or given as ``MMRM_PARENT_RUN_ID``), one child run
per stage. The store is ``sqlite:///mlflow.db`` in the working directory unless
``MLFLOW_TRACKING_URI`` says otherwise; artifacts go to ``mlartifacts/``.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

PARENT_ENV = "MMRM_PARENT_RUN_ID"
CHAMPION = "champion"


class Tracker(Protocol):
    def log_params(self, params: dict[str, Any]) -> None: ...
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None: ...
    def set_tags(self, tags: dict[str, str]) -> None: ...
    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None: ...
    def log_dataset(self, path: str | Path, name: str, context: str) -> None: ...
    def log_reward_model(self, model_dir: str | Path, registered_name: str,
                         tags: dict[str, Any]) -> None: ...
    def set_champion(self, registered_name: str, model_dir: str) -> None: ...


class NoOpTracker:
    """Accepts everything, records nothing."""

    def log_params(self, params: dict[str, Any]) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        pass

    def set_tags(self, tags: dict[str, str]) -> None:
        pass

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        pass

    def log_dataset(self, path: str | Path, name: str, context: str) -> None:
        pass

    def log_reward_model(self, model_dir: str | Path, registered_name: str,
                         tags: dict[str, Any]) -> None:
        pass

    def set_champion(self, registered_name: str, model_dir: str) -> None:
        pass


class MLflowTracker:
    """Logs to the active MLflow run (the caller starts and ends runs)."""

    def __init__(self):
        import mlflow

        self._mlflow = mlflow

    def log_params(self, params: dict[str, Any]) -> None:
        self._mlflow.log_params({k: _short(v) for k, v in params.items()})

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self._mlflow.log_metrics({k.replace("@", "_"): float(v) for k, v in metrics.items()},
                                 step=step)

    def set_tags(self, tags: dict[str, str]) -> None:
        self._mlflow.set_tags(tags)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        path = Path(path)
        if path.is_dir():
            self._mlflow.log_artifacts(str(path), artifact_path)
        else:
            self._mlflow.log_artifact(str(path), artifact_path)

    def log_dataset(self, path: str | Path, name: str, context: str) -> None:
        """Log a data file as a run input; its digest is the md5 DVC keys the file's content
        by, so a run points at the exact DVC-tracked version of its data."""
        from mlflow.data.dataset_source_registry import resolve_dataset_source
        from mlflow.data.meta_dataset import MetaDataset

        path = Path(path).resolve()
        dataset = MetaDataset(resolve_dataset_source(str(path)), name=name,
                              digest=file_md5(path))
        self._mlflow.log_input(dataset, context=context)

    def log_reward_model(self, model_dir: str | Path, registered_name: str,
                         tags: dict[str, Any]) -> None:
        """Log the saved RM (safetensors + configs) as an MLflow pyfunc model and register a
        new version of ``registered_name``, tagged with ``tags`` and the model directory."""
        import torch
        import transformers

        import mmrm.serving

        info = self._mlflow.pyfunc.log_model(     # a model from code: no pickled objects
            name="reward_model", python_model=mmrm.serving.__file__,
            artifacts={"reward_model": str(model_dir)}, signature=mmrm.serving.signature(),
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}",
                              f"transformers=={transformers.__version__}", "mmrm"],
            registered_model_name=registered_name)
        client = self._mlflow.MlflowClient()
        version = info.registered_model_version
        for key, value in {**tags, "model_dir": str(model_dir)}.items():
            client.set_model_version_tag(registered_name, str(version), f"mmrm.{key}",
                                         str(value))

    def set_champion(self, registered_name: str, model_dir: str) -> None:
        """Point the ``champion`` alias at the newest version registered from ``model_dir``."""
        client = self._mlflow.MlflowClient()
        versions = [v for v in client.search_model_versions(f"name='{registered_name}'")
                    if v.tags.get("mmrm.model_dir") == str(model_dir)]
        if not versions:
            raise ValueError(f"no version of {registered_name} was registered from {model_dir}")
        newest = max(versions, key=lambda v: int(v.version))
        client.set_registered_model_alias(registered_name, CHAMPION, newest.version)


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text[:500]


def flatten(config: dict, prefix: str = "") -> dict[str, Any]:
    """``{"optim": {"lr": 1}}`` -> ``{"optim.lr": 1}``: stable parameter names for trackers."""
    flat = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def file_md5(path: str | Path) -> str:
    """md5 of the file's bytes: the content hash DVC records for a file."""
    from mmrm.images import file_digest

    return file_digest(path, "md5")


def tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI``, else the project's sqlite store ``./mlflow.db``."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path('mlflow.db').resolve()}"


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _experiment_id(mlflow, name: str) -> str:
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    location = None
    if tracking_uri().startswith("sqlite:"):
        location = Path("mlartifacts").resolve().as_uri()
    return mlflow.create_experiment(name, artifact_location=location)


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

    mlflow.set_tracking_uri(tracking_uri())
    mlflow.set_registry_uri(tracking_uri())
    experiment_id = _experiment_id(mlflow, params.tracking.experiment)
    parent = pipeline_run(params, experiment_id)
    tags = {MLFLOW_PARENT_RUN_ID: parent, "mmrm.stage": stage, "mmrm.role": "stage",
            "mlflow.source.git.commit": git_commit()}
    with mlflow.start_run(experiment_id=experiment_id, run_name=stage, tags=tags):
        yield MLflowTracker()
