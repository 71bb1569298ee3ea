"""The pipeline's stages as plain functions: DVC (``mmrm stage NAME``) and the Prefect flow
(``flows/pipeline.py``) are thin adapters over these.

    benchmark -> convert (per environment) -> base -> proxy (per environment)
              -> train (environment x variant) -> evaluate (the matrix) -> score (a sample)

Everything a stage reads comes from :class:`PipelineParams` (``params.yaml``) and the files
earlier stages wrote under ``paths``; each stage records an MLflow child run under the
pipeline's parent run through :func:`mmrm.lineage.stage_run` (a no-op when tracking is off),
and trained models are registered there. Run configs start from the shipped
``mmrm/configs/tiny/<variant>.yaml`` (package data).
"""

from __future__ import annotations

import json
import random
import statistics
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator

from mmrm.config import Strict, Weighting, load_config, with_overrides
from mmrm.lineage import register_reward_model, set_champion, stage_run
from mmrm.synthetic.environments import ENVIRONMENTS

#: The shipped run config of each variant (``mmrm/configs/tiny/<variant>.yaml``).
CONFIG_NAMES = "tiny/{variant}"


class BestOfNParams(Strict):
    items: int = Field(40, gt=0, description="Best-of-N items per environment.")
    candidates: int = Field(8, ge=2, description="Answers per item (0-3 mistakes each).")


class BenchmarkParams(Strict):
    seed: int = 0
    visual: str = Field("V0", description="Visual-cost level (mmrm.synthetic.visual); the "
                        "base is pre-trained for the same level.")
    cue_rate: float = Field(0.85, ge=0, le=1, description="P(own cue on the preferred side) "
                            "in each environment's train and test splits.")
    train_size: int = Field(3000, gt=0, description="Pairs per environment's train split.")
    test_size: int = Field(600, gt=0, description="Pairs per environment's test split (and "
                           "its anti-cue split: own cue on the rejected side).")
    image_size: int = Field(56, ge=16)
    best_of_n: BestOfNParams = Field(default_factory=BestOfNParams)

    @field_validator("visual")
    @classmethod
    def _level(cls, value: str) -> str:
        from mmrm.synthetic.visual import visual_level

        visual_level(value)
        return value


class TrainParams(Strict):
    seed: int = 0
    finetune: str = Field("freeze_vision", pattern="^(full|freeze_vision|lora)$",
                          description="What trains (the paper: freeze_vision).")
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

    @property
    def best_of_n(self) -> Path:
        """Every environment's best-of-N items (inference format, ``errors`` per response)."""
        return Path(self.paths.benchmark) / "best_of_n" / "items.jsonl"

    def proxy_dir(self, env: str) -> Path:
        return Path(self.paths.runs) / "proxy" / env

    def model_dir(self, env: str, variant: Weighting | str) -> Path:
        return Path(self.paths.runs) / "models" / env / Weighting(variant).value

    @property
    def matrix_dir(self) -> Path:
        return Path(self.paths.runs) / "matrix"


def load_params(path: str | Path = "params.yaml",
                overrides: list[str] | dict[str, Any] | None = None) -> PipelineParams:
    """``params.yaml`` with dotted overrides (``key=value`` strings or a mapping), validated:
    what the CLI's ``mmrm stage``, DVC and the Prefect flow all call."""
    return load_config(path, overrides or [], PipelineParams)


# ---------------------------------------------------------------------------- stages
def make_benchmark(params: PipelineParams) -> dict:
    """Write the three environments in their released formats under ``benchmark/raw``."""
    from mmrm.synthetic.environments import BenchmarkConfig, SplitConfig, write_benchmark
    from mmrm.tracking import flatten

    b = params.benchmark
    config = BenchmarkConfig(seed=b.seed, image_size=b.image_size, visual=b.visual,
                             environments=params.environments,
                             splits=[SplitConfig(name="train", size=b.train_size,
                                                 cue_rate=b.cue_rate),
                                     SplitConfig(name="test", size=b.test_size,
                                                 cue_rate=b.cue_rate),
                                     SplitConfig(name="anticue", size=b.test_size,
                                                 cue_rate=0.0)])
    with stage_run(params, "benchmark") as tracker:
        tracker.log_params(flatten(b.model_dump(), "benchmark."))
        written = write_benchmark(Path(params.paths.benchmark) / "raw", config)
        write_best_of_n_sets(params)
    return {"splits": len(written)}


def write_best_of_n_sets(params: PipelineParams) -> None:
    """Best-of-N items of known quality in every environment's frames (random cues; mmrm's
    inference format with each answer's number of mistakes in ``errors``)."""
    from mmrm.synthetic.environments import best_of_n_items, write_best_of_n
    from mmrm.synthetic.visual import visual_level

    b = params.benchmark
    items = [item for env in params.environments
             for item in best_of_n_items(env, b.best_of_n.items, b.best_of_n.candidates,
                                         random.Random(f"{b.seed}/{env}/best-of-n"),
                                         visual_level(b.visual))]
    write_best_of_n(items, params.best_of_n, b.image_size)


def convert_environment(params: PipelineParams, env: str) -> dict:
    """Convert one environment's raw splits with the real converters to ``pairs/<env>/``."""
    from mmrm.convert import convert

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

    config = TinyVLMConfig.model_validate({"visual": params.benchmark.visual, **params.base})
    with stage_run(params, "base") as tracker:
        tracker.log_params({f"base.{k}": v for k, v in config.model_dump().items()})
        report = pretrain(Path(params.paths.base), config, log=lambda line: None)
        tracker.log_metrics({"grounding/overall": report["grounding"]["overall"]})
    return report["grounding"]


def train_config(params: PipelineParams, env: str, variant: Weighting | str):
    """The run config of one (environment, variant): the shipped ``tiny/<variant>`` config
    with the pipeline's data, base, output folder and training params."""
    variant = Weighting(variant)
    t = params.train
    config = load_config(CONFIG_NAMES.format(variant=variant.value), t.overrides)
    changes = {"model": params.paths.base, "seed": t.seed, "epochs": t.epochs,
               "max_steps": t.max_steps, "per_device_batch_size": t.batch_size,
               "finetune": t.finetune, "output_dir": str(params.model_dir(env, variant)),
               "optim.lr": t.lr, "data.train": [str(params.pairs(env, "train"))],
               "data.eval": {e: str(params.pairs(e, "test")) for e in params.environments}}
    if variant is not Weighting.SFC_JOINT:     # none: for the proxy statistics only
        changes["shortcut.proxy_losses"] = str(params.proxy_dir(env) / "proxy_losses.json")
    return with_overrides(config, changes, f"params: train {env}/{variant.value}")


def train_proxy(params: PipelineParams, env: str) -> dict:
    """The text-only proxy of ``env`` (stage 1 of sfc_two_stage) and its cached losses."""
    from mmrm.train import proxy_dirs, train_text_proxy

    config = with_overrides(train_config(params, env, Weighting.SFC_TWO_STAGE),
                            {"output_dir": str(params.proxy_dir(env))})
    with stage_run(params, f"proxy/{env}") as tracker:
        tracker.log_dataset(params.pairs(env, "train"), f"{env}/train", "training")
        cache = train_text_proxy(config, tracker, log=lambda line: None)
        tracker.log_metrics({"proxy/train_accuracy": cache["accuracy"]})
        tracker.set_tags({"mmrm.environment": env,
                          "mmrm.model_dir": str(proxy_dirs(config)[0])})
    return {"accuracy": cache["accuracy"]}


def train_variant(params: PipelineParams, env: str, variant: Weighting | str) -> dict:
    """One reward model: train on ``env``, evaluate on every environment's test split.

    Metric names are the same for every variant (``eval/<env>/accuracy``, ``iid_mean``,
    ``ood_mean``, ``weight/...``), so MLflow's compare view lines them up.
    """
    from mmrm.train import train

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
        if params.tracking.enabled:
            register_reward_model(Path(config.output_dir) / "final",
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
    """The cross-distribution matrix of every trained model; per model its own environment's
    anti-cue accuracy and best-of-N quality on every environment's items; per variant the
    means (``metrics.json``, a DVC metric); and the champion: the best mean OOD."""
    from mmrm.evaluate import cross_distribution

    models = {f"{env}/{v.value}": params.model_dir(env, v) / "final"
              for env in params.environments for v in params.variants}
    tests = {env: params.pairs(env, "test") for env in params.environments}
    with stage_run(params, "evaluate") as tracker:
        matrix = cross_distribution(models, tests)
        paths = matrix.write(params.matrix_dir)
        shortcut = {row: shortcut_measures(params, row.split("/")[0], model_dir)
                    for row, model_dir in models.items()}
        per_variant = {}
        for v in params.variants:
            rows = [f"{env}/{v.value}" for env in params.environments]
            summaries = [matrix.row_summary(r) for r in rows]
            per_variant[v.value] = {
                "iid_mean": statistics.mean(r["id"] for r in summaries),
                "ood_mean": statistics.mean(r["ood"] for r in summaries),
                **{key: statistics.mean(shortcut[r][key] for r in rows)
                   for key in shortcut[rows[0]]}}
            tracker.log_metrics({f"{v.value}/{k}": x for k, x in per_variant[v.value].items()})
        champion = max(models, key=lambda row: matrix.row_summary(row)["ood"])
        metrics = {"variants": per_variant, **matrix.summary(), "champion": champion,
                   "champion_dir": str(models[champion])}
        _write_json(params.matrix_dir / "metrics.json", metrics)
        _write_json(params.matrix_dir / "shortcut.json", shortcut)
        for path in [*paths.values(), params.matrix_dir / "shortcut.json"]:
            tracker.log_artifact(path, "matrix")
        if params.tracking.enabled:
            set_champion(params.tracking.registered_model, str(models[champion]))
    return {"matrix": matrix, "metrics": metrics}


def shortcut_measures(params: PipelineParams, env: str, model_dir: Path) -> dict[str, float]:
    """One model's accuracy on its environment's anti-cue split (own cue on the rejected
    side) and the quality of its best-of-N picks over every environment's items."""
    from mmrm.data import load_pairs
    from mmrm.evaluate import best_of_n_file, pairwise_accuracy
    from mmrm.inference import load_reward_model, score_pairs

    model, collator = load_reward_model(model_dir)
    measures = {"anticue": pairwise_accuracy(*score_pairs(
        model, collator, load_pairs(params.pairs(env, "anticue"))))}
    report = best_of_n_file(model, collator.processor, params.best_of_n)
    for key in ("fully_correct", "mean_errors", "random_fully_correct", "oracle_fully_correct"):
        measures[f"best_of_n/{key}"] = report[key]
    return measures


def score_sample(params: PipelineParams) -> dict:
    """Score the best-of-N items (known quality) with the champion model on Ray, and report
    how good its picks are."""
    from mmrm.evaluate import best_of_n_quality
    from mmrm.score import ScoreConfig, score_file

    metrics = json.loads((params.matrix_dir / "metrics.json").read_text())
    out = Path(params.paths.runs) / "scores"
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("scores.*"):
        stale.unlink()             # a rerun of this stage scores afresh
    with stage_run(params, "score") as tracker:
        totals = score_file(ScoreConfig(model=metrics["champion_dir"],
                                        input=str(params.best_of_n),
                                        output=str(out / "scores.jsonl"),
                                        workers=params.score.workers,
                                        batch_responses=params.score.batch_responses))
        scored = [json.loads(line) for line in open(out / "scores.jsonl")]
        quality = best_of_n_quality([s["errors"] for s in scored], [s["scores"] for s in scored])
        rate = totals["responses"] / max(totals["seconds"], 1e-9)
        tracker.log_metrics({"score/items": totals["items_scored"],
                             "score/responses_per_second": rate,
                             **{f"best_of_n/{k}": v for k, v in quality.items()}})
    _write_json(out / "best_of_n.json", {"model": metrics["champion"], **quality})
    return {"items": totals["items_scored"], "output": str(out / "scores.jsonl"), **quality}


def _write_json(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return path


STAGES = {"benchmark": make_benchmark, "convert": convert_environment,
          "convert-real": convert_real, "base": pretrain_base, "proxy": train_proxy,
          "train": train_variant, "evaluate": evaluate, "score": score_sample}
