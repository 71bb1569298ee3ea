"""The MLflow side of the pipeline: its runs, the model registry and the champion alias (an
adapter beside :mod:`mmrm.pipeline`; the core logs through :mod:`mmrm.tracking` only).

Layout: one parent run per pipeline run (found by a key of the params and the git commit, or
given as ``MMRM_PARENT_RUN_ID``), one child run per stage (:func:`stage_run`). The store is
``sqlite:///mlflow.db`` in the working directory unless ``MLFLOW_TRACKING_URI`` says otherwise;
artifacts go to ``mlartifacts/``. Every trained reward model is registered as a version of
``mmrm-reward-model`` (a pyfunc from code, :mod:`mmrm.serving`, over its safetensors folder).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mmrm.tracking import MLflowTracker, NoOpTracker, _short, flatten

PARENT_ENV = "MMRM_PARENT_RUN_ID"
CHAMPION = "champion"
CANDIDATE = "candidate"
#: What the registry page says about the registered model.
DESCRIPTION = ("Multimodal reward models trained by mmrm (standard Bradley-Terry and "
               "shortcut-aware). Each version is a pyfunc over a saved reward model folder "
               "(HF backbone + value head): predict(prompt, img_path, response) -> reward. "
               "@champion is the best mean OOD accuracy on one evaluation; newer models that "
               "do not beat it are @candidate.")


def tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI``, else the project's sqlite store ``./mlflow.db``."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path('mlflow.db').resolve()}"


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

    mlflow.set_tracking_uri(tracking_uri())
    mlflow.set_registry_uri(tracking_uri())
    experiment_id = _experiment_id(mlflow, params.tracking.experiment)
    parent = pipeline_run(params, experiment_id)
    tags = {MLFLOW_PARENT_RUN_ID: parent, "mmrm.stage": stage, "mmrm.role": "stage",
            "mlflow.source.git.commit": git_commit()}
    with mlflow.start_run(experiment_id=experiment_id, run_name=stage, tags=tags):
        yield MLflowTracker()


def register_reward_model(model_dir: str | Path, registered_name: str,
                          tags: dict[str, Any]) -> None:
    """Log the saved RM (safetensors + configs) as an MLflow pyfunc model in the active run
    and register a new version of ``registered_name``, tagged with ``tags`` and the model
    directory."""
    import mlflow
    import torch
    import transformers

    import mmrm.serving

    info = mlflow.pyfunc.log_model(     # a model from code: no pickled objects
        name="reward_model", python_model=mmrm.serving.__file__,
        artifacts={"reward_model": str(model_dir)}, signature=mmrm.serving.signature(),
        pip_requirements=[f"torch=={torch.__version__.split('+')[0]}",
                          f"transformers=={transformers.__version__}", "mmrm"],
        registered_model_name=registered_name)
    client = mlflow.MlflowClient()
    version = info.registered_model_version
    for key, value in {**tags, "model_dir": str(Path(model_dir).resolve())}.items():
        client.set_model_version_tag(registered_name, str(version), f"mmrm.{key}", str(value))
    client.update_registered_model(registered_name, description=DESCRIPTION)
    summary = ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                        for k, v in tags.items())
    client.update_model_version(registered_name, str(version),
                                description=f"Trained by run {mlflow.active_run().info.run_id}"
                                            f" from {Path(model_dir).resolve()}: {summary}")


def active_run_id() -> str | None:
    """The id of the MLflow run in progress, if any (the stage that decides, say)."""
    import mlflow

    run = mlflow.active_run()
    return run.info.run_id if run else None


def evaluation_key(tests: dict[str, str | Path]) -> str:
    """What an OOD score was measured on: the test sets' names, content (md5) and sizes. Two
    scores compare only under the same key."""
    from mmrm.tracking import file_md5

    parts = [f"{name}:{file_md5(path)}:{sum(1 for _ in open(path))}"
             for name, path in sorted(tests.items())]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def promote(registered_name: str, model_dir: str | Path, ood: float, key: str,
            evaluate_run: str | None = None) -> dict[str, Any]:
    """The champion policy: the newest version registered from ``model_dir`` becomes
    ``@champion`` only if there is none, or it beats the current champion's mean OOD on the
    same evaluation (:func:`evaluation_key`); otherwise it becomes ``@candidate``. The scores,
    the key and the deciding run are recorded on the version; returns the decision."""
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient()
    version = _newest_version(client, registered_name, model_dir)
    for tag, value in {"mmrm.eval_key": key, "mmrm.ood_mean": f"{ood:.6f}",
                       "mmrm.evaluate_run": evaluate_run or ""}.items():
        client.set_model_version_tag(registered_name, version.version, tag, value)
    try:
        current = client.get_model_version_by_alias(registered_name, CHAMPION)
    except MlflowException:
        current = None
    decision = {"version": int(version.version), "ood_mean": ood, "eval_key": key,
                "champion_version": int(current.version) if current else None,
                "champion_ood_mean": float(current.tags.get("mmrm.ood_mean", "nan"))
                if current else None}
    if current is None:
        outcome, why = CHAMPION, "no champion before"
    elif current.version == version.version:
        outcome, why = CHAMPION, "already the champion"
    elif current.tags.get("mmrm.eval_key") != key:
        outcome, why = CANDIDATE, "the champion was evaluated on other test sets"
    elif ood > decision["champion_ood_mean"]:
        outcome, why = CHAMPION, "a higher mean OOD on the same evaluation"
    else:
        outcome, why = CANDIDATE, "no higher mean OOD than the champion on the same evaluation"
    client.set_registered_model_alias(registered_name, outcome, version.version)
    client.set_model_version_tag(registered_name, version.version, "mmrm.decision",
                                 f"{outcome}: {why}")
    return {**decision, "alias": outcome, "why": why}


def _newest_version(client, registered_name: str, model_dir: str | Path):
    versions = [v for v in client.search_model_versions(f"name='{registered_name}'")
                if v.tags.get("mmrm.model_dir") == str(Path(model_dir).resolve())]
    if not versions:
        raise ValueError(f"no version of {registered_name} was registered from {model_dir}")
    return max(versions, key=lambda v: int(v.version))
