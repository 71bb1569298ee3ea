"""The reward model as an MLflow pyfunc, so a registered version
(``models:/mmrm-reward-model@champion``) loads and scores with ``mlflow.pyfunc.load_model``.

The logged model carries the saved RM directory (HF backbone, value head, configs) as an
artifact; ``predict`` takes a table with ``prompt``, ``img_path`` and ``response`` columns and
returns one reward per row (``normalize`` in the params gives ``(r - mean) / std``).

Images pass the same rules as every other input (:mod:`mmrm.images`): ``img_path`` must lie
inside the image root (``image_root`` in the params, else the serving process's working
folder) and stay under the pixel cap (``max_image_pixels``), checked from the header before
anything is decoded. A row that breaks them fails the call with the row and the reason.
"""

from __future__ import annotations

import mlflow.models
import mlflow.pyfunc


class RewardModelPyfunc(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        from mmrm.inference import ResponseScorer

        self.scorer = ResponseScorer(context.artifacts["reward_model"], threads=0)

    def predict(self, context, model_input, params=None):
        from mmrm.inference import score_items

        from pathlib import Path

        from mmrm.images import DEFAULT_MAX_PIXELS, inspect_image, resolve_image_path
        from mmrm.ledger import FieldProblem

        params = params or {}
        root = Path(params.get("image_root") or Path.cwd())
        max_pixels = int(params.get("max_image_pixels") or DEFAULT_MAX_PIXELS)
        rows = model_input.to_dict("records") if hasattr(model_input, "to_dict") \
            else list(model_input)
        items = []
        for n, r in enumerate(rows):
            try:
                image = resolve_image_path(str(r["img_path"]), root,
                                           root_is_explicit=bool(params.get("image_root")))
                inspect_image(image, max_pixels=max_pixels, decode=False)
            except FieldProblem as problem:
                raise ValueError(f"row {n}: {problem}") from None
            items.append({"prompt": r["prompt"], "responses": [r["response"]],
                          "image_file": image})
        rewards = [s[0] for s in score_items(self.scorer.model, self.scorer.processor, items,
                                              self.scorer.device)] if items else []
        if (params or {}).get("normalize"):
            config = self.scorer.model.config
            rewards = [(r - config.reward_mean) / config.reward_std for r in rewards]
        return rewards


def signature():
    """Inputs (``prompt``, ``img_path``, ``response``), the output (one reward) and the params
    (``normalize``, ``image_root``, ``max_image_pixels``) the registry shows and checks."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

    from mmrm.images import DEFAULT_MAX_PIXELS

    return ModelSignature(
        inputs=Schema([ColSpec("string", "prompt"), ColSpec("string", "img_path"),
                       ColSpec("string", "response")]),
        outputs=Schema([ColSpec("double", "reward")]),
        params=ParamSchema([ParamSpec("normalize", "boolean", False),
                            ParamSpec("image_root", "string", ""),
                            ParamSpec("max_image_pixels", "long", DEFAULT_MAX_PIXELS)]))


# Logged as "model from code" (mlflow.pyfunc.log_model(python_model=<this file>)): MLflow
# imports this file when it loads the model and takes the model set here (no pickling).
mlflow.models.set_model(RewardModelPyfunc())
