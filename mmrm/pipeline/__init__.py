"""The pipeline: its params (:mod:`~mmrm.pipeline.params`), its stages as plain functions (one
module per kind: :mod:`~mmrm.pipeline.data`, :mod:`~mmrm.pipeline.base`,
:mod:`~mmrm.pipeline.training`, :mod:`~mmrm.pipeline.evaluation`,
:mod:`~mmrm.pipeline.scoring`), and the one registry of those stages
(:mod:`~mmrm.pipeline.registry`) that the CLI's ``mmrm stage``, the Prefect flow and
``dvc.yaml`` follow::

    benchmark -> convert (per builtin source)        convert_real -> split (per released set)
              -> base -> proxy (per environment) -> train (environment x variant)
              -> evaluate (the matrix) -> score (a best-of-N sample on Ray)

Each stage reads :class:`~mmrm.pipeline.params.PipelineParams` (``params.yaml``) and the files
earlier stages wrote under ``paths``, records an MLflow child run through
:func:`mmrm.tracking.runs.stage_run` (a no-op when tracking is off) and prints its progress.
"""

from __future__ import annotations

import json
from pathlib import Path


def say(line: str) -> None:
    """A progress line of a stage: stdout, which ``dvc repro`` shows as it runs and the
    Prefect flow (``log_prints``) turns into task logs."""
    print(line, flush=True)


def write_json(path: Path, data: dict) -> Path:
    """``data`` as indented JSON at ``path``, written whole (folders made)."""
    from mmrm.outputs import write_atomic

    return write_atomic(path, json.dumps(data, indent=2, default=str) + "\n")
