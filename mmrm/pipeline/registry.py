"""The one registry of the pipeline's stages: name, function, fan-out, what each reads and
writes, which params sections it depends on, and which stages come before it.

Everything that runs the pipeline follows it: ``mmrm stage NAME`` (its choices and
options), the Prefect flow (its graph, :func:`instances` and :func:`upstream`),
:func:`run_in_order` (one process, e.g. a study's replicate) and ``dvc.yaml``, which
:mod:`mmrm.pipeline.dvcfile` renders from it with each stage's code dependencies computed
from the import closure of its function (``mmrm dvc-yaml``; a test keeps the committed file
equal to the rendered one).

Paths in ``deps`` / ``outs`` are templates: ``{paths.envs}`` is a params path, ``{env}``,
``{variant}``, ``{name}`` and ``{src}`` the fan-out's item.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import product

from mmrm.pipeline import base, data, evaluation, scoring, training
from mmrm.pipeline.params import PipelineParams

#: Fan-out over a params field -> the stage function's argument (and `mmrm stage` option).
ARGUMENT = {"builtin": "env", "environments": "env", "real_datasets": "name",
            "variants": "variant", "derived_variants": "variant"}


@dataclass(frozen=True)
class Stage:
    """One stage of the pipeline."""

    name: str                                   # `mmrm stage NAME`, dvc.yaml, Prefect task
    run: Callable[..., dict]                    # run(params, **one instance's arguments)
    over: tuple[str, ...] = ()                  # params fields it fans out over
    deps: tuple[str, ...] = ()                  # data it reads (code deps are computed)
    outs: tuple[str, ...] = ()
    params: tuple[str, ...] = ()                # params.yaml sections it depends on
    after: tuple[str, ...] = ()                 # stages whose outputs it reads
    after_every: tuple[str, ...] = ()           # ... every run of them, whatever its fan-out
    match: tuple[str, ...] | None = None        # arguments an `after` run must share (None:
                                                # every argument both have)
    metrics: tuple[str, ...] = ()               # small numbers-only files kept in git
    plots: tuple[str, ...] = ()
    reuse: Callable[[PipelineParams], bool] | None = None   # the flow skips it when true
    retries: int = 0                            # flaky engines (Ray): the flow retries

    @property
    def arguments(self) -> tuple[str, ...]:
        return tuple(ARGUMENT[field] for field in self.over)


STAGES: tuple[Stage, ...] = (
    Stage("benchmark", data.make_benchmark, params=("benchmark", "builtin"),
          outs=("{paths.benchmark}/raw", "{paths.benchmark}/best_of_n")),
    Stage("convert", data.convert_environment, over=("builtin",),
          deps=("{paths.benchmark}/raw",), outs=("{paths.envs}/{env}",), after=("benchmark",)),
    Stage("convert-real", data.convert_real, over=("real_datasets",), deps=("{src}",),
          outs=("{paths.envs}/{name}/pairs.jsonl", "{paths.envs}/{name}/pairs.manifest.json",
                "{paths.envs}/{name}/images")),
    Stage("split", data.split_real, over=("real_datasets",),
          deps=("{paths.envs}/{name}/pairs.jsonl",), params=("real_datasets.{name}",),
          outs=("{paths.envs}/{name}/train.jsonl", "{paths.envs}/{name}/test.jsonl",
                "{paths.envs}/{name}/val.jsonl", "{paths.envs}/{name}/split.manifest.json"),
          after=("convert-real",)),
    Stage("base", base.pretrain_base, params=("base", "benchmark.visual", "model.base"),
          outs=("{paths.base}",), after=("benchmark",), reuse=base.base_is_built),
    Stage("proxy", training.train_proxy, over=("environments",),
          deps=("{paths.base}", "{paths.envs}/{env}/train.jsonl", "{paths.envs}/{env}/images"),
          params=("train", "model", "variants"), outs=("{paths.runs}/proxy/{env}",),
          after=("convert", "split", "base")),
    Stage("train", training.train_variant, over=("environments", "variants"),
          deps=("{paths.base}", "{paths.envs}", "{paths.runs}/proxy/{env}"),
          params=("train", "model", "extra_tests"),
          outs=("{paths.runs}/models/{env}/{variant}",), after=("proxy",),
          after_every=("convert", "split")),     # every environment's test set: its evals
    # built from the standard RM of the same environment (conf_reg's teacher; interpolated's
    # anchor), so after every train run of that environment
    Stage("derive", training.derive_variant, over=("environments", "derived_variants"),
          deps=("{paths.base}", "{paths.envs}", "{paths.runs}/proxy/{env}",
                "{paths.runs}/models/{env}"),
          params=("train", "model", "extra_tests", "interpolation"),
          outs=("{paths.runs}/models/derived/{env}/{variant}",), after=("train",),
          match=("env",)),
    Stage("evaluate", evaluation.evaluate,
          deps=("{paths.runs}/models", "{paths.runs}/proxy", "{paths.envs}",
                "{paths.benchmark}/best_of_n"),
          params=("environments", "extra_tests", "variants", "derived_variants"),
          outs=("{paths.runs}/matrix",),
          metrics=("{paths.metrics}/pipeline.json",), plots=("{paths.metrics}/matrix.png",),
          after=("train", "derive")),
    Stage("score", scoring.score_sample,
          deps=("{paths.runs}/matrix", "{paths.benchmark}/best_of_n"), params=("score",),
          outs=("{paths.runs}/scores",), metrics=("{paths.metrics}/best_of_n.json",),
          after=("evaluate",), retries=2),
)
BY_NAME = {stage.name: stage for stage in STAGES}


def stage(name: str) -> Stage:
    """The stage called ``name``; an unknown name is a ValueError listing the known ones."""
    if name not in BY_NAME:
        raise ValueError(f"no stage {name!r}; stages: {', '.join(BY_NAME)}")
    return BY_NAME[name]


def instances(params: PipelineParams, stage: Stage) -> list[dict[str, str]]:
    """The runs of ``stage`` these params ask for: one per item of its fan-out (each a dict
    of the function's arguments), or one without arguments."""
    fields = [list(getattr(params, field)) for field in stage.over]
    return [dict(zip(stage.arguments, items)) for items in product(*fields)]


def upstream(stage: Stage, arguments: dict[str, str], params: PipelineParams
             ) -> Iterator[tuple[Stage, dict[str, str]]]:
    """The runs this run of ``stage`` waits for: each run of the stages in ``after`` whose
    arguments agree with its own where they share a name (``train[povid/none]`` waits for
    ``proxy[povid]`` only; ``evaluate`` for every ``train``; where the stage names
    ``match``, only those arguments must agree: ``derive[povid/conf_reg]`` waits for every
    ``train[povid/...]``), and every run of the stages in ``after_every``
    (``train[povid/none]`` evaluates on every environment's test set)."""
    for name in stage.after + stage.after_every:
        before = BY_NAME[name]
        for other in instances(params, before):
            shared = other.keys() & arguments.keys()
            if stage.match is not None:
                shared &= set(stage.match)
            if name in stage.after_every or all(other[k] == arguments[k] for k in shared):
                yield before, other


def run_in_order(params: PipelineParams,
                 call: Callable[[Stage, dict[str, str]], dict] | None = None
                 ) -> dict[str, list[dict]]:
    """Every stage these params ask for, one after the other in this process (what the
    Prefect flow does without Ray, through ``call``; a study's replicate calls the functions
    directly). A stage whose ``reuse`` test holds (a base built for these very settings) is
    skipped.

    Returns each stage's results, in the order of its runs.
    """
    call = call or (lambda each, arguments: each.run(params, **arguments))
    results: dict[str, list[dict]] = {}
    for each in STAGES:
        if each.reuse is not None and each.reuse(params):
            results[each.name] = [{"reused": True}]
            continue
        results[each.name] = [call(each, arguments) for arguments in instances(params, each)]
    return results
