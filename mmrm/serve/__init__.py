"""``mmrm serve``: a reward model over HTTP, for RL loops (PPO / GRPO / best-of-N) that need
rewards online, images included.

Endpoints (JSON in, JSON out):

* ``POST /score`` — mmrm's shape: ``{"items": [{"prompt", "responses": [...], and "image"
  (base64) or "img_path" (under the server's --image-root)}]}`` -> ``{"rewards": [[...]],
  "images": [where each item's image came from]}``, N rewards per item in order. An RL loop
  sends a prompt's G completions as one item: its image and prompt are encoded once.
* ``POST /get_reward`` — OpenRLHF's remote reward model: ``{"query": [...], "prompts":
  [...]?, "labels": [...]?, "images": [base64 | null, ...]?}`` -> ``{"rewards": [...],
  "scores": [...], "images": [...]}``. Each query is split into the user's prompt and the
  policy's response in whatever template the policy rendered it
  (:mod:`mmrm.serve.templates`) and rendered again in the reward model's. A query without
  an image takes the one the server's index (``images_from=``) has for its prompt, else it
  is refused, unless the server was started ``text_only=true``.
* ``GET /health`` (never needs the token: ready only when a replica answers), ``GET /info``
  (model digest, dtype, normalisation, limits, where images come from), ``GET /metrics``
  (Prometheus text).

An empty or whitespace response is scored like any answer (the reward model's reward for an
empty answer), never a failed batch. Every request passes the limits before any work
(:mod:`mmrm.serve.front`: headers, body, paths, methods, ``Host``, token, content type;
:mod:`mmrm.serve.requests`: items, responses, tokens, pixels); bad input is a 4xx JSON
``{"error", "index", "field"}`` and never takes a replica down, and a request whose client
gives up or whose time runs out stops using the replica. The replicas
(:mod:`mmrm.serve.replica`) batch concurrent requests. Everything listens on 127.0.0.1
unless ``host=`` says otherwise, and a non-loopback host needs a bearer token.
"""

from __future__ import annotations

import json
from pathlib import Path

from mmrm.config import ServeConfig, with_overrides

__all__ = ["serve_model", "resolve_model", "resolved"]

#: ``max_tokens`` of a model that does not say how long its training sequences were.
DEFAULT_MAX_TOKENS = 4096


def resolved(config: ServeConfig) -> ServeConfig:
    """``config`` with ``max_tokens`` filled in: the model's training ``max_length``
    (``train_config.json`` beside its weights), else :data:`DEFAULT_MAX_TOKENS`."""
    if config.max_tokens is not None:
        return config
    try:
        saved = json.loads((Path(config.model) / "train_config.json").read_text())
        length = int(saved["data"]["max_length"])
    except (OSError, ValueError, KeyError, TypeError):
        length = DEFAULT_MAX_TOKENS
    return with_overrides(config, {"max_tokens": length}, "mmrm serve")


def serve_model(config: ServeConfig, log=print) -> str:
    """Start Ray (a local cluster on 127.0.0.1, or ``address=``), the deployment (without
    Serve's own HTTP proxy) and the HTTP front on ``host:port``; serve until SIGINT or
    SIGTERM, then stop what was started. Returns the base URL."""
    import ray
    from ray import serve

    from mmrm.model import check_model_whole
    from mmrm.cluster import start_ray
    from mmrm.serve.front import Front, http_server
    from mmrm.serve.network import read_token
    from mmrm.serve.replica import deployment
    from mmrm.serve.requests import ImageIndex

    token = read_token(config)                  # before anything starts
    check_model_whole(config.model)
    config = resolved(config)
    if config.images_from:
        ImageIndex(config.images_from, config.max_image_pixels, config.image_root)     # a bad index fails here
    if config.policy_template:
        from mmrm.serve.templates import policy_shapes

        policy_shapes(config.policy_template)
    started = not ray.is_initialized()
    if started:
        start_ray(config.address)
    url = f"http://{config.host}:{config.port}"
    try:
        serve.start(proxy_location="Disabled")
        handle = serve.run(deployment(config), name="mmrm", route_prefix=None)
        log(json.dumps({"serving": url, "model": str(config.model),
                        "replicas": config.replicas, "token": token is not None,
                        "max_tokens": config.max_tokens}))
        http_server(Front(config, token, handle, log), config).run()   # until a signal
    finally:
        serve.shutdown()
        if started:
            ray.shutdown()
    return url


def resolve_model(model: str) -> str:
    """A saved RM folder, or a registry URI (``models:/mmrm-reward-model@champion``) whose
    logged RM folder is downloaded from MLflow."""
    if not model.startswith("models:/"):
        return model
    import mlflow

    from mmrm.tracking.runs import tracking_uri

    mlflow.set_tracking_uri(tracking_uri())
    mlflow.set_registry_uri(tracking_uri())
    local = Path(mlflow.artifacts.download_artifacts(model))
    folder = local / "artifacts" / "reward_model"
    if not folder.is_dir():
        raise ValueError(f"{model}: the registered model holds no reward_model artifact "
                         f"(not an mmrm reward model?)")
    return str(folder)
