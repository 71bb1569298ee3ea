"""The shortcut study's sweep: every replicate of a grid is one run of mmrm's pipeline (its
registered stages, :mod:`mmrm.pipeline.registry`) with params overrides; its numbers are
read from what the evaluate stage writes (matrix, shortcut measures, diagnosis) and kept,
one small JSON per replicate, under ``results/<grid>/runs/`` (committed: a grid stops and
resumes across sessions and machines). The report (``results/<grid>/report.md``,
``phase.png``, ``default.json``) is made from those files alone.

    python studies/shortcut/sweep.py grid3 [--jobs 1] [--work runs/study]
    python studies/shortcut/sweep.py grid2 --phase sfc-free     # none, proxy, neutral only
    python studies/shortcut/sweep.py grid3 --report-only

Each grid, its recipe, its rules and its predictions are pre-registered in README.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import product
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

HERE = Path(__file__).resolve().parent
#: Methods of the grid: the standard RM, the cue-neutral reference RM (the headroom), and the
#: shortcut-aware ones (the text-only proxies are trained and measured in every replicate).
SFC_FREE = ("none", "neutral")
AWARE = ("sfc_joint", "sfc_two_stage", "group_balance", "poe")
#: Grid 3's methods (issue 43): trained from the data, then built from the standard RM of
#: the same replicate (conf_reg's teacher; interpolated's anchor).
GRID3_TRAINED = ("none", "neutral", "sfc_two_stage", "sfc_normalized", "group_balance", "poe")
GRID3_DERIVED = ("conf_reg", "interpolated")
#: Data reuse at the same 250 steps of 32 pairs: the paper's single pass over 4x the pairs,
#: or today's 4 epochs over 2,000.
REUSE = {"fresh": {"train_size": 8000, "epochs": 1}, "repeated": {"train_size": 2000,
                                                                  "epochs": 4}}
#: The recipe of every run (no tuning on a shortcut-aware number): the product's params.yaml
#: recipe (frozen vision tower, lr 1e-3, batch 32); log every 5 steps (weights early, middle,
#: late); no reward calibration (scores are compared within a model only).
RECIPE = {"finetune": "freeze_vision", "per_device_batch_size": 32, "optim": {"lr": 1e-3},
          "log_steps": 5, "calibration_pairs": 0}


@dataclass(frozen=True)
class Cell:
    visual: str
    cue: float
    foreign: float
    reuse: str

    @property
    def key(self) -> str:
        return f"{self.visual}-c{self.cue}-f{self.foreign}-{self.reuse}"


#: Grid 2's phases: the SFC-free runs (which the default rule reads), then the aware ones.
PHASES = {"sfc-free": SFC_FREE, "aware": AWARE}


@dataclass(frozen=True)
class Grid:
    cells: tuple[Cell, ...]
    base_seeds: tuple[int, ...]
    data_seeds: tuple[int, ...]
    #: phase name -> the variants it trains (each replicate's phases share data, base and
    #: proxies; a phase's run folders are kept where ``keep`` names it)
    phases: tuple[tuple[str, tuple[str, ...]], ...] = tuple(PHASES.items())
    keep: tuple[str, ...] = ("sfc-free",)
    #: derived variants of every phase (built after its variants from its `none`)
    derived: tuple[str, ...] = ()
    #: data seeds run after the whole grid in ``extension_cell`` only (more replicates where
    #: the verdicts are read)
    extension_seeds: tuple[int, ...] = ()
    extension_cell: Cell | None = None
    #: params of every replicate beyond the recipe (benchmark sizes, interpolation)
    params: tuple[tuple[str, object], ...] = ()

    def replicates(self, data_seeds: tuple[int, ...] | None = None) -> list[tuple[int, int]]:
        """(base seed, data seed), interleaved so that every prefix of the list spreads over
        both base seeds and all data seeds (a grid stopped early is balanced)."""
        k = len(self.base_seeds)
        return [(self.base_seeds[(i + p) % k], d) for p in range(k)
                for i, d in enumerate(data_seeds or self.data_seeds)]

    def runs(self) -> list[tuple[Cell, int, int]]:
        """Every (cell, base seed, data seed) in the order they run: the grid's replicates
        over its cells, then the extension's in its cell."""
        main = [(cell, b, d) for (b, d), cell in product(self.replicates(), self.cells)]
        more = [(self.extension_cell, b, d) for b, d in self.replicates(self.extension_seeds)] \
            if self.extension_seeds else []
        return main + more


#: Grid 3 (issue 43): the default cell of grid 2 and its fresh-data twin, every method of the
#: pre-registration, 10 replicates, then 10 more at the default; a validation split for the
#: interpolation rule and best-of-N items of 64 candidates for the curve.
GRID3_CELLS = (Cell("V1", 0.95, 0.2, "repeated"), Cell("V1", 0.95, 0.2, "fresh"))

GRIDS = {
    "grid2": Grid(tuple(Cell(v, 0.95, f, r) for v, f, r in
                        product(("V1", "V2"), (0.5, 0.2), ("repeated", "fresh"))),
                  base_seeds=(0, 1), data_seeds=(0, 1, 2, 3, 4)),
    "grid3": Grid(GRID3_CELLS, base_seeds=(0, 1), data_seeds=(0, 1, 2, 3, 4),
                  phases=(("all", GRID3_TRAINED),), keep=("all",), derived=GRID3_DERIVED,
                  extension_seeds=(5, 6, 7, 8, 9), extension_cell=GRID3_CELLS[0],
                  params=(("benchmark.val_size", 1000),
                          ("benchmark.best_of_n", {"items": 16, "candidates": 64}))),
}


# ---------------------------------------------------------------------------- one replicate
def replicate_params(cell: Cell, base_seed: int, data_seed: int, work: Path,
                     variants: tuple[str, ...], extra: dict | None = None,
                     derived: tuple[str, ...] = (), grid_params: dict | None = None):
    """The pipeline params of one replicate: the cell's benchmark and reuse, the recipe, its
    own folders (data shared by the replicates of the same data, bases by visual level and
    seed), tracking off; the grid's own params (``grid_params``) and then ``extra`` over
    them."""
    from mmrm.pipeline.params import PipelineParams
    from mmrm.config import apply_overrides

    reuse = REUSE[cell.reuse]
    grid_params = grid_params or {}
    # data made with other benchmark params (a validation split, best-of-N sizes) in a
    # folder of its own
    tag = "".join(f"-{k.split('.')[-1]}{json.dumps(v, sort_keys=True)}" for k, v in
                  sorted(grid_params.items()) if k.startswith("benchmark."))
    tag = "" if not tag else "-" + hashlib.sha256(tag.encode()).hexdigest()[:8]
    data = work / "data" / f"{cell.visual}-c{cell.cue}-f{cell.foreign}-n{reuse['train_size']}" \
        f"-d{data_seed}{tag}"
    runs = work / "runs" / cell.key / f"b{base_seed}-d{data_seed}"
    raw = {"benchmark": {"seed": data_seed, "visual": cell.visual, "cue_rate": cell.cue,
                         "foreign_cue_rate": cell.foreign, "train_size": reuse["train_size"],
                         "test_size": 200, "neutral": True, "image_size": 56,
                         "best_of_n": {"items": 30, "candidates": 8}},
           "base": {"seed": base_seed}, "variants": list(variants),
           "derived_variants": list(derived),
           "train": {**RECIPE, "seed": data_seed, "epochs": reuse["epochs"]},
           "paths": {"benchmark": str(data / "benchmark"), "envs": str(data / "envs"),
                     "base": str(work / "bases" / f"{cell.visual}-s{base_seed}"),
                     "runs": str(runs), "metrics": str(runs / "metrics")},
           "tracking": {"enabled": False}}
    return PipelineParams.model_validate(apply_overrides(apply_overrides(raw, grid_params),
                                                         extra or {}))


@contextmanager
def locked(path: Path):
    """An exclusive lock on ``path`` (parallel replicates share data and bases)."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def prepare(params) -> dict[str, float]:
    """The replicate's data and base, made once (a marker records the settings they were
    made with; other settings in the same folder are an error, not a silent reuse)."""
    from mmrm.pipeline.base import base_is_built
    from mmrm.pipeline.registry import instances, stage

    seconds = {}
    data = Path(params.paths.envs).parent
    settings = json.dumps(params.benchmark.model_dump(), sort_keys=True)
    with locked(data.parent / (data.name + ".lock")):
        marker = data / "made.json"
        if marker.exists() and marker.read_text() != settings:
            raise SystemExit(f"{marker}: made with other settings; use another --work")
        if not marker.exists():
            started = time.perf_counter()
            for name in ("benchmark", "convert"):
                for arguments in instances(params, stage(name)):
                    stage(name).run(params, **arguments)
            marker.write_text(settings)
            seconds["data"] = time.perf_counter() - started
    with locked(Path(params.paths.base).with_suffix(".lock")):
        if not base_is_built(params):
            started = time.perf_counter()
            stage("base").run(params)
            seconds["base"] = time.perf_counter() - started
    return seconds


def trained(params, env: str, variant: str) -> bool:
    """Whether this run's model is saved, trained with the very config the params ask for."""
    from mmrm.pipeline.params import train_config

    saved = params.model_dir(env, variant) / "train_config.json"
    return (params.model_dir(env, variant) / "result.json").exists() and saved.exists() and \
        json.loads(saved.read_text()) == train_config(params, env, variant).model_dump(
            mode="json")


def proxies_trained(params, env: str) -> bool:
    """Whether ``env``'s proxies and their cache are there, each fold trained with the very
    run config these params ask for (the phases of a replicate share them)."""
    from mmrm.pipeline.params import proxy_run_config
    from mmrm.proxy import proxy_config

    config = proxy_run_config(params, env)
    folds = config.shortcut.proxy_folds
    runs = [proxy_config(config, f if folds > 1 else None) for f in range(folds)]
    saved = [Path(run.output_dir) / "train_config.json" for run in runs]
    return (params.proxy_dir(env) / "proxy_losses.json").exists() and all(
        path.exists() and json.loads(path.read_text()) == run.model_dump(mode="json")
        for path, run in zip(saved, runs))


def interpolated(params, env: str) -> bool:
    """Whether ``env``'s interpolated RM is saved, made from the very models of this
    replicate that it averages (their digests, recorded at making)."""
    from mmrm.interpolate import RECORD
    from mmrm.model import model_digest
    from mmrm.pipeline.params import INTERPOLATED, STANDARD

    folder = params.model_dir(env, INTERPOLATED)
    try:
        record = json.loads((folder / "final" / RECORD).read_text())
    except (OSError, ValueError):
        return False
    return (folder / "result.json").exists() and \
        record["a_digest"] == model_digest(params.model_dir(env, STANDARD) / "final") and \
        record["b_digest"] == model_digest(record["b"])


def run_replicate(params) -> dict:
    """Proxies, every variant's RM, then the derived ones (cached runs of these very
    settings kept) and the evaluation of one replicate; the numbers the report needs, and
    the seconds it took."""
    from mmrm.pipeline.params import INTERPOLATED
    from mmrm.pipeline.registry import stage

    seconds = prepare(params)
    started = time.perf_counter()
    for env in params.environments:
        if not proxies_trained(params, env):
            stage("proxy").run(params, env=env)
    seconds["proxy"] = time.perf_counter() - started
    runs = [("train", env, v) for env, v in product(params.environments, params.variants)]
    runs += [("derive", env, v) for env, v in product(params.environments,
                                                      params.derived_variants)]
    for name, env, variant in runs:
        done = interpolated(params, env) if variant == INTERPOLATED else \
            trained(params, env, variant)
        if not done:
            started = time.perf_counter()
            stage(name).run(params, env=env, variant=variant)
            seconds[f"train/{variant}"] = seconds.get(f"train/{variant}", 0.0) + \
                time.perf_counter() - started
    started = time.perf_counter()
    stage("evaluate").run(params)
    seconds["evaluate"] = time.perf_counter() - started
    matrix = params.matrix_dir
    found = {"matrix": json.loads((matrix / "matrix.json").read_text())["accuracy"],
             "shortcut": json.loads((matrix / "shortcut.json").read_text()),
             "diagnosis": json.loads((matrix / "diagnosis.json").read_text()),
             "seconds": {k: round(v, 1) for k, v in seconds.items()}}
    if INTERPOLATED in params.derived_variants:     # which partner and alpha, per environment
        found["interpolation"] = {env: json.loads((params.model_dir(env, INTERPOLATED) /
                                                   "selection.json").read_text())
                                  for env in params.environments}
    return found


def result_path(results: Path, cell: Cell, base_seed: int, data_seed: int, phase: str) -> Path:
    return results / "runs" / cell.key / f"b{base_seed}-d{data_seed}.{phase}.json"


def execute(task: dict) -> str:
    """One replicate of one phase, in its own process (one torch thread); its result file."""
    import torch

    torch.set_num_threads(1)
    cell = Cell(**task["cell"])
    params = replicate_params(cell, task["base_seed"], task["data_seed"], Path(task["work"]),
                              tuple(task["variants"]), task["extra"],
                              tuple(task.get("derived", ())), task.get("grid_params"))
    started = time.perf_counter()
    found = run_replicate(params)
    found.update(cell=task["cell"], base_seed=task["base_seed"], data_seed=task["data_seed"],
                 phase=task["phase"], variants=task["variants"], extra=task["extra"],
                 derived=task.get("derived", []),
                 params=params.model_dump(mode="json", exclude={"paths"}),
                 wall_seconds=round(time.perf_counter() - started, 1), machine=machine(),
                 commit=git_commit())
    out = Path(task["out"])
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(found, sort_keys=True) + "\n")
    os.replace(tmp, out)
    if not task["keep"]:
        shutil.rmtree(params.paths.runs, ignore_errors=True)
    return str(out)


def machine() -> dict:
    return {"node": platform.node(), "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "python": platform.python_version()}


def git_commit() -> str:
    done = subprocess.run(["git", "-C", str(HERE), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True)
    return done.stdout.strip() or "unknown"


# ---------------------------------------------------------------------------- the sweep
def tasks(args, grid: Grid) -> list[dict]:
    """The replicates to run: every cell, phase and replicate whose result file is missing
    (a result made with other extra overrides stops the sweep: another --results)."""
    todo = []
    phases = dict(grid.phases)
    chosen = list(phases) if args.phase == "all" else [args.phase]
    unknown = sorted(set(chosen) - set(phases))
    if unknown:
        raise SystemExit(f"--phase {unknown[0]}: {args.grid}'s phases are {', '.join(phases)}")
    runs = [(cell, b, d, phase) for cell, b, d in grid.runs() for phase in chosen]
    # grid 2's order: per replicate, every phase of every cell (phase-major)
    if len(phases) > 1:
        runs.sort(key=lambda r: (grid.replicates().index((r[1], r[2])), chosen.index(r[3]),
                                 grid.cells.index(r[0])))
    for cell, b, d, phase in runs:
        out = result_path(args.results, cell, b, d, phase)
        if out.exists():
            cached = json.loads(out.read_text())
            if cached["extra"] != args.extra:
                raise SystemExit(f"{out}: made with extra overrides {cached['extra']}, not "
                                 f"{args.extra}: use another --results")
            continue
        todo.append({"cell": cell.__dict__, "base_seed": b, "data_seed": d, "phase": phase,
                     "variants": list(phases[phase]), "derived": list(grid.derived),
                     "grid_params": dict(grid.params), "work": str(args.work),
                     "extra": args.extra, "out": str(out), "keep": phase in grid.keep})
    return todo


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("grid", choices=sorted(GRIDS))
    parser.add_argument("--work", type=Path, default=Path("runs/study/shortcut"),
                        help="Data, bases and run folders (not committed).")
    parser.add_argument("--results", type=Path, default=None,
                        help="Result files (default: studies/shortcut/results/<grid>).")
    parser.add_argument("--phase", default="all",
                        help="One phase of the grid (grid 2: sfc-free, none, neutral and the "
                             "proxies; aware, the shortcut-aware methods; each replicate's "
                             "phases share data, base and proxies), or all.")
    parser.add_argument("--jobs", type=int, default=1, help="Replicates at once (1 thread "
                        "each).")
    parser.add_argument("--limit", type=int, default=None, help="Run at most this many "
                        "replicates, then report.")
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--set", dest="extra", action="append", default=[],
                        metavar="KEY=VALUE", help="Params override of every replicate (tests, "
                        "explorations; recorded in each result).")
    args = parser.parse_args(argv)
    args.results = args.results or HERE / "results" / args.grid
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    grid = GRIDS[args.grid]
    if not args.report_only:
        todo = tasks(args, grid)[:args.limit]
        print(f"{len(todo)} replicates to run", flush=True)
        if args.jobs == 1:
            for task in todo:
                print(f"done {execute(task)}", flush=True)
        else:
            with ProcessPoolExecutor(args.jobs) as pool:
                for out in pool.map(execute, todo):
                    print(f"done {out}", flush=True)
    sys.path.insert(0, str(HERE))
    if len(grid.phases) > 1:
        from report import write_report
    else:
        from grid3 import write_report

    write_report(args.results, grid)


if __name__ == "__main__":
    main()
