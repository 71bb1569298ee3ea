"""Could the shortcut sweep fit a time budget on smaller splits, still training enough?

Issue 15 asks for the sweep in 2 hours on 2 cores, "smaller splits if needed";
the study's recipe asks that a cue-neutral RM reach its headroom (README, "The shortcut
study": its mean accuracy after E epochs within 0.02 of after 2E, else the budget doubles).

For each training-split size (the first is the baseline, the grid's 2,000 pairs), on one
replicate of one cell (visual level, base seed, data seed; the grid's cached base is reused):

* a standard RM per environment at the grid's recipe (``none``, E epochs): its run seconds,
  and their ratio to the baseline size's (same invocation, one run after the other, one
  thread);
* a cue-neutral RM per environment after E and after 2E epochs: their mean accuracy over
  the test columns (every environment's test split at every cue rate), and whether the
  budget rule holds at this size.

From the ratio it estimates the whole grid's wall time at each size: the summed run seconds
per variant of a finished sweep (``--grid``'s ``sweep.json``), brought to today's code and
machine by the baseline's measured standard run, scaled by the ratio, over ``--jobs``
parallel runs; then the bases' pre-training (the seconds the sweep wrote beside each base,
``shortcut_sweep.base_seconds``). The estimate scales every variant like the standard RM
(all are dominated by their training steps); the table says which sizes fit ``--hours``.

    python benchmarks/sweep_budget.py --work runs/sweep-budget --grid runs/sweep
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import shortcut_sweep as sweep      # the sibling script (python benchmarks/sweep_budget.py)

ENVIRONMENTS = sweep.ENVIRONMENTS


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    sweep.against_grid_arguments(parser, "runs/sweep-budget")
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 1000, 600],
                        help="Training pairs per environment; the first is the baseline.")
    parser.add_argument("--epochs", type=float, default=sweep.RECIPE["epochs"],
                        help="E: the grid's budget; the neutral RMs also train 2E.")
    parser.add_argument("--tolerance", type=float, default=0.02,
                        help="The budget rule: E epochs within this of 2E.")
    return parser.parse_args(argv)


# ---------------------------------------------------------------------------- measures
def neutral_accuracy(results: list[dict]) -> float:
    """Mean over the neutral RMs (one per environment) of their mean test-column accuracy."""
    return statistics.fmean(statistics.fmean(r["accuracy"].values()) for r in results)


def budget_holds(short: float, long: float, tolerance: float) -> bool:
    """The study's budget rule: E epochs reach the headroom when 2E gain at most
    ``tolerance``."""
    return long - short <= tolerance


def bases_seconds(folder: Path) -> tuple[float, int, int]:
    """The grid's bases' summed pre-training seconds, how many were timed, how many there
    are; an untimed base counts as the mean of the timed ones (none timed: 0)."""
    timings = [sweep.base_seconds(p) for p in sorted(folder.iterdir()) if p.is_dir()]
    timed = [t for t in timings if t is not None]
    return (sum(timed) * len(timings) / len(timed) if timed else 0.0), len(timed), len(timings)


def grid_none_mean(grid: dict) -> float:
    """A finished sweep's mean standard run, seconds (``grid``: its ``sweep.json``)."""
    return grid["run_seconds"]["none"] / sum(r.get("variant") == "none" for r in grid["rows"])


def grid_hours(variant_seconds: dict[str, float], none_mean: float, none_now: float,
               ratio: float, jobs: int, base_seconds: float) -> tuple[float, float]:
    """(runs, runs + bases) wall hours of the grid: its summed run seconds per variant brought
    to today's speed (``none_now / none_mean``: the baseline's standard run against the
    grid's mean standard run), scaled by ``ratio``, over ``jobs``; the bases' pre-training
    does not depend on the split size."""
    runs = sum(variant_seconds.values()) * (none_now / none_mean) * ratio / jobs
    return runs / 3600, (runs + base_seconds / jobs) / 3600


# ---------------------------------------------------------------------------- runs
def spec(args, grid: dict, size: int, data: str, env: str, variant: str,
         epochs: float) -> dict:
    """One run of the sweep (``shortcut_sweep.run_spec``) on the grid's base, at this size
    and budget, in its own folder per budget."""
    sweep_args = sweep.parse_args(["--work", str(args.work / f"n{size}"), "--epochs",
                                   str(epochs), "--cue-rates", *map(str, grid["cue_rates"])])
    run = sweep.run_spec(sweep_args, str(sweep.base_dir(args.grid, args.level, args.base_seed)),
                         data, args.level, args.base_seed, args.data_seed, env, variant,
                         None if variant == "headroom" else args.rate)
    run["out"] = str(Path(run["out"]) / f"e{epochs:g}")
    return run


def measure(args, grid: dict, size: int) -> dict:
    """Standard and neutral RMs at ``size`` training pairs, on data made like the grid's
    (``grid``: the finished sweep's arguments)."""
    data = sweep.make_data(args.work / f"n{size}", args.level, args.data_seed,
                           grid["cue_rates"], size, grid["test_size"], grid["bon_items"],
                           grid["bon_candidates"])
    runs = {(variant, epochs): [sweep.execute(spec(args, grid, size, data, env, variant,
                                                   epochs))
                                for env in ENVIRONMENTS]
            for variant, epochs in (("none", args.epochs), ("headroom", args.epochs),
                                    ("headroom", 2 * args.epochs))}
    return {"size": size,
            "none_seconds": statistics.fmean(r["seconds"] for r in runs["none", args.epochs]),
            "neutral_short": neutral_accuracy(runs["headroom", args.epochs]),
            "neutral_long": neutral_accuracy(runs["headroom", 2 * args.epochs])}


def main(argv=None) -> dict:
    args = parse_args(argv)
    grid = sweep.finished_grid(args.grid, args.level, args.base_seed)
    started = time.perf_counter()
    variant_seconds, none_mean = grid["run_seconds"], grid_none_mean(grid)
    base_seconds, timed, bases = bases_seconds(args.grid / "bases")
    rows = [measure(args, grid["args"], size) for size in args.sizes]
    baseline = rows[0]["none_seconds"]
    for row in rows:
        row["ratio"] = row["none_seconds"] / baseline
        row["runs_hours"], row["hours"] = grid_hours(variant_seconds, none_mean, baseline,
                                                     row["ratio"], args.jobs, base_seconds)
        row["budget_holds"] = budget_holds(row["neutral_short"], row["neutral_long"],
                                           args.tolerance)
    text = table(rows, args, f"bases: {timed} of {bases} timed, {base_seconds:.0f} s in all")
    args.work.mkdir(parents=True, exist_ok=True)
    (args.work / "budget.md").write_text(text)
    out = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
           "grid_none_mean_seconds": none_mean, "base_seconds": base_seconds,
           "bases_timed": timed, "bases": bases,
           "rows": rows, "seconds": round(time.perf_counter() - started, 1)}
    (args.work / "budget.json").write_text(json.dumps(out, indent=1) + "\n")
    print(text)
    return out


def table(rows: list[dict], args, bases: str) -> str:
    e = f"{args.epochs:g}"
    lines = [f"{args.level}, base seed {args.base_seed}, data seed {args.data_seed}; standard "
             f"RMs at cue {args.rate}; estimate over {args.jobs} jobs, target {args.hours:g} h; "
             f"{bases}",
             "",
             f"| train pairs | standard run s | ratio | grid runs h | grid + bases h | fits "
             f"{args.hours:g} h | neutral {e} ep | neutral {2 * args.epochs:g} ep | gain | "
             f"budget rule |",
             "| ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | --- |"]
    for r in rows:
        lines.append(
            f"| {r['size']} | {r['none_seconds']:.1f} | {r['ratio']:.2f} | "
            f"{r['runs_hours']:.2f} | {r['hours']:.2f} | "
            f"{'yes' if r['hours'] <= args.hours else 'no'} | {r['neutral_short']:.3f} | "
            f"{r['neutral_long']:.3f} | {r['neutral_long'] - r['neutral_short']:+.3f} | "
            f"{'holds' if r['budget_holds'] else 'budget doubles'} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
