"""The pipeline's stages as plain functions: DVC (``mmrm stage NAME``) and the Prefect flow
(``flows/pipeline.py``) are thin adapters over these.

    benchmark -> convert (per environment) -> base -> proxy (per environment)
              -> train (environment x variant) -> evaluate (the matrix) -> score (a sample)

Everything a stage reads comes from :class:`PipelineParams` (``params.yaml``) and the files
earlier stages wrote under ``paths``; each stage records an MLflow child run under the
pipeline's parent run through :func:`mmrm.tracking.stage_run` (a no-op when tracking is off).
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from mmrm.synthetic.environments import ENVIRONMENTS
from mmrm.weighting import Weighting

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "tiny"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BenchmarkParams(Strict):
    seed: int = 0
    train_size: int = Field(3000, gt=0, description="Pairs per environment's train split.")
    test_size: int = Field(600, gt=0, description="Pairs per environment's test split.")
    image_size: int = Field(56, ge=16)


class TrainParams(Strict):
    seed: int = 0
    epochs: float = Field(2, gt=0)
    max_steps: int | None = Field(None, gt=0, description="Stop early (tests, smoke runs).")
    lr: float = Field(1e-3, gt=0)
    batch_size: int = Field(32, gt=0)
    overrides: list[str] = Field(default_factory=list,
                                 description="Extra dotted key=value for every training run.")


class RealDataset(Strict):
    format: str = Field(description="A `mmrm convert` format: povid, rlhfv, vlfeedback, ...")
    src: str = Field(description="The released file, e.g. data/raw/povid/POVID_....json")
    image_root: str | None = None


class ScoreParams(Strict):
    items: int = Field(50, gt=0, description="Items of the sample inference file.")
    responses: int = Field(8, gt=0, description="Responses per item.")
    workers: int = Field(1, gt=0)
    batch_responses: int = Field(64, gt=0)


class Paths(Strict):
    benchmark: str = "data/benchmark"
    base: str = "data/base/tiny"
    converted: str = "data/converted"
    runs: str = "runs/pipeline"


class TrackingParams(Strict):
    enabled: bool = True
    experiment: str = "mmrm"
    registered_model: str = "mmrm-reward-model"


class PipelineParams(Strict):
    """``params.yaml``: what the pipeline runs (validated on load like every config)."""

    benchmark: BenchmarkParams = Field(default_factory=BenchmarkParams)
    base: dict[str, Any] = Field(default_factory=dict,
                                 description="TinyVLMConfig fields (seed, steps, sizes).")
    environments: list[str] = Field(list(ENVIRONMENTS))
    variants: list[Weighting] = Field([Weighting.NONE, Weighting.SFC_TWO_STAGE])
    train: TrainParams = Field(default_factory=TrainParams)
    real_datasets: dict[str, RealDataset] = Field(default_factory=dict)
    score: ScoreParams = Field(default_factory=ScoreParams)
    paths: Paths = Field(default_factory=Paths)
    tracking: TrackingParams = Field(default_factory=TrackingParams)

    # -------------------------------------------------------------- where things lie
    def pairs(self, env: str, split: str) -> Path:
        return Path(self.paths.benchmark) / "pairs" / env / f"{split}.jsonl"

    def proxy_dir(self, env: str) -> Path:
        return Path(self.paths.runs) / "proxy" / env

    def model_dir(self, env: str, variant: Weighting | str) -> Path:
        return Path(self.paths.runs) / "models" / env / Weighting(variant).value

    @property
    def matrix_dir(self) -> Path:
        return Path(self.paths.runs) / "matrix"


def load_params(path: str | Path = "params.yaml", overrides: list[str] | None = None
                ) -> PipelineParams:
    from mmrm.config import load_config

    return load_config(path, overrides or [], PipelineParams)


# ---------------------------------------------------------------------------- stages
def make_benchmark(params: PipelineParams) -> dict:
    """Write the three environments in their released formats under ``benchmark/raw``."""
    from mmrm.synthetic.environments import BenchmarkConfig, SplitConfig, write_benchmark
    from mmrm.tracking import stage_run

    b = params.benchmark
    config = BenchmarkConfig(seed=b.seed, image_size=b.image_size,
                             environments=params.environments,
                             splits=[SplitConfig(name="train", size=b.train_size),
                                     SplitConfig(name="test", size=b.test_size)])
    with stage_run(params, "benchmark") as tracker:
        tracker.log_params({f"benchmark.{k}": v for k, v in b.model_dump().items()})
        written = write_benchmark(Path(params.paths.benchmark) / "raw", config)
    return {"splits": len(written)}


def convert_environment(params: PipelineParams, env: str) -> dict:
    """Convert one environment's raw splits with the real converters to ``pairs/<env>/``."""
    from mmrm.convert import convert
    from mmrm.tracking import stage_run

    raw = Path(params.paths.benchmark) / "raw"
    index = json.loads((raw / "benchmark.json").read_text())
    counts = {}
    with stage_run(params, f"convert/{env}") as tracker:
        for split in (s for s in index["splits"] if s["environment"] == env):
            out = params.pairs(env, split["split"])
            manifest = convert(split["format"], raw / split["src"], out,
                               image_root=raw / split["image_root"] if split["image_root"]
                               else None)
            counts[split["split"]] = manifest["output"]["pairs"]
            tracker.log_metrics({f"pairs/{split['split']}": manifest["output"]["pairs"]})
    return counts


def convert_real(params: PipelineParams, name: str) -> dict:
    """Convert a real data set the user put under ``data/raw/`` (``real_datasets`` in params)."""
    from mmrm.convert import convert
    from mmrm.tracking import stage_run

    spec = params.real_datasets[name]
    out = Path(params.paths.converted) / name / "pairs.jsonl"
    with stage_run(params, f"convert/{name}") as tracker:
        manifest = convert(spec.format, spec.src, out,
                           image_root=spec.image_root and Path(spec.image_root))
        tracker.log_metrics({"pairs": manifest["output"]["pairs"],
                             "skipped": manifest["records"]["skipped"]})
    return {"pairs": manifest["output"]["pairs"]}


def pretrain_base(params: PipelineParams) -> dict:
    """Build and pre-train the tiny base VLM."""
    from mmrm.synthetic.tiny_vlm import TinyVLMConfig, pretrain
    from mmrm.tracking import stage_run

    config = TinyVLMConfig.model_validate(params.base)
    with stage_run(params, "base") as tracker:
        tracker.log_params({f"base.{k}": v for k, v in config.model_dump().items()})
        report = pretrain(Path(params.paths.base), config, log=lambda line: None)
        tracker.log_metrics({"grounding/overall": report["grounding"]["overall"]})
    return report["grounding"]


def train_config(params: PipelineParams, env: str, variant: Weighting | str):
    """The run config of one (environment, variant): ``configs/tiny/<variant>.yaml`` with the
    pipeline's data, base, output folder and training params."""
    from mmrm.config import TrainConfig, load_config

    variant = Weighting(variant)
    t = params.train
    raw = load_config(CONFIGS / f"{variant.value}.yaml", t.overrides).model_dump(mode="json")
    raw.update(model=params.paths.base, seed=t.seed, epochs=t.epochs, max_steps=t.max_steps,
               per_device_batch_size=t.batch_size,
               output_dir=str(params.model_dir(env, variant)))
    raw["optim"]["lr"] = t.lr
    raw["data"].update(train=[str(params.pairs(env, "train"))],
                       eval={e: str(params.pairs(e, "test")) for e in params.environments})
    if variant is not Weighting.SFC_JOINT:     # none: for the proxy statistics only
        raw["shortcut"]["proxy_losses"] = str(params.proxy_dir(env) / "proxy_losses.json")
    return TrainConfig.model_validate(raw)


def train_proxy(params: PipelineParams, env: str) -> dict:
    """The text-only proxy of ``env`` (stage 1 of sfc_two_stage) and its cached losses."""
    from mmrm.train import proxy_config, train_text_proxy
    from mmrm.tracking import stage_run

    config = train_config(params, env, Weighting.SFC_TWO_STAGE)
    raw = config.model_dump(mode="json")
    raw["output_dir"] = str(params.proxy_dir(env))
    config = type(config).model_validate(raw)
    with stage_run(params, f"proxy/{env}") as tracker:
        tracker.log_dataset(params.pairs(env, "train"), f"{env}/train", "training")
        cache = train_text_proxy(config, tracker, log=lambda line: None)
        tracker.log_metrics({"proxy/train_accuracy": cache["accuracy"]})
        tracker.set_tags({"mmrm.environment": env, "mmrm.model_dir":
                          str(Path(proxy_config(config).output_dir) / "final")})
    return {"accuracy": cache["accuracy"]}


def train_variant(params: PipelineParams, env: str, variant: Weighting | str) -> dict:
    """One reward model: train on ``env``, evaluate on every environment's test split.

    Metric names are the same for every variant (``eval/<env>/accuracy``, ``iid_mean``,
    ``ood_mean``, ``weight/...``), so MLflow's compare view lines them up.
    """
    from mmrm.train import train
    from mmrm.tracking import stage_run

    variant = Weighting(variant)
    config = train_config(params, env, variant)
    with stage_run(params, f"train/{env}/{variant.value}") as tracker:
        tracker.set_tags({"mmrm.environment": env, "mmrm.variant": variant.value,
                          "mmrm.model_dir": str(Path(config.output_dir) / "final")})
        tracker.log_dataset(params.pairs(env, "train"), f"{env}/train", "training")
        for e in params.environments:
            tracker.log_dataset(params.pairs(e, "test"), f"{e}/test", "evaluation")
        tracker.log_artifact(_write_json(Path(config.output_dir) / "resolved_config.json",
                                         config.model_dump(mode="json")))
        result = train(config, tracker, log=lambda line: None, resume=False)
        summary = id_ood(result, env, params.environments)
        tracker.log_metrics(summary)
        tracker.log_reward_model(Path(config.output_dir) / "final",
                                 params.tracking.registered_model,
                                 {"environment": env, "variant": variant.value, **summary})
    return {**result, **summary}


def id_ood(result: dict, env: str, environments: list[str]) -> dict[str, float]:
    """``iid_mean`` (accuracy on the training environment's test split) and ``ood_mean``
    (mean accuracy on the others) from a run's ``eval/<env>/accuracy`` results."""
    ood = [result[f"eval/{e}/accuracy"] for e in environments if e != env]
    return {"iid_mean": result[f"eval/{env}/accuracy"],
            "ood_mean": statistics.mean(ood) if ood else float("nan")}


def evaluate(params: PipelineParams) -> dict:
    """The cross-distribution matrix of every trained model, the mean ID/OOD per variant
    (``metrics.json``, a DVC metric), and the champion: the model with the best mean OOD."""
    from mmrm.evaluate import cross_distribution
    from mmrm.tracking import stage_run

    models = {f"{env}/{v.value}": params.model_dir(env, v) / "final"
              for env in params.environments for v in params.variants}
    tests = {env: params.pairs(env, "test") for env in params.environments}
    with stage_run(params, "evaluate") as tracker:
        matrix = cross_distribution(models, tests)
        paths = matrix.write(params.matrix_dir)
        per_variant = {}
        for v in params.variants:
            rows = [matrix.row_summary(f"{env}/{v.value}") for env in params.environments]
            per_variant[v.value] = {"iid_mean": statistics.mean(r["id"] for r in rows),
                                    "ood_mean": statistics.mean(r["ood"] for r in rows)}
            tracker.log_metrics({f"{v.value}/{k}": x for k, x in per_variant[v.value].items()})
        champion = max(models, key=lambda row: matrix.row_summary(row)["ood"])
        metrics = {"variants": per_variant, **matrix.summary(), "champion": champion,
                   "champion_dir": str(models[champion])}
        _write_json(params.matrix_dir / "metrics.json", metrics)
        for path in paths.values():
            tracker.log_artifact(path, "matrix")
        tracker.set_champion(params.tracking.registered_model, str(models[champion]))
    return {"matrix": matrix, "metrics": metrics}


def score_sample(params: PipelineParams) -> dict:
    """Score a sample inference file (best-of-N) with the champion model on Ray."""
    from mmrm.data import load_pairs
    from mmrm.score import ScoreConfig, score_file
    from mmrm.tracking import stage_run

    metrics = json.loads((params.matrix_dir / "metrics.json").read_text())
    out = Path(params.paths.runs) / "scores"
    out.mkdir(parents=True, exist_ok=True)
    items = out / "sample_items.jsonl"
    _write_sample_items(load_pairs(params.pairs(params.environments[-1], "test")), items,
                        params.score.items, params.score.responses)
    for stale in out.glob("scores.*"):
        stale.unlink()             # a rerun of this stage scores afresh
    with stage_run(params, "score") as tracker:
        totals = score_file(ScoreConfig(model=metrics["champion_dir"], input=str(items),
                                        output=str(out / "scores.jsonl"),
                                        workers=params.score.workers,
                                        batch_responses=params.score.batch_responses))
        rate = totals["responses"] / max(totals["seconds"], 1e-9)
        tracker.log_metrics({"score/items": totals["items_scored"],
                             "score/responses_per_second": rate})
    return {"items": totals["items_scored"], "output": str(out / "scores.jsonl")}


def _write_sample_items(pairs, path: Path, items: int, responses: int) -> None:
    """Best-of-N items from test pairs: the chosen answer among rejected ones and variants."""
    with open(path, "w") as f:
        for p in pairs[:items]:
            candidates = [p.rejected, p.chosen] + [f"{p.rejected} ({k})" for k in range(responses)]
            f.write(json.dumps({"id": p.id, "prompt": p.prompt, "img_path": str(p.image_file),
                                "responses": candidates[:responses]}) + "\n")


def _write_json(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return path


STAGES = {"benchmark": make_benchmark, "convert": convert_environment,
          "convert-real": convert_real, "base": pretrain_base, "proxy": train_proxy,
          "train": train_variant, "evaluate": evaluate, "score": score_sample}
