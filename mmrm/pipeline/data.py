"""The data stages: the built-in benchmark in its released formats, converted by the real
converters (``benchmark``, ``convert``), and released data sets converted and split
(``convert_real``, ``split``). Every source lands in ``<envs>/<name>/`` and the stages after
do not care which kind it is."""

from __future__ import annotations

import json
import random
from pathlib import Path

from mmrm.tracking.runs import stage_run
from mmrm.pipeline import say
from mmrm.pipeline.params import PipelineParams


def benchmark_config(params: PipelineParams):
    """The :class:`~mmrm.synthetic.environments.BenchmarkConfig` these params ask for: per
    builtin environment a train and a test split at the params' cue rates, an anti-cue test
    split (every cue against the side training favoured), with ``benchmark.neutral`` a
    cue-neutral train split (every cue at random) and with ``benchmark.val_size`` a
    validation split drawn like the train split."""
    from mmrm.synthetic.environments import BenchmarkConfig, SplitConfig

    b = params.benchmark
    rates = {"cue_rate": b.cue_rate, "foreign_cue_rate": b.foreign_cue_rate}
    splits = [SplitConfig(name="train", size=b.train_size, **rates),
              SplitConfig(name="test", size=b.test_size, **rates),
              SplitConfig(name="anticue", size=b.test_size, cue_rate=0.0,
                          foreign_cue_rate=b.anticue_foreign_rate)]
    if b.neutral:
        splits.append(SplitConfig(name="neutral", size=b.train_size, cue_rate=0.5,
                                  foreign_cue_rate=0.5))
    if b.val_size:            # last: each split draws from its own seed, the others stay
        splits.append(SplitConfig(name="val", size=b.val_size, **rates))
    return BenchmarkConfig(seed=b.seed, image_size=b.image_size, visual=b.visual,
                           environments=params.builtin, splits=splits)


def make_benchmark(params: PipelineParams) -> dict:
    """Write the builtin environments in their released formats under ``benchmark/raw``, and
    their best-of-N items."""
    from mmrm.synthetic.environments import write_benchmark
    from mmrm.config import flatten

    with stage_run(params, "benchmark") as tracker:
        tracker.log_params(flatten(params.benchmark.model_dump(), "benchmark."))
        written = write_benchmark(Path(params.paths.benchmark) / "raw", benchmark_config(params))
        write_best_of_n_sets(params)
    say(f"benchmark: {len(written)} splits of {len(params.builtin)} environments")
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
    say(f"{env}: " + ", ".join(f"{k} {v}" for k, v in counts.items()) + " pairs")
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
