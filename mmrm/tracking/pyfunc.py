"""The reward model as an MLflow pyfunc, so a registered version
(``models:/mmrm-reward-model@champion``) loads and scores with ``mlflow.pyfunc.load_model``.

The logged model carries the saved RM directory (HF backbone, value head, configs) as an
artifact; ``predict`` takes a table with ``prompt``, ``img_path`` and ``response`` columns and
returns one reward per row (``normalize`` in the params gives ``(r - mean) / std``).

Images pass the same rules as every other input (:mod:`mmrm.images`): ``img_path`` must lie
inside the image root and stay under the pixel cap, and must decode. The root and the cap are
the **server's** settings, never a request's: ``image_root`` and ``max_image_pixels`` in the
``model_config`` the server loads the model with
(``mlflow.pyfunc.load_model(uri, model_config={"image_root": "/data"})``; default root: the
serving process's working folder). A request that tries to set them, or a row that breaks a
rule (a path outside the root, a bomb, a truncated image, a missing or empty response), fails
the call with the row and the reason.
"""

from __future__ import annotations

import mlflow.models
import mlflow.pyfunc
import pandas as pd

#: What a request may set; the rest of the behaviour is the server's configuration.
REQUEST_PARAMS = ("normalize",)
SERVER_SETTINGS = ("image_root", "max_image_pixels")


class RewardModelPyfunc(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        from pathlib import Path

        from mmrm.images import DEFAULT_MAX_PIXELS
        from mmrm.inference import ResponseScorer

        config = dict(getattr(context, "model_config", None) or {})
        unknown = sorted(set(config) - set(SERVER_SETTINGS))
        if unknown:
            raise ValueError(f"model_config: unknown settings {unknown}; known: "
                             f"{list(SERVER_SETTINGS)}")
        self.root_is_explicit = bool(config.get("image_root"))
        self.image_root = Path(config.get("image_root") or Path.cwd()).resolve()
        self.max_pixels = int(config.get("max_image_pixels") or DEFAULT_MAX_PIXELS)
        self.scorer = ResponseScorer(context.artifacts["reward_model"], threads=0)

    # a DataFrame hint: MLflow neither wraps predict nor infers a signature from it (the
    # logged signature is signature() below), and it does not warn that a hint is missing
    def predict(self, context, model_input: pd.DataFrame, params=None):
        params = params or {}
        refused = sorted(k for k, v in params.items()
                         if k not in REQUEST_PARAMS and v not in (None, "", 0))
        if refused:
            raise ValueError(f"params {refused}: set by the server (model_config), not by a "
                             f"request; a request may set {list(REQUEST_PARAMS)}")
        rows = model_input.to_dict("records") if hasattr(model_input, "to_dict") \
            else list(model_input)
        items = [{"line": n, **self._item(n, row)} for n, row in enumerate(rows)]
        if not items:
            return []
        found = {r["line"]: r for r in self.scorer.score(
            items, normalize=bool(params.get("normalize")))["results"]}
        bad = next((found[n] for n in sorted(found) if "error" in found[n]), None)
        if bad is not None:
            raise ValueError(f"row {bad['line']}: {bad['error']}")
        return [found[n]["scores"][0] for n in range(len(items))]

    def _item(self, n: int, row: dict) -> dict:
        """One row as a scoring item, every field and the image checked (``row n: ...``)."""
        from mmrm.formats import text_field
        from mmrm.images import inspect_image, resolve_image_path
        from mmrm.ledger import FieldProblem

        try:
            prompt = text_field(row, "prompt")
            response = text_field(row, "response")
            image = resolve_image_path(str(row.get("img_path") or ""), self.image_root,
                                       root_is_explicit=self.root_is_explicit)
            inspect_image(image, max_pixels=self.max_pixels, decode=True)
        except FieldProblem as problem:
            raise ValueError(f"row {n}: {problem}") from None
        return {"prompt": prompt, "responses": [response], "image_file": image}


def signature():
    """Inputs (``prompt``, ``img_path``, ``response``), the output (one reward) and the one
    request param (``normalize``) the registry shows and checks."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

    return ModelSignature(
        inputs=Schema([ColSpec("string", "prompt"), ColSpec("string", "img_path"),
                       ColSpec("string", "response")]),
        outputs=Schema([ColSpec("double", "reward")]),
        params=ParamSchema([ParamSpec("normalize", "boolean", False)]))


# Logged as "model from code" (mlflow.pyfunc.log_model(python_model=<this file>)): MLflow
# imports this file when it loads the model and takes the model set here (no pickling).
mlflow.models.set_model(RewardModelPyfunc())
