"""The RL study's runs: for every seed and reward model, one ``mmrm rl`` run (the product's
command, a client of it), its measures kept as one small JSON per run under
``results/runs/<rm>/seed<k>.json`` (committed: the study stops and resumes across sessions).
The reward models are grid 3's replicate b0-d0 at the default cell (the shortcut study),
taken from the sweep's work folder, or made there by the sweep's own functions if missing.

    python studies/rl/run.py                        # every run not yet in results/, resumable
    python studies/rl/run.py --report-only

The design, the predictions and the results: README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
#: The reward models compared, in the order they run within a seed: the standard RM, the
#: paper's SFC, the cue-neutral reference, then grid 3's other shortcut-aware methods (the
#: one grid 3's rule makes the product's default is reported as "the default's method").
RMS = ("none", "sfc_two_stage", "neutral", "sfc_normalized", "group_balance", "poe",
       "conf_reg", "interpolated")
DERIVED = ("conf_reg", "interpolated")
SEEDS = (0, 1, 2, 3, 4)
#: The budget of every run (pre-registered in README.md).
BUDGET = {"env": "povid", "visual": "V1", "prompts": 512, "sft_steps": 300, "sft_batch": 16,
          "sft_lr": 1e-3, "steps": 300, "group": 8, "prompts_per_step": 4, "lr": 1e-4,
          "beta": 0.0, "temperature": 1.0, "max_completion_length": 32, "log_every": 10}


def replicate(grid_work: Path):
    """Grid 3's replicate b0-d0 at the default cell: its params (the sweep's own)."""
    sys.path.insert(0, str(ROOT / "studies" / "shortcut"))
    import sweep

    grid = sweep.GRIDS["grid3"]
    return sweep, sweep.replicate_params(grid.cells[0], 0, 0, grid_work, grid.phases[0][1], {},
                                         grid.derived, dict(grid.params))


def reward_models(grid_work: Path) -> tuple[dict[str, Path], Path, Path]:
    """The RMs (``final`` folders), the V1 base of seed 0 and the POVID-like training pairs
    of the replicate; the replicate is run (its cached runs kept) where any is missing."""
    sweep, params = replicate(grid_work)
    models = {rm: params.model_dir("povid", rm) / "final" for rm in RMS}
    if not all((m / "mmrm_files.json").is_file() or (m / "reward_config.json").is_file()
               for m in models.values()):
        print("making grid 3's replicate b0-d0 at the default cell", flush=True)
        sweep.run_replicate(params)
    return models, Path(params.paths.base), params.pairs("povid", "train")


def run_one(rm: str, model: Path, base: Path, pairs: Path, seed: int, work: Path) -> dict:
    out = work / rm / f"seed{seed}"
    overrides = {**BUDGET, "base": str(base), "reward_model": str(model),
                 "sft_pairs": str(pairs), "seed": seed, "data_seed": seed,
                 "output_dir": str(out), "cache_dir": str(work / "cache")}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE",
           "HF_HUB_OFFLINE": "1", "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}"}
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "mmrm", "rl", "rl/tiny",
                           *[f"{k}={v}" for k, v in overrides.items()]],
                          env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{rm} seed {seed}: mmrm rl failed:\n{done.stderr[-3000:]}")
    windows = [json.loads(line) for line in (out / "measures.jsonl").read_text().splitlines()]
    return {"rm": rm, "seed": seed, "model": str(model), "budget": BUDGET,
            "windows": windows, "wall_seconds": round(time.perf_counter() - started, 1),
            "machine": {"node": platform.node(), "cpus": os.cpu_count(),
                        "processor": platform.processor() or platform.machine()},
            "commit": subprocess.run(["git", "-C", str(HERE), "rev-parse", "--short", "HEAD"],
                                     capture_output=True, text=True).stdout.strip()}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--grid-work", type=Path, default=Path("runs/study/shortcut"),
                        help="The shortcut study's sweep work folder (grid 3's runs).")
    parser.add_argument("--work", type=Path, default=Path("runs/study/rl"))
    parser.add_argument("--results", type=Path, default=HERE / "results")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    parser.add_argument("--rms", nargs="+", default=list(RMS), choices=RMS)
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args(argv)
    if not args.report_only:
        models, base, pairs = reward_models(args.grid_work)
        for seed in args.seeds:
            for rm in args.rms:
                path = args.results / "runs" / rm / f"seed{seed}.json"
                if path.exists():
                    continue
                found = run_one(rm, models[rm], base, pairs, seed, args.work.resolve())
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_name(f".{path.name}.tmp")
                tmp.write_text(json.dumps(found, sort_keys=True) + "\n")
                os.replace(tmp, path)
                print(f"done {path}", flush=True)
    sys.path.insert(0, str(HERE))
    from rl_report import write_report

    write_report(args.results)


if __name__ == "__main__":
    main()
