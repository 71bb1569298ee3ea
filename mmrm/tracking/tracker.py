"""The tracker interface that training, evaluation and the pipeline log through, and its two
twins; a leaf (nothing of mmrm above the core).

Code calls ``tracker.log_metrics(...)`` unconditionally; whether anything is recorded depends
on which tracker it was handed (:class:`NoOpTracker` in tests or with tracking off,
:class:`MLflowTracker` inside an MLflow run). Which runs exist, the model registry and the
champion alias are the pipeline's business (:mod:`mmrm.tracking.runs`). Nothing here runs at import
time.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, Protocol

from mmrm.config import flatten
from mmrm.images import file_digest


class Tracker(Protocol):
    def log_params(self, params: dict[str, Any]) -> None: ...
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None: ...
    def set_tags(self, tags: dict[str, str]) -> None: ...
    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None: ...
    def log_dataset(self, path: str | Path, name: str, context: str) -> None: ...


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
        with warnings.catch_warnings():
            # MLflow registers the same LocalArtifactDatasetSource for the "" and the "file"
            # scheme and warns that a local path matches both; either resolves it alike
            warnings.filterwarnings("ignore", "The specified dataset source can be "
                                    "interpreted in multiple ways", UserWarning)
            source = resolve_dataset_source(str(path))
        dataset = MetaDataset(source, name=name, digest=file_md5(path))
        self._mlflow.log_input(dataset, context=context)


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text[:500]


def file_md5(path: str | Path) -> str:
    """md5 of the file's bytes: the content hash DVC records for a file."""
    return file_digest(path, "md5")
