"""``params.yaml``: what the pipeline runs, validated on load like every config (a bad key
fails with ``file: key: problem``), and where each stage's files lie."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator, model_validator

from mmrm.config import (ProxySource, Strict, TrainConfig, Weighting, apply_overrides,
                         flatten, load_config, with_overrides)
from mmrm.synthetic.environments import ENVIRONMENTS
from mmrm.synthetic.visual import LevelName


class BestOfNParams(Strict):
    items: int = Field(40, gt=0, description="Best-of-N items per environment.")
    candidates: int = Field(8, ge=2, description="Answers per item (0-3 mistakes each).")


class BenchmarkParams(Strict):
    seed: int = 0
    visual: LevelName = Field("V0", description="Visual-cost level (mmrm.synthetic.visual); "
                              "the base is pre-trained for the same level.")
    cue_rate: float = Field(0.85, ge=0, le=1, description="P(own cue on the preferred side) "
                            "in each environment's train and test splits.")
    foreign_cue_rate: float = Field(0.5, ge=0, le=1, description="P(each other "
                                    "environment's cue on the preferred side) in train and "
                                    "test splits: 0.5 places it at random, below 0.5 reverses "
                                    "it (a shortcut of one data set that points the other way "
                                    "in the others).")
    train_size: int = Field(3000, gt=0, description="Pairs per environment's train split.")
    test_size: int = Field(600, gt=0, description="Pairs per environment's test split (and "
                           "its anti-cue split: every cue against the side training favoured).")
    neutral: bool = Field(False, description="Also write a cue-neutral train split per "
                          "environment (own cue at rate 0.5, train_size pairs): what the "
                          "`neutral` variant trains on.")
    val_size: int = Field(0, ge=0, description="Pairs per environment's validation split "
                          "(drawn like the train split, never trained on): what the "
                          "`interpolated` variant chooses its weights on; 0 writes none.")
    image_size: int = Field(56, ge=16)
    best_of_n: BestOfNParams = Field(default_factory=BestOfNParams)

    @property
    def anticue_foreign_rate(self) -> float:
        """The anti-cue split's foreign-cue rate: a foreign cue training favoured on one side
        goes on the other; one placed at random stays random."""
        if self.foreign_cue_rate == 0.5:
            return 0.5
        return 0.0 if self.foreign_cue_rate > 0.5 else 1.0


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


class InterpolationParams(Strict):
    """The ``interpolated`` derived variant: the standard RM's weights averaged with a
    shortcut-aware RM's of the same environment (WiSE-FT; :mod:`mmrm.interpolate`), the
    partner and alpha chosen on validation pairs by :func:`mmrm.interpolate.choose`: reads
    no test data."""

    partners: list[str] | None = Field(None, description="Variants (of `variants`) whose "
                                       "RM may be averaged with `none`'s (default: every "
                                       "shortcut-aware one).")
    alphas: list[float] = Field([0.2, 0.4, 0.6, 0.8, 1.0],
                                description="The partner's share of the weights tried (0 "
                                "is `none` itself, always a candidate).")
    tolerance: float = Field(0.01, ge=0, description="A candidate's validation accuracy may "
                             "be at most this far below `none`'s.")

    @field_validator("alphas")
    @classmethod
    def _shares(cls, value: list[float]) -> list[float]:
        if not value or any(not 0 <= a <= 1 for a in value):
            raise ValueError("alphas: shares between 0 and 1, at least one")
        return value


#: Run-config keys the pipeline sets itself in every run (from its paths and sources): a
#: ``train:`` entry for one of them would be overwritten, so it is refused.
SET_BY_PIPELINE = ("model", "output_dir", "data.train", "data.eval", "shortcut.proxy_losses",
                   "shortcut.teacher", "shortcut.teacher_margins")
#: The derived variant that is not a run config: ``none`` averaged with a partner.
INTERPOLATED = "interpolated"
#: The variant whose RM teaches conf_reg and anchors the interpolation: the standard RM.
STANDARD = "none"
#: Variants that train on another split of their environment than ``train``: the cue-neutral
#: reference RM, the standard recipe on pairs whose own cue sits on either side at random
#: (what reading the image is worth under the same recipe: the headroom).
TRAINED_ON = {"neutral": "neutral"}


def dotted(tree: dict) -> dict[str, Any]:
    """``train:``'s keys dotted (``data.eval``, a mapping of names to files, stays whole)."""
    return flatten(tree, keep=("data.eval",))


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
    variants: list[str] = Field(["none", "sfc_two_stage"], description="Run configs trained "
                                "per environment: names filled into model.config (the shipped "
                                "tiny/<variant>: none, sfc_joint, sfc_two_stage, "
                                "sfc_normalized, group_balance, poe, neutral).")
    derived_variants: list[str] = Field(default_factory=list, description="Reward models "
                                        "built after `variants` from the standard RM (`none`) "
                                        "of the same environment: conf_reg (a run config "
                                        "whose teacher is `none`) and interpolated (`none`'s "
                                        "weights averaged with a shortcut-aware variant's).")
    interpolation: InterpolationParams = Field(default_factory=InterpolationParams)
    model: ModelParams = Field(default_factory=ModelParams)
    train: dict[str, Any] = Field(default_factory=dict, description="Keys of the run config "
                                  "(nested or dotted, e.g. optim.lr) set in every run over its "
                                  "model.config; empty: the configs' own values.")
    score: ScoreParams = Field(default_factory=ScoreParams)
    paths: Paths = Field(default_factory=Paths)
    tracking: TrackingParams = Field(default_factory=TrackingParams)

    @field_validator("train")
    @classmethod
    def _not_set_by_pipeline(cls, value: dict[str, Any]) -> dict[str, Any]:
        for key in dotted(value):
            if key in SET_BY_PIPELINE or any(key.startswith(k + ".") for k in
                                             SET_BY_PIPELINE):
                raise ValueError(f"train.{key}: set by the pipeline for every run")
        return value          # as written (nested or dotted): what DVC's params see

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
        if "derived" in sources:
            raise ValueError("`derived` is not a source name (runs/models/derived/ holds the "
                             "derived variants)")
        test_only = [e for e in self.environments if e in self.real_datasets
                     and self.real_datasets[e].test_only]
        if test_only:
            raise ValueError(f"environments: {test_only} are test_only (use extra_tests)")
        return self

    @model_validator(mode="after")
    def _variants(self) -> PipelineParams:
        for variant, split in TRAINED_ON.items():
            if variant in self.variants:
                released = [e for e in self.environments if e not in self.builtin]
                if released or not self.benchmark.neutral:
                    raise ValueError(f"variants: {variant} trains on each builtin environment's "
                                     f"{split} split: needs benchmark.neutral: true and no "
                                     f"released environments (here {released})")
        self._derived()
        proxies = {}
        for variant in self.trained_variants:  # each run config exists and takes train:
            shortcut = variant_config(self, variant).shortcut
            if shortcut.proxy is ProxySource.CROSS_FIT:
                proxies[variant] = (shortcut.proxy_mode.value, shortcut.proxy_folds)
            if (shortcut.weighting is Weighting.CONF_REG) != (variant in self.derived_variants):
                raise ValueError(f"variants: {variant}: a conf_reg run config is a derived "
                                 f"variant (its teacher is `none`), and only one is: list it "
                                 f"under " + ("derived_variants" if variant in self.variants
                                              else "variants"))
        if len(set(proxies.values())) > 1:
            raise ValueError(f"variants: one proxy stage serves every cross_fit variant, but "
                             f"their proxy_mode / proxy_folds differ: {proxies}")
        return self

    def _derived(self) -> None:
        both = sorted(set(self.variants) & set(self.derived_variants))
        if both:
            raise ValueError(f"derived_variants: {both} are also in variants")
        if self.derived_variants and STANDARD not in self.variants:
            raise ValueError(f"derived_variants: {self.derived_variants} are built from the "
                             f"standard RM: variants must include {STANDARD}")
        if INTERPOLATED not in self.derived_variants:
            return
        partners = self.interpolation_partners
        if not partners:
            raise ValueError(f"derived_variants: {INTERPOLATED} needs a shortcut-aware variant "
                             f"in variants to average {STANDARD} with")
        foreign = sorted(set(partners) - set(self.variants))
        if foreign or STANDARD in partners:
            raise ValueError(f"interpolation.partners: {foreign or [STANDARD]}: partners are "
                             f"variants other than {STANDARD}")
        missing = [e for e in self.environments if (e in self.builtin and not
                   self.benchmark.val_size) or (e in self.real_datasets and
                                                 not self.real_datasets[e].split.val)]
        if missing:
            raise ValueError(f"derived_variants: {INTERPOLATED} chooses on validation pairs: "
                             f"{missing} have none (benchmark.val_size, or split.val of a "
                             f"released data set)")

    @property
    def trained_variants(self) -> list[str]:
        """Every variant that is a run config: ``variants`` and the derived ones but
        ``interpolated``."""
        return [*self.variants, *(v for v in self.derived_variants if v != INTERPOLATED)]

    @property
    def all_variants(self) -> list[str]:
        """Every reward model of an environment: ``variants``, then ``derived_variants``."""
        return [*self.variants, *self.derived_variants]

    @property
    def interpolation_partners(self) -> list[str]:
        """The variants ``interpolated`` may average ``none`` with."""
        if self.interpolation.partners is not None:
            return list(self.interpolation.partners)
        return [v for v in self.variants if v != STANDARD and variant_config(self, v).shortcut.aware]

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

    def proxies(self, env: str) -> list[Path]:
        """The saved text-only proxies of ``env`` (one per fold), from its proxy cache
        (none before the proxy stage ran)."""
        cache = self.proxy_dir(env) / "proxy_losses.json"
        if not cache.exists():
            return []
        return [Path(p) for p in json.loads(cache.read_text())["proxies"]]

    def model_dir(self, env: str, variant: str) -> Path:
        """A reward model's run folder: ``models/<env>/<variant>``, a derived variant's
        ``models/derived/<env>/<variant>`` (apart from the models it is built from)."""
        if variant in self.derived_variants:
            return Path(self.paths.runs) / "models" / "derived" / env / variant
        return Path(self.paths.runs) / "models" / env / variant

    @property
    def matrix_dir(self) -> Path:
        return Path(self.paths.runs) / "matrix"

    @property
    def metrics_dir(self) -> Path:
        return Path(self.paths.metrics)


def variant_config(params: PipelineParams, variant: str) -> TrainConfig:
    """A variant's run config (``model.config``) with the params' ``train:`` over it: what
    every run of that variant starts from, before the pipeline sets its data, base and
    folders."""
    name = params.model.config.format(variant=variant)
    try:
        return load_config(name, dotted(params.train))
    except ValueError as err:
        raise ValueError(f"train over variant {variant}: {err}".replace("\n", "; ")) from None


def train_config(params: PipelineParams, env: str, variant: str) -> TrainConfig:
    """The run config of one (environment, variant): :func:`variant_config` with the
    pipeline's data, base and output folder."""
    config = variant_config(params, variant)
    split = TRAINED_ON.get(variant, "train")
    changes = {"model": params.base_model, "output_dir": str(params.model_dir(env, variant)),
               "data.train": [str(params.pairs(env, split))],
               "data.eval": {e: str(params.pairs(e, "test")) for e in params.test_columns}}
    # the cross-fitted proxies' cache: the weights of cross_fit runs, and the proxy statistics
    # of a standard run on the same pairs (a joint proxy makes its own)
    if config.shortcut.proxy is not ProxySource.JOINT and split == "train":
        changes["shortcut.proxy_losses"] = str(params.proxy_dir(env) / "proxy_losses.json")
    if config.shortcut.weighting is Weighting.CONF_REG:     # taught by the standard RM
        changes["shortcut.teacher"] = str(params.model_dir(env, STANDARD) / "final")
        changes["shortcut.teacher_margins"] = str(params.model_dir(env, variant) /
                                                  "teacher_margins.json")
    return with_overrides(config, changes, f"params: train {env}/{variant}")


def proxy_variant(params: PipelineParams) -> str:
    """The variant whose run config the proxies are cross-fitted from: the first with
    ``shortcut.proxy: cross_fit`` (its proxy mode and folds), else ``none`` (the proxies
    then serve the standard runs' statistics only)."""
    return next((v for v in params.trained_variants
                 if variant_config(params, v).shortcut.proxy is ProxySource.CROSS_FIT), "none")


def proxy_run_config(params: PipelineParams, env: str) -> TrainConfig:
    """The run config the text-only proxies of ``env`` are cross-fitted from
    (:func:`proxy_variant`, with ``train:``), the proxy cache in the proxy stage's folder."""
    config = train_config(params, env, proxy_variant(params))
    return with_overrides(config, {"output_dir": str(params.proxy_dir(env)),
                                   "shortcut.proxy_losses": str(params.proxy_dir(env) /
                                                                "proxy_losses.json")},
                          f"params: proxy {env}")


def load_params(path: str | Path = "params.yaml",
                overrides: list[str] | dict[str, Any] | None = None) -> PipelineParams:
    """``params.yaml`` with dotted overrides (``key=value`` strings or a mapping), validated:
    what the CLI's ``mmrm stage``, DVC and the Prefect flow all call."""
    return load_config(path, overrides or [], PipelineParams)


__all__ = ["PipelineParams", "load_params", "train_config", "proxy_run_config", "variant_config",
           "apply_overrides"]
