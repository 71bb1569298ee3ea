"""How much faster the shortcut sweep's runs train compiled (``torch_compile``), and the grid's
hours that gives.

The run profile (``run_profile.py``) found that only faster training steps could bring the
grid toward 2 hours on 2 cores. ``torch_compile: true`` compiles the language model and the
vision tower (``mmrm.finetune.compile_backbone``); the sweep takes it as an override
(``shortcut_sweep.py ... -- torch_compile=true``), and its worker processes reuse what they
compiled from one run to the next.

On one replicate of one cell (the grid's cached base, data made like the grid's), one process
per mode (eager and compiled, one thread each; side by side, as the sweep's two jobs run, so
that the machine's speed, which drifts over minutes here, is the same for both; or with
``--sequential`` one after the other, as the first three invocations ran), each runs every
kind of the grid's runs (proxies, ``none``, ``sfc_joint``, ``sfc_two_stage``, the neutral RM)
in a first pass, in which the compiled process compiles, then ``--warm-passes`` more into
fresh folders, as a sweep worker's later runs are. It prints per kind each mode's median warm
seconds, their ratio, the first pass's extra seconds, and the largest difference of test
accuracy between the two modes' last runs (same seeds; compiled kernels round differently).

The grid's hours compiled: its summed run seconds per variant (a finished sweep's
``sweep.json``) divided by that variant's ratio, over ``--jobs``, plus the bases over
``--jobs``, plus the compiled first pass's extra seconds once (every worker compiles at its
start, the workers at the same time).

    python benchmarks/compile_speed.py --work runs/compile-speed --grid runs/sweep
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import shortcut_sweep as sweep      # the sibling script (python benchmarks/compile_speed.py)
from run_profile import KINDS, floor_hours
from sweep_budget import bases_seconds

MODES = {"eager": [], "compiled": ["torch_compile=true"]}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    sweep.against_grid_arguments(parser, "runs/compile-speed")
    parser.add_argument("--env", default="povid", choices=sweep.ENVIRONMENTS)
    parser.add_argument("--warm-passes", type=int, default=2, help="Passes after the first "
                        "(at least 1: the warm seconds are their median).")
    parser.add_argument("--sequential", action="store_true", help="Eager, then compiled "
                        "(default: both at once, one core each).")
    args = parser.parse_args(argv)
    if args.warm_passes < 1:
        parser.error(f"--warm-passes must be at least 1, not {args.warm_passes}")
    return args


# ---------------------------------------------------------------------------- arithmetic
def speedups(passes: dict[str, dict[str, list[float]]]) -> dict[str, dict]:
    """Per kind: each mode's warm seconds (the median of its passes after the first), their
    ratio eager / compiled, and the compiled first pass's extra seconds over its warm ones
    beyond the eager one's (what compiling costs, less what any first run costs)."""
    warm = {mode: {kind: statistics.median(seconds[1:]) for kind, seconds in runs.items()}
            for mode, runs in passes.items()}
    eager, compiled = warm["eager"], warm["compiled"]
    return {kind: {"eager": eager[kind], "compiled": compiled[kind],
                   "ratio": eager[kind] / compiled[kind],
                   "compile_extra": (passes["compiled"][kind][0] - compiled[kind])
                   - (passes["eager"][kind][0] - eager[kind])}
            for kind in eager}


def compiled_grid_hours(variant_seconds: dict[str, float], ratios: dict[str, float],
                        jobs: int, base_seconds: float, compile_seconds: float) -> float:
    """The grid's wall hours with every run compiled: each variant's summed seconds over its
    ratio, over ``jobs``, plus the bases over ``jobs``, plus ``compile_seconds`` once."""
    shares = {variant: 1 / ratios[variant] for variant in variant_seconds}
    return floor_hours(variant_seconds, shares, 1.0, 1.0, jobs, base_seconds) \
        + compile_seconds / 3600


def accuracy_difference(a: dict, b: dict) -> float:
    """Largest absolute difference between two results' accuracies: an RM's on every test
    split; the proxies' on the own test split, in and out of sample."""
    def accuracies(result: dict) -> dict[str, float]:
        if "accuracy_in_sample" in result:        # the proxies
            return {"test": result["test"]["accuracy"],
                    "in_sample": result["accuracy_in_sample"],
                    "out_of_sample": result["accuracy_out_of_sample"]}
        return result["accuracy"]
    left, right = accuracies(a), accuracies(b)
    return max(abs(left[k] - right[k]) for k in left)


# ---------------------------------------------------------------------------- runs
def run_passes(args, grid_args: dict, data: str, mode: str) -> dict:
    """One process's passes over every kind of run: ``{kind: [first s, warm s, ...]}``, the
    last pass's results and how many graphs the process compiled."""
    base = str(sweep.base_dir(args.grid, args.level, args.base_seed))
    seconds, results = {kind: [] for kind in KINDS}, {}
    for number in range(1, 2 + args.warm_passes):
        work = args.work / "runs" / mode / f"pass{number}"
        sweep_args = sweep.parse_args(["--work", str(work), "--cue-rates",
                                       *map(str, grid_args["cue_rates"]), "--",
                                       *MODES[mode]])
        run = functools.partial(sweep.run_spec, sweep_args, base, data, args.level,
                                args.base_seed, args.data_seed, args.env)
        for kind in KINDS:
            started = time.perf_counter()
            results[kind] = sweep.execute(run(kind, None if kind == "headroom" else args.rate))
            seconds[kind].append(time.perf_counter() - started)
            print(f"{mode} pass {number} {kind}: {seconds[kind][-1]:.1f} s", flush=True)
    from torch._dynamo.utils import counters
    return {"seconds": seconds, "results": results,
            "graphs": counters["stats"]["unique_graphs"]}


def main(argv=None) -> dict:
    args = parse_args(argv)
    grid = sweep.finished_grid(args.grid, args.level, args.base_seed)
    grid_args = grid["args"]
    started = time.perf_counter()
    data = sweep.fresh_replicate(args, grid_args)
    tasks = [(args, grid_args, data, mode) for mode in MODES]
    if args.sequential:
        done = [in_fresh_processes(run_passes, [task])[0] for task in tasks]
    else:
        done = in_fresh_processes(run_passes, tasks)
    measured = dict(zip(MODES, done))
    base_seconds, timed, bases = bases_seconds(args.grid / "bases")
    kinds = speedups({mode: m["seconds"] for mode, m in measured.items()})
    variant_seconds = {v: s for v, s in grid["run_seconds"].items() if v in kinds}
    compile_seconds = sum(k["compile_extra"] for k in kinds.values())
    out = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
           "kinds": kinds, "passes": {mode: m["seconds"] for mode, m in measured.items()},
           "graphs": {mode: m["graphs"] for mode, m in measured.items()},
           "accuracy_difference": {
               kind: accuracy_difference(measured["eager"]["results"][kind],
                                         measured["compiled"]["results"][kind])
               for kind in KINDS},
           "grid_run_seconds": variant_seconds, "base_seconds": base_seconds,
           "bases_timed": timed, "bases": bases, "compile_seconds": compile_seconds,
           "grid_hours": (sum(variant_seconds.values()) + base_seconds) / args.jobs / 3600,
           "compiled_grid_hours": compiled_grid_hours(
               variant_seconds, {k: v["ratio"] for k, v in kinds.items()}, args.jobs,
               base_seconds, compile_seconds),
           "seconds": round(time.perf_counter() - started, 1)}
    text = table(out, args)
    (args.work / "compile.json").write_text(json.dumps(out, indent=1) + "\n")
    (args.work / "compile.md").write_text(text)
    print(text)
    return out


def in_fresh_processes(fn, tasks: list[tuple]) -> list:
    """``fn(*task)`` for every task at once, each in a new (spawned) process of its own:
    nothing compiled or imported carries over from one task to another."""
    with ProcessPoolExecutor(len(tasks), mp_context=get_context("spawn"),
                             max_tasks_per_child=1) as pool:
        futures = [pool.submit(fn, *task) for task in tasks]
        return [f.result() for f in futures]


def table(out: dict, args) -> str:
    lines = [f"{args.level}@{args.rate}, base seed {args.base_seed}, data seed "
             f"{args.data_seed}, {args.env}; every kind {1 + args.warm_passes} times per mode "
             f"(the first compiles; warm: the median of the rest), one process per mode, one "
             f"thread each, {'one after the other' if args.sequential else 'side by side'}; "
             f"bases: {out['bases_timed']} of {out['bases']} timed; graphs "
             f"compiled: {', '.join(f'{m} {n}' for m, n in out['graphs'].items())}",
             "",
             "| run | eager s | compiled s | speed-up | compiling, first pass s | "
             "test accuracy max diff |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for kind, k in out["kinds"].items():
        lines.append(f"| {kind} | {k['eager']:.1f} | {k['compiled']:.1f} | {k['ratio']:.2f}x | "
                     f"{k['compile_extra']:.0f} | {out['accuracy_difference'][kind]:.3f} |")
    eager, compiled = (sum(k[mode] for k in out["kinds"].values())
                       for mode in ("eager", "compiled"))
    lines.append(f"| all kinds | {eager:.1f} | {compiled:.1f} | {eager / compiled:.2f}x | "
                 f"{out['compile_seconds']:.0f} | |")
    fits = "fits" if out["compiled_grid_hours"] <= args.hours else "does not fit"
    lines += ["", f"The grid over {args.jobs} jobs, bases included: {out['grid_hours']:.2f} h as "
              f"run; compiled (each variant's runs over its speed-up, plus "
              f"{out['compile_seconds']:.0f} s compiling once): "
              f"{out['compiled_grid_hours']:.2f} h ({fits} {args.hours:g} h)."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
