"""Serve the deployments to a Prefect server (``PREFECT_API_URL``); run from the project root.

    python flows/serve.py      # then: prefect deployment run 'mmrm-pipeline/builtin'
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prefect import serve  # noqa: E402

from flows.pipeline import pipeline_flow, score_flow  # noqa: E402

if __name__ == "__main__":
    serve(pipeline_flow.to_deployment(name="builtin", parameters={"params_file": "params.yaml"},
                                      description="The built-in default, params.yaml"),
          score_flow.to_deployment(name="file", description="Score an inference file"))
