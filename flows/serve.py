"""Serve the deployments to a Prefect server (``PREFECT_API_URL``); run from the project root.

    python flows/serve.py      # then: prefect deployment run 'mmrm-pipeline/builtin'

One pipeline deployment per parameter set: ``builtin`` runs ``params.yaml`` (the built-in
default), ``real`` runs ``params.real.yaml`` (POVID, RLHF-V and VLFeedback as released, under
``data/raw/``; data/README.md).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prefect import serve  # noqa: E402

from flows.pipeline import pipeline_flow, score_flow  # noqa: E402

#: deployment name -> (params file, description)
PARAMETER_SETS = {
    "builtin": ("params.yaml", "The built-in default (synthetic shortcut benchmark)"),
    "real": ("params.real.yaml", "POVID, RLHF-V and VLFeedback as released (data/raw/)"),
}

if __name__ == "__main__":
    serve(*[pipeline_flow.to_deployment(name=name, parameters={"params_file": file},
                                        description=text)
            for name, (file, text) in PARAMETER_SETS.items()],
          score_flow.to_deployment(name="file", description="Score an inference file"))
