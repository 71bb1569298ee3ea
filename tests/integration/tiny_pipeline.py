"""The tiny pipeline params the pipeline, Prefect and Prefect-on-Ray tests share: small enough
for CI (two environments, two variants, a few steps of a 32-wide base), same code paths as the
default."""

import copy

TINY = {
    "benchmark": {"seed": 0, "train_size": 24, "test_size": 12, "image_size": 32,
                  "best_of_n": {"items": 2, "candidates": 3}},
    "base": {"seed": 0, "image_size": 32, "hidden_size": 32, "vision_layers": 1,
             "text_layers": 1, "align_steps": 3, "tune_steps": 3, "batch_size": 8,
             "eval_scenes": 10},
    "builtin": ["povid", "rlhfv"],
    "environments": ["povid", "rlhfv"],
    "variants": ["none", "sfc_two_stage"],
    "train": {"seed": 0, "finetune": "freeze_vision", "epochs": 1, "max_steps": 2,
              "per_device_batch_size": 8, "optim": {"lr": 1.0e-3}},
    "score": {"workers": 1, "batch_responses": 12},
}


def tiny_params(tracking: bool = True, **train) -> dict:
    """A copy of ``TINY``, MLflow off unless ``tracking``, ``train`` keys replaced."""
    params = copy.deepcopy(TINY)
    params["train"].update(train)
    if not tracking:
        params["tracking"] = {"enabled": False}
    return params
