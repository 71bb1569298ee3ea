"""The reward model as an MLflow pyfunc, so a registered version
(``models:/mmrm-reward-model@champion``) loads and scores with ``mlflow.pyfunc.load_model``.

The logged model carries the saved RM directory (HF backbone, value head, configs) as an
artifact; ``predict`` takes a table with ``prompt``, ``img_path`` and ``response`` columns and
returns one reward per row (``normalize`` in the params gives ``(r - mean) / std``).
"""

from __future__ import annotations

import mlflow.models
import mlflow.pyfunc


class RewardModelPyfunc(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        from mmrm.score import ResponseScorer

        self.scorer = ResponseScorer(context.artifacts["reward_model"], threads=0)

    def predict(self, context, model_input, params=None):
        from mmrm.score import score_items

        rows = model_input.to_dict("records") if hasattr(model_input, "to_dict") \
            else list(model_input)
        items = [{"prompt": r["prompt"], "responses": [r["response"]],
                  "image_file": r["img_path"]} for r in rows]
        rewards = [s[0] for s in score_items(self.scorer.model, self.scorer.processor, items,
                                              self.scorer.device)] if items else []
        if (params or {}).get("normalize"):
            config = self.scorer.model.config
            rewards = [(r - config.reward_mean) / config.reward_std for r in rewards]
        return rewards


# Logged as "model from code" (mlflow.pyfunc.log_model(python_model=<this file>)): MLflow
# imports this file when it loads the model and takes the model set here (no pickling).
mlflow.models.set_model(RewardModelPyfunc())
