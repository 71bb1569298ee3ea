"""The pre-registered sweep of issue 15: does shortcut-aware training help where the standard
RM rides the text cue? Visual cost x cue strength, standard vs shortcut-aware RMs, many seeds.

For every cell (visual level V, training cue rate c) and replicate (base seed b, data seed d),
and every environment e (POVID-, RLHF-V-, VLFeedback-like):

* ``none``: the standard Bradley-Terry RM trained on e's train split (own cue at rate c);
* ``sfc_joint``: the paper's recipe, the text-only proxy trained in the same steps;
* ``sfc_two_stage``: proxies cross-fitted on 2 folds first, each pair weighted by the loss of
  the proxy that never saw it;
* ``group_balance`` (only when asked for; not in the pre-registered grid): the same proxies'
  verdicts as fixed JTT-style weights (``shortcut.formula=group_balance``);
* ``proxy``: those text-only proxies, tested on e's test split (shortcut strength);
* ``headroom``: a standard RM trained on e's cue-neutral split (rate 0.5): what reading the
  image is worth under the same recipe.

With ``--frame-shift`` every RM is also tested on e's scenes in sentence frames that no
training split uses (``FRAME_SHIFT``), at rate c and anti-cue: whether what it learned holds
when only the phrasing changes (added after the grid's results; not pre-registered with it).

Every RM is tested on each environment's test split at rate c (ID: e's own; OOD: the mean
of the others), on e's *anti-cue* split (e's cue on the rejected side), and on best-of-N
items of every environment with random cues and known quality. SFD is the RM's accuracy on
the pairs the proxy gets right minus on those it gets wrong (e's test split). *Cue-balanced*
accuracy is the mean of the accuracy on e's test pairs whose own cue sits on the preferred
side and the anti-cue accuracy: what the RM would score on e with its cue on either side at
random, a shift of the cue alone, without the OOD columns' change of task (added after the
grid's results, as a diagnostic; not among the pre-registered measures).

Per cell it prints and writes (``sweep.json``, ``sweep.md``): the means of ID, OOD,
anti-cue, headroom, proxy accuracy, SFD, best-of-N, the SFC-free criteria of the default,
and each shortcut-aware variant's paired difference from ``none`` (same replicate) with a
95% percentile-bootstrap CI over replicates; ``phase.png`` shows the OOD gain per cell.
Results are cached per run under ``--work``; a rerun only runs what is missing (and stops
before any work if a cached run was made with other settings: another recipe, base, override,
...; ``--trust-cache`` reuses such runs on purpose), and ``--variants none proxy headroom``
runs the SFC-free part alone (the default benchmark is chosen from it before any
shortcut-aware run), ``--report-only`` reports what is cached of a partly run grid.
``--mlflow`` logs every cell.

    python benchmarks/shortcut_sweep.py --work runs/sweep --jobs 2
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from itertools import product
from multiprocessing import get_context
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ENVIRONMENTS = ("povid", "rlhfv", "vlfeedback")
SFC = ("sfc_joint", "sfc_two_stage")
#: Shortcut-aware RMs the sweep can train: SFC's two, and ``group_balance`` (the two-stage
#: proxy's verdicts as fixed JTT-style weights, ``shortcut.formula``: an exploration after the
#: grid, run only when asked for).
AWARE = (*SFC, "group_balance")
GRID = ("none", *SFC, "proxy", "headroom")     # the pre-registered grid's variants
VARIANTS = (*GRID, "group_balance")

#: The recipe every run shares (``configs/tiny/none.yaml`` with these changed): the paper's
#: frozen vision tower; the budget checked on cue-neutral runs (README, "The shortcut study").
RECIPE = {"finetune": "freeze_vision", "optim.lr": 1e-3, "epochs": 4.0,
          "per_device_batch_size": 32}
#: Answer sentences of ``--frame-shift``: none is a training frame of any environment, and
#: all are made of words the tiny base's tokenizer knows (no <unk>), so they change the
#: phrasing only.
FRAME_SHIFT = {"povid": "This picture shows {}.", "rlhfv": "This is {}.",
               "vlfeedback": "In this picture there is {}."}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--work", type=Path, default=Path("runs/sweep"))
    parser.add_argument("--cache", type=Path, default=None, help="Where bases and data are "
                        "made once and reused (default: --work); runs of other recipes can "
                        "share it.")
    parser.add_argument("--levels", nargs="+", default=["V1", "V2", "V3"])
    parser.add_argument("--cue-rates", nargs="+", type=float, default=[0.85, 0.95])
    parser.add_argument("--base-seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--data-seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--variants", nargs="+", default=list(GRID), choices=VARIANTS)
    parser.add_argument("--train-size", type=int, default=2000)
    parser.add_argument("--test-size", type=int, default=200)
    parser.add_argument("--bon-items", type=int, default=30, help="Per environment.")
    parser.add_argument("--bon-candidates", type=int, default=8)
    parser.add_argument("--lr", type=float, default=RECIPE["optim.lr"])
    parser.add_argument("--epochs", type=float, default=RECIPE["epochs"])
    parser.add_argument("--finetune", default=RECIPE["finetune"])
    parser.add_argument("--base-steps", type=int, nargs=2, metavar=("ALIGN", "TUNE"),
                        help="Pre-training steps of the bases (default: the base's own).")
    parser.add_argument("--jobs", type=int, default=2, help="Runs in parallel (1 thread each).")
    parser.add_argument("--resamples", type=int, default=10000)
    parser.add_argument("--mlflow", action="store_true", help="Log every cell to MLflow.")
    parser.add_argument("--keep-models", action="store_true")
    parser.add_argument("--frame-shift", action="store_true", help="Also test every RM on its "
                        "environment's scenes in the held-out sentence frames (FRAME_SHIFT).")
    parser.add_argument("--report-only", action="store_true", help="Train nothing: report "
                        "the runs of the grid that are cached (a partly run grid).")
    parser.add_argument("--trust-cache", action="store_true", help="Reuse and report cached "
                        "runs without checking that they were made with these settings (for "
                        "runs copied in on purpose, e.g. the grid's own standard, proxy and "
                        "neutral runs beside an override that only changes SFC's weights).")
    parser.add_argument("overrides", nargs="*", help="dotted key=value for every run")
    args = parser.parse_args(argv)
    args.cache = args.cache or args.work
    return args


# ---------------------------------------------------------------------------- layout
def base_dir(work: Path, level: str, seed: int) -> Path:
    return work / "bases" / f"{level}-s{seed}"


def data_dir(work: Path, level: str, seed: int) -> Path:
    return work / "data" / f"{level}-d{seed}"


def split_name(kind: str, rate: float | None = None) -> str:
    return kind if rate is None else f"{kind}-{round(rate * 100):02d}"


def run_dir(work: Path, level: str, base: int, data: int, rate: float, env: str,
            variant: str) -> Path:
    cell = "neutral" if variant == "headroom" else split_name("c", rate)
    return work / "runs" / level / f"b{base}-d{data}" / cell / env / variant


# ---------------------------------------------------------------------------- inputs
def make_base(work: Path, level: str, seed: int, steps) -> str:
    from mmrm.synthetic.tiny_vlm import TinyVLMConfig, pretrain

    folder = base_dir(work, level, seed)
    if not (folder / "pretrain_report.json").exists():
        extra = {"align_steps": steps[0], "tune_steps": steps[1]} if steps else {}
        started = time.perf_counter()
        pretrain(folder, TinyVLMConfig(visual=level, seed=seed, **extra), log=lambda s: None)
        seconds = round(time.perf_counter() - started, 1)
        (folder / "built.json").write_text(json.dumps({"seconds": seconds}) + "\n")
    return str(folder)


def against_grid_arguments(parser: argparse.ArgumentParser, work: str) -> None:
    """The arguments of a script that measures one replicate of one cell against a finished
    grid (``sweep_budget.py``, ``run_profile.py``): its work folder, the grid's, the cell and
    replicate, the target and the sweep's parallel runs."""
    parser.add_argument("--work", type=Path, default=Path(work))
    parser.add_argument("--grid", type=Path, default=Path("runs/sweep"),
                        help="A finished sweep's work folder: its sweep.json (summed run "
                             "seconds per variant, the grid's arguments) and bases/.")
    parser.add_argument("--level", default="V2")
    parser.add_argument("--rate", type=float, default=0.95, help="The cell's cue rate.")
    parser.add_argument("--base-seed", type=int, default=0)
    parser.add_argument("--data-seed", type=int, default=0)
    parser.add_argument("--hours", type=float, default=2.0, help="The grid's time target.")
    parser.add_argument("--jobs", type=int, default=2, help="Parallel runs the estimate "
                        "assumes (the sweep's --jobs).")


def finished_grid(work: Path, level: str, base_seed: int) -> dict:
    """A finished sweep's ``sweep.json`` (its arguments, summed run seconds per variant,
    cells), for scripts that measure against the grid on one of its cached bases; a folder
    without them stops with a line naming what is missing."""
    if not (base_dir(work, level, base_seed) / "pretrain_report.json").exists():
        raise SystemExit(f"{work}: no base {level}-s{base_seed}: run the sweep first (or "
                         f"point --grid at one)")
    path = work / "sweep.json"
    if not path.exists():
        raise SystemExit(f"{path}: missing: the grid's sweep has not finished there (its run "
                         f"seconds per variant come from this file)")
    return json.loads(path.read_text())


def fresh_replicate(args, grid_args: dict) -> str:
    """For a script that measures one replicate against a finished grid: the replicate's data
    (made like the grid's, once, under ``args.work``) and an empty runs folder there, so that
    every run trains (it never reuses a cached one)."""
    data = make_data(args.work, args.level, args.data_seed, grid_args["cue_rates"],
                     grid_args["train_size"], grid_args["test_size"], grid_args["bon_items"],
                     grid_args["bon_candidates"])
    shutil.rmtree(args.work / "runs", ignore_errors=True)
    return data


def base_seconds(folder: Path) -> float | None:
    """Seconds the base in ``folder`` took to pre-train (the sweep's ``built.json``; bases of
    older sweeps carry them in their report), None where nothing timed it."""
    for name in ("built.json", "pretrain_report.json"):
        path = folder / name
        if path.exists() and "seconds" in (record := json.loads(path.read_text())):
            return record["seconds"]
    return None


def make_data(work: Path, level: str, seed: int, rates: list[float], train: int, test: int,
              bon_items: int, bon_candidates: int) -> str:
    """Train and test splits per cue rate, the neutral and anti-cue splits, best-of-N items."""
    import random

    from mmrm.synthetic.environments import (BenchmarkConfig, SplitConfig, best_of_n_items,
                                             convert_benchmark, write_benchmark,
                                             write_best_of_n)
    from mmrm.synthetic.visual import visual_level

    folder = data_dir(work, level, seed)
    settings = json.dumps({"rates": rates, "train": train, "test": test, "bon": bon_items,
                           "candidates": bon_candidates})
    if made_with(folder / "done", settings, folder, ": use another --cache"):
        return str(folder)
    splits = [SplitConfig(name=split_name("train", r), size=train, cue_rate=r) for r in rates]
    splits += [SplitConfig(name=split_name("test", r), size=test, cue_rate=r) for r in rates]
    splits += [SplitConfig(name="neutral", size=train, cue_rate=0.5),
               SplitConfig(name="anticue", size=test, cue_rate=0.0)]
    config = BenchmarkConfig(seed=seed, visual=level, splits=splits)
    convert_benchmark(folder, write_benchmark(folder / "raw", config))
    items = [item for env in ENVIRONMENTS
             for item in best_of_n_items(env, bon_items, bon_candidates,
                                         random.Random(f"{seed}/{env}/best-of-n"),
                                         visual_level(level))]
    write_best_of_n(items, folder / "best_of_n" / "items.jsonl", config.image_size)
    (folder / "done").write_text(settings)
    return str(folder)


def made_with(marker: Path, settings: str, label: Path, hint: str = "") -> bool:
    """Whether ``marker`` records data made with ``settings`` (JSON with its cue ``rates``):
    False if it is not there; data made for more cue rates serves a sweep over some of them
    (one cell of the grid); data made otherwise stops the sweep."""
    if not marker.exists():
        return False
    made, asked = json.loads(marker.read_text()), json.loads(settings)
    if not (set(asked.pop("rates")) <= set(made.pop("rates")) and made == asked):
        raise SystemExit(f"{label} was made with {marker.read_text()}, not {settings}{hint}")
    return True


def make_frames(work: Path, level: str, seed: int, rates: list[float], test: int) -> str:
    """Per environment, test splits in the held-out frames (``FRAME_SHIFT``): at each cue rate
    (``frames-<rate>``) and anti-cue (``frames-anticue``); new scenes (own split names), the
    same generator otherwise. Written beside the data of ``make_data``."""
    from mmrm.synthetic.environments import (BenchmarkConfig, SplitConfig, convert_benchmark,
                                             write_benchmark)

    folder = data_dir(work, level, seed)
    settings = json.dumps({"rates": rates, "test": test, "frames": FRAME_SHIFT})
    done = folder / "frames-done"
    if made_with(done, settings, done):
        return str(folder)
    splits = [SplitConfig(name=split_name("frames", r), size=test, cue_rate=r) for r in rates]
    splits += [SplitConfig(name="frames-anticue", size=test, cue_rate=0.0)]
    config = BenchmarkConfig(seed=seed, visual=level, splits=splits, frames=FRAME_SHIFT)
    convert_benchmark(folder, write_benchmark(folder / "raw-frames", config))
    done.write_text(settings)
    return str(folder)


def pairs_file(data: str, env: str, split: str) -> str:
    return str(Path(data) / "pairs" / env / f"{split}.jsonl")


# ---------------------------------------------------------------------------- one run
def run_config(spec: dict):
    from mmrm.config import TrainConfig, apply_overrides, load_config

    template = "tiny/none"      # the shipped config (mmrm/configs/tiny/none.yaml)
    variant = spec["variant"]
    weighting = variant if variant in SFC else "sfc_two_stage" if variant in AWARE else "none"
    raw = load_config(template).model_dump(mode="json")
    train_split = "neutral" if variant == "headroom" else split_name("train", spec["rate"])
    raw.update(model=spec["base"], output_dir=spec["out"], seed=spec["seed"], log_steps=5,
               calibration_pairs=0)     # scores are compared within a model only
    raw["data"].update(train=[pairs_file(spec["data"], spec["env"], train_split)], eval={})
    raw["shortcut"] = {"weighting": weighting}
    if weighting == "sfc_two_stage":
        raw["shortcut"]["proxy_losses"] = str(Path(spec["proxy_out"]) / "proxy_losses.json")
    if variant == "group_balance":
        raw["shortcut"]["formula"] = "group_balance"
    raw = apply_overrides(raw, [f"{k}={v}" for k, v in spec["recipe"].items()]
                          + spec["overrides"])
    return TrainConfig.model_validate(raw)


#: A run's settings that do not change its result (the rest must match a cached result's),
#: settings that only some variants read (the neutral RM is tested at every rate; the
#: two-stage runs read their proxies' losses), and the value of a setting that caches made
#: before it existed were run with.
UNCHECKED = ("out", "keep_models")
READ_BY = {"all_rates": ("headroom",), "proxy_out": ("sfc_two_stage", "group_balance")}
BEFORE = {"frame_shift": False}


def same_setting(key: str, cached, wanted) -> bool:
    """Whether a cached run's setting serves a run that wants ``wanted``: paths resolved; a
    neutral RM tested at more rates than wanted serves (the report reads the wanted ones)."""
    if key in ("base", "data", "proxy_out") and cached is not None and wanted is not None:
        return Path(cached).resolve() == Path(wanted).resolve()
    if key == "all_rates" and cached is not None and wanted is not None:
        return set(wanted) <= set(cached)
    return cached == wanted


def spec_differences(cached: dict, spec: dict) -> list[str]:
    """The settings of ``spec`` that a cached run's ``cached`` spec does not serve, each as
    ``key: cached value, here value``."""
    out = []
    for key in sorted(set(spec) | set(cached)):
        if key in UNCHECKED or spec["variant"] not in READ_BY.get(key, (spec["variant"],)):
            continue
        was, now = cached.get(key, BEFORE.get(key)), spec.get(key, BEFORE.get(key))
        if not same_setting(key, was, now):
            out.append(f"{key}: {json.dumps(was)}, here {json.dumps(now)}")
    return out


def cached_result(spec: dict, trust: bool = False) -> dict | None:
    """The run's cached result, or None; a result made with other settings (another recipe,
    base, rates, ...) is an error naming its file, not a result of these (unless ``trust``)."""
    done = Path(spec["out"]) / "result.json"
    if not done.exists():
        return None
    result = json.loads(done.read_text())
    differ = [] if trust else spec_differences(result.get("spec", {}), spec)
    if differ:
        raise ValueError(f"{done}: cached by a run with other settings ({'; '.join(differ)}); "
                         f"give the sweep another --work, or remove that run to redo it")
    return result


def cached_results(tasks: list[dict], trust: bool = False) -> dict:
    """The cached results of these tasks, by ``run_key``; stops before any work if cached runs
    under the work folder were made with other settings (rerunning would mix the two in one
    report), unless ``trust``."""
    found, stale = {}, []
    for task in tasks:
        try:
            result = cached_result(task, trust)
        except ValueError as error:
            stale.append(str(error))
            continue
        if result is not None:
            found[run_key(task)] = result
    if stale:
        more = f"\n(and {len(stale) - 3} more)" if len(stale) > 3 else ""
        raise SystemExit(f"{len(stale)} cached runs do not match this sweep's settings:\n"
                         + "\n".join(stale[:3]) + more)
    return found


def execute(spec: dict, trust: bool = False) -> dict:
    """Train (and test) one run of the sweep; the result is cached as JSON beside it (and
    reused only by a run of the same settings, unless ``trust``)."""
    import torch

    from mmrm.train import train, train_text_proxy

    torch.set_num_threads(1)
    out = Path(spec["out"])
    cached = cached_result(spec, trust)
    if cached is not None:
        return cached
    if out.exists():
        shutil.rmtree(out)
    started = time.perf_counter()
    config = run_config(spec)
    quiet = lambda line: None   # noqa: E731
    if spec["variant"] == "proxy":
        cache = train_text_proxy(config, log=quiet)
        result = {"accuracy_in_sample": cache["accuracy_in_sample"],
                  "accuracy_out_of_sample": cache["accuracy_out_of_sample"],
                  "test": test_proxies(cache["proxies"], spec)}
    else:
        train(config, log=quiet, resume=False)
        result = test_model(out / "final", spec)
        result["weights"] = weight_statistics(out / "metrics.jsonl")
    result.update(spec=spec, seconds=round(time.perf_counter() - started, 1))
    if not spec["keep_models"] and spec["variant"] != "proxy":
        for path in [out / "final", *out.glob("checkpoint-*")]:
            shutil.rmtree(path, ignore_errors=True)
    (out / "result.json").write_text(json.dumps(result) + "\n")
    return result


def test_model(model_dir: Path, spec: dict) -> dict:
    """Accuracy on every environment's test split (rate c; all rates for headroom), on the
    own anti-cue split, rewards on the own test split (for SFD), best-of-N quality."""
    from mmrm.data import load_pairs
    from mmrm.evaluate import best_of_n_file, pairwise_accuracy
    from mmrm.inference import load_reward_model, score_pairs

    model, collator = load_reward_model(model_dir, max_length=512)
    own = lambda split: pairwise_accuracy(*score_pairs(   # noqa: E731 - e's own split
        model, collator, load_pairs(pairs_file(spec["data"], spec["env"], split)), 64))
    rates = spec["all_rates"] if spec["variant"] == "headroom" else [spec["rate"]]
    result = {"accuracy": {}, "own_test": {}}
    for rate in rates:
        for env in ENVIRONMENTS:
            pairs = load_pairs(pairs_file(spec["data"], env, split_name("test", rate)))
            chosen, rejected = score_pairs(model, collator, pairs, 64)
            result["accuracy"][f"{env}@{rate}"] = pairwise_accuracy(chosen, rejected)
            if env == spec["env"]:
                result["own_test"][str(rate)] = {"chosen": chosen.tolist(),
                                                 "rejected": rejected.tolist()}
    result["anticue"] = own("anticue")
    result["best_of_n"] = best_of_n_file(model, collator.processor,
                                         Path(spec["data"]) / "best_of_n" / "items.jsonl")
    if spec.get("frame_shift"):
        result["frames"] = {str(rate): own(split_name("frames", rate)) for rate in rates}
        result["frames_anticue"] = own("frames-anticue")
    return result


def test_proxies(proxies: list[str], spec: dict) -> dict:
    """Each cross-fitted proxy's rewards on the own test split; their mean margin decides the
    shortcut-failure subset."""
    from mmrm.data import load_pairs
    from mmrm.inference import load_reward_model, score_pairs

    pairs = load_pairs(pairs_file(spec["data"], spec["env"], split_name("test", spec["rate"])))
    margins = None
    for proxy in proxies:
        model, collator = load_reward_model(proxy, max_length=512)
        chosen, rejected = score_pairs(model, collator, pairs, 64)
        margin = chosen - rejected
        margins = margin if margins is None else margins + margin
    margins = margins / len(proxies)
    return {"margin": margins.tolist(),
            "accuracy": float(((margins > 0).float() + 0.5 * (margins == 0).float()).mean())}


def weight_statistics(metrics_file: Path) -> dict:
    keys = ("weight/mean", "weight/mean_proxy_wrong", "weight/mean_proxy_right",
            "weight/proxy_wrong_frac", "proxy_loss")
    records = [json.loads(line) for line in metrics_file.read_text().splitlines()]
    stats = {}
    for key in keys:
        values = [r[key] for r in records if key in r and r[key] == r[key]]
        if values:
            stats[key] = statistics.fmean(values)
    return stats


# ---------------------------------------------------------------------------- aggregation
@functools.cache
def own_cue_sides(data: str, env: str, rate: float) -> tuple[bool, ...]:
    """Per pair of e's test split at ``rate``, whether e's own cue is on the preferred side."""
    from mmrm.data import load_pairs
    from mmrm.synthetic.environments import own_cue_on_chosen

    pairs = load_pairs(pairs_file(data, env, split_name("test", rate)))
    return tuple(own_cue_on_chosen(env, p.chosen, p.rejected) for p in pairs)


def cue_balanced(result: dict, sides: tuple[bool, ...], rate: float) -> float:
    """Mean of the accuracy on the own test pairs that carry the cue on the preferred side
    and the anti-cue accuracy (every anti-cue pair carries it on the rejected side)."""
    import torch

    from mmrm.evaluate import pairwise_accuracy

    own = result["own_test"][str(rate)]
    right = torch.tensor(sides)
    if len(right) != len(own["chosen"]):
        raise ValueError(f"{len(own['chosen'])} rewards for {len(right)} test pairs")
    accuracy = pairwise_accuracy(torch.tensor(own["chosen"])[right],
                                 torch.tensor(own["rejected"])[right])
    return 0.5 * (accuracy + result["anticue"])


def replicate_rows(args, results: dict) -> list[dict]:
    """One row per (level, rate, base seed, data seed, environment, variant) of an RM."""
    import torch

    from mmrm.evaluate import shortcut_failure_degradation

    rows = []
    for level, rate, b, d, env in product(args.levels, args.cue_rates, args.base_seeds,
                                          args.data_seeds, ENVIRONMENTS):
        key = lambda v: (level, b, d, rate, env, v)     # noqa: E731
        proxy = results.get(key("proxy"))
        headroom = results.get((level, b, d, None, env, "headroom"))
        sides = own_cue_sides(str(data_dir(args.cache, level, d)), env, rate)
        for variant in ("none", *AWARE):
            result = results.get(key(variant))
            if result is None:
                continue
            acc = result["accuracy"]
            own = result["own_test"][str(rate)]
            row = {"level": level, "rate": rate, "base": b, "data": d, "env": env,
                   "variant": variant, "id": acc[f"{env}@{rate}"],
                   "ood": statistics.fmean(acc[f"{e}@{rate}"] for e in ENVIRONMENTS
                                           if e != env),
                   "anticue": result["anticue"],
                   "cue_balanced": cue_balanced(result, sides, rate),
                   "bon_correct": result["best_of_n"]["fully_correct"],
                   "bon_errors": result["best_of_n"]["mean_errors"],
                   "bon_random": result["best_of_n"]["random_fully_correct"],
                   **{f"w/{k.split('/')[-1]}": v for k, v in result["weights"].items()}}
            if "frames" in result:
                row.update(frames_id=result["frames"][str(rate)],
                           frames_anticue=result["frames_anticue"])
            if proxy is not None:
                failure = torch.tensor(proxy["test"]["margin"]) <= 0
                sfd = shortcut_failure_degradation(torch.tensor(own["chosen"]),
                                                   torch.tensor(own["rejected"]), failure)
                row.update(proxy_id=proxy["test"]["accuracy"], sfd=sfd["sfd"],
                           proxy_in_sample=proxy["accuracy_in_sample"],
                           proxy_out_of_sample=proxy["accuracy_out_of_sample"])
            if headroom is not None:
                h = headroom["accuracy"]
                row.update(headroom_id=h[f"{env}@{rate}"],
                           headroom_ood=statistics.fmean(h[f"{e}@{rate}"] for e in ENVIRONMENTS
                                                         if e != env),
                           headroom_cue_balanced=cue_balanced(headroom, sides, rate))
                if "frames" in headroom:
                    row.update(headroom_anticue=headroom["anticue"],
                               headroom_frames_id=headroom["frames"][str(rate)],
                               headroom_frames_anticue=headroom["frames_anticue"])
            rows.append(row)
    return rows


METRICS = ("id", "ood", "anticue", "cue_balanced", "headroom_cue_balanced", "bon_correct",
           "bon_errors", "bon_random", "proxy_id", "sfd", "headroom_id", "headroom_ood",
           "proxy_in_sample", "proxy_out_of_sample", "w/mean", "w/mean_proxy_wrong",
           "w/mean_proxy_right", "frames_id", "frames_anticue", "headroom_anticue",
           "headroom_frames_id", "headroom_frames_anticue")
#: Paired differences (variant - none) per cell; the held-out frames' only where measured.
DIFFERENCES = ("ood", "id", "anticue", "bon_correct", "cue_balanced", "frames_id",
               "frames_anticue")


def mean_of(rows: list[dict], key: str) -> float:
    values = [r[key] for r in rows if key in r and r[key] == r[key]]
    return statistics.fmean(values) if values else float("nan")


def criteria(rows: list[dict]) -> dict:
    """The SFC-free criteria of the default (issue 15), from the standard RM's rows of one
    cell: per environment means over replicates, then every environment must pass."""
    per_env = {}
    for env in ENVIRONMENTS:
        env_rows = [r for r in rows if r["env"] == env and r["variant"] == "none"]
        if not env_rows:
            continue
        m = {k: mean_of(env_rows, k) for k in ("id", "ood", "anticue", "proxy_id",
                                              "headroom_ood")}
        per_env[env] = {**m, "anticue_gap": m["id"] - m["anticue"],
                        "proxy_gap": m["id"] - m["proxy_id"],
                        "headroom_gap": m["headroom_ood"] - m["ood"]}
    checks = {"anti-cue <= ID - 0.30": all(v["anticue_gap"] >= 0.30 for v in per_env.values()),
              "proxy within 5 points of ID": all(abs(v["proxy_gap"]) <= 0.05
                                                 for v in per_env.values()),
              "headroom >= OOD + 0.10": all(v["headroom_gap"] >= 0.10
                                            for v in per_env.values())}
    slack = min([v["anticue_gap"] - 0.30 for v in per_env.values()]
                + [0.05 - abs(v["proxy_gap"]) for v in per_env.values()]
                + [v["headroom_gap"] - 0.10 for v in per_env.values()], default=float("nan"))
    return {"per_env": per_env, "checks": checks, "all": all(checks.values()) and
            bool(per_env), "slack": slack}


def summarise(rows: list[dict], args) -> dict:
    from mmrm.evaluate import paired_bootstrap

    cells = {}
    for level, rate in product(args.levels, args.cue_rates):
        cell_rows = [r for r in rows if r["level"] == level and r["rate"] == rate]
        if not cell_rows:
            continue
        cell = {"means": {v: {k: mean_of([r for r in cell_rows if r["variant"] == v], k)
                              for k in METRICS} for v in ("none", *AWARE)},
                "criteria": criteria(cell_rows), "differences": {}}
        # per replicate: the mean over environments, then SFC - none on the same replicate
        for variant in AWARE:
            for metric in DIFFERENCES:
                if not all(metric in r for r in cell_rows):
                    continue
                diffs = []
                for b, d in product(args.base_seeds, args.data_seeds):
                    rep = lambda v: [r[metric] for r in cell_rows   # noqa: E731
                                     if r["variant"] == v and r["base"] == b and r["data"] == d]
                    mine, theirs = rep(variant), rep("none")
                    if len(mine) == len(theirs) == len(ENVIRONMENTS):
                        diffs.append(statistics.fmean(mine) - statistics.fmean(theirs))
                if diffs:
                    cell["differences"].setdefault(variant, {})[metric] = {
                        **paired_bootstrap(diffs, args.resamples), "values": diffs}
        cells[f"{level}@{rate}"] = cell
    return cells


def table(cells: dict) -> str:
    header = ("| cell | variant | ID | OOD | anti-cue | cue-balanced | BoN correct | proxy ID | "
              "SFD | headroom OOD | headroom cue-balanced | w proxy-wrong / right |")
    lines = [header, "| --- | --- |" + " ---: |" * 10]
    for name, cell in cells.items():
        for variant, m in cell["means"].items():
            if m["id"] != m["id"]:
                continue
            lines.append(
                f"| {name} | {variant} | {m['id']:.3f} | {m['ood']:.3f} | {m['anticue']:.3f} | "
                f"{m['cue_balanced']:.3f} | {m['bon_correct']:.3f} | {m['proxy_id']:.3f} | "
                f"{m['sfd']:.3f} | {m['headroom_ood']:.3f} | {m['headroom_cue_balanced']:.3f} | "
                f"{m['w/mean_proxy_wrong']:.2f} / "
                f"{m['w/mean_proxy_right']:.2f} |")
    framed = [(name, variant, m) for name, cell in cells.items()
              for variant, m in cell["means"].items() if m["frames_id"] == m["frames_id"]]
    if framed:
        lines += ["", "| cell | variant | ID | held-out frames | anti-cue | held-out frames "
                  "anti-cue | headroom ID | headroom held-out frames | headroom anti-cue | "
                  "headroom held-out frames anti-cue |", "| --- | --- |" + " ---: |" * 8]
        lines += [f"| {name} | {variant} | {m['id']:.3f} | {m['frames_id']:.3f} | "
                  f"{m['anticue']:.3f} | {m['frames_anticue']:.3f} | {m['headroom_id']:.3f} | "
                  f"{m['headroom_frames_id']:.3f} | {m['headroom_anticue']:.3f} | "
                  f"{m['headroom_frames_anticue']:.3f} |"
                  for name, variant, m in framed]
    lines += ["", "| cell | variant | metric | variant - none | 95% CI | replicates |",
              "| --- | --- | --- | ---: | --- | ---: |"]
    for name, cell in cells.items():
        for variant, metrics in cell["differences"].items():
            for metric, d in metrics.items():
                lines.append(f"| {name} | {variant} | {metric} | {d['mean']:+.3f} | "
                             f"[{d['low']:+.3f}, {d['high']:+.3f}] | {d['n']} |")
    lines += ["", "| cell | anti-cue <= ID - .30 | proxy within .05 of ID | headroom >= OOD + "
              ".10 | all | slack |", "| --- | --- | --- | --- | --- | ---: |"]
    for name, cell in cells.items():
        c = cell["criteria"]
        marks = ["yes" if ok else "no" for ok in c["checks"].values()]
        lines.append(f"| {name} | " + " | ".join(marks) +
                     f" | {'yes' if c['all'] else 'no'} | {c['slack']:+.3f} |")
    return "\n".join(lines) + "\n"


def phase_diagram(cells: dict, args, path: Path) -> Path | None:
    """OOD gain (best shortcut-aware variant - none) per cell, as a heat map."""
    from mmrm.evaluate import _pyplot, _save_figure

    gains = [[float("nan")] * len(args.cue_rates) for _ in args.levels]
    for i, level in enumerate(args.levels):
        for j, rate in enumerate(args.cue_rates):
            diffs = cells.get(f"{level}@{rate}", {}).get("differences", {})
            values = [d["ood"]["mean"] for d in diffs.values() if "ood" in d]
            if values:
                gains[i][j] = max(values)
    if all(g != g for row in gains for g in row):
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(1.8 + 1.3 * len(args.cue_rates), 1.2 + 0.8 * len(args.levels)))
    image = ax.imshow(gains, cmap="RdBu", vmin=-0.2, vmax=0.2, aspect="auto")
    ax.set_xticks(range(len(args.cue_rates)), [f"{r:.2f}" for r in args.cue_rates])
    ax.set_yticks(range(len(args.levels)), args.levels)
    ax.set_xlabel("training cue rate")
    ax.set_ylabel("visual cost")
    for i, row in enumerate(gains):
        for j, g in enumerate(row):
            if g == g:
                ax.text(j, i, f"{g:+.3f}", ha="center", va="center")
    fig.colorbar(image, ax=ax, label="OOD gain (best SFC - none)")
    ax.set_title("shortcut-aware OOD gain")
    return _save_figure(fig, path)


def log_mlflow(cells: dict, args) -> None:
    import mlflow

    name = "mmrm-shortcut-sweep"
    if mlflow.get_experiment_by_name(name) is None and \
            not mlflow.get_tracking_uri().startswith(("http:", "https:")):
        # a local store: the experiment's artifacts beside the sweep, not in the caller's cwd
        mlflow.create_experiment(name, (Path(args.work) / "mlartifacts").resolve().as_uri())
    experiment = mlflow.set_experiment(name)
    for name, cell in cells.items():
        level, rate = name.split("@")
        params = {"visual": level, "cue_rate": rate, "lr": args.lr, "epochs": args.epochs,
                  "finetune": args.finetune, "train_size": args.train_size,
                  "work": str(args.work), "overrides": " ".join(args.overrides) or "-"}
        # a cell logged before from the same runs and settings is updated, not logged twice;
        # another work folder or other overrides (an exploration) is a run of its own
        same = " and ".join([f"tags.mlflow.runName = '{name}'"]
                            + [f"params.{k} = '{v}'" for k, v in params.items()])
        earlier = mlflow.search_runs([experiment.experiment_id], filter_string=same,
                                     output_format="list", max_results=1)
        run_id = earlier[0].info.run_id if earlier else None
        with mlflow.start_run(run_id=run_id, run_name=None if run_id else name):
            mlflow.log_params(params)
            for variant, m in cell["means"].items():
                mlflow.log_metrics({f"{variant}/{k.replace('/', '_')}": v
                                    for k, v in m.items() if v == v})
            for variant, metrics in cell["differences"].items():
                for metric, d in metrics.items():
                    mlflow.log_metrics({f"diff/{variant}/{metric}": d["mean"],
                                        f"diff/{variant}/{metric}_low": d["low"],
                                        f"diff/{variant}/{metric}_high": d["high"]})
            mlflow.log_dict(cell["criteria"], "criteria.json")


# ---------------------------------------------------------------------------- main
def run_spec(args, base: str, data: str, level: str, b: int, d: int, env: str, variant: str,
             rate: float | None) -> dict:
    """One run of the sweep: ``variant`` on environment ``env`` of replicate (``b``, ``d``)
    at cue ``rate`` (None: the neutral split), under ``args``' recipe and work folder."""
    recipe = {"finetune": args.finetune, "optim.lr": args.lr, "epochs": args.epochs,
              "per_device_batch_size": RECIPE["per_device_batch_size"]}
    spec = {"level": level, "base_seed": b, "data_seed": d, "base": base, "data": data,
            "env": env, "seed": 1000 * b + d, "recipe": recipe, "overrides": args.overrides,
            "all_rates": args.cue_rates, "keep_models": args.keep_models,
            "frame_shift": args.frame_shift, "variant": variant, "rate": rate}
    if variant != "headroom":
        spec["proxy_out"] = str(run_dir(args.work, level, b, d, rate, env, "proxy"))
    spec["out"] = str(run_dir(args.work, level, b, d, rate, env, variant))
    return spec


def specs(args, bases: dict, datas: dict) -> list[dict]:
    out = []
    for level, b, d, env in product(args.levels, args.base_seeds, args.data_seeds,
                                    ENVIRONMENTS):
        inputs = (bases[(level, b)], datas[(level, d)], level, b, d, env)
        if "headroom" in args.variants:
            out.append(run_spec(args, *inputs, "headroom", None))
        for rate in args.cue_rates:
            for variant in ("proxy", "none", *AWARE):
                if variant in args.variants:
                    out.append(run_spec(args, *inputs, variant, rate))
    # proxies first: the two-stage runs read their losses
    return sorted(out, key=lambda s: s["variant"] != "proxy")


def run_all(fn, jobs: int, tasks: list[tuple]) -> list:
    if jobs == 1:
        return [fn(*t) for t in tasks]
    with ProcessPoolExecutor(jobs, mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(fn, *t) for t in tasks]
        return [f.result() for f in futures]


def main(argv=None) -> dict:
    args = parse_args(argv)
    started = time.perf_counter()
    base_keys = list(product(args.levels, args.base_seeds))
    data_keys = list(product(args.levels, args.data_seeds))
    tasks = specs(args, {k: str(base_dir(args.cache, *k)) for k in base_keys},
                  {k: str(data_dir(args.cache, *k)) for k in data_keys})
    cached = cached_results(tasks, args.trust_cache)
    if args.report_only:
        print(f"{len(cached)} of {len(tasks)} runs of the grid are cached", flush=True)
        return report(args, cached, started)
    # the tasks above name the bases and data these make (or find made)
    run_all(make_base, args.jobs, [(args.cache, level, seed, args.base_steps)
                                   for level, seed in base_keys])
    print(f"bases ready ({time.perf_counter() - started:.0f} s)", flush=True)
    run_all(make_data, args.jobs, [
        (args.cache, level, seed, args.cue_rates, args.train_size, args.test_size, args.bon_items,
         args.bon_candidates) for level, seed in data_keys])
    if args.frame_shift:
        run_all(make_frames, args.jobs, [(args.cache, level, seed, args.cue_rates, args.test_size)
                                         for level, seed in data_keys])
    print(f"data ready ({time.perf_counter() - started:.0f} s)", flush=True)
    proxies = [t for t in tasks if t["variant"] == "proxy"]
    rest = [t for t in tasks if t["variant"] != "proxy"]
    results = {}
    for batch in (proxies, rest):
        done = run_all(execute, args.jobs, [(t, args.trust_cache) for t in batch])
        results.update((run_key(t), result) for t, result in zip(batch, done))
    print(f"runs done ({time.perf_counter() - started:.0f} s, {len(tasks)} runs)", flush=True)
    return report(args, results, started)


def run_key(spec: dict) -> tuple:
    return (spec["level"], spec["base_seed"], spec["data_seed"], spec["rate"], spec["env"],
            spec["variant"])


def run_seconds(results: dict) -> dict:
    """Seconds each kind of run took (one thread each), summed over the cached runs."""
    totals = {}
    for key, result in results.items():
        totals[key[-1]] = totals.get(key[-1], 0.0) + result.get("seconds", 0.0)
    return {k: round(v, 1) for k, v in totals.items()}


def report(args, results: dict, started: float) -> dict:
    work = args.work
    rows = replicate_rows(args, results)
    cells = summarise(rows, args)
    out = {"args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
           "recipe": RECIPE, "cells": cells, "rows": rows, "runs": len(results),
           "run_seconds": run_seconds(results),
           "seconds": round(time.perf_counter() - started, 1)}
    (work / "sweep.json").write_text(json.dumps(out, indent=1) + "\n")
    text = table(cells)
    (work / "sweep.md").write_text(text)
    print(text)
    png = phase_diagram(cells, args, work / "phase.png")
    if png:
        print(f"phase diagram: {png}")
    if args.mlflow:
        log_mlflow(cells, args)
    return out


if __name__ == "__main__":
    main()
