"""The MLflow model registry of the pipeline: every trained reward model is registered as a
version of ``mmrm-reward-model`` (a pyfunc from code, :mod:`mmrm.tracking.pyfunc`, over its
safetensors folder), and the champion policy gives the best one the ``@champion`` alias."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

CHAMPION = "champion"
CANDIDATE = "candidate"
#: What the registry page says about the registered model.
DESCRIPTION = ("Multimodal reward models trained by mmrm (standard Bradley-Terry and "
               "shortcut-aware). Each version is a pyfunc over a saved reward model folder "
               "(HF backbone + value head): predict(prompt, img_path, response) -> reward. "
               "@champion is the best mean OOD accuracy on one evaluation; newer models that "
               "do not beat it are @candidate.")


def register_reward_model(model_dir: str | Path, registered_name: str,
                          tags: dict[str, Any]) -> None:
    """Log the saved RM (safetensors + configs) as an MLflow pyfunc model in the active run
    and register a new version of ``registered_name``, tagged with ``tags`` and the model
    directory."""
    import warnings

    import mlflow
    import torch
    import transformers

    import mmrm.tracking.pyfunc

    with warnings.catch_warnings():
        # the signature is given; an input example would make MLflow load the model and
        # score the example while logging it (its serving-input check), an image included
        warnings.filterwarnings("ignore", ".*An input example was not provided", UserWarning)
        info = mlflow.pyfunc.log_model(     # a model from code: no pickled objects
            name="reward_model", python_model=mmrm.tracking.pyfunc.__file__,
            artifacts={"reward_model": str(model_dir)}, signature=mmrm.tracking.pyfunc.signature(),
            # the server's settings, empty = the defaults; MLflow lets
            # load_model(model_config=) override only the keys logged here
            model_config=dict.fromkeys(mmrm.tracking.pyfunc.SERVER_SETTINGS, ""),
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


def evaluation_key(tests: dict[str, str | Path]) -> str:
    """What an OOD score was measured on: the test sets' names, content (md5) and sizes. Two
    scores compare only under the same key."""
    from mmrm.tracking.tracker import file_md5

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
