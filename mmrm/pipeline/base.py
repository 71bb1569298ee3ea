"""The base stage: the built-in tiny VLM, built and pre-trained here (the default model
profile); with a real base (``model.base``) there is nothing to build."""

from __future__ import annotations

import json
from pathlib import Path

from mmrm.tracking.runs import stage_run
from mmrm.pipeline import say, write_json
from mmrm.pipeline.params import PipelineParams


def base_config(params: PipelineParams):
    """The tiny base's :class:`~mmrm.synthetic.tiny_vlm.TinyVLMConfig` these params ask for."""
    from mmrm.synthetic.tiny_vlm import TinyVLMConfig

    return TinyVLMConfig.model_validate({"visual": params.benchmark.visual, **params.base})


def base_is_built(params: PipelineParams) -> bool:
    """Whether ``paths.base`` already holds the tiny base these params ask for: saved, and
    pre-trained with exactly these settings (``pretrain_report.json`` records them). A base
    built for another visual level, seed or step count is not reused. (The Prefect flow and
    in-process runs skip the stage then; DVC decides by its own lock.)"""
    folder = Path(params.paths.base)
    if params.model.base or not (folder / "config.json").exists():
        return False
    try:
        recorded = json.loads((folder / "pretrain_report.json").read_text()).get("config")
    except (OSError, ValueError, AttributeError):
        return False
    return recorded == json.loads(json.dumps(base_config(params).model_dump()))


def pretrain_base(params: PipelineParams) -> dict:
    """Build and pre-train the tiny base VLM (the default model profile); with a real base
    (``model.base``) there is nothing to build, and the stage says which folder is used."""
    from mmrm.synthetic.tiny_vlm import pretrain

    if params.model.base:
        folder = Path(params.paths.base)
        folder.mkdir(parents=True, exist_ok=True)
        write_json(folder / "external_base.json", {"base": params.model.base})
        say(f"base: {params.model.base} (a real VLM: nothing to build)")
        return {"base": params.model.base}
    config = base_config(params)
    with stage_run(params, "base") as tracker:
        tracker.log_params({f"base.{k}": v for k, v in config.model_dump().items()})
        report = pretrain(Path(params.paths.base), config, log=say)
        tracker.log_metrics({"grounding/overall": report["grounding"]["overall"]})
    return report["grounding"]
