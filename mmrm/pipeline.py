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
import os
import random
import shutil
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator, model_validator

from mmrm.config import Strict, Weighting, load_config, with_overrides
from mmrm.lineage import (active_run_id, evaluation_key, promote, register_reward_model,
                          stage_run)
from mmrm.synthetic.environments import ENVIRONMENTS


def say(line: str) -> None:
    """A progress line of a stage: stdout, which ``dvc repro`` shows as it runs and the
    Prefect flow (``log_prints``) turns into task logs."""
    print(line, flush=True)


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


class SplitParams(Strict):
    """How a released data set is cut into train / test (/ validation)."""

    test: float = Field(0.2, ge=0, lt=1, description="Share of groups in the test split.")
    val: float = Field(0.0, ge=0, lt=1, description="Share of groups in a validation split.")
    key: str = Field("image", pattern="^(image|prompt|both)$",
                     description="What pairs of one group share (they never straddle two "
                                 "splits): the image, the prompt, or either (both).")
    seed: int = Field(0, description="Salt of the stable hash that assigns groups.")
    max_train_pairs: int | None = Field(None, gt=0, description="Keep at most this many "
                                        "training pairs (the first by hash): quick runs.")


class RealDataset(Strict):
    """A released data set as a data source: converted by the real converters, then split."""

    format: str = Field(description="A `mmrm convert` format: povid, rlhfv, vlfeedback, ...")
    src: str = Field(description="The released file, e.g. data/raw/povid/POVID_....json")
    image_root: str | None = None
    split: SplitParams = Field(default_factory=SplitParams)
    test_only: bool = Field(False, description="An evaluation set (VL-RewardBench, ...): all "
                            "of it is the test split.")


class ScoreParams(Strict):
    workers: int = Field(1, gt=0)
    batch_responses: int = Field(64, gt=0)
    gpus_per_worker: float = Field(0.0, ge=0, description="1 = a GPU per scorer, 0 = CPU.")
    dtype: str = Field("fp32", pattern="^(fp32|bf16|fp16)$")


class ModelParams(Strict):
    """The model profile: the built-in tiny base on the CPU (default) or a real VLM folder with
    a GPU run config and launcher; the same stages run either."""

    base: str | None = Field(None, description="A local VLM folder to train from (default: "
                             "the tiny base the base stage builds at paths.base).")
    config: str = Field("tiny/{variant}", description="Run config of each variant: a shipped "
                        "name or a path, {variant} filled in (e.g. "
                        "configs/gpu/internvl_8b_{variant}.yaml).")
    processes: int = Field(1, ge=1, description="Training processes (GPUs); above 1 each run "
                           "goes through accelerate launch.")
    accelerate_config: str | None = Field(None, description="accelerate config for "
                                          "multi-process runs (configs/accelerate/zero2.yaml).")


class Paths(Strict):
    benchmark: str = "data/benchmark"
    base: str = "data/base/tiny"
    envs: str = Field("data/envs", description="Every environment's pairs: "
                      "<envs>/<name>/{train,test,...}.jsonl with images/ beside them.")
    runs: str = "runs/pipeline"
    metrics: str = Field("metrics", description="The small, numbers-only metrics and plots "
                         "that are committed to git (dvc metrics/plots diff across commits).")


class TrackingParams(Strict):
    enabled: bool = True
    experiment: str = "mmrm"
    registered_model: str = "mmrm-reward-model"


class PipelineParams(Strict):
    """``params.yaml``: what the pipeline runs (validated on load like every config)."""

    benchmark: BenchmarkParams = Field(default_factory=BenchmarkParams)
    base: dict[str, Any] = Field(default_factory=dict,
                                 description="TinyVLMConfig fields (seed, steps, sizes).")
    builtin: list[str] = Field(list(ENVIRONMENTS), description="Synthetic environments the "
                               "benchmark stage makes (data sources).")
    real_datasets: dict[str, RealDataset] = Field(default_factory=dict, description="Released "
                                                  "data sets (data sources).")
    environments: list[str] = Field(list(ENVIRONMENTS), description="The sources trained on "
                                    "and tested on (the matrix).")
    extra_tests: list[str] = Field(default_factory=list, description="Sources only tested on: "
                                   "extra matrix columns (external benchmarks).")
    variants: list[Weighting] = Field([Weighting.NONE, Weighting.SFC_TWO_STAGE])
    model: ModelParams = Field(default_factory=ModelParams)
    train: TrainParams = Field(default_factory=TrainParams)
    score: ScoreParams = Field(default_factory=ScoreParams)
    paths: Paths = Field(default_factory=Paths)
    tracking: TrackingParams = Field(default_factory=TrackingParams)

    @model_validator(mode="after")
    def _sources(self) -> PipelineParams:
        unknown = sorted(set(self.builtin) - set(ENVIRONMENTS))
        if unknown:
            raise ValueError(f"builtin: unknown synthetic environments {unknown}; known: "
                             f"{list(ENVIRONMENTS)}")
        clash = sorted(set(self.builtin) & set(self.real_datasets))
        if clash:
            raise ValueError(f"real_datasets: {clash} are also builtin names")
        sources = set(self.builtin) | set(self.real_datasets)
        for key in ("environments", "extra_tests"):
            missing = sorted(set(getattr(self, key)) - sources)
            if missing:
                raise ValueError(f"{key}: {missing} are neither builtin environments nor "
                                 f"real_datasets")
        test_only = [e for e in self.environments if e in self.real_datasets
                     and self.real_datasets[e].test_only]
        if test_only:
            raise ValueError(f"environments: {test_only} are test_only (use extra_tests)")
        return self

    # -------------------------------------------------------------- where things lie
    def pairs(self, env: str, split: str) -> Path:
        """A source's split: ``<envs>/<env>/<split>.jsonl`` (images beside it)."""
        return Path(self.paths.envs) / env / f"{split}.jsonl"

    def is_builtin(self, env: str) -> bool:
        return env in self.builtin

    @property
    def base_model(self) -> str:
        return self.model.base or self.paths.base

    @property
    def test_columns(self) -> list[str]:
        return [*self.environments, *self.extra_tests]

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

    @property
    def metrics_dir(self) -> Path:
        return Path(self.paths.metrics)


def load_params(path: str | Path = "params.yaml",
                overrides: list[str] | dict[str, Any] | None = None) -> PipelineParams:
    """``params.yaml`` with dotted overrides (``key=value`` strings or a mapping), validated:
    what the CLI's ``mmrm stage``, DVC and the Prefect flow all call."""
    return load_config(path, overrides or [], PipelineParams)


# ---------------------------------------------------------------------------- stages
def make_benchmark(params: PipelineParams) -> dict:
    """Write the builtin environments in their released formats under ``benchmark/raw``, and
    their best-of-N items."""
    from mmrm.synthetic.environments import BenchmarkConfig, SplitConfig, write_benchmark
    from mmrm.tracking import flatten

    b = params.benchmark
    config = BenchmarkConfig(seed=b.seed, image_size=b.image_size, visual=b.visual,
                             environments=params.builtin,
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
    items = [item for env in params.builtin
             for item in best_of_n_items(env, b.best_of_n.items, b.best_of_n.candidates,
                                         random.Random(f"{b.seed}/{env}/best-of-n"),
                                         visual_level(b.visual))]
    write_best_of_n(items, params.best_of_n, b.image_size)


def convert_environment(params: PipelineParams, env: str) -> dict:
    """Convert one builtin environment's raw splits with the real converters to
    ``<envs>/<env>/``."""
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
    """Convert a released data set (``real_datasets`` in params; under ``data/raw/``, tracked
    by DVC) with its real converter to ``<envs>/<name>/pairs.jsonl`` + ``images/``."""
    from mmrm.convert import convert

    spec = params.real_datasets[name]
    out = params.pairs(name, "pairs")
    with stage_run(params, f"convert/{name}") as tracker:
        if Path(spec.src).is_file():
            tracker.log_dataset(spec.src, f"{name}/raw", "source")
        manifest = convert(spec.format, spec.src, out,
                           image_root=spec.image_root and Path(spec.image_root))
        records = manifest["records"]
        tracker.log_metrics({"pairs": manifest["output"]["pairs"],
                             "skipped": records["skipped"]})
        say(f"{name}: read {records['read']} records, wrote {manifest['output']['pairs']} "
            f"pairs, skipped {records['skipped']} -> {out}")
    return {"pairs": manifest["output"]["pairs"]}


def split_real(params: PipelineParams, name: str) -> dict:
    """Cut a converted data set into train / test / val by a stable hash of a grouping key,
    so that pairs sharing an image or a prompt never straddle two splits; the split manifest
    records the sizes and the leakage check (no image digest or prompt in two splits)."""
    from mmrm.splits import split_pairs

    spec = params.real_datasets[name]
    with stage_run(params, f"split/{name}") as tracker:
        manifest = split_pairs(params.pairs(name, "pairs"), spec.split, spec.test_only)
        tracker.log_metrics({f"pairs/{k}": v for k, v in manifest["pairs"].items()})
        say(f"{name}: " + ", ".join(f"{k} {v}" for k, v in manifest["pairs"].items())
            + f" pairs; shared across splits: {manifest['leakage']}")
    return manifest


def base_is_built(params: PipelineParams) -> bool:
    """Whether ``paths.base`` already holds the tiny base these params ask for: saved, and
    pre-trained with exactly these settings (``pretrain_report.json`` records them). A base
    built for another visual level, seed or step count is not reused."""
    folder = Path(params.paths.base)
    if params.model.base or not (folder / "config.json").exists():
        return False
    try:
        recorded = json.loads((folder / "pretrain_report.json").read_text()).get("config")
    except (OSError, ValueError, AttributeError):
        return False
    return recorded == json.loads(json.dumps(base_config(params).model_dump()))


def base_config(params: PipelineParams):
    """The tiny base's :class:`~mmrm.synthetic.tiny_vlm.TinyVLMConfig` these params ask for."""
    from mmrm.synthetic.tiny_vlm import TinyVLMConfig

    return TinyVLMConfig.model_validate({"visual": params.benchmark.visual, **params.base})


def pretrain_base(params: PipelineParams) -> dict:
    """Build and pre-train the tiny base VLM (the default model profile); with a real base
    (``model.base``) there is nothing to build, and the stage says which folder is used."""
    from mmrm.synthetic.tiny_vlm import pretrain

    if params.model.base:
        folder = Path(params.paths.base)
        folder.mkdir(parents=True, exist_ok=True)
        _write_json(folder / "external_base.json", {"base": params.model.base})
        say(f"base: {params.model.base} (a real VLM: nothing to build)")
        return {"base": params.model.base}
    config = base_config(params)
    with stage_run(params, "base") as tracker:
        tracker.log_params({f"base.{k}": v for k, v in config.model_dump().items()})
        report = pretrain(Path(params.paths.base), config, log=say)
        tracker.log_metrics({"grounding/overall": report["grounding"]["overall"]})
    return report["grounding"]


def train_config(params: PipelineParams, env: str, variant: Weighting | str):
    """The run config of one (environment, variant): the shipped ``tiny/<variant>`` config
    with the pipeline's data, base, output folder and training params."""
    variant = Weighting(variant)
    t = params.train
    config = load_config(params.model.config.format(variant=variant.value), t.overrides)
    changes = {"model": params.base_model, "seed": t.seed, "epochs": t.epochs,
               "max_steps": t.max_steps, "per_device_batch_size": t.batch_size,
               "finetune": t.finetune, "output_dir": str(params.model_dir(env, variant)),
               "optim.lr": t.lr, "data.train": [str(params.pairs(env, "train"))],
               "data.eval": {e: str(params.pairs(e, "test")) for e in params.test_columns}}
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
        cache = train_text_proxy(config, tracker, log=say)
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
    if params.model.processes > 1 and "LOCAL_RANK" not in os.environ:
        return launch_distributed(params, "train", env, variant.value)
    if int(os.environ.get("RANK", "0")) != 0:      # one process of several: rank 0 logs
        params = with_overrides(params, {"tracking.enabled": False})
    config = train_config(params, env, variant)
    with stage_run(params, f"train/{env}/{variant.value}") as tracker:
        tracker.set_tags({"mmrm.environment": env, "mmrm.variant": variant.value,
                          "mmrm.model_dir": str(Path(config.output_dir) / "final")})
        tracker.log_dataset(params.pairs(env, "train"), f"{env}/train", "training")
        for e in params.test_columns:
            tracker.log_dataset(params.pairs(e, "test"), f"{e}/test", "evaluation")
        tracker.log_artifact(_write_json(Path(config.output_dir) / "resolved_config.json",
                                         config.model_dump(mode="json")))
        result = train(config, tracker, log=say, resume=False)
        summary = id_ood(result, env, params.test_columns)
        # ID / OOD again under names that sort first in MLflow's compare view
        tracker.log_metrics({**summary, "ID": summary["iid_mean"], "OOD": summary["ood_mean"]})
        if params.tracking.enabled:
            register_reward_model(Path(config.output_dir) / "final",
                                  params.tracking.registered_model,
                                  {"environment": env, "variant": variant.value, **summary})
    return {**result, **summary}


def launch_command(params: PipelineParams, stage: str, env: str, variant: str,
                   params_file: Path) -> list[str]:
    """``accelerate launch`` of one stage over ``model.processes`` processes."""
    command = [sys.executable, "-m", "accelerate.commands.launch",
               "--num_processes", str(params.model.processes)]
    if params.model.accelerate_config:
        command += ["--config_file", params.model.accelerate_config]
    return command + ["-m", "mmrm", "stage", stage, "--env", env, "--variant", variant,
                      "--params", str(params_file)]


def launch_distributed(params: PipelineParams, stage: str, env: str, variant: str) -> dict:
    """Run a training stage on ``model.processes`` GPUs through accelerate (the same stage
    function runs in every process; rank 0 tracks and saves); its result from the saved run."""
    params_file = _write_yaml(Path(params.paths.runs) / "launch" / f"{env}-{variant}.yaml",
                              params.model_dump(mode="json"))
    command = launch_command(params, stage, env, variant, params_file)
    say("launching: " + " ".join(command))
    subprocess.run(command, check=True)
    return json.loads((params.model_dir(env, variant) / "result.json").read_text())


def id_ood(result: dict, env: str, environments: list[str]) -> dict[str, float]:
    """``iid_mean`` (accuracy on the training environment's test split) and ``ood_mean``
    (mean accuracy on the others) from a run's ``eval/<env>/accuracy`` results."""
    ood = [result[f"eval/{e}/accuracy"] for e in environments if e != env]
    return {"iid_mean": result[f"eval/{env}/accuracy"],
            "ood_mean": statistics.mean(ood) if ood else float("nan")}


def evaluate(params: PipelineParams) -> dict:
    """The cross-distribution matrix of every trained model; per model its own environment's
    anti-cue accuracy and best-of-N quality on every environment's items; per variant the
    means (``metrics/pipeline.json``, numbers only, a DVC metric kept in git); and the
    champion policy (:func:`mmrm.lineage.promote`) for the best mean OOD model."""
    from mmrm.evaluate import cross_distribution

    models = {f"{env}/{v.value}": params.model_dir(env, v) / "final"
              for env in params.environments for v in params.variants}
    tests = {env: params.pairs(env, "test") for env in params.test_columns}
    with stage_run(params, "evaluate") as tracker:
        say(f"evaluating {len(models)} models on {len(tests)} test sets")
        matrix = cross_distribution(models, tests)
        paths = matrix.write(params.matrix_dir)
        shortcut = {}
        best_of_n = best_of_n_source(params)      # written once, read by every model
        for row, model_dir in models.items():
            shortcut[row] = shortcut_measures(params, row.split("/")[0], model_dir, best_of_n)
            say(f"{row}: " + ", ".join(f"{k} {v:.3f}" for k, v in shortcut[row].items()))
        metrics = variant_metrics(params, matrix, shortcut)
        for variant, values in metrics.items():
            tracker.log_metrics({f"{variant}/{k}": x for k, x in values.items()})
        champion = max(models, key=lambda row: matrix.row_summary(row)["ood"])
        chosen = {"champion": champion, "champion_dir": str(models[champion]),
                  **matrix.row_summary(champion)}
        if params.tracking.enabled:
            chosen["decision"] = promote(params.tracking.registered_model, models[champion],
                                         matrix.row_summary(champion)["ood"],
                                         evaluation_key(tests), active_run_id())
            tracker.set_tags({"mmrm.champion_decision": chosen["decision"]["why"]})
            say(f"registry: {champion} -> @{chosen['decision']['alias']} "
                f"({chosen['decision']['why']})")
        _write_json(params.metrics_dir / "pipeline.json", metrics)
        shutil.copyfile(paths["png"], _parent(params.metrics_dir / "matrix.png"))
        _write_json(params.matrix_dir / "shortcut.json", shortcut)
        # the registry's decision (version numbers) is not an output DVC tracks: it goes to
        # MLflow and beside the runs
        decision = chosen.pop("decision", None)
        _write_json(params.matrix_dir / "champion.json", chosen)
        if decision is not None:
            _write_json(Path(params.paths.runs) / "registry" / "decision.json", decision)
        for path in [*paths.values(), params.matrix_dir / "shortcut.json"]:
            tracker.log_artifact(path, "matrix")
    return {"matrix": matrix, "metrics": metrics, "champion": chosen, "decision": decision}


def variant_metrics(params: PipelineParams, matrix, shortcut: dict) -> dict[str, dict]:
    """Per variant, the means over environments of ID, OOD, anti-cue and best-of-N; and
    ``all`` over every model: numbers only, so ``dvc metrics diff`` compares them."""
    metrics = {}
    for v in params.variants:
        rows = [f"{env}/{v.value}" for env in params.environments]
        summaries = [matrix.row_summary(r) for r in rows]
        keys = sorted({key for r in rows for key in shortcut[r]})
        metrics[v.value] = {"id": statistics.mean(r["id"] for r in summaries),
                            "ood": statistics.mean(r["ood"] for r in summaries),
                            **{key: statistics.mean(shortcut[r][key] for r in rows
                                                    if key in shortcut[r]) for key in keys}}
    total = matrix.summary()
    metrics["all"] = {"id": total["iid_mean"], "ood": total["ood_mean"]}
    return {name: {k: round(x, 6) for k, x in values.items()}
            for name, values in metrics.items()}


def shortcut_measures(params: PipelineParams, env: str, model_dir: Path,
                      best_of_n: tuple[Path, Path]) -> dict[str, float]:
    """One model's accuracy on its environment's anti-cue split (own cue on the rejected
    side) and the quality of its best-of-N picks over every environment's items
    (``best_of_n``: the items file and image root of :func:`best_of_n_source`)."""
    from mmrm.data import load_pairs
    from mmrm.evaluate import best_of_n_file, pairwise_accuracy
    from mmrm.inference import load_reward_model, score_pairs

    model, collator = load_reward_model(model_dir)
    measures = {}
    if params.is_builtin(env):        # a released data set has no anti-cue split
        measures["anticue"] = pairwise_accuracy(*score_pairs(
            model, collator, load_pairs(params.pairs(env, "anticue"))))
    items, root = best_of_n
    report = best_of_n_file(model, collator.processor, items, image_root=root)
    measures.update(bon_correct=report["fully_correct"], bon_errors=report["mean_errors"],
                    bon_random=report["random_fully_correct"],
                    bon_oracle=report["oracle_fully_correct"])
    return measures


def best_of_n_source(params: PipelineParams) -> tuple[Path, Path]:
    """The best-of-N items of known quality and their image root: the synthetic items when
    there are builtin environments; else every environment's test pairs as two answers of
    known order (the chosen one right), written under ``runs``."""
    if params.builtin:
        return params.best_of_n, params.best_of_n.parent
    path = Path(params.paths.runs) / "best_of_n" / "items.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for env in params.environments:
            for line in params.pairs(env, "test").read_text().splitlines():
                pair = json.loads(line)
                image = (params.pairs(env, "test").parent / pair["img_path"]).resolve()
                f.write(json.dumps({"id": f"{env}/{pair['id']}", "prompt": pair["prompt"],
                                    "img_path": str(image),
                                    "responses": [pair["chosen"], pair["rejected"]],
                                    "errors": [0, 1]}) + "\n")
    return path, Path(params.paths.envs).resolve()


def score_sample(params: PipelineParams) -> dict:
    """Score the best-of-N items (known quality) with the champion model on Ray, and report
    how good its picks are."""
    from mmrm.evaluate import best_of_n_quality
    from mmrm.score import ScoreConfig, score_file

    champion = json.loads((params.matrix_dir / "champion.json").read_text())
    out = Path(params.paths.runs) / "scores"
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("scores.*"):
        stale.unlink()             # a rerun of this stage scores afresh
    with stage_run(params, "score") as tracker:
        say(f"scoring the best-of-N items with {champion['champion']} on Ray")
        items, root = best_of_n_source(params)
        totals = score_file(ScoreConfig(model=champion["champion_dir"], input=str(items),
                                        image_root=str(root),
                                        output=str(out / "scores.jsonl"),
                                        workers=params.score.workers,
                                        gpus_per_worker=params.score.gpus_per_worker,
                                        dtype=params.score.dtype,
                                        batch_responses=params.score.batch_responses))
        scored = [json.loads(line) for line in open(out / "scores.jsonl")]
        quality = best_of_n_quality([s["errors"] for s in scored], [s["scores"] for s in scored])
        rate = totals["responses"] / max(totals["seconds"], 1e-9)
        tracker.log_metrics({"score/items": totals["items_scored"],
                             "score/responses_per_second": rate,
                             **{f"best_of_n/{k}": v for k, v in quality.items()}})
    _write_json(out / "best_of_n.json", {"model": champion["champion"], **quality})
    _write_json(params.metrics_dir / "best_of_n.json",
                {k: round(v, 6) for k, v in quality.items()})
    say(f"best-of-{len(scored[0]['scores'])} with the champion: fully correct picks "
        f"{quality['fully_correct']:.3f} (random {quality['random_fully_correct']:.3f}, "
        f"oracle {quality['oracle_fully_correct']:.3f})")
    return {"items": totals["items_scored"], "output": str(out / "scores.jsonl"), **quality}


def _parent(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _write_yaml(path: Path, data: dict) -> Path:
    import yaml

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data))
    return path


def _write_json(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return path


STAGES = {"benchmark": make_benchmark, "convert": convert_environment,
          "convert-real": convert_real, "split": split_real, "base": pretrain_base,
          "proxy": train_proxy, "train": train_variant, "evaluate": evaluate,
          "score": score_sample}
