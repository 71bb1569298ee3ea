"""Where a run of the shortcut sweep spends its time, and the grid's floor that leaves.

Could faster code (rather than a smaller grid) fit the grid in 2 hours on 2 cores?

On one replicate of one cell (visual level, cue rate, base seed, data seed, environment; the
grid's cached base, data made like the grid's), after a warm-up run in the same process (it
pays the imports), it runs each kind of run of the grid once (proxies, ``none``,
``sfc_joint``, ``sfc_two_stage``, the neutral RM), one thread, and times its parts with
wrappers around the code that does them:

* *forward*: the training steps' forward (reward model and, for ``sfc_joint``, the proxy);
* *backward*: the training steps' backward;
* *encoding*: building the training batches (chat template, tokenizer, images; the encoding
  cache's reuse after the first epoch);
* *test*: testing the trained RM (or the proxies) on every split;
* *rest*: the run's seconds less those (loading, optimizer steps, saving, the proxies'
  out-of-sample losses, ...).

Each part is a share of its own run. The grid's *floor* is its summed run seconds per variant
(a finished sweep's ``sweep.json``) times that variant's forward + backward share, over
``--jobs``, plus the bases' pre-training over ``--jobs``: what the grid would take if
everything but the steps' arithmetic took no time. The largest speed-up of the grid that
code outside the steps can give is the inverse of the steps' share.

    python benchmarks/run_profile.py --work runs/run-profile --grid runs/sweep
"""

from __future__ import annotations

import argparse
import functools
import json
import time
from pathlib import Path

import shortcut_sweep as sweep      # the sibling script (python benchmarks/run_profile.py)
from sweep_budget import bases_seconds, grid_hours, grid_none_mean

PARTS = ("forward", "backward", "encoding", "test")
#: The grid's kinds of run, in the order they can run (the two-stage runs read the proxies').
KINDS = ("proxy", "none", "sfc_joint", "sfc_two_stage", "headroom")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    sweep.against_grid_arguments(parser, "runs/run-profile")
    parser.add_argument("--env", default="povid", choices=sweep.ENVIRONMENTS)
    return parser.parse_args(argv)


# ---------------------------------------------------------------------------- timing
class Timers:
    """Seconds spent inside wrapped callables, summed per part."""

    def __init__(self):
        self.seconds = dict.fromkeys(PARTS, 0.0)

    def wrap(self, owner, name: str, part: str) -> None:
        """Replace ``owner.name`` (a class's method or a module's function) by a timed twin."""
        inner = getattr(owner, name)

        @functools.wraps(inner)
        def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                self.seconds[part] += time.perf_counter() - started
        setattr(owner, name, timed)

    def reset(self) -> None:
        self.seconds = dict.fromkeys(PARTS, 0.0)


def instrument(timers: Timers) -> None:
    """Time the training steps' forward and backward, the training batches' encoding and the
    tests of every run this process makes from now on."""
    from accelerate import Accelerator

    import mmrm.train as train

    timers.wrap(train.TrainedModels, "forward", "forward")
    timers.wrap(Accelerator, "backward", "backward")
    timers.wrap(train.TrainCollator, "__call__", "encoding")
    timers.wrap(sweep, "test_model", "test")
    timers.wrap(sweep, "test_proxies", "test")


# ---------------------------------------------------------------------------- arithmetic
def shares(parts: dict[str, float], run_seconds: float) -> dict:
    """Each part's share of its run, the rest's, and the steps' (forward + backward)."""
    rest = run_seconds - sum(parts.values())
    out = {f"{part}_share": seconds / run_seconds for part, seconds in parts.items()}
    out.update(rest_share=rest / run_seconds,
               steps_share=(parts["forward"] + parts["backward"]) / run_seconds)
    return out


def floor_hours(variant_seconds: dict[str, float], steps_share: dict[str, float],
                none_mean: float, none_now: float, jobs: int, base_seconds: float) -> float:
    """The grid's wall hours if only the training steps' arithmetic took time: its summed run
    seconds per variant times that variant's steps share, brought to today's speed by the
    standard run (``none_now`` against the grid's mean ``none_mean``; equal: as the grid
    ran), over ``jobs``, plus the bases over ``jobs``."""
    steps = {variant: seconds * steps_share[variant]
             for variant, seconds in variant_seconds.items()}
    return grid_hours(steps, none_mean, none_now, 1.0, jobs, base_seconds)[1]


# ---------------------------------------------------------------------------- runs
def profile(args, grid_args: dict) -> list[dict]:
    """One run of each kind (after an untimed warm-up run), each with its parts' seconds."""
    data = sweep.fresh_replicate(args, grid_args)
    sweep_args = sweep.parse_args(["--work", str(args.work), "--cue-rates",
                                   *map(str, grid_args["cue_rates"])])
    base = str(sweep.base_dir(args.grid, args.level, args.base_seed))
    run = functools.partial(sweep.run_spec, sweep_args, base, data, args.level, args.base_seed,
                            args.data_seed)
    warm_env = next(e for e in sweep.ENVIRONMENTS if e != args.env)
    sweep.execute(run(warm_env, "none", args.rate))
    timers = Timers()
    instrument(timers)
    rows = []
    for kind in KINDS:
        timers.reset()
        started = time.perf_counter()
        sweep.execute(run(args.env, kind, None if kind == "headroom" else args.rate))
        seconds = time.perf_counter() - started
        rows.append({"variant": kind, "seconds": seconds, **timers.seconds,
                     **shares(timers.seconds, seconds)})
        print(f"{kind}: {seconds:.1f} s, steps {rows[-1]['steps_share']:.2f}", flush=True)
    return rows


def main(argv=None) -> dict:
    args = parse_args(argv)
    grid = sweep.finished_grid(args.grid, args.level, args.base_seed)
    started = time.perf_counter()
    rows = profile(args, grid["args"])
    base_seconds, timed, bases = bases_seconds(args.grid / "bases")
    by_variant = {r["variant"]: r["steps_share"] for r in rows}
    variant_seconds = {v: s for v, s in grid["run_seconds"].items() if v in by_variant}
    none_mean = grid_none_mean(grid)
    none_now = next(r["seconds"] for r in rows if r["variant"] == "none")
    floor = functools.partial(floor_hours, variant_seconds, by_variant, none_mean,
                              jobs=args.jobs, base_seconds=base_seconds)
    out = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
           "rows": rows, "grid_run_seconds": variant_seconds, "base_seconds": base_seconds,
           "bases_timed": timed, "bases": bases, "grid_none_mean_seconds": none_mean,
           "none_seconds": none_now,
           "grid_hours": (sum(variant_seconds.values()) + base_seconds) / args.jobs / 3600,
           "floor_hours": floor(none_mean), "floor_hours_now": floor(none_now),
           "seconds": round(time.perf_counter() - started, 1)}
    text = table(out, args)
    (args.work / "profile.json").write_text(json.dumps(out, indent=1) + "\n")
    (args.work / "profile.md").write_text(text)
    print(text)
    return out


def table(out: dict, args) -> str:
    lines = [f"{args.level}@{args.rate}, base seed {args.base_seed}, data seed "
             f"{args.data_seed}, {args.env}; one run of each kind after a warm-up run, one "
             f"thread; bases: {out['bases_timed']} of {out['bases']} timed",
             "",
             "| run | seconds | forward | backward | encoding | test | rest | steps share | "
             "speed-up bound outside the steps |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in out["rows"]:
        lines.append(f"| {r['variant']} | {r['seconds']:.1f} | {r['forward_share']:.2f} | "
                     f"{r['backward_share']:.2f} | {r['encoding_share']:.2f} | "
                     f"{r['test_share']:.2f} | {r['rest_share']:.2f} | {r['steps_share']:.2f} | "
                     f"{1 / r['steps_share']:.2f}x |")
    def fits(hours: float) -> str:
        return "fits" if hours <= args.hours else "does not fit"

    lines += ["", f"The grid over {args.jobs} jobs, bases included: {out['grid_hours']:.2f} h as "
              f"run. Floor (training steps only): {out['floor_hours']:.2f} h at the grid's "
              f"speed ({fits(out['floor_hours'])} {args.hours:g} h); "
              f"{out['floor_hours_now']:.2f} h at today's (the standard run here took "
              f"{out['none_seconds']:.1f} s, "
              f"the grid's {out['grid_none_mean_seconds']:.1f} s on average; two parallel runs "
              f"taken as fast as one: a lower bound; {fits(out['floor_hours_now'])} "
              f"{args.hours:g} h)."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
